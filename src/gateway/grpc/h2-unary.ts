// A unary gRPC call served straight on a node:http2 stream, without grpc-js: the front
// door hands NodeService calls here instead of proxying them to the grpc-js server over
// a second HTTP/2 hop. The wire format (gRPC over HTTP/2, PROTOCOL-HTTP2.md):
//   request : HEADERS (:method POST, content-type application/grpc[+proto], te: trailers,
//             grpc-timeout?, grpc-encoding?, metadata) then DATA = one length-prefixed
//             message: 1 byte compressed flag, 4 bytes big-endian length, the message.
//   response: HEADERS (:status 200, content-type), DATA (one message), TRAILERS
//             (grpc-status, grpc-message percent-encoded, trailing metadata), or, for an
//             error, one "trailers-only" HEADERS frame carrying all of them.
import { constants as h2c, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http2';
import type { CallerStream } from '../h2/server.js';
import { gunzip, inflate } from 'node:zlib';
import { promisify } from 'node:util';
import type { Metadata } from '@grpc/grpc-js';
import type { Deadline, DeadlineWheel } from '../deadlines.js';

const gunzipAsync = promisify(gunzip);
const inflateAsync = promisify(inflate);

export const STATUS = { OK: 0, CANCELLED: 1, INVALID_ARGUMENT: 3, DEADLINE_EXCEEDED: 4, RESOURCE_EXHAUSTED: 8, UNIMPLEMENTED: 12, INTERNAL: 13 } as const;

export interface UnaryStatus { code: number; details: string; metadata?: Metadata }

export interface UnaryHandler {
  /** Decodes the request message; never throws (an undecodable request is the handler's to answer). */
  decode(message: Buffer): unknown;
  /** Runs the call; resolves with the response bytes, or rejects with anything `toStatus` maps. */
  handle(request: unknown, headers: IncomingHttpHeaders): Promise<Buffer>;
  toStatus(err: unknown): UnaryStatus;
}

/** Is this an HTTP/2 request gRPC would send? (POST with a gRPC content type.) */
export function isGrpcRequest(headers: IncomingHttpHeaders): boolean {
  const ct = headers['content-type'];
  return headers[':method'] === 'POST' && typeof ct === 'string' && (ct === 'application/grpc' || ct.startsWith('application/grpc+proto') || ct.startsWith('application/grpc;'));
}

/** grpc-timeout ("100m", "5S", ...) in milliseconds; undefined when absent or malformed. */
export function parseGrpcTimeout(value: unknown): number | undefined {
  if (typeof value !== 'string') return undefined;
  const m = /^(\d{1,8})([HMSmun])$/.exec(value);
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 }[m[2] as 'H'];
  return n * unit;
}

/** The gRPC spec's percent-encoding of grpc-message: bytes outside 0x20-0x7E, and '%'. */
export function percentEncode(s: string): string {
  let out = '';
  for (const byte of Buffer.from(s, 'utf8')) {
    out += byte < 0x20 || byte > 0x7e || byte === 0x25 ? `%${byte.toString(16).toUpperCase().padStart(2, '0')}` : String.fromCharCode(byte);
  }
  return out;
}

/** Frames one message: flag 0 (uncompressed), 4-byte length, bytes. */
export function frame(message: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + message.length);
  out[0] = 0;
  out.writeUInt32BE(message.length, 1);
  message.copy(out, 5);
  return out;
}

/**
 * Serves one unary call on `stream`. `maxMessageBytes` bounds the request and the
 * response message (as grpc-js's max_receive/max_send_message_length do).
 */
