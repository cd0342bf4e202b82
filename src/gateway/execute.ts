// The execute data plane: POST /datasphere/v1/nodes/{nodeId}:execute and
// /datasphere/v1/aliases/{name}:execute, compatible with the modelled platform; gRPC
// Execute/ExecuteAlias (grpc/node-service.ts) run through `execute` too. Both go through
// the one call pipeline (pipeline.ts). Reads no database: routes, aliases, tokens and
// validators are all in memory.
import { BerthError, type ErrorCode, WORKER_ERRORS } from '../core/errors.js';
import type { Config } from '../core/config.js';
import type { Metrics } from '../core/metrics.js';
import type { TokenRecord } from '../core/types.js';
import { NO_FREE_SESSION, RELAYED, RELAY_UNREACHABLE, type NodeRoute, type RoutingTable } from './routing-table.js';
import type { AliasRoute } from '../aliases/table.js';
import { FRAME, NotStartedError, type Frame, type WorkerConnection } from '../worker/protocol.js';
import type { Lease } from './dispatcher.js';
import { readBody, sendError, discardUpload, isHttp2, type HttpRequest, type HttpResponse } from './http-util.js';
import type { CallPipeline, CallCount, CallTarget, HeaderSource } from './pipeline.js';
import type { Deadline } from './deadlines.js';

const EXECUTE = /^\/datasphere\/v1\/(nodes|aliases)\/([^/:?]+):execute$/;

/** The result of a call, independent of the protocol it came in on. */
export type CallResult =
  | { ok: true; body: Buffer }
  | { ok: false; error: BerthError; extra?: Record<string, unknown>; answerBytes?: number };

export class Gateway {
  /** Calls being served right now; shutdown waits for them. */
  inFlight = 0;
  draining = false;

  constructor(
    private readonly config: Config,
    private readonly routes: RoutingTable,
    readonly pipeline: CallPipeline,
    private readonly metrics: Metrics,
  ) {}

  static handles(url: string | undefined): boolean {
    return url !== undefined && url.startsWith('/datasphere/');
  }

  async handle(req: HttpRequest, res: HttpResponse): Promise<void> {
    const url = req.url ?? '';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    const m = EXECUTE.exec(path);
    if (!m) return void sendError(res, new BerthError('ROUTE_NOT_FOUND', `no data-plane route ${req.method} ${path}`, { path }));
    if (req.method !== 'POST') {
      return void sendError(res, new BerthError('METHOD_NOT_ALLOWED', `${path} takes POST, got ${req.method}`, { method: req.method }, { allow: 'POST' }));
    }
    if (this.draining) {
      if (!isHttp2(res)) res.setHeader('connection', 'close');
      return void sendError(res, new BerthError('SHUTTING_DOWN', 'Berth is shutting down', {}, { 'retry-after': '5' }));
    }
    const isAlias = m[1] === 'aliases';
    // the front door refuses undecodable targets before this; never throw here regardless
    let id: string;
    try { id = m[2]!.includes('%') ? decodeURIComponent(m[2]!) : m[2]!; } catch {
      return void sendError(res, new BerthError('INVALID_PATH', `the ${isAlias ? 'alias name' : 'node id'} in the path is not valid percent-encoded UTF-8`, { field: 'path', path }));
    }
    const target: CallTarget = isAlias ? { alias: id } : { nodeId: id };
    this.inFlight++;
    const count = this.pipeline.count(target);
    let status: number;
    try {
      const token = this.pipeline.authenticate(req.headers.authorization); // 401 before anything else, even a 404
      this.pipeline.exists(target); // 404 before the body is read
      const raw = await readBody(req, this.config.maxRequestBytes);
      const { input, folder } = parseCall(raw);
      const result = await this.execute(token, folder, target, input, raw, req.headers, count);
      if (result.ok) {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': result.body.length });
        res.end(result.body);
        status = 200;
      } else {
        status = sendError(res, result.error, result.extra);
      }
    } catch (err) {
      if (err instanceof BerthError && err.code === 'PAYLOAD_TOO_LARGE') discardUpload(req);
      status = sendError(res, err);
    } finally {
      this.inFlight--;
    }
    count.end(status);
  }

  /**
   * One execute call (REST and gRPC alike) once its protocol has parsed it: the pipeline's
   * folder, target and alias steps, then the cell. `payload` is the worker's frame
   * ({folder_id, input} as JSON bytes), sent as it is; `input` its parsed input, validated.
   * Throws BerthError for a call that cannot start.
   */
  async execute(token: TokenRecord, folder: string, target: CallTarget, input: unknown, payload: Buffer, headers: HeaderSource, count: CallCount): Promise<CallResult> {
    const { route, alias, stickyKey } = this.pipeline.resolve(token, folder, target, headers, count);
    const started = performance.now();
    const result = await this.runCell(route, input, payload, stickyKey);
    // an answer (not a throw) means an instance had the call: usage counts the frames' bytes
    count.served(route, payload.length, result.ok ? result.body.length : result.answerBytes ?? 0);
    if (alias?.shouldMirror()) this.mirror(alias, payload, result, performance.now() - started);
    return result;
  }

