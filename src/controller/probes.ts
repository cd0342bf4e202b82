// Health checks for image instances. HTTP counts only the status code; gRPC uses the
// standard grpc.health.v1 service; without a declared check, the port accepting a
// connection is the readiness signal.
import { connect as netConnect } from 'node:net';
import { connect as h2connect, constants as h2c } from 'node:http2';
import { request } from 'undici';
import type { Endpoint } from '../worker/protocol.js';

export type ProbeResult = { ok: true } | { ok: false; reason: string };

export async function probeTcp(e: Endpoint, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const socket = e.path ? netConnect(e.path) : netConnect(e.port!, e.host ?? '127.0.0.1');
    const timer = setTimeout(() => { socket.destroy(); resolve({ ok: false, reason: 'connect timed out' }); }, timeoutMs);
    socket.once('connect', () => { clearTimeout(timer); socket.destroy(); resolve({ ok: true }); });
    socket.once('error', (err) => { clearTimeout(timer); resolve({ ok: false, reason: err.message }); });
  });
}

/**
 * Readiness of an image node without a declared health check: the endpoint answers in
 * its protocol. A bare TCP connect is not enough: Docker's port proxy accepts
 * connections before the program inside listens.
 */
export async function probeServing(e: Endpoint, protocol: 'http' | 'http2' | 'grpc', timeoutMs: number): Promise<ProbeResult> {
  if (protocol === 'http') {
    try {
      const res = await request(`http://${e.host ?? '127.0.0.1'}:${e.port}/`, { method: 'GET', signal: AbortSignal.timeout(timeoutMs) });
      await res.body.dump();
      return { ok: true };
    } catch (err) {
      return { ok: false, reason: `the endpoint does not answer HTTP: ${(err as Error).message}` };
    }
  }
  return new Promise((resolve) => {
    const session = h2connect(`http://${e.host ?? '127.0.0.1'}:${e.port}`);
    const done = (r: ProbeResult): void => { clearTimeout(timer); session.destroy(); resolve(r); };
    const timer = setTimeout(() => done({ ok: false, reason: 'the endpoint did not answer HTTP/2 in time' }), timeoutMs);
    session.once('remoteSettings', () => done({ ok: true }));
    session.once('error', (err) => done({ ok: false, reason: `the endpoint does not answer HTTP/2: ${err.message}` }));
    session.once('close', () => done({ ok: false, reason: 'the endpoint closed the HTTP/2 connection' }));
  });
}

export async function probeHttp(e: Endpoint, path: string, timeoutMs: number): Promise<ProbeResult> {
  try {
    const res = await request(`http://${e.host ?? '127.0.0.1'}:${e.port}${path}`, {
      method: 'GET', headersTimeout: timeoutMs, bodyTimeout: timeoutMs, signal: AbortSignal.timeout(timeoutMs),
    });
    await res.body.dump();
    return res.statusCode >= 200 && res.statusCode < 400 ? { ok: true } : { ok: false, reason: `health check answered HTTP ${res.statusCode}` };
  } catch (err) {
    return { ok: false, reason: `health check failed: ${(err as Error).message}` };
  }
}

/** grpc.health.v1.Health/Check by hand: one tiny unary call, no generated code needed. */
export async function probeGrpc(e: Endpoint, service: string, timeoutMs: number): Promise<ProbeResult> {
  const name = Buffer.from(service, 'utf8');
  // HealthCheckRequest { string service = 1 }
  const msg = name.length ? Buffer.concat([Buffer.from([0x0a]), varint(name.length), name]) : Buffer.alloc(0);
  const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, 0]), msg]);
  frame.writeUInt32BE(msg.length, 1);
  return new Promise((resolve) => {
    const session = h2connect(`http://${e.host ?? '127.0.0.1'}:${e.port}`);
    const done = (r: ProbeResult): void => { clearTimeout(timer); session.destroy(); resolve(r); };
    const timer = setTimeout(() => done({ ok: false, reason: 'gRPC health check timed out' }), timeoutMs);
    session.on('error', (err) => done({ ok: false, reason: `gRPC health check failed: ${err.message}` }));
    const stream = session.request({
      [h2c.HTTP2_HEADER_METHOD]: 'POST', [h2c.HTTP2_HEADER_PATH]: '/grpc.health.v1.Health/Check',
      'content-type': 'application/grpc', te: 'trailers',
    });
    const chunks: Buffer[] = [];
    let status: string | undefined;
    stream.on('response', (h) => { if (h['grpc-status'] !== undefined) status = String(h['grpc-status']); });
    stream.on('trailers', (t) => { status = String(t['grpc-status'] ?? status); });
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('error', (err) => done({ ok: false, reason: `gRPC health check failed: ${err.message}` }));
    stream.on('end', () => {
      if (status !== '0') return done({ ok: false, reason: `gRPC health check answered status ${status}` });
      const body = Buffer.concat(chunks).subarray(5);
      // HealthCheckResponse { ServingStatus status = 1 }: 1 = SERVING
      const serving = body.length >= 2 && body[0] === 0x08 && body[1] === 0x01;
      done(serving ? { ok: true } : { ok: false, reason: 'gRPC health service says NOT_SERVING' });
    });
    stream.end(frame);
  });
}

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) { out.push((n & 0x7f) | 0x80); n >>>= 7; }
  out.push(n);
  return Buffer.from(out);
}
