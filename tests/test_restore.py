"""A run carries its model: restore rebuilds exactly what was trained, refuses architecture
overrides by name, and loads a checkpoint only when every value matches."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

import tfmmrec
from tests.conftest import derive_config
from tfmmrec import cli, pipeline
from tfmmrec.config import Config, load_config, model_sections
from tfmmrec.errors import ConfigError, TrainingError
from tfmmrec.export.writer import read_metadata
from tfmmrec.training.checkpoint import checkpoint_mismatches, load_exactly


def _export_config(tiny_config: Config, tmp_path, *overrides: str) -> Config:
    return load_config(tiny_config, [f"export.base_dir={tmp_path / 'models'}",
                                     "export.index=brute_force", *overrides])


def test_the_model_defining_config_is_saved_beside_the_checkpoint(tiny_trained, tiny_config):
    saved = yaml.safe_load((tiny_trained.output_dir / "checkpoints" / "model.yaml").read_text())
    assert tuple(saved) == model_sections()  # no train/eval/export: those stay run-time
    assert saved["model"] == tiny_config.to_dict()["model"]
    assert saved["text"]["hidden_dim"] == 16


def test_restore_is_public_and_rebuilds_the_trained_model_from_the_run_alone(tiny_trained):
    model, workspace = tfmmrec.restore(tiny_trained.output_dir)
    assert workspace.config.model.embedding_dim == 16  # from the run, not the defaults (64)
    n = workspace.dataset.num_items
    np.testing.assert_allclose(pipeline.embed_items(model, n),
                               pipeline.embed_items(tiny_trained.model, n), atol=1e-5)


@pytest.mark.parametrize(("override", "field", "trained", "requested"), [
    ("model.fusion=gated", "model.fusion", "'concat_mlp'", "'gated'"),
    ("model.embedding_dim=32", "model.embedding_dim", "16", "32"),
])
def test_export_refuses_an_architecture_override(tiny_trained, tiny_config, tmp_path, override,
                                                  field, trained, requested):
    """Before: ``--set model.fusion=gated`` exported untrained gated-fusion weights (TF only
    warned), and ``model.embedding_dim=32`` died in a raw ValueError from TensorFlow."""
    config = _export_config(tiny_config, tmp_path, override)
    with pytest.raises(ConfigError, match=rf"{field}: {trained} in the run .*, {requested} "
                                          r"requested.*cannot change after training") as error:
        pipeline.export(config)
    assert not (tmp_path / "models" / "tfmmrec").exists()  # nothing half-written either
    # the fix names the run's own config: the difference may come from the CLI's defaults
    assert f"--config {Path(config.train.output_dir) / 'config.yaml'}" in str(error.value)


def test_export_time_settings_stay_overridable(tiny_trained, tiny_config, tmp_path):
    config = _export_config(tiny_config, tmp_path, "export.k=3", "export.max_k=20",
                            "eval.batch_size=7", "ranking.retrieve_candidates=5")
    version = pipeline.export(config)
    metadata = read_metadata(version)
    assert (metadata["default_k"], metadata["max_k"], metadata["index"]) == (3, 20, "brute_force")


def test_cli_export_with_an_architecture_override_is_one_line_not_a_traceback(
        tiny_trained, tiny_config, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    _export_config(tiny_config, tmp_path).to_yaml(path)
    code = cli.main(["-q", "export", "--config", str(path), "--set", "model.embedding_dim=32"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR
    assert err.startswith("error: model.embedding_dim: 16 in the run")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_evaluate_refuses_an_architecture_override(tiny_trained, tiny_config, tmp_path,
                                                       capsys):
    path = tmp_path / "config.yaml"
    tiny_config.to_yaml(path)
    code = cli.main(["-q", "evaluate", "--config", str(path), "--set", "model.fusion=mean"])
    assert code == cli.EXIT_USER_ERROR
    assert "model.fusion: 'concat_mlp' in the run" in capsys.readouterr().err


def test_a_checkpoint_loads_only_if_every_value_matches(tiny_trained, tiny_workspace):
    """The check behind restore, without the config check in front of it: a model of another
    fusion is refused, naming the checkpoint values it lacks and the variables left empty."""
    prefix = tiny_trained.checkpoint
    same = pipeline.build_model(tiny_workspace)
    same.build_from_example()
    assert checkpoint_mismatches(same, prefix) == {"unmatched": [], "shapes": [], "missing": [],
                                                   "metrics_unread": []}
    load_exactly(same, prefix)
    np.testing.assert_allclose(same.item_tower.serving_mix.numpy(),
                               tiny_trained.model.item_tower.serving_mix.numpy())

    gated = pipeline.build_model(tiny_workspace.with_config(
        load_config(tiny_workspace.config, ["model.fusion=gated"])))
    gated.build_from_example()
    problems = checkpoint_mismatches(gated, prefix)
    assert "item_tower/fusion/mlp/layer_with_weights-0/kernel" in problems["unmatched"]
    assert problems["missing"] and not problems["shapes"]
    with pytest.raises(TrainingError, match=r"does not match the model rebuilt for it — \d+ "
                                            r"checkpoint values the model has no variable for: "
                                            r".*item_tower/fusion/mlp"):
        load_exactly(gated, prefix)

    wider = pipeline.build_model(tiny_workspace.with_config(
        load_config(tiny_workspace.config, ["model.embedding_dim=32"])))
    wider.build_from_example()
    shapes = checkpoint_mismatches(wider, prefix)["shapes"]
    assert "item_tower/projections/text/out/kernel: [16, 16] → [16, 32]" in shapes
    with pytest.raises(TrainingError, match=r"values of another shape"):
        load_exactly(wider, prefix)


def test_a_checkpoint_without_its_model_spec_is_refused(tiny_trained, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for file in (tiny_trained.output_dir / "checkpoints").glob("latest*"):
        (run / "checkpoints" / file.name).write_bytes(file.read_bytes())
    with pytest.raises(TrainingError, match=r"model\.yaml not found.*does not say which model"):
        pipeline.restore(run)


def test_train_builds_and_records_one_config_even_with_a_workspace(tiny_config, tiny_workspace,
                                                                   tmp_path):
    """``train(config, workspace=ws)`` used to build from ``ws.config`` and record ``config``.
    Now a config that disagrees with how the workspace was prepared is refused by name..."""
    other_split = derive_config(tiny_config, tmp_path, "data.split=temporal")
    with pytest.raises(ConfigError, match=r"data\.split: 'random' in the workspace, 'temporal' "
                                          r"requested"):
        pipeline.train(other_split, workspace=tiny_workspace, progress=False)
    # ...and one that only changes the model builds exactly that model, and records it.
    config = derive_config(tiny_config, tmp_path, "model.fusion=mean", "model.embedding_dim=8",
                           "train.epochs=1")
    result = pipeline.train(config, workspace=tiny_workspace, progress=False)
    assert result.workspace.config is config
    assert result.model.item_tower.fusion.mode == "mean"
    assert result.model.item_embeddings(np.arange(3)).shape == (3, 8)
    recorded = yaml.safe_load((tmp_path / "run" / "checkpoints" / "model.yaml").read_text())
    assert (recorded["model"]["fusion"], recorded["model"]["embedding_dim"]) == ("mean", 8)
    assert tiny_workspace.config is tiny_config  # the shared fixture is left as it was


def test_restore_takes_run_time_settings_from_the_caller(tiny_trained, tiny_config, tmp_path):
    config = load_config(tiny_config, ["eval.ks=[5]", f"export.base_dir={tmp_path}"])
    _, workspace = pipeline.restore(config=config)
    assert workspace.config.eval.ks == [5]
    assert dataclasses.asdict(workspace.config.model) == dataclasses.asdict(tiny_config.model)


def test_an_interrupted_run_resumes_only_with_the_model_it_started(tiny_config, tiny_workspace,
                                                                    tmp_path):
    """Resuming restores the backup into the model being built: a different model is refused
    before any step instead of resuming into mismatched weights."""
    started = derive_config(tiny_config, tmp_path)
    started.to_yaml(tmp_path / "run" / "checkpoints" / "model.yaml", sections=model_sections())
    (tmp_path / "run" / "backup" / "chief").mkdir(parents=True)  # left by a killed run
    changed = load_config(started, ["model.history_length=3"])
    with pytest.raises(ConfigError, match=r"model\.history_length: 0 in the interrupted run "
                                          r".*, 3 requested.*resume it with the config"):
        pipeline.train(changed, workspace=tiny_workspace, progress=False)


class Interrupt(tf.keras.callbacks.Callback):
    """A crash (or Ctrl-C) right after the first epoch (tests/training/test_trainer.py)."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("simulated interruption")


