// The web dashboard's server side (docs/dashboard.md): the built page under /ui (public: the
// page itself asks for a token), the live stream GET /v1/watch and the charts' history
// GET /v1/nodes/{ref}/metrics and /v1/aliases/{name}/metrics. The stream and the history are
// control-API routes like any other: authenticated, and they show only what the token may read.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { extname, join, relative, resolve, sep } from 'node:path';
import { gzipSync } from 'node:zlib';
import { createHash } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Auth } from '../core/auth.js';
import { BerthError, invalidArgument } from '../core/errors.js';
import type { AliasRecord, NodeRecord, TokenRecord } from '../core/types.js';
import type { ApiDeps } from '../api/deps.js';
import { MetricsHistory, SAMPLE_MS, KEEP_MS, type Point } from './history.js';
import { AliasMetricsHistory, NodeMetricsHistory, errors, historyQuery, params, query, ref, route, textAnswer } from '../api/schemas.js';

/** Where `npm run build` puts the page (ui/vite.config.ts); dist/ui itself holds this plugin compiled. */
export const UI_DIST = resolve(import.meta.dirname, '../../dist/ui/app');
/** Watch streams open at once, over all tokens. */
const MAX_WATCHERS = 64;
/** How often a stream compares what its token sees with what it sent. */
const WATCH_TICK_MS = 1000;
/** After an instance status changes (that node's view is sent at once), how long a stream waits for further changes before it rebuilds every view. */
const POKE_DELAY_MS = 30;
/** A comment line keeps proxies and idle timers from closing a quiet stream. */
const KEEPALIVE_MS = 15_000;
/** Bytes queued to a slow reader before the stream is closed (it reconnects and gets a fresh state). */
const WATCH_BUFFER_BYTES = 4 * 1024 * 1024;

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml', '.png': 'image/png', '.ico': 'image/x-icon', '.json': 'application/json', '.map': 'application/json',
};

interface StaticFile { body: Buffer; gz: Buffer | null; type: string; etag: string; immutable: boolean }

