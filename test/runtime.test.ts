// One suite for every runtime (as kysely runs its tests for every dialect): the cell-worker
// contract runs against `process` and `docker`; image workloads, limits, adoption and private
// registries against `docker` only. Real processes, real containers, real sockets.
//
//   node --import tsx --test test/runtime.test.ts
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import http2 from 'node:http2';
import Docker from 'dockerode';
import { createRuntime, type RuntimeName } from '../src/runtimes/index.js';
import { DockerRuntime, containerName } from '../src/runtimes/docker.js';
import type { CellWorkload, ImageWorkload, InstanceSpec, Runtime, RuntimeInstance } from '../src/runtimes/runtime.js';
import { FRAME, WorkerConnection, type Endpoint } from '../src/worker/protocol.js';
import { newId } from '../src/core/ids.js';
import { buildTestImages, TEST_IMAGES, type TestImageName } from './images/index.js';
import {
  containersOfHome, docker, dockerAvailable, pushToRegistry, removeContainersOfHome, removeImage,
  requireDocker, requireRegistryTools, startRegistry,
} from './docker-support.js';

const ROOT = resolve(import.meta.dirname, '..');
const PYTHON = process.env.BERTH_PYTHON ?? '/usr/bin/python3';
const MB = 1024 * 1024;

const CELLS = [
  'import time\ncalls = 0\nmode, arg = "echo", 0\nprint("checkpoint cell ran")\n',
  `calls += 1
if mode == "echo":
    result = arg
elif mode == "print":
    print("cell says", arg)
    result = arg
elif mode == "alloc":
    hog = bytearray(arg)
    for i in range(0, len(hog), 4096):
        hog[i] = 1
    result = len(hog)
`,
];

const homes: string[] = [];
function newHome(): string {
  const home = mkdtempSync(join(tmpdir(), 'berth-rt-'));
  homes.push(home);
  return home;
}

let checkpoint: { path: string; requires: Array<{ name: string; version: string }> } | null = null;

/** A checkpoint made the way Berth makes them: python/berth_checkpoint.py in a fresh interpreter. */
function makeCheckpoint(): { path: string; requires: Array<{ name: string; version: string }> } {
  if (checkpoint) return checkpoint;
  const dir = mkdtempSync(join(tmpdir(), 'berth-rt-ckpt-'));
  homes.push(dir);
  const out = join(dir, 'blob.dill');
  const r = spawnSync(PYTHON, ['-c', "import sys; sys.path.insert(0,'python'); import berth_checkpoint; berth_checkpoint.main()"], {
    cwd: ROOT, input: JSON.stringify({ cells: CELLS, servingCell: 1, out }), encoding: 'utf8', timeout: 60_000,
  });
  assert.equal(r.status, 0, `checkpoint maker failed: ${r.stderr}`);
  const result = JSON.parse(readFileSync(out + '.json', 'utf8'));
  checkpoint = { path: out, requires: result.requires };
  return checkpoint;
}

function cellWorkload(): CellWorkload {
  const c = makeCheckpoint();
  return {
    kind: 'cell', python: PYTHON, kernelImage: TEST_IMAGES.kernel, registryAuth: null, checkpointPath: c.path,
    code: CELLS[1]!, requires: c.requires,
    inputs: [{ name: 'mode', type: 'str' }, { name: 'arg', type: 'any' }], outputs: [{ name: 'result', type: 'any' }],
    maxResponseBytes: 16 * MB,
  };
}

