// Authorization as an attacker would try it: roles per folder, resources that belong to a
// folder, cross-folder references, quotas, the audit log. Every refusal is checked to have
// changed nothing.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startBerth, removeHome, execute, tempHome, type Berth } from '../helpers.js';

let b: Berth;
const tokens: Record<string, string> = {};
const as = (who: string) => ({ authorization: `Bearer ${tokens[who]}` });
const ECHO = ['x = 0\n', 'y = x\n'];
const ECHO_NODE = { kind: 'cell', inputs: [{ name: 'x', type: 'any' }], outputs: [{ name: 'y', type: 'any' }] };
let nodeB: any;
let checkpointB: string;
const metricsPort = 20_000 + Math.floor(Math.random() * 20_000);

async function token(name: string, body: Record<string, unknown>): Promise<string> {
  const r = await b.request('POST', '/v1/tokens', { name, ...body });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.token;
}

before(async () => {
  b = await startBerth(tempHome(), { BERTH_METRICS_LISTEN: `127.0.0.1:${metricsPort}` });
  tokens.editorA = await token('editor-a', { folders: ['team-a'], role: 'editor' });
  tokens.editorB = await token('editor-b', { folders: ['team-b'], role: 'editor' });
  tokens.viewerB = await token('viewer-b', { folders: ['team-b'], role: 'viewer' });
  tokens.executorB = await token('executor-b', { folders: ['team-b'], role: 'executor' });
  tokens.adminB = await token('admin-b', { roles: { 'team-b': 'admin' } });
  // team-b owns a checkpoint with a secret in it, a node over it, and a secret
  const r = await b.request('POST', '/v1/checkpoints', { cells: ['API_KEY = "b-secret-key"\nx = 0\n', 'y = x\n'], name: 'b-model', folderId: 'team-b' }, as('editorB'));
  assert.equal(r.status, 201, JSON.stringify(r.body));
  checkpointB = r.body.id;
  const n = await b.request('POST', '/v1/nodes', { ...ECHO_NODE, name: 'b-node', folderId: 'team-b', checkpointId: 'b-model' }, as('editorB'));
  assert.equal(n.status, 201, JSON.stringify(n.body));
  nodeB = n.body;
  assert.equal((await b.request('POST', '/v1/secrets', { name: 'registry-pw', value: 'b-password', folderId: 'team-b' }, as('editorB'))).status, 201);
});

after(async () => {
  await b?.stop();
  if (b) removeHome(b.home);
});

const nodeCount = async (): Promise<number> => (await b.request('GET', '/v1/nodes')).body.nodes.length;

