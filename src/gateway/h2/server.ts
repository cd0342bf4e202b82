// The gateway's HTTP/2 server side towards callers (h2c with prior knowledge, as gRPC clients
// speak, and h2 over TLS): frames and HPACK on the connection the front door accepted, one
// light object per stream. node:http2's server side was most of a proxied gRPC call's CPU
// (a C++ stream handle, a Duplex and header objects per stream; docs/benchmarks.md). What a
// caller sends is hostile until checked; a caller that breaks the protocol loses its stream
// or its connection, never the gateway, and cannot make it hold unbounded memory or spin:
//   - at most MAX_STREAMS streams at once (more are refused: REFUSED_STREAM); streams a
//     caller resets, or that are refused or malformed, spend a budget that refills slowly
//     (rapid reset, CVE-2023-44487): past it the connection ends (ENHANCE_YOUR_CALM);
//   - flow control both ways: a request body is credited only as it is read (a paused reader
//     holds at most STREAM_WINDOW per stream); an answer waits for the caller's credit;
//   - header blocks bounded in bytes and frames (CONTINUATION floods), header lists in size
//     (431), acks owed to a caller that does not read bounded (PING and SETTINGS floods),
//     empty DATA frames bounded, requests checked as RFC 9113 §8 asks;
//   - a session with no stream is closed after the idle timeout; a request body that stops
//     arriving is cut after it too (a call that is running is never cut by these).
// Streams have the part of node:http2's ServerHttp2Stream the data plane uses (CallerStream),
// so the same handlers serve these and node:http2's (the call relay between gateway workers).
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http2';
import { HpackDecoder, HpackEncoder, HpackError, HpackListTooLarge } from './hpack.js';
import { callDeadlines, type Deadline } from '../deadlines.js';
import { log } from '../../core/log.js';
import {
  CANCEL, COMPRESSION_ERROR, INTERNAL_ERROR, CONNECTION_HEADERS, CONNECTION_WINDOW, CONTINUATION, ConnectionError, DATA, END_HEADERS, END_STREAM,
  ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, FrameReader, FrameWriter, GOAWAY, HEADERS, HeaderBlocks, MAX_EMPTY_DATA, MAX_HEADER_LIST,
  MAX_WINDOW, NAME, NO_ERROR, PING, PREFACE, PRIORITY, PROTOCOL_ERROR, PUSH_PROMISE, REFUSED_STREAM, RST_STREAM,
  SETTINGS, SETTINGS_ENABLE_PUSH, SETTINGS_HEADER_TABLE_SIZE, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS,
  SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE, STREAM_CLOSED, STREAM_WINDOW, UNSAFE_VALUE, WINDOW_UPDATE, checkPriority,
  onPing, resetCode, settingsEntries, settingsPayload, unpadded, windowIncrement,
} from './frames.js';

/** Streams one caller may have open at once, unless told otherwise (as RFC 9113 suggests at least). */
const MAX_STREAMS = 100;
/** Streams a caller may reset, or have refused or reset as malformed, in a burst, and how many more per second (nghttp2's defaults). */
const RESET_BURST = 1000;
const RESETS_PER_SECOND = 33;
/** What an answer may have waiting for the caller's credit before write() says to wait ('drain'). */
const HIGH_WATER = 64 * 1024;
/** Unwritten bytes in the socket past which writers wait for it to drain. */
const SOCKET_HIGH_WATER = 1024 * 1024;

/**
 * The part of node:http2's ServerHttp2Stream the data plane uses: node:http2's streams (the call
 * relay's) and this server's both are one. Events: 'data', 'end' (the request body), 'drain',
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

export interface H2FrontOptions {
  headersTimeoutMs: number;
  idleTimeoutMs: number;
  /** Streams one connection may have open at once (default MAX_STREAMS). */
  maxStreams?: number;
  /** A connection's first stream began (the front door's accept deadline is met). */
  onRequest(socket: Socket): void;
  onStream(stream: CallerStream, headers: IncomingHttpHeaders): void;
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

