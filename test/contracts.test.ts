// Per-node contracts end to end on a real `berth up` with real Python workers: the model
// types (ndarray as nested lists and as base64 raw bytes, dataframe records/split, list[T],
// defaults) over REST execute with good and bad values; numpy/pandas values in the cell.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { status as grpcStatus } from '@grpc/grpc-js';
import { connect } from 'node:http2';
import { startBerth, removeHome, makeCheckpoint, createNode, execute, type Berth } from './helpers.js';

let b: Berth;
let node: any;
const tokens: Record<string, string> = {};
const as = (who: string): Record<string, string> => ({ authorization: `Bearer ${tokens[who]}` });

/** A small "model": scales a float32 batch, sums it, describes a table. */
export const MODEL_CELLS = [
  `import numpy as np
import pandas as pd
def predict(batch, k):
    return (batch * k).astype(np.float32)
x, k, df, tags = np.zeros((1, 3), dtype=np.float32), 2.0, pd.DataFrame(), []
`,
  `y = predict(x, k)
total = np.float32(x.sum())
n_rows = len(df)
cols = [str(c) for c in df.columns] + tags
`,
];

export const MODEL_NODE = {
  kind: 'cell',
  inputs: [
    { name: 'x', type: 'ndarray[float32,-1,3]', description: 'a batch of 3 features' },
    { name: 'k', type: 'float', default: 2 },
    { name: 'df', type: 'dataframe', default: [] },
    { name: 'tags', type: 'list[str]', default: [] },
  ],
  outputs: [
    { name: 'y', type: 'ndarray', dtype: 'float32', shape: [-1, 3] },
    { name: 'total', type: 'float' },
    { name: 'n_rows', type: 'int' },
    { name: 'cols', type: 'list[str]' },
  ],
};

function f32b64(values: number[]): string {
  return Buffer.from(new Float32Array(values).buffer).toString('base64');
}

async function token(name: string, body: Record<string, unknown>): Promise<string> {
  const r = await b.request('POST', '/v1/tokens', { name, ...body });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.token;
}

before(async () => {
  b = await startBerth();
  await makeCheckpoint(b, 'model', MODEL_CELLS);
  node = await createNode(b, { ...MODEL_NODE, name: 'model', checkpointId: 'model', permissions: { folders: ['default'] } });
  tokens.other = await token('other-folder', { folders: ['team-b'], role: 'executor' });
  tokens.viewer = await token('viewer', { folders: ['default'], role: 'viewer' });
  tokens.executor = await token('executor', { folders: ['default'], role: 'executor' });
  // a role too small everywhere that matters: may read team-b only, call nothing
  tokens.viewerB = await token('viewer-b', { folders: ['team-b'], role: 'viewer' });
});

after(async () => {
  await b?.stop();
  if (b) removeHome(b.home);
});

test('the spec stores canonical type strings; the YAML object form becomes the same string', () => {
  assert.deepEqual(node.inputs.map((v: any) => v.type), ['ndarray[float32,-1,3]', 'float', 'dataframe', 'list[str]']);
  assert.equal(node.outputs[0].type, 'ndarray[float32,-1,3]');
  assert.equal(node.inputs[1].default, 2);
});

test('ndarray as nested lists, defaults filled in, numpy values back as JSON', async () => {
  const r = await execute(b, node.id, { x: [[1, 2, 3], [4, 5, 6]] });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.deepEqual(r.body.output, { y: [[2, 4, 6], [8, 10, 12]], total: 21, n_rows: 0, cols: [] });
});

test('ndarray as base64 raw bytes in, and out with ndarray_format base64', async () => {
  const r = await b.request('POST', `/datasphere/v1/nodes/${node.id}:execute`, {
    folder_id: 'default', ndarray_format: 'base64',
    input: { x: { dtype: 'float32', shape: [1, 3], data: f32b64([0.5, 1.5, 2.5]) }, k: 4 },
  });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.deepEqual(r.body.output.y, { dtype: 'float32', shape: [1, 3], data: f32b64([2, 6, 10]) });
  assert.equal(r.body.output.total, 4.5);
});

test('dataframe in records and split orientation; list[str]', async () => {
  const records = await execute(b, node.id, { x: [[0, 0, 0]], df: [{ a: 1, b: 'x' }, { a: 2, b: 'y' }], tags: ['t'] });
  assert.equal(records.status, 200, JSON.stringify(records.body));
  assert.deepEqual([records.body.output.n_rows, records.body.output.cols], [2, ['a', 'b', 't']]);
  const split = await execute(b, node.id, { x: [[0, 0, 0]], df: { columns: ['c'], data: [[1], [2], [3]], index: ['r1', 'r2', 'r3'] } });
  assert.equal(split.status, 200, JSON.stringify(split.body));
  assert.deepEqual([split.body.output.n_rows, split.body.output.cols], [3, ['c']]);
});

