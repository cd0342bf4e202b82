// Scale to zero with calls held, the autoscaler and node events, end to end: a real `berth up`,
// real Python workers (process runtime, sandboxed), real HTTP and gRPC callers; one image node
// on Docker for header-routed HTTP/1.1 and HTTP/2; the same wake through two gateway workers.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as h2connect } from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { startBerth, removeHome, makeCheckpoint, createNode, execute, waitFor, runLoad, type Berth } from './helpers.js';
import { LAB_CELLS, LAB_NODE } from './fixtures.js';
import { dockerProblem, removeContainersOfHome } from './docker-support.js';
import { buildTestImages, testImage, ECHO_PROTO } from './images/index.js';
import { PROTO_DIR } from '../src/gateway/grpc/protos.js';
import { structToJson } from '../src/gateway/grpc/struct.js';

// An interpreter whose start fails while a file is missing: its PYTHONPATH (bound read-only into
// the sandbox, live) holds a sitecustomize.py that exits unless `ok` is there. The test removes
// and puts back `ok` to make starts fail and succeed again, with no restart of anything.
const FLAKY_DIR = mkdtempSync(join(tmpdir(), 'berth-flaky-'));
const FLAKY_SITE = join(FLAKY_DIR, 'site');
const FLAKY_OK = join(FLAKY_SITE, 'ok');
const FLAKY_PYTHON = join(FLAKY_DIR, 'python-flaky');

let b: Berth;

before(async () => {
  mkdirSync(FLAKY_SITE, { recursive: true });
  chmodSync(FLAKY_DIR, 0o755);
  chmodSync(FLAKY_SITE, 0o755);
  writeFileSync(join(FLAKY_SITE, 'sitecustomize.py'), `import os, sys\nif not os.path.exists(${JSON.stringify(FLAKY_OK)}):\n    sys.stderr.write("flaky: start refused on purpose\\n")\n    os._exit(3)\n`);
  writeFileSync(FLAKY_OK, '');
  writeFileSync(FLAKY_PYTHON, `#!/bin/sh\nPYTHONPATH=${FLAKY_SITE} exec /usr/bin/python3 "$@"\n`);
  chmodSync(FLAKY_PYTHON, 0o755);
  b = await startBerth(undefined, { BERTH_ALLOWED_PYTHONS: FLAKY_PYTHON });
  await makeCheckpoint(b, 'lab', LAB_CELLS);
});

after(async () => {
  await b?.stop();
  if (b) removeHome(b.home);
  rmSync(FLAKY_DIR, { recursive: true, force: true });
});

const nodeOf = async (x: Berth, id: string): Promise<any> => (await x.request('GET', `/v1/nodes/${id}`)).body;
const eventsOf = async (x: Berth, id: string, query = ''): Promise<any[]> => (await x.request('GET', `/v1/nodes/${id}/events${query}`)).body.events;

/** Waits until the node has scaled to zero (its last instance gone), and checks it says so. */
async function atZero(x: Berth, id: string, timeoutMs = 30_000): Promise<any> {
  const n = await waitFor(`node ${id} scaled to zero`, async () => {
    const v = await nodeOf(x, id);
    return v.scaledToZero && v.instances.length === 0 ? v : undefined;
  }, timeoutMs);
  assert.equal(n.status, 'Healthy', 'a node scaled to zero stays Healthy');
  return n;
}

/** A scale-to-zero node of the lab checkpoint that idles out after 1 s. */
const ZERO = (name: string, scaling: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) => ({
  ...LAB_NODE, name, checkpointId: 'lab', scaling: { minInstances: 0, maxInstances: 2, scaleDownDelaySeconds: 1, ...scaling }, ...extra,
});

test('minInstances 0: the node scales to zero when idle, stays Healthy, and says so (API and CLI)', async () => {
  const bad = await b.request('POST', '/v1/nodes', { ...ZERO('zero-bad'), scaling: { minInstances: 0, holdTimeout: 0 } });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.details.field, 'scaling.holdTimeout');
  const util = await b.request('POST', '/v1/nodes', { ...ZERO('zero-bad'), scaling: { minInstances: 0, targetUtilization: 1.5 } });
  assert.equal(util.body.details.field, 'scaling.targetUtilization');

  const node = await createNode(b, ZERO('zero-rest'));
  assert.equal(node.instances.length, 1, 'a new node starts one instance to show it can serve');
  const z = await atZero(b, node.id);
  assert.equal(z.scaledToZero, true);
  assert.match(b.cli('node', 'list').stdout, /Healthy \(scaled to zero\) +│ 0 \(scaled to zero\)/);
  const events = await eventsOf(b, node.id);
  assert.equal(events[0].type, 'scale-to-zero');
  assert.match(events[0].reason, /no call for 1s/);
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});

