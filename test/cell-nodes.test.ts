// Cell nodes end to end: the modelled platform's randomizer walk-through, state between
// calls, the CLI, the live-kernel upload, and every bad input.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, PYTHON, RANDOMIZER_SCRIPT, startBerth, removeHome, makeCheckpoint, createNode, execute, type Berth } from './helpers.js';
import { LAB_CELLS, LAB_NODE, COUNTER_CELLS } from './fixtures.js';

let b: Berth;
let lab: any;

before(async () => {
  b = await startBerth();
  await makeCheckpoint(b, 'lab', LAB_CELLS);
  lab = await createNode(b, { ...LAB_NODE, name: 'lab', checkpointId: 'lab', timeout: 30 });
});

after(async () => {
  await b.stop();
  removeHome(b.home);
});

test('admin token is created on first start, readable only by its owner', () => {
  const mode = statSync(join(b.home, 'admin-token')).mode & 0o777;
  assert.equal(mode, 0o600);
});

test("Berth's files are its own: home 0700, database, key and server.json 0600, whatever the umask", () => {
  assert.equal(statSync(b.home).mode & 0o777, 0o700);
  for (const f of ['berth.db', 'secret.key', 'server.json', 'admin-token']) assert.equal(statSync(join(b.home, f)).mode & 0o077, 0, `${f} is not readable by others`);
});

test('randomizer walk-through: checkpoint from a script, pinned node, seeds curl call', async () => {
  const script = join(b.home, 'randomizer.py');
  writeFileSync(script, RANDOMIZER_SCRIPT);
  const made = b.cli('checkpoint', 'create', script, '--name', 'randomizer-checkpoint', '--json');
  assert.equal(made.status, 0, made.stderr);
  const ckpt = JSON.parse(made.stdout);
  assert.equal(ckpt.name, 'randomizer-checkpoint');
  assert.equal(ckpt.pinned, true);
  assert.match(ckpt.code, /def generate_value/);
  assert.match(ckpt.python, /^3\./);
  assert.equal(ckpt.sha256.length, 64);
  assert.ok(ckpt.variables.some((v: any) => v.name === 'generate_value'));
  assert.match(ckpt.log, /generated_value/); // what the cells printed while the checkpoint was made

  const created = b.cli('node', 'create', '--name', 'randomizer-node', '--checkpoint', 'randomizer-checkpoint',
    '--input', 'input_data:dict', '--output', 'output_data:dict', '--resources', 'c1.4', '--json');
  assert.equal(created.status, 0, created.stderr);
  const node = JSON.parse(created.stdout);
  assert.equal(node.status, 'Healthy');
  assert.match(node.id, /^[a-z0-9]{20}$/);

  // the seeds' curl example, with only host, id and token changed
  const curl = spawnSync('curl', ['-sS', '-X', 'POST', `${b.url}/datasphere/v1/nodes/${node.id}:execute`,
    '-H', `Authorization: Bearer ${b.token}`, '-H', 'Content-Type: application/json',
    '--data-raw', '{\n "folder_id": "default",\n "input": {\n "input_data": {\n "left_bound": 1,\n "right_bound": 10\n }\n }\n }'], { encoding: 'utf8' });
  const answer = JSON.parse(curl.stdout);
  const value = answer.output.output_data.generated_value;
  assert.ok(Number.isInteger(value) && value >= 1 && value <= 10, curl.stdout);

  const seen = new Set<number>();
  for (let i = 0; i < 40; i++) {
    const r = await execute(b, node.id, { input_data: { left_bound: 100, right_bound: 105 } });
    assert.equal(r.status, 200);
    const v = r.body.output.output_data.generated_value;
    assert.ok(v >= 100 && v <= 105);
    seen.add(v);
  }
  assert.ok(seen.size > 1, 'values are random');

  const viaCli = b.cli('node', 'execute', 'randomizer-node', '--input', '{"input_data": {"left_bound": 5, "right_bound": 5}}', '--json');
  assert.equal(viaCli.status, 0, viaCli.stderr);
  assert.deepEqual(JSON.parse(viaCli.stdout), { output: { output_data: { generated_value: 5 } } });
  const asTable = b.cli('node', 'execute', 'randomizer-node', '--input', '{"input_data": {"left_bound": 5, "right_bound": 5}}');
  assert.match(asTable.stdout, /OUTPUT\s.*VALUE/);
  assert.match(asTable.stdout, /output_data\s.*\{"generated_value":5\}/);

  const table = b.cli('node', 'get', 'randomizer-node');
  assert.match(table.stdout, /INSTANCE\s.*STATUS/);
  assert.match(table.stdout, /Healthy/);
});

