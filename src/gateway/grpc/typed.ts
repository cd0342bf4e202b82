// The typed gRPC service of every cell node: berth.nodes.v1.<Name>/Execute, with a message
// field per declared variable (contracts/proto.ts writes the .proto; the same text is parsed
// here, so what `berth node proto` prints is what is served). Calls are served straight on
// the front door's HTTP/2 stream (h2-unary.ts) and run through the one call pipeline
// (Gateway.execute): the typed message becomes the worker's JSON frame in one step, tensors
// as {dtype, shape, data} raw bytes both ways (ndarray_format base64), with no second parse.
//
// The services follow the routing snapshots: a node's file is parsed once per spec, the
// path table is rebuilt when the snapshot version changes. Server reflection lists, per
// caller, only the node services that caller may call (gateway/grpc/node-service.ts asks
// `descriptorsFor`), so one tenant never learns another's node names.
import type { IncomingHttpHeaders } from 'node:http2';
import type { CallerStream } from '../h2/server.js';
import protobuf from 'protobufjs';
import { Auth } from '../../core/auth.js';
import { BerthError, asBerthError } from '../../core/errors.js';
import type { TokenRecord } from '../../core/types.js';
import { nodeProto, serviceNameOf, TYPED_PACKAGE, type FieldCodec, type TypedContract } from '../../contracts/proto.js';
import type { Gateway } from '../execute.js';
import type { NodeRoute, RoutingTable } from '../routing-table.js';
import { loadProtos, PROTO_DIR } from './protos.js';
import { serveUnary, isGrpcRequest } from './h2-unary.js';
import { jsonToStruct, jsonToValue, structToJson, valueToJson, StructConversionError, type StructObject, type ValueObject } from './struct.js';
import { toServiceError } from './node-service.js';
import { join } from 'node:path';
import { callerFolder } from './folder.js';

interface Entry {
  nodeId: string;
  spec: NodeRoute['spec'];
  contract: TypedContract;
  request: protobuf.Type;
  response: protobuf.Type;
  /** The node's file as a FileDescriptorProto, for reflection. */
  descriptor: Buffer;
}

const PREFIX = `/${TYPED_PACKAGE}.`;
const FRAMING_BYTES = 64 * 1024;

export class TypedServices {
  private readonly parsed = new Map<string, Entry>();
  private byPath = new Map<string, Entry>();
  private version = -1;

  constructor(
    private readonly routes: RoutingTable,
    private readonly gateway: Pick<Gateway, 'inFlight' | 'draining' | 'execute' | 'pipeline'>,
    private readonly maxMessageBytes: number,
  ) {}

  /** Serves /berth.nodes.v1.*; false for any other path. */
  handleStream(stream: CallerStream, headers: IncomingHttpHeaders): boolean {
    const path = String(headers[':path']);
    if (!path.startsWith(PREFIX) || !isGrpcRequest(headers)) return false;
    this.refresh();
    const entry = this.byPath.get(path);
    serveUnary(stream, headers, {
      decode: (b) => {
        if (!entry) return null;
        try { return entry.request.decode(b); } catch (err) { return new BerthError('INVALID_ARGUMENT', `the request is not a valid ${entry.request.name}: ${(err as Error).message}`, { field: 'request' }); }
      },
      handle: async (request, h) => {
        if (!entry) throw new BerthError('ROUTE_NOT_FOUND', `no typed service method ${path}: see \`berth node proto NODE\` for a node's service`, { path });
        if (request instanceof BerthError) throw request;
        return this.call(entry, request as protobuf.Message, h);
      },
      toStatus: (err) => toServiceError(err),
    }, this.maxMessageBytes + FRAMING_BYTES, this.gateway.pipeline.deadlines);
    return true;
  }

  private async call(entry: Entry, request: protobuf.Message, headers: IncomingHttpHeaders): Promise<Buffer> {
    const target = { nodeId: entry.nodeId };
    const count = this.gateway.pipeline.count(target);
    try {
      if (this.gateway.draining) throw new BerthError('SHUTTING_DOWN', 'Berth is shutting down', {}, { 'retry-after': '5' });
      const token = this.gateway.pipeline.authenticate(headers.authorization);
      const r = entry.request.toObject(request, { longs: Number, defaults: false, arrays: false }) as { folder_id?: string; input?: Record<string, unknown> };
      const folder = callerFolder(token, r.folder_id, headers['x-folder-id']);
      const input = toJsonInput(entry.contract, r.input ?? {});
      // the worker's frame, made once; tensors come back as raw bytes, as the message carries them
      const payload = Buffer.from(JSON.stringify({ folder_id: folder, input, ndarray_format: 'base64' }));
      this.gateway.inFlight++;
      let result;
      try {
        result = await this.gateway.execute(token, folder, target, input, payload, headers, count);
      } finally {
        this.gateway.inFlight--;
      }
      if (!result.ok) throw result.error;
      const answer = JSON.parse(result.body.toString('utf8')) as { output?: Record<string, unknown> };
      const out = Buffer.from(entry.response.encode(entry.response.fromObject({ output: toTypedOutput(entry.contract, answer.output ?? {}) })).finish());
      count.end(undefined, '0');
      return out;
    } catch (err) {
      const e = asBerthError(err, 'grpc-typed');
      count.end(undefined, String(e.grpcStatus));
      throw e;
    }
  }

