// The gateway's HTTP/2 server side (gateway/h2/server.ts, H2Front) against real clients:
// node:http2's client for well-behaved callers, a raw socket writing hand-made frames (HPACK by
// hand: literals without indexing) for hostile ones. Covered: an exchange both ways (headers,
// a body, trailers sent late), bodies beyond the flow-control windows both ways byte-exact, a
// paused reader holding the caller back, a caller that does not read holding the answer back
// (write() false, then 'drain'), an answer before the request's end (RST_STREAM NO_ERROR), a
// trailers-only answer; malformed requests (RST_STREAM PROTOCOL_ERROR, the connection serves
// on), a header list over the limit (431), the stream limit (REFUSED_STREAM), rapid reset
// (GOAWAY ENHANCE_YOUR_CALM), a PING flood from a caller that does not read, not HTTP/2 at
// all; the idle session, stalled body and held-back answer timeouts; drain() (GOAWAY, the running stream
// finishes). Every wait is bounded.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { connect as h2Connect, type ClientHttp2Session, type IncomingHttpHeaders } from 'node:http2';
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { H2Front, type CallerStream } from '../../src/gateway/h2/server.js';
import { frame } from './h2-frames.js';

const OPTS = { timeout: 30_000 };
const WAIT_MS = 5000;
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

function within<T>(p: Promise<T>, what: string, ms = WAIT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms (a hang)`)), ms); });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

type Handler = (stream: CallerStream, headers: IncomingHttpHeaders) => void;

/** An H2Front on a loopback port, serving every stream with `handler`. */
async function front(t: TestContext, handler: Handler, timeouts = { headersTimeoutMs: 5000, idleTimeoutMs: 5000 }): Promise<{ port: number; h2: H2Front; requests: number }> {
  const state = { port: 0, h2: null as unknown as H2Front, requests: 0 };
  state.h2 = new H2Front({ ...timeouts, onRequest: () => { state.requests++; }, onStream: handler });
  const server = createNetServer((socket) => state.h2.accept(socket));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  state.port = (server.address() as AddressInfo).port;
  t.after(() => { state.h2.closeAll(); server.close(); });
  return state;
}

function client(t: TestContext, port: number): ClientHttp2Session {
  const c = h2Connect(`http://127.0.0.1:${port}`);
  c.on('error', () => undefined);
  t.after(() => c.destroy());
  return c;
}

/** One request with node:http2's client: status, headers, body, trailers. */
async function call(c: ClientHttp2Session, headers: Record<string, string>, body?: Buffer): Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer; trailers: IncomingHttpHeaders }> {
  const req = c.request({ ':method': body ? 'POST' : 'GET', ':path': '/', ...headers }, { endStream: !body });
  if (body) req.end(body);
  const chunks: Buffer[] = [];
  let trailers: IncomingHttpHeaders = {};
  req.on('trailers', (tr) => { trailers = tr; });
  req.on('data', (d: Buffer) => chunks.push(d));
  const ended = once(req, 'end'); // before the headers: an answer may end in them
  const [h] = await within(once(req, 'response') as Promise<[IncomingHttpHeaders]>, 'the answer\'s headers');
  await within(ended, 'the answer\'s end');
  return { status: Number(h[':status']), headers: h, body: Buffer.concat(chunks), trailers };
}

/** Echoes the request body back, with its length in a trailer sent a turn later (as the proxy does). */
const echo: Handler = (stream, headers) => {
  const chunks: Buffer[] = [];
  stream.on('data', (d) => chunks.push(d));
  stream.once('end', () => {
    const body = Buffer.concat(chunks);
    stream.respond({ ':status': 200, 'x-path': String(headers[':path']), 'content-type': 'application/octet-stream' }, { waitForTrailers: true });
    stream.once('wantTrailers', () => setImmediate(() => stream.sendTrailers({ 'x-bytes': String(body.length) })));
    stream.end(body);
  });
};

// ---- a raw caller

