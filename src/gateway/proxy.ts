// Header-routed calls to image nodes: any method and path with `x-node-id` (or
// `x-node-alias`), `x-folder-id` and a token go to a Healthy instance with method, path,
// query, headers and body intact. HTTP/1.1, HTTP/2 and gRPC (with trailers) are carried
// and streamed both ways: nothing is buffered whole. Who may call what is decided by the one
// call pipeline (pipeline.ts), as for execute calls.
// With gateway workers, a node whose sessions another worker holds (its home) is called through
// that worker: this one does the caller's side (auth, folder, alias, limits, metrics, usage)
// and sends the exchange there as an HTTP/2 stream naming the node (RELAY_NODE); the home
// serves it as its own calls from the instance on (serveRelayed).
import type { IncomingHttpHeaders } from 'node:http';
import { constants as h2c, type IncomingHttpHeaders as H2Headers } from 'node:http2';
import { sendTrailersWhenAsked, type CallerStream } from './h2/server.js';
import type { Config } from '../core/config.js';
import { BerthError, asBerthError, errorFromWire, errorToWire } from '../core/errors.js';
import type { ImageNodeSpec } from '../core/types.js';
import { RELAYED, type CallRelay, type NodeRoute, type RoutingTable } from './routing-table.js';
import type { Lease } from './dispatcher.js';
import type { AliasRoute } from '../aliases/table.js';
import { RequestBody, isRefused, isUnreachable, type BodySource, type UpstreamResponse } from './upstream.js';
import type { ResponseBody } from './h1-message.js';
import { discardUpload, sendError, type HttpRequest, type HttpResponse } from './http-util.js';
import { respondH2Error } from './last-resort.js';
import type { CallPipeline, CallCount, CallTarget } from './pipeline.js';
import type { CallSignal, Deadline } from './deadlines.js';

/** A relayed call's headers between gateway workers: the node it is for, its alias's sticky key; the home's own error (its body). */
const RELAY_NODE = 'x-berth-relay-node';
const RELAY_STICKY = 'x-berth-relay-sticky';
const RELAY_ERROR = 'x-berth-relay-error';

/** Headers that belong to one connection, or that carry Berth's routing and auth. */
const DROP_REQUEST = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'host', 'http2-settings',
  'x-node-id', 'x-node-alias', 'x-folder-id', 'authorization', 'content-length', RELAY_NODE, RELAY_STICKY]);
const DROP_RESPONSE = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'http2-settings', RELAY_ERROR]);
/**
 * Headers an answer may carry once (node:http2 refuses to send them twice): an instance that
 * repeats one is passed on with its first, as node:http and node:http2 read such answers.
 */
const SINGLE_VALUE = new Set(['access-control-allow-credentials', 'access-control-max-age', 'access-control-request-method', 'age',
  'authorization', 'content-encoding', 'content-language', 'content-length', 'content-location', 'content-md5', 'content-range',
  'content-type', 'date', 'dnt', 'etag', 'expires', 'from', 'host', 'if-match', 'if-modified-since', 'if-none-match', 'if-range',
  'if-unmodified-since', 'last-modified', 'location', 'max-forwards', 'proxy-authorization', 'range', 'referer', 'retry-after',
  'tk', 'upgrade-insecure-requests', 'user-agent', 'x-content-type-options']);

/** Where one call goes: the node, the alias it came through (if any), extra headers. */
interface Target {
  route: NodeRoute & { spec: ImageNodeSpec };
  alias: AliasRoute | null;
  extraHeaders: Array<{ name: string; value: string }>;
  stickyKey: string | undefined;
}

