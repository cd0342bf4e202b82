"""berth_checkpoint.split_script and notebook_cells."""

import json
import unittest

from berth_checkpoint import notebook_cells, split_script

NOTE = "# berth: IPython-only line disabled: "


class SplitScriptTest(unittest.TestCase):
    def test_markers_split_cells(self):
        text = "import os\n\n# %%\nx = 1\n# %% load data\ny = 2\nz = 3\n"
        self.assertEqual(split_script(text), ["import os\n\n", "x = 1\n", "y = 2\nz = 3\n"])

    def test_blank_text_before_first_marker_is_not_a_cell(self):
        self.assertEqual(split_script("\n  \n# %%\na = 1\n"), ["a = 1\n"])

    def test_every_marker_starts_a_cell_even_an_empty_one(self):
        self.assertEqual(split_script("# %%\n# %%\nb = 1"), ["", "b = 1"])

    def test_no_marker_is_one_cell(self):
        self.assertEqual(split_script("a = 1\nb = 2\n"), ["a = 1\nb = 2\n"])
        self.assertEqual(split_script(""), [])
        self.assertEqual(split_script("\n\n"), [])

    def test_only_lines_starting_with_the_marker_split(self):
        text = "a = '# %%'\n    # %% indented is code\n#%% not a marker\n"
        self.assertEqual(split_script(text), [text])

    def test_crlf_line_endings_are_kept(self):
        self.assertEqual(split_script("a = 1\r\n# %%\r\nb = 2\r\n"), ["a = 1\r\n", "b = 2\r\n"])


def notebook(*cells, nbformat=4) -> str:
    return json.dumps({"nbformat": nbformat, "nbformat_minor": 5, "metadata": {}, "cells": list(cells)})


def code(source):
    return {"cell_type": "code", "source": source, "metadata": {}, "outputs": [], "execution_count": None}


class NotebookCellsTest(unittest.TestCase):
    def test_code_cells_only_with_list_or_str_source(self):
        text = notebook(
            {"cell_type": "markdown", "source": ["# Title\n"], "metadata": {}},
            code(["x = 1\n", "y = 2"]),
            {"cell_type": "raw", "source": "raw", "metadata": {}},
            code("z = x + y\n"),
        )
        self.assertEqual(notebook_cells(text), ["x = 1\ny = 2", "z = x + y\n"])

    def test_ipython_lines_are_commented_out(self):
        text = notebook(code(["%matplotlib inline\n", "!pip install numpy\n", "x = 1\n"]))
        cells = notebook_cells(text)
        self.assertEqual(cells, [f"{NOTE}%matplotlib inline\n{NOTE}!pip install numpy\nx = 1\n"])
        compile(cells[0], "<cell 0>", "exec")  # still valid Python

    def test_indented_magic_keeps_the_block_valid(self):
        cells = notebook_cells(notebook(code("if True:\n    %time x = 1\n")))
        self.assertEqual(cells, [f"if True:\n    pass  {NOTE}%time x = 1\n"])
        compile(cells[0], "<cell 0>", "exec")

    def test_percent_inside_a_multiline_string_is_left_alone(self):
        source = 'query = """\n%s items\n!important\n"""\n'
        self.assertEqual(notebook_cells(notebook(code(source))), [source])

    def test_cell_magics(self):
        timed, shell = notebook_cells(notebook(
            code("%%time\ntotal = sum(range(10))\n"),
            code("%%bash\necho hi\nls\n"),
        ))
        self.assertEqual(timed, f"{NOTE}%%time\ntotal = sum(range(10))\n")
        self.assertEqual(shell, f"{NOTE}%%bash\n{NOTE}echo hi\n{NOTE}ls\n")
        for cell in (timed, shell):
            compile(cell, "<cell>", "exec")

    def test_nbformat3_worksheets(self):
        text = json.dumps({"nbformat": 3, "worksheets": [{"cells": [
            {"cell_type": "code", "input": ["a = 1\n"]},
            {"cell_type": "markdown", "source": "text"},
        ]}]})
        self.assertEqual(notebook_cells(text), ["a = 1\n"])

    def test_not_a_notebook(self):
        with self.assertRaises(ValueError):
            notebook_cells("[1, 2]")
        with self.assertRaises(ValueError):
            notebook_cells("not json")


if __name__ == "__main__":
    unittest.main()
