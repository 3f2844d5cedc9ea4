"""The one configuration system: dataclasses, loadable from YAML, shared by CLI, API and notebooks.

Every default in tfmmrec lives here. Each dataclass validates itself in ``__post_init__`` so a bad
value fails at load time with the field's dotted name, not hours later inside TensorFlow.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import math
import os
import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import dacite
import yaml

from tfmmrec.errors import ConfigError
from tfmmrec.references import REFERENCE

logger = logging.getLogger(__name__)

# The one audio rate (YAMNet and the built-in tower are 16 kHz models); ``tfmmrec.modalities.audio``
# takes it from here, ``audio.sample_rate`` is checked against it once, below.
AUDIO_SAMPLE_RATE = 16000
YAMNET_HUB_HANDLE = "https://tfhub.dev/google/yamnet/1"
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu", "parameter_server")


def _check(condition: bool, name: str, value: Any, expected: str) -> None:
    if not condition:
        raise ConfigError(f"invalid config value {name}={value!r}: expected {expected}")


# Early-stopping metrics of a ranking head, with the ``ranking.task`` that produces them (the
# retrieval metrics are recall@K, ndcg@K, hit_rate@K). Lower is better for rmse and mae
# (``evaluation.rating.LOWER_IS_BETTER``).
HEAD_METRICS = {"rmse": "regression", "mae": "regression", "auc": "binary"}


# The widest layer or embedding a config may ask for: wider is a typo whose weights (a
# catalogue's features times the width, per step) would exhaust memory before any message.
MAX_LAYER_WIDTH = 8192


def _check_layer_sizes(name: str, sizes: list[int], empty_ok: bool = True) -> None:
    """A list of layer widths (or filter counts): each in [1, MAX_LAYER_WIDTH], and non-empty
    unless allowed."""
    _check((empty_ok or bool(sizes)) and all(1 <= size <= MAX_LAYER_WIDTH for size in sizes),
           name, sizes, f"a list of integers from 1 to {MAX_LAYER_WIDTH}"
           + ("" if empty_ok else ", not empty"))


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    _check(value in choices, name, value, "one of " + ", ".join(choices))


# ``gs://bucket/run``, ``s3://…``, ``file:///…``: a scheme, then "//".
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _check_local_path(name: str, value: str | None) -> None:
    """Refuse a URL for a path the code reads or writes through ``pathlib``: ``Path`` makes
    ``gs://b/run`` the local folder ``gs:/b/run`` and the run was quietly written there.
    (``train.tfrecords`` and ``train.features`` go through ``tf.io.gfile`` and take URLs.)"""
    if value and _URL.match(value):
        raise ConfigError(f"{name}={value} : a URL is not supported here; use a local or mounted "
                          "path (e.g. a bucket mounted with gcsfuse)")


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'epochs'?)`` for a misspelt field or section, '' if none is close:
    one helper, so that YAML, ``--set`` and Python assignments suggest alike."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _some(names: Iterable[str], limit: int = 12) -> str:
    """The first ``limit`` names, then "…": short enough for a one-line error."""
    names = list(names)
    return ", ".join(names[:limit] + (["…"] if len(names) > limit else []))


class ConfigSection:
    """Base of the config sections: a field assigned in Python is checked as one read from YAML
    is, so ``config.train.epoch = 3`` (a typo) or ``config.train.epochs = "3"`` fails on that
    line instead of being ignored, or failing deep inside TensorFlow.

    Only what a value is on its own is checked here (the field exists; type; a finite number,
    not true/false). The checks that relate fields (``export.k <= export.max_k``) run when
    the config is used (``Config.validate``, at every pipeline entry), so fields can be set in
    any order. A modality's tower config may derive from this to get the same checks.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        fields = self.__dataclass_fields__  # type: ignore[attr-defined]
        if name not in fields:
            raise ConfigError(f"config section {_section_path(type(self))} has no field "
                              f"{name!r}{_did_you_mean(name, fields)}; its fields are "
                              f"{', '.join(fields)}")
        hint = _field_hints(type(self)).get(name, Any)
        value = _plain(value, hint)
        problem = _field_problem(value, hint)
        if problem:
            raise ConfigError(f"invalid config value {_section_path(type(self))}.{name}="
                              f"{value!r}: {problem}")
        super().__setattr__(name, value)


# --- per-modality tower sections --------------------------------------------------------------

# Section name → tower-config dataclass, in registration order: the per-modality sections of a
# ``Config`` (``text:``, ``image:``, ``audio:`` and any modality registered later). Registering a
# modality spec (``tfmmrec.modalities.register``) registers its ``tower_config_class`` here, so
# a new modality's section is parsed, validated, saved with a run and checked by ``restore``
# with no edit to this module. The built-in dataclasses below register themselves with
# ``@tower_section``, so reading a config never imports the (TensorFlow-heavy) modality specs.
_TOWER_SECTIONS: dict[str, type] = {}
# The fixed sections of ``Config``, in YAML order around the tower sections.
_LEADING_SECTIONS = ("data",)
_TRAILING_SECTIONS = ("model", "ranking", "train", "eval", "export")


def register_tower_section(name: str, config_class: type) -> type:
    """Make ``config_class`` (a dataclass with defaults for every field, validating itself in
    ``__post_init__``) the ``name:`` section of every ``Config``. Registering the same class
    again is a no-op; another class under a taken name is a mistake."""
    config = globals().get("Config")  # None while the built-in sections register
    if (not name.isidentifier() or name in _LEADING_SECTIONS + _TRAILING_SECTIONS + ("towers",)
            or (config is not None and hasattr(config, name))):
        raise ValueError(f"tower section name {name!r} must be an identifier other than a "
                         "fixed Config section or attribute")
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
        raise TypeError(f"tower section {name!r} must be a dataclass, got {config_class!r}")
    existing = _TOWER_SECTIONS.get(name)
    if existing is not None and existing is not config_class:
        raise ValueError(f"tower section {name!r} is already {existing.__name__}, "
                         f"not {config_class.__name__}")
    _TOWER_SECTIONS[name] = config_class
    return config_class


def unregister_tower_section(name: str) -> None:
    """Remove a tower section (``tfmmrec.modalities.unregister``)."""
    _TOWER_SECTIONS.pop(name, None)


def tower_section(name: str):
    """Class decorator: :func:`register_tower_section` under ``name``."""

    def register(config_class: type) -> type:
        return register_tower_section(name, config_class)

    return register


def tower_sections() -> tuple[str, ...]:
    """Every per-modality section's name, in registration order (text, image, audio, ...)."""
    return tuple(_TOWER_SECTIONS)


@dataclass
class DemoConfig(ConfigSection):
    """Size of the embedded, generated demo catalogue (used when ``data.path`` is empty)."""

    num_items: int = 400
    num_users: int = 300
    interactions_per_user: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.seed >= 0, "data.demo.seed", self.seed, ">= 0")
        _check(self.num_items >= 20, "data.demo.num_items", self.num_items, ">= 20")
        _check(self.num_users >= 2, "data.demo.num_users", self.num_users, ">= 2")
        _check(
            self.interactions_per_user >= 2,
            "data.demo.interactions_per_user",
            self.interactions_per_user,
            ">= 2",
        )


@dataclass
class DataConfig(ConfigSection):
    """Where the dataset folder is, which columns hold which modality, and how to split it.

    Column lists left as ``None`` are inferred from the items table (see ``data.dataset``); an
    empty list switches the modality off for this dataset.
    """

    path: str | None = None
    items_file: str | None = None
    text_columns: list[str] | None = None
    image_column: str | None = None
    audio_column: str | None = None
    # Short categorical columns (year, genres, ...) the facets tower encodes on their own
    # (``modalities.facets``); never inferred: None or [] means no facets.
    facet_columns: list[str] | None = None
    user_feature_columns: list[str] | None = None
    min_rating: float | None = None
    # given: the split column of interactions.csv (train/validation/test); none: train on all
    split: Literal["random", "temporal", "cold_start", "given", "none"] = "random"
    test_fraction: float = 0.2
    seed: int = 42
    # A (user, item) pair on several rows of interactions.csv: error (naming the lines), or keep
    # the first/last row of each pair (by timestamp when there is one, else by file order).
    duplicate_interactions: Literal["error", "first", "last"] = "error"
    demo: DemoConfig = field(default_factory=DemoConfig)

    def __post_init__(self) -> None:
        _check_local_path("data.path", self.path)
        _check_local_path("data.items_file", self.items_file)
        _check_choice("data.split", self.split,
                      ("random", "temporal", "cold_start", "given", "none"))
        _check(0 < self.test_fraction < 1, "data.test_fraction", self.test_fraction, "in (0, 1)")
        _check(self.seed >= 0, "data.seed", self.seed, ">= 0")
        _check_choice("data.duplicate_interactions", self.duplicate_interactions,
                      ("error", "first", "last"))


