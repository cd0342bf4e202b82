// The primary's side of `berth up --gateway-workers N` (N > 1): N gateway processes (Node's
// cluster module) serve the one port; this process keeps the controller, the store and the
// control API, and accepts the port's connections to hand them to the workers
// (cluster/distributor.ts). To the controller the N workers look like one gateway (SnapshotSink &
// LoadSource): snapshots are forwarded to every worker, load reports are summed.
//
// Sessions: an instance never runs more than sessionsPerInstance calls at once, across all
// workers together. The primary owns each instance's sessions and leases them to workers
// (InstanceEntry.sessions in each worker's snapshot). A lease shrinks first; the sessions go
// to another worker only once the holder has reported, after applying the smaller lease,
// that it holds no more than it (a busy session is given back when its call ends). Moves
// are driven by the workers' load reports (calls running and waiting per node), so nothing
// per call crosses processes. Workers with calls share a node's sessions evenly; when there
// are fewer sessions than such workers, the extra ones rotate every ROTATE_MS — except for a
// node with fewer sessions in all than there are workers: all of them go to one worker (its
// home, chosen by hashing the node id over the workers), and the others relay its calls there
// (cluster/call-relay.ts: cell calls as worker frames, image calls as HTTP/2 streams), so no
// call waits for a session to come round.
import cluster, { type Worker } from 'node:cluster';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { AggregatorRegistry } from 'prom-client';
import type { Config } from '../core/config.js';
import type { Auth } from '../core/auth.js';
import type { Metrics } from '../core/metrics.js';
import type { AliasTable } from '../aliases/table.js';
import { log } from '../core/log.js';
import type { InstanceEvents, LoadSource, NodeEntry, RoutingSnapshot, SnapshotSink } from '../routing/snapshot.js';
import { loadShape, type LoadReport } from '../gateway/routing-table.js';
import type { CallUsage } from '../routing/usage.js';
import { WORKER_ENV, type FromWorker, type RelayedCalls, type ToWorker, type WorkerBoot } from './messages.js';
import { ConnectionDistributor, type DistributorStats } from './distributor.js';
import { hash32 } from '../core/hash.js';

/** How long a worker keeps a node's extra session while another worker with calls waits for one. */
const ROTATE_MS = 100;
/** A worker that dies this soon after it started is replaced after RESPAWN_DELAY_MS (no crash loop). */
const MIN_UPTIME_MS = 5000;
const RESPAWN_DELAY_MS = 1000;
const METRICS_TIMEOUT_MS = 2000;
const SYNC_TIMEOUT_MS = 1000;
const PROPAGATION_SAMPLES = 200;
/** A shrunk lease not sent yet: confirmed by no report. */
const UNSENT = Number.MAX_SAFE_INTEGER;

interface Pending { held: number; until: number }

class WorkerState {
  ready = false;
  /** Its socket for the calls of the nodes it is the home of (cluster/call-relay.ts). */
  relay = '';
  /** node id → the home's socket, as last sent to it (nodes homed elsewhere). */
  relays = new Map<string, string>();
  relayed: RelayedCalls = { sent: 0, served: 0 };
  /** The last snapshot version sent to it, and the last it reported as applied. */
  sent = 0;
  acked = 0;
  report: LoadReport | null = null;
  /** loadShape(report). */
  shape = '';
  /** instance key → sessions leased to this worker. */
  readonly leases = new Map<string, number>();
  /** instance key → a lease that shrank and is not confirmed given back yet. */
  readonly pending = new Map<string, Pending>();
  /** node id → when this worker got a session above the even share. */
  readonly extraSince = new Map<string, number>();
  /** node id → since when it has waited without its share. */
  readonly lackSince = new Map<string, number>();
  /** instance key → when it last got a session there (a lease is not taken back sooner than ROTATE_MS). */
  readonly grantedAt = new Map<string, number>();
  readonly startedAt = Date.now();
  drained = false;
  /** What it was last told the other workers have waiting (sent only when it changes). */
  elsewhere = '{}';

  constructor(readonly worker: Worker) {}

  get pid(): number { return this.worker.process.pid ?? 0; }

  node(nodeId: string): { busy: number; waiting: number } {
    const n = this.report?.nodes[nodeId];
    return { busy: n?.busy ?? 0, waiting: n?.waiting ?? 0 };
  }

