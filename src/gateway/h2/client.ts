// The gateway's HTTP/2 client towards instances (image nodes speaking h2c or gRPC, another
// gateway worker's relay socket): frames and HPACK on a raw socket, one object per stream,
// no Duplex, no per-stream C++ handle. node:http2's client cost more than half of a proxied
// gRPC call's CPU (docs/benchmarks.md); this one does what the proxy needs and treats what an
// instance sends as hostile: a peer that breaks the protocol loses its connection
// (UPSTREAM_PROTOCOL) or the stream, never the gateway, and cannot make it hold unbounded memory.
//   - flow control both ways: a paused answer stops crediting its stream (the instance
//     stops at the window); a request body waits for the instance's credit;
//   - the instance's SETTINGS (concurrent streams: calls beyond them wait here; initial
//     window; frame size; header table size), PING, GOAWAY, RST_STREAM;
//   - a call the instance did not process (a stream above a GOAWAY's last id, REFUSED_STREAM,
//     one still waiting when the connection retires) goes to the next connection, if no byte
//     of its body was taken yet;
//   - an answer is checked as RFC 9113 §8 asks (names, values, a content-length held to) before
//     any of it reaches a caller, some of whom are on HTTP/1.1;
//   - frames written in one event-loop turn go out in one write.
import type { Socket } from 'node:net';
import { HpackDecoder, HpackEncoder } from './hpack.js';
import { MessageBody, closedError, isHeader } from '../h1-message.js';
import {
  ACK, CANCEL, CONNECTION_HEADERS, CONTINUATION, ConnectionError, DATA, END_STREAM, ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR,
  FrameReader, FrameWriter, GOAWAY, HEADERS, HeaderBlocks, MAX_EMPTY_DATA, MAX_HEADER_LIST, MAX_STREAM_ID, NAME, NO_ERROR,
  Outflow, PING, PREFACE, PRIORITY, PROTOCOL_ERROR, PUSH_PROMISE, REFUSED_STREAM, RST_STREAM, ReceiveWindow, SETTINGS,
  SETTINGS_ENABLE_PUSH, SETTINGS_HEADER_TABLE_SIZE, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS,
  SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE, STREAM_WINDOW, SendCredit, UNSAFE_VALUE, WINDOW_UPDATE, checkPriority,
  decodeBlock, onPing, resetCode, settingsEntries, settingsPayload, windowIncrement,
} from './frames.js';
import { callDeadlines, type Deadline } from '../deadlines.js';
import { connectReading, type BodySink, type Upstream, type UpstreamRequest, type UpstreamResponse } from '../upstream.js';
import type { Endpoint } from '../../worker/protocol.js';

/** How often a call the instance did not process is tried again on a new stream. */
const MAX_REQUEUES = 3;

const protocolError = (message: string): Error => Object.assign(new Error(`the instance broke HTTP/2: ${message}`), { code: 'UPSTREAM_PROTOCOL' });

/**
 * HTTP/2 (h2c, gRPC) to one instance: one connection at a time, the gateway's own client
 * (below). A connection that takes no new stream (GOAWAY, an error) is replaced for the
 * next call, and the calls it did not process go there, while its running streams finish.
 */
export class H2Upstream implements Upstream {
  readonly protocol = 'http2';
  private session: H2ClientSession | null = null;
  /** Connections that retired with streams still running: close() ends them too. */
  private readonly retired = new Set<H2ClientSession>();
  private closed = false;

  constructor(private readonly endpoint: Endpoint) {}

  request(r: UpstreamRequest): Promise<UpstreamResponse> {
    return new Promise((resolve, reject) => this.start({ r, resolve, reject, requeues: 0 }));
  }

  private readonly start = (call: H2Call): void => {
    if (this.closed) { call.reject(Object.assign(new Error('upstream closed'), { code: 'ECONNREFUSED' })); return; }
    this.session ??= new H2ClientSession(this.endpoint, this.start, (s) => {
      if (this.session === s) this.session = null;
      this.retired.add(s);
      s.whenClosed(() => this.retired.delete(s));
    });
    this.session.start(call);
  };

