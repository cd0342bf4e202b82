// Front-door fuzz (issue 7): at least 100,000 generated and mutated requests against a
// real `berth up` with a real cell node: HTTP/1.1 over raw sockets (bad targets, percent
// encodings, methods, headers, bodies, content-length lies, chunked garbage, pipelining,
// early closes) and HTTP/2 through node:http2 (odd pseudo-headers and headers, gRPC
// framing lies, resets) plus raw h2 frames. Asserted: zero crashes (the process is alive
// throughout and exits 0 on SIGTERM), zero hangs (every connection and stream is answered
// or closed within a bound), health answering throughout (probed every 500 ms), and no
// 500 INTERNAL nor unhandled rejection in the server log (nor a request relayed by a gateway
// worker that the primary could not parse: logged as internal too). Deterministic: the seed is
// printed; FUZZ_SEED=<n> replays a run. Bounded in count and time; 127.0.0.1 only.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as h2connect, type ClientHttp2Session } from 'node:http2';
import { removeHome } from '../helpers.js';
import { LAB_CELLS, LAB_NODE } from '../fixtures.js';
import { canonicalTarget } from '../../src/gateway/target.js';
import { startServer, type Server } from './front-door-support.js';

const TARGET_REQUESTS = Number(process.env.FUZZ_REQUESTS ?? 100_000);
const MAX_MS = 150_000;          // the whole fuzz loop, whatever the count
const HANG_BOUND_MS = 15_000;    // a connection or stream must be answered or closed within this
const IN_FLIGHT = 96;          // exchanges (connections) in flight at once
const SEED = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));

