// Control-API requests relayed, as they are, to the process that answers them: a gateway
// worker relays to its primary's unix socket; a follower Berth server (src/peers/) to the
// leader's URL. The caller's token travels unchanged and is checked where the request is
// answered; only connection-level headers are dropped.
import { request as httpRequest, Agent, type ClientRequest, type IncomingMessage, type ServerResponse, type OutgoingHttpHeaders } from 'node:http';
import { request as httpsRequest, Agent as HttpsAgent } from 'node:https';
import { controlUnavailable } from '../gateway/data-plane.js';

/** Connection-level headers that do not cross the relay (HTTP/2 forbids them). */
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'http2-settings']);

/** Where to relay to, asked per request (a new leader's URL is used at once); null: nobody answers now (503). */
export type RelayTarget = { socketPath: string } | { url: string } | { unavailable: string };

export function relayControl(target: () => RelayTarget): (req: IncomingMessage, res: ServerResponse) => void {
  // no cap on relay sockets: the front door bounds connections, and a capped pool lets a few
  // requests with bodies that never end hold up every other control request (health included)
  const agent = new Agent({ keepAlive: true });
  const tlsAgent = new HttpsAgent({ keepAlive: true });
  return (req, res) => {
    const to = target();
    if ('unavailable' in to) return void controlUnavailable(res, to.unavailable);
    const headers: OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(req.headers)) if (!k.startsWith(':') && !HOP.has(k) && v !== undefined) headers[k] = v;
    const authority = req.headers[':authority'];
    if (headers.host === undefined && typeof authority === 'string') headers.host = authority;
    const onAnswer = (answer: IncomingMessage): void => {
      const out: OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(answer.headers)) if (!HOP.has(k) && v !== undefined) out[k] = v;
      res.writeHead(answer.statusCode ?? 502, out);
      // a streamed answer (a log follow: no length, maybe nothing for a while) shows its headers
      // at once, as it did where it was made; Node holds them back until the first body chunk
      if (answer.headers['content-length'] === undefined) res.flushHeaders();
      answer.pipe(res);
      answer.on('error', () => res.destroy());
    };
    // a request without a body whose kept-alive socket the other side closed as it was reused
    // (the race every keep-alive client has) was not seen there: it is sent once more
    const bodiless = (req.method === 'GET' || req.method === 'HEAD') && req.headers['content-length'] === undefined && req.headers['transfer-encoding'] === undefined;
    let up: ClientRequest | null = null;
    res.once('close', () => { if (!res.writableFinished) up?.destroy(); });
    const send = (retry: boolean): void => {
      if ('socketPath' in to) {
        up = httpRequest({ socketPath: to.socketPath, method: req.method, path: req.url, headers, agent }, onAnswer);
      } else {
        const u = new URL(to.url);
        const options = { host: u.hostname, port: u.port, method: req.method, path: req.url, headers };
        up = u.protocol === 'https:' ? httpsRequest({ ...options, agent: tlsAgent }, onAnswer) : httpRequest({ ...options, agent }, onAnswer);
      }
      const sent = up;
      sent.on('error', (err: NodeJS.ErrnoException) => {
        if (retry && bodiless && sent.reusedSocket && err.code === 'ECONNRESET' && !res.headersSent && !res.destroyed) return send(false);
        if (!res.headersSent) controlUnavailable(res, err.message);
        else res.destroy();
      });
      if (bodiless) { req.resume(); sent.end(); }
      else req.pipe(sent);
    };
    send(true);
  };
}