function spec(workload: InstanceSpec['workload'], resources: InstanceSpec['resources'] = { cores: 1, memoryGb: 0.5, gpus: 0 }, nodeId = newId()): InstanceSpec {
  return { nodeId, instanceId: newId(), revision: 1, workload, resources };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function until<T>(what: string, fn: () => Promise<T | undefined | false | null>, timeoutMs = 20_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) { last = err; }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}${last ? `: ${last}` : ''}`);
    await sleep(everyMs);
  }
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`${what}: not within ${ms}ms`)), ms);
    p.then((v) => { clearTimeout(t); res(v); }, (e) => { clearTimeout(t); rej(e); });
  });
}

/** Connects to a worker and PINGs until it reports `ready`; returns the open connection. */
async function workerReady(endpoint: Endpoint, timeoutMs = 30_000): Promise<WorkerConnection> {
  return until(`worker at ${JSON.stringify(endpoint)} ready`, async () => {
    const conn = await WorkerConnection.open(endpoint, MB, 1000);
    const pong = JSON.parse((await within(conn.request(FRAME.PING, ''), 2000, 'PONG')).payload.toString('utf8'));
    if (pong.state === 'ready') return conn;
    conn.close();
    if (pong.state === 'failed') throw new Error(`worker failed: ${pong.error}`);
    return undefined;
  }, timeoutMs, 100);
}

async function execute(conn: WorkerConnection, input: Record<string, unknown>): Promise<{ type: number; body: any }> {
  const f = await within(conn.request(FRAME.EXECUTE, JSON.stringify({ input })), 10_000, 'EXECUTE');
  return { type: f.type, body: JSON.parse(f.payload.toString('utf8')) };
}

async function httpGet(port: number, path: string, timeoutMs = 5000): Promise<{ status: number; text: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, text: await res.text() };
}

/**
 * The image service answers on this port. Containers take a moment to listen, and Docker's
 * port proxy accepts a connection at once but may hold it for seconds while the container's
 * network comes up: short attempts, retried.
 */
async function serving(port: number, path = '/healthz', status = 200): Promise<void> {
  await until(`127.0.0.1:${port}${path} → ${status}`, async () => (await httpGet(port, path, 500)).status === status, 15_000, 50);
}

function imageWorkload(name: TestImageName, ports: number[], env: Record<string, string> = {}, image = TEST_IMAGES[name]): ImageWorkload {
  return { kind: 'image', image, registryAuth: null, env, ports };
}

// ---- the suite, once per runtime ----

interface Target {
  name: RuntimeName;
  /** Skips (or, in CI, fails) when the runtime cannot work here. */
  ready(t: TestContext): Promise<boolean>;
  /** Whatever the runtime left on the machine for this home, besides log files. */
  leftovers(home: string, instance: RuntimeInstance): Promise<string[]>;
}

const TARGETS: Target[] = [
  {
    name: 'process',
    ready: async () => true,
    leftovers: async (_home, inst) => {
      const out: string[] = [];
      if (inst.endpoint.path && existsSync(inst.endpoint.path)) out.push(`socket ${inst.endpoint.path}`);
      if (inst.pid) { try { process.kill(inst.pid, 0); out.push(`process ${inst.pid}`); } catch { /* gone */ } }
      return out;
    },
  },
  {
    name: 'docker',
    ready: (t) => requireDocker(t),
    leftovers: async (home, inst) => {
      const out = (await containersOfHome(home)).map((c) => `container ${c.Names.join(',')} (${c.State})`);
      if (inst.endpoint.path && existsSync(dirname(inst.endpoint.path))) out.push(`run dir ${dirname(inst.endpoint.path)}`);
      return out;
    },
  },
];

before(async () => {
  makeCheckpoint();
  if (await dockerAvailable()) {
    const started = Date.now();
    const reports = await buildTestImages(['kernel', 'http-echo', 'crash', 'grpc-echo', 'sse', 'unhealthy']);
    const built = reports.filter((r) => r.built);
    if (built.length) console.log(`# built ${built.map((r) => `${r.image} (${(r.sizeBytes / 1e6).toFixed(0)} MB)`).join(', ')} in ${((Date.now() - started) / 1000).toFixed(1)}s`);
  }
});

after(async () => {
  if (await dockerAvailable()) for (const home of homes) await removeContainersOfHome(home);
  for (const home of homes) rmSync(home, { recursive: true, force: true });
});

