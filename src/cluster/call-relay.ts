// Calls to a cell node whose sessions one gateway worker holds ("its home"), from the other
// workers. With fewer sessions than workers (a cell node's default is one session per
// instance), sharing them out meant handing them from worker to worker every 100 ms: calls
// waited up to a rotation for them, and only one worker's CPU served the node at a time. Now
// the primary gives all of such a node's sessions to one worker, and the others, after doing
// a call's HTTP/gRPC, auth, folder and input work themselves, send its worker frame to the
// home over a unix socket; the home queues it with its own calls in the node's one dispatcher
// and sends the instance's answer frame back. One hop of frames, no parsing in the home.
// Image nodes alike, but what goes to the home is the call's HTTP exchange itself: an HTTP/2
// stream on the same socket (told apart by its preface), naming the node in its headers
// (gateway/proxy.ts serves it there as its own calls, minus what the sender already did).
//
// Wire format, both directions: [u32 BE body length][u8 type][u32 BE call id][body].
//   CALL (to the home):  [u16 node id length][node id][u16 sticky key length][sticky key][u8 flags][worker frame payload]
//   answer:              the instance's frame type (OK, USER_ERROR, CALL_ERROR) and payload; or a
//                        BerthError as JSON: FAILED (an instance had the call: a timeout, a failed
//                        instance) or REFUSED (the call could not start); or SKIPPED (a mirror call
//                        that found no free session).
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { IncomingHttpHeaders } from 'node:http2';
import { H2Front, type CallerStream } from '../gateway/h2/server.js';
import { rmSync, chmodSync } from 'node:fs';
import { BerthError, errorFromWire, errorToWire } from '../core/errors.js';
import type { Frame } from '../worker/protocol.js';
import { NO_FREE_SESSION, RELAY_UNREACHABLE, type CallRelay } from '../gateway/routing-table.js';
import type { UpstreamRequest, UpstreamResponse } from '../gateway/upstream.js';
import { H2Upstream } from '../gateway/h2/client.js';

const CALL = 0x01;
const REFUSED = 0xe0;
const SKIPPED = 0xe1;
const FAILED = 0xe2;
/** Flags of a CALL: only if a session is free now (mirrored calls never queue behind real ones). */
const ONLY_IF_FREE = 0x01;
const HEADER = 9;
const DAY_MS = 24 * 3600_000;

/** What the home runs for a relayed call: the same path as its own calls. */
export type RunHere = (nodeId: string, payload: Buffer, stickyKey: string | undefined, onlyIfFree: boolean) => Promise<Frame | BerthError>;
/** What the home runs for a relayed image-node call (an HTTP/2 stream naming the node). */
export type ServeStream = (stream: CallerStream, headers: IncomingHttpHeaders) => Promise<void>;

/** How a stream connection starts ('PRI *' of the HTTP/2 preface); a frame's fifth byte is its type, never '*'. */
const H2_START = Buffer.from('PRI *');

/** Reads [u32 length][u8 type][u32 id][body] frames from a stream. */
class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(private readonly maxBytes: number, private readonly onFrame: (type: number, id: number, body: Buffer) => void) {}

  /** False when a frame is over the limit (the connection is to be closed). */
  push(chunk: Buffer): boolean {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    while (this.buffered >= HEADER) {
      const head = this.flatten();
      const length = head.readUInt32BE(0);
      if (length > this.maxBytes) return false;
      if (this.buffered < HEADER + length) return true;
      const type = head[4]!;
      const id = head.readUInt32BE(5);
      const body = head.subarray(HEADER, HEADER + length);
      const rest = head.subarray(HEADER + length);
      this.chunks = rest.length ? [rest] : [];
      this.buffered = rest.length;
      this.onFrame(type, id, body);
    }
    return true;
  }

  private flatten(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks, this.buffered)];
    return this.chunks[0]!;
  }
}

