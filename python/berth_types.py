"""Variable types of cell nodes on the Python side: parsing the canonical type
strings Berth stores (``int``, ``list[float]``, ``ndarray[float32,-1,3]``,
``dataframe`` ...; the grammar is src/core/var-types.ts's) and converting JSON
values to what the serving cell gets (numpy arrays, pandas DataFrames) and back.

numpy and pandas are imported only when a node declares a type that needs them,
so plain nodes start as fast as before.

Tensors travel as nested lists, or as ``{"dtype", "shape", "data"}`` with
``data`` the base64 of the raw little-endian bytes. Outputs use nested lists
unless the request says ``"ndarray_format": "base64"``. DataFrames come in as
records (a list of row objects) or split (``{"columns", "data"[, "index"]}``)
and go out as records.
"""

from __future__ import annotations

import base64

SCALARS = frozenset({"int", "float", "str", "bool", "list", "dict", "bytes", "any"})
DTYPES = {
    "bool": 1, "int8": 1, "int16": 2, "int32": 4, "int64": 8, "uint8": 1, "uint16": 2,
    "uint32": 4, "uint64": 8, "float16": 2, "float32": 4, "float64": 8,
}


class Invalid(Exception):
    """A value does not match its declared type; args[0] says how."""


class TypeSyntax(ValueError):
    pass


def parse(text: str):
    """The type tree: ("scalar", name) | ("list", item) | ("ndarray", dtype|None,
    shape|None) | ("dataframe",)."""
    s = "".join(text.split())
    return _parse(s, text, 0)


def _parse(s: str, original: str, depth: int):
    if depth > 8:
        raise TypeSyntax(f"{original!r} nests too deep")
    if "[" in s:
        if not s.endswith("]"):
            raise TypeSyntax(f"{original!r}: a '[' is not closed")
        head, arg = s[: s.index("[")], s[s.index("[") + 1 : -1]
    else:
        head, arg = s, None
    if head == "ndarray":
        if not arg:
            return ("ndarray", None, None)
        parts = arg.split(",")
        dtype = parts[0]
        if dtype != "any" and dtype not in DTYPES:
            raise TypeSyntax(f"{original!r}: unknown dtype {dtype!r}")
        shape = tuple(int(d) for d in parts[1:]) if len(parts) > 1 else None
        return ("ndarray", None if dtype == "any" else dtype, shape)
    if head == "list" and arg is not None:
        return ("list", _parse(arg, original, depth + 1))
    if arg is not None:
        raise TypeSyntax(f"{original!r}: only list[...] and ndarray[...] take parameters")
    if head == "dataframe":
        return ("dataframe",)
    if head in SCALARS:
        return ("scalar", head)
    raise TypeSyntax(f"{original!r} is not a type")


def needs_numpy(t) -> bool:
    return t[0] in ("ndarray", "dataframe") or (t[0] == "list" and needs_numpy(t[1]))


