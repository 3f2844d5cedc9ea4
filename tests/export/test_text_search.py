"""``export.text_search_weight``: ``query_text`` searches the trained space plus the frozen
encoder's text similarity, through its own index, kept in step by catalogue updates.

The tiny model (tests/conftest.py) is exported once with text search (BruteForce: exact, so
scores compare to the hand-computed ones); every update test works on its own copy.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tests.export.conftest import private_copy
from tests.export.test_op_audit import assert_stock_ops, tf1_session_answers
from tfmmrec import modalities, pipeline
from tfmmrec.config import ScannConfig, load_config
from tfmmrec.errors import ConfigError
from tfmmrec.evaluation.crossmodal import embed_queries
from tfmmrec.export import catalog
from tfmmrec.export.audit import copy_on_read, registered_ops, signature_ops
from tfmmrec.export.index import IndexSettings
from tfmmrec.export.loader import ExportedModel
from tfmmrec.export.variables import VersionVariables

K = 20
WEIGHT = 2.0  # not 1: an export that ignored the weight would fail the score test
QUERIES = ["a red thing", "blue sound", "nothing in particular"]


def export_with_text_search(tiny_config, tiny_trained, store: Path, index: str,
                            weight: float = WEIGHT) -> Path:
    config = load_config(tiny_config, [f"export.base_dir={store}", "export.k=5",
                                       f"export.max_k={K}", "export.max_exclude=10",
                                       "export.max_session_items=10",
                                       f"export.text_search_weight={weight}"])
    return pipeline.export(config, model=tiny_trained.model, workspace=tiny_trained.workspace,
                           index=index)


@pytest.fixture(scope="module")
def text_search_export(tiny_config, tiny_trained, tmp_path_factory) -> Path:
    return export_with_text_search(tiny_config, tiny_trained,
                                   tmp_path_factory.mktemp("text-search"), "brute_force")


@pytest.fixture
def base(text_search_export, tmp_path) -> Path:
    """A private copy of the model folder holding version 1."""
    return private_copy(text_search_export, tmp_path)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def query_text(model: ExportedModel, texts) -> dict[str, np.ndarray]:
    return model.call("query_text", text=np.asarray(texts), k=np.int32(K))


def hand_scores(tiny_trained, texts, item_embeddings, text_features) -> np.ndarray:
    """``cos(q, e[:d]) + WEIGHT · cos(f_q, f)`` in numpy, from the in-memory model."""
    model, ws = tiny_trained.model, tiny_trained.workspace
    dim = model.item_tower.dim
    queries = unit(embed_queries(model, ws, "text", texts))
    features = unit(ws.encoders["text"](tf.constant(texts), training=False).numpy())
    return (queries @ unit(item_embeddings[:, :dim]).T
            + WEIGHT * features @ text_features.T)


def test_query_text_scores_the_trained_space_plus_weighted_text_similarity(
        text_search_export, tiny_trained):
    model, ws = tiny_trained.model, tiny_trained.workspace
    features = pipeline.export_text_features(ws, model)
    table = pipeline.embed_items(model, ws.dataset.num_items)
    expected = hand_scores(tiny_trained, QUERIES, table, features)
    top = np.argsort(-expected, axis=1, kind="stable")[:, :K]
    answer = query_text(ExportedModel(text_search_export), QUERIES)
    np.testing.assert_allclose(answer["scores"], np.take_along_axis(expected, top, axis=1),
                               atol=1e-5)
    # ids where the scores are apart (float ties may swap)
    gaps = np.abs(np.diff(np.take_along_axis(expected, top, axis=1), axis=1)) > 1e-4
    clear = np.concatenate([gaps[:, :1], gaps[:, 1:] & gaps[:, :-1], gaps[:, -1:]], axis=1)
    ids = ws.dataset.catalog.item_ids[top].astype(str)
    assert (answer["item_ids"].astype(str) == ids)[clear].all()
    # items without text get no text part: their feature rows are zeros
    np.testing.assert_array_equal(features[~ws.contents["text"].mask.astype(bool)], 0.0)
    np.testing.assert_allclose(np.linalg.norm(features[ws.contents["text"].mask.astype(bool)],
                                              axis=1), 1.0, atol=1e-5)
    metadata = ExportedModel(text_search_export).metadata["text_search"]
    assert (metadata["weight"], metadata["content_dim"]) == (WEIGHT, model.item_tower.dim)


def test_text_search_leaves_every_other_signature_as_it_was(text_search_export, exported):
    """Against the session's plain export (tests/export/conftest.py: weight 0, the default)."""
    plain = ExportedModel(exported[1]["brute_force"])
    assert plain.metadata["text_search"] is None
    hybrid = ExportedModel(text_search_export)
    users = np.array(["u000", "u001", "someone-new"])
    for name in ("item_ids", "scores"):
        np.testing.assert_array_equal(hybrid.recommend(users, k=K)[name],
                                      plain.recommend(users, k=K)[name])
    np.testing.assert_array_equal(hybrid.recommend(users)["item_ids"][:, :5],
                                  plain.recommend(users)["item_ids"][:, :5])  # serving_default
    sessions = [["i0003", "i0010"], ["i0001", ""]]
    np.testing.assert_array_equal(hybrid.recommend_session(sessions, ["u001", ""], k=K)[
        "item_ids"], plain.recommend_session(sessions, ["u001", ""], k=K)["item_ids"])
    ids = np.array(["i0001", "i0002", "not-an-item"])
    for name in ("embedding", "found"):
        np.testing.assert_array_equal(hybrid.call("embed_items", item_id=ids)[name],
                                      plain.call("embed_items", item_id=ids)[name])
    np.testing.assert_array_equal(hybrid.call("embed_query", user_id=users)["embedding"],
                                  plain.call("embed_query", user_id=users)["embedding"])
    for modality in ("image", "audio"):
        request = {modality: modalities.get(modality).warmup_sample(), "k": np.int32(K)}
        for name in ("item_ids", "scores"):
            np.testing.assert_array_equal(hybrid.call(f"query_{modality}", **request)[name],
                                          plain.call(f"query_{modality}", **request)[name])
    # with weight 0 query_text is the served index's search: no text part in its scores
    plain_scores = query_text(plain, QUERIES)["scores"]
    assert np.all(plain_scores <= 1.0 + 1e-5)
    assert np.any(query_text(hybrid, QUERIES)["scores"] > 1.0 + 1e-5)


