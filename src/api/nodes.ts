// Nodes: create, read, update (in place, or a new revision rolled out), rollback, revisions,
// suspend/resume, delete, logs (bounded reads, follow). A node may use only its own folder's
// checkpoint and secrets; another folder's node is indistinguishable from a missing one.
import type { FastifyInstance } from 'fastify';
import { Auth, type Permission } from '../core/auth.js';
import { BerthError, invalidArgument } from '../core/errors.js';
import { newId, nowIso } from '../core/ids.js';
import { parseNodeSpec } from '../core/node-spec.js';
import { IN_PLACE_FIELDS, changedFields, mergePatch, specDiff, specInput } from '../core/node-update.js';
import type { CellNodeSpec, NodeRecord, NodeRevision, NodeSpec, Rollout, TokenRecord } from '../core/types.js';
import { contractDifference } from '../contracts/compat.js';
import { auditAction, auditTarget, authorize, defaultFolderOf, requireRole } from './access.js';
import type { ApiDeps } from './deps.js';
import { allowedPython, flag } from './request.js';
import { MAX_TAIL_LINES } from '../runtimes/log-file.js';
import { Node, NodeDeleted, NodeEvents, NodeList, NodeLogs, NodePatch, NodeRevisions, NodeSpecIn, NodeUpdatePlan, RollbackRequest, errors, folderQuery, params, query, ref, route } from './schemas.js';
import { Type } from '@sinclair/typebox';

/** Log followers (`logs?follow=true`) connected at once, over all nodes. */
const MAX_LOG_FOLLOWERS = 64;
/** Bytes queued to one follower before its lines are skipped. */
const FOLLOW_BUFFER_BYTES = 1024 * 1024;
const MAX_LOG_SEARCH = 256;
/** Node events in one answer. */
const MAX_EVENTS_PAGE = 1000;

const notFound = (ref: string) => (): BerthError => new BerthError('NODE_NOT_FOUND', `node ${ref} not found`, { nodeId: ref });

