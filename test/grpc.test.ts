// The gRPC execute API: yandex.cloud.datasphere.v1.NodeService on Berth's main port,
// called by a generic client that learns the service from server reflection, plus the
// health service, the error details, the limits, and the Struct <-> JSON converters.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { createServer as createHttp2Server, type Http2Server } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { protoPath as HEALTH_PROTO } from 'grpc-health-check';
import { join, dirname } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import descriptorExt from 'protobufjs/ext/descriptor/index.js';
import { startBerth, removeHome, makeCheckpoint, createNode, waitFor, type Berth } from './helpers.js';
import { LAB_CELLS, LAB_NODE } from './fixtures.js';
import { structToJson, jsonToStruct, valueToJson, MAX_MESSAGE_DEPTH, StructConversionError } from '../src/gateway/grpc/struct.js';
import { loadProtos, PROTO_DIR, jsonName } from '../src/gateway/grpc/protos.js';
import { startGrpcServer, decodeStatusDetails, truncateBytes, tailLines } from '../src/gateway/grpc/node-service.js';
import { BerthError } from '../src/core/errors.js';
import { DeadlineWheel } from '../src/gateway/deadlines.js';

const { FileDescriptorProto } = descriptorExt as unknown as { FileDescriptorProto: protobuf.Type };
const SERVICE = 'yandex.cloud.datasphere.v1.NodeService';
const MiB = 1024 * 1024;
/** Every call and stream in this file ends within this. */
const DEADLINE_MS = 30_000;
const CLIENT_OPTIONS = { 'grpc.max_receive_message_length': 64 * MiB, 'grpc.max_send_message_length': 64 * MiB };

// ---------------------------------------------------------------------------
// A generic client: knows only the standard reflection protocol, and learns every
// other message and service from the server.
// ---------------------------------------------------------------------------

const REFLECTION_PROTO = join(dirname(createRequire(import.meta.url).resolve('@grpc/reflection')), '../proto/grpc/reflection/v1/reflection.proto');

class ReflectionClient {
  private readonly client: any;
  constructor(target: string) {
    const pkg: any = grpc.loadPackageDefinition(protoLoader.loadSync(REFLECTION_PROTO, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true }));
    this.client = new pkg.grpc.reflection.v1.ServerReflection(target, grpc.credentials.createInsecure());
  }

  /** One request on a ServerReflectionInfo stream, bounded by the deadline. */
  private ask(request: Record<string, unknown>): Promise<any> {
    return new Promise((resolve, reject) => {
      const stream = this.client.ServerReflectionInfo({ deadline: Date.now() + DEADLINE_MS });
      let answered = false;
      stream.on('data', (msg: any) => { if (!answered) { answered = true; resolve(msg); stream.end(); } });
      stream.on('error', (err: Error) => { if (!answered) reject(err); });
      stream.on('end', () => { if (!answered) reject(new Error('reflection stream ended without an answer')); });
      stream.write({ host: '', ...request });
    });
  }

  async listServices(): Promise<string[]> {
    const r = await this.ask({ list_services: '*' });
    return r.list_services_response.service.map((s: any) => s.name);
  }

  /** The file declaring `symbol` and every file it depends on, decoded. */
  async filesFor(symbol: string): Promise<any[]> {
    const r = await this.ask({ file_containing_symbol: symbol });
    if (r.error_response) throw new Error(`reflection: ${r.error_response.error_message}`);
    return r.file_descriptor_response.file_descriptor_proto.map((b: Buffer) => FileDescriptorProto.toObject(FileDescriptorProto.decode(b), { defaults: false, arrays: true }));
  }

  /** A protobufjs root holding `symbols` and all they need, built from the server's descriptors. */
  async root(...symbols: string[]): Promise<protobuf.Root> {
    const files = new Map<string, any>();
    for (const s of symbols) for (const f of await this.filesFor(s)) files.set(f.name, f);
    const root = (protobuf.Root as any).fromDescriptor({ file: [...files.values()] }) as protobuf.Root;
    restoreMaps(root, [...files.values()]);
    return root;
  }

  close(): void { this.client.close(); }
}

/**
 * protobufjs's Root.fromDescriptor reads a map field (a repeated FooEntry with
 * map_entry set, as protoc writes it) as a plain repeated message: make it a map again.
 */
function restoreMaps(root: protobuf.Root, files: any[]): void {
  const SCALARS: Record<number, string> = { 1: 'double', 2: 'float', 3: 'int64', 4: 'uint64', 5: 'int32', 6: 'fixed64', 7: 'fixed32', 8: 'bool', 9: 'string', 12: 'bytes', 13: 'uint32', 15: 'sfixed32', 16: 'sfixed64', 17: 'sint32', 18: 'sint64' };
  const visit = (msg: any, fullName: string): void => {
    for (const nested of msg.nestedType ?? []) {
      if (!nested.options?.mapEntry) { visit(nested, `${fullName}.${nested.name}`); continue; }
      const entry = `.${fullName}.${nested.name}`;
      const [key, value] = nested.field;
      for (const f of msg.field ?? []) {
        if (f.typeName !== entry) continue;
        const type = root.lookupType(fullName);
        type.remove(type.fields[f.name]!);
        type.add(new protobuf.MapField(f.name, f.number, SCALARS[key.type]!, value.typeName ?? SCALARS[value.type]!));
      }
    }
  };
  for (const file of files) for (const msg of file.messageType ?? []) visit(msg, file.package ? `${file.package}.${msg.name}` : msg.name);
  root.resolveAll();
}

