// Prometheus metrics. Children are bound once per node and alias, so a call only increments.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { INSTANCE_STATUSES, type InstanceStatus } from './types.js';

/** The metrics of one node or alias. */
export interface CallMetrics {
  requests: { inc(): void };
  /** A call answered over HTTP: its status code and duration. */
  observe(httpCode: number, seconds: number): void;
  /** The grpc-status of a call proxied over HTTP/2 (counted beside its HTTP status). */
  grpc(status: string): void;
  /** A call answered by Berth's own gRPC service: counted under its grpc-status only. */
  observeGrpc(status: string, seconds: number): void;
}

type UsageLabel = 'folder_id' | 'node_id' | 'preset';

const BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** node_requests, node_http_codes, node_grpc_codes, node_request_durations (and alias_… alike). */
class CallMetricFamily {
  private readonly requests: Counter<string>;
  private readonly httpCodes: Counter<string>;
  private readonly grpcCodes: Counter<string>;
  private readonly durations: Histogram<string>;
  /** Bound children per node or alias; the code children are bound on first use (a call only increments). */
  private readonly bound = new Map<string, CallMetrics & { httpCodes: Map<number, { inc(): void }>; grpcCodes: Map<string, { inc(): void }> }>();

  constructor(registry: Registry, private readonly prefix: 'node' | 'alias', private readonly label: string) {
    const what = prefix === 'node' ? 'node' : 'alias';
    this.requests = new Counter({ name: `${prefix}_requests`, help: `Calls received per ${what}`, labelNames: [label], registers: [registry] });
    this.httpCodes = new Counter({ name: `${prefix}_http_codes`, help: `Responses per ${what} and HTTP status code`, labelNames: [label, 'code'], registers: [registry] });
    this.grpcCodes = new Counter({ name: `${prefix}_grpc_codes`, help: `gRPC calls per ${what} and grpc-status code`, labelNames: [label, 'code'], registers: [registry] });
    this.durations = new Histogram({ name: `${prefix}_request_durations`, help: `Call duration per ${what} in seconds`, labelNames: [label], buckets: BUCKETS, registers: [registry] });
  }

  bind(id: string): CallMetrics {
    let m = this.bound.get(id);
    if (m) return m;
    const requests = this.requests.labels(id);
    const duration = this.durations.labels(id);
    const httpCodes = new Map<number, { inc(): void }>();
    const grpcCodes = new Map<string, { inc(): void }>();
    m = {
      requests, httpCodes, grpcCodes,
      observe: (code, seconds) => {
        let c = httpCodes.get(code);
        if (!c) { c = this.httpCodes.labels(id, String(code)); httpCodes.set(code, c); }
        c.inc();
        duration.observe(seconds);
      },
      grpc: (status) => {
        let c = grpcCodes.get(status);
        if (!c) { c = this.grpcCodes.labels(id, status); grpcCodes.set(status, c); }
        c.inc();
      },
      observeGrpc: (status, seconds) => {
        m!.grpc(status);
        duration.observe(seconds);
      },
    };
    this.bound.set(id, m);
    return m;
  }

  forget(id: string): void {
    const m = this.bound.get(id);
    this.bound.delete(id);
    this.requests.remove(id);
    this.durations.remove(id);
    for (const code of m?.httpCodes.keys() ?? []) this.httpCodes.remove(id, String(code));
    for (const code of m?.grpcCodes.keys() ?? []) this.grpcCodes.remove(id, code);
  }
}

