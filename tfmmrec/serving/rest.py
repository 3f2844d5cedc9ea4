"""Serving: TF Serving's REST API (``/v1/models/...``) over the same PredictionCore as gRPC.

JSON handling follows ``tensorflow_serving/util/json_tensor.cc``: row (``instances``) and
columnar (``inputs``) requests, ``{"b64": ...}`` for bytes, ``predictions`` / ``outputs``
responses, ``{"error": ...}`` with TF Serving's HTTP codes. The HTTP layer is the standard
library's ``ThreadingHTTPServer`` (no extra dependency; three routes need no framework), a
thread per connection up to ``--rest-max-connections``, at most
``--rest-max-connections-per-client`` of them from one address (a 503 past either); model
executions are
bounded by the core's thread budget, not by the number of connections. A request line and
its headers must arrive within ``_Handler.head_timeout`` seconds of their first byte (408). Bodies
come by ``Content-Length`` or ``Transfer-Encoding: chunked`` (TF Serving takes both), each held
to ``--max-request-bytes`` and to ``_Handler.body_timeout`` seconds in all (408), the bodies of
all connections together to a budget (``RestServer(body_budget=...)``, 503 past it); a body whose
end cannot be found closes its keep-alive connection. Every answer is JSON, the standard
library's own refusals (414, 431, 501 …) included.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import grpc
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)

from tfmmrec.errors import ServingError
from tfmmrec.serving.json_tensor import (
    DEFAULT_JSON_VALUE_LIMIT,
    JsonValueLimit,
    array_to_json,
    dense_shape,
    is_b64,
    json_to_tensor,
    loads,
    short,
)
from tfmmrec.serving.limits import DEFAULT_MAX_CONNECTIONS
from tfmmrec.serving.predict import SIGNATURE_DEF_FIELD, PredictionCore, model_spec_key
from tfmmrec.serving.status import MAX_VERSION, RequestStatus, invalid_argument

logger = logging.getLogger(__name__)

# TF Serving's routes (model_servers/http_rest_api_util.cc), version labels included.
_PREDICT = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                      r":(classify|regress|predict)")
_STATUS = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                     r"(?:/(metadata))?")
ROW, COLUMNAR = "row", "columnar"


class RestApi:
    """Routes one HTTP request to the core; returns ``(http_status, JSON body)``."""

    def __init__(self, core: PredictionCore):
        self.core = core

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        try:
            payload = self._dispatch(method, path, body)
            return HTTPStatus.OK, _dumps(payload)
        except RequestStatus as status:
            return status.http_status, _dumps({"error": status.message})

    def _dispatch(self, method: str, path: str, body: bytes) -> dict:
        if method == "POST" and (match := _PREDICT.fullmatch(path)):
            name, version, label, verb = match.groups()
            spec = _model_spec(predict_pb2.PredictRequest().model_spec, name, version, label)
            if verb.lower() != "predict":
                raise RequestStatus(grpc.StatusCode.UNIMPLEMENTED,
                                    f"{verb} is not supported by tfmmrec serve (its signatures "
                                    "are predict signatures); use :predict")
            return self.predict(spec, body)
        if method == "GET" and (match := _STATUS.fullmatch(path)):
            name, version, label, metadata = match.groups()
            if not name:
                raise invalid_argument("Missing model name in request.")
            if metadata:
                request = get_model_metadata_pb2.GetModelMetadataRequest(
                    metadata_field=[SIGNATURE_DEF_FIELD])
                _model_spec(request.model_spec, name, version, label)
                return metadata_json(self.core.model_metadata(request))
            request = get_model_status_pb2.GetModelStatusRequest()
            _model_spec(request.model_spec, name, version, label)
            return status_json(self.core.model_status(request))
        raise invalid_argument(f"Malformed request: {method} {short(path, quoted=False)}")

    def predict(self, model_spec, body: bytes) -> dict:
        document = parse_json(body, self.json_value_limit(model_spec))
        request = predict_pb2.PredictRequest()
        request.model_spec.CopyFrom(model_spec)
        signature = document.get("signature_name")
        if signature is not None:
            if not isinstance(signature, str):
                raise invalid_argument(f"JSON Value: {short(document)} not formatted correctly. "
                                       "'signature_name' key must be a string value.")
            request.model_spec.signature_name = signature
        infos = self.core.signature_inputs(request.model_spec, request.model_spec.signature_name)
        request_format = fill_inputs(document, infos, request)
        response = self.core.predict(request)
        return outputs_json(response.outputs, request_format)

    def json_value_limit(self, model_spec) -> JsonValueLimit:
        """The JSON value limit of the version ``model_spec`` names, from its export's limits;
        the default when none is loaded (that error is then reported after parsing, as ever)."""
        try:
            name, version = model_spec_key(model_spec)
            with self.core.registry.handle(name, version) as servable:
                return JsonValueLimit.of_export(servable.metadata)
        except RequestStatus:
            return DEFAULT_JSON_VALUE_LIMIT


def _model_spec(spec, name: str, version: str | None, label: str | None):
    spec.name = unquote(name)
    if version is not None:
        spec.version.value = _version_number(version)
    if label is not None:
        spec.version_label = unquote(label)
    return spec


def _version_number(digits: str) -> int:
    """A URL's version as ModelSpec's int64; more digits than an int64 has are refused before
    ``int()``, which raises past 4300 digits (a 500, not TF Serving's 400)."""
    significant = digits.lstrip("0") or "0"
    if len(significant) > len(str(MAX_VERSION)) or int(significant) > MAX_VERSION:
        raise invalid_argument(f"Failed to convert version: {short(digits)} — a version "
                               f"is an int64 (at most {MAX_VERSION})")
    return int(significant)


# -- JSON → tensors ----------------------------------------------------------------------------
def parse_json(body: bytes, limit: JsonValueLimit = DEFAULT_JSON_VALUE_LIMIT) -> dict:
    document = loads(body, limit)
    if not isinstance(document, dict):
        raise invalid_argument(f"JSON Value: {short(document)} Is not object")
    return document


def fill_inputs(document: dict, infos: dict, request: predict_pb2.PredictRequest) -> str:
    """Fill ``request.inputs`` from ``instances`` (row) or ``inputs`` (columnar); the format."""
    if "instances" in document and "inputs" in document:
        raise invalid_argument(f"JSON Value: {short(document)} Not formatted correctly expecting "
                               "only one of 'inputs' or 'instances' keys to exist ")
    if "instances" in document:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {short(document)} Excepting 'instances' to be "
                                   "an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {short(document)} No values in 'instances' "
                                   "array")
        _fill_from_instances(instances, infos, request)
        return ROW
    if "inputs" in document:
        _fill_from_inputs(document["inputs"], infos, request)
        return COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _is_named(value) -> bool:
    return isinstance(value, dict) and not is_b64(value)


