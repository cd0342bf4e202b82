"""berth_state: snapshot/restore, environment info, requirement checks."""

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import unittest

import berth_state
from tests import support


def run_cells(*cells: str) -> dict:
    """Execute cells in a fresh plain namespace (as a notebook would)."""
    namespace = {"__name__": "cells"}
    for i, cell in enumerate(cells):
        exec(compile(textwrap.dedent(cell), f"<cell {i}>", "exec"), namespace)
    return namespace


def roundtrip(namespace: dict, hidden: dict | None = None) -> tuple[dict, list, list]:
    blob, variables, skipped = berth_state.snapshot(namespace, hidden)
    restored: dict = {}
    berth_state.restore(blob, restored)
    return restored, variables, skipped


class SnapshotRestoreTest(unittest.TestCase):
    def test_functions_classes_lambdas_modules(self):
        ns = run_cells(
            """
            import json as js
            import collections
            OFFSET = 10
            def add_offset(x):
                return x + OFFSET
            class Scaler:
                def __init__(self, k):
                    self.k = k
                def __call__(self, x):
                    return add_offset(x) * self.k
            square = lambda v: v * v
            scaler = Scaler(2)
            counts = collections.Counter("abca")
            """
        )
        restored, variables, skipped = roundtrip(ns)
        self.assertEqual(skipped, [])
        self.assertEqual(restored["add_offset"](1), 11)
        self.assertEqual(restored["square"](7), 49)
        self.assertEqual(restored["scaler"](1), 22)
        self.assertEqual(restored["Scaler"](3)(0), 30)
        self.assertIs(restored["js"], json)  # modules come back by reference
        self.assertEqual(restored["counts"]["a"], 2)
        types = {v["name"]: v["type"] for v in variables}
        self.assertEqual(types["js"], "module")
        self.assertEqual(types["add_offset"], "function")
        self.assertEqual(types["counts"], "collections.Counter")
        self.assertEqual(types["OFFSET"], "int")

    def test_shared_references_stay_shared(self):
        ns = run_cells(
            """
            shared = [1, 2]
            a = {"items": shared}
            b = {"items": shared}
            """
        )
        restored, _, _ = roundtrip(ns)
        self.assertIs(restored["a"]["items"], restored["b"]["items"])
        self.assertIs(restored["shared"], restored["a"]["items"])

    def test_unpicklable_variables_are_skipped_and_the_rest_kept(self):
        tmp = tempfile.NamedTemporaryFile("w", delete=False)
        self.addCleanup(os.unlink, tmp.name)
        self.addCleanup(tmp.close)
        sock = socket.socket()
        self.addCleanup(sock.close)
        ns = {
            "handle": tmp,
            "lock": threading.Lock(),
            "rlock": threading.RLock(),
            "gen": (i for i in range(3)),
            "sock": sock,
            "holder": {"file": tmp},  # a file nested in a container
            "kept": [1, 2, 3],
            "buffer": io.StringIO("in-memory text is plain data"),
        }
        restored, variables, skipped = roundtrip(ns)
        reasons = {s["name"]: s["reason"] for s in skipped}
        self.assertEqual(set(reasons), {"handle", "lock", "rlock", "gen", "sock", "holder"})
        self.assertIn("file object", reasons["handle"])
        self.assertIn("file object", reasons["holder"])
        self.assertIn("lock", reasons["lock"])
        self.assertIn("generator", reasons["gen"])
        self.assertIn("socket", reasons["sock"])
        self.assertEqual({s["name"]: s["type"] for s in skipped}["lock"], "_thread.lock")
        self.assertEqual(restored["kept"], [1, 2, 3])
        self.assertEqual(restored["buffer"].read(), "in-memory text is plain data")
        self.assertEqual({v["name"] for v in variables}, {"kept", "buffer"})

    def test_closed_write_mode_file_is_not_checkpointed(self):
        # dill would re-open it with mode "w" on restore, truncating the file.
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "out.csv")
            with open(path, "w") as f:
                f.write("precious")
            blob, variables, skipped = berth_state.snapshot({"f": f})
            berth_state.restore(blob, {})
            self.assertEqual([s["name"] for s in skipped], ["f"])
            self.assertIn("(closed)", skipped[0]["reason"])
            with open(path) as check:
                self.assertEqual(check.read(), "precious")

    def test_ipython_and_dunder_names_are_not_user_variables(self):
        for name in ("In", "Out", "_", "__", "___", "_i", "_ii", "_iii", "_i12", "_7", "_oh", "_ih",
                     "_dh", "get_ipython", "exit", "quit", "__builtins__", "__name__"):
            self.assertFalse(berth_state.is_user_variable(name), name)
        for name in ("x", "_private", "_i_mean", "model", "_x1"):
            self.assertTrue(berth_state.is_user_variable(name), name)
        ns = {"In": ["x = 1"], "_3": 4, "__doc__": None, "x": 1}
        _, variables, _ = roundtrip(ns)
        self.assertEqual(variables, [{"name": "x", "type": "int"}])

    def test_a_shells_hidden_names_stay_out_until_the_user_rebinds_them(self):
        def ipython_open(*a, **k):  # stands for IPython's own open
            return None

        def my_open(*a, **k):
            return None

        hidden = {"open": ipython_open, "helper": 1}
        ns = {"open": ipython_open, "helper": 1, "x": 1}
        self.assertEqual(list(berth_state.user_variables(ns, hidden)), ["x"])
        ns["open"] = my_open  # the user's own now (IPython's %who rule)
        self.assertEqual(list(berth_state.user_variables(ns, hidden)), ["open", "x"])
        _, variables, _ = roundtrip({"open": ipython_open, "x": 1}, hidden={"open": ipython_open})
        self.assertEqual(variables, [{"name": "x", "type": "int"}])

    def test_ipythons_open_is_left_out_without_the_shell_too(self):
        fake = type(lambda: None)((lambda: None).__code__, {}, "open")
        fake.__module__ = "IPython.core.interactiveshell"
        self.assertEqual(list(berth_state.user_variables({"open": fake, "x": 1})), ["x"])
        mine = type(lambda: None)((lambda: None).__code__, {}, "open")
        self.assertEqual(list(berth_state.user_variables({"open": mine})), ["open"])

    def test_fingerprint_changes_when_a_name_is_rebound(self):
        ns = {"a": [1], "In": []}
        first = berth_state.fingerprint(ns)
        ns["a"].append(2)
        self.assertEqual(berth_state.fingerprint(ns), first)  # a mutation is not seen here
        ns["In"] = ["x"]
        self.assertEqual(berth_state.fingerprint(ns), first)  # IPython's names do not count
        ns["a"] = [1, 2]
        self.assertNotEqual(berth_state.fingerprint(ns), first)

    def test_state_digest_sees_rebinding_and_mutation_and_reuses_immutable_hashes(self):
        big = bytes(1000)
        ns = {"big": big, "items": [1, 2], "In": ["x"]}
        memo: dict = {}
        first = berth_state.state_digest(ns, memo=memo)
        self.assertIs(memo["big"][0], big)
        self.assertNotIn("items", memo)  # mutable: hashed again every time
        self.assertEqual(berth_state.state_digest(ns, memo=memo), first)
        ns["items"].append(3)
        mutated = berth_state.state_digest(ns, memo=memo)
        self.assertNotEqual(mutated, first)
        ns["big"] = bytes(1000)  # an equal value, but rebound
        self.assertNotEqual(berth_state.state_digest(ns, memo=memo), mutated)
        del ns["big"]
        berth_state.state_digest(ns, memo=memo)
        self.assertEqual(memo, {})  # nothing the namespace dropped is kept alive

    def test_restore_updates_the_namespace(self):
        blob, _, _ = berth_state.snapshot({"a": 1, "b": "two"})
        target = {"a": 0, "c": 3}
        berth_state.restore(blob, target)
        self.assertEqual(target, {"a": 1, "b": "two", "c": 3})

    def test_reset_namespace_keeps_dunders(self):
        ns = {"__name__": "__main__", "__builtins__": __builtins__, "sys": sys, "x": 1}
        berth_state.reset_namespace(ns)
        self.assertEqual(set(ns), {"__name__", "__builtins__"})