  /** Sessions of an instance this worker may be using: its lease, or more until it has confirmed a smaller one. */
  usage(key: string, nodeId: string, instanceId: string): number {
    const lease = this.leases.get(key) ?? 0;
    const p = this.pending.get(key);
    const held = this.report?.nodes[nodeId]?.instances[instanceId]?.held ?? 0;
    if (p) {
      if (this.acked < p.until) return Math.max(lease, p.held, held);
      this.pending.delete(key);
    }
    return Math.max(lease, held);
  }
}

export interface ClusterOptions {
  config: Config;
  events: InstanceEvents;
  auth: Auth;
  aliases: AliasTable;
  controlSocket: string;
  /** Where the workers' calls and bytes go (usage accounting), as their load reports bring them. */
  usage?: { addCalls(rows: readonly CallUsage[]): void };
}

export interface ClusterStatus {
  /**
   * `homeOf`: the nodes whose sessions it holds (fewer than there are workers); the others
   * relay their calls to it. `relayed`: such calls it sent to other workers and served for them.
   */
  workers: Array<{ id: number; pid: number; ready: boolean; appliedVersion: number; startedAt: string; homeOf: string[]; relayed: RelayedCalls }>;
  restarts: number;
  /** Connections handed to the workers by the primary. */
  connections: DistributorStats;
  snapshotVersion: number;
  /** Milliseconds from a controller snapshot to the last worker confirming it, recent changes. */
  propagationMs: { samples: number; p50: number | null; max: number | null; last: number | null };
}

export class GatewayCluster implements SnapshotSink, LoadSource {
  private readonly workers = new Map<number, WorkerState>();
  private base: RoutingSnapshot | null = null;
  /** Versions of the snapshots sent to workers (one counter: each worker's sequence only grows). */
  private version = 0;
  /** Controller snapshots not yet confirmed by every worker: when published, and the version each worker got. */
  private readonly propagating: Array<{ at: number; need: Map<WorkerState, number> }> = [];
  private readonly propagation: number[] = [];
  private closing = false;
  private restarts = 0;
  private metricsSeq = 0;
  private readonly metricsWaiters = new Map<number, (json: unknown) => void>();
  private readonly allReady: Promise<void>;
  private resolveReady!: () => void;
  private rejectReady!: (err: Error) => void;
  /** Accepts on the port and hands connections to ready workers (not to one that is draining). */
  private readonly door = new ConnectionDistributor(() => [...this.workers.values()].filter((w) => w.ready && !this.closing && w.worker.isConnected()).map((w) => w.worker));
  private rebalanceQueued = false;
  private rotateTimer: NodeJS.Timeout | null = null;

  constructor(private readonly opts: ClusterOptions) {
    this.allReady = new Promise((resolve, reject) => { this.resolveReady = resolve; this.rejectReady = reject; });
    opts.auth.onChange(() => this.broadcast({ t: 'tokens', records: opts.auth.records() }));
    opts.aliases.onChange(() => this.broadcast({ t: 'aliases', records: opts.aliases.records() }));
  }

  /** Listens on the port, forks the workers; resolves with the port once every one of them is ready. */
  async start(): Promise<number> {
    const port = await this.door.listen(this.opts.config.port, this.opts.config.host);
    const here = fileURLToPath(import.meta.url);
    cluster.setupPrimary({ exec: here.replace(/primary\.(ts|js)$/, 'worker.$1'), args: [], execArgv: process.execArgv, silent: false });
    for (let i = 0; i < this.opts.config.gatewayWorkers; i++) this.fork();
    const check = (): void => { if ([...this.workers.values()].every((w) => w.ready)) this.resolveReady(); else setTimeout(check, 10); };
    check();
    try {
      await this.allReady;
    } catch (err) {
      this.door.close();
      throw err;
    }
    return port;
  }

