// Nodes: create, read, delete, logs. A node may use only its own folder's checkpoint and
// secrets; another folder's node is indistinguishable from a missing one.
import type { FastifyInstance } from 'fastify';
import { Auth, type Permission } from '../core/auth.js';
import { BerthError, invalidArgument } from '../core/errors.js';
import { newId, nowIso } from '../core/ids.js';
import { parseNodeSpec } from '../core/node-spec.js';
import type { NodeRecord, TokenRecord } from '../core/types.js';
import { auditTarget, authorize, defaultFolderOf, requireRole } from './access.js';
import type { ApiDeps } from './index.js';

const notFound = (ref: string) => (): BerthError => new BerthError('NODE_NOT_FOUND', `node ${ref} not found`, { nodeId: ref });

export function nodeRoutes(app: FastifyInstance, { config, store, controller, checkpoints, secrets, aliases, quotas }: ApiDeps): void {
  const nodeView = (n: NodeRecord): Record<string, unknown> => {
    const live = controller.nodeView(n.id);
    return {
      id: n.id, ...n.spec, status: live?.status ?? n.status,
      createdAt: n.createdAt, updatedAt: n.updatedAt, createdBy: n.createdBy,
      transitions: n.transitions, instances: live?.instances ?? [], queued: live?.queued ?? 0,
      relatedAliases: aliases.relatedTo(n.id), warnings: live?.warnings ?? [],
    };
  };

  /** By id, or by name among the nodes the token may read. */
  const findNode = async (ref: string, token: TokenRecord, what: Permission): Promise<NodeRecord> => {
    let n = await store.getNode(ref);
    if (!n) {
      const named = (await store.listNodes()).filter((x) => x.spec.name === ref && Auth.can(token, x.spec.folderId, 'read'));
      if (named.length === 1) n = named[0];
    }
    if (!n) throw notFound(ref)();
    authorize(token, n.spec.folderId, what, notFound(ref));
    return n;
  };

  app.post('/v1/nodes', { config: { audit: 'node.create' }, schema: { tags: ['nodes'], summary: 'Create a node' } }, async (req, reply) => {
    const spec = parseNodeSpec(req.body, { defaultFolder: defaultFolderOf(req.token, config.defaultFolder), defaultProject: config.defaultProject, defaultPython: config.python });
    auditTarget(req, spec.folderId);
    requireRole(req.token, spec.folderId, 'write');
    if (spec.kind === 'cell') {
      let checkpoint;
      try {
        checkpoint = await checkpoints.resolve(spec.checkpointId, spec.folderId);
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
    if (secret && !(await secrets.exists(spec.folderId, secret))) {
      throw new BerthError('SECRET_NOT_FOUND', `secret ${secret} not found in folder ${spec.folderId}`, { field: spec.kind === 'cell' ? 'environment.passwordSecret' : 'passwordSecret', name: secret });
    }
    const now = nowIso();
    const record: NodeRecord = {
      id: newId(), spec, status: 'Created', transitions: [{ status: 'Created', at: now }],
      createdAt: now, updatedAt: now, createdBy: req.token.name,
    };
    await store.insertNode(record, await quotas.of(spec.folderId)); // decides NAME_TAKEN and the quotas
    auditTarget(req, spec.folderId, record.id);
    controller.addNode(record);
    reply.code(201);
    return nodeView(record);
  });

  app.get<{ Querystring: { folderId?: string } }>('/v1/nodes', { schema: { tags: ['nodes'], summary: 'List the nodes of the folders this token may read' } }, async (req) => {
    const folder = req.query.folderId;
    const nodes = (await store.listNodes()).filter((n) => Auth.can(req.token, n.spec.folderId, 'read') && (folder === undefined || n.spec.folderId === folder));
    return { nodes: nodes.map(nodeView) };
  });

  app.get<{ Params: { ref: string } }>('/v1/nodes/:ref', { schema: { tags: ['nodes'], summary: 'Get a node with its instances' } }, async (req) =>
    nodeView(await findNode(req.params.ref, req.token, 'read')));

  app.delete<{ Params: { ref: string } }>('/v1/nodes/:ref', { config: { audit: 'node.delete' }, schema: { tags: ['nodes'], summary: 'Delete a node and stop its instances' } }, async (req) => {
    const n = await findNode(req.params.ref, req.token, 'write');
    auditTarget(req, n.spec.folderId, n.id);
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
      const n = await findNode(req.params.ref, req.token, 'read');
      const lines = req.query.lines === undefined ? 200 : Number(req.query.lines);
      if (!Number.isInteger(lines) || lines < 1 || lines > 100_000) throw invalidArgument('lines', 'must be an integer between 1 and 100000');
      const ids = req.query.instance ? [req.query.instance] : controller.instanceIds(n.id);
      if (req.query.instance && !controller.instanceIds(n.id).includes(req.query.instance)) {
        throw new BerthError('INSTANCE_NOT_FOUND', `instance ${req.query.instance} not found on node ${n.id}`, { instanceId: req.query.instance });
      }
      const logs = await Promise.all(ids.map(async (id) => ({ instanceId: id, text: await controller.logs(n.id, id, lines) })));
      return { nodeId: n.id, logs };
    });
}
