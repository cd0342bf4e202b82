// A node: status and rollout progress, actions (scale, update, suspend/resume, rollback,
// delete), instances live, charts of the last hour, events, logs followed live with search,
// and a "try it" form generated from the node's declared inputs.
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { ApiError, api, can, streamLines } from '../api';
import { Chart } from '../lazy-chart';
import { Badge, Confirm, ErrorBox, Me, ago, go, href, ms, useAction, useTick } from '../common';
import { live, useLive, type NodeView, type Point, type Variable } from '../store';

const TABS = [['overview', 'Instances & charts'], ['events', 'Events'], ['logs', 'Logs'], ['try', 'Try it'], ['spec', 'Spec']] as const;

export function NodePage({ id, tab }: { id: string; tab: string }) {
  const l = useLive();
  const n = l.nodes.get(id) ?? [...l.nodes.values()].find((x) => x.name === id);
  const me = Me.current;
  if (!n) {
    if (tab === 'try') return <div class="page"><h2>Node {id}</h2><TryIt node={null} nodeId={id} /></div>;
    return <div class="page"><h2>Node {id}</h2><p class="muted" data-testid="not-found">{l.loaded.nodes ? 'No such node in the folders this token may read.' : 'Loading…'}</p></div>;
  }
  const mayWrite = can(me, n.folderId, 'write');
  const mayCall = can(me, n.folderId, 'execute');
  return (
    <div class="page" data-testid="node-page">
      <div class="row">
        <h2 data-testid="node-name">{n.name}</h2>
        <Badge status={n.status} />
        <span class="muted">{n.kind} · folder {n.folderId} · revision {n.revision} · <code>{n.id}</code></span>
      </div>
      {n.description && <p>{n.description}</p>}
      <Progress n={n} />
      {mayWrite && <Actions n={n} />}
      <nav class="tabs">
        {TABS.filter(([t]) => t !== 'try' || mayCall).map(([t, label]) => (
          <a key={t} href={href(`/nodes/${n.id}/${t}`)} class={tab === t ? 'on' : ''} data-testid={`tab-${t}`}>{label}</a>
        ))}
      </nav>
      {tab === 'overview' && <><Instances n={n} /><NodeCharts n={n} /></>}
      {tab === 'events' && <Events n={n} />}
      {tab === 'logs' && <Logs n={n} />}
      {tab === 'try' && mayCall && <TryIt node={n} nodeId={n.id} />}
      {tab === 'spec' && <pre class="spec" data-testid="spec">{JSON.stringify(specOf(n), null, 2)}</pre>}
    </div>
  );
}

const READ_ONLY = ['id', 'status', 'revision', 'rollout', 'createdAt', 'updatedAt', 'createdBy', 'transitions', 'instances', 'queued', 'relatedAliases', 'warnings', 'scaledToZero', 'changed'];
function specOf(n: NodeView): Record<string, unknown> {
  const s: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(n)) if (!READ_ONLY.includes(k)) s[k] = v;
  return s;
}

/** Creating, resuming and rolling out take time: how far along they are. */
function Progress({ n }: { n: NodeView }) {
  const target = Math.max(1, n.scaling.minInstances);
  const healthy = n.instances.filter((i) => i.status === 'Healthy' && i.revision === n.revision).length;
  if (n.rollout?.state === 'Progressing') {
    const pct = Math.min(100, Math.round((n.rollout.healthy / target) * 100));
    return (
      <div class="progress" data-testid="progress">
        Rolling out revision {n.rollout.revision} (from {n.rollout.from}): {n.rollout.healthy}/{target} new instances Healthy, {n.rollout.outdated} outdated
        <div class="bar"><div style={{ width: `${pct}%` }} /></div>
      </div>
    );
  }
  if (n.rollout?.state === 'Failed') return <div class="error" data-testid="progress">Rollout to revision {n.rollout.revision} failed: {n.rollout.reason ?? 'unknown reason'}; revision {n.rollout.from} still serves.</div>;
  if (n.status === 'Created' || (n.status === 'Unhealthy' && healthy === 0)) {
    const steps = ['Created', 'Started', 'Preparing', 'Healthy'];
    const best = Math.max(0, ...n.instances.map((i) => steps.indexOf(i.status)));
    return (
      <div class="progress" data-testid="progress">
        {n.status === 'Created' ? 'Starting' : 'Recovering'}: {healthy}/{target} instances Healthy
        <ol class="steps">{steps.map((s, i) => <li key={s} class={i <= best && n.instances.length ? 'done' : ''}>{s}</li>)}</ol>
      </div>
    );
  }
  return null;
}