/** A grpc-js client for any service of a reflected root; responses come back as plain objects. */
function genericClient(root: protobuf.Root, serviceName: string, target: string, options: grpc.ChannelOptions = {}): any {
  const service = root.lookupService(serviceName);
  const def: Record<string, grpc.MethodDefinition<any, any>> = {};
  for (const m of service.methodsArray) {
    m.resolve();
    const req = m.resolvedRequestType!;
    const res = m.resolvedResponseType!;
    def[m.name] = {
      path: `/${serviceName}/${m.name}`, requestStream: Boolean(m.requestStream), responseStream: Boolean(m.responseStream),
      requestSerialize: (o: any) => Buffer.from(req.encode(req.fromObject(o)).finish()),
      requestDeserialize: (b: Buffer) => req.decode(b),
      responseSerialize: (o: any) => Buffer.from(res.encode(res.fromObject(o)).finish()),
      responseDeserialize: (b: Buffer) => res.toObject(res.decode(b), { enums: String, longs: String, oneofs: true, arrays: true }),
    };
  }
  const Client = grpc.makeGenericClientConstructor(def, serviceName);
  return new Client(target, grpc.credentials.createInsecure(), { ...CLIENT_OPTIONS, ...options });
}

interface Outcome { err?: grpc.ServiceError; res?: any }
function unary(client: any, method: string, request: unknown, metadata = new grpc.Metadata()): Promise<Outcome> {
  return new Promise((resolve) => {
    client[method](request, metadata, { deadline: Date.now() + DEADLINE_MS }, (err: grpc.ServiceError | null, res: any) => resolve(err ? { err } : { res }));
  });
}

function auth(value: string): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set('authorization', value);
  return md;
}

// ---------------------------------------------------------------------------
// Against a real Berth, through its main port
// ---------------------------------------------------------------------------

