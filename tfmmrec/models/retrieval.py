"""Models: the two-tower retrieval model (query tower × item tower, in-batch softmax).

Retrieval narrows a large catalogue to a few hundred candidates, so it is trained to score the
true item of each (user, item) pair above every other item in the batch. Items appear in a batch
in proportion to their popularity; the logQ correction subtracts ``log P(item in batch)`` from
each logit so the model learns preference rather than popularity (Yi et al., RecSys 2019).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfmmrec.config import ModelConfig
from tfmmrec.models.alignment import ModalityAlignment
from tfmmrec.towers import arguments
from tfmmrec.towers.item import ItemContentTable, ItemTower
from tfmmrec.towers.noise import Noise
from tfmmrec.towers.precision import check_precision, matmul
from tfmmrec.towers.query import QueryTower

# Defaults live in the config (``model.*``); the model takes them from there, not its own copy.
_DEFAULTS = ModelConfig()


class RetrievalModel(tfrs.Model):
    """A ``tfrs.Model`` whose loss is ``tfrs.tasks.Retrieval`` over fused multimodal items.

    loss = softmax cross-entropy over in-batch candidates of
           ``<q_u, c_i> / temperature − log p_i``   (accidental hits, i.e. a batch item equal
           to the positive, are masked out)

    Top-K metrics are not computed in training steps: over the whole catalogue they dominate
    step time on CPU (~10×). ``tfmmrec.evaluation`` computes them after training instead.

    Args:
      query_tower: user ids (strings) or their vocabulary indices → ``[B, d]``.
      item_tower: item content → ``[B, d]``.
      content_table: item index → item content (cached features or raw).
      item_probability: ``[num_items]`` sampling probability of each item in training batches
        (its share of training interactions); ``None`` disables the logQ correction.
      temperature: logits are divided by it; small values sharpen the softmax over normalised
        embeddings.
      remove_accidental_hits: mask in-batch negatives that are the positive item itself.
      alignment_weight: weight of the cross-modal alignment loss (``models.alignment``); 0
        disables it. It is what makes query-by-content (text/image/audio → items) work well.
      alignment_temperature: initial temperature of the alignment softmax (learned).
      alignment_rows: the alignment loss sees at most this many of the batch's distinct items
        (0: all of them).
      dedupe_items: encode each distinct item of a batch once (must be False on TPUs).
      negatives: ``in_batch`` (the other items of the batch, logQ-corrected) or ``full``: a
        softmax over every candidate item of the catalogue, embedded each step. When the
        catalogue fits in one ``[B, N]`` matmul (thousands of items) this is the exact
        maximum-likelihood objective: rare items are negatives as often as popular ones, and
        there is no sampling bias to correct (logQ is not applied).
      candidate_items: ``[num_items]`` bool, the items the full softmax ranks (default all).
        Items never seen in training (cold start) should be left out: ranking them as
        negatives would teach the content towers that an unseen item is a bad one.
      training_precision: ``float32`` or ``bfloat16``: input precision of the full softmax's
        logits product (and its gradients) in train steps (``towers.precision``); the softmax
        and loss stay float32. The towers take their own setting.
      objective: ``interactions``: one softmax per training interaction, its item left out of
        the query's history; ``users`` (needs ``negatives="full"`` and a history encoder with
        dropout; batches hold ``user_index`` only): one query per user and step, reading the
        history entries a dropout draw kept, scored against the catalogue once, with every
        hidden entry as a target (the multinomial likelihood of Mult-DAE). Each hidden item
        is then an example of the per-interaction objective, so the expected gradient is the
        same; the catalogue product is paid once per user instead of once per interaction.
    """

    def __init__(self, query_tower: QueryTower, item_tower: ItemTower,
                 content_table: ItemContentTable, item_probability: np.ndarray | None = None,
                 temperature: float = _DEFAULTS.temperature,
                 remove_accidental_hits: bool = _DEFAULTS.remove_accidental_hits,
                 alignment_weight: float = 0.0,
                 alignment_temperature: float = _DEFAULTS.alignment_temperature,
                 alignment_rows: int = 0, dedupe_items: bool = True,
                 negatives: str = _DEFAULTS.negatives,
                 candidate_items: np.ndarray | None = None,
                 training_precision: str = "float32", objective: str = "interactions",
                 **kwargs):
        super().__init__(**kwargs)
        self.training_precision = check_precision(training_precision)
        _check_float32_policy()
        _check_parts(query_tower, item_tower, content_table)
        temperature = arguments.positive_float("temperature", temperature)
        alignment_temperature = arguments.positive_float("alignment_temperature",
                                                         alignment_temperature)
        alignment_weight = arguments.non_negative("alignment_weight", alignment_weight)
        if alignment_rows:
            alignment_rows = arguments.positive_int("alignment_rows", alignment_rows)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if objective == "users" and (negatives != "full"
                                     or query_tower.history_encoder is None
                                     or query_tower.history_encoder.dropout <= 0):
            raise ValueError("objective='users' needs negatives='full' and a query tower "
                             "whose history encoder has dropout > 0")
        self.objective = objective
        self.noise = Noise()
        self.query_tower = query_tower
        self.item_tower = item_tower
        self.content_table = content_table
        self.item_probability = None
        if item_probability is not None:
            item_probability = _checked_probability(item_probability,
                                                    catalogue_size(content_table, item_tower))
            self.item_probability = tf.constant(np.maximum(item_probability, 1e-12), tf.float32)
        self.remove_accidental_hits = remove_accidental_hits
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        self.negatives = negatives
        self.temperature = temperature
        self.num_items = self.candidate_index = None
        self._candidate_cache = None
        if negatives == "full":
            size = catalogue_size(content_table, item_tower)
            mask = (np.ones(_num_rows(content_table, item_tower), bool)
                    if candidate_items is None else np.asarray(candidate_items, bool))
            self.num_items = len(mask) if size is None else size
            if mask.shape != (self.num_items,) or not mask.any():
                raise ValueError(f"candidate_items must be {self.num_items} booleans (one per "
                                 f"catalogue item) with at least one True, got shape "
                                 f"{mask.shape}")
            self.candidate_index = tf.constant(np.flatnonzero(mask), tf.int32)
            # Position of each catalogue item among the candidates (−1: not a candidate).
            position = np.full(self.num_items, -1, np.int32)
            position[mask] = np.arange(mask.sum(), dtype=np.int32)
            self.candidate_position = tf.constant(position)
        self.task = tfrs.tasks.Retrieval(temperature=temperature,
                                         remove_accidental_hits=remove_accidental_hits)
        self.alignment_weight = alignment_weight
        self.alignment_rows = alignment_rows
        self.dedupe_items = dedupe_items
        self.alignment = None
        if alignment_weight > 0 and len(item_tower.modalities) > 0:
            self.alignment = ModalityAlignment(item_tower.modalities, alignment_temperature,
                                               name="alignment")
            self.alignment_loss = tf.keras.metrics.Mean(name="alignment_loss")

    def save(self, filepath, *args, **kwargs):
        """Refused with the way that works. The model holds the catalogue's features and is
        rebuilt from its run's config (``get_config`` is empty), so Keras would write a
        ``.keras`` file that cannot be loaded, or fail on its SavedModel trace."""
        raise NotImplementedError(
            f"{type(self).__name__}.save({filepath!r}) is not supported: keep the weights "
            "(model.save_weights, what `tfmmrec train` checkpoints hold) and rebuild with "
            "tfmmrec.restore(run_dir); to serve it, export it (tfmmrec.export_model or "
            "`tfmmrec export`: a SavedModel with its top-k index)")

    def build_from_example(self) -> None:
        """Create all variables now (checkpoint restore and BackupAndRestore need them)."""
        self.item_embeddings(tf.constant([0]))
        self.query_embeddings(tf.constant(["?"]))
        if self.alignment is not None and not self.alignment.built:
            self.alignment.build(None)
        self.built = True

    def train_step(self, inputs):
        return self._with_replica_loss_terms(super().train_step(inputs))

    def test_step(self, inputs):
        return self._with_replica_loss_terms(super().test_step(inputs))

    def loss_terms(self) -> list[tf.keras.metrics.Mean]:
        """The running means of the loss's terms that are logged beside ``loss`` (here the
        alignment term; a subclass adds its own)."""
        return [] if self.alignment is None else [self.alignment_loss]

    def _with_replica_loss_terms(self, logs: dict) -> dict:
        """``logs`` with each of ``loss_terms()`` as this replica's own running mean, so that
        Keras combines the replicas' values as it combines their ``loss`` (a sum over replicas
        with ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy``, the first replica's on
        TPUs): each is that term of the replica's share of the step's loss.

        ``Mean.result()`` (what TFRS logs) is already the mean over every replica, which Keras
        then passes through on one machine but sums over the workers of a cluster: the same
        two replicas logged the mean on one machine and the sum on two. Reading the metric's
        variables in the replica's own context gives its local total and count instead."""
        return {**logs, **{metric.name: tf.math.divide_no_nan(metric.total, metric.count)
                           for metric in self.loss_terms()}}

    def item_embeddings(self, item_index, training=False, hidden_modalities=()):
        """``hidden_modalities`` are treated as missing (robustness measurements)."""
        return self.item_tower(self.content_table(item_index), training=training,
                               hidden_modalities=hidden_modalities)

    @tf.function(reduce_retracing=True)
    def serve_item_embeddings(self, item_index, hidden_modalities=()):
        """Inference-mode item embeddings, traced once per model (batch evaluation/export)."""
        return self.item_embeddings(item_index, training=False,
                                    hidden_modalities=hidden_modalities)

    @tf.function(reduce_retracing=True)
    def serve_query_embeddings(self, user_id):
        """Inference-mode query embeddings of user ids (strings, or integers as pandas reads a
        numeric id column), traced once per model."""
        return self.query_embeddings(as_user_ids(user_id), training=False)

    def query_embeddings(self, user, training=False, exclude=None):
        """``user``: ids (strings) or vocabulary positions (integers, what training batches
        carry as ``user_index``; integer *ids* go through :func:`as_user_ids` first).
        ``exclude``: ``[B]`` items left out of each query's history (training targets)."""
        return self.query_tower(user, item_embedder=self.item_embeddings, training=training,
                                exclude=exclude)

    def compute_loss(self, features, training=False):
        if self.objective == "users":
            return self._hidden_history_loss(user_input(features), training)
        item_index = tf.cast(batch_column(features, "item_index"), tf.int32)
        queries = self.query_embeddings(user_input(features), training=training,
                                        exclude=item_index)
        if self.negatives == "full":
            return self._full_softmax_loss(queries, item_index, training)
        items, fused, scored, position, modality_embeddings, mask = self._encode_batch_items(
            item_index, training)
        candidates = scored if position is None else tf.gather(scored, position)
        probability = None
        if self.item_probability is not None:
            probability = tf.gather(self.item_probability, item_index)
        loss = self.task(
            queries,
            candidates,
            candidate_sampling_probability=probability,
            candidate_ids=item_index if self.remove_accidental_hits else None,
            compute_metrics=False,
        )
        if self.alignment is not None:
            loss += self.alignment_weight * self._alignment_loss(items, fused,
                                                                 modality_embeddings, mask)
        return loss

    def _full_softmax_loss(self, queries, item_index, training):
        """Softmax cross-entropy over every candidate item, summed over the batch (the
        reduction of ``tfrs.tasks.Retrieval``), plus the alignment loss on the candidates.

        loss = Σ_b [ log Σ_{j ∈ candidates} exp(<q_b, c_j> / T) − <q_b, c_{y_b}> / T ]

        A positive that is not a candidate (possible only if ``candidate_items`` leaves out a
        training item) contributes nothing.
        """
        fused, embeddings, mask, scored = self._encode_candidates(training)
        labels = tf.gather(self.candidate_position, item_index)
        valid = labels >= 0
        losses = softmax_losses(queries, scored, tf.maximum(labels, 0), self.temperature,
                                self.training_precision if training else "float32")
        loss = tf.reduce_sum(tf.where(valid, losses, tf.zeros_like(losses)))
        return loss + self._candidate_alignment_loss(fused, embeddings, mask)

    def _hidden_history_loss(self, users, training):
        """``objective="users"``: Σ over the batch's users and their hidden history items of
        the full softmax's cross-entropy (``multinomial_losses``), plus the alignment loss on
        the candidates. Hidden items that are not candidates contribute nothing."""
        queries, targets = self.query_tower.split_history(
            users, item_embedder=self.item_embeddings, training=training)
        fused, embeddings, mask, scored = self._encode_candidates(training)
        targets = tf.gather(targets, self.candidate_index, axis=1)
        losses = multinomial_losses(queries, scored, targets, self.temperature,
                                    self.training_precision if training else "float32")
        return tf.reduce_sum(losses) + self._candidate_alignment_loss(fused, embeddings, mask)

    def _encode_candidates(self, training):
        """The full softmax's candidates: ``(fused, per-modality embeddings, presence mask,
        scored)`` (``scored``: fused with the linear-CF part, what queries score)."""
        content = self._candidate_content() if training else \
            self.content_table(self.candidate_index)
        fused, embeddings, mask = self.item_tower.encode(content, training=training)
        return fused, embeddings, mask, self.item_tower.append_linear_cf(fused, content,
                                                                          training)

    def _candidate_alignment_loss(self, fused, embeddings, mask):
        """The weighted alignment loss over a random sample of the candidates (0 without).

        The candidates are the same on every replica, unlike a batch's items, and the replicas'
        losses are summed (their gradients all-reduced): each replica adds ``1/R`` of the term,
        so R replicas train with the alignment weight one device has, not R times it."""
        if self.alignment is None:
            return 0.0
        rows = self.alignment_rows or tf.shape(self.candidate_index)[0]
        sample = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(self.candidate_index)[0]), self.noise.seed())[:rows]
        return self.alignment_weight * self._alignment_loss(
            tf.gather(self.candidate_index, sample), tf.gather(fused, sample),
            tf.gather(embeddings, sample), tf.gather(mask, sample),
            share=1.0 / replicas_in_sync())

    def _candidate_content(self) -> dict[str, tf.Tensor]:
        """The candidates' content with their frozen features standardised
        (``ItemTower.standardized_content``), computed once, when the train step is first
        traced: the candidates and their features do not change during training, so the step
        neither gathers them nor recomputes LayerNorm statistics over them. Held as tensors the
        step captures, not variables: nothing is added to checkpoints."""
        if self._candidate_cache is None:
            with tf.init_scope():
                content = self.item_tower.standardized_content(
                    self.content_table(self.candidate_index))
                # the raw features are not needed where their standardised copy is
                self._candidate_cache = {key: value for key, value in content.items()
                                         if f"{key}_standardized" not in content}
        return dict(self._candidate_cache)

    def _encode_batch_items(self, item_index, training):
        """Encode each distinct item of the batch once: ``(items [U], fused [U, d], scored
        [U, d (+ k)] (fused with the linear-CF part, what queries score), position [B] of each
        row in ``items`` (None: no dedupe, U = B), per-modality embeddings [U, M, d], presence
        mask [U, M])``.

        Popular items repeat within a batch (about half of a 1,024-row MovieLens batch), so
        encoding distinct items halves the item tower's forward and backward work. ``tf.unique``
        has a data-dependent shape, which TPUs cannot compile: ``dedupe_items=False`` there.
        """
        if not self.dedupe_items:
            position = None
            items = item_index
        else:
            items, position = tf.unique(item_index)
        content = self.content_table(items)
        fused, embeddings, mask = self.item_tower.encode(content, training=training)
        scored = self.item_tower.append_linear_cf(fused, content, training)
        return items, fused, scored, position, embeddings, mask

    def _alignment_loss(self, item_index, fused, modality_embeddings, mask, share=1.0):
        """Alignment over the first ``alignment_rows`` of the batch's items (rows arrive
        shuffled, so these are a random sample): its cost grows with the square of the rows,
        and a few hundred items give the contrastive loss enough negatives. ``share``: the
        part of it this replica adds (``_candidate_alignment_loss``)."""
        rows = self.alignment_rows or tf.shape(item_index)[0]
        embeddings, mask = modality_embeddings[:rows], mask[:rows]
        singles = self.item_tower.single_modalities(embeddings)
        alignment = share * self.alignment(singles, mask, fused[:rows], item_index[:rows])
        self.alignment_loss.update_state(alignment)
        return alignment


