// Node updates that restart instances (issue 9): a new revision rolled out beside the old with
// zero failed calls, failed rollouts undone by themselves, rollback, history, dry runs,
// sticky keys through a rollout, a restart of `berth up` mid-rollout, and who may do it.
// Real `berth up`, real Python workers, real calls under continuous bounded load.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startBerth, removeHome, makeCheckpoint, createNode, execute, waitFor, type Berth } from './helpers.js';

let b: Berth;

/** Health checks fast enough that a rollout step takes about a second. */
const FAST_HC = { interval: 0.2, timeout: 1, failsThreshold: 2, passesThreshold: 1 };

/**
 * Revision `v` answers `{version: v, instance}`: `instance` is made once per worker process
 * (kept in sys.modules, which no checkpoint holds), so it tells instances apart.
 */
const versionCells = (v: number): string[] => [
  `version = ${v}\nx = None\n`,
  `import sys, uuid
me = sys.modules.get('berth_test_me')
if me is None:
    me = sys.modules['berth_test_me'] = type(sys)('berth_test_me')
    me.id = uuid.uuid4().hex
result = {'version': version, 'instance': me.id}
del me
`,
];
const VERSION_NODE = {
  kind: 'cell',
  inputs: [{ name: 'x', type: 'any' }],
  outputs: [{ name: 'result', type: 'dict' }],
  healthcheck: FAST_HC,
};

before(async () => {
  b = await startBerth();
  for (let v = 1; v <= 6; v++) await makeCheckpoint(b, `v${v}`, versionCells(v));
});

after(async () => {
  await b.stop();
  removeHome(b.home);
});

const nodeOf = async (id: string): Promise<any> => (await b.request('GET', `/v1/nodes/${id}`)).body;
const patch = (id: string, body: unknown, query = '', auth?: string) =>
  b.request('PATCH', `/v1/nodes/${id}${query}`, body, auth ? { authorization: auth } : {});

async function rolloutEnds(id: string, timeoutMs = 60_000): Promise<any> {
  return waitFor(`rollout of ${id} ends`, async () => {
    const n = await nodeOf(id);
    return n.rollout && n.rollout.state !== 'Progressing' ? n : undefined;
  }, timeoutMs, 50);
}

/**
 * Calls a node (or alias) without pause from `concurrency` callers until stopped, bounded in
 * count and time; records every answer that is not a 200 and the versions seen.
 */
function steadyLoad(call: () => Promise<{ status: number; body: any }>, concurrency = 4, maxCalls = 200_000, maxMs = 240_000) {
  let stop = false;
  let calls = 0;
  const failures: string[] = [];
  const deadline = Date.now() + maxMs;
  const loops = Array.from({ length: concurrency }, async () => {
    while (!stop && calls < maxCalls && Date.now() < deadline) {
      calls++;
      const r = await call().catch((err) => ({ status: 0, body: String(err) }));
      if (r.status !== 200) failures.push(`${r.status} ${JSON.stringify(r.body).slice(0, 300)}`);
    }
  });
  return {
    failures,
    get calls() { return calls; },
    async end(): Promise<void> { stop = true; await Promise.all(loops); },
  };
}

async function token(name: string, folder: string, role: string): Promise<string> {
  const r = await b.request('POST', '/v1/tokens', { name, roles: { [folder]: role } });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return `Bearer ${r.body.token}`;
}

