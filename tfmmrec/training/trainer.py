"""Training: the input pipeline and the Keras fit loop (checkpoint per epoch, resume, TensorBoard).

Resume uses Keras' ``BackupAndRestore``: an interrupted ``fit`` leaves its backup behind and the
same command continues from the last finished epoch; a completed run removes it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmmrec.config import TrainConfig
from tfmmrec.errors import TrainingError

logger = logging.getLogger(__name__)

MIN_FREE_BYTES = 200 * 2**20


@dataclass
class TrainResult:
    """What a training run produced and where."""

    model: tf.keras.Model
    output_dir: Path
    checkpoint: Path
    history: dict[str, list[float]] = field(default_factory=dict)
    examples_per_second: float = 0.0
    epochs_run: int = 0
    workspace: Any = None  # what the caller built the model from; opaque to the trainer


def interactions_dataset(interactions: pd.DataFrame, batch_size: int, seed: int,
                         shuffle: bool = True,
                         extra: dict[str, np.ndarray] | None = None) -> tf.data.Dataset:
    """(user_id, item_index[, extra features]) examples, reshuffled each epoch, batched to the
    global batch size."""
    data = {
        "user_id": interactions["user_id"].astype(str).to_numpy(),
        "item_index": interactions["item_index"].to_numpy(np.int32),
        **(extra or {}),
    }
    dataset = tf.data.Dataset.from_tensor_slices(data).cache()
    if shuffle:
        dataset = dataset.shuffle(len(interactions), seed=seed, reshuffle_each_iteration=True)
    # Equal-sized batches: the in-batch softmax sees the same number of negatives every step,
    # and a fixed shape suits TPUs. Reshuffling means no example is dropped for good.
    drop = shuffle and len(interactions) >= batch_size
    return dataset.batch(batch_size, drop_remainder=drop).prefetch(tf.data.AUTOTUNE)


def check_writable(directory: Path) -> None:
    """Fail before training starts if results could not be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise TrainingError(f"cannot write to train.output_dir={directory}: {exc}. Choose a "
                            "writable directory.") from None
    free = shutil.disk_usage(directory).free
    if free < MIN_FREE_BYTES:
        raise TrainingError(f"only {free / 2**20:.0f} MiB free at {directory}; training needs at "
                            f"least {MIN_FREE_BYTES / 2**20:.0f} MiB for checkpoints and logs")


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


def optimizer(config: TrainConfig) -> tf.keras.optimizers.Optimizer:
    return {
        "adam": tf.keras.optimizers.Adam,
        "adagrad": tf.keras.optimizers.Adagrad,
        "sgd": tf.keras.optimizers.SGD,
    }[config.optimizer](learning_rate=config.learning_rate)


def fit(build_model: Callable[[], tf.keras.Model], dataset: tf.data.Dataset,
        num_examples: int, config: TrainConfig, strategy: tf.distribute.Strategy,
        callbacks: Sequence[tf.keras.callbacks.Callback] = ()) -> TrainResult:
    """Build the model under ``strategy``, train with resume/checkpoints/TensorBoard."""
    output = Path(config.output_dir)
    check_writable(output)
    steps = max(1, num_examples // config.batch_size)
    with strategy.scope():
        model = build_model()
        model.build_from_example()
        model.compile(optimizer=optimizer(config), steps_per_execution=min(16, steps))
    latest = output / "checkpoints" / "latest"
    throughput = _Throughput(num_examples)
    history = model.fit(
        dataset,
        epochs=config.epochs,
        verbose=config.verbose,
        callbacks=[
            tf.keras.callbacks.BackupAndRestore(str(output / "backup")),
            tf.keras.callbacks.ModelCheckpoint(str(latest), save_weights_only=True),
            tf.keras.callbacks.TensorBoard(str(output / "logs"), profile_batch=0),
            throughput,
            *callbacks,
        ],
    )
    return TrainResult(model=model, output_dir=output, checkpoint=latest,
                       history={k: [float(v) for v in vs] for k, vs in history.history.items()},
                       examples_per_second=throughput.examples_per_second,
                       epochs_run=len(throughput.durations))
