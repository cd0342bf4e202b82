// `berth up`: the control API, the controller and the gateway in one process, on one
// port that speaks HTTP/1.1, h2c and gRPC (or HTTPS, h2 and gRPC over TLS).
// Every request target is made canonical here, once, before any routing (gateway/target.ts),
// and every handler runs behind the last resort (gateway/last-resort.ts).
import { createServer, type IncomingMessage, type ServerResponse, type Server } from 'node:http';
import { createServer as createH2Server, constants as h2c, Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import { mkdirSync, writeFileSync, rmSync, readFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import Fastify, { type FastifyBaseLogger, type FastifyError } from 'fastify';
import swagger from '@fastify/swagger';
import type { Config } from './core/config.js';
import { Auth } from './core/auth.js';
import { BerthError, asBerthError } from './core/errors.js';
import { Metrics } from './core/metrics.js';
import { SqliteStore } from './store/sqlite.js';
import { createRuntime } from './runtimes/index.js';
import { log } from './core/log.js';
import { checkLogLimits } from './runtimes/log-file.js';
import { Controller } from './controller/controller.js';
import { Telemetry } from './controller/telemetry.js';
import { CheckpointService } from './checkpoints/service.js';
import { Secrets } from './secrets/secrets.js';
import { Gateway } from './gateway/execute.js';
import { Proxy } from './gateway/proxy.js';
import { H2Upstream } from './gateway/upstream.js';
import { createFrontDoor } from './gateway/front-door.js';
import { sendError } from './gateway/http-util.js';
import { canonicalTarget, proxiedTarget } from './gateway/target.js';
import { guardHttp1, guardH2, respondH2Error, installProcessGuards } from './gateway/last-resort.js';
import { startGrpcServer } from './grpc/node-service.js';
import { registerApi } from './api/index.js';
import { Quotas } from './folders/quotas.js';
import { AliasTable } from './aliases/table.js';
import { RoutingTable } from './gateway/routing-table.js';
import { Sandbox } from './sandbox/sandbox.js';

export interface RunningBerth {
  url: string;
  config: Config;
  /** Graceful stop: refuse new calls, let running ones finish, stop every instance. */
  close(): Promise<void>;
}

/** Prerequisites are checked at start, with a message that says what to do. */
export function checkPython(python: string): string | null {
  const r = spawnSync(python, ['-c', 'import dill, sys; print(sys.version.split()[0], dill.__version__)'], { encoding: 'utf8', timeout: 30_000 });
  if (r.error) return `cannot run ${python}: ${r.error.message}. Set BERTH_PYTHON to a Python 3 interpreter.`;
  if (r.status !== 0) {
    return `${python} cannot import dill, which cell nodes need. On Debian/Ubuntu: apt-get install python3-dill (and use /usr/bin/python3), or set BERTH_PYTHON to an interpreter that has dill.`;
  }
  return null;
}

/** Addresses only this machine can reach: no TLS needed there. */
function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

export async function startBerth(config: Config): Promise<RunningBerth> {
  installProcessGuards();
  // read before anything starts: a wrong path fails `berth up` at once
  const tls = config.tls ? { cert: readFileSync(config.tls.certFile), key: readFileSync(config.tls.keyFile) } : null;
  // Berth's own files are its alone (database, logs, tokens, blobs), whatever the umask it
  // was started with or the mode of a home made beforehand; what tenants must read (their
  // checkpoint, their run directory) is opened up explicitly where it is made
  process.umask(0o077);
  mkdirSync(config.home, { recursive: true, mode: 0o700 });
  chmodSync(config.home, 0o700);
  const logLimits = { maxBytes: config.logMaxBytes, files: config.logFiles };
  const logProblem = checkLogLimits(logLimits);
  if (logProblem) throw new Error(logProblem);
  // cells and checkpoint runs execute in this sandbox (docs/sandbox.md)
  const sandbox = new Sandbox({ home: config.home, mode: config.sandbox, uidFirst: config.sandboxUidFirst, uidCount: config.sandboxUidCount, pidsLimit: config.pidsLimit });
  const sandboxProblem = await sandbox.check();
  if (sandboxProblem) throw new Error(sandboxProblem);
  for (const w of sandbox.warnings) console.error(`[berth] WARNING: ${w}`);
  const left = await sandbox.cleanLeftovers();
  if (left.processes || left.cgroups) console.error(`[berth] ended ${left.processes} process(es) in ${left.cgroups} sandbox(es) left by an earlier run`);
  const runtime = createRuntime(config.runtime, config.home, logLimits, sandbox);
  const problem = await runtime.check();
  if (problem) throw new Error(problem);
  const store = new SqliteStore(join(config.home, 'berth.db'));
  await store.migrate();
  const auth = new Auth(store);
  await auth.load();
  await auth.ensureAdminToken(config.home);

  const metrics = new Metrics();
  const secrets = new Secrets(config.home, store);
  const controller = new Controller(config, store, runtime, metrics, secrets);
  const checkpoints = new CheckpointService(config, store, sandbox);
  const aliases = new AliasTable();
  for (const a of await store.listAliases()) aliases.set(a);
  // the gateway serves from the controller's routing snapshots and reports back through them
  const routes = new RoutingTable(controller, config.maxResponseBytes);
  const gateway = new Gateway(config, routes, auth, metrics, aliases);
  const proxy = new Proxy(config, routes, auth, metrics, aliases);
  const telemetry = new Telemetry(controller, config.telemetryIntervalMs);
  // gRPC execute calls count in the per-node and per-alias metrics themselves (the call pipeline)
  const grpc = await startGrpcServer({ gateway, maxMessageBytes: config.maxRequestBytes });
  const grpcUpstream = new H2Upstream({ host: '127.0.0.1', port: grpc.port });

  // test-only failpoints (BERTH_FAULTS=1, read once at start): a request carrying
  // `x-berth-fault: throw | reject | control-api` fails inside a handler, so the tests can
  // prove the last resort on a real server; off, the header means nothing
  const faults = process.env.BERTH_FAULTS === '1';
  const fault = (h: Record<string, unknown>): Promise<void> | undefined => {
    if (!faults) return undefined;
    const f = h['x-berth-fault'];
    if (f === 'throw') throw new TypeError('injected fault: /internal/detail/that/must/not/leak');
    if (f === 'reject') return Promise.reject(new RangeError('injected fault: /internal/detail/that/must/not/leak'));
    return undefined;
  };

  let httpServer!: Server;
  let fastifyHandler!: (req: IncomingMessage, res: ServerResponse) => void;
  const app = Fastify({
    // control-plane requests are logged with their id (also sent back as x-request-id)
    loggerInstance: log.child({ component: 'api' }) as FastifyBaseLogger,
    genReqId: () => randomUUID(),
    bodyLimit: config.maxRequestBytes,
    serverFactory: (handler) => {
      fastifyHandler = handler;
      // data-plane calls skip the framework entirely: the hot path stays short
      // timeouts: see gateway/front-door.ts (requestTimeout 0: a long upload is bounded by idleness, not as a whole)
      httpServer = createServer({
        keepAliveTimeout: config.idleTimeoutMs, headersTimeout: config.headersTimeoutMs, requestTimeout: 0,
        connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(config.headersTimeoutMs / 4))),
      }, guardHttp1('http1', (req: IncomingMessage, res: ServerResponse) => {
        // one canonical target for every router; header-routed calls keep their path as sent
        const routed = Proxy.routed(req.headers);
        const t = routed ? proxiedTarget(req.url ?? '') : canonicalTarget(req.url ?? '');
        if (!t.ok) { sendError(res, t.error); return; } // the framing is intact: the connection stays usable
        req.url = t.target;
        const injected = fault(req.headers);
        if (injected) return injected;
        if (routed) return proxy.handleHttp1(req, res);
        if (Gateway.handles(req.url)) return gateway.handle(req, res);
        handler(req, res);
      }));
      return httpServer;
    },
  });
  // HTTP/2: header-routed calls go to image instances, gRPC to Berth's own services, and
  // everything else (the control API, REST execute) to the same handlers as HTTP/1.1,
  // through Node's compatibility request/response
  const h2Server = createH2Server({ maxSessionMemory: 64 });
  h2Server.on('stream', guardH2('h2', (stream, headers) => {
    stream.on('error', () => undefined);
    const routed = Proxy.routed(headers);
    const t = routed ? proxiedTarget(String(headers[':path'] ?? '')) : canonicalTarget(String(headers[':path'] ?? ''));
    if (!t.ok) return respondH2Error(stream, headers, t.error);
    headers[':path'] = t.target;
    const injected = fault(headers);
    if (injected) return injected;
    if (routed) return proxy.handleHttp2(stream, headers);
    if (String(headers['content-type'] ?? '').startsWith('application/grpc')) {
      // NodeService calls are served right here; reflection and health by grpc-js behind it
      if (!grpc.handleStream(stream, headers)) return forwardToGrpc(stream, headers, grpcUpstream);
      return;
    }
    // the compatibility objects Node's own HTTP/2 'request' event would make; made here, only
    // for these streams, so they never touch the raw streams above (their trailers, say)
    const rawHeaders = Object.entries(headers).flatMap(([k, v]) => (Array.isArray(v) ? v.flatMap((x) => [k, x]) : v === undefined ? [] : [k, String(v)]));
    const req = new (Http2ServerRequest as unknown as new (...a: unknown[]) => IncomingMessage)(stream, headers, undefined, rawHeaders);
    const res = new (Http2ServerResponse as unknown as new (...a: unknown[]) => ServerResponse)(stream);
    if (Gateway.handles(t.target)) return gateway.handle(req, res);
    fastifyHandler(req, res);
  }));
  h2Server.on('sessionError', () => undefined);

  await app.register(swagger, {
    openapi: { info: { title: 'Berth control API', version: '0.1.0', description: 'Nodes, checkpoints, secrets and tokens. Calls go to /datasphere/v1/nodes/{id}:execute.' } },
  });
  app.setErrorHandler((err: FastifyError, _req, reply) => {
    let e: unknown = err;
    if (!(err instanceof BerthError)) {
      if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') e = new BerthError('PAYLOAD_TOO_LARGE', `request body exceeds the limit of ${config.maxRequestBytes} bytes`, { limit: config.maxRequestBytes });
      else if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') e = new BerthError('UNSUPPORTED_MEDIA_TYPE', err.message);
      else if (err.code === 'FST_ERR_BAD_URL') e = new BerthError('INVALID_PATH', 'the request target is not a valid path', { field: 'path' });
      else if (err.statusCode === 400) e = new BerthError('INVALID_JSON', `request body is not valid JSON: ${err.message}`);
      // fastify's own refusals (a method its router does not know, say) keep their 4xx meaning
      else if (err.statusCode === 404) e = new BerthError('ROUTE_NOT_FOUND', `no route ${_req.method} ${_req.url.split('?')[0]}`, { path: _req.url });
      else if (err.statusCode === 405) e = new BerthError('METHOD_NOT_ALLOWED', err.message, { method: _req.method });
      else if (err.statusCode === 413) e = new BerthError('PAYLOAD_TOO_LARGE', `request body exceeds the limit of ${config.maxRequestBytes} bytes`, { limit: config.maxRequestBytes });
      else if (err.statusCode === 415) e = new BerthError('UNSUPPORTED_MEDIA_TYPE', err.message);
      else if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) e = new BerthError('INVALID_ARGUMENT', err.message, { field: 'request' });
    }
    void reply.hijack();
    if (!reply.raw.headersSent) reply.raw.setHeader('x-request-id', _req.id);
    sendError(reply.raw, asBerthError(e, 'control-api'));
  });
  app.addHook('onSend', async (req, reply) => { reply.header('x-request-id', req.id); });
  app.setNotFoundHandler((req, reply) => {
    void reply.hijack();
    sendError(reply.raw, new BerthError('ROUTE_NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`, { path: req.url }));
  });
  if (faults) app.addHook('onRequest', async (req) => { if (req.headers['x-berth-fault'] === 'control-api') throw new TypeError('injected fault: /internal/detail/that/must/not/leak'); });
  const metricsText = async (): Promise<string> => (await metrics.registry.metrics()) + telemetry.exposition();
  app.get('/openapi.json', { config: { public: true }, schema: { hide: true } }, async () => app.swagger());
  registerApi(app, { config, store, auth, controller, checkpoints, secrets, aliases, metrics, quotas: new Quotas(store), metricsText });
  const metricsServer = config.metricsListen ? await startMetricsListener(config.metricsListen, metricsText, metrics.registry.contentType) : null;

  await controller.start();
  controller.attach(routes);
  telemetry.start();
  await app.ready();
  const door = createFrontDoor(httpServer, h2Server, {
    maxConnections: config.maxConnections, headersTimeoutMs: config.headersTimeoutMs, idleTimeoutMs: config.idleTimeoutMs, tls,
  });
  const front = door.server;
  await new Promise<void>((resolve, reject) => {
    front.once('error', reject);
    front.listen(config.port, config.host, () => resolve());
  });
  const address = front.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  const url = `${tls ? 'https' : 'http'}://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`;
  if (!tls && !isLoopback(config.host)) {
    process.stderr.write([
      '',
      '!!! WARNING: Berth is listening on a non-loopback address WITHOUT TLS !!!',
      `!!! ${url}: tokens, inputs and outputs cross the network in cleartext.`,
      '!!! Use --tls-cert FILE --tls-key FILE, or bind 127.0.0.1 behind a TLS proxy.',
      '', ''].join('\n'));
  }
  // lets the CLI find this server without being told
  writeFileSync(join(config.home, 'server.json'), JSON.stringify({ url, pid: process.pid, runtime: runtime.name }) + '\n', { mode: 0o600 });

  let closing: Promise<void> | null = null;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      gateway.draining = true;
      front.close();
      httpServer.closeIdleConnections();
      const deadline = Date.now() + config.drainSeconds * 1000;
      while ((gateway.inFlight > 0 || proxy.inFlight > 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      telemetry.stop();
      routes.close(new BerthError('SHUTTING_DOWN', 'Berth is shutting down', {}, { 'retry-after': '5' }));
      await controller.stop();
      httpServer.closeAllConnections();
      h2Server.close();
      grpcUpstream.close();
      await grpc.close(1000);
      await app.close().catch(() => undefined);
      metricsServer?.close();
      await store.close();
      sandbox.close();
      rmSync(join(config.home, 'server.json'), { force: true });
    })();
    return closing;
  };
  return { url, config, close };
}

