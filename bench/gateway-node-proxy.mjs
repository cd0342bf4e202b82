// A minimal reverse proxy in one Node process: the reference row "Node floor" of
// bench/gateway.ts. It does what any Node gateway must do per call and nothing else:
// no auth, no routing table, no limits, no timeouts, no metrics. Its numbers say what
// Node itself costs on the machine, so the gap between it and Berth is Berth's own.
//   HTTP/1.1  node:http server -> undici Pool (keep-alive, 64 connections) -> upstream
//   h2c       node:http2 server -> one node:http2 client session -> upstream, trailers kept
//
//   node bench/gateway-node-proxy.mjs <http-listen> <http-upstream> <h2-listen> <h2-upstream>
// (all ports on 127.0.0.1; prints "ready" once both listen; SIGTERM stops it)
import http from 'node:http';
import http2 from 'node:http2';
import { Pool } from 'undici';

const [httpPort, httpUp, h2Port, h2Up] = process.argv.slice(2).map(Number);
if (![httpPort, httpUp, h2Port, h2Up].every((p) => Number.isInteger(p) && p > 0 && p < 65536)) {
  console.error('usage: node bench/gateway-node-proxy.mjs <http-listen> <http-upstream> <h2-listen> <h2-upstream>');
  process.exit(2);
}

const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'host', 'http2-settings']);
const copy = (h) => {
  const out = {};
  for (const k in h) if (!HOP.has(k) && k[0] !== ':' && h[k] !== undefined) out[k] = h[k];
  return out;
};

const pool = new Pool(`http://127.0.0.1:${httpUp}`, { connections: 64, pipelining: 1 });
const httpServer = http.createServer((req, res) => {
  const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
  pool.request({ method: req.method, path: req.url, headers: copy(req.headers), body: hasBody ? req : undefined }).then((r) => {
    res.writeHead(r.statusCode, copy(r.headers));
    r.body.pipe(res);
  }, () => {
    if (!res.headersSent) res.writeHead(502);
    res.end();
  });
});

let session = null;
const upstream = () => {
  if (session && !session.closed && !session.destroyed) return session;
  session = http2.connect(`http://127.0.0.1:${h2Up}`);
  session.on('error', () => {});
  return session;
};
const h2Server = http2.createServer();
h2Server.on('stream', (stream, headers) => {
  stream.on('error', () => {});
  const up = upstream().request({ ...copy(headers), ':method': headers[':method'], ':path': headers[':path'] });
  up.on('error', () => { if (!stream.headersSent && !stream.destroyed) stream.respond({ ':status': 502 }, { endStream: true }); else stream.destroy(); });
  stream.pipe(up);
  let trailers = {};
  up.on('trailers', (t) => { trailers = copy(t); });
  up.on('response', (h, flags) => {
    if (stream.destroyed) return;
    const endStream = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
    stream.respond({ ...copy(h), ':status': h[':status'] }, endStream ? { endStream: true } : { waitForTrailers: true });
    if (endStream) return;
    stream.on('wantTrailers', () => stream.sendTrailers(trailers));
    up.pipe(stream);
  });
  stream.on('close', () => { if (!up.closed) up.close(http2.constants.NGHTTP2_CANCEL); });
});
h2Server.on('sessionError', () => {});

let listening = 0;
const ready = () => { if (++listening === 2) console.log('ready'); };
httpServer.listen(httpPort, '127.0.0.1', ready);
h2Server.listen(h2Port, '127.0.0.1', ready);
process.on('SIGTERM', () => process.exit(0));