export function nodeRoutes(app: FastifyInstance, { config, store, controller, checkpoints, secrets, aliases, quotas }: ApiDeps): void {
  const nodeView = (n: NodeRecord): Record<string, unknown> => {
    const live = controller.nodeView(n.id);
    const rollout = controller.rolloutOf(n.id);
    return {
      id: n.id, ...n.spec, status: live?.status ?? n.status, scaledToZero: live?.scaledToZero ?? false,
      revision: rollout?.revision ?? n.revision, rollout: rollout ? rollout.rollout : n.rollout,
      createdAt: n.createdAt, updatedAt: n.updatedAt, createdBy: n.createdBy,
      transitions: n.transitions, instances: live?.instances ?? [], queued: live?.queued ?? 0,
      relatedAliases: aliases.relatedTo(n.id), warnings: live?.warnings ?? [],
    };
  };

  /**
   * What a spec names must exist in its own folder and be usable here (create, update, rollback
   * alike): a pinned checkpoint (its id replaces a name), an allowed Python, a container runtime
   * for images, the registry password's secret.
   */
  const checkReferences = async (spec: NodeSpec): Promise<void> => {
    if (spec.placement && !controller.supportsPlacement) {
      throw new BerthError('RUNTIME_UNSUPPORTED', `placement cannot be honoured by the ${controller.runtimeName} runtime: every instance runs on this machine (placement needs --runtime swarm)`,
        { field: 'placement', runtime: controller.runtimeName });
    }
    if (spec.kind === 'cell') {
      if (!controller.supportsCells) {
        throw new BerthError('RUNTIME_UNSUPPORTED', `cell nodes cannot run on the ${controller.runtimeName} runtime yet: their workers are not reachable from other machines (run them on a Berth with --runtime process or docker)`,
          { field: 'kind', runtime: controller.runtimeName });
      }
      allowedPython(config.allowedPythons, spec.environment.python, 'environment.python');
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
  };

  /** A node behind an alias keeps the contract of the alias's other cell nodes (docs/contracts.md). */
  const checkAliasContracts = async (nodeId: string, spec: CellNodeSpec): Promise<void> => {
    for (const name of aliases.relatedTo(nodeId)) {
      const a = aliases.get(name)?.spec;
      if (!a) continue;
      const others = [...a.backends.map((b) => b.nodeId), ...(a.mirror ? [a.mirror.nodeId] : [])].filter((id) => id !== nodeId);
      for (const id of new Set(others)) {
        const other = await store.getNode(id);
        if (other?.spec.kind !== 'cell') continue;
        const diff = contractDifference(other.spec, spec);
        if (diff) {
          throw new BerthError('CONTRACT_MISMATCH', `${diff.side}s: alias ${name} also serves node ${id}, whose ${diff.message.replace('on the first backend but', 'while this change makes it').replace(' on this one', '')}; change them together through a new node and the alias`,
            { field: `${diff.side}s`, aliasName: name, otherNodeId: id, variable: diff.variable, expected: diff.expected, got: diff.got });
        }
      }
    }
  };

  /**
   * Applies a changed spec: in place when only IN_PLACE_FIELDS differ, else as a new revision
   * rolled out (`cause` says why it exists). Returns what changed; `dryRun` changes nothing.
   */
  const change = async (n: NodeRecord, spec: NodeSpec, by: string, cause: (fields: string[]) => string, dryRun: boolean) => {
    const changed = changedFields(n.spec, spec);
    if (changed.includes('kind')) throw invalidArgument('kind', 'a node cannot change kind: create a new node and move an alias to it');
    if (n.spec.kind === 'image' && spec.kind === 'image' && n.spec.endpoint.protocol !== spec.endpoint.protocol) {
      throw invalidArgument('endpoint.protocol', 'cannot change in a rollout (old and new instances would need different callers): create a new node and move an alias to it');
    }
    if (spec.kind === 'cell' && (changed.includes('inputs') || changed.includes('outputs'))) await checkAliasContracts(n.id, spec);
    const restarts = changed.filter((f) => !IN_PLACE_FIELDS.has(f));
    const revisions = restarts.length ? await store.listRevisions(n.id) : [];
    const revision = restarts.length ? Math.max(n.revision, ...revisions.map((r) => r.revision)) + 1 : n.revision;
    const plan = { changed, rollout: restarts.length > 0, revision, diff: specDiff(specInput(n.spec), specInput(spec)) };
    if (dryRun || changed.length === 0) return { plan, record: n };
    const now = nowIso();
    let rollout = n.rollout;
    let row: NodeRevision | undefined;
    if (restarts.length) {
      const live = controller.rolloutOf(n.id);
      const current = live?.rollout ?? n.rollout;
      // an update during a rollout replaces its target; a failure still goes back to where it started
      const from = current?.state === 'Progressing' ? current.from : (live?.revision ?? n.revision);
      rollout = { revision, from, state: 'Progressing', startedAt: now } satisfies Rollout;
      row = { nodeId: n.id, revision, spec, cause: cause(restarts), createdAt: now, createdBy: by };
    }
    const record: NodeRecord = { ...n, spec, revision, rollout, updatedAt: now };
    await store.updateNodeSpec(record, await quotas.of(spec.folderId), row); // decides QUOTA_EXCEEDED and CONFLICT in its transaction
    controller.updateNode(record);
    return { plan, record };
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

  app.post('/v1/nodes', { config: { audit: 'node.create' }, schema: route({ tags: ['nodes'], summary: 'Create a node', body: ref(NodeSpecIn), response: { 201: ref(Node), ...errors(400, 403, 404, 409, 413, 415, 429) } }) }, async (req, reply) => {
    const spec = parseNodeSpec(req.body, { defaultFolder: defaultFolderOf(req.token, config.defaultFolder), defaultProject: config.defaultProject, defaultPython: config.python });
    auditTarget(req, spec.folderId);
    requireRole(req.token, spec.folderId, 'write');
    await checkReferences(spec);
    const now = nowIso();
    const record: NodeRecord = {
      id: newId(), spec, revision: 1, rollout: null, status: 'Created', transitions: [{ status: 'Created', at: now }],
      createdAt: now, updatedAt: now, createdBy: req.token.name,
    };
    await store.insertNode(record, await quotas.of(spec.folderId)); // decides NAME_TAKEN and the quotas
    auditTarget(req, spec.folderId, record.id);
    controller.addNode(record);
    reply.code(201);
    return nodeView(record);
  });

  app.get<{ Querystring: { folderId?: string } }>('/v1/nodes', { schema: route({ tags: ['nodes'], summary: 'List the nodes of the folders this token may read', querystring: query(folderQuery), response: { 200: ref(NodeList), ...errors() } }) }, async (req) => {
    const folder = req.query.folderId;
    const nodes = (await store.listNodes()).filter((n) => Auth.can(req.token, n.spec.folderId, 'read') && (folder === undefined || n.spec.folderId === folder));
    return { nodes: nodes.map(nodeView) };
  });

  app.get<{ Params: { ref: string } }>('/v1/nodes/:ref', { schema: route({ tags: ['nodes'], summary: 'Get a node with its instances', params: params({ ref: 'node id or name' }), response: { 200: ref(Node), ...errors(404) } }) }, async (req) =>
    nodeView(await findNode(req.params.ref, req.token, 'read')));

  app.delete<{ Params: { ref: string } }>('/v1/nodes/:ref', { config: { audit: 'node.delete' }, schema: route({ tags: ['nodes'], summary: 'Delete a node and stop its instances', params: params({ ref: 'node id or name' }), response: { 200: ref(NodeDeleted), ...errors(403, 404, 409) } }) }, async (req) => {
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

  // Update: a JSON merge patch over the node's spec, validated as on create. Scaling, description,
  // ACL and rollout settings apply in place; anything else makes a new revision and rolls it out.
  // `?dryRun=true` answers what would change and changes nothing.
  app.patch<{ Params: { ref: string }; Querystring: { dryRun?: string } }>('/v1/nodes/:ref', {
    config: { audit: 'node.update' },
    schema: route({
      tags: ['nodes'], summary: 'Update a node (JSON merge patch): in place, or as a new revision rolled out with zero failed calls',
      params: params({ ref: 'node id or name' }), querystring: query({ dryRun: Type.String({ enum: ['true', 'false', '1', '0'], description: 'true: answer what would change, change nothing' }) }),
      body: ref(NodePatch),
      response: { 200: { anyOf: [ref(Node), ref(NodeUpdatePlan)], description: 'the node (with `changed`), or with dryRun the plan' }, ...errors(400, 403, 404, 409, 413, 415, 429) },
    }),
  }, async (req) => {
    const dryRun = flag(req.query.dryRun, 'dryRun');
    const n = await findNode(req.params.ref, req.token, 'write');
    auditTarget(req, n.spec.folderId, n.id);
    if (typeof req.body !== 'object' || req.body === null || Array.isArray(req.body)) throw invalidArgument('body', 'must be a JSON object: the fields to change');
    const spec = parseNodeSpec(mergePatch(specInput(n.spec), req.body),
      { defaultFolder: n.spec.folderId, defaultProject: n.spec.projectId, defaultPython: config.python });
    if (spec.folderId !== n.spec.folderId) throw invalidArgument('folderId', 'a node cannot move to another folder');
    if (changedFields(n.spec, spec).some((f) => !IN_PLACE_FIELDS.has(f))) await checkReferences(spec);
    const { plan, record } = await change(n, spec, req.token.name, (fields) => `update (${fields.join(', ')})`, dryRun);
    return dryRun ? { dryRun: true, nodeId: n.id, ...plan } : { ...nodeView(record), changed: plan.changed };
  });

  app.get<{ Params: { ref: string } }>('/v1/nodes/:ref/revisions', { schema: route({ tags: ['nodes'], summary: "A node's revisions, newest first (the last 20)", params: params({ ref: 'node id or name' }), response: { 200: ref(NodeRevisions), ...errors(404) } }) }, async (req) => {
    const n = await findNode(req.params.ref, req.token, 'read');
    const current = controller.rolloutOf(n.id)?.revision ?? n.revision;
    const revisions = await store.listRevisions(n.id);
    return {
      nodeId: n.id, current,
      revisions: revisions.map((r, i) => ({
        revision: r.revision, current: r.revision === current, cause: r.cause, createdAt: r.createdAt, createdBy: r.createdBy,
        runs: r.spec.kind === 'cell' ? { checkpointId: r.spec.checkpointId } : { image: r.spec.image },
        changed: revisions[i + 1] ? changedFields(revisions[i + 1].spec, r.spec).filter((f) => !IN_PLACE_FIELDS.has(f)) : [],
      })),
    };
  });

  // Events: scale decisions with their reason, wakes, failed starts, rollouts; newest first, paged by id.
  app.get<{ Params: { ref: string }; Querystring: { limit?: string; before?: string } }>('/v1/nodes/:ref/events',
    { schema: route({
      tags: ['nodes'], summary: "A node's events, newest first: scale decisions with their reason, wakes, failed starts, rollouts",
      params: params({ ref: 'node id or name' }),
      querystring: query({
        limit: Type.String({ description: `at most this many, 1–${MAX_EVENTS_PAGE} (default 100)` }),
        before: Type.String({ description: 'only events with a smaller id (paging)' }),
      }),
      response: { 200: ref(NodeEvents), ...errors(400, 404) },
    }) }, async (req) => {
      const n = await findNode(req.params.ref, req.token, 'read'); // another folder's node: 404, as if missing
      const limit = req.query.limit === undefined ? 100 : Number(req.query.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > MAX_EVENTS_PAGE) throw invalidArgument('limit', `must be an integer between 1 and ${MAX_EVENTS_PAGE}`, { max: MAX_EVENTS_PAGE });
      const before = req.query.before === undefined ? undefined : Number(req.query.before);
      if (before !== undefined && (!Number.isInteger(before) || before < 1)) throw invalidArgument('before', 'must be a positive integer: an event id');
      const events = await store.listNodeEvents({ nodeId: n.id, limit, ...(before !== undefined ? { before } : {}) });
      return { nodeId: n.id, events };
    });

  // Suspend / resume: POST /v1/nodes/{ref}:suspend and :resume (the Google-style custom verb).
  // One parametric route takes both: a colon inside a path segment is not a router separator.
  app.post<{ Params: { action: string } }>('/v1/nodes/:action', {
    config: { audit: 'node.lifecycle' },
    schema: route({
      tags: ['nodes'],
      summary: 'POST /v1/nodes/{ref}:suspend drains calls and stops every instance; :resume brings them back; :rollback {revision?} rolls an earlier revision out again',
      params: Type.Object({ action: Type.String({ pattern: '^.+:(suspend|resume|rollback)$', description: '{ref}:suspend, {ref}:resume or {ref}:rollback (ref: node id or name)' }) }),
      body: { ...ref(RollbackRequest), description: ':rollback only (optional)' },
      response: { 200: ref(Node), ...errors(400, 403, 404, 409, 429) },
    }),
  }, async (req) => {
    const m = /^(.+):(suspend|resume|rollback)$/.exec(req.params.action);
    if (!m) throw new BerthError('ROUTE_NOT_FOUND', `no route POST /v1/nodes/${req.params.action}: use {ref}:suspend, {ref}:resume or {ref}:rollback`, { path: req.url });
    const [, ref, verb] = m as unknown as [string, string, 'suspend' | 'resume' | 'rollback'];
    auditAction(req, `node.${verb}`);
    const n = await findNode(ref, req.token, 'write');
    auditTarget(req, n.spec.folderId, n.id);
    if (verb === 'rollback') return nodeView(await rollback(n, req.body, req.token.name));
    if (verb === 'suspend') await controller.suspend(n.id);
    else await controller.resume(n.id);
    return nodeView((await store.getNode(n.id)) ?? n);
  });

  /**
   * Rolls an earlier revision out again as a new revision (`rollback to N`): what its instances
   * ran comes back; scaling, description, ACL and rollout settings stay as they are now.
   * Default: where the running rollout started, else the revision before the current one.
   */
  const rollback = async (n: NodeRecord, body: unknown, by: string): Promise<NodeRecord> => {
    const b = body === undefined || body === null ? {} : body;
    if (typeof b !== 'object' || Array.isArray(b)) throw invalidArgument('body', 'must be a JSON object: {revision?}');
    const { revision: wanted, ...rest } = b as { revision?: unknown };
    const unknown = Object.keys(rest)[0];
    if (unknown !== undefined) throw invalidArgument(unknown, 'is not a known field: {revision?}');
    if (wanted !== undefined && (!Number.isInteger(wanted) || (wanted as number) < 1)) throw invalidArgument('revision', 'must be a positive integer');
    const live = controller.rolloutOf(n.id);
    const current = live?.revision ?? n.revision;
    const revisions = await store.listRevisions(n.id);
    const to = (wanted as number | undefined)
      ?? (live?.rollout?.state === 'Progressing' ? live.rollout.from : revisions.find((r) => r.revision < current)?.revision);
    const target = revisions.find((r) => r.revision === to);
    if (to === undefined || !target) {
      throw new BerthError('REVISION_NOT_FOUND', to === undefined ? `node ${n.id} has no earlier revision to roll back to` : `node ${n.id} has no revision ${to} (the last 20 are kept)`,
        { field: 'revision', nodeId: n.id, revision: to ?? null });
    }
    if (to === current) throw invalidArgument('revision', `revision ${to} is the current one`);
    const spec = { ...target.spec } as NodeSpec & Record<string, unknown>;
    const now = n.spec as NodeSpec & Record<string, unknown>;
    for (const f of IN_PLACE_FIELDS) { if (now[f] === undefined) delete spec[f]; else spec[f] = now[f]; }
    await checkReferences(spec); // its checkpoint or secret may be gone since
    return (await change(n, spec, by, () => `rollback to ${to}`, false)).record;
  };

  // Logs: the last N lines are read backwards from the end (O(N)); `follow=true` streams new
  // lines as chunked text/plain until the caller leaves or the instances' logs end.
  let followers = 0;
  app.get<{ Params: { ref: string }; Querystring: { instance?: string; lines?: string; search?: string; follow?: string } }>('/v1/nodes/:ref/logs',
    { schema: route({
      tags: ['nodes'], summary: "The instances' logs (what the cell printed); follow=true streams new lines",
      params: params({ ref: 'node id or name' }),
      querystring: query({
        instance: Type.String({ description: 'one instance (default: all)' }),
        lines: Type.String({ pattern: '^[0-9]+$', description: `the last N lines, 1–${MAX_TAIL_LINES} (follow: 0–${MAX_TAIL_LINES}); default 200, with follow 10` }),
        search: Type.String({ minLength: 1, maxLength: MAX_LOG_SEARCH, description: 'only lines containing this text' }),
        follow: Type.String({ enum: ['true', 'false', '1', '0'], description: 'true: stream new lines as text/plain until the caller leaves' }),
      }),
      response: {
        200: { description: 'the last lines as JSON, or with follow=true a text/plain stream', content: { 'application/json': { schema: ref(NodeLogs) }, 'text/plain': { schema: { type: 'string' } } } },
        ...errors(400, 404, 429),
      },
    }) }, async (req, reply) => {
      const n = await findNode(req.params.ref, req.token, 'read'); // another folder's node: 404, as if missing
      const q = req.query;
      const follow = flag(q.follow, 'follow');
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
      res.flushHeaders(); // a follower of a quiet node gets its answer now, not with the first line
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
