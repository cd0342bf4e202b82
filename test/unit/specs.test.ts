// Unit tests of spec parsing (src/core/node-spec.ts, src/core/alias-spec.ts): every bad input
// the validators know gives INVALID_ARGUMENT (400) naming the field, table-driven; defaults are
// filled in; resource presets expand. The end-to-end tests check a few of these over HTTP;
// here every branch is covered in milliseconds.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { parseNodeSpec, RESOURCE_PRESETS, type SpecContext } from '../../src/core/node-spec.js';
import { parseAliasSpec, type AliasContext } from '../../src/core/alias-spec.js';
import { IN_PLACE_FIELDS, changedFields, mergePatch, rolloutSettings, specDiff, specInput } from '../../src/core/node-update.js';
import { BerthError } from '../../src/core/errors.js';
import type { CellNodeSpec, ImageNodeSpec } from '../../src/core/types.js';

const CTX: SpecContext = { defaultFolder: 'default', defaultProject: 'proj', defaultPython: '/usr/bin/python3' };
const ACTX: AliasContext = { defaultFolder: 'default', defaultProject: 'proj' };

const CELL = {
  name: 'my-node', checkpointId: 'cp-1',
  inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'y', type: 'dict' }],
};
const IMAGE = { name: 'my-image', image: 'registry.local:5000/team/echo:1.2', endpoint: { port: 8080 } };
const ALIAS = { name: 'datasphere.user.model', backends: [{ nodeId: 'n1', weight: 1 }] };

/** Asserts that parsing throws INVALID_ARGUMENT naming `field`. */
function refuses(parse: () => unknown, field: string, label: string): void {
  assert.throws(parse, (e: unknown) => {
    assert.ok(e instanceof BerthError, `${label}: threw ${String(e)}`);
    assert.equal(e.code, 'INVALID_ARGUMENT', `${label}: ${e.message}`);
    assert.equal(e.httpStatus, 400);
    assert.equal(e.details.field, field, `${label}: ${e.message}`);
    assert.ok(e.message.startsWith(`${field}: `), `${label}: the message names the field: ${e.message}`);
    return true;
  }, label);
}

const without = (o: Record<string, unknown>, k: string): Record<string, unknown> => { const c = { ...o }; delete c[k]; return c; };

