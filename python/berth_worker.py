"""Berth instance worker: restores a checkpoint and runs the serving cell on
request, speaking a small framed protocol over a Unix socket or TCP.

Invoked by the Node control plane as::

    PY -c "import sys; sys.path.insert(0, '<dir>'); import berth_worker; berth_worker.main()"

with its configuration as JSON on stdin (read to EOF; Berth's sandbox passes it so,
keeping the environment free of BERTH_* variables) or, when set, in the environment
variable ``BERTH_WORKER_CONFIG``::

    {"socket": "/path/to/unix.sock", "checkpoint": "/path/blob",
     "code": "<serving cell source>", "requires": [{"name", "version"}],
     "inputs": [{"name", "type"}], "outputs": [{"name", "type"}],
     "maxResponseBytes": 16777216}

Optional keys: "parentPid" (the controller's pid: the worker exits at once if
its parent is already another process, closing the startup window before
PR_SET_PDEATHSIG is set), "maxRequestBytes" (frame size limit, default
256 MiB), "secret" (every connection must start with a HELLO frame carrying
it; see PROTOCOL.md), "listen": {"tcp": {"host", "port"}} (TCP instead of
"socket"; port 0 picks one, written to "portFile") and "checkpoint" as
{"url", "sha256", "token"} (fetched from Berth and verified instead of read).

Types: int, float, str, bool, list, dict, bytes, any, list[T], ndarray[dtype,
shape...] and dataframe (berth_types.py). Inputs may carry a "default" (JSON),
used when a call leaves them out. See PROTOCOL.md for the wire format; the
constants below are the reference.

Lifecycle: the socket is bound and served first (PINGs answer "loading"),
then the checkpoint is restored in the main thread; the state becomes "ready",
or "failed" with an error text, in which case the worker stays up answering
PINGs until the controller kills it. Exit codes: 0 after SIGTERM/SIGINT,
1 when the parent process is gone, 2 for a bad configuration or an unusable
socket path. stdout/stderr are the instance log; Berth's lines start with
``[berth]``.

Semantics worth knowing: the interpreter state PERSISTS between calls, exactly
like a notebook kernel that keeps running the serving cell: inputs are bound
into ``__main__.__dict__``, the serving cell runs there, and whatever it
defines or changes (counters, caches, a stale output variable the cell did not
reassign) is seen by the next call. Calls therefore run one at a time under a
global lock; PINGs never take it, so health checks answer while a call runs.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import hmac
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

import __main__

import berth_state
import berth_types

# ---------------------------------------------------------------------------
# Protocol constants. Every frame, both directions:
#   4-byte big-endian unsigned payload length | 1 type byte | payload

HEADER = struct.Struct(">IB")

REQ_EXECUTE = 0x01  # payload: UTF-8 JSON object; its "input" key is used
REQ_PING = 0x02  # empty payload
REQ_HELLO = 0x03  # the instance secret (64 hex characters): the first frame of every connection when "secret" is set

RESP_OK = 0x81  # {"output": {...}}
RESP_USER_ERROR = 0x82  # {"error_name", "error_message", "traceback": [lines]}
RESP_CALL_ERROR = 0x83  # {"code", "message", "details"}
RESP_PONG = 0x84  # {"state", "error", "pid", "refused"}
RESP_WELCOME = 0x85  # empty: the handshake passed

# The handshake: a HELLO frame is tiny; anything longer is refused unread, and a client that
# sends nothing is dropped after this long (it must not hold a thread).
MAX_HELLO_BYTES = 256
HELLO_TIMEOUT_S = 10.0
# Connections still in their handshake at once; past it, new ones are closed at once.
MAX_UNAUTHENTICATED = 64

NDARRAY_FORMATS = ("list", "base64")

DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# Frames larger than this are refused (the gateway bounds request bodies far
# below it; this only protects the worker from a corrupt length prefix).
DEFAULT_MAX_REQUEST_BYTES = 256 * 1024 * 1024

EXIT_CONFIG = 2
EXIT_ORPHANED = 1

# Compact UTF-8 output, as the brief specifies; the C encoder is used because
# no indent/default is set. Error/pong payloads use plain json.dumps, whose
# ASCII escaping keeps them valid even for odd exception texts.
_OUTPUT_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_encode_output = _OUTPUT_ENCODER.encode
_json_loads = json.loads
_pack_header = HEADER.pack


def log(message: str) -> None:
    """A lifecycle line in the instance log."""
    try:
        sys.stderr.write(f"[berth] {message}\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - logging must never take the worker down
        pass


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - user code may have closed or replaced it
            pass


class _Output:
    """When what the cell prints is written. Every write to stdout is a read in Berth's log relay
    (a print per call cost its process more than the call itself), and the interpreter runs with
    -u, which writes each piece of a print on its own. So stdout is buffered, and written: right
    after a call that follows a quiet spell (a call's print is in the log once it has answered),
    else at most GATHER_S after the call (under load: one write for many calls), and every IDLE_S
    whatever happens (a thread of the cell's, a call printing progress; a process killed loses at
    most that much of its stdout). stderr, where errors go, is written line by line."""

    GATHER_S = 0.01
    IDLE_S = 0.2

    def __init__(self) -> None:
        self.last = 0.0  # when a call's output was last written
        self.due = threading.Event()

    def start(self) -> None:
        """In the serving process only: a fork template must stay single-threaded."""
        for stream, by_line in ((sys.stdout, False), (sys.stderr, True)):
            try:
                stream.reconfigure(line_buffering=by_line, write_through=False)
            except Exception:  # noqa: BLE001 - a replaced stream keeps its own buffering
                pass
        threading.Thread(target=self._run, name="berth-output", daemon=True).start()

    def call_ended(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.GATHER_S:
            self.last = now
            _flush_output()
        elif not self.due.is_set():
            self.due.set()

    def _run(self) -> None:
        while True:
            if self.due.wait(self.IDLE_S):
                wait = self.last + self.GATHER_S - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self.due.clear()  # before the write: a call ending during it sets it again
                self.last = time.monotonic()
            _flush_output()


_output = _Output()


def _frame(kind: int, payload: bytes) -> bytes:
    return _pack_header(len(payload), kind) + payload


def _call_error(code: str, message: str, **details) -> bytes:
    body = {"code": code, "message": message, "details": details}
    return _frame(RESP_CALL_ERROR, json.dumps(body, separators=(",", ":")).encode("ascii"))


def _safe_str(value) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ in user code
        return f"<unprintable {type(value).__name__}>"


# ---------------------------------------------------------------------------
# Input/output typing (berth_types.py has the types and their conversions)


class _Invalid(Exception):
    """An input value does not match its declared type: args = (message, details)."""


def _conversion_hint(value) -> str:
    if hasattr(value, "tolist"):  # numpy scalars/arrays, array.array ...
        return " (hint: convert it with .tolist() or .item())"
    return ""


# ---------------------------------------------------------------------------
# The worker


def _bind_unix(path: str) -> socket.socket:
    """A listening Unix socket at path, file mode 0600 (a stale file is replaced)."""
    if len(os.fsencode(path)) >= 108:  # sun_path limit on Linux
        raise OSError(f"socket path is too long for a Unix socket ({len(os.fsencode(path))} bytes, max 107): {path}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # socket file 0600: only Berth's user (and the sandbox's) may connect
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(128)
    return sock


def _bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: the kernel picks one; see Worker.port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(text)
    os.replace(tmp, path)


class Worker:
    def __init__(self, config: dict):
        self.socket_path: str | None = config.get("socket")
        tcp = (config.get("listen") or {}).get("tcp")
        self.tcp: tuple | None = (tcp["host"], int(tcp["port"])) if tcp else None
        self.port_file: str | None = config.get("portFile")
        self.port: int | None = None  # the TCP port bound, once listening
        # the instance secret: every connection must present it first (never logged)
        self.secret: bytes | None = config["secret"].encode("ascii") if config.get("secret") else None
        self.refused = 0  # connections closed for a missing or wrong secret
        self._refused_lock = threading.Lock()
        self._handshakes = threading.BoundedSemaphore(MAX_UNAUTHENTICATED)
        self.checkpoint = config["checkpoint"]  # a path, or {"url", "sha256", "token"} (fetched while loading)
        self.checkpoint_path: str = self.checkpoint if isinstance(self.checkpoint, str) else "(fetched)"
        self.source: str = config["code"]
        self.requires: list = config.get("requires") or []
        # (name, type string, parsed type, has default, default)
        self.inputs: list = [(i["name"], i["type"], berth_types.parse(i["type"]), "default" in i, i.get("default"))
                             for i in config.get("inputs") or []]
        self.outputs: list = [(o["name"], o["type"], berth_types.parse(o["type"])) for o in config.get("outputs") or []]
        self.input_names = frozenset(i[0] for i in self.inputs)
        self.max_response = int(config.get("maxResponseBytes") or DEFAULT_MAX_RESPONSE_BYTES)
        self.max_request = int(config.get("maxRequestBytes") or DEFAULT_MAX_REQUEST_BYTES)

        self.namespace: dict = __main__.__dict__
        self.code = None  # the compiled serving cell, once ready
        # One call at a time: the namespace is shared state (see module docstring).
        self.exec_lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.state = "loading"
        self.error: str | None = None
        self._pong = b""
        self._set_state("loading", None)

    # -- state -------------------------------------------------------------

    def _set_state(self, state: str, error: str | None) -> None:
        with self._refused_lock:  # a refusal re-renders the pong from another thread
            self.state, self.error = state, error
            self._render_pong()

    def _render_pong(self) -> None:
        pong = {"state": self.state, "error": self.error, "pid": os.getpid()}
        if self.secret is not None:
            pong["refused"] = self.refused  # connections closed for a missing or wrong secret
        body = json.dumps(pong, separators=(",", ":"))
        self._pong = _frame(RESP_PONG, body.encode("ascii"))  # one atomic swap; PINGs just send it

    # -- startup -----------------------------------------------------------

    def listen(self, quiet: bool = False) -> None:
        """Bind and listen on TCP (config "listen": {"tcp"}) or else the Unix socket (replacing
        a stale socket file). With TCP, the port bound is written to "portFile" when given."""
        if self.tcp is not None:
            self.listener = _bind_tcp(*self.tcp)
            self.port = self.listener.getsockname()[1]
            where = f"tcp {self.tcp[0]}:{self.port}"
        else:
            self.listener = _bind_unix(self.socket_path)
            where = self.socket_path
        threading.Thread(target=self._accept_loop, args=(self.listener,), name="berth-accept", daemon=True).start()
        if self.port_file and self.port is not None:
            _write_atomically(self.port_file, f"{self.port}\n")  # how Berth learns a port 0 bind
        if not quiet:
            log(f"listening on {where}" + ("" if self.secret else " (no handshake)"))

    def load(self) -> None:
        """Restore the checkpoint into __main__.__dict__ and compile the
        serving cell; ends in state "ready" or "failed"."""
        started = time.monotonic()
        try:
            berth_state.require_dill()
            problems = berth_state.check_requirements(self.requires)
            for problem in problems:
                if problem.level == "warning":
                    log(f"warning: {problem.message}")
            errors = [p.message for p in problems if p.level == "error"]
            if errors:
                return self._fail("; ".join(errors))

            if isinstance(self.checkpoint, dict):
                try:
                    blob = _fetch_checkpoint(self.checkpoint)
                except _FetchError as exc:
                    return self._fail(str(exc))
                log(f"restoring checkpoint fetched from Berth ({len(blob)} bytes, sha256 verified)")
            else:
                try:
                    with open(self.checkpoint_path, "rb") as f:
                        blob = f.read()
                except OSError as exc:
                    return self._fail(f"cannot read the checkpoint {self.checkpoint_path}: {exc.strerror or exc}")
                log(f"restoring checkpoint {self.checkpoint_path} ({len(blob)} bytes)")

            if any(berth_types.needs_numpy(v[2]) for v in self.inputs + self.outputs):
                try:
                    import numpy  # noqa: F401 - imported while loading, not on the first call
                    import pandas  # noqa: F401
                except ImportError as exc:
                    return self._fail(f"this node declares ndarray or dataframe variables, which need numpy and pandas: {exc}")

            berth_state.reset_namespace(self.namespace)  # drop the -c bootstrap's names
            try:
                berth_state.restore(blob, self.namespace)
            except Exception as exc:  # noqa: BLE001 - whatever unpickling raises
                self._log_exception(exc)
                return self._fail(f"restoring the checkpoint failed: {type(exc).__name__}: {_safe_str(exc)}")
            del blob

            filename = "<serving cell>"
            berth_state.register_source(filename, self.source)
            try:
                self.code = compile(self.source, filename, "exec")
            except SyntaxError as exc:
                return self._fail(f"the serving cell does not compile: {type(exc).__name__}: {exc}")
        except berth_state.DillMissingError as exc:
            return self._fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - never die while loading: report it
            self._log_exception(exc)
            return self._fail(f"{type(exc).__name__}: {_safe_str(exc)}")

        count = sum(1 for k in self.namespace if berth_state.is_user_variable(k))
        self._set_state("ready", None)
        log(f"ready in {time.monotonic() - started:.3f} s ({count} variables restored)")

    def _fail(self, error: str) -> None:
        self._set_state("failed", error)
        log(f"failed: {error}")

    @staticmethod
    def _log_exception(exc: BaseException) -> None:
        try:
            for line in berth_state.user_traceback(exc):
                sys.stderr.write(f"[berth]   {line}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass

    # -- connections -------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                if listener.fileno() == -1:  # closed: shutting down
                    return
                log(f"accept failed: {exc}")  # e.g. EMFILE; back off briefly
                time.sleep(0.1)
                continue
            if self.secret is not None and not self._handshakes.acquire(blocking=False):
                self._refuse(conn, "too many connections in their handshake")
                continue
            threading.Thread(target=self._serve, args=(conn,), name="berth-conn", daemon=True).start()

    def _refuse(self, conn: socket.socket, why: str) -> None:
        """Closes a connection that did not present the secret, answering nothing; counts it."""
        with self._refused_lock:
            self.refused += 1
            n = self.refused
            self._render_pong()  # the pong carries the count
        if n <= 10 or n % 1000 == 0:  # a flood must not flood the log
            log(f"refused a connection: {why} ({n} so far)")
        try:
            conn.close()
        except OSError:
            pass

    def _handshake(self, conn: socket.socket) -> bool:
        """The first frame must be HELLO carrying the secret (compared in constant time)."""
        try:
            conn.settimeout(HELLO_TIMEOUT_S)
            header = b""
            while len(header) < 5:
                chunk = conn.recv(5 - len(header))
                if not chunk:
                    break
                header += chunk
            if len(header) < 5:
                self._refuse(conn, "closed or silent before the handshake")
                return False
            length, kind = HEADER.unpack(header)
            if kind != REQ_HELLO or length > MAX_HELLO_BYTES:
                self._refuse(conn, "the first frame was not a handshake")
                return False
            payload = b""
            while len(payload) < length:
                chunk = conn.recv(length - len(payload))
                if not chunk:
                    break
                payload += chunk
            if not hmac.compare_digest(payload, self.secret):
                self._refuse(conn, "wrong secret")
                return False
            conn.settimeout(None)
            conn.sendall(_frame(RESP_WELCOME, b""))
            return True
        except OSError:
            self._refuse(conn, "the handshake failed")
            return False

    def _serve(self, conn: socket.socket) -> None:
        """Answer frames on one connection until the client closes it. Any
        socket error just ends this connection, never the worker."""
        if self.secret is not None:
            try:
                passed = self._handshake(conn)
            finally:
                self._handshakes.release()
            if not passed:
                return
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = conn.makefile("rb", buffering=65536)
        read = rfile.read
        send = conn.sendall
        unpack = HEADER.unpack
        try:
            while True:
                header = read(5)
                if len(header) < 5:
                    return  # EOF (between frames, or a truncated header)
                length, kind = unpack(header)
                if length > self.max_request:
                    send(_call_error("PROTOCOL_ERROR", f"frame of {length} bytes exceeds the {self.max_request}-byte limit",
                                     limit=self.max_request))
                    return
                payload = read(length) if length else b""
                if len(payload) < length:
                    return  # client went away mid-frame
                if kind == REQ_PING:
                    send(self._pong)
                elif kind == REQ_EXECUTE:
                    send(self._execute(payload))
                else:
                    send(_call_error("PROTOCOL_ERROR", f"unknown frame type 0x{kind:02x}", type=kind))
                    return
        except OSError:
            pass  # client disconnected (EPIPE, ECONNRESET ...)
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the worker
            log(f"connection handler error: {type(exc).__name__}: {exc}")
        finally:
            try:
                rfile.close()
                conn.close()
            except OSError:
                pass

    # -- execution ---------------------------------------------------------

    def _execute(self, payload: bytes) -> bytes:
        """Run one call; returns the complete response frame."""
        if self.state != "ready":
            return _call_error("NOT_READY", f"the worker is {self.state}" + (f": {self.error}" if self.error else ""),
                               state=self.state, error=self.error)
        try:
            values, fmt = self._decode_inputs(payload)
        except _Invalid as exc:
            message, details = exc.args
            return _call_error("INPUT_INVALID", message, **details)

        ns = self.namespace
        with self.exec_lock:
            try:
                ns.update(values)
                try:
                    exec(self.code, ns)
                except BaseException as exc:  # noqa: BLE001 - SystemExit from user code is an error too
                    return self._user_error(exc)
                return self._encode_outputs(ns, fmt)
            except Exception as exc:  # noqa: BLE001 - a worker bug: report it, keep serving
                log(f"internal error during a call: {type(exc).__name__}: {exc}")
                return _call_error("WORKER_ERROR", f"{type(exc).__name__}: {_safe_str(exc)}")
            finally:
                _output.call_ended()

    def _decode_inputs(self, payload: bytes):
        """The declared inputs of an EXECUTE payload, converted for binding,
        and the tensor format the outputs go back in. Raises _Invalid(message, details)."""
        try:
            request = _json_loads(payload)
        except (ValueError, RecursionError) as exc:  # incl. UnicodeDecodeError; absurd nesting
            raise _Invalid(f"the request is not valid UTF-8 JSON: {exc}", {}) from None
        if not isinstance(request, dict):
            raise _Invalid("the request must be a JSON object", {})
        given = request.get("input", {})
        if not isinstance(given, dict):
            raise _Invalid(f'"input" must be an object, got {berth_types.json_type(given)}', {})
        fmt = request.get("ndarray_format", "list")
        if fmt not in NDARRAY_FORMATS:
            raise _Invalid(f'"ndarray_format" must be "list" or "base64", got {fmt!r}', {"field": "ndarray_format"})
        values = {}
        used = 0
        for name, type_, parsed, has_default, default in self.inputs:
            if name in given:
                value = given[name]
                used += 1
            elif has_default:
                value = copy.deepcopy(default)  # the cell may change it: never share the declared one
            else:
                raise _Invalid(f'input "{name}" is missing', {"variable": name, "expected": type_})
            try:
                values[name] = berth_types.convert_input(parsed, value)
            except berth_types.Invalid as exc:
                raise _Invalid(f'input "{name}" {exc.args[0]}',
                               {"variable": name, "expected": type_, "actual": berth_types.json_type(value)}) from None
        if len(given) != used:
            unknown = sorted(k for k in given if k not in self.input_names)
            raise _Invalid(f'unknown input "{unknown[0]}"', {"variable": unknown[0], "declared": sorted(self.input_names)})
        return values, fmt

    def _encode_outputs(self, ns: dict, fmt: str = "list") -> bytes:
        outputs = {}
        for name, type_, parsed in self.outputs:
            try:
                value = ns[name]
            except KeyError:
                return _call_error("OUTPUT_MISSING", f'output variable "{name}" is not defined after the serving cell ran',
                                   variable=name)
            try:
                outputs[name] = berth_types.convert_output(parsed, value, fmt)
            except berth_types.Invalid as exc:
                actual = berth_state.type_name(value)
                why = exc.args[0] if exc.args else type_
                if why == type_:  # a plain type: the value's type says it all
                    message = f'output variable "{name}" is declared {type_} but is {actual}{_conversion_hint(value)}'
                else:
                    message = f'output variable "{name}" is declared {type_}: expected {why}'
                return _call_error("OUTPUT_TYPE_MISMATCH", message, variable=name, expected=type_, actual=actual)
        try:
            body = _encode_output({"output": outputs}).encode("utf-8")
        except Exception:  # noqa: BLE001 - TypeError, ValueError (NaN, cycles), UnicodeEncodeError, RecursionError
            return self._not_serializable(ns, outputs)
        if len(body) > self.max_response:
            return _call_error("OUTPUT_TOO_LARGE",
                               f"the response is {len(body)} bytes, above the {self.max_response}-byte limit",
                               limit=self.max_response, size=len(body))
        return _frame(RESP_OK, body)

    def _not_serializable(self, ns: dict, outputs: dict) -> bytes:
        """Find which output broke the JSON encoding and say why."""
        for name, value in outputs.items():
            try:
                _encode_output(value).encode("utf-8")
            except Exception as exc:  # noqa: BLE001
                original = ns.get(name, value)
                actual = berth_state.type_name(original)
                reason = _safe_str(exc)
                if isinstance(exc, ValueError) and "Out of range float" in reason:
                    reason = "it contains NaN or infinity, which JSON cannot represent"
                return _call_error(
                    "OUTPUT_NOT_SERIALIZABLE",
                    f'output variable "{name}" ({actual}) is not JSON-serialisable: {reason}{_conversion_hint(original)}',
                    variable=name, type=actual)
        return _call_error("OUTPUT_NOT_SERIALIZABLE", "the outputs are not JSON-serialisable together")

    def _user_error(self, exc: BaseException) -> bytes:
        try:
            lines = berth_state.user_traceback(exc)
        except Exception:  # noqa: BLE001
            lines = []
        body = {"error_name": type(exc).__name__, "error_message": _safe_str(exc), "traceback": lines}
        log(f"call raised {body['error_name']}: {body['error_message']}")
        return _frame(RESP_USER_ERROR, json.dumps(body, separators=(",", ":")).encode("ascii"))

    # -- shutdown ----------------------------------------------------------

    def close(self) -> None:
        if self.listener is not None:
            try:
                self.listener.close()
            except OSError:
                pass
        if self.socket_path and self.tcp is None:
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass


# ---------------------------------------------------------------------------
# Checkpoint fetched from Berth (config "checkpoint": {"url", "sha256", "token"})


class _FetchError(Exception):
    """Why the checkpoint could not be fetched or verified (the instance fails with it)."""


FETCH_TIMEOUT_S = 60.0
FETCH_CHUNK = 1024 * 1024


def _fetch_checkpoint(spec: dict) -> bytes:
    """GET the blob (the instance secret as a bearer token), hashing while it streams in;
    refuses it unless its sha256 is the one Berth recorded."""
    import urllib.error
    import urllib.request

    url, want, token = spec.get("url"), spec.get("sha256"), spec.get("token")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # the token would follow a redirect
            return None

    # never through a proxy from the environment, never redirected: the token goes to Berth only
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    digest = hashlib.sha256()
    chunks = []
    try:
        with opener.open(request, timeout=FETCH_TIMEOUT_S) as response:
            while True:
                chunk = response.read(FETCH_CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                chunks.append(chunk)
    except urllib.error.HTTPError as exc:
        raise _FetchError(f"cannot fetch the checkpoint from Berth: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _FetchError(f"cannot fetch the checkpoint from Berth: {getattr(exc, 'reason', exc)}") from None
    got = digest.hexdigest()
    if not hmac.compare_digest(got, str(want)):
        raise _FetchError(f"the checkpoint fetched from Berth is corrupt: sha256 {got}, expected {want}; refusing to restore it")
    return b"".join(chunks)


# ---------------------------------------------------------------------------
# Process plumbing


def _die_with_parent(expected_parent: int | None, watchdog: bool = True) -> None:
    """Never outlive Berth: ask the kernel for SIGKILL when the parent dies
    (Linux PR_SET_PDEATHSIG), and watch the parent pid as a fallback (other
    platforms). A parent that died before prctl took effect is caught by
    comparing with ``expected_parent`` (config "parentPid"), when given."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                log(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}")
        except Exception as exc:  # noqa: BLE001 - the watchdog still covers us
            log(f"prctl(PR_SET_PDEATHSIG) unavailable: {exc}")
    if expected_parent is not None and os.getppid() != expected_parent:
        log(f"parent process {expected_parent} is already gone; exiting")
        os._exit(EXIT_ORPHANED)

    def _watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                log("parent process is gone; exiting")
                os._exit(EXIT_ORPHANED)

    if watchdog:  # a template stays single-threaded: its select loop checks the parent instead
        threading.Thread(target=_watch, name="berth-parent-watchdog", daemon=True).start()


