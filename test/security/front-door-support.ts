// Shared by the front-door tests: a real `berth up` started with flags (limits lowered,
// TLS), raw HTTP/1.1 exchanges over TCP or TLS, HTTP/2 requests, and a self-signed
// certificate made with openssl. Everything talks to 127.0.0.1 only.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { connect as h2connect, type ClientHttp2Session, type IncomingHttpHeaders } from 'node:http2';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, PYTHON, tempHome } from '../helpers.js';

export interface Server {
  url: string;
  port: number;
  home: string;
  token: string;
  proc: ChildProcess;
  output: () => string;
  /** null while running. */
  exitCode: () => number | null;
  alive: () => boolean;
  stop: () => Promise<number | null>;
}

/** `berth up --port 0` with extra flags; waits until it listens (http or https). */
export async function startServer(args: string[] = [], env: Record<string, string> = {}, home = tempHome()): Promise<Server> {
  const proc = spawn(CLI[0]!, [...CLI.slice(1), 'up', '--port', '0', '--home', home, ...args], {
    env: { ...process.env, BERTH_HOME: home, BERTH_PYTHON: PYTHON, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stdout!.on('data', (d) => { output += d; });
  proc.stderr!.on('data', (d) => { output += d; });
  const exited = new Promise<number | null>((r) => proc.once('exit', (code, signal) => r(code ?? (signal ? 128 : null))));
  const url = await new Promise<string>((resolveUrl, reject) => {
    // generous: each gateway worker loads the code too, and CI machines are shared
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`berth up did not start in 60s:\n${output}`)); }, 60_000);
    const check = (): void => {
      const m = /listening on (https?:\/\/\S+)/.exec(output);
      if (m) { clearTimeout(timer); resolveUrl(m[1]!); }
    };
    proc.stdout!.on('data', check);
    proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`berth up exited with ${code}:\n${output}`)); });
  });
  const token = readFileSync(join(home, 'admin-token'), 'utf8').trim();
  return {
    url, port: Number(new URL(url).port), home, token, proc,
    output: () => output,
    exitCode: () => proc.exitCode ?? (proc.signalCode ? 128 : null),
    alive: () => proc.exitCode === null && proc.signalCode === null,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 40_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

export interface RawAnswer {
  /** Everything the server sent before closing (or before the bound). */
  data: string;
  status: number | null;
  headers: Record<string, string>;
  body: any;
  /** The server closed the connection (false: we gave up at the bound). */
  closed: boolean;
  ms: number;
}

/** Parses the first HTTP/1.1 response in `data`. */
export function parseResponse(data: string): { status: number | null; headers: Record<string, string>; body: any } {
  const m = /^HTTP\/1\.1 (\d{3})[^\r\n]*\r\n/.exec(data);
  if (!m) return { status: null, headers: {}, body: null };
  const end = data.indexOf('\r\n\r\n');
  const headers: Record<string, string> = {};
  for (const line of data.slice(m[0].length, end).split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0) headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
  }
  let text = data.slice(end + 4);
  if (headers['content-length'] !== undefined) text = text.slice(0, Number(headers['content-length']));
  let body: any = text;
  try { body = JSON.parse(text); } catch { /* not JSON */ }
  return { status: Number(m[1]), headers, body };
}

/**
 * Sends raw bytes over a fresh connection (TLS when `ca` is given), then reads until the
 * server closes or until one complete response has arrived (`untilResponse`), within `boundMs`.
 */
export function rawExchange(port: number, bytes: string | Buffer, opts: { boundMs?: number; ca?: Buffer; untilResponse?: boolean } = {}): Promise<RawAnswer> {
  const boundMs = opts.boundMs ?? 10_000;
  return new Promise((resolve) => {
    const started = Date.now();
    const chunks: Buffer[] = [];
    const socket: Socket = opts.ca
      ? tlsConnect({ host: '127.0.0.1', port, ca: opts.ca, servername: 'localhost', ALPNProtocols: ['http/1.1'] }, () => socket.write(bytes))
      : netConnect(port, '127.0.0.1', () => socket.write(bytes));
    let done = false;
    const finish = (closed: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const data = Buffer.concat(chunks).toString('latin1');
      resolve({ data, ...parseResponse(data), closed, ms: Date.now() - started });
    };
    const timer = setTimeout(() => finish(false), boundMs);
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      if (opts.untilResponse) {
        const p = parseResponse(Buffer.concat(chunks).toString('latin1'));
        const cl = Number(p.headers['content-length'] ?? NaN);
        const data = Buffer.concat(chunks).toString('latin1');
        if (p.status !== null && Number.isFinite(cl) && data.length >= data.indexOf('\r\n\r\n') + 4 + cl) finish(false);
      }
    });
    socket.on('close', () => finish(true));
    socket.on('error', () => finish(true));
  });
}

export interface H2Answer { status: number; headers: IncomingHttpHeaders; body: any; text: string }

/** One HTTP/2 request on `session`, bounded in time. */
export function h2request(session: ClientHttp2Session, headers: Record<string, string>, body?: string | Buffer, boundMs = 10_000): Promise<H2Answer> {
  return new Promise((resolve, reject) => {
    const req = session.request(headers, { endStream: body === undefined });
    const timer = setTimeout(() => { req.close(); reject(new Error(`h2 ${headers[':path']}: no answer within ${boundMs} ms`)); }, boundMs);
    let status = 0;
    let h: IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    req.on('response', (r) => { h = { ...r }; status = Number(r[':status']); });
    req.on('trailers', (t) => { h = { ...h, ...t }; }); // gRPC status comes here on a normal answer
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('end', () => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString('utf8');
      let parsed: any = text;
      try { parsed = JSON.parse(text); } catch { /* not JSON */ }
      resolve({ status, headers: h, body: parsed, text });
    });
    req.on('error', (err) => { clearTimeout(timer); reject(err); });
    if (body !== undefined) req.end(body);
  });
}

export function h2session(url: string, ca?: Buffer): ClientHttp2Session {
  const s = h2connect(url, ca ? { ca, servername: 'localhost' } : {});
  s.on('error', () => undefined);
  return s;
}

/** A self-signed certificate for localhost and 127.0.0.1, made with openssl; returns the file paths. */
export function makeCert(dir: string): { cert: string; key: string; ca: Buffer } {
  const cert = join(dir, 'tls-cert.pem');
  const key = join(dir, 'tls-key.pem');
  const cnf = join(dir, 'openssl.cnf');
  writeFileSync(cnf, [
    '[req]', 'distinguished_name = dn', 'x509_extensions = ext', 'prompt = no',
    '[dn]', 'CN = localhost',
    '[ext]', 'subjectAltName = DNS:localhost,IP:127.0.0.1', 'basicConstraints = critical,CA:TRUE', '',
  ].join('\n'));
  const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-config', cnf],
    { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`openssl failed (is it installed?): ${r.error?.message ?? r.stderr}`);
  return { cert, key, ca: readFileSync(cert) };
}
