// The gateway's HTTP/2 client towards instances (image nodes speaking h2c or gRPC, another
// gateway worker's relay socket): frames and HPACK on a raw socket, one object per stream,
// no Duplex, no per-stream C++ handle. node:http2's client cost more than half of a proxied
// gRPC call's CPU (docs/benchmarks.md); this one does what the proxy needs and checks what
// an instance sends as hostile: a peer breaking the protocol ends its connection
// (UPSTREAM_PROTOCOL), never the gateway.
//   - flow control both ways: a paused answer stops crediting its stream (the instance
//     stops at the window), a request body waits for the instance's credit;
//   - the instance's SETTINGS (concurrent streams: calls beyond them queue here; initial
//     window; frame size; header table size), PING, GOAWAY (streams it did not take fail
//     as refused, so the proxy tries them elsewhere), RST_STREAM;
//   - frames written in one event-loop turn go out in one write.
import { connect as netConnect, type Socket } from 'node:net';
import { HpackDecoder, HpackEncoder, HpackError, HpackListTooLarge } from './hpack.js';
import { MessageBody, UNSAFE_VALUE, closedError, isHeader } from '../h1-message.js';
import { callDeadlines, type Deadline } from '../deadlines.js';
import type { BodySink, UpstreamRequest, UpstreamResponse } from '../upstream.js';

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

const DATA = 0x0, HEADERS = 0x1, PRIORITY = 0x2, RST_STREAM = 0x3, SETTINGS = 0x4, PUSH_PROMISE = 0x5,
  PING = 0x6, GOAWAY = 0x7, WINDOW_UPDATE = 0x8, CONTINUATION = 0x9;
const END_STREAM = 0x1, ACK = 0x1, END_HEADERS = 0x4, PADDED = 0x8, PRIORITY_FLAG = 0x20;
const NO_ERROR = 0x0, PROTOCOL_ERROR = 0x1, FLOW_CONTROL_ERROR = 0x3, FRAME_SIZE_ERROR = 0x6, CANCEL = 0x8,
  COMPRESSION_ERROR = 0x9;
const SETTINGS_HEADER_TABLE_SIZE = 0x1, SETTINGS_ENABLE_PUSH = 0x2, SETTINGS_MAX_CONCURRENT_STREAMS = 0x3,
  SETTINGS_INITIAL_WINDOW_SIZE = 0x4, SETTINGS_MAX_FRAME_SIZE = 0x5, SETTINGS_MAX_HEADER_LIST_SIZE = 0x6;

const MAX_WINDOW = 0x7fffffff;
/** What one stream may have in flight towards us: a paused reader holds at most this. */
const STREAM_WINDOW = 256 * 1024;
/** The connection's window: streams' credit is what bounds memory; this only has to not be the bottleneck. */
const CONNECTION_WINDOW = 16 * 1024 * 1024;
/** Frames we accept (the protocol's default; we do not raise it). */
const MAX_FRAME = 16 * 1024;
/** An answer's header list (or trailers) at most: name + value + 32 per field, as SETTINGS counts it. */
const MAX_HEADER_LIST = 64 * 1024;
/** A header block across HEADERS and CONTINUATION frames, compressed, at most (a CONTINUATION flood ends here). */
const MAX_HEADER_BLOCK = 2 * MAX_HEADER_LIST;
const MAX_STREAM_ID = 0x7fffffff;

const protocolError = (message: string): Error => Object.assign(new Error(`the instance broke HTTP/2: ${message}`), { code: 'UPSTREAM_PROTOCOL' });

function frameHead(length: number, type: number, flags: number, streamId: number): Buffer {
  const h = Buffer.allocUnsafe(9);
  h[0] = length >>> 16; h[1] = (length >>> 8) & 0xff; h[2] = length & 0xff;
  h[3] = type; h[4] = flags;
  h.writeUInt32BE(streamId, 5);
  return h;
}

/** A call waiting for a stream (the instance's SETTINGS_MAX_CONCURRENT_STREAMS are all taken). */
interface Waiting { r: UpstreamRequest; resolve: (res: UpstreamResponse) => void; reject: (err: unknown) => void; onAbort: () => void }

