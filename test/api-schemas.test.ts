// The control API's schemas (src/api/schemas.ts) against the real API: /openapi.json is valid
// OpenAPI and declares a response schema for every route, then every route is called for real
// on a `berth up` (successes and 400/401/403/404/409/415/422/429 refusals, callers from another
// folder and with too small a role) and every answer body is validated with ajv against the schema
// /openapi.json declares for that route, status and media type (JSON, or the .proto's text and the
// Swagger UI pages' HTML). Objects are closed for the check (no field the
// schema does not list), so a schema that drifts from the code fails here.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Ajv, type ValidateFunction } from 'ajv';
import { Validator } from '@seriousme/openapi-schema-validator';
import { startBerth, removeHome, waitFor, execute, type Berth } from './helpers.js';

type Json = Record<string, any>;
let b: Berth;
let doc: Json;
let ajv: Ajv;
const tokens: Record<string, string> = {};
const as = (who: string): Record<string, string> => ({ authorization: `Bearer ${tokens[who]}` });
/** Every (method path status) seen, to check each route was exercised. */
const seen = new Set<string>();

/** Marks every schema object that lists properties as closed (deep copy). */
function closed(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(closed);
  if (typeof v !== 'object' || v === null) return v;
  const out: Json = {};
  for (const [k, x] of Object.entries(v)) out[k] = k === 'properties' ? Object.fromEntries(Object.entries(x as Json).map(([p, s]) => [p, closed(s)])) : closed(x);
  if (out.properties && out.additionalProperties === undefined) out.additionalProperties = false;
  return out;
}

const compiled = new Map<string, ValidateFunction>();
function validatorFor(schema: unknown): ValidateFunction {
  const text = JSON.stringify(schema).replaceAll('"#/components/', '"berth-components#/components/');
  let v = compiled.get(text);
  if (!v) { v = ajv.compile(JSON.parse(text) as Json); compiled.set(text, v); }
  return v;
}

/** The Swagger UI's page: fastify registers a prefix's root as /docs and /docs/, the document shows one. */
const uiPage = (): string => (doc.paths['/docs'] ? '/docs' : '/docs/');

/** Public routes (health, the Swagger UI pages) declare no security: no token, no 401, nothing to refuse. */
const isPublic = (op: Json): boolean => Array.isArray(op.security) && op.security.length === 0;

/** The operation /openapi.json declares for a route (path as in the document: /v1/nodes/{ref}). */
function operation(method: string, path: string): Json {
  const op = doc.paths[path]?.[method.toLowerCase()];
  assert.ok(op, `${method} ${path} is not in /openapi.json`);
  return op;
}

/** Validates an answer against the route's declared schema for its status. */
function checkAnswer(method: string, path: string, status: number, body: unknown, contentType = 'application/json'): void {
  const response = operation(method, path).responses[String(status)];
  assert.ok(response, `${method} ${path} answered ${status}, which /openapi.json does not declare (body ${JSON.stringify(body).slice(0, 300)})`);
  const media = response.content?.[contentType.split(';')[0]!.trim()];
  assert.ok(media?.schema, `${method} ${path} ${status}: no schema declared for ${contentType}`);
  const v = validatorFor(media.schema);
  assert.ok(v(body), `${method} ${path} ${status}: the answer does not match its schema: ${ajv.errorsText(v.errors)}\n${JSON.stringify(body).slice(0, 600)}`);
  seen.add(`${method} ${path} ${status}`);
}

/** Validates a request body the server accepted against the route's declared request schema. */
function checkRequest(method: string, path: string, body: unknown): void {
  const schema = operation(method, path).requestBody?.content?.['application/json']?.schema;
  assert.ok(schema, `${method} ${path}: no request body schema`);
  const v = validatorFor(schema);
  assert.ok(v(body), `${method} ${path}: an accepted request does not match its declared body schema: ${ajv.errorsText(v.errors)}`);
}

/**
 * Calls a route and validates the answer; `path` is the real path, `template` the document's.
 * `expect` is the status the call must get; good requests' bodies are checked against the body schema.
 */
async function call(method: string, path: string, template: string, expect: number, body?: unknown, who?: string | Record<string, string>): Promise<any> {
  const headers = typeof who === 'string' ? as(who) : who ?? {};
  const r = await b.request(method, path, body, headers);
  assert.equal(r.status, expect, `${method} ${path}: ${JSON.stringify(r.body).slice(0, 400)}`);
  checkAnswer(method, template, r.status, r.body, r.headers.get('content-type') ?? '');
  if (r.status < 300 && body !== undefined) checkRequest(method, template, body);
  if (r.status >= 400) assert.equal(typeof r.body.code, 'string');
  return r.body;
}

async function token(name: string, body: Json): Promise<string> {
  const r = await call('POST', '/v1/tokens', '/v1/tokens', 201, { name, ...body });
  return r.token;
}

before(async () => {
  b = await startBerth();
  const r = await fetch(`${b.url}/openapi.json`);
  assert.equal(r.status, 200);
  doc = await r.json() as Json;
  ajv = new Ajv({
    strict: false, allErrors: true,
    formats: { 'date-time': /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/, binary: true },
  });
  ajv.addSchema(closed({ components: doc.components }) as Json, 'berth-components');
});

