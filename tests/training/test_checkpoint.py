"""Loading a run's checkpoint: a damaged one is one clear error, never a reader's traceback."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfmmrec.errors import TrainingError
from tfmmrec.training.checkpoint import load_exactly
from tfmmrec.training.trainer import PeriodicBackup


def _model() -> tf.keras.Model:
    model = tf.keras.Sequential([tf.keras.Input([4]), tf.keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def _truncate(files) -> None:
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_truncated_checkpoint_is_named_not_a_traceback(tmp_path):
    _model().save_weights(str(tmp_path / "latest"))
    _truncate(tmp_path.glob("latest.data-*"))
    with pytest.raises(TrainingError, match=r"cannot read the checkpoint .*latest: .*damaged, "
                                            r"truncated or missing"):
        load_exactly(_model(), tmp_path / "latest")


def test_an_unreadable_backup_names_its_folder_and_what_to_do(tmp_path):
    backup = tmp_path / "backup"
    x, y = np.zeros((8, 4), np.float32), np.zeros((8, 3), np.float32)

    class Interrupt(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt  # after the backup of epoch 1 (the callback before this)

    with pytest.raises(KeyboardInterrupt):
        _model().fit(x, y, epochs=3, verbose=0,
                     callbacks=[PeriodicBackup(str(backup), 0), Interrupt()])
    _truncate(backup.rglob("*.data-*"))
    with pytest.raises(TrainingError, match=r"the backup of the interrupted run in .*backup "
                                            r"cannot be read .*delete .*backup to train"):
        _model().fit(x, y, epochs=3, verbose=0, callbacks=[PeriodicBackup(str(backup), 0)])
