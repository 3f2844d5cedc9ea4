"""Workers of a multi-worker run agree before training (``training.agreement``): the same
model-defining config and course of training, and the same backup to resume from, or one line
on every worker before any training step.

The cluster tests start two real ``MultiWorkerMirroredStrategy`` workers on 127.0.0.1 (helpers
of ``test_distributed``), each with its own config file, as two hosts would have.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import derive_config
from tests.training.test_distributed import run_workers
from tfmmrec import pipeline
from tfmmrec.config import Config, load_config
from tfmmrec.errors import ConfigError, TrainingError
from tfmmrec.training import agreement
from tfmmrec.training import strategy as strategies
from tfmmrec.training.trainer import resumed_epochs

SHARED_STORAGE = ("train.output_dir must be storage every worker sees (a shared file system), "
                  "as the backup is read by all")


def vector(config: Config, epochs=(0, 0, 0, 0)) -> np.ndarray:
    """What a worker started with ``config`` would contribute (``epochs``: its resume points)."""
    fields = agreement.config_fields(config, pipeline.RESUME_FIELDS)
    return agreement.agreement_vector(agreement.field_groups(list(fields)), fields, list(epochs))


def check(own: Config, *others: Config, own_epochs=(0, 0, 0, 0), other_epochs=(0, 0, 0, 0),
          output: Path = Path("runs/x")) -> None:
    """``check_agreement`` as the worker started with ``own`` runs it, beside ``others``."""
    mine = vector(own, own_epochs)
    rows = np.stack([mine, *(vector(o, other_epochs) for o in others)])
    fields = agreement.config_fields(own, pipeline.RESUME_FIELDS)
    agreement.check_agreement(mine, rows, agreement.field_groups(list(fields)), output)


# --- in-process: the vector and the checks ---------------------------------------------------


def test_one_process_and_local_replicas_skip_the_agreement(monkeypatch):
    """No collective, and nothing computed: the default strategy, and mirrored replicas that
    are all in this process."""
    def fail(*args, **kwargs):
        raise AssertionError("computed an agreement without other workers")

    monkeypatch.setattr(agreement, "config_fields", fail)
    monkeypatch.setattr(agreement, "all_gather", fail)
    monkeypatch.setattr(strategies, "_CREATED", {})
    for strategy in (tf.distribute.get_strategy(),
                     strategies.make_strategy("mirrored", devices=["/cpu:0"])):
        assert not agreement.needs_agreement(strategy)
        agreement.agree(load_config(None), strategy, pipeline.RESUME_FIELDS)


def test_the_vector_has_one_size_whatever_the_config():
    """A collective with other shapes on other workers would fail with TensorFlow's error."""
    sizes = {len(vector(load_config(None, overrides)))
             for overrides in ([], ["model.fusion=gated", "train.epochs=3"],
                               ["data.text_columns=[title]", "ranking.enabled=true"])}
    assert sizes == {agreement.HEADER + len(agreement.RESUME_POINTS)
                     + agreement.PIECES * agreement.MAX_FIELDS}


def test_same_config_and_resume_points_agree():
    config = load_config(None, ["train.epochs=3"])
    check(config, load_config(None, ["train.epochs=3"]), own_epochs=(1, 0, 0, 2),
          other_epochs=(1, 0, 0, 2))


def test_another_learning_rate_is_named():
    with pytest.raises(ConfigError) as error:
        check(load_config(None), load_config(None, ["train.learning_rate=0.02"]))
    assert str(error.value) == ("train.learning_rate differs between workers — start every "
                                "worker with the same config")


def test_every_differing_field_is_named_in_declaration_order():
    with pytest.raises(ConfigError, match=r"^data\.test_fraction, model\.embedding_dim, "
                                          r"train\.epochs, train\.seed differ between workers"):
        check(load_config(None), load_config(None, [
            "train.seed=3", "train.epochs=4", "model.embedding_dim=32", "data.test_fraction=0.3"]))


