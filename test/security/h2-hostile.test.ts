// A hostile HTTP/2 client (h2c, prior knowledge) against Berth's one port, playing raw frames
// over a net.Socket: floods (PING, SETTINGS, rapid reset, CONTINUATION), oversized headers,
// protocol violations, too many streams and a body beyond the flow-control window. Each case
// asserts what a robust server does (RFC 9113, and the lessons of CVE-2019-9512..9518,
// CVE-2023-44487 rapid reset and CVE-2024-27316 CONTINUATION flood) in its own subtest, then,
// in a subtest of its own, that Berth still serves: a new h2 connection (node:http2) and an
// HTTP/1.1 request both get GET /v1/health. (node:http2's server side, which Berth had in front
// before gateway/h2/server.ts, failed nine of these: it kept reading a rapid-reset flood after
// its GOAWAY, passed 100 KiB of header fields on, ignored stream ids going down, answered
// INTERNAL_ERROR for protocol errors and left connections open after an error GOAWAY.) One real
// `berth up` (default limits); 127.0.0.1 only; every loop bounded in count and time, every case
// within 15 s. Run: node --import tsx --test test/security/h2-hostile.test.ts
// Header blocks are HPACK by hand (literals without indexing, RFC 7541 6.2.2), independent of
// the gateway's own encoder; the reader decodes only what the assertions need.
import { test, describe, before, after, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { connect as netConnect, type Socket } from 'node:net';
import { readFileSync, readdirSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { removeHome } from '../helpers.js';
import { frame } from '../unit/h2-frames.js';
import { startServer, rawExchange, h2request, h2session, type Server } from './front-door-support.js';

// ---- HTTP/2 constants (RFC 9113 6, 7)

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
const DATA = 0x0, HEADERS = 0x1, RST_STREAM = 0x3, SETTINGS = 0x4, PING = 0x6, GOAWAY = 0x7, WINDOW_UPDATE = 0x8, CONTINUATION = 0x9;
const END_STREAM = 0x1, ACK = 0x1, END_HEADERS = 0x4, PADDED = 0x8, PRIORITY_FLAG = 0x20;
const SETTINGS_MAX_CONCURRENT_STREAMS = 0x3, SETTINGS_INITIAL_WINDOW_SIZE = 0x4, SETTINGS_MAX_FRAME_SIZE = 0x5;
const ERR: Record<number, string> = {
  0x0: 'NO_ERROR', 0x1: 'PROTOCOL_ERROR', 0x2: 'INTERNAL_ERROR', 0x3: 'FLOW_CONTROL_ERROR', 0x4: 'SETTINGS_TIMEOUT',
  0x5: 'STREAM_CLOSED', 0x6: 'FRAME_SIZE_ERROR', 0x7: 'REFUSED_STREAM', 0x8: 'CANCEL', 0x9: 'COMPRESSION_ERROR',
  0xa: 'CONNECT_ERROR', 0xb: 'ENHANCE_YOUR_CALM', 0xc: 'INADEQUATE_SECURITY', 0xd: 'HTTP_1_1_REQUIRED',
};
const PROTOCOL_ERROR = 0x1, FLOW_CONTROL_ERROR = 0x3, FRAME_SIZE_ERROR = 0x6, REFUSED_STREAM = 0x7, CANCEL = 0x8;
const errName = (code: number | undefined): string => (code === undefined ? 'none' : `${ERR[code] ?? 'unknown'} (0x${code.toString(16)})`);

/** Default initial window (stream and connection) and max frame size before SETTINGS say otherwise. */
const DEFAULT_WINDOW = 65_535;
const DEFAULT_MAX_FRAME = 16_384;

/** Per case: the whole case (attack + checks) stays within this. */
const CASE_MS = 15_000;
/** How long a robust server may take to answer an attack (GOAWAY, RST_STREAM, close). */
const REACT_MS = 5_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---- HPACK by hand

/** An HPACK integer with an N-bit prefix (RFC 7541 5.1); `first` holds the bits above the prefix. */
function hpackInt(value: number, prefixBits: number, first = 0): Buffer {
  const max = (1 << prefixBits) - 1;
  if (value < max) return Buffer.from([first | value]);
  const out = [first | max];
  let rest = value - max;
  while (rest >= 128) { out.push((rest % 128) | 0x80); rest = Math.floor(rest / 128); }
  out.push(rest);
  return Buffer.from(out);
}

/** A literal header field without indexing, new name, no Huffman: 0x00, len, name, len, value. */
function literal(name: string, value: string | Buffer): Buffer {
  const n = Buffer.from(name, 'latin1');
  const v = typeof value === 'string' ? Buffer.from(value, 'latin1') : value;
  return Buffer.concat([Buffer.from([0x00]), hpackInt(n.length, 7), n, hpackInt(v.length, 7), v]);
}

function headerBlock(fields: [string, string | Buffer][]): Buffer {
  return Buffer.concat(fields.map(([k, v]) => literal(k, v)));
}

const getHealth = (): Buffer => headerBlock([[':method', 'GET'], [':scheme', 'http'], [':authority', '127.0.0.1'], [':path', '/v1/health']]);

/**
 * A POST that waits for its body (never sent with END_STREAM here): the control API reads the
 * whole JSON body before its handler runs, so the stream stays open as long as we want.
 */
const postPending = (token: string): Buffer => headerBlock([
  [':method', 'POST'], [':scheme', 'http'], [':authority', '127.0.0.1'], [':path', '/v1/checkpoints'],
  ['authorization', `Bearer ${token}`], ['content-type', 'application/json'],
]);

/** A valid GET /v1/health field block of exactly `size` bytes: the pseudo-headers, then one padding field. */
function blockOfSize(size: number): Buffer {
  const head = getHealth();
  for (let n = size - head.length - 12; n <= size; n++) {
    const block = Buffer.concat([head, literal('x-pad', Buffer.alloc(n, 0x61))]);
    if (block.length === size) return block;
  }
  throw new Error(`no block of ${size} bytes`);
}

/** A header block cut into one HEADERS and as many CONTINUATION frames as it takes. */
function headerFrames(streamId: number, block: Buffer, endStream: boolean, maxFrame = DEFAULT_MAX_FRAME): Buffer {
  const out: Buffer[] = [];
  for (let off = 0; off === 0 || off < block.length; off += maxFrame) {
    const last = off + maxFrame >= block.length;
    const flags = (off === 0 && endStream ? END_STREAM : 0) | (last ? END_HEADERS : 0);
    out.push(frame(off === 0 ? HEADERS : CONTINUATION, flags, streamId, block.subarray(off, off + maxFrame)));
  }
  return Buffer.concat(out);
}

function dataFrames(streamId: number, bytes: number, endStream = false): Buffer {
  const out: Buffer[] = [];
  for (let left = bytes; left > 0 || out.length === 0; left -= DEFAULT_MAX_FRAME) {
    const n = Math.max(0, Math.min(DEFAULT_MAX_FRAME, left));
    out.push(frame(DATA, endStream && left <= DEFAULT_MAX_FRAME ? END_STREAM : 0, streamId, Buffer.alloc(n, 0x20)));
  }
  return Buffer.concat(out);
}

/** Reads an HPACK integer with an N-bit prefix at `at`: [value, where the next byte is]. */
function readHpackInt(block: Buffer, at: number, prefixBits: number): [number, number] {
  const max = (1 << prefixBits) - 1;
  let value = block[at]! & max;
  let i = at + 1;
  if (value < max) return [value, i];
  for (let shift = 0; i < block.length && shift < 28; shift += 7) {
    const b = block[i++]!;
    value += (b & 0x7f) * 2 ** shift;
    if (!(b & 0x80)) break;
  }
  return [value, i];
}

/**
 * The :status of a response header block, when it is the first field and spelled the usual ways:
 * a static-table index (8..14), or a literal whose name is static index 8 and whose value is
 * raw or Huffman-coded digits; null otherwise (nothing else is decoded here).
 */
function decodeStatus(block: Buffer): number | null {
  let i = 0;
  while (i < block.length && (block[i]! & 0xe0) === 0x20) i = readHpackInt(block, i, 5)[1]; // table size updates
  const b = block[i];
  if (b === undefined) return null;
  const STATIC: Record<number, number> = { 8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500 };
  if (b & 0x80) return STATIC[readHpackInt(block, i, 7)[0]] ?? null;
  const [nameIndex, at] = readHpackInt(block, i, b & 0x40 ? 6 : 4); // with incremental indexing: 6-bit index, else 4-bit
  if (nameIndex !== 8 || at >= block.length) return null;
  const huffman = (block[at]! & 0x80) !== 0;
  const [len, from] = readHpackInt(block, at, 7);
  const raw = block.subarray(from, from + len);
  if (!huffman) return /^\d{3}$/.test(raw.toString('latin1')) ? Number(raw.toString('latin1')) : null;
  // Huffman (RFC 7541 Appendix B): '0'..'2' are 5 bits 00000..00010, '3'..'9' 6 bits 011001..011111
  let bits = [...raw].map((x) => x.toString(2).padStart(8, '0')).join('');
  let digits = '';
  while (digits.length < 3) {
    const five = parseInt(bits.slice(0, 5), 2);
    const six = parseInt(bits.slice(0, 6), 2);
    if (bits.length >= 5 && five <= 2) { digits += String(five); bits = bits.slice(5); } else if (bits.length >= 6 && six >= 25 && six <= 31) { digits += String(six - 22); bits = bits.slice(6); } else return null;
  }
  return Number(digits);
}

// ---- the raw client

type WriteResult = 'ok' | 'gone' | 'stalled';

/**
 * One raw h2c connection: writes the preface and an empty SETTINGS, then (unless told not to
 * read) parses everything the server sends, acknowledging its SETTINGS like any client.
 */
class RawH2 {
  readonly socket: Socket;
  /** The server's SETTINGS (merged), null until its first SETTINGS frame arrives. */
  settings: Map<number, number> | null = null;
  readonly goaways: { lastStreamId: number; code: number; debug: string; at: number }[] = [];
  /** RST_STREAM codes by stream. */
  readonly resets = new Map<number, number>();
  /** Streams the server answered (response HEADERS), with the :status when decodable. */
  readonly answers = new Map<number, number | null>();
  /** Streams the server ended (END_STREAM). */
  readonly ended = new Set<number>();
  /** WINDOW_UPDATE increments summed by stream (0: the connection). */
  readonly windowUpdates = new Map<number, number>();
  framesIn = 0;
  bytesOut = 0;
  /** When the connection closed without our doing (the server closed or reset it). */
  closedAt: number | null = null;
  error: string | null = null;
  private hungUp = false;
  private buf: Buffer = Buffer.alloc(0);

  private constructor(socket: Socket) { this.socket = socket; }

  /** `first`: bytes sent in the same write as the preface, before anything from the server is read. */
  static open(port: number, opts: { read?: boolean; first?: Buffer } = {}): Promise<RawH2> {
    return new Promise((resolve, reject) => {
      const socket = netConnect(port, '127.0.0.1');
      const c = new RawH2(socket);
      socket.setNoDelay(true);
      const timer = setTimeout(() => { socket.destroy(); reject(new Error('connect: no answer in 5 s')); }, 5000);
      socket.on('error', (e) => { c.error ??= (e as NodeJS.ErrnoException).code ?? e.message; });
      socket.on('close', () => { if (!c.hungUp) c.closedAt ??= Date.now(); clearTimeout(timer); reject(new Error(`connect failed: ${c.error}`)); });
      socket.on('data', (d: Buffer) => c.onData(d));
      socket.once('connect', () => {
        clearTimeout(timer);
        if (opts.read === false) socket.pause(); // a client that never reads what the server sends
        c.send(Buffer.concat([PREFACE, frame(SETTINGS, 0, 0), opts.first ?? Buffer.alloc(0)]));
        resolve(c);
      });
    });
  }

  /** The connection is over: closed, or a write/read failed (a paused socket sees a reset only when it writes). */
  get gone(): boolean { return this.closedAt !== null || this.error !== null; }
  get goaway(): RawH2['goaways'][number] | undefined { return this.goaways.at(-1); }

  send(bytes: Buffer): boolean {
    if (this.gone || this.hungUp) return false;
    this.bytesOut += bytes.length;
    return this.socket.write(bytes);
  }

  /**
   * Writes and waits for the kernel to take it: 'stalled' when it has not within `stallMs` (the
   * server stopped reading). Always lets I/O run before it returns, so a loop of writes sees the
   * server's GOAWAY or reset as they come (and the other connections of the case are served).
   */
  async write(bytes: Buffer, stallMs = 2000): Promise<WriteResult> {
    if (this.gone || this.hungUp) return 'gone';
    if (this.send(bytes)) {
      await new Promise((r) => setImmediate(r));
      return this.gone ? 'gone' : 'ok';
    }
    return new Promise((resolve) => {
      const done = (r: WriteResult): void => {
        clearTimeout(timer);
        this.socket.off('drain', onDrain);
        this.socket.off('close', onClose);
        resolve(r);
      };
      const onDrain = (): void => done('ok');
      const onClose = (): void => done('gone');
      const timer = setTimeout(() => done('stalled'), stallMs);
      this.socket.once('drain', onDrain);
      this.socket.once('close', onClose);
    });
  }

  /** Polls `ok` until true or `ms` pass; true when it became true. */
  async until(ok: () => boolean, ms: number): Promise<boolean> {
    const end = Date.now() + ms;
    while (!ok()) {
      if (Date.now() >= end) return false;
      await sleep(10);
    }
    return true;
  }

  /** The server's SETTINGS, within 5 s. */
  async serverSettings(): Promise<Map<number, number>> {
    assert.ok(await this.until(() => this.settings !== null || this.gone, 5000), 'the server sent no SETTINGS within 5 s');
    assert.ok(this.settings, `the connection ended before the server's SETTINGS (${this.error ?? 'closed'})`);
    return this.settings;
  }

  /** Our end of it, after the case: not counted as the server closing. */
  destroy(): void { this.hungUp = true; this.socket.destroy(); }

  /** What happened, for assertion messages. */
  describe(): string {
    const g = this.goaway;
    return `frames in ${this.framesIn}, bytes out ${this.bytesOut}, GOAWAY ${g ? `${errName(g.code)} last-stream ${g.lastStreamId}${g.debug ? ` "${g.debug}"` : ''}` : 'none'}, ` +
      `RST_STREAM ${[...this.resets].slice(0, 5).map(([id, code]) => `${id}:${ERR[code] ?? code}`).join(' ') || 'none'}, ` +
      `${this.closedAt !== null ? 'closed' : this.error ? `error ${this.error}` : 'still open'}`;
  }

  private onData(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    while (this.buf.length >= 9) {
      const len = this.buf.readUIntBE(0, 3);
      if (this.buf.length < 9 + len) break;
      const type = this.buf[3]!;
      const flags = this.buf[4]!;
      const streamId = this.buf.readUInt32BE(5) & 0x7fffffff;
      const payload = this.buf.subarray(9, 9 + len);
      this.buf = this.buf.subarray(9 + len);
      this.framesIn++;
      this.onFrame(type, flags, streamId, payload);
    }
  }

  private onFrame(type: number, flags: number, streamId: number, p: Buffer): void {
    switch (type) {
      case SETTINGS:
        if (flags & ACK) return;
        this.settings ??= new Map();
        for (let i = 0; i + 6 <= p.length; i += 6) this.settings.set(p.readUInt16BE(i), p.readUInt32BE(i + 2));
        this.send(frame(SETTINGS, ACK, 0));
        return;
      case GOAWAY:
        this.goaways.push({ lastStreamId: p.readUInt32BE(0) & 0x7fffffff, code: p.readUInt32BE(4), debug: p.subarray(8, 200).toString('latin1'), at: Date.now() });
        return;
      case RST_STREAM:
        this.resets.set(streamId, p.readUInt32BE(0));
        return;
      case WINDOW_UPDATE:
        this.windowUpdates.set(streamId, (this.windowUpdates.get(streamId) ?? 0) + (p.readUInt32BE(0) & 0x7fffffff));
        return;
      case HEADERS: {
        let off = 0;
        let end = p.length;
        if (flags & PADDED) { end -= p[0]!; off = 1; }
        if (flags & PRIORITY_FLAG) off += 5;
        if (!this.answers.has(streamId)) this.answers.set(streamId, decodeStatus(p.subarray(off, end)));
        if (flags & END_STREAM) this.ended.add(streamId);
        return;
      }
      case DATA:
        if (flags & END_STREAM) this.ended.add(streamId);
        return;
      default:
        return; // PING acks, CONTINUATION of a response, PUSH_PROMISE (never asked for): not needed here
    }
  }
}

// ---- the server side of the checks

/** RSS of the `berth up` process and all its descendants (gateway workers), in KiB; null off Linux. */
function treeRssKb(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  let total = 0;
  const stack = [pid];
  let seen = 0;
  while (stack.length && seen++ < 1000) {
    const p = stack.pop()!;
    try {
      total += Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] ?? 0);
      for (const task of readdirSync(`/proc/${p}/task`)) {
        const children = readFileSync(`/proc/${p}/task/${task}/children`, 'utf8').trim();
        if (children) stack.push(...children.split(/\s+/).map(Number));
      }
    } catch {
      if (p === pid) return null; // no /proc: cannot tell
    }
  }
  return total;
}

