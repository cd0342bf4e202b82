// The node spec schemas as documented (src/api/schemas.ts: CellNodeSpecIn, ImageNodeSpecIn) against
// the parser that is the real validator (core/node-spec.ts): every documented numeric bound is
// where parseNodeSpec accepts and refuses (naming that field), every documented default is what
// it fills in, every maxLength is refused one past it. A bound changed on one side only fails here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { TSchema } from '@sinclair/typebox';
import { CellNodeSpecIn, ImageNodeSpecIn } from '../../src/api/schemas.js';
import { parseNodeSpec } from '../../src/core/node-spec.js';
import { BerthError } from '../../src/core/errors.js';

type Obj = Record<string, unknown>;
const ctx = { defaultFolder: 'f', defaultProject: 'p', defaultPython: '/usr/bin/python3' };
const BASES: Array<[string, TSchema, Obj]> = [
  ['cell', CellNodeSpecIn, { kind: 'cell', name: 'n1', checkpointId: 'c', inputs: [{ name: 'x', type: 'any' }], outputs: [{ name: 'y', type: 'any' }] }],
  ['image', ImageNodeSpecIn, { kind: 'image', name: 'n1', image: 'nginx', endpoint: { port: 80 } }],
];

/** Every leaf of an object schema, by dotted path (a union's object member is walked too). */
function leaves(schema: TSchema, prefix = ''): Array<[string, TSchema]> {
  const props = (schema.properties ?? (schema.anyOf as TSchema[] | undefined)?.find((s) => s.properties)?.properties) as Record<string, TSchema> | undefined;
  if (!props) return prefix ? [[prefix, schema]] : [];
  return Object.entries(props).flatMap(([k, s]) => {
    const path = prefix ? `${prefix}.${k}` : k;
    return s.properties || (s.anyOf as TSchema[] | undefined)?.some((x) => x.properties) ? leaves(s, path) : [[path, s] as [string, TSchema]];
  });
}

function withValue(base: Obj, path: string, value: unknown): Obj {
  const out = structuredClone(base);
  const keys = path.split('.');
  let o = out;
  for (const k of keys.slice(0, -1)) {
    if (typeof o[k] !== 'object' || o[k] === null) o[k] = {};
    o = o[k] as Obj;
  }
  o[keys.at(-1)!] = value;
  return out;
}

const at = (o: unknown, path: string): unknown => path.split('.').reduce<unknown>((v, k) => (v as Obj | undefined)?.[k], o);

function refusal(spec: Obj): BerthError | null {
  try { parseNodeSpec(spec, ctx); return null; } catch (err) { if (err instanceof BerthError) return err; throw err; }
}

// fields whose bounds hold only with others: both rollout numbers 0 is refused as a pair
const CONTEXT: Record<string, Obj> = { 'rollout.maxSurge': { rollout: { maxUnavailable: 1 } } };

for (const [kind, schema, base] of BASES) {
  test(`${kind} node spec: documented numeric bounds are the parser's, refusals name the field`, () => {
    let checked = 0;
    for (const [path, s] of leaves(schema)) {
      if ((s.type !== 'integer' && s.type !== 'number') || s.minimum === undefined || s.maximum === undefined) continue;
      const step = s.type === 'integer' ? 1 : Math.max(0.01, (s.maximum as number) / 1000);
      const start = { ...base, ...(CONTEXT[path] ?? {}) };
      for (const v of [s.minimum as number, s.maximum as number]) {
        const e = refusal(withValue(start, path, v));
        assert.equal(e, null, `${path} = ${v} is documented as allowed: ${e?.message}`);
      }
      for (const v of [(s.minimum as number) - step, (s.maximum as number) + step]) {
        const e = refusal(withValue(start, path, v));
        assert.ok(e, `${path} = ${v} is documented as out of bounds but accepted`);
        assert.equal(e.code, 'INVALID_ARGUMENT');
        assert.equal(e.details.field, path, e.message);
      }
      checked++;
    }
    assert.ok(checked >= (kind === 'cell' ? 14 : 18), `${checked} bounds checked`);
  });

  test(`${kind} node spec: documented defaults are what the parser fills in; maxLength + 1 is refused`, () => {
    let defaults = 0;
    for (const [path, s] of leaves(schema)) {
      if (s.default !== undefined && path !== 'healthcheck.service' && path !== 'network') {
        // a default applies inside its parent object: give the parent, leave the field out
        const parentPath = path.split('.').slice(0, -1).join('.');
        const parent = parentPath && typeof at(base, parentPath) !== 'object' ? withValue(base, parentPath, {}) : base;
        const spec = parseNodeSpec(path === 'telemetry.path' ? { ...parent, telemetry: {} } : parent, ctx);
        assert.deepEqual(at(spec, path), s.default, `${path}: documented default ${JSON.stringify(s.default)}`);
        defaults++;
      }
      if (typeof s.maxLength === 'number' && s.type === 'string' && !s.pattern) {
        const e = refusal(withValue(base, path, 'a'.repeat(s.maxLength + 1)));
        assert.equal(e?.details.field, path, `${path}: ${s.maxLength + 1} characters must be refused naming it`);
      }
    }
    assert.ok(defaults >= 10, `${defaults} defaults checked`);
    // the whole-object defaults: resources c1.4, rollout absent
    assert.equal(parseNodeSpec(base, ctx).resources.preset, (schema.properties as Obj & { resources: { default: string } }).resources.default);
  });
}
