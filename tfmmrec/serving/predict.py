"""Serving: run Predict / GetModelMetadata / GetModelStatus on loaded versions, as TF Serving does.

Both front ends (gRPC and REST) end here, so they validate alike and fail with the same status.
Checks and messages follow TF Serving's ``predict_util.cc`` and ``saved_model/util.cc``
(input count, missing inputs with signature defaults, dtypes); on top of them the input shapes are
checked against the SignatureDef, because an eager call would otherwise fail deep inside the
graph with an op's message ("In[0] is not a matrix") that does not name the input.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)

from tfmmrec.errors import name_viewed_input
from tfmmrec.export.loader import shape_mismatch
from tfmmrec.export.warmup import read_warmup_requests
from tfmmrec.serving.json_tensor import NUMPY_DTYPES, dtype_name, short
from tfmmrec.serving.registry import WARMUP_PATH, ModelRegistry, Servable
from tfmmrec.serving.status import RequestStatus, from_tf_error, invalid_argument

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"
DEFAULT_MAX_TENSOR_BYTES = 64 * 2**20
_STRING_ELEMENT_BYTES = 32  # sizeof(tstring): what each string element costs before its bytes


def shape_of(tensor_info) -> list[int] | None:
    """A TensorInfo's shape as a list (-1 = any size), or None for unknown rank."""
    shape = tensor_info.tensor_shape
    return None if shape.unknown_rank else [d.size for d in shape.dim]


class PredictionCore:
    """The model-facing half of a server: registry + a bound on concurrent model executions.

    Args:
        registry: the loaded versions.
        num_threads: at most this many model executions run at once (the rest wait, up to their
            deadline); size it to the cores, since each execution already uses TF's thread pools.
        max_tensor_bytes: the most memory one input tensor may expand to (element count ×
            element size, checked on the TensorProto before it is materialised).
    """

    def __init__(self, registry: ModelRegistry, num_threads: int,
                 max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES):
        self.registry = registry
        self.num_threads = num_threads
        self.max_tensor_bytes = max_tensor_bytes
        self._slots = threading.BoundedSemaphore(num_threads)

    # -- Predict -----------------------------------------------------------------------------
    def predict(self, request: predict_pb2.PredictRequest,
                timeout: float | None = None) -> predict_pb2.PredictResponse:
        """Run ``request`` on the version it names (default: newest); raises RequestStatus."""
        start = time.monotonic()
        name, version = model_spec_key(request.model_spec)
        with self.registry.handle(name, version) as servable:
            if timeout is None:
                self._slots.acquire()
            else:
                remaining = timeout - (time.monotonic() - start)
                if remaining <= 0 or not self._slots.acquire(timeout=remaining):
                    raise RequestStatus(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            try:
                return run_predict(servable, request, self.max_tensor_bytes)
            finally:
                self._slots.release()

    def signature_inputs(self, model_spec, signature_name: str) -> dict:
        """The named inputs of a signature (REST needs them to type the JSON values)."""
        name, version = model_spec_key(model_spec)
        key = signature_name or DEFAULT_SIGNATURE
        with self.registry.handle(name, version) as servable:
            signature = servable.signature_defs.get(key)
            if signature is None or key not in servable.signatures:
                raise invalid_argument(
                    f"Serving signature name: {short(key)} not found in signature def")
            return dict(signature.inputs)

    # -- GetModelMetadata --------------------------------------------------------------------
    def model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                       ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field")
        for metadata_field in request.metadata_field:
            if metadata_field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {short(metadata_field, quoted=False)} "
                                       "is not supported")
        name, version = model_spec_key(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        with self.registry.handle(name, version) as servable:
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            signatures = get_model_metadata_pb2.SignatureDefMap()
            for key, signature in servable.signature_defs.items():
                signatures.signature_def[key].CopyFrom(signature)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signatures)
        return response

    # -- GetModelStatus ----------------------------------------------------------------------
    def model_status(self, request: get_model_status_pb2.GetModelStatusRequest
                     ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        name, version = model_spec_key(request.model_spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, record in self.registry.status(name, version):
            entry = response.model_version_status.add()
            entry.version = number
            entry.state = record.state
            entry.status.error_code = grpc.StatusCode[record.error_code].value[0]
            entry.status.error_message = record.error_message
        return response

    # -- warmup ------------------------------------------------------------------------------
    def warmup(self, servable: Servable) -> None:
        """Replay the version's TF Serving warmup records (each must succeed, as in TF Serving)."""
        path = servable.path.joinpath(*WARMUP_PATH)
        requests = read_warmup_requests(path) if path.is_file() else []
        for request in requests:
            try:
                run_predict(servable, request)
            except RequestStatus as status:
                signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
                raise RuntimeError(f"warmup request for signature {signature!r} failed: "
                                   f"{status.code.name}: {status.message}") from None
        if requests:
            logger.info("%s version %d: replayed %d warmup request(s)", servable.name,
                        servable.version, len(requests))


def model_spec_key(model_spec) -> tuple[str, int | None]:
    """``(name, version or None)``; version labels are not supported."""
    if model_spec.version_label:
        raise invalid_argument(f"Unrecognized servable version label: "
                               f"{short(model_spec.version_label, quoted=False)} (tfmmrec serve "
                               "has no version labels; request a version number)")
    version = model_spec.version.value if model_spec.HasField("version") else None
    return model_spec.name, version


def run_predict(servable: Servable, request: predict_pb2.PredictRequest,
                max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> predict_pb2.PredictResponse:
    """Validate ``request`` against the signature, run it, and pack the outputs."""
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = servable.signature_defs.get(name)
    if signature is None or name not in servable.signatures:
        raise RequestStatus(grpc.StatusCode.FAILED_PRECONDITION,
                            f"Serving signature key {short(name)} not found.")
    _verify_inputs_size(signature, request)
    feeds = _input_values(name, signature, request, max_tensor_bytes)
    aliases = _output_aliases(signature, request)
    try:
        outputs = servable.signatures[name](**feeds)
        values = {alias: outputs[alias].numpy() for alias in aliases}
    except tf.errors.OpError as error:
        raise _named_input(from_tf_error(error), signature.inputs) from None
    except UnicodeDecodeError:
        # TensorFlow's message quoted the request's raw bytes and Python cannot decode it.
        raise invalid_argument(f"signature '{name}' could not decode an input: a corrupt or "
                               "unsupported image/WAV file (send JPEG/PNG/GIF/BMP/WebP or "
                               "16-bit PCM WAV bytes)") from None
    except (TypeError, ValueError) as error:
        raise invalid_argument(str(error)) from None
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = name
    for alias, value in values.items():
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return response


def _named_input(status: RequestStatus, inputs: Iterable[str]) -> RequestStatus:
    """``status`` naming the input the request sent (``errors.name_viewed_input``)."""
    message = name_viewed_input(status.message, inputs)
    return status if message == status.message else RequestStatus(status.code, message)


def _names(names: Iterable[str]) -> str:
    """Request input names as TF Serving lists them (sorted, comma-separated), shortened: the
    request chose them, any number of any length."""
    return short(",".join(sorted(names)), quoted=False)


def _verify_inputs_size(signature, request) -> None:
    sent, expected = set(request.inputs), set(signature.inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{_names(sent)}}}) != len({{{_names(expected)}}}). "
            f"Sent extra: {{{_names(sent - expected)}}}. "
            f"Missing but required: {{{_names(expected - sent)}}}.")