after(async () => {
  await b?.stop();
  if (b) removeHome(b.home);
});

test('/openapi.json is valid OpenAPI, every route has request and response schemas, shared by reference', async () => {
  const result = await new Validator().validate(structuredClone(doc));
  assert.equal(result.valid, true, JSON.stringify(result.errors, null, 1)?.slice(0, 2000));
  const ops = Object.entries(doc.paths as Json).flatMap(([p, item]) => Object.entries(item as Json).map(([m, op]) => ({ path: p, method: m, op: op as Json })));
  assert.ok(ops.length >= 25, `only ${ops.length} operations`);
  for (const { path, method, op } of ops) {
    const where = `${method.toUpperCase()} ${path}`;
    assert.ok(op.summary && op.tags?.length, `${where}: summary and tags`);
    const codes = Object.keys(op.responses);
    const ok = codes.filter((c) => c.startsWith('2'));
    assert.equal(ok.length, 1, `${where}: one success answer, got ${codes}`);
    // JSON, or a text answer (node.proto, the Swagger UI pages, the watch stream) declared with its media type
    const media = Object.entries(op.responses[ok[0]!].content ?? {}) as Array<[string, Json]>;
    assert.ok(media.length > 0 && media.every(([type, m]) => m.schema && /^(application\/json|text\/(plain|html|event-stream))$/.test(type)), `${where}: a schema per media type for ${ok[0]}: ${JSON.stringify(media)}`);
    assert.ok(codes.includes('500'), `${where}: 500 declared`);
    assert.equal(codes.includes('401'), !isPublic(op), `${where}: 401 declared unless public`);
    for (const c of codes.filter((x) => x.startsWith('4') || x.startsWith('5'))) {
      assert.deepEqual(op.responses[c].content['application/json'].schema, { $ref: doc.paths['/v1/health'].get.responses['500'].content['application/json'].schema.$ref }, `${where} ${c}: the one error schema`);
    }
    if (['post', 'patch'].includes(method) && !path.includes('{action}')) assert.ok(op.requestBody, `${where}: a request body schema`);
    for (const p of (path.match(/\{(\w+)\}/g) ?? [])) {
      assert.ok(op.parameters?.some((x: Json) => x.in === 'path' && `{${x.name}}` === p && x.description), `${where}: path parameter ${p} described`);
    }
  }
  // shared schemas are referenced, not repeated, and named by their $id
  const names = Object.keys(doc.components.schemas);
  assert.ok(names.length >= 40);
  for (const n of ['Error', 'Node', 'CellNodeSpecIn', 'Checkpoint', 'Usage', 'NodeContract']) assert.ok(names.includes(n), `component ${n} in ${names}`);
  assert.ok(!names.some((n) => n.startsWith('def-')), `unnamed components: ${names}`);
  assert.equal(doc.paths['/v1/health'].get.responses['500'].content['application/json'].schema.$ref, '#/components/schemas/Error');
  // the routes that merged after the schemas: usage, contracts and the pages, public ones only the pages
  for (const p of ['/v1/usage', '/v1/nodes/{ref}/openapi.json', '/v1/aliases/{name}/openapi.json', '/v1/nodes/{ref}/node.proto', uiPage(), '/docs/nodes/{ref}', '/docs/aliases/{name}']) {
    assert.ok(doc.paths[p]?.get, `GET ${p} documented`);
    assert.equal(isPublic(doc.paths[p].get), p.startsWith('/docs'), `GET ${p}: public only for pages`);
  }
  // the UI's assets are not API
  assert.ok(!Object.keys(doc.paths).some((p) => p.startsWith('/docs/static') || p === '/docs/json' || p === '/docs/berth-contract.js'), Object.keys(doc.paths).join(' '));
  const size = JSON.stringify(doc).length;
  assert.ok(size < 200_000, `openapi.json is ${size} bytes`);
  // the node spec as sent documents its defaults and bounds
  const cellIn = doc.components.schemas.CellNodeSpecIn as Json;
  assert.deepEqual(cellIn.properties.scaling.properties.minInstances, { type: 'integer', minimum: 0, maximum: 64, default: 1, description: '0: scale to zero when idle, calls held while an instance starts (docs/scaling.md)' });
  assert.equal(cellIn.properties.timeout.default, 60);
});

