// Usage accounting: instance time per node and resources preset, calls and bytes in and out,
// per folder, kept by hour (docs/usage.md). Two feeds, one place that writes:
// - instance time from the controller: each run of an instance is clocked from the moment the
//   runtime has started it (Preparing counts, as the modelled platform bills from start) until
//   its process or container has exited; a suspended node or one with no instance runs nothing,
//   so it accrues nothing;
// - calls and bytes from the gateway's call path, counted in memory (gateway/usage-meter.ts)
//   and handed over in batches: drained here with one gateway, or carried up in the gateway
//   workers' load reports.
// Every FLUSH_MS the time accrued by running instances and the calls gathered go to the store
// in one transaction, so a `kill -9` of `berth up` loses at most that much. Running instances
// are written down too (`usage_open`), so a container that outlives a crash and is adopted by
// the next `berth up` is billed for the time between (from the last flush).
import type { Metrics } from '../core/metrics.js';
import { log } from '../core/log.js';
import type { CallUsage } from '../routing/usage.js';
import type { OpenInstance, UsageDelta, UsageStore } from './store.js';

/** How often accrued usage is written (the most a crash can lose). */
export const FLUSH_MS = 5000;
const HOUR_MS = 3_600_000;

/** What one run of an instance is billed under. */
export interface InstanceUsageKey {
  folderId: string;
  nodeId: string;
  preset: string;
  instanceId: string;
}

/** The controller's side: a run starts now (or was adopted); the returned function ends it. */
export interface InstanceClock {
  started(key: InstanceUsageKey, adopted?: boolean): () => void;
}

/** Nothing measured (before `berth up` wires a recorder in). */
export const NO_CLOCK: InstanceClock = { started: () => () => undefined };

interface Run { key: InstanceUsageKey; from: number; ended: boolean }

export interface RecorderOptions {
  /** The name a node has now (kept with its rows, so a deleted node's usage still names it). */
  nameOf: (nodeId: string) => string | undefined;
  flushMs?: number;
}

export class UsageRecorder implements InstanceClock {
  /** Runs clocking now, by instance id (an instance's runs never overlap: a restart follows its exit). */
  private readonly runs = new Map<string, Run>();
  /** What `usage_open` holds for runs the last Berth left: resumed if the instance is adopted. */
  private leftover = new Map<string, OpenInstance>();
  /** Ended runs whose `usage_open` row goes with the next write. */
  private ended = new Set<string>();
  private pending = new Map<string, UsageDelta>();
  private readonly sources: Array<() => CallUsage[]> = [];
  private timer: NodeJS.Timeout | null = null;
  private soon = false;
  private writing: Promise<void> = Promise.resolve();
  private readonly flushMs: number;

  constructor(private readonly store: UsageStore, private readonly metrics: Metrics, private readonly opts: RecorderOptions) {
    this.flushMs = opts.flushMs ?? FLUSH_MS;
  }

  /** Reads what the previous run left open; call before the controller adopts instances. */
  async load(): Promise<void> {
    this.leftover = new Map((await this.store.openInstances()).map((o) => [o.instanceId, o]));
  }

  /** Instances of the previous run that were not adopted are gone: their rows go (what they ran is written up to their last flush). */
  forgetLeftovers(): void {
    for (const id of this.leftover.keys()) if (!this.runs.has(id)) this.ended.add(id);
    this.leftover.clear();
  }

  /** A gateway in this process: its meter is drained at each flush. */
  drainFrom(source: () => CallUsage[]): void { this.sources.push(source); }

  start(): void {
    this.timer = setInterval(() => void this.flush(), this.flushMs);
    this.timer.unref();
  }