/** Memory a flood may cost the server at most (the sessions' own cap is 64 MiB each). */
const RSS_GROWTH_LIMIT_KB = 256 * 1024;

/** Berth is alive and answers a new h2 connection (node:http2) and an HTTP/1.1 request. */
async function assertServes(s: Server): Promise<void> {
  assert.ok(s.alive(), `berth up exited (${s.exitCode()}):\n${s.output().slice(-3000)}`);
  const session = h2session(s.url);
  try {
    const r = await h2request(session, { ':method': 'GET', ':path': '/v1/health' }, undefined, 3000);
    assert.equal(r.status, 200, `h2 GET /v1/health: ${r.status} ${r.text}`);
  } finally { session.destroy(); }
  const h1 = await rawExchange(s.port, 'GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n', { boundMs: 3000, untilResponse: true });
  assert.equal(h1.status, 200, `HTTP/1.1 GET /v1/health: ${h1.data.slice(0, 300)}`);
}

interface Probe { kind: string; status: number | null; error?: string; ms: number }

/** GET /v1/health on a new h2 connection (node:http2), timed; waits up to 5 s. */
async function probeH2(s: Server): Promise<Probe> {
  const started = Date.now();
  const session = h2session(s.url);
  try {
    const r = await h2request(session, { ':method': 'GET', ':path': '/v1/health' }, undefined, 5000);
    return { kind: 'h2', status: r.status, ms: Date.now() - started };
  } catch (err) {
    return { kind: 'h2', status: null, error: (err as Error).message, ms: Date.now() - started };
  } finally { session.destroy(); }
}

