// Keeping nodes healthy: killed and hung instances, scaling with load, and a restart
// of `berth up` with nodes in place.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startBerth, removeHome, makeCheckpoint, createNode, execute, waitFor, runLoad, type Berth } from './helpers.js';
import { LAB_CELLS, LAB_NODE } from './fixtures.js';

// an interpreter that sees one more package, made by a test below; Berth must be told it may run it
const PKG_DIR = mkdtempSync(join(tmpdir(), 'berth-pkg-'));
const PKG_PYTHON = join(PKG_DIR, 'python-with-pkg');

let b: Berth;

before(async () => {
  b = await startBerth(undefined, { BERTH_ALLOWED_PYTHONS: PKG_PYTHON });
  await makeCheckpoint(b, 'lab', LAB_CELLS);
});

after(async () => {
  await b.stop();
  removeHome(b.home);
  removeHome(PKG_DIR);
});

const nodeOf = async (id: string): Promise<any> => (await b.request('GET', `/v1/nodes/${id}`)).body;

test('kill -9 of one of two instances under load: other calls succeed, the node heals', async () => {
  const node = await createNode(b, { ...LAB_NODE, name: 'kill-me', checkpointId: 'lab', scaling: { minInstances: 2, maxInstances: 2 } });
  const victim = node.instances[0];
  let killedAt = -1;
  const results = await runLoad(300, 4, 30_000, async (i) => {
    if (i === 100) { process.kill(victim.pid, 'SIGKILL'); killedAt = i; }
    const r = await execute(b, node.id, { mode: 'sleep', arg: 0.005 });
    return { status: r.status, code: r.body.code };
  });
  assert.equal(killedAt, 100);
  assert.equal(results.length, 300);
  const failed = results.filter((r) => r.status !== 200);
  // only a call already running on the killed instance may fail, and it says why
  assert.ok(failed.length <= 1, JSON.stringify(failed));
  for (const f of failed) assert.equal(f.code, 'INSTANCE_FAILED');

  const healed = await waitFor('node healed', async () => {
    const n = await nodeOf(node.id);
    return n.status === 'Healthy' && n.instances.filter((i: any) => i.status === 'Healthy').length === 2 ? n : undefined;
  });
  const replaced = healed.instances.find((i: any) => i.id === victim.id);
  assert.equal(replaced.restarts, 1);
  assert.match(replaced.lastError, /SIGKILL/);
  assert.notEqual(replaced.pid, victim.pid);
  assert.ok(replaced.transitions.some((t: any) => t.status === 'Unhealthy'));
});

test('a hung cell hits the timeout; its instance is replaced and the node keeps serving', async () => {
  const node = await createNode(b, { ...LAB_NODE, name: 'hangs', checkpointId: 'lab', timeout: 1 });
  const pid = node.instances[0].pid;
  const started = Date.now();
  const r = await execute(b, node.id, { mode: 'spin', arg: null });
  assert.equal(r.status, 504);
  assert.equal(r.body.code, 'CALL_TIMEOUT');
  assert.ok(Date.now() - started < 5000);
  const healed = await waitFor('replacement Healthy', async () => {
    const n = await nodeOf(node.id);
    const i = n.instances[0];
    return i.status === 'Healthy' && i.pid !== pid ? n : undefined;
  });
  assert.match(healed.instances[0].lastError, /timeout/);
  assert.equal((await execute(b, node.id, { mode: 'echo', arg: 'alive' })).body.output.result, 'alive');
  assert.throws(() => process.kill(pid, 0), 'the hung process is gone');
});

test('calls sent behind a call on its session (pipelined) time out from their own start, and are never lost with it', async () => {
  // a freed session takes several waiting calls at once (docs/cell-nodes.md): the worker runs them in turn
  const node = await createNode(b, { ...LAB_NODE, name: 'piped', checkpointId: 'lab', timeout: 2, scaling: { minInstances: 2, maxInstances: 2 } });
  const call = (mode: string, arg: unknown): Promise<{ status: number; body: any }> => execute(b, node.id, { mode, arg });
  const gap = (): Promise<void> => new Promise((r) => setTimeout(r, 100));

  // both sessions busy; two 1.5 s calls wait, then go to the first session that frees, together:
  // the second is sent 1.5 s before the worker starts it and runs 1.5 s, inside its 2 s all the same
  let holds = [call('sleep', 0.3), call('sleep', 0.6)];
  await gap();
  const slow = [call('sleep', 1.5), call('sleep', 1.5)];
  for (const r of [...await Promise.all(holds), ...await Promise.all(slow)]) assert.equal(r.status, 200, JSON.stringify(r.body));

  // the same with a call that hangs at the head: it times out and takes its instance down; the
  // calls sent behind it never started, so they are served by the other instance, not failed
  holds = [call('sleep', 0.3), call('sleep', 0.6)];
  await gap();
  const hung = call('spin', null);
  await gap();
  const behind = [call('echo', 'b1'), call('echo', 'b2'), call('echo', 'b3')];
  assert.equal((await hung).body.code, 'CALL_TIMEOUT');
  assert.deepEqual((await Promise.all(behind)).map((r) => [r.status, r.body.output?.result ?? r.body.code]), [[200, 'b1'], [200, 'b2'], [200, 'b3']]);
  await Promise.all(holds);
  await b.request('DELETE', `/v1/nodes/${node.id}`);
});