/** Literal header fields without indexing, new names (RFC 7541 §6.2.2), lengths under 127. */
function hpack(fields: Array<[string, string]>): Buffer {
  return Buffer.concat(fields.map(([k, v]) => {
    assert.ok(k.length < 127 && v.length < 127);
    return Buffer.concat([Buffer.from([0x00, k.length]), Buffer.from(k, 'latin1'), Buffer.from([v.length]), Buffer.from(v, 'latin1')]);
  }));
}
const GET: Array<[string, string]> = [[':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'x']];

interface Frame { type: number; flags: number; id: number; payload: Buffer }

/** A raw connection: the preface and an empty SETTINGS sent, the frames that come back parsed. */
async function raw(t: TestContext, port: number): Promise<{ socket: Socket; frames: Frame[]; closed: Promise<void>; next(pred: (f: Frame) => boolean, what: string): Promise<Frame> }> {
  const socket = netConnect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  t.after(() => socket.destroy());
  await once(socket, 'connect');
  socket.write(Buffer.concat([PREFACE, frame(0x4, 0, 0)]));
  const frames: Frame[] = [];
  let buf = Buffer.alloc(0);
  const waiters: Array<() => void> = [];
  socket.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      frames.push({ type: buf[3]!, flags: buf[4]!, id: buf.readUInt32BE(5) & 0x7fffffff, payload: buf.subarray(9, 9 + len) });
      buf = buf.subarray(9 + len);
    }
    for (const w of waiters.splice(0)) w();
  });
  const closed = new Promise<void>((r) => socket.once('close', () => { for (const w of waiters.splice(0)) w(); r(); }));
  const next = async (pred: (f: Frame) => boolean, what: string): Promise<Frame> => {
    const end = Date.now() + WAIT_MS;
    for (;;) {
      const f = frames.find(pred);
      if (f) return f;
      if (socket.destroyed || Date.now() > end) assert.fail(`no ${what} (frames: ${frames.map((x) => `${x.type}/${x.id}`).join(' ')})`);
      await new Promise<void>((r) => { waiters.push(r); setTimeout(r, 50); });
    }
  };
  return { socket, frames, closed, next };
}

const isReset = (id: number, code: number) => (f: Frame): boolean => f.type === 0x3 && f.id === id && f.payload.readUInt32BE(0) === code;
const isGoaway = (code: number) => (f: Frame): boolean => f.type === 0x7 && f.payload.readUInt32BE(4) === code;

// ---- well-behaved callers

test('an exchange both ways: headers, a body, trailers sent a turn late; many streams on one connection', OPTS, async (t) => {
  const f = await front(t, echo);
  const { port } = f;
  const c = client(t, port);
  const r = await call(c, { 'x-a': 'b' }, Buffer.from('hello'));
  assert.equal(r.status, 200);
  assert.equal(r.headers['x-path'], '/');
  assert.equal(r.body.toString(), 'hello');
  assert.equal(r.trailers['x-bytes'], '5');
  const many = await Promise.all(Array.from({ length: 50 }, (_, i) => call(c, {}, Buffer.from(`call ${i}`))));
  many.forEach((m, i) => assert.equal(m.body.toString(), `call ${i}`));
  assert.equal(f.requests, 1, 'onRequest once per connection, at its first stream');
});

test('a trailers-only answer (respond with endStream), and a GET whose request ends in its headers', OPTS, async (t) => {
  const { port } = await front(t, (stream) => { stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '5' }, { endStream: true }); });
  const r = await call(client(t, port), {});
  assert.equal(r.status, 200);
  assert.equal(r.headers['grpc-status'], '5');
  assert.equal(r.body.length, 0);
});

test('5 MiB each way, beyond both flow-control windows: byte-exact', OPTS, async (t) => {
  const { port } = await front(t, echo);
  const body = randomBytes(5 * 1024 * 1024);
  const r = await call(client(t, port), {}, body);
  assert.ok(r.body.equals(body));
  assert.equal(r.trailers['x-bytes'], String(body.length));
});

test('a paused reader holds the caller back at the stream window; what it then reads is whole and in order', OPTS, async (t) => {
  let seen = 0;
  let atPause = 0;
  const { port } = await front(t, (stream) => {
    stream.on('data', (d) => { seen += d.length; });
    stream.pause();
    setTimeout(() => { atPause = seen; stream.resume(); }, 500);
    const chunks: Buffer[] = [];
    stream.on('data', (d) => chunks.push(d));
    stream.once('end', () => { stream.respond({ ':status': 200 }); stream.end(Buffer.concat(chunks)); });
  });
  const body = randomBytes(2 * 1024 * 1024);
  const r = await call(client(t, port), {}, body);
  assert.equal(atPause, 0, 'nothing is delivered while paused');
  assert.ok(r.body.equals(body));
});