function writeFrame(socket: Socket, type: number, id: number, parts: Buffer[]): void {
  let length = 0;
  for (const p of parts) length += p.length;
  const head = Buffer.allocUnsafe(HEADER);
  head.writeUInt32BE(length, 0);
  head[4] = type;
  head.writeUInt32BE(id, 5);
  // frames written in one turn of the event loop leave in one write: a write to another process
  // wakes it, and on a virtual machine a wake-up costs more than the copy
  if (socket.writableCorked === 0) {
    socket.cork();
    setImmediate(() => socket.uncork());
  }
  socket.write(head);
  for (const p of parts) socket.write(p);
}

/** The home's side: a unix socket (mode 0600, in BERTH_HOME) the other gateway workers send calls to. */
export class RelayServer {
  private readonly server: Server;
  private readonly h2: H2Front;
  private readonly sockets = new Set<Socket>();
  /** Relayed calls running here (shutdown waits for them as for its own). */
  inFlight = 0;
  /** Calls served for other workers, since start. */
  served = 0;

  constructor(readonly path: string, private readonly maxBytes: number, private readonly runHere: RunHere, serveStream: ServeStream) {
    this.server = createServer((socket) => this.accept(socket));
    // the gateway's own HTTP/2 server side; the sender is another worker of this Berth: its calls
    // are bounded by the node's sessions, and a connection lives as long as both workers do
    this.h2 = new H2Front({
      headersTimeoutMs: DAY_MS, idleTimeoutMs: DAY_MS, maxStreams: 1000, trusted: true, onRequest: () => undefined,
      onStream: (stream, headers) => {
        this.inFlight++;
        this.served++;
        stream.once('close', () => { this.inFlight--; });
        void serveStream(stream, headers);
      },
    });
  }

  async listen(): Promise<void> {
    rmSync(this.path, { force: true });
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      // exclusive: this process's own socket. Without it a cluster worker's listen goes through the
      // primary, which accepts and hands each connection over: one handed to a worker as it died
      // was held open by the primary with nobody reading it, and the calls on it waited out
      // their deadlines; a socket of its own dies with the worker, and callers see it at once
      this.server.listen({ path: this.path, exclusive: true }, () => { this.server.off('error', reject); resolve(); });
    });
    chmodSync(this.path, 0o600);
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => undefined);
    const reader = new FrameReader(this.maxBytes, (type, id, body) => {
      if (type !== CALL) { socket.destroy(); return; }
      this.call(socket, id, body);
    });
    // the first bytes say which: frames (cell nodes) or HTTP/2 (image nodes)
    let head: Buffer | null = null;
    const onData = (chunk: Buffer): void => {
      if (head === null && chunk.length >= H2_START.length) head = chunk;
      else { head = head ? Buffer.concat([head, chunk]) : chunk; if (head.length < H2_START.length) return; }
      socket.off('data', onData);
      if (head.subarray(0, H2_START.length).equals(H2_START)) {
        socket.pause();
        socket.unshift(head);
        this.h2.accept(socket);
        return;
      }
      socket.on('data', (c: Buffer) => { if (!reader.push(c)) socket.destroy(); });
      if (!reader.push(head)) socket.destroy();
    };
    socket.on('data', onData);
  }

  private call(socket: Socket, id: number, body: Buffer): void {
    let nodeId: string, stickyKey: string | undefined, flags: number, payload: Buffer;
    try {
      let at = 0;
      const nodeLength = body.readUInt16BE(at); at += 2;
      nodeId = body.toString('utf8', at, at + nodeLength); at += nodeLength;
      const stickyLength = body.readUInt16BE(at); at += 2;
      stickyKey = stickyLength > 0 ? body.toString('utf8', at, at + stickyLength) : undefined; at += stickyLength;
      flags = body.readUInt8(at); at += 1;
      payload = body.subarray(at);
    } catch {
      socket.destroy(); // a frame too short for its own fields: not one of ours
      return;
    }
    this.inFlight++;
    this.served++;
    this.runHere(nodeId, payload, stickyKey, (flags & ONLY_IF_FREE) !== 0).then(
      (answer) => {
        if (answer instanceof BerthError) writeFrame(socket, FAILED, id, [errorToWire(answer)]);
        else writeFrame(socket, answer.type, id, [answer.payload]);
      },
      (err: unknown) => {
        if (err === NO_FREE_SESSION) return writeFrame(socket, SKIPPED, id, []);
        writeFrame(socket, REFUSED, id, [errorToWire(err instanceof BerthError ? err : new BerthError('INTERNAL', `relayed call failed: ${(err as Error).message}`))]);
      },
    ).finally(() => { this.inFlight--; });
  }

  close(): void {
    this.server.close();
    this.h2.closeAll();
    for (const s of this.sockets) s.destroy();
    rmSync(this.path, { force: true });
  }
}

