// Routes for Berth's own instances, not for users (issue 13). GET
// /internal/v1/instances/{instanceId}/checkpoint streams the checkpoint blob of that instance's
// node revision to its worker, which verifies the sha256. The only credential accepted is the
// instance's own secret (`Authorization: Bearer <secret>`): user tokens, even an admin's, and
// another instance's secret are refused alike, with no hint whether the instance exists.
import { createReadStream } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import { BerthError } from '../core/errors.js';
import type { CheckpointGrants } from '../runtimes/checkpoint-grants.js';
import { errors, params, route } from './schemas.js';

export function internalRoutes(app: FastifyInstance, grants: CheckpointGrants): void {
  app.get<{ Params: { instanceId: string } }>('/internal/v1/instances/:instanceId/checkpoint', {
    // public: the access hook would take a user token; this route checks the instance secret itself
    config: { public: true },
    // 200: the blob (application/octet-stream, sha256 in x-checkpoint-sha256); not in the user-facing OpenAPI document
    schema: { ...route({ tags: ['internal'], summary: 'An instance fetches its checkpoint blob (its instance secret only)', params: params({ instanceId: 'the instance' }), response: { ...errors() } }), hide: true },
  }, async (req, reply) => {
    const m = /^Bearer ([0-9a-f]{32,256})$/.exec(req.headers.authorization ?? '');
    const grant = m ? grants.check(req.params.instanceId, m[1]!) : null;
    if (!grant) throw new BerthError('UNAUTHENTICATED', 'this route takes an instance\'s own secret only', {});
    reply.header('content-type', 'application/octet-stream');
    reply.header('x-checkpoint-sha256', grant.sha256);
    return reply.send(createReadStream(grant.path));
  });
}
