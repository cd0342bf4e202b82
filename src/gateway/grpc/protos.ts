// The .proto files Berth serves, loaded once with protobufjs, and their descriptors as
// protoc would write them, for server reflection.
//
// Why not @grpc/proto-loader's definitions: proto-loader swaps google/protobuf/*.proto
// for protobufjs's bundled copies (camelCase field names) and serves synthesized files
// ("google_protobuf.proto") without dependency lists or map-entry types named as protoc
// names them, which strict reflection clients (protoc-based, Go's protodesc) reject.
// Here every file keeps its real name, package, imports and snake_case field names.
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import descriptorExt from 'protobufjs/ext/descriptor/index.js';

const { FileDescriptorProto } = descriptorExt as unknown as { FileDescriptorProto: protobuf.Type };
const parser = protobuf.parse as unknown as { filename: string | null };

/** proto/ at the repository root, whether running from src/ (tsx) or dist/. */
export const PROTO_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'proto');

/** Berth's own files under proto/, dependencies first. */
export const BERTH_PROTO_FILES = [
  'google/protobuf/any.proto',
  'google/protobuf/struct.proto',
  'google/rpc/status.proto',
  'yandex/cloud/datasphere/v1/node_service.proto',
  'inference/grpc_predict_v2.proto',
];

export interface ProtoFile {
  /** The name it is imported by, e.g. google/protobuf/struct.proto. */
  name: string;
  /** Where it is on disk. */
  path: string;
  /** Its text, when it is not on disk (a node's generated contract). */
  source?: string;
}

export interface LoadedProtos {
  /** Every type and service, resolved, with the files' own (snake_case) field names. */
  root: protobuf.Root;
  /** One encoded google.protobuf.FileDescriptorProto per file, in dependency order. */
  descriptors: Buffer[];
}