test('tokens, whoami, health and servers: answers and refusals match their schemas', async () => {
  await call('GET', '/v1/health', '/v1/health', 200, undefined, { authorization: '' });
  await call('GET', '/v1/whoami', '/v1/whoami', 200);
  await call('GET', '/v1/whoami', '/v1/whoami', 401, undefined, { authorization: 'Bearer brt_nope' });
  tokens.editorB = await token('editor-b', { folders: ['team-b'], role: 'editor' });
  tokens.viewerB = await token('viewer-b', { folders: ['team-b'], role: 'viewer' });
  tokens.editorA = await token('editor-a', { roles: { 'team-a': 'editor' } });
  tokens.adminB = await token('admin-b', { roles: { 'team-b': 'admin' } });
  const who = await call('GET', '/v1/whoami', '/v1/whoami', 200, undefined, 'editorB');
  assert.equal(who.defaultFolder, 'team-b');
  await call('POST', '/v1/tokens', '/v1/tokens', 400, { name: 't', folders: ['team-b'], role: 'owner' });
  await call('POST', '/v1/tokens', '/v1/tokens', 403, { name: 't', folders: ['team-b'] }, 'adminB');
  const list = await call('GET', '/v1/tokens', '/v1/tokens', 200);
  assert.ok(list.tokens.every((t: Json) => t.token === undefined && t.hash === undefined), 'no secret in lists');
  await call('GET', '/v1/tokens', '/v1/tokens', 403, undefined, 'editorB');
  const { id } = await call('POST', '/v1/tokens', '/v1/tokens', 201, { name: 'gone', folders: ['team-b'] });
  await call('DELETE', `/v1/tokens/${id}`, '/v1/tokens/{id}', 403, undefined, 'editorB');
  await call('DELETE', `/v1/tokens/${id}`, '/v1/tokens/{id}', 200);
  await call('DELETE', `/v1/tokens/${id}`, '/v1/tokens/{id}', 404);
  // the servers sharing the store: this one alone on SQLite; infrastructure, so admin on "*" only
  const servers = await call('GET', '/v1/servers', '/v1/servers', 200);
  assert.deepEqual(servers.servers.map((x: Json) => [x.url, x.leader]), [[b.url, true]]);
  await call('GET', '/v1/servers', '/v1/servers', 403, undefined, 'adminB');
  await call('GET', '/v1/servers', '/v1/servers', 403, undefined, 'viewerB');
});

const CELLS = ['x = 0\n', 'print("called with", x)\ny = x\n'];
const NODE = { kind: 'cell', name: 'echo', checkpointId: 'echo-model', inputs: [{ name: 'x', type: 'any' }], outputs: [{ name: 'y', type: 'any' }] };
let node: Json;
let uploaded: Json;

test('checkpoints and secrets: run, upload, get, pin, delete and their refusals', async () => {
  const cp = await call('POST', '/v1/checkpoints', '/v1/checkpoints', 201, { cells: CELLS, name: 'echo-model' }, 'editorB');
  assert.equal(cp.folderId, 'team-b');
  await call('POST', '/v1/checkpoints', '/v1/checkpoints', 400, { name: 'nothing' }, 'editorB');
  await call('POST', '/v1/checkpoints', '/v1/checkpoints', 403, { cells: CELLS }, 'viewerB');
  await call('POST', '/v1/checkpoints', '/v1/checkpoints', 409, { cells: CELLS, name: 'echo-model' }, 'editorB');
  await call('POST', '/v1/checkpoints', '/v1/checkpoints', 422, { cells: ['raise ValueError("no")\n'] }, 'editorB');
  await call('PATCH', '/v1/folders/team-q/quota', '/v1/folders/{id}/quota', 200, { maxCheckpointRuns: 0 });
  await call('POST', '/v1/checkpoints', '/v1/checkpoints', 429, { cells: CELLS, folderId: 'team-q' });

  // a live-kernel upload: one JSON line, then the blob
  // (a kernel autosave: the cell it was taken after, the session and how many it keeps)
  const meta = { code: 'y = x', python: '3.11', executable: '/usr/bin/python3', packages: [], requires: [], variables: [{ name: 'x', type: 'int' }], skipped: [], cell: { number: 3, code: 'y = x' }, autosave: { session: 'k-1', keep: 2 } };
  const upload = async (contentType: string, who: string, extra: Json = {}): Promise<Response> => fetch(`${b.url}/v1/checkpoints:upload?folderId=team-b`, {
    method: 'POST', headers: { ...as(who), 'content-type': contentType },
    body: JSON.stringify({ ...meta, ...extra }) + '\nblob',
  });
  for (const [type, who, status, extra] of [
    ['application/vnd.berth.checkpoint', 'editorB', 201, {}], ['text/plain', 'editorB', 415, {}], ['application/vnd.berth.checkpoint', 'viewerB', 403, {}],
    ['application/vnd.berth.checkpoint', 'editorB', 400, { autosave: { session: 'k-1', keep: 0 } }], ['application/vnd.berth.checkpoint', 'editorB', 400, { cell: { number: -1, code: '' } }],
  ] as const) {
    const r = await upload(type, who, extra);
    const body = await r.json() as Json;
    assert.equal(r.status, status, JSON.stringify(body));
    checkAnswer('POST', '/v1/checkpoints:upload', r.status, body);
    if (status === 201) uploaded = body;
  }
  assert.equal(uploaded.source, 'kernel');
  assert.deepEqual([uploaded.cell, uploaded.autosave], [meta.cell, meta.autosave]);

  const list = await call('GET', '/v1/checkpoints', '/v1/checkpoints', 200, undefined, 'viewerB');
  assert.equal(list.checkpoints.length, 2);
  assert.equal((await call('GET', '/v1/checkpoints', '/v1/checkpoints', 200, undefined, 'editorA')).checkpoints.length, 0, 'another folder sees none');
  await call('GET', '/v1/checkpoints/echo-model?folderId=team-b', '/v1/checkpoints/{ref}', 200, undefined, 'viewerB');
  await call('GET', `/v1/checkpoints/${cp.id}`, '/v1/checkpoints/{ref}', 404, undefined, 'editorA');
  await call('GET', '/v1/checkpoints/x?folderId=bad%20folder', '/v1/checkpoints/{ref}', 400);
  await call('PATCH', `/v1/checkpoints/${uploaded.id}`, '/v1/checkpoints/{ref}', 200, { name: 'kernel-state' }, 'editorB');
  await call('PATCH', `/v1/checkpoints/${uploaded.id}`, '/v1/checkpoints/{ref}', 400, { name: 5 }, 'editorB');
  await call('PATCH', `/v1/checkpoints/${uploaded.id}`, '/v1/checkpoints/{ref}', 403, { name: null }, 'viewerB');

  await call('POST', '/v1/secrets', '/v1/secrets', 201, { name: 'registry-pw', value: 'pw' }, 'editorB');
  await call('POST', '/v1/secrets', '/v1/secrets', 400, { name: 'other-pw' }, 'editorB');
  await call('POST', '/v1/secrets', '/v1/secrets', 403, { name: 'other-pw', value: 'v' }, 'viewerB');
  await call('POST', '/v1/secrets', '/v1/secrets', 409, { name: 'registry-pw', value: 'pw' }, 'editorB');
  const secrets = await call('GET', '/v1/secrets', '/v1/secrets', 200, undefined, 'viewerB');
  assert.deepEqual(secrets.secrets.map((s: Json) => s.name), ['registry-pw']);
  assert.ok(!JSON.stringify(secrets).includes('"pw"'), 'never the value');
  await call('POST', '/v1/secrets', '/v1/secrets', 201, { name: 'temp-pw', value: 'pw', folderId: 'team-b' }, 'editorB');
  await call('DELETE', '/v1/secrets/temp-pw?folderId=team-b', '/v1/secrets/{name}', 403, undefined, 'viewerB');
  await call('DELETE', '/v1/secrets/temp-pw?folderId=team-b', '/v1/secrets/{name}', 404, undefined, 'editorA');
  await call('DELETE', '/v1/secrets/temp-pw?folderId=team-b', '/v1/secrets/{name}', 200, undefined, 'editorB');
  await call('DELETE', '/v1/secrets/temp-pw?folderId=bad%20folder', '/v1/secrets/{name}', 400, undefined, 'editorB');
  await call('POST', '/v1/secrets', '/v1/secrets', 201, { name: 'used-pw', value: 'pw' }, 'editorB');
});