for (const target of TARGETS) {
  describe(`runtime ${target.name}`, { timeout: 120_000 }, () => {
    test('cell: the worker answers PING and EXECUTE on its endpoint; logs show what the cell printed; stop leaves nothing', async (t) => {
      if (!(await target.ready(t))) return;
      const home = newHome();
      const rt = createRuntime(target.name, home);
      assert.equal(await rt.check(), null);
      const s = spec(cellWorkload());
      const inst = await within(rt.start(s), 60_000, 'start');
      assert.equal(inst.nodeId, s.nodeId);
      assert.equal(inst.instanceId, s.instanceId);
      assert.ok(inst.endpoint.path, 'a cell instance is reached through a Unix socket');
      assert.ok(Buffer.byteLength(inst.endpoint.path) <= 107);
      const conn = await workerReady(inst.endpoint);
      if (target.name === 'docker') {
        // a cell kernel: not root, nothing writable but /tmp, no capabilities, no privilege gain
        const info = await docker().getContainer(containerName(s.instanceId)).inspect();
        assert.ok(info.Config.User && !/^0(:|$)/.test(info.Config.User) && !/^root/.test(info.Config.User), `User ${info.Config.User}`);
        assert.equal(info.HostConfig.ReadonlyRootfs, true);
        assert.ok(info.HostConfig.Tmpfs?.['/tmp'] !== undefined);
        assert.deepEqual(info.HostConfig.CapDrop, ['ALL']);
        assert.deepEqual(info.HostConfig.SecurityOpt, ['no-new-privileges:true']);
        assert.ok((info.HostConfig.PidsLimit ?? 0) > 0);
      }
      try {
        const echo = await execute(conn, { mode: 'echo', arg: { a: [1, 2, 'три'] } });
        assert.equal(echo.type, FRAME.OK);
        assert.deepEqual(echo.body, { output: { result: { a: [1, 2, 'три'] } } });
        const printed = await execute(conn, { mode: 'print', arg: 'hello from the cell' });
        assert.deepEqual(printed.body, { output: { result: 'hello from the cell' } });
        const bad = await execute(conn, { mode: 1, arg: 0 });
        assert.equal(bad.type, FRAME.CALL_ERROR);
        assert.equal(bad.body.code, 'INPUT_INVALID');
      } finally {
        conn.close();
      }
      await until('the print in the log', async () => (await rt.logs(s.nodeId, s.instanceId, 100)).includes('cell says hello from the cell'), 10_000);
      const tail = await rt.logs(s.nodeId, s.instanceId, 1);
      assert.equal(tail.split('\n').filter(Boolean).length, 1, `logs(…, 1) gives one line: ${JSON.stringify(tail)}`);

      await within(rt.stop(inst, 2000), 30_000, 'stop');
      const info = await within(inst.exited, 5000, 'exited after stop');
      assert.ok(info.code === 0 || info.signal === 'SIGTERM', `a stopped worker exits cleanly: ${JSON.stringify(info)}`);
      assert.deepEqual(await target.leftovers(home, inst), []);
      assert.deepEqual(await rt.list(), []);
      const logs = await rt.logs(s.nodeId, s.instanceId, 200);
      assert.match(logs, /cell says hello from the cell/, 'the log outlives the instance');

      await rt.cleanup(s.nodeId);
      assert.equal(await rt.logs(s.nodeId, s.instanceId, 10), '');
    });

    test('cell: kill resolves `exited` with SIGKILL; the next start of the same instance works', async (t) => {
      if (!(await target.ready(t))) return;
      const home = newHome();
      const rt = createRuntime(target.name, home);
      const s = spec(cellWorkload());
      const first = await within(rt.start(s), 60_000, 'start');
      (await workerReady(first.endpoint)).close();
      rt.kill(first);
      const info = await within(first.exited, 20_000, 'exited after kill');
      assert.equal(info.signal, 'SIGKILL', JSON.stringify(info));
      if (target.name === 'docker') assert.equal(info.code, 137);
      // a killed worker cannot remove its socket file; the process runtime replaces it on the next start
      assert.deepEqual((await target.leftovers(home, first)).filter((l) => target.name !== 'process' || !l.startsWith('socket')), []);

      // the controller restarts an instance under the same id
      const second = await within(rt.start(s), 60_000, 'restart');
      const conn = await workerReady(second.endpoint);
      const r = await execute(conn, { mode: 'echo', arg: 7 });
      assert.deepEqual(r.body, { output: { result: 7 } });
      conn.close();
      // the log holds both runs: the killed one (kept when its container went) and the live one
      const runs = (await rt.logs(s.nodeId, s.instanceId, 500)).match(/worker pid \d+ starting/g) ?? [];
      assert.equal(runs.length, 2, await rt.logs(s.nodeId, s.instanceId, 500));
      await within(rt.stop(second, 2000), 30_000, 'stop');
      assert.deepEqual(await target.leftovers(home, second), []);
    });

    test('list() returns what a restarted Berth could adopt, and nothing of another home', async (t) => {
      if (!(await target.ready(t))) return;
      const home = newHome();
      const rt = createRuntime(target.name, home);
      const s = spec(cellWorkload());
      const inst = await within(rt.start(s), 60_000, 'start');
      (await workerReady(inst.endpoint)).close();
      try {
        const other = createRuntime(target.name, newHome());
        assert.deepEqual(await other.list(), [], "another home's runtime sees none of it");
        const again = createRuntime(target.name, home); // as after `berth up` restarts
        const listed = await again.list();
        if (target.name === 'process') {
          assert.deepEqual(listed, [], 'workers die with Berth: nothing to adopt');
        } else {
          assert.equal(listed.length, 1);
          const adopted = listed[0]!;
          assert.equal(adopted.nodeId, s.nodeId);
          assert.equal(adopted.instanceId, s.instanceId);
          assert.deepEqual(adopted.endpoint, inst.endpoint);
          const conn = await workerReady(adopted.endpoint, 5000);
          assert.deepEqual((await execute(conn, { mode: 'echo', arg: 'adopted' })).body, { output: { result: 'adopted' } });
          conn.close();
          await within(again.stop(adopted, 2000), 30_000, 'stop adopted');
          const info = await within(adopted.exited, 10_000, 'adopted exited');
          assert.ok(info.code === 0, JSON.stringify(info));
        }
      } finally {
        await within(rt.stop(inst, 2000), 30_000, 'stop');
      }
      assert.deepEqual(await target.leftovers(home, inst), []);
    });

    test('a deep Berth home still gives a socket path within sun_path', async (t) => {
      if (!(await target.ready(t))) return;
      const home = join(newHome(), 'a-rather-long-directory-name-for-a-berth-home', 'and-another-level-below-it');
      mkdirSync(home, { recursive: true });
      const rt = createRuntime(target.name, home);
      const inst = await within(rt.start(spec(cellWorkload())), 60_000, 'start');
      try {
        assert.ok(Buffer.byteLength(inst.endpoint.path!) <= 107, inst.endpoint.path);
        (await workerReady(inst.endpoint)).close();
      } finally {
        await within(rt.stop(inst, 2000), 30_000, 'stop');
      }
      assert.deepEqual(await target.leftovers(home, inst), []);
    });

    test('unenforced() says what this runtime cannot give', async (t) => {
      if (!(await target.ready(t))) return;
      const rt = createRuntime(target.name, newHome());
      const cpus = availableParallelism();
      const notes = rt.unenforced({ cores: cpus + 30, memoryGb: 1, gpus: 1 });
      assert.ok(notes.length > 0);
      if (target.name === 'docker') {
        assert.ok(notes.some((n) => n.includes(`capped at ${cpus} cores: this machine has ${cpus}`)), notes.join('; '));
        assert.ok(notes.some((n) => /GPU/.test(n)), notes.join('; '));
        assert.deepEqual(rt.unenforced({ cores: 1, memoryGb: 1, gpus: 0 }), []);
      }
    });
  });
}

