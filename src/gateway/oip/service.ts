// The Open Inference Protocol (KServe v2 / Triton) over every cell node, on Berth's one port:
//   REST  GET /v2/health/live, /v2/health/ready, /v2/models/{name}, /v2/models/{name}/ready,
//         POST /v2/models/{name}/infer (JSON tensors, and the binary-data extension)
//   gRPC  inference.GRPCInferenceService (ServerLive, ServerReady, ServerMetadata, ModelReady,
//         ModelMetadata, ModelInfer), served straight on the front door's HTTP/2 stream.
// A model is a cell node, named by its id or its name. Everything needs a token; a model's
// metadata, readiness and calls take the caller's folder from x-folder-id or from a token of
// one folder, and pass the same checks as execute (pipeline.node). Infer runs through the one
// call pipeline (Gateway.execute) with tensors as raw bytes to and from the worker.
import type { IncomingHttpHeaders } from 'node:http2';
import type { CallerStream } from '../h2/server.js';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type protobuf from 'protobufjs';
import { BerthError, asBerthError } from '../../core/errors.js';
import type { Config } from '../../core/config.js';
import type { TokenRecord, Variable } from '../../core/types.js';
import type { Gateway } from '../execute.js';
import type { NodeRoute, RoutingTable } from '../routing-table.js';
import { discardUpload, readBody, sendError } from '../http-util.js';
import { callerFolder } from '../grpc/folder.js';
import { protos, toServiceError } from '../grpc/node-service.js';
import { serveUnary, isGrpcRequest } from '../grpc/h2-unary.js';
import { inputValue, jsonData, mappingOf, outputTensor, flatten, tensorMetadata, type InTensor } from './tensors.js';

const GRPC_SERVICE = 'inference.GRPCInferenceService';
const MODEL_RE = /^\/v2\/models\/([^/]+)(\/ready|\/infer)?$/;
const FRAMING_BYTES = 64 * 1024;

type Headers = IncomingHttpHeaders;

interface Answer { outputs: Array<{ name: string; datatype: string; shape: number[]; raw: Buffer }>; model: NodeRoute }

export class InferenceProtocol {
  private readonly grpcMethods = new Map<string, { req: protobuf.Type; res: protobuf.Type; run: (r: Record<string, unknown>, h: Headers) => Promise<Record<string, unknown>> }>();

  constructor(
    private readonly config: Config,
    private readonly routes: RoutingTable,
    private readonly gateway: Pick<Gateway, 'inFlight' | 'draining' | 'execute' | 'pipeline'>,
  ) {
    const { root } = protos();
    const service = root.lookupService(GRPC_SERVICE);
    const runs: Record<string, (r: Record<string, unknown>, h: Headers) => Promise<Record<string, unknown>>> = {
      ServerLive: async (_r, h) => { this.token(h); return { live: true }; },
      ServerReady: async (_r, h) => { this.token(h); return { ready: !this.gateway.draining }; },
      ServerMetadata: async (_r, h) => { this.token(h); return { name: 'berth', version: '0.1.0', extensions: [] }; },
      ModelReady: async (r, h) => ({ ready: this.model(h, String(r.name ?? '')).dispatcherReady }),
      ModelMetadata: async (r, h) => this.metadata(this.model(h, String(r.name ?? '')).route),
      ModelInfer: async (r, h) => this.grpcInfer(r, h),
    };
    for (const m of service.methodsArray) {
      m.resolve();
      this.grpcMethods.set(`/${GRPC_SERVICE}/${m.name}`, { req: m.resolvedRequestType!, res: m.resolvedResponseType!, run: runs[m.name]! });
    }
  }

  static handles(url: string | undefined): boolean {
    return url !== undefined && url.startsWith('/v2/');
  }

  // ---- the checks every request makes ----

  private token(h: Headers): TokenRecord {
    return this.gateway.pipeline.authenticate(h.authorization);
  }

  /** The model a caller names (id, or name among the nodes its folder may call), checked as execute is. */
  private model(h: Headers, name: string): { route: NodeRoute; token: TokenRecord; folder: string; dispatcherReady: boolean } {
    const token = this.token(h);
    const folder = callerFolder(token, undefined, h['x-folder-id']);
    let route = this.routes.route(name);
    if (!route) {
      const named = [...this.routes.list()].filter((r) => r.spec.name === name && r.aclFolders.has(folder));
      if (named.length > 1) throw new BerthError('INVALID_ARGUMENT', `several nodes your folder may call are named ${name}: name the model by node id`, { field: 'model_name', nodes: named.map((r) => r.id) });
      route = named[0];
    }
    if (!route) throw new BerthError('NODE_NOT_FOUND', `model ${name} not found`, { nodeId: name, field: 'model_name' });
    if (route.spec.kind !== 'cell') throw new BerthError('INVALID_ARGUMENT', `node ${route.id} is an image node: the inference protocol serves cell nodes`, { field: 'model_name', nodeKind: 'image' });
    this.gateway.pipeline.node(token, folder, route.id);
    return { route, token, folder, dispatcherReady: this.routes.healthyCount(route.id) > 0 };
  }

