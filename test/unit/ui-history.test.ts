// The dashboard's metrics history (src/ui/history.ts): rates, errors by code and latency
// percentiles from two readings of a real prom-client registry's exposition, the one-hour
// bound, and forgetting what left the exposition.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Metrics } from '../../src/core/metrics.js';
import { MetricsHistory, parseExposition } from '../../src/ui/history.js';

test('rates, errors by code, percentiles and instances from two samples of the real exposition', async () => {
  const m = new Metrics();
  const reported: string[] = [];
  const off = m.onInstanceStatuses((id, statuses) => reported.push(`${id}:${statuses.join('+')}`));
  const node = m.bindNode('n1');
  const alias = m.bindAlias('a1');
  m.setInstanceStatuses('n1', ['Healthy', 'Healthy', 'Preparing']);
  off();
  m.setInstanceStatuses('n1', ['Healthy', 'Healthy', 'Preparing']);
  assert.deepEqual(reported, ['n1:Healthy+Healthy+Preparing'], 'the dashboard hears each reconcile until it stops listening');
  const h = new MetricsHistory(async () => m.registry.metrics(), 1000, 3600_000);
  h.add(1_000_000, await m.registry.metrics());
  assert.deepEqual(h.get('node', 'n1'), [], 'a rate needs two samples');
  // 100 calls in 10 s: 90 answered 200 in ~4 ms, 8 answered 503 in ~40 ms, 2 gRPC UNAVAILABLE
  for (let i = 0; i < 100; i++) {
    node.requests.inc();
    alias.requests.inc();
    if (i < 90) { node.observe(200, 0.004); alias.observe(200, 0.004); }
    else if (i < 98) { node.observe(503, 0.04); alias.observe(503, 0.04); }
    else node.observeGrpc('14', 0.002);
  }
  h.add(1_010_000, await m.registry.metrics());
  const p = h.latest('node', 'n1')!;
  assert.equal(p.rps, 10);
  assert.deepEqual(p.errors, { 'http 503': 0.8, 'grpc 14': 0.2 });
  assert.ok(p.p50! > 2.5 && p.p50! <= 5, `p50 ${p.p50}`);
  assert.ok(p.p99! > 25 && p.p99! <= 50, `p99 ${p.p99}`);
  assert.deepEqual(p.instances, { Undefined: 0, Created: 0, Started: 0, Preparing: 1, Healthy: 2, Unhealthy: 0, Deleting: 0, Outdated: 0 });
  assert.equal(h.latest('alias', 'a1')!.rps, 10);
  // no calls in the next interval: zero rate, no percentiles
  h.add(1_020_000, await m.registry.metrics());
  assert.deepEqual({ rps: h.latest('node', 'n1')!.rps, p50: h.latest('node', 'n1')!.p50 }, { rps: 0, p50: null });
  assert.equal(h.recent('node', 'n1', 2)!.rps, 5, 'recent averages the last samples');
  assert.equal(h.get('node', 'n1', 1_015_000).length, 1, 'since filters');
  // a deleted node leaves the exposition and the history
  m.forgetNode('n1');
  h.add(1_030_000, await m.registry.metrics());
  assert.deepEqual(h.get('node', 'n1'), []);
});

test('keeps only the last hour, and tells listeners of each sample', async () => {
  const text = (n: number): string => `node_requests{node_id="x"} ${n}\n`;
  const h = new MetricsHistory(async () => '', 1000, 60_000);
  const seen: number[] = [];
  h.onSample((t) => seen.push(t));
  for (let i = 0; i <= 200; i++) h.add(i * 1000, text(i * 3));
  const s = h.get('node', 'x');
  assert.ok(s.length <= 61 && s.length >= 60, `${s.length} points`);
  assert.ok(s.every((p) => p.rps === 3));
  assert.equal(seen.length, 200);
});

test('parses labels with escapes and ignores other families and comments', () => {
  const r = parseExposition([
    '# HELP node_requests Calls',
    '# TYPE node_requests counter',
    'node_requests{node_id="a\\"b"} 5',
    'berth_process_cpu_seconds_total 1.5',
    'alias_http_codes{alias_name="s.p",code="200"} 7',
    'node_request_durations_bucket{le="+Inf",node_id="z"} 3',
    'garbage line',
  ].join('\n'));
  assert.equal(r.nodes.get('a"b')!.requests, 5);
  assert.equal(r.aliases.get('s.p')!.codes.get('http 200'), 7);
  assert.equal(r.nodes.get('z')!.buckets.get(Infinity), 3);
});
