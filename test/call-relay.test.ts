// The relay between gateway workers (src/cluster/call-relay.ts), over a real unix socket: calls
// multiplexed on one connection and answered out of order, each answer to its own call; the three
// kinds of answer that are not the instance's frame (a call that could not start, one that failed
// once it had an instance, a mirror call that found no free session); a home that is not there
// (the call was not delivered: it may go elsewhere) and one that dies during a call (it may have
// run); a frame over the limit closes the connection. Image-node calls go to the home as HTTP/2
// streams on the same socket: both kinds on one home at once, a home not there, one that dies
// mid-stream. The end-to-end behaviour with real gateway workers is in
// test/gateway-relay.test.ts (cell nodes) and test/gateway-workers.test.ts (image nodes).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { connect } from 'node:net';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { RelayClient, RelayServer, type RunHere, type ServeStream } from '../src/cluster/call-relay.js';
import { NO_FREE_SESSION, RELAY_UNREACHABLE } from '../src/gateway/routing-table.js';
import { DeadlineWheel } from '../src/gateway/deadlines.js';
import { RequestBody, isUnreachable, type UpstreamRequest } from '../src/gateway/upstream.js';
import { BerthError } from '../src/core/errors.js';
import { FRAME, type Frame } from '../src/worker/protocol.js';

/** A home that answers every stream by echoing its path, a header and its body. */
const echoStreams: ServeStream = async (stream, headers) => {
  const chunks: Buffer[] = [];
  await new Promise<void>((resolve) => { stream.on('data', (c) => chunks.push(c)); stream.once('end', resolve); });
  stream.respond({ ':status': 200, 'x-path': String(headers[':path']), 'x-node': String(headers['x-node']) }, { waitForTrailers: true });
  stream.once('wantTrailers', () => stream.sendTrailers({ 'x-bytes': String(Buffer.concat(chunks).length) }));
  stream.end(Buffer.concat(chunks));
};

const wheel = new DeadlineWheel();
function streamCall(path: string, body: string | null, node = 'n'): UpstreamRequest {
  return {
    method: 'POST', path, headers: { 'x-node': node }, body: body === null ? null : new RequestBody(Readable.from([Buffer.from(body)])),
    signal: wheel.start(10_000, () => undefined), headersTimeoutMs: 10_000, idleTimeoutMs: Infinity,
  };
}