/** The side of the exchange facing the caller: an HTTP/1.1 response or an HTTP/2 stream. */
interface Downstream {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: BodySource;
  isGrpc: boolean;
  headersSent(): boolean;
  /**
   * `body`: null, the answer is its headers alone (nothing follows, not even trailers); a
   * Buffer, the whole body, then the trailers; 'stream', the body follows through `writable`
   * (the headers go with its first bytes); 'flush', it follows and the headers go now (a
   * streamed answer without a length and no byte here yet: SSE).
   */
  respond(status: number, headers: Record<string, string | string[]>, body: Buffer | null | 'stream' | 'flush'): void;
  writable: Pick<HttpResponse, 'write' | 'end' | 'on' | 'once' | 'off'>;
  /** Where the protocol carries trailers (HTTP/2): they end the response. */
  setTrailers?(trailers: Promise<Record<string, string | string[]>>): void;
  fail(err: BerthError): number;
  destroy(): void;
  onClose(cb: () => void): void;
}

export class Proxy {
  /** Calls being served right now; shutdown waits for them. */
  inFlight = 0;

  constructor(
    private readonly config: Config,
    private readonly routes: RoutingTable,
    private readonly pipeline: CallPipeline,
  ) {}

  static routed(headers: IncomingHttpHeaders | H2Headers): boolean {
    return headers['x-node-id'] !== undefined || headers['x-node-alias'] !== undefined;
  }

  handleHttp1(req: HttpRequest, res: HttpResponse): Promise<void> {
    return this.forward(new H1Downstream(req, res), false);
  }

  handleHttp2(stream: CallerStream, headers: H2Headers): Promise<void> {
    const isGrpc = String(headers['content-type'] ?? '').startsWith('application/grpc');
    return this.forward(h2Downstream(stream, headers, isGrpc, (err) => {
      const answered = !stream.destroyed && !stream.closed && !stream.headersSent;
      respondH2Error(stream, headers, err, 'proxy'); // the same answer as every other h2 error
      return answered && isGrpc ? 200 : err.httpStatus;
    }), false);
  }

  /**
   * A call another gateway worker relayed here, the node's home (cluster/call-relay.ts): it
   * queues with this worker's own calls for the node's sessions. The caller's side (auth, the
   * alias and its headers, limits, metrics, usage) was done there; a failure before the
   * instance's answer goes back as the error itself (RELAY_ERROR), for that worker to answer.
   */
  serveRelayed(stream: CallerStream, headers: H2Headers): Promise<void> {
    const isGrpc = String(headers['content-type'] ?? '').startsWith('application/grpc');
    return this.forward(h2Downstream(stream, headers, isGrpc, (err) => {
      if (stream.destroyed || stream.closed) return err.httpStatus;
      if (stream.headersSent) stream.close(h2c.NGHTTP2_INTERNAL_ERROR); // mid-answer: the other side's body fails, as from an instance
      else {
        stream.respond({ ':status': err.httpStatus, [RELAY_ERROR]: '1' });
        stream.end(errorToWire(err));
      }
      return err.httpStatus;
    }), true);
  }

  /** The pipeline's steps for a header-routed call: token, folder from x-folder-id, node or alias. */
  private target(d: Downstream, to: CallTarget, count: CallCount): Target {
    const token = this.pipeline.authenticate(d.headers.authorization);
    const folder = d.headers['x-folder-id'];
    if (typeof folder !== 'string' || !folder) throw new BerthError('INVALID_ARGUMENT', 'the x-folder-id header is required: the folder you call from', { field: 'x-folder-id' });
    const { route, alias, stickyKey } = this.pipeline.resolve(token, folder, to, d.headers, count);
    if (route.spec.kind !== 'image') {
      throw new BerthError('INVALID_ARGUMENT', `node ${route.id} is a cell node: call POST /datasphere/v1/${alias ? `aliases/${alias.spec.name}` : `nodes/${route.id}`}:execute`, { field: alias ? 'x-node-alias' : 'x-node-id', nodeKind: 'cell' });
    }
    return { route: route as Target['route'], alias, extraHeaders: alias?.spec.proxyMetadata.headers ?? [], stickyKey };
  }