test('five updates of a cell node (new checkpoint) under load: zero failed calls, the new revision answers after each', async () => {
  const node = await createNode(b, { ...VERSION_NODE, name: 'rolling', checkpointId: 'v1', scaling: { minInstances: 2, maxInstances: 2 } });
  assert.equal(node.revision, 1);
  const load = steadyLoad(() => execute(b, node.id, { x: 1 }));
  try {
    for (let v = 2; v <= 6; v++) {
      const r = await patch(node.id, { checkpointId: `v${v}` });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual(r.body.changed, ['checkpointId']);
      assert.equal(r.body.revision, v);
      assert.equal(r.body.rollout.state, 'Progressing');
      const done = await rolloutEnds(node.id);
      assert.equal(done.rollout.state, 'Complete', JSON.stringify(done.rollout));
      assert.equal(done.status, 'Healthy');
      assert.deepEqual(done.instances.map((i: any) => i.revision), [v, v]);
      for (let i = 0; i < 10; i++) {
        const a = await execute(b, node.id, { x: i });
        assert.equal(a.status, 200);
        assert.equal(a.body.output.result.version, v, 'after the rollout only the new revision answers');
      }
    }
  } finally {
    await load.end();
  }
  assert.ok(load.calls > 100, `load ran (${load.calls} calls)`);
  assert.deepEqual(load.failures, [], `${load.failures.length} of ${load.calls} calls failed`);

  // history lists every revision with why it exists; the CLI shows it as a table and as JSON
  const h = await b.request('GET', `/v1/nodes/${node.id}/revisions`);
  assert.equal(h.status, 200);
  assert.deepEqual(h.body.revisions.map((r: any) => r.revision), [6, 5, 4, 3, 2, 1]);
  assert.equal(h.body.revisions[0].current, true);
  assert.equal(h.body.revisions[0].cause, 'update (checkpointId)');
  assert.deepEqual(h.body.revisions[0].changed, ['checkpointId']);
  const cli = b.cli('node', 'history', 'rolling');
  assert.equal(cli.status, 0, cli.stderr);
  assert.match(cli.stdout, /REVISION\s*│\s*CURRENT/);
  assert.equal(JSON.parse(b.cli('node', 'history', 'rolling', '--json').stdout).current, 6);

  // rollback: to the revision before, as a new revision, with the CLI following it
  const rb = b.cli('node', 'rollback', 'rolling', '--json');
  assert.equal(rb.status, 0, rb.stderr);
  const back = JSON.parse(rb.stdout);
  assert.equal(back.revision, 7);
  assert.equal(back.rollout.state, 'Complete');
  assert.equal((await execute(b, node.id, { x: 1 })).body.output.result.version, 5);
  const status = b.cli('node', 'rollout', 'status', 'rolling', '--json');
  assert.equal(status.status, 0, status.stderr);
  assert.deepEqual({ ...JSON.parse(status.stdout).rollout, startedAt: 0, finishedAt: 0 },
    { revision: 7, from: 6, state: 'Complete', startedAt: 0, finishedAt: 0, updated: 2, outdated: 0, healthy: 2 });
  const to2 = await b.request('POST', `/v1/nodes/${node.id}:rollback`, { revision: 2 });
  assert.equal(to2.status, 200, JSON.stringify(to2.body));
  assert.equal((await rolloutEnds(node.id)).rollout.state, 'Complete');
  assert.equal((await execute(b, node.id, { x: 1 })).body.output.result.version, 2);
  const hist = (await b.request('GET', `/v1/nodes/${node.id}/revisions`)).body.revisions;
  assert.deepEqual(hist.slice(0, 2).map((r: any) => r.cause), ['rollback to 2', 'rollback to 5']);
  const missing = await b.request('POST', `/v1/nodes/${node.id}:rollback`, { revision: 99 });
  assert.equal(missing.status, 404);
  assert.equal(missing.body.code, 'REVISION_NOT_FOUND');
  assert.equal(missing.body.details.field, 'revision');
  const badBody = await b.request('POST', `/v1/nodes/${node.id}:rollback`, { revision: 'two' });
  assert.equal(badBody.status, 400);
  assert.equal(badBody.body.details.field, 'revision');
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});

test('a rollout whose instances crash, or never get Healthy by the deadline, stops by itself: the old revision serves, zero failed calls', async () => {
  // unpickling this object raises: every instance of this checkpoint fails to load
  await makeCheckpoint(b, 'crashes', ['class Bomb:\n    def __reduce__(self):\n        return (exec, ("raise RuntimeError(\'restore fails on purpose\')",))\nbomb = Bomb()\nx = None\n', 'result = {"version": -1}\n']);
  // restoring this one takes an hour: its instances stay Preparing
  await makeCheckpoint(b, 'slow', ['import time\nclass Slow:\n    def __reduce__(self):\n        return (time.sleep, (3600,))\nslow = Slow()\nx = None\n', 'result = {"version": -2}\n']);
  const node = await createNode(b, { ...VERSION_NODE, name: 'guarded', checkpointId: 'v1', rollout: { deadlineSeconds: 6 } });
  const load = steadyLoad(() => execute(b, node.id, { x: 1 }), 3);
  try {
    const crash = await patch(node.id, { checkpointId: 'crashes' });
    assert.equal(crash.status, 200, JSON.stringify(crash.body));
    const failed = await rolloutEnds(node.id);
    assert.equal(failed.rollout.state, 'Failed');
    assert.equal(failed.rollout.revision, 2);
    assert.match(failed.rollout.reason, /keep failing.*restore fails on purpose/s);
    assert.equal(failed.revision, 1, 'back on the revision it started from');
    assert.equal(failed.checkpointId, (await b.request('GET', '/v1/checkpoints/v1')).body.id);
    assert.match(failed.transitions.at(-1).reason, /rollout to revision 2 failed/);
    await waitFor('only revision 1 instances', async () => {
      const n = await nodeOf(node.id);
      return n.instances.length === 1 && n.instances[0].revision === 1 && n.instances[0].status === 'Healthy' ? n : undefined;
    }, 20_000);

    const slow = await patch(node.id, { checkpointId: 'slow' });
    assert.equal(slow.body.revision, 3, 'revision numbers are never reused');
    const late = await rolloutEnds(node.id, 30_000);
    assert.equal(late.rollout.state, 'Failed');
    assert.match(late.rollout.reason, /not all Healthy within 6s/);
    assert.equal(late.revision, 1);
    assert.equal((await execute(b, node.id, { x: 1 })).body.output.result.version, 1);
  } finally {
    await load.end();
  }
  assert.deepEqual(load.failures, [], `${load.failures.length} of ${load.calls} calls failed`);
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});

