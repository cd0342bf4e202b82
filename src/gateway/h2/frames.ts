// What both ends of the gateway's own HTTP/2 share (client.ts towards instances, server.ts
// towards callers): the frame layout (RFC 9113 §4), the limits that keep a hostile peer from
// making the gateway hold unbounded memory or burn CPU, reading frames out of a byte stream,
// assembling header blocks, and writing every frame of an event-loop turn in one write.
import type { Socket } from 'node:net';
import { UNSAFE_VALUE } from '../h1-message.js';
import { HpackError, HpackListTooLarge, type HpackDecoder } from './hpack.js';

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

export const DATA = 0x0, HEADERS = 0x1, PRIORITY = 0x2, RST_STREAM = 0x3, SETTINGS = 0x4, PUSH_PROMISE = 0x5,
  PING = 0x6, GOAWAY = 0x7, WINDOW_UPDATE = 0x8, CONTINUATION = 0x9;
export const END_STREAM = 0x1, ACK = 0x1, END_HEADERS = 0x4, PADDED = 0x8, PRIORITY_FLAG = 0x20;
export const NO_ERROR = 0x0, PROTOCOL_ERROR = 0x1, INTERNAL_ERROR = 0x2, FLOW_CONTROL_ERROR = 0x3, STREAM_CLOSED = 0x5,
  FRAME_SIZE_ERROR = 0x6, REFUSED_STREAM = 0x7, CANCEL = 0x8, COMPRESSION_ERROR = 0x9, ENHANCE_YOUR_CALM = 0xb;
export const SETTINGS_HEADER_TABLE_SIZE = 0x1, SETTINGS_ENABLE_PUSH = 0x2, SETTINGS_MAX_CONCURRENT_STREAMS = 0x3,
  SETTINGS_INITIAL_WINDOW_SIZE = 0x4, SETTINGS_MAX_FRAME_SIZE = 0x5, SETTINGS_MAX_HEADER_LIST_SIZE = 0x6;

export const MAX_WINDOW = 0x7fffffff;
export const MAX_STREAM_ID = 0x7fffffff;
/** What one stream may have in flight towards us: a paused reader holds at most this (in copies of what came). */
export const STREAM_WINDOW = 256 * 1024;
/** The connection's window: streams' credit is what bounds memory; this only has to not be the bottleneck. */
export const CONNECTION_WINDOW = 16 * 1024 * 1024;
/** Frames we accept (the protocol's default; we do not raise it). */
export const MAX_FRAME = 16 * 1024;
/** A header list (or trailers) at most: name + value + 32 per field, as SETTINGS counts it. */
export const MAX_HEADER_LIST = 64 * 1024;
/** A header block across HEADERS and CONTINUATION frames at most, in bytes and in frames (an endless CONTINUATION ends here). */
const MAX_HEADER_BLOCK = 2 * MAX_HEADER_LIST;
const MAX_BLOCK_FRAMES = 64;
/** Settings in one SETTINGS frame at most (there are six kinds; nghttp2 allows 32). */
const MAX_SETTINGS_ENTRIES = 32;
/** Answers (PING and SETTINGS acks) a peer may be owed while it does not read, as nghttp2's max_outbound_ack. */
const MAX_OWED_ACKS = 1000;
/** What may wait in the socket for a peer that does not read, before its connection is cut. */
const MAX_UNREAD = 16 * 1024 * 1024;
/** Empty DATA frames (no byte, no END_STREAM) one stream may send: beyond them it only burns CPU (CVE-2019-9518). */
export const MAX_EMPTY_DATA = 100;