def json_type(value) -> str:
    """The JSON name of a decoded JSON value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _np():
    import numpy

    return numpy


def _pd():
    import pandas

    return pandas


def _shape_ok(declared, got) -> bool:
    return declared is None or (len(declared) == len(got) and all(d in (-1, g) for d, g in zip(declared, got)))


def _fmt_shape(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# ---------------------------------------------------------------------------
# JSON -> Python (inputs)


def convert_input(t, value):
    kind = t[0]
    if kind == "scalar":
        return _scalar_in(t[1], value)
    if kind == "list":
        if not isinstance(value, list):
            raise Invalid(f"must be an array, got {json_type(value)}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(convert_input(t[1], item))
            except Invalid as exc:
                raise Invalid(f"at [{i}] {exc.args[0]}") from None
        return out
    if kind == "ndarray":
        return _tensor_in(t[1], t[2], value)
    return _frame_in(value)


def _scalar_in(type_: str, value):
    if type_ == "any":
        return value
    if type_ == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif type_ == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise Invalid("is too large for a float") from None
    elif type_ == "str":
        if isinstance(value, str):
            return value
    elif type_ == "bool":
        if isinstance(value, bool):
            return value
    elif type_ == "list":
        if isinstance(value, list):
            return value
    elif type_ == "dict":
        if isinstance(value, dict):
            return value
    elif type_ == "bytes":
        if isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except (ValueError, TypeError):  # binascii.Error is a ValueError
                raise Invalid("is not valid base64") from None
        raise Invalid(f"must be a base64 string, got {json_type(value)}")
    raise Invalid(f"must be {type_}, got {json_type(value)}")


def _tensor_in(dtype, shape, value):
    np = _np()
    if isinstance(value, dict):
        if set(value) != {"dtype", "shape", "data"}:
            raise Invalid("must be nested arrays or {dtype, shape, data: base64}")
        got = value["dtype"]
        if got not in DTYPES:
            raise Invalid(f"has an unknown dtype {got!r}")
        if dtype is not None and got != dtype:
            raise Invalid(f"must have dtype {dtype}, got {got}")
        dims = value["shape"]
        if not isinstance(dims, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
            raise Invalid("must give its shape as an array of lengths")
        try:
            raw = base64.b64decode(value["data"], validate=True)
        except (ValueError, TypeError):
            raise Invalid("does not carry valid base64 in data") from None
        want = DTYPES[got]
        for d in dims:
            want *= d
        if len(raw) != want:
            raise Invalid(f"must carry {want} bytes for shape {_fmt_shape(dims)} of {got}, got {len(raw)}")
        # a bytearray keeps the array writeable: the cell may change it in place
        arr = np.frombuffer(bytearray(raw), dtype=np.dtype(got).newbyteorder("<")).reshape(dims)
        if arr.dtype.byteorder == ">":  # a big-endian machine: give the cell native order
            arr = arr.astype(arr.dtype.newbyteorder("="))
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise Invalid(f"is not a regular {dtype or 'numeric'} tensor: {exc}") from None
        if arr.dtype.kind not in "biuf":
            raise Invalid(f"must hold numbers (nested arrays of equal lengths), got {arr.dtype.name if arr.dtype != object else 'mixed values'}")
        if dtype is not None and arr.dtype != np.dtype(dtype):
            want = np.dtype(dtype)
            if (want.kind == "b") != (arr.dtype.kind == "b") or (want.kind in "iu" and arr.dtype.kind == "f"):
                raise Invalid(f"must hold {dtype} values, got {arr.dtype.name}")
            cast = arr.astype(want)
            if want.kind in "iu" and not np.array_equal(cast, arr):
                raise Invalid(f"holds values out of the range of {dtype}")
            arr = cast
    if not _shape_ok(shape, arr.shape):
        raise Invalid(f"must have shape {_fmt_shape(shape)}, got shape {_fmt_shape(arr.shape)}")
    return arr


def _frame_in(value):
    pd = _pd()
    if isinstance(value, list):
        if not all(isinstance(r, dict) for r in value):
            raise Invalid("must be a table: records are row objects")
        return pd.DataFrame.from_records(value) if value else pd.DataFrame()
    if isinstance(value, dict) and "columns" in value and "data" in value and set(value) <= {"columns", "data", "index"}:
        try:
            return pd.DataFrame(value["data"], columns=value["columns"], index=value.get("index"))
        except (ValueError, TypeError) as exc:
            raise Invalid(f"is not a table in split orientation: {exc}") from None
    raise Invalid(f"must be a table: an array of row objects, or {{columns, data[, index]}}, got {json_type(value)}")


# ---------------------------------------------------------------------------
# Python -> JSON (outputs)


def convert_output(t, value, ndarray_format: str = "list"):
    """The JSON-encodable form of an output; raises Invalid(description of what
    was expected) when the value does not fit."""
    kind = t[0]
    if kind == "scalar":
        return _scalar_out(t[1], value)
    if kind == "list":
        if not isinstance(value, (list, tuple)) and not _is_ndarray(value):
            raise Invalid(f"a list, got {type(value).__name__}")
        return [convert_output(t[1], v, ndarray_format) for v in value]
    if kind == "ndarray":
        return _tensor_out(t[1], t[2], value, ndarray_format)
    return _frame_out(value)


def _is_ndarray(value) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"


def _scalar_out(type_: str, value):
    # numpy scalars (numpy.float32, numpy.int64 ...) are what models return: take their value
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if type_ == "any":
        return value
    if type_ == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif type_ == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if isinstance(value, int) else value
    elif type_ == "str":
        if isinstance(value, str):
            return value
    elif type_ == "bool":
        if isinstance(value, bool):
            return value
    elif type_ == "list":
        if isinstance(value, (list, tuple)):
            return value
    elif type_ == "dict":
        if isinstance(value, dict):
            return value
    elif type_ == "bytes":
        if isinstance(value, (bytes, bytearray)):
            return base64.b64encode(value).decode("ascii")
    raise Invalid(type_)


def _tensor_out(dtype, shape, value, fmt):
    np = _np()
    if not isinstance(value, (np.ndarray, np.generic, list, tuple, int, float)):
        raise Invalid(f"a numpy array, got {type(value).__name__}")
    arr = np.asarray(value)
    if dtype is not None and arr.dtype != np.dtype(dtype):
        if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
            raise Invalid(f"an array of {dtype}, got {arr.dtype}")
        arr = arr.astype(dtype)
    if arr.dtype.name not in DTYPES:
        raise Invalid(f"a numeric array, got dtype {arr.dtype}")
    if not _shape_ok(shape, arr.shape):
        raise Invalid(f"an array of shape {_fmt_shape(shape)}, got shape {_fmt_shape(arr.shape)}")
    if fmt == "base64":
        raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        return {"dtype": arr.dtype.name, "shape": list(arr.shape), "data": base64.b64encode(raw).decode("ascii")}
    return arr.tolist()


def _frame_out(value):
    pd = _pd()
    if not isinstance(value, pd.DataFrame):
        raise Invalid(f"a pandas DataFrame, got {type(value).__name__}")
    import json

    # pandas' own encoder turns numpy values, NaN (null) and timestamps (ISO) into JSON
    return json.loads(value.to_json(orient="records", date_format="iso"))
