"""Towers: one factory for every modality's encoder, found through the modality registry.

The ``Encoder`` base class lives in ``towers.base`` (re-exported here); the encoder modules
(``towers.text``/``image``/``audio``) import only that, so there is no import cycle: a
modality's spec names its builder (``ModalitySpec.encoder_builder``) and it is imported on use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tfmmrec import modalities
from tfmmrec.errors import ConfigError
from tfmmrec.towers.base import Encoder

__all__ = ["Encoder", "build_encoder"]


def build_encoder(modality: str, config: Any, corpus: Sequence[str] | None = None, *,
                  vocabulary: list[str] | None = None) -> Encoder:
    """Build the encoder a tower config describes (pretrained or random-init, frozen or not).

    ``corpus`` is the modality's catalogue content (``Catalog.values(modality)``): a
    random-init text encoder takes its word vocabulary from it (or from ``vocabulary`` as built
    before, the ``get_config`` round trip); the others ignore it. An unknown
    ``modality`` is a ``ConfigError`` naming the registered ones."""
    spec = modalities.get(modality)
    expected = spec.tower_config_class
    if not isinstance(config, expected):  # a dict or another tower's section: AttributeError
        raise ConfigError(f"build_encoder({modality!r}, config): expected a "
                          f"{expected.__name__}, got {type(config).__name__}")
    if isinstance(corpus, str | bytes):  # one text, not a corpus of characters
        raise ConfigError(f"build_encoder({modality!r}): corpus must be a sequence of texts, "
                          "got a single string")
    return spec.build_encoder(config, corpus, vocabulary=vocabulary)
