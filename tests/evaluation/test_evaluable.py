"""What an evaluation can measure, known before any model runs (``evaluation.protocol``).

``check_evaluable``: a test set no user can be scored on is an error naming where it came from,
not a table of NaN and a metrics file of nulls. ``recall_notes``: a K that reaches the number
of items ranked makes recall@K 1 for any model (60 items and recall@100; 12 cold-start
candidates and recall@20), which the table alone does not say.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tfmmrec.data.splits import Split
from tfmmrec.errors import DataError
from tfmmrec.evaluation.protocol import (
    check_evaluable,
    evaluate_embeddings,
    random_baseline,
    recall_notes,
    unscored_note,
)

USERS = np.array(["u0", "u1", "u2"])
NUM_ITEMS = 12


def frame(pairs: list[tuple[str, int]]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [u for u, _ in pairs], "item_index": [i for _, i in pairs],
                         "item_id": [f"i{i}" for _, i in pairs]})


TRAIN = frame([("u0", 0), ("u0", 1), ("u1", 2), ("u2", 3), ("u2", 4), ("u2", 5)])


def test_no_test_item_among_the_candidates_is_an_error_naming_both_files():
    split = Split("supplied", TRAIN, frame([("u0", 6), ("u1", 7)]), test_items=np.array([9]))
    with pytest.raises(DataError) as raised:
        check_evaluable(split, USERS, NUM_ITEMS, test="t1.csv", candidates="one_c.txt")
    assert str(raised.value) == ("nothing to evaluate: no test interaction of t1.csv has its "
                                 "item among the candidates in one_c.txt")


def test_test_items_that_are_all_training_items_are_an_error_saying_so():
    """``data.split: none`` then ``--test`` with rows it trained on: each is excluded."""
    split = Split("supplied", TRAIN, frame([("u0", 1), ("u2", 3)]))
    with pytest.raises(DataError, match=r"^nothing to evaluate: every test interaction of "
                                        r"t\.csv is one of its user's training interactions"):
        check_evaluable(split, USERS, NUM_ITEMS, test="t.csv")
    check_evaluable(Split("random", TRAIN, frame([("u0", 1), ("u2", 6)])), USERS, NUM_ITEMS)


def test_a_given_split_without_test_rows_says_so():
    """It said every test interaction was a training one, when there were none at all."""
    split = Split("given", TRAIN, frame([]))
    with pytest.raises(DataError, match=r"^nothing to evaluate: the given split's test set has "
                                        r"no interactions \(a given split needs rows whose "
                                        r"split column says test"):
        check_evaluable(split, USERS, NUM_ITEMS)


def test_without_the_check_such_a_test_set_scores_nan_over_zero_users():
    """What the check stands in front of: every metric a mean over nobody."""
    split = Split("supplied", TRAIN, frame([("u0", 6), ("u1", 7)]), test_items=np.array([9]))
    metrics = random_baseline(split, USERS, NUM_ITEMS, ks=[5])
    assert metrics["num_users"] == 0 and np.isnan(metrics["recall@5"])


def test_recall_notes_name_each_k_that_reaches_the_number_of_candidates():
    split = Split("cold_start", TRAIN, frame([("u0", 8), ("u1", 9)]),
                  test_items=np.arange(6, NUM_ITEMS))  # 6 candidates
    notes = recall_notes(split, USERS, NUM_ITEMS, [2, 5, 6, 20])
    assert notes == {
        "recall@6": "recall@6: every one of the 6 candidate items is in the top 6, so "
                    "recall@6 is 1 for any model",
        "recall@20": "recall@20: every one of the 6 candidate items is in the top 20, so "
                     "recall@20 is 1 for any model"}
    metrics = random_baseline(split, USERS, NUM_ITEMS, ks=[2, 5, 6, 20])
    assert metrics["recall@6"] == metrics["recall@20"] == 1.0


def test_recall_notes_count_the_items_a_user_ranks_without_their_training_items():
    """12 items; u0 and u1 (the evaluated users) trained on 2 and 1: at most 11 are ranked."""
    split = Split("random", TRAIN, frame([("u0", 8), ("u1", 9)]))
    notes = recall_notes(split, USERS, NUM_ITEMS, [10, 11, 12])
    assert notes["recall@11"] == ("recall@11: each user ranks at most 11 of the 12 items "
                                  "(never their training items), all within the top 11, so "
                                  "recall@11 is 1 for any model")
    assert notes["recall@12"].startswith("recall@12: every one of the 12 items is in the top 12")
    assert "recall@10" not in notes
    rng = np.random.default_rng(0)
    for _ in range(5):  # any scores at all
        metrics = evaluate_embeddings(rng.normal(size=(3, 4)), rng.normal(size=(NUM_ITEMS, 4)),
                                      split, USERS, [11, 12])
        assert metrics["recall@11"] == metrics["recall@12"] == 1.0


# Items i1..i8 are indices 0..7; u1..u5 trained on a few of them.
FIVE = np.array([f"u{u}" for u in range(1, 6)])
FIVE_TRAIN = frame([("u1", 0), ("u1", 1), ("u2", 2), ("u3", 1), ("u4", 2), ("u5", 0)])


def test_test_rows_outside_the_candidates_are_named_and_not_counted():
    """u4's row (i1) was left out of every metric while the output said 4 test interactions."""
    test = frame([("u1", 4), ("u3", 3), ("u4", 0), ("u5", 6)])
    split = Split("supplied", FIVE_TRAIN, test, test_items=np.array([3, 4, 6]))  # i4, i5, i7
    assert unscored_note(split, FIVE, 8, candidates="c.txt") == (
        "1 of 4 test rows is not scored (1 has its item outside the candidates in c.txt); "
        "the metrics are over 3 rows of 3 of 4 users")
    metrics = random_baseline(split, FIVE, 8, ks=[1, 3])
    assert (metrics["num_interactions"], metrics["num_users"]) == (3, 3)
    # a training interaction of its user is never ranked, so never scored either
    seen = Split("supplied", FIVE_TRAIN, frame([("u1", 0), ("u1", 1), ("u2", 5)]))
    assert unscored_note(seen, FIVE, 8) == (
        "2 of 3 test rows are not scored (2 are training interactions of their user); the "
        "metrics are over 1 row of 1 of 2 users")
    assert random_baseline(seen, FIVE, 8, ks=[1])["num_interactions"] == 1
    assert unscored_note(Split("supplied", FIVE_TRAIN, frame([("u2", 5)])), FIVE, 8) is None