def test_fields_that_may_differ_between_workers_are_not_compared():
    """Where each worker writes or caches (its own disk's paths), how much it prints, and how
    a finished model is evaluated or exported."""
    check(load_config(None), load_config(None, [
        "train.output_dir=/elsewhere", "train.cache_dir=/cache", "train.verbose=0",
        "train.backup_seconds=5", "eval.ks=[5]", "export.k=3",
        "ranking.retrieve_candidates=50"]))


def test_other_resume_epochs_are_one_line_naming_both_and_the_fix(tmp_path):
    with pytest.raises(TrainingError) as error:
        check(load_config(None), load_config(None), own_epochs=(0, 0, 0, 10),
              other_epochs=(0, 0, 0, 0), output=tmp_path)
    assert str(error.value) == (
        f"the workers would resume from different epochs (this worker: 10, others: 0; "
        f"training, {tmp_path / 'backup'}): {SHARED_STORAGE}")
    with pytest.raises(TrainingError, match=r"\(this worker: 0, others: 3; early stopping, "):
        check(load_config(None), load_config(None), other_epochs=(3, 0, 0, 0))


def test_a_config_difference_is_reported_before_the_resume_epochs():
    with pytest.raises(ConfigError, match=r"^train\.epochs differs"):
        check(load_config(None), load_config(None, ["train.epochs=4"]), own_epochs=(0, 0, 0, 2))


def test_workers_with_other_config_fields_are_told_to_install_one_version():
    own = vector(load_config(None))
    other = own.copy()
    other[1] += 1  # the digest of the field names
    with pytest.raises(ConfigError, match="different tfmmrec versions"):
        agreement.check_agreement(own, np.stack([own, other]), [], Path("runs/x"))


def test_fields_past_the_capacity_share_the_last_slot():
    names = [f"f{k}" for k in range(agreement.MAX_FIELDS + 2)]
    groups = agreement.field_groups(names)
    assert len(groups) == agreement.MAX_FIELDS
    assert groups[-1] == names[agreement.MAX_FIELDS - 1:]


def fake_backup(directory: Path, saved_epoch: int) -> None:
    """A Keras backup holding ``saved_epoch`` (0-based) as ``BackupAndRestore`` writes it."""
    checkpoint = tf.train.Checkpoint(ckpt_saved_epoch=tf.Variable(saved_epoch, dtype=tf.int64))
    checkpoint.save(str(directory / "chief" / "chief"))


def test_resume_epochs_read_every_fit_of_the_run(tmp_path):
    config = load_config(None, [f"train.output_dir={tmp_path}"])
    assert agreement.resume_epochs(config) == [0, 0, 0, 0]
    fake_backup(tmp_path / "early-stopping" / "backup", 1)
    fake_backup(tmp_path / "early-stopping" / "carve-1" / "backup", 0)
    fake_backup(tmp_path / "early-stopping" / "carve-2" / "backup", 4)
    fake_backup(tmp_path / "backup", 6)
    assert resumed_epochs(tmp_path / "backup") == 7
    assert agreement.resume_epochs(config) == [2, 5, 0, 7]


# --- two real workers -------------------------------------------------------------------------

# Each worker trains with its own config file (argv[1 + task index]), as on separate hosts.
PER_WORKER = """
    import json, os, sys
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    from tfmmrec import cli
    sys.exit(cli.main(["train", "--config", sys.argv[1 + index], "--strategy", "multi_worker"]))
"""


def run_each(configs: list[Config], root: Path) -> list[tuple[int, str, str]]:
    """Worker k trains ``configs[k]``; (returncode, out, err) each."""
    paths = []
    for index, config in enumerate(configs):
        paths.append(root / f"worker-{index}.yaml")
        config.to_yaml(paths[-1])
    return run_workers(["-c", textwrap.dedent(PER_WORKER), *map(str, paths)], len(configs))


def error_lines(results) -> list[str]:
    return [[line for line in err.splitlines() if line.startswith("error: ")] for _, _, err
            in results]


class Interrupt(Exception):
    pass


