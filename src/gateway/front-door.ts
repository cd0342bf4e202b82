// One port for everything: HTTP/1.1 and HTTP/2 (h2c with prior knowledge, which gRPC
// clients use; over TLS, h2 by ALPN), told apart by the connection preface, optionally
// behind TLS. HTTP/1.1 connections start at the raw front (h1-front.ts), which serves
// data-plane calls off the socket and hands the rest to node:http. This is also where
// connections are bounded, so a caller that connects and sends nothing (or a byte a
// second) cannot hold a file descriptor for long. HTTP/2 connections go to the gateway's
// own server side (h2/server.ts), which applies the h2 timeouts below itself.
//   - from accept until the first request head (HTTP/1.1) or the first stream (h2), a
//     deadline of `headersTimeoutMs` (the TLS handshake and the preface sniffing count);
//     each later HTTP/1.1 request head has the same (Node's headersTimeout);
//   - a connection with no request running and no traffic (HTTP/1.1 keep-alive, an h2
//     session without streams), or a request body that stops arriving, is closed after
//     `idleTimeoutMs`; a call that is running (a 60 s cell call, SSE, a gRPC stream) is
//     never cut by these: its own timeouts apply;
//   - at most `maxConnections` are open. At the cap, a connection that has not sent a full
//     request yet is dropped first (oldest first) and then idle ones are reclaimed, so a
//     flood of idle or slow sockets cannot keep prompt callers out; only when every
//     connection is busy is the newcomer refused: HTTP/1.1 gets 503 with Retry-After, h2
//     a GOAWAY.
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import { BerthError } from '../core/errors.js';
import { H1Front, type H1Handler, type H1Request } from './h1-front.js';
import { H2Front, type H2FrontOptions } from './h2/server.js';
import { PREFACE as H2_PREFACE } from './h2/frames.js';

/** Sockets being refused at most, beyond the cap; past that they are closed without a word. */
const REFUSAL_SLACK = 256;
/** How long a refused connection may take to show its protocol and read the answer. */
const REFUSAL_LINGER_MS = 2000;

export interface FrontDoorOptions {
  maxConnections: number;
  headersTimeoutMs: number;
  idleTimeoutMs: number;
  /** PEM certificate chain and key: TLS on the same port (HTTPS, h2 by ALPN, gRPC). */
  tls: { cert: Buffer | string; key: Buffer | string } | null;
  /** Which HTTP/1.1 requests the raw front serves itself (data-plane calls); the rest go to `http1`. */
  claim(req: H1Request): H1Handler | null;
}

export interface FrontDoorStats { open: number; refused: number; evicted: number }

export interface FrontDoor {
  server: NetServer;
  /** HTTP/1.1 connections while they carry data-plane calls (h1-front.ts). */
  h1: H1Front;
  /** HTTP/2 connections (h2/server.ts). */
  h2: H2Front;
  stats(): FrontDoorStats;
}

/** One accepted connection, until it has sent its first full request. */
interface Conn { raw: Socket; deadline: NodeJS.Timeout | null }

const CONN = Symbol('berth.frontDoorConn');
type Tagged = { [CONN]?: Conn };