function Actions({ n }: { n: NodeView }) {
  const a = useAction();
  const [min, setMin] = useState(String(n.scaling.minInstances));
  const [max, setMax] = useState(String(n.scaling.maxInstances));
  const [confirm, setConfirm] = useState<null | 'delete' | 'suspend' | 'rollback'>(null);
  const [edit, setEdit] = useState<string | null>(null);
  const [plan, setPlan] = useState<{ changed: string[]; rollout: boolean; diff: Array<{ field: string; from: unknown; to: unknown }> } | null>(null);
  useEffect(() => { setMin(String(n.scaling.minInstances)); setMax(String(n.scaling.maxInstances)); }, [n.scaling.minInstances, n.scaling.maxInstances]);

  const scale = () => a.run(() => api('PATCH', `/v1/nodes/${n.id}`, { scaling: { minInstances: Number(min), maxInstances: Number(max) } }));
  const parsed = (): unknown => { try { return JSON.parse(edit ?? '{}'); } catch (err) { throw new ApiError(400, { code: 'INVALID_JSON', message: (err as Error).message, details: { field: 'body' } }); } };
  return (
    <div class="actions" data-testid="actions">
      <label class="inline">min <input type="number" min="0" value={min} onInput={(e) => setMin((e.target as HTMLInputElement).value)} data-testid="scale-min" /></label>
      <label class="inline">max <input type="number" min="1" value={max} onInput={(e) => setMax((e.target as HTMLInputElement).value)} data-testid="scale-max" /></label>
      <button onClick={() => void scale()} disabled={a.busy} data-testid="scale">Scale</button>
      <button onClick={() => { setEdit(JSON.stringify(specOf(n), null, 2)); setPlan(null); }} data-testid="edit">Update…</button>
      {n.status === 'Suspended'
        ? <button onClick={() => void a.run(() => api('POST', `/v1/nodes/${n.id}:resume`))} disabled={a.busy} data-testid="resume">Resume</button>
        : <button onClick={() => setConfirm('suspend')} disabled={a.busy} data-testid="suspend">Suspend</button>}
      {n.revision > 1 && <button onClick={() => setConfirm('rollback')} disabled={a.busy} data-testid="rollback">Roll back</button>}
      <button class="danger" onClick={() => setConfirm('delete')} disabled={a.busy} data-testid="delete">Delete</button>
      {a.busy && <span class="muted">working…</span>}
      <ErrorBox error={a.error} />
      {edit !== null && (
        <div class="editor">
          <p class="muted">A JSON merge patch over the spec: scaling, description and ACL change in place; anything else rolls out a new revision with no failed calls.</p>
          <textarea rows={14} value={edit} onInput={(e) => setEdit((e.target as HTMLTextAreaElement).value)} data-testid="edit-json" />
          <div class="row">
            <button onClick={() => void a.run(async () => setPlan(await api('PATCH', `/v1/nodes/${n.id}?dryRun=true`, parsed())))} data-testid="edit-preview">Preview</button>
            <button class="primary" onClick={() => void a.run(async () => { await api('PATCH', `/v1/nodes/${n.id}`, parsed()); setEdit(null); setPlan(null); })} data-testid="edit-apply">Apply</button>
            <button onClick={() => { setEdit(null); setPlan(null); a.clear(); }}>Cancel</button>
          </div>
          {plan && (
            <div class="plan" data-testid="edit-plan">
              {plan.changed.length === 0 ? 'Nothing changes.' : <>{plan.rollout ? 'Rolls out a new revision.' : 'Applies in place (nothing restarts).'}
                <ul>{plan.diff.map((d) => <li key={d.field}><code>{d.field}</code>: {JSON.stringify(d.from)} → {JSON.stringify(d.to)}</li>)}</ul></>}
            </div>
          )}
        </div>
      )}
      {confirm === 'delete' && (
        <Confirm title={`Delete node ${n.name}?`} confirmLabel="Delete" onCancel={() => setConfirm(null)}
          onConfirm={() => { setConfirm(null); void a.run(async () => { await api('DELETE', `/v1/nodes/${n.id}`); go('/'); }); }}>
          Its {n.instances.length} instance(s) stop and its settings are removed. {n.relatedAliases.length > 0 && <b>Aliases use it: {n.relatedAliases.join(', ')}.</b>}
        </Confirm>
      )}
      {confirm === 'suspend' && (
        <Confirm title={`Suspend node ${n.name}?`} confirmLabel="Suspend" onCancel={() => setConfirm(null)}
          onConfirm={() => { setConfirm(null); void a.run(() => api('POST', `/v1/nodes/${n.id}:suspend`)); }}>
          New calls are refused (NODE_SUSPENDED) at once; running calls finish, then every instance stops. Settings are kept.
        </Confirm>
      )}
      {confirm === 'rollback' && (
        <Confirm title={`Roll ${n.name} back?`} confirmLabel="Roll back" onCancel={() => setConfirm(null)}
          onConfirm={() => { setConfirm(null); void a.run(() => api('POST', `/v1/nodes/${n.id}:rollback`, {})); }}>
          The previous revision is rolled out again as a new revision.
        </Confirm>
      )}
    </div>
  );
}

