"""Report writers: a real PNG, an exact Markdown table, strict atomic JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tfmmrec.evaluation import RankingResult, format_table, plot_metric_curves, write_json

TWO_TOWER = {"recall@10": 0.12345, "recall@50": 0.3, "ndcg@10": 0.05, "ndcg@50": 0.1,
             "mrr": 0.07, "num_users": 300}
POPULAR = {"recall@10": 0.05, "recall@50": 0.15, "ndcg@10": 0.02, "ndcg@50": 0.04,
           "mrr": 0.03, "num_users": 300}


def leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_plot_writes_a_valid_png(tmp_path):
    results = {"two_tower": RankingResult(metrics=TWO_TOWER), "popularity": POPULAR}
    path = plot_metric_curves(results, tmp_path / "plots" / "curves.png", title="demo")
    assert path == tmp_path / "plots" / "curves.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > image.size[1]  # two subplots side by side
    assert leftovers(path.parent) == []


def test_plot_accepts_mean_std_and_one_family(tmp_path):
    results = {"seeds": {"recall@10": (0.1, 0.01), "recall@20": (0.2, 0.02)}}
    path = plot_metric_curves(results, tmp_path / "recall.png", metrics="recall")
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_plot_names_available_families_when_one_is_missing(tmp_path):
    with pytest.raises(ValueError, match="families present: ndcg, recall"):
        plot_metric_curves({"m": TWO_TOWER}, tmp_path / "x.png", metrics=("coverage",))
    assert not (tmp_path / "x.png").exists()


def test_format_table_is_markdown_with_four_decimals():
    table = format_table(
        {"two_tower": TWO_TOWER, "pop|ular": {"recall@10": (0.05, 0.0012)}},
        ["recall@10", "mrr", "num_users"],
    )
    assert table == (
        "| model | recall@10 | mrr | num_users |\n"
        "| :--- | ---: | ---: | ---: |\n"
        "| two_tower | 0.1235 | 0.0700 | 300 |\n"
        "| pop\\|ular | 0.0500 ± 0.0012 | – | – |\n"
    )


def test_format_table_reads_ranking_results():
    table = format_table({"m": RankingResult(metrics={"mrr": np.float32(0.25)})}, ["mrr"])
    assert table.splitlines()[-1] == "| m | 0.2500 |"


def test_write_json_converts_numpy_and_nan(tmp_path):
    path = tmp_path / "out" / "results.json"
    result = RankingResult(metrics={"mrr": np.float64(0.5), "num_users": np.int64(3)},
                           per_user={"rank": np.array([1, 2])})
    write_json({"model": result, "nan": float("nan"), "ks": (10, 20), "dir": tmp_path}, path)
    data = json.loads(path.read_text())
    assert data == {
        "model": {"metrics": {"mrr": 0.5, "num_users": 3}, "per_user": {"rank": [1, 2]}},
        "nan": None,
        "ks": [10, 20],
        "dir": str(tmp_path),
    }


def test_write_json_replaces_atomically_and_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "results.json"
    write_json({"version": 1}, path)
    write_json({"version": 2}, path)
    assert json.loads(path.read_text()) == {"version": 2}
    with pytest.raises(TypeError, match=r"\$\.bad"):
        write_json({"version": 3, "bad": object()}, path)
    assert json.loads(path.read_text()) == {"version": 2}
    assert leftovers(tmp_path) == []