  /** Stops the timer and writes what is left (graceful shutdown, after the instances have stopped). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.flush();
  }

  started(key: InstanceUsageKey, adopted = false): () => void {
    const now = Date.now();
    // an adopted container ran while no Berth watched: from the last time it was written down
    const left = adopted ? this.leftover.get(key.instanceId) : undefined;
    const from = left && left.nodeId === key.nodeId && left.until <= now ? left.until : now;
    this.leftover.delete(key.instanceId);
    const run: Run = { key, from, ended: false };
    this.runs.set(key.instanceId, run);
    this.ended.delete(key.instanceId);
    // written down at once, not at the next flush: a container that outlives a crash in its
    // first seconds is still known to the next Berth (starts are rare: this is never per call)
    this.flushSoon();
    return () => {
      if (run.ended) return;
      run.ended = true;
      this.accrue(run.key, run.from, Date.now());
      if (this.runs.get(key.instanceId) === run) {
        this.runs.delete(key.instanceId);
        this.ended.add(key.instanceId);
      }
    };
  }

  /** One write for every run started in this turn of the event loop (a scale-out starts several). */
  private flushSoon(): void {
    if (this.soon || this.timer === null) return;
    this.soon = true;
    setImmediate(() => { this.soon = false; void this.flush(); });
  }

  /** Calls and bytes gathered by a gateway (this process's, or a worker's report). */
  addCalls(rows: readonly CallUsage[], at = Date.now()): void {
    const hour = Math.floor(at / HOUR_MS) * HOUR_MS;
    for (const r of rows) {
      if (!(r.calls > 0)) continue;
      const d = this.delta(hour, r.folderId, r.nodeId, r.preset);
      d.calls += r.calls;
      d.bytesIn += r.bytesIn;
      d.bytesOut += r.bytesOut;
    }
  }

  /**
   * Writes everything accrued so far in one transaction: the running instances' time up to
   * now, the calls gathered, and which instances are running. Flushes never overlap.
   */
  flush(): Promise<void> {
    this.writing = this.writing.then(() => this.write(), () => this.write());
    return this.writing;
  }

  private async write(): Promise<void> {
    const now = Date.now();
    for (const source of this.sources) this.addCalls(source(), now);
    for (const run of this.runs.values()) { this.accrue(run.key, run.from, now); run.from = now; }
    const rows = [...this.pending.values()];
    const open: OpenInstance[] = [...this.runs.values()].map((r) => ({ ...r.key, until: now }));
    const closed = [...this.ended];
    this.pending = new Map();
    this.ended = new Set();
    for (const r of rows) r.nodeName = this.opts.nameOf(r.nodeId) ?? null;
    try {
      await this.store.writeUsage(rows, open, closed);
    } catch (err) {
      // kept for the next flush: nothing is lost while the database is briefly unwritable
      for (const r of rows) this.merge(r);
      for (const id of closed) if (!this.runs.has(id)) this.ended.add(id);
      log.error({ event: 'usage_write_failed', error: (err as Error).message }, 'usage write failed');
      return;
    }
    for (const r of rows) this.metrics.usage(r.folderId, r.nodeId, r.preset, r);
  }

  /** Instance time from `from` to `to`, split at hour boundaries into each hour's row. */
  private accrue(key: InstanceUsageKey, from: number, to: number): void {
    while (from < to) {
      const hour = Math.floor(from / HOUR_MS) * HOUR_MS;
      const until = Math.min(to, hour + HOUR_MS);
      this.delta(hour, key.folderId, key.nodeId, key.preset).instanceSeconds += (until - from) / 1000;
      from = until;
    }
  }

  private delta(hour: number, folderId: string, nodeId: string, preset: string): UsageDelta {
    const k = `${hour}\u0000${folderId}\u0000${nodeId}\u0000${preset}`;
    let d = this.pending.get(k);
    if (!d) {
      d = { hour, folderId, nodeId, nodeName: null, preset, instanceSeconds: 0, calls: 0, bytesIn: 0, bytesOut: 0 };
      this.pending.set(k, d);
    }
    return d;
  }

  private merge(r: UsageDelta): void {
    const d = this.delta(r.hour, r.folderId, r.nodeId, r.preset);
    d.instanceSeconds += r.instanceSeconds;
    d.calls += r.calls;
    d.bytesIn += r.bytesIn;
    d.bytesOut += r.bytesOut;
  }
}
