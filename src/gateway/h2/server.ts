// The gateway's HTTP/2 server side towards callers (h2c with prior knowledge, as gRPC clients
// speak, and h2 over TLS): frames and HPACK on the connection the front door accepted, one
// light object per stream. node:http2's server side was most of a proxied gRPC call's CPU
// (a C++ stream handle, a Duplex and header objects per stream; docs/benchmarks.md). What a
// caller sends is hostile until checked; a caller that breaks the protocol loses its stream
// or its connection, never the gateway, and cannot make it hold unbounded memory or spin:
//   - at most MAX_STREAMS streams at once (more are refused: REFUSED_STREAM); streams a
//     caller resets, or that are refused, malformed or reset here for what the caller sent,
//     spend a budget that refills slowly (rapid reset, CVE-2023-44487, and "made you reset",
//     CVE-2025-8671): past it the connection ends (ENHANCE_YOUR_CALM);
//   - flow control both ways: a request body is credited only as it is read (a paused reader
//     holds at most STREAM_WINDOW per stream, in copies: a held byte never pins a whole read);
//     an answer waits for the caller's credit;
//   - header blocks bounded in bytes and frames (CONTINUATION floods), header lists in size
//     (431), acks owed to a caller that does not read bounded (PING and SETTINGS floods),
//     empty DATA frames bounded, requests checked as RFC 9113 §8 asks;
//   - a session with no stream is closed after the idle timeout; a stream that waits on its
//     caller (a body being read, an answer held back by the caller's credit or unread
//     connection) and on which nothing moves for as long is cut (CANCEL).
// Streams have the part of node:http2's ServerHttp2Stream the data plane uses (CallerStream),
// so the same handlers serve these and node:http2's (the loopback compatibility server's).
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http2';
import { HpackDecoder, HpackEncoder } from './hpack.js';
import { callDeadlines, type Deadline } from '../deadlines.js';
import { log } from '../../core/log.js';
import {
  CANCEL, CONNECTION_HEADERS, CONTINUATION, ConnectionError, DATA, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM,
  FLOW_CONTROL_ERROR, FrameReader, FrameWriter, GOAWAY, HEADERS, HeaderBlocks, INTERNAL_ERROR, MAX_EMPTY_DATA, MAX_HEADER_LIST,
  NAME, NO_ERROR, Outflow, PING, PREFACE, PRIORITY, PROTOCOL_ERROR, PUSH_PROMISE, REFUSED_STREAM, RST_STREAM, ReceiveWindow,
  SETTINGS, SETTINGS_ENABLE_PUSH, SETTINGS_HEADER_TABLE_SIZE, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS,
  SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE, STREAM_CLOSED, STREAM_WINDOW, SendCredit, UNSAFE_VALUE, WINDOW_UPDATE,
  checkPriority, decodeBlock, onPing, resetCode, settingsEntries, settingsPayload, windowIncrement,
} from './frames.js';

/** Streams one caller may have open at once, unless told otherwise (as RFC 9113 suggests at least). */
const MAX_STREAMS = 100;
/** Streams a caller may reset, or have refused or reset as malformed, in a burst, and how many more per second (nghttp2's defaults). */
const RESET_BURST = 1000;
const RESETS_PER_SECOND = 33;
/** Stream ids reset here that are remembered (late frames on older ones break the connection). */
const RESET_MEMORY = 1024;
/** What an answer may have waiting for the caller's credit before write() says to wait ('drain'). */
const HIGH_WATER = 64 * 1024;

/**
 * The part of node:http2's ServerHttp2Stream the data plane uses: node:http2's streams and this
 * server's both are one. Events: 'data', 'end' (the request body), 'drain',
 * 'finish' (the answer is all queued), 'wantTrailers', 'close', 'error'.
 */