export class Metrics {
  readonly registry = new Registry();
  private readonly nodes: CallMetricFamily;
  private readonly aliases: CallMetricFamily;
  private readonly instances: Gauge<'node_id' | 'status'>;
  /** Autoscaler decisions carried out, per node and direction (up: scale-up, wake; down: scale-down, scale-to-zero). */
  private readonly scaleEvents: Counter<'node_id' | 'direction'>;
  readonly mirror: { compared: Counter<'alias_name'>; differing: Counter<'alias_name'>; durations: Histogram<'alias_name' | 'role'> };
  /** Usage accounting (src/usage/): counted as it is written, every few seconds, by the process that owns the store. */
  private readonly usageCounters: {
    instanceSeconds: Counter<UsageLabel>; calls: Counter<UsageLabel>; bytes: Counter<UsageLabel | 'direction'>;
  };

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'berth_' });
    this.nodes = new CallMetricFamily(this.registry, 'node', 'node_id');
    this.aliases = new CallMetricFamily(this.registry, 'alias', 'alias_name');
    this.instances = new Gauge({ name: 'node_instances', help: 'Instances per node and status', labelNames: ['node_id', 'status'], registers: [this.registry] });
    this.scaleEvents = new Counter({ name: 'node_scale_events_total', help: 'Scale decisions per node and direction (up, down)', labelNames: ['node_id', 'direction'], registers: [this.registry] });
    this.mirror = {
      compared: new Counter({ name: 'alias_mirror_compared', help: 'Mirrored calls whose shadow answer was compared', labelNames: ['alias_name'], registers: [this.registry] }),
      differing: new Counter({ name: 'alias_mirror_differing', help: 'Mirrored calls whose shadow answer differed from the primary', labelNames: ['alias_name'], registers: [this.registry] }),
      durations: new Histogram({ name: 'alias_mirror_durations', help: 'Primary and shadow durations of mirrored calls, seconds', labelNames: ['alias_name', 'role'], buckets: BUCKETS, registers: [this.registry] }),
    };
    // Berth's own accounting, not a platform metric: Prometheus' conventions (prefix, unit, _total)
    const usage = ['folder_id', 'node_id', 'preset'] as const;
    this.usageCounters = {
      instanceSeconds: new Counter({ name: 'berth_usage_instance_seconds_total', help: 'Instance time per folder, node and resources preset, seconds (from start to stop, Preparing included)', labelNames: usage, registers: [this.registry] }),
      calls: new Counter({ name: 'berth_usage_calls_total', help: 'Calls that reached an instance, per folder, node and preset', labelNames: usage, registers: [this.registry] }),
      bytes: new Counter({ name: 'berth_usage_bytes_total', help: 'Bytes of calls sent to instances (direction="in") and answered (direction="out")', labelNames: [...usage, 'direction'], registers: [this.registry] }),
    };
  }

  /**
   * Usage just written to the store (UsageRecorder): the counters follow it. A deleted node's
   * series stay until Berth restarts: the last of its time is written after it is gone.
   */
  usage(folderId: string, nodeId: string, preset: string, d: { instanceSeconds: number; calls: number; bytesIn: number; bytesOut: number }): void {
    const labels = { folder_id: folderId, node_id: nodeId, preset };
    if (d.instanceSeconds > 0) this.usageCounters.instanceSeconds.inc(labels, d.instanceSeconds);
    if (d.calls > 0) this.usageCounters.calls.inc(labels, d.calls);
    if (d.calls > 0) {
      this.usageCounters.bytes.inc({ ...labels, direction: 'in' }, d.bytesIn);
      this.usageCounters.bytes.inc({ ...labels, direction: 'out' }, d.bytesOut);
    }
  }

  bindNode(nodeId: string): CallMetrics { return this.nodes.bind(nodeId); }
  bindAlias(name: string): CallMetrics { return this.aliases.bind(name); }

  forgetNode(nodeId: string): void {
    this.nodes.forget(nodeId);
    for (const status of INSTANCE_STATUSES) this.instances.remove({ node_id: nodeId, status });
    for (const direction of ['up', 'down']) this.scaleEvents.remove({ node_id: nodeId, direction });
  }

  scaled(nodeId: string, direction: 'up' | 'down'): void { this.scaleEvents.labels(nodeId, direction).inc(); }

  forgetAlias(name: string): void { this.aliases.forget(name); }

  setInstanceStatuses(nodeId: string, statuses: InstanceStatus[]): void {
    const counts = new Map<string, number>();
    for (const s of statuses) counts.set(s, (counts.get(s) ?? 0) + 1);
    for (const s of INSTANCE_STATUSES) this.instances.labels(nodeId, s).set(counts.get(s) ?? 0);
    for (const fn of this.statusListeners) fn(nodeId, statuses);
  }

  private readonly statusListeners = new Set<(nodeId: string, statuses: readonly InstanceStatus[]) => void>();

  /**
   * Called after every reconcile of a node with its instances' statuses (changed or not): the
   * dashboard's stream pushes a change at once instead of at its next tick.
   */
  onInstanceStatuses(fn: (nodeId: string, statuses: readonly InstanceStatus[]) => void): () => void {
    this.statusListeners.add(fn);
    return () => { this.statusListeners.delete(fn); };
  }
}
