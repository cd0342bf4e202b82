// Nodes: create, read, delete, logs (bounded reads, follow). A node may use only its own folder's checkpoint and
// secrets; another folder's node is indistinguishable from a missing one.
import type { FastifyInstance } from 'fastify';
import { Auth, type Permission } from '../core/auth.js';
import { BerthError, invalidArgument } from '../core/errors.js';
import { newId, nowIso } from '../core/ids.js';
import { parseNodeSpec } from '../core/node-spec.js';
import { IN_PLACE_FIELDS, changedFields, mergePatch, specInput } from '../core/node-update.js';
import type { NodeRecord, TokenRecord } from '../core/types.js';
import { auditAction, auditTarget, authorize, defaultFolderOf, requireRole } from './access.js';
import type { ApiDeps } from './deps.js';
import { allowedPython } from './request.js';
import { MAX_TAIL_LINES } from '../runtimes/log-file.js';

/** Log followers (`logs?follow=true`) connected at once, over all nodes. */
const MAX_LOG_FOLLOWERS = 64;
/** Bytes queued to one follower before its lines are skipped. */
const FOLLOW_BUFFER_BYTES = 1024 * 1024;
const MAX_LOG_SEARCH = 256;

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
    if (spec.kind === 'cell') allowedPython(config.allowedPythons, spec.environment.python, 'environment.python');
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

  // In-place update: a merge patch over the node's spec, validated as on create. Only scaling,
  // description and ACL change this way; what instances run needs revisions (not built yet).
  app.patch<{ Params: { ref: string } }>('/v1/nodes/:ref', {
    config: { audit: 'node.update' },
    schema: { tags: ['nodes'], summary: 'Update scaling, description or permissions.folders in place (JSON merge patch)' },
  }, async (req) => {
    const n = await findNode(req.params.ref, req.token, 'write');
    auditTarget(req, n.spec.folderId, n.id);
    if (typeof req.body !== 'object' || req.body === null || Array.isArray(req.body)) throw invalidArgument('body', 'must be a JSON object: the fields to change');
    const spec = parseNodeSpec(mergePatch(specInput(n.spec), req.body),
      { defaultFolder: n.spec.folderId, defaultProject: n.spec.projectId, defaultPython: config.python });
    if (spec.kind === 'cell' && n.spec.kind === 'cell' && spec.checkpointId !== n.spec.checkpointId) {
      // a pinned name for the same checkpoint is no change
      const same = await checkpoints.resolve(spec.checkpointId, spec.folderId).then((c) => c.id === (n.spec as typeof spec).checkpointId, () => false);
      if (same) spec.checkpointId = n.spec.checkpointId;
    }
    const changed = changedFields(n.spec, spec);
    const needsRevision = changed.filter((f) => !IN_PLACE_FIELDS.has(f));
    if (needsRevision.length) {
      throw new BerthError('INVALID_ARGUMENT',
        `${needsRevision.join(', ')}: changing what a node's instances run needs a new revision and a rollout, which Berth does not do yet; ` +
        `only ${[...IN_PLACE_FIELDS].join(', ')} update in place (to change the rest, create a new node and move an alias to it)`,
        { field: needsRevision[0], fields: needsRevision, inPlace: [...IN_PLACE_FIELDS] });
    }
    if (changed.length === 0) return nodeView(n);
    const record: NodeRecord = { ...n, spec, updatedAt: nowIso() };
    await store.updateNodeSpec(record, await quotas.of(spec.folderId)); // decides QUOTA_EXCEEDED in its transaction
    controller.updateNode(record);
    return nodeView(record);
  });

  // Suspend / resume: POST /v1/nodes/{ref}:suspend and :resume (the Google-style custom verb).
  // One parametric route takes both: a colon inside a path segment is not a router separator.
  app.post<{ Params: { action: string } }>('/v1/nodes/:action', {
    config: { audit: 'node.lifecycle' },
    schema: { tags: ['nodes'], summary: 'POST /v1/nodes/{ref}:suspend drains calls and stops every instance; :resume brings them back' },
  }, async (req) => {
    const m = /^(.+):(suspend|resume)$/.exec(req.params.action);
    if (!m) throw new BerthError('ROUTE_NOT_FOUND', `no route POST /v1/nodes/${req.params.action}: use {ref}:suspend or {ref}:resume`, { path: req.url });
    const [, ref, verb] = m as unknown as [string, string, 'suspend' | 'resume'];
    auditAction(req, `node.${verb}`);
    const n = await findNode(ref, req.token, 'write');
    auditTarget(req, n.spec.folderId, n.id);
    if (verb === 'suspend') await controller.suspend(n.id);
    else await controller.resume(n.id);
    return nodeView((await store.getNode(n.id)) ?? n);
  });

  // Logs: the last N lines are read backwards from the end (O(N)); `follow=true` streams new
  // lines as chunked text/plain until the caller leaves or the instances' logs end.
  let followers = 0;
  app.get<{ Params: { ref: string }; Querystring: { instance?: string; lines?: string; search?: string; follow?: string } }>('/v1/nodes/:ref/logs',
    { schema: { tags: ['nodes'], summary: "The instances' logs (what the cell printed); follow=true streams new lines" } }, async (req, reply) => {
      const n = await findNode(req.params.ref, req.token, 'read'); // another folder's node: 404, as if missing
      const q = req.query;
      const follow = q.follow === undefined ? false : q.follow === 'true' || q.follow === '1' ? true : q.follow === 'false' || q.follow === '0' ? false : null;
      if (follow === null) throw invalidArgument('follow', 'must be true or false');
      const lines = q.lines === undefined ? (follow ? 10 : 200) : Number(q.lines);
      if (!Number.isInteger(lines) || lines < (follow ? 0 : 1) || lines > MAX_TAIL_LINES) {
        throw invalidArgument('lines', `must be an integer between ${follow ? 0 : 1} and ${MAX_TAIL_LINES}`, { max: MAX_TAIL_LINES });
      }
      if (q.search !== undefined && (q.search.length === 0 || q.search.length > MAX_LOG_SEARCH)) {
        throw invalidArgument('search', `must be 1 to ${MAX_LOG_SEARCH} characters`);
      }
      const query = q.search ? { search: q.search } : {};
      const ids = q.instance ? [q.instance] : controller.instanceIds(n.id);
      if (q.instance && !controller.instanceIds(n.id).includes(q.instance)) {
        throw new BerthError('INSTANCE_NOT_FOUND', `instance ${q.instance} not found on node ${n.id}`, { instanceId: q.instance });
      }
      if (!follow) {
        const logs = await Promise.all(ids.map(async (id) => ({ instanceId: id, text: await controller.logs(n.id, id, lines, query) })));
        return { nodeId: n.id, logs };
      }
      if (followers >= MAX_LOG_FOLLOWERS) {
        throw new BerthError('TOO_MANY_FOLLOWERS', `${MAX_LOG_FOLLOWERS} log followers are connected already; try again later`, { limit: MAX_LOG_FOLLOWERS }, { 'retry-after': '5' });
      }
      followers++;
      void reply.hijack();
      const res = reply.raw;
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
      const unsubscribe: Array<() => void> = [];
      let finished = false;
      const finish = (): void => {
        if (finished) return;
        finished = true;
        followers--;
        for (const u of unsubscribe) u();
        if (!res.writableEnded) res.end();
      };
      res.on('close', finish);
      // with several instances, a `==> instance X <==` header whenever the source changes (as tail -f does)
      let current: string | null = null;
      let skipped = 0;
      const send = (id: string, chunk: Buffer | string): void => {
        if (finished || res.destroyed) return;
        // a reader slower than the log loses lines (counted), never Berth's memory
        if (res.writableLength > FOLLOW_BUFFER_BYTES) { skipped += Buffer.byteLength(chunk); return; }
        if (skipped) { res.write(`[berth] ${skipped} bytes skipped: this reader is slower than the log\n`); skipped = 0; }
        if (ids.length > 1 && current !== id) { res.write(`==> instance ${id} <==\n`); current = id; }
        res.write(chunk);
      };
      try {
        for (const id of ids) {
          const tail = lines > 0 ? await controller.logs(n.id, id, lines, query) : '';
          if (tail) send(id, tail);
        }
      } catch {
        finish();
        return;
      }
      if (finished) return;
      let open = ids.length;
      if (open === 0) { finish(); return; }
      const needle = q.search;
      for (const id of ids) {
        unsubscribe.push(controller.followLogs(n.id, id,
          (chunk) => {
            if (!needle) { send(id, chunk); return; }
            const kept = chunk.toString('utf8').split('\n').filter((l) => l.includes(needle));
            if (kept.length) send(id, kept.join('\n') + '\n');
          },
          () => { if (--open === 0) finish(); }));
      }
    });
}
