"""Serving: the client end — query a TF Serving (or ``tfmmrec serve``) model over gRPC or REST.

gRPC goes through tensorflow-serving-api's ``PredictionService``/``ModelService`` stubs; REST uses
TF Serving's JSON API (columnar ``inputs``, ``{"b64": ...}`` for bytes) with the standard
library's ``urllib``, so the client needs nothing beyond what tfmmrec already installs. Failures
become :class:`ServingRequestError` with the gRPC code name and a message saying what to do.
"""

from __future__ import annotations

import functools
import http.client
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from tfmmrec import modalities
from tfmmrec.errors import ServingError, one_line_error
from tfmmrec.export.loader import (
    check_k,
    check_ordered,
    id_texts,
    integer_in,
    padded,
    session_rows,
)
from tfmmrec.export.warmup import predict_request
from tfmmrec.modalities.base import MAX_REQUEST_FILE_BYTES, check_strings
from tfmmrec.serving.json_tensor import (
    INT_RANGES,
    NUMPY_DTYPES,
    array_to_json,
    json_to_array,
    proto_dtype_name,
)
from tfmmrec.serving.status import GRPC_CODE_FOR_HTTP, MAX_VERSION

MAX_MESSAGE_BYTES = MAX_REQUEST_FILE_BYTES
# What gRPC's status details say when an HTTP/1.x server answered its HTTP/2 preface (the
# wording differs between gRPC releases).
_HTTP1_ANSWER = re.compile(r"Failed parsing HTTP/2|http1\.x server|HTTP/1\.[01]", re.IGNORECASE)
# TF Serving's unknown signature: FAILED_PRECONDITION over gRPC, INVALID_ARGUMENT (400) over REST.
_UNKNOWN_SIGNATURE = re.compile(r'Serving signature (?:key|name:) ".*" not found')


class ServingRequestError(ServingError):
    """A request the server (or the network) refused; ``code`` is the gRPC code name."""

    def __init__(self, message: str, code: str, details: str = ""):
        super().__init__(message)
        self.code = code
        self.details = details


