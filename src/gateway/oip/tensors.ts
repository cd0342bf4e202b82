// Cell-node variables as Open Inference Protocol tensors, both ways. A model's inputs and
// outputs are its declared variables by name: an `ndarray` is a tensor of its dtype and
// shape; int, float, bool, str and bytes are 1-element tensors (INT64, FP64, BOOL, BYTES);
// list[int|float|bool|str] a 1-D tensor; anything else (dict, list, any, dataframe, …) a
// 1-element BYTES tensor holding its JSON text. Tensors reach the worker as the raw form
// {dtype, shape, data: base64}, so the worker makes a numpy array straight from the bytes.
import { BerthError } from '../../core/errors.js';
import { DTYPES, type Dtype } from '../../core/var-types.js';
import type { Variable } from '../../core/types.js';
import { DATATYPE, DTYPE_OF, type Mapping } from '../../contracts/tensors.js';

export { mappingOf, tensorMetadata } from '../../contracts/tensors.js';

/** One tensor as a request carries it: flat values (BYTES as Buffers), or raw bytes. */
export interface InTensor {
  name: string;
  datatype: string;
  shape: number[];
  values?: unknown[];
  raw?: Buffer;
}

const bad = (variable: string, message: string): BerthError =>
  new BerthError('INVALID_INPUT', `input tensor "${variable}" ${message}`, { variable, field: `inputs.${variable}` });

function count(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Raw little-endian bytes as flat values (BYTES: 4-byte length-prefixed elements, as Buffers). */
export function unpackRaw(datatype: string, raw: Buffer, name: string): unknown[] {
  if (datatype === 'BYTES') {
    const out: Buffer[] = [];
    for (let o = 0; o < raw.length;) {
      if (o + 4 > raw.length) throw bad(name, 'has a truncated BYTES element');
      const n = raw.readUInt32LE(o);
      if (o + 4 + n > raw.length) throw bad(name, 'has a truncated BYTES element');
      out.push(raw.subarray(o + 4, o + 4 + n));
      o += 4 + n;
    }
    return out;
  }
  const dtype = DTYPE_OF[datatype];
  if (!dtype) throw bad(name, `has an unknown datatype ${datatype}`);
  const size = DTYPES[dtype];
  if (raw.length % size !== 0) throw bad(name, `has ${raw.length} raw bytes, not a whole number of ${datatype} values`);
  const n = raw.length / size;
  const out = new Array<unknown>(n);
  for (let i = 0; i < n; i++) {
    const o = i * size;
    switch (dtype) {
      case 'bool': out[i] = raw[o] !== 0; break;
      case 'int8': out[i] = raw.readInt8(o); break;
      case 'uint8': out[i] = raw[o]; break;
      case 'int16': out[i] = raw.readInt16LE(o); break;
      case 'uint16': out[i] = raw.readUInt16LE(o); break;
      case 'int32': out[i] = raw.readInt32LE(o); break;
      case 'uint32': out[i] = raw.readUInt32LE(o); break;
      case 'int64': out[i] = Number(raw.readBigInt64LE(o)); break;
      case 'uint64': out[i] = Number(raw.readBigUInt64LE(o)); break;
      case 'float16': out[i] = halfToFloat(raw.readUInt16LE(o)); break;
      case 'float32': out[i] = raw.readFloatLE(o); break;
      case 'float64': out[i] = raw.readDoubleLE(o); break;
    }
  }
  return out;
}

/** Flat values as raw little-endian bytes of a dtype; null when a value does not fit it. */
function packRaw(dtype: Dtype, values: unknown[]): Buffer | null {
  const size = DTYPES[dtype];
  const buf = Buffer.allocUnsafe(values.length * size);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    const o = i * size;
    if (dtype === 'bool') { if (typeof v !== 'boolean') return null; buf[o] = v ? 1 : 0; continue; }
    if (typeof v !== 'number') return null;
    switch (dtype) {
      case 'float32': buf.writeFloatLE(v, o); break;
      case 'float64': buf.writeDoubleLE(v, o); break;
      case 'float16': buf.writeUInt16LE(floatToHalf(v), o); break;
      default: {
        if (!Number.isInteger(v)) return null;
        try {
          switch (dtype) {
            case 'int8': buf.writeInt8(v, o); break;
            case 'uint8': buf.writeUInt8(v, o); break;
            case 'int16': buf.writeInt16LE(v, o); break;
            case 'uint16': buf.writeUInt16LE(v, o); break;
            case 'int32': buf.writeInt32LE(v, o); break;
            case 'uint32': buf.writeUInt32LE(v, o); break;
            case 'int64': buf.writeBigInt64LE(BigInt(v), o); break;
            case 'uint64': buf.writeBigUInt64LE(BigInt(v), o); break;
          }
        } catch { return null; } // out of the dtype's range
      }
    }
  }
  return buf;
}

function packBytes(values: Buffer[]): Buffer {
  const parts: Buffer[] = [];
  for (const v of values) {
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32LE(v.length, 0);
    parts.push(len, v);
  }
  return Buffer.concat(parts);
}

