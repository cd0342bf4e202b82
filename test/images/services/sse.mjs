// Test service `sse`: HTTP/1.1 on :8080. GET /events streams `data: N\n\n` (N = 1..10) every
// 100 ms as text/event-stream, each event flushed as it is produced; /healthz → 200.
import http from 'node:http';

const PORT = Number(process.env.SSE_PORT ?? 8080);
const EVENTS = Number(process.env.SSE_EVENTS ?? 10);
const INTERVAL_MS = Number(process.env.SSE_INTERVAL_MS ?? 100);

const server = http.createServer((req, res) => {
  const path = new URL(req.url ?? '/', 'http://sse').pathname;
  if (path === '/healthz') { res.writeHead(200, { 'content-type': 'text/plain' }); res.end('ok\n'); return; }
  if (path !== '/events') { res.writeHead(404, { 'content-type': 'text/plain' }); res.end('try /events\n'); return; }
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
  res.flushHeaders();
  let n = 0;
  const timer = setInterval(() => {
    n++;
    res.write(`data: ${n}\n\n`);
    if (n >= EVENTS) { clearInterval(timer); res.end(); }
  }, INTERVAL_MS);
  res.on('close', () => clearInterval(timer));
});
server.listen(PORT, '0.0.0.0', () => console.log(`sse listening on ${PORT}`));

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { console.log(`sse: ${sig}, exiting`); server.close(); process.exit(0); });
}