describe('node specs: bad input names the field', () => {
  const cases: Array<[string, unknown, string]> = [
    ['not an object', [], 'body'],
    ['null body', null, 'body'],
    ['unknown kind', { ...CELL, kind: 'vm' }, 'kind'],
    ['kind not a string', { ...CELL, kind: 3 }, 'kind'],
    ['unknown field', { ...CELL, replicas: 3 }, 'replicas'],
    ['image field on a cell', { ...CELL, kind: 'cell', endpoint: { port: 1 } }, 'endpoint'],
    ['cell field on an image', { ...IMAGE, inputs: [] }, 'inputs'],
    ['name missing', without(CELL, 'name'), 'name'],
    ['name too short', { ...CELL, name: 'x' }, 'name'],
    ['name starts with a digit', { ...CELL, name: '1node' }, 'name'],
    ['name ends with a dash', { ...CELL, name: 'node-' }, 'name'],
    ['name too long', { ...CELL, name: 'a'.repeat(64) }, 'name'],
    ['name not a string', { ...CELL, name: 42 }, 'name'],
    ['description too long', { ...CELL, description: 'd'.repeat(1025) }, 'description'],
    ['bad folderId', { ...CELL, folderId: '../etc' }, 'folderId'],
    ['bad projectId', { ...CELL, projectId: '' }, 'projectId'],
    ['permissions not an object', { ...CELL, permissions: ['a'] }, 'permissions'],
    ['permissions unknown field', { ...CELL, permissions: { roles: [] } }, 'permissions.roles'],
    ['permissions.folders not an array', { ...CELL, permissions: { folders: 'a' } }, 'permissions.folders'],
    ['permissions.folders empty', { ...CELL, permissions: { folders: [] } }, 'permissions.folders'],
    ['permissions.folders item not a string', { ...CELL, permissions: { folders: ['ok', 3] } }, 'permissions.folders[1]'],
    ['permissions.folders item bad', { ...CELL, permissions: { folders: ['a b'] } }, 'permissions.folders[0]'],
    ['rollout not an object', { ...CELL, rollout: 1 }, 'rollout'],
    ['rollout unknown field', { ...CELL, rollout: { surge: 1 } }, 'rollout.surge'],
    ['rollout maxSurge negative', { ...CELL, rollout: { maxSurge: -1 } }, 'rollout.maxSurge'],
    ['rollout both 0', { ...CELL, rollout: { maxSurge: 0, maxUnavailable: 0 } }, 'rollout.maxSurge'],
    ['rollout maxUnavailable not an integer', { ...CELL, rollout: { maxUnavailable: 0.5 } }, 'rollout.maxUnavailable'],
    ['rollout deadline too short', { ...CELL, rollout: { deadlineSeconds: 1 } }, 'rollout.deadlineSeconds'],
    ['permissions.folders too many', { ...CELL, permissions: { folders: Array.from({ length: 101 }, (_, i) => `f${i}`) } }, 'permissions.folders'],
    ['unknown preset', { ...CELL, resources: 'huge' }, 'resources'],
    ['resources not an object', { ...CELL, resources: 4 }, 'resources'],
    ['resources unknown field', { ...CELL, resources: { cpus: 2 } }, 'resources.cpus'],
    ['resources.cores too small', { ...CELL, resources: { cores: 0 } }, 'resources.cores'],
    ['resources.memoryGb not a number', { ...CELL, resources: { memoryGb: '8' } }, 'resources.memoryGb'],
    ['resources.gpus fractional', { ...CELL, resources: { gpus: 0.5 } }, 'resources.gpus'],
    ['scaling unknown field', { ...CELL, scaling: { replicas: 2 } }, 'scaling.replicas'],
    ['scaling.minInstances negative', { ...CELL, scaling: { minInstances: -1 } }, 'scaling.minInstances'],
    ['scaling.maxInstances 0', { ...CELL, scaling: { minInstances: 0, maxInstances: 0 } }, 'scaling.maxInstances'],
    ['scaling.holdTimeout 0', { ...CELL, scaling: { minInstances: 0, holdTimeout: 0 } }, 'scaling.holdTimeout'],
    ['scaling.holdTimeout string', { ...CELL, scaling: { holdTimeout: '60' } }, 'scaling.holdTimeout'],
    ['scaling.targetUtilization above 1', { ...CELL, scaling: { targetUtilization: 1.5 } }, 'scaling.targetUtilization'],
    ['scaling.targetUtilization too small', { ...CELL, scaling: { targetUtilization: 0.01 } }, 'scaling.targetUtilization'],
    ['scaling.minInstances too many', { ...CELL, scaling: { minInstances: 65 } }, 'scaling.minInstances'],
    ['scaling.maxInstances below min', { ...CELL, scaling: { minInstances: 3, maxInstances: 2 } }, 'scaling.maxInstances'],
    ['scaling.sessionsPerInstance 0', { ...CELL, scaling: { sessionsPerInstance: 0 } }, 'scaling.sessionsPerInstance'],
    ['scaling.sessionsPerInstance string', { ...CELL, scaling: { sessionsPerInstance: '2' } }, 'scaling.sessionsPerInstance'],
    ['scaling.queueSize negative', { ...CELL, scaling: { queueSize: -1 } }, 'scaling.queueSize'],
    ['scaling.scaleDownDelaySeconds too long', { ...CELL, scaling: { scaleDownDelaySeconds: 86_401 } }, 'scaling.scaleDownDelaySeconds'],
    ['scaling.scaleDownDelaySeconds NaN-ish', { ...CELL, scaling: { scaleDownDelaySeconds: Infinity } }, 'scaling.scaleDownDelaySeconds'],
    // cell nodes
    ['checkpointId missing', without(CELL, 'checkpointId'), 'checkpointId'],
    ['checkpointId not a string', { ...CELL, checkpointId: 7 }, 'checkpointId'],
    ['inputs missing', without(CELL, 'inputs'), 'inputs'],
    ['inputs not an array', { ...CELL, inputs: { x: 'int' } }, 'inputs'],
    ['inputs empty', { ...CELL, inputs: [] }, 'inputs'],
    ['inputs too many', { ...CELL, inputs: Array.from({ length: 101 }, (_, i) => ({ name: `v${i}`, type: 'int' })) }, 'inputs'],
    ['input not an object', { ...CELL, inputs: ['x'] }, 'inputs[0]'],
    ['input unknown field', { ...CELL, inputs: [{ name: 'x', type: 'int', units: 'm' }] }, 'inputs[0].units'],
    ['input default of the wrong type', { ...CELL, inputs: [{ name: 'x', type: 'int', default: 'a' }] }, 'inputs[0].default'],
    ['output with a default', { ...CELL, outputs: [{ name: 'y', type: 'int', default: 1 }] }, 'outputs[0].default'],
    ['ndarray with a bad dtype', { ...CELL, inputs: [{ name: 'x', type: 'ndarray[float33,-1]' }] }, 'inputs[0].type'],
    ['ndarray object form with a bad shape', { ...CELL, inputs: [{ name: 'x', type: 'ndarray', dtype: 'float32', shape: 'x' }] }, 'inputs[0].shape'],
    ['dtype beside a non-ndarray type', { ...CELL, inputs: [{ name: 'x', type: 'int', dtype: 'float32' }] }, 'inputs[0].dtype'],
    ['list[] without an item type', { ...CELL, inputs: [{ name: 'x', type: 'list[]' }] }, 'inputs[0].type'],
    ['input name missing', { ...CELL, inputs: [{ type: 'int' }] }, 'inputs[0].name'],
    ['input name not an identifier', { ...CELL, inputs: [{ name: 'a-b', type: 'int' }] }, 'inputs[0].name'],
    ['input name a Python keyword', { ...CELL, inputs: [{ name: 'lambda', type: 'int' }] }, 'inputs[0].name'],
    ['input declared twice', { ...CELL, inputs: [{ name: 'x', type: 'int' }, { name: 'x', type: 'str' }] }, 'inputs[1].name'],
    ['input type missing', { ...CELL, inputs: [{ name: 'x' }] }, 'inputs[0].type'],
    ['input type unknown', { ...CELL, inputs: [{ name: 'x', type: 'tensor' }] }, 'inputs[0].type'],
    ['input description too long', { ...CELL, inputs: [{ name: 'x', type: 'int', description: 'd'.repeat(1025) }] }, 'inputs[0].description'],
    ['outputs missing', without(CELL, 'outputs'), 'outputs'],
    ['output type unknown', { ...CELL, outputs: [{ name: 'y', type: 'object' }] }, 'outputs[0].type'],
    ['environment unknown field', { ...CELL, environment: { pip: ['x'] } }, 'environment.pip'],
    ['environment.python not a string', { ...CELL, environment: { python: true } }, 'environment.python'],
    ['environment.image bad', { ...CELL, environment: { image: 'UPPER/Case' } }, 'environment.image'],
    ['timeout too small', { ...CELL, timeout: 0.01 }, 'timeout'],
    ['timeout too large', { ...CELL, timeout: 3601 }, 'timeout'],
    ['cell healthcheck unknown field', { ...CELL, healthcheck: { path: '/' } }, 'healthcheck.path'],
    ['cell healthcheck.interval too small', { ...CELL, healthcheck: { interval: 0.01 } }, 'healthcheck.interval'],
    // image nodes
    ['image missing', { ...without(IMAGE, 'image'), kind: 'image' }, 'image'],
    ['image reference bad', { ...IMAGE, image: 'https://x/y' }, 'image'],
    ['image with spaces', { ...IMAGE, image: 'echo server' }, 'image'],
    ['passwordSecret without username', { ...IMAGE, passwordSecret: 'reg' }, 'username'],
    ['env not an object', { ...IMAGE, env: ['A=1'] }, 'env'],
    ['env name bad', { ...IMAGE, env: { '1A': 'x' } }, 'env.1A'],
    ['env value an object', { ...IMAGE, env: { A: { b: 1 } } }, 'env.A'],
    ['endpoint missing', without(IMAGE, 'endpoint'), 'endpoint'],
    ['endpoint not an object', { ...IMAGE, endpoint: 8080 }, 'endpoint'],
    ['endpoint unknown field', { ...IMAGE, endpoint: { port: 80, host: 'x' } }, 'endpoint.host'],
    ['endpoint.port missing', { ...IMAGE, endpoint: { protocol: 'http' } }, 'endpoint.port'],
    ['endpoint.port 0', { ...IMAGE, endpoint: { port: 0 } }, 'endpoint.port'],
    ['endpoint.port too big', { ...IMAGE, endpoint: { port: 65536 } }, 'endpoint.port'],
    ['endpoint.protocol unknown', { ...IMAGE, endpoint: { port: 80, protocol: 'tcp' } }, 'endpoint.protocol'],
    ['endpoint.timeout too small', { ...IMAGE, endpoint: { port: 80, timeout: 0 } }, 'endpoint.timeout'],
    ['endpoint.idleTimeout string', { ...IMAGE, endpoint: { port: 80, idleTimeout: '5' } }, 'endpoint.idleTimeout'],
    ['telemetry unknown field', { ...IMAGE, telemetry: { interval: 5 } }, 'telemetry.interval'],
    ['telemetry.format unknown', { ...IMAGE, telemetry: { format: 'otlp' } }, 'telemetry.format'],
    ['telemetry.path relative', { ...IMAGE, telemetry: { path: 'metrics' } }, 'telemetry.path'],
    ['telemetry.port bad', { ...IMAGE, telemetry: { port: 70_000 } }, 'telemetry.port'],
    ['healthcheck.protocol unknown', { ...IMAGE, healthcheck: { protocol: 'tcp' } }, 'healthcheck.protocol'],
    ['healthcheck.service on http', { ...IMAGE, healthcheck: { protocol: 'http', service: 'x' } }, 'healthcheck.service'],
    ['healthcheck.path on grpc', { ...IMAGE, healthcheck: { protocol: 'grpc', path: '/' } }, 'healthcheck.path'],
    ['healthcheck.path relative', { ...IMAGE, healthcheck: { path: 'health' } }, 'healthcheck.path'],
    ['healthcheck.port bad', { ...IMAGE, healthcheck: { port: -1 } }, 'healthcheck.port'],
    ['healthcheck.failsThreshold 0', { ...IMAGE, healthcheck: { failsThreshold: 0 } }, 'healthcheck.failsThreshold'],
    ['healthcheck.passesThreshold too big', { ...IMAGE, healthcheck: { passesThreshold: 101 } }, 'healthcheck.passesThreshold'],
    ['healthcheck.timeout too long', { ...IMAGE, healthcheck: { timeout: 61 } }, 'healthcheck.timeout'],
  ];
  for (const [label, body, field] of cases) {
    test(`${label} → ${field}`, () => refuses(() => parseNodeSpec(body, CTX), field, label));
  }
});

