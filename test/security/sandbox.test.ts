// Tenant code against the sandbox (issue 7, "Tenant code runs in a sandbox"): one test per
// attack, each asserting the refusal, a positive control (so the probe itself works), and that
// nothing changed. Real `berth up`, real bubblewrap, real cgroups, real Python, real HTTP.
//
//   node --import tsx --test test/security/sandbox.test.ts
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { FRAME, WorkerConnection } from '../../src/worker/protocol.js';
import { createNode, execute, makeCheckpoint, removeHome, startBerth, tempHome, waitFor, type Berth } from '../helpers.js';

const root = process.getuid?.() === 0;
const bwrap = existsSync('/usr/bin/bwrap');
const skip = !root || !bwrap ? 'needs root and /usr/bin/bwrap (CI runs as root with bubblewrap installed)' : false;

// The serving cell of the probe node: does what the input asks, from inside the sandbox.
const PROBE_CELL = `
import os, socket, json, time, subprocess
def _open(p):
    try:
        with open(p, 'rb') as f:
            f.read(1)
        return 'opened'
    except Exception as e:
        return type(e).__name__
def _write(p):
    try:
        with open(p, 'ab') as f:
            f.write(b'x')
        return 'written'
    except Exception as e:
        return type(e).__name__
def _unix(p):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect(p)
        return 'connected'
    except Exception as e:
        return type(e).__name__
    finally:
        s.close()
def _tcp(port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(('127.0.0.1', port))
        return 'connected'
    except Exception as e:
        return type(e).__name__
    finally:
        s.close()
def _own_socket():
    # the socket this worker listens on: a fresh worker's is /berth/run/worker.sock, a forked
    # one's /berth/run/<instance>/worker.sock (its template's directory)
    mine = set()
    for fd in os.listdir('/proc/self/fd'):
        try:
            link = os.readlink('/proc/self/fd/' + fd)
        except OSError:
            continue
        if link.startswith('socket:['):
            mine.add(link[8:-1])
    with open('/proc/net/unix') as f:
        for line in list(f)[1:]:
            parts = line.split()
            if len(parts) >= 8 and parts[6] in mine and parts[3] == '00010000' and parts[7].endswith('worker.sock'):
                return parts[7]
    return None
if action == 'open':
    result = {p: _open(p) for p in arg}
elif action == 'write':
    result = {p: _write(p) for p in arg}
elif action == 'unix':
    result = {p: _unix(_own_socket() if p == 'own' else p) for p in arg}
elif action == 'tcp':
    result = _tcp(arg)
elif action == 'env':
    result = dict(os.environ)
elif action == 'secret':
    # the worker's own instance secret (its code can always read its own process)
    import threading
    result = next((t._target.__self__.secret.decode() for t in threading.enumerate() if t.name == 'berth-accept'), None)
elif action == 'ids':
    result = {'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(), 'groups': os.getgroups()}
elif action == 'kill':
    try:
        os.kill(arg, 9)
        result = 'killed'
    except Exception as e:
        result = type(e).__name__
elif action == 'alloc':
    hog = bytearray(arg)
    for i in range(0, len(hog), 4096):
        hog[i] = 1
    result = len(hog)
elif action == 'forkbomb':
    forked, error = 0, None
    for i in range(arg):
        try:
            pid = os.fork()
        except OSError as e:
            error = type(e).__name__
            break
        if pid == 0:
            try:
                os.fork()
            except OSError:
                pass
            time.sleep(60)
            os._exit(0)
        forked += 1
    result = {'forked': forked, 'error': error}
elif action == 'swap':
    own = _own_socket()
    tmp = own + '.swap'
    os.symlink(arg, tmp)
    os.replace(tmp, own)
    result = os.readlink(own)
elif action == 'background':
    subprocess.Popen(['sleep', str(arg)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = 'started'
else:
    result = None
`;

const PROBE_SPEC = (name: string, checkpointId: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  name, checkpointId,
  inputs: [{ name: 'action', type: 'str' }, { name: 'arg', type: 'any' }],
  outputs: [{ name: 'result', type: 'any' }],
  resources: { cores: 1, memoryGb: 1 },
  ...extra,
});