/** GET /v1/health over HTTP/1.1 on a new connection, timed; waits up to 5 s. */
async function probeH1(s: Server): Promise<Probe> {
  const r = await rawExchange(s.port, 'GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n', { boundMs: 5000, untilResponse: true });
  return { kind: 'HTTP/1.1', status: r.status, error: r.status === null ? `no answer (${r.closed ? 'closed' : 'still open'})` : undefined, ms: r.ms };
}

/**
 * Floods `unit` (one frame) `count` times over a connection whose socket is never read, in
 * batches, until the server ends it, stops reading, or every frame is out; then keeps
 * trickling one frame every 50 ms for a while, since a reset on a socket we do not read shows
 * only when we write. Bounded by `count` and ~10 s.
 */
async function floodUnread(s: Server, unit: Buffer, count: number): Promise<{ c: RawH2; sent: number; outcome: 'ended' | 'stalled' | 'open'; rssGrowthKb: number | null; ms: number }> {
  const rssBefore = treeRssKb(s.proc.pid);
  const started = Date.now();
  const c = await RawH2.open(s.port, { read: false });
  const perBatch = 1000;
  const batch = Buffer.concat(Array.from({ length: perBatch }, () => unit));
  let sent = 0;
  let outcome: 'ended' | 'stalled' | 'open' = 'open';
  while (sent < count && Date.now() - started < 6000) {
    const r = await c.write(batch, 2000);
    if (r === 'gone') { outcome = 'ended'; break; }
    sent += perBatch;
    if (r === 'stalled') { outcome = 'stalled'; break; }
  }
  for (const end = Date.now() + 4000; outcome === 'open' && Date.now() < end;) {
    if (c.gone) { outcome = 'ended'; break; }
    c.send(unit);
    await sleep(50);
  }
  if (outcome === 'open' && c.gone) outcome = 'ended';
  const rssAfter = treeRssKb(s.proc.pid);
  // now read what the server said (its GOAWAY, if it got that far) for the report
  c.socket.resume();
  await c.until(() => c.gone, 500);
  return { c, sent, outcome, rssGrowthKb: rssBefore !== null && rssAfter !== null ? rssAfter - rssBefore : null, ms: Date.now() - started };
}

