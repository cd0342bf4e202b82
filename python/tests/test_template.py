"""berth_worker in template mode: restore once, fork instances on request over the control
socket (JSON lines), report their exits; refuse to fork a state that is not fork-safe."""

import json
import os
import signal
import socket
import tempfile
import time
import unittest

from tests import support
from tests.support import OK


def _line(sock: socket.socket, timeout: float = 20.0) -> dict:
    sock.settimeout(timeout)
    buf = b""
    while not buf.endswith(b"\n"):
        data = sock.recv(1)
        if not data:
            raise ConnectionError(f"closed after {buf!r}")
        buf += data
    return json.loads(buf)


class Template:
    """A template worker and the connections Berth would hold to it."""

    def __init__(self, test: unittest.TestCase, directory: str, blob: str, code: str, inputs, outputs):
        self.worker = support.WorkerProcess(directory, blob, code, inputs=inputs, outputs=outputs, mode="template")
        test.addCleanup(self.worker.stop)
        self.control = self.worker.socket_path
        deadline = time.monotonic() + 20
        while not os.path.exists(self.control):
            if self.worker.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.worker.read_log())
            time.sleep(0.02)
        self.watch = socket.socket(socket.AF_UNIX)
        self.watch.connect(self.control)
        self.watch.sendall(b'{"op":"watch"}\n')
        self.state = _line(self.watch)
        test.addCleanup(self.watch.close)

    def fork(self, sock_path: str):
        err = socket.socket(socket.AF_UNIX)
        err.connect(self.control)
        err.sendall(b'{"op":"hold"}\n')
        token = _line(err)["held"]
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(self.control)
        conn.sendall(json.dumps({"op": "fork", "socket": sock_path, "stderr": token}).encode() + b"\n")
        reply = _line(conn)
        if "pid" not in reply:
            return reply, conn, err
        conn.sendall(b"go\n")
        bound = _line(conn)
        assert bound == {"bound": True}, bound
        return reply, conn, err


class ForkTest(unittest.TestCase):
    CELLS = ["import os, random\ncounter = 0\nx = 0\n", "counter += x\nprint('out', counter)\nimport sys\nprint('err', counter, file=sys.stderr)\nout = {'count': counter, 'pid': os.getpid(), 'r': random.random()}\n"]

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        rc, _, _, stderr, cls.blob = support.make_checkpoint(cls.CELLS, cls._tmp.name)
        assert rc == 0, stderr

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_forks_diverge_log_apart_and_their_exits_are_reported(self):
        t = Template(self, self._tmp.name, self.blob, self.CELLS[-1], [{"name": "x", "type": "int"}], [{"name": "out", "type": "dict"}])
        self.assertEqual(t.state["state"], "ready", t.worker.read_log())
        sockets = support.short_temp_dir()
        forks = []
        for i in range(2):
            path = os.path.join(sockets, f"i{i}", "w.sock")
            reply, conn, err = t.fork(path)
            self.addCleanup(conn.close)
            self.addCleanup(err.close)
            forks.append((reply["pid"], support.Connection(path), conn, err))
        answers = []
        for pid, client, _, _ in forks:
            self.assertEqual(client.ping()["pid"], pid, "the pong names the forked process")
            for _ in range(2):
                kind, body = client.execute({"x": 1})
                self.assertEqual(kind, OK, body)
                answers.append(body["output"]["out"])
            client.close()
        self.assertEqual([a["count"] for a in answers], [1, 2, 1, 2], "each fork counts on its own")
        self.assertNotEqual(answers[0]["r"], answers[2]["r"], "random is re-seeded per fork")
        # exits are reported on the watch connection, with the signal
        pid, _, conn, err = forks[0]
        os.kill(pid, signal.SIGKILL)
        self.assertEqual(_line(t.watch), {"exit": pid, "code": None, "signal": "SIGKILL"})
        pid, _, conn2, err2 = forks[1]
        os.kill(pid, signal.SIGTERM)
        self.assertEqual(_line(t.watch), {"exit": pid, "code": 0, "signal": None})
        # stdout and stderr came on their own connections
        conn2.settimeout(5)
        err2.settimeout(5)
        out = b"".join(iter(lambda: conn2.recv(4096), b""))
        errs = b"".join(iter(lambda: err2.recv(4096), b""))
        self.assertIn(b"out 1\nout 2\n", out)
        self.assertNotIn(b"err 1", out)
        self.assertIn(b"err 1\nerr 2\n", errs)
        self.assertIn(b"SIGTERM received; exiting", errs)


class UnsafeTest(unittest.TestCase):
    CELLS = [
        "class Poller:\n    def __init__(self):\n        self.start()\n    def start(self):\n"
        "        import threading, time\n        self.t = threading.Thread(target=time.sleep, args=(60,), name='poller', daemon=True)\n"
        "        self.t.start()\n    def __getstate__(self):\n        return {}\n    def __setstate__(self, state):\n        self.start()\n"
        "poller = Poller()\nx = 0\n",
        "out = x\n",
    ]

    def test_a_thread_started_by_the_restore_makes_it_unsafe_and_forks_are_refused(self):
        with tempfile.TemporaryDirectory() as d:
            rc, _, _, stderr, blob = support.make_checkpoint(self.CELLS, d)
            self.assertEqual(rc, 0, stderr)
            t = Template(self, d, blob, self.CELLS[-1], [{"name": "x", "type": "int"}], [{"name": "out", "type": "int"}])
            self.assertEqual(t.state["state"], "unsafe")
            self.assertIn("poller", t.state["reasons"][0])
            reply, conn, err = t.fork(os.path.join(support.short_temp_dir(), "w.sock"))
            conn.close()
            err.close()
            self.assertIn("unsafe", reply["error"])


if __name__ == "__main__":
    unittest.main()