/** mulberry32: small, fast, deterministic. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

let s: Server;
let lab: string;

async function api(method: string, path: string, body?: unknown): Promise<any> {
  const res = await fetch(s.url + path, {
    method, headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json().catch(() => null) };
}

before(async () => {
  s = await startServer(['--headers-timeout', '4', '--idle-timeout', '5']);
  assert.equal((await api('POST', '/v1/checkpoints', { cells: LAB_CELLS, name: 'lab' })).status, 201);
  const n = await api('POST', '/v1/nodes', { ...LAB_NODE, name: 'lab', checkpointId: 'lab', timeout: 10, scaling: { minInstances: 1, maxInstances: 1 } });
  assert.equal(n.status, 201, JSON.stringify(n.body));
  lab = n.body.id;
  const deadline = Date.now() + 60_000;
  while ((await api('GET', `/v1/nodes/${lab}`)).body.status !== 'Healthy') {
    if (Date.now() > deadline) throw new Error('lab node not Healthy');
    await new Promise((r) => setTimeout(r, 100));
  }
});

after(async () => {
  if (!s) return;
  await s.stop();
  removeHome(s.home);
});

// ---- generators ----

class Gen {
  constructor(readonly r: () => number) {}
  int(n: number): number { return Math.floor(this.r() * n); }
  chance(p: number): boolean { return this.r() < p; }
  pick<T>(xs: readonly T[]): T { return xs[this.int(xs.length)]!; }
  bytes(n: number): Buffer { const b = Buffer.alloc(n); for (let i = 0; i < n; i++) b[i] = this.int(256); return b; }
  ascii(n: number, from = 0x21, to = 0x7e): string { let out = ''; for (let i = 0; i < n; i++) out += String.fromCharCode(from + this.int(to - from + 1)); return out; }
}

const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS', 'TRACE', 'get', 'PRI', 'CONNECT', 'FOO', 'G ET', 'POST\t', ''];
const ESCAPES = ['%', '%Z', '%ZZ', '%E0%A4%A', '%FF', '%C0%AF', '%00', '%2F', '%2f', '%2E%2E', '%2e', '%76', '%25', '%u0041', '%E2%82%AC', '%F0%9F%98%80', '%0A', '%0d%0a', '%3A', '%3F', '%23'];
const SEGMENTS = ['..', '.', '', '%2e%2e', '.%2e', '...', '~', 'v1', 'datasphere', 'nodes', 'aliases', 'secrets', ':execute', 'x:execute', 'a;b', '@', '\\', '..\\..'];

function baseTargets(): string[] {
  return ['/v1/health', '/v1/secrets', '/v1/nodes', `/v1/nodes/${lab}`, `/v1/nodes/${lab}/logs?lines=5`, '/v1/checkpoints', '/v1/aliases', '/v1/tokens',
    '/v1/whoami', '/metrics', '/openapi.json', `/datasphere/v1/nodes/${lab}:execute`, '/datasphere/v1/aliases/nope:execute', '/', '/yandex.cloud.datasphere.v1.NodeService/Execute'];
}

function mutateTarget(g: Gen, t: string): string {
  const rounds = g.int(4);
  for (let i = 0; i < rounds; i++) {
    const at = g.int(t.length + 1);
    switch (g.int(12)) {
      case 0: t = t.slice(0, at) + g.pick(ESCAPES) + t.slice(at); break;
      case 1: { // percent-encode one character
        const c = t.charCodeAt(at) || 0x61;
        t = `${t.slice(0, at)}%${c.toString(16).padStart(2, '0')}${t.slice(at + 1)}`; break;
      }
      case 2: t = t.slice(0, at) + '/' + g.pick(SEGMENTS) + t.slice(at); break;
      case 3: t = t.replace(/\//g, () => (g.chance(0.3) ? '//' : '/')); break;
      case 4: t = `${g.pick(['http', 'https', 'HTTP', 'ftp', 'x'])}://${g.pick(['x', 'localhost:1', '[::1]', '', 'a@b'])}${t}`; break;
      case 5: t = `${t}${t.includes('?') ? '&' : '?'}${g.pick(['a=1', 'a=%', 'a=%ZZ', 'x=%E0%A4%A', 'lines=-1', 'lines=1e9', 'instance=../x', '', '&&', '=='])}`; break;
      case 6: t = `${t}#${g.ascii(3)}`; break;
      case 7: t = t.slice(0, at) + g.ascii(1 + g.int(4)) + t.slice(at); break;
      case 8: t = t.slice(0, at); break;
      case 9: t = t.slice(0, at) + '/..'.repeat(1 + g.int(6)) + t.slice(at); break;
      case 10: t = g.chance(0.5) ? '*' : t.slice(1); break;
      case 11: t = t + 'a'.repeat(g.chance(0.1) ? 8000 : 100); break;
    }
  }
  return t;
}

function jsonBody(g: Gen): string {
  switch (g.int(9)) {
    case 0: return JSON.stringify({ folder_id: 'default', input: { mode: 'echo', arg: g.int(1000) } });
    case 1: return JSON.stringify({ folder_id: g.pick(['default', 'other', '', 1, null]), input: { mode: g.pick(['echo', 'calls', 'raise', 'nope']), arg: g.ascii(5) } });
    case 2: return '['.repeat(2000) + ']'.repeat(2000);
    case 3: return `{"a":${'{"a":'.repeat(200)}1${'}'.repeat(200)}}`;
    case 4: return g.ascii(g.int(200), 0x20, 0x7e);
    case 5: return JSON.stringify({ name: g.ascii(8), value: g.ascii(8) });
    case 6: return '{"folder_id":"default","input":{"mode":"echo","arg":"\\ud800"}}';
    case 7: return '{"__proto__":{"x":1},"constructor":{"prototype":{}}}';
    default: return '';
  }
}

/** Would this request, sent with the admin token, change the server (create, delete)? Those get a bogus token. */
function mutating(method: string, target: string): boolean {
  if (method === 'GET' || method === 'HEAD') return false;
  const c = canonicalTarget(target);
  return !(c.ok && c.target.startsWith('/datasphere/') && method === 'POST');
}

interface H1Req { bytes: Buffer; breaks: boolean }