  close(): void {
    this.closed = true;
    this.session?.destroy();
    for (const s of this.retired) s.destroy();
  }
}

/** A call on its way to a stream: `requeues`, how often an instance turned it away unprocessed. */
interface H2Call { r: UpstreamRequest; resolve: (res: UpstreamResponse) => void; reject: (err: unknown) => void; requeues: number }

/** A call waiting for a stream (the instance's SETTINGS_MAX_CONCURRENT_STREAMS are all taken). */
interface Waiting extends H2Call { onAbort: () => void }

/**
 * One connection to an instance; `closed` once it takes no new stream (GOAWAY, an error, ids
 * used up). `requeue` takes the calls it could not carry that may go to the next connection.
 */
class H2ClientSession {
  closed = false;
  private readonly socket: Socket;
  private readonly authority: string;
  private readonly encoder = new HpackEncoder();
  private readonly decoder = new HpackDecoder(4096, MAX_HEADER_LIST);
  private readonly streams = new Map<number, H2ClientStream>();
  private readonly waiting: Waiting[] = [];
  private nextId = 1;
  /** Streams the instance took before its GOAWAY (ids above it never reached it). */
  private lastAccepted = MAX_STREAM_ID;
  /** Until its first SETTINGS, one stream: a limit below what we guessed would refuse a cold burst. */
  private peerMaxStreams = 1;
  readonly credit: SendCredit<H2ClientStream>;
  private readonly recvWindow: ReceiveWindow;
  private gotSettings = false;
  /** Reads land in a buffer all upstream connections share (connectReading): what is kept is copied. */
  private readonly reader = new FrameReader((type, flags, id, p) => this.onFrame(type, flags, id, p), true);
  private readonly blocks = new HeaderBlocks(true, (id, flags, block) => this.onHeaderBlock(id, flags, block));
  /** Streams whose answer began or went on in this read: their idle deadline is armed after it. */
  private readonly touched: H2ClientStream[] = [];
  readonly out: FrameWriter;
  private socketError: Error | null = null;
  /** The protocol broke: nothing more is read, and nothing written but the GOAWAY saying why. */
  private broken = false;

  constructor(endpoint: { path?: string; host?: string; port?: number }, private readonly requeue: (call: H2Call) => void,
    private readonly onRetire: (s: H2ClientSession) => void) {
    this.authority = endpoint.path ? 'localhost' : `${endpoint.host ?? '127.0.0.1'}:${endpoint.port}`;
    this.socket = connectReading(endpoint.path ? { path: endpoint.path } : { host: endpoint.host ?? '127.0.0.1', port: endpoint.port! }, (d) => this.onData(d));
    this.socket.unref(); // an idle connection does not keep the process alive
    this.out = new FrameWriter(this.socket, (bytes) => {
      if (!this.broken) this.connectionError(ENHANCE_YOUR_CALM, protocolError(`it left ${bytes} bytes unread`));
    });
    this.credit = new SendCredit(this.out, this.socket);
    this.out.queue(PREFACE);
    this.out.frame(SETTINGS, 0, 0, settingsPayload([[SETTINGS_ENABLE_PUSH, 0], [SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW], [SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST]]));
    this.recvWindow = new ReceiveWindow(this.out);
    this.socket.on('drain', () => this.credit.drained());
    this.socket.on('error', (err) => { this.socketError = err; });
    this.socket.once('close', () => this.gone(this.socketError ?? closedError('the connection to the instance closed')));
  }

  /** Starts the call's stream now, or once the instance has a stream free for it. */
  start(call: H2Call): void {
    const { r } = call;
    if (r.signal.aborted) { call.reject(abortReason(r)); return; }
    if (this.streams.size < this.peerMaxStreams) { this.open(call); return; }
    const w: Waiting = { ...call, onAbort: () => {
      const i = this.waiting.indexOf(w);
      if (i !== -1) { this.waiting.splice(i, 1); call.reject(abortReason(r)); }
    } };
    r.signal.addEventListener('abort', w.onAbort, { once: true });
    this.waiting.push(w);
  }