function Instances({ n }: { n: NodeView }) {
  const now = useTick();
  return (
    <section>
      <h3>Instances <span class="muted">{n.instances.length} · {n.queued} queued</span></h3>
      {n.warnings && n.warnings.length > 0 && <p class="note">{n.warnings.join(' ')}</p>}
      <table class="grid" data-testid="instances">
        <thead><tr><th>instance</th><th>status</th><th>in status</th><th>rev</th><th class="r">restarts</th><th class="r">in flight</th><th>pid</th><th>last error</th><th /></tr></thead>
        <tbody>
          {n.instances.map((i) => {
            const since = i.transitions[i.transitions.length - 1]?.at ?? i.updatedAt;
            return (
              <tr key={i.id} data-testid="instance-row" data-instance={i.id} data-status={i.status}>
                <td><code>{i.id}</code></td>
                <td><Badge status={i.status} /></td>
                <td>{ago(since, now)}</td>
                <td>{i.revision}</td>
                <td class="r">{i.restarts}</td>
                <td class="r">{i.inFlight}</td>
                <td>{i.pid ?? '–'}</td>
                <td class="small">{i.lastError ?? ''}</td>
                <td><a href={href(`/nodes/${n.id}/logs?instance=${i.id}`)}>logs</a></td>
              </tr>
            );
          })}
          {n.instances.length === 0 && <tr><td colSpan={9} class="muted">No instances{n.status === 'Suspended' ? ' (suspended)' : ''}.</td></tr>}
        </tbody>
      </table>
    </section>
  );
}

/** The last hour of a node or alias: loaded once, then extended after each sample the stream announces. */
export function useHistory(path: string): { points: Point[]; extra: Record<string, Point[]>; error: unknown } {
  const [state, set] = useState<{ points: Point[]; extra: Record<string, Point[]>; error: unknown }>({ points: [], extra: {}, error: null });
  const last = useRef(0);
  useEffect(() => {
    let stopped = false;
    last.current = 0;
    const load = async (): Promise<void> => {
      try {
        const since = last.current ? last.current + 1 : 0;
        const r = await api<{ points: Point[]; backends?: Record<string, Point[]> }>('GET', `${path}${since ? `?since=${since}` : ''}`);
        if (stopped) return;
        set((s) => {
          const cut = Date.now() - 3600_000;
          const points = (since ? [...s.points, ...r.points] : r.points).filter((p) => p.t >= cut);
          const extra: Record<string, Point[]> = {};
          for (const [k, v] of Object.entries(r.backends ?? {})) extra[k] = (since ? [...(s.extra[k] ?? []), ...v] : v).filter((p) => p.t >= cut);
          const lastT = Math.max(points[points.length - 1]?.t ?? 0, ...Object.values(extra).map((v) => v[v.length - 1]?.t ?? 0));
          if (lastT) last.current = lastT;
          return { points, extra, error: null };
        });
      } catch (err) { if (!stopped) set((s) => ({ ...s, error: err })); }
    };
    void load();
    const off = live.onMetrics(() => void load());
    return () => { stopped = true; off(); };
  }, [path]);
  return state;
}