test('state persists between calls on one instance', async () => {
  await makeCheckpoint(b, 'counter', COUNTER_CELLS);
  const node = await createNode(b, { name: 'counter', checkpointId: 'counter', inputs: [{ name: 'step', type: 'int' }], outputs: [{ name: 'total', type: 'int' }] });
  const totals = [];
  for (const step of [1, 2, 3]) totals.push((await execute(b, node.id, { step })).body.output.total);
  assert.deepEqual(totals, [1, 3, 6]);
});

test('what a cell prints goes to its instance log', async () => {
  const r = await execute(b, lab.id, { mode: 'print', arg: 'hello-log-42' });
  assert.equal(r.status, 200);
  const logs = await b.request('GET', `/v1/nodes/${lab.id}/logs?lines=50`);
  assert.equal(logs.status, 200);
  assert.ok(logs.body.logs.some((l: any) => l.text.includes('cell says hello-log-42')));
  const cli = b.cli('node', 'logs', 'lab');
  assert.match(cli.stdout, /cell says hello-log-42/);
});

test('instance and node statuses carry timestamped transitions', async () => {
  const n = (await b.request('GET', `/v1/nodes/${lab.id}`)).body;
  assert.equal(n.status, 'Healthy');
  assert.deepEqual(n.transitions.map((t: any) => t.status), ['Created', 'Healthy']);
  const inst = n.instances[0];
  assert.deepEqual(inst.transitions.map((t: any) => t.status), ['Undefined', 'Created', 'Started', 'Preparing', 'Healthy']);
  for (const t of inst.transitions) assert.ok(!Number.isNaN(Date.parse(t.at)));
});

test('a live kernel namespace uploaded from Python backs a node', async () => {
  const code = `
import sys
sys.path.insert(0, ${JSON.stringify(join(ROOT, 'python'))})
import berth_client
offset = 41
def add(v):
    return v + offset
r = berth_client.save_checkpoint(name="live-kernel", code="y = add(x)\\n", namespace=globals(), url=${JSON.stringify(b.url)}, token=${JSON.stringify(b.token)})
print(r["id"])
`;
  const run = spawnSync(PYTHON, ['-c', code], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  const ck = (await b.request('GET', '/v1/checkpoints/live-kernel')).body;
  assert.equal(ck.source, 'kernel');
  const node = await createNode(b, { name: 'live', checkpointId: 'live-kernel', inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'y', type: 'int' }] });
  const r = await execute(b, node.id, { x: 1 });
  assert.deepEqual(r.body, { output: { y: 42 } });
});

test('bytes travel as base64 both ways', async () => {
  await makeCheckpoint(b, 'bytes', ['raw = b""\n', 'upper = raw.upper()\nsize = len(raw)\n']);
  const node = await createNode(b, { name: 'bytes', checkpointId: 'bytes', inputs: [{ name: 'raw', type: 'bytes' }], outputs: [{ name: 'upper', type: 'bytes' }, { name: 'size', type: 'int' }] });
  const r = await execute(b, node.id, { raw: Buffer.from('hello').toString('base64') });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(Buffer.from(r.body.output.upper, 'base64').toString(), 'HELLO');
  assert.equal(r.body.output.size, 5);
});

test('checkpoint list, get, rename, and delete refused while a node uses it', async () => {
  const list = b.cli('checkpoint', 'list');
  assert.match(list.stdout, /lab/);
  const del = await b.request('DELETE', '/v1/checkpoints/lab');
  assert.equal(del.status, 409);
  assert.equal(del.body.code, 'CHECKPOINT_IN_USE');
  assert.ok(del.body.details.nodes.includes(lab.id));
  assert.equal((await b.request('GET', '/v1/checkpoints/lab')).status, 200);

  const id = await makeCheckpoint(b, 'scratch', ['a = 1\n']);
  const renamed = await b.request('PATCH', `/v1/checkpoints/${id}`, { name: 'scratch-2' });
  assert.equal(renamed.body.name, 'scratch-2');
  const dup = await b.request('PATCH', `/v1/checkpoints/${id}`, { name: 'lab' });
  assert.equal(dup.status, 409);
  assert.equal(dup.body.code, 'NAME_TAKEN');
  assert.equal((await b.request('DELETE', '/v1/checkpoints/scratch-2')).status, 200);
  assert.equal((await b.request('GET', `/v1/checkpoints/${id}`)).status, 404);
});

