// The HTTP/2 upstream client (gateway/upstream.ts, H2Upstream) against real servers: node:http2
// servers on port 0 (and one on a unix socket) for well-behaved instances, raw `net` servers
// writing hand-made frames (HPACK by hand: static-table indexes, literals without indexing)
// for hostile ones. Covered: a gRPC-like exchange both ways (headers, body, trailers, a
// trailers-only answer, 1xx skipped), many streams on one connection, bodies beyond the
// flow-control windows both ways and a paused reader, the server's concurrent-stream limit (a
// cold burst too), GOAWAY and a dropped connection between calls, a retired connection closed by
// the client, PING, close(), and every way an exchange fails with its own code: refused; reset,
// closed or GOAWAY before the answer (UPSTREAM_CLOSED, retried elsewhere; a refused call goes
// again with its body whole); bytes that are not HTTP/2, bad HPACK, DATA beyond the window, a
// CONTINUATION flood (big or empty frames), PUSH_PROMISE, answer headers HTTP/2 forbids, a
// content-length not held to, empty DATA frames, a PING flood from a server that does not read
// (UPSTREAM_PROTOCOL, and the next call still works); an idle body; an abort before and after
// the answer; an unsafe header value.
// Every wait is bounded (within()), so a client that hangs fails its test instead of stalling.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import {
  createServer as createH2Server, constants as h2c,
  type Http2Server, type IncomingHttpHeaders, type ServerHttp2Session, type ServerHttp2Stream, type ServerOptions,
} from 'node:http2';
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RequestBody, isRefused, isUnreachable, type Upstream, type UpstreamRequest, type UpstreamResponse } from '../../src/gateway/upstream.js';
import { H2Upstream } from '../../src/gateway/h2/client.js';
import type { ResponseBody } from '../../src/gateway/h1-message.js';
import type { Endpoint } from '../../src/worker/protocol.js';
import { Deadline } from '../../src/gateway/deadlines.js';
import { frame } from './h2-frames.js';

const HOST = '127.0.0.1';
/** What any one wait in these tests may take before it counts as a hang. */
const WAIT_MS = 5000;
const OPTS = { timeout: 30_000 };

// ---- waiting, bounded

function within<T>(p: Promise<T>, what = 'the wait', ms = WAIT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error(`${what} took over ${ms} ms (a hang)`), { code: 'TEST_TIMEOUT' })), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(ok: () => boolean, what: string, ms = WAIT_MS): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) assert.fail(`${what}: not within ${ms} ms`);
    await sleep(5);
  }
}

/** A header object's string-keyed fields as a plain object (node:http2's carry a symbol and a null prototype). */
const fields = (h: Record<string, string | string[]>): Record<string, string | string[]> => Object.fromEntries(Object.entries(h));

const codeOf = (err: unknown): unknown => (err as { code?: unknown } | null)?.code;
const describe = (err: unknown): string => (err instanceof Error ? `${String(codeOf(err))}: ${err.message}` : String(err));

// ---- the client's side

const req = (over: Partial<UpstreamRequest> = {}): UpstreamRequest => ({
  method: 'GET', path: '/', headers: {}, body: null, signal: new Deadline(Infinity, null),
  headersTimeoutMs: 10_000, idleTimeoutMs: 10_000, ...over,
});

function upstream(t: TestContext, endpoint: Endpoint): Upstream {
  const up = new H2Upstream(endpoint);
  t.after(() => up.close());
  return up;
}

const readBytes = (body: ResponseBody): Promise<Buffer> => new Promise((resolve, reject) => {
  const chunks: Buffer[] = [];
  body.on('data', (c) => chunks.push(c));
  body.once('end', () => resolve(Buffer.concat(chunks)));
  body.once('error', reject);
});

const readAll = async (body: ResponseBody): Promise<string> => (await within(readBytes(body), 'reading the body')).toString();

/** One call's body as text, the call and its body both bounded. */
async function fetchText(up: Upstream, over: Partial<UpstreamRequest> = {}): Promise<string> {
  const res = await within(up.request(req(over)), `the answer to ${over.path ?? '/'}`);
  return readAll(res.body);
}

/** How a body finished: 'end', or its error. */
const settled = (body: ResponseBody): Promise<'end' | Error> => new Promise((resolve) => {
  body.once('end', () => resolve('end'));
  body.once('error', (err) => resolve(err));
});

/**
 * The failure of an exchange that must fail: its rejection, or (once it was answered) its
 * body's error. `before` holds off reading the body until the server has done its worst.
 */
async function failureOf(pending: Promise<UpstreamResponse>, before?: Promise<unknown>): Promise<unknown> {
  let res: UpstreamResponse;
  try {
    res = await within(pending, 'the answer or its failure');
  } catch (err) {
    if (codeOf(err) === 'TEST_TIMEOUT') throw err;
    return err;
  }
  const body = res.body;
  const failed = new Promise<unknown>((resolve) => body.once('error', resolve));
  const ended = new Promise<null>((resolve) => body.once('end', () => resolve(null)));
  if (before) await within(before, 'the server\'s misbehaviour');
  body.on('data', () => undefined);
  const got = await within(Promise.race([failed, ended]), 'the body failing');
  if (got === null) assert.fail('the answer ended normally instead of failing');
  return got;
}

/** The rejection of a call that must fail before any of its answer reaches the caller. */
async function rejectionOf(pending: Promise<UpstreamResponse>): Promise<unknown> {
  let res: UpstreamResponse;
  try {
    res = await within(pending, 'the call failing');
  } catch (err) {
    if (codeOf(err) === 'TEST_TIMEOUT') throw err;
    return err;
  }
  return assert.fail(`the call was answered (${res.status}) where it should have failed before its answer`);
}

/** The body's error of a call that must be answered, then fail in its body. */
async function bodyFailureOf(pending: Promise<UpstreamResponse>): Promise<unknown> {
  const res = await within(pending, 'the answer whose body must fail');
  return failureOf(Promise.resolve(res));
}

// ---- well-behaved servers: node:http2

interface SeenStream {
  stream: ServerHttp2Stream;
  headers: IncomingHttpHeaders;
  /** The request body, when the handler collected it. */
  body?: string;
  /** How the stream ended on the server's side: its RST code, and whether it was cut ('aborted'). */
  closed: Promise<{ rstCode: number; aborted: boolean }>;
}

interface H2Server {
  server: Http2Server;
  port: number;
  /** Sessions (connections) the server has seen. */
  sessions: ServerHttp2Session[];
  streams: SeenStream[];
  close(): Promise<void>;
}

async function h2server(t: TestContext, handler: (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, seen: SeenStream) => void,
  options: ServerOptions = {}, socketPath?: string): Promise<H2Server> {
  const sessions: ServerHttp2Session[] = [];
  const streams: SeenStream[] = [];
  const server = createH2Server(options);
  server.on('sessionError', () => undefined);
  server.on('session', (s) => { sessions.push(s); s.on('error', () => undefined); });
  server.on('stream', (stream, headers) => {
    stream.on('error', () => undefined);
    let aborted = false;
    stream.once('aborted', () => { aborted = true; });
    const closed = new Promise<{ rstCode: number; aborted: boolean }>((r) => stream.once('close', () => r({ rstCode: stream.rstCode, aborted })));
    const seen: SeenStream = { stream, headers, closed };
    streams.push(seen);
    handler(stream, headers, seen);
  });
  await new Promise<void>((r) => (socketPath ? server.listen(socketPath, r) : server.listen(0, HOST, r)));
  const port = socketPath ? 0 : (server.address() as AddressInfo).port;
  const close = (): Promise<void> => new Promise((r) => {
    for (const s of sessions) s.destroy();
    server.close(() => r());
  });
  t.after(close);
  return { server, port, sessions, streams, close };
}