  private metadata(route: NodeRoute): Record<string, unknown> {
    if (route.spec.kind !== 'cell') throw new BerthError('INTERNAL', 'not a cell node');
    return {
      name: route.spec.name, versions: ['1'], platform: 'berth-cell',
      inputs: route.spec.inputs.map(tensorMetadata), outputs: route.spec.outputs.map(tensorMetadata),
    };
  }

  /** One inference, whichever protocol brought it: tensors in, tensors (raw) out. */
  private async infer(h: Headers, name: string, tensors: InTensor[], wanted: string[] | null, protocol: 'rest' | 'grpc'): Promise<Answer> {
    const { route, token, folder } = this.model(h, name);
    const spec = route.spec;
    if (spec.kind !== 'cell') throw new BerthError('INTERNAL', 'not a cell node');
    const byName = new Map<string, Variable>(spec.inputs.map((v) => [v.name, v]));
    const input: Record<string, unknown> = {};
    for (const t of tensors) {
      if (typeof t.name !== 'string') throw new BerthError('INVALID_ARGUMENT', 'every input tensor needs a name', { field: 'inputs' });
      const v = byName.get(t.name);
      if (!v) throw new BerthError('INVALID_INPUT', `unknown input tensor "${t.name}"; model ${spec.name} takes ${spec.inputs.map((x) => x.name).join(', ')}`, { variable: t.name, reason: 'unknown', expected: spec.inputs.map((x) => x.name) });
      if (Object.hasOwn(input, t.name)) throw new BerthError('INVALID_INPUT', `input tensor "${t.name}" is given twice`, { variable: t.name });
      input[t.name] = inputValue(v, mappingOf(v), t);
    }
    if (wanted) for (const w of wanted) if (!spec.outputs.some((o) => o.name === w)) throw new BerthError('INVALID_ARGUMENT', `model ${spec.name} has no output "${w}"`, { field: 'outputs', name: w });
    const target = { nodeId: route.id };
    const count = this.gateway.pipeline.count(target);
    let status = 200;
    let grpcStatus = '0';
    this.gateway.inFlight++;
    try {
      const payload = Buffer.from(JSON.stringify({ folder_id: folder, input, ndarray_format: 'base64' }));
      const result = await this.gateway.execute(token, folder, target, input, payload, h, count);
      if (!result.ok) throw result.error;
      const output = (JSON.parse(result.body.toString('utf8')) as { output: Record<string, unknown> }).output;
      const outs = spec.outputs.filter((o) => !wanted || wanted.includes(o.name)).map((o) => outputTensor(o, mappingOf(o), output[o.name]));
      return { outputs: outs, model: route };
    } catch (err) {
      const e = asBerthError(err, 'oip');
      status = e.httpStatus;
      grpcStatus = String(e.grpcStatus);
      throw e;
    } finally {
      this.gateway.inFlight--;
      if (protocol === 'grpc') count.end(undefined, grpcStatus);
      else count.end(status);
    }
  }

