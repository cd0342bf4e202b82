// The REST data plane: POST /datasphere/v1/nodes/{nodeId}:execute, compatible with the
// modelled platform. Reads no database: routes, tokens and validators are in memory.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { BerthError, type ErrorCode, ERRORS } from '../core/errors.js';
import { Auth } from '../core/auth.js';
import type { Config } from '../core/config.js';
import type { Metrics } from '../core/metrics.js';
import type { Controller, NodeRoute } from '../controller/controller.js';
import { FRAME, type Frame, type WorkerConnection } from '../worker/protocol.js';
import type { Lease } from './dispatcher.js';
import { readBody, sendError, closeAfterResponse } from './http-util.js';

const NODE_EXECUTE = /^\/datasphere\/v1\/nodes\/([^/:?]+):execute$/;

/** The result of a call, independent of the protocol it came in on (REST now, gRPC later). */
export type CallResult =
  | { ok: true; body: Buffer }
  | { ok: false; error: BerthError; extra?: Record<string, unknown> };

export class Gateway {
  /** Calls being served right now; shutdown waits for them. */
  inFlight = 0;
  draining = false;

  constructor(
    private readonly config: Config,
    private readonly controller: Controller,
    private readonly auth: Auth,
    private readonly metrics: Metrics,
  ) {}

  static handles(url: string | undefined): boolean {
    return url !== undefined && url.startsWith('/datasphere/');
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = req.url ?? '';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    const m = NODE_EXECUTE.exec(path);
    if (!m) return void sendError(res, new BerthError('ROUTE_NOT_FOUND', `no data-plane route ${req.method} ${path}`, { path }));
    if (req.method !== 'POST') {
      return void sendError(res, new BerthError('METHOD_NOT_ALLOWED', `${path} takes POST, got ${req.method}`, { method: req.method }, { allow: 'POST' }));
    }
    if (this.draining) {
      res.setHeader('connection', 'close');
      return void sendError(res, new BerthError('SHUTTING_DOWN', 'Berth is shutting down', {}, { 'retry-after': '5' }));
    }
    const nodeId = decodeURIComponent(m[1]!);
    this.inFlight++;
    const started = performance.now();
    const route = this.controller.route(nodeId);
    const nodeMetrics = route ? this.metrics.bindNode(nodeId) : null;
    nodeMetrics?.requests.inc();
    let status: number;
    try {
      const token = this.auth.authenticate(req.headers.authorization);
      if (!route) throw new BerthError('NODE_NOT_FOUND', `node ${nodeId} not found`, { nodeId });
      const raw = await readBody(req, this.config.maxRequestBytes);
      const result = await this.execute(route, token, raw);
      if (result.ok) {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': result.body.length });
        res.end(result.body);
        status = 200;
      } else {
        status = sendError(res, result.error, result.extra);
      }
    } catch (err) {
      if (err instanceof BerthError && err.code === 'PAYLOAD_TOO_LARGE') closeAfterResponse(req, res);
      status = sendError(res, err);
    } finally {
      this.inFlight--;
    }
    nodeMetrics?.observe(status, (performance.now() - started) / 1000);
  }

  /**
   * One execute call from any protocol (REST, gRPC): authenticates, finds the node and
   * runs the call. `body` is the JSON request ({folder_id, input}). Throws BerthError.
   */
  async call(nodeId: string, authorization: string | undefined, body: Buffer): Promise<CallResult> {
    const token = this.auth.authenticate(authorization);
    const route = this.controller.route(nodeId);
    if (!route) throw new BerthError('NODE_NOT_FOUND', `node ${nodeId} not found`, { nodeId });
    return this.execute(route, token, body);
  }

  /** Parses, authorises, validates and runs one call. Shared by every protocol. */
  async execute(route: NodeRoute, token: ReturnType<Auth['authenticate']>, raw: Buffer): Promise<CallResult> {
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
    if (!Auth.holdsFolder(token, folder)) {
      throw new BerthError('PERMISSION_DENIED', `this token does not grant access to folder ${folder}`, { folderId: folder });
    }
    if (!route.aclFolders.has(folder)) {
      throw new BerthError('PERMISSION_DENIED', `folder ${folder} may not call node ${route.id}`, { folderId: folder, nodeId: route.id });
    }
    if (route.spec.kind !== 'cell' || !route.validateInput) {
      throw new BerthError('INVALID_ARGUMENT', `node ${route.id} is an image node: call it with the x-node-id header on any path, not :execute`,
        { field: 'nodeId', nodeKind: route.spec.kind });
    }
    route.validateInput(b.input);
    return this.run(route, route.spec.timeout, raw);
  }

  /** Sends a validated call to an instance and maps the worker's answer. */
  private async run(route: NodeRoute, timeoutS: number, payload: Buffer): Promise<CallResult> {
    const timeoutMs = timeoutS * 1000;
    const acquired = route.dispatcher.acquire(timeoutMs);
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
        this.controller.instanceTimedOut(route.id, lease.slot.id, timeoutS);
      }
      route.dispatcher.release(lease);
    }
  }
}

function mapFrame(frame: Frame): CallResult {
  if (frame.type === FRAME.OK) return { ok: true, body: frame.payload };
  const info = JSON.parse(frame.payload.toString('utf8')) as Record<string, any>;
  if (frame.type === FRAME.USER_ERROR) {
    const details = { error_name: info.error_name, error_message: info.error_message, traceback: info.traceback };
    return {
      ok: false,
      error: new BerthError('EXECUTION_ERROR', `the cell raised ${info.error_name}: ${info.error_message}`, details),
      extra: details,
    };
  }
  if (frame.type === FRAME.CALL_ERROR) {
    let code = String(info.code) as ErrorCode;
    if (code === ('OUTPUT_TOO_LARGE' as ErrorCode)) code = 'RESPONSE_TOO_LARGE';
    else if (code === ('INPUT_INVALID' as ErrorCode)) code = 'INVALID_INPUT';
    else if (code === ('NOT_READY' as ErrorCode)) code = 'NODE_UNAVAILABLE';
    if (!(code in ERRORS)) code = 'INTERNAL';
    return { ok: false, error: new BerthError(code, String(info.message), info.details ?? {}) };
  }
  return { ok: false, error: new BerthError('INTERNAL', `unexpected frame type ${frame.type} from the worker`) };
}
