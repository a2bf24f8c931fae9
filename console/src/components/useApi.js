// Load one API resource for a page: {data, error, loading, reload}. A newer load wins over an older one.
// `load` (default: one GET) must be a function defined once, outside the component.
import { useCallback, useEffect, useRef, useState } from 'react'
import { get } from '../api.js'

export function useApi(path, load = get) {
  const [state, setState] = useState({ data: null, error: null, loading: Boolean(path) })
  const latest = useRef(0)
  const fetchNow = useCallback(async () => {
    if (!path) return
    const ticket = ++latest.current
    setState((old) => ({ ...old, loading: true }))
    try {
      const data = await load(path)
      if (ticket === latest.current) setState({ data, error: null, loading: false })
    } catch (error) {
      if (ticket === latest.current) setState({ data: null, error, loading: false })
    }
  }, [path, load])
  useEffect(() => {
    fetchNow()
  }, [fetchNow])
  return { ...state, reload: fetchNow }
}