  private fork(): void {
    const boot: WorkerBoot = { config: this.opts.config, controlSocket: this.opts.controlSocket };
    const worker = cluster.fork({ [WORKER_ENV]: JSON.stringify(boot) });
    const state = new WorkerState(worker);
    this.workers.set(worker.id, state);
    worker.on('message', (m: FromWorker) => this.onMessage(state, m));
    worker.on('error', () => undefined);
    // its channel is closed once every message it sent has been read: the connections it has
    // not acknowledged by then never reached it, and go to another worker
    worker.on('disconnect', () => this.door.workerGone(worker.id));
    worker.on('exit', (code, signal) => {
      this.workers.delete(worker.id);
      if (state.relay) rmSync(state.relay, { force: true }); // gone with a kill -9
      this.door.workerGone(worker.id);
      this.opts.aliases.setRemoteMirror(String(worker.id), null);
      if (!state.ready && !this.closing && this.restarts === 0 && [...this.workers.values()].every((w) => !w.ready)) {
        this.rejectReady(new Error(`gateway worker ${worker.id} exited before it was ready (${signal ?? code})`));
      }
      if (this.closing) return;
      log.warn({ event: 'gateway_worker_exit', worker: worker.id, pid: state.pid, code, signal }, 'gateway worker exited; starting a new one');
      this.restarts++;
      setTimeout(() => { if (!this.closing) this.fork(); }, Date.now() - state.startedAt < MIN_UPTIME_MS ? RESPAWN_DELAY_MS : 0).unref();
      this.scheduleRebalance(); // its sessions are free again
    });
  }

  private send(state: WorkerState, m: ToWorker): void {
    if (!state.worker.isConnected()) return;
    try { state.worker.send(m); } catch { /* exiting: 'exit' follows */ }
  }

  private broadcast(m: ToWorker): void {
    for (const w of this.workers.values()) this.send(w, m);
  }

  private onMessage(state: WorkerState, m: FromWorker): void {
    switch (m.t) {
      case 'hello':
        this.send(state, { t: 'tokens', records: this.opts.auth.records() });
        this.send(state, { t: 'aliases', records: this.opts.aliases.records() });
        if (this.base) this.sendSnapshot(state);
        return;
      case 'ready':
        state.ready = true;
        state.relay = m.relay;
        this.door.workerReady();
        this.rebalance();
        return;
      case 'connAck': this.door.acknowledged(state.worker.id, m.id); return;
      case 'load': {
        const confirmed = m.report.version > state.acked;
        const shape = loadShape(m.report);
        state.report = m.report;
        // leases are computed again when what they depend on moved, not for every count of running calls
        if (confirmed || shape !== state.shape) this.scheduleRebalance();
        state.shape = shape;
        if (confirmed) {
          state.acked = m.report.version;
          this.confirmPropagation();
        }
        if (m.mirror) this.opts.aliases.setRemoteMirror(String(state.worker.id), m.mirror);
        if (m.usage) this.opts.usage?.addCalls(m.usage);
        if (m.relayed) state.relayed = m.relayed;
        return;
      }
      case 'refused': this.opts.events.refused(m.nodeId, m.instanceId, m.reason); return;
      case 'timedOut': this.opts.events.timedOut(m.nodeId, m.instanceId, m.timeoutSeconds); return;
      case 'held': this.opts.events.held(m.nodeId); return;
      case 'metrics': case 'synced': this.metricsWaiters.get(m.id)?.(m.t === 'metrics' ? m.json : null); return;
      case 'drained': state.drained = true; return;
    }
  }

  // ---- SnapshotSink & LoadSource (what the controller sees) ----

  apply(snapshot: RoutingSnapshot): void {
    if (this.base && snapshot.version <= this.base.version) return;
    const before = this.base;
    this.base = snapshot;
    // every worker gets it now (with its leases), whether its leases changed or not
    const at = performance.now();
    this.rebalance(true);
    const need = new Map<WorkerState, number>();
    for (const w of this.live()) need.set(w, w.sent);
    if (need.size > 0) this.propagating.push({ at, need });
    // instances that left balancing now: busy for the controller until each worker has applied this
    for (const [k, v] of this.leaving) if (![...v].some(([w, version]) => w.acked < version && this.workers.get(w.worker.id) === w)) this.leaving.delete(k);
    for (const n of before?.nodes ?? []) {
      for (const i of n.instances) if (!this.inBase(n.id, i.id)) this.leaving.set(key(n.id, i.id), need);
    }
  }

  /** Instances gone from the snapshot → the version each worker must apply before none can start a call there. */
  private readonly leaving = new Map<string, Map<WorkerState, number>>();

  node(nodeId: string): { busy: number; waiting: number } {
    let busy = 0; let waiting = 0;
    for (const w of this.workers.values()) { const n = w.node(nodeId); busy += n.busy; waiting += n.waiting; }
    return { busy, waiting };
  }