describe('gRPC NodeService on the main Berth port', () => {
  let b: Berth;
  let target: string;
  let lab: any;
  let reflection: ReflectionClient;
  let root: protobuf.Root;
  let nodes: any;

  before(async () => {
    b = await startBerth();
    target = new URL(b.url).host; // the same host:port as REST: HTTP/2 there is gRPC
    await makeCheckpoint(b, 'lab', LAB_CELLS);
    lab = await createNode(b, { ...LAB_NODE, name: 'lab', checkpointId: 'lab', timeout: 30 });
    reflection = new ReflectionClient(target);
    root = await reflection.root(SERVICE);
    nodes = genericClient(root, SERVICE, target);
  });

  after(async () => {
    nodes?.close();
    reflection?.close();
    if (b) {
      await b.stop();
      removeHome(b.home);
    }
  });

  const call = (method: string, request: Record<string, unknown>, md = auth(`Bearer ${b.token}`)): Promise<Outcome> => unary(nodes, method, request, md);
  const execute = (input: Record<string, unknown>, md?: grpc.Metadata): Promise<Outcome> =>
    call('Execute', { folder_id: 'default', node_id: lab.id, input: jsonToStruct(input) }, md);

  test('reflection lists NodeService and health, and serves real file descriptors', async () => {
    const services = await reflection.listServices();
    assert.ok(services.includes(SERVICE), services.join(', '));
    assert.ok(services.includes('grpc.health.v1.Health'), services.join(', '));
    const files = await reflection.filesFor(SERVICE);
    const byName = new Map(files.map((f) => [f.name, f]));
    const svcFile = byName.get('yandex/cloud/datasphere/v1/node_service.proto');
    assert.ok(svcFile, [...byName.keys()].join(', '));
    assert.deepEqual(svcFile.dependency, ['google/protobuf/struct.proto']);
    assert.deepEqual(svcFile.service[0].method.map((m: any) => [m.name, m.inputType, m.outputType]), [
      ['Execute', '.yandex.cloud.datasphere.v1.NodeExecutionRequest', '.yandex.cloud.datasphere.v1.NodeExecutionResponse'],
      ['ExecuteAlias', '.yandex.cloud.datasphere.v1.AliasExecutionRequest', '.yandex.cloud.datasphere.v1.AliasExecutionResponse'],
    ]);
    const request = svcFile.messageType.find((m: any) => m.name === 'NodeExecutionRequest');
    assert.deepEqual(request.field.map((f: any) => [f.name, f.number, f.jsonName]), [['folder_id', 1, 'folderId'], ['node_id', 2, 'nodeId'], ['input', 3, 'input']]);
    const struct = byName.get('google/protobuf/struct.proto');
    assert.ok(struct, 'struct.proto is served under its real name');
    const value = struct.messageType.find((m: any) => m.name === 'Value');
    assert.deepEqual(value.field.map((f: any) => f.name), ['null_value', 'number_value', 'string_value', 'bool_value', 'struct_value', 'list_value']);
    const structMsg = struct.messageType.find((m: any) => m.name === 'Struct');
    assert.equal(structMsg.field[0].typeName, '.google.protobuf.Struct.FieldsEntry');
    assert.equal(structMsg.nestedType[0].name, 'FieldsEntry');
    assert.equal(structMsg.nestedType[0].options.mapEntry, true);
  });

  test('Execute: the output Struct carries numbers, strings, booleans, null, lists and nested structs', async () => {
    const arg = { int: 42, float: -2.5, zero: 0, big: 1e300, text: 'héllo ✓', yes: true, no: false, nothing: null, list: [1, 'two', [3, [4]], { five: 5 }, null], nested: { a: { b: { c: [] } }, empty: {} } };
    const { err, res } = await execute({ mode: 'echo', arg });
    assert.equal(err, undefined, err?.message);
    assert.deepEqual(structToJson(res.output), { result: arg });
    // the raw message, without our converter
    assert.equal(res.output.fields.result.struct_value.fields.int.number_value, 42);
    assert.equal(res.output.fields.result.struct_value.fields.nothing.null_value, 'NULL_VALUE');
    assert.equal(res.output.fields.result.struct_value.fields.list.list_value.values[1].string_value, 'two');
  });

  test('Execute with Api-Key authorization works the same', async () => {
    const { err, res } = await execute({ mode: 'echo', arg: 'k' }, auth(`Api-Key ${b.token}`));
    assert.equal(err, undefined, err?.message);
    assert.deepEqual(structToJson(res.output), { result: 'k' });
  });

  test('a wrong input type is INVALID_ARGUMENT naming the variable', async () => {
    const { err } = await execute({ mode: 7, arg: 1 });
    assert.equal(err?.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err!.details, /"mode"/);
    assert.equal(err!.metadata.get('berth-error-code')[0], 'INVALID_INPUT');
    const body = JSON.parse((err!.metadata.get('berth-error-bin')[0] as Buffer).toString('utf8'));
    assert.equal(body.code, 'INVALID_INPUT');
    assert.equal(body.details.variable, 'mode');
  });

  test('gRPC calls count in the node metrics under their grpc-status, not as HTTP 200', async () => {
    const metric = async (re: RegExp): Promise<number> => {
      const text = await fetch(`${b.url}/metrics`, { headers: { authorization: `Bearer ${b.token}` } }).then((r) => r.text());
      return Number(re.exec(text)?.[1] ?? 0);
    };
    const invalid = new RegExp(`node_grpc_codes\\{node_id="${lab.id}",code="3"\\} (\\d+)`);
    const http200 = new RegExp(`node_http_codes\\{node_id="${lab.id}",code="200"\\} (\\d+)`);
    const [invalidBefore, okBefore] = [await metric(invalid), await metric(http200)];
    const { err } = await execute({ mode: 7, arg: 1 });
    assert.equal(err?.code, grpc.status.INVALID_ARGUMENT, err?.details);
    assert.equal(await metric(invalid), invalidBefore + 1);
    assert.equal(await metric(http200), okBefore, 'a failed gRPC call is not an HTTP 200');
  });

  test('a missing input variable is INVALID_ARGUMENT naming it', async () => {
    const { err } = await execute({ mode: 'echo' });
    assert.equal(err?.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err!.details, /"arg" is missing/);
  });

  test('a Python exception is INTERNAL with NodeExecutionErrorDetails in grpc-status-details-bin', async () => {
    const { err } = await execute({ mode: 'raise', arg: 3 });
    assert.equal(err?.code, grpc.status.INTERNAL);
    assert.match(err!.details, /ValueError: bad value 3/);
    const bin = err!.metadata.get('grpc-status-details-bin')[0];
    assert.ok(Buffer.isBuffer(bin), 'grpc-status-details-bin is present');
    // decode it generically: google.rpc.Status, then the Any's type, both from reflection
    const statusRoot = await reflection.root('google.rpc.Status');
    const Status = statusRoot.lookupType('google.rpc.Status');
    const status: any = Status.toObject(Status.decode(bin), { defaults: true, arrays: true });
    assert.equal(status.code, grpc.status.INTERNAL);
    assert.equal(status.message, err!.details);
    assert.equal(status.details.length, 1);
    const any = status.details[0];
    assert.equal(any.type_url, 'type.googleapis.com/yandex.cloud.datasphere.v1.NodeExecutionErrorDetails');
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    const Details = (await reflection.root(typeName)).lookupType(typeName);
    const details: any = Details.toObject(Details.decode(any.value), { defaults: true, arrays: true });
    assert.equal(details.error_name, 'ValueError');
    assert.equal(details.error_message, 'bad value 3');
    assert.ok(details.traceback.length > 0);
    assert.ok(details.traceback.some((l: string) => l.includes('ValueError: bad value 3')), details.traceback.join('\n'));
    // the server's own helper decodes the same
    assert.equal(decodeStatusDetails(bin).details[0]!.decoded!.error_name, 'ValueError');
  });

  test('a missing or wrong token is UNAUTHENTICATED', async () => {
    const none = await execute({ mode: 'echo', arg: 1 }, new grpc.Metadata());
    assert.equal(none.err?.code, grpc.status.UNAUTHENTICATED);
    assert.match(none.err!.details, /Authorization/);
    const wrong = await execute({ mode: 'echo', arg: 1 }, auth('Bearer not-a-token'));
    assert.equal(wrong.err?.code, grpc.status.UNAUTHENTICATED);
    const scheme = await execute({ mode: 'echo', arg: 1 }, auth(b.token));
    assert.equal(scheme.err?.code, grpc.status.UNAUTHENTICATED);
  });

  test('an unknown node is NOT_FOUND', async () => {
    const { err } = await call('Execute', { folder_id: 'default', node_id: 'no-such-node', input: jsonToStruct({}) });
    assert.equal(err?.code, grpc.status.NOT_FOUND);
    assert.match(err!.details, /no-such-node/);
  });

  test('missing node_id or folder_id is INVALID_ARGUMENT naming the field', async () => {
    const noNode = await call('Execute', { folder_id: 'default', input: jsonToStruct({ mode: 'echo', arg: 1 }) });
    assert.equal(noNode.err?.code, grpc.status.INVALID_ARGUMENT);
    assert.match(noNode.err!.details, /node_id/);
    const noFolder = await call('Execute', { node_id: lab.id, input: jsonToStruct({ mode: 'echo', arg: 1 }) });
    assert.equal(noFolder.err?.code, grpc.status.INVALID_ARGUMENT);
    assert.match(noFolder.err!.details, /folder_id/);
  });

  test('ExecuteAlias of an unknown alias is NOT_FOUND', async () => {
    const { err } = await call('ExecuteAlias', { folder_id: 'default', alias_name: 'no-such-alias', input: jsonToStruct({}) });
    assert.equal(err?.code, grpc.status.NOT_FOUND);
    assert.equal(err!.details, 'alias no-such-alias not found');
    const noName = await call('ExecuteAlias', { folder_id: 'default', input: jsonToStruct({}) });
    assert.equal(noName.err?.code, grpc.status.INVALID_ARGUMENT);
    assert.match(noName.err!.details, /alias_name/);
  });

  test('the health service answers SERVING for the server and for NodeService', async () => {
    const healthRoot = await reflection.root('grpc.health.v1.Health');
    const health = genericClient(healthRoot, 'grpc.health.v1.Health', target);
    try {
      for (const service of ['', SERVICE]) {
        const { err, res } = await unary(health, 'Check', { service });
        assert.equal(err, undefined, err?.message);
        assert.equal(res.status, 'SERVING');
      }
      const unknown = await unary(health, 'Check', { service: 'no.such.Service' });
      assert.equal(unknown.err?.code, grpc.status.NOT_FOUND);
    } finally {
      health.close();
    }
  });

  test('a 10 MiB output travels; a request over 16 MiB is refused naming the limit', async () => {
    const big = await execute({ mode: 'big', arg: 10 * MiB });
    assert.equal(big.err, undefined, big.err?.message);
    assert.equal(structToJson(big.res.output).result, 'x'.repeat(10 * MiB));
    const tooBig = await execute({ mode: 'echo', arg: 'y'.repeat(17 * MiB) });
    assert.equal(tooBig.err?.code, grpc.status.RESOURCE_EXHAUSTED);
    assert.match(tooBig.err!.details, /larger than max|limit/i);
    // and the node still answers
    const after = await execute({ mode: 'echo', arg: 1 });
    assert.equal(after.err, undefined, after.err?.message);
  });

  test('a client generated from proto/ (proto-loader) calls the same service', async () => {
    const def = protoLoader.loadSync('yandex/cloud/datasphere/v1/node_service.proto', { includeDirs: [PROTO_DIR], keepCase: true, oneofs: true, enums: String });
    const pkg: any = grpc.loadPackageDefinition(def);
    const client = new pkg.yandex.cloud.datasphere.v1.NodeService(target, grpc.credentials.createInsecure());
    try {
      // proto-loader uses protobufjs's bundled well-known types: camelCase Value fields
      const input = { fields: { mode: { stringValue: 'echo' }, arg: { listValue: { values: [{ numberValue: 1.5 }, { nullValue: 'NULL_VALUE' }] } } } };
      const { err, res } = await unary(client, 'Execute', { folder_id: 'default', node_id: lab.id, input }, auth(`Bearer ${b.token}`));
      assert.equal(err, undefined, err?.message);
      assert.deepEqual(structToJson(res.output), { result: [1.5, null] });
    } finally {
      client.close();
    }
  });

  test('concurrent calls all succeed', async () => {
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => execute({ mode: 'echo', arg: i })));
    results.forEach((r, i) => {
      assert.equal(r.err, undefined, r.err?.message);
      assert.equal(structToJson(r.res.output).result, i);
    });
  });
});