// ---- Docker only ----

describe('runtime docker: image workloads', { timeout: 150_000 }, () => {
  test('check() names the daemon address when it cannot reach it', async () => {
    const rt = new DockerRuntime(newHome(), { docker: new Docker({ socketPath: '/nonexistent/docker.sock' }) });
    const problem = await rt.check();
    assert.match(problem ?? '', /^Docker daemon not reachable at unix:\/\/\/nonexistent\/docker\.sock .*install docker\.io and start dockerd/);
  });

  test('http-echo is reachable on its 127.0.0.1 ports, with its env, labels and limits', async (t) => {
    if (!(await requireDocker(t))) return;
    const home = newHome();
    const rt = createRuntime('docker', home);
    const s = spec({ ...imageWorkload('http-echo', [8080, 9100], { GREETING: 'hello there' }), capabilities: ['NET_BIND_SERVICE'] }, { cores: 0.5, memoryGb: 0.25, gpus: 0 });
    const inst = await within(rt.start(s), 30_000, 'start');
    try {
      assert.equal(inst.endpoint.host, '127.0.0.1');
      assert.ok(inst.endpoint.port && inst.endpoint.port > 0);
      assert.deepEqual(inst.ports.get(8080), inst.endpoint);
      const metricsPort = inst.ports.get(9100)!.port!;
      assert.notEqual(metricsPort, inst.endpoint.port);
      await serving(inst.endpoint.port!);
      const echo = JSON.parse((await httpGet(inst.endpoint.port!, '/some/path?a=1&b=two')).text);
      assert.equal(echo.method, 'GET');
      assert.equal(echo.path, '/some/path');
      assert.deepEqual(echo.query, { a: '1', b: 'two' });
      const env = JSON.parse((await httpGet(inst.endpoint.port!, '/env')).text);
      assert.equal(env.GREETING, 'hello there');
      assert.match((await httpGet(metricsPort, '/metrics')).text, /^echo_requests_total \d+$/m);

      const info = await docker().getContainer(containerName(s.instanceId)).inspect();
      assert.equal(info.Config.Labels['berth.node-id'], s.nodeId);
      assert.equal(info.Config.Labels['berth.instance-id'], s.instanceId);
      assert.equal(info.Config.Labels['berth.home'], home);
      assert.equal(info.HostConfig.NanoCpus, 0.5e9);
      assert.equal(info.HostConfig.Memory, 0.25 * 1024 ** 3);
      // hardening: no privilege gain, every capability dropped but the one asked for, a pids limit
      assert.deepEqual(info.HostConfig.SecurityOpt, ['no-new-privileges:true']);
      assert.deepEqual(info.HostConfig.CapDrop, ['ALL']);
      assert.deepEqual(info.HostConfig.CapAdd, ['NET_BIND_SERVICE']);
      assert.ok((info.HostConfig.PidsLimit ?? 0) > 0, `PidsLimit ${info.HostConfig.PidsLimit}`);
      for (const binding of Object.values(info.HostConfig.PortBindings ?? {}) as Array<Array<{ HostIp: string }>>) {
        assert.equal(binding[0]!.HostIp, '127.0.0.1', 'published on loopback only');
      }
    } finally {
      await within(rt.stop(inst, 2000), 30_000, 'stop');
    }
    const exit = await inst.exited;
    assert.equal(exit.code, 0, JSON.stringify(exit));
    assert.deepEqual(await containersOfHome(home), []);
    assert.match(await rt.logs(s.nodeId, s.instanceId, 50), /http-echo listening on 8080/);
  });

  test('several instances of one image run side by side on different ports; CPU is capped at the machine', async (t) => {
    if (!(await requireDocker(t))) return;
    const home = newHome();
    const rt = createRuntime('docker', home);
    const nodeId = newId();
    const cpus = availableParallelism();
    const specs = [0, 1, 2].map(() => spec(imageWorkload('http-echo', [8080]), { cores: cpus + 6, memoryGb: 1, gpus: 1 }, nodeId));
    const insts = await within(Promise.all(specs.map((s) => rt.start(s))), 60_000, 'start 3');
    try {
      const ports = insts.map((i) => i.endpoint.port!);
      assert.equal(new Set(ports).size, 3, `distinct ports: ${ports}`);
      const hosts = new Set<string>();
      for (const port of ports) {
        await serving(port);
        hosts.add(JSON.parse((await httpGet(port, '/')).text).instance);
      }
      assert.equal(hosts.size, 3, 'three different containers answer');
      const info = await docker().getContainer(containerName(specs[0]!.instanceId)).inspect();
      assert.equal(info.HostConfig.NanoCpus, cpus * 1e9);
      const listed = await createRuntime('docker', home).list();
      assert.deepEqual(listed.map((i) => i.instanceId).sort(), specs.map((s) => s.instanceId).sort());
      assert.deepEqual(listed.map((i) => i.endpoint.port).sort(), [...ports].sort(), 'adoption reads the ports back');
    } finally {
      await within(Promise.all(insts.map((i) => rt.stop(i, 1000))), 30_000, 'stop 3');
    }
    assert.deepEqual(await containersOfHome(home), []);
  });

  test('crash: `exited` resolves with code 3 and the log keeps "crashing on purpose"', async (t) => {
    if (!(await requireDocker(t))) return;
    const home = newHome();
    const rt = createRuntime('docker', home);
    const s = spec(imageWorkload('crash', [8080]));
    const inst = await within(rt.start(s), 30_000, 'start');
    const info = await within(inst.exited, 20_000, 'exited');
    assert.equal(info.code, 3);
    assert.equal(info.signal, null);
    assert.match(await rt.logs(s.nodeId, s.instanceId, 20), /crashing on purpose/);
    assert.deepEqual(await containersOfHome(home), [], 'an exited container is removed once its log is kept');
  });

  test('cell over its memory limit: `exited` says OOM killed', async (t) => {
    if (!(await requireDocker(t))) return;
    const rt = createRuntime('docker', newHome());
    const s = spec(cellWorkload(), { cores: 1, memoryGb: 0.0625, gpus: 0 }); // 64 MB
    const inst = await within(rt.start(s), 60_000, 'start');
    const conn = await workerReady(inst.endpoint);
    void conn.request(FRAME.EXECUTE, JSON.stringify({ input: { mode: 'alloc', arg: 256 * MB } })).catch(() => {});
    const info = await within(inst.exited, 30_000, 'exited');
    conn.close();
    assert.equal(info.code, 137, JSON.stringify(info));
    assert.match(info.error ?? '', /OOM killed/);
  });

  test('list() removes stopped containers of its home, keeping their log; never touches another home', async (t) => {
    if (!(await requireDocker(t))) return;
    const home = newHome();
    const otherHome = newHome();
    const nodeId = newId();
    const make = async (h: string, instanceId: string): Promise<Docker.Container> => {
      const c = await docker().createContainer({
        name: containerName(instanceId), Image: TEST_IMAGES.crash,
        Labels: { 'berth.node-id': nodeId, 'berth.instance-id': instanceId, 'berth.home': h, 'berth.kind': 'image' },
      });
      await c.start();
      await within(c.wait(), 10_000, 'crash exits');
      return c;
    };
    const mine = newId();
    const theirs = newId();
    await make(home, mine);
    await make(otherHome, theirs);
    const rt = createRuntime('docker', home);
    assert.deepEqual(await rt.list(), []);
    assert.deepEqual(await containersOfHome(home), [], 'the stopped container of this home is gone');
    assert.equal((await containersOfHome(otherHome)).length, 1, "the other home's container is untouched");
    assert.match(await rt.logs(nodeId, mine, 20), /crashing on purpose/);
    // a start never replaces a container of another home that has the same name
    await assert.rejects(rt.start({ nodeId, instanceId: theirs, revision: 1, workload: imageWorkload('http-echo', [8080]), resources: { cores: 1, memoryGb: 0, gpus: 0 } }),
      /does not belong to this Berth/);
    await removeContainersOfHome(otherHome);
  });

  test('the test images serve what they promise (h2c echo, gRPC echo and health, SSE, unhealthy)', async (t) => {
    if (!(await requireDocker(t))) return;
    const rt = createRuntime('docker', newHome());
    const insts = await within(Promise.all([
      rt.start(spec(imageWorkload('http-echo', [8080, 8081]))),
      rt.start(spec(imageWorkload('grpc-echo', [50051]))),
      rt.start(spec(imageWorkload('sse', [8080]))),
      rt.start(spec(imageWorkload('unhealthy', [8080]))),
    ]), 60_000, 'start 4');
    const [echo, grpc, sse, unhealthy] = insts as [RuntimeInstance, RuntimeInstance, RuntimeInstance, RuntimeInstance];
    try {
      await serving(echo.endpoint.port!);
      await serving(sse.endpoint.port!);
      await serving(unhealthy.endpoint.port!, '/healthz', 503);

      // h2c with prior knowledge
      const h2 = await until('h2c session', () => h2Request(echo.ports.get(8081)!.port!, '/h2?x=1', 'POST', { 'x-test': 'yes' }, Buffer.from('over h2')), 10_000);
      const body = JSON.parse(h2.data.toString('utf8'));
      assert.equal(body.httpVersion, '2.0');
      assert.equal(body.method, 'POST');
      assert.equal(body.body, 'over h2');
      assert.equal(body.headers['x-test'], 'yes');

      // gRPC by hand
      const grpcPort = grpc.endpoint.port!;
      const msg = Buffer.from([0x0a, 0x02, 0x68, 0x69]); // EchoMessage{text: "hi"}
      // until the service answers whole: while the container starts, Docker's port proxy may accept and close
      const unary = await until('gRPC Echo', async () => {
        const r = await h2Request(grpcPort, '/berth.test.Echo/Echo', 'POST', { 'content-type': 'application/grpc', te: 'trailers' }, grpcFrame(msg));
        if (r.trailers['grpc-status'] === undefined) throw new Error(`an answer without trailers (status ${String(r.headers[':status'])})`);
        return r;
      }, 10_000);
      assert.deepEqual(unary.trailers['grpc-status'], '0');
      assert.deepEqual(grpcMessages(unary.data), [msg]);
      const repeat = await h2Request(grpcPort, '/berth.test.Echo/Repeat', 'POST', { 'content-type': 'application/grpc', 'x-repeat': '4' }, grpcFrame(msg));
      assert.equal(grpcMessages(repeat.data).length, 4);
      const collect = await h2Request(grpcPort, '/berth.test.Echo/Collect', 'POST', { 'content-type': 'application/grpc' },
        Buffer.concat([grpcFrame(Buffer.from([0x0a, 0x01, 0x61])), grpcFrame(msg)]));
      assert.deepEqual(grpcMessages(collect.data), [msg]);
      assert.equal(collect.trailers['x-count'], '2');
      const fail = await h2Request(grpcPort, '/berth.test.Echo/Fail', 'POST', { 'content-type': 'application/grpc' }, grpcFrame(msg));
      assert.equal(fail.headers['grpc-status'], '5');
      assert.equal(fail.headers['grpc-message'], 'no such thing');
      const health = async (service: string): Promise<Buffer[]> => grpcMessages((await h2Request(grpcPort, '/grpc.health.v1.Health/Check', 'POST',
        { 'content-type': 'application/grpc' }, grpcFrame(Buffer.concat([Buffer.from([0x0a, service.length]), Buffer.from(service)])))).data);
      assert.deepEqual(await health(''), [Buffer.from([0x08, 0x01])]);
      assert.deepEqual(await health('berth.test.Echo'), [Buffer.from([0x08, 0x01])]);
      assert.deepEqual(await health('down'), [Buffer.from([0x08, 0x02])]);

      // server-sent events arrive one by one, not at the end
      const started = Date.now();
      const res = await fetch(`http://127.0.0.1:${sse.endpoint.port}/events`, { signal: AbortSignal.timeout(10_000) });
      assert.equal(res.headers.get('content-type'), 'text/event-stream');
      const reader = res.body!.getReader();
      const first = await reader.read();
      const firstAt = Date.now() - started;
      let text = Buffer.from(first.value!).toString('utf8');
      for (let i = 0; i < 50; i++) {
        const r = await reader.read();
        if (r.done) break;
        text += Buffer.from(r.value).toString('utf8');
      }
      assert.match(text, /^data: 1\n\n/);
      assert.equal(text.match(/^data: \d+$/gm)?.length, 10);
      assert.ok(firstAt < 800, `the first event came after ${firstAt}ms`);
    } finally {
      await within(Promise.all(insts.map((i) => rt.stop(i, 1000))), 30_000, 'stop 4');
    }
  });

  test('kernel image: python3 has json, ssl, hashlib, ctypes, socket, threading, importlib.metadata and dill', async (t) => {
    if (!(await requireDocker(t))) return;
    const c = await docker().createContainer({
      Image: TEST_IMAGES.kernel,
      Cmd: ['python3', '-c', "import json, ssl, hashlib, ctypes, socket, threading, importlib.metadata, dill; print(importlib.metadata.version('dill'))"],
      HostConfig: { AutoRemove: false },
    });
    try {
      await c.start();
      const r = await within(c.wait(), 20_000, 'python in the kernel image');
      const out = (await c.logs({ stdout: true, stderr: true, follow: false })).toString('utf8');
      assert.equal(r.StatusCode, 0, out);
      assert.match(out, /\d+\.\d+/);
    } finally {
      await c.remove({ force: true });
    }
  });
});

