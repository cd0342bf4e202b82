// Cell workers over TCP with a per-instance secret (issue 13), end to end: `berth up` with
// BERTH_WORKER_TRANSPORT=tcp, real sandboxed workers on 127.0.0.1. Cell nodes serve over REST and
// gRPC (forked from a template, and fresh); a raw client without the secret, or with a wrong one,
// gets nothing and is closed while the gateway keeps serving; the secret is in no log, command
// line or environment; network:none keeps its Unix socket.
//   node --import tsx --test --test-concurrency=1 test/tcp-workers.test.ts
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { appendFileSync, readdirSync, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { PROTO_DIR } from '../src/gateway/grpc/protos.js';
import { jsonToStruct, structToJson } from '../src/gateway/grpc/struct.js';
import { FRAME, WorkerConnection, encodeFrame } from '../src/worker/protocol.js';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { DockerRuntime } from '../src/runtimes/docker.js';
import { newId } from '../src/core/ids.js';
import { ROOT, PYTHON } from './helpers.js';
import { requireDocker, removeContainersOfHome } from './docker-support.js';
import { buildTestImages, TEST_IMAGES } from './images/index.js';
import { createNode, execute, makeCheckpoint, removeHome, startBerth, waitFor, type Berth } from './helpers.js';
import { LAB_CELLS, LAB_NODE } from './fixtures.js';

// a cell that hands back its own worker's secret: the tenant's code can always read its own
// process; the test needs the real value to look for it everywhere else
const PEEK_CELLS = [
  'import threading\nx = 0\n',
  // the accept thread's target is the Worker's bound method (gc would not see a forked instance's frozen Worker)
  'result = next((t._target.__self__.secret.decode() for t in threading.enumerate() if t.name == "berth-accept"), "")\n',
];
const PEEK_NODE = { kind: 'cell', inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'result', type: 'str' }] };

let b: Berth;
let lab: any;

before(async () => {
  b = await startBerth(undefined, { BERTH_WORKER_TRANSPORT: 'tcp' });
  await makeCheckpoint(b, 'lab', LAB_CELLS);
  await makeCheckpoint(b, 'peek', PEEK_CELLS);
  lab = await createNode(b, { ...LAB_NODE, name: 'lab', checkpointId: 'lab', timeout: 30 });
});

after(async () => {
  if (b) {
    await b.stop();
    removeHome(b.home);
  }
});

async function instanceOf(nodeId: string): Promise<{ endpoint: string; pid: number; id: string }> {
  return waitFor(`a healthy instance of ${nodeId}`, async () => {
    const n = await b.request('GET', `/v1/nodes/${nodeId}`);
    return n.body.instances.find((i: any) => i.status === 'Healthy' && i.endpoint);
  });
}

function portOf(endpoint: string): number {
  const m = /^tcp:127\.0\.0\.1:(\d+)$/.exec(endpoint);
  assert.ok(m, `a TCP endpoint on 127.0.0.1: ${endpoint}`);
  return Number(m[1]);
}

/** Sends `data` on a fresh connection; resolves with everything received until the worker closes it. */
function rawExchange(port: number, data: Buffer | null, timeoutMs = 15_000): Promise<{ received: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    const s: Socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => { s.destroy(); resolve({ received: Buffer.concat(chunks), closed: false }); }, timeoutMs);
    s.on('data', (c) => chunks.push(c));
    s.on('error', () => { /* a reset is a close too */ });
    s.on('close', () => { clearTimeout(timer); resolve({ received: Buffer.concat(chunks), closed: true }); });
    s.on('connect', () => { if (data) s.write(data); else s.end(); });
  });
}

const frame = (type: number, payload: string | Buffer): Buffer => Buffer.concat(encodeFrame(type, payload));

/** Host pids of `pid` and all its descendants. */
function tree(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      parent.set(Number(e), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch { /* gone */ }
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) for (const [p, pp] of parent) if (pp === out[i] && !out.includes(p)) out.push(p);
  return out;
}

