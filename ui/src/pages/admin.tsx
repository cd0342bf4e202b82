// Tokens (admins of every folder) and secrets (per folder). A new token is shown once;
// revoking and deleting ask first. Secret values are write-only.
import { useEffect, useState } from 'preact/hooks';
import { api, can, foldersWith, type Role } from '../api';
import { Confirm, ErrorBox, Me, ago, useAction } from '../common';

interface Token { id: string; name: string; roles: Record<string, Role>; admin: boolean; createdAt: string }
interface Secret { id: string; name: string; folderId: string; createdAt: string; createdBy: string }

export function Admin() {
  const me = Me.current;
  return (
    <div class="page" data-testid="admin">
      {me?.admin && <Tokens />}
      <Secrets />
    </div>
  );
}

function Tokens() {
  const [tokens, setTokens] = useState<Token[]>([]);
  const [name, setName] = useState('');
  const [folder, setFolder] = useState('default');
  const [role, setRole] = useState<Role>('viewer');
  const [made, setMade] = useState<string | null>(null);
  const [confirm, setConfirm] = useState<Token | null>(null);
  const a = useAction();
  const load = () => a.run(async () => setTokens((await api<{ tokens: Token[] }>('GET', '/v1/tokens')).tokens));
  useEffect(() => { void load(); }, []);
  return (
    <section>
      <h2>Tokens</h2>
      <form class="row" onSubmit={(e) => { e.preventDefault(); void a.run(async () => { const r = await api<{ token: string }>('POST', '/v1/tokens', { name, roles: { [folder]: role } }); setMade(r.token); setName(''); await load(); }); }}>
        <input placeholder="name" value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} data-testid="token-name" />
        <input placeholder="folder (* for all)" value={folder} onInput={(e) => setFolder((e.target as HTMLInputElement).value)} data-testid="token-folder" />
        <select value={role} onChange={(e) => setRole((e.target as HTMLSelectElement).value as Role)} data-testid="token-role">
          {['viewer', 'executor', 'editor', 'admin'].map((r) => <option key={r}>{r}</option>)}
        </select>
        <button type="submit" class="primary" disabled={a.busy} data-testid="token-create">Create token</button>
      </form>
      {made && <div class="note" data-testid="token-made">New token (shown once, copy it now): <code>{made}</code> <button class="link" onClick={() => setMade(null)}>hide</button></div>}
      <ErrorBox error={a.error} />
      <table class="grid">
        <thead><tr><th>name</th><th>id</th><th>roles</th><th>created</th><th /></tr></thead>
        <tbody>{tokens.map((t) => (
          <tr key={t.id} data-testid="token-row">
            <td>{t.name}</td><td><code>{t.id}</code></td>
            <td>{Object.entries(t.roles).map(([f, r]) => `${f}: ${r}`).join(', ')}</td>
            <td>{ago(t.createdAt)} ago</td>
            <td><button class="danger" onClick={() => setConfirm(t)}>Revoke</button></td>
          </tr>))}
        </tbody>
      </table>
      {confirm && (
        <Confirm title={`Revoke token ${confirm.name}?`} confirmLabel="Revoke" onCancel={() => setConfirm(null)}
          onConfirm={() => { const t = confirm; setConfirm(null); void a.run(async () => { await api('DELETE', `/v1/tokens/${t.id}`); await load(); }); }}>
          Every call and page using it is refused from now on.
        </Confirm>
      )}
    </section>
  );
}

function Secrets() {
  const me = Me.current;
  const writable = foldersWith(me, 'write');
  const [secrets, setSecrets] = useState<Secret[]>([]);
  const [name, setName] = useState('');
  const [value, setValue] = useState('');
  const [folder, setFolder] = useState(writable[0] ?? me?.defaultFolder ?? 'default');
  const [confirm, setConfirm] = useState<Secret | null>(null);
  const a = useAction();
  const load = () => a.run(async () => setSecrets((await api<{ secrets: Secret[] }>('GET', '/v1/secrets')).secrets));
  useEffect(() => { void load(); }, []);
  const mayCreate = writable.length > 0 || me?.roles['*'] === 'admin' || me?.roles['*'] === 'editor';
  return (
    <section>
      <h2>Secrets</h2>
      {mayCreate && (
        <form class="row" onSubmit={(e) => { e.preventDefault(); void a.run(async () => { await api('POST', '/v1/secrets', { name, value, folderId: folder }); setName(''); setValue(''); await load(); }); }}>
          <input placeholder="name" value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} data-testid="secret-name" />
          <input type="password" placeholder="value (never shown again)" autoComplete="off" value={value} onInput={(e) => setValue((e.target as HTMLInputElement).value)} data-testid="secret-value" />
          <input placeholder="folder" value={folder} onInput={(e) => setFolder((e.target as HTMLInputElement).value)} data-testid="secret-folder" />
          <button type="submit" class="primary" disabled={a.busy} data-testid="secret-create">Add secret</button>
        </form>
      )}
      <ErrorBox error={a.error} />
      <table class="grid">
        <thead><tr><th>name</th><th>folder</th><th>created</th><th>by</th><th /></tr></thead>
        <tbody>{secrets.map((s) => (
          <tr key={s.id} data-testid="secret-row">
            <td>{s.name}</td><td>{s.folderId}</td><td>{ago(s.createdAt)} ago</td><td>{s.createdBy}</td>
            <td>{can(me, s.folderId, 'write') && <button class="danger" onClick={() => setConfirm(s)}>Delete</button>}</td>
          </tr>))}
          {secrets.length === 0 && <tr><td colSpan={5} class="muted">No secrets.</td></tr>}
        </tbody>
      </table>
      {confirm && (
        <Confirm title={`Delete secret ${confirm.name}?`} confirmLabel="Delete" onCancel={() => setConfirm(null)}
          onConfirm={() => { const s = confirm; setConfirm(null); void a.run(async () => { await api('DELETE', `/v1/secrets/${encodeURIComponent(s.name)}?folderId=${encodeURIComponent(s.folderId)}`); await load(); }); }}>
          Nodes cannot use it afterwards; a secret a node uses cannot be deleted.
        </Confirm>
      )}
    </section>
  );
}