describe('runtime docker: private registries', { timeout: 120_000 }, () => {
  test('pulls with the right secret; a wrong one rejects start with the registry\'s reason', async (t) => {
    if (!(await requireRegistryTools(t))) return;
    const registry = await startRegistry({ user: 'berth', password: 's3cret-pass' });
    const home = newHome();
    const rt = createRuntime('docker', home);
    let pushed = '';
    try {
      pushed = await pushToRegistry(TEST_IMAGES['http-echo'], registry, 'echo');
      const image = `${registry.host}/echo`;
      await removeImage(pushed);

      const wrong = spec({ kind: 'image', image, registryAuth: { username: 'berth', password: 'wrong' }, env: {}, ports: [8080] });
      await assert.rejects(within(rt.start(wrong), 60_000, 'start with a wrong password'), (err: Error) => {
        assert.match(err.message, new RegExp(`^pull ${image.replace(/[.]/g, '\\.')}: .*(unauthorized|authentication required)`), err.message);
        return true;
      });
      assert.match(await rt.logs(wrong.nodeId, wrong.instanceId, 5), /start failed: pull .*(unauthorized|authentication required)/, 'the instance log says why');
      const none = spec({ kind: 'image', image, registryAuth: null, env: {}, ports: [8080] });
      await assert.rejects(within(rt.start(none), 60_000, 'start without credentials'), /^Error: pull .*(unauthorized|authentication required|no basic auth)/);
      const missing = spec({ kind: 'image', image: `${registry.host}/nope:1`, registryAuth: { username: 'berth', password: 's3cret-pass' }, env: {}, ports: [8080] });
      await assert.rejects(within(rt.start(missing), 60_000, 'start of an unknown image'), /^Error: pull 127\.0\.0\.1:\d+\/nope:1: .*(not found|unknown)/i);
      assert.deepEqual(await containersOfHome(home), [], 'a failed pull leaves no container');

      await removeImage(pushed);
      const right = spec({ kind: 'image', image, registryAuth: { username: 'berth', password: 's3cret-pass' }, env: {}, ports: [8080] });
      const inst = await within(rt.start(right), 60_000, 'start with the right password');
      try {
        await serving(inst.endpoint.port!);
      } finally {
        await within(rt.stop(inst, 1000), 30_000, 'stop');
      }
    } finally {
      if (pushed) await removeImage(pushed).catch(() => {});
      await registry.stop();
    }
  });
});

// ---- small HTTP/2 + gRPC client helpers ----

function h2Request(port: number, path: string, method: string, headers: Record<string, string>, body: Buffer): Promise<{ headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders; data: Buffer }> {
  return new Promise((resolveP, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const timer = setTimeout(() => { session.destroy(); reject(new Error(`h2 ${path}: no answer in 5s`)); }, 5000);
    session.on('error', (err) => { clearTimeout(timer); reject(err); });
    const req = session.request({ ':method': method, ':path': path, ...headers });
    let responseHeaders: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    req.on('response', (h) => { responseHeaders = h; });
    req.on('trailers', (h) => { trailers = h; });
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => { clearTimeout(timer); session.close(); resolveP({ headers: responseHeaders, trailers, data: Buffer.concat(chunks) }); });
    req.on('error', (err) => { clearTimeout(timer); session.destroy(); reject(err); });
    req.end(body);
  });
}

function grpcFrame(message: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.writeUInt32BE(message.length, 1);
  return Buffer.concat([header, message]);
}

function grpcMessages(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let i = 0;
  while (i + 5 <= data.length) {
    const len = data.readUInt32BE(i + 1);
    out.push(data.subarray(i + 5, i + 5 + len));
    i += 5 + len;
  }
  return out;
}
