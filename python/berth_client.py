"""Save checkpoints to Berth and deploy nodes from a live Jupyter/IPython
kernel or a script.

    import berth_client
    berth_client.save_checkpoint(name="randomizer", code=SERVING_CELL_SOURCE)

or, in IPython/Jupyter::

    %load_ext berth_client

    %%berth_checkpoint --name randomizer          # save the live state
    output_data = generate_value(input_data)

    %berth_autocheckpoint on --keep 20            # a checkpoint after every cell
    %berth_pin CHECKPOINT_ID my-state             # pin the one you want

    %%berth_deploy randomizer --input input_data:dict --output output_data:dict
    output_data = generate_value(input_data)      # checkpoint + create/update + wait + curl

The magics run the cell in the kernel and, if it succeeded, upload the live
namespace together with the cell's code as the serving cell. Only the user's
variables are saved: IPython's own names (``In``, ``Out``, ``_``, ``_i3``,
``get_ipython``, ``exit``, ``open`` ... everything in the shell's
``user_ns_hidden``) stay out, so the checkpoint restores in a plain Python.

The upload is ``POST {url}/v1/checkpoints:upload`` with
``Content-Type: application/vnd.berth.checkpoint`` and a body made of one line
of UTF-8 JSON metadata, a newline, then the dill blob (see PROTOCOL.md).

Standard library (urllib) + dill only; IPython is never imported unless it is
already loaded.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import berth_state

DEFAULT_URL = "http://127.0.0.1:7700"
CONTENT_TYPE = "application/vnd.berth.checkpoint"
DEFAULT_KEEP = 10
SLOW_RECORDING_S = 2.0  # past this, a --sync autocheckpoint says (once) what a changed cell costs
MAX_KEEP = 1000


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


def _ipython_shell():
    """The running IPython shell, if there is one."""
    ipython = sys.modules.get("IPython")  # only if the process already uses IPython
    if ipython is None:
        return None
    try:
        return ipython.get_ipython()
    except Exception:  # noqa: BLE001
        return None


def _hidden_of(namespace: dict) -> dict | None:
    """The shell's own names (``user_ns_hidden``) when ``namespace`` is the
    running shell's user namespace."""
    shell = _ipython_shell()
    if shell is not None and getattr(shell, "user_ns", None) is namespace:
        return getattr(shell, "user_ns_hidden", None)
    return None


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


