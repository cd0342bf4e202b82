// The gRPC form of the execute API: yandex.cloud.datasphere.v1.NodeService/Execute and
// /ExecuteAlias, compatible with the modelled platform, plus the standard server
// reflection and health services. Calls run through the one call pipeline (Gateway.execute),
// exactly as REST ones: the input Struct becomes the worker's frame in one step, nothing is
// parsed twice, and each call counts on the node and alias metrics under its grpc-status.
//
// Errors: the status code is the BerthError's gRPC status and the status message its
// message. Trailers carry, for every Berth error:
//   berth-error-code        the stable Berth code, e.g. INVALID_INPUT (ASCII)
//   berth-error-bin         the REST error body {code, message, details} as UTF-8 JSON
//   retry-after             when the REST answer would carry Retry-After
// and for a Python exception in the node's code (EXECUTION_ERROR, status INTERNAL):
//   grpc-status-details-bin google.rpc.Status {code, message, details: [Any{
//                           yandex.cloud.datasphere.v1.NodeExecutionErrorDetails}]}
// (then berth-error-bin is left out: the details already say it all).
// Trailers are bounded to stay under the 8 KiB of metadata that gRPC's C core (Python's
// grpcio) accepts by default: the status message is cut at 512 bytes, error_message at
// 1 KiB, the traceback keeps its last lines within 1.5 KiB. REST and the instance's log
// have them whole.
import type { IncomingHttpHeaders } from 'node:http2';
import type { CallerStream } from '../h2/server.js';
import * as grpc from '@grpc/grpc-js';
import type protobuf from 'protobufjs';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation, protoPath as HEALTH_PROTO } from 'grpc-health-check';
import { BerthError, asBerthError } from '../../core/errors.js';
import type { TokenRecord } from '../../core/types.js';
import { folderRequired, type Gateway } from '../execute.js';
import type { CallTarget } from '../pipeline.js';
import { structToJson, jsonToStruct, StructConversionError, type StructObject } from './struct.js';
import { loadProtos, type LoadedProtos } from './protos.js';
import { serveUnary, isGrpcRequest, type UnaryHandler } from './h2-unary.js';

export const SERVICE_NAME = 'yandex.cloud.datasphere.v1.NodeService';
export const ERROR_DETAILS_TYPE = 'yandex.cloud.datasphere.v1.NodeExecutionErrorDetails';
export const ERROR_DETAILS_TYPE_URL = `type.googleapis.com/${ERROR_DETAILS_TYPE}`;
const MiB = 1024 * 1024;
/** Room for gRPC's and protobuf's framing around a 16 MiB payload. */
const FRAMING_BYTES = 64 * 1024;


export interface GrpcDeps {
  /** The execute side of the gateway: the pipeline's first steps and the call itself. */
  gateway: Pick<Gateway, 'inFlight' | 'draining' | 'execute'> & { pipeline: Pick<Gateway['pipeline'], 'authenticate' | 'count' | 'deadlines'> };
  /** Where to listen; 127.0.0.1 by default. */
  host?: string;
  /** Port; 0 (any free port) by default. */
  port?: number;
  /** The largest request or response payload; 16 MiB by default (framing room is added). */
  maxMessageBytes?: number;
  /**
   * More files for server reflection, per caller (the typed node services it may call):
   * `key` names the set, so equal sets share one reflection index. Null token: not authenticated.
   */
  reflect?: (token: TokenRecord | null) => { key: string; files: Buffer[] };
}

type Method = 'Execute' | 'ExecuteAlias';

export interface GrpcServer {
  /** The grpc-js server's loopback port: NodeService, reflection, health. */
  port: number;
  /** The grpc-js server, e.g. for createConnectionInjector(). */
  server: grpc.Server;
  /**
   * Serves NodeService/Execute and /ExecuteAlias straight on a stream of your own HTTP/2
   * server (no proxy hop to `port`); returns false for anything else (reflection,
   * health, other paths, non-gRPC requests), which you then forward to `port`.
   */
  handleStream(stream: CallerStream, headers: IncomingHttpHeaders): boolean;
  /** Health: NOT_SERVING, then let running calls finish (up to graceMs, default 10 s), then stop. */
  close(graceMs?: number): Promise<void>;
}

// ---- the protos, loaded once ----

let protosCache: LoadedProtos | undefined;
/** Berth's protos plus the health service's (so reflection lists it too). */
export function protos(): LoadedProtos {
  protosCache ??= loadProtos([{ name: 'grpc/health/v1/health.proto', path: HEALTH_PROTO }]);
  return protosCache;
}
function errorTypes(): { status: protobuf.Type; details: protobuf.Type } {
  const { root } = protos();
  return { status: root.lookupType('google.rpc.Status'), details: root.lookupType(ERROR_DETAILS_TYPE) };
}

