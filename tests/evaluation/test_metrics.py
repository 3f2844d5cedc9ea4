"""Ranking metrics on hand-computed cases, tie rules, masking, batching and a reference check."""

from __future__ import annotations

import logging
from math import log2

import numpy as np
import pytest

import tfmmrec.evaluation.metrics as metrics_module
from tfmmrec.evaluation import (
    RankingResult,
    evaluate_ranking,
    interactions_matrix,
    popularity_scores,
    top_k_accuracy,
)


def as_embeddings(scores: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Queries = the score rows, items = identity, so ``Q @ I.T`` is exactly ``scores``."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores, np.eye(scores.shape[1])


def matrix(rows: list[list[int]], num_items: int):
    """A users × items interaction matrix from one list of item indices per user."""
    users = [u for u, items in enumerate(rows) for _ in items]
    items = [i for row in rows for i in row]
    return interactions_matrix(np.array(users, dtype=int), np.array(items, dtype=int),
                               len(rows), num_items)


# Two users over five items, used by several tests.
#   user 0 ranks items 0 (.9), 2 (.8), 4 (.5), 3 (.3), 1 (.1); relevant {2, 3} at ranks 2 and 4.
#   user 1 ranks items 1 (.7), 2 (.6), 4 (.4), 0 (.2), 3 (.1); relevant {0} at rank 4.
SCORES = [[0.9, 0.1, 0.8, 0.3, 0.5], [0.2, 0.7, 0.6, 0.1, 0.4]]
TEST = [[2, 3], [0]]


def test_hand_computed_recall_ndcg_hit_rate_mrr_coverage():
    q, items = as_embeddings(SCORES)
    result = evaluate_ranking(q, items, matrix(TEST, 5), ks=(1, 2, 4))
    m = result.metrics
    # recall@K = hits@K / min(K, |R|):  user 0: 0/1, 1/2, 2/2;  user 1: 0/1, 0/1, 1/1
    assert m["recall@1"] == pytest.approx((0 + 0) / 2)
    assert m["recall@2"] == pytest.approx((0.5 + 0) / 2)
    assert m["recall@4"] == pytest.approx((1 + 1) / 2)
    # ndcg: user 0 hits at ranks 2, 4 -> DCG@2 = 1/log2(3), DCG@4 = 1/log2(3) + 1/log2(5),
    #       IDCG over min(K, 2) = 2 items = 1 + 1/log2(3) (K >= 2), 1 (K = 1);
    #       user 1 hit at rank 4 -> DCG@4 = 1/log2(5), IDCG over min(K, 1) = 1 item = 1.
    assert m["ndcg@1"] == pytest.approx(0.0)
    assert m["ndcg@2"] == pytest.approx(((1 / log2(3)) / (1 + 1 / log2(3)) + 0) / 2)  # 0.1934
    u0_ndcg4 = (1 / log2(3) + 1 / log2(5)) / (1 + 1 / log2(3))  # 0.6509
    u1_ndcg4 = 1 / log2(5)  # 0.4307
    assert m["ndcg@4"] == pytest.approx((u0_ndcg4 + u1_ndcg4) / 2)  # 0.5408
    # hit rate: user 0 first hit at 2, user 1 at 4.
    assert (m["hit_rate@1"], m["hit_rate@2"], m["hit_rate@4"]) == pytest.approx((0, 0.5, 1))
    # mrr: first relevant at rank 2 and rank 4 -> (1/2 + 1/4) / 2.
    assert m["mrr"] == pytest.approx(0.375)
    # coverage: top-1 {0} ∪ {1}; top-2 {0,2} ∪ {1,2}; top-4 covers all five.
    assert m["coverage@1"] == pytest.approx(2 / 5)
    assert m["coverage@2"] == pytest.approx(3 / 5)
    assert m["coverage@4"] == pytest.approx(5 / 5)
    assert (m["num_users"], m["num_users_skipped"]) == (2, 0)
    assert result.per_user is None


def test_per_user_output_is_aligned_with_evaluated_users():
    q, items = as_embeddings([SCORES[0], [0.5] * 5, SCORES[1]])  # the middle user has no test
    result = evaluate_ranking(q, items, matrix([TEST[0], [], TEST[1]], 5), ks=(2,),
                              return_per_user=True)
    per_user = result.per_user
    np.testing.assert_array_equal(per_user["user"], [0, 2])
    np.testing.assert_array_equal(per_user["num_relevant"], [2, 1])
    np.testing.assert_array_equal(per_user["rank"], [2, 4])
    np.testing.assert_allclose(per_user["mrr"], [1 / 2, 1 / 4])
    np.testing.assert_allclose(per_user["recall@2"], [1 / 2, 0])
    np.testing.assert_allclose(per_user["hit_rate@2"], [1, 0])
    assert result.metrics["recall@2"] == pytest.approx(per_user["recall@2"].mean())


def test_user_without_test_items_is_skipped_and_counted():
    q, items = as_embeddings([SCORES[0], SCORES[1]])
    result = evaluate_ranking(q, items, matrix([TEST[0], []], 5), ks=(2,))
    # only user 0 counts: recall@2 = 1/2, mrr = 1/2 (not diluted by user 1)
    assert result.metrics["recall@2"] == pytest.approx(0.5)
    assert result.metrics["mrr"] == pytest.approx(0.5)
    assert (result.metrics["num_users"], result.metrics["num_users_skipped"]) == (1, 1)


def test_no_evaluable_user_gives_nan_not_zero():
    q, items = as_embeddings([SCORES[0]])
    result = evaluate_ranking(q, items, matrix([[]], 5), ks=(2,))
    assert np.isnan(result.metrics["recall@2"]) and np.isnan(result.metrics["mrr"])
    assert (result.metrics["num_users"], result.metrics["num_users_skipped"]) == (0, 1)


def test_ties_rank_lower_item_index_first():
    # All four items score 0.5, so the ranking is 0, 1, 2, 3 for both users.
    q, items = as_embeddings([[0.5] * 4, [0.5] * 4])
    result = evaluate_ranking(q, items, matrix([[1], [0]], 4), ks=(1, 2), return_per_user=True)
    # user 0: item 1 at rank 2 -> misses top-1; user 1: item 0 at rank 1.
    np.testing.assert_array_equal(result.per_user["rank"], [2, 1])
    assert result.metrics["recall@1"] == pytest.approx((0 + 1) / 2)
    assert result.metrics["recall@2"] == pytest.approx((1 + 1) / 2)
    assert result.metrics["coverage@1"] == pytest.approx(1 / 4)  # only item 0 is ever first


def test_ties_straddling_the_cut_off_admit_lower_indices():
    # 50 equal scores and K = 10 < 50 exercises the partition path: the top 10 is items 0..9.
    q, items = as_embeddings([[1.0] * 50, [1.0] * 50, [1.0] * 50])
    result = evaluate_ranking(q, items, matrix([[9], [10], [49]], 50), ks=(10,),
                              return_per_user=True)
    np.testing.assert_array_equal(result.per_user["recall@10"], [1, 0, 0])
    np.testing.assert_array_equal(result.per_user["rank"], [10, 11, 50])
    assert result.metrics["coverage@10"] == pytest.approx(10 / 50)


def test_ties_below_distinct_leaders():
    # items 3 and 7 lead; the 8 remaining slots of the top 10 go to tied items 0,1,2,4,5,6,8,9.
    row = [0.0] * 20
    row[3], row[7] = 2.0, 1.0
    q, items = as_embeddings([row, row])
    result = evaluate_ranking(q, items, matrix([[9], [10]], 20), ks=(10,), return_per_user=True)
    np.testing.assert_array_equal(result.per_user["recall@10"], [1, 0])
    # ranks: 3, 7, then 0,1,2,4,5,6,8,9 -> item 9 is 10th, item 10 is 11th
    np.testing.assert_array_equal(result.per_user["rank"], [10, 11])


def test_ties_interleaved_with_lower_scores():
    # odd items score 1, even items 0 (50 items): the ranking starts 1, 3, 5, ..., 19 (top 10).
    # A plain argpartition returns some other 10 odd items here, in a shuffled order.
    row = [0.0, 1.0] * 25
    q, items = as_embeddings([row, row, row])
    result = evaluate_ranking(q, items, matrix([[3], [19], [21]], 50), ks=(10,),
                              return_per_user=True)
    # item 3 is 2nd, item 19 is 10th, item 21 is 11th
    np.testing.assert_array_equal(result.per_user["rank"], [2, 10, 11])
    np.testing.assert_array_equal(result.per_user["recall@10"], [1, 1, 0])
    # ndcg@10 of user 0: single hit at rank 2 -> 1/log2(3)
    assert result.per_user["ndcg@10"][0] == pytest.approx(1 / log2(3))


def test_k_larger_than_catalogue_is_clamped():
    # user ranks 1 (.9), 2 (.5), 0 (.1); relevant {0, 2} at ranks 3 and 2.
    q, items = as_embeddings([[0.1, 0.9, 0.5]])
    m = evaluate_ranking(q, items, matrix([[0, 2]], 3), ks=(2, 10)).metrics
    # recall@10 = 2 / min(10, 2) = 1; DCG = 1/log2(3) + 1/log2(4); IDCG = 1 + 1/log2(3)
    assert m["recall@10"] == pytest.approx(1.0)
    assert m["ndcg@10"] == pytest.approx((1 / log2(3) + 1 / log2(4)) / (1 + 1 / log2(3)))
    assert m["coverage@10"] == pytest.approx(3 / 3)
    assert m["recall@2"] == pytest.approx(1 / 2)


def test_excluded_training_items_are_not_ranked():
    # items score .9 .8 .7 .6; the user trained on 0 and 1; test item 2 becomes rank 1.
    q, items = as_embeddings([[0.9, 0.8, 0.7, 0.6]])
    test, train = matrix([[2]], 4), matrix([[0, 1]], 4)
    assert evaluate_ranking(q, items, test, ks=(1,)).metrics["recall@1"] == 0.0
    m = evaluate_ranking(q, items, test, exclude=train, ks=(1, 4)).metrics
    assert m["recall@1"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx(1.0)
    # K = 4 exceeds the 2 items left: the top 4 holds only items 2, 3 -> coverage 2/4
    assert m["coverage@4"] == pytest.approx(2 / 4)


def test_excluded_test_items_leave_the_relevant_set():
    # relevant {0, 2} but 0 is excluded: R = {2}, ranked 2nd among items 1 (.8), 2 (.7), 3 (.6).
    q, items = as_embeddings([[0.9, 0.8, 0.7, 0.6]])
    m = evaluate_ranking(q, items, matrix([[0, 2]], 4), exclude=matrix([[0]], 4),
                         ks=(1, 2)).metrics
    assert (m["recall@1"], m["recall@2"], m["mrr"]) == pytest.approx((0, 1, 1 / 2))


def test_excluded_test_items_are_logged_at_debug_only(caplog):
    """Evaluation runs once per model compared, and the CLI's note already says how many test
    rows are not scored: no info line per model. At debug: the count and the first pairs, by
    item index in the whole catalogue (not the candidate column)."""
    import logging

    q, items = as_embeddings([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]])
    test, exclude = matrix([[0, 2], [3]], 4), matrix([[2], [1, 3]], 4)
    with caplog.at_level(logging.INFO, logger="tfmmrec"):
        evaluate_ranking(q, items, test, exclude=exclude, ks=(1,))
    assert [r.getMessage() for r in caplog.records if r.name.startswith("tfmmrec")] == []
    caplog.clear()
    candidates = np.array([False, True, True, True])
    with caplog.at_level(logging.DEBUG, logger="tfmmrec.evaluation.metrics"):
        evaluate_ranking(q, items, test, exclude=exclude, candidates=candidates, ks=(1,))
    assert [r.getMessage() for r in caplog.records if "also excluded" in r.getMessage()] == [
        "2 test interaction(s) are also excluded; dropped from the relevant sets: "
        "(row 0, item 2), (row 1, item 3)"]


def test_candidates_restrict_ranking_and_relevance():
    # candidates {1, 3, 4}: user 0 ranks 4 (.5), 3 (.3), 1 (.1); test {1, 2} -> R = {1}, rank 3.
    # user 1's only test item (0) is not a candidate: skipped.
    q, items = as_embeddings([SCORES[0], SCORES[0]])
    candidates = np.array([False, True, False, True, True])
    m = evaluate_ranking(q, items, matrix([[1, 2], [0]], 5), ks=(1, 3, 10),
                         candidates=candidates).metrics
    assert (m["recall@1"], m["recall@3"], m["mrr"]) == pytest.approx((0, 1, 1 / 3))
    assert m["coverage@1"] == pytest.approx(1 / 3)  # item 4 out of 3 candidates
    assert m["coverage@10"] == pytest.approx(3 / 3)  # K clamped to 3 candidates
    assert (m["num_users"], m["num_users_skipped"]) == (1, 1)


def test_popularity_baseline_through_item_bias():
    # train: u0 {0, 1}, u1 {0, 2}, u2 {0} -> counts [3, 1, 1, 0]; items 1 and 2 tie.
    train = matrix([[0, 1], [0, 2], [0]], 4)
    popularity = popularity_scores(train)
    np.testing.assert_array_equal(popularity, [3, 1, 1, 0])
    zero_dim_users, zero_dim_items = np.zeros((3, 0)), np.zeros((4, 0))
    result = evaluate_ranking(zero_dim_users, zero_dim_items, matrix([[2], [1], [3]], 4),
                              exclude=train, ks=(1, 2), item_bias=popularity,
                              return_per_user=True)
    # u0 sees 2, 3 -> item 2 first; u1 sees 1, 3 -> item 1 first;
    # u2 sees 1, 2 (tie, 1 first), 3 -> item 3 at rank 3.
    np.testing.assert_array_equal(result.per_user["rank"], [1, 1, 3])
    assert result.metrics["recall@1"] == pytest.approx(2 / 3)
    assert result.metrics["recall@2"] == pytest.approx(2 / 3)
    assert result.metrics["mrr"] == pytest.approx((1 + 1 + 1 / 3) / 3)


def test_small_batches_match_one_batch():
    rng = np.random.default_rng(0)
    # small integers make every score exact, so batching cannot even change rounding
    q = rng.integers(-2, 3, size=(37, 4)).astype(np.float32)
    items = rng.integers(-2, 3, size=(23, 4)).astype(np.float32)
    test = (rng.random((37, 23)) < 0.15).astype(np.float32)
    train = (rng.random((37, 23)) < 0.2).astype(np.float32)
    test[5] = 0  # a skipped user in the middle of a batch
    sparse = interactions_matrix(*np.nonzero(test), 37, 23)
    exclude = interactions_matrix(*np.nonzero(train), 37, 23)
    kwargs = dict(exclude=exclude, ks=(1, 5, 10, 30), return_per_user=True)
    one = evaluate_ranking(q, items, sparse, batch_size=1000, **kwargs)
    many = evaluate_ranking(q, items, sparse, batch_size=5, **kwargs)
    assert one.metrics == many.metrics
    for key in one.per_user:
        np.testing.assert_array_equal(one.per_user[key], many.per_user[key])


def reference_order(scores, excluded):
    """Slow, obvious ranking: a Python sort by (-score, index) of the allowed items."""
    return sorted((i for i in range(len(scores)) if i not in excluded),
                  key=lambda i: (-scores[i], i))


def reference_user(scores, relevant, excluded, ks):
    """Slow, obvious per-user metrics from :func:`reference_order`."""
    ranks = [r + 1 for r, i in enumerate(reference_order(scores, excluded)) if i in relevant]
    out = {"rank": ranks[0]}
    for k in ks:
        found = sum(1 for r in ranks if r <= k)
        ideal = sum(1 / log2(r + 1) for r in range(1, min(k, len(relevant)) + 1))
        out[f"recall@{k}"] = found / min(k, len(relevant))
        out[f"ndcg@{k}"] = sum(1 / log2(r + 1) for r in ranks if r <= k) / ideal
        out[f"hit_rate@{k}"] = float(found > 0)
    return out


def random_problem(seed, num_users, num_items, dim=8):
    rng = np.random.default_rng(seed)
    # integer embeddings: exact scores with many ties, the hard case for top-K selection
    q = rng.integers(-3, 4, size=(num_users, dim)).astype(np.float32)
    items = rng.integers(-3, 4, size=(num_items, dim)).astype(np.float32)
    test = interactions_matrix(rng.integers(0, num_users, 5 * num_users),
                               rng.integers(0, num_items, 5 * num_users), num_users, num_items)
    train = interactions_matrix(rng.integers(0, num_users, 10 * num_users),
                                rng.integers(0, num_items, 10 * num_users), num_users, num_items)
    return q, items, test, train


def test_vectorised_matches_slow_reference_on_5000_users():
    q, items, test, train = random_problem(1, num_users=5000, num_items=2000)
    ks = (10, 50, 100)
    result = evaluate_ranking(q, items, test, exclude=train, ks=ks, return_per_user=True)
    per_user = result.per_user
    rng = np.random.default_rng(2)
    rows = rng.choice(per_user["user"].size, size=60, replace=False)
    for row in rows:
        user = per_user["user"][row]
        scores = (q[user] @ items.T).tolist()
        relevant = set(test[user].indices) - set(train[user].indices)
        expected = reference_user(scores, relevant, set(train[user].indices), ks)
        for key, value in expected.items():
            assert per_user[key][row] == pytest.approx(value), (user, key)


def test_coverage_matches_slow_reference():
    q, items, test, train = random_problem(3, num_users=200, num_items=150)
    ks = (5, 20)
    result = evaluate_ranking(q, items, test, exclude=train, ks=ks, batch_size=64,
                              return_per_user=True)
    seen = {k: set() for k in ks}
    for user in result.per_user["user"]:
        order = reference_order((q[user] @ items.T).tolist(), set(train[user].indices))
        for k in ks:
            seen[k].update(order[:k])
    for k in ks:
        assert result.metrics[f"coverage@{k}"] == pytest.approx(len(seen[k]) / 150)


def test_top_k_accuracy_hand_computed_and_unexcluded():
    # e0: scores .1 .4 .3 .2, positive 2 -> item 1 ahead: 0-based rank 1
    # e1: all .5, positive 3 -> items 0, 1, 2 ahead by index: rank 3
    # e2: positive 0 scores highest: rank 0
    q, items = as_embeddings([[0.1, 0.4, 0.3, 0.2], [0.5] * 4, [0.9, 0.1, 0.1, 0.1]])
    acc = top_k_accuracy(q, items, np.array([2, 3, 0]), ks=(1, 2, 3), batch_size=2)
    # top-1: e2 only = 1/3; top-2: e0, e2 = 2/3; top-3: e1's rank 3 is the last of 4 = 2/3
    assert acc == pytest.approx({"top_k_accuracy@1": 1 / 3, "top_k_accuracy@2": 2 / 3,
                                 "top_k_accuracy@3": 2 / 3})


def test_top_k_accuracy_leaves_out_a_k_that_reaches_the_catalogue(caplog, monkeypatch):
    """Every item is in a top K of K >= the number of items: its 1.0 would be any model's, so
    no figure is given, with one warning naming K and the catalogue size however often it is
    computed (every model and baseline, every validation epoch)."""
    monkeypatch.setattr(metrics_module, "_warned_trivial_top_k", set())
    q, items = as_embeddings([[0.1, 0.4, 0.3, 0.2], [0.5] * 4, [0.9, 0.1, 0.1, 0.1]])
    with caplog.at_level(logging.WARNING, logger="tfmmrec.evaluation.metrics"):
        for _ in range(2):
            acc = top_k_accuracy(q, items, np.array([2, 3, 0]), ks=(3, 4, 10))
            assert acc == pytest.approx({"top_k_accuracy@3": 2 / 3})
    warned = [r.getMessage() for r in caplog.records if "top_k_accuracy" in r.getMessage()]
    assert warned == ["top_k_accuracy@4, @10 left out: K reaches the 4 items of the catalogue "
                      "(every item is in the top K, so the accuracy is 1.0 for any model)"]


def test_top_k_accuracy_does_not_exclude_training_items():
    # the user trained on item 0 which outscores the positive item 1:
    # evaluate_ranking (exclusion) hits at 1, top_k_accuracy (TFRS, no exclusion) does not.
    q, items = as_embeddings([[0.9, 0.8, 0.1]])
    ranked = evaluate_ranking(q, items, matrix([[1]], 3), exclude=matrix([[0]], 3), ks=(1,))
    assert ranked.metrics["hit_rate@1"] == 1.0
    assert top_k_accuracy(q, items, np.array([1]), ks=(1, 2)) == {
        "top_k_accuracy@1": 0.0, "top_k_accuracy@2": 1.0}


def test_interactions_matrix_is_binary_with_duplicates_collapsed():
    m = interactions_matrix(np.array([0, 0, 1, 0]), np.array([2, 2, 0, 1]), 3, 4)
    assert m.shape == (3, 4) and m.format == "csr"
    np.testing.assert_array_equal(m.toarray(), [[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


def test_ranking_result_to_dict_gives_python_numbers():
    q, items = as_embeddings(SCORES)
    result = evaluate_ranking(q, items, matrix(TEST, 5), ks=(2,))
    as_dict = result.to_dict()
    assert isinstance(result, RankingResult)
    assert all(type(v) in (int, float) for v in as_dict.values())
    assert as_dict["num_users"] == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(item_embeddings=np.ones((5, 3))), "same dimension"),
        (dict(test=np.ones((2, 5))), "scipy.sparse"),
        (dict(ks=(0, 10)), "positive integers"),
        (dict(candidates=np.ones(5)), "bool mask"),
        (dict(candidates=np.zeros(5, dtype=bool)), "selects no item"),
        (dict(item_bias=np.ones(4)), "item_bias"),
        (dict(query_embeddings=np.full((2, 5), np.nan)), "NaN"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    q, items = as_embeddings(SCORES)
    args = dict(query_embeddings=q, item_embeddings=items, test=matrix(TEST, 5)) | kwargs
    with pytest.raises(ValueError, match=message):
        evaluate_ranking(**args)


def test_out_of_range_positive_raises():
    q, items = as_embeddings(SCORES)
    with pytest.raises(ValueError, match="positives"):
        top_k_accuracy(q, items, np.array([0, 5]))
