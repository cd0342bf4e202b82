// Issue 7, "the front door cannot be crashed or starved": one test per attack, each
// asserting the refusal, that the server still serves (health and a call on a real cell
// node) and that nothing changed. A real `berth up` with its limits lowered by flags;
// raw sockets and node:http2 against 127.0.0.1 only; every loop bounded.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { connect as netConnect, type Socket } from 'node:net';
import { spawnSync } from 'node:child_process';
import { Agent, fetch as undiciFetch } from 'undici';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { CLI, removeHome, tempHome } from '../helpers.js';
import { LAB_CELLS, LAB_NODE } from '../fixtures.js';
import { PROTO_DIR } from '../../src/gateway/grpc/protos.js';
import { startServer, rawExchange, h2request, h2session, makeCert, type Server } from './front-door-support.js';

const HEADERS_TIMEOUT_S = 2;
const IDLE_TIMEOUT_S = 3;
const MAX_CONNECTIONS = 200;

/** fetch against a server, with its token unless told otherwise; `ca` for a self-signed https one. */
async function call(s: Server, method: string, path: string, body?: unknown, headers: Record<string, string> = {}, ca?: Buffer): Promise<{ status: number; body: any; headers: Headers }> {
  const init = {
    method,
    headers: { authorization: `Bearer ${s.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  };
  const res = ca
    ? await undiciFetch(s.url + path, { ...init, dispatcher: new Agent({ connect: { ca } }) }) as unknown as Response
    : await fetch(s.url + path, init);
  const text = await res.text();
  let parsed: any = text;
  try { parsed = JSON.parse(text); } catch { /* text */ }
  return { status: res.status, body: parsed, headers: res.headers };
}

async function makeLabNode(s: Server, ca?: Buffer): Promise<string> {
  const ck = await call(s, 'POST', '/v1/checkpoints', { cells: LAB_CELLS, name: 'lab' }, {}, ca);
  assert.equal(ck.status, 201, JSON.stringify(ck.body));
  const n = await call(s, 'POST', '/v1/nodes', { ...LAB_NODE, name: 'lab', checkpointId: 'lab', timeout: 30 }, {}, ca);
  assert.equal(n.status, 201, JSON.stringify(n.body));
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if ((await call(s, 'GET', `/v1/nodes/${n.body.id}`, undefined, {}, ca)).body.status === 'Healthy') return n.body.id;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('lab node not Healthy in 60 s');
}

/** NodeService/Execute through grpc-js (h2c, or TLS with `ca`), on the main port. */
async function grpcExecute(s: Server, nodeId: string, mode: string, arg: string | number, ca?: Buffer): Promise<any> {
  const def = protoLoader.loadSync('yandex/cloud/datasphere/v1/node_service.proto', { includeDirs: [PROTO_DIR], keepCase: true, oneofs: true, enums: String });
  const pkg: any = grpc.loadPackageDefinition(def);
  const client = new pkg.yandex.cloud.datasphere.v1.NodeService(`127.0.0.1:${s.port}`, ca ? grpc.credentials.createSsl(ca) : grpc.credentials.createInsecure());
  try {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${s.token}`);
    const value = typeof arg === 'number' ? { numberValue: arg } : { stringValue: arg };
    const res: any = await new Promise((resolve, reject) => client.Execute(
      { folder_id: 'default', node_id: nodeId, input: { fields: { mode: { stringValue: mode }, arg: value } } }, md,
      { deadline: Date.now() + 30_000 }, (err: Error | null, out: unknown) => (err ? reject(err) : resolve(out))));
    const r = res.output.fields.result;
    return r.stringValue ?? r.numberValue;
  } finally { client.close(); }
}

/** grpc.health.v1.Health/Check with an empty request, over a raw h2 session: one short stream. */
const HEALTH_CHECK = { ':method': 'POST', ':path': '/grpc.health.v1.Health/Check', 'content-type': 'application/grpc', te: 'trailers' };

function execBody(arg: unknown, mode = 'echo'): { folder_id: string; input: { mode: string; arg: unknown } } {
  return { folder_id: 'default', input: { mode, arg } };
}