  /** The workers' reports summed: what this server's gateway runs (sent to the leader when servers share a store). */
  loadReport(): LoadReport {
    const nodes: LoadReport['nodes'] = {};
    for (const w of this.workers.values()) {
      for (const [id, n] of Object.entries(w.report?.nodes ?? {})) {
        const into = nodes[id] ??= { busy: 0, waiting: 0, instances: {} };
        into.busy += n.busy;
        into.waiting += n.waiting;
        for (const [iid, i] of Object.entries(n.instances)) {
          const t = into.instances[iid] ??= { busy: 0, held: 0, lastUsedAt: 0 };
          t.busy += i.busy;
          t.held += i.held;
          t.lastUsedAt = Math.max(t.lastUsedAt, i.lastUsedAt);
        }
      }
    }
    return { version: this.base?.version ?? 0, nodes };
  }

  instance(nodeId: string, instanceId: string): { busy: number; lastUsedAt: number } {
    let busy = 0; let lastUsedAt = 0;
    for (const w of this.workers.values()) {
      const i = w.report?.nodes[nodeId]?.instances[instanceId];
      if (i) { busy += i.busy; lastUsedAt = Math.max(lastUsedAt, i.lastUsedAt); }
    }
    // an instance leaving balancing is drained by this count: until every worker has applied
    // the snapshot without it, a call may have started there that no report shows yet (later
    // snapshots, sent for lease changes, do not hold it up)
    const k = key(nodeId, instanceId);
    const need = this.leaving.get(k);
    if (need) {
      const waiting = [...need].some(([w, v]) => w.acked < v && this.workers.get(w.worker.id) === w && w.worker.isConnected());
      if (waiting) busy++;
      else this.leaving.delete(k);
    }
    return { busy, lastUsedAt };
  }

  private inBase(nodeId: string, instanceId: string): boolean {
    return this.base?.nodes.find((n) => n.id === nodeId)?.instances.some((i) => i.id === instanceId) ?? false;
  }

  /** The workers that take calls: ready, and their channel open. */
  private live(): WorkerState[] {
    return [...this.workers.values()].filter((w) => w.ready && w.worker.isConnected());
  }

  // ---- session leases ----

  private scheduleRebalance(): void {
    if (this.rebalanceQueued) return;
    this.rebalanceQueued = true;
    setImmediate(() => { this.rebalanceQueued = false; this.rebalance(); });
  }

  /** Recomputes every lease; sends a snapshot to each worker whose leases changed (to all with `all`). */
  private rebalance(all = false): void {
    if (!this.base) return;
    const live = this.live();
    const changed = new Set<WorkerState>(all ? live : []);
    const keys = new Set<string>();
    for (const node of this.base.nodes) {
      for (const inst of node.instances) keys.add(key(node.id, inst.id));
      for (const w of this.balanceNode(node, live)) changed.add(w);
    }
    // leases of instances no longer in the snapshot are void
    for (const w of live) for (const k of w.leases.keys()) if (!keys.has(k)) { w.leases.delete(k); w.pending.delete(k); }
    for (const w of changed) this.sendSnapshot(w);
    this.shareWaiting(live);
  }

  /** queueSize bounds the calls waiting in all workers together: each learns what the others have waiting. */
  private shareWaiting(live: WorkerState[]): void {
    const total: Record<string, number> = {};
    for (const w of live) for (const [id, n] of Object.entries(w.report?.nodes ?? {})) if (n.waiting > 0) total[id] = (total[id] ?? 0) + n.waiting;
    for (const w of live) {
      const others: Record<string, number> = {};
      for (const [id, n] of Object.entries(total)) {
        const mine = w.report?.nodes[id]?.waiting ?? 0;
        if (n - mine > 0) others[id] = n - mine;
      }
      const text = JSON.stringify(others);
      if (text === w.elsewhere) continue;
      w.elsewhere = text;
      this.send(w, { t: 'elsewhere', waiting: others });
    }
  }

  /**
   * The worker that holds all of a node's sessions when there are fewer of them than
   * workers (null: they are shared out). Rendezvous hashing: nodes spread over the workers,
   * and a node moves only when its home goes.
   */
  private homeOf(node: NodeEntry, live: readonly WorkerState[]): WorkerState | null {
    if (live.length < 2) return null;
    if (node.spec.scaling.sessionsPerInstance * Math.max(1, node.instances.length) >= live.length) return null;
    let best: WorkerState | null = null;
    let top = -1;
    for (const w of live) {
      const score = hash32(`${node.id}\u0000${w.pid}`);
      if (score > top) { top = score; best = w; }
    }
    return best;
  }

