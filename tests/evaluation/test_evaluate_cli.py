"""`tfmmrec evaluate --baselines / --test / --candidates`, `data.split: none`, split sizes."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re

import pandas as pd
import pytest

from tests.data.test_user_split import given_folder
from tfmmrec import cli, pipeline
from tfmmrec.config import load_config
from tfmmrec.data.splits import split_interactions
from tfmmrec.errors import DataError


@pytest.fixture(scope="module")
def run(tiny_config, tmp_path_factory):
    """The tiny config trained once through the CLI (random split)."""
    root = tmp_path_factory.mktemp("eval-cli")
    config = load_config(tiny_config, [f"train.output_dir={root / 'run'}"])
    path = root / "tiny.yaml"
    config.to_yaml(path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["-q", "train", "--config", str(path)]) == 0
    return root, path, printed.getvalue()


def test_train_prints_the_split_sizes(run, tiny_workspace):
    split = tiny_workspace.split
    assert (f"random split: {len(split.train)} train / {len(split.test)} test interactions"
            in run[2])


def test_validate_prints_split_and_validation_sizes(tiny_config, tiny_workspace, capsys):
    assert cli.main(["validate", "--set", f"data.path={tiny_config.data.path}"]) == 0
    out = capsys.readouterr().out
    train, test = len(tiny_workspace.split.train), len(tiny_workspace.split.test)
    assert f"random split: {train} train / {test} test interactions" in out
    held = round(train * 0.2)
    assert (f"validation for tuned choices (random): {train - held} train / {held} held-out"
            in out)


def test_evaluate_with_baselines_adds_rows_to_table_json_and_plot(run, capsys):
    root, path, _ = run
    assert cli.main(["-q", "evaluate", "--config", str(path), "--baselines"]) == 0
    out = capsys.readouterr().out
    rows = ["EASE", "EASE · recency-weighted history", "iALS", "content→CF ridge",
            "content→CF kernel ridge", "content kNN (centred)"]
    for row in ["tfmmrec", "popularity", *rows]:
        assert f"| {row} " in out
    written = json.loads((root / "run" / "eval" / "metrics.json").read_text())
    assert set(rows) <= set(written["results"])
    assert set(written["baselines"]) == set(rows)
    assert written["baselines"]["EASE"]["config"]["l2"] in (10.0, 30.0, 100.0, 300.0, 1000.0,
                                                            3000.0)
    assert written["results"]["EASE"].keys() == written["results"]["tfmmrec"].keys()
    recency = written["baselines"]["EASE · recency-weighted history"]["config"]
    assert recency["l2"] == written["baselines"]["EASE"]["config"]["l2"]
    assert recency["half_life"] in (0.0, 5.0, 10.0, 20.0, 40.0, 80.0)


def test_evaluate_rejects_unknown_baseline_names(run, capsys):
    _, path, _ = run
    assert cli.main(["-q", "evaluate", "--config", str(path), "--baselines", "ease,svd"]) == 2
    assert "unknown svd" in capsys.readouterr().err
    for empty in ("", " , "):  # an unset shell variable: it ran no baseline, silently
        assert cli.main(["-q", "evaluate", "--config", str(path), "--baselines", empty]) == 2
        assert f"error: --baselines {empty!r} names no baseline; choose from all, ease" in (
            capsys.readouterr().err)


def test_evaluate_a_supplied_test_set_on_candidate_items_only(run, tiny_workspace, capsys,
                                                              tmp_path):
    _, path, _ = run
    catalog = tiny_workspace.dataset.catalog
    train = tiny_workspace.split.train
    seen = set(zip(train["user_id"].astype(str), train["item_id"].astype(str), strict=True))
    candidates = [str(i) for i in catalog.item_ids[:3]]
    users = [str(u) for u in tiny_workspace.user_ids[:5]]
    rows = [(u, i) for u in users for i in candidates[:1] if (u, i) not in seen]
    pd.DataFrame(rows, columns=["user_id", "item_id"]).to_csv(tmp_path / "test.csv",
                                                              index=False)
    (tmp_path / "new.txt").write_text("# new items\n" + "\n".join(candidates) + "\n\n")
    assert cli.main(["-q", "evaluate", "--config", str(path), "--test",
                     str(tmp_path / "test.csv"), "--candidates", str(tmp_path / "new.txt")]) == 0
    out = capsys.readouterr().out
    assert f"supplied split: {len(train)} train / {len(rows)} test interactions " \
           "(3 candidate items)" in out
    # its own file: the split's metrics.json is not replaced by a supplied test set's
    name = "metrics-test-test-candidates-new"
    assert f"eval/{name}.json and {name}.png" in out
    written = json.loads((run[0] / "run" / "eval" / f"{name}.json").read_text())
    result = written["results"]["tfmmrec"]
    # 3 candidates: K clamps to 3, so every evaluated user finds their one test item.
    assert result["num_users"] == len({u for u, _ in rows})
    assert result["recall@10"] == 1.0
    assert "top_k_accuracy@100" not in result  # candidates: the restricted protocol only
    # ... which the table does not say by itself: a note per such K
    assert ("note: recall@10: every one of the 3 candidate items is in the top 10, so "
            "recall@10 is 1 for any model") in out.splitlines()
    assert written["sources"] == {"test": str(tmp_path / "test.csv"),
                                  "candidates": str(tmp_path / "new.txt")}
    # a test.csv of another folder: its own file, not the first one's replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "test.csv").write_bytes((tmp_path / "test.csv").read_bytes())
    assert cli.main(["-q", "evaluate", "--config", str(path), "--test",
                     str(tmp_path / "other" / "test.csv"), "--candidates",
                     str(tmp_path / "new.txt")]) == 0
    other = re.search(rf"eval/({name}-[0-9a-f]{{8}})\.json", capsys.readouterr().out).group(1)
    assert json.loads((run[0] / "run" / "eval" / f"{name}.json").read_text()) == written
    assert json.loads((run[0] / "run" / "eval" / f"{other}.json").read_text())["sources"][
        "test"] == str(tmp_path / "other" / "test.csv")


def test_a_test_set_with_no_item_among_the_candidates_is_an_error_naming_both_files(
        run, tiny_workspace, capsys, tmp_path):
    """It exited 0 with a table of nan and a metrics file of nulls (num_users 0)."""
    root, path, _ = run
    items = [str(i) for i in tiny_workspace.dataset.catalog.item_ids]
    user = str(tiny_workspace.user_ids[0])
    pd.DataFrame({"user_id": [user], "item_id": [items[1]]}).to_csv(tmp_path / "t1.csv",
                                                                     index=False)
    (tmp_path / "one_c.txt").write_text(items[0] + "\n")
    assert cli.main(["-q", "evaluate", "--config", str(path), "--test", str(tmp_path / "t1.csv"),
                     "--candidates", str(tmp_path / "one_c.txt")]) == 2
    assert (f"error: nothing to evaluate: no test interaction of {tmp_path / 't1.csv'} has its "
            f"item among the candidates in {tmp_path / 'one_c.txt'}"
            ) in capsys.readouterr().err.splitlines()
    assert not (root / "run" / "eval" / "metrics-test-t1-candidates-one_c.json").exists()


def test_bad_test_and_candidate_files_name_file_line_and_value(run, tmp_path, capsys):
    _, path, _ = run
    (tmp_path / "c.txt").write_text("i0000\nnope\n")
    assert cli.main(["-q", "evaluate", "--config", str(path), "--candidates",
                     str(tmp_path / "c.txt")]) == 2
    assert "c.txt line 2 ('nope')" in capsys.readouterr().err
    (tmp_path / "t.csv").write_text("user_id,item_id\nstranger,i0000\n")
    assert cli.main(["-q", "evaluate", "--config", str(path), "--test",
                     str(tmp_path / "t.csv")]) == 2
    assert "t.csv line 2 ('stranger')" in capsys.readouterr().err


def test_split_none_has_no_test_set_and_evaluate_refuses_without_one(run, tiny_workspace,
                                                                     capsys):
    _, path, _ = run
    none = ["--config", str(path), "--set", "data.split=none"]
    assert cli.main(["validate", *none]) == 0
    total = len(tiny_workspace.dataset.interactions)
    assert f"none split: {total} train / 0 test interactions" in capsys.readouterr().out
    # This run was trained on another split: refused before any data is encoded.
    assert cli.main(["-q", "evaluate", *none]) == 2
    assert "data.split: 'random' in the run" in capsys.readouterr().err
    # A split with no test rows is refused before any model is restored.
    split = split_interactions(tiny_workspace.dataset.interactions, "none", 0.2, 42)
    with pytest.raises(DataError, match="no test interactions to evaluate on"):
        pipeline.evaluate(load_config(path, ["data.split=none"]),
                          workspace=dataclasses.replace(tiny_workspace, split=split))


@pytest.mark.slow  # trains a second tiny model
def test_split_none_trains_on_every_row_and_scores_a_supplied_test_set(tiny_config,
                                                                       tiny_workspace,
                                                                       tmp_path, capsys):
    config = load_config(tiny_config, [f"train.output_dir={tmp_path / 'run'}",
                                       "data.split=none", "train.epochs=1"])
    path = tmp_path / "none.yaml"
    config.to_yaml(path)
    assert cli.main(["-q", "train", "--config", str(path)]) == 0
    total = len(tiny_workspace.dataset.interactions)
    assert f"none split: {total} train / 0 test interactions" in capsys.readouterr().out
    tiny_workspace.split.test[["user_id", "item_id"]].to_csv(tmp_path / "test.csv", index=False)
    assert cli.main(["-q", "evaluate", "--config", str(path), "--test",
                     str(tmp_path / "test.csv")]) == 2
    # Under data.split: none every row is training data, so each test row is a seen item and
    # excluded: no user could be scored (a test set must hold what the model did not train
    # on), which is an error rather than a table of NaN.
    assert (f"error: nothing to evaluate: every test interaction of {tmp_path / 'test.csv'} is "
            "one of its user's training interactions") in capsys.readouterr().err
    assert not (tmp_path / "run" / "eval" / "metrics-test-test.json").exists()


@pytest.mark.slow  # exports a SavedModel (≈1 min on a busy 2-core machine)
def test_evaluate_through_the_export_matches_the_checkpoint(run, tiny_workspace, tmp_path,
                                                            capsys, monkeypatch):
    root, path, _ = run
    projected = []
    assert cli.main(["-q", "export", "--config", str(path), "--index", "brute_force",
                     "--set", f"export.base_dir={tmp_path / 'models'}"]) == 0
    candidates = [str(i) for i in tiny_workspace.dataset.catalog.item_ids[::4]]
    (tmp_path / "c.txt").write_text("\n".join(candidates))
    scored = {}
    for extra, name in (([], "metrics-candidates-c"),
                        (["--export", str(tmp_path / "models" / "tfmmrec")],
                         "metrics-candidates-c-export-tfmmrec-1")):
        assert cli.main(["-q", "evaluate", "--config", str(path), "--candidates",
                         str(tmp_path / "c.txt"), *extra]) == 0
        written = json.loads((root / "run" / "eval" / f"{name}.json").read_text())
        scored.update(written["results"])
        if not extra:  # the run's Projector is its checkpoint's: an export (maybe another
            monkeypatch.setattr(pipeline, "write_item_projector",  # run's)
                                lambda *args: projected.append(args))
    assert projected == []  # replaced it
    assert "| tfmmrec (export) " in capsys.readouterr().out
    checkpoint, export = scored["tfmmrec"], scored["tfmmrec (export)"]
    assert export["num_users"] == checkpoint["num_users"] > 0
    for key in ("recall@10", "recall@20", "ndcg@10"):
        assert export[key] == pytest.approx(checkpoint[key], abs=1e-6), key


def stop_before_encoding(monkeypatch) -> None:
    """``evaluate`` ends with exit 2 where it would start encoding (what it printed is kept)."""
    def stop(*args, **kwargs):
        raise DataError("stopped before encoding")

    monkeypatch.setattr(pipeline, "prepare", stop)


def test_test_rows_outside_the_candidates_are_counted_before_any_work(tmp_path, monkeypatch,
                                                                      capsys):
    """u4's test row (i1) was quietly left out of every metric."""
    root = given_folder(tmp_path / "d")
    (tmp_path / "c.txt").write_text("i4\ni5\ni7\n")
    stop_before_encoding(monkeypatch)
    assert cli.main(["-q", "evaluate", "--set", f"data.path={root}", "--set",
                     "data.split=given", "--export", str(tmp_path / "models" / "m"),
                     "--candidates", str(tmp_path / "c.txt")]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out == ["given split: 9 train / 1 validation / 4 test interactions (3 candidate "
                   "items)",
                   f"note: 1 of 4 test rows is not scored (1 has its item outside the "
                   f"candidates in {tmp_path / 'c.txt'}); the metrics are over 3 rows of 3 of "
                   "4 users",
                   "note: popularity: none of the 3 candidate items has a training "
                   "interaction, so its row ranks them in catalogue order"]


def test_split_none_says_to_pass_a_test_file(tmp_path, monkeypatch, capsys):
    """It said a given split needs rows whose split column says test."""
    root = given_folder(tmp_path / "d")
    stop_before_encoding(monkeypatch)
    assert cli.main(["-q", "evaluate", "--set", f"data.path={root}", "--set", "data.split=none",
                     "--export", str(tmp_path / "models" / "m")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: data.split: none trains on every row: pass --test FILE to evaluate")


def test_each_export_version_gets_its_own_metrics_file(tmp_path):
    """``--export DIR/1`` then ``--export DIR/2`` both wrote metrics-export.json."""
    for version in (1, 2):
        (tmp_path / "m" / str(version)).mkdir(parents=True)
        (tmp_path / "m" / str(version) / "saved_model.pb").write_bytes(b"")
    (tmp_path / "m-bruteforce" / "1").mkdir(parents=True)  # --index both: two models
    (tmp_path / "m-bruteforce" / "1" / "saved_model.pb").write_bytes(b"")
    name = pipeline.evaluation_output_name
    assert name(export=tmp_path / "m" / "1") == "metrics-export-m-1"
    assert name(export=str(tmp_path / "m" / "2")) == "metrics-export-m-2"
    assert name(export=tmp_path / "m") == "metrics-export-m-2"  # the newest, the one scored
    assert name(export=tmp_path / "m-bruteforce") == "metrics-export-m-bruteforce-1"
    (tmp_path / "odd name").mkdir()
    assert name("t.csv", "c.txt", tmp_path / "odd name") == (
        "metrics-test-t-candidates-c-export-odd_name")
    assert name() == "metrics" and name("t.csv", "c.txt") == "metrics-test-t-candidates-c"


def test_a_name_taken_by_another_evaluation_gets_a_digest_of_its_sources(tmp_path):
    """Two ``test.csv`` of different folders (or exports of two base folders) wrote one file."""
    name, sources = pipeline.evaluation_output_name, pipeline.evaluation_sources
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    assert name(tmp_path / "a" / "test.csv", eval_dir=eval_dir) == "metrics-test-test"
    (eval_dir / "metrics-test-test.json").write_text(json.dumps(
        {"sources": sources(tmp_path / "a" / "test.csv")}))
    assert name(tmp_path / "a" / "test.csv", eval_dir=eval_dir) == "metrics-test-test"
    other = name(tmp_path / "b" / "test.csv", eval_dir=eval_dir)
    assert re.fullmatch(r"metrics-test-test-[0-9a-f]{8}", other)
    assert other == name(tmp_path / "b" / "test.csv", eval_dir=eval_dir)  # the same each time
    (eval_dir / "metrics-test-test.json").write_text('{"results": {}}')  # an older file
    assert name(tmp_path / "b" / "test.csv", eval_dir=eval_dir) == "metrics-test-test"


def test_a_supplied_test_set_is_filtered_and_its_listwise_ratings_checked_up_front(
        tiny_config, tiny_workspace, tmp_path, capsys):
    """Before anything is encoded or restored: rows below ``data.min_rating`` are left out
    (with a note), and a listwise head's negative rating is named by file and line (it was
    refused only after the model had been restored and the catalogue encoded)."""
    dataset = tiny_workspace.dataset
    user, items = str(tiny_workspace.user_ids[0]), [str(i) for i in dataset.catalog.item_ids]
    (tmp_path / "t.csv").write_text(f"user_id,item_id,rating\n{user},{items[0]},5\n"
                                    f"{user},{items[1]},-1\n")
    config = load_config(tiny_config, ["data.min_rating=0"])
    assert len(cli._supplied_test(str(tmp_path / "t.csv"), dataset, config)) == 1
    assert (f"note: 1 row(s) of {tmp_path / 't.csv'} rated below data.min_rating=0 left out, "
            "as interactions.csv's are") in capsys.readouterr().out
    listwise = load_config(tiny_config, ["ranking.enabled=true", "ranking.task=listwise"])
    with pytest.raises(DataError) as error:
        cli._supplied_test(str(tmp_path / "t.csv"), dataset, listwise)
    assert str(error.value) == (f"{tmp_path}/t.csv line 3: rating -1: ranking.task=listwise "
                                "needs ratings >= 0")
