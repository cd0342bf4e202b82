// Persistent connections from the gateway to one image instance: an undici pool for
// HTTP/1.1 endpoints, one HTTP/2 session (reopened when it drops) for http2 and gRPC.
import { connect as netConnect } from 'node:net';
import { connect as h2connect, constants as h2c, type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from 'node:http2';
import { Transform, type Readable } from 'node:stream';
import { Pool } from 'undici';
import type { Endpoint } from '../worker/protocol.js';
import type { CallSignal } from './deadlines.js';

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
}

export interface UpstreamResponse {
  status: number;
  /** As received: over HTTP/2 with its pseudo-headers (':status'), which callers drop. */
  headers: Record<string, string | string[]>;
  body: Readable;
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
    || code === 'UND_ERR_SOCKET' || code === 'UPSTREAM_CLOSED' || code === 'ERR_HTTP2_STREAM_CANCEL' || code === 'ERR_HTTP2_GOAWAY_SESSION';
}

/** The connection could not be made at all (nothing listens there): no byte of the call was delivered. */
export function isUnreachable(err: unknown): boolean {
  const e = err as { code?: string; cause?: { code?: string } } | undefined;
  for (const code of [e?.code, e?.cause?.code]) if (code === 'ECONNREFUSED' || code === 'ENOENT') return true;
  return false;
}

/**
 * A call's request body on its way to an instance, counted as it passes (usage) and held to a
 * limit: past it the exchange fails with `tooLarge()` while the caller's side stays whole, to
 * be answered 413. Each upstream takes it its own way: undici as a stream of its own (it
 * destroys a body it could not send, which must not be the caller's request), an HTTP/2 stream
 * straight from the source (no stream in between: one per call cost a few percent of a gRPC
 * call's CPU). Until an attempt takes bytes from it, a failed attempt leaves it whole for the next.
 */
export class RequestBody {
  /** Bytes passed on so far. */
  bytes = 0;
  private stream: Readable | null = null;

  constructor(private readonly source: Readable, private readonly limit = Infinity,
    private readonly tooLarge: () => Error = () => new Error('the request body is over its limit')) {}

  /** The body as a stream of its own (made once: every attempt reads the same one). */
  asStream(): Readable {
    if (this.stream) return this.stream;
    const t = new Transform({
      transform: (chunk: Buffer, _enc, cb) => {
        this.bytes += chunk.length;
        if (this.bytes > this.limit) cb(this.tooLarge());
        else cb(null, chunk);
      },
    });
    this.source.on('error', (err) => t.destroy(err));
    this.source.pipe(t);
    return this.stream = t;
  }

  /** Writes the body into `dst` as pipe() would; past the limit, or when the source fails, `dst` is destroyed with the error. */
  pipeTo(dst: ClientHttp2Stream): void {
    // an earlier attempt (HTTP/1.1, refused untouched) made the stream: that one is the body now
    if (this.stream) { this.stream.once('error', (err) => dst.destroy(err)); this.stream.pipe(dst); return; }
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
    src.on('data', onData);
    src.once('end', onEnd);
    src.once('error', onError);
    dst.on('drain', onDrain);
    dst.once('close', stop);
  }
}

export class H1Upstream implements Upstream {
  readonly protocol = 'http1';
  private readonly pool: Pool;

  constructor(endpoint: Endpoint, connections: number, idleTimeoutMs: number) {
    this.pool = new Pool(`http://${endpoint.host ?? '127.0.0.1'}:${endpoint.port}`, {
      connections, pipelining: 1, keepAliveTimeout: Math.min(idleTimeoutMs, 60_000), keepAliveMaxTimeout: idleTimeoutMs,
    });
  }

