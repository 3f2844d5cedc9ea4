"""Serving: TF Serving's REST API (``/v1/models/...``) over the same PredictionCore as gRPC.

JSON handling follows ``tensorflow_serving/util/json_tensor.cc``: row (``instances``) and
columnar (``inputs``) requests, ``{"b64": ...}`` for bytes, ``predictions`` / ``outputs``
responses, ``{"error": ...}`` with TF Serving's HTTP codes. The HTTP layer is the standard
library's ``ThreadingHTTPServer`` (no extra dependency; three routes need no framework); model
executions are bounded by the core's thread budget, not by the number of connections.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)

from tfmmrec.serving.predict import SIGNATURE_DEF_FIELD, PredictionCore, dtype_name
from tfmmrec.serving.status import RequestStatus, invalid_argument

logger = logging.getLogger(__name__)

# TF Serving's routes (model_servers/http_rest_api_util.cc), version labels included.
_PREDICT = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                      r":(classify|regress|predict)")
_STATUS = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                     r"(?:/(metadata))?")
ROW, COLUMNAR = "row", "columnar"
_INT_TYPES = {types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8,
              types_pb2.DT_INT64, types_pb2.DT_UINT32, types_pb2.DT_UINT64}
_FLOAT_TYPES = {types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF}


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
        raise invalid_argument(f"Malformed request: {method} {path}")

    def predict(self, model_spec, body: bytes) -> dict:
        document = parse_json(body)
        request = predict_pb2.PredictRequest()
        request.model_spec.CopyFrom(model_spec)
        signature = document.get("signature_name")
        if signature is not None:
            if not isinstance(signature, str):
                raise invalid_argument(f"JSON Value: {_short(document)} not formatted correctly. "
                                       "'signature_name' key must be a string value.")
            request.model_spec.signature_name = signature
        infos = self.core.signature_inputs(request.model_spec, request.model_spec.signature_name)
        request_format = fill_inputs(document, infos, request)
        response = self.core.predict(request)
        return outputs_json(response.outputs, request_format)


def _model_spec(spec, name: str, version: str | None, label: str | None):
    spec.name = unquote(name)
    if version is not None:
        spec.version.value = int(version)
    if label is not None:
        spec.version_label = unquote(label)
    return spec


# -- JSON → tensors ----------------------------------------------------------------------------
def parse_json(body: bytes) -> dict:
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid_argument(f"JSON Parse error: {exc}") from None
    if not isinstance(document, dict):
        raise invalid_argument(f"JSON Value: {_short(document)} Is not object")
    return document


def fill_inputs(document: dict, infos: dict, request: predict_pb2.PredictRequest) -> str:
    """Fill ``request.inputs`` from ``instances`` (row) or ``inputs`` (columnar); the format."""
    if "instances" in document and "inputs" in document:
        raise invalid_argument(f"JSON Value: {_short(document)} Not formatted correctly expecting "
                               "only one of 'inputs' or 'instances' keys to exist ")
    if "instances" in document:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {_short(document)} Excepting 'instances' to be "
                                   "an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {_short(document)} No values in 'instances' "
                                   "array")
        _fill_from_instances(instances, infos, request)
        return ROW
    if "inputs" in document:
        _fill_from_inputs(document["inputs"], infos, request)
        return COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


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
            raise invalid_argument(f"JSON object: does not have named input: {alias}")


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
                raise invalid_argument(f"Failed to process element: {index} key: {alias} of "
                                       "'instances' list. Error: JSON object: does not have "
                                       f"named input: {alias}")
            columns.setdefault(alias, []).append(value)
        if named and set(row) != set(infos):
            raise invalid_argument(f"Failed to process element: {index} of 'instances' list. "
                                   f"JSON object: {_short(item)} keys must be equal to: "
                                   f"{','.join(sorted(infos))}")
    for alias, values in columns.items():
        shapes = {tuple(_dense_shape(v)) for v in values}
        if len(shapes) > 1:
            raise invalid_argument(f"Failed to process element of 'instances' list, key: {alias}"
                                   f". Error: Expecting shape {list(_dense_shape(values[0]))} "
                                   "for every instance")
        request.inputs[alias].CopyFrom(json_to_tensor(values, infos[alias].dtype))


def _dense_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def json_to_tensor(value, dtype: int) -> tensor_pb2.TensorProto:
    """A JSON value (scalar or nested lists) as a TensorProto of ``dtype`` (json_tensor.cc)."""
    shape = _dense_shape(value)
    flat: list = []
    _flatten(value, shape, 0, dtype, flat)
    proto = tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape]))
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(flat)
    elif dtype == types_pb2.DT_FLOAT:
        proto.float_val.extend(flat)
    elif dtype == types_pb2.DT_DOUBLE:
        proto.double_val.extend(flat)
    elif dtype == types_pb2.DT_INT64:
        proto.int64_val.extend(flat)
    elif dtype == types_pb2.DT_BOOL:
        proto.bool_val.extend(flat)
    elif dtype in (types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8):
        proto.int_val.extend(flat)
    else:
        raise RequestStatus(grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON Value: "
                            f"{_short(value)} to type: {dtype_name(dtype)}")
    return proto


def _flatten(value, shape: list[int], level: int, dtype: int, out: list) -> None:
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid_argument(f"JSON Value: {_short(value)} found at incorrect level: "
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
            return value.encode("utf-8")
        if isinstance(value, dict):
            return _decode_b64(value)
    elif dtype == types_pb2.DT_BOOL:
        if isinstance(value, bool):
            return value
    elif not isinstance(value, bool):
        if dtype in _INT_TYPES and isinstance(value, int):
            return value
        if dtype in _FLOAT_TYPES and isinstance(value, int | float):
            return float(value)
    raise invalid_argument(f"JSON Value: {_short(value)} Type: {_json_type(value)} is not of "
                           f"expected type: {dtype_name(dtype)}")


def _decode_b64(value: dict) -> bytes:
    if not _is_b64(value):
        raise invalid_argument(f"JSON Value: {_short(value)} not formatted correctly for base64 "
                               "data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _json_type(value) -> str:
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


def _short(value, limit: int = 200) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


# -- tensors → JSON ----------------------------------------------------------------------------
def outputs_json(outputs, request_format: str) -> dict:
    """``{"predictions": [...]}`` (row) or ``{"outputs": ...}`` (columnar), as TF Serving."""
    arrays = {alias: tf.make_ndarray(outputs[alias]) for alias in sorted(outputs)}
    values = {alias: _to_json(array, alias.endswith("_bytes")) for alias, array in arrays.items()}
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


def _to_json(array: np.ndarray, as_bytes: bool):
    if array.dtype == object or array.dtype.kind in "SU":
        def convert(item):
            if as_bytes:
                return {"b64": base64.b64encode(item).decode("ascii")}
            return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
    elif array.dtype.kind == "f":
        def convert(item):
            # Shortest text that round-trips at the tensor's precision (TF Serving writes float32
            # 0.2 as 0.2, not 0.20000000298).
            return float(str(item)) if math.isfinite(item) else float(item)
    elif array.dtype.kind == "b":
        convert = bool
    else:
        convert = int
    if array.ndim == 0:
        return convert(array[()])
    return np.vectorize(convert, otypes=[object])(array).tolist()


def _dumps(payload: dict) -> bytes:
    return json.dumps(payload, indent=None, separators=(",", ":")).encode("utf-8")


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
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like TF Serving's libevent server
    timeout = 60  # idle keep-alive connections are closed after this many seconds
    server: RestServer

    def do_GET(self) -> None:
        self._respond("GET", b"")

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        limit = self.server.max_request_bytes
        if length < 0 or length > limit:
            self.close_connection = True
            if 0 < length <= 8 * limit:
                self._discard(length)  # so the client reads our answer, not a reset
            message = (f"Request body of {length} bytes is larger than the limit of {limit} "
                       "bytes (tfmmrec serve --max-request-bytes); send fewer or smaller items")
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _dumps({"error": message}))
            return
        self._respond("POST", self.rfile.read(length))

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                return
            length -= len(chunk)

    def _respond(self, method: str, body: bytes) -> None:
        path = urlsplit(self.path).path
        if not path.lower().startswith("/v1/"):
            self._send(HTTPStatus.NOT_FOUND, _dumps({"error": f"Not found: {path}"}))
            return
        try:
            status, payload = self.server.api.handle(method, path, body)
        except Exception:  # never let one request take the server down
            logger.exception("REST %s %s failed", method, path)
            status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, _dumps(
                {"error": "Internal error in tfmmrec serve; see its log"})
        self._send(status, payload)

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:
        logger.debug("REST %s - %s", self.address_string(), format % args)


class RestServer(ThreadingHTTPServer):
    """A thread per connection; model work is bounded by the core's slots."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], core: PredictionCore, max_request_bytes: int):
        super().__init__(address, _Handler)
        self.api = RestApi(core)
        self.max_request_bytes = max_request_bytes
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="tfmmrec-rest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