// ---------------------------------------------------------------------------
// The gRPC server alone, in this process, in front of a stand-in gateway: aliases,
// draining, the call hook, bad inputs, deadlines, compression, limits; through
// grpc-js and through handleStream.
// ---------------------------------------------------------------------------

describe('startGrpcServer with a stand-in gateway', () => {
  const seen: Array<{ nodeId: string; body: any; sticky?: unknown }> = [];
  /** What the pipeline counted: the call's target and the grpc-status it ended with. */
  const infos: Array<{ nodeId?: string; alias?: string; code: number }> = [];
  // the gateway's side of the pipeline as node-service uses it: authenticate, count, execute
  const gateway: any = {
    inFlight: 0,
    draining: false,
    pipeline: {
      deadlines: new DeadlineWheel(),
      authenticate(authorization: string | undefined) {
        if (authorization !== 'Bearer good') throw new BerthError('UNAUTHENTICATED', 'invalid token');
        return { id: 'good', name: 'good', hash: '', roles: { '*': 'admin' }, createdAt: '' };
      },
      count(target: { nodeId?: string; alias?: string }) {
        return { node() {}, alias() {}, end: (_http: number | undefined, grpcStatus?: string) => { infos.push({ ...target, code: Number(grpcStatus) }); } };
      },
    },
    async execute(_token: unknown, _folder: string, target: { nodeId?: string; alias?: string }, _input: unknown, payload: Buffer, headers: Record<string, unknown>) {
      const nodeId = target.nodeId ?? (target.alias === 'my-alias' ? 'node-behind-alias' : undefined);
      if (!nodeId) throw new BerthError('ALIAS_NOT_FOUND', `alias ${target.alias} not found`);
      const body = JSON.parse(payload.toString('utf8'));
      seen.push({ nodeId, body, sticky: headers['x-sticky-key'] });
      if (nodeId === 'huge-error') {
        const details = { error_name: 'ValueError', error_message: 'é'.repeat(50_000), traceback: Array.from({ length: 1000 }, (_, i) => `line ${i} ${'x'.repeat(i % 700)}`) };
        return { ok: false, error: new BerthError('EXECUTION_ERROR', `the cell raised ValueError: ${details.error_message}`, details), extra: details };
      }
      if (nodeId === 'slow') { await new Promise((r) => setTimeout(r, 1500)); return { ok: true, body: Buffer.from('{"output":{}}') }; }
      if (nodeId === 'percent') return { ok: false, error: new BerthError('INVALID_INPUT', '100% wrong: ünïcode ✓\nsecond line') };
      if (nodeId === 'busy') return { ok: false, error: new BerthError('NODE_UNAVAILABLE', 'no healthy instance', {}, { 'retry-after': '2' }) };
      return { ok: true, body: Buffer.from(JSON.stringify({ output: { nodeId, echo: body.input } })) };
    },
  };
  let server: Awaited<ReturnType<typeof startGrpcServer>>;
  let front: Http2Server;
  const clients: Record<string, any> = {};
  const fallbacks: string[] = [];

  before(async () => {
    server = await startGrpcServer({ gateway });
    // a front door of our own: NodeService on handleStream, anything else refused
    front = createHttp2Server();
    front.on('stream', (stream, headers) => {
      if (server.handleStream(stream, headers)) return;
      fallbacks.push(String(headers[':path']));
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12', 'grpc-message': 'not here' }, { endStream: true });
    });
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', () => r()));
    const { root } = loadProtos();
    clients['grpc-js'] = genericClient(root, SERVICE, `127.0.0.1:${server.port}`);
    clients.handleStream = genericClient(root, SERVICE, `127.0.0.1:${(front.address() as AddressInfo).port}`);
  });

  after(async () => {
    for (const c of Object.values(clients)) c.close();
    await new Promise((r) => front?.close(r));
    await server?.close(1000);
  });

  test('handleStream takes only NodeService unary calls', async () => {
    const { root } = loadProtos([{ name: 'grpc/health/v1/health.proto', path: HEALTH_PROTO }]);
    const health = genericClient(root, 'grpc.health.v1.Health', `127.0.0.1:${(front.address() as AddressInfo).port}`);
    try {
      const { err } = await unary(health, 'Check', { service: '' });
      assert.equal(err?.code, grpc.status.UNIMPLEMENTED);
      assert.deepEqual(fallbacks, ['/grpc.health.v1.Health/Check']);
    } finally {
      health.close();
    }
  });

  // the same tests through both ways in: grpc-js's server, and handleStream on a front door's HTTP/2
  for (const via of ['grpc-js', 'handleStream']) describe(`via ${via}`, () => {
    const client = (): any => clients[via];
    const md = (): grpc.Metadata => auth('Bearer good');

    test('ExecuteAlias goes to the pipeline by alias name, with the metadata as headers (a sticky key), and is counted on it', async () => {
      const m = md();
      m.set('x-sticky-key', 'user-7');
      const { err, res } = await unary(client(), 'ExecuteAlias', { folder_id: 'f1', alias_name: 'my-alias', input: jsonToStruct({ x: 1 }) }, m);
      assert.equal(err, undefined, err?.message);
      assert.deepEqual(structToJson(res.output), { nodeId: 'node-behind-alias', echo: { x: 1 } });
      assert.deepEqual(seen.at(-1), { nodeId: 'node-behind-alias', body: { folder_id: 'f1', input: { x: 1 } }, sticky: 'user-7' });
      assert.deepEqual(infos.at(-1), { alias: 'my-alias', code: grpc.status.OK });
      const missing = await unary(client(), 'ExecuteAlias', { folder_id: 'f', alias_name: 'other', input: jsonToStruct({}) }, md());
      assert.equal(missing.err?.code, grpc.status.NOT_FOUND);
      assert.deepEqual(infos.at(-1), { alias: 'other', code: grpc.status.NOT_FOUND });
    });

    test('the JSON body sent to the gateway: folder_id, input as plain JSON, missing input as {}', async () => {
      await unary(client(), 'Execute', { folder_id: 'f2', node_id: 'n' }, md());
      assert.deepEqual(seen.at(-1)!.body, { folder_id: 'f2', input: {} });
      const noFolder = await unary(client(), 'Execute', { node_id: 'n', input: jsonToStruct({}) }, md());
      assert.equal(noFolder.err?.code, grpc.status.INVALID_ARGUMENT);
      assert.match(noFolder.err!.details, /folder_id is required/);
    });

    test('NaN and Infinity inputs are INVALID_ARGUMENT naming the path', async () => {
      const input = { fields: { a: { list_value: { values: [{ number_value: 1 }, { number_value: NaN }] } } } };
      const { err } = await unary(client(), 'Execute', { folder_id: 'f', node_id: 'n', input }, md());
      assert.equal(err?.code, grpc.status.INVALID_ARGUMENT);
      assert.match(err!.details, /input\.a\[1\]: NaN/);
    });

    test('a request nested deeper than protobuf allows is INVALID_ARGUMENT, not INTERNAL', async () => {
      const manual = (n: number): any => (n === 0 ? { number_value: 1 } : { list_value: { values: [manual(n - 1)] } });
      const saved = protobuf.util.recursionLimit;
      protobuf.util.recursionLimit = 10_000; // lets this client encode what the server's decoder refuses
      try {
        const { err } = await unary(client(), 'Execute', { folder_id: 'f', node_id: 'n', input: { fields: { deep: manual(60) } } }, md());
        assert.equal(err?.code, grpc.status.INVALID_ARGUMENT);
        assert.match(err!.details, /not a valid yandex\.cloud\.datasphere\.v1\.NodeExecutionRequest: .*depth/);
      } finally {
        protobuf.util.recursionLimit = saved;
      }
    });

    test('a huge Python error still fits gRPC metadata limits: cut, with the traceback\'s last lines', async () => {
      const { err } = await unary(client(), 'Execute', { folder_id: 'f', node_id: 'huge-error', input: jsonToStruct({}) }, md());
      assert.equal(err?.code, grpc.status.INTERNAL);
      let size = 0;
      for (const [k, v] of Object.entries(err!.metadata.getMap())) size += k.length + (Buffer.isBuffer(v) ? Math.ceil(v.length / 3) * 4 : Buffer.byteLength(String(v)));
      size += Buffer.byteLength(encodeURI(err!.details));
      assert.ok(size < 8192, `trailers take ${size} bytes`);
      assert.ok(Buffer.byteLength(err!.details) <= 512);
      assert.equal(err!.metadata.get('berth-error-bin').length, 0, 'the details carry it, not berth-error-bin');
      const d = decodeStatusDetails(err!.metadata.get('grpc-status-details-bin')[0] as Buffer).details[0]!.decoded as any;
      assert.equal(d.error_name, 'ValueError');
      assert.ok(d.error_message.startsWith('ééé') && d.error_message.endsWith('…') && Buffer.byteLength(d.error_message) <= 1024);
      assert.match(d.traceback[0], /^… \d+ earlier traceback lines left out/);
      assert.equal(d.traceback.at(-1), `line 999 ${'x'.repeat(999 % 700)}`);
    });

    test('Retry-After travels as a trailer, the Berth code too', async () => {
      const { err } = await unary(client(), 'Execute', { folder_id: 'f', node_id: 'busy', input: jsonToStruct({}) }, md());
      assert.equal(err?.code, grpc.status.UNAVAILABLE);
      assert.equal(err!.metadata.get('retry-after')[0], '2');
      assert.equal(err!.metadata.get('berth-error-code')[0], 'NODE_UNAVAILABLE');
      assert.deepEqual(infos.at(-1), { nodeId: 'busy', code: grpc.status.UNAVAILABLE });
    });

    test('while Berth drains, calls are UNAVAILABLE and not started', async () => {
      gateway.draining = true;
      const before = seen.length;
      try {
        const { err } = await unary(client(), 'Execute', { folder_id: 'f', node_id: 'n', input: jsonToStruct({}) }, md());
        assert.equal(err?.code, grpc.status.UNAVAILABLE);
        assert.equal(seen.length, before);
      } finally {
        gateway.draining = false;
      }
    });

    test('calls count in gateway.inFlight while they run', async () => {
      // a slow call left by an earlier deadline test may still be running
      await waitFor('earlier calls to end', async () => gateway.inFlight === 0, 5000, 20);
      let during = -1;
      const original = gateway.execute;
      gateway.execute = async (...args: unknown[]) => { during = gateway.inFlight; return original.apply(gateway, args); };
      try {
        await unary(client(), 'Execute', { folder_id: 'f', node_id: 'n', input: jsonToStruct({}) }, md());
      } finally {
        gateway.execute = original;
      }
      assert.equal(during, 1);
      assert.equal(gateway.inFlight, 0);
    });

    test('a client deadline ends the call with DEADLINE_EXCEEDED', async () => {
      const started = Date.now();
      const { err } = await new Promise<Outcome>((resolve) => {
        client().Execute({ folder_id: 'f', node_id: 'slow', input: jsonToStruct({}) }, md(), { deadline: Date.now() + 200 },
          (e: grpc.ServiceError | null, res: any) => resolve(e ? { err: e } : { res }));
      });
      assert.equal(err?.code, grpc.status.DEADLINE_EXCEEDED);
      assert.ok(Date.now() - started < 1400, 'answered at the deadline, not when the call ended');
    });

    test('gzip-compressed requests are read', async () => {
      const { root } = loadProtos();
      const port = via === 'grpc-js' ? server.port : (front.address() as AddressInfo).port;
      const gz = genericClient(root, SERVICE, `127.0.0.1:${port}`, { 'grpc.default_compression_algorithm': 2 });
      try {
        const { err, res } = await unary(gz, 'Execute', { folder_id: 'f', node_id: 'n', input: jsonToStruct({ text: 'z'.repeat(10_000) }) }, md());
        assert.equal(err, undefined, err?.message);
        assert.equal((structToJson(res.output) as any).echo.text.length, 10_000);
      } finally {
        gz.close();
      }
    });

    test('status messages keep "%", non-ASCII and newlines', async () => {
      const { err } = await unary(client(), 'Execute', { folder_id: 'f', node_id: 'percent', input: jsonToStruct({}) }, md());
      assert.equal(err?.code, grpc.status.INVALID_ARGUMENT);
      assert.equal(err!.details, '100% wrong: ünïcode ✓\nsecond line');
    });

    test('a request over the limit is RESOURCE_EXHAUSTED', async () => {
      const { err } = await unary(client(), 'Execute', { folder_id: 'f', node_id: 'n', input: jsonToStruct({ big: 'b'.repeat(17 * MiB) }) }, md());
      assert.equal(err?.code, grpc.status.RESOURCE_EXHAUSTED);
      assert.match(err!.details, /larger than max/);
    });
  });
});