  private runCell(route: NodeRoute, input: unknown, body: Buffer, stickyKey?: string): Promise<CallResult> {
    if (route.spec.kind !== 'cell' || !route.validateInput) {
      throw new BerthError('INVALID_ARGUMENT', `node ${route.id} is an image node: call it with the x-node-id header on any path, not :execute`,
        { field: 'nodeId', nodeKind: route.spec.kind });
    }
    route.validateInput(input);
    return this.run(route, route.spec.timeout, body, stickyKey);
  }

  /**
   * Sends a validated call to an instance and maps its answer. Rejects (a BerthError) when the
   * call could not start: no session, a full queue, a suspended node — then no instance had it,
   * and it is not counted as served. One promise per call: the steps under it take callbacks.
   */
  private run(route: NodeRoute, timeoutS: number, payload: Buffer, stickyKey?: string, onlyIfFree = false): Promise<CallResult> {
    return new Promise((resolve, reject) => {
      const answered = (answer: Frame | BerthError): void => {
        try { resolve(answer instanceof BerthError ? { ok: false, error: answer } : mapFrame(answer)); } catch (err) { reject(err); }
      };
      const viaRelay = (): void => void this.send(route, timeoutS, payload, stickyKey, onlyIfFree).then(answered, reject);
      if (route.relay) { viaRelay(); return; }
      // it waited here when the node's calls moved to a relay: it goes there
      this.dispatch(route, timeoutS, payload, stickyKey, onlyIfFree, answered, (err) => { if (err === RELAYED) viaRelay(); else reject(err); });
    });
  }

  /** The instance's answer frame (or why it failed once it had the call): through the worker that holds the node's sessions, or from this process's. */
  private async send(route: NodeRoute, timeoutS: number, payload: Buffer, stickyKey: string | undefined, onlyIfFree: boolean): Promise<Frame | BerthError> {
    let relay = route.relay;
    for (;;) {
      if (relay) {
        try {
          return await relay.call(route.id, payload, stickyKey, onlyIfFree);
        } catch (err) {
          if (err !== RELAY_UNREACHABLE) throw err;
          // its home died before the call got there: to the next home if one is named already
          relay = route.homeAfter(relay);
          if (relay) continue;
        }
      }
      try {
        return await this.sendHere(route, timeoutS, payload, stickyKey, onlyIfFree);
      } catch (err) {
        if (err !== RELAYED) throw err; // it waited here when the node's calls moved to a relay: send it there
        relay = route.relay;
      }
    }
  }

  /**
   * A call relayed by another gateway worker (cluster/call-relay.ts): it queues with this
   * worker's own calls for the node's sessions. Its HTTP, auth and input work were done there.
   */
  serveRelayed(nodeId: string, payload: Buffer, stickyKey: string | undefined, onlyIfFree: boolean): Promise<Frame | BerthError> {
    const route = this.routes.route(nodeId);
    if (!route || route.spec.kind !== 'cell') return Promise.reject(new BerthError('NODE_NOT_FOUND', `node ${nodeId} not found`, { nodeId }));
    return this.sendHere(route, route.spec.timeout, payload, stickyKey, onlyIfFree);
  }

  private sendHere(route: NodeRoute, timeoutS: number, payload: Buffer, stickyKey: string | undefined, onlyIfFree: boolean): Promise<Frame | BerthError> {
    return new Promise((resolve, reject) => this.dispatch(route, timeoutS, payload, stickyKey, onlyIfFree, resolve, reject));
  }

  /**
   * Takes one of this process's sessions of the node (waiting in its queue) and sends the frame
   * on it: `answered` gets the instance's frame, or a BerthError once an instance had the call
   * (a timeout, a failed instance); `refused` why the call cannot start (it never reached an
   * instance). A call sent behind another on its session (pipelined) whose session failed first
   * was never started: it waits for a session again.
   */
  private dispatch(route: NodeRoute, timeoutS: number, payload: Buffer, stickyKey: string | undefined, onlyIfFree: boolean,
    answered: (answer: Frame | BerthError) => void, refused: (err: unknown) => void): void {
    // never a throw out of here: this also runs from a worker connection's callbacks
    try {
      if (onlyIfFree && !route.dispatcher.hasFree()) { refused(NO_FREE_SESSION); return; }
      const acquired = route.dispatcher.acquire(timeoutS * 1000, stickyKey);
      if (!(acquired instanceof Promise)) { this.sendOn(route, acquired, timeoutS, payload, stickyKey, answered, refused); return; }
      acquired.then((lease) => {
        try { this.sendOn(route, lease, timeoutS, payload, stickyKey, answered, refused); } catch (err) { refused(err); }
      }, refused);
    } catch (err) { refused(err); }
  }

