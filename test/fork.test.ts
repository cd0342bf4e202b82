// Forked instances (issue 10): a template per node revision restores the checkpoint once and
// new instances are forked from it. Real `berth up`, real bubblewrap and cgroups, real Python
// processes, real HTTP; memory read from /proc/<pid>/smaps_rollup.
//
//   node --import tsx --test test/fork.test.ts
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { createNode, execute, makeCheckpoint, removeHome, startBerth, tempHome, waitFor, type Berth } from './helpers.js';

const root = process.getuid?.() === 0;
const bwrap = existsSync('/usr/bin/bwrap');
const sandboxSkip = !root || !bwrap ? 'needs root and /usr/bin/bwrap (CI runs as root with bubblewrap installed)' : false;

// restoring takes 2 s on purpose (a fresh instance pays it each time, a forked one never),
// and holds 64 MB of numpy state that forked instances share
const STATE_CELLS = [
  'import os, time\nimport numpy as np\nclass SlowRestore:\n    def __reduce__(self):\n        return (time.sleep, (2,))\nslow = SlowRestore()\n' +
  'data = np.ones(8_000_000)\ncounter = 0\nx = 0\n',
  'counter += x\nout = {"count": counter, "pid": os.getpid(), "sum": float(data[:10].sum())}\n',
];
const STATE_NODE = {
  inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'out', type: 'dict' }],
  resources: { cores: 1, memoryGb: 2 },
};
// restoring these starts a thread / opens a socket: not safe to fork
const THREAD_CELLS = [
  'import threading, time\nclass Poller:\n    def __init__(self):\n        self.start()\n    def start(self):\n' +
  '        import threading, time\n        self.t = threading.Thread(target=time.sleep, args=(3600,), name="poller", daemon=True)\n        self.t.start()\n' +
  '    def __getstate__(self):\n        return {}\n    def __setstate__(self, state):\n        self.start()\npoller = Poller()\nx = 0\n',
  'out = x + 1\n',
];
const SOCKET_CELLS = [
  'import socket\nclass Client:\n    def __init__(self):\n        self.connect()\n    def connect(self):\n' +
  '        import socket\n        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n' +
  '    def __getstate__(self):\n        return {}\n    def __setstate__(self, state):\n        self.connect()\nclient = Client()\nx = 0\n',
  'out = x + 1\n',
];
const SMALL_NODE = { inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'out', type: 'int' }] };

function statusOf(pid: number): string { return readFileSync(`/proc/${pid}/status`, 'utf8'); }
function ppidOf(pid: number): number { return Number(/^PPid:\s+(\d+)/m.exec(statusOf(pid))![1]); }
function uidOf(pid: number): number { return Number(/^Uid:\s+(\d+)/m.exec(statusOf(pid))![1]); }
function alive(pid: number): boolean { try { process.kill(pid, 0); return true; } catch { return false; } }
/** Proportional set size in kB: shared pages count once in total over the processes sharing them. */
function pssKb(pid: number): number { return Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))![1]); }
function cgroupOf(pid: number, controller: string): string {
  const line = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.split(':')[1]?.split(',').includes(controller))!;
  return line.split(':')[2]!;
}
const memoryCgroup = (pid: number): string => cgroupOf(pid, 'memory');
function memoryLimit(cgroup: string): number { return Number(readFileSync(join('/sys/fs/cgroup/memory', cgroup, 'memory.limit_in_bytes'), 'utf8')); }

/** The Python worker of a fresh instance: a descendant of the pid Berth shows (bwrap's). */
function workerUnder(pid: number): number {
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    let cmd = '';
    try { cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8'); } catch { continue; }
    if (!cmd.includes('berth_worker') || cmd.startsWith('/usr/bin/bwrap')) continue;
    for (let p = Number(e), i = 0; p > 1 && i < 6; i++) {
      if (p === pid) return Number(e);
      try { p = ppidOf(p); } catch { break; }
    }
  }
  throw new Error(`no worker under ${pid}`);
}

