// A variable type (core/var-types.ts) as JSON Schema 2020-12 (what OpenAPI 3.1 embeds), and
// an example value of it. One place, so the OpenAPI document, the snippets and the Swagger
// UI's "try it" form all show the same shapes the gateway accepts.
import { DTYPES, parseType, type Dtype, type TypeExpr } from '../core/var-types.js';
import type { Variable } from '../core/types.js';

export type JsonSchema = Record<string, unknown>;

const INT_BOUNDS: Partial<Record<Dtype, [number, number]>> = {
  int8: [-128, 127], int16: [-32768, 32767], int32: [-2147483648, 2147483647],
  uint8: [0, 255], uint16: [0, 65535], uint32: [0, 4294967295], uint64: [0, Number.MAX_SAFE_INTEGER],
};

function leafSchema(dtype: Dtype | null): JsonSchema {
  if (dtype === null) return { type: ['number', 'boolean'] };
  if (dtype === 'bool') return { type: 'boolean' };
  if (dtype.startsWith('float')) return { type: 'number' };
  const b = INT_BOUNDS[dtype];
  return b ? { type: 'integer', minimum: b[0], maximum: b[1] } : { type: 'integer' };
}

function nested(shape: number[], leaf: JsonSchema): JsonSchema {
  let s = leaf;
  for (let i = shape.length - 1; i >= 0; i--) {
    const d = shape[i]!;
    s = { type: 'array', items: s, ...(d >= 0 ? { minItems: d, maxItems: d } : {}) };
  }
  return s;
}

/** The raw form of a tensor: {dtype, shape, data} with data the base64 of little-endian bytes. */
export function rawTensorSchema(dtype: Dtype | null, shape: number[] | null): JsonSchema {
  return {
    type: 'object', required: ['dtype', 'shape', 'data'], additionalProperties: false,
    properties: {
      dtype: dtype ? { const: dtype } : { enum: Object.keys(DTYPES) },
      shape: {
        type: 'array', items: { type: 'integer', minimum: 0 },
        ...(shape ? { minItems: shape.length, maxItems: shape.length, prefixItems: shape.map((d) => (d >= 0 ? { const: d } : { type: 'integer', minimum: 0 })) } : {}),
      },
      data: { type: 'string', contentEncoding: 'base64', description: 'the raw little-endian bytes of the values, row-major' },
    },
  };
}

export function typeSchema(t: TypeExpr): JsonSchema {
  switch (t.kind) {
    case 'scalar':
      switch (t.name) {
        case 'int': return { type: 'integer' };
        case 'float': return { type: 'number' };
        case 'str': return { type: 'string' };
        case 'bool': return { type: 'boolean' };
        case 'list': return { type: 'array' };
        case 'dict': return { type: 'object' };
        case 'bytes': return { type: 'string', contentEncoding: 'base64' };
        case 'any': return {};
      }
      break;
    case 'list': return { type: 'array', items: typeSchema(t.items) };
    case 'dataframe':
      return {
        oneOf: [
          { title: 'records', type: 'array', items: { type: 'object' } },
          {
            title: 'split', type: 'object', required: ['columns', 'data'], additionalProperties: false,
            properties: { columns: { type: 'array', items: { type: ['string', 'number'] } }, data: { type: 'array', items: { type: 'array' } }, index: { type: 'array' } },
          },
        ],
      };
    case 'ndarray': {
      const leaf = leafSchema(t.dtype);
      const lists: JsonSchema = t.shape ? nested(t.shape, leaf) : { anyOf: [leaf, { type: 'array' }], description: 'nested arrays of any rank' };
      return { oneOf: [{ title: 'nested arrays', ...lists }, { title: 'raw bytes', ...rawTensorSchema(t.dtype, t.shape) }] };
    }
  }
  return {};
}

/** The schema of a variable, with its description, type string and default. */
export function variableSchema(v: Variable): JsonSchema {
  return {
    ...typeSchema(parseType(v.type)),
    ...(v.description ? { description: v.description } : {}),
    'x-berth-type': v.type,
    ...(Object.hasOwn(v, 'default') ? { default: v.default } : {}),
  };
}

/** An object schema over variables: inputs with defaults are optional. */
export function variablesSchema(vars: Variable[], requireAll: boolean): JsonSchema {
  return {
    type: 'object', additionalProperties: false,
    properties: Object.fromEntries(vars.map((v) => [v.name, variableSchema(v)])),
    required: vars.filter((v) => requireAll || !Object.hasOwn(v, 'default')).map((v) => v.name),
  };
}

function leafExample(dtype: Dtype | null, i: number): number | boolean {
  if (dtype === 'bool') return i % 2 === 0;
  if (dtype === null || dtype.startsWith('float')) return 0.5 + i;
  return i + 1;
}

/** A value of the type the gateway accepts (the nested-list form for tensors). */
export function exampleValue(t: TypeExpr): unknown {
  switch (t.kind) {
    case 'scalar':
      return { int: 1, float: 0.5, str: 'text', bool: true, list: [1, 2], dict: { key: 'value' }, bytes: 'aGVsbG8=', any: 'value' }[t.name];
    case 'list': return [exampleValue(t.items)];
    case 'dataframe': return [{ feature: 1.5, label: 'a' }, { feature: 2.5, label: 'b' }];
    case 'ndarray': {
      const declared = t.shape ?? [3];
      const shape = declared.map((d) => (d === -1 ? (declared.length === 1 ? 3 : 1) : d));
      let n = 0;
      const build = (axis: number): unknown => (axis === shape.length ? leafExample(t.dtype, n++) : Array.from({ length: shape[axis]! }, () => build(axis + 1)));
      return build(0);
    }
  }
}

/** Example inputs: each variable's default when it has one, else an example of its type. */
export function exampleInputs(vars: Variable[]): Record<string, unknown> {
  return Object.fromEntries(vars.map((v) => [v.name, Object.hasOwn(v, 'default') ? v.default : exampleValue(parseType(v.type))]));
}
