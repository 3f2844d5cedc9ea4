"""A user's own split (the split column, data.split: none), the validation carve, and two
reading fixes: an all-empty timestamp column, and numeric text columns read as written."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.data.folders import ITEMS, make_folder
from tfmmrec.config import DataConfig
from tfmmrec.data.dataset import load_dataset
from tfmmrec.data.splits import split_interactions, validation_split
from tfmmrec.errors import DataError

SPLIT_INTERACTIONS = """\
user_id,item_id,timestamp,split
u1,i1,100,train
u1,i2,200, Test
u2,i3,150,train
u2,i1,300,validation
u2,i2,400,train
"""

# Eight text-only items and a given split: 9 train, 1 validation and 4 test rows.
TEXT_ITEMS = "item_id,title\n" + "".join(f"i{i},Title {i}\n" for i in range(1, 9))
GIVEN_INTERACTIONS = """\
user_id,item_id,split
u1,i1,train
u1,i2,train
u1,i5,test
u2,i3,train
u2,i2,train
u2,i6,validation
u3,i2,train
u3,i8,train
u3,i4,test
u4,i3,train
u4,i1,test
u5,i1,train
u5,i2,train
u5,i7,test
"""


def given_folder(root, interactions: str = GIVEN_INTERACTIONS):
    """A text-only dataset folder whose interactions carry a split column."""
    return make_folder(root, items=TEXT_ITEMS, interactions=interactions, users=None,
                       media=False)


def load(root, **fields):
    return load_dataset(DataConfig(path=str(root), **fields))


def test_split_column_gives_train_validation_and_test(tmp_path):
    dataset = load(make_folder(tmp_path / "d", interactions=SPLIT_INTERACTIONS), split="given")
    split = split_interactions(dataset.interactions, "given", 0.2, 0)
    assert split.kind == "given"
    assert split.train[["user_id", "item_id"]].values.tolist() == [
        ["u1", "i1"], ["u2", "i3"], ["u2", "i2"]]
    assert split.test[["user_id", "item_id"]].values.tolist() == [["u1", "i2"]]
    assert split.validation[["user_id", "item_id"]].values.tolist() == [["u2", "i1"]]
    assert split.sizes() == "given split: 3 train / 1 validation / 1 test interactions"
    # Tuned choices use the user's validation rows, not a carve.
    validation = validation_split(split, 0.2, 0)
    assert validation.test.equals(split.validation) and validation.train.equals(split.train)


def test_bad_split_value_names_file_line_and_value(tmp_path):
    bad = SPLIT_INTERACTIONS.replace("validation", "valid")
    with pytest.raises(DataError, match=r"split must be one of train, validation, test, got "
                                        r"'valid' at interactions.csv line 5"):
        load(make_folder(tmp_path / "d", interactions=bad), split="given")


def test_an_empty_split_value_is_named_as_empty(tmp_path):
    """It read "got nan at interactions.csv line 7", a value nobody wrote."""
    empty = GIVEN_INTERACTIONS.replace("u2,i6,validation", "u2,i6,").replace(
        "u4,i3,train", "u4,i3,  ")
    with pytest.raises(DataError) as raised:
        load(given_folder(tmp_path / "d", empty), split="given")
    assert str(raised.value) == (
        f"{tmp_path / 'd' / 'interactions.csv'}: split must be one of train, validation, test, "
        "got an empty split value at interactions.csv line 7 (2 empty)")


def test_given_split_without_the_column_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"data\.split is 'given' but there is no split column"):
        load(make_folder(tmp_path / "d"), split="given")


def test_split_column_is_ignored_with_a_warning_under_another_split(tmp_path, caplog):
    dataset = load(make_folder(tmp_path / "d", interactions=SPLIT_INTERACTIONS))
    assert "ignored because data.split=random" in caplog.text
    assert len(dataset.interactions) == 5


def test_split_none_trains_on_every_row():
    frame = pd.DataFrame({"user_id": ["a", "a", "b"], "item_index": [0, 1, 2]})
    split = split_interactions(frame, "none", 0.2, 0)
    assert len(split.train) == 3 and len(split.test) == 0
    assert split.sizes() == "none split: 3 train / 0 test interactions"


def test_validation_split_is_the_same_kind_carved_from_train_with_the_next_seed():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user_id": [f"u{i % 10}" for i in range(200)],
                          "item_index": rng.integers(0, 40, 200),
                          "timestamp": rng.integers(0, 1000, 200)})
    for kind in ("random", "temporal", "cold_start"):
        split = split_interactions(frame, kind, 0.2, 7)
        validation = validation_split(split, 0.2, 7)
        expected = split_interactions(split.train, kind, 0.2, 8)
        assert validation.kind == kind
        pd.testing.assert_frame_equal(validation.train, expected.train)
        pd.testing.assert_frame_equal(validation.test, expected.test)
        # Only training rows: nothing of the test split leaks into validation.
        assert len(validation.train) + len(validation.test) == len(split.train)
    forced = validation_split(split, 0.2, 7, kind="random")
    assert forced.kind == "random" and forced.test_items is None


def test_all_empty_timestamp_is_absent_and_temporal_split_says_so(tmp_path):
    interactions = "user_id,item_id,rating,timestamp\nu1,i1,5,\nu1,i2,3,\nu2,i3,4,\n"
    dataset = load(make_folder(tmp_path / "d", interactions=interactions))
    assert "timestamp" not in dataset.interactions.columns
    with pytest.raises(DataError, match=r"temporal split needs a timestamp column.*every value "
                                        r"empty"):
        split_interactions(dataset.interactions, "temporal", 0.2, 0)


def test_partly_empty_timestamp_is_still_an_error(tmp_path):
    interactions = "user_id,item_id,timestamp\nu1,i1,5\nu1,i2,\n"
    with pytest.raises(DataError, match=r"empty timestamp at interactions\.csv line 3"):
        load(make_folder(tmp_path / "d", interactions=interactions))


def test_numeric_text_columns_reach_the_text_tower_as_written(tmp_path):
    # One film without a year made the whole column float: the text said "1995.0".
    items = ITEMS.replace("item_id,title,", "item_id,year,title,").replace(
        "i1,", "i1,1995,").replace("i2,", "i2,,").replace("i3,", "i3,2001,")
    dataset = load(make_folder(tmp_path / "d", items=items),
                   text_columns=["title", "year"])
    assert dataset.catalog.texts.tolist() == ["Starship Love. 1995", "Forest Tides",
                                              "The Riddle. 2001"]


def test_numeric_text_columns_from_jsonl_drop_the_float_suffix(tmp_path):
    rows = [{"item_id": "i1", "title": "A", "year": 1995}, {"item_id": "i2", "title": "B"}]
    root = make_folder(tmp_path / "d", items=None, media=False,
                       interactions="user_id,item_id\nu1,i1\nu1,i2\n")
    (root / "items.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    dataset = load(root, text_columns=["title", "year"])
    assert dataset.catalog.texts.tolist() == ["A. 1995", "B"]


def test_jsonl_arrays_and_objects_reach_the_text_tower_as_text(tmp_path):
    """Arrays reached the text tower as Python's repr ("Bond. ['action', 'spy']"), an empty one
    as "[]" (an item with no title then had text), and an object column was inferred as text."""
    rows = [{"item_id": "a", "title": "Bond", "genres": ["action", "spy"]},
            {"item_id": "b", "title": "Seven", "genres": ["drama", ""]},
            {"item_id": "c", "title": None, "genres": [], "meta": {"studio": "X", "n": 2.0}},
            {"item_id": "d", "title": "Dune", "genres": ["sci-fi"]}]
    root = make_folder(tmp_path / "d", items=None, media=False,
                       interactions="user_id,item_id\nu1,a\nu1,b\nu2,c\nu2,d\n")
    (root / "items.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    inferred = load(root)
    assert inferred.catalog.texts.tolist() == ["Bond. action, spy", "Seven. drama", "",
                                               "Dune. sci-fi"]
    named = load(root, text_columns=["title", "genres", "meta"])
    assert named.catalog.texts[2] == "studio: X, n: 2"


def test_supplied_test_set_and_candidates_are_checked_and_indexed(tmp_path):
    from tfmmrec.data.dataset import load_candidates, load_test_interactions
    from tfmmrec.data.splits import with_test

    dataset = load(make_folder(tmp_path / "d"))
    (tmp_path / "test.csv").write_text("user_id,item_id\nu2,i2\nu1,i3\n")
    test = load_test_interactions(tmp_path / "test.csv", dataset)
    assert test.values.tolist() == [["u2", "i2", 1], ["u1", "i3", 2]]
    (tmp_path / "new.txt").write_text("# held out\ni3\n\ni2\ni3\n")
    candidates = load_candidates(tmp_path / "new.txt", dataset.catalog)
    assert candidates.tolist() == [1, 2]
    split = with_test(split_interactions(dataset.interactions, "none", 0.2, 0), test, candidates)
    assert split.sizes() == "supplied split: 4 train / 2 test interactions (2 candidate items)"
    (tmp_path / "bad.csv").write_text("user_id,item_id\nu1,i1\nu1,i9\n")
    with pytest.raises(DataError, match=r"bad\.csv line 3 \('i9'\)"):
        load_test_interactions(tmp_path / "bad.csv", dataset)
    (tmp_path / "twice.csv").write_text("user_id,item_id\nu2,i2\nu1,i3\nu2,i2\n")
    with pytest.raises(DataError, match=r"twice\.csv line 4 \(first seen at twice\.csv line 2\)"):
        load_test_interactions(tmp_path / "twice.csv", dataset)  # it would count twice
    assert load_test_interactions(tmp_path / "twice.csv", dataset, "first").equals(test)
    (tmp_path / "bad.txt").write_text("i1\n\ni7\n")
    with pytest.raises(DataError, match=r"bad\.txt line 3 \('i7'\)"):
        load_candidates(tmp_path / "bad.txt", dataset.catalog)


def test_a_supplied_test_file_with_a_split_column_scores_its_test_rows_only(tmp_path, caplog):
    """interactions.csv itself passed as --test: its validation rows (what tuned choices were
    made on) and train rows were scored as test rows, the column silently ignored."""
    from tfmmrec.data.dataset import load_test_interactions

    dataset = load(make_folder(tmp_path / "d"))
    (tmp_path / "test.csv").write_text("user_id,item_id,split\nu1,i1,train\nu2,i2, Test\n"
                                       "u1,i3,validation\nu2,i3,test\nu1,i2,train\n")
    with caplog.at_level("WARNING"):
        test = load_test_interactions(tmp_path / "test.csv", dataset)
    assert test.values.tolist() == [["u2", "i2", 1], ["u2", "i3", 2]]
    assert "scoring its 2 row(s) whose split column says test; 2 train, 1 validation left " \
           "out" in caplog.text
    (tmp_path / "none.csv").write_text("user_id,item_id,split\nu1,i1,train\nu1,i3,validation\n")
    with pytest.raises(DataError, match=r"none\.csv: no row's split column says test \(of 2 "):
        load_test_interactions(tmp_path / "none.csv", dataset)
    (tmp_path / "bad.csv").write_text("user_id,item_id,split\nu1,i1,test\nu1,i3,tset\n")
    with pytest.raises(DataError, match=r"bad\.csv.*line 3"):
        load_test_interactions(tmp_path / "bad.csv", dataset)
    # the other rows are left out before a test row is judged (a review): a train row's
    # unknown user, a pair in a train and a test row, a train row's low rating
    (tmp_path / "mixed.csv").write_text("user_id,item_id,split,rating\nstranger,i1,train,5\n"
                                        "u1,i3,train,5\nu1,i3,test,5\nu2,i2,train,1\n"
                                        "u2,i1,test,1\nu1,i1,test,4\n")
    mixed = load_test_interactions(tmp_path / "mixed.csv", dataset, "first", min_rating=4)
    assert mixed[["user_id", "item_id"]].values.tolist() == [["u1", "i3"], ["u1", "i1"]]
    assert mixed.attrs["below_min_rating"] == 1
    (tmp_path / "unknown.csv").write_text("user_id,item_id,split\nu1,i1,train\nnobody,i2,test\n")
    with pytest.raises(DataError, match=r"unknown\.csv: 1 row\(s\) name users the model does "
                                        r"not know: unknown\.csv line 3 \('nobody'\)"):
        load_test_interactions(tmp_path / "unknown.csv", dataset)


def test_a_supplied_test_set_drops_rows_below_min_rating_as_interactions_csv_does(tmp_path):
    """``data.min_rating`` says which ratings are positives: a test row rated below it was
    scored as a hit the model should find (it was kept whatever its rating)."""
    from tfmmrec.data.dataset import load_test_interactions

    dataset = load(make_folder(tmp_path / "d"))
    (tmp_path / "rated.csv").write_text("user_id,item_id,rating\nu2,i2,5\nu1,i3,1\nu2,i1,4\n")
    test = load_test_interactions(tmp_path / "rated.csv", dataset, min_rating=4)
    assert test[["user_id", "item_id", "rating"]].values.tolist() == [["u2", "i2", 5.0],
                                                                     ["u2", "i1", 4.0]]
    assert test.attrs["below_min_rating"] == 1
    assert load_test_interactions(tmp_path / "rated.csv", dataset).attrs["below_min_rating"] == 0
    with pytest.raises(DataError, match=r"rated\.csv: no row has rating >= "
                                        r"data\.min_rating=6"):
        load_test_interactions(tmp_path / "rated.csv", dataset, min_rating=6)
    (tmp_path / "unrated.csv").write_text("user_id,item_id\nu2,i2\nu1,i3\n")  # positives
    assert len(load_test_interactions(tmp_path / "unrated.csv", dataset, min_rating=4)) == 2


def test_an_unknown_candidate_id_is_cut_in_the_message(tmp_path):
    """A 612-character id made a 706-character error line (--test cut its ids already)."""
    from tfmmrec.data.dataset import load_candidates

    dataset = load(make_folder(tmp_path / "d"))
    (tmp_path / "long.txt").write_text("i1\n" + "x" * 612 + "\n")
    with pytest.raises(DataError) as error:
        load_candidates(tmp_path / "long.txt", dataset.catalog)
    assert len(str(error.value)) < 250 and "long.txt line 2 ('xxx" in str(error.value)


def test_a_candidates_file_that_is_not_utf8_or_holds_no_ids_is_named(tmp_path):
    from tfmmrec.data.dataset import read_candidate_ids

    (tmp_path / "latin1.txt").write_bytes("i1\ni2\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt: line 3 is not UTF-8 text \(byte 0xe9 at "
                                        r"column 4\)"):
        read_candidate_ids(tmp_path / "latin1.txt")
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
    with pytest.raises(DataError, match=r"empty\.txt: no item ids"):
        read_candidate_ids(tmp_path / "empty.txt")
    (tmp_path / "ok.txt").write_text("# held out\ni3\n\n i2 \n")
    assert read_candidate_ids(tmp_path / "ok.txt") == [(2, "i3"), (4, "i2")]


def test_a_supplied_test_set_ranks_the_whole_catalogue_unless_candidates_are_given():
    from tfmmrec.data.splits import with_test

    frame = pd.DataFrame({"user_id": [f"u{i % 5}" for i in range(40)],
                          "item_index": np.arange(40) % 20})
    cold = split_interactions(frame, "cold_start", 0.2, 0)
    test = frame.head(3)
    assert with_test(cold, test).test_items is None
    assert with_test(cold).test_items.tolist() == cold.test_items.tolist()
    assert with_test(cold, test, np.array([4, 2])).test_items.tolist() == [4, 2]