def test_test_users_without_a_training_history_are_named_for_the_baselines():
    """Their history-based baseline rows ranked items in items.csv order: a review's rows
    moved from recall@20 0.75 to 0.25 when the catalogue file was reversed, without a word."""
    from tfmmrec.evaluation.protocol import historyless_note

    split = Split("given", FIVE_TRAIN, frame([("u1", 4), ("u9", 3), ("u8", 6), ("u8", 5)]))
    assert historyless_note(split) == (
        "2 of 3 test users have no training interactions: the history-based baselines (EASE, "
        "iALS, content→CF, kNN) score every item 0 for them, so those rows rank their items in "
        "catalogue order")
    assert historyless_note(Split("given", FIVE_TRAIN, frame([("u2", 5)]))) is None


def test_a_temporal_split_without_test_rows_says_why_in_its_own_terms():
    """It was told a given split needs rows whose split column says test."""
    with pytest.raises(DataError) as raised:
        check_evaluable(Split("temporal", FIVE_TRAIN, frame([])), FIVE, 8)
    assert str(raised.value) == (
        "nothing to evaluate: the temporal split's test set has no interactions (a temporal "
        "split holds out each user's latest data.test_fraction of rows, none when every user "
        "has a single interaction; or supply a test file: tfmmrec evaluate --test FILE)")


def test_split_none_without_a_test_file_says_to_pass_one():
    """It said a given split needs rows whose split column says test."""
    split = Split("none", FIVE_TRAIN, frame([]))
    with pytest.raises(DataError) as raised:
        check_evaluable(split, FIVE, 8)
    assert str(raised.value) == ("data.split: none trains on every row: pass --test FILE to "
                                 "evaluate")
    # candidates alone keep the none split's (empty) test set
    with pytest.raises(DataError, match=r"^data\.split: none trains on every row"):
        check_evaluable(Split("none", FIVE_TRAIN, frame([]), test_items=np.array([3])), FIVE, 8,
                        candidates="c.txt")


def test_top_k_accuracy_at_a_k_reaching_the_catalogue_is_left_out_of_the_table():
    """TFRS's top-K accuracy ranks the whole catalogue: on 12 items @50 and @100 would be 1.0
    for any model (random scores here), so they are left out: the evaluate table adds its
    top_k_accuracy@100 column only when a row has one, and a table asked for it shows –."""
    from tfmmrec.evaluation.report import MISSING, format_table

    metrics = random_baseline(Split("random", TRAIN, frame([("u0", 6), ("u1", 7)])), USERS,
                              NUM_ITEMS, ks=[5])
    assert {"top_k_accuracy@1", "top_k_accuracy@5", "top_k_accuracy@10"} <= set(metrics)
    assert not {"top_k_accuracy@50", "top_k_accuracy@100"} & set(metrics)
    table = format_table({"random": metrics}, ["recall@5", "top_k_accuracy@100"])
    assert table.splitlines()[-1].endswith(f"| {MISSING} |")


def test_top_k_accuracy_leaves_out_the_test_rows_the_user_trained_on():
    """Like recall, it measures the scored rows: a ``--test`` file holding the training rows
    too raised top_k_accuracy@1 (each trained row was its own answer) while recall and the
    note's row count stayed."""
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(len(USERS), 4)).astype(np.float32)
    items = rng.normal(size=(NUM_ITEMS, 4)).astype(np.float32)
    test = frame([("u0", 6), ("u1", 7), ("u2", 8)])
    # each user's top item is a training item of theirs, so the trained rows would count at @1
    for user, row in enumerate(TRAIN.groupby("user_id")["item_index"].first()):
        items[row] = queries[user] * 10
    plain = evaluate_embeddings(queries, items, Split("supplied", TRAIN, test), USERS, [5])
    with_trained = evaluate_embeddings(
        queries, items, Split("supplied", TRAIN, pd.concat([test, TRAIN], ignore_index=True)),
        USERS, [5])
    assert with_trained == plain


def test_popularity_over_cold_candidates_is_said_to_be_catalogue_order():
    """Every candidate without a training interaction: popularity scores them all 0, so its row
    is the catalogue's order, which nothing said."""
    from tfmmrec.evaluation.protocol import popularity_note

    test = frame([("u0", 6), ("u1", 7)])
    assert popularity_note(Split("supplied", TRAIN, test, test_items=np.array([6, 7, 9]))) == (
        "popularity: none of the 3 candidate items has a training interaction, so its row "
        "ranks them in catalogue order")
    assert popularity_note(Split("supplied", TRAIN, test, test_items=np.array([5, 6]))) is None
    assert popularity_note(Split("random", TRAIN, test)) is None
