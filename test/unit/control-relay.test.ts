// The control-API relay (src/cluster/relay.ts: a gateway worker's control requests to its
// primary's unix socket), between real HTTP servers: a request without a body whose kept-alive
// socket the other side dropped as it was reused is sent again on a new one (before, a health
// check through a worker could answer 503 under load); one with a body is not (its bytes may
// have been used): 503 CONTROL_UNAVAILABLE. A streamed answer shows its headers at once. A
// body of unknown length reaches the other side chunked whatever the method (sent raw, its
// bytes were parsed there as requests of their own: request smuggling on the shared sockets,
// and the primary's answers to them closed sockets under the fuzz suite's health checks); a
// request answered before its body was all sent on leaves no half-sent request behind; a
// method no route has is answered 404 here (HTTP/1.1 cannot carry it); the headers go first,
// so an early answer does not wait for a slow body; an idle socket is dropped before the
// other side's Keep-Alive: timeout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as netConnect, type Socket } from 'node:net';
import http2 from 'node:http2';
import { relayControl } from '../../src/cluster/relay.js';

async function listen(server: Server, at: string | 0): Promise<string> {
  await new Promise<void>((resolve) => server.listen(at, resolve));
  const a = server.address();
  return typeof a === 'string' ? a : `http://127.0.0.1:${a!.port}`;
}

/** Stops the servers (their kept-alive connections too) and removes the socket's directory. */
function cleanUp(dir: string, ...servers: Array<{ close(): unknown; closeAllConnections?(): void }>): void {
  for (const server of servers) { server.close(); server.closeAllConnections?.(); }
  rmSync(dir, { recursive: true, force: true });
}

/** A "primary" that answers the first request on each connection and drops the connection, unanswered, when a second arrives on it. */
async function droppingPrimary(dir: string): Promise<{ path: string; server: Server; seen: string[] }> {
  const seen: string[] = [];
  const perSocket = new WeakMap<Socket, number>();
  const server = createServer((req, res) => {
    const n = (perSocket.get(req.socket) ?? 0) + 1;
    perSocket.set(req.socket, n);
    seen.push(`${req.method} ${req.url} #${n}`);
    if (n > 1) { req.socket.destroy(); return; }
    if (req.url === '/stream') {
      res.writeHead(200, { 'content-type': 'text/plain' }); // no length, nothing written yet: headers sent, as fastify does for a stream
      res.flushHeaders();
      return;
    }
    req.resume();
    req.on('end', () => res.end(JSON.stringify({ ok: true, url: req.url })));
  });
  return { path: await listen(server, join(dir, 'control.sock')), server, seen };
}

test('a bodiless request on a dropped kept-alive socket is sent again; one with a body is answered 503', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-control-relay-'));
  const primary = await droppingPrimary(dir);
  const worker = createServer(relayControl(() => ({ socketPath: primary.path })));
  const url = await listen(worker, 0);
  try {
    // first request: a new socket to the primary, kept alive after its answer
    assert.equal((await fetch(`${url}/v1/health`)).status, 200);
    // second: the relay reuses that socket, the primary drops it; a GET goes again on a new one
    const again = await fetch(`${url}/v1/health`);
    assert.equal(again.status, 200);
    assert.deepEqual(await again.json(), { ok: true, url: '/v1/health' });
    assert.deepEqual(primary.seen, ['GET /v1/health #1', 'GET /v1/health #2', 'GET /v1/health #1']);
    // a request with a body is not sent twice (the retry's connection was not kept: this GET
    // makes the kept-alive one the POST then reuses)
    assert.equal((await fetch(`${url}/v1/health`)).status, 200);
    const post = await fetch(`${url}/v1/tokens`, { method: 'POST', body: '{"name":"x"}', headers: { 'content-type': 'application/json' } });
    assert.equal(post.status, 503);
    assert.equal((await post.json() as { code: string }).code, 'CONTROL_UNAVAILABLE');
    assert.equal(primary.seen.filter((s) => s.startsWith('POST')).length, 1, 'the POST reached the primary once');
  } finally {
    cleanUp(dir, worker, primary.server);
  }
});

