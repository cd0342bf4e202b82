"""Berth checkpoint maker: runs a notebook's cells in a fresh interpreter and
pickles the resulting namespace with dill.

Invoked by the Node control plane as::

    /usr/bin/python3 -c "import sys; sys.path.insert(0, '<dir>'); import berth_checkpoint; berth_checkpoint.main()"

with a JSON request on stdin::

    {"cells": ["code", ...], "servingCell": <index>, "out": "<blob path>"}

Every cell runs, in order (the serving cell too), in the real
``__main__.__dict__``, compiled with the file name ``<cell N>`` (N = the
0-based index in ``cells``). What the cells print, on stdout or stderr, goes to
this process's stderr: it is the run log. Berth's own log lines start with
``[berth]``.

Results:
  * exit 0 - the dill blob is at ``out``, and ``out + ".json"`` holds
    ``{"ok": true, "python", "executable", "packages", "requires",
    "variables", "skipped"}``.
  * exit 1 - ``out + ".json"`` holds ``{"ok": false, "error": {"cell": N,
    "error_name", "error_message", "traceback": [lines]}}``; ``cell`` is null
    when the cells ran but the namespace could not be pickled. No blob.
  * exit 2 - bad request or internal error; message on stderr, result file
    possibly absent.
  * exit 3 - dill is not installed for this interpreter (message on stderr).

Also exposes ``split_script`` and ``notebook_cells``, which turn a ``.py``
script with ``# %%`` markers or an ``.ipynb`` notebook into a list of cells.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import tokenize

import berth_state  # importable without dill; main() checks for it

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_REQUEST = 2
EXIT_NO_DILL = 3

CELL_MARKER = "# %%"


# --------------------------------------------------------------------------
# Turning sources into cells


def split_script(text: str) -> list[str]:
    """Split a ``.py`` script into cells on lines starting with ``# %%``.

    The marker lines themselves are not part of any cell; the other lines are
    kept exactly (line endings included). Text before the first marker is a
    cell only if it is not blank; every marker starts a cell, even an empty
    one, so cell indices match the markers in the file.
    """
    cells: list[str] = []
    current: list[str] = []
    seen_marker = False
    for line in text.splitlines(keepends=True):
        if line.startswith(CELL_MARKER):
            if seen_marker or "".join(current).strip():
                cells.append("".join(current))
            current = []
            seen_marker = True
        else:
            current.append(line)
    if seen_marker or "".join(current).strip():
        cells.append("".join(current))
    return cells


# Cell magics whose body is ordinary Python: only the magic line is disabled.
# Any other cell magic (%%bash, %%html, %%writefile ...) disables the whole cell.
PYTHON_BODY_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "berth_checkpoint"})

_DISABLED_NOTE = "# berth: IPython-only line disabled: "


def _lines_inside_strings(source: str) -> set[int]:
    """0-based indices of lines that continue a multi-line string literal
    (their leading ``%``/``!`` is data, not IPython syntax)."""
    inside: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                inside.update(range(tok.start[0], tok.end[0]))  # rows after the first, 0-based
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return inside


def _disable_ipython_lines(source: str) -> str:
    """Comment out IPython-only lines (``%magic``, ``%%cell magic``, ``!shell``)."""
    lines = source.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].lstrip().startswith("%%"):
        magic = lines[first].lstrip()[2:].split(None, 1)
        if not magic or magic[0] not in PYTHON_BODY_CELL_MAGICS:
            # The whole cell is in another language: disable all of it.
            return "".join(
                _DISABLED_NOTE + line if line.strip() else line for line in lines
            )
    in_strings = _lines_inside_strings(source)
    out = []
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if i not in in_strings and stripped.startswith(("%", "!")):
            indent = line[: len(line) - len(stripped)]
            ending = "\n" if line.endswith("\n") else ""
            # An indented magic sits inside a block: keep the block non-empty.
            stmt = "pass  " if indent else ""
            line = f"{indent}{stmt}{_DISABLED_NOTE}{stripped.rstrip()}{ending}"
        out.append(line)
    return "".join(out)


def notebook_cells(ipynb_json_text: str) -> list[str]:
    """The code cells of an ``.ipynb`` notebook (markdown/raw cells are
    dropped), with IPython-only lines commented out."""
    notebook = json.loads(ipynb_json_text)
    if not isinstance(notebook, dict):
        raise ValueError("not a Jupyter notebook: the top level is not a JSON object")
    if "cells" in notebook:  # nbformat 4
        raw_cells = notebook["cells"]
        source_key = "source"
    else:  # nbformat 3 kept code in worksheets[].cells[].input
        raw_cells = [c for ws in notebook.get("worksheets", []) for c in ws.get("cells", [])]
        source_key = "input"
    cells = []
    for cell in raw_cells:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get(source_key, "")
        if isinstance(source, list):
            source = "".join(source)
        cells.append(_disable_ipython_lines(source))
    return cells


# --------------------------------------------------------------------------
# Running cells


def _log(message: str) -> None:
    sys.stderr.write(f"[berth] {message}\n")
    sys.stderr.flush()


def _fail_request(message: str) -> None:
    _log(f"bad checkpoint request: {message}")
    _exit(EXIT_BAD_REQUEST)


def _exit(code: int) -> None:
    """Exit now. os._exit: a non-daemon thread started by a cell must not keep
    the checkpoint maker alive after its work is done."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed/odd stream must not block the exit
            pass
    os._exit(code)


