"""The public workflow: config → data → towers → model → train → evaluate → export.

``tfmmrec.train(config)``, ``tfmmrec.evaluate(...)``, ``tfmmrec.export_model(...)`` and
``tfmmrec.demo()`` are what the CLI and the notebooks call; nothing here keeps its own defaults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmmrec.config import (
    HEAD_METRICS,
    RELOCATABLE_FIELDS,
    RUNTIME_FIELDS,
    Config,
    check_same_model,
    config_differences,
    content_sections,
    load_config,
    model_sections,
)
from tfmmrec.data.dataset import Dataset, load_dataset
from tfmmrec.data.splits import Split, split_interactions, validation_split
from tfmmrec.errors import (
    ConfigError,
    DataError,
    ExportError,
    TrainingError,
    first_line,
    shown,
)
from tfmmrec.evaluation.embeddings import embed_items, embed_users
from tfmmrec.files import write_json
from tfmmrec.modalities import settings_from_config
from tfmmrec.modalities import specs as modality_specs
from tfmmrec.models.classes import model_class
from tfmmrec.models.ranking import (
    ranking_only_note,
    rating_targets,
    sample_lists,
)
from tfmmrec.models.retrieval import RetrievalModel
from tfmmrec.references import only_this_process
from tfmmrec.towers.cache import (
    CacheStats,
    ModalityContent,
    encode_catalog,
    encode_records,
    load_raw_content,
)
from tfmmrec.towers.cf import LinearCF, empty_weights
from tfmmrec.towers.encoders import Encoder, build_encoder, check_local_weights
from tfmmrec.towers.history import HistoryEncoder, history_table
from tfmmrec.towers.item import ItemContentTable, ItemTower
from tfmmrec.towers.query import QueryTower, user_lookup
from tfmmrec.training.agreement import agree
from tfmmrec.training.checkpoint import load_exactly
from tfmmrec.training.finished_run import (
    CONFIG_FILE,
    MODEL_SPEC_FILE,
    RUN_FILE,
    drop_previous_run,
    previous_run_note,
    read_run_record,
    set_aside_finished_run,
)
from tfmmrec.training.strategy import is_chief, num_workers, strategy_for
from tfmmrec.training.trained_data import (
    FINGERPRINT_KEY,
    check_trained_data,
    data_fingerprint,
    records_data,
)
from tfmmrec.training.trainer import (
    DivergedLoss,
    TrainResult,
    batched_examples,
    batches_per_epoch,
    check_writable,
    dataframe_dataset,  # noqa: F401  (part of this module's API: tests and notebooks use it)
    exclusive_run,
    fit,
    resumed_epochs,
    tfrecord_dataset,
)

logger = logging.getLogger(__name__)

@dataclass(repr=False)
class Workspace:
    """Everything a model is built from: data, split, encoders and each modality's content.

    Its repr is one line of sizes (the dataclass default printed the dataset, item paths and
    feature arrays: 100+ KB for the demo).
    """

    config: Config
    dataset: Dataset
    split: Split
    modalities: tuple[str, ...]
    encoders: dict[str, Encoder]
    contents: dict[str, ModalityContent]
    cache_stats: dict[str, CacheStats] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"Workspace(data={str(self.dataset.root)!r}, {self.dataset.num_items} items, "
                f"{len(self.user_ids)} users, modalities={list(self.modalities)}, "
                f"{self.split.sizes()})")

    @property
    def user_ids(self) -> np.ndarray:
        return self.dataset.user_ids

    def encoder_identities(self) -> dict[str, str]:
        return {m: e.identity() for m, e in self.encoders.items()}

    def with_config(self, config: Config) -> Workspace:
        """This workspace driven by ``config`` (model, training, evaluation and export settings),
        which must agree with it on everything the workspace was prepared from (the data,
        split and encoders); otherwise a ``ConfigError`` names each field and both values.

        ``train``, ``evaluate`` and ``export`` take a config and a workspace; building and
        recording from this one object is what makes it impossible for the two to disagree.
        """
        if config is self.config:
            return self
        check_same_model(self.config, config, "the workspace", sections=content_sections(),
                         hint="prepare a new workspace from this config")
        return dataclasses.replace(self, config=config)


def demo_data_dir(config: Config) -> Path:
    return Path(config.train.output_dir).parent / "demo-data"


def resolve_dataset(config: Config) -> Dataset:
    """The configured folder, or the embedded demo catalogue (generated, no download)."""
    if config.data.path:
        return load_dataset(config.data)
    from tfmmrec.data.demo import build_demo_dataset

    root = build_demo_dataset(demo_data_dir(config), config.data.demo)
    return load_dataset(dataclasses.replace(config.data, path=str(root)))


def load_split(config: Config) -> tuple[Dataset, Split]:
    """The configured data and its split: what ``prepare`` starts from, and what ``restore``
    compares with the run's record before encoding anything."""
    dataset = resolve_dataset(config)
    return dataset, split_interactions(dataset.interactions, config.data.split,
                                       config.data.test_fraction, config.data.seed)


def prepare(config: Config, progress: bool = True, *,
            data: tuple[Dataset, Split] | None = None) -> Workspace:
    """Load and split the data, build encoders, and encode (or cache-load) the catalogue.
    ``data``: the ``load_split(config)`` already made (not loaded twice)."""
    dataset, split = data if data is not None else load_split(config)
    modalities = tuple(m for m in dataset.catalog.modalities if config.tower(m).enabled)
    records = config.train.tfrecords
    if records:  # pre-decoded shards from `tfmmrec prepare`, checked against this config
        from tfmmrec.data.tfrecords import check_compatible, load_manifest

        check_compatible(load_manifest(records), config, dataset, split)
    check_local_weights(config, modalities)
    # every encoder first: one that cannot load stops the run before any catalogue is encoded
    encoders: dict[str, Encoder] = {
        m: build_encoder(m, config.tower(m), list(dataset.catalog.values(m)))
        for m in modalities}
    contents: dict[str, ModalityContent] = {}
    stats: dict[str, CacheStats] = {}
    for modality in modalities:
        tower = config.tower(modality)
        media = settings_from_config(config)
        if tower.trainable:
            contents[modality] = load_raw_content(dataset.catalog, modality, **media)
        elif config.train.features:  # precomputed by `tfmmrec encode` (local or Beam)
            from tfmmrec.towers.features import load_features

            contents[modality], stats[modality] = load_features(
                config.train.features, encoders[modality], dataset)
        elif records:
            contents[modality], stats[modality] = encode_records(
                records, encoders[modality], config.train.resolved_cache_dir,
                batch_size=config.train.encode_batch_size, progress=progress)
        else:
            contents[modality], stats[modality] = encode_catalog(
                dataset.catalog, encoders[modality], config.train.resolved_cache_dir,
                batch_size=config.train.encode_batch_size, progress=progress, **media)
    return Workspace(config, dataset, split, modalities, encoders, contents, stats)


def item_sampling_probability(ws: Workspace) -> np.ndarray:
    """Each item's share of training interactions: P(item in a batch) for the logQ correction."""
    counts = np.bincount(ws.split.train["item_index"].to_numpy(), minlength=ws.dataset.num_items)
    return counts / max(counts.sum(), 1)


def user_history(ws: Workspace) -> np.ndarray | None:
    """``[num_users, H]`` most recent training items per user (−1 padded), in vocabulary order."""
    length = ws.config.model.history_length
    if length == 0:
        return None
    train = ws.split.train
    if "timestamp" in train.columns:
        train = train.sort_values("timestamp", kind="stable")
    recent = train.groupby("user_id")["item_index"].apply(lambda s: s.to_numpy()[-length:])
    history = np.full((len(ws.user_ids), length), -1, np.int64)
    for row, user in enumerate(ws.user_ids):
        items = recent.get(user)
        if items is not None:
            history[row, : len(items)] = items
    return history


def history_encoder(ws: Workspace) -> HistoryEncoder | None:
    """The learned item-based history part of the query (``model.user_history``), or None."""
    model_config = ws.config.model
    if not model_config.user_history:
        return None
    if ws.config.train.strategy == "tpu":
        raise ConfigError("model.user_history reads ragged per-user histories, which the TPU "
                          "step (XLA) was not built or tested for here; set "
                          "model.user_history=false with train.strategy=tpu")
    splits, items, weights = history_table(ws.split.train, ws.user_ids,
                                           model_config.history_max_length,
                                           model_config.history_half_life)
    return HistoryEncoder(ws.dataset.num_items, model_config.embedding_dim, splits, items,
                          weights, dropout=model_config.history_dropout,
                          training_precision=model_config.training_precision, name="history")


