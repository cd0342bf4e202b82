// The leanest cell gateway a Node process can run: the reference row "raw Node floor" of
// bench/cell-node.ts. What any Node front for a Python cell worker must do per call and
// nothing else: Node's own HTTP parser (llhttp, from `_http_common`) on the callers' sockets,
// the request body sent as one EXECUTE frame of the worker protocol (python/PROTOCOL.md) on one
// kept connection, up to 4 waiting calls' frames written at once while the worker is busy (as
// Berth does: fewer system calls and wakeups), each answer frame's payload sent back as the
// 200 body. No auth, routing, validation, limits, timeouts, metrics or error mapping: a worker
// error frame is answered 500. Its numbers bound what any Node gateway can do for cell calls on
// this machine (issue 8's "≥ 1.5× uvicorn with one Python process").
//
//   node bench/cell-raw-proxy.mjs <http-listen port> <worker unix socket> <worker secret>
// (prints "ready" once it listens and the worker accepted the handshake; SIGTERM stops it)
import net from 'node:net';
import { HTTPParser } from '_http_common';

const [listenArg, socketPath, secret] = process.argv.slice(2);
const listenPort = Number(listenArg);
if (!(Number.isInteger(listenPort) && listenPort > 0 && listenPort < 65536) || !socketPath || !secret) {
  console.error('usage: node bench/cell-raw-proxy.mjs <http-listen port> <worker unix socket> <worker secret>');
  process.exit(2);
}

const EXECUTE = 0x01;
const HELLO = 0x03;
const OK = 0x81;
const WELCOME = 0x85;
const GROUP = 4;
const { kOnHeadersComplete, kOnBody, kOnMessageComplete } = HTTPParser;

const frameHeader = (type, length) => {
  const h = Buffer.allocUnsafe(5);
  h.writeUInt32BE(length, 0);
  h[4] = type;
  return h;
};

// ---- the worker: one connection, calls waiting here, up to GROUP frames in flight at once
const waiting = []; // { client, body, keepAlive }
let inFlight = []; // sent, answered in order
let worker = null;
let got = Buffer.alloc(0);

function pump() {
  if (inFlight.length > 0 || waiting.length === 0) return;
  inFlight = waiting.splice(0, GROUP);
  worker.cork();
  for (const c of inFlight) { worker.write(frameHeader(EXECUTE, c.body.length)); worker.write(c.body); }
  worker.uncork();
}

function onWorkerData(d) {
  got = got.length ? Buffer.concat([got, d]) : d;
  while (got.length >= 5) {
    const length = got.readUInt32BE(0);
    if (got.length < 5 + length) break;
    const type = got[4];
    const payload = got.subarray(5, 5 + length);
    got = got.subarray(5 + length);
    const c = inFlight.shift();
    if (c && !c.client.destroyed) {
      c.client.cork(); // head and body in one write
      c.client.write(`HTTP/1.1 ${type === OK ? '200 OK' : '500 Internal Server Error'}\r\ncontent-type: application/json\r\ncontent-length: ${length}\r\n${c.keepAlive ? '' : 'connection: close\r\n'}\r\n`);
      c.client.write(payload);
      c.client.uncork();
      if (!c.keepAlive) c.client.end();
    }
  }
  pump();
}

// ---- callers
function serve(client) {
  client.setNoDelay(true);
  const p = new HTTPParser();
  p.initialize(HTTPParser.REQUEST, {}, 16 * 1024, HTTPParser.kLenientNone);
  let body = [];
  let keepAlive = true;
  p[kOnHeadersComplete] = (_maj, _min, _headers, _method, _url, _status, _msg, _upgrade, ka) => { keepAlive = ka; body = []; return 0; };
  p[kOnBody] = (b) => { body.push(Buffer.from(b)); };
  p[kOnMessageComplete] = () => { waiting.push({ client, body: body.length === 1 ? body[0] : Buffer.concat(body), keepAlive }); };
  client.on('data', (d) => {
    client.cork(); // the answers of one read go out in one write
    if (p.execute(d) instanceof Error) client.destroy();
    pump();
    client.uncork();
  });
  client.on('error', () => undefined);
}

const conn = net.connect(socketPath);
conn.once('connect', () => {
  conn.write(Buffer.concat([frameHeader(HELLO, Buffer.byteLength(secret)), Buffer.from(secret)]));
});
conn.once('data', (d) => {
  if (d.length < 5 || d.readUInt32BE(0) !== 0 || d[4] !== WELCOME) { console.error('the worker refused the handshake'); process.exit(1); }
  worker = conn;
  conn.on('data', onWorkerData);
  if (d.length > 5) onWorkerData(d.subarray(5));
  net.createServer({ noDelay: true }, serve).listen(listenPort, '127.0.0.1', () => console.log('ready'));
});
conn.on('error', (e) => { console.error(`worker connection: ${e.message}`); process.exit(1); });
conn.on('close', () => { console.error('worker connection closed'); process.exit(1); });

process.on('SIGTERM', () => process.exit(0));