export interface CallerStream {
  readonly destroyed: boolean;
  readonly closed: boolean;
  readonly headersSent: boolean;
  readonly writableFinished: boolean;
  readonly readableEnded: boolean;
  respond(headers: OutgoingHttpHeaders, options?: { endStream?: boolean; waitForTrailers?: boolean }): void;
  write(chunk: Buffer | string): boolean;
  end(chunk?: Buffer | string): unknown;
  sendTrailers(headers: OutgoingHttpHeaders): void;
  close(code?: number): void;
  pause(): unknown;
  resume(): unknown;
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  on(event: StreamEvent, listener: () => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  once(event: 'data', listener: (chunk: Buffer) => void): unknown;
  once(event: StreamEvent, listener: () => void): unknown;
  once(event: 'error', listener: (err: Error) => void): unknown;
  off(event: 'data', listener: (chunk: Buffer) => void): unknown;
  off(event: StreamEvent, listener: () => void): unknown;
  off(event: 'error', listener: (err: Error) => void): unknown;
}
type StreamEvent = 'end' | 'close' | 'drain' | 'finish' | 'wantTrailers';

/**
 * Sends the trailers `trailers()` resolves with when the stream asks for them ('wantTrailers',
 * once its body has gone); trailers that cannot be sent (a value with CR or LF) end the stream
 * with INTERNAL_ERROR instead, so the caller still sees it end.
 */
export function sendTrailersWhenAsked(stream: CallerStream, trailers: () => Promise<Record<string, string | string[]>>): void {
  stream.on('wantTrailers', () => {
    void trailers().then((t) => {
      if (stream.destroyed) return;
      try {
        stream.sendTrailers(t);
      } catch {
        stream.close(INTERNAL_ERROR);
      }
    });
  });
}

/** A caller's HTTP/2 connection, as the handlers see it. */
export interface CallerConnection {
  /** `cb` runs once the connection has closed. */
  onClose(cb: () => void): void;
}

export interface H2FrontOptions {
  headersTimeoutMs: number;
  idleTimeoutMs: number;
  /** Streams one connection may have open at once (default MAX_STREAMS). */
  maxStreams?: number;
  /** The peer is another process of this Berth (the call relay): its resets are its callers' cancels, not an attack. */
  trusted?: boolean;
  /** A connection's first stream began (the front door's accept deadline is met). */
  onRequest(socket: Socket): void;
  /** A stream, and the connection it came on (what is kept per caller connection closes with it). */
  onStream(stream: CallerStream, headers: IncomingHttpHeaders, conn: CallerConnection): void;
}

/** HTTP/2 connections from callers, from the front door on (after the preface sniff). */
export class H2Front {
  private readonly sessions = new Set<H2ServerSession>();
  private draining = false;

  constructor(private readonly opts: H2FrontOptions) {}

  /** Takes a connection over; the bytes the front door read are back in its buffer (unshift). */
  accept(socket: Socket): void {
    const s = new H2ServerSession(socket, this.opts);
    this.sessions.add(s);
    socket.once('close', () => this.sessions.delete(s));
    if (this.draining) s.close();
  }

  /** Closes (GOAWAY) up to `most` sessions that run no stream; how many. */
  closeIdle(most = Infinity): number {
    let n = 0;
    for (const s of this.sessions) {
      if (n >= most) break;
      if (s.idle() && !s.closing) { s.close(); n++; }
    }
    return n;
  }

  /** No new streams anywhere (GOAWAY): running ones finish. */
  drain(): void {
    this.draining = true;
    for (const s of this.sessions) s.close();
  }

  closeAll(): void {
    for (const s of this.sessions) s.destroy();
  }
}

class H2ServerSession implements CallerConnection {
  readonly out: FrameWriter;
  private readonly encoder = new HpackEncoder();
  private readonly decoder = new HpackDecoder(4096, MAX_HEADER_LIST);
  private readonly reader = new FrameReader((type, flags, id, p) => this.onFrame(type, flags, id, p), false);
  private readonly blocks = new HeaderBlocks(false, (id, flags, block) => this.onHeaderBlock(id, flags, block));
  private readonly streams = new Map<number, H2ServerStream>();
  /** The highest stream id the caller opened (ids must grow). */
  private lastId = 0;
  private preface: Buffer | null = Buffer.alloc(0);
  private gotSettings = false;
  readonly credit: SendCredit<H2ServerStream>;
  private readonly recvWindow: ReceiveWindow;
  /** Streams reset here lately: what the caller had already sent on them is dropped, not an error (RFC 9113 §5.1). */
  private readonly resetHere = new Set<number>();
  /** Streams opened by the read being parsed: started once it is (startStreams). */
  private starting: H2ServerStream[] = [];
  private resetTokens = RESET_BURST;
  private resetsCountedAt = performance.now();
  /** GOAWAY sent (draining, idle): no new streams; the connection ends when the last one does. */
  closing = false;
  private broken = false;
  private idleTimer: NodeJS.Timeout | null = null;
  private requested = false;
  private readonly maxStreams: number;