/** `--metrics-listen host:port`: Prometheus scrapes here without a token (keep it on a private address). */
async function startMetricsListener(listen: string, text: () => Promise<string>, contentType: string): Promise<Server> {
  const colon = listen.lastIndexOf(':');
  const host = colon > 0 ? listen.slice(0, colon) : '127.0.0.1';
  const port = Number(colon >= 0 ? listen.slice(colon + 1) : listen);
  const server = createServer({ requestTimeout: 10_000, headersTimeout: 5_000 }, (req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') return void sendError(res, new BerthError('ROUTE_NOT_FOUND', 'this listener serves GET /metrics only', { path: req.url }));
    text().then((body) => { res.writeHead(200, { 'content-type': contentType }); res.end(body); },
      (err) => sendError(res, err));
  });
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(port, host, () => resolve()); });
  const a = server.address();
  console.log(`metrics on http://${host}:${typeof a === 'object' && a ? a.port : port}/metrics`);
  return server;
}

/** Berth's own gRPC services (NodeService, reflection, health) run in grpc-js on a loopback port. */
async function forwardToGrpc(stream: import('node:http2').ServerHttp2Stream, headers: import('node:http2').IncomingHttpHeaders, upstream: H2Upstream): Promise<void> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(headers)) if (!k.startsWith(':') && v !== undefined) out[k] = v as string | string[];
  let trailers: Record<string, string | string[]> = {};
  try {
    const res = await upstream.request({
      method: String(headers[':method']), path: String(headers[':path']), headers: out, body: stream,
      signal: new AbortController().signal, headersTimeoutMs: 24 * 3600_000, idleTimeoutMs: 24 * 3600_000,
    });
    if (stream.destroyed || stream.closed) { res.body.destroy(); return; }
    if (res.headersOnly) { stream.respond({ ...res.headers, ':status': res.status }, { endStream: true }); return; }
    stream.respond({ ...res.headers, ':status': res.status }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers(trailers));
    void res.trailers.then((t) => { trailers = t; });
    res.body.pipe(stream);
  } catch (err) {
    if (stream.destroyed || stream.closed) return; // the caller is gone
    if (!stream.headersSent) {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '14', 'grpc-message': encodeURIComponent(`Berth gRPC unavailable: ${(err as Error).message}`) }, { endStream: true });
    } else stream.close(h2c.NGHTTP2_INTERNAL_ERROR);
  }
}