  /** At the home: the node the relaying worker named (it did the rest of the pipeline). */
  private relayedTarget(d: Downstream): Target {
    const nodeId = String(d.headers[RELAY_NODE] ?? '');
    const route = this.routes.route(nodeId);
    if (!route || route.spec.kind !== 'image') throw new BerthError('NODE_NOT_FOUND', `node ${nodeId} not found`, { nodeId });
    const sticky = d.headers[RELAY_STICKY];
    return { route: route as Target['route'], alias: null, extraHeaders: [], stickyKey: typeof sticky === 'string' ? sticky : undefined };
  }

  /** `atHome`: a call relayed here by another gateway worker (serveRelayed); it counts there, not here. */
  private async forward(d: Downstream, atHome: boolean): Promise<void> {
    this.inFlight++;
    const nodeId = d.headers['x-node-id'];
    const to: CallTarget = typeof nodeId === 'string' && nodeId ? { nodeId } : { alias: String(d.headers['x-node-alias']) };
    const count = atHome ? null : this.pipeline.count(to);
    let status = 0;
    let grpcStatus: string | undefined;
    let lease: Lease | null = null;
    let route: Target['route'] | null = null;
    let deadline: Deadline | null = null;
    // usage: whether an instance answered, and the body bytes each way (counted as they pass)
    let reached = false;
    let answer: ResponseBody | null = null;
    let body: RequestBody | null = null;
    let answerBytes = 0;
    try {
      const t = count ? this.target(d, to, count) : this.relayedTarget(d);
      route = t.route;
      const { endpoint } = route.spec;
      const limit = this.config.maxRequestBytes;
      const declared = Number(d.headers['content-length'] ?? 0);
      if (declared > limit) throw new BerthError('PAYLOAD_TOO_LARGE', `request body exceeds the limit of ${limit} bytes`, { limit, received: declared });

      // the call's deadline is also its abort signal: queue, upstream and body all listen to it.
      // A node scaled to zero holds the call while an instance starts (the dispatcher bounds the
      // hold and says why past it); the endpoint timeout then starts once the call has its instance.
      const expire = (dl: Deadline): void => dl.abort(lease === null
        ? new BerthError('NODE_UNAVAILABLE', `node ${route!.id} had no healthy instance free within ${endpoint.timeout}s`, { nodeId: route!.id }, { 'retry-after': '1' })
        : new BerthError('CALL_TIMEOUT', `the call did not finish within the endpoint timeout of ${endpoint.timeout}s`, { nodeId: route!.id, timeoutSeconds: endpoint.timeout }));
      const holdMs = route.dispatcher.holdMs;
      // the home keeps the node's deadlines for a call relayed there: this one only bounds them all
      let home = atHome ? null : route.relay;
      const firstMs = home ? (holdMs ?? 0) + endpoint.timeout * 1000 + 1000 : holdMs === null ? endpoint.timeout * 1000 : holdMs + 1000;
      let call: Deadline = deadline = this.pipeline.deadlines.start(firstMs, expire);
      d.onClose(() => call.abort(new BerthError('CLIENT_CLOSED', 'the caller went away before the answer')));

      const hasBody = !(d.method === 'GET' || d.method === 'HEAD') || declared > 0 || d.headers['transfer-encoding'] !== undefined || d.isGrpc;
      body = hasBody ? new RequestBody(d.body, limit, () => new BerthError('PAYLOAD_TOO_LARGE', `request body exceeds the limit of ${limit} bytes`, { limit })) : null;
      const headers = forwardHeaders(d.headers, t.extraHeaders);

      // an instance that refuses the connection is skipped and the call tried on another
      let upstreamRes: UpstreamResponse | null = null;
      let attempts = 0; // instances tried
      for (;;) {
        if (home) {
          try {
            upstreamRes = await viaHome(home, route.id, t.stickyKey, d, headers, body, call);
            break;
          } catch (err) {
            const untouched = !body || body.bytes === 0;
            if (!isUnreachable(err) || !untouched || call.aborted) throw err;
            // its home died before the call got there: to the next home if one is named already
            home = route.homeAfter(home);
            if (home) continue;
          }
        }
        const waitMs = Math.max(1, call.expiresAt - Date.now());
        const acquired = route.dispatcher.acquire(waitMs, t.stickyKey, call); // a caller that leaves frees its queue place
        try {
          lease = acquired instanceof Promise ? await raceAbort(acquired, call, (late) => route!.dispatcher.release(late)) : acquired;
        } catch (err) {
          if (err !== RELAYED) throw err; // it waited here when the node's calls moved to a home: send it there
          home = route.relay;
          continue;
        }
        if (holdMs !== null && attempts === 0) {
          this.pipeline.deadlines.clear(call);
          call = deadline = this.pipeline.deadlines.start(endpoint.timeout * 1000, expire);
        }
        attempts++;
        try {
          upstreamRes = await lease.slot.upstream!.request({
            method: d.method, path: d.path, headers, body, signal: call,
            headersTimeoutMs: Math.max(1, call.expiresAt - Date.now()), idleTimeoutMs: endpoint.idleTimeout * 1000,
          });
          break;
        } catch (err) {
          const untouched = !body || body.bytes === 0;
          if (isRefused(err) && untouched && !call.aborted) {
            this.routes.reportRefused(route.id, lease.slot.id, (err as Error).message);
            route.dispatcher.release(lease);
            lease = null;
            if (attempts < 8) continue;
          }
          throw err;
        }
      }

      reached = true;
      answer = upstreamRes.body;
      const respLimit = this.config.maxResponseBytes;
      const respLength = Number(upstreamRes.headers['content-length'] ?? 0);
      if (respLength > respLimit) {
        upstreamRes.body.destroy();
        throw new BerthError('RESPONSE_TOO_LARGE', `the instance's response (${respLength} bytes) exceeds the limit of ${respLimit} bytes`, { limit: respLimit });
      }
      grpcStatus = headerValue(upstreamRes.headers['grpc-status']);
      status = upstreamRes.status;
      const respHeaders = responseHeaders(upstreamRes.headers);
      if (upstreamRes.headersOnly) {
        d.respond(status, respHeaders, null);
        return;
      }
      d.setTrailers?.(upstreamRes.trailers.then((tr) => {
        grpcStatus = headerValue(tr['grpc-status']) ?? grpcStatus;
        return responseHeaders(tr);
      }));
      // most answers are whole by now (they came in one read): passed on at once, no relay
      const whole = upstreamRes.body.takeWhole?.(respLimit) ?? null;
      if (whole) {
        answerBytes = whole.length;
        d.respond(status, respHeaders, whole);
      } else {
        // an answer without a length whose first bytes are not here yet is a stream (SSE): its headers go now
        d.respond(status, respHeaders, upstreamRes.headers['content-length'] === undefined && upstreamRes.body.readableLength === 0 ? 'flush' : 'stream');
        // a declared length within the limit is held to by the HTTP client; only unannounced bodies are counted
        answerBytes = await relay(upstreamRes.body, d.writable, () => d.destroy(), respLength > 0 ? Infinity : respLimit);
      }
      if (d.isGrpc) await upstreamRes.trailers; // its grpc-status is the call's, for the metrics
    } catch (err) {
      let e: BerthError;
      if (err instanceof BerthError) e = err;
      else if (deadline?.aborted && deadline.reason instanceof BerthError) e = deadline.reason;
      else {
        // errors of the upstream exchange carry a code (upstream.ts's UPSTREAM_*, Node's ERR_* and
        // E* system errors); one without is a bug here: INTERNAL, logged, no detail sent
        const code = (err as { code?: unknown })?.code;
        if (code === 'UPSTREAM_IDLE_TIMEOUT') e = new BerthError('CALL_TIMEOUT', `the connection was idle longer than the idle timeout`, { nodeId: route?.id });
        else if (typeof code === 'string' && code) e = new BerthError('BAD_GATEWAY', `the instance failed: ${(err as Error).message}`, { nodeId: route?.id });
        else e = asBerthError(err, 'proxy');
      }
      answer?.destroy(); // an answer not relayed (the caller's side refused its headers) ends at the instance too
      status = d.fail(e);
      if (d.isGrpc) grpcStatus = String(e.grpcStatus);
    } finally {
      this.inFlight--;
      if (deadline) this.pipeline.deadlines.clear(deadline);
      if (lease && route) route.dispatcher.release(lease);
      if (reached && route) count?.served(route, body?.bytes ?? 0, answerBytes);
      count?.end(status, grpcStatus);
    }
  }
}