test('bad values: 400 INVALID_INPUT naming the variable and what was expected', async () => {
  const cases: Array<[Record<string, unknown>, string, RegExp]> = [
    [{ x: [[1, 2], [3, 4]] }, 'x', /shape \[-1,3\].*got shape \[2,2\]/],
    [{ x: [[1, 2, 3], [4, 5]] }, 'x', /regular tensor/],
    [{ x: [[1, 2, 'a']] }, 'x', /float32 values, got string/],
    [{ x: 'abc' }, 'x', /float32 tensor/],
    [{ x: { dtype: 'float64', shape: [1, 3], data: f32b64([1, 2, 3, 4, 5, 6]) } }, 'x', /dtype float32, got float64/],
    [{ x: { dtype: 'float32', shape: [2, 3], data: f32b64([1, 2, 3]) } }, 'x', /24 bytes.*got 12/],
    [{ x: [[1, 2, 3]], df: [1, 2] }, 'df', /records are row objects/],
    [{ x: [[1, 2, 3]], df: { columns: ['a'], data: [[1, 2]] } }, 'df', /1 values/],
    [{ x: [[1, 2, 3]], tags: ['a', 3] }, 'tags', /at \[1\] must be a string/],
    [{ x: [[1, 2, 3]], k: 'two' }, 'k', /must be a number/],
    [{ k: 1 }, 'x', /missing/],
  ];
  for (const [input, variable, message] of cases) {
    const r = await execute(b, node.id, input);
    assert.equal(r.status, 400, JSON.stringify(input));
    assert.equal(r.body.code, 'INVALID_INPUT');
    assert.equal(r.body.details.variable, variable, JSON.stringify(r.body));
    assert.equal(r.body.details.expected, MODEL_NODE.inputs.find((v) => v.name === variable)!.type);
    assert.match(r.body.message, new RegExp(`"${variable}"`));
    assert.match(r.body.message, message);
  }
  const fmt = await b.request('POST', `/datasphere/v1/nodes/${node.id}:execute`, { folder_id: 'default', ndarray_format: 'hex', input: { x: [[1, 2, 3]] } });
  assert.equal(fmt.status, 400);
  assert.equal(fmt.body.details.field, 'ndarray_format');
});

test('a node declaring a bad type or default is refused naming the field, and nothing is created', async () => {
  const before = (await b.request('GET', '/v1/nodes')).body.nodes.length;
  const bad = await b.request('POST', '/v1/nodes', { ...MODEL_NODE, name: 'bad', checkpointId: 'model', inputs: [{ name: 'x', type: 'ndarray[float32,-1', default: 1 }] });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.details.field, 'inputs[0].type');
  const dflt = await b.request('POST', '/v1/nodes', { ...MODEL_NODE, name: 'bad', checkpointId: 'model', inputs: [{ name: 'x', type: 'ndarray[int8,2]', default: [1, 2, 3] }] });
  assert.equal(dflt.status, 400);
  assert.equal(dflt.body.details.field, 'inputs[0].default');
  assert.equal((await b.request('GET', '/v1/nodes')).body.nodes.length, before);
});

test('the CLI takes name:type[=default] with brackets', async () => {
  const r = b.cli('node', 'create', '--name', 'cli-model', '--checkpoint', 'model', '--no-wait', '--json',
    '--input', 'x:ndarray[float32,-1,3]', '--input', 'k:float=3', '--input', 'tags:list[str]=["a"]', '--input', 'df:dataframe=[]',
    '--output', 'y:ndarray[float32,-1,3]', '--output', 'total:float', '--output', 'n_rows:int', '--output', 'cols:list[str]');
  assert.equal(r.status, 0, r.stderr);
  const made = JSON.parse(r.stdout);
  assert.deepEqual(made.inputs.slice(0, 3), [{ name: 'x', type: 'ndarray[float32,-1,3]' }, { name: 'k', type: 'float', default: 3 }, { name: 'tags', type: 'list[str]', default: ['a'] }]);
  assert.equal((await b.request('DELETE', `/v1/nodes/${made.id}`)).status < 300, true);
});

test("another folder's caller and a viewer cannot call the typed node", async () => {
  const other = await execute(b, node.id, { x: [[1, 2, 3]] }, 'team-b', `Bearer ${tokens.other}`);
  assert.equal(other.status, 403);
  const asDefault = await execute(b, node.id, { x: [[1, 2, 3]] }, 'default', `Bearer ${tokens.other}`);
  assert.equal(asDefault.status, 403);
  const viewer = await execute(b, node.id, { x: [[1, 2, 3]] }, 'default', `Bearer ${tokens.viewer}`);
  assert.equal(viewer.status, 403);
  const executor = await execute(b, node.id, { x: [[1, 2, 3]] }, 'default', `Bearer ${tokens.executor}`);
  assert.equal(executor.status, 200);
});

// ---- the per-node OpenAPI contract, the Swagger UI, aliases over compatible nodes ----

async function validOpenApi(doc: unknown): Promise<void> {
  const { Validator } = await import('@seriousme/openapi-schema-validator');
  const v = new Validator();
  const res = await v.validate(doc as Parameters<typeof v.validate>[0]);
  assert.ok(res.valid, JSON.stringify(res.errors, null, 1));
  assert.equal(v.version, '3.1');
}