def test_catalogue_updates_keep_the_text_index_in_step(base, items, tiny_demo_dir, tiny_trained):
    """Removing five items and adding them back answers every text query exactly as the
    export did (their features are recomputed by the version's own encoder), under the
    exported graph; an update moves an item's text feature with its content."""
    original = ExportedModel(base / "1")
    chosen = items[items["title"] != ""].iloc[:5]
    texts = [*QUERIES, *(f"{t}. {d}" for t, d in zip(chosen["title"], chosen["description"],
                                                     strict=True))]
    before = query_text(original, texts)
    for item, found in zip(chosen["item_id"], before["item_ids"][len(QUERIES):], strict=True):
        assert item.encode() in found  # each film's own text finds it: the re-add is tested
    removed = catalog.remove(base, item_ids=list(chosen["item_id"]))
    gone = query_text(ExportedModel(removed.version_dir), texts)["item_ids"].astype(str)
    assert not set(gone.ravel()) & set(chosen["item_id"])
    path = tiny_demo_dir / "text-search-readd.csv"
    chosen.to_csv(path, index=False)
    added = catalog.add(base, path)
    after = query_text(ExportedModel(added.version_dir), texts)
    np.testing.assert_array_equal(after["item_ids"], before["item_ids"])
    np.testing.assert_allclose(after["scores"], before["scores"], atol=1e-5)
    graph = (base / "1" / "saved_model.pb").read_bytes()
    assert (added.version_dir / "saved_model.pb").read_bytes() == graph

    a, b = items[items["title"] != ""]["item_id"].iloc[5:7]
    changed = items[items["item_id"] == b].assign(item_id=a)
    path = tiny_demo_dir / "text-search-update.csv"
    changed.to_csv(path, index=False)
    updated = catalog.update(base, path)
    stored, first = (pd.DataFrame(VersionVariables(v).read(("text_features",)),
                                  index=VersionVariables(v).read(("item_ids",)).astype(str))
                     for v in (updated.version_dir, base / "1"))
    assert len(stored) == len(items)
    np.testing.assert_allclose(stored.loc[a], first.loc[b], atol=1e-5)  # a has b's text now
    others = [i for i in first.index if i != a]
    np.testing.assert_allclose(stored.loc[others], first.loc[others], atol=1e-6)
    row = changed.iloc[0]
    answer = query_text(ExportedModel(updated.version_dir), [f"{row['title']}. "
                                                            f"{row['description']}"])
    top = dict(zip(answer["item_ids"][0].astype(str), answer["scores"][0], strict=True))
    assert a in top and b in top  # the text index was rebuilt: a scores as b does
    np.testing.assert_allclose(top[a], top[b], atol=1e-5)