/** A request that protobufjs could not decode (too deep, malformed): answered INVALID_ARGUMENT, not grpc-js's INTERNAL. */
class UndecodableRequest {
  constructor(readonly type: string, readonly reason: string) {}
  error(): BerthError {
    return new BerthError('INVALID_ARGUMENT', `the request is not a valid ${this.type}: ${this.reason}`, { field: 'request' });
  }
}

function decodeRequest(type: protobuf.Type, b: Buffer): unknown {
  try { return type.decode(b); } catch (err) { return new UndecodableRequest(type.fullName.slice(1), (err as Error).message); }
}

/** A grpc-js service definition whose (de)serializers are protobufjs types; requests decode to messages. */
function serviceDefinition(root: protobuf.Root, name: string): grpc.ServiceDefinition {
  const service = root.lookupService(name);
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methodsArray) {
    m.resolve();
    const req = m.resolvedRequestType!;
    const res = m.resolvedResponseType!;
    def[m.name] = {
      path: `/${name}/${m.name}`, originalName: m.name,
      requestStream: Boolean(m.requestStream), responseStream: Boolean(m.responseStream),
      requestSerialize: (v: unknown) => Buffer.from(req.encode(v as protobuf.Message).finish()),
      requestDeserialize: (b: Buffer) => decodeRequest(req, b),
      responseSerialize: (v: unknown) => Buffer.from(res.encode(v as protobuf.Message).finish()),
      responseDeserialize: (b: Buffer) => res.decode(b),
    };
  }
  return def as grpc.ServiceDefinition;
}

/** google.rpc.Status carrying NodeExecutionErrorDetails, as sent in grpc-status-details-bin. */
export function encodeExecutionErrorStatus(code: number, message: string, details: { error_name?: unknown; error_message?: unknown; traceback?: unknown }): Buffer {
  const { status, details: detailsType } = errorTypes();
  const traceback = Array.isArray(details.traceback) ? details.traceback.map(String)
    : typeof details.traceback === 'string' ? details.traceback.split('\n') : [];
  const value = detailsType.encode(detailsType.fromObject({
    error_name: truncateBytes(String(details.error_name ?? ''), MAX_ERROR_NAME_BYTES),
    error_message: truncateBytes(String(details.error_message ?? ''), MAX_ERROR_MESSAGE_BYTES),
    traceback: tailLines(traceback, MAX_TRACEBACK_BYTES),
  })).finish();
  return Buffer.from(status.encode(status.fromObject({
    code, message: truncateBytes(message, MAX_STATUS_MESSAGE_BYTES), details: [{ type_url: ERROR_DETAILS_TYPE_URL, value }],
  })).finish());
}

/** Decodes grpc-status-details-bin; for clients and tests. */
export function decodeStatusDetails(bin: Buffer): { code: number; message: string; details: Array<{ type_url: string; value: Buffer; decoded?: Record<string, unknown> }> } {
  const { status, details: detailsType } = errorTypes();
  const s = status.toObject(status.decode(bin), { defaults: true, arrays: true, bytes: Buffer }) as { code: number; message: string; details: Array<{ type_url: string; value: Buffer }> };
  return {
    code: s.code, message: s.message,
    details: s.details.map((d) => ({
      type_url: d.type_url, value: d.value,
      decoded: d.type_url === ERROR_DETAILS_TYPE_URL ? detailsType.toObject(detailsType.decode(d.value), { defaults: true, arrays: true }) : undefined,
    })),
  };
}

// ---- errors ----

const MAX_STATUS_MESSAGE_BYTES = 512;
const MAX_ERROR_NAME_BYTES = 256;
const MAX_ERROR_MESSAGE_BYTES = 1024;
const MAX_TRACEBACK_BYTES = 1536;
const MAX_TRACEBACK_LINE_BYTES = 512;
const MAX_ERROR_JSON_BYTES = 2048;

/** Cuts `s` to at most `max` UTF-8 bytes, on a character boundary, marking the cut with "…". */
export function truncateBytes(s: string, max: number): string {
  if (Buffer.byteLength(s) <= max) return s;
  return Buffer.from(s).subarray(0, max - 3).toString('utf8').replace(/\uFFFD+$/, '') + '…';
}

