// The leanest HTTP/1.1 reverse proxy a Node process can run: the reference row "raw Node
// floor" of bench/gateway.ts. Where the Node floor (gateway-node-proxy.mjs) uses node:http and
// undici, this one skips both: Node's own HTTP parser (llhttp, the one node:http runs on, from
// `_http_common`) straight on net sockets, both towards the caller and towards the upstream
// (kept-alive connections, one exchange at a time on each), no request/response objects, no
// streams: bodies are passed on chunk by chunk as they arrive, content-length kept, chunked
// re-chunked. No auth, routing, limits, timeouts or metrics. Its numbers are a lower bound
// for any HTTP/1.1 gateway written for Node on this machine (issue 8's "≥ 0.8× nginx").
//
//   node bench/gateway-raw-proxy.mjs <http-listen> <http-upstream> [processes]
// (ports on 127.0.0.1; prints "ready" once it listens; SIGTERM stops it). With more than one
// process, node:cluster's primary accepts each connection and hands it to one of that many
// processes, as Berth's primary does to its gateway workers.
import cluster from 'node:cluster';
import net from 'node:net';
import { STATUS_CODES } from 'node:http';
import { HTTPParser, methods } from '_http_common';

const [listenPort, upstreamPort, processes = 1] = process.argv.slice(2).map(Number);
if (![listenPort, upstreamPort].every((p) => Number.isInteger(p) && p > 0 && p < 65536) || !(Number.isInteger(processes) && processes >= 1)) {
  console.error('usage: node bench/gateway-raw-proxy.mjs <http-listen> <http-upstream> [processes]');
  process.exit(2);
}
const serves = processes === 1 || cluster.isWorker;
if (!serves) {
  let listening = 0;
  for (let i = 0; i < processes; i++) cluster.fork().once('listening', () => { if (++listening === processes) console.log('ready'); });
  process.on('SIGTERM', () => { for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM'); process.exit(0); });
}

const MAX_HEADER = 16 * 1024;
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'host', 'content-length']);
const { kOnHeaders, kOnHeadersComplete, kOnBody, kOnMessageComplete } = HTTPParser;

/** Header lines without the hop-by-hop ones, and how the body is framed. */
function headerLines(raw) {
  let lines = '';
  let length = -1;
  let chunked = false;
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i].toLowerCase();
    if (k === 'content-length') length = Number(raw[i + 1]);
    else if (k === 'transfer-encoding') chunked = /chunked/i.test(raw[i + 1]);
    if (!HOP.has(k)) lines += `${raw[i]}: ${raw[i + 1]}\r\n`;
  }
  return { lines, length, chunked };
}

const framing = (f) => (f.chunked ? 'transfer-encoding: chunked\r\n' : f.length >= 0 ? `content-length: ${f.length}\r\n` : '');
const writeBody = (sock, chunked, b) => { if (chunked) sock.write(`${b.length.toString(16)}\r\n`); sock.write(b); if (chunked) sock.write('\r\n'); };

/** A parser whose header callbacks hand over the whole header list, however many reads it took. */
function parser(kind, onHead, onBody, onEnd) {
  const p = new HTTPParser();
  p.initialize(kind, {}, MAX_HEADER, HTTPParser.kLenientNone);
  let partial = [];
  let partialUrl = '';
  p[kOnHeaders] = (h, url) => { partial.push(...h); partialUrl += url; };
  p[kOnHeadersComplete] = (_maj, _min, headers, method, url, status, _msg, _upgrade, keepAlive) => {
    const all = headers ?? partial;
    const r = onHead(all, method, url ?? partialUrl, status, keepAlive);
    partial = []; partialUrl = '';
    return r;
  };
  p[kOnBody] = onBody;
  p[kOnMessageComplete] = onEnd;
  return p;
}

// ---- upstream: kept-alive connections, one exchange at a time each
const idle = [];

