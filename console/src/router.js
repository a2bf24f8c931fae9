// Hash routes (#/rulesets/cart-recovery): the server serves one page for /console/, so deep links need no
// server-side routing and the back button works.
import { useEffect, useState } from 'react'

function current() {
  const hash = window.location.hash.replace(/^#\/?/, '')
  const [path, search = ''] = hash.split('?')
  return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(search) }
}

export function useRoute() {
  const [route, setRoute] = useState(current)
  useEffect(() => {
    const changed = () => setRoute(current())
    window.addEventListener('hashchange', changed)
    return () => window.removeEventListener('hashchange', changed)
  }, [])
  return route
}

export function navigate(path) {
  window.location.hash = path
}

export function href(...parts) {
  return '#/' + parts.map((part) => encodeURIComponent(part)).join('/')
}
