// The list of rulesets or journeys: filtered and paged in the browser, so 10,000 of them render one page.
import { useMemo, useState } from 'react'
import { useApi } from './useApi.js'
import { Failure, Loading } from './Status.jsx'
import { Pager, paged } from './Pager.jsx'
import { href } from '../router.js'
import { time } from '../format.js'

export function DocumentList({ kind }) {
  const { data, error, loading } = useApi(kind.list)
  const [filter, setFilter] = useState('')
  const [page, setPage] = useState(0)
  const items = useMemo(() => {
    const all = data ? data[kind.listKey] : []
    const needle = filter.trim().toLowerCase()
    if (!needle) return all
    return all.filter((item) => item.id.toLowerCase().includes(needle) || (item.description || '').toLowerCase().includes(needle))
  }, [data, filter, kind])
  const rows = paged(items, page)

  return (
    <section aria-labelledby="list-title">
      <div className="heading">
        <h1 id="list-title">{kind.title}</h1>
        <a className="button" href={href(kind.route, 'new')}>
          New {kind.noun}
        </a>
      </div>
      <label className="inline">
        Filter by id or description{' '}
        <input
          type="search"
          value={filter}
          onChange={(event) => {
            setFilter(event.target.value)
            setPage(0)
          }}
        />
      </label>
      <Failure error={error} />
      {loading && !data ? (
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
              {rows.map((item) => (
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
          {!items.length && <p className="muted">No {kind.title.toLowerCase()} yet.</p>}
          <Pager total={items.length} page={page} onPage={setPage} label={kind.title} />
        </>
      )}
    </section>
  )
}
