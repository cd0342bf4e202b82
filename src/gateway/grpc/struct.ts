// google.protobuf.Struct <-> plain JSON, for the gRPC execute API.
//
// Works on protobufjs messages and plain objects with the .proto's own field names
// (keepCase): a Struct is {fields: {name: Value}}, a Value is {null_value | number_value |
// string_value | bool_value | struct_value | list_value}, a ListValue is {values: Value[]}.
// Numbers stay numbers (Struct numbers are doubles), lists and structs nest, null is
// null. Protobuf's own JSON mapping is followed: NaN and ±Infinity have no JSON form
// and are refused, a Value with no kind set reads as null. camelCase objects (what
// @grpc/proto-loader makes of the bundled well-known types) are read too.

/** The plain JSON a Struct maps to. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface ValueObject {
  null_value?: string | number | null;
  number_value?: number;
  string_value?: string;
  bool_value?: boolean;
  struct_value?: StructObject | null;
  list_value?: ListValueObject | null;
  /** protobufjs's oneof getter: the name of the field that is set. */
  kind?: string;
}
export interface StructObject { fields?: Record<string, ValueObject> | null }
export interface ListValueObject { values?: ValueObject[] | null }

/**
 * protobuf refuses messages nested deeper than 100 levels (protoc's default recursion
 * limit; protobufjs's util.recursionLimit too). Levels count messages: the request is
 * level 0, its input Struct level 1, each Value and each Struct or ListValue inside one
 * level more, so about 49 levels of JSON nesting fit. `level` below is that count.
 */
export const MAX_MESSAGE_DEPTH = 100;

function tooDeep(path: string): StructConversionError {
  return new StructConversionError(path, `nested too deeply: protobuf allows ${MAX_MESSAGE_DEPTH} levels of messages, about ${(MAX_MESSAGE_DEPTH >> 1) - 1} levels of JSON`);
}

/** A value that has no Struct or JSON form; `path` names where, e.g. `input.x[2].y`. */
export class StructConversionError extends Error {
  constructor(readonly path: string, readonly reason: string) {
    super(`${path}: ${reason}`);
    this.name = 'StructConversionError';
  }
}

const KINDS = ['null_value', 'number_value', 'string_value', 'bool_value', 'struct_value', 'list_value'] as const;
const CAMEL: Record<string, typeof KINDS[number]> = {
  nullValue: 'null_value', numberValue: 'number_value', stringValue: 'string_value',
  boolValue: 'bool_value', structValue: 'struct_value', listValue: 'list_value',
};
const has = (o: object, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k) && (o as Record<string, unknown>)[k] !== undefined && (o as Record<string, unknown>)[k] !== null;

/** Sets obj[key] as an own property even for "__proto__". */
function put(obj: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
  else obj[key] = value;
}

function child(path: string, key: string): string {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;
}

// ---- Struct -> JSON ----

/** A Struct at message level `level` (1: a request's input) as a JSON object. */
export function structToJson(struct: StructObject | null | undefined, path = 'struct', level = 1): Record<string, Json> {
  if (level > MAX_MESSAGE_DEPTH) throw tooDeep(path);
  const out: Record<string, Json> = {};
  const fields = struct?.fields;
  if (!fields) return out;
  for (const key of Object.keys(fields)) put(out, key, valueToJson(fields[key], child(path, key), level + 1));
  return out;
}

export function listToJson(list: ListValueObject | null | undefined, path = 'list', level = 1): Json[] {
  if (level > MAX_MESSAGE_DEPTH) throw tooDeep(path);
  const values = list?.values;
  if (!values) return [];
  const out = new Array<Json>(values.length);
  for (let i = 0; i < values.length; i++) out[i] = valueToJson(values[i], `${path}[${i}]`, level + 1);
  return out;
}

export function valueToJson(value: ValueObject | null | undefined, path = 'value', level = 1): Json {
  if (value === null || value === undefined) return null;
  if (level > MAX_MESSAGE_DEPTH) throw tooDeep(path);
  const v = value as Record<string, unknown>;
  let kind: string | undefined = typeof v.kind === 'string' ? v.kind : KINDS.find((k) => has(v, k));
  let x: unknown;
  if (kind !== undefined) {
    x = v[kind];
  } else {
    const camel = Object.keys(CAMEL).find((k) => has(v, k));
    if (camel !== undefined) { kind = CAMEL[camel]; x = v[camel]; }
  }
  if (kind !== undefined && kind in CAMEL) kind = CAMEL[kind];
  switch (kind) {
    case 'number_value':
      if (typeof x !== 'number' || !Number.isFinite(x)) throw new StructConversionError(path, `${String(x)} is not a JSON number (NaN and Infinity cannot be sent)`);
      return x;
    case 'string_value': return String(x ?? '');
    case 'bool_value': return Boolean(x);
    case 'struct_value': return structToJson(x as StructObject, path, level + 1);
    case 'list_value': return listToJson(x as ListValueObject, path, level + 1);
    default: return null; // null_value, or no kind set
  }
}

// ---- JSON -> Struct ----

/** A JSON object as a Struct at message level `level` (1: a response's output). */
export function jsonToStruct(obj: Record<string, unknown>, path = 'struct', level = 1): StructObject {
  if (level > MAX_MESSAGE_DEPTH) throw tooDeep(path);
  const fields: Record<string, ValueObject> = {};
  for (const key of Object.keys(obj)) put(fields, key, jsonToValue(obj[key], child(path, key), level + 1));
  return { fields };
}

export function jsonToValue(v: unknown, path = 'value', level = 1): ValueObject {
  if (level > MAX_MESSAGE_DEPTH) throw tooDeep(path);
  switch (typeof v) {
    case 'number':
      if (!Number.isFinite(v)) throw new StructConversionError(path, `${v} is not a JSON number`);
      return { number_value: v };
    case 'string': return { string_value: v };
    case 'boolean': return { bool_value: v };
    case 'bigint': return { number_value: Number(v) };
    case 'undefined': return { null_value: 0 };
    case 'object':
      if (v === null) return { null_value: 0 };
      if (Array.isArray(v)) {
        if (level + 1 > MAX_MESSAGE_DEPTH) throw tooDeep(path);
        const values = new Array<ValueObject>(v.length);
        for (let i = 0; i < v.length; i++) values[i] = jsonToValue(v[i], `${path}[${i}]`, level + 2);
        return { list_value: { values } };
      }
      return { struct_value: jsonToStruct(v as Record<string, unknown>, path, level + 1) };
    default:
      throw new StructConversionError(path, `a ${typeof v} has no JSON form`);
  }
}