class MainModuleRoundTripTest(unittest.TestCase):
    """Functions from one cell calling names of another, restored into
    __main__ of a fresh process (the dill __main__ detail)."""

    def test_function_defined_in_one_cell_called_from_another_in_a_fresh_process(self):
        with tempfile.TemporaryDirectory() as tmp:
            cells = [
                "def greet(who):\n    return PREFIX + who\n",
                "PREFIX = 'hello '\nclass Box:\n    def __init__(self, v):\n        self.v = v\n    def show(self):\n        return greet(str(self.v))\nbox = Box(42)\n",
            ]
            rc, result, _, stderr, blob = support.make_checkpoint(cells, tmp)
            self.assertEqual(rc, 0, stderr)
            script = textwrap.dedent(f"""
                import sys
                sys.path.insert(0, {support.PYTHON_DIR!r})
                def main():
                    import __main__, berth_state, json
                    ns = __main__.__dict__
                    berth_state.reset_namespace(ns)
                    with open({blob!r}, "rb") as f:
                        berth_state.restore(f.read(), ns)
                    exec("PREFIX = 'hi '\\nanswer = [greet('you'), box.show()]", ns)
                    print(json.dumps(ns["answer"]))
                main()
            """)
            proc = subprocess.run([support.PYTHON, "-c", script], capture_output=True, timeout=60)
            self.assertEqual(proc.returncode, 0, proc.stderr.decode())
            # greet() sees __main__'s PREFIX, even as changed after the restore.
            self.assertEqual(json.loads(proc.stdout), ["hi you", "hi 42"])


