// Persistent connections from the gateway to one image instance: what every upstream client
// shares (the exchange, the request body on its way, which failures may go elsewhere), and
// kept-alive connections on Node's HTTP parser for HTTP/1.1 endpoints. HTTP/2 and gRPC
// endpoints have the gateway's own client (h2/client.ts, H2Upstream).
import { connect as netConnect } from 'node:net';
import type { Socket } from 'node:net';
import { HTTPParser } from '_http_common';
import type { Endpoint } from '../worker/protocol.js';
import { callDeadlines, type CallSignal, type Deadline } from './deadlines.js';
import { keepAliveHintMs, type HttpRequest } from './http-util.js';
import { MessageBody, UNSAFE_VALUE, closedError, headerObject, type ResponseBody } from './h1-message.js';

/** Where a request body comes from: the caller's request (HTTP/1.1), or its HTTP/2 stream. */
export type BodySource = Pick<HttpRequest, 'on' | 'once' | 'off' | 'pause' | 'resume' | 'readableEnded'>;

export interface UpstreamRequest {
  method: string;
  path: string;
  /** The call's own copy (the HTTP/2 client adds its pseudo-headers to it). */
  headers: Record<string, string | string[]>;
  body: RequestBody | null;
  /** The call's deadline: aborting it ends the exchange (a timeout, or the caller left). */
  signal: CallSignal;
  headersTimeoutMs: number;
  idleTimeoutMs: number;
  /** HTTP/2 only: the caller's :scheme and :authority for an exchange passed on as it came (the compatibility server's). */
  scheme?: string;
  authority?: string;
}

export interface UpstreamResponse<Body extends ResponseBody = ResponseBody> {
  status: number;
  /** As received: over HTTP/2 with its pseudo-headers (':status'), which callers drop. */
  headers: Record<string, string | string[]>;
  body: Body;
  /** Resolves with the trailers once the body has ended (empty when there were none). */
  trailers: Promise<Record<string, string | string[]>>;
  /** The response ended in its headers (a gRPC trailers-only answer). */
  headersOnly: boolean;
}

export interface Upstream {
  readonly protocol: 'http1' | 'http2';
  request(req: UpstreamRequest): Promise<UpstreamResponse>;
  close(): void;
}

/**
 * Errors of the connection itself, before any answer: the instance is gone or not
 * listening (Docker's port proxy accepts, then resets). The caller retries elsewhere
 * when no byte of the request body was consumed.
 */
export function isRefused(err: unknown): boolean {
  const code = (err as { code?: string })?.code ?? (err as { cause?: { code?: string } })?.cause?.code;
  return code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'EPIPE' || code === 'ENOENT'
    || code === 'UPSTREAM_CLOSED';
}

/** The connection could not be made at all (nothing listens there): no byte of the call was delivered. */
export function isUnreachable(err: unknown): boolean {
  const e = err as { code?: string; cause?: { code?: string } } | undefined;
  for (const code of [e?.code, e?.cause?.code]) if (code === 'ECONNREFUSED' || code === 'ENOENT') return true;
  return false;
}

/** Where every upstream connection's reads land (connectReading). */
const READ_BUFFER = Buffer.allocUnsafe(64 * 1024);

/**
 * A connection to an instance (or to another gateway worker's socket) whose reads land in one
 * buffer that every such connection of the process shares, handed to `onData` as they come:
 * no new buffer per read and no Readable stream in between (they cost a few percent of a
 * proxied call). Each read is handled before the next one happens (one thread), so `onData`
 * may parse it in place, but must copy what it keeps.
 */
export function connectReading(to: { host: string; port: number } | { path: string }, onData: (d: Buffer) => void): Socket {
  const onread = { buffer: READ_BUFFER, callback: (n: number): boolean => { onData(READ_BUFFER.subarray(0, n)); return true; } };
  return netConnect('path' in to ? { path: to.path, onread } : { host: to.host, port: to.port, noDelay: true, onread });
}

/** Where a request body goes: an HTTP/2 stream, or an HTTP/1.1 connection (chunked). */
export interface BodySink {
  write(chunk: Buffer): boolean;
  end(): void;
  destroy(err: Error): void;
  on(event: 'drain', listener: () => void): unknown;
  once(event: 'close', listener: () => void): unknown;
  off(event: 'drain' | 'close', listener: () => void): unknown;
}

/**
 * A call's request body on its way to an instance, counted as it passes (usage) and held to a
 * limit: past it the exchange fails with `tooLarge()` while the caller's side stays whole, to
 * be answered 413. Written straight from the source into the exchange (no stream in between:
 * one per call cost a few percent of a call's CPU). Until an attempt takes bytes from it, a
 * failed attempt leaves it whole for the next.
 */