class SeesNoCheckpoint(tf.keras.callbacks.Callback):
    """While a new run trains, no ``latest`` stands for it (nothing could restore an older
    run's weights as this run's)."""

    def __init__(self, checkpoints):
        super().__init__()
        self.checkpoints = checkpoints

    def on_epoch_end(self, epoch, logs=None):
        assert not list(self.checkpoints.glob("latest.*"))


def test_a_new_run_removes_a_checkpoint_left_without_a_run_record(tiny_config, tiny_workspace,
                                                                  tmp_path):
    """An attempt that died after its final checkpoint but before run.json leaves a ``latest``
    and no record: the next run (a new one: there is no backup) removes it first."""
    config = derive_config(tiny_config, tmp_path, "train.epochs=1")
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("latest.index", "latest.data-00000-of-00001"):
        (checkpoints / name).write_text("an older attempt's weights")
    pipeline.train(config, workspace=tiny_workspace, progress=False,
                   callbacks=[SeesNoCheckpoint(checkpoints)])
    assert (checkpoints / "latest.index").read_bytes() != b"an older attempt's weights"


class SeesTheFinishedRunSetAside(tf.keras.callbacks.Callback):
    """While a new run trains over a finished one, the old run is whole in ``previous/`` and
    none of it is in the run's folder."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def on_epoch_end(self, epoch, logs=None):
        previous = self.output / "previous"
        for name in ("run.json", "config.yaml", "eval/metrics.json", "checkpoints/model.yaml",
                     "checkpoints/latest.index"):
            assert (previous / name).is_file(), name
        assert not (self.output / "run.json").exists() and not (self.output / "eval").exists()


def test_training_again_over_a_finished_run_says_so_and_drops_its_record(tiny_config,
                                                                        tiny_workspace,
                                                                        tmp_path, caplog):
    """Only an interrupted run resumes: over a finished one, training starts from scratch;
    the old run.json, checkpoint and evaluation are set aside in ``previous/`` first, so
    none describes the new weights, and go when the new run finishes."""
    config = derive_config(tiny_config, tmp_path, "train.epochs=1")
    pipeline.train(config, workspace=tiny_workspace, progress=False)
    stale = tmp_path / "run" / "eval" / "metrics.json"
    stale.parent.mkdir()
    stale.write_text("{}")
    old_record = (tmp_path / "run" / "run.json").read_text()
    again = load_config(config, ["train.seed=1"])
    checkpoints = tmp_path / "run" / "checkpoints"
    with caplog.at_level(logging.INFO, logger="tfmmrec"):
        pipeline.train(again, workspace=tiny_workspace, progress=False,
                       callbacks=[SeesNoCheckpoint(checkpoints),
                                  SeesTheFinishedRunSetAside(tmp_path / "run")])
    assert "holds a finished run: training it again from scratch" in caplog.text
    assert f"kept in {tmp_path / 'run' / 'previous'} until this one finishes" in caplog.text
    assert not stale.parent.exists()
    assert (checkpoints / "latest.index").is_file()
    assert (tmp_path / "run" / "run.json").read_text() != old_record
    assert not (tmp_path / "run" / "previous").exists()  # the new run finished


class StopAndKeepTheFirstEpoch(tf.keras.callbacks.Callback):
    """What ``EarlyStopping(restore_best_weights=True)`` does when the first epoch was best:
    stop after the second, and set the first epoch's weights back when training ends."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.first = self.model.get_weights()
        else:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.model.set_weights(self.first)