async function withRelay(runHere: RunHere, fn: (client: RelayClient, server: RelayServer) => Promise<void>, limit = 1 << 20, serveStream: ServeStream = echoStreams): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'berth-relay-'));
  const server = new RelayServer(join(dir, 'gateway-1.sock'), limit, runHere, serveStream);
  await server.listen();
  const client = new RelayClient(server.path, limit);
  try {
    await fn(client, server);
  } finally {
    client.close();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const ok = (text: string): Frame => ({ type: FRAME.OK, payload: Buffer.from(text) });

test('calls on one connection are answered out of order, each with its own answer; the socket is 0600', async () => {
  const seen: Array<{ nodeId: string; sticky: string | undefined; onlyIfFree: boolean; payload: string }> = [];
  await withRelay(async (nodeId, payload, sticky, onlyIfFree) => {
    seen.push({ nodeId, sticky, onlyIfFree, payload: payload.toString() });
    const n = Number(payload.toString());
    await new Promise((r) => setTimeout(r, (20 - n) * 3)); // later calls answer first
    return ok(`answer ${n} from ${nodeId}`);
  }, async (client, server) => {
    assert.equal(statSync(server.path).mode & 0o777, 0o600);
    const answers = await Promise.all(Array.from({ length: 20 }, (_, n) =>
      client.call(n % 2 ? 'node-ä' : 'node-b', Buffer.from(String(n)), n === 3 ? 'user-7' : undefined, n === 5)));
    answers.forEach((a, n) => {
      assert.ok(!(a instanceof BerthError));
      assert.equal((a as Frame).type, FRAME.OK);
      assert.equal((a as Frame).payload.toString(), `answer ${n} from ${n % 2 ? 'node-ä' : 'node-b'}`);
    });
    assert.equal(client.sent, 20);
    assert.equal(server.served, 20);
    assert.equal(server.inFlight, 0);
    const third = seen.find((s) => s.payload === '3')!;
    assert.equal(third.sticky, 'user-7');
    assert.equal(seen.find((s) => s.payload === '4')!.sticky, undefined);
    assert.equal(seen.find((s) => s.payload === '5')!.onlyIfFree, true);
    assert.equal(third.onlyIfFree, false);
  });
});

test('a call that could not start rejects; one that failed at the instance is an answer; a mirror call without a free session is skipped', async () => {
  await withRelay(async (_nodeId, payload) => {
    switch (payload.toString()) {
      case 'full': throw new BerthError('NODE_UNAVAILABLE', 'at capacity', { nodeId: 'n', queueSize: 1 }, { 'retry-after': '1' });
      case 'timeout': return new BerthError('CALL_TIMEOUT', 'too slow', { nodeId: 'n', timeoutSeconds: 1 });
      case 'busy': throw NO_FREE_SESSION;
      case 'bug': throw new Error('a bug in the home');
      default: return { type: FRAME.USER_ERROR, payload: Buffer.from('{"error_name":"ValueError"}') };
    }
  }, async (client) => {
    const refused = await client.call('n', Buffer.from('full'), undefined, false).then(() => null, (e: unknown) => e);
    assert.ok(refused instanceof BerthError);
    assert.equal(refused.code, 'NODE_UNAVAILABLE');
    assert.deepEqual(refused.details, { nodeId: 'n', queueSize: 1 });
    assert.deepEqual(refused.headers, { 'retry-after': '1' });

    const failed = await client.call('n', Buffer.from('timeout'), undefined, false);
    assert.ok(failed instanceof BerthError, 'resolved with the error: an instance had the call');
    assert.equal(failed.code, 'CALL_TIMEOUT');

    await assert.rejects(client.call('n', Buffer.from('busy'), undefined, true), (e: unknown) => e === NO_FREE_SESSION);
    await assert.rejects(client.call('n', Buffer.from('bug'), undefined, false), (e: unknown) => e instanceof BerthError && e.code === 'INTERNAL');

    const userError = await client.call('n', Buffer.from('raise'), undefined, false) as Frame;
    assert.equal(userError.type, FRAME.USER_ERROR, 'the instance\'s own frames pass as they are');
  });
});

test('a home that is not there: the call was not delivered (RELAY_UNREACHABLE)', async () => {
  const client = new RelayClient(join(tmpdir(), `berth-relay-missing-${process.pid}.sock`), 1 << 20);
  await assert.rejects(client.call('n', Buffer.from('x'), undefined, false), (e: unknown) => e === RELAY_UNREACHABLE);
  // and again: a new connection is tried for the next call
  await assert.rejects(client.call('n', Buffer.from('x'), undefined, false), (e: unknown) => e === RELAY_UNREACHABLE);
});

test('a home that goes away during a call: the call may have run, it is answered INSTANCE_FAILED', async () => {
  let release: () => void = () => undefined;
  await withRelay(() => new Promise<Frame>((resolve) => { release = () => resolve(ok('late')); }), async (client, server) => {
    const running = client.call('n', Buffer.from('x'), undefined, false);
    while (server.inFlight === 0) await new Promise((r) => setTimeout(r, 5));
    server.close();
    const answer = await running;
    assert.ok(answer instanceof BerthError);
    assert.equal(answer.code, 'INSTANCE_FAILED');
    release();
  });
});

test('a frame over the limit closes the connection instead of being buffered', async () => {
  let ran = 0;
  await withRelay(async () => { ran++; return ok('x'); }, async (client) => {
    const small = await client.call('n', Buffer.from('fits'), undefined, false) as Frame;
    assert.equal(small.payload.toString(), 'x');
    const big = await client.call('n', Buffer.alloc(2048, 1), undefined, false).then((a) => a, (e: unknown) => e);
    assert.ok(big instanceof BerthError && big.code === 'INSTANCE_FAILED', `the connection was closed: ${String(big)}`);
    assert.equal(ran, 1, 'the oversized call never ran');
  }, 1024);
});

test('a malformed CALL (too short for its own fields) closes that connection; the home keeps serving', async () => {
  await withRelay(async () => ok('fine'), async (client, server) => {
    const closed = await new Promise<boolean>((resolve) => {
      const s = connect(server.path);
      s.on('error', () => undefined);
      s.on('close', () => resolve(true));
      // [u32 length 1][type CALL][u32 id 7][one byte: not even the node id's length]
      s.write(Buffer.from([0, 0, 0, 1, 0x01, 0, 0, 0, 7, 0xff]));
      setTimeout(() => { s.destroy(); resolve(false); }, 2000);
    });
    assert.ok(closed, 'the home closed the connection');
    const answer = await client.call('n', Buffer.from('x'), undefined, false) as Frame;
    assert.equal(answer.payload.toString(), 'fine');
  });
});

test('image-node calls go to the same home as HTTP/2 streams, beside the frames: each with its own answer and trailers', async () => {
  await withRelay(async (_nodeId, payload) => ok(`frame ${payload.toString()}`), async (client, server) => {
    const [frames, streams] = await Promise.all([
      Promise.all(Array.from({ length: 10 }, (_, n) => client.call('n', Buffer.from(String(n)), undefined, false))),
      Promise.all(Array.from({ length: 10 }, async (_, n) => {
        const res = await client.request(streamCall(`/call/${n}`, `body ${n}`, `node-${n}`));
        const body = await new Promise<string>((resolve, reject) => {
          const chunks: Buffer[] = [];
          res.body.on('data', (c) => chunks.push(c));
          res.body.once('end', () => resolve(Buffer.concat(chunks).toString()));
          res.body.once('error', reject);
        });
        return { status: res.status, path: res.headers['x-path'], node: res.headers['x-node'], body, trailers: await res.trailers };
      })),
    ]);
    frames.forEach((f, n) => assert.equal((f as Frame).payload.toString(), `frame ${n}`));
    streams.forEach((r, n) => {
      assert.equal(r.status, 200);
      assert.equal(r.path, `/call/${n}`);
      assert.equal(r.node, `node-${n}`);
      assert.equal(r.body, `body ${n}`);
      assert.equal(r.trailers['x-bytes'], String(`body ${n}`.length));
    });
    assert.equal(client.sent, 20);
    assert.equal(server.served, 20);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(server.inFlight, 0);
    assert.equal(client.waiting, 0);
  });
});

test('a stream to a home that is not there is unreachable (not delivered); one whose home dies mid-call is not', async () => {
  const missing = new RelayClient(join(tmpdir(), `berth-relay-missing-${process.pid}.sock`), 1 << 20);
  const err = await missing.request(streamCall('/x', null)).then(() => null, (e: unknown) => e);
  assert.ok(isUnreachable(err), `unreachable: ${String(err)}`);
  missing.close();

  await withRelay(async () => ok('x'), async (client, server) => {
    const running = client.request(streamCall('/x', null)).then(() => null, (e: unknown) => e);
    while (server.inFlight === 0) await new Promise((r) => setTimeout(r, 5));
    server.close();
    const died = await running;
    assert.ok(died instanceof Error, 'the call failed');
    assert.ok(!isUnreachable(died), `a call the home had may have run: not unreachable (${String(died)})`);
  }, 1 << 20, () => new Promise(() => undefined));
});