  async request(r: UpstreamRequest): Promise<UpstreamResponse> {
    const res = await this.pool.request({
      method: r.method as 'GET', path: r.path, headers: r.headers, body: r.body?.asStream(),
      signal: r.signal as unknown as AbortSignal, // undici takes any object with addEventListener
      headersTimeout: r.headersTimeoutMs, bodyTimeout: r.idleTimeoutMs,
    });
    const body = res.body as unknown as Readable;
    const trailers = new Promise<Record<string, string | string[]>>((resolve) => {
      body.once('end', () => resolve((res.trailers ?? {}) as Record<string, string | string[]>));
      body.once('error', () => resolve({}));
      body.once('close', () => resolve({}));
    });
    return { status: res.statusCode, headers: res.headers as Record<string, string | string[]>, body, trailers, headersOnly: false };
  }

  close(): void { void this.pool.destroy(); }
}

export class H2Upstream implements Upstream {
  readonly protocol = 'http2';
  private session: ClientHttp2Session | null = null;
  private closed = false;

  constructor(private readonly endpoint: Endpoint) {}

  private connect(): ClientHttp2Session {
    if (this.session && !this.session.closed && !this.session.destroyed) return this.session;
    const { path, host, port } = this.endpoint;
    // a unix socket: another gateway worker's (cluster/call-relay.ts)
    const s = path ? h2connect('http://localhost', { peerMaxConcurrentStreams: 1000, createConnection: () => netConnect(path) })
      : h2connect(`http://${host ?? '127.0.0.1'}:${port}`, { peerMaxConcurrentStreams: 1000 });
    s.on('error', () => { /* surfaced on the streams */ });
    s.on('close', () => { if (this.session === s) this.session = null; });
    s.unref();
    this.session = s;
    return s;
  }

  request(r: UpstreamRequest): Promise<UpstreamResponse> {
    if (this.closed) return Promise.reject(Object.assign(new Error('upstream closed'), { code: 'ECONNREFUSED' }));
    const session = this.connect();
    return new Promise((resolve, reject) => {
      // the caller's abort closes the stream; not `signal` in the options, which costs Node an
      // AsyncResource.bind behind a deprecation wrapper on every request (seen in a CPU profile of the gRPC proxy)
      // r.headers is the call's own copy: the pseudo-headers go into it (session.request copies it once more)
      r.headers[h2c.HTTP2_HEADER_METHOD] = r.method;
      r.headers[h2c.HTTP2_HEADER_PATH] = r.path;
      const stream = session.request(r.headers, { endStream: r.body === null });
      const onAbort = (): void => { stream.destroy(r.signal.reason instanceof Error ? r.signal.reason : new Error('aborted')); };
      if (r.signal.aborted) onAbort();
      else {
        r.signal.addEventListener('abort', onAbort, { once: true });
        stream.once('close', () => r.signal.removeEventListener('abort', onAbort));
      }
      // the call's deadline bounds the wait for headers (it aborts the signal); a silent stream is
      // cut sooner only when the idle timeout is the shorter one (a timer per stream otherwise)
      if (r.idleTimeoutMs < r.headersTimeoutMs) stream.setTimeout(r.idleTimeoutMs, () => stream.close(h2c.NGHTTP2_CANCEL));
      let settled = false;
      stream.once('error', (err) => {
        if (!settled) { settled = true; reject(err); }
      });
      const trailers = new Promise<Record<string, string | string[]>>((res) => {
        stream.once('trailers', (t) => res(t as Record<string, string | string[]>));
        stream.once('close', () => res({}));
      });
      stream.once('response', (h: IncomingHttpHeaders, flags: number) => {
        settled = true;
        resolve({
          status: Number(h[':status']), headers: h as Record<string, string | string[]>, body: stream, trailers,
          headersOnly: (flags & h2c.NGHTTP2_FLAG_END_STREAM) !== 0,
        });
      });
      stream.once('close', () => {
        if (!settled) { settled = true; reject(Object.assign(new Error(`upstream stream closed (code ${stream.rstCode})`), { code: 'UPSTREAM_CLOSED' })); }
      });
      r.body?.pipeTo(stream);
    });
  }

  close(): void {
    this.closed = true;
    this.session?.destroy();
  }
}