/** One connection to an instance; `closed` once it can take no new stream (GOAWAY, an error, ids used up). */
export class H2ClientSession {
  closed = false;
  private readonly socket: Socket;
  private readonly encoder = new HpackEncoder();
  private readonly decoder = new HpackDecoder(4096, MAX_HEADER_LIST);
  private readonly streams = new Map<number, H2ClientStream>();
  private readonly waiting: Waiting[] = [];
  private nextId = 1;
  /** Streams the instance took before its GOAWAY (ids above it never reached it). */
  private lastAccepted = MAX_STREAM_ID;
  private peerMaxStreams = 100; // until its SETTINGS say (RFC 9113 suggests at least 100)
  private peerInitialWindow = 65_535;
  private peerMaxFrame = 16_384;
  sendWindow = 65_535;
  private recvWindow = CONNECTION_WINDOW;
  /** Streams with request body waiting for the connection's credit. */
  private readonly blocked = new Set<H2ClientStream>();
  private gotSettings = false;
  private pending: Buffer | null = null;
  /** A header block still in CONTINUATION frames. */
  private block: { id: number; flags: number; parts: Buffer[]; size: number } | null = null;
  private out: Buffer[] = [];
  private outBytes = 0;
  private flushing: NodeJS.Immediate | null = null;
  private socketError: Error | null = null;
  /** The protocol broke: nothing more is read or written but the GOAWAY saying why. */
  private broken = false;
  private readonly authority: string;

  constructor(endpoint: { path?: string; host?: string; port?: number }, private readonly onGone: (s: H2ClientSession) => void) {
    this.authority = endpoint.path ? 'localhost' : `${endpoint.host ?? '127.0.0.1'}:${endpoint.port}`;
    this.socket = endpoint.path ? netConnect(endpoint.path) : netConnect({ host: endpoint.host ?? '127.0.0.1', port: endpoint.port!, noDelay: true });
    this.socket.unref(); // an idle connection does not keep the process alive
    const settings = Buffer.allocUnsafe(18);
    settings.writeUInt16BE(SETTINGS_ENABLE_PUSH, 0); settings.writeUInt32BE(0, 2);
    settings.writeUInt16BE(SETTINGS_INITIAL_WINDOW_SIZE, 6); settings.writeUInt32BE(STREAM_WINDOW, 8);
    settings.writeUInt16BE(SETTINGS_MAX_HEADER_LIST_SIZE, 12); settings.writeUInt32BE(MAX_HEADER_LIST, 14);
    this.queue(PREFACE);
    this.frame(SETTINGS, 0, 0, settings);
    this.windowUpdate(0, CONNECTION_WINDOW - 65_535);
    this.socket.on('data', (d: Buffer) => this.onData(d));
    this.socket.on('error', (err) => { this.socketError = err; });
    this.socket.once('close', () => this.gone(this.socketError ?? closedError('the connection to the instance closed')));
  }

  /** Starts the call's stream now, or when the instance has a stream free for it. */
  request(r: UpstreamRequest): Promise<UpstreamResponse> {
    return new Promise((resolve, reject) => {
      if (r.signal.aborted) { reject(abortReason(r)); return; }
      if (this.streams.size < this.peerMaxStreams) { this.open(r, resolve, reject); return; }
      const w: Waiting = { r, resolve, reject, onAbort: () => {
        const i = this.waiting.indexOf(w);
        if (i !== -1) { this.waiting.splice(i, 1); reject(abortReason(r)); }
      } };
      r.signal.addEventListener('abort', w.onAbort, { once: true });
      this.waiting.push(w);
    });
  }

  private open(r: UpstreamRequest, resolve: (res: UpstreamResponse) => void, reject: (err: unknown) => void): void {
    const h = r.headers;
    for (const k in h) {
      const v = h[k]!;
      if (typeof v === 'string' ? UNSAFE_VALUE.test(v) : v.some((one) => UNSAFE_VALUE.test(one))) {
        reject(Object.assign(new Error(`header ${k} has a value that cannot be sent`), { code: 'ERR_INVALID_CHAR' }));
        return;
      }
    }
    const id = this.nextId;
    this.nextId += 2;
    if (this.nextId > MAX_STREAM_ID) this.retire(); // ids used up: the next call opens a new connection
    const stream = new H2ClientStream(this, id, r, resolve, reject, this.peerInitialWindow);
    this.streams.set(id, stream);
    const block = this.encoder.encode([':method', r.method, ':scheme', 'http', ':authority', this.authority, ':path', r.path], h);
    this.headerFrames(id, block, r.body === null ? END_STREAM : 0);
    if (r.body === null) stream.localEnded = true;
    stream.begin();
  }

