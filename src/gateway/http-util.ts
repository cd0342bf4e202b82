import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';
import { BerthError, asBerthError } from '../core/errors.js';

/**
 * What the data plane uses of an HTTP request: Node's IncomingMessage (HTTP/1.1, or HTTP/2
 * through its compatibility layer), or the raw HTTP/1.1 front's (h1-front.ts).
 */
export interface HttpRequest {
  method?: string;
  url?: string;
  headers: IncomingHttpHeaders;
  /** The whole body has arrived. */
  readonly complete: boolean;
  /** The raw front's: the whole body at once when it has all arrived unread and is within `limit` (h1-message.ts). */
  takeWhole?(limit: number): Buffer | null;
  readonly readableEnded: boolean;
  /** Null once the request is done with its connection. */
  readonly socket: Socket | null;
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  on(event: 'end' | 'close', listener: () => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  once(event: 'end' | 'close', listener: () => void): unknown;
  once(event: 'error', listener: (err: Error) => void): unknown;
  off(event: 'data', listener: (chunk: Buffer) => void): unknown;
  off(event: 'end' | 'close', listener: () => void): unknown;
  off(event: 'error', listener: (err: Error) => void): unknown;
  pause(): unknown;
  resume(): unknown;
}

/** What the data plane uses of an HTTP response: Node's ServerResponse, or the raw HTTP/1.1 front's. */
export interface HttpResponse {
  readonly headersSent: boolean;
  readonly destroyed: boolean;
  readonly writableFinished: boolean;
  writeHead(status: number, headers?: OutgoingHttpHeaders): unknown;
  setHeader(name: string, value: string | number | readonly string[]): unknown;
  flushHeaders(): void;
  write(chunk: Buffer | string): boolean;
  end(chunk?: Buffer | string): unknown;
  destroy(): unknown;
  on(event: 'close' | 'drain' | 'finish', listener: () => void): unknown;
  once(event: 'close' | 'drain' | 'finish', listener: () => void): unknown;
  off(event: 'close' | 'drain' | 'finish', listener: () => void): unknown;
}

/** Writes a JSON error body {code, message, details} with the error's status and headers. */
export function sendError(res: HttpResponse, err: unknown, extraBody: Record<string, unknown> = {}): number {
  const e = asBerthError(err);
  if (res.headersSent || res.destroyed) { res.destroy(); return e.httpStatus; }
  const body = JSON.stringify({ ...e.toJSON(), ...extraBody });
  const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...e.headers };
  if (isHttp2(res)) delete headers.connection; // HTTP/2 has no connection header (the compat layer throws on one)
  res.writeHead(e.httpStatus, headers);
  res.end(body);
  return e.httpStatus;
}

/**
 * How long a kept-alive connection may stay unused, from the other side's `Keep-Alive:
 * timeout=N`: a second less than it says, since it may close the connection right at N while a
 * request is on its way. Null when it says nothing.
 */
export function keepAliveHintMs(header: unknown): number | null {
  const m = /timeout=(\d+)/i.exec(typeof header === 'string' ? header : '');
  return m ? Number(m[1]) * 1000 - 1000 : null;
}

/** A response of Node's HTTP/2 compatibility layer (REST and the control API over h2). */
export function isHttp2(res: HttpResponse): boolean {
  return (res as unknown as { stream?: unknown }).stream !== undefined;
}

/**
 * Reads a request body up to `limit` bytes. A larger one is refused by its
 * Content-Length before any byte is read, or as soon as the count passes the limit:
 * the body is never buffered whole.
 */
export function readBody(req: HttpRequest, limit: number): Promise<Buffer> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) {
    return Promise.reject(tooLarge(limit, Number(declared)));
  }
  // the raw front's request whose body came with its head (most calls): no listeners, no chunks
  const whole = req.takeWhole?.(limit);
  if (whole) return Promise.resolve(whole);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    req.on('data', (chunk: Buffer) => {
      if (failed) return;
      size += chunk.length;
      if (size > limit) {
        failed = true;
        chunks.length = 0;
        reject(tooLarge(limit, size)); // later chunks are dropped as they come: see closeAfterResponse
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => { if (!failed) resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size)); });
    // the caller went away mid-body (Node's "aborted"): nobody to answer, not a server fault
    req.on('error', () => { if (!failed) { failed = true; reject(new BerthError('CLIENT_CLOSED', 'the caller went away before sending the whole body')); } });
    req.on('close', () => { if (!failed && !req.complete) { failed = true; reject(new BerthError('CLIENT_CLOSED', 'the caller went away before sending the whole body')); } });
  });
}

function tooLarge(limit: number, size: number): BerthError {
  return new BerthError('PAYLOAD_TOO_LARGE', `request body exceeds the limit of ${limit} bytes`, { limit, received: size });
}

/**
 * After a 413 the rest of the upload is not wanted. Closing at once would make most
 * clients fail on a broken pipe before they read the answer, so the rest is read and
 * dropped as it comes (never buffered) and the connection stays usable; a caller still
 * sending after a few seconds is cut off.
 */
export function discardUpload(req: HttpRequest, lingerMs = 5000): void {
  const socket = req.socket; // null once the request is destroyed
  if (!socket) return;
  req.resume();
  const timer = setTimeout(() => socket.destroy(), lingerMs);
  timer.unref();
  const clear = (): void => clearTimeout(timer);
  req.once('end', clear);
  socket.once('close', clear);
}