test('notebooks (.ipynb) make checkpoints too', async () => {
  const nb = { cells: [
    { cell_type: 'markdown', source: ['# title'] },
    { cell_type: 'code', source: ['%matplotlib inline\n', 'base = 10\n'] },
    { cell_type: 'code', source: 'out = base * k\n' },
  ], metadata: {}, nbformat: 4, nbformat_minor: 5 };
  const file = join(b.home, 'nb.ipynb');
  writeFileSync(file, JSON.stringify(nb));
  // the serving cell runs while the checkpoint is made, so give it its input first
  const r = await b.request('POST', '/v1/checkpoints', { notebook: nb, cells: undefined, name: 'nb' });
  assert.equal(r.status, 422, 'the serving cell needs k: running it fails');
  assert.equal(r.body.code, 'CHECKPOINT_FAILED');
  assert.equal(r.body.details.error_name, 'NameError');
  nb.cells.splice(1, 0, { cell_type: 'code', source: ['k = 2\n'] });
  writeFileSync(file, JSON.stringify(nb));
  const made = b.cli('checkpoint', 'create', file, '--name', 'nb', '--json');
  assert.equal(made.status, 0, made.stderr);
  const node = await createNode(b, { name: 'nb', checkpointId: 'nb', inputs: [{ name: 'k', type: 'int' }], outputs: [{ name: 'out', type: 'int' }] });
  assert.deepEqual((await execute(b, node.id, { k: 3 })).body, { output: { out: 30 } });
});

test('apply -f creates a node from YAML, and is idempotent', async () => {
  const file = join(b.home, 'node.yaml');
  writeFileSync(file, 'kind: cell\nname: from-yaml\ncheckpointId: lab\ninputs:\n  - {name: mode, type: str}\n  - {name: arg, type: any}\noutputs:\n  - {name: result, type: any}\nscaling:\n  minInstances: 1\n');
  const first = b.cli('apply', '-f', file, '--json');
  assert.equal(first.status, 0, first.stderr);
  assert.equal(JSON.parse(first.stdout)[0].action, 'created');
  const second = b.cli('apply', '-f', file, '--json');
  assert.equal(JSON.parse(second.stdout)[0].action, 'unchanged');
  const node = (await b.request('GET', '/v1/nodes/from-yaml')).body;
  assert.equal(node.status, 'Healthy');
});

// ---- bad input: a clear error with a stable code, and nothing changed ----

test('malformed JSON, missing, unknown and wrongly typed inputs', async () => {
  const raw = await b.request('POST', `/datasphere/v1/nodes/${lab.id}:execute`, '{"folder_id": "default", "input": {');
  assert.equal(raw.status, 400);
  assert.equal(raw.body.code, 'INVALID_JSON');

  const missing = await execute(b, lab.id, { mode: 'echo' });
  assert.equal(missing.status, 400);
  assert.equal(missing.body.code, 'INVALID_INPUT');
  assert.equal(missing.body.details.variable, 'arg');
  assert.equal(missing.body.details.reason, 'missing');

  const unknown = await execute(b, lab.id, { mode: 'echo', arg: 1, extra: 2 });
  assert.equal(unknown.body.code, 'INVALID_INPUT');
  assert.equal(unknown.body.details.variable, 'extra');

  const wrong = await execute(b, lab.id, { mode: 42, arg: 1 });
  assert.equal(wrong.status, 400);
  assert.equal(wrong.body.details.variable, 'mode');
  assert.match(wrong.body.message, /mode.*string/);

  const noInput = await b.request('POST', `/datasphere/v1/nodes/${lab.id}:execute`, { folder_id: 'default' });
  assert.equal(noInput.body.code, 'INVALID_INPUT');
  const noFolder = await b.request('POST', `/datasphere/v1/nodes/${lab.id}:execute`, { input: { mode: 'echo', arg: 1 } });
  assert.equal(noFolder.body.code, 'INVALID_ARGUMENT');
  assert.equal(noFolder.body.details.field, 'folder_id');

  // folderId (camelCase) and node_id in the body are accepted too
  const camel = await b.request('POST', `/datasphere/v1/nodes/${lab.id}:execute`, { folderId: 'default', node_id: lab.id, input: { mode: 'echo', arg: [1, 'a'] } });
  assert.deepEqual(camel.body, { output: { result: [1, 'a'] } });
});