NEGATIVES = ("in_batch", "full")
OBJECTIVES = ("interactions", "users")


def softmax_losses(queries: tf.Tensor, candidates: tf.Tensor, labels: tf.Tensor,
                   temperature: float, precision: str = "float32") -> tf.Tensor:
    """Per-row softmax cross-entropy of the logits ``<q_b, c_j> / temperature`` against
    ``labels`` ``[B]`` (``tf.nn.sparse_softmax_cross_entropy_with_logits`` of
    ``matmul(queries, candidates, transpose_b=True) / temperature``), ``[B]``.

    The same values and gradients, with every scaling on the ``[B, d]`` side: the logits'
    gradient ``(softmax − onehot) · upstream / T`` is never formed as a ``[B, N]`` tensor, so
    the ``[B, N]`` division and its gradient and the broadcast multiply by the upstream
    gradient (three passes over the logits, ~10 % of a full-softmax step on ML-100K) go.
    ``precision`` is the products' input precision (``towers.precision``).
    """
    inverse = 1.0 / temperature

    @tf.custom_gradient
    def losses(queries, candidates):
        logits = matmul(queries * inverse, candidates, precision, transpose_b=True)
        values, backprop = _softmax_cross_entropy(logits, labels)

        def grad(upstream):
            scale = upstream[:, None] * inverse  # [B, 1]
            d_queries = matmul(backprop, candidates, precision) * scale
            d_candidates = matmul(backprop, queries * scale, precision, transpose_a=True)
            return d_queries, d_candidates

        return values, grad

    return losses(queries, candidates)


