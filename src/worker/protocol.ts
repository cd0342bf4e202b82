// The framed protocol between Berth and a Python cell worker (see python/PROTOCOL.md):
// [u32 big-endian payload length][u8 type][payload]. Requests may be pipelined: the worker
// answers a connection's frames in order, one call at a time.
import { connect, type Socket } from 'node:net';

export const FRAME = {
  EXECUTE: 0x01,
  PING: 0x02,
  /** The instance secret; the first frame of every connection to a worker started with one. */
  HELLO: 0x03,
  OK: 0x81,
  USER_ERROR: 0x82,
  CALL_ERROR: 0x83,
  PONG: 0x84,
  /** The worker accepted the HELLO. */
  WELCOME: 0x85,
} as const;

export interface Frame { type: number; payload: Buffer }

/** A request's outcome: its answer frame, or why there is none. */
export type Answered = (err: Error | null, frame?: Frame) => void;

/**
 * Where a worker (or an image instance) listens. `secret`: the instance's handshake secret (hex),
 * sent as the first frame of every connection (cell workers only). It never goes into a log or
 * an API answer: describeEndpoint leaves it out.
 */
export interface Endpoint { path?: string; host?: string; port?: number; secret?: string }

export function describeEndpoint(e: Endpoint): string {
  return e.path ? `unix:${e.path}` : `tcp:${e.host}:${e.port}`;
}

export function encodeFrame(type: number, payload: Buffer | string): Buffer[] {
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const header = Buffer.allocUnsafe(5);
  header.writeUInt32BE(body.length, 0);
  header[4] = type;
  return [header, body];
}

export class ConnectionClosedError extends Error {
  constructor(message = 'worker connection closed') { super(message); this.name = 'ConnectionClosedError'; }
}

/** A pipelined request the worker never started: the call before it on the connection failed (it may go elsewhere). */
export class NotStartedError extends Error {
  constructor(reason: Error) { super(`not started: ${reason.message}`, { cause: reason }); this.name = 'NotStartedError'; }
}

export class FrameTooLargeError extends Error {
  constructor(readonly size: number, readonly limit: number) { super(`frame of ${size} bytes exceeds ${limit}`); }
}

/**
 * One persistent connection to a worker. `request` sends a frame and resolves with the
 * reply; the connection is reused for the next call (no connect per call). Requests sent while
 * others are in flight wait in the worker's socket, not here: the worker starts each as soon as
 * it has answered the one before (no round trip in between), and their frames go out together.
 */
export class WorkerConnection {
  private readonly socket: Socket;
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Requests sent and not answered, in order; the first is the one the worker runs. */
  private pending: Array<{ answered: Answered; onHead: (() => void) | undefined }> = [];
  /** Frames not written yet: those sent in this turn's promise jobs, written together once they have run. */
  private unsent: Buffer[] = [];
  private closedError: Error | null = null;

  private constructor(socket: Socket, private readonly maxFrameBytes: number) {
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('error', (err) => this.fail(new ConnectionClosedError(`worker connection error: ${err.message}`)));
    socket.on('close', () => this.fail(new ConnectionClosedError()));
  }

