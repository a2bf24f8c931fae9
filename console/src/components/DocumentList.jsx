// The list of rulesets or journeys: paged and filtered by id on the server, so 10,000 of them render one page
// without fetching the rest.
import { useEffect, useState } from 'react'
import { usePagedList } from './usePagedList.js'
import { Failure, Loading } from './Status.jsx'
import { Pager } from './Pager.jsx'
import { href } from '../router.js'
import { time } from '../format.js'

const FILTER_PAUSE_MS = 250 // typing a filter asks the server once the typing pauses, not per key

export function DocumentList({ kind }) {
  const [filter, setFilter] = useState('')
  const [q, setQ] = useState('')
  useEffect(() => {
    const timer = setTimeout(() => setQ(filter.trim()), FILTER_PAUSE_MS)
    return () => clearTimeout(timer)
  }, [filter])
  const list = usePagedList(kind.list, kind.listKey, q)

  return (
    <section aria-labelledby="list-title">
      <div className="heading">
        <h1 id="list-title">{kind.title}</h1>
        <a className="button" href={href(kind.route, 'new')}>
          New {kind.noun}
        </a>
      </div>
      <label className="inline">
        Filter by id <input type="search" value={filter} onChange={(event) => setFilter(event.target.value)} />
      </label>
      <Failure error={list.error} />
      {list.loading && !list.data ? (
        <Loading />
      ) : (
        <>
          <table data-testid={`${kind.route}-table`}>
            <caption className="visually-hidden">{kind.title}</caption>
            <thead>
              <tr>
                <th scope="col">id</th>
                <th scope="col">version</th>
                <th scope="col">{kind.countField}</th>
                <th scope="col">description</th>
                <th scope="col">owner</th>
                <th scope="col">updated</th>
              </tr>
            </thead>
            <tbody>
              {list.items.map((item) => (
                <tr key={item.id}>
                  <td>
                    <a href={href(kind.route, item.id)}>{item.id}</a>
                  </td>
                  <td>{item.version}</td>
                  <td>{item[kind.countField]}</td>
                  <td>{item.description}</td>
                  <td>{item.owner || ''}</td>
                  <td>{time(item.updated_ms)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {!list.items.length && (
            <p className="muted">
              {q ? `No ${kind.noun} id contains “${q}”.` : `No ${kind.title.toLowerCase()} yet.`}
            </p>
          )}
          <Pager list={list} label={kind.title} />
        </>
      )}
    </section>
  )
}
