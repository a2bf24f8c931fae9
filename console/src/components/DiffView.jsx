// Two versions side by side with their differences marked (CodeMirror's merge view), read-only.
import { useEffect, useRef } from 'react'
import { EditorView, basicSetup } from 'codemirror'
import { EditorState } from '@codemirror/state'
import { json } from '@codemirror/lang-json'
import { MergeView } from '@codemirror/merge'

export function DiffView({ before, after, label }) {
  const parent = useRef(null)
  useEffect(() => {
    const readOnly = [basicSetup, json(), EditorState.readOnly.of(true), EditorView.editable.of(false)]
    const merge = new MergeView({
      a: { doc: before, extensions: [...readOnly, EditorView.contentAttributes.of({ 'aria-label': `${label}: older` })] },
      b: { doc: after, extensions: [...readOnly, EditorView.contentAttributes.of({ 'aria-label': `${label}: newer` })] },
      parent: parent.current,
      collapseUnchanged: { margin: 3, minSize: 6 },
    })
    return () => merge.destroy()
  }, [before, after, label])
  return <div className="diff" ref={parent} />
}
