// Every error the API can return, in one place: a stable code, an HTTP status and a
// gRPC status. Bodies are always JSON: {code, message, details}.
import { log } from './log.js';
import { randomUUID } from 'node:crypto';

export type GrpcStatusName =
  | 'INVALID_ARGUMENT' | 'NOT_FOUND' | 'ALREADY_EXISTS' | 'PERMISSION_DENIED' | 'UNAUTHENTICATED'
  | 'RESOURCE_EXHAUSTED' | 'FAILED_PRECONDITION' | 'UNAVAILABLE' | 'DEADLINE_EXCEEDED' | 'INTERNAL'
  | 'UNIMPLEMENTED' | 'UNKNOWN' | 'CANCELLED' | 'ABORTED';

export const GRPC_STATUS: Record<GrpcStatusName, number> = {
  CANCELLED: 1, UNKNOWN: 2, INVALID_ARGUMENT: 3, DEADLINE_EXCEEDED: 4, NOT_FOUND: 5, ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7, RESOURCE_EXHAUSTED: 8, FAILED_PRECONDITION: 9, ABORTED: 10, UNIMPLEMENTED: 12,
  INTERNAL: 13, UNAVAILABLE: 14, UNAUTHENTICATED: 16,
};

interface ErrorKind { http: number; grpc: GrpcStatusName }

export const ERRORS = {
  // request shape
  INVALID_JSON: { http: 400, grpc: 'INVALID_ARGUMENT' },
  INVALID_ARGUMENT: { http: 400, grpc: 'INVALID_ARGUMENT' },
  INVALID_INPUT: { http: 400, grpc: 'INVALID_ARGUMENT' },
  // a request target nobody can decode (malformed %-escapes, not UTF-8, not origin-form)
  INVALID_PATH: { http: 400, grpc: 'INVALID_ARGUMENT' },
  PAYLOAD_TOO_LARGE: { http: 413, grpc: 'RESOURCE_EXHAUSTED' },
  UNSUPPORTED_MEDIA_TYPE: { http: 415, grpc: 'INVALID_ARGUMENT' },
  ROUTE_NOT_FOUND: { http: 404, grpc: 'UNIMPLEMENTED' },
  METHOD_NOT_ALLOWED: { http: 405, grpc: 'UNIMPLEMENTED' },
  // auth
  UNAUTHENTICATED: { http: 401, grpc: 'UNAUTHENTICATED' },
  PERMISSION_DENIED: { http: 403, grpc: 'PERMISSION_DENIED' },
  QUOTA_EXCEEDED: { http: 429, grpc: 'RESOURCE_EXHAUSTED' },
  // resources
  NODE_NOT_FOUND: { http: 404, grpc: 'NOT_FOUND' },
  CHECKPOINT_NOT_FOUND: { http: 404, grpc: 'NOT_FOUND' },
  TOKEN_NOT_FOUND: { http: 404, grpc: 'NOT_FOUND' },
  INSTANCE_NOT_FOUND: { http: 404, grpc: 'NOT_FOUND' },
  SECRET_NOT_FOUND: { http: 404, grpc: 'NOT_FOUND' },
  ALIAS_NOT_FOUND: { http: 404, grpc: 'NOT_FOUND' },
  SECRET_IN_USE: { http: 409, grpc: 'FAILED_PRECONDITION' },
  RUNTIME_UNSUPPORTED: { http: 400, grpc: 'FAILED_PRECONDITION' },
  BAD_GATEWAY: { http: 502, grpc: 'UNAVAILABLE' },
  NAME_TAKEN: { http: 409, grpc: 'ALREADY_EXISTS' },
  CHECKPOINT_IN_USE: { http: 409, grpc: 'FAILED_PRECONDITION' },
  NODE_IN_USE: { http: 409, grpc: 'FAILED_PRECONDITION' },
  // an alias over cell nodes whose declared variables differ (details.variable names one)
  CONTRACT_MISMATCH: { http: 409, grpc: 'FAILED_PRECONDITION' },
  CHECKPOINT_NOT_PINNED: { http: 400, grpc: 'FAILED_PRECONDITION' },
  CHECKPOINT_FAILED: { http: 422, grpc: 'FAILED_PRECONDITION' },
  ENVIRONMENT_ERROR: { http: 422, grpc: 'FAILED_PRECONDITION' },
  // checkpoint runs: too many at once (the rest queue briefly), or past their wall-clock limit
  TOO_MANY_RUNS: { http: 429, grpc: 'RESOURCE_EXHAUSTED' },
  RUN_TIMEOUT: { http: 422, grpc: 'DEADLINE_EXCEEDED' },
  // calls
  EXECUTION_ERROR: { http: 500, grpc: 'INTERNAL' },
  OUTPUT_MISSING: { http: 500, grpc: 'INTERNAL' },
  OUTPUT_NOT_SERIALIZABLE: { http: 500, grpc: 'INTERNAL' },
  OUTPUT_TYPE_MISMATCH: { http: 500, grpc: 'INTERNAL' },
  RESPONSE_TOO_LARGE: { http: 502, grpc: 'RESOURCE_EXHAUSTED' },
  INSTANCE_FAILED: { http: 502, grpc: 'UNAVAILABLE' },
  NODE_UNAVAILABLE: { http: 503, grpc: 'UNAVAILABLE' },
  // suspended by request: waiting will not help, resuming will (issue 9: 409 / FAILED_PRECONDITION)
  NODE_SUSPENDED: { http: 409, grpc: 'FAILED_PRECONDITION' },
  // two updates of one node raced: the later one is refused, nothing changed
  CONFLICT: { http: 409, grpc: 'ABORTED' },
  REVISION_NOT_FOUND: { http: 404, grpc: 'NOT_FOUND' },
  SHUTTING_DOWN: { http: 503, grpc: 'UNAVAILABLE' },
  // logs?follow=true: the cap on connected followers is reached
  TOO_MANY_FOLLOWERS: { http: 429, grpc: 'RESOURCE_EXHAUSTED' },
  // the dashboard: the cap on open GET /v1/watch streams; /ui asked of a package built without it
  TOO_MANY_WATCHERS: { http: 429, grpc: 'RESOURCE_EXHAUSTED' },
  UI_NOT_BUILT: { http: 503, grpc: 'UNAVAILABLE' },
  // the front door's connection cap is reached and every connection is busy
  SERVER_BUSY: { http: 503, grpc: 'UNAVAILABLE' },
  // a gateway worker could not relay a control-API request to the primary process
  CONTROL_UNAVAILABLE: { http: 503, grpc: 'UNAVAILABLE' },
  CALL_TIMEOUT: { http: 504, grpc: 'DEADLINE_EXCEEDED' },
  INTERNAL: { http: 500, grpc: 'INTERNAL' },
  // the caller left before the answer (nginx's 499); only ever counted, never sent
  CLIENT_CLOSED: { http: 499, grpc: 'CANCELLED' },
} satisfies Record<string, ErrorKind>;