/** Collects a server stream's request body, then calls `done` with it. */
function collect(stream: ServerHttp2Stream, seen: SeenStream, done: (body: string) => void): void {
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  stream.once('end', () => { seen.body = Buffer.concat(chunks).toString(); done(seen.body); });
}

// ---- hostile servers: raw frames

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
const DATA = 0x0, HEADERS = 0x1, RST_STREAM = 0x3, SETTINGS = 0x4, PUSH_PROMISE = 0x5, PING = 0x6, GOAWAY = 0x7,
  WINDOW_UPDATE = 0x8, CONTINUATION = 0x9;
const END_STREAM = 0x1, ACK = 0x1, END_HEADERS = 0x4;
const SETTINGS_INITIAL_WINDOW_SIZE = 0x4;
/** HPACK static table, indexed: `:status: 200`. */
const STATUS_200 = 0x88;

interface Frame { type: number; flags: number; id: number; payload: Buffer }


const u32 = (...values: number[]): Buffer => {
  const b = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => b.writeUInt32BE(v, 4 * i));
  return b;
};

/** An HPACK integer with an N-bit prefix (RFC 7541 §5.1), `high` the bits above the prefix. */
function hpackInt(n: number, prefixBits: number, high = 0): Buffer {
  const max = (1 << prefixBits) - 1;
  if (n < max) return Buffer.from([high | n]);
  const out = [high | max];
  n -= max;
  while (n >= 128) { out.push((n % 128) + 128); n = Math.floor(n / 128); }
  out.push(n);
  return Buffer.from(out);
}

/** A literal header field without indexing, new name, raw strings (RFC 7541 §6.2.2). */
const literal = (name: string, value: string): Buffer => Buffer.concat([
  Buffer.from([0x00]), hpackInt(name.length, 7), Buffer.from(name, 'latin1'), hpackInt(value.length, 7), Buffer.from(value, 'latin1'),
]);

/**
 * The server's side of one raw HTTP/2 connection: reads the client's preface, answers with an
 * empty SETTINGS, ACKs the client's SETTINGS and PINGs, keeps count of the credit the client
 * gave (its initial window and WINDOW_UPDATEs), and hands each request's stream id to `onRequest`.
 */
class RawConn {
  readonly frames: Frame[] = [];
  readonly closed: Promise<void>;
  connWindow = 65_535;
  private initialWindow = 65_535;
  private readonly windows = new Map<number, number>();
  private buf: Buffer = Buffer.alloc(0);
  private gotPreface = false;
  private requests = 0;
  private waiters: Array<{ match: (f: Frame) => boolean; resolve: (f: Frame) => void }> = [];

  constructor(readonly socket: Socket, private readonly onRequest: (c: RawConn, id: number, nth: number) => void) {
    this.closed = new Promise((r) => socket.once('close', () => r()));
    socket.on('data', (d: Buffer) => this.onData(d));
  }

  send(type: number, flags: number, id: number, payload?: Buffer): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(frame(type, flags, id, payload));
  }

  /** A well-behaved answer: 200 and a short body. */
  respond(id: number, body = 'ok'): void {
    this.send(HEADERS, END_HEADERS, id, Buffer.from([STATUS_200]));
    this.send(DATA, END_STREAM, id, Buffer.from(body));
  }

  /** What the server may still send on `id`: the smaller of the stream's and the connection's credit. */
  credit(id: number): number { return Math.min(this.windows.get(id) ?? this.initialWindow, this.connWindow); }

  debit(id: number, n: number): void {
    this.windows.set(id, (this.windows.get(id) ?? this.initialWindow) - n);
    this.connWindow -= n;
  }

  /** The next frame from the client that matches, or null after `ms`. */
  next(match: (f: Frame) => boolean, ms: number): Promise<Frame | null> {
    return new Promise((resolve) => {
      const w = { match, resolve: (f: Frame | null): void => { clearTimeout(timer); resolve(f); } };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        resolve(null);
      }, ms);
      this.waiters.push(w);
    });
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    if (!this.gotPreface) {
      if (this.buf.length < PREFACE.length) return;
      if (!this.buf.subarray(0, PREFACE.length).equals(PREFACE)) { this.socket.destroy(); return; }
      this.buf = this.buf.subarray(PREFACE.length);
      this.gotPreface = true;
      this.send(SETTINGS, 0, 0);
    }
    while (this.buf.length >= 9) {
      const length = this.buf.readUIntBE(0, 3);
      if (this.buf.length < 9 + length) break;
      const f: Frame = {
        type: this.buf[3]!, flags: this.buf[4]!, id: this.buf.readUInt32BE(5) & 0x7fffffff,
        payload: Buffer.from(this.buf.subarray(9, 9 + length)),
      };
      this.buf = this.buf.subarray(9 + length);
      this.onFrame(f);
    }
  }

  private onFrame(f: Frame): void {
    this.frames.push(f);
    switch (f.type) {
      case SETTINGS:
        if (f.flags & ACK) break;
        for (let at = 0; at + 6 <= f.payload.length; at += 6) {
          if (f.payload.readUInt16BE(at) !== SETTINGS_INITIAL_WINDOW_SIZE) continue;
          const value = f.payload.readUInt32BE(at + 2);
          for (const [id, w] of this.windows) this.windows.set(id, w + value - this.initialWindow);
          this.initialWindow = value;
        }
        this.send(SETTINGS, ACK, 0);
        break;
      case WINDOW_UPDATE: {
        const inc = f.payload.readUInt32BE(0) & 0x7fffffff;
        if (f.id === 0) this.connWindow += inc;
        else this.windows.set(f.id, (this.windows.get(f.id) ?? this.initialWindow) + inc);
        break;
      }
      case PING:
        if (!(f.flags & ACK)) this.send(PING, ACK, 0, f.payload);
        break;
      case HEADERS:
      case CONTINUATION:
        if (f.type === HEADERS && !this.windows.has(f.id)) this.windows.set(f.id, this.initialWindow);
        if (f.flags & END_HEADERS) this.onRequest(this, f.id, this.requests++);
        break;
      default:
    }
    for (const w of [...this.waiters]) {
      if (!w.match(f)) continue;
      this.waiters = this.waiters.filter((x) => x !== w);
      w.resolve(f);
    }
  }
}

interface RawServer {
  server: NetServer;
  port: number;
  sockets: Socket[];
  /** When each socket closed (in the order of `sockets`). */
  closed: Array<Promise<void>>;
  conns: RawConn[];
}

/** A raw server: each connection (numbered from 0) goes to `onConnection`. */
async function rawServer(t: TestContext, onConnection: (s: Socket, n: number) => RawConn | null): Promise<RawServer> {
  const sockets: Socket[] = [];
  const closed: Array<Promise<void>> = [];
  const conns: RawConn[] = [];
  const server = createNetServer({ noDelay: true }, (s) => {
    s.on('error', () => undefined);
    sockets.push(s);
    closed.push(new Promise((r) => s.once('close', () => r())));
    const c = onConnection(s, sockets.length - 1);
    if (c) conns.push(c);
  });
  await new Promise<void>((r) => server.listen(0, HOST, r));
  const port = (server.address() as AddressInfo).port;
  t.after(() => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }));
  return { server, port, sockets, closed, conns };
}