  private headerFrames(id: number, block: Buffer, flags: number): void {
    const max = this.peerMaxFrame;
    if (block.length <= max) { this.frame(HEADERS, flags | END_HEADERS, id, block); return; }
    this.frame(HEADERS, flags, id, block.subarray(0, max));
    for (let at = max; at < block.length; at += max) {
      const end = Math.min(at + max, block.length);
      this.frame(CONTINUATION, end === block.length ? END_HEADERS : 0, id, block.subarray(at, end));
    }
  }

  // ---- writing: every frame of one event-loop turn in one write

  frame(type: number, flags: number, id: number, payload: Buffer | null): Buffer {
    const head = frameHead(payload ? payload.length : 0, type, flags, id);
    this.queue(head);
    if (payload && payload.length) this.queue(payload);
    return head;
  }

  private queue(b: Buffer): void {
    this.out.push(b);
    this.outBytes += b.length;
    this.flushing ??= setImmediate(this.flush);
  }

  /** Whether `head` (a frame queued by frame()) has not been written yet (its flags can still change). */
  unsent(head: Buffer): boolean {
    return this.out.length > 0 && this.out.includes(head);
  }

  private readonly flush = (): void => {
    this.flushing = null;
    const out = this.out;
    if (out.length === 0 || this.socket.destroyed) { this.out = []; this.outBytes = 0; return; }
    this.out = [];
    const bytes = this.outBytes;
    this.outBytes = 0;
    if (out.length === 1) { this.socket.write(out[0]!); return; }
    if (bytes <= 64 * 1024) { this.socket.write(Buffer.concat(out, bytes)); return; }
    this.socket.cork(); // large bodies: no copy, one writev
    for (const b of out) this.socket.write(b);
    this.socket.uncork();
  };

  /** Whether the socket has room (the request bodies' backpressure beyond flow control). */
  get writable(): boolean { return this.socket.writableLength < 1024 * 1024; }
  onSocketDrain(cb: () => void): void { this.socket.once('drain', cb); }

  windowUpdate(id: number, increment: number): void {
    const p = Buffer.allocUnsafe(4);
    p.writeUInt32BE(increment, 0);
    this.frame(WINDOW_UPDATE, 0, id, p);
  }

  reset(id: number, code: number): void {
    const p = Buffer.allocUnsafe(4);
    p.writeUInt32BE(code, 0);
    this.frame(RST_STREAM, 0, id, p);
  }

  /** Takes up to `want` bytes of the connection's credit. */
  takeCredit(stream: H2ClientStream, want: number): number {
    const n = Math.min(want, this.sendWindow, this.peerMaxFrame);
    if (n <= 0) { this.blocked.add(stream); return 0; }
    this.sendWindow -= n;
    return n;
  }

  /** A stream is done (both ends closed, reset or failed): its slot goes to the next waiting call. */
  done(stream: H2ClientStream): void {
    if (this.streams.get(stream.id) !== stream) return;
    this.streams.delete(stream.id);
    this.blocked.delete(stream);
    this.startWaiting();
    if (this.closed && this.streams.size === 0) this.end();
  }

  private startWaiting(): void {
    while (this.waiting.length && this.streams.size < this.peerMaxStreams && !this.closed) {
      const w = this.waiting.shift()!;
      w.r.signal.removeEventListener('abort', w.onAbort);
      this.open(w.r, w.resolve, w.reject);
    }
  }

  // ---- reading

  private onData(d: Buffer): void {
    if (this.broken) return;
    let buf = this.pending ? Buffer.concat([this.pending, d]) : d;
    this.pending = null;
    let at = 0;
    try {
      while (buf.length - at >= 9) {
        const length = (buf[at]! << 16) | (buf[at + 1]! << 8) | buf[at + 2]!;
        if (length > MAX_FRAME) throw new ConnectionError(FRAME_SIZE_ERROR, `a frame of ${length} bytes (at most ${MAX_FRAME})`);
        if (buf.length - at < 9 + length) break;
        const type = buf[at + 3]!;
        if (!this.gotSettings && type !== SETTINGS) {
          // the first bytes say what it is: not HTTP/2 at all (an HTTP/1.1 server answers text)
          throw new ConnectionError(PROTOCOL_ERROR, at === 0 && buf.subarray(0, 5).toString('latin1') === 'HTTP/' ? 'it answered HTTP/1.x' : 'its first frame is not SETTINGS');
        }
        this.onFrame(type, buf[at + 4]!, buf.readUInt32BE(at + 5) & MAX_STREAM_ID, buf.subarray(at + 9, at + 9 + length));
        at += 9 + length;
        if (this.socket.destroyed) return;
      }
    } catch (err) {
      if (!(err instanceof ConnectionError)) throw err;
      this.connectionError(err.h2code, protocolError(err.message));
      return;
    }
    if (at < buf.length) this.pending = at === 0 ? buf : Buffer.from(buf.subarray(at));
  }

