"""Resilience: ``kill -9`` during training, cache build, ``prepare`` and export, and full/unwritable
disks. Each kill is a real SIGKILL of a child process at a chosen point (no cleanup runs); the
test then checks what a later run sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import TINY_TOWERS, derive_config
from tfmmrec import cli, pipeline
from tfmmrec.config import DemoConfig, load_config, model_sections
from tfmmrec.data import tfrecords
from tfmmrec.data.demo import build_demo_dataset
from tfmmrec.errors import ConfigError, DataError, ExportError, TrainingError
from tfmmrec.export.loader import ExportedModel, latest_version
from tfmmrec.towers.cache import FeatureCache, content_keys, encode_catalog
from tfmmrec.towers.encoders import build_encoder
from tfmmrec.training import trainer

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 300


def run_until_killed(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter that is expected to SIGKILL itself."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env,
                            cwd=REPO, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert result.returncode == -signal.SIGKILL, (
        f"the child was not killed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result



def records(path: str) -> list[tf.train.Example]:
    """A shard's records, parsed (serialised protos need not be byte-identical)."""
    return [tf.train.Example.FromString(record)
            for record in tf.data.TFRecordDataset(path).as_numpy_iterator()]


# --- kill -9 during training, then the same command again -----------------------------------

KILL_TRAINING = """
    import os, signal, sys
    import numpy as np
    import tfmmrec  # noqa: F401
    import tensorflow as tf
    from tfmmrec import cli, pipeline

    class KillDuringEpoch(tf.keras.callbacks.Callback):
        '''Save the state at the end of epoch ``epoch - 1`` (what the backup holds), then
        SIGKILL after the first steps of epoch ``epoch`` (0-based), before its backup.'''

        def __init__(self, epoch, state_path):
            super().__init__()
            self.epoch, self.current, self.state_path = epoch, -1, state_path

        def on_epoch_begin(self, epoch, logs=None):
            self.current = epoch

        def on_epoch_end(self, epoch, logs=None):
            if epoch == self.epoch - 1:
                np.savez(self.state_path, iterations=self.model.optimizer.iterations.numpy(),
                         **{f"w{i}": w.numpy() for i, w in enumerate(self.model.weights)})

        def on_train_batch_end(self, batch, logs=None):
            if self.current == self.epoch:
                os.kill(os.getpid(), signal.SIGKILL)

    fit = pipeline.fit
    pipeline.fit = lambda *a, **k: fit(
        *a[:5], (*a[5], KillDuringEpoch(int(sys.argv[2]), sys.argv[3])), **k)
    sys.exit(cli.main(["-q", "train", "--config", sys.argv[1]]))
"""

EPOCHS, KILLED_IN = 6, 3


class RecordStart(tf.keras.callbacks.Callback):
    """The state a (resumed) ``fit`` starts from: after ``BackupAndRestore`` restored it."""

    def __init__(self):
        super().__init__()
        self.state: dict[str, np.ndarray] = {}

    def on_train_begin(self, logs=None):
        self.state = {"iterations": self.model.optimizer.iterations.numpy(),
                      **{f"w{i}": w.numpy() for i, w in enumerate(self.model.weights)}}


def metrics_of(config, model, ws) -> dict[str, dict[str, float]]:
    return pipeline.evaluate(config, model=model, workspace=ws, write=False)


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    """150 users and 1,800 interactions: enough test users for metrics to mean something."""
    root = tmp_path_factory.mktemp("small")
    data = build_demo_dataset(root / "data", DemoConfig(num_items=120, num_users=150,
                                                        interactions_per_user=12, seed=0))
    return load_config(None, [*TINY_TOWERS, f"data.path={data}", f"train.epochs={EPOCHS}",
                              "train.batch_size=64", f"train.cache_dir={root / 'cache'}",
                              f"train.output_dir={root / 'run'}"])


@pytest.fixture(scope="module")
def small_workspace(small_config):
    return pipeline.prepare(small_config, progress=False)


