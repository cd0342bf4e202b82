// `berth up --store postgres://…` end to end: a checkpoint and a cell node made on one Berth
// serve calls; Berth restarted on the same database with another home (another machine, as
// far as files go) still has the node, fetches the checkpoint's bytes from the database into
// its own home (sha256-verified) and serves it again. A bad --store, or a database that does
// not answer, stops `berth up` at once, with a message that does not echo the password.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import pg from 'pg';
import { join } from 'node:path';
import { CLI, PYTHON, startBerth, removeHome, makeCheckpoint, createNode, execute, tempHome, waitFor, type Berth } from './helpers.js';
import { LAB_CELLS, LAB_NODE } from './fixtures.js';
import { createTestDatabase, requirePostgres } from './pg-support.js';

function up(home: string, store: string): { status: number | null; output: string; ms: number } {
  const started = Date.now();
  const r = spawnSync(CLI[0]!, [...CLI.slice(1), 'up', '--port', '0', '--home', home, '--store', store], {
    env: { ...process.env, BERTH_HOME: home, BERTH_PYTHON: PYTHON, BERTH_STORE: '' }, encoding: 'utf8', timeout: 60_000,
  });
  return { status: r.status, output: r.stdout + r.stderr, ms: Date.now() - started };
}

test('a bad --store or an unreachable database stops berth up at once, without the password', () => {
  const home = tempHome();
  try {
    const wrong = up(home, 'mysql://u:pw@localhost/db');
    assert.equal(wrong.status, 2, wrong.output);
    assert.match(wrong.output, /must be a postgres:\/\/ or postgresql:\/\/ URL/);
    assert.doesNotMatch(wrong.output, /:pw@/);
    // port 1 on loopback: nothing listens there, the connection is refused at once
    const gone = up(home, 'postgres://berth:s3cret-pw@127.0.0.1:1/berth');
    assert.equal(gone.status, 2, gone.output);
    assert.match(gone.output, /cannot use the PostgreSQL store at postgres:\/\/berth:\*\*\*@127\.0\.0\.1:1\/berth/);
    assert.doesNotMatch(gone.output, /s3cret-pw/);
    assert.ok(gone.ms < 30_000, `took ${gone.ms} ms`);
    assert.doesNotMatch(gone.output, /listening on/);
  } finally {
    removeHome(home);
  }
});

test('berth up --store postgres://: a node made on one server is there, and serves, after a restart with another home', async (t) => {
  if (!(await requirePostgres(t))) return;
  const db = await createTestDatabase();
  const homes = [tempHome(), tempHome()];
  let b: Berth | null = null;
  try {
    b = await startBerth(homes[0], { BERTH_STORE: db.url });
    assert.match(b.output(), /store postgres:\/\//);
    const checkpointId = await makeCheckpoint(b, 'lab', LAB_CELLS);
    const node = await createNode(b, { ...LAB_NODE, name: 'shared', checkpointId: 'lab' });
    const r1 = await execute(b, node.id, { mode: 'echo', arg: 'first' });
    assert.equal(r1.status, 200, JSON.stringify(r1.body));
    assert.deepEqual(r1.body, { output: { result: 'first' } });
    assert.equal(await b.stop(), 0);
    b = null;

    // another home: no berth.db, no checkpoint file — everything comes from the database
    b = await startBerth(homes[1], { BERTH_STORE: db.url, BERTH_SECRET_KEY_FILE: join(homes[0], 'secret.key') });
    assert.equal(existsSync(join(homes[1], 'berth.db')), false);
    const listed = await b.request('GET', '/v1/nodes');
    assert.equal(listed.status, 200);
    assert.deepEqual(listed.body.nodes.map((n: { id: string }) => n.id), [node.id]);
    const ck = await b.request('GET', '/v1/checkpoints/lab');
    assert.equal(ck.body.id, checkpointId);
    await waitFor('the node Healthy on the second server', async () => (await b!.request('GET', `/v1/nodes/${node.id}`)).body.status === 'Healthy', 90_000);
    assert.ok(existsSync(join(homes[1], 'checkpoints', 'cache', `${checkpointId}.dill`)), 'the checkpoint was fetched into the new home');
    const r2 = await execute(b, node.id, { mode: 'echo', arg: 'second' });
    assert.equal(r2.status, 200, JSON.stringify(r2.body));
    assert.deepEqual(r2.body, { output: { result: 'second' } });
    // names stay unique across servers: the database says so
    const again = await b.request('POST', '/v1/nodes', { ...LAB_NODE, name: 'shared', checkpointId: 'lab' });
    assert.equal(again.status, 409);
    assert.equal(again.body.code, 'NAME_TAKEN', JSON.stringify(again.body));
    // deleting through this server removes the bytes from the database too
    assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status < 300, true);
    await waitFor('the node gone', async () => (await b!.request('GET', `/v1/nodes/${node.id}`)).status === 404, 60_000);
    const blobRows = async (): Promise<number> => {
      const c = new pg.Client({ connectionString: db.url });
      await c.connect();
      try { return Number((await c.query('SELECT COUNT(*) AS n FROM blob_chunks WHERE blob_id = $1', [checkpointId])).rows[0].n); } finally { await c.end(); }
    };
    assert.ok(await blobRows() > 0);
    const del = await b.request('DELETE', '/v1/checkpoints/lab');
    assert.equal(del.status, 200, JSON.stringify(del.body));
    assert.equal(await blobRows(), 0);
    assert.equal(existsSync(join(homes[1], 'checkpoints', 'cache', `${checkpointId}.dill`)), false);
  } finally {
    await b?.stop();
    for (const h of homes) removeHome(h);
    await db.drop();
  }
});
