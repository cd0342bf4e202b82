// One port for everything: HTTP/1.1 and cleartext HTTP/2 (h2c with prior knowledge,
// which gRPC clients use), told apart by the connection preface.
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import type { Server as HttpServer } from 'node:http';
import type { Http2Server } from 'node:http2';

const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

export function createFrontDoor(http1: HttpServer, h2: Http2Server): NetServer {
  return createNetServer({ noDelay: true }, (socket: Socket) => {
    let head: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      head = head.length ? Buffer.concat([head, chunk]) : chunk;
      const n = Math.min(head.length, H2_PREFACE.length);
      const isH2 = head.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
      // wait for enough bytes to tell (a preface may arrive in pieces)
      if (isH2 && n < H2_PREFACE.length) return;
      socket.removeListener('data', onData);
      socket.pause();
      socket.unshift(head);
      // both servers take the bytes already read from the socket's buffer first
      (isH2 ? h2 : http1).emit('connection', socket);
      if (!isH2) socket.resume();
    };
    socket.on('data', onData);
    socket.on('error', () => socket.destroy());
  });
}
