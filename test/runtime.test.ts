// One suite for every runtime (as kysely runs its tests for every dialect): the cell-worker
// contract runs against `process`, `docker` and `swarm` (TCP workers on the cluster, their
// checkpoint fetched from a grants server on the bridge); image workloads (endpoints, env, labels,
// limits, adoption, crashes, every protocol of the test images) against `docker` and
// `swarm` — the latter on a three-host Swarm the suite builds (test/cluster-support.ts);
// private registries and the Docker daemon's specifics against `docker` only.
// Real processes, real containers, real sockets.
//
//   node --import tsx --test test/runtime.test.ts
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { createServer as createHttpServer } from 'node:http';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import http2 from 'node:http2';
import Docker from 'dockerode';
import { createRuntime, type RuntimeName } from '../src/runtimes/index.js';
import { DockerRuntime, containerName } from '../src/runtimes/docker.js';
import type { CellWorkload, ImageWorkload, InstanceSpec, Runtime, RuntimeInstance } from '../src/runtimes/runtime.js';
import { FRAME, WorkerConnection, type Endpoint } from '../src/worker/protocol.js';
import { newId } from '../src/core/ids.js';
import { SwarmRuntime, serviceName } from '../src/runtimes/swarm.js';
import { buildTestImages, TEST_IMAGES, type TestImageName } from './images/index.js';
import { BRIDGE_ADDR, requireCluster, startTestCluster, type TestCluster } from './cluster-support.js';
import { createServer as createNetServer, connect as netConnect } from 'node:net';
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

function checkpointSha256(): string {
  return createHash('sha256').update(readFileSync(makeCheckpoint().path)).digest('hex');
}

/**
 * Berth's checkpoint route for a runtime's grants, on the cluster's bridge (where the Swarm's
 * machines reach this process): GET /internal/v1/instances/{id}/checkpoint with the instance secret.
 */
async function serveCheckpoints(runtimes: Runtime | Runtime[]): Promise<{ port: number; close(): void; onFetch: (id: string) => void }> {
  const all = (): Runtime[] => (Array.isArray(runtimes) ? runtimes : [runtimes]);
  const out = { port: 0, close: () => undefined as void, onFetch: (_id: string): void => undefined };
  const server = createHttpServer((req, res) => {
    const m = /^\/internal\/v1\/instances\/([^/]+)\/checkpoint$/.exec(req.url ?? '');
    const token = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '')?.[1];
    const grant = m && token ? all().map((rt) => rt.checkpointGrants!.check(decodeURIComponent(m[1]!), token)).find(Boolean) ?? null : null;
    if (!grant) { res.writeHead(401).end(); return; }
    out.onFetch(decodeURIComponent(m![1]!));
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    createReadStream(grant.path).pipe(res);
  });
  await new Promise<void>((r) => server.listen(0, BRIDGE_ADDR, () => r()));
  out.port = (server.address() as { port: number }).port;
  out.close = () => { server.close(); };
  return out;
}

