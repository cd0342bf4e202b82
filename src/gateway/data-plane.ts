// The serving half of `berth up`: the front door on the one port (HTTP/1.1, h2c, gRPC, TLS),
// the execute gateway, the header-routed proxy and Berth's own gRPC services, all reading
// routing snapshots and nothing else. Whatever is not data plane (the control API,
// /openapi.json, /metrics) goes to `control`: fastify in the same process with one gateway,
// or a relay to the primary in a gateway worker (cluster/worker.ts). Built the same way in
// both, so the two modes serve calls with the same code.
import { createServer, type IncomingMessage, type ServerResponse, type Server } from 'node:http';
import { createServer as createH2Server, constants as h2c, Http2ServerRequest, Http2ServerResponse, type Http2Server, type IncomingHttpHeaders } from 'node:http2';
import type { AddressInfo } from 'node:net';
import type { Config } from '../core/config.js';
import type { Auth } from '../core/auth.js';
import { BerthError } from '../core/errors.js';
import type { Metrics } from '../core/metrics.js';
import type { AliasTable } from '../aliases/table.js';
import { startGrpcServer, type GrpcServer } from './grpc/node-service.js';
import { TypedServices } from './grpc/typed.js';
import { InferenceProtocol } from './oip/service.js';
import { Gateway } from './execute.js';
import { Proxy, relay } from './proxy.js';
import { RequestBody } from './upstream.js';
import { H2Upstream } from './h2/client.js';
import { sendTrailersWhenAsked, type CallerConnection, type CallerStream } from './h2/server.js';
import { CallPipeline } from './pipeline.js';
import { Deadline } from './deadlines.js';
import { createFrontDoor, type FrontDoor } from './front-door.js';
import { sendError, type HttpRequest, type HttpResponse } from './http-util.js';
import { canonicalTarget, proxiedTarget } from './target.js';
import { guardHttp1, guardH2, respondH2Error } from './last-resort.js';
import type { RoutingTable } from './routing-table.js';

export interface DataPlaneDeps {
  config: Config;
  routes: RoutingTable;
  auth: Auth;
  metrics: Metrics;
  aliases: AliasTable;
  /** Everything that is not a data-plane call (already made canonical). */
  control: (req: IncomingMessage, res: ServerResponse) => void;
  tls: { cert: Buffer; key: Buffer } | null;
}

export interface DataPlane {
  httpServer: Server;
  /** node:http2 on a loopback port, for the HTTP/2 requests that need Node's compatibility API (the control API). */
  compatServer: Http2Server;
  gateway: Gateway;
  proxy: Proxy;
  door: FrontDoor;
  /** Refuses new calls and waits (until the deadline) for running ones. */
  drain(deadline: number): Promise<void>;
  /** Closes every connection and Berth's gRPC server. */
  close(): Promise<void>;
}

