// Checks a JSON value against a variable's type (core/var-types.ts). Compiled once per type
// into a closure, so the gateway's per-call work is the walk of the value and nothing more;
// node-spec.ts uses the same checks for declared defaults. A failure says what was expected
// and what came, for an error that names the variable.
import { DTYPES, formatType, type Dtype, type TypeExpr } from './var-types.js';

export interface Problem {
  /** wrong_type, wrong_shape, wrong_dtype, wrong_size, ragged */
  reason: string;
  /** "must be …, got …" (the variable's name goes in front). */
  message: string;
  /** Where inside the value, e.g. `[3]` or `.shape`; empty for the value itself. */
  path: string;
}

export type ValueCheck = (v: unknown) => Problem | null;

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

export function jsonTypeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

const SCALAR: Record<string, [(v: unknown) => boolean, string]> = {
  int: [(v) => typeof v === 'number' && Number.isInteger(v), 'an integer'],
  float: [(v) => typeof v === 'number', 'a number'],
  str: [(v) => typeof v === 'string', 'a string'],
  bool: [(v) => typeof v === 'boolean', 'a boolean'],
  list: [(v) => Array.isArray(v), 'an array'],
  dict: [isObj, 'an object'],
  bytes: [(v) => typeof v === 'string' && BASE64_RE.test(v), 'a base64 string'],
  any: [() => true, 'any JSON value'],
};

/** What a value of the type looks like in JSON, for messages. */
export function expectedText(t: TypeExpr): string {
  switch (t.kind) {
    case 'scalar': return SCALAR[t.name]![1];
    case 'list': return `an array of ${expectedText(t.items).replace(/^an? /, '')}s`;
    case 'dataframe': return 'a table: an array of row objects (records) or {columns, data[, index]} (split)';
    case 'ndarray': return `${t.dtype ?? 'numeric'} tensor${t.shape ? ` of shape [${t.shape.join(',')}]` : ''}: nested arrays, or {dtype, shape, data: base64}`;
  }
}

const fail = (reason: string, message: string, path = ''): Problem => ({ reason, message, path });

export function compileCheck(t: TypeExpr): ValueCheck {
  switch (t.kind) {
    case 'scalar': {
      const [test, text] = SCALAR[t.name]!;
      return (v) => (test(v) ? null : fail('wrong_type', `must be ${text} (${t.name}), got ${jsonTypeName(v)}`));
    }
    case 'list': {
      const item = compileCheck(t.items);
      const name = formatType(t);
      return (v) => {
        if (!Array.isArray(v)) return fail('wrong_type', `must be an array (${name}), got ${jsonTypeName(v)}`);
        for (let i = 0; i < v.length; i++) {
          const p = item(v[i]);
          if (p) return { ...p, path: `[${i}]${p.path}` };
        }
        return null;
      };
    }
    case 'dataframe': return checkDataframe;
    case 'ndarray': return compileTensor(t.dtype, t.shape);
  }
}

function checkDataframe(v: unknown): Problem | null {
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      if (!isObj(v[i])) return fail('wrong_type', `must be a table (dataframe): records are row objects, got ${jsonTypeName(v[i])}`, `[${i}]`);
    }
    return null;
  }
  if (!isObj(v)) return fail('wrong_type', `must be a table (dataframe): an array of row objects, or {columns, data[, index]}, got ${jsonTypeName(v)}`);
  for (const k of Object.keys(v)) {
    if (k !== 'columns' && k !== 'data' && k !== 'index') return fail('wrong_type', `must be a table (dataframe) in split orientation {columns, data[, index]}; "${k}" is not one of those`, `.${k}`);
  }
  const { columns, data, index } = v;
  if (!Array.isArray(columns) || !columns.every((c) => typeof c === 'string' || typeof c === 'number')) {
    return fail('wrong_type', 'must be a table (dataframe) in split orientation: "columns" must be an array of names', '.columns');
  }
  if (!Array.isArray(data)) return fail('wrong_type', `must be a table (dataframe) in split orientation: "data" must be an array of rows, got ${jsonTypeName(data)}`, '.data');
  for (let i = 0; i < data.length; i++) {
    const row = data[i];
    if (!Array.isArray(row) || row.length !== columns.length) {
      return fail('wrong_shape', `must be a table (dataframe): each row of "data" must be an array of ${columns.length} values (one per column)`, `.data[${i}]`);
    }
  }
  if (index !== undefined && (!Array.isArray(index) || index.length !== data.length)) {
    return fail('wrong_shape', `must be a table (dataframe): "index" must be an array of ${data.length} labels (one per row)`, '.index');
  }
  return null;
}

/** Integer dtypes' ranges; int64/uint64 values beyond 2^53 lose precision in JSON anyway. */
const INT_RANGE: Partial<Record<Dtype, [number, number]>> = {
  int8: [-128, 127], int16: [-32768, 32767], int32: [-2147483648, 2147483647], int64: [-(2 ** 63), 2 ** 63],
  uint8: [0, 255], uint16: [0, 65535], uint32: [0, 4294967295], uint64: [0, 2 ** 64],
};

