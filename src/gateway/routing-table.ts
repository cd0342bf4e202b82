// The gateway's side of a routing snapshot: per node, a dispatcher over the Healthy
// instances with the gateway's own persistent connections to each (worker sessions for
// cell nodes, an HTTP/1.1 or HTTP/2 pool for image nodes). A new snapshot is applied by
// diffing: instances that stay keep their connections; new ones are connected before
// they take calls; removed ones leave balancing at once and are closed when idle.
import { BerthError } from '../core/errors.js';
import { SCALING_DEFAULTS, type NodeSpec } from '../core/types.js';
import type { InstanceEntry, InstanceEvents, LoadSource, NodeEntry, RoutingSnapshot, SnapshotSink } from '../routing/snapshot.js';
import { WorkerConnection, type Frame } from '../worker/protocol.js';
import { NodeDispatcher, type Slot } from './dispatcher.js';
import { compileInputValidator, type InputValidator } from './input-validator.js';
import { H1Upstream, type UpstreamRequest, type UpstreamResponse } from './upstream.js';
import { H2Upstream } from './h2/client.js';
import { CallMeter } from './usage-meter.js';

/**
 * Waiting calls a cell session takes at once when it frees (NodeDispatcher.pipelineDepth): 4
 * gave 1.7–2.7× the calls per second of 1 with one Python process, 2 a third of that (docs/benchmarks.md).
 */
const CELL_PIPELINE_DEPTH = 4;

/** One gateway's load, per node and instance (see RoutingTable.loadReport). */
export interface LoadReport {
  version: number;
  nodes: Record<string, { busy: number; waiting: number; instances: Record<string, { busy: number; held: number; lastUsedAt: number; stickyWaiting?: number }> }>;
}

/**
 * What of a load report session leases depend on (cluster/primary.ts): which nodes and
 * instances have calls, how many calls wait, sessions held, sticky calls waiting. Under a
 * steady load it stays the same while the counts of running calls and the last-use times move.
 */
export function loadShape(r: LoadReport | null): string {
  let s = '';
  for (const id in r?.nodes) {
    const n = r.nodes[id]!;
    s += `${id}:${n.busy + n.waiting > 0 ? 1 : 0}:${n.waiting}`;
    for (const iid in n.instances) {
      const i = n.instances[iid]!;
      s += `,${iid}:${i.busy > 0 ? 1 : 0}:${i.held}:${i.stickyWaiting ?? 0}`;
    }
    s += ';';
  }
  return s;
}

/**
 * With gateway workers: how a call reaches a node whose sessions another worker holds, its
 * home (cluster/call-relay.ts).
 * `call` (cell nodes): resolves with the instance's answer frame, or a BerthError for a call
 * that failed once an instance had it (a timeout, a failed instance); rejects with a
 * BerthError when the call could not start, NO_FREE_SESSION (onlyIfFree), or RELAY_UNREACHABLE.
 * `request` (image nodes): the call's HTTP exchange, as the home answers it (proxy.ts); its
 * headers name the node (RELAY_NODE there).
 */
export interface CallRelay {
  call(nodeId: string, payload: Buffer, stickyKey: string | undefined, onlyIfFree: boolean): Promise<Frame | BerthError>;
  request(req: UpstreamRequest): Promise<UpstreamResponse>;
}

/** A call sent onlyIfFree found every session busy (mirrored calls never queue). */
export const NO_FREE_SESSION = Symbol('no free session');

/** The relay could not be reached (its worker is gone): the call was not delivered, and waits here for the node's next home. */
export const RELAY_UNREACHABLE = Symbol('relay unreachable');

/** Waiting calls are told this when their node's calls go through a relay from now on: they go there too. */
export const RELAYED = Symbol('relayed');