describe('node specs: placement (cluster runtimes)', () => {
  const cases: Array<[string, unknown, string]> = [
    ['placement not an object', { ...IMAGE, kind: 'image', placement: 'zone' }, 'placement'],
    ['placement unknown field', { ...IMAGE, kind: 'image', placement: { zones: [] } }, 'placement.zones'],
    ['constraints not an array', { ...IMAGE, kind: 'image', placement: { constraints: 'node.role==worker' } }, 'placement.constraints'],
    ['constraint not a string', { ...IMAGE, kind: 'image', placement: { constraints: [1] } }, 'placement.constraints[0]'],
    ['constraint without an operator', { ...IMAGE, kind: 'image', placement: { constraints: ['node.role==worker', 'zone'] } }, 'placement.constraints[1]'],
    ['constraint without a value', { ...IMAGE, kind: 'image', placement: { constraints: ['node.labels.zone=='] } }, 'placement.constraints[0]'],
    ['too many constraints', { ...IMAGE, kind: 'image', placement: { constraints: Array(33).fill('node.role==worker') } }, 'placement.constraints'],
    ['spread not a label', { ...IMAGE, kind: 'image', placement: { spread: 'zone ==' } }, 'placement.spread'],
  ];
  for (const [label, body, field] of cases) test(label, () => refuses(() => parseNodeSpec(body, CTX), field, label));

  test('kept as given (trimmed); absent stays absent', () => {
    const spec = parseNodeSpec({ ...IMAGE, kind: 'image', placement: { constraints: [' node.labels.zone != z1 ', 'node.role==worker'], spread: 'zone' } }, CTX);
    assert.deepEqual(spec.placement, { constraints: ['node.labels.zone != z1', 'node.role==worker'], spread: 'zone' });
    assert.deepEqual(parseNodeSpec({ ...IMAGE, kind: 'image', placement: {} }, CTX).placement, { constraints: [] });
    assert.equal('placement' in parseNodeSpec({ ...IMAGE, kind: 'image' }, CTX), false);
  });
});

