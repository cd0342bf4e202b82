"""berth_checkpoint end to end, run as a subprocess the way Node runs it."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

from tests import support


class CheckpointMakerTest(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name

    def test_randomizer(self):
        rc, result, stdout, stderr, blob = support.make_checkpoint(support.RANDOMIZER_CELLS, self.dir)
        self.assertEqual(rc, 0, stderr)
        self.assertTrue(result["ok"])
        self.assertEqual(result["python"], sys.version.split()[0])
        self.assertEqual(result["executable"], support.PYTHON)
        self.assertIn("dill", {p["name"] for p in result["packages"]})
        self.assertIn("dill", {r["name"] for r in result["requires"]})
        names = [v["name"] for v in result["variables"]]
        self.assertEqual(names, ["input_data", "randint", "seed", "generate_value", "output_data"])
        self.assertEqual({v["name"]: v["type"] for v in result["variables"]}["generate_value"], "function")
        self.assertEqual(result["skipped"], [])
        self.assertGreater(os.path.getsize(blob), 0)
        # The cells' prints are the run log: on stderr, never on stdout.
        self.assertEqual(stdout, "")
        self.assertIn("{'generated_value': ", stderr)
        self.assertIn("[berth] checkpoint written", stderr)

    def test_cell_exception(self):
        cells = ["x = 1\n", "def f(y):\n    return y / 0\n", "print('before')\nf(x)\n"]
        rc, result, stdout, stderr, blob = support.make_checkpoint(cells, self.dir)
        self.assertEqual(rc, 1, stderr)
        self.assertFalse(os.path.exists(blob))
        error = result["error"]
        self.assertEqual(result["ok"], False)
        self.assertEqual(error["cell"], 2)
        self.assertEqual(error["error_name"], "ZeroDivisionError")
        self.assertEqual(error["error_message"], "division by zero")
        self.assertEqual(error["traceback"][0], "Traceback (most recent call last):")
        self.assertIn('File "<cell 2>", line 2, in <module>', error["traceback"][1])
        self.assertIn('File "<cell 1>", line 2, in f', "\n".join(error["traceback"]))
        self.assertEqual(error["traceback"][-1], "ZeroDivisionError: division by zero")
        self.assertNotIn("berth_", "\n".join(error["traceback"]))
        self.assertIn("before", stderr)

    def test_syntax_error_and_exit_in_a_cell(self):
        rc, result, _, stderr, _ = support.make_checkpoint(["x = (\n"], self.dir)
        self.assertEqual(rc, 1, stderr)
        self.assertEqual(result["error"]["cell"], 0)
        self.assertEqual(result["error"]["error_name"], "SyntaxError")
        self.assertIn('File "<cell 0>"', "\n".join(result["error"]["traceback"]))

        rc, result, _, stderr, _ = support.make_checkpoint(["import sys\nsys.exit(4)\n"], self.dir)
        self.assertEqual(rc, 1, stderr)
        self.assertEqual(result["error"]["error_name"], "SystemExit")

    def test_skipped_variables_are_reported(self):
        cells = ["import threading\nlock = threading.Lock()\nkeep = 1\ngen = (i for i in range(2))\n"]
        rc, result, _, stderr, _ = support.make_checkpoint(cells, self.dir)
        self.assertEqual(rc, 0, stderr)
        self.assertEqual({v["name"] for v in result["variables"]}, {"threading", "keep"})
        self.assertEqual({s["name"] for s in result["skipped"]}, {"lock", "gen"})
        self.assertIn('skipped variable "gen"', stderr)

    def test_bootstrap_names_do_not_leak_into_the_checkpoint(self):
        rc, result, _, stderr, _ = support.make_checkpoint(["a = 1\n"], self.dir)
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(result["variables"], [{"name": "a", "type": "int"}])

    def test_requires_lists_what_the_cells_imported(self):
        rc, result, _, stderr, _ = support.make_checkpoint(["import yaml\ndoc = yaml.safe_load('a: 1')\n"], self.dir)
        self.assertEqual(rc, 0, stderr)
        self.assertEqual({r["name"] for r in result["requires"]}, {"dill", "PyYAML"})

    def test_bad_request_exits_2(self):
        for request in (b"not json", b"[]", json.dumps({"cells": ["a"], "servingCell": 3, "out": "x"}).encode(),
                        json.dumps({"cells": "a", "servingCell": 0, "out": "x"}).encode()):
            proc = subprocess.run(support.bootstrap("berth_checkpoint"), input=request, capture_output=True,
                                  timeout=60, cwd=self.dir)
            self.assertEqual(proc.returncode, 2, request)
            self.assertIn("bad checkpoint request", proc.stderr.decode())

    def test_missing_dill_exits_3(self):
        # An interpreter without dill: simulate it by making "import dill" fail.
        code = (f"import sys; sys.modules['dill'] = None; sys.path.insert(0, {support.PYTHON_DIR!r}); "
                "import berth_checkpoint; berth_checkpoint.main()")
        proc = subprocess.run([support.PYTHON, "-c", code], input=b"{}", capture_output=True, timeout=60)
        self.assertEqual(proc.returncode, 3)
        self.assertIn(f"dill is not installed for {support.PYTHON}: apt-get install python3-dill",
                      proc.stderr.decode())

    def test_non_daemon_thread_does_not_keep_it_alive(self):
        cells = ["import threading, time\nt = threading.Thread(target=time.sleep, args=(30,))\nt.start()\nx = 1\n"]
        rc, result, _, stderr, _ = support.make_checkpoint(cells, self.dir, timeout=20)
        self.assertEqual(rc, 0, stderr)
        self.assertEqual({s["name"] for s in result["skipped"]}, {"t"})


if __name__ == "__main__":
    unittest.main()