test('a request over 16 MB gets 413 before it is read whole', async () => {
  const big = JSON.stringify({ folder_id: 'default', input: { mode: 'echo', arg: 'x'.repeat(17 * 1024 * 1024) } });
  const r = await b.request('POST', `/datasphere/v1/nodes/${lab.id}:execute`, big);
  assert.equal(r.status, 413);
  assert.equal(r.body.code, 'PAYLOAD_TOO_LARGE');
  assert.equal(r.body.details.limit, 16 * 1024 * 1024);
  // without Content-Length (chunked), the count stops it too
  const chunked = spawnSync('curl', ['-sS', '-X', 'POST', `${b.url}/datasphere/v1/nodes/${lab.id}:execute`, '-H', `Authorization: Bearer ${b.token}`,
    '-H', 'Transfer-Encoding: chunked', '--data-binary', '@-'], { input: big, encoding: 'utf8', maxBuffer: 1 << 20 });
  assert.equal(JSON.parse(chunked.stdout).code, 'PAYLOAD_TOO_LARGE');
  assert.equal((await execute(b, lab.id, { mode: 'echo', arg: 'still fine' })).status, 200);
});

test('a response over 16 MB is refused, naming the limit', async () => {
  const r = await execute(b, lab.id, { mode: 'big', arg: 17 * 1024 * 1024 });
  assert.equal(r.status, 502);
  assert.equal(r.body.code, 'RESPONSE_TOO_LARGE');
  const ok = await execute(b, lab.id, { mode: 'big', arg: 1024 * 1024 });
  assert.equal(ok.body.output.result.length, 1024 * 1024);
});

test('unknown node and checkpoint ids', async () => {
  const r = await execute(b, 'nonexistentnode00000', { mode: 'echo', arg: 1 });
  assert.equal(r.status, 404);
  assert.equal(r.body.code, 'NODE_NOT_FOUND');
  assert.equal((await b.request('GET', '/v1/nodes/nope')).body.code, 'NODE_NOT_FOUND');
  assert.equal((await b.request('GET', '/v1/checkpoints/nope')).body.code, 'CHECKPOINT_NOT_FOUND');
  const create = await b.request('POST', '/v1/nodes', { ...LAB_NODE, name: 'ghost', checkpointId: 'no-such-checkpoint' });
  assert.equal(create.status, 404);
  assert.equal(create.body.code, 'CHECKPOINT_NOT_FOUND');
  assert.equal(create.body.details.field, 'checkpointId');
});