def _fill_from_inputs(value, infos: dict, request) -> None:
    if not _is_named(value):
        if len(infos) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as "
                                   "multiple input tensors required as per tensorinfo_map")
        alias = next(iter(infos))
        request.inputs[alias].CopyFrom(json_to_tensor(value, infos[alias].dtype))
        return
    for alias in sorted(infos):
        if alias not in value:
            continue  # TF Serving then reports the missing input (or uses its default)
        request.inputs[alias].CopyFrom(json_to_tensor(value[alias], infos[alias].dtype))
    for alias in value:
        if alias not in infos:
            raise invalid_argument("JSON object: does not have named input: "
                                   f"{short(alias, quoted=False)}")


def _row_format_hint(infos: dict) -> str:
    """What to send instead when the row format cannot serve a signature: a scalar input
    (``k``) cannot sit in every row, and no row may leave an input out for its default."""
    scalars = sorted(alias for alias, info in infos.items()
                     if not info.tensor_shape.unknown_rank and not info.tensor_shape.dim)
    if not scalars:
        return ""
    return (f" (this signature's scalar input {', '.join(scalars)} cannot be given per row: "
            "send the columnar form {\"inputs\": {...}}, where inputs left out take their "
            "defaults)")


def _fill_from_instances(instances: list, infos: dict, request) -> None:
    named = _is_named(instances[0])
    if not named and len(infos) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as "
                               "multiple input tensors required as per tensorinfo_map")
    columns: dict[str, list] = {}
    for index, item in enumerate(instances):
        if named != _is_named(item):
            kind = "list" if named else "object"
            raise invalid_argument(f"Expecting {'object' if named else 'value/list'} but got "
                                   f"{kind} at item {index} of input list")
        row = item if named else {next(iter(infos)): item}
        for alias, value in row.items():
            if alias not in infos:
                alias = short(alias, quoted=False)
                raise invalid_argument(f"Failed to process element: {index} key: {alias} of "
                                       "'instances' list. Error: JSON object: does not have "
                                       f"named input: {alias}")
            columns.setdefault(alias, []).append(value)
        if named and set(row) != set(infos):
            raise invalid_argument(f"Failed to process element: {index} of 'instances' list. "
                                   f"JSON object: {short(item)} keys must be equal to: "
                                   f"{','.join(sorted(infos))}{_row_format_hint(infos)}")
    for alias, values in columns.items():
        shapes = {tuple(dense_shape(v)) for v in values}
        if len(shapes) > 1:
            raise invalid_argument(f"Failed to process element of 'instances' list, key: {alias}"
                                   f". Error: Expecting shape {list(dense_shape(values[0]))} "
                                   "for every instance")
        request.inputs[alias].CopyFrom(json_to_tensor(values, infos[alias].dtype))