@tower_section("text")
@dataclass
class TextTowerConfig(ConfigSection):
    """KerasNLP BERT text tower.

    ``preset`` is a KerasNLP preset name (downloaded by KerasNLP) or a local preset directory.
    With no preset a small BERT is built from the size fields below with random
    weights and a word-level vocabulary taken from the catalogue's own text (no download).
    """

    enabled: bool = True
    preset: str | None = None
    sequence_length: int = 64
    pooling: Literal["mean", "cls"] = "mean"
    trainable: bool = False
    hidden_dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_dim: int = 128
    max_vocabulary: int = 20000
    seed: int = 0

    def __post_init__(self) -> None:
        name = "facets" if isinstance(self, FacetsTowerConfig) else "text"
        _check_choice(f"{name}.pooling", self.pooling, ("mean", "cls"))
        _check(8 <= self.sequence_length <= 512, f"{name}.sequence_length",
               self.sequence_length, "in [8, 512]")
        for size in ("hidden_dim", "num_layers", "num_heads", "intermediate_dim",
                     "max_vocabulary"):
            _check(getattr(self, size) >= 1, f"{name}.{size}", getattr(self, size), ">= 1")
        _check(self.hidden_dim % self.num_heads == 0, f"{name}.hidden_dim", self.hidden_dim,
               f"a multiple of {name}.num_heads={self.num_heads}")

    def validate_in(self, config: Config) -> None:
        """Checks against the rest of the config (a tower section may define this)."""
        # A fine-tuned text encoder tokenizes raw strings inside the train step; a TPU program
        # cannot hold strings (frozen text features, cached before training, are fine).
        if config.train.strategy == "tpu" and self.enabled and self.trainable:
            raise ConfigError("text.trainable=true cannot train on a TPU (the tokenizer's "
                              "strings cannot enter a TPU program): set text.trainable=false "
                              "(frozen, cached features) or use mirrored/multi_worker on GPUs")


@tower_section("image")
@dataclass
class ImageTowerConfig(ConfigSection):
    """CNN image tower: a small built-in CNN, a ``keras.applications`` model, or a TF-Hub handle.

    ``backbone``: ``small_cnn`` (fast, random init); ``hub`` (``handle`` is a TF-Hub image
    feature-vector URL or local SavedModel dir taking float images in [0, 1]); ``keras_app``
    (``application`` names a ``tf.keras.applications`` class, ``weights`` a local .h5 file).
    """

    enabled: bool = True
    backbone: Literal["small_cnn", "hub", "keras_app"] = "small_cnn"
    handle: str | None = None
    application: str | None = None
    weights: str | None = None
    image_size: int = 64
    trainable: bool = False
    cnn_filters: list[int] = field(default_factory=lambda: [16, 32, 64])
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("image.backbone", self.backbone, ("small_cnn", "hub", "keras_app"))
        if self.enabled and self.backbone == "hub":
            _check(bool(self.handle), "image.handle", self.handle, "a TF-Hub handle or directory")
        if self.enabled and self.backbone == "keras_app":
            _check(bool(self.application), "image.application", self.application,
                   "a tf.keras.applications class name, e.g. MobileNetV2")
        _check(16 <= self.image_size <= 1024, "image.image_size", self.image_size, "in [16, 1024]")
        _check_layer_sizes("image.cnn_filters", self.cnn_filters, empty_ok=False)


@tower_section("audio")
@dataclass
class AudioTowerConfig(ConfigSection):
    """Audio tower: YAMNet through ``hub.KerasLayer`` (frame embeddings pooled over time), or a
    small built-in log-mel CNN (fast, random init, no download)."""

    enabled: bool = True
    backbone: Literal["yamnet", "small_cnn"] = "small_cnn"
    handle: str = YAMNET_HUB_HANDLE
    sample_rate: int = AUDIO_SAMPLE_RATE
    max_seconds: float = 2.0
    pooling: Literal["mean", "max"] = "mean"
    trainable: bool = False
    cnn_filters: list[int] = field(default_factory=lambda: [16, 32])
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("audio.backbone", self.backbone, ("yamnet", "small_cnn"))
        _check_choice("audio.pooling", self.pooling, ("mean", "max"))
        _check(self.sample_rate == AUDIO_SAMPLE_RATE, "audio.sample_rate", self.sample_rate,
               f"{AUDIO_SAMPLE_RATE} (YAMNet and the built-in tower expect 16 kHz)")
        _check(0.1 <= self.max_seconds <= 60, "audio.max_seconds", self.max_seconds,
               "in [0.1, 60]")
        _check_layer_sizes("audio.cnn_filters", self.cnn_filters, empty_ok=False)


@tower_section("facets")
@dataclass
class FacetsTowerConfig(TextTowerConfig):
    """The facets tower: a text encoder (same fields as ``text``) over ``data.facet_columns``
    alone. In a long joined text a few tokens such as a release year or a genre list are
    drowned by the description; encoded on their own they are a feature of their own."""

    sequence_length: int = 32


@dataclass
class ModelConfig(ConfigSection):
    """Projection, fusion, query tower and retrieval-task settings."""

    embedding_dim: int = 64
    projection_hidden: list[int] = field(default_factory=list)
    fusion: Literal["concat_mlp", "mean", "gated", "attention"] = "concat_mlp"
    item_id_embedding: bool = False
    # Training-time rate of hiding an item's id embedding (DropoutNet): the content part must
    # score the item alone, which is all a cold item has. Needs item_id_embedding.
    item_id_dropout: float = 0.0
    user_features: bool = True
    user_id_embedding: bool = True
    # Item-based query: the user's training items, each with a learned embedding, pooled
    # (towers/history.py). Each example's target is left out of its own history.
    user_history: bool = False
    history_dropout: float = 0.0  # rate of hiding history entries per example (denoising)
    history_half_life: float = 0.0  # recency weighting, in items (0: equal weights)
    history_max_length: int = 0  # most recent items kept (0: all)
    # Recent items embedded by the *item tower* (mean), another query feature (0: off).
    history_length: int = 0
    # "in_batch": the batch's other items as negatives (logQ-corrected); "full": a softmax
    # over every item seen in training, embedded each step (exact; fits catalogues of
    # thousands to tens of thousands of items in one matmul).
    negatives: Literal["in_batch", "full"] = "in_batch"
    temperature: float = 0.1
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    modality_dropout: float = 0.1
    user_id_dropout: float = 0.05
    dropout: float = 0.0
    # Dropout on a modality's (normalised) encoder feature before its projection, e.g.
    # {image: 0.8}. A wide frozen feature (1,280-d EfficientNet over ~1,700 posters) lets the
    # projection memorise training items; dropping most of it forces the signal that transfers
    # to unseen items (ML-100K cold start: benchmarks/ml100k.py, protocol B).
    feature_dropout: dict[str, float] = field(default_factory=dict)
    # true: one feature-dropout mask per step, shared by every item (exactly (1 - rate) of the
    # dimensions kept); the step's product then runs over the kept dimensions only.
    feature_dropout_shared: bool = False
    alignment_weight: float = 0.1
    alignment_temperature: float = 0.07
    # The alignment loss costs the square of its rows: past a few hundred items it buys little
    # and at batch 1,024 it doubled the step time. 0 = every distinct item of the batch.
    alignment_rows: int = 256
    # "validation": train once more on a validation split carved from the training data (same
    # split kind), and serve whichever of the fused embedding and the weighted mixes of
    # single-modality embeddings scores best there (evaluation/fusion_selection.py). Costs one
    # extra training run; guards against a modality that hurts unseen items.
    fusion_selection: Literal["none", "validation"] = "none"
    fusion_selection_metric: str = "recall@20"
    # Closed-form item-item CF inside both towers (towers/cf.py): "ease" fits EASE on the
    # training split, factorises it to rank linear_cf_rank and appends the factors to the
    # query (user's history) and item embeddings; cold items get factors predicted from
    # content by a ridge regression. The learned towers then train on what EASE misses.
    # Needs model.user_history; costs an N × N inverse (catalogues up to ~20k items).
    # "ials": an iALS block instead (implicit's item factors, the user folded in from the
    # history; settings chosen on validation); "ease+ials" both (the iALS weight beside EASE
    # chosen on validation too): twice the columns. "auto": "ease" or "ials", whichever scores
    # best with the towers on the early-stopping validation carve (chosen jointly with the
    # epoch and the weight; needs train.early_stopping); the run's model is that kind.
    linear_cf: Literal["none", "ease", "ials", "ease+ials", "auto"] = "none"
    # The iALS fold-in: "exact" solves iALS's user step per user in the graph (a batched
    # Cholesky at evaluation/serving time), "linear" drops its per-user term (one sum).
    linear_cf_foldin: Literal["exact", "linear"] = "exact"
    linear_cf_rank: int = 128
    # 0: chosen on a validation split carved from the training split (EASE's λ on a random
    # carve, the ridge α on a cold-start carve), never on test figures.
    linear_cf_l2: float = 0.0
    linear_cf_alpha: float = 0.0
    # Weight of the EASE score next to the learned towers' cosine in the served dot product;
    # 0: chosen with the epochs by early stopping (validation), from LINEAR_CF_WEIGHTS.
    linear_cf_weight: float = 0.0
    # How a cold item's CF factors are predicted from its content: "ridge" (linear) or
    # "kernel" (kernel ridge: a blend of similar warm items' factors; width and α chosen on
    # the cold-start validation carve, linear_cf_alpha then being the kernel ridge's α).
    linear_cf_content: Literal["ridge", "kernel"] = "ridge"
    # Recency in the CF query: the n-th most recent history item weighs 0.5 ** (n / half-life)
    # (towers/cf.py). Unset: chosen on a validation carve of the split's own kind (0 = equal
    # weights where recency does not help, e.g. a random split); a number fixes it.
    linear_cf_half_life: float | None = None
    # Input precision of the train step's large products (full-softmax logits, history
    # pooling, modality projections; towers/precision.py): "bfloat16" runs them on the
    # CPU's AMX/AVX-512 BF16 units (or a GPU/TPU's) with float32 losses and optimiser.
    # Inference and exports are float32 either way.
    training_precision: Literal["float32", "bfloat16"] = "float32"
    # What one training row is (models/retrieval.py): "interactions", one softmax per
    # (user, item) with the item left out of the user's history; "users", one query per
    # user and step from the history entries a history_dropout draw kept, every hidden entry
    # a target (Mult-DAE's multinomial likelihood; the same expected gradient, the catalogue
    # product paid per user instead of per interaction). "users" needs user_history,
    # negatives: full and history_dropout > 0; train.batch_size still counts interactions
    # (the users per batch hold about that many hidden entries).
    objective: Literal["interactions", "users"] = "interactions"
    # The model's class: "" is the library's RetrievalModel (MultitaskModel with
    # ranking.enabled); "module:QualName" names a subclass of it (its compute_loss, the TFRS
    # extension point, is what trains), imported wherever the model is built: train, restore,
    # every CLI command (tfmmrec.class_reference(MyModel) writes the name).
    model_class: str = ""

    def __post_init__(self) -> None:
        _check("<locals>" not in self.model_class, "model.model_class", self.model_class,
               "a class defined at the top level of a module: one defined inside a function "
               "cannot be imported by name")
        _check(not self.model_class or bool(REFERENCE.fullmatch(self.model_class)),
               "model.model_class", self.model_class,
               '"" (the library\'s model) or "module:QualName" of a RetrievalModel subclass')
        _check_choice("model.training_precision", self.training_precision,
                      ("float32", "bfloat16"))
        _check_choice("model.objective", self.objective, ("interactions", "users"))
        if self.objective == "users":
            _check(self.user_history and self.negatives == "full" and self.history_dropout > 0,
                   "model.objective", self.objective, "interactions unless model.user_history: "
                   "true, model.negatives: full and model.history_dropout > 0 (the query reads "
                   "the history entries a dropout draw kept and predicts the hidden ones over "
                   "the whole catalogue)")
        _check_choice("model.linear_cf", self.linear_cf,
                      ("none", "ease", "ials", "ease+ials", "auto"))
        _check_choice("model.linear_cf_foldin", self.linear_cf_foldin, ("exact", "linear"))
        _check_choice("model.linear_cf_content", self.linear_cf_content, ("ridge", "kernel"))
        _check(self.linear_cf_rank >= 1, "model.linear_cf_rank", self.linear_cf_rank, ">= 1")
        _check(self.linear_cf_l2 >= 0, "model.linear_cf_l2", self.linear_cf_l2,
               ">= 0 (0: chosen on validation)")
        _check(self.linear_cf_alpha >= 0, "model.linear_cf_alpha", self.linear_cf_alpha,
               ">= 0 (0: chosen on validation)")
        _check(self.linear_cf_half_life is None or self.linear_cf_half_life >= 0,
               "model.linear_cf_half_life", self.linear_cf_half_life,
               ">= 0 (in items; unset: chosen on validation)")
        _check(self.linear_cf_weight >= 0, "model.linear_cf_weight", self.linear_cf_weight,
               ">= 0 (0: chosen on validation with train.early_stopping)")
        _check(self.linear_cf == "none" or self.user_history, "model.linear_cf",
               self.linear_cf, "used with model.user_history: true (it reads the history)")
        _check_choice("model.fusion_selection", self.fusion_selection, ("none", "validation"))
        _check_choice("model.fusion", self.fusion, ("concat_mlp", "mean", "gated", "attention"))
        _check(2 <= self.embedding_dim <= MAX_LAYER_WIDTH, "model.embedding_dim",
               self.embedding_dim, f"in [2, {MAX_LAYER_WIDTH}]")
        _check_layer_sizes("model.projection_hidden", self.projection_hidden)
        _check(0 <= self.dropout < 1, "model.dropout", self.dropout, "in [0, 1)")
        _check(self.temperature > 0, "model.temperature", self.temperature, "> 0")
        _check(0 <= self.modality_dropout < 1, "model.modality_dropout", self.modality_dropout,
               "in [0, 1)")
        _check(0 <= self.user_id_dropout < 1, "model.user_id_dropout", self.user_id_dropout,
               "in [0, 1)")
        _check(self.history_length >= 0, "model.history_length", self.history_length, ">= 0")
        _check_choice("model.negatives", self.negatives, ("in_batch", "full"))
        _check(0 <= self.item_id_dropout < 1, "model.item_id_dropout", self.item_id_dropout,
               "in [0, 1)")
        _check(0 <= self.history_dropout < 1, "model.history_dropout", self.history_dropout,
               "in [0, 1)")
        _check(self.history_half_life >= 0, "model.history_half_life", self.history_half_life,
               ">= 0 (0: equal weights)")
        _check(self.history_max_length >= 0, "model.history_max_length",
               self.history_max_length, ">= 0 (0: all)")
        for modality, rate in self.feature_dropout.items():
            _check(modality in _TOWER_SECTIONS, "model.feature_dropout", modality,
                   "keyed by " + ", ".join(_TOWER_SECTIONS))
            _check(0 <= rate < 1, f"model.feature_dropout.{modality}", rate, "in [0, 1)")
        _check(self.alignment_weight >= 0, "model.alignment_weight", self.alignment_weight,
               ">= 0")
        _check(self.alignment_temperature > 0, "model.alignment_temperature",
               self.alignment_temperature, "> 0")
        _check(self.alignment_rows >= 0, "model.alignment_rows", self.alignment_rows, ">= 0")


