// Dead letters: actions whose delivery gave up, with the reason, and their replay (idempotent: a letter
// replayed twice is still delivered once). Needs an admin key.
import { useState } from 'react'
import { api, query } from '../api.js'
import { href } from '../router.js'
import { time } from '../format.js'
import { useApi } from '../components/useApi.js'
import { Failure, Loading } from '../components/Status.jsx'

export default function DeadLetters() {
  const [connector, setConnector] = useState('')
  const [applied, setApplied] = useState('')
  const letters = useApi(`/v1/dead-letters${query({ connector: applied, limit: 200 })}`)
  const [chosen, setChosen] = useState(new Set())
  const [outcome, setOutcome] = useState(null)
  const [failure, setFailure] = useState(null)

  const replay = async (body) => {
    setFailure(null)
    setOutcome(null)
    try {
      setOutcome(await api('POST', '/v1/dead-letters:replay', body))
      setChosen(new Set())
      letters.reload()
    } catch (error) {
      setFailure(error)
    }
  }
  const toggle = (id) => {
    const next = new Set(chosen)
    if (next.has(id)) next.delete(id)
    else next.add(id)
    setChosen(next)
  }
  const rows = letters.data?.dead_letters || []
  return (
    <section aria-labelledby="dead-title">
      <h1 id="dead-title">Dead letters</h1>
      <form
        className="row"
        onSubmit={(event) => {
          event.preventDefault()
          setApplied(connector)
        }}
      >
        <label>
          Connector <input value={connector} onChange={(event) => setConnector(event.target.value)} placeholder="any" />
        </label>
        <button type="submit">Filter</button>
        <button type="button" onClick={letters.reload}>
          Refresh
        </button>
        <button type="button" disabled={!chosen.size} onClick={() => replay({ ids: [...chosen] })}>
          Replay selected ({chosen.size})
        </button>
        <button
          type="button"
          disabled={!rows.length}
          onClick={() => replay({ all: true, ...(applied ? { connector: applied } : {}) })}
        >
          Replay all{applied ? ` of ${applied}` : ''}
        </button>
      </form>
      <Failure error={failure || letters.error} />
      {outcome && (
        <p role="status" className="ok" data-testid="replay-outcome">
          Replayed {outcome.replayed?.length ?? 0}, refused {outcome.refused?.length ?? 0}, unknown{' '}
          {outcome.unknown?.length ?? 0}. Replayed letters go back to the outbox and are delivered once.
        </p>
      )}
      {letters.loading && !letters.data ? (
        <Loading />
      ) : rows.length ? (
        <table data-testid="dead-letters-table">
          <thead>
            <tr>
              <th scope="col">
                <span className="visually-hidden">Choose</span>
              </th>
              <th scope="col">dead at</th>
              <th scope="col">user</th>
              <th scope="col">connector</th>
              <th scope="col">action</th>
              <th scope="col">reason</th>
              <th scope="col">reply</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((letter) => (
              <tr key={letter.id}>
                <td>
                  <input
                    type="checkbox"
                    aria-label={`Choose ${letter.action?.type || 'action'} for ${letter.user_id} (${letter.id})`}
                    checked={chosen.has(letter.id)}
                    onChange={() => toggle(letter.id)}
                  />
                </td>
                <td>{time(letter.dead_at)}</td>
                <td>
                  <a href={href('users', letter.user_id)}>{letter.user_id}</a>
                </td>
                <td>{letter.connector}</td>
                <td>
                  {letter.action?.type} {letter.action?.ruleset_id}/{letter.action?.rule_id}
                </td>
                <td className="status-dead">{letter.reason}</td>
                <td className="muted">{letter.action?.reply || ''}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : (
        <p className="muted">No dead letters.</p>
      )}
    </section>
  )
}
