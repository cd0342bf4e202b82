// The HTTP/1.1 upstream client (gateway/upstream.ts, H1Upstream) against real servers on
// port 0: framing both ways, keep-alive and when a connection must not be reused, the
// answers HTTP/1.1 allows (1xx, HEAD, 204, trailers, close-delimited), and every way an
// exchange fails (refused, garbage, idle, aborted, over the limit, unsafe header).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse, type Server } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { H1Upstream, RequestBody, isRefused, type UpstreamRequest } from '../../src/gateway/upstream.js';
import type { ResponseBody } from '../../src/gateway/h1-message.js';
import { Deadline } from '../../src/gateway/deadlines.js';

const listen = async <S extends Server | NetServer>(s: S): Promise<{ server: S; port: number }> => {
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return { server: s, port: (s.address() as AddressInfo).port };
};

const close = (s: Server | NetServer): Promise<void> => new Promise((r) => {
  (s as Server).closeAllConnections?.();
  s.close(() => r());
});

const req = (over: Partial<UpstreamRequest> = {}): UpstreamRequest => ({
  method: 'GET', path: '/', headers: {}, body: null, signal: new Deadline(Infinity, null),
  headersTimeoutMs: 10_000, idleTimeoutMs: 10_000, ...over,
});

const readAll = (body: ResponseBody): Promise<string> => new Promise((resolve, reject) => {
  const chunks: Buffer[] = [];
  body.on('data', (c) => chunks.push(c));
  body.once('end', () => resolve(Buffer.concat(chunks).toString()));
  body.once('error', reject);
});

/** An HTTP server that records each request's client port (which connection it came on) and body. */
async function recording(handler: (req: IncomingMessage, res: ServerResponse, body: string) => void) {
  const seen: Array<{ port: number; method: string; url: string; headers: IncomingMessage['headers']; body: string }> = [];
  const { server, port } = await listen(createServer((rq, rs) => {
    const chunks: Buffer[] = [];
    rq.on('data', (c: Buffer) => chunks.push(c));
    rq.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      seen.push({ port: rq.socket.remotePort!, method: rq.method!, url: rq.url!, headers: rq.headers, body });
      handler(rq, rs, body);
    });
  }));
  return { server, port, seen };
}

test('method, path, headers and a streamed body go out; headers, body and trailers come back; the connection is reused', async (t) => {
  const { server, port, seen } = await recording((rq, rs, body) => {
    if (rq.url === '/trailers') {
      rs.writeHead(200, { 'content-type': 'text/plain', trailer: 'grpc-status' });
      rs.write('part one, ');
      rs.addTrailers({ 'grpc-status': '0' });
      rs.end('part two');
      return;
    }
    rs.setHeader('set-cookie', ['a=1', 'b=2']);
    rs.end(`echo:${body}`);
  });
  t.after(() => close(server));
  const up = new H1Upstream({ host: '127.0.0.1', port }, 10_000);
  t.after(() => up.close());

  const src = new PassThrough();
  const body = new RequestBody(src);
  const pending = up.request(req({ method: 'POST', path: '/p?q=1', headers: { 'x-one': 'a', 'x-two': ['b', 'c'] }, body }));
  src.write('hello ');
  setTimeout(() => src.end('world'), 20);
  const res = await pending;
  assert.equal(res.status, 200);
  assert.deepEqual(res.headers['set-cookie'], ['a=1', 'b=2']);
  assert.equal(await readAll(res.body), 'echo:hello world');
  assert.deepEqual(await res.trailers, {});
  assert.equal(body.bytes, 11);
  assert.equal(seen[0]!.method, 'POST');
  assert.equal(seen[0]!.url, '/p?q=1');
  assert.equal(seen[0]!.headers['x-one'], 'a');
  assert.equal(seen[0]!.headers['x-two'], 'b, c');
  assert.equal(seen[0]!.headers.host, `127.0.0.1:${port}`);
  assert.equal(seen[0]!.headers['transfer-encoding'], 'chunked');
  // header bytes go as the caller sent them: llhttp reads them as latin1, and so they are written
  const accented = await up.request(req({ path: '/latin1', headers: { 'x-name': 'caf\u00e9' } }));
  await readAll(accented.body);
  assert.equal(seen.at(-1)!.headers['x-name'], 'caf\u00e9', 'byte 0xE9 arrives as one byte, not as UTF-8\'s two');
  seen.pop();

  const second = await up.request(req({ path: '/trailers' }));
  assert.equal(await readAll(second.body), 'part one, part two');
  assert.deepEqual(await second.trailers, { 'grpc-status': '0' });
  assert.equal(seen[1]!.port, seen[0]!.port, 'the second exchange reuses the first one\'s connection');
});

