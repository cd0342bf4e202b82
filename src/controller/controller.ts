// The reconcile loop: compares what the store wants with what the runtime has, starts
// and stops instances, health-checks them, computes statuses, scales, and keeps each
// node's dispatcher (the gateway's routing table) up to date.
import { join } from 'node:path';
import type { Config } from '../core/config.js';
import { BerthError } from '../core/errors.js';
import { newId, nowIso } from '../core/ids.js';
import type { CellNodeSpec, InstanceView, NodeRecord, NodeStatus } from '../core/types.js';
import type { Store } from '../store/store.js';
import type { Runtime } from '../runtimes/runtime.js';
import { NodeDispatcher } from '../gateway/dispatcher.js';
import { compileInputValidator, type InputValidator } from '../gateway/input-validator.js';
import { FRAME, WorkerConnection } from '../worker/protocol.js';
import { InstanceState } from './instance.js';
import type { Metrics } from '../core/metrics.js';

/** How long an instance may take from spawn to an answering socket. */
const CONNECT_TIMEOUT_MS = 30_000;
/** How long restoring a checkpoint may take before the instance is replaced. */
const PREPARE_TIMEOUT_MS = 10 * 60_000;
const MAX_BACKOFF_MS = 30_000;

/** A node as the gateway uses it: everything a call needs, with no database access. */
export interface NodeRoute {
  readonly id: string;
  readonly spec: CellNodeSpec;
  readonly dispatcher: NodeDispatcher;
  readonly validateInput: InputValidator;
  readonly aclFolders: ReadonlySet<string>;
}

class NodeState implements NodeRoute {
  readonly dispatcher: NodeDispatcher;
  readonly validateInput: InputValidator;
  readonly aclFolders: ReadonlySet<string>;
  readonly instances = new Map<string, InstanceState>();
  status: NodeStatus;
  everHealthy: boolean;
  deleting = false;

  constructor(public record: NodeRecord) {
    this.dispatcher = new NodeDispatcher(record.id, record.spec.scaling.queueSize);
    this.validateInput = compileInputValidator(record.spec.inputs);
    this.aclFolders = new Set(record.spec.permissions.folders);
    this.status = record.status;
    this.everHealthy = record.status !== 'Created';
  }

  get id(): string { return this.record.id; }
  get spec(): CellNodeSpec { return this.record.spec; }

  /** Instances that count towards the target (not being removed). */
  active(): InstanceState[] {
    return [...this.instances.values()].filter((i) => !i.stopping);
  }
}

export class Controller {
  private readonly nodes = new Map<string, NodeState>();
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(
    private readonly config: Config,
    private readonly store: Store,
    private readonly runtime: Runtime,
    private readonly metrics: Metrics,
  ) {}

  checkpointPath(checkpointId: string): string {
    return join(this.config.home, 'checkpoints', `${checkpointId}.dill`);
  }

  async start(): Promise<void> {
    for (const record of await this.store.listNodes()) this.addNode(record);
    this.timer = setInterval(() => this.tick(), this.config.reconcileIntervalMs);
    this.timer.unref();
  }

  route(nodeId: string): NodeRoute | undefined {
    const n = this.nodes.get(nodeId);
    return n && !n.deleting ? n : undefined;
  }

  addNode(record: NodeRecord): void {
    const node = new NodeState(record);
    this.nodes.set(record.id, node);
    this.metrics.bindNode(record.id);
    this.reconcile(node);
  }

  async deleteNode(nodeId: string): Promise<void> {
    const node = this.nodes.get(nodeId);
    if (!node) return;
    node.deleting = true;
    await this.setNodeStatus(node, 'Deleting');
    node.dispatcher.rejectAll(new BerthError('NODE_NOT_FOUND', `node ${nodeId} is being deleted`, { nodeId }));
    await Promise.all(node.active().map((i) => this.stopInstance(node, i, 'node deleted')));
    this.nodes.delete(nodeId);
    this.metrics.forgetNode(nodeId);
    await this.runtime.cleanup(nodeId);
  }

  /** A call overran its timeout: take the instance out and replace it. */
  instanceTimedOut(nodeId: string, instanceId: string, timeoutSeconds: number): void {
    const inst = this.nodes.get(nodeId)?.instances.get(instanceId);
    if (!inst || !inst.handle || inst.stopping) return;
    inst.lastError = `a call ran past the node's ${timeoutSeconds}s timeout; instance replaced`;
    this.markUnhealthy(this.nodes.get(nodeId)!, inst, 'call timeout');
    this.runtime.kill(inst.handle);
  }

  nodeView(nodeId: string): { status: NodeStatus; instances: InstanceView[]; warnings: string[]; queued: number } | undefined {
    const node = this.nodes.get(nodeId);
    if (!node) return undefined;
    return {
      status: node.status,
      instances: [...node.instances.values()].map((i) => i.view()),
      warnings: this.runtime.unenforced(node.spec.resources),
      queued: node.dispatcher.waiting,
    };
  }