test('a caller that does not read: write() says wait, then drain once it reads; the answer arrives whole', OPTS, async (t) => {
  const answer = randomBytes(3 * 1024 * 1024);
  let refused = 0;
  let drains = 0;
  const { port } = await front(t, (stream) => {
    stream.respond({ ':status': 200 });
    let at = 0;
    const pump = (): void => {
      while (at < answer.length) {
        const ok = stream.write(answer.subarray(at, at + 64 * 1024));
        at += 64 * 1024;
        if (!ok) { refused++; stream.once('drain', () => { drains++; pump(); }); return; }
      }
      stream.end();
    };
    pump();
  });
  const c = client(t, port);
  const req = c.request({ ':path': '/' });
  req.pause();
  await sleep(300);
  const chunks: Buffer[] = [];
  req.on('data', (d: Buffer) => chunks.push(d));
  req.resume();
  await within(once(req, 'end'), 'the answer');
  assert.ok(Buffer.concat(chunks).equals(answer));
  assert.ok(refused > 0 && drains === refused, `write() refused ${refused}, drains ${drains}`);
});

test('an answer before the request\'s end: the rest of the upload is not wanted (RST_STREAM NO_ERROR)', OPTS, async (t) => {
  const { port } = await front(t, (stream) => { stream.respond({ ':status': 413 }, { endStream: true }); });
  const r = await raw(t, port);
  r.socket.write(frame(0x1, 0x4, 1, hpack([[':method', 'POST'], [':scheme', 'http'], [':path', '/']])));
  const headers = await r.next((f) => f.type === 0x1 && f.id === 1, 'the answer');
  assert.ok(headers.flags & 0x1, 'the answer ends in its headers');
  await r.next(isReset(1, 0x0), 'RST_STREAM NO_ERROR');
});

// ---- hostile callers

test('malformed requests are reset (PROTOCOL_ERROR) and the connection serves on', OPTS, async (t) => {
  const { port } = await front(t, echo);
  const r = await raw(t, port);
  const bad: Array<Array<[string, string]>> = [
    [[':method', 'GET'], [':scheme', 'http']], // no :path
    [...GET, ['X-Upper', 'a']], // a name that is not lower-case
    [...GET, ['connection', 'keep-alive']], // a connection header
    [...GET, ['te', 'gzip']], // te other than trailers
    [...GET, [':path', '/again']], // a repeated pseudo-header
    [['x-first', 'a'], ...GET], // a pseudo-header after a regular one
    [...GET, ['x-v', ' padded']], // whitespace at a value's edge
    [...GET, ['content-length', '1x']],
  ];
  bad.forEach((fields, i) => r.socket.write(frame(0x1, 0x5, 1 + 2 * i, hpack(fields))));
  for (let i = 0; i < bad.length; i++) await r.next(isReset(1 + 2 * i, 0x1), `RST_STREAM PROTOCOL_ERROR on stream ${1 + 2 * i}`);
  const good = 1 + 2 * bad.length;
  r.socket.write(frame(0x1, 0x5, good, hpack(GET)));
  await r.next((f) => f.type === 0x1 && f.id === good, 'the answer to a good request after them');
});

test('a header list over 64 KiB gets 431; the connection serves on', OPTS, async (t) => {
  const { port } = await front(t, echo);
  const r = await raw(t, port);
  const many: Array<[string, string]> = Array.from({ length: 700 }, (_, i) => [`x-h${i}`, 'v'.repeat(100)]);
  const block = hpack([...GET, ...many]);
  r.socket.write(frame(0x1, 0x1, 1, block.subarray(0, 16384)));
  for (let at = 16384; at < block.length; at += 16384) r.socket.write(frame(0x9, at + 16384 >= block.length ? 0x4 : 0, 1, block.subarray(at, at + 16384)));
  await r.next((f) => f.type === 0x1 && f.id === 1, 'the 431');
  r.socket.write(frame(0x1, 0x5, 3, hpack(GET)));
  await r.next((f) => f.type === 0x1 && f.id === 3, 'the next answer');
});