interface Pending { resolve: (answer: Frame | BerthError) => void; reject: (e: unknown) => void }

/** A worker's connection to one home (one per home, shared by every node homed there; calls are multiplexed). */
export class RelayClient implements CallRelay {
  private socket: Socket | null = null;
  private reader: FrameReader | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  /** Image-node calls go to the home as HTTP/2 streams, over a connection of their own. */
  private streams: H2Upstream | null = null;
  private streaming = 0;
  /** Calls sent to the home, since start. */
  sent = 0;

  constructor(readonly path: string, private readonly maxBytes: number) {}

  /** The home's answer (see CallRelay). */
  call(nodeId: string, payload: Buffer, stickyKey: string | undefined, onlyIfFree: boolean): Promise<Frame | BerthError> {
    const socket = this.socket ?? this.open();
    const id = this.nextId;
    this.nextId = this.nextId === 0xffffffff ? 1 : this.nextId + 1;
    const node = Buffer.from(nodeId);
    const sticky = Buffer.from(stickyKey ?? '');
    const head = Buffer.allocUnsafe(2 + node.length + 2 + sticky.length + 1);
    let at = head.writeUInt16BE(node.length, 0);
    at += node.copy(head, at);
    at = head.writeUInt16BE(sticky.length, at);
    at += sticky.copy(head, at);
    head[at] = onlyIfFree ? ONLY_IF_FREE : 0;
    this.sent++;
    return new Promise<Frame | BerthError>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      writeFrame(socket, CALL, id, [head, payload]);
    });
  }

  /** The home's answer to an image-node call (see CallRelay). */
  async request(req: UpstreamRequest): Promise<UpstreamResponse> {
    this.streams ??= new H2Upstream({ path: this.path });
    this.sent++;
    this.streaming++;
    let res: UpstreamResponse;
    try {
      res = await this.streams.request(req);
    } catch (err) {
      this.streaming--;
      throw err;
    }
    void res.trailers.then(() => { this.streaming--; });
    return res;
  }

  /** Calls waiting for an answer. */
  get waiting(): number { return this.pending.size + this.streaming; }

  private open(): Socket {
    const socket = connect(this.path);
    this.socket = socket;
    let connected = false;
    socket.once('connect', () => { connected = true; });
    this.reader = new FrameReader(this.maxBytes, (type, id, body) => this.answer(type, id, body));
    socket.on('data', (chunk: Buffer) => { if (!this.reader!.push(chunk)) socket.destroy(); });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (this.socket === socket) { this.socket = null; this.reader = null; }
      // nothing written before the connection was made was delivered: those calls can go elsewhere;
      // the others may have reached the instance
      if (!connected) return this.failAll(RELAY_UNREACHABLE);
      const gone = new BerthError('INSTANCE_FAILED', 'the gateway worker holding the node\'s sessions went away during the call');
      for (const p of this.pending.values()) p.resolve(gone);
      this.pending.clear();
    });
    return socket;
  }

  private answer(type: number, id: number, body: Buffer): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (type === SKIPPED) return p.reject(NO_FREE_SESSION);
    if (type === REFUSED) return p.reject(errorFromWire(body));
    p.resolve(type === FAILED ? errorFromWire(body) : { type, payload: body });
  }

  private failAll(err: unknown): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  close(): void {
    this.socket?.destroy();
    this.socket = null;
    this.streams?.close();
    this.streams = null;
  }
}
