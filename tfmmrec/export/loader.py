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
        # TF Serving applies the SignatureDef defaults; Python's loader does not.
        if "k" in arguments and "k" not in inputs:
            inputs["k"] = np.int32(min(self.metadata["default_k"], self.metadata["max_k"]))
        if "exclude_item_ids" in arguments and "exclude_item_ids" not in inputs:
            inputs["exclude_item_ids"] = np.zeros((0, 0), dtype=object).astype(bytes)
        # ``recommend_session``'s optional inputs: its user and a viewed_<modality> per
        # modality the export was made with (read from the signature, not the registry).
        optional = [a for a in arguments if a == "user_id" or a.startswith("viewed_")]
        for name in optional:
            inputs.setdefault(name, np.zeros(0, dtype=object).astype(bytes))
        outputs = self.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    def recommend(self, user_ids, k: int | None = None, exclude=None) -> dict[str, np.ndarray]:
        """Top-k for user ids; ``exclude``: per user, item ids never to return."""
        users = np.asarray(user_ids).astype(str)
        if exclude is not None:  # serving_default has no exclusion input: recommend does
            extra = {} if k is None else {"k": np.int32(k)}
            return self.call("recommend", user_id=users, exclude_item_ids=padded(exclude),
                             **extra)
        if k is None:
            return self.call("serving_default", user_id=users)
        return self.call("recommend", user_id=users, k=np.int32(k))

    def recommend_session(self, sessions, user_ids=None, k: int | None = None,
                          exclude=None, viewed: dict | None = None) -> dict[str, np.ndarray]:
        """Top-k for sessions (lists of recent item ids, oldest first), optionally of users;
        ``viewed``: ``{modality: one raw value per session, "" / b"" for none}``."""
        inputs = {"session_item_ids": padded(sessions)}
        for modality, values in (viewed or {}).items():
            inputs[f"viewed_{modality}"] = np.array(list(values), dtype=object)
        if user_ids is not None:
            inputs["user_id"] = np.asarray(user_ids).astype(str)
        if k is not None:
            inputs["k"] = np.int32(k)
        if exclude is not None:
            inputs["exclude_item_ids"] = padded(exclude)
        return self.call("recommend_session", **inputs)

    def item_embeddings(self, item_ids) -> np.ndarray:
        """The served embeddings of these items (``ExportError`` for an id not served)."""
        ids = np.asarray(item_ids).astype(str)
        out = self.call("embed_items", item_id=ids)
        if not out["found"].all():
            raise ExportError(f"item id(s) not in {self.path}: {list(ids[~out['found']][:5])}")
        return out["embedding"]


def padded(lists) -> np.ndarray:
    """Ragged lists of ids → a ``[B, max_len]`` string array padded with "" (the request form
    of ``exclude_item_ids`` and ``session_item_ids``)."""
    lists = [[str(i) for i in row] for row in lists]
    width = max((len(row) for row in lists), default=0)
    out = np.full((len(lists), width), "", dtype=object)
    for r, row in enumerate(lists):
        out[r, :len(row)] = row
    return out.astype(str) if width else np.zeros((len(lists), 0), dtype=str)
