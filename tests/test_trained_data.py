"""A run records the data it trained on (``run.json``), and evaluating or exporting it over
other data is refused in one line saying what changed, before anything is encoded or rebuilt.

Before: reordering interactions.csv re-drew the random split by row position, and ``evaluate``
scored the model on rows it had trained on (same split sizes, recall up, no warning); a new
row in items.csv failed as "the text encoder(s) differ ... restore the training config", and a
user removed as "checkpoint ... does not match the model rebuilt for it ... a different config".
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfmmrec import cli, pipeline
from tfmmrec.config import Config, load_config
from tfmmrec.data.splits import with_test
from tfmmrec.errors import ConfigError, DataError
from tfmmrec.training import trained_data
from tfmmrec.training.trained_data import rows_digest, same_digest

CHANGED = r"the dataset changed since this run trained \(.*run\.json records other data\): "


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config, tiny_demo_dir) -> Config:
    """A finished one-epoch run over a copy of the tiny demo folder (which tests edit)."""
    root = tmp_path_factory.mktemp("trained-data")
    shutil.copytree(tiny_demo_dir, root / "data")
    config = load_config(tiny_config, [
        f"data.path={root / 'data'}", f"train.output_dir={root / 'run'}",
        f"export.base_dir={root / 'models'}", "train.epochs=1", "export.index=brute_force"])
    pipeline.train(config, progress=False)
    return config


@pytest.fixture
def data(trained) -> Path:
    """The run's dataset folder; its tables and the run's record are put back after the test."""
    folder = Path(trained.data.path)
    files = [folder / name for name in ("interactions.csv", "items.csv", "users.csv")]
    files.append(Path(trained.train.output_dir) / "run.json")
    saved = {path: path.read_bytes() for path in files}
    yield folder
    for path, content in saved.items():
        path.write_bytes(content)


def rewrite(path: Path, edit) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame).to_csv(path, index=False)


def shuffle_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sample(frac=1.0, random_state=1)


def test_evaluate_and_export_refuse_interactions_reordered_since_training(trained, data):
    """Only the row order changed: the random split draws other rows, with the same sizes."""
    rewrite(data / "interactions.csv", shuffle_rows)
    expected = (CHANGED + r"the training split: 256 interactions then, 256 now \(other rows\); "
                r"the test split: 64 interactions then, 64 now \(other rows\)\. .*retrain "
                r"\(tfmmrec train\).*tfmmrec catalog add.*tfmmrec evaluate --test FILE")
    with pytest.raises(DataError, match=expected):
        pipeline.evaluate(trained)
    with pytest.raises(DataError, match=expected):
        pipeline.export(trained)
    assert not (Path(trained.export.base_dir) / trained.export.model_name).exists()


def test_appended_interactions_are_named_with_both_counts(trained, data):
    rewrite(data / "interactions.csv",
            lambda f: pd.concat([f, f.iloc[[0]].assign(item_id="i0001")], ignore_index=True))
    with pytest.raises(DataError, match=CHANGED + r"the training split: 256 interactions then, "
                                                  r"257 now"):
        pipeline.restore(trained.train.output_dir)


def test_cli_evaluate_says_the_dataset_changed_in_one_line(trained, data, tmp_path, capsys):
    rewrite(data / "interactions.csv", shuffle_rows)
    trained.to_yaml(tmp_path / "config.yaml")
    code = cli.main(["-q", "evaluate", "--config", str(tmp_path / "config.yaml")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR
    assert err.startswith("error: the dataset changed since this run trained")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_new_item_is_a_changed_catalogue_not_a_changed_encoder(trained, data):
    """Before: an error blaming the config: "the text encoder(s) differ ... restore the
    training config" (a vocabulary learned from the catalogue's text), or with these tiny
    towers "checkpoint ... does not match the model rebuilt for it — ... content_table/...:
    [80, 16] → [81, 16]. The model was built from a different config"."""
    rewrite(data / "items.csv", lambda f: pd.concat([f, f.iloc[[0]].assign(
        item_id="i9999", title="Zeppelin Quartet",
        description="A brand new saga of zeppelins and lighthouses.")], ignore_index=True))
    with pytest.raises(DataError, match=CHANGED + r"the catalogue \(items table\): 80 items "
                                                  r"then, 81 now\."):
        pipeline.export(trained)


def test_a_removed_user_is_a_changed_dataset_not_a_checkpoint_mismatch(trained, data):
    """Before: TrainingError "checkpoint ... does not match the model rebuilt for it —
    query_tower/...: [41, 16] → [40, 16]. The model was built from a different config"."""
    rewrite(data / "interactions.csv", lambda f: f[f["user_id"] != "u007"])
    rewrite(data / "users.csv", lambda f: f[f["user_id"] != "u007"])
    with pytest.raises(DataError, match=CHANGED + r"the training split: .*the users \(query "
                                                  r"tower vocabulary\): 40 users then, 39 now"):
        pipeline.evaluate(trained)


