// A journey drawn as a graph (React Flow): one box per node with its live counts from
// GET /v1/journeys/{id}/stats (refreshed every few seconds), an arrow per way out, labelled as the stats
// label them (arm0, else, holdout, the awaited event, timeout).
import { useEffect, useMemo, useState } from 'react'
import { Background, Controls, MarkerType, ReactFlow } from '@xyflow/react'
import '@xyflow/react/dist/style.css'
import { enc, get } from '../api.js'
import { Failure } from './Status.jsx'

const REFRESH_MS = 5000
const COLUMN = 200
const ROW = 110

/** Each node's kind and its ways out: [{label, target}]. */
export function edgesOf(node) {
  const out = []
  const push = (label, target) => target && out.push({ label, target })
  if (node.branch) {
    node.branch.forEach((arm, index) => push(`arm${index}`, arm.next))
    push('else', node.else)
  } else if (node.split) {
    node.split.forEach((arm, index) => push(arm.holdout ? 'holdout' : `arm${index}`, arm.next))
  } else if (node.wait_for) {
    node.wait_for.forEach((arm) => push(arm.event, arm.next))
    push('timeout', node.on_timeout)
  } else {
    push('', node.next)
  }
  return out
}

function kindOf(node) {
  return ['do', 'wait', 'until', 'until_profile', 'wait_for', 'branch', 'split', 'exit'].find((kind) => kind in node) || '?'
}

function summary(node) {
  const kind = kindOf(node)
  if (kind === 'do') return node.do.map((action) => action.action).join(', ')
  if (kind === 'wait' || kind === 'until' || kind === 'until_profile') return String(node[kind])
  if (kind === 'wait_for') return `up to ${node.timeout}`
  if (kind === 'split') return node.split.map((arm) => `${arm.weight}%`).join(' / ')
  return ''
}

/** Columns by distance from the start (breadth first), rows in order of discovery. */
function layout(document) {
  const depth = { [document.start]: 0 }
  const queue = [document.start]
  while (queue.length) {
    const id = queue.shift()
    for (const edge of edgesOf(document.nodes[id] || {})) {
      if (!(edge.target in depth) && edge.target in document.nodes) {
        depth[edge.target] = depth[id] + 1
        queue.push(edge.target)
      }
    }
  }
  const rows = {}
  const positions = {}
  const place = (id, column) => {
    rows[column] = (rows[column] || 0) + 1
    positions[id] = { x: (column + 1) * COLUMN, y: (rows[column] - 1) * ROW }
  }
  // Exit nodes go last, where paths end, so arrows into them run forwards.
  const last = Math.max(0, ...Object.values(depth))
  const isExit = (id) => 'exit' in (document.nodes[id] || {})
  for (const id of Object.keys(document.nodes)) if (id in depth) place(id, isExit(id) ? last + 1 : depth[id])
  for (const id of Object.keys(document.nodes)) if (!(id in depth)) place(id, last + 2)
  return positions
}

function entryText(document) {
  const entry = document.entry || {}
  return entry.event ? `on ${entry.event}` : entry.segment ? `on entering ${entry.segment}` : ''
}