test('nodes: create, get, list, update, revisions, rollback, suspend/resume, logs and their refusals', async () => {
  await call('POST', '/v1/nodes', '/v1/nodes', 400, { ...NODE, scaling: { minInstances: -1 } }, 'editorB');
  await call('POST', '/v1/nodes', '/v1/nodes', 403, NODE, 'viewerB');
  await call('POST', '/v1/nodes', '/v1/nodes', 404, { ...NODE, checkpointId: 'no-such-model' }, 'editorB');
  await call('POST', '/v1/nodes', '/v1/nodes', 404, { ...NODE, folderId: 'team-a' }, 'editorA'); // team-b's checkpoint from team-a
  const created = await call('POST', '/v1/nodes', '/v1/nodes', 201, {
    ...NODE, description: 'echoes x', resources: { cores: 1, memoryGb: 1 }, environment: { passwordSecret: 'used-pw' },
    scaling: { minInstances: 1, maxInstances: 2 }, rollout: { maxSurge: 1, maxUnavailable: 0, deadlineSeconds: 60 }, timeout: 30,
  }, 'editorB');
  await call('POST', '/v1/nodes', '/v1/nodes', 409, NODE, 'editorB');
  node = await waitFor('node Healthy', async () => {
    const n = await b.request('GET', `/v1/nodes/${created.id}`);
    return n.body.status === 'Healthy' && n.body.instances.some((i: Json) => i.status === 'Healthy') ? n.body : undefined;
  }, 60_000);
  await call('GET', `/v1/nodes/${node.id}`, '/v1/nodes/{ref}', 200, undefined, 'viewerB');
  await call('GET', '/v1/nodes/echo', '/v1/nodes/{ref}', 200, undefined, 'editorB');
  await call('GET', `/v1/nodes/${node.id}`, '/v1/nodes/{ref}', 404, undefined, 'editorA');
  assert.equal((await call('GET', '/v1/nodes', '/v1/nodes', 200, undefined, 'viewerB')).nodes.length, 1);
  assert.equal((await call('GET', '/v1/nodes?folderId=team-b', '/v1/nodes', 200, undefined, 'editorA')).nodes.length, 0);

  // in place, a dry run, then a new revision rolled out
  const scaled = await call('PATCH', `/v1/nodes/${node.id}`, '/v1/nodes/{ref}', 200, { scaling: { maxInstances: 3 }, description: 'still echoes' }, 'editorB');
  assert.deepEqual(scaled.changed, ['description', 'scaling']);
  const plan = await call('PATCH', `/v1/nodes/${node.id}?dryRun=true`, '/v1/nodes/{ref}', 200, { timeout: 20 }, 'editorB');
  assert.equal(plan.dryRun, true);
  assert.equal(plan.rollout, true);
  await call('PATCH', `/v1/nodes/${node.id}`, '/v1/nodes/{ref}', 400, { scaling: { sessionsPerInstance: 1000 } }, 'editorB');
  await call('PATCH', `/v1/nodes/${node.id}`, '/v1/nodes/{ref}', 403, { description: 'x' }, 'viewerB');
  await call('PATCH', `/v1/nodes/${node.id}`, '/v1/nodes/{ref}', 404, { description: 'x' }, 'editorA');
  const rolled = await call('PATCH', `/v1/nodes/${node.id}`, '/v1/nodes/{ref}', 200, { timeout: 20 }, 'editorB');
  assert.equal(rolled.revision, 2);
  assert.equal(rolled.rollout.state, 'Progressing');
  await waitFor('rollout complete', async () => (await b.request('GET', `/v1/nodes/${node.id}`)).body.rollout?.state === 'Complete', 60_000);
  const revs = await call('GET', `/v1/nodes/${node.id}/revisions`, '/v1/nodes/{ref}/revisions', 200, undefined, 'viewerB');
  assert.deepEqual(revs.revisions.map((r: Json) => r.revision), [2, 1]);
  await call('GET', `/v1/nodes/${node.id}/revisions`, '/v1/nodes/{ref}/revisions', 404, undefined, 'editorA');
  const events = await call('GET', `/v1/nodes/${node.id}/events?limit=5`, '/v1/nodes/{ref}/events', 200, undefined, 'viewerB');
  assert.ok(Array.isArray(events.events));
  await call('GET', `/v1/nodes/${node.id}/events?limit=0`, '/v1/nodes/{ref}/events', 400, undefined, 'viewerB');
  await call('GET', `/v1/nodes/${node.id}/events`, '/v1/nodes/{ref}/events', 404, undefined, 'editorA');
  await call('POST', `/v1/nodes/${node.id}:rollback`, '/v1/nodes/{action}', 404, { revision: 99 }, 'editorB');
  await call('POST', `/v1/nodes/${node.id}:rollback`, '/v1/nodes/{action}', 400, { revision: 'one' }, 'editorB');
  await call('POST', `/v1/nodes/${node.id}:rollback`, '/v1/nodes/{action}', 403, {}, 'viewerB');
  const back = await call('POST', `/v1/nodes/${node.id}:rollback`, '/v1/nodes/{action}', 200, {}, 'editorB');
  assert.equal(back.revision, 3);
  await waitFor('rollback complete', async () => (await b.request('GET', `/v1/nodes/${node.id}`)).body.rollout?.state === 'Complete', 60_000);
  await call('POST', `/v1/nodes/${node.id}:suspend`, '/v1/nodes/{action}', 200, undefined, 'editorB');
  await call('POST', `/v1/nodes/${node.id}:resume`, '/v1/nodes/{action}', 200, undefined, 'editorB');
  await call('POST', `/v1/nodes/${node.id}:resume`, '/v1/nodes/{action}', 404, undefined, 'editorA');

  // the cell runs again on resume; logs as JSON, and followed as text/plain
  await waitFor('node Healthy again', async () => (await b.request('GET', `/v1/nodes/${node.id}`)).body.status === 'Healthy', 60_000);
  assert.equal((await execute(b, node.id, { x: 7 }, 'team-b')).status, 200);
  const logs = await call('GET', `/v1/nodes/${node.id}/logs?lines=50`, '/v1/nodes/{ref}/logs', 200, undefined, 'viewerB');
  assert.ok(logs.logs.some((l: Json) => l.text.includes('called with 7')), JSON.stringify(logs));
  await call('GET', `/v1/nodes/${node.id}/logs?lines=0`, '/v1/nodes/{ref}/logs', 400, undefined, 'viewerB');
  await call('GET', `/v1/nodes/${node.id}/logs?instance=nope`, '/v1/nodes/{ref}/logs', 404, undefined, 'viewerB');
  await call('GET', `/v1/nodes/${node.id}/logs`, '/v1/nodes/{ref}/logs', 404, undefined, 'editorA');
  const follow = new AbortController();
  // (headers go out with the first lines: ask for the last ones, which the call above printed)
  const streamed = await fetch(`${b.url}/v1/nodes/${node.id}/logs?follow=true&lines=5`, { headers: as('viewerB'), signal: AbortSignal.any([follow.signal, AbortSignal.timeout(15_000)]) });
  assert.equal(streamed.status, 200);
  const media = operation('GET', '/v1/nodes/{ref}/logs').responses['200'].content[streamed.headers.get('content-type')!.split(';')[0]!];
  assert.deepEqual(media?.schema, { type: 'string' }, 'the followed stream is declared as text/plain');
  follow.abort();
  await streamed.body?.cancel().catch(() => undefined);
});