  private open(call: H2Call): void {
    const { r } = call;
    let h = r.headers;
    for (const k in h) {
      const v = h[k]!;
      if (typeof v === 'string' ? UNSAFE_VALUE.test(v) : v.some((one) => UNSAFE_VALUE.test(one))) {
        call.reject(Object.assign(new Error(`header ${k} has a value that cannot be sent`), { code: 'ERR_INVALID_CHAR' }));
        return;
      }
      if (CONNECTION_HEADERS.has(k) && (k !== 'te' || v !== 'trailers')) h = withoutConnectionHeaders(h); // HTTP/2 has none (RFC 9113 §8.2.2)
    }
    const id = this.nextId;
    this.nextId += 2;
    const stream = new H2ClientStream(this, id, call);
    this.streams.set(id, stream);
    const block = this.encoder.encode([':method', r.method, ':scheme', r.scheme ?? 'http', ':authority', r.authority ?? this.authority, ':path', r.path], h);
    this.credit.headers(id, block, r.body === null ? END_STREAM : 0);
    if (r.body === null) stream.localEnded = true;
    stream.begin();
    if (this.nextId > MAX_STREAM_ID) this.retire(null); // ids used up: the next call opens a new connection
  }

  /** A stream is done (both ends closed, reset or failed): its slot goes to the next waiting call. */
  done(stream: H2ClientStream): void {
    if (this.streams.get(stream.id) !== stream) return;
    this.streams.delete(stream.id);
    this.credit.forget(stream);
    this.startWaiting();
    if (this.closed && this.streams.size === 0) this.end();
  }

  private startWaiting(): void {
    while (this.waiting.length && this.streams.size < this.peerMaxStreams && !this.closed) {
      const w = this.waiting.shift()!;
      w.r.signal.removeEventListener('abort', w.onAbort);
      this.open(w);
    }
  }

  /** A call the instance did not process goes to the next connection, while its body is whole and it was not turned away too often. */
  unprocessed(call: H2Call, why: Error): void {
    if (call.requeues >= MAX_REQUEUES || (call.r.body !== null && call.r.body.bytes > 0)) { call.reject(why); return; }
    call.requeues++;
    this.requeue(call);
  }

  // ---- reading

  /** A read, in the shared buffer (connectReading). */
  private onData(d: Buffer): void {
    if (this.broken) return;
    try {
      // the first bytes say what it is: not HTTP/2 at all (an HTTP/1.1 server answers text)
      if (!this.gotSettings && d.toString('latin1', 0, 5) === 'HTTP/') throw new ConnectionError(PROTOCOL_ERROR, 'it answered HTTP/1.x');
      this.reader.read(d, () => this.broken);
    } catch (err) {
      if (!(err instanceof ConnectionError)) throw err;
      this.connectionError(err.h2code, protocolError(err.message));
    } finally {
      this.armTouched();
    }
  }

  private armTouched(): void {
    const t = this.touched;
    for (let i = 0; i < t.length; i++) t[i]!.armIdle();
    t.length = 0;
  }

  touch(stream: H2ClientStream): void { this.touched.push(stream); }

  /** A stream id the instance may name: one we opened (else the connection is broken). */
  private ours(id: number, what: string): void {
    if (id === 0 || (id & 1) === 0 || id >= this.nextId) throw new ConnectionError(PROTOCOL_ERROR, `${what} on stream ${id}, which the gateway did not open`);
  }