  private balanceNode(node: NodeEntry, live: WorkerState[]): Set<WorkerState> {
    const changed = new Set<WorkerState>();
    if (live.length === 0) return changed;
    const home = this.homeOf(node, live);
    for (const w of live) {
      const relay = home && w !== home ? home.relay : undefined;
      if (relay !== w.relays.get(node.id)) changed.add(w);
    }
    if (node.instances.length === 0) return changed;
    if (home) return this.homeNode(node, home, live, changed);
    const S = node.spec.scaling.sessionsPerInstance;
    const now = Date.now();
    const keys = node.instances.map((i) => key(node.id, i.id));
    const used = (k: string, instId: string): number => live.reduce((n, w) => n + w.usage(k, node.id, instId), 0);
    const total = (w: WorkerState): number => keys.reduce((n, k) => n + (w.leases.get(k) ?? 0), 0);
    const grant = (w: WorkerState, only?: number): boolean => {
      // the instance with the most unleased sessions
      let best = -1; let room = 0;
      node.instances.forEach((inst, i) => {
        if (only !== undefined && i !== only) return;
        const r = S - used(keys[i]!, inst.id);
        if (r > room) { room = r; best = i; }
      });
      if (best < 0) return false;
      const k = keys[best]!;
      w.leases.set(k, (w.leases.get(k) ?? 0) + 1);
      w.grantedAt.set(k, now);
      changed.add(w);
      return true;
    };
    // a session just granted is used before it moves again: taking it back in the same round (or
    // the next report) made two workers that both wait for one instance hand it to and fro forever
    let held = false;
    const movable = (w: WorkerState, k: string): boolean => {
      if (now - (w.grantedAt.get(k) ?? 0) >= ROTATE_MS) return true;
      held = true;
      return false;
    };
    const shrinkAt = (w: WorkerState, at: number): void => {
      const k = keys[at]!;
      const most = w.leases.get(k) ?? 0;
      w.leases.set(k, most - 1);
      w.pending.set(k, { held: Math.max(w.usage(k, node.id, node.instances[at]!.id), most), until: UNSENT });
      changed.add(w);
    };
    const shrink = (w: WorkerState): boolean => {
      // from the instance where it holds most; confirmed given back before anyone else gets it
      let best = -1; let most = 0;
      keys.forEach((k, i) => { const l = w.leases.get(k) ?? 0; if (l > most && movable(w, k)) { most = l; best = i; } });
      if (best < 0) return false;
      const k = keys[best]!;
      const inst = node.instances[best]!;
      const was = w.usage(k, node.id, inst.id);
      w.leases.set(k, most - 1);
      w.pending.set(k, { held: Math.max(was, most), until: UNSENT });
      changed.add(w);
      return true;
    };

    // sticky calls wait for one instance: a worker with such calls and no lease there gets one
    // of its sessions (from unleased ones, or the largest other holder gives one back)
    node.instances.forEach((inst, i) => {
      const k = keys[i]!;
      for (const w of live) {
        if (!(w.report?.nodes[node.id]?.instances[inst.id]?.stickyWaiting) || (w.leases.get(k) ?? 0) > 0) continue;
        if (grant(w, i)) continue;
        if (live.some((o) => { const p = o.pending.get(k); return p !== undefined && o.acked < p.until; })) continue; // one on its way back
        const donor = live.filter((o) => o !== w && (o.leases.get(k) ?? 0) > 0 && movable(o, k)).sort((a, b) => (b.leases.get(k) ?? 0) - (a.leases.get(k) ?? 0))[0];
        if (donor) shrinkAt(donor, i);
      }
    });

    const demand = live.filter((w) => { const n = w.node(node.id); return n.busy + n.waiting > 0; });
    if (demand.length === 0) {
      // nobody is calling: spread what is unleased evenly so the first calls find a session anywhere
      for (;;) {
        const w = [...live].sort((a, b) => total(a) - total(b) || a.worker.id - b.worker.id)[0]!;
        if (!grant(w)) break;
      }
      return changed;
    }
    const C = S * node.instances.length;
    const base = Math.floor(C / demand.length);
    let extras = C - base * demand.length;
    const quota = new Map<WorkerState, number>();
    for (const w of live) quota.set(w, 0);
    for (const w of demand) {
      quota.set(w, base);
      const has = total(w) > base;
      if (has) { if (!w.extraSince.has(node.id)) w.extraSince.set(node.id, now); } else w.extraSince.delete(node.id);
      if (w.node(node.id).waiting > 0 && total(w) < base + 1) { if (!w.lackSince.has(node.id)) w.lackSince.set(node.id, now); } else w.lackSince.delete(node.id);
    }
    const someoneLacks = demand.some((w) => w.lackSince.has(node.id));
    // the extra sessions rotate on time, not only when a report arrives
    if (someoneLacks && !this.rotateTimer) this.rotateTimer = setTimeout(() => { this.rotateTimer = null; this.rebalance(); }, ROTATE_MS).unref();
    const rank = (w: WorkerState): number => {
      const since = w.extraSince.get(node.id);
      if (since !== undefined && (now - since < ROTATE_MS || !someoneLacks)) return 0; // keeps its extra
      if (w.lackSince.has(node.id)) return 1;
      if (since !== undefined) return 2; // had it long enough while others wait
      return 3;
    };
    const order = [...demand].sort((a, b) => rank(a) - rank(b) || (a.lackSince.get(node.id) ?? now) - (b.lackSince.get(node.id) ?? now));
    for (const w of order) { if (extras === 0) break; quota.set(w, base + 1); extras--; }

    // grants from unleased sessions first, then shrink those above their quota for those below it that wait
    let deficit = 0;
    for (const w of demand) {
      const q = quota.get(w)!;
      while (total(w) < q && grant(w)) { /* granted */ }
      if (total(w) < q && w.node(node.id).waiting > 0) deficit += q - total(w);
    }
    if (deficit > 0) {
      // sessions already on their way back count against the deficit
      for (const w of live) for (const k of keys) { const p = w.pending.get(k); if (p && w.acked < p.until) deficit -= p.held - (w.leases.get(k) ?? 0); }
      const donors = [...live].filter((w) => total(w) > quota.get(w)!)
        .sort((a, b) => (quota.get(a)! === 0 ? 0 : 1) - (quota.get(b)! === 0 ? 0 : 1) || (total(b) - quota.get(b)!) - (total(a) - quota.get(a)!));
      for (const w of donors) {
        while (deficit > 0 && total(w) > quota.get(w)! && shrink(w)) deficit--;
        if (deficit <= 0) break;
      }
    }
    // something waits for a session that is held a moment longer: look again when it may move
    if (held && !this.rotateTimer) this.rotateTimer = setTimeout(() => { this.rotateTimer = null; this.rebalance(); }, ROTATE_MS).unref();
    return changed;
  }

