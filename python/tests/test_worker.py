"""berth_worker end to end: a worker subprocess spoken to over its Unix socket
with the framed protocol, as the Node gateway does."""

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest

from tests import support
from tests.support import CALL_ERROR, EXECUTE, OK, USER_ERROR


class WorkerTestCase(unittest.TestCase):
    """One checkpoint per class (made in setUpClass), one worker per test."""

    CELLS: list = []
    OUTPUTS: list = []
    INPUTS: list = []

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.dir = cls._tmp.name
        if cls.CELLS:
            rc, result, _, stderr, cls.blob = support.make_checkpoint(cls.CELLS, cls.dir)
            assert rc == 0, stderr
            cls.requires = result["requires"]

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def start(self, code=None, inputs=None, outputs=None, requires=None, checkpoint=None, **extra):
        worker = support.WorkerProcess(
            self.dir, checkpoint or self.blob, self.CELLS[-1] if code is None else code,
            inputs=self.INPUTS if inputs is None else inputs,
            outputs=self.OUTPUTS if outputs is None else outputs,
            requires=self.requires if requires is None else requires, **extra)
        self.addCleanup(worker.stop)
        return worker


class RandomizerTest(WorkerTestCase):
    CELLS = support.RANDOMIZER_CELLS
    INPUTS = [{"name": "input_data", "type": "dict"}]
    OUTPUTS = [{"name": "output_data", "type": "dict"}]

    def test_ping_and_execute(self):
        worker = self.start()
        conn = worker.connect()
        pong = worker.wait_state(conn)
        self.assertEqual(pong, {"state": "ready", "error": None, "pid": worker.proc.pid})

        request = {"folder_id": "x", "input": {"input_data": {"left_bound": 1, "right_bound": 10}}}
        conn.send(EXECUTE, json.dumps(request).encode())
        kind, payload = conn.receive()
        self.assertEqual(kind, OK)
        body = json.loads(payload)
        self.assertEqual(list(body), ["output"])
        value = body["output"]["output_data"]["generated_value"]
        self.assertTrue(1 <= value <= 10)
        # Exact encoding: compact separators.
        self.assertEqual(payload, b'{"output":{"output_data":{"generated_value":%d}}}' % value)

        # Many calls on one connection; values stay in bounds and vary.
        seen = set()
        for _ in range(200):
            kind, body = conn.execute({"input_data": {"left_bound": 5, "right_bound": 7}})
            self.assertEqual(kind, OK, body)
            seen.add(body["output"]["output_data"]["generated_value"])
        self.assertTrue(seen <= {5, 6, 7} and len(seen) > 1, seen)

        # The cell's print() reaches the instance log after the call (flushed).
        deadline = time.monotonic() + 5
        while "{'generated_value': " not in worker.read_log() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = worker.read_log()
        self.assertIn("{'generated_value': ", log)
        self.assertIn("[berth] ready in", log)

    def test_client_disconnects_do_not_kill_the_worker(self):
        worker = self.start()
        worker.ready_connection()
        request = json.dumps({"input": {"input_data": {"left_bound": 1, "right_bound": 2}}}).encode()
        for _ in range(5):
            conn = worker.connect()
            conn.send(EXECUTE, request)  # then hang up without reading the answer
            conn.close()
        conn = worker.connect()
        conn.sock.sendall(support.HEADER.pack(100, EXECUTE) + b"0123456789")  # truncated frame
        conn.close()
        conn = worker.connect()
        conn.sock.sendall(b"\x00\x00")  # truncated header
        conn.close()
        conn = worker.connect()
        self.assertEqual(conn.ping()["state"], "ready")
        kind, body = conn.execute({"input_data": {"left_bound": 3, "right_bound": 3}})
        self.assertEqual((kind, body), (OK, {"output": {"output_data": {"generated_value": 3}}}))
        self.assertIsNone(worker.proc.poll())

    def test_unknown_frame_type(self):
        worker = self.start()
        conn = worker.ready_connection()
        kind, body = conn.call(0x07)
        self.assertEqual(kind, CALL_ERROR)
        self.assertEqual(body["code"], "PROTOCOL_ERROR")
        self.assertEqual(worker.connect().ping()["state"], "ready")

    def test_sigterm_exits_0_and_removes_the_socket(self):
        worker = self.start()
        worker.ready_connection()
        worker.proc.send_signal(signal.SIGTERM)
        self.assertEqual(worker.proc.wait(10), 0)
        self.assertFalse(os.path.exists(worker.socket_path))

    def test_worker_dies_with_its_parent(self):
        socket_dir = support.short_temp_dir()
        self.addCleanup(shutil.rmtree, socket_dir, True)
        socket_path = os.path.join(socket_dir, "w.sock")
        env = dict(os.environ, BERTH_WORKER_CONFIG=json.dumps({
            "socket": socket_path, "checkpoint": self.blob, "code": self.CELLS[-1], "requires": [],
            "inputs": self.INPUTS, "outputs": self.OUTPUTS}))
        parent_code = ("import subprocess, sys, time\n"
                       f"p = subprocess.Popen({support.bootstrap('berth_worker')!r}, stdout=subprocess.DEVNULL, "
                       "stderr=subprocess.DEVNULL)\n"
                       "print(p.pid, flush=True)\ntime.sleep(60)\n")
        parent = subprocess.Popen([support.PYTHON, "-c", parent_code], env=env, stdout=subprocess.PIPE)
        self.addCleanup(parent.wait, 10)
        self.addCleanup(parent.kill)
        with parent.stdout:
            worker_pid = int(parent.stdout.readline())
        # Once it listens, the worker has set PR_SET_PDEATHSIG and its watchdog.
        deadline = time.monotonic() + 10
        while not os.path.exists(socket_path) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertTrue(_alive(worker_pid))
        parent.kill()
        deadline = time.monotonic() + 10
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = _alive(worker_pid)
        if alive:
            os.kill(worker_pid, signal.SIGKILL)
        self.assertFalse(alive, "the worker outlived its parent")

    def test_exits_at_once_when_parent_pid_is_already_gone(self):
        # "parentPid" (optional) closes the window before prctl takes effect.
        env = dict(os.environ, BERTH_WORKER_CONFIG=json.dumps({
            "socket": "/tmp/unused.sock", "checkpoint": self.blob, "code": "", "parentPid": os.getpid() + 10**6}))
        proc = subprocess.run(support.bootstrap("berth_worker"), env=env, capture_output=True, timeout=30)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("parent process", proc.stderr.decode())


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class CounterTest(WorkerTestCase):
    CELLS = ["count = 0\n", "count += 1\nresult = count\n"]
    OUTPUTS = [{"name": "result", "type": "int"}]

    def test_state_persists_between_calls(self):
        worker = self.start()
        conn = worker.ready_connection()
        other = worker.connect()
        # The checkpoint ran the serving cell once (count == 1 in the checkpoint).
        results = [conn.execute({})[1]["output"]["result"], other.execute({})[1]["output"]["result"],
                   conn.execute({})[1]["output"]["result"]]
        self.assertEqual(results, [2, 3, 4])

    def test_calls_are_serialised(self):
        worker = self.start()
        worker.ready_connection()
        conns = [worker.connect() for _ in range(4)]
        results, errors = [], []

        def hammer(conn):
            try:
                for _ in range(50):
                    kind, body = conn.execute({})
                    results.append(body["output"]["result"])
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(sorted(results), list(range(2, 202)))  # no lost updates


