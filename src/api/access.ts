// Who may do what on the control API. Authentication is decided on the route that matched,
// deny by default: only routes whose config says `public: true` skip it. Every change
// (a route with `config.audit`) is written to the audit log with its result.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Auth, type Permission } from '../core/auth.js';
import { BerthError } from '../core/errors.js';
import { nowIso } from '../core/ids.js';
import type { TokenRecord } from '../core/types.js';
import type { Store } from '../store/store.js';
import { log } from '../core/log.js';

declare module 'fastify' {
  interface FastifyRequest {
    token: TokenRecord;
    /** What a change acted on, for the audit log; set by the handler as soon as it knows. */
    auditTarget: { folderId: string | null; resourceId: string | null; action?: string };
    auditError: string | null;
  }
  interface FastifyContextConfig {
    /** Reachable without a token (health, the OpenAPI document). */
    public?: boolean;
    /** The audit action a change is recorded under, e.g. `node.create`. */
    audit?: string;
  }
}

export function registerAccess(app: FastifyInstance, auth: Auth, store: Store): void {
  app.decorateRequest('token', null as unknown as TokenRecord);
  app.decorateRequest('auditTarget', null as unknown as FastifyRequest['auditTarget']);
  app.decorateRequest('auditError', null);

  app.addHook('onRequest', async (req, reply) => {
    const config = req.routeOptions.config;
    if (config?.public) return;
    req.token = auth.authenticate(req.headers.authorization);
    const action = config?.audit;
    if (!action) return;
    req.auditTarget = { folderId: null, resourceId: null };
    // 'close' fires for every answer, sent whole or not; the status is final by then
    reply.raw.once('close', () => {
      const status = reply.raw.statusCode;
      void store.insertAudit({
        at: nowIso(), tokenId: req.token.id, tokenName: req.token.name, action: req.auditTarget.action ?? action,
        folderId: req.auditTarget.folderId, resourceId: req.auditTarget.resourceId,
        result: status < 400 ? 'ok' : req.auditError ?? `HTTP_${status}`, status,
      }).catch((err) => log.error({ event: 'audit_write_failed', action, error: (err as Error).message }, 'audit write failed'));
    });
  });
  app.addHook('onError', async (req, _reply, err) => {
    req.auditError = err instanceof BerthError ? err.code : (err as { code?: string }).code ?? 'INTERNAL';
  });
}

/** Names what a change acts on in the audit log. */
export function auditTarget(req: FastifyRequest, folderId: string | null, resourceId: string | null = null): void {
  if (!req.auditTarget) return;
  if (folderId !== null) req.auditTarget.folderId = folderId;
  if (resourceId !== null) req.auditTarget.resourceId = resourceId;
}

/** Names the audit action when one route serves several (POST /v1/nodes/{ref}:suspend and :resume). */
export function auditAction(req: FastifyRequest, action: string): void {
  if (req.auditTarget) req.auditTarget.action = action;
}

/**
 * Checks the token may do `what` in the folder of an existing resource. A resource the token
 * cannot even read is indistinguishable from a missing one: `notFound` is thrown, never a 403.
 */
export function authorize(token: TokenRecord, folderId: string, what: Permission, notFound: () => BerthError): void {
  if (Auth.can(token, folderId, what)) return;
  if (!Auth.can(token, folderId, 'read')) throw notFound();
  throw new BerthError('PERMISSION_DENIED', `this token's role in folder ${folderId} does not allow ${what}`, { folderId, needs: what });
}

/** Checks the token may do `what` in a folder it names itself (creating something there). */
export function requireRole(token: TokenRecord, folderId: string, what: Permission): void {
  if (!Auth.can(token, folderId, what)) {
    throw new BerthError('PERMISSION_DENIED', `this token's role in folder ${folderId} does not allow ${what}`, { folderId, needs: what });
  }
}

export function requireSuperAdmin(token: TokenRecord, what: string): void {
  if (!Auth.isSuperAdmin(token)) throw new BerthError('PERMISSION_DENIED', `only an admin of every folder may ${what}`);
}

/** The folder a request acts in when it names none: the token's first folder. */
export function defaultFolderOf(token: TokenRecord, fallback: string): string {
  return Object.keys(token.roles).find((f) => f !== '*') ?? fallback;
}