test('held calls over REST, gRPC and an alias wake the node and are served', async () => {
  const node = await createNode(b, ZERO('zero-calls', {}, { permissions: { folders: ['default'] } }));
  await atZero(b, node.id);

  // REST execute
  const started = Date.now();
  const rest = await execute(b, node.id, { mode: 'echo', arg: 'rest' });
  assert.equal(rest.status, 200, JSON.stringify(rest.body));
  assert.deepEqual(rest.body.output, { result: 'rest' });
  const first = Date.now() - started;
  const woke = await eventsOf(b, node.id);
  assert.equal(woke[0].type, 'wake');
  assert.match(woke[0].reason, /1 call held with no instance ready/);
  assert.deepEqual(woke[0].details, { from: 0, to: 1 });

  // gRPC Execute on the same port
  await atZero(b, node.id);
  const def = protoLoader.loadSync('yandex/cloud/datasphere/v1/node_service.proto', { includeDirs: [PROTO_DIR], keepCase: true, oneofs: true, enums: String });
  const pkg: any = grpc.loadPackageDefinition(def);
  const client = new pkg.yandex.cloud.datasphere.v1.NodeService(new URL(b.url).host, grpc.credentials.createInsecure());
  try {
    const meta = new grpc.Metadata();
    meta.set('authorization', `Bearer ${b.token}`);
    const res: any = await new Promise((resolve, reject) => client.Execute(
      { folder_id: 'default', node_id: node.id, input: { fields: { mode: { stringValue: 'echo' }, arg: { stringValue: 'grpc' } } } },
      meta, { deadline: Date.now() + 60_000 }, (err: Error | null, r: unknown) => (err ? reject(err) : resolve(r))));
    assert.deepEqual(structToJson(res.output), { result: 'grpc' });
  } finally {
    client.close();
  }

  // through an alias
  await atZero(b, node.id);
  assert.equal((await b.request('POST', '/v1/aliases', { name: 'zero-alias', backends: [{ nodeId: node.id, weight: 1 }] })).status, 201);
  const viaAlias = await b.request('POST', '/datasphere/v1/aliases/zero-alias:execute', { folder_id: 'default', input: { mode: 'echo', arg: 'alias' } });
  assert.equal(viaAlias.status, 200, JSON.stringify(viaAlias.body));
  assert.deepEqual(viaAlias.body.output, { result: 'alias' });
  assert.equal((await b.request('DELETE', '/v1/aliases/zero-alias')).status, 200);
  await b.request('DELETE', `/v1/nodes/${node.id}`);
  console.log(`# first call at zero answered in ${first} ms`);
});

test('many calls at zero start as many instances as their sessions need, and all are served', async () => {
  const node = await createNode(b, ZERO('zero-many', { maxInstances: 4, scaleDownDelaySeconds: 2 }));
  await atZero(b, node.id);
  const results = await Promise.all(Array.from({ length: 8 }, (_, i) => execute(b, node.id, { mode: 'sleep', arg: 0.5 }).then((r) => ({ i, status: r.status, body: r.body }))));
  assert.deepEqual(results.map((r) => r.status), Array(8).fill(200), JSON.stringify(results.find((r) => r.status !== 200)));
  const events = await eventsOf(b, node.id);
  const ups = events.filter((e) => e.type === 'wake' || e.type === 'scale-up');
  assert.ok(ups.some((e) => e.type === 'wake'), JSON.stringify(events));
  assert.equal(Math.max(...ups.map((e) => e.details.to)), 4, `woke to maxInstances: ${JSON.stringify(ups)}`);
  assert.ok(ups.length <= 4, 'at most one decision per added instance');
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});