test('1xx answers are skipped; HEAD, 204 and 304 end at their head; a close-delimited body ends with the connection', async (t) => {
  const raw = await listen(createNetServer((s: Socket) => {
    s.once('data', () => {
      // HTTP/1.0-style: no length, the end of the connection ends the body
      s.end('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end');
    });
  }));
  t.after(() => close(raw.server));
  const up = new H1Upstream({ host: '127.0.0.1', port: raw.port }, 10_000);
  t.after(() => up.close());
  const res = await up.request(req());
  assert.equal(res.status, 200);
  assert.equal(await readAll(res.body), 'until the end');

  const { server, port, seen } = await recording((rq, rs) => {
    if (rq.url === '/204') { rs.writeHead(204); rs.end(); return; }
    if (rq.url === '/304') { rs.writeHead(304, { etag: '"x"' }); rs.end(); return; }
    rs.writeHead(200, { 'content-length': '5' });
    rs.end(rq.method === 'HEAD' ? undefined : 'hello');
  });
  t.after(() => close(server));
  const up2 = new H1Upstream({ host: '127.0.0.1', port }, 10_000);
  t.after(() => up2.close());
  const head = await up2.request(req({ method: 'HEAD' }));
  assert.equal(head.headers['content-length'], '5');
  assert.equal(await readAll(head.body), '');
  for (const path of ['/204', '/304', '/']) {
    const r = await up2.request(req({ path }));
    assert.equal(await readAll(r.body), path === '/' ? 'hello' : '');
  }
  assert.equal(new Set(seen.map((s) => s.port)).size, 1, 'bodiless answers leave the connection usable');
});

test('a connection is not reused when the instance says close, hints a short keep-alive, or closes it while idle', async (t) => {
  const { server, port, seen } = await recording((rq, rs) => {
    if (rq.url === '/close') rs.setHeader('connection', 'close');
    if (rq.url === '/hint') rs.setHeader('keep-alive', 'timeout=1');
    rs.end('ok');
  });
  t.after(() => close(server));
  const up = new H1Upstream({ host: '127.0.0.1', port }, 10_000);
  t.after(() => up.close());
  for (const path of ['/close', '/', '/hint', '/']) assert.equal(await readAll((await up.request(req({ path }))).body), 'ok');
  const ports = seen.map((s) => s.port);
  assert.notEqual(ports[1], ports[0], 'after connection: close, a new connection');
  assert.equal(ports[2], ports[1]);
  assert.notEqual(ports[3], ports[2], 'keep-alive timeout=1 leaves no time to reuse it safely');

  // the instance closes an idle connection: the next call opens a new one and succeeds
  server.closeIdleConnections();
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(await readAll((await up.request(req())).body), 'ok');
});

test('an answer read slowly after the exchange ended does not hold up the connection\'s next exchange', async (t) => {
  const { server, port, seen } = await recording((_rq, rs) => rs.end('x'.repeat(1000)));
  t.after(() => close(server));
  const up = new H1Upstream({ host: '127.0.0.1', port }, 10_000);
  t.after(() => up.close());
  const first = await up.request(req());
  first.body.on('data', () => first.body.pause()); // reads one chunk, then stops reading
  await new Promise((r) => setTimeout(r, 50));
  const second = await up.request(req());
  assert.equal((await readAll(second.body)).length, 1000);
  assert.equal(seen[1]!.port, seen[0]!.port);
  first.body.destroy(); // abandoning the old answer now must not touch the connection's current use
  const third = await up.request(req());
  assert.equal((await readAll(third.body)).length, 1000);
  assert.equal(seen[2]!.port, seen[0]!.port);
});

