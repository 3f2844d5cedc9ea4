"""Tests for tfmmrec.training: input pipeline, strategies, the fit loop, checkpoints and resume."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml

from tests.conftest import derive_config
from tfmmrec import pipeline
from tfmmrec.config import TrainConfig, load_config
from tfmmrec.errors import ConfigError, TrainingError
from tfmmrec.training import trainer
from tfmmrec.training.strategy import make_strategy

INTERACTIONS = pd.DataFrame({"user_id": [f"u{i % 7}" for i in range(50)],
                             "item_index": np.arange(50) % 11})


class Interrupt(tf.keras.callbacks.Callback):
    """Simulates a crash (or Ctrl-C) right after the first epoch has finished (user callbacks
    run after the backup's ``on_epoch_end``)."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("simulated interruption")


def backup_files(output) -> list:
    """Files of the BackupAndRestore state (Keras may leave the empty folder)."""
    return [p for p in (output / "backup").rglob("*") if p.is_file()]


def unwritable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    return blocker / "run"


# --- input pipeline -------------------------------------------------------------------------


def test_training_batches_are_full_and_shuffled_per_epoch():
    dataset = trainer.dataframe_dataset(INTERACTIONS, batch_size=16, seed=0)
    epochs = [[b["item_index"].numpy() for b in dataset] for _ in range(2)]
    assert [len(b) for b in epochs[0]] == [16, 16, 16]  # remainder dropped: fixed negatives
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))
    first = next(iter(dataset))
    assert first["user_id"].dtype == tf.string and first["item_index"].dtype == tf.int32


def test_unshuffled_dataset_yields_every_example_once_in_order():
    dataset = trainer.dataframe_dataset(INTERACTIONS, batch_size=16, seed=0, shuffle=False)
    items = np.concatenate([b["item_index"].numpy() for b in dataset])
    np.testing.assert_array_equal(items, INTERACTIONS["item_index"].to_numpy())


def test_fewer_examples_than_a_batch_still_train():
    dataset = trainer.dataframe_dataset(INTERACTIONS.head(5), batch_size=16, seed=0)
    assert [len(b["user_id"]) for b in dataset] == [5]


def test_each_epoch_is_a_seeded_permutation_of_distinct_examples():
    """Row ids as the item index: an epoch holds 48 distinct rows (one remainder of 2 dropped),
    and the same seed gives the same epochs (every worker shuffles the same way)."""
    frame = pd.DataFrame({"user_id": ["u"] * 50, "item_index": np.arange(50)})

    def epochs(seed):
        dataset = trainer.dataframe_dataset(frame, batch_size=16, seed=seed)
        return [np.concatenate([b["item_index"].numpy() for b in dataset]) for _ in range(3)]

    first = epochs(0)
    for epoch in first:
        assert len(epoch) == 48 and len(set(epoch.tolist())) == 48
    assert len({tuple(e) for e in first}) == 3  # a new order every epoch
    for a, b in zip(first, epochs(0), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], epochs(1)[0])


def test_batches_carry_every_per_example_feature_row_aligned():
    extra = {"rating": np.arange(50, dtype=np.float32) / 10,
             "history": np.arange(150, dtype=np.int64).reshape(50, 3)}
    frame = pd.DataFrame({"user_id": [f"u{i}" for i in range(50)], "item_index": np.arange(50)})
    for batch in trainer.dataframe_dataset(frame, batch_size=16, seed=0, extra=extra):
        rows = batch["item_index"].numpy()
        np.testing.assert_array_equal(batch["user_id"].numpy(),
                                      [f"u{i}".encode() for i in rows])
        np.testing.assert_allclose(batch["rating"].numpy(), rows / 10)
        np.testing.assert_array_equal(batch["history"].numpy(), extra["history"][rows])


def test_features_with_unequal_row_counts_are_rejected():
    with pytest.raises(ValueError, match="one row per example"):
        trainer.batched_examples({"a": np.zeros(3), "b": np.zeros(4)}, 2, seed=0)