  private onFrame(type: number, flags: number, id: number, p: Buffer): void {
    if (this.block && type !== CONTINUATION) throw new ConnectionError(PROTOCOL_ERROR, 'a header block was cut by another frame');
    switch (type) {
      case DATA: return this.onDataFrame(flags, id, p);
      case HEADERS: {
        if (id === 0 || (id & 1) === 0 || id >= this.nextId) throw new ConnectionError(PROTOCOL_ERROR, `HEADERS on stream ${id}, which the gateway did not open`);
        let start = 0, end = p.length;
        if (flags & PADDED) { if (p.length < 1) throw new ConnectionError(FRAME_SIZE_ERROR, 'padded HEADERS without its pad length'); end -= p[0]!; start = 1; }
        if (flags & PRIORITY_FLAG) start += 5;
        if (end < start) throw new ConnectionError(PROTOCOL_ERROR, 'padding longer than its frame');
        const fragment = p.subarray(start, end);
        if (flags & END_HEADERS) return this.onHeaderBlock(id, flags, fragment);
        this.block = { id, flags, parts: [Buffer.from(fragment)], size: fragment.length };
        return;
      }
      case CONTINUATION: {
        const b = this.block;
        if (!b || b.id !== id) throw new ConnectionError(PROTOCOL_ERROR, 'CONTINUATION without its HEADERS');
        b.size += p.length;
        if (b.size > MAX_HEADER_BLOCK) throw new ConnectionError(PROTOCOL_ERROR, `a header block over ${MAX_HEADER_BLOCK} bytes`);
        b.parts.push(Buffer.from(p));
        if (flags & END_HEADERS) { this.block = null; this.onHeaderBlock(id, b.flags, Buffer.concat(b.parts, b.size)); }
        return;
      }
      case PRIORITY:
        if (p.length !== 5) throw new ConnectionError(FRAME_SIZE_ERROR, 'PRIORITY not 5 bytes');
        return;
      case RST_STREAM: {
        if (p.length !== 4) throw new ConnectionError(FRAME_SIZE_ERROR, 'RST_STREAM not 4 bytes');
        if (id === 0) throw new ConnectionError(PROTOCOL_ERROR, 'RST_STREAM on stream 0');
        this.streams.get(id)?.onReset(p.readUInt32BE(0));
        return;
      }
      case SETTINGS: return this.onSettings(flags, id, p);
      case PUSH_PROMISE: throw new ConnectionError(PROTOCOL_ERROR, 'PUSH_PROMISE, which the gateway disabled');
      case PING:
        if (id !== 0 || p.length !== 8) throw new ConnectionError(id !== 0 ? PROTOCOL_ERROR : FRAME_SIZE_ERROR, 'a malformed PING');
        if (!(flags & ACK)) this.frame(PING, ACK, 0, Buffer.from(p));
        return;
      case GOAWAY: {
        if (id !== 0 || p.length < 8) throw new ConnectionError(PROTOCOL_ERROR, 'a malformed GOAWAY');
        this.lastAccepted = Math.min(this.lastAccepted, p.readUInt32BE(0) & MAX_STREAM_ID);
        this.retire();
        const refused = closedError('the instance is closing the connection (GOAWAY) and did not take the stream');
        for (const s of [...this.streams.values()]) if (s.id > this.lastAccepted) s.fail(refused);
        for (const w of this.waiting.splice(0)) { w.r.signal.removeEventListener('abort', w.onAbort); w.reject(refused); }
        if (this.streams.size === 0) this.end();
        return;
      }
      case WINDOW_UPDATE: {
        if (p.length !== 4) throw new ConnectionError(FRAME_SIZE_ERROR, 'WINDOW_UPDATE not 4 bytes');
        const inc = p.readUInt32BE(0) & MAX_WINDOW;
        if (id === 0) {
          if (inc === 0) throw new ConnectionError(PROTOCOL_ERROR, 'a connection WINDOW_UPDATE of 0');
          this.sendWindow += inc;
          if (this.sendWindow > MAX_WINDOW) throw new ConnectionError(FLOW_CONTROL_ERROR, 'the connection window over 2^31-1');
          for (const s of [...this.blocked]) { this.blocked.delete(s); s.sendQueued(); }
          return;
        }
        this.streams.get(id)?.onWindowUpdate(inc);
        return;
      }
      default: return; // unknown frame types are ignored (RFC 9113 §4.1)
    }
  }