def linear_cf(ws: Workspace, fit: bool = True) -> LinearCF | None:
    """The closed-form CF part (``model.linear_cf``), fitted on the workspace's training split
    with its settings chosen on validation, or None. ``fit=False``: zeros of the same shapes,
    for a model whose weights come from a checkpoint next."""
    from tfmmrec.evaluation.baseline_base import check_ease_size
    from tfmmrec.evaluation.content import content_features
    from tfmmrec.evaluation.linear_cf_selection import block_width, choose_linear_cf, foldin_width

    model_config = ws.config.model
    if model_config.linear_cf == "none":
        return None
    if model_config.linear_cf == "auto":
        raise ConfigError("model.linear_cf=auto is resolved to a kind by train's early "
                          "stopping (train.early_stopping: true); build or restore the model "
                          "with the kind it chose (its run's checkpoints/model.yaml)")
    num_items = ws.dataset.num_items
    check_ease_size(num_items, "model.linear_cf (its EASE block)")
    frozen = [m for m in ws.modalities if not ws.config.tower(m).trainable]
    features = present = None
    if frozen:
        features, present = content_features({m: ws.contents[m].values for m in frozen},
                                             {m: ws.contents[m].mask for m in frozen})
    rank = min(model_config.linear_cf_rank, num_items)
    if fit:
        d = ws.config.data
        weights, _ = choose_linear_cf(
            ws.split, ws.user_ids, num_items, rank=rank, l2=model_config.linear_cf_l2,
            alpha=model_config.linear_cf_alpha, features=features, present=present,
            validation_fraction=d.test_fraction, seed=d.seed,
            metric=ws.config.train.early_stopping_metric,
            content=model_config.linear_cf_content, blocks=model_config.linear_cf,
            foldin=model_config.linear_cf_foldin, half_life=model_config.linear_cf_half_life)
    else:
        columns = foldin_width(model_config.linear_cf, rank, model_config.linear_cf_foldin)
        rank = block_width(model_config.linear_cf, rank)
        weights = empty_weights(num_items, rank, 0 if features is None else features.shape[1],
                                kernel=model_config.linear_cf_content == "kernel",
                                foldin_columns=columns)
    return LinearCF(weights, frozen, initial_weight=model_config.linear_cf_weight or 1.0,
                    name="linear_cf")


UNTRAINED_USERS_KEY = "untrained_users"  # run.json: users scored with the unknown user's row


def untrained_users(ws: Workspace) -> list[str]:
    """The users of the vocabulary without a training interaction in ``ws.split`` (test-only
    users, users only ``users.csv`` names): the query tower gives them the unknown user's id
    row, not their own never-trained one. (pandas' strings: numpy's drop trailing NULs.)"""
    users = pd.Index(ws.user_ids).astype(str)
    trained = pd.Index(ws.split.train["user_id"].unique()).astype(str)
    return users[~users.isin(trained)].tolist()


def build_model(ws: Workspace, fit_linear_cf: bool = True) -> RetrievalModel:
    """The retrieval model for a workspace (call inside the strategy scope).
    ``fit_linear_cf=False`` skips the closed-form fit (the weights are restored next)."""
    model_config = ws.config.model
    cf = linear_cf(ws, fit_linear_cf)
    in_tower = {m: e for m, e in ws.encoders.items() if ws.config.tower(m).trainable}
    item_tower = ItemTower(
        ws.modalities, model_config.embedding_dim, encoders=in_tower,
        projection_hidden=model_config.projection_hidden, fusion=model_config.fusion,
        num_items=ws.dataset.num_items if model_config.item_id_embedding or not ws.modalities
        else None,
        id_dropout=model_config.item_id_dropout,
        modality_dropout=model_config.modality_dropout, dropout=model_config.dropout,
        # a modality the dataset has not got has no projection to drop features of
        feature_dropout={m: rate for m, rate in model_config.feature_dropout.items()
                         if m in ws.modalities},
        feature_dropout_shared=model_config.feature_dropout_shared, linear_cf=cf,
        training_precision=model_config.training_precision, name="item_tower")
    users = ws.dataset.users if model_config.user_features else None
    query_tower = QueryTower(
        ws.user_ids, model_config.embedding_dim, users=users,
        feature_columns=ws.dataset.user_feature_columns if users is not None else (),
        history=user_history(ws), id_dropout=model_config.user_id_dropout,
        history_encoder=history_encoder(ws), user_id_embedding=model_config.user_id_embedding,
        linear_cf=cf, untrained_user_ids=untrained_users(ws), name="query_tower")
    table = ItemContentTable({m: c.values for m, c in ws.contents.items()},
                             {m: c.mask for m, c in ws.contents.items()}, name="item_content")
    probability = item_sampling_probability(ws) if model_config.logq_correction else None
    args = (query_tower, item_tower, table, probability)
    kwargs = {"temperature": model_config.temperature,
              "remove_accidental_hits": model_config.remove_accidental_hits,
              "alignment_weight": model_config.alignment_weight,
              "alignment_temperature": model_config.alignment_temperature,
              "alignment_rows": model_config.alignment_rows,
              # tf.unique's data-dependent shape does not compile for TPUs
              "dedupe_items": ws.config.train.strategy != "tpu",
              "negatives": model_config.negatives,
              # cold items (no training interaction) are never negatives of the full softmax
              "candidate_items": item_sampling_probability(ws) > 0,
              "training_precision": model_config.training_precision}
    if model_config.objective != "interactions":  # the ranking models take no objective
        kwargs["objective"] = model_config.objective
    ranking = ws.config.ranking
    cls = model_class(model_config.model_class, ranking.enabled)
    if not ranking.enabled:
        model = cls(*args, **kwargs)
    else:
        model = cls(
            *args, **kwargs, ranking_task=ranking.task, retrieval_weight=ranking.retrieval_weight,
            ranking_weight=ranking.ranking_weight, deep_layers=ranking.deep_layers,
            cross_layers=ranking.cross_layers, cross_projection_dim=ranking.cross_projection_dim,
            negatives_per_positive=ranking.negatives_per_positive,
            num_items=ws.dataset.num_items,
            # a binary head's negatives, like the full softmax's: items seen in training
            negative_items=np.flatnonzero(kwargs["candidate_items"]))
    if ws.config.train.cross_replica_negatives:
        from tfmmrec.models.distributed_negatives import use_cross_replica_negatives

        use_cross_replica_negatives(model)
    return model


class TrainingData(NamedTuple):
    """What one training run reads: ``dataset`` (the batches; for ``trainer.fit``, also a
    function of the first epoch to train giving those of every epoch from there on,
    ``resumable``), and how many ``examples`` and batches (``steps``; None when the data
    decides, e.g. prepared shards) one epoch has."""

    dataset: tf.data.Dataset | Callable[[int], tf.data.Dataset]
    examples: int
    steps: int | None


@dataclass(frozen=True)
class InMemoryExamples:
    """Per-example ``features`` held in memory, not yet batched: ``batches(epochs)`` makes them
    the dataset of the epochs a run trains, which a resumed run knows only once ``fit`` has
    read its backup (``resumable``). ``user_id`` strings become indices when ``user_ids`` is
    given; ``targets``: what an epoch counts as its examples when they are not its rows
    (``user_batches``)."""

    features: dict[str, np.ndarray]
    batch_size: int
    seed: int
    user_ids: np.ndarray | None = None
    targets: int | None = None

    @property
    def rows(self) -> int:
        return len(next(iter(self.features.values())))

    @property
    def examples(self) -> int:
        return self.rows if self.targets is None else self.targets

    @property
    def steps(self) -> int:
        return batches_per_epoch(self.rows, self.batch_size)

    def batches(self, epochs: Sequence[int] | None = None) -> tf.data.Dataset:
        """``trainer.batched_examples`` of the features for ``epochs`` (None: one epoch per
        iteration)."""
        dataset = batched_examples(self.features, self.batch_size, self.seed, epochs=epochs)
        return dataset if self.user_ids is None else with_user_indices(dataset, self.user_ids)


def training_examples(ws: Workspace) -> InMemoryExamples | TrainingData:
    """The training examples the configured model needs: in memory, to be batched for the
    epochs a run trains (``InMemoryExamples``), or prepared shards (``train.tfrecords``),
    streamed endlessly (``TrainingData``, the data deciding its steps).

    The ranking task's ratings are checked here, before any training: a listwise task's must
    be >= 0 and give lists of ``ranking.list_size``; a binary task's are not read (each row
    is a positive), which a rating of 0 or below makes worth a warning."""
    from tfmmrec.models.ranking import (
        interactions_source,
        require_lists,
        require_rated_lists,
        warn_unread_ratings,
    )

    config = ws.config
    train = ws.split.train
    ranking = config.ranking
    source = interactions_source(ws.dataset.root) if ranking.enabled else None
    if ranking.enabled and ranking.task == "listwise":
        if config.train.tfrecords:
            raise ConfigError("train.tfrecords does not apply to ranking.task=listwise (lists are "
                              "sampled in memory); unset train.tfrecords")
        rating_targets(ws.dataset.interactions, "listwise", source)  # test rows too, up front
        users = train["user_id"].astype(str).to_numpy()
        ratings = rating_targets(train, "listwise", source)
        require_lists(users, ranking.list_size)
        lists = sample_lists(users, train["item_index"].to_numpy(), ratings,
                             ranking.list_size, ranking.lists_per_user, config.data.seed)
        require_rated_lists(lists, ranking.list_size)
        return InMemoryExamples(lists, config.train.batch_size, config.train.seed, ws.user_ids)
    if ranking.enabled and ranking.task == "binary":
        warn_unread_ratings(ws.dataset.interactions, source)
    extra = {"rating": rating_targets(train, "regression", source)} \
        if ranking.enabled and ranking.task == "regression" else None
    if config.train.tfrecords:
        columns = ("user_id", "item_index", *(["rating"] if extra else []))
        dataset, count = tfrecord_dataset(config.train.tfrecords, config.train.batch_size,
                                          config.train.seed, columns)
        return TrainingData(with_user_indices(dataset, ws.user_ids), count, None)
    if config.model.objective == "users":
        return user_batches(train, ws.user_ids, config)
    # In memory: user ids become indices once, here, not in every batch.
    features = {"user_index": user_indices(train["user_id"], ws.user_ids),
                "item_index": train["item_index"].to_numpy(np.int32), **(extra or {})}
    return InMemoryExamples(features, config.train.batch_size, config.train.seed)


