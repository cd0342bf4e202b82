// Checkpoints: variables, sizes, packages, Python version; pin, rename, unpin and delete
// (delete asks first). A node may be created straight from a pinned one.
import { useEffect, useState } from 'preact/hooks';
import { api, can } from '../api';
import { Confirm, ErrorBox, Me, ago, bytes, href, useAction } from '../common';

export interface Checkpoint {
  id: string; name: string | null; pinned: boolean; folderId: string; source: string; python: string; size: number;
  packages: Array<{ name: string; version: string }>; variables: Array<{ name: string; type: string }>;
  skipped: Array<{ name: string; type: string; reason: string }>; code: string; createdAt: string; createdBy: string;
}

export function Checkpoints() {
  const [list, setList] = useState<Checkpoint[] | null>(null);
  const [open, setOpen] = useState<string | null>(null);
  const [naming, setNaming] = useState<{ id: string; value: string } | null>(null);
  const [confirm, setConfirm] = useState<Checkpoint | null>(null);
  const a = useAction();
  const load = () => a.run(async () => setList((await api<{ checkpoints: Checkpoint[] }>('GET', '/v1/checkpoints')).checkpoints));
  useEffect(() => { void load(); }, []);
  const me = Me.current;
  const rename = (c: Checkpoint, name: string | null) => a.run(async () => { await api('PATCH', `/v1/checkpoints/${c.id}`, { name }); setNaming(null); await load(); });
  return (
    <div class="page" data-testid="checkpoints">
      <h2>Checkpoints</h2>
      <ErrorBox error={a.error} />
      <table class="grid">
        <thead><tr><th>name</th><th>id</th><th>folder</th><th>python</th><th class="r">size</th><th class="r">variables</th><th class="r">packages</th><th>created</th><th /></tr></thead>
        <tbody>
          {(list ?? []).map((c) => {
            const w = can(me, c.folderId, 'write');
            return [
              <tr key={c.id} data-testid="checkpoint-row" data-name={c.name ?? ''}>
                <td>{naming?.id === c.id
                  ? <form class="inline" onSubmit={(e) => { e.preventDefault(); void rename(c, naming.value); }}>
                      <input value={naming.value} onInput={(e) => setNaming({ id: c.id, value: (e.target as HTMLInputElement).value })} data-testid="checkpoint-name" />
                      <button type="submit" data-testid="checkpoint-save">Save</button><button type="button" onClick={() => setNaming(null)}>Cancel</button>
                    </form>
                  : (c.name ? <b>{c.name}</b> : <span class="muted">not pinned</span>)}</td>
                <td><a href="javascript:void 0" onClick={() => setOpen(open === c.id ? null : c.id)}><code>{c.id}</code></a></td>
                <td>{c.folderId}</td>
                <td>{c.python}</td>
                <td class="r">{bytes(c.size)}</td>
                <td class="r">{c.variables.length}</td>
                <td class="r">{c.packages.length}</td>
                <td>{ago(c.createdAt)} ago</td>
                <td class="nowrap">
                  {c.pinned && can(me, c.folderId, 'write') && <a class="button" href={href(`/nodes/new?checkpoint=${c.id}`)} data-testid="checkpoint-deploy">New node</a>}
                  {w && <button onClick={() => setNaming({ id: c.id, value: c.name ?? '' })} data-testid="checkpoint-pin">{c.pinned ? 'Rename' : 'Pin'}</button>}
                  {w && c.pinned && <button onClick={() => void rename(c, null)}>Unpin</button>}
                  {w && <button class="danger" onClick={() => setConfirm(c)} data-testid="checkpoint-delete">Delete</button>}
                </td>
              </tr>,
              open === c.id && (
                <tr key={`${c.id}-more`} class="more"><td colSpan={9}>
                  <div class="cols">
                    <div><h4>Variables</h4><ul>{c.variables.map((v) => <li key={v.name}><code>{v.name}</code> <span class="muted">{v.type}</span></li>)}</ul>
                      {c.skipped.length > 0 && <><h4>Not saved</h4><ul>{c.skipped.map((v) => <li key={v.name}><code>{v.name}</code> <span class="muted">{v.reason}</span></li>)}</ul></>}</div>
                    <div><h4>Packages</h4><ul class="packages">{c.packages.map((p) => <li key={p.name}>{p.name} <span class="muted">{p.version}</span></li>)}</ul></div>
                    <div><h4>Serving cell</h4><pre>{c.code}</pre></div>
                  </div>
                </td></tr>
              ),
            ];
          })}
          {list?.length === 0 && <tr><td colSpan={9} class="muted">No checkpoints. Make one with <code>berth checkpoint create script.py --name NAME</code>.</td></tr>}
        </tbody>
      </table>
      {confirm && (
        <Confirm title={`Delete checkpoint ${confirm.name ?? confirm.id}?`} confirmLabel="Delete" onCancel={() => setConfirm(null)}
          onConfirm={() => { const c = confirm; setConfirm(null); void a.run(async () => { await api('DELETE', `/v1/checkpoints/${c.id}`); await load(); }); }}>
          Its saved state ({bytes(confirm.size)}) is removed for good. A checkpoint a node uses cannot be deleted.
        </Confirm>
      )}
    </div>
  );
}
