// Test service `http-echo` (and `unhealthy`, which sets ECHO_HEALTHZ_STATUS=503).
// Node built-ins only; runs inside a test image as /app/service.mjs.
//   :8080 HTTP/1.1   echo as JSON; POST ?raw=1 echoes the body bytes; /healthz; /sleep?ms=N;
//                    /big?bytes=N (streamed, chunked); /env (the container's environment);
//                    /sleep answers `concurrent`: the /sleep calls running here when it started, itself included;
//                    /print?text=T writes T to stdout (the instance's log)
//   :8081 h2c        the same handler over HTTP/2 cleartext (prior knowledge)
//   :9100 /metrics   Prometheus text: echo_requests_total
import http from 'node:http';
import http2 from 'node:http2';
import { hostname } from 'node:os';

const HTTP_PORT = Number(process.env.ECHO_PORT ?? 8080);
const H2C_PORT = Number(process.env.ECHO_H2C_PORT ?? 8081);
const METRICS_PORT = Number(process.env.ECHO_METRICS_PORT ?? 9100);
const HEALTHZ_STATUS = Number(process.env.ECHO_HEALTHZ_STATUS ?? 200);
const MAX_BODY = 64 * 1024 * 1024;
const MAX_BIG = 1024 * 1024 * 1024;
const MAX_SLEEP_MS = 10 * 60_000;

let requests = 0;
/** /sleep calls running right now (a test checks Berth never runs more than sessionsPerInstance). */
let sleeping = 0;

function handle(req, res) {
  requests++;
  const url = new URL(req.url ?? '/', 'http://echo');
  if (url.pathname === '/healthz') {
    res.writeHead(HEALTHZ_STATUS, { 'content-type': 'text/plain' });
    res.end(HEALTHZ_STATUS === 200 ? 'ok\n' : 'unhealthy on purpose\n');
    return;
  }
  if (url.pathname === '/big') {
    let left = Math.min(MAX_BIG, Math.max(0, Number(url.searchParams.get('bytes') ?? 1024 * 1024) || 0));
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const chunk = Buffer.alloc(64 * 1024, 'x');
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, chunk.length);
        left -= n;
        if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) { res.once('drain', pump); return; }
      }
      res.end();
    };
    res.on('close', () => { left = 0; });
    pump();
    return;
  }
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size > MAX_BODY) { res.writeHead(413); res.end('body too large\n'); req.destroy(); return; }
    chunks.push(c);
  });
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    if (url.pathname === '/sleep') {
      const ms = Math.min(MAX_SLEEP_MS, Math.max(0, Number(url.searchParams.get('ms') ?? 0) || 0));
      const concurrent = ++sleeping;
      setTimeout(() => { sleeping--; json(res, 200, { slept: ms, instance: hostname(), concurrent }); }, ms);
      return;
    }
    if (url.pathname === '/env') { json(res, 200, process.env); return; }
    if (url.pathname === '/print') { console.log(String(url.searchParams.get('text') ?? '').slice(0, 1000)); json(res, 200, { printed: true, instance: hostname() }); return; }
    if (req.method === 'POST' && url.searchParams.get('raw') === '1') {
      res.writeHead(200, { 'content-type': req.headers['content-type'] ?? 'application/octet-stream', 'content-length': body.length });
      res.end(body);
      return;
    }
    const headers = {};
    for (const [k, v] of Object.entries(req.headers)) if (!k.startsWith(':')) headers[k] = v;
    json(res, 200, {
      method: req.method,
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      headers,
      body: body.toString('utf8'),
      httpVersion: req.httpVersion,
      instance: hostname(),
    });
  });
}

function json(res, status, value) {
  const text = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

const servers = [
  http.createServer(handle).listen(HTTP_PORT, '0.0.0.0'),
  http2.createServer({}, handle).listen(H2C_PORT, '0.0.0.0'),
  http.createServer((req, res) => {
    if (new URL(req.url ?? '/', 'http://echo').pathname !== '/metrics') { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
    res.end(`# HELP echo_requests_total Requests served by the echo service.\n# TYPE echo_requests_total counter\necho_requests_total ${requests}\n`);
  }).listen(METRICS_PORT, '0.0.0.0'),
];
console.log(`http-echo listening on ${HTTP_PORT} (HTTP/1.1), ${H2C_PORT} (h2c), ${METRICS_PORT} (metrics)`);

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    console.log(`http-echo: ${sig}, exiting`);
    for (const s of servers) s.close();
    process.exit(0);
  });
}
