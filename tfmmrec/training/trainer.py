"""Training: the input pipeline and the Keras fit loop (periodic backups, resume, the final
checkpoint, TensorBoard).

Resume uses Keras' ``BackupAndRestore`` (``PeriodicBackup``): an interrupted ``fit`` (an
exception, Ctrl-C or ``kill -9``) leaves its backup behind and the same command continues from
the last backed-up epoch, reading the batches (``batched_examples(epochs=...)``) and drawing
the random streams (``noise_checkpoints``) an uninterrupted run would; a completed run removes
it. Under ``MultiWorkerMirroredStrategy`` every worker runs these callbacks but only the chief's
files land in ``output_dir`` (Keras writes the other workers' copies to temporary directories
and deletes them).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmmrec.config import TrainConfig
from tfmmrec.errors import ConfigError, TfmmrecError, TrainingError, first_line
from tfmmrec.training.checkpoint import UNREADABLE, VALUE_SUFFIX
from tfmmrec.training.strategy import (
    lost_workers_reported,
    num_workers,
    peer_lost,
    scaled_learning_rate,
)

logger = logging.getLogger(__name__)

MIN_FREE_BYTES = 200 * 2**20


@dataclass(repr=False)
class TrainResult:
    """What a training run produced and where.

    Epochs, under names that say which: ``epochs_configured`` is ``train.epochs`` as the run's
    config says (with ``train.early_stopping``, the cap); ``epochs_chosen`` the count early
    stopping chose on validation, which the final model trained for (None without early
    stopping); ``epochs_run`` the epochs this call trained (after a resume from a backup, only
    the remaining ones; a callback may stop them early), ``history_epochs`` which ones.

    The repr is a few lines (run directory, epochs, last loss, speed, the workspace's sizes):
    the dataclass default printed the whole dataset and feature tables (100+ KB).
    """

    model: tf.keras.Model
    output_dir: Path
    checkpoint: Path
    history: dict[str, list[float]] = field(default_factory=dict)
    examples_per_second: float = 0.0
    epochs_run: int = 0
    workspace: Any = None  # what the caller built the model from; opaque to the trainer
    epochs_configured: int = 0
    epochs_chosen: int | None = None
    history_epochs: list[int] = field(default_factory=list)  # 1-based, the ones ``history`` holds

    def __repr__(self) -> str:
        epochs = f"epochs_run={self.epochs_run}, epochs_configured={self.epochs_configured}"
        if self.epochs_chosen is not None:
            epochs += f", epochs_chosen={self.epochs_chosen} (early stopping)"
        losses = self.history.get("loss") or []
        loss = f"{losses[-1]:.4f}" if losses else "none"
        lines = [f"TrainResult(output_dir={str(self.output_dir)!r},",
                 f"  {epochs},",
                 f"  last loss {loss}, {self.examples_per_second:,.0f} examples/s,",
                 f"  model={type(self.model).__name__}, checkpoint={str(self.checkpoint)!r}"]
        if self.workspace is not None:
            lines[-1] += ","
            lines.append(f"  workspace={self.workspace!r}")
        return "\n".join(lines) + ")"


def dataframe_dataset(interactions: pd.DataFrame, batch_size: int, seed: int,
                         shuffle: bool = True,
                         extra: dict[str, np.ndarray] | None = None) -> tf.data.Dataset:
    """(user_id, item_index[, extra features]) examples, reshuffled each epoch, batched to the
    global batch size."""
    data = {
        "user_id": interactions["user_id"].astype(str).to_numpy(),
        "item_index": interactions["item_index"].to_numpy(np.int32),
        **(extra or {}),
    }
    return batched_examples(data, batch_size, seed, shuffle)


def batched_examples(features: dict[str, np.ndarray], batch_size: int, seed: int,
                     shuffle: bool = True, epochs: Sequence[int] | None = None
                     ) -> tf.data.Dataset:
    """Batches of in-memory per-example ``features`` (equal first dimensions), gathered by index.

    Each epoch draws one seeded permutation of the example indices, cuts it into batches and
    gathers every feature once per batch. ``from_tensor_slices → shuffle → batch`` did the same
    with every example passing through the shuffle buffer and the batcher one at a time: on
    2 CPU cores that per-element work cost ~2.8 ms of a 14 ms step. Same examples per epoch,
    the same for every worker (the seed).

    ``epochs``: None, one epoch per iteration of the dataset, a new order each time
    (``Dataset.random`` re-draws its seed per iteration, as
    ``shuffle(reshuffle_each_iteration=True)`` did); or the epoch numbers to cover, in a row,
    epoch ``e`` in the order of ``(seed, e)`` alone (``batches_per_epoch`` batches each): what
    ``fit`` reads, so that a run resumed at epoch ``e`` sees the orders an uninterrupted one
    would have.

    Any per-example feature is carried (whatever the model reads: ratings, histories...).
    """
    if not features:
        raise ValueError("batched_examples needs at least one feature")
    sizes = {name: len(values) for name, values in features.items()}
    count = next(iter(sizes.values()))
    if any(size != count for size in sizes.values()):
        raise ValueError(f"features must have one row per example; got row counts {sizes}")
    tensors = {name: tf.constant(values) for name, values in features.items()}
    steps = batches_per_epoch(count, batch_size, shuffle)
    if epochs is None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    else:
        seeds = tf.data.Dataset.from_tensor_slices(tf.constant(list(epochs), tf.int64))
    if shuffle:
        orders = seeds.map(lambda epoch_seed: tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=tf.stack([epoch_seed, seed])))
    else:
        orders = seeds.map(lambda _: tf.range(count, dtype=tf.int64))
    batch_indices = orders.flat_map(
        lambda order: tf.data.Dataset.range(steps).map(
            lambda step: order[step * batch_size:(step + 1) * batch_size])) \
        .apply(tf.data.experimental.assert_cardinality(  # flat_map hides it from Keras
            steps * (1 if epochs is None else len(epochs))))
    dataset = batch_indices.map(
        lambda index: {name: tf.gather(values, index) for name, values in tensors.items()},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return with_data_sharding(dataset).prefetch(tf.data.AUTOTUNE)


def batches_per_epoch(count: int, batch_size: int, shuffle: bool = True) -> int:
    """Batches of one epoch of ``count`` examples (``batched_examples``). Equal-sized when
    shuffling: the in-batch softmax sees the same number of negatives every step, and a fixed
    shape suits TPUs; reshuffling means no example is dropped for good."""
    drop = shuffle and count >= batch_size
    return count // batch_size if drop else -(-count // batch_size)


def with_data_sharding(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """In-memory data has no files to split between workers: each worker takes every n-th
    batch (the same seed gives every worker the same shuffle, so they partition it)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


@contextlib.contextmanager
def exclusive_run(output: Path) -> Iterator[None]:
    """Hold ``output/.lock`` for a training run: two runs writing one ``train.output_dir``
    at once would leave the checkpoints of one and the record of the other. An OS lock
    (``flock``), so a run that dies, however it dies, releases it; where the OS has none,
    nothing is locked."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    output.mkdir(parents=True, exist_ok=True)
    with open(output / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(f"another training run is writing to train.output_dir={output} "
                                f"(it holds {output / '.lock'}): wait for it to finish, or "
                                "choose another train.output_dir") from None
        yield


def check_writable(directory: Path, what: str = "train.output_dir",
                   min_free_bytes: int = MIN_FREE_BYTES,
                   error: type[TfmmrecError] = TrainingError) -> None:
    """Fail before any work starts if results could not be written there (or the disk is full).
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise error(f"cannot write to {what}={directory}: {exc}. Choose a writable "
                    "directory.") from None
    free = shutil.disk_usage(directory).free
    if free < min_free_bytes:
        raise error(f"only {free / 2**20:.0f} MiB free at {what}={directory}; at least "
                    f"{min_free_bytes / 2**20:.0f} MiB are needed. Free space or choose another "
                    "directory.")


class _Throughput(tf.keras.callbacks.Callback):
    """Examples per second over the epochs after the first (which includes tracing)."""

    def __init__(self, examples_per_epoch: int):
        super().__init__()
        self.examples_per_epoch = examples_per_epoch
        self.durations: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.durations.append(time.perf_counter() - self._start)

    @property
    def examples_per_second(self) -> float:
        steady = self.durations[1:] or self.durations
        return self.examples_per_epoch * len(steady) / max(sum(steady), 1e-9)


class EpochLine(tf.keras.callbacks.Callback):
    """One log line per epoch: ``epoch 3/10: loss 4.1523, alignment_loss 1.2040 (2.1 s,
    38,000 examples/s)``.

    Keras' progress bar redraws every step and prints every logged value (regularisation
    terms of 0.0000e+00 included); this keeps the loss terms that move and the speed. Runs of
    more than ``max_lines`` epochs log the first, the last and evenly spaced ones between.
    """

    def __init__(self, epochs: int, examples_per_epoch: int, max_lines: int = 10):
        super().__init__()
        self.epochs = epochs
        self.examples_per_epoch = examples_per_epoch
        self.every = max(1, math.ceil(epochs / max_lines))

    def _logged(self, epoch: int) -> bool:
        return epoch == 0 or (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs

    @staticmethod
    def _shown(name: str, value: float) -> bool:
        """``total_loss`` repeats ``loss`` plus regularisation; a zero regulariser says nothing."""
        return name != "total_loss" and not (name == "regularization_loss" and value == 0.0)

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if not self._logged(epoch):
            return
        seconds = time.perf_counter() - self._start
        logs = dict(logs or {})
        ordered = {name: logs[name] for name in ("loss", *logs) if name in logs}  # loss first
        values = ", ".join(f"{name} {float(value):.4f}" for name, value in ordered.items()
                           if self._shown(name, float(value)))
        logger.info("epoch %d/%d: %s (%.1f s, %s examples/s)", epoch + 1, self.epochs, values,
                    seconds, f"{self.examples_per_epoch / max(seconds, 1e-9):,.0f}")


class StopOnNonFiniteLoss(tf.keras.callbacks.Callback):
    """Fail the run with a ``TrainingError`` when an epoch's loss is NaN or infinite.

    Runs before the checkpoint and backup callbacks, so a diverged epoch is never saved (Keras'
    ``TerminateOnNaN`` only stops, and the run would then "succeed" with NaN weights)."""

    def __init__(self, learning_rate: float):
        super().__init__()
        self.learning_rate = learning_rate

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise DivergedLoss(
                f"the training loss became {float(loss)} in epoch {epoch + 1}; nothing of "
                "that epoch was saved. Check the interactions for extreme ratings or weights, "
                f"or lower train.learning_rate (now {self.learning_rate})")


class DivergedLoss(TrainingError):
    """The loss became NaN or infinite: resuming with the same settings would diverge again
    (the batches and draws are a function of the seed), so the run keeps no resume state."""


class PeriodicBackup(tf.keras.callbacks.BackupAndRestore):
    """Keras' ``BackupAndRestore`` (resume from the last backed-up epoch; the backup deleted
    when training finishes), backing up at the end of an epoch only once ``min_seconds``
    have passed since the last backup or the start (``train.backup_seconds``; 0: every epoch).

    A backup is a full copy of the model and optimizer (42 MB on ML-100K, where an epoch of
    the shipped model takes about a second: a backup every epoch made training 1.17× slower).
    Long epochs are still backed up every epoch; an interruption loses at most
    ``min_seconds`` plus the unfinished epoch. Pass 0 under multi-worker training: the
    decision must be the same on every worker, and their clocks differ.
    """

    def __init__(self, backup_dir: str, min_seconds: float, delete_on_train_end: bool = True):
        super().__init__(backup_dir)
        self.min_seconds = float(min_seconds)
        self.delete_on_train_end = delete_on_train_end
        self._last = 0.0
        self._streams: tf.train.CheckpointManager | None = None

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)  # restores the backup, if there is one
        except UNREADABLE as exc:
            if self._peer_lost(exc):  # the backup is fine: fit() names the lost worker
                raise
            raise self._unreadable(exc) from None
        self._last = time.monotonic()
        state = getattr(self, "_training_state", None)  # Keras' restored counters
        done = int(state._ckpt_saved_epoch.numpy()) if state is not None else -1  # 0-based
        # One worker: under multi-worker training saving the streams is a collective that
        # every worker would have to join (Keras' own backup is); they restart there.
        self._streams = noise_checkpoints(self.model, self.backup_dir) \
            if num_workers() == 1 else None
        if done >= 0:
            self._restore_noise(done)
            epochs = self.params.get("epochs", 0)
            if done + 1 >= epochs:  # killed after its last backup, before its checkpoint
                logger.info("resuming from the backup in %s: all %d epoch(s) were done; only "
                            "the final checkpoint is written", self.backup_dir, done + 1)
            else:
                logger.info("resuming from the backup in %s: %d epoch(s) done, training on "
                            "from epoch %d of %d", self.backup_dir, done + 1, done + 2, epochs)

    def _restore_noise(self, epoch: int) -> None:
        """The random streams (``towers.noise``) as they were after ``epoch`` (0-based), so the
        resumed epochs draw the dropout masks an uninterrupted run would."""
        if self._streams is None:
            return
        path = os.path.join(self._streams.directory, f"ckpt-{epoch}")
        if not tf.io.gfile.exists(path + ".index"):
            logger.warning("%s holds no random streams of epoch %d: the resumed epochs draw "
                           "other dropout masks than an uninterrupted run", self.backup_dir,
                           epoch + 1)
            return
        try:
            self._streams.checkpoint.restore(path).assert_consumed()
        except (*UNREADABLE, AssertionError) as exc:
            if self._peer_lost(exc):
                raise
            raise self._unreadable(exc) from None

    def _peer_lost(self, exc: Exception) -> bool:
        """Whether restoring failed because a peer of a multi-worker cluster is gone: the
        restore is a collective there, and such a failure says nothing about the backup (which
        ``_unreadable`` would have the user delete)."""
        return peer_lost(getattr(self.model, "distribute_strategy", None), exc)

    def _unreadable(self, exc: Exception) -> TrainingError:
        return TrainingError(f"the backup of the interrupted run in {self.backup_dir} cannot "
                             f"be read ({first_line(exc)}); delete {self.backup_dir} to train "
                             "this run from its start")

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        if now - self._last >= self.min_seconds:
            # the streams first: a kill between the two leaves them one epoch ahead, never
            # behind, of the backup (and the previous epoch's are kept)
            if self._streams is not None:
                self._streams.save(checkpoint_number=epoch)
            super().on_epoch_end(epoch, logs)
            self._last = now

    def on_train_end(self, logs=None):
        """Deletes the backup, as Keras' does, unless ``delete_on_train_end`` is off: in a run
        the caller's callbacks may still change the weights as training ends
        (``EarlyStopping(restore_best_weights=True)``), so ``FinalCheckpoint`` saves them, then
        calls :meth:`finish`, and a kill in between still finds the backup."""
        if self.delete_on_train_end:
            self.finish(logs)

    def finish(self, logs=None) -> None:
        """Delete the backup, once the final checkpoint is on disk."""
        super().on_train_end(logs)  # deletes Keras' backup
        if self._streams is not None:
            with contextlib.suppress(tf.errors.NotFoundError):
                tf.io.gfile.rmtree(self._streams.directory)


def noise_checkpoints(model: tf.keras.Model | None, backup_dir: str
                      ) -> tf.train.CheckpointManager | None:
    """A checkpoint of every ``towers.noise.Noise`` stream's state in ``model``, kept in
    ``backup_dir/noise`` beside Keras' backup (None without streams). Not part of the model's
    own checkpoints: the streams belong to a run's course, not to the trained model."""
    from tfmmrec.towers.noise import Noise

    if model is None:
        return None
    streams, seen = {}, set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for _, value in sorted(vars(layer).items(), key=lambda item: item[0]):
            if isinstance(value, Noise) and id(value) not in seen:
                seen.add(id(value))
                streams[f"s{len(streams)}"] = value.generator.state
    if not streams:
        return None
    return tf.train.CheckpointManager(tf.train.Checkpoint(**streams),
                                      os.path.join(backup_dir, "noise"), max_to_keep=2)


def resumed_epochs(backup_dir: str | os.PathLike) -> int:
    """Epochs an interrupted run's backup holds (0: none, or unreadable: ``PeriodicBackup``
    then names the problem): the first epoch the resumed run trains."""
    latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if latest is None:
        return 0
    try:
        saved = int(tf.train.load_variable(latest, "ckpt_saved_epoch" + VALUE_SUFFIX))
    except UNREADABLE:
        return 0
    return max(0, saved + 1)


class FinalCheckpoint(tf.keras.callbacks.ModelCheckpoint):
    """The trained weights at ``filepath`` (``checkpoints/latest``), written once, when
    training finishes (not when it is interrupted).

    What a resumed run reads is ``PeriodicBackup``'s state; a full copy of the weights every
    epoch as well (42 MB on ML-100K: the frozen feature tables and CF anchors are model
    variables) only slowed training. Written even when the run had no epoch left to train (a
    run interrupted after its last epoch's backup resumes straight to the end): the restored
    weights are the trained ones, and the backup is deleted next. Keras' checkpoint callback
    is kept for its multi-worker file handling (only the chief's copy lands).
    """

    def __init__(self, filepath: str, backup: PeriodicBackup | None = None):
        super().__init__(filepath, save_weights_only=True)
        self._finished = (0, {})
        self.backup = backup

    def on_epoch_end(self, epoch, logs=None):
        self._finished = (epoch, logs)

    def on_train_end(self, logs=None):
        epoch, logs = self._finished
        self.epochs_since_last_save = self.period
        self._save_model(epoch=epoch, batch=None, logs=logs)
        if self.backup is not None:  # the final weights on disk, the backup can go
            self.backup.finish(logs)


def optimizer(config: TrainConfig, replicas: int = 1) -> tf.keras.optimizers.Optimizer:
    """The configured optimiser; ``learning_rate_scaling`` applies for ``replicas`` > 1."""
    return {
        "adam": tf.keras.optimizers.Adam,
        "adagrad": tf.keras.optimizers.Adagrad,
        "sgd": tf.keras.optimizers.SGD,
    }[config.optimizer](learning_rate=scaled_learning_rate(config, replicas))


def fit(build_model: Callable[[], tf.keras.Model],
        dataset: tf.data.Dataset | Callable[[int], tf.data.Dataset],
        num_examples: int, config: TrainConfig, strategy: tf.distribute.Strategy,
        callbacks: Sequence[tf.keras.callbacks.Callback] = (),
        dataset_fn: Callable[[], tf.data.Dataset] | None = None, *,
        steps_per_epoch: int | None = None) -> TrainResult:
    """Build the model under ``strategy``, train with resume/checkpoints/TensorBoard.

    ``dataset``: the batches, one epoch per iteration (or endless, ``num_examples //
    batch_size`` steps an epoch); or a function of the first epoch to train (0, or the one after
    the backup's when an interrupted run resumes) giving the batches of every epoch from there
    to ``config.epochs`` in a row, ``steps_per_epoch`` each (``batched_examples(...,
    epochs=...)``): then epoch ``e`` reads what it would have read in an uninterrupted run.
    ``dataset_fn`` rebuilds ``dataset``; a parameter-server cluster needs it (each worker
    builds its own input pipeline from it).
    """
    output = Path(config.output_dir)
    check_writable(output)
    if callable(dataset):
        if steps_per_epoch is None:
            raise ValueError("fit: a dataset given as a function of the first epoch needs "
                             "steps_per_epoch")
        dataset = dataset(resumed_epochs(output / "backup"))
    steps = steps_per_epoch or max(1, num_examples // config.batch_size)
    parameter_server = isinstance(strategy, tf.distribute.ParameterServerStrategy)
    if parameter_server:
        if config.cross_replica_negatives:
            raise ConfigError("train.cross_replica_negatives needs synchronous replicas; "
                              "parameter_server training is asynchronous: unset one of them")
        if dataset_fn is None:
            raise TrainingError("parameter_server training needs a dataset_fn")
        make = dataset_fn
        # Each worker builds the pipeline and keeps every n-th batch of it (disjoint shares),
        # endlessly; an epoch is `steps` steps scheduled over all workers.
        dataset = tf.keras.utils.experimental.DatasetCreator(
            lambda context: make().shard(context.num_input_pipelines,
                                         context.input_pipeline_id).repeat())
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        logger.warning("train.batch_size=%d is not a multiple of the %d replicas: replicas get "
                       "unequal shares of each batch", config.batch_size, replicas)
    # A lost peer of a multi-worker cluster: one line saying how to resume, not
    # TensorFlow's traceback (creating the variables and every step are collectives).
    with lost_workers_reported(strategy):
        with strategy.scope():
            model = build_model()
            model.build_from_example()
            model.compile(optimizer=optimizer(config, replicas),
                          steps_per_execution=1 if parameter_server else min(16, steps))
        latest = output / "checkpoints" / "latest"
        # one iterator for every epoch: endless data, or all epochs' batches in a row
        endless = parameter_server or dataset.cardinality() == tf.data.INFINITE_CARDINALITY
        throughput = _Throughput(steps * config.batch_size if endless and not steps_per_epoch
                                 else num_examples)
        backup = PeriodicBackup(str(output / "backup"),
                                config.backup_seconds if num_workers() == 1 else 0.0,
                                delete_on_train_end=False)
        history = model.fit(
            dataset,
            epochs=config.epochs,
            steps_per_epoch=steps if endless or steps_per_epoch else None,
            verbose=1 if config.verbose == 2 else 0,
            callbacks=[
                StopOnNonFiniteLoss(config.learning_rate),
                *([EpochLine(config.epochs, throughput.examples_per_epoch)]
                  if config.verbose == 1 else []),
                backup,  # restored before the caller's callbacks begin, saved before they end
                tf.keras.callbacks.TensorBoard(str(output / "logs"), profile_batch=0),
                throughput,
                *callbacks,
                # last: a caller's callback may end training on other weights
                # (EarlyStopping's restore_best_weights), the trained model, on disk as in
                # memory; it deletes the backup once they are written
                FinalCheckpoint(str(latest), backup),
            ],
        )
    return TrainResult(model=model, output_dir=output, checkpoint=latest,
                       history={k: [float(v) for v in vs] for k, vs in history.history.items()},
                       examples_per_second=throughput.examples_per_second,
                       epochs_run=len(throughput.durations), epochs_configured=config.epochs,
                       history_epochs=[epoch + 1 for epoch in history.epoch])


# --- TFRecord input (``tfmmrec prepare`` → ``train.tfrecords``) ------------------------------


def tfrecord_dataset(directory: str, batch_size: int, seed: int, columns=("user_id",
                     "item_index")) -> tuple[tf.data.Dataset, int]:
    """Training batches streamed from prepared shards, and the number of examples per epoch."""
    from tfmmrec.data.tfrecords import interactions_dataset, load_manifest

    manifest = load_manifest(directory)
    dataset = interactions_dataset(manifest, "train", batch_size, seed=seed, columns=columns,
                                   num_workers=num_workers())
    return dataset, manifest.count("train")