  private onDataFrame(flags: number, id: number, p: Buffer): void {
    if (id === 0) throw new ConnectionError(PROTOCOL_ERROR, 'DATA on stream 0');
    // flow control counts the whole payload, padding included
    this.recvWindow -= p.length;
    if (this.recvWindow < 0) throw new ConnectionError(FLOW_CONTROL_ERROR, 'DATA beyond the connection window');
    if (this.recvWindow <= CONNECTION_WINDOW / 2) { this.windowUpdate(0, CONNECTION_WINDOW - this.recvWindow); this.recvWindow = CONNECTION_WINDOW; }
    let data = p;
    if (flags & PADDED) {
      if (p.length < 1 || p[0]! >= p.length) throw new ConnectionError(PROTOCOL_ERROR, 'padding longer than its frame');
      data = p.subarray(1, p.length - p[0]!);
    }
    const stream = this.streams.get(id);
    if (stream) stream.onData(data, p.length, (flags & END_STREAM) !== 0);
    else if (id >= this.nextId || (id & 1) === 0) throw new ConnectionError(PROTOCOL_ERROR, `DATA on stream ${id}, which the gateway did not open`);
    // else: a stream already reset here; its late frames are dropped
  }

  private onHeaderBlock(id: number, flags: number, block: Buffer): void {
    let fields: string[];
    let tooLarge = false;
    try {
      fields = this.decoder.decode(block);
    } catch (err) {
      if (err instanceof HpackListTooLarge) { fields = []; tooLarge = true; }
      else if (err instanceof HpackError) throw new ConnectionError(COMPRESSION_ERROR, `an undecodable header block (${err.message})`);
      else throw err;
    }
    const stream = this.streams.get(id);
    if (!stream) return; // reset here already: decoded only to keep the table in step
    if (tooLarge) { stream.streamError(PROTOCOL_ERROR, `headers over ${MAX_HEADER_LIST} bytes`); return; }
    stream.onHeaders(fields, (flags & END_STREAM) !== 0);
  }

  private onSettings(flags: number, id: number, p: Buffer): void {
    if (id !== 0) throw new ConnectionError(PROTOCOL_ERROR, 'SETTINGS on a stream');
    if (flags & ACK) {
      if (p.length !== 0) throw new ConnectionError(FRAME_SIZE_ERROR, 'a SETTINGS ACK with a payload');
      return;
    }
    if (p.length % 6 !== 0) throw new ConnectionError(FRAME_SIZE_ERROR, 'SETTINGS not a multiple of 6 bytes');
    this.gotSettings = true;
    for (let at = 0; at < p.length; at += 6) {
      const key = p.readUInt16BE(at);
      const value = p.readUInt32BE(at + 2);
      if (key === SETTINGS_HEADER_TABLE_SIZE) this.encoder.setPeerMaxTableSize(value);
      else if (key === SETTINGS_MAX_CONCURRENT_STREAMS) this.peerMaxStreams = value;
      else if (key === SETTINGS_INITIAL_WINDOW_SIZE) {
        if (value > MAX_WINDOW) throw new ConnectionError(FLOW_CONTROL_ERROR, 'an initial window over 2^31-1');
        const delta = value - this.peerInitialWindow;
        this.peerInitialWindow = value;
        for (const s of this.streams.values()) s.sendWindow += delta; // may go below zero (RFC 9113 §6.9.2)
      } else if (key === SETTINGS_MAX_FRAME_SIZE) {
        if (value < 16_384 || value > 0xffffff) throw new ConnectionError(PROTOCOL_ERROR, `a max frame size of ${value}`);
        this.peerMaxFrame = value;
      }
    }
    this.frame(SETTINGS, ACK, 0, null);
    // a larger window (or more streams) lets waiting bodies and calls go on
    for (const s of [...this.streams.values()]) s.sendQueued();
    this.startWaiting();
  }