test('cell nodes serve over REST on a TCP worker (forked from a template)', async () => {
  const inst = await instanceOf(lab.id);
  portOf(inst.endpoint);
  const r = await execute(b, lab.id, { mode: 'echo', arg: { a: [1, 2] } });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.deepEqual(r.body, { output: { result: { a: [1, 2] } } });
  const err = await execute(b, lab.id, { mode: 'raise', arg: 7 });
  assert.equal(err.status, 500, JSON.stringify(err.body));
  assert.equal(err.body.error_name, 'ValueError');
  const logs = b.cli('node', 'logs', 'lab');
  assert.match(logs.stdout, /forked from template .* listening on tcp 127\.0\.0\.1:\d+/);
});

test('cell nodes serve over gRPC on a TCP worker', async () => {
  const def = protoLoader.loadSync('yandex/cloud/datasphere/v1/node_service.proto', { includeDirs: [PROTO_DIR], keepCase: true, oneofs: true, enums: String });
  const pkg: any = grpc.loadPackageDefinition(def);
  const client = new pkg.yandex.cloud.datasphere.v1.NodeService(new URL(b.url).host, grpc.credentials.createInsecure());
  try {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${b.token}`);
    const res: any = await new Promise((resolve, reject) => client.Execute(
      { folder_id: 'default', node_id: lab.id, input: protoInput({ mode: 'echo', arg: 'over grpc' }) }, md, { deadline: Date.now() + 30_000 },
      (e: grpc.ServiceError | null, r: unknown) => e ? reject(e) : resolve(r)));
    assert.deepEqual(structToJson(res.output), { result: 'over grpc' });
  } finally { client.close(); }
});

/** proto-loader's well-known types use camelCase Value fields. */
function protoInput(v: Record<string, unknown>): unknown {
  const s = jsonToStruct(v) as any;
  const conv = (x: any): any => {
    if (x && typeof x === 'object' && !Array.isArray(x)) {
      const out: any = {};
      for (const [k, val] of Object.entries(x)) out[k.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase())] = conv(val);
      return out;
    }
    return Array.isArray(x) ? x.map(conv) : x;
  };
  return conv(s);
}

test('a raw TCP client without the secret, or with a wrong one, gets nothing and is closed; the gateway keeps serving', async () => {
  const inst = await instanceOf(lab.id);
  const port = portOf(inst.endpoint);
  const attempts: Array<[string, Buffer | null]> = [
    ['a PING first', frame(FRAME.PING, '')],
    ['an EXECUTE first', frame(FRAME.EXECUTE, JSON.stringify({ input: { mode: 'echo', arg: 1 } }))],
    ['a wrong secret', frame(FRAME.HELLO, 'ab'.repeat(32))],
    ['an empty secret', frame(FRAME.HELLO, '')],
    ['HTTP', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
    ['nothing at all', null],
  ];
  for (const [what, data] of attempts) {
    const { received, closed } = await rawExchange(port, data);
    assert.equal(received.length, 0, `${what}: the worker answered ${received.toString('hex')}`);
    assert.ok(closed, `${what}: the worker closed the connection`);
  }
  // the gateway's own connections were never disturbed, and new ones still pass the handshake
  for (let i = 0; i < 5; i++) {
    const r = await execute(b, lab.id, { mode: 'echo', arg: i });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(r.body.output, { result: i });
  }
  const logs = b.cli('node', 'logs', 'lab');
  assert.match(logs.stdout, /refused a connection: the first frame was not a handshake/);
  assert.match(logs.stdout, /refused a connection: wrong secret/);
});

for (const fork of [true, false]) {
  test(`the secret is in no log, command line or environment (${fork ? 'forked' : 'fresh'} instance); with it, a client is welcomed`, async () => {
    const node = await createNode(b, { ...PEEK_NODE, name: `peek-${fork ? 'forked' : 'fresh'}`, checkpointId: 'peek', scaling: { minInstances: 1, maxInstances: 1, fork } });
    const r = await execute(b, node.id, { x: 1 });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const secret: string = r.body.output.result;
    assert.match(secret, /^[0-9a-f]{64}$/, 'the worker has a 32-byte hex secret');
    const inst = await instanceOf(node.id);
    const port = portOf(inst.endpoint);

    const logs = b.cli('node', 'logs', node.name, '--lines', '1000');
    assert.equal(logs.status, 0, logs.stderr);
    assert.match(logs.stdout, /listening on tcp 127\.0\.0\.1:/);
    assert.ok(!logs.stdout.includes(secret), 'not in berth node logs');
    assert.ok(!b.output().includes(secret), 'not in Berth\'s own output');
    const pids = tree(inst.pid);
    assert.ok(pids.length >= 1);
    let read = 0;
    for (const pid of pids) {
      for (const f of ['cmdline', 'environ']) {
        let text: string;
        try { text = readFileSync(`/proc/${pid}/${f}`, 'latin1'); } catch { continue; }
        read++;
        assert.ok(!text.includes(secret), `not in /proc/${pid}/${f}`);
      }
    }
    assert.ok(read >= 2, 'read the worker\'s cmdline and environ');

    // control: the same raw client with the real secret is welcomed and answered
    const welcome = await new Promise<Buffer>((resolve, reject) => {
      const s = connect(port, '127.0.0.1');
      const chunks: Buffer[] = [];
      const timer = setTimeout(() => { s.destroy(); reject(new Error('no answer')); }, 10_000);
      s.on('error', reject);
      s.on('connect', () => s.write(Buffer.concat([frame(FRAME.HELLO, secret), frame(FRAME.PING, '')])));
      s.on('data', (c) => {
        chunks.push(c);
        const all = Buffer.concat(chunks);
        if (all.length >= 10 && all.length >= 10 + all.readUInt32BE(5)) { clearTimeout(timer); s.destroy(); resolve(all); }
      });
    });
    assert.equal(welcome[4], FRAME.WELCOME);
    assert.equal(welcome[9], FRAME.PONG);
    const pong = JSON.parse(welcome.subarray(10).toString('utf8'));
    assert.equal(pong.state, 'ready');
    assert.equal(typeof pong.refused, 'number');

    if (!fork) {
      // a fresh TCP instance fetched its checkpoint from Berth with that secret; the route takes it only
      const ckpt = (await b.request('GET', '/v1/checkpoints/peek')).body;
      const path = `/internal/v1/instances/${inst.id}/checkpoint`;
      const ok = await fetch(b.url + path, { headers: { authorization: `Bearer ${secret}` } });
      assert.equal(ok.status, 200);
      const blob = Buffer.from(await ok.arrayBuffer());
      assert.equal(createHash('sha256').update(blob).digest('hex'), ckpt.sha256);
      assert.match(b.cli('node', 'logs', node.name).stdout, /checkpoint fetched from Berth \(\d+ bytes, sha256 verified\)/);
      const otherFolder = await b.request('POST', '/v1/tokens', { name: 'team-b', folders: ['team-b'] });
      const viewer = await b.request('POST', '/v1/tokens', { name: 'viewer', folders: ['default'], role: 'viewer' });
      assert.equal(otherFolder.status, 201);
      assert.equal(viewer.status, 201, JSON.stringify(viewer.body));
      for (const [what, url, auth] of [
        ['the admin token', path, `Bearer ${b.token}`],
        ['a token of another folder', path, `Bearer ${otherFolder.body.token}`],
        ['a viewer token of its folder', path, `Bearer ${viewer.body.token}`],
        ['no credential', path, ''],
        ['a wrong secret', path, `Bearer ${'0'.repeat(64)}`],
        ['its secret for another instance', `/internal/v1/instances/${lab.id}/checkpoint`, `Bearer ${secret}`],
        ['its secret for an instance that does not exist', '/internal/v1/instances/nosuchinstance/checkpoint', `Bearer ${secret}`],
      ] as const) {
        const r = await fetch(b.url + url, { headers: auth ? { authorization: auth } : {} });
        assert.equal(r.status, 401, what);
        assert.equal((await r.json() as any).code, 'UNAUTHENTICATED', what);
      }
    }
    assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
  });
}

test('network none keeps the Unix socket (its sandbox has a loopback of its own) and says so', async () => {
  const node = await createNode(b, { ...LAB_NODE, name: 'offline', checkpointId: 'lab', network: 'none', scaling: { minInstances: 1, maxInstances: 1, fork: false } });
  const inst = await instanceOf(node.id);
  assert.match(inst.endpoint, /^unix:/);
  const r = await execute(b, node.id, { mode: 'echo', arg: 'offline' });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.match(b.cli('node', 'logs', 'offline').stdout, /on a Unix socket, not TCP: network none/);
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('a tampered checkpoint blob fails the fetching instance with a clear reason', async () => {
  const id = await makeCheckpoint(b, 'tampered', PEEK_CELLS);
  appendFileSync(join(b.home, 'checkpoints', `${id}.dill`), 'x'); // the bytes on disk no longer match the recorded sha256
  const node = await createNode(b, { ...PEEK_NODE, name: 'tampered', checkpointId: 'tampered', scaling: { minInstances: 1, maxInstances: 1, fork: false } }, false);
  const why = await waitFor('the instance to fail', async () => {
    const n = await b.request('GET', `/v1/nodes/${node.id}`);
    const text = JSON.stringify(n.body);
    return /corrupt/.test(text) ? text : undefined;
  }, 60_000);
  assert.match(why, /the checkpoint fetched from Berth is corrupt: sha256 [0-9a-f]{64}, expected [0-9a-f]{64}; refusing to restore it/);
  assert.match(b.cli('node', 'logs', 'tampered').stdout, /failed: the checkpoint fetched from Berth is corrupt/);
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('docker runtime, tcp: a cell container publishes its worker port on 127.0.0.1 and takes only its secret', { timeout: 300_000 }, async (t) => {
  if (!(await requireDocker(t))) return;
  await buildTestImages(['kernel']);
  const home = mkdtempSync(join(tmpdir(), 'berth-tcp-docker-'));
  const out = join(home, 'blob.dill');
  const made = spawnSync(PYTHON, ['-c', "import sys; sys.path.insert(0,'python'); import berth_checkpoint; berth_checkpoint.main()"], {
    cwd: ROOT, input: JSON.stringify({ cells: LAB_CELLS, servingCell: 1, out }), encoding: 'utf8', timeout: 60_000,
  });
  assert.equal(made.status, 0, made.stderr);
  const rt = new DockerRuntime(home, { workerTransport: 'tcp' });
  try {
    const inst = await rt.start({
      nodeId: newId(), instanceId: newId(), revision: 1, resources: { cores: 1, memoryGb: 0.5, gpus: 0 },
      workload: {
        kind: 'cell', python: PYTHON, kernelImage: TEST_IMAGES.kernel, registryAuth: null, checkpointPath: out, code: LAB_CELLS[1]!,
        requires: JSON.parse(readFileSync(out + '.json', 'utf8')).requires, inputs: LAB_NODE.inputs, outputs: LAB_NODE.outputs, maxResponseBytes: 1 << 20,
      },
    });
    assert.equal(inst.endpoint.host, '127.0.0.1');
    assert.ok(inst.endpoint.port && inst.endpoint.port > 0, JSON.stringify({ ...inst.endpoint, secret: undefined }));
    assert.match(inst.endpoint.secret ?? '', /^[0-9a-f]{64}$/);
    // Docker's proxy accepts before the worker listens: the handshake tells them apart
    const conn = await waitFor('the worker to be ready', async () => {
      const c = await WorkerConnection.open(inst.endpoint, 1 << 20, 2000);
      const pong = JSON.parse((await c.request(FRAME.PING, '')).payload.toString('utf8'));
      if (pong.state === 'ready') return c;
      c.close();
      return undefined;
    }, 60_000, 200);
    const f = await conn.request(FRAME.EXECUTE, JSON.stringify({ input: { mode: 'echo', arg: 'from a container' } }));
    assert.equal(f.type, FRAME.OK);
    assert.deepEqual(JSON.parse(f.payload.toString('utf8')), { output: { result: 'from a container' } });
    conn.close();
    const refused = await rawExchange(inst.endpoint.port!, frame(FRAME.PING, ''));
    assert.equal(refused.received.length, 0);
    assert.ok(refused.closed);
    const wrong = WorkerConnection.open({ ...inst.endpoint, secret: 'ab'.repeat(32) }, 1 << 20, 5000);
    await assert.rejects(wrong, /handshake/);
    // adopted by a restarted Berth: the secret is read back from the worker's config file
    const again = new DockerRuntime(home, { workerTransport: 'tcp' });
    const adopted = (await again.list()).find((i) => i.instanceId === inst.instanceId);
    assert.ok(adopted);
    assert.equal(adopted.endpoint.port, inst.endpoint.port);
    assert.equal(adopted.endpoint.secret, inst.endpoint.secret);
    await rt.stop(inst, 5000);
  } finally {
    await removeContainersOfHome(home);
    rmSync(home, { recursive: true, force: true });
  }
});
