// Balancing for one node: hands out sessions (one persistent worker connection each) of
// Healthy instances, never more than sessionsPerInstance per instance, least-busy first.
// Calls that find no free session wait in a bounded FIFO queue; past it they get 503.
import { BerthError } from '../core/errors.js';
import type { Upstream } from './upstream.js';
import { hash32 } from '../core/hash.js';
import { callDeadlines, type CallSignal, type Deadline } from './deadlines.js';

/** One of an instance's sessions: a worker connection (cell) or a permit (image). */
export interface Session { readonly closed: boolean }

/** An instance as the dispatcher sees it, with the gateway's connections to it. */
export interface Slot {
  readonly id: string;
  /** Free sessions; at most sessionsPerInstance exist per instance. */
  readonly free: Session[];
  busy: number;
  lastUsedAt: number;
  /** Image instances: the gateway's persistent connections to it. */
  upstream: Upstream | null;
  /** Its sessions are open: it may take calls. */
  ready: boolean;
  /** Gone from the routing snapshot: takes no new call, closes when the last one ends. */
  retired: boolean;
  /** Sessions this gateway may hold on the instance (its lease); a session released above it is closed. Absent: no cap here. */
  limit?: number;
  /** Sessions being opened (counted against the limit). */
  opening?: number;
  /** When the controller saw it Healthy (ms since the epoch; 0: unknown, as settled as can be). */
  since?: number;
}

/** `calls`: more than one call shares the session (pipelined, see NodeDispatcher.pipelineDepth); it is free again when the last ends. */
export interface Lease { slot: Slot; conn: Session; calls?: number }

interface Waiter {
  /** Sticky calls wait for one instance (chosen by the key), not for any. */
  affinity: string | undefined;
  resolve: (lease: Lease) => void;
  reject: (err: unknown) => void;
  /** How long it may wait (on the process's one deadline timer, as the calls' own deadlines). */
  timer: Deadline;
  done: boolean;
}

/** Sticky keys remembered per node. */
const MAX_PINS = 100_000;
/** How long an instance serves before new sticky keys go to it. */
const STICKY_SETTLE_MS = 10_000;

export class NodeDispatcher {
  private slots: readonly Slot[] = [];
  private next = 0;
  private waiters: Waiter[] = [];
  private head = 0;
  private queued = 0;
  /** Calls sent behind another on a session (pipelined), not yet answered: they count as waiting. */
  private pipelined = 0;

  constructor(private readonly nodeId: string, private queueSize: number) {}

  /**
   * How many waiting calls one session takes at once when it frees (1: one call per session).
   * Cell nodes: their worker runs a connection's frames in turn, so the next call's frame is
   * already there when one ends, without the round trip through Berth in between (measured:
   * docs/benchmarks.md). The instance still runs one call per session at a time.
   */
  pipelineDepth = 1;

  /** With gateway workers: calls the other workers have waiting for this node (queueSize bounds them all together). */
  elsewhere = 0;

  /** Told when a session was given back because the lease shrank, or calls start to wait (a gateway worker reports both at once). */
  onLoadChange: (() => void) | null = null;

  setQueueSize(n: number): void { this.queueSize = n; }

  /** Why calls fail at once while no instance takes calls (the node is failing or suspended); null: they wait. */
  private refusal: BerthError | null = null;

  /** Scale to zero: calls that find no instance are held this long while one starts (null: not a scale-to-zero node). */
  private hold: { ms: number; startError?: string } | null = null;

  /** Told when a call is held at a node with no instance (the controller starts one at once). */
  onHeld: (() => void) | null = null;

  setHold(hold: { ms: number; startError?: string } | null): void { this.hold = hold; }

  /** How long a call arriving now would be held (no instance in balancing on a scale-to-zero node); null: not held. */
  get holdMs(): number | null { return this.hold && this.slots.length === 0 ? this.hold.ms : null; }

  setRefusal(err: BerthError | null): void {
    this.refusal = err;
    if (err && this.slots.length === 0) this.rejectAll(err);
  }

  /** Replaces the set of balanced instances (an immutable swap), then serves waiters. */
  setSlots(slots: readonly Slot[]): void {
    this.slots = slots;
    if (this.refusal && slots.length === 0) this.rejectAll(this.refusal);
    this.drain();
  }

  get healthyCount(): number { return this.slots.length; }

  /** Whether a call would get a session right now without waiting. */
  hasFree(): boolean {
    return this.queued === 0 && this.slots.some((s) => s.free.length > 0);
  }

  /** Calls waiting for a session right now, or sent behind another one on it. */
  get waiting(): number { return this.queued + this.pipelined; }