test('an instance that fails to start while calls are held: another attempt, no call lost', async () => {
  // fork: false — every instance is a fresh interpreter, so the flaky start applies to each (a forked one would not start Python again)
  const node = await createNode(b, ZERO('zero-flaky', { maxInstances: 1, queueSize: 3, fork: false }, { environment: { python: FLAKY_PYTHON } }));
  await atZero(b, node.id);
  rmSync(FLAKY_OK);
  try {
    const held = [1, 2, 3].map((i) => execute(b, node.id, { mode: 'echo', arg: i }));
    // past queueSize (3), a call is refused at once, with Retry-After
    await waitFor('3 calls queued', async () => (await nodeOf(b, node.id)).queued === 3, 10_000, 20);
    const over = await execute(b, node.id, { mode: 'echo', arg: 4 });
    assert.equal(over.status, 503);
    assert.equal(over.body.code, 'NODE_UNAVAILABLE');
    assert.ok(over.headers.get('retry-after'));
    const failed = await waitFor('a failed start recorded', async () => (await eventsOf(b, node.id)).find((e) => e.type === 'start-failed'), 20_000);
    assert.match(failed.reason, /failed to start/);
    const sick = await nodeOf(b, node.id);
    assert.equal(sick.status, 'Unhealthy', 'Unhealthy while the instance it woke fails to start');
    writeFileSync(FLAKY_OK, '');
    const done = await Promise.all(held);
    assert.deepEqual(done.map((r) => r.status), [200, 200, 200], JSON.stringify(done.map((r) => r.body)));
    assert.deepEqual(done.map((r) => r.body.output.result), [1, 2, 3]);
    assert.equal((await nodeOf(b, node.id)).status, 'Healthy');
  } finally {
    writeFileSync(FLAKY_OK, '');
  }
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});

test('past holdTimeout a held call gets 503 NODE_UNAVAILABLE with Retry-After and the reason', async () => {
  const node = await createNode(b, ZERO('zero-timeout', { maxInstances: 1, holdTimeout: 2, fork: false }, { environment: { python: FLAKY_PYTHON } }));
  await atZero(b, node.id);
  rmSync(FLAKY_OK);
  try {
    const started = Date.now();
    const r = await execute(b, node.id, { mode: 'echo', arg: 1 });
    const took = Date.now() - started;
    assert.equal(r.status, 503, JSON.stringify(r.body));
    assert.equal(r.body.code, 'NODE_UNAVAILABLE');
    assert.ok(r.headers.get('retry-after'), 'Retry-After is set');
    assert.match(r.body.message, /scaled to zero and no instance became ready within the hold of 2s/);
    assert.match(r.body.details.reason, /the last start failed: .*(exited|killed)/);
    assert.equal(r.body.details.holdTimeoutSeconds, 2);
    assert.ok(took >= 1900 && took < 15_000, `held ${took} ms`);
  } finally {
    writeFileSync(FLAKY_OK, '');
  }
  // the node recovers: a later call is served (its instance retries with backoff, at most 30 s apart)
  await waitFor('a call served again', async () => (await execute(b, node.id, { mode: 'echo', arg: 2 })).status === 200, 40_000, 0);
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});

test('the autoscaler follows sustained load without flapping under a sawtooth; every decision is an event and a metric', async () => {
  const node = await createNode(b, { ...LAB_NODE, name: 'sawtooth', checkpointId: 'lab', scaling: { minInstances: 1, maxInstances: 4, scaleDownDelaySeconds: 4 } });
  const t0 = new Date().toISOString();
  // 4 callers for 2 s, then 1.5 s of nothing (less than the 4 s window), three times
  for (let cycle = 0; cycle < 3; cycle++) {
    const until = Date.now() + 2000;
    const rs = await runLoad(10_000, 4, 10_000, async () => (Date.now() < until ? (await execute(b, node.id, { mode: 'sleep', arg: 0.1 })).status : 200));
    assert.ok(rs.every((s) => s === 200), `statuses ${[...new Set(rs)]}`);
    await new Promise((r) => setTimeout(r, 1500));
  }
  const during = (await eventsOf(b, node.id)).filter((e) => e.at >= t0);
  const ups = during.filter((e) => e.type === 'scale-up');
  const downs = during.filter((e) => e.type === 'scale-down');
  assert.ok(ups.length >= 1 && ups.length <= 2, `scale-ups under the sawtooth: ${JSON.stringify(during)}`);
  assert.ok(ups.every((e) => e.details.to <= 4));
  assert.equal(downs.length, 0, `no scale-down inside the stabilisation window: ${JSON.stringify(during)}`);
  assert.match(ups[ups.length - 1].reason, /calls in flight for 80% of the last 1s/);
  // the load is gone: one decision down after the window, with its reason
  const down = await waitFor('scale-down after the window', async () => (await eventsOf(b, node.id)).find((e) => e.type === 'scale-down'), 20_000);
  assert.match(down.reason, /over the last 4s/);
  assert.equal(down.details.to, 1);
  const metrics = await fetch(`${b.url}/metrics`, { headers: { authorization: `Bearer ${b.token}` } }).then((r) => r.text());
  const count = (dir: string): number => Number(new RegExp(`node_scale_events_total\\{node_id="${node.id}",direction="${dir}"\\} (\\d+)`).exec(metrics)?.[1] ?? 0);
  const everything = JSON.stringify(await eventsOf(b, node.id));
  assert.equal(count('up'), ups.length, everything);
  assert.equal(count('down'), 1, everything);
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});