def training_dataset(ws: Workspace, epochs: Sequence[int] | None = None) -> TrainingData:
    """The training examples the configured model needs, and how many there are.

    ``epochs``: in-memory data is batched for those epochs in a row, each in the order of
    (``train.seed``, epoch) alone (``trainer.batched_examples``); None, one epoch per
    iteration. Prepared shards (``train.tfrecords``) stream endlessly either way."""
    examples = training_examples(ws)
    if isinstance(examples, TrainingData):
        return examples
    return TrainingData(examples.batches(epochs), examples.examples, examples.steps)


def user_batches(train: pd.DataFrame, user_ids, config: Config) -> InMemoryExamples:
    """``model.objective: users``: examples of ``user_index`` only (the model reads each user's
    history from its encoder), counting the expected hidden entries (targets) per epoch.

    An epoch visits every training user ``round(1 / history_dropout)`` times, so each
    interaction is a target about once per epoch, as with the per-interaction objective; a
    batch holds the users whose hidden entries number about ``train.batch_size`` on average,
    so an epoch has about as many steps too.
    """
    rate = config.model.history_dropout
    index = user_indices(train["user_id"], user_ids)
    users = np.unique(index)
    visits = max(1, round(1 / rate))
    per_user = len(train) / len(users) * rate  # hidden entries per user and visit
    batch = int(min(len(users) * visits, max(1, round(config.train.batch_size / per_user))))
    return InMemoryExamples({"user_index": np.tile(users, visits)}, batch, config.train.seed,
                            targets=round(len(train) * visits * rate))


def resumable(ws: Workspace, epochs: int) -> TrainingData:
    """What ``trainer.fit`` reads in a run of ``epochs`` epochs, as a function of the first
    epoch it trains (0, or the one after a resumed run's backup): in memory, the examples
    (gathered once, here) batched for the epochs from there on, so the batches are built once;
    from prepared shards, the stream past the batches of the epochs already trained. That
    stream is a function of ``train.seed`` alone (seeded shuffles, deterministic interleave),
    so a resumed run reads the batches the interrupted one would have read next; skipping
    reads and parses the records it passes over, without training on them. Under a
    multi-worker strategy each worker skips what it read itself (``_past_trained_steps``)."""
    examples = training_examples(ws)
    if isinstance(examples, TrainingData):
        batch_size = ws.config.train.batch_size
        steps = batches_per_epoch(examples.examples, batch_size)
        # an epoch is `steps` full batches of the endless stream (drop_remainder)
        return TrainingData(
            lambda first: _past_trained_steps(examples.dataset, first * steps, batch_size),
            steps * batch_size, steps)
    return TrainingData(lambda first: examples.batches(range(first, epochs)),
                        examples.examples, examples.steps)


def _past_trained_steps(dataset: tf.data.Dataset, trained: int, batch_size: int
                        ) -> tf.data.Dataset:
    """The endless shard stream ``dataset`` (global batches of ``batch_size``) past what this
    worker's replicas read in ``trained`` steps of ``fit``.

    ``experimental_distribute_dataset`` splits every batch this worker's pipeline makes into
    one slice per replica of the cluster (``batch_sizes_for_worker``: W workers, slices of
    ``batch_size / replicas``). With DATA sharding (fewer shards than workers, and every
    single-worker run) each worker keeps its own slices of every global batch: a step reads one
    batch of the stream, so ``trained`` steps are ``trained`` batches. With FILE sharding each
    worker batches its own shards and its replicas read every slice of its batches, W steps
    for one batch: ``trained`` steps are ``trained / W`` of its batches (measured with two
    workers: skipping ``trained`` batches there resumed a run an epoch ahead of where it
    stopped). When ``trained`` is not a multiple of W the worker stopped inside a batch; the
    stream is then cut again at that record (``unbatch``, ``batch``: per-record work, only in
    such a resumed run), which resumes each replica exactly when ``batch_size`` is a multiple
    of the replicas (slices of equal size)."""
    workers = num_workers()
    policy = dataset.options().experimental_distribute.auto_shard_policy
    if workers == 1 or policy != tf.data.experimental.AutoShardPolicy.FILE or not trained:
        return dataset.skip(trained)
    batches, part = divmod(trained, workers)
    dataset = dataset.skip(batches)
    if not part:
        return dataset
    if batch_size % workers:
        logger.warning("train.batch_size=%d is not a multiple of the %d workers: the resumed "
                       "run's batches are cut up to a record away from the interrupted run's",
                       batch_size, workers)
    return dataset.unbatch().skip(part * batch_size // workers).batch(batch_size,
                                                                      drop_remainder=True)


def user_indices(user_ids, vocabulary) -> np.ndarray:
    """``user_lookup(vocabulary)(user_ids)`` computed once in numpy: row i + 1 of the vocabulary,
    0 for an unknown id (the query tower's out-of-vocabulary row)."""
    positions = pd.Index([str(u) for u in vocabulary]).get_indexer(
        np.asarray(user_ids).astype(str))
    return (positions + 1).astype(np.int64)