/** Loads the given files (default: Berth's) plus any extra ones, e.g. the health service's. */
export function loadProtos(extra: ProtoFile[] = []): LoadedProtos {
  const files: ProtoFile[] = [...BERTH_PROTO_FILES.map((name) => ({ name, path: join(PROTO_DIR, name) })), ...extra];
  const root = new protobuf.Root();
  const parsed: Array<{ file: ProtoFile; pkg: string; imports: string[]; syntax: string }> = [];
  for (const file of files) {
    const source = file.source ?? readFileSync(file.path, 'utf8');
    parser.filename = file.name; // stamps every top-level object with the file it is in
    const r = protobuf.parse(source, root, { keepCase: true, alternateCommentMode: true });
    const syntax = /^\s*syntax\s*=\s*["'](proto[23])["']/m.exec(source)?.[1] ?? 'proto2';
    parsed.push({ file, pkg: r.package ?? '', imports: [...(r.imports ?? []), ...(r.weakImports ?? [])], syntax });
  }
  parser.filename = null;
  root.resolveAll();

  const descriptors = parsed.map(({ file, pkg, imports, syntax }) => {
    const fd: Record<string, unknown> = {
      name: file.name, package: pkg || undefined, dependency: imports, syntax,
      messageType: [], enumType: [], service: [],
    };
    for (const obj of topLevel(root, file.name)) {
      if (obj instanceof protobuf.Type) (fd.messageType as unknown[]).push(describeType(obj));
      else if (obj instanceof protobuf.Enum) (fd.enumType as unknown[]).push(describeEnum(obj));
      else if (obj instanceof protobuf.Service) (fd.service as unknown[]).push(describeService(obj));
    }
    return Buffer.from(FileDescriptorProto.encode(FileDescriptorProto.fromObject(fd)).finish());
  });
  return { root, descriptors };
}

/** Types, enums and services declared at the top level of one file (not nested in a message). */
function topLevel(ns: protobuf.NamespaceBase, filename: string): protobuf.ReflectionObject[] {
  const out: protobuf.ReflectionObject[] = [];
  for (const obj of ns.nestedArray) {
    if (obj instanceof protobuf.Type || obj instanceof protobuf.Enum || obj instanceof protobuf.Service) {
      if (obj.filename === filename) out.push(obj);
    } else if (obj instanceof protobuf.Namespace) {
      out.push(...topLevel(obj, filename));
    }
  }
  return out;
}

const SCALAR_TYPES: Record<string, number> = {
  double: 1, float: 2, int64: 3, uint64: 4, int32: 5, fixed64: 6, fixed32: 7, bool: 8, string: 9,
  bytes: 12, uint32: 13, sfixed32: 15, sfixed64: 16, sint32: 17, sint64: 18,
};
const TYPE_MESSAGE = 11;
const TYPE_ENUM = 14;

/** protoc's json_name: underscores dropped, the next letter capitalised. */
export function jsonName(name: string): string {
  return name.replace(/_+([a-zA-Z0-9])?/g, (_m, c: string | undefined) => (c ? c.toUpperCase() : ''));
}

/** protoc's name for a map field's entry type: foo_bar -> FooBarEntry. */
function mapEntryName(field: string): string {
  const camel = jsonName(field);
  return camel.charAt(0).toUpperCase() + camel.slice(1) + 'Entry';
}

function typeRef(field: protobuf.Field, type: string, resolved: protobuf.Type | protobuf.Enum | null): { type: number; typeName?: string } {
  if (type in SCALAR_TYPES) return { type: SCALAR_TYPES[type]! };
  if (!resolved) throw new Error(`unresolved type ${type} of field ${field.fullName}`);
  return { type: resolved instanceof protobuf.Enum ? TYPE_ENUM : TYPE_MESSAGE, typeName: resolved.fullName };
}

function describeType(t: protobuf.Type): Record<string, unknown> {
  const field: unknown[] = [];
  const nestedType: unknown[] = [];
  const oneofs = t.oneofsArray.filter((o) => !isSyntheticOneof(o));
  for (const f of t.fieldsArray) {
    const d: Record<string, unknown> = { name: f.name, number: f.id, jsonName: jsonName(f.name) };
    if (f instanceof protobuf.MapField) {
      const entry = mapEntryName(f.name);
      nestedType.push({
        name: entry,
        field: [
          { name: 'key', number: 1, label: 1, jsonName: 'key', ...typeRef(f, f.keyType, null) },
          { name: 'value', number: 2, label: 1, jsonName: 'value', ...typeRef(f, f.type, f.resolvedType) },
        ],
        options: { mapEntry: true },
      });
      Object.assign(d, { label: 3, type: TYPE_MESSAGE, typeName: `${t.fullName}.${entry}` });
    } else {
      Object.assign(d, { label: f.repeated ? 3 : f.required ? 2 : 1 }, typeRef(f, f.type, f.resolvedType));
      if (f.partOf) {
        if (isSyntheticOneof(f.partOf)) {
          d.proto3Optional = true;
          d.oneofIndex = oneofs.length + syntheticIndex(t, f.partOf);
        } else {
          d.oneofIndex = oneofs.indexOf(f.partOf);
        }
      }
    }
    field.push(d);
  }
  for (const n of t.nestedArray) {
    if (n instanceof protobuf.Type) nestedType.push(describeType(n));
  }
  return {
    name: t.name, field, nestedType,
    enumType: t.nestedArray.filter((n): n is protobuf.Enum => n instanceof protobuf.Enum).map(describeEnum),
    oneofDecl: [...oneofs, ...t.oneofsArray.filter(isSyntheticOneof)].map((o) => ({ name: o.name })),
  };
}

/** proto3 `optional` fields live in a synthetic oneof named _<field>, declared after the real ones. */
function isSyntheticOneof(o: protobuf.OneOf): boolean {
  return o.fieldsArray.length === 1 && o.name === `_${o.fieldsArray[0]!.name}` && Boolean(o.fieldsArray[0]!.options?.proto3_optional);
}
function syntheticIndex(t: protobuf.Type, o: protobuf.OneOf): number {
  return t.oneofsArray.filter(isSyntheticOneof).indexOf(o);
}

function describeEnum(e: protobuf.Enum): Record<string, unknown> {
  return { name: e.name, value: Object.entries(e.values).map(([name, number]) => ({ name, number })) };
}

function describeService(s: protobuf.Service): Record<string, unknown> {
  return {
    name: s.name,
    method: s.methodsArray.map((m) => {
      m.resolve();
      return {
        name: m.name, inputType: m.resolvedRequestType!.fullName, outputType: m.resolvedResponseType!.fullName,
        clientStreaming: Boolean(m.requestStream), serverStreaming: Boolean(m.responseStream),
      };
    }),
  };
}
