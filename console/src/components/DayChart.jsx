// A backtest's timeline: events and firings per day.
import { useMemo } from 'react'
import { Chart } from './Chart.jsx'

export default function DayChart({ timeline }) {
  const option = useMemo(
    () => ({
      tooltip: { trigger: 'axis' },
      legend: { top: 0 },
      grid: { left: 50, right: 20, top: 36, bottom: 30 },
      xAxis: { type: 'category', data: timeline.map((day) => day.day) },
      yAxis: { type: 'value', minInterval: 1 },
      series: [
        { type: 'bar', name: 'events', data: timeline.map((day) => day.events) },
        { type: 'bar', name: 'firings', data: timeline.map((day) => day.firings) },
      ],
    }),
    [timeline],
  )
  return <Chart option={option} label="Events and firings per day" height={240} testId="backtest-chart" />
}