  /** Every session of the node to its home: the others give theirs back first (confirmed, as any shrink). */
  private homeNode(node: NodeEntry, home: WorkerState, live: WorkerState[], changed: Set<WorkerState>): Set<WorkerState> {
    const S = node.spec.scaling.sessionsPerInstance;
    for (const inst of node.instances) {
      const k = key(node.id, inst.id);
      for (const w of live) {
        if (w === home) continue;
        const lease = w.leases.get(k) ?? 0;
        if (lease === 0) continue;
        w.pending.set(k, { held: Math.max(w.usage(k, node.id, inst.id), lease), until: UNSENT });
        w.leases.set(k, 0);
        changed.add(w);
      }
      const used = live.reduce((n, w) => n + w.usage(k, node.id, inst.id), 0);
      if (used < S) {
        home.leases.set(k, (home.leases.get(k) ?? 0) + S - used);
        changed.add(home);
      }
    }
    return changed;
  }

  private sendSnapshot(w: WorkerState): void {
    if (!this.base) return;
    const version = ++this.version;
    const live = this.live();
    w.relays.clear();
    const snapshot: RoutingSnapshot = {
      version,
      nodes: this.base.nodes.map((n) => {
        const home = this.homeOf(n, live);
        if (home && home !== w) w.relays.set(n.id, home.relay);
        return {
          ...n,
          instances: n.instances.map((i) => ({ ...i, sessions: w.leases.get(key(n.id, i.id)) ?? 0 })),
          ...(home && home !== w ? { relay: home.relay } : {}),
        };
      }),
    };
    // pending shrinks sent in this snapshot are confirmed by a report of this version or later
    for (const p of w.pending.values()) if (p.until === UNSENT) p.until = version;
    w.sent = version;
    this.send(w, { t: 'snapshot', snapshot });
  }