test('roles: a viewer reads but cannot change; an executor calls but cannot read; an editor cannot manage tokens', async () => {
  const before = await nodeCount();
  assert.equal((await b.request('GET', `/v1/nodes/${nodeB.id}`, undefined, as('viewerB'))).status, 200);
  const viewerCreate = await b.request('POST', '/v1/nodes', { ...ECHO_NODE, name: 'v-node', folderId: 'team-b', checkpointId: 'b-model' }, as('viewerB'));
  assert.equal(viewerCreate.status, 403);
  assert.equal(viewerCreate.body.code, 'PERMISSION_DENIED');
  assert.equal((await b.request('DELETE', `/v1/nodes/${nodeB.id}`, undefined, as('viewerB'))).status, 403);
  assert.equal((await execute(b, nodeB.id, { x: 1 }, 'team-b', `Bearer ${tokens.viewerB}`)).status, 403, 'a viewer may not call');

  await b.request('GET', `/v1/nodes/${nodeB.id}`); // admin: wait until it serves
  for (let i = 0; i < 100; i++) {
    if ((await b.request('GET', `/v1/nodes/${nodeB.id}`)).body.status === 'Healthy') break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const call = await execute(b, nodeB.id, { x: 5 }, 'team-b', `Bearer ${tokens.executorB}`);
  assert.equal(call.status, 200, JSON.stringify(call.body));
  assert.deepEqual(call.body.output, { y: 5 });
  assert.equal((await b.request('GET', `/v1/nodes/${nodeB.id}`, undefined, as('executorB'))).status, 404, 'an executor reads nothing');
  assert.equal((await b.request('POST', '/v1/secrets', { name: 'x-pw', value: 'v', folderId: 'team-b' }, as('executorB'))).status, 403);

  const mint = await b.request('POST', '/v1/tokens', { name: 'escalate', roles: { '*': 'admin' } }, as('editorB'));
  assert.equal(mint.status, 403);
  assert.equal((await b.request('GET', '/v1/tokens', undefined, as('adminB'))).status, 403, 'a folder admin does not manage tokens');
  assert.equal(await nodeCount(), before);
  const list = (await b.request('GET', '/v1/tokens')).body.tokens;
  assert.ok(!list.some((t: any) => t.name === 'escalate'));
});

test("another folder's resources are indistinguishable from missing ones", async () => {
  const hidden = await b.request('GET', `/v1/nodes/${nodeB.id}`, undefined, as('editorA'));
  const missing = await b.request('GET', '/v1/nodes/abcdefghij0123456789', undefined, as('editorA'));
  assert.equal(hidden.status, 404);
  assert.equal(missing.status, 404);
  assert.equal(hidden.body.code, missing.body.code);
  assert.deepEqual(Object.keys(hidden.body.details), Object.keys(missing.body.details));
  assert.equal((await b.request('GET', `/v1/nodes/b-node`, undefined, as('editorA'))).status, 404, 'by name too');
  assert.equal((await b.request('GET', `/v1/checkpoints/${checkpointB}`, undefined, as('editorA'))).status, 404);
  assert.equal((await b.request('DELETE', `/v1/checkpoints/${checkpointB}`, undefined, as('editorA'))).status, 404);
  assert.equal((await b.request('DELETE', `/v1/nodes/${nodeB.id}`, undefined, as('editorA'))).status, 404);
  assert.equal((await b.request('GET', '/v1/checkpoints', undefined, as('editorA'))).body.checkpoints.length, 0);
  assert.equal((await b.request('GET', '/v1/nodes', undefined, as('editorA'))).body.nodes.length, 0);
  // still there for its owner
  assert.equal((await b.request('GET', `/v1/nodes/${nodeB.id}`, undefined, as('editorB'))).status, 200);
  assert.equal((await b.request('GET', `/v1/checkpoints/${checkpointB}`, undefined, as('editorB'))).status, 200);
});

test("a node cannot use another folder's checkpoint (nor read its variables out)", async () => {
  const before = await nodeCount();
  for (const ref of [checkpointB, 'b-model']) {
    const r = await b.request('POST', '/v1/nodes', {
      kind: 'cell', name: 'steal', folderId: 'team-a', checkpointId: ref,
      inputs: [{ name: 'x', type: 'any' }], outputs: [{ name: 'API_KEY', type: 'str' }],
    }, as('editorA'));
    assert.equal(r.status, 404, JSON.stringify(r.body));
    assert.equal(r.body.code, 'CHECKPOINT_NOT_FOUND');
    assert.equal(r.body.details.field, 'checkpointId');
  }
  assert.equal(await nodeCount(), before);
  // names are per folder: team-a may have its own "b-model"
  assert.equal((await b.request('POST', '/v1/checkpoints', { cells: ECHO, name: 'b-model', folderId: 'team-a' }, as('editorA'))).status, 201);
});

test("an alias cannot route or mirror to another folder's node", async () => {
  const aliasesBefore = (await b.request('GET', '/v1/aliases')).body.aliases.length;
  const route = await b.request('POST', '/v1/aliases', { name: 'a-alias', folderId: 'team-a', backends: [{ nodeId: nodeB.id, weight: 1 }] }, as('editorA'));
  assert.equal(route.status, 404);
  assert.equal(route.body.code, 'NODE_NOT_FOUND');
  const own = await b.request('POST', '/v1/nodes', { ...ECHO_NODE, name: 'a-node', folderId: 'team-a', checkpointId: 'b-model' }, as('editorA'));
  assert.equal(own.status, 201, JSON.stringify(own.body));
  const mirror = await b.request('POST', '/v1/aliases', {
    name: 'a-alias', folderId: 'team-a', backends: [{ nodeId: own.body.id, weight: 1 }], mirror: { nodeId: nodeB.id, percent: 100 },
  }, as('editorA'));
  assert.equal(mirror.status, 404);
  assert.equal(mirror.body.details.field, 'mirror.nodeId');
  assert.equal((await b.request('GET', '/v1/aliases')).body.aliases.length, aliasesBefore);
  // and B's node stays B's to delete later (no alias holds it)
  assert.deepEqual((await b.request('GET', `/v1/nodes/${nodeB.id}`)).body.relatedAliases, []);
  assert.equal((await b.request('DELETE', `/v1/nodes/${own.body.id}`, undefined, as('editorA'))).status, 200);
});

test("secrets belong to a folder: not listed, deleted, overwritten or used from another", async () => {
  const listA = await b.request('GET', '/v1/secrets', undefined, as('editorA'));
  assert.equal(listA.status, 200);
  assert.equal(listA.body.secrets.length, 0);
  const del = await b.request('DELETE', '/v1/secrets/registry-pw?folderId=team-b', undefined, as('editorA'));
  assert.equal(del.status, 404);
  assert.equal((await b.request('DELETE', '/v1/secrets/registry-pw', undefined, as('editorA'))).status, 404);
  // same name in team-a is team-a's own secret; team-b's is untouched
  assert.equal((await b.request('POST', '/v1/secrets', { name: 'registry-pw', value: 'a-value', folderId: 'team-a' }, as('editorA'))).status, 201);
  const listB = (await b.request('GET', '/v1/secrets', undefined, as('editorB'))).body.secrets;
  assert.deepEqual(listB.map((s: any) => [s.name, s.folderId]), [['registry-pw', 'team-b']]);
  const dup = await b.request('POST', '/v1/secrets', { name: 'registry-pw', value: 'x', folderId: 'team-b' }, as('editorB'));
  assert.equal(dup.status, 409, 'names are unique per folder');
  // a node may name only its own folder's secrets
  const before = await nodeCount();
  assert.equal((await b.request('POST', '/v1/secrets', { name: 'only-in-b', value: 'v', folderId: 'team-b' }, as('editorB'))).status, 201);
  const n = await b.request('POST', '/v1/nodes', {
    ...ECHO_NODE, name: 'pw-user', folderId: 'team-a', checkpointId: 'b-model', environment: { python: '/usr/bin/python3', username: 'u', passwordSecret: 'only-in-b' },
  }, as('editorA'));
  assert.equal(n.status, 404, JSON.stringify(n.body));
  assert.equal(n.body.code, 'SECRET_NOT_FOUND');
  assert.equal(await nodeCount(), before);
});

test('/metrics needs a token that reads every folder; --metrics-listen serves it without one', async () => {
  assert.equal((await fetch(`${b.url}/metrics`)).status, 401);
  assert.equal((await fetch(`${b.url}/metrics`, { headers: as('editorB') })).status, 403);
  const ok = await fetch(`${b.url}/metrics`, { headers: { authorization: `Bearer ${b.token}` } });
  assert.equal(ok.status, 200);
  assert.match(await ok.text(), /node_requests/);
  const viewerAll = await token('monitoring', { folders: ['*'], role: 'viewer' });
  assert.equal((await fetch(`${b.url}/metrics`, { headers: { authorization: `Bearer ${viewerAll}` } })).status, 200);
  const side = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
  assert.equal(side.status, 200);
  assert.match(await side.text(), /node_requests/);
  assert.equal((await fetch(`http://127.0.0.1:${metricsPort}/v1/secrets`)).status, 404, 'the metrics listener serves nothing else');
});

test('a node or checkpoint run may name only an interpreter the admin allowed (Berth starts it as root)', async () => {
  const before = await nodeCount();
  const node = await b.request('POST', '/v1/nodes', { ...ECHO_NODE, name: 'sh-node', folderId: 'team-a', checkpointId: 'b-model', environment: { python: '/bin/sh' } }, as('editorA'));
  assert.equal(node.status, 400);
  assert.equal(node.body.details.field, 'environment.python');
  const run = await b.request('POST', '/v1/checkpoints', { cells: ECHO, name: 'sh-run', folderId: 'team-a', python: '/usr/bin/env' }, as('editorA'));
  assert.equal(run.status, 400);
  assert.equal(run.body.details.field, 'python');
  assert.equal(await nodeCount(), before);
  assert.ok(!(await b.request('GET', '/v1/checkpoints?folderId=team-a')).body.checkpoints.some((c: any) => c.name === 'sh-run'));
});

test('free-text fields are bounded', async () => {
  const before = await nodeCount();
  const long = await b.request('POST', '/v1/nodes', { ...ECHO_NODE, name: 'long', folderId: 'team-a', checkpointId: 'b-model', description: 'x'.repeat(5000) }, as('editorA'));
  assert.equal(long.status, 400);
  assert.equal(long.body.details.field, 'description');
  const tok = await b.request('POST', '/v1/tokens', { name: 'n'.repeat(500), folders: ['x'] });
  assert.equal(tok.status, 400);
  assert.equal(tok.body.details.field, 'name');
  const alias = await b.request('POST', '/v1/aliases', { name: 'al', backends: [{ nodeId: nodeB.id, weight: 1 }], folderId: 'team-b', description: 'd'.repeat(2000) }, as('editorB'));
  assert.equal(alias.status, 400);
  assert.equal(await nodeCount(), before);
});

test('quotas: set by an admin only, enforced with 429 QUOTA_EXCEEDED naming the quota, decided by the database under concurrency', async () => {
  const notAdmin = await b.request('PATCH', '/v1/folders/team-q/quota', { maxNodes: 100 }, as('adminB'));
  assert.equal(notAdmin.status, 403);
  const bad = await b.request('PATCH', '/v1/folders/team-q/quota', { maxNodes: -1 });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.details.field, 'maxNodes');
  const set = await b.request('PATCH', '/v1/folders/team-q/quota', { maxNodes: 3, maxInstances: 4 });
  assert.equal(set.status, 200, JSON.stringify(set.body));
  assert.equal(set.body.quota.maxNodes, 3);
  assert.equal(set.body.quota.maxCheckpointRuns, 2, 'unset fields keep their defaults');

  assert.equal((await b.request('POST', '/v1/checkpoints', { cells: ECHO, name: 'q-model', folderId: 'team-q' })).status, 201);
  const big = await b.request('POST', '/v1/nodes', { ...ECHO_NODE, name: 'q-big', folderId: 'team-q', checkpointId: 'q-model', scaling: { minInstances: 1, maxInstances: 5 } });
  assert.equal(big.status, 429);
  assert.equal(big.body.code, 'QUOTA_EXCEEDED');
  assert.equal(big.body.details.quota, 'maxInstances');
  // five creates at once against maxNodes 3 (and 4 instances): the database lets exactly 3 in
  const results = await Promise.all(Array.from({ length: 5 }, (_, i) =>
    b.request('POST', '/v1/nodes', { ...ECHO_NODE, name: `q-${i}`, folderId: 'team-q', checkpointId: 'q-model', scaling: { minInstances: 1, maxInstances: 1 } })));
  assert.equal(results.filter((r) => r.status === 201).length, 3);
  const refused = results.filter((r) => r.status === 429);
  assert.equal(refused.length, 2);
  assert.ok(refused.every((r) => r.body.details.quota === 'maxNodes'));
  const folder = await b.request('GET', '/v1/folders/team-q');
  assert.deepEqual([folder.body.usage.nodes, folder.body.usage.instances], [3, 3]);
  for (const r of results.filter((x) => x.status === 201)) assert.equal((await b.request('DELETE', `/v1/nodes/${r.body.id}`)).status, 200);

  // checkpoint bytes and upload size
  await b.request('PATCH', '/v1/folders/team-q/quota', { maxCheckpointBytes: 10, maxUploadBytes: 100_000 });
  const tooMuch = await b.request('POST', '/v1/checkpoints', { cells: ECHO, name: 'q-2', folderId: 'team-q' });
  assert.equal(tooMuch.status, 429);
  assert.equal(tooMuch.body.details.quota, 'maxCheckpointBytes');
  const upload = await fetch(`${b.url}/v1/checkpoints:upload?folderId=team-q`, {
    method: 'POST', headers: { authorization: `Bearer ${b.token}`, 'content-type': 'application/vnd.berth.checkpoint' },
    body: JSON.stringify({ code: 'y = x' }) + '\n' + 'z'.repeat(200_000),
  });
  assert.equal(upload.status, 429);
  assert.equal(((await upload.json()) as any).details.quota, 'maxUploadBytes');
  assert.equal((await b.request('GET', '/v1/checkpoints?folderId=team-q')).body.checkpoints.length, 1, 'nothing half-written');

  // concurrent checkpoint runs
  await b.request('PATCH', '/v1/folders/team-q/quota', { maxCheckpointBytes: 10 ** 9, maxCheckpointRuns: 1 });
  const runs = await Promise.all([0, 1].map((i) => b.request('POST', '/v1/checkpoints', { cells: ['import time\ntime.sleep(1.5)\nx = 1\n', 'y = x\n'], folderId: 'team-q', name: `slow-${i}` })));
  assert.deepEqual(runs.map((r) => r.status).sort(), [201, 429]);
  assert.equal(runs.find((r) => r.status === 429)!.body.details.quota, 'maxCheckpointRuns');
});

