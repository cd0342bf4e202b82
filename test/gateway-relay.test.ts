// `berth up --gateway-workers 2` with a cell node of fewer sessions than workers (one instance,
// the default sessionsPerInstance 1): the primary gives its session to one worker (its home)
// and the other relays the node's calls there as worker frames (cluster/call-relay.ts). Real
// Berth, real sandboxed Python workers, real connections spread over both workers by the
// primary: every call is served, the instance never holds more connections than its session,
// both workers do the calls' HTTP work, auth is decided before a call is relayed, a killed
// home only fails the calls it was running, and a scaled-up node shares its sessions again.
//   node --import tsx --test --test-concurrency=1 test/gateway-relay.test.ts
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, statSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { connect as h2connect } from 'node:http2';
import { spawn, spawnSync } from 'node:child_process';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, PYTHON, checkKilledHomeFailures, createNode, execute, homeOf, makeCheckpoint, removeHome, startBerth, waitFor, runLoad, type Berth } from './helpers.js';

// `sessions`: the worker's connection threads at the moment of the call (one per gateway session,
// and the controller's health-check connection); `calls`: how many calls this instance has run
const CELLS = [
  'import threading\ncalls = 0\nx = 0  # the serving cell runs once when the checkpoint is made\n',
  'calls += 1\nsessions = sum(1 for t in threading.enumerate() if t.name == "berth-conn")\ny = x + 1\n',
];
const NODE = {
  kind: 'cell', checkpointId: 'relay', timeout: 30,
  inputs: [{ name: 'x', type: 'int' }],
  outputs: [{ name: 'y', type: 'int' }, { name: 'sessions', type: 'int' }, { name: 'calls', type: 'int' }],
};

let b: Berth;

before(async () => {
  b = await startBerth(undefined, { BERTH_GATEWAY_WORKERS: '2' });
  await makeCheckpoint(b, 'relay', CELLS);
});

after(async () => {
  if (!b) return;
  await b.stop();
  removeHome(b.home);
});