export function createFrontDoor(http1: HttpServer, serveH2: H2FrontOptions['onStream'], opts: FrontDoorOptions): FrontDoor {
  let open = 0;
  let refusing = 0;
  const counters = { refused: 0, evicted: 0 };
  /** Connections that have not completed a request yet, oldest first (a Set keeps insertion order). */
  const waiting = new Set<Conn>();
  /** HTTP/1.1 connections handed to the http server (to see which ones closeIdleConnections ended). */
  const http1Sockets = new Set<Socket>();

  const settled = (conn: Conn | undefined): void => {
    if (!conn || !waiting.delete(conn)) return;
    if (conn.deadline) { clearTimeout(conn.deadline); conn.deadline = null; }
  };

  // ---- HTTP/1.1: Node's own header timeout, keep-alive idle, and a body idle timeout ----
  http1.headersTimeout = opts.headersTimeoutMs;
  http1.requestTimeout = 0; // a long upload or call is not cut as a whole; idleness is
  http1.keepAliveTimeout = opts.idleTimeoutMs;
  // Node checks headersTimeout only for servers that emitted 'listening'; this one never
  // listens itself (the front door does), so start that tracking here
  http1.emit('listening');
  http1.prependListener('request', (req: IncomingMessage, res: ServerResponse) => {
    settled((req.socket as Tagged)[CONN]);
    const h = req.headers;
    const hasBody = h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0');
    if (!hasBody) return;
    // a body that stops arriving for idleTimeoutMs: the socket is closed (Node destroys it on 'timeout')
    const socket = req.socket;
    socket.setTimeout(opts.idleTimeoutMs);
    req.once('end', () => { if (!res.writableFinished && !socket.destroyed) socket.setTimeout(0); });
  });

  // ---- h2: the session closes itself when it has had no stream for the idle timeout; a request body that stops, likewise
  const h2 = new H2Front({
    headersTimeoutMs: opts.headersTimeoutMs, idleTimeoutMs: opts.idleTimeoutMs,
    onRequest: (socket) => settled((socket as Tagged)[CONN]), onStream: serveH2,
  });

  /** node:http takes an HTTP/1.1 connection over, the bytes it has not parsed back in the socket's buffer. */
  const toHttp1 = (plain: Socket): void => {
    http1Sockets.add(plain);
    plain.once('close', () => http1Sockets.delete(plain));
    http1.emit('connection', plain);
    plain.resume();
  };
  const h1 = new H1Front({
    headersTimeoutMs: opts.headersTimeoutMs, idleTimeoutMs: opts.idleTimeoutMs, claim: opts.claim,
    onRequest: (socket) => settled((socket as Tagged)[CONN]), handOff: toHttp1,
  });

  /** Refuses or hands over a connection whose protocol is now known. */
  const dispatch = (conn: Conn, plain: Socket, isH2: boolean, refused: boolean): void => {
    if (refused) return refuse(plain, isH2);
    (plain as Tagged)[CONN] = conn;
    // the h2 server takes the bytes already read back from the socket's buffer first
    if (isH2) h2.accept(plain);
    else h1.accept(plain);
  };

  /** Reads until the bytes say HTTP/2 preface or not, then dispatches. */
  const sniff = (conn: Conn, plain: Socket, refused: boolean): void => {
    let head: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      head = head.length ? Buffer.concat([head, chunk]) : chunk;
      const n = Math.min(head.length, H2_PREFACE.length);
      const isH2 = head.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
      // wait for enough bytes to tell (a preface may arrive in pieces)
      if (isH2 && n < H2_PREFACE.length) return;
      plain.removeListener('data', onData);
      plain.pause();
      plain.unshift(head);
      dispatch(conn, plain, isH2, refused);
    };
    plain.on('data', onData);
  };

  // TLS: a tls.Server that never listens does the handshake (ALPN h2, http/1.1) on sockets handed to it
  const tlsServer = opts.tls ? createTlsServer({
    cert: opts.tls.cert, key: opts.tls.key, ALPNProtocols: ['h2', 'http/1.1'], handshakeTimeout: opts.headersTimeoutMs,
  }) : null;
  const TLS_STATE = Symbol('berth.tlsState');
  type TlsState = { conn: Conn; refused: boolean };
  if (tlsServer) {
    tlsServer.on('secureConnection', (t: TLSSocket) => {
      const state = (t as unknown as { _parent?: Socket & { [TLS_STATE]?: TlsState } })._parent?.[TLS_STATE];
      if (!state) { t.destroy(); return; }
      t.on('error', () => t.destroy());
      if (t.alpnProtocol === 'h2') dispatch(state.conn, t, true, state.refused);
      else sniff(state.conn, t, state.refused);
    });
    tlsServer.on('tlsClientError', (_err, t) => t.destroy());
  }

  /** At the cap: drop the oldest connection that has not sent a request, else reclaim idle ones. */
  const makeRoom = (): boolean => {
    const oldest = waiting.values().next();
    if (!oldest.done) {
      settled(oldest.value);
      counters.evicted++;
      oldest.value.raw.destroy();
      return true;
    }
    let reclaimed = h2.closeIdle(1) > 0;
    if (!reclaimed) {
      // HTTP/1.1 keep-alive connections between requests (closeIdleConnections destroys them at once)
      if (h1.closeIdle() > 0) reclaimed = true;
      http1.closeIdleConnections();
      for (const s of http1Sockets) if (s.destroyed) { http1Sockets.delete(s); reclaimed = true; }
    }
    return reclaimed;
  };

  const server = createNetServer({ noDelay: true }, (socket: Socket) => {
    socket.on('error', () => socket.destroy());
    let refused = false;
    if (open >= opts.maxConnections && !makeRoom()) {
      if (refusing >= REFUSAL_SLACK) { counters.refused++; socket.destroy(); return; }
      refused = true;
    }
    if (refused) {
      refusing++;
      counters.refused++;
      socket.once('close', () => { refusing--; });
    } else {
      open++;
      socket.once('close', () => { open--; });
    }
    const conn: Conn = { raw: socket, deadline: null };
    // the deadline for the first full request: handshake, preface and head included
    conn.deadline = setTimeout(() => { waiting.delete(conn); socket.destroy(); }, refused ? REFUSAL_LINGER_MS : opts.headersTimeoutMs);
    conn.deadline.unref();
    socket.once('close', () => settled(conn));
    if (!refused) waiting.add(conn);
    else socket.once('close', () => { if (conn.deadline) clearTimeout(conn.deadline); });
    if (tlsServer) {
      (socket as Socket & { [TLS_STATE]?: TlsState })[TLS_STATE] = { conn, refused };
      tlsServer.emit('connection', socket);
    } else {
      sniff(conn, socket, refused);
    }
  });

  return { server, h1, h2, stats: () => ({ open, refused: counters.refused, evicted: counters.evicted }) };
}

/**
 * The refusal of a connection over the cap, in its own protocol: HTTP/1.1 gets a 503 with
 * Retry-After and the connection closed; HTTP/2 gets the server preface (SETTINGS) and a
 * GOAWAY with last-stream-id 0 (nothing was processed: safe to retry).
 */
function refuse(socket: Socket, isH2: boolean): void {
  if (isH2) {
    const debug = Buffer.from('berth: too many connections, retry later');
    const goaway = Buffer.alloc(9 + 8 + debug.length);
    goaway.writeUIntBE(8 + debug.length, 0, 3);
    goaway[3] = 0x7; // GOAWAY
    goaway.writeUInt32BE(0, 5); // stream 0
    goaway.writeUInt32BE(0, 9); // last stream id
    goaway.writeUInt32BE(0xb, 13); // ENHANCE_YOUR_CALM
    debug.copy(goaway, 17);
    socket.write(Buffer.concat([Buffer.from([0, 0, 0, 0x4, 0, 0, 0, 0, 0]), goaway]));
  } else {
    const body = JSON.stringify(new BerthError('SERVER_BUSY', 'too many open connections; retry later', { retryAfterSeconds: 1 }).toJSON());
    socket.write(`HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n${body}`);
  }
  // half-close and keep reading what the client still sends, so it reads the answer instead of a reset
  socket.end();
  socket.resume();
}
