// `berth up`: the control API, the controller and the gateway in one process, on one port.
import { createServer, type IncomingMessage, type ServerResponse, type Server } from 'node:http';
import { mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import Fastify, { type FastifyError } from 'fastify';
import swagger from '@fastify/swagger';
import type { Config } from './core/config.js';
import { Auth } from './core/auth.js';
import { BerthError } from './core/errors.js';
import { Metrics } from './core/metrics.js';
import { SqliteStore } from './store/sqlite.js';
import { ProcessRuntime } from './runtimes/process.js';
import { Controller } from './controller/controller.js';
import { CheckpointService } from './checkpoints/service.js';
import { Gateway } from './gateway/execute.js';
import { sendError } from './gateway/http-util.js';
import { registerRoutes } from './api/routes.js';

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

export async function startBerth(config: Config): Promise<RunningBerth> {
  mkdirSync(config.home, { recursive: true, mode: 0o700 });
  const store = new SqliteStore(join(config.home, 'berth.db'));
  await store.migrate();
  const auth = new Auth(store);
  await auth.load();
  await auth.ensureAdminToken(config.home);

  const metrics = new Metrics();
  const runtime = new ProcessRuntime(config.home);
  const controller = new Controller(config, store, runtime, metrics);
  const checkpoints = new CheckpointService(config, store);
  const gateway = new Gateway(config, controller, auth, metrics);

  let httpServer!: Server;
  const app = Fastify({
    logger: false,
    bodyLimit: config.maxRequestBytes,
    serverFactory: (handler) => {
      // data-plane calls skip the framework entirely: the hot path stays short
      httpServer = createServer({ keepAliveTimeout: 65_000 }, (req: IncomingMessage, res: ServerResponse) => {
        if (Gateway.handles(req.url)) void gateway.handle(req, res);
        else handler(req, res);
      });
      return httpServer;
    },
  });

  await app.register(swagger, {
    openapi: { info: { title: 'Berth control API', version: '0.1.0', description: 'Nodes, checkpoints and tokens. Calls go to /datasphere/v1/nodes/{id}:execute.' } },
  });
  app.setErrorHandler((err: FastifyError, _req, reply) => {
    let e: unknown = err;
    if (!(err instanceof BerthError)) {
      if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') e = new BerthError('PAYLOAD_TOO_LARGE', `request body exceeds the limit of ${config.maxRequestBytes} bytes`, { limit: config.maxRequestBytes });
      else if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') e = new BerthError('UNSUPPORTED_MEDIA_TYPE', err.message);
      else if (err.statusCode === 400) e = new BerthError('INVALID_JSON', `request body is not valid JSON: ${err.message}`);
    }
    void reply.hijack();
    sendError(reply.raw, e);
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.hijack();
    sendError(reply.raw, new BerthError('ROUTE_NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`, { path: req.url }));
  });
  app.get('/metrics', { schema: { hide: true } }, async (_req, reply) => {
    reply.header('content-type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  registerRoutes(app, { config, store, auth, controller, checkpoints });

  await controller.start();
  await app.listen({ host: config.host, port: config.port });
  const address = httpServer.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  const url = `http://${config.host}:${port}`;
  // lets the CLI find this server without being told
  writeFileSync(join(config.home, 'server.json'), JSON.stringify({ url, pid: process.pid }) + '\n', { mode: 0o600 });

  let closing: Promise<void> | null = null;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      gateway.draining = true;
      httpServer.close();
      httpServer.closeIdleConnections();
      const deadline = Date.now() + config.drainSeconds * 1000;
      while (gateway.inFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      await controller.stop();
      httpServer.closeAllConnections();
      await app.close().catch(() => undefined);
      await store.close();
      rmSync(join(config.home, 'server.json'), { force: true });
    })();
    return closing;
  };
  return { url, config, close };
}
