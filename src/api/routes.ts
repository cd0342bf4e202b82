// The control plane REST API (/v1/…). Validates and stores resources, and tells the
// controller; it never talks to instances itself.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Readable } from 'node:stream';
import { Auth } from '../core/auth.js';
import type { Config } from '../core/config.js';
import { BerthError, invalidArgument } from '../core/errors.js';
import { newId, nowIso } from '../core/ids.js';
import { parseNodeSpec, typeName, validateFolder } from '../core/node-spec.js';
import type { NodeRecord, TokenRecord } from '../core/types.js';
import type { Store } from '../store/store.js';
import type { Controller } from '../controller/controller.js';
import type { CheckpointService } from '../checkpoints/service.js';
import { notebookCells, splitScript } from '../checkpoints/cells.js';
import type { Secrets } from '../secrets/secrets.js';
import type { AliasTable } from '../aliases/table.js';
import type { Metrics } from '../core/metrics.js';
import { parseAliasSpec } from '../core/alias-spec.js';
import type { AliasRecord, AliasSpec } from '../core/types.js';

export interface ApiDeps {
  config: Config;
  store: Store;
  auth: Auth;
  controller: Controller;
  checkpoints: CheckpointService;
  secrets: Secrets;
  aliases: AliasTable;
  metrics: Metrics;
}

declare module 'fastify' {
  interface FastifyRequest { token: TokenRecord }
}

type Body = Record<string, unknown>;

function body(req: FastifyRequest): Body {
  const b = req.body;
  if (b === undefined || b === null) return {};
  if (typeof b !== 'object' || Array.isArray(b)) throw invalidArgument('body', `must be a JSON object, got ${typeName(b)}`);
  return b as Body;
}