test('missing or wrong token: 401; folder not on the ACL: 403', async () => {
  const none = await b.request('POST', `/datasphere/v1/nodes/${lab.id}:execute`, { folder_id: 'default', input: { mode: 'echo', arg: 1 } }, { authorization: '' });
  assert.equal(none.status, 401);
  assert.equal(none.body.code, 'UNAUTHENTICATED');
  const wrong = await execute(b, lab.id, { mode: 'echo', arg: 1 }, 'default', 'Bearer brt_wrong');
  assert.equal(wrong.status, 401);
  assert.equal((await b.request('GET', '/v1/nodes', undefined, { authorization: '' })).status, 401);

  // Api-Key works like Bearer
  assert.equal((await execute(b, lab.id, { mode: 'echo', arg: 1 }, 'default', `Api-Key ${b.token}`)).status, 200);

  const other = await b.request('POST', '/v1/tokens', { name: 'team-b', folders: ['team-b'] });
  assert.equal(other.status, 201);
  const denied = await execute(b, lab.id, { mode: 'echo', arg: 1 }, 'team-b', `Bearer ${other.body.token}`);
  assert.equal(denied.status, 403);
  assert.equal(denied.body.code, 'PERMISSION_DENIED');
  const notHeld = await execute(b, lab.id, { mode: 'echo', arg: 1 }, 'default', `Bearer ${other.body.token}`);
  assert.equal(notHeld.status, 403);
  // another folder's node is indistinguishable from a missing one in the control API
  assert.equal((await b.request('GET', `/v1/nodes/${lab.id}`, undefined, { authorization: `Bearer ${other.body.token}` })).status, 404);

  // a node whose ACL lists team-b lets that token call
  const shared = await createNode(b, { ...LAB_NODE, name: 'shared', checkpointId: 'lab', permissions: { folders: ['default', 'team-b'] } });
  assert.equal((await execute(b, shared.id, { mode: 'echo', arg: 7 }, 'team-b', `Bearer ${other.body.token}`)).status, 200);

  // a revoked token stops working at once
  assert.equal((await b.request('DELETE', `/v1/tokens/${other.body.id}`)).status, 200);
  assert.equal((await execute(b, shared.id, { mode: 'echo', arg: 7 }, 'team-b', `Bearer ${other.body.token}`)).status, 401);
});

test('a Python exception comes back with error_name, error_message and traceback', async () => {
  const r = await execute(b, lab.id, { mode: 'raise', arg: 3 });
  assert.equal(r.status, 500);
  assert.equal(r.body.code, 'EXECUTION_ERROR');
  assert.equal(r.body.error_name, 'ValueError');
  assert.equal(r.body.error_message, 'bad value 3');
  assert.ok(Array.isArray(r.body.traceback) && r.body.traceback.join('').includes('bad value'));
  assert.equal(r.body.details.error_name, 'ValueError');
  // the instance keeps serving
  assert.equal((await execute(b, lab.id, { mode: 'echo', arg: 1 })).status, 200);
});

test('an output missing or not JSON-serialisable is named', async () => {
  const missing = await execute(b, lab.id, { mode: 'missing', arg: null });
  assert.equal(missing.body.code, 'OUTPUT_MISSING');
  assert.equal(missing.body.details.variable, 'result');
  const bad = await execute(b, lab.id, { mode: 'unserializable', arg: null });
  assert.equal(bad.body.code, 'OUTPUT_NOT_SERIALIZABLE');
  assert.equal(bad.body.details.variable, 'result');
});

test('invalid node specs name the field and create nothing', async () => {
  const before = (await b.request('GET', '/v1/nodes')).body.nodes.length;
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ ...LAB_NODE, checkpointId: 'lab' }, 'name'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: '1starts-with-digit' }, 'name'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: 'x' }, 'name'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: 'ends-with-dash-' }, 'name'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: 'a'.repeat(64) }, 'name'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: 'ok-name', scaling: { minInstances: 3, maxInstances: 2 } }, 'scaling.maxInstances'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: 'ok-name', scaling: { minInstances: 'two' } }, 'scaling.minInstances'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: 'ok-name', scaling: { sessionsPerInstance: 0 } }, 'scaling.sessionsPerInstance'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: 'ok-name', inputs: [{ name: 'x', type: 'tensor' }] }, 'inputs[0].type'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: 'ok-name', inputs: [{ name: 'not valid', type: 'int' }] }, 'inputs[0].name'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: 'ok-name', outputs: [] }, 'outputs'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: 'ok-name', resources: 'c9.99' }, 'resources'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: 'ok-name', permissions: { folders: 'default' } }, 'permissions.folders'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: 'ok-name', timeout: -1 }, 'timeout'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: 'ok-name', colour: 'blue' }, 'colour'],
    [{ ...LAB_NODE, name: 'ok-name' }, 'checkpointId'],
    [{ ...LAB_NODE, checkpointId: 'lab', name: 'lab' }, 'name'], // taken
  ];
  for (const [spec, field] of cases) {
    const r = await b.request('POST', '/v1/nodes', spec);
    assert.ok(r.status === 400 || r.status === 409, `${field}: ${r.status} ${JSON.stringify(r.body)}`);
    assert.equal(r.body.details.field, field, JSON.stringify(r.body));
    assert.ok(r.body.message.length > 0);
  }
  const notJson = await b.request('POST', '/v1/nodes', '{nope');
  assert.equal(notJson.body.code, 'INVALID_JSON');
  const unpinned = await b.request('POST', '/v1/checkpoints', { cells: ['q = 1\n'] });
  const r = await b.request('POST', '/v1/nodes', { ...LAB_NODE, name: 'unpinned', checkpointId: unpinned.body.id });
  assert.equal(r.body.code, 'CHECKPOINT_NOT_PINNED');
  assert.equal((await b.request('GET', '/v1/nodes')).body.nodes.length, before);
});