/** Sends the exchange to the node's home (serveRelayed there); the home's own failure comes back as the BerthError it was. */
async function viaHome(relay: CallRelay, nodeId: string, stickyKey: string | undefined, d: Downstream,
  headers: Record<string, string | string[]>, body: RequestBody | null, call: Deadline): Promise<UpstreamResponse> {
  const h: Record<string, string | string[]> = { ...headers, [RELAY_NODE]: nodeId }; // a copy: the HTTP/2 client adds pseudo-headers to it
  if (stickyKey !== undefined) h[RELAY_STICKY] = stickyKey;
  // no idle cut here: the call may wait in the home's queue; the home holds the instance to its idle timeout
  let res: UpstreamResponse;
  try {
    res = await relay.request({ method: d.method, path: d.path, headers: h, body, signal: call, headersTimeoutMs: Math.max(1, call.expiresAt - Date.now()), idleTimeoutMs: Infinity });
  } catch (err) {
    if (err instanceof BerthError || isUnreachable(err)) throw err; // the call's own deadline; a home not there (the caller waits for the next)
    throw new BerthError('BAD_GATEWAY', 'the gateway worker holding the node\'s sessions went away during the call', { nodeId });
  }
  if (res.headers[RELAY_ERROR] === undefined) return res;
  throw errorFromWire(await new Promise<Buffer>((resolve) => {
    const chunks: Buffer[] = [];
    res.body.on('data', (c) => chunks.push(c));
    res.body.once('end', () => resolve(Buffer.concat(chunks)));
    res.body.once('error', () => resolve(Buffer.concat(chunks))); // a cut one does not parse: INTERNAL
  }));
}

