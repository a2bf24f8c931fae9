// Firings or journey steps on a time axis, one row per rule or node.
import { useMemo } from 'react'
import { Chart } from './Chart.jsx'

export default function Timeline({ items }) {
  const option = useMemo(() => {
    const lanes = [...new Set(items.map((item) => item.rule_id || item.node))]
    return {
      grid: { left: 140, right: 24, top: 16, bottom: 64 },
      tooltip: {
        trigger: 'item',
        formatter: (point) => `${point.data.name}<br>${new Date(point.data.value[0]).toISOString()}`,
      },
      xAxis: { type: 'time' },
      yAxis: { type: 'category', data: lanes },
      dataZoom: [{ type: 'slider', height: 18, bottom: 12 }],
      series: [
        {
          type: 'scatter',
          symbolSize: 12,
          data: items.map((item) => ({
            name: `${item.user_id}: ${(item.actions || []).map((action) => action.type).join(', ') || 'no action'}`,
            value: [item.at, item.rule_id || item.node],
          })),
        },
      ],
    }
  }, [items])
  return <Chart option={option} label="Timeline of the dry-run's firings" height={Math.max(180, 60 + 36 * new Set(items.map((i) => i.rule_id || i.node)).size)} testId="timeline" />
}