  /** Brings the path table up to the applied snapshot; parses only nodes whose spec changed. */
  private refresh(): void {
    if (this.routes.appliedVersion === this.version) return;
    this.version = this.routes.appliedVersion;
    const cells = [...this.routes.list()].filter((r) => r.spec.kind === 'cell');
    const names = new Map<string, number>();
    for (const r of cells) { const n = serviceNameOf(r.spec.name, r.id); names.set(n, (names.get(n) ?? 0) + 1); }
    const byPath = new Map<string, Entry>();
    const live = new Set<string>();
    for (const r of cells) {
      live.add(r.id);
      const base = serviceNameOf(r.spec.name, r.id);
      // two nodes of one name (in different folders, say) are told apart by id
      const name = names.get(base)! > 1 ? `${base}_${r.id}` : base;
      let e = this.parsed.get(r.id);
      if (!e || e.spec !== r.spec || e.contract.service !== `${TYPED_PACKAGE}.${name}`) {
        try {
          e = parseEntry(r, name);
        } catch {
          continue; // a contract protobufjs cannot take: the node keeps its REST and NodeService calls
        }
        this.parsed.set(r.id, e);
      }
      byPath.set(`/${e.contract.service}/Execute`, e);
    }
    for (const id of this.parsed.keys()) if (!live.has(id)) this.parsed.delete(id);
    this.byPath = byPath;
  }

  /** The node services' files a caller may see in reflection: nodes it may call from some folder. */
  descriptorsFor(token: TokenRecord | null): { key: string; files: Buffer[] } {
    this.refresh();
    if (!token) return { key: `${this.version}:-`, files: [] };
    const visible = [...this.byPath.values()].filter((e) => {
      const route = this.routes.route(e.nodeId);
      return route !== undefined && [...route.aclFolders].some((f) => Auth.mayExecute(token, f));
    });
    return { key: `${this.version}:${visible.map((e) => e.nodeId).join(',')}`, files: visible.map((e) => e.descriptor) };
  }
}

function parseEntry(r: NodeRoute, name: string): Entry {
  if (r.spec.kind !== 'cell') throw new Error('not a cell node');
  const contract = nodeProto({ kind: 'node', ref: r.id, name: r.spec.name, description: r.spec.description, folderId: r.spec.folderId, inputs: r.spec.inputs, outputs: r.spec.outputs }, name);
  const { root, descriptors } = loadProtos([{ name: contract.file, path: join(PROTO_DIR, contract.file), source: contract.text }]);
  return {
    nodeId: r.id, spec: r.spec, contract,
    request: root.lookupType(`${contract.service}Request`),
    response: root.lookupType(`${contract.service}Response`),
    descriptor: descriptors[descriptors.length - 1]!,
  };
}

// ---- typed message <-> the worker's JSON ----

function fieldToJson(codec: FieldCodec, v: unknown, path: string): unknown {
  switch (codec.kind) {
    // bytes stay Buffers from the decoder; base64 (the worker's form) is made natively here
    case 'scalar': return Buffer.isBuffer(v) || v instanceof Uint8Array ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') : v;
    case 'tensor': {
      const t = v as { dtype?: string; shape?: number[]; data?: Uint8Array };
      const data = t.data ? Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).toString('base64') : '';
      return { dtype: t.dtype ?? '', shape: t.shape ?? [], data };
    }
    case 'struct': return structToJson(v as StructObject, path);
    case 'value': return valueToJson(v as ValueObject, path);
    case 'repeated': return (v as unknown[]).map((x, i) => fieldToJson(codec.item, x, `${path}[${i}]`));
  }
}

/** The typed input message (as a plain object) as the execute call's JSON input. */
function toJsonInput(c: TypedContract, msg: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  try {
    for (const { v, codec, optional } of c.inputs) {
      const present = Object.hasOwn(msg, v.name) && !(codec.kind === 'repeated' && (msg[v.name] as unknown[]).length === 0 && optional);
      if (!present) {
        if (optional) continue; // unset: the declared default applies
        // proto3 cannot tell an unset scalar from its zero value, nor an empty repeated field from an unset one
        if (codec.kind === 'scalar') { out[v.name] = ZERO[codec.proto]; continue; }
        if (codec.kind === 'repeated') { out[v.name] = []; continue; }
        continue; // a message field left unset: missing, as the validator will say
      }
      out[v.name] = fieldToJson(codec, msg[v.name], `input.${v.name}`);
    }
  } catch (err) {
    if (err instanceof StructConversionError) throw new BerthError('INVALID_ARGUMENT', err.message, { field: err.path });
    throw err;
  }
  return out;
}

const ZERO = { int64: 0, double: 0, string: '', bool: false, bytes: '' } as const;

function fieldFromJson(codec: FieldCodec, v: unknown, path: string): unknown {
  switch (codec.kind) {
    case 'scalar': return codec.proto === 'bytes' ? Buffer.from(String(v), 'base64') : v;
    case 'tensor': {
      const t = v as { dtype: string; shape: number[]; data: string };
      return { dtype: t.dtype, shape: t.shape, data: Buffer.from(t.data, 'base64') };
    }
    case 'struct': return jsonToStruct(v as Record<string, unknown>, path);
    case 'value': return jsonToValue(v, path);
    case 'repeated': return (v as unknown[]).map((x, i) => fieldFromJson(codec.item, x, `${path}[${i}]`));
  }
}

function toTypedOutput(c: TypedContract, output: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  try {
    for (const { v, codec } of c.outputs) if (output[v.name] !== undefined && output[v.name] !== null) out[v.name] = fieldFromJson(codec, output[v.name], `output.${v.name}`);
  } catch (err) {
    if (err instanceof StructConversionError) throw new BerthError('OUTPUT_NOT_SERIALIZABLE', `the output has no typed form: ${err.message}`, { field: err.path });
    throw err;
  }
  return out;
}
