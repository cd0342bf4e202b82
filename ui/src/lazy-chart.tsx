// Charts load on demand: uPlot is about half the bundle, and the overview (the page most
// people open first) draws none, so it is fetched only when a node or alias page shows one.
import { useEffect, useState } from 'preact/hooks';
import type { Chart as ChartType } from './chart';

type Props = Parameters<typeof ChartType>[0];
let loaded: typeof ChartType | null = null;
let loading: Promise<typeof ChartType> | null = null;

export function Chart(props: Props) {
  // (a function as useState's argument would be called as an initializer: wrap it)
  const [C, set] = useState<typeof ChartType | null>(() => loaded);
  useEffect(() => {
    if (C) return;
    loading ??= import('./chart').then((m) => (loaded = m.Chart));
    void loading.then((c) => set(() => c));
  }, []);
  if (!C) return <div class="chart" data-testid={props.testid}><div class="chart-title">{props.title}</div><div class="muted">loading…</div></div>;
  return <C {...props} />;
}