// ---------------------------------------------------------------------------
// Struct <-> JSON
// ---------------------------------------------------------------------------

describe('Struct <-> JSON converters', () => {
  const { root } = loadProtos();
  const Struct = root.lookupType('google.protobuf.Struct');
  /** JSON -> Struct -> protobuf bytes -> Struct message -> JSON. */
  const roundTrip = (json: Record<string, unknown>): unknown => structToJson(Struct.decode(Struct.encode(jsonToStruct(json) as any).finish()) as any);

  test('every JSON value survives the wire', () => {
    const json = {
      n: 1, f: 0.1, neg: -7.25, zero: 0, negZero: -0, max: Number.MAX_SAFE_INTEGER, tiny: 5e-324,
      s: '', u: 'ünï ✓ 🚀', t: true, fa: false, nul: null,
      list: [], mixed: [1, 'a', null, true, [], {}, [[[]]]], obj: {}, deep: { a: { b: { c: { d: [1, { e: 'f' }] } } } },
      'key with spaces': 1, 'дом': 2, '': 3,
    };
    assert.deepEqual(roundTrip(json), json);
  });

  test('numbers stay numbers, not strings', () => {
    const out = roundTrip({ a: 3, b: [1.5] }) as any;
    assert.equal(typeof out.a, 'number');
    assert.equal(typeof out.b[0], 'number');
  });

  test('a "__proto__" key is kept as data, not as a prototype', () => {
    const json = JSON.parse('{"__proto__": {"polluted": true}, "ok": 1}');
    const struct = jsonToStruct(json);
    assert.ok(Object.prototype.hasOwnProperty.call(struct.fields, '__proto__'));
    const back = structToJson(struct);
    assert.ok(Object.prototype.hasOwnProperty.call(back, '__proto__'));
    assert.equal(({} as any).polluted, undefined);
    assert.equal(JSON.stringify(back), '{"__proto__":{"polluted":true},"ok":1}');
  });

  test('NaN and Infinity have no JSON form: refused with the path', () => {
    assert.throws(() => structToJson({ fields: { x: { struct_value: { fields: { y: { number_value: Infinity } } } } } }, 'input'),
      (e: unknown) => e instanceof StructConversionError && e.path === 'input.x.y' && /Infinity/.test(e.message));
    assert.throws(() => jsonToStruct({ a: [NaN] }, 'output'), (e: unknown) => e instanceof StructConversionError && e.path === 'output.a[0]');
    assert.throws(() => structToJson({ fields: { 'odd key': { number_value: NaN } } }, 'input'), /input\["odd key"\]/);
  });

  test('nesting is limited as protobuf limits it (100 message levels), and protobufjs agrees', () => {
    const nest = (n: number): unknown => { let v: unknown = 1; for (let i = 0; i < n; i++) v = [v]; return v; };
    // output Struct = level 1; each list adds a Value and a ListValue: 49 lists put the last number at level 100
    assert.equal(MAX_MESSAGE_DEPTH, 100);
    const Response = root.lookupType('yandex.cloud.datasphere.v1.NodeExecutionResponse');
    const deepest = jsonToStruct({ ok: nest(49) }, 'output');
    const bytes = Response.encode({ output: deepest } as any).finish();
    assert.deepEqual(structToJson((Response.decode(bytes) as any).output, 'output'), { ok: nest(49) });
    assert.throws(() => jsonToStruct({ deep: nest(50) }, 'output'), (e: unknown) => e instanceof StructConversionError && /nested too deeply/.test(e.message) && e.path.startsWith('output.deep'));
    // one level more is refused by protobufjs too (our check only makes the error clear)
    const manual = (n: number): any => (n === 0 ? { number_value: 1 } : { list_value: { values: [manual(n - 1)] } });
    assert.throws(() => Response.encode({ output: { fields: { deep: manual(50) } } } as any).finish(), /depth/);
    assert.throws(() => structToJson({ fields: { deep: manual(50) } }, 'input'), /nested too deeply/);
    assert.deepEqual(structToJson({ fields: { ok: manual(49) } }, 'input'), { ok: nest(49) });
  });

  test('a Value with no kind set, or absent parts, read as null and empty', () => {
    assert.equal(valueToJson({}), null);
    assert.equal(valueToJson(undefined), null);
    assert.deepEqual(structToJson(undefined), {});
    assert.deepEqual(structToJson({}), {});
    assert.deepEqual(structToJson({ fields: { l: { list_value: {} }, s: { struct_value: null }, t: { struct_value: {} } } }), { l: [], s: null, t: {} });
    const decoded = Struct.decode(Struct.encode({ fields: { e: {} } } as any).finish());
    assert.deepEqual(structToJson(decoded as any), { e: null });
  });

  test('the camelCase object form (proto-loader\'s) is read too', () => {
    assert.deepEqual(structToJson({ fields: { a: { numberValue: 2 }, b: { listValue: { values: [{ stringValue: 'x' }, { nullValue: 'NULL_VALUE' }, { boolValue: true }] } }, c: { structValue: { fields: {} } } } } as any),
      { a: 2, b: ['x', null, true], c: {} });
    assert.deepEqual(structToJson({ fields: { a: { kind: 'numberValue', numberValue: 3 } } } as any), { a: 3 });
  });

  test('truncateBytes cuts on a character boundary; tailLines keeps the last lines', () => {
    assert.equal(truncateBytes('short', 10), 'short');
    assert.equal(truncateBytes('ab€€€€', 8), 'ab€…'); // € and … are 3 bytes each
    assert.equal(truncateBytes('ab€€€€', 7), 'ab…'); // no half €
    assert.deepEqual(tailLines(['a', 'b'], 1000), ['a', 'b']);
    const t = tailLines(Array.from({ length: 100 }, (_, i) => `l${i}`), 100);
    assert.match(t[0]!, /^… \d+ earlier traceback lines left out/);
    assert.equal(t.at(-1), 'l99');
  });

  test('json_name follows protoc', () => {
    assert.equal(jsonName('folder_id'), 'folderId');
    assert.equal(jsonName('a__b_c'), 'aBC');
    assert.equal(jsonName('x'), 'x');
    assert.equal(jsonName('error_name_2'), 'errorName2');
  });
});
