"""Pointwise/listwise rating metrics and cross-modal ranks against hand-computed values."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from tfmmrec.evaluation.crossmodal import cross_modal_metrics, cross_modal_ranks
from tfmmrec.evaluation.rating import auc, list_ndcg, log_loss, mae, rmse


def test_rmse_and_mae():
    assert math.isclose(rmse([1, 2, 3], [1, 2, 5]), math.sqrt(4 / 3))
    assert math.isclose(mae([1, 2, 3], [1, 2, 5]), 2 / 3)


def test_auc_counts_ties_as_half():
    # positives {0.9, 0.5}, negatives {0.5, 0.1}: pairs won 1 + 1 + 0.5 + 1 of 4
    assert math.isclose(auc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]), 3.5 / 4)
    assert math.isnan(auc([0.1, 0.2], [1, 1]))


def test_list_ndcg_with_graded_gains():
    # ranked gains [1, 3, 0] vs ideal [3, 1, 0] at k=2:
    # DCG = 1 + 3/log2(3); IDCG = 3 + 1/log2(3)
    scores = np.array([[0.9, 0.5, 0.1]])
    gains = np.array([[1.0, 3.0, 0.0]])
    expected = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    assert math.isclose(list_ndcg(scores, gains, 2), expected, rel_tol=1e-9)
    assert math.isnan(list_ndcg(scores, np.zeros_like(gains), 2))


def test_list_ndcg_skips_lists_rated_all_alike():
    """Any order of a list of equal gains is ideal: its NDCG of 1.0 would lift every model's
    mean alike, so such a list is skipped like one with no gain (NaN when all are)."""
    scores = np.array([[0.9, 0.5, 0.1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    gains = np.array([[1.0, 3.0, 0.0], [4.0, 4.0, 4.0], [0.0, 0.0, 0.0]])
    expected = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))  # the first list's alone
    assert math.isclose(list_ndcg(scores, gains, 2), expected, rel_tol=1e-9)
    assert math.isnan(list_ndcg(scores[1:], gains[1:], 3))


def test_the_ranking_head_logs_how_many_lists_ndcg_skips(caplog):
    from tfmmrec.evaluation.ranking import _log_skipped_lists

    with caplog.at_level(logging.INFO, logger="tfmmrec.evaluation.ranking"):
        _log_skipped_lists(np.array([[1.0, 3.0, 0.0], [4.0, 4.0, 4.0], [0.0, 0.0, 0.0]]))
        _log_skipped_lists(np.array([[1.0, 3.0, 0.0]]))  # none skipped: nothing to say
    assert [r.getMessage() for r in caplog.records] == [
        "listwise NDCG: 2 of 3 test lists skipped, every item in them rated the same "
        "(any order is ideal)"]


def test_cross_modal_ranks_and_metrics():
    source = np.eye(3)
    target = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    # item 0: its target ties with item 1's → rank 2 (ties count against the query);
    # item 1: target [1,0,0] scores 0 for source e2, everything scores 0 → rank 3;
    # item 2 lacks the source modality → not a query.
    ranks = cross_modal_ranks(source, target, np.array([1, 1, 0], bool),
                              np.array([1, 1, 1], bool))
    assert list(ranks) == [2, 3]
    metrics = cross_modal_metrics(ranks, ks=(1, 2))
    assert metrics == {"recall@1": 0.0, "recall@2": 0.5, "median_rank": 2.5, "num_queries": 2}


@pytest.mark.parametrize("ks", [(0,), (1, -5), (), (2.5,)])
def test_cross_modal_cutoffs_must_be_positive_integers(ks):
    with pytest.raises(ValueError, match="ks must be a non-empty list of positive integers"):
        cross_modal_metrics(np.array([1, 2]), ks=ks)


def test_log_loss_of_logits():
    # logit 0 → p = 0.5 → -log 0.5 for either label; a confident right logit → ~0
    assert math.isclose(log_loss([0.0, 0.0], [1, 0]), math.log(2))
    assert log_loss([30.0], [1]) < 1e-9
    assert math.isclose(log_loss([-2.0], [1]), math.log1p(math.exp(2.0)), rel_tol=1e-12)


def test_cross_modal_evaluation_of_a_trained_model(tiny_trained):
    """Every ordered modality pair is scored, each item having both modalities is a query,
    and the numbers are the ranks of the items' own single-modality embeddings."""
    from tfmmrec.evaluation.crossmodal import evaluate_cross_modal
    from tfmmrec.evaluation.embeddings import embed_items, single_modality_embeddings

    model, ws = tiny_trained.model, tiny_trained.workspace
    results = evaluate_cross_modal(model, ws)
    assert set(results) == {f"{a}→{b}" for a in ws.modalities
                            for b in (*ws.modalities, "fused") if a != b}
    singles = single_modality_embeddings(model, ws.dataset.num_items, batch_size=7)
    text, image = ws.contents["text"].mask, ws.contents["image"].mask
    ranks = cross_modal_ranks(singles["text"], singles["image"], text, image)
    assert results["text→image"] == cross_modal_metrics(ranks, (1, 5, 10))
    assert results["text→image"]["num_queries"] == int((text & image).sum())
    # an item's text alone against every item's served embedding: the query_text path
    served = embed_items(model, ws.dataset.num_items)[:, :singles["text"].shape[1]]
    ranks = cross_modal_ranks(singles["text"], served, text, np.ones(len(text), bool))
    assert results["text→fused"] == cross_modal_metrics(ranks, (1, 5, 10))
    assert results["text→fused"]["num_queries"] == int(text.sum())
    with pytest.raises(ValueError, match=r"ks must be .* got \[0\]"):
        evaluate_cross_modal(model, ws, ks=(0,))