describe('node specs: defaults and presets', () => {
  test('a minimal cell node gets every default', () => {
    const s = parseNodeSpec(CELL, CTX) as CellNodeSpec;
    assert.deepEqual(s, {
      kind: 'cell', name: 'my-node', description: '', folderId: 'default', projectId: 'proj',
      permissions: { folders: ['default'] },
      resources: { preset: 'c1.4', cores: 4, memoryGb: 32, gpus: 0 },
      scaling: { minInstances: 1, maxInstances: 1, sessionsPerInstance: 1, queueSize: 64, scaleDownDelaySeconds: 60 },
      healthcheck: { protocol: 'worker', timeout: 2, interval: 1, failsThreshold: 3, passesThreshold: 1 },
      checkpointId: 'cp-1', inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'y', type: 'dict' }],
      environment: { python: '/usr/bin/python3' }, timeout: 60,
    });
  });

  test('minInstances 0 (scale to zero): maxInstances defaults to 1; holdTimeout and targetUtilization are stored only when given', () => {
    const s = parseNodeSpec({ ...CELL, scaling: { minInstances: 0 } }, CTX).scaling;
    assert.deepEqual([s.minInstances, s.maxInstances, s.holdTimeout, s.targetUtilization], [0, 1, undefined, undefined]);
    const t = parseNodeSpec({ ...CELL, scaling: { minInstances: 0, maxInstances: 3, holdTimeout: 5, targetUtilization: 0.7 } }, CTX).scaling;
    assert.deepEqual([t.maxInstances, t.holdTimeout, t.targetUtilization], [3, 5, 0.7]);
  });

  test('queueSize defaults to 64 per session of the largest scale; maxInstances to minInstances', () => {
    const s = parseNodeSpec({ ...CELL, scaling: { minInstances: 2, sessionsPerInstance: 3 } }, CTX);
    assert.equal(s.scaling.maxInstances, 2);
    assert.equal(s.scaling.queueSize, 64 * 2 * 3);
    assert.equal(parseNodeSpec({ ...CELL, scaling: { queueSize: 0 } }, CTX).scaling.queueSize, 0);
  });

  test('every preset expands; explicit resources default the rest', () => {
    for (const [name, r] of Object.entries(RESOURCE_PRESETS)) {
      assert.deepEqual(parseNodeSpec({ ...CELL, resources: name }, CTX).resources, { preset: name, ...r });
    }
    assert.deepEqual(parseNodeSpec({ ...CELL, resources: { cores: 2 } }, CTX).resources, { cores: 2, memoryGb: 1, gpus: 0 });
    assert.deepEqual(RESOURCE_PRESETS['g1.1'], { cores: 8, memoryGb: 48, gpus: 1 });
  });

  test('kind is inferred from `image`; a minimal image node gets every default', () => {
    const s = parseNodeSpec(IMAGE, CTX) as ImageNodeSpec;
    assert.equal(s.kind, 'image');
    assert.deepEqual(s.endpoint, { port: 8080, protocol: 'http', timeout: 15, idleTimeout: 300 });
    assert.deepEqual(s.healthcheck, { protocol: 'endpoint', port: 8080, timeout: 1, interval: 1, failsThreshold: 3, passesThreshold: 1 });
    assert.deepEqual(s.env, {});
    assert.equal(s.telemetry, undefined);
  });

  test('image health checks and telemetry default to the endpoint port; env values become strings', () => {
    const s = parseNodeSpec({ ...IMAGE, env: { A: 1, B: true, C: 'c' }, healthcheck: { protocol: 'grpc' }, telemetry: {} }, CTX) as ImageNodeSpec;
    assert.deepEqual(s.env, { A: '1', B: 'true', C: 'c' });
    assert.deepEqual(s.healthcheck, { protocol: 'grpc', port: 8080, service: '', timeout: 1, interval: 1, failsThreshold: 3, passesThreshold: 1 });
    assert.deepEqual(s.telemetry, { path: '/metrics', port: 8080, format: 'prometheus' });
    const h = parseNodeSpec({ ...IMAGE, healthcheck: {} }, CTX) as ImageNodeSpec;
    assert.equal(h.healthcheck.protocol, 'http');
    assert.equal(h.healthcheck.path, '/');
  });

  test('permissions: duplicates dropped; Cyrillic names and image references with digests accepted', () => {
    assert.deepEqual(parseNodeSpec({ ...CELL, permissions: { folders: ['a', 'b', 'a'] } }, CTX).permissions, { folders: ['a', 'b'] });
    assert.equal(parseNodeSpec({ ...CELL, name: 'Модель 1' }, CTX).name, 'Модель 1');
    const digest = `echo@sha256:${'a'.repeat(64)}`;
    assert.equal((parseNodeSpec({ ...IMAGE, image: digest }, CTX) as ImageNodeSpec).image, digest);
  });
});

