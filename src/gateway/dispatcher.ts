// Balancing for one node: hands out sessions (one persistent worker connection each) of
// Healthy instances, never more than sessionsPerInstance per instance, least-busy first.
// Calls that find no free session wait in a bounded FIFO queue; past it they get 503.
import { BerthError } from '../core/errors.js';
import type { Upstream } from './upstream.js';

/** One of an instance's sessions: a worker connection (cell) or a permit (image). */
export interface Session { readonly closed: boolean }

/** An instance as the dispatcher sees it. The controller owns it and its connections. */
export interface Slot {
  readonly id: string;
  /** Free sessions; at most sessionsPerInstance exist per instance. */
  readonly free: Session[];
  busy: number;
  lastUsedAt: number;
  /** Image instances: the gateway's persistent connections to it. */
  upstream: Upstream | null;
}

export interface Lease { slot: Slot; conn: Session }

interface Waiter {
  resolve: (lease: Lease) => void;
  reject: (err: BerthError) => void;
  timer: NodeJS.Timeout;
  done: boolean;
}

export class NodeDispatcher {
  private slots: readonly Slot[] = [];
  private next = 0;
  private waiters: Waiter[] = [];
  private head = 0;
  private queued = 0;

  constructor(private readonly nodeId: string, private queueSize: number) {}

  setQueueSize(n: number): void { this.queueSize = n; }

  /** Replaces the set of balanced instances (an immutable swap), then serves waiters. */
  setSlots(slots: readonly Slot[]): void {
    this.slots = slots;
    this.drain();
  }

  get healthyCount(): number { return this.slots.length; }

  /** Calls waiting for a session right now. */
  get waiting(): number { return this.queued; }

  get busy(): number {
    let n = 0;
    for (const s of this.slots) n += s.busy;
    return n;
  }

  /** A free session now, or a promise of one within waitMs; 503 if the queue is full. */
  acquire(waitMs: number): Lease | Promise<Lease> {
    const lease = this.take();
    if (lease) return lease;
    if (this.queued >= this.queueSize) {
      throw new BerthError('NODE_UNAVAILABLE', `node ${this.nodeId} is at capacity: all sessions busy and ${this.queueSize} calls already waiting`,
        { nodeId: this.nodeId, queueSize: this.queueSize }, { 'retry-after': '1' });
    }
    return new Promise<Lease>((resolve, reject) => {
      const w: Waiter = {
        resolve, reject, done: false,
        timer: setTimeout(() => {
          if (w.done) return;
          w.done = true;
          this.queued--;
          const reason = this.slots.length === 0 ? 'has no healthy instance' : 'had no free session';
          reject(new BerthError('NODE_UNAVAILABLE', `node ${this.nodeId} ${reason} within ${Math.round(waitMs / 100) / 10}s`,
            { nodeId: this.nodeId }, { 'retry-after': '1' }));
        }, waitMs),
      };
      this.waiters.push(w);
      this.queued++;
    });
  }

  /** Returns a session; a broken connection is not reused. */
  release(lease: Lease): void {
    lease.slot.busy--;
    lease.slot.lastUsedAt = Date.now();
    if (!lease.conn.closed) lease.slot.free.push(lease.conn);
    this.drain();
  }

  /** Rejects every waiting call (the node is going away). */
  rejectAll(err: BerthError): void {
    for (let i = this.head; i < this.waiters.length; i++) {
      const w = this.waiters[i]!;
      if (w.done) continue;
      w.done = true;
      clearTimeout(w.timer);
      w.reject(err);
    }
    this.waiters = []; this.head = 0; this.queued = 0;
  }

  private take(): Lease | null {
    const slots = this.slots;
    const n = slots.length;
    if (n === 0) return null;
    let best: Slot | null = null;
    // rotate the starting point so equally idle instances share the load
    const start = this.next++ % n;
    for (let i = 0; i < n; i++) {
      const s = slots[(start + i) % n]!;
      if (s.free.length > 0 && (best === null || s.free.length > best.free.length)) best = s;
    }
    if (!best) return null;
    const conn = best.free.pop()!;
    best.busy++;
    return { slot: best, conn };
  }

  private drain(): void {
    while (this.queued > 0) {
      const w = this.waiters[this.head];
      if (!w) break;
      if (w.done) { this.head++; continue; }
      const lease = this.take();
      if (!lease) break;
      this.head++;
      w.done = true;
      this.queued--;
      clearTimeout(w.timer);
      w.resolve(lease);
    }
    if (this.head > 1024 && this.head * 2 > this.waiters.length) {
      this.waiters = this.waiters.slice(this.head);
      this.head = 0;
    }
  }
}
