// Prometheus metrics. A node's and an alias's call series are bound once, so a call only adds to numbers.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type MetricObjectWithValues, type MetricValue } from 'prom-client';
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

/** One node's or alias's calls: plain numbers the call path adds to. */
class CallSeries implements CallMetrics {
  requestCount = 0;
  readonly httpCodes = new Map<number, number>();
  readonly grpcCodes = new Map<string, number>();
  /** Calls per duration bucket, not cumulative (the last one is past the largest bound), and their sum. */
  readonly buckets = new Float64Array(BUCKETS.length + 1);
  count = 0;
  seconds = 0;

  readonly requests = { inc: (): void => { this.requestCount++; } };

  readonly observe = (code: number, seconds: number): void => {
    this.httpCodes.set(code, (this.httpCodes.get(code) ?? 0) + 1);
    this.time(seconds);
  };

  readonly grpc = (status: string): void => {
    this.grpcCodes.set(status, (this.grpcCodes.get(status) ?? 0) + 1);
  };

  readonly observeGrpc = (status: string, seconds: number): void => {
    this.grpc(status);
    this.time(seconds);
  };

  private time(seconds: number): void {
    let i = 0;
    while (i < BUCKETS.length && seconds > BUCKETS[i]!) i++;
    this.buckets[i]!++;
    this.count++;
    this.seconds += seconds;
  }
}

/** A value as prom-client's registries read them (its text exposition, and the gateway workers' JSON it sums). */
interface ExportedValue { labels: Record<string, string | number>; value: number; metricName?: string }

/**
 * node_requests, node_http_codes, node_grpc_codes, node_request_durations (and alias_… alike).
 * Not prom-client's Counter and Histogram: their "bound" children hash the label values on every
 * inc and observe (1–2 µs a call, measured), on every call. These are series of plain numbers,
 * given to the registry as metrics of prom-client's shape, read only when scraped.
 */
class CallMetricFamily {
  private readonly series = new Map<string, CallSeries>();

  constructor(registry: Registry, prefix: 'node' | 'alias', private readonly label: string) {
    const what = prefix === 'node' ? 'node' : 'alias';
    const family = (name: string, help: string, type: 'counter' | 'histogram', values: () => ExportedValue[]): void => {
      const metric = { name, help, type, aggregator: 'sum', get: async () => ({ name, help, type, aggregator: 'sum', values: values() }) };
      registry.registerMetric(metric as unknown as Parameters<Registry['registerMetric']>[0]);
    };
    family(`${prefix}_requests`, `Calls received per ${what}`, 'counter',
      () => this.each((labels, s) => (s.requestCount > 0 ? [{ labels, value: s.requestCount }] : [])));
    family(`${prefix}_http_codes`, `Responses per ${what} and HTTP status code`, 'counter',
      () => this.each((labels, s) => [...s.httpCodes].map(([code, value]) => ({ labels: { ...labels, code: String(code) }, value }))));
    family(`${prefix}_grpc_codes`, `gRPC calls per ${what} and grpc-status code`, 'counter',
      () => this.each((labels, s) => [...s.grpcCodes].map(([code, value]) => ({ labels: { ...labels, code }, value }))));
    const durations = `${prefix}_request_durations`;
    family(durations, `Call duration per ${what} in seconds`, 'histogram', () => this.each((labels, s) => {
      if (s.count === 0) return [];
      let below = 0;
      const out: ExportedValue[] = BUCKETS.map((le, i) => ({ labels: { le, ...labels }, value: below += s.buckets[i]!, metricName: `${durations}_bucket` }));
      out.push({ labels: { le: '+Inf', ...labels }, value: s.count, metricName: `${durations}_bucket` },
        { labels, value: s.seconds, metricName: `${durations}_sum` }, { labels, value: s.count, metricName: `${durations}_count` });
      return out;
    }));
  }

  private each(values: (labels: Record<string, string>, s: CallSeries) => ExportedValue[]): ExportedValue[] {
    const out: ExportedValue[] = [];
    for (const [id, s] of this.series) out.push(...values({ [this.label]: id }, s));
    return out;
  }

  bind(id: string): CallMetrics {
    let s = this.series.get(id);
    if (!s) this.series.set(id, s = new CallSeries());
    return s;
  }

  forget(id: string): void {
    this.series.delete(id);
  }
}

/** The call families (node_…, alias_…): all the dashboard's history reads. */
const isCallFamily = (name: string): boolean => name.startsWith('node_') || name.startsWith('alias_');

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
    // event-loop delay sampled every 100 ms, not prom-client's 10: a timer 100 times a second in
    // every process (the primary and each gateway worker) was most of an idle Berth's CPU
    collectDefaultMetrics({ register: this.registry, prefix: 'berth_', eventLoopMonitoringPrecision: 100 });
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

  /** This process's metrics as prom-client's JSON (the primary sums the workers'): all, or the call families only. */
  json(callsOnly: boolean): Promise<Array<MetricObjectWithValues<MetricValue<string>>>> {
    if (!callsOnly) return this.registry.getMetricsAsJSON();
    return Promise.all(this.callFamilies().map((n) => this.registry.getSingleMetric(n)!.get()));
  }

  /** This process's exposition: all of it (/metrics), or the call families only (the default metrics read /proc each time). */
  async text(callsOnly: boolean): Promise<string> {
    if (!callsOnly) return this.registry.metrics();
    return (await Promise.all(this.callFamilies().map((n) => this.registry.getSingleMetricAsString(n)))).join('\n');
  }

  private callFamilies(): string[] {
    return this.registry.getMetricsAsArray().map((m) => m.name).filter(isCallFamily);
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
