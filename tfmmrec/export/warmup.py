"""Export: TF Serving warmup records (``assets.extra/tf_serving_warmup_requests``).

TF Serving replays these PredictionLog records when it loads a version, so the first real
request does not pay for graph tracing, tokenizer set-up or ScaNN searcher initialisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from tfmmrec import modalities
from tfmmrec.errors import ServingError

WARMUP_FILE = "tf_serving_warmup_requests"


def predict_request(model_name: str, signature: str, inputs: dict[str, Any],
                    version: int | None = None) -> predict_pb2.PredictRequest:
    """A PredictRequest with ``inputs`` converted by ``tf.make_tensor_proto``."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for name, value in inputs.items():
        try:
            proto = tf.make_tensor_proto(value)
        except UnicodeEncodeError:  # e.g. a shell argument that was not UTF-8 (surrogates)
            raise ServingError(f"{name}: a string is not valid UTF-8 text (a lone surrogate "
                               "escape); send text as UTF-8, binary data as bytes") from None
        request.inputs[name].CopyFrom(proto)
    return request


def warmup_requests(present, user_id: str, k: int, item_id: str | None = None
                    ) -> dict[str, dict[str, Any]]:
    """One small request per signature (synthetic content: valid, tiny, deterministic);
    ``item_id`` (a served item) adds ``embed_items`` and ``recommend_session``."""
    requests = {
        "serving_default": {"user_id": np.array([user_id])},
        "recommend": {"user_id": np.array([user_id]), "k": np.int32(k)},
        "embed_query": {"user_id": np.array([user_id])},
    }
    if item_id is not None:
        requests["embed_items"] = {"item_id": np.array([item_id])}
        requests["recommend_session"] = {"session_item_ids": np.array([[item_id]]),
                                         "user_id": np.array([user_id]), "k": np.int32(k)}
    for modality in present:
        requests[f"query_{modality}"] = {
            modality: modalities.get(modality).warmup_sample(), "k": np.int32(k)}
    return requests


def write_warmup_requests(extra_dir: Path, model_name: str,
                          requests: dict[str, dict[str, Any]]) -> Path:
    """One PredictionLog per signature, written as a TFRecord file."""
    path = Path(extra_dir) / WARMUP_FILE
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests.items():
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
                request=predict_request(model_name, signature, inputs)))
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(path: str | Path) -> list[predict_pb2.PredictRequest]:
    """The requests stored in a warmup file (for tests and for replaying them locally)."""
    requests = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        requests.append(log.predict_log.request)
    return requests

