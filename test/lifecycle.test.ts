// Node lifecycle (issue 9): instances that always heal (a hung cell worker, a paused
// container, a node that never becomes Healthy answers 503 at once with the reason),
// suspend/resume, and in-place updates of scaling, description and ACL. Real `berth up`,
// real Python workers, real Docker for the container part (skipped without a daemon, failed in CI).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { startBerth, removeHome, makeCheckpoint, createNode, execute, waitFor, runLoad, type Berth } from './helpers.js';
import { dockerProblem, removeContainersOfHome } from './docker-support.js';
import { buildTestImages, testImage } from './images/index.js';
import { LAB_CELLS, LAB_NODE } from './fixtures.js';

let b: Berth;

/** Health checks fast enough that a hang is seen within a second or two. */
const FAST_HC = { interval: 0.2, timeout: 0.5, failsThreshold: 2, passesThreshold: 1 };

before(async () => {
  b = await startBerth();
  await makeCheckpoint(b, 'lab', LAB_CELLS);
});

after(async () => {
  await b.stop();
  removeHome(b.home);
});

const nodeOf = async (id: string): Promise<any> => (await b.request('GET', `/v1/nodes/${id}`)).body;
const alive = (pid: number): boolean => { try { process.kill(pid, 0); return true; } catch { return false; } };

/** An instance's pid is its sandbox's (bwrap); the worker runs below it: signal the whole tree. */
function signalTree(pid: number, signal: NodeJS.Signals): void {
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) {
    for (const task of safeList(`/proc/${tree[i]}/task`)) {
      const kids = safeRead(`/proc/${tree[i]}/task/${task}/children`).trim();
      if (kids) tree.push(...kids.split(/\s+/).map(Number));
    }
  }
  for (const p of tree) { try { process.kill(p, signal); } catch { /* gone */ } }
}
function safeList(dir: string): string[] { try { return readdirSync(dir); } catch { return []; } }
function safeRead(file: string): string { try { return readFileSync(file, 'utf8'); } catch { return ''; } }