/** The subtest holding what a robust server does. */
function expectation(t: TestContext, name: string, fn: () => void | Promise<void>): Promise<void> {
  return t.test(name, fn);
}

/** The subtest every case ends with: a crash or a wedged server fails the case. */
function stillServes(t: TestContext, s: Server): Promise<void> {
  return t.test('Berth still serves: h2 and HTTP/1.1 GET /v1/health on new connections', () => assertServes(s));
}

describe('h2 hostile client (raw frames, h2c prior knowledge)', () => {
  let s: Server;

  before(async () => {
    s = await startServer();
    await assertServes(s);
  });
  after(async () => {
    if (!s) return;
    const code = await s.stop();
    assert.equal(code, 0, `berth up did not stop cleanly:\n${s.output().slice(-3000)}`);
    removeHome(s.home);
  });

  test('1. PING flood on a socket never read: the server ends the connection (or stops reading) with bounded memory', { timeout: CASE_MS }, async (t) => {
    // CVE-2019-9512: every PING asks for a PING ACK; a server that queues them for a client
    // that never reads grows without bound
    const r = await floodUnread(s, frame(PING, 0, 0, Buffer.alloc(8)), 200_000);
    t.diagnostic(`${r.outcome} after ${r.sent} PINGs in ${r.ms} ms; server RSS growth ${r.rssGrowthKb ?? '?'} KiB; ${r.c.describe()}`);
    r.c.destroy();
    await expectation(t, 'the connection ends (or the server stops reading) within 200,000 PINGs; RSS grows < 256 MiB', () => {
      assert.notEqual(r.outcome, 'open', `200,000 PINGs written and the connection still open: ${r.c.describe()}`);
      if (r.rssGrowthKb !== null) assert.ok(r.rssGrowthKb < RSS_GROWTH_LIMIT_KB, `server RSS grew ${r.rssGrowthKb} KiB`);
      if (r.c.goaway) assert.notEqual(r.c.goaway.code, 0, 'a flood is no graceful shutdown');
    });
    await stillServes(t, s);
  });

  test('2. rapid reset: 20,000 × (HEADERS + RST_STREAM CANCEL) on one connection; another connection stays served', { timeout: CASE_MS }, async (t) => {
    // CVE-2023-44487: a stream reset at once costs the client nothing and the server a request
    // each; a robust server bounds them (GOAWAY ENHANCE_YOUR_CALM, usually) and others are served
    const c = await RawH2.open(s.port);
    await c.serverSettings();
    const block = getHealth();
    const pairs = 20_000;
    const perBatch = 100;
    let sentPairs = 0;
    let nextId = 1;
    const started = Date.now();
    // this process's own event-loop delay, to tell a slow server from a busy test
    const lag = monitorEventLoopDelay({ resolution: 10 });
    lag.enable();
    const flood = (async () => {
      while (sentPairs < pairs && !c.gone && !c.goaway && Date.now() - started < 6000) {
        const parts: Buffer[] = [];
        for (let i = 0; i < perBatch; i++, nextId += 2) {
          parts.push(frame(HEADERS, END_STREAM | END_HEADERS, nextId, block), frame(RST_STREAM, 0, nextId, Buffer.from([0, 0, 0, CANCEL])));
        }
        if ((await c.write(Buffer.concat(parts), 2000)) !== 'ok') break;
        sentPairs += perBatch;
      }
    })();
    // normal calls on their own connections while the flood runs (after it has begun); two per
    // protocol, since connections are spread over the gateway workers and one must share the flood's
    await c.until(() => sentPairs >= 500 || c.gone || !!c.goaway, 2000);
    const probes = await Promise.all([probeH2(s), probeH2(s), probeH1(s), probeH1(s)]);
    await flood;
    lag.disable();
    if (c.goaways.some((g) => g.code !== 0)) await c.until(() => c.gone, REACT_MS);
    t.diagnostic(`${sentPairs} pairs sent in ${Date.now() - started} ms (last stream ${nextId - 2}); ` +
      `this process's event-loop delay max ${Math.round(lag.max / 1e6)} ms; ${c.describe()}`);
    t.diagnostic(`concurrent probes: ${probes.map((p) => `${p.kind} ${p.status ?? p.error} in ${p.ms} ms`).join(', ')}`);
    c.destroy();
    await expectation(t, 'concurrent h2 and HTTP/1.1 requests on other connections get 200 within 2 s during the flood', () => {
      for (const p of probes) {
        assert.equal(p.status, 200, `${p.kind} probe: ${p.status ?? p.error} after ${p.ms} ms`);
        assert.ok(p.ms <= 2000, `${p.kind} probe took ${p.ms} ms`);
      }
    });
    // the flood itself may be served to the end, or cut; cut with an error GOAWAY, the
    // connection must then close (RFC 9113 5.4.1), not go on feeding the server
    const errorGoaway = c.goaways.find((g) => g.code !== 0);
    await expectation(t, 'an error GOAWAY on the flooded connection is followed by its close', () => {
      if (errorGoaway) assert.ok(c.closedAt !== null, `GOAWAY ${errName(errorGoaway.code)}, not closed within ${REACT_MS} ms of the flood's end: ${c.describe()}`);
    });
    await stillServes(t, s);
  });

  test('3. CONTINUATION flood: HEADERS without END_HEADERS, then 1 KiB CONTINUATIONs: GOAWAY/close well before 10 MiB', { timeout: CASE_MS }, async (t) => {
    // CVE-2024-27316 and kin: a header block that never ends, each frame a valid field; a server
    // that buffers (or just keeps decoding) until END_HEADERS is exhausted
    const c = await RawH2.open(s.port);
    await c.serverSettings();
    c.send(frame(HEADERS, END_STREAM, 1, getHealth()));
    const limit = 10 * 1024 * 1024;
    const started = Date.now();
    let sent = 0;
    let i = 0;
    while (sent < limit && !c.gone && !c.goaway && Date.now() - started < 6000) {
      const parts: Buffer[] = [];
      for (let k = 0; k < 64; k++, i++) { // 64 frames of 1 KiB a write
        const name = `x-pad-${i}`;
        parts.push(frame(CONTINUATION, 0, 1, literal(name, Buffer.alloc(1024 - 9 - 4 - name.length, 0x61))));
      }
      const batch = Buffer.concat(parts);
      if ((await c.write(batch, 2000)) !== 'ok') break;
      sent += batch.length;
    }
    const endedAt = sent;
    await c.until(() => c.gone, REACT_MS);
    t.diagnostic(`stopped after ${endedAt} bytes of CONTINUATION in ${Date.now() - started} ms; ${c.describe()}`);
    c.destroy();
    await expectation(t, 'the connection gets a GOAWAY and/or is closed before 10 MiB, and is closed', () => {
      assert.ok(c.goaway || c.gone, `10 MiB of CONTINUATION accepted: ${c.describe()}`);
      assert.ok(endedAt < limit, `ended only after ${endedAt} bytes`);
      assert.ok(c.gone, `GOAWAY but the connection was not closed within ${REACT_MS} ms: ${c.describe()}`);
      if (c.goaway) assert.notEqual(c.goaway.code, 0, 'GOAWAY NO_ERROR for an attack');
    });
    await stillServes(t, s);
  });

  test('4. a header list over 64 KiB (one 100 KiB value; 100 fields of 1 KiB) is refused: RST_STREAM, 431 or GOAWAY; no crash', { timeout: CASE_MS }, async (t) => {
    // RFC 9113 10.5.1: a server may refuse a header list over its limit (431, or a stream or
    // connection error); it must not pass it on to fail somewhere behind, nor fall over
    const variants: { name: string; block: Buffer }[] = [
      { name: 'one 100 KiB value', block: Buffer.concat([getHealth(), literal('x-big', Buffer.alloc(100 * 1024, 0x62))]) },
      { name: '100 fields of 1 KiB', block: Buffer.concat([getHealth(), ...Array.from({ length: 100 }, (_, k) => literal(`x-f${k}`, Buffer.alloc(1000, 0x63)))]) },
    ];
    for (const v of variants) {
      const c = await RawH2.open(s.port);
      await c.serverSettings();
      c.send(headerFrames(1, v.block, true)); // HEADERS + CONTINUATION of 16 KiB
      await c.until(() => c.resets.has(1) || c.answers.has(1) || !!c.goaway || c.gone, REACT_MS);
      t.diagnostic(`${v.name}: status ${c.answers.get(1) ?? 'none'}; ${c.describe()}`);
      c.destroy();
      await expectation(t, `${v.name}: RST_STREAM on the stream, a 431, or GOAWAY`, () => {
        const refused = c.resets.has(1) || c.answers.get(1) === 431 || !!c.goaway;
        assert.ok(refused, `not refused (answer ${c.answers.has(1) ? c.answers.get(1) : 'none'}): ${c.describe()}`);
      });
    }
    await stillServes(t, s);
  });

  test('5. protocol violations: GOAWAY with the RFC 9113 code, then the connection closed', { timeout: CASE_MS }, async (t) => {
    // one connection per violation; each a connection error (RFC 9113 5.4.1): GOAWAY, then close
    const violations: { name: string; code: number; send: (c: RawH2, maxFrame: number) => void }[] = [
      {
        name: 'stream ids going down (stream 5 open, then HEADERS on 3): PROTOCOL_ERROR (5.1.1)',
        code: PROTOCOL_ERROR,
        send: (c) => {
          c.send(headerFrames(5, postPending(s.token), false));
          c.send(headerFrames(3, getHealth(), true));
        },
      },
      {
        name: 'an even (server-initiated) stream id from the client: PROTOCOL_ERROR (5.1.1)',
        code: PROTOCOL_ERROR,
        send: (c) => c.send(headerFrames(2, getHealth(), true)),
      },
      {
        name: 'DATA on stream 0: PROTOCOL_ERROR (6.1)',
        code: PROTOCOL_ERROR,
        send: (c) => c.send(frame(DATA, 0, 0, Buffer.alloc(16, 0x20))),
      },
      {
        name: 'a HEADERS frame one byte over SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR (4.2)',
        code: FRAME_SIZE_ERROR,
        send: (c, maxFrame) => c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, blockOfSize(Math.min(maxFrame + 1, 0xffffff)))),
      },
      {
        name: 'a WINDOW_UPDATE taking the connection window past 2^31-1: FLOW_CONTROL_ERROR (6.9.1)',
        code: FLOW_CONTROL_ERROR,
        send: (c) => c.send(frame(WINDOW_UPDATE, 0, 0, Buffer.from([0x7f, 0xff, 0xff, 0xff]))),
      },
    ];
    // all at once, each on its own connection (a server that never reacts costs REACT_MS once, not five times)
    const outcomes = await Promise.all(violations.map(async (v) => {
      const c = await RawH2.open(s.port);
      const settings = await c.serverSettings();
      const maxFrame = settings.get(SETTINGS_MAX_FRAME_SIZE) ?? DEFAULT_MAX_FRAME;
      await sleep(50); // our SETTINGS ACK goes first: the violation is the only thing wrong
      const sentAt = Date.now();
      v.send(c, maxFrame);
      await c.until(() => !!c.goaway || c.gone, REACT_MS);
      if (c.goaway) await c.until(() => c.gone, REACT_MS);
      c.destroy();
      return { v, c, sentAt };
    }));
    for (const { v, c, sentAt } of outcomes) {
      const closeMs = c.closedAt !== null ? c.closedAt - sentAt : null;
      t.diagnostic(`${v.name}: GOAWAY after ${c.goaway ? c.goaway.at - sentAt : '-'} ms, closed after ${closeMs ?? '-'} ms; ${c.describe()}`);
      await expectation(t, v.name, () => {
        assert.ok(c.goaway, `no GOAWAY within ${REACT_MS} ms: ${c.describe()}`);
        assert.equal(errName(c.goaway.code), errName(v.code), `GOAWAY code: ${c.describe()}`);
        assert.ok(closeMs !== null, `not closed within ${REACT_MS} ms of the GOAWAY: ${c.describe()}`);
      });
    }
    await stillServes(t, s);
  });

  test('6. more streams than SETTINGS_MAX_CONCURRENT_STREAMS: the extra one is refused, the open ones complete', { timeout: CASE_MS }, async (t) => {
    const c = await RawH2.open(s.port);
    try {
      const limit = (await c.serverSettings()).get(SETTINGS_MAX_CONCURRENT_STREAMS);
      // a limit bounds what one connection can make the gateway hold (RFC 9113 6.5.2 recommends at least 100)
      assert.ok(limit !== undefined && limit >= 100 && limit <= 1000, `SETTINGS_MAX_CONCURRENT_STREAMS ${limit ?? 'not advertised (unlimited)'}`);
      // `limit` streams held open (a POST whose body has not ended), then one more
      const open = Array.from({ length: limit }, (_, k) => 1 + 2 * k);
      const extra = 1 + 2 * limit;
      const block = postPending(s.token);
      c.send(Buffer.concat(open.map((id) => headerFrames(id, block, false))));
      c.send(headerFrames(extra, block, false));
      await c.until(() => c.resets.has(extra) || !!c.goaway || c.gone, REACT_MS);
      const extraCode = c.resets.get(extra);
      const earlyResets = open.filter((id) => c.resets.has(id));
      // the open ones finish their bodies and get their answers
      c.send(Buffer.concat(open.map((id) => frame(DATA, END_STREAM, id, Buffer.from('{}')))));
      await c.until(() => open.every((id) => c.ended.has(id) || c.resets.has(id)) || c.gone, REACT_MS);
      const unanswered = open.filter((id) => !c.answers.has(id));
      t.diagnostic(`limit ${limit}; extra stream ${extra}: RST_STREAM ${errName(extraCode)}; ${unanswered.length} open streams unanswered; ${c.describe()}`);
      await expectation(t, 'the extra stream gets RST_STREAM REFUSED_STREAM or PROTOCOL_ERROR (5.1.2); the open ones are answered', () => {
        assert.ok(extraCode === REFUSED_STREAM || extraCode === PROTOCOL_ERROR, `extra stream: RST_STREAM ${errName(extraCode)}: ${c.describe()}`);
        assert.deepEqual(earlyResets, [], 'streams within the limit were reset');
        assert.deepEqual(unanswered, [], 'streams within the limit got no answer');
        assert.ok(!c.answers.has(extra), 'the refused stream was answered');
      });
    } finally { c.destroy(); }
    await stillServes(t, s);
  });

  test('7. SETTINGS flood (100,000 frames, acks never read): the server ends the connection (or stops reading) with bounded memory', { timeout: CASE_MS }, async (t) => {
    // CVE-2019-9515: every SETTINGS must be acknowledged; a client that never reads the acks
    // makes a naive server queue them without bound. Each carries a setting (work to apply).
    const unit = frame(SETTINGS, 0, 0, Buffer.from([0x00, SETTINGS_INITIAL_WINDOW_SIZE, 0x00, 0x00, 0xff, 0xff]));
    const r = await floodUnread(s, unit, 100_000);
    t.diagnostic(`${r.outcome} after ${r.sent} SETTINGS in ${r.ms} ms; server RSS growth ${r.rssGrowthKb ?? '?'} KiB; ${r.c.describe()}`);
    r.c.destroy();
    await expectation(t, 'the connection ends (or the server stops reading) within 100,000 SETTINGS; RSS grows < 256 MiB', () => {
      assert.notEqual(r.outcome, 'open', `100,000 SETTINGS written and the connection still open: ${r.c.describe()}`);
      if (r.rssGrowthKb !== null) assert.ok(r.rssGrowthKb < RSS_GROWTH_LIMIT_KB, `server RSS grew ${r.rssGrowthKb} KiB`);
      if (r.c.goaway) assert.notEqual(r.c.goaway.code, 0, 'a flood is no graceful shutdown');
    });
    await stillServes(t, s);
  });

  test('8. a request body beyond the advertised flow-control window: RST_STREAM or GOAWAY FLOW_CONTROL_ERROR', { timeout: CASE_MS }, async (t) => {
    // The stream window the server advertised (SETTINGS_INITIAL_WINDOW_SIZE) and one full frame
    // more, sent at once with the HEADERS, so it is all there before a handler could read the
    // body and open the window again. Should the server's WINDOW_UPDATEs cover the burst anyway
    // (it read the body as fast as it came: no overrun from its side), that attempt proves
    // nothing, and the next one sends the burst in the very first write, with the preface.
    let advertised = DEFAULT_WINDOW;
    const attempts: { c: RawH2; how: string; sent: number; window: number; covered: boolean }[] = [];
    for (const how of ['after the SETTINGS', 'with the preface', 'with the preface']) {
      let c: RawH2;
      let window: number;
      let sent: number;
      if (how === 'after the SETTINGS') {
        c = await RawH2.open(s.port);
        window = advertised = (await c.serverSettings()).get(SETTINGS_INITIAL_WINDOW_SIZE) ?? DEFAULT_WINDOW;
        await sleep(100); // a connection WINDOW_UPDATE sent with the SETTINGS is in by now
        sent = Math.min(window, DEFAULT_WINDOW + (c.windowUpdates.get(0) ?? 0)) + DEFAULT_MAX_FRAME;
        c.send(Buffer.concat([headerFrames(1, postPending(s.token), false), dataFrames(1, sent)]));
      } else {
        // before its SETTINGS are read: over the default window and over the one it advertises
        window = Math.max(DEFAULT_WINDOW, advertised);
        sent = window + DEFAULT_MAX_FRAME;
        c = await RawH2.open(s.port, { first: Buffer.concat([headerFrames(1, postPending(s.token), false), dataFrames(1, sent)]) });
      }
      await c.until(() => c.resets.has(1) || !!c.goaway || c.gone, 2000);
      const refused = c.resets.has(1) || !!c.goaway || c.gone;
      const covered = !refused && window + (c.windowUpdates.get(1) ?? 0) >= sent && DEFAULT_WINDOW + (c.windowUpdates.get(0) ?? 0) >= sent;
      t.diagnostic(`${how}: ${sent} bytes at once against a stream window of ${window}; ` +
        `WINDOW_UPDATE stream ${c.windowUpdates.get(1) ?? 0} connection ${c.windowUpdates.get(0) ?? 0}; ${c.describe()}`);
      c.destroy();
      attempts.push({ c, how, sent, window, covered });
      if (!covered) break;
    }
    const last = attempts.at(-1)!;
    await expectation(t, 'RST_STREAM FLOW_CONTROL_ERROR on the stream, or GOAWAY FLOW_CONTROL_ERROR (6.9.1)', () => {
      const { c } = last;
      assert.ok(!last.covered, `${attempts.length} attempts: the server's WINDOW_UPDATEs covered each burst (it read the body as it came), no overrun to refuse`);
      const rst = c.resets.get(1);
      assert.ok(rst === FLOW_CONTROL_ERROR || c.goaway?.code === FLOW_CONTROL_ERROR,
        `${last.sent} bytes ${last.how} against a window of ${last.window}: RST_STREAM ${errName(rst)}, GOAWAY ${errName(c.goaway?.code)}: ${c.describe()}`);
    });
    await stillServes(t, s);
  });
});
