// The per-node and per-alias call metrics (src/core/metrics.ts): bound once, each call only
// increments; HTTP and gRPC codes counted per node; a forgotten node leaves no series behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AggregatorRegistry } from 'prom-client';
import { Metrics } from '../../src/core/metrics.js';

const series = (text: string, id: string): string[] => text.split('\n').filter((l) => l.includes(`node_id="${id}"`) && /^node_/.test(l));

test('calls count per node under their HTTP and gRPC codes; a forgotten node leaves no series', async () => {
  const metrics = new Metrics();
  const m = metrics.bindNode('n1');
  assert.equal(metrics.bindNode('n1'), m, 'bound once');
  for (let i = 0; i < 3; i++) { m.requests.inc(); m.observe(200, 0.002); m.grpc('0'); }
  m.requests.inc(); m.observe(200, 0.002); m.grpc('14');
  m.observeGrpc('5', 0.001);
  metrics.bindNode('n2').observe(503, 0.1);

  const text = await metrics.registry.metrics();
  assert.match(text, /node_requests\{node_id="n1"\} 4/);
  assert.match(text, /node_http_codes\{node_id="n1",code="200"\} 4/);
  assert.match(text, /node_grpc_codes\{node_id="n1",code="0"\} 3/);
  assert.match(text, /node_grpc_codes\{node_id="n1",code="14"\} 1/);
  assert.match(text, /node_grpc_codes\{node_id="n1",code="5"\} 1/);
  assert.match(text, /node_request_durations_count\{node_id="n1"\} 5/);
  assert.match(text, /node_http_codes\{node_id="n2",code="503"\} 1/);

  metrics.forgetNode('n1');
  const after = await metrics.registry.metrics();
  assert.deepEqual(series(after, 'n1'), [], 'no series of the forgotten node');
  assert.ok(series(after, 'n2').length > 0, 'the other node keeps its series');
  // bound again from scratch
  metrics.bindNode('n1').observe(200, 0.001);
  assert.match(await metrics.registry.metrics(), /node_http_codes\{node_id="n1",code="200"\} 1/);
});

test('durations are cumulative buckets, a value on a bound counted in it; gateway workers\' series sum', async () => {
  const metrics = new Metrics();
  const m = metrics.bindNode('h');
  for (const s of [0.0005, 0.0007, 0.004, 0.3, 100]) m.observe(200, s);
  const text = await metrics.registry.metrics();
  assert.match(text, /node_request_durations_bucket\{le="0.0005",node_id="h"\} 1\n/);
  assert.match(text, /node_request_durations_bucket\{le="0.001",node_id="h"\} 2\n/);
  assert.match(text, /node_request_durations_bucket\{le="0.005",node_id="h"\} 3\n/);
  assert.match(text, /node_request_durations_bucket\{le="0.5",node_id="h"\} 4\n/);
  assert.match(text, /node_request_durations_bucket\{le="60",node_id="h"\} 4\n/);
  assert.match(text, /node_request_durations_bucket\{le="\+Inf",node_id="h"\} 5\n/);
  assert.match(text, /node_request_durations_sum\{node_id="h"\} 100.3052\n/);
  // the primary sums the workers' JSON with prom-client's aggregator (src/cluster/primary.ts)
  const json = await metrics.registry.getMetricsAsJSON();
  const summed = await AggregatorRegistry.aggregate([json, json]).metrics();
  assert.match(summed, /node_request_durations_bucket\{le="0.005",node_id="h"\} 6\n/);
  assert.match(summed, /node_request_durations_count\{node_id="h"\} 10\n/);
  assert.match(summed, /node_http_codes\{node_id="h",code="200"\} 10\n/);
});

test('the call families alone (the dashboard\'s history): node and alias series as in the whole text, no process metrics', async () => {
  const metrics = new Metrics();
  const n1 = metrics.bindNode('n1');
  n1.requests.inc();
  n1.observe(200, 0.002);
  metrics.bindAlias('a1').observe(503, 0.2);
  const all = await metrics.text(false);
  const calls = await metrics.text(true);
  assert.match(all, /^berth_process_cpu_user_seconds_total /m, 'the whole text has the default metrics');
  assert.doesNotMatch(calls, /^berth_/m);
  const callLines = (t: string): string[] => t.split('\n').filter((l) => /^(node|alias)_/.test(l)).sort();
  assert.deepEqual(callLines(calls), callLines(all));
  assert.ok(callLines(calls).some((l) => l.startsWith('alias_http_codes{alias_name="a1",code="503"} 1')), calls);
  // as JSON for the primary to sum: the same families
  const json = await metrics.json(true);
  const names = json.map((m) => m.name);
  assert.ok(names.every((n) => /^(node|alias)_/.test(n)), names.join(' '));
  for (const family of ['node_requests', 'node_http_codes', 'node_request_durations', 'alias_http_codes']) assert.ok(names.includes(family), family);
  const summed = await AggregatorRegistry.aggregate([json, json]).metrics();
  assert.match(summed, /^node_requests\{node_id="n1"\} 2$/m, 'two workers\' counts sum');
});
