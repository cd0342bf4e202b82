"""berth_worker over TCP with the instance secret (issue 13): the port reported in the port
file, the HELLO handshake (no frame answered before it; a wrong or missing secret closes the
connection and is counted), and a checkpoint fetched over HTTP and verified by sha256."""

import hashlib
import http.server
import json
import os
import socket
import threading
import time
import unittest

from tests import support
from tests.support import EXECUTE, OK, PING, PONG
from tests.test_worker import WorkerTestCase

HELLO, WELCOME = 0x03, 0x85
SECRET = "ab" * 32


def _tcp(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return s


def _read_all(s: socket.socket) -> bytes:
    """Everything the worker sends before it closes the connection."""
    data = b""
    while True:
        try:
            chunk = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            return data
        if not chunk:
            return data
        data += chunk


class TcpWorkerTest(WorkerTestCase):
    CELLS = ["n = 0\nx = 0\n", "n += 1\nout = n + x\n"]
    INPUTS = [{"name": "x", "type": "int"}]
    OUTPUTS = [{"name": "out", "type": "int"}]

    def start_tcp(self, **extra):
        port_file = os.path.join(self.dir, f"port-{time.monotonic_ns()}")
        worker = self.start(listen={"tcp": {"host": "127.0.0.1", "port": 0}}, portFile=port_file, secret=SECRET, **extra)
        deadline = time.monotonic() + 20
        while not os.path.exists(port_file):
            self.assertIsNone(worker.proc.poll(), worker.read_log())
            self.assertLess(time.monotonic(), deadline, worker.read_log())
            time.sleep(0.02)
        with open(port_file) as f:
            return worker, int(f.read())

    def hello(self, port: int) -> socket.socket:
        s = _tcp(port)
        s.sendall(support.HEADER.pack(len(SECRET), HELLO) + SECRET.encode())
        self.assertEqual(s.recv(5), support.HEADER.pack(0, WELCOME))
        return s

    def call(self, s: socket.socket, kind: int, payload: bytes = b""):
        s.sendall(support.HEADER.pack(len(payload), kind) + payload)
        f = s.makefile("rb")
        length, got = support.HEADER.unpack(f.read(5))
        return got, json.loads(f.read(length))

    def test_handshake_then_calls(self):
        worker, port = self.start_tcp()
        s = self.hello(port)
        deadline = time.monotonic() + 20
        while True:
            kind, pong = self.call(s, PING)
            self.assertEqual(kind, PONG)
            if pong["state"] != "loading" or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self.assertEqual(pong["state"], "ready", worker.read_log())
        self.assertEqual(pong["refused"], 0)
        kind, body = self.call(s, EXECUTE, json.dumps({"input": {"x": 10}}).encode())
        self.assertEqual((kind, body), (OK, {"output": {"out": 12}}))
        s.close()

    def test_no_or_wrong_secret_is_closed_unanswered(self):
        worker, port = self.start_tcp()
        attempts = [
            support.HEADER.pack(0, PING),  # a request first
            support.HEADER.pack(len(SECRET), HELLO) + ("cd" * 32).encode(),  # wrong secret
            support.HEADER.pack(3, HELLO) + b"abc",  # short secret
            support.HEADER.pack(1 << 30, HELLO),  # absurd length: refused unread
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
        for raw in attempts:
            s = _tcp(port)
            s.sendall(raw)
            self.assertEqual(_read_all(s), b"", raw)
            s.close()
        s = _tcp(port)
        s.shutdown(socket.SHUT_WR)  # nothing at all
        self.assertEqual(_read_all(s), b"")
        s.close()
        # the worker still serves, and counted every refusal (none of them logs the secret)
        s = self.hello(port)
        _, pong = self.call(s, PING)
        self.assertEqual(pong["refused"], len(attempts) + 1)
        s.close()
        self.assertNotIn(SECRET, worker.read_log())
        self.assertNotIn("cd" * 32, worker.read_log())

    def test_unix_socket_with_secret(self):
        worker = self.start(secret=SECRET)
        conn = worker.connect()
        conn.send(HELLO, SECRET.encode())
        self.assertEqual(conn.receive(), (WELCOME, b""))
        pong = worker.wait_state(conn)
        self.assertEqual(pong["state"], "ready")
        raw = worker.connect()
        raw.send(PING)
        with self.assertRaises(ConnectionError):
            raw.receive()


class _Blob(http.server.BaseHTTPRequestHandler):
    blob = b""
    token = ""

    def do_GET(self):  # noqa: N802
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(401)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.blob)))
        self.end_headers()
        self.wfile.write(self.blob)

    def log_message(self, *args):
        pass


class FetchedCheckpointTest(WorkerTestCase):
    CELLS = ["k = 41\n", "out = k + 1\n"]
    OUTPUTS = [{"name": "out", "type": "int"}]

    def serve(self, blob: bytes):
        handler = type("H", (_Blob,), {"blob": blob, "token": SECRET})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.shutdown)
        return f"http://127.0.0.1:{server.server_address[1]}/blob"

    def test_verified_blob_restores(self):
        with open(self.blob, "rb") as f:
            blob = f.read()
        url = self.serve(blob)
        worker = self.start(checkpoint={"url": url, "sha256": hashlib.sha256(blob).hexdigest(), "token": SECRET})
        pong = worker.wait_state(worker.connect())
        self.assertEqual(pong["state"], "ready", worker.read_log())

    def test_tampered_blob_fails_clearly(self):
        with open(self.blob, "rb") as f:
            blob = f.read()
        url = self.serve(blob + b"x")
        worker = self.start(checkpoint={"url": url, "sha256": hashlib.sha256(blob).hexdigest(), "token": SECRET})
        pong = worker.wait_state(worker.connect())
        self.assertEqual(pong["state"], "failed")
        self.assertIn("corrupt", pong["error"])
        self.assertIn("sha256", worker.read_log())

    def test_wrong_token_fails(self):
        url = self.serve(b"")
        worker = self.start(checkpoint={"url": url, "sha256": "0" * 64, "token": "ef" * 32})
        pong = worker.wait_state(worker.connect())
        self.assertEqual(pong["state"], "failed")
        self.assertIn("HTTP 401", pong["error"])


if __name__ == "__main__":
    unittest.main()