class ServingClient:
    """Query one served model the way any TF Serving model is queried.

    Args:
        target: ``host:port`` of the gRPC port (8500) or, with ``rest=True``, the REST port
            (8501; ``http://`` optional).
        model: the model name in the server's config (``export.model_name``).
        version: ask for this version (an integer from 1 to 2**63 - 1) instead of the newest
            one the server has.
        rest: use the REST API instead of gRPC (slower: JSON + base64 for bytes).
        timeout: seconds per request (the gRPC deadline / the socket timeout).

    Example::

        with ServingClient("127.0.0.1:8500", "tfmmrec") as client:
            top = client.query_text(["a rainy night in the city"], k=5)
            print(top["item_ids"][0], top["scores"][0])
    """

    def __init__(self, target: str, model: str = "tfmmrec", *, version: int | None = None,
                 rest: bool = False, timeout: float = 10.0,
                 max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.target = target.removeprefix("http://").rstrip("/")
        self.model = model
        self.version = _version(version)
        self.rest = rest
        self.timeout = timeout
        self._signatures: dict | None = None
        self._channel = None
        if not rest:
            self._channel = grpc.insecure_channel(self.target, options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes)])
            self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
            self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    # -- tfmmrec signatures ------------------------------------------------------------------
    def recommend(self, user_ids: Sequence[str] | str, k: int | None = None,
                  exclude: Sequence[Sequence[str]] | None = None) -> dict[str, np.ndarray]:
        """Top-k items per user (``serving_default`` when ``k`` and ``exclude`` are None, else
        ``recommend``: serving_default takes no exclusions); ``exclude``: per user, item ids
        never to return."""
        users = _user_ids(user_ids)
        if k is None and exclude is None:
            return self.predict("serving_default", {"user_id": users})
        return self.predict("recommend", _optional("recommend", {"user_id": users}, k, exclude))

    def recommend_session(self, sessions: Sequence[Sequence[str]],
                          user_ids: Sequence[str] | None = None, k: int | None = None,
                          exclude: Sequence[Sequence[str]] | None = None
                          ) -> dict[str, np.ndarray]:
        """Top-k items per session (a list of recent item ids, oldest first), optionally of a
        user each (``recommend_session``); ``exclude``: per session, item ids never to return."""
        inputs = {"session_item_ids": session_rows(sessions)}
        if user_ids is not None:
            inputs["user_id"] = _user_ids(user_ids)
        return self.predict("recommend_session",
                            _optional("recommend_session", inputs, k, exclude))

    def query(self, modality: str, values, k: int | None = None,
              exclude: Sequence[Sequence[str]] | None = None) -> dict[str, np.ndarray]:
        """Top-k items for content of a registered modality (the ``query_<modality>``
        signature): text as strings, media as encoded bytes or file paths; one or a list.
        ``k=None`` leaves ``k`` out of the request so the signature's default applies (the
        export's ``default_k``, which stays within a catalogue smaller than ``export.k``; a
        fixed client-side default would fail there). ``query_text(values, k)``,
        ``query_image(...)`` and so on — one per registered modality, a user-registered one
        included — are shorthands for it. ``exclude``: per value, item ids never to return."""
        spec = modalities.get(modality)
        signature = f"query_{spec.name}"
        request = _content(spec, values, f"{signature}: {spec.name}")
        return self.predict(signature, _optional(signature, {spec.name: request}, k, exclude))

    def __getattr__(self, name: str):
        """``query_<modality>``: :meth:`query` for every modality in the registry (looked up
        when called, so a modality registered after the client was made has its method)."""
        modality = name.removeprefix("query_")
        if name.startswith("query_") and modality in modalities.names():
            return functools.partial(self.query, modality)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *(f"query_{m}" for m in modalities.names())]

    def embed_query(self, user_ids: Sequence[str] | str) -> np.ndarray:
        return self.predict("embed_query", {"user_id": _user_ids(user_ids)})["embedding"]

    def known_users(self, user_ids: Sequence[str] | str) -> np.ndarray:
        """``[B]`` bool: whether the model tells each user from an unknown one. A served model
        answers an id it was not trained on with the cold-start query (no error, by design);
        this compares each user's query with the one the empty id gets in the same
        ``embed_query`` request (one batch: no batch-size-dependent rounding between the two).
        Two requests for several users, the last one apart, so that no request is larger than
        the caller's batch: a batch of exactly ``export.limits.max_batch_size`` users fits."""
        ids = list(_user_ids(user_ids))
        known: list[bool] = []
        for part in (ids[:-1], ids[-1:]) if len(ids) > 1 else (ids,):
            queries = self.embed_query([*part, ""])
            known += [not np.array_equal(query, queries[-1]) for query in queries[:-1]]
        return np.array(known, bool)

    def known_items(self, item_ids: Sequence[str] | str) -> np.ndarray:
        """``[B]`` bool: whether each item is in the served catalogue (``embed_items``'
        ``found``). A session or exclude list naming an unknown item is served without it
        (no error, by design); this says which ones were ignored."""
        ids = _user_ids(item_ids, "item_ids")  # the same checks: a batch of id strings
        return np.asarray(self.predict("embed_items", {"item_id": ids})["found"], bool)

    # -- generic TF Serving calls ------------------------------------------------------------
    def predict(self, signature: str, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run ``signature`` on ``inputs`` (numpy-convertible values); outputs as numpy arrays."""
        what = self._what(signature)
        if self.rest:
            return self._rest_predict(signature, inputs, what)
        request = predict_request(self.model, signature, self._typed_integers(signature, inputs),
                                  self.version)
        try:
            response = self._predict.Predict(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise self._grpc_error(error, what) from None
        return {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}

    def metadata(self) -> dict[str, dict]:
        """Each signature's inputs and outputs: ``{name: {"inputs": {alias: (dtype, shape)}}}``."""
        return {name: {part: {alias: (proto_dtype_name(info.dtype), _shape(info))
                              for alias, info in getattr(signature, part).items()}
                       for part in ("inputs", "outputs")}
                for name, signature in self._signature_defs().items()}

    def status(self) -> list[dict]:
        """GetModelStatus: ``[{"version", "state", "error_code", "error_message"}]``."""
        if self.rest:
            payload = self._rest_call("GET", self._model_path(), None, "model status")
            rows = payload.get("model_version_status", [])
        else:
            request = get_model_status_pb2.GetModelStatusRequest()
            self._fill_spec(request.model_spec)
            try:
                response = self._models.GetModelStatus(request, timeout=self.timeout)
            except grpc.RpcError as error:
                raise self._grpc_error(error, f"model {self.model!r} status") from None
            rows = json_format.MessageToDict(response, preserving_proto_field_name=True,
                                             always_print_fields_with_no_presence=True
                                             )["model_version_status"]
        return [{"version": int(row["version"]), "state": row["state"],
                 "error_code": row["status"]["error_code"],
                 "error_message": one_line_error(row["status"]["error_message"])}
                for row in rows]

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------------------------
    def _what(self, signature: str) -> str:
        version = f" version {self.version}" if self.version is not None else ""
        return f"model {self.model!r}{version} signature {signature!r} at {self.target}"

    def _typed_integers(self, signature: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``inputs`` with numpy integer scalars of another width (``np.int64(2)``: numpy's
        default int) as the signature's integer dtype when they fit: a gRPC TensorProto must
        carry the exact dtype, while REST types a JSON number by the signature. The signature's
        metadata is fetched (once per client) only when such a value is sent."""
        loose = [alias for alias, value in inputs.items() if _other_integer(value)]
        signature_def = self._signature_defs().get(signature) if loose else None
        typed = dict(inputs)
        if signature_def is None:  # none to convert, or the server names the signature
            return typed
        for alias in loose:
            info = signature_def.inputs.get(alias)
            if info is not None and info.dtype in INT_RANGES \
                    and integer_in(inputs[alias], *INT_RANGES[info.dtype]) is not None:
                typed[alias] = np.asarray(inputs[alias]).astype(NUMPY_DTYPES[info.dtype])
        return typed

    def _fill_spec(self, spec) -> None:
        spec.name = self.model
        if self.version is not None:
            spec.version.value = self.version

    def _signature_defs(self) -> dict:
        if self._signatures is not None:
            return self._signatures
        signatures = get_model_metadata_pb2.SignatureDefMap()
        if self.rest:
            payload = self._rest_call("GET", self._model_path() + "/metadata", None, "metadata")
            json_format.ParseDict(payload["metadata"]["signature_def"], signatures,
                                  ignore_unknown_fields=True)
        else:
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                metadata_field=["signature_def"])
            self._fill_spec(request.model_spec)
            try:
                response = self._predict.GetModelMetadata(request, timeout=self.timeout)
            except grpc.RpcError as error:
                raise self._grpc_error(error, f"model {self.model!r} metadata") from None
            response.metadata["signature_def"].Unpack(signatures)
        self._signatures = dict(signatures.signature_def)
        return self._signatures

    def _grpc_error(self, error: grpc.RpcError, what: str) -> ServingRequestError:
        code = error.code()
        details = one_line_error(error.details() or "")  # TF Serving sends the raw TF text
        return ServingRequestError(_explain(code.name, details, what, self.target, self.timeout,
                                            rest=False), code.name, details)

    # REST --------------------------------------------------------------------------------------
    def _model_path(self) -> str:
        path = f"/v1/models/{urllib.request.quote(self.model, safe='')}"
        return path + (f"/versions/{self.version}" if self.version is not None else "")

    def _rest_predict(self, signature: str, inputs: Mapping[str, Any], what: str
                      ) -> dict[str, np.ndarray]:
        body = {"signature_name": signature,
                "inputs": {alias: array_to_json(np.asarray(value))
                           for alias, value in inputs.items()}}
        payload = self._rest_call("POST", self._model_path() + ":predict", body, what)
        outputs = payload["outputs"]
        signature_def = self._signature_defs().get(signature)
        infos = dict(signature_def.outputs) if signature_def is not None else {}
        if len(infos) == 1 and not (isinstance(outputs, dict) and set(outputs) == set(infos)):
            outputs = {next(iter(infos)): outputs}  # one output: TF Serving drops its name
        return {alias: json_to_array(value, infos[alias].dtype if alias in infos else None)
                for alias, value in outputs.items()}

    def _rest_call(self, method: str, path: str, body: dict | None, what: str) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(f"http://{self.target}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:  # a 200 but not JSON
            raise ServingRequestError(
                _explain("UNAVAILABLE", f"its answer is not JSON: {error}", what, self.target,
                         self.timeout, rest=True), "UNAVAILABLE") from None
        except urllib.error.HTTPError as error:
            details = _error_text(error)
            code = GRPC_CODE_FOR_HTTP.get(error.code, grpc.StatusCode.UNKNOWN).name
            raise ServingRequestError(_explain(code, details, what, self.target, self.timeout,
                                               rest=True, answered=True), code, details) from None
        except TimeoutError:
            raise ServingRequestError(_explain("DEADLINE_EXCEEDED", "", what, self.target,
                                               self.timeout, rest=True),
                                      "DEADLINE_EXCEEDED") from None
        except (urllib.error.URLError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            code = "DEADLINE_EXCEEDED" if isinstance(reason, TimeoutError) else "UNAVAILABLE"
            raise ServingRequestError(_explain(code, str(reason), what, self.target,
                                               self.timeout, rest=True), code,
                                      str(reason)) from None
        except http.client.HTTPException as error:  # e.g. the gRPC port's HTTP/2 frames
            details = (f"the answer is not HTTP/1.1: {type(error).__name__} — the gRPC port? "
                       "it takes no --rest")
            raise ServingRequestError(_explain("UNAVAILABLE", details, what, self.target,
                                               self.timeout, rest=True), "UNAVAILABLE",
                                      details) from None


def _version(version) -> int | None:
    """``version`` as ModelSpec's int64, checked before any request: over gRPC -3 was a
    NOT_FOUND and 2**64 a bare ValueError, over REST -3 was a 400 (the URL did not parse)."""
    if version is None:
        return None
    number = integer_in(version, 1, MAX_VERSION)
    if number is None:
        raise ServingError(f"version must be an integer from 1 to {MAX_VERSION} (a version "
                           f"folder's number), got {version!r}")
    return number


def _other_integer(value) -> bool:
    """A numpy integer scalar (or 0-d array) that is not int32, the dtype TF Serving
    signatures (and ``tf.make_tensor_proto`` of a Python int) use."""
    dtype = np.asarray(value).dtype
    return (isinstance(value, np.integer | np.ndarray) and np.ndim(value) == 0
            and dtype.kind in "iu" and dtype != np.int32)


def _user_ids(user_ids: Sequence[str] | str, name: str = "user_ids") -> np.ndarray:
    """The ``user_id`` batch (one id alone is a batch of one), refused before it is sent when
    it is a dict or set (its keys would be sent as ids, in no particular order) or an id is
    not a string, as ``ExportedModel`` refuses them: gRPC would raise a bare TypeError and
    REST's JSON would serve ``1`` as the unknown user "1". ``name``: the argument errors
    name (``item_ids`` for a batch of item ids)."""
    if isinstance(user_ids, str | bytes) or not isinstance(user_ids, Iterable):
        user_ids = [user_ids]
    check_ordered(user_ids, name, "ids")
    return np.array(id_texts(list(user_ids), name), dtype=object)


def _content(spec: modalities.ModalitySpec, values, name: str) -> np.ndarray:
    """``spec.request_values(values)``, checked to be strings/bytes before it is sent. The
    modality checks the values it is given (text takes strings, a file modality paths or
    bytes, a registered one whatever it encodes, arrays included); this checks what it made,
    as every ``query_<name>`` input is a batch of strings whatever the modality."""
    request = spec.request_values(values)
    check_strings(request, name)
    return request


def _optional(signature: str, inputs: dict[str, Any], k: int | None,
              exclude) -> dict[str, Any]:
    """``inputs`` plus the optional ``k`` and ``exclude_item_ids`` (""-padded rows), both
    checked as ``ExportedModel`` checks them, before anything is sent; a None stays out of the
    request, so the SignatureDef's default applies (the export's default_k, no exclusions)."""
    if k is not None:
        inputs["k"] = check_k(k, signature)
    if exclude is not None and len(rows := padded(exclude, "exclude")):
        inputs["exclude_item_ids"] = rows  # [] is none: as JSON it has shape [0], not [0, 0]
    return inputs


def _explain(code: str, details: str, what: str, target: str, timeout: float, rest: bool,
             answered: bool = False) -> str:
    """what went wrong — where — how to fix it, for the status codes users actually meet
    (``answered``: the server sent this status, so it was reached)."""
    protocol = "REST" if rest else "gRPC"
    port_hint = "8501 for REST" if rest else "8500 for gRPC"
    if code == "UNAVAILABLE" and not rest and _HTTP1_ANSWER.search(details):
        return (f"cannot reach {target} over gRPC ({details}) — something answers HTTP/1.x "
                "there, not gRPC: the REST port? Query it with --rest, or fix --target "
                "(default ports: 8500 for gRPC, 8501 for REST)")
    if code == "UNAVAILABLE" and answered:
        return (f"{what}: UNAVAILABLE: {details} — the server is busy; retry shortly (or send "
                "smaller requests)")
    if code == "UNAVAILABLE":
        return (f"cannot reach {target} over {protocol} ({details or 'connection refused'}) — "
                f"is `tfmmrec serve` or tensorflow_model_server running there? Start one, or "
                f"fix --target (default ports: {port_hint})")
    if code == "DEADLINE_EXCEEDED":
        return (f"{what}: no answer within {timeout:g} s — the server is overloaded or still "
                "loading the model; retry, or raise --timeout")
    if code == "NOT_FOUND":
        return (f"{what}: NOT_FOUND: {details} — check --model and --version against "
                "`tfmmrec query --status` (the server serves the newest version unless its "
                "version policy keeps more)")
    if code == "FAILED_PRECONDITION" or _UNKNOWN_SIGNATURE.match(details):
        return (f"{what}: {code}: {details} — the model has no such signature; "
                "`tfmmrec query --metadata` lists them")
    if code == "RESOURCE_EXHAUSTED" and "metadata size" in details:
        return (f"{what}: RESOURCE_EXHAUSTED: {details} — the server's error message was "
                "larger than gRPC's metadata limit (a very long name in the request?)")
    if code == "INVALID_ARGUMENT":
        return (f"{what}: INVALID_ARGUMENT: {details} — fix the request (inputs, k within "
                "[1, max_k], decodable image/WAV bytes); `tfmmrec query --metadata` lists the "
                "signatures' inputs")
    if code == "RESOURCE_EXHAUSTED":
        return (f"{what}: RESOURCE_EXHAUSTED: {details} — the request is too large for the "
                "server (or it is overloaded); send fewer or smaller items")
    return f"{what}: {code}: {details}"


def _error_text(error: urllib.error.HTTPError) -> str:
    raw = error.read()
    try:
        text = str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        text = raw.decode("utf-8", "replace").strip() or str(error.reason)
    return one_line_error(text)  # TF Serving's REST bodies carry the raw TF text


def _shape(info) -> list[int] | None:
    return None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]


def served_items(result: Mapping[str, np.ndarray], row: int,
                 scores: str = "scores") -> list[tuple[str, float]]:
    """``(item id, score)`` of one result row, without the places no item filled (id "": the
    catalogue held fewer than k items besides the excluded ones). ``scores``: the output to
    read them from (a two-stage ``recommend`` also answers ``retrieval_scores``)."""
    pairs = []
    for item, score in zip(result["item_ids"][row], result[scores][row], strict=True):
        item = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        if item:
            pairs.append((item, float(score)))
    return pairs


def format_results(result: Mapping[str, np.ndarray], queries: Iterable[str]) -> str:
    """A plain-text table of top-k item ids and scores per query (for the CLI); a two-stage
    answer's retrieval scores in a column of their own."""
    lines = []
    two_stage = "retrieval_scores" in result
    for row, query in enumerate(queries):
        lines.append(f"{query}:" + (" (item, ranking score, retrieval score)" if two_stage
                                    else ""))
        retrieval = served_items(result, row, "retrieval_scores") if two_stage else None
        for rank, (item, score) in enumerate(served_items(result, row), start=1):
            extra = f" {retrieval[rank - 1][1]:.4f}" if retrieval else ""
            lines.append(f"  {rank:>3}  {item:<24} {score:.4f}{extra}")
    return "\n".join(lines)