export type ErrorCode = keyof typeof ERRORS;

/**
 * The Python worker's call-error codes (python/berth_worker.py, `_call_error`) and the
 * API error each becomes. Codes the worker shares with the API map to themselves.
 */
export const WORKER_ERRORS: Record<string, ErrorCode> = {
  INPUT_INVALID: 'INVALID_INPUT',
  NOT_READY: 'NODE_UNAVAILABLE',
  OUTPUT_TOO_LARGE: 'RESPONSE_TOO_LARGE',
  OUTPUT_MISSING: 'OUTPUT_MISSING',
  OUTPUT_TYPE_MISMATCH: 'OUTPUT_TYPE_MISMATCH',
  OUTPUT_NOT_SERIALIZABLE: 'OUTPUT_NOT_SERIALIZABLE',
  PROTOCOL_ERROR: 'INTERNAL',
  WORKER_ERROR: 'INTERNAL',
};

export class BerthError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown>;
  /** Extra response headers, e.g. Retry-After on 503. */
  readonly headers: Record<string, string>;

  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}, headers: Record<string, string> = {}) {
    super(message);
    this.name = 'BerthError';
    this.code = code;
    this.details = details;
    this.headers = headers;
  }

  get httpStatus(): number { return ERRORS[this.code].http; }
  get grpcStatus(): number { return GRPC_STATUS[ERRORS[this.code].grpc]; }

  toJSON(): { code: string; message: string; details: Record<string, unknown> } {
    return { code: this.code, message: this.message, details: this.details };
  }
}

/** A BerthError as it crosses from one gateway worker to another (cluster/call-relay.ts): its response headers too. */
export function errorToWire(e: BerthError): Buffer {
  return Buffer.from(JSON.stringify({ code: e.code, message: e.message, details: e.details, headers: e.headers }));
}

export function errorFromWire(body: Buffer): BerthError {
  const e = JSON.parse(body.toString('utf8')) as { code: ErrorCode; message: string; details: Record<string, unknown>; headers: Record<string, string> };
  return new BerthError(ERRORS[e.code] ? e.code : 'INTERNAL', e.message, e.details, e.headers);
}

export function invalidArgument(field: string, message: string, extra: Record<string, unknown> = {}): BerthError {
  return new BerthError('INVALID_ARGUMENT', `${field}: ${message}`, { field, ...extra });
}

/**
 * Turns anything thrown into a BerthError. Anything not already one is a bug: the caller
 * gets INTERNAL with a request id and no internal detail (the body carries
 * `details.requestId`, the `x-request-id` header the same id); the detail goes to the
 * server log as one JSON line on stderr, with that id. `where` names the handler.
 */
export function asBerthError(err: unknown, where = 'request'): BerthError {
  if (err instanceof BerthError) return err;
  const requestId = randomUUID();
  logInternalError(requestId, where, err);
  return new BerthError('INTERNAL', `internal error; the server log has the details under request id ${requestId}`, { requestId }, { 'x-request-id': requestId });
}

/** No control-API route has this method and path (fastify's not-found, and the relay's for a method HTTP/1.1 cannot carry). */
export function routeNotFound(method: string | undefined, url: string | undefined): BerthError {
  return new BerthError('ROUTE_NOT_FOUND', `no route ${method} ${(url ?? '').split('?')[0]}`, { path: url });
}

/** One JSON line on stderr for an unexpected error (never sent to a caller). */
export function logInternalError(requestId: string, where: string, err: unknown): void {
  const e = err instanceof Error ? err : null;
  try {
    log.error({ event: 'internal_error', requestId, where, error: e ? `${e.name}: ${e.message}` : String(err), stack: e?.stack }, 'internal error');
  } catch { /* logging must never throw into a handler */ }
}
