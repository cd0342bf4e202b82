// Tokens: created and revoked by an admin of every folder; each holds a role per folder.
import type { FastifyInstance } from 'fastify';
import { BerthError, invalidArgument } from '../core/errors.js';
import { validateFolder, typeName } from '../core/node-spec.js';
import { ROLES, type Role, type TokenRecord } from '../core/types.js';
import { auditTarget, defaultFolderOf, requireSuperAdmin } from './access.js';
import { body, onlyFields, optString } from './request.js';
import type { ApiDeps } from './deps.js';
import { TokenCreate, TokenCreated, TokenDeleted, TokenList, Whoami, errors, params, ref, route } from './schemas.js';

const MAX_TOKEN_NAME = 63;
const MAX_GRANTS = 100;

function parseRole(v: unknown, field: string): Role {
  if (typeof v !== 'string' || !(ROLES as readonly string[]).includes(v)) throw invalidArgument(field, `must be one of ${ROLES.join(', ')}`);
  return v as Role;
}

function parseFolder(f: unknown, field: string): string {
  if (typeof f !== 'string') throw invalidArgument(field, `must be a string, got ${typeName(f)}`);
  return f === '*' ? f : validateFolder(f, field);
}

/** `{roles: {folder: role}}`, or `{folders: [...], role}` (role defaults to editor). */
function parseRoles(b: Record<string, unknown>): Record<string, Role> {
  const roles: Record<string, Role> = {};
  if (b.roles !== undefined) {
    if (typeof b.roles !== 'object' || b.roles === null || Array.isArray(b.roles)) throw invalidArgument('roles', 'must be an object {folderId: role}');
    for (const [f, r] of Object.entries(b.roles)) roles[parseFolder(f, `roles.${f}`)] = parseRole(r, `roles.${f}`);
  } else {
    if (!Array.isArray(b.folders) || b.folders.length === 0) throw invalidArgument('folders', 'must be a non-empty array of folder ids (or send roles)');
    const role = b.role === undefined ? 'editor' : parseRole(b.role, 'role');
    b.folders.forEach((f, i) => { roles[parseFolder(f, `folders[${i}]`)] = role; });
  }
  const n = Object.keys(roles).length;
  if (n === 0) throw invalidArgument('roles', 'must grant at least one folder');
  if (n > MAX_GRANTS) throw invalidArgument('roles', `may grant at most ${MAX_GRANTS} folders`);
  return roles;
}

export function tokenView(t: TokenRecord): Record<string, unknown> {
  return { id: t.id, name: t.name, roles: t.roles, folders: Object.keys(t.roles), admin: t.roles['*'] === 'admin', createdAt: t.createdAt };
}

export function tokenRoutes(app: FastifyInstance, { config, store, auth }: ApiDeps): void {
  app.get('/v1/whoami', { schema: route({ tags: ['tokens'], summary: 'The calling token', response: { 200: ref(Whoami), ...errors() } }) }, async (req) =>
    ({ ...tokenView(req.token), defaultFolder: defaultFolderOf(req.token, config.defaultFolder) }));

  app.post('/v1/tokens', { config: { audit: 'token.create' }, schema: route({ tags: ['tokens'], summary: 'Create a token with a role per folder (admin)', body: ref(TokenCreate), response: { 201: ref(TokenCreated), ...errors(400, 403, 413, 415) } }) }, async (req, reply) => {
    requireSuperAdmin(req.token, 'create tokens');
    const b = body(req);
    onlyFields(b, ['name', 'roles', 'folders', 'role']);
    const name = optString(b, 'name', MAX_TOKEN_NAME) ?? 'token';
    const { record, token } = await auth.create(name, parseRoles(b));
    auditTarget(req, null, record.id);
    reply.code(201);
    return { ...tokenView(record), token };
  });

  app.get('/v1/tokens', { schema: route({ tags: ['tokens'], summary: 'List tokens (admin)', response: { 200: ref(TokenList), ...errors(403) } }) }, async (req) => {
    requireSuperAdmin(req.token, 'list tokens');
    return { tokens: (await store.listTokens()).map(tokenView) };
  });

  app.delete<{ Params: { id: string } }>('/v1/tokens/:id', { config: { audit: 'token.delete' }, schema: route({ tags: ['tokens'], summary: 'Revoke a token (admin)', params: params({ id: 'token id' }), response: { 200: ref(TokenDeleted), ...errors(403, 404) } }) }, async (req) => {
    requireSuperAdmin(req.token, 'revoke tokens');
    auditTarget(req, null, req.params.id);
    if (!(await auth.remove(req.params.id))) throw new BerthError('TOKEN_NOT_FOUND', `token ${req.params.id} not found`, { tokenId: req.params.id });
    return { id: req.params.id, deleted: true };
  });
}