/** A node as a call sees it: everything it needs, no database. */
export interface NodeRoute {
  readonly id: string;
  readonly spec: NodeSpec;
  readonly dispatcher: NodeDispatcher;
  /** Set while another gateway worker holds the node's sessions: calls go there. */
  readonly relay: CallRelay | null;
  /**
   * Where a call goes after `failed` (its home) could not be reached: the next home, if a
   * snapshot named it while the call was on its way (RELAYED went out before the call waited:
   * it must not wait for it); null: it waits here, for RELAYED or for a session here.
   */
  homeAfter(failed: CallRelay): CallRelay | null;
  /** Cell nodes only. */
  readonly validateInput: InputValidator | null;
  readonly aclFolders: ReadonlySet<string>;
}

class RouteState implements NodeRoute {
  readonly dispatcher: NodeDispatcher;
  spec: NodeSpec;
  specVersion: string;
  validateInput: InputValidator | null;
  aclFolders: ReadonlySet<string>;
  relay: CallRelay | null = null;
  readonly slots = new Map<string, Slot>();
  /** Gone from the snapshot with calls still running: counted until they end (the controller drains on it). */
  readonly draining = new Map<string, Slot>();

  constructor(readonly id: string, entry: NodeEntry) {
    this.dispatcher = new NodeDispatcher(id, entry.spec.scaling.queueSize);
    this.spec = entry.spec;
    this.specVersion = entry.specVersion;
    this.validateInput = null;
    this.aclFolders = new Set();
    this.compile(entry);
  }

  compile(entry: NodeEntry): void {
    this.spec = entry.spec;
    this.specVersion = entry.specVersion;
    this.validateInput = entry.spec.kind === 'cell' ? compileInputValidator(entry.spec.inputs) : null;
    this.aclFolders = new Set(entry.spec.permissions.folders);
    this.dispatcher.setQueueSize(entry.spec.scaling.queueSize);
    this.dispatcher.pipelineDepth = entry.spec.kind === 'cell' ? CELL_PIPELINE_DEPTH : 1;
  }

  homeAfter(failed: CallRelay): CallRelay | null {
    return this.relay !== failed ? this.relay : null;
  }

  /** Hands the dispatcher the connected, current instances (an immutable swap). */
  publish(): void {
    this.dispatcher.setSlots([...this.slots.values()].filter((s) => s.ready && !s.retired));
  }
}

export class RoutingTable implements SnapshotSink, LoadSource {
  private routes = new Map<string, RouteState>();
  private version = 0;
  /** Calls and bytes served per node since the last drain (usage accounting; pipeline.ts counts into it). */
  readonly usage = new CallMeter();
  /** Told when sessions held change outside the call path (gateway workers report load then, not on a timer only). */
  onLoadChange: (() => void) | null = null;

  /** `relayTo`: the relay to a home worker's socket (gateway workers only). */
  constructor(private readonly events: InstanceEvents, private readonly maxResponseBytes: number,
    private readonly relayTo: ((path: string) => CallRelay) | null = null) {}

  route(nodeId: string): NodeRoute | undefined {
    return this.routes.get(nodeId);
  }

  /** Every node the gateway routes to (typed gRPC services and the Open Inference Protocol list them). */
  list(): IterableIterator<NodeRoute> {
    return this.routes.values();
  }

  /** Whether a node has an instance taking calls (alias picking, status views). */
  healthyCount(nodeId: string): number {
    return this.routes.get(nodeId)?.dispatcher.healthyCount ?? 0;
  }

  /** Whether a call sent to the node now is served: an instance takes calls, or it is scaled to zero and holds calls while one starts. */
  canServe(nodeId: string): boolean {
    const d = this.routes.get(nodeId)?.dispatcher;
    return d !== undefined && (d.healthyCount > 0 || d.holdMs !== null);
  }