def test_workers_sharding_the_batches_partition_each_epoch():
    """Each worker (its own process: its own dataset) builds the pipeline with the same seed and
    keeps every 2nd batch: together they see each example once."""
    frame = pd.DataFrame({"user_id": ["u"] * 64, "item_index": np.arange(64)})

    def share(worker):
        dataset = trainer.dataframe_dataset(frame, batch_size=8, seed=3).shard(2, worker)
        return np.concatenate([b["item_index"].numpy() for b in dataset])

    shares = [share(worker) for worker in range(2)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(64))


def test_user_indices_match_the_query_towers_lookup():
    from tfmmrec.towers.query import user_lookup

    vocabulary = ["u3", "u1", "u7"]
    ids = np.array(["u7", "u3", "nobody", "u1", "u7"])
    expected = user_lookup(vocabulary)(tf.constant(ids)).numpy()
    np.testing.assert_array_equal(pipeline.user_indices(ids, vocabulary), expected)
    assert expected.tolist() == [3, 1, 0, 2, 3]


# --- strategies and optimisers --------------------------------------------------------------


def test_default_strategy_and_mirrored_on_cpu():
    assert make_strategy("default") is tf.distribute.get_strategy()
    assert make_strategy("mirrored").num_replicas_in_sync >= 1


def test_unknown_strategy_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train\.strategy='gpu' is not supported"):
        make_strategy("gpu")


@pytest.mark.parametrize("name", ["adam", "adagrad", "sgd"])
def test_optimizer_follows_config(name):
    optimizer = trainer.optimizer(TrainConfig(optimizer=name, learning_rate=0.02))
    assert type(optimizer).__name__.lower() == name
    assert float(optimizer.learning_rate) == pytest.approx(0.02)


# --- output directory -----------------------------------------------------------------------


def test_unwritable_output_dir_is_a_training_error_naming_it(tmp_path):
    with pytest.raises(TrainingError, match=r"cannot write to train\.output_dir=.*a-file/run"):
        trainer.check_writable(unwritable(tmp_path))


def test_writable_output_dir_check_leaves_nothing_behind(tmp_path):
    trainer.check_writable(tmp_path / "new" / "run")
    assert list((tmp_path / "new" / "run").iterdir()) == []


def test_fit_checks_output_dir_before_building_the_model(tmp_path):
    def build_model():
        raise AssertionError("model built before the output directory was checked")

    config = TrainConfig(output_dir=str(unwritable(tmp_path)))
    with pytest.raises(TrainingError, match="cannot write"):
        trainer.fit(build_model, None, 10, config, make_strategy("default"))


def test_train_checks_output_dir_before_loading_data_or_encoding(tmp_path, monkeypatch):
    def prepare(*args, **kwargs):
        raise AssertionError("prepared (encoded the catalogue) before checking the output dir")

    monkeypatch.setattr(pipeline, "prepare", prepare)
    config = load_config(None, [f"train.output_dir={unwritable(tmp_path)}"])
    with pytest.raises(TrainingError, match="cannot write"):
        pipeline.train(config)


# --- a finished run -------------------------------------------------------------------------


def test_finished_run_leaves_checkpoint_logs_config_and_run_record(tiny_trained, tiny_config):
    out = tiny_trained.output_dir
    assert tiny_trained.epochs_run == 2
    assert tiny_trained.checkpoint == out / "checkpoints" / "latest"
    assert (out / "checkpoints" / "latest.index").is_file()
    assert any((out / "logs").rglob("events.out.tfevents.*"))
    assert backup_files(out) == []  # a completed run removes its resume state
    assert yaml.safe_load((out / "config.yaml").read_text()) == tiny_config.to_dict()
    run = json.loads((out / "run.json").read_text())
    assert run["modalities"] == ["text", "image", "audio"]
    assert run["num_items"] == 80 and len(run["history"]["loss"]) == 2
    assert run["examples_per_second"] == tiny_trained.examples_per_second
    assert run["history"] == tiny_trained.history