export function serveUnary(stream: CallerStream, headers: IncomingHttpHeaders, handler: UnaryHandler, maxMessageBytes: number, deadlines: DeadlineWheel): void {
  let done = false;
  let deadline: Deadline | undefined;
  const finish = (): boolean => {
    if (done) return false;
    done = true;
    if (deadline) deadlines.clear(deadline);
    return !(stream.destroyed || stream.closed);
  };
  const sendStatus = (status: UnaryStatus, rst = false): void => {
    if (!finish()) return;
    const out: OutgoingHttpHeaders = {
      ...(status.metadata?.toHttp2Headers() ?? {}),
      [h2c.HTTP2_HEADER_STATUS]: 200,
      [h2c.HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc+proto',
      'grpc-status': String(status.code),
      'grpc-message': percentEncode(status.details),
    };
    try {
      if (stream.headersSent) stream.close(h2c.NGHTTP2_INTERNAL_ERROR);
      else stream.respond(out, { endStream: true });
      // the rest of an oversized upload is not wanted: tell the client to stop sending
      if (rst) stream.close(h2c.NGHTTP2_NO_ERROR);
    } catch { /* the client went away */ }
  };
  const sendMessage = (message: Buffer): void => {
    if (message.length > maxMessageBytes) {
      sendStatus({ code: STATUS.RESOURCE_EXHAUSTED, details: `Sent message larger than max (${message.length} vs. ${maxMessageBytes})` });
      return;
    }
    if (!finish()) return;
    try {
      stream.respond({
        [h2c.HTTP2_HEADER_STATUS]: 200, [h2c.HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc+proto', 'grpc-accept-encoding': 'identity,deflate,gzip',
      }, { waitForTrailers: true });
      stream.once('wantTrailers', () => {
        try { stream.sendTrailers({ 'grpc-status': '0', 'grpc-message': '' }); } catch { /* gone */ }
      });
      stream.end(frame(message));
    } catch { /* the client went away */ }
  };

  stream.on('error', () => undefined);
  stream.once('close', () => { done = true; if (deadline) deadlines.clear(deadline); });
  const timeoutMs = parseGrpcTimeout(headers['grpc-timeout']);
  if (timeoutMs !== undefined) {
    deadline = deadlines.start(Math.max(0, timeoutMs), () => sendStatus({ code: STATUS.DEADLINE_EXCEEDED, details: 'Deadline exceeded' }, true));
  }

  const chunks: Buffer[] = [];
  let received = 0;
  let headChecked = false;
  stream.on('data', (chunk: Buffer) => {
    if (done) return;
    received += chunk.length;
    chunks.push(chunk);
    if (!headChecked && received >= 5) {
      headChecked = true;
      const declared = (chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)).readUInt32BE(1);
      if (declared > maxMessageBytes) {
        chunks.length = 0;
        sendStatus({ code: STATUS.RESOURCE_EXHAUSTED, details: `Received message larger than max (${declared} vs. ${maxMessageBytes})` }, true);
        return;
      }
    }
    if (received > maxMessageBytes + 5) {
      chunks.length = 0;
      sendStatus({ code: STATUS.RESOURCE_EXHAUSTED, details: `Received message larger than max (${received - 5} vs. ${maxMessageBytes})` }, true);
    }
  });
  stream.on('end', () => {
    if (done) return;
    void (async () => {
      const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, received);
      if (body.length < 5) return sendStatus({ code: STATUS.UNIMPLEMENTED, details: 'the request carried no message' });
      const length = body.readUInt32BE(1);
      if (body.length !== 5 + length) {
        return sendStatus({ code: STATUS.INTERNAL, details: body.length < 5 + length ? 'the request message is cut short' : 'a unary call takes exactly one request message' });
      }
      let message = body.subarray(5);
      if (body[0] === 1) {
        const encoding = headers['grpc-encoding'];
        try {
          if (encoding === 'gzip') message = await gunzipAsync(message, { maxOutputLength: maxMessageBytes + 1 });
          else if (encoding === 'deflate') message = await inflateAsync(message, { maxOutputLength: maxMessageBytes + 1 });
          else return sendStatus({ code: STATUS.UNIMPLEMENTED, details: `compression ${String(encoding)} is not supported (identity, deflate, gzip are)` });
        } catch (err) {
          const tooBig = (err as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE';
          return sendStatus(tooBig
            ? { code: STATUS.RESOURCE_EXHAUSTED, details: `Received message larger than max (over ${maxMessageBytes} bytes once decompressed)` }
            : { code: STATUS.INTERNAL, details: `the request message could not be decompressed: ${(err as Error).message}` });
        }
        if (message.length > maxMessageBytes) {
          return sendStatus({ code: STATUS.RESOURCE_EXHAUSTED, details: `Received message larger than max (${message.length} vs. ${maxMessageBytes})` });
        }
      }
      try {
        sendMessage(await handler.handle(handler.decode(message), headers));
      } catch (err) {
        sendStatus(handler.toStatus(err));
      }
    })().catch(() => sendStatus({ code: STATUS.INTERNAL, details: 'internal error' })); // the last resort: never an unhandled rejection
  });
}
