// What the container runtimes (docker.ts: a container per instance; swarm.ts: a service per
// instance) share about the Docker Engine API: its errors, waiting on it with a bound, Docker's
// multiplexed log frames, the copy of a log kept in <home>/logs when an instance goes, reading
// it with the live log, and following the live log.
import type Docker from 'dockerode';
import { appendFile, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { PassThrough } from 'node:stream';
import type { LogLimits } from './log-file.js';

export const GB = 1024 ** 3;
/** How long the Engine may take to answer a ping when the runtime starts. */
export const PING_TIMEOUT_MS = 5000;

/** A memory limit in bytes for the Engine (it refuses limits below 6 MB). */
export function memoryLimitBytes(gb: number): number {
  return Math.max(6 * 1024 * 1024, Math.round(gb * GB));
}

/** Docker's error text without its "(HTTP code 404) no such container - " prefix. */
export function errorText(err: unknown): string {
  const e = err as { json?: { message?: string } | null; message?: string } | null;
  const text = e?.json?.message ?? e?.message ?? String(err);
  return text.replace(/^\(HTTP code \d+\) [a-z ]+ - /, '').trim();
}

/** The HTTP status of a failed Engine API call (404: no such object…). */
export function statusOf(err: unknown): number | undefined {
  return (err as { statusCode?: number } | null)?.statusCode;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** `p`, or an Error(`what`) after `ms` (the daemon may never answer). */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(what)), ms);
    p.then((v) => { clearTimeout(t); res(v); }, (e) => { clearTimeout(t); rej(e); });
  });
}

/** A non-TTY log as Docker sends it (8-byte frame headers: stream, 0, 0, 0, size) as text. */
export function demux(buf: Buffer | string): string {
  if (typeof buf === 'string') return buf;
  if (buf.length < 8 || buf[0]! > 2 || buf[1] !== 0 || buf[2] !== 0 || buf[3] !== 0) return buf.toString('utf8');
  const parts: Buffer[] = [];
  let i = 0;
  while (i + 8 <= buf.length) {
    const size = buf.readUInt32BE(i + 4);
    parts.push(buf.subarray(i + 8, Math.min(buf.length, i + 8 + size)));
    i += 8 + size;
  }
  return Buffer.concat(parts).toString('utf8');
}

/**
 * Appends what an instance printed to its kept log file, bounded like the live log (its last
 * maxBytes, from a line start), then a line saying how it ended (when given).
 */
export async function keepLog(file: string, limits: LogLimits, printed: string, ending: string | null): Promise<void> {
  let text = printed && !printed.endsWith('\n') ? printed + '\n' : printed;
  if (Buffer.byteLength(text) > limits.maxBytes) {
    const tail = Buffer.from(text).subarray(-limits.maxBytes).toString('utf8');
    text = tail.slice(tail.indexOf('\n') + 1);
  }
  if (!text && !ending) return;
  try {
    await mkdir(dirname(file), { recursive: true });
    await appendFile(file, text + (ending ? `[berth] ${new Date().toISOString()} ${ending}\n` : ''));
  } catch (err) {
    console.error(`[berth] cannot keep the log ${file}: ${errorText(err)}`);
  }
}

/** The kept log's tail followed by the live one's (filtered by `search`), as the last `lines` lines. */
export function withLive(kept: string, live: string, lines: number, search?: string): string {
  const shown = search ? live.split('\n').filter((l) => l.includes(search)).join('\n') : live;
  const text = shown ? kept + (kept && !kept.endsWith('\n') ? '\n' : '') + shown : kept;
  const all = text.split('\n');
  if (all[all.length - 1] === '') all.pop();
  return all.slice(-lines).join('\n') + (all.length ? '\n' : '');
}

/**
 * Follows a live log (`open` asks the engine for it) until it ends, `until` settles, or the
 * returned function is called; `onEnd` once when it ends by itself or by `until`.
 */
export function followLog(docker: Docker, open: () => Promise<NodeJS.ReadableStream>, onData: (chunk: Buffer) => void, onEnd: () => void, until?: Promise<unknown>): () => void {
  let stream: NodeJS.ReadableStream | null = null;
  let stopped = false;
  let ended = false;
  const destroy = (): void => { (stream as unknown as { destroy(): void } | null)?.destroy(); };
  const end = (): void => { if (!ended) { ended = true; onEnd(); } };
  open().then((s) => {
    stream = s;
    if (stopped) { destroy(); return; }
    const out = new PassThrough();
    out.on('data', onData);
    docker.modem.demuxStream(s, out, out);
    s.on('end', end);
    s.on('close', end);
    s.on('error', end);
  }, end);
  void until?.then(() => { destroy(); end(); });
  return () => { stopped = true; destroy(); };
}