  get busy(): number {
    let n = 0;
    for (const s of this.slots) n += s.busy;
    return n;
  }

  /**
   * A free session now, or a promise of one within waitMs; 503 if the queue is full.
   * With an affinity key, always the same instance while it stays Healthy. With a signal,
   * a caller that goes away leaves the queue at once (its place must not count against
   * queueSize until its timeout) and the promise rejects with the signal's reason.
   */
  acquire(waitMs: number, affinity?: string, signal?: CallSignal): Lease | Promise<Lease> {
    const lease = this.take(affinity);
    if (lease) return lease;
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.refusal && this.slots.length === 0) throw this.refusal;
    if (this.queued + this.pipelined + this.elsewhere >= this.queueSize) {
      throw new BerthError('NODE_UNAVAILABLE', `node ${this.nodeId} is at capacity: all sessions busy and ${this.queueSize} calls already waiting`,
        { nodeId: this.nodeId, queueSize: this.queueSize }, { 'retry-after': '1' });
    }
    // at zero, a call waits for the instance it wakes, up to the node's holdTimeout
    const held = this.holdMs;
    if (held !== null) waitMs = held;
    return new Promise<Lease>((resolve, reject) => {
      // leave the queue: counted out now, skipped by drain() later
      const leave = (): boolean => {
        if (w.done) return false;
        w.done = true;
        this.queued--;
        if (w.affinity !== undefined) this.stickyWaiting--;
        signal?.removeEventListener('abort', onAbort);
        return true;
      };
      const onAbort = (): void => {
        if (!leave()) return;
        callDeadlines.clear(w.timer);
        reject(signal!.reason);
      };
      const w: Waiter = {
        affinity, done: false,
        resolve: (l) => { signal?.removeEventListener('abort', onAbort); resolve(l); },
        reject: (e) => { signal?.removeEventListener('abort', onAbort); reject(e); },
        timer: callDeadlines.start(waitMs, () => {
          if (!leave()) return;
          if (held !== null && this.slots.length === 0) {
            const why = this.hold?.startError;
            const reason = `scaled to zero and no instance became ready within the hold of ${Math.round(held / 100) / 10}s${why ? `: the last start failed: ${why}` : ''}`;
            reject(new BerthError('NODE_UNAVAILABLE', `node ${this.nodeId} ${reason}`,
              { nodeId: this.nodeId, reason, holdTimeoutSeconds: held / 1000 }, { 'retry-after': '5' }));
            return;
          }
          const reason = this.slots.length === 0 ? 'has no healthy instance' : 'had no free session';
          reject(new BerthError('NODE_UNAVAILABLE', `node ${this.nodeId} ${reason} within ${Math.round(waitMs / 100) / 10}s`,
            { nodeId: this.nodeId }, { 'retry-after': '1' }));
        }),
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(w);
      this.queued++;
      if (affinity !== undefined) this.stickyWaiting++;
      // the first call to wait is news (a gateway worker reports at once: it may lack sessions);
      // how many wait after that goes with the periodic report, or every queued call would be a message
      if (this.queued === 1 || (affinity !== undefined && this.stickyWaiting === 1)) this.onLoadChange?.();
      if (held !== null) this.onHeld?.(); // after the load report: the controller sees the call it wakes for
    });
  }

  private stickyWaiting = 0;

  /** Sticky calls waiting, per instance they wait for (a gateway worker reports them: its lease there must not be 0). */
  stickyWaitingByInstance(): Record<string, number> {
    const out: Record<string, number> = {};
    if (this.stickyWaiting === 0 || this.slots.length === 0) return out;
    for (let i = this.head; i < this.waiters.length; i++) {
      const w = this.waiters[i]!;
      if (w.done || w.affinity === undefined) continue;
      const id = this.stickySlot(w.affinity)!.id;
      out[id] = (out[id] ?? 0) + 1;
    }
    return out;
  }

  /** Returns a session; a broken connection is not reused. */
  release(lease: Lease): void {
    if (lease.calls !== undefined && lease.calls > 1) { lease.calls--; this.pipelined--; return; } // others still run on it
    const slot = lease.slot;
    slot.busy--;
    slot.lastUsedAt = Date.now();
    if (slot.retired) {
      (lease.conn as { close?: () => void }).close?.();
      if (slot.busy === 0) { slot.upstream?.close(); slot.upstream = null; }
      return;
    }
    if (slot.limit !== undefined && slot.free.length + slot.busy + (slot.opening ?? 0) >= slot.limit) {
      // the lease shrank while this session was busy: give it back (the primary waits for that)
      (lease.conn as { close?: () => void }).close?.();
      this.onLoadChange?.();
      return;
    }
    if (!lease.conn.closed) slot.free.push(lease.conn);
    this.drain();
  }