def test_throughput_counts_the_epochs_after_the_first(monkeypatch):
    """Epoch 1 includes tracing; the speed is examples over the steady epochs' wall time."""
    clock = iter([0.0, 10.0, 10.0, 12.0, 12.0, 16.0])  # epochs of 10 s, 2 s, 4 s
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: next(clock))
    throughput = trainer._Throughput(examples_per_epoch=600)
    for epoch in range(3):
        throughput.on_epoch_begin(epoch)
        throughput.on_epoch_end(epoch)
    assert throughput.durations == [10.0, 2.0, 4.0]
    assert throughput.examples_per_second == 600 * 2 / 6.0
    single = trainer._Throughput(examples_per_epoch=50)
    single.durations = [5.0]
    assert single.examples_per_second == 10.0  # one epoch: that epoch is all there is


def test_backups_wait_for_backup_seconds_between_them(monkeypatch):
    """Epochs end at 10, 20, 35, 50 and 100 s; with 30 s between backups, the epochs ending at
    35 s (35 s after the start) and 100 s (65 s after that) are backed up, and 0 means every
    epoch."""
    saved = []
    monkeypatch.setattr(tf.keras.callbacks.BackupAndRestore, "on_train_begin",
                        lambda self, logs=None: None)
    monkeypatch.setattr(tf.keras.callbacks.BackupAndRestore, "on_epoch_end",
                        lambda self, epoch, logs=None: saved.append(epoch))
    for seconds, expected in ((30, [2, 4]), (0, [0, 1, 2, 3, 4])):
        saved.clear()
        clock = iter([0.0, 10.0, 20.0, 35.0, 50.0, 100.0])
        monkeypatch.setattr(trainer.time, "monotonic", lambda clock=clock: next(clock))
        backup = trainer.PeriodicBackup("unused", seconds)
        backup.on_train_begin()
        for epoch in range(5):
            backup.on_epoch_end(epoch)
        assert saved == expected


def test_default_backups_are_periodic_and_an_early_interruption_restarts(tiny_config,
                                                                       tiny_workspace,
                                                                       tmp_path):
    """With the default ``train.backup_seconds`` a tiny run's epochs (well under a second) are
    not backed up: an interruption after the first epoch leaves nothing to resume, and the
    same command trains from the start."""
    config = derive_config(tiny_config, tmp_path, "train.epochs=2", "train.backup_seconds=60")
    with pytest.raises(RuntimeError, match="simulated interruption"):
        pipeline.train(config, workspace=tiny_workspace, callbacks=[Interrupt()],
                       progress=False)
    assert backup_files(tmp_path / "run") == []
    result = pipeline.train(config, workspace=tiny_workspace, progress=False)
    assert result.epochs_run == 2


class InterruptAfterLastBackup(tf.keras.callbacks.Callback):
    """A crash after the last epoch's backup, before the run's final checkpoint (written last,
    after the caller's callbacks end training: ``trainer.fit``)."""

    def on_train_end(self, logs=None):
        raise RuntimeError("simulated interruption")