test('the audit log records every change with its token and result; folder admins see their folder only', async () => {
  const all = await b.request('GET', '/v1/audit?limit=1000');
  assert.equal(all.status, 200);
  const entries = all.body.entries as any[];
  const created = entries.find((e) => e.action === 'node.create' && e.resourceId === nodeB.id);
  assert.ok(created, 'node.create of b-node is recorded');
  assert.equal(created.tokenName, 'editor-b');
  assert.equal(created.folderId, 'team-b');
  assert.equal(created.result, 'ok');
  const refused = entries.find((e) => e.action === 'node.create' && e.tokenName === 'viewer-b');
  assert.ok(refused);
  assert.equal(refused.result, 'PERMISSION_DENIED');
  assert.ok(entries.some((e) => e.action === 'folder.set-quota' && e.folderId === 'team-q'));
  assert.ok(entries.some((e) => e.action === 'token.create' && e.result === 'PERMISSION_DENIED'), 'the escalation attempt is recorded');
  assert.ok(!entries.some((e) => e.action.startsWith('GET')), 'reads are not changes');

  const mine = await b.request('GET', '/v1/audit', undefined, as('adminB'));
  assert.equal(mine.status, 200);
  assert.ok(mine.body.entries.length > 0);
  assert.ok(mine.body.entries.every((e: any) => e.folderId === 'team-b'));
  assert.equal((await b.request('GET', '/v1/audit?folderId=team-a', undefined, as('adminB'))).status, 403);
  assert.equal((await b.request('GET', '/v1/audit', undefined, as('editorB'))).status, 403);

  const cli = b.cli('audit', '--json', '--limit', '5');
  assert.equal(cli.status, 0, cli.stderr);
  assert.equal(JSON.parse(cli.stdout).length, 5);
});