  logs(nodeId: string, instanceId: string, lines: number): Promise<string> {
    return this.runtime.logs(nodeId, instanceId, lines);
  }

  instanceIds(nodeId: string): string[] {
    return [...(this.nodes.get(nodeId)?.instances.keys() ?? [])];
  }

  /** Stops every instance (shutdown). Records stay in the store; `start` brings them back. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    const all: Promise<void>[] = [];
    for (const node of this.nodes.values()) {
      node.dispatcher.rejectAll(new BerthError('SHUTTING_DOWN', 'Berth is shutting down', {}, { 'retry-after': '5' }));
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

  private reconcile(node: NodeState): void {
    const { minInstances, maxInstances, sessionsPerInstance, scaleDownDelaySeconds } = node.spec.scaling;
    const active = node.active();
    const d = node.dispatcher;

    // keep at least minInstances; add more while calls wait for a session
    let target = Math.max(minInstances, active.length);
    if (d.waiting > 0) {
      const wanted = Math.ceil((d.busy + d.waiting) / sessionsPerInstance);
      target = Math.min(maxInstances, Math.max(target, wanted));
    }
    for (let i = active.length; i < target; i++) this.launch(node, new InstanceState(newId(), node.id));

    // remove one idle extra instance per tick after the quiet period
    if (active.length > minInstances && d.waiting === 0) {
      const now = Date.now();
      const quietMs = scaleDownDelaySeconds * 1000;
      const idle = active.find((i) => i.status === 'Healthy' && i.slot.busy === 0
        && now - i.slot.lastUsedAt >= quietMs && now - i.healthySince >= quietMs);
      if (idle) void this.stopInstance(node, idle, `idle for ${scaleDownDelaySeconds}s (scale-down)`);
    }

    this.updateNodeStatus(node);
    this.metrics.setInstanceStatuses(node.id, [...node.instances.values()].map((i) => i.status));
  }

  private updateNodeStatus(node: NodeState): void {
    if (node.deleting) return;
    let healthy = 0;
    for (const i of node.instances.values()) if (i.status === 'Healthy') healthy++;
    const enough = healthy >= node.spec.scaling.minInstances;
    if (enough) node.everHealthy = true;
    const status: NodeStatus = enough ? 'Healthy' : node.everHealthy ? 'Unhealthy' : 'Created';
    if (status !== node.status) void this.setNodeStatus(node, status, `${healthy} of ${node.spec.scaling.minInstances} required instances healthy`);
  }

  private async setNodeStatus(node: NodeState, status: NodeStatus, reason?: string): Promise<void> {
    node.status = status;
    await this.store.updateNodeStatus(node.id, status, { status, at: nowIso(), ...(reason ? { reason } : {}) });
  }

  /** Publishes the node's Healthy instances to its dispatcher (an immutable swap). */
  private publish(node: NodeState): void {
    node.dispatcher.setSlots([...node.instances.values()].filter((i) => i.status === 'Healthy').map((i) => i.slot));
    this.updateNodeStatus(node);
  }

  // ---- one instance's life ----

  private launch(node: NodeState, inst: InstanceState): void {
    node.instances.set(inst.id, inst);
    void this.run(node, inst).catch((err) => {
      inst.lastError = `start failed: ${err instanceof Error ? err.message : String(err)}`;
      if (inst.handle) this.runtime.kill(inst.handle);
      else this.scheduleRestart(node, inst);
    });
  }

  private async run(node: NodeState, inst: InstanceState): Promise<void> {
    const generation = ++inst.generation;
    const spec = node.spec;
    const checkpoint = await this.store.getCheckpoint(spec.checkpointId);
    if (!checkpoint) throw new Error(`checkpoint ${spec.checkpointId} no longer exists`);
    inst.passes = 0; inst.fails = 0; inst.healthyThisRun = false;
    const handle = await this.runtime.start({
      nodeId: node.id,
      instanceId: inst.id,
      resources: spec.resources,
      workload: {
        kind: 'cell', python: spec.environment.python, kernelImage: null, registryAuth: null, checkpointPath: this.checkpointPath(checkpoint.id),
        code: checkpoint.code, requires: checkpoint.requires, inputs: spec.inputs, outputs: spec.outputs,
        maxResponseBytes: this.config.maxResponseBytes,
      },
    });
    inst.handle = handle;
    if (inst.stopping) { this.runtime.kill(handle); return; }
    inst.setStatus('Created');
    void handle.exited.then((info) => this.onExit(node, inst, generation, info.code, info.signal));

    // Started: the worker's socket answers
    const deadline = Date.now() + CONNECT_TIMEOUT_MS;
    while (!inst.health) {
      if (inst.generation !== generation || inst.stopping) return;
      try {
        inst.health = await WorkerConnection.open(handle.endpoint, 1024 * 1024, 1000);
      } catch {
        if (Date.now() > deadline) throw new Error(`the worker did not open its socket within ${CONNECT_TIMEOUT_MS / 1000}s`);
        await sleep(25);
      }
    }
    inst.setStatus('Started');
    inst.setStatus('Preparing');
    this.healthLoop(node, inst, generation, Date.now());
  }