export function callCharts(points: Point[], withInstances: boolean) {
  const x = points.map((p) => p.t / 1000);
  const codes = [...new Set(points.flatMap((p) => Object.keys(p.errors)))].sort();
  const statuses = withInstances ? [...new Set(points.flatMap((p) => Object.keys(p.instances ?? {})))].filter((s) => points.some((p) => (p.instances?.[s] ?? 0) > 0)).sort() : [];
  return {
    rps: [x, points.map((p) => p.rps)],
    latency: [x, points.map((p) => p.p50), points.map((p) => p.p90), points.map((p) => p.p99)],
    errors: { names: codes.length ? codes : ['none'], data: [x, ...(codes.length ? codes.map((c) => points.map((p) => p.errors[c] ?? 0)) : [points.map(() => 0)])] },
    instances: { names: statuses.length ? statuses : ['Healthy'], data: [x, ...(statuses.length ? statuses.map((s) => points.map((p) => p.instances?.[s] ?? 0)) : [points.map(() => 0)])] },
  };
}

export const WINDOWS: Array<[number, string]> = [[300, '5 min'], [900, '15 min'], [3600, '1 hour']];

/** The chart window chooser (the server keeps an hour). */
export function WindowPicker({ value, set }: { value: number; set: (s: number) => void }) {
  return (
    <span class="window">{WINDOWS.map(([s, label]) => <button key={s} class={value === s ? 'on' : ''} onClick={() => set(s)}>{label}</button>)}</span>
  );
}

function NodeCharts({ n }: { n: NodeView }) {
  const h = useHistory(`/v1/nodes/${n.id}/metrics`);
  const [windowS, setWindow] = useState(900);
  const c = useMemo(() => callCharts(h.points, true), [h.points]);
  return (
    <section>
      <div class="row"><h3 class="grow">Metrics</h3><WindowPicker value={windowS} set={setWindow} /></div>
      <ErrorBox error={h.error} />
      <div class="charts" data-testid="charts">
        <Chart title="calls/s" names={['calls/s']} data={c.rps} unit="/s" testid="chart-rps" windowS={windowS} />
        <Chart title="latency" names={['p50', 'p90', 'p99']} data={c.latency} unit=" ms" testid="chart-latency" windowS={windowS} />
        <Chart title="errors/s by code" names={c.errors.names} data={c.errors.data} unit="/s" testid="chart-errors" windowS={windowS} />
        <Chart title="instances" names={c.instances.names} data={c.instances.data} testid="chart-instances" windowS={windowS} />
      </div>
    </section>
  );
}

interface NodeEvent { id: string | number; at: string; type: string; reason?: string; details?: unknown; instanceId?: string }