test('a streamed answer shows its headers before its first byte', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-control-relay-'));
  const primary = await droppingPrimary(dir);
  const worker = createServer(relayControl(() => ({ socketPath: primary.path })));
  const url = await listen(worker, 0);
  const ctl = new AbortController();
  try {
    const res = await fetch(`${url}/stream`, { signal: AbortSignal.any([ctl.signal, AbortSignal.timeout(3000)]) });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'text/plain');
  } finally {
    ctl.abort();
    cleanUp(dir, worker, primary.server);
  }
});

/** A primary that records every request it parses, with its body, and answers each with its url. */
async function recordingPrimary(dir: string): Promise<{ path: string; server: Server; seen: string[]; closed: () => number }> {
  const seen: string[] = [];
  let closed = 0;
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => { body += d; });
    const framing = req.headers['transfer-encoding'] ?? (req.headers['content-length'] === undefined ? 'none' : 'length');
    req.on('end', () => { seen.push(`${req.method} ${req.url} ${JSON.stringify(body)} ${framing}`); res.end(JSON.stringify({ url: req.url })); });
  });
  server.on('connection', (socket) => socket.on('close', () => { closed++; }));
  return { path: await listen(server, join(dir, 'control.sock')), server, seen, closed: () => closed };
}

/** One raw HTTP/1.1 exchange: writes `raw`, returns what came back once the answer's `end` marker arrived (or 3 s passed). */
function raw(url: string, text: string, until: string): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve) => {
    const socket = netConnect(Number(u.port), u.hostname, () => socket.write(text));
    let got = '';
    const done = (): void => { clearTimeout(timer); socket.destroy(); resolve(got); };
    const timer = setTimeout(done, 3000);
    socket.on('data', (d) => { got += d; if (got.includes(until)) done(); });
    socket.on('error', done);
  });
}

test('a body of unknown length is relayed chunked, whatever the method: its bytes are never read as a request of their own', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-control-relay-'));
  const primary = await recordingPrimary(dir);
  const worker = createServer(relayControl(() => ({ socketPath: primary.path })));
  const url = await listen(worker, 0);
  // as the data plane does: Node's HTTP/2 compatibility objects handed to the relay as HTTP/1 ones
  const h2 = http2.createServer(relayControl(() => ({ socketPath: primary.path })) as unknown as (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void);
  const h2url = await listen(h2 as unknown as Server, 0);
  try {
    const smuggled = 'GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n';
    for (const method of ['DELETE', 'GET', 'OPTIONS']) {
      const chunk = `${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`;
      const answer = await raw(url, `${method} /v1/nodes/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n${chunk}`, '}');
      assert.match(answer, /^HTTP\/1\.1 200/);
    }
    // over HTTP/2 a DELETE's body has no length either
    const session = http2.connect(h2url);
    const stream = session.request({ ':method': 'DELETE', ':path': '/v1/nodes/y' }, { endStream: false });
    stream.end(smuggled);
    stream.resume();
    await new Promise((r) => stream.on('close', r));
    session.close();
    // what the primary parsed, and what a request after them gets
    const health = await fetch(`${url}/v1/health`);
    assert.deepEqual(await health.json(), { url: '/v1/health' });
    assert.deepEqual(primary.seen.filter((s) => s.startsWith('GET /smuggled')), [], 'a body was parsed as a request');
    assert.deepEqual(primary.seen.map((s) => s.split(' ').slice(0, 2).join(' ')).sort(),
      ['DELETE /v1/nodes/x', 'DELETE /v1/nodes/y', 'GET /v1/health', 'GET /v1/nodes/x', 'OPTIONS /v1/nodes/x']);
    for (const s of primary.seen.filter((x) => x.includes('/v1/nodes/'))) assert.ok(s.endsWith(` ${JSON.stringify(smuggled)} chunked`), `the body arrived whole: ${s}`);
    // and a request without a body has none there either (a DELETE with a chunked empty body
    // and a JSON content-type is an error in fastify), over HTTP/1.1 and HTTP/2
    primary.seen.length = 0;
    assert.equal((await fetch(`${url}/v1/nodes/z`, { method: 'DELETE', headers: { 'content-type': 'application/json' } })).status, 200);
    const session2 = http2.connect(h2url);
    const del = session2.request({ ':method': 'DELETE', ':path': '/v1/nodes/z' });
    del.resume();
    await new Promise((r) => del.on('close', r));
    session2.close();
    assert.deepEqual(primary.seen, ['DELETE /v1/nodes/z "" none', 'DELETE /v1/nodes/z "" none']);
  } finally {
    cleanUp(dir, worker, h2, primary.server);
  }
});

