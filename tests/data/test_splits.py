"""Tests for tfmmrec.data.splits: random, temporal and cold-start protocols."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tfmmrec.data.splits import (
    cold_start_split,
    random_split,
    split_interactions,
    temporal_split,
)
from tfmmrec.errors import DataError


def interactions(num_users: int = 20, per_user: int = 10, num_items: int = 50,
                 seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(f"u{u:02d}", int(rng.integers(num_items)), int(rng.integers(1000)))
            for u in range(num_users) for _ in range(per_user)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_index", "timestamp"])
    frame["item_id"] = "i" + frame["item_index"].astype(str)
    return frame


def keys(frame: pd.DataFrame) -> list[tuple]:
    return sorted(map(tuple, frame[["user_id", "item_index", "timestamp"]].to_numpy().tolist()))


FRAME = interactions()


# --- random ---------------------------------------------------------------------------------


def test_random_split_partitions_all_rows_by_fraction():
    split = random_split(FRAME, 0.2, seed=1)
    assert split.kind == "random" and split.test_items is None
    assert len(split.test) == 40 and len(split.train) == 160
    assert keys(pd.concat([split.train, split.test])) == keys(FRAME)
    assert split.train.index.tolist() == list(range(160))  # fresh index


def test_random_split_is_seeded():
    a, b, c = (random_split(FRAME, 0.2, seed=s) for s in (1, 1, 2))
    pd.testing.assert_frame_equal(a.test, b.test)
    assert keys(a.test) != keys(c.test)


@pytest.mark.parametrize("fraction", [0.001, 0.999])
def test_random_split_refuses_empty_side(fraction):
    with pytest.raises(DataError, match="leaves an empty train or test set"):
        random_split(FRAME.head(10), fraction, seed=0)


@pytest.mark.parametrize("kind", ["random", "temporal", "cold_start"])
@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.2])
def test_a_test_fraction_outside_zero_one_is_a_data_error(kind, fraction):
    with pytest.raises(DataError, match=rf"{kind} split: test_fraction={fraction} must be in"):
        split_interactions(FRAME, kind, fraction, seed=0)


# --- temporal -------------------------------------------------------------------------------


def test_temporal_split_holds_out_each_users_latest():
    split = temporal_split(FRAME, test_fraction=0.2)
    assert split.kind == "temporal"
    for user, test in split.test.groupby("user_id"):
        train = split.train[split.train.user_id == user]
        assert len(test) == 2 and len(train) == 8
        assert test.timestamp.min() >= train.timestamp.max()
    assert keys(pd.concat([split.train, split.test])) == keys(FRAME)


def test_a_temporal_split_of_equal_timestamps_says_it_is_file_order(caplog):
    """Every timestamp equal: the split fell back to file order without a word."""
    same = FRAME.assign(timestamp=7)
    with caplog.at_level("WARNING", logger="tfmmrec.data.splits"):
        temporal_split(same, test_fraction=0.2)
    assert caplog.messages == ["every interaction has the same timestamp: the temporal split "
                               "holds out each user's last rows in file order, not their latest"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="tfmmrec.data.splits"):
        temporal_split(FRAME, test_fraction=0.2)
    assert not caplog.messages


def test_temporal_split_last_n():
    split = temporal_split(FRAME, last_n=3)
    assert split.test.groupby("user_id").size().eq(3).all()


def test_temporal_split_keeps_single_interaction_users_in_train():
    frame = pd.concat([FRAME, pd.DataFrame({"user_id": ["solo"], "item_index": [1],
                                            "timestamp": [5], "item_id": ["i1"]})])
    split = temporal_split(frame, test_fraction=0.5)
    assert "solo" in set(split.train.user_id) and "solo" not in set(split.test.user_id)
    split = temporal_split(frame, last_n=5)
    assert "solo" not in set(split.test.user_id)


def test_temporal_split_always_leaves_one_train_interaction():
    two = FRAME.groupby("user_id").head(2)
    split = temporal_split(two, test_fraction=0.9)
    assert split.train.groupby("user_id").size().eq(1).all()
    assert split.test.groupby("user_id").size().eq(1).all()


def test_temporal_split_ties_keep_file_order():
    frame = pd.DataFrame({"user_id": ["u"] * 4, "item_index": [0, 1, 2, 3],
                          "timestamp": [5, 5, 5, 5], "item_id": list("abcd")})
    split = temporal_split(frame, last_n=2)
    assert split.test.item_index.tolist() == [2, 3]


def test_temporal_split_needs_timestamp():
    with pytest.raises(DataError, match="needs a timestamp column"):
        temporal_split(FRAME.drop(columns="timestamp"), test_fraction=0.2)


def test_temporal_split_takes_exactly_one_of_fraction_and_last_n():
    with pytest.raises(DataError, match="exactly one"):
        temporal_split(FRAME, test_fraction=0.2, last_n=2)
    with pytest.raises(DataError, match="exactly one"):
        temporal_split(FRAME)


# --- cold start -----------------------------------------------------------------------------


def test_cold_start_test_items_never_appear_in_train():
    split = cold_start_split(FRAME, 0.2, seed=3)
    assert split.kind == "cold_start"
    items = np.unique(FRAME.item_index)
    assert len(split.test_items) == round(len(items) * 0.2)
    assert set(split.test.item_index) == set(split.test_items)
    assert not set(split.train.item_index) & set(split.test_items)
    assert keys(pd.concat([split.train, split.test])) == keys(FRAME)


def test_cold_start_split_is_seeded():
    a, b, c = (cold_start_split(FRAME, 0.2, seed=s).test_items for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_cold_start_only_holds_out_items_with_interactions():
    split = cold_start_split(FRAME[FRAME.item_index < 10], 0.5, seed=0)
    assert split.test_items.max() < 10 and len(split.test_items) == 5


def test_cold_start_refuses_when_no_item_is_left_on_one_side():
    with pytest.raises(DataError, match="leaves no train or no test items"):
        cold_start_split(FRAME[FRAME.item_index < 2], 0.1, seed=0)


# --- dispatch -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "temporal", "cold_start"])
def test_split_interactions_dispatches_by_name(kind):
    assert split_interactions(FRAME, kind, 0.2, seed=0).kind == kind


def test_unknown_split_kind_is_a_data_error():
    with pytest.raises(DataError, match="unknown split 'loo'"):
        split_interactions(FRAME, "loo", 0.2, seed=0)
