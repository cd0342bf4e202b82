// The primary's front socket with gateway workers: it accepts every client connection itself
// (paused: it never reads a byte) and hands each one, round robin, to a ready worker over the
// IPC channel; the worker acknowledges at once and serves it, and only then does the primary
// close its own copy of the socket.
//
// Why not Node's cluster round robin (SCHED_RR): there the primary forgets a connection once
// it has passed it on, and if the worker dies before taking it (it was killed, or the primary
// had not seen its exit yet) the handle is lost and the client waits forever (nodejs/node#21746).
// Here a connection stays ours until a worker has it: when a worker's channel closes, the
// connections it had not acknowledged go to another live worker; with no worker alive they are
// held briefly (a replacement is starting), then closed. Nothing here is per request, only per
// connection, and the kernel's balance (SCHED_NONE) was measured worse with keep-alive clients.
import { createServer, type Server, type Socket } from 'node:net';
import type { Worker } from 'node:cluster';
import type { ToWorker } from './messages.js';

/** A connection no worker can take (none alive) is held this long for a replacement, then closed. */
const HOLD_MS = 5000;
/** A worker that has not acknowledged a connection this long never will: it is closed (never hangs). */
const ACK_TIMEOUT_MS = 10_000;
const SWEEP_MS = 1000;

interface Handoff { socket: Socket; at: number }

export interface DistributorStats {
  /** Connections handed to each worker (by cluster worker id), since it started. */
  handedOff: Record<string, number>;
  /** Handed to a worker that went away before acknowledging, then to another one. */
  reassigned: number;
  /** Closed without a worker: none was alive within HOLD_MS, or one never acknowledged. */
  dropped: number;
}

export class ConnectionDistributor {
  private server: Server | null = null;
  private next = 0;
  private seq = 0;
  /** Per worker id: connections sent and not acknowledged yet. */
  private readonly pending = new Map<number, Map<number, Handoff>>();
  /** Connections waiting for any worker to be ready. */
  private held: Handoff[] = [];
  private readonly handed = new Map<number, number>();
  private reassigned = 0;
  private dropped = 0;
  private sweeper: NodeJS.Timeout | null = null;
  private closed = false;

  /** `ready()`: the workers that may take connections now (alive, listening, not draining). */
  constructor(private readonly ready: () => Worker[]) {}

  /** Listens on the port; resolves with the port bound. */
  listen(port: number, host: string): Promise<number> {
    const server = createServer({ pauseOnConnect: true, noDelay: true }, (socket) => this.accept(socket));
    this.server = server;
    this.sweeper = setInterval(() => this.sweep(), SWEEP_MS).unref();
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.removeListener('error', reject);
        server.on('error', () => undefined); // accept errors (EMFILE…): the server keeps listening
        const a = server.address();
        resolve(typeof a === 'object' && a ? a.port : port);
      });
    });
  }

  private accept(socket: Socket): void {
    socket.on('error', () => socket.destroy());
    this.place({ socket, at: Date.now() });
  }

  /** Hands a connection to the next ready worker, or holds it while none is. */
  private place(h: Handoff): void {
    if (h.socket.destroyed) return;
    if (this.closed) { h.socket.destroy(); return; }
    const workers = this.ready();
    if (workers.length === 0) { this.held.push(h); return; }
    const worker = workers[this.next++ % workers.length]!;
    const id = ++this.seq;
    let mine = this.pending.get(worker.id);
    if (!mine) this.pending.set(worker.id, mine = new Map());
    mine.set(id, h);
    this.handed.set(worker.id, (this.handed.get(worker.id) ?? 0) + 1);
    const message: ToWorker = { t: 'conn', id };
    // not one of the primary server's tracked sockets (child_process would keep a list of them
    // in both processes, with a message on every close): it is the worker's once acknowledged
    Reflect.set(h.socket, 'server', null);
    try {
      // keepOpen: the primary's copy stays open until the worker has acknowledged it
      worker.send(message, h.socket, { keepOpen: true }, (err) => { if (err) this.retry(worker.id, id); });
    } catch {
      this.retry(worker.id, id);
    }
  }

  private retry(workerId: number, id: number): void {
    const h = this.pending.get(workerId)?.get(id);
    if (!h) return;
    this.pending.get(workerId)!.delete(id);
    this.reassigned++;
    this.place(h);
  }

  /** The worker has the connection: the primary's copy closes (the worker's stays open). */
  acknowledged(workerId: number, id: number): void {
    const h = this.pending.get(workerId)?.get(id);
    if (!h) return;
    this.pending.get(workerId)!.delete(id);
    h.socket.destroy();
  }

  /** A worker's channel closed (it died or is exiting): what it had not acknowledged goes elsewhere. */
  workerGone(workerId: number): void {
    const mine = this.pending.get(workerId);
    this.pending.delete(workerId);
    this.handed.delete(workerId);
    if (!mine) return;
    for (const h of mine.values()) { this.reassigned++; this.place(h); }
  }

  /** A worker became ready: the held connections go out. */
  workerReady(): void {
    const held = this.held;
    this.held = [];
    for (const h of held) this.place(h);
  }

  private sweep(): void {
    const now = Date.now();
    if (this.held.length > 0) {
      const keep: Handoff[] = [];
      for (const h of this.held) {
        if (h.socket.destroyed) continue;
        if (now - h.at > HOLD_MS) { this.dropped++; h.socket.destroy(); } else keep.push(h);
      }
      this.held = keep;
      if (this.ready().length > 0) this.workerReady();
    }
    for (const mine of this.pending.values()) {
      for (const [id, h] of mine) {
        if (h.socket.destroyed) { mine.delete(id); continue; }
        if (now - h.at > ACK_TIMEOUT_MS) { mine.delete(id); this.dropped++; h.socket.destroy(); }
      }
    }
  }

  /** Stops accepting (SIGTERM); held connections are closed, those handed out are the workers'. */
  close(): void {
    this.closed = true;
    this.server?.close();
    if (this.sweeper) clearInterval(this.sweeper);
    for (const h of this.held) h.socket.destroy();
    this.held = [];
  }

  stats(): DistributorStats {
    return { handedOff: Object.fromEntries([...this.handed].map(([k, v]) => [String(k), v])), reassigned: this.reassigned, dropped: this.dropped };
  }
}