async function probe(b: Berth, nodeId: string, action: string, arg: unknown = null): Promise<any> {
  const r = await execute(b, nodeId, { action, arg });
  assert.equal(r.status, 200, `${action}: ${JSON.stringify(r.body)}`);
  return r.body.output.result;
}

/** Processes whose command line contains `marker`, from ps (the whole machine). */
function processesWith(marker: string): string[] {
  const r = spawnSync('ps', ['-eo', 'pid,user,args'], { encoding: 'utf8' });
  return r.stdout.split('\n').filter((l) => l.includes(marker) && !l.includes('ps -eo'));
}

/** Pids of processes running as `uid`, from ps. */
function processesOf(uid: number): string[] {
  return spawnSync('ps', ['-o', 'pid=', '-u', String(uid)], { encoding: 'utf8' }).stdout.split('\n').map((l) => l.trim()).filter(Boolean);
}

/** Where an instance's worker bound its socket on the host: its own directory, or (forked) one in its template's. */
function workerSocket(home: string, instanceId: string): string {
  const dir = join(home, 'sandboxes');
  const fresh = join(dir, instanceId, 'worker.sock');
  if (existsSync(fresh)) return fresh;
  const forked = readdirSync(dir).map((e) => join(dir, e, instanceId, 'worker.sock')).find((p) => existsSync(p));
  return forked ?? fresh;
}

function secretFiles(home: string): string[] {
  return ['admin-token', 'secret.key', 'berth.db'].map((f) => join(home, f));
}

function snapshot(files: string[]): string[] {
  return files.map((f) => (existsSync(f) ? readFileSync(f).toString('base64') : 'missing'));
}

