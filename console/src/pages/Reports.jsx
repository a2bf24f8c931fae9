// Reports: a ruleset's, journey's or plan's funnel, its rules or nodes, split arms with lift against the
// holdout, failure reasons and the trend by day, as charts (ECharts) with the numbers in tables beside them.
import { useMemo, useState } from 'react'
import { enc, getAll, query } from '../api.js'
import { href, navigate } from '../router.js'
import { percent } from '../format.js'
import { useApi } from '../components/useApi.js'
import { Failure, Loading } from '../components/Status.jsx'
import { Chart } from '../components/Chart.jsx'
import { Runs } from '../components/Runs.jsx'

const KINDS = { rulesets: 'Ruleset', journeys: 'Journey', plans: 'Plan' }
const MODELS = { acted: 'acted (every touch)', reach: 'reach (delivered)', click: 'click (clicked)' }

export default function Reports({ route }) {
  const kind = KINDS[route.parts[1]] ? route.parts[1] : 'rulesets'
  const id = route.parts[2] || ''
  const range = { from: route.params.get('from') || '', to: route.params.get('to') || '' }
  const list = useApi(`/v1/${kind}`, getAll) // every one, for the picker (the list comes a page at a time)
  const go = (next) => {
    const target = { kind, id, ...range, ...next }
    navigate(`/reports/${target.kind}${target.id ? `/${enc(target.id)}` : ''}${query({ from: target.from, to: target.to })}`)
  }
  return (
    <section aria-labelledby="reports-title">
      <h1 id="reports-title">Reports</h1>
      <form className="row" onSubmit={(event) => event.preventDefault()}>
        <label htmlFor="report-kind">Of</label>
        <select
          id="report-kind"
          value={kind} onChange={(event) => go({ kind: event.target.value, id: '' })}
        >
          {Object.entries(KINDS).map(([value, label]) => (
            <option key={value} value={value}>
              {label.toLowerCase()}s
            </option>
          ))}
        </select>
        <label htmlFor="report-id">{KINDS[kind]}</label>
        <select id="report-id" value={id} onChange={(event) => go({ id: event.target.value })}>
          <option value="">(choose)</option>
          {(list.data?.[kind] || []).map((item) => (
            <option key={item.id} value={item.id}>
              {item.id}
            </option>
          ))}
        </select>
        <label>
          From <input type="date" value={range.from} onChange={(event) => go({ from: event.target.value })} />
        </label>
        <label>
          To <input type="date" value={range.to} onChange={(event) => go({ to: event.target.value })} />
        </label>
      </form>
      <Failure error={list.error} />
      {id ? <Report key={`${kind}/${id}`} kind={kind} id={id} range={range} /> : <p className="muted">Choose what to report on.</p>}
    </section>
  )
}

function Report({ kind, id, range }) {
  const report = useApi(`/v1/reports/${kind}/${enc(id)}${query({ ...range, by: 'day' })}`)
  const [model, setModel] = useState('acted')
  if (report.loading && !report.data) return <Loading />
  if (report.error) return <Failure error={report.error} />
  const data = report.data
  const units = data.rules || data.nodes || {}
  return (
    <div>
      <p className="muted">
        {data.from} to {data.to} (UTC days).{' '}
        <label className="inline">
          Conversions counted by{' '}
          <select value={model} onChange={(event) => setModel(event.target.value)}>
            {Object.entries(MODELS).map(([value, label]) => (
              <option key={value} value={value}>
                {label}
              </option>
            ))}
          </select>
        </label>
        <a href={kind === 'plans' ? href('audiences') : href(kind, id)}>Open the {KINDS[kind].toLowerCase()}</a>
      </p>
      <Funnel funnel={data.funnel} kind={kind} model={model} />
      <h2>{kind === 'rulesets' ? 'By rule' : 'By node'}</h2>
      <Units units={units} model={model} />
      {data.arms && Object.keys(data.arms).length > 0 && <Arms arms={data.arms} model={model} />}
      <Failures failures={data.failures} />
      <Trend days={data.days || []} model={model} />
      {data.runs && <Runs runs={data.runs} />}
    </div>
  )
}