function Events({ n }: { n: NodeView }) {
  const [events, setEvents] = useState<NodeEvent[] | null>(null);
  const [missing, setMissing] = useState(false);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    api<{ events: NodeEvent[] }>('GET', `/v1/nodes/${n.id}/events?limit=100`)
      .then((r) => { setEvents(r.events); setError(null); })
      .catch((err) => { if (err instanceof ApiError && err.code === 'ROUTE_NOT_FOUND') setMissing(true); else setError(err); });
  }, [n.id, n.updatedAt, n.status, n.instances.map((i) => `${i.id}:${i.status}`).join()]);
  // status changes of the node and its instances, always there (also when the events API is not)
  const transitions = [
    ...n.transitions.map((t) => ({ ...t, who: 'node' })),
    ...n.instances.flatMap((i) => i.transitions.map((t) => ({ ...t, who: i.id }))),
  ].sort((a, b) => b.at.localeCompare(a.at)).slice(0, 100);
  return (
    <section>
      <ErrorBox error={error} />
      {events && (
        <>
          <h3>Events</h3>
          <table class="grid" data-testid="events">
            <thead><tr><th>at</th><th>type</th><th>reason</th><th>details</th></tr></thead>
            <tbody>{events.map((e) => <tr key={String(e.id)}><td>{new Date(e.at).toLocaleTimeString()}</td><td>{e.type}</td><td>{e.reason ?? ''}</td><td class="small"><code>{e.details ? JSON.stringify(e.details) : ''}</code></td></tr>)}
              {events.length === 0 && <tr><td colSpan={4} class="muted">No events.</td></tr>}</tbody>
          </table>
        </>
      )}
      {missing && <p class="muted" data-testid="events-missing">This server has no node events API (GET /v1/nodes/&#123;ref&#125;/events); status changes follow.</p>}
      <h3>Status changes</h3>
      <table class="grid" data-testid="transitions">
        <thead><tr><th>at</th><th>what</th><th>status</th><th>reason</th></tr></thead>
        <tbody>{transitions.map((t, i) => <tr key={i}><td>{new Date(t.at).toLocaleTimeString()}</td><td>{t.who === 'node' ? 'node' : <code>{t.who}</code>}</td><td><Badge status={t.status} /></td><td>{t.reason ?? ''}</td></tr>)}</tbody>
      </table>
    </section>
  );
}

const MAX_LOG_LINES = 2000;

function Logs({ n }: { n: NodeView }) {
  const q = new URLSearchParams(location.hash.split('?')[1] ?? '');
  const [instance, setInstance] = useState(q.get('instance') ?? '');
  const [search, setSearch] = useState('');
  const [applied, setApplied] = useState('');
  const [follow, setFollow] = useState(true);
  const [lines, setLines] = useState<string[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [state, setState] = useState('');
  const pre = useRef<HTMLPreElement>(null);
  // the server searches (it reads the files); typing waits a moment before asking again
  useEffect(() => { const t = setTimeout(() => setApplied(search), 300); return () => clearTimeout(t); }, [search]);
  useEffect(() => {
    const abort = new AbortController();
    setLines([]); setError(null);
    const params = new URLSearchParams({ lines: '200' });
    if (instance) params.set('instance', instance);
    if (applied) params.set('search', applied);
    let buffer: string[] = [];
    let scheduled = false;
    const flush = (): void => {
      scheduled = false;
      const add = buffer; buffer = [];
      setLines((l) => { const next = l.concat(add); return next.length > MAX_LOG_LINES ? next.slice(-MAX_LOG_LINES) : next; });
    };
    const run = async (): Promise<void> => {
      if (follow) {
        setState('following');
        params.set('follow', 'true');
        await streamLines(`/v1/nodes/${n.id}/logs?${params}`, abort.signal, (line) => {
          buffer.push(line);
          if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
        });
        setState('ended');
      } else {
        setState('');
        const r = await api<{ logs: Array<{ instanceId: string; text: string }> }>('GET', `/v1/nodes/${n.id}/logs?${params}`);
        setLines(r.logs.flatMap((x) => (r.logs.length > 1 ? [`==> instance ${x.instanceId} <==`] : []).concat(x.text.split('\n').filter(Boolean))));
      }
    };
    run().catch((err) => { if (!abort.signal.aborted) { setError(err); setState(''); } });
    return () => abort.abort();
  }, [n.id, instance, applied, follow]);
  useEffect(() => { const el = pre.current; if (el) el.scrollTop = el.scrollHeight; }, [lines]);
  return (
    <section>
      <div class="row">
        <select value={instance} onChange={(e) => setInstance((e.target as HTMLSelectElement).value)} data-testid="log-instance">
          <option value="">all instances</option>
          {n.instances.map((i) => <option key={i.id} value={i.id}>{i.id} ({i.status})</option>)}
        </select>
        <input type="search" class="grow" placeholder="search (server-side, plain text)" value={search} onInput={(e) => setSearch((e.target as HTMLInputElement).value)} data-testid="log-search" />
        <label class="inline"><input type="checkbox" checked={follow} onChange={(e) => setFollow((e.target as HTMLInputElement).checked)} data-testid="log-follow" /> follow</label>
        <span class="muted">{state}</span>
      </div>
      <ErrorBox error={error} />
      <pre class="logs" ref={pre} data-testid="logs">{lines.join('\n')}</pre>
    </section>
  );
}

/** A file's bytes as base64 (how `bytes` variables travel in JSON). */
async function fileBase64(f: File): Promise<string> {
  const buf = new Uint8Array(await f.arrayBuffer());
  let bin = '';
  for (let i = 0; i < buf.length; i += 0x8000) bin += String.fromCharCode(...buf.subarray(i, i + 0x8000));
  return btoa(bin);
}

/** One input widget per declared variable; anything not a scalar is JSON. */
function fieldKind(type: string): 'int' | 'float' | 'str' | 'bool' | 'bytes' | 'json' {
  const t = type.replace(/^optional\[(.*)\]$/, '$1');
  if (t === 'int' || t === 'float' || t === 'str' || t === 'bool' || t === 'bytes') return t;
  return 'json';
}

function TryIt({ node, nodeId }: { node: NodeView | null; nodeId: string }) {
  const inputs: Variable[] | null = node?.kind === 'cell' ? (node.inputs ?? []) : null;
  const [values, setValues] = useState<Record<string, string | boolean>>({});
  const [raw, setRaw] = useState('{}');
  const [folder, setFolder] = useState(node?.folderId ?? Me.current?.defaultFolder ?? 'default');
  const [result, setResult] = useState<{ output: unknown; ms: number } | null>(null);
  const a = useAction();
  if (node && node.kind !== 'cell') {
    return <p class="note">An image node is called with any HTTP or gRPC client through the gateway, with the header <code>x-node-id: {node.id}</code> and <code>x-folder-id</code>.</p>;
  }
  const build = (): Record<string, unknown> => {
    if (!inputs) return JSON.parse(raw) as Record<string, unknown>;
    const input: Record<string, unknown> = {};
    for (const v of inputs) {
      const k = fieldKind(v.type);
      const val = values[v.name];
      if (val === undefined || val === '') { if (k === 'bool' && v.default === undefined) input[v.name] = false; else if (v.optional || v.default !== undefined || /^optional\[/.test(v.type)) continue; else input[v.name] = k === 'str' || k === 'bytes' ? '' : undefined; continue; }
      if (k === 'bool') input[v.name] = val === true;
      else if (k === 'int' || k === 'float') input[v.name] = Number(val);
      else if (k === 'str' || k === 'bytes') input[v.name] = val;
      else {
        try { input[v.name] = JSON.parse(String(val)); } catch (err) {
          throw new ApiError(400, { code: 'INVALID_JSON', message: `${v.name}: not JSON (${(err as Error).message})`, details: { variable: v.name } });
        }
      }
    }
    return input;
  };
  const call = () => a.run(async () => {
    setResult(null);
    const input = build();
    const t0 = performance.now();
    const r = await api<{ output: unknown }>('POST', `/datasphere/v1/nodes/${nodeId}:execute`, { folder_id: folder, input });
    setResult({ output: r.output, ms: performance.now() - t0 });
  });
  return (
    <section class="try" data-testid="try">
      <form onSubmit={(e) => { e.preventDefault(); void call(); }}>
        {inputs === null && (
          <>
            <label>folder <input value={folder} onInput={(e) => setFolder((e.target as HTMLInputElement).value)} data-testid="try-folder" /></label>
            <label>input (JSON)<textarea rows={6} value={raw} onInput={(e) => setRaw((e.target as HTMLTextAreaElement).value)} data-testid="try-raw" /></label>
          </>
        )}
        {inputs?.length === 0 && <p class="muted">This node declares no inputs.</p>}
        {inputs?.map((v) => {
          const k = fieldKind(v.type);
          const set = (x: string | boolean): void => setValues((s) => ({ ...s, [v.name]: x }));
          return (
            <label key={v.name} data-testid={`try-field-${v.name}`}>
              <span><b>{v.name}</b> <span class="muted">{v.type}{v.default !== undefined ? ` (default ${JSON.stringify(v.default)})` : ''}{v.description ? ` — ${v.description}` : ''}</span></span>
              {k === 'bool' && <input type="checkbox" name={v.name} checked={values[v.name] === true} onChange={(e) => set((e.target as HTMLInputElement).checked)} />}
              {(k === 'int' || k === 'float') && <input type="number" name={v.name} step={k === 'int' ? '1' : 'any'} value={String(values[v.name] ?? '')} onInput={(e) => set((e.target as HTMLInputElement).value)} />}
              {k === 'str' && <input type="text" name={v.name} value={String(values[v.name] ?? '')} onInput={(e) => set((e.target as HTMLInputElement).value)} />}
              {k === 'bytes' && (
                <span class="row">
                  <input type="text" class="grow" name={v.name} placeholder="base64, or pick a file" value={String(values[v.name] ?? '')} onInput={(e) => set((e.target as HTMLInputElement).value)} />
                  <input type="file" onChange={(e) => { const f = (e.target as HTMLInputElement).files?.[0]; if (f) void fileBase64(f).then(set); }} />
                </span>
              )}
              {k === 'json' && <textarea rows={3} name={v.name} placeholder="JSON" value={String(values[v.name] ?? '')} onInput={(e) => set((e.target as HTMLTextAreaElement).value)} />}
            </label>
          );
        })}
        <button type="submit" class="primary" disabled={a.busy} data-testid="try-call">{a.busy ? 'Calling…' : 'Call'}</button>
      </form>
      <ErrorBox error={a.error} />
      {result && (
        <div class="result" data-testid="try-result">
          <div class="muted">output in {ms(result.ms)}</div>
          <pre data-testid="try-output">{JSON.stringify(result.output, null, 2)}</pre>
        </div>
      )}
      <p class="muted small">Calls <code>POST /datasphere/v1/nodes/{nodeId}:execute</code> with this token, as any client would.</p>
    </section>
  );
}
