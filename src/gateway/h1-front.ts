// HTTP/1.1 data-plane calls served straight off the caller's socket: Node's own parser
// (llhttp, from `_http_common`) with callbacks and a small request and response per call,
// none of node:http's objects or streams (what those cost a proxied call: docs/benchmarks.md).
// As in node:http's server, the parser reads the socket's stream handle itself: a read costs
// no buffer, stream or event in JavaScript, only the parser's callbacks.
// Every HTTP/1.1 connection starts here. The first request that is not an ordinary data-plane
// call (the control API, the dashboard, /metrics, the Open Inference Protocol; or HTTP/1.0,
// `Expect`, an upgrade, CONNECT) hands the connection to node:http at that request's start —
// its head written back as parsed, then the bytes that followed it — and it stays there.
// The same bounds as node:http's (front-door.ts): a head split over reads must complete within
// headersTimeoutMs; a connection between requests, or a request body that stops arriving, is
// closed after idleTimeoutMs; a running call is never cut by these. Calls on one connection are
// answered in order: a request sent before the answer to the one ahead of it (pipelined) waits,
// parsed no further, until that answer has gone.
import type { Socket } from 'node:net';
import { STATUS_CODES, maxHeaderSize, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import { EventEmitter } from 'node:events';
import { HTTPParser, methods } from '_http_common';
import { MessageBody, UNSAFE_VALUE, isHeader, type BodySourceFlow } from './h1-message.js';
import type { HttpRequest, HttpResponse } from './http-util.js';

export type H1Handler = (req: H1Request, res: H1Response) => void;

export interface H1FrontOptions {
  headersTimeoutMs: number;
  idleTimeoutMs: number;
  /** Who serves a request (its target made canonical on the way); null: the connection goes to node:http. */
  claim(req: H1Request): H1Handler | null;
  /** A request's head has arrived (the front door ends its first-request deadline). */
  onRequest(socket: Socket): void;
  /** Takes a connection over, the bytes of its next request back in the socket's buffer. */
  handOff(socket: Socket): void;
}

export class H1Front {
  private readonly conns = new Set<H1Conn>();
  /** Shutting down: answers say `connection: close`. */
  closing = false;
  /** One timer for every connection's idleness (not a socket timeout each, re-armed per call). */
  private sweep: NodeJS.Timeout | null = null;

  constructor(readonly opts: H1FrontOptions) {}

  /** Serves a connection from its next byte (what was read of it and put back in its buffer included); it may come paused. */
  accept(socket: Socket): void {
    const conn = new H1Conn(socket, this);
    this.conns.add(conn);
    socket.once('close', () => this.conns.delete(conn));
    conn.begin();
    this.sweep ??= setInterval(() => this.closeQuiet(), Math.max(50, Math.min(1000, this.opts.idleTimeoutMs / 4))).unref();
  }

  /** Connections that have waited on their caller for the idle timeout (quietSince) are closed. */
  private closeQuiet(): void {
    const since = performance.now() - this.opts.idleTimeoutMs;
    for (const c of this.conns) if (c.quietSince() < since) c.socket.destroy();
    if (this.conns.size === 0 && this.sweep) { clearInterval(this.sweep); this.sweep = null; }
  }

  /** Closes the connections that are between requests; returns how many. */
  closeIdle(): number {
    let n = 0;
    for (const c of this.conns) if (c.idle()) { c.socket.destroy(); n++; }
    return n;
  }

  closeAll(): void {
    for (const c of this.conns) c.socket.destroy();
  }

  /** No more calls kept alive: idle connections close now, the others after their answer. */
  drain(): void {
    this.closing = true;
    for (const c of this.conns) { if (c.idle()) c.socket.destroy(); else c.closeAfterCall(); }
  }

  forget(conn: H1Conn): void { this.conns.delete(conn); }
}

const { kOnMessageBegin, kOnHeaders, kOnHeadersComplete, kOnBody, kOnMessageComplete, kOnExecute } = HTTPParser;
/** on_headers_complete's answer that stops the parse right after the head (llhttp: no body, an upgrade). */
const STOP_AFTER_HEAD = 2;

/** A socket's libuv stream as net.Socket keeps it (`reading`: whether it reads now, net.Socket's own flag). */
interface StreamHandle { isStreamBase?: boolean; _consumed?: boolean; reading?: boolean; readStart(): number; readStop(): number }

/** One caller's connection while it is served here. */
class H1Conn {
  private readonly parser = new HTTPParser();
  /** The stream the parser reads itself; null: one it cannot (then the socket's 'data' events feed it). */
  private readonly handle: StreamHandle | null;
  /** What a request body pauses and resumes when its reader does. */
  private readonly flow = { pause: (): void => this.pauseReading(), resume: (): void => this.resumeReading() };
  private req: H1Request | null = null;
  private res: H1Response | null = null;
  /** Header lines (and target) of a head that took more than one read. */
  private partial: string[] = [];
  private partialUrl = '';
  /** A head this connection will not parse further now (a call is running, or it is node:http's), as parsed. */
  private stoppedHead: string | null = null;
  /** That head and the bytes after it, for later. */
  private parked: Buffer | null = null;
  private handingOff = false;
  /**
   * The handler of a call whose head has come: it runs when the body is whole, if that is in
   * the same read (most calls: the body is then read at once), else once that read is parsed.
   */
  private starting: H1Handler | null = null;
  private executing = false;
  private inHead = false;
  private headTimer: NodeJS.Timeout | null = null;
  /** The caller's last bytes, or the end of the last call. */
  private lastActive = performance.now();
  /** While a call runs: since when its answer's queued bytes stopped going out (answerTaken: how many had, at the last look). */
  private answerHeldSince = Infinity;
  private answerTaken = 0;

  constructor(readonly socket: Socket, private readonly front: H1Front) {
    const handle = (socket as unknown as { _handle?: StreamHandle | null })._handle;
    this.handle = handle?.isStreamBase && !handle._consumed ? handle : null;
    const p = this.parser;
    p.initialize(HTTPParser.REQUEST, {}, maxHeaderSize, HTTPParser.kLenientNone);
    p[kOnMessageBegin] = (): void => {
      this.inHead = true;
      if (this.partial.length) this.partial = [];
      this.partialUrl = '';
    };
    // after the head these are a chunked body's trailers: not carried (as before, with node:http)
    p[kOnHeaders] = (lines: string[], url: string): void => {
      if (!this.inHead) return;
      for (const l of lines) this.partial.push(l);
      this.partialUrl += url;
    };
    p[kOnHeadersComplete] = (major: number, minor: number, lines: string[] | undefined, method: number, url: string | undefined,
      _status: unknown, _msg: unknown, upgrade: boolean, keepAlive: boolean): number =>
      this.onHead(major, minor, lines ?? this.takePartial(), methods[method] ?? '', url ?? this.takeUrl(), upgrade, keepAlive);
    p[kOnBody] = (chunk: Buffer): void => { this.req?.push(chunk); };
    p[kOnMessageComplete] = (): void => this.onRequestComplete();
    socket.on('drain', this.onDrain);
    socket.on('end', this.onEnd);
    socket.once('close', this.onClose);
  }

  begin(): void {
    const { socket, handle } = this;
    if (!handle) { socket.on('data', this.onData); socket.resume(); return; }
    const before = socket.read() as Buffer | null; // read before (the front door's look at the first bytes)
    handle._consumed = true; // node:http, if it takes the connection over, then reads it by 'data' events
    this.parser.consume(handle);
    this.parser[kOnExecute] = this.onExecute;
    this.resumeReading();
    if (before) this.onData(before);
  }

  /**
   * Since when this connection waits on its caller: between calls, for the rest of a body, or
   * to take an answer it does not read (bytes queued that stopped going out: it must not keep an
   * instance's session that way); Infinity while a call runs and its answer moves, or waits on the instance.
   */
  quietSince(): number {
    if (this.req === null || !this.req.complete) return this.lastActive;
    const s = this.socket;
    const taken = s.bytesWritten - s.writableLength; // bytes whose writes completed: the caller made room for them
    if (s.writableLength === 0) this.answerHeldSince = Infinity;
    else if (this.answerHeldSince === Infinity || taken !== this.answerTaken) this.answerHeldSince = performance.now();
    this.answerTaken = taken;
    return this.answerHeldSince;
  }

  /** The running call is this connection's last (its answer says so if its head is not out yet). */
  closeAfterCall(): void {
    if (this.res) this.res.keepAlive = false;
    else this.socket.end(); // an answer still being written goes out first
  }

  /** Between requests: nothing running or still being written, no byte of the next one yet. */
  idle(): boolean { return this.req === null && this.parked === null && !this.inHead && this.socket.writableLength === 0; }

  private readonly onData = (d: Buffer): void => {
    this.lastActive = performance.now();
    this.executing = true;
    const ret = this.parser.execute(d);
    this.executing = false;
    this.parsed(ret, d);
  };

  /**
   * A read the parser took off the stream itself has been parsed. (No flag `executing` is
   * needed for these: a call can only finish inside one with no request parked, since a
   * parked request stops the reading; a parked one is run by a parse from onData.)
   */
  private readonly onExecute = (ret: number | Error): void => {
    this.lastActive = performance.now();
    this.parsed(ret, null);
  };

  /** After a read is parsed: `d` is that read, or null when the parser read it itself (a copy is asked for if it is needed). */
  private parsed(ret: number | Error, d: Buffer | null): void {
    if (ret instanceof Error) { this.starting = null; this.parseError(ret); return; }
    if (this.stoppedHead !== null) {
      this.parked = Buffer.concat([Buffer.from(this.stoppedHead, 'latin1'), (d ?? this.parser.getCurrentBuffer()).subarray(ret)]);
      this.stoppedHead = null;
      this.pauseReading();
    }
    this.start(); // the rest of its body is still to come
    if (this.parked && this.req === null) { this.next(); return; }
    this.timeHead();
  }

  private pauseReading(): void {
    const h = this.handle;
    if (!h) { this.socket.pause(); return; }
    if (h.reading && !this.socket.destroyed) { h.reading = false; h.readStop(); }
  }

  private resumeReading(): void {
    const h = this.handle;
    if (!h) { this.socket.resume(); return; }
    if (!h.reading && !this.socket.destroyed) { h.reading = true; h.readStart(); }
  }

  /**
   * A head split over reads has headersTimeoutMs from here (most heads come in one read: no
   * timer); one pipelined behind a running call, from the end of that call.
   */
  private timeHead(): void {
    if (!this.inHead || this.headTimer || this.req !== null) return;
    this.headTimer = setTimeout(() => this.refuse(408), this.front.opts.headersTimeoutMs);
    this.headTimer.unref();
  }

  private onHead(major: number, minor: number, lines: string[], method: string, url: string, upgrade: boolean, keepAlive: boolean): number {
    this.inHead = false;
    if (this.headTimer) { clearTimeout(this.headTimer); this.headTimer = null; }
    this.front.opts.onRequest(this.socket);
    // a call is still running (this one was pipelined behind it), or this one is not served here: parse no further
    if (this.req !== null || this.handingOff) return this.stop(method, url, major, minor, lines);
    const headers = requestHeaders(lines);
    const req = new H1Request(this.socket, this.flow, method, url, headers);
    // what node:http alone answers right: a missing Host (400), Expect, an upgrade, CONNECT, HTTP/1.0
    const ordinary = major === 1 && minor === 1 && !upgrade && method !== 'CONNECT' && headers.expect === undefined && headers.host !== undefined;
    const handler = ordinary ? this.front.opts.claim(req) : null;
    if (!handler) {
      this.handingOff = true;
      return this.stop(method, url, major, minor, lines);
    }
    const res = new H1Response(this.socket, method === 'HEAD', keepAlive && !this.front.closing, this.front.opts.idleTimeoutMs, () => this.replied(res));
    this.req = req;
    this.res = res;
    this.starting = handler;
    return 0;
  }

  /** Runs the call (a running call is bounded by its own timeouts; only a body that stops arriving is cut here: quietSince). */
  private start(): void {
    const handler = this.starting;
    if (!handler) return;
    this.starting = null;
    handler(this.req!, this.res!);
  }

  /** Keeps the head as parsed (re-sent later, here or to node:http) and ends this parse after it. */
  private stop(method: string, url: string, major: number, minor: number, lines: string[]): number {
    let head = `${method} ${url} HTTP/${major}.${minor}\r\n`;
    for (let i = 0; i < lines.length; i += 2) head += `${lines[i]}: ${lines[i + 1]}\r\n`;
    this.stoppedHead = `${head}\r\n`;
    return STOP_AFTER_HEAD;
  }

  private onRequestComplete(): void {
    const req = this.req;
    // llhttp also says a stopped head's message is complete: that one is not this call's
    if (!req || req.complete) return;
    const res = this.res!;
    req.complete = true;
    req.end(); // its 'end' may answer the call (and so finish it) right here
    this.start(); // its body came with its head
    if (this.req !== req) return;
    if (res.writableFinished) this.finished();
  }

  /** The answer has gone; the rest of an unread body is read and dropped (as node:http does) before the next request. */
  private replied(res: H1Response): void {
    if (res !== this.res) return;
    if (this.req!.complete) this.finished();
    else this.req!.dump();
  }

  /** The call is over both ways: the next request, or the connection's end. */
  private finished(): void {
    const keepAlive = this.res!.keepAlive;
    this.req!.socket = null;
    this.req = null;
    this.res = null;
    if (!keepAlive) { this.socket.end(); return; }
    this.lastActive = performance.now();
    this.timeHead();
    // not from inside the parser's own callback: it is not re-entrant
    if (this.parked) { if (this.executing) queueMicrotask(() => this.next()); else this.next(); }
  }

  /** Runs the parked request: here (a fresh parse), or at node:http. */
  private next(): void {
    const held = this.parked;
    if (!held || this.req !== null || this.socket.destroyed) return;
    this.parked = null;
    if (this.handingOff) { this.handOff(held); return; }
    this.parser.initialize(HTTPParser.REQUEST, {}, maxHeaderSize, HTTPParser.kLenientNone); // it stopped after that head
    this.resumeReading();
    this.onData(held);
  }

  private handOff(held: Buffer): void {
    const s = this.socket;
    if (this.handle) this.parser.unconsume(); else s.off('data', this.onData);
    s.off('drain', this.onDrain);
    s.off('end', this.onEnd);
    s.off('close', this.onClose);
    this.parser.free();
    this.front.forget(this);
    s.pause();
    s.unshift(held);
    this.front.opts.handOff(s);
  }

  /** Bytes that are not HTTP/1.1: answered as node:http answers them, and the connection closed. */
  private parseError(err: Error): void {
    const code = (err as { code?: string }).code;
    this.refuse(code === 'HPE_HEADER_OVERFLOW' ? 431 : code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW' ? 413 : 400);
  }

  /** Answers what node:http answers a head it cannot take (unless a call is running: then no answer fits), and closes. */
  private refuse(status: number): void {
    if (this.req) { this.socket.destroy(); return; } // garbage in a body or behind a running call
    this.socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\n\r\n`);
    this.socket.destroySoon();
  }

  private readonly onDrain = (): void => { this.res?.emit('drain'); };
  // the caller closed its side: nothing more will come; a running call still answers if it can
  private readonly onEnd = (): void => { if (this.req === null) this.socket.destroy(); };

  private readonly onClose = (): void => {
    if (this.headTimer) clearTimeout(this.headTimer);
    if (this.handle) this.parser.unconsume();
    this.parser.free();
    const req = this.req;
    const res = this.res;
    this.req = null;
    this.res = null;
    if (req && !req.complete) req.fail(Object.assign(new Error('the caller went away before sending the whole body'), { code: 'ECONNRESET' }));
    if (res && !res.writableFinished) { res.destroyed = true; res.emit('close'); }
  };

  private takePartial(): string[] {
    const lines = this.partial;
    this.partial = [];
    return lines;
  }

  private takeUrl(): string {
    const url = this.partialUrl;
    this.partialUrl = '';
    return url;
  }
}

/** A caller's request (HttpRequest): its head, and its body as it arrives. */
export class H1Request extends MessageBody implements HttpRequest {
  complete = false;
  private dumping = false;

  constructor(public socket: Socket | null, flow: BodySourceFlow, readonly method: string, public url: string, readonly headers: IncomingHttpHeaders) {
    super(flow, () => socket!.destroy());
  }

  override push(chunk: Buffer): void {
    if (!this.dumping) super.push(chunk);
  }

  /** Nobody will read the rest: it is dropped as it comes (its end is still told). */
  dump(): void {
    this.dumping = true;
    this.drop();
    this.resume();
  }
}

/**
 * The answer to a caller (HttpResponse): its head is written with the first bytes of its
 * body (or at the end), with a length when the handler gave one and chunked otherwise.
 */
export class H1Response extends EventEmitter implements HttpResponse {
  headersSent = false;
  destroyed = false;
  writableFinished = false;
  private head: string | null = null;
  private chunked = false;
  private noBody = false;
  private extra: OutgoingHttpHeaders | null = null;
  private corked = false;

  constructor(private readonly socket: Socket, private readonly headOnly: boolean, public keepAlive: boolean,
    private readonly idleTimeoutMs: number, private readonly onEnd: () => void) { super(); }

  setHeader(name: string, value: string | number | readonly string[]): this {
    if (this.headersSent) throw headersSent();
    (this.extra ??= {})[name.toLowerCase()] = value as OutgoingHttpHeaders[string];
    return this;
  }

  writeHead(status: number, headers?: OutgoingHttpHeaders): this {
    if (this.headersSent) throw headersSent();
    const all = this.extra ? { ...this.extra, ...headers } : headers ?? {};
    let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}\r\n`;
    let length: string | null = null;
    let date = false;
    for (const name in all) {
      const v = all[name];
      if (v === undefined) continue;
      const k = name.toLowerCase();
      if (k === 'connection') { if (String(v).toLowerCase() === 'close') this.keepAlive = false; continue; }
      if (k === 'transfer-encoding' || k === 'keep-alive') continue; // framing and connection are this side's
      if (k === 'content-length') { length = String(v); if (!/^\d+$/.test(length)) throw headerLineError(name); continue; }
      if (k === 'date') date = true;
      if (Array.isArray(v)) { for (const one of v) head += headerLine(name, String(one)); } else head += headerLine(name, String(v));
    }
    if (!date) head += `date: ${httpDate()}\r\n`;
    this.noBody = this.headOnly || status === 204 || status === 304 || status < 200;
    if (length !== null) head += `content-length: ${length}\r\n`;
    else if (!this.noBody) { head += 'transfer-encoding: chunked\r\n'; this.chunked = true; }
    head += this.keepAlive ? `connection: keep-alive\r\nkeep-alive: timeout=${Math.floor(this.idleTimeoutMs / 1000)}\r\n\r\n` : 'connection: close\r\n\r\n';
    this.head = head;
    this.headersSent = true;
    return this;
  }

  /** The head goes now (a streamed answer, SSE), not with the first bytes of the body. */
  flushHeaders(): void {
    this.write('');
    this.uncork();
  }

  write(chunk: Buffer | string): boolean {
    if (this.writableFinished || this.destroyed) return false;
    if (!this.headersSent) this.writeHead(200);
    const s = this.socket;
    // what is written in this tick (the head, chunks, the end) goes out in one system call, as node:http does
    if (!this.corked) { this.corked = true; s.cork(); process.nextTick(uncork, this); }
    if (this.head !== null) { s.write(this.head, 'latin1'); this.head = null; } // header bytes as they came (node:http writes them so)
    if (this.noBody || chunk.length === 0) return !s.writableNeedDrain;
    if (!this.chunked) return s.write(chunk);
    s.write(`${(typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.length).toString(16)}\r\n`);
    s.write(chunk);
    return s.write('\r\n');
  }

  end(chunk?: Buffer | string): this {
    if (this.writableFinished || this.destroyed) return this;
    if (!this.headersSent) this.writeHead(200);
    const head = this.head;
    if (head !== null && !this.corked && !this.chunked && (chunk === undefined || this.noBody || (Buffer.isBuffer(chunk) && chunk.length <= ONE_WRITE))) {
      // a whole small answer (most): head and body as one latin1 string (bytes as they are), one
      // write, no cork; Node writes a small string from the stack, with no buffer to allocate
      this.head = null;
      const body = this.noBody || chunk === undefined ? null : chunk as Buffer;
      this.socket.write(body?.length ? head + body.toString('latin1') : head, 'latin1');
    } else {
      this.write(chunk ?? '');
      if (this.chunked) this.socket.write('0\r\n\r\n');
      uncork(this);
    }
    this.writableFinished = true;
    this.emit('finish');
    this.emit('close');
    this.onEnd();
    return this;
  }

  /** Sends what this tick wrote. */
  uncork(): void {
    if (this.corked) { this.corked = false; this.socket.uncork(); }
  }

  /** Cuts the connection, unless this answer is complete (the connection may be serving the next call). */
  destroy(): this {
    if (this.writableFinished) return this;
    this.destroyed = true;
    this.socket.destroy();
    return this;
  }
}

const uncork = (res: H1Response): void => res.uncork();

/** An answer's body up to this size goes out in one string with its head: one write, where cork and writev cost more. */
const ONE_WRITE = 16 * 1024;

const headerLineError = (name: string): Error => Object.assign(new TypeError(`header ${name} has a value that cannot be sent over HTTP/1.1`), { code: 'ERR_INVALID_CHAR' });

const headersSent = (): Error => Object.assign(new Error('the answer\'s head was already sent'), { code: 'ERR_HTTP_HEADERS_SENT' });

function headerLine(name: string, value: string): string {
  if (!TOKEN.test(name)) throw Object.assign(new TypeError(`the header name ${JSON.stringify(name)} cannot be sent over HTTP/1.1`), { code: 'ERR_INVALID_HTTP_TOKEN' });
  if (UNSAFE_VALUE.test(value)) throw headerLineError(name);
  return `${name}: ${value}\r\n`;
}

/** A header name: token characters (RFC 9110 §5.6.2), so no name can end its line. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * A request's headers as node:http gives them (IncomingMessage.headers): lower-case names; a
 * repeated set-cookie an array, cookie joined with "; ", the ones that may appear once keep
 * the first, the others joined with ", ".
 */
function requestHeaders(lines: string[]): IncomingHttpHeaders {
  const out: Record<string, string | string[]> = {};
  for (let i = 0; i < lines.length; i += 2) {
    const k = lines[i]!.toLowerCase();
    const v = lines[i + 1]!;
    const had = out[k];
    if (!isHeader(had)) out[k] = k === 'set-cookie' ? [v] : v;
    else if (k === 'set-cookie') (had as string[]).push(v);
    else if (!SINGLE.has(k)) out[k] = `${had as string}${k === 'cookie' ? '; ' : ', '}${v}`;
  }
  return out;
}

/** The headers node:http keeps the first of (_http_incoming.js, matchKnownFields). */
const SINGLE = new Set(['content-type', 'content-length', 'user-agent', 'referer', 'host', 'authorization', 'proxy-authorization',
  'if-modified-since', 'if-unmodified-since', 'from', 'location', 'max-forwards', 'retry-after', 'etag', 'last-modified',
  'server', 'age', 'expires']);

let dateValue = '';
let dateUntil = 0;
/** The Date header's value, made once a second. */
function httpDate(): string {
  const now = Date.now();
  if (now >= dateUntil) { dateValue = new Date(now).toUTCString(); dateUntil = now - (now % 1000) + 1000; }
  return dateValue;
}
