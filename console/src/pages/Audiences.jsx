// Segments, audiences and plans: their sizes, an estimate of a condition over the stored users, a plan's
// branch sizes now and its runs.
import { useState } from 'react'
import { api, enc, get } from '../api.js'
import { href, navigate } from '../router.js'
import { json, time } from '../format.js'
import { useApi } from '../components/useApi.js'
import { usePagedList } from '../components/usePagedList.js'
import { Pager } from '../components/Pager.jsx'
import { Failure, Loading } from '../components/Status.jsx'
import { TabPanel, Tabs } from '../components/Tabs.jsx'
import { Runs } from '../components/Runs.jsx'

const TABS = [
  { id: 'segments', label: 'Segments' },
  { id: 'audiences', label: 'Audiences' },
  { id: 'plans', label: 'Plans' },
]

export default function Audiences({ route }) {
  const tab = TABS.some((item) => item.id === route.parts[1]) ? route.parts[1] : 'segments'
  return (
    <section aria-labelledby="audiences-title">
      <h1 id="audiences-title">Segments, audiences and plans</h1>
      <Tabs tabs={TABS} selected={tab} onSelect={(id) => navigate(`/audiences/${id}`)} label="Kinds" />
      <TabPanel id={tab}>
        {tab === 'segments' && <Segments />}
        {tab === 'audiences' && <AudienceList />}
        {tab === 'plans' && <Plans planId={route.parts[2]} />}
      </TabPanel>
    </section>
  )
}

function Segments() {
  const segments = usePagedList('/v1/segments', 'segments')
  const [where, setWhere] = useState(json({ all: [{ did: { event: 'follow' }, within: '30d' }, { did_not: { event: 'pay' }, within: '30d' }] }))
  const [estimate, setEstimate] = useState(null)
  const [failure, setFailure] = useState(null)
  const [busy, setBusy] = useState(false)
  const load = async (id) => {
    const body = await get(`/v1/segments/${enc(id)}`)
    setWhere(json(body.document.where))
    setEstimate(null)
  }
  const run = async () => {
    setBusy(true)
    setFailure(null)
    try {
      setEstimate(await api('POST', '/v1/segments:estimate', `{"where": ${where}}`))
    } catch (error) {
      setFailure(error)
    } finally {
      setBusy(false)
    }
  }
  return (
    <div>
      {segments.loading && !segments.data ? (
        <Loading />
      ) : (
        <table data-testid="segments-table">
          <thead>
            <tr>
              <th scope="col">segment</th>
              <th scope="col" className="num">version</th>
              <th scope="col" className="num">members now</th>
              <th scope="col">description</th>
              <th scope="col">
                <span className="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {segments.items.map((segment) => (
              <tr key={segment.id}>
                <th scope="row">{segment.id}</th>
                <td className="num">{segment.version}</td>
                <td className="num">
                  <a href={`#/users?from=seg:${enc(segment.id)}`}>{segment.size}</a>
                </td>
                <td>{segment.description}</td>
                <td>
                  <button type="button" onClick={() => load(segment.id)} aria-label={`Estimate segment ${segment.id}`}>
                    Estimate
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {segments.data && <Pager list={segments} label="Segments" />}
      <Failure error={segments.error} />
      <h2>Estimate a condition</h2>
      <p className="muted">Over the stored users now: exact up to 200,000 of them, else a hash sample with a 95 % error bound.</p>
      <label htmlFor="estimate-where">Condition (the segment language's "where")</label>
      <textarea id="estimate-where" className="code" rows={6} value={where} spellCheck={false} onChange={(event) => setWhere(event.target.value)} />
      <div className="actions">
        <button type="button" onClick={run} disabled={busy}>
          Estimate
        </button>
      </div>
      <Failure error={failure} />
      {estimate && (
        <p role="status" data-testid="estimate">
          About <strong>{estimate.estimate}</strong> of {estimate.population} users
          {estimate.exact ? ' (exact)' : ` (sampled ${estimate.sampled}, ± ${estimate.error_bound})`}, in {estimate.elapsed_ms} ms.
        </p>
      )}
    </div>
  )
}

function AudienceList() {
  const audiences = usePagedList('/v1/audiences', 'audiences')
  if (audiences.loading && !audiences.data) return <Loading />
  if (audiences.error) return <Failure error={audiences.error} />
  const rows = audiences.items
  if (!rows.length && !audiences.page) return <p className="muted">No audiences.</p>
  return (
    <>
      <table data-testid="audiences-table">
        <thead>
          <tr>
            <th scope="col">audience</th>
            <th scope="col">kind</th>
            <th scope="col" className="num">size</th>
            <th scope="col">updated</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((audience) => (
            <tr key={audience.id}>
              <th scope="row">{audience.id}</th>
              <td>{audience.kind}</td>
              <td className="num">
                <a href={`#/users?from=aud:${enc(audience.id)}`}>{audience.size}</a>
              </td>
              <td>{time(audience.updated_ms)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <Pager list={audiences} label="Audiences" />
    </>
  )
}

function Plans({ planId }) {
  const plans = usePagedList('/v1/plans', 'plans')
  return (
    <div>
      {plans.loading && !plans.data ? (
        <Loading />
      ) : (
        <table data-testid="plans-table">
          <thead>
            <tr>
              <th scope="col">plan</th>
              <th scope="col">state</th>
              <th scope="col" className="num">version</th>
              <th scope="col">next occurrence</th>
              <th scope="col">description</th>
            </tr>
          </thead>
          <tbody>
            {plans.items.map((plan) => (
              <tr key={plan.id} aria-current={plan.id === planId ? 'true' : undefined}>
                <th scope="row">
                  <a href={href('audiences', 'plans', plan.id)}>{plan.id}</a>
                </th>
                <td>{plan.state}</td>
                <td className="num">{plan.version}</td>
                <td>{plan.next_occurrence?.id || '–'}</td>
                <td>{plan.description}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {plans.data && <Pager list={plans} label="Plans" />}
      <Failure error={plans.error} />
      {planId && <Plan key={planId} id={planId} />}
    </div>
  )
}

function Plan({ id }) {
  const runs = useApi(`/v1/plans/${enc(id)}/runs`)
  const [estimate, setEstimate] = useState(null)
  const [failure, setFailure] = useState(null)
  const estimateNow = async () => {
    setFailure(null)
    try {
      setEstimate(await api('POST', `/v1/plans/${enc(id)}:estimate`))
    } catch (error) {
      setFailure(error)
    }
  }
  return (
    <section aria-labelledby="plan-title">
      <h2 id="plan-title">Plan {id}</h2>
      <div className="actions">
        <button type="button" onClick={estimateNow}>
          Estimate the audience now
        </button>
        <a href={href('reports', 'plans', id)}>Report</a>
      </div>
      <Failure error={failure || runs.error} />
      {estimate && (
        <p role="status" data-testid="plan-estimate">
          {estimate.total} users now{estimate.branches.length > 1 ? ` (branches: ${estimate.branches.join(', ')})` : ''}, after dedupe.
        </p>
      )}
      {runs.data ? <Runs runs={runs.data.runs} /> : !runs.error && <Loading />}
    </section>
  )
}