  // ---- ending

  /** No new streams here; those running finish. */
  private retire(): void {
    if (this.closed) return;
    this.closed = true;
    this.onGone(this);
  }

  /** The protocol is broken: every stream fails with `err`, the instance is told why, the connection ends. */
  private connectionError(code: number, err: Error): void {
    this.broken = true;
    const goaway = Buffer.alloc(8);
    goaway.writeUInt32BE(code, 4);
    this.out = [];
    this.outBytes = 0;
    this.frame(GOAWAY, 0, 0, goaway);
    this.flush();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref(); // a peer that does not close its side
    this.gone(err);
  }

  /** The connection is over: whatever still runs or waits fails with `err`. */
  private gone(err: Error): void {
    this.retire();
    if (this.flushing) { clearImmediate(this.flushing); this.flushing = null; }
    for (const s of [...this.streams.values()]) s.fail(err);
    for (const w of this.waiting.splice(0)) { w.r.signal.removeEventListener('abort', w.onAbort); w.reject(err); }
  }

  /** Ends the connection once nothing runs on it (GOAWAY first, as a polite client does). */
  private end(): void {
    if (this.socket.destroyed || this.broken) return;
    this.frame(GOAWAY, 0, 0, Buffer.alloc(8));
    this.flush();
    this.socket.end();
  }

  /** Closes the connection now: every stream fails. */
  destroy(): void {
    this.gone(closedError('the gateway closed its connection to the instance'));
    this.socket.destroy();
  }
}

class ConnectionError extends Error {
  constructor(readonly h2code: number, message: string) { super(message); }
}

const abortReason = (r: UpstreamRequest): Error => (r.signal.reason instanceof Error ? r.signal.reason : new Error('aborted'));

/** One exchange: the request's body goes out through it (BodySink), the answer comes back as a MessageBody. */
class H2ClientStream implements BodySink {
  localEnded = false;
  private remoteEnded = false;
  private finished = false;
  private response = false;
  sendWindow: number;
  /** How much the instance may still send on this stream, and what it sent that was not credited back yet. */
  private recvWindow = STREAM_WINDOW;
  private uncredited = 0;
  private holding = false;
  /** Body bytes waiting for credit; `endAfter`: end() came while some waited. */
  private queued: Buffer[] = [];
  private queuedBytes = 0;
  private endAfter = false;
  /** The last DATA frame's head while unsent: end() sets END_STREAM on it instead of sending another frame. */
  private lastData: Buffer | null = null;
  private body: MessageBody | null = null;
  private endTrailers: ((t: Record<string, string | string[]>) => void) | null = null;
  private drainListeners: Array<() => void> = [];
  private closeListeners: Array<() => void> = [];
  private idleTimer: Deadline | null = null;
  private lastRead = 0;
  private readonly onAbort = (): void => {
    if (this.finished) return;
    this.session.reset(this.id, CANCEL);
    this.fail(abortReason(this.r));
  };

  constructor(private readonly session: H2ClientSession, readonly id: number, private readonly r: UpstreamRequest,
    private resolve: ((res: UpstreamResponse) => void) | null, private reject: ((err: unknown) => void) | null, window: number) {
    this.sendWindow = window;
  }

  begin(): void {
    this.r.signal.addEventListener('abort', this.onAbort, { once: true });
    this.r.body?.pipeTo(this);
  }

  // ---- the request body (BodySink)

  write(chunk: Buffer): boolean {
    if (this.finished || this.localEnded || chunk.length === 0) return true;
    if (this.queuedBytes === 0) chunk = this.send(chunk);
    if (chunk.length) { this.queued.push(chunk); this.queuedBytes += chunk.length; return false; } // drain when credit comes
    if (this.session.writable) return true;
    this.session.onSocketDrain(() => this.emitDrain());
    return false;
  }

