// The dashboard's entry: sign in with a token (kept in this tab's sessionStorage only), then
// a hash router over the pages. Which controls appear follows the token's roles per folder;
// the API decides anyway, the page only hides what would be refused.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import './style.css';
import { ApiError, api, savedToken, setToken, type WhoAmI } from './api';
import { ErrorBox, Me, href } from './common';
import { live, useLive } from './store';
import { Overview } from './pages/overview';
import { NodePage } from './pages/node';
import { AliasPage } from './pages/alias';
import { Checkpoints } from './pages/checkpoints';
import { Admin } from './pages/admin';
import { Usage } from './pages/usage';
import { CreateNode, CreateAlias } from './pages/create';

const WHO_KEY = 'berth.whoami';

function useHash(): string {
  const [h, set] = useState(location.hash.slice(1) || '/');
  useEffect(() => {
    const on = (): void => set(location.hash.slice(1) || '/');
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return h;
}

function SignIn({ onDone, error }: { onDone: (t: string) => void; error: unknown }) {
  const [value, set] = useState('');
  return (
    <div class="signin">
      <h1>Berth</h1>
      <form onSubmit={(e) => { e.preventDefault(); onDone(value.trim()); }}>
        <label>Token
          <input type="password" name="token" autoComplete="off" value={value} onInput={(e) => set((e.target as HTMLInputElement).value)}
            placeholder="the admin token is in BERTH_HOME/admin-token" data-testid="token-input" />
        </label>
        <button type="submit" class="primary" data-testid="sign-in">Sign in</button>
      </form>
      <ErrorBox error={error} />
      <p class="muted">The token stays in this tab only and goes to the server in the Authorization header.</p>
    </div>
  );
}

function Route({ path }: { path: string }) {
  const parts = path.split('?')[0]!.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'nodes' && parts[1] === 'new') return <CreateNode />;
  if (parts[0] === 'nodes' && parts[1]) return <NodePage id={parts[1]} tab={parts[2] ?? 'overview'} />;
  if (parts[0] === 'aliases' && parts[1] === 'new') return <CreateAlias />;
  if (parts[0] === 'aliases' && parts[1]) return <AliasPage name={parts[1]} />;
  if (parts[0] === 'checkpoints') return <Checkpoints />;
  if (parts[0] === 'admin') return <Admin />;
  if (parts[0] === 'usage') return <Usage />;
  return <Overview />;
}

function Shell({ me, signOut }: { me: WhoAmI; signOut: () => void }) {
  const path = useHash();
  const l = useLive();
  const top = path.split('/')[1] ?? '';
  const link = (to: string, label: string, key: string) => <a href={href(to)} class={top === key ? 'on' : ''}>{label}</a>;
  return (
    <div class="shell">
      <header>
        <a class="brand" href={href('/')}>Berth</a>
        <nav>
          {link('/', 'Overview', '')}
          {link('/checkpoints', 'Checkpoints', 'checkpoints')}
          {link('/usage', 'Usage', 'usage')}
          {link('/admin', me.admin ? 'Tokens & secrets' : 'Secrets', 'admin')}
        </nav>
        <span class={`live ${l.connected ? 'ok' : 'off'}`} title={l.error ?? 'live updates on'} data-testid="live">{l.connected ? '● live' : l.error?.includes('sign in again') ? '○ signed out' : '○ reconnecting'}</span>
        <span class="who" data-testid="whoami">{me.name} · {Object.entries(me.roles).map(([f, r]) => `${f}: ${r}`).join(', ')}</span>
        <button class="link" onClick={signOut} data-testid="sign-out">Sign out</button>
      </header>
      {!l.connected && l.error && <div class="error banner" data-testid="live-error">{l.error}</div>}
      <main><Route path={path} /></main>
    </div>
  );
}

function App() {
  // a reload in a signed-in tab draws at once from what whoami said last, and checks it again beside
  const cached = ((): WhoAmI | null => { try { return savedToken() ? JSON.parse(sessionStorage.getItem(WHO_KEY) ?? 'null') as WhoAmI | null : null; } catch { return null; } })();
  const [me, setMe] = useState<WhoAmI | null>(cached);
  const [error, setError] = useState<unknown>(null);
  const [checking, setChecking] = useState(savedToken() !== null && cached === null);
  Me.current = me;

  const signIn = async (t: string): Promise<void> => {
    setError(null);
    setToken(t);
    live.start(); // the stream opens beside whoami: the first state is there when the page draws
    try {
      const who = await api<WhoAmI>('GET', '/v1/whoami');
      sessionStorage.setItem(WHO_KEY, JSON.stringify(who));
      Me.current = who;
      setMe(who);
    } catch (err) {
      live.stop();
      setToken(null);
      sessionStorage.removeItem(WHO_KEY);
      Me.current = null;
      setMe(null);
      setError(err instanceof ApiError && err.status === 401 ? new ApiError(401, { ...err.body, message: 'this token is not known to this Berth' }) : err);
    } finally {
      setChecking(false);
    }
  };
  useEffect(() => { const t = savedToken(); if (t) void signIn(t); }, []);
  const signOut = (): void => { live.stop(); setToken(null); sessionStorage.removeItem(WHO_KEY); Me.current = null; setMe(null); location.hash = '/'; };

  if (checking) return <div class="signin muted">Signing in…</div>;
  if (!me) return <SignIn onDone={(t) => void signIn(t)} error={error} />;
  return <Shell me={me} signOut={signOut} />;
}

render(<App />, document.getElementById('app')!);
