// Tabs per the WAI-ARIA pattern: arrow keys move between tabs, the panel follows.
import { useRef } from 'react'

export function Tabs({ tabs, selected, onSelect, label }) {
  const refs = useRef({})
  const keys = tabs.map((tab) => tab.id)
  const onKeyDown = (event) => {
    const index = keys.indexOf(selected)
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key]
    if (!step) return
    const next = keys[(index + step + keys.length) % keys.length]
    onSelect(next)
    refs.current[next]?.focus()
    event.preventDefault()
  }
  return (
    <div role="tablist" aria-label={label} className="tabs" onKeyDown={onKeyDown}>
      {tabs.map((tab) => (
        <button
          key={tab.id}
          ref={(node) => (refs.current[tab.id] = node)}
          role="tab"
          type="button"
          id={`tab-${tab.id}`}
          aria-selected={selected === tab.id}
          aria-controls={`panel-${tab.id}`}
          tabIndex={selected === tab.id ? 0 : -1}
          onClick={() => onSelect(tab.id)}
        >
          {tab.label}
        </button>
      ))}
    </div>
  )
}

export function TabPanel({ id, children }) {
  return (
    <div role="tabpanel" id={`panel-${id}`} aria-labelledby={`tab-${id}`} className="panel">
      {children}
    </div>
  )
}
