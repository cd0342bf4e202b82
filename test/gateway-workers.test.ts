// `berth up --gateway-workers 2`: two gateway processes serve the one port, the primary keeps
// the controller. A real Berth on Docker with image nodes (the http-echo test image's /sleep
// answers how many /sleep calls it was running, itself included), real connections spread
// over both workers: snapshot propagation time, sessionsPerInstance held across the workers
// together, a node with fewer sessions than workers served from its home (HTTP/1.1, h2 and gRPC
// relayed there by the other worker: cluster/call-relay.ts), a worker killed under load (a home
// too), and SIGTERM draining every worker.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Agent, request } from 'node:http';
import { connect as h2connect, type ClientHttp2Session } from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { startBerth, removeHome, waitFor, createNode, homeOf, checkKilledHomeFailures, type Berth } from './helpers.js';
import { dockerProblem, removeContainersOfHome } from './docker-support.js';
import { buildTestImages, testImage, ECHO_PROTO } from './images/index.js';

let b: Berth;
let skip: string | null = null;

const ECHO = {
  kind: 'image', image: testImage('http-echo'),
  endpoint: { port: 8080, protocol: 'http', timeout: 10 },
  healthcheck: { protocol: 'http', path: '/healthz', port: 8080, interval: 0.5, timeout: 1, failsThreshold: 2, passesThreshold: 1 },
};

interface Answer { status: number; body: any }

/** One header-routed call on a keep-alive agent (its sockets are spread over the workers by the primary's round robin: cluster/distributor.ts). */
function call(agent: Agent, nodeId: string, path: string): Promise<Answer> {
  return get(agent, path, { 'x-node-id': nodeId });
}

/** A header-routed GET with the caller's folder and token, plus `route` (x-node-id, or x-node-alias and a sticky key). */
function get(agent: Agent, path: string, route: Record<string, string>, token = b.token, folder = 'default'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const u = new URL(b.url);
    const req = request({
      host: u.hostname, port: u.port, path, method: 'GET', agent,
      headers: { ...route, 'x-folder-id': folder, authorization: `Bearer ${token}` },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => { let body: unknown = text; try { body = JSON.parse(text); } catch { /* text */ } resolve({ status: res.statusCode ?? 0, body }); });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(20_000, () => req.destroy(new Error('call timed out')));
    req.end();
  });
}