  /** Sends what the windows allow of `chunk` now; returns the rest. */
  private send(chunk: Buffer): Buffer {
    while (chunk.length && this.sendWindow > 0) {
      const n = this.session.takeCredit(this, Math.min(chunk.length, this.sendWindow));
      if (n === 0) break;
      this.sendWindow -= n;
      this.lastData = this.session.frame(DATA, 0, this.id, chunk.subarray(0, n));
      chunk = chunk.subarray(n);
    }
    return chunk;
  }

  /** Credit came (the stream's or the connection's): sends what waited, then says drain. */
  sendQueued(): void {
    if (this.finished || this.queuedBytes === 0) return;
    while (this.queued.length) {
      const first = this.queued[0]!;
      const rest = this.send(first);
      this.queuedBytes -= first.length - rest.length;
      if (rest.length) { this.queued[0] = rest; return; }
      this.queued.shift();
    }
    if (this.endAfter) { this.endAfter = false; this.end(); }
    if (this.session.writable) this.emitDrain();
    else this.session.onSocketDrain(() => this.emitDrain());
  }

  private emitDrain(): void { for (const l of [...this.drainListeners]) l(); }

  end(): void {
    if (this.finished || this.localEnded) return;
    if (this.queuedBytes > 0) { this.endAfter = true; return; }
    this.localEnded = true;
    const last = this.lastData;
    this.lastData = null;
    if (last && this.session.unsent(last)) last[4] = last[4]! | END_STREAM;
    else this.session.frame(DATA, END_STREAM, this.id, null);
    if (this.remoteEnded) this.finish();
  }

  destroy(err: Error): void {
    if (this.finished) return;
    this.session.reset(this.id, CANCEL);
    this.fail(err);
  }

  on(_event: 'drain', listener: () => void): this { this.drainListeners.push(listener); return this; }
  once(_event: 'close', listener: () => void): this { this.closeListeners.push(listener); return this; }
  off(event: 'drain' | 'close', listener: () => void): this {
    const list = event === 'drain' ? this.drainListeners : this.closeListeners;
    const i = list.indexOf(listener);
    if (i !== -1) list.splice(i, 1);
    return this;
  }

  onWindowUpdate(inc: number): void {
    if (inc === 0) { this.streamError(PROTOCOL_ERROR, 'a stream WINDOW_UPDATE of 0'); return; }
    this.sendWindow += inc;
    if (this.sendWindow > MAX_WINDOW) { this.streamError(FLOW_CONTROL_ERROR, 'a stream window over 2^31-1'); return; }
    this.sendQueued();
  }

  // ---- the answer

  onHeaders(fields: string[], endStream: boolean): void {
    if (this.remoteEnded) { this.streamError(PROTOCOL_ERROR, 'HEADERS after the end of its stream'); return; }
    if (!this.response) {
      const headers: Record<string, string | string[]> = {};
      const bad = collect(fields, headers, true);
      if (bad) { this.streamError(PROTOCOL_ERROR, bad); return; }
      const status = Number(headers[':status']);
      if (status < 200) {
        // 100 Continue, 103 Early Hints: the answer follows; 101 does not exist in HTTP/2
        if (status === 101 || endStream) this.streamError(PROTOCOL_ERROR, `an informational ${status} answer`);
        return;
      }
      this.response = true;
      const body = this.body = new MessageBody(this, (err) => this.destroy(err));
      const trailers = new Promise<Record<string, string | string[]>>((res) => { this.endTrailers = res; });
      const resolve = this.resolve!;
      this.resolve = null;
      this.reject = null;
      resolve({ status, headers, body, trailers, headersOnly: endStream });
      if (endStream) this.remoteEnd({});
      else if (this.r.idleTimeoutMs < Infinity) { this.lastRead = performance.now(); this.armIdle(this.r.idleTimeoutMs); } // the body is still to come
      return;
    }
    if (!endStream) { this.streamError(PROTOCOL_ERROR, 'trailers without END_STREAM'); return; }
    const trailers: Record<string, string | string[]> = {};
    const bad = collect(fields, trailers, false);
    if (bad) { this.streamError(PROTOCOL_ERROR, bad); return; }
    this.remoteEnd(trailers);
  }

  onData(data: Buffer, counted: number, endStream: boolean): void {
    if (this.remoteEnded || this.finished) return;
    if (!this.response) { this.streamError(PROTOCOL_ERROR, 'DATA before the answer\'s headers'); return; }
    this.recvWindow -= counted;
    if (this.recvWindow < 0) { this.streamError(FLOW_CONTROL_ERROR, 'DATA beyond the stream window'); return; }
    this.uncredited += counted;
    this.lastRead = performance.now();
    if (data.length) this.body!.push(data);
    if (endStream) { this.remoteEnd({}); return; }
    this.credit();
  }

