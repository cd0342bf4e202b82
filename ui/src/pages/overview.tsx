// The overview: every node and alias the token may read, with status, instances, calls/s,
// error rate and p50/p99 now, and first what needs attention (Unhealthy nodes, failing
// rollouts, instances restarting). Everything comes from the live stream.
import { useState } from 'preact/hooks';
import { foldersWith } from '../api';
import { Badge, Me, errorRate, href, ms, num } from '../common';
import { useLive, type NodeView } from '../store';

interface Attention { key: string; what: string; link: string }

function attention(nodes: NodeView[]): Attention[] {
  const out: Attention[] = [];
  for (const n of nodes) {
    if (n.status === 'Unhealthy') out.push({ key: `u-${n.id}`, what: `node ${n.name} is Unhealthy (${n.instances.filter((i) => i.status === 'Healthy').length} of ${n.scaling.minInstances} needed instances Healthy)`, link: `/nodes/${n.id}` });
    if (n.rollout?.state === 'Failed') out.push({ key: `r-${n.id}`, what: `rollout of ${n.name} to revision ${n.rollout.revision} failed${n.rollout.reason ? `: ${n.rollout.reason}` : ''}`, link: `/nodes/${n.id}` });
    else if (n.rollout?.state === 'Progressing') out.push({ key: `p-${n.id}`, what: `${n.name}: rolling out revision ${n.rollout.revision} (${n.rollout.healthy} Healthy, ${n.rollout.outdated} outdated)`, link: `/nodes/${n.id}` });
    for (const i of n.instances) {
      if (i.restarts > 0 && i.status !== 'Healthy') out.push({ key: `i-${i.id}`, what: `${n.name}: instance ${i.id} is ${i.status} after ${i.restarts} restart${i.restarts > 1 ? 's' : ''}${i.lastError ? ` — ${i.lastError}` : ''}`, link: `/nodes/${n.id}` });
    }
  }
  return out;
}

export function Overview() {
  const l = useLive();
  const [filter, setFilter] = useState('');
  const me = Me.current;
  const f = filter.toLowerCase();
  const nodes = [...l.nodes.values()].filter((n) => !f || n.name.toLowerCase().includes(f) || n.id.includes(f) || n.folderId.toLowerCase().includes(f))
    .sort((a, b) => a.folderId.localeCompare(b.folderId) || a.name.localeCompare(b.name));
  const aliases = [...l.aliases.values()].filter((a) => !f || a.name.toLowerCase().includes(f)).sort((a, b) => a.name.localeCompare(b.name));
  const names = new Map([...l.nodes.values()].map((n) => [n.id, n.name]));
  const writable = foldersWith(me, 'write').length > 0 || me?.roles['*'] === 'admin' || me?.roles['*'] === 'editor';
  const readable = foldersWith(me, 'read').length > 0 || (me?.roles['*'] !== undefined && me.roles['*'] !== 'executor');
  const todo = attention([...l.nodes.values()]);

  if (!readable) {
    return (
      <div class="page" data-testid="overview">
        <h2>Overview</h2>
        <p class="note" data-testid="execute-only">This token may call nodes ({Object.entries(me?.roles ?? {}).map(([k, v]) => `${v} in ${k}`).join(', ')}) but not read them, so there is nothing to list.
          Open a node by its id to call it: <a href={href('/nodes/ID/try')}>#/nodes/ID/try</a>.</p>
      </div>
    );
  }
  return (
    <div class="page" data-testid="overview">
      <div class="row">
        <h2>Overview</h2>
        <input class="grow" type="search" placeholder="filter by name, id or folder" value={filter} onInput={(e) => setFilter((e.target as HTMLInputElement).value)} data-testid="filter" />
        {writable && <a class="button primary" href={href('/nodes/new')} data-testid="new-node">New node</a>}
        {writable && <a class="button" href={href('/aliases/new')} data-testid="new-alias">New alias</a>}
      </div>
      {todo.length > 0 && (
        <section class="attention" data-testid="attention">
          <h3>Needs attention</h3>
          <ul>{todo.map((t) => <li key={t.key}><a href={href(t.link)}>{t.what}</a></li>)}</ul>
        </section>
      )}
      <section>
        <h3>Nodes <span class="muted">{l.loaded.nodes ? l.nodes.size : '…'}</span></h3>
        <table class="grid" data-testid="nodes-table">
          <thead><tr><th>name</th><th>status</th><th>folder</th><th>kind</th><th>instances</th><th class="r">calls/s</th><th class="r">errors</th><th class="r">p50</th><th class="r">p99</th><th>rollout</th></tr></thead>
          <tbody>
            {nodes.map((n) => {
              const p = l.now.nodes.get(n.id);
              const healthy = n.instances.filter((i) => i.status === 'Healthy').length;
              const er = errorRate(p);
              return (
                <tr key={n.id} data-testid="node-row" data-node={n.name}>
                  <td><a href={href(`/nodes/${n.id}`)}>{n.name}</a></td>
                  <td><Badge status={n.status} />{n.scaledToZero ? <span class="muted"> at zero</span> : null}</td>
                  <td>{n.folderId}</td>
                  <td>{n.kind}</td>
                  <td>{healthy}/{n.instances.length} <span class="muted">({n.scaling.minInstances}–{n.scaling.maxInstances})</span></td>
                  <td class="r">{num(p?.rps)}</td>
                  <td class={`r ${er ? 'bad' : ''}`}>{er === null ? '–' : `${(er * 100).toFixed(1)}%`}</td>
                  <td class="r">{ms(p?.p50)}</td>
                  <td class="r">{ms(p?.p99)}</td>
                  <td>{n.rollout && n.rollout.state !== 'Complete' ? <Badge status={n.rollout.state} /> : <span class="muted">r{n.revision}</span>}</td>
                </tr>
              );
            })}
            {l.loaded.nodes && nodes.length === 0 && <tr><td colSpan={10} class="muted">No nodes{filter ? ' match' : ' yet'}.</td></tr>}
          </tbody>
        </table>
      </section>
      <section>
        <h3>Aliases <span class="muted">{l.loaded.aliases ? l.aliases.size : '…'}</span></h3>
        <table class="grid" data-testid="aliases-table">
          <thead><tr><th>name</th><th>folder</th><th>backends</th><th class="r">calls/s</th><th class="r">errors</th><th class="r">p50</th><th class="r">p99</th></tr></thead>
          <tbody>
            {aliases.map((a) => {
              const p = l.now.aliases.get(a.name);
              const er = errorRate(p);
              return (
                <tr key={a.id} data-testid="alias-row">
                  <td><a href={href(`/aliases/${encodeURIComponent(a.name)}`)}>{a.name}</a></td>
                  <td>{a.folderId}</td>
                  <td>{a.status.backends.map((b) => <span key={b.nodeId} class="chip"><Badge status={b.nodeStatus} /> {names.get(b.nodeId) ?? b.nodeId} · {b.weight}</span>)}</td>
                  <td class="r">{num(p?.rps)}</td>
                  <td class={`r ${er ? 'bad' : ''}`}>{er === null ? '–' : `${(er * 100).toFixed(1)}%`}</td>
                  <td class="r">{ms(p?.p50)}</td>
                  <td class="r">{ms(p?.p99)}</td>
                </tr>
              );
            })}
            {l.loaded.aliases && aliases.length === 0 && <tr><td colSpan={7} class="muted">No aliases{filter ? ' match' : ' yet'}.</td></tr>}
          </tbody>
        </table>
      </section>
    </div>
  );
}