@dataclass
class RankingConfig(ConfigSection):
    """Ranking / multitask head on the shared towers (``enabled: false`` = retrieval only).

    ``retrieval_weight`` and ``ranking_weight`` weight the two losses (1:0 retrieval only, 0:1
    ranking only, 1:1 multitask). ``retrieve_candidates`` is N of the two-stage export:
    retrieve N, re-rank, return k.
    """

    enabled: bool = False
    task: Literal["regression", "binary", "listwise"] = "regression"
    retrieval_weight: float = 1.0
    ranking_weight: float = 1.0
    deep_layers: list[int] = field(default_factory=lambda: [256, 64])
    cross_layers: int = 0
    cross_projection_dim: int | None = None
    negatives_per_positive: int = 4
    list_size: int = 5
    lists_per_user: int = 50
    retrieve_candidates: int = 100

    def __post_init__(self) -> None:
        _check_choice("ranking.task", self.task, ("regression", "binary", "listwise"))
        _check(self.retrieval_weight >= 0 and self.ranking_weight >= 0
               and self.retrieval_weight + self.ranking_weight > 0,
               "ranking.retrieval_weight/ranking_weight",
               (self.retrieval_weight, self.ranking_weight), "non-negative, not both 0")
        _check(self.cross_layers >= 0, "ranking.cross_layers", self.cross_layers, ">= 0")
        _check_layer_sizes("ranking.deep_layers", self.deep_layers)
        _check(self.cross_projection_dim is None or self.cross_projection_dim >= 1,
               "ranking.cross_projection_dim", self.cross_projection_dim, ">= 1 or null")
        _check(self.negatives_per_positive >= 1, "ranking.negatives_per_positive",
               self.negatives_per_positive, ">= 1")
        _check(self.lists_per_user >= 1, "ranking.lists_per_user", self.lists_per_user, ">= 1")
        _check(self.list_size >= 2, "ranking.list_size", self.list_size, ">= 2")
        _check(self.retrieve_candidates >= 1, "ranking.retrieve_candidates",
               self.retrieve_candidates, ">= 1")