def multinomial_losses(queries: tf.Tensor, candidates: tf.Tensor, targets: tf.Tensor,
                       temperature: float, precision: str = "float32") -> tf.Tensor:
    """Per-row ``Σ_j targets[b, j] · (−log softmax_j(<q_b, c_·> / temperature))``, ``[B]``:
    the softmax cross-entropy of every target of a row against one query (``targets``
    ``[B, N]``, a count or weight per candidate). Equal to summing ``softmax_losses`` over
    one row per target, at the cost of one row.

    ``= n_b · logsumexp(z_b) − <targets_b, z_b>`` with ``n_b = Σ_j targets[b, j]``.
    """
    logits = matmul(queries * (1.0 / temperature), candidates, precision, transpose_b=True)
    return (tf.reduce_sum(targets, axis=1) * tf.reduce_logsumexp(logits, axis=1)
            - tf.reduce_sum(targets * logits, axis=1))


def _softmax_cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits``: per-row losses ``[B]`` and their
    gradient ``softmax − onehot`` ``[B, N]``, from one oneDNN softmax (about 4× less CPU than
    that op's kernel on a 2,048 × 1,682 batch).

    ``log Σ_j exp(z_j − max z) = −log p_argmax`` (the largest logit's probability, ≥ 1/N), so
    the loss ``max z + log Σ_j exp(z_j − max z) − z_label`` cannot underflow however small the
    label's probability is.
    """
    labels = tf.cast(labels, tf.int32)
    probabilities = tf.nn.softmax(logits)
    rows = tf.range(tf.shape(labels)[0])
    label_cells = tf.stack([rows, labels], axis=1)
    top_cells = tf.stack([rows, tf.math.argmax(logits, axis=1, output_type=tf.int32)], axis=1)
    values = (tf.gather_nd(logits, top_cells) - tf.math.log(tf.gather_nd(probabilities, top_cells))
              - tf.gather_nd(logits, label_cells))
    backprop = tf.tensor_scatter_nd_sub(probabilities, label_cells,
                                        tf.ones_like(values))
    return values, backprop


def _check_parts(query_tower, item_tower, content_table) -> None:
    """The towers and table are the classes the model calls, of one embedding width."""
    for name, value, kind in (("query_tower", query_tower, QueryTower),
                              ("item_tower", item_tower, ItemTower),
                              ("content_table", content_table, ItemContentTable)):
        if not isinstance(value, kind):
            raise ValueError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
    if query_tower.dim != item_tower.dim:
        raise ValueError(f"the towers embed into one space: query_tower.dim={query_tower.dim} "
                         f"but item_tower.dim={item_tower.dim}")
    missing = [m for m in item_tower.modalities if m not in content_table.modalities]
    if missing:  # else a KeyError from inside the item tower on the first call
        raise ValueError(f"item_tower embeds {', '.join(missing)} but content_table holds "
                         f"{', '.join(content_table.modalities) or 'no modality'}: build the "
                         "table with every modality of the tower")


def catalogue_size(content_table: ItemContentTable, item_tower: ItemTower) -> int | None:
    """The catalogue's rows (content table, else item-id embedding); None if neither says."""
    try:
        return _num_rows(content_table, item_tower)
    except ValueError:
        return None


def _checked_probability(values, size: int | None) -> np.ndarray:
    """``item_probability`` (logQ correction): one finite probability ≥ 0 per item."""
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or (size is not None and len(values) != size) \
            or not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"item_probability must be one finite value >= 0 per catalogue item "
                         f"({size if size is not None else 'any number of'} items), got shape "
                         f"{values.shape}" + ("" if np.isfinite(values).all() and
                                              not (values < 0).any() else
                                              " with negative or non-finite values"))
    return values


def _num_rows(content_table: ItemContentTable, item_tower: ItemTower) -> int:
    """Catalogue size: the content table's rows, or the item-id embedding's."""
    if content_table.modalities:
        return int(content_table._masks[content_table.modalities[0]].shape[0])
    if item_tower.id_embedding is not None:
        return int(item_tower.id_embedding.input_dim)
    raise ValueError("negatives='full' needs the catalogue size: pass candidate_items")


def _check_float32_policy() -> None:
    """A Keras mixed-precision policy makes the towers' layers compute in float16/bfloat16
    beside float32 feature tables: ``fit`` then failed in the query tower's ``ConcatV2``
    (bfloat16 and float32 inputs). The model's own bfloat16 path is a setting instead."""
    policy = tf.keras.mixed_precision.global_policy().name
    if policy != "float32":
        raise ValueError(
            f"the Keras mixed-precision policy is {policy!r}: tfmmrec's towers compute in "
            "float32 beside float32 feature tables. Set model.training_precision: bfloat16 "
            "(bfloat16 products, float32 variables and losses; training_precision= here) and "
            "keep the policy float32 (tf.keras.mixed_precision.set_global_policy('float32'))")


def user_input(features) -> tf.Tensor:
    """The batch's users: ``user_index`` (vocabulary indices, what the training pipeline feeds)
    or ``user_id`` (what callers outside training pass: strings, or integer ids as pandas reads
    a numeric column, turned into the text the vocabulary holds; read as positions they
    would each answer for another user)."""
    if "user_index" in features:
        return batch_column(features, "user_index")
    return as_user_ids(batch_column(features, "user_id"), "features['user_id']")


def as_user_ids(users, name: str = "user_id") -> tf.Tensor:
    """User ids as the vocabulary holds them (text): integer ids, as pandas reads a numeric
    column, become their text. Read as vocabulary positions, each would answer for another
    user without an error (a review's ids 2..6 did)."""
    users = tf.convert_to_tensor(users)
    if users.dtype.is_integer:
        return tf.strings.as_string(users)
    if users.dtype != tf.string:
        raise ValueError(f"{name} must hold ids (strings, or integers), got {users.dtype.name}")
    return users


def batch_column(features, key: str) -> tf.Tensor:
    """``features[key]`` as a ``[batch]`` tensor, or an error naming the keys a training batch
    holds and the shape it must have (else a KeyError or a shape error from deep in a step)."""
    if not isinstance(features, Mapping):
        raise ValueError(f"a training batch is a dict of features (user_index or user_id, and "
                         f"item_index), got {type(features).__name__}")
    if key not in features:
        raise ValueError(f"a training batch needs {BATCH_KEYS[key]}; it has "
                         f"{', '.join(map(repr, sorted(features))) or 'no keys'}")
    column = tf.convert_to_tensor(features[key])
    message = (f"features[{key!r}] must be a [batch] vector (batch the dataset, one value per "
               "example)")
    if column.shape.rank is None:  # a step Keras retraced with relaxed shapes: checked when run
        with tf.control_dependencies([tf.debugging.assert_rank(column, 1, message=message)]):
            return tf.identity(column)
    if column.shape.rank != 1:
        raise ValueError(f"{message}, got shape {column.shape}")
    return column


BATCH_KEYS = {"user_index": "'user_index' (vocabulary positions) or 'user_id' (ids)",
              "user_id": "'user_index' (vocabulary positions) or 'user_id' (ids)",
              "item_index": "'item_index' (catalogue positions of the positive items)"}


def replicas_in_sync() -> int:
    """The replicas whose losses the step sums (1 outside a strategy's replica context)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync
