"""Towers: one factory for every modality's encoder, found through the modality registry.

The ``Encoder`` base class lives in ``towers.base`` (re-exported here); the encoder modules
(``towers.text``/``image``/``audio``) import only that, so there is no import cycle: a
modality's spec names its builder (``ModalitySpec.encoder_builder``) and it is imported on use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tfmmrec import modalities
from tfmmrec.errors import ConfigError
from tfmmrec.towers.base import Encoder

__all__ = ["Encoder", "build_encoder", "check_local_weights"]


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


def check_local_weights(config: Any, modalities_used: Iterable[str]) -> None:
    """A ``ConfigError`` naming the field when a tower's weights are a local path that does
    not exist (``text.preset``, a hub ``image.handle``, YAMNet's ``audio.handle``): ``validate``
    said nothing and ``train`` failed only when it reached that encoder, after encoding the
    others. Names (KerasNLP presets, TF-Hub URLs) are not checked: loading them needs the
    network, which ``build_encoder`` reports."""
    for modality in modalities_used:
        tower = config.tower(modality)
        for field, value in _weight_sources(tower):
            local = "://" not in value and value.startswith(("/", ".", "~"))
            if local and not Path(value).expanduser().exists():
                raise ConfigError(f"{modality}.{field}={value!r}: no such file or directory "
                                  "(a local preset or SavedModel directory must exist; a name "
                                  "or URL is downloaded instead)")


def _weight_sources(tower: Any) -> list[tuple[str, str]]:
    """``(field, value)`` of the pretrained weights a tower section loads."""
    sources = []
    if getattr(tower, "preset", None):
        sources.append(("preset", str(tower.preset)))
    if getattr(tower, "handle", None) and getattr(tower, "backbone", None) in ("hub", "yamnet"):
        sources.append(("handle", str(tower.handle)))
    return sources