/**
 * A raw HTTP/2 server whose first connection's first request gets `hostile`; every other
 * request is answered 200 'ok' (unless `hostile` also takes the first connection's later ones).
 */
function h2raw(t: TestContext, hostile: (c: RawConn, id: number) => void, opts: { wholeConnection?: boolean } = {}): Promise<RawServer> {
  return rawServer(t, (s, n) => new RawConn(s, (c, id, nth) => {
    if (n === 0 && (nth === 0 || opts.wholeConnection)) hostile(c, id);
    else c.respond(id);
  }));
}

/** After a protocol error: the next call works, on a connection of its own, and the broken one was ended by the client. */
async function nextCallWorksOnAFreshConnection(up: Upstream, srv: RawServer): Promise<void> {
  assert.equal(await fetchText(up), 'ok', 'the call after the broken connection is served');
  assert.equal(srv.sockets.length, 2, 'the next call opened a new connection');
  await within(srv.closed[0]!, 'the client ending the broken connection');
}

/** A server allowing `streams` at once that answers each with its path after `holdMs(path)`; the most it had open at once. */
async function holdingServer(t: TestContext, streams: number, holdMs: (path: string) => number) {
  let open = 0;
  let most = 0;
  const srv = await h2server(t, (stream, headers) => {
    most = Math.max(most, ++open);
    const path = String(headers[':path']);
    setTimeout(() => {
      open--; // the stream is done once the answer's END_STREAM goes out
      stream.respond({ ':status': 200 });
      stream.end(path);
    }, holdMs(path));
  }, { settings: { maxConcurrentStreams: streams } });
  return { srv, maxOpen: () => most };
}

// ============================================================================================

test('a gRPC-like unary exchange: method, path, headers and body go out; headers, body and trailers come back; a trailers-only answer is headersOnly', OPTS, async (t) => {
  const srv = await h2server(t, (stream, headers, seen) => {
    if (headers[':path'] === '/pkg.Svc/Missing') {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '5', 'grpc-message': 'not%20found' }, { endStream: true });
      return;
    }
    collect(stream, seen, (body) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'set-cookie': ['a=1', 'b=2'] }, { waitForTrailers: true });
      stream.once('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0', 'grpc-message': 'all%20good' }));
      stream.end(`reply:${body}`);
    });
  });
  const up = upstream(t, { host: HOST, port: srv.port });

  const src = new PassThrough();
  const body = new RequestBody(src);
  const pending = up.request(req({
    method: 'POST', path: '/pkg.Svc/Method', body,
    headers: { 'content-type': 'application/grpc', te: 'trailers', 'x-one': 'v1', 'x-multi': ['a', 'b'] },
  }));
  src.write('hello ');
  setTimeout(() => src.end('world'), 20);
  const res = await within(pending);
  assert.equal(res.status, 200);
  assert.equal(res.headersOnly, false);
  assert.equal(res.headers['content-type'], 'application/grpc');
  assert.deepEqual(res.headers['set-cookie'], ['a=1', 'b=2']);
  assert.equal(await readAll(res.body), 'reply:hello world');
  assert.deepEqual(fields(await within(res.trailers, 'the trailers')), { 'grpc-status': '0', 'grpc-message': 'all%20good' });
  assert.equal(body.bytes, 11);

  const seen = srv.streams[0]!;
  assert.equal(seen.headers[':method'], 'POST');
  assert.equal(seen.headers[':path'], '/pkg.Svc/Method');
  assert.equal(seen.headers[':scheme'], 'http');
  assert.equal(seen.headers['content-type'], 'application/grpc');
  assert.equal(seen.headers.te, 'trailers');
  assert.equal(seen.headers['x-one'], 'v1');
  assert.equal(seen.headers['x-multi'], 'a, b', 'both values of a repeated header arrive');
  assert.equal(seen.body, 'hello world');

  const only = await within(up.request(req({ method: 'POST', path: '/pkg.Svc/Missing', headers: { 'content-type': 'application/grpc' } })));
  assert.equal(only.status, 200);
  assert.equal(only.headersOnly, true);
  assert.equal(only.headers['grpc-status'], '5');
  assert.equal(only.headers['grpc-message'], 'not%20found');
  assert.equal(await readAll(only.body), '');
  assert.deepEqual(fields(await within(only.trailers, 'the trailers of a trailers-only answer')), {});
  assert.equal(srv.sessions.length, 1);
  // last: the type says a header value is a string
  assert.equal(res.headers[':status'], '200', 'headers[":status"] is the string "200"');
});