/** The last lines of a traceback that fit in `max` bytes, with a first line saying how many were left out. */
export function tailLines(lines: string[], max: number): string[] {
  const kept: string[] = [];
  let size = 0;
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = truncateBytes(lines[i]!, MAX_TRACEBACK_LINE_BYTES);
    const n = Buffer.byteLength(line) + 2;
    if (size + n > max - 40) break;
    kept.unshift(line);
    size += n;
  }
  const omitted = lines.length - kept.length;
  if (omitted > 0) kept.unshift(`… ${omitted} earlier traceback line${omitted === 1 ? '' : 's'} left out (the REST answer has them all)`);
  return kept;
}

/** The status a gRPC caller gets for a failed call. */
export function toServiceError(err: unknown): { code: number; details: string; metadata: grpc.Metadata } {
  const e = asBerthError(err, 'grpc');
  const message = truncateBytes(e.message, MAX_STATUS_MESSAGE_BYTES);
  const metadata = new grpc.Metadata();
  metadata.set('berth-error-code', e.code);
  const retryAfter = e.headers['retry-after'];
  if (retryAfter) metadata.set('retry-after', retryAfter);
  const requestId = e.headers['x-request-id'];
  if (requestId) metadata.set('x-request-id', requestId);
  if (e.code === 'EXECUTION_ERROR') {
    metadata.set('grpc-status-details-bin', encodeExecutionErrorStatus(e.grpcStatus, e.message, e.details));
  } else {
    let json = JSON.stringify(e.toJSON());
    if (Buffer.byteLength(json) > MAX_ERROR_JSON_BYTES) json = JSON.stringify({ code: e.code, message, details: { truncated: true } });
    metadata.set('berth-error-bin', Buffer.from(json));
  }
  return { code: e.grpcStatus, details: message, metadata };
}

function requiredString(value: unknown, field: string): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new BerthError('INVALID_ARGUMENT', `${field} is required`, { field });
  }
  return value;
}

/** The call's text metadata as HTTP headers (for the gateway's alias routing, e.g. a sticky key). */
function metadataHeaders(metadata: grpc.Metadata): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const [k, v] of Object.entries(metadata.getMap())) if (typeof v === 'string') out[k] = v;
  return out;
}

function authorizationOf(metadata: grpc.Metadata): string | undefined {
  const v = metadata.get('authorization')[0];
  return typeof v === 'string' ? v : undefined;
}

// ---- the server ----