test('Cyrillic node names are accepted', async () => {
  const n = await createNode(b, { ...LAB_NODE, name: 'Рандомайзер 1', checkpointId: 'lab' }, false);
  assert.equal(n.name, 'Рандомайзер 1');
  assert.equal((await b.request('DELETE', `/v1/nodes/${n.id}`)).status, 200);
});

test('metrics and OpenAPI are served', async () => {
  assert.equal((await fetch(`${b.url}/metrics`)).status, 401, '/metrics needs a token');
  const m = await fetch(`${b.url}/metrics`, { headers: { authorization: `Bearer ${b.token}` } }).then((r) => r.text());
  assert.match(m, new RegExp(`node_requests\\{node_id="${lab.id}"\\} \\d+`));
  assert.match(m, /node_http_codes\{node_id="[a-z0-9]+",code="400"\}/);
  assert.match(m, /node_request_durations_bucket/);
  assert.match(m, /node_instances\{node_id="[a-z0-9]+",status="Healthy"\} 1/);
  const spec = await fetch(`${b.url}/openapi.json`).then((r) => r.json()) as any;
  assert.ok(spec.paths['/v1/nodes']);
});

test('the control API and REST execute answer over HTTP/2 (h2c) as over HTTP/1.1', async () => {
  const { connect } = await import('node:http2');
  const session = connect(b.url);
  const h2 = (method: string, path: string, body?: unknown, token: string | null = b.token) => new Promise<{ status: number; body: any }>((resolve, reject) => {
    const r = session.request({ ':method': method, ':path': path, ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body ? { 'content-type': 'application/json' } : {}) });
    let status = 0;
    let text = '';
    r.on('response', (h) => { status = Number(h[':status']); });
    r.on('data', (d) => { text += d; });
    r.on('end', () => resolve({ status, body: text ? JSON.parse(text) : null }));
    r.on('error', reject);
    r.end(body ? JSON.stringify(body) : undefined);
  });
  try {
    assert.deepEqual((await h2('GET', '/v1/health', undefined, null)).body, { status: 'ok' });
    assert.equal((await h2('GET', '/v1/nodes', undefined, null)).status, 401);
    const nodes = await h2('GET', '/v1/nodes');
    assert.equal(nodes.status, 200);
    assert.ok(nodes.body.nodes.some((n: any) => n.id === lab.id));
    const ok = await h2('POST', `/datasphere/v1/nodes/${lab.id}:execute`, { folder_id: 'default', input: { mode: 'echo', arg: 'over h2' } });
    assert.equal(ok.status, 200);
    assert.deepEqual(ok.body.output, { result: 'over h2' });
    const bad = await h2('POST', `/datasphere/v1/nodes/${lab.id}:execute`, { folder_id: 'default', input: { mode: 3 } });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.details.variable, 'mode');
  } finally {
    session.close();
  }
});

test('control-plane requests and lifecycle events are logged as JSON lines with ids; data-plane calls are not', async () => {
  const r = await b.request('GET', '/v1/nodes');
  const id = r.headers.get('x-request-id');
  assert.match(id ?? '', /^[0-9a-f-]{36}$/);
  const lines = b.output().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  assert.ok(lines.some((l) => l.reqId === id && l.component === 'api'), 'the request is logged under its id');
  assert.ok(lines.some((l) => l.event === 'instance_status' && l.status === 'Healthy' && l.nodeId === lab.id));
  const before = b.output().length;
  for (let i = 0; i < 20; i++) assert.equal((await execute(b, lab.id, { mode: 'echo', arg: i })).status, 200);
  assert.ok(!b.output().slice(before).includes(':execute'), 'nothing is logged per execute call');
});