def test_a_run_resumed_with_no_epoch_left_still_writes_its_checkpoint(tiny_config,
                                                                     tiny_workspace, tmp_path,
                                                                     caplog):
    config = derive_config(tiny_config, tmp_path, "train.epochs=2")
    with pytest.raises(RuntimeError, match="simulated interruption"):
        pipeline.train(config, workspace=tiny_workspace,
                       callbacks=[InterruptAfterLastBackup()], progress=False)
    output = tmp_path / "run"
    assert backup_files(output) and not list((output / "checkpoints").glob("latest*"))
    with caplog.at_level(logging.INFO, logger="tfmmrec"):
        result = pipeline.train(config, workspace=tiny_workspace, progress=False)
    assert result.epochs_run == 0  # every epoch came from the backup
    # said as such: it used to read "2 epoch(s) done, training on from epoch 3 of 2"
    assert "all 2 epoch(s) were done; only the final checkpoint is written" in caplog.text
    assert "from epoch 3 of 2" not in caplog.text
    assert (output / "checkpoints" / "latest.index").is_file()
    assert backup_files(output) == []
    restored, _ = pipeline.restore(output, config, workspace=tiny_workspace)
    for a, b in zip(restored.get_weights(), result.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_interrupted_training_resumes_from_the_backup(tiny_config, tiny_workspace, tmp_path,
                                                      caplog):
    config = derive_config(tiny_config, tmp_path, "train.epochs=3")
    with pytest.raises(RuntimeError, match="simulated interruption"):
        pipeline.train(config, workspace=tiny_workspace, callbacks=[Interrupt()],
                       progress=False)
    output = tmp_path / "run"
    assert backup_files(output)
    assert not (output / "run.json").exists()
    # the checkpoint is the finished run's weights: an interrupted run writes none
    assert not list((output / "checkpoints").glob("latest*"))
    # evaluating it says what happened and what to do, not "train first"
    with pytest.raises(TrainingError, match=r"was interrupted before it finished .*run train "
                                            r"again with the same config to resume it"):
        pipeline.check_restorable(output)

    with caplog.at_level(logging.INFO, logger="tfmmrec"):
        result = pipeline.train(config, workspace=tiny_workspace, progress=False)
    assert "1 epoch(s) done, training on from epoch 2 of 3" in caplog.text
    assert result.epochs_run == 2  # epochs 2 and 3; epoch 1 came from the backup
    assert len(result.history["loss"]) == 2
    assert (output / "checkpoints" / "latest.index").is_file()
    assert (output / "run.json").is_file()
    assert backup_files(output) == []


def test_a_resumed_run_builds_its_in_memory_batches_once(tiny_config, tiny_workspace, tmp_path,
                                                        monkeypatch):
    """A run resumed at epoch 2 batches its in-memory examples once, for epochs 2 and 3. It
    used to build them for epochs 1-3 first and then again from the backup's epoch (every
    feature array copied into tensors twice, and the listwise lists sampled twice)."""
    config = derive_config(tiny_config, tmp_path, "train.epochs=3")
    with pytest.raises(RuntimeError, match="simulated interruption"):
        pipeline.train(config, workspace=tiny_workspace, callbacks=[Interrupt()],
                       progress=False)
    built = []
    batched_examples = pipeline.batched_examples

    def spy(*args, epochs=None, **kwargs):
        built.append(None if epochs is None else list(epochs))
        return batched_examples(*args, epochs=epochs, **kwargs)

    monkeypatch.setattr(pipeline, "batched_examples", spy)
    result = pipeline.train(config, workspace=tiny_workspace, progress=False)
    assert result.epochs_run == 2
    assert built == [[1, 2]]  # one build, of the epochs (0-based) the resumed run trains


def test_train_gives_the_same_model_whether_it_prepares_or_is_given_the_workspace(
        tiny_config, tmp_path):
    """`tfmmrec train` prepares inside `train`; `tfmmrec demo` and notebooks prepare first and
    pass the workspace. Preparing draws from the global generators, so the model started
    from another state (demo config: first-epoch loss 902.36 vs 901.22); `train` re-seeds."""
    def first_loss(name, given_workspace):
        config = derive_config(tiny_config, tmp_path / name, "train.epochs=1",
                               "train.early_stopping=false")
        workspace = pipeline.prepare(config, progress=False) if given_workspace else None
        result = pipeline.train(config, workspace=workspace, progress=False)
        return result.history["loss"][0]

    prepared_inside = first_loss("inside", False)
    given = first_loss("given", True)
    np.testing.assert_allclose(given, prepared_inside, rtol=1e-5)


def test_a_diverging_run_fails_naming_the_loss_and_saves_nothing(tiny_config, tiny_workspace,
                                                                 tmp_path):
    # Adam moves each weight by about the learning rate per step: at 1e30 the embeddings
    # overflow float32 within the first epoch and the loss is NaN
    config = derive_config(tiny_config, tmp_path, "train.epochs=2", "train.learning_rate=1e30",
                           "train.backup_seconds=0")
    with pytest.raises(TrainingError, match=r"training loss became (nan|inf) in epoch 1; "
                                            r"nothing of that epoch was saved"):
        pipeline.train(config, workspace=tiny_workspace, progress=False)
    output = tmp_path / "run"
    assert not list((output / "checkpoints").glob("latest*")) and backup_files(output) == []


def test_the_non_finite_loss_check_passes_finite_losses():
    check = trainer.StopOnNonFiniteLoss(0.01)
    check.on_epoch_end(0, {"loss": 3.5})
    check.on_epoch_end(0, {})
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(TrainingError, match=r"train\.learning_rate \(now 0\.01\)"):
            check.on_epoch_end(0, {"loss": bad})
