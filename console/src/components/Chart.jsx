// An ECharts chart bound to a React element; only the chart kinds the console draws are bundled.
import { useEffect, useRef } from 'react'
import * as echarts from 'echarts/core'
import { BarChart, FunnelChart, LineChart, ScatterChart } from 'echarts/charts'
import {
  AriaComponent,
  DataZoomComponent,
  GridComponent,
  LegendComponent,
  TitleComponent,
  TooltipComponent,
} from 'echarts/components'
import { CanvasRenderer } from 'echarts/renderers'

echarts.use([
  BarChart,
  FunnelChart,
  LineChart,
  ScatterChart,
  AriaComponent,
  DataZoomComponent,
  GridComponent,
  LegendComponent,
  TitleComponent,
  TooltipComponent,
  CanvasRenderer,
])

/** `option` is an ECharts option; `label` names the chart for screen readers (ECharts' aria adds a
 * description of the data too). */
export function Chart({ option, label, height = 320, testId }) {
  const element = useRef(null)
  const chart = useRef(null)
  useEffect(() => {
    chart.current = echarts.init(element.current)
    const resize = () => chart.current?.resize()
    window.addEventListener('resize', resize)
    return () => {
      window.removeEventListener('resize', resize)
      chart.current.dispose()
    }
  }, [])
  useEffect(() => {
    chart.current.setOption({ aria: { enabled: true }, animation: false, ...option }, true)
  }, [option])
  return <div className="chart" role="img" aria-label={label} data-testid={testId} ref={element} style={{ height }} />
}