class EnvironmentTest(unittest.TestCase):
    def test_environment_info(self):
        import yaml  # Debian's python3-yaml (PyYAML), alongside python3-dill

        info = berth_state.environment_info({"yaml": yaml, "js": json, "x": 1}, code=["import random\n"])
        self.assertEqual(info["python"], sys.version.split()[0])
        self.assertEqual(info["executable"], sys.executable)
        names = {p["name"].lower() for p in info["packages"]}
        self.assertIn("dill", names)
        required = {r["name"]: r["version"] for r in info["requires"]}
        self.assertIn("PyYAML", required)
        self.assertIn("dill", required)
        self.assertEqual(required["PyYAML"], yaml.__version__)
        self.assertEqual(set(required), {"PyYAML", "dill"})  # json/random are stdlib

    def test_requires_from_code_and_ipython_history(self):
        info = berth_state.environment_info({"In": ["", "import yaml\n%matplotlib inline\n"]})
        self.assertIn("PyYAML", {r["name"] for r in info["requires"]})
        info = berth_state.environment_info({}, code=["def f():\n    import yaml\n"], modules=["json", "yaml.constructor"])
        self.assertIn("PyYAML", {r["name"] for r in info["requires"]})

    def test_imported_modules(self):
        source = "import os.path, yaml as y\nfrom a.b import c\nfrom . import local\ndef f():\n    import zzz\n"
        self.assertEqual(berth_state.imported_modules(source), {"os", "yaml", "a", "zzz"})
        self.assertEqual(berth_state.imported_modules("!pip install x\nimport yaml\n"), {"yaml"})
        self.assertEqual(berth_state.imported_modules("def (:"), set())

    def test_check_requirements(self):
        import dill

        self.assertEqual(berth_state.check_requirements([{"name": "dill", "version": dill.__version__}]), [])
        problems = berth_state.check_requirements([
            {"name": "berth-no-such-package", "version": "1.2.3"},
            {"name": "dill", "version": "0.0.1"},
        ])
        self.assertEqual([p.level for p in problems], ["error", "warning"])
        self.assertEqual(
            problems[0].message,
            f'package "berth-no-such-package" 1.2.3 recorded in the checkpoint is not installed in {sys.executable}',
        )
        self.assertIn('"dill"', str(problems[1]))
        self.assertIn("0.0.1", str(problems[1]))


class TracebackTest(unittest.TestCase):
    def test_user_traceback_drops_berth_frames(self):
        import berth_checkpoint

        # run_cells exec()s in berth_checkpoint.py: that frame must not show.
        error = berth_checkpoint.run_cells(["def inner():\n    raise ValueError('boom')\ninner()\n"], {})
        lines = error["traceback"]
        self.assertEqual(lines[0], "Traceback (most recent call last):")
        self.assertIn('File "<cell 0>", line 3, in <module>', lines[1])
        self.assertIn("raise ValueError('boom')", "\n".join(lines))  # source shown via linecache
        self.assertEqual(lines[-1], "ValueError: boom")
        self.assertNotIn("berth_checkpoint.py", "\n".join(lines))
        self.assertEqual((error["cell"], error["error_name"], error["error_message"]), (0, "ValueError", "boom"))

if __name__ == "__main__":
    unittest.main()
