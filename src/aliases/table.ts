// The aliases the gateway routes by. Each alias is an immutable AliasRoute, swapped whole
// in the map on update: a call resolves its alias once, so it never sees a half-applied
// change, and calls already running on a removed node finish there.
import type { AliasRecord, AliasSpec } from '../core/types.js';
import { hash32 } from '../core/hash.js';

/** How many shadow comparisons' latencies are kept for the status percentiles. */
const MIRROR_SAMPLES = 1000;

export interface MirrorStats {
  sent: number;
  compared: number;
  differing: number;
  shadowErrors: number;
  skipped: number;
  primaryMs: number[];
  shadowMs: number[];
}

export class AliasRoute {
  readonly aclFolders: ReadonlySet<string>;
  private readonly current: number[];
  private mirrorCounter = 0;

  constructor(readonly id: string, readonly spec: AliasSpec, readonly mirrorStats: MirrorStats) {
    this.aclFolders = new Set(spec.executionAcl.folders);
    this.current = spec.backends.map(() => 0);
  }

  mayCall(folderId: string): boolean {
    return this.spec.executionAcl.isPublic || this.aclFolders.has(folderId);
  }

  /**
   * The node for one call. Smooth weighted round-robin (as nginx's) over the backends
   * that have a Healthy instance, so 90/10 is 90/10 over any window; all of them when
   * none has. With a sticky key: weighted rendezvous hashing, stable while healthy.
   */
  pick(canServe: (nodeId: string) => boolean, stickyKey?: string): string {
    const backends = this.spec.backends;
    if (backends.length === 1) return backends[0]!.nodeId;
    let avail = backends.map((_, i) => i).filter((i) => canServe(backends[i]!.nodeId));
    if (avail.length === 0) avail = backends.map((_, i) => i);
    if (stickyKey !== undefined) {
      let best = avail[0]!;
      let top = -Infinity;
      for (const i of avail) {
        const u = (hash32(stickyKey + '\u0000' + backends[i]!.nodeId) + 1) / 4294967297;
        const score = -backends[i]!.weight / Math.log(u);
        if (score > top) { top = score; best = i; }
      }
      return backends[best]!.nodeId;
    }
    let total = 0;
    let best = avail[0]!;
    for (const i of avail) {
      const w = backends[i]!.weight;
      total += w;
      this.current[i]! += w;
      if (this.current[i]! > this.current[best]!) best = i;
    }
    this.current[best]! -= total;
    return backends[best]!.nodeId;
  }

  /** Whether this call is also sent to the shadow node (an even spread, not random). */
  shouldMirror(): boolean {
    const m = this.spec.mirror;
    if (!m) return false;
    this.mirrorCounter += m.percent;
    if (this.mirrorCounter >= 100) { this.mirrorCounter -= 100; return true; }
    return false;
  }

  recordMirror(primaryMs: number, shadowMs: number | null, same: boolean | null): void {
    const s = this.mirrorStats;
    if (shadowMs === null) { s.shadowErrors++; return; }
    s.compared++;
    if (same === false) s.differing++;
    push(s.primaryMs, primaryMs);
    push(s.shadowMs, shadowMs);
  }
}

function push(list: number[], v: number): void {
  list.push(v);
  if (list.length > MIRROR_SAMPLES) list.shift();
}