describe('alias specs: bad input names the field', () => {
  const b = (backends: unknown): Record<string, unknown> => ({ ...ALIAS, backends });
  const cases: Array<[string, unknown, string]> = [
    ['not an object', 'alias', 'body'],
    ['unknown field', { ...ALIAS, weights: {} }, 'weights'],
    ['kind not alias', { ...ALIAS, kind: 'node' }, 'kind'],
    ['name missing', without(ALIAS, 'name'), 'name'],
    ['name not a string', { ...ALIAS, name: 1 }, 'name'],
    ['name too short', { ...ALIAS, name: 'x' }, 'name'],
    ['name too long', { ...ALIAS, name: 'a'.repeat(80) }, 'name'],
    ['name ends with a dot', { ...ALIAS, name: 'model.' }, 'name'],
    ['description not a string', { ...ALIAS, description: 5 }, 'description'],
    ['description too long', { ...ALIAS, description: 'd'.repeat(1025) }, 'description'],
    ['folderId bad', { ...ALIAS, folderId: 'a/b' }, 'folderId'],
    ['backends missing', without(ALIAS, 'backends'), 'backends'],
    ['backends not an array', b({ n1: 1 }), 'backends'],
    ['backends empty', b([]), 'backends'],
    ['backends too many', b(Array.from({ length: 33 }, (_, i) => ({ nodeId: `n${i}` }))), 'backends'],
    ['backend not an object', b(['n1']), 'backends[0]'],
    ['backend unknown field', b([{ nodeId: 'n1', weight: 1, region: 'x' }]), 'backends[0].region'],
    ['backend nodeId missing', b([{ weight: 1 }]), 'backends[0].nodeId'],
    ['backend nodeId empty', b([{ nodeId: '', weight: 1 }]), 'backends[0].nodeId'],
    ['backend listed twice', b([{ nodeId: 'n1' }, { nodeId: 'n1' }]), 'backends[1].nodeId'],
    ['weight 0', b([{ nodeId: 'n1', weight: 0 }]), 'backends[0].weight'],
    ['weight negative', b([{ nodeId: 'n1', weight: -5 }]), 'backends[0].weight'],
    ['weight a string', b([{ nodeId: 'n1', weight: 'ten' }]), 'backends[0].weight'],
    ['weight infinite', b([{ nodeId: 'n1', weight: Infinity }]), 'backends[0].weight'],
    ['weight too large', b([{ nodeId: 'n1', weight: 1_000_001 }]), 'backends[0].weight'],
    ['executionAcl not an object', { ...ALIAS, executionAcl: true }, 'executionAcl'],
    ['executionAcl unknown field', { ...ALIAS, executionAcl: { users: [] } }, 'executionAcl.users'],
    ['executionAcl.isPublic not a boolean', { ...ALIAS, executionAcl: { isPublic: 'yes' } }, 'executionAcl.isPublic'],
    ['executionAcl.folders not an array', { ...ALIAS, executionAcl: { folders: 'a' } }, 'executionAcl.folders'],
    ['executionAcl.folders too many', { ...ALIAS, executionAcl: { folders: Array.from({ length: 101 }, (_, i) => `f${i}`) } }, 'executionAcl.folders'],
    ['executionAcl.folders item not a string', { ...ALIAS, executionAcl: { folders: [1] } }, 'executionAcl.folders[0]'],
    ['executionAcl.folders item bad', { ...ALIAS, executionAcl: { folders: ['ok', '..'] } }, 'executionAcl.folders[1]'],
    ['proxyMetadata not an object', { ...ALIAS, proxyMetadata: [] }, 'proxyMetadata'],
    ['proxyMetadata.headers not an array', { ...ALIAS, proxyMetadata: { headers: {} } }, 'proxyMetadata.headers'],
    ['proxyMetadata.headers too many', { ...ALIAS, proxyMetadata: { headers: Array.from({ length: 33 }, (_, i) => ({ name: `x-${i}`, value: '1' })) } }, 'proxyMetadata.headers'],
    ['header not {name, value}', { ...ALIAS, proxyMetadata: { headers: [{ name: 'x-a' }] } }, 'proxyMetadata.headers[0]'],
    ['header name bad', { ...ALIAS, proxyMetadata: { headers: [{ name: 'x a', value: '1' }] } }, 'proxyMetadata.headers[0].name'],
    ['header name reserved', { ...ALIAS, proxyMetadata: { headers: [{ name: 'Authorization', value: 'x' }] } }, 'proxyMetadata.headers[0].name'],
    ['header name reserved (routing)', { ...ALIAS, proxyMetadata: { headers: [{ name: 'x-node-id', value: 'x' }] } }, 'proxyMetadata.headers[0].name'],
    ['header value with a line break', { ...ALIAS, proxyMetadata: { headers: [{ name: 'x-a', value: 'a\r\nb: c' }] } }, 'proxyMetadata.headers[0].value'],
    ['header value too long', { ...ALIAS, proxyMetadata: { headers: [{ name: 'x-a', value: 'v'.repeat(4097) }] } }, 'proxyMetadata.headers[0]'],
    ['sticky without header', { ...ALIAS, sticky: {} }, 'sticky.header'],
    ['sticky header bad', { ...ALIAS, sticky: { header: 'x session' } }, 'sticky.header'],
    ['mirror not an object', { ...ALIAS, mirror: 'n2' }, 'mirror'],
    ['mirror nodeId missing', { ...ALIAS, mirror: { percent: 5 } }, 'mirror.nodeId'],
    ['mirror percent 0', { ...ALIAS, mirror: { nodeId: 'n2', percent: 0 } }, 'mirror.percent'],
    ['mirror percent over 100', { ...ALIAS, mirror: { nodeId: 'n2', percent: 101 } }, 'mirror.percent'],
    ['mirror percent a string', { ...ALIAS, mirror: { nodeId: 'n2', percent: '5' } }, 'mirror.percent'],
  ];
  for (const [label, body, field] of cases) {
    test(`${label} → ${field}`, () => refuses(() => parseAliasSpec(body, ACTX), field, label));
  }
});