test('events API: paging, limits, viewer role; another folder and an executor see nothing', async () => {
  const node = await createNode(b, ZERO('zero-events'));
  await atZero(b, node.id);
  assert.equal((await execute(b, node.id, { mode: 'echo', arg: 1 })).status, 200);
  const all = await eventsOf(b, node.id);
  assert.ok(all.length >= 2);
  for (const e of all) {
    assert.deepEqual(Object.keys(e).sort(), ['at', 'details', 'id', 'nodeId', 'reason', 'type']);
    assert.match(e.type, /^[a-z]+(-[a-z]+)*$/);
    assert.ok(!Number.isNaN(Date.parse(e.at)));
  }
  assert.ok(all.every((e, i) => i === 0 || e.id < all[i - 1].id), 'newest first');
  const one = await eventsOf(b, node.id, '?limit=1');
  assert.deepEqual(one.map((e) => e.id), [all[0].id]);
  const older = await eventsOf(b, node.id, `?limit=1&before=${all[0].id}`);
  assert.deepEqual(older.map((e) => e.id), [all[1].id]);
  for (const [q, field] of [['?limit=0', 'limit'], ['?limit=abc', 'limit'], ['?limit=5000', 'limit'], ['?before=-1', 'before']]) {
    const r = await b.request('GET', `/v1/nodes/${node.id}/events${q}`);
    assert.equal(r.status, 400, q);
    assert.equal(r.body.details.field, field, q);
  }
  const mint = async (name: string, folder: string, role: string): Promise<string> =>
    (await b.request('POST', '/v1/tokens', { name, folders: [folder], role })).body.token;
  const viewer = await mint('ev-viewer', 'default', 'viewer');
  const other = await mint('ev-other', 'team-x', 'admin');
  const executor = await mint('ev-exec', 'default', 'executor');
  const as = (t: string) => ({ authorization: `Bearer ${t}` });
  const seen = await b.request('GET', `/v1/nodes/${node.id}/events`, undefined, as(viewer));
  assert.equal(seen.status, 200);
  assert.equal(seen.body.events.length, all.length);
  for (const t of [other, executor]) {
    const r = await b.request('GET', `/v1/nodes/${node.id}/events`, undefined, as(t));
    assert.equal(r.status, 404, 'indistinguishable from a missing node');
    assert.equal(r.body.code, 'NODE_NOT_FOUND');
  }
  assert.equal((await b.request('GET', `/v1/nodes/${node.id}/events`, undefined, { authorization: '' })).status, 401);
  const cli = b.cli('node', 'events', node.id);
  assert.equal(cli.status, 0, cli.stderr);
  assert.match(cli.stdout, /wake/);
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});