/** Reads the built page once into memory, gzipped beside (a few hundred KB). */
function loadStatic(root: string): Map<string, StaticFile> | null {
  if (!existsSync(join(root, 'index.html'))) return null;
  const files = new Map<string, StaticFile>();
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) { walk(path); continue; }
      const body = readFileSync(path);
      const type = TYPES[extname(name)] ?? 'application/octet-stream';
      const rel = relative(root, path).split(sep).join('/');
      files.set(rel, {
        body, type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`,
        gz: /^(text|application\/json|image\/svg)/.test(type) && body.length > 512 ? gzipSync(body, { level: 9 }) : null,
        // hashed names (assets/index-AbC123.js) never change content: cache for a year
        immutable: rel.startsWith('assets/'),
      });
    }
  };
  walk(root);
  return files;
}

function sendStatic(req: FastifyRequest, reply: FastifyReply, f: StaticFile): void {
  void reply.hijack();
  const res = reply.raw;
  const headers: Record<string, string> = {
    'content-type': f.type, etag: f.etag, 'x-content-type-options': 'nosniff', vary: 'accept-encoding',
    'cache-control': f.immutable ? 'public, max-age=31536000, immutable' : 'no-cache',
  };
  if (f.type.startsWith('text/html')) {
    // the page loads only its own scripts and styles and talks only to this server
    headers['content-security-policy'] = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'";
    headers['x-frame-options'] = 'DENY';
    headers['referrer-policy'] = 'no-referrer';
  }
  if (req.headers['if-none-match'] === f.etag) { res.writeHead(304, headers); res.end(); return; }
  const gzip = f.gz !== null && /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''));
  const body = gzip ? f.gz! : f.body;
  if (gzip) headers['content-encoding'] = 'gzip';
  headers['content-length'] = String(body.length);
  res.writeHead(200, headers);
  res.end(req.method === 'HEAD' ? undefined : body);
}

/** What a node looks like on the stream: GET /v1/nodes/{id}'s fields, from the same sources. */
function nodeView(deps: ApiDeps, n: NodeRecord): Record<string, unknown> {
  const live = deps.controller.nodeView(n.id);
  const rollout = deps.controller.rolloutOf(n.id);
  return {
    id: n.id, ...n.spec, status: live?.status ?? n.status,
    revision: rollout?.revision ?? n.revision, rollout: rollout ? rollout.rollout : n.rollout,
    createdAt: n.createdAt, updatedAt: n.updatedAt, createdBy: n.createdBy,
    transitions: n.transitions, ...(live ?? {}), instances: live?.instances ?? [], queued: live?.queued ?? 0,
    relatedAliases: deps.aliases.relatedTo(n.id),
  };
}

function aliasView(deps: ApiDeps, a: AliasRecord): Record<string, unknown> {
  return {
    id: a.id, ...a.spec, createdAt: a.createdAt, updatedAt: a.updatedAt, createdBy: a.createdBy,
    status: {
      backends: a.spec.backends.map((b) => {
        const live = deps.controller.nodeView(b.nodeId);
        return { ...b, nodeStatus: live?.status ?? 'Deleted', healthyInstances: live?.instances.filter((i) => i.status === 'Healthy').length ?? 0 };
      }),
      mirror: deps.aliases.mirrorStatus(a.spec.name),
    },
  };
}

const nodeNotFound = (ref: string): BerthError => new BerthError('NODE_NOT_FOUND', `node ${ref} not found`, { nodeId: ref });
const aliasNotFound = (name: string): BerthError => new BerthError('ALIAS_NOT_FOUND', `alias ${name} not found`, { aliasName: name });

/** `?since=` for the history: unix ms, at most an hour back. */
function sinceParam(v: string | undefined): number {
  if (v === undefined) return 0;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw invalidArgument('since', 'must be a time in unix milliseconds');
  return n;
}

export interface Dashboard {
  history: MetricsHistory;
  close(): void;
}

export function registerDashboard(app: FastifyInstance, deps: ApiDeps): Dashboard {
  const history = new MetricsHistory(() => deps.metricsText(true));
  let files = loadStatic(UI_DIST);
  const closers = new Set<() => void>();

  // ---- the page ------------------------------------------------------------------------
  const serve = async (req: FastifyRequest<{ Params: { '*'?: string } }>, reply: FastifyReply): Promise<void> => {
    files ??= loadStatic(UI_DIST); // built after `berth up` started
    if (!files) {
      throw new BerthError('UI_NOT_BUILT', `the dashboard is not built: run npm run build (expected ${UI_DIST}/index.html)`, { path: UI_DIST });
    }
    const rel = (req.params['*'] ?? '').replace(/^\/+/, '');
    const f = files.get(rel);
    // unknown paths without an extension are the page's own routes (#-less deep links): index.html
    if (f) return sendStatic(req, reply, f);
    if (rel === '' || !/\.[a-z0-9]+$/i.test(rel)) return sendStatic(req, reply, files.get('index.html')!);
    throw new BerthError('ROUTE_NOT_FOUND', `no file /ui/${rel}`, { path: req.url });
  };
  app.get('/ui', { config: { public: true }, schema: { hide: true } }, async (_req, reply) => { void reply.redirect('/ui/', 302); });
  app.get('/ui/*', { config: { public: true }, schema: { hide: true } }, serve);
  // a browser pointed at the server lands on the dashboard
  app.get('/', { config: { public: true }, schema: { hide: true } }, async (_req, reply) => { void reply.redirect('/ui/', 302); });

  // ---- history ---------------------------------------------------------------------------
  const readable = (token: TokenRecord, folderId: string): boolean => Auth.can(token, folderId, 'read');
  const findNode = async (ref: string, token: TokenRecord): Promise<NodeRecord> => {
    let n = await deps.store.getNode(ref);
    if (!n) {
      const named = (await deps.store.listNodes()).filter((x) => x.spec.name === ref && readable(token, x.spec.folderId));
      if (named.length === 1) n = named[0];
    }
    if (!n || !readable(token, n.spec.folderId)) throw nodeNotFound(ref);
    return n;
  };
  app.get<{ Params: { ref: string }; Querystring: { since?: string } }>('/v1/nodes/:ref/metrics', {
    schema: route({
      tags: ['nodes'], summary: "A node's calls/s, errors by code, latency percentiles and instances over the last hour (the dashboard's charts)",
      params: params({ ref: 'node id or name' }), querystring: query(historyQuery), response: { 200: ref(NodeMetricsHistory), ...errors(400, 404) },
    }),
  }, async (req) => {
    const since = sinceParam(req.query.since);
    const n = await findNode(req.params.ref, req.token);
    return { nodeId: n.id, sampleSeconds: SAMPLE_MS / 1000, keepSeconds: KEEP_MS / 1000, points: history.get('node', n.id, since) };
  });
  app.get<{ Params: { name: string }; Querystring: { since?: string } }>('/v1/aliases/:name/metrics', {
    schema: route({
      tags: ['aliases'], summary: "An alias's calls/s, errors, latency percentiles over the last hour, and its backends' (the live split)",
      params: params({ name: 'alias name or id' }), querystring: query(historyQuery), response: { 200: ref(AliasMetricsHistory), ...errors(400, 404) },
    }),
  }, async (req) => {
    const since = sinceParam(req.query.since);
    const a = (await deps.store.listAliases()).find((x) => x.spec.name === req.params.name || x.id === req.params.name);
    if (!a || !readable(req.token, a.spec.folderId)) throw aliasNotFound(req.params.name);
    const backends: Record<string, Point[]> = {};
    for (const b of a.spec.backends) backends[b.nodeId] = history.get('node', b.nodeId, since);
    return { aliasName: a.spec.name, sampleSeconds: SAMPLE_MS / 1000, keepSeconds: KEEP_MS / 1000, points: history.get('alias', a.spec.name, since), backends };
  });

  // ---- the live stream -------------------------------------------------------------------
  // An instance status that changes (a kill, a restart, a rollout step) reaches the open pages
  // at once: the controller reports every node's statuses, and only a change pokes the streams.
  // Each sends that node's view right then (a forked instance can be back within a few ms: a
  // later look would miss the spell out of service), then builds all its views once, shortly after.
  const lastStatuses = new Map<string, string>();
  const pokes = new Set<(nodeId: string) => void>();
  const stopStatuses = deps.metrics.onInstanceStatuses((nodeId, statuses) => {
    const key = statuses.join();
    if (lastStatuses.get(nodeId) === key) return;
    lastStatuses.set(nodeId, key);
    for (const poke of pokes) poke(nodeId);
  });

  // One SSE stream per open page. Every tick it builds the views the token may read and sends
  // only those that changed (and which disappeared); after each metrics sample, the "now" of
  // every node and alias it sees. The page never polls.
  let watchers = 0;
  app.get('/v1/watch', {
    schema: route({
      tags: ['meta'], summary: 'Server-sent events: nodes, aliases and their metrics as they change, for the folders this token may read',
      response: { 200: textAnswer('text/event-stream', 'events `nodes`, `aliases`, `metrics` (JSON data) until the caller leaves'), ...errors(503) },
    }),
  }, async (req, reply) => {
    if (watchers >= MAX_WATCHERS) {
      throw new BerthError('TOO_MANY_WATCHERS', `${MAX_WATCHERS} watch streams are open already; try again later`, { limit: MAX_WATCHERS }, { 'retry-after': '5' });
    }
    watchers++;
    const token = req.token;
    void reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff',
      'x-accel-buffering': 'no', 'x-request-id': req.id,
    });
    res.write(`retry: 2000\n\n`);
    const sent = { nodes: new Map<string, string>(), aliases: new Map<string, string>() };
    /** The records of the nodes this page sees, as of the last build (a poked node's view is made from its record). */
    const records = new Map<string, NodeRecord>();
    const aliasNames = new Map<string, string>();
    const initial = { nodes: false, aliases: false };
    let closed = false;
    let busy = false;
    const send = (event: string, data: unknown): void => {
      if (closed) return;
      if (res.writableLength > WATCH_BUFFER_BYTES) { close(); return; } // a reader this slow starts over
      res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    };
    const authorization = req.headers.authorization;
    let again = false;
    // a token revoked while its page is open stops receiving at once
    const allowed = (): boolean => {
      try { deps.auth.authenticate(authorization); return true; } catch (err) {
        send('error', { code: (err as BerthError).code ?? 'UNAUTHENTICATED', message: (err as Error).message });
        close();
        return false;
      }
    };
    const tick = async (): Promise<void> => {
      if (closed) return;
      if (busy) { again = true; return; } // a change arrived while building: build once more after
      if (!allowed()) return;
      busy = true;
      try {
        const [nodes, aliases] = await Promise.all([deps.store.listNodes(), deps.store.listAliases()]);
        if (lastStatuses.size > nodes.length) {
          const ids = new Set(nodes.map((n) => n.id));
          for (const id of lastStatuses.keys()) if (!ids.has(id)) lastStatuses.delete(id); // deleted nodes
        }
        for (const [kind, list, view] of [
          ['nodes', nodes.filter((n) => readable(token, n.spec.folderId)), (x: NodeRecord) => nodeView(deps, x)],
          ['aliases', aliases.filter((a) => readable(token, a.spec.folderId)), (x: AliasRecord) => aliasView(deps, x)],
        ] as const) {
          const before = sent[kind];
          const changed: unknown[] = [];
          const seen = new Set<string>();
          for (const r of list as Array<NodeRecord & AliasRecord>) {
            seen.add(r.id);
            const v = (view as (x: NodeRecord & AliasRecord) => Record<string, unknown>)(r);
            const json = JSON.stringify(v);
            if (before.get(r.id) !== json) { before.set(r.id, json); changed.push(v); }
            if (kind === 'aliases') aliasNames.set(r.id, (r as AliasRecord).spec.name);
            else records.set(r.id, r);
          }
          const gone = [...before.keys()].filter((id) => !seen.has(id));
          for (const id of gone) { before.delete(id); aliasNames.delete(id); records.delete(id); }
          if (changed.length || gone.length || !initial[kind]) send(kind, { [kind]: changed, gone, full: !initial[kind] });
          initial[kind] = true;
        }
      } catch {
        // a store error this tick: the next one tries again
      } finally {
        busy = false;
        if (again) { again = false; void tick(); }
      }
    };
    const metrics = (t: number): void => {
      const nodes: Record<string, Point> = {};
      const aliases: Record<string, Point> = {};
      for (const id of sent.nodes.keys()) { const p = history.recent('node', id); if (p) nodes[id] = p; }
      for (const name of aliasNames.values()) { const p = history.recent('alias', name); if (p) aliases[name] = p; }
      send('metrics', { t, nodes, aliases });
    };
    const timer = setInterval(() => { void tick(); }, WATCH_TICK_MS);
    let soon: NodeJS.Timeout | null = null;
    const poke = (nodeId: string): void => {
      const r = records.get(nodeId);
      if (r && !closed && allowed()) {
        const v = nodeView(deps, r);
        const json = JSON.stringify(v);
        if (sent.nodes.get(nodeId) !== json) { sent.nodes.set(nodeId, json); send('nodes', { nodes: [v], gone: [], full: false }); }
      }
      soon ??= setTimeout(() => { soon = null; void tick(); }, POKE_DELAY_MS);
    };
    pokes.add(poke);
    const keepalive = setInterval(() => { if (!closed) res.write(': keepalive\n\n'); }, KEEPALIVE_MS);
    const unsubscribe = history.onSample(metrics);
    const close = (): void => {
      if (closed) return;
      closed = true;
      watchers--;
      clearInterval(timer);
      clearInterval(keepalive);
      if (soon) clearTimeout(soon);
      pokes.delete(poke);
      unsubscribe();
      closers.delete(close);
      if (!res.writableEnded) res.end();
    };
    closers.add(close);
    res.on('close', close);
    send('hello', { token: { id: token.id, name: token.name, roles: token.roles }, sampleSeconds: SAMPLE_MS / 1000 });
    await tick();
    metrics(Date.now());
  });

  history.start();
  return {
    history,
    close: () => {
      history.stop();
      stopStatuses();
      for (const c of [...closers]) c();
    },
  };
}
