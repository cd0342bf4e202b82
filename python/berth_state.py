"""Shared helpers for Berth's Python side: snapshotting and restoring an
interpreter namespace with dill, recording the Python environment a
checkpoint was made in, and checking a serving interpreter against it.

Used by:
  * berth_checkpoint.py  - makes a checkpoint by running cells in a fresh process
  * berth_worker.py      - restores a checkpoint and serves the serving cell
  * berth_client.py      - uploads a checkpoint from a live Jupyter/IPython kernel

Standard library + dill only.

A note on ``__main__``: dill pickles functions and classes defined in
``__main__`` *by value*, but a function's globals dictionary, when it is
``__main__.__dict__``, is pickled *by reference* ("the ``__dict__`` of whatever
``__main__`` is when loading"). That is why cells are executed in the real
``__main__.__dict__`` both when a checkpoint is made and when it is served, and
why ``restore`` is always given ``__main__.__dict__`` by the worker: a
function defined in one cell then finds the names defined by the other cells
(and by later calls) after it is restored in another process.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import io
import linecache
import os
import re
import socket
import sys
import threading
import traceback
import types
from typing import Any, Iterable, NamedTuple

try:  # dill is optional at import time so that helpers such as split_script
    import dill  # work (and can be tested) on an interpreter without it.
except ImportError:  # pragma: no cover - depends on the interpreter
    dill = None


# --------------------------------------------------------------------------
# dill availability


class DillMissingError(RuntimeError):
    """Raised when an operation needs dill and this interpreter lacks it."""


def dill_missing_message() -> str:
    return f"dill is not installed for {sys.executable}: apt-get install python3-dill"


def require_dill() -> None:
    if dill is None:
        raise DillMissingError(dill_missing_message())


# --------------------------------------------------------------------------
# Which names of a namespace are the user's variables

# Names IPython puts into the user namespace; they are history/plumbing, not
# user state, and some of them (get_ipython, exit, IPython 8's own ``open``)
# do not survive a restore without IPython. A live kernel also says exactly
# which names are its own: ``shell.user_ns_hidden`` (see ``user_variables``);
# this list is the fallback for a namespace handed over without its shell.
_IPYTHON_NAMES = frozenset(
    {"In", "Out", "_", "__", "___", "_i", "_ii", "_iii", "_oh", "_ih", "_dh",
     "get_ipython", "exit", "quit", "_exit_code"}
)
_IPYTHON_NUMBERED = re.compile(r"_i?\d+\Z")  # _i<digits> (inputs), _<digits> (outputs)
# Builtins IPython shadows in the user namespace with its own function
# (IPython >= 8.? puts ``open = IPython.core.interactiveshell._modified_open``).
_IPYTHON_SHADOWED_BUILTINS = frozenset({"open"})


def is_user_variable(name: str) -> bool:
    """True if ``name`` is user state worth checkpointing."""
    if name.startswith("__"):
        return False
    if name in _IPYTHON_NAMES or _IPYTHON_NUMBERED.match(name):
        return False
    return True


def _is_ipython_plumbing(name: str, value: Any) -> bool:
    """A builtin's name bound to IPython's replacement of it (not the user's own)."""
    if name not in _IPYTHON_SHADOWED_BUILTINS:
        return False
    module = getattr(value, "__module__", None)
    return isinstance(module, str) and module.split(".", 1)[0] in ("IPython", "ipykernel")


_MISSING = object()


def user_variables(namespace: dict, hidden: dict | None = None) -> dict:
    """The user's variables of ``namespace``, in namespace order.

    ``hidden`` is an IPython shell's ``user_ns_hidden``: the names the shell
    put into the namespace itself. As IPython's ``%who`` does, a hidden name
    is skipped while it is still bound to the shell's own object, and counts
    as the user's once the user rebinds it (``open = my_open``)."""
    hidden = hidden or {}
    return {
        k: v for k, v in namespace.items()
        if isinstance(k, str) and is_user_variable(k)
        and hidden.get(k, _MISSING) is not v and not _is_ipython_plumbing(k, v)
    }


_IMMUTABLE_LEAVES = (bytes, str, int, float, complex, bool, type(None))


def state_digest(namespace: dict, hidden: dict | None = None, memo: dict | None = None) -> str:
    """A hash of the user's variables that changes when the state may have
    changed: each variable's name, the object it is bound to (rebinding
    always counts, even to an equal value) and its pickled bytes (so a
    mutation counts). The bytes come from the C pickler, which is tens of
    times faster than dill's pure-Python one (a 10 MB state: ~20 ms against
    ~600 ms); dill only serves what the C pickler refuses. Functions and
    classes are pickled by reference there: a change to one's attributes,
    without rebinding it, is not seen.

    ``memo`` (a dict the caller keeps between calls) remembers the hash of
    immutable values (bytes, str, numbers): the same object cannot have
    changed, so a large one is not pickled again. It holds only the values
    bound at the last call, so it keeps nothing alive that the namespace
    dropped."""
    import hashlib  # noqa: PLC0415 - only kernels recording checkpoints need it
    import pickle  # noqa: PLC0415

    digest = hashlib.sha256()
    fresh: dict = {}
    for name, value in user_variables(namespace, hidden).items():
        known = memo.get(name) if memo is not None else None
        if known is not None and known[0] is value:
            part = known[1]
        else:
            try:
                data = pickle.dumps(value, protocol=5)
            except Exception:  # noqa: BLE001 - anything the C pickler refuses
                try:
                    data = _dumps(value) if dill is not None else b""
                except Exception:  # noqa: BLE001 - unpicklable: skipped by snapshot too
                    data = b""
            part = hashlib.sha256(data).digest()
        if type(value) in _IMMUTABLE_LEAVES:
            fresh[name] = (value, part)
        digest.update(f"{name}\0{id(value)}\0".encode("utf-8", "surrogatepass"))
        digest.update(part)
    if memo is not None:
        memo.clear()
        memo.update(fresh)
    return digest.hexdigest()


def fingerprint(namespace: dict, hidden: dict | None = None) -> tuple:
    """Which object each user variable is bound to: equal fingerprints mean no
    name was bound, rebound or deleted (objects may still have been mutated)."""
    return tuple((k, id(v)) for k, v in user_variables(namespace, hidden).items())


def reset_namespace(namespace: dict) -> None:
    """Remove every non-dunder name from ``namespace`` (``__builtins__``,
    ``__name__`` ... stay). Used on ``__main__.__dict__`` of a freshly started
    ``python -c`` process so that its bootstrap names (``sys``, the imported
    berth module) do not leak into the user's namespace."""
    for name in [k for k in namespace if not (isinstance(k, str) and k.startswith("__"))]:
        del namespace[name]


def type_name(value: Any) -> str:
    """A readable type name: ``int``, ``function``, ``numpy.ndarray``, ``Model``."""
    t = type(value)
    module = getattr(t, "__module__", None)
    qualname = getattr(t, "__qualname__", t.__name__)
    if module in (None, "builtins", "__main__"):
        return qualname
    return f"{module}.{qualname}"


# --------------------------------------------------------------------------
# Process-local resources
#
# dill can "pickle" some objects that only make sense inside the process that
# created them, and re-creates them on load in surprising ways: a file object
# is re-opened *by name with its original mode*, so a file once opened with
# "w" (even one that is closed by now, e.g. ``with open("out.csv", "w") as f``)
# would be truncated when the checkpoint is restored in the worker. Berth
# therefore never checkpoints file objects or sockets, wherever they are, and
# skips top-level locks and threads (a bare lock/thread variable cannot be
# meaningfully carried to another process; one nested inside a larger object
# is re-created fresh by dill, which is what that object needs).

_STD_STREAMS = tuple(s for s in (sys.__stdin__, sys.__stdout__, sys.__stderr__) if s is not None)
_IN_MEMORY_STREAMS = (io.StringIO, io.BytesIO)
_SYNC_TYPES = tuple({
    type(threading.Lock()), type(threading.RLock()), threading.Condition,
    threading.Semaphore, threading.Event, threading.Barrier, threading.Thread,
})


class NotCheckpointable(Exception):
    """Raised while pickling when a process-local resource is reached."""


def _file_reason(value: Any) -> str | None:
    """Why ``value`` (a socket or an IOBase) cannot be checkpointed, or None."""
    if isinstance(value, socket.socket):
        return "a socket is process-local and is not checkpointed"
    if isinstance(value, _IN_MEMORY_STREAMS) or any(value is s for s in _STD_STREAMS):
        return None  # in-memory buffers are plain data; dill maps std streams by name
    name = getattr(value, "name", None)
    what = "file object"
    if name is not None and not isinstance(name, int):
        what += f" {name!r}"
    if getattr(value, "closed", False):
        what += " (closed)"
    return f"{what}: file objects are process-local and are not checkpointed; open the file in a cell instead"


def _top_level_reason(value: Any) -> str | None:
    """Why a top-level variable is skipped before even trying to pickle it."""
    if isinstance(value, (io.IOBase, socket.socket)):
        return _file_reason(value)
    if isinstance(value, _SYNC_TYPES):
        kind = "thread" if isinstance(value, threading.Thread) else "thread synchronisation object"
        return f"{type_name(value)} is a {kind}, which is process-local and is not checkpointed"
    return None


_FILE_LIKE = (io.IOBase, socket.socket)
_file_like_type_cache: dict = {}  # type -> bool; pickling consults it per object


def _dumps(obj: Any) -> bytes:
    """dill.dumps(obj), refusing file objects and sockets anywhere inside."""
    buf = io.BytesIO()
    pickler = dill.Pickler(buf, dill.settings["protocol"])
    base_save = pickler.save
    cache = _file_like_type_cache

    # The pickler calls self.save() for every object it writes (dill's own
    # reducers do too), so an instance attribute intercepts them all while
    # keeping dill.Pickler as the pickler's class (dill checks for that).
    def save(o, save_persistent_id=True):
        t = type(o)
        flag = cache.get(t)
        if flag is None:
            flag = cache[t] = issubclass(t, _FILE_LIKE)
        if flag:
            reason = _file_reason(o)
            if reason is not None:
                raise NotCheckpointable(f"contains a {reason}" if o is not obj else reason)
        base_save(o, save_persistent_id)

    pickler.save = save
    try:
        pickler.dump(obj)
    finally:
        del pickler.save  # break the pickler <-> closure reference cycle
    return buf.getvalue()


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, NotCheckpointable):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class SnapshotError(RuntimeError):
    """The namespace could not be pickled even without the failing variables."""


