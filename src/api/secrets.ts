// Secrets: encrypted values (registry passwords) that belong to one folder; a node may name
// only its own folder's secrets. Values are never returned.
import type { FastifyInstance } from 'fastify';
import { Auth } from '../core/auth.js';
import { BerthError } from '../core/errors.js';
import { validateFolder } from '../core/node-spec.js';
import { auditTarget, defaultFolderOf, requireRole } from './access.js';
import { body, onlyFields, optString } from './request.js';
import type { ApiDeps } from './deps.js';
import { Secret, SecretCreate, SecretDeleted, SecretList, errors, folderQuery, params, query, ref, route } from './schemas.js';

export function secretRoutes(app: FastifyInstance, { config, store, secrets }: ApiDeps): void {
  app.post('/v1/secrets', { config: { audit: 'secret.create' }, schema: route({ tags: ['secrets'], summary: 'Store a secret in a folder (the value is never returned)', body: ref(SecretCreate), response: { 201: ref(Secret), ...errors(400, 403, 409, 413, 415) } }) }, async (req, reply) => {
    const b = body(req);
    onlyFields(b, ['name', 'value', 'folderId', 'projectId']);
    const folderId = validateFolder(optString(b, 'folderId') ?? defaultFolderOf(req.token, config.defaultFolder), 'folderId');
    auditTarget(req, folderId);
    requireRole(req.token, folderId, 'write');
    const projectId = validateFolder(optString(b, 'projectId') ?? config.defaultProject, 'projectId');
    const s = await secrets.create({ folderId, projectId }, optString(b, 'name') as string, b.value, req.token.name);
    auditTarget(req, folderId, s.id);
    reply.code(201);
    return s;
  });

  app.get<{ Querystring: { folderId?: string } }>('/v1/secrets', { schema: route({ tags: ['secrets'], summary: 'List the secrets (names only) of the folders this token may read', querystring: query(folderQuery), response: { 200: ref(SecretList), ...errors() } }) }, async (req) => {
    const readable = Auth.foldersFor(req.token, 'read');
    const folder = req.query.folderId;
    const list = await secrets.list(readable);
    return { secrets: folder === undefined ? list : list.filter((s) => s.folderId === folder) };
  });

  app.delete<{ Params: { name: string }; Querystring: { folderId?: string } }>('/v1/secrets/:name', { config: { audit: 'secret.delete' }, schema: route({ tags: ['secrets'], summary: 'Delete a secret no node uses', params: params({ name: 'secret name' }), querystring: query(folderQuery), response: { 200: ref(SecretDeleted), ...errors(400, 403, 404, 409) } }) }, async (req) => {
    const folderId = validateFolder(req.query.folderId ?? defaultFolderOf(req.token, config.defaultFolder), 'folderId');
    auditTarget(req, folderId);
    const missing = new BerthError('SECRET_NOT_FOUND', `secret ${req.params.name} not found`, { name: req.params.name });
    if (!Auth.can(req.token, folderId, 'read')) throw missing;
    requireRole(req.token, folderId, 'write');
    const users = (await store.listNodes()).filter((n) => n.spec.folderId === folderId
      && (n.spec.kind === 'cell' ? n.spec.environment.passwordSecret : n.spec.passwordSecret) === req.params.name);
    if (users.length) {
      throw new BerthError('SECRET_IN_USE', `secret ${req.params.name} is used by node ${users.map((n) => n.id).join(', ')}`, { nodes: users.map((n) => n.id) });
    }
    const s = await secrets.delete(folderId, req.params.name);
    auditTarget(req, folderId, s.id);
    return { id: s.id, name: s.name, folderId, deleted: true };
  });
}