/** One generated HTTP/1.1 request; `breaks` when it may end the connection (it goes last in a pipeline). */
function h1Request(g: Gen): H1Req {
  let method = g.chance(0.8) ? g.pick(['GET', 'POST', 'DELETE', 'PUT', 'PATCH']) : g.pick(METHODS);
  let target = g.chance(0.85) ? mutateTarget(g, g.pick(baseTargets())) : g.pick(['', ' ', '/\u00e9', '/a b', `/${g.ascii(20)}`, 'http://x', '//', '/%']);
  if (mutating(method, target) && g.chance(0.1)) target = `/datasphere/v1/nodes/${lab}:execute`;
  const version = g.chance(0.97) ? 'HTTP/1.1' : g.pick(['HTTP/1.0', 'HTTP/2.0', 'HTTP/1.2', 'HTTP/9', 'http/1.1', '', 'HTTP/1.1 x']);
  const valid = g.chance(0.5);
  const headers: string[] = [];
  if (!g.chance(0.05)) headers.push('host: 127.0.0.1');
  const token = valid && !mutating(method, target) ? `Bearer ${s.token}` : g.pick(['Bearer nope', 'Bearer ', 'Basic eA==', 'Bearer ' + 'a'.repeat(300), '', `bearer ${s.token.slice(0, -1)}`]);
  if (g.chance(0.9)) headers.push(`authorization: ${token}`);
  if (g.chance(0.15)) headers.push(`x-node-id: ${g.pick([lab, 'nope', '', '%ZZ', lab + '/../x'])}`);
  if (g.chance(0.05)) headers.push(`x-node-alias: ${g.pick(['nope', '', 'a'.repeat(300)])}`);
  if (g.chance(0.1)) headers.push(`x-folder-id: ${g.pick(['default', 'other', ''])}`);
  if (g.chance(0.7)) headers.push(`content-type: ${g.pick(['application/json', 'application/json; charset=utf-8', 'text/plain', 'application/grpc', 'multipart/form-data; boundary=x', '', 'application/x-www-form-urlencoded'])}`);
  if (g.chance(0.05)) headers.push(g.pick(['expect: 100-continue', 'connection: upgrade\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__', 'connection: upgrade\r\nupgrade: websocket', 'x-odd:  \t value', 'accept-encoding: gzip, br', 'te: trailers']));
  let breaks = version !== 'HTTP/1.1' || /[\s]/.test(target) || target === '' || method.includes(' ') || method.includes('\t') || method === '' || method === 'CONNECT' || method === 'PRI';
  if (g.chance(0.02)) { headers.push(g.pick(['no-colon-header', 'x-bad\u0000: 1', ' leading: space', 'x-fold: a\r\n  folded', `x-long: ${'b'.repeat(20_000)}`, 'content-length: 1\r\ncontent-length: 2', 'x: \u00ff'])); breaks = true; }
  let body = method === 'GET' && g.chance(0.9) ? '' : jsonBody(g);
  let framing: string;
  const f = g.int(20);
  if (f < 16) framing = `content-length: ${Buffer.byteLength(body)}`;
  else if (f === 16 || f === 17) { // chunked, sometimes garbage
    if (g.chance(0.6)) { body = `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`; }
    else { body = g.pick(['zz\r\nabc\r\n0\r\n\r\n', '5\r\nab\r\n', '-1\r\n\r\n', 'ffffffffffffffff\r\nx\r\n', `3;ext=${'x'.repeat(100)}\r\nabc\r\n0\r\n\r\n`, '1\r\na\r\n0\r\nx-trailer: 1\r\n\r\n']); breaks = true; }
    framing = 'transfer-encoding: chunked';
  } else if (f === 18) { // a content-length lie
    framing = `content-length: ${g.pick([Buffer.byteLength(body) + 1 + g.int(50), 0, -1, '1e3', '0x10', '99999999999999999999', ' 5', ''])}`;
    breaks = true;
  } else { framing = g.pick(['transfer-encoding: gzip', 'transfer-encoding: chunked, identity', 'content-length: 3\r\ntransfer-encoding: chunked']); breaks = true; }
  headers.push(framing);
  method = method === 'HEAD' && body ? 'POST' : method;
  return { bytes: Buffer.from(`${method} ${target} ${version}\r\n${headers.join('\r\n')}\r\n\r\n${body}`, 'latin1'), breaks };
}