test('while no instance is healthy the node is Unhealthy, then Healthy again by itself', async () => {
  const node = await createNode(b, { ...LAB_NODE, name: 'flap', checkpointId: 'lab' });
  process.kill(node.instances[0].pid, 'SIGKILL');
  await waitFor('Unhealthy', async () => (await nodeOf(node.id)).status === 'Unhealthy', 10_000, 10);
  const n = await waitFor('Healthy', async () => { const x = await nodeOf(node.id); return x.status === 'Healthy' ? x : undefined; });
  assert.deepEqual(n.transitions.map((t: any) => t.status).slice(-3), ['Healthy', 'Unhealthy', 'Healthy']);
});

test('a full queue answers 503 with Retry-After', async () => {
  const node = await createNode(b, { ...LAB_NODE, name: 'tiny-queue', checkpointId: 'lab', scaling: { minInstances: 1, maxInstances: 1, queueSize: 1 } });
  // one runs, one waits: each long enough that, whichever reaches the instance first (with gateway
  // workers the two may arrive in either order), the queue is still full 200 ms later
  const slow = [execute(b, node.id, { mode: 'sleep', arg: 1 }), execute(b, node.id, { mode: 'sleep', arg: 0.6 })];
  await new Promise((r) => setTimeout(r, 200));
  const rejected = await execute(b, node.id, { mode: 'echo', arg: 1 });
  assert.equal(rejected.status, 503);
  assert.equal(rejected.body.code, 'NODE_UNAVAILABLE');
  assert.equal(rejected.headers.get('retry-after'), '1');
  const done = await Promise.all(slow);
  assert.deepEqual(done.map((r) => r.status), [200, 200]);
});

test('scale-up under load, scale-down after it', async () => {
  const node = await createNode(b, {
    ...LAB_NODE, name: 'elastic', checkpointId: 'lab',
    scaling: { minInstances: 1, maxInstances: 3, scaleDownDelaySeconds: 1 },
  });
  let most = 1;
  const watcher = setInterval(async () => {
    const n = await nodeOf(node.id);
    most = Math.max(most, n.instances.filter((i: any) => i.status === 'Healthy').length);
  }, 100);
  const results = await runLoad(400, 6, 20_000, async () => (await execute(b, node.id, { mode: 'sleep', arg: 0.02 })).status);
  clearInterval(watcher);
  assert.ok(results.every((s) => s === 200), `statuses: ${[...new Set(results)]}`);
  assert.equal(most, 3, 'scaled up to maxInstances while calls waited');
  const n = await waitFor('scaled back to 1', async () => {
    const x = await nodeOf(node.id);
    return x.instances.length === 1 && x.instances[0].status === 'Healthy' ? x : undefined;
  }, 15_000);
  assert.equal(n.status, 'Healthy');
});

test('deleting a node stops its instances', async () => {
  const node = await createNode(b, { ...LAB_NODE, name: 'short-lived', checkpointId: 'lab', scaling: { minInstances: 2 } });
  const pids = node.instances.map((i: any) => i.pid);
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
  assert.equal((await b.request('GET', `/v1/nodes/${node.id}`)).status, 404);
  for (const pid of pids) assert.throws(() => process.kill(pid, 0), 'instance process is gone');
  assert.equal((await execute(b, node.id, { mode: 'echo', arg: 1 })).body.code, 'NODE_NOT_FOUND');
});