  apply(snapshot: RoutingSnapshot): void {
    if (snapshot.version <= this.version) return; // late or repeated: a newer one is applied
    this.version = snapshot.version;
    const present = new Set<string>();
    for (const entry of snapshot.nodes) {
      present.add(entry.id);
      let route = this.routes.get(entry.id);
      if (!route) {
        this.routes.set(entry.id, route = new RouteState(entry.id, entry));
        route.dispatcher.onLoadChange = () => this.loadChanged();
        route.dispatcher.onHeld = () => this.events.held(entry.id);
      }
      else if (route.specVersion !== entry.specVersion) route.compile(entry);
      route.dispatcher.setRefusal(refusalOf(entry));
      route.dispatcher.setHold(entry.hold && !entry.suspended
        ? { ms: (entry.spec.scaling.holdTimeout ?? SCALING_DEFAULTS.holdTimeout) * 1000, ...(entry.hold.startError ? { startError: entry.hold.startError } : {}) }
        : null);
      this.syncInstances(route, entry.instances);
      const relay = entry.relay !== undefined && this.relayTo ? this.relayTo(entry.relay) : null;
      if (relay !== route.relay) {
        route.relay = relay;
        if (relay) route.dispatcher.rejectAll(RELAYED); // what waits here goes there now
      }
    }
    for (const [id, route] of this.routes) {
      if (present.has(id)) continue;
      this.routes.delete(id);
      route.dispatcher.rejectAll(new BerthError('NODE_NOT_FOUND', `node ${id} is being deleted`, { nodeId: id }));
      for (const slot of route.slots.values()) retire(slot);
      route.publish();
    }
  }

  /** Refuses every waiting call (Berth is stopping). */
  close(err: BerthError): void {
    for (const route of this.routes.values()) route.dispatcher.rejectAll(err);
  }

  reportTimeout(nodeId: string, instanceId: string, timeoutSeconds: number): void {
    this.events.timedOut(nodeId, instanceId, timeoutSeconds);
  }

  reportRefused(nodeId: string, instanceId: string, reason: string): void {
    this.events.refused(nodeId, instanceId, reason);
  }

  node(nodeId: string): { busy: number; waiting: number } {
    const d = this.routes.get(nodeId)?.dispatcher;
    return { busy: d?.busy ?? 0, waiting: d?.waiting ?? 0 };
  }

  instance(nodeId: string, instanceId: string): { busy: number; lastUsedAt: number } {
    const route = this.routes.get(nodeId);
    let slot = route?.slots.get(instanceId);
    if (!slot && route) {
      slot = route.draining.get(instanceId);
      if (slot && slot.busy === 0) route.draining.delete(instanceId);
    }
    return { busy: slot?.busy ?? 0, lastUsedAt: slot?.lastUsedAt ?? 0 };
  }

  /** With gateway workers: calls waiting per node in the other workers, as the primary last saw them. */
  setElsewhere(waiting: Readonly<Record<string, number>>): void {
    for (const [id, route] of this.routes) route.dispatcher.elsewhere = waiting[id] ?? 0;
  }

  /** The snapshot version applied last. */
  get appliedVersion(): number { return this.version; }

  /** Ids of the nodes this gateway routes (a worker forgets the metrics of the others). */
  nodeIds(): string[] { return [...this.routes.keys()]; }

  /**
   * What this gateway holds and runs, per node and instance (a gateway worker's report to
   * the primary, which sums the workers' for the controller and moves session leases by it).
   */
  loadReport(): LoadReport {
    const nodes: LoadReport['nodes'] = {};
    for (const [id, route] of this.routes) {
      const d = route.dispatcher;
      const instances: LoadReport['nodes'][string]['instances'] = {};
      const sticky = d.stickyWaitingByInstance();
      for (const map of [route.slots, route.draining]) {
        for (const [iid, slot] of map) {
          instances[iid] = { busy: slot.busy, held: slot.free.length + slot.busy + (slot.opening ?? 0), lastUsedAt: slot.lastUsedAt, ...(sticky[iid] ? { stickyWaiting: sticky[iid] } : {}) };
        }
      }
      nodes[id] = { busy: d.busy + [...route.draining.values()].reduce((n, s) => n + s.busy, 0), waiting: d.waiting, instances };
    }
    return { version: this.version, nodes };
  }

