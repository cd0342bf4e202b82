// Pieces of an HTTP/1.1 message parsed with Node's own parser (llhttp), shared by the gateway's
// client towards instances (upstream.ts) and its front towards callers (h1-front.ts); the
// message body is also what the gateway's HTTP/2 client (h2/client.ts) gives for an answer.
import { EventEmitter } from 'node:events';

/**
 * A message body as the proxy reads it: what it uses of a Readable (an HTTP/2 stream of
 * node:http2 is one; the gateway's own messages have a lighter object, MessageBody).
 */
export interface ResponseBody {
  readonly readableEnded: boolean;
  /** Bytes received and not yet read. */
  readonly readableLength: number;
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  off(event: 'data', listener: (chunk: Buffer) => void): unknown;
  once(event: 'end', listener: () => void): unknown;
  once(event: 'error', listener: (err: Error) => void): unknown;
  pause(): unknown;
  resume(): unknown;
  destroy(err?: Error): unknown;
  /** The whole body at once if it has all arrived unread and is within `limit` (MessageBody.takeWhole). */
  takeWhole?(limit: number): Buffer | null;
}

/** Bytes a body holds unread before its source is paused (a Readable's default high-water mark). */
const HIGH_WATER = 16 * 1024;

/** What a body pauses when its reader does: an HTTP/1.1 connection, or an HTTP/2 stream's flow-control credit. */
export interface BodySourceFlow { pause(): unknown; resume(): unknown }

/**
 * The body of a message parsed off a connection (an instance's answer over HTTP/1.1 or
 * HTTP/2, a caller's HTTP/1.1 request), read as the proxy reads a Readable: chunks as they
 * are parsed, held until a 'data' listener comes (then delivered on the next microtask, as a
 * Readable starts flowing), paused by pausing its source. No stream machinery per message.
 */
export class MessageBody extends EventEmitter implements ResponseBody {
  readableEnded = false;
  readableLength = 0;
  private held: Buffer[] = [];
  private flowing = false;
  private paused = false;
  /** The socket is paused by this body (its reader paused it, or too much is held). */
  private holding = false;
  private ended = false;
  private error: Error | null = null;
  private done = false;

  constructor(private readonly from: BodySourceFlow, private readonly abort: (err: Error) => void) { super(); }

  override on(event: string | symbol, listener: Parameters<EventEmitter['on']>[1]): this {
    super.on(event, listener);
    if (event === 'data') this.flow();
    return this;
  }

  push(chunk: Buffer): void {
    if (this.flowing && !this.paused && this.held.length === 0) { this.emit('data', chunk); return; }
    this.held.push(chunk);
    this.readableLength += chunk.length;
    if (this.readableLength > HIGH_WATER) this.sync();
  }

  /**
   * The whole body at once, when it has all arrived, nobody has read any of it yet and it is
   * at most `limit` bytes (then it is read: no 'data' or 'end' follows); null otherwise.
   */
  takeWhole(limit: number): Buffer | null {
    if (!this.ended || this.flowing || this.done || this.error || this.readableLength > limit) return null;
    const held = this.held;
    this.held = [];
    this.readableLength = 0;
    this.done = true;
    this.readableEnded = true;
    return held.length === 1 ? held[0]! : Buffer.concat(held);
  }

  /** The message is all here: its source is no longer this body's to pause (a connection may serve the next exchange). */
  end(): void {
    this.ended = true;
    this.sync();
    this.flush();
  }

  fail(err: Error): void { this.error = err; this.flush(); }

  pause(): this {
    if (!this.paused) { this.paused = true; this.sync(); }
    return this;
  }

  /** As a Readable's: also starts the flow without a 'data' listener (what is read then is dropped). */
  resume(): this {
    if (this.paused) { this.paused = false; this.sync(); this.flush(); }
    this.flow();
    return this;
  }

  /** Drops what is held, and all that comes after. */
  protected drop(): void {
    this.held = [];
    this.readableLength = 0;
    this.sync();
  }

  private flow(): void {
    if (!this.flowing) { this.flowing = true; queueMicrotask(() => this.flush()); }
  }

  /** The source flows while this body is not paused and holds little; it is never paused once the message has ended. */
  private sync(): void {
    const hold = !this.ended && (this.paused || this.readableLength > HIGH_WATER);
    if (hold === this.holding) return;
    this.holding = hold;
    if (hold) this.from.pause();
    else this.from.resume();
  }

  /** Ends the exchange from the reading side (a limit crossed, the caller gone). */
  destroy(err?: Error): this {
    if (this.done) return this;
    this.abort(err ?? closedError('the answer was abandoned'));
    return this;
  }

  private flush(): void {
    if (!this.flowing || this.done) return;
    while (this.held.length && !this.paused) {
      const c = this.held.shift()!;
      this.readableLength -= c.length;
      this.emit('data', c);
    }
    if (this.holding) this.sync();
    if (this.held.length && !this.error) return;
    if (this.error) {
      this.done = true;
      if (this.listenerCount('error')) this.emit('error', this.error);
      this.emit('close');
    } else if (this.ended) {
      this.done = true;
      this.readableEnded = true;
      this.emit('end');
      this.emit('close');
    }
  }
}

/** Header lines as llhttp gives them (name, value, …) as an object: lower-case names, repeated ones as arrays. */
export function headerObject(lines: string[]): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (let i = 0; i < lines.length; i += 2) {
    const k = lines[i]!.toLowerCase();
    const v = lines[i + 1]!;
    const had = out[k];
    if (!isHeader(had)) out[k] = v;
    else if (typeof had === 'string') out[k] = [had, v];
    else had.push(v);
  }
  return out;
}

/** A header's value in such an object; not a name Object.prototype has (`constructor` is a header like any other). */
export function isHeader(v: unknown): v is string | string[] {
  return typeof v === 'string' || Array.isArray(v);
}

/** A header value that would end the line it is on: never written. */
export const UNSAFE_VALUE = /[\r\n\0]/;

export const closedError = (message: string): Error => Object.assign(new Error(message), { code: 'UPSTREAM_CLOSED' });
