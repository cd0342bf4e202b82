// The reconcile loop: compares what the store wants with what the runtime has, starts
// and stops instances, health-checks them, computes statuses, scales, and publishes a
// routing snapshot (src/routing/) that gateways serve from. It never imports the gateway:
// gateways send instance events and load back through the interfaces in routing/.
import type { Config } from '../core/config.js';
import { newId, nowIso } from '../core/ids.js';
import type { InstanceView, NodeRecord, NodeSpec, NodeStatus, Rollout } from '../core/types.js';
import { rolloutSettings } from '../core/node-update.js';
import type { Store } from '../store/store.js';
import type { LogQuery, RegistryAuth, Runtime, RuntimeInstance, Workload } from '../runtimes/runtime.js';
import type { Secrets } from '../secrets/secrets.js';
import { FRAME, WorkerConnection } from '../worker/protocol.js';
import type { InstanceEvents, LoadSource, RoutingSnapshot, SnapshotSink } from '../routing/snapshot.js';
import { InstanceState } from './instance.js';
import { Autoscaler, SAMPLE_MS, type Recommendation } from './autoscaler.js';
import { probeGrpc, probeHttp, probeServing, probeTcp, type ProbeResult } from './probes.js';
import type { Metrics } from '../core/metrics.js';
import type { BlobStore } from '../store/blobs.js';
import { log } from '../core/log.js';
import { NO_CLOCK, type InstanceClock } from '../usage/recorder.js';
import { usagePreset } from '../routing/usage.js';

/** How long an instance may take from start to an answering endpoint. */
const CONNECT_TIMEOUT_MS = 60_000;
/** How long restoring a checkpoint may take before the instance is replaced. */
const PREPARE_TIMEOUT_MS = 10 * 60_000;
const MAX_BACKOFF_MS = 30_000;
/** How soon a cell worker that answered "still loading" is asked again. */
const LOADING_RECHECK_MS = 20;
/** New instances that fail this many times in a row before ever serving stop their rollout. */
const ROLLOUT_CRASH_LIMIT = 3;

class NodeState {
  readonly instances = new Map<string, InstanceState>();
  status: NodeStatus;
  everHealthy: boolean;
  deleting = false;
  /** Suspended by request: no instances, calls refused; survives a restart (the stored status). */
  suspended: boolean;
  /** Why calls fail at once (no Healthy instance and none about to be): published in the snapshot. */
  unavailable: string | null = null;
  /** While instances of another revision run: how many instances the node keeps (0: not decided yet). */
  rolloutBase = 0;
  /** Specs of the earlier revisions its instances still run (adopted after a restart mid-rollout). */
  readonly revisionSpecs = new Map<number, NodeSpec>();
  /** Decides the instance count from the calls in flight (autoscaler.ts). */
  readonly scaler = new Autoscaler(Date.now());
  /** Scale to zero: why the last start failed while calls were held (published: the 503 past the hold says it). */
  startError: string | null = null;

  constructor(public record: NodeRecord) {
    this.status = record.status;
    this.suspended = record.status === 'Suspended';
    this.everHealthy = record.status !== 'Created' && !this.suspended;
  }

  get id(): string { return this.record.id; }
  get spec(): NodeSpec { return this.record.spec; }
  get revision(): number { return this.record.revision; }
  /** Longest a call may run: in-flight calls get this long to finish before a stop. */
  get callTimeoutS(): number { return this.spec.kind === 'cell' ? this.spec.timeout : this.spec.endpoint.timeout; }

  /** Instances that count towards the target (not being removed). */
  active(): InstanceState[] {
    return [...this.instances.values()].filter((i) => !i.stopping);
  }
}

/**
 * An instance that served and then went Unhealthy while still running (hung, paused):
 * out of balancing, so a replacement starts beside it instead of it holding the node below minInstances.
 */
function isOut(i: InstanceState): boolean {
  return i.status === 'Unhealthy' && i.hung && !i.stopping && !i.restarting;
}

/** An instance that cannot become Healthy now: failed to start, crashes before serving, fails its checks. */
function isFailing(i: InstanceState, failsThreshold: number): boolean {
  if (i.stopping) return false;
  return i.failuresInARow > 0 || (i.status === 'Unhealthy' && !i.healthyThisRun) || (i.status === 'Preparing' && i.fails >= failsThreshold);
}

/** Nothing serves calls yet (before a gateway attaches): no load, snapshots dropped. */
const DETACHED: SnapshotSink & LoadSource = {
  apply: () => undefined,
  node: () => ({ busy: 0, waiting: 0 }),
  instance: () => ({ busy: 0, lastUsedAt: 0 }),
};

export class Controller implements InstanceEvents {
  private readonly nodes = new Map<string, NodeState>();
  private timer: NodeJS.Timeout | null = null;
  private sampler: NodeJS.Timeout | null = null;
  private stopped = false;
  private gateways: SnapshotSink & LoadSource = DETACHED;
  private snapshotVersion = 0;
  /** Instance time for usage accounting: each run from its start by the runtime to its exit. */
  private clock: InstanceClock = NO_CLOCK;

  constructor(
    private readonly config: Config,
    private readonly store: Store,
    private readonly runtime: Runtime,
    private readonly metrics: Metrics,
    private readonly secrets: Secrets,
    /** Checkpoint bytes: fetched to this machine (and verified) before an instance starts. */
    private readonly blobs: BlobStore,
  ) {}

  /** Where snapshots go and load comes from: the gateway (or its workers). */
  attach(gateways: SnapshotSink & LoadSource): void {
    this.gateways = gateways;
    this.publishAll();
  }