def test_the_unchanged_data_restores_with_a_supplied_test_set_or_candidates(trained, data):
    """What legitimately differs from the run's split passes: a test set of the user's own
    (``evaluate --test``: only the training rows must be the run's), candidate items
    (``--candidates``), and a workspace prepared by the caller (notebooks, benchmarks)."""
    workspace = pipeline.prepare(trained, progress=False)
    pipeline.restore(trained.train.output_dir, workspace=workspace)
    for split in (with_test(workspace.split, workspace.split.test.iloc[:10]),
                  with_test(workspace.split, candidates=np.arange(20))):
        results = pipeline.evaluate(trained, workspace=replace(workspace, split=split),
                                    baselines=False, write=False)
        assert results["tfmmrec"]["num_users"] > 0
    # a supplied test set does not excuse other training rows
    rewrite(data / "interactions.csv", shuffle_rows)
    changed = pipeline.prepare(trained, progress=False)
    supplied = replace(changed, split=with_test(changed.split, changed.split.test.iloc[:10]))
    with pytest.raises(DataError, match=CHANGED + r"the training split: [^;]*\. "):
        pipeline.evaluate(trained, workspace=supplied, baselines=False, write=False)


def test_cli_evaluate_with_a_test_file_and_candidates_runs(trained, data, tmp_path, capsys):
    trained.to_yaml(tmp_path / "config.yaml")
    test = pd.read_csv(data / "interactions.csv", dtype=str).iloc[:30]
    test[["user_id", "item_id"]].to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "candidates.txt").write_text("\n".join(f"i{i:04d}" for i in range(40)))
    code = cli.main(["-q", "evaluate", "--config", str(tmp_path / "config.yaml"), "--test",
                     str(tmp_path / "test.csv"), "--candidates",
                     str(tmp_path / "candidates.txt")])
    assert code == 0, capsys.readouterr().err
    assert "supplied split" in capsys.readouterr().out


def test_a_run_recorded_before_the_fingerprint_restores_with_one_warning(trained, data, caplog,
                                                                        monkeypatch):
    run_file = Path(trained.train.output_dir) / "run.json"
    record = json.loads(run_file.read_text())
    assert set(record["data"]) == {"train", "test", "items", "users"}
    del record["data"]
    run_file.write_text(json.dumps(record))
    monkeypatch.setattr(trained_data, "_warned_unrecorded", set())
    workspace = pipeline.prepare(trained, progress=False)
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):
        for _ in range(2):
            pipeline.restore(trained.train.output_dir, workspace=workspace)
    warnings = [r for r in caplog.records if "does not record the data" in r.getMessage()]
    assert len(warnings) == 1 and "retrain to record it" in warnings[0].getMessage()


def test_the_digest_of_a_split_ignores_row_order_and_sees_every_value():
    frame = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"],
                          "rating": [4.0, 3.0, 5.0], "item_index": [0, 1, 0]})
    digest = rows_digest(frame)
    assert digest == rows_digest(frame.iloc[::-1])
    assert digest["count"] == 3
    assert digest != rows_digest(frame.assign(rating=[4.0, 3.0, 4.0]))
    assert digest != rows_digest(frame.iloc[:2])


def test_a_digest_recorded_under_an_earlier_scheme_is_compared_on_its_count():
    frame = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["a", "b"]})
    earlier = {"count": 2, "sha256": "0" * 64}  # session-47 run.json: text digest
    assert same_digest(earlier, rows_digest(frame))
    assert not same_digest(earlier, rows_digest(frame.iloc[:1]))
    assert not same_digest(rows_digest(frame), rows_digest(frame.assign(item_id=["a", "c"])))


def test_a_damaged_run_record_is_one_line_naming_it(tmp_path):
    """A run.json cut short was a JSONDecodeError traceback out of evaluate and export."""
    run_file = tmp_path / "run.json"
    run_file.write_text('{"encoders": ')
    with pytest.raises(DataError, match=r"run\.json is damaged, not valid JSON \(.*\): train "
                                        r"the run again \(tfmmrec train\)"):
        trained_data.check_trained_data(run_file, dataset=None, split=None)


def test_a_run_restores_from_its_data_moved_elsewhere_and_refuses_other_data(trained, data,
                                                                             tmp_path):
    """``data.path`` was model-defining, so a finished run could not be evaluated or exported
    once its data was referred to by another path (another working directory, a moved folder):
    train again. Its run.json's digests now say whether the data at the new path is the same."""
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    config = load_config(trained, [f"data.path={moved}"])
    _model, workspace = pipeline.restore(trained.train.output_dir, config)
    assert workspace.dataset.root == moved
    rewrite(moved / "interactions.csv", shuffle_rows)
    with pytest.raises(DataError, match=CHANGED):
        pipeline.restore(trained.train.output_dir, config)


def test_without_recorded_digests_the_data_path_still_defines_the_run(trained, data, tmp_path):
    run_file = Path(trained.train.output_dir) / "run.json"
    record = json.loads(run_file.read_text())
    del record["data"]
    run_file.write_text(json.dumps(record))
    shutil.copytree(data, tmp_path / "moved")
    with pytest.raises(ConfigError, match=r"data\.path: .* requested\. These fields define the "
                                          r"model"):
        pipeline.check_restorable(trained.train.output_dir,
                                  load_config(trained, [f"data.path={tmp_path / 'moved'}"]))