export function percentile(list: number[], p: number): number | null {
  if (list.length === 0) return null;
  const sorted = [...list].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Mirror statistics of one alias as a gateway worker reports them to the primary. */
export type MirrorReport = MirrorStats;

export class AliasTable {
  private byName = new Map<string, AliasRoute>();
  private readonly recordsByName = new Map<string, AliasRecord>();
  private readonly listeners: Array<() => void> = [];
  /** With gateway workers: each worker's mirror statistics per alias (the calls run there). */
  private readonly remoteMirror = new Map<string, Map<string, MirrorReport>>();

  /** Called after every set/delete (the primary forwards aliases to its gateway workers). */
  onChange(fn: () => void): void { this.listeners.push(fn); }

  /** Every alias as stored. */
  records(): AliasRecord[] { return [...this.recordsByName.values()]; }

  /** A gateway worker's aliases: the primary's whole set, swapped in (statistics kept per name). */
  replaceAll(records: readonly AliasRecord[]): void {
    const names = new Set(records.map((r) => r.spec.name));
    for (const name of [...this.byName.keys()]) if (!names.has(name)) this.delete(name);
    for (const r of records) if (this.recordsByName.get(r.spec.name) !== r) this.set(r);
  }

  /** This process's mirror statistics of every mirrored alias (a worker's report). */
  mirrorReports(): Record<string, MirrorReport> {
    const out: Record<string, MirrorReport> = {};
    for (const [name, a] of this.byName) if (a.spec.mirror && a.mirrorStats.sent + a.mirrorStats.skipped > 0) out[name] = a.mirrorStats;
    return out;
  }

  /** A worker's latest mirror statistics (the primary sums them in mirrorStatus); null: the worker is gone. */
  setRemoteMirror(worker: string, reports: Record<string, MirrorReport> | null): void {
    if (reports === null) { this.remoteMirror.delete(worker); return; }
    this.remoteMirror.set(worker, new Map(Object.entries(reports)));
  }

  private changed(): void { for (const fn of this.listeners) fn(); }

  /** Loads or replaces an alias; mirror statistics survive updates of the same alias. */
  set(record: AliasRecord): void {
    const previous = [...this.byName.values()].find((a) => a.id === record.id);
    if (previous && previous.spec.name !== record.spec.name) this.byName.delete(previous.spec.name);
    const sameShadow = previous?.spec.mirror?.nodeId === record.spec.mirror?.nodeId;
    const stats = previous && sameShadow ? previous.mirrorStats : { sent: 0, compared: 0, differing: 0, shadowErrors: 0, skipped: 0, primaryMs: [], shadowMs: [] };
    this.byName.set(record.spec.name, new AliasRoute(record.id, record.spec, stats));
    if (previous && previous.spec.name !== record.spec.name) this.recordsByName.delete(previous.spec.name);
    this.recordsByName.set(record.spec.name, record);
    this.changed();
  }

  delete(name: string): void {
    this.byName.delete(name);
    this.recordsByName.delete(name);
    this.changed();
  }

  get(name: string): AliasRoute | undefined { return this.byName.get(name); }

  /** The aliases that send calls (or mirrored calls) to a node. */
  relatedTo(nodeId: string): string[] {
    return [...this.byName.values()]
      .filter((a) => a.spec.backends.some((b) => b.nodeId === nodeId) || a.spec.mirror?.nodeId === nodeId)
      .map((a) => a.spec.name);
  }

  mirrorStatus(name: string): Record<string, unknown> | null {
    const a = this.byName.get(name);
    if (!a?.spec.mirror) return null;
    let s = a.mirrorStats;
    const remote = [...this.remoteMirror.values()].map((m) => m.get(name)).filter((r): r is MirrorReport => r !== undefined);
    if (remote.length > 0) {
      s = { ...s, primaryMs: [...s.primaryMs], shadowMs: [...s.shadowMs] };
      for (const r of remote) {
        s.sent += r.sent; s.compared += r.compared; s.differing += r.differing; s.shadowErrors += r.shadowErrors; s.skipped += r.skipped;
        s.primaryMs.push(...r.primaryMs); s.shadowMs.push(...r.shadowMs);
      }
    }
    return {
      shadowNodeId: a.spec.mirror.nodeId, percent: a.spec.mirror.percent, sent: s.sent, compared: s.compared,
      differing: s.differing, differingRatio: s.compared ? s.differing / s.compared : 0, shadowErrors: s.shadowErrors, skipped: s.skipped,
      primaryP50Ms: percentile(s.primaryMs, 50), shadowP50Ms: percentile(s.shadowMs, 50),
      primaryP99Ms: percentile(s.primaryMs, 99), shadowP99Ms: percentile(s.shadowMs, 99),
    };
  }
}