@dataclass
class TrainConfig(ConfigSection):
    """Optimisation, distribution and where the run writes (checkpoints, logs, cache).

    Distribution (``strategy``; see ``tfmmrec.training.strategy``): ``default`` (one device),
    ``mirrored`` (the local GPUs, or the ``devices`` listed), ``multi_worker`` (workers named by
    the ``TF_CONFIG`` environment variable), ``tpu`` (``tpu`` names the TPU; empty = Colab or the
    local TPU VM), ``parameter_server`` (``chief``, ``worker`` and ``ps`` tasks in ``TF_CONFIG``;
    asynchronous). ``batch_size`` is always the *global* batch. ``learning_rate_scaling``
    multiplies ``learning_rate`` by the number of replicas (``linear``) or its square root
    (``sqrt``), for when the global batch is grown with the replicas.
    ``cross_replica_negatives`` gathers every replica's candidates into each replica's in-batch
    softmax (the loss of one device with the global batch); off, each replica's softmax sees only
    its own ``batch_size / replicas`` examples.

    ``tfrecords``: a directory written by ``tfmmrec prepare`` (local or any TensorFlow filesystem
    path such as ``gs://``); when set, training streams its interaction shards and encodes item
    content from its pre-decoded item shards. ``tfrecord_shards`` / ``prepare_workers``: shards
    per table and worker processes of ``tfmmrec prepare`` (0: chosen from the data / all cores).

    ``features``: a directory written by ``tfmmrec encode`` (local or any TensorFlow filesystem
    path); when set, frozen encoders' features are read from it (by training, evaluation and
    export) instead of being computed or taken from ``cache_dir``.

    ``verbose``: 0 reports nothing while training, 1 one line per epoch (loss terms, seconds,
    examples/s; logged by ``tfmmrec.training.trainer``), 2 Keras' own progress bar.

    ``backup_seconds``: the training state (what an interrupted run resumes from) is backed up
    at the end of an epoch once at least this long has passed since the last backup (0: every
    epoch; multi-worker runs back up every epoch, so that every worker saves together). A
    backup is a full copy of the model and optimizer; short epochs need not pay for one each.
    """

    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 0.01
    optimizer: Literal["adam", "adagrad", "sgd"] = "adam"
    strategy: Literal["default", "mirrored", "multi_worker", "tpu", "parameter_server"] = "default"
    devices: list[str] = field(default_factory=list)
    tpu: str | None = None
    learning_rate_scaling: Literal["none", "linear", "sqrt"] = "none"
    cross_replica_negatives: bool = False
    output_dir: str = "runs/demo"
    cache_dir: str | None = None
    encode_batch_size: int = 32
    tfrecords: str | None = None
    features: str | None = None
    tfrecord_shards: int = 0
    prepare_workers: int = 0
    seed: int = 0
    verbose: int = 1
    backup_seconds: float = 60.0
    # Choose the number of epochs on a validation split carved from the training split (same
    # split kind, data.seed + 1): train there, score early_stopping_metric after every epoch,
    # stop after early_stopping_patience epochs without improvement (epochs is the cap), then
    # train on the whole training split for the best epoch count. Costs about one more run.
    early_stopping: bool = False
    # recall@K / ndcg@K / hit_rate@K, or a ranking head's rmse / mae (smallest wins) / auc
    early_stopping_metric: str = "recall@20"
    early_stopping_patience: int = 3
    # Choose on the mean of this many validation carves (seeds data.seed + k, training seeds
    # train.seed + k; a temporal carve, or the data's own validation rows, repeat: only the
    # training seed differs): the later carves train for as many epochs as the first ran.
    # Steadier choices among close (epoch, CF kind, CF weight) figures; each carve costs one
    # more early-stopping run.
    validation_carves: int = 1
    # Choose on each epoch's figures averaged with those of this many epochs on each side (0:
    # each epoch alone): one lucky epoch cannot decide alone, at no extra training. 1 lost
    # least to a third, held-out carve (benchmarks/results/carve_selection.json).
    early_stopping_smoothing: int = 1

    def __post_init__(self) -> None:
        _check_local_path("train.output_dir", self.output_dir)
        _check_local_path("train.cache_dir", self.cache_dir)
        _check(self.epochs >= 1, "train.epochs", self.epochs, ">= 1")
        _check(self.early_stopping_patience >= 1, "train.early_stopping_patience",
               self.early_stopping_patience, ">= 1")
        _check(self.validation_carves >= 1, "train.validation_carves", self.validation_carves,
               ">= 1")
        _check(self.early_stopping_smoothing >= 0, "train.early_stopping_smoothing",
               self.early_stopping_smoothing, ">= 0 (0: each epoch alone)")
        _check(bool(re.fullmatch(r"(recall|ndcg|hit_rate)@\d+", self.early_stopping_metric))
               or self.early_stopping_metric in HEAD_METRICS,
               "train.early_stopping_metric", self.early_stopping_metric,
               "a retrieval metric such as recall@20 or ndcg@20, or a ranking head's "
               f"{', '.join(HEAD_METRICS)}")
        _check(self.batch_size >= 2, "train.batch_size", self.batch_size,
               ">= 2 (in-batch negatives need at least two examples)")
        _check(self.learning_rate > 0, "train.learning_rate", self.learning_rate, "> 0")
        _check(self.seed >= 0, "train.seed", self.seed, ">= 0")
        _check(self.backup_seconds >= 0, "train.backup_seconds", self.backup_seconds,
               ">= 0 (0: back up every epoch)")
        _check(self.encode_batch_size >= 1, "train.encode_batch_size", self.encode_batch_size,
               ">= 1")
        _check_choice("train.optimizer", self.optimizer, ("adam", "adagrad", "sgd"))
        _check_choice("train.strategy", self.strategy, STRATEGIES)
        _check_choice("train.learning_rate_scaling", self.learning_rate_scaling,
                      ("none", "linear", "sqrt"))
        _check(self.tfrecord_shards >= 0, "train.tfrecord_shards", self.tfrecord_shards,
               ">= 0 (0: chosen from the data size)")
        _check(self.prepare_workers >= 0, "train.prepare_workers", self.prepare_workers,
               ">= 0 (0: one per core)")
        _check(self.verbose in (0, 1, 2), "train.verbose", self.verbose,
               "0 (silent), 1 (a line per epoch) or 2 (Keras progress bar)")

    @property
    def resolved_cache_dir(self) -> Path:
        """The encoder cache lives beside runs by default so that runs share it."""
        if self.cache_dir:
            return Path(self.cache_dir)
        return Path(self.output_dir).parent / "encoder-cache"


@dataclass
class EvalConfig(ConfigSection):
    """Evaluation cut-offs and batching of the user × item score matrix."""

    ks: list[int] = field(default_factory=lambda: [10, 20, 50, 100])
    batch_size: int = 1024

    def __post_init__(self) -> None:
        _check(bool(self.ks) and all(k >= 1 for k in self.ks), "eval.ks", self.ks,
               "a non-empty list of positive integers")
        _check(self.batch_size >= 1, "eval.batch_size", self.batch_size,
               ">= 1 (users scored per matrix product)")


@dataclass
class ScannConfig(ConfigSection):
    """ScaNN index parameters; ``None`` means scaled to the catalogue size at export time."""

    num_leaves: int | None = None
    num_leaves_to_search: int | None = None
    num_reordering_candidates: int | None = None
    dimensions_per_block: int = 2

    def __post_init__(self) -> None:
        for name in ("num_leaves", "num_leaves_to_search", "num_reordering_candidates"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"export.scann.{name}", value, ">= 1 or null")
        _check(self.dimensions_per_block >= 1, "export.scann.dimensions_per_block",
               self.dimensions_per_block, ">= 1")
        if self.num_leaves is not None and self.num_leaves_to_search is not None:
            _check(self.num_leaves_to_search <= self.num_leaves,
                   "export.scann.num_leaves_to_search", self.num_leaves_to_search,
                   f"<= export.scann.num_leaves={self.num_leaves}")


@dataclass
class PartitionedConfig(ConfigSection):
    """The ``partitioned`` index (plain TF ops): k-means partitions, probe, exact re-score.

    ``None`` means chosen at export time: ~sqrt(N) partitions (at most 4096); the number of
    chunks probed is the smallest that reaches ``target_recall`` of the exact top 10 for
    ``calibration_queries`` catalogue items used as queries (the catalogue is the only data an
    export sees; nothing from the test split).
    """

    num_partitions: int | None = None
    partitions_to_probe: int | None = None
    target_recall: float = 0.99
    calibration_queries: int = 512
    storage: Literal["float32", "bfloat16", "int8"] = "float32"
    kmeans_sample: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_partitions", "partitions_to_probe"):
            value = getattr(self, name)
            if value is not None:
                _check(value >= 1, f"export.partitioned.{name}", value, ">= 1 or null")
        _check(0 < self.target_recall <= 1, "export.partitioned.target_recall",
               self.target_recall, "in (0, 1]")
        _check(self.calibration_queries >= 1, "export.partitioned.calibration_queries",
               self.calibration_queries, ">= 1")
        _check_choice("export.partitioned.storage", self.storage,
                      ("float32", "bfloat16", "int8"))
        _check(self.kmeans_sample >= 1000, "export.partitioned.kmeans_sample",
               self.kmeans_sample, ">= 1000")


@dataclass
class ServingLimitsConfig(ConfigSection):
    """Request limits compiled into the exported graph, so every server (stock TF Serving
    included) enforces them with INVALID_ARGUMENT before any expensive op runs.

    The defaults admit every real query (a 10-minute 48 kHz WAV, a 16-megapixel photo, a
    64 KiB text) and bound the memory one request can take to tens of MiB. Tokenising takes
    about 90 times a text's bytes, so ``query_text`` also bounds the request's total
    (``max_text_request_bytes``: 1,024 texts of 64 KiB each took 5.4 GiB), and
    ``query_image`` the request's declared pixels (``max_image_request_pixels``, 256 MP: 100
    blank 16-MP PNGs took 38 s of CPU to decode). Every id a request carries (user ids, item
    ids of sessions, exclusions and ``embed_items``) is at most ``max_id_bytes`` (UTF-8):
    ids had no bound of their own, so a body of a few long ids was hashed and held whole; an
    export or catalogue update refuses catalogue ids over it (no request could name them).
    """

    max_batch_size: int = 1024
    max_id_bytes: int = 1024
    max_text_bytes: int = 65_536
    max_text_request_bytes: int = 1_048_576
    max_image_pixels: int = 16_777_216
    max_image_request_pixels: int = 268_435_456
    min_sample_rate: int = 8_000
    max_sample_rate: int = 192_000
    max_audio_seconds: float = 600.0

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_id_bytes", "max_text_bytes",
                     "max_text_request_bytes", "max_image_pixels", "max_image_request_pixels"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"export.limits.{name}", value,
                   "an integer >= 1")
        _check(1 <= self.min_sample_rate <= self.max_sample_rate <= 1_000_000,
               "export.limits.max_sample_rate", self.max_sample_rate,
               f"in [export.limits.min_sample_rate={self.min_sample_rate}, 1000000]")
        _check(self.max_image_pixels <= 2**29, "export.limits.max_image_pixels",
               self.max_image_pixels, "<= 2^29 (TensorFlow's own decoder limit)")
        _check(0 < self.max_audio_seconds <= 86_400, "export.limits.max_audio_seconds",
               self.max_audio_seconds, "in (0, 86400]")


# The top-k index kinds ``export.index`` accepts: the built-in ones, then every kind that
# ``tfmmrec.export.index.register`` adds (a new kind is a module and a registration; the
# config, a lower layer, keeps only the names).
INDEX_KINDS: list[str] = ["scann", "brute_force", "partitioned"]


def register_index_kind(kind: str) -> None:
    """Let ``export.index`` take ``kind`` (``tfmmrec.export.index.register`` calls it)."""
    if not (isinstance(kind, str) and kind.isidentifier()):
        raise ValueError(f"an index kind is an identifier, got {kind!r}")
    if kind not in INDEX_KINDS:
        INDEX_KINDS.append(kind)
# How content queries (query_text / query_image / query_audio) search: every item, or the
# partitions the index visits for a user query.
CONTENT_SEARCH = ("every_item", "index")
MAX_EXPORT_VERSION = 10**18 - 1  # the largest version directory tfmmrec and TF Serving list