function stagesOf(funnel, kind, model) {
  const top = kind === 'rulesets' ? ['triggered', funnel.triggered] : ['entered', funnel.entered]
  return [top, ['acted', funnel.acted], ['delivered', funnel.delivered], ['clicked', funnel.clicked], [`converted (${model})`, funnel.converted[model]]]
}

function Funnel({ funnel, kind, model }) {
  const stages = stagesOf(funnel, kind, model)
  const option = useMemo(
    () => ({
      tooltip: { trigger: 'item', formatter: '{b}: {c}' },
      series: [
        {
          type: 'funnel',
          sort: 'none',
          left: '10%',
          width: '60%',
          minSize: '8%',
          label: { show: true, position: 'right', formatter: '{b}: {c}' },
          data: stages.map(([name, value]) => ({ name, value })),
        },
      ],
    }),
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [JSON.stringify(stages)],
  )
  return (
    <section aria-labelledby="funnel-title">
      <h2 id="funnel-title">Funnel</h2>
      <div className="cards" data-testid="funnel-numbers">
        {stages.map(([name, value]) => (
          <div className="card" key={name} data-testid={`stage-${name.split(' ')[0]}`}>
            <div className="muted">{name}</div>
            <div className="value">{value}</div>
          </div>
        ))}
        <div className="card">
          <div className="muted">revenue ({model})</div>
          <div className="value">{funnel.revenue[model]}</div>
        </div>
        <div className="card">
          <div className="muted">skipped · dead</div>
          <div className="value">
            {funnel.skipped} · {funnel.dead}
          </div>
        </div>
      </div>
      <Chart option={option} label="Funnel chart" height={280} testId="funnel-chart" />
    </section>
  )
}

function Units({ units, model }) {
  const rows = Object.entries(units)
  if (!rows.length) return <p className="muted">Nothing counted yet.</p>
  return (
    <table>
      <thead>
        <tr>
          <th scope="col">id</th>
          {['triggered', 'entered', 'acted', 'delivered', 'skipped', 'dead', 'clicked', 'converted', 'revenue'].map((name) => (
            <th scope="col" className="num" key={name}>
              {name}
            </th>
          ))}
        </tr>
      </thead>
      <tbody>
        {rows.map(([unit, counts]) => (
          <tr key={unit}>
            <th scope="row">{unit}</th>
            {['triggered', 'entered', 'acted', 'delivered', 'skipped', 'dead', 'clicked'].map((name) => (
              <td className="num" key={name}>
                {counts[name]}
              </td>
            ))}
            <td className="num">{counts.converted[model]}</td>
            <td className="num">{counts.revenue[model]}</td>
          </tr>
        ))}
      </tbody>
    </table>
  )
}

