// An alias: its backends with weights as sliders, the live split of calls per backend, a
// canary shift and a swap in two clicks, mirroring results, and its charts.
import { useEffect, useMemo, useState } from 'preact/hooks';
import { api, can } from '../api';
import { Chart } from '../lazy-chart';
import { Badge, Confirm, ErrorBox, Me, go, href, ms, num, useAction } from '../common';
import { useLive, type AliasView } from '../store';
import { WindowPicker, callCharts, useHistory } from './node';

const SHIFTS = [1, 10, 25, 50, 100];

/** The weights a canary shift gives: `percent` to `target`, the rest shared as now (as `berth alias shift`). */
export function shifted(backends: Array<{ nodeId: string; weight: number }>, target: string, percent: number): Array<{ nodeId: string; weight: number }> {
  const others = backends.filter((b) => b.nodeId !== target);
  const rest = others.reduce((s, b) => s + b.weight, 0);
  return [
    ...(percent > 0 ? [{ nodeId: target, weight: percent * 10 }] : []),
    ...(percent < 100 && rest > 0 ? others.map((b) => ({ nodeId: b.nodeId, weight: Math.max(1e-6, ((100 - percent) * 10 * b.weight) / rest) })) : []),
  ];
}

export function AliasPage({ name }: { name: string }) {
  const l = useLive();
  const a = [...l.aliases.values()].find((x) => x.name === name || x.id === name);
  if (!a) return <div class="page"><h2>Alias {name}</h2><p class="muted">{l.loaded.aliases ? 'No such alias in the folders this token may read.' : 'Loading…'}</p></div>;
  return <AliasBody a={a} />;
}