/** The server is alive, answers health, and a real cell call. */
async function assertServing(s: Server, nodeId: string, ca?: Buffer): Promise<void> {
  assert.ok(s.alive(), `berth up exited (${s.exitCode()}):\n${s.output().slice(-3000)}`);
  const h = await call(s, 'GET', '/v1/health', undefined, {}, ca);
  assert.equal(h.status, 200);
  const r = await call(s, 'POST', `/datasphere/v1/nodes/${nodeId}:execute`, execBody('still-here'), {}, ca);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.deepEqual(r.body.output, { result: 'still-here' });
}

const req = (method: string, target: string, extra = ''): string => `${method} ${target} HTTP/1.1\r\nhost: x\r\n${extra}connection: close\r\n\r\n`;
const post = (target: string, body: string, extra = ''): string =>
  `POST ${target} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${extra}connection: close\r\n\r\n${body}`;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('front door (limits lowered by flags)', () => {
  let s: Server;
  let lab: string;

  before(async () => {
    s = await startServer(['--max-connections', String(MAX_CONNECTIONS), '--headers-timeout', String(HEADERS_TIMEOUT_S), '--idle-timeout', String(IDLE_TIMEOUT_S)],
      { BERTH_FAULTS: '1' });
    lab = await makeLabNode(s);
  });
  after(async () => {
    if (!s) return;
    const code = await s.stop();
    assert.equal(code, 0, `berth up did not stop cleanly:\n${s.output().slice(-3000)}`);
    removeHome(s.home);
  });

  test('malformed percent-encoding anywhere is 400 INVALID_PATH, over HTTP/1.1 and h2, and the process lives on', async () => {
    const targets = [
      '/datasphere/v1/nodes/%E0%A4%A:execute', // the crash
      '/datasphere/v1/aliases/%ZZ:execute',
      '/datasphere/v1/nodes/%FF:execute', // well-formed, not UTF-8
      `/datasphere/v1/nodes/${'%'}:execute`,
      '/v1/nodes/%E0%A4%A',
      '/v1/health?x=%G1',
    ];
    for (const t of targets) {
      const r = await rawExchange(s.port, post(t, JSON.stringify(execBody(1)), `authorization: Bearer ${s.token}\r\n`));
      assert.equal(r.status, 400, `${t}: ${r.data}`);
      assert.equal(r.body.code, 'INVALID_PATH', t);
      assert.equal(r.body.details.field, 'path');
      // no token at all: still refused the same way, never a crash
      const anon = await rawExchange(s.port, post(t, '{}'));
      assert.equal(anon.status, 400, `${t}: ${anon.data}`);
    }
    const session = h2session(s.url);
    try {
      for (const t of ['/datasphere/v1/nodes/%E0%A4%A:execute', '/yandex.cloud.datasphere.v1.NodeService/%ZZ']) {
        const r = await h2request(session, { ':method': 'POST', ':path': t, 'content-type': 'application/json' }, '{}');
        assert.equal(r.status, 400, `${t}: ${r.text}`);
        assert.equal(r.body.code, 'INVALID_PATH');
      }
      // a gRPC caller gets the refusal in gRPC terms
      const g = await h2request(session, { ':method': 'POST', ':path': '/yandex.cloud.datasphere.v1.NodeService/Exec%E0ute', 'content-type': 'application/grpc', te: 'trailers' }, Buffer.alloc(5));
      assert.equal(g.headers['grpc-status'], '3');
      assert.equal(g.headers['berth-error-code'], 'INVALID_PATH');
    } finally { session.close(); }
    await assertServing(s, lab);
  });

  test('percent-encoded, dot-segment, doubled-slash and absolute-form targets get the same checks: no token, no secrets, nothing changed', async () => {
    assert.equal((await call(s, 'POST', '/v1/secrets', { name: 'fd-secret', value: 'do-not-leak' })).status, 201);
    const spellings = ['/%761/secrets', '/v1/secret%73', '/%76%31/%73ecrets', '/v1/./secrets', '/x/../v1/secrets', '/v1/%2e%2e/v1/secrets', '//v1//secrets', 'http://x/v1/secrets', 'HTTPS://x:1/v1/secrets'];
    for (const t of spellings) {
      const list = await rawExchange(s.port, req('GET', t));
      assert.ok(list.status === 401 || list.status === 404, `GET ${t} with no token: ${list.data}`);
      assert.doesNotMatch(list.data, /fd-secret/);
      const del = await rawExchange(s.port, req('DELETE', t.replace(/secrets$/, 'secrets/fd-secret')));
      assert.ok(del.status === 401 || del.status === 404, `DELETE ${t} with no token: ${del.data}`);
    }
    // the same spellings with a token reach the real route: the path was made canonical, not refused
    for (const t of ['/%761/secrets', '/x/../v1/secrets', '//v1//secrets', 'http://x/v1/secrets']) {
      const r = await rawExchange(s.port, req('GET', t, `authorization: Bearer ${s.token}\r\n`));
      assert.equal(r.status, 200, `${t}: ${r.data}`);
      assert.ok(r.body.secrets.some((x: any) => x.name === 'fd-secret'), t);
    }
    // nothing changed
    const after = await call(s, 'GET', '/v1/secrets');
    assert.ok(after.body.secrets.some((x: any) => x.name === 'fd-secret'), 'the secret survived every attempt');
    // a dot-segment cannot climb out of the data plane into the control API either
    const climb = await rawExchange(s.port, post(`/datasphere/v1/nodes/${lab}/../../../../v1/secrets`, '{"name":"evil","value":"x"}'));
    assert.ok(climb.status === 401 || climb.status === 404, climb.data);
    assert.ok(!(await call(s, 'GET', '/v1/secrets')).body.secrets.some((x: any) => x.name === 'evil'));
    await assertServing(s, lab);
  });

  test('an unexpected throw in any handler is 500 INTERNAL with a request id and no internal detail; the detail is in the log', async () => {
    const seen: string[] = [];
    const check = (status: number, body: any, header: string | undefined, raw: string): void => {
      assert.equal(status, 500, raw);
      assert.equal(body.code, 'INTERNAL');
      assert.match(body.details.requestId, /^[0-9a-f-]{36}$/);
      assert.equal(header, body.details.requestId, 'x-request-id carries the same id');
      assert.equal(body.details.reason, undefined);
      assert.doesNotMatch(raw, /internal\/detail|TypeError|RangeError|at .*\.ts/);
      seen.push(body.details.requestId);
    };
    // HTTP/1.1: a synchronous throw and a rejected promise in the dispatcher, and one inside fastify
    for (const fault of ['throw', 'reject', 'control-api']) {
      const path = fault === 'control-api' ? '/v1/health' : `/datasphere/v1/nodes/${lab}:execute`;
      const r = await rawExchange(s.port, post(path, JSON.stringify(execBody(1)), `x-berth-fault: ${fault}\r\n`));
      check(r.status!, r.body, r.headers['x-request-id'], r.data);
    }
    // h2: the same, plain and gRPC
    const session = h2session(s.url);
    try {
      for (const fault of ['throw', 'reject']) {
        const r = await h2request(session, { ':method': 'POST', ':path': `/datasphere/v1/nodes/${lab}:execute`, 'x-berth-fault': fault, 'content-type': 'application/json' }, '{}');
        check(r.status, r.body, r.headers['x-request-id'] as string, r.text);
      }
      const g = await h2request(session, { ':method': 'POST', ':path': '/yandex.cloud.datasphere.v1.NodeService/Execute', 'content-type': 'application/grpc', te: 'trailers', 'x-berth-fault': 'throw' }, Buffer.alloc(5));
      assert.equal(g.headers['grpc-status'], '13');
      assert.equal(g.headers['berth-error-code'], 'INTERNAL');
      assert.doesNotMatch(String(g.headers['grpc-message']), /internal\/detail|TypeError/);
      seen.push(String(g.headers['x-request-id']));
    } finally { session.close(); }
    // each id has one JSON line in the server log, with the detail the caller did not get
    await sleep(100);
    const lines = s.output().split('\n').filter((l) => l.startsWith('{') && l.includes('"internal_error"')).map((l) => JSON.parse(l));
    for (const id of seen) {
      const line = lines.find((l) => l.requestId === id);
      assert.ok(line, `no log line for request ${id}`);
      assert.match(line.error, /injected fault: \/internal\/detail/);
    }
    await assertServing(s, lab);
  });

  test('a socket that sends nothing, a slow-loris and an idle h2 session are closed by the header timeout', async () => {
    const bound = (HEADERS_TIMEOUT_S + 4) * 1000;
    // nothing at all
    const silent = await rawExchange(s.port, Buffer.alloc(0), { boundMs: bound });
    assert.ok(silent.closed, `a silent socket was still open after ${bound} ms`);
    assert.ok(silent.ms >= HEADERS_TIMEOUT_S * 1000 - 200, `closed too early (${silent.ms} ms)`);
    // slow-loris: a header byte every 250 ms, never finishing
    const loris = await new Promise<{ closed: boolean; ms: number; data: string }>((resolve) => {
      const started = Date.now();
      const sock = netConnect(s.port, '127.0.0.1');
      const head = `GET /v1/health HTTP/1.1\r\nhost: x\r\nx-slow: ${'a'.repeat(500)}`;
      let i = 0;
      let data = '';
      const tick = setInterval(() => { if (i < head.length) sock.write(head[i++]!); }, 250);
      const give = setTimeout(() => { clearInterval(tick); sock.destroy(); resolve({ closed: false, ms: Date.now() - started, data }); }, bound);
      sock.on('data', (d) => { data += d; });
      sock.on('error', () => undefined);
      sock.on('close', () => { clearInterval(tick); clearTimeout(give); resolve({ closed: true, ms: Date.now() - started, data }); });
    });
    assert.ok(loris.closed, 'the slow-loris was still connected');
    assert.ok(loris.data === '' || loris.data.startsWith('HTTP/1.1 408'), loris.data);
    // h2: the preface and SETTINGS, then nothing
    const h2idle = await rawExchange(s.port, Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]), { boundMs: bound });
    assert.ok(h2idle.closed, 'an h2 session with no stream was still open');
    // a half preface, byte by byte, never finishing: the sniffing has the same deadline
    const half = await rawExchange(s.port, 'PRI * HTTP/2.0\r\n', { boundMs: bound });
    assert.ok(half.closed, 'a half h2 preface was still open');
    await assertServing(s, lab);
  });

  test('idle keep-alive connections, idle h2 sessions and stalled request bodies are closed by the idle timeout', async () => {
    const bound = (IDLE_TIMEOUT_S + 4) * 1000;
    // HTTP/1.1 keep-alive after one answered request
    const ka = await rawExchange(s.port, 'GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n', { boundMs: bound });
    assert.equal(ka.status, 200);
    assert.ok(ka.closed && ka.ms >= IDLE_TIMEOUT_S * 1000 - 500, `keep-alive idle: closed=${ka.closed} after ${ka.ms} ms`);
    // h2 session: used past the header timeout (not idle that long: kept), then idle (closed)
    const session = h2session(s.url);
    const closed = new Promise<number>((r) => session.once('close', () => r(Date.now())));
    const health = await h2request(session, HEALTH_CHECK, Buffer.alloc(5));
    assert.equal(health.status, 200, health.text);
    assert.equal(health.headers['grpc-status'], '0');
    await sleep(HEADERS_TIMEOUT_S * 1000 + 500);
    assert.equal((await h2request(session, HEALTH_CHECK, Buffer.alloc(5))).status, 200, 'the session was closed before it was idle that long');
    const lastAt = Date.now();
    const closedAt = await Promise.race([closed, sleep(bound).then(() => -1)]);
    assert.ok(closedAt >= 0, 'the idle h2 session was not closed');
    assert.ok(closedAt - lastAt >= IDLE_TIMEOUT_S * 1000 - 500, `closed ${closedAt - lastAt} ms after its last stream`);
    session.destroy();
    // a request body that stops arriving
    const stalled = await rawExchange(s.port, `POST /datasphere/v1/nodes/${lab}:execute HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${s.token}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"folder_id":`, { boundMs: bound });
    assert.ok(stalled.closed, 'a stalled body kept its connection');
    await assertServing(s, lab);
  });

  test('long legitimate calls are not cut: a 7 s cell call over HTTP/1.1 and h2, and a slow but steady upload', async () => {
    const started = Date.now();
    const [h1, h2] = await Promise.all([
      call(s, 'POST', `/datasphere/v1/nodes/${lab}:execute`, execBody(7, 'sleep')),
      grpcExecute(s, lab, 'sleep', 7),
    ]);
    assert.equal(h1.status, 200, JSON.stringify(h1.body));
    assert.equal(h2, 7);
    assert.ok(Date.now() - started >= 7000);
    // an upload taking longer than the header timeout, a byte every 500 ms (never idle)
    const body = JSON.stringify(execBody('slow'));
    const answer = await new Promise<string>((resolve, reject) => {
      const sock: Socket = netConnect(s.port, '127.0.0.1');
      let data = '';
      sock.write(`POST /datasphere/v1/nodes/${lab}:execute HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${s.token}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n`);
      const parts = [body.slice(0, 5), body.slice(5, 10), body.slice(10, 15), body.slice(15, 20), body.slice(20, 25), body.slice(25, 30), body.slice(30)];
      let i = 0;
      const tick = setInterval(() => { if (i < parts.length) sock.write(parts[i++]!); else clearInterval(tick); }, 500);
      const give = setTimeout(() => { clearInterval(tick); sock.destroy(); reject(new Error(`slow upload: no answer: ${data}`)); }, 20_000);
      sock.on('data', (d) => { data += d; });
      sock.on('error', () => undefined);
      sock.on('close', () => { clearInterval(tick); clearTimeout(give); resolve(data); });
    });
    assert.match(answer, /^HTTP\/1\.1 200/, answer);
    await assertServing(s, lab);
  });

  test('a flood of 2,000 idle and slow-loris sockets (10x the cap) leaves normal callers served', async () => {
    const sockets: Socket[] = [];
    const FLOOD = 2000;
    const opened = (i: number): Promise<void> => new Promise((resolve) => {
      const sock = netConnect(s.port, '127.0.0.1', () => {
        if (i % 2 === 0) sock.write('GET /v1/health HTTP/1.1\r\nhost: x\r\nx-slow: '); // a slow-loris, never finished
        resolve();
      });
      sock.on('error', () => resolve());
      sock.on('close', () => resolve());
      sockets.push(sock);
    });
    const normal: Array<{ status: number; ms: number }> = [];
    let flooding = true;
    const caller = (async () => {
      // a normal caller, one call at a time, all through the flood (bounded: 40 calls or 60 s)
      const deadline = Date.now() + 60_000;
      while ((flooding || normal.length < 10) && normal.length < 40 && Date.now() < deadline) {
        const t0 = Date.now();
        const r = await call(s, 'POST', `/datasphere/v1/nodes/${lab}:execute`, execBody(normal.length), { connection: 'close' }).catch(() => ({ status: 0 }));
        normal.push({ status: r.status, ms: Date.now() - t0 });
        await sleep(50);
      }
    })();
    try {
      for (let i = 0; i < FLOOD; i += 100) await Promise.all(Array.from({ length: 100 }, (_, j) => opened(i + j)));
      // and a slow-loris byte now and then on those still open
      for (let round = 0; round < 3; round++) {
        await sleep(500);
        for (const sock of sockets) if (!sock.destroyed) sock.write('a');
      }
    } finally {
      flooding = false;
      await caller;
      for (const sock of sockets) sock.destroy();
    }
    const failed = normal.filter((n) => n.status !== 200);
    assert.ok(normal.length >= 10, `only ${normal.length} normal calls made`);
    assert.equal(failed.length, 0, `normal callers refused during the flood: ${JSON.stringify(failed)}`);
    await assertServing(s, lab);
  });
});