  private onFrame(type: number, flags: number, id: number, p: Buffer): void {
    if (!this.gotSettings && type !== SETTINGS) throw new ConnectionError(PROTOCOL_ERROR, 'its first frame is not SETTINGS');
    this.blocks.check(type);
    switch (type) {
      case DATA: return this.onDataFrame(flags, id, p);
      case HEADERS: {
        this.ours(id, 'HEADERS');
        return this.blocks.frame(type, flags, id, p);
      }
      case CONTINUATION: return this.blocks.frame(type, flags, id, p);
      case PRIORITY: return checkPriority(id, p);
      case RST_STREAM: {
        const code = resetCode(p);
        this.ours(id, 'RST_STREAM');
        this.streams.get(id)?.onReset(code);
        return;
      }
      case SETTINGS: return this.onSettings(flags, id, p);
      case PUSH_PROMISE: throw new ConnectionError(PROTOCOL_ERROR, 'PUSH_PROMISE, which the gateway disabled');
      case PING: return onPing(flags, id, p, this.out);
      case GOAWAY: {
        if (id !== 0 || p.length < 8) throw new ConnectionError(PROTOCOL_ERROR, 'a malformed GOAWAY');
        this.lastAccepted = Math.min(this.lastAccepted, p.readUInt32BE(0) & MAX_STREAM_ID);
        const why = closedError('the instance closed the connection (GOAWAY) before taking the stream');
        this.retire(null);
        for (const s of [...this.streams.values()]) if (s.id > this.lastAccepted) s.unprocessed(why);
        if (this.streams.size === 0) this.end();
        return;
      }
      case WINDOW_UPDATE: {
        const inc = windowIncrement(p);
        if (id === 0) return this.credit.grow(inc);
        this.ours(id, 'WINDOW_UPDATE');
        this.streams.get(id)?.onWindowUpdate(inc);
        return;
      }
      default: return; // unknown frame types are ignored (RFC 9113 §4.1)
    }
  }

  private onDataFrame(flags: number, id: number, p: Buffer): void {
    this.ours(id, 'DATA');
    const data = this.recvWindow.data(flags, p);
    // a stream reset here already: its late frames are dropped
    this.streams.get(id)?.onData(data, p.length, (flags & END_STREAM) !== 0);
  }

  private onHeaderBlock(id: number, flags: number, block: Buffer): void {
    const fields = decodeBlock(this.decoder, block);
    const stream = this.streams.get(id);
    if (!stream) return; // reset here already: decoded only to keep the table in step
    if (fields === null) { stream.streamError(PROTOCOL_ERROR, `headers over ${MAX_HEADER_LIST} bytes`); return; }
    stream.onHeaders(fields, (flags & END_STREAM) !== 0);
  }


  private onSettings(flags: number, id: number, p: Buffer): void {
    const streamsBefore = this.gotSettings ? this.peerMaxStreams : 1;
    if (!this.gotSettings && !(flags & ACK)) { this.gotSettings = true; this.peerMaxStreams = 100; } // the instance's own limit, or RFC 9113's suggested floor
    let windowGrew = false;
    const isSettings = settingsEntries(flags, id, p, (key, value) => {
      if (key === SETTINGS_HEADER_TABLE_SIZE) this.encoder.setPeerMaxTableSize(value);
      else if (key === SETTINGS_ENABLE_PUSH) { if (value !== 0) throw new ConnectionError(PROTOCOL_ERROR, 'a server may not enable push'); }
      else if (key === SETTINGS_MAX_CONCURRENT_STREAMS) this.peerMaxStreams = value;
      else if (key === SETTINGS_INITIAL_WINDOW_SIZE) windowGrew = this.credit.initialWindow(value, this.streams.values()) || windowGrew;
      else if (key === SETTINGS_MAX_FRAME_SIZE) this.credit.peerMaxFrame = value;
    });
    if (!isSettings) return;
    this.out.ack(SETTINGS, null);
    if (windowGrew) for (const s of [...this.streams.values()]) s.sendQueued();
    if (this.peerMaxStreams > streamsBefore) this.startWaiting();
  }

  // ---- ending

  /**
   * No new streams here (those running finish). What waits for a stream goes to the next
   * connection, or fails with `err` when this one failed (refused, reset: the instance is likely gone).
   */
  private retire(err: Error | null): void {
    if (!this.closed) { this.closed = true; this.onRetire(this); }
    for (const w of this.waiting.splice(0)) {
      w.r.signal.removeEventListener('abort', w.onAbort);
      if (err) w.reject(err);
      else this.unprocessed(w, closedError('the connection to the instance retired'));
    }
  }

