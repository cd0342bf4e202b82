// The execute data plane: POST /datasphere/v1/nodes/{nodeId}:execute and
// /datasphere/v1/aliases/{name}:execute, compatible with the modelled platform; gRPC
// Execute/ExecuteAlias call the same methods. Reads no database: routes, aliases,
// tokens and validators are all in memory.
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { BerthError, type ErrorCode, WORKER_ERRORS } from '../core/errors.js';
import { Auth } from '../core/auth.js';
import type { Config } from '../core/config.js';
import type { CallMetrics, Metrics } from '../core/metrics.js';
import type { TokenRecord } from '../core/types.js';
import type { NodeRoute, RoutingTable } from './routing-table.js';
import type { AliasRoute, AliasTable } from '../aliases/table.js';
import { FRAME, type Frame, type WorkerConnection } from '../worker/protocol.js';
import type { Lease } from './dispatcher.js';
import { readBody, sendError, discardUpload, isHttp2 } from './http-util.js';

const EXECUTE = /^\/datasphere\/v1\/(nodes|aliases)\/([^/:?]+):execute$/;

/** The result of a call, independent of the protocol it came in on. */
export type CallResult = (
  | { ok: true; body: Buffer }
  | { ok: false; error: BerthError; extra?: Record<string, unknown> }
) & {
  /** Through an alias: the node that served the call (its metrics count it too). */
  nodeId?: string;
};

export class Gateway {
  /** Calls being served right now; shutdown waits for them. */
  inFlight = 0;
  draining = false;

  constructor(
    private readonly config: Config,
    private readonly routes: RoutingTable,
    private readonly auth: Auth,
    private readonly metrics: Metrics,
    private readonly aliases: AliasTable,
  ) {}