def with_user_indices(dataset: tf.data.Dataset, user_ids) -> tf.data.Dataset:
    """Replace each batch's ``user_id`` strings by ``user_index`` on the host, in ``tf.data``:
    the train step then has no string op (TPUs need that; CPUs and GPUs run it faster)."""
    lookup = user_lookup(user_ids)

    def to_index(features):
        features = dict(features)
        features["user_index"] = lookup(features.pop("user_id"))
        return features

    return dataset.map(to_index, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


def train(config: Config | str | os.PathLike | None = None, *, workspace: Workspace | None = None,
          callbacks=(), progress: bool = True) -> TrainResult:
    """Train a retrieval model as the config says; resumes an interrupted run in the same dir.
    Over a finished run it trains from scratch, keeping the finished one restorable in
    ``<output_dir>/previous/`` until the new one finishes (``training.finished_run``).

    ``config``: a ``Config``, a YAML path, a mapping of sections (``{"train": {"epochs": 3}}``)
    or None (the demo); for overrides, ``tfmmrec.load_config(path, ["train.epochs=3"])``.

    Epochs: with ``train.early_stopping``, ``train.epochs`` is a cap; the final model trains
    on the whole training split for the count chosen on validation. ``result.epochs_configured``
    is ``train.epochs`` (what ``result.workspace.config`` and the run's ``config.yaml`` both
    say), ``result.epochs_chosen`` the chosen count (also ``run.json``'s
    ``early_stopping.best_epoch``), ``result.epochs_run`` the epochs this call trained.

    Progress: ``progress`` (default True) reports the catalogue encoding, a bar on a terminal;
    the per-epoch lines (``train.verbose: 1``) and, elsewhere, the encoding's periodic lines
    go to the ``tfmmrec`` logger at INFO, which Python shows only once a handler is set up
    (``tfmmrec train`` sets one up; in Python, ``tfmmrec.show_progress()``, or
    ``logging.basicConfig()`` and ``logging.getLogger("tfmmrec").setLevel(logging.INFO)``).
    ``train.verbose: 2`` prints Keras' own progress bar instead; ``progress=False`` with
    ``train.verbose: 0`` is silent.
    """
    config = load_config(config)
    check_writable(Path(config.train.output_dir))  # before hours of encoding, not after
    if workspace is None:
        check_writable(config.train.resolved_cache_dir, "train.cache_dir")
    # First: a multi-worker strategy must exist before TensorFlow runs any op in the process.
    strategy = strategy_for(config.train)
    # the chief writes the run; other workers of a cluster share its folder
    with exclusive_run(Path(config.train.output_dir)) if is_chief(strategy) \
            else contextlib.nullcontext(), _named_shard_damage(config.train.tfrecords):
        try:
            return _train(config, strategy, workspace, callbacks, progress)
        except DivergedLoss as exc:
            if not is_chief(strategy):
                raise
            # its backups would only resume the divergence, and refuse the lower learning rate
            # the message advises (an interrupted run resumes only with its own settings)
            _drop_resume_state(Path(config.train.output_dir))
            raise DivergedLoss(f"{exc}; the run's backups were removed, so the next run starts "
                               "afresh with the settings it is given") from None


def _drop_resume_state(output: Path) -> None:
    """What an interrupted run resumes from: the final fit's backup, and each selection step's
    folder (its backups, figures and choice)."""
    shutil.rmtree(output / "backup", ignore_errors=True)
    for step in SELECTION_STEPS:
        shutil.rmtree(output / step, ignore_errors=True)


@contextlib.contextmanager
def _named_shard_damage(records: str | None):
    """A prepared shard found damaged while training reads it (the manifest's sizes and
    checksums are checked before, ``data.tfrecords``; a file can still change under a run) is
    one line naming ``train.tfrecords`` and the remedy, not TensorFlow's reader traceback."""
    try:
        yield
    except tf.errors.DataLossError as error:
        if not records:
            raise
        raise DataError(f"train.tfrecords={records}: a shard could not be read while training "
                        f"({first_line(error)}): run `tfmmrec prepare` again (it rewrites "
                        "damaged shards); the run resumes from its last backup") from None


# train.* fields that set the course of a run: an interrupted run resumes only with the values
# it started with (changed, the model would follow no configuration).
RESUME_FIELDS = ("epochs", "batch_size", "learning_rate", "optimizer", "learning_rate_scaling",
                 "cross_replica_negatives", "seed", "early_stopping", "early_stopping_metric",
                 "early_stopping_patience", "validation_carves", "early_stopping_smoothing")


def check_same_course(started: Config, requested: Config, output: Path) -> None:
    """Refuse to resume the interrupted run in ``output`` with other ``RESUME_FIELDS``."""
    differences = [(name, old, new) for name, old, new
                   in config_differences(started, requested, ("train",))
                   if name.removeprefix("train.") in RESUME_FIELDS]
    if differences:
        fields = "; ".join(f"{name}: {old!r} when it started, {new!r} requested"
                           for name, old, new in differences)
        raise ConfigError(f"{fields}. The interrupted run {output} resumes only with the "
                          "training settings it started with: drop those overrides, or "
                          "choose another train.output_dir to train anew")


def _train(config: Config, strategy: tf.distribute.Strategy, workspace: Workspace | None,
           callbacks, progress: bool) -> TrainResult:
    """``train`` once the run's folder is this process's (``trainer.exclusive_run``)."""
    # every worker of a cluster, before any of them loads data or writes the run: same config and
    # the same backup to resume from, or one line on each (nothing under one process)
    agree(config, strategy, RESUME_FIELDS)
    check_linear_cf_choices(config)
    _check_model_class(config)
    tf.keras.utils.set_random_seed(config.train.seed)
    ws = workspace.with_config(config) if workspace is not None else \
        prepare(config, progress=progress)
    # Again after preparing, which draws from the global generators: the model's weights and
    # dropout draws are then the same whether this call prepared the data (`tfmmrec train`) or
    # was given it (`tfmmrec demo`, notebooks).
    tf.keras.utils.set_random_seed(config.train.seed)
    if len(ws.split.train) < 2:
        raise DataError("fewer than 2 training interactions after the split: nothing to train")
    # as prepared, before training: a trainable encoder is the item tower's own, so after
    # training its identity would be its fine-tuned weights', which a restore (building the
    # encoder afresh, then loading the checkpoint into it) could never match
    encoders = ws.encoder_identities()
    output = Path(config.train.output_dir)
    chief = is_chief(strategy)
    spec = output / "checkpoints" / MODEL_SPEC_FILE
    resuming = spec.is_file() and interrupted_run(output)
    if resuming:
        check_same_model(load_config(spec), resolved_linear_cf(config, load_config(spec)),
                         f"the interrupted run {output}",
                         hint="resume it with the config it started with, or choose another "
                              "train.output_dir")
        if (output / CONFIG_FILE).is_file():
            check_same_course(load_config(output / CONFIG_FILE), config, output)
    elif chief:  # a new run: nothing of an earlier one may stand for it
        _set_aside_finished_run(output)
        # until this run writes its own (when it finishes), no checkpoint may stand for it:
        # also one left by an attempt that died between its final checkpoint and its record
        for stale in [*(output / "checkpoints").glob("latest.*"), *_choices(output)]:
            stale.unlink()
    if chief:  # before the first checkpoint: every checkpoint of the run carries its model
        config.to_yaml(output / CONFIG_FILE)
        config.to_yaml(output / "checkpoints" / MODEL_SPEC_FILE, sections=model_sections())
    validation = None
    chosen = []
    # Each step (the selections, the final fit) starts from the seed: a resumed run skips the
    # steps it had finished (their choices are on disk), and a step that started from the
    # generators' state after the ones before it then drew other weights and dropout than in
    # an uninterrupted run (a review: the same choices, 23 of 30 variables different).
    if config.train.early_stopping:
        tf.keras.utils.set_random_seed(config.train.seed)
        validation = _choice(output / "early-stopping", resuming, chief,
                             lambda: select_epochs(ws, strategy, output / "early-stopping"))
        chosen = [f"model.linear_cf={validation['linear_cf']}"] \
            if config.model.linear_cf == "auto" else []
    selection = None
    if config.model.fusion_selection == "validation" and len(ws.modalities) > 1:
        # after early stopping: an `auto` CF kind is resolved, and the mix is chosen for it
        tf.keras.utils.set_random_seed(config.train.seed)
        selection = _choice(output / "fusion-selection", resuming, chief,
                            lambda: select_serving_mix(ws, strategy, output / "fusion-selection",
                                                       chosen))
    fit_config = config.train
    if config.train.early_stopping:
        if chosen:  # the model is built with the chosen CF kind: the workspace says so
            config = load_config(config, chosen)
            ws = dataclasses.replace(ws, config=config)
            if chief:  # the checkpoints hold the chosen kind: restore rebuilds it
                config.to_yaml(spec, sections=model_sections())
        # Only the final fit runs the chosen epochs; the workspace keeps train.epochs as
        # configured (the cap), as config.yaml and restore's workspace do.
        fit_config = load_config(config, [f"train.epochs={validation['best_epoch']}"]).train
    tf.keras.utils.set_random_seed(config.train.seed)
    data = resumable(ws, fit_config.epochs)
    result = fit(lambda: build_model(ws), data.dataset, data.examples, fit_config, strategy,
                 callbacks, dataset_fn=lambda: training_dataset(ws)[0],
                 steps_per_epoch=data.steps)
    result.workspace = ws
    result.epochs_configured = config.train.epochs
    result.epochs_chosen = validation["best_epoch"] if validation is not None else None
    if not chief:  # the chief records the run; other workers only train
        return result
    if selection is not None:
        weights = selection["weights"]
        result.model.item_tower.set_serving_mix(
            None if weights is None else [weights[m] for m in ws.modalities])
    if validation is not None and "linear_cf_weight" in validation:
        result.model.query_tower.linear_cf.set_weight(validation["linear_cf_weight"])
    if selection is not None or (validation or {}).get("linear_cf_weight") is not None:
        result.model.save_weights(str(result.checkpoint))  # chosen values are model weights
    write_json({
        "encoders": encoders,
        "modalities": list(ws.modalities),
        "num_items": ws.dataset.num_items,
        "num_users": len(ws.user_ids),
        # what restore checks before evaluating or exporting (training.trained_data)
        FINGERPRINT_KEY: data_fingerprint(ws.dataset, ws.split),
        "checkpoint": str(result.checkpoint),
        "examples_per_second": result.examples_per_second,
        "history": result.history,
        # the epochs (1-based) ``history`` covers: after a resume, the later ones only; a
        # caller's callback may have stopped before the last
        "history_epochs": result.history_epochs,
        # users scored with the unknown user's id row (no training interaction); a run
        # recorded without this key predates that rule (``_note_untrained_users``)
        UNTRAINED_USERS_KEY: len(result.model.query_tower.untrained_user_ids),
        **({"fusion_selection": selection} if selection is not None else {}),
        **({"early_stopping": validation} if validation is not None else {}),
        **linear_cf_record(result.model),
    }, output / RUN_FILE)
    drop_previous_run(output)  # this run finished: the one it replaced goes
    for done in _choices(output):  # recorded in run.json; no later run may resume from them
        done.unlink()
    return result


CHOICE_FILE = "chosen.json"


def interrupted_run(output: Path) -> bool:
    """Whether ``output`` holds a run that stopped before its end: a backup of its final fit
    or of a selection step (early stopping and its carves, fusion selection) holds files,
    early stopping kept the figures of the epochs it scored, or a step's choice is recorded
    (``_choice``). Such a run resumes, and only with the model and course it started with;
    one interrupted inside a selection step was taken for a new run and trained on with
    whatever the new command said."""
    steps = [output / step for step in SELECTION_STEPS]
    backups = [output / "backup", *(b for step in steps for b in step.glob("**/backup"))]
    return (any(any(b.glob("*")) for b in backups if b.is_dir())
            or any(f for step in steps for f in step.glob(f"**/{VALIDATION_STATE}"))
            or any(_choices(output)))


SELECTION_STEPS = ("early-stopping", "fusion-selection")


def _choices(output: Path) -> list[Path]:
    return [output / step / CHOICE_FILE for step in SELECTION_STEPS
            if (output / step / CHOICE_FILE).is_file()]


def _choice(folder: Path, resuming: bool, chief: bool, select: Callable[[], dict]) -> dict:
    """A selection step's choice: the one it made before this run was interrupted (kept in
    ``folder/chosen.json`` until the run finishes), else ``select()``'s, kept so. A run killed
    in its final fit redid every selection epoch, and could choose another epoch count than
    its backup was trained for. Under several workers each worker selects again (only the
    chief's files are kept, so the others would have no choice to read)."""
    from tfmmrec.data.tfrecords import read_json

    path = folder / CHOICE_FILE
    # a damaged file reads as none (the step selects again)
    kept = read_json(path) if resuming and path.is_file() and num_workers() == 1 else None
    if kept is not None:
        logger.info("%s: the choice made before the interruption (%s)", folder.name, path)
        return kept
    choice = select()
    if chief:
        write_json(choice, path)
    return choice


def check_linear_cf_choices(config: Config) -> None:
    """The linear-CF settings that only early stopping can choose need it on: refused before
    the data is prepared and before a finished run in the folder is set aside."""
    if config.model.linear_cf == "auto" and not config.train.early_stopping:
        raise ConfigError("model.linear_cf=auto chooses the CF kind on validation, which "
                          "train.early_stopping does: enable it or set model.linear_cf (e.g. "
                          "ease)")
    if (config.model.linear_cf != "none" and not config.model.linear_cf_weight
            and not config.train.early_stopping):
        raise ConfigError("model.linear_cf_weight=0 means 'choose it on validation', which "
                          "train.early_stopping does: enable it or set the weight (e.g. 1)")


def _set_aside_finished_run(output: Path) -> None:
    """Training again in a finished run's directory starts from scratch (only an interrupted
    run resumes). The old run moves to ``previous/`` (``training.finished_run``), so neither
    its checkpoint, record nor evaluation can be read as describing the new run, yet a new
    run that fails or is interrupted leaves it restorable; the new run deletes it when it
    finishes."""
    had_run = (output / RUN_FILE).is_file()
    previous = set_aside_finished_run(output)
    if had_run and previous is not None:
        logger.info("%s holds a finished run: training it again from scratch. The finished run "
                    "is kept in %s until this one finishes (choose another train.output_dir to "
                    "keep both)", output, previous)


def linear_cf_record(model: RetrievalModel) -> dict:
    """What the closed-form CF part chose on validation that a reader of ``run.json`` needs
    (the rest is in the log): its history recency half-life."""
    cf = model.query_tower.linear_cf
    return {} if cf is None else {"linear_cf_half_life": float(cf.half_life.numpy())}


def select_epochs(ws: Workspace, strategy: tf.distribute.Strategy, output: Path) -> dict:
    """Early stopping: train on a validation split of the training data, score
    ``train.early_stopping_metric`` after every epoch, stop after ``early_stopping_patience``
    epochs without improvement, and return the best epoch with the validation curve.

    With ``train.validation_carves`` > 1, more carves (seeds ``data.seed + k``, training seeds
    ``train.seed + k``) train for as many epochs as the first ran, and the (epoch, CF kind,
    CF weight) is chosen on the carves' mean (``training.validation.choose_on_carves``), with
    ``train.early_stopping_smoothing`` epochs on each side averaged into each epoch's figure."""
    from tfmmrec.training.validation import choose_on_carves

    config = load_config(ws.config, [f"train.output_dir={output}", "train.early_stopping=false",
                                     "model.fusion_selection=none"])
    metric = config.train.early_stopping_metric
    carves = config.train.validation_carves
    monitors = train_validation_carves(ws, config, strategy, output, carves)
    chosen = choose_on_carves(monitors, metric, config.train.early_stopping_smoothing)
    logger.info("early stopping: best epoch %d of %d (validation %s %.4f%s)", chosen["epoch"],
                len(chosen["curve"]), metric, chosen["metrics"][metric],
                f", mean of {carves} carves" if carves > 1 else "")
    if chosen["weight"] is not None:
        logger.info("early stopping: linear CF weight %g", chosen["weight"])
    auto = {}
    if chosen["kind"] is not None:  # every kind's best (epoch, weight) on validation
        auto = {"linear_cf": chosen["kind"], "linear_cf_validation": chosen["per_kind"]}
        logger.info("early stopping: linear CF %s (validation %s: %s)", auto["linear_cf"],
                    metric, ", ".join(f"{k} {v:.4f}"
                                      for k, v in auto["linear_cf_validation"].items()))
    return {"metric": metric, "best_epoch": chosen["epoch"], "best": chosen["metrics"][metric],
            **({"linear_cf_weight": chosen["weight"]} if chosen["weight"] is not None else {}),
            **auto,
            "validation_interactions": len(monitors[0].split.test),
            **({"carve_interactions": [len(m.split.test) for m in monitors]}
               if carves > 1 else {}),
            "curve": chosen["curve"],
            # the epochs of the curve (a resumed run reads back its backup's epochs)
            "curve_epochs": chosen["epochs"],
            # every metric of the chosen (epoch, kind, weight) on validation (NDCG, TFRS's
            # top-K accuracy…), the carves' mean
            "best_metrics": chosen["metrics"],
            **({"carves": carves,
                "carve_curves": [[m.scores[m.epochs.index(e)][chosen["kind"], chosen["weight"]]
                                  [metric] for e in chosen["epochs"]] for m in monitors]}
               if carves > 1 else {})}


def train_validation_carves(ws: Workspace, config: Config, strategy: tf.distribute.Strategy,
                            output: Path, carves: int) -> list:
    """Train ``config`` (early stopping off) on ``carves`` validation carves of the training
    split, and return their ``ValidationMetrics`` monitors: the first in ``output`` with
    ``train.early_stopping_patience``, carve ``k`` in ``output/carve-k`` (seeds
    ``data.seed + k``, ``train.seed + k``) for as many epochs as the first ran."""
    if is_chief(strategy) and not any((output / "backup").glob("*")):
        # the first carve starts over, and the later carves' epochs follow from it: a later
        # carve left by an interrupted selection must not resume with a stale epoch count
        import shutil

        for stale in output.glob("carve-*"):
            shutil.rmtree(stale)
    monitors = [_train_carve(ws, config, strategy, output, 0)]
    if not monitors[0].history:
        raise TrainingError(f"early stopping: no validation epoch ran (is {output} a finished "
                            "run? delete it to re-select)")
    for k in range(1, carves):
        carve = load_config(config, [f"train.output_dir={output / f'carve-{k}'}",
                                     f"train.epochs={max(monitors[0].epochs)}",
                                     f"train.seed={config.train.seed + k}"])
        monitors.append(_train_carve(ws, carve, strategy, output / f"carve-{k}", k))
    return monitors


def _train_carve(ws: Workspace, config: Config, strategy: tf.distribute.Strategy,
                 output: Path, carve: int):
    """Train ``config`` on validation carve ``carve`` (seed ``data.seed + carve``) of the
    training split with a ``ValidationMetrics`` monitor, and return the monitor."""
    from tfmmrec.evaluation.linear_cf_selection import AUTO_BLOCKS, block_width
    from tfmmrec.training.validation import ValidationMetrics

    d = config.data
    validation = validation_split(ws.split, d.test_fraction, d.seed + carve)
    inner = dataclasses.replace(ws, config=config, split=validation)
    logger.info("early stopping%s: training on %d of the %d training interactions, validating "
                "on %d", f" (carve {carve + 1})" if carve else "", len(validation.train),
                len(ws.split.train), len(validation.test))
    metric = config.train.early_stopping_metric
    at = metric.partition("@")[2]  # a ranking head's metric (rmse…) has no cut-off
    ks = sorted({*config.eval.ks, *([int(at)] if at else [])})
    cf_rank, kinds, auto = 0, None, False
    if config.model.linear_cf != "none":  # its weight is chosen here too (1 while validating)
        auto = config.model.linear_cf == "auto"  # the towers train with the first candidate
        config = load_config(config, ["model.linear_cf_weight=1",
                                      *([f"model.linear_cf={AUTO_BLOCKS[0]}"] if auto else [])])
        inner = dataclasses.replace(inner, config=config)
        cf_rank = block_width(config.model.linear_cf,
                              min(config.model.linear_cf_rank, ws.dataset.num_items))

    def embed(model):
        return (embed_users(model, ws.user_ids, config.eval.batch_size),
                embed_items(model, ws.dataset.num_items, config.eval.batch_size))

    if carve:  # the first carve runs on the seed its caller set, as a single carve always did
        tf.keras.utils.set_random_seed(config.train.seed)
    if cf_rank and auto:  # the other candidates' CF columns: closed-form, fitted once here
        kinds = {AUTO_BLOCKS[0]: None}
        for kind in AUTO_BLOCKS[1:]:
            other = dataclasses.replace(inner, config=load_config(
                config, [f"model.linear_cf={kind}"]))
            with strategy.scope():
                users, items = embed(build_model(other))
            kinds[kind] = (users[:, -cf_rank:], items[:, -cf_rank:])
        # as if never built: the towers then start as a run of the first kind alone would, so
        # each kind's figure is what that kind's own run scores on this carve
        tf.keras.utils.set_random_seed(config.train.seed)
    head_metrics = None
    if metric in HEAD_METRICS:  # the ranking head's own figures on the validation carve
        from tfmmrec.evaluation.ranking import evaluate_ranking_head

        def head_metrics(model):
            return evaluate_ranking_head(model, inner)

    monitor = ValidationMetrics(
        validation, ws.user_ids, ws.dataset.num_items, metric,
        config.train.early_stopping_patience if not carve else 0, ks, embed,
        linear_cf_rank=cf_rank, linear_cf_kinds=kinds, head_metrics=head_metrics,
        # one worker: every worker must choose alike, and only the chief's files are kept
        state_file=output / VALIDATION_STATE if num_workers() == 1 else None,
        resumed_after=resumed_epochs(output / "backup"))
    data = resumable(inner, config.train.epochs)
    fit(lambda: build_model(inner), data.dataset, data.examples, config.train, strategy,
        [monitor], steps_per_epoch=data.steps)
    return monitor


def select_serving_mix(ws: Workspace, strategy: tf.distribute.Strategy, output: Path,
                       overrides: list[str] = ()) -> dict:
    """Train on a validation split of the training data (same split kind), and choose the
    serving embedding there (``evaluation.fusion_selection``). Resumable like any run.
    ``overrides``: what early stopping resolved for the run (``model.linear_cf=<kind>`` when
    the config says ``auto``), so the mix is chosen for the model that is served."""
    from tfmmrec.evaluation.fusion_selection import choose_serving_mix

    config = load_config(ws.config, [f"train.output_dir={output}", "model.fusion_selection=none",
                                     *overrides])
    d = config.data
    validation = validation_split(ws.split, d.test_fraction, d.seed)
    inner = dataclasses.replace(ws, config=config, split=validation)
    logger.info("fusion selection: training on %d of the %d training interactions",
                len(validation.train), len(ws.split.train))
    data = resumable(inner, config.train.epochs)
    model = fit(lambda: build_model(inner), data.dataset, data.examples, config.train, strategy,
                steps_per_epoch=data.steps).model
    users = embed_users(model, ws.user_ids, config.eval.batch_size)
    fused = embed_items(model, ws.dataset.num_items, config.eval.batch_size)

    def mix(weights):  # through the tower's own serving path: exactly what would be served
        model.item_tower.set_serving_mix(weights)
        return embed_items(model, ws.dataset.num_items, config.eval.batch_size)

    metric = config.model.fusion_selection_metric
    weights, scores = choose_serving_mix(users, fused, mix, validation, ws.user_ids,
                                         len(ws.modalities), metric, config.eval.ks)
    chosen = "the fused embedding" if weights is None else ", ".join(
        f"{m} {w:g}" for m, w in zip(ws.modalities, weights, strict=True))
    logger.info("fusion selection: serving %s (validation %s %.4f; fused %.4f)", chosen,
                metric, max(scores.values()), scores["fused"])
    return {"weights": None if weights is None else dict(zip(ws.modalities, weights,
                                                              strict=True)),
            "metric": metric, "validation_scores": scores,
            "linear_cf": config.model.linear_cf}


def restore(run_dir: str | os.PathLike | None = None,
            config: Config | str | os.PathLike | None = None, *,
            checkpoint: str | os.PathLike | None = None,
            workspace: Workspace | None = None) -> tuple[RetrievalModel, Workspace]:
    """Rebuild the model a run trained and load its weights: ``(model, workspace)``.

    The model is built from the model-defining config saved beside the checkpoint
    (``checkpoints/model.yaml``; ``config.model_sections()``), never from a caller's guess, and
    every checkpoint value must land in a variable of the same shape (``TrainingError`` naming
    the ones that do not). ``config`` supplies the run-time settings (``eval``, ``export``,
    ``train.cache_dir``…; default: the run's own ``config.yaml``); if it changes a
    model-defining field (``model.fusion``, ``model.embedding_dim``, a tower, the data or its
    split), a ``ConfigError`` names the field and both values. ``run_dir`` defaults to
    ``config.train.output_dir``; ``checkpoint`` to the run's latest. ``workspace.config`` is the
    config the model was built from.

    The data must be what the run trained on (its ``run.json`` records digests of the
    training and test splits, the item ids and the users; a ``workspace`` whose test rows the
    user supplied is checked on the rest): otherwise a ``DataError`` says what changed, before
    the catalogue is encoded or the model rebuilt.
    """
    prefix, config = check_restorable(run_dir, config, checkpoint)
    run = Path(config.train.output_dir)  # check_restorable points it at the run restored
    if workspace is not None:
        ws = workspace.with_config(config)
        check_trained_data(run / RUN_FILE, ws.dataset, ws.split)
    else:
        dataset, split = load_split(config)
        check_trained_data(run / RUN_FILE, dataset, split)
        ws = prepare(config, progress=False, data=(dataset, split))
    _check_encoders(run, ws)
    model = build_model(ws, fit_linear_cf=False)
    model.build_from_example()
    load_exactly(model, prefix)
    _note_untrained_users(run, model)
    return model, ws


def _note_untrained_users(run: Path, model: RetrievalModel) -> None:
    """Say once when a run trained before the unknown-user rule for untrained users is now
    scored by it: its figures (``eval/``) came from those users' never-trained id rows."""
    tower = model.query_tower
    if tower.id_embedding is None or UNTRAINED_USERS_KEY in read_run_record(run / RUN_FILE):
        return
    if users := tower.untrained_user_ids:
        logger.warning("%s was trained before users without a training interaction were scored "
                       "as unknown users: its %d such user(s) (e.g. %s) now get the unknown "
                       "user's id row, not their own never-trained one, so figures saved with "
                       "the run for them predate that (evaluate again, or retrain)", run,
                       len(users), shown(users[0]))

def _check_model_class(config: Config) -> None:
    """Import ``model.model_class`` before any data is read (a one-line ``ConfigError`` if it
    cannot be), and say when only this process can rebuild it: the run then restores here
    (``tfmmrec.restore``, ``tfmmrec.export_model``), not from the ``tfmmrec`` command."""
    reference = config.model.model_class
    model_class(reference, config.ranking.enabled)
    where = only_this_process(reference) or (
        "defined in the script run as __main__" if reference.startswith("__main__:") else None)
    if where:
        logger.warning("model.model_class=%r is %s: only this process can rebuild the run's "
                       "model (tfmmrec evaluate/export cannot import it); define it in a "
                       "module to restore the run anywhere", reference, where)


def check_restorable(run_dir: str | os.PathLike | None = None,
                     config: Config | str | os.PathLike | None = None,
                     checkpoint: str | os.PathLike | None = None) -> tuple[Path, Config]:
    """What ``restore`` checks before loading any data: the checkpoint and the model spec
    beside it exist, and ``config`` defines the same model. Returns ``(checkpoint prefix, the
    config restore uses)``; raises a one-line error otherwise, so a command can refuse before
    minutes of encoding."""
    if run_dir is None:
        if config is None:
            raise ConfigError("restore needs a run directory or a config naming one "
                              "(train.output_dir)")
        config = load_config(config)
        run_dir = config.train.output_dir
    for name, value in (("run_dir", run_dir), ("checkpoint", checkpoint)):
        if value is not None and not isinstance(value, str | os.PathLike):
            raise ConfigError(f"{name} must be a path, got {type(value).__name__} {value!r:.80}")
    run = Path(run_dir)
    prefix = Path(checkpoint) if checkpoint else run / "checkpoints" / "latest"
    if not Path(str(prefix) + ".index").is_file():
        if not checkpoint:
            _refuse_unfinished_run(run, prefix)
        if prefix.is_dir():  # a checkpoint is a prefix of files; the folder holding them
            found = sorted(p.name.removesuffix(".index") for p in prefix.glob("*.index"))
            raise TrainingError(f"--checkpoint {prefix} is a folder; a checkpoint is the "
                                "prefix of its files" + (f", e.g. {prefix / found[0]} (here: "
                                f"{', '.join(found)})" if found else ": this one holds none"))
        raise TrainingError(f"no checkpoint at {prefix} (expected {prefix}.index): train "
                            "first, or name a checkpoint (--checkpoint / checkpoint=)")
    spec = prefix.parent / MODEL_SPEC_FILE
    if not spec.is_file():
        raise TrainingError(f"{spec} not found: the checkpoint {prefix} does not say which model "
                            "it holds (runs trained before tfmmrec saved it must be retrained)")
    trained = load_config(spec)
    if config is None:
        full = run / CONFIG_FILE
        config = load_config(full) if full.is_file() else trained
    config = load_config(config)
    if Path(config.train.output_dir) != run:  # evaluation output goes to the restored run
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, output_dir=str(run)))
    config = resolved_linear_cf(config, trained)
    # the data may have moved: its digests in run.json say whether it is the same data
    relocatable = RELOCATABLE_FIELDS if records_data(run / RUN_FILE) else frozenset()
    # the CLI builds its config from --config (or the demo defaults), not from the run's
    check_same_model(trained, config, f"the run {run} ({spec})",
                     ignored=RUNTIME_FIELDS | relocatable,
                     hint=f"evaluate/export the run with the config it was trained with "
                          f"(--config {run / CONFIG_FILE}, without --set overrides of those "
                          "fields), or train a new run")
    model_class(config.model.model_class, config.ranking.enabled)  # importable here, or say so
    return prefix, config


