// Test service `grpc-echo`: gRPC by hand over node:http2 (cleartext, prior knowledge) on
// :50051. Messages are 5-byte length-prefixed; see test/images/echo.proto and health.proto.
//   /berth.test.Echo/Echo      unary: the request message bytes, unchanged
//   /berth.test.Echo/Repeat    server streaming: the request message N times (metadata
//                              `x-repeat`, default 3), 50 ms apart
//   /berth.test.Echo/Collect   client streaming: the last message received; trailer
//                              `x-count` = how many were received
//   /berth.test.Echo/Fail      grpc-status 5 NOT_FOUND, "no such thing"
//   /grpc.health.v1.Health/Check  SERVING for "" and "berth.test.Echo", NOT_SERVING for
//                              "down", NOT_FOUND otherwise
// Environment: GRPC_PORT (default 50051); ECHO_REVISION, when set, is sent back as the response
// header `x-echo-revision` on every answer (rollout tests tell image revisions apart by it);
// ECHO_LISTEN_DELAY_MS waits that long before listening (an image slow to become healthy).
import http2 from 'node:http2';

const PORT = Number(process.env.GRPC_PORT ?? 50051);
const MAX_MESSAGE = 16 * 1024 * 1024;
const MAX_REPEAT = 1000;
const REVISION = process.env.ECHO_REVISION ?? '';
const LISTEN_DELAY_MS = Math.max(0, Number(process.env.ECHO_LISTEN_DELAY_MS ?? 0) || 0);
const STATUS = { OK: 0, INVALID_ARGUMENT: 3, NOT_FOUND: 5, RESOURCE_EXHAUSTED: 8, UNIMPLEMENTED: 12, INTERNAL: 13 };

function frame(message) {
  const header = Buffer.alloc(5);
  header.writeUInt32BE(message.length, 1);
  return Buffer.concat([header, message]);
}

/** Reads length-prefixed messages from a stream; calls onMessage for each, onEnd(err?) at the end. */
function readMessages(stream, onMessage, onEnd) {
  let buf = Buffer.alloc(0);
  let failed = false;
  stream.on('data', (chunk) => {
    if (failed) return;
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    while (buf.length >= 5) {
      const compressed = buf[0];
      const length = buf.readUInt32BE(1);
      if (compressed) { failed = true; onEnd({ status: STATUS.UNIMPLEMENTED, message: 'compressed messages are not supported' }); return; }
      if (length > MAX_MESSAGE) { failed = true; onEnd({ status: STATUS.RESOURCE_EXHAUSTED, message: `message larger than ${MAX_MESSAGE} bytes` }); return; }
      if (buf.length < 5 + length) break;
      onMessage(Buffer.from(buf.subarray(5, 5 + length)));
      buf = buf.subarray(5 + length);
    }
  });
  stream.on('end', () => { if (!failed) onEnd(buf.length ? { status: STATUS.INTERNAL, message: 'truncated message' } : null); });
}

/** grpc-message is percent-encoded outside printable ASCII (and '%' itself). */
function grpcMessage(text) {
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : '%' + byte.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

function trailersOnly(stream, status, message) {
  if (stream.destroyed || stream.headersSent) return;
  stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': String(status), 'grpc-message': grpcMessage(message) }, { endStream: true });
}

/** Sends messages (possibly over time), then the trailers. */
function reply(stream, { messages = [], delayMs = 0, trailers = {} }) {
  if (stream.destroyed) return;
  stream.respond({ ':status': 200, 'content-type': 'application/grpc', ...(REVISION ? { 'x-echo-revision': REVISION } : {}) }, { waitForTrailers: true });
  stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0', 'grpc-message': '', ...trailers }));
  let i = 0;
  const next = () => {
    if (stream.destroyed) return;
    if (i >= messages.length) { stream.end(); return; }
    stream.write(frame(messages[i++]));
    if (delayMs && i < messages.length) setTimeout(next, delayMs);
    else next();
  };
  next();
}

/** HealthCheckRequest { string service = 1; } */
function healthService(message) {
  let i = 0;
  while (message && i < message.length) {
    const tag = message[i++];
    let len = 0, shift = 0, b;
    do { b = message[i++]; len |= (b & 0x7f) << shift; shift += 7; } while (b & 0x80 && i < message.length);
    if (tag === 0x0a) return message.subarray(i, i + len).toString('utf8');
    if ((tag & 7) !== 2) return ''; // not expected in a health request
    i += len;
  }
  return '';
}

const server = http2.createServer();
server.on('stream', (stream, headers) => {
  stream.on('error', () => {});
  const path = headers[':path'];
  const type = String(headers['content-type'] ?? '');
  if (headers[':method'] !== 'POST' || !type.startsWith('application/grpc')) {
    stream.respond({ ':status': 415, 'content-type': 'text/plain' }, { endStream: false });
    stream.end('grpc-echo speaks gRPC only\n');
    return;
  }
  const messages = [];
  readMessages(stream, (m) => messages.push(m), (err) => {
    if (err) { trailersOnly(stream, err.status, err.message); return; }
    const last = messages[messages.length - 1] ?? Buffer.alloc(0);
    switch (path) {
      case '/berth.test.Echo/Echo':
        reply(stream, { messages: [messages[0] ?? Buffer.alloc(0)] });
        return;
      case '/berth.test.Echo/Repeat': {
        const n = Math.min(MAX_REPEAT, Math.max(0, Number(headers['x-repeat'] ?? 3) || 0));
        reply(stream, { messages: Array.from({ length: n }, () => last), delayMs: 50 });
        return;
      }
      case '/berth.test.Echo/Collect':
        reply(stream, { messages: [last], trailers: { 'x-count': String(messages.length) } });
        return;
      case '/berth.test.Echo/Fail':
        trailersOnly(stream, STATUS.NOT_FOUND, 'no such thing');
        return;
      case '/grpc.health.v1.Health/Check': {
        const service = healthService(last);
        if (service === '' || service === 'berth.test.Echo') reply(stream, { messages: [Buffer.from([0x08, 0x01])] });
        else if (service === 'down') reply(stream, { messages: [Buffer.from([0x08, 0x02])] });
        else trailersOnly(stream, STATUS.NOT_FOUND, `unknown service ${service}`);
        return;
      }
      default:
        trailersOnly(stream, STATUS.UNIMPLEMENTED, `unknown method ${path}`);
    }
  });
});
setTimeout(() => server.listen(PORT, '0.0.0.0', () => console.log(`grpc-echo listening on ${PORT} (h2c)`)), LISTEN_DELAY_MS);

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { console.log(`grpc-echo: ${sig}, exiting`); server.close(); process.exit(0); });
}
