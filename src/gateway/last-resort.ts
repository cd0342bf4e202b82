// The last resort: whatever a request handler throws (synchronously or as a rejected
// promise), on HTTP/1.1 or HTTP/2, becomes a 500 INTERNAL answer with a request id and no
// internal detail, and the detail goes to the server log as one JSON line with that id
// (asBerthError in core/errors.ts does both). No request can end the process: a throw
// that escapes every handler would otherwise be an uncaught exception or an unhandled
// rejection, and Node ends the process on either.
import { constants as h2c, type IncomingHttpHeaders } from 'node:http2';
import type { CallerStream } from './h2/server.js';
import { BerthError, asBerthError } from '../core/errors.js';
import { sendError, type HttpRequest, type HttpResponse } from './http-util.js';
import { log } from '../core/log.js';
import { percentEncode } from './grpc/h2-unary.js';

type Http1Handler<Req extends HttpRequest, Res extends HttpResponse> = (req: Req, res: Res) => void | Promise<void>;
type H2Handler<Rest extends unknown[]> = (stream: CallerStream, headers: IncomingHttpHeaders, ...rest: Rest) => void | Promise<void>;

function failHttp1(res: HttpResponse, err: unknown, where: string): void {
  try {
    const e = asBerthError(err, where);
    if (res.headersSent || res.destroyed) { res.destroy(); return; }
    sendError(res, e);
  } catch { res.destroy(); }
}

/** Wraps an HTTP/1.1 request listener so nothing it throws escapes. */
export function guardHttp1<Req extends HttpRequest, Res extends HttpResponse>(where: string, handler: Http1Handler<Req, Res>): (req: Req, res: Res) => void {
  return (req, res) => {
    try {
      const p = handler(req, res);
      if (p) p.catch((err: unknown) => failHttp1(res, err, where));
    } catch (err) {
      failHttp1(res, err, where);
    }
  };
}

/**
 * Answers an error on an HTTP/2 stream in the caller's protocol: gRPC callers get a
 * trailers-only answer (grpc-status, grpc-message, berth-error-code), others the JSON body.
 */
export function respondH2Error(stream: CallerStream, headers: IncomingHttpHeaders, err: unknown, where = 'h2'): void {
  try {
    const e = err instanceof BerthError ? err : asBerthError(err, where);
    if (stream.destroyed || stream.closed) return;
    if (stream.headersSent) { stream.close(h2c.NGHTTP2_INTERNAL_ERROR); return; }
    const ct = headers['content-type'];
    if (typeof ct === 'string' && ct.startsWith('application/grpc')) {
      stream.respond({
        ':status': 200, 'content-type': 'application/grpc+proto', 'grpc-status': String(e.grpcStatus),
        'grpc-message': percentEncode(e.message), 'berth-error-code': e.code, ...e.headers,
      }, { endStream: true });
      return;
    }
    const body = JSON.stringify(e.toJSON());
    stream.respond({ ':status': e.httpStatus, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...e.headers });
    stream.end(body);
  } catch {
    try { stream.close(h2c.NGHTTP2_INTERNAL_ERROR); } catch { /* gone */ }
  }
}

/** Wraps an HTTP/2 'stream' listener so nothing it throws escapes. */
export function guardH2<Rest extends unknown[]>(where: string, handler: H2Handler<Rest>): (stream: CallerStream, headers: IncomingHttpHeaders, ...rest: Rest) => void {
  return (stream, headers, ...rest) => {
    try {
      const p = handler(stream, headers, ...rest);
      if (p) p.catch((err: unknown) => respondH2Error(stream, headers, err, where));
    } catch (err) {
      respondH2Error(stream, headers, err, where);
    }
  };
}

let guarded = false;
/**
 * Process-wide backstop: an unhandled rejection (a promise some code path forgot to catch)
 * is logged as one JSON line instead of ending the server and every instance with it.
 * Uncaught synchronous exceptions still end the process: state after one is unknown.
 */
export function installProcessGuards(): void {
  if (guarded) return;
  guarded = true;
  process.on('unhandledRejection', (reason) => {
    const e = reason instanceof Error ? reason : null;
    try {
      log.error({ event: 'unhandled_rejection', error: e ? `${e.name}: ${e.message}` : String(reason), stack: e?.stack }, 'unhandled rejection');
    } catch { /* never throw from here */ }
  });
}