function upstream(onReady) {
  const u = idle.pop();
  if (u && !u.destroyed) return onReady(u);
  const s = net.connect({ port: upstreamPort, host: '127.0.0.1', noDelay: true });
  s.exchange = null; // { client, head, method, chunked, keepAlive }
  s.parser = parser(HTTPParser.RESPONSE, (raw, _m, _u, status, keepAlive) => {
    const x = s.exchange;
    const f = headerLines(raw);
    const noBody = x.method === 'HEAD' || status === 204 || status === 304;
    x.chunked = !noBody && f.length < 0; // a body without a length goes on chunked
    x.upKeepAlive = keepAlive;
    x.client.write(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}\r\n${f.lines}${noBody ? (f.length >= 0 ? `content-length: ${f.length}\r\n` : '') : x.chunked ? 'transfer-encoding: chunked\r\n' : `content-length: ${f.length}\r\n`}${x.keepAlive ? '' : 'connection: close\r\n'}\r\n`);
    return noBody ? 1 : 0;
  }, (b) => writeBody(s.exchange.client, s.exchange.chunked, b), () => {
    const x = s.exchange;
    s.exchange = null;
    if (x.chunked) x.client.write('0\r\n\r\n');
    if (x.upKeepAlive) idle.push(s); else s.destroy();
    x.done();
  });
  s.on('data', (d) => {
    const client = s.exchange?.client;
    if (!client) return;
    client.cork(); // what one read of the answer gives (head, body, end) goes out in one write
    if (s.parser.execute(d) instanceof Error) s.destroy();
    client.uncork();
  });
  s.on('end', () => { if (s.exchange) s.parser.finish(); }); // a body that ends with the connection
  s.on('error', () => undefined);
  s.on('close', () => { const x = s.exchange; s.exchange = null; if (x) x.client.destroy(); });
  s.once('connect', () => onReady(s));
}

// ---- callers (in each process that serves)
if (serves) net.createServer({ noDelay: true }, (client) => {
  const queue = []; // requests whose head has arrived, in order: { head, body: [], ended, up }
  let current = null;
  const next = () => {
    if (current || queue.length === 0) return;
    current = queue.shift();
    const x = current;
    upstream((u) => {
      x.up = u;
      u.exchange = { client, method: x.method, keepAlive: x.keepAlive, chunked: false, upKeepAlive: true, done: () => {
        current = null;
        if (!x.keepAlive) client.end(); else next();
      } };
      u.cork();
      u.write(x.head);
      for (const b of x.body) writeBody(u, x.chunkedBody, b);
      if (x.ended && x.chunkedBody) u.write('0\r\n\r\n');
      u.uncork();
      x.body = null;
    });
  };
  const p = parser(HTTPParser.REQUEST, (raw, method, url, _s, keepAlive) => {
    const f = headerLines(raw);
    const m = methods[method];
    queue.push({ method: m, keepAlive, chunkedBody: f.chunked, body: [], ended: false, up: null,
      head: `${m} ${url} HTTP/1.1\r\nhost: 127.0.0.1:${upstreamPort}\r\n${f.lines}${framing(f)}\r\n` });
    next(); // the head goes on now; the body follows as it arrives
    return 0;
  }, (b) => {
    const x = queue.at(-1) ?? current;
    const chunk = Buffer.from(b);
    if (x.body) x.body.push(chunk); else writeBody(x.up, x.chunkedBody, chunk);
  }, () => {
    const x = queue.at(-1) ?? current;
    x.ended = true;
    if (!x.body && x.chunkedBody) x.up.write('0\r\n\r\n');
    next();
  });
  client.on('data', (d) => {
    const up = current?.up;
    up?.cork(); // a request's head and body, or body chunks read together, go on in one write
    if (p.execute(d) instanceof Error) client.destroy();
    up?.uncork();
  });
  client.on('error', () => undefined);
  client.on('close', () => { if (current?.up) current.up.destroy(); });
}).listen(listenPort, '127.0.0.1', () => { if (cluster.isPrimary) console.log('ready'); });

if (serves) process.on('SIGTERM', () => process.exit(0));