  // ---- REST ----

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = req.url ?? '';
    const path = url.split('?')[0]!;
    try {
      if (this.gateway.draining) throw new BerthError('SHUTTING_DOWN', 'Berth is shutting down', {}, { 'retry-after': '5' });
      if (path === '/v2/health/live' || path === '/v2/health/ready' || path === '/v2') {
        allow(req, 'GET');
        this.token(req.headers);
        if (path === '/v2') return json(res, 200, { name: 'berth', version: '0.1.0', extensions: ['binary_tensor_data'] });
        return json(res, 200, path.endsWith('live') ? { live: true } : { ready: true });
      }
      const m = MODEL_RE.exec(path);
      if (!m) throw new BerthError('ROUTE_NOT_FOUND', `no inference protocol route ${req.method} ${path}`, { path });
      let name: string;
      try { name = decodeURIComponent(m[1]!); } catch { throw new BerthError('INVALID_PATH', 'the model name is not valid percent-encoded UTF-8', { field: 'path' }); }
      if (m[2] === '/ready') {
        allow(req, 'GET');
        const ready = this.model(req.headers, name).dispatcherReady;
        if (!ready) throw new BerthError('NODE_UNAVAILABLE', `model ${name} has no Healthy instance yet`, { nodeId: name, ready: false }, { 'retry-after': '1' });
        return json(res, 200, { name, ready: true });
      }
      if (m[2] === undefined) {
        allow(req, 'GET');
        return json(res, 200, this.metadata(this.model(req.headers, name).route));
      }
      allow(req, 'POST');
      this.token(req.headers); // 401 before the body is read
      const body = await readBody(req, this.config.maxRequestBytes);
      const { request, binary } = splitBinary(body, req.headers['inference-header-content-length']);
      const { tensors, wanted, binaryOut } = parseInferRequest(request, binary);
      const answer = await this.infer(req.headers, name, tensors, wanted, 'rest');
      return sendInferAnswer(res, answer, request.id, binaryOut);
    } catch (err) {
      if (err instanceof BerthError && err.code === 'PAYLOAD_TOO_LARGE') discardUpload(req);
      const e = asBerthError(err, 'oip');
      // the protocol's error body is {"error": "…"}; Berth's fields ride along
      sendError(res, e, { error: e.message });
    }
  }

  // ---- gRPC ----

  handleStream(stream: CallerStream, headers: Headers): boolean {
    const method = this.grpcMethods.get(String(headers[':path']));
    if (!method || !isGrpcRequest(headers)) return false;
    serveUnary(stream, headers, {
      decode: (b) => { try { return method.req.decode(b); } catch (err) { return new BerthError('INVALID_ARGUMENT', `the request is not a valid ${method.req.name}: ${(err as Error).message}`, { field: 'request' }); } },
      handle: async (request, h) => {
        if (request instanceof BerthError) throw request;
        if (this.gateway.draining) throw new BerthError('SHUTTING_DOWN', 'Berth is shutting down', {}, { 'retry-after': '5' });
        const r = method.req.toObject(request as protobuf.Message, { longs: Number, defaults: false, arrays: true, oneofs: true }) as Record<string, unknown>;
        const out = await method.run(r, h);
        return Buffer.from(method.res.encode(method.res.fromObject(out)).finish());
      },
      toStatus: (err) => toServiceError(err),
    }, this.config.maxRequestBytes + FRAMING_BYTES, this.gateway.pipeline.deadlines);
    return true;
  }

  private async grpcInfer(r: Record<string, unknown>, h: Headers): Promise<Record<string, unknown>> {
    const inputs = (r.inputs ?? []) as Array<{ name: string; datatype: string; shape?: number[]; contents?: Record<string, unknown[]> }>;
    const raws = (r.raw_input_contents ?? []) as Buffer[];
    if (raws.length > 0 && raws.length !== inputs.length) {
      throw new BerthError('INVALID_ARGUMENT', `raw_input_contents has ${raws.length} entries for ${inputs.length} inputs: all or none`, { field: 'raw_input_contents' });
    }
    const tensors: InTensor[] = inputs.map((t, i) => ({
      name: t.name, datatype: t.datatype, shape: t.shape ?? [],
      ...(raws.length ? { raw: raws[i]! } : { values: contentsOf(t.datatype, t.contents ?? {}) }),
    }));
    const wanted = ((r.outputs ?? []) as Array<{ name: string }>).map((o) => o.name);
    const answer = await this.infer(h, String(r.model_name ?? ''), tensors, wanted.length ? wanted : null, 'grpc');
    return {
      model_name: answer.model.spec.name, model_version: '1', id: r.id ?? '',
      outputs: answer.outputs.map((o) => ({ name: o.name, datatype: o.datatype, shape: o.shape })),
      raw_output_contents: answer.outputs.map((o) => o.raw),
    };
  }
}

/** The typed contents field a datatype's values are in. */
function contentsOf(datatype: string, c: Record<string, unknown[]>): unknown[] {
  const field = ({
    BOOL: 'bool_contents', INT8: 'int_contents', INT16: 'int_contents', INT32: 'int_contents', INT64: 'int64_contents',
    UINT8: 'uint_contents', UINT16: 'uint_contents', UINT32: 'uint_contents', UINT64: 'uint64_contents',
    FP32: 'fp32_contents', FP64: 'fp64_contents', BYTES: 'bytes_contents',
  } as Record<string, string>)[datatype];
  if (!field) throw new BerthError('INVALID_ARGUMENT', `datatype ${datatype} travels in raw_input_contents only`, { field: 'raw_input_contents' });
  return c[field] ?? [];
}

function allow(req: IncomingMessage, method: string): void {
  if (req.method !== method) throw new BerthError('METHOD_NOT_ALLOWED', `${req.url} takes ${method}, got ${req.method}`, { method: req.method }, { allow: method });
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const b = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': b.length });
  res.end(b);
}

