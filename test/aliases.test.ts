// Aliases over cell nodes: weighted spreading, atomic swaps under load, ACLs, sticky
// sessions, mirroring, and every bad input.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startBerth, removeHome, makeCheckpoint, createNode, waitFor, runLoad, type Berth } from './helpers.js';

let b: Berth;
let nodeA: any;
let nodeB: any;

const WHO = (who: string): string[] => [
  `import os\nwho = ${JSON.stringify(who)}\ncalls = 0\nx = None\n`,
  'calls += 1\nresult = {"who": who, "pid": os.getpid(), "calls": calls}\n',
];
const WHO_NODE = { inputs: [{ name: 'x', type: 'any' }], outputs: [{ name: 'result', type: 'dict' }] };

before(async () => {
  b = await startBerth(undefined, { BERTH_ALLOWED_PYTHONS: '/bin/false' }); // one node is made never to become Healthy
  await makeCheckpoint(b, 'who-a', WHO('A'));
  await makeCheckpoint(b, 'who-b', WHO('B'));
  [nodeA, nodeB] = await Promise.all([
    createNode(b, { ...WHO_NODE, name: 'node-a', checkpointId: 'who-a', scaling: { minInstances: 2, maxInstances: 2 } }),
    createNode(b, { ...WHO_NODE, name: 'node-b', checkpointId: 'who-b', scaling: { minInstances: 2, maxInstances: 2 } }),
  ]);
});

after(async () => {
  await b.stop();
  removeHome(b.home);
});

const callAlias = (name: string, headers: Record<string, string> = {}, folder = 'default'): Promise<{ status: number; body: any }> =>
  b.request('POST', `/datasphere/v1/aliases/${name}:execute`, { folder_id: folder, input: { x: 1 } }, headers);

test('create, get, list; nodes list the aliases that use them; a used node cannot be deleted', async () => {
  const r = await b.request('POST', '/v1/aliases', { name: 'datasphere.user.who', backends: [{ nodeId: nodeA.id, weight: 1 }] });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  assert.equal(r.body.executionAcl.folders[0], 'default');
  assert.deepEqual((await b.request('GET', `/v1/nodes/${nodeA.id}`)).body.relatedAliases, ['datasphere.user.who']);
  const del = await b.request('DELETE', `/v1/nodes/${nodeA.id}`);
  assert.equal(del.status, 409);
  assert.equal(del.body.code, 'NODE_IN_USE');
  assert.match(del.body.message, /datasphere\.user\.who/);
  assert.equal((await callAlias('datasphere.user.who')).body.output.result.who, 'A');
  const cli = b.cli('alias', 'get', 'datasphere.user.who');
  assert.match(cli.stdout, /WEIGHT/);
  assert.equal((await b.request('DELETE', '/v1/aliases/datasphere.user.who')).status, 200);
  assert.equal((await callAlias('datasphere.user.who')).body.code, 'ALIAS_NOT_FOUND');
});

