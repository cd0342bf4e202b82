// The raw HTTP/1.1 front (gateway/h1-front.ts) on real sockets on port 0, the way callers'
// connections reach it: data-plane calls served off the socket (framing, keep-alive,
// pipelining, request bodies, early answers), everything else handed to node:http with its
// bytes intact, and the bounds on heads, idleness and bytes that are not HTTP/1.1.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage } from 'node:http';
import { connect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { H1Front, type H1Handler, type H1Request, type H1Response } from '../../src/gateway/h1-front.js';

/** A front whose calls under /dp are served by `serve`; the rest by node:http, which echoes what it got. */
async function front(serve: H1Handler, times = { headersTimeoutMs: 5000, idleTimeoutMs: 5000 }, sniff = false) {
  const http1 = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => res.end(`node:${req.method} ${req.url} ${Buffer.concat(chunks).toString()}`));
  });
  const h1 = new H1Front({
    ...times,
    claim: (req) => (req.url.startsWith('/dp') ? serve : null),
    onRequest: () => undefined,
    handOff: (s) => { http1.emit('connection', s); s.resume(); },
  });
  const sockets = new Set<Socket>();
  const server = createNetServer({ noDelay: true }, (s) => {
    sockets.add(s);
    s.on('error', () => s.destroy());
    if (!sniff) { h1.accept(s); return; }
    // as the front door hands a connection over: its first read taken, put back, the socket paused
    s.once('data', (first: Buffer) => { s.pause(); s.unshift(first); h1.accept(s); });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    port, h1,
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

/** A raw client connection: what it has received so far, and when it closed. */
async function client(port: number) {
  const socket: Socket = connect(port, '127.0.0.1');
  await new Promise<void>((r, j) => { socket.once('connect', r); socket.once('error', j); });
  let text = '';
  let closed = false;
  socket.on('data', (d: Buffer) => { text += d.toString('latin1'); });
  socket.on('error', () => undefined);
  const closing = new Promise<void>((r) => socket.once('close', () => { closed = true; r(); }));
  const until = async (ok: (t: string) => boolean, ms = 3000): Promise<string> => {
    const end = Date.now() + ms;
    while (!ok(text)) {
      if (Date.now() > end || closed) assert.fail(`no such answer within ${ms} ms${closed ? ' (closed)' : ''}; got: ${JSON.stringify(text)}`);
      await new Promise((r) => setTimeout(r, 5));
    }
    return text;
  };
  return { socket, until, closing, text: () => text, isClosed: () => closed };
}

const get = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\nhost: x\r\n${extra}\r\n`;
const count = (s: string, sub: string): number => s.split(sub).length - 1;

/** Reads a request's whole body (as the gateway does). */
const body = (req: H1Request): Promise<string> => new Promise((resolve) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => resolve(Buffer.concat(chunks).toString()));
});

test('calls are framed by length, chunked or bodiless, on one kept-alive connection', async (t) => {
  const f = await front((req, res) => {
    if (req.url === '/dp/len') { setTimeout(() => { res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 5 }); res.end('hello'); }, 10); return; }
    if (req.url === '/dp/chunked') { res.writeHead(201, { 'x-a': ['1', '2'] }); res.write('ab'); res.write(Buffer.from('cde')); res.end(); return; }
    res.writeHead(200, { 'content-length': 3 }); // HEAD
    res.end();
  });
  t.after(f.close);
  const c = await client(f.port);
  c.socket.write(get('/dp/len'));
  let text = await c.until((s) => s.endsWith('hello'));
  assert.match(text, /^HTTP\/1\.1 200 OK\r\n/);
  assert.match(text, /content-length: 5\r\n/);
  assert.match(text, /connection: keep-alive\r\nkeep-alive: timeout=5\r\n/);
  assert.match(text, /\r\ndate: .+ GMT\r\n/);
  c.socket.write(get('/dp/chunked'));
  text = await c.until((s) => s.endsWith('0\r\n\r\n'));
  assert.match(text, /HTTP\/1\.1 201 Created\r\nx-a: 1\r\nx-a: 2\r\n/);
  assert.ok(text.endsWith('transfer-encoding: chunked\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n'), text);
  c.socket.write('HEAD /dp/head HTTP/1.1\r\nhost: x\r\n\r\n');
  text = await c.until((s) => count(s, 'HTTP/1.1 ') === 3 && s.endsWith('\r\n\r\n'));
  assert.ok(text.endsWith('content-length: 3\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\n\r\n'), 'a HEAD answer has its length and no body');
  assert.equal(c.isClosed(), false);
  // `connection: close` from the caller: answered, then closed
  c.socket.write(get('/dp/len', 'connection: close\r\n'));
  await c.closing;
  assert.match(c.text(), /connection: close\r\n\r\nhello$/);
});

test('a whole answer: head and body as given, header bytes as they came (latin1, as node:http writes them)', async (t) => {
  const f = await front((req, res) => {
    if (req.url === '/dp/big') { res.writeHead(200, { 'content-length': 40_000 }); res.end(Buffer.alloc(40_000, 'b')); return; }
    res.writeHead(200, { 'x-name': req.headers['x-name'] as string, 'content-length': 4 });
    res.end(Buffer.from('\u00e9t\u00e9!', 'latin1'));
  });
  t.after(f.close);
  const c = await client(f.port);
  c.socket.write(Buffer.from(get('/dp/one', 'x-name: caf\u00e9\r\n'), 'latin1'));
  let text = await c.until((s) => s.endsWith('\u00e9t\u00e9!'));
  assert.match(text, /\r\nx-name: caf\u00e9\r\n/, 'one byte 0xE9 each way');
  assert.match(text, /content-length: 4\r\n/);
  c.socket.write(get('/dp/big')); // past one buffer's size: head and body written as they are
  text = await c.until((s) => s.endsWith('b'.repeat(40_000)));
  assert.match(text, /HTTP\/1\.1 200 OK\r\ndate: [^\r]+\r\ncontent-length: 40000\r\n/);
});

test('pipelined requests are answered in order, a slow one first; node:http gets its turn after them', async (t) => {
  const f = await front((req, res) => {
    const answer = (): void => { res.writeHead(200, { 'content-length': req.url.length }); res.end(req.url); };
    if (req.url === '/dp/slow') setTimeout(answer, 80);
    else answer();
  });
  t.after(f.close);
  const c = await client(f.port);
  c.socket.write(get('/dp/slow') + get('/dp/fast') + 'POST /other HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nbody' + get('/dp/after'));
  const text = await c.until((s) => s.includes('node:GET /dp/after'));
  const order = [...text.matchAll(/\r\n\r\n(\/dp\/slow|\/dp\/fast|node:POST \/other body|node:GET \/dp\/after)/g)].map((m) => m[1]);
  // once a connection is node:http's it stays there: the last /dp call is node:http's too
  assert.deepEqual(order, ['/dp/slow', '/dp/fast', 'node:POST /other body', 'node:GET /dp/after']);
});

test('a connection handed over paused with its first read put back is served from those bytes on', async (t) => {
  const f = await front((req, res) => {
    void body(req).then((b) => { res.writeHead(200, { 'content-length': req.url.length + b.length }); res.end(req.url + b); });
  }, undefined, true);
  t.after(f.close);
  const c = await client(f.port);
  // the first read: a whole call, and the head of a second one whose body comes later
  c.socket.write(`${get('/dp/one')}POST /dp/two HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\n\r\n`);
  await c.until((s) => s.endsWith('/dp/one'));
  await new Promise((r) => setTimeout(r, 30));
  c.socket.write('body-2');
  await c.until((s) => s.endsWith('/dp/twobody-2'));
  c.socket.write(get('/dp/three') + 'POST /other HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nrest');
  const text = await c.until((s) => s.includes('node:POST /other rest'));
  assert.equal(count(text, 'HTTP/1.1 200 OK'), 4);
  assert.ok(text.indexOf('/dp/three') < text.indexOf('node:POST'));
});

test('request bodies arrive whole, by length or chunked, in pieces', async (t) => {
  const f = await front((req, res) => {
    void body(req).then((b) => { res.writeHead(200, { 'content-length': Buffer.byteLength(b) + 5 }); res.end(`echo:${b}`); });
  });
  t.after(f.close);
  const c = await client(f.port);
  c.socket.write('POST /dp/a HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\nhello');
  await new Promise((r) => setTimeout(r, 30));
  c.socket.write(' world');
  await c.until((s) => s.endsWith('echo:hello world'));
  c.socket.write('POST /dp/b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n');
  await new Promise((r) => setTimeout(r, 30));
  c.socket.write('2\r\nde\r\n0\r\n\r\n');
  await c.until((s) => s.endsWith('echo:abcde'));
});

test('a body that came with its head is read whole at once; one still coming is not waited for to start the call', async (t) => {
  const seen: Array<{ url: string; complete: boolean; whole: string | null }> = [];
  const f = await front((req, res) => {
    const whole = req.takeWhole(1024);
    seen.push({ url: req.url, complete: req.complete, whole: whole && whole.toString() });
    const answer = (b: string): void => { res.writeHead(200, { 'content-length': Buffer.byteLength(b) + 5 }); res.end(`echo:${b}`); };
    if (whole) answer(whole.toString());
    else void body(req).then(answer);
  });
  t.after(f.close);
  const c = await client(f.port);
  // two calls in one write, each with its body: both read whole, both answered, in order
  const post = (path: string, b: string): string => `POST ${path} HTTP/1.1\r\nhost: x\r\ncontent-length: ${b.length}\r\n\r\n${b}`;
  c.socket.write(post('/dp/one', 'first') + post('/dp/two', 'second'));
  await c.until((s) => s.endsWith('echo:second'));
  assert.ok(c.text().indexOf('echo:first') < c.text().indexOf('echo:second'));
  // a body split over reads: the call starts with its head (it could answer 401 at once), the body streams in
  c.socket.write('POST /dp/three HTTP/1.1\r\nhost: x\r\ncontent-length: 8\r\n\r\npart');
  await new Promise((r) => setTimeout(r, 30));
  assert.deepEqual(seen.at(-1), { url: '/dp/three', complete: false, whole: null });
  c.socket.write(' two');
  await c.until((s) => s.endsWith('echo:part two'));
  // over the limit asked for: not taken whole (the caller reads it as a stream, and refuses it there)
  c.socket.write(post('/dp/big', 'x'.repeat(2000)));
  await c.until((s) => s.endsWith(`echo:${'x'.repeat(2000)}`));
  assert.deepEqual(seen.map((x) => [x.url, x.complete, x.whole]), [
    ['/dp/one', true, 'first'], ['/dp/two', true, 'second'], ['/dp/three', false, null], ['/dp/big', true, null],
  ]);
});

test('an answer sent before the body has all come: the rest is dropped and the next call is served', async (t) => {
  let served = 0;
  const f = await front((req, res) => {
    served++;
    if (req.url === '/dp/early') { res.writeHead(413, { 'content-length': 3 }); res.end('big'); return; }
    res.writeHead(200, { 'content-length': 2 });
    res.end('ok');
  });
  t.after(f.close);
  const c = await client(f.port);
  c.socket.write('POST /dp/early HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n' + 'x'.repeat(1000));
  await c.until((s) => s.endsWith('big'));
  c.socket.write('y'.repeat(99_000));
  c.socket.write(get('/dp/next'));
  await c.until((s) => s.endsWith('ok'));
  assert.equal(served, 2, 'the dropped body was not taken for a request');
});

test('the connection goes to node:http with its bytes intact: a first request not served here, HTTP/1.0, Expect', async (t) => {
  const f = await front((_req, res) => { res.writeHead(200, { 'content-length': 3 }); res.end('raw'); });
  t.after(f.close);
  const c = await client(f.port);
  c.socket.write('PUT /v1/things?x=%20y HTTP/1.1\r\nhost: x\r\nX-Mixed-Case: a\r\ncontent-length: 5\r\n\r\nhel');
  await new Promise((r) => setTimeout(r, 20));
  c.socket.write('lo');
  await c.until((s) => s.endsWith('node:PUT /v1/things?x=%20y hello'));
  const c10 = await client(f.port);
  c10.socket.write('GET /dp/a HTTP/1.0\r\n\r\n');
  await c10.until((s) => s.includes('node:GET /dp/a'));
  const ce = await client(f.port);
  ce.socket.write('POST /dp/a HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n');
  await ce.until((s) => s.includes('100 Continue'));
  ce.socket.write('hi');
  await ce.until((s) => s.includes('node:POST /dp/a hi'));
});

test('a head must complete in time; an idle connection closes; a running call is not cut', async (t) => {
  const f = await front((req, res) => {
    setTimeout(() => { res.writeHead(200, { 'content-length': 4 }); res.end('done'); }, req.url === '/dp/long' ? 600 : 0);
  }, { headersTimeoutMs: 300, idleTimeoutMs: 300 });
  t.after(f.close);
  const slow = await client(f.port);
  slow.socket.write('GET /dp/a HTTP/1.1\r\n');
  const started = Date.now();
  const ticker = setInterval(() => slow.socket.write('x: y\r\n'), 50); // bytes keep coming, the head never ends
  await slow.closing;
  clearInterval(ticker);
  assert.ok(Date.now() - started < 2000, 'closed by the headers timeout');
  assert.match(slow.text(), /^HTTP\/1\.1 408 Request Timeout\r\n/);
  const c = await client(f.port);
  c.socket.write(get('/dp/long'));
  await c.until((s) => s.endsWith('done'), 3000); // 600 ms of silence on a 300 ms idle timeout
  const idleFrom = Date.now();
  await c.closing;
  assert.ok(Date.now() - idleFrom < 2000, 'closed once idle');
});

test('bytes that are not HTTP/1.1 get 400, a head over the limit 431, and the connection closes', async (t) => {
  const f = await front((_req, res) => { res.end(); });
  t.after(f.close);
  const bad = await client(f.port);
  bad.socket.write('GET /dp/a HTTP/1.1\r\nbad header\r\n\r\n');
  await bad.closing;
  assert.match(bad.text(), /^HTTP\/1\.1 400 Bad Request\r\nConnection: close\r\n\r\n$/);
  const big = await client(f.port);
  big.socket.write(`GET /dp/a HTTP/1.1\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`);
  await big.closing;
  assert.match(big.text(), /^HTTP\/1\.1 431 /);
});

test('a caller that leaves mid-answer closes the answer; an unsafe header value is refused before a byte is sent', async (t) => {
  let closedEarly: Promise<boolean> | null = null;
  let refused: unknown = null;
  const f = await front((req, res: H1Response) => {
    if (req.url === '/dp/unsafe') {
      try { res.writeHead(200, { 'x-bad': 'a\r\nset-cookie: evil' }); } catch (err) { refused = err; }
      res.writeHead(500, { 'content-length': 0 });
      res.end();
      return;
    }
    res.writeHead(200, {});
    res.write('first');
    closedEarly = new Promise((r) => res.once('close', () => r(!res.writableFinished)));
  });
  t.after(f.close);
  const c = await client(f.port);
  c.socket.write(get('/dp/unsafe'));
  const text = await c.until((s) => s.includes('HTTP/1.1 500'));
  assert.equal((refused as { code?: string } | null)?.code, 'ERR_INVALID_CHAR');
  assert.doesNotMatch(text, /evil/);
  c.socket.write(get('/dp/stream'));
  await c.until((s) => s.endsWith('5\r\nfirst\r\n'));
  c.socket.destroy();
  assert.equal(await closedEarly, true);
});

test('drain: idle connections close now, a busy one after its answer says connection: close', async (t) => {
  let answer: (() => void) | null = null;
  const f = await front((_req, res) => { answer = () => { res.writeHead(200, { 'content-length': 2 }); res.end('ok'); }; });
  t.after(f.close);
  const idle = await client(f.port);
  const busy = await client(f.port);
  busy.socket.write(get('/dp/a'));
  while (!answer) await new Promise((r) => setTimeout(r, 5));
  f.h1.drain();
  await idle.closing;
  assert.equal(busy.isClosed(), false);
  (answer as () => void)();
  await busy.closing;
  assert.match(busy.text(), /connection: close\r\n\r\nok$/);
});

// (the request object is what the gateway reads: IncomingMessage's header rules)
test('request headers follow node:http: repeated ones joined, single ones keep the first', async (t) => {
  let seen: IncomingMessage['headers'] | null = null;
  const f = await front((req, res) => { seen = req.headers; res.writeHead(204, {}); res.end(); });
  t.after(f.close);
  const c = await client(f.port);
  c.socket.write('GET /dp/h HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer one\r\nauthorization: Bearer two\r\nX-Node-Id: a\r\nx-node-id: b\r\nCookie: a=1\r\ncookie: b=2\r\n\r\n');
  const text = await c.until((s) => s.endsWith('\r\n\r\n'));
  assert.match(text, /^HTTP\/1\.1 204 No Content\r\n/);
  assert.doesNotMatch(text, /transfer-encoding|content-length/, 'a 204 carries no framing');
  assert.deepEqual({ ...(seen as unknown as object) }, { host: 'x', authorization: 'Bearer one', 'x-node-id': 'a, b', cookie: 'a=1; b=2' });
});

test('a chunked body\'s trailers stay with it: they never join the next request\'s head', async (t) => {
  const seen: Array<{ url: string; headers: object }> = [];
  const f = await front((req, res) => {
    seen.push({ url: req.url, headers: { ...req.headers } });
    // answered on the body's end, from inside the parse (node:http's usual pattern)
    req.on('data', () => undefined);
    req.on('end', () => { res.writeHead(200, { 'content-length': 2 }); res.end('ok'); });
  });
  t.after(f.close);
  const c = await client(f.port);
  c.socket.write('POST /dp/a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx-node-id: evil\r\nauthorization: Bearer stolen\r\n\r\n');
  await c.until((s) => count(s, 'ok') === 1);
  c.socket.write(get('/dp/b') + get('/control'));
  await c.until((s) => s.includes('node:GET /control'));
  assert.deepEqual(seen, [
    { url: '/dp/a', headers: { host: 'x', 'transfer-encoding': 'chunked' } },
    { url: '/dp/b', headers: { host: 'x' } },
  ]);
});

test('a body nobody reads yet is held to a bound (the socket is paused), and a late destroy() spares the next call', async (t) => {
  let waiting: H1Request | null = null;
  const f = await front((req, res) => {
    if (req.url === '/dp/wait') { waiting = req; return; } // a call waiting in a queue: its body is not read yet
    res.writeHead(200, { 'content-length': req.url.length });
    res.end(req.url);
    if (req.url === '/dp/late') setTimeout(() => res.destroy(), 50);
  });
  t.after(f.close);
  const c = await client(f.port);
  c.socket.write('POST /dp/wait HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n');
  const chunk = `10000\r\n${'z'.repeat(0x10000)}\r\n`;
  for (let i = 0; i < 128; i++) c.socket.write(chunk); // 8 MiB offered
  await new Promise((r) => setTimeout(r, 300));
  const held = (waiting as H1Request | null)?.readableLength ?? -1;
  assert.ok(held > 0 && held < 1024 * 1024, `held ${held} bytes`);
  const c2 = await client(f.port);
  c2.socket.write(get('/dp/late'));
  await c2.until((s) => s.endsWith('/dp/late'));
  await new Promise((r) => setTimeout(r, 100));
  c2.socket.write(get('/dp/next'));
  await c2.until((s) => s.endsWith('/dp/next'));
});

test('a header named like an Object property is a plain header; a request without Host goes to node:http (400)', async (t) => {
  let seen: IncomingMessage['headers'] | null = null;
  const f = await front((req, res) => { seen = req.headers; res.writeHead(204, {}); res.end(); });
  t.after(f.close);
  const c = await client(f.port);
  c.socket.write('GET /dp/a HTTP/1.1\r\nhost: x\r\nconstructor: a\r\n\r\n');
  await c.until((s) => s.includes('204'));
  assert.equal((seen as unknown as Record<string, unknown>).constructor, 'a');
  const noHost = await client(f.port);
  noHost.socket.write('GET /dp/a HTTP/1.1\r\n\r\n');
  await noHost.until((s) => s.startsWith('HTTP/1.1 400'));
});

test('an answer the caller does not read is cut after the idle timeout (the call ends); a slow reader is not', async (t) => {
  const closedEarly: string[] = [];
  const f = await front((req, res: H1Response) => {
    res.once('close', () => { if (!res.writableFinished) closedEarly.push(req.url); });
    res.writeHead(200, {});
    // an endless answer, written as fast as the caller takes it
    const chunk = Buffer.alloc(64 * 1024, 120);
    const pump = (): void => { while (!res.destroyed && res.write(chunk)); if (!res.destroyed) res.once('drain', pump); };
    pump();
  }, { headersTimeoutMs: 5000, idleTimeoutMs: 300 });
  t.after(f.close);
  // never reads: the kernel's buffers fill, then the answer's bytes queue and stop moving
  const held = await client(f.port);
  held.socket.pause();
  held.socket.write(get('/dp/held'));
  for (const end = Date.now() + 3000; closedEarly.length === 0 && Date.now() < end;) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(closedEarly, ['/dp/held'], 'the answer was cut (the call ended)');
  held.socket.resume(); // a paused socket sees its end only once it reads again
  await held.closing;
  // reads 64 KiB every 100 ms: slow, but its answer moves, for 1.5 s (five idle timeouts)
  const slow = await client(f.port);
  slow.socket.write(get('/dp/slow'));
  const tick = setInterval(() => { slow.socket.resume(); setTimeout(() => slow.socket.pause(), 5); }, 100);
  await new Promise((r) => setTimeout(r, 1500));
  clearInterval(tick);
  assert.equal(slow.isClosed(), false, 'the slow reader still has its answer');
  assert.deepEqual(closedEarly, ['/dp/held']);
  slow.socket.destroy();
});
