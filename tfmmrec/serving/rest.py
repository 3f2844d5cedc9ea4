"""Serving: TF Serving's REST API (``/v1/models/...``) over the same PredictionCore as gRPC.

JSON handling follows ``tensorflow_serving/util/json_tensor.cc``: row (``instances``) and
columnar (``inputs``) requests, ``{"b64": ...}`` for bytes, ``predictions`` / ``outputs``
responses, ``{"error": ...}`` with TF Serving's HTTP codes. The HTTP layer is the standard
library's ``ThreadingHTTPServer`` (no extra dependency; three routes need no framework); model
executions are bounded by the core's thread budget, not by the number of connections.
"""

from __future__ import annotations

import json
import logging
import re
import threading
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

from tfmmrec.serving.json_tensor import (
    array_to_json,
    dense_shape,
    is_b64,
    json_to_tensor,
    loads,
    short,
)
from tfmmrec.serving.predict import SIGNATURE_DEF_FIELD, PredictionCore
from tfmmrec.serving.status import RequestStatus, invalid_argument

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
        raise invalid_argument(f"Malformed request: {method} {path}")

    def predict(self, model_spec, body: bytes) -> dict:
        document = parse_json(body)
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


MAX_VERSION = 2**63 - 1  # ModelSpec.version is an Int64Value


def _model_spec(spec, name: str, version: str | None, label: str | None):
    spec.name = unquote(name)
    if version is not None:
        number = int(version)
        if number > MAX_VERSION:
            raise invalid_argument(f"Failed to convert version: {short(version)} — a version "
                                   f"is an int64 (at most {MAX_VERSION})")
        spec.version.value = number
    if label is not None:
        spec.version_label = unquote(label)
    return spec


# -- JSON → tensors ----------------------------------------------------------------------------
def parse_json(body: bytes) -> dict:
    document = loads(body)
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
                                   f"JSON object: {short(item)} keys must be equal to: "
                                   f"{','.join(sorted(infos))}")
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
    """A thread per connection; model work is bounded by the core's slots.

    The listen backlog is 1024 (the standard library's default of 5 resets connections as soon
    as a few dozen clients connect at once; TF Serving's libevent server uses the OS maximum).
    """

    daemon_threads = True
    request_queue_size = 1024
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
