"""berth_client: the upload format against a tiny local HTTP server, errors,
defaults, and the IPython magic with a fake shell."""

import contextlib
import io
import json
import os
import socket
import sys
import tempfile
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import dill

import berth_client
from berth_client import BerthError, save_checkpoint


class FakeBerth:
    """An HTTP server on 127.0.0.1 (port 0) recording requests and answering
    with a configurable status and JSON body."""

    def __init__(self):
        self.requests = []
        self.status = 201
        self.answer = {"id": "ck_123", "name": "demo"}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                data = json.dumps(fake.answer).encode()
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def split_body(body: bytes) -> tuple[dict, bytes]:
    line, _, blob = body.partition(b"\n")
    return json.loads(line.decode("utf-8")), blob


class SaveCheckpointTest(unittest.TestCase):
    def setUp(self):
        self.berth = FakeBerth()
        self.addCleanup(self.berth.close)

    def test_upload_format(self):
        shared = [1, 2]
        namespace = {"__name__": "__main__", "In": ["x = 1"], "_1": 5, "a": shared, "b": {"s": shared},
                     "lock": threading.Lock(), "note": "line1\nline2 ✓"}
        answer = save_checkpoint(name="demo", code="out = a\n", namespace=namespace,
                                 url=self.berth.url + "/", token="secret-token")
        self.assertEqual(answer, {"id": "ck_123", "name": "demo"})

        request, = self.berth.requests
        self.assertEqual(request["path"], "/v1/checkpoints:upload")
        self.assertEqual(request["headers"]["Authorization"], "Bearer secret-token")
        self.assertEqual(request["headers"]["Content-Type"], "application/vnd.berth.checkpoint")

        metadata, blob = split_body(request["body"])
        self.assertEqual(set(metadata), {"name", "code", "python", "executable", "packages", "requires",
                                         "variables", "skipped", "source"})
        self.assertEqual(metadata["name"], "demo")
        self.assertEqual(metadata["code"], "out = a\n")
        self.assertEqual(metadata["source"], "kernel")
        self.assertEqual(metadata["python"], sys.version.split()[0])
        self.assertEqual(metadata["executable"], sys.executable)
        self.assertIn("dill", {p["name"] for p in metadata["requires"]})
        self.assertEqual([v["name"] for v in metadata["variables"]], ["a", "b", "note"])
        self.assertEqual([s["name"] for s in metadata["skipped"]], ["lock"])
        # The metadata is one line, even with newlines inside strings.
        self.assertEqual(request["body"].count(b"\n", 0, request["body"].index(b"\n") + 1), 1)

        restored = dill.loads(blob)
        self.assertEqual(restored["note"], "line1\nline2 ✓")
        self.assertIs(restored["a"], restored["b"]["s"])

    def test_python_overrides_the_executable(self):
        save_checkpoint(name="p", code="", namespace={"x": 1}, url=self.berth.url, token="t",
                        python="/opt/venv/bin/python")
        metadata, _ = split_body(self.berth.requests[0]["body"])
        self.assertEqual(metadata["executable"], "/opt/venv/bin/python")

    def test_error_body_raises_berth_error(self):
        self.berth.status = 409
        self.berth.answer = {"code": "NAME_TAKEN", "message": "checkpoint demo exists", "details": {"name": "demo"}}
        with self.assertRaises(BerthError) as caught:
            save_checkpoint(name="demo", code="", namespace={"x": 1}, url=self.berth.url, token="t")
        error = caught.exception
        self.assertEqual((error.code, error.message, error.details),
                         ("NAME_TAKEN", "checkpoint demo exists", {"name": "demo"}))

    def test_defaults_from_environment_and_token_file(self):
        with tempfile.TemporaryDirectory() as home:
            with open(os.path.join(home, "admin-token"), "w") as f:
                f.write("file-token\n")
            env = {"BERTH_URL": self.berth.url, "BERTH_HOME": home}
            with mock.patch.dict(os.environ, env):
                os.environ.pop("BERTH_TOKEN", None)
                save_checkpoint(code="", namespace={"x": 1})
                with mock.patch.dict(os.environ, {"BERTH_TOKEN": "env-token"}):
                    save_checkpoint(code="", namespace={"x": 1})
        tokens = [r["headers"]["Authorization"] for r in self.berth.requests]
        self.assertEqual(tokens, ["Bearer file-token", "Bearer env-token"])

    def test_namespace_defaults_to_the_callers_globals(self):
        namespace = {"save_checkpoint": save_checkpoint, "url": self.berth.url, "model_weight": 0.5}
        exec("answer = save_checkpoint(name='g', code='y = model_weight', url=url, token='t')", namespace)
        metadata, blob = split_body(self.berth.requests[0]["body"])
        self.assertIn("model_weight", [v["name"] for v in metadata["variables"]])
        self.assertEqual(dill.loads(blob)["model_weight"], 0.5)

    def test_unreachable_server(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with self.assertRaises(BerthError) as caught:
            save_checkpoint(code="", namespace={"x": 1}, url=f"http://127.0.0.1:{port}", token="t", timeout=5)
        self.assertEqual(caught.exception.code, "UNREACHABLE")


class FakeResult:
    def __init__(self, success):
        self.success = success


class FakeShell:
    """Just enough of IPython's InteractiveShell for load_ipython_extension."""

    def __init__(self):
        self.user_ns = {"__name__": "__main__", "In": [""], "Out": {}}
        self.magics = {}

    def register_magic_function(self, func, magic_kind="line", magic_name=None):
        self.magics[(magic_kind, magic_name or func.__name__)] = func

    def run_cell(self, cell):
        try:
            exec(cell, self.user_ns)
        except Exception:  # noqa: BLE001 - IPython reports it and returns success=False
            return FakeResult(False)
        return FakeResult(True)


class MagicTest(unittest.TestCase):
    def setUp(self):
        self.berth = FakeBerth()
        self.addCleanup(self.berth.close)
        self.shell = FakeShell()
        berth_client.load_ipython_extension(self.shell)
        self.magic = self.shell.magics[("cell", "berth_checkpoint")]

    def run_magic(self, line, cell):
        out, err = io.StringIO(), io.StringIO()
        with mock.patch.dict(os.environ, {"BERTH_TOKEN": "t"}), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            self.magic(line, cell)
        return out.getvalue(), err.getvalue()

    def test_magic_runs_the_cell_then_uploads(self):
        self.shell.user_ns["x"] = 20
        cell = "y = x + 1\n"
        out, err = self.run_magic(f"--name demo --url {self.berth.url}", cell)
        self.assertEqual(self.shell.user_ns["y"], 21)  # the cell ran in the kernel
        metadata, blob = split_body(self.berth.requests[0]["body"])
        self.assertEqual((metadata["name"], metadata["code"], metadata["source"]), ("demo", cell, "kernel"))
        self.assertEqual(dill.loads(blob), {"x": 20, "y": 21})
        self.assertIn("saved checkpoint ck_123 (demo)", out)

    def test_failed_cell_saves_nothing(self):
        out, err = self.run_magic(f"--url={self.berth.url}", "1 / 0\n")
        self.assertEqual(self.berth.requests, [])
        self.assertIn("no checkpoint was saved", err)

    def test_bad_options(self):
        out, err = self.run_magic("--frobnicate", "x = 1\n")
        self.assertIn("unknown option", err)
        self.assertNotIn("x", self.shell.user_ns)
        self.assertEqual(berth_client._parse_magic_line("--name 'my model' --url=http://h:1 --folder=team-a"),
                         {"name": "my model", "url": "http://h:1", "folder": "team-a"})


class KernelHelpersTest(unittest.TestCase):
    """The pure parts of the kernel magics (the magics themselves run in a real
    kernel in test/kernel.test.ts)."""

    def test_read_only_cells(self):
        for source in ("x", "df.shape", "a + b * 2", "x[0]", "", "# a comment"):
            self.assertTrue(berth_client._is_read_only(source), source)
        for source in ("x = 1", "print(x)", "items.append(3)", "del x", "import os", "(y := 2)",
                       "x += 1", "def f(): pass", "for i in r: pass", "x[0] = 1", "not valid python ("):
            self.assertFalse(berth_client._is_read_only(source), source)

    def test_options(self):
        o = berth_client._parse_options("adder --input v:int --input=w:float --output y:int --min 2",
                                        "usage", values=("min",), repeated=("input", "output"), positional=1)
        self.assertEqual((o["args"], o["input"], o["output"], o["min"]), (["adder"], ["v:int", "w:float"], ["y:int"], "2"))
        for line in ("--input", "a b", "--bogus 1", "'unclosed"):
            with self.assertRaises(berth_client._Usage):
                berth_client._parse_options(line, "usage", repeated=("input",), positional=1)
        self.assertEqual(berth_client._parse_variables(["x:ndarray[float32,-1]"], "--input"),
                         [{"name": "x", "type": "ndarray[float32,-1]"}])
        with self.assertRaises(berth_client._Usage):
            berth_client._parse_variables(["x"], "--input")
        with self.assertRaises(berth_client._Usage):
            berth_client._whole("0", "--keep", 1, 1000)
        with self.assertRaises(berth_client._Usage):
            berth_client._whole("two", "--keep", 1, 1000)

    def test_checkpoint_names_fit_the_name_rules(self):
        name = berth_client._checkpoint_name("m" * 80, 2)
        self.assertLessEqual(len(name), 63)
        self.assertRegex(name, r"^m+-\d{8}-\d{6}-2$")
        self.assertRegex(berth_client._checkpoint_name("my model", 0), r"^my model-\d{8}-\d{6}$")

    def test_curl_line_quotes_the_body_for_a_shell(self):
        line = berth_client.curl_line("http://127.0.0.1:1", {"id": "abc", "folderId": "default"}, {"s": "it's"})
        self.assertIn('"http://127.0.0.1:1/datasphere/v1/nodes/abc:execute"', line)
        self.assertIn("""--data-raw '{"folder_id": "default", "input": {"s": "it'\\''s"}}'""", line)
        self.assertEqual(berth_client._example_value(object(), "float"), 0.0)
        self.assertEqual(berth_client._example_value([1, 2], "list"), [1, 2])


if __name__ == "__main__":
    unittest.main()