@dataclass
class ExportConfig(ConfigSection):
    """Where and how ``tfmmrec export`` writes a TF Serving model version.

    ``exclude_seen`` (opt-in, logs a warning) bakes each user's training items into the export
    so user-id signatures never return them: anyone holding the artefact can read them. The
    default is to pass them per request (``exclude_item_ids``, at most ``max_exclude`` per
    request: the index over-fetches that many). ``recommend_session`` takes at most
    ``max_session_items`` recent items and blends their mean embedding with the user query,
    the user weighing ``session_user_weight``; it never returns the session's own items
    (they were just seen) unless ``exclude_session_items`` is false (re-consumption: a
    playlist, a re-order).
    ``index``: ``scann`` (fastest, needs ScaNN ops in the server), ``partitioned`` (ANN in
    plain TF ops, stock TF Serving >= 2.20), ``brute_force`` (exact, plain TF ops).
    ``replace_catalog_updates`` (opt-in): export although the newest version under
    ``base_dir/model_name`` serves catalogue updates (``tfmmrec catalog``); the new version
    serves the run's catalogue, without them (refused by default: it becomes the newest
    version, so a server would drop every added, updated and removed item silently).
    ``jit_compile`` (opt-in): the text encoder's backbone runs XLA-compiled in the exported
    text signatures (measure it with ``benchmarks/text_speed.py`` on the serving machine: it
    did not help on the loaded 2-core machine here). Stock TF Serving then needs
    ``--xla_cpu_compilation_enabled=true``, or those signatures fail.
    ``text_backbone``: ``keras`` (default) or ``fused``: the exported text encoder runs
    ``towers.text_inference.InferenceBert``, a copy of the trained backbone with Q/K/V fused
    into one matmul on 2-D activations (same features to 1e-5). ``text_precision``:
    ``float32`` (default) or ``bfloat16`` (opt-in, needs ``fused`` and no ``jit_compile``:
    the fused copy's weight matmuls in bfloat16, half the weight bytes per query; its
    numerics are measured by ``benchmarks/text_speed.py``; stock TF Serving CPU builds may
    lack fast bfloat16 kernels). ``text_weights``: ``variables`` (default) or ``constants``
    (opt-in, needs ``fused`` and no ``jit_compile``; float32 or bfloat16): the fused copy's
    dense kernels become graph constants (in one function every text signature calls), so
    oneDNN packs them once and reuses the packed copy (a variable's kernel is repacked each
    call through a slower general GEMM): faster queries, the same features to float
    rounding. Cost: the kernels move from ``variables/`` into ``saved_model.pb``, twice (one
    copy per attention branch; ML-100K MiniLM: 93 MB of graph instead of 8.5 MB, ~42 MB
    more in all; a graph proto is capped at 2 GB) (``benchmarks/text_speed.py`` measures
    both).
    ``content_search``: ``every_item`` (default) or ``index``: how ``query_text`` /
    ``query_image`` / ``query_audio`` search. A query embedded from content lies farther
    from its items than a user query, so the partitions an approximate index visits for it
    miss many of them (ML-100K, ScaNN's 20 of 41 leaves: a film's title finds it in the top
    10 for 40 % of films, every leaf 47 %); ``every_item`` scores every item (ScaNN: every
    leaf, then exact reordering; ``partitioned``: a blockwise scan of its table; brute force
    is exact anyway), a pass over the catalogue per query; ``index`` searches as user
    queries do (for catalogues where that pass is too slow). User-id and session signatures
    always use the index's own search.
    ``text_search_weight`` ``w`` (0: off): ``query_text`` searches a second index, scoring
    ``cos(query, item) in the trained space + w · cos(frozen text features)``, so a title or
    a sentence of a plot finds its item (``benchmarks/query_by_content.py --hybrid``). Costs
    per item the ``F`` stored features plus the second index's own copy (``content_dim + F``
    floats for an exact one; MiniLM: F = 384) and, as ``content_search`` says, per query a
    pass over every item. Needs a text tower with a frozen encoder.
    """

    base_dir: str = "runs/models"
    model_name: str = "tfmmrec"
    version: int | None = None
    index: str = "scann"  # one of INDEX_KINDS: the built-in kinds and registered ones
    k: int = 10
    max_k: int = 100
    exclude_seen: bool = False
    max_exclude: int = 100
    max_session_items: int = 50
    session_user_weight: float = 0.5
    exclude_session_items: bool = True
    replace_catalog_updates: bool = False
    scann: ScannConfig = field(default_factory=ScannConfig)
    partitioned: PartitionedConfig = field(default_factory=PartitionedConfig)
    limits: ServingLimitsConfig = field(default_factory=ServingLimitsConfig)
    jit_compile: bool = False
    text_backbone: Literal["keras", "fused"] = "keras"
    text_precision: Literal["float32", "bfloat16"] = "float32"
    text_weights: Literal["variables", "constants"] = "variables"
    text_search_weight: float = 0.0
    content_search: Literal["every_item", "index"] = "every_item"

    def __post_init__(self) -> None:
        _check_local_path("export.base_dir", self.base_dir)
        _check(bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", self.model_name)),
               "export.model_name", self.model_name,
               "a folder name of letters, digits, '.', '_' and '-' (TF Serving's model name in "
               "REST paths such as /v1/models/NAME:predict)")
        _check_choice("export.index", self.index, tuple(INDEX_KINDS))
        _check_choice("export.content_search", self.content_search, CONTENT_SEARCH)
        _check(math.isfinite(self.text_search_weight) and self.text_search_weight >= 0,
               "export.text_search_weight", self.text_search_weight,
               ">= 0 and finite (0: query_text searches the served index)")
        _check_choice("export.text_backbone", self.text_backbone, ("keras", "fused"))
        _check_choice("export.text_precision", self.text_precision, ("float32", "bfloat16"))
        _check_choice("export.text_weights", self.text_weights, ("variables", "constants"))
        if self.text_precision == "bfloat16":
            self._check_fused_option("text_precision", "float32",
                                     "bfloat16 weights live in the fused copy",
                                     "XLA:CPU has no fast bfloat16 matmul")
        if self.text_weights == "constants":
            self._check_fused_option("text_weights", "variables",
                                     "the constants are the fused copy's kernels",
                                     "untested: XLA:CPU does not run oneDNN's cached-weight "
                                     "kernels")
        _check(self.max_exclude >= 0, "export.max_exclude", self.max_exclude, ">= 0")
        _check(self.max_session_items >= 1, "export.max_session_items",
               self.max_session_items, ">= 1")
        _check(0.0 <= self.session_user_weight <= 1.0, "export.session_user_weight",
               self.session_user_weight, "in [0, 1]")
        _check(1 <= self.k <= self.max_k, "export.k", self.k, f"in [1, export.max_k={self.max_k}]")
        if self.version is not None:
            # TF Serving reads a version directory's name as an int64; tfmmrec lists at most
            # 18 digits, so a longer name would be written and then never seen again.
            _check(1 <= self.version <= MAX_EXPORT_VERSION, "export.version", self.version,
                   f"in [1, {MAX_EXPORT_VERSION}] (at most 18 digits)")

    def _check_fused_option(self, name: str, default: str, why_fused: str, why_not_xla: str
                            ) -> None:
        """An opt-in of the fused text copy: it needs ``text_backbone=fused`` and no XLA."""
        value = getattr(self, name)
        _check(self.text_backbone == "fused", f"export.{name}", value,
               f"{default} unless export.text_backbone=fused ({why_fused})")
        _check(not self.jit_compile, f"export.{name}", value,
               f"{default} with export.jit_compile=true ({why_not_xla})")