function optString(b: Body, key: string): string | undefined {
  const v = b[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw invalidArgument(key, `must be a string, got ${typeName(v)}`);
  return v;
}

function requireFolder(token: TokenRecord, folderId: string): void {
  if (!Auth.holdsFolder(token, folderId)) {
    throw new BerthError('PERMISSION_DENIED', `this token does not grant access to folder ${folderId}`, { folderId });
  }
}

function requireAdmin(token: TokenRecord): void {
  if (!token.admin) throw new BerthError('PERMISSION_DENIED', 'only an admin token may manage tokens');
}

export function registerRoutes(app: FastifyInstance, deps: ApiDeps): void {
  const { config, store, auth, controller, checkpoints, secrets, aliases, metrics } = deps;

  app.decorateRequest('token', null as unknown as TokenRecord);
  app.addHook('onRequest', async (req) => {
    if (req.url.startsWith('/v1/') && req.url !== '/v1/health') req.token = auth.authenticate(req.headers.authorization);
  });

  const defaultFolderOf = (token: TokenRecord): string =>
    token.admin || token.folders.includes('*') || token.folders.length === 0 ? config.defaultFolder : token.folders[0]!;

  app.get('/v1/health', { schema: { tags: ['meta'], summary: 'Liveness' } }, async () => ({ status: 'ok' }));

  app.get('/v1/whoami', { schema: { tags: ['meta'], summary: 'The calling token' } }, async (req) => {
    const { hash: _hash, ...t } = req.token;
    return { ...t, defaultFolder: defaultFolderOf(req.token) };
  });

  // ---- tokens ----
  app.post('/v1/tokens', { schema: { tags: ['tokens'], summary: 'Create a token for some folders (admin)' } }, async (req, reply) => {
    requireAdmin(req.token);
    const b = body(req);
    const name = optString(b, 'name') ?? 'token';
    if (!Array.isArray(b.folders) || b.folders.length === 0) throw invalidArgument('folders', 'must be a non-empty array of folder ids');
    const folders = b.folders.map((f, i) => {
      if (typeof f !== 'string') throw invalidArgument(`folders[${i}]`, `must be a string, got ${typeName(f)}`);
      return f === '*' ? f : validateFolder(f, `folders[${i}]`);
    });
    const { record, token } = await auth.create(name, folders, false);
    reply.code(201);
    return { id: record.id, name: record.name, folders: record.folders, admin: record.admin, createdAt: record.createdAt, token };
  });

  app.get('/v1/tokens', { schema: { tags: ['tokens'], summary: 'List tokens (admin)' } }, async (req) => {
    requireAdmin(req.token);
    return { tokens: (await store.listTokens()).map(({ hash: _h, ...t }) => t) };
  });

  app.delete<{ Params: { id: string } }>('/v1/tokens/:id', { schema: { tags: ['tokens'], summary: 'Revoke a token (admin)' } }, async (req) => {
    requireAdmin(req.token);
    if (!(await auth.remove(req.params.id))) throw new BerthError('TOKEN_NOT_FOUND', `token ${req.params.id} not found`, { tokenId: req.params.id });
    return { id: req.params.id, deleted: true };
  });

  // ---- checkpoints ----
  app.post('/v1/checkpoints', { schema: { tags: ['checkpoints'], summary: 'Run cells in a fresh interpreter and save the namespace' } }, async (req, reply) => {
    const b = body(req);
    const folderId = validateFolder(optString(b, 'folderId') ?? defaultFolderOf(req.token), 'folderId');
    requireFolder(req.token, folderId);
    let cells: string[];
    let source: 'script' | 'notebook' = 'script';
    if (b.cells !== undefined) {
      if (!Array.isArray(b.cells) || b.cells.some((c) => typeof c !== 'string')) throw invalidArgument('cells', 'must be an array of strings');
      cells = b.cells as string[];
    } else if (b.script !== undefined) {
      if (typeof b.script !== 'string') throw invalidArgument('script', `must be a string, got ${typeName(b.script)}`);
      cells = splitScript(b.script);
    } else if (b.notebook !== undefined) {
      cells = notebookCells(b.notebook);
      source = 'notebook';
    } else {
      throw invalidArgument('script', 'send one of "script" (cells split by "# %%"), "notebook" (.ipynb JSON) or "cells"');
    }
    for (const k of Object.keys(b)) {
      if (!['cells', 'script', 'notebook', 'servingCell', 'name', 'python', 'folderId', 'projectId'].includes(k)) throw invalidArgument(k, 'is not a known field');
    }
    let servingCell = cells.length - 1;
    if (b.servingCell !== undefined) {
      if (typeof b.servingCell !== 'number' || !Number.isInteger(b.servingCell)) throw invalidArgument('servingCell', `must be an integer, got ${typeName(b.servingCell)}`);
      servingCell = b.servingCell < 0 ? cells.length + b.servingCell : b.servingCell;
    }
    const { checkpoint, log } = await checkpoints.runAndSave({
      cells, servingCell, source,
      name: optString(b, 'name') ?? null,
      python: optString(b, 'python') ?? config.python,
      folderId, projectId: validateFolder(optString(b, 'projectId') ?? config.defaultProject, 'projectId'),
      createdBy: req.token.name,
    });
    reply.code(201);
    return { ...checkpoint, log };
  });

  app.addContentTypeParser('application/vnd.berth.checkpoint', (_req, payload, done) => done(null, payload));
  app.post('/v1/checkpoints::upload', { schema: { tags: ['checkpoints'], summary: 'Save a live kernel snapshot (metadata line + dill blob)' } }, async (req, reply) => {
    if (!String(req.headers['content-type']).startsWith('application/vnd.berth.checkpoint')) {
      throw new BerthError('UNSUPPORTED_MEDIA_TYPE', 'upload with Content-Type: application/vnd.berth.checkpoint');
    }
    const q = req.query as Record<string, string | undefined>;
    const folderId = validateFolder(q.folderId ?? defaultFolderOf(req.token), 'folderId');
    requireFolder(req.token, folderId);
    const checkpoint = await checkpoints.upload(req.body as Readable, { createdBy: req.token.name, folderId, projectId: config.defaultProject });
    reply.code(201);
    return checkpoint;
  });

  app.get('/v1/checkpoints', { schema: { tags: ['checkpoints'], summary: 'List checkpoints' } }, async (req) => {
    const all = await store.listCheckpoints();
    return { checkpoints: all.filter((c) => Auth.holdsFolder(req.token, c.folderId)) };
  });

  app.get<{ Params: { ref: string } }>('/v1/checkpoints/:ref', { schema: { tags: ['checkpoints'], summary: 'Get a checkpoint by id or name' } }, async (req) => {
    const c = await checkpoints.resolve(req.params.ref);
    requireFolder(req.token, c.folderId);
    return c;
  });

  app.patch<{ Params: { ref: string } }>('/v1/checkpoints/:ref', { schema: { tags: ['checkpoints'], summary: 'Pin (name), rename or unpin (name: null)' } }, async (req) => {
    const b = body(req);
    if (!('name' in b)) throw invalidArgument('name', 'is required (a string to pin or rename, null to unpin)');
    if (b.name !== null && typeof b.name !== 'string') throw invalidArgument('name', `must be a string or null, got ${typeName(b.name)}`);
    const c = await checkpoints.resolve(req.params.ref);
    requireFolder(req.token, c.folderId);
    if (b.name === null && (await store.listNodes()).some((n) => n.spec.kind === 'cell' && n.spec.checkpointId === c.id)) {
      throw new BerthError('CHECKPOINT_IN_USE', 'a checkpoint that backs a node cannot be unpinned', { checkpointId: c.id });
    }
    return checkpoints.rename(c.id, b.name as string | null);
  });

  app.delete<{ Params: { ref: string } }>('/v1/checkpoints/:ref', { schema: { tags: ['checkpoints'], summary: 'Delete a checkpoint no node uses' } }, async (req) => {
    const c = await checkpoints.resolve(req.params.ref);
    requireFolder(req.token, c.folderId);
    await checkpoints.delete(c.id);
    return { id: c.id, deleted: true };
  });

  // ---- nodes ----
  const nodeView = (n: NodeRecord): Record<string, unknown> => {
    const live = controller.nodeView(n.id);
    return {
      id: n.id, ...n.spec, status: live?.status ?? n.status,
      createdAt: n.createdAt, updatedAt: n.updatedAt, createdBy: n.createdBy,
      transitions: n.transitions, instances: live?.instances ?? [], queued: live?.queued ?? 0,
      relatedAliases: aliases.relatedTo(n.id), warnings: live?.warnings ?? [],
    };
  };

  const findNode = async (ref: string, token: TokenRecord): Promise<NodeRecord> => {
    let n = await store.getNode(ref);
    if (!n) {
      const named = (await store.listNodes()).filter((x) => x.spec.name === ref && Auth.holdsFolder(token, x.spec.folderId));
      if (named.length === 1) n = named[0];
    }
    if (!n) throw new BerthError('NODE_NOT_FOUND', `node ${ref} not found`, { nodeId: ref });
    requireFolder(token, n.spec.folderId);
    return n;
  };

  app.post('/v1/nodes', { schema: { tags: ['nodes'], summary: 'Create a node' } }, async (req, reply) => {
    const spec = parseNodeSpec(req.body, { defaultFolder: defaultFolderOf(req.token), defaultProject: config.defaultProject, defaultPython: config.python });
    requireFolder(req.token, spec.folderId);
    if (spec.kind === 'cell') {
      let checkpoint;
      try {
        checkpoint = await checkpoints.resolve(spec.checkpointId, spec.projectId);
      } catch (err) {
        if (err instanceof BerthError) throw new BerthError(err.code, err.message, { ...err.details, field: 'checkpointId' });
        throw err;
      }
      if (!checkpoint.pinned) {
        throw new BerthError('CHECKPOINT_NOT_PINNED', `checkpoint ${checkpoint.id} is not pinned: pin it with a name first (berth checkpoint pin ${checkpoint.id} NAME)`,
          { field: 'checkpointId', checkpointId: checkpoint.id });
      }
      spec.checkpointId = checkpoint.id;
    } else if (!controller.supportsImages) {
      throw new BerthError('RUNTIME_UNSUPPORTED', `image nodes need a container runtime; this Berth runs the ${controller.runtimeName} runtime (start it with --runtime docker)`,
        { field: 'kind', runtime: controller.runtimeName });
    }
    const secret = spec.kind === 'cell' ? spec.environment.passwordSecret : spec.passwordSecret;
    if (secret && !(await secrets.exists(spec.projectId, secret))) {
      throw new BerthError('SECRET_NOT_FOUND', `secret ${secret} not found`, { field: spec.kind === 'cell' ? 'environment.passwordSecret' : 'passwordSecret', name: secret });
    }
    if ((await store.listNodes()).some((n) => n.spec.folderId === spec.folderId && n.spec.name === spec.name)) {
      throw new BerthError('NAME_TAKEN', `a node named "${spec.name}" already exists in folder ${spec.folderId}`, { field: 'name', name: spec.name });
    }
    const now = nowIso();
    const record: NodeRecord = {
      id: newId(), spec, status: 'Created', transitions: [{ status: 'Created', at: now }],
      createdAt: now, updatedAt: now, createdBy: req.token.name,
    };
    await store.insertNode(record);
    controller.addNode(record);
    reply.code(201);
    return nodeView(record);
  });

  // ---- secrets ----
  app.post('/v1/secrets', { schema: { tags: ['secrets'], summary: 'Store a secret (the value is never returned)' } }, async (req, reply) => {
    const b = body(req);
    for (const k of Object.keys(b)) if (!['name', 'value', 'projectId'].includes(k)) throw invalidArgument(k, 'is not a known field');
    const projectId = validateFolder(optString(b, 'projectId') ?? config.defaultProject, 'projectId');
    const s = await secrets.create(projectId, optString(b, 'name') as string, b.value, req.token.name);
    reply.code(201);
    return s;
  });

  app.get('/v1/secrets', { schema: { tags: ['secrets'], summary: 'List secrets (names only)' } }, async () => ({ secrets: await secrets.list() }));

  app.delete<{ Params: { name: string } }>('/v1/secrets/:name', { schema: { tags: ['secrets'], summary: 'Delete a secret no node uses' } }, async (req) => {
    const users = (await store.listNodes()).filter((n) => (n.spec.kind === 'cell' ? n.spec.environment.passwordSecret : n.spec.passwordSecret) === req.params.name);
    if (users.length) {
      throw new BerthError('SECRET_IN_USE', `secret ${req.params.name} is used by node ${users.map((n) => n.id).join(', ')}`, { nodes: users.map((n) => n.id) });
    }
    const s = await secrets.delete(config.defaultProject, req.params.name);
    return { id: s.id, name: s.name, deleted: true };
  });

  app.get('/v1/nodes', { schema: { tags: ['nodes'], summary: 'List nodes' } }, async (req) => {
    const nodes = (await store.listNodes()).filter((n) => Auth.holdsFolder(req.token, n.spec.folderId));
    return { nodes: nodes.map(nodeView) };
  });

  app.get<{ Params: { ref: string } }>('/v1/nodes/:ref', { schema: { tags: ['nodes'], summary: 'Get a node with its instances' } }, async (req) => {
    return nodeView(await findNode(req.params.ref, req.token));
  });

  app.delete<{ Params: { ref: string } }>('/v1/nodes/:ref', { schema: { tags: ['nodes'], summary: 'Delete a node and stop its instances' } }, async (req) => {
    const n = await findNode(req.params.ref, req.token);
    const users = aliases.relatedTo(n.id);
    if (users.length) {
      throw new BerthError('NODE_IN_USE', `node ${n.id} is used by alias${users.length > 1 ? 'es' : ''} ${users.join(', ')}: move the alias to another node first`,
        { nodeId: n.id, aliases: users });
    }
    await controller.deleteNode(n.id);
    await store.deleteNode(n.id);
    return { id: n.id, deleted: true };
  });

  app.get<{ Params: { ref: string }; Querystring: { instance?: string; lines?: string } }>('/v1/nodes/:ref/logs',
    { schema: { tags: ['nodes'], summary: "The instances' logs (what the cell printed)" } }, async (req) => {
      const n = await findNode(req.params.ref, req.token);
      const lines = req.query.lines === undefined ? 200 : Number(req.query.lines);
      if (!Number.isInteger(lines) || lines < 1 || lines > 100_000) throw invalidArgument('lines', 'must be an integer between 1 and 100000');
      const ids = req.query.instance ? [req.query.instance] : controller.instanceIds(n.id);
      if (req.query.instance && !controller.instanceIds(n.id).includes(req.query.instance)) {
        throw new BerthError('INSTANCE_NOT_FOUND', `instance ${req.query.instance} not found on node ${n.id}`, { instanceId: req.query.instance });
      }
      const logs = await Promise.all(ids.map(async (id) => ({ instanceId: id, text: await controller.logs(n.id, id, lines) })));
      return { nodeId: n.id, logs };
    });

  // ---- aliases ----
  /** Backends must exist, be reachable by the caller, and all be of one kind. */
  const checkAliasNodes = async (spec: AliasSpec, token: TokenRecord): Promise<void> => {
    const kinds = new Set<string>();
    for (const [i, b] of spec.backends.entries()) {
      const n = await store.getNode(b.nodeId);
      if (!n) throw new BerthError('NODE_NOT_FOUND', `backends[${i}]: node ${b.nodeId} not found`, { field: `backends[${i}].nodeId`, nodeId: b.nodeId });
      requireFolder(token, n.spec.folderId);
      kinds.add(n.spec.kind);
    }
    if (kinds.size > 1) throw invalidArgument('backends', 'mixes cell and image nodes: an alias serves one kind');
    if (spec.mirror) {
      const shadow = await store.getNode(spec.mirror.nodeId);
      if (!shadow) throw new BerthError('NODE_NOT_FOUND', `mirror: node ${spec.mirror.nodeId} not found`, { field: 'mirror.nodeId', nodeId: spec.mirror.nodeId });
      if (shadow.spec.kind !== 'cell' || !kinds.has('cell')) throw invalidArgument('mirror.nodeId', 'mirroring compares execute answers: it works for aliases over cell nodes');
    }
  };

  const aliasView = (a: AliasRecord): Record<string, unknown> => ({
    id: a.id, ...a.spec, createdAt: a.createdAt, updatedAt: a.updatedAt, createdBy: a.createdBy,
    status: {
      backends: a.spec.backends.map((b) => ({ ...b, nodeStatus: controller.nodeView(b.nodeId)?.status ?? 'Deleted',
        healthyInstances: controller.route(b.nodeId)?.dispatcher.healthyCount ?? 0 })),
      mirror: aliases.mirrorStatus(a.spec.name),
    },
  });

  const findAlias = async (name: string, token: TokenRecord): Promise<AliasRecord> => {
    const a = (await store.listAliases()).find((x) => x.spec.name === name || x.id === name);
    if (!a) throw new BerthError('ALIAS_NOT_FOUND', `alias ${name} not found`, { aliasName: name });
    requireFolder(token, a.spec.folderId);
    return a;
  };

  app.post('/v1/aliases', { schema: { tags: ['aliases'], summary: 'Create an alias over one or more nodes' } }, async (req, reply) => {
    const spec = parseAliasSpec(req.body, { defaultFolder: defaultFolderOf(req.token), defaultProject: config.defaultProject });
    requireFolder(req.token, spec.folderId);
    if ((await store.listAliases()).some((a) => a.spec.name === spec.name)) {
      throw new BerthError('NAME_TAKEN', `an alias named "${spec.name}" already exists`, { field: 'name', name: spec.name });
    }
    await checkAliasNodes(spec, req.token);
    const now = nowIso();
    const record: AliasRecord = { id: newId(), spec, createdAt: now, updatedAt: now, createdBy: req.token.name };
    await store.insertAlias(record);
    aliases.set(record);
    reply.code(201);
    return aliasView(record);
  });

  app.get('/v1/aliases', { schema: { tags: ['aliases'], summary: 'List aliases' } }, async (req) => ({
    aliases: (await store.listAliases()).filter((a) => Auth.holdsFolder(req.token, a.spec.folderId)).map(aliasView),
  }));

  app.get<{ Params: { name: string } }>('/v1/aliases/:name', { schema: { tags: ['aliases'], summary: 'Get an alias with its backends\' status' } }, async (req) =>
    aliasView(await findAlias(req.params.name, req.token)));

  app.patch<{ Params: { name: string } }>('/v1/aliases/:name', { schema: { tags: ['aliases'], summary: 'Change backends, weights, ACL, headers: applied atomically' } }, async (req) => {
    const current = await findAlias(req.params.name, req.token);
    const b = body(req);
    for (const k of ['name', 'folderId', 'projectId']) if (k in b && b[k] !== (current.spec as unknown as Record<string, unknown>)[k]) throw invalidArgument(k, 'cannot be changed: create a new alias');
    const spec = parseAliasSpec({ ...current.spec, ...b }, { defaultFolder: current.spec.folderId, defaultProject: current.spec.projectId });
    await checkAliasNodes(spec, req.token);
    const record: AliasRecord = { ...current, spec, updatedAt: nowIso() };
    await store.updateAlias(record);
    aliases.set(record); // one swap: the next call sees the whole new alias
    return aliasView(record);
  });

  app.delete<{ Params: { name: string } }>('/v1/aliases/:name', { schema: { tags: ['aliases'], summary: 'Delete an alias (its nodes stay)' } }, async (req) => {
    const a = await findAlias(req.params.name, req.token);
    await store.deleteAlias(a.id);
    aliases.delete(a.spec.name);
    metrics.forgetAlias(a.spec.name);
    return { id: a.id, name: a.spec.name, deleted: true };
  });
}