test('with two gateway workers, calls held in both wake the node and are served', async () => {
  const w = await startBerth(undefined, { BERTH_GATEWAY_WORKERS: '2' });
  try {
    await makeCheckpoint(w, 'lab', LAB_CELLS);
    const node = await createNode(w, ZERO('zero-workers', { maxInstances: 2 }));
    await atZero(w, node.id);
    // separate connections: the primary deals them to both workers
    const results = await Promise.all(Array.from({ length: 6 }, (_, i) =>
      fetch(`${w.url}/datasphere/v1/nodes/${node.id}:execute`, {
        method: 'POST', headers: { authorization: `Bearer ${w.token}`, 'content-type': 'application/json', connection: 'close' },
        body: JSON.stringify({ folder_id: 'default', input: { mode: 'sleep', arg: 0.2 } }),
      }).then(async (r) => ({ status: r.status, body: await r.text(), i }))));
    assert.deepEqual(results.map((r) => r.status), Array(6).fill(200), JSON.stringify(results.find((r) => r.status !== 200)));
    assert.ok((await eventsOf(w, node.id)).some((e) => e.type === 'wake'));
    await atZero(w, node.id);
  } finally {
    await w.stop();
    removeHome(w.home);
  }
});

test('image nodes on Docker scaled to zero: header-routed HTTP/1.1, HTTP/2 and gRPC calls are held and served', async (t) => {
  const problem = await dockerProblem();
  if (problem) {
    if (process.env.CI) throw new Error(`CI must have Docker: ${problem}`);
    t.skip(problem);
    return;
  }
  await buildTestImages(['http-echo', 'grpc-echo']);
  const d = await startBerth(undefined, { BERTH_RUNTIME: 'docker' });
  try {
    const zero = { minInstances: 0, maxInstances: 1, scaleDownDelaySeconds: 1 };
    const [node, grpcNode] = await Promise.all([
      createNode(d, { kind: 'image', name: 'zero-image', image: testImage('http-echo'), endpoint: { port: 8081, protocol: 'http2', timeout: 5 }, scaling: zero }),
      createNode(d, {
        kind: 'image', name: 'zero-grpc', image: testImage('grpc-echo'), scaling: zero,
        endpoint: { port: 50051, protocol: 'grpc', timeout: 5 }, healthcheck: { protocol: 'grpc', port: 50051, service: 'berth.test.Echo', interval: 0.5 },
      }),
    ]);
    await atZero(d, node.id);
    const h1 = await fetch(`${d.url}/held?via=h1`, { headers: { 'x-node-id': node.id, 'x-folder-id': 'default', authorization: `Bearer ${d.token}` } });
    assert.equal(h1.status, 200, await h1.clone().text());
    assert.match(await h1.text(), /"via":"h1"/);
    await atZero(d, node.id);
    const session = h2connect(d.url);
    try {
      const body = await new Promise<{ status: number; text: string }>((resolve, reject) => {
        const s = session.request({ ':method': 'GET', ':path': '/held?via=h2', 'x-node-id': node.id, 'x-folder-id': 'default', authorization: `Bearer ${d.token}` });
        let status = 0;
        let text = '';
        s.on('response', (h) => { status = Number(h[':status']); });
        s.on('data', (c) => { text += c; });
        s.on('end', () => resolve({ status, text }));
        s.on('error', reject);
        s.setTimeout(60_000, () => reject(new Error('h2 call timed out')));
      });
      assert.equal(body.status, 200, body.text);
      assert.match(body.text, /"via":"h2"/);
    } finally {
      session.close();
    }
    const types = (await eventsOf(d, node.id)).map((e) => e.type);
    assert.equal(types.filter((x) => x === 'wake').length, 2, JSON.stringify(types));

    // gRPC through the header-routed proxy (its own image node; the endpoint timeout is 5 s, the hold 60 s)
    await atZero(d, grpcNode.id);
    const Echo = (grpc.loadPackageDefinition(protoLoader.loadSync(ECHO_PROTO, { keepCase: true })) as any).berth.test.Echo;
    const client = new Echo(new URL(d.url).host, grpc.credentials.createInsecure());
    try {
      const m = new grpc.Metadata();
      m.set('x-node-id', grpcNode.id); m.set('x-folder-id', 'default'); m.set('authorization', `Bearer ${d.token}`);
      const r = await new Promise<any>((resolve, reject) => client.Echo({ text: 'held' }, m, { deadline: Date.now() + 60_000 }, (e: any, x: any) => (e ? reject(e) : resolve(x))));
      assert.equal(r.text, 'held');
    } finally {
      client.close();
    }
    assert.equal((await eventsOf(d, grpcNode.id))[0].type, 'wake');
  } finally {
    await d.stop();
    await removeContainersOfHome(d.home);
    removeHome(d.home);
  }
});