@dataclass(init=False)
class Config:
    """A whole tfmmrec job. ``Config()`` is the embedded demo; YAML files override fields.

    Besides the fixed sections below it has one section per registered modality (``text``,
    ``image``, ``audio``, ...; :func:`tower_sections`), held in ``towers`` and read as
    ``config.tower("image")`` or ``config.image``. ``Config(image=ImageTowerConfig(...))`` sets
    one; the others take their defaults.
    """

    data: DataConfig
    model: ModelConfig
    ranking: RankingConfig
    train: TrainConfig
    eval: EvalConfig
    export: ExportConfig
    towers: dict[str, Any]

    def __init__(self, data: DataConfig | None = None, model: ModelConfig | None = None,
                 ranking: RankingConfig | None = None, train: TrainConfig | None = None,
                 eval: EvalConfig | None = None,
                 export: ExportConfig | None = None, towers: dict[str, Any] | None = None,
                 **sections: Any) -> None:
        self.data = DataConfig() if data is None else data
        self.model = ModelConfig() if model is None else model
        self.ranking = RankingConfig() if ranking is None else ranking
        self.train = TrainConfig() if train is None else train
        self.eval = EvalConfig() if eval is None else eval
        self.export = ExportConfig() if export is None else export
        given = {**(towers or {}), **sections}
        unknown = sorted(set(given) - set(_TOWER_SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section(s) {', '.join(unknown)}: the sections "
                              f"are {', '.join(section_names())}")
        self.towers = {}
        for name, config_class in _TOWER_SECTIONS.items():
            value = given.get(name)
            if value is None:
                value = config_class()
            elif not isinstance(value, config_class):
                raise ConfigError(f"config section {name} must be a {config_class.__name__}, "
                                  f"got {type(value).__name__}")
            self.towers[name] = value
        self.__post_init__()

    def __post_init__(self) -> None:
        for name in section_names():
            _check_scalars(getattr(self, name), name)
        self._check_relations()

    def _check_relations(self) -> None:
        """The checks that relate fields of different sections (each section's own in
        ``__post_init__``)."""
        if self.model.objective == "users":
            _check(not self.ranking.enabled, "model.objective", self.model.objective,
                   "interactions with ranking.enabled: true (a ranking head scores "
                   "interactions)")
            _check(not self.train.tfrecords, "model.objective", self.model.objective,
                   "interactions with train.tfrecords (per-user batches are drawn from the "
                   "in-memory histories)")
        if self.ranking.enabled:
            _check(self.model.linear_cf == "none", "model.linear_cf", self.model.linear_cf,
                   "none with ranking.enabled: true (the ranking head scores the learned "
                   "towers' embeddings; the linear-CF part is appended to them at inference "
                   "only)")
            # a two-stage recommend re-ranks its candidates and may be asked for max_k results
            _check(self.ranking.retrieve_candidates >= self.export.max_k,
                   "ranking.retrieve_candidates", self.ranking.retrieve_candidates,
                   f">= export.max_k={self.export.max_k} (a two-stage recommend re-ranks its "
                   "candidates and may be asked for max_k results), or lower export.max_k")
        self._check_early_stopping_metric()
        if self.export.text_search_weight > 0:  # refused at export, after a whole training
            text = self.towers.get("text")
            _check(text is not None and text.enabled and not text.trainable,
                   "export.text_search_weight", self.export.text_search_weight,
                   "0 without a frozen text tower (text.enabled: true, text.trainable: false): "
                   "query_text searches the frozen text features beside the trained space")
        if self.model.fusion_selection == "validation":
            _check(not (self.ranking.enabled and self.ranking.retrieval_weight == 0),
                   "model.fusion_selection", self.model.fusion_selection,
                   "none for a ranking-only model (ranking.retrieval_weight: 0): the mix is "
                   "chosen on retrieval recall, which such a model does not learn")
            _check(self.train.strategy in ("default", "mirrored", "tpu"), "train.strategy",
                   self.train.strategy, "a single-process strategy (default, mirrored, tpu) "
                   "with model.fusion_selection=validation")
            metric, _, k = self.model.fusion_selection_metric.partition("@")
            _check(metric in ("recall", "ndcg", "hit_rate") and k.isdigit()
                   and int(k) in self.eval.ks, "model.fusion_selection_metric",
                   self.model.fusion_selection_metric,
                   f"recall@K, ndcg@K or hit_rate@K with K in eval.ks={self.eval.ks}")
        for tower in self.towers.values():
            validate = getattr(tower, "validate_in", None)
            if validate is not None:
                validate(self)

    def _check_early_stopping_metric(self) -> None:
        """A ranking head's metric needs that head; a ranking-only model needs one (its
        retrieval towers train only through the head, so a retrieval metric would choose its
        epochs on what it does not learn)."""
        metric, ranking = self.train.early_stopping_metric, self.ranking
        if metric in HEAD_METRICS:
            task = HEAD_METRICS[metric]
            _check(ranking.enabled and ranking.task == task and ranking.ranking_weight > 0,
                   "train.early_stopping_metric", metric,
                   f"a retrieval metric (recall@K, ndcg@K) unless ranking.enabled: true with "
                   f"ranking.task: {task} and ranking.ranking_weight > 0")
        elif self.train.early_stopping and ranking.enabled and ranking.retrieval_weight == 0:
            heads = [m for m, task in HEAD_METRICS.items() if task == ranking.task]
            _check(False, "train.early_stopping_metric", metric,
                   f"{' or '.join(heads)} for a ranking-only model (ranking.retrieval_weight: 0)"
                   if heads else "a ranking head's metric, which the listwise task has none "
                   "of: set train.early_stopping: false and choose train.epochs")

    def __setattr__(self, name: str, value: Any) -> None:
        # ``config.image = ImageTowerConfig(...)`` replaces the section in ``towers`` (what
        # every reader uses); a misspelt or wrongly typed section fails here.
        towers = self.__dict__.get("towers")
        expected = _TOWER_SECTIONS.get(name) if towers is not None else None
        if expected is None:
            expected = _field_hints(Config).get(name)
        if expected is None:
            raise ConfigError(f"a Config has no section {name!r}"
                              f"{_did_you_mean(name, section_names())}; the sections are "
                              f"{', '.join(section_names())}")
        if name == "towers" and towers is not None:
            raise ConfigError("set a tower section by its name (config.image = "
                              "ImageTowerConfig(...)), not the towers mapping")
        origin = get_origin(expected) or expected
        if not isinstance(value, origin):
            raise ConfigError(f"config section {name} must be a {origin.__name__}, got "
                              f"{type(value).__name__}")
        if name in _TOWER_SECTIONS and towers is not None:
            towers[name] = value
        else:
            super().__setattr__(name, value)

    def validate(self) -> Config:
        """Run every check again: the checks that relate fields, after fields were assigned in
        Python (``ConfigSection`` checks each assignment on its own). Returns ``self``."""
        for name in section_names():  # types first: a list edited in place, say
            _check_scalars(getattr(self, name), name)
        for name in section_names():
            _post_init_all(getattr(self, name))
        self._check_relations()
        return self

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: ``config.text`` is ``config.towers["text"]``.
        towers = self.__dict__.get("towers")
        if towers is not None and name in towers:
            return towers[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def tower(self, modality: str) -> Any:
        """The tower section of ``modality`` (a ``ConfigError`` naming the sections if none)."""
        try:
            return self.towers[modality]
        except KeyError:
            raise ConfigError(f"no tower section {modality!r}: the config has "
                              f"{', '.join(self.towers)}") from None

    def to_dict(self) -> dict[str, Any]:
        """Every section as plain data, in YAML order (data, the towers, model, ...)."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in _LEADING_SECTIONS}
        out.update({name: dataclasses.asdict(tower) for name, tower in self.towers.items()})
        out.update({name: dataclasses.asdict(getattr(self, name))
                    for name in _TRAILING_SECTIONS})
        return out

    def to_yaml(self, path: str | os.PathLike, sections: tuple[str, ...] | None = None) -> None:
        """Write the config (or only ``sections`` of it) as YAML, atomically."""
        from tfmmrec.files import atomic_write

        data = self.to_dict()
        if sections is not None:
            data = {name: data[name] for name in sections}
        atomic_write(path, yaml.safe_dump(data, sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Config:
        """Parse a mapping of sections; an error names ``source`` (where ``data`` was read)."""
        try:
            return cls._parse(data or {})
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> Config:
        """``from_dict`` without the source in its errors: ``_build`` says whom to blame."""
        schema = _schema()
        data = _empty_sections(schema, data)
        try:
            if "towers" in data:  # the attribute, not a YAML section
                raise dacite.UnexpectedDataError(keys={"towers"})
            parsed = dacite.from_dict(schema, data, config=dacite.Config(
                strict=True, type_hooks={float: _yaml_float}))
        except dacite.WrongTypeError as exc:
            if get_origin(exc.field_type) is Literal:  # say which values would be valid
                choices = ", ".join(map(str, get_args(exc.field_type)))
                raise ConfigError(f"invalid config value {exc.field_path}={exc.value!r}: "
                                  f"expected one of {choices}") from None
            # dacite reports a collection built from a wrong value as a generator: name the
            # value as written instead
            written = _lookup(data, exc.field_path, default=exc.value)
            expected = ("a section (a mapping of fields)" if dataclasses.is_dataclass(
                exc.field_type) else _type_name(exc.field_type))
            raise ConfigError(f"invalid config value {exc.field_path}={written!r}: "
                              f"expected {expected}") from None
        except dacite.UnexpectedDataError as exc:
            keys = "; ".join(_unknown_keys(schema, data) or sorted(exc.keys))
            raise ConfigError(f"unknown config key(s) {keys}") from None
        except dacite.DaciteError as exc:
            raise ConfigError(str(exc)) from None
        fixed = _LEADING_SECTIONS + _TRAILING_SECTIONS
        return cls(**{name: getattr(parsed, name) for name in fixed},
                   towers={name: getattr(parsed, name) for name in _TOWER_SECTIONS})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
        """Load a YAML file; relative paths inside it stay relative to the working directory.

        ``overrides`` are ``dotted.key=value`` strings (values parsed as YAML), as given to the
        CLI's ``--set``.
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line, column = _line_column(raw, exc.start)
            raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at line "
                              f"{line}, column {column}): save the file as UTF-8") from None
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML{_yaml_problem(exc, text)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data)}")
        return _build(data, overrides or [], source=str(path))


def section_names() -> tuple[str, ...]:
    """Every section of a ``Config``, in YAML order: data, the tower sections, model, ..."""
    return _LEADING_SECTIONS + tower_sections() + _TRAILING_SECTIONS


_SCHEMAS: dict[tuple[tuple[str, type], ...], type] = {}


