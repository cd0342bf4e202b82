// How the CLI reaches a Berth server: URL and token found without the user copying them,
// over http or https (a self-signed server certificate is trusted through BERTH_CA / --ca).
import { existsSync, readFileSync } from 'node:fs';
import { Agent, fetch as undiciFetch } from 'undici';
import { join } from 'node:path';
import { defaultHome } from '../core/config.js';
import { ADMIN_TOKEN_FILE } from '../core/auth.js';

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly details: Record<string, unknown>, readonly body: unknown) {
    super(message);
  }
}

export function serverUrl(explicit?: string): string {
  if (explicit) return explicit.replace(/\/$/, '');
  if (process.env.BERTH_URL) return process.env.BERTH_URL.replace(/\/$/, '');
  const file = join(defaultHome(), 'server.json');
  if (existsSync(file)) {
    try { return (JSON.parse(readFileSync(file, 'utf8')) as { url: string }).url; } catch { /* fall through */ }
  }
  return `http://${process.env.BERTH_HOST ?? '127.0.0.1'}:${process.env.BERTH_PORT ?? 7700}`;
}

export function findToken(): string {
  if (process.env.BERTH_TOKEN) return process.env.BERTH_TOKEN;
  const file = join(defaultHome(), ADMIN_TOKEN_FILE);
  if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  throw new Error(`no token: set BERTH_TOKEN, or run "berth up" once so it creates ${file}`);
}

let caAgent: { file: string; agent: Agent } | null = null;
/**
 * fetch, trusting the PEM certificate(s) in $BERTH_CA (set by `--ca`) besides the system's
 * roots when it is set: what a server started with a self-signed --tls-cert needs.
 */
export function berthFetch(url: string, init: RequestInit): Promise<Response> {
  const file = process.env.BERTH_CA;
  if (!file) return fetch(url, init);
  if (caAgent?.file !== file) caAgent = { file, agent: new Agent({ connect: { ca: readFileSync(file) } }) };
  return undiciFetch(url, { ...(init as object), dispatcher: caAgent.agent }) as unknown as Promise<Response>;
}

export class Client {
  /** The token is looked up per request: the health check needs none, and on a first start the token file appears only once the server is up. */
  constructor(readonly url: string, private readonly token: () => string) {}

  async request<T = unknown>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    let res: Response;
    try {
      res = await berthFetch(this.url + path, {
        method,
        headers: { ...(path === '/v1/health' ? {} : { authorization: `Bearer ${this.token()}` }), ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new Error(`cannot reach Berth at ${this.url} (${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message}); is "berth up" running?`);
    }
    const text = await res.text();
    let parsed: unknown = text;
    try { parsed = text ? JSON.parse(text) : {}; } catch { /* not JSON */ }
    if (!res.ok) {
      const p = (typeof parsed === 'object' && parsed ? parsed : {}) as { code?: string; message?: string; details?: Record<string, unknown> };
      throw new ApiError(res.status, p.code ?? `HTTP_${res.status}`, p.message ?? String(text).slice(0, 500), p.details ?? {}, parsed);
    }
    return parsed as T;
  }
}