describe('front door: connection cap', () => {
  let s: Server;
  let lab: string;
  before(async () => {
    s = await startServer(['--max-connections', '20', '--headers-timeout', '5', '--idle-timeout', '30']);
    lab = await makeLabNode(s);
  });
  after(async () => {
    if (!s) return;
    await s.stop();
    removeHome(s.home);
  });

  test('when every connection is busy, HTTP/1.1 gets 503 with Retry-After and h2 a GOAWAY; then normal service resumes', async () => {
    // connections busy sending a request body (a request in progress is never evicted), one
    // after the other, until the cap is full of them (the setup's idle keep-alive connections
    // are reclaimed on the way; hogs past the cap are themselves refused)
    const hogs: Socket[] = [];
    for (let i = 0; i < 25; i++) {
      await new Promise<void>((resolve) => {
        const sock = netConnect(s.port, '127.0.0.1', () => {
          sock.write(`POST /v1/secrets HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${s.token}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"name":`);
          setTimeout(resolve, 40);
        });
        sock.on('error', () => resolve());
        hogs.push(sock);
      });
    }
    await sleep(300);
    try {
      // the first probes may still find idle keep-alive connections (the setup's) to reclaim
      let refused = await rawExchange(s.port, req('GET', '/v1/health'));
      for (let i = 0; i < 5 && refused.status === 200; i++) { await sleep(100); refused = await rawExchange(s.port, req('GET', '/v1/health')); }
      assert.equal(refused.status, 503, refused.data);
      assert.equal(refused.headers['retry-after'], '1');
      assert.equal(refused.body.code, 'SERVER_BUSY');
      assert.ok(refused.closed);
      const session = h2session(s.url);
      const goaway = await Promise.race([
        new Promise<number>((r) => session.once('goaway', (code: number) => r(code))),
        sleep(5000).then(() => -1),
      ]);
      session.destroy();
      assert.equal(goaway, 0xb, 'h2 got a GOAWAY (ENHANCE_YOUR_CALM)');
      assert.ok(s.alive());
    } finally {
      for (const h of hogs) h.destroy();
    }
    await sleep(300);
    await assertServing(s, lab);
  });
});