test('GET /v1/nodes/{ref}/openapi.json: a valid OpenAPI 3.1 document typed from the variables, whose example runs', async () => {
  const r = await b.request('GET', `/v1/nodes/${node.id}/openapi.json`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  const doc = r.body;
  await validOpenApi(doc);
  const path = `/datasphere/v1/nodes/${node.id}:execute`;
  const op = doc.paths[path].post;
  const input = doc.components.schemas.Input;
  assert.deepEqual(input.required, ['x']);
  assert.equal(input.properties.x['x-berth-type'], 'ndarray[float32,-1,3]');
  assert.equal(input.properties.x.oneOf[0].items.minItems, 3);
  assert.equal(input.properties.x.oneOf[1].properties.dtype.const, 'float32');
  assert.equal(input.properties.k.default, 2);
  assert.deepEqual(doc.components.schemas.Output.required, ['y', 'total', 'n_rows', 'cols']);
  // error bodies from the catalogue, by status
  assert.ok(op.responses['400'].content['application/json'].schema.allOf[1].properties.code.enum.includes('INVALID_INPUT'));
  assert.ok(op.responses['500'].content['application/json'].schema.allOf[1].properties.code.enum.includes('EXECUTION_ERROR'));
  assert.ok(op.responses['504']);
  assert.equal(doc.servers[0].url, b.url);
  // over HTTP/2 (h2c) too, where the host is the caller's :authority
  const h2 = connect(b.url);
  try {
    const req = h2.request({ ':path': `/v1/nodes/${node.id}/openapi.json`, authorization: `Bearer ${b.token}` });
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    await new Promise((resolve, reject) => { req.once('end', resolve); req.once('error', reject); });
    assert.equal(JSON.parse(Buffer.concat(chunks).toString()).servers[0].url, b.url);
  } finally {
    h2.close();
  }
  // the document's own example is a call that works
  const example = op.requestBody.content['application/json'].example;
  const call = await b.request('POST', path, example);
  assert.equal(call.status, 200, JSON.stringify(call.body));
  assert.deepEqual(Object.keys(call.body.output), ['y', 'total', 'n_rows', 'cols']);
  // the same node as an Open Inference Protocol model, whose example runs too
  const oipPath = `/v2/models/${node.id}/infer`;
  const oip = doc.paths[oipPath].post;
  assert.deepEqual(oip.requestBody.content['application/json'].schema.properties.inputs.items.oneOf.map((t: any) => t.properties.datatype.const), ['FP32', 'FP64', 'BYTES', 'BYTES']);
  const oipCall = await b.request('POST', oipPath, oip.requestBody.content['application/json'].example, { 'x-folder-id': 'default' });
  assert.equal(oipCall.status, 200, JSON.stringify(oipCall.body));
  // by name too
  const byName = await b.request('GET', '/v1/nodes/model/openapi.json');
  assert.equal(byName.status, 200);
  assert.deepEqual(byName.body.components.schemas.Input, input);
});

test("the contract is for readers and callers only: another folder's token gets 404, no token 401", async () => {
  assert.equal((await b.request('GET', `/v1/nodes/${node.id}/openapi.json`, undefined, { authorization: '' })).status, 401);
  assert.equal((await b.request('GET', `/v1/nodes/${node.id}/openapi.json`, undefined, as('other'))).status, 404);
  assert.equal((await b.request('GET', '/v1/nodes/model/openapi.json', undefined, as('other'))).status, 404);
  assert.equal((await b.request('GET', `/v1/nodes/${node.id}/openapi.json`, undefined, as('viewer'))).status, 200, 'a reader');
  assert.equal((await b.request('GET', `/v1/nodes/${node.id}/openapi.json`, undefined, as('executor'))).status, 200, 'a caller');
  // a viewer in a folder on the ACL may not call from there, and may not read the node's folder
  const viewerB = tokens.viewerB!;
  const acl = await b.request('PATCH', `/v1/nodes/${node.id}`, { permissions: { folders: ['default', 'team-b'] } });
  assert.equal(acl.status, 200, JSON.stringify(acl.body));
  try {
    assert.equal((await b.request('GET', `/v1/nodes/${node.id}/openapi.json`, undefined, { authorization: `Bearer ${viewerB}` })).status, 404);
    assert.equal((await b.request('GET', `/v1/nodes/${node.id}/openapi.json`, undefined, as('other'))).status, 200, 'an executor of a folder on the ACL');
  } finally {
    assert.equal((await b.request('PATCH', `/v1/nodes/${node.id}`, { permissions: { folders: ['default'] } })).status, 200);
  }
});

test('Swagger UI: /docs and /docs/nodes/{ref} are public pages; the document they load is not', async () => {
  for (const path of ['/docs', `/docs/nodes/${node.id}`, '/docs/static/swagger-ui-bundle.js']) {
    const res = await fetch(b.url + path);
    assert.equal(res.status, 200, path);
    await res.arrayBuffer();
  }
  const page = await (await fetch(`${b.url}/docs/nodes/${node.id}`)).text();
  assert.match(page, new RegExp(`/v1/nodes/${node.id}/openapi.json`));
  assert.match(page, /berth-contract.js/);
  assert.match(await (await fetch(`${b.url}/docs/berth-contract.js`)).text(), /requestInterceptor/);
  assert.equal((await fetch(`${b.url}/v1/nodes/${node.id}/openapi.json`)).status, 401);
  const control = await (await fetch(`${b.url}/docs/json`)).json() as any;
  assert.equal(control.components.securitySchemes.bearer.scheme, 'bearer');
  assert.ok(control.paths['/v1/nodes/{ref}/openapi.json']);
});

test('aliases over cell nodes: one contract; a create or shift mixing contracts is refused naming the variable', async () => {
  const twin = await createNode(b, { ...MODEL_NODE, name: 'model-twin', checkpointId: 'model' }, false);
  const other = await createNode(b, { ...MODEL_NODE, name: 'model-f64', checkpointId: 'model', inputs: [{ ...MODEL_NODE.inputs[0], type: 'ndarray[float64,-1,3]' }, ...MODEL_NODE.inputs.slice(1)] }, false);
  const made = await b.request('POST', '/v1/aliases', { name: 'model-alias', backends: [{ nodeId: node.id, weight: 90 }, { nodeId: twin.id, weight: 10 }] });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  const doc = await b.request('GET', '/v1/aliases/model-alias/openapi.json');
  assert.equal(doc.status, 200);
  await validOpenApi(doc.body);
  assert.ok(doc.body.paths['/datasphere/v1/aliases/model-alias:execute']);
  assert.equal((await b.request('GET', '/v1/aliases/model-alias/openapi.json', undefined, as('other'))).status, 404);
  assert.equal((await b.request('GET', '/v1/aliases/model-alias/openapi.json', undefined, as('viewerB'))).status, 404);
  assert.equal((await b.request('GET', '/v1/aliases/model-alias/openapi.json', undefined, as('executor'))).status, 200, 'a caller');

  const shift = await b.request('PATCH', '/v1/aliases/model-alias', { backends: [{ nodeId: node.id, weight: 50 }, { nodeId: other.id, weight: 50 }] });
  assert.equal(shift.status, 409, JSON.stringify(shift.body));
  assert.equal(shift.body.code, 'CONTRACT_MISMATCH');
  assert.equal(shift.body.details.variable, 'x');
  assert.equal(shift.body.details.field, 'backends[1].nodeId');
  assert.match(shift.body.message, /"x" is ndarray\[float32,-1,3\] \(required\) on the first backend but ndarray\[float64,-1,3\] \(required\)/);
  const still = await b.request('GET', '/v1/aliases/model-alias');
  assert.deepEqual(still.body.backends.map((x: any) => x.nodeId), [node.id, twin.id], 'nothing changed');
  const create = await b.request('POST', '/v1/aliases', { name: 'mixed', backends: [{ nodeId: other.id, weight: 1 }, { nodeId: node.id, weight: 1 }] });
  assert.equal(create.status, 409);
  assert.equal(create.body.details.variable, 'x');
  assert.equal((await b.request('GET', '/v1/aliases/mixed')).status, 404);
  // a node behind the alias cannot change its contract alone
  const update = await b.request('PATCH', `/v1/nodes/${twin.id}`, { outputs: [...MODEL_NODE.outputs.slice(0, 3), { name: 'cols', type: 'list[int]' }] });
  assert.equal(update.status, 409, JSON.stringify(update.body));
  assert.equal(update.body.code, 'CONTRACT_MISMATCH');
  assert.equal(update.body.details.variable, 'cols');
  assert.equal(update.body.details.aliasName, 'model-alias');
  assert.equal((await b.request('GET', `/v1/nodes/${twin.id}`)).body.outputs[3].type, 'list[str]', 'nothing changed');
  assert.equal((await b.request('DELETE', '/v1/aliases/model-alias')).status, 200);
  for (const n of [twin, other]) await b.request('DELETE', `/v1/nodes/${n.id}`);
});

test('berth node snippet: the curl and python calls it prints work as printed; typescript and grpc name the call', async () => {
  const { spawnSync } = await import('node:child_process');
  const { PYTHON } = await import('./helpers.js');
  const env = { ...process.env, BERTH_TOKEN: tokens.executor };
  const curl = b.cli('node', 'snippet', 'model', '--lang', 'curl');
  assert.equal(curl.status, 0, curl.stderr);
  assert.doesNotMatch(curl.stdout, new RegExp(b.token), 'no token in a snippet');
  const ran = spawnSync('sh', ['-c', curl.stdout], { env, encoding: 'utf8', timeout: 30_000 });
  assert.equal(ran.status, 0, ran.stderr);
  assert.deepEqual(JSON.parse(ran.stdout).output.y, [[1, 2, 3]].map((r) => r.map((_, i) => (0.5 + i) * 2)));
  const py = b.cli('node', 'snippet', 'model', '--lang', 'python');
  assert.equal(py.status, 0, py.stderr);
  const pyRan = spawnSync(PYTHON, ['-c', py.stdout], { env, encoding: 'utf8', timeout: 30_000 });
  assert.equal(pyRan.status, 0, pyRan.stderr);
  assert.deepEqual(Object.keys(JSON.parse(pyRan.stdout)), ['y', 'total', 'n_rows', 'cols']);
  const grpc = b.cli('node', 'snippet', 'model', '--lang', 'grpc');
  assert.match(grpc.stdout, /berth\.nodes\.v1\.Model\/Execute/);
  assert.match(grpc.stdout, /"dtype":"float32","shape":\[1,3\],"data":"/);
  // the typescript one from the same generator (each CLI run costs seconds here)
  const { snippet } = await import('../src/contracts/snippets.js');
  const ts = snippet('typescript', { url: b.url, nodeId: node.id, folderId: 'default', inputs: node.inputs, service: 'berth.nodes.v1.Model' });
  assert.match(ts, new RegExp(`fetch\\("${b.url}/datasphere/v1/nodes/${node.id}:execute"`));
  assert.match(ts, /process\.env\.BERTH_TOKEN/);
});

// ---- the typed gRPC service, through reflection only ----

test('berth node proto: a .proto protobufjs parses, with typed messages and service berth.nodes.v1.Model', async () => {
  const protobuf = (await import('protobufjs')).default;
  const r = b.cli('node', 'proto', 'model');
  assert.equal(r.status, 0, r.stderr);
  // as protoc would: the imports from the include path (Berth's proto/ has the well-known types)
  const { readFileSync } = await import('node:fs');
  const root = new protobuf.Root();
  const parsed = protobuf.parse(r.stdout, root, { keepCase: true });
  assert.equal(parsed.package, 'berth.nodes.v1');
  assert.deepEqual(parsed.imports, ['google/protobuf/struct.proto']);
  protobuf.parse(readFileSync(new URL('../proto/google/protobuf/struct.proto', import.meta.url), 'utf8'), root, { keepCase: true });
  root.resolveAll();
  const svc = parsed.root.lookupService('berth.nodes.v1.Model');
  assert.deepEqual(Object.keys(svc.methods), ['Execute']);
  const input = parsed.root.lookupType('berth.nodes.v1.ModelInput');
  assert.equal(input.fields.x!.type, 'ModelTensor');
  assert.equal(input.fields.k!.type, 'double');
  assert.ok(input.fields.k!.options?.proto3_optional || input.fields.k!.partOf, 'k has a default: optional');
  assert.equal(input.fields.tags!.repeated, true);
  const output = parsed.root.lookupType('berth.nodes.v1.ModelOutput');
  assert.equal(output.fields.n_rows!.type, 'int64');
  // another folder's token and a too small role cannot read it; a caller can
  assert.equal((await b.request('GET', `/v1/nodes/${node.id}/node.proto`, undefined, as('other'))).status, 404);
  assert.equal((await b.request('GET', `/v1/nodes/${node.id}/node.proto`, undefined, as('viewerB'))).status, 404);
  assert.equal((await b.request('GET', `/v1/nodes/${node.id}/node.proto`, undefined, as('executor'))).status, 200);
});

test('typed gRPC: reflection lists berth.nodes.v1.Model to its callers only; Execute by typed fields; bad values named', async () => {
  const { ReflectionClient, genericClient, unary, authMetadata } = await import('./reflection-client.js');
  const target = b.url.replace(/^http:\/\//, '');
  const refl = new ReflectionClient(target, authMetadata(tokens.executor!));
  const services = await refl.listServices();
  assert.ok(services.includes('berth.nodes.v1.Model'), services.join(','));
  assert.ok(services.includes('yandex.cloud.datasphere.v1.NodeService'));
  const root = await refl.root('berth.nodes.v1.Model');
  refl.close();
  for (const [who, md] of [['another folder', authMetadata(tokens.other!)], ['no token', authMetadata(null)]] as const) {
    const r = new ReflectionClient(target, md);
    assert.ok(!(await r.listServices()).includes('berth.nodes.v1.Model'), `${who} does not see the node's service`);
    r.close();
  }
  const client = genericClient(root, 'berth.nodes.v1.Model', target);
  try {
    const x = { dtype: 'float32', shape: [2, 3], data: Buffer.from(new Float32Array([1, 2, 3, 4, 5, 6]).buffer) };
    // folder from x-folder-id; defaults for k, df, tags
    const ok = await unary(client, 'Execute', { input: { x } }, authMetadata(tokens.executor!, { 'x-folder-id': 'default' }));
    assert.ifError(ok.err);
    const y = ok.res.output.y;
    assert.equal(y.dtype, 'float32');
    assert.deepEqual(y.shape, [2, 3]);
    assert.deepEqual([...new Float32Array(new Uint8Array(y.data).buffer)], [2, 4, 6, 8, 10, 12]);
    assert.equal(ok.res.output.total, 21);
    assert.equal(ok.res.output.n_rows, 0);
    // folder_id in the message, k set, a dataframe as a Value, a list[str]
    const df = { list_value: { values: [{ struct_value: { fields: { a: { number_value: 1 } } } }] } };
    const full = await unary(client, 'Execute', { folder_id: 'default', input: { x, k: 1, df, tags: ['t'] } }, authMetadata(tokens.executor!));
    assert.ifError(full.err);
    assert.deepEqual([...new Float32Array(new Uint8Array(full.res.output.y.data).buffer)], [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(full.res.output.cols, ['a', 't']);
    // a token of one folder needs no folder at all
    assert.ifError((await unary(client, 'Execute', { input: { x } }, authMetadata(tokens.executor!))).err);
    // bad shape: INVALID_ARGUMENT naming the variable
    const bad = await unary(client, 'Execute', { input: { x: { dtype: 'float32', shape: [3], data: Buffer.alloc(12) } } }, authMetadata(tokens.executor!));
    assert.equal(bad.err?.code, grpcStatus.INVALID_ARGUMENT);
    assert.match(bad.err!.details, /"x".*shape \[-1,3\]/);
    assert.equal(bad.err!.metadata.get('berth-error-code')[0], 'INVALID_INPUT');
    const missing = await unary(client, 'Execute', { input: {} }, authMetadata(tokens.executor!));
    assert.match(missing.err!.details, /"x" is missing/);
    // another folder's caller, a viewer, no token
    assert.equal((await unary(client, 'Execute', { folder_id: 'team-b', input: { x } }, authMetadata(tokens.other!))).err?.code, grpcStatus.PERMISSION_DENIED);
    assert.equal((await unary(client, 'Execute', { folder_id: 'default', input: { x } }, authMetadata(tokens.viewer!))).err?.code, grpcStatus.PERMISSION_DENIED);
    assert.equal((await unary(client, 'Execute', { folder_id: 'default', input: { x } }, authMetadata(null))).err?.code, grpcStatus.UNAUTHENTICATED);
    // the admin token holds every folder: it must name one
    const admin = await unary(client, 'Execute', { input: { x } }, authMetadata(b.token));
    assert.equal(admin.err?.code, grpcStatus.INVALID_ARGUMENT);
    assert.match(admin.err!.details, /x-folder-id/);
  } finally {
    client.close();
  }
});

// ---- the Open Inference Protocol (KServe v2): REST with plain HTTP, gRPC from a generated Python client ----

async function v2(method: string, path: string, who: string | null, headers: Record<string, string> = {}, body?: BodyInit): Promise<Response> {
  return fetch(b.url + path, { method, body, headers: { ...(who ? { authorization: `Bearer ${who}` } : {}), ...headers } });
}

test('OIP REST: health, metadata, readiness, JSON infer, with auth and folder checks', async () => {
  assert.deepEqual(await (await v2('GET', '/v2/health/live', tokens.executor!)).json(), { live: true });
  assert.deepEqual(await (await v2('GET', '/v2/health/ready', tokens.executor!)).json(), { ready: true });
  assert.equal((await v2('GET', '/v2/health/live', null)).status, 401);
  const meta = await v2('GET', '/v2/models/model', b.token, { 'x-folder-id': 'default' });
  assert.equal(meta.status, 200);
  const m = await meta.json() as any;
  assert.deepEqual(m.inputs, [
    { name: 'x', datatype: 'FP32', shape: [-1, 3] }, { name: 'k', datatype: 'FP64', shape: [1] },
    { name: 'df', datatype: 'BYTES', shape: [1] }, { name: 'tags', datatype: 'BYTES', shape: [-1] }]);
  assert.deepEqual(m.outputs.map((o: any) => [o.name, o.datatype]), [['y', 'FP32'], ['total', 'FP64'], ['n_rows', 'INT64'], ['cols', 'BYTES']]);
  assert.deepEqual(await (await v2('GET', `/v2/models/${node.id}/ready`, tokens.executor!)).json(), { name: node.id, ready: true });

  const infer = (who: string | null, body: unknown, headers: Record<string, string> = {}) =>
    v2('POST', '/v2/models/model/infer', who, { 'content-type': 'application/json', ...headers }, JSON.stringify(body));
  const ok = await infer(tokens.executor!, { id: 'r1', inputs: [{ name: 'x', shape: [2, 3], datatype: 'FP32', data: [[1, 2, 3], [4, 5, 6]] }, { name: 'k', shape: [1], datatype: 'FP64', data: [3] }, { name: 'tags', shape: [1], datatype: 'BYTES', data: ['t'] }] });
  assert.equal(ok.status, 200, await ok.clone().text());
  const out = await ok.json() as any;
  assert.equal(out.id, 'r1');
  assert.equal(out.model_name, 'model');
  const y = out.outputs.find((o: any) => o.name === 'y');
  assert.deepEqual([y.datatype, y.shape, y.data], ['FP32', [2, 3], [3, 6, 9, 12, 15, 18]]);
  assert.deepEqual(out.outputs.find((o: any) => o.name === 'total').data, [21]);
  assert.deepEqual(out.outputs.find((o: any) => o.name === 'cols').data, ['t']);

  // a bad tensor: 400 naming the variable and what was expected, in Berth's body and the protocol's "error"
  const bad = await infer(tokens.executor!, { inputs: [{ name: 'x', shape: [4], datatype: 'FP32', data: [1, 2, 3, 4] }] });
  assert.equal(bad.status, 400);
  const be = await bad.json() as any;
  assert.equal(be.code, 'INVALID_INPUT');
  assert.equal(be.details.variable, 'x');
  assert.match(be.error, /"x".*shape \[-1,3\].*got shape \[4\]/);
  const dt = await infer(tokens.executor!, { inputs: [{ name: 'x', shape: [1, 3], datatype: 'INT32', data: [1, 2, 3] }] });
  assert.match(((await dt.json()) as any).message, /dtype float32, got int32/);
  let deep: unknown = 1;
  for (let i = 0; i < 1000; i++) deep = [deep];
  const nested = await infer(tokens.executor!, { inputs: [{ name: 'x', shape: [1, 3], datatype: 'FP32', data: deep }] });
  assert.equal(nested.status, 400, 'hostile nesting is a 400 naming the tensor, not a crash');
  assert.match(((await nested.json()) as any).message, /"x" nests its data deeper than 32 axes/);
  const count = await infer(tokens.executor!, { inputs: [{ name: 'x', shape: [1, 3], datatype: 'FP32', data: [1, 2] }] });
  assert.match(((await count.json()) as any).message, /"x" has 2 values for shape \[1,3\]/);

  // auth and folders as for execute
  const x = { name: 'x', shape: [1, 3], datatype: 'FP32', data: [1, 2, 3] };
  assert.equal((await infer(null, { inputs: [x] })).status, 401);
  assert.equal((await infer(tokens.other!, { inputs: [x] })).status, 404, "another folder's caller does not find it by name");
  assert.equal((await v2('POST', `/v2/models/${node.id}/infer`, tokens.other!, { 'content-type': 'application/json' }, JSON.stringify({ inputs: [x] }))).status, 403, 'nor call it by id');
  assert.equal((await infer(tokens.other!, { inputs: [x] }, { 'x-folder-id': 'default' })).status, 403);
  assert.equal((await infer(tokens.viewer!, { inputs: [x] })).status, 403);
  assert.equal((await v2('GET', '/v2/models/model', tokens.other!, { 'x-folder-id': 'team-b' })).status, 404);
  const admin = await infer(b.token, { inputs: [x] });
  assert.equal(admin.status, 400);
  assert.equal(((await admin.json()) as any).details.field, 'x-folder-id');
});

test('OIP REST binary-data extension: raw tensors in and out after a JSON header', async () => {
  const raw = Buffer.from(new Float32Array([1, 2, 3, 4, 5, 6]).buffer);
  const head = Buffer.from(JSON.stringify({
    inputs: [{ name: 'x', shape: [2, 3], datatype: 'FP32', parameters: { binary_data_size: raw.length } }],
    outputs: [{ name: 'y', parameters: { binary_data: true } }, { name: 'total' }],
  }));
  const r = await v2('POST', '/v2/models/model/infer', tokens.executor!, { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(head.length) }, Buffer.concat([head, raw]));
  assert.equal(r.status, 200, await r.clone().text());
  const n = Number(r.headers.get('inference-header-content-length'));
  const body = Buffer.from(await r.arrayBuffer());
  const answer = JSON.parse(body.subarray(0, n).toString('utf8'));
  assert.deepEqual(answer.outputs.map((o: any) => o.name), ['y', 'total'], 'only the outputs asked for');
  const y = answer.outputs[0];
  assert.deepEqual([y.datatype, y.shape, y.parameters.binary_data_size], ['FP32', [2, 3], 24]);
  const yRaw = body.subarray(n, n + 24);
  assert.deepEqual([...new Float32Array(yRaw.buffer.slice(yRaw.byteOffset, yRaw.byteOffset + 24))], [2, 4, 6, 8, 10, 12]);
  assert.deepEqual(answer.outputs[1].data, [21]);
  const short = await v2('POST', '/v2/models/model/infer', tokens.executor!, { 'inference-header-content-length': String(head.length) }, Buffer.concat([head, raw.subarray(0, 10)]));
  assert.equal(short.status, 400);
  assert.match(((await short.json()) as any).details.field, /binary_data_size/);
});

test('OIP gRPC: a Python client generated from the protocol .proto with grpc_tools calls a node', async () => {
  const { spawnSync } = await import('node:child_process');
  const { PYTHON, ROOT } = await import('./helpers.js');
  const script = `
import json, sys, tempfile
import grpc
import numpy as np
from grpc_tools import protoc
out = tempfile.mkdtemp()
assert protoc.main(["protoc", "-I" + sys.argv[1], "--python_out=" + out, "--grpc_python_out=" + out, "inference/grpc_predict_v2.proto"]) == 0
sys.path.insert(0, out)
from inference import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pbg
target, executor, other = sys.argv[2], sys.argv[3], sys.argv[4]
stub = pbg.GRPCInferenceServiceStub(grpc.insecure_channel(target))
md = [("authorization", "Bearer " + executor)]
res = {"live": stub.ServerLive(pb.ServerLiveRequest(), metadata=md).live,
       "ready": stub.ModelReady(pb.ModelReadyRequest(name="model"), metadata=md).ready}
meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="model"), metadata=md)
res["inputs"] = [[t.name, t.datatype, list(t.shape)] for t in meta.inputs]
# typed contents
req = pb.ModelInferRequest(model_name="model", id="c1")
x = req.inputs.add(name="x", datatype="FP32", shape=[2, 3])
x.contents.fp32_contents.extend([1, 2, 3, 4, 5, 6])
req.inputs.add(name="k", datatype="FP64", shape=[1]).contents.fp64_contents.append(0.5)
ans = stub.ModelInfer(req, metadata=md)
outs = {o.name: (o.datatype, list(o.shape), raw) for o, raw in zip(ans.outputs, ans.raw_output_contents)}
res["y"] = np.frombuffer(outs["y"][2], dtype="<f4").tolist()
res["total"] = np.frombuffer(outs["total"][2], dtype="<f8").tolist()
res["id"] = ans.id
# raw_input_contents
req = pb.ModelInferRequest(model_name="model")
req.inputs.add(name="x", datatype="FP32", shape=[1, 3])
req.raw_input_contents.append(np.array([[1, 1, 1]], dtype="<f4").tobytes())
ans = stub.ModelInfer(req, metadata=md)
res["raw_y"] = np.frombuffer(ans.raw_output_contents[0], dtype="<f4").tolist()
def code(call):
    try:
        call()
        return "OK"
    except grpc.RpcError as e:
        return [e.code().name, e.details()]
bad = pb.ModelInferRequest(model_name="model")
bad.inputs.add(name="x", datatype="FP32", shape=[2]).contents.fp32_contents.extend([1, 2])
res["bad"] = code(lambda: stub.ModelInfer(bad, metadata=md))
ok_req = pb.ModelInferRequest(model_name="model")
ok_req.inputs.add(name="x", datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
res["other_default"] = code(lambda: stub.ModelInfer(ok_req, metadata=[("authorization", "Bearer " + other), ("x-folder-id", "default")]))
res["other_named"] = code(lambda: stub.ModelInfer(ok_req, metadata=[("authorization", "Bearer " + other)]))
res["no_token"] = code(lambda: stub.ModelInfer(ok_req))
print(json.dumps(res))
`;
  const r = spawnSync(PYTHON, ['-c', script, `${ROOT}/proto`, b.url.replace(/^http:\/\//, ''), tokens.executor!, tokens.other!], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout);
  assert.equal(res.live, true);
  assert.equal(res.ready, true);
  assert.deepEqual(res.inputs[0], ['x', 'FP32', [-1, 3]]);
  assert.deepEqual(res.y, [0.5, 1, 1.5, 2, 2.5, 3]);
  assert.deepEqual(res.total, [21]);
  assert.equal(res.id, 'c1');
  assert.deepEqual(res.raw_y, [2, 2, 2]);
  assert.equal(res.bad[0], 'INVALID_ARGUMENT');
  assert.match(res.bad[1], /"x".*shape \[-1,3\]/);
  assert.equal(res.other_default[0], 'PERMISSION_DENIED');
  assert.equal(res.other_named[0], 'NOT_FOUND');
  assert.equal(res.no_token[0], 'UNAUTHENTICATED');
});

test('Swagger UI in a real browser: the token from the fragment (then dropped from the URL), the typed form, "try it out" runs the node', async () => {
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: process.env.BERTH_CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage();
    await page.goto(`${b.url}/docs/nodes/${node.id}#token=${tokens.executor}`);
    await page.waitForSelector('.opblock-summary-path', { timeout: 30_000 });
    assert.doesNotMatch(page.url(), /token=/, 'the token leaves the address bar');
    assert.match(await page.textContent('.opblock-summary-path') ?? '', new RegExp(`/datasphere/v1/nodes/${node.id}:execute`));
    await page.click('.opblock-summary');
    const tryIt = page.locator('button.try-out__btn:not(.cancel)'); // tryItOutEnabled: usually on already
    if (await tryIt.count()) await tryIt.click();
    await page.click('button.execute');
    await page.waitForSelector('.live-responses-table tr.response .response-col_status', { timeout: 30_000 });
    assert.equal((await page.textContent('.live-responses-table tr.response .response-col_status'))?.trim(), '200');
    assert.match(await page.textContent('.live-responses-table .microlight') ?? '', /"output"/);

    // no token: the page asks; another folder's token: the document does not load
    const other = await browser.newPage();
    await other.goto(`${b.url}/docs/nodes/${node.id}`);
    await other.waitForSelector('#berth-token:not([hidden])', { timeout: 10_000 });
    await other.fill('#berth-token input', tokens.other!);
    const loaded = other.waitForResponse((r) => r.url().endsWith(`/v1/nodes/${node.id}/openapi.json`), { timeout: 30_000 });
    await other.click('#berth-token button');
    assert.equal((await loaded).status(), 404, 'the document is refused to that token');
    assert.equal(await other.locator('.opblock-summary-path').count(), 0, "another folder's token sees no operation");
  } finally {
    await browser.close();
  }
});