  /** Where instance time goes (src/usage/); before `start`, so adopted instances are clocked too. */
  meterInstances(clock: InstanceClock): void { this.clock = clock; }

  get runtimeName(): string { return this.runtime.name; }
  get supportsImages(): boolean { return this.runtime.supportsImages; }
  get supportsCells(): boolean { return this.runtime.supportsCells !== false; }
  get supportsPlacement(): boolean { return this.runtime.supportsPlacement === true; }

  /** Brings back every stored node, adopting instances an earlier run left running. */
  async start(): Promise<void> {
    const left = await this.runtime.list();
    for (const record of await this.store.listNodes()) {
      const node = new NodeState(record);
      this.nodes.set(record.id, node);
      this.metrics.bindNode(record.id);
      // a suspended node's leftovers are stopped; mid-rollout, old and new instances both come back
      const keep = node.suspended ? 0 : record.spec.scaling.maxInstances + rolloutSettings(record.spec).maxSurge;
      const mine = left.filter((h) => h.nodeId === record.id).slice(0, keep);
      if (mine.some((h) => h.revision !== undefined && h.revision !== record.revision)) {
        for (const r of await this.store.listRevisions(record.id)) node.revisionSpecs.set(r.revision, r.spec);
      }
      for (const handle of mine) {
        const revision = handle.revision ?? record.revision;
        const spec = revision === record.revision ? record.spec : node.revisionSpecs.get(revision);
        if (spec) this.adopt(node, handle, revision, spec); // a revision no longer kept: stopped below
      }
    }
    // what nobody wants any more: instances of deleted nodes, extras beyond maxInstances
    const adopted = new Set([...this.nodes.values()].flatMap((n) => [...n.instances.keys()]));
    await Promise.all(left.filter((h) => !adopted.has(h.instanceId)).map((h) => this.runtime.stop(h, 2000)));
    for (const node of this.nodes.values()) this.reconcile(node);
    this.timer = setInterval(() => this.tick(), this.config.reconcileIntervalMs);
    this.timer.unref();
    this.sampler = setInterval(() => this.sample(), SAMPLE_MS);
    this.sampler.unref();
  }

  /** A live node's spec (telemetry scraping); undefined once it is being deleted. */
  nodeSpec(nodeId: string): NodeSpec | undefined {
    const n = this.nodes.get(nodeId);
    return n && !n.deleting ? n.spec : undefined;
  }

  addNode(record: NodeRecord): void {
    const node = new NodeState(record);
    this.nodes.set(record.id, node);
    this.metrics.bindNode(record.id);
    this.publishAll(); // routable at once: calls wait for its first instance instead of 404
    this.reconcile(node);
  }

  async deleteNode(nodeId: string): Promise<void> {
    const node = this.nodes.get(nodeId);
    if (!node) return;
    node.deleting = true;
    this.publishAll(); // gateways drop the node: waiting calls get NODE_NOT_FOUND
    await this.setNodeStatus(node, 'Deleting');
    await Promise.all(node.active().map((i) => this.stopInstance(node, i, 'node deleted')));
    this.nodes.delete(nodeId);
    this.metrics.forgetNode(nodeId);
    await this.runtime.cleanup(nodeId);
  }

  /**
   * Suspends a node: new calls are refused (NODE_SUSPENDED) at once, running calls finish,
   * then every instance stops. The stored status keeps it suspended across restarts.
   */
  async suspend(nodeId: string): Promise<void> {
    const node = this.nodes.get(nodeId);
    if (!node || node.deleting || node.suspended) return;
    node.suspended = true;
    node.unavailable = null;
    this.event(node, 'suspended', 'suspended by request', { instances: node.active().length });
    await this.setNodeStatus(node, 'Suspended', 'suspended by request');
    this.publishAll(); // gateways refuse new calls now; instances leave balancing, running calls go on
    await Promise.all(node.active().map((i) => this.stopInstance(node, i, 'node suspended')));
  }

  /** Brings a suspended node's instances back (same spec); it goes Healthy as they pass their checks. */
  async resume(nodeId: string): Promise<void> {
    const node = this.nodes.get(nodeId);
    if (!node || node.deleting || !node.suspended) return;
    node.suspended = false;
    node.everHealthy = false;
    this.event(node, 'resumed', 'resumed by request');
    await this.setNodeStatus(node, 'Created', 'resumed by request');
    this.publishAll();
    this.reconcile(node);
  }

  /**
   * A node's spec changed in place (scaling, description, ACL): gateways get it with the next
   * snapshot (a new specVersion), reconcile adds or drains instances; nothing restarts.
   */
  updateNode(record: NodeRecord): void {
    const node = this.nodes.get(record.id);
    if (!node || node.deleting) return;
    if (record.revision !== node.revision) {
      node.revisionSpecs.set(node.revision, node.spec); // its instances keep running it until replaced
      node.rolloutBase = 0;
      log.info({ event: 'rollout_started', nodeId: node.id, revision: record.revision, from: node.revision }, 'rollout started');
      this.event(node, 'rollout-started', `rollout from revision ${node.revision} to ${record.revision}`, { from: node.revision, revision: record.revision });
    }
    node.record = { ...record, status: node.status };
    this.publishAll();
    this.reconcile(node);
  }

  /** The node's current revision and its last rollout, with how far it got. */
  rolloutOf(nodeId: string): { revision: number; rollout: (Rollout & { updated: number; outdated: number; healthy: number }) | null } | undefined {
    const node = this.nodes.get(nodeId);
    if (!node) return undefined;
    const r = node.record.rollout;
    if (!r) return { revision: node.revision, rollout: null };
    let updated = 0, outdated = 0, healthy = 0;
    for (const i of node.instances.values()) {
      if (i.revision !== node.revision) outdated++;
      else if (!i.stopping) { updated++; if (i.status === 'Healthy') healthy++; }
    }
    return { revision: node.revision, rollout: { ...r, updated, outdated, healthy } };
  }