class H2ServerSession {
  readonly out: FrameWriter;
  private readonly encoder = new HpackEncoder();
  private readonly decoder = new HpackDecoder(4096, MAX_HEADER_LIST);
  private readonly reader = new FrameReader((type, flags, id, p) => this.onFrame(type, flags, id, p), false);
  private readonly blocks = new HeaderBlocks(false);
  private readonly streams = new Map<number, H2ServerStream>();
  /** The highest stream id the caller opened (ids must grow). */
  private lastId = 0;
  private preface: Buffer | null = Buffer.alloc(0);
  private gotSettings = false;
  peerInitialWindow = 65_535;
  peerMaxFrame = 16_384;
  private sendWindow = 65_535;
  private recvWindow = CONNECTION_WINDOW;
  /** Streams whose answer waits for the connection's credit, or for the socket to drain. */
  private readonly blocked = new Set<H2ServerStream>();
  private readonly waitingDrain = new Set<H2ServerStream>();
  private resetTokens = RESET_BURST;
  private resetsCountedAt = performance.now();
  /** GOAWAY sent (draining, idle): no new streams; the connection ends when the last one does. */
  closing = false;
  private broken = false;
  private idleTimer: NodeJS.Timeout | null = null;
  private requested = false;
  private readonly maxStreams: number;

  constructor(readonly socket: Socket, private readonly opts: H2FrontOptions) {
    this.maxStreams = opts.maxStreams ?? MAX_STREAMS;
    this.out = new FrameWriter(socket, (bytes) => {
      if (!this.broken && bytes > 0) this.connectionError(ENHANCE_YOUR_CALM);
    });
    this.out.frame(SETTINGS, 0, 0, settingsPayload([
      [SETTINGS_MAX_CONCURRENT_STREAMS, this.maxStreams], [SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW], [SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST],
    ]));
    this.out.windowUpdate(0, CONNECTION_WINDOW - 65_535);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('drain', () => {
      const waiting = [...this.waitingDrain];
      this.waitingDrain.clear();
      for (const s of waiting) s.drained();
    });
    socket.on('error', () => socket.destroy());
    socket.once('end', () => { if (this.streams.size === 0) socket.end(); else this.closing = true; });
    socket.once('close', () => this.gone());
    this.armIdle(opts.headersTimeoutMs);
    socket.resume();
  }

  idle(): boolean { return this.streams.size === 0; }

  // ---- reading