export default function JourneyGraph({ id, document }) {
  const [stats, setStats] = useState(null)
  const [error, setError] = useState(null)
  useEffect(() => {
    let live = true
    const load = () =>
      get(`/v1/journeys/${enc(id)}/stats`)
        .then((body) => live && (setStats(body), setError(null)))
        .catch((failure) => live && setError(failure))
    load()
    const timer = setInterval(load, REFRESH_MS)
    return () => {
      live = false
      clearInterval(timer)
    }
  }, [id])

  // Counts of every version, summed: instances of older versions still walk the same node ids.
  const counts = useMemo(() => {
    const nodes = {}
    const journey = { entered: 0, completed: 0, exited: 0, converted: 0 }
    for (const version of Object.values(stats?.versions || {})) {
      for (const name of Object.keys(journey)) journey[name] += version.journey?.[name] || 0
      for (const [node, numbers] of Object.entries(version.nodes || {})) {
        const sum = (nodes[node] ||= { entered: 0, waiting: 0, exited: 0, converted: 0, left: {} })
        for (const name of ['entered', 'waiting', 'exited', 'converted']) sum[name] += numbers[name] || 0
        for (const [label, count] of Object.entries(numbers.left || {})) sum.left[label] = (sum.left[label] || 0) + count
      }
    }
    return { nodes, journey }
  }, [stats])

  const { nodes, edges } = useMemo(() => {
    const positions = layout(document)
    const entryY = positions[document.start]?.y ?? 0
    const flowNodes = [
      {
        id: '(entry)',
        position: { x: 0, y: entryY },
        data: { label: <Box title="entry" detail={entryText(document)} counts={`entered ${counts.journey.entered} · converted ${counts.journey.converted}`} /> },
        className: 'flow-entry',
        sourcePosition: 'right',
        type: 'input',
      },
    ]
    const flowEdges = [
      { id: '(entry)->start', source: '(entry)', target: document.start, markerEnd: { type: MarkerType.ArrowClosed } },
    ]
    for (const [nodeId, node] of Object.entries(document.nodes)) {
      const count = counts.nodes[nodeId] || { entered: 0, waiting: 0, exited: 0, converted: 0, left: {} }
      flowNodes.push({
        id: nodeId,
        position: positions[nodeId],
        data: {
          label: (
            <Box
              title={nodeId}
              kind={kindOf(node)}
              detail={summary(node)}
              counts={`entered ${count.entered} · waiting ${count.waiting}`}
              testId={`graph-node-${nodeId}`}
            />
          ),
        },
        sourcePosition: 'right',
        targetPosition: 'left',
      })
      for (const edge of edgesOf(node)) {
        const left = edge.label ? count.left[edge.label] || 0 : null
        flowEdges.push({
          id: `${nodeId}->${edge.target}:${edge.label}`,
          source: nodeId,
          target: edge.target,
          label: edge.label ? `${edge.label} (${left})` : undefined,
          markerEnd: { type: MarkerType.ArrowClosed },
        })
      }
    }
    return { nodes: flowNodes, edges: flowEdges }
  }, [document, counts])

  return (
    <div>
      <p className="muted" aria-live="polite">
        Counts of all versions, refreshed every {REFRESH_MS / 1000} s: entered {counts.journey.entered}, completed{' '}
        {counts.journey.completed}, exited {counts.journey.exited}, converted {counts.journey.converted}.
      </p>
      <Failure error={error} />
      <div className="graph" data-testid="journey-graph">
        <ReactFlow
          nodes={nodes}
          edges={edges}
          fitView
          // Never smaller than readable: the view opens on the entry and the first columns, and a longer
          // journey pans instead of shrinking to fit.
          fitViewOptions={{
            minZoom: 0.8,
            maxZoom: 1.2,
            nodes: nodes.filter((node) => node.position.x <= 4 * COLUMN).map((node) => ({ id: node.id })),
          }}
          nodesDraggable={false}
          nodesConnectable={false}
          aria-label={`Journey ${id} as a graph`}
        >
          <Background />
          <Controls showInteractive={false} />
        </ReactFlow>
      </div>
      <details>
        <summary>The counts as a table</summary>
        <table data-testid="journey-counts">
          <thead>
            <tr>
              <th scope="col">node</th>
              <th scope="col">kind</th>
              <th scope="col" className="num">entered</th>
              <th scope="col" className="num">waiting</th>
              <th scope="col" className="num">exited</th>
              <th scope="col" className="num">converted</th>
              <th scope="col">left by</th>
            </tr>
          </thead>
          <tbody>
            {Object.entries(document.nodes).map(([nodeId, node]) => {
              const count = counts.nodes[nodeId] || { entered: 0, waiting: 0, exited: 0, converted: 0, left: {} }
              return (
                <tr key={nodeId}>
                  <th scope="row">{nodeId}</th>
                  <td>{kindOf(node)}</td>
                  <td className="num">{count.entered}</td>
                  <td className="num">{count.waiting}</td>
                  <td className="num">{count.exited}</td>
                  <td className="num">{count.converted}</td>
                  <td>
                    {Object.entries(count.left)
                      .map(([label, left]) => `${label}: ${left}`)
                      .join(', ')}
                  </td>
                </tr>
              )
            })}
          </tbody>
        </table>
      </details>
    </div>
  )
}

function Box({ title, kind, detail, counts, testId }) {
  return (
    <div className="flow-box" data-testid={testId}>
      <strong>{title}</strong>
      {kind && <span className="muted"> · {kind}</span>}
      {detail && <div className="flow-detail">{detail}</div>}
      <div className="flow-counts">{counts}</div>
    </div>
  )
}
