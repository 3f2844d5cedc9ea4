"""Towers: the KerasNLP BERT text encoder (raw strings → pooled sentence feature).

Tokenisation runs in-graph (KerasNLP preprocessor), so an exported model takes raw strings.
Each batch is then trimmed in-graph to its longest real sequence, so a text costs what its
tokens cost, not ``sequence_length`` (in training, catalogue encoding and every export alike).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import re
from collections.abc import Iterable

import tensorflow as tf

from tfmmrec._env import stdout_silenced

with stdout_silenced():  # keras-core prints "Using TensorFlow backend" on import
    import keras_nlp
from tfmmrec.config import TextTowerConfig
from tfmmrec.errors import ConfigError, first_line
from tfmmrec.towers.base import Encoder

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORD = re.compile(r"[a-z0-9]+")


@tf.keras.utils.register_keras_serializable(package="tfmmrec")
class TextEncoder(Encoder):
    """BERT backbone + preprocessor with masked-mean (sentence-transformers style) or CLS pooling.

    Mean pooling over ``padding_mask`` is what MiniLM-style sentence encoders were trained for;
    the output is L2-normalised so cosine similarity is a dot product.

    Args:
      preprocessor: a KerasNLP ``BertPreprocessor`` (tokeniser + packer, padded to its
        ``sequence_length``).
      backbone: the matching ``BertBackbone``.
      pooling: ``"mean"`` (masked mean of ``sequence_output``) or ``"cls"`` (first token).
      description: what the encoder is, for its cache ``identity``.
      trim_padding: cut each batch to its longest real sequence before the backbone (default).
        The features are the same either way (to float rounding); ``False`` keeps the padded
        path only so benchmarks and tests can compare against it.
      jit_compile: run the backbone and pooling as one XLA-compiled function. A short query
        through a 6-layer MiniLM is ~200 small ops whose dispatch costs more than their
        arithmetic; XLA fuses them. Lengths are then padded up to a power of two (at least 8,
        exact like trimming), so at most ~5 shapes per batch size are ever compiled. Read when
        a graph is traced (``export.jit_compile`` sets it for exports): stock TF Serving runs
        such a model only with ``--xla_cpu_compilation_enabled=true``.

    ``use_inference_backbone(precision, weights)`` (what an export does for
    ``export.text_backbone: fused``) makes inference calls (``training=False``) run a
    :class:`~tfmmrec.towers.text_inference.InferenceBert` built from the backbone's current
    weights; ``use_inference_backbone(None)`` returns to the Keras backbone. Training calls
    always run the Keras backbone.

    Examples:
    >>> encoder = build_text_encoder(TextTowerConfig(hidden_dim=16, num_heads=2, num_layers=1),
    ...                              ["a red film", "a blue song"])
    >>> encoder(tf.constant(["a red song"])).shape
    TensorShape([1, 16])
    """

    modality = "text"

    def __init__(self, preprocessor, backbone, pooling: str, description, *,
                 trim_padding: bool = True, jit_compile: bool = False, **kwargs):
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"text.pooling={pooling!r} is not supported; use 'mean' or 'cls'")
        super().__init__(description, **kwargs)
        self.preprocessor = preprocessor
        self.backbone = backbone
        self.pooling = pooling
        self.trim_padding = bool(trim_padding)
        self.jit_compile = bool(jit_compile)
        self.feature_dim = int(backbone.hidden_dim)
        self.use_inference_backbone(None)

    @property
    def inference_backbone(self):
        """The fused inference copy inference calls run, or ``None`` (the Keras backbone)."""
        return self._inference_backbone

    @property
    def serving_variables(self) -> list[tf.Variable]:
        """Variables an exported graph reads beyond ``variables``: the fused copy's. They are
        not the layer's weights (not trained, not in its checkpoints), so the export tracks
        them itself."""
        module = self._inference_backbone
        return [] if module is None else list(module.variables)

    def use_inference_backbone(self, precision: str | None, weights: str = "variables") -> None:
        """Serve inference calls through a fused copy of the backbone (``"float32"`` or
        ``"bfloat16"``; its kernels held as ``"variables"`` or graph ``"constants"``), or
        through the Keras backbone again (``None``). Call eagerly, after training: the copy
        holds the weights as they are now."""
        from tfmmrec.towers.text_inference import InferenceBert

        module = None if precision is None else InferenceBert(self.backbone, precision, weights)
        # Untracked on purpose: Keras would add the copy to the layer's weights for good.
        object.__setattr__(self, "_inference_backbone", module)

    def call(self, texts, training=False):
        tokens = self.preprocessor(texts)
        if self.trim_padding:
            tokens = trim_padding(tokens, bucketed=self.jit_compile)
        if self.jit_compile:
            # A new tf.function per trace: it becomes one XLA-marked function of the traced
            # graph (a Keras-tracked attribute would be saved as a function of its own).
            return tf.function(self._encode_tokens, jit_compile=True)(tokens, training)
        return self._encode_tokens(tokens, training)

    def _encode_tokens(self, tokens, training=False):
        if self.inference_backbone is not None and not training:
            sequence = self.inference_backbone(tokens)
        else:
            sequence = self.backbone(tokens, training=training)["sequence_output"]
        if self.pooling == "cls":
            pooled = sequence[:, 0, :]
        else:
            pooled = masked_mean_pool(sequence, tokens["padding_mask"])
        return tf.math.l2_normalize(pooled, axis=-1)


def masked_mean_pool(sequence: tf.Tensor, padding_mask: tf.Tensor) -> tf.Tensor:
    """Mean of ``sequence`` ``[batch, length, dim]`` over the positions ``padding_mask`` keeps,
    ``[batch, dim]`` (sentence-transformers' mean pooling: padding must not dilute the mean).
    An all-padding row pools to zeros rather than NaN."""
    mask = tf.cast(padding_mask, sequence.dtype)[..., None]
    return tf.reduce_sum(sequence * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def trim_padding(tokens: dict[str, tf.Tensor], bucketed: bool = False) -> dict[str, tf.Tensor]:
    """Cut every ``[batch, sequence_length]`` input to the batch's longest unpadded sequence
    (``bucketed``: rounded up to a power of two, at least 8, so a compiled graph sees few shapes).

    Exact, not an approximation: ``BertPreprocessor`` pads on the right only, padded positions
    are masked out of attention (their softmax weight is exactly zero in float32), position
    embeddings are sliced from position 0 to the input's length, and every other layer works per
    position; so the unpadded positions' outputs, and the pooled feature, do not change (tested
    against the padded path). Attention costs O(length²): a five-word query pays for ~7 tokens
    instead of 128.
    """
    length = tf.reduce_max(tf.reduce_sum(tf.cast(tokens["padding_mask"], tf.int32), axis=1))
    length = tf.maximum(length, 1)  # an empty batch keeps a valid (zero-row) shape
    if bucketed:
        buckets = 2 ** tf.range(3, 31)  # 8, 16, 32, ...
        bucket = tf.reduce_min(tf.boolean_mask(buckets, buckets >= length))
        length = tf.minimum(bucket, tf.shape(tokens["token_ids"])[1])
    return {key: value[:, :length] for key, value in tokens.items()}


@tf.keras.utils.register_keras_serializable(package="tfmmrec")
class FacetsEncoder(TextEncoder):
    """The text encoder over ``data.facet_columns`` only (``modalities.facets``): its own
    modality, so its own cache file, config section and ``query_facets`` signature."""

    modality = "facets"


def build_facets_encoder(config: TextTowerConfig, corpus: Iterable[str], *,
                         vocabulary: list[str] | None = None) -> FacetsEncoder:
    """``build_text_encoder`` for the facets modality."""
    return build_text_encoder(config, corpus, vocabulary=vocabulary,
                              encoder_class=FacetsEncoder, name="facets_encoder")


def build_text_encoder(config: TextTowerConfig, corpus: Iterable[str], *,
                       vocabulary: list[str] | None = None,
                       encoder_class: type[TextEncoder] = TextEncoder,
                       name: str = "text_encoder") -> TextEncoder:
    """From a KerasNLP preset (name or local dir), or a small random-init BERT (no download)."""
    if config.preset:
        preprocessor, backbone = _from_preset(config)
        description = {"kind": "bert_preset", "preset": config.preset}
    else:
        if vocabulary is None:
            vocabulary = build_vocabulary(corpus, config.max_vocabulary)
        tf.keras.utils.set_random_seed(config.seed)
        tokenizer = keras_nlp.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
        preprocessor = keras_nlp.models.BertPreprocessor(
            tokenizer, sequence_length=config.sequence_length)
        backbone = keras_nlp.models.BertBackbone(
            vocabulary_size=len(vocabulary),
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            hidden_dim=config.hidden_dim,
            intermediate_dim=config.intermediate_dim,
            max_sequence_length=config.sequence_length,
            dropout=0.0,
        )
        # the vocabulary itself, not only its size: a catalogue edit that keeps the size (birds
        # → zebras) keeps the seeded weights, so the cache served features of other token ids
        description = {"kind": "bert_small", "vocabulary_size": len(vocabulary),
                       "vocabulary": hashlib.sha256("\n".join(vocabulary).encode()).hexdigest(),
                       "layers": config.num_layers, "hidden": config.hidden_dim}
    description.update(sequence_length=config.sequence_length, pooling=config.pooling)
    encoder = encoder_class(preprocessor, backbone, config.pooling, description, name=name,
                            tower_config=config, vocabulary=None if config.preset else vocabulary)
    encoder.set_trainable(config.trainable)
    return encoder


def _from_preset(config: TextTowerConfig):
    try:
        preprocessor = keras_nlp.models.BertPreprocessor.from_preset(
            config.preset, sequence_length=config.sequence_length)
        backbone = keras_nlp.models.BertBackbone.from_preset(config.preset)
    except Exception as exc:  # KerasNLP raises ValueError/FileNotFoundError/HTTP errors
        raise ConfigError(  # KerasNLP's message runs to 8 lines of preset help: its first
            f"cannot load KerasNLP BERT preset text.preset={config.preset!r}: "
            f"{first_line(exc).rstrip('.')}. Use a preset name (needs internet) or a local "
            "preset directory with config.json and model.weights.h5."
        ) from None
    return preprocessor, backbone


_MIN_COUNTER_CAPACITY = 100_000


def _frequent_word_counts(words: Iterable[str], capacity: int) -> dict[str, int]:
    """Word counts in memory bounded by ``2 * capacity`` entries (Misra-Gries, batched).

    A catalogue's distinct words grow with the catalogue (ids, names, numbers in titles), so
    exact counting grows the encode driver with it. While a corpus has at most ``2 * capacity``
    distinct words the counts are exact (ML-100K has ~8k); beyond that every count is
    underestimated by the same amount each time the table is pruned, at most
    ``total words / (capacity + 1)``, so any word more frequent than that is kept.
    """
    counts: dict[str, int] = collections.defaultdict(int)
    for word in words:
        counts[word] += 1
        if len(counts) > 2 * capacity:
            floor = sorted(counts.values(), reverse=True)[capacity]
            counts = collections.defaultdict(
                int, {w: c - floor for w, c in counts.items() if c > floor})
    return counts


def build_vocabulary(corpus: Iterable[str], max_size: int) -> list[str]:
    """A word-level WordPiece vocabulary from the catalogue's own text, plus characters.

    Single characters (and their ``##`` continuations) let unseen words decompose instead of
    collapsing to ``[UNK]``. Sorted by frequency then alphabetically, so it is deterministic.
    """
    counts = _frequent_word_counts(
        (w for text in corpus for w in _WORD.findall(text.lower())),
        capacity=max(_MIN_COUNTER_CAPACITY, 5 * max_size))
    characters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    pieces = characters + ["##" + c for c in characters] + list(".,!?'\"-:;()&|/")
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    words = [w for w in words if w not in set(pieces)]
    budget = max(0, max_size - len(SPECIAL_TOKENS) - len(pieces))
    return SPECIAL_TOKENS + pieces + words[:budget]