async function gateway(): Promise<any> {
  const r = await b.request('GET', '/v1/gateway');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

/** Calls from `concurrency` connections for `ms`: fetch's pool opens that many, and the primary spreads them over both workers. */
async function load(nodeId: string, concurrency: number, ms: number): Promise<Array<{ status: number; body: any; caller: number; at: number }>> {
  const deadline = Date.now() + ms;
  const out: Array<{ status: number; body: any; caller: number; at: number }> = [];
  await Promise.all(Array.from({ length: concurrency }, async (_, k) => {
    for (let i = 0; Date.now() < deadline; i++) {
      try {
        const r = await execute(b, nodeId, { x: k * 1000 + i });
        out.push({ status: r.status, body: r.body, caller: k, at: Date.now() });
      } catch (err) {
        out.push({ status: 0, body: (err as Error).message, caller: k, at: Date.now() });
      }
    }
  }));
  return out;
}


test('one session, two workers: the home holds it, the other relays, every call is served', async (t) => {
  const node = await createNode(b, { ...NODE, name: 'relayed', scaling: { minInstances: 1, maxInstances: 1, queueSize: 1000 } });
  const { home, other } = await homeOf(b, node.id);
  t.diagnostic(`home pid ${home.pid}, relaying pid ${other.pid}`);
  // the relay socket is the home's alone: mode 0600 in BERTH_HOME (0700)
  const socketMode = statSync(`${b.home}/gateway-${home.pid}.sock`).mode & 0o777;
  assert.equal(socketMode, 0o600);

  const answers = await load(node.id, 12, 3000);
  const failed = answers.filter((a) => a.status !== 200);
  assert.deepEqual(failed.slice(0, 3), [], `every call answered (${failed.length} failed of ${answers.length})`);
  assert.ok(answers.length > 100, `calls flowed (${answers.length} in 3 s)`);
  // the answers are each call's own (the relay matches answers to calls)
  for (const a of answers) assert.equal(typeof a.body.output.y, 'number');
  // one session in all: the instance never had more gateway connections open than that, plus
  // the controller's health-check connection (a session held by each worker would make 3)
  const most = Math.max(...answers.map((a) => a.body.output.sessions));
  t.diagnostic(`${answers.length} calls; most connections open on the instance during a call: ${most}`);
  assert.ok(most <= 2, `at most the one session (and a probe) were open: ${most}`);

  // each worker reports its counts about every second: wait until both reports cover the load
  const s = await waitFor('relay counts reported', async () => {
    const g = await gateway();
    const h = g.workers.find((w: any) => w.pid === home.pid);
    const o = g.workers.find((w: any) => w.pid === other.pid);
    return h && o && o.relayed.sent > 0 && h.relayed.served === o.relayed.sent ? g : undefined;
  }, 5000);
  const h = s.workers.find((w: any) => w.pid === home.pid);
  const o = s.workers.find((w: any) => w.pid === other.pid);
  t.diagnostic(`relayed: home ${JSON.stringify(h.relayed)}, other ${JSON.stringify(o.relayed)}`);
  // both workers took connections (the primary's round robin): the other's calls went to the home
  assert.ok(o.relayed.sent > 20, `the other worker relayed its calls (${o.relayed.sent})`);
  assert.equal(h.relayed.sent, 0, 'the home runs its own calls itself');
  // every call is counted once, by the worker that took it (the node's metrics and usage)
  const metrics = await b.request('GET', '/metrics');
  const counted = [...String(metrics.body).matchAll(new RegExp(`node_http_codes\\{[^}]*node_id="${node.id}"[^}]*code="200"[^}]*\\} (\\d+)`, 'g'))].reduce((n, m) => n + Number(m[1]), 0);
  assert.equal(counted, answers.length, `each call counted once in the node's metrics (${counted} vs ${answers.length})`);
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('a relayed node checks the caller before anything is relayed: another folder and a viewer are refused on both workers', async () => {
  const node = await createNode(b, { ...NODE, name: 'relayed-auth', scaling: { minInstances: 1, maxInstances: 1 } });
  await homeOf(b, node.id);
  const viewer = await b.request('POST', '/v1/tokens', { name: 'relay-viewer', roles: { default: 'viewer' } });
  const stranger = await b.request('POST', '/v1/tokens', { name: 'relay-stranger', roles: { elsewhere: 'admin' } });
  assert.equal(viewer.status, 201);
  assert.equal(stranger.status, 201);
  const before = await execute(b, node.id, { x: 1 });
  assert.equal(before.status, 200, JSON.stringify(before.body));
  // 8 of each at once: fetch opens several connections, so both workers see them
  const refused = await runLoad(16, 8, 30_000, (i) => i % 2 === 0
    ? execute(b, node.id, { x: 1 }, 'default', `Bearer ${viewer.body.token}`)
    : execute(b, node.id, { x: 1 }, 'elsewhere', `Bearer ${stranger.body.token}`));
  for (const [i, r] of refused.entries()) {
    if (i % 2 === 0) assert.equal(r.status, 403, `a viewer may not execute: ${JSON.stringify(r.body)}`);
    else assert.ok(r.status === 403 || r.status === 404, `another folder's token is refused: ${r.status} ${JSON.stringify(r.body)}`);
  }
  // nothing reached the cell: its call counter moved by this call only
  const after = await execute(b, node.id, { x: 1 });
  assert.equal(after.body.output.calls, before.body.output.calls + 1, 'no refused call ran');
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('the home killed under load: only the calls it was running fail, the node is served again', async (t) => {
  const node = await createNode(b, { ...NODE, name: 'relayed-kill', scaling: { minInstances: 1, maxInstances: 1, queueSize: 1000 } });
  const { home } = await homeOf(b, node.id);
  let killedAt = 0;
  const running = load(node.id, 8, 5000);
  await new Promise((r) => setTimeout(r, 1500));
  process.kill(home.pid, 'SIGKILL');
  killedAt = Date.now();
  const answers = await running;
  const failed = answers.filter((a) => a.status !== 200);
  t.diagnostic(`${answers.length} calls, ${failed.length} failed: ${JSON.stringify(failed.slice(0, 4))}`);
  // each of the 8 callers had one call running (on the home, or relayed to it) when it died:
  // a broken connection (the caller's was on the home), or a relayed call's 502 INSTANCE_FAILED
  checkKilledHomeFailures(failed, killedAt, 8, (f) => f.status === 0, (f) => f.status === 502 && f.body.code === 'INSTANCE_FAILED');
  // the survivor becomes the home (or the new worker does); calls are served again
  const rehomed = await waitFor('the node homed again', async () => {
    const s = await gateway();
    const h = s.workers.find((w: any) => w.homeOf.includes(node.id));
    return h && h.pid !== home.pid && s.workers.length === 2 && s.workers.every((w: any) => w.ready) ? h : undefined;
  }, 20_000);
  t.diagnostic(`re-homed at pid ${rehomed.pid} ${Date.now() - killedAt} ms after the kill`);
  const late = answers.filter((a) => a.status === 200).length;
  assert.ok(late > 50, `calls were served around the kill (${late})`);
  const again = await runLoad(16, 8, 30_000, (i) => execute(b, node.id, { x: i }));
  assert.deepEqual(again.map((a) => a.status), Array(16).fill(200));
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

/** An execute call on `agent`'s pooled connections (fetch gives no say over which connection a call takes). */
function executeOn(agent: Agent, nodeId: string, x: number): Promise<{ status: number; body: any; tookMs: number }> {
  const started = Date.now();
  const u = new URL(b.url);
  const payload = JSON.stringify({ folder_id: 'default', input: { x } });
  return new Promise((resolve) => {
    const req = request({
      host: u.hostname, port: u.port, method: 'POST', path: `/datasphere/v1/nodes/${nodeId}:execute`, agent,
      headers: { authorization: `Bearer ${b.token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text), tookMs: Date.now() - started }));
    });
    req.on('error', (err) => resolve({ status: 0, body: err.message, tookMs: Date.now() - started }));
    req.setTimeout(20_000, () => req.destroy(new Error('call timed out')));
    req.end(payload);
  });
}

test('a call relayed to a home that has just died waits for the next home: the home\'s socket dies with it', async (t) => {
  const node = await createNode(b, { ...NODE, name: 'relayed-dead-home', scaling: { minInstances: 1, maxInstances: 1, queueSize: 1000 } });
  const { home } = await homeOf(b, node.id);
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  const primary = b.proc.pid!;
  let answers: Array<{ status: number; body: any; tookMs: number }>;
  try {
    // eight pooled connections, spread over both workers by the primary
    for (let round = 0; round < 3; round++) {
      const warm = await Promise.all(Array.from({ length: 8 }, (_, i) => executeOn(agent, node.id, i)));
      assert.deepEqual(warm.map((a) => a.status), Array(8).fill(200), JSON.stringify(warm.find((a) => a.status !== 200)));
    }
    // the primary stopped, the home killed: until the primary goes on, nobody re-homes the node, and
    // the survivor's calls find the dead home's socket. It must refuse them (they wait for the next
    // home): it used to be the primary's (Node's cluster listens for its workers), which took the
    // connection and handed it to the dead worker, and the calls on it waited out their deadline
    process.kill(primary, 'SIGSTOP');
    try {
      process.kill(home.pid, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 300)); // the killed worker's connections are seen closed
      const calls = Array.from({ length: 8 }, (_, i) => executeOn(agent, node.id, 100 + i));
      await new Promise((r) => setTimeout(r, 500));
      process.kill(primary, 'SIGCONT');
      answers = await Promise.all(calls);
    } finally {
      process.kill(primary, 'SIGCONT');
    }
  } finally {
    agent.destroy();
  }
  t.diagnostic(`answers: ${JSON.stringify(answers.map((a) => [a.status, a.tookMs]))}`);
  // the survivor's own connections relayed theirs (to the dead home, then waited); the others
  // reconnected (the port's connections wait for the primary, then go to the survivor): all served
  for (const a of answers) {
    assert.equal(a.status, 200, `every call was served once the node had a home again: ${JSON.stringify(a)}`);
    assert.ok(a.tookMs < 5000, `no call waited out a deadline: ${a.tookMs} ms`);
  }
  await waitFor('two ready workers again', async () => {
    const s = await gateway();
    return s.workers.length === 2 && s.workers.every((w: any) => w.ready && w.pid !== home.pid) ? s : undefined;
  }, 20_000);
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('with as many sessions as workers the node is shared out, not homed', async () => {
  const node = await createNode(b, { ...NODE, name: 'shared', scaling: { minInstances: 2, maxInstances: 2 } });
  await waitFor('two healthy instances', async () => (await b.request('GET', `/v1/nodes/${node.id}`)).body.instances.filter((i: any) => i.status === 'Healthy').length === 2);
  const s = await gateway();
  assert.ok(s.workers.every((w: any) => !w.homeOf.includes(node.id)), `two sessions for two workers: no home (${JSON.stringify(s.workers.map((w: any) => w.homeOf))})`);
  const answers = await runLoad(40, 8, 30_000, (i) => execute(b, node.id, { x: i }));
  assert.deepEqual([...new Set(answers.map((a) => a.status))], [200]);
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('a control-API stream through a worker shows its headers at once: a log follow with no lines yet, then the line a call prints', async () => {
  await makeCheckpoint(b, 'printer', ['x = 0\n', 'print(f"printed {x}", flush=True)\ny = x\n']);
  const node = await createNode(b, { kind: 'cell', checkpointId: 'printer', name: 'printer', inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'y', type: 'int' }] });
  const ctl = new AbortController();
  // before: the worker relaying the control API held the headers back until the first line, so a
  // follow with lines=0 waited for a line nobody would print while the caller waited for headers
  const res = await fetch(`${b.url}/v1/nodes/${node.id}/logs?follow=true&lines=0`, {
    headers: { authorization: `Bearer ${b.token}` }, signal: AbortSignal.any([ctl.signal, AbortSignal.timeout(5000)]),
  });
  try {
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
    const reader = res.body!.getReader();
    assert.equal((await execute(b, node.id, { x: 4242 })).status, 200);
    let text = '';
    while (!text.includes('printed 4242')) {
      const chunk = await reader.read();
      if (chunk.done) break;
      text += Buffer.from(chunk.value).toString();
    }
    assert.match(text, /printed 4242/);
  } finally {
    ctl.abort();
  }
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('control-API requests through a worker are answered as by one process: HTTP/2 headers as big as the front takes, a method no route has, a DELETE with a body; nothing the relay sends fails to parse', async () => {
  const session = h2connect(b.url);
  const ask = (headers: Record<string, string>, body?: string): Promise<{ status: number; body: string }> => new Promise((resolve, reject) => {
    const st = session.request({ authorization: `Bearer ${b.token}`, ...headers }, { endStream: body === undefined });
    if (body !== undefined) st.end(body);
    let status = 0;
    let text = '';
    st.on('response', (h) => { status = Number(h[':status']); });
    st.on('data', (d) => { text += d; });
    st.on('end', () => resolve({ status, body: text }));
    st.on('error', reject);
    st.setTimeout(5000, () => reject(new Error(`no answer to ${JSON.stringify(headers).slice(0, 80)}`)));
  });
  try {
    // 40 KiB of headers: over HTTP/1.1's 16 KiB, under HTTP/2's 64 KiB (a 431 and a closed socket from the primary before)
    const big = await ask({ ':method': 'GET', ':path': '/v1/health', 'x-pad': 'p'.repeat(40 * 1024) });
    assert.equal(big.status, 200, big.body);
    // a method HTTP/1.1 cannot even carry (a closed socket and 503 CONTROL_UNAVAILABLE before): 404 as with one process
    const foo = await ask({ ':method': 'FOO', ':path': '/v1/health' });
    assert.equal(foo.status, 404, foo.body);
    assert.equal(JSON.parse(foo.body).code, 'ROUTE_NOT_FOUND');
    // an HTTP/2 DELETE's body has no length: it went on raw, and the primary read it as a request of its own
    const smuggled = 'GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n';
    const del = await ask({ ':method': 'DELETE', ':path': '/v1/nodes/no-such-node', 'content-type': 'text/plain' }, smuggled);
    assert.equal(del.status, 404, del.body);
    assert.equal(JSON.parse(del.body).code, 'NODE_NOT_FOUND');
  } finally {
    session.close();
  }
  const internal = b.output().split('\n').filter((l) => l.includes('"internal_error"'));
  assert.deepEqual(internal, [], 'the primary parsed every request the relay sent');
});

test('a home too deep for the workers\' unix sockets is refused at start with what to do', () => {
  const home = join(tmpdir(), `berth-deep-${'d'.repeat(100)}`);
  mkdirSync(home, { recursive: true });
  try {
    const r = spawnSync(CLI[0]!, [...CLI.slice(1), 'up', '--port', '0', '--home', home, '--gateway-workers', '2'], {
      env: { ...process.env, BERTH_PYTHON: PYTHON }, encoding: 'utf8', timeout: 30_000,
    });
    assert.equal(r.status, 2, r.stdout + r.stderr);
    assert.match(r.stderr, /too long for one .* use a shorter --home \(or BERTH_HOME\), or --gateway-workers 1/);
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});

test('with the default worker count (one per core), a home too deep for the sockets serves from one process and says why', async (t) => {
  if (availableParallelism() < 2) return t.skip('one core: the default is one gateway process anyway');
  const home = join(tmpdir(), `berth-deep-${'e'.repeat(100)}`);
  mkdirSync(home, { recursive: true });
  const env: NodeJS.ProcessEnv = { ...process.env, BERTH_PYTHON: PYTHON };
  delete env.BERTH_GATEWAY_WORKERS;
  const child = spawn(CLI[0]!, [...CLI.slice(1), 'up', '--port', '0', '--home', home], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  try {
    await waitFor('berth up listening', async () => /Berth listening on/.test(out) || child.exitCode !== null, 30_000);
    assert.match(out, /serving from one gateway process, not \d+: .*too long for one/);
    assert.match(out, /Berth listening on http:\/\/127\.0\.0\.1:\d+ .*gateway workers 1\)/, out);
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
    rmSync(home, { recursive: true, force: true });
  }
});
