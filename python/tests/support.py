"""Helpers shared by the tests: running the checkpoint maker and the worker as
subprocesses (exactly as the Node control plane invokes them) and speaking the
worker's framed protocol. Every wait here is bounded."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable  # the tests are run with /usr/bin/python3 (it has dill)

HEADER = struct.Struct(">IB")
EXECUTE, PING = 0x01, 0x02
OK, USER_ERROR, CALL_ERROR, PONG = 0x81, 0x82, 0x83, 0x84


def bootstrap(module: str) -> list[str]:
    """The command line Node uses: python -c "...; import MODULE; MODULE.main()"."""
    code = f"import sys; sys.path.insert(0, {PYTHON_DIR!r}); import {module}; {module}.main()"
    return [PYTHON, "-c", code]


RANDOMIZER_CELLS = [
    "input_data = dict(left_bound=1, right_bound=10)\n",
    """from random import randint
from random import seed

seed()

def generate_value(input_data):
    return dict(generated_value=randint(
        input_data["left_bound"],
        input_data["right_bound"]
    ))

output_data = generate_value(input_data)
print(output_data)
""",
]


def make_checkpoint(cells: list[str], directory: str, serving: int | None = None, timeout: float = 60.0):
    """Run berth_checkpoint on ``cells``; returns (exit code, result dict or
    None, stdout text, stderr text, blob path)."""
    out = os.path.join(directory, f"blob-{time.monotonic_ns()}")
    request = {"cells": cells, "servingCell": len(cells) - 1 if serving is None else serving, "out": out}
    proc = subprocess.run(bootstrap("berth_checkpoint"), input=json.dumps(request).encode(),
                          capture_output=True, timeout=timeout, cwd=directory)
    result = None
    if os.path.exists(out + ".json"):
        with open(out + ".json", encoding="utf-8") as f:
            result = json.load(f)
    return proc.returncode, result, proc.stdout.decode(), proc.stderr.decode(), out


def short_temp_dir() -> str:
    """A fresh directory with a short path: Unix socket paths are limited to
    107 bytes. The caller removes it."""
    return tempfile.mkdtemp(prefix="bw", dir="/tmp")


class Connection:
    """A client connection to a worker's Unix socket."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.rfile = self.sock.makefile("rb")

    def send(self, kind: int, payload: bytes = b"") -> None:
        self.sock.sendall(HEADER.pack(len(payload), kind) + payload)

    def receive(self) -> tuple[int, bytes]:
        header = self.rfile.read(5)
        if len(header) < 5:
            raise ConnectionError("the worker closed the connection")
        length, kind = HEADER.unpack(header)
        payload = self.rfile.read(length)
        if len(payload) < length:
            raise ConnectionError("truncated frame")
        return kind, payload

    def call(self, kind: int, payload: bytes = b"") -> tuple[int, dict | None]:
        self.send(kind, payload)
        kind, payload = self.receive()
        return kind, json.loads(payload.decode("utf-8")) if payload else None

    def ping(self) -> dict:
        kind, body = self.call(PING)
        assert kind == PONG, hex(kind)
        return body

    def execute(self, inputs: dict, **extra) -> tuple[int, dict]:
        return self.call(EXECUTE, json.dumps({**extra, "input": inputs}).encode("utf-8"))

    def close(self) -> None:
        try:
            self.rfile.close()
            self.sock.close()
        except OSError:
            pass


class WorkerProcess:
    """A berth_worker subprocess with its socket, config and log file."""

    def __init__(self, directory: str, checkpoint: str, code: str, inputs=(), outputs=(), requires=(), **extra):
        self.directory = directory
        self.socket_dir = short_temp_dir()
        self.socket_path = os.path.join(self.socket_dir, "w.sock")
        self.config = {
            "socket": self.socket_path, "checkpoint": checkpoint, "code": code,
            "requires": list(requires), "inputs": list(inputs), "outputs": list(outputs), **extra,
        }
        self.log_path = os.path.join(directory, f"worker-{time.monotonic_ns()}.log")
        self.log = open(self.log_path, "wb")
        env = dict(os.environ, BERTH_WORKER_CONFIG=json.dumps(self.config))
        self.proc = subprocess.Popen(bootstrap("berth_worker"), env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory)
        self.connections: list[Connection] = []

    def connect(self, timeout: float = 10.0) -> Connection:
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = Connection(self.socket_path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.read_log()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"worker socket never appeared: {self.read_log()}")
                time.sleep(0.02)
        self.connections.append(conn)
        return conn

    def wait_state(self, conn: Connection, states=("ready", "failed"), timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            pong = conn.ping()
            if pong["state"] in states:
                return pong
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker stuck in {pong}: {self.read_log()}")
            time.sleep(0.02)

    def ready_connection(self) -> Connection:
        conn = self.connect()
        pong = self.wait_state(conn)
        assert pong["state"] == "ready", (pong, self.read_log())
        return conn

    def read_log(self) -> str:
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> None:
        for conn in self.connections:
            conn.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.socket_dir, ignore_errors=True)
