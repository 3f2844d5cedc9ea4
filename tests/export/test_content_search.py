"""``export.content_search``: content queries (``query_text`` / ``query_image`` /
``query_audio``) score every item, while user queries keep the index's own search.

The tiny model (tests/conftest.py, 80 items) is exported with indexes set to search little
(one of 16 partitions, one of 8 ScaNN leaves), so their own search visibly misses what exact
search finds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfmmrec import modalities, pipeline
from tfmmrec.config import load_config
from tfmmrec.errors import ConfigError
from tfmmrec.evaluation.crossmodal import embed_queries
from tfmmrec.export.index import IndexSettings, build
from tfmmrec.export.loader import ExportedModel

K = 5
TEXTS = ["a red thing", "blue sound", "nothing in particular", "the quick brown fox",
         "an old film about the sea", "music", "green", "a loud noise in the night"]
NARROW = ["export.partitioned.num_partitions=16", "export.partitioned.partitions_to_probe=1",
          "export.scann.num_leaves=8", "export.scann.num_leaves_to_search=1"]


def narrow_config(tiny_config, store: Path, content_search: str = "every_item"):
    return load_config(tiny_config, [
        f"export.base_dir={store}", f"export.k={K}", f"export.max_k={K}",
        "export.max_exclude=0", f"export.content_search={content_search}", *NARROW])


def export(tiny_config, tiny_trained, store: Path, index: str) -> Path:
    return pipeline.export(narrow_config(tiny_config, store), model=tiny_trained.model,
                           workspace=tiny_trained.workspace, index=index)


@pytest.fixture(scope="module")
def partitioned_version(tiny_config, tiny_trained, tmp_path_factory) -> Path:
    return export(tiny_config, tiny_trained, tmp_path_factory.mktemp("content-search"),
                  "partitioned")


def text_queries(tiny_trained, version: Path):
    """``(queries [Q, d], served table [N, d])`` in numpy, as ``query_text`` embeds them."""
    served = ExportedModel(version)
    table = served.call("embed_items", item_id=tiny_trained.workspace.dataset.catalog.item_ids
                        .astype(str))["embedding"]
    queries = embed_queries(tiny_trained.model, tiny_trained.workspace, "text", TEXTS)
    return queries, table[:, :queries.shape[1]]


def exact_scores(queries: np.ndarray, table: np.ndarray) -> np.ndarray:
    return -np.sort(-(queries @ table.T), axis=1)[:, :K]


def content_answers(version: Path) -> dict[str, dict[str, np.ndarray]]:
    model = ExportedModel(version)
    answers = {"text": model.call("query_text", text=np.array(TEXTS), k=np.int32(K))}
    for modality in ("image", "audio"):
        answers[modality] = model.call(
            f"query_{modality}", **{modality: modalities.get(modality).warmup_sample(),
                                    "k": np.int32(K)})
    return answers


def test_content_queries_find_the_exact_top_k_through_a_narrow_index(
        partitioned_version, tiny_trained, tiny_config, tmp_path):
    """Exact scores from the exported ``query_text``, where the same index searched as a
    user query is (built here from the served table, as the export built it) misses some."""
    queries, table = text_queries(tiny_trained, partitioned_version)
    expected = exact_scores(queries, table)
    answer = content_answers(partitioned_version)["text"]
    np.testing.assert_allclose(answer["scores"], expected, atol=1e-5)
    settings = IndexSettings.from_export(narrow_config(tiny_config, tmp_path).export,
                                         kind="partitioned")
    narrow, _ = build(table, None, settings)(queries, k=K)
    assert (narrow.numpy() < expected - 1e-5).any()
    metadata = ExportedModel(partitioned_version).metadata
    assert metadata["content_search"] == metadata["graph_constants"]["content_search"]
    assert metadata["content_search"] == "every_item"


@pytest.mark.slow  # ScaNN's every-leaf search: test_index.py covers it in memory
def test_scann_content_queries_answer_as_the_exact_partitioned_scan(
        partitioned_version, tiny_config, tiny_trained, tmp_path):
    scann = content_answers(export(tiny_config, tiny_trained, tmp_path, "scann"))
    exact = content_answers(partitioned_version)
    for modality, answer in scann.items():
        np.testing.assert_allclose(answer["scores"], exact[modality]["scores"], atol=1e-5,
                                   err_msg=modality)


def test_an_unknown_content_search_is_a_config_error():
    with pytest.raises(ConfigError, match=r"export\.content_search"):
        load_config(None, ["export.content_search=exhaustive"])