  get idleTimeoutMs(): number { return this.opts.idleTimeoutMs; }

  constructor(readonly socket: Socket, private readonly opts: H2FrontOptions) {
    this.maxStreams = opts.maxStreams ?? MAX_STREAMS;
    this.out = new FrameWriter(socket, (bytes) => {
      if (!this.broken && bytes > 0) this.connectionError(ENHANCE_YOUR_CALM);
    });
    this.credit = new SendCredit(this.out, socket);
    this.out.frame(SETTINGS, 0, 0, settingsPayload([
      [SETTINGS_MAX_CONCURRENT_STREAMS, this.maxStreams], [SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW], [SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST],
    ]));
    this.recvWindow = new ReceiveWindow(this.out);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('drain', () => this.guard(() => this.credit.drained()));
    socket.on('error', () => socket.destroy());
    socket.once('end', () => { if (this.streams.size === 0) socket.end(); else this.closing = true; });
    socket.once('close', () => this.gone());
    this.armIdle(opts.headersTimeoutMs);
    socket.resume();
  }

  idle(): boolean { return this.streams.size === 0; }

  onClose(cb: () => void): void {
    if (this.socket.destroyed) queueMicrotask(cb);
    else this.socket.once('close', cb);
  }

  // ---- reading

  private onData(d: Buffer): void {
    if (this.broken) return;
    this.guard(() => {
      if (this.preface) {
        const p = this.preface.length ? Buffer.concat([this.preface, d]) : d;
        const n = Math.min(p.length, PREFACE.length);
        if (!p.subarray(0, n).equals(PREFACE.subarray(0, n))) throw new ConnectionError(PROTOCOL_ERROR, 'not the HTTP/2 connection preface');
        if (p.length < PREFACE.length) { this.preface = Buffer.from(p); return; }
        this.preface = null;
        d = p.subarray(PREFACE.length);
      }
      this.reader.read(d, () => this.broken);
      this.startStreams();
    });
  }

  /**
   * Hands the streams this read opened to the handlers, once the whole read is parsed: a stream
   * the caller reset in the same read (a rapid-reset flood comes as HEADERS + RST_STREAM pairs)
   * starts no work at all.
   */
  private startStreams(): void {
    const started = this.starting;
    if (started.length === 0) return;
    this.starting = [];
    for (const s of started) if (!s.destroyed && !this.broken) this.opts.onStream(s, s.headers, this);
  }