@pytest.fixture(scope="module")
def killed_and_resumed(small_config, small_workspace, tmp_path_factory):
    root = tmp_path_factory.mktemp("kill-train")
    config = derive_config(small_config, root)
    config.to_yaml(root / "config.yaml")
    run_until_killed(KILL_TRAINING, str(root / "config.yaml"), str(KILLED_IN),
                     str(root / "before-kill.npz"))
    backup = [p.name for p in (root / "run" / "backup").rglob("*") if p.is_file()]
    had_run_record = (root / "run" / "run.json").exists()
    start = RecordStart()
    fit = pipeline.fit
    pipeline.fit = lambda *a, **k: fit(*a[:5], (*a[5], start), **k)
    try:
        assert cli.main(["-q", "train", "--config", str(root / "config.yaml")]) == 0
    finally:
        pipeline.fit = fit
    model, ws = pipeline.restore(config.train.output_dir, config, workspace=small_workspace)
    with np.load(root / "before-kill.npz") as saved:
        before_kill = dict(saved)
    uninterrupted = pipeline.train(derive_config(small_config, root / "uninterrupted"),
                                   workspace=small_workspace, progress=False)
    return {"config": config, "backup": backup, "had_run_record": had_run_record,
            "run": json.loads((root / "run" / "run.json").read_text()),
            "before_kill": before_kill, "resumed_from": start.state,
            "metrics": metrics_of(config, model, ws), "weights": model.get_weights(),
            "uninterrupted": {"loss": uninterrupted.history["loss"],
                              "weights": uninterrupted.model.get_weights()}}


def test_kill_9_leaves_a_backup_and_no_run_record(killed_and_resumed):
    assert killed_and_resumed["backup"]  # the last finished epoch's state survived the kill
    assert not killed_and_resumed["had_run_record"]


def test_the_same_command_resumes_from_the_last_finished_epoch(killed_and_resumed):
    history = killed_and_resumed["run"]["history"]["loss"]
    assert len(history) == EPOCHS - KILLED_IN  # epochs 4..6 only: 1..3 came from the backup
    assert killed_and_resumed["run"]["history_epochs"] == list(range(KILLED_IN + 1, EPOCHS + 1))
    output = Path(killed_and_resumed["config"].train.output_dir)
    assert (output / "checkpoints" / "latest.index").is_file()
    assert not [p for p in (output / "backup").rglob("*") if p.is_file()]


def test_resume_restores_exactly_the_state_of_the_last_finished_epoch(killed_and_resumed):
    """Exact restore equivalence, a bound a real bug crosses: the resumed ``fit`` starts from
    bit-identical weights (every variable: towers, fusion, content tables) and the same
    optimizer step count as the killed process had at the end of its last finished epoch.
    Restoring an older or partial backup, re-initialising a layer or losing the optimizer's
    step count fails here.

    The rest of the run is compared with an uninterrupted one below.
    """
    before, resumed = killed_and_resumed["before_kill"], killed_and_resumed["resumed_from"]
    assert sorted(before) == sorted(resumed)
    assert int(before["iterations"]) > 0
    assert int(resumed["iterations"]) == int(before["iterations"])
    for name, value in before.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def test_the_resumed_run_ends_as_an_uninterrupted_one(killed_and_resumed):
    """Epochs 4-6 after the kill read the batches and draw the dropout masks epochs 4-6 of an
    uninterrupted run do (batch order from (seed, epoch), random streams from the backup), so
    they reach its losses and weights, up to float rounding across processes. Before, a
    resumed run re-drew both and ended as another seed would."""
    reference = killed_and_resumed["uninterrupted"]
    np.testing.assert_allclose(killed_and_resumed["run"]["history"]["loss"],
                               reference["loss"][KILLED_IN:], rtol=1e-5)
    for resumed, uninterrupted in zip(killed_and_resumed["weights"], reference["weights"],
                                      strict=True):
        np.testing.assert_allclose(resumed, uninterrupted, rtol=1e-4, atol=1e-5)