export async function createDataPlane(deps: DataPlaneDeps): Promise<DataPlane> {
  const { config, routes, auth, metrics, aliases } = deps;
  const pipeline = new CallPipeline(routes, aliases, auth, metrics);
  const gateway = new Gateway(config, routes, pipeline, metrics);
  const proxy = new Proxy(config, routes, pipeline);
  // gRPC execute calls count in the per-node and per-alias metrics themselves (the call pipeline)
  // every cell node's typed service (berth.nodes.v1.<Name>), listed by reflection to those who may call it
  const typed = new TypedServices(routes, gateway, config.maxRequestBytes);
  // the Open Inference Protocol (KServe v2) over the cell nodes, REST and gRPC
  const oip = new InferenceProtocol(config, routes, gateway);
  const grpc: GrpcServer = await startGrpcServer({ gateway, maxMessageBytes: config.maxRequestBytes, reflect: (token) => typed.descriptorsFor(token) });

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

  /**
   * An HTTP/1.1 request's target, made canonical once for every router (header-routed calls
   * keep their path as sent), and the data-plane handler that serves it, if one does. Served
   * so by the raw front (h1-front.ts) and by node:http alike.
   */
  const dataPlaneCall = (req: HttpRequest): ((req: HttpRequest, res: HttpResponse) => void | Promise<void>) | BerthError | null => {
    const routed = Proxy.routed(req.headers);
    const t = routed ? proxiedTarget(req.url ?? '') : canonicalTarget(req.url ?? '');
    if (!t.ok) return t.error; // the framing is intact: answered, the connection stays usable
    req.url = t.target;
    return routed ? proxyCall : Gateway.handles(t.target) ? executeCall : null;
  };
  const proxyCall = guardHttp1('http1', (req: HttpRequest, res: HttpResponse) => fault(req.headers) ?? proxy.handleHttp1(req, res));
  const executeCall = guardHttp1('http1', (req: HttpRequest, res: HttpResponse) => fault(req.headers) ?? gateway.handle(req, res));
  const serveCall = guardHttp1('http1', (req: HttpRequest, res: HttpResponse) => {
    const call = dataPlaneCall(req);
    if (call instanceof BerthError) { sendError(res, call); return; }
    if (call) return call(req, res);
    const injected = fault(req.headers);
    if (injected) return injected;
    if (InferenceProtocol.handles(req.url)) return oip.handle(req as IncomingMessage, res as ServerResponse);
    deps.control(req as IncomingMessage, res as ServerResponse);
  });
  // HTTP/1.1 connections start at the raw front, which serves data-plane calls itself and hands
  // everything else (the control API, /metrics, OIP, the dashboard) to this server.
  // timeouts: see gateway/front-door.ts (requestTimeout 0: a long upload is bounded by idleness, not as a whole)
  const httpServer = createServer({
    keepAliveTimeout: config.idleTimeoutMs, headersTimeout: config.headersTimeoutMs, requestTimeout: 0,
    connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(config.headersTimeoutMs / 4))),
  }, serveCall);
  // HTTP/2 callers are served by the gateway's own server side (h2/server.ts): header-routed
  // calls go to image instances, gRPC to Berth's own services; the rest (the control API, REST
  // execute, OIP over REST) needs Node's compatibility request/response, which only node:http2's
  // streams have: those streams go on, over the gateway's own client, to node:http2 on a
  // loopback port, served there by the same handlers as HTTP/1.1
  const compatServer = createH2Server({ maxSessionMemory: 64 });
  compatServer.on('stream', guardH2('h2', (stream, headers) => {
    stream.on('error', () => undefined);
    const path = String(headers[':path'] ?? '');
    const rawHeaders = Object.entries(headers).flatMap(([k, v]) => (Array.isArray(v) ? v.flatMap((x) => [k, x]) : v === undefined ? [] : [k, String(v)]));
    const req = new (Http2ServerRequest as unknown as new (...a: unknown[]) => IncomingMessage)(stream, headers, undefined, rawHeaders);
    const res = new (Http2ServerResponse as unknown as new (...a: unknown[]) => ServerResponse)(stream);
    if (Gateway.handles(path)) return gateway.handle(req, res);
    if (InferenceProtocol.handles(path)) return oip.handle(req, res);
    deps.control(req, res);
  }));
  compatServer.on('sessionError', () => undefined);
  await new Promise<void>((resolve) => compatServer.listen(0, '127.0.0.1', resolve));
  const compatPort = (compatServer.address() as AddressInfo).port;
  // connections on to grpc-js and to node:http2, one pair per caller connection and closed with
  // it: a caller that leaves bodies unread stalls only its own (an HTTP/2 connection's window is shared)
  const behind = new WeakMap<CallerConnection, { grpc: H2Upstream; compat: H2Upstream }>();
  const open = new Set<H2Upstream>();
  const upstreamsOf = (conn: CallerConnection): { grpc: H2Upstream; compat: H2Upstream } => {
    let u = behind.get(conn);
    if (!u) {
      const pair = { grpc: new H2Upstream({ host: '127.0.0.1', port: grpc.port }), compat: new H2Upstream({ host: '127.0.0.1', port: compatPort }) };
      behind.set(conn, u = pair);
      open.add(pair.grpc).add(pair.compat);
      conn.onClose(() => { for (const up of [pair.grpc, pair.compat]) { up.close(); open.delete(up); } });
    }
    return u;
  };

  const serveH2 = guardH2('h2', (stream: CallerStream, headers: IncomingHttpHeaders, conn: CallerConnection) => {
    stream.on('error', () => undefined);
    const routed = Proxy.routed(headers);
    const t = routed ? proxiedTarget(String(headers[':path'] ?? '')) : canonicalTarget(String(headers[':path'] ?? ''));
    if (!t.ok) return respondH2Error(stream, headers, t.error);
    headers[':path'] = t.target;
    const injected = fault(headers);
    if (injected) return injected;
    if (routed) return proxy.handleHttp2(stream, headers);
    if (!String(headers['content-type'] ?? '').startsWith('application/grpc')) return forwardStream(stream, headers, upstreamsOf(conn).compat);
    // NodeService calls are served right here; reflection and health by grpc-js behind it
    if (!grpc.handleStream(stream, headers) && !typed.handleStream(stream, headers) && !oip.handleStream(stream, headers)) return forwardStream(stream, headers, upstreamsOf(conn).grpc);
  });

  const door = createFrontDoor(httpServer, serveH2, {
    maxConnections: config.maxConnections, headersTimeoutMs: config.headersTimeoutMs, idleTimeoutMs: config.idleTimeoutMs, tls: deps.tls,
    // the raw front serves a data-plane call itself; a bad target too (answered there, as here)
    claim: (req) => {
      const call = dataPlaneCall(req);
      return call instanceof BerthError ? (_req, res) => sendError(res, call) : call;
    },
  });

  return {
    httpServer, compatServer, gateway, proxy, door,
    drain: async (deadline) => {
      gateway.draining = true;
      door.server.close();
      door.h1.drain();
      door.h2.drain();
      httpServer.closeIdleConnections();
      while ((gateway.inFlight > 0 || proxy.inFlight > 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    },
    close: async () => {
      door.h1.closeAll();
      door.h2.closeAll();
      httpServer.closeAllConnections();
      for (const up of open) up.close();
      compatServer.close();
      await grpc.close(1000);
    },
  };
}

/**
 * A caller's HTTP/2 stream, on to where it is served on a loopback port: grpc-js (Berth's
 * reflection and health services) or node:http2 (`compatServer`). Errors answer as gRPC or JSON.
 */
async function forwardStream(stream: CallerStream, headers: IncomingHttpHeaders, upstream: H2Upstream): Promise<void> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(headers)) if (!k.startsWith(':') && v !== undefined) out[k] = v as string | string[];
  // the caller going away ends the exchange behind (limits and timeouts are the server's there)
  const gone = new Deadline(Infinity, null);
  stream.once('close', () => { if (!stream.writableFinished) gone.abort(new Error('the caller went away')); });
  try {
    const res = await upstream.request({
      method: String(headers[':method']), path: String(headers[':path']), headers: out, body: new RequestBody(stream),
      signal: gone, headersTimeoutMs: 24 * 3600_000, idleTimeoutMs: 24 * 3600_000,
      // what the caller addressed, for what is served behind (a contract's server URL)
      scheme: String(headers[':scheme']), authority: typeof headers[':authority'] === 'string' ? headers[':authority'] : undefined,
    });
    if (stream.destroyed || stream.closed) { res.body.destroy(); return; }
    if (res.headersOnly) { stream.respond({ ...res.headers, ':status': res.status }, { endStream: true }); return; }
    stream.respond({ ...res.headers, ':status': res.status }, { waitForTrailers: true });
    sendTrailersWhenAsked(stream, () => res.trailers);
    void relay(res.body, stream, () => stream.close(h2c.NGHTTP2_INTERNAL_ERROR), Infinity);
  } catch (err) {
    if (stream.destroyed || stream.closed) return; // the caller is gone
    if (!stream.headersSent) respondH2Error(stream, headers, new BerthError('BAD_GATEWAY', `Berth could not serve the request: ${(err as Error).message}`));
    else stream.close(h2c.NGHTTP2_INTERNAL_ERROR);
  }
}

/** Refuses control-plane requests a gateway cannot serve right now (the primary is unreachable). */
export function controlUnavailable(res: ServerResponse, why: string): void {
  sendError(res, new BerthError('CONTROL_UNAVAILABLE', `the control API is not reachable: ${why}`, {}, { 'retry-after': '1' }));
}