  whenClosed(cb: () => void): void { this.socket.once('close', cb); }

  /** The protocol is broken: every stream fails with `err`, the instance is told why, the connection ends. */
  private connectionError(code: number, err: Error): void {
    this.broken = true;
    this.out.discard();
    this.out.goaway(0, code);
    this.out.flush();
    this.closeSocket();
    this.gone(err);
  }

  /** Ends the socket, and destroys it if the instance does not close its side soon. */
  private closeSocket(): void {
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  /** The connection is over: whatever still runs fails with `err`. */
  private gone(err: Error): void {
    this.retire(err);
    for (const s of [...this.streams.values()]) s.fail(err);
  }

  /** Ends the connection once nothing runs on it (GOAWAY first, as a polite client does). */
  private end(): void {
    if (this.socket.destroyed || this.broken || this.socket.writableEnded) return;
    this.out.goaway(0, NO_ERROR);
    this.out.flush();
    this.closeSocket();
  }

  /** Closes the connection now: every stream fails. */
  destroy(): void {
    this.gone(closedError('the gateway closed its connection to the instance'));
    this.socket.destroy();
  }
}

const abortReason = (r: UpstreamRequest): Error => (r.signal.reason instanceof Error ? r.signal.reason : new Error('aborted'));

function withoutConnectionHeaders(h: Record<string, string | string[]>): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const k in h) if (!CONNECTION_HEADERS.has(k) || (k === 'te' && h[k] === 'trailers')) out[k] = h[k]!;
  return out;
}

/** One exchange: the request's body goes out through it (BodySink), the answer comes back as a MessageBody. */
class H2ClientStream implements BodySink {
  localEnded = false;
  private remoteEnded = false;
  private finished = false;
  private response = false;
  private readonly r: UpstreamRequest;
  readonly outflow: Outflow<H2ClientStream>;
  /** How much the instance may still send on this stream, and what it sent that was not credited back yet. */
  private recvWindow = STREAM_WINDOW;
  private uncredited = 0;
  private holding = false;
  /** end() came while some of the body waited for credit. */
  private endAfter = false;
  private body: MessageBody | null = null;
  /** The answer's declared length (-1: none), and the body bytes it has sent. */
  private declared = -1;
  private received = 0;
  private emptyData = 0;
  private endTrailers: ((t: Record<string, string | string[]>) => void) | null = null;
  private drainListener: (() => void) | null = null;
  private closeListener: (() => void) | null = null;
  private idleTimer: Deadline | null = null;
  private lastRead = 0;
  private readonly onAbort = (): void => {
    if (this.finished) return;
    this.session.out.reset(this.id, CANCEL);
    this.fail(abortReason(this.r));
  };

  private call: H2Call | null;

  constructor(private readonly session: H2ClientSession, readonly id: number, call: H2Call) {
    this.call = call;
    this.r = call.r;
    this.outflow = new Outflow(session.credit, this, id);
  }

  begin(): void {
    this.r.signal.addEventListener('abort', this.onAbort, { once: true });
    this.r.body?.pipeTo(this);
  }

  // ---- the request body (BodySink)

  write(chunk: Buffer): boolean {
    if (this.finished || this.localEnded || chunk.length === 0) return true;
    this.outflow.push(chunk);
    if (this.outflow.queuedBytes > 0) return false; // drain when credit comes
    return this.session.credit.writable(this);
  }

  /** Credit came (the stream's or the connection's): sends what waited, then says drain. */
  sendQueued(): void {
    if (this.finished || this.outflow.queuedBytes === 0 || !this.outflow.flush()) return;
    if (this.endAfter) { this.endAfter = false; this.end(); }
    if (this.session.credit.writable(this)) this.drained();
  }

  drained(): void { if (!this.finished) this.drainListener?.(); }