  private syncInstances(route: RouteState, instances: readonly InstanceEntry[]): void {
    const wanted = new Set(instances.map((i) => i.id));
    for (const [id, slot] of route.slots) {
      if (wanted.has(id)) continue;
      retire(slot);
      route.slots.delete(id);
      if (slot.busy > 0) route.draining.set(id, slot);
    }
    for (const inst of instances) {
      const have = route.slots.get(inst.id);
      if (have) { this.relimit(route, have, inst); continue; }
      const slot: Slot = { id: inst.id, free: [], busy: 0, lastUsedAt: Date.now(), upstream: null, ready: false, retired: false, since: inst.since ?? 0, ...(inst.sessions !== undefined ? { limit: inst.sessions } : {}) };
      route.slots.set(inst.id, slot);
      void this.connect(route, slot, inst);
    }
    route.publish();
  }

  /**
   * Opens the instance's sessions up to its lease (all of sessionsPerInstance with one
   * gateway); it takes calls once they are open. Called again when the lease grows.
   */
  private async connect(route: RouteState, slot: Slot, inst: InstanceEntry): Promise<void> {
    const spec = route.spec;
    const want = (): number => slot.limit ?? spec.scaling.sessionsPerInstance;
    try {
      if (spec.kind === 'cell') {
        while (!slot.retired && slot.free.length + slot.busy + (slot.opening ?? 0) < want()) {
          slot.opening = (slot.opening ?? 0) + 1;
          let conn: WorkerConnection;
          try { conn = await WorkerConnection.open(inst.endpoint, this.maxResponseBytes + 1024); } finally { slot.opening--; }
          if (slot.retired) { conn.close(); return; }
          // the lease may have shrunk while this one was opening
          if (slot.free.length + slot.busy + slot.opening >= want()) { conn.close(); break; }
          slot.free.push(conn);
        }
      } else {
        slot.upstream ??= spec.endpoint.protocol === 'http'
          ? new H1Upstream(inst.endpoint, Math.min(spec.endpoint.idleTimeout * 1000, 60_000))
          : new H2Upstream(inst.endpoint);
        while (slot.free.length + slot.busy < want()) slot.free.push({ closed: false });
      }
    } catch (err) {
      if (slot.ready) { this.loadChanged(); return; } // growing failed: the instance keeps what it has; probes judge it
      retire(slot);
      if (route.slots.get(slot.id) === slot) route.slots.delete(slot.id);
      this.events.refused(route.id, slot.id, (err as Error).message);
      return;
    }
    if (slot.retired) return;
    slot.ready = true;
    route.publish();
    this.loadChanged();
  }

  /** A new lease for an instance this gateway already has: grow to it, or give back free sessions above it. */
  private relimit(route: RouteState, slot: Slot, inst: InstanceEntry): void {
    const limit = inst.sessions;
    if (limit === slot.limit) return;
    slot.limit = limit;
    const cap = limit ?? route.spec.scaling.sessionsPerInstance;
    const held = slot.free.length + slot.busy + (slot.opening ?? 0);
    if (held < cap) { if (slot.ready) void this.connect(route, slot, inst); return; }
    while (slot.free.length > 0 && slot.free.length + slot.busy + (slot.opening ?? 0) > cap) {
      (slot.free.pop() as { close?: () => void }).close?.();
    }
    this.loadChanged();
  }

  /** Sessions held per instance changed outside a call (a lease applied, a session given back). */
  private loadChanged(): void { this.onLoadChange?.(); }
}

/** What calls get at once while the node takes none: suspended, or failing with the controller's reason. */
function refusalOf(entry: NodeEntry): BerthError | null {
  if (entry.suspended) {
    return new BerthError('NODE_SUSPENDED', `node ${entry.id} (${entry.spec.name}) is suspended: resume it to serve calls (berth node resume ${entry.id})`, { nodeId: entry.id });
  }
  if (entry.unavailable !== undefined) {
    return new BerthError('NODE_UNAVAILABLE', `node ${entry.id} has no healthy instance: ${entry.unavailable}`,
      { nodeId: entry.id, reason: entry.unavailable }, { 'retry-after': '5' });
  }
  return null;
}

/** Out of balancing now: idle sessions close at once, the rest as their calls end (Dispatcher.release). */
function retire(slot: Slot): void {
  slot.retired = true;
  for (const c of slot.free) (c as { close?: () => void }).close?.();
  slot.free.length = 0;
  if (slot.busy === 0) { slot.upstream?.close(); slot.upstream = null; }
}
