// `berth up`: the control API, the controller and the gateway, on one port that speaks
// HTTP/1.1, h2c and gRPC (or HTTPS, h2 and gRPC over TLS). With --gateway-workers N > 1 the
// port is served by N gateway processes (cluster/) and this one keeps the rest.
// Every request target is made canonical here, once, before any routing (gateway/target.ts),
// and every handler runs behind the last resort (gateway/last-resort.ts).
import { createServer, type IncomingMessage, type ServerResponse, type Server } from 'node:http';
import { mkdirSync, writeFileSync, rmSync, readFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import Fastify, { type FastifyBaseLogger, type FastifyError } from 'fastify';
import swagger from '@fastify/swagger';
import type { Config } from './core/config.js';
import { Auth } from './core/auth.js';
import { BerthError, asBerthError, logInternalError, routeNotFound } from './core/errors.js';
import { Metrics } from './core/metrics.js';
import { openStore, isPostgresUrl } from './store/index.js';
import { createRuntime } from './runtimes/index.js';
import { log } from './core/log.js';
import { checkLogLimits } from './runtimes/log-file.js';
import { Controller } from './controller/controller.js';
import { Telemetry } from './controller/telemetry.js';
import { CheckpointService } from './checkpoints/service.js';
import { Secrets } from './secrets/secrets.js';
import { createDataPlane } from './gateway/data-plane.js';
import { sendError } from './gateway/http-util.js';
import { installProcessGuards } from './gateway/last-resort.js';
import { GatewayCluster } from './cluster/primary.js';
import { registerApi } from './api/index.js';
import { internalRoutes } from './api/internal.js';
import { Quotas } from './folders/quotas.js';
import { AliasTable } from './aliases/table.js';
import { RoutingTable } from './gateway/routing-table.js';
import { Sandbox } from './sandbox/sandbox.js';
import { UsageRecorder } from './usage/recorder.js';
import { registerDashboard } from './ui/plugin.js';
import { PeerBus, type PeerServer } from './peers/bus.js';
import { Peering, peerEvents } from './peers/peering.js';

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
  // SQLite in the home, or PostgreSQL (--store): migrated here; an unreachable database stops `berth up` now
  const { store, blobs } = await openStore(config);
  // a PostgreSQL store can be shared by several Berth servers: one leads (runs the controller),
  // every one serves (src/peers/); their containers belong to the cluster, not to one home
  const bus = config.store && isPostgresUrl(config.store) ? await PeerBus.connect(config.store) : null;
  const runtime = createRuntime(config.runtime, config.home, logLimits, sandbox, { workerTransport: config.workerTransport, secretKeyFile: config.secretKeyFile, ...(bus ? { owner: `berth-cluster:${bus.clusterId}` } : {}) });
  const problem = await runtime.check();
  if (problem) throw new Error(problem);
  // cached checkpoint files of checkpoints deleted meanwhile (by another server sharing the database)
  if (blobs.pruneCache) await blobs.pruneCache(new Set((await store.listCheckpoints()).map((c) => c.id)));
  const auth = new Auth(store);
  await auth.load();
  await auth.ensureAdminToken(config.home);

  const metrics = new Metrics();
  const secrets = new Secrets(config.home, store, config.secretKeyFile);
  const keyProblem = bus ? await bus.checkSecretKey(secrets.keyCheck()) : null;
  if (keyProblem) throw new Error(keyProblem);
  const controller = new Controller(config, store, runtime, metrics, secrets, blobs);
  // usage accounting: instance time from the controller, calls and bytes from the gateway(s)
  const usage = new UsageRecorder(store, metrics, { nameOf: (id) => controller.nodeSpec(id)?.name });
  await usage.load();
  controller.meterInstances(usage);
  const checkpoints = new CheckpointService(config, store, sandbox, blobs);
  const aliases = new AliasTable();
  for (const a of await store.listAliases()) aliases.set(a);
  const telemetry = new Telemetry(controller, config.telemetryIntervalMs);
  const faults = process.env.BERTH_FAULTS === '1';
  // one gateway in this process, or N gateway workers (cluster/primary.ts) that serve the port
  // while this process keeps the controller, the store and the control API; either way, with a
  // shared store, what the gateway sees goes to whichever server leads (src/peers/)
  const clustered = config.gatewayWorkers > 1;
  const events = bus ? peerEvents(bus, controller) : controller;
  const routes = clustered ? null : new RoutingTable(events, config.maxResponseBytes);
  // with workers, the control API listens on a unix socket only they (and this user) reach
  const controlSocket = join(config.home, 'control.sock');
  let controlServer: Server | null = null;
  const gatewayCluster = clustered ? new GatewayCluster({ config, events, auth, aliases, controlSocket, usage }) : null;
  const gateway = (gatewayCluster ?? routes)!;
  const peering = bus ? new Peering({
    bus, controller, gateway, auth, aliases, store,
    // this server took the lease: its controller adopts what the last leader ran
    lead: async (sink) => {
      await usage.load();
      await controller.start();
      usage.forgetLeftovers();
      controller.attach(sink);
      log.info({ component: 'peers', serverId: bus.serverId }, 'this server leads: controller started');
    },
    // another server may lead now: stop acting at once, then shut down (never two controllers)
    lost: (reason) => {
      console.error(`[berth] ${reason}: this server stops (another one takes over)`);
      void controller.stop(true).then(() => close()).finally(() => process.exit(3));
    },
  }) : null;
  let fastifyHandler!: (req: IncomingMessage, res: ServerResponse) => void;
  const localControl = (req: IncomingMessage, res: ServerResponse): void => fastifyHandler(req, res);
  const control = peering ? peering.control(localControl) : localControl;
  const plane = routes ? await createDataPlane({ config, routes, auth, metrics, aliases, tls, control }) : null;
  if (routes) usage.drainFrom(() => routes.usage.drain());
  if (gatewayCluster) usage.collectFrom(() => gatewayCluster.sync());

  const app = Fastify({
    // control-plane requests are logged with their id (also sent back as x-request-id)
    loggerInstance: log.child({ component: 'api' }) as FastifyBaseLogger,
    genReqId: () => randomUUID(),
    bodyLimit: config.maxRequestBytes,
    serverFactory: (handler) => {
      fastifyHandler = handler;
      if (plane) return plane.httpServer;
      // headers as big as a front accepts (HTTP/2's header list, 64 KiB by default, is bigger
      // than HTTP/1.1's 16 KiB): the front door refuses what is too big, not this socket
      controlServer = createServer({ keepAliveTimeout: 60_000, requestTimeout: 0, maxHeaderSize: 80 * 1024 }, control);
      // only gateway workers' relays talk here: a request they send that does not parse is a
      // bug in the relay (a body's bytes read as a request, say), never a caller's mistake
      controlServer.on('clientError', (err: NodeJS.ErrnoException, socket) => {
        // (not one it ended on purpose midway: its caller left)
        if (err.code?.startsWith('HPE_') && err.code !== 'HPE_INVALID_EOF_STATE') logInternalError(randomUUID(), 'control socket: a relayed request did not parse', err);
        socket.destroy();
      });
      return controlServer;
    },
  });

  await app.register(swagger, {
    openapi: {
      info: { title: 'Berth control API', version: '0.1.0', description: 'Nodes, checkpoints, secrets and tokens. Calls go to /datasphere/v1/nodes/{id}:execute; each cell node\'s own contract is at /v1/nodes/{id}/openapi.json.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    // components named by their schema's $id (Node, Error…), not def-0, def-1…
    refResolver: { buildLocalReference: (json, _b, _f, i) => String(json.$id ?? `def-${i}`) },
  });
  app.setErrorHandler((err: FastifyError, _req, reply) => {
    let e: unknown = err;
    if (!(err instanceof BerthError)) {
      if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') e = new BerthError('PAYLOAD_TOO_LARGE', `request body exceeds the limit of ${config.maxRequestBytes} bytes`, { limit: config.maxRequestBytes });
      else if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') e = new BerthError('UNSUPPORTED_MEDIA_TYPE', err.message);
      else if (err.code === 'FST_ERR_BAD_URL') e = new BerthError('INVALID_PATH', 'the request target is not a valid path', { field: 'path' });
      else if (err.statusCode === 400) e = new BerthError('INVALID_JSON', `request body is not valid JSON: ${err.message}`);
      // fastify's own refusals (a method its router does not know, say) keep their 4xx meaning
      else if (err.statusCode === 404) e = routeNotFound(_req.method, _req.url);
      else if (err.statusCode === 405) e = new BerthError('METHOD_NOT_ALLOWED', err.message, { method: _req.method });
      else if (err.statusCode === 413) e = new BerthError('PAYLOAD_TOO_LARGE', `request body exceeds the limit of ${config.maxRequestBytes} bytes`, { limit: config.maxRequestBytes });
      else if (err.statusCode === 415) e = new BerthError('UNSUPPORTED_MEDIA_TYPE', err.message);
      else if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) e = new BerthError('INVALID_ARGUMENT', err.message, { field: 'request' });
    }
    void reply.hijack();
    if (!reply.raw.headersSent) reply.raw.setHeader('x-request-id', _req.id);
    sendError(reply.raw, asBerthError(e, 'control-api'));
  });
  app.addHook('onSend', async (req, reply) => {
    reply.header('x-request-id', req.id);
    // with gateway workers, a change is answered once every worker has it (tokens, aliases, routing)
    if (gatewayCluster && req.method !== 'GET' && req.method !== 'HEAD') await gatewayCluster.sync();
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.hijack();
    sendError(reply.raw, routeNotFound(req.method, req.url));
  });
  if (faults) app.addHook('onRequest', async (req) => { if (req.headers['x-berth-fault'] === 'control-api') throw new TypeError('injected fault: /internal/detail/that/must/not/leak'); });
  /** /metrics: everything, with the instances' own telemetry; `callsOnly`: the node and alias call families (the dashboard's history). */
  const metricsText = async (callsOnly = false): Promise<string> => {
    const text = gatewayCluster ? await gatewayCluster.metrics(metrics, callsOnly) : await metrics.text(callsOnly);
    return callsOnly ? text : text + telemetry.exposition();
  };
  // which processes serve the port, and how fast routing snapshots reach them
  app.get('/v1/gateway', { schema: { hide: true } }, async (req) => {
    if (!Auth.isSuperAdmin(req.token)) throw new BerthError('PERMISSION_DENIED', '/v1/gateway needs an admin token on "*"', { needs: 'admin on *' });
    return gatewayCluster ? { mode: 'workers', ...gatewayCluster.status() } : { mode: 'single', workers: [{ id: 0, pid: process.pid, ready: true }] };
  });
  app.get('/openapi.json', { config: { public: true }, schema: { hide: true } }, async () => app.swagger());
  let selfUrl = ''; // known once the port is
  const servers = async (): Promise<PeerServer[]> => (bus ? bus.servers() : [{ id: 'local', url: selfUrl, leader: true, seenAt: new Date().toISOString() }]);
  const apiDeps = { config, store, auth, controller, checkpoints, secrets, aliases, metrics, quotas: new Quotas(store), metricsText, usage, servers };
  registerApi(app, apiDeps);
  if (runtime.checkpointGrants) internalRoutes(app, runtime.checkpointGrants); // workers fetch their checkpoint (TCP workers)
  const dashboard = registerDashboard(app, apiDeps); // /ui, GET /v1/watch, metrics history (src/ui/)
  const metricsServer = config.metricsListen ? await startMetricsListener(config.metricsListen, metricsText, metrics.registry.contentType) : null;

  if (!bus) {
    await controller.start();
    usage.forgetLeftovers(); // what the last run left open and nobody adopted has stopped
  }
  usage.start();
  telemetry.start();
  await app.ready();
  let port: number;
  if (gatewayCluster) {
    if (!peering) controller.attach(gatewayCluster);
    rmSync(controlSocket, { force: true });
    await new Promise<void>((resolve, reject) => { controlServer!.once('error', reject); controlServer!.listen(controlSocket, () => resolve()); });
    chmodSync(controlSocket, 0o600);
    port = await gatewayCluster.start();
  } else {
    if (!peering) controller.attach(routes!);
    const front = plane!.door.server;
    await new Promise<void>((resolve, reject) => {
      front.once('error', reject);
      front.listen(config.port, config.host, () => resolve());
    });
    const address = front.address();
    port = typeof address === 'object' && address ? address.port : config.port;
  }
  const url = `${tls ? 'https' : 'http'}://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`;
  selfUrl = config.advertiseUrl ?? url;
  if (!tls && !isLoopback(config.host)) {
    process.stderr.write([
      '',
      '!!! WARNING: Berth is listening on a non-loopback address WITHOUT TLS !!!',
      `!!! ${url}: tokens, inputs and outputs cross the network in cleartext.`,
      '!!! Use --tls-cert FILE --tls-key FILE, or bind 127.0.0.1 behind a TLS proxy.',
      '', ''].join('\n'));
  }
  // TCP workers fetch their checkpoint from here (loopback: the sandbox shares the host's network);
  // not over TLS, whose certificate a worker could not check
  // (workers on other machines — swarm — need a reachable address: see CheckpointGrants.served)
  if (!tls) runtime.checkpointGrants?.serveAt(`http://${fetchHost(config.host)}:${port}`, { host: config.host, port, advertiseUrl: config.advertiseUrl });
  // with a shared store: join the other servers; the first one up leads before `berth up` says it is up
  if (peering) await peering.start(selfUrl);
  // lets the CLI find this server without being told
  writeFileSync(join(config.home, 'server.json'), JSON.stringify({ url, pid: process.pid, runtime: runtime.name }) + '\n', { mode: 0o600 });

  let closing: Promise<void> | null = null;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      const deadline = Date.now() + config.drainSeconds * 1000;
      dashboard.close(); // watch streams end first: the pages reconnect to whichever server comes next
      // every gateway stops taking calls and lets running ones finish; instances stop only then
      if (gatewayCluster) await gatewayCluster.drain(deadline);
      else await plane!.drain(deadline);
      telemetry.stop();
      peering?.stop();
      routes?.close(new BerthError('SHUTTING_DOWN', 'Berth is shutting down', {}, { 'retry-after': '5' }));
      // with a shared store, containers stay up for whichever server leads next to adopt
      await controller.stop(bus !== null && runtime.name !== 'process');
      await bus?.close(); // frees the lease at once
      await runtime.close?.(); // fork templates, once their instances are gone
      await usage.stop(); // the instances have stopped (their time is final) and the gateways drained
      await plane?.close();
      controlServer?.closeAllConnections();
      await app.close().catch(() => undefined);
      metricsServer?.close();
      await store.close();
      sandbox.close();
      rmSync(join(config.home, 'server.json'), { force: true });
      if (gatewayCluster) rmSync(controlSocket, { force: true });
    })();
    return closing;
  };
  return { url, config, close };
}

/** The address a local worker reaches this Berth at: loopback when it listens on every address. */
function fetchHost(host: string): string {
  if (host === '0.0.0.0' || host === '' ) return '127.0.0.1';
  if (host === '::') return '[::1]';
  return host.includes(':') ? `[${host}]` : host;
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