def _refuse_unfinished_run(run: Path, prefix: Path) -> None:
    """The error for a run folder without its final checkpoint that a run started in: it was
    interrupted (a backup to resume from), or it is retraining over a finished run that
    failed before its first backup; either way the finished run it replaces, if any, is
    named (``previous/``)."""
    note = previous_run_note(run)
    if any((run / "backup").glob("*")):
        raise TrainingError(f"the run {run} was interrupted before it finished (its backup is "
                            f"in {run / 'backup'}): run train again with the same config to "
                            f"resume it{note}")
    if note:
        raise TrainingError(f"the run {run} did not finish (no checkpoint at {prefix}): train "
                            f"again to finish it{note}")


def resolved_linear_cf(config: Config, trained: Config) -> Config:
    """``config`` with ``model.linear_cf: auto`` replaced by the kind ``trained`` (a run's model
    spec) was built with, once chosen; otherwise unchanged."""
    from tfmmrec.evaluation.linear_cf_selection import AUTO_BLOCKS

    if config.model.linear_cf != "auto" or trained.model.linear_cf not in AUTO_BLOCKS:
        return config
    return load_config(config, [f"model.linear_cf={trained.model.linear_cf}"])


def _check_encoders(output: Path, ws: Workspace) -> None:
    """Cached features are only valid for the encoder weights the model was trained with."""
    run_file = output / RUN_FILE
    if not run_file.is_file():
        return
    trained = read_run_record(run_file).get("encoders", {})
    now = ws.encoder_identities()
    changed = [m for m in now if m in trained and trained[m] != now[m]]
    if changed:
        raise ConfigError(f"the {', '.join(changed)} encoder(s) differ from the ones this model "
                          f"was trained with ({run_file}); restore the training config (or, "
                          "if the items table changed since, or the run was trained by an "
                          "earlier tfmmrec, whose encoder identities did not cover the random-"
                          "init text tower's vocabulary, retrain)")