test('contracts, typed variables and usage: documents, .proto, Swagger UI pages, GET /v1/usage and their refusals', async () => {
  tokens.viewerC = await token('viewer-c', { folders: ['team-c'], role: 'viewer' });
  tokens.executorC = await token('executor-c', { folders: ['team-c'], role: 'executor' });
  // the type strings, the ndarray object form and a default; team-c's callers may call it
  const typed = await call('POST', '/v1/nodes', '/v1/nodes', 201, {
    ...NODE, name: 'typed', permissions: { folders: ['team-b', 'team-c'] },
    inputs: [{ name: 'x', type: 'ndarray', dtype: 'float32', shape: [-1, 3] }, { name: 'k', type: 'list[int]', default: [1, 2], description: 'keys' }],
    outputs: [{ name: 'y', type: 'dataframe' }],
  }, 'editorB');
  assert.deepEqual(typed.inputs.map((v: Json) => [v.type, v.default]), [['ndarray[float32,-1,3]', undefined], ['list[int]', [1, 2]]]);
  await call('POST', '/v1/nodes', '/v1/nodes', 400, { ...NODE, name: 'typed-bad', inputs: [{ name: 'x', type: 'ndarray[float128]' }] }, 'editorB');
  await call('POST', '/v1/nodes', '/v1/nodes', 400, { ...NODE, name: 'typed-bad', inputs: [{ name: 'x', type: 'int', default: 'seven' }] }, 'editorB');

  const contract = await call('GET', `/v1/nodes/${node.id}/openapi.json`, '/v1/nodes/{ref}/openapi.json', 200, undefined, 'viewerB');
  assert.equal(contract.openapi, '3.1.0');
  const typedContract = await call('GET', '/v1/nodes/typed/openapi.json', '/v1/nodes/{ref}/openapi.json', 200, undefined, 'executorC'); // a caller from a folder on its ACL
  assert.ok(JSON.stringify(typedContract.components.schemas.Input).includes('"default":[1,2]'), 'the default is in the contract');
  await call('GET', `/v1/nodes/${typed.id}/openapi.json`, '/v1/nodes/{ref}/openapi.json', 404, undefined, 'viewerC'); // a folder on its ACL, but a role that may not call
  await call('GET', `/v1/nodes/${node.id}/openapi.json`, '/v1/nodes/{ref}/openapi.json', 404, undefined, 'editorA'); // another folder
  await call('GET', `/v1/nodes/${node.id}/openapi.json`, '/v1/nodes/{ref}/openapi.json', 401, undefined, { authorization: 'Bearer brt_unknown' });
  const proto = await call('GET', `/v1/nodes/${typed.id}/node.proto`, '/v1/nodes/{ref}/node.proto', 200, undefined, 'executorC');
  assert.match(proto, /syntax = "proto3";[\s\S]*service /);
  await call('GET', `/v1/nodes/${typed.id}/node.proto`, '/v1/nodes/{ref}/node.proto', 404, undefined, 'viewerC');
  await call('GET', `/v1/nodes/${node.id}/node.proto`, '/v1/nodes/{ref}/node.proto', 404, undefined, 'editorA');

  // an alias's contract; a backend of another contract is refused naming the variable
  const alias = await call('POST', '/v1/aliases', '/v1/aliases', 201, { name: 'echo-contract', backends: [{ nodeId: node.id }] }, 'editorB');
  const aliasContract = await call('GET', `/v1/aliases/${alias.name}/openapi.json`, '/v1/aliases/{name}/openapi.json', 200, undefined, 'viewerB');
  assert.ok(Object.keys(aliasContract.paths).some((p) => p.includes('/aliases/echo-contract:execute')), Object.keys(aliasContract.paths).join(' '));
  await call('GET', `/v1/aliases/${alias.name}/openapi.json`, '/v1/aliases/{name}/openapi.json', 404, undefined, 'editorA');
  await call('GET', `/v1/aliases/${alias.name}/openapi.json`, '/v1/aliases/{name}/openapi.json', 404, undefined, 'executorC');
  const mismatch = await call('PATCH', `/v1/aliases/${alias.name}`, '/v1/aliases/{name}', 409, { backends: [{ nodeId: node.id }, { nodeId: typed.id }] }, 'editorB');
  assert.equal(mismatch.code, 'CONTRACT_MISMATCH');
  assert.equal(mismatch.details.field, 'backends[1].nodeId');
  // the dashboard's chart history (an hour per node and alias) and its live stream
  const hist = await call('GET', `/v1/nodes/${node.id}/metrics`, '/v1/nodes/{ref}/metrics', 200, undefined, 'viewerB');
  assert.equal(hist.nodeId, node.id);
  await call('GET', `/v1/nodes/${node.id}/metrics?since=yesterday`, '/v1/nodes/{ref}/metrics', 400, undefined, 'viewerB');
  await call('GET', `/v1/nodes/${node.id}/metrics`, '/v1/nodes/{ref}/metrics', 404, undefined, 'editorA');
  assert.equal((await call('GET', `/v1/aliases/${alias.name}/metrics`, '/v1/aliases/{name}/metrics', 200, undefined, 'viewerB')).aliasName, alias.name);
  await call('GET', `/v1/aliases/${alias.name}/metrics`, '/v1/aliases/{name}/metrics', 404, undefined, 'editorA');
  const stop = new AbortController();
  const stream = await fetch(`${b.url}/v1/watch`, { headers: as('viewerB'), signal: stop.signal });
  const first = await stream.body!.getReader().read();
  stop.abort();
  checkAnswer('GET', '/v1/watch', stream.status, Buffer.from(first.value ?? []).toString(), stream.headers.get('content-type') ?? '');
  assert.equal(stream.status, 200);
  await call('GET', '/v1/watch', '/v1/watch', 401, undefined, { authorization: 'Bearer brt_unknown' });

  await call('DELETE', `/v1/aliases/${alias.name}`, '/v1/aliases/{name}', 200, undefined, 'editorB');

  // the Swagger UI pages: public HTML (what they load is authorized, above)
  const none = { authorization: '' };
  assert.match(await call('GET', uiPage(), uiPage(), 200, undefined, none), /swagger-ui/i);
  assert.match(await call('GET', `/docs/nodes/${typed.id}`, '/docs/nodes/{ref}', 200, undefined, none), new RegExp(`/v1/nodes/${typed.id}/openapi.json`));
  assert.match(await call('GET', '/docs/aliases/echo-live', '/docs/aliases/{name}', 200, undefined, none), /\/v1\/aliases\/echo-live\/openapi.json/);

  // usage: the echo node ran (its calls' counts are test/usage.test.ts's; here the shapes)
  const used = await call('GET', '/v1/usage', '/v1/usage', 200, undefined, 'viewerB');
  const row = used.rows.find((r: Json) => r.nodeId === node.id);
  assert.ok(row && row.instanceSeconds > 0 && row.nodeName === 'echo' && row.preset, JSON.stringify(used));
  const days = await call('GET', '/v1/usage?groupBy=day&folder=team-b', '/v1/usage', 200, undefined, 'viewerB');
  assert.ok(days.rows.length >= 1 && days.rows.every((r: Json) => r.folderId === 'team-b' && r.day), JSON.stringify(days));
  const folders = await call('GET', '/v1/usage?groupBy=folder&from=2020-01-01', '/v1/usage', 200);
  assert.ok(folders.rows.some((r: Json) => r.folderId === 'team-b'));
  assert.equal((await call('GET', '/v1/usage', '/v1/usage', 200, undefined, 'viewerC')).rows.length, 0, 'another folder\'s usage is not shown');
  await call('GET', '/v1/usage?groupBy=hour', '/v1/usage', 400, undefined, 'viewerB');
  await call('GET', '/v1/usage?from=2025-01-31T12:00', '/v1/usage', 400, undefined, 'viewerB');
  await call('GET', '/v1/usage?folder=team-b', '/v1/usage', 403, undefined, 'editorA');
  await call('GET', '/v1/usage', '/v1/usage', 403, undefined, 'executorC'); // no role that may read
  await call('GET', '/v1/usage', '/v1/usage', 401, undefined, { authorization: 'Bearer brt_unknown' });

  await call('DELETE', `/v1/nodes/${typed.id}`, '/v1/nodes/{ref}', 200, undefined, 'editorB');
});