test('streams over the limit of 100 are refused (REFUSED_STREAM); those open still complete', OPTS, async (t) => {
  const held: CallerStream[] = [];
  const { port } = await front(t, (stream) => { held.push(stream); });
  const r = await raw(t, port);
  for (let i = 0; i < 101; i++) r.socket.write(frame(0x1, 0x5, 1 + 2 * i, hpack(GET)));
  await r.next(isReset(201, 0x7), 'REFUSED_STREAM for the 101st');
  await within((async () => { while (held.length < 100) await sleep(5); })(), '100 streams served');
  for (const s of held) s.respond({ ':status': 204 }, { endStream: true });
  await r.next((f) => f.type === 0x1 && f.id === 199, 'the 100th answer');
});

test('rapid reset: streams opened and reset at once start no work, and end the connection (GOAWAY ENHANCE_YOUR_CALM) well before 20,000', OPTS, async (t) => {
  let served = 0;
  const { port } = await front(t, () => { served++; });
  const r = await raw(t, port);
  const batch: Buffer[] = [];
  for (let i = 0; i < 20_000; i++) {
    const id = 1 + 2 * i;
    batch.push(frame(0x1, 0x4, id, hpack(GET)), frame(0x3, 0, id, Buffer.from([0, 0, 0, 0x8])));
  }
  r.socket.write(Buffer.concat(batch));
  await r.next(isGoaway(0xb), 'GOAWAY ENHANCE_YOUR_CALM');
  // a stream reset in the read that opened it is never handed to the handler (only pairs a read cuts are)
  assert.ok(served < 100, `${served} streams served before the connection ended`);
  await within(r.closed, 'the connection closing');
});

test('a PING flood from a caller that never reads: the connection is cut, not grown without bound', OPTS, async (t) => {
  const { port } = await front(t, echo);
  const r = await raw(t, port);
  r.socket.pause(); // never read the acks
  const ping = frame(0x6, 0, 0, Buffer.alloc(8));
  const burst = Buffer.concat(Array.from({ length: 10_000 }, () => ping));
  // the acks first fill the kernel's buffers (several MB on loopback); then they wait in the
  // server's socket, where more than 1000 owed ones end the connection
  let sent = 0;
  const end = Date.now() + 15_000;
  while (!r.socket.destroyed && sent < 3_000_000 && Date.now() < end) {
    if (!r.socket.write(burst)) await Promise.race([once(r.socket, 'drain'), r.closed, sleep(100)]);
    sent += 10_000;
  }
  r.socket.resume();
  await r.next(isGoaway(0xb), 'GOAWAY ENHANCE_YOUR_CALM');
  await within(r.closed, 'the connection closing', 10_000);
});

test('not HTTP/2: a bad preface, or a first frame other than SETTINGS, ends the connection with GOAWAY PROTOCOL_ERROR', OPTS, async (t) => {
  const { port } = await front(t, echo);
  const s = netConnect(port, '127.0.0.1');
  s.on('error', () => undefined);
  t.after(() => s.destroy());
  s.resume();
  s.write('PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n');
  await within(once(s, 'close'), 'the connection closing');
  const r = await raw(t, port);
  r.socket.write(frame(0x6, 0, 0, Buffer.alloc(8))); // fine: the preface sent SETTINGS first
  await r.next((f) => f.type === 0x6 && (f.flags & 0x1) === 1, 'the PING ack');
  const s2 = netConnect(port, '127.0.0.1');
  s2.on('error', () => undefined);
  t.after(() => s2.destroy());
  const got: Buffer[] = [];
  s2.on('data', (d: Buffer) => got.push(d));
  s2.write(Buffer.concat([PREFACE, frame(0x6, 0, 0, Buffer.alloc(8))]));
  await within(once(s2, 'close'), 'the connection closing');
  const all = Buffer.concat(got);
  assert.ok(all.includes(Buffer.from([0, 0, 8, 0x7])), 'a GOAWAY was sent');
});