def _read_config() -> dict:
    raw = os.environ.get("BERTH_WORKER_CONFIG")
    if not raw:
        try:
            raw = sys.stdin.read()
        except (OSError, ValueError, AttributeError):  # no stdin at all
            raw = ""
        try:
            sys.stdin.close()
        except Exception:  # noqa: BLE001
            pass
    if not raw or not raw.strip():
        raise ValueError("no configuration: BERTH_WORKER_CONFIG is not set and stdin is empty")
    config = json.loads(raw)
    if not isinstance(config, dict):
        raise ValueError("BERTH_WORKER_CONFIG is not a JSON object")
    if config.get("mode", "instance") not in ("instance", "template"):
        raise ValueError('"mode" must be "instance" or "template"')
    tcp = (config.get("listen") or {}).get("tcp") if isinstance(config.get("listen") or {}, dict) else None
    if config.get("listen") is not None and not isinstance(config.get("listen"), dict):
        raise ValueError('"listen" must be an object: {"tcp": {"host", "port"}}')
    if tcp is not None and (not isinstance(tcp, dict) or not isinstance(tcp.get("host"), str)
                            or not isinstance(tcp.get("port"), int) or isinstance(tcp.get("port"), bool)
                            or not 0 <= tcp["port"] <= 65535):
        raise ValueError('"listen.tcp" must be {"host": str, "port": 0-65535}')
    if tcp is not None and config.get("mode") == "template":
        raise ValueError('a template listens on its Unix control socket: "listen.tcp" goes in each fork request')
    keys = ("code",) if tcp is not None else ("socket", "code")
    for key in keys:
        if not isinstance(config.get(key), str):
            raise ValueError(f'"{key}" must be a string')
    for key in ("socket", "portFile"):
        if config.get(key) is not None and not isinstance(config.get(key), str):
            raise ValueError(f'"{key}" must be a string')
    checkpoint = config.get("checkpoint")
    if isinstance(checkpoint, dict):
        if not all(isinstance(checkpoint.get(k), str) for k in ("url", "sha256", "token")):
            raise ValueError('"checkpoint" must be a path or {"url", "sha256", "token"} strings')
    elif not isinstance(checkpoint, str):
        raise ValueError('"checkpoint" must be a string')
    secret = config.get("secret")
    if secret is not None and (not isinstance(secret, str) or len(secret) < 32 or len(secret) > MAX_HELLO_BYTES
                               or not all(c in "0123456789abcdef" for c in secret)):
        raise ValueError('"secret" must be lowercase hex, 32 to 256 characters')  # never echoed
    for key in ("inputs", "outputs"):
        for item in config.get(key) or []:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("type"), str):
                raise ValueError(f'"{key}" entries must be {{"name": str, "type": str}}: {item!r}')
            berth_types.parse(item["type"])  # TypeSyntax is a ValueError
    requires = config.get("requires") or []
    if not isinstance(requires, list) or not all(isinstance(r, dict) for r in requires):
        raise ValueError('"requires" must be a list of {"name", "version"} objects')
    for key in ("maxResponseBytes", "maxRequestBytes", "parentPid"):
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ValueError(f'"{key}" must be a positive integer')
    return config


