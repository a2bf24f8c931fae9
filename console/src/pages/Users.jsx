// Users: open one by id, or page through the members of a segment or an audience; one user's profile, tags,
// aliases, live state (the "why didn't it fire?" view), actions and trace.
import { useEffect, useMemo, useState } from 'react'
import { enc, get, getAll, query } from '../api.js'
import { href, navigate } from '../router.js'
import { json, time } from '../format.js'
import { useApi } from '../components/useApi.js'
import { Failure, Loading } from '../components/Status.jsx'
import { PAGE_SIZE } from '../components/Pager.jsx'

export default function Users({ route }) {
  const id = route.parts[1]
  return id ? <User key={id} id={id} /> : <Browse source={route.params.get('from') || ''} />
}

function Browse({ source }) {
  const [userId, setUserId] = useState('')
  // Every one of them, for the picker: the lists come a page at a time.
  const audiences = useApi('/v1/audiences', getAll)
  const segments = useApi('/v1/segments', getAll)
  const sources = [
    ...(audiences.data?.audiences || []).map((item) => ({ ref: `aud:${item.id}`, label: `audience ${item.id}`, size: item.size })),
    ...(segments.data?.segments || []).map((item) => ({ ref: `seg:${item.id}`, label: `segment ${item.id}`, size: item.size })),
  ]
  return (
    <section aria-labelledby="users-title">
      <h1 id="users-title">Users</h1>
      <form
        className="row"
        onSubmit={(event) => {
          event.preventDefault()
          if (userId.trim()) navigate(`/users/${enc(userId.trim())}`)
        }}
      >
        <label>
          User id <input value={userId} onChange={(event) => setUserId(event.target.value)} />
        </label>
        <button type="submit">Open</button>
      </form>
      <label className="inline">
        Browse the members of{' '}
        <select value={source} onChange={(event) => navigate(`/users${query({ from: event.target.value })}`)}>
          <option value="">(choose a segment or audience)</option>
          {sources.map((item) => (
            <option key={item.ref} value={item.ref}>
              {item.label} ({item.size ?? '?'})
            </option>
          ))}
        </select>
      </label>
      <Failure error={audiences.error || segments.error} />
      {source && <Members key={source} source={source} size={sources.find((item) => item.ref === source)?.size} />}
    </section>
  )
}