ERRORS_SERVING = """\
if mode == "nan":
    out_value = float("nan")
elif mode == "set":
    out_value = {"a": {1, 2}}
elif mode == "big":
    out_value = "x" * 5000
elif mode == "raise":
    fail("bad " + mode)
elif mode == "missing":
    del out_value
elif mode == "sleep":
    time.sleep(3)
    out_value = "slept"
elif mode == "spin":
    started = time.monotonic()
    while time.monotonic() - started < 2:
        pass
    out_value = "spun"
elif mode == "exit":
    raise SystemExit(3)
else:
    out_value = mode
"""


class OutputTest(WorkerTestCase):
    """What a cell prints reaches the instance log: a quiet call's line before it answers,
    lines of calls in a row gathered into few writes, a background thread's line on its own."""
    CELLS = ["import threading, time\nn = 0\n", "n += 1\nprint('call', n)\nresult = n\n"]
    OUTPUTS = [{"name": "result", "type": "int"}]

    @staticmethod
    def _writes(pid: int) -> int:
        """write() calls the process made (socket sends are not counted: only its stdout/stderr)."""
        with open(f"/proc/{pid}/io") as f:
            return int(next(line for line in f if line.startswith("syscw:")).split()[1])

    def test_a_quiet_call_is_in_the_log_when_it_answers(self):
        worker = self.start()
        conn = worker.ready_connection()
        time.sleep(0.05)  # a quiet spell
        n = conn.execute({})[1]["output"]["result"]
        self.assertIn(f"call {n}\n", worker.read_log())

    def test_calls_in_a_row_share_writes_and_every_line_lands_in_order(self):
        worker = self.start()
        conn = worker.ready_connection()
        before = self._writes(worker.proc.pid)
        first = conn.execute({})[1]["output"]["result"]
        for _ in range(299):
            conn.execute({})
        writes = self._writes(worker.proc.pid) - before
        self.assertLess(writes, 100, f"{writes} writes for 300 calls' lines")
        deadline = time.monotonic() + 5
        want = [f"call {first + i}" for i in range(300)]
        while True:
            got = [line for line in worker.read_log().splitlines() if line.startswith("call ")]
            if got[-300:] == want or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self.assertEqual(got[-300:], want)

    def test_a_thread_printing_between_calls_is_written_too(self):
        worker = self.start(code="threading.Thread(target=lambda: (time.sleep(0.3), print('from a thread'))).start()\nresult = 0\n")
        conn = worker.ready_connection()
        conn.execute({})
        deadline = time.monotonic() + 5
        while "from a thread" not in worker.read_log() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertIn("from a thread\n", worker.read_log())