test('a missing package fails the instance with an error naming it', async () => {
  // made with an interpreter that sees a package, served by one that does not
  const { mkdirSync, writeFileSync, chmodSync } = await import('node:fs');
  const dir = PKG_DIR;
  mkdirSync(join(dir, 'site', 'berthfakepkg'), { recursive: true });
  writeFileSync(join(dir, 'site', 'berthfakepkg', '__init__.py'), 'def twice(x):\n    return 2 * x\n');
  mkdirSync(join(dir, 'site', 'berthfakepkg-1.2.3.dist-info'));
  writeFileSync(join(dir, 'site', 'berthfakepkg-1.2.3.dist-info', 'METADATA'), 'Metadata-Version: 2.1\nName: berthfakepkg\nVersion: 1.2.3\n');
  writeFileSync(join(dir, 'site', 'berthfakepkg-1.2.3.dist-info', 'top_level.txt'), 'berthfakepkg\n');
  const wrapper = PKG_PYTHON;
  writeFileSync(wrapper, `#!/bin/sh\nPYTHONPATH=${join(dir, 'site')} exec /usr/bin/python3 "$@"\n`);
  chmodSync(wrapper, 0o755);
  const r = await b.request('POST', '/v1/checkpoints', { cells: ['import berthfakepkg\nx = 1\n', 'y = berthfakepkg.twice(x)\n'], name: 'needs-pkg', python: wrapper });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  assert.ok(r.body.requires.some((p: any) => p.name === 'berthfakepkg' && p.version === '1.2.3'), JSON.stringify(r.body.requires));
  const node = await createNode(b, { name: 'no-pkg', checkpointId: 'needs-pkg', inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'y', type: 'int' }] }, false);
  const failed = await waitFor('instance error', async () => {
    const n = await nodeOf(node.id);
    return n.instances[0]?.lastError ? n : undefined;
  }, 20_000);
  assert.match(failed.instances[0].lastError, /berthfakepkg/);
  assert.notEqual(failed.status, 'Healthy');
  // the CLI says why as soon as the node is Unhealthy, not after waiting out its 300 s
  const t0 = Date.now();
  const cli = b.cli('node', 'create', '--name', 'no-pkg-cli', '--checkpoint', 'needs-pkg', '--input', 'x:int', '--output', 'y:int');
  assert.notEqual(cli.status, 0);
  assert.match(cli.stderr, /cannot become Healthy: .*berthfakepkg/);
  assert.ok(Date.now() - t0 < 60_000, `the CLI took ${Date.now() - t0} ms`);
  // the same checkpoint served with the interpreter that has it works
  const ok = await createNode(b, { name: 'with-pkg', checkpointId: 'needs-pkg', environment: { python: wrapper }, inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'y', type: 'int' }] });
  assert.deepEqual((await execute(b, ok.id, { x: 21 })).body, { output: { y: 42 } });
});

test('SIGTERM lets running calls finish, leaves no processes; a restart brings every node back', async () => {
  const node = await createNode(b, { ...LAB_NODE, name: 'durable', checkpointId: 'lab', scaling: { minInstances: 2, maxInstances: 2 } });
  const before = await b.request('GET', '/v1/nodes');
  const pids: number[] = before.body.nodes.flatMap((n: any) => n.instances.map((i: any) => i.pid)).filter(Boolean);
  assert.ok(pids.length >= 2);
  const running = execute(b, node.id, { mode: 'sleep', arg: 1.5 });
  await new Promise((r) => setTimeout(r, 300));
  const code = await b.stop('SIGTERM');
  const finished = await running;
  assert.equal(finished.status, 200, JSON.stringify(finished.body));
  assert.equal(code, 0);
  const alive = pids.filter((pid) => { try { process.kill(pid, 0); return true; } catch { return false; } });
  assert.deepEqual(alive, [], 'no stray worker processes');

  b = await startBerth(b.home, { BERTH_ALLOWED_PYTHONS: PKG_PYTHON });
  const after = await b.request('GET', '/v1/nodes');
  assert.deepEqual(after.body.nodes.map((n: any) => n.id).sort(), before.body.nodes.map((n: any) => n.id).sort());
  assert.equal((await b.request('GET', '/v1/checkpoints/lab')).status, 200);
  const healthy = await waitFor('Healthy after restart', async () => {
    const n = await nodeOf(node.id);
    return n.status === 'Healthy' && n.instances.filter((i: any) => i.status === 'Healthy').length === 2 ? n : undefined;
  });
  assert.equal(healthy.instances.length, 2);
  assert.equal((await execute(b, node.id, { mode: 'echo', arg: 'back' })).body.output.result, 'back');
});