def _schema() -> type:
    """A plain dataclass with one field per section (the tower sections as registered now):
    what ``dacite`` parses, so its errors name fields as ``image.image_size``."""
    key = tuple(_TOWER_SECTIONS.items())
    if key not in _SCHEMAS:
        hints = get_type_hints(Config)
        fields = [(name, hints[name], field(default_factory=hints[name]))
                  for name in _LEADING_SECTIONS]
        fields += [(name, config_class, field(default_factory=config_class))
                   for name, config_class in key]
        fields += [(name, hints[name], field(default_factory=hints[name]))
                   for name in _TRAILING_SECTIONS]
        _SCHEMAS[key] = dataclasses.make_dataclass("ConfigSections", fields)
    return _SCHEMAS[key]


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping: YAML keeps the last
    one, so a second ``train:`` section would silently drop every field of the first."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"line {line}: duplicate key {key!r} (first at line "
                                  f"{seen[key]}); merge the two into one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _line_column(text: bytes | str, offset: int) -> tuple[int, int]:
    """1-based line and column of ``offset`` in ``text``, for an error message."""
    newline = b"\n" if isinstance(text, bytes) else "\n"
    return text.count(newline, 0, offset) + 1, offset - text.rfind(newline, 0, offset)


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """What follows "not valid YAML" in the one-line error: where and what, from PyYAML's
    parts (its own text spans lines and calls the file ``"<unicode string>"``)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem:
            start = exc.context_mark
            if start is not None and (start.line, start.column) != (mark.line, mark.column):
                problem += f" ({exc.context} at line {start.line + 1}, column {start.column + 1})"
            else:
                problem += f" ({exc.context})"
        if "'\\t'" in problem:
            problem += "; indent with spaces, not tabs"
        return f"{where}: {problem}"
    if isinstance(exc, yaml.reader.ReaderError):
        line, column = _line_column(text, exc.position)
        return (f" at line {line}, column {column}: unacceptable character "
                f"#x{exc.character:04x}: {exc.reason}")
    return ": " + " ".join(str(exc).split())


def _empty_sections(cls: type, data: Any) -> Any:
    """``data`` with each section left empty (``train:`` with every field commented out,
    which YAML reads as None) as ``{}``: that section's defaults, not a type error."""
    if not isinstance(data, dict):
        return data
    hints = _field_hints(cls)
    return {key: ({} if value is None else _empty_sections(hints[key], value))
            if dataclasses.is_dataclass(hints.get(key)) else value
            for key, value in data.items()
            # null for a field that cannot be None is its default (``--set train.epochs=null``)
            if not (value is None and key in hints and not _allows_none(hints[key]))}


def _allows_none(hint: Any) -> bool:
    return hint is Any or type(None) in get_args(hint)


def _check_scalars(section: Any, prefix: str) -> None:
    """Every field of a section (and of its nested sections) passes ``_field_problem``: run by
    ``Config`` on every build and ``validate()``, so a list edited in place, or a plugin's
    tower section that does not derive from ``ConfigSection``, is checked too."""
    if not dataclasses.is_dataclass(section):
        return
    hints = _field_hints(type(section))
    for item in dataclasses.fields(section):
        value, name = getattr(section, item.name), f"{prefix}.{item.name}"
        if dataclasses.is_dataclass(value):
            _check_scalars(value, name)
            continue
        problem = _field_problem(value, hints.get(item.name, Any))
        if problem is None and _is_seed(item.name, value) and not 0 <= value <= MAX_SEED:
            problem = f"expected a seed in [0, {MAX_SEED}] (NumPy's and TF's range)"
        if problem:
            raise ConfigError(f"invalid config value {name}={value!r}: {problem}")


MAX_SEED = 2**32 - 1


def _is_seed(field_name: str, value: Any) -> bool:
    return ((field_name == "seed" or field_name.endswith("_seed")) and isinstance(value, int)
            and not isinstance(value, bool))


def _field_problem(value: Any, hint: Any) -> str | None:
    """What is wrong with ``value`` for a field annotated ``hint`` (None: nothing). Besides the
    type: YAML's ``true`` is a Python ``bool`` (an ``int`` to ``isinstance``) and
    ``.inf``/``.nan`` are floats, so neither would fail a range check such as ``epochs >= 1``
    or ``temperature > 0``."""
    if not _conforms(value, hint):
        return f"expected {_expected(hint)}"
    allowed = _scalar_types(hint)
    elements = (value.values() if isinstance(value, dict) else
                value if isinstance(value, list | tuple) else [value])
    for element in elements:
        if isinstance(element, bool) and bool not in allowed and allowed & {int, float}:
            return f"expected {_type_name(hint)}, not true/false"
        if isinstance(element, float) and not math.isfinite(element):
            return "expected a finite number"
    return None


def _is_union(origin) -> bool:
    """Whether a type's ``typing.get_origin`` is a union (``X | Y`` or ``Optional[X]``)."""
    return origin is types.UnionType or str(origin) == "typing.Union"


def _conforms(value: Any, hint: Any) -> bool:
    """``value`` is of the annotated type, read as YAML reads it: an ``int`` is a ``float``,
    ``true`` an ``int`` (``_field_problem`` says why that is refused), a tuple a list."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if _is_union(origin):
        return any(_conforms(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin in (list, tuple):
        element = args[0] if args else Any
        return isinstance(value, list | tuple) and all(_conforms(v, element) for v in value)
    if origin is dict:
        key, item = args or (Any, Any)
        return isinstance(value, dict) and all(
            _conforms(k, key) and _conforms(v, item) for k, v in value.items())
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _expected(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, get_args(hint)))
    return _type_name(hint)


def _plain(value: Any, hint: Any) -> Any:
    """``value`` as the plain data YAML would give (so ``to_yaml`` writes it and a restored
    run compares equal): a numpy scalar as its Python number, a path as its string where the
    field takes a string, a tuple as a list where it takes a list."""
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()
    origin = get_origin(hint)
    union = _is_union(origin)
    allowed = {get_origin(arg) or arg for arg in (get_args(hint) if union else (hint,))}
    if isinstance(value, os.PathLike) and str in allowed:
        return os.fspath(value)
    if isinstance(value, tuple) and list in allowed:
        return list(value)
    return value


@functools.cache
def _section_paths(schema: type) -> dict[type, str]:
    """Section class → its dotted place in a config (``ServingLimitsConfig`` → export.limits)."""
    paths: dict[type, str] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, hint in _field_hints(cls).items():
            if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                paths.setdefault(hint, f"{prefix}{name}")
                walk(hint, f"{prefix}{name}.")

    walk(schema, "")
    return paths


def _section_path(cls: type) -> str:
    return _section_paths(_schema()).get(cls, cls.__name__)


def _post_init_all(section: Any) -> None:
    """``__post_init__`` of a section and of its nested sections, innermost first."""
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            _post_init_all(value)
    post_init = getattr(section, "__post_init__", None)
    if post_init is not None:
        post_init()


# A Config is built on every load and override: resolve each section's annotations once.
_field_hints = functools.cache(get_type_hints)


def _scalar_types(hint: Any) -> set[Any]:
    """The scalar types a field annotation admits (``list[int] | None`` → ``{int, None}``; a
    dict's values': ``dict[str, float]`` → ``{float}``)."""
    origin = get_origin(hint)
    if origin is dict:
        return _scalar_types(get_args(hint)[1]) if get_args(hint) else {Any}
    if origin in (list, tuple) or _is_union(origin):
        return set().union(*(_scalar_types(arg) for arg in get_args(hint)))
    return {None if hint is type(None) else hint}


def _type_name(hint: Any) -> str:
    """``list[str] | None`` as written in the dataclass, for messages."""
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint)


def _lookup(data: Any, dotted: str, default: Any = None) -> Any:
    """``data["a"]["b"]`` for ``"a.b"`` (``default`` when a key is missing)."""
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return default
        data = data[part]
    return data


def _yaml_float(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; accept it where a float is expected."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _unknown_keys(cls: type, data: Any, prefix: str = "") -> list[str]:
    """Keys in ``data`` that no field of dataclass ``cls`` (recursively) has, dotted, each
    with the close name or else the names there are: ``train.epoch (did you mean 'epochs'?)``,
    ``train.x (the fields of train are epochs, ...)``."""
    if not isinstance(data, dict):
        return []
    hints = _field_hints(cls)
    unknown = []
    for key, value in data.items():
        if key not in hints:
            there = f"the fields of {prefix[:-1]} are" if prefix else "the sections are"
            # a top-level section holding a mapping reads like a modality's section: a config
            # (a run's model.yaml) written where that modality was registered
            modality = " — a modality's section? register it (import the module that calls " \
                "tfmmrec.modalities.register) before loading this config" \
                if not prefix and isinstance(value, dict) else ""
            unknown.append(f"{prefix}{key}"
                           + (_did_you_mean(key, hints) or f" ({there} {_some(hints)}"
                              f"{modality})"))
        elif dataclasses.is_dataclass(hints[key]):
            unknown += _unknown_keys(hints[key], value, f"{prefix}{key}.")
    return sorted(unknown)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (a copy)."""
    import copy

    if isinstance(overrides, str) or not all(isinstance(item, str) for item in overrides):
        raise ConfigError(f"overrides must be a list of 'section.field=value' strings, got "
                          f"{overrides!r}")
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        if not raw.strip():
            raise ConfigError(f"override {item!r} has no value: give one, or {key}=null for "
                              "the field's default")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: its value is not valid YAML"
                              f"{_yaml_problem(exc, raw)}") from None
    return data