export class RequestBody {
  /** Bytes passed on so far. */
  bytes = 0;

  constructor(private readonly source: BodySource, private readonly limit = Infinity,
    private readonly tooLarge: () => Error = () => new Error('the request body is over its limit')) {}

  /** Writes the body into `dst` as pipe() would; past the limit, or when the source fails, `dst` is destroyed with the error. */
  pipeTo(dst: BodySink): void {
    const src = this.source;
    const onData = (chunk: Buffer): void => {
      this.bytes += chunk.length;
      if (this.bytes > this.limit) { stop(); dst.destroy(this.tooLarge()); return; }
      if (!dst.write(chunk)) src.pause();
    };
    const onDrain = (): void => { src.resume(); };
    const onEnd = (): void => { stop(); dst.end(); };
    const onError = (err: Error): void => { stop(); dst.destroy(err); };
    // the exchange is over (answered, failed or cut): what the caller still sends stays with its side, paused
    const stop = (): void => {
      src.off('data', onData); src.off('end', onEnd); src.off('error', onError);
      dst.off('drain', onDrain); dst.off('close', stop);
      if (!src.readableEnded) src.pause();
    };
    if (src.readableEnded) { dst.end(); return; } // an empty body, already read to its end
    src.on('data', onData);
    src.once('end', onEnd);
    src.once('error', onError);
    dst.on('drain', onDrain);
    dst.once('close', stop);
    src.resume(); // an attempt before this one paused it when it stopped
  }
}

/**
 * HTTP/1.1 to one instance: kept-alive connections, one exchange at a time on each, on
 * Node's own parser (llhttp) with callbacks, no per-exchange streams or dispatcher objects
 * (undici's cost a fifth of a proxied call's CPU: docs/benchmarks.md). The node's sessions
 * bound how many exchanges run at once, so the pool needs no queue of its own: a call that
 * finds no idle connection opens one.
 */
export class H1Upstream implements Upstream {
  readonly protocol = 'http1';
  private readonly idle: H1Connection[] = [];
  private readonly open = new Set<H1Connection>();
  private readonly hostHeader: string;
  private sweep: NodeJS.Timeout | null = null;
  private closed = false;

  /** `keepAliveMs`: how long an unused connection is kept (shorter when the instance says so in Keep-Alive). */
  constructor(private readonly endpoint: Endpoint, private readonly keepAliveMs: number) {
    this.hostHeader = `${endpoint.host ?? '127.0.0.1'}:${endpoint.port}`;
  }

  request(r: UpstreamRequest): Promise<UpstreamResponse> {
    if (this.closed) return Promise.reject(Object.assign(new Error('upstream closed'), { code: 'ECONNREFUSED' }));
    return new Promise((resolve, reject) => {
      const now = performance.now();
      let conn: H1Connection | undefined;
      // the most recently used first; one the instance may have closed by now is not used
      while ((conn = this.idle.pop()) && (conn.socket.destroyed || now - conn.idleSince >= conn.keepAliveMs)) conn.socket.destroy();
      conn ??= this.connect();
      conn.start(r, this.hostHeader, resolve, reject);
    });
  }

  private connect(): H1Connection {
    const socket = connectReading({ host: this.endpoint.host ?? '127.0.0.1', port: this.endpoint.port! }, (d) => conn.onData(d));
    const conn: H1Connection = new H1Connection(socket, this.keepAliveMs, (c) => this.release(c));
    this.open.add(conn);
    socket.once('close', () => {
      this.open.delete(conn);
      const i = this.idle.indexOf(conn);
      if (i !== -1) this.idle.splice(i, 1);
    });
    return conn;
  }

  private release(conn: H1Connection): void {
    if (this.closed) { conn.socket.destroy(); return; }
    conn.idleSince = performance.now();
    this.idle.push(conn);
    // unused connections are closed after their keep-alive, by one timer for the pool
    this.sweep ??= setInterval(() => {
      const now = performance.now();
      for (let i = this.idle.length - 1; i >= 0; i--) {
        const c = this.idle[i]!;
        if (now - c.idleSince >= c.keepAliveMs) { this.idle.splice(i, 1); c.socket.destroy(); }
      }
      if (this.idle.length === 0 && this.sweep) { clearInterval(this.sweep); this.sweep = null; }
    }, Math.max(250, Math.min(this.keepAliveMs / 2, 5000))).unref();
  }