function AliasBody({ a }: { a: AliasView }) {
  const l = useLive();
  const me = Me.current;
  const mayWrite = can(me, a.folderId, 'write');
  const act = useAction();
  const total = a.backends.reduce((s, b) => s + b.weight, 0) || 1;
  const pct = (w: number, sum: number): number => Math.round((w / (sum || 1)) * 1000) / 10;
  const [weights, setWeights] = useState<Record<string, number>>({});
  const [confirm, setConfirm] = useState<null | 'swap' | 'delete'>(null);
  const [target, setTarget] = useState<string>('');
  const [percent, setPercent] = useState<number | null>(null);
  const key = a.backends.map((b) => `${b.nodeId}=${b.weight}`).join();
  useEffect(() => { setWeights(Object.fromEntries(a.backends.map((b) => [b.nodeId, pct(b.weight, total)]))); }, [key]);
  const nodeName = (id: string): string => l.nodes.get(id)?.name ?? id;
  const candidates = [...l.nodes.values()].filter((n) => n.folderId === a.folderId && n.kind === (l.nodes.get(a.backends[0]?.nodeId ?? '')?.kind ?? n.kind));
  useEffect(() => { if (!target) setTarget(a.backends[1]?.nodeId ?? candidates.find((n) => !a.backends.some((b) => b.nodeId === n.id))?.id ?? a.backends[0]?.nodeId ?? ''); }, [key, candidates.length]);

  const patch = (backends: Array<{ nodeId: string; weight: number }>) => act.run(() => api('PATCH', `/v1/aliases/${encodeURIComponent(a.name)}`, { backends }));
  const edited = Object.entries(weights).filter(([, w]) => w > 0).map(([nodeId, w]) => ({ nodeId, weight: w }));
  const editedSum = edited.reduce((s, b) => s + b.weight, 0);
  const dirty = a.backends.some((b) => Math.abs((weights[b.nodeId] ?? 0) - pct(b.weight, total)) > 0.05);

  // the live split: calls/s of each backend node now (all its callers)
  const rates = a.backends.map((b) => ({ nodeId: b.nodeId, rps: l.now.nodes.get(b.nodeId)?.rps ?? 0 }));
  const rateSum = rates.reduce((s, r) => s + r.rps, 0);
  const p = l.now.aliases.get(a.name);
  const mirror = a.status.mirror as null | { shadowNodeId: string; percent: number; sent: number; compared: number; differing: number; differingRatio: number; shadowErrors: number; skipped: number; primaryP50Ms: number | null; shadowP50Ms: number | null; primaryP99Ms: number | null; shadowP99Ms: number | null };

  return (
    <div class="page" data-testid="alias-page">
      <div class="row">
        <h2>{a.name}</h2>
        <span class="muted">folder {a.folderId} · {a.executionAcl.isPublic ? 'public' : `callable from ${a.executionAcl.folders.join(', ')}`}{a.sticky ? ` · sticky by ${a.sticky.header}` : ''}</span>
        <span class="grow" />
        <span>{num(p?.rps)} calls/s · p50 {ms(p?.p50)} · p99 {ms(p?.p99)}</span>
        {mayWrite && <button class="danger" onClick={() => setConfirm('delete')} data-testid="alias-delete">Delete</button>}
      </div>
      <section>
        <h3>Backends</h3>
        <table class="grid" data-testid="backends">
          <thead><tr><th>node</th><th>status</th><th class="r">healthy</th><th>weight</th><th class="r">configured</th><th>live split</th></tr></thead>
          <tbody>
            {a.status.backends.map((b) => {
              const share = rateSum > 0 ? (rates.find((r) => r.nodeId === b.nodeId)!.rps / rateSum) * 100 : null;
              return (
                <tr key={b.nodeId} data-testid="backend-row" data-node={nodeName(b.nodeId)}>
                  <td><a href={href(`/nodes/${b.nodeId}`)}>{nodeName(b.nodeId)}</a></td>
                  <td><Badge status={b.nodeStatus} /></td>
                  <td class="r">{b.healthyInstances}</td>
                  <td>
                    <input type="range" min="0" max="100" step="1" value={weights[b.nodeId] ?? 0} disabled={!mayWrite}
                      onInput={(e) => setWeights((w) => ({ ...w, [b.nodeId]: Number((e.target as HTMLInputElement).value) }))} data-testid="weight-slider" />
                    <span class="muted"> {num(weights[b.nodeId] ?? 0)}{editedSum > 0 ? ` → ${pct(weights[b.nodeId] ?? 0, editedSum)}%` : ''}</span>
                  </td>
                  <td class="r" data-testid="configured">{pct(b.weight, total)}%</td>
                  <td><div class="split">
                    <div class="bar"><div style={{ width: `${share ?? 0}%` }} /></div>
                    <span data-testid="live-split">{share === null ? 'no calls' : `${share.toFixed(0)}%`}</span>
                  </div></td>
                </tr>
              );
            })}
          </tbody>
        </table>
        {mayWrite && (
          <div class="actions">
            <button class="primary" disabled={!dirty || act.busy || editedSum === 0} onClick={() => void patch(edited)} data-testid="apply-weights">Apply weights</button>
            {a.backends.length === 2 && <button onClick={() => setConfirm('swap')} disabled={act.busy} data-testid="swap">Swap</button>}
            <span class="sep" />
            <label class="inline">Canary
              <select value={target} onChange={(e) => setTarget((e.target as HTMLSelectElement).value)} data-testid="shift-node">
                {candidates.map((n) => <option key={n.id} value={n.id}>{n.name}</option>)}
              </select>
            </label>
            {SHIFTS.map((s) => <button key={s} class={percent === s ? 'on' : ''} onClick={() => setPercent(s)} data-testid={`shift-${s}`}>{s}%</button>)}
            <button class="primary" disabled={percent === null || !target || act.busy}
              onClick={() => { void patch(shifted(a.backends, target, percent!)).then(() => setPercent(null)); }} data-testid="shift-apply">
              Shift{percent !== null ? ` ${percent}% to ${nodeName(target)}` : ''}
            </button>
          </div>
        )}
        <ErrorBox error={act.error} />
      </section>
      {mirror && (
        <section data-testid="mirror">
          <h3>Mirroring {mirror.percent}% to {nodeName(mirror.shadowNodeId)}</h3>
          <table class="grid narrow">
            <tbody>
              <tr><td>sent</td><td class="r">{mirror.sent}</td><td>compared</td><td class="r">{mirror.compared}</td></tr>
              <tr><td>differing</td><td class={`r ${mirror.differing ? 'bad' : ''}`}>{mirror.differing} ({(mirror.differingRatio * 100).toFixed(1)}%)</td><td>shadow errors</td><td class="r">{mirror.shadowErrors}</td></tr>
              <tr><td>skipped (shadow busy)</td><td class="r">{mirror.skipped}</td><td /><td /></tr>
              <tr><td>primary p50 / p99</td><td class="r">{ms(mirror.primaryP50Ms)} / {ms(mirror.primaryP99Ms)}</td><td>shadow p50 / p99</td><td class="r">{ms(mirror.shadowP50Ms)} / {ms(mirror.shadowP99Ms)}</td></tr>
            </tbody>
          </table>
        </section>
      )}
      <AliasCharts a={a} nodeName={nodeName} />
      {confirm === 'swap' && (
        <Confirm title="Swap the two backends' weights?" confirmLabel="Swap" onCancel={() => setConfirm(null)}
          onConfirm={() => { setConfirm(null); const [x, y] = a.backends; void patch([{ nodeId: x!.nodeId, weight: y!.weight }, { nodeId: y!.nodeId, weight: x!.weight }]); }}>
          {nodeName(a.backends[0]!.nodeId)} gets {pct(a.backends[1]!.weight, total)}% and {nodeName(a.backends[1]!.nodeId)} {pct(a.backends[0]!.weight, total)}%, in one atomic change.
        </Confirm>
      )}
      {confirm === 'delete' && (
        <Confirm title={`Delete alias ${a.name}?`} confirmLabel="Delete" onCancel={() => setConfirm(null)}
          onConfirm={() => { setConfirm(null); void act.run(async () => { await api('DELETE', `/v1/aliases/${encodeURIComponent(a.name)}`); go('/'); }); }}>
          Callers using this name get ALIAS_NOT_FOUND. Its nodes stay.
        </Confirm>
      )}
    </div>
  );
}