  /** Connects and, when the endpoint has a secret, passes the handshake (one round trip, once per connection). */
  static open(endpoint: Endpoint, maxFrameBytes: number, timeoutMs = 2000): Promise<WorkerConnection> {
    return new Promise((resolve, reject) => {
      const socket = endpoint.path ? connect(endpoint.path) : connect(endpoint.port!, endpoint.host ?? '127.0.0.1');
      const timer = setTimeout(() => { socket.destroy(); reject(new Error(endpoint.secret ? 'connect or handshake timeout' : 'connect timeout')); }, timeoutMs);
      socket.once('error', (err) => { clearTimeout(timer); socket.destroy(); reject(err); });
      socket.once('connect', () => {
        if (!endpoint.secret) {
          clearTimeout(timer);
          socket.removeAllListeners('error');
          resolve(new WorkerConnection(socket, maxFrameBytes));
          return;
        }
        const [header, body] = encodeFrame(FRAME.HELLO, endpoint.secret);
        socket.write(Buffer.concat([header!, body!]));
        let got = Buffer.alloc(0);
        const onData = (chunk: Buffer): void => {
          got = Buffer.concat([got, chunk]);
          if (got.length < 5) return;
          socket.off('data', onData);
          socket.off('close', onClose);
          clearTimeout(timer);
          if (got.readUInt32BE(0) !== 0 || got[4] !== FRAME.WELCOME) {
            socket.destroy();
            reject(new Error('the worker did not accept the handshake'));
            return;
          }
          socket.removeAllListeners('error');
          const conn = new WorkerConnection(socket, maxFrameBytes);
          if (got.length > 5) conn.onData(got.subarray(5)); // nothing should follow before a request; kept anyway
          resolve(conn);
        };
        // a worker closes without a word when it refuses the secret
        const onClose = (): void => { clearTimeout(timer); reject(new ConnectionClosedError('the worker closed the connection during the handshake (wrong secret?)')); };
        socket.on('data', onData);
        socket.once('close', onClose);
      });
    });
  }

  get closed(): boolean { return this.closedError !== null; }

  /**
   * Sends a frame; resolves with its answer. `onHead` runs when the worker starts on it: at once
   * on an idle connection, else when the request before it is answered (a call's deadline
   * starts there). Rejects with NotStartedError when an earlier request fails the connection.
   */
  request(type: number, payload: Buffer | string, onHead?: () => void): Promise<Frame> {
    return new Promise((resolve, reject) => this.send(type, payload, onHead, (err, frame) => (err ? reject(err) : resolve(frame!))));
  }

  /**
   * `request` with a callback (the call path: no promise per call): `answered` gets the answer
   * frame, or the error, once. The frames of the calls handed this connection together (a
   * pipelined group) leave in one write, once the promise jobs that send them have run: one
   * system call and one wakeup of the worker per group.
   */
  send(type: number, payload: Buffer | string, onHead: (() => void) | undefined, answered: Answered): void {
    if (this.closedError) { answered(this.closedError); return; }
    const [header, body] = encodeFrame(type, payload);
    this.pending.push({ answered, onHead });
    if (this.pending.length === 1) onHead?.();
    // a tick queued from a promise job runs once the jobs queued with it have: the group's other frames are in by then
    if (this.unsent.length === 0) process.nextTick(() => this.flush());
    this.unsent.push(header!, body!);
  }

  private flush(): void {
    const frames = this.unsent;
    this.unsent = [];
    if (this.closedError) return;
    this.socket.cork();
    for (const f of frames) this.socket.write(f);
    this.socket.uncork();
  }

  close(): void {
    this.socket.destroy();
    this.fail(new ConnectionClosedError('connection closed by Berth'));
  }

  private onData(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    while (this.buffered >= 5) {
      const head = this.chunks.length === 1 ? this.chunks[0]! : this.flatten();
      const length = head.readUInt32BE(0);
      if (length > this.maxFrameBytes) {
        // the worker checks the limit itself; this guards against a broken worker
        this.socket.destroy();
        this.fail(new FrameTooLargeError(length, this.maxFrameBytes));
        return;
      }
      if (this.buffered < 5 + length) return;
      const all = this.flatten();
      const frame: Frame = { type: all[4]!, payload: all.subarray(5, 5 + length) };
      const rest = all.subarray(5 + length);
      this.chunks = rest.length ? [rest] : [];
      this.buffered = rest.length;
      const p = this.pending.shift();
      this.pending[0]?.onHead?.();
      p?.answered(null, frame);
    }
  }

  private flatten(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks, this.buffered)];
    return this.chunks[0]!;
  }

  private fail(err: Error): void {
    if (!this.closedError) this.closedError = err;
    const [head, ...behind] = this.pending;
    this.pending = [];
    this.unsent = [];
    head?.answered(err);
    for (const p of behind) p.answered(new NotStartedError(err));
  }
}
