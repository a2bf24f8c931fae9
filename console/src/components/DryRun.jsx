// Dry-run a ruleset or journey on pasted or uploaded events: the server runs the same evaluator on throwaway
// state with a simulated clock; the firings (or journey steps) are drawn on a timeline.
import { lazy, Suspense, useState } from 'react'
import { api, enc } from '../api.js'
import { json, time } from '../format.js'
import { Failure, Loading } from './Status.jsx'

const Timeline = lazy(() => import('./Timeline.jsx'))
const DayChart = lazy(() => import('./DayChart.jsx'))

const SAMPLE_TS = 1767225600000 // 2026-01-01T00:00:00Z: a fixed start, so a sample reads the same every time
const SAMPLE = json([
  { user_id: 'u1', type: 'add_to_cart', ts: SAMPLE_TS, attrs: { sku: 'A1', price: 59 } },
  { user_id: 'u1', type: 'pay', ts: SAMPLE_TS + 60_000, attrs: { amount: 1200, store: 'S1', sku: 'A1' } },
])

/** Events from a JSON array, a `{"events": [...]}` object, or JSON lines. */
export function parseEvents(text) {
  const trimmed = text.trim()
  if (!trimmed) return []
  try {
    const parsed = JSON.parse(trimmed)
    if (Array.isArray(parsed)) return parsed
    if (parsed && Array.isArray(parsed.events)) return parsed.events
    return [parsed]
  } catch (error) {
    const lines = trimmed.split('\n').filter((line) => line.trim())
    if (lines.length < 2) throw error
    return lines.map((line, index) => {
      try {
        return JSON.parse(line)
      } catch {
        throw new SyntaxError(`line ${index + 1} is not JSON`)
      }
    })
  }
}

export function DryRun({ kind, id, draft, version }) {
  const [eventsText, setEvents] = useState(SAMPLE)
  const [result, setResult] = useState(null)
  const [backtest, setBacktest] = useState(null)
  const [failure, setFailure] = useState(null)
  const [busy, setBusy] = useState(false)
  const usesDraft = draft !== null || version === null

  const upload = async (event) => {
    const file = event.target.files[0]
    if (file) setEvents(await file.text())
  }

  const run = async (mode) => {
    setBusy(true)
    setFailure(null)
    setResult(null)
    setBacktest(null)
    try {
      const events = parseEvents(eventsText)
      const document = usesDraft ? JSON.parse(draft ?? json(kind.template)) : null
      if (mode === 'backtest') {
        // The backtest runs the same evaluator over many events and answers counts: per rule, per day.
        const subject = document ? { ...document, id: document.id || id || 'draft' } : id
        setBacktest(await api('POST', '/v1/backtest', { [`${kind.noun}s`]: [subject], events }))
      } else {
        const body = { events }
        if (document) body.document = document
        setResult(await api('POST', `${kind.base}/${enc(id || 'draft')}:dry-run`, body))
      }
    } catch (error) {
      setFailure(error)
    } finally {
      setBusy(false)
    }
  }

  const items = result ? result.firings || result.steps || [] : []
  return (
    <div>
      <p className="muted">
        {usesDraft ? "Runs the editor's unsaved text." : `Runs the stored version ${version}.`} Events: a JSON array,{' '}
        <code>{'{"events": [...]}'}</code> or one JSON event per line, each with its <code>ts</code> (ms).
      </p>
      <label htmlFor="dry-run-events">Events</label>
      <textarea
        id="dry-run-events"
        className="code"
        rows={10}
        value={eventsText}
        spellCheck={false}
        onChange={(event) => setEvents(event.target.value)}
      />
      <div className="actions">
        <label className="inline">
          Or load a file <input type="file" accept=".json,.jsonl,.ndjson,application/json" onChange={upload} />
        </label>
        <button type="button" onClick={() => run('dry-run')} disabled={busy}>
          Run dry-run
        </button>
        <button type="button" onClick={() => run('backtest')} disabled={busy}>
          Backtest (counts)
        </button>
      </div>
      <Failure error={failure} />
      {backtest && <BacktestResult report={backtest} />}
      {result && (
        <section aria-labelledby="dry-run-title" data-testid="dry-run-result">
          <h2 id="dry-run-title">
            {items.length} {result.firings ? 'firing' : 'step'}
            {items.length === 1 ? '' : 's'}
            {result.late?.length ? `, ${result.late.length} late events` : ''}
            {(result.pending_timers || result.waiting || []).length
              ? `, ${(result.pending_timers || result.waiting).length} still waiting`
              : ''}
          </h2>
          {items.length > 0 && (
            <Suspense fallback={<Loading what="Drawing" />}>
              <Timeline items={items} />
            </Suspense>
          )}
          <table>
            <thead>
              <tr>
                <th scope="col">at</th>
                <th scope="col">user</th>
                <th scope="col">{result.firings ? 'rule' : 'node'}</th>
                <th scope="col">actions</th>
                <th scope="col">why</th>
              </tr>
            </thead>
            <tbody>
              {items.map((item, index) => (
                <tr key={index}>
                  <td>{time(item.at)}</td>
                  <td>{item.user_id}</td>
                  <td>{item.rule_id || item.node}</td>
                  <td>{(item.actions || []).map((action) => action.type).join(', ')}</td>
                  <td>{item.explanation || ''}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </section>
      )}
    </div>
  )
}

const plural = (count, noun) => `${count} ${noun}${count === 1 ? '' : 's'}`

function BacktestResult({ report }) {
  const totals = report.totals
  return (
    <section aria-labelledby="backtest-title" data-testid="backtest-result">
      <h2 id="backtest-title">
        Backtest over {plural(totals.events, 'event')} of {plural(totals.users, 'user')}:{' '}
        {plural(totals.firings, 'firing')}
        {totals.late ? `, ${totals.late} late` : ''}
        {totals.pending_timers ? `, ${totals.pending_timers} timers pending` : ''}
      </h2>
      {report.timeline.length > 0 && (
        <Suspense fallback={<Loading what="Drawing" />}>
          <DayChart timeline={report.timeline} />
        </Suspense>
      )}
      {report.rules.length > 0 && (
        <table>
          <thead>
            <tr>
              <th scope="col">rule</th>
              <th scope="col" className="num">firings</th>
              <th scope="col" className="num">users</th>
              <th scope="col">actions</th>
              <th scope="col">first / last firing</th>
            </tr>
          </thead>
          <tbody>
            {report.rules.map((rule) => (
              <tr key={`${rule.ruleset_id}/${rule.rule_id}`}>
                <th scope="row">{rule.rule_id}</th>
                <td className="num">{rule.firings}</td>
                <td className="num">{rule.users}</td>
                <td>
                  {Object.entries(rule.actions)
                    .map(([type, count]) => `${type}: ${count}`)
                    .join(', ')}
                </td>
                <td>
                  {time(rule.first_firing_at)} / {time(rule.last_firing_at)}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {report.journeys.map((journey) => (
        <p key={journey.journey_id}>
          Journey {journey.journey_id}: acted on {journey.users_acted_on} users (
          {Object.entries(journey.actions)
            .map(([type, count]) => `${type}: ${count}`)
            .join(', ') || 'no actions'}
          ).
        </p>
      ))}
    </section>
  )
}
