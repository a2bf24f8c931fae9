// A document list one page at a time by the API's cursor (`after`: the previous page's `next`), filtered by id on
// the server (`q`): only one page is fetched and drawn, so the first rows of 10,000 rulesets come as soon as 50.
import { useEffect, useState } from 'react'
import { get, query } from '../api.js'
import { PAGE_SIZE } from './Pager.jsx'

export function usePagedList(path, listKey, q = '') {
  const key = `${path}?${q}`
  // The cursors of the pages walked to, a stack Previous pops; a new filter starts again from the first page.
  const [walk, setWalk] = useState({ key, cursors: [''] })
  const cursors = walk.key === key ? walk.cursors : ['']
  const after = cursors[cursors.length - 1]
  const [state, setState] = useState({ data: null, error: null, loading: true })
  useEffect(() => {
    let live = true // a newer page's answer wins over an older one's
    setState((old) => ({ ...old, loading: true }))
    get(`${path}${query({ limit: PAGE_SIZE, after, q })}`)
      .then((data) => live && setState({ data, error: null, loading: false }))
      .catch((error) => live && setState({ data: null, error, loading: false }))
    return () => {
      live = false
    }
  }, [path, after, q])
  const { data, loading } = state
  const next = data && !loading ? data.next : null // not while another page loads: its `next` is not this one's
  return {
    ...state,
    items: data ? data[listKey] : [],
    total: data ? data.total : 0,
    page: cursors.length - 1,
    hasNext: Boolean(next),
    onNext: () => next && setWalk({ key, cursors: [...cursors, next] }),
    onPrevious: () => setWalk({ key, cursors: cursors.slice(0, -1) }),
  }
}