def test_the_resumed_run_learned(killed_and_resumed):
    metrics = killed_and_resumed["metrics"]
    assert metrics["tfmmrec"]["recall@20"] > metrics["random"]["recall@20"] + 0.05


@pytest.fixture(scope="module")
def early_stopping_killed_and_resumed(small_config, small_workspace, tmp_path_factory):
    """The same kill in the early-stopping run (its first ``fit``), then the same command."""
    root = tmp_path_factory.mktemp("kill-early-stopping")
    overrides = ("train.early_stopping=true", f"train.early_stopping_patience={EPOCHS}",
                 "train.backup_seconds=0")
    config = derive_config(small_config, root, *overrides)
    config.to_yaml(root / "config.yaml")
    run_until_killed(KILL_TRAINING, str(root / "config.yaml"), str(KILLED_IN),
                     str(root / "before-kill.npz"))
    assert cli.main(["-q", "train", "--config", str(root / "config.yaml")]) == 0
    # the finished run leaves no choice behind for a later run to resume from
    assert not list(Path(config.train.output_dir).glob(f"*/{pipeline.CHOICE_FILE}"))
    uninterrupted = derive_config(small_config, root / "uninterrupted", *overrides)
    pipeline.train(uninterrupted, workspace=small_workspace, progress=False)
    return [json.loads((Path(c.train.output_dir) / "run.json").read_text())["early_stopping"]
            for c in (config, uninterrupted)]


def test_a_resumed_early_stopping_run_chooses_as_an_uninterrupted_one(
        early_stopping_killed_and_resumed):
    """It chose among the epochs it ran after the kill alone (a review's "best epoch 12 of 5"):
    an epoch before the backup could never be chosen."""
    resumed, uninterrupted = early_stopping_killed_and_resumed
    assert resumed["curve_epochs"] == uninterrupted["curve_epochs"] == list(range(1, EPOCHS + 1))
    np.testing.assert_allclose(resumed["curve"], uninterrupted["curve"], atol=1e-6)
    assert resumed["best_epoch"] == uninterrupted["best_epoch"]


@pytest.mark.parametrize("left", [
    "backup/chief/", "early-stopping/backup/chief/", "early-stopping/carve-1/backup/chief/",
    "fusion-selection/backup/chief/", f"early-stopping/{pipeline.VALIDATION_STATE}",
    f"early-stopping/{pipeline.CHOICE_FILE}"])
def test_resuming_with_other_training_settings_is_refused(tiny_config, tiny_workspace,
                                                          tmp_path, left):
    """An interrupted run (its record and a backup) resumed with another seed and learning
    rate would follow neither configuration: refused before any training, naming both
    values, and the run's record is left as it started. Wherever the run was interrupted:
    one killed inside early stopping or fusion selection (only their own folders hold its
    state) was taken for a new run and trained on with the new settings without a word."""
    output = tmp_path / "run"
    config = load_config(tiny_config, [f"train.output_dir={output}"])
    config.to_yaml(output / pipeline.CONFIG_FILE)
    config.to_yaml(output / "checkpoints" / pipeline.MODEL_SPEC_FILE, sections=model_sections())
    state = output / left  # what an interrupted run leaves
    if left.endswith("/"):
        state.mkdir(parents=True)
    else:
        state.parent.mkdir(parents=True)
        state.write_text("{}")
    changed = load_config(config, ["train.seed=7", "train.learning_rate=0.05"])
    with pytest.raises(ConfigError, match=r"train\.learning_rate: 0\.01 when it started, 0\.05 "
                                          r"requested; train\.seed: 0 when it started, 7"):
        pipeline.train(changed, workspace=tiny_workspace, progress=False)
    assert load_config(output / pipeline.CONFIG_FILE).train.seed == config.train.seed


class StopBeforeTheFirstEpoch(tf.keras.callbacks.Callback):
    """A kill after a selection step's choice is kept, before the next fit's first backup
    (the caller's callbacks go to the final fit only)."""

    def on_epoch_begin(self, epoch, logs=None):
        raise RuntimeError("killed before the final fit's first backup")


