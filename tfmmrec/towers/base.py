"""Towers: the ``Encoder`` contract shared by every modality's encoder (text, image, audio).

An encoder turns raw content into a feature vector. It is usually pretrained and frozen, so its
``identity`` (what it is + a fingerprint of its weights) keys the on-disk feature cache: a cached
feature is reused only by exactly the encoder that produced it. The encoder modules import this
one and nothing imports them back: ``build_encoder`` finds them through the modality registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub

from tfmmrec import modalities
from tfmmrec.errors import ConfigError, first_line


@tf.keras.utils.register_keras_serializable(package="tfmmrec")
class Encoder(tf.keras.layers.Layer):
    """Base class: raw batch → ``[batch, feature_dim]`` float32 features.

    Subclasses set ``feature_dim`` and ``description`` (a JSON-able dict naming the backbone and
    its settings) and implement ``call``.
    """

    modality: str = ""
    feature_dim: int = 0

    def __init__(self, description: dict[str, Any], *, tower_config: Any = None,
                 vocabulary: list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        # Stored as JSON text: Keras would wrap a dict attribute in a trackable wrapper.
        self.description_json = json.dumps(description, sort_keys=True, default=str)
        # What ``build_encoder`` made this from (its modality's tower config), so
        # ``get_config``/``from_config`` rebuild it (KerasHub's ``Backbone.get_config``); JSON
        # text for the same reason.
        self._tower_json = json.dumps(dataclasses.asdict(tower_config)) if tower_config else None
        self._vocabulary = list(vocabulary) if vocabulary is not None else None

    def get_config(self) -> dict[str, Any]:
        """The tower config (and a built vocabulary) this encoder was built from; weights are
        not part of it (a seeded random-init encoder is rebuilt identically, a pretrained one
        from its preset/handle)."""
        if self._tower_json is None:
            raise NotImplementedError(f"{type(self).__name__} was not made by build_encoder, so "
                                      "it cannot describe how to rebuild itself")
        return {**super().get_config(), "modality": self.modality,
                "tower": json.loads(self._tower_json), "vocabulary": self._vocabulary}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Encoder:
        spec = modalities.get(config["modality"])
        encoder = spec.build_encoder(spec.tower_config_class(**config["tower"]),
                                     vocabulary=config.get("vocabulary"))
        encoder.set_trainable(config.get("trainable", encoder.trainable))
        return encoder

    def identity(self) -> str:
        """A stable hash of what this encoder computes: settings plus its current weights."""
        digest = hashlib.sha256(self.description_json.encode())
        for weight in self.weights:
            # Shape, not name: Keras numbers layer names per process (conv2d_3/kernel:0), and
            # the same encoder built twice must keep its identity.
            digest.update(f"{weight.shape}:{weight.dtype.name}".encode())
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
        return digest.hexdigest()[:24]

    def set_trainable(self, trainable: bool) -> None:
        """Fine-tune (``True``) or freeze (``False``) the whole encoder, backbone included:
        Keras propagates ``trainable`` to every tracked sublayer (a KerasNLP backbone, a
        ``hub.KerasLayer``, a ``keras.applications`` model; frozen BatchNorm then runs in
        inference mode)."""
        self.trainable = trainable


def hub_layer(handle: str, trainable: bool, field: str) -> hub.KerasLayer:
    """A TF-Hub model as a Keras layer; a handle that does not load is a ``ConfigError``
    naming the config ``field``."""
    try:
        return hub.KerasLayer(handle, trainable=trainable)
    except Exception as exc:  # hub raises OSError/ValueError/URL errors depending on the handle
        raise ConfigError(
            f"cannot load TF-Hub model {field}={handle!r}: {first_line(exc).rstrip('.')}. "
            "Use a TF-Hub URL (needs "
            "internet) or a local SavedModel directory."
        ) from None