/** The side facing an HTTP/1.1 caller (the raw front's response, or node:http's): one object per call, its methods shared. */
class H1Downstream implements Downstream {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: BodySource;
  readonly isGrpc = false;
  private closeCb: (() => void) | null = null;

  constructor(private readonly req: HttpRequest, readonly writable: HttpResponse) {
    this.method = req.method ?? 'GET';
    this.path = req.url ?? '/';
    this.headers = req.headers;
    this.body = req;
  }

  headersSent(): boolean { return this.writable.headersSent; }

  respond(status: number, headers: Record<string, string | string[]>, body: Buffer | null | 'stream' | 'flush'): void {
    const res = this.writable;
    // a whole body gets its length (an instance's chunked answer that came whole: no chunks to frame)
    if (Buffer.isBuffer(body) && headers['content-length'] === undefined && !noBody(this.method, status)) headers['content-length'] = String(body.length);
    res.writeHead(status, headers);
    if (body === null) res.end();
    else if (body === 'flush') res.flushHeaders();
    else if (body !== 'stream') res.end(body); // head and body in one write
    // 'stream': the head goes out with the body's first bytes, in one write
  }

  fail(err: BerthError): number {
    if (this.writable.destroyed) return err.httpStatus; // the caller is gone: nobody to answer
    if (err.code === 'PAYLOAD_TOO_LARGE') discardUpload(this.req);
    return sendError(this.writable, err);
  }

  destroy(): void { this.writable.destroy(); }

  onClose(cb: () => void): void {
    if (this.closeCb === null) this.writable.on('close', () => { if (!this.writable.writableFinished) this.closeCb?.(); });
    this.closeCb = cb;
  }
}