  static handles(url: string | undefined): boolean {
    return url !== undefined && url.startsWith('/datasphere/');
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
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
    try { id = decodeURIComponent(m[2]!); } catch {
      return void sendError(res, new BerthError('INVALID_PATH', `the ${isAlias ? 'alias name' : 'node id'} in the path is not valid percent-encoded UTF-8`, { field: 'path', path }));
    }
    this.inFlight++;
    const started = performance.now();
    let callMetrics: CallMetrics | null = null;
    if (isAlias) { if (this.aliases.get(id)) callMetrics = this.metrics.bindAlias(id); }
    else if (this.routes.route(id)) callMetrics = this.metrics.bindNode(id);
    callMetrics?.requests.inc();
    let status: number;
    let servedBy: string | undefined;
    try {
      const authorization = req.headers.authorization;
      this.auth.authenticate(authorization); // 401 before anything else, even a 404
      if (isAlias && !this.aliases.get(id)) throw new BerthError('ALIAS_NOT_FOUND', `alias ${id} not found`, { aliasName: id });
      if (!isAlias && !this.routes.route(id)) throw new BerthError('NODE_NOT_FOUND', `node ${id} not found`, { nodeId: id });
      const raw = await readBody(req, this.config.maxRequestBytes);
      const result = isAlias ? await this.callAlias(id, authorization, raw, req.headers) : await this.call(id, authorization, raw);
      servedBy = result.nodeId;
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
    const seconds = (performance.now() - started) / 1000;
    callMetrics?.observe(status, seconds);
    if (servedBy) { // a call through an alias counts on the node that served it too
      const node = this.metrics.bindNode(servedBy);
      node.requests.inc();
      node.observe(status, seconds);
    }
  }

  /**
   * One execute call on a node, from any protocol: authenticates, checks the folder is on
   * the node's ACL, validates the input and runs it. `body` is the JSON request
   * ({folder_id, input}). Throws BerthError for a call that cannot start.
   */
  async call(nodeId: string, authorization: string | undefined, body: Buffer): Promise<CallResult> {
    const token = this.auth.authenticate(authorization);
    const route = this.routes.route(nodeId);
    if (!route) throw new BerthError('NODE_NOT_FOUND', `node ${nodeId} not found`, { nodeId });
    const { input, folder } = parseCall(body, token);
    if (!route.aclFolders.has(folder)) {
      throw new BerthError('PERMISSION_DENIED', `folder ${folder} may not call node ${route.id}`, { folderId: folder, nodeId: route.id });
    }
    return this.runCell(route, input, body);
  }

  /**
   * One execute call through an alias: the alias's ACL decides who may call; the node is
   * picked by weight (or by the sticky key in `headers`); a share may be mirrored.
   */
  async callAlias(name: string, authorization: string | undefined, body: Buffer, headers: IncomingHttpHeaders = {}): Promise<CallResult> {
    const token = this.auth.authenticate(authorization);
    const alias = this.aliases.get(name);
    if (!alias) throw new BerthError('ALIAS_NOT_FOUND', `alias ${name} not found`, { aliasName: name });
    const { input, folder } = parseCall(body, token);
    if (!alias.mayCall(folder)) throw new BerthError('PERMISSION_DENIED', `folder ${folder} may not call alias ${name}`, { folderId: folder, aliasName: name });
    const stickyKey = stickyKeyOf(alias, headers);
    const nodeId = alias.pick((id) => this.routes.healthyCount(id) > 0, stickyKey);
    const route = this.routes.route(nodeId);
    if (!route) throw new BerthError('NODE_UNAVAILABLE', `alias ${name} points at node ${nodeId}, which is gone`, { aliasName: name, nodeId }, { 'retry-after': '1' });
    const started = performance.now();
    const result = await this.runCell(route, input, body, stickyKey);
    if (alias.shouldMirror()) this.mirror(alias, body, result, performance.now() - started);
    result.nodeId = nodeId;
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

  /** Sends a validated call to an instance and maps the worker's answer. */
  private async run(route: NodeRoute, timeoutS: number, payload: Buffer, stickyKey?: string): Promise<CallResult> {
    const timeoutMs = timeoutS * 1000;
    const acquired = route.dispatcher.acquire(timeoutMs, stickyKey);
    const lease: Lease = acquired instanceof Promise ? await acquired : acquired;
    const conn = lease.conn as WorkerConnection;
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    try {
      const frame = await new Promise<Frame>((resolve, reject) => {
        timer = setTimeout(() => {
          timedOut = true;
          reject(new BerthError('CALL_TIMEOUT', `the call did not finish within the node's timeout of ${timeoutS}s; its instance is being replaced`,
            { nodeId: route.id, timeoutSeconds: timeoutS }));
        }, timeoutMs);
        conn.request(FRAME.EXECUTE, payload).then(resolve, reject);
      });
      return mapFrame(frame);
    } catch (err) {
      if (err instanceof BerthError) return { ok: false, error: err };
      return {
        ok: false,
        error: new BerthError('INSTANCE_FAILED', `the instance serving this call failed: ${(err as Error).message}`, { nodeId: route.id, instanceId: lease.slot.id }),
      };
    } finally {
      clearTimeout(timer);
      if (timedOut) {
        conn.close();
        this.routes.reportTimeout(route.id, lease.slot.id, timeoutS);
      }
      route.dispatcher.release(lease);
    }
  }

  /** Sends the call to the shadow node too, off the caller's path; compares, then drops the answer. */
  private mirror(alias: AliasRoute, body: Buffer, primary: CallResult, primaryMs: number): void {
    const shadow = this.routes.route(alias.spec.mirror!.nodeId);
    const stats = alias.mirrorStats;
    // never queue behind real traffic: no free shadow session means this call is not mirrored
    if (!shadow || shadow.spec.kind !== 'cell' || !shadow.dispatcher.hasFree()) { stats.skipped++; return; }
    stats.sent++;
    const started = performance.now();
    const name = alias.spec.name;
    void this.run(shadow, shadow.spec.timeout, body).then((answer) => {
      const shadowMs = performance.now() - started;
      const same = primary.ok && answer.ok ? primary.body.equals(answer.body)
        : !primary.ok && !answer.ok ? primary.error.code === answer.error.code : false;
      alias.recordMirror(primaryMs, shadowMs, same);
      this.metrics.mirror.compared.labels(name).inc();
      if (!same) this.metrics.mirror.differing.labels(name).inc();
      this.metrics.mirror.durations.labels(name, 'primary').observe(primaryMs / 1000);
      this.metrics.mirror.durations.labels(name, 'shadow').observe(shadowMs / 1000);
    }, () => alias.recordMirror(primaryMs, null, null));
  }
}

function stickyKeyOf(alias: AliasRoute, headers: IncomingHttpHeaders): string | undefined {
  if (!alias.spec.sticky) return undefined;
  const v = headers[alias.spec.sticky.header];
  return typeof v === 'string' && v ? v : undefined;
}

/** The request body of an execute call: {folder_id | folderId, input}; the token must hold the folder. */
function parseCall(raw: Buffer, token: TokenRecord): { input: unknown; folder: string } {
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
  if (typeof folder !== 'string' || folder.length === 0) {
    throw new BerthError('INVALID_ARGUMENT', 'folder_id is required: the folder you call from', { field: 'folder_id' });
  }
  if (!Auth.mayExecute(token, folder)) {
    throw new BerthError('PERMISSION_DENIED', `this token does not grant access to folder ${folder}`, { folderId: folder });
  }
  return { input: b.input, folder };
}

function mapFrame(frame: Frame): CallResult {
  if (frame.type === FRAME.OK) return { ok: true, body: frame.payload };
  const info = JSON.parse(frame.payload.toString('utf8')) as {
    error_name?: string; error_message?: string; traceback?: string[]; code?: string; message?: string; details?: Record<string, unknown>;
  };
  if (frame.type === FRAME.USER_ERROR) {
    const details = { error_name: info.error_name, error_message: info.error_message, traceback: info.traceback };
    return {
      ok: false,
      error: new BerthError('EXECUTION_ERROR', `the cell raised ${info.error_name}: ${info.error_message}`, details),
      extra: details,
    };
  }
  if (frame.type === FRAME.CALL_ERROR) {
    const code: ErrorCode = WORKER_ERRORS[String(info.code)] ?? 'INTERNAL';
    return { ok: false, error: new BerthError(code, String(info.message), info.details ?? {}) };
  }
  return { ok: false, error: new BerthError('INTERNAL', `unexpected frame type ${frame.type} from the worker`) };
}
