// A time-series chart over uPlot (small and fast: a canvas, no DOM per point). The series are
// given as columns: x in unix seconds, then one array per line; null leaves a gap.
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#4b5563'];

/** Fixed colours for instance statuses, so Healthy is always green whatever else is drawn. */
const STATUS_COLORS: Record<string, string> = { Healthy: '#16a34a', Unhealthy: '#dc2626', Preparing: '#2563eb', Started: '#0891b2', Created: '#7c3aed', Outdated: '#d97706', Deleting: '#4b5563', Undefined: '#9ca3af' };

export function Chart({ title, names, data, unit, testid, windowS }: {
  title: string; names: string[]; data: Array<Array<number | null>>; unit?: string; testid?: string;
  /** The x axis shows the last `windowS` seconds up to now (default: the data's own range). */
  windowS?: number;
}) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const key = names.join('|');

  useEffect(() => {
    const el = box.current!;
    const opts: uPlot.Options = {
      width: Math.max(280, el.clientWidth || 420), height: 170,
      legend: { show: true, live: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: true, ...(windowS ? { range: (): uPlot.Range.MinMax => { const now = Date.now() / 1000; return [now - windowS, now]; } } : {}) },
        y: { range: (_u, _min, max) => [0, Math.max(max || 0, unit === '%' ? 5 : 1) * 1.1] } },
      axes: [
        { stroke: '#6b7280', grid: { stroke: '#eef0f3' }, ticks: { show: false } },
        { stroke: '#6b7280', grid: { stroke: '#eef0f3' }, ticks: { show: false }, size: 48, values: (_u, v) => v.map((x) => `${+x.toFixed(2)}${unit && unit !== '/s' ? unit : ''}`) },
      ],
      series: [{}, ...names.map((n, i) => ({ label: n, stroke: STATUS_COLORS[n] ?? COLORS[i % COLORS.length], width: 1.5, spanGaps: false, points: { show: false } }))],
    };
    plot.current = new uPlot(opts, data as uPlot.AlignedData, el);
    const ro = new ResizeObserver(() => plot.current?.setSize({ width: Math.max(280, el.clientWidth), height: 170 }));
    ro.observe(el);
    return () => { ro.disconnect(); plot.current?.destroy(); plot.current = null; };
  }, [key, windowS]);

  useEffect(() => { plot.current?.setData(data as uPlot.AlignedData); }, [data]);

  return (
    <div class="chart" data-testid={testid}>
      <div class="chart-title">{title}</div>
      <div ref={box} />
    </div>
  );
}