function AliasCharts({ a, nodeName }: { a: AliasView; nodeName: (id: string) => string }) {
  const h = useHistory(`/v1/aliases/${encodeURIComponent(a.name)}/metrics`);
  const [windowS, setWindow] = useState(900);
  const c = useMemo(() => callCharts(h.points, false), [h.points]);
  const split = useMemo(() => {
    const ids = Object.keys(h.extra);
    const times = [...new Set(ids.flatMap((id) => h.extra[id]!.map((p) => p.t)))].sort((x, y) => x - y);
    const by = ids.map((id) => new Map(h.extra[id]!.map((p) => [p.t, p.rps])));
    return { names: ids.map(nodeName), data: [times.map((t) => t / 1000), ...by.map((m) => times.map((t) => m.get(t) ?? null))] };
  }, [h.extra]);
  return (
    <section>
      <div class="row"><h3 class="grow">Metrics</h3><WindowPicker value={windowS} set={setWindow} /></div>
      <ErrorBox error={h.error} />
      <div class="charts">
        <Chart title="calls/s" names={['calls/s']} data={c.rps} unit="/s" windowS={windowS} />
        <Chart title="latency" names={['p50', 'p90', 'p99']} data={c.latency} unit=" ms" windowS={windowS} />
        <Chart title="errors/s by code" names={c.errors.names} data={c.errors.data} unit="/s" windowS={windowS} />
        {split.names.length > 0 && <Chart title="calls/s per backend node (all its callers)" names={split.names} data={split.data} unit="/s" testid="chart-split" windowS={windowS} />}
      </div>
    </section>
  );
}