def test_text_search_export_runs_on_stock_tf_serving_ops_as_a_tf1_graph(text_search_export,
                                                                        tmp_path):
    assert_stock_ops(text_search_export, registered_ops())
    answer = tf1_session_answers(text_search_export, tmp_path)["signatures"]["query_text"]
    model = ExportedModel(text_search_export)
    # the export's own warmup request (export.warmup): the text modality's sample
    expected = model.call("query_text", text=modalities.get("text").warmup_sample(),
                          k=np.int32(model.metadata["default_k"]))
    assert answer["item_ids"] == expected["item_ids"].astype(str).tolist()
    np.testing.assert_allclose(answer["scores"], expected["scores"], atol=1e-5)


# A whole ScaNN export (90 s): the text index is built through the same registry as the served
# one (tests/export/test_catalog.py rebuilds every kind), and benchmarks/text_search_export.py
# serves ML-100K through a ScaNN text index.
@pytest.mark.slow
def test_scann_text_search_finds_what_brute_force_finds(text_search_export, tiny_config,
                                                        tiny_trained, tmp_path):
    version = export_with_text_search(tiny_config, tiny_trained, tmp_path, "scann")
    assert "Scann>ScannSearchBatched" in signature_ops(version)["query_text"]
    scann, exact = ExportedModel(version), ExportedModel(text_search_export)
    users = np.array(["u000", "u001"])
    # the served index first, then the text index, then the served one again: each searches
    # its own ScaNN searcher (they once shared whichever was created first)
    before = scann.recommend(users, k=K)["item_ids"]
    found = query_text(scann, QUERIES)["item_ids"][:, :10]
    np.testing.assert_array_equal(scann.recommend(users, k=K)["item_ids"], before)
    expected = query_text(exact, QUERIES)["item_ids"][:, :10]
    overlap = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, expected, strict=True)])
    assert overlap >= 0.8
    assert (before == exact.recommend(users, k=K)["item_ids"]).mean() >= 0.8
    answers = tf1_session_answers(version, tmp_path, "scann")["signatures"]  # TF Serving's way
    assert set(answers) >= {"recommend", "query_text"}


def test_the_text_index_is_scann_as_served_or_exact():
    """ScaNN keeps its settings (its every-leaf search scores hashed codes); a partitioned
    text index would be built only to be scanned whole, so the other kinds are exact."""
    settings = IndexSettings("scann", 50, scann=ScannConfig(num_leaves_to_search=3))
    assert catalog.text_search_settings(settings) == settings
    for kind in ("partitioned", "brute_force"):
        assert catalog.text_search_settings(IndexSettings(kind, 50)).kind == "brute_force"


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_negative_or_non_finite_weight_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"export\.text_search_weight"):
        load_config(None, [f"export.text_search_weight={value}"])


def test_text_search_without_a_frozen_text_encoder_is_a_config_error(tiny_trained):
    no_text = SimpleNamespace(modalities=("image",))
    with pytest.raises(ConfigError, match="needs a text tower"):
        pipeline.export_text_features(no_text, tiny_trained.model)
    fine_tuned = SimpleNamespace(item_tower=SimpleNamespace(encoders={"text": object()}))
    with pytest.raises(ConfigError, match="frozen text encoder"):
        pipeline.export_text_features(tiny_trained.workspace, fine_tuned)


def test_no_variable_of_the_text_search_export_is_read_both_by_rows_and_densely(
        text_search_export):
    assert copy_on_read(text_search_export) == {}