function leafCheck(dtype: Dtype | null): (v: unknown) => boolean {
  if (dtype === null) return (v) => typeof v === 'number' || typeof v === 'boolean';
  if (dtype === 'bool') return (v) => typeof v === 'boolean';
  const range = INT_RANGE[dtype];
  if (range) {
    const [lo, hi] = range;
    return (v) => typeof v === 'number' && Number.isInteger(v) && v >= lo && v <= hi;
  }
  return (v) => typeof v === 'number';
}

const shapeText = (s: readonly number[]): string => `[${s.join(',')}]`;

function shapeProblem(declared: number[] | null, got: number[]): Problem | null {
  if (!declared) return null;
  const ok = declared.length === got.length && declared.every((d, i) => d === -1 || d === got[i]);
  return ok ? null : fail('wrong_shape', `must have shape ${shapeText(declared)} (-1: any length), got shape ${shapeText(got)}`);
}

function compileTensor(dtype: Dtype | null, declared: number[] | null): ValueCheck {
  const leaf = leafCheck(dtype);
  const dtypeText = dtype ?? 'numeric';
  return (v) => {
    if (isObj(v)) return checkRawTensor(v, dtype, declared);
    // nested lists: the shape is the lengths along the first element; every element must agree
    const shape: number[] = [];
    let cur: unknown = v;
    while (Array.isArray(cur)) {
      shape.push(cur.length);
      if (shape.length > 32) return fail('wrong_shape', 'must have at most 32 dimensions');
      cur = cur[0];
    }
    if (!Array.isArray(v) && !leaf(v)) {
      return fail('wrong_type', `must be a ${dtypeText} tensor: nested arrays of numbers, or {dtype, shape, data: base64}, got ${jsonTypeName(v)}`);
    }
    const p = shapeProblem(declared, shape);
    if (p) return p;
    return walk(v, 0, shape, leaf, dtypeText, '');
  };
}

function walk(v: unknown, axis: number, shape: number[], leaf: (v: unknown) => boolean, dtypeText: string, path: string): Problem | null {
  if (axis === shape.length) {
    return leaf(v) ? null : fail(Array.isArray(v) ? 'ragged' : 'wrong_dtype',
      Array.isArray(v) ? 'must be a regular tensor: rows nest to different depths' : `must hold ${dtypeText} values, got ${jsonTypeName(v)}${typeof v === 'number' ? ` ${v}` : ''}`, path);
  }
  if (!Array.isArray(v) || v.length !== shape[axis]) {
    return fail('ragged', `must be a regular tensor: expected ${shape[axis]} elements on axis ${axis}, got ${Array.isArray(v) ? v.length : jsonTypeName(v)}`, path);
  }
  for (let i = 0; i < v.length; i++) {
    const p = walk(v[i], axis + 1, shape, leaf, dtypeText, `${path}[${i}]`);
    if (p) return p;
  }
  return null;
}

function checkRawTensor(v: Record<string, unknown>, dtype: Dtype | null, declared: number[] | null): Problem | null {
  for (const k of Object.keys(v)) {
    if (k !== 'dtype' && k !== 'shape' && k !== 'data') return fail('wrong_type', `must be a tensor {dtype, shape, data: base64}; "${k}" is not one of those`, `.${k}`);
  }
  const dt = v.dtype;
  if (typeof dt !== 'string' || !Object.hasOwn(DTYPES, dt)) {
    return fail('wrong_dtype', `must name its dtype, one of ${Object.keys(DTYPES).join(', ')}, got ${typeof dt === 'string' ? `"${dt}"` : jsonTypeName(dt)}`, '.dtype');
  }
  if (dtype !== null && dt !== dtype) return fail('wrong_dtype', `must have dtype ${dtype}, got ${dt}`, '.dtype');
  const shape = v.shape;
  if (!Array.isArray(shape) || shape.length > 32 || !shape.every((d) => typeof d === 'number' && Number.isInteger(d) && d >= 0)) {
    return fail('wrong_shape', 'must give its shape as an array of lengths ≥ 0', '.shape');
  }
  const p = shapeProblem(declared, shape as number[]);
  if (p) return p;
  const data = v.data;
  if (typeof data !== 'string' || !BASE64_RE.test(data)) return fail('wrong_type', 'must carry its raw little-endian bytes as base64 in "data"', '.data');
  const bytes = (data.length / 4) * 3 - (data.endsWith('==') ? 2 : data.endsWith('=') ? 1 : 0);
  const want = (shape as number[]).reduce((a, b) => a * b, 1) * DTYPES[dt as Dtype];
  if (bytes !== want) return fail('wrong_size', `must carry ${want} bytes for shape ${shapeText(shape as number[])} of ${dt}, got ${bytes}`, '.data');
  return null;
}