export async function startGrpcServer(deps: GrpcDeps): Promise<GrpcServer> {
  const { gateway } = deps;
  const maxMessageBytes = deps.maxMessageBytes ?? 16 * MiB;
  const { root, descriptors } = protos(); // fails at start, not on the first call, if proto/ is broken
  const service = serviceDefinition(root, SERVICE_NAME);

  /** One Execute or ExecuteAlias call, whichever way it came in: the output Struct, or a throw. */
  const serve = async (method: Method, request: unknown, authorization: string | undefined, headers: () => IncomingHttpHeaders): Promise<StructObject> => {
    if (request instanceof UndecodableRequest) throw request.error();
    const r = request as Record<string, unknown>;
    const target: CallTarget = method === 'Execute' ? { nodeId: requiredString(r.node_id, 'node_id') } : { alias: requiredString(r.alias_name, 'alias_name') };
    const count = gateway.pipeline.count(target);
    try {
      if (gateway.draining) throw new BerthError('SHUTTING_DOWN', 'Berth is shutting down', {}, { 'retry-after': '5' });
      const token = gateway.pipeline.authenticate(authorization);
      if (typeof r.folder_id !== 'string' || r.folder_id.length === 0) throw folderRequired();
      let input: Record<string, unknown>;
      try {
        input = structToJson(r.input as StructObject, 'input');
      } catch (err) {
        if (err instanceof StructConversionError) throw new BerthError('INVALID_ARGUMENT', err.message, { field: err.path });
        throw err;
      }
      // the worker's frame, made once: the gateway neither parses it again nor copies it
      const payload = Buffer.from(JSON.stringify({ folder_id: r.folder_id, input }));
      gateway.inFlight++;
      let result;
      try {
        result = await gateway.execute(token, r.folder_id, target, input, payload, headers(), count);
      } finally {
        gateway.inFlight--;
      }
      if (!result.ok) throw result.error;
      const parsed = JSON.parse(result.body.toString('utf8')) as { output?: Record<string, unknown> };
      let output: StructObject;
      try {
        output = jsonToStruct(parsed.output ?? {}, 'output');
      } catch (err) {
        if (err instanceof StructConversionError) throw new BerthError('OUTPUT_NOT_SERIALIZABLE', `the output has no google.protobuf.Struct form: ${err.message}`, { field: err.path });
        throw err;
      }
      count.end(undefined, '0');
      return output;
    } catch (err) {
      const e = asBerthError(err, 'grpc');
      count.end(undefined, String(e.grpcStatus));
      throw e;
    }
  };

  const unaryHandler = (method: Method): grpc.handleUnaryCall<unknown, unknown> => (call, callback) => {
    serve(method, call.request, authorizationOf(call.metadata), () => metadataHeaders(call.metadata))
      .then((output) => callback(null, { output }), (err) => callback(toServiceError(err)))
      .catch(() => { try { callback({ code: grpc.status.INTERNAL, details: 'internal error' }); } catch { /* answered already */ } });
  };
  const handlers: grpc.UntypedServiceImplementation = { Execute: unaryHandler('Execute'), ExecuteAlias: unaryHandler('ExecuteAlias') };

  // the same calls straight on an HTTP/2 stream of the front door, without grpc-js
  const fastPaths = new Map<string, UnaryHandler>();
  for (const method of ['Execute', 'ExecuteAlias'] as const) {
    const m = root.lookupService(SERVICE_NAME).methods[method]!;
    m.resolve();
    const req = m.resolvedRequestType!;
    const res = m.resolvedResponseType!;
    fastPaths.set(`/${SERVICE_NAME}/${method}`, {
      decode: (b) => decodeRequest(req, b),
      handle: async (request, headers) => {
        const output = await serve(method, request, typeof headers.authorization === 'string' ? headers.authorization : undefined, () => headers);
        return Buffer.from(res.encode({ output } as never).finish());
      },
      toStatus: (err) => toServiceError(err),
    });
  }
  const handleStream = (stream: CallerStream, headers: IncomingHttpHeaders): boolean => {
    const handler = fastPaths.get(String(headers[':path']));
    if (!handler || !isGrpcRequest(headers)) return false;
    serveUnary(stream, headers, handler, maxMessageBytes + FRAMING_BYTES, gateway.pipeline.deadlines);
    return true;
  };

  const server = new grpc.Server({
    'grpc.max_receive_message_length': maxMessageBytes + FRAMING_BYTES,
    'grpc.max_send_message_length': maxMessageBytes + FRAMING_BYTES,
  });
  server.addService(service, handlers);

  const health = new HealthImplementation({ '': 'SERVING', [SERVICE_NAME]: 'SERVING' });
  health.addToServer(server);
  // ReflectionService reads only each entry's fileDescriptorProtos: hand it protoc-style ones.
  // The index depends on the caller (the typed node services it may call), so the reflection
  // services are registered here and each stream is answered by the index for its token.
  const indexes = new Map<string, ReflectionService>();
  const indexFor = (authorization: string | undefined): ReflectionService => {
    let token: TokenRecord | null = null;
    try { token = authorization ? gateway.pipeline.authenticate(authorization) : null; } catch { token = null; }
    const extra = deps.reflect?.(token) ?? { key: '', files: [] };
    let index = indexes.get(extra.key);
    if (!index) {
      if (indexes.size >= 64) indexes.clear();
      index = new ReflectionService({ berth: { fileDescriptorProtos: [...descriptors, ...extra.files] } } as never);
      indexes.set(extra.key, index);
    }
    return index;
  };
  const reflectionDefs: grpc.ServiceDefinition[] = [];
  // v1, then v1alpha: the definitions ReflectionService registers, answered by our index per stream
  new ReflectionService({ berth: { fileDescriptorProtos: descriptors } } as never)
    .addToServer({ addService: (def: grpc.ServiceDefinition) => reflectionDefs.push(def) } as unknown as grpc.Server);
  reflectionDefs.forEach((def, i) => {
    const version = i === 0 ? 'v1' : 'v1Alpha';
    server.addService(def, {
      ServerReflectionInfo: (call: grpc.ServerDuplexStream<unknown, unknown>) => {
        const index = (indexFor(authorizationOf(call.metadata)) as unknown as Record<string, { handleServerReflectionRequest(m: unknown): unknown }>)[version]!;
        call.on('end', () => call.end());
        call.on('data', (m: unknown) => call.write(index.handleServerReflectionRequest(m)));
      },
    });
  });

  const host = deps.host ?? '127.0.0.1';
  const port = await new Promise<number>((resolvePort, reject) => {
    server.bindAsync(`${host}:${deps.port ?? 0}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolvePort(p)));
  });

  let closing: Promise<void> | null = null;
  const close = (graceMs = 10_000): Promise<void> => {
    closing ??= new Promise<void>((done) => {
      health.setStatus('', 'NOT_SERVING');
      health.setStatus(SERVICE_NAME, 'NOT_SERVING');
      const timer = setTimeout(() => { server.forceShutdown(); done(); }, graceMs);
      server.tryShutdown(() => { clearTimeout(timer); done(); });
    });
    return closing;
  };
  return { port, server, close, handleStream };
}
