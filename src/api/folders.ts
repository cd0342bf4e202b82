// Folders: their quotas and usage, and the audit log of every control-plane change.
import type { FastifyInstance } from 'fastify';
import { Auth } from '../core/auth.js';
import { BerthError, invalidArgument } from '../core/errors.js';
import { nowIso } from '../core/ids.js';
import { validateFolder } from '../core/node-spec.js';
import { parseQuota } from '../folders/quotas.js';
import { auditTarget, requireSuperAdmin } from './access.js';
import type { ApiDeps } from './deps.js';
import { AuditLog, FolderInfo, QuotaPatch, errors, params, query, ref, route } from './schemas.js';
import { Type } from '@sinclair/typebox';

export function folderRoutes(app: FastifyInstance, { store, quotas }: ApiDeps): void {
  const folderView = async (id: string): Promise<Record<string, unknown>> => ({
    id, quota: await quotas.of(id), usage: await store.folderUsage(id),
  });

  app.get<{ Params: { id: string } }>('/v1/folders/:id', { schema: route({ tags: ['folders'], summary: "A folder's quota and what it uses", params: params({ id: 'folder id' }), response: { 200: ref(FolderInfo), ...errors(400, 403) } }) }, async (req) => {
    const id = validateFolder(req.params.id, 'folderId');
    if (!Auth.can(req.token, id, 'read') && !Auth.can(req.token, id, 'admin')) {
      throw new BerthError('PERMISSION_DENIED', `this token holds no readable role in folder ${id}`, { folderId: id });
    }
    return folderView(id);
  });

  app.patch<{ Params: { id: string } }>('/v1/folders/:id/quota', { config: { audit: 'folder.set-quota' }, schema: route({ tags: ['folders'], summary: "Change a folder's quota (admin of every folder)", params: params({ id: 'folder id' }), body: ref(QuotaPatch), response: { 200: ref(FolderInfo), ...errors(400, 403, 413, 415) } }) }, async (req) => {
    const id = validateFolder(req.params.id, 'folderId');
    auditTarget(req, id, id);
    requireSuperAdmin(req.token, 'set quotas');
    const change = parseQuota(req.body);
    await store.setQuota(id, { ...(await store.getQuota(id)), ...change }, nowIso());
    return folderView(id);
  });

  app.get<{ Querystring: { folderId?: string; limit?: string; before?: string } }>('/v1/audit', { schema: route({
      tags: ['folders'], summary: 'Control-plane changes, newest first (admins see their folders)',
      querystring: query({
        folderId: Type.String({ description: 'one folder (default: every folder this token administers)' }),
        limit: Type.String({ pattern: '^[0-9]+$', description: 'entries, 1–1000 (default 100)' }),
        before: Type.String({ pattern: '^[0-9]+$', description: 'entries older than this entry id (paging)' }),
      }),
      response: { 200: ref(AuditLog), ...errors(400, 403) },
    }) }, async (req) => {
    const q = req.query;
    const limit = q.limit === undefined ? 100 : Number(q.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw invalidArgument('limit', 'must be an integer between 1 and 1000');
    const before = q.before === undefined ? undefined : Number(q.before);
    if (before !== undefined && (!Number.isInteger(before) || before < 0)) throw invalidArgument('before', 'must be a non-negative integer (an entry id)');
    let folders = Auth.foldersFor(req.token, 'admin');
    if (folders !== null && folders.length === 0) throw new BerthError('PERMISSION_DENIED', 'the audit log is for admins', { needs: 'admin' });
    if (q.folderId !== undefined) {
      const f = validateFolder(q.folderId, 'folderId');
      if (folders !== null && !folders.includes(f)) throw new BerthError('PERMISSION_DENIED', `this token is not an admin of folder ${f}`, { folderId: f, needs: 'admin' });
      folders = [f];
    }
    return { entries: await store.listAudit({ folders, limit, before }) };
  });
}
