// GET /v1/servers: the Berth servers sharing this store and which one leads (src/peers/,
// docs/cluster.md); one server on SQLite lists itself. Infrastructure: admin on every folder only.
import type { FastifyInstance } from 'fastify';
import type { ApiDeps } from './deps.js';
import { requireSuperAdmin } from './access.js';
import { ServerList, errors, ref, route } from './schemas.js';

export function serverRoutes(app: FastifyInstance, { servers }: ApiDeps): void {
  app.get('/v1/servers', { schema: route({ tags: ['meta'], summary: 'The Berth servers sharing this store, and which one leads (admin)', response: { 200: ref(ServerList), ...errors(403) } }) }, async (req) => {
    requireSuperAdmin(req.token, 'list the servers');
    return { servers: await servers() };
  });
}