test('streams reset here for what the caller sent spend the reset budget too ("made you reset": WINDOW_UPDATE 0 on each): the connection ends', OPTS, async (t) => {
  let served = 0;
  const { port } = await front(t, () => { served++; });
  const r = await raw(t, port);
  const batch: Buffer[] = [];
  for (let i = 0; i < 5000; i++) {
    const id = 1 + 2 * i;
    batch.push(frame(0x1, 0x4, id, hpack([[':method', 'POST'], [':scheme', 'http'], [':path', '/']])), frame(0x8, 0, id, Buffer.alloc(4)));
  }
  r.socket.write(Buffer.concat(batch));
  await r.next(isGoaway(0xb), 'GOAWAY ENHANCE_YOUR_CALM');
  assert.ok(served < 2000, `${served} streams served before the connection ended`);
});

test('trailers the caller had on their way when its stream was answered and reset are dropped; the connection serves on', OPTS, async (t) => {
  const { port } = await front(t, (stream) => { stream.respond({ ':status': 413 }, { endStream: true }); });
  const r = await raw(t, port);
  r.socket.write(frame(0x1, 0x4, 1, hpack([[':method', 'POST'], [':scheme', 'http'], [':path', '/']])));
  await r.next(isReset(1, 0x0), 'RST_STREAM NO_ERROR after the early answer');
  r.socket.write(Buffer.concat([frame(0x0, 0, 1, Buffer.from('late')), frame(0x1, 0x5, 1, hpack([['x-trailer', 'late']]))]));
  r.socket.write(frame(0x1, 0x5, 3, hpack(GET)));
  await r.next((f) => f.type === 0x1 && f.id === 3, 'the answer on the next stream');
  assert.ok(!r.frames.some((f) => f.type === 0x7), 'no GOAWAY');
});

test('no trailers end the answer with an empty DATA frame, not an empty HEADERS; sendTrailers before wantTrailers throws', OPTS, async (t) => {
  let early: unknown = null;
  const { port } = await front(t, (stream) => {
    stream.respond({ ':status': 200 }, { waitForTrailers: true });
    try { stream.sendTrailers({ 'x-t': '1' }); } catch (err) { early = err; }
    stream.once('wantTrailers', () => stream.sendTrailers({}));
    stream.end('body');
  });
  const r = await raw(t, port);
  r.socket.write(frame(0x1, 0x5, 1, hpack(GET)));
  const last = await r.next((f) => f.id === 1 && (f.flags & 0x1) === 1, 'END_STREAM');
  assert.equal(last.type, 0x0, 'END_STREAM on DATA');
  assert.equal(r.frames.filter((f) => f.id === 1 && f.type === 0x1).length, 1, 'one HEADERS frame: the answer\'s');
  assert.equal((early as { code?: string } | null)?.code, 'ERR_HTTP2_TRAILERS_NOT_READY');
});

// ---- timeouts and draining

test('a session without streams is closed after the idle timeout; a request body that stops is cut (CANCEL)', OPTS, async (t) => {
  const { port } = await front(t, (stream) => { stream.on('data', () => undefined); }, { headersTimeoutMs: 5000, idleTimeoutMs: 300 });
  const r = await raw(t, port);
  r.socket.write(frame(0x1, 0x4, 1, hpack([[':method', 'POST'], [':scheme', 'http'], [':path', '/']])));
  r.socket.write(frame(0x0, 0, 1, Buffer.from('part')));
  await r.next(isReset(1, 0x8), 'RST_STREAM CANCEL for the stalled body');
  await r.next(isGoaway(0x0), 'GOAWAY once idle');
  await within(r.closed, 'the connection closing');
});