def check_tensor_proto(alias: str, proto, max_bytes: int) -> None:
    """Refuse a TensorProto whose shape would expand beyond ``max_bytes`` (or that is
    malformed) before ``make_ndarray`` allocates it: a 57-byte proto declaring ``[300000]``
    with one ``string_val`` would otherwise become 300,000 rows."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid_argument(f"input '{alias}' has a negative dimension in shape {dims}")
    if len(dims) > 64:
        raise invalid_argument(f"input '{alias}' has {len(dims)} dimensions; at most 64")
    count = 1
    for d in dims:
        count *= d
    if proto.dtype == types_pb2.DT_STRING:
        given = len(proto.string_val)
        if given != count and not (count == 0 and given == 0):
            raise invalid_argument(f"input '{alias}' declares shape {dims} ({count} elements) "
                                   f"but carries {given} string values; send every element")
        size = count * _STRING_ELEMENT_BYTES + sum(len(v) for v in proto.string_val)
    else:
        numpy_dtype = NUMPY_DTYPES.get(proto.dtype)
        if numpy_dtype is None:
            raise invalid_argument(f"input '{alias}' has unsupported dtype "
                                   f"{dtype_name(proto.dtype)}")
        size = count * np.dtype(numpy_dtype).itemsize
        if proto.tensor_content and len(proto.tensor_content) != size:
            raise invalid_argument(f"input '{alias}': tensor_content has "
                                   f"{len(proto.tensor_content)} bytes, shape {dims} of "
                                   f"{dtype_name(proto.dtype)} needs {size}")
    if size > max_bytes:
        raise invalid_argument(f"input '{alias}' of shape {dims} would take {size} bytes, over "
                               f"the limit of {max_bytes} bytes per tensor "
                               "(tfmmrec serve --max-request-bytes); send fewer items")


def _input_values(signature_name: str, signature, request,
                  max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> dict[str, tf.Tensor]:
    feeds = {}
    for index, alias in enumerate(sorted(signature.inputs)):
        info = signature.inputs[alias]
        if alias in request.inputs:
            proto = request.inputs[alias]
        elif alias in signature.defaults:
            proto = signature.defaults[alias]
        else:
            raise invalid_argument(
                f"Signature input alias: {alias}(feed name: {info.name}) not found in request "
                f"and no default value provided. Inputs expected to be in the request "
                f"{{{_names(request.inputs)}}}, or default input alias set: "
                f"{_names(signature.defaults)}")
        if proto.dtype != info.dtype:  # TF Serving's message, naming the input too
            raise invalid_argument(f"Expects arg[{index}] to be {dtype_name(info.dtype)} but "
                                   f"{dtype_name(proto.dtype)} is provided (input '{alias}' of "
                                   f"signature '{signature_name}')")
        check_tensor_proto(alias, proto, max_tensor_bytes)
        try:
            value = tf.make_ndarray(proto)
        except Exception:  # any malformed TensorProto
            raise invalid_argument(f"tensor parsing error: {alias}") from None
        _check_shape(signature_name, alias, value.shape, shape_of(info))
        feeds[alias] = tf.constant(value, dtype=tf.dtypes.as_dtype(info.dtype))
    unknown = set(request.inputs) - set(signature.inputs)
    if unknown:
        raise invalid_argument(
            f"Inputs contains invalid name. Used request inputs: "
            f"{_names(set(request.inputs) & set(signature.inputs))}, request input: "
            f"{_names(request.inputs)}")
    return feeds


def _check_shape(signature_name: str, alias: str, shape: tuple[int, ...],
                 expected: list[int] | None) -> None:
    mismatch = shape_mismatch(signature_name, alias, shape, expected)
    if mismatch:
        raise invalid_argument(mismatch)


def _output_aliases(signature, request) -> list[str]:
    if not request.output_filter:
        return list(signature.outputs)
    seen = []
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {short(alias, quoted=False)} "
                f"Outputs expected to be in the set {{{_names(signature.outputs)}}}.")
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen
