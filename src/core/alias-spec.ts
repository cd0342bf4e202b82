// Validates an alias as a user sends it (API body or YAML); every error names the field.
import { invalidArgument } from './errors.js';
import { typeName, validateFolder } from './node-spec.js';
import type { AliasSpec } from './types.js';

// 2–79 chars: letters, digits, "-", "_" and "." (for prefixes such as datasphere.user.)
const ALIAS_NAME_RE = /^[A-Za-z][A-Za-z0-9_.-]{0,77}[A-Za-z0-9]$/;
const HEADER_NAME_RE = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;
const RESERVED_HEADERS = new Set(['authorization', 'x-node-id', 'x-node-alias', 'x-folder-id', 'host', 'content-length', 'connection', 'transfer-encoding', 'te', 'upgrade']);
const FIELDS = ['name', 'description', 'folderId', 'projectId', 'backends', 'executionAcl', 'proxyMetadata', 'sticky', 'mirror', 'kind'];

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

export interface AliasContext { defaultFolder: string; defaultProject: string }

export function validateAliasName(name: unknown): string {
  if (name === undefined || name === null) throw invalidArgument('name', 'is required');
  if (typeof name !== 'string') throw invalidArgument('name', `must be a string, got ${typeName(name)}`);
  if (!ALIAS_NAME_RE.test(name)) {
    throw invalidArgument('name', 'must be 2–79 characters: letters, digits, "-", "_" or "." (e.g. datasphere.user.my-model), starting with a letter and ending with a letter or digit');
  }
  return name;
}

function backends(v: unknown): AliasSpec['backends'] {
  if (v === undefined || v === null) throw invalidArgument('backends', 'is required: at least one {nodeId, weight}');
  if (!Array.isArray(v)) throw invalidArgument('backends', `must be an array, got ${typeName(v)}`);
  if (v.length === 0) throw invalidArgument('backends', 'must list at least one {nodeId, weight}');
  if (v.length > 32) throw invalidArgument('backends', 'must list at most 32 nodes');
  const seen = new Set<string>();
  return v.map((b, i) => {
    const f = `backends[${i}]`;
    if (!isObj(b)) throw invalidArgument(f, `must be an object {nodeId, weight}, got ${typeName(b)}`);
    for (const k of Object.keys(b)) if (k !== 'nodeId' && k !== 'weight') throw invalidArgument(`${f}.${k}`, 'is not a known field');
    if (typeof b.nodeId !== 'string' || !b.nodeId) throw invalidArgument(`${f}.nodeId`, 'is required');
    if (seen.has(b.nodeId)) throw invalidArgument(`${f}.nodeId`, `node ${b.nodeId} is listed twice`);
    seen.add(b.nodeId);
    const weight = b.weight ?? 1;
    if (typeof weight !== 'number' || !Number.isFinite(weight)) throw invalidArgument(`${f}.weight`, `must be a number, got ${typeName(weight)}`);
    if (weight <= 0) throw invalidArgument(`${f}.weight`, `must be greater than 0, got ${weight}`);
    if (weight > 1_000_000) throw invalidArgument(`${f}.weight`, 'must be at most 1000000');
    return { nodeId: b.nodeId, weight };
  });
}