# -- tensors → JSON ----------------------------------------------------------------------------
def outputs_json(outputs, request_format: str) -> dict:
    """``{"predictions": [...]}`` (row) or ``{"outputs": ...}`` (columnar), as TF Serving."""
    arrays = {alias: tf.make_ndarray(outputs[alias]) for alias in sorted(outputs)}
    values = {alias: array_to_json(array, binary=alias.endswith("_bytes"))
              for alias, array in arrays.items()}
    if request_format == COLUMNAR:
        return {"outputs": values if len(values) > 1 else next(iter(values.values()))}
    batch = None
    for alias, array in arrays.items():
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {alias} has no shape information ")
        if batch is not None and array.shape[0] != batch:
            raise invalid_argument(f"Tensor name: {alias} has inconsistent batch size: "
                                   f"{array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{alias: values[alias][row] for alias in values}
                            for row in range(batch or 0)]}


def connections_per_client(per_client: int | None, max_connections: int) -> int:
    """``--rest-max-connections-per-client`` as served: ``None`` (the default, no cap of its
    own: behind a proxy every connection has one address) is the global cap; anything else
    must be an integer from 1 to the global cap (more could never be used), else a
    ``ServingError`` naming both flags and values."""
    if per_client is None:
        return max_connections
    if (isinstance(per_client, bool) or not isinstance(per_client, int)
            or not 1 <= per_client <= max_connections):
        raise ServingError(f"--rest-max-connections-per-client (rest_max_connections_per_"
                           f"client) = {per_client!r} must be an integer from 1 to "
                           f"--rest-max-connections = {max_connections} (default: no cap of "
                           "its own)")
    return per_client


def _too_many_connections(cap: int, per_client: bool = False) -> bytes:
    """The whole HTTP answer to a connection past ``--rest-max-connections`` or, with
    ``per_client``, past ``--rest-max-connections-per-client`` from its address."""
    if per_client:
        text = (f"Too many connections from this client: this server takes {cap} at once from "
                "one address (--rest-max-connections-per-client); retry later")
    else:
        text = (f"Too many connections: this server takes {cap} at once "
                "(--rest-max-connections); retry later")
    payload = _dumps({"error": text})
    return ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n"
            "Retry-After: 1\r\n\r\n").encode() + payload