  private onData(d: Buffer): void {
    if (this.broken) return;
    try {
      if (this.preface) {
        const p = this.preface.length ? Buffer.concat([this.preface, d]) : d;
        const n = Math.min(p.length, PREFACE.length);
        if (!p.subarray(0, n).equals(PREFACE.subarray(0, n))) throw new ConnectionError(PROTOCOL_ERROR, 'not the HTTP/2 connection preface');
        if (p.length < PREFACE.length) { this.preface = Buffer.from(p); return; }
        this.preface = null;
        d = p.subarray(PREFACE.length);
      }
      this.reader.read(d, () => this.broken);
    } catch (err) {
      if (err instanceof ConnectionError) { this.connectionError(err.h2code); return; }
      // a fault here or in a stream's listener: this connection ends, the gateway serves on
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
        const block = this.blocks.headers(flags, id, p);
        if (block) this.onHeaderBlock(id, flags, block);
        return;
      }
      case CONTINUATION: {
        const done = this.blocks.continuation(flags, id, p);
        if (done) this.onHeaderBlock(id, done.flags, done.block);
        return;
      }
      case PRIORITY: return checkPriority(id, p);
      case RST_STREAM: {
        const code = resetCode(p);
        this.known(id, 'RST_STREAM');
        const s = this.streams.get(id);
        if (s) { this.spendReset(); s.onReset(code); }
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
        if (id === 0) {
          if (inc === 0) throw new ConnectionError(PROTOCOL_ERROR, 'a connection WINDOW_UPDATE of 0');
          this.sendWindow += inc;
          if (this.sendWindow > MAX_WINDOW) throw new ConnectionError(FLOW_CONTROL_ERROR, 'the connection window over 2^31-1');
          if (this.blocked.size === 0) return;
          const blocked = [...this.blocked];
          this.blocked.clear();
          for (const s of blocked) s.sendQueued();
          return;
        }
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
    // flow control counts the whole payload, padding included, on streams closed here too
    this.recvWindow -= p.length;
    if (this.recvWindow < 0) throw new ConnectionError(FLOW_CONTROL_ERROR, 'DATA beyond the connection window');
    if (this.recvWindow <= CONNECTION_WINDOW / 2) { this.out.windowUpdate(0, CONNECTION_WINDOW - this.recvWindow); this.recvWindow = CONNECTION_WINDOW; }
    const data = unpadded(flags, p);
    // a stream reset or answered here already: its late frames are dropped
    this.streams.get(id)?.onData(data, p.length, (flags & END_STREAM) !== 0);
  }

  private onHeaderBlock(id: number, flags: number, block: Buffer): void {
    let fields: string[] | null;
    try {
      fields = this.decoder.decode(block);
    } catch (err) {
      if (err instanceof HpackListTooLarge) fields = null;
      else if (err instanceof HpackError) throw new ConnectionError(COMPRESSION_ERROR, `an undecodable header block (${err.message})`);
      else throw err;
    }
    const endStream = (flags & END_STREAM) !== 0;
    const open = this.streams.get(id);
    if (open) return open.onTrailers(fields, endStream); // decoded first: the table stays in step
    if (id <= this.lastId) throw new ConnectionError(PROTOCOL_ERROR, `HEADERS on stream ${id}, which is closed`);
    this.lastId = id;
    if (this.closing) { this.out.reset(id, REFUSED_STREAM); return; } // after our GOAWAY: not processed, safe to retry elsewhere
    if (this.streams.size >= this.maxStreams) { this.spendReset(); this.out.reset(id, REFUSED_STREAM); return; }
    if (fields === null) {
      this.spendReset();
      this.out.frame(HEADERS, END_STREAM | END_HEADERS, id, this.encoder.encode([':status', '431'], null));
      if (!endStream) this.out.reset(id, NO_ERROR);
      return;
    }
    const headers = requestHeaders(fields);
    if (typeof headers === 'string') { this.spendReset(); this.out.reset(id, PROTOCOL_ERROR); return; }
    const stream = new H2ServerStream(this, id, endStream, headers['content-length']);
    this.streams.set(id, stream);
    if (this.idleTimer) { clearTimeout(this.idleTimer); this.idleTimer = null; }
    if (!this.requested) { this.requested = true; this.opts.onRequest(this.socket); }
    this.opts.onStream(stream, headers);
    if (!endStream) stream.armIdle(this.opts.idleTimeoutMs);
  }

  /** A stream the caller reset, or that was refused or malformed: past the budget, the connection ends. */
  private spendReset(): void {
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
      else if (key === SETTINGS_INITIAL_WINDOW_SIZE) {
        const delta = value - this.peerInitialWindow;
        this.peerInitialWindow = value;
        windowGrew ||= delta > 0;
        // may go below zero (RFC 9113 §6.9.2), not above the largest window
        if (delta !== 0) for (const s of this.streams.values()) if (!s.adjustWindow(delta)) throw new ConnectionError(FLOW_CONTROL_ERROR, 'a stream window over 2^31-1');
      } else if (key === SETTINGS_MAX_FRAME_SIZE) this.peerMaxFrame = value;
    });
    if (!isSettings) return;
    this.gotSettings = true;
    this.out.ack(SETTINGS, null);
    if (windowGrew) for (const s of [...this.streams.values()]) s.sendQueued();
  }

  // ---- writing

  /** A header block for `id`, in HEADERS and CONTINUATION frames as the caller's frame size allows. */
  headerFrames(id: number, pseudo: string[], headers: Record<string, string | string[]> | null, endStream: boolean): void {
    const block = this.encoder.encode(pseudo, headers);
    const flags = endStream ? END_STREAM : 0;
    const max = this.peerMaxFrame;
    if (block.length <= max) { this.out.frame(HEADERS, flags | END_HEADERS, id, block); return; }
    this.out.frame(HEADERS, flags, id, block.subarray(0, max));
    for (let at = max; at < block.length; at += max) {
      const end = Math.min(at + max, block.length);
      this.out.frame(CONTINUATION, end === block.length ? END_HEADERS : 0, id, block.subarray(at, end));
    }
  }

  /** Takes up to `want` bytes of the connection's credit (none: `stream` waits for the next). */
  takeCredit(stream: H2ServerStream, want: number): number {
    const n = Math.min(want, this.sendWindow, this.peerMaxFrame);
    if (n <= 0) { this.blocked.add(stream); return 0; }
    this.sendWindow -= n;
    return n;
  }

  /** The socket has room; else `stream` hears when it has (drained). */
  writable(stream: H2ServerStream): boolean {
    if (this.socket.writableLength < SOCKET_HIGH_WATER) return true;
    this.waitingDrain.add(stream);
    return false;
  }

  /** A stream is over (both sides ended, or reset): its slot is free. */
  done(stream: H2ServerStream): void {
    if (this.streams.get(stream.id) !== stream) return;
    this.streams.delete(stream.id);
    this.blocked.delete(stream);
    this.waitingDrain.delete(stream);
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
    for (const s of [...this.streams.values()]) s.onReset(CANCEL);
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  destroy(): void { this.socket.destroy(); }

  private gone(): void {
    if (this.idleTimer) { clearTimeout(this.idleTimer); this.idleTimer = null; }
    this.broken = true;
    for (const s of [...this.streams.values()]) s.onReset(CANCEL);
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
  private localEnded = false;
  private waitForTrailers = false;
  // ---- the request body
  private held: Buffer[] = [];
  private heldCounted = 0;
  private flowing = false;
  private paused = false;
  private uncredited = 0;
  private recvWindow = STREAM_WINDOW;
  private readonly declared: number;
  private received = 0;
  private emptyData = 0;
  private lastRead = 0;
  private idleTimer: Deadline | null = null;
  // ---- the answer
  private sendWindow: number;
  private queued: Buffer[] | null = null;
  private queuedBytes = 0;
  private endAfter = false;
  private lastData: Buffer | null = null;
  private lastDataFlush = -1;
  private flowWaiting = false;
  private trailersAsked = false;

  constructor(private readonly session: H2ServerSession, readonly id: number, endStream: boolean, contentLength: string | string[] | undefined) {
    super();
    this.remoteEnded = endStream;
    this.declared = typeof contentLength === 'string' ? Number(contentLength) : -1;
    this.sendWindow = session.peerInitialWindow;
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
    this.lastRead = performance.now();
    if (endStream) this.remoteEnded = true;
    if (this.flowing && !this.paused && this.held.length === 0) {
      this.credit(counted);
      if (data.length) this.emit('data', data);
      if (endStream) this.endReading();
      return;
    }
    if (data.length) this.held.push(data);
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
    queueMicrotask(() => { if (!this.paused) this.flushHeld(); });
  }

  private flushHeld(): void {
    while (this.held.length && !this.paused && !this.destroyed) this.emit('data', this.held.shift()!);
    if (this.held.length || this.paused) return;
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
    this.clearIdle();
    this.emit('end');
  }

  /** A request body that stops arriving for `ms` (while it is being read) is cut. */
  armIdle(ms: number): void {
    this.lastRead = performance.now();
    const wait = (left: number): void => {
      this.idleTimer = callDeadlines.start(left, () => {
        this.idleTimer = null;
        if (this.remoteEnded || this.destroyed) return;
        const quiet = performance.now() - this.lastRead;
        // a reader that holds back the body is not the caller's idleness
        if (quiet < ms || this.paused || !this.flowing) wait(Math.max(ms - quiet, 100));
        else this.close(CANCEL);
      });
    };
    wait(ms);
  }

  private clearIdle(): void {
    if (this.idleTimer) { callDeadlines.clear(this.idleTimer); this.idleTimer = null; }
  }

  // ---- the answer

  respond(headers: OutgoingHttpHeaders, options?: { endStream?: boolean; waitForTrailers?: boolean }): void {
    if (this.destroyed || this.closed) throw Object.assign(new Error('the stream is closed'), { code: 'ERR_HTTP2_INVALID_STREAM' });
    if (this.headersSent) throw Object.assign(new Error('the answer\'s headers were sent already'), { code: 'ERR_HTTP2_HEADERS_SENT' });
    const status = headers[':status'] ?? 200;
    const fields = outgoing(headers);
    this.headersSent = true;
    const endStream = options?.endStream === true;
    this.waitForTrailers = options?.waitForTrailers === true;
    this.session.headerFrames(this.id, [':status', String(status)], fields, endStream);
    if (endStream) this.finishWriting();
  }

  write(chunk: Buffer | string): boolean {
    if (this.destroyed || this.localEnded) return false;
    if (!this.headersSent) this.respond({ ':status': 200 });
    let b = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (b.length === 0) return true;
    if (this.queuedBytes === 0) b = this.send(b);
    if (b.length) { (this.queued ??= []).push(b); this.queuedBytes += b.length; }
    if (this.queuedBytes < HIGH_WATER && this.session.writable(this)) return true;
    this.flowWaiting = true;
    return false;
  }

  /** Sends what the windows allow of `chunk` now; returns the rest. */
  private send(chunk: Buffer): Buffer {
    while (chunk.length && this.sendWindow > 0) {
      const n = this.session.takeCredit(this, Math.min(chunk.length, this.sendWindow));
      if (n === 0) break;
      this.sendWindow -= n;
      this.lastData = this.session.out.frame(DATA, 0, this.id, chunk.subarray(0, n));
      this.lastDataFlush = this.session.out.flushes;
      chunk = chunk.subarray(n);
    }
    return chunk;
  }

  /** Credit came: sends what waited, then says drain. */
  sendQueued(): void {
    const q = this.queued;
    if (this.destroyed || !q || this.queuedBytes === 0) return;
    while (q.length) {
      const first = q[0]!;
      const rest = this.send(first);
      this.queuedBytes -= first.length - rest.length;
      if (rest.length) { q[0] = rest; return; }
      q.shift();
    }
    if (this.endAfter) { this.endAfter = false; this.endWriting(); }
    if (this.session.writable(this)) this.drained();
  }

  drained(): void {
    if (!this.flowWaiting || this.destroyed || this.queuedBytes >= HIGH_WATER) return;
    this.flowWaiting = false;
    this.emit('drain');
  }

  adjustWindow(delta: number): boolean {
    this.sendWindow += delta;
    return this.sendWindow <= MAX_WINDOW;
  }

  onWindowUpdate(inc: number): void {
    if (this.destroyed) return;
    if (inc === 0) { this.reset(PROTOCOL_ERROR); return; }
    this.sendWindow += inc;
    if (this.sendWindow > MAX_WINDOW) { this.reset(FLOW_CONTROL_ERROR); return; }
    this.sendQueued();
  }

  end(chunk?: Buffer | string): this {
    if (this.destroyed || this.localEnded || this.endAfter || this.trailersAsked) return this;
    if (chunk !== undefined) this.write(chunk);
    else if (!this.headersSent) this.respond({ ':status': 200 });
    if (this.queuedBytes > 0) this.endAfter = true;
    else this.endWriting();
    return this;
  }

  /** The body is all queued: the trailers are asked for ('wantTrailers'), or END_STREAM goes now. */
  private endWriting(): void {
    if (this.localEnded || this.trailersAsked) return;
    if (this.waitForTrailers) { this.trailersAsked = true; this.emit('wantTrailers'); return; }
    // END_STREAM on the last DATA frame while it is unsent, else on an empty one
    const last = this.lastData;
    if (last && this.lastDataFlush === this.session.out.flushes) last[4] = last[4]! | END_STREAM;
    else this.session.out.frame(DATA, END_STREAM, this.id, null);
    this.finishWriting();
  }

  sendTrailers(headers: OutgoingHttpHeaders): void {
    if (this.destroyed || this.localEnded) throw Object.assign(new Error('the stream is closed'), { code: 'ERR_HTTP2_INVALID_STREAM' });
    this.session.headerFrames(this.id, [], outgoing(headers), true);
    this.finishWriting();
  }

  /** The answer is all queued: the stream is over (the rest of a request body still coming is not wanted: RFC 9113 §8.1). */
  private finishWriting(): void {
    this.localEnded = true;
    this.writableFinished = true;
    this.emit('finish');
    if (!this.remoteEnded) this.session.out.reset(this.id, NO_ERROR);
    this.finishStream();
  }

  // ---- ending

  /** Ends the stream now: RST_STREAM with `code` (NO_ERROR by default) unless both sides had ended. */
  close(code = NO_ERROR): void {
    if (this.destroyed) return;
    if (!(this.localEnded && this.remoteEnded)) this.session.out.reset(this.id, code);
    this.finishStream();
  }

  /** This stream broke the protocol: it is reset (the connection lives on). */
  private reset(code: number): void {
    if (this.destroyed) return;
    this.session.out.reset(this.id, code);
    this.finishStream();
  }

  /** The caller reset it, or the connection ended. */
  onReset(_code: number): void { this.finishStream(); }

  private finishStream(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.closed = true;
    this.clearIdle();
    this.held = [];
    this.queued = null;
    this.queuedBytes = 0;
    this.session.done(this);
    process.nextTick(() => this.emit('close'));
  }
}

/**
 * A request's fields as node:http2 hands them (pseudo-headers included; repeated names joined
 * with ", ", cookies with "; ", set-cookie as an array), or what makes it malformed (RFC 9113
 * §8.2, §8.3.1): an unknown or repeated pseudo-header, one after a regular field, no :method,
 * :scheme or :path (CONNECT is not served), a name that is not a lower-case token, a value
 * with NUL, CR or LF or with whitespace at either end, a connection header, te other than
 * "trailers", a content-length that is not one number.
 */
function requestHeaders(fields: string[]): IncomingHttpHeaders | string {
  const h: IncomingHttpHeaders = {};
  let regular = false;
  for (let i = 0; i < fields.length; i += 2) {
    const k = fields[i]!;
    const v = fields[i + 1]!;
    if (k.charCodeAt(0) === 58 /* ':' */) {
      if (regular || h[k] !== undefined || (k !== ':method' && k !== ':scheme' && k !== ':path' && k !== ':authority')) return `the pseudo-header ${k}`;
      if (UNSAFE_VALUE.test(v)) return `a value of ${k} with NUL, CR or LF`;
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