function Arms({ arms, model }) {
  const rows = Object.entries(arms).flatMap(([split, byArm]) => Object.entries(byArm).map(([arm, numbers]) => ({ split, arm, ...numbers })))
  const option = useMemo(
    () => ({
      tooltip: { trigger: 'axis' },
      grid: { left: 60, right: 20, top: 20, bottom: 40 },
      xAxis: { type: 'category', data: rows.map((row) => `${row.split}/${row.arm}`) },
      yAxis: { type: 'value', axisLabel: { formatter: (value) => `${(value * 100).toFixed(0)} %` } },
      series: [{ type: 'bar', name: 'conversion rate (acted)', data: rows.map((row) => (row.entered ? row.converted.acted / row.entered : 0)) }],
    }),
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [JSON.stringify(rows)],
  )
  return (
    <section aria-labelledby="arms-title">
      <h2 id="arms-title">Split arms</h2>
      <p className="muted">Lift is against the holdout arm of the same split, on conversions per instance (acted model), with a 95 % interval.</p>
      <table data-testid="arms-table">
        <thead>
          <tr>
            <th scope="col">split / arm</th>
            <th scope="col" className="num">entered</th>
            <th scope="col" className="num">converted ({model})</th>
            <th scope="col" className="num">rate</th>
            <th scope="col" className="num">lift</th>
            <th scope="col">95 % interval</th>
            <th scope="col" className="num">p</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((row) => (
            <tr key={`${row.split}/${row.arm}`}>
              <th scope="row">
                {row.split} / {row.arm}
              </th>
              <td className="num">{row.entered}</td>
              <td className="num">{row.converted[model]}</td>
              <td className="num">{percent(row.lift ? row.lift.rate : row.entered ? row.converted.acted / row.entered : null)}</td>
              <td className="num">{row.lift ? percent(row.lift.lift) : ''}</td>
              <td>{row.lift?.ci95 ? `${percent(row.lift.ci95[0])} to ${percent(row.lift.ci95[1])}` : ''}</td>
              <td className="num">{row.lift?.p_value != null ? row.lift.p_value.toFixed(3) : ''}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <Chart option={option} label="Conversion rate by arm" height={240} />
    </section>
  )
}

function Failures({ failures }) {
  const option = useMemo(
    () => ({
      tooltip: { trigger: 'axis' },
      grid: { left: 180, right: 20, top: 10, bottom: 30 },
      xAxis: { type: 'value', minInterval: 1 },
      yAxis: { type: 'category', data: failures.map((item) => `${item.status}: ${item.reason}`) },
      series: [{ type: 'bar', name: 'actions', data: failures.map((item) => item.count) }],
    }),
    [failures],
  )
  return (
    <section aria-labelledby="failures-title">
      <h2 id="failures-title">Failures</h2>
      {failures.length ? (
        <>
          <Chart option={option} label="Failed actions by reason" height={60 + 36 * failures.length} testId="failures-chart" />
          <table>
            <thead>
              <tr>
                <th scope="col">status</th>
                <th scope="col">reason</th>
                <th scope="col" className="num">count</th>
                <th scope="col">by rule or node</th>
                <th scope="col">sample actions</th>
              </tr>
            </thead>
            <tbody>
              {failures.map((item) => (
                <tr key={`${item.status}/${item.reason}`}>
                  <td>{item.status}</td>
                  <td>{item.reason}</td>
                  <td className="num">{item.count}</td>
                  <td>
                    {Object.entries(item.units)
                      .map(([unit, count]) => `${unit}: ${count}`)
                      .join(', ')}
                  </td>
                  <td>
                    <code>{item.sample_action_ids.join(' ')}</code>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      ) : (
        <p className="muted">No skipped or dead actions.</p>
      )}
    </section>
  )
}

function Trend({ days, model }) {
  const option = useMemo(
    () => ({
      tooltip: { trigger: 'axis' },
      legend: { top: 0 },
      grid: { left: 50, right: 20, top: 36, bottom: 30 },
      xAxis: { type: 'category', data: days.map((day) => day.day) },
      yAxis: { type: 'value', minInterval: 1 },
      series: [
        { type: 'line', name: 'acted', data: days.map((day) => day.acted) },
        { type: 'line', name: 'delivered', data: days.map((day) => day.delivered) },
        { type: 'line', name: 'clicked', data: days.map((day) => day.clicked) },
        { type: 'line', name: `converted (${model})`, data: days.map((day) => day.converted[model]) },
      ],
    }),
    [days, model],
  )
  return (
    <section aria-labelledby="trend-title">
      <h2 id="trend-title">By day</h2>
      {days.length ? <Chart option={option} label="Trend by day" height={260} testId="trend-chart" /> : <p className="muted">No days counted in this range.</p>}
    </section>
  )
}