def test_a_callback_that_ends_training_on_other_weights_is_what_the_run_keeps(
        tiny_config, tiny_workspace, tmp_path):
    """Before: the final checkpoint was written before the caller's callbacks ended training,
    so the run on disk held the last epoch's weights and the returned model the best one's
    (a review: recall@10 0.2121 from disk, 0.1869 in memory), and run.json said the history
    covered epochs 3 and 4 of 4 when 1 and 2 were trained."""
    config = derive_config(tiny_config, tmp_path, "train.epochs=4")
    result = pipeline.train(config, workspace=tiny_workspace, progress=False,
                            callbacks=[StopAndKeepTheFirstEpoch()])
    model, _ = pipeline.restore(config.train.output_dir, workspace=tiny_workspace)
    n = tiny_workspace.dataset.num_items
    np.testing.assert_array_equal(pipeline.embed_items(model, n),
                                  pipeline.embed_items(result.model, n))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["history_epochs"] == [1, 2] and len(run["history"]["loss"]) == 2


@pytest.fixture
def finished_run(tiny_config, tiny_workspace, tmp_path):
    """A finished one-epoch run with its evaluation, and its item embeddings."""
    config = derive_config(tiny_config, tmp_path, "train.epochs=1")
    result = pipeline.train(config, workspace=tiny_workspace, progress=False)
    pipeline.evaluate(config, model=result.model, workspace=tiny_workspace, baselines=False)
    return config, pipeline.embed_items(result.model, tiny_workspace.dataset.num_items)


