"""Towers: the item tower (item content → one normalised embedding in the shared space).

Content comes from an ``ItemContentTable`` (item index → cached encoder features, or raw content
when an encoder is being fine-tuned) so the same tower serves cached training, fine-tuning and
export (where encoders are composed in front of ``embed_single`` for query-by-content).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfmmrec.towers import arguments
from tfmmrec.towers.cf import LinearCF
from tfmmrec.towers.encoders import Encoder
from tfmmrec.towers.fusion import FUSION_MODES, MaskedFusion, drop_modalities
from tfmmrec.towers.noise import Noise
from tfmmrec.towers.precision import check_precision
from tfmmrec.towers.projection import ModalityProjection


class ItemContentTable(tf.keras.layers.Layer):
    """Item index ``[B]`` → ``{modality: content [B, ...], modality + "_mask": [B]}``.

    Holds every item's content as non-trainable variables, so a batch of training examples only
    carries item indices and the lookup runs on-device.
    """

    def __init__(self, contents: Mapping[str, object], masks: Mapping[str, np.ndarray],
                 **kwargs):
        super().__init__(trainable=False, **kwargs)
        contents = arguments.mapping("contents", contents, "modality → content [N, ...]",
                                     optional=False)
        masks = arguments.mapping("masks", masks, "modality → presence mask [N]",
                                  optional=False)
        _check_content(contents, masks)
        self.modalities = tuple(contents)
        self._contents = {
            m: tf.nest.map_structure(lambda a, m=m: self._variable(f"{m}_content", a), value)
            for m, value in contents.items()
        }
        self._masks = {m: self._variable(f"{m}_mask", np.asarray(masks[m], np.float32))
                       for m in self.modalities}

    def _variable(self, name: str, value) -> tf.Variable:
        return tf.Variable(value, trainable=False, name=name)

    def call(self, item_index):
        index = tf.cast(item_index, tf.int32)
        out = {"item_index": index}
        for m in self.modalities:
            out[m] = tf.nest.map_structure(lambda v: tf.gather(v, index), self._contents[m])
            out[f"{m}_mask"] = tf.gather(self._masks[m], index)
        return out


def _check_content(contents: Mapping[str, object], masks: Mapping[str, object]) -> None:
    """One row per item in every modality, a 0/1 ``[N]`` mask each, finite float content, and
    no modality named like another batch key (``item_index``, ``text_mask``).

    The table is every batch's content, so a mistake here is silent later: a mask value of 5
    weighs its item's modality 5 times in the masked mean, a ``[N, 1]`` mask broadcasts to
    ``[B, B]``, rows of another count misalign items and NaN features make the item's
    embedding NaN. Checked once at construction; the finiteness check sums each float leaf
    in float64 (numpy's buffered cast: no copy of a large feature array) and only looks
    entry by entry when that sum is not finite.
    """
    clash = sorted(set(contents) & {"item_index", *(f"{m}_mask" for m in contents)})
    if clash:  # the batch would hold one key for two things (modalities.register refuses them)
        raise ValueError(f"contents: modality name(s) {clash} are keys of the content batch "
                         "already (item_index, or another modality's '<name>_mask')")
    counts: dict[str, int] = {}
    for m, value in contents.items():
        if m not in masks:
            raise ValueError(f"masks has no entry for modality {m!r}")
        leaves = [np.asarray(leaf) for leaf in tf.nest.flatten(value)]
        if not leaves or any(leaf.ndim == 0 for leaf in leaves):
            raise ValueError(f"contents[{m!r}] must hold arrays of one row per item, got "
                             f"{value!r}"[:200])
        mask = np.asarray(masks[m])
        if mask.ndim != 1:
            raise ValueError(f"masks[{m!r}] must be 1-D (one 0/1 entry per item), got shape "
                             f"{mask.shape}")
        rows = {int(leaf.shape[0]) for leaf in leaves}
        if rows != {len(mask)}:  # one row per item everywhere
            raise ValueError(f"{m}: {sorted(rows)} content row(s) but {len(mask)} "
                             "mask entries; give one of each per item")
        if not np.isin(mask, (0, 1)).all():
            bad = np.unique(mask[~np.isin(mask, (0, 1))])[:5].tolist()
            raise ValueError(f"masks[{m!r}] must hold 0 (absent) or 1 (present) only, got "
                             f"{bad} (a mask value weighs its modality in the masked mean)")
        for leaf in leaves:
            if np.issubdtype(leaf.dtype, np.floating) and leaf.size \
                    and not np.isfinite(np.sum(leaf, dtype=np.float64)) \
                    and not np.isfinite(leaf).all():
                bad_rows = np.flatnonzero(~np.isfinite(leaf.reshape(len(leaf), -1)).all(1))
                raise ValueError(f"contents[{m!r}] has NaN or infinite values in "
                                 f"{len(bad_rows)} row(s) (first: {bad_rows[:5].tolist()}); an "
                                 "absent item's row should be zeros with mask 0")
        counts[m] = len(mask)
    if len(set(counts.values())) > 1:
        raise ValueError("every modality needs one row per item, got "
                         + ", ".join(f"{m}: {n}" for m, n in counts.items()))


@tf.keras.utils.register_keras_serializable(package="tfmmrec")
class ItemTower(tf.keras.layers.Layer):
    """Projections per modality → masked fusion (+ optional item-id embedding) → L2 normalise.

    Args:
      modalities: modality names in a fixed order (the fusion's modality axis).
      dim: shared embedding size.
      encoders: encoders that run *inside* the tower (being fine-tuned, fed raw content); frozen
        encoders stay outside and the table holds their cached features instead.
      num_items: if set, adds a per-item id embedding (hybrid model). It starts at zero when
        content modalities exist, so items unseen in training fall back to pure content.
      id_dropout: training-time rate of hiding an item's id embedding (DropoutNet, Volkovs et
        al. 2017): the content part must then score the item alone, which is all a cold item
        (never trained, id embedding still zero) has at serving time.
      modality_dropout: rate of hiding present modalities during training.
      feature_dropout: per modality, dropout on its encoder feature (training only).
      feature_dropout_shared: one feature-dropout mask per step for every item (a product
        over the kept dimensions only; ``ModalityProjection``).
      training_precision: ``float32`` or ``bfloat16``: the projections' product precision in
        training steps (``towers.precision``).
      linear_cf: optional closed-form item-item part (``towers.cf.LinearCF``): its item
        factor (warm items) or content prediction (cold items) is appended to the normalised
        embedding at inference, so items are ``[d + k]``. Query-by-content embeddings get
        zeros there: a text, image or clip is matched on the learned part only.

    Serving mix (late fusion): ``serving_mix`` holds one weight per modality, zero until set.
    When set (``pipeline.train`` with ``model.fusion_selection: validation`` sets it when a
    validation split prefers it), inference embeds an item as the weighted sum of its
    single-modality embeddings (weights renormalised over the modalities it has) instead of the
    fused embedding. A modality that helps training items but not unseen ones (a poster can
    identify a training item without saying anything about taste) then cannot drag the strong
    modality down: the mix includes each modality alone.
    """

    def __init__(self, modalities: Sequence[str], dim: int, *,
                 encoders: Mapping[str, Encoder] | None = None,
                 projection_hidden: Sequence[int] = (), fusion: str = "concat_mlp",
                 num_items: int | None = None, id_dropout: float = 0.0,
                 modality_dropout: float = 0.0,
                 dropout: float = 0.0, feature_dropout: Mapping[str, float] | None = None,
                 linear_cf: LinearCF | None = None, training_precision: str = "float32",
                 feature_dropout_shared: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.training_precision = check_precision(training_precision)
        self.modalities = arguments.names("modalities", modalities)
        self.dim = arguments.positive_int("dim", dim)
        if num_items is not None:
            arguments.positive_int("num_items", num_items)
        elif not self.modalities:  # the fusion of nothing: tf.add_n([]) at the first call
            raise ValueError("ItemTower needs a modality or num_items (an item-id embedding), "
                             "got modalities=[] and num_items=None")
        # checked without modalities too: get_config records it for a tower that may get some
        arguments.one_of("fusion", fusion, FUSION_MODES)
        self.encoders = arguments.mapping("encoders", encoders, "modality → Encoder")
        arguments.known("encoders", self.encoders, self.modalities)  # else silently unused
        for modality, encoder in self.encoders.items():
            if not isinstance(encoder, Encoder):
                raise TypeError(f"encoders[{modality!r}] must be an Encoder "
                                f"(towers.encoders.build_encoder), got {encoder!r}")
        feature_dropout = arguments.mapping("feature_dropout", feature_dropout,
                                            "modality → dropout rate")
        arguments.known("feature_dropout", feature_dropout, self.modalities)
        for modality, value in feature_dropout.items():
            arguments.rate(f"feature_dropout[{modality!r}]", value)
        arguments.rate("dropout", dropout)
        arguments.rate("modality_dropout", modality_dropout)
        self.projection_hidden = arguments.widths("projection_hidden", projection_hidden)
        self.fusion_mode = fusion
        self.num_items = num_items
        self.dropout = dropout
        self.feature_dropout = feature_dropout
        self.feature_dropout_shared = bool(feature_dropout_shared)
        self.projections = {m: ModalityProjection(dim, projection_hidden, dropout,
                                                  feature_dropout.get(m, 0.0),
                                                  training_precision=training_precision,
                                                  feature_dropout_shared=feature_dropout_shared,
                                                  name=f"{m}_projection")
                            for m in self.modalities}
        self.fusion = MaskedFusion(fusion, name="fusion") if self.modalities else None
        self.modality_dropout = modality_dropout
        self.id_dropout = arguments.rate("id_dropout", id_dropout)
        self.noise = Noise()
        self.id_embedding = None
        if num_items is not None:
            init = "zeros" if self.modalities else "random_normal"
            self.id_embedding = tf.keras.layers.Embedding(num_items, dim,
                                                          embeddings_initializer=init,
                                                          name="item_id_embedding")
        self.linear_cf = linear_cf
        self.serving_mix = None
        if len(self.modalities) > 1:
            self.serving_mix = self.add_weight(name="serving_mix", shape=[len(self.modalities)],
                                               initializer="zeros", trainable=False)

    def get_config(self):
        """Everything but the weights (KerasHub's contract): ``from_config`` builds a tower
        whose ``set_weights(original.get_weights())`` gives the same outputs. In-tower encoders
        and the linear-CF part are nested as their own configs."""
        return {**super().get_config(), "modalities": list(self.modalities), "dim": self.dim,
                "encoders": {m: e.get_config() for m, e in self.encoders.items()},
                "projection_hidden": list(self.projection_hidden), "fusion": self.fusion_mode,
                "num_items": self.num_items, "id_dropout": self.id_dropout,
                "modality_dropout": self.modality_dropout, "dropout": self.dropout,
                "feature_dropout": dict(self.feature_dropout),
                "feature_dropout_shared": self.feature_dropout_shared,
                "training_precision": self.training_precision,
                "linear_cf": None if self.linear_cf is None else self.linear_cf.get_config()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoders"] = {m: Encoder.from_config(c)
                              for m, c in (config.get("encoders") or {}).items()}
        if config.get("linear_cf") is not None:
            config["linear_cf"] = LinearCF.from_config(config["linear_cf"])
        return cls(**config)

    def project(self, modality: str, content, training=False):
        """Content as the table stores it (features, or raw if fine-tuned) → [B, d]."""
        if modality in self.encoders:
            content = self.encoders[modality](content, training=training)
        return self.projections[modality](content, training=training)

    def modality_embeddings(self, content: Mapping[str, tf.Tensor], training=False):
        """Projected ``[B, M, d]`` embeddings and the ``[B, M]`` presence mask.

        ``content[m + "_standardized"]``, where present, is modality m's features already
        standardised (``standardized_content``) and is projected in place of ``content[m]``.
        """
        embeddings = tf.stack([
            self.projections[m].project_standardized(content[f"{m}_standardized"], training)
            if f"{m}_standardized" in content else self.project(m, content[m], training)
            for m in self.modalities], axis=1)
        mask = tf.stack([tf.cast(content[f"{m}_mask"], tf.float32) for m in self.modalities],
                        axis=1)
        return embeddings, mask

    def standardized_content(self, content: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """``content`` plus, for each modality fed frozen features (no encoder in the tower),
        ``m + "_standardized"``: the projection's LayerNorm standardisation of them. For a
        fixed set of items (the full softmax's candidates) it is the same every step."""
        out = dict(content)
        for m in self.modalities:
            if m not in self.encoders and isinstance(content.get(m), tf.Tensor) \
                    and content[m].shape.rank == 2 and content[m].dtype.is_floating:
                out[f"{m}_standardized"] = self.projections[m].standardize(content[m])
        return out

    def fuse(self, embeddings, mask, item_index=None, training=False):
        """Masked fusion (+ item-id embedding, hidden at rate ``id_dropout`` in training) →
        L2-normalised item embedding."""
        parts = []
        if self.modalities:
            parts.append(self.fusion(embeddings, mask))
        if self.id_embedding is not None and item_index is not None:
            ids = self.id_embedding(item_index)
            if training and self.id_dropout > 0 and self.modalities:
                keep = self.noise.uniform(tf.shape(ids)[:1]) >= self.id_dropout
                ids = ids * tf.cast(keep, ids.dtype)[:, None]
            parts.append(ids)
        return tf.math.l2_normalize(tf.add_n(parts), axis=-1)

    def single_modality(self, embeddings, position: int):
        """The embedding an item gets from modality ``position`` alone (no id embedding)."""
        one = tf.one_hot(tf.fill(tf.shape(embeddings)[:1], position), len(self.modalities))
        return self.fuse(embeddings * one[..., None], one)

    def single_modalities(self, embeddings) -> list[tf.Tensor]:
        """``single_modality`` for every modality (``[B, d]`` each), from one
        ``MaskedFusion.alone`` call: the alignment loss needs all of them every step."""
        return tf.unstack(tf.math.l2_normalize(self.fusion.alone(embeddings), axis=-1))

    def call(self, content: Mapping[str, tf.Tensor], training=False, hidden_modalities=()):
        """Item embeddings; ``hidden_modalities`` are treated as missing (for ablations).
        A lone string is refused (its characters are not modality names)."""
        arguments.known("hidden_modalities",
                        arguments.names("hidden_modalities", hidden_modalities, unique=False),
                        self.modalities)
        fused, embeddings, mask = self.encode(content, training, hidden_modalities)
        if not training and self.serving_mix is not None:
            fused = tf.cond(tf.reduce_sum(self.serving_mix) > 0,
                            lambda: self.mix(embeddings, mask, self.serving_mix), lambda: fused)
        return self.append_linear_cf(fused, content, training)

    def append_linear_cf(self, embedding, content: Mapping[str, tf.Tensor], training=False):
        """``[embedding, linear-CF item part]`` at inference; ``embedding`` alone in training
        steps or without ``linear_cf``."""
        if self.linear_cf is None or training:
            return embedding
        return tf.concat([embedding, self.linear_cf.item(content, content.get("item_index"))],
                         axis=-1)

    def mix(self, embeddings, mask, weights):
        """``Σ_m w_m · single_modality_m`` with ``w`` renormalised over each item's present
        modalities (``[B, d]``; not re-normalised, so an item whose modalities disagree scores
        lower against everyone)."""
        singles = tf.stack(self.single_modalities(embeddings), axis=1)  # [B, M, d]
        w = tf.cast(weights, tf.float32)[None, :] * mask
        w = w / tf.maximum(tf.reduce_sum(w, axis=1, keepdims=True), 1e-9)
        return tf.reduce_sum(singles * w[..., None], axis=1)

    def set_serving_mix(self, weights: Sequence[float] | None) -> None:
        """Serve the weighted mix of single-modality embeddings (None: the fused embedding).

        ``weights``: one finite weight >= 0 per modality, in ``modalities`` order, not all
        zero. ``mix`` renormalises them over each item's present modalities, so a negative
        weight gives embeddings that are not unit length (or flips a modality), and a NaN one,
        like all zeros, would silently serve the fused embedding (``call`` mixes only when the
        sum is > 0). A tower of one modality (or none) has no mix: ``None`` is then a no-op
        (it serves the fused embedding already) and weights are refused.
        """
        if self.serving_mix is None:
            if weights is None:
                return
            raise ValueError(f"set_serving_mix: this tower has {len(self.modalities)} "
                             f"modalit{'y' if len(self.modalities) == 1 else 'ies'} "
                             f"({', '.join(self.modalities) or 'none'}); a serving mix needs "
                             "two or more")
        if weights is None:
            self.serving_mix.assign(np.zeros(len(self.modalities), np.float32))
            return
        if isinstance(weights, str | bytes | Mapping) or not isinstance(weights, Iterable):
            raise TypeError("set_serving_mix takes a sequence of weights, one per modality "
                            f"({', '.join(self.modalities)}), or None; got {weights!r}")
        values = list(weights)
        if len(values) != len(self.modalities):
            raise ValueError(f"set_serving_mix takes {len(self.modalities)} weights, one per "
                             f"modality ({', '.join(self.modalities)}); got {len(values)}: "
                             f"{values!r}")
        values = [arguments.non_negative(f"serving mix weight of {m!r}", w)
                  for m, w in zip(self.modalities, values, strict=True)]
        if not sum(values) > 0:
            raise ValueError(f"set_serving_mix: the weights {values} are all 0; pass None to "
                             "serve the fused embedding")
        self.serving_mix.assign(np.asarray(values, np.float32))

    def encode(self, content: Mapping[str, tf.Tensor], training=False, hidden_modalities=()):
        """(fused ``[B, d]``, projected ``[B, M, d]`` or None, true presence mask or None).

        The returned mask is the data's (before modality dropout), for losses that need to
        know which modalities an item really has.
        """
        embeddings = mask = None
        fusion_mask = None
        if self.modalities:
            embeddings, mask = self.modality_embeddings(content, training)
            if hidden_modalities:
                keep = [0.0 if m in hidden_modalities else 1.0 for m in self.modalities]
                mask = mask * tf.constant(keep)[None, :]
            fusion_mask = mask
            if training and self.modality_dropout > 0:
                fusion_mask = drop_modalities(mask, self.modality_dropout,
                                              self.noise.seed())
        fused = self.fuse(embeddings, fusion_mask, content.get("item_index"), training)
        return fused, embeddings, mask

    def embed_single(self, modality: str, content, training=False):
        """Query-by-content: the embedding of content in one modality, as an item with only it.

        ``content`` is what the table stores for that modality (cached features, or raw content
        when the encoder runs inside the tower).
        """
        arguments.known("embed_single", [modality], self.modalities)  # not a bare KeyError
        projected = self.project(modality, content, training)
        position = self.modalities.index(modality)
        embeddings = tf.stack([projected if m == modality else tf.zeros_like(projected)
                               for m in self.modalities], axis=1)
        single = self.single_modality(embeddings, position)
        if self.linear_cf is None:
            return single
        return tf.pad(single, [[0, 0], [0, self.linear_cf.rank]])