  /**
   * Runs `fn` (a read, or a stream's listeners): a protocol error ends the connection with its
   * code; a fault in the gateway (here or in a listener) ends it with INTERNAL_ERROR and is
   * logged, and the gateway serves on.
   */
  guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      if (this.broken) return;
      if (err instanceof ConnectionError) { this.connectionError(err.h2code); return; }
      const e = err instanceof Error ? err : new Error(String(err));
      log.error({ event: 'h2_connection_fault', error: `${e.name}: ${e.message}`, stack: e.stack }, 'an HTTP/2 connection failed inside the gateway');
      this.connectionError(INTERNAL_ERROR);
    }
  }

  private onFrame(type: number, flags: number, id: number, p: Buffer): void {
    if (!this.gotSettings && type !== SETTINGS) throw new ConnectionError(PROTOCOL_ERROR, 'the first frame is not SETTINGS');
    this.blocks.check(type);
    switch (type) {
      case DATA: return this.onDataFrame(flags, id, p);
      case HEADERS: {
        if (id === 0 || (id & 1) === 0) throw new ConnectionError(PROTOCOL_ERROR, `HEADERS on stream ${id}, which a client may not open`);
        return this.blocks.frame(type, flags, id, p);
      }
      case CONTINUATION: return this.blocks.frame(type, flags, id, p);
      case PRIORITY: return checkPriority(id, p);
      case RST_STREAM: {
        resetCode(p); // checked; what the caller's code says does not matter here
        this.known(id, 'RST_STREAM');
        const s = this.streams.get(id);
        if (s) { this.spendReset(); s.onReset(); }
        return;
      }
      case SETTINGS: return this.onSettings(flags, id, p);
      case PUSH_PROMISE: throw new ConnectionError(PROTOCOL_ERROR, 'PUSH_PROMISE from a client');
      case PING: return onPing(flags, id, p, this.out);
      case GOAWAY:
        if (id !== 0 || p.length < 8) throw new ConnectionError(PROTOCOL_ERROR, 'a malformed GOAWAY');
        this.closing = true; // the caller opens no more streams; those running finish
        if (this.streams.size === 0) this.end();
        return;
      case WINDOW_UPDATE: {
        const inc = windowIncrement(p);
        if (id === 0) return this.credit.grow(inc);
        this.known(id, 'WINDOW_UPDATE');
        this.streams.get(id)?.onWindowUpdate(inc);
        return;
      }
      default: return; // unknown frame types are ignored (RFC 9113 §4.1)
    }
  }

  /** A frame on a stream the caller has not opened (an idle stream) breaks the connection. */
  private known(id: number, what: string): void {
    if (id === 0 || id > this.lastId) throw new ConnectionError(PROTOCOL_ERROR, `${what} on stream ${id}, which is not open`);
  }

  private onDataFrame(flags: number, id: number, p: Buffer): void {
    this.known(id, 'DATA');
    const data = this.recvWindow.data(flags, p); // on streams closed here too
    // a stream reset or answered here already: its late frames are dropped
    this.streams.get(id)?.onData(data, p.length, (flags & END_STREAM) !== 0);
  }

  private onHeaderBlock(id: number, flags: number, block: Buffer): void {
    const fields = decodeBlock(this.decoder, block);
    const endStream = (flags & END_STREAM) !== 0;
    const open = this.streams.get(id);
    if (open) return open.onTrailers(fields, endStream); // decoded first: the table stays in step
    if (id <= this.lastId) {
      if (this.resetHere.has(id)) return; // already on its way when the stream was reset
      throw new ConnectionError(PROTOCOL_ERROR, `HEADERS on stream ${id}, which is closed`);
    }
    this.lastId = id;
    if (this.closing) { this.resetStream(id, REFUSED_STREAM); return; } // after our GOAWAY: not processed, safe to retry elsewhere
    if (this.streams.size >= this.maxStreams) { this.spendReset(); this.resetStream(id, REFUSED_STREAM); return; }
    if (fields === null) {
      this.spendReset();
      this.out.frame(HEADERS, END_STREAM | END_HEADERS, id, this.encoder.encode([':status', '431'], null));
      if (!endStream) this.resetStream(id, NO_ERROR);
      return;
    }
    const headers = requestHeaders(fields, endStream);
    if (typeof headers === 'string') { this.spendReset(); this.resetStream(id, PROTOCOL_ERROR); return; }
    const stream = new H2ServerStream(this, id, endStream, headers);
    this.streams.set(id, stream);
    if (this.idleTimer) { clearTimeout(this.idleTimer); this.idleTimer = null; }
    if (!this.requested) { this.requested = true; this.opts.onRequest(this.socket); }
    if (!endStream) stream.armIdle(this.opts.idleTimeoutMs);
    this.starting.push(stream);
  }

  /** RST_STREAM from here; the id is remembered (a bounded set) so the caller's late frames on it are dropped. */
  resetStream(id: number, code: number): void {
    this.out.reset(id, code);
    this.resetHere.add(id);
    if (this.resetHere.size > RESET_MEMORY) this.resetHere.delete(this.resetHere.values().next().value!);
  }

  /** A stream the caller reset, or that was refused, malformed or reset for what the caller sent: past the budget, the connection ends. */
  spendReset(): void {
    if (this.opts.trusted) return;
    const now = performance.now();
    this.resetTokens = Math.min(RESET_BURST, this.resetTokens + (now - this.resetsCountedAt) * RESETS_PER_SECOND / 1000);
    this.resetsCountedAt = now;
    if (--this.resetTokens < 0) throw new ConnectionError(ENHANCE_YOUR_CALM, 'too many streams reset, refused or malformed');
  }

  private onSettings(flags: number, id: number, p: Buffer): void {
    let windowGrew = false;
    const isSettings = settingsEntries(flags, id, p, (key, value) => {
      if (key === SETTINGS_HEADER_TABLE_SIZE) this.encoder.setPeerMaxTableSize(value);
      else if (key === SETTINGS_ENABLE_PUSH) { if (value > 1) throw new ConnectionError(PROTOCOL_ERROR, `ENABLE_PUSH of ${value}`); }
      else if (key === SETTINGS_INITIAL_WINDOW_SIZE) windowGrew = this.credit.initialWindow(value, this.streams.values()) || windowGrew;
      else if (key === SETTINGS_MAX_FRAME_SIZE) this.credit.peerMaxFrame = value;
    });
    if (!isSettings) return;
    this.gotSettings = true;
    this.out.ack(SETTINGS, null);
    if (windowGrew) for (const s of [...this.streams.values()]) s.sendQueued();
  }

  // ---- writing

  /** An answer's header block (or trailers) for `id`. */
  headerFrames(id: number, pseudo: string[], headers: Record<string, string | string[]> | null, endStream: boolean): void {
    this.credit.headers(id, this.encoder.encode(pseudo, headers), endStream ? END_STREAM : 0);
  }

  /** A stream is over (both sides ended, or reset): its slot is free. */
  done(stream: H2ServerStream): void {
    if (this.streams.get(stream.id) !== stream) return;
    this.streams.delete(stream.id);
    this.credit.forget(stream);
    if (this.streams.size > 0 || this.broken) return;
    if (this.closing) this.end();
    else this.armIdle(this.opts.idleTimeoutMs);
  }

  /** A session without streams for `ms` is closed. */
  private armIdle(ms: number): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => { this.idleTimer = null; if (this.streams.size === 0) this.close(); }, ms);
    this.idleTimer.unref();
  }

  // ---- ending

  /** GOAWAY: no new streams; the connection ends once the running ones do. */
  close(): void {
    if (this.closing || this.broken) { if (this.streams.size === 0) this.end(); return; }
    this.closing = true;
    this.out.goaway(this.lastId, NO_ERROR);
    if (this.streams.size === 0) this.end();
  }

  private end(): void {
    if (this.socket.destroyed || this.socket.writableEnded) return;
    if (this.idleTimer) { clearTimeout(this.idleTimer); this.idleTimer = null; }
    if (!this.broken) this.out.goaway(this.lastId, NO_ERROR); // a second GOAWAY is harmless; the caller learns the last id
    this.out.flush();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  /** The caller broke the protocol (or the gateway failed it): it is told the code, every stream ends, the connection closes. */
  private connectionError(code: number): void {
    this.broken = true;
    this.closing = true;
    this.out.discard();
    this.out.goaway(this.lastId, code);
    this.out.flush();
    for (const s of [...this.streams.values()]) s.onReset();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  destroy(): void { this.socket.destroy(); }

  private gone(): void {
    if (this.idleTimer) { clearTimeout(this.idleTimer); this.idleTimer = null; }
    this.broken = true;
    for (const s of [...this.streams.values()]) s.onReset();
  }
}

/**
 * One exchange with a caller: the request body comes in through it (as a Readable's 'data'
 * and 'end', credited to the caller only as it is read), the answer goes out through it.
 */
class H2ServerStream extends EventEmitter implements CallerStream {
  headersSent = false;
  closed = false;
  destroyed = false;
  writableFinished = false;
  readableEnded = false;
  private remoteEnded: boolean;
  /** END_STREAM is queued: the answer is over. */
  private localEnded = false;
  private waitForTrailers = false;
  // ---- the request body: what came and was not read yet (copies), from `heldAt` on
  private held: Buffer[] = [];
  private heldAt = 0;
  private heldCounted = 0;
  private flowing = false;
  private paused = false;
  private uncredited = 0;
  private recvWindow = STREAM_WINDOW;
  private readonly declared: number;
  private received = 0;
  private emptyData = 0;
  /** When bytes last moved either way (the idle cut). */
  private lastMoved = 0;
  private idleTimer: Deadline | null = null;
  // ---- the answer
  readonly outflow: Outflow<H2ServerStream>;
  /** end() came while some of the body waited for credit. */
  private endAfter = false;
  private flowWaiting = false;
  private trailersAsked = false;

  constructor(private readonly session: H2ServerSession, readonly id: number, endStream: boolean, readonly headers: IncomingHttpHeaders) {
    super();
    this.remoteEnded = endStream;
    const length = headers['content-length'];
    this.declared = typeof length === 'string' ? Number(length) : -1;
    this.outflow = new Outflow(session.credit, this, id);
  }

  override on(event: string | symbol, listener: (...args: never[]) => void): this {
    super.on(event, listener as (...args: unknown[]) => void);
    if (event === 'data' && !this.paused) this.flow();
    return this;
  }

  // ---- the request body (as a Readable)

  onData(data: Buffer, counted: number, endStream: boolean): void {
    if (this.remoteEnded) { this.reset(STREAM_CLOSED); return; }
    this.recvWindow -= counted;
    if (this.recvWindow < 0) { this.reset(FLOW_CONTROL_ERROR); return; }
    this.received += data.length;
    if (this.declared >= 0 && (this.received > this.declared || (endStream && this.received !== this.declared))) { this.reset(PROTOCOL_ERROR); return; }
    if (data.length === 0 && !endStream && ++this.emptyData > MAX_EMPTY_DATA) { this.reset(ENHANCE_YOUR_CALM); return; }
    this.lastMoved = performance.now();
    if (endStream) this.remoteEnded = true;
    // a copy: a reader may keep it, and a slice would keep the whole read it came in alive
    const chunk = data.length ? Buffer.from(data) : null;
    if (this.flowing && !this.paused && this.heldAt === this.held.length) {
      this.credit(counted);
      if (chunk) this.emit('data', chunk);
      if (endStream) this.endReading();
      return;
    }
    if (chunk) this.held.push(chunk);
    this.heldCounted += counted;
    if (endStream && this.flowing && !this.paused) this.flushHeld();
  }

  /** Trailers from the caller (a second header block): they end the body and are otherwise dropped. */
  onTrailers(fields: string[] | null, endStream: boolean): void {
    if (this.remoteEnded) { this.reset(STREAM_CLOSED); return; }
    if (!endStream || fields === null || fields.some((f, i) => i % 2 === 0 && f.charCodeAt(0) === 58)) { this.reset(PROTOCOL_ERROR); return; }
    this.onData(Buffer.alloc(0), 0, true);
  }

  pause(): this { this.paused = true; return this; }

  resume(): this {
    this.paused = false;
    this.flowing = true;
    this.flushHeld();
    return this;
  }

  private flow(): void {
    if (this.flowing) return;
    this.flowing = true;
    queueMicrotask(() => this.session.guard(() => { if (!this.paused) this.flushHeld(); }));
  }

  private flushHeld(): void {
    const held = this.held;
    while (this.heldAt < held.length && !this.paused && !this.destroyed) this.emit('data', held[this.heldAt++]!);
    if (this.heldAt < held.length || this.paused || this.destroyed) return;
    this.held = [];
    this.heldAt = 0;
    if (this.heldCounted) { this.credit(this.heldCounted); this.heldCounted = 0; }
    if (this.remoteEnded && !this.readableEnded) this.endReading();
  }

  /** Gives the caller back the credit of what was read, in batches. */
  private credit(n: number): void {
    this.uncredited += n;
    if (this.uncredited < STREAM_WINDOW / 2 || this.remoteEnded || this.destroyed) return;
    this.session.out.windowUpdate(this.id, this.uncredited);
    this.recvWindow += this.uncredited;
    this.uncredited = 0;
  }

  private endReading(): void {
    if (this.readableEnded || this.destroyed) return;
    this.readableEnded = true;
    this.emit('end');
  }

  /**
   * A stream that waits on its caller is cut (CANCEL) once nothing moves on it for `ms`: a
   * request body still coming (unless its reader holds it back), or an answer the caller holds
   * back, by its credit or by not reading the connection (it must not keep an instance's
   * session that way). While nothing waits on the caller, the call's own timeouts apply.
   */
  armIdle(ms: number): void {
    this.lastMoved = performance.now();
    this.watchCaller(ms, ms);
  }

  private watchCaller(ms: number, left: number): void {
    this.idleTimer = callDeadlines.start(left, () => {
      this.idleTimer = null;
      if (this.destroyed) return;
      const answerHeld = this.answerHeld();
      if (this.remoteEnded && !answerHeld) return; // watched again when an answer comes to wait (write)
      const quiet = performance.now() - this.lastMoved;
      // a body not read yet, or held back by its reader, is not the caller's idleness
      if (quiet >= ms && (answerHeld || (this.flowing && !this.paused))) this.close(CANCEL);
      else this.watchCaller(ms, Math.max(ms - quiet, 100));
    });
  }

  /** Some of the answer waits for the caller's credit or for its connection to drain. */
  private answerHeld(): boolean { return this.flowWaiting || this.outflow.queuedBytes > 0; }

  // ---- the answer

  respond(headers: OutgoingHttpHeaders, options?: { endStream?: boolean; waitForTrailers?: boolean }): void {
    if (this.destroyed) throw Object.assign(new Error('the stream is closed'), { code: 'ERR_HTTP2_INVALID_STREAM' });
    if (this.headersSent) throw Object.assign(new Error('the answer\'s headers were sent already'), { code: 'ERR_HTTP2_HEADERS_SENT' });
    const status = Number(headers[':status'] ?? 200);
    if (!Number.isInteger(status) || status < 200 || status > 599) throw Object.assign(new RangeError(`the status ${String(headers[':status'])}`), { code: 'ERR_HTTP2_STATUS_INVALID' });
    const fields = outgoing(headers);
    this.headersSent = true;
    const endStream = options?.endStream === true;
    this.waitForTrailers = options?.waitForTrailers === true;
    this.session.headerFrames(this.id, [':status', String(status)], fields, endStream);
    if (endStream) { this.bodyDone(); this.endedHere(); }
  }

  write(chunk: Buffer | string): boolean {
    if (this.destroyed || this.writableFinished || this.endAfter) return false;
    if (!this.headersSent) this.respond({ ':status': 200 });
    const b = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (b.length === 0) return true;
    this.lastMoved = performance.now();
    this.outflow.push(b);
    const room = this.outflow.queuedBytes < HIGH_WATER && this.session.credit.writable(this);
    if (!room) this.flowWaiting = true;
    if (!this.idleTimer && this.answerHeld()) this.armIdle(this.session.idleTimeoutMs);
    return room;
  }

  /** Credit came: sends what waited, then says drain. */
  sendQueued(): void {
    if (this.destroyed || this.outflow.queuedBytes === 0) return;
    const before = this.outflow.queuedBytes;
    const all = this.outflow.flush();
    if (this.outflow.queuedBytes < before) this.lastMoved = performance.now();
    if (!all) return;
    if (this.endAfter) { this.endAfter = false; this.endWriting(); }
    if (!this.destroyed && this.session.credit.writable(this)) this.drained();
  }

  drained(): void {
    if (!this.flowWaiting || this.destroyed || this.outflow.queuedBytes >= HIGH_WATER) return;
    this.lastMoved = performance.now();
    this.flowWaiting = false;
    this.emit('drain');
  }

  onWindowUpdate(inc: number): void {
    if (this.destroyed) return;
    if (inc === 0) { this.reset(PROTOCOL_ERROR); return; }
    if (!this.outflow.grow(inc)) { this.reset(FLOW_CONTROL_ERROR); return; }
    this.sendQueued();
  }

  end(chunk?: Buffer | string): this {
    if (this.destroyed || this.writableFinished || this.endAfter) return this;
    if (chunk !== undefined) this.write(chunk);
    else if (!this.headersSent) this.respond({ ':status': 200 });
    if (this.outflow.queuedBytes > 0) this.endAfter = true;
    else this.endWriting();
    return this;
  }

  /** The body is all queued: the trailers are asked for ('wantTrailers'), or END_STREAM goes now. */
  private endWriting(): void {
    if (this.writableFinished || this.destroyed) return;
    this.bodyDone();
    if (this.waitForTrailers) { this.trailersAsked = true; this.emit('wantTrailers'); return; }
    this.endWithData();
  }

  private endWithData(): void {
    this.outflow.end();
    this.endedHere();
  }

  sendTrailers(headers: OutgoingHttpHeaders): void {
    if (this.destroyed) throw Object.assign(new Error('the stream is closed'), { code: 'ERR_HTTP2_INVALID_STREAM' });
    if (!this.trailersAsked || this.localEnded) throw Object.assign(new Error('trailers before \'wantTrailers\''), { code: 'ERR_HTTP2_TRAILERS_NOT_READY' });
    const fields = outgoing(headers);
    // no trailers: an empty DATA frame ends the stream (as node:http2 does; some clients refuse an empty HEADERS)
    if (Object.keys(fields).length === 0) this.endWithData();
    else { this.session.headerFrames(this.id, [], fields, true); this.endedHere(); }
  }

  /** The body is all queued ('finish'); trailers may still follow. */
  private bodyDone(): void {
    if (this.writableFinished) return;
    this.writableFinished = true;
    this.emit('finish');
  }

  /** END_STREAM is queued: the stream is over (the rest of a request body still coming is not wanted: RFC 9113 §8.1). */
  private endedHere(): void {
    this.localEnded = true;
    if (!this.remoteEnded) this.session.resetStream(this.id, NO_ERROR);
    this.finishStream();
  }

  // ---- ending

  /** Ends the stream now with RST_STREAM `code` (NO_ERROR by default). */
  close(code = NO_ERROR): void {
    if (this.destroyed) return;
    this.session.resetStream(this.id, code);
    this.finishStream();
  }

  /** What the caller sent broke the protocol on this stream: it is reset (the connection lives on, within the budget). */
  private reset(code: number): void {
    if (this.destroyed) return;
    this.session.resetStream(this.id, code);
    this.finishStream();
    this.session.spendReset();
  }

  /** The caller reset it, or the connection ended. */
  onReset(): void { this.finishStream(); }

  private finishStream(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.closed = true;
    if (this.idleTimer) { callDeadlines.clear(this.idleTimer); this.idleTimer = null; }
    this.held = [];
    this.heldAt = 0;
    this.outflow.clear();
    this.session.done(this);
    process.nextTick(() => this.session.guard(() => this.emit('close')));
  }
}

/**
 * A request's fields as node:http2 hands them (pseudo-headers included; repeated names joined
 * with ", ", cookies with "; ", set-cookie as an array), or what makes it malformed (RFC 9113
 * §8.2, §8.3.1): an unknown or repeated pseudo-header, one after a regular field, no :method,
 * :scheme or :path (CONNECT is not served), a :method that is not a token, a name that is
 * not a lower-case token, a value with NUL, CR or LF or with whitespace at either end, a
 * connection header, te other than "trailers", a content-length that is not one number or
 * that promises a body the request ends without.
 */
function requestHeaders(fields: string[], endStream: boolean): IncomingHttpHeaders | string {
  const h: IncomingHttpHeaders = {};
  let regular = false;
  for (let i = 0; i < fields.length; i += 2) {
    const k = fields[i]!;
    const v = fields[i + 1]!;
    if (k.charCodeAt(0) === 58 /* ':' */) {
      if (regular || h[k] !== undefined || (k !== ':method' && k !== ':scheme' && k !== ':path' && k !== ':authority')) return `the pseudo-header ${k}`;
      if (UNSAFE_VALUE.test(v) || (k === ':method' && !NAME.test(v.toLowerCase()))) return `a value of ${k}`;
      h[k] = v;
      continue;
    }
    regular = true;
    if (!NAME.test(k) || (CONNECTION_HEADERS.has(k) && k !== 'host' && !(k === 'te' && v === 'trailers'))) return `the header ${k}`;
    if (UNSAFE_VALUE.test(v) || EDGE_SPACE.test(v)) return `a value of ${k}`;
    const had = h[k];
    if (k === 'content-length' && (!/^\d{1,15}$/.test(v) || (had !== undefined && had !== v))) return 'the content-length';
    if (had === undefined) h[k] = k === 'set-cookie' ? [v] : v;
    else if (Array.isArray(had)) had.push(v);
    else if (k !== 'content-length') h[k] = `${had}${k === 'cookie' ? '; ' : ', '}${v}`;
  }
  if (!h[':method'] || !h[':scheme'] || !h[':path'] || h[':method'] === 'CONNECT') return 'the request\'s :method, :scheme and :path';
  if (endStream && h['content-length'] !== undefined && h['content-length'] !== '0') return 'a content-length with no body';
  return h;
}

const EDGE_SPACE = /^[ \t]|[ \t]$/;

/** An answer's fields for the encoder: names lower-case, no pseudo-headers or connection headers, values that can be sent. */
function outgoing(headers: OutgoingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const key in headers) {
    const v = headers[key];
    if (v === undefined || key.charCodeAt(0) === 58 /* ':' */) continue;
    const k = key.toLowerCase();
    if (CONNECTION_HEADERS.has(k)) continue;
    const value = Array.isArray(v) ? v.map(String) : String(v);
    if (typeof value === 'string' ? UNSAFE_VALUE.test(value) : value.some((one) => UNSAFE_VALUE.test(one))) {
      throw Object.assign(new TypeError(`header ${k} has a value that cannot be sent`), { code: 'ERR_INVALID_CHAR' });
    }
    out[k] = value;
  }
  return out;
}