/** Flattens nested JSON arrays (row-major); deeper than any tensor may be (32 axes) is refused, never a stack overflow. */
export function flatten(data: unknown, name = 'data'): unknown[] {
  if (!Array.isArray(data)) return [data];
  if (!data.some(Array.isArray)) return data;
  const out: unknown[] = [];
  const walk = (v: unknown, depth: number): void => {
    if (!Array.isArray(v)) { out.push(v); return; }
    if (depth > 32) throw bad(name, 'nests its data deeper than 32 axes');
    for (const x of v) walk(x, depth + 1);
  };
  walk(data, 1);
  return out;
}

/** The execute call's input value for one tensor (the worker's JSON form). */
export function inputValue(v: Variable, m: Mapping, t: InTensor): unknown {
  if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isInteger(d) && d >= 0)) throw bad(v.name, 'needs a shape of lengths ≥ 0');
  const n = count(t.shape);
  if (m.kind === 'ndarray') {
    if (t.datatype === 'BYTES') throw bad(v.name, `must be a numeric tensor (${m.datatype}), got BYTES`);
    const dtype = DTYPE_OF[t.datatype];
    if (!dtype) throw bad(v.name, `has an unknown datatype "${t.datatype}"`);
    let raw = t.raw;
    if (!raw) {
      const values = t.values ?? [];
      if (values.length !== n) throw bad(v.name, `has ${values.length} values for shape [${t.shape.join(',')}] (${n})`);
      raw = packRaw(dtype, values) ?? undefined;
      if (!raw) throw bad(v.name, `holds values that are not ${t.datatype}`);
    }
    // dtype and shape against the declared ones: the validator says what was expected
    return { dtype, shape: t.shape, data: raw.toString('base64') };
  }
  const values = t.raw ? unpackRaw(t.datatype, t.raw, v.name) : (t.values ?? []);
  if (values.length !== n) throw bad(v.name, `has ${values.length} values for shape [${t.shape.join(',')}] (${n})`);
  const plain = (x: unknown, as: string): unknown => {
    if (Buffer.isBuffer(x)) return as === 'bytes' ? x.toString('base64') : x.toString('utf8');
    return x;
  };
  if (m.kind === 'scalar') {
    if (n !== 1) throw bad(v.name, `must hold one value (shape [1]), got shape [${t.shape.join(',')}]`);
    return plain(values[0], m.as);
  }
  if (m.kind === 'list') return values.map((x) => plain(x, m.as));
  if (n !== 1) throw bad(v.name, `must hold one BYTES value: the JSON text of the ${v.type}`);
  const text = Buffer.isBuffer(values[0]) ? values[0].toString('utf8') : values[0];
  if (typeof text !== 'string') throw bad(v.name, `must hold the JSON text of the ${v.type} as BYTES`);
  try { return JSON.parse(text); } catch { throw bad(v.name, `must hold valid JSON text (${v.type})`); }
}

/** One output as a tensor with raw bytes, from the worker's JSON form (ndarray_format base64). */
export function outputTensor(v: Variable, m: Mapping, value: unknown): { name: string; datatype: string; shape: number[]; raw: Buffer } {
  if (m.kind === 'ndarray') {
    const t = value as { dtype: Dtype; shape: number[]; data: string };
    return { name: v.name, datatype: DATATYPE[t.dtype], shape: t.shape, raw: Buffer.from(t.data, 'base64') };
  }
  const one = (x: unknown, as: string): { raw: Buffer } => {
    switch (as) {
      case 'int': return { raw: packRaw('int64', [x])! };
      case 'float': return { raw: packRaw('float64', [x])! };
      case 'bool': return { raw: packRaw('bool', [x])! };
      case 'bytes': return { raw: packBytes([Buffer.from(String(x), 'base64')]) };
      default: return { raw: packBytes([Buffer.from(String(x), 'utf8')]) };
    }
  };
  if (m.kind === 'scalar') return { name: v.name, datatype: m.datatype, shape: [1], ...one(value, m.as) };
  if (m.kind === 'list') {
    const items = value as unknown[];
    const raw = m.as === 'str' ? packBytes(items.map((x) => Buffer.from(String(x), 'utf8')))
      : packRaw(m.as === 'int' ? 'int64' : m.as === 'float' ? 'float64' : 'bool', items)!;
    return { name: v.name, datatype: m.datatype, shape: [items.length], raw };
  }
  return { name: v.name, datatype: 'BYTES', shape: [1], raw: packBytes([Buffer.from(JSON.stringify(value), 'utf8')]) };
}

/** An output tensor's values for a JSON answer (BYTES as UTF-8 text). */
export function jsonData(t: { datatype: string; raw: Buffer; name: string }): unknown[] {
  const values = unpackRaw(t.datatype, t.raw, t.name);
  return t.datatype === 'BYTES' ? values.map((b) => (b as Buffer).toString('utf8')) : values;
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

function floatToHalf(v: number): number {
  const f32 = new Float32Array([v]);
  const x = new Uint32Array(f32.buffer)[0]!;
  const sign = (x >> 16) & 0x8000;
  const exp = ((x >> 23) & 0xff) - 127 + 15;
  const mant = x & 0x7fffff;
  if (exp <= 0) return sign;
  if (exp >= 31) return sign | 0x7c00;
  return sign | (exp << 10) | (mant >> 13);
}