class ErrorsTest(WorkerTestCase):
    CELLS = ["import time\ndef fail(message):\n    raise ValueError(message)\nmode = 'ok'\n", ERRORS_SERVING]
    INPUTS = [{"name": "mode", "type": "str"}]
    OUTPUTS = [{"name": "out_value", "type": "any"}]

    def setUp(self):
        self.worker = self.start(maxResponseBytes=1000)
        self.conn = self.worker.ready_connection()

    def call_error(self, mode):
        kind, body = self.conn.execute({"mode": mode})
        self.assertEqual(kind, CALL_ERROR, body)
        return body

    def test_ok(self):
        self.assertEqual(self.conn.execute({"mode": "héllo ✓"}), (OK, {"output": {"out_value": "héllo ✓"}}))
        self.conn.send(EXECUTE, json.dumps({"input": {"mode": "é"}}, ensure_ascii=False).encode())
        self.assertEqual(self.conn.receive(), (OK, '{"output":{"out_value":"é"}}'.encode()))  # UTF-8, not \\u

    def test_user_error_with_traceback(self):
        kind, body = self.conn.execute({"mode": "raise"})
        self.assertEqual(kind, USER_ERROR)
        self.assertEqual(body["error_name"], "ValueError")
        self.assertEqual(body["error_message"], "bad raise")
        tb = body["traceback"]
        self.assertEqual(tb[0], "Traceback (most recent call last):")
        self.assertIn('File "<serving cell>", line 8, in <module>', tb[1])
        self.assertIn('fail("bad " + mode)', tb[2])  # serving cell source via linecache
        self.assertIn('File "<cell 0>", line 3, in fail', "\n".join(tb))
        self.assertEqual(tb[-1], "ValueError: bad raise")
        self.assertNotIn("berth_worker", "\n".join(tb))
        # The worker keeps serving.
        self.assertEqual(self.conn.execute({"mode": "again"}), (OK, {"output": {"out_value": "again"}}))

    def test_system_exit_is_a_user_error(self):
        kind, body = self.conn.execute({"mode": "exit"})
        self.assertEqual((kind, body["error_name"]), (USER_ERROR, "SystemExit"))
        self.assertEqual(self.conn.ping()["state"], "ready")

    def test_output_missing(self):
        body = self.call_error("missing")
        self.assertEqual(body["code"], "OUTPUT_MISSING")
        self.assertEqual(body["details"], {"variable": "out_value"})

    def test_output_not_serializable(self):
        body = self.call_error("set")
        self.assertEqual(body["code"], "OUTPUT_NOT_SERIALIZABLE")
        self.assertEqual(body["details"], {"variable": "out_value", "type": "dict"})
        self.assertIn('"out_value" (dict)', body["message"])
        self.assertIn("set", body["message"])
        body = self.call_error("nan")
        self.assertEqual(body["code"], "OUTPUT_NOT_SERIALIZABLE")
        self.assertEqual(body["details"], {"variable": "out_value", "type": "float"})
        self.assertIn("NaN", body["message"])

    def test_output_too_large(self):
        body = self.call_error("big")
        self.assertEqual(body["code"], "OUTPUT_TOO_LARGE")
        self.assertEqual(body["details"]["limit"], 1000)

    def test_input_invalid(self):
        cases = [
            {"input": {}},  # missing
            {"input": {"mode": 3}},  # wrong type
            {"input": {"mode": "ok", "extra": 1}},  # unknown
            {"input": []},  # not an object
        ]
        for request in cases:
            kind, body = self.conn.call(EXECUTE, json.dumps(request).encode())
            self.assertEqual((kind, body["code"]), (CALL_ERROR, "INPUT_INVALID"), request)
        for payload in (b"{not json", b"\xff\xfe\x00", b'{"input":' + b"[" * 100000 + b"]" * 100000 + b"}"):
            kind, body = self.conn.call(EXECUTE, payload)
            self.assertEqual((kind, body["code"]), (CALL_ERROR, "INPUT_INVALID"), payload[:20])
        kind, body = self.conn.execute({"mode": 3})
        self.assertEqual(body["details"], {"variable": "mode", "expected": "str", "actual": "integer"})

    def test_ping_answers_while_a_call_runs(self):
        for mode, answer in (("sleep", "slept"), ("spin", "spun")):  # spin holds the GIL between switches
            result = {}
            caller = threading.Thread(target=lambda: result.update(r=self.conn.execute({"mode": mode})))
            caller.start()
            self.addCleanup(caller.join, 10)
            time.sleep(0.3)
            pinger = self.worker.connect()
            pongs = 0
            while caller.is_alive() and pongs < 5:
                started = time.monotonic()
                self.assertEqual(pinger.ping()["state"], "ready")
                self.assertLess(time.monotonic() - started, 0.5)
                pongs += 1
                time.sleep(0.1)
            self.assertEqual(pongs, 5, f"the {mode} call ended before the pings")
            caller.join(10)
            self.assertEqual(result["r"], (OK, {"output": {"out_value": answer}}))


