// Several Berth servers on one PostgreSQL (src/peers/), on a cluster built by the test: a
// three-host Docker Swarm (test/cluster-support.ts; host 1 is the Swarm manager) with a real
// `berth up --runtime swarm` on host 2 and another on host 3, each in that host's network
// namespace, with its own home, sharing a fresh database. Both answer for the same nodes, whose
// instances spread over the three hosts; a change made on one takes effect on the other; the
// leader killed with SIGKILL under load: the other takes the lease within 5 s, adopts the
// running instances (none restarted) and its calls keep being served.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startBerth, removeHome, tempHome, waitFor, createNode, type Berth } from './helpers.js';
import { dockerProblem } from './docker-support.js';
import { SPREAD_ECHO, clusterProblem, startTestCluster, type TestCluster } from './cluster-support.js';
import { buildTestImages, testImage } from './images/index.js';
import { createTestDatabase, pgProblem, type TestDatabase } from './pg-support.js';

let a: Berth;
let b: Berth;
let db: TestDatabase;
let cluster: TestCluster | null = null;
let skip: string | null = null;
const homes = [tempHome(), tempHome()];
/** Calls to the cluster's addresses wait on detached daemons: keep the event loop alive meanwhile. */
let alive: NodeJS.Timeout | null = null;


before(async () => {
  skip = (await dockerProblem()) ?? clusterProblem() ?? (await pgProblem());
  if (skip) {
    if (process.env.CI) throw new Error(`CI must have Docker, network namespaces and PostgreSQL: ${skip}`);
    return;
  }
  alive = setInterval(() => undefined, 1000);
  await buildTestImages(['http-echo']);
  cluster = await startTestCluster({ hosts: 3 });
  await cluster.loadImages([testImage('http-echo')]);
  db = await createTestDatabase();
  const env = { BERTH_STORE: db.url, BERTH_RUNTIME: 'swarm', DOCKER_HOST: cluster.managerDockerHost };
  const on = (i: number): { prefix: string[]; args: string[] } => ({ prefix: ['nsenter', `--net=${cluster!.hosts[i]!.netns}`], args: ['--host', cluster!.hosts[i]!.addr] });
  a = await startBerth(homes[0], env, on(1));
  // joins after A: A leads; the same secret key, so secrets made on one are read on the other
  b = await startBerth(homes[1], { ...env, BERTH_SECRET_KEY_FILE: join(homes[0]!, 'secret.key') }, on(2));
  // B made its own admin token at start; the leader learns it through the bus (milliseconds)
  await waitFor('B\'s token valid on the leader', async () => (await b.request('GET', '/v1/whoami')).status === 200, 2000, 10);
});

after(async () => {
  try {
    await b?.stop().catch(() => undefined);
    await a?.stop().catch(() => undefined);
    await db?.drop().catch(() => undefined);
    for (const home of homes) removeHome(home);
  } finally {
    await cluster?.stop(); // its services go with the Swarm
    if (alive) clearInterval(alive);
  }
});

/** A header-routed call through one server's gateway. */
async function call(server: Berth, nodeId: string, path = '/'): Promise<number> {
  const r = await fetch(server.url + path, { headers: { 'x-node-id': nodeId, 'x-folder-id': 'default', authorization: `Bearer ${server.token}` }, signal: AbortSignal.timeout(10_000) });
  await r.arrayBuffer();
  return r.status;
}

async function servers(server: Berth): Promise<Array<{ id: string; url: string; leader: boolean }>> {
  const r = await server.request('GET', '/v1/servers');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.servers;
}

test('both servers answer for the same nodes; the first one up leads', async (t) => {
  if (skip) return t.skip(skip);
  const list = await servers(b); // relayed to the leader
  assert.equal(list.length, 2);
  assert.equal(list.find((s) => s.leader)?.url, a.url, 'A (up first) leads');
  // the same from the CLI, as a table and as JSON
  const table = b.cli('servers');
  assert.equal(table.status, 0, table.stderr);
  assert.match(table.stdout, new RegExp(`${a.url.replace(/[.]/g, '\\.')}\\s.*leader`));
  assert.match(table.stdout, /follower/);
  const json = b.cli('servers', '--json');
  assert.deepEqual(JSON.parse(json.stdout).map((x: { url: string; leader: boolean }) => [x.url, x.leader]).sort(), [[a.url, true], [b.url, false]].sort());
  // created through B: relayed to A's control API, which runs the controller
  const node = await createNode(b, { ...SPREAD_ECHO, name: 'both', scaling: { minInstances: 3, maxInstances: 3 } });
  const hosts = new Set(node.instances.map((i: { endpoint: string }) => /^tcp:([\d.]+):/.exec(i.endpoint)?.[1]));
  assert.equal(hosts.size, 3, `one instance per host: ${JSON.stringify(node.instances.map((i: { endpoint: string }) => i.endpoint))}`);
  // B's gateway learns the node from A's snapshot (LISTEN/NOTIFY)
  await waitFor('B routes the node', async () => (await call(b, node.id)) === 200, 5000, 20);
  assert.equal(await call(a, node.id), 200);
  for (let i = 0; i < 20; i++) assert.equal(await call(i % 2 ? a : b, node.id), 200);
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
  await waitFor('B forgets the node', async () => (await call(b, node.id)) === 404, 5000, 20);
});