test('a caller who leaves mid-upload after an early answer does not hold a connection to the primary', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-control-relay-'));
  const primary = await recordingPrimary(dir);
  primary.server.removeAllListeners('request');
  primary.server.on('request', (_req, res) => res.end('{"early":true}')); // answers before the body, as a 401 does
  const worker = createServer(relayControl(() => ({ socketPath: primary.path })));
  const url = await listen(worker, 0);
  try {
    const answer = await raw(url, 'POST /v1/tokens HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n{"name":', '}');
    assert.match(answer, /early/);
    const deadline = Date.now() + 3000;
    while (primary.closed() < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(primary.closed(), 1, 'the relay closed its half-sent request to the primary');
  } finally {
    cleanUp(dir, worker, primary.server);
  }
});

test('a method no route has is answered 404 by the relay, as the primary would, without reaching it; an unfinished body does not hold up an early answer', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-control-relay-'));
  const primary = await recordingPrimary(dir);
  const early: string[] = [];
  primary.server.removeAllListeners('request');
  primary.server.on('request', (req, res) => { early.push(`${req.method} ${req.url}`); res.end('{"early":true}'); });
  const h2 = http2.createServer(relayControl(() => ({ socketPath: primary.path })) as unknown as (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void);
  const h2url = await listen(h2 as unknown as Server, 0);
  const session = http2.connect(h2url);
  const ask = (method: string, end: boolean): Promise<{ status: number; body: string }> => new Promise((resolve, reject) => {
    const st = session.request({ ':method': method, ':path': '/v1/health' }, { endStream: false });
    if (end) st.end();
    let status = 0;
    let body = '';
    st.on('response', (h) => { status = Number(h[':status']); });
    st.on('data', (d) => { body += d; });
    st.on('end', () => { resolve({ status, body }); st.close(); });
    st.on('error', reject);
    st.setTimeout(3000, () => reject(new Error(`${method}: no answer in 3 s`)));
  });
  try {
    for (const method of ['FOO', 'get', 'PRI']) {
      const a = await ask(method, true);
      assert.equal(a.status, 404, `${method}: ${a.body}`);
      assert.equal(JSON.parse(a.body).code, 'ROUTE_NOT_FOUND');
    }
    assert.deepEqual(early, [], 'none of them reached the primary');
    // a body still on its way: the primary's early answer comes back at once (headers go first)
    const a = await ask('POST', false);
    assert.equal(a.status, 200);
    assert.deepEqual(early, ['POST /v1/health']);
  } finally {
    session.destroy();
    cleanUp(dir, h2, primary.server);
  }
});

test('an idle kept-alive socket is dropped by the relay a second before the other side would drop it (its Keep-Alive: timeout)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-control-relay-'));
  const primary = await recordingPrimary(dir);
  primary.server.keepAliveTimeout = 2500; // answers say "Keep-Alive: timeout=2"
  const closes: string[] = [];
  let answeredAt = 0;
  primary.server.on('connection', (socket) => {
    socket.on('end', () => closes.push(`relay after ${Date.now() - answeredAt} ms`)); // a FIN from the relay's side
    socket.on('timeout', () => closes.push('primary timed out first'));
  });
  const worker = createServer(relayControl(() => ({ socketPath: primary.path })));
  const url = await listen(worker, 0);
  try {
    assert.equal((await fetch(`${url}/v1/health`)).status, 200);
    answeredAt = Date.now();
    const deadline = Date.now() + 4000;
    while (closes.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(closes.length, 1, 'the idle socket was closed');
    assert.match(closes[0]!, /^relay after \d+ ms$/);
    const ms = Number(/(\d+) ms/.exec(closes[0]!)![1]);
    assert.ok(ms >= 900 && ms < 2000, `dropped about a second after the answer (timeout=2, less a second): ${ms} ms`);
  } finally {
    cleanUp(dir, worker, primary.server);
  }
});