test('a checkpoint that cannot restore: node Unhealthy with the reason, calls get 503 at once', async () => {
  // unpickling this object raises: the checkpoint is written, its restore always fails
  const cells = [
    'class Bomb:\n    def __reduce__(self):\n        return (exec, ("raise RuntimeError(\'restore fails on purpose\')",))\nbomb = Bomb()\narg = None\n',
    'result = arg\n',
  ];
  await makeCheckpoint(b, 'bomb', cells);
  const node = await createNode(b, { ...LAB_NODE, name: 'bomb', checkpointId: 'bomb' }, false);
  const n = await waitFor('node Unhealthy', async () => {
    const x = await nodeOf(node.id);
    return x.status === 'Unhealthy' ? x : undefined;
  }, 30_000);
  assert.match(n.instances[0].lastError, /restore fails on purpose/);
  const t = n.transitions.at(-1);
  assert.equal(t.status, 'Unhealthy');
  assert.match(t.reason, /restore fails on purpose/);

  const started = Date.now();
  const r = await execute(b, node.id, { mode: 'echo', arg: 1 });
  const tookMs = Date.now() - started;
  assert.equal(r.status, 503, JSON.stringify(r.body));
  assert.equal(r.body.code, 'NODE_UNAVAILABLE');
  assert.match(r.body.message, /restore fails on purpose/);
  assert.ok(r.headers.get('retry-after'), 'Retry-After is set');
  assert.ok(tookMs < 3000, `refused at once, not after the 60 s timeout (took ${tookMs} ms)`);
  // it keeps trying with backoff, never Healthy
  const later = await waitFor('a restart', async () => {
    const x = await nodeOf(node.id);
    return x.instances[0]?.restarts >= 1 ? x : undefined;
  }, 20_000);
  assert.equal(later.status, 'Unhealthy');
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('a hung cell worker (SIGSTOP) is replaced; a replacement starts while it is out', async () => {
  const node = await createNode(b, { ...LAB_NODE, name: 'hang', checkpointId: 'lab', timeout: 5, healthcheck: FAST_HC });
  const victim = node.instances[0];
  assert.ok(victim.pid);
  signalTree(victim.pid, 'SIGSTOP');
  try {
    // while it is Unhealthy and still there, another instance starts beside it
    const during = await waitFor('a replacement beside the hung instance', async () => {
      const x = await nodeOf(node.id);
      const hung = x.instances.find((i: any) => i.id === victim.id);
      return hung?.status === 'Unhealthy' && x.instances.length === 2 ? x : undefined;
    }, 20_000, 50);
    assert.equal(during.instances.find((i: any) => i.id === victim.id).status, 'Unhealthy');
    const healed = await waitFor('the hung instance gone and a new one Healthy', async () => {
      const x = await nodeOf(node.id);
      return x.status === 'Healthy' && !x.instances.some((i: any) => i.id === victim.id) && x.instances.length === 1 ? x : undefined;
    }, 30_000);
    assert.equal(healed.instances[0].status, 'Healthy');
    await waitFor('the hung process killed', async () => !alive(victim.pid), 10_000);
    const r = await execute(b, node.id, { mode: 'echo', arg: 'after' });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(r.body, { output: { result: 'after' } });
  } finally {
    if (alive(victim.pid)) signalTree(victim.pid, 'SIGKILL');
    await b.request('DELETE', `/v1/nodes/${node.id}`);
  }
});

test('a paused container is replaced; the node does not sit below minInstances', async (t) => {
  const problem = await dockerProblem();
  if (problem) {
    if (process.env.CI) throw new Error(`CI must have Docker: ${problem}`);
    return t.skip(problem);
  }
  await buildTestImages(['http-echo']);
  const d = await startBerth(undefined, { BERTH_RUNTIME: 'docker' });
  try {
    const r = await d.request('POST', '/v1/nodes', {
      kind: 'image', name: 'paused', image: testImage('http-echo'),
      endpoint: { port: 8080, protocol: 'http', timeout: 3 },
      healthcheck: { protocol: 'http', path: '/healthz', port: 8080, ...FAST_HC },
      scaling: { minInstances: 2, maxInstances: 2 },
    });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    const id = r.body.id;
    const get = async (): Promise<any> => (await d.request('GET', `/v1/nodes/${id}`)).body;
    const ready = await waitFor('2 Healthy', async () => {
      const x = await get();
      return x.status === 'Healthy' && x.instances.filter((i: any) => i.status === 'Healthy').length === 2 ? x : undefined;
    }, 60_000);
    const victim = ready.instances[0];
    const container = `berth-${victim.id}`;
    const paused = spawnSync('docker', ['pause', container], { encoding: 'utf8' });
    assert.equal(paused.status, 0, paused.stderr);
    // a replacement starts while the paused one is out, then the paused one goes
    await waitFor('a third instance beside the paused one', async () => {
      const x = await get();
      return x.instances.some((i: any) => i.id === victim.id && i.status === 'Unhealthy') && x.instances.length === 3 ? x : undefined;
    }, 30_000, 50);
    const healed = await waitFor('2 Healthy again, the paused one gone', async () => {
      const x = await get();
      const healthy = x.instances.filter((i: any) => i.status === 'Healthy').length;
      return x.status === 'Healthy' && healthy === 2 && !x.instances.some((i: any) => i.id === victim.id) ? x : undefined;
    }, 60_000);
    assert.equal(healed.instances.length, 2);
    const gone = await waitFor('the paused container removed', async () => {
      const ps = spawnSync('docker', ['ps', '-a', '-q', '--filter', `name=^${container}$`], { encoding: 'utf8' });
      return ps.stdout.trim() === '' ? true : undefined;
    }, 30_000);
    assert.ok(gone);
    const call = await fetch(d.url + '/', { headers: { 'x-node-id': id, 'x-folder-id': 'default', authorization: `Bearer ${d.token}` } });
    assert.equal(call.status, 200);
  } finally {
    await d.stop();
    await removeContainersOfHome(d.home);
    removeHome(d.home);
  }
});

test('Unhealthy instances make way: bounded load keeps being served while one instance hangs', async () => {
  const node = await createNode(b, { ...LAB_NODE, name: 'hang2', checkpointId: 'lab', timeout: 5, healthcheck: FAST_HC, scaling: { minInstances: 2, maxInstances: 2 } });
  await waitFor('2 Healthy', async () => {
    const x = await nodeOf(node.id);
    return x.instances.filter((i: any) => i.status === 'Healthy').length === 2 ? x : undefined;
  }, 30_000);
  const victim = (await nodeOf(node.id)).instances[0];
  signalTree(victim.pid, 'SIGSTOP');
  try {
    await waitFor('the hung instance out', async () => {
      const x = await nodeOf(node.id);
      return x.instances.find((i: any) => i.id === victim.id)?.status === 'Unhealthy' ? x : undefined;
    }, 20_000, 50);
    // from here on no call reaches the hung instance: every call succeeds
    const results = await runLoad(200, 4, 30_000, (i) => execute(b, node.id, { mode: 'echo', arg: i }));
    assert.equal(results.length, 200);
    assert.deepEqual(results.filter((r) => r.status !== 200).map((r) => r.body), []);
    await waitFor('2 Healthy again', async () => {
      const x = await nodeOf(node.id);
      return x.status === 'Healthy' && x.instances.filter((i: any) => i.status === 'Healthy').length === 2 && !x.instances.some((i: any) => i.id === victim.id) ? x : undefined;
    }, 30_000);
  } finally {
    if (alive(victim.pid)) signalTree(victim.pid, 'SIGKILL');
    await b.request('DELETE', `/v1/nodes/${node.id}`);
  }
});

async function token(name: string, body: Record<string, unknown>): Promise<string> {
  const r = await b.request('POST', '/v1/tokens', { name, ...body });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return `Bearer ${r.body.token}`;
}

test('suspend drains running calls, stops instances, refuses calls; survives a restart; resume brings it back', async () => {
  const node = await createNode(b, { ...LAB_NODE, name: 'sleeper', checkpointId: 'lab', timeout: 10 });
  const pid = node.instances[0].pid;
  // a call running when the suspend comes finishes with its answer
  const running = execute(b, node.id, { mode: 'sleep', arg: 1 });
  await new Promise((r) => setTimeout(r, 300));
  const viewer = await token('viewer-default', { folders: ['default'], role: 'viewer' });
  const denied = await b.request('POST', `/v1/nodes/${node.id}:suspend`, undefined, { authorization: viewer });
  assert.equal(denied.status, 403, JSON.stringify(denied.body));
  const suspended = await b.request('POST', `/v1/nodes/${node.id}:suspend`);
  assert.equal(suspended.status, 200, JSON.stringify(suspended.body));
  const done = await running;
  assert.equal(done.status, 200, JSON.stringify(done.body));
  assert.deepEqual(done.body, { output: { result: 1 } });
  assert.equal(suspended.body.status, 'Suspended');
  assert.deepEqual(suspended.body.instances, []);
  assert.ok(!alive(pid), 'its process is stopped');

  const started = Date.now();
  const r = await execute(b, node.id, { mode: 'echo', arg: 1 });
  assert.equal(r.status, 409, JSON.stringify(r.body));
  assert.equal(r.body.code, 'NODE_SUSPENDED');
  assert.match(r.body.message, new RegExp(`node ${node.id} \\(sleeper\\) is suspended`));
  assert.ok(Date.now() - started < 2000);

  // across a restart of berth up: still suspended, nothing started
  await b.stop();
  b = await startBerth(b.home);
  const after = await nodeOf(node.id);
  assert.equal(after.status, 'Suspended');
  await new Promise((res) => setTimeout(res, 1000));
  assert.deepEqual((await nodeOf(node.id)).instances, []);
  assert.equal((await execute(b, node.id, { mode: 'echo', arg: 1 })).body.code, 'NODE_SUSPENDED');

  const resumed = b.cli('node', 'resume', 'sleeper', '--json');
  assert.equal(resumed.status, 0, resumed.stderr);
  await waitFor('Healthy after resume', async () => ((await nodeOf(node.id)).status === 'Healthy' ? true : undefined), 30_000);
  assert.deepEqual((await execute(b, node.id, { mode: 'echo', arg: 'back' })).body, { output: { result: 'back' } });
  const n = await nodeOf(node.id);
  assert.deepEqual(n.transitions.map((t: any) => t.status).slice(-3), ['Suspended', 'Created', 'Healthy']);

  const audit = (await b.request('GET', '/v1/audit?limit=100')).body.entries as any[];
  assert.ok(audit.some((e) => e.action === 'node.suspend' && e.resourceId === node.id && e.result === 'ok'));
  assert.ok(audit.some((e) => e.action === 'node.suspend' && e.result === 'PERMISSION_DENIED'));
  assert.ok(audit.some((e) => e.action === 'node.resume' && e.resourceId === node.id && e.result === 'ok'));
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});

test('an alias skips a suspended backend', async () => {
  const one = await createNode(b, { ...LAB_NODE, name: 'alias-one', checkpointId: 'lab' });
  const two = await createNode(b, { ...LAB_NODE, name: 'alias-two', checkpointId: 'lab' });
  const a = await b.request('POST', '/v1/aliases', { name: 'both-lab', backends: [{ nodeId: one.id, weight: 50 }, { nodeId: two.id, weight: 50 }] });
  assert.equal(a.status, 201, JSON.stringify(a.body));
  assert.equal((await b.request('POST', `/v1/nodes/${one.id}:suspend`)).status, 200);
  for (let i = 0; i < 20; i++) {
    const r = await b.request('POST', '/datasphere/v1/aliases/both-lab:execute', { folder_id: 'default', input: { mode: 'echo', arg: i } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
  }
  await b.request('DELETE', '/v1/aliases/both-lab');
  await b.request('DELETE', `/v1/nodes/${one.id}`);
  await b.request('DELETE', `/v1/nodes/${two.id}`);
});

test('PATCH updates scaling, description and ACL in place, restarting nothing; a rejected update changes nothing', async () => {
  const node = await createNode(b, { ...LAB_NODE, name: 'patchme', checkpointId: 'lab' });
  const pid = node.instances[0].pid;
  const patch = (body: unknown, auth?: string) => b.request('PATCH', `/v1/nodes/${node.id}`, body, auth ? { authorization: auth } : {});

  // ACL: folder team-x may not call it, then may
  assert.equal((await execute(b, node.id, { mode: 'echo', arg: 1 }, 'team-x')).body.code, 'PERMISSION_DENIED');
  const up = await patch({ description: 'now two', scaling: { minInstances: 2, maxInstances: 3 }, permissions: { folders: ['default', 'team-x'] } });
  assert.equal(up.status, 200, JSON.stringify(up.body));
  assert.equal(up.body.description, 'now two');
  assert.equal(up.body.scaling.maxInstances, 3);
  assert.equal(up.body.scaling.queueSize, 64 * 3, 'a defaulted queueSize follows maxInstances');
  await waitFor('ACL applied', async () => ((await execute(b, node.id, { mode: 'echo', arg: 1 }, 'team-x')).status === 200 ? true : undefined), 5_000);
  const two = await waitFor('2 Healthy', async () => {
    const x = await nodeOf(node.id);
    return x.instances.filter((i: any) => i.status === 'Healthy').length === 2 ? x : undefined;
  }, 30_000);
  const first = two.instances.find((i: any) => i.pid === pid);
  assert.ok(first, 'the first instance was not restarted');
  assert.equal(first.restarts, 0);

  // rejected updates change nothing
  const bad = await patch({ scaling: { minInstances: 4 } });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.details.field, 'scaling.maxInstances');
  const mixed = await patch({ timeout: 5, description: 'x', scaling: { sessionsPerInstance: 0 } });
  assert.equal(mixed.status, 400);
  assert.equal(mixed.body.details.field, 'scaling.sessionsPerInstance');
  const ckpt = await patch({ checkpointId: 'no-such-checkpoint' });
  assert.equal(ckpt.status, 404);
  assert.equal(ckpt.body.details.field, 'checkpointId');
  assert.equal((await patch({ checkpointId: 'lab' })).status, 200, 'the same checkpoint by name is no change');
  const after = await nodeOf(node.id);
  assert.equal(after.description, 'now two');
  assert.equal(after.scaling.minInstances, 2);
  assert.equal(after.timeout, 60);

  // roles: another folder's token sees nothing, a viewer may not change
  const other = await token('editor-other', { folders: ['team-other'], role: 'editor' });
  assert.equal((await patch({ description: 'mine' }, other)).status, 404);
  const viewer = await token('viewer-patch', { folders: ['default'], role: 'viewer' });
  assert.equal((await patch({ description: 'mine' }, viewer)).status, 403);

  // the CLI, then lowering maxInstances drains the extra instance
  const cli = b.cli('node', 'update', 'patchme', '--min', '1', '--max', '1', '--description', 'one again', '--json');
  assert.equal(cli.status, 0, cli.stderr);
  assert.equal(JSON.parse(cli.stdout).scaling.maxInstances, 1);
  await waitFor('back to one instance', async () => ((await nodeOf(node.id)).instances.length === 1 ? true : undefined), 30_000);
  assert.equal((await execute(b, node.id, { mode: 'echo', arg: 'ok' })).status, 200);
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});

test('folder quotas hold on update; berth apply -f updates an existing node', async () => {
  assert.equal((await b.request('PATCH', '/v1/folders/team-q/quota', { maxInstances: 2 })).status, 200);
  const r = await b.request('POST', '/v1/checkpoints', { cells: LAB_CELLS, name: 'lab-q', folderId: 'team-q' });
  assert.ok(r.status === 201, JSON.stringify(r.body));
  const node = await createNode(b, { ...LAB_NODE, name: 'quota-node', checkpointId: 'lab-q', folderId: 'team-q' }, false);
  const over = await b.request('PATCH', `/v1/nodes/${node.id}`, { scaling: { maxInstances: 3 } });
  assert.equal(over.status, 429, JSON.stringify(over.body));
  assert.equal(over.body.code, 'QUOTA_EXCEEDED');
  assert.equal((await nodeOf(node.id)).scaling.maxInstances, 1, 'unchanged');
  assert.equal((await b.request('PATCH', `/v1/nodes/${node.id}`, { scaling: { maxInstances: 2 } })).status, 200);

  const { writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const file = join(b.home, 'quota-node.yaml');
  writeFileSync(file, `kind: cell\nname: quota-node\nfolderId: team-q\ncheckpointId: lab-q\ndescription: from a file\ninputs:\n  - {name: mode, type: str}\n  - {name: arg, type: any}\noutputs:\n  - {name: result, type: any}\n`);
  const applied = b.cli('apply', '-f', file, '--json');
  assert.equal(applied.status, 0, applied.stderr);
  assert.deepEqual(JSON.parse(applied.stdout).map((x: any) => x.action), ['updated']);
  assert.equal((await nodeOf(node.id)).description, 'from a file');
  assert.equal(JSON.parse(b.cli('apply', '-f', file, '--json').stdout)[0].action, 'unchanged');
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});
