// The control-API relay (src/cluster/relay.ts: a gateway worker's control requests to its
// primary's unix socket), between real HTTP servers: a request without a body whose kept-alive
// socket the other side dropped as it was reused is sent again on a new one (before, a health
// check through a worker could answer 503 under load); one with a body is not (its bytes may
// have been used): 503 CONTROL_UNAVAILABLE. A streamed answer shows its headers at once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import { relayControl } from '../../src/cluster/relay.js';

async function listen(server: Server, at: string | 0): Promise<string> {
  await new Promise<void>((resolve) => server.listen(at, resolve));
  const a = server.address();
  return typeof a === 'string' ? a : `http://127.0.0.1:${a!.port}`;
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
    // a request with a body is not sent twice
    const post = await fetch(`${url}/v1/tokens`, { method: 'POST', body: '{"name":"x"}', headers: { 'content-type': 'application/json' } });
    assert.equal(post.status, 503);
    assert.equal((await post.json() as { code: string }).code, 'CONTROL_UNAVAILABLE');
    assert.equal(primary.seen.filter((s) => s.startsWith('POST')).length, 1, 'the POST reached the primary once');
  } finally {
    worker.close();
    worker.closeAllConnections();
    primary.server.close();
    primary.server.closeAllConnections();
    rmSync(dir, { recursive: true, force: true });
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
    worker.close();
    worker.closeAllConnections();
    primary.server.close();
    primary.server.closeAllConnections();
    rmSync(dir, { recursive: true, force: true });
  }
});