# --------------------------------------------------------------------------
# Snapshot / restore


def snapshot(namespace: dict, hidden: dict | None = None) -> tuple[bytes, list[dict], list[dict]]:
    """Pickle the user variables of ``namespace`` with dill (``hidden``: the
    shell's own names, see ``user_variables``).

    Returns ``(blob, variables, skipped)``: ``variables`` lists
    ``{name, type}`` of what the blob holds, ``skipped`` lists
    ``{name, type, reason}`` of what was left out. All kept variables are
    pickled as ONE dict, so objects shared between names stay shared after
    ``restore``. Module objects are pickled by reference (re-imported on load).
    """
    require_dill()
    candidates: dict = {}
    skipped: list[dict] = []
    for name, value in user_variables(namespace, hidden).items():
        reason = _top_level_reason(value)
        if reason is not None:
            skipped.append({"name": name, "type": type_name(value), "reason": reason})
        else:
            candidates[name] = value

    try:
        blob = _dumps(candidates)
        kept = candidates
    except Exception:
        # Something cannot be pickled: find the culprits one by one, exclude
        # them, and pickle the rest together again.
        kept = {}
        for name, value in candidates.items():
            try:
                _dumps(value)
            except Exception as exc:  # noqa: BLE001 - any pickling failure
                skipped.append({"name": name, "type": type_name(value), "reason": _describe_error(exc)})
            else:
                kept[name] = value
        try:
            blob = _dumps(kept)
        except Exception as exc:  # noqa: BLE001
            raise SnapshotError(
                "the namespace could not be pickled even after excluding the "
                f"unpicklable variables: {_describe_error(exc)}"
            ) from exc

    variables = [{"name": name, "type": type_name(value)} for name, value in kept.items()]
    return blob, variables, skipped