describe('sandbox: a cell cannot reach Berth or other tenants', { skip, timeout: 240_000 }, () => {
  let b: Berth;
  let probeA: any; let probeB: any; let offline: any;
  let ckptA = ''; let ckptB = '';
  let tcp: Server; let tcpPort = 0; let tcpConnections = 0;

  before(async () => {
    b = await startBerth(tempHome(), { BERTH_PIDS_LIMIT: '64' });
    // a secret makes sure secret.key exists and holds something
    assert.equal((await b.request('POST', '/v1/secrets', { name: 'api-key', value: 'hunter2' })).status, 201);
    ckptA = await makeCheckpoint(b, 'probe-a', ['import os\naction, arg = None, None\n', PROBE_CELL]);
    ckptB = await makeCheckpoint(b, 'probe-b', ['import os\naction, arg = None, None\n', PROBE_CELL]);
    [probeA, probeB, offline] = await Promise.all([
      createNode(b, PROBE_SPEC('probe-a', ckptA)),
      createNode(b, PROBE_SPEC('probe-b', ckptB)),
      createNode(b, PROBE_SPEC('offline', ckptA, { network: 'none' })),
    ]);
    tcp = createServer((s) => { tcpConnections++; s.end(); });
    await new Promise<void>((r) => tcp.listen(0, '127.0.0.1', () => r()));
    tcpPort = (tcp.address() as { port: number }).port;
  });

  after(async () => {
    tcp?.close();
    if (b) { await b.stop(); removeHome(b.home); }
  });

  const instanceOf = async (nodeId: string): Promise<any> => (await b.request('GET', `/v1/nodes/${nodeId}`)).body.instances[0];

  test('cannot open admin-token, secret.key, berth.db, another checkpoint or another node\'s log; can open its own checkpoint', async () => {
    const before = snapshot(secretFiles(b.home));
    const instB = await instanceOf(probeB.id);
    const targets = [
      ...secretFiles(b.home),
      join(b.home, 'checkpoints', `${ckptB}.dill`),
      join(b.home, 'logs', probeB.id, `${instB.id}.log`),
      join(b.home, 'server.json'),
    ];
    for (const t of targets) assert.ok(existsSync(t), `${t} exists on the host`);
    const opened = await probe(b, probeA.id, 'open', [...targets, '/berth/checkpoint.dill']);
    for (const t of targets) assert.notEqual(opened[t], 'opened', `${t}: ${opened[t]}`);
    assert.equal(opened['/berth/checkpoint.dill'], 'opened', 'control: its own checkpoint is readable');
    const written = await probe(b, probeA.id, 'write', [...secretFiles(b.home), '/berth/checkpoint.dill', '/usr/lib/os-release-x', '/tmp/ok']);
    for (const t of [...secretFiles(b.home), '/berth/checkpoint.dill', '/usr/lib/os-release-x']) assert.notEqual(written[t], 'written', `${t}: ${written[t]}`);
    assert.equal(written['/tmp/ok'], 'written', 'control: its private /tmp is writable');
    assert.deepEqual(snapshot(secretFiles(b.home)), before, 'nothing changed');
  });

  test('cannot connect to another instance\'s worker socket; can connect to its own', async () => {
    const instB = await instanceOf(probeB.id);
    const others = [...new Set([String(instB.endpoint).replace(/^unix:/, ''), workerSocket(b.home, instB.id)])];
    assert.ok(others.length > 0 && others.every((p) => existsSync(p)), `B's socket exists on the host: ${others}`);
    const r = await probe(b, probeA.id, 'unix', [...others, 'own']);
    for (const p of others) assert.notEqual(r[p], 'connected', `${p}: ${r[p]}`);
    assert.equal(r.own, 'connected', 'control: the probe reaches its own socket');
    assert.deepEqual(await probe(b, probeB.id, 'ids'), await probe(b, probeB.id, 'ids'), 'B still answers');
  });

  test('replacing its socket with a symlink to another instance\'s does not redirect Berth', async () => {
    const victim = await createNode(b, PROBE_SPEC('victim', ckptB));
    const attacker = await createNode(b, PROBE_SPEC('attacker', ckptA));
    const instV = await instanceOf(victim.id);
    const instA = await instanceOf(attacker.id);
    const victimSocket = String(instV.endpoint).replace(/^unix:/, '');
    const attackerEndpoint = String(instA.endpoint).replace(/^unix:/, '');
    const attackerUid = (await probe(b, attacker.id, 'ids')).uid;
    const victimUid = (await probe(b, victim.id, 'ids')).uid;
    assert.equal(await probe(b, attacker.id, 'swap', victimSocket), victimSocket, 'the swap happened inside');
    // a new connection to the attacker's endpoint, as Berth makes after any reconnect (with the
    // attacker's secret, as Berth's: the victim's worker would refuse it anyway)
    const attackerSecret = await probe(b, attacker.id, 'secret', null);
    const conn = await WorkerConnection.open({ path: attackerEndpoint, secret: attackerSecret }, 1024 * 1024, 2000);
    try {
      const f = await conn.request(FRAME.EXECUTE, JSON.stringify({ input: { action: 'ids', arg: null } }));
      const uid = JSON.parse(f.payload.toString('utf8')).output.result.uid;
      assert.equal(uid, attackerUid, 'still the attacker\'s own worker');
      assert.notEqual(uid, victimUid);
    } finally { conn.close(); }
    await b.request('DELETE', `/v1/nodes/${attacker.id}`);
    await b.request('DELETE', `/v1/nodes/${victim.id}`);
  });

  test('sees no BERTH_* variable; runs as its own uid, neither 0 nor Berth\'s, and cannot signal Berth', async () => {
    const env = await probe(b, probeA.id, 'env');
    assert.ok(env.PATH, 'control: PATH is there');
    assert.deepEqual(Object.keys(env).filter((k) => k.startsWith('BERTH')), [], JSON.stringify(env));
    const a = await probe(b, probeA.id, 'ids');
    const bb = await probe(b, probeB.id, 'ids');
    for (const ids of [a, bb]) {
      assert.notEqual(ids.uid, 0);
      assert.notEqual(ids.uid, process.getuid!());
      assert.equal(ids.euid, ids.uid);
      assert.notEqual(ids.gid, 0);
      assert.deepEqual(ids.groups, []);
    }
    assert.notEqual(a.uid, bb.uid, 'two nodes never share a uid');
    const pid = JSON.parse(readFileSync(join(b.home, 'server.json'), 'utf8')).pid;
    assert.notEqual(await probe(b, probeA.id, 'kill', pid), 'killed');
    assert.equal((await b.request('GET', '/v1/health')).status, 200, 'Berth still serves');
  });

  test('a checkpoint run is sandboxed the same way', async () => {
    const before = snapshot(secretFiles(b.home));
    const script = `import os, json
res = {}
for p in ${JSON.stringify([...secretFiles(b.home), join(b.home, 'checkpoints', `${ckptB}.dill`)])}:
    try:
        open(p, 'rb').read(1); res[p] = 'opened'
    except Exception as e:
        res[p] = type(e).__name__
res['env'] = sorted(os.environ)
res['uid'] = os.getuid()
print('PROBE ' + json.dumps(res))
x = 1
`;
    const r = await b.request('POST', '/v1/checkpoints', { script, name: 'run-probe' });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    const line = String(r.body.log).split('\n').find((l) => l.startsWith('PROBE '));
    assert.ok(line, r.body.log);
    const res = JSON.parse(line!.slice(6));
    for (const p of [...secretFiles(b.home), join(b.home, 'checkpoints', `${ckptB}.dill`)]) assert.notEqual(res[p], 'opened', `${p}: ${res[p]}`);
    assert.deepEqual(res.env.filter((k: string) => k.startsWith('BERTH')), []);
    assert.notEqual(res.uid, 0);
    assert.notEqual(res.uid, process.getuid!());
    assert.deepEqual(snapshot(secretFiles(b.home)), before);
  });

  test('a spec cannot ask for an unknown network mode or a dangerous capability', async () => {
    const before = (await b.request('GET', '/v1/nodes')).body.nodes.length;
    const badNet = await b.request('POST', '/v1/nodes', PROBE_SPEC('bad-net', ckptA, { network: 'host' }));
    assert.equal(badNet.status, 400);
    assert.equal(badNet.body.details.field, 'network');
    const image = { kind: 'image', name: 'caps', image: 'example/app:1', endpoint: { port: 8080 } };
    const badCap = await b.request('POST', '/v1/nodes', { ...image, capabilities: ['SYS_ADMIN'] });
    assert.equal(badCap.status, 400);
    assert.equal(badCap.body.details.field, 'capabilities[0]');
    const offlineImage = await b.request('POST', '/v1/nodes', { ...image, network: 'none' });
    assert.equal(offlineImage.status, 400);
    assert.equal(offlineImage.body.details.field, 'network');
    assert.equal((await b.request('GET', '/v1/nodes')).body.nodes.length, before, 'nothing created');
  });

  test('network: none cannot reach a 127.0.0.1 server; the default can', async () => {
    const was = tcpConnections;
    assert.notEqual(await probe(b, offline.id, 'tcp', tcpPort), 'connected');
    assert.equal(tcpConnections, was, 'the server saw nothing from the offline node');
    assert.equal(await probe(b, probeA.id, 'tcp', tcpPort), 'connected', 'control: outbound by default');
    await waitFor('the control connection', async () => tcpConnections === was + 1, 5000);
  });

  test('a fork bomb stops at the pids limit and Berth keeps serving', async () => {
    const bomb = await createNode(b, PROBE_SPEC('bomb', ckptA));
    const { uid } = await probe(b, bomb.id, 'ids');
    const r = await probe(b, bomb.id, 'forkbomb', 5000);
    assert.ok(r.forked < 64, JSON.stringify(r));
    assert.ok(r.error, `fork failed at the limit: ${JSON.stringify(r)}`);
    assert.equal((await b.request('GET', '/v1/health')).status, 200);
    assert.ok((await probe(b, probeA.id, 'ids')).uid > 0, 'other nodes still answer');
    assert.ok(processesOf(uid).length > r.forked, `the bomb's processes run as its uid ${uid}`);
    assert.equal((await b.request('DELETE', `/v1/nodes/${bomb.id}`)).status, 200);
    await waitFor('the bomb\'s processes gone', async () => processesOf(uid).length === 0 && (await b.request('GET', `/v1/nodes/${bomb.id}`)).status === 404, 30_000);
  });

  test('a node over its memory limit is killed and shows the OOM error', async () => {
    const small = await createNode(b, PROBE_SPEC('small', ckptA, { resources: { cores: 1, memoryGb: 0.25 } }));
    const r = await execute(b, small.id, { action: 'alloc', arg: 600 * 1024 * 1024 });
    assert.notEqual(r.status, 200, JSON.stringify(r.body));
    const inst = await waitFor('lastError names the OOM', async () => {
      const n = await b.request('GET', `/v1/nodes/${small.id}`);
      return n.body.instances.find((i: any) => /out of memory \(limit 0\.25 GB\)/.test(i.lastError ?? ''));
    }, 30_000);
    assert.match(inst.lastError, /out of memory \(limit 0\.25 GB\)/);
    assert.equal((await b.request('GET', '/v1/health')).status, 200);
    await b.request('DELETE', `/v1/nodes/${small.id}`);
  });
});