def _send(method: str, url: str, path: str, token: str | None, data: bytes | None,
          content_type: str | None, timeout: float):
    """One request to Berth; the parsed JSON answer, or BerthError."""
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{url}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise _error_from_response(exc.code, exc.read() or b"", bool(token)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BerthError("UNREACHABLE", f"cannot reach Berth at {url}: {reason}") from None
    try:
        return json.loads(body.decode("utf-8")) if body.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise BerthError("BAD_RESPONSE", f"Berth answered with non-JSON: {body[:200]!r}") from None


def _api(method: str, path: str, body=None, url: str | None = None, token: str | None = None,
         timeout: float = 60.0):
    """A JSON call to Berth's control API."""
    url = (url or _default_url()).rstrip("/")
    if token is None:
        token = _default_token()
    data = None if body is None else json.dumps(body).encode("utf-8")
    return _send(method, url, path, token, data, "application/json" if data is not None else None, timeout)


def save_checkpoint(name: str | None = None, code: str | None = None, namespace: dict | None = None,
                    url: str | None = None, token: str | None = None, python: str | None = None,
                    timeout: float = 300.0, folder: str | None = None) -> dict:
    """Snapshot a live namespace and upload it to Berth as a checkpoint.

    name       checkpoint name (the server may pick one when None)
    code       the serving cell's source; sent as null when None
    namespace  defaults to the IPython user namespace, else the caller's globals
    url        defaults to $BERTH_URL or http://127.0.0.1:7700
    token      defaults to $BERTH_TOKEN or the file $BERTH_HOME/admin-token
               (BERTH_HOME defaults to ~/.berth)
    python     the interpreter Berth should serve it with; defaults to this
               one (sys.executable)
    folder     the folder it goes to; defaults to the token's

    Returns the server's parsed JSON answer; raises BerthError.
    """
    if namespace is None:
        shell = _ipython_shell()
        namespace = getattr(shell, "user_ns", None)
        if namespace is None:
            namespace = sys._getframe(1).f_globals
    upload = _Upload(namespace, code, hidden=_hidden_of(namespace))
    response, _ = upload.send(name, url, token, python, timeout, folder)
    return response


def pin(ref: str, name: str, url: str | None = None, token: str | None = None, folder: str | None = None) -> dict:
    """Pin a checkpoint (by id or name) under ``name``: only pinned
    checkpoints back nodes, and pinned ones are never pruned."""
    query = f"?folderId={urllib.parse.quote(folder)}" if folder else ""
    return _api("PATCH", f"/v1/checkpoints/{urllib.parse.quote(ref, safe='')}{query}", {"name": name}, url, token)


class _Upload:
    """One snapshot of a namespace, made once, then sent (or not)."""

    def __init__(self, namespace: dict, code: str | None, hidden: dict | None = None, env: dict | None = None):
        self.code = code
        self.blob, self.variables, self.skipped = berth_state.snapshot(namespace, hidden)
        self.env = env or berth_state.environment_info(namespace, code=[code] if code else (), hidden=hidden)

    def send(self, name, url, token, python, timeout, folder=None, extra: dict | None = None) -> tuple[dict, dict]:
        """Uploads; returns the server's answer and the metadata that was sent."""
        url = (url or _default_url()).rstrip("/")
        if token is None:
            token = _default_token()
        metadata = {
            "name": name,
            "code": self.code,
            "python": self.env["python"],
            "executable": python or self.env["executable"],
            "packages": self.env["packages"],
            "requires": self.env["requires"],
            "variables": self.variables,
            "skipped": self.skipped,
            "source": "kernel",
            **(extra or {}),
        }
        query = f"?folderId={urllib.parse.quote(folder)}" if folder else ""
        answer = _send("POST", url, f"/v1/checkpoints:upload{query}", token,
                       build_upload_body(metadata, self.blob), CONTENT_TYPE, timeout)
        return answer, metadata


def _upload(name, code, namespace, url, token, python, timeout) -> tuple[dict, dict]:
    """save_checkpoint's work; also returns the metadata that was sent."""
    return _Upload(namespace, code, hidden=_hidden_of(namespace)).send(name, url, token, python, timeout)


# ---------------------------------------------------------------------------
# Option parsing for the magics


class _Usage(ValueError):
    pass


def _parse_options(line: str, usage: str, values: tuple = (), repeated: tuple = (), flags: tuple = (),
                   positional: int = 0) -> dict:
    """``--key VALUE`` / ``--key=VALUE`` options (``repeated`` ones collect
    into lists), ``--flag`` switches, then exactly ``positional`` words."""
    options: dict = {k: None for k in values}
    options.update({k: [] for k in repeated})
    options.update({k: False for k in flags})
    words_left: list = []
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise _Usage(f"{exc}; usage: {usage}") from None
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            key, eq, value = word[2:].partition("=")
            if key in flags and not eq:
                options[key] = True
            elif key in values or key in repeated:
                if not eq:
                    i += 1
                    if i >= len(words):
                        raise _Usage(f"--{key} needs a value; usage: {usage}")
                    value = words[i]
                if key in repeated:
                    options[key].append(value)
                else:
                    options[key] = value
            else:
                raise _Usage(f"unknown option {word!r}; usage: {usage}")
        else:
            words_left.append(word)
        i += 1
    if len(words_left) != positional:
        raise _Usage(f"expected {positional or 'no'} argument{'s' if positional != 1 else ''}, got {len(words_left)}; usage: {usage}")
    options["args"] = words_left
    return options


_CHECKPOINT_USAGE = "%%berth_checkpoint [--name NAME] [--folder FOLDER] [--url URL]"


def _parse_magic_line(line: str) -> dict:
    """Options of ``%%berth_checkpoint``."""
    o = _parse_options(line, _CHECKPOINT_USAGE, values=("name", "url", "folder"))
    return {"name": o["name"], "url": o["url"], "folder": o["folder"]}


def _parse_variables(specs: list, flag: str) -> list:
    """``name:type`` items (the type may itself hold ``:``-free brackets)."""
    out = []
    for spec in specs:
        name, sep, type_ = spec.partition(":")
        if not sep or not name.strip() or not type_.strip():
            raise _Usage(f"{flag} takes name:type, e.g. {flag} x:float (got {spec!r})")
        out.append({"name": name.strip(), "type": type_.strip()})
    return out


def _whole(value, flag: str, low: int, high: int) -> int | None:
    """An optional whole-number option within [low, high]."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise _Usage(f"{flag} must be a whole number, got {value!r}") from None
    if not low <= n <= high:
        raise _Usage(f"{flag} must be between {low} and {high}, got {n}")
    return n


# ---------------------------------------------------------------------------
# %berth_autocheckpoint


def _is_read_only(source: str) -> bool:
    """True when a cell can bind nothing and call nothing: only expression
    statements without calls, walrus, await or yield (``x``, ``df.shape``,
    ``a + b``). Such a cell leaves the namespace as it was when no name was
    rebound, so no snapshot is needed to know it did not change."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    if not all(isinstance(stmt, ast.Expr) for stmt in tree.body):
        return False
    return not any(isinstance(n, (ast.Call, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom))
                   for n in ast.walk(tree))


def _is_berth_magic_cell(raw: str) -> bool:
    return raw.lstrip().startswith(("%berth_", "%%berth_"))


def _serving_code(raw: str) -> str:
    """The cell as plain Python: IPython-only lines (``%magic``, ``!cmd``)
    commented out, as for notebooks (the worker runs plain Python)."""
    import berth_checkpoint  # noqa: PLC0415 - only the kernel path needs it
    code = berth_checkpoint._disable_ipython_lines(raw)
    return code if code.strip() else "pass\n"  # a node needs a serving cell; a blank one does nothing


class _AutoCheckpoint:
    """After every cell the kernel runs successfully, record an unpinned
    checkpoint of the live namespace, tagged with the cell that made it. The
    server keeps this kernel's most recent ``keep`` of them (pinned ones are
    never pruned).

    Cheap when nothing changed: a cell that rebinds no name and can call
    nothing (``df.shape``) is skipped at once; any other cell is hashed
    (``berth_state.state_digest``: the C pickler, not dill) and skipped when
    the hash equals the last one recorded.

    Off the user's path when it did change: the dill snapshot (pure Python,
    seconds for a large state of Python objects) and the upload run in a
    forked child, which sees the namespace exactly as the cell left it
    (copy-on-write) while the kernel goes on. One recording runs at a time, so
    they reach the server in order: a changed cell that finds the previous
    recording still running waits for it. The child only pickles, uploads and
    writes one JSON line to a pipe; the kernel reads it at the next cell (and
    says what failed there). ``--sync`` (or a Python without ``os.fork``)
    records in the kernel itself."""

    CHILD_TIMEOUT_S = 300.0

    def __init__(self, shell):
        self.shell = shell
        self.enabled = False
        self.keep = DEFAULT_KEEP
        self.url = None
        self.folder = None
        self.verbose = False
        self.sync = not hasattr(os, "fork")
        self.session = uuid.uuid4().hex[:16]  # this kernel's recordings; pruned together
        self.last_fingerprint = None
        self.last_digest = None
        self.digest_memo: dict = {}  # hashes of immutable values, by name (see state_digest)
        self.warned_slow = False
        self.suspended = 0  # > 0 while a berth magic runs its own cell
        self.child = None  # the recording in flight: {pid, fd, number, started, digest}
        self.stats = {"recorded": 0, "unchanged": 0, "failed": 0}

    def post_run_cell(self, result) -> None:
        self.collect(block=False)
        if not self.enabled or self.suspended:
            return
        info = getattr(result, "info", None)
        raw = getattr(info, "raw_cell", None)
        if not isinstance(raw, str) or _is_berth_magic_cell(raw):
            return
        if not getattr(result, "success", False):
            return  # a failed cell leaves a half-made state: nothing worth pinning
        try:
            self._record(raw, getattr(result, "execution_count", None))
        except Exception as exc:  # noqa: BLE001 - a recording must never break the user's cell
            self.stats["failed"] += 1
            print(f"berth: autocheckpoint not recorded: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _record(self, raw: str, number) -> None:
        namespace = self.shell.user_ns
        hidden = getattr(self.shell, "user_ns_hidden", None)
        fingerprint = berth_state.fingerprint(namespace, hidden)
        if fingerprint == self.last_fingerprint and _is_read_only(self.shell.transform_cell(raw)):
            self.stats["unchanged"] += 1
            return
        digest = berth_state.state_digest(namespace, hidden, self.digest_memo)
        if digest == self.last_digest:
            self.last_fingerprint = fingerprint
            self.stats["unchanged"] += 1
            return
        self.collect(block=True)  # one at a time: recordings reach the server in order
        if not self.enabled:
            return  # the one that just ended was refused: recording is off now
        extra = {"cell": {"number": number, "code": raw},
                 "autosave": {"session": self.session, "keep": self.keep}}
        # counted as recorded at once, so the next unchanged cell is skipped; a failure resets it
        self.last_fingerprint, self.last_digest = fingerprint, digest
        started = time.monotonic()
        if self.sync:
            self._finish(self._snapshot_and_send(namespace, hidden, raw, extra), number, started)
        else:
            self._fork(namespace, hidden, raw, extra, number, started)

    def _snapshot_and_send(self, namespace, hidden, raw, extra, env=None) -> dict:
        """The recording itself, in whichever process runs it: an outcome dict."""
        try:
            upload = _Upload(namespace, _serving_code(raw), hidden=hidden, env=env)
            saved, _ = upload.send(None, self.url, None, None, 60.0, self.folder, extra)
            return {"ok": True, "id": saved.get("id"), "variables": len(upload.variables)}
        except BerthError as exc:
            return {"ok": False, "code": exc.code, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - reported to the kernel, never raised
            return {"ok": False, "code": type(exc).__name__, "error": f"{type(exc).__name__}: {exc}"}

    def _fork(self, namespace, hidden, raw, extra, number, started) -> None:
        # what is installed and what the history imports are cached in this process: a child's
        # cache would die with it, and a fresh scan costs a few hundred ms every time
        env = berth_state.environment_info(namespace, code=[_serving_code(raw)], hidden=hidden)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: pickle, upload, report, and leave without running any cleanup
            try:
                os.close(read_fd)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):  # the kernel's streams are not this process's to write
                    os.dup2(devnull, fd)
                sys.stdout = sys.stderr = open(devnull, "w", closefd=False)
                import warnings  # noqa: PLC0415
                warnings.simplefilter("ignore")
                outcome = self._snapshot_and_send(namespace, hidden, raw, extra, env)
                os.write(write_fd, json.dumps(outcome).encode("utf-8")[:60_000])
            finally:
                os._exit(0)
        os.close(write_fd)
        self.child = {"pid": pid, "fd": read_fd, "number": number, "started": started}

    def collect(self, block: bool) -> None:
        """Takes in the outcome of the recording in flight: at once when it has
        ended, else (``block``) after waiting for it, up to CHILD_TIMEOUT_S."""
        child = self.child
        if child is None:
            return
        deadline = time.monotonic() + self.CHILD_TIMEOUT_S
        while True:
            try:
                done, status = os.waitpid(child["pid"], os.WNOHANG)
            except ChildProcessError:
                done, status = child["pid"], 0
            if done:
                break
            if not block:
                return
            if time.monotonic() > deadline:
                os.kill(child["pid"], 9)
                os.waitpid(child["pid"], 0)
                status = -1
                break
            time.sleep(0.01)
        chunks = []
        while True:
            chunk = os.read(child["fd"], 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(child["fd"])
        self.child = None
        try:
            outcome = json.loads(b"".join(chunks).decode("utf-8"))
        except ValueError:
            why = "it passed its time limit" if status == -1 else f"the recording process ended with status {status}"
            outcome = {"ok": False, "code": "RECORDING_FAILED", "error": why}
        self._finish(outcome, child["number"], child["started"])

    def _finish(self, outcome: dict, number, started: float) -> None:
        took = time.monotonic() - started
        if not outcome.get("ok"):
            self.stats["failed"] += 1
            self.last_fingerprint = self.last_digest = None  # the next cell tries again
            if outcome.get("code") in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                self.enabled = False
                print(f"berth: autocheckpoint turned off: {outcome.get('error')}", file=sys.stderr)
            else:
                print(f"berth: autocheckpoint after cell [{number}] not recorded: {outcome.get('error')}", file=sys.stderr)
            return
        self.stats["recorded"] += 1
        if self.verbose:
            print(f"berth: checkpoint {outcome.get('id')} after cell [{number}] ({outcome.get('variables')} variables, {took:.2f} s)")
        elif self.sync and took > SLOW_RECORDING_S and not self.warned_slow:
            self.warned_slow = True
            print(f"berth: recording this state took {took:.1f} s (once per changed cell; unchanged cells cost "
                  f"no upload); %berth_autocheckpoint off stops it", file=sys.stderr)

    def recent(self) -> list:
        """This kernel's recorded checkpoints still kept, newest first."""
        query = f"?folderId={urllib.parse.quote(self.folder)}" if self.folder else ""
        listing = _api("GET", f"/v1/checkpoints{query}", url=self.url)
        mine = [c for c in listing.get("checkpoints", [])
                if isinstance(c.get("autosave"), dict) and c["autosave"].get("session") == self.session]
        return sorted(mine, key=lambda c: c.get("createdAt", ""), reverse=True)


_AUTO_USAGE = "%berth_autocheckpoint on|off|status [--keep N] [--folder FOLDER] [--url URL] [--verbose] [--sync]"


def _autocheckpoint_magic(auto: _AutoCheckpoint, line: str) -> None:
    o = _parse_options(line or "status", _AUTO_USAGE, values=("keep", "folder", "url"), flags=("verbose", "sync"), positional=1)
    what = o["args"][0]
    if what not in ("on", "off", "status"):
        raise _Usage(f"say on, off or status, not {what!r}; usage: {_AUTO_USAGE}")
    if what == "on":
        keep = _whole(o["keep"], "--keep", 1, MAX_KEEP)
        auto.keep = keep if keep is not None else auto.keep
        auto.url, auto.folder, auto.verbose = o["url"] or auto.url, o["folder"] or auto.folder, o["verbose"]
        auto.sync = o["sync"] or not hasattr(os, "fork")
        auto.enabled = True
        print(f"berth: a checkpoint after every cell that changes the state; the most recent {auto.keep} are kept "
              f"(pin one: %berth_pin ID NAME)")
    elif what == "off":
        auto.collect(block=True)
        auto.enabled = False
        print("berth: autocheckpoint off")
    else:
        auto.collect(block=True)  # what is in flight counts
        state = f"on, keeping {auto.keep}" if auto.enabled else "off"
        s = auto.stats
        print(f"berth: autocheckpoint {state}; {s['recorded']} recorded, {s['unchanged']} unchanged cells skipped, {s['failed']} failed")
        if s["recorded"]:
            for c in auto.recent():
                cell = c.get("cell") or {}
                first = (cell.get("code") or "").strip().splitlines()[:1]
                label = f" pinned as {c['name']!r}" if c.get("name") else ""
                print(f"  {c['id']}  [{cell.get('number')}] {first[0][:60] if first else ''}{label}")


# ---------------------------------------------------------------------------
# %%berth_deploy


_DEPLOY_USAGE = ("%%berth_deploy NAME --input NAME:TYPE ... --output NAME:TYPE ... "
                 "[--folder FOLDER] [--min N] [--max N] [--wait SECONDS] [--url URL]")

# Names and checkpoint names: 2-63 characters (see Berth's node-spec rules).
_MAX_NAME = 63


def _checkpoint_name(node: str, attempt: int) -> str:
    """``NAME-YYYYMMDD-HHMMSS`` (``-N`` on a retry), within the name rules."""
    suffix = time.strftime("-%Y%m%d-%H%M%S", time.gmtime()) + (f"-{attempt}" if attempt else "")
    stem = node[: _MAX_NAME - len(suffix)].rstrip(" -_")
    return stem + suffix


def _example_value(value, type_: str):
    """What to put in the printed call for one input: the kernel's current
    value when it is small JSON, else a placeholder of the declared type."""
    try:
        text = json.dumps(value)
        if len(text) <= 200:
            return value
    except (TypeError, ValueError):
        pass
    base = type_.split("[", 1)[0].strip()
    return {"int": 0, "float": 0.0, "str": "", "bool": False, "list": [], "dict": {}, "bytes": ""}.get(base)


def curl_line(url: str, node: dict, example_input: dict) -> str:
    """A pasteable call of a cell node (the token comes from $BERTH_TOKEN)."""
    body = json.dumps({"folder_id": node.get("folderId"), "input": example_input}, ensure_ascii=False)
    body = body.replace("'", "'\\''")
    return (f'curl -X POST "{url}/datasphere/v1/nodes/{node["id"]}:execute" \\\n'
            f'     -H "Authorization: Bearer $BERTH_TOKEN" -H \'Content-Type: application/json\' \\\n'
            f"     --data-raw '{body}'")


def _find_node(name: str, folder: str, url) -> dict | None:
    listing = _api("GET", f"/v1/nodes?folderId={urllib.parse.quote(folder)}", url=url)
    found = [n for n in listing.get("nodes", []) if n.get("name") == name and n.get("folderId") == folder]
    return found[0] if found else None


def _wait(node_id: str, url, timeout: float, rollout: bool) -> dict:
    """Polls the node until it serves (a created node Healthy, an updated one's
    rollout Complete), printing each change of state. Raises BerthError when
    it cannot serve (Unhealthy with a reason, rollout Failed) or on timeout."""
    started = time.monotonic()
    last = None
    while True:
        node = _api("GET", f"/v1/nodes/{node_id}", url=url)
        instances = ", ".join(i.get("status", "?") for i in node.get("instances", [])) or "no instances yet"
        r = node.get("rollout") if rollout else None
        if r:
            line = (f"revision {r.get('revision')}: {r.get('healthy') or 0} new healthy, "
                    f"{r.get('outdated') or 0} old — {r.get('state')}")
        else:
            line = f"{node.get('status')} — {instances}"
        if line != last:
            print(f"berth: [{time.monotonic() - started:5.1f}s] node {node.get('name')}: {line}", flush=True)
            last = line
        if r:
            if r.get("state") == "Complete":
                return node
            if r.get("state") == "Failed":
                raise BerthError("ROLLOUT_FAILED", f"the rollout to revision {r.get('revision')} failed, "
                                 f"revision {node.get('revision')} keeps serving: {r.get('reason') or 'no reason given'}")
        elif node.get("status") == "Healthy":
            return node
        elif node.get("status") == "Unhealthy" and not any(i.get("status") == "Healthy" for i in node.get("instances", [])):
            reasons = [t.get("reason") for t in node.get("transitions", []) if t.get("reason")]
            errors = [i.get("lastError") for i in node.get("instances", []) if i.get("lastError")]
            raise BerthError("NODE_UNHEALTHY", f"node {node.get('name')} cannot become Healthy: "
                             f"{(errors or reasons or ['no reason given'])[-1]} (berth node get {node_id}; it keeps retrying)")
        if time.monotonic() - started > timeout:
            raise BerthError("WAIT_TIMEOUT", f"node {node.get('name')} is not serving after {timeout:.0f}s ({line}); "
                             f"follow it with: berth node get {node_id}")
        time.sleep(0.5)


def deploy(shell, line: str, cell: str) -> dict | None:
    """``%%berth_deploy``: run the cell, checkpoint the live state, create or
    update the node, wait until it serves, print how to call it. Returns the
    node, or None when something failed (said on stderr)."""
    try:
        o = _parse_options(line, _DEPLOY_USAGE, values=("folder", "min", "max", "wait", "url"),
                           repeated=("input", "output"), positional=1)
        name = o["args"][0]
        inputs = _parse_variables(o["input"], "--input")
        outputs = _parse_variables(o["output"], "--output")
        if not outputs:
            raise _Usage(f"declare at least one --output; usage: {_DEPLOY_USAGE}")
        low, high = _whole(o["min"], "--min", 0, 1000), _whole(o["max"], "--max", 1, 1000)
        wait = float(o["wait"]) if o["wait"] is not None else 300.0
    except (_Usage, ValueError) as exc:
        print(f"berth: {exc}", file=sys.stderr)
        return None
    url = (o["url"] or _default_url()).rstrip("/")

    result = shell.run_cell(cell)
    if not getattr(result, "success", False):
        print("berth: the cell failed; nothing was deployed", file=sys.stderr)
        return None
    try:
        upload = _Upload(shell.user_ns, cell, hidden=getattr(shell, "user_ns_hidden", None))
    except (berth_state.DillMissingError, berth_state.SnapshotError) as exc:
        print(f"berth: nothing deployed: {exc}", file=sys.stderr)
        return None
    extra = {"cell": {"number": getattr(shell, "execution_count", None), "code": cell}}
    checkpoint = None
    try:
        for attempt in range(5):
            try:
                checkpoint, _ = upload.send(_checkpoint_name(name, attempt), url, None, None, 300.0, o["folder"], extra)
                break
            except BerthError as exc:
                if exc.code != "NAME_TAKEN" or attempt == 4:
                    raise
        assert checkpoint is not None
        folder = checkpoint["folderId"]
        print(f"berth: saved checkpoint {checkpoint['id']} ({checkpoint.get('name')}): {len(upload.variables)} variables")
        for item in upload.skipped:
            print(f"berth: skipped variable {item['name']!r} ({item['type']}): {item['reason']}")
        existing = _find_node(name, folder, url)
        scaling = {}
        if low is not None:
            scaling["minInstances"] = low
        if high is not None:
            scaling["maxInstances"] = high
        elif low is not None and existing is None:
            scaling["maxInstances"] = low
        try:
            if existing is None:
                spec = {"kind": "cell", "name": name, "folderId": folder, "checkpointId": checkpoint["id"],
                        "inputs": inputs, "outputs": outputs}
                if scaling:
                    spec["scaling"] = scaling
                node = _api("POST", "/v1/nodes", spec, url=url)
                print(f"berth: created node {name} ({node['id']}) in folder {folder}")
                rolling = False
            else:
                patch = {"checkpointId": checkpoint["id"], "inputs": inputs, "outputs": outputs}
                if scaling:
                    patch["scaling"] = scaling
                node = _api("PATCH", f"/v1/nodes/{existing['id']}", patch, url=url)
                rolling = bool(node.get("rollout")) and node["rollout"].get("state") == "Progressing"
                target = (node.get("rollout") or {}).get("revision", node.get("revision"))
                print(f"berth: updating node {name} ({node['id']}) to revision {target}")
        except BerthError:
            # the node was refused (a bad type, a quota, a role): the checkpoint made for it goes too
            try:
                _api("DELETE", f"/v1/checkpoints/{checkpoint['id']}", url=url)
            except BerthError:
                pass
            raise
        node = _wait(node["id"], url, wait, rolling)
    except BerthError as exc:
        print(f"berth: not deployed: {exc}", file=sys.stderr)
        return None
    example = {v["name"]: _example_value(shell.user_ns.get(v["name"]), v["type"]) for v in inputs}
    print(f"berth: node {node['name']} ({node['id']}) is Healthy, revision {node.get('revision')}. Call it:")
    print(curl_line(url, node, example))
    return node


# ---------------------------------------------------------------------------
# IPython integration

_PIN_USAGE = "%berth_pin CHECKPOINT NAME [--folder FOLDER] [--url URL]"


def load_ipython_extension(ip) -> None:
    """``%load_ext berth_client``: registers ``%%berth_checkpoint``,
    ``%berth_autocheckpoint``, ``%berth_pin`` and ``%%berth_deploy``."""
    auto = getattr(ip, "_berth_autocheckpoint", None)
    if auto is None:
        auto = _AutoCheckpoint(ip)
        ip._berth_autocheckpoint = auto  # on the shell, not in the user's namespace
        events = getattr(ip, "events", None)
        if events is not None:
            events.register("post_run_cell", auto.post_run_cell)

    def berth_checkpoint(line, cell):
        try:
            options = _parse_magic_line(line)
        except ValueError as exc:
            print(f"berth: {exc}", file=sys.stderr)
            return
        auto.suspended += 1
        try:
            result = ip.run_cell(cell)
        finally:
            auto.suspended -= 1
        if not getattr(result, "success", False):
            print("berth: the cell failed; no checkpoint was saved", file=sys.stderr)
            return
        try:
            upload = _Upload(ip.user_ns, cell, hidden=getattr(ip, "user_ns_hidden", None))
            extra = {"cell": {"number": getattr(ip, "execution_count", None), "code": cell}}
            saved, sent = upload.send(options["name"], options["url"], None, None, 300.0, options["folder"], extra)
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

    def berth_autocheckpoint(line):
        try:
            _autocheckpoint_magic(auto, line)
        except (_Usage, BerthError) as exc:
            print(f"berth: {exc}", file=sys.stderr)

    def berth_pin(line):
        try:
            o = _parse_options(line, _PIN_USAGE, values=("folder", "url"), positional=2)
            c = pin(o["args"][0], o["args"][1], url=o["url"], folder=o["folder"])
        except (_Usage, BerthError) as exc:
            print(f"berth: {exc}", file=sys.stderr)
            return
        print(f"berth: checkpoint {c.get('id')} pinned as {c.get('name')!r}")

    def berth_deploy(line, cell):
        auto.suspended += 1
        try:
            deploy(ip, line, cell)
        finally:
            auto.suspended -= 1

    ip.register_magic_function(berth_checkpoint, magic_kind="cell", magic_name="berth_checkpoint")
    ip.register_magic_function(berth_autocheckpoint, magic_kind="line", magic_name="berth_autocheckpoint")
    ip.register_magic_function(berth_pin, magic_kind="line", magic_name="berth_pin")
    ip.register_magic_function(berth_deploy, magic_kind="cell", magic_name="berth_deploy")