def evaluate(config: Config | str | os.PathLike | None = None,
             checkpoint: str | os.PathLike | None = None, *, model: RetrievalModel | None = None,
             workspace: Workspace | None = None, baselines: bool = True,
             name: str = "tfmmrec", hidden_modalities: tuple[str, ...] = (),
             write: bool = True, classic_baselines: Sequence[str] = (),
             embeddings: tuple[np.ndarray, np.ndarray] | None = None,
             output_name: str = "metrics", sources: dict[str, str] | None = None
             ) -> dict[str, dict[str, float]]:
    """Metrics of a trained model (and popularity/random baselines) on the config's split.

    ``classic_baselines``: keys of ``evaluation.baseline_suite.BASELINES`` (``ease``, ``ials``,
    ``ridge``, ``knn``) to tune on validation and score as rows of the same table
    (:func:`classic_baseline_results`). ``embeddings``: ``(users, items)`` to score instead of
    a model's (e.g. an export's, ``evaluation.exported``). Writes
    ``<output_dir>/eval/<output_name>.json`` and ``.png`` (Recall@K and NDCG@K curves):
    ``metrics`` for the run's own split; other names keep a scored test set, candidate list
    or export from replacing it (``evaluation_output_name``, whose ``evaluation_sources`` the
    file records as ``sources``). The run's Projector files are written from its own model's
    item embeddings only: not at all when ``embeddings`` are given (another run's export
    would replace them).
    """
    if not re.fullmatch(r"[\w.-]+", output_name):
        raise ConfigError(f"output_name {output_name!r}: letters, digits, '.', '-', '_' only")
    from tfmmrec.evaluation.protocol import (
        check_evaluable,
        evaluate_embeddings,
        popularity_baseline,
        popularity_note,
        random_baseline,
        recall_notes,
        unscored_note,
    )
    from tfmmrec.evaluation.report import plot_metric_curves

    config = load_config(config)
    if workspace is not None:  # refuse before restoring a model for nothing
        _require_test_rows(workspace.split)
        check_evaluable(workspace.split, workspace.user_ids, workspace.dataset.num_items)
    restored = None
    if model is None and embeddings is None:
        restored = _run_record(Path(config.train.output_dir))  # before reading the run
        model, ws = restore(config.train.output_dir, config, checkpoint=checkpoint,
                            workspace=workspace)
        config = ws.config
    else:
        ws = _given_workspace(workspace, config)
    if workspace is None:
        _require_test_rows(ws.split)
        check_evaluable(ws.split, ws.user_ids, ws.dataset.num_items)
    ks, batch = config.eval.ks, config.eval.batch_size
    if embeddings is not None:
        users, items = embeddings
    else:
        items = embed_items(model, ws.dataset.num_items, batch, hidden_modalities)
        users = embed_users(model, ws.user_ids, batch)
    results = {name: evaluate_embeddings(users, items, ws.split, ws.user_ids, ks, batch)}
    if baselines:
        args = (ws.split, ws.user_ids, ws.dataset.num_items, ks)
        results["popularity"] = popularity_baseline(*args, batch_size=batch)
        results["random"] = random_baseline(*args, batch_size=batch)
    classic = classic_baseline_results(ws, classic_baselines) if classic_baselines else {}
    results.update({row: result.metrics for row, result in classic.items()})
    if embeddings is None and getattr(model, "head", None) is not None and not hidden_modalities:
        results[f"{name}{RANKING_HEAD_ROW}"] = ranking_head_metrics(model, ws)
        if baselines:  # what the head's figures are without a model, to read them against
            from tfmmrec.evaluation.ranking import REFERENCES, reference_ranking_metrics

            task = getattr(model, "ranking_task", config.ranking.task)
            if reference := reference_ranking_metrics(ws, task):
                results[f"{REFERENCES[task]}{RANKING_HEAD_ROW}"] = reference
    if not write:
        return results
    run = Path(config.train.output_dir)
    if restored is not None and _run_record(run) != restored:
        raise TrainingError(f"the run in {run} changed while it was evaluated (a training run "
                            "set it aside, or finished over it): nothing was written, since "
                            "these figures are the previous model's; evaluate again once that "
                            "training finishes")
    out = run / "eval"
    unscored = unscored_note(ws.split, ws.user_ids, ws.dataset.num_items)
    write_json({"split": ws.split.kind, "split_sizes": ws.split.sizes(), "results": results,
                **({"sources": sources} if sources else {}),
                "notes": {**({"unscored": unscored} if unscored else {}),
                          **({"popularity": popular} if baselines and (
                              popular := popularity_note(ws.split)) else {}),
                          **recall_notes(ws.split, ws.user_ids, ws.dataset.num_items, ks)},
                **({"baselines": {row: r.to_dict() for row, r in classic.items()}}
                   if classic else {})}, out / f"{output_name}.json")
    plot_metric_curves(retrieval_rows(results), out / f"{output_name}.png",
                       title=f"{ws.split.kind} split, {len(ws.split.test)} test interactions")
    if not hidden_modalities and embeddings is None:
        write_item_projector(config, ws, items)
    return results