  end(): void {
    if (this.finished || this.localEnded) return;
    if (this.outflow.queuedBytes > 0) { this.endAfter = true; return; }
    this.localEnded = true;
    this.outflow.end();
    if (this.remoteEnded) this.finish();
  }

  destroy(err: Error): void {
    if (this.finished) return;
    this.session.out.reset(this.id, CANCEL);
    this.fail(err);
  }

  // one body writes into a stream at a time (RequestBody.pipeTo): one listener of each
  on(_event: 'drain', listener: () => void): this { this.drainListener = listener; return this; }
  once(_event: 'close', listener: () => void): this { this.closeListener = listener; return this; }
  off(event: 'drain' | 'close', listener: () => void): this {
    if (event === 'drain' && this.drainListener === listener) this.drainListener = null;
    if (event === 'close' && this.closeListener === listener) this.closeListener = null;
    return this;
  }

  onWindowUpdate(inc: number): void {
    if (this.finished) return;
    if (inc === 0) { this.streamError(PROTOCOL_ERROR, 'a stream WINDOW_UPDATE of 0'); return; }
    if (!this.outflow.grow(inc)) { this.streamError(FLOW_CONTROL_ERROR, 'a stream window over 2^31-1'); return; }
    this.sendQueued();
  }

  // ---- the answer