test('an answer left unread while later answers are read stays byte-exact (every upstream read lands in one shared buffer)', async (t) => {
  const bodies = [randomBytes(12 * 1024), randomBytes(12 * 1024), randomBytes(12 * 1024)];
  const { server, port } = await recording((rq, rs) => rs.end(bodies[Number(rq.url!.slice(1))]));
  t.after(() => close(server));
  const up = new H1Upstream({ host: '127.0.0.1', port }, 10_000);
  t.after(() => up.close());
  const first = await up.request(req({ path: '/0' }));
  await new Promise((r) => setTimeout(r, 50)); // all of it has come, held in the body, unread
  const second = await up.request(req({ path: '/1' }));
  const third = await up.request(req({ path: '/2' }));
  const bytes = (body: ResponseBody): Promise<Buffer> => new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    body.on('data', (c) => chunks.push(c));
    body.once('end', () => resolve(Buffer.concat(chunks)));
    body.once('error', reject);
  });
  assert.ok((await bytes(third.body)).equals(bodies[2]!));
  assert.ok((await bytes(second.body)).equals(bodies[1]!));
  assert.ok((await bytes(first.body)).equals(bodies[0]!), 'the first answer, read last, is its own bytes');
});

test('refused, garbage, an unsafe header value, an abort and an idle body fail the exchange with their own code', async (t) => {
  // refused: nothing listens on a port that was just closed
  const gone = await listen(createNetServer());
  await close(gone.server);
  const refused = new H1Upstream({ host: '127.0.0.1', port: gone.port }, 10_000);
  t.after(() => refused.close());
  await assert.rejects(refused.request(req()), (err: unknown) => isRefused(err));

  const raw = await listen(createNetServer((s: Socket) => {
    s.on('error', () => undefined);
    s.on('data', (d: Buffer) => {
      const path = d.toString().split(' ')[1];
      if (path === '/garbage') s.write('SPDY/9 what\r\n\r\n');
      else if (path === '/slow-body') s.write('HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf');
      // '/silent' never answers
    });
  }));
  t.after(() => close(raw.server));
  const up = new H1Upstream({ host: '127.0.0.1', port: raw.port }, 10_000);
  t.after(() => up.close());

  await assert.rejects(up.request(req({ path: '/garbage' })), { code: 'UPSTREAM_PROTOCOL' });
  await assert.rejects(up.request(req({ headers: { 'x-bad': 'a\r\nx-injected: 1' } })), { code: 'ERR_INVALID_CHAR' });

  const signal = new Deadline(Infinity, null);
  const silent = up.request(req({ path: '/silent', signal }));
  setTimeout(() => signal.abort(Object.assign(new Error('the caller left'), { code: 'TEST_ABORT' })), 30);
  await assert.rejects(silent, { code: 'TEST_ABORT' });

  const started = Date.now();
  const slow = await up.request(req({ path: '/slow-body', idleTimeoutMs: 300 }));
  await assert.rejects(readAll(slow.body), { code: 'UPSTREAM_IDLE_TIMEOUT' });
  const took = Date.now() - started;
  assert.ok(took >= 280 && took < 3000, `cut after ${took} ms`);
  assert.deepEqual(await slow.trailers, {});
});

test('a request body over its limit fails the exchange with the limit\'s error, and the caller\'s stream stays whole', async (t) => {
  const { server, port } = await recording((_rq, rs) => rs.end('ok'));
  t.after(() => close(server));
  const up = new H1Upstream({ host: '127.0.0.1', port }, 10_000);
  t.after(() => up.close());
  const src = new PassThrough();
  const body = new RequestBody(src, 1000, () => Object.assign(new Error('too large'), { code: 'TOO_LARGE' }));
  const pending = up.request(req({ method: 'PUT', body }));
  src.write(Buffer.alloc(600));
  src.write(Buffer.alloc(600));
  await assert.rejects(pending, { code: 'TOO_LARGE' });
  assert.equal(src.destroyed, false, 'the caller\'s side is answered 413 by the proxy, not cut here');
  assert.equal(src.isPaused(), true, 'what the caller still sends waits, unread');
  // and the pool still serves
  assert.equal(await readAll((await up.request(req())).body), 'ok');
});