  private confirmPropagation(): void {
    for (let i = 0; i < this.propagating.length; i++) {
      const p = this.propagating[i]!;
      // a worker that died meanwhile does not hold it up
      if ([...p.need].some(([w, v]) => w.acked < v && this.workers.get(w.worker.id) === w)) continue;
      this.propagating.splice(i--, 1);
      this.propagation.push(performance.now() - p.at);
      if (this.propagation.length > PROPAGATION_SAMPLES) this.propagation.shift();
    }
  }

  // ---- metrics, status, shutdown ----

  /** The Prometheus exposition summed over the workers, with this process's own metrics: all, or the call families only. */
  async metrics(own: Metrics, callsOnly: boolean): Promise<string> {
    const live = [...this.workers.values()].filter((w) => w.worker.isConnected());
    const parts = await Promise.all(live.map((w) => new Promise<unknown>((resolve) => {
      const id = ++this.metricsSeq;
      const timer = setTimeout(() => { this.metricsWaiters.delete(id); resolve(null); }, METRICS_TIMEOUT_MS);
      this.metricsWaiters.set(id, (json) => { clearTimeout(timer); this.metricsWaiters.delete(id); resolve(json); });
      this.send(w, { t: 'metrics?', id, callsOnly });
    })));
    const all = [await own.json(callsOnly), ...parts.filter((p) => p !== null)] as Parameters<typeof AggregatorRegistry.aggregate>[0];
    return AggregatorRegistry.aggregate(all).metrics();
  }

  /**
   * Resolves once every worker has applied everything sent to it so far (tokens, aliases,
   * snapshots): a control-API change answers only then, so a call made right after it, on
   * any connection, sees it. Bounded: a stalled worker delays an answer by SYNC_TIMEOUT_MS at most.
   */
  async sync(): Promise<void> {
    const live = this.live();
    await Promise.all(live.map((w) => new Promise<void>((resolve) => {
      const id = ++this.metricsSeq;
      const timer = setTimeout(() => { this.metricsWaiters.delete(id); resolve(); }, SYNC_TIMEOUT_MS);
      this.metricsWaiters.set(id, () => { clearTimeout(timer); this.metricsWaiters.delete(id); resolve(); });
      this.send(w, { t: 'sync', id });
    })));
  }

  status(): ClusterStatus {
    const live = this.live();
    const sorted = [...this.propagation].sort((a, b) => a - b);
    const round = (x: number | undefined): number | null => (x === undefined ? null : Math.round(x * 100) / 100);
    return {
      workers: [...this.workers.values()].map((w) => ({
        id: w.worker.id, pid: w.pid, ready: w.ready, appliedVersion: w.acked, startedAt: new Date(w.startedAt).toISOString(),
        homeOf: (this.base?.nodes ?? []).filter((n) => this.homeOf(n, live) === w).map((n) => n.id), relayed: w.relayed,
      })),
      restarts: this.restarts,
      connections: this.door.stats(),
      snapshotVersion: this.base?.version ?? 0,
      propagationMs: { samples: sorted.length, p50: round(sorted[Math.floor(sorted.length / 2)]), max: round(sorted[sorted.length - 1]), last: round(this.propagation[this.propagation.length - 1]) },
    };
  }

  /** SIGTERM: every worker stops taking connections and lets its calls finish (until the deadline), then exits. */
  async drain(deadline: number): Promise<void> {
    this.closing = true;
    this.door.close(); // no new connections; those the workers have finish their calls
    const exits = [...this.workers.values()].map((w) => new Promise<void>((resolve) => {
      if (w.worker.isDead()) return resolve();
      w.worker.once('exit', () => resolve());
      this.send(w, { t: 'drain', deadline });
    }));
    const hard = setTimeout(() => { for (const w of this.workers.values()) w.worker.process.kill('SIGKILL'); }, Math.max(0, deadline - Date.now()) + 5000);
    await Promise.all(exits);
    clearTimeout(hard);
  }
}

function key(nodeId: string, instanceId: string): string {
  return `${nodeId}\u0000${instanceId}`;
}