describe('sandbox: checkpoint runs are bounded', { skip, timeout: 240_000 }, () => {
  let b: Berth;
  before(async () => {
    // 15 s: long enough for a normal run on a loaded CI machine, short enough to wait out
    b = await startBerth(tempHome(), { BERTH_CHECKPOINT_RUN_SECONDS: '15', BERTH_MAX_CHECKPOINT_RUNS: '1', BERTH_CHECKPOINT_RUN_QUEUE: '1' });
  });
  after(async () => { if (b) { await b.stop(); removeHome(b.home); } });

  const count = async (): Promise<number> => (await b.request('GET', '/v1/checkpoints')).body.checkpoints.length;

  test('a run past its wall-clock limit fails cleanly, and what it started is gone', async () => {
    const started = Date.now();
    const r = await b.request('POST', '/v1/checkpoints', { script: 'import subprocess, time\nsubprocess.Popen(["sleep", "881.5"])\ntime.sleep(600)\nx = 1\n', name: 'too-slow' });
    assert.equal(r.status, 422, JSON.stringify(r.body));
    assert.equal(r.body.code, 'RUN_TIMEOUT');
    assert.equal(r.body.details.limitSeconds, 15);
    assert.ok(Date.now() - started < 45_000);
    assert.deepEqual(processesWith('sleep 881.5'), []);
    assert.equal(await count(), 0, 'nothing saved');
  });

  test('a cell that starts a background process still returns, and the process is gone', async () => {
    const started = Date.now();
    const r = await b.request('POST', '/v1/checkpoints', { script: 'import subprocess\nsubprocess.Popen(["sleep", "882.5"])\nx = 1\n', name: 'bg' });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    // held open by the sleep, it would end only at the 15 s limit, with 422
    assert.ok(Date.now() - started < 15_000, `returned in ${Date.now() - started} ms, not held open by the sleep`);
    assert.deepEqual(processesWith('sleep 882.5'), []);
  });

  test('a client that disconnects mid-run kills it', async () => {
    const before = await count();
    const ac = new AbortController();
    const req = fetch(b.url + '/v1/checkpoints', {
      method: 'POST', signal: ac.signal,
      headers: { authorization: `Bearer ${b.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ script: 'import subprocess, time\nsubprocess.Popen(["sleep", "883.5"])\ntime.sleep(5)\nx = 1\n', name: 'left' }),
    }).catch(() => 'aborted');
    await waitFor('the run started', async () => processesWith('sleep 883.5').length > 0, 10_000, 50);
    ac.abort();
    assert.equal(await req, 'aborted');
    await waitFor('the run killed', async () => processesWith('sleep 883.5').length === 0, 5000, 50);
    await new Promise((r) => setTimeout(r, 5000)); // past when it would have finished
    assert.equal(await count(), before, 'nothing saved');
  });

  test('runs over the bound queue, then get 429 TOO_MANY_RUNS', async () => {
    // one folder each, so that only the server-wide bound (not a folder's quota) is in play
    const slow = (name: string) => b.request('POST', '/v1/checkpoints', { script: 'import time\ntime.sleep(2)\nx = 1\n', name, folderId: `f-${name}` });
    const first = slow('q-1');
    await new Promise((r) => setTimeout(r, 300));
    const second = slow('q-2'); // waits for the first
    await new Promise((r) => setTimeout(r, 300));
    const third = await slow('q-3');
    assert.equal(third.status, 429, JSON.stringify(third.body));
    assert.equal(third.body.code, 'TOO_MANY_RUNS');
    assert.equal((await first).status, 201);
    assert.equal((await second).status, 201, 'the queued run ran after the first');
  });
});

describe('sandbox: kill -9 of berth up leaves nothing behind after the next start', { skip, timeout: 240_000 }, () => {
  for (const mode of ['bubblewrap', 'none'] as const) {
    test(`sandbox ${mode}`, async () => {
      const home = tempHome();
      const marker = mode === 'none' ? '884.5' : '885.5';
      let b = await startBerth(home, { BERTH_SANDBOX: mode });
      try {
        const ckpt = await makeCheckpoint(b, 'probe', ['import os\naction, arg = None, None\n', PROBE_CELL]);
        const node = await createNode(b, PROBE_SPEC('probe', ckpt));
        assert.equal(await probe(b, node.id, 'background', marker), 'started');
        const inst = (await b.request('GET', `/v1/nodes/${node.id}`)).body.instances[0];
        const sock = String(inst.endpoint).replace(/^unix:/, '');
        assert.ok(existsSync(sock), sock);
        assert.equal(processesWith(`sleep ${marker}`).length, 1);
        // every process of the instance (the worker, the sleep) from its cgroup, and of its
        // sandbox (bwrap, the template it was forked from) from the template's
        const inCgroups = (pattern: string): number[] =>
          spawnSync('sh', ['-c', `cat $(find /sys/fs/cgroup/pids -path '*/berth-*/${pattern}' -name cgroup.procs)`], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean).map(Number);
        const own = mode === 'bubblewrap' ? inCgroups(`${inst.id}-*`) : [];
        const cgroupPids = mode === 'bubblewrap' ? [...own, ...inCgroups('tpl*')] : [];
        if (mode === 'bubblewrap') {
          assert.ok(own.length >= 2, `the instance's processes in its cgroup: ${own}`);
          assert.ok(cgroupPids.length >= 4, `sandbox processes in the cgroups: ${cgroupPids}`);
        }
        b.proc.kill('SIGKILL');
        await b.stop();
        await new Promise((r) => setTimeout(r, 500));
        if (mode === 'none') {
          // control: unsandboxed, the background process outlives Berth until the next start
          assert.equal(processesWith(`sleep ${marker}`).length, 1, 'left over after kill -9');
        }
        assert.ok(existsSync(sock), 'the socket is left over after kill -9');
        b = await startBerth(home, { BERTH_SANDBOX: mode });
        assert.deepEqual(processesWith(`sleep ${marker}`), []);
        assert.ok(!existsSync(sock), 'stale socket removed');
        const alive = cgroupPids.filter((p) => { try { process.kill(p, 0); return true; } catch { return false; } });
        assert.deepEqual(alive, [], 'no process of the earlier sandbox is left');
        // the node comes back and serves
        await waitFor('node Healthy again', async () => (await b.request('GET', `/v1/nodes/${node.id}`)).body.status === 'Healthy', 60_000);
        const live = (await b.request('GET', `/v1/nodes/${node.id}`)).body.instances.map((i: any) => i.id);
        // the live instance's files, and its template's (tpl…: the node's one live template)
        const entries = readdirSync(join(home, 'sandboxes'));
        assert.ok(entries.every((e) => live.some((id: string) => e.startsWith(id)) || e.startsWith('tpl')), `only the live instance's files: ${entries} (live ${live})`);
        assert.ok(new Set(entries.filter((e) => e.startsWith('tpl')).map((e) => e.replace(/\.sock$/, ''))).size <= 1, `one template: ${entries}`);
      } finally {
        await b.stop();
        removeHome(home);
      }
    });
  }
});
