"""uvicorn's command line, with the listening socket fixed so that connections get TCP_NODELAY.

With --workers N, uvicorn 0.17.6 (Debian bookworm's python3-uvicorn; still open upstream as
issue #3149) binds the listener itself with `socket.socket(family=...)`, leaving `proto` at 0.
Accepted sockets inherit it, and asyncio only sets TCP_NODELAY when `proto == IPPROTO_TCP`,
so Nagle stays on: h11 writes the headers and the body separately, and every keep-alive
request after the first waits ~40 ms for the client's delayed ACK. The single-process path
(no --workers) is not affected.

This wrapper re-labels the bound socket as IPPROTO_TCP (the kernel's own value), which the
workers inherit through multiprocessing, and then runs uvicorn's usual CLI unchanged:

    python3 bench/apps/uvicorn_nodelay.py --workers 2 --host 127.0.0.1 --port PORT \
        --app-dir bench/apps fastapi_app:app
"""
import socket
import sys

import uvicorn.config
import uvicorn.main

_bind_socket = uvicorn.config.Config.bind_socket


def _bind_socket_tcp(self):
    sock = _bind_socket(self)
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    return sock


uvicorn.config.Config.bind_socket = _bind_socket_tcp

if __name__ == "__main__":
    sys.exit(uvicorn.main.main())