// ---- the exchanges ----

interface Tally { requests: number; answered: number; closedEarly: number; hangs: string[]; statuses: Map<string, number> }

/** A pipeline of HTTP/1.1 requests on one connection, then a half-close: the server must answer and close within the bound. */
function h1Batch(g: Gen, t: Tally): Promise<void> {
  const reqs: H1Req[] = [];
  const n = 1 + g.int(48);
  for (let i = 0; i < n; i++) {
    const r = h1Request(g);
    reqs.push(r);
    if (r.breaks) break;
  }
  const early = g.chance(0.05); // the client goes away mid-request
  const slice = g.int(3); // 0: all at once, 1: in two writes, 2: byte-split at random points
  return new Promise((resolve) => {
    const sock: Socket = netConnect(s.port, '127.0.0.1');
    const payload = Buffer.concat(reqs.map((r) => r.bytes));
    let data = '';
    const timer = setTimeout(() => { t.hangs.push(`h1 batch of ${reqs.length} not closed in ${HANG_BOUND_MS} ms; first: ${reqs[0]!.bytes.subarray(0, 120).toString('latin1')}`); sock.destroy(); }, HANG_BOUND_MS);
    sock.on('connect', () => {
      t.requests += reqs.length;
      if (early) { sock.write(payload.subarray(0, g.int(payload.length))); setTimeout(() => sock.destroy(), g.int(20)); t.closedEarly++; return; }
      if (slice === 0) sock.end(payload);
      else if (slice === 1) { const at = g.int(payload.length); sock.write(payload.subarray(0, at)); setImmediate(() => sock.end(payload.subarray(at))); }
      else { let at = 0; const parts: Buffer[] = []; while (at < payload.length) { const len = 1 + g.int(200); parts.push(payload.subarray(at, at + len)); at += len; } for (const p of parts) sock.write(p); sock.end(); }
    });
    sock.on('data', (d: Buffer) => { if (data.length < 4096) data += d.toString('latin1'); for (const m of d.toString('latin1').matchAll(/HTTP\/1\.[01] (\d{3})/g)) { t.answered++; t.statuses.set(m[1]!, (t.statuses.get(m[1]!) ?? 0) + 1); } });
    sock.on('error', () => undefined);
    sock.on('close', () => { clearTimeout(timer); resolve(); });
  });
}