test('bad aliases get a clear error naming the field and change nothing', async () => {
  await b.request('POST', '/v1/aliases', { name: 'taken', backends: [{ nodeId: nodeA.id, weight: 1 }] });
  const before = (await b.request('GET', '/v1/aliases')).body.aliases.length;
  const cases: Array<[unknown, string, string]> = [
    [{ name: 'w0', backends: [{ nodeId: nodeA.id, weight: 0 }] }, 'INVALID_ARGUMENT', 'backends[0].weight'],
    [{ name: 'wneg', backends: [{ nodeId: nodeA.id, weight: -5 }] }, 'INVALID_ARGUMENT', 'backends[0].weight'],
    [{ name: 'wstr', backends: [{ nodeId: nodeA.id, weight: 'ten' }] }, 'INVALID_ARGUMENT', 'backends[0].weight'],
    [{ name: 'none', backends: [] }, 'INVALID_ARGUMENT', 'backends'],
    [{ name: 'missing' }, 'INVALID_ARGUMENT', 'backends'],
    [{ name: 'ghost', backends: [{ nodeId: 'nosuchnode', weight: 1 }] }, 'NODE_NOT_FOUND', 'backends[0].nodeId'],
    [{ name: 'twice', backends: [{ nodeId: nodeA.id, weight: 1 }, { nodeId: nodeA.id, weight: 1 }] }, 'INVALID_ARGUMENT', 'backends[1].nodeId'],
    [{ name: 'taken', backends: [{ nodeId: nodeB.id, weight: 1 }] }, 'NAME_TAKEN', 'name'],
    [{ name: 'x', backends: [{ nodeId: nodeA.id, weight: 1 }] }, 'INVALID_ARGUMENT', 'name'],
    [{ name: 'a'.repeat(80), backends: [{ nodeId: nodeA.id, weight: 1 }] }, 'INVALID_ARGUMENT', 'name'],
    [{ name: 'hdr', backends: [{ nodeId: nodeA.id, weight: 1 }], proxyMetadata: { headers: [{ name: 'Authorization', value: 'x' }] } }, 'INVALID_ARGUMENT', 'proxyMetadata.headers[0].name'],
    [{ name: 'acl', backends: [{ nodeId: nodeA.id, weight: 1 }], executionAcl: { isPublic: 'yes' } }, 'INVALID_ARGUMENT', 'executionAcl.isPublic'],
  ];
  for (const [spec, code, field] of cases) {
    const r = await b.request('POST', '/v1/aliases', spec);
    assert.equal(r.body.code, code, `${field}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.details.field, field, JSON.stringify(r.body));
  }
  const patch = await b.request('PATCH', '/v1/aliases/taken', { backends: [{ nodeId: nodeB.id, weight: 0 }] });
  assert.equal(patch.body.details.field, 'backends[0].weight');
  assert.equal((await callAlias('taken')).body.output.result.who, 'A', 'a refused update changes nothing');
  assert.equal((await b.request('GET', '/v1/aliases')).body.aliases.length, before);
});

// The exact split (and windows, stickiness, unhealthy backends) is unit-tested in
// test/unit/alias-table.test.ts; this is the one end-to-end check that real calls follow it.
test('calls spread by weight: 1,000 calls at 90/10 land within ±1 point, all counted', async () => {
  await b.request('POST', '/v1/aliases', { name: 'split', backends: [{ nodeId: nodeA.id, weight: 90 }, { nodeId: nodeB.id, weight: 10 }] });
  const nodeRequests = async (): Promise<Record<string, number>> => {
    const text = await fetch(`${b.url}/metrics`, { headers: { authorization: `Bearer ${b.token}` } }).then((r) => r.text());
    const get = (id: string): number => Number(new RegExp(`node_requests\\{node_id="${id}"\\} (\\d+)`).exec(text)?.[1] ?? 0);
    return { A: get(nodeA.id), B: get(nodeB.id) };
  };
  const nodesBefore = await nodeRequests();
  const counts = { A: 0, B: 0 } as Record<string, number>;
  const results = await runLoad(1_000, 8, 60_000, async () => {
    const r = await callAlias('split');
    if (r.status === 200) counts[r.body.output.result.who]!++;
    return r.status;
  });
  assert.equal(results.filter((s) => s !== 200).length, 0);
  const shareA = counts.A! / (counts.A! + counts.B!);
  assert.ok(Math.abs(shareA - 0.9) <= 0.01, `A got ${(shareA * 100).toFixed(2)}%`);
  const m = await fetch(`${b.url}/metrics`, { headers: { authorization: `Bearer ${b.token}` } }).then((r) => r.text());
  assert.match(m, /alias_requests\{alias_name="split"\} 1000\n/);
  assert.match(m, /alias_http_codes\{alias_name="split",code="200"\} 1000\n/);
  assert.match(m, /alias_request_durations_count\{alias_name="split"\} 1000\n/);
  // calls through the alias count on the node that served each too
  const nodesAfter = await nodeRequests();
  assert.equal(nodesAfter.A! - nodesBefore.A!, counts.A);
  assert.equal(nodesAfter.B! - nodesBefore.B!, counts.B);
});

test('the CLI moves weight with one command', async () => {
  const r = b.cli('alias', 'shift', 'split', 'node-b', '25', '--json');
  assert.equal(r.status, 0, r.stderr);
  const a = JSON.parse(r.stdout);
  const weights = Object.fromEntries(a.backends.map((x: any) => [x.nodeId, x.weight]));
  assert.equal(weights[nodeB.id], 250);
  assert.equal(weights[nodeA.id], 750);
});

test('a backend node with no healthy instance gets no calls', async () => {
  const broken = await createNode(b, { ...WHO_NODE, name: 'never-healthy', checkpointId: 'who-b', environment: { python: '/bin/false' } }, false);
  await b.request('POST', '/v1/aliases', { name: 'half-broken', backends: [{ nodeId: nodeA.id, weight: 1 }, { nodeId: broken.id, weight: 99 }] });
  const whos = await runLoad(50, 4, 20_000, async () => (await callAlias('half-broken')).body.output?.result.who);
  assert.deepEqual([...new Set(whos)], ['A']);
});

test('swapping an alias between two nodes five times under load fails no call', async () => {
  await b.request('POST', '/v1/aliases', { name: 'swap', backends: [{ nodeId: nodeA.id, weight: 1 }] });
  const seen = new Set<string>();
  let stop = false;
  const failures: unknown[] = [];
  let calls = 0;
  const load = runLoad(1_000_000, 6, 30_000, async () => {
    if (stop) return;
    const r = await callAlias('swap');
    calls++;
    if (r.status !== 200) failures.push(r.body);
    else seen.add(r.body.output.result.who);
  });
  for (let i = 0; i < 5; i++) {
    await new Promise((r) => setTimeout(r, 300));
    assert.equal((await b.request('PATCH', '/v1/aliases/swap', { backends: [{ nodeId: nodeB.id, weight: 1 }] })).status, 200);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal((await b.request('PATCH', '/v1/aliases/swap', { backends: [{ nodeId: nodeA.id, weight: 1 }] })).status, 200);
  }
  await new Promise((r) => setTimeout(r, 200));
  stop = true;
  await load;
  assert.deepEqual(failures, []);
  assert.ok(calls > 100, `${calls} calls`);
  assert.deepEqual([...seen].sort(), ['A', 'B']);
});

test('the alias ACL decides who calls: folders, public aliases', async () => {
  const other = await b.request('POST', '/v1/tokens', { name: 'team-c', folders: ['team-c'] });
  const tokenC = `Bearer ${other.body.token}`;
  await b.request('POST', '/v1/aliases', { name: 'private', backends: [{ nodeId: nodeA.id, weight: 1 }] });
  const denied = await callAlias('private', { authorization: tokenC }, 'team-c');
  assert.equal(denied.status, 403);
  assert.equal(denied.body.code, 'PERMISSION_DENIED');
  await b.request('POST', '/v1/aliases', { name: 'shared', backends: [{ nodeId: nodeA.id, weight: 1 }], executionAcl: { folders: ['team-c'] } });
  assert.equal((await callAlias('shared', { authorization: tokenC }, 'team-c')).status, 200, 'the alias ACL, not the node ACL, applies');
  await b.request('POST', '/v1/aliases', { name: 'open', backends: [{ nodeId: nodeA.id, weight: 1 }], executionAcl: { isPublic: true } });
  assert.equal((await callAlias('open', { authorization: tokenC }, 'team-c')).status, 200);
  assert.equal((await callAlias('open', { authorization: 'Bearer nope' }, 'team-c')).status, 401, 'public still needs a valid token');
  assert.equal((await callAlias('open', { authorization: tokenC }, 'default')).status, 403, 'the token must hold the folder it names');
});

test('sticky sessions: the same key reaches the same node and instance', async () => {
  await b.request('POST', '/v1/aliases', { name: 'sticky', backends: [{ nodeId: nodeA.id, weight: 1 }, { nodeId: nodeB.id, weight: 1 }], sticky: { header: 'x-session-id' } });
  const places = new Set<string>();
  // 20 keys: all landing on one of two equal nodes by chance is 2 in a million
  for (const key of Array.from({ length: 20 }, (_, i) => `session-${i}`)) {
    const seen = new Set<string>();
    let last = -1;
    for (let i = 0; i < 3; i++) {
      const r = (await callAlias('sticky', { 'x-session-id': key })).body.output.result;
      seen.add(`${r.who}/${r.pid}`);
      if (last >= 0) assert.equal(r.calls, last + 1, 'the same interpreter every time');
      last = r.calls;
    }
    assert.equal(seen.size, 1, `${key}: ${[...seen]}`);
    places.add([...seen][0]!);
  }
  assert.ok(places.size >= 2, `different keys spread over nodes and instances: ${[...places]}`);
});

test('mirroring: a share of calls also goes to a shadow node; differences are counted', async () => {
  await b.request('POST', '/v1/aliases', { name: 'mirrored', backends: [{ nodeId: nodeA.id, weight: 1 }], mirror: { nodeId: nodeB.id, percent: 50 } });
  for (let i = 0; i < 40; i++) assert.equal((await callAlias('mirrored')).body.output.result.who, 'A', 'callers get the primary answer');
  // a share the shadow is still busy for is skipped, never queued behind real traffic: under
  // load some of the 20 may be; each one is either compared or skipped
  const status = await waitFor('every mirrored share compared or skipped', async () => {
    const a = (await b.request('GET', '/v1/aliases/mirrored')).body;
    const mm = a.status.mirror;
    return mm.sent + mm.skipped === 20 && mm.compared + mm.shadowErrors === mm.sent ? mm : undefined;
  }, 10_000);
  assert.ok(status.compared >= 1, JSON.stringify(status));
  assert.equal(status.differing, status.compared, 'node B answers differently');
  assert.ok(status.primaryP50Ms > 0 && status.shadowP50Ms > 0);
  const m = await fetch(`${b.url}/metrics`, { headers: { authorization: `Bearer ${b.token}` } }).then((r) => r.text());
  assert.match(m, new RegExp(`alias_mirror_differing\\{alias_name="mirrored"\\} ${status.differing}\n`));
  assert.match(m, new RegExp(`alias_mirror_durations_count\\{alias_name="mirrored",role="shadow"\\} ${status.compared}\n`));
  // a shadow that answers exactly alike shows no differences
  await makeCheckpoint(b, 'const-1', ['x = None\n', 'result = {"v": 1}\n']);
  await makeCheckpoint(b, 'const-2', ['x = None\n', 'result = {"v": 1}\n']);
  const c1 = await createNode(b, { ...WHO_NODE, name: 'const-1', checkpointId: 'const-1' });
  const c2 = await createNode(b, { ...WHO_NODE, name: 'const-2', checkpointId: 'const-2' });
  await b.request('POST', '/v1/aliases', { name: 'alike', backends: [{ nodeId: c1.id, weight: 1 }], mirror: { nodeId: c2.id, percent: 100 } });
  for (let i = 0; i < 10; i++) await callAlias('alike');
  const alike = await waitFor('compared', async () => {
    const mm = (await b.request('GET', '/v1/aliases/alike')).body.status.mirror;
    return mm.sent + mm.skipped === 10 && mm.compared + mm.shadowErrors === mm.sent ? mm : undefined;
  }, 10_000);
  assert.ok(alike.compared >= 1, JSON.stringify(alike));
  assert.equal(alike.differing, 0);
});

test('aliases survive a restart of berth up', async () => {
  const names = (await b.request('GET', '/v1/aliases')).body.aliases.map((a: any) => a.name).sort();
  await b.stop();
  b = await startBerth(b.home, { BERTH_ALLOWED_PYTHONS: '/bin/false' });
  assert.deepEqual((await b.request('GET', '/v1/aliases')).body.aliases.map((a: any) => a.name).sort(), names);
  const r = await waitFor('alias answers', async () => {
    const x = await callAlias('split');
    return x.status === 200 ? x : undefined;
  }, 30_000);
  assert.ok(['A', 'B'].includes(r.body.output.result.who));
});