def test_a_failed_retrain_keeps_the_finished_run_restorable_in_previous(
        finished_run, tiny_workspace, tmp_path):
    """Before: the finished run was deleted first; a diverging (or interrupted) retrain left
    no model, and ``export`` said "no checkpoint"."""
    config, items = finished_run
    output, previous = tmp_path / "run", tmp_path / "run" / "previous"
    diverging = load_config(config, ["train.learning_rate=1e30"])
    with pytest.raises(TrainingError, match=r"training loss became (nan|inf)"):
        pipeline.train(diverging, workspace=tiny_workspace, progress=False)
    assert not (output / "run.json").exists()
    assert (previous / "run.json").is_file() and (previous / "eval" / "metrics.json").is_file()
    model, workspace = pipeline.restore(previous, workspace=tiny_workspace)
    assert workspace.config.train.output_dir == str(previous)
    np.testing.assert_allclose(pipeline.embed_items(model, tiny_workspace.dataset.num_items),
                               items, atol=1e-5)
    with pytest.raises(TrainingError, match=rf"the run {output} did not finish \(no checkpoint "
                                            rf"at .*\): train again to finish it; the finished "
                                            rf"run it is replacing is kept in {previous} until "
                                            rf"then: evaluate or export that one with --set "
                                            rf"train\.output_dir={previous}"):
        pipeline.restore(output)
    # the next run that finishes replaces it
    pipeline.train(config, workspace=tiny_workspace, progress=False)
    assert (output / "run.json").is_file() and not previous.exists()


def test_an_interrupted_retrain_names_the_finished_run_it_replaces(finished_run, tiny_workspace,
                                                                  tmp_path, capsys):
    config, _ = finished_run
    output, previous = tmp_path / "run", tmp_path / "run" / "previous"
    longer = load_config(config, ["train.epochs=2"])
    with pytest.raises(RuntimeError, match="simulated interruption"):
        pipeline.train(longer, workspace=tiny_workspace, progress=False,
                       callbacks=[Interrupt()])
    config.to_yaml(tmp_path / "config.yaml")
    assert cli.main(["-q", "export", "--config", str(tmp_path / "config.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the run {output} was interrupted before it finished")
    assert (f"resume it; the finished run it is replacing is kept in {previous} until then: "
            f"evaluate or export that one with --set train.output_dir={previous}") in err
    pipeline.check_restorable(previous)
    result = pipeline.train(longer, workspace=tiny_workspace, progress=False)  # resumes
    assert result.epochs_run == 1 and not previous.exists()


@pytest.mark.parametrize(("arguments", "expected"), [
    ({"run_dir": 5}, r"run_dir must be a path, got int 5"),
    ({"run_dir": "runs/x", "checkpoint": 3.5}, r"checkpoint must be a path, got float 3\.5"),
    ({"config": {"train": {"output_dir": 5}}}, r"train\.output_dir=5: expected str"),
])
def test_restore_refuses_what_is_not_a_path_in_one_line(arguments, expected):
    with pytest.raises(ConfigError, match=expected):
        tfmmrec.restore(**arguments)


def test_an_evaluate_whose_run_changed_under_it_writes_nothing(finished_run, tiny_workspace,
                                                              tmp_path, monkeypatch):
    """A review: a retrain started under an ``evaluate`` set the run aside and finished, and the
    evaluate then wrote the old model's metrics beside the new checkpoint, both exiting 0."""
    config, _ = finished_run
    metrics = tmp_path / "run" / "eval" / "metrics.json"
    before = metrics.read_bytes()
    embed_users = pipeline.embed_users

    def while_a_retrain_finishes(*args, **kwargs):  # between the restore and the writes
        (tmp_path / "run" / "run.json").write_text('{"another": "run"}')
        return embed_users(*args, **kwargs)

    monkeypatch.setattr(pipeline, "embed_users", while_a_retrain_finishes)
    with pytest.raises(TrainingError, match=rf"the run in {tmp_path / 'run'} changed while it "
                                            r"was evaluated .*nothing was written"):
        pipeline.evaluate(config, workspace=tiny_workspace, baselines=False)
    assert metrics.read_bytes() == before