def restore(blob: bytes, namespace: dict) -> None:
    """Load a ``snapshot`` blob into ``namespace`` (the worker passes
    ``__main__.__dict__``; see the module docstring for why)."""
    require_dill()
    variables = dill.loads(blob)
    if not isinstance(variables, dict):
        raise TypeError(f"checkpoint blob holds a {type_name(variables)}, expected a dict of variables")
    namespace.update(variables)


# --------------------------------------------------------------------------
# Environment: installed packages and the ones a checkpoint needs


def _normalize(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


class _Installed(NamedTuple):
    packages: list          # [{name, version}], sorted by name
    by_key: dict            # normalized name -> {name, version}
    providers: dict         # top-level module -> [distribution names]


_installed_cache: dict = {}  # "key" -> sys.path fingerprint, "value" -> _Installed


def _path_state() -> tuple:
    """sys.path with each directory's mtime: installing or removing a
    distribution adds or removes a directory entry, which changes it."""
    state = []
    for entry in sys.path:
        try:
            state.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            state.append((entry, None))
    return tuple(state)


def _installed() -> _Installed:
    """What is installed, scanned once and again only when ``sys.path`` or
    one of its directories changed: the scan takes a few hundred ms, which a
    kernel recording a checkpoint after every cell must not pay each time."""
    key = _path_state()
    if _installed_cache.get("key") != key:
        seen: dict = {}
        for dist in metadata.distributions():
            name = dist.metadata["Name"]
            if not name:
                continue
            seen.setdefault(_normalize(name), {"name": name, "version": dist.version})
        packages = sorted(seen.values(), key=lambda p: p["name"].lower())
        _installed_cache["value"] = _Installed(packages, seen, metadata.packages_distributions())
        _installed_cache["key"] = key
    return _installed_cache["value"]


def installed_packages() -> list[dict]:
    """``[{name, version}]`` of every installed distribution (first one on
    sys.path wins when a name is installed twice), sorted by name."""
    return [dict(p) for p in _installed().packages]


def _is_stdlib(module: str) -> bool:
    return (module in sys.stdlib_module_names or module in sys.builtin_module_names
            or module in ("__main__", "builtins"))


def imported_modules(source: str) -> set[str]:
    """Top-level names of the modules ``source`` imports (absolute imports
    anywhere in the code, including inside functions). IPython-only lines
    (``%magic``, ``!shell``) are ignored; unparsable code yields nothing."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        cleaned = "\n".join(
            "" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()
        )
        try:
            tree = ast.parse(cleaned)
        except SyntaxError:
            return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def _value_modules(value: Any) -> Iterable[str]:
    """Modules a namespace value refers to: a module itself, the module of its
    type, and the module a function/class was defined in."""
    if isinstance(value, types.ModuleType):
        yield value.__name__
        return
    module = getattr(type(value), "__module__", None)
    if isinstance(module, str):
        yield module
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
        module = getattr(value, "__module__", None)
        if isinstance(module, str):
            yield module


def _owning_distributions(top: str, candidates: list[str]) -> list[str]:
    """Narrow a top-level name shared by several distributions (namespace
    packages such as ``google``) to those that own a loaded submodule."""
    if len(candidates) <= 1:
        return candidates
    loaded = set()
    for name, module in list(sys.modules.items()):
        if name == top or name.startswith(top + "."):
            path = getattr(module, "__file__", None)
            if isinstance(path, str):
                loaded.add(os.path.realpath(path))
    owners = []
    for dist_name in candidates:
        try:
            dist = metadata.distribution(dist_name)
            files = dist.files or []
        except metadata.PackageNotFoundError:
            continue
        if any(os.path.realpath(dist.locate_file(f)) in loaded for f in files):
            owners.append(dist_name)
    return owners or candidates


def _distributions_for(modules: Iterable[str]) -> list[dict]:
    """``[{name, version}]`` of the installed distributions providing the
    given (top-level, non-stdlib) modules. Modules no distribution provides
    (local files) are ignored."""
    installed = _installed()
    mapping = installed.providers
    found: dict = {}
    for module in sorted(set(modules)):
        if not module or _is_stdlib(module) or module.startswith("berth_"):
            continue
        candidates = list(dict.fromkeys(mapping.get(module, [])))
        if not candidates:
            # Some distro packages (e.g. Debian's python3-dill egg-info) record
            # no file list; a distribution named like the module is the best guess.
            if _normalize(module) not in installed.by_key:
                continue
            candidates = [installed.by_key[_normalize(module)]["name"]]
        for dist_name in _owning_distributions(module, candidates):
            known = installed.by_key.get(_normalize(dist_name))
            if known is None:
                continue
            found.setdefault(_normalize(known["name"]), dict(known))
    return sorted(found.values(), key=lambda p: p["name"].lower())


_imports_cache: dict = {}  # source -> frozenset of imported module names


def _imports_of(source: str) -> frozenset:
    """``imported_modules`` remembered per source text: a kernel's history
    (``In``) is re-read at every checkpoint, and only its new cells need parsing."""
    found = _imports_cache.get(source)
    if found is None:
        if len(_imports_cache) > 10_000:
            _imports_cache.clear()
        found = _imports_cache[source] = frozenset(imported_modules(source))
    return found


def environment_info(namespace: dict, code: Iterable[str] = (), modules: Iterable[str] | None = None,
                     hidden: dict | None = None) -> dict:
    """Describe the interpreter a checkpoint is made in.

    ``requires`` lists the distributions that provide the non-stdlib modules
    the checkpoint needs, gathered from:
      * the namespace: module objects, the modules of values' types, and of
        functions/classes (the user's variables only: ``hidden`` as for
        ``snapshot``, so a kernel's own objects do not make IPython required);
      * the source ``code`` (and IPython's ``In`` history when the namespace
        is a kernel's): every absolute import, so lazily imported libraries
        of the serving cell count too;
      * ``modules``: module names imported at snapshot time. The checkpoint
        maker passes what its cells imported (``sys.modules`` minus what was
        loaded before the first cell); a live kernel should not pass its whole
        ``sys.modules``, which holds the kernel's own machinery (IPython,
        zmq, tornado...) that a serving interpreter does not need.
    dill itself is always required (it is the checkpoint's format).
    """
    names: set[str] = {"dill"}
    for value in user_variables(namespace, hidden).values():
        names.update(m.partition(".")[0] for m in _value_modules(value))
    sources = list(code)
    history = namespace.get("In")
    if isinstance(history, list):
        sources.extend(s for s in history if isinstance(s, str))
    for source in sources:
        names.update(_imports_of(source))
    if modules is not None:
        names.update(m.partition(".")[0] for m in modules)
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "packages": installed_packages(),
        "requires": _distributions_for(names),
    }


class Problem(NamedTuple):
    """One finding of ``check_requirements``; ``level`` is "error" (the
    checkpoint cannot be restored) or "warning" (it may behave differently)."""
    level: str
    message: str

    def __str__(self) -> str:
        return self.message


def check_requirements(requires: Iterable[dict]) -> list[Problem]:
    """Compare the distributions a checkpoint recorded with this interpreter.

    A required distribution that is not installed is an error; one installed
    with another version is a warning.
    """
    problems: list[Problem] = []
    for req in requires or ():
        name = req.get("name")
        recorded = req.get("version")
        if not name:
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(Problem(
                "error",
                f'package "{name}" {recorded} recorded in the checkpoint is not installed in {sys.executable}',
            ))
            continue
        if recorded and installed != recorded:
            problems.append(Problem(
                "warning",
                f'package "{name}" is {installed} in {sys.executable} but the checkpoint recorded {recorded}',
            ))
    return problems


# --------------------------------------------------------------------------
# Tracebacks of user code

_BERTH_DIR = os.path.dirname(os.path.realpath(__file__))
_BERTH_FILES = frozenset(
    os.path.join(_BERTH_DIR, name)
    for name in ("berth_state.py", "berth_checkpoint.py", "berth_worker.py", "berth_client.py")
)


def _is_berth_frame(tb: types.TracebackType) -> bool:
    filename = tb.tb_frame.f_code.co_filename
    return filename in _BERTH_FILES or os.path.realpath(filename) in _BERTH_FILES


def user_traceback(exc: BaseException) -> list[str]:
    """The formatted traceback of ``exc`` as a list of lines, without the
    leading Berth frames (the exec() call site): user frames only."""
    tb = exc.__traceback__
    while tb is not None and _is_berth_frame(tb):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).splitlines()


def register_source(filename: str, source: str) -> None:
    """Make ``source`` known to linecache under ``filename`` (e.g. "<cell 2>")
    so tracebacks and inspect.getsource() show the code of cells."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