def test_a_run_interrupted_between_its_steps_resumes_to_the_uninterrupted_model(
        tiny_config, tiny_workspace, tmp_path):
    """Before: the steps after the first drew from the generators' state the steps before
    them left, and a resumed run skips the steps it had finished (their choices are kept), so
    its final fit started from another state: the same choices, other weights (a review: 23 of
    30 variables differed). Every step now starts from the seed."""
    overrides = ("train.epochs=3", "train.early_stopping=true",
                 "train.early_stopping_patience=3", "train.backup_seconds=0")
    config = derive_config(tiny_config, tmp_path / "resumed", *overrides)
    with pytest.raises(RuntimeError, match="before the final fit's first backup"):
        pipeline.train(config, workspace=tiny_workspace, progress=False,
                       callbacks=[StopBeforeTheFirstEpoch()])
    assert pipeline.interrupted_run(Path(config.train.output_dir))
    resumed = pipeline.train(config, workspace=tiny_workspace, progress=False)
    uninterrupted = pipeline.train(derive_config(tiny_config, tmp_path / "whole", *overrides),
                                   workspace=tiny_workspace, progress=False)
    for a, b in zip(resumed.model.get_weights(), uninterrupted.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_diverged_run_keeps_no_resume_state(tiny_config, tiny_workspace, tmp_path,
                                             monkeypatch):
    """The NaN-loss error advises a lower learning rate, which the next run then refused: the
    diverged run's backups made it an interrupted run that resumes only with its own settings
    (and resuming them would diverge again)."""
    from tfmmrec.training.trainer import DivergedLoss

    output = tmp_path / "run"
    config = load_config(tiny_config, [f"train.output_dir={output}"])

    def diverge(*_, **__):
        for left in ("backup/chief", "early-stopping/backup/chief", "fusion-selection/backup"):
            (output / left).mkdir(parents=True)
        (output / "early-stopping" / pipeline.CHOICE_FILE).write_text("{}")
        raise DivergedLoss("the training loss became nan in epoch 3; ...")

    monkeypatch.setattr(pipeline, "_train", diverge)
    with pytest.raises(DivergedLoss, match=r"in epoch 3; \.\.\.; the run's backups were "
                                           r"removed, so the next run starts afresh"):
        pipeline.train(config, workspace=tiny_workspace, progress=False)
    assert not pipeline.interrupted_run(output)
    assert not (output / "backup").exists() and not (output / "early-stopping").exists()


def test_a_selection_step_keeps_its_choice_for_a_resumed_run_only(tmp_path):
    """A run killed in its final fit redid every early-stopping epoch on resume (and could
    choose another epoch count than its backup was trained for): the choice is kept in the
    step's folder until the run finishes, and read back only by a resumed run."""
    calls = []

    def select():
        calls.append(1)
        return {"best_epoch": 4, "linear_cf": "ease"}

    folder = tmp_path / "early-stopping"
    folder.mkdir()
    assert pipeline._choice(folder, False, True, select) == {"best_epoch": 4, "linear_cf": "ease"}
    assert json.loads((folder / pipeline.CHOICE_FILE).read_text())["best_epoch"] == 4
    assert pipeline.interrupted_run(tmp_path)  # a choice without a finished run: interrupted
    (folder / pipeline.CHOICE_FILE).write_text(json.dumps({"best_epoch": 2, "linear_cf": "x"}))
    assert pipeline._choice(folder, True, True, select)["best_epoch"] == 2 and len(calls) == 1
    assert pipeline._choice(folder, False, True, select)["best_epoch"] == 4  # a new run selects
    assert len(calls) == 2
    (folder / pipeline.CHOICE_FILE).write_text("{not json")  # damaged: select again
    assert pipeline._choice(folder, True, True, select)["best_epoch"] == 4 and len(calls) == 3


def test_two_runs_into_one_output_dir_cannot_run_at_once(tmp_path):
    refused = pytest.raises(TrainingError, match=r"another training run is writing to "
                                                 r"train\.output_dir=")
    with trainer.exclusive_run(tmp_path / "run"), refused, trainer.exclusive_run(tmp_path / "run"):
        pass
    with trainer.exclusive_run(tmp_path / "run"):  # released when the first run ends
        pass


# --- kill -9 while the feature cache is being written ---------------------------------------

KILL_CACHE = """
    import os, signal, sys
    import numpy as np
    import tfmmrec  # noqa: F401
    from tfmmrec.config import load_config
    from tfmmrec.data.dataset import load_dataset
    from tfmmrec.towers import cache
    from tfmmrec.towers.encoders import build_encoder

    real_savez = np.savez

    def savez_then_die(handle, **arrays):  # the atomic writer's temporary file
        real_savez(handle, **arrays)
        handle.truncate(handle.tell() // 2)  # half the bytes reached the disk, then the kill
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    cache.np.savez = savez_then_die
    config = load_config(sys.argv[1])
    dataset = load_dataset(config.data)
    encoder = build_encoder("text", config.text, list(dataset.catalog.texts))
    cache.encode_catalog(dataset.catalog, encoder, sys.argv[2], batch_size=16, progress=False)
"""


def test_kill_during_cache_write_never_leaves_an_entry_that_is_used(tiny_config, tiny_workspace,
                                                                   tmp_path):
    """Killed while saving 40 new features next to 40 cached ones: the old file stays whole."""
    catalog = tiny_workspace.dataset.catalog
    encoder = build_encoder("text", tiny_config.text, list(catalog.texts))
    cache_dir = tmp_path / "cache"
    reference, _ = encode_catalog(catalog, encoder, None, batch_size=16, progress=False)
    keys = content_keys(catalog, "text")
    FeatureCache(cache_dir, encoder).save({keys[i]: reference.values[i] for i in range(40)})
    tiny_config.to_yaml(tmp_path / "config.yaml")
    run_until_killed(KILL_CACHE, str(tmp_path / "config.yaml"), str(cache_dir))

    assert list(cache_dir.glob(".*.tmp"))  # the half-written file the kill left
    assert len(FeatureCache(cache_dir, encoder).load()) == 40  # the old file, whole
    content, stats = encode_catalog(catalog, encoder, cache_dir, batch_size=16, progress=False)
    assert (stats.reused, stats.computed) == (40, 40)
    np.testing.assert_allclose(content.values, reference.values, atol=1e-5)


# --- kill -9 during prepare -----------------------------------------------------------------

KILL_PREPARE = """
    import os, signal, sys
    import tfmmrec  # noqa: F401
    from tfmmrec.config import load_config
    from tfmmrec.data import tfrecords

    written = 0
    real = tfrecords._item_example

    def item_then_maybe_die(*args):
        global written
        written += 1
        if written > int(sys.argv[3]):  # mid-way through a shard
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args)

    tfrecords._item_example = item_then_maybe_die
    tfrecords.write_tfrecords(load_config(sys.argv[1]), sys.argv[2], workers=1, shards=4,
                      progress=False)
"""


def test_kill_during_prepare_keeps_finished_shards_and_never_uses_a_half_one(
        tiny_config, tiny_workspace, tmp_path):
    out = tmp_path / "records"
    tiny_config.to_yaml(tmp_path / "config.yaml")
    run_until_killed(KILL_PREPARE, str(tmp_path / "config.yaml"), str(out), "30")  # 20 a shard

    finished = sorted(out.glob("items-*"))
    assert [p.name for p in finished] == ["items-00000-of-00004.tfrecord"]
    assert list(out.glob(".items-00001-of-00004.tfrecord.*.tmp"))  # the half-written shard
    with pytest.raises(DataError, match="no finished TFRecords"):
        tfrecords.load_manifest(out)  # training refuses the directory

    kept = finished[0].stat().st_ino, finished[0].stat().st_mtime_ns
    manifest = tfrecords.write_tfrecords(tiny_config, out, dataset=tiny_workspace.dataset,
                                         workers=1, shards=4, progress=False)
    assert (finished[0].stat().st_ino, finished[0].stat().st_mtime_ns) == kept
    assert not list(out.glob(".*tmp*"))
    whole = tfrecords.write_tfrecords(tiny_config, tmp_path / "whole",
                                      dataset=tiny_workspace.dataset, workers=1, shards=4,
                                      progress=False)
    for table in tfrecords.TABLES:
        for a, b in zip(manifest.files(table), whole.files(table), strict=True):
            assert records(a) == records(b)


# --- kill -9 during export ------------------------------------------------------------------

KILL_EXPORT = """
    import os, signal, sys
    import tfmmrec  # noqa: F401
    import tensorflow as tf
    from tfmmrec import pipeline
    from tfmmrec.config import load_config

    real_save = tf.saved_model.save

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)  # the whole SavedModel is on disk, not yet renamed
        os.kill(os.getpid(), signal.SIGKILL)

    tf.saved_model.save = save_then_die
    pipeline.export(load_config(sys.argv[1]))
"""


def test_kill_during_export_never_publishes_a_version(tiny_config, tiny_trained, tmp_path):
    config = load_config(tiny_config, [f"export.base_dir={tmp_path / 'models'}",
                                       "export.index=brute_force"])
    config.to_yaml(tmp_path / "config.yaml")
    run_until_killed(KILL_EXPORT, str(tmp_path / "config.yaml"))

    model_dir = tmp_path / "models" / config.export.model_name
    leftovers = [p.name for p in model_dir.iterdir()]
    assert leftovers and all(name.startswith(".1.") and name.endswith(".tmp")
                             for name in leftovers)  # tfmmrec.files.atomic_path's temp dir
    with pytest.raises(ExportError, match="no model versions"):
        latest_version(model_dir)  # what a server or client would pick up: nothing
    version = pipeline.export(config, model=tiny_trained.model,
                              workspace=tiny_trained.workspace)
    assert version.name == "1" and latest_version(model_dir) == version
    assert ExportedModel(version).recommend(["u000"])["item_ids"].shape == (1, config.export.k)


# --- full or unwritable disks fail before the work starts -----------------------------------


def a_file_in_the_way(tmp_path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    return blocker / "dir"


class Usage:
    def __init__(self, free: int):
        self.free = free


def test_full_disk_stops_training_before_encoding(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: pytest.fail("encoded first"))
    monkeypatch.setattr(trainer.shutil, "disk_usage", lambda path: Usage(10 * 2**20))
    config = derive_config(tiny_config, tmp_path)
    with pytest.raises(TrainingError, match=r"only 10 MiB free at train\.output_dir="):
        pipeline.train(config)


def test_unwritable_cache_dir_stops_training_before_encoding(tiny_config, tmp_path,
                                                             monkeypatch):
    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: pytest.fail("encoded first"))
    config = derive_config(tiny_config, tmp_path, f"train.cache_dir={a_file_in_the_way(tmp_path)}")
    with pytest.raises(TrainingError, match=r"cannot write to train\.cache_dir=.*a-file/dir"):
        pipeline.train(config)


def test_unwritable_export_dir_fails_before_restoring_and_indexing(tiny_config, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(pipeline, "restore", lambda *a, **k: pytest.fail("restored"))
    config = load_config(tiny_config, [f"export.base_dir={a_file_in_the_way(tmp_path)}"])
    with pytest.raises(ExportError, match=r"cannot write to export\.base_dir=.*a-file/dir"):
        pipeline.export(config)


def test_cli_reports_a_full_disk_as_one_line(tiny_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer.shutil, "disk_usage", lambda path: Usage(1))
    config = derive_config(tiny_config, tmp_path)
    config.to_yaml(tmp_path / "config.yaml")
    assert cli.main(["train", "--config", str(tmp_path / "config.yaml")]) == 2
    err = capsys.readouterr().err
    assert "error: only 0 MiB free at train.output_dir=" in err and "Traceback" not in err
