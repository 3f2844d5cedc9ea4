"""Serving: the one JSON ⇄ tensor codec of TF Serving's REST API, for server and client alike.

Follows ``tensorflow_serving/util/json_tensor.cc``: nested lists of one depth per dimension,
``{"b64": ...}`` for binary strings, plain JSON strings for text. The REST server parses
requests with :func:`json_to_tensor` and writes responses with :func:`array_to_json`; the client
encodes with :func:`array_to_json` and decodes with :func:`json_to_array`, so both ends agree on
dtypes (:data:`NUMPY_DTYPES`), names (:func:`dtype_name`) and bytes handling.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from tfmmrec.config import ExportConfig, ServingLimitsConfig
from tfmmrec.errors import cut
from tfmmrec.serving.status import RequestStatus, invalid_argument

# One table for both ends: the numpy dtype of each TensorProto dtype JSON can carry.
NUMPY_DTYPES = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
                types_pb2.DT_HALF: np.float16, types_pb2.DT_INT8: np.int8,
                types_pb2.DT_UINT8: np.uint8, types_pb2.DT_INT16: np.int16,
                types_pb2.DT_INT32: np.int32, types_pb2.DT_INT64: np.int64,
                types_pb2.DT_UINT32: np.uint32, types_pb2.DT_UINT64: np.uint64,
                types_pb2.DT_BOOL: np.bool_, types_pb2.DT_STRING: object}
# (min, max) of each integer dtype, for JSON numbers and the client's numpy integers
INT_RANGES = {dtype: (int(np.iinfo(np.dtype(t)).min), int(np.iinfo(np.dtype(t)).max))
              for dtype, t in NUMPY_DTYPES.items() if t is not object and np.dtype(t).kind in "iu"}
_FLOAT_TYPES = {types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF}
# TF's DataTypeString names (what TF Serving's messages say).
_CPP_NAMES = {types_pb2.DT_FLOAT: "float", types_pb2.DT_DOUBLE: "double",
              types_pb2.DT_HALF: "half", types_pb2.DT_STRING: "string"}
MAX_JSON_DEPTH = 64  # tensors have at most 64 dimensions in TensorFlow too


def dtype_name(dtype: int) -> str:
    """``float``, ``int32``, ``string`` … (TF's DataTypeString); ``invalid (N)`` otherwise."""
    if dtype in _CPP_NAMES:
        return _CPP_NAMES[dtype]
    try:
        name = types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"invalid ({dtype})"
    return "invalid" if name == "DT_INVALID" else name.removeprefix("DT_").lower()


def proto_dtype_name(dtype: int) -> str:
    """The enum name (``DT_STRING``), as signature metadata shows dtypes."""
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"DT_INVALID({dtype})"


# -- JSON text → tensors -----------------------------------------------------------------------
@dataclass(frozen=True)
class JsonValueLimit:
    """The most JSON values (the document, array elements, object members) one REST request
    may hold, checked before ``json.loads`` builds them: CPython takes about 80 bytes a value,
    so a 32 MiB body of ``[],`` took 825 MiB to parse before being refused.

    max_batch_size × (max_session_items + max_exclude + 32): the largest request an export accepts.

    That is a full batch of ``recommend_session`` rows, each with full sessions and exclusions
    (32 covers a row's object, its arrays and every other input), read from the served
    export's own limits (:meth:`of_export`), so ``tfmmrec serve`` never refuses a request the
    graph would take; with the default limits, 186,368 values (about 15 MB of Python objects).
    """

    max_batch_size: int = ServingLimitsConfig.max_batch_size
    max_session_items: int = ExportConfig.max_session_items
    max_exclude: int = ExportConfig.max_exclude

    # A recommend_session row needs 10: its object, 2 arrays, user_id, 4 viewed_<m>, 2 b64 keys
    ROW_EXTRA: ClassVar[int] = 32

    @classmethod
    def of_export(cls, metadata: Mapping) -> JsonValueLimit:
        """The limit of an export, from its ``tfmmrec.json`` (the defaults for what it lacks:
        a SavedModel not written by tfmmrec, or a version from before a key was recorded)."""
        limits = metadata.get("limits")
        found = {"max_batch_size": (limits if isinstance(limits, Mapping) else {}).get(
                     "max_batch_size"),
                 "max_session_items": metadata.get("max_session_items"),
                 "max_exclude": metadata.get("max_exclude")}
        return cls(**{key: value for key, value in found.items()
                      if isinstance(value, int) and not isinstance(value, bool) and value >= 0})

    @property
    def values(self) -> int:
        return self.max_batch_size * (self.max_session_items + self.max_exclude + self.ROW_EXTRA)

    def __str__(self) -> str:
        return (f"export.limits.max_batch_size={self.max_batch_size} rows × "
                f"(export.max_session_items={self.max_session_items} + "
                f"export.max_exclude={self.max_exclude} + {self.ROW_EXTRA}) values per row")


DEFAULT_JSON_VALUE_LIMIT = JsonValueLimit()  # a model without tfmmrec limits; 186,368 values


def loads(body: bytes, limit: JsonValueLimit = DEFAULT_JSON_VALUE_LIMIT):
    """Parse a request body; syntax errors, bad UTF-8, excessive nesting, more values than
    ``limit`` and integers too long for Python to convert are client errors (400), never a
    500."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    body = _utf8(body)  # the bytes scanned are the bytes parsed
    depth, values = _scan(body, limit.values)
    if depth > MAX_JSON_DEPTH:
        raise invalid_argument(f"JSON Parse error: nesting depth {depth} exceeds the limit of "
                               f"{MAX_JSON_DEPTH}")
    if values > limit.values:
        raise invalid_argument(f"JSON Parse error: more than {limit.values} JSON values (array "
                               f"elements and object members), over the limit of "
                               f"{limit.values}: {limit}; send fewer rows per request")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid_argument(f"JSON Parse error: {exc}") from None
    except RecursionError:
        raise invalid_argument("JSON Parse error: the document is nested too deeply") from None
    except ValueError:  # int("1" * 5000): Python refuses long integer strings (CVE-2020-10735)
        raise invalid_argument(
            f"JSON Parse error: a number has more than {sys.get_int_max_str_digits()} digits; "
            "no tensor dtype holds it (int64 has at most 19)") from None


def _utf8(body: bytes) -> bytes:
    """``body`` without a UTF-8 byte-order mark; a UTF-16/32 body is refused. ``json.loads``
    would decode either, but the pre-scan reads UTF-8 bytes: a mark or a wider encoding ended
    its count at the first byte and let ``json.loads`` build the whole body unbounded."""
    if body.startswith(codecs.BOM_UTF8):
        body = body[len(codecs.BOM_UTF8):]
    encoding = json.detect_encoding(body[:4])
    if encoding != "utf-8":
        raise invalid_argument(f"JSON Parse error: the body is {encoding.upper()}; send UTF-8 "
                               "JSON")
    return body


# The pre-scan's tokens, each matched in C (the body's bytes are never looped over in Python):
# a key (a string and its colon), a run of comma-terminated strings (a list of ids: one token),
# a string alone, ``[``/``{``, an empty ``[]``/``{}``, ``]``/``}``, a comma, a run of
# comma-terminated scalars, a scalar (or other bytes) alone. In a body without a backslash a
# string ends at the next quote (a fast single-byte repeat) and a run's strings are its quotes
# / 2; otherwise escapes are followed (about 10 times slower per byte) and each string is its
# own token. Possessive repeats and an unterminated string running to the end of the body keep
# every match linear (no backtracking, no match retried inside a scalar).
_KEY, _STRINGS, _OPEN, _EMPTY, _CLOSE, _COMMA, _SCALAR, _SCALARS = range(1, 9)  # last group
_STRING = 9  # a string alone: its match has no group (lastindex None)
_SCALAR_BYTES = rb'[^"\[\]{},\s]++'


def _tokens(string: bytes, runs: bool) -> re.Pattern:
    more = rb'(?:\s*+' + string + rb'\s*+,)*+' if runs else b""
    return re.compile(
        string + rb'(?:(\s*+:)|(\s*+,' + more + rb'))?|([\[{])(\s*+[\]}])?|([\]}])|(,)'
        rb'|(' + _SCALAR_BYTES + rb')\s*+(,(?:\s*+' + _SCALAR_BYTES + rb'\s*+,)*+)?', re.DOTALL)


_TOKENS_PLAIN = _tokens(rb'"[^"]*+"?', runs=True)
_TOKENS_ESCAPED = _tokens(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"?', runs=False)
_COMPLETE = frozenset({_STRING, _SCALAR, _CLOSE, _EMPTY})  # a value just ended: ] or , next


def _scan(body: bytes, max_values: int) -> tuple[int, int]:
    """``(deepest nesting, values)`` in one linear pass over ``body``'s tokens.

    Values are counted as 1 + commas + non-empty arrays/objects outside strings: exact for a
    valid document (every value but the document is the first member of a non-empty container
    or follows a comma). The pass stops once deeper than MAX_JSON_DEPTH, past ``max_values``,
    or where the document is certainly malformed (``json.loads`` then reports it, after parsing
    no more than the scanned, counted part). So its Python work is bounded by the values
    counted, not by the body's length: between two counted tokens come at most a key, one
    uncounted value and closing brackets (at most the depth), as a value that ends must be
    followed by ``]`` or a comma.
    """
    plain = b"\\" not in body
    depth = deepest = previous = 0
    values = 1
    for token in (_TOKENS_PLAIN if plain else _TOKENS_ESCAPED).finditer(body):
        kind = token.lastindex or _STRING
        if kind == _CLOSE:
            depth -= 1
            if depth <= 0:  # the document's end (anything after it is an error)
                break
        elif kind == _COMMA:
            values += 1
        elif previous in _COMPLETE or (depth == 0 and kind != _OPEN) or kind == _KEY == previous:
            break  # a value right after a value, a key after a key, or a scalar document
        elif kind == _OPEN:
            depth += 1
            values += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    break
        elif kind == _EMPTY:
            deepest = max(deepest, depth + 1)
        elif kind == _STRINGS:
            values += body.count(b'"', token.start(), token.end()) // 2 if plain else 1
        elif kind == _SCALARS:
            values += body.count(b",", token.start(), token.end())
        if values > max_values:
            break
        previous = kind
    return deepest, values


def dense_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


# TensorProto's value field per dtype (every other integer kind, e.g. int32/int8/uint8, is int_val).
_VALUE_FIELD = {
    types_pb2.DT_STRING: "string_val", types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_HALF: "half_val",
    types_pb2.DT_INT64: "int64_val", types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_BOOL: "bool_val",
}


def json_to_tensor(value, dtype: int) -> tensor_pb2.TensorProto:
    """A JSON value (scalar or nested lists) as a TensorProto of ``dtype`` (json_tensor.cc)."""
    if dtype not in NUMPY_DTYPES:
        raise RequestStatus(grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON Value: "
                            f"{short(value)} to type: {dtype_name(dtype)}")
    shape = dense_shape(value)
    flat: list = []
    _flatten(value, shape, 0, dtype, flat)
    proto = tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape]))
    if dtype == types_pb2.DT_HALF:  # stored as the IEEE bit patterns, as TensorProto wants
        flat = np.asarray(flat, np.float16).view(np.uint16).tolist()
    getattr(proto, _VALUE_FIELD.get(dtype, "int_val")).extend(flat)
    return proto


def _flatten(value, shape: list[int], level: int, dtype: int, out: list) -> None:
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid_argument(f"JSON Value: {short(value)} found at incorrect level: "
                                   f"{level + 1} in the JSON DOM. Expected at level: {len(shape)}")
        out.append(_scalar(value, dtype))
        return
    if level >= len(shape):
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < "
                               f"{len(shape)}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: "
                               f"{level} expected size: {shape[level]}")
    for item in value:
        _flatten(item, shape, level + 1, dtype, out)


def _scalar(value, dtype: int):
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, str):
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError:
                raise invalid_argument(f"JSON Value: {short(value)} is not valid UTF-8 text (a "
                                       "lone surrogate escape); send binary data as "
                                       '{"b64": ...}') from None
        if isinstance(value, dict):
            return decode_b64(value)
    elif dtype == types_pb2.DT_BOOL:
        if isinstance(value, bool):
            return value
    elif not isinstance(value, bool):
        if dtype in INT_RANGES and isinstance(value, int):
            low, high = INT_RANGES[dtype]
            if not low <= value <= high:
                raise invalid_argument(f"JSON Value: {short(value)} is out of range for "
                                       f"{dtype_name(dtype)} [{low}, {high}]")
            return value
        if dtype in _FLOAT_TYPES and isinstance(value, int | float):
            if isinstance(value, int) and abs(value) > 2**1023:
                raise invalid_argument(f"JSON Value: {short(value)} is out of range for "
                                       f"{dtype_name(dtype)}")
            return float(value)
    raise invalid_argument(f"JSON Value: {short(value)} Type: {json_type(value)} is not of "
                           f"expected type: {dtype_name(dtype)}")


def is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value: dict) -> bytes:
    if not is_b64(value):
        raise invalid_argument(f"JSON Value: {short(value)} not formatted correctly for base64 "
                               "data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def short(value, limit: int = 200, quoted: bool = True) -> str:
    """What an error may echo of a request value: its JSON text, cut to ``limit`` characters
    (a 100 KB name came back whole, over REST in a 100 KB body and over gRPC past its status
    metadata limit, which turned the real status into RESOURCE_EXHAUSTED). ``quoted=False``
    shows a string without its quotes, as TF Serving's messages show names; control characters
    stay escaped either way, so the message stays one line."""
    try:
        if not quoted and isinstance(value, str):
            text = json.dumps(value, ensure_ascii=False)[1:-1]
        else:
            text = json.dumps(value)
    except (ValueError, RecursionError):
        text = repr(value)
    return cut(text, limit)


# -- arrays → JSON and back --------------------------------------------------------------------
def array_to_json(array: np.ndarray, binary: bool | None = None):
    """numpy → JSON values. Byte strings become ``{"b64": ...}`` when ``binary`` is True (a
    server output named ``*_bytes``) or None (a client request: bytes stay bytes) and text when
    False (a server output: TF Serving writes DT_STRING outputs as text); ``str`` stays text.
    Floats use the shortest text that round-trips at the tensor's precision."""
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind in "SU":
        def convert(item):
            if isinstance(item, bytes):
                if binary is False:
                    return item.decode("utf-8", "replace")
                return {"b64": base64.b64encode(item).decode("ascii")}
            return str(item)
    elif array.dtype.kind == "f":
        def convert(item):
            return float(str(item)) if math.isfinite(item) else float(item)
    elif array.dtype.kind == "b":
        convert = bool
    else:
        convert = int
    if array.ndim == 0:
        return convert(array[()])
    return np.vectorize(convert, otypes=[object])(array).tolist()


def json_to_array(value, dtype: int | None) -> np.ndarray:
    """A JSON response value as numpy (strings as bytes, ``{"b64"}`` decoded)."""
    if dtype == types_pb2.DT_STRING:
        return np.array(_strings_nested(value), dtype=object)
    return np.array(value, dtype=NUMPY_DTYPES.get(dtype))


def _strings_nested(value):
    if isinstance(value, list):
        return [_strings_nested(item) for item in value]
    if isinstance(value, dict) and "b64" in value:
        return base64.b64decode(value["b64"])
    return str(value).encode("utf-8")