  /** Gives the instance back the credit its delivered bytes took, in batches; none while the reader holds. */
  private credit(): void {
    if (this.holding || this.uncredited < STREAM_WINDOW / 2 || this.finished) return;
    this.session.windowUpdate(this.id, this.uncredited);
    this.recvWindow += this.uncredited;
    this.uncredited = 0;
  }

  /** The body's source (BodySourceFlow): a paused reader stops the stream's credit. */
  pause(): void { this.holding = true; }
  resume(): void { this.holding = false; this.credit(); }

  private armIdle(ms: number): void {
    this.idleTimer = callDeadlines.start(ms, () => {
      this.idleTimer = null;
      if (this.finished) return;
      const quiet = performance.now() - this.lastRead;
      const limit = this.r.idleTimeoutMs;
      if (quiet < limit) this.armIdle(limit - quiet);
      else this.destroy(Object.assign(new Error(`the instance sent nothing for ${limit} ms`), { code: 'UPSTREAM_IDLE_TIMEOUT' }));
    });
  }

  private remoteEnd(trailers: Record<string, string | string[]>): void {
    this.remoteEnded = true;
    const body = this.body!;
    // the answer is complete: a request body still going is not wanted any more
    if (!this.localEnded) { this.session.reset(this.id, NO_ERROR); this.localEnded = true; }
    this.finish();
    this.endTrailers?.(trailers);
    this.endTrailers = null;
    body.end();
  }

  onReset(code: number): void {
    if (this.finished) return;
    this.fail(this.response
      ? Object.assign(new Error(`the instance reset the stream (code ${code})`), { code: 'UPSTREAM_RESET' })
      : closedError(`the instance reset the stream before answering (code ${code})`));
  }

  /** The instance broke the protocol on this stream only: it is reset, the connection lives on. */
  streamError(code: number, message: string): void {
    if (this.finished) return;
    this.session.reset(this.id, code);
    this.fail(protocolError(message));
  }

  /** The exchange failed: before the answer its promise rejects, after it the body errors. */
  fail(err: Error): void {
    if (this.finished) return;
    const reject = this.reject;
    const body = this.body;
    this.finish();
    if (reject) reject(err);
    else {
      this.endTrailers?.({});
      this.endTrailers = null;
      body?.fail(err);
    }
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.r.signal.removeEventListener('abort', this.onAbort);
    if (this.idleTimer) { callDeadlines.clear(this.idleTimer); this.idleTimer = null; }
    this.resolve = null;
    this.reject = null;
    this.queued = [];
    this.queuedBytes = 0;
    this.session.done(this);
    const l = this.closeListeners;
    this.closeListeners = [];
    for (const fn of l) fn();
  }
}

/**
 * An answer's fields into `out` (repeated names as arrays); what is wrong with them, if
 * anything: upper-case names, pseudo-headers other than one leading :status (none in trailers),
 * connection-specific headers (RFC 9113 §8.2).
 */
function collect(fields: string[], out: Record<string, string | string[]>, head: boolean): string | null {
  let regular = false;
  for (let i = 0; i < fields.length; i += 2) {
    const k = fields[i]!;
    const v = fields[i + 1]!;
    if (k.charCodeAt(0) === 58 /* ':' */) {
      if (!head || regular || k !== ':status' || out[':status'] !== undefined) return `the pseudo-header ${k} where it may not be`;
      if (!/^[1-5]\d\d$/.test(v)) return `the status ${JSON.stringify(v)}`;
      out[k] = v;
      continue;
    }
    regular = true;
    if (/[A-Z]/.test(k) || k === 'connection' || k === 'transfer-encoding' || k === 'keep-alive' || k === 'upgrade' || k === 'proxy-connection') {
      return `the header ${JSON.stringify(k)}, which HTTP/2 does not allow`;
    }
    const had = out[k];
    if (!isHeader(had)) out[k] = v;
    else if (typeof had === 'string') out[k] = [had, v];
    else had.push(v);
  }
  if (head && out[':status'] === undefined) return 'an answer without :status';
  return null;
}