/** Members a page at a time, by the API's cursor (a stack of cursors walks back). */
function Members({ source, size }) {
  const [kind, name] = [source.slice(0, 3), source.slice(4)]
  const base = kind === 'seg' ? `/v1/segments/${enc(name)}/members` : `/v1/audiences/${enc(name)}/members`
  const [cursors, setCursors] = useState([''])
  const [page, setPage] = useState(null)
  const [error, setError] = useState(null)
  const cursor = cursors[cursors.length - 1]
  useEffect(() => {
    let live = true
    get(`${base}${query({ cursor, limit: PAGE_SIZE })}`)
      .then((body) => live && setPage(body))
      .catch((failure) => live && setError(failure))
    return () => {
      live = false
    }
  }, [base, cursor])
  if (error) return <Failure error={error} />
  if (!page) return <Loading />
  // The cursor API returns about `limit` members, a hint: the range shown counts what came.
  const first = (cursors.length - 1) * PAGE_SIZE + 1
  return (
    <div>
      <table data-testid="members-table">
        <caption className="visually-hidden">Members of {source}</caption>
        <thead>
          <tr>
            <th scope="col">user</th>
          </tr>
        </thead>
        <tbody>
          {page.members.map((member) => (
            <tr key={member}>
              <td>
                <a href={href('users', member)}>{member}</a>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <nav className="pager" aria-label="Members pages">
        <button type="button" disabled={cursors.length <= 1} onClick={() => setCursors(cursors.slice(0, -1))}>
          Previous
        </button>
        <span data-testid="pager-range" aria-live="polite">
          {page.members.length ? `${first}–${first + page.members.length - 1}` : '0'} of {size ?? '?'}
        </span>
        <button type="button" disabled={!page.cursor} onClick={() => setCursors([...cursors, page.cursor])}>
          Next
        </button>
      </nav>
    </div>
  )
}

function User({ id }) {
  const user = useApi(`/v1/users/${enc(id)}`)
  const trace = useApi(`/v1/users/${enc(id)}/trace?limit=200`)
  const actions = useApi(`/v1/actions?user_id=${enc(id)}&limit=100`)
  if (user.loading && !user.data) return <Loading />
  if (user.error) return <Failure error={user.error} />
  const profile = user.data
  return (
    <section aria-labelledby="user-title">
      <div className="heading">
        <h1 id="user-title">User {id}</h1>
        <button type="button" onClick={() => (user.reload(), trace.reload(), actions.reload())}>
          Refresh
        </button>
      </div>
      {profile.merged_into && (
        <p role="note">
          Merged into <a href={href('users', profile.merged_into)}>{profile.merged_into}</a> at {time(profile.merged_at)}.
        </p>
      )}
      <div className="columns">
        <div>
          <h2>Profile</h2>
          <table aria-label="Profile attributes">
            <tbody>
              {Object.entries(profile.attrs).map(([name, value]) => (
                <tr key={name}>
                  <th scope="row">{name}</th>
                  <td>{typeof value === 'string' ? value : JSON.stringify(value)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {!Object.keys(profile.attrs).length && <p className="muted">No attributes.</p>}
          <h2>Tags</h2>
          {profile.tags.length ? (
            <ul className="tags" aria-label="Tags">
              {profile.tags.map((tag) => (
                <li key={tag}>{tag}</li>
              ))}
            </ul>
          ) : (
            <p className="muted">No tags.</p>
          )}
          <h2>Aliases</h2>
          <p>{profile.aliases.length ? profile.aliases.join(', ') : <span className="muted">None.</span>}</p>
          {profile.merged_from?.length > 0 && <p>Merged from: {profile.merged_from.join(', ')}</p>}
        </div>
        <div>
          <h2>Segments</h2>
          <Memberships segments={profile.segments || {}} />
          <h2>Journeys</h2>
          <Instances journeys={profile.journeys || {}} />
        </div>
      </div>
      <h2>Live rule state</h2>
      <LiveState rules={profile.rules || {}} />
      <h2>Trace</h2>
      <Trace trace={trace} />
      <h2>Actions</h2>
      <ActionRows actions={actions} />
    </section>
  )
}

function Memberships({ segments }) {
  const rows = Object.entries(segments)
  if (!rows.length) return <p className="muted">In no segment.</p>
  return (
    <table aria-label="Segment memberships">
      <thead>
        <tr>
          <th scope="col">segment</th>
          <th scope="col">member</th>
          <th scope="col">since / left</th>
        </tr>
      </thead>
      <tbody>
        {rows.map(([segment, state]) => (
          <tr key={segment}>
            <td>{segment}</td>
            <td>{state.member ? 'yes' : 'no'}</td>
            <td>{time(state.member ? state.since : state.left_at)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  )
}

function Instances({ journeys }) {
  const rows = Object.entries(journeys).flatMap(([journey, state]) =>
    (state.instances || []).map((instance) => ({ journey, ...instance })),
  )
  if (!rows.length) return <p className="muted">In no journey.</p>
  return (
    <table aria-label="Journey instances">
      <thead>
        <tr>
          <th scope="col">journey</th>
          <th scope="col">node</th>
          <th scope="col">next step due</th>
          <th scope="col">goal by</th>
        </tr>
      </thead>
      <tbody>
        {rows.map((row) => (
          <tr key={`${row.journey}/${row.key}`}>
            <td>
              <a href={href('journeys', row.journey)}>{row.journey}</a>
              {row.key !== '_' ? ` (${row.key})` : ''}
            </td>
            <td>{row.finished ? 'finished' : row.node}</td>
            <td>{time(row.due)}</td>
            <td>{time(row.goal_by)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  )
}

function LiveState({ rules }) {
  const rows = Object.entries(rules)
  if (!rows.length) return <p className="muted">No rule holds state for this user.</p>
  return (
    <table aria-label="Live rule state">
      <thead>
        <tr>
          <th scope="col">rule</th>
          <th scope="col">pending / window entries</th>
          <th scope="col">last fired</th>
          <th scope="col">watermark</th>
        </tr>
      </thead>
      <tbody>
        {rows.map(([rule, state]) => (
          <tr key={rule}>
            <td>{rule}</td>
            <td>
              {(state.sets || []).map((set, index) => (
                <div key={index}>
                  {set.kind} {set.correlation !== '_' ? `[${set.correlation}]` : ''}: {set.entries.length}
                </div>
              ))}
            </td>
            <td>{time(state.last_fired_ts)}</td>
            <td>{time(state.watermark)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  )
}

function subject(entry) {
  return entry.rule || entry.journey_id || entry.segment || entry.kind
}

function details(entry) {
  const known = new Set(['at', 'kind', 'ts', 'rule', 'journey_id', 'segment', 'what', 'actions', 'version', 'user_id'])
  return Object.entries(entry)
    .filter(([name]) => !known.has(name))
    .map(([name, value]) => `${name}: ${typeof value === 'number' && name.endsWith('due') ? time(value) : typeof value === 'string' ? value : JSON.stringify(value)}`)
    .join(' · ')
}

function Trace({ trace }) {
  const entries = useMemo(() => trace.data?.trace || [], [trace.data])
  if (trace.loading && !trace.data) return <Loading />
  if (trace.error) return <Failure error={trace.error} />
  if (!trace.data.tracing) return <p className="muted">Tracing is off (BEACON_TRACE_DEPTH=0).</p>
  if (!entries.length) return <p className="muted">Nothing traced for this user yet.</p>
  return (
    <table data-testid="trace-table" aria-label="Trace, newest first">
      <thead>
        <tr>
          <th scope="col">at</th>
          <th scope="col">kind</th>
          <th scope="col">rule / journey / segment</th>
          <th scope="col">what</th>
          <th scope="col">details</th>
          <th scope="col">actions</th>
        </tr>
      </thead>
      <tbody>
        {entries.map((entry, index) => (
          <tr key={index}>
            <td>{time(entry.at)}</td>
            <td>{entry.kind}</td>
            <td>{subject(entry)}</td>
            <td>{entry.what}</td>
            <td className="muted">{details(entry)}</td>
            <td>
              {(entry.actions || []).map((action) => (
                <div key={action.action_id} className={`status-${action.status}`}>
                  {action.type || 'action'} {action.status}
                  {action.reason ? ` (${action.reason})` : ''}
                </div>
              ))}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  )
}

export function ActionRows({ actions, showUser = false }) {
  if (actions.loading && !actions.data) return <Loading />
  if (actions.error) return <Failure error={actions.error} />
  const rows = actions.data.actions
  if (!rows.length) return <p className="muted">No actions.</p>
  return (
    <table data-testid="actions-table" aria-label="Actions, newest first">
      <thead>
        <tr>
          <th scope="col">created</th>
          {showUser && <th scope="col">user</th>}
          <th scope="col">from</th>
          <th scope="col">type</th>
          <th scope="col">params</th>
          <th scope="col">status</th>
        </tr>
      </thead>
      <tbody>
        {rows.map((action) => (
          <tr key={action.action_id}>
            <td>{time(action.created_at)}</td>
            {showUser && (
              <td>
                <a href={href('users', action.user_id)}>{action.user_id}</a>
              </td>
            )}
            <td>
              {action.journey_id ? `journey ${action.journey_id}/${action.node_id}` : `${action.ruleset_id}/${action.rule_id}`}
            </td>
            <td>{action.type}</td>
            <td>
              <code>{json(action.params).replace(/\s+/g, ' ')}</code>
            </td>
            <td className={`status-${action.status}`}>
              {action.status}
              {action.reason ? ` (${action.reason})` : ''}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  )
}