/** Headers that belong to one connection: never in HTTP/2 (te only as "trailers"). */
export const CONNECTION_HEADERS = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'http2-settings', 'host']);
/** A header name as HTTP/2 has them: lower-case token characters (RFC 9113 §8.2.1). */
export const NAME = /^[a-z0-9!#$%&'*+\-.^_`|~]+$/;
export { UNSAFE_VALUE };

/** The peer broke the protocol: the connection ends with a GOAWAY carrying `h2code`. */
export class ConnectionError extends Error {
  constructor(readonly h2code: number, message: string) { super(message); }
}

export function frameHead(length: number, type: number, flags: number, streamId: number): Buffer {
  const h = Buffer.allocUnsafe(9);
  h[0] = length >>> 16; h[1] = (length >>> 8) & 0xff; h[2] = length & 0xff;
  h[3] = type; h[4] = flags;
  h.writeUInt32BE(streamId, 5);
  return h;
}

/**
 * Frames out of a byte stream, as they complete: a frame a read cut is finished with the next
 * read (copying only it). `shared`: the read's buffer is reused once `read` returns (the
 * frame handler copies what it keeps). Throws ConnectionError for a frame over MAX_FRAME.
 */
export class FrameReader {
  private pending: Buffer | null = null;

  constructor(private readonly onFrame: (type: number, flags: number, id: number, payload: Buffer) => void, private readonly shared: boolean) {}

  /** `stop()`: true once the connection is broken (what follows is not read). */
  read(d: Buffer, stop: () => boolean): void {
    let at = 0;
    if (this.pending) {
      const p = this.pending;
      const head = p.length >= 9 ? p : Buffer.concat([p, d.subarray(0, 9 - p.length)]);
      if (head.length < 9) { this.pending = head; return; }
      const total = 9 + frameLength(head, 0);
      at = Math.min(total - p.length, d.length);
      this.pending = null;
      const frame = Buffer.concat([p, d.subarray(0, at)]);
      if (frame.length < total) { this.pending = frame; return; }
      this.frameAt(frame, 0);
    }
    while (d.length - at >= 9 && !stop()) {
      const length = frameLength(d, at);
      if (d.length - at < 9 + length) break;
      this.frameAt(d, at);
      at += 9 + length;
    }
    if (at < d.length && !stop()) this.pending = this.shared ? Buffer.from(d.subarray(at)) : d.subarray(at);
  }

  private frameAt(b: Buffer, at: number): void {
    this.onFrame(b[at + 3]!, b[at + 4]!, b.readUInt32BE(at + 5) & MAX_STREAM_ID, b.subarray(at + 9, at + 9 + frameLength(b, at)));
  }
}

function frameLength(b: Buffer, at: number): number {
  const length = (b[at]! << 16) | (b[at + 1]! << 8) | b[at + 2]!;
  if (length > MAX_FRAME) throw new ConnectionError(FRAME_SIZE_ERROR, `a frame of ${length} bytes (at most ${MAX_FRAME})`);
  return length;
}

/**
 * A header block out of HEADERS and its CONTINUATION frames, within MAX_HEADER_BLOCK bytes
 * and MAX_BLOCK_FRAMES frames; nothing else may come between them.
 */
export class HeaderBlocks {
  private block: { id: number; flags: number; parts: Buffer[]; size: number } | null = null;

  /** `onBlock`: a whole block, with the flags of its HEADERS frame. */
  constructor(private readonly shared: boolean, private readonly onBlock: (id: number, flags: number, block: Buffer) => void) {}

  /** A HEADERS or CONTINUATION frame: a block is handed on once whole. */
  frame(type: number, flags: number, id: number, p: Buffer): void {
    if (type === HEADERS) {
      const block = this.headers(flags, id, p);
      if (block) this.onBlock(id, flags, block);
      return;
    }
    const done = this.continuation(flags, id, p);
    if (done) this.onBlock(id, done.flags, done.block);
  }

  /** A frame other than CONTINUATION: one may not come while a block is open. */
  check(type: number): void {
    if (this.block && type !== CONTINUATION) throw new ConnectionError(PROTOCOL_ERROR, 'a header block was cut by another frame');
  }

  /** A HEADERS frame: its fragment is the whole block (END_HEADERS), else null and CONTINUATION follows. */
  private headers(flags: number, id: number, p: Buffer): Buffer | null {
    let start = 0, end = p.length;
    if (flags & PADDED) { if (p.length < 1) throw new ConnectionError(FRAME_SIZE_ERROR, 'padded HEADERS without its pad length'); end -= p[0]!; start = 1; }
    if (flags & PRIORITY_FLAG) start += 5;
    if (end < start) throw new ConnectionError(PROTOCOL_ERROR, 'padding longer than its frame');
    const fragment = p.subarray(start, end);
    if (flags & END_HEADERS) return fragment;
    this.block = { id, flags, parts: [this.shared ? Buffer.from(fragment) : fragment], size: fragment.length };
    return null;
  }

  /** A CONTINUATION frame: the whole block and its HEADERS' flags once END_HEADERS came, else null. */
  private continuation(flags: number, id: number, p: Buffer): { flags: number; block: Buffer } | null {
    const b = this.block;
    if (!b || b.id !== id) throw new ConnectionError(PROTOCOL_ERROR, 'CONTINUATION without its HEADERS');
    b.size += p.length;
    if (b.size > MAX_HEADER_BLOCK || b.parts.length >= MAX_BLOCK_FRAMES) throw new ConnectionError(ENHANCE_YOUR_CALM, `a header block over ${MAX_HEADER_BLOCK} bytes or ${MAX_BLOCK_FRAMES} frames`);
    b.parts.push(this.shared ? Buffer.from(p) : p);
    if (!(flags & END_HEADERS)) return null;
    this.block = null;
    return { flags: b.flags, block: Buffer.concat(b.parts, b.size) };
  }
}

/** A SETTINGS frame's entries (after checking its shape); an ACK has none. */
export function settingsEntries(flags: number, id: number, p: Buffer, each: (key: number, value: number) => void): boolean {
  if (id !== 0) throw new ConnectionError(PROTOCOL_ERROR, 'SETTINGS on a stream');
  if (flags & ACK) {
    if (p.length !== 0) throw new ConnectionError(FRAME_SIZE_ERROR, 'a SETTINGS ACK with a payload');
    return false;
  }
  if (p.length % 6 !== 0) throw new ConnectionError(FRAME_SIZE_ERROR, 'SETTINGS not a multiple of 6 bytes');
  if (p.length / 6 > MAX_SETTINGS_ENTRIES) throw new ConnectionError(ENHANCE_YOUR_CALM, `over ${MAX_SETTINGS_ENTRIES} settings in one frame`);
  for (let at = 0; at < p.length; at += 6) {
    const key = p.readUInt16BE(at);
    const value = p.readUInt32BE(at + 2);
    if (key === SETTINGS_INITIAL_WINDOW_SIZE && value > MAX_WINDOW) throw new ConnectionError(FLOW_CONTROL_ERROR, 'an initial window over 2^31-1');
    if (key === SETTINGS_MAX_FRAME_SIZE && (value < 16_384 || value > 0xffffff)) throw new ConnectionError(PROTOCOL_ERROR, `a max frame size of ${value}`);
    each(key, value);
  }
  return true;
}

/** Settings as a SETTINGS payload. */
export function settingsPayload(entries: Array<[number, number]>): Buffer {
  const p = Buffer.allocUnsafe(6 * entries.length);
  entries.forEach(([k, v], i) => { p.writeUInt16BE(k, 6 * i); p.writeUInt32BE(v, 6 * i + 2); });
  return p;
}

/**
 * Frames on their way out: every frame queued in one event-loop turn goes in one write.
 * `onUnread` hears when the peer leaves more than MAX_UNREAD unread (its connection is to be cut).
 */
export class FrameWriter {
  /** Writes so far: a frame queued since the last is still unsent (its flags may still change). */
  flushes = 0;
  private out: Buffer[] = [];
  private outBytes = 0;

  /** Bytes queued and not written yet (they go at the end of this turn). */
  get queuedBytes(): number { return this.outBytes; }
  private flushing: NodeJS.Immediate | null = null;
  private owedAcks = 0;

  constructor(private readonly socket: Socket, private readonly onUnread: (bytes: number) => void) {}

  /** Queues a frame; returns its head (a caller may still set END_STREAM on it until the next flush). */
  frame(type: number, flags: number, id: number, payload: Buffer | null): Buffer {
    const head = frameHead(payload ? payload.length : 0, type, flags, id);
    this.queue(head);
    if (payload && payload.length) this.queue(payload);
    return head;
  }

  queue(b: Buffer): void {
    this.out.push(b);
    this.outBytes += b.length;
    this.flushing ??= setImmediate(this.flush);
  }

  readonly flush = (): void => {
    if (this.flushing) { clearImmediate(this.flushing); this.flushing = null; }
    const out = this.out;
    const bytes = this.outBytes;
    this.out = [];
    this.outBytes = 0;
    this.flushes++;
    if (out.length === 0 || this.socket.destroyed) return;
    if (out.length === 1) this.socket.write(out[0]!);
    else if (bytes <= 64 * 1024) this.socket.write(Buffer.concat(out, bytes));
    else {
      this.socket.cork(); // large bodies: no copy, one writev
      for (const b of out) this.socket.write(b);
      this.socket.uncork();
    }
    if (this.socket.writableLength > MAX_UNREAD) this.onUnread(this.socket.writableLength);
  };

  /** Drops what is queued and not written (a broken connection says only why, in its GOAWAY). */
  discard(): void {
    this.out = [];
    this.outBytes = 0;
  }

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

  goaway(lastStreamId: number, code: number): void {
    const p = Buffer.alloc(8);
    p.writeUInt32BE(lastStreamId, 0);
    p.writeUInt32BE(code, 4);
    this.frame(GOAWAY, 0, 0, p);
  }

  /** An answer the peer asked for (an ack): one that asks for many and reads none is cut off. */
  ack(type: number, payload: Buffer | null): void {
    if (this.socket.writableLength === 0) this.owedAcks = 0;
    else if (++this.owedAcks > MAX_OWED_ACKS) throw new ConnectionError(ENHANCE_YOUR_CALM, `over ${MAX_OWED_ACKS} acks asked for and not read`);
    this.frame(type, ACK, 0, payload);
  }
}

/** A PING frame's answer (its 8 bytes back), checked. */
export function onPing(flags: number, id: number, p: Buffer, out: FrameWriter): void {
  if (id !== 0 || p.length !== 8) throw new ConnectionError(id !== 0 ? PROTOCOL_ERROR : FRAME_SIZE_ERROR, 'a malformed PING');
  if (!(flags & ACK)) out.ack(PING, Buffer.from(p));
}

/** A WINDOW_UPDATE's increment, checked. */
export function windowIncrement(p: Buffer): number {
  if (p.length !== 4) throw new ConnectionError(FRAME_SIZE_ERROR, 'WINDOW_UPDATE not 4 bytes');
  return p.readUInt32BE(0) & MAX_WINDOW;
}

/** A RST_STREAM frame's error code, checked. */
export function resetCode(p: Buffer): number {
  if (p.length !== 4) throw new ConnectionError(FRAME_SIZE_ERROR, 'RST_STREAM not 4 bytes');
  return p.readUInt32BE(0);
}

/** A PRIORITY frame, checked and otherwise ignored (RFC 9113 deprecates the scheme). */
export function checkPriority(id: number, p: Buffer): void {
  if (id === 0) throw new ConnectionError(PROTOCOL_ERROR, 'PRIORITY on stream 0');
  if (p.length !== 5) throw new ConnectionError(FRAME_SIZE_ERROR, 'PRIORITY not 5 bytes');
}

/** A header block's fields; null when the list is over the decoder's limit (decoded all the same: the table stays in step). */
export function decodeBlock(decoder: HpackDecoder, block: Buffer): string[] | null {
  try {
    return decoder.decode(block);
  } catch (err) {
    if (err instanceof HpackListTooLarge) return null;
    if (err instanceof HpackError) throw new ConnectionError(COMPRESSION_ERROR, `an undecodable header block (${err.message})`);
    throw err;
  }
}

/**
 * The connection's receive window, at either end: DATA on any stream, padding included, spends
 * it; it is topped up once half is spent (what bounds memory is each stream's window).
 */
export class ReceiveWindow {
  private left = CONNECTION_WINDOW;

  /** Opens the window from the protocol's 65,535 to CONNECTION_WINDOW. */
  constructor(private readonly out: FrameWriter) {
    out.windowUpdate(0, CONNECTION_WINDOW - 65_535);
  }

  /** A DATA frame's payload: spends the window; returns its data without the padding. */
  data(flags: number, p: Buffer): Buffer {
    this.left -= p.length;
    if (this.left < 0) throw new ConnectionError(FLOW_CONTROL_ERROR, 'DATA beyond the connection window');
    if (this.left <= CONNECTION_WINDOW / 2) { this.out.windowUpdate(0, CONNECTION_WINDOW - this.left); this.left = CONNECTION_WINDOW; }
    return unpadded(flags, p);
  }
}

/** A DATA frame's data without its padding (flow control counts the whole payload). */
function unpadded(flags: number, p: Buffer): Buffer {
  if (!(flags & PADDED)) return p;
  if (p.length < 1 || p[0]! >= p.length) throw new ConnectionError(PROTOCOL_ERROR, 'padding longer than its frame');
  return p.subarray(1, p.length - p[0]!);
}

/** Unwritten bytes in a socket past which a stream's writer waits for it to drain. */
const SOCKET_HIGH_WATER = 1024 * 1024;

/** A stream that sends DATA: told when credit came (sendQueued) or the socket drained. */
export interface Sender { sendQueued(): void; drained(): void }

/**
 * A connection's side of sending, at either end: its send window, the peer's frame size and
 * initial stream window, header blocks split into frames, and the streams waiting for the
 * connection's credit or for the socket to drain.
 */
export class SendCredit<S extends Sender> {
  window = 65_535;
  peerInitialWindow = 65_535;
  peerMaxFrame = 16_384;
  private readonly blocked = new Set<S>();
  private readonly waitingDrain = new Set<S>();

  constructor(readonly out: FrameWriter, private readonly socket: Socket) {}

  /** Takes up to `want` bytes of the connection's credit (none: `stream` is told when more comes). */
  take(stream: S, want: number): number {
    const n = Math.min(want, this.window, this.peerMaxFrame);
    if (n <= 0) { this.blocked.add(stream); return 0; }
    this.window -= n;
    return n;
  }

  /** A connection WINDOW_UPDATE: the streams that waited for credit send. */
  grow(inc: number): void {
    if (inc === 0) throw new ConnectionError(PROTOCOL_ERROR, 'a connection WINDOW_UPDATE of 0');
    this.window += inc;
    if (this.window > MAX_WINDOW) throw new ConnectionError(FLOW_CONTROL_ERROR, 'the connection window over 2^31-1');
    if (this.blocked.size === 0) return;
    const blocked = [...this.blocked];
    this.blocked.clear();
    for (const s of blocked) s.sendQueued();
  }

  /** The socket has room (backpressure beyond flow control); else `stream` is told when it drains. */
  writable(stream: S): boolean {
    if (this.socket.writableLength + this.out.queuedBytes < SOCKET_HIGH_WATER) return true;
    this.waitingDrain.add(stream);
    return false;
  }

  /** The socket drained. */
  drained(): void {
    const waiting = [...this.waitingDrain];
    this.waitingDrain.clear();
    for (const s of waiting) s.drained();
  }

  /**
   * The peer's SETTINGS_INITIAL_WINDOW_SIZE: every stream's window moves by the difference (it
   * may go below zero, RFC 9113 §6.9.2, not past 2^31-1); true when they grew (they may send now).
   */
  initialWindow(value: number, streams: Iterable<{ outflow: Outflow<S> }>): boolean {
    const delta = value - this.peerInitialWindow;
    this.peerInitialWindow = value;
    if (delta !== 0) for (const s of streams) if (!s.outflow.grow(delta)) throw new ConnectionError(FLOW_CONTROL_ERROR, 'a stream window over 2^31-1');
    return delta > 0;
  }

  /** The stream is over: it waits for nothing any more. */
  forget(stream: S): void {
    this.blocked.delete(stream);
    this.waitingDrain.delete(stream);
  }

  /** A header block for `id`, in HEADERS and CONTINUATION frames as the peer's frame size allows. */
  headers(id: number, block: Buffer, flags: number): void {
    const max = this.peerMaxFrame;
    if (block.length <= max) { this.out.frame(HEADERS, flags | END_HEADERS, id, block); return; }
    this.out.frame(HEADERS, flags, id, block.subarray(0, max));
    for (let at = max; at < block.length; at += max) {
      const end = Math.min(at + max, block.length);
      this.out.frame(CONTINUATION, end === block.length ? END_HEADERS : 0, id, block.subarray(at, end));
    }
  }
}

/** A stream's outgoing DATA under flow control: what the windows allow goes now, the rest waits for credit. */
export class Outflow<S extends Sender> {
  window: number;
  /** Bytes waiting for credit. */
  queuedBytes = 0;
  private queued: Buffer[] = [];
  /** The last DATA frame's head and the write it goes out with: END_STREAM may still be set on it while unsent. */
  private lastData: Buffer | null = null;
  private lastDataFlush = -1;

  constructor(private readonly conn: SendCredit<S>, private readonly stream: S, private readonly id: number) {
    this.window = conn.peerInitialWindow;
  }

  /** Sends what the windows allow of `chunk` now and queues the rest. */
  push(chunk: Buffer): void {
    if (this.queuedBytes === 0) chunk = this.send(chunk);
    if (chunk.length) { this.queued.push(chunk); this.queuedBytes += chunk.length; }
  }

  /** Sends what waited, as far as credit allows; true once nothing waits. */
  flush(): boolean {
    const q = this.queued;
    while (q.length) {
      const first = q[0]!;
      const rest = this.send(first);
      this.queuedBytes -= first.length - rest.length;
      if (rest.length) { q[0] = rest; return false; }
      q.shift();
    }
    return true;
  }

  private send(chunk: Buffer): Buffer {
    while (chunk.length && this.window > 0) {
      const n = this.conn.take(this.stream, Math.min(chunk.length, this.window));
      if (n === 0) break;
      this.window -= n;
      this.lastData = this.conn.out.frame(DATA, 0, this.id, chunk.subarray(0, n));
      this.lastDataFlush = this.conn.out.flushes;
      chunk = chunk.subarray(n);
    }
    return chunk;
  }

  /** END_STREAM: on the last DATA frame while it is unsent, else on an empty one. */
  end(): void {
    const last = this.lastData;
    this.lastData = null;
    if (last && this.lastDataFlush === this.conn.out.flushes) last[4] = last[4]! | END_STREAM;
    else this.conn.out.frame(DATA, END_STREAM, this.id, null);
  }

  /** The window moves by `delta` (a WINDOW_UPDATE, or a SETTINGS change); false once past 2^31-1. */
  grow(delta: number): boolean {
    this.window += delta;
    return this.window <= MAX_WINDOW;
  }

  clear(): void {
    this.queued = [];
    this.queuedBytes = 0;
  }
}