describe('forked instances', { timeout: 240_000 }, () => {
  let b: Berth;
  let node: any;
  const get = async (id: string): Promise<any> => (await b.request('GET', `/v1/nodes/${id}`)).body;
  const healthy = (n: any): any[] => n.instances.filter((i: any) => i.status === 'Healthy');
  const ms = (i: any, status: string): number => Date.parse(i.transitions.find((t: any) => t.status === status).at);

  before(async () => {
    b = await startBerth(tempHome());
    // one at a time: a folder runs at most 2 checkpoint runs at once
    for (const [name, cells] of [['state', STATE_CELLS], ['threaded', THREAD_CELLS], ['socketed', SOCKET_CELLS],
      ['small-1', ['x = 0\n', 'out = x + 1\n']], ['small-2', ['x = 0\n', 'out = x + 2\n']]] as const) {
      await makeCheckpoint(b, name, [...cells]);
    }
    node = await createNode(b, { ...STATE_NODE, name: 'forked', checkpointId: 'state', scaling: { minInstances: 1, maxInstances: 3 } });
  });

  after(async () => {
    if (!b) return;
    const pids = ((await b.request('GET', '/v1/nodes')).body.nodes as any[]).flatMap((n) => n.instances.map((i: any) => i.pid)).filter(Boolean);
    const templates = pids.filter(alive).map(ppidOf);
    await b.stop();
    // SIGTERM: instances and templates are gone with Berth
    assert.deepEqual([...pids, ...templates].filter(alive), [], 'no instance or template process left');
    removeHome(b.home);
  });

  test('a scale-out instance is forked, ready without restoring again, and its state diverges', async () => {
    const first = (await get(node.id)).instances[0];
    const patched = Date.now();
    assert.equal((await b.request('PATCH', `/v1/nodes/${node.id}`, { scaling: { minInstances: 2, maxInstances: 3 } })).status, 200);
    const two = await waitFor('2 Healthy', async () => { const n = await get(node.id); return healthy(n).length === 2 ? n : undefined; }, 30_000, 20);
    const added = two.instances.find((i: any) => i.id !== first.id);
    // restoring takes 2 s: a fresh process could not be Healthy this soon (the goal is < 100 ms; margin for a loaded machine)
    const took = ms(added, 'Healthy') - ms(added, 'Undefined');
    assert.ok(took < 1500, `forked instance Healthy ${took} ms after it was created`);
    assert.ok(ms(added, 'Healthy') - patched < 1500, `Healthy ${ms(added, 'Healthy') - patched} ms after the update`);
    assert.deepEqual(added.transitions.map((t: any) => t.status), ['Undefined', 'Created', 'Started', 'Preparing', 'Healthy']);
    // both are children of one template process, not of bwrap
    assert.equal(ppidOf(added.pid), ppidOf(first.pid), 'the same parent: the template');
    const logs = b.cli('node', 'logs', 'forked', '--lines', '50');
    assert.equal(logs.status, 0, logs.stderr);
    assert.match(logs.stdout, new RegExp(`starting instance ${added.id}: forked from template tpl`));

    // per-instance state: a counter moves only in the instance that ran the call
    const seen = new Map<number, number[]>();
    for (let i = 0; i < 12; i++) {
      const r = await execute(b, node.id, { x: 1 });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.output.out.sum, 10, 'the restored state is there');
      const list = seen.get(r.body.output.out.pid) ?? [];
      list.push(r.body.output.out.count);
      seen.set(r.body.output.out.pid, list);
    }
    assert.equal(seen.size, 2, `calls reached both instances: ${JSON.stringify([...seen])}`);
    for (const counts of seen.values()) assert.deepEqual(counts, counts.map((_, i) => i + 1), `each instance counts on its own: ${JSON.stringify([...seen])}`);
  });

  test('forked instances share the restored state\'s memory (PSS) where fresh ones each hold it', async () => {
    const fresh = await createNode(b, { ...STATE_NODE, name: 'fresh', checkpointId: 'state', scaling: { minInstances: 1, maxInstances: 1, fork: false } });
    assert.equal(fresh.scaling.fork, false);
    const n = await waitFor('2 Healthy', async () => { const x = await get(node.id); return healthy(x).length === 2 ? x : undefined; }, 30_000);
    const forkedPids = healthy(n).map((i: any) => i.pid as number);
    const template = ppidOf(forkedPids[0]!);
    const freshPid = workerUnder(fresh.instances[0].pid);
    const forked = forkedPids.map(pssKb);
    const one = pssKb(freshPid);
    const all = forked.reduce((a, x) => a + x, 0) + pssKb(template);
    // 64 MB of state: a fresh worker holds all of it; template + 2 forks share it three ways
    assert.ok(one > 64 * 1024, `a fresh instance holds the state: ${one} kB`);
    for (const kb of forked) assert.ok(kb < 0.6 * one, `forked instance PSS ${kb} kB vs fresh ${one} kB`);
    assert.ok(all < 1.4 * one, `template + 2 forked instances ${all} kB vs one fresh ${one} kB`);
    // fork: false is a fresh process: no template above it, its log says so
    const logs = b.cli('node', 'logs', 'fresh', '--lines', '20');
    assert.doesNotMatch(logs.stdout, /forked from template/);
    assert.match(logs.stdout, /restoring checkpoint/);
    assert.equal((await b.request('DELETE', `/v1/nodes/${fresh.id}`)).status, 200);
  });

  test('scaling.fork must be a boolean; the error names the field and nothing is created', async () => {
    const before = (await b.request('GET', '/v1/nodes')).body.nodes.length;
    const r = await b.request('POST', '/v1/nodes', { ...SMALL_NODE, name: 'bad-fork', checkpointId: 'small-1', scaling: { fork: 'yes' } });
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.equal(r.body.code, 'INVALID_ARGUMENT');
    assert.equal(r.body.details.field, 'scaling.fork');
    assert.equal((await b.request('GET', '/v1/nodes')).body.nodes.length, before);
  });

  test('fork-unsafe checkpoints (a thread, an open socket) fall back to fresh processes and say why', async () => {
    const [threaded, socketed] = await Promise.all([
      createNode(b, { ...SMALL_NODE, name: 'threaded', checkpointId: 'threaded' }),
      createNode(b, { ...SMALL_NODE, name: 'socketed', checkpointId: 'socketed' }),
    ]);
    for (const [n, why] of [[threaded, /thread.*poller/], [socketed, /open socket/]] as const) {
      const view = await waitFor('the warning', async () => { const x = await get(n.id); return x.warnings.some((w: string) => /fresh processes/.test(w)) ? x : undefined; }, 10_000);
      const warning = view.warnings.find((w: string) => /fresh processes/.test(w));
      assert.match(warning, why);
      assert.match(warning, /not safe to fork/);
      // served all the same, by a fresh process
      assert.deepEqual((await execute(b, n.id, { x: 41 })).body, { output: { out: 42 } });
      assert.doesNotMatch(b.cli('node', 'logs', n.name, '--lines', '20').stdout, /forked from template/);
    }
    // berth node get shows the warning
    const cli = b.cli('node', 'get', 'threaded');
    assert.equal(cli.status, 0, cli.stderr);
    assert.match(cli.stdout, /not safe to fork/);
    // a node that is safe to fork has no such warning
    assert.ok(!(await get(node.id)).warnings.some((w: string) => /fresh processes/.test(w)));
    for (const n of [threaded, socketed]) await b.request('DELETE', `/v1/nodes/${n.id}`);
  });

  test('only callers who may read a node see its warnings: another folder and an executor both get 404', async () => {
    const n = await createNode(b, { ...SMALL_NODE, name: 'threaded-2', checkpointId: 'threaded' });
    await waitFor('the warning', async () => (await get(n.id)).warnings.some((w: string) => /not safe to fork/.test(w)), 10_000);
    const token = async (folders: string[], role: string): Promise<string> => {
      const r = await b.request('POST', '/v1/tokens', { name: `t-${folders[0]}-${role}`, folders, role });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      return `Bearer ${r.body.token}`;
    };
    const other = await b.request('GET', `/v1/nodes/${n.id}`, undefined, { authorization: await token(['team-b'], 'admin') });
    assert.equal(other.status, 404, JSON.stringify(other.body));
    assert.equal(other.body.warnings, undefined);
    const executor = await b.request('GET', `/v1/nodes/${n.id}`, undefined, { authorization: await token(['default'], 'executor') });
    assert.equal(executor.status, 404, JSON.stringify(executor.body));
    assert.equal(executor.body.warnings, undefined);
    const listed = await b.request('GET', '/v1/nodes', undefined, { authorization: await token(['team-b'], 'viewer') });
    assert.deepEqual(listed.body.nodes, []);
    // control: a viewer of the folder sees them
    const viewer = await b.request('GET', `/v1/nodes/${n.id}`, undefined, { authorization: await token(['default'], 'viewer') });
    assert.equal(viewer.status, 200);
    assert.ok(viewer.body.warnings.some((w: string) => /not safe to fork/.test(w)));
    await b.request('DELETE', `/v1/nodes/${n.id}`);
  });

  test('the template runs in the sandbox, with the node\'s limits; each forked instance has a cgroup and limits of its own', { skip: sandboxSkip }, async () => {
    const n = await get(node.id);
    const inst = healthy(n)[0];
    const template = ppidOf(inst.pid);
    assert.notEqual(uidOf(template), 0);
    assert.notEqual(uidOf(template), process.getuid!());
    assert.equal(uidOf(inst.pid), uidOf(template), 'a forked instance keeps its template\'s sandbox uid');
    // Berth's files are not in its view; its own checkpoint is
    assert.ok(existsSync(join(b.home, 'admin-token')));
    assert.ok(!existsSync(`/proc/${template}/root${join(b.home, 'admin-token')}`), 'BERTH_HOME is not visible to the template');
    assert.ok(existsSync(`/proc/${template}/root/berth/checkpoint.dill`));
    assert.deepEqual(readFileSync(`/proc/${template}/environ`, 'utf8').split('\0').filter((e) => e.startsWith('BERTH')), []);
    // cgroups: the template's and each instance's, all with the node's 2 GB
    const tcg = memoryCgroup(template);
    const icg = memoryCgroup(inst.pid);
    assert.match(tcg, /\/berth-[0-9a-f]+\/tpl/);
    assert.match(icg, new RegExp(`/berth-[0-9a-f]+/${inst.id}-`));
    assert.equal(memoryLimit(tcg), 2 * 1024 ** 3);
    assert.equal(memoryLimit(icg), 2 * 1024 ** 3);
    const pidsOf = (cg: string): number[] => readFileSync(join('/sys/fs/cgroup/pids', cg, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
    assert.ok(pidsOf(cgroupOf(inst.pid, 'pids')).includes(inst.pid));
    assert.ok(!pidsOf(cgroupOf(template, 'pids')).includes(inst.pid), 'the instance left the template\'s cgroup');
  });

  test('a forked instance killed with kill -9 is replaced by a new fork; calls keep being served', async () => {
    const n = await get(node.id);
    const victim = healthy(n)[0];
    const template = ppidOf(victim.pid);
    process.kill(victim.pid, 'SIGKILL');
    const replaced = await waitFor('replaced', async () => {
      const x = await get(node.id);
      const i = x.instances.find((y: any) => y.id === victim.id);
      return i && i.status === 'Healthy' && i.pid !== victim.pid ? i : undefined;
    }, 20_000, 50);
    assert.ok(replaced.restarts >= 1);
    assert.match(replaced.lastError ?? '', /SIGKILL/);
    assert.equal(ppidOf(replaced.pid), template, 'forked again from the same template');
    for (let i = 0; i < 4; i++) assert.equal((await execute(b, node.id, { x: 0 })).status, 200);
  });

  test('a new revision gets a new template; the old one goes with its last instance', async () => {
    const n = await createNode(b, { ...SMALL_NODE, name: 'revised', checkpointId: 'small-1' });
    const oldTemplate = ppidOf(n.instances[0].pid);
    assert.equal((await b.request('PATCH', `/v1/nodes/${n.id}`, { checkpointId: 'small-2' })).status, 200);
    const done = await waitFor('rollout complete', async () => {
      const x = await get(n.id);
      return x.rollout?.state === 'Complete' && x.instances.length === 1 && x.instances[0].revision === 2 && x.instances[0].status === 'Healthy' ? x : undefined;
    }, 30_000);
    assert.deepEqual((await execute(b, n.id, { x: 1 })).body, { output: { out: 3 } });
    const newTemplate = ppidOf(done.instances[0].pid);
    assert.notEqual(newTemplate, oldTemplate);
    await waitFor('the old template gone', async () => !alive(oldTemplate), 10_000);
    assert.equal((await b.request('DELETE', `/v1/nodes/${n.id}`)).status, 200);
    await waitFor('the new template gone with the node', async () => !alive(newTemplate), 10_000);
  });
});
