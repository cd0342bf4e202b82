// Prometheus metrics. Children are bound once per node, so a call only increments.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { INSTANCE_STATUSES, type InstanceStatus } from './types.js';

export interface NodeMetrics {
  requests: { inc(): void };
  observe(httpCode: number, seconds: number): void;
  grpc(status: string): void;
}

export class Metrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'node_id'>;
  private readonly httpCodes: Counter<'node_id' | 'code'>;
  private readonly grpcCodes: Counter<'node_id' | 'code'>;
  private readonly durations: Histogram<'node_id'>;
  private readonly instances: Gauge<'node_id' | 'status'>;
  private readonly bound = new Map<string, NodeMetrics & { codes: Map<number, unknown>; grpcSeen: Set<string> }>();

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'berth_' });
    this.requests = new Counter({ name: 'node_requests', help: 'Calls received per node', labelNames: ['node_id'], registers: [this.registry] });
    this.httpCodes = new Counter({ name: 'node_http_codes', help: 'Responses per node and HTTP status code', labelNames: ['node_id', 'code'], registers: [this.registry] });
    this.grpcCodes = new Counter({ name: 'node_grpc_codes', help: 'gRPC calls per node and grpc-status code', labelNames: ['node_id', 'code'], registers: [this.registry] });
    this.durations = new Histogram({
      name: 'node_request_durations', help: 'Call duration per node in seconds', labelNames: ['node_id'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60], registers: [this.registry],
    });
    this.instances = new Gauge({ name: 'node_instances', help: 'Instances per node and status', labelNames: ['node_id', 'status'], registers: [this.registry] });
  }

  bindNode(nodeId: string): NodeMetrics {
    let m = this.bound.get(nodeId);
    if (m) return m;
    const requests = this.requests.labels(nodeId);
    const duration = this.durations.labels(nodeId);
    const codes = new Map<number, { inc(): void }>();
    const grpcSeen = new Set<string>();
    m = {
      requests, codes, grpcSeen,
      observe: (code, seconds) => {
        let c = codes.get(code);
        if (!c) { c = this.httpCodes.labels(nodeId, String(code)); codes.set(code, c); }
        c.inc();
        duration.observe(seconds);
      },
      grpc: (status) => {
        grpcSeen.add(status);
        this.grpcCodes.labels(nodeId, status).inc();
      },
    };
    this.bound.set(nodeId, m);
    return m;
  }

  forgetNode(nodeId: string): void {
    const m = this.bound.get(nodeId);
    this.bound.delete(nodeId);
    this.requests.remove(nodeId);
    this.durations.remove(nodeId);
    for (const code of m?.codes.keys() ?? []) this.httpCodes.remove(nodeId, String(code));
    for (const code of m?.grpcSeen ?? []) this.grpcCodes.remove(nodeId, code);
    for (const status of INSTANCE_STATUSES) this.instances.remove({ node_id: nodeId, status });
  }

  setInstanceStatuses(nodeId: string, statuses: InstanceStatus[]): void {
    const counts = new Map<string, number>();
    for (const s of statuses) counts.set(s, (counts.get(s) ?? 0) + 1);
    for (const s of INSTANCE_STATUSES) this.instances.labels(nodeId, s).set(counts.get(s) ?? 0);
  }
}