export function parseAliasSpec(body: unknown, ctx: AliasContext): AliasSpec {
  if (!isObj(body)) throw invalidArgument('body', `must be a JSON object, got ${typeName(body)}`);
  for (const k of Object.keys(body)) if (!FIELDS.includes(k)) throw invalidArgument(k, 'is not a known field of aliases');
  if (body.kind !== undefined && body.kind !== 'alias') throw invalidArgument('kind', `must be "alias", got ${JSON.stringify(body.kind)}`);
  const name = validateAliasName(body.name);
  if (body.description !== undefined && typeof body.description !== 'string') throw invalidArgument('description', 'must be a string');
  if (typeof body.description === 'string' && body.description.length > 1024) throw invalidArgument('description', 'must be at most 1024 characters');
  const folderId = validateFolder(typeof body.folderId === 'string' ? body.folderId : ctx.defaultFolder, 'folderId');
  const projectId = validateFolder(typeof body.projectId === 'string' ? body.projectId : ctx.defaultProject, 'projectId');

  let acl: AliasSpec['executionAcl'] = { folders: [folderId], isPublic: false };
  if (body.executionAcl !== undefined) {
    if (!isObj(body.executionAcl)) throw invalidArgument('executionAcl', 'must be an object {folders, isPublic}');
    const a = body.executionAcl;
    for (const k of Object.keys(a)) if (k !== 'folders' && k !== 'isPublic') throw invalidArgument(`executionAcl.${k}`, 'is not a known field');
    if (a.isPublic !== undefined && typeof a.isPublic !== 'boolean') throw invalidArgument('executionAcl.isPublic', `must be a boolean, got ${typeName(a.isPublic)}`);
    let folders = [folderId];
    if (a.folders !== undefined) {
      if (!Array.isArray(a.folders)) throw invalidArgument('executionAcl.folders', 'must be an array of folder ids');
      if (a.folders.length > 100) throw invalidArgument('executionAcl.folders', 'must list at most 100 folders');
      folders = a.folders.map((f, i) => {
        if (typeof f !== 'string') throw invalidArgument(`executionAcl.folders[${i}]`, `must be a string, got ${typeName(f)}`);
        return validateFolder(f, `executionAcl.folders[${i}]`);
      });
    }
    acl = { folders: [...new Set(folders)], isPublic: a.isPublic === true };
  }

  const headers: AliasSpec['proxyMetadata']['headers'] = [];
  if (body.proxyMetadata !== undefined) {
    if (!isObj(body.proxyMetadata)) throw invalidArgument('proxyMetadata', 'must be an object {headers: [{name, value}]}');
    const hs = body.proxyMetadata.headers ?? [];
    if (!Array.isArray(hs)) throw invalidArgument('proxyMetadata.headers', 'must be an array of {name, value}');
    if (hs.length > 32) throw invalidArgument('proxyMetadata.headers', 'must list at most 32 headers');
    hs.forEach((h, i) => {
      const f = `proxyMetadata.headers[${i}]`;
      if (!isObj(h) || typeof h.name !== 'string' || typeof h.value !== 'string') throw invalidArgument(f, 'must be {name: string, value: string}');
      if (!HEADER_NAME_RE.test(h.name)) throw invalidArgument(`${f}.name`, `"${h.name}" is not a valid header name`);
      if (RESERVED_HEADERS.has(h.name.toLowerCase())) throw invalidArgument(`${f}.name`, `"${h.name}" is reserved`);
      if (/[\r\n\0]/.test(h.value)) throw invalidArgument(`${f}.value`, 'must not contain line breaks');
      if (h.name.length > 256 || h.value.length > 4096) throw invalidArgument(f, 'name must be at most 256 and value at most 4096 characters');
      headers.push({ name: h.name, value: h.value });
    });
  }

  let sticky: AliasSpec['sticky'] = null;
  if (body.sticky !== undefined && body.sticky !== null) {
    if (!isObj(body.sticky) || typeof body.sticky.header !== 'string' || !HEADER_NAME_RE.test(body.sticky.header)) {
      throw invalidArgument('sticky.header', 'must name the header that carries the session key, e.g. {"header": "x-session-id"}');
    }
    sticky = { header: body.sticky.header.toLowerCase() };
  }

  let mirror: AliasSpec['mirror'] = null;
  if (body.mirror !== undefined && body.mirror !== null) {
    if (!isObj(body.mirror)) throw invalidArgument('mirror', 'must be an object {nodeId, percent}');
    if (typeof body.mirror.nodeId !== 'string' || !body.mirror.nodeId) throw invalidArgument('mirror.nodeId', 'is required');
    const percent = body.mirror.percent ?? 100;
    if (typeof percent !== 'number' || percent <= 0 || percent > 100) throw invalidArgument('mirror.percent', 'must be a number in (0, 100]');
    mirror = { nodeId: body.mirror.nodeId, percent };
  }

  return {
    name, description: (body.description as string | undefined) ?? '', folderId, projectId,
    backends: backends(body.backends), executionAcl: acl, proxyMetadata: { headers }, sticky, mirror,
  };
}