class InterruptAtEpoch(tf.keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupt


@pytest.fixture(scope="module")
def cluster_config(tiny_config, tiny_workspace, tmp_path_factory) -> Config:
    """The tiny model for two workers: 3 epochs, no text tower, a brute-force export."""
    root = tmp_path_factory.mktemp("agreement")
    return derive_config(tiny_config, root, "train.epochs=3", "export.index=brute_force",
                         "text.enabled=false")


@pytest.fixture(scope="module")
def interrupted_run(cluster_config) -> Path:
    """A run of ``cluster_config`` interrupted after 2 of its 3 epochs (one process): its
    folder, with the backup it resumes from."""
    with pytest.raises(Interrupt):
        pipeline.train(cluster_config, callbacks=[InterruptAtEpoch(2)], progress=False)
    output = Path(cluster_config.train.output_dir)
    assert resumed_epochs(output / "backup") == 2
    return output


def test_workers_with_other_learning_rates_stop_before_training(cluster_config, tmp_path):
    """Before the fix both trained and exited 0, the record saying the chief's rate."""
    config = load_config(cluster_config, [f"train.output_dir={tmp_path / 'run'}"])
    other = load_config(config, ["train.learning_rate=0.05"])
    results = run_each([config, other], tmp_path)
    assert [code for code, _, _ in results] == [2, 2], results[0][2][-3000:]
    line = ("error: train.learning_rate differs between workers — start every worker with the "
            "same config")
    assert error_lines(results) == [[line], [line]]
    # before the data was loaded or anything of the run written
    assert not any("loaded " in err for _, _, err in results)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_workers_with_other_epochs_and_seeds_name_both(cluster_config, tmp_path):
    """Before the fix: collective errors on both workers and no checkpoint."""
    config = load_config(cluster_config, [f"train.output_dir={tmp_path / 'run'}"])
    other = load_config(config, ["train.epochs=5", "train.seed=4"])
    results = run_each([config, other], tmp_path)
    assert [code for code, _, _ in results] == [2, 2], results[0][2][-3000:]
    line = ("error: train.epochs, train.seed differ between workers — start every worker "
            "with the same config")
    assert error_lines(results) == [[line], [line]]


def test_workers_on_separate_disks_refuse_to_resume(interrupted_run, cluster_config, tmp_path):
    """The chief's disk holds the interrupted run's backup (2 epochs), the other worker's disk
    none: before the fix the other worker started at epoch 0 and both failed in collectives.
    Now both stop before any step, and the backup is left as it was."""
    chief = tmp_path / "chief-disk"
    shutil.copytree(interrupted_run, chief)
    configs = [load_config(cluster_config, [f"train.output_dir={chief}"]),
               load_config(cluster_config, [f"train.output_dir={tmp_path / 'other-disk'}"])]
    results = run_each(configs, tmp_path)
    assert [code for code, _, _ in results] == [2, 2], results[0][2][-3000:]
    assert error_lines(results) == [
        [f"error: the workers would resume from different epochs (this worker: 2, others: 0; "
         f"training, {chief / 'backup'}): {SHARED_STORAGE}"],
        [f"error: the workers would resume from different epochs (this worker: 0, others: 2; "
         f"training, {tmp_path / 'other-disk' / 'backup'}): {SHARED_STORAGE}"]]
    assert resumed_epochs(chief / "backup") == 2
    assert not any("epoch" in out for _, out, _ in results)


def test_workers_sharing_the_backup_resume_together(interrupted_run, cluster_config, tmp_path):
    """The same backup seen by both (one folder: shared storage): they agree, resume after
    epoch 2 and finish the run."""
    shared = tmp_path / "shared"
    shutil.copytree(interrupted_run, shared)
    config = load_config(cluster_config, [f"train.output_dir={shared}"])
    results = run_each([config, config], tmp_path)
    for code, out, err in results:
        assert code == 0, err[-4000:]
        assert "trained 1 epoch(s)" in out
    run = json.loads((shared / "run.json").read_text())
    assert run["history_epochs"] == [3]
    assert not [p for p in (shared / "backup" / "chief").rglob("*") if p.is_file()]