  /** Rejects every waiting call (the node is going away, or its calls go elsewhere now). */
  rejectAll(err: unknown): void {
    for (let i = this.head; i < this.waiters.length; i++) {
      const w = this.waiters[i]!;
      if (w.done) continue;
      w.done = true;
      callDeadlines.clear(w.timer);
      w.reject(err);
    }
    this.waiters = []; this.head = 0; this.queued = 0; this.stickyWaiting = 0;
  }

  /** Sticky key → the instance it is on; bounded (the oldest keys are forgotten first). */
  private readonly pins = new Map<string, string>();

  /**
   * The instance a sticky key goes to: the one it is on while that one serves (new instances,
   * e.g. of a rollout, do not take keys away). A new or orphaned key goes by rendezvous hashing
   * over the settled instances (Healthy for STICKY_SETTLE_MS), else over the oldest one: gateway
   * workers keep pins of their own, and this way each of them picks the same instance for a key.
   */
  private stickySlot(affinity: string): Slot | null {
    const pinned = this.pins.get(affinity);
    if (pinned !== undefined) for (const s of this.slots) if (s.id === pinned) return s;
    let pool = this.slots;
    const settled = Date.now() - STICKY_SETTLE_MS;
    if (pool.some((s) => (s.since ?? 0) > settled)) {
      pool = pool.filter((s) => (s.since ?? 0) <= settled);
      if (pool.length === 0) {
        const oldest = Math.min(...this.slots.map((s) => s.since ?? 0));
        pool = this.slots.filter((s) => (s.since ?? 0) === oldest);
      }
    }
    let best: Slot | null = null;
    let top = -1;
    for (const s of pool) {
      const score = hash32(affinity + '\u0000' + s.id);
      if (score > top) { top = score; best = s; }
    }
    return best;
  }

  private pin(key: string, slotId: string): void {
    this.pins.delete(key);
    this.pins.set(key, slotId);
    if (this.pins.size > MAX_PINS) this.pins.delete(this.pins.keys().next().value!);
  }

  private take(affinity?: string): Lease | null {
    const slots = this.slots;
    const n = slots.length;
    if (n === 0) return null;
    let best: Slot | null = null;
    if (affinity !== undefined) {
      best = this.stickySlot(affinity)!;
      if (this.pins.get(affinity) !== best.id) this.pin(affinity, best.id);
      if (best.free.length === 0) return null;
      best!.busy++;
      return { slot: best!, conn: best!.free.pop()! };
    }
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
    if (this.stickyWaiting > 0) { this.drainScanning(); return; }
    while (this.queued > 0) {
      const w = this.nextWaiter();
      if (!w) break;
      const lease = this.take();
      if (!lease) break;
      this.hand(w, lease);
      // the calls behind it share the session while no other is free (pipelineDepth)
      let calls = 1;
      while (calls < this.pipelineDepth && this.queued > 0 && !this.anyFree()) {
        const behind = this.nextWaiter();
        if (!behind) break;
        this.hand(behind, lease);
        calls++;
      }
      if (calls > 1) { lease.calls = calls; this.pipelined += calls - 1; }
    }
    this.compact();
  }

  /** The first call still waiting (the FIFO path: no sticky waiters). */
  private nextWaiter(): Waiter | undefined {
    while (this.head < this.waiters.length && this.waiters[this.head]!.done) this.head++;
    return this.waiters[this.head];
  }

  private hand(w: Waiter, lease: Lease): void {
    this.head++;
    w.done = true;
    this.queued--;
    callDeadlines.clear(w.timer);
    w.resolve(lease);
  }

  private anyFree(): boolean {
    for (const s of this.slots) if (s.free.length > 0) return true;
    return false;
  }

  /** With sticky waiters a blocked one must not hold up the others: scan the whole queue. */
  private drainScanning(): void {
    for (let i = this.head; i < this.waiters.length && this.queued > 0; i++) {
      const w = this.waiters[i]!;
      if (w.done) continue;
      const lease = this.take(w.affinity);
      if (!lease) {
        if (w.affinity === undefined) break; // nothing free at all
        continue;
      }
      w.done = true;
      this.queued--;
      if (w.affinity !== undefined) this.stickyWaiting--;
      callDeadlines.clear(w.timer);
      w.resolve(lease);
    }
    while (this.head < this.waiters.length && this.waiters[this.head]!.done) this.head++;
    this.compact();
  }

  private compact(): void {
    if (this.head > 1024 && this.head * 2 > this.waiters.length) {
      this.waiters = this.waiters.slice(this.head);
      this.head = 0;
    }
  }
}