  close(): void {
    this.closed = true;
    if (this.sweep) { clearInterval(this.sweep); this.sweep = null; }
    for (const c of this.open) c.socket.destroy();
  }
}

const { kOnHeaders, kOnHeadersComplete, kOnBody, kOnMessageComplete } = HTTPParser;
/** What one response head may take (Node's own default). */
const MAX_RESPONSE_HEAD = 16 * 1024;

/** One kept-alive connection to an instance and the exchange running on it, if any. */
class H1Connection implements BodySink {
  idleSince = 0;
  keepAliveMs: number;
  private readonly parser = new HTTPParser();
  private request: UpstreamRequest | null = null;
  private resolve: ((res: UpstreamResponse) => void) | null = null;
  private reject: ((err: unknown) => void) | null = null;
  private body: MessageBody | null = null;
  private endTrailers: ((t: Record<string, string | string[]>) => void) | null = null;
  /** Header lines of a head (or trailers) that took more than one read. */
  private partial: string[] = [];
  private headOnly = false;
  private informational = false;
  private keepAlive = false;
  /** The request, body included, is all written: only then may the connection serve another. */
  private sent = false;
  private socketError: Error | null = null;
  /** The body's idle deadline (the call's own deadline bounds the wait for the head). */
  private idleTimer: Deadline | null = null;
  private lastRead = 0;
  private readonly onAbort = (): void => {
    const reason = this.request?.signal.reason;
    this.fail(reason instanceof Error ? reason : new Error('aborted'));
  };

  constructor(readonly socket: Socket, keepAliveMs: number, private readonly onReusable: (c: H1Connection) => void) {
    this.keepAliveMs = keepAliveMs;
    const p = this.parser;
    p.initialize(HTTPParser.RESPONSE, {}, MAX_RESPONSE_HEAD, HTTPParser.kLenientNone);
    p[kOnHeaders] = (lines: string[]): void => { for (const l of lines) this.partial.push(l); };
    p[kOnHeadersComplete] = (_maj: number, _min: number, lines: string[] | undefined, _m: unknown, _u: unknown,
      status: number, _msg: unknown, upgrade: boolean, keepAlive: boolean): number => this.onHead(lines ?? this.takePartial(), status, upgrade, keepAlive);
    p[kOnBody] = (chunk: Buffer): void => { this.body?.push(chunk); }; // a copy already (Node's parser binding copies body bytes out of the read)
    p[kOnMessageComplete] = (): void => this.onComplete();
    socket.on('end', () => {
      // a body delimited by the end of the connection ends here; anything else running fails
      if (this.request && this.body) this.parser.finish();
      if (this.request) this.fail(closedError('the instance closed the connection during the exchange'));
      socket.destroy();
    });
    socket.on('error', (err) => { this.socketError = err; });
    socket.once('close', () => {
      if (this.request) this.fail(this.socketError ?? closedError('the connection to the instance closed'));
      this.parser.free();
    });
  }

  start(r: UpstreamRequest, host: string, resolve: (res: UpstreamResponse) => void, reject: (err: unknown) => void): void {
    this.request = r;
    this.resolve = resolve;
    this.reject = reject;
    this.headOnly = r.method === 'HEAD';
    this.sent = r.body === null;
    if (r.signal.aborted) { this.onAbort(); return; }
    r.signal.addEventListener('abort', this.onAbort, { once: true });
    let head = `${r.method} ${r.path} HTTP/1.1\r\nhost: ${host}\r\n`;
    const h = r.headers;
    for (const k in h) {
      const v = h[k]!;
      if (typeof v === 'string') { if (UNSAFE_VALUE.test(v)) return this.fail(unsafeHeader(k)); head += `${k}: ${v}\r\n`; continue; }
      for (const one of v) { if (UNSAFE_VALUE.test(one)) return this.fail(unsafeHeader(k)); head += `${k}: ${one}\r\n`; }
    }
    // a body of unknown length goes chunked; a method that carries none says so
    head += r.body ? 'transfer-encoding: chunked\r\n\r\n' : r.method === 'GET' || r.method === 'HEAD' ? '\r\n' : 'content-length: 0\r\n\r\n';
    this.socket.write(head, 'latin1'); // header bytes as the caller sent them (llhttp reads them as latin1)
    r.body?.pipeTo(this);
  }

