// Usage accounting (issue 10): instance time per node and preset, calls and bytes per folder,
// measured against what the test itself sees — the instance's own status transitions, the
// bytes it sent and got back — on a real `berth up` with real Python workers; a suspended
// node accrues nothing; `kill -9` of Berth loses at most 10 s; gateway workers' calls reach
// the primary; GET /v1/usage groupings, bad parameters, other folders and small roles.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { startBerth, removeHome, makeCheckpoint, createNode, waitFor, tempHome, type Berth } from './helpers.js';
import { LAB_CELLS, LAB_NODE } from './fixtures.js';
import { requireDocker, removeContainersOfHome } from './docker-support.js';
import { buildTestImages, testImage } from './images/index.js';

let b: Berth;

before(async () => {
  b = await startBerth();
  await makeCheckpoint(b, 'lab', LAB_CELLS);
});

after(async () => {
  await b?.stop();
  if (b) removeHome(b.home);
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A call over real HTTP, counting the bytes of the body sent and of the body answered. */
async function call(x: Berth, nodeId: string, input: unknown): Promise<{ status: number; sent: number; got: number }> {
  const body = JSON.stringify({ folder_id: 'default', input });
  const res = await fetch(`${x.url}/datasphere/v1/nodes/${nodeId}:execute`, {
    method: 'POST', headers: { authorization: `Bearer ${x.token}`, 'content-type': 'application/json' }, body,
  });
  const got = Buffer.from(await res.arrayBuffer()).length;
  return { status: res.status, sent: Buffer.byteLength(body), got };
}

async function usage(x: Berth, query: string, token?: string): Promise<{ status: number; body: any }> {
  return x.request('GET', `/v1/usage${query}`, undefined, token ? { authorization: token } : {});
}

async function rowOf(x: Berth, nodeId: string): Promise<any> {
  const r = await usage(x, '?groupBy=node');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.rows.find((row: any) => row.nodeId === nodeId);
}

/** When the instance was started, from its own transitions (`Created`: the runtime has it). */
function createdAt(node: any): number {
  const t = node.instances[0].transitions.find((x: any) => x.status === 'Created');
  assert.ok(t, `a Created transition: ${JSON.stringify(node.instances[0].transitions)}`);
  return Date.parse(t.at);
}

async function token(x: Berth, name: string, body: Record<string, unknown>): Promise<string> {
  const r = await x.request('POST', '/v1/tokens', { name, ...body });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return `Bearer ${r.body.token}`;
}

test('instance time matches the instance lifetime seen; calls and bytes match what was sent; a suspended node accrues nothing', async () => {
  const node = await createNode(b, { ...LAB_NODE, name: 'metered', checkpointId: 'lab' });
  const started = createdAt(node);
  let calls = 0, sent = 0, got = 0;
  for (let i = 0; i < 7; i++) {
    const r = await call(b, node.id, { mode: 'echo', arg: 'x'.repeat(100 * i) });
    assert.equal(r.status, 200);
    calls++; sent += r.sent; got += r.got;
  }
  // refused by the gateway before any instance (a wrong input type): not a call of the node's
  const refused = await call(b, node.id, { mode: 7, arg: 1 });
  assert.equal(refused.status, 400);

  await sleep(1500);
  const suspendedAt = Date.now();
  assert.equal((await b.request('POST', `/v1/nodes/${node.id}:suspend`)).status, 200);
  const gone = await waitFor('instances stopped', async () => {
    const n = (await b.request('GET', `/v1/nodes/${node.id}`)).body;
    return n.instances.length === 0 ? Date.now() : undefined;
  }, 20_000, 50);

  const lived = (suspendedAt - started) / 1000;
  const row = await rowOf(b, node.id);
  assert.ok(row, 'a row for the node');
  assert.equal(row.folderId, 'default');
  assert.equal(row.nodeName, 'metered');
  assert.equal(row.preset, 'c1.4');
  assert.ok(row.instanceSeconds >= lived - 0.5 && row.instanceSeconds <= (gone - started) / 1000 + 0.5,
    `instance seconds ${row.instanceSeconds} within the lifetime seen: created → suspended ${lived.toFixed(2)} s, → gone ${((gone - started) / 1000).toFixed(2)} s`);
  assert.equal(row.calls, calls);
  assert.equal(row.bytesIn, sent);
  assert.equal(row.bytesOut, got);

  // suspended: no instance, nothing accrues (a read writes everything accrued up to it), refused calls do not count
  const refusedSuspended = await call(b, node.id, { mode: 'echo', arg: 1 });
  assert.equal(refusedSuspended.status, 409);
  await sleep(2500);
  const later = await rowOf(b, node.id);
  assert.ok(Math.abs(later.instanceSeconds - row.instanceSeconds) < 0.01, `suspended: ${row.instanceSeconds} → ${later.instanceSeconds}`);
  assert.equal(later.calls, calls);

  // Prometheus counters follow what was written
  const metrics = await b.request('GET', '/metrics');
  const line = (name: string, extra = ''): number => {
    const m = new RegExp(`^${name}\\{folder_id="default",node_id="${node.id}",preset="c1\\.4"${extra}\\} (\\S+)$`, 'm').exec(metrics.body);
    assert.ok(m, `${name} for the node in /metrics`);
    return Number(m[1]);
  };
  assert.equal(line('berth_usage_calls_total'), calls);
  assert.equal(line('berth_usage_bytes_total', ',direction="in"'), sent);
  assert.equal(line('berth_usage_bytes_total', ',direction="out"'), got);
  assert.ok(Math.abs(line('berth_usage_instance_seconds_total') - later.instanceSeconds) < 0.01);

  // the other groupings add up to the same; a range with nothing in it has no rows
  const byNode = (await usage(b, '?folder=default&groupBy=node')).body.rows.filter((r: any) => r.folderId === 'default');
  const total = (rows: any[], k: string): number => rows.reduce((n, r) => n + r[k], 0);
  const byFolder = await usage(b, '?folder=default&groupBy=folder');
  assert.equal(byFolder.status, 200);
  assert.equal(byFolder.body.groupBy, 'folder');
  assert.deepEqual(byFolder.body.rows.map((r: any) => r.folderId), ['default']);
  assert.ok(!('nodeId' in byFolder.body.rows[0]));
  const byDay = await usage(b, '?folder=default&groupBy=day');
  assert.equal(byDay.status, 200);
  const today = new Date().toISOString().slice(0, 10);
  assert.ok(byDay.body.rows.some((r: any) => r.day === today), JSON.stringify(byDay.body.rows));
  for (const k of ['calls', 'bytesIn', 'bytesOut']) {
    assert.equal(total(byFolder.body.rows, k), total(byNode, k), k);
    assert.equal(total(byDay.body.rows, k), total(byNode, k), k);
  }
  assert.ok(Math.abs(total(byDay.body.rows, 'instanceSeconds') - total(byNode, 'instanceSeconds')) < 0.01);
  const past = await usage(b, '?from=2001-01-01&to=2001-02-01T00:00:00Z');
  assert.equal(past.status, 200);
  assert.deepEqual(past.body.rows, []);
  assert.equal(past.body.from, '2001-01-01T00:00:00.000Z');
  // defaults: the last 30 days, grouped by node
  const dflt = await usage(b, '');
  assert.equal(dflt.body.groupBy, 'node');
  assert.ok(Math.abs(Date.parse(dflt.body.to) - Date.parse(dflt.body.from) - 30 * 86_400_000) < 1000);

  // the CLI: a table, and --json
  const table = b.cli('usage', '--folder', 'default');
  assert.equal(table.status, 0, table.stderr);
  assert.match(table.stdout, /metered/);
  assert.match(table.stdout, /INSTANCE TIME/);
  const json = b.cli('usage', '--group-by', 'folder', '--json');
  assert.equal(json.status, 0, json.stderr);
  assert.equal(JSON.parse(json.stdout).rows.find((r: any) => r.folderId === 'default').calls, total(byNode, 'calls'));

  // resumed: accrues again
  assert.equal((await b.request('POST', `/v1/nodes/${node.id}:resume`)).status, 200);
  await waitFor('Healthy again', async () => (await b.request('GET', `/v1/nodes/${node.id}`)).body.status === 'Healthy', 30_000);
  await sleep(1000);
  const resumed = await rowOf(b, node.id);
  assert.ok(resumed.instanceSeconds > later.instanceSeconds + 0.5, `resumed: ${later.instanceSeconds} → ${resumed.instanceSeconds}`);
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('bad parameters: 400 naming the field, nothing else', async () => {
  const cases: Array<[string, string]> = [
    ['?from=yesterday', 'from'],
    ['?to=2025-02-30', 'to'],
    ['?to=2025-01-01T12:00:00', 'to'], // a time without a zone
    ['?from=2025-02-01&to=2025-01-01', 'from'],
    ['?from=2025-01-01&to=2025-01-01', 'from'],
    ['?groupBy=week', 'groupBy'],
    ['?groupby=day', 'groupby'],
    ['?folder=no%20spaces!', 'folder'],
    ['?from=2025-01-01&from=2025-01-02', 'from'],
    ['?folder=default&folderId=default', 'folderId'],
  ];
  for (const [q, field] of cases) {
    const r = await usage(b, q);
    assert.equal(r.status, 400, `${q}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.code, 'INVALID_ARGUMENT', q);
    assert.equal(r.body.details.field, field, q);
  }
});

test("the token's folders only: another folder is 403, a token without a reading role is 403, none is 401", async () => {
  const node = await createNode(b, { ...LAB_NODE, name: 'mine', checkpointId: 'lab' });
  assert.equal((await call(b, node.id, { mode: 'echo', arg: 1 })).status, 200);

  const otherViewer = await token(b, 'usage-team-u', { folders: ['team-u'], role: 'viewer' });
  const denied = await usage(b, '?folder=default', otherViewer);
  assert.equal(denied.status, 403, JSON.stringify(denied.body));
  assert.equal(denied.body.code, 'PERMISSION_DENIED');
  assert.equal(denied.body.details.folderId, 'default');
  const own = await usage(b, '?groupBy=node', otherViewer);
  assert.equal(own.status, 200);
  assert.ok(own.body.rows.every((r: any) => r.folderId === 'team-u'), JSON.stringify(own.body.rows));
  assert.ok(!own.body.rows.some((r: any) => r.nodeId === node.id));
  const ownFolder = await usage(b, '?folder=team-u&groupBy=folder', otherViewer);
  assert.equal(ownFolder.status, 200);

  // a viewer of the folder is enough; an executor (calls only) is not
  const viewer = await token(b, 'usage-viewer', { folders: ['default'], role: 'viewer' });
  const seen = await usage(b, '?folder=default', viewer);
  assert.equal(seen.status, 200);
  assert.ok(seen.body.rows.some((r: any) => r.nodeId === node.id));
  const executor = await token(b, 'usage-executor', { folders: ['default'], role: 'executor' });
  for (const q of ['', '?folder=default']) {
    const r = await usage(b, q, executor);
    assert.equal(r.status, 403, `${q}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.code, 'PERMISSION_DENIED');
  }
  const cliDenied = b.cli('usage');
  assert.equal(cliDenied.status, 0, 'the CLI uses the admin token here');
  const none = await fetch(`${b.url}/v1/usage`);
  assert.equal(none.status, 401);
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('kill -9 of berth up loses at most 10 s of usage: restart and compare', async () => {
  const home = tempHome();
  let x: Berth | undefined;
  try {
    const w = x = await startBerth(home);
    await makeCheckpoint(w, 'lab', LAB_CELLS);
    const node = await createNode(w, { ...LAB_NODE, name: 'crash', checkpointId: 'lab' });
    const started = createdAt(node);
    let sent = 0, got = 0;
    for (let i = 0; i < 5; i++) {
      const r = await call(w, node.id, { mode: 'echo', arg: i });
      assert.equal(r.status, 200);
      sent += r.sent; got += r.got;
    }
    // long enough that losing everything would be far more than 10 s; the calls 11 s old
    await sleep(Math.max(11_000, started + 16_000 - Date.now()));
    const killedAt = Date.now();
    w.proc.kill('SIGKILL');
    await w.stop();

    const y = x = await startBerth(home);
    const again = await waitFor('Healthy after the restart', async () => {
      const n = (await y.request('GET', `/v1/nodes/${node.id}`)).body;
      return n.status === 'Healthy' ? n : undefined;
    }, 60_000);
    const restarted = createdAt(again);
    const row = await rowOf(y, node.id);
    const queried = Date.now();
    const expected = (killedAt - started + queried - restarted) / 1000;
    const lost = expected - row.instanceSeconds;
    console.log(`# kill -9: expected ${expected.toFixed(2)} s of instance time, recorded ${row.instanceSeconds.toFixed(2)} s, lost ${lost.toFixed(2)} s`);
    assert.ok(lost <= 10, `lost ${lost.toFixed(2)} s`);
    assert.ok(lost >= -1, `no more than the instances ran: lost ${lost.toFixed(2)} s`);
    assert.equal(row.calls, 5);
    assert.equal(row.bytesIn, sent);
    assert.equal(row.bytesOut, got);
  } finally {
    await x?.stop();
    removeHome(home);
  }
});

test('with gateway workers, every worker\'s calls reach the primary (piggybacked on load reports)', async () => {
  const home = tempHome();
  let x: Berth | undefined;
  try {
    const w = x = await startBerth(home, { BERTH_GATEWAY_WORKERS: '2' });
    await makeCheckpoint(w, 'lab', LAB_CELLS);
    const node = await createNode(w, { ...LAB_NODE, name: 'spread', checkpointId: 'lab', scaling: { minInstances: 1, maxInstances: 1, sessionsPerInstance: 2 } });
    let sent = 0, got = 0;
    // separate connections (no keep-alive pool shared): the primary deals them to both workers
    const results = await Promise.all(Array.from({ length: 24 }, (_, i) => call(w, node.id, { mode: 'echo', arg: 'y'.repeat(i) })));
    for (const r of results) { assert.equal(r.status, 200); sent += r.sent; got += r.got; }
    // counts reach the primary within about a second of the calls
    const row = await waitFor('all calls counted', async () => {
      const r = await rowOf(w, node.id);
      return r && r.calls === 24 ? r : undefined;
    }, 10_000, 250);
    assert.equal(row.bytesIn, sent);
    assert.equal(row.bytesOut, got);
    assert.ok(row.instanceSeconds > 0);
    // SIGTERM drains the workers: a call made just before is in the store when Berth has exited
    const last = await call(w, node.id, { mode: 'echo', arg: 'last' });
    assert.equal(last.status, 200);
    assert.equal(await w.stop(), 0);
    const db = new Database(join(home, 'berth.db'), { readonly: true });
    try {
      const stored = db.prepare('SELECT SUM(calls) AS calls, SUM(bytes_in) AS bytesIn FROM usage WHERE node_id = ?').get(node.id) as { calls: number; bytesIn: number };
      assert.deepEqual(stored, { calls: 25, bytesIn: sent + last.sent });
    } finally {
      db.close();
    }
  } finally {
    await x?.stop();
    removeHome(home);
  }
});

test('image nodes on Docker: header-routed calls count their bytes; a container that outlives kill -9 is billed for the time between', async (t) => {
  if (!(await requireDocker(t))) return;
  await buildTestImages(['http-echo']);
  const home = tempHome();
  const env = { BERTH_RUNTIME: 'docker' };
  let x: Berth | undefined;
  try {
    const w = x = await startBerth(home, env);
    const node = await createNode(w, {
      kind: 'image', name: 'echo-metered', image: testImage('http-echo'),
      endpoint: { port: 8080, protocol: 'http', timeout: 10 },
      healthcheck: { protocol: 'http', path: '/healthz', port: 8080, interval: 0.5, timeout: 1, failsThreshold: 2, passesThreshold: 1 },
      resources: { cores: 1, memoryGb: 0.5, gpus: 0 },
    });
    const started = createdAt(node);
    const headers = { 'x-node-id': node.id, 'x-folder-id': 'default', authorization: `Bearer ${w.token}` };
    let sent = 0, got = 0;
    for (let i = 1; i <= 4; i++) {
      const body = Buffer.alloc(1000 * i, 'b'); // echoed with a content-length
      const res = await fetch(`${w.url}/anything?raw=1`, { method: 'POST', headers, body });
      assert.equal(res.status, 200);
      sent += body.length; got += Buffer.from(await res.arrayBuffer()).length;
    }
    const streamed = await fetch(`${w.url}/big?bytes=300000`, { headers }); // chunked: counted as it passes
    assert.equal(streamed.status, 200);
    got += Buffer.from(await streamed.arrayBuffer()).length;
    assert.equal(got, 10_000 + 300_000);
    const counted = await rowOf(w, node.id);
    assert.equal(counted.preset, 'custom:1c-0.5g-0gpu');
    assert.equal(counted.calls, 5);
    assert.equal(counted.bytesIn, sent);
    assert.equal(counted.bytesOut, got);

    // the container keeps running while no Berth watches; the next one adopts it and bills the gap
    // from the last write before the kill: the seconds before it, the downtime, the restart
    await sleep(1000);
    w.proc.kill('SIGKILL');
    await w.stop();
    await sleep(3000);
    const y = x = await startBerth(home, env);
    const again = await waitFor('adopted and Healthy', async () => {
      const n = (await y.request('GET', `/v1/nodes/${node.id}`)).body;
      return n.status === 'Healthy' ? n : undefined;
    }, 60_000);
    assert.equal(again.instances[0].id, node.instances[0].id, 'the same container, adopted');
    const row = await rowOf(y, node.id);
    const lived = (Date.now() - started) / 1000;
    console.log(`# adopted container: ran ${lived.toFixed(2)} s, recorded ${row.instanceSeconds.toFixed(2)} s`);
    assert.ok(row.instanceSeconds > lived - 1.5 && row.instanceSeconds <= lived + 0.5, `recorded ${row.instanceSeconds} s of ${lived.toFixed(2)} s`);
    assert.equal(row.calls, 5);
  } finally {
    await x?.stop();
    await removeContainersOfHome(home);
    removeHome(home);
  }
});