  /** A call overran its timeout: take the instance out and replace it (off the call path). */
  timedOut(nodeId: string, instanceId: string, timeoutSeconds: number): void {
    setImmediate(() => this.onTimedOut(nodeId, instanceId, timeoutSeconds));
  }

  /** The gateway could not connect: out of balancing until its health check passes again. */
  refused(nodeId: string, instanceId: string, reason: string): void {
    setImmediate(() => this.onRefused(nodeId, instanceId, reason));
  }

  /** A call is held at a node scaled to zero: wake it now rather than at the next sample. */
  held(nodeId: string): void {
    if (this.wakes.has(nodeId)) return; // calls arriving together: one look at them all
    this.wakes.add(nodeId);
    setImmediate(() => {
      this.wakes.delete(nodeId);
      const node = this.nodes.get(nodeId);
      if (!node || node.deleting || node.suspended || this.stopped) return;
      this.sampleNode(node, Date.now());
      this.reconcile(node);
    });
  }

  /** Nodes with a wake check scheduled (held() coalesces the calls of one burst). */
  private readonly wakes = new Set<string>();

  private onTimedOut(nodeId: string, instanceId: string, timeoutSeconds: number): void {
    const node = this.nodes.get(nodeId);
    const inst = node?.instances.get(instanceId);
    if (!node || !inst || !inst.handle || inst.stopping) return;
    inst.lastError = `a call ran past the node's ${timeoutSeconds}s timeout; instance replaced`;
    inst.restarting = true; // killed and restarted at once: no replacement beside it
    this.markUnhealthy(node, inst, 'call timeout');
    this.runtime.kill(inst.handle);
  }

  private onRefused(nodeId: string, instanceId: string, reason: string): void {
    const node = this.nodes.get(nodeId);
    const inst = node?.instances.get(instanceId);
    if (!node || !inst || inst.status !== 'Healthy') return;
    inst.lastError = `the gateway could not connect: ${reason}`;
    inst.passes = 0;
    this.markUnhealthy(node, inst, 'connection refused');
  }

  nodeView(nodeId: string): { status: NodeStatus; instances: InstanceView[]; warnings: string[]; queued: number; scaledToZero: boolean } | undefined {
    const node = this.nodes.get(nodeId);
    if (!node) return undefined;
    return {
      status: node.status,
      scaledToZero: this.holds(node) && node.active().length === 0,
      instances: [...node.instances.values()].map((i) => i.view(this.gateways.instance(nodeId, i.id).busy)),
      warnings: [...this.runtime.unenforced(node.spec.resources), ...(this.runtime.nodeWarnings?.(nodeId) ?? [])],
      queued: this.gateways.node(nodeId).waiting,
    };
  }

  /** Healthy instances of a node with their published ports (telemetry scraping). */
  healthyInstances(nodeId: string): Array<{ id: string; handle: RuntimeInstance }> {
    const node = this.nodes.get(nodeId);
    if (!node) return [];
    return [...node.instances.values()].filter((i) => i.status === 'Healthy' && i.handle).map((i) => ({ id: i.id, handle: i.handle! }));
  }

  nodeIds(): string[] { return [...this.nodes.keys()]; }

  logs(nodeId: string, instanceId: string, lines: number, query?: LogQuery): Promise<string> {
    return this.runtime.logs(nodeId, instanceId, lines, query);
  }

  followLogs(nodeId: string, instanceId: string, onData: (chunk: Buffer) => void, onEnd: () => void): () => void {
    return this.runtime.follow(nodeId, instanceId, onData, onEnd);
  }

  instanceIds(nodeId: string): string[] {
    return [...(this.nodes.get(nodeId)?.instances.keys() ?? [])];
  }