def _run_record(run: Path) -> str:
    """A digest of ``run``'s record (``run.json``; "" without one): it changes when a training
    run sets the run aside or finishes over it, so an ``evaluate`` that restored the model
    before can tell its figures no longer describe the run in the folder (a review's retrain
    started under an evaluate left the old model's metrics beside the new checkpoint)."""
    try:
        return hashlib.sha256((run / RUN_FILE).read_bytes()).hexdigest()
    except OSError:
        return ""


# an early-stopping run's validation figures so far, for a resumed run to choose on them all
VALIDATION_STATE = "validation-figures.json"
RANKING_HEAD_ROW = " · ranking head"  # evaluate's row of a head's own metrics (not Recall@K)


def retrieval_rows(results: dict[str, dict]) -> dict[str, dict]:
    """``evaluate``'s rows of retrieval metrics (Recall@K, NDCG@K…): every row but ranking
    heads'."""
    return {row: r for row, r in results.items() if not row.endswith(RANKING_HEAD_ROW)}


def ranking_head_metrics(model: RetrievalModel, ws: Workspace) -> dict[str, float]:
    """A ranking head's own metrics on the test split (RMSE/MAE, AUC/log-loss or NDCG@3/5 over
    lists; none when the test rows cannot give them, ``evaluate_ranking_head``) and the
    two-stage NDCG@10/Recall@10 of retrieving ``ranking.retrieve_candidates`` and re-ranking
    them against retrieval alone, under the split's protocol: what the ``recommend``
    signature of its export serves."""
    from tfmmrec.evaluation.ranking import evaluate_ranking_head, evaluate_two_stage

    return {**evaluate_ranking_head(model, ws), **evaluate_two_stage(model, ws)}


def evaluation_output_name(test: str | os.PathLike | None = None,
                           candidates: str | os.PathLike | None = None,
                           export: str | os.PathLike | None = None,
                           eval_dir: str | os.PathLike | None = None) -> str:
    """The file name (without suffix) under ``eval/`` of an evaluation: ``metrics`` for the
    run's own split, else one name per variant (``metrics-test-<file>``,
    ``-candidates-<file>``, ``-export-<model>-<version>``), so scoring a test set, a
    candidate list or an export never replaces the split's metrics, nor one export's
    another's (``--index both`` writes two models, each with a version 1). ``<version>``: the
    version folder's number, or a model folder's newest (the one ``evaluation.exported``
    scores).

    With ``eval_dir``, a name whose file there records other ``evaluation_sources`` (a
    ``test.csv`` of another folder, another base folder's ``tfmmrec/1``) gets a digest of
    these sources appended: it never replaces another evaluation's metrics."""
    parts = ["metrics"]
    for label, path in (("test", test), ("candidates", candidates)):
        if path:
            parts.append(f"{label}-{_file_label(Path(path).stem)}")
    if export:
        parts.append("export-" + "-".join(_file_label(p) for p in _export_label(export)))
    name = "-".join(parts)
    sources = evaluation_sources(test, candidates, export)
    if eval_dir is not None and _recorded_sources(Path(eval_dir) / f"{name}.json") not in (
            None, sources):
        name += "-" + hashlib.sha1(json.dumps(sources, sort_keys=True).encode()).hexdigest()[:8]
    return name


def evaluation_sources(test: str | os.PathLike | None = None,
                       candidates: str | os.PathLike | None = None,
                       export: str | os.PathLike | None = None) -> dict[str, str]:
    """The paths an evaluation scored (``sources`` of its metrics file), resolved (a link or
    another relative spelling is the same file); an export's model folder is its newest
    version, the one scored."""
    sources = {label: str(Path(path).resolve()) for label, path in
               (("test", test), ("candidates", candidates)) if path}
    if export:
        from tfmmrec.export.loader import version_of

        sources["export"] = str(version_of(Path(export).resolve()))
    return sources


def _recorded_sources(path: Path) -> dict | None:
    """The ``sources`` a metrics file records (None: no file, or one written before they
    were recorded, which the same evaluation replaces as it always did)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("sources")
    except (OSError, ValueError, AttributeError):
        return None


def _file_label(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def _export_label(export: str | os.PathLike) -> tuple[str, ...]:
    """``(model, version)`` of an export path: a version folder, or a model folder (its newest
    version, ``export.loader.version_of``); ``(name,)`` for a folder that is neither."""
    from tfmmrec.export.loader import version_of
    from tfmmrec.export.writer import is_version_name

    folder = version_of(Path(export).absolute())
    return (folder.parent.name, folder.name) if is_version_name(folder.name) else (folder.name,)


def _given_workspace(workspace: Workspace | None, config: Config) -> Workspace:
    if workspace is None:
        raise ConfigError("pass the workspace the model was built from with model= "
                          "(TrainResult.workspace), or neither to restore the run")
    return workspace.with_config(config)


def _require_test_rows(split: Split) -> None:
    if len(split.test) == 0:
        raise DataError(f"the {split.kind} split has no test interactions to evaluate on "
                        "(data.split: none trains on every row): supply a test set "
                        "(tfmmrec evaluate --test FILE) or use another data.split")


def classic_baseline_results(ws: Workspace, names: Sequence[str]) -> dict:
    """EASE / iALS / content→CF ridge / content kNN on the workspace's split, each tuned on the
    validation carve of its training rows; content baselines read the frozen (cached) features
    of every modality. Returns ``{row name: BaselineResult}``."""
    from tfmmrec.evaluation.baseline_suite import run_baselines
    from tfmmrec.evaluation.content import content_features

    frozen = [m for m in ws.modalities if not ws.config.tower(m).trainable]
    features = present = None
    if frozen:
        features, present = content_features({m: ws.contents[m].values for m in frozen},
                                             {m: ws.contents[m].mask for m in frozen})
    d = ws.config.data
    return run_baselines(ws.split, ws.user_ids, ws.dataset.num_items, names=names,
                         item_features=features, present=present, ks=ws.config.eval.ks,
                         validation_fraction=d.test_fraction, seed=d.seed,
                         model_seed=ws.config.train.seed, batch_size=ws.config.eval.batch_size)


def write_item_projector(config: Config, ws: Workspace, items: np.ndarray):
    """TensorBoard Projector files of the item embeddings in ``<output_dir>/logs/projector``:
    ids and titles as labels, posters as thumbnails (``evaluation.projector``)."""
    from tfmmrec.evaluation.projector import write_projector

    catalog = ws.dataset.catalog
    frame = catalog.frame
    titles = (frame["title"].astype(str).tolist() if "title" in frame.columns
              else [str(t)[:80] for t in catalog.texts])
    images = catalog.image_paths if "image" in ws.modalities else None
    return write_projector(Path(config.train.output_dir) / "logs", items, catalog.item_ids,
                           titles, images)


def seen_items(ws: Workspace) -> list[np.ndarray]:
    """Training items per user, aligned with the query tower's lookup (row 0: unknown user)."""
    grouped = ws.split.train.groupby(ws.split.train["user_id"].astype(str))["item_index"]
    items = {user: np.unique(values.to_numpy()) for user, values in grouped}
    return [np.zeros(0, np.int64)] + [items.get(str(u), np.zeros(0, np.int64))
                                      for u in ws.user_ids]