# ---------------------------------------------------------------------------
# Template mode (config "mode": "template"): restore the checkpoint once, then
# fork instances on request. The template stays single-threaded (a select loop
# in the main thread), so a fork never copies a lock held by another thread.
# Control protocol (JSON lines over the Unix socket at config "socket"):
#   -> {"op": "watch"}            <- the state line, then {"exit": pid, "code", "signal"} per instance that ends
#   -> {"op": "hold"}             <- {"held": token}: this connection waits to be a forked instance's stderr
#   -> {"op": "fork", "socket": P, "stderr": token?} <- {"pid": n} (the template), -> "go\n" (Berth, once the
#                                  child is in its cgroup), <- {"bound": true} (the child, listening on P); the
#                                  rest of the connection is the child's stdout (and stderr, without a token).


def _fork_hazards(own_fds: set) -> list:
    """Why forking this interpreter would be unsafe: threads besides the main one (Python or
    native) and open sockets that are not Berth's. Empty when it is safe."""
    reasons = []
    main_ident = threading.main_thread().ident
    others = [tid for tid in sys._current_frames() if tid != main_ident]
    if others:
        names = sorted(t.name for t in threading.enumerate() if t.ident in others)
        reasons.append(f"restoring the checkpoint started {len(others)} thread(s)"
                       f" ({', '.join(names) if names else 'unnamed'}): a forked copy would hold their locks without them")
    try:
        native = len(os.listdir("/proc/self/task")) - 1 - len(others)
    except OSError:
        native = 0
    if native > 0:
        reasons.append(f"restoring the checkpoint started {native} native thread(s) (a C extension's)")
    sockets = []
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        fds = []
    for name in fds:
        fd = int(name)
        if fd in own_fds:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:"):
            sockets.append(fd)
    if sockets:
        reasons.append(f"the restored state holds {len(sockets)} open socket(s) (fd {', '.join(map(str, sorted(sockets)))}):"
                       " forked instances would share one connection")
    return reasons


