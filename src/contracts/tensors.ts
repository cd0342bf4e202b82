// A cell node's variables as Open Inference Protocol tensors (names, datatypes, shapes): what
// the model metadata says and the OpenAPI document shows. The gateway's conversions of values
// (gateway/oip/tensors.ts) follow the same mapping: an ndarray is a tensor of its dtype and
// shape; int, float, bool, str, bytes one-element INT64, FP64, BOOL, BYTES tensors;
// list[int|float|bool|str] a 1-D tensor; anything else a one-element BYTES tensor of JSON text.
import { parseType, type Dtype } from '../core/var-types.js';
import type { Variable } from '../core/types.js';

export const DATATYPE: Record<Dtype, string> = {
  bool: 'BOOL', int8: 'INT8', int16: 'INT16', int32: 'INT32', int64: 'INT64', uint8: 'UINT8', uint16: 'UINT16',
  uint32: 'UINT32', uint64: 'UINT64', float16: 'FP16', float32: 'FP32', float64: 'FP64',
};
export const DTYPE_OF: Record<string, Dtype> = Object.fromEntries(Object.entries(DATATYPE).map(([d, t]) => [t, d as Dtype]));

export type Mapping =
  | { kind: 'ndarray'; datatype: string; shape: number[]; dtype: Dtype | null }
  | { kind: 'scalar'; datatype: string; as: 'int' | 'float' | 'bool' | 'str' | 'bytes' }
  | { kind: 'list'; datatype: string; as: 'int' | 'float' | 'bool' | 'str' }
  | { kind: 'json'; datatype: 'BYTES' };

const SCALAR_DT = { int: 'INT64', float: 'FP64', bool: 'BOOL', str: 'BYTES', bytes: 'BYTES' } as const;

export function mappingOf(v: Variable): Mapping {
  const t = parseType(v.type);
  if (t.kind === 'ndarray') return { kind: 'ndarray', datatype: t.dtype ? DATATYPE[t.dtype] : 'FP64', shape: t.shape ?? [-1], dtype: t.dtype };
  if (t.kind === 'scalar' && t.name in SCALAR_DT) {
    const as = t.name as keyof typeof SCALAR_DT;
    return { kind: 'scalar', datatype: SCALAR_DT[as], as };
  }
  if (t.kind === 'list' && t.items.kind === 'scalar' && ['int', 'float', 'bool', 'str'].includes(t.items.name)) {
    const as = t.items.name as 'int' | 'float' | 'bool' | 'str';
    return { kind: 'list', datatype: SCALAR_DT[as], as };
  }
  return { kind: 'json', datatype: 'BYTES' };
}

export function tensorMetadata(v: Variable): { name: string; datatype: string; shape: number[] } {
  const m = mappingOf(v);
  return { name: v.name, datatype: m.datatype, shape: m.kind === 'ndarray' ? m.shape : m.kind === 'list' ? [-1] : [1] };
}