/** HTTP/2 streams with odd headers and bodies on one session, some reset early. */
async function h2Batch(g: Gen, t: Tally): Promise<void> {
  const session: ClientHttp2Session = h2connect(s.url);
  session.on('error', () => undefined);
  const n = 1 + g.int(60);
  const streams: Promise<void>[] = [];
  for (let i = 0; i < n; i++) {
    const grpcCall = g.chance(0.5);
    const headers: Record<string, string> = {
      ':method': g.chance(0.85) ? 'POST' : g.pick(['GET', 'PUT', 'DELETE', 'OPTIONS', 'FOO']),
      ':path': g.chance(0.7) ? mutateTarget(g, g.pick(['/yandex.cloud.datasphere.v1.NodeService/Execute', '/yandex.cloud.datasphere.v1.NodeService/ExecuteAlias', '/grpc.health.v1.Health/Check', '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo', ...baseTargets()])) : g.pick(['/', '*', '/%', 'x', '/a%ZZ']),
      'content-type': grpcCall ? g.pick(['application/grpc', 'application/grpc+proto', 'application/grpc+json', 'application/grpc;x']) : g.pick(['application/json', 'text/plain']),
    };
    // the control API answers over h2 too: a change it would make gets a bogus token, as over HTTP/1.1
    const isGrpcPath = headers[':path']!.startsWith('/yandex.') || headers[':path']!.startsWith('/grpc.');
    const mayUseAdmin = isGrpcPath || !mutating(headers[':method']!, headers[':path']!);
    if (g.chance(0.7)) headers.authorization = g.chance(0.5) && mayUseAdmin ? `Bearer ${s.token}` : 'Bearer nope';
    if (g.chance(0.5)) headers.te = g.pick(['trailers', 'gzip', '']);
    if (g.chance(0.2)) headers['grpc-timeout'] = g.pick(['1m', '100S', '99999999H', 'x', '-1S', '0n']);
    if (g.chance(0.2)) headers['grpc-encoding'] = g.pick(['gzip', 'deflate', 'br', 'identity', '']);
    if (g.chance(0.15)) headers['x-node-id'] = g.pick([lab, 'nope', '']);
    if (g.chance(0.1)) headers['x-folder-id'] = g.pick(['default', 'other']);
    if (g.chance(0.05)) headers[g.pick(['x-long', 'x-odd'])] = 'v'.repeat(g.chance(0.5) ? 10_000 : 10);
    let body: Buffer;
    if (grpcCall) {
      const msg = g.chance(0.3) ? g.bytes(g.int(64)) : Buffer.from([0x0a, 0x07, ...Buffer.from('default'), 0x12, lab.length, ...Buffer.from(lab)]);
      const head = Buffer.alloc(5);
      head[0] = g.chance(0.1) ? g.int(3) : 0;
      head.writeUInt32BE(g.chance(0.8) ? msg.length : g.int(2 ** 31), 1);
      body = g.chance(0.05) ? head.subarray(0, g.int(5)) : Buffer.concat([head, msg]);
      if (g.chance(0.05)) body = Buffer.concat([body, body]);
    } else body = Buffer.from(jsonBody(g));
    let stream;
    try {
      stream = session.request(headers, { endStream: false });
    } catch { continue; } // headers node:http2 itself will not send
    t.requests++;
    streams.push(new Promise<void>((resolve) => {
      const timer = setTimeout(() => { t.hangs.push(`h2 stream ${headers[':method']} ${headers[':path']} not ended in ${HANG_BOUND_MS} ms`); stream!.close(); resolve(); }, HANG_BOUND_MS);
      stream!.on('response', (h) => { t.answered++; const k = `h2:${h[':status']}`; t.statuses.set(k, (t.statuses.get(k) ?? 0) + 1); });
      stream!.on('error', () => undefined);
      stream!.on('close', () => { clearTimeout(timer); resolve(); });
      stream!.resume();
      if (g.chance(0.05)) { t.closedEarly++; stream!.close(g.pick([0x8, 0x2, 0x0])); return; }
      stream!.end(body);
    }));
  }
  await Promise.all(streams);
  await new Promise<void>((resolve) => { const timer = setTimeout(() => { session.destroy(); resolve(); }, 2000); session.close(() => { clearTimeout(timer); resolve(); }); });
}

/** Raw HTTP/2 frames after a valid preface: bad lengths, types, flags and stream ids. */
function h2Frames(g: Gen, t: Tally): Promise<void> {
  const frames: Buffer[] = [Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])];
  const n = 1 + g.int(8);
  for (let i = 0; i < n; i++) {
    const payload = g.chance(0.2) ? Buffer.alloc(0) : g.bytes(g.int(64));
    const head = Buffer.alloc(9);
    head.writeUIntBE(g.chance(0.9) ? payload.length : g.int(2 ** 24), 0, 3);
    head[3] = g.chance(0.9) ? g.int(10) : g.int(256); // DATA..CONTINUATION, or unknown
    head[4] = g.int(256);
    head.writeUInt32BE(g.pick([0, 1, 3, 2, 2 ** 31 - 1, g.int(2 ** 31)]), 5);
    frames.push(head, payload);
  }
  t.requests++;
  return new Promise((resolve) => {
    const sock = netConnect(s.port, '127.0.0.1', () => sock.end(Buffer.concat(frames)));
    const timer = setTimeout(() => { t.hangs.push(`raw h2 frames: connection not closed in ${HANG_BOUND_MS} ms`); sock.destroy(); }, HANG_BOUND_MS);
    sock.on('data', () => undefined);
    sock.on('error', () => undefined);
    sock.on('close', () => { clearTimeout(timer); resolve(); });
  });
}