TYPED_SERVING = """\
i = spec.get("i", 1)
if spec.get("i_bool"):
    i = True
f = spec.get("f", 1.5)
l = tuple(spec.get("l", [1, 2]))
b = bytes(reversed(blob))
"""


class TypesTest(WorkerTestCase):
    CELLS = ["spec = {}\nblob = b''\n", TYPED_SERVING]
    INPUTS = [{"name": "spec", "type": "any"}, {"name": "blob", "type": "bytes"}]
    OUTPUTS = [{"name": "i", "type": "int"}, {"name": "f", "type": "float"},
               {"name": "l", "type": "list"}, {"name": "b", "type": "bytes"}]

    def setUp(self):
        self.worker = self.start()
        self.conn = self.worker.ready_connection()

    def test_bytes_in_and_out_and_lenient_types(self):
        data = bytes(range(256))
        kind, body = self.conn.execute({"spec": {"i": 7, "f": 2}, "blob": base64.b64encode(data).decode()})
        self.assertEqual(kind, OK, body)
        out = body["output"]
        self.assertEqual(out["i"], 7)
        self.assertEqual(out["f"], 2.0)  # float accepts int
        self.assertEqual(out["l"], [1, 2])  # list accepts tuple
        self.assertEqual(base64.b64decode(out["b"]), data[::-1])

    def test_output_type_mismatch(self):
        blob = base64.b64encode(b"x").decode()
        cases = [({"i_bool": True}, "i", "int", "bool"),  # int excludes bool
                 ({"i": "7"}, "i", "int", "str"),
                 ({"f": True}, "f", "float", "bool"),
                 ({"f": None}, "f", "float", "NoneType")]
        for spec, variable, expected, actual in cases:
            kind, body = self.conn.execute({"spec": spec, "blob": blob})
            self.assertEqual(kind, CALL_ERROR, spec)
            self.assertEqual(body["code"], "OUTPUT_TYPE_MISMATCH")
            self.assertEqual(body["details"], {"variable": variable, "expected": expected, "actual": actual})

    def test_bad_bytes_input(self):
        for blob in ("not base64!!", 12):
            kind, body = self.conn.execute({"spec": {}, "blob": blob})
            self.assertEqual((kind, body["code"]), (CALL_ERROR, "INPUT_INVALID"), blob)
            self.assertEqual(body["details"]["variable"], "blob")


