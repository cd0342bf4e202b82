// Small pieces every page uses: status badges, the API error box, the confirmation dialog,
// durations and numbers, and a hook that runs an API action with a busy flag and its error.
import type { ComponentChildren } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { ApiError, type WhoAmI } from './api';

export const Me = { current: null as WhoAmI | null };

export function Badge({ status }: { status: string }) {
  return <span class={`badge s-${status}`} data-status={status}>{status}</span>;
}

export function ErrorBox({ error }: { error: unknown }) {
  if (!error) return null;
  if (error instanceof ApiError) {
    const tb = error.body.traceback;
    return (
      <div class="error" role="alert" data-testid="error">
        <b class="code">{error.code}</b> {error.message.replace(/^[A-Z_]+: /, '')}
        {error.field && <div class="field">field: <code>{error.field}</code></div>}
        {error.body.error_name && <div>{error.body.error_name}: {error.body.error_message}</div>}
        {tb && <pre class="traceback">{Array.isArray(tb) ? tb.join('') : tb}</pre>}
      </div>
    );
  }
  return <div class="error" role="alert" data-testid="error">{String((error as Error)?.message ?? error)}</div>;
}

/** Runs one action at a time: `busy` while it runs, `error` if it failed (shown by ErrorBox). */
export function useAction(): { busy: boolean; error: unknown; run: <T>(fn: () => Promise<T>) => Promise<T | undefined>; clear: () => void } {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const run = async <T,>(fn: () => Promise<T>): Promise<T | undefined> => {
    setBusy(true); setError(null);
    try { return await fn(); } catch (err) { setError(err); return undefined; } finally { setBusy(false); }
  };
  return { busy, error, run, clear: () => setError(null) };
}

/** A destructive action asks first: the dialog names what will happen. */
export function Confirm({ title, children, confirmLabel = 'Confirm', onConfirm, onCancel }: {
  title: string; children?: ComponentChildren; confirmLabel?: string; onConfirm: () => void; onCancel: () => void;
}) {
  useEffect(() => {
    const esc = (e: KeyboardEvent): void => { if (e.key === 'Escape') onCancel(); };
    addEventListener('keydown', esc);
    return () => removeEventListener('keydown', esc);
  }, [onCancel]);
  return (
    <div class="modal-back" onClick={onCancel}>
      <div class="modal" role="dialog" aria-label={title} onClick={(e) => e.stopPropagation()} data-testid="confirm">
        <h3>{title}</h3>
        <div>{children}</div>
        <div class="row end">
          <button onClick={onCancel}>Cancel</button>
          <button class="danger" data-testid="confirm-yes" onClick={onConfirm}>{confirmLabel}</button>
        </div>
      </div>
    </div>
  );
}

export function ago(iso: string | number | undefined, now = Date.now()): string {
  if (iso === undefined) return '';
  const ms = now - (typeof iso === 'number' ? iso : Date.parse(iso));
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function num(v: number | null | undefined, digits = 1): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  if (v === 0) return '0';
  if (Math.abs(v) >= 100) return v.toFixed(0);
  return v.toFixed(digits);
}

export function ms(v: number | null | undefined): string {
  if (v === null || v === undefined) return '–';
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v >= 10 ? v.toFixed(0) : v.toFixed(1)} ms`;
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(2)} GB`;
}

export function errorRate(p: { rps: number; errors: Record<string, number> } | undefined): number | null {
  if (!p || p.rps <= 0) return null;
  const e = Object.values(p.errors).reduce((a, b) => a + b, 0);
  return Math.min(1, e / p.rps);
}

/** A clock that re-renders every second (times in status). */
export function useTick(everyMs = 1000): number {
  const [t, set] = useState(Date.now());
  useEffect(() => { const id = setInterval(() => set(Date.now()), everyMs); return () => clearInterval(id); }, [everyMs]);
  return t;
}

export function href(path: string): string { return `#${path}`; }
export function go(path: string): void { location.hash = path; }
