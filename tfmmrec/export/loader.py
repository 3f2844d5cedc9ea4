"""Export: load an exported version in-process (registers custom ops first) and query it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfmmrec._env import register_custom_ops
from tfmmrec.errors import ExportError
from tfmmrec.export.writer import list_versions, read_metadata


def latest_version(model_dir: str | os.PathLike) -> Path:
    """The highest integer version directory (TF Serving's default choice)."""
    model_dir = Path(model_dir)
    versions = list_versions(model_dir)
    if not versions:
        raise ExportError(f"no model versions under {model_dir}")
    return model_dir / str(versions[-1])


class ExportedModel:
    """A loaded version: ``signatures[name](**inputs)`` plus convenience calls."""

    def __init__(self, version_dir: str | os.PathLike):
        self.path = Path(version_dir)
        self.metadata = read_metadata(self.path)
        register_custom_ops(scann=self.metadata.get("requires_scann_ops", True))
        try:
            self._loaded = tf.saved_model.load(str(self.path))
        except Exception as exc:
            raise ExportError(f"cannot load SavedModel {self.path}: {exc}") from None
        self.signatures = dict(self._loaded.signatures)

    def call(self, signature: str, **inputs) -> dict[str, np.ndarray]:
        if signature not in self.signatures:
            raise ExportError(f"{self.path} has no signature {signature!r}; it has "
                              f"{', '.join(sorted(self.signatures))}")
        arguments = self.signatures[signature].structured_input_signature[1]
        if "k" in arguments and "k" not in inputs:
            # TF Serving applies the SignatureDef default; Python's loader does not.
            inputs["k"] = np.int32(min(self.metadata["default_k"], self.metadata["max_k"]))
        outputs = self.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    def recommend(self, user_ids, k: int | None = None) -> dict[str, np.ndarray]:
        users = np.asarray(user_ids).astype(str)
        if k is None:
            return self.call("serving_default", user_id=users)
        return self.call("recommend", user_id=users, k=np.int32(k))