class LoadingTest(WorkerTestCase):
    # Unpickling `slow` sleeps 1.5 s, so the "loading" state is observable.
    CELLS = ["import time\nclass Slow:\n    def __reduce__(self):\n        return (time.sleep, (1.5,))\nslow = Slow()\n",
             "x = 1\n"]
    OUTPUTS = [{"name": "x", "type": "int"}]

    def test_loading_then_ready(self):
        worker = self.start()
        conn = worker.connect()
        self.assertEqual(conn.ping()["state"], "loading")
        kind, body = conn.execute({})
        self.assertEqual((kind, body["code"], body["details"]["state"]), (CALL_ERROR, "NOT_READY", "loading"))
        self.assertEqual(worker.wait_state(conn)["state"], "ready")
        self.assertEqual(conn.execute({}), (OK, {"output": {"x": 1}}))

    def test_missing_required_package_fails(self):
        worker = self.start(requires=self.requires + [{"name": "berth-no-such-package", "version": "1.2.3"}])
        conn = worker.connect()
        pong = worker.wait_state(conn)
        self.assertEqual(pong["state"], "failed")
        self.assertIn('package "berth-no-such-package" 1.2.3 recorded in the checkpoint is not installed',
                      pong["error"])
        kind, body = conn.execute({})
        self.assertEqual((kind, body["code"], body["details"]["state"]), (CALL_ERROR, "NOT_READY", "failed"))
        time.sleep(0.2)
        self.assertIsNone(worker.proc.poll())  # stays alive for the controller to kill
        self.assertIn("[berth] failed: ", worker.read_log())

    def test_unreadable_checkpoint_and_bad_serving_code_fail(self):
        worker = self.start(checkpoint=os.path.join(self.dir, "nope"))
        pong = worker.wait_state(worker.connect())
        self.assertEqual(pong["state"], "failed")
        self.assertIn("cannot read the checkpoint", pong["error"])

        worker = self.start(code="x = (\n")
        pong = worker.wait_state(worker.connect())
        self.assertEqual(pong["state"], "failed")
        self.assertIn("SyntaxError", pong["error"])

    def test_version_mismatch_is_only_a_warning(self):
        worker = self.start(requires=[{"name": "dill", "version": "0.0.1"}])
        self.assertEqual(worker.wait_state(worker.connect())["state"], "ready")
        self.assertIn("[berth] warning: package \"dill\"", worker.read_log())

    def test_bad_config_exits_2(self):
        env = dict(os.environ, BERTH_WORKER_CONFIG='{"socket": 1}')
        proc = subprocess.run(support.bootstrap("berth_worker"), env=env, capture_output=True, timeout=30)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("bad worker configuration", proc.stderr.decode())


if __name__ == "__main__":
    unittest.main()
