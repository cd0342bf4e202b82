// The control plane REST API (/v1/…): one fastify plugin per resource, each over its
// service. It validates and stores resources and tells the controller; it never talks to
// instances itself.
import type { FastifyInstance } from 'fastify';
import { Auth } from '../core/auth.js';
import { BerthError } from '../core/errors.js';
import type { ApiDeps } from './deps.js';
import { registerAccess } from './access.js';
import { Health, errors, ref, registerSchemas, route } from './schemas.js';
import { tokenRoutes } from './tokens.js';
import { checkpointRoutes } from './checkpoints.js';
import { nodeRoutes } from './nodes.js';
import { aliasRoutes } from './aliases.js';
import { secretRoutes } from './secrets.js';
import { folderRoutes } from './folders.js';
import { usageRoutes } from './usage.js';
import { contractRoutes } from './contracts.js';
import { serverRoutes } from './servers.js';

export function registerApi(app: FastifyInstance, deps: ApiDeps): void {
  registerSchemas(app);
  registerAccess(app, deps.auth, deps.store);
  app.get('/v1/health', { config: { public: true }, schema: route({ tags: ['meta'], summary: 'Liveness (no token needed)', public: true, response: { 200: ref(Health), ...errors() } }) }, async () => ({ status: 'ok' }));
  // metrics name every node and alias: only a token that may read every folder sees them here
  // (or run `berth up --metrics-listen` for a scrape address of its own)
  app.get('/metrics', { schema: { hide: true } }, async (req, reply) => {
    if (Auth.foldersFor(req.token, 'read') !== null) {
      throw new BerthError('PERMISSION_DENIED', '/metrics needs a token that may read every folder (role on "*"), or use berth up --metrics-listen', { needs: 'read on *' });
    }
    reply.header('content-type', deps.metrics.registry.contentType);
    return deps.metricsText();
  });
  for (const routes of [tokenRoutes, checkpointRoutes, nodeRoutes, aliasRoutes, secretRoutes, folderRoutes, usageRoutes, contractRoutes, serverRoutes]) routes(app, deps);
}