test('aliases, deletes that are refused while in use, folders and the audit log', async () => {
  const spec = { name: 'echo-live', backends: [{ nodeId: node.id, weight: 1 }] };
  await call('POST', '/v1/aliases', '/v1/aliases', 400, { ...spec, name: '-bad' }, 'editorB');
  await call('POST', '/v1/aliases', '/v1/aliases', 403, spec, 'viewerB');
  await call('POST', '/v1/aliases', '/v1/aliases', 404, { ...spec, folderId: 'team-a' }, 'editorA'); // team-b's node from team-a
  const alias = await call('POST', '/v1/aliases', '/v1/aliases', 201, { ...spec, description: 'live', executionAcl: { folders: ['team-b'], isPublic: false } }, 'editorB');
  await call('POST', '/v1/aliases', '/v1/aliases', 409, spec, 'editorB');
  await call('GET', '/v1/aliases', '/v1/aliases', 200, undefined, 'viewerB');
  await call('GET', `/v1/aliases/${alias.name}`, '/v1/aliases/{name}', 200, undefined, 'viewerB');
  await call('GET', `/v1/aliases/${alias.name}`, '/v1/aliases/{name}', 404, undefined, 'editorA');
  const mirrored = await call('PATCH', `/v1/aliases/${alias.name}`, '/v1/aliases/{name}', 200,
    { sticky: { header: 'x-session' }, mirror: { nodeId: node.id, percent: 10 }, proxyMetadata: { headers: [{ name: 'x-team', value: 'b' }] } }, 'editorB');
  assert.equal(mirrored.status.mirror.percent, 10);
  await call('PATCH', `/v1/aliases/${alias.name}`, '/v1/aliases/{name}', 400, { name: 'renamed' }, 'editorB');
  await call('PATCH', `/v1/aliases/${alias.name}`, '/v1/aliases/{name}', 403, { description: 'x' }, 'viewerB');

  await call('DELETE', `/v1/nodes/${node.id}`, '/v1/nodes/{ref}', 409, undefined, 'editorB');
  await call('DELETE', `/v1/checkpoints/${node.checkpointId}`, '/v1/checkpoints/{ref}', 409, undefined, 'editorB');
  await call('PATCH', `/v1/checkpoints/${node.checkpointId}`, '/v1/checkpoints/{ref}', 409, { name: null }, 'editorB');
  await call('DELETE', '/v1/secrets/used-pw', '/v1/secrets/{name}', 409, undefined, 'editorB');
  await call('DELETE', `/v1/aliases/${alias.name}`, '/v1/aliases/{name}', 403, undefined, 'viewerB');
  await call('DELETE', `/v1/aliases/${alias.name}`, '/v1/aliases/{name}', 200, undefined, 'editorB');
  await call('DELETE', `/v1/aliases/${alias.name}`, '/v1/aliases/{name}', 404, undefined, 'editorB');
  await call('DELETE', `/v1/nodes/${node.id}`, '/v1/nodes/{ref}', 403, undefined, 'viewerB');
  await call('DELETE', `/v1/nodes/${node.id}`, '/v1/nodes/{ref}', 200, undefined, 'editorB');
  await call('DELETE', `/v1/nodes/${node.id}`, '/v1/nodes/{ref}', 404, undefined, 'editorB');
  await call('DELETE', `/v1/checkpoints/${uploaded.id}`, '/v1/checkpoints/{ref}', 403, undefined, 'viewerB');
  await call('DELETE', `/v1/checkpoints/${uploaded.id}`, '/v1/checkpoints/{ref}', 404, undefined, 'editorA');
  await call('DELETE', `/v1/checkpoints/${uploaded.id}`, '/v1/checkpoints/{ref}', 200, undefined, 'editorB');
  await call('DELETE', '/v1/checkpoints/x?folderId=bad%20folder', '/v1/checkpoints/{ref}', 400, undefined, 'editorB');

  const folder = await call('GET', '/v1/folders/team-b', '/v1/folders/{id}', 200, undefined, 'viewerB');
  assert.equal(folder.usage.nodes, 0);
  await call('GET', '/v1/folders/team-b', '/v1/folders/{id}', 403, undefined, 'editorA');
  await call('GET', '/v1/folders/bad%20folder', '/v1/folders/{id}', 400);
  await call('PATCH', '/v1/folders/team-b/quota', '/v1/folders/{id}/quota', 200, { maxNodes: 5, maxUploadBytes: 1_000_000 });
  await call('PATCH', '/v1/folders/team-b/quota', '/v1/folders/{id}/quota', 400, { maxNodes: -1 });
  await call('PATCH', '/v1/folders/team-b/quota', '/v1/folders/{id}/quota', 403, { maxNodes: 50 }, 'adminB');

  const audit = await call('GET', '/v1/audit?limit=1000', '/v1/audit', 200);
  assert.ok(audit.entries.some((e: Json) => e.action === 'node.rollback' && e.result === 'ok'));
  assert.ok(audit.entries.some((e: Json) => e.result === 'PERMISSION_DENIED'));
  const own = await call('GET', '/v1/audit?folderId=team-b', '/v1/audit', 200, undefined, 'adminB');
  assert.ok(own.entries.every((e: Json) => e.folderId === 'team-b'));
  await call('GET', '/v1/audit?folderId=team-a', '/v1/audit', 403, undefined, 'adminB');
  await call('GET', '/v1/audit', '/v1/audit', 403, undefined, 'editorB');
  await call('GET', '/v1/audit?limit=0', '/v1/audit', 400);
});

test('lists refuse an unknown token with the error schema', async () => {
  for (const path of ['/v1/checkpoints', '/v1/nodes', '/v1/aliases', '/v1/secrets']) {
    await call('GET', path, path, 401, undefined, { authorization: 'Bearer brt_unknown' });
  }
});

test('every route was answered for real, with a success and at least one refusal', () => {
  for (const [path, item] of Object.entries(doc.paths as Json)) {
    for (const method of Object.keys(item as Json)) {
      const statuses = [...seen].filter((s) => s.startsWith(`${method.toUpperCase()} ${path} `)).map((s) => Number(s.split(' ')[2]));
      assert.ok(statuses.some((s) => s < 300), `${method.toUpperCase()} ${path}: no success checked (${statuses})`);
      if (!isPublic((item as Json)[method])) assert.ok(statuses.some((s) => s >= 400), `${method.toUpperCase()} ${path}: no refusal checked`);
    }
  }
  const errorStatuses = new Set([...seen].map((s) => Number(s.split(' ')[2])).filter((s) => s >= 400));
  assert.deepEqual([...errorStatuses].sort(), [400, 401, 403, 404, 409, 415, 422, 429]);
});