describe('alias specs: defaults', () => {
  test('a minimal alias gets every default', () => {
    assert.deepEqual(parseAliasSpec({ name: 'model-a', backends: [{ nodeId: 'n1' }] }, ACTX), {
      name: 'model-a', description: '', folderId: 'default', projectId: 'proj',
      backends: [{ nodeId: 'n1', weight: 1 }], executionAcl: { folders: ['default'], isPublic: false },
      proxyMetadata: { headers: [] }, sticky: null, mirror: null,
    });
  });

  test('ACL folders default to the alias folder and drop duplicates; sticky header lower-cased; mirror 100% by default', () => {
    const s = parseAliasSpec({
      ...ALIAS, kind: 'alias', folderId: 'team-a', executionAcl: { isPublic: true },
      sticky: { header: 'X-Session-Id' }, mirror: { nodeId: 'n2' },
      proxyMetadata: { headers: [{ name: 'X-Model', value: 'v2' }] },
    }, ACTX);
    assert.deepEqual(s.executionAcl, { folders: ['team-a'], isPublic: true });
    assert.deepEqual(s.sticky, { header: 'x-session-id' });
    assert.deepEqual(s.mirror, { nodeId: 'n2', percent: 100 });
    assert.deepEqual(s.proxyMetadata.headers, [{ name: 'X-Model', value: 'v2' }]);
    assert.deepEqual(parseAliasSpec({ ...ALIAS, executionAcl: { folders: ['b', 'b', 'c'] } }, ACTX).executionAcl, { folders: ['b', 'c'], isPublic: false });
    assert.deepEqual(parseAliasSpec({ ...ALIAS, sticky: null, mirror: null }, ACTX).mirror, null);
    assert.equal(parseAliasSpec(b0(0.5), ACTX).backends[0]!.weight, 0.5);
  });
});

