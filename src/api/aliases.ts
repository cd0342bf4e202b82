// Aliases: stable names over weighted nodes. An alias routes and mirrors only to nodes of
// its own folder; changes are applied to the routing table in one swap.
import type { FastifyInstance } from 'fastify';
import { Auth } from '../core/auth.js';
import { BerthError, invalidArgument } from '../core/errors.js';
import { newId, nowIso } from '../core/ids.js';
import { parseAliasSpec } from '../core/alias-spec.js';
import type { AliasRecord, AliasSpec, CellNodeSpec, NodeRecord, TokenRecord } from '../core/types.js';
import { contractDifference } from '../contracts/compat.js';
import { auditTarget, authorize, defaultFolderOf, requireRole } from './access.js';
import { body } from './request.js';
import type { ApiDeps } from './deps.js';
import { Alias, AliasDeleted, AliasList, AliasPatch, AliasSpecIn, errors, folderQuery, params, query, ref, route } from './schemas.js';

const notFound = (name: string) => (): BerthError => new BerthError('ALIAS_NOT_FOUND', `alias ${name} not found`, { aliasName: name });

export function aliasRoutes(app: FastifyInstance, { config, store, controller, aliases, metrics }: ApiDeps): void {
  /** Backends and the mirror must be nodes of the alias's own folder, all of one kind. */
  const checkAliasNodes = async (spec: AliasSpec): Promise<void> => {
    const sameFolder = async (nodeId: string, field: string) => {
      const n = await store.getNode(nodeId);
      // another folder's node is reported exactly like a missing one
      if (!n || n.spec.folderId !== spec.folderId) {
        throw new BerthError('NODE_NOT_FOUND', `${field}: node ${nodeId} not found in folder ${spec.folderId}`, { field, nodeId });
      }
      return n;
    };
    const kinds = new Set<string>();
    const cells: Array<{ field: string; node: NodeRecord }> = [];
    for (const [i, b] of spec.backends.entries()) {
      const field = `backends[${i}].nodeId`;
      const node = await sameFolder(b.nodeId, field);
      kinds.add(node.spec.kind);
      if (node.spec.kind === 'cell') cells.push({ field, node });
    }
    if (kinds.size > 1) throw invalidArgument('backends', 'mixes cell and image nodes: an alias serves one kind');
    if (spec.mirror) {
      const shadow = await sameFolder(spec.mirror.nodeId, 'mirror.nodeId');
      if (shadow.spec.kind !== 'cell' || !kinds.has('cell')) throw invalidArgument('mirror.nodeId', 'mirroring compares execute answers: it works for aliases over cell nodes');
      cells.push({ field: 'mirror.nodeId', node: shadow });
    }
    // callers of an alias see one contract: every cell backend must declare the same variables
    const first = cells[0];
    for (const other of cells.slice(1)) {
      const diff = contractDifference(first!.node.spec as CellNodeSpec, other.node.spec as CellNodeSpec);
      if (diff) {
        throw new BerthError('CONTRACT_MISMATCH',
          `${other.field}: node ${other.node.id} does not have the contract of node ${first!.node.id}: ${diff.message}; an alias needs backends callers can call alike`,
          { field: other.field, nodeId: other.node.id, otherNodeId: first!.node.id, variable: diff.variable, side: diff.side, expected: diff.expected, got: diff.got });
      }
    }
  };

  const aliasView = (a: AliasRecord): Record<string, unknown> => ({
    id: a.id, ...a.spec, createdAt: a.createdAt, updatedAt: a.updatedAt, createdBy: a.createdBy,
    status: {
      backends: a.spec.backends.map((b) => {
        const live = controller.nodeView(b.nodeId);
        return { ...b, nodeStatus: live?.status ?? 'Deleted', healthyInstances: live?.instances.filter((i) => i.status === 'Healthy').length ?? 0 };
      }),
      mirror: aliases.mirrorStatus(a.spec.name),
    },
  });

  const findAlias = async (name: string, token: TokenRecord, what: 'read' | 'write'): Promise<AliasRecord> => {
    const a = (await store.listAliases()).find((x) => x.spec.name === name || x.id === name);
    if (!a) throw notFound(name)();
    authorize(token, a.spec.folderId, what, notFound(name));
    return a;
  };

  app.post('/v1/aliases', { config: { audit: 'alias.create' }, schema: route({ tags: ['aliases'], summary: 'Create an alias over one or more nodes', body: ref(AliasSpecIn), response: { 201: ref(Alias), ...errors(400, 403, 404, 409, 413, 415) } }) }, async (req, reply) => {
    const spec = parseAliasSpec(req.body, { defaultFolder: defaultFolderOf(req.token, config.defaultFolder), defaultProject: config.defaultProject });
    auditTarget(req, spec.folderId);
    requireRole(req.token, spec.folderId, 'write');
    await checkAliasNodes(spec);
    const now = nowIso();
    const record: AliasRecord = { id: newId(), spec, createdAt: now, updatedAt: now, createdBy: req.token.name };
    await store.insertAlias(record); // decides NAME_TAKEN
    auditTarget(req, spec.folderId, record.id);
    aliases.set(record);
    reply.code(201);
    return aliasView(record);
  });

  app.get<{ Querystring: { folderId?: string } }>('/v1/aliases', { schema: route({ tags: ['aliases'], summary: 'List the aliases of the folders this token may read', querystring: query(folderQuery), response: { 200: ref(AliasList), ...errors() } }) }, async (req) => {
    const folder = req.query.folderId;
    return { aliases: (await store.listAliases()).filter((a) => Auth.can(req.token, a.spec.folderId, 'read') && (folder === undefined || a.spec.folderId === folder)).map(aliasView) };
  });

  app.get<{ Params: { name: string } }>('/v1/aliases/:name', { schema: route({ tags: ['aliases'], summary: 'Get an alias with its backends\' status', params: params({ name: 'alias name or id' }), response: { 200: ref(Alias), ...errors(404) } }) }, async (req) =>
    aliasView(await findAlias(req.params.name, req.token, 'read')));

  app.patch<{ Params: { name: string } }>('/v1/aliases/:name', { config: { audit: 'alias.update' }, schema: route({ tags: ['aliases'], summary: 'Change backends, weights, ACL, headers: applied atomically', params: params({ name: 'alias name or id' }), body: ref(AliasPatch), response: { 200: ref(Alias), ...errors(400, 403, 404, 409, 413, 415) } }) }, async (req) => {
    const current = await findAlias(req.params.name, req.token, 'write');
    auditTarget(req, current.spec.folderId, current.id);
    const b = body(req);
    for (const k of ['name', 'folderId', 'projectId']) if (k in b && b[k] !== (current.spec as unknown as Record<string, unknown>)[k]) throw invalidArgument(k, 'cannot be changed: create a new alias');
    const spec = parseAliasSpec({ ...current.spec, ...b }, { defaultFolder: current.spec.folderId, defaultProject: current.spec.projectId });
    await checkAliasNodes(spec);
    const record: AliasRecord = { ...current, spec, updatedAt: nowIso() };
    await store.updateAlias(record);
    aliases.set(record); // one swap: the next call sees the whole new alias
    return aliasView(record);
  });

  app.delete<{ Params: { name: string } }>('/v1/aliases/:name', { config: { audit: 'alias.delete' }, schema: route({ tags: ['aliases'], summary: 'Delete an alias (its nodes stay)', params: params({ name: 'alias name or id' }), response: { 200: ref(AliasDeleted), ...errors(403, 404) } }) }, async (req) => {
    const a = await findAlias(req.params.name, req.token, 'write');
    auditTarget(req, a.spec.folderId, a.id);
    await store.deleteAlias(a.id);
    aliases.delete(a.spec.name);
    metrics.forgetAlias(a.spec.name);
    return { id: a.id, name: a.spec.name, deleted: true };
  });
}