test(`front-door fuzz: ${TARGET_REQUESTS} generated requests, no crash, no hang, health throughout`, { timeout: 240_000 }, async () => {
  console.log(`fuzz seed ${SEED} (replay: FUZZ_SEED=${SEED})`);
  const t: Tally = { requests: 0, answered: 0, closedEarly: 0, hangs: [], statuses: new Map() };
  const started = Date.now();
  const healthFailures: string[] = [];
  let probes = 0;
  let running = true;
  const prober = (async () => {
    while (running) {
      await new Promise((r) => setTimeout(r, 500));
      probes++;
      const t0 = Date.now();
      try {
        const res = await fetch(`${s.url}/v1/health`, { signal: AbortSignal.timeout(5000), headers: { connection: 'close' } });
        const body = await res.text();
        if (res.status !== 200) healthFailures.push(`status ${res.status} at ${t0 - started} ms: ${body.slice(0, 300)}`);
      } catch (err) { healthFailures.push(`${(err as Error).message} at ${t0 - started} ms`); }
      if (!s.alive()) { healthFailures.push(`process exited with ${s.exitCode()}`); break; }
    }
  })();
  // a pool of exchanges in flight; exchange i draws from its own generator (SEED, i), so a
  // run replays the same exchanges whatever the scheduling
  let next = 0;
  const workers = Array.from({ length: IN_FLIGHT }, async () => {
    while (t.requests < TARGET_REQUESTS && Date.now() - started < MAX_MS && s.alive()) {
      const i = next++;
      const g = new Gen(prng((SEED ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0));
      const k = g.int(100);
      if (k < 88) await h1Batch(g, t);
      else if (k < 97) await h2Batch(g, t);
      else await h2Frames(g, t);
    }
  });
  await Promise.all(workers);
  running = false;
  await prober;
  const seconds = (Date.now() - started) / 1000;
  const top = [...t.statuses.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([k, v]) => `${k}:${v}`).join(' ');
  console.log(`fuzz: ${t.requests} requests in ${seconds.toFixed(1)} s (${Math.round(t.requests / seconds)}/s), ${t.answered} answered with a status, ${t.closedEarly} closed early by the client; ${probes} health probes; statuses ${top}`);

  assert.ok(s.alive(), `berth up died (exit ${s.exitCode()}), seed ${SEED}:\n${s.output().slice(-4000)}`);
  assert.deepEqual(healthFailures, [], `health failed during the fuzz (seed ${SEED})`);
  assert.deepEqual(t.hangs.slice(0, 5), [], `hangs (seed ${SEED})`);
  assert.ok(t.requests >= TARGET_REQUESTS, `only ${t.requests} requests in ${MAX_MS} ms (seed ${SEED})`);
  // nothing the fuzz sent reached a bug: no INTERNAL, no unhandled rejection in the server log
  const internal = s.output().split('\n').filter((l) => l.includes('"internal_error"') || l.includes('"unhandled_rejection"'));
  assert.deepEqual(internal.slice(0, 5), [], `internal errors logged (seed ${SEED})`);
  // and a real call still works
  const r = await api('POST', `/datasphere/v1/nodes/${lab}:execute`, { folder_id: 'default', input: { mode: 'echo', arg: 'after-fuzz' } });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(await s.stop(), 0, 'berth up exits 0 on SIGTERM after the fuzz');
});