test('a server whose secret key differs from the others\' is refused at start, saying what to do', async (t) => {
  if (skip) return t.skip(skip);
  const home = tempHome();
  try {
    await assert.rejects(startBerth(home, { BERTH_STORE: db.url, BERTH_RUNTIME: 'swarm', DOCKER_HOST: cluster!.managerDockerHost }), /secret key differs .* --secret-key-file/s);
  } finally {
    removeHome(home);
  }
});

test('a token made on one server works on the other; revoked, it is refused on both within a second', async (t) => {
  if (skip) return t.skip(skip);
  const made = await b.request('POST', '/v1/tokens', { name: 'shared', roles: { default: 'viewer' } });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  const token = made.body.token as string;
  const asIt = (s: Berth): Promise<number> => fetch(s.url + '/v1/nodes?folderId=default', { headers: { authorization: `Bearer ${token}` } }).then((r) => r.status);
  await waitFor('the token works on both', async () => (await asIt(a)) === 200 && (await asIt(b)) === 200, 2000, 20);
  // B's own admin token (made when B started) is valid on the leader too
  assert.equal((await b.request('GET', '/v1/nodes?folderId=default')).status, 200);
  // too small a role for the servers list, on either server (infrastructure: admin on "*" only)
  for (const server of [a, b]) assert.equal((await fetch(server.url + '/v1/servers', { headers: { authorization: `Bearer ${token}` } })).status, 403);
  const revokedAt = Date.now();
  assert.equal((await a.request('DELETE', `/v1/tokens/${made.body.id}`)).status, 200);
  await waitFor('refused on both', async () => (await asIt(a)) === 401 && (await asIt(b)) === 401, 1000, 10);
  t.diagnostic(`revocation effective on both servers after ${Date.now() - revokedAt} ms`);
});

test('the leader killed under load: the other takes over within 5 s, adopts the instances, calls keep flowing', async (t) => {
  if (skip) return t.skip(skip);
  const node = await createNode(a, { ...SPREAD_ECHO, name: 'failover', scaling: { minInstances: 3, maxInstances: 3, sessionsPerInstance: 16 } });
  await waitFor('B routes the node', async () => (await call(b, node.id)) === 200, 5000, 20);
  const before = (await a.request('GET', `/v1/nodes/${node.id}`)).body;
  const instances = before.instances.map((i: { id: string }) => i.id).sort();
  assert.equal(instances.length, 3);

  // bounded load through B: 4 callers for at most 12 s
  let ok = 0;
  const failures: string[] = [];
  let stop = false;
  const until = Date.now() + 12_000;
  const load = Promise.all(Array.from({ length: 4 }, async () => {
    while (!stop && Date.now() < until) {
      try {
        const status = await call(b, node.id, '/sleep?ms=10');
        if (status === 200) ok++; else failures.push(`HTTP ${status}`);
      } catch (err) { failures.push((err as Error).message); }
    }
  }));
  await new Promise((r) => setTimeout(r, 1000));
  const killedAt = Date.now();
  a.proc.kill('SIGKILL');
  const leads = await waitFor('B leads', async () => {
    const r = await b.request('GET', '/v1/servers').catch(() => null);
    return r?.status === 200 && r.body.servers.find((s: { leader: boolean; url: string }) => s.leader && s.url === b.url) ? Date.now() : undefined;
  }, 10_000, 50);
  t.diagnostic(`B answered as leader ${leads - killedAt} ms after A was killed`);
  assert.ok(leads - killedAt < 5000, `takeover within 5 s (${leads - killedAt} ms)`);
  await new Promise((r) => setTimeout(r, 2000));
  stop = true;
  await load;
  t.diagnostic(`${ok} calls through B, failed: ${JSON.stringify(failures)}`);
  assert.deepEqual(failures, [], 'no call through the surviving server failed');
  assert.ok(ok > 50, `calls flowed (${ok})`);

  // the same instances, adopted: none restarted
  const after = (await b.request('GET', `/v1/nodes/${node.id}`)).body;
  assert.equal(after.status, 'Healthy');
  assert.deepEqual(after.instances.map((i: { id: string }) => i.id).sort(), instances, 'the running instances were adopted, not replaced');
  // and the new leader's controller acts: a change through B is carried out
  const scaled = await b.request('PATCH', `/v1/nodes/${node.id}`, { scaling: { minInstances: 2, maxInstances: 2 } });
  assert.ok(scaled.status === 200 || scaled.status === 202, JSON.stringify(scaled.body));
  await waitFor('scaled to two', async () => {
    const n = (await b.request('GET', `/v1/nodes/${node.id}`)).body;
    return n.instances.filter((i: { status: string }) => i.status === 'Healthy').length === 2 && n.instances.length === 2;
  }, 30_000);
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});