async function gatewayStatus(): Promise<any> {
  const r = await b.request('GET', '/v1/gateway');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

before(async () => {
  skip = await dockerProblem();
  if (skip) {
    if (process.env.CI) throw new Error(`CI must have Docker: ${skip}`);
    return;
  }
  await buildTestImages(['http-echo', 'grpc-echo']);
  b = await startBerth(undefined, { BERTH_RUNTIME: 'docker', BERTH_GATEWAY_WORKERS: '2' });
});

after(async () => {
  if (!b) return;
  await b.stop();
  await removeContainersOfHome(b.home);
  removeHome(b.home);
});

test('two gateway workers serve the port; routing snapshots reach both within 50 ms', async (t) => {
  if (skip) return t.skip(skip);
  // GET /v1/gateway is for an admin of every folder: a folder's admin and no token are refused
  const folderAdmin = await b.request('POST', '/v1/tokens', { name: 'gw-folder-admin', roles: { 'team-gw': 'admin' } });
  assert.equal(folderAdmin.status, 201, JSON.stringify(folderAdmin.body));
  assert.equal((await b.request('GET', '/v1/gateway', undefined, { authorization: `Bearer ${folderAdmin.body.token}` })).status, 403);
  assert.equal((await b.request('GET', '/v1/gateway', undefined, { authorization: '' })).status, 401);
  const s = await gatewayStatus();
  assert.equal(s.mode, 'workers');
  assert.equal(s.workers.length, 2);
  const node = await createNode(b, { ...ECHO, name: 'propagation', scaling: { minInstances: 1, maxInstances: 1 } });
  // each suspend and resume is a new snapshot; the primary times it until both workers confirm it
  for (let i = 0; i < 10; i++) {
    const what = i % 2 === 0 ? 'suspend' : 'resume';
    assert.equal((await b.request('POST', `/v1/nodes/${node.id}:${what}`)).status, 200);
    await new Promise((r) => setTimeout(r, 60));
  }
  const after = await gatewayStatus();
  const p = after.propagationMs;
  t.diagnostic(`snapshot propagation over ${p.samples} changes: p50 ${p.p50} ms, max ${p.max} ms`);
  assert.ok(p.samples >= 10, `every change was confirmed by both workers (${p.samples})`);
  assert.ok(p.p50 < 50, `half the changes reach both workers within 50 ms (p50 ${p.p50} ms)`);
  // a shared, loaded 2-core machine can stall a process now and then: the bound is generous
  assert.ok(p.max < 250, `every change reaches both workers promptly (max ${p.max} ms)`);
  // and calls see it: the node was resumed last; suspended now, every connection on either worker is refused at once
  assert.equal((await b.request('POST', `/v1/nodes/${node.id}:suspend`)).status, 200);
  await new Promise((r) => setTimeout(r, 50));
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  try {
    const answers = await Promise.all(Array.from({ length: 16 }, () => call(agent, node.id, '/')));
    assert.deepEqual([...new Set(answers.map((a) => a.status))], [409], 'suspended on every worker');
  } finally {
    agent.destroy();
  }
  // the primary hands connections out round robin: both workers got some of those 8
  const handed = (await gatewayStatus()).connections;
  t.diagnostic(`connections handed to each worker: ${JSON.stringify(handed)}`);
  assert.equal(Object.keys(handed.handedOff).length, 2, JSON.stringify(handed));
  for (const n of Object.values(handed.handedOff) as number[]) assert.ok(n >= 4, `each worker got its share of the connections: ${JSON.stringify(handed)}`);
  assert.equal(handed.dropped, 0);
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('sessionsPerInstance holds across both workers together under load', async (t) => {
  if (skip) return t.skip(skip);
  const node = await createNode(b, { ...ECHO, name: 'sessions', scaling: { minInstances: 2, maxInstances: 2, sessionsPerInstance: 2, queueSize: 1000 } });
  await waitFor('two healthy instances', async () => (await b.request('GET', `/v1/nodes/${node.id}`)).body.instances.filter((i: any) => i.status === 'Healthy').length === 2);
  const agent = new Agent({ keepAlive: true, maxSockets: 16 });
  const answers: Answer[] = [];
  const deadline = Date.now() + 4000;
  try {
    // 16 connections (8 on each worker), each calling as fast as answers come, for 4 s
    await Promise.all(Array.from({ length: 16 }, async () => {
      while (Date.now() < deadline) answers.push(await call(agent, node.id, '/sleep?ms=20'));
    }));
  } finally {
    agent.destroy();
  }
  const failed = answers.filter((a) => a.status !== 200);
  assert.equal(failed.length, 0, `every call answered: ${JSON.stringify(failed.slice(0, 3))}`);
  assert.ok(answers.every((a) => typeof a.body.concurrent === 'number'),
    'the http-echo test image answers /sleep with `concurrent` (an image built from an older tree has the same tag: rebuild it)');
  const maxBy = new Map<string, number>();
  for (const a of answers) maxBy.set(a.body.instance, Math.max(maxBy.get(a.body.instance) ?? 0, a.body.concurrent));
  t.diagnostic(`${answers.length} calls; most running at once per instance: ${JSON.stringify(Object.fromEntries(maxBy))}`);
  assert.equal(maxBy.size, 2, 'both instances served');
  for (const [instance, max] of maxBy) assert.ok(max <= 2, `instance ${instance} ran ${max} calls at once, more than its 2 sessions`);
  // the sessions were used, not only bounded: 4 sessions of 20 ms calls for 4 s
  assert.ok(answers.length > 150, `the sessions were kept busy (${answers.length} calls)`);
  assert.ok([...maxBy.values()].some((m) => m === 2), 'an instance ran two calls at once');
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('sticky calls through an alias over both workers keep flowing (one session per instance, keys waiting in both)', async (t) => {
  if (skip) return t.skip(skip);
  // both workers wait for both instances' single session: before, they handed it to and fro
  // without either using it, and every sticky call waited for its timeout
  const node = await createNode(b, { ...ECHO, name: 'sticky-leases', scaling: { minInstances: 2, maxInstances: 2, sessionsPerInstance: 1, queueSize: 1000 } });
  await waitFor('two healthy instances', async () => (await b.request('GET', `/v1/nodes/${node.id}`)).body.instances.filter((i: any) => i.status === 'Healthy').length === 2);
  const alias = await b.request('POST', '/v1/aliases', { name: 'sticky-leases', backends: [{ nodeId: node.id, weight: 1 }], sticky: { header: 'x-user' } });
  assert.equal(alias.status, 201, JSON.stringify(alias.body));
  const agent = new Agent({ keepAlive: true, maxSockets: 20 });
  const byKey = new Map<string, Set<string>>();
  let ok = 0;
  const failed: string[] = [];
  const deadline = Date.now() + 4000;
  try {
    await Promise.all(Array.from({ length: 20 }, async (_, k) => {
      while (Date.now() < deadline) {
        const a = await get(agent, '/sleep?ms=5', { 'x-node-alias': 'sticky-leases', 'x-user': `user-${k}` });
        if (a.status !== 200) { failed.push(`${a.status} ${JSON.stringify(a.body).slice(0, 200)}`); continue; }
        ok++;
        if (!byKey.has(`user-${k}`)) byKey.set(`user-${k}`, new Set());
        byKey.get(`user-${k}`)!.add(a.body.instance);
      }
    }));
  } finally {
    agent.destroy();
  }
  t.diagnostic(`${ok} sticky calls in 4 s`);
  assert.deepEqual(failed, []);
  assert.ok(ok > 100, `sticky calls flowed (${ok} in 4 s)`);
  for (const [key, seen] of byKey) assert.equal(seen.size, 1, `${key} stayed on one instance: ${[...seen]}`);
  assert.equal((await b.request('DELETE', '/v1/aliases/sticky-leases')).status, 200);
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

/** An HTTP/2 exchange on `session`: status, body and trailers. */
function h2call(session: ClientHttp2Session, headers: Record<string, string>, body: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const s = session.request({ ':method': 'POST', ...headers });
    let status = 0;
    let text = '';
    s.on('response', (h) => { status = Number(h[':status']); });
    s.setEncoding('utf8');
    s.on('data', (c) => { text += c; });
    s.on('end', () => resolve({ status, body: text }));
    s.on('error', reject);
    s.end(body);
  });
}

test('an image node with one session is served from its home: the other worker relays HTTP/1.1, h2 and gRPC there', async (t) => {
  if (skip) return t.skip(skip);
  const http = await createNode(b, { ...ECHO, name: 'homed-http', scaling: { minInstances: 1, maxInstances: 1, queueSize: 1000 } });
  const h2 = await createNode(b, { ...ECHO, name: 'homed-h2', endpoint: { port: 8081, protocol: 'http2', timeout: 10 }, scaling: { minInstances: 1, maxInstances: 1, queueSize: 1000 } });
  const grpcNode = await createNode(b, {
    kind: 'image', image: testImage('grpc-echo'), name: 'homed-grpc', endpoint: { port: 50051, protocol: 'grpc' },
    healthcheck: { protocol: 'grpc', port: 50051, service: 'berth.test.Echo', interval: 0.5 }, scaling: { minInstances: 1, maxInstances: 1, queueSize: 1000 },
  });
  const { home, other } = await homeOf(b, http.id);
  await homeOf(b, h2.id);
  await homeOf(b, grpcNode.id);
  const sentBefore = other.relayed.sent + home.relayed.sent;

  // HTTP/1.1 under load from 8 connections (4 on each worker): one call at a time on the instance
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  const answers: Answer[] = [];
  const deadline = Date.now() + 3000;
  try {
    await Promise.all(Array.from({ length: 8 }, async () => {
      while (Date.now() < deadline) answers.push(await call(agent, http.id, '/sleep?ms=5'));
    }));
    // a viewer and another folder's token are refused on both workers, before anything is relayed
    const viewer = await b.request('POST', '/v1/tokens', { name: 'homed-viewer', roles: { default: 'viewer' } });
    const stranger = await b.request('POST', '/v1/tokens', { name: 'homed-stranger', roles: { elsewhere: 'admin' } });
    const refused = await Promise.all(Array.from({ length: 8 }, (_, i) => i % 2
      ? get(agent, '/sleep?ms=5', { 'x-node-id': http.id }, viewer.body.token)
      : get(agent, '/sleep?ms=5', { 'x-node-id': http.id }, stranger.body.token, 'elsewhere')));
    for (const [i, r] of refused.entries()) {
      if (i % 2) assert.equal(r.status, 403, `a viewer may not call: ${JSON.stringify(r.body)}`);
      else assert.ok(r.status === 403 || r.status === 404, `another folder is refused: ${r.status} ${JSON.stringify(r.body)}`);
    }
  } finally {
    agent.destroy();
  }
  const failed = answers.filter((a) => a.status !== 200);
  assert.deepEqual(failed.slice(0, 3), [], `every call answered (${failed.length} failed of ${answers.length})`);
  const most = Math.max(...answers.map((a) => a.body.concurrent));
  t.diagnostic(`HTTP/1.1: ${answers.length} calls in 3 s, most at once on the instance ${most}`);
  assert.equal(most, 1, 'one session in all: the instance never ran two calls at once');
  assert.ok(answers.length > 150, `calls flowed without waiting for a session to come round (${answers.length} in 3 s)`);

  // HTTP/2: four connections (two on each worker), each with its streams
  const sessions = Array.from({ length: 4 }, () => h2connect(b.url));
  try {
    const h2answers = await Promise.all(sessions.flatMap((session, k) => Array.from({ length: 10 }, (_, i) => h2call(session,
      { ':path': `/h2?n=${k * 10 + i}`, 'x-node-id': h2.id, 'x-folder-id': 'default', authorization: `Bearer ${b.token}` }, `body ${k * 10 + i}`))));
    h2answers.forEach((a, n) => {
      assert.equal(a.status, 200, a.body);
      const e = JSON.parse(a.body);
      assert.equal(e.httpVersion, '2.0');
      assert.equal(e.body, `body ${n}`, 'each answer is its own call\'s');
      assert.deepEqual(e.query, { n: String(n) });
    });
  } finally {
    for (const s of sessions) s.close();
  }

  // gRPC: two channels (one on each worker); unary, server streaming, trailers, a status
  const def = protoLoader.loadSync(ECHO_PROTO, { keepCase: true });
  const Echo = (grpc.loadPackageDefinition(def) as any).berth.test.Echo;
  const md = (): grpc.Metadata => {
    const m = new grpc.Metadata();
    m.set('x-node-id', grpcNode.id); m.set('x-folder-id', 'default'); m.set('authorization', `Bearer ${b.token}`);
    return m;
  };
  const clients = [0, 1].map((k) => new Echo(b.url.replace('http://', ''), grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1, 'berth.test.channel': k }));
  try {
    for (const client of clients) {
      const unary = await new Promise<any>((resolve, reject) => client.Echo({ text: 'hi' }, md(), (e: any, r: any) => (e ? reject(e) : resolve(r))));
      assert.equal(unary.text, 'hi');
      const m = md(); m.set('x-repeat', '3');
      const stream = client.Repeat({ text: 'again' }, m);
      const got: string[] = [];
      await new Promise<void>((resolve, reject) => { stream.on('data', (x: any) => got.push(x.text)); stream.on('end', resolve); stream.on('error', reject); });
      assert.deepEqual(got, ['again', 'again', 'again']);
      let trailers: grpc.Metadata | undefined;
      const collected = await new Promise<any>((resolve, reject) => {
        const c = client.Collect(md(), (e: any, r: any) => (e ? reject(e) : resolve(r)));
        c.on('status', (st: grpc.StatusObject) => { trailers = st.metadata; });
        for (const text of ['a', 'b']) c.write({ text });
        c.end();
      });
      assert.equal(collected.text, 'b');
      await waitFor('status', async () => trailers, 2000, 10);
      assert.equal(trailers!.get('x-count')[0], '2');
      const failedCall = await new Promise<any>((resolve) => client.Fail({ text: 'x' }, md(), (e: any) => resolve(e)));
      assert.equal(failedCall.code, grpc.status.NOT_FOUND);
      assert.equal(failedCall.details, 'no such thing');
    }
  } finally {
    for (const c of clients) c.close();
  }

  // the other worker's calls went to the home, and every call counted once in the node's metrics
  const s = await waitFor('relay counts reported', async () => {
    const g = await gatewayStatus();
    const h = g.workers.find((w: any) => w.pid === home.pid);
    const o = g.workers.find((w: any) => w.pid === other.pid);
    return h && o && o.relayed.sent + h.relayed.sent - sentBefore > 20 ? g : undefined;
  }, 5000);
  t.diagnostic(`relayed: ${JSON.stringify(s.workers.map((w: any) => ({ pid: w.pid, homeOf: w.homeOf, relayed: w.relayed })))}`);
  const metrics = String((await b.request('GET', '/metrics')).body);
  const counted = [...metrics.matchAll(new RegExp(`node_http_codes\\{[^}]*node_id="${http.id}"[^}]*code="200"[^}]*\\} (\\d+)`, 'g'))].reduce((n, m) => n + Number(m[1]), 0);
  assert.equal(counted, answers.length, `each call counted once in the node's metrics (${counted} vs ${answers.length})`);
  for (const n of [http, h2, grpcNode]) assert.equal((await b.request('DELETE', `/v1/nodes/${n.id}`)).status, 200);
});

test('an image node\'s home killed under load: only the calls running there fail, the node is served again', async (t) => {
  if (skip) return t.skip(skip);
  const node = await createNode(b, { ...ECHO, name: 'homed-kill', scaling: { minInstances: 1, maxInstances: 1, queueSize: 1000 } });
  const { home } = await homeOf(b, node.id);
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  let ok = 0; let okAfterKill = 0;
  const failures: Array<{ caller: number; what: string; at: number; tookMs: number }> = [];
  let killedAt = 0;
  const deadline = Date.now() + 5000;
  const load = Promise.all(Array.from({ length: 8 }, async (_, caller) => {
    while (Date.now() < deadline) {
      const started = Date.now();
      try {
        const a = await call(agent, node.id, '/sleep?ms=5');
        if (a.status === 200) { ok++; if (killedAt && Date.now() > killedAt + 200) okAfterKill++; } else failures.push({ caller, what: `HTTP ${a.status} ${JSON.stringify(a.body)}`, at: Date.now(), tookMs: Date.now() - started });
      } catch (err) { failures.push({ caller, what: (err as Error).message, at: Date.now(), tookMs: Date.now() - started }); }
    }
  }));
  await new Promise((r) => setTimeout(r, 1500));
  process.kill(home.pid, 'SIGKILL');
  killedAt = Date.now();
  await load;
  agent.destroy();
  t.diagnostic(`${ok} calls answered, ${okAfterKill} after the kill; failed: ${JSON.stringify(failures)}`);
  // each of the 8 callers had one call running on the home (its own connection there, or relayed
  // to it). None waits out its deadline: a call the survivor relayed as the home died used to
  // wait 11 s on a connection nobody read (test/gateway-relay.test.ts, "…just died…")
  checkKilledHomeFailures(failures, killedAt, 8,
    (f) => /ECONNRESET|socket hang up/.test(f.what), (f) => /^HTTP 502 .*BAD_GATEWAY/.test(f.what));
  assert.ok(okAfterKill > 20, `the node was served again after the kill (${okAfterKill} calls)`);
  await waitFor('a new worker', async () => {
    const s = await gatewayStatus();
    return s.workers.length === 2 && s.workers.every((w: any) => w.ready && w.pid !== home.pid) ? s : undefined;
  }, 15_000);
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('a gateway worker killed under load is replaced; only its running calls fail', async (t) => {
  if (skip) return t.skip(skip);
  const node = await createNode(b, { ...ECHO, name: 'killed', scaling: { minInstances: 1, maxInstances: 1, sessionsPerInstance: 8, queueSize: 1000 } });
  const before = await gatewayStatus();
  const victim = before.workers[0].pid as number;
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  let ok = 0; let okAfterKill = 0;
  const failures: string[] = [];
  let killedAt = 0;
  let slowest = 0;
  const deadline = Date.now() + 4000;
  const load = Promise.all(Array.from({ length: 8 }, async () => {
    while (Date.now() < deadline) {
      const started = Date.now();
      try {
        const a = await call(agent, node.id, '/sleep?ms=20');
        if (a.status === 200) { ok++; if (killedAt && Date.now() > killedAt + 200) okAfterKill++; } else failures.push(`HTTP ${a.status}`);
      } catch (err) { failures.push((err as Error).message); }
      slowest = Math.max(slowest, Date.now() - started);
    }
  }));
  await new Promise((r) => setTimeout(r, 1500));
  process.kill(victim, 'SIGKILL');
  killedAt = Date.now();
  await load;
  agent.destroy();
  t.diagnostic(`${ok} calls answered, ${okAfterKill} after the kill; slowest ${slowest} ms; failed: ${JSON.stringify(failures)}`);
  // no call hangs: a connection handed to the worker as it died goes to the live one (before,
  // Node's cluster round robin could lose it, and the call waited for the client's 20 s timeout)
  assert.ok(slowest < 5000, `every call ended (200 or a connection error) well within its timeout: the slowest took ${slowest} ms`);
  // at most the call running on each of the killed worker's connections fails: one per load
  // connection it held (round robin gives it about half of the 8, the test's other connections
  // shift the split); a retry opens a new connection, which only live workers accept
  assert.ok(failures.length <= 8, `only the killed worker's running calls failed: ${failures.length}`);
  assert.ok(failures.every((f) => /ECONNRESET|socket hang up/.test(f)), `the failures are the killed connections: ${JSON.stringify(failures)}`);
  assert.ok(okAfterKill > 20, `the other worker kept serving (${okAfterKill} calls after the kill)`);
  const replaced = await waitFor('a new worker', async () => {
    const s = await gatewayStatus();
    return s.workers.length === 2 && s.workers.every((w: any) => w.ready && w.pid !== victim) && s.restarts >= 1 ? s : undefined;
  }, 15_000);
  assert.ok(replaced.workers.every((w: any) => w.pid !== victim));
  t.diagnostic(`connections: ${JSON.stringify(replaced.connections)}`);
  // the new worker serves: calls on fresh connections (spread over both) all succeed
  const fresh = new Agent({ keepAlive: true, maxSockets: 4 });
  try {
    const answers = await Promise.all(Array.from({ length: 8 }, () => call(fresh, node.id, '/')));
    assert.deepEqual(answers.map((a) => a.status), Array(8).fill(200));
  } finally {
    fresh.destroy();
  }
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('SIGTERM lets the calls running on every worker finish, then stops', async (t) => {
  if (skip) return t.skip(skip);
  const node = await createNode(b, { ...ECHO, name: 'drain', scaling: { minInstances: 1, maxInstances: 1, sessionsPerInstance: 4 } });
  const agent = new Agent({ keepAlive: true, maxSockets: 4 });
  // four connections: two on each worker, each with a 1.5 s call running
  const running = Array.from({ length: 4 }, () => call(agent, node.id, '/sleep?ms=1500'));
  await new Promise((r) => setTimeout(r, 400));
  const stopped = b.stop('SIGTERM');
  const answers = await Promise.all(running);
  agent.destroy();
  assert.deepEqual(answers.map((a) => a.status), [200, 200, 200, 200], 'every running call finished');
  assert.equal(await stopped, 0, 'berth up exited cleanly');
  await assert.rejects(fetch(b.url + '/v1/health'), 'nothing listens any more');
});