test('CLI: token create --folder --role, folder set-quota and get', async () => {
  const t = b.cli('token', 'create', '--folder', 'team-c', '--role', 'viewer', '--name', 'c-viewer', '--json');
  assert.equal(t.status, 0, t.stderr);
  assert.deepEqual(JSON.parse(t.stdout).roles, { 'team-c': 'viewer' });
  const bad = b.cli('token', 'create', '--folder', 'team-c', '--role', 'owner');
  assert.notEqual(bad.status, 0);
  const q = b.cli('folder', 'set-quota', 'team-c', '--max-instances', '8', '--max-nodes', '2');
  assert.equal(q.status, 0, q.stderr);
  assert.match(q.stdout, /maxInstances\s*│?\s*8/);
  const g = b.cli('folder', 'get', 'team-c', '--json');
  assert.equal(JSON.parse(g.stdout).quota.maxNodes, 2);
});

test('a restart keeps roles, folders of checkpoints and secrets, quotas and the audit log', async () => {
  await b.stop();
  const home = b.home;
  b = await startBerth(home);
  assert.equal((await b.request('GET', `/v1/nodes/${nodeB.id}`, undefined, as('viewerB'))).status, 200);
  assert.equal((await b.request('GET', `/v1/nodes/${nodeB.id}`, undefined, as('editorA'))).status, 404);
  assert.equal((await b.request('GET', '/v1/folders/team-q')).body.quota.maxNodes, 3);
  assert.ok((await b.request('GET', '/v1/audit')).body.entries.length > 10);
});
