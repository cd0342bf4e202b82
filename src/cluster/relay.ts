// Control-API requests relayed, as they are, to the process that answers them: a gateway
// worker relays to its primary's unix socket; a follower Berth server (src/peers/) to the
// leader's URL. The caller's token travels unchanged and is checked where the request is
// answered; only connection-level headers are dropped.
import { request as httpRequest, Agent, METHODS, type ClientRequest, type IncomingMessage, type ServerResponse, type OutgoingHttpHeaders } from 'node:http';
import { request as httpsRequest, Agent as HttpsAgent } from 'node:https';
import type { ServerHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { controlUnavailable } from '../gateway/data-plane.js';
import { routeNotFound } from '../core/errors.js';
import { keepAliveHintMs, sendError } from '../gateway/http-util.js';

/** Connection-level headers that do not cross the relay (HTTP/2 forbids them). */
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'http2-settings']);

/** Methods HTTP/1.1's parser knows, as they are sent (an HTTP/2 `:method` may be anything); CONNECT would make a tunnel of the socket. */
const RELAYABLE = new Set(METHODS.filter((m) => m !== 'CONNECT'));

/** How long the other side keeps an idle socket of ours, as its answers said (`Keep-Alive: timeout=N`). */
const idleHint = new WeakMap<Duplex, number>();

/** A socket the agent keeps (its `keepSocketAlive`, typed void, says so) times out a second before the other side drops it. */
function keepHinted(kept: unknown, socket: Duplex): boolean {
  const ms = idleHint.get(socket);
  if (kept && ms !== undefined) (socket as Socket).setTimeout(ms); // the agent destroys a free socket that times out
  return Boolean(kept);
}

// Node 20's agents ignore that hint, and a request written as the other side closes its socket is lost
class HintedAgent extends Agent {
  override keepSocketAlive(socket: Duplex): boolean { return keepHinted(super.keepSocketAlive(socket), socket); }
}
class HintedHttpsAgent extends HttpsAgent {
  override keepSocketAlive(socket: Duplex): boolean { return keepHinted(super.keepSocketAlive(socket), socket); }
}

/** Where to relay to, asked per request (a new leader's URL is used at once); null: nobody answers now (503). */
export type RelayTarget = { socketPath: string } | { url: string } | { unavailable: string };

export function relayControl(target: () => RelayTarget): (req: IncomingMessage, res: ServerResponse) => void {
  // no cap on relay sockets: the front door bounds connections, and a capped pool lets a few
  // requests with bodies that never end hold up every other control request (health included)
  const agent = new HintedAgent({ keepAlive: true });
  const tlsAgent = new HintedHttpsAgent({ keepAlive: true });
  return (req, res) => {
    // no route has another method, and the other side could not even parse it (its answer
    // would be a closed socket): answered here as it would be there
    if (!RELAYABLE.has(req.method ?? '')) return void sendError(res, routeNotFound(req.method, req.url));
    const to = target();
    if ('unavailable' in to) return void controlUnavailable(res, to.unavailable);
    const headers: OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(req.headers)) if (!k.startsWith(':') && !HOP.has(k) && v !== undefined) headers[k] = v;
    const authority = req.headers[':authority'];
    if (headers.host === undefined && typeof authority === 'string') headers.host = authority;
    // a body of unknown length (HTTP/1.1 chunked; over HTTP/2, no content-length and the
    // headers did not end the stream) goes on chunked whatever the method: Node's client sends
    // a GET's or DELETE's body raw, and the other side would read those bytes as requests of
    // their own on the shared socket
    const h2 = (req as { stream?: ServerHttp2Stream }).stream;
    const unknownLength = req.headers['content-length'] === undefined && (h2 ? !h2.endAfterHeaders : req.headers['transfer-encoding'] !== undefined);
    if (unknownLength) headers['transfer-encoding'] = 'chunked';
    const bodiless = req.headers['content-length'] === undefined && !unknownLength;
    // a GET or HEAD whose kept-alive socket the other side closed as it was reused (the race
    // every keep-alive client has) was not seen there: it is sent once more
    const resend = bodiless && (req.method === 'GET' || req.method === 'HEAD');
    const onAnswer = (answer: IncomingMessage): void => {
      const hint = keepAliveHintMs(answer.headers['keep-alive']);
      if (hint !== null) idleHint.set(answer.socket, Math.max(hint, 250));
      const out: OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(answer.headers)) if (!HOP.has(k) && v !== undefined) out[k] = v;
      res.writeHead(answer.statusCode ?? 502, out);
      // a streamed answer (a log follow: no length, maybe nothing for a while) shows its headers
      // at once, as it did where it was made; Node holds them back until the first body chunk
      if (answer.headers['content-length'] === undefined) res.flushHeaders();
      answer.pipe(res);
      answer.on('error', () => res.destroy());
      // answered before its whole body went on (a 401 early, say): the rest is not needed there,
      // and this connection is not reused (ending the request on a socket the other side has
      // just closed throws an EPIPE nothing can catch: Node frees the socket at that end)
      answer.once('end', () => {
        if (!up || up.writableFinished) return;
        req.unpipe(up);
        req.resume();
        up.destroy();
      });
    };
    let up: ClientRequest | null = null;
    // a caller gone before its answer leaves nothing half-done on a connection to the other side
    res.once('close', () => { if (!res.writableFinished) up?.destroy(); });
    // the one retry goes on a new connection: another kept-alive one may be as stale
    const send = (retry: boolean): void => {
      if ('socketPath' in to) {
        up = httpRequest({ socketPath: to.socketPath, method: req.method, path: req.url, headers, agent: retry ? agent : false }, onAnswer);
      } else {
        const u = new URL(to.url);
        const options = { host: u.hostname, port: u.port, method: req.method, path: req.url, headers };
        up = u.protocol === 'https:' ? httpsRequest({ ...options, agent: retry ? tlsAgent : false }, onAnswer) : httpRequest({ ...options, agent: retry ? agent : false }, onAnswer);
      }
      const sent = up;
      sent.on('error', (err: NodeJS.ErrnoException) => {
        if (retry && resend && sent.reusedSocket && err.code === 'ECONNRESET' && !res.headersSent && !res.destroyed) return send(false);
        if (!res.headersSent) controlUnavailable(res, err.message);
        else res.destroy();
      });
      if (bodiless) { req.resume(); sent.end(); }
      else {
        sent.flushHeaders(); // answered as soon as it is there (a 401 or 404 before a slow body), as without a relay
        req.pipe(sent);
      }
    };
    send(true);
  };
}