def _dumps(payload: dict) -> bytes:
    """Strict JSON: a non-finite float (a -inf score, a NaN) is written as ``null``.

    TF Serving's writer (``WriteDecimal`` in util/json_tensor.cc) emits the bare tokens ``NaN``,
    ``Infinity`` and ``-Infinity``, which are not JSON: ``JSON.parse``, Go's and Java's strict
    parsers reject the whole response. ``tfmmrec serve`` deviates on purpose and writes ``null``
    (the client reads it back as NaN). Payloads are scanned only when the strict dump fails.
    """
    try:
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a non-finite float somewhere
        text = json.dumps(_finite(payload), separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def _finite(value: object) -> object:
    """``value`` with every non-finite float replaced by None (lists and dicts walked)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return value


def status_json(response: get_model_status_pb2.GetModelStatusResponse) -> dict:
    return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict:
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signatures)
    spec = json_format.MessageToDict(response.model_spec, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    return {"model_spec": spec,
            "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(
                signatures, preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True)}}


# -- HTTP plumbing ---------------------------------------------------------------------------
MAX_CHUNK_LINE = 4096  # a chunk-size line (with extensions) or trailer line, CRLF included
MAX_TRAILER_LINES = 64
MAX_REQUEST_LINE = 65536  # http.server's own limit (its 414)
_READ_SIZE = 1 << 16  # the most one socket read takes of a body
_CONTENT_LENGTH = re.compile(r"[0-9]+")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
# What the standard library's refusals (``send_error``) leave unsaid.
_ERROR_HINTS = {
    HTTPStatus.REQUEST_URI_TOO_LONG: "the request line is longer than the limit of "
                                     f"{MAX_REQUEST_LINE} bytes",
    HTTPStatus.NOT_IMPLEMENTED: "tfmmrec serve's REST API takes GET and POST",
}


class _BodyError(Exception):
    """The request body cannot be read as sent: answer ``status`` and close the connection
    (its unread bytes are not the next request). ``drain``, run after the answer, reads and
    drops what the client still sends, so that it reads the answer rather than a reset."""

    def __init__(self, status: int, message: str, drain: Callable[[], None] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.drain = drain


def _too_large(what: str, limit: int, drain: Callable[[], None] | None) -> _BodyError:
    return _BodyError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                      f"{what} is larger than the limit of {limit} bytes "
                      "(tfmmrec serve --max-request-bytes); send fewer or smaller items", drain)


def content_length(values: list[str]) -> int:
    """The one length of ``Content-Length`` header(s); a negative, non-numeric or conflicting
    value is a 400 (RFC 9112 §6.3), not a 413 for a body of "-5 bytes"."""
    found = [value.strip() for header in values for value in header.split(",")]
    # 19+ digits: over any limit; capped rather than converted (int() refuses 4300+ digits)
    numbers = {int(v) if len(v) <= 18 else 10**18 for v in found if _CONTENT_LENGTH.fullmatch(v)}
    if len(numbers) != 1 or not all(_CONTENT_LENGTH.fullmatch(v) for v in found):
        shown = ", ".join(found)
        shown = shown if len(shown) <= 40 else shown[:40] + "..."
        raise _BodyError(HTTPStatus.BAD_REQUEST, f"Invalid Content-Length header: {shown!r} "
                         "(expected one non-negative number of bytes)")
    return numbers.pop()


class BodyBudget:
    """The request-body bytes all connections may read or hold at once.

    The server has a thread per connection (up to ``--rest-max-connections``): N clients
    announcing 60 MB each and sending it slowly held N × 60 MB. A body is reserved as it
    arrives, each socket read (at most ``_READ_SIZE``) before it is made, and released once its
    answer is sent; a read that would go past the budget refuses its request (503), mid-upload
    for a large body, rather than queue it behind uploads that may never end.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        with self._lock:
            if self.in_use + size > self.limit:
                return False
            self.in_use += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.in_use -= size


class _BodyReader:
    """One request body off a connection, within a total deadline and the server's budget.

    The handler's socket timeout is per read: a byte every 20 s kept a body open forever. Here
    every read gets the time left of ``_Handler.body_timeout`` (reads take what has arrived,
    never waiting for a full buffer; the socket's own timeout is back after each, for the
    answer and the next request), and each read's bytes are reserved from the budget before it
    is made; :meth:`release` once the answer is sent.
    """

    def __init__(self, rfile, connection, budget: BodyBudget, limit: int, seconds: float):
        self.rfile = rfile
        self.connection = connection
        self.idle_timeout = connection.gettimeout()
        self.budget = budget
        self.limit = limit
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.received = 0
        self.appended = 0  # bytes of the body (or chunk) being read
        self.reserved = 0
        self.expected: int | None = None  # the Content-Length, for the 408's message

    def content(self, length: int) -> bytearray:
        """A body of ``Content-Length: length`` bytes; one that ends early is a 400 (it was
        served as if complete)."""
        self.expected = length
        drain = (lambda: self.discard(length - self.appended)) if length <= 8 * self.limit \
            else None
        if length > self.limit:
            raise _too_large(f"Request body of {length} bytes", self.limit, drain)
        body = bytearray()
        if length and self._append(body, length, f"Request body of {length} bytes",
                                   drain) < length:
            raise _BodyError(HTTPStatus.BAD_REQUEST, f"Request body ended after "
                             f"{len(body)} of {length} bytes (its Content-Length)")
        return body

    def chunked(self) -> bytearray:
        """A chunked body, refused with a 413 as soon as its chunks add up past the limit."""
        body = bytearray()
        while size := self._chunk_size():
            self.appended = 0
            drain = functools.partial(self._drain_rest_of_chunks, size, 8 * self.limit - len(body))
            if len(body) + size > self.limit:
                raise _too_large("Chunked request body", self.limit, drain)
            got = self._append(body, size, f"Chunk of {size} bytes", drain)
            if got < size:
                raise _BodyError(HTTPStatus.BAD_REQUEST, f"Chunked body ended inside a chunk "
                                 f"({got} of {size} bytes)")
            if self._readline(3) not in (b"\r\n", b"\n"):
                raise _BodyError(HTTPStatus.BAD_REQUEST, f"Chunk of {size} bytes is not "
                                 "followed by CRLF: its size does not match its data")
        self._skip_trailers()
        return body

    def release(self) -> None:
        self.budget.release(self.reserved)
        self.reserved = 0

    def discard(self, length: int) -> None:
        """Read and drop up to ``length`` bytes (of a refused body), never stored."""
        while length > 0:
            piece = self._in_time(self.rfile.read1, min(length, _READ_SIZE))
            if not piece:
                return
            length -= len(piece)

    # -- chunked framing ---------------------------------------------------------------------
    def _chunk_size(self) -> int:
        line = self._readline(MAX_CHUNK_LINE + 1)
        if not line:
            raise _BodyError(HTTPStatus.BAD_REQUEST, "Chunked body ended before its last "
                             "(zero-size) chunk")
        if len(line) > MAX_CHUNK_LINE or not line.endswith(b"\n"):
            raise _BodyError(HTTPStatus.BAD_REQUEST, "Chunk-size line longer than "
                             f"{MAX_CHUNK_LINE} bytes")
        size = line.split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size):
            raise _BodyError(HTTPStatus.BAD_REQUEST, "Malformed chunk size "
                             f"{short(line.rstrip().decode('latin-1'))} (expected hex digits)")
        return int(size, 16)

    def _skip_trailers(self) -> None:
        for _ in range(MAX_TRAILER_LINES):
            line = self._readline(MAX_CHUNK_LINE + 1)
            if line in (b"\r\n", b"\n", b""):
                return
            if len(line) > MAX_CHUNK_LINE:
                break
        raise _BodyError(HTTPStatus.BAD_REQUEST, "Chunked body trailer too long (at most "
                         f"{MAX_TRAILER_LINES} lines of {MAX_CHUNK_LINE} bytes)")

    def _drain_rest_of_chunks(self, size: int, budget: int) -> None:
        """``_drain_chunks`` from inside a chunk of ``size``, ``appended`` bytes of it read."""
        self._drain_chunks(size - self.appended, budget)

    def _drain_chunks(self, size: int, budget: int) -> None:
        """Read and drop a refused chunked body from its chunk of ``size`` on (up to
        ``budget`` bytes) so that the client reads the answer rather than a reset."""
        while 0 < size <= budget:
            self.discard(size + 2)  # the data and its CRLF
            budget -= size
            size = self._chunk_size()
        if size == 0:
            self._skip_trailers()

    # -- the budget and the deadline ---------------------------------------------------------
    def _reserve(self, size: int, what: str, drain: Callable[[], None] | None) -> None:
        if not self.budget.reserve(size):
            raise _BodyError(HTTPStatus.SERVICE_UNAVAILABLE, f"{what} refused: the REST "
                             f"server's budget of {self.budget.limit} bytes for request bodies "
                             "being received at once is in use (by default 4 x "
                             "--max-request-bytes); retry shortly", drain)
        self.reserved += size

    def _give_back(self, size: int) -> None:
        self.budget.release(size)
        self.reserved -= size

    def _in_time(self, read: Callable, argument):
        """``read(argument)``: one socket read at most, bounded by the body's time left."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._timed_out()
        self.connection.settimeout(left)  # restore_timeout once the body is read
        try:
            return read(argument)
        except TimeoutError:
            raise self._timed_out() from None

    def restore_timeout(self) -> None:
        """The connection's own timeout again, for the answer and the next request's head."""
        self.connection.settimeout(self.idle_timeout)

    def _timed_out(self) -> _BodyError:
        of = "" if self.expected is None else f" of {self.expected}"
        return _BodyError(HTTPStatus.REQUEST_TIMEOUT, f"Request body incomplete after "
                          f"{self.seconds:g} s, the limit for sending one body "
                          f"({self.received}{of} bytes received); send it at once")

    def _append(self, body: bytearray, size: int, what: str,
                drain: Callable[[], None] | None) -> int:
        """Read up to ``size`` bytes onto ``body`` in socket-sized pieces (no second copy of
        a large body); fewer only when the stream ends. Each read's bytes are reserved from
        the budget before it is made, and what it did not bring is given back: a connection
        that announces 64 MB and sends a byte holds one read's worth, not 64 MB (four such
        held the whole default budget)."""
        self.appended = 0
        while self.appended < size:
            wanted = min(size - self.appended, _READ_SIZE)
            self._reserve(wanted, what, drain)
            piece = self._in_time(self.rfile.read1, wanted)
            self._give_back(wanted - len(piece))
            if not piece:
                break
            body += piece
            self.appended += len(piece)
            self.received += len(piece)
        return self.appended

    def _readline(self, limit: int) -> bytes:
        """A line of at most ``limit`` bytes (``rfile.readline`` would wait past the
        deadline, a read per byte of a trickled line)."""
        line = _read_line(self.rfile, limit, lambda: self._in_time(self.rfile.peek, 1))
        self.received += len(line)
        return line


def _read_line(rfile, limit: int, peek: Callable[[], bytes]) -> bytes:
    """A line of at most ``limit`` bytes (negative: any length) from ``rfile``; ``peek()``
    gives what is buffered or makes one socket read, within its caller's deadline."""
    line = bytearray()
    while limit < 0 or len(line) < limit:
        buffered = peek()
        if not buffered:
            break
        room = len(buffered) if limit < 0 else limit - len(line)
        end = buffered.find(b"\n", 0, room)
        line += rfile.read(end + 1 if end >= 0 else min(len(buffered), room))  # buffered
        if end >= 0:
            break
    return bytes(line)