  private healthLoop(node: NodeState, inst: InstanceState, generation: number, preparingSince: number): void {
    const hc = node.spec.healthcheck;
    const check = async (): Promise<void> => {
      if (inst.generation !== generation || inst.stopping || !inst.handle) return;
      let state: string | null = null;
      let error: string | null = null;
      try {
        inst.health ??= await WorkerConnection.open(inst.handle.endpoint, 1024 * 1024, hc.timeout * 1000);
        const pong = await withTimeout(inst.health.request(FRAME.PING, ''), hc.timeout * 1000);
        const body = JSON.parse(pong.payload.toString('utf8')) as { state: string; error: string | null };
        state = body.state; error = body.error;
      } catch {
        // a late answer would confuse the next check: start over on a fresh connection
        inst.health?.close();
        inst.health = null;
      }
      if (inst.generation !== generation || inst.stopping) return;
      if (state === 'failed') {
        inst.lastError = error ?? 'the worker failed to load the checkpoint';
        inst.setStatus('Unhealthy', 'checkpoint restore failed');
        this.runtime.kill(inst.handle!);
        return;
      }
      if (state === 'loading') {
        if (Date.now() - preparingSince > PREPARE_TIMEOUT_MS) {
          inst.lastError = `restoring the checkpoint took longer than ${PREPARE_TIMEOUT_MS / 60_000} minutes`;
          this.runtime.kill(inst.handle!);
          return;
        }
      } else if (state === 'ready') {
        inst.fails = 0;
        inst.passes++;
        if (inst.status !== 'Healthy' && inst.passes >= hc.passesThreshold) await this.becomeHealthy(node, inst, generation);
      } else {
        inst.passes = 0;
        inst.fails++;
        if (inst.status === 'Healthy' && inst.fails >= hc.failsThreshold) {
          inst.lastError = `failed ${inst.fails} health checks in a row`;
          this.markUnhealthy(node, inst, 'health checks failing');
        } else if (inst.status === 'Unhealthy' && inst.fails >= 2 * hc.failsThreshold) {
          inst.lastError = `stayed unhealthy for ${inst.fails} checks; instance replaced`;
          this.runtime.kill(inst.handle!);
          return;
        }
      }
      inst.healthTimer = setTimeout(() => void check(), hc.interval * 1000);
    };
    void check();
  }

  private async becomeHealthy(node: NodeState, inst: InstanceState, generation: number): Promise<void> {
    const want = node.spec.scaling.sessionsPerInstance;
    while (inst.slot.free.length + inst.slot.busy < want) {
      const conn = await WorkerConnection.open(inst.handle!.endpoint, this.config.maxResponseBytes + 1024);
      if (inst.generation !== generation || inst.stopping) { conn.close(); return; }
      inst.slot.free.push(conn);
    }
    inst.failuresInARow = 0;
    inst.setStatus('Healthy');
    this.publish(node);
  }

  private markUnhealthy(node: NodeState, inst: InstanceState, reason: string): void {
    if (inst.status === 'Unhealthy') return;
    inst.setStatus('Unhealthy', reason);
    this.publish(node);
  }

  private onExit(node: NodeState, inst: InstanceState, generation: number, code: number | null, signal: string | null): void {
    if (inst.generation !== generation) return;
    const wasHealthy = inst.healthyThisRun;
    inst.closeConnections();
    if (inst.stopping) return;
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    inst.lastError = inst.lastError && !inst.lastError.startsWith('process ') ? inst.lastError : `process ${how}`;
    inst.setStatus('Unhealthy', `process ${how}`);
    this.publish(node);
    if (!wasHealthy) inst.failuresInARow++;
    this.scheduleRestart(node, inst);
  }

  private scheduleRestart(node: NodeState, inst: InstanceState): void {
    if (inst.stopping || node.deleting || this.stopped) return;
    const delay = inst.failuresInARow === 0 ? 0 : Math.min(MAX_BACKOFF_MS, 500 * 2 ** (inst.failuresInARow - 1));
    setTimeout(() => {
      if (inst.stopping || node.deleting || this.stopped) return;
      inst.restarts++;
      inst.handle = null;
      inst.setStatus('Undefined', 'restarting');
      this.launch(node, inst);
    }, delay).unref();
  }

  private async stopInstance(node: NodeState, inst: InstanceState, reason: string): Promise<void> {
    if (inst.stopping) return;
    inst.stopping = true;
    inst.setStatus('Deleting', reason);
    this.publish(node);
    // calls already running on it finish; then its connections close with the process
    const deadline = Date.now() + node.spec.timeout * 1000;
    while (inst.slot.busy > 0 && Date.now() < deadline) await sleep(20);
    if (inst.handle) await this.runtime.stop(inst.handle, 2000);
    inst.closeConnections();
    node.instances.delete(inst.id);
    this.reconcileSoon(node);
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