describe('front door: TLS', () => {
  let s: Server;
  let lab: string;
  let ca: Buffer;
  let dir: string;
  before(async () => {
    dir = tempHome();
    const cert = makeCert(dir);
    ca = cert.ca;
    s = await startServer(['--tls-cert', cert.cert, '--tls-key', cert.key]);
    lab = await makeLabNode(s, ca);
  });
  after(async () => {
    if (s) { await s.stop(); removeHome(s.home); }
    removeHome(dir);
  });

  test('HTTPS REST and execute, h2 by ALPN, gRPC with TLS credentials and the CLI with --ca, all on one port', async () => {
    assert.match(s.url, /^https:\/\//);
    await assertServing(s, lab, ca);
    // h2 over TLS (ALPN h2): execute
    const session = h2session(s.url, ca);
    try {
      const r = await h2request(session, HEALTH_CHECK, Buffer.alloc(5));
      assert.equal(r.status, 200, r.text);
      assert.equal(r.headers['grpc-status'], '0');
      assert.equal((session.socket as unknown as { alpnProtocol: string }).alpnProtocol, 'h2');
    } finally { session.close(); }
    // gRPC over TLS, through grpc-js with the CA
    assert.equal(await grpcExecute(s, lab, 'echo', 'grpc-tls', ca), 'grpc-tls');
    // the CLI: --ca trusts the self-signed certificate; without it the certificate is refused
    const env = { ...process.env, BERTH_HOME: s.home, BERTH_URL: s.url, BERTH_TOKEN: s.token, BERTH_CA: '' };
    const ok = spawnSync(CLI[0]!, [...CLI.slice(1), '--ca', `${dir}/tls-cert.pem`, 'status', '--json'], { env, encoding: 'utf8', timeout: 60_000 });
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(JSON.parse(ok.stdout).healthyNodes, 1);
    const viaEnv = spawnSync(CLI[0]!, [...CLI.slice(1), 'node', 'execute', 'lab', '--input', '{"mode":"echo","arg":"cli"}'], { env: { ...env, BERTH_CA: `${dir}/tls-cert.pem` }, encoding: 'utf8', timeout: 60_000 });
    assert.equal(viaEnv.status, 0, viaEnv.stderr);
    assert.match(viaEnv.stdout, /cli/);
    const untrusted = spawnSync(CLI[0]!, [...CLI.slice(1), 'status'], { env, encoding: 'utf8', timeout: 60_000 });
    assert.notEqual(untrusted.status, 0);
    // cleartext HTTP on the TLS port gets no answer
    const plain = await rawExchange(s.port, req('GET', '/v1/health'), { boundMs: 5000 });
    assert.equal(plain.status, null);
    // the front door's protections hold behind TLS too: malformed targets are refused
    const bad = await rawExchange(s.port, req('POST', '/datasphere/v1/nodes/%E0%A4%A:execute'), { ca, boundMs: 5000 });
    assert.equal(bad.status, 400, bad.data);
    assert.equal(bad.body.code, 'INVALID_PATH');
    await assertServing(s, lab, ca);
  });

  test('binding a non-loopback address without TLS prints a loud warning', async () => {
    const w = await startServer(['--host', '0.0.0.0']);
    try {
      assert.match(w.output(), /WARNING: Berth is listening on a non-loopback address WITHOUT TLS/);
    } finally {
      await w.stop();
      removeHome(w.home);
    }
    // and loopback without TLS does not
    assert.doesNotMatch(s.output(), /WARNING/);
  });
});