  private sendOn(route: NodeRoute, lease: Lease, timeoutS: number, payload: Buffer, stickyKey: string | undefined,
    answered: (answer: Frame | BerthError) => void, refused: (err: unknown) => void): void {
    const conn = lease.conn as WorkerConnection;
    let deadline: Deadline | undefined;
    let settled = false;
    // the session goes back once; a connection whose call timed out is closed first (never reused)
    const done = (): void => {
      settled = true;
      if (deadline) this.pipeline.deadlines.clear(deadline);
      route.dispatcher.release(lease);
    };
    // the node's timeout counts from when the worker starts on the call, not while it waits behind another
    const started = (): void => {
      deadline = this.pipeline.deadlines.start(timeoutS * 1000, () => {
        if (settled) return;
        deadline = undefined;
        settled = true;
        conn.close(); // the calls sent behind it on this connection were never started: they wait again
        this.routes.reportTimeout(route.id, lease.slot.id, timeoutS);
        route.dispatcher.release(lease);
        answered(new BerthError('CALL_TIMEOUT', `the call did not finish within the node's timeout of ${timeoutS}s; its instance is being replaced`,
          { nodeId: route.id, timeoutSeconds: timeoutS }));
      });
    };
    conn.send(FRAME.EXECUTE, payload, started, (err, frame) => {
      if (settled) return;
      done();
      if (frame) answered(frame);
      else if (err instanceof NotStartedError) this.dispatch(route, timeoutS, payload, stickyKey, false, answered, refused);
      else answered(new BerthError('INSTANCE_FAILED', `the instance serving this call failed: ${err!.message}`, { nodeId: route.id, instanceId: lease.slot.id }));
    });
  }

  /** Sends the call to the shadow node too, off the caller's path; compares, then drops the answer. */
  private mirror(alias: AliasRoute, body: Buffer, primary: CallResult, primaryMs: number): void {
    const shadow = this.routes.route(alias.spec.mirror!.nodeId);
    const stats = alias.mirrorStats;
    // never queue behind real traffic: no free shadow session means this call is not mirrored
    // (asked where the sessions are when another gateway worker holds them)
    if (!shadow || shadow.spec.kind !== 'cell' || (!shadow.relay && !shadow.dispatcher.hasFree())) { stats.skipped++; return; }
    stats.sent++;
    const started = performance.now();
    const name = alias.spec.name;
    void this.run(shadow, shadow.spec.timeout, body, undefined, true).then((answer) => {
      const shadowMs = performance.now() - started;
      const same = primary.ok && answer.ok ? primary.body.equals(answer.body)
        : !primary.ok && !answer.ok ? primary.error.code === answer.error.code : false;
      alias.recordMirror(primaryMs, shadowMs, same);
      this.metrics.mirror.compared.labels(name).inc();
      if (!same) this.metrics.mirror.differing.labels(name).inc();
      this.metrics.mirror.durations.labels(name, 'primary').observe(primaryMs / 1000);
      this.metrics.mirror.durations.labels(name, 'shadow').observe(shadowMs / 1000);
    }, (err: unknown) => {
      if (err === NO_FREE_SESSION) { stats.sent--; stats.skipped++; return; }
      alias.recordMirror(primaryMs, null, null);
    });
  }
}

/** The request body of an execute call: {folder_id | folderId, input[, ndarray_format]}. */
function parseCall(raw: Buffer): { input: unknown; folder: string } {
  let body: unknown;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw new BerthError('INVALID_JSON', `request body is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new BerthError('INVALID_ARGUMENT', 'request body must be a JSON object {"folder_id": …, "input": {…}}', { field: 'body' });
  }
  const b = body as Record<string, unknown>;
  const folder = b.folder_id ?? b.folderId;
  if (typeof folder !== 'string' || folder.length === 0) throw folderRequired();
  // how tensor outputs come back (the worker reads it from the same bytes)
  const fmt = b.ndarray_format;
  if (fmt !== undefined && fmt !== 'list' && fmt !== 'base64') {
    throw new BerthError('INVALID_ARGUMENT', 'ndarray_format must be "list" (nested arrays, the default) or "base64" ({dtype, shape, data})', { field: 'ndarray_format' });
  }
  return { input: b.input, folder };
}

export function folderRequired(): BerthError {
  return new BerthError('INVALID_ARGUMENT', 'folder_id is required: the folder you call from', { field: 'folder_id' });
}

function mapFrame(frame: Frame): CallResult {
  if (frame.type === FRAME.OK) return { ok: true, body: frame.payload };
  const info = JSON.parse(frame.payload.toString('utf8')) as {
    error_name?: string; error_message?: string; traceback?: string[]; code?: string; message?: string; details?: Record<string, unknown>;
  };
  const answerBytes = frame.payload.length;
  if (frame.type === FRAME.USER_ERROR) {
    const details = { error_name: info.error_name, error_message: info.error_message, traceback: info.traceback };
    return {
      ok: false,
      error: new BerthError('EXECUTION_ERROR', `the cell raised ${info.error_name}: ${info.error_message}`, details),
      extra: details,
      answerBytes,
    };
  }
  if (frame.type === FRAME.CALL_ERROR) {
    const code: ErrorCode = WORKER_ERRORS[String(info.code)] ?? 'INTERNAL';
    return { ok: false, error: new BerthError(code, String(info.message), info.details ?? {}), answerBytes };
  }
  return { ok: false, error: new BerthError('INTERNAL', `unexpected frame type ${frame.type} from the worker`) };
}