def _reseed() -> None:
    """A forked instance must not repeat its siblings' random numbers (a fresh process seeds anew)."""
    if "random" in sys.modules:
        sys.modules["random"].seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        try:
            numpy.random.seed()
        except Exception:  # noqa: BLE001 - an odd numpy: the instance still serves
            pass


def _send_line(conn: socket.socket, obj: dict) -> None:
    conn.sendall(json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\n")


class Template:
    """Restores once; forks one instance per request; reports their exits to watchers."""

    def __init__(self, config: dict):
        self.worker = Worker(config)
        self.control = _bind_unix(config["socket"])
        self.conns: dict = {}  # accepted connection -> bytes received so far
        self.watchers: list = []
        self.held: dict = {}  # token -> connection that will be a forked instance's stderr
        self.held_seq = 0
        self.children: set = set()
        self.state_line = b""
        self.wake_r = self.wake_w = -1

    def prepare(self) -> None:
        started = time.monotonic()
        self.worker.load()
        if self.worker.state != "ready":
            self._state({"state": "failed", "error": self.worker.error})
            return
        hazards = _fork_hazards({0, 1, 2, self.control.fileno()})
        if hazards:
            for h in hazards:
                log(f"not fork-safe: {h}")
            self._state({"state": "unsafe", "reasons": hazards})
            return
        # objects restored so far go to the permanent generation: the collector never writes
        # their headers, so forked instances keep sharing those pages
        gc.collect()
        gc.freeze()
        self._state({"state": "ready", "pid": os.getpid(), "seconds": round(time.monotonic() - started, 3)})
        log(f"template ready: forking instances from pid {os.getpid()}")

    def _state(self, obj: dict) -> None:
        self.state = obj["state"]
        self.state_line = json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\n"

    def serve(self, parent: int) -> None:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, so the wakeup fd is written
        self._reap()
        while True:
            readable, _, _ = select.select([self.control, self.wake_r, *self.conns], [], [], 1.0)
            if os.getppid() != parent:
                log("parent process is gone; exiting")
                os._exit(EXIT_ORPHANED)
            if self.wake_r in readable:
                try:
                    while os.read(self.wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                self._reap()
            if self.control in readable:
                try:
                    conn, _ = self.control.accept()
                    self.conns[conn] = b""
                except OSError as exc:
                    log(f"accept failed: {exc}")
            for conn in [c for c in readable if c in self.conns]:
                self._receive(conn)

    def _drop(self, conn: socket.socket) -> None:
        self.conns.pop(conn, None)
        for key, held in list(self.held.items()):
            if held is conn:
                del self.held[key]
        if conn in self.watchers:
            self.watchers.remove(conn)
        try:
            conn.close()
        except OSError:
            pass

    def _receive(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if not data:
            return self._drop(conn)
        buf = self.conns[conn] + data
        if b"\n" not in buf:
            if len(buf) > 65536:
                return self._drop(conn)
            self.conns[conn] = buf
            return None
        line = buf.split(b"\n", 1)[0]
        self.conns[conn] = b""
        try:
            request = json.loads(line)
            op = request.get("op")
        except (ValueError, AttributeError):
            op = None
        try:
            if op == "watch":
                self.watchers.append(conn)
                conn.sendall(self.state_line)
            elif op == "hold":
                # kept for the next fork that names it: it becomes that instance's stderr
                self.held_seq += 1
                self.held[self.held_seq] = conn
                _send_line(conn, {"held": self.held_seq})
            elif op == "fork" and (isinstance(request.get("socket"), str) or isinstance(request.get("tcp"), dict)):
                err = self.held.pop(request.get("stderr"), None) if isinstance(request.get("stderr"), int) else None
                if self.state != "ready":
                    _send_line(conn, {"error": f"the template is {self.state}"})
                    if err is not None:
                        self._drop(err)
                    return self._drop(conn)
                self._fork(conn, request, err)
            else:
                _send_line(conn, {"error": "unknown request"})
                self._drop(conn)
        except OSError:
            self._drop(conn)
        return None

    def _fork(self, conn: socket.socket, request: dict, err: socket.socket | None = None) -> None:
        _flush_output()
        template_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._become_instance(conn, request, template_pid, err)  # never returns
        self.children.add(pid)
        try:
            _send_line(conn, {"pid": pid})
        finally:
            self._drop(conn)  # the child keeps its own copies
            if err is not None:
                self._drop(err)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.children:
                continue  # a process the restored state started
            self.children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            event = {"exit": pid, "code": code if code >= 0 else None,
                     "signal": signal.Signals(-code).name if code < 0 else None}
            for w in list(self.watchers):
                try:
                    _send_line(w, event)
                except OSError:
                    self._drop(w)

    # -- in the forked child -----------------------------------------------

    def _become_instance(self, conn: socket.socket, request: dict, template_pid: int, err: socket.socket | None) -> None:
        worker = self.worker

        def on_signal(signum, _frame):
            log(f"{signal.Signals(signum).name} received; exiting")
            worker.close()
            _flush_output()
            os._exit(0)

        try:
            signal.signal(signal.SIGTERM, on_signal)  # not the template's handler, even for a signal sent at once
            signal.signal(signal.SIGINT, on_signal)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            # the template's descriptors are not the instance's: only its own connection stays
            for c in [self.control, *self.conns]:
                if c is not conn and c is not err:
                    c.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            os.setpgid(0, 0)  # its own process group: Berth ends it and what it starts together
            _die_with_parent(template_pid, watchdog=False)
            conn.settimeout(30)
            buf = b""
            while b"\n" not in buf:  # Berth says go once it knows the host pid (the move into its cgroup runs meanwhile)
                data = conn.recv(64)
                if not data:
                    os._exit(EXIT_ORPHANED)
                buf += data
            conn.settimeout(None)
            _reseed()
            # the instance's own secret and address (the template's config has neither)
            secret = request.get("secret")
            worker.secret = secret.encode("ascii") if isinstance(secret, str) and secret else None
            tcp = request.get("tcp")
            if isinstance(tcp, dict):
                worker.tcp = (str(tcp["host"]), int(tcp["port"]))
                where = f"tcp {worker.tcp[0]}:{{port}}"
            else:
                socket_path = request["socket"]
                worker.socket_path = socket_path
                os.makedirs(os.path.dirname(socket_path), mode=0o700, exist_ok=True)
                where = socket_path
            worker.listen(quiet=True)
            worker._set_state("ready", None)  # the pong names this process
            where = where.replace("{port}", str(worker.port))
            # from here the connection is the instance's stdout and stderr: its own log. Before
            # "bound", which lets calls in: a call's print must not reach the template's log.
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            os.dup2(conn.fileno(), 1)
            os.dup2((err or conn).fileno(), 2)  # stderr on a connection of its own when Berth held one
            _send_line(conn, {"bound": True, **({"port": worker.port} if worker.port is not None else {})})
        except BaseException as exc:  # noqa: BLE001 - whatever went wrong, the child must not return into the loop
            try:
                _send_line(conn, {"error": f"{type(exc).__name__}: {_safe_str(exc)}"})
            except Exception:  # noqa: BLE001
                pass
            os._exit(EXIT_CONFIG)
        try:
            conn.close()
            if err is not None:
                err.close()
            log(f"worker pid {os.getpid()} forked from template pid {template_pid}; listening on {where}")
            _run_instance(worker, template_pid)
        finally:
            os._exit(1)


def _run_instance(worker: Worker, parent: int) -> None:
    """A forked instance serves until a signal, as main() does after loading."""
    _output.start()
    _die_with_parent(parent)
    forever = threading.Event()
    while True:
        forever.wait(3600)


def template_main(config: dict) -> None:
    parent = os.getppid()
    _die_with_parent(config.get("parentPid"), watchdog=False)
    log(f"template pid {os.getpid()} starting: python {sys.version.split()[0]} ({sys.executable})")

    def on_signal(signum, _frame):
        log(f"{signal.Signals(signum).name} received; template exiting")
        _flush_output()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        template = Template(config)
    except OSError as exc:
        log(f"cannot listen on {config['socket']}: {exc}")
        sys.exit(EXIT_CONFIG)
    template.prepare()
    template.serve(parent)


def main() -> None:
    try:
        config = _read_config()
    except ValueError as exc:
        log(f"bad worker configuration: {exc}")
        sys.exit(EXIT_CONFIG)

    if config.get("mode") == "template":
        template_main(config)
        return

    _die_with_parent(config.get("parentPid"))
    _output.start()
    log(f"worker pid {os.getpid()} starting: python {sys.version.split()[0]} ({sys.executable})")

    worker = Worker(config)

    def on_signal(signum, _frame):
        log(f"{signal.Signals(signum).name} received; exiting")
        worker.close()
        _flush_output()
        os._exit(0)  # calls may be running in other threads: do not wait for them

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        worker.listen()  # first, so the controller can PING while we load
    except OSError as exc:
        log(f"cannot listen on {worker.socket_path if worker.tcp is None else 'tcp %s:%d' % worker.tcp}: {exc}")
        sys.exit(EXIT_CONFIG)

    worker.load()

    # Everything else happens in the connection threads; the main thread only
    # waits here so that it can run the signal handlers.
    forever = threading.Event()
    while True:
        forever.wait(3600)