class _HeadReader:
    """The handler's ``rfile``: lines of a request's head (its request line and headers) are
    read within ``seconds`` of its first byte in all. The standard library's ``readline``
    waits per socket read, so a header byte every 15 s held a connection (and its slot) for
    as long as the client liked. Everything else is the buffered reader's own."""

    def __init__(self, rfile, connection, seconds: float):
        self._rfile = rfile
        self._connection = connection
        self.seconds = seconds
        self.deadline: float | None = None
        self.armed = self.timed_out = False

    def __getattr__(self, name: str):
        return getattr(self._rfile, name)

    def arm(self) -> None:
        """The next line starts a request's head: its first byte may take the idle time."""
        self.armed, self.deadline, self.timed_out = True, None, False

    def disarm(self, idle_timeout: float | None) -> None:
        """The head is read: the connection's own timeout again, for the body and answer."""
        if self.deadline is not None:
            self._connection.settimeout(idle_timeout)
        self.armed, self.deadline = False, None

    def readline(self, limit: int = -1) -> bytes:
        if not self.armed:
            return self._rfile.readline(limit)
        if self.deadline is None:
            if not self._rfile.peek(1):  # idle: the socket's own timeout
                return b""
            self.deadline = time.monotonic() + self.seconds
        return _read_line(self._rfile, limit, self._peek_in_time)

    def _peek_in_time(self) -> bytes:
        left = self.deadline - time.monotonic()
        self.timed_out = left <= 0
        if self.timed_out:
            raise TimeoutError(f"request head incomplete after {self.seconds:g} s")
        self._connection.settimeout(left)
        try:
            return self._rfile.peek(1)  # the buffer, or one socket read
        except TimeoutError:
            self.timed_out = True
            raise


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like TF Serving's libevent server
    timeout = 60  # seconds an idle keep-alive connection waits for its next request
    head_timeout = 60  # seconds for a request line and headers, from their first byte
    body_timeout = 60  # seconds for a whole body to arrive, however slowly it trickles in
    server: RestServer

    def setup(self) -> None:
        super().setup()
        self.rfile = _HeadReader(self.rfile, self.connection, self.head_timeout)

    def handle_one_request(self) -> None:
        self.rfile.arm()
        self.requestline = ""  # what an answer logs if the request line never arrives
        super().handle_one_request()  # a TimeoutError ends it, closing the connection
        if self.rfile.timed_out:
            self.rfile.disarm(self.timeout)  # the socket's timeout, for the answer
            # a status line and headers, and a body; the request line may be unread (and
            # send_response logs it)
            self.request_version, self.command = self.protocol_version, None
            self._send(HTTPStatus.REQUEST_TIMEOUT, _dumps({"error": (
                f"Request line and headers incomplete after {self.head_timeout:g} s, the "
                "limit for sending them; send them at once")}))

    def parse_request(self) -> bool:
        try:
            return super().parse_request()
        finally:
            self.rfile.disarm(self.timeout)

    def do_GET(self) -> None:
        self._with_body("GET")  # a GET body is read (and ignored) so the next request parses

    def do_POST(self) -> None:
        self._with_body("POST")

    def _with_body(self, method: str) -> None:
        reader = _BodyReader(self.rfile, self.connection, self.server.budget,
                             self.server.max_request_bytes, self.body_timeout)
        try:
            try:
                body = self._read_body(reader)
            except _BodyError as error:
                reader.restore_timeout()
                # Without its traceback, the refused body's frames are freed before the drain.
                self._refuse(error.with_traceback(None), reader)
                return
            reader.restore_timeout()
            self._respond(method, body)
        finally:
            reader.release()

    def _read_body(self, reader: _BodyReader) -> bytearray:
        """The body by ``Content-Length`` or ``Transfer-Encoding: chunked`` (as TF Serving's
        server accepts both), never holding more than ``--max-request-bytes`` of it."""
        codings = [coding.strip().lower() for header in self.headers.get_all(
            "Transfer-Encoding", []) for coding in header.split(",") if coding.strip()]
        lengths = self.headers.get_all("Content-Length", [])
        if not codings:
            return reader.content(content_length(lengths) if lengths else 0)
        named = ", ".join(codings)[:80]
        if codings[-1] != "chunked":  # RFC 9112 §6.3: the body's end cannot be found
            raise _BodyError(HTTPStatus.BAD_REQUEST, "Transfer-Encoding must end with "
                             f"chunked (got {named})")
        if codings != ["chunked"]:
            raise _BodyError(HTTPStatus.NOT_IMPLEMENTED, f"Transfer-Encoding {named} is "
                             "not supported; send the JSON chunked or with a Content-Length")
        if lengths:  # both: chunked wins, and the connection is not reused (RFC 9112 §6.3)
            self.close_connection = True
        return reader.chunked()

    def _refuse(self, error: _BodyError, reader: _BodyReader) -> None:
        """Answer a body that is not read, release its reservation, then drain what the
        client still sends (within the body's deadline) before the connection closes."""
        self.close_connection = True
        self._send(error.status, _dumps({"error": error.message}))
        reader.release()
        if error.drain is not None:  # malformed, late or gone: the connection closes anyway
            with contextlib.suppress(_BodyError, OSError):
                error.drain()

    def _respond(self, method: str, body: bytes | bytearray) -> None:
        path = urlsplit(self.path).path
        if not path.lower().startswith("/v1/"):
            self._send(HTTPStatus.NOT_FOUND, _dumps({"error": f"Not found: "
                                                              f"{short(path, quoted=False)}"}))
            return
        try:
            status, payload = self.server.api.handle(method, path, body)
        except Exception:  # never let one request take the server down
            logger.exception("REST %s %s failed", method, short(path, quoted=False))
            status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, _dumps(
                {"error": "Internal error in tfmmrec serve; see its log"})
        self._send(status, payload)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """The standard library's own refusals (request line or header too long, a method
        other than GET/POST, bad syntax) in JSON like every other answer, not an HTML page;
        shortened, as its messages echo the request line."""
        text = short(message or HTTPStatus(code).phrase, quoted=False)
        if explain:
            text += f": {short(explain, quoted=False)}"
        if code in _ERROR_HINTS:
            text += f" ({_ERROR_HINTS[code]})"
        self.log_error("code %d, message %s", code, text)
        self.close_connection = True
        self._send(code, _dumps({"error": text}))

    def _send(self, status: int, payload: bytes) -> None:
        """Answer JSON (its headers alone to a HEAD); a client already gone is a debug line,
        not a traceback."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except ConnectionError as error:
            self.close_connection = True
            logger.debug("REST %s: the client left before its answer (%s)",
                         self.address_string(), error)

    def log_message(self, format: str, *args) -> None:
        logger.debug("REST %s - %s", self.address_string(), format % args)


class RestServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them and at most
    ``max_connections_per_client`` from one client address; model work is bounded by the
    core's slots, request bodies by ``body_budget``: the bytes all connections may read or
    hold at once (4 × max_request_bytes by default; past it a request is a 503 at once), each
    body arriving within ``_Handler.body_timeout`` seconds (else a 408).

    A connection past either cap is answered 503 from the accepting thread and closed,
    without a thread of its own: thousands of idle or trickling clients cost their sockets, not
    thousands of threads, and one address cannot take every slot. (Idle keep-alive
    connections still hold a slot for up to ``_Handler.timeout`` seconds, so many addresses
    together still can; on an untrusted network put a proxy in front, as for TF Serving.)

    The listen backlog is 1024 (the standard library's default of 5 resets connections as soon
    as a few dozen clients connect at once; TF Serving's libevent server uses the OS maximum).
    """

    daemon_threads = True
    request_queue_size = 1024
    block_on_close = False

    def __init__(self, address: tuple[str, int], core: PredictionCore, max_request_bytes: int,
                 body_budget: int | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_connections_per_client: int | None = None):
        budget = 4 * max_request_bytes if body_budget is None else body_budget
        if budget < max_request_bytes:
            raise ServingError(f"body_budget={budget} is smaller than max_request_bytes="
                               f"{max_request_bytes}: a body at the limit could never be read")
        if max_connections < 1:
            raise ServingError(f"max_connections={max_connections} must be at least 1")
        per_client = connections_per_client(max_connections_per_client, max_connections)
        super().__init__(address, _Handler)
        self.api = RestApi(core)
        self.max_request_bytes = max_request_bytes
        self.budget = BodyBudget(budget)
        self.max_connections = max_connections
        self.max_connections_per_client = per_client
        self.open_connections = 0  # connections with a thread now (read by tests, logs)
        self._per_client: dict[str, int] = {}  # client address → its connections now
        self._connections_lock = threading.Lock()
        self._turned_away, self._warned_at = 0, -math.inf
        # sent as they are, once per refusal
        self._too_many = _too_many_connections(max_connections)
        self._too_many_from_one = _too_many_connections(per_client, per_client=True)
        self._thread: threading.Thread | None = None

    def process_request(self, request, client_address) -> None:
        """A thread for the connection if one of ``max_connections`` is free and its address
        holds fewer than ``max_connections_per_client``, else a 503."""
        host = client_address[0]
        with self._connections_lock:
            full = self.open_connections >= self.max_connections
            crowded = self._per_client.get(host, 0) >= self.max_connections_per_client
            if not (full or crowded):
                self.open_connections += 1
                self._per_client[host] = self._per_client.get(host, 0) + 1
        if full or crowded:
            self._turn_away(request, client_address, per_client=not full)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: its slot is free again
            self._connection_ended(host)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connection_ended(client_address[0])

    def _connection_ended(self, host: str) -> None:
        with self._connections_lock:
            self.open_connections -= 1
            left = self._per_client.pop(host) - 1
            if left:  # an address without connections leaves no entry behind
                self._per_client[host] = left

    def connections_from(self, host: str) -> int:
        """The connections ``host`` holds now (read by tests, logs)."""
        with self._connections_lock:
            return self._per_client.get(host, 0)

    def _turn_away(self, request, client_address, per_client: bool = False) -> None:
        """Answer 503 and close, from the accepting thread: a non-blocking send of a few
        hundred bytes into a fresh socket's buffer, so a client that never reads cannot stall
        the accept loop. What the client already sent is read off first where it has arrived,
        so the close is a FIN after the answer rather than a reset that could discard it."""
        self._turned_away += 1
        now = time.monotonic()
        if now - self._warned_at >= 10.0:  # one line per 10 s under a flood, with the count
            reason = (f"{client_address[0]} holds {self.max_connections_per_client} "
                      "(--rest-max-connections-per-client)" if per_client else
                      f"{self.max_connections} open (--rest-max-connections)")
            logger.warning("REST: %s; turned away %d connections since the last warning "
                           "(latest %s)", reason, self._turned_away, client_address[0])
            self._warned_at, self._turned_away = now, 0
        with contextlib.suppress(OSError):
            request.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                request.recv(65536)
            request.send(self._too_many_from_one if per_client else self._too_many)
        self.shutdown_request(request)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up or stalls mid-request is routine: a debug line, not the
        traceback socketserver prints to stderr; anything else is logged with its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            logger.debug("REST %s: connection ended (%s)", client_address[0], error)
            return
        logger.error("REST connection from %s failed", client_address[0], exc_info=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="tfmmrec-rest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever: only once started
            self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
