// One cell node's typed gRPC contract: a .proto with a service berth.nodes.v1.<Name> whose
// Execute takes and returns messages with a field per declared variable. `berth node proto`
// prints it, GET /v1/nodes/{ref}/node.proto serves it, and the gateway serves the service
// itself (gateway/grpc/typed.ts) from the same text, so what callers compile is what runs.
//
// Types: int → int64, float → double, str → string, bool → bool, bytes → bytes,
// ndarray → <Name>Tensor {dtype, shape, data (raw little-endian bytes)}, declared in the
// node's own file so the file stands alone (one shared Tensor would collide across nodes),
// dict → google.protobuf.Struct, list/any/dataframe → google.protobuf.Value (JSON: records or
// split for a dataframe), list[T] → repeated T for scalar, dict and ndarray items (else Value).
// An input with a default is `optional` (scalars) or simply left unset (messages, repeated):
// unset means "use the default". Field numbers follow the declared order, from 1.
import { parseType, type TypeExpr } from '../core/var-types.js';
import type { Variable } from '../core/types.js';
import type { ContractSubject } from './openapi.js';

export const TYPED_PACKAGE = 'berth.nodes.v1';

/** How a variable's values are carried in a typed message field. */
export type FieldCodec =
  | { kind: 'scalar'; proto: 'int64' | 'double' | 'string' | 'bool' | 'bytes' }
  | { kind: 'tensor' }
  | { kind: 'struct' }
  | { kind: 'value' }
  | { kind: 'repeated'; item: FieldCodec };

export function codecOf(t: TypeExpr): FieldCodec {
  switch (t.kind) {
    case 'scalar':
      switch (t.name) {
        case 'int': return { kind: 'scalar', proto: 'int64' };
        case 'float': return { kind: 'scalar', proto: 'double' };
        case 'str': return { kind: 'scalar', proto: 'string' };
        case 'bool': return { kind: 'scalar', proto: 'bool' };
        case 'bytes': return { kind: 'scalar', proto: 'bytes' };
        case 'dict': return { kind: 'struct' };
        default: return { kind: 'value' };
      }
    case 'ndarray': return { kind: 'tensor' };
    case 'dataframe': return { kind: 'value' };
    case 'list': {
      const item = codecOf(t.items);
      return item.kind === 'scalar' || item.kind === 'tensor' || item.kind === 'struct' ? { kind: 'repeated', item } : { kind: 'value' };
    }
  }
}

function protoTypeOf(c: FieldCodec, n: string): string {
  switch (c.kind) {
    case 'scalar': return c.proto;
    case 'tensor': return `${n}Tensor`;
    case 'struct': return 'google.protobuf.Struct';
    case 'value': return 'google.protobuf.Value';
    case 'repeated': return `repeated ${protoTypeOf(c.item, n)}`;
  }
}

/** The service name a node is served under: its name in PascalCase (ASCII), or Node_<id> when nothing is left. */
export function serviceNameOf(name: string, id: string): string {
  const words = name.split(/[^A-Za-z0-9]+/).filter(Boolean);
  let s = words.map((w) => w[0]!.toUpperCase() + w.slice(1)).join('');
  if (!/^[A-Za-z]/.test(s)) s = s ? `N${s}` : `Node_${id}`;
  return s;
}

export interface TypedContract {
  /** berth.nodes.v1.<Name> */
  service: string;
  /** The file's name, for imports and reflection: berth/nodes/v1/<name>.proto */
  file: string;
  text: string;
  /** Per input and output variable: its field and how it is carried. */
  inputs: Array<{ v: Variable; codec: FieldCodec; optional: boolean }>;
  outputs: Array<{ v: Variable; codec: FieldCodec }>;
}

function comment(v: Variable): string {
  const d = v.description ? ` ${v.description.replace(/\s+/g, ' ')}` : '';
  const dflt = Object.hasOwn(v, 'default') ? ` (default ${JSON.stringify(v.default)}; unset = default)` : '';
  return `  // ${v.type}${d}${dflt}\n`;
}

/** The typed contract of a cell node. `serviceName` overrides the name (the gateway de-duplicates). */
export function nodeProto(s: ContractSubject, serviceName = serviceNameOf(s.name, s.ref)): TypedContract {
  const inputs = s.inputs.map((v) => {
    const codec = codecOf(parseType(v.type));
    return { v, codec, optional: Object.hasOwn(v, 'default') };
  });
  const outputs = s.outputs.map((v) => ({ v, codec: codecOf(parseType(v.type)) }));
  const n = serviceName;
  const usesTensor = (c: FieldCodec): boolean => c.kind === 'tensor' || (c.kind === 'repeated' && usesTensor(c.item));
  const tensors = [...inputs, ...outputs].some((x) => usesTensor(x.codec));
  const field = (x: { v: Variable; codec: FieldCodec; optional?: boolean }, i: number): string =>
    `${comment(x.v)}  ${x.optional && x.codec.kind === 'scalar' ? 'optional ' : ''}${protoTypeOf(x.codec, n)} ${x.v.name} = ${i + 1};\n`;
  const text = `// The typed gRPC contract of Berth ${s.kind === 'node' ? `node ${s.ref}` : `alias ${s.ref}`} ("${s.name.replace(/"/g, "'")}").
// Call ${TYPED_PACKAGE}.${n}/Execute on Berth's port with "authorization: Bearer <token>";
// folder_id (or the x-folder-id metadata, or a token of one folder) names the folder you call from.
syntax = "proto3";

package ${TYPED_PACKAGE};

import "google/protobuf/struct.proto";
${tensors ? `
// A tensor: its numpy dtype (float32, int64, …), its shape, and its values' raw
// little-endian bytes in row-major order (numpy's tobytes()).
message ${n}Tensor {
  string dtype = 1;
  repeated int64 shape = 2;
  bytes data = 3;
}
` : ''}
message ${n}Input {
${inputs.map(field).join('')}}

message ${n}Output {
${outputs.map(field).join('')}}

message ${n}Request {
  string folder_id = 1;
  ${n}Input input = 2;
}

message ${n}Response {
  ${n}Output output = 1;
}

service ${n} {
  rpc Execute(${n}Request) returns (${n}Response);
}
`;
  return { service: `${TYPED_PACKAGE}.${n}`, file: `berth/nodes/v1/${n.toLowerCase()}.proto`, text, inputs, outputs };
}