def _read_request() -> dict:
    try:
        request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        _fail_request(f"stdin is not a JSON object: {exc}")
    if not isinstance(request, dict):
        _fail_request("stdin is not a JSON object")
    cells = request.get("cells")
    if not isinstance(cells, list) or not all(isinstance(c, str) for c in cells):
        _fail_request('"cells" must be a list of strings')
    serving = request.get("servingCell")
    if not isinstance(serving, int) or isinstance(serving, bool) or not 0 <= serving < len(cells):
        _fail_request(f'"servingCell" must be an index into "cells" (0..{len(cells) - 1})')
    out = request.get("out")
    if not isinstance(out, str) or not out:
        _fail_request('"out" must be a file path')
    return request


def _write_atomically(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_result(out: str, result: dict) -> None:
    data = json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    _write_atomically(out + ".json", data)


def run_cells(cells: list[str], namespace: dict) -> dict | None:
    """Execute ``cells`` in order in ``namespace``. Returns None on success,
    or the ``error`` object of the result file for the first failing cell."""
    for index, source in enumerate(cells):
        filename = f"<cell {index}>"
        berth_state.register_source(filename, source)
        started = time.monotonic()
        try:
            code = compile(source, filename, "exec")
            exec(code, namespace)
        except (Exception, SystemExit) as exc:  # SystemExit: a cell called exit()
            return {
                "cell": index,
                "error_name": type(exc).__name__,
                "error_message": str(exc),
                "traceback": berth_state.user_traceback(exc),
            }
        finally:
            sys.stdout.flush()
        _log(f"cell {index} done in {time.monotonic() - started:.3f} s")
    return None


def main() -> None:
    if berth_state.dill is None:
        sys.stderr.write(berth_state.dill_missing_message() + "\n")
        _exit(EXIT_NO_DILL)

    request = _read_request()
    cells, out = request["cells"], request["out"]

    # The cells' output is the run log: send stdout, at the Python and at the
    # file-descriptor level (C extensions, child processes), to stderr.
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import __main__

    namespace = __main__.__dict__
    berth_state.reset_namespace(namespace)  # drop the -c bootstrap's names (sys, berth_checkpoint)
    preloaded = set(sys.modules)

    try:
        error = run_cells(cells, namespace)
        if error is not None:
            _log(f"cell {error['cell']} raised {error['error_name']}: {error['error_message']}")
            _write_result(out, {"ok": False, "error": error})
            _exit(EXIT_FAILED)

        try:
            blob, variables, skipped = berth_state.snapshot(namespace)
        except berth_state.SnapshotError as exc:
            _log(str(exc))
            _write_result(out, {"ok": False, "error": {
                "cell": None, "error_name": type(exc).__name__,
                "error_message": str(exc), "traceback": [],
            }})
            _exit(EXIT_FAILED)

        imported = [name for name in list(sys.modules) if name not in preloaded]
        env = berth_state.environment_info(namespace, code=cells, modules=imported)
        _write_atomically(out, blob)
        _write_result(out, {"ok": True, **env, "variables": variables, "skipped": skipped})
    except BaseException as exc:  # noqa: BLE001 - report, then exit 2
        _log(f"internal error: {type(exc).__name__}: {exc}")
        import traceback

        traceback.print_exc()
        _exit(EXIT_BAD_REQUEST)

    for item in skipped:
        _log(f'skipped variable "{item["name"]}" ({item["type"]}): {item["reason"]}')
    _log(f"checkpoint written: {len(variables)} variables, {len(blob)} bytes, {len(skipped)} skipped")
    _exit(EXIT_OK)
