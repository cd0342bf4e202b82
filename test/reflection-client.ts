// A gRPC client that knows only the standard server reflection protocol and learns every
// other message and service from the server (as grpcurl does), with call metadata (a token)
// on its reflection streams too: Berth lists a caller's typed node services by its token.
import { createRequire } from 'node:module';
import { join, dirname } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import descriptorExt from 'protobufjs/ext/descriptor/index.js';

const { FileDescriptorProto } = descriptorExt as unknown as { FileDescriptorProto: protobuf.Type };
const REFLECTION_PROTO = join(dirname(createRequire(import.meta.url).resolve('@grpc/reflection')), '../proto/grpc/reflection/v1/reflection.proto');
const DEADLINE_MS = 30_000;

export function authMetadata(token: string | null, extra: Record<string, string> = {}): grpc.Metadata {
  const md = new grpc.Metadata();
  if (token) md.set('authorization', `Bearer ${token}`);
  for (const [k, v] of Object.entries(extra)) md.set(k, v);
  return md;
}

export class ReflectionClient {
  private readonly client: any;
  constructor(target: string, private readonly metadata: grpc.Metadata = new grpc.Metadata()) {
    const pkg: any = grpc.loadPackageDefinition(protoLoader.loadSync(REFLECTION_PROTO, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true }));
    this.client = new pkg.grpc.reflection.v1.ServerReflection(target, grpc.credentials.createInsecure());
  }

  private ask(request: Record<string, unknown>): Promise<any> {
    return new Promise((resolve, reject) => {
      const stream = this.client.ServerReflectionInfo(this.metadata, { deadline: Date.now() + DEADLINE_MS });
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

/** protobufjs's Root.fromDescriptor reads map fields as repeated entries: make them maps again (Struct's fields). */
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

/** A grpc-js client for a reflected service; responses as plain objects (longs as numbers, bytes as Buffers). */
export function genericClient(root: protobuf.Root, serviceName: string, target: string): any {
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
      responseDeserialize: (b: Buffer) => res.toObject(res.decode(b), { enums: String, longs: Number, oneofs: true, arrays: true }),
    };
  }
  const Client = grpc.makeGenericClientConstructor(def, serviceName);
  return new Client(target, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 64 << 20, 'grpc.max_send_message_length': 64 << 20 });
}

export interface Outcome { err?: grpc.ServiceError; res?: any }
export function unary(client: any, method: string, request: unknown, metadata: grpc.Metadata): Promise<Outcome> {
  return new Promise((resolve) => {
    client[method](request, metadata, { deadline: Date.now() + DEADLINE_MS }, (err: grpc.ServiceError | null, res: any) => resolve(err ? { err } : { res }));
  });
}
