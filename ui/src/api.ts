// Talking to Berth from the page: every request carries the token in the Authorization header
// (never in a URL), every error is the API's {code, message, details}, and the live stream
// (GET /v1/watch, server-sent events) is read with fetch streaming so the header can go with it.

export interface ApiErrorBody { code: string; message: string; details?: Record<string, unknown>; error_name?: string; error_message?: string; traceback?: string[] | string }

export class ApiError extends Error {
  constructor(readonly status: number, readonly body: ApiErrorBody) { super(`${body.code}: ${body.message}`); }
  get code(): string { return this.body.code; }
  get field(): string | undefined { const f = this.body.details?.field; return typeof f === 'string' ? f : undefined; }
}

const TOKEN_KEY = 'berth.token';

export function savedToken(): string | null { return sessionStorage.getItem(TOKEN_KEY); }
export function saveToken(t: string | null): void { if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY); }

let token: string | null = savedToken();
export function setToken(t: string | null): void { token = t; saveToken(t); }
export function authHeader(): Record<string, string> { return token ? { authorization: `Bearer ${token}` } : {}; }

async function errorOf(res: Response): Promise<ApiError> {
  const text = await res.text();
  try {
    const b = JSON.parse(text) as ApiErrorBody;
    if (b && typeof b.code === 'string') return new ApiError(res.status, b);
  } catch { /* not JSON */ }
  return new ApiError(res.status, { code: `HTTP_${res.status}`, message: text.slice(0, 300) || res.statusText });
}

export async function api<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers: { ...authHeader(), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, { code: 'NETWORK', message: `cannot reach Berth: ${(err as Error).message}` });
  }
  if (!res.ok) throw await errorOf(res);
  return (await res.json()) as T;
}

/**
 * Reads a streaming response line by line until `signal` aborts or the server ends it.
 * Used for the watch stream (SSE) and followed logs (text/plain).
 */
export async function streamLines(path: string, signal: AbortSignal, onLine: (line: string) => void): Promise<void> {
  const res = await fetch(path, { headers: authHeader(), signal, cache: 'no-store' });
  if (!res.ok) throw await errorOf(res);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  }
  if (buf) onLine(buf);
}

/** Server-sent events over streamLines: `onEvent(name, data)` per event. */
export async function streamEvents(path: string, signal: AbortSignal, onEvent: (event: string, data: unknown) => void): Promise<void> {
  let event = 'message';
  let data: string[] = [];
  await streamLines(path, signal, (line) => {
    if (line === '') {
      if (data.length) { try { onEvent(event, JSON.parse(data.join('\n'))); } catch { /* a malformed event is skipped */ } }
      event = 'message'; data = [];
    } else if (line.startsWith('event:')) event = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
  });
}

// ---- roles, as the server decides them (src/core/auth.ts) --------------------------------
export type Role = 'admin' | 'editor' | 'executor' | 'viewer';
export type Permission = 'read' | 'write' | 'execute' | 'admin';
const GRANTS: Record<Role, Permission[]> = {
  admin: ['read', 'write', 'execute', 'admin'], editor: ['read', 'write', 'execute'], executor: ['execute'], viewer: ['read'],
};

export interface WhoAmI { id: string; name: string; roles: Record<string, Role>; folders: string[]; admin: boolean; defaultFolder: string }

export function can(me: WhoAmI | null, folderId: string, what: Permission): boolean {
  if (!me) return false;
  const role = me.roles[folderId] ?? me.roles['*'];
  return role !== undefined && GRANTS[role].includes(what);
}

/** Folders the token names with a permission (the '*' wildcard stands for any folder). */
export function foldersWith(me: WhoAmI | null, what: Permission): string[] {
  if (!me) return [];
  return Object.keys(me.roles).filter((f) => f !== '*' && can(me, f, what));
}