function cellWorkload(): CellWorkload {
  const c = makeCheckpoint();
  return {
    kind: 'cell', python: PYTHON, kernelImage: TEST_IMAGES.kernel, registryAuth: null, checkpointPath: c.path, checkpointSha256: checkpointSha256(),
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

/** host:port of an endpoint (a bare port: on 127.0.0.1). */
function addr(e: Endpoint | number): string {
  return typeof e === 'number' ? `127.0.0.1:${e}` : `${e.host ?? '127.0.0.1'}:${e.port}`;
}

async function httpGet(port: Endpoint | number, path: string, timeoutMs = 5000): Promise<{ status: number; text: string }> {
  const res = await fetch(`http://${addr(port)}${path}`, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, text: await res.text() };
}

/**
 * The image service answers on this port. Containers take a moment to listen, and Docker's
 * port proxy accepts a connection at once but may hold it for seconds while the container's
 * network comes up: short attempts, retried.
 */
async function serving(port: Endpoint | number, path = '/healthz', status = 200): Promise<void> {
  await until(`${addr(port)}${path} → ${status}`, async () => (await httpGet(port, path, 500)).status === status, 15_000, 50);
}

function imageWorkload(name: TestImageName, ports: number[], env: Record<string, string> = {}, image = TEST_IMAGES[name]): ImageWorkload {
  return { kind: 'image', image, registryAuth: null, env, ports };
}

// ---- the suite, once per runtime ----

interface Target {
  name: RuntimeName;
  /** Skips (or, in CI, fails) when the runtime cannot work here. */
  ready(t: TestContext): Promise<boolean>;
  /** A runtime of this home (default: createRuntime). */
  runtime?(home: string): Runtime;
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
  {
    name: 'swarm',
    ready: async (t) => {
      if (!(await IMAGE_TARGETS[1]!.ready(t))) return false;
      sharedGrants ??= await serveCheckpoints(swarmRuntimes);
      return true;
    },
    // a Swarm runtime whose workers fetch from the shared grants server (as from `berth up` on the bridge)
    runtime: (home) => {
      const rt = IMAGE_TARGETS[1]!.runtime(home);
      rt.checkpointGrants!.serveAt(`http://${BRIDGE_ADDR}:${sharedGrants!.port}`);
      swarmRuntimes.push(rt);
      return rt;
    },
    leftovers: async (home) => IMAGE_TARGETS[1]!.leftovers(home),
  },
];
/** Swarm runtimes of the shared suite, whose grants the shared checkpoint server answers for. */
const swarmRuntimes: Runtime[] = [];
let sharedGrants: Awaited<ReturnType<typeof serveCheckpoints>> | null = null;

interface ImageTarget {
  name: 'docker' | 'swarm';
  /** Skips (or, in CI, fails) when the runtime cannot work here; builds the Swarm test cluster on first use. */
  ready(t: TestContext): Promise<boolean>;
  runtime(home: string): Runtime;
  /** What the runtime asked of the engine for an instance. */
  inspect(instanceId: string): Promise<{ labels: Record<string, string>; nanoCpus: number; memory: number; capDrop: string[]; capAdd: string[]; pidsLimit: number }>;
  /** Containers (docker) or services (swarm) of this home still there. */
  leftovers(home: string): Promise<string[]>;
}

const SWARM_IMAGES: TestImageName[] = ['http-echo', 'crash', 'grpc-echo', 'sse', 'unhealthy', 'kernel'];
let cluster: Promise<TestCluster> | null = null;
function swarmCluster(): Promise<TestCluster> {
  cluster ??= (async () => {
    const started = Date.now();
    const c = await startTestCluster({ hosts: 3 });
    try {
      await c.loadImages(SWARM_IMAGES.map((n) => TEST_IMAGES[n]));
    } catch (err) {
      await c.stop();
      throw err;
    }
    console.log(`# Swarm test cluster (${c.hosts.map((h) => h.addr).join(', ')}) up with the test images in ${((Date.now() - started) / 1000).toFixed(1)}s`);
    // A fetch waiting on a cluster address holds no ref'd handle here (the daemons are
    // detached), so node:test would end the file mid-test: the cluster keeps the loop alive.
    const alive = setInterval(() => undefined, 1000);
    const stop = c.stop.bind(c);
    c.stop = async () => { clearInterval(alive); await stop(); };
    return c;
  })();
  return cluster;
}
function swarmDocker(c: TestCluster): Docker {
  return new Docker({ socketPath: c.managerDockerHost.replace(/^unix:\/\//, '') });
}

const IMAGE_TARGETS: ImageTarget[] = [
  {
    name: 'docker',
    ready: (t) => requireDocker(t),
    runtime: (home) => createRuntime('docker', home),
    inspect: async (instanceId) => {
      const info = await docker().getContainer(containerName(instanceId)).inspect();
      return {
        labels: info.Config.Labels, nanoCpus: info.HostConfig.NanoCpus ?? 0, memory: info.HostConfig.Memory ?? 0,
        capDrop: info.HostConfig.CapDrop ?? [], capAdd: info.HostConfig.CapAdd ?? [], pidsLimit: info.HostConfig.PidsLimit ?? 0,
      };
    },
    leftovers: async (home) => (await containersOfHome(home)).map((c) => `container ${c.Names.join(',')} (${c.State})`),
  },
  {
    name: 'swarm',
    ready: async (t) => {
      if (!(await requireDocker(t)) || !requireCluster(t)) return false;
      swarmClient ??= swarmDocker(await swarmCluster());
      return true;
    },
    runtime: (home) => {
      if (!swarmClient) throw new Error('the Swarm test cluster is not up');
      return new SwarmRuntime(home, { docker: swarmClient });
    },
    inspect: async (instanceId) => {
      const info = await swarmClient!.getService(serviceName(instanceId)).inspect() as {
        Spec: { Labels: Record<string, string>; TaskTemplate: { ContainerSpec: { CapabilityDrop?: string[]; CapabilityAdd?: string[] }; Resources: { Limits: { NanoCPUs?: number; MemoryBytes?: number; Pids?: number } } } };
      };
      const task = info.Spec.TaskTemplate;
      return {
        labels: info.Spec.Labels, nanoCpus: task.Resources.Limits.NanoCPUs ?? 0, memory: task.Resources.Limits.MemoryBytes ?? 0,
        capDrop: task.ContainerSpec.CapabilityDrop ?? [], capAdd: task.ContainerSpec.CapabilityAdd ?? [], pidsLimit: task.Resources.Limits.Pids ?? 0,
      };
    },
    leftovers: async (home) => {
      const filters = { label: [`berth.home=${home}`] };
      const services = await swarmClient!.listServices({ filters });
      const secrets = await swarmClient!.listSecrets({ filters }) as any[];
      const configs = await swarmClient!.listConfigs({ filters }) as any[];
      return [...services.map((s) => `service ${s.Spec?.Name}`), ...secrets.map((s) => `secret ${s.Spec?.Name}`), ...configs.map((s) => `config ${s.Spec?.Name}`)];
    },
  },
];
let swarmClient: Docker | null = null;

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
  sharedGrants?.close();
  if (cluster) await (await cluster.catch(() => null))?.stop();
  if (await dockerAvailable()) for (const home of homes) await removeContainersOfHome(home);
  for (const home of homes) rmSync(home, { recursive: true, force: true });
});

for (const target of TARGETS) {
  describe(`runtime ${target.name}`, { timeout: target.name === 'swarm' ? 240_000 : 120_000 }, () => {
    test('cell: the worker answers PING and EXECUTE on its endpoint; logs show what the cell printed; stop leaves nothing', async (t) => {
      if (!(await target.ready(t))) return;
      const home = newHome();
      const rt = target.runtime?.(home) ?? createRuntime(target.name, home);
      assert.equal(await rt.check(), null);
      const s = spec(cellWorkload());
      const inst = await within(rt.start(s), 60_000, 'start');
      assert.equal(inst.nodeId, s.nodeId);
      assert.equal(inst.instanceId, s.instanceId);
      if (target.name === 'swarm') {
        assert.ok(inst.endpoint.host && inst.endpoint.port && inst.endpoint.secret, `a cell instance on a Swarm machine is reached over TCP with its secret: ${JSON.stringify(inst.endpoint)}`);
      } else {
        assert.ok(inst.endpoint.path, 'a cell instance is reached through a Unix socket');
        assert.ok(Buffer.byteLength(inst.endpoint.path) <= 107);
      }
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
      const rt = target.runtime?.(home) ?? createRuntime(target.name, home);
      const s = spec(cellWorkload());
      const first = await within(rt.start(s), 60_000, 'start');
      (await workerReady(first.endpoint)).close();
      rt.kill(first);
      const info = await within(first.exited, 20_000, 'exited after kill');
      // Swarm cannot signal a task: its kill removes the service (SIGTERM, SIGKILL 2 s later)
      if (target.name !== 'swarm') assert.equal(info.signal, 'SIGKILL', JSON.stringify(info));
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
      const rt = target.runtime?.(home) ?? createRuntime(target.name, home);
      const s = spec(cellWorkload());
      const inst = await within(rt.start(s), 60_000, 'start');
      (await workerReady(inst.endpoint)).close();
      try {
        const other = target.runtime?.(newHome()) ?? createRuntime(target.name, newHome());
        assert.deepEqual(await other.list(), [], "another home's runtime sees none of it");
        const again = target.runtime?.(home) ?? createRuntime(target.name, home); // as after `berth up` restarts
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
      if (target.name === 'swarm') return t.skip('no socket on the Swarm runtime: TCP workers');
      if (!(await target.ready(t))) return;
      const home = join(newHome(), 'a-rather-long-directory-name-for-a-berth-home', 'and-another-level-below-it');
      mkdirSync(home, { recursive: true });
      const rt = target.runtime?.(home) ?? createRuntime(target.name, home);
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
      const rt = target.runtime?.(newHome()) ?? createRuntime(target.name, newHome());
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

// ---- image workloads: every container runtime (docker on this machine, swarm on the test cluster) ----

for (const target of IMAGE_TARGETS) {
  describe(`runtime ${target.name}: image workloads`, { timeout: 180_000 }, () => {
      test('http-echo is reachable on its published ports, with its env, labels and limits', async (t) => {
        if (!(await target.ready(t))) return;
        const home = newHome();
        const rt = target.runtime(home);
        const s = spec({ ...imageWorkload('http-echo', [8080, 9100], { GREETING: 'hello there' }), capabilities: ['NET_BIND_SERVICE'] }, { cores: 0.5, memoryGb: 0.25, gpus: 0 });
        const inst = await within(rt.start(s), 30_000, 'start');
        try {
          if (target.name === 'docker') assert.equal(inst.endpoint.host, '127.0.0.1');
          assert.ok(inst.endpoint.port && inst.endpoint.port > 0);
          assert.deepEqual(inst.ports.get(8080), inst.endpoint);
          const metrics = inst.ports.get(9100)!;
          assert.notEqual(metrics.port, inst.endpoint.port);
          await serving(inst.endpoint);
          const echo = JSON.parse((await httpGet(inst.endpoint, '/some/path?a=1&b=two')).text);
          assert.equal(echo.method, 'GET');
          assert.equal(echo.path, '/some/path');
          assert.deepEqual(echo.query, { a: '1', b: 'two' });
          const env = JSON.parse((await httpGet(inst.endpoint, '/env')).text);
          assert.equal(env.GREETING, 'hello there');
          assert.match((await httpGet(metrics, '/metrics')).text, /^echo_requests_total \d+$/m);

          const info = await target.inspect(s.instanceId);
          assert.equal(info.labels['berth.node-id'], s.nodeId);
          assert.equal(info.labels['berth.instance-id'], s.instanceId);
          assert.equal(info.labels['berth.home'], home);
          assert.equal(info.nanoCpus, 0.5e9);
          assert.equal(info.memory, 0.25 * 1024 ** 3);
          // hardening: every capability dropped but the one asked for, a pids limit
          assert.deepEqual(info.capDrop, ['ALL']);
          assert.deepEqual(info.capAdd, ['NET_BIND_SERVICE']);
          assert.ok(info.pidsLimit > 0, `PidsLimit ${info.pidsLimit}`);
          if (target.name === 'docker') {
            const c = await docker().getContainer(containerName(s.instanceId)).inspect();
            assert.deepEqual(c.HostConfig.SecurityOpt, ['no-new-privileges:true']);
            for (const binding of Object.values(c.HostConfig.PortBindings ?? {}) as Array<Array<{ HostIp: string }>>) {
              assert.equal(binding[0]!.HostIp, '127.0.0.1', 'published on loopback only');
            }
          }
        } finally {
          await within(rt.stop(inst, 2000), 30_000, 'stop');
        }
        const exit = await inst.exited;
        assert.equal(exit.code, 0, JSON.stringify(exit));
        assert.deepEqual(await target.leftovers(home), []);
        assert.match(await rt.logs(s.nodeId, s.instanceId, 50), /http-echo listening on 8080/);
      });


      test('several instances of one image run side by side on different endpoints; CPU is capped at the machine', async (t) => {
        if (!(await target.ready(t))) return;
        const home = newHome();
        const rt = target.runtime(home);
        const nodeId = newId();
        const cpus = availableParallelism();
        const specs = [0, 1, 2].map(() => spec(imageWorkload('http-echo', [8080]), { cores: cpus + 6, memoryGb: 1, gpus: 1 }, nodeId));
        const insts = await within(Promise.all(specs.map((s) => rt.start(s))), 60_000, 'start 3');
        try {
          const ports = insts.map((i) => `${i.endpoint.host}:${i.endpoint.port}`);
          assert.equal(new Set(ports).size, 3, `distinct endpoints: ${ports}`);
          const hosts = new Set<string>();
          for (const inst of insts) {
            await serving(inst.endpoint);
            hosts.add(JSON.parse((await httpGet(inst.endpoint, '/')).text).instance);
          }
          assert.equal(hosts.size, 3, 'three different containers answer');
          assert.equal((await target.inspect(specs[0]!.instanceId)).nanoCpus, cpus * 1e9);
          const listed = await target.runtime(home).list();
          assert.deepEqual(listed.map((i) => i.instanceId).sort(), specs.map((s) => s.instanceId).sort());
          assert.deepEqual(listed.map((i) => `${i.endpoint.host}:${i.endpoint.port}`).sort(), [...ports].sort(), 'adoption reads the endpoints back');
        } finally {
          await within(Promise.all(insts.map((i) => rt.stop(i, 1000))), 30_000, 'stop 3');
        }
        assert.deepEqual(await target.leftovers(home), []);
      });


      test('crash: `exited` resolves with code 3 and the log keeps "crashing on purpose"', async (t) => {
        if (!(await target.ready(t))) return;
        const home = newHome();
        const rt = target.runtime(home);
        const s = spec(imageWorkload('crash', [8080]));
        const inst = await within(rt.start(s), 30_000, 'start');
        const info = await within(inst.exited, 20_000, 'exited');
        assert.equal(info.code, 3);
        assert.equal(info.signal, null);
        assert.match(await rt.logs(s.nodeId, s.instanceId, 20), /crashing on purpose/);
        // Swarm keeps the service (and restarts its task) until Berth stops the instance
        if (target.name === 'swarm') await within(rt.stop(inst, 1000), 30_000, 'stop');
        assert.deepEqual(await target.leftovers(home), [], 'an exited instance leaves nothing once its log is kept');
      });


      test('the test images serve what they promise (h2c echo, gRPC echo and health, SSE, unhealthy)', async (t) => {
        if (!(await target.ready(t))) return;
        const rt = target.runtime(newHome());
        const insts = await within(Promise.all([
          rt.start(spec(imageWorkload('http-echo', [8080, 8081]))),
          rt.start(spec(imageWorkload('grpc-echo', [50051]))),
          rt.start(spec(imageWorkload('sse', [8080]))),
          rt.start(spec(imageWorkload('unhealthy', [8080]))),
        ]), 60_000, 'start 4');
        const [echo, grpc, sse, unhealthy] = insts as [RuntimeInstance, RuntimeInstance, RuntimeInstance, RuntimeInstance];
        try {
          await serving(echo.endpoint);
          await serving(sse.endpoint);
          await serving(unhealthy.endpoint, '/healthz', 503);

          // h2c with prior knowledge
          const h2 = await until('h2c session', () => h2Request(echo.ports.get(8081)!, '/h2?x=1', 'POST', { 'x-test': 'yes' }, Buffer.from('over h2')), 10_000);
          const body = JSON.parse(h2.data.toString('utf8'));
          assert.equal(body.httpVersion, '2.0');
          assert.equal(body.method, 'POST');
          assert.equal(body.body, 'over h2');
          assert.equal(body.headers['x-test'], 'yes');

          // gRPC by hand
          const grpcPort = grpc.endpoint;
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
          const res = await fetch(`http://${sse.endpoint.host}:${sse.endpoint.port}/events`, { signal: AbortSignal.timeout(10_000) });
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
  });
}

// ---- Swarm only ----

describe('runtime swarm: manager, cells, placement', { timeout: 240_000 }, () => {
  test('check() wants a Swarm manager; a cell needs a URL the machines reach for its checkpoint', async (t) => {
    if (!(await IMAGE_TARGETS[1]!.ready(t))) return;
    const c = await swarmCluster();
    const worker = new SwarmRuntime(newHome(), { docker: new Docker({ socketPath: c.hosts[1]!.dockerHost.replace(/^unix:\/\//, '') }) });
    assert.match((await worker.check()) ?? '', /is a Swarm worker, not a manager: point DOCKER_HOST at a manager/);
    assert.match((await new SwarmRuntime(newHome(), { docker: docker() }).check()) ?? '', /is not part of a Swarm/);
    const rt = IMAGE_TARGETS[1]!.runtime(newHome());
    assert.equal(await rt.check(), null);
    assert.equal(rt.supportsCells, true);
    const cell = spec({ ...cellWorkload(), checkpointSha256: checkpointSha256() });
    // Berth not listening (or over TLS): no checkpoint URL at all
    await assert.rejects(rt.start(cell), /fetch their checkpoint from Berth over plain HTTP/);
    // loopback only: no other machine reaches it
    rt.checkpointGrants!.serveAt('http://127.0.0.1:7777', { host: '127.0.0.1', port: 7777, advertiseUrl: null });
    await assert.rejects(rt.start(cell), /listens on 127\.0\.0\.1 only \(loopback\): start it with --host 0\.0\.0\.0 .*--advertise-url/);
    rt.checkpointGrants!.serveAt('http://127.0.0.1:7777', { host: '0.0.0.0', port: 7777, advertiseUrl: 'http://localhost:7777' });
    await assert.rejects(rt.start(cell), /--advertise-url http:\/\/localhost:7777 is a loopback address/);
    assert.deepEqual(await IMAGE_TARGETS[1]!.leftovers(newHome()), []);
  });

  test('cell: a service of the kernel image on some machine; worker on TCP behind the secret, checkpoint fetched from Berth; adopted by list(); stop leaves nothing', async (t) => {
    if (!(await IMAGE_TARGETS[1]!.ready(t))) return;
    const c = await swarmCluster();
    const home = newHome();
    const rt = IMAGE_TARGETS[1]!.runtime(home);
    const served = await serveCheckpoints(rt);
    const fetched: string[] = [];
    served.onFetch = (id) => fetched.push(id);
    try {
      // Berth on the wildcard address: the runtime gives the workers its address towards the Swarm
      rt.checkpointGrants!.serveAt(`http://127.0.0.1:${served.port}`, { host: '0.0.0.0', port: served.port, advertiseUrl: null });
      const s = spec({ ...cellWorkload(), checkpointSha256: checkpointSha256() }, { cores: 0.2, memoryGb: 0.25, gpus: 0 });
      const inst = await within(rt.start(s), 90_000, 'start');
      assert.ok(c.hosts.some((h) => h.addr === inst.endpoint.host), `on a machine of the Swarm: ${JSON.stringify(inst.endpoint)}`);
      assert.ok(inst.endpoint.port && /^[0-9a-f]{64}$/.test(inst.endpoint.secret ?? ''), 'a TCP endpoint with the instance secret');
      assert.equal(inst.ports.size, 0);
      const conn = await workerReady(inst.endpoint, 60_000).catch(async (err: Error) => {
        throw new Error(`${err.message}\ninstance log:\n${await rt.logs(s.nodeId, s.instanceId, 50)}`);
      });
      assert.deepEqual(fetched, [s.instanceId], 'the worker fetched its checkpoint from Berth');
      try {
        assert.deepEqual((await execute(conn, { mode: 'echo', arg: { a: [1, 'три'] } })).body, { output: { result: { a: [1, 'три'] } } });
        assert.deepEqual((await execute(conn, { mode: 'print', arg: 'hello from the swarm' })).body, { output: { result: 'hello from the swarm' } });
      } finally {
        conn.close();
      }
      // nothing without the secret, nor with another one
      for (const e of [{ host: inst.endpoint.host, port: inst.endpoint.port }, { ...inst.endpoint, secret: 'ab'.repeat(32) }]) {
        const raw = await WorkerConnection.open(e, MB, 2000).catch((err: Error) => err);
        if (raw instanceof Error) continue; // refused during the handshake
        await assert.rejects(within(raw.request(FRAME.PING, ''), 3000, 'PING without the secret'));
        raw.close();
      }
      // what Swarm was told: a kernel that is not root, nothing writable but /tmp, and the secret in no env or label
      const info = await swarmClient!.getService(serviceName(s.instanceId)).inspect() as any;
      const cs = info.Spec.TaskTemplate.ContainerSpec;
      assert.equal(cs.User, '65534:65534');
      assert.equal(cs.ReadOnly, true);
      assert.deepEqual(cs.CapabilityDrop, ['ALL']);
      assert.equal(cs.Secrets.length, 1);
      assert.equal(cs.Configs.length, 3);
      assert.ok(!JSON.stringify(info).includes(inst.endpoint.secret!), 'the secret is not in the service spec');
      await until('the print in the log', async () => (await rt.logs(s.nodeId, s.instanceId, 100)).includes('cell says hello from the swarm'), 15_000);

      // a restarted Berth of the same home adopts it, secret recomputed
      const again = IMAGE_TARGETS[1]!.runtime(home);
      const listed = await again.list();
      assert.equal(listed.length, 1);
      assert.deepEqual(listed[0]!.endpoint, inst.endpoint);
      assert.ok(again.checkpointGrants!.check(s.instanceId, inst.endpoint.secret!), 'the adopting runtime grants the checkpoint again (Swarm may restart the task)');
      const conn2 = await workerReady(listed[0]!.endpoint, 5000);
      assert.deepEqual((await execute(conn2, { mode: 'echo', arg: 'adopted' })).body, { output: { result: 'adopted' } });
      conn2.close();
      assert.deepEqual(await IMAGE_TARGETS[1]!.runtime(newHome()).list(), [], "another home's runtime sees none of it");

      await within(again.stop(listed[0]!, 2000), 30_000, 'stop');
      await within(inst.exited, 10_000, 'the first handle sees it end too').catch(() => undefined);
      assert.equal(again.checkpointGrants!.check(s.instanceId, inst.endpoint.secret!), null, 'the grant ends with the service');
      assert.deepEqual(await IMAGE_TARGETS[1]!.leftovers(home), []);
      assert.match(await rt.logs(s.nodeId, s.instanceId, 200), /cell says hello from the swarm/, 'the log outlives the instance');
    } finally {
      served.close();
    }
  });

  test('placement: constraints are honoured; spread puts one instance per zone', async (t) => {
    if (!(await IMAGE_TARGETS[1]!.ready(t))) return;
    const c = await swarmCluster();
    const home = newHome();
    const rt = IMAGE_TARGETS[1]!.runtime(home);
    const nodeId = newId();
    const spread = [0, 1, 2].map(() => ({ ...spec(imageWorkload('http-echo', [8080]), { cores: 0.1, memoryGb: 0.1, gpus: 0 }, nodeId), placement: { constraints: [], spread: 'zone' } }));
    const pinned = { ...spec(imageWorkload('http-echo', [8080]), { cores: 0.1, memoryGb: 0.1, gpus: 0 }), placement: { constraints: ['node.labels.zone==z3'] } };
    const insts = await within(Promise.all([...spread, pinned].map((s) => rt.start(s))), 90_000, 'start 4');
    try {
      const zoneOf = (i: RuntimeInstance): string => `z${c.hosts.findIndex((h) => h.addr === i.endpoint.host) + 1}`;
      assert.deepEqual(insts.slice(0, 3).map(zoneOf).sort(), ['z1', 'z2', 'z3'], 'one per zone');
      assert.equal(zoneOf(insts[3]!), 'z3');
      for (const i of insts) await serving(i.endpoint);
    } finally {
      await within(Promise.all(insts.map((i) => rt.stop(i, 1000))), 30_000, 'stop');
    }
    assert.deepEqual(await IMAGE_TARGETS[1]!.leftovers(home), []);
  });

  test('private registry: every machine pulls with the node\'s credentials; wrong ones fail the start with the registry\'s reason', async (t) => {
    if (!(await IMAGE_TARGETS[1]!.ready(t)) || !(await requireRegistryTools(t))) return;
    await swarmCluster();
    const registry = await startRegistry({ user: 'berth', password: 's3cret-pass' });
    // the registry listens on 127.0.0.1 (where the main daemon pushes); the hosts reach it
    // through this forwarder on the bridge address (an insecure registry range of their daemons)
    const forwarder = createNetServer((client) => {
      const upstream = netConnect(Number(registry.host.split(':')[1]), '127.0.0.1');
      client.pipe(upstream).pipe(client);
      client.on('error', () => upstream.destroy());
      upstream.on('error', () => client.destroy());
    });
    await new Promise<void>((r) => forwarder.listen(0, BRIDGE_ADDR, () => r()));
    const hostOnBridge = `${BRIDGE_ADDR}:${(forwarder.address() as { port: number }).port}`;
    let pushed = '';
    const home = newHome();
    const rt = IMAGE_TARGETS[1]!.runtime(home);
    try {
      pushed = await pushToRegistry(TEST_IMAGES['http-echo'], registry, 'swarm-echo');
      const image = `${hostOnBridge}/swarm-echo:latest`;
      const wrong = spec({ kind: 'image', image, registryAuth: { username: 'berth', password: 'wrong' }, env: {}, ports: [8080] });
      await assert.rejects(within(rt.start(wrong), 90_000, 'start with a wrong password'), (err: Error) => {
        assert.match(err.message, /Swarm could not start service berth-\w+: .*(unauthorized|authentication required|No such image|not found|denied)/i, err.message);
        return true;
      });
      assert.deepEqual(await IMAGE_TARGETS[1]!.leftovers(home), [], 'a failed start leaves no service');
      // three instances spread over the three machines: each one pulls
      const nodeId = newId();
      const right = [0, 1, 2].map(() => ({ ...spec({ kind: 'image', image, registryAuth: { username: 'berth', password: 's3cret-pass' }, env: {}, ports: [8080] }, { cores: 0.1, memoryGb: 0.1, gpus: 0 }, nodeId), placement: { constraints: [], spread: 'zone' } }));
      const insts = await within(Promise.all(right.map((s) => rt.start(s))), 90_000, 'start with the right password');
      try {
        assert.equal(new Set(insts.map((i) => i.endpoint.host)).size, 3, 'on three machines');
        for (const i of insts) await serving(i.endpoint);
      } finally {
        await within(Promise.all(insts.map((i) => rt.stop(i, 1000))), 30_000, 'stop');
      }
    } finally {
      forwarder.close();
      if (pushed) await removeImage(pushed).catch(() => {});
      await registry.stop();
    }
  });

  // last: it leaves the cluster one host short
  test('a machine dies: `exited` resolves; the next start of the same instance runs elsewhere, with its new endpoint', async (t) => {
    if (!(await IMAGE_TARGETS[1]!.ready(t))) return;
    const c = await swarmCluster();
    const home = newHome();
    const rt = IMAGE_TARGETS[1]!.runtime(home);
    // pinned to a worker's zone (never the manager's: the runtime talks to the Swarm through it)
    const s = { ...spec(imageWorkload('http-echo', [8080]), { cores: 0.1, memoryGb: 0.1, gpus: 0 }), placement: { constraints: ['node.labels.zone!=z1'], spread: 'zone' } };
    const first = await within(rt.start(s), 60_000, 'start');
    const victim = c.hosts.findIndex((h) => h.addr === first.endpoint.host);
    assert.ok(victim > 0, `on a worker: ${JSON.stringify(first.endpoint)}`);
    await serving(first.endpoint);
    const killedAt = Date.now();
    c.killHost(victim);
    const info = await within(first.exited, 30_000, 'exited after the machine died');
    const noticed = (Date.now() - killedAt) / 1000;
    assert.match(info.error ?? '', /its machine .* is down/);
    const second = await within(rt.start(s), 60_000, 'start again');
    try {
      assert.equal(second.instanceId, s.instanceId);
      assert.notEqual(second.endpoint.host, first.endpoint.host, 'on another machine');
      assert.notEqual(second.endpoint.host, c.hosts[0]!.addr, 'and still within the constraints');
      await serving(second.endpoint);
      console.log(`# machine death noticed in ${noticed.toFixed(1)}s; the instance answered again ${((Date.now() - killedAt) / 1000).toFixed(1)}s after the kill`);
    } finally {
      await within(rt.stop(second, 1000), 30_000, 'stop');
    }
    assert.deepEqual(await IMAGE_TARGETS[1]!.leftovers(home), []);
  });
});

// ---- Docker only ----

describe('runtime docker: daemon, cell limits, leftovers, kernel image', { timeout: 150_000 }, () => {
  test('check() names the daemon address when it cannot reach it', async () => {
    const rt = new DockerRuntime(newHome(), { docker: new Docker({ socketPath: '/nonexistent/docker.sock' }) });
    const problem = await rt.check();
    assert.match(problem ?? '', /^Docker daemon not reachable at unix:\/\/\/nonexistent\/docker\.sock .*install docker\.io and start dockerd/);
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

function h2Request(port: Endpoint | number, path: string, method: string, headers: Record<string, string>, body: Buffer): Promise<{ headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders; data: Buffer }> {
  return new Promise((resolveP, reject) => {
    const session = http2.connect(`http://${addr(port)}`);
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