test('1xx informational answers are skipped: the call resolves with the final answer', OPTS, async (t) => {
  const srv = await h2server(t, (stream) => {
    stream.additionalHeaders({ ':status': 103, link: '</style.css>; rel=preload' });
    setTimeout(() => {
      stream.respond({ ':status': 201, 'x-final': 'yes' });
      stream.end('after the hints');
    }, 20);
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  const res = await within(up.request(req()));
  assert.equal(res.status, 201);
  assert.equal(res.headers['x-final'], 'yes');
  assert.equal(await readAll(res.body), 'after the hints');
});

test('200 calls at once share one connection, each with its own answer', OPTS, async (t) => {
  const srv = await h2server(t, (stream, headers, seen) => {
    collect(stream, seen, (body) => {
      stream.respond({ ':status': 200 });
      stream.end(`${String(headers[':path'])}|${body}`);
    });
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  const answers = await within(Promise.all(Array.from({ length: 200 }, async (_, i) => {
    const src = new PassThrough();
    const pending = up.request(req({ method: 'POST', path: `/echo/${i}`, body: new RequestBody(src) }));
    src.end(`body-${i}`);
    return readBytes((await pending).body);
  })), 'the 200 calls', 15_000);
  answers.forEach((a, i) => assert.equal(a.toString(), `/echo/${i}|body-${i}`));
  assert.equal(srv.streams.length, 200);
  assert.equal(srv.sessions.length, 1, 'one connection for all');
});

test('a 5 MiB request body streamed in chunks, echoed back as it arrives: byte-exact both ways (beyond the 64 KiB windows)', OPTS, async (t) => {
  const srv = await h2server(t, (stream) => {
    stream.respond({ ':status': 200 });
    stream.pipe(stream);
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  const data = randomBytes(5 * 1024 * 1024);
  const src = new PassThrough();
  const body = new RequestBody(src);
  const pending = up.request(req({ method: 'POST', path: '/echo', body }));
  const writing = (async (): Promise<void> => {
    for (let at = 0; at < data.length; at += 64 * 1024) {
      if (!src.write(data.subarray(at, at + 64 * 1024))) await once(src, 'drain');
    }
    src.end();
  })();
  const res = await within(pending);
  const got = await within(readBytes(res.body), 'the echoed 5 MiB', 20_000);
  await within(writing, 'writing the request body');
  assert.equal(got.length, data.length);
  assert.ok(got.equals(data), 'the echo is byte-exact');
  assert.equal(body.bytes, data.length);
});

test('a paused reader: 2 MiB arrive intact and in order after a 500 ms pause, and the server is held back meanwhile', OPTS, async (t) => {
  const payload = randomBytes(2 * 1024 * 1024);
  let serverDone = false;
  const srv = await h2server(t, (stream) => {
    stream.respond({ ':status': 200 });
    stream.end(payload, () => { serverDone = true; });
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  const res = await within(up.request(req()));
  const chunks: Buffer[] = [];
  let doneDuringPause: boolean | null = null;
  const ended = new Promise<void>((resolve, reject) => {
    res.body.on('data', (c) => {
      chunks.push(c);
      if (chunks.length !== 1) return;
      res.body.pause();
      setTimeout(() => { doneDuringPause = serverDone; res.body.resume(); }, 500);
    });
    res.body.once('end', resolve);
    res.body.once('error', reject);
  });
  await within(ended, 'the paused body', 10_000);
  const got = Buffer.concat(chunks);
  assert.equal(got.length, payload.length);
  assert.ok(got.equals(payload), 'every byte, in order');
  assert.equal(doneDuringPause, false, 'while the reader was paused the server could not send it all (flow control)');
});

test('the server\'s SETTINGS_MAX_CONCURRENT_STREAMS = 1: 5 calls at once all succeed, never more than 1 stream open', OPTS, async (t) => {
  const { srv, maxOpen } = await holdingServer(t, 1, (path) => (path === '/warm' ? 0 : 50));
  const up = upstream(t, { host: HOST, port: srv.port });
  // the first call opens the connection: the server's SETTINGS are known from then on
  assert.equal(await fetchText(up, { path: '/warm' }), '/warm');
  const started = Date.now();
  const bodies = await within(Promise.all([0, 1, 2, 3, 4].map((i) => fetchText(up, { path: `/held/${i}` }))), 'the 5 calls', 10_000);
  assert.deepEqual(bodies, ['/held/0', '/held/1', '/held/2', '/held/3', '/held/4']);
  assert.equal(maxOpen(), 1, 'the server never had more than one stream open');
  assert.ok(Date.now() - started >= 200, 'the calls ran one after another');
});

test('a cold burst: 10 calls at once on a fresh upstream whose server allows 2 streams: all answered, never more than 2 open, none refused', OPTS, async (t) => {
  const { srv, maxOpen } = await holdingServer(t, 2, () => 30);
  // no warm-up call: all 10 go out before the server's SETTINGS can have arrived
  const up = upstream(t, { host: HOST, port: srv.port });
  const paths = Array.from({ length: 10 }, (_, i) => `/burst/${i}`);
  const bodies = await within(Promise.all(paths.map((path) => fetchText(up, { path }))), 'the 10 calls', 10_000);
  assert.deepEqual(bodies, paths);
  assert.ok(maxOpen() <= 2, `the server had ${maxOpen()} streams open at once`);
  assert.equal(srv.streams.length, 10, 'each call reached the server once');
  // a stream the server refuses (beyond its limit) takes a stream id but never reaches its handler:
  // ids 1, 3, ... 19 with no gap say that none was refused (and none went again)
  assert.deepEqual(srv.streams.map((s) => s.stream.id).sort((a, b) => (a ?? 0) - (b ?? 0)), paths.map((_, i) => 2 * i + 1));
  assert.equal(srv.sessions.length, 1);
});

test('a GOAWAY after the first answer: the next call succeeds on a new connection', OPTS, async (t) => {
  const srv = await h2server(t, (stream, headers) => {
    const session = stream.session;
    stream.respond({ ':status': 200 });
    stream.end(String(headers[':path']));
    if (headers[':path'] === '/first') stream.once('close', () => session?.goaway(h2c.NGHTTP2_NO_ERROR));
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  assert.equal(await fetchText(up, { path: '/first' }), '/first');
  await sleep(100); // the GOAWAY reaches the client
  assert.equal(await fetchText(up, { path: '/second' }), '/second');
  assert.equal(srv.sessions.length, 2, 'the second call went on a new connection');
});

test('a graceful GOAWAY (session.close()) during a call: that call finishes, the next one goes on a new connection', OPTS, async (t) => {
  const srv = await h2server(t, (stream, headers) => {
    const session = stream.session;
    stream.respond({ ':status': 200 });
    if (headers[':path'] !== '/running') { stream.end(String(headers[':path'])); return; }
    stream.write('part one, ');
    session?.close(); // GOAWAY with this stream as the last taken: it may finish
    setTimeout(() => stream.end('part two'), 100);
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  const running = await within(up.request(req({ path: '/running' })));
  const rest = readAll(running.body);
  await sleep(50);
  const next = fetchText(up, { path: '/next' });
  assert.equal(await rest, 'part one, part two');
  assert.equal(await next, '/next');
  assert.equal(srv.sessions.length, 2);
});

test('a connection the server retired (a graceful GOAWAY that lets the running stream finish, the socket left open): the client closes it once that stream is done; close() afterwards does not throw', OPTS, async (t) => {
  const srv = await h2server(t, (stream) => {
    stream.session?.goaway(h2c.NGHTTP2_NO_ERROR, stream.id); // and never closes the socket itself
    stream.respond({ ':status': 200 });
    stream.end('the last answer');
  });
  // node's server stops reading once its GOAWAY went out and its streams are done, so it would
  // not see the client close the connection: a TCP relay in front of it does
  const sockets: Socket[] = [];
  const gone: Array<Promise<void>> = [];
  const relay = createNetServer((s) => {
    const to = netConnect({ host: HOST, port: srv.port });
    for (const one of [s, to]) { one.on('error', () => undefined); sockets.push(one); }
    gone.push(new Promise((r) => { s.once('end', () => r()); s.once('close', () => r()); }));
    s.pipe(to);
    to.pipe(s);
  });
  await new Promise<void>((r) => relay.listen(0, HOST, r));
  t.after(() => new Promise<void>((r) => { for (const s of sockets) s.destroy(); relay.close(() => r()); }));
  const up = new H2Upstream({ host: HOST, port: (relay.address() as AddressInfo).port });
  t.after(() => up.close());
  assert.equal(await fetchText(up), 'the last answer');
  assert.equal(gone.length, 1);
  await within(gone[0]!, 'the client closing the retired connection', 2000);
  assert.doesNotThrow(() => up.close());
});

test('the server drops the connection after the first answer: the next call succeeds on a new connection', OPTS, async (t) => {
  const srv = await h2raw(t, (c, id) => {
    c.send(HEADERS, END_HEADERS, id, Buffer.from([STATUS_200]));
    c.socket.write(frame(DATA, END_STREAM, id, Buffer.from('first')), () => c.socket.destroy());
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  assert.equal(await fetchText(up), 'first');
  await within(srv.conns[0]!.closed, 'the server closing');
  await sleep(20);
  assert.equal(await fetchText(up), 'ok');
  assert.equal(srv.sockets.length, 2);
});

// ---- how an exchange fails

test('refused: nothing listens there: ECONNREFUSED, refused and unreachable', OPTS, async (t) => {
  const gone = createNetServer();
  await new Promise<void>((r) => gone.listen(0, HOST, r));
  const port = (gone.address() as AddressInfo).port;
  await new Promise<void>((r) => gone.close(() => r()));
  const up = upstream(t, { host: HOST, port });
  for (let i = 0; i < 2; i++) {
    const err = await failureOf(up.request(req()));
    assert.equal(codeOf(err), 'ECONNREFUSED', describe(err));
    assert.ok(isRefused(err));
    assert.ok(isUnreachable(err));
  }
});

test('RST_STREAM before the answer: REFUSED_STREAM goes again on a new stream (up to 3 times, and only with its body whole); other codes fail as UPSTREAM_RESET, not retried', OPTS, async (t) => {
  // what the server does with each stream it gets, in turn: a code to reset it with, or an answer
  const plan: Array<number | 'ok' | 'late-7'> = [7, 'ok', 0x0, 0x2, 0x8, 7, 7, 7, 7, 'late-7'];
  const srv = await h2raw(t, (c, id) => {
    const step = plan.shift() ?? 'ok';
    if (step === 'ok') c.respond(id);
    else if (step === 'late-7') setTimeout(() => c.send(RST_STREAM, 0, id, u32(7)), 100); // after the body's first bytes came
    else c.send(RST_STREAM, 0, id, u32(step));
  }, { wholeConnection: true });
  const up = upstream(t, { host: HOST, port: srv.port });
  // refused once: the instance did nothing with it (RFC 9113 §8.7), the caller never hears of it
  assert.equal(await fetchText(up), 'ok');
  const outcomes: Array<{ code: unknown; refused: boolean }> = [];
  for (let i = 0; i < 3; i++) {
    const err = await failureOf(up.request(req()));
    outcomes.push({ code: codeOf(err), refused: isRefused(err) });
  }
  assert.deepEqual(outcomes, [0, 2, 8].map(() => ({ code: 'UPSTREAM_RESET', refused: false })));
  // refused on every try: after 3 more, it fails as refused (the proxy takes another instance)
  const refused = await failureOf(up.request(req()));
  assert.equal(codeOf(refused), 'UPSTREAM_CLOSED', describe(refused));
  assert.ok(isRefused(refused));
  // a body already on its way is not sent twice: refused after it started, the call fails
  const src = new PassThrough();
  const body = new RequestBody(src);
  src.write('first bytes');
  const late = await failureOf(up.request(req({ method: 'POST', body })));
  assert.equal(codeOf(late), 'UPSTREAM_CLOSED', describe(late));
  assert.ok(body.bytes > 0);
  assert.equal(await fetchText(up), 'ok');
  assert.equal(srv.sockets.length, 1, 'all of it on one connection');
});

test('a call refused before any of its body went (REFUSED_STREAM on HEADERS) goes again with its body whole: the source the first attempt paused flows into the next', OPTS, async (t) => {
  let retried: () => void = () => undefined;
  const retry = new Promise<void>((r) => { retried = r; });
  // the first stream is refused at once; every later one gets its request body echoed back
  const srv = await rawServer(t, (s, n) => new RawConn(s, (c, id, nth) => {
    if (n === 0 && nth === 0) { c.send(RST_STREAM, 0, id, u32(7)); return; }
    retried();
    const chunks: Buffer[] = [];
    void c.next((f) => {
      if (f.type !== DATA || f.id !== id) return false;
      chunks.push(f.payload);
      return (f.flags & END_STREAM) !== 0;
    }, WAIT_MS).then((last) => { if (last) c.respond(id, `echo:${Buffer.concat(chunks).toString()}`); });
  }));
  const up = upstream(t, { host: HOST, port: srv.port });
  const src = new PassThrough();
  const body = new RequestBody(src);
  const pending = up.request(req({ method: 'POST', path: '/echo', body }));
  // the body's first byte comes only once the call went again: the first attempt took none of it
  await within(retry, 'the call going again on a new stream');
  await sleep(20);
  src.write('hello');
  src.end();
  const res = await within(pending, 'the answer to the retried call');
  assert.equal(res.status, 200);
  assert.equal(await readAll(res.body), 'echo:hello');
  assert.equal(body.bytes, 5);
  const streams = srv.conns[0]!.frames.filter((f) => f.type === HEADERS).map((f) => f.id);
  assert.deepEqual(streams, [1, 3], 'refused on stream 1, answered on stream 3');
  assert.equal(srv.sockets.length, 1, 'on the same connection');
});

test('the server closes the connection before the answer: UPSTREAM_CLOSED, refused; the next call works on a new connection', OPTS, async (t) => {
  const srv = await h2raw(t, (c) => c.socket.end());
  const up = upstream(t, { host: HOST, port: srv.port });
  const err = await failureOf(up.request(req()));
  assert.equal(codeOf(err), 'UPSTREAM_CLOSED', describe(err));
  assert.ok(isRefused(err));
  assert.equal(await fetchText(up), 'ok');
  assert.equal(srv.sockets.length, 2);
});

test('GOAWAY with last-stream-id 0 before the answer: the call was not processed, so it goes to a new connection and is answered there', OPTS, async (t) => {
  // the first connection takes no stream at all (it answers none, ever)
  const srv = await h2raw(t, (c, id) => { if (id === 1) c.send(GOAWAY, 0, 0, u32(0, 0)); }, { wholeConnection: true });
  const up = upstream(t, { host: HOST, port: srv.port });
  assert.equal(await fetchText(up), 'ok');
  assert.equal(srv.sockets.length, 2);
  await within(srv.closed[0]!, 'the client ending the connection that went away');
});

test('not HTTP/2 at all (an HTTP/1.1 answer): UPSTREAM_PROTOCOL; the next call works on a new connection', OPTS, async (t) => {
  const srv = await rawServer(t, (s, n) => {
    if (n > 0) return new RawConn(s, (c, id) => c.respond(id));
    s.once('data', () => s.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok')); // and the connection stays open
    return null;
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  const err = await failureOf(up.request(req()));
  assert.equal(codeOf(err), 'UPSTREAM_PROTOCOL', describe(err));
  assert.equal(await fetchText(up), 'ok');
  assert.equal(srv.sockets.length, 2);
  await within(srv.closed[0]!, 'the client ending the broken connection');
});

test('a HEADERS block with garbage HPACK (index 0): UPSTREAM_PROTOCOL; the next call works on a new connection', OPTS, async (t) => {
  const srv = await h2raw(t, (c, id) => c.send(HEADERS, END_HEADERS, id, Buffer.from([0x80])));
  const up = upstream(t, { host: HOST, port: srv.port });
  const err = await failureOf(up.request(req()));
  assert.equal(codeOf(err), 'UPSTREAM_PROTOCOL', describe(err));
  await nextCallWorksOnAFreshConnection(up, srv);
});

test('DATA beyond the stream\'s flow-control window: UPSTREAM_PROTOCOL; the next call works', OPTS, async (t) => {
  let overflowSent: () => void = () => undefined;
  const overflowed = new Promise<void>((r) => { overflowSent = r; });
  const srv = await h2raw(t, (c, id) => {
    c.send(HEADERS, END_HEADERS, id, Buffer.from([STATUS_200]));
    const chunk = Buffer.alloc(16 * 1024, 0x61);
    void (async (): Promise<void> => {
      // send as the client's credit allows (its SETTINGS window, its WINDOW_UPDATEs) until it
      // gives no more (nobody reads the body), then one byte beyond it
      for (let sent = 0; sent < 64 * 1024 * 1024;) {
        const n = Math.min(c.credit(id), chunk.length);
        if (n > 0) { c.send(DATA, 0, id, chunk.subarray(0, n)); c.debit(id, n); sent += n; continue; }
        const more = await c.next((f) => f.type === WINDOW_UPDATE && (f.id === id || f.id === 0), 250);
        if (!more && c.credit(id) <= 0) break;
      }
      c.send(DATA, 0, id, Buffer.from('!'));
      setTimeout(overflowSent, 100);
    })();
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  const err = await failureOf(up.request(req()), overflowed);
  assert.equal(codeOf(err), 'UPSTREAM_PROTOCOL', describe(err));
  assert.equal(await fetchText(up), 'ok', 'the next call is served');
});

test('an endless CONTINUATION sequence (over 1 MiB of header block): UPSTREAM_PROTOCOL; the next call works on a new connection', OPTS, async (t) => {
  const field = literal('x-f', 'a'.repeat(100));
  const block = Buffer.concat(Array.from({ length: 20_000 }, () => field)); // about 2 MiB, valid HPACK all along
  const srv = await h2raw(t, (c, id) => {
    c.send(HEADERS, 0, id, Buffer.from([STATUS_200]));
    for (let at = 0; at < block.length; at += 16 * 1024) c.send(CONTINUATION, 0, id, block.subarray(at, at + 16 * 1024)); // never END_HEADERS
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  const err = await failureOf(up.request(req()));
  assert.equal(codeOf(err), 'UPSTREAM_PROTOCOL', describe(err));
  await nextCallWorksOnAFreshConnection(up, srv);
});

test('a flood of empty CONTINUATION frames (no bytes to count): UPSTREAM_PROTOCOL well before 10,000 of them, the connection ended with a GOAWAY; the next call works on a new connection', OPTS, async (t) => {
  const TOTAL = 10_000;
  const BATCH = 100;
  const flood: { sent: number; goaway: Promise<Frame | null> | null } = { sent: 0, goaway: null };
  const srv = await h2raw(t, (c, id) => {
    const goaway = flood.goaway = c.next((f) => f.type === GOAWAY, WAIT_MS);
    let cut = false;
    void goaway.then(() => { cut = true; });
    c.send(HEADERS, 0, id, Buffer.from([STATUS_200])); // never END_HEADERS
    const batch = Buffer.concat(Array.from({ length: BATCH }, () => frame(CONTINUATION, 0, id)));
    void (async (): Promise<void> => {
      // a batch at a time, and a moment for the client to answer in between
      while (flood.sent < TOTAL && !cut && c.socket.writable) {
        c.socket.write(batch);
        flood.sent += BATCH;
        await sleep(10);
      }
    })();
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  const err = await failureOf(up.request(req()));
  assert.equal(codeOf(err), 'UPSTREAM_PROTOCOL', describe(err));
  const goaway = await within(flood.goaway ?? Promise.resolve(null), 'the GOAWAY');
  assert.ok(goaway, 'the client sent a GOAWAY');
  assert.notEqual(goaway.payload.readUInt32BE(4), 0, 'the GOAWAY gives an error code');
  assert.ok(flood.sent < TOTAL, `the client let ${flood.sent} empty CONTINUATION frames through before ending the connection`);
  await nextCallWorksOnAFreshConnection(up, srv);
});

test('PUSH_PROMISE (push is disabled): UPSTREAM_PROTOCOL; the next call works on a new connection', OPTS, async (t) => {
  const srv = await h2raw(t, (c, id) => {
    const promised = Buffer.concat([u32(id + 1), Buffer.from([0x82, 0x86, 0x84]), literal(':authority', 'localhost')]);
    c.send(PUSH_PROMISE, END_HEADERS, id, promised);
    c.respond(id, 'pushed-along');
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  const err = await failureOf(up.request(req()));
  assert.equal(codeOf(err), 'UPSTREAM_PROTOCOL', describe(err));
  await nextCallWorksOnAFreshConnection(up, srv);
});

test('an answer header HTTP/2 does not allow (RFC 9113 §8.2.1: a name with CR/LF, an upper-case name, a value with LF or NUL, a connection header): the call fails with UPSTREAM_PROTOCOL, only its stream is reset', OPTS, async (t) => {
  const bad: Array<[string, string]> = [
    ['x-a\r\nset-cookie: injected=1\r\nx-b', 'v'],
    ['X-Upper', 'v'],
    ['x-value', 'a\nset-cookie: injected=1'],
    ['x-value', 'a\0b'],
    ['connection', 'close'],
    ['transfer-encoding', 'chunked'],
  ];
  const plan = [...bad];
  const srv = await h2raw(t, (c, id) => {
    const field = plan.shift();
    if (!field) { c.respond(id); return; }
    // a literal without indexing with a new name: the name goes as it is, in raw octets
    c.send(HEADERS, END_HEADERS, id, Buffer.concat([Buffer.from([STATUS_200]), literal(field[0], field[1])]));
    c.send(DATA, END_STREAM, id, Buffer.from('not for the caller'));
  }, { wholeConnection: true });
  const up = upstream(t, { host: HOST, port: srv.port });
  for (const [name, value] of bad) {
    const err = await rejectionOf(up.request(req()));
    assert.equal(codeOf(err), 'UPSTREAM_PROTOCOL', `${JSON.stringify(name)}: ${JSON.stringify(value)}: ${describe(err)}`);
  }
  assert.equal(await fetchText(up), 'ok', 'the connection serves the next call');
  assert.equal(srv.sockets.length, 1, 'on the same connection');
  const resets = srv.conns[0]!.frames.filter((f) => f.type === RST_STREAM).map((f) => ({ id: f.id, code: f.payload.readUInt32BE(0) }));
  assert.deepEqual(resets, bad.map((_, i) => ({ id: 2 * i + 1, code: 0x1 /* PROTOCOL_ERROR */ })), 'each bad answer\'s stream was reset');
});

test('content-length is held to (RFC 9113 §8.1.1): more or less body than it says, a body-less answer that says some, a non-numeric or twice different one: UPSTREAM_PROTOCOL; a HEAD answer\'s content-length promises no body', OPTS, async (t) => {
  const status = Buffer.from([STATUS_200]);
  const head = (...fields: Array<[string, string]>): Buffer => Buffer.concat([status, ...fields.map(([n, v]) => literal(n, v))]);
  // what the server does with each stream it gets, in turn
  const plan: Array<(c: RawConn, id: number) => void> = [
    (c, id) => { c.send(HEADERS, END_HEADERS, id, head(['content-length', '2'])); c.send(DATA, 0, id, Buffer.from('okEXTRA')); }, // and the stream stays open
    (c, id) => { c.send(HEADERS, END_HEADERS, id, head(['content-length', '10'])); c.send(DATA, END_STREAM, id, Buffer.from('ok')); },
    (c, id) => { // short, and ended by trailers
      c.send(HEADERS, END_HEADERS, id, head(['content-length', '10']));
      c.send(DATA, 0, id, Buffer.from('ok'));
      c.send(HEADERS, END_HEADERS | END_STREAM, id, literal('grpc-status', '0'));
    },
    (c, id) => c.send(HEADERS, END_HEADERS | END_STREAM, id, head(['content-length', '5'])),
    (c, id) => { c.send(HEADERS, END_HEADERS, id, head(['content-length', 'abc'])); c.send(DATA, END_STREAM, id, Buffer.from('abc')); },
    (c, id) => { c.send(HEADERS, END_HEADERS, id, head(['content-length', '2'], ['content-length', '3'])); c.send(DATA, END_STREAM, id, Buffer.from('ok')); },
    // fine: the same length twice, the body in two frames
    (c, id) => {
      c.send(HEADERS, END_HEADERS, id, head(['content-length', '2'], ['content-length', '2']));
      c.send(DATA, 0, id, Buffer.from('o'));
      c.send(DATA, END_STREAM, id, Buffer.from('k'));
    },
    // fine: the answer to a HEAD
    (c, id) => c.send(HEADERS, END_HEADERS | END_STREAM, id, head(['content-length', '100'])),
  ];
  const srv = await h2raw(t, (c, id) => (plan.shift() ?? ((cc: RawConn, i: number): void => cc.respond(i)))(c, id), { wholeConnection: true });
  const up = upstream(t, { host: HOST, port: srv.port });
  // answered, then the body fails; what reached the caller of it is never more than content-length said
  const bodyFailures: Array<{ what: string; code: unknown; got: string }> = [];
  for (const what of ['more', 'less', 'less, then trailers']) {
    const res = await within(up.request(req()), `the answer (${what})`);
    const got: Buffer[] = [];
    res.body.on('data', (chunk) => got.push(chunk));
    const outcome = await within(settled(res.body), `the body failing (${what})`);
    bodyFailures.push({ what, code: outcome === 'end' ? 'ended normally' : codeOf(outcome), got: Buffer.concat(got).toString() });
  }
  assert.deepEqual(bodyFailures, [
    { what: 'more', code: 'UPSTREAM_PROTOCOL', got: '' },
    { what: 'less', code: 'UPSTREAM_PROTOCOL', got: 'ok' },
    { what: 'less, then trailers', code: 'UPSTREAM_PROTOCOL', got: 'ok' },
  ]);
  const failures: Array<[string, unknown]> = [];
  for (const what of ['no body', 'not a number', 'two values']) failures.push([what, codeOf(await rejectionOf(up.request(req())))]);
  assert.deepEqual(failures, [['no body', 'UPSTREAM_PROTOCOL'], ['not a number', 'UPSTREAM_PROTOCOL'], ['two values', 'UPSTREAM_PROTOCOL']]);

  assert.equal(await fetchText(up), 'ok', 'the same length twice, and the body it says');
  const res = await within(up.request(req({ method: 'HEAD' })));
  assert.equal(res.status, 200);
  assert.equal(res.headersOnly, true);
  assert.equal(res.headers['content-length'], '100');
  assert.equal(await readAll(res.body), '');
  assert.equal(await fetchText(up), 'ok');
  assert.equal(srv.sockets.length, 1, 'all of it on one connection');
});

test('a body that stops arriving for idleTimeoutMs errors with UPSTREAM_IDLE_TIMEOUT; one that trickles in within it completes', OPTS, async (t) => {
  const srv = await h2server(t, (stream, headers) => {
    stream.respond({ ':status': 200 });
    if (headers[':path'] === '/trickle') {
      let n = 0;
      const tick = setInterval(() => {
        stream.write(String(n));
        if (++n === 6) { clearInterval(tick); stream.end(); }
      }, 100);
      stream.once('close', () => clearInterval(tick));
      return;
    }
    stream.write('half'); // then nothing
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  assert.equal(await fetchText(up, { path: '/trickle', idleTimeoutMs: 300, headersTimeoutMs: 10_000 }), '012345');

  const started = Date.now();
  const res = await within(up.request(req({ path: '/stall', idleTimeoutMs: 300, headersTimeoutMs: 10_000 })));
  const err = await failureOf(Promise.resolve(res));
  const took = Date.now() - started;
  assert.equal(codeOf(err), 'UPSTREAM_IDLE_TIMEOUT', describe(err));
  assert.ok(took >= 280 && took < 3000, `cut after ${took} ms`);
  assert.deepEqual(fields(await within(res.trailers, 'the trailers of a failed body')), {});
});

test('empty DATA frames do not keep a body alive: every 50 ms, it errors (idle, or too many empty frames) within the bound; 200 at once, it errors with UPSTREAM_PROTOCOL; the connection serves on', OPTS, async (t) => {
  const ticks: NodeJS.Timeout[] = [];
  t.after(() => { for (const tick of ticks) clearInterval(tick); });
  const resets: Array<Promise<Frame | null>> = [];
  const srv = await h2raw(t, (c, id) => {
    if (resets.length === 2) { c.respond(id); return; } // the third stream on
    c.send(HEADERS, END_HEADERS, id, Buffer.from([STATUS_200]));
    const reset = c.next((f) => f.type === RST_STREAM && f.id === id, 10_000);
    resets.push(reset);
    if (resets.length === 2) { // the second stream: a burst, then nothing
      c.socket.write(Buffer.concat(Array.from({ length: 200 }, () => frame(DATA, 0, id))));
      return;
    }
    const tick = setInterval(() => c.send(DATA, 0, id), 50); // no byte, no END_STREAM
    ticks.push(tick);
    void reset.then(() => clearInterval(tick));
  }, { wholeConnection: true });
  const up = upstream(t, { host: HOST, port: srv.port });
  const started = Date.now();
  const err = await bodyFailureOf(up.request(req({ idleTimeoutMs: 300, headersTimeoutMs: 10_000 })));
  const took = Date.now() - started;
  assert.ok(codeOf(err) === 'UPSTREAM_IDLE_TIMEOUT' || codeOf(err) === 'UPSTREAM_PROTOCOL', describe(err));
  assert.ok(took < 3000, `the body errored after ${took} ms`);
  assert.ok(await within(resets[0]!, 'the server seeing the stream reset'), 'the client reset the stream');
  // with an idle timeout far off, only the cap on empty frames can end it
  const burst = await bodyFailureOf(up.request(req({ idleTimeoutMs: 30_000, headersTimeoutMs: 10_000 })));
  assert.equal(codeOf(burst), 'UPSTREAM_PROTOCOL', describe(burst));
  assert.ok(await within(resets[1]!, 'the server seeing the second stream reset'), 'the client reset the stream');
  assert.equal(await fetchText(up), 'ok', 'the connection serves on');
  assert.equal(srv.sockets.length, 1);
});

test('an abort before the answer rejects with its reason and resets the stream (CANCEL); an already aborted signal too; the connection serves on', OPTS, async (t) => {
  const srv = await h2server(t, (stream, headers) => {
    if (headers[':path'] !== '/ok') return; // never answers
    stream.respond({ ':status': 200 });
    stream.end('ok');
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  const signal = new Deadline(Infinity, null);
  const reason = Object.assign(new Error('the caller left'), { code: 'TEST_ABORT' });
  const pending = up.request(req({ path: '/silent', signal }));
  await waitFor(() => srv.streams.length === 1, 'the server seeing the stream');
  signal.abort(reason);
  await assert.rejects(within(pending), (err: unknown) => err === reason);
  const closed = await within(srv.streams[0]!.closed, 'the server seeing the stream end');
  assert.ok(closed.rstCode === h2c.NGHTTP2_CANCEL || closed.aborted, `the server saw the stream reset (rstCode ${closed.rstCode})`);

  const pre = new Deadline(Infinity, null);
  pre.abort(reason);
  await assert.rejects(within(up.request(req({ path: '/silent', signal: pre }))), (err: unknown) => err === reason);

  assert.equal(await fetchText(up, { path: '/ok' }), 'ok');
  assert.equal(srv.sessions.length, 1, 'an abort resets its stream, not the connection');
});

test('an abort after the answer ends the body and resets the stream (CANCEL); the connection serves on', OPTS, async (t) => {
  const srv = await h2server(t, (stream, headers) => {
    stream.respond({ ':status': 200 });
    if (headers[':path'] === '/ok') stream.end('ok');
    else stream.write('first'); // then holds
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  const signal = new Deadline(Infinity, null);
  const res = await within(up.request(req({ path: '/open', signal })));
  const first = new Promise<Buffer>((r) => res.body.on('data', r));
  const outcome = settled(res.body);
  assert.equal((await within(first, 'the first chunk')).toString(), 'first');
  signal.abort(Object.assign(new Error('the caller left'), { code: 'TEST_ABORT' }));
  await within(outcome, 'the body ending or failing after the abort');
  const closed = await within(srv.streams[0]!.closed, 'the server seeing the stream end');
  assert.ok(closed.rstCode === h2c.NGHTTP2_CANCEL || closed.aborted, `the server saw the stream reset (rstCode ${closed.rstCode})`);
  assert.equal(await fetchText(up, { path: '/ok' }), 'ok');
  assert.equal(srv.sessions.length, 1);
});

test('a header value with CR, LF or NUL: ERR_INVALID_CHAR, and nothing of that stream reaches the server', OPTS, async (t) => {
  const srv = await h2server(t, (stream) => {
    stream.respond({ ':status': 200 });
    stream.end('ok');
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  const bad: Array<Record<string, string | string[]>> = [
    { 'x-bad': 'a\rb' }, { 'x-bad': 'a\nx-injected: 1' }, { 'x-bad': 'a\0b' }, { 'x-list': ['fine', 'bad\r\nx-injected: 1'] },
  ];
  for (const headers of bad) {
    const err = await failureOf(up.request(req({ headers })));
    assert.equal(codeOf(err), 'ERR_INVALID_CHAR', `${JSON.stringify(headers)}: ${describe(err)}`);
  }
  assert.equal(await fetchText(up), 'ok');
  await sleep(50);
  assert.equal(srv.streams.length, 1, 'only the good call reached the server');
});

test('a PING from the server gets a PING ACK with the same 8 bytes', OPTS, async (t) => {
  const payload = Buffer.from('berth-h2');
  const got: { ack?: Frame | null } = {};
  const srv = await h2raw(t, (c, id) => {
    c.send(PING, 0, 0, payload);
    void c.next((f) => f.type === PING && (f.flags & ACK) !== 0, 3000).then((f) => { got.ack = f; c.respond(id); });
  });
  const up = upstream(t, { host: HOST, port: srv.port });
  assert.equal(await fetchText(up), 'ok');
  assert.ok(got.ack, 'a PING ACK came');
  assert.equal(got.ack.id, 0);
  assert.ok(got.ack.payload.equals(payload), `the same 8 bytes (got ${got.ack.payload.toString('hex')})`);
});

test('a PING flood from an instance that reads nothing: the client cuts the connection instead of queueing acks without bound; the call on it fails with UPSTREAM_PROTOCOL', OPTS, async (t) => {
  // each PING asks for a 17-byte ack that the server never reads: once the kernel's buffers on the
  // way (some MB on loopback) are full, a client that goes on acking queues them in its own memory.
  // At most 800,000 (13.6 MB of acks, under the 16 MB of unread bytes that would cut the connection
  // anyway): it is the cap on acks owed that has to do it
  const MAX_PINGS = 800_000;
  const PER_WRITE = 1000; // 17 KB of PINGs a write
  const chunk = Buffer.concat(Array.from({ length: PER_WRITE }, (_, i) => frame(PING, 0, 0, u32(0, i))));
  const flood = { sent: 0, ms: 0, stop: false };
  const srv = await rawServer(t, (s, n) => new RawConn(s, (c, id) => {
    if (n > 0) { c.respond(id); return; }
    s.pause(); // from here on nothing the client sends is read: its acks stay in the socket
    void (async (): Promise<void> => {
      const started = Date.now();
      // as fast as the client reads them, until the call fails, 5 s at most
      while (!flood.stop && flood.sent < MAX_PINGS && Date.now() - started < 5000 && !s.destroyed && s.writable) {
        flood.sent += PER_WRITE;
        if (s.write(chunk)) { await new Promise<void>((r) => setImmediate(r)); continue; }
        await new Promise<void>((r) => {
          const go = (): void => { clearTimeout(timer); s.off('drain', go); s.off('close', go); r(); };
          const timer = setTimeout(go, 100);
          s.once('drain', go);
          s.once('close', go);
        });
      }
      flood.ms = Date.now() - started;
      // reading again (and dropping it all, the acks too), a socket the client cut is seen closed: a paused one may not notice
      s.removeAllListeners('data');
      s.resume();
    })();
  }));
  const up = upstream(t, { host: HOST, port: srv.port });
  const pending = up.request(req()); // the server never answers it: the flood starts when it arrives
  const err = await within(pending.then(() => assert.fail('the call was answered'), (e: unknown) => e), 'the call failing', 10_000);
  flood.stop = true;
  const sent = flood.sent;
  assert.equal(codeOf(err), 'UPSTREAM_PROTOCOL', describe(err));
  await within(srv.closed[0]!, 'the client cutting the flooding connection', 10_000);
  t.diagnostic(`the call failed after ${sent} PINGs written (the server wrote for ${flood.ms} ms)`);
  assert.equal(await fetchText(up), 'ok', 'the next call works on a new connection');
  assert.equal(srv.sockets.length, 2);
});

test('a unix socket endpoint ({ path })', OPTS, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-h2-upstream-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'relay.sock');
  const srv = await h2server(t, (stream, headers, seen) => {
    collect(stream, seen, (body) => {
      stream.respond({ ':status': 200 });
      stream.end(`${String(headers[':path'])}:${body}`);
    });
  }, {}, path);
  const up = upstream(t, { path });
  const src = new PassThrough();
  const pending = up.request(req({ method: 'POST', path: '/over/unix', body: new RequestBody(src) }));
  src.end('hi');
  assert.equal(await readAll((await within(pending)).body), '/over/unix:hi');
  assert.equal(await fetchText(up, { path: '/again' }), '/again:');
  assert.equal(srv.sessions.length, 1);
});

test('close(): waiting, queued and open calls fail; later calls are refused (ECONNREFUSED)', OPTS, async (t) => {
  const srv = await h2server(t, (stream, headers) => {
    const path = headers[':path'];
    if (path === '/warm') { stream.respond({ ':status': 200 }); stream.end('warm'); return; }
    if (path === '/open') { stream.respond({ ':status': 200 }); stream.write('partial'); } // then holds
    // '/held' and '/queued': never answered
  }, { settings: { maxConcurrentStreams: 2 } });
  const up = new H2Upstream({ host: HOST, port: srv.port });
  t.after(() => up.close());
  assert.equal(await fetchText(up, { path: '/warm' }), 'warm');

  const open = await within(up.request(req({ path: '/open' })));
  const first = new Promise<Buffer>((r) => open.body.on('data', r));
  const openOutcome = settled(open.body);
  await within(first, 'the open answer\'s first chunk');
  const held = up.request(req({ path: '/held' }));
  await waitFor(() => srv.streams.length === 3, 'the server seeing the held call');
  const queued = up.request(req({ path: '/queued' })); // beyond the server's 2 streams
  const heldOutcome = held.then(() => 'answered', (err: unknown) => err);
  const queuedOutcome = queued.then(() => 'answered', (err: unknown) => err);
  await sleep(50);

  up.close();
  assert.ok(await within(heldOutcome, 'the waiting call failing') instanceof Error, 'the waiting call rejects');
  assert.ok(await within(queuedOutcome, 'the queued call failing') instanceof Error, 'the queued call rejects');
  const o = await within(openOutcome, 'the open body failing');
  assert.ok(o instanceof Error, `the open answer's body errors (got ${String(o)})`);
  await within(Promise.all(srv.streams.map((s) => s.closed)), 'the server seeing every stream end');

  const err = await failureOf(up.request(req()));
  assert.equal(codeOf(err), 'ECONNREFUSED', describe(err));
  assert.ok(isRefused(err));
});