def test_a_query_string_embeds_as_its_item_text_does(tiny_trained):
    """An item's own catalogue text sent as a query (raw string → encoder → text alone) lands
    where the item's cached text features do: the query path is the catalogue's path."""
    from tfmmrec.evaluation.crossmodal import embed_queries
    from tfmmrec.evaluation.embeddings import single_modality_embeddings

    model, ws = tiny_trained.model, tiny_trained.workspace
    texts = list(ws.dataset.catalog.values("text"))[:9]
    queries = embed_queries(model, ws, "text", texts, batch_size=4)
    singles = single_modality_embeddings(model, ws.dataset.num_items)["text"][:9]
    assert queries.shape == singles.shape
    np.testing.assert_allclose(queries, singles, atol=1e-5)


def test_query_embedding_misuse_is_refused_or_read_as_meant(tiny_trained):
    """A lone string embedded each character as a query; an unknown modality was a KeyError;
    an empty list failed in numpy."""
    import pytest

    from tfmmrec.evaluation.crossmodal import embed_queries

    model, ws = tiny_trained.model, tiny_trained.workspace
    text = next(iter(ws.dataset.catalog.values("text")))
    one = embed_queries(model, ws, "text", text)
    np.testing.assert_allclose(one, embed_queries(model, ws, "text", [text]), atol=1e-6)
    assert one.shape[0] == 1
    assert embed_queries(model, ws, "text", []).shape == (0, one.shape[1])
    with pytest.raises(ValueError, match=r"modality 'txt': the model's are "):
        embed_queries(model, ws, "txt", ["a film"])


def test_precision_at_k_counts_relevant_items_in_each_top_k():
    from tfmmrec.evaluation.crossmodal import precision_at_k

    items = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8]])
    queries = np.array([[1.0, 0.0], [0.0, 1.0]])  # tops: items 0, 1 / items 2, 3
    relevant = np.array([[True, False, False, True], [False, False, True, True]])
    np.testing.assert_allclose(precision_at_k(queries, items, relevant, 2), [0.5, 1.0])
    np.testing.assert_allclose(precision_at_k(queries, items, relevant, 1), [1.0, 1.0])


@pytest.mark.parametrize("metric, names", [(rmse, ("predictions", "targets")),
                                           (mae, ("predictions", "targets")),
                                           (log_loss, ("logits", "labels")),
                                           (auc, ("scores", "labels"))])
def test_pointwise_metrics_refuse_mismatched_shapes(metric, names):
    """numpy broadcast [3] against [3, 1] to [3, 3]: rmse(zeros(3), zeros((3, 1))) was 0.0."""
    with pytest.raises(ValueError) as error:
        metric(np.zeros(3), np.zeros((3, 1)))
    assert str(error.value) == (f"{names[0]} of shape (3,) and {names[1]} of shape (3, 1): "
                                "the shapes must be the same")


def test_list_ndcg_refuses_negative_gains():
    """A negative gain made NDCG negative (a listwise head trained on a negative rating)."""
    with pytest.raises(ValueError, match=r"gains must be >= 0 .*got -2"):
        list_ndcg(np.array([[0.9, 0.5]]), np.array([[-2.0, 1.0]]), 2)
    with pytest.raises(ValueError, match=r"scores of shape \(1, 2\) and gains of shape \(2,\)"):
        list_ndcg(np.array([[0.9, 0.5]]), np.array([1.0, 0.0]), 2)


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_media_queries_take_file_paths_or_request_bytes_as_the_export_does(tiny_trained,
                                                                          tmp_path, modality):
    """A path (or a file's bytes) was sent to the encoder as a string: "Cast string to
    float". Now decoded by the modality's decode_request, as query_image/query_audio do."""
    from tests.serving.conftest import sample_png, sample_wav
    from tfmmrec.evaluation.crossmodal import _decoded, embed_queries

    model, ws = tiny_trained.model, tiny_trained.workspace
    payload = sample_png() if modality == "image" else sample_wav()
    path = tmp_path / ("query.png" if modality == "image" else "query.wav")
    path.write_bytes(payload)
    by_path = embed_queries(model, ws, modality, [str(path), path])
    assert by_path.shape[0] == 2 and np.isfinite(by_path).all()
    np.testing.assert_allclose(by_path[0], by_path[1], atol=1e-6)
    np.testing.assert_allclose(embed_queries(model, ws, modality, [payload]), by_path[:1],
                               atol=1e-6)
    if modality == "image":  # decoded pixels pass straight through
        decoded = _decoded(modality, ws.config, [payload]).numpy()
        np.testing.assert_allclose(embed_queries(model, ws, modality, decoded), by_path[:1],
                                   atol=1e-6)
    with pytest.raises(ValueError, match=rf"{modality} query: no such file"):
        embed_queries(model, ws, modality, [str(tmp_path / "missing.png")])