def item_columns(columns) -> dict:
    """The items-table schema an export records, so a catalogue update reads new rows the way
    training read the catalogue (same text columns in the same order, same media columns)."""
    return {spec.name: spec.schema(columns.of(spec.name)) for spec in modality_specs()}


def history_contents(model_config) -> str | bool:
    """Which training items per user the query tower holds (it pools them), or False."""
    held = []
    if model_config.user_history:
        length = model_config.history_max_length
        held.append((f"the {length} most recent" if length else "all")
                    + " training items per user (history encoder, model.user_history)")
    if model_config.history_length:
        held.append(f"the {model_config.history_length} most recent training items per user "
                    "(recent-item pooling, model.history_length)")
    return "; ".join(held) or False


def export_contents(ws: Workspace, exclude_seen: bool) -> dict:
    """What the artefact holds, for ``tfmmrec.json`` (and the README's list)."""
    return {
        "model_weights": "query tower, item tower (projections, fusion), encoders"
        + (", ranking head" if ws.config.ranking.enabled else ""),
        "item_ids_and_embeddings": True,
        "user_ids": "the query tower's user-id vocabulary",
        "user_features": bool(ws.config.model.user_features and ws.dataset.users is not None),
        "user_histories": history_contents(ws.config.model),
        "seen_items_per_user": bool(exclude_seen),
        "interactions": False,
    }


def export_text_features(ws: Workspace, model: RetrievalModel) -> np.ndarray:
    """``[N, F]``: each training item's unit frozen text feature, zeros for an item without
    text (what ``export.text_search_weight`` searches beside the trained space)."""
    from tfmmrec.export.module import TEXT_SEARCH_MODALITY as TEXT

    if TEXT not in ws.modalities:
        raise ConfigError("export.text_search_weight > 0 needs a text tower; this model's "
                          f"modalities are {', '.join(ws.modalities) or 'none'} (set it to 0)")
    if TEXT in model.item_tower.encoders:
        raise ConfigError("export.text_search_weight > 0 needs a frozen text encoder (cached "
                          "features); text.trainable fine-tunes it inside the tower (set "
                          "export.text_search_weight: 0)")
    content = ws.contents[TEXT]
    features = np.asarray(content.values, np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    present = np.asarray(content.mask, bool)[:, None]
    return np.where(present, features / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def check_export_destination(config: Config) -> None:
    """``export.base_dir`` is writable, ``export.version`` free and the newest version serves
    no catalogue update the export would drop: checked before the data is loaded, the
    catalogue encoded and the model restored (minutes for large catalogues), as ``train``
    checks its output_dir first (same helper, ``trainer.check_writable``)."""
    from tfmmrec.export.catalog import check_no_catalog_updates
    from tfmmrec.export.writer import check_version_free

    check_writable(Path(config.export.base_dir), "export.base_dir", error=ExportError)
    model_dir = Path(config.export.base_dir) / config.export.model_name
    check_version_free(model_dir, config.export.version)
    check_no_catalog_updates(model_dir, config.export.replace_catalog_updates)


def export(config: Config | str | os.PathLike | None = None,
           checkpoint: str | os.PathLike | None = None, *, model: RetrievalModel | None = None,
           workspace: Workspace | None = None, index: str | None = None) -> Path:
    """Write a TF Serving version ``<base>/<name>/<version>/`` and return its path.

    ``index`` overrides ``export.index`` (``scann``, ``partitioned`` or ``brute_force``).
    """
    import dataclasses

    from tfmmrec.export.catalog import write_catalog_version
    from tfmmrec.export.index import IndexSettings
    from tfmmrec.export.module import ServingTowers, ids_over_limit
    from tfmmrec.export.writer import write_models_config

    config = load_config(config)
    check_export_destination(config)
    if model is None:
        model, ws = restore(config.train.output_dir, config, checkpoint=checkpoint,
                            workspace=workspace)
        config = ws.config
    else:
        ws = _given_workspace(workspace, config)
    ex = config.export
    kind = index or ex.index
    items = embed_items(model, ws.dataset.num_items, config.eval.batch_size)
    if over := ids_over_limit(ws.user_ids, ex.limits.max_id_bytes):  # served, not requestable
        logger.warning("%d training user id(s) longer than export.limits.max_id_bytes=%d bytes "
                       "(the longest: %d): the export refuses every request naming them; "
                       "raise export.limits.max_id_bytes to serve them", len(over),
                       ex.limits.max_id_bytes, max(size for _, size in over))
    head = getattr(model, "head", None) if config.ranking.enabled else None
    if head is not None and (note := ranking_only_note(config.ranking.retrieval_weight,
                                                       config.ranking.retrieve_candidates)):
        logger.warning("%s", note)
    seen = None
    if ex.exclude_seen:
        logger.warning("export.exclude_seen: every user's training items are baked into the "
                       "export (user id → item ids); anyone holding the model can read them. "
                       "Prefer request-time exclusion (exclude_item_ids)")
        seen = seen_items(ws)
    text_encoder = ws.encoders.get("text")
    if text_encoder is not None:  # read when the signatures are traced, below
        text_encoder.jit_compile = ex.jit_compile
        if ex.text_backbone == "fused":
            if not hasattr(text_encoder, "use_inference_backbone"):
                raise ConfigError(
                    "export.text_backbone=fused needs the KerasNLP BERT text encoder, got "
                    f"{type(text_encoder).__name__}")
            text_encoder.use_inference_backbone(ex.text_precision, ex.text_weights)
    text_features = export_text_features(ws, model) if ex.text_search_weight > 0 else None
    towers = ServingTowers(
        model.query_tower, model.item_tower, ws.encoders,
        training_item_ids=ws.dataset.catalog.item_ids, training_item_embeddings=items,
        settings=settings_from_config(config), ranking_head=head, seen=seen,
        limits=ex.limits, history_half_life=config.model.history_half_life,
        history_max_length=config.model.history_max_length,
        text_search=text_features is not None)
    metadata = {
        "tfmmrec_version": __import__("tfmmrec").__version__,
        "limits": dataclasses.asdict(ex.limits),
        "embedding_dim": int(items.shape[1]), "default_k": ex.k, "max_k": ex.max_k,
        "two_stage": head is not None, "exclude_seen": ex.exclude_seen,
        "jit_compile": ex.jit_compile,
        "text_backbone": ex.text_backbone, "text_precision": ex.text_precision,
        "text_weights": ex.text_weights,
        "max_seen": towers.max_seen, "max_exclude": ex.max_exclude,
        "max_session_items": ex.max_session_items,
        "session_user_weight": ex.session_user_weight,
        "exclude_session_items": ex.exclude_session_items,
        "content_search": ex.content_search,
        "retrieve_candidates": config.ranking.retrieve_candidates,
        **settings_from_config(config),
        "item_columns": item_columns(ws.dataset.catalog.columns),
        "modalities": list(ws.modalities), "encoders": ws.encoder_identities(),
        "unknown_user_policy": "cold-start query embedding (out-of-vocabulary row)",
        "contents": export_contents(ws, ex.exclude_seen),
        "index_settings": IndexSettings.from_export(ex, kind=kind).to_dict(),
        "warmup_user": str(ws.user_ids[0]),
        "text_search": None if text_features is None else {
            "weight": ex.text_search_weight, "content_dim": model.item_tower.dim},
    }
    sample = embed_users(model, ws.user_ids[:2000]) if kind != "brute_force" else None
    try:
        version_dir = write_catalog_version(
            towers, items, ws.dataset.catalog.item_ids, kind, metadata, ex.base_dir, ex.model_name,
            ex.version, settings=IndexSettings.from_export(ex, kind=kind),
            recall_queries=sample, warmup_user=str(ws.user_ids[0]),
            text_features=text_features)
    finally:
        if text_encoder is not None:
            text_encoder.jit_compile = False  # the workspace's other uses stay uncompiled
            if ex.text_backbone == "fused":
                text_encoder.use_inference_backbone(None)  # and train the Keras backbone
    write_models_config(ex.base_dir)
    return version_dir