  // ---- the request body (BodySink), chunked
  write(chunk: Buffer): boolean {
    if (chunk.length === 0) return true;
    const s = this.socket;
    s.cork();
    s.write(chunk.length.toString(16) + '\r\n');
    s.write(chunk);
    const ok = s.write('\r\n');
    s.uncork();
    return ok;
  }
  end(): void { this.socket.write('0\r\n\r\n'); this.sent = true; }
  destroy(err: Error): void { this.fail(err); }
  on(event: 'drain', listener: () => void): this { this.socket.on(event, listener); return this; }
  once(event: 'close', listener: () => void): this { this.socket.once(event, listener); return this; }
  off(event: 'drain' | 'close', listener: () => void): this { this.socket.off(event, listener); return this; }

  // ---- the answer
  /** A read, in the shared buffer (connectReading): nothing of it is kept but copies. */
  onData(d: Buffer): void {
    if (!this.request) { this.socket.destroy(); return; } // bytes nobody asked for: the connection is not to be trusted
    this.lastRead = performance.now();
    const ret = this.parser.execute(d);
    if (ret instanceof Error) {
      this.fail(Object.assign(new Error(`the instance's answer is not valid HTTP/1.1 (${(ret as { code?: string }).code ?? ret.message})`), { code: 'UPSTREAM_PROTOCOL' }));
      return;
    }
    // a body still coming: cut it when the instance goes quiet for the idle timeout
    if (this.body && this.request && !this.idleTimer && this.request.idleTimeoutMs < Infinity) this.armIdle(this.request.idleTimeoutMs);
  }

  private armIdle(ms: number): void {
    this.idleTimer = callDeadlines.start(ms, () => {
      this.idleTimer = null;
      if (!this.request) return;
      const quiet = performance.now() - this.lastRead;
      const limit = this.request.idleTimeoutMs;
      if (quiet < limit) this.armIdle(limit - quiet);
      else this.fail(Object.assign(new Error(`the instance sent nothing for ${limit} ms`), { code: 'UPSTREAM_IDLE_TIMEOUT' }));
    });
  }

  private onHead(lines: string[], status: number, upgrade: boolean, keepAlive: boolean): number {
    this.partial = [];
    if (!this.request) { this.socket.destroy(); return 1; } // an answer nobody asked for
    if (status < 200 && status !== 101) { this.informational = true; return 1; } // 100 Continue, 103 Early Hints: the answer follows
    if (upgrade || status === 101) {
      this.fail(Object.assign(new Error('the instance switched protocols; Berth does not carry upgraded connections'), { code: 'UPSTREAM_PROTOCOL' }));
      return 1;
    }
    this.keepAlive = keepAlive;
    const headers = headerObject(lines);
    const hint = keepAliveHintMs(headers['keep-alive']);
    if (hint !== null) this.keepAliveMs = Math.min(this.keepAliveMs, Math.max(0, hint));
    // the body may be read (or abandoned) after the connection serves another exchange: it ends only its own
    const body: MessageBody = this.body = new MessageBody(this.socket, (err) => { if (this.body === body) this.fail(err); });
    const trailers = new Promise<Record<string, string | string[]>>((res) => { this.endTrailers = res; });
    const resolve = this.resolve!;
    this.resolve = null;
    this.reject = null;
    resolve({ status, headers, body, trailers, headersOnly: false });
    return this.headOnly ? 1 : 0;
  }

  private onComplete(): void {
    if (this.informational) { this.informational = false; return; }
    if (!this.request || !this.body) return;
    const trailers = this.partial.length ? headerObject(this.takePartial()) : {};
    const body = this.body;
    const reusable = this.keepAlive && this.sent;
    this.finish();
    this.endTrailers?.(trailers);
    this.endTrailers = null;
    body.end();
    if (reusable && !this.socket.destroyed) this.onReusable(this);
    else this.socket.destroy();
  }

  /** The exchange failed: before the head its promise rejects, after it the body errors; the connection is not reused. */
  private fail(err: Error): void {
    if (!this.request) return;
    const reject = this.reject;
    const body = this.body;
    this.finish();
    this.socket.destroy();
    if (reject) reject(err);
    else {
      this.endTrailers?.({});
      this.endTrailers = null;
      body?.fail(err);
    }
  }

  private finish(): void {
    this.request?.signal.removeEventListener('abort', this.onAbort);
    if (this.idleTimer) { callDeadlines.clear(this.idleTimer); this.idleTimer = null; }
    this.request = null;
    this.resolve = null;
    this.reject = null;
    this.body = null;
  }

  private takePartial(): string[] {
    const lines = this.partial;
    this.partial = [];
    return lines;
  }
}

const unsafeHeader = (name: string): Error => Object.assign(new Error(`header ${name} has a value that cannot be sent over HTTP/1.1`), { code: 'ERR_INVALID_CHAR' });