test('dry runs change nothing; validation as on create; a rejected update changes nothing; who may update, roll back and read history', async () => {
  const node = await createNode(b, { ...VERSION_NODE, name: 'planned', checkpointId: 'v1' });
  const plan = await patch(node.id, { checkpointId: 'v2', description: 'next' }, '?dryRun=true');
  assert.equal(plan.status, 200, JSON.stringify(plan.body));
  assert.equal(plan.body.dryRun, true);
  assert.equal(plan.body.rollout, true);
  assert.equal(plan.body.revision, 2);
  assert.deepEqual(plan.body.changed, ['checkpointId', 'description']);
  assert.ok(plan.body.diff.some((d: any) => d.field === 'description' && d.from === '' && d.to === 'next'));
  const inPlace = await patch(node.id, { scaling: { maxInstances: 2 } }, '?dryRun=true');
  assert.equal(inPlace.body.rollout, false);
  assert.equal((await patch(node.id, {}, '?dryRun=maybe')).body.details.field, 'dryRun');
  const still = await nodeOf(node.id);
  assert.equal(still.revision, 1);
  assert.equal(still.description, '');
  assert.equal(still.rollout, null);

  // the CLI: --dry-run prints the difference, and so does apply --dry-run
  const cli = b.cli('node', 'update', 'planned', '--checkpoint', 'v3', '--dry-run');
  assert.equal(cli.status, 0, cli.stderr);
  assert.match(cli.stdout, /checkpointId/);
  assert.match(cli.stdout, /revision 2 would be rolled out/);
  const { writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const file = join(b.home, 'planned.yaml');
  writeFileSync(file, 'kind: cell\nname: planned\ncheckpointId: v4\ndescription: from a file\n');
  const applied = b.cli('apply', '-f', file, '--dry-run');
  assert.equal(applied.status, 0, applied.stderr);
  assert.match(applied.stdout, /description/);
  assert.equal((await nodeOf(node.id)).revision, 1, 'apply --dry-run changed nothing');

  // rejected updates name the field and change nothing
  const cases: Array<[unknown, string, number]> = [
    [{ checkpointId: 'no-such-checkpoint' }, 'checkpointId', 404],
    [{ checkpointId: 'v2', scaling: { minInstances: 9, maxInstances: 2 } }, 'scaling.maxInstances', 400],
    [{ kind: 'image', image: 'x:1', endpoint: { port: 80 }, checkpointId: null, inputs: null, outputs: null, environment: null, timeout: null, healthcheck: null }, 'kind', 400],
    [{ folderId: 'elsewhere' }, 'folderId', 400],
    [{ rollout: { maxSurge: 0, maxUnavailable: 0 } }, 'rollout.maxSurge', 400],
    [{ rollout: { deadlineSeconds: 1 } }, 'rollout.deadlineSeconds', 400],
    [{ environment: { python: '/bin/sh' } }, 'environment.python', 400],
  ];
  for (const [body, field, status] of cases) {
    const r = await patch(node.id, body);
    assert.equal(r.status, status, `${JSON.stringify(body)} → ${JSON.stringify(r.body)}`);
    assert.equal(r.body.details.field, field, JSON.stringify(r.body));
  }
  const after = await nodeOf(node.id);
  assert.equal(after.revision, 1);
  assert.equal(after.rollout, null);
  assert.equal((await b.request('GET', `/v1/nodes/${node.id}/revisions`)).body.revisions.length, 1);

  // another folder's token, and an executor (calls, cannot read): as if the node did not exist;
  // a viewer reads but may not change: 403
  const other = await token('rollout-other', 'team-other', 'admin');
  const viewer = await token('rollout-viewer', 'default', 'viewer');
  const executor = await token('rollout-executor', 'default', 'executor');
  for (const [auth, want] of [[other, 404], [executor, 404], [viewer, 403]] as const) {
    assert.equal((await patch(node.id, { checkpointId: 'v2' }, '', auth)).status, want);
    assert.equal((await b.request('POST', `/v1/nodes/${node.id}:rollback`, {}, { authorization: auth })).status, want);
  }
  assert.equal((await b.request('GET', `/v1/nodes/${node.id}/revisions`, undefined, { authorization: other })).status, 404);
  assert.equal((await b.request('GET', `/v1/nodes/${node.id}/revisions`, undefined, { authorization: executor })).status, 404);
  assert.equal((await b.request('GET', `/v1/nodes/${node.id}/revisions`, undefined, { authorization: viewer })).status, 200);
  assert.equal((await nodeOf(node.id)).revision, 1, 'nothing changed');
  const noEarlier = await b.request('POST', `/v1/nodes/${node.id}:rollback`, {});
  assert.equal(noEarlier.body.code, 'REVISION_NOT_FOUND');
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});

test('sticky keys through a rollout: a key moves only when its instance goes away', async () => {
  const node = await createNode(b, { ...VERSION_NODE, name: 'sticky-roll', checkpointId: 'v1', scaling: { minInstances: 2, maxInstances: 2 } });
  const alias = await b.request('POST', '/v1/aliases', { name: 'sticky-roll', backends: [{ nodeId: node.id, weight: 1 }], sticky: { header: 'x-user' } });
  assert.equal(alias.status, 201, JSON.stringify(alias.body));
  const keys = Array.from({ length: 20 }, (_, i) => `user-${i}`);
  // every answer: when its call started and ended, the key, the instance
  const seen: Array<{ at: number; end: number; key: string; instance: string }> = [];
  let stop = false;
  const failures: string[] = [];
  const deadline = Date.now() + 120_000;
  const loops = keys.map(async (key) => {
    while (!stop && Date.now() < deadline) {
      const at = performance.now();
      const r = await b.request('POST', '/datasphere/v1/aliases/sticky-roll:execute', { folder_id: 'default', input: { x: 1 } }, { 'x-user': key });
      if (r.status !== 200) { failures.push(`${r.status} ${JSON.stringify(r.body)}`); continue; }
      seen.push({ at, end: performance.now(), key, instance: r.body.output.result.instance });
      await new Promise((res) => setTimeout(res, 5));
    }
  });
  try {
    await new Promise((res) => setTimeout(res, 500));
    assert.equal((await patch(node.id, { checkpointId: 'v2' })).status, 200);
    assert.equal((await rolloutEnds(node.id)).rollout.state, 'Complete');
    await new Promise((res) => setTimeout(res, 500));
  } finally {
    stop = true;
    await Promise.all(loops);
  }
  assert.deepEqual(failures, []);
  // when a key moved off instance X, X never answered a call started after that — give or take
  // the time a routing snapshot takes to reach every gateway worker (each leaves X when it has
  // applied the snapshot without it; test/gateway-workers.test.ts bounds that at 250 ms).
  // The key had moved by the time its first call elsewhere *ended*, not when that call started:
  // a sticky call can wait in the queue for its instance's session (with gateway workers, for the
  // session to come to its worker) and be sent elsewhere only when the instance leaves, and
  // meanwhile X rightly served the calls of the keys that had not moved
  const PROPAGATION_MS = 250;
  const lastStart = new Map<string, number>();
  for (const s of seen) lastStart.set(s.instance, Math.max(lastStart.get(s.instance) ?? 0, s.at));
  let moves = 0;
  for (const key of keys) {
    const mine = seen.filter((s) => s.key === key).sort((a, b2) => a.at - b2.at);
    const left = new Set<string>();
    for (let i = 1; i < mine.length; i++) {
      if (mine[i]!.instance === mine[i - 1]!.instance) continue;
      moves++;
      const gone = mine[i - 1]!.instance;
      left.add(gone);
      assert.ok(!left.has(mine[i]!.instance), `key ${key} went back to an instance it had left: ${mine.map((m) => m.instance.slice(0, 4)).join(',')}`);
      assert.ok(lastStart.get(gone)! <= mine[i]!.end + PROPAGATION_MS,
        `key ${key} left instance ${gone} while it still served (${(lastStart.get(gone)! - mine[i]!.end).toFixed(1)} ms after)`);
    }
  }
  assert.ok(moves >= keys.length, `every key moved at least once (its instance was replaced): ${moves} moves`);
  await b.request('DELETE', '/v1/aliases/sticky-roll');
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});

test('a restart of berth up mid-rollout finishes it on one revision', async () => {
  const node = await createNode(b, { ...VERSION_NODE, name: 'restarted', checkpointId: 'v1', scaling: { minInstances: 2, maxInstances: 2 } });
  assert.equal((await patch(node.id, { checkpointId: 'v2' })).status, 200);
  await b.stop();
  b = await startBerth(b.home);
  const n = await rolloutEnds(node.id);
  assert.equal(n.rollout.state, 'Complete');
  assert.equal(n.revision, 2);
  await waitFor('two Healthy instances of revision 2', async () => {
    const x = await nodeOf(node.id);
    return x.instances.length === 2 && x.instances.every((i: any) => i.revision === 2 && i.status === 'Healthy') ? x : undefined;
  }, 30_000);
  assert.equal((await execute(b, node.id, { x: 1 })).body.output.result.version, 2);
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});
