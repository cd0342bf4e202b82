// Checkpoints: made by running cells (POST /v1/checkpoints) or uploaded from a live kernel;
// each belongs to one folder, where its name is unique.
import type { FastifyInstance } from 'fastify';
import type { Readable } from 'node:stream';
import { Auth } from '../core/auth.js';
import { BerthError, invalidArgument } from '../core/errors.js';
import { typeName, validateFolder } from '../core/node-spec.js';
import type { Checkpoint, TokenRecord } from '../core/types.js';
import { notebookCells, splitScript } from '../checkpoints/cells.js';
import { discardUpload } from '../gateway/http-util.js';
import { auditTarget, authorize, defaultFolderOf, requireRole } from './access.js';
import { allowedPython, body, onlyFields, optString } from './request.js';
import type { ApiDeps } from './deps.js';
import { Checkpoint as CheckpointSchema, CheckpointCreate, CheckpointDeleted, CheckpointList, CheckpointRun, CheckpointUpdate, errors, folderQuery, params, query, ref, route } from './schemas.js';

const notFound = (ref: string) => (): BerthError => new BerthError('CHECKPOINT_NOT_FOUND', `checkpoint ${ref} not found`, { checkpointId: ref });

export function checkpointRoutes(app: FastifyInstance, { config, store, checkpoints, quotas }: ApiDeps): void {
  /** A checkpoint by id, or by name in the folder the request names (default: the token's). */
  const find = async (ref: string, folder: string | undefined, token: TokenRecord, what: 'read' | 'write'): Promise<Checkpoint> => {
    const byId = await store.getCheckpoint(ref);
    const c = byId ?? (await store.getCheckpointByName(validateFolder(folder ?? defaultFolderOf(token, config.defaultFolder), 'folderId'), ref));
    if (!c) throw notFound(ref)();
    authorize(token, c.folderId, what, notFound(ref));
    return c;
  };

  app.post('/v1/checkpoints', { config: { audit: 'checkpoint.create' }, schema: route({ tags: ['checkpoints'], summary: 'Run cells in a fresh interpreter and save the namespace', body: ref(CheckpointCreate), response: { 201: ref(CheckpointRun), ...errors(400, 403, 404, 409, 413, 415, 422, 429) } }) }, async (req, reply) => {
    const b = body(req);
    onlyFields(b, ['cells', 'script', 'notebook', 'servingCell', 'name', 'python', 'folderId', 'projectId']);
    const folderId = validateFolder(optString(b, 'folderId') ?? defaultFolderOf(req.token, config.defaultFolder), 'folderId');
    auditTarget(req, folderId);
    requireRole(req.token, folderId, 'write');
    let cells: string[];
    let source: 'script' | 'notebook' = 'script';
    if (b.cells !== undefined) {
      if (!Array.isArray(b.cells) || b.cells.some((c) => typeof c !== 'string')) throw invalidArgument('cells', 'must be an array of strings');
      cells = b.cells as string[];
    } else if (b.script !== undefined) {
      if (typeof b.script !== 'string') throw invalidArgument('script', `must be a string, got ${typeName(b.script)}`);
      cells = splitScript(b.script);
    } else if (b.notebook !== undefined) {
      cells = notebookCells(b.notebook);
      source = 'notebook';
    } else {
      throw invalidArgument('script', 'send one of "script" (cells split by "# %%"), "notebook" (.ipynb JSON) or "cells"');
    }
    let servingCell = cells.length - 1;
    if (b.servingCell !== undefined) {
      if (typeof b.servingCell !== 'number' || !Number.isInteger(b.servingCell)) throw invalidArgument('servingCell', `must be an integer, got ${typeName(b.servingCell)}`);
      servingCell = b.servingCell < 0 ? cells.length + b.servingCell : b.servingCell;
    }
    const quota = await quotas.of(folderId);
    const size = Number(req.headers['content-length'] ?? 0);
    if (size > quota.maxUploadBytes) {
      throw new BerthError('QUOTA_EXCEEDED', `the request exceeds the folder's maxUploadBytes of ${quota.maxUploadBytes}`, { quota: 'maxUploadBytes', limit: quota.maxUploadBytes, wanted: size });
    }
    const release = await quotas.startRun(folderId);
    // the caller leaving ends the run (the response closing before it was sent)
    const left = new AbortController();
    reply.raw.once('close', () => { if (!reply.raw.writableFinished) left.abort(); });
    try {
      const { checkpoint, log } = await checkpoints.runAndSave({
        cells, servingCell, source, quota,
        name: optString(b, 'name') ?? null,
        python: allowedPython(config.allowedPythons, optString(b, 'python', 4096) ?? config.python, 'python'),
        folderId, projectId: validateFolder(optString(b, 'projectId') ?? config.defaultProject, 'projectId'),
        createdBy: req.token.name,
      }, left.signal);
      auditTarget(req, folderId, checkpoint.id);
      reply.code(201);
      return { ...checkpoint, log };
    } finally {
      release();
    }
  });

  app.addContentTypeParser('application/vnd.berth.checkpoint', (_req, payload, done) => done(null, payload));
  app.post('/v1/checkpoints::upload', { config: { audit: 'checkpoint.upload' }, schema: route({
      tags: ['checkpoints'], summary: 'Save a live kernel snapshot (metadata line + dill blob)', querystring: query(folderQuery),
      body: { content: { 'application/vnd.berth.checkpoint': { schema: { type: 'string', format: 'binary', description: 'one JSON line {code, name?, python, executable, packages, requires, variables, skipped, cell?: CheckpointCell, autosave?: CheckpointAutosave (then no name)}, "\\n", then the dill blob' } } } },
      response: { 201: ref(CheckpointSchema), ...errors(400, 403, 409, 413, 415, 429) },
    }) }, async (req, reply) => {
    if (!String(req.headers['content-type']).startsWith('application/vnd.berth.checkpoint')) {
      throw new BerthError('UNSUPPORTED_MEDIA_TYPE', 'upload with Content-Type: application/vnd.berth.checkpoint');
    }
    const q = req.query as Record<string, string | undefined>;
    const folderId = validateFolder(q.folderId ?? defaultFolderOf(req.token, config.defaultFolder), 'folderId');
    auditTarget(req, folderId);
    requireRole(req.token, folderId, 'write');
    let checkpoint;
    try {
      checkpoint = await checkpoints.upload(req.body as Readable, { createdBy: req.token.name, folderId, projectId: config.defaultProject, quota: await quotas.of(folderId) });
    } catch (err) {
      // refused mid-upload: drop the rest as it comes, answer, and close the connection
      if (!req.raw.complete && err instanceof BerthError) {
        discardUpload(req.raw);
        throw new BerthError(err.code, err.message, err.details, { ...err.headers, connection: 'close' });
      }
      throw err;
    }
    auditTarget(req, folderId, checkpoint.id);
    reply.code(201);
    return checkpoint;
  });

  app.get<{ Querystring: { folderId?: string } }>('/v1/checkpoints', { schema: route({ tags: ['checkpoints'], summary: 'List the checkpoints of the folders this token may read', querystring: query(folderQuery), response: { 200: ref(CheckpointList), ...errors() } }) }, async (req) => {
    const all = await store.listCheckpoints();
    const folder = req.query.folderId;
    return { checkpoints: all.filter((c) => Auth.can(req.token, c.folderId, 'read') && (folder === undefined || c.folderId === folder)) };
  });

  app.get<{ Params: { ref: string }; Querystring: { folderId?: string } }>('/v1/checkpoints/:ref', { schema: route({ tags: ['checkpoints'], summary: 'Get a checkpoint by id or name', params: params({ ref: 'checkpoint id or name' }), querystring: query(folderQuery), response: { 200: ref(CheckpointSchema), ...errors(400, 404) } }) }, async (req) =>
    find(req.params.ref, req.query.folderId, req.token, 'read'));

  app.patch<{ Params: { ref: string }; Querystring: { folderId?: string } }>('/v1/checkpoints/:ref', { config: { audit: 'checkpoint.update' }, schema: route({ tags: ['checkpoints'], summary: 'Pin (name), rename or unpin (name: null)', params: params({ ref: 'checkpoint id or name' }), querystring: query(folderQuery), body: ref(CheckpointUpdate), response: { 200: ref(CheckpointSchema), ...errors(400, 403, 404, 409) } }) }, async (req) => {
    const b = body(req);
    onlyFields(b, ['name']);
    if (!('name' in b)) throw invalidArgument('name', 'is required (a string to pin or rename, null to unpin)');
    if (b.name !== null && typeof b.name !== 'string') throw invalidArgument('name', `must be a string or null, got ${typeName(b.name)}`);
    const c = await find(req.params.ref, req.query.folderId, req.token, 'write');
    auditTarget(req, c.folderId, c.id);
    if (b.name === null && (await store.listNodes()).some((n) => n.spec.kind === 'cell' && n.spec.checkpointId === c.id)) {
      throw new BerthError('CHECKPOINT_IN_USE', 'a checkpoint that backs a node cannot be unpinned', { checkpointId: c.id });
    }
    return checkpoints.rename(c, b.name as string | null);
  });

  app.delete<{ Params: { ref: string }; Querystring: { folderId?: string } }>('/v1/checkpoints/:ref', { config: { audit: 'checkpoint.delete' }, schema: route({ tags: ['checkpoints'], summary: 'Delete a checkpoint no node uses', params: params({ ref: 'checkpoint id or name' }), querystring: query(folderQuery), response: { 200: ref(CheckpointDeleted), ...errors(400, 403, 404, 409) } }) }, async (req) => {
    const c = await find(req.params.ref, req.query.folderId, req.token, 'write');
    auditTarget(req, c.folderId, c.id);
    await checkpoints.delete(c);
    return { id: c.id, deleted: true };
  });
}
