// The type language of cell-node variables: the plain types (int, float, str, bool, list,
// dict, bytes, any) plus the ones models take — `ndarray[dtype,d0,d1,…]` (-1: any length),
// `dataframe` and `list[T]`. A type is stored as its canonical string (what the CLI takes),
// so the Python worker, the spec store and every contract generator read one form; this
// module parses it once into a tree the validators and generators walk.

export const SCALAR_TYPES = ['int', 'float', 'str', 'bool', 'list', 'dict', 'bytes', 'any'] as const;
export type ScalarType = (typeof SCALAR_TYPES)[number];

/** numpy dtypes a tensor may declare, with their size in bytes (little-endian on the wire). */
export const DTYPES = {
  bool: 1, int8: 1, int16: 2, int32: 4, int64: 8, uint8: 1, uint16: 2, uint32: 4, uint64: 8,
  float16: 2, float32: 4, float64: 8,
} as const;
export type Dtype = keyof typeof DTYPES;

export type TypeExpr =
  | { kind: 'scalar'; name: ScalarType }
  | { kind: 'list'; items: TypeExpr }
  /** dtype null: any dtype; shape null: any rank and size; -1 in a shape: any length on that axis. */
  | { kind: 'ndarray'; dtype: Dtype | null; shape: number[] | null }
  | { kind: 'dataframe' };

export class TypeSyntaxError extends Error {}

const MAX_RANK = 32;
const MAX_DEPTH = 8;

/**
 * Parses `int`, `list[float]`, `ndarray[float32,-1,3]`, `ndarray[float32]`, `ndarray`,
 * `dataframe` (spaces ignored). Throws TypeSyntaxError saying what is wrong.
 */
export function parseType(text: string): TypeExpr {
  const s = text.replace(/\s+/g, '');
  return parseAt(s, 0, text);
}

function parseAt(s: string, depth: number, original: string): TypeExpr {
  if (depth > MAX_DEPTH) throw new TypeSyntaxError(`"${original}" nests types more than ${MAX_DEPTH} deep`);
  const open = s.indexOf('[');
  const head = open === -1 ? s : s.slice(0, open);
  if (open !== -1 && !s.endsWith(']')) throw new TypeSyntaxError(`"${original}": a "[" is not closed`);
  const arg = open === -1 ? null : s.slice(open + 1, -1);
  if (head === 'ndarray') {
    if (arg === null || arg === '') return { kind: 'ndarray', dtype: null, shape: null };
    const parts = arg.split(',');
    const dt = parts[0]!;
    if (dt !== 'any' && !Object.hasOwn(DTYPES, dt)) {
      throw new TypeSyntaxError(`"${original}": dtype "${dt}" is not one of any, ${Object.keys(DTYPES).join(', ')}`);
    }
    const dims = parts.slice(1);
    if (dims.length > MAX_RANK) throw new TypeSyntaxError(`"${original}": at most ${MAX_RANK} dimensions`);
    const shape = dims.map((d) => {
      if (!/^(-1|0|[1-9][0-9]{0,9})$/.test(d)) throw new TypeSyntaxError(`"${original}": dimension "${d}" must be -1 (any) or a length ≥ 0`);
      return Number(d);
    });
    return { kind: 'ndarray', dtype: dt === 'any' ? null : (dt as Dtype), shape: dims.length === 0 ? null : shape };
  }
  if (head === 'list' && arg !== null) {
    if (arg === '') throw new TypeSyntaxError(`"${original}": list[] needs an item type, e.g. list[float]`);
    return { kind: 'list', items: parseAt(arg, depth + 1, original) };
  }
  if (arg !== null) throw new TypeSyntaxError(`"${original}": only list[…] and ndarray[…] take parameters`);
  if (head === 'dataframe') return { kind: 'dataframe' };
  if ((SCALAR_TYPES as readonly string[]).includes(head)) return { kind: 'scalar', name: head as ScalarType };
  throw new TypeSyntaxError(`"${original}" is not a type; one of ${SCALAR_TYPES.join(', ')}, list[T], ndarray[dtype,shape…], dataframe`);
}

/** The canonical string of a type (what is stored and shown). */
export function formatType(t: TypeExpr): string {
  switch (t.kind) {
    case 'scalar': return t.name;
    case 'dataframe': return 'dataframe';
    case 'list': return `list[${formatType(t.items)}]`;
    case 'ndarray':
      if (t.dtype === null && t.shape === null) return 'ndarray';
      return `ndarray[${[t.dtype ?? 'any', ...(t.shape ?? [])].join(',')}]`;
  }
}

/** Whether values of `b` are always acceptable where `a` is declared, and the other way round. */
export function sameType(a: string, b: string): boolean {
  return formatType(parseType(a)) === formatType(parseType(b));
}

/** Whether a type needs numpy or pandas on the Python side (the worker imports them only then). */
export function needsNumpy(t: TypeExpr): boolean {
  return t.kind === 'ndarray' || t.kind === 'dataframe' || (t.kind === 'list' && needsNumpy(t.items));
}