def _build(data: dict[str, Any], overrides: list[str], source: str) -> Config:
    """``data`` (read from ``source``) with ``overrides`` applied, as a ``Config``. An error is
    blamed on the overrides involved in it (``--set train.epochs=abc: ...``), else on
    ``source``: the message names what the user has to edit."""
    try:
        merged = apply_overrides(data, overrides)
    except ConfigError:  # "train is not a section": the file's own value, if it is wrong
        try:
            Config._parse(data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        raise
    try:
        return Config._parse(merged)
    except ConfigError as exc:
        problem = str(exc)
    raise ConfigError(f"{_blame(data, overrides, problem, source)}: {problem}") from None


def _blame(data: dict[str, Any], overrides: list[str], problem: str, source: str) -> str:
    """Whom ``problem`` (the error of ``data`` with ``overrides``) is to name: the overrides
    that set a field it names and change it when left out, and those without which the config
    is valid; ``source`` when the error is its own. Leaving one override out is not enough: of
    two that break the same check neither changes the error alone (and an unrelated one would
    be named), and one that fixes an earlier error of the file changes it too."""

    def error(kept: list[str]) -> str | None:
        try:
            Config._parse(apply_overrides(data, kept))
        except ConfigError as exc:
            return str(exc)
        return None

    if not overrides or error([]) == problem:
        return source
    named = _named_fields(problem)
    touching = [item for item in overrides if _touches(item.partition("=")[0], named)]
    without = [error(overrides[:i] + overrides[i + 1:]) for i in range(len(overrides))]
    blamed = [item for item, rest in zip(overrides, without, strict=True)
              if rest is None or (item in touching and rest != problem)] or touching
    if blamed:
        return ", ".join(f"--set {item}" for item in blamed)
    if named:  # the fields in conflict are the source's; the overrides only fixed another error
        return source
    return (f"{source} with the --set overrides (the error names no field, so which of them "
            "it involves is not known)")


_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def _named_fields(problem: str) -> set[str]:
    """The fields (and sections) a config error names: its dotted names, the field of an
    ``invalid config value X=...`` and the keys of an ``unknown config key(s) ...``."""
    named = set(_DOTTED_NAME.findall(problem))
    named.update(re.findall(r"invalid config value ([\w.]+)=", problem))
    keys = problem.partition("unknown config key(s) ")[2]
    named.update(part.split(" ")[0] for part in keys.split("; ") if part)
    return named


def _touches(key: str, fields: set[str]) -> bool:
    """Whether an override of ``key`` sets one of ``fields``, a field inside one (a section's,
    a mapping's key) or a section holding one."""
    return any(key == name or key.startswith(f"{name}.") or name.startswith(f"{key}.")
               for name in fields)


# --- fields that do nothing where they are set -------------------------------------------------

# (fields, when they have no effect, why, what gives them one): a value other than the default
# set there changes nothing, so a user would believe a change that was never made. Logged by
# ``load_config`` (``inert_fields``), not refused: a config tried with a feature switched off
# keeps its settings for when it is switched on again. Each field's first matching rule only.
_LINEAR_CF_SETTINGS = ("model.linear_cf_foldin", "model.linear_cf_rank", "model.linear_cf_l2",
                       "model.linear_cf_alpha", "model.linear_cf_weight",
                       "model.linear_cf_content", "model.linear_cf_half_life")
_INERT_RULES: tuple[tuple[tuple[str, ...], Callable[[Config], bool], str, str], ...] = (
    (("model.item_id_dropout",), lambda c: not c.model.item_id_embedding,
     "model.item_id_embedding is false", "set model.item_id_embedding: true"),
    (("model.item_id_dropout",),
     lambda c: not any(getattr(tower, "enabled", True) for tower in c.towers.values()),
     "every tower section is disabled (an id-only item tower never hides its id)",
     "enable a tower section"),
    (("model.user_id_dropout",), lambda c: not c.model.user_id_embedding,
     "model.user_id_embedding is false", "set model.user_id_embedding: true"),
    (("model.history_dropout", "model.history_half_life", "model.history_max_length"),
     lambda c: not c.model.user_history,
     "model.user_history is false (the query tower has no history encoder)",
     "set model.user_history: true"),
    (("model.feature_dropout_shared",), lambda c: not any(c.model.feature_dropout.values()),
     "no model.feature_dropout rate is above 0", "set one, e.g. model.feature_dropout: "
     "{image: 0.5}"),
    (("model.alignment_temperature", "model.alignment_rows"),
     lambda c: c.model.alignment_weight == 0, "model.alignment_weight is 0",
     "set model.alignment_weight > 0"),
    (("model.alignment_weight",),
     lambda c: c.ranking.enabled and c.ranking.retrieval_weight == 0,
     "a ranking-only model (ranking.retrieval_weight: 0) has no retrieval batches to align on",
     "set ranking.retrieval_weight > 0"),
    (("model.fusion_selection_metric",), lambda c: c.model.fusion_selection == "none",
     "model.fusion_selection is none", "set model.fusion_selection: validation"),
    (_LINEAR_CF_SETTINGS, lambda c: c.model.linear_cf == "none", "model.linear_cf is none",
     "set model.linear_cf (e.g. ease)"),
    (("train.early_stopping_patience", "train.validation_carves",
      "train.early_stopping_smoothing"), lambda c: not c.train.early_stopping,
     "train.early_stopping is false", "set train.early_stopping: true"),
    (("train.early_stopping_metric",),
     lambda c: not c.train.early_stopping and c.model.linear_cf == "none",
     "train.early_stopping is false and model.linear_cf is none (nothing is chosen on it)",
     "set train.early_stopping: true"),
)


def inert_fields(config: Config) -> list[str]:
    """One message per field set away from its default where the rest of ``config`` gives it
    no effect (``_INERT_RULES``), naming the field, its value, why, and what would count."""
    messages, seen = [], set()
    for names, applies, why, remedy in _INERT_RULES:
        for name in names:
            section, attribute = name.split(".")
            value = getattr(getattr(config, section), attribute)
            if name in seen or value == _default(name) or not applies(config):
                continue
            seen.add(name)
            messages.append(f"{name}={value!r} has no effect: {why}; {remedy}, or remove "
                            f"{name}")
    return messages


def _default(name: str) -> Any:
    """The default of a dotted ``section.field`` of the fixed sections."""
    section, attribute = name.split(".")
    item = _field_hints(Config)[section].__dataclass_fields__[attribute]
    return item.default_factory() if item.default is dataclasses.MISSING else item.default


# The messages logged in this process: a config is loaded again at each pipeline entry (the
# CLI's, then ``train``'s), and its user needs each warning once.
_WARNED: set[str] = set()


def _warn_inert(config: Config) -> Config:
    """Log each of ``inert_fields(config)`` not logged before; return ``config``."""
    for message in inert_fields(config):
        if message not in _WARNED:
            _WARNED.add(message)
            logger.warning("%s", message)
    return config


def load_config(source: str | os.PathLike | Config | Mapping[str, Any] | None = None,
                overrides: list[str] | None = None) -> Config:
    """One entry point: a ``Config``, a YAML path, a mapping of sections as a YAML file would
    hold them (``{"train": {"epochs": 3}}``), or ``None`` (the demo defaults).

    A field set where it has no effect is logged as a warning (``inert_fields``), except for a
    ``Config`` with overrides: a config derived from one already loaded (the pipeline's own,
    such as early stopping's ``train.early_stopping=false``)."""
    if isinstance(source, Config):
        if overrides:
            return _build(source.to_dict(), overrides, source="<dict>")
        return _warn_inert(source.validate())
    if source is None:
        return _warn_inert(_build({}, overrides or [], source="defaults"))
    if isinstance(source, Mapping):
        return _warn_inert(_build(dict(source), overrides or [], source="the config mapping"))
    if not isinstance(source, str | os.PathLike):
        raise ConfigError(f"a config is a Config, a YAML path, a mapping of sections or None; "
                          f"got {type(source).__name__} {source!r:.80}")
    return _warn_inert(Config.from_yaml(source, overrides))


# --- what defines a trained model ----------------------------------------------------------------

# The sections whose values define a trained model's weights and the data they index: the item
# catalogue and users (vocabularies, content table), which columns feed which tower, each
# encoder, the split (user histories, what evaluation holds out), the towers, fusion and the
# ranking head. A run saves them beside its checkpoints (``checkpoints/model.yaml``) and
# ``tfmmrec.restore`` rebuilds exactly that model; changing one at evaluate/export time is an
# error. Everything else (``train``, ``eval``, ``export``) is run-time and stays overridable.
# The tower sections are the registered modalities' (``model_sections()``), so a modality added
# later is covered too.
def model_sections() -> tuple[str, ...]:
    """``data``, every tower section, ``model``, ``ranking`` (see above)."""
    return ("data", *tower_sections(), "model", "ranking")


def content_sections() -> tuple[str, ...]:
    """What a ``Workspace`` (data, split, encoders, encoded content) is prepared from: ``data``
    and every tower section."""
    return ("data", *tower_sections())


# ...except these fields, which only steer how a trained model is evaluated or served.
RUNTIME_FIELDS = frozenset({"ranking.retrieve_candidates"})
# Where the data is, not what it is: a finished run whose run.json records its data's digests
# restores from another path to the same data (``pipeline.check_restorable``).
RELOCATABLE_FIELDS = frozenset({"data.path"})


def _fields(value: Any, prefix: str) -> dict[str, Any]:
    """Dotted field name → value, descending into nested dataclasses (``data.demo.seed``)."""
    if not dataclasses.is_dataclass(value):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for item in dataclasses.fields(value):
        flat.update(_fields(getattr(value, item.name), f"{prefix}.{item.name}"))
    return flat


def config_differences(expected: Config, actual: Config,
                       sections: tuple[str, ...] | None = None,
                       ignored: frozenset[str] = RUNTIME_FIELDS) -> list[tuple[str, Any, Any]]:
    """``(dotted field, expected value, actual value)`` for every field of ``sections``
    (default: ``model_sections()``) that differs (``ignored`` fields excluded: the run-time
    ones), in declaration order."""
    differences = []
    for section in model_sections() if sections is None else sections:
        old = _fields(getattr(expected, section), section)
        new = _fields(getattr(actual, section), section)
        differences += [(name, old[name], new[name]) for name in old
                        if name not in ignored and old[name] != new[name]]
    return differences


def check_same_model(trained: Config, requested: Config, source: str, *,
                     sections: tuple[str, ...] | None = None,
                     hint: str = "evaluate/export the run with the config it was trained with "
                                 "(drop those --set overrides), or train a new run",
                     ignored: frozenset[str] = RUNTIME_FIELDS) -> None:
    """Raise ``ConfigError`` naming every model-defining field where ``requested`` differs
    from what ``source`` was built with, and both values."""
    differences = config_differences(trained, requested, sections, ignored)
    if differences:
        fields = "; ".join(f"{name}: {old!r} in {source}, {new!r} requested"
                           for name, old, new in differences)
        raise ConfigError(f"{fields}. These fields define the model, so they cannot change "
                          f"after training: {hint}")