function b0(weight: number): Record<string, unknown> { return { ...ALIAS, backends: [{ nodeId: 'n1', weight }] }; }

describe('node updates: merge patch, what changed, what restarts', () => {
  test('a patch over the stored spec: changed fields, in-place or not, and the leaf diff', () => {
    const before = parseNodeSpec({ ...CELL, name: 'upd' }, CTX);
    const after = parseNodeSpec(mergePatch(specInput(before), { checkpointId: 'v2', scaling: { maxInstances: 3 }, description: 'new' }), CTX);
    assert.deepEqual(changedFields(before, after), ['checkpointId', 'description', 'scaling']);
    assert.deepEqual(changedFields(before, after).filter((f) => !IN_PLACE_FIELDS.has(f)), ['checkpointId']);
    const diff = specDiff(specInput(before), specInput(after));
    assert.deepEqual(diff.map((d) => d.field), ['checkpointId', 'description', 'scaling.maxInstances']);
    assert.deepEqual(diff.find((d) => d.field === 'description'), { field: 'description', from: '', to: 'new' });
    // null removes a key (RFC 7386); the same spec again is no change
    assert.deepEqual(changedFields(before, parseNodeSpec(specInput(before), CTX)), []);
    const noDesc = mergePatch(specInput(after), { description: null }) as Record<string, unknown>;
    assert.equal('description' in noDesc, false);
  });

  test('rollout settings: defaults when absent, stored only when given', () => {
    const plain = parseNodeSpec({ ...CELL, name: 'roll' }, CTX);
    assert.equal(plain.rollout, undefined);
    assert.deepEqual(rolloutSettings(plain), { maxSurge: 1, maxUnavailable: 0, deadlineSeconds: 300 });
    const set = parseNodeSpec({ ...CELL, name: 'roll', rollout: { maxSurge: 0, maxUnavailable: 1 } }, CTX);
    assert.deepEqual(rolloutSettings(set), { maxSurge: 0, maxUnavailable: 1, deadlineSeconds: 300 });
    assert.ok(IN_PLACE_FIELDS.has('rollout'), 'changing rollout settings restarts nothing');
  });
});