/** The binary-data extension: a JSON header of Inference-Header-Content-Length bytes, then raw tensors. */
function splitBinary(body: Buffer, headerLength: string | string[] | undefined): { request: Record<string, unknown>; binary: Buffer | null } {
  let jsonPart = body;
  let binary: Buffer | null = null;
  if (headerLength !== undefined) {
    const n = Number(Array.isArray(headerLength) ? headerLength[0] : headerLength);
    if (!Number.isInteger(n) || n < 0 || n > body.length) {
      throw new BerthError('INVALID_ARGUMENT', `Inference-Header-Content-Length must be the JSON header's length, at most the body's ${body.length} bytes`, { field: 'Inference-Header-Content-Length' });
    }
    jsonPart = body.subarray(0, n);
    binary = body.subarray(n);
  }
  let request: unknown;
  try { request = JSON.parse(jsonPart.toString('utf8')); } catch (err) {
    throw new BerthError('INVALID_JSON', `the inference request is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof request !== 'object' || request === null || Array.isArray(request)) throw new BerthError('INVALID_ARGUMENT', 'the inference request must be a JSON object {inputs: [...]}', { field: 'body' });
  return { request: request as Record<string, unknown>, binary };
}

function parseInferRequest(request: Record<string, unknown>, binary: Buffer | null): { tensors: InTensor[]; wanted: string[] | null; binaryOut: Set<string> | 'all' | null } {
  const inputs = request.inputs;
  if (!Array.isArray(inputs) || inputs.length === 0) throw new BerthError('INVALID_ARGUMENT', 'inputs must be a non-empty array of tensors {name, shape, datatype, data}', { field: 'inputs' });
  let offset = 0;
  const tensors = inputs.map((t, i): InTensor => {
    if (typeof t !== 'object' || t === null) throw new BerthError('INVALID_ARGUMENT', `inputs[${i}] must be a tensor {name, shape, datatype, data}`, { field: `inputs[${i}]` });
    const x = t as { name?: unknown; shape?: unknown; datatype?: unknown; data?: unknown; parameters?: { binary_data_size?: unknown } };
    if (typeof x.name !== 'string') throw new BerthError('INVALID_ARGUMENT', `inputs[${i}].name must be a string`, { field: `inputs[${i}].name` });
    if (typeof x.datatype !== 'string') throw new BerthError('INVALID_ARGUMENT', `inputs[${i}].datatype must be a string, e.g. FP32`, { field: `inputs[${i}].datatype`, variable: x.name });
    const shape = x.shape as number[];
    const size = x.parameters?.binary_data_size;
    if (size !== undefined) {
      if (!binary || typeof size !== 'number' || !Number.isInteger(size) || size < 0 || offset + size > binary.length) {
        throw new BerthError('INVALID_ARGUMENT', `inputs[${i}].parameters.binary_data_size must fit the binary data after the JSON header`, { field: `inputs[${i}].parameters.binary_data_size`, variable: x.name });
      }
      const raw = binary.subarray(offset, offset + size);
      offset += size;
      return { name: x.name, datatype: x.datatype, shape, raw };
    }
    if (x.data === undefined) throw new BerthError('INVALID_ARGUMENT', `inputs[${i}] needs data (or parameters.binary_data_size)`, { field: `inputs[${i}].data`, variable: x.name });
    const values = flatten(x.data, x.name);
    return { name: x.name, datatype: x.datatype, shape, values: x.datatype === 'BYTES' ? values.map((v) => (typeof v === 'string' ? Buffer.from(v, 'utf8') : v)) : values };
  });
  const outs = Array.isArray(request.outputs) ? (request.outputs as Array<{ name?: unknown; parameters?: { binary_data?: unknown } }>) : null;
  const wanted = outs ? outs.map((o) => String(o.name)) : null;
  const params = (request.parameters ?? {}) as { binary_data_output?: unknown };
  const binaryOut = params.binary_data_output === true ? 'all' as const
    : outs && outs.some((o) => o.parameters?.binary_data === true) ? new Set(outs.filter((o) => o.parameters?.binary_data === true).map((o) => String(o.name))) : null;
  return { tensors, wanted, binaryOut };
}

function sendInferAnswer(res: ServerResponse, a: Answer, id: unknown, binaryOut: Set<string> | 'all' | null): void {
  const parts: Buffer[] = [];
  const outputs = a.outputs.map((o) => {
    if (binaryOut === 'all' || binaryOut?.has(o.name)) {
      parts.push(o.raw);
      return { name: o.name, datatype: o.datatype, shape: o.shape, parameters: { binary_data_size: o.raw.length } };
    }
    return { name: o.name, datatype: o.datatype, shape: o.shape, data: jsonData(o) };
  });
  const head = Buffer.from(JSON.stringify({ model_name: a.model.spec.name, model_version: '1', ...(typeof id === 'string' ? { id } : {}), outputs }));
  if (parts.length === 0) {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': head.length });
    res.end(head);
    return;
  }
  const body = Buffer.concat([head, ...parts]);
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'inference-header-content-length': head.length, 'content-length': body.length });
  res.end(body);
}