test('the idle cut: a call whose body has all come is never cut however long its answer takes; one answering as it reads is not cut while the answer moves', OPTS, async (t) => {
  const { port } = await front(t, (stream, headers) => {
    if (headers[':path'] === '/slow') {
      stream.on('data', () => undefined);
      stream.once('end', () => setTimeout(() => stream.respond({ ':status': 200 }, { endStream: true }), 900));
      return;
    }
    // answers every 100 ms while the caller sends nothing more
    stream.on('data', () => undefined);
    stream.respond({ ':status': 200 });
    let n = 0;
    const tick = setInterval(() => { if (stream.destroyed || ++n > 9) { clearInterval(tick); if (!stream.destroyed) stream.end('done'); return; } stream.write('tick'); }, 100);
  }, { headersTimeoutMs: 5000, idleTimeoutMs: 300 });
  const c = client(t, port);
  const slow = await call(c, { ':path': '/slow' }, Buffer.from('x'));
  assert.equal(slow.status, 200);
  const req = c.request({ ':method': 'POST', ':path': '/ticks' });
  req.write('start'); // the body stays open
  const chunks: Buffer[] = [];
  req.on('data', (d: Buffer) => chunks.push(d));
  await within(once(req, 'end'), 'the ticking answer');
  assert.ok(Buffer.concat(chunks).toString().endsWith('done'));
});

test('an answer the caller holds back (no credit, or its connection unread) is cut (CANCEL) after the idle timeout; a slow reader is not', OPTS, async (t) => {
  const closedEarly: boolean[] = [];
  const { port } = await front(t, (stream) => {
    stream.once('close', () => closedEarly.push(!stream.writableFinished));
    stream.respond({ ':status': 200 });
    // an endless answer, written as fast as the caller takes it
    const chunk = Buffer.alloc(16 * 1024, 120);
    const pump = (): void => { while (!stream.destroyed && stream.write(chunk)); if (!stream.destroyed) stream.once('drain', pump); };
    pump();
  }, { headersTimeoutMs: 5000, idleTimeoutMs: 300 });
  // a caller that gives no credit at all (SETTINGS_INITIAL_WINDOW_SIZE 0): no byte of the answer can go
  const r = await raw(t, port);
  r.socket.write(frame(0x4, 0, 0, Buffer.from([0x00, 0x04, 0, 0, 0, 0])));
  r.socket.write(frame(0x1, 0x5, 1, hpack(GET)));
  await r.next(isReset(1, 0x8), 'RST_STREAM CANCEL for the answer held back by credit');
  // node:http2's client on a paused stream (its window fills), and on a connection it stops reading
  const c = client(t, port);
  const held = c.request({ ':path': '/' });
  held.pause();
  held.on('error', () => undefined);
  await within(once(held, 'close'), 'the held answer being cut', 3000);
  assert.equal(held.rstCode, 0x8);
  // a slow reader that keeps giving some credit (16 KiB every 100 ms) is not cut: 1.5 s, five idle timeouts
  const slow = await raw(t, port);
  slow.socket.write(frame(0x1, 0x5, 1, hpack(GET)));
  const credit = Buffer.alloc(4);
  credit.writeUInt32BE(16 * 1024);
  for (let i = 0; i < 15; i++) {
    await sleep(100);
    slow.socket.write(Buffer.concat([frame(0x8, 0, 1, credit), frame(0x8, 0, 0, credit)]));
  }
  assert.equal(slow.frames.find((f) => f.type === 0x3), undefined, 'the slow reader\'s stream was not reset');
  const data = slow.frames.filter((f) => f.type === 0x0 && f.id === 1).reduce((n, f) => n + f.payload.length, 0);
  assert.ok(data > 65_535 + 10 * 16 * 1024, `the answer kept moving with the credit (${data} bytes)`);
  assert.deepEqual(closedEarly.slice(0, 2), [true, true]);
});

test('drain(): GOAWAY to every session; a running stream finishes, a new one is refused', OPTS, async (t) => {
  let running: CallerStream | null = null;
  const { port, h2 } = await front(t, (stream) => { running ??= stream; if (stream !== running) stream.respond({ ':status': 200 }, { endStream: true }); });
  const r = await raw(t, port);
  r.socket.write(frame(0x1, 0x5, 1, hpack(GET)));
  await within((async () => { while (!running) await sleep(5); })(), 'the stream');
  h2.drain();
  await r.next(isGoaway(0x0), 'GOAWAY');
  r.socket.write(frame(0x1, 0x5, 3, hpack(GET)));
  await r.next(isReset(3, 0x7), 'REFUSED_STREAM after the GOAWAY');
  running!.respond({ ':status': 200 }, { endStream: true });
  await r.next((f) => f.type === 0x1 && f.id === 1, 'the running stream\'s answer');
  await within(r.closed, 'the connection closing once it is done');
});