  onHeaders(fields: string[], endStream: boolean): void {
    if (this.remoteEnded || this.finished) return;
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
      const length = headers['content-length'];
      if (length !== undefined && this.r.method !== 'HEAD' && status !== 204 && status !== 304) this.declared = Number(length);
      if (endStream && this.declared > 0) { this.streamError(PROTOCOL_ERROR, `no body where content-length says ${this.declared} bytes`); return; }
      this.response = true;
      const body = this.body = new MessageBody(this, (err) => this.destroy(err));
      const trailers = new Promise<Record<string, string | string[]>>((res) => { this.endTrailers = res; });
      const call = this.call!;
      this.call = null;
      call.resolve({ status, headers, body, trailers, headersOnly: endStream });
      if (endStream) this.remoteEnd({});
      else { this.lastRead = performance.now(); this.session.touch(this); } // the body is still to come
      return;
    }
    if (!endStream) { this.streamError(PROTOCOL_ERROR, 'trailers without END_STREAM'); return; }
    const trailers: Record<string, string | string[]> = {};
    const bad = collect(fields, trailers, false) ?? this.shortOfLength();
    if (bad) { this.streamError(PROTOCOL_ERROR, bad); return; }
    this.remoteEnd(trailers);
  }

  onData(data: Buffer, counted: number, endStream: boolean): void {
    if (this.remoteEnded || this.finished) return;
    if (!this.response) { this.streamError(PROTOCOL_ERROR, 'DATA before the answer\'s headers'); return; }
    this.recvWindow -= counted;
    if (this.recvWindow < 0) { this.streamError(FLOW_CONTROL_ERROR, 'DATA beyond the stream window'); return; }
    this.uncredited += counted;
    this.received += data.length;
    if (this.declared >= 0 && this.received > this.declared) { this.streamError(PROTOCOL_ERROR, `more body than its content-length of ${this.declared}`); return; }
    if (data.length) { this.lastRead = performance.now(); this.body!.push(Buffer.from(data)); } // out of the shared read buffer
    else if (!endStream && ++this.emptyData > MAX_EMPTY_DATA) { this.streamError(ENHANCE_YOUR_CALM, `over ${MAX_EMPTY_DATA} empty DATA frames`); return; }
    if (endStream) {
      const bad = this.shortOfLength();
      if (bad) { this.streamError(PROTOCOL_ERROR, bad); return; }
      this.remoteEnd({});
      return;
    }
    this.credit();
  }

  private shortOfLength(): string | null {
    return this.declared >= 0 && this.received !== this.declared ? `a body of ${this.received} bytes where content-length says ${this.declared}` : null;
  }

  /** Gives the instance back the credit its delivered bytes took, in batches; none while the reader holds. */
  private credit(): void {
    if (this.holding || this.uncredited < STREAM_WINDOW / 2 || this.finished) return;
    this.session.out.windowUpdate(this.id, this.uncredited);
    this.recvWindow += this.uncredited;
    this.uncredited = 0;
  }

  /** The body's source (BodySourceFlow): a paused reader stops the stream's credit. */
  pause(): void { this.holding = true; }
  resume(): void { this.holding = false; this.credit(); }

  /** After a read that began or went on with the answer: a body still coming is cut when the instance goes quiet for the idle timeout. */
  armIdle(): void {
    if (this.finished || this.idleTimer || this.r.idleTimeoutMs === Infinity) return;
    const wait = (ms: number): void => {
      this.idleTimer = callDeadlines.start(ms, () => {
        this.idleTimer = null;
        if (this.finished) return;
        const quiet = performance.now() - this.lastRead;
        const limit = this.r.idleTimeoutMs;
        if (quiet < limit) wait(limit - quiet);
        else this.destroy(Object.assign(new Error(`the instance sent nothing for ${limit} ms`), { code: 'UPSTREAM_IDLE_TIMEOUT' }));
      });
    };
    wait(this.r.idleTimeoutMs);
  }

  private remoteEnd(trailers: Record<string, string | string[]>): void {
    this.remoteEnded = true;
    const body = this.body!;
    // the answer is complete: a request body still going is not wanted any more
    if (!this.localEnded) { this.session.out.reset(this.id, NO_ERROR); this.localEnded = true; }
    this.finish();
    this.endTrailers?.(trailers);
    this.endTrailers = null;
    body.end();
  }

  onReset(code: number): void {
    if (this.finished) return;
    // REFUSED_STREAM: the instance did nothing with it (RFC 9113 §8.7), it may go again
    if (code === REFUSED_STREAM && !this.response) { this.unprocessed(closedError('the instance refused the stream (REFUSED_STREAM)')); return; }
    this.fail(Object.assign(new Error(`the instance reset the stream${this.response ? '' : ' before answering'} (code ${code})`), { code: 'UPSTREAM_RESET' }));
  }

  /** The instance did not process this call: it goes to the next connection (or fails with `why`). */
  unprocessed(why: Error): void {
    if (this.finished) return;
    const call = this.call;
    this.call = null;
    this.finish();
    if (call) this.session.unprocessed(call, why);
  }

  /** The instance broke the protocol on this stream only: it is reset, the connection lives on. */
  streamError(code: number, message: string): void {
    if (this.finished) return;
    this.session.out.reset(this.id, code);
    this.fail(protocolError(message));
  }

  /** The exchange failed: before the answer its promise rejects, after it the body errors. */
  fail(err: Error): void {
    if (this.finished) return;
    const call = this.call;
    this.call = null;
    const body = this.body;
    this.finish();
    if (call) call.reject(err);
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
    this.outflow.clear();
    this.drainListener = null;
    this.session.done(this);
    const close = this.closeListener;
    this.closeListener = null;
    close?.();
  }
}

/**
 * An answer's fields into `out` (repeated names as arrays); what is wrong with them, if
 * anything (RFC 9113 §8.2, §8.3.2): a name that is not a lower-case token, a value with NUL,
 * CR or LF, pseudo-headers other than one leading :status (none in trailers), headers of a
 * connection, a content-length that is not one number.
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
    if (!NAME.test(k) || (CONNECTION_HEADERS.has(k) && k !== 'host')) return `the header name ${JSON.stringify(k)}`;
    if (UNSAFE_VALUE.test(v)) return `a value of ${k} with NUL, CR or LF`;
    const had = out[k];
    if (k === 'content-length') {
      if (!/^\d{1,15}$/.test(v) || (had !== undefined && had !== v)) return `the content-length ${JSON.stringify(v)}`;
      out[k] = v;
      continue;
    }
    if (!isHeader(had)) out[k] = v;
    else if (typeof had === 'string') out[k] = [had, v];
    else had.push(v);
  }
  if (head && out[':status'] === undefined) return 'an answer without :status';
  return null;
}