/** The side facing the caller for an HTTP/2 stream (a caller's, or another gateway worker's); `fail` answers an error. */
function h2Downstream(stream: CallerStream, headers: H2Headers, isGrpc: boolean, fail: (err: BerthError) => number): Downstream {
  let trailers: Promise<Record<string, string | string[]>> | null = null;
  sendTrailersWhenAsked(stream, () => trailers ?? Promise.resolve({}));
  return {
    method: String(headers[':method']), path: String(headers[':path']), headers: headers as IncomingHttpHeaders, body: stream,
    isGrpc,
    headersSent: () => stream.headersSent,
    respond: (status, h, body) => {
      if (stream.destroyed || stream.closed) throw new BerthError('CLIENT_CLOSED', 'the caller went away');
      h[':status'] = String(status); // h is this call's own copy (responseHeaders)
      stream.respond(h, body === null ? { endStream: true } : { waitForTrailers: true });
      if (Buffer.isBuffer(body)) stream.end(body);
    },
    writable: stream,
    setTrailers: (t) => { trailers = t; },
    fail,
    destroy: () => stream.close(h2c.NGHTTP2_CANCEL),
    onClose: (cb) => stream.once('close', () => { if (!stream.writableFinished) cb(); }),
  };
}

/** An answer that has no body whatever its headers say (RFC 9110 §6.4.1). */
const noBody = (method: string | undefined, status: number): boolean => method === 'HEAD' || status === 204 || status === 304 || status < 200;

function headerValue(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

function forwardHeaders(incoming: IncomingHttpHeaders, extra: Target['extraHeaders']): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const k in incoming) { // for-in, not Object.entries: no array of pairs per call
    const v = incoming[k];
    if (v === undefined || k.charCodeAt(0) === 58 /* ':' */ || DROP_REQUEST.has(k)) continue;
    if (k === 'te' && v !== 'trailers') continue;
    out[k] = v;
  }
  for (const h of extra) out[h.name.toLowerCase()] = h.value;
  return out;
}

function responseHeaders(h: Record<string, string | string[]>): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const k in h) {
    if (k.charCodeAt(0) === 58 /* ':' */ || DROP_RESPONSE.has(k)) continue;
    const v = h[k]!;
    out[k] = typeof v !== 'string' && SINGLE_VALUE.has(k) ? v[0]! : v;
  }
  return out;
}

/**
 * Copies the answer's body to the caller, as pipe() does (pausing while the caller's side is
 * full), counting as it goes: past `limit` the exchange is cut before the chunk that crosses it
 * is written; a body that fails cuts the caller's side (`cut`). A plain listener, not stream.pipeline or a Transform: no extra objects per call.
 * Resolves with the bytes relayed (usage accounting).
 */
export function relay(body: ResponseBody, out: Downstream['writable'], cut: () => void, limit: number): Promise<number> {
  return new Promise<number>((resolve) => {
    let n = 0;
    const onData = (chunk: Buffer): void => {
      n += chunk.length;
      if (n > limit) { body.destroy(new BerthError('RESPONSE_TOO_LARGE', `the instance's response exceeds the limit of ${limit} bytes`, { limit })); return; }
      if (!out.write(chunk)) body.pause();
    };
    const onDrain = (): void => { body.resume(); };
    const done = (): void => { body.off('data', onData); out.off('drain', onDrain); resolve(n); };
    body.on('data', onData);
    out.on('drain', onDrain);
    body.once('end', () => { out.end(); });
    body.once('error', () => { cut(); done(); });
    out.once('close', () => { if (!body.readableEnded) body.destroy(); done(); });
    out.once('finish', done);
  });
}

/** Waits for `p` unless the call is aborted first; what `p` yields after that goes to `late` (a session is handed back). */
function raceAbort<T>(p: Promise<T>, signal: CallSignal, late: (v: T) => void): Promise<T> {
  const abandon = (): void => { p.then(late, () => undefined); };
  if (signal.aborted) { abandon(); return Promise.reject(signal.reason); }
  return new Promise((resolve, reject) => {
    const onAbort = (): void => { abandon(); reject(signal.reason); };
    signal.addEventListener('abort', onAbort, { once: true });
    p.then((v) => { signal.removeEventListener('abort', onAbort); resolve(v); }, (e) => { signal.removeEventListener('abort', onAbort); reject(e); });
  });
}