  /**
   * Stops every instance (shutdown). Records stay in the store; `start` brings them back.
   * `handOver`: leave them running for the next controller to adopt (servers sharing a store).
   */
  async stop(handOver = false): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.sampler) clearInterval(this.sampler);
    if (handOver) return;
    const all: Promise<void>[] = [];
    for (const node of this.nodes.values()) {
      for (const inst of node.active()) all.push(this.stopInstance(node, inst, 'Berth stopping'));
    }
    await Promise.all(all);
  }

  // ---- the loop ----

  private tick(): void {
    if (this.stopped) return;
    for (const node of this.nodes.values()) {
      if (!node.deleting) this.reconcile(node);
    }
  }

  /** Calls in flight now, for every node's autoscaler; a node that needs more instances now (a wake, sustained excess) gets them at once. */
  private sample(): void {
    if (this.stopped) return;
    const now = Date.now();
    for (const node of this.nodes.values()) {
      if (node.deleting || node.suspended) continue;
      if (this.sampleNode(node, now) > 0 && this.recommend(node, now).kind !== 'steady') this.reconcile(node);
    }
  }

  private sampleNode(node: NodeState, now: number): number {
    const d = this.gateways.node(node.id);
    const inFlight = d.busy + d.waiting;
    node.scaler.record(now, inFlight, node.spec.scaling.scaleDownDelaySeconds * 1000);
    return inFlight;
  }

  /** Scale to zero: the node has minInstances 0 and has served (a new or resumed node shows it can start first). */
  private holds(node: NodeState): boolean {
    return node.spec.scaling.minInstances === 0 && node.everHealthy && !node.suspended;
  }

  /** The autoscaler's advice for the node's instances (out ones not counted); during a rollout, for the count it keeps. */
  private recommend(node: NodeState, now: number): Recommendation & { current: number } {
    const active = node.active().filter((i) => !isOut(i));
    const rolling = node.rolloutBase > 0 && active.some((i) => i.revision !== node.revision);
    const current = rolling ? node.rolloutBase : active.length;
    const ready = active.filter((i) => i.status === 'Healthy').length;
    let lastCallAt = 0;
    for (const i of active) lastCallAt = Math.max(lastCallAt, this.gateways.instance(node.id, i.id).lastUsedAt);
    const rec = node.scaler.recommend(now, current, ready, node.spec.scaling, lastCallAt);
    // nothing lowers the count while a rollout replaces instances
    return rolling && rec.kind === 'down' ? { target: current, kind: 'steady', reason: 'rollout in progress', current } : { ...rec, current };
  }

  private reconcile(node: NodeState): void {
    // the current revision's fork template stays, even with no instance (scaled to zero)
    this.runtime.keepTemplates?.(node.id, node.suspended || node.spec.kind !== 'cell' || node.spec.scaling.fork === false ? [] : [node.revision]);
    if (node.suspended) { this.updateNodeStatus(node); return; }
    const { minInstances, maxInstances } = node.spec.scaling;
    const active = node.active();
    // instances that hang after serving are out: they do not count, a replacement starts beside
    // each (at most one per out instance above maxInstances, so a crash loop cannot grow the node)
    const out = active.filter(isOut).length;
    const live = active.length - out;
    // instances of an earlier revision: a rollout is replacing them
    const olds = active.filter((i) => i.revision !== node.revision && !isOut(i));
    if (olds.length > 0 && node.rolloutBase === 0) node.rolloutBase = Math.max(minInstances, Math.min(live, maxInstances));
    if (olds.length === 0) node.rolloutBase = 0;

    // the autoscaler decides within [minInstances, maxInstances]; a node that has never been
    // Healthy (new, resumed) starts one instance even with minInstances 0, to show it can serve
    const now = Date.now();
    const rec = this.recommend(node, now);
    const floor = node.everHealthy ? 0 : Math.min(1, maxInstances);
    const floored = Math.max(rec.target, floor);
    if (rec.kind !== 'steady' && floored !== rec.current) {
      const type = rec.kind === 'wake' ? 'wake' : rec.kind === 'up' ? 'scale-up' : floored === 0 ? 'scale-to-zero' : 'scale-down';
      this.event(node, type, rec.reason, { from: rec.current, to: floored });
      node.scaler.changed(now);
    }

    if (olds.length > 0) {
      // a rollout keeps the count it started with; load may raise it, nothing lowers it meanwhile
      if (rec.target > node.rolloutBase) node.rolloutBase = rec.target;
      this.rollStep(node, active, olds, Math.max(node.rolloutBase, floor));
    } else if (live > maxInstances) {
      // maxInstances lowered by an update: the least useful extras go (not Healthy first, then idle), drained
      const rank = (i: InstanceState): number => (i.status === 'Healthy' ? 1 : 0) * 1e9 + this.gateways.instance(node.id, i.id).busy;
      const extras = active.filter((i) => !isOut(i)).sort((a, b) => rank(a) - rank(b)).slice(0, live - maxInstances);
      for (const i of extras) void this.stopInstance(node, i, `maxInstances lowered to ${maxInstances}`);
      node.scaler.changed(now);
    } else {
      const target = floored;
      for (let n = live, total = active.length; n < target && total < maxInstances + out; n++, total++) this.launchNew(node);
      if (target < live) {
        // fewer: instances nobody waits for first (starting, failing), then the idlest; each drains its calls
        const rank = (i: InstanceState): number => (i.status === 'Healthy' ? 1 : 0) * 1e9 + this.gateways.instance(node.id, i.id).busy;
        const extras = active.filter((i) => !isOut(i)).sort((a, b) => rank(a) - rank(b)).slice(0, live - target);
        for (const i of extras) void this.stopInstance(node, i, target === 0 ? `scaled to zero: ${rec.reason}` : `scale-down: ${rec.reason}`);
      }
    }

    this.updateNodeStatus(node);
    this.checkRollout(node);
    this.metrics.setInstanceStatuses(node.id, [...node.instances.values()].map((i) => i.status));
  }

  private launchNew(node: NodeState): void {
    this.launch(node, new InstanceState(newId(), node.id, node.revision, node.spec));
  }

  /**
   * One step of a rollout (as a Kubernetes Deployment): new instances start beside the old, at
   * most target + maxSurge in all; an old instance becomes Outdated (out of balancing, drained,
   * deleted) only while target - maxUnavailable Healthy instances remain without it. Old
   * instances that serve nothing go at once.
   */
  private rollStep(node: NodeState, active: InstanceState[], olds: InstanceState[], target: number): void {
    const { maxSurge, maxUnavailable } = rolloutSettings(node.spec);
    const news = active.filter((i) => i.revision === node.revision && !isOut(i));
    for (let n = news.length, total = news.length + olds.length; n < target && total < target + maxSurge; n++, total++) this.launchNew(node);
    let healthy = active.filter((i) => i.status === 'Healthy').length;
    const busy = (i: InstanceState): number => this.gateways.instance(node.id, i.id).busy;
    const order = [...olds].sort((a, b) => Number(a.status === 'Healthy') - Number(b.status === 'Healthy') || busy(a) - busy(b));
    const threshold = node.spec.healthcheck.failsThreshold;
    for (const old of order) {
      if (old.status === 'Healthy') {
        if (healthy - 1 < target - maxUnavailable) break;
        healthy--;
      } else if ((old.status === 'Created' || old.status === 'Preparing') && !isFailing(old, threshold) && healthy < target - maxUnavailable) {
        // on its way back (adopted after a restart of berth up, restarted): kept while the node is
        // short of Healthy instances, or a restart mid-rollout would leave nothing serving
        continue;
      }
      void this.stopInstance(node, old, `replaced by revision ${node.revision}`, 'Outdated');
    }
  }

  /** Ends a rollout: Complete once only the new revision runs and serves; Failed (and undone) past its deadline or when new instances keep crashing. */
  private checkRollout(node: NodeState): void {
    const r = node.record.rollout;
    if (!r || r.state !== 'Progressing' || node.deleting) return;
    const now = Date.now();
    if (node.suspended) { void this.endRollout(node, { ...r, state: 'Complete', reason: 'the node is suspended: its instances start with this revision on resume', finishedAt: nowIso() }); return; }
    const mine = node.active().filter((i) => i.revision === node.revision);
    const others = [...node.instances.values()].some((i) => i.revision !== node.revision);
    const healthy = mine.filter((i) => i.status === 'Healthy').length;
    if (!others && healthy >= node.spec.scaling.minInstances) {
      void this.endRollout(node, { ...r, state: 'Complete', finishedAt: nowIso() });
      return;
    }
    const crashing = mine.find((i) => i.failuresInARow >= ROLLOUT_CRASH_LIMIT);
    const { deadlineSeconds } = rolloutSettings(node.spec);
    let reason: string | null = null;
    if (crashing) reason = `new instances of revision ${r.revision} keep failing (${crashing.failuresInARow} times in a row): ${crashing.lastError ?? 'no reason given'}`;
    else if (now - Date.parse(r.startedAt) > deadlineSeconds * 1000) {
      const why = mine.find((i) => i.status !== 'Healthy' && i.lastError)?.lastError;
      reason = `new instances of revision ${r.revision} were not all Healthy within ${deadlineSeconds}s${why ? `: ${why}` : ''}`;
    }
    if (reason) void this.failRollout(node, r, reason);
  }

  private rollingBack = new Set<string>();

  /** A failed rollout goes back to the revision it started from: its new instances go, the old ones keep serving. */
  private async failRollout(node: NodeState, r: Rollout, reason: string): Promise<void> {
    if (this.rollingBack.has(node.id)) return;
    this.rollingBack.add(node.id);
    try {
      const from = r.from === node.revision ? undefined : (node.revisionSpecs.get(r.from) ?? (await this.store.listRevisions(node.id)).find((x) => x.revision === r.from)?.spec);
      if (node.record.rollout !== r) return; // changed meanwhile (a new update)
      if (!from) {
        await this.endRollout(node, { ...r, state: 'Failed', reason: `${reason}; revision ${r.from} is no longer kept, so the new one stays`, finishedAt: nowIso() });
        return;
      }
      log.warn({ event: 'rollout_failed', nodeId: node.id, revision: r.revision, from: r.from, reason }, 'rollout failed; rolling back');
      node.revisionSpecs.set(node.revision, node.spec);
      node.record = { ...node.record, spec: from, revision: r.from, updatedAt: nowIso() };
      node.rolloutBase = 0;
      // new instances that do not serve go at once; any that do are replaced like any other old ones
      for (const i of node.active()) {
        if (i.revision === r.revision && i.status !== 'Healthy') void this.stopInstance(node, i, `rollout to revision ${r.revision} failed`);
      }
      await this.endRollout(node, { ...r, state: 'Failed', reason, finishedAt: nowIso() });
      await this.setNodeStatus(node, node.status, `rollout to revision ${r.revision} failed: ${reason}`);
      this.publishAll();
      this.reconcileSoon(node);
    } finally {
      this.rollingBack.delete(node.id);
    }
  }

  private async endRollout(node: NodeState, rollout: Rollout): Promise<void> {
    node.record = { ...node.record, rollout };
    if (rollout.state === 'Complete') log.info({ event: 'rollout_complete', nodeId: node.id, revision: rollout.revision }, 'rollout complete');
    this.event(node, rollout.state === 'Complete' ? 'rollout-complete' : 'rollout-failed',
      rollout.reason ?? `revision ${rollout.revision} serves`, { revision: rollout.revision, from: rollout.from });
    await this.store.setNodeRevision(node.record);
  }

  private updateNodeStatus(node: NodeState): void {
    if (node.deleting) return;
    if (node.suspended) {
      if (node.unavailable !== null) { node.unavailable = null; this.publishAll(); }
      if (node.status !== 'Suspended') void this.setNodeStatus(node, 'Suspended');
      return;
    }
    let healthy = 0;
    for (const i of node.instances.values()) if (i.status === 'Healthy') healthy++;
    const min = node.spec.scaling.minInstances;
    const failure = healthy === 0 ? this.failureOf(node) : null;
    // scaled to zero, a node is Healthy (ready to serve: calls are held while an instance starts),
    // and Unhealthy only while the instance it woke fails to start
    const holds = this.holds(node);
    const enough = holds ? healthy > 0 || failure === null : healthy >= Math.max(min, 1);
    if (enough) node.everHealthy = true;
    const status: NodeStatus = enough ? 'Healthy' : node.everHealthy || failure ? 'Unhealthy' : 'Created';
    if (status !== node.status) void this.setNodeStatus(node, status, failure ?? (healthy === 0 && holds ? 'scaled to zero' : `${healthy} of ${min} required instances healthy`));
    // held calls are never refused for a failed start: another attempt is made, the hold bounds them
    const unavailable = holds ? null : failure;
    const startError = holds ? failure : null;
    if (unavailable !== node.unavailable || startError !== node.startError) {
      node.unavailable = unavailable;
      node.startError = startError;
      this.publishAll(); // gateways refuse calls at once while it holds, and wait again once it clears
    }
  }

  /**
   * Why a node without a Healthy instance cannot serve: the reason of a failing instance, when
   * no other instance is on its way to Healthy (starting, loading). Null while one is.
   */
  private failureOf(node: NodeState): string | null {
    const threshold = node.spec.healthcheck.failsThreshold;
    let reason: string | null = null;
    for (const i of node.active()) {
      if (isOut(i)) continue; // hung after serving: its replacement decides
      if (!isFailing(i, threshold)) return null;
      reason ??= i.lastError ?? (i.status === 'Unhealthy' ? 'the instance is unhealthy' : null);
    }
    return reason;
  }

  private async setNodeStatus(node: NodeState, status: NodeStatus, reason?: string): Promise<void> {
    node.status = status;
    log.info({ event: 'node_status', nodeId: node.id, status, reason }, `node ${status}`);
    await this.store.updateNodeStatus(node.id, status, { status, at: nowIso(), ...(reason ? { reason } : {}) });
  }

  /** A node's Healthy instances changed: publish a new snapshot, then update its status. */
  private publish(node: NodeState): void {
    this.publishAll();
    this.updateNodeStatus(node);
    // statuses too, at once: a crashed instance restarts (forked) within ~100 ms, before the next reconcile reports
    this.metrics.setInstanceStatuses(node.id, [...node.instances.values()].map((i) => i.status));
  }

  /** Every live node with its Healthy instances, as one new immutable snapshot. */
  private publishAll(): void {
    const snapshot: RoutingSnapshot = {
      version: ++this.snapshotVersion,
      nodes: [...this.nodes.values()].filter((n) => !n.deleting).map((n) => ({
        id: n.id, spec: n.spec, specVersion: n.record.updatedAt,
        instances: n.suspended ? [] : [...n.instances.values()].filter((i) => i.status === 'Healthy' && i.handle).map((i) => ({ id: i.id, endpoint: i.handle!.endpoint, since: i.healthySince })),
        ...(n.suspended ? { suspended: true } : n.unavailable !== null ? { unavailable: n.unavailable } : {}),
        ...(this.holds(n) ? { hold: n.startError !== null ? { startError: n.startError } : {} } : {}),
      })),
    };
    this.gateways.apply(snapshot);
  }

  // ---- one instance's life ----

  private launch(node: NodeState, inst: InstanceState): void {
    node.instances.set(inst.id, inst);
    void this.run(node, inst).catch((err) => this.startFailed(node, inst, err));
  }

  private startFailed(node: NodeState, inst: InstanceState, err: unknown): void {
    inst.lastError = err instanceof Error ? err.message : String(err);
    if (inst.handle) { this.runtime.kill(inst.handle); return; } // onExit restarts it
    inst.setStatus('Unhealthy', 'start failed');
    inst.failuresInARow++;
    this.event(node, 'start-failed', `instance ${inst.id} failed to start: ${inst.lastError}`, { instanceId: inst.id, failuresInARow: inst.failuresInARow });
    this.scheduleRestart(node, inst);
  }

  private async workload(spec: NodeSpec): Promise<Workload> {
    if (spec.kind === 'image') {
      if (!this.runtime.supportsImages) throw new Error(`image nodes need a container runtime; this Berth runs the ${this.runtime.name} runtime (start it with --runtime docker)`);
      const ports = [...new Set([spec.endpoint.port, spec.healthcheck.port ?? spec.endpoint.port, ...(spec.telemetry ? [spec.telemetry.port] : [])])];
      return { kind: 'image', image: spec.image, registryAuth: await this.registryAuth(spec.folderId, spec.username, spec.passwordSecret), env: spec.env, ports, capabilities: spec.capabilities ?? [] };
    }
    const checkpoint = await this.store.getCheckpoint(spec.checkpointId);
    if (!checkpoint) throw new Error(`checkpoint ${spec.checkpointId} no longer exists`);
    const env = spec.environment;
    return {
      kind: 'cell', python: env.python, kernelImage: env.image ?? this.config.kernelImage,
      registryAuth: await this.registryAuth(spec.folderId, env.username, env.passwordSecret),
      checkpointPath: await this.blobs.materialize(checkpoint), checkpointSha256: checkpoint.sha256, code: checkpoint.code, requires: checkpoint.requires,
      inputs: spec.inputs, outputs: spec.outputs, maxResponseBytes: this.config.maxResponseBytes,
      fork: spec.scaling.fork !== false,
    };
  }

  /** A node may name only its own folder's secrets. */
  private async registryAuth(folderId: string, username?: string, secret?: string): Promise<RegistryAuth | null> {
    if (!username || !secret) return null;
    return { username, password: await this.secrets.reveal(folderId, secret) };
  }

  private async run(node: NodeState, inst: InstanceState): Promise<void> {
    const generation = ++inst.generation;
    inst.passes = 0; inst.fails = 0; inst.healthyThisRun = false; inst.restarting = false; inst.hung = false;
    const handle = await this.runtime.start({
      nodeId: node.id, instanceId: inst.id, revision: inst.revision, resources: inst.spec.resources, workload: await this.workload(inst.spec),
      network: inst.spec.network ?? 'outbound',
      ...(inst.spec.placement ? { placement: inst.spec.placement } : {}),
    });
    inst.handle = handle;
    this.clockRun(node, inst, handle, false);
    if (inst.stopping) { this.runtime.kill(handle); return; }
    inst.setStatus('Created');
    await this.connect(node, inst, generation, handle);
  }

  /** An instance left by an earlier run: skip creation, check it like a new one. */
  private adopt(node: NodeState, handle: RuntimeInstance, revision: number, spec: NodeSpec): void {
    const inst = new InstanceState(handle.instanceId, node.id, revision, spec);
    node.instances.set(inst.id, inst);
    inst.handle = handle;
    this.clockRun(node, inst, handle, true);
    inst.setStatus('Created', 'adopted after a restart');
    const generation = ++inst.generation;
    void this.connect(node, inst, generation, handle).catch((err) => this.startFailed(node, inst, err));
  }

  /** Usage: this run of the instance is billed from now (or, adopted, from the last record) until it exits. */
  private clockRun(node: NodeState, inst: InstanceState, handle: RuntimeInstance, adopted: boolean): void {
    const stop = this.clock.started({ folderId: node.record.spec.folderId, nodeId: node.id, preset: usagePreset(inst.spec.resources), instanceId: inst.id }, adopted);
    void handle.exited.then(stop, stop);
  }

  /** Started once the endpoint answers; then Preparing until health checks pass. */
  private async connect(node: NodeState, inst: InstanceState, generation: number, handle: RuntimeInstance): Promise<void> {
    void handle.exited.then((info) => this.onExit(node, inst, generation, info.code, info.signal, info.error));
    const deadline = Date.now() + CONNECT_TIMEOUT_MS;
    for (;;) {
      if (inst.generation !== generation || inst.stopping) return;
      if (node.spec.kind === 'cell') {
        try {
          inst.health = await WorkerConnection.open(handle.endpoint, 1024 * 1024, 1000);
          break;
        } catch { /* not listening yet */ }
      } else if ((await probeTcp(handle.endpoint, 1000)).ok) {
        break;
      }
      if (Date.now() > deadline) throw new Error(`the instance did not accept connections within ${CONNECT_TIMEOUT_MS / 1000}s`);
      await sleep(25);
    }
    inst.setStatus('Started');
    inst.setStatus('Preparing');
    this.healthLoop(node, inst, generation, Date.now());
  }

  /** One health check: pass, fail, or (cell workers) still loading / failed for good. */
  private async probe(node: NodeState, inst: InstanceState): Promise<ProbeResult | { loading: true } | { fatal: string }> {
    const hc = inst.spec.healthcheck;
    const handle = inst.handle!;
    const timeoutMs = hc.timeout * 1000;
    if (hc.protocol === 'worker') {
      try {
        inst.health ??= await WorkerConnection.open(handle.endpoint, 1024 * 1024, timeoutMs);
        const pong = await withTimeout(inst.health.request(FRAME.PING, ''), timeoutMs);
        const body = JSON.parse(pong.payload.toString('utf8')) as { state: string; error: string | null };
        if (body.state === 'failed') return { fatal: body.error ?? 'the worker failed to load the checkpoint' };
        if (body.state === 'loading') return { loading: true };
        return { ok: true };
      } catch (err) {
        // a late answer would confuse the next check: start over on a fresh connection
        inst.health?.close();
        inst.health = null;
        return { ok: false, reason: `worker did not answer its health check: ${(err as Error).message}` };
      }
    }
    const target = handle.ports.get(hc.port!) ?? handle.endpoint;
    if (hc.protocol === 'http') return probeHttp(target, hc.path ?? '/', timeoutMs);
    if (hc.protocol === 'grpc') return probeGrpc(target, hc.service ?? '', timeoutMs);
    if (hc.protocol === 'endpoint' && inst.spec.kind === 'image') return probeServing(target, inst.spec.endpoint.protocol, timeoutMs);
    return probeTcp(target, timeoutMs);
  }

  private healthLoop(node: NodeState, inst: InstanceState, generation: number, preparingSince: number): void {
    const hc = inst.spec.healthcheck;
    const check = async (): Promise<void> => {
      if (inst.generation !== generation || inst.stopping || !inst.handle) return;
      const result = await this.probe(node, inst);
      if (inst.generation !== generation || inst.stopping) return;
      if ('fatal' in result) {
        inst.lastError = result.fatal;
        inst.setStatus('Unhealthy', 'failed to prepare');
        this.runtime.kill(inst.handle);
        return;
      }
      if ('loading' in result) {
        if (Date.now() - preparingSince > PREPARE_TIMEOUT_MS) {
          inst.lastError = `preparing took longer than ${PREPARE_TIMEOUT_MS / 60_000} minutes`;
          this.runtime.kill(inst.handle);
          return;
        }
      } else if (result.ok) {
        inst.fails = 0;
        inst.passes++;
        if (inst.status !== 'Healthy' && inst.passes >= hc.passesThreshold) await this.becomeHealthy(node, inst, generation);
      } else {
        inst.passes = 0;
        inst.fails++;
        if (inst.healthyThisRun && !inst.hung && inst.fails >= hc.failsThreshold && (inst.status === 'Healthy' || inst.status === 'Unhealthy')) {
          // served, now stuck while running (a refused connection may have marked it already)
          inst.lastError = `failed ${inst.fails} health checks in a row: ${result.reason}`;
          inst.hung = true;
          if (inst.status === 'Healthy') this.markUnhealthy(node, inst, 'health checks failing');
          else this.reconcile(node);
        } else if (inst.status === 'Preparing' && inst.fails >= hc.failsThreshold) {
          inst.lastError = result.reason;
        } else if (inst.status === 'Unhealthy' && inst.fails >= 2 * hc.failsThreshold) {
          // hung (a stuck worker, a paused container): its replacement started when it went
          // Unhealthy; now it goes, cell and image alike
          inst.lastError = `stayed unhealthy for ${inst.fails} health checks in a row (${result.reason}); instance replaced`;
          void this.replaceHung(node, inst);
          return;
        }
      }
      // a worker still restoring its checkpoint is asked again soon, not a whole interval later:
      // that wait would be most of a wake from zero (calls are held meanwhile)
      const next = 'loading' in result ? Math.min(hc.interval * 1000, LOADING_RECHECK_MS) : hc.interval * 1000;
      inst.healthTimer = setTimeout(() => void check(), next);
    };
    void check();
  }

  private async becomeHealthy(node: NodeState, inst: InstanceState, generation: number): Promise<void> {
    if (inst.generation !== generation || inst.stopping) return;
    inst.failuresInARow = 0;
    inst.setStatus('Healthy');
    this.publish(node);
  }

  private markUnhealthy(node: NodeState, inst: InstanceState, reason: string): void {
    if (inst.status === 'Unhealthy') return;
    inst.setStatus('Unhealthy', reason);
    this.publishAll();
    this.reconcile(node); // its replacement starts now, before the node's status is decided
  }

  /** Removes a hung instance at once (it is out of balancing already); reconcile keeps the count. */
  private async replaceHung(node: NodeState, inst: InstanceState): Promise<void> {
    if (inst.stopping) return;
    inst.stopping = true;
    const reason = inst.lastError ?? 'stayed unhealthy';
    inst.setStatus('Deleting', 'stayed unhealthy; replaced');
    log.warn({ event: 'instance_replaced', nodeId: node.id, instanceId: inst.id, reason }, 'instance replaced');
    this.publish(node);
    if (inst.handle) {
      this.runtime.kill(inst.handle);
      const gone = await withTimeout(inst.handle.exited, 10_000).then(() => true, () => false);
      if (!gone) await this.runtime.stop(inst.handle, 1000).catch(() => undefined);
    }
    inst.closeConnections();
    node.instances.delete(inst.id);
    this.reconcileSoon(node);
  }

  private onExit(node: NodeState, inst: InstanceState, generation: number, code: number | null, signal: string | null, error?: string): void {
    if (inst.generation !== generation) return;
    const wasHealthy = inst.healthyThisRun;
    inst.healthyThisRun = false; // exited, not hung: it restarts in place rather than being replaced
    inst.closeConnections();
    if (inst.stopping) return;
    const how = error ?? (signal ? `was killed by ${signal}` : `exited with code ${code}`);
    // keep a more specific reason (a timeout, a missing package) over "killed"
    inst.lastError = inst.lastError && !inst.lastError.startsWith('process ') && inst.status !== 'Healthy' ? inst.lastError : `process ${how}`;
    inst.setStatus('Unhealthy', `process ${how}`);
    this.publish(node);
    if (!wasHealthy) {
      inst.failuresInARow++;
      this.event(node, 'start-failed', `instance ${inst.id} failed to start: ${inst.lastError}`, { instanceId: inst.id, failuresInARow: inst.failuresInARow });
    }
    this.scheduleRestart(node, inst);
  }

  private scheduleRestart(node: NodeState, inst: InstanceState): void {
    if (inst.stopping || node.deleting || this.stopped) return;
    if (inst.revision !== node.revision) {
      // a rollout is replacing it: it goes, and a new-revision instance takes its place
      void this.stopInstance(node, inst, `exited during the rollout to revision ${node.revision}`);
      return;
    }
    const delay = inst.failuresInARow === 0 ? 0 : Math.min(MAX_BACKOFF_MS, 500 * 2 ** (inst.failuresInARow - 1));
    setTimeout(() => {
      if (inst.stopping || node.deleting || this.stopped) return;
      inst.restarts++;
      inst.handle = null;
      inst.setStatus('Undefined', 'restarting');
      this.launch(node, inst);
    }, delay).unref();
  }

  /** Out of balancing at once (`as`: Deleting, or Outdated when a rollout replaces it); stopped once its calls have finished. */
  private async stopInstance(node: NodeState, inst: InstanceState, reason: string, as: 'Deleting' | 'Outdated' = 'Deleting'): Promise<void> {
    if (inst.stopping) return;
    inst.stopping = true;
    inst.setStatus(as, reason);
    this.publish(node);
    // calls already running on it finish; then its connections close with the process
    const deadline = Date.now() + node.callTimeoutS * 1000;
    while (this.gateways.instance(node.id, inst.id).busy > 0 && Date.now() < deadline) await sleep(20);
    if (as === 'Outdated') inst.setStatus('Deleting', 'drained');
    if (inst.handle) await this.runtime.stop(inst.handle, 2000).catch(() => undefined);
    inst.closeConnections();
    node.instances.delete(inst.id);
    this.reconcileSoon(node);
  }

  /** Records a node event (persisted off the decision's path) and counts scale decisions. */
  private event(node: NodeState, type: string, reason: string, details: Record<string, unknown> = {}): void {
    if (node.deleting) return;
    if (type === 'scale-up' || type === 'wake') this.metrics.scaled(node.id, 'up');
    else if (type === 'scale-down' || type === 'scale-to-zero') this.metrics.scaled(node.id, 'down');
    log.info({ event: 'node_event', nodeId: node.id, type, reason, ...details }, `node ${type}`);
    void this.store.insertNodeEvent({ nodeId: node.id, at: nowIso(), type, reason, details })
      .catch((err) => log.error({ event: 'node_event_write_failed', nodeId: node.id, type, error: (err as Error).message }, 'node event write failed'));
  }

  private reconcileSoon(node: NodeState): void {
    if (!this.stopped && !node.deleting) setImmediate(() => this.reconcile(node));
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('timeout')), ms);
    p.then((v) => { clearTimeout(t); resolve(v); }, (e) => { clearTimeout(t); reject(e); });
  });
}
