"""Save a checkpoint to Berth from a live Jupyter/IPython kernel or a script.

    import berth_client
    berth_client.save_checkpoint(name="randomizer", code=SERVING_CELL_SOURCE)

or, in IPython/Jupyter::

    %load_ext berth_client

    %%berth_checkpoint --name randomizer
    output_data = generate_value(input_data)

The magic runs the cell in the kernel and, if it succeeded, uploads the live
namespace together with the cell's code as the serving cell.

The upload is ``POST {url}/v1/checkpoints:upload`` with
``Content-Type: application/vnd.berth.checkpoint`` and a body made of one line
of UTF-8 JSON metadata, a newline, then the dill blob (see PROTOCOL.md).

Standard library (urllib) + dill only; IPython is never imported unless it is
already loaded.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import urllib.error
import urllib.request

import berth_state

DEFAULT_URL = "http://127.0.0.1:7700"
CONTENT_TYPE = "application/vnd.berth.checkpoint"


class BerthError(Exception):
    """An error answered by Berth (``{code, message, details}``) or met while
    talking to it."""

    def __init__(self, code: str, message: str, details: dict | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}


def _default_url() -> str:
    return os.environ.get("BERTH_URL") or DEFAULT_URL


def _default_token() -> str | None:
    token = os.environ.get("BERTH_TOKEN")
    if token:
        return token.strip()
    home = os.environ.get("BERTH_HOME") or os.path.join(os.path.expanduser("~"), ".berth")
    try:
        with open(os.path.join(home, "admin-token"), encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _ipython_namespace() -> dict | None:
    """The user namespace of the running IPython shell, if there is one."""
    ipython = sys.modules.get("IPython")  # only if the process already uses IPython
    if ipython is None:
        return None
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001
        return None
    return getattr(shell, "user_ns", None)


def build_upload_body(metadata: dict, blob: bytes) -> bytes:
    """One line of JSON metadata + b"\\n" + the dill blob. json.dumps escapes
    newlines inside strings, so the first b"\\n" always ends the metadata."""
    line = json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return line + b"\n" + blob


def _error_from_response(status: int, body: bytes, had_token: bool) -> BerthError:
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and "code" in data:
        error = BerthError(str(data["code"]), str(data.get("message", "")), data.get("details") or {})
    else:
        text = body.decode("utf-8", "replace").strip()[:500]
        error = BerthError(f"HTTP_{status}", text or f"HTTP status {status}")
    if status == 401 and not had_token:
        error.message += " (no token: set BERTH_TOKEN or write it to $BERTH_HOME/admin-token)"
        error.args = (f"{error.code}: {error.message}",)
    return error


def save_checkpoint(name: str | None = None, code: str | None = None, namespace: dict | None = None,
                    url: str | None = None, token: str | None = None, python: str | None = None,
                    timeout: float = 300.0) -> dict:
    """Snapshot a live namespace and upload it to Berth as a checkpoint.

    name       checkpoint name (the server may pick one when None)
    code       the serving cell's source; sent as null when None
    namespace  defaults to the IPython user namespace, else the caller's globals
    url        defaults to $BERTH_URL or http://127.0.0.1:7700
    token      defaults to $BERTH_TOKEN or the file $BERTH_HOME/admin-token
               (BERTH_HOME defaults to ~/.berth)
    python     the interpreter Berth should serve it with; defaults to this
               one (sys.executable)

    Returns the server's parsed JSON answer; raises BerthError.
    """
    if namespace is None:
        namespace = _ipython_namespace()
        if namespace is None:
            namespace = sys._getframe(1).f_globals
    response, _ = _upload(name, code, namespace, url, token, python, timeout)
    return response


def _upload(name, code, namespace, url, token, python, timeout) -> tuple[dict, dict]:
    """save_checkpoint's work; also returns the metadata that was sent."""
    url = (url or _default_url()).rstrip("/")
    if token is None:
        token = _default_token()

    blob, variables, skipped = berth_state.snapshot(namespace)
    env = berth_state.environment_info(namespace, code=[code] if code else ())
    if python:
        env["executable"] = python
    metadata = {
        "name": name,
        "code": code,
        "python": env["python"],
        "executable": env["executable"],
        "packages": env["packages"],
        "requires": env["requires"],
        "variables": variables,
        "skipped": skipped,
        "source": "kernel",
    }
    headers = {"Content-Type": CONTENT_TYPE, "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{url}/v1/checkpoints:upload", data=build_upload_body(metadata, blob),
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise _error_from_response(exc.code, exc.read() or b"", bool(token)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BerthError("UNREACHABLE", f"cannot reach Berth at {url}: {reason}") from None
    try:
        answer = json.loads(body.decode("utf-8")) if body.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise BerthError("BAD_RESPONSE", f"Berth answered with non-JSON: {body[:200]!r}") from None
    return answer, metadata


# ---------------------------------------------------------------------------
# IPython integration


def _parse_magic_line(line: str) -> dict:
    """Options of ``%%berth_checkpoint [--name NAME] [--url URL]``."""
    options: dict = {"name": None, "url": None}
    words = shlex.split(line)
    i = 0
    while i < len(words):
        word = words[i]
        key, eq, value = word.partition("=")
        if key in ("--name", "--url"):
            if not eq:
                i += 1
                if i >= len(words):
                    raise ValueError(f"{key} needs a value")
                value = words[i]
            options[key[2:]] = value
        else:
            raise ValueError(f"unknown option {word!r}; usage: %%berth_checkpoint [--name NAME] [--url URL]")
        i += 1
    return options


def load_ipython_extension(ip) -> None:
    """``%load_ext berth_client``: registers the ``%%berth_checkpoint`` cell magic."""

    def berth_checkpoint(line, cell):
        try:
            options = _parse_magic_line(line)
        except ValueError as exc:
            print(f"berth: {exc}", file=sys.stderr)
            return
        result = ip.run_cell(cell)
        if not getattr(result, "success", False):
            print("berth: the cell failed; no checkpoint was saved", file=sys.stderr)
            return
        try:
            saved, sent = _upload(options["name"], cell, ip.user_ns, options["url"], None, None, 300.0)
        except (BerthError, berth_state.DillMissingError, berth_state.SnapshotError) as exc:
            print(f"berth: checkpoint not saved: {exc}", file=sys.stderr)
            return
        if not isinstance(saved, dict):
            saved = {}
        label = saved.get("name") or sent["name"]
        print(f"berth: saved checkpoint {saved.get('id')}" + (f" ({label})" if label else "")
              + f": {len(sent['variables'])} variables")
        for item in sent["skipped"]:
            print(f"berth: skipped variable {item['name']!r} ({item['type']}): {item['reason']}")

    ip.register_magic_function(berth_checkpoint, magic_kind="cell", magic_name="berth_checkpoint")
