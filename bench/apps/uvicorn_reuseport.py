"""uvicorn workers that each own a listening socket on the same port (SO_REUSEPORT).

With `uvicorn --workers N` every worker accepts from one shared listening socket; under a
burst of new connections (wrk opens all of its connections at once) the first worker to
wake up can take them all, and the others then sit idle for the whole run. With
SO_REUSEPORT each worker has its own listening socket in one group and the kernel spreads
new connections over them by hash, so every worker gets some. This is the fair setup for
a multi-process uvicorn; bench/cell-node.ts checks each worker's CPU either way.

    python3 bench/apps/uvicorn_reuseport.py --workers 2 --host 127.0.0.1 --port PORT \
        --app-dir bench/apps fastapi_app:app

Each worker runs uvicorn's own Server with --loop uvloop --http httptools, no access log.
The parent only starts the workers and stops them on SIGTERM / SIGINT.
"""
import argparse
import os
import signal
import socket
import sys


def serve(app: str, app_dir: str, host: str, port: int) -> None:
    import uvicorn

    sys.path.insert(0, app_dir)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    config = uvicorn.Config(app, loop="uvloop", http="httptools", access_log=False, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--app-dir", default=".")
    p.add_argument("app")
    a = p.parse_args()
    children = []
    for _ in range(a.workers):
        pid = os.fork()
        if pid == 0:
            serve(a.app, a.app_dir, a.host, a.port)
            os._exit(0)
        children.append(pid)

    def stop(signum, _frame):
        for c in children:
            try:
                os.kill(c, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for c in children:
        while True:
            try:
                os.waitpid(c, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break


if __name__ == "__main__":
    main()
