"""Tests for tfmmrec.data.validate through load_dataset: every error names file, row and value."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from tests.data.folders import INTERACTIONS, ITEMS, USERS, make_folder
from tfmmrec.config import DataConfig, ImageTowerConfig
from tfmmrec.data import validate
from tfmmrec.data.dataset import load_dataset
from tfmmrec.errors import DataError


def load(root, **config):
    return load_dataset(DataConfig(path=str(root), **config))


# --- the folder and its tables ------------------------------------------------------------------


def test_valid_folder_loads(tmp_path):
    dataset = load(make_folder(tmp_path / "d"))
    assert dataset.num_items == 3 and len(dataset.interactions) == 4


def test_missing_folder_names_path(tmp_path):
    with pytest.raises(DataError, match=r"dataset folder not found: .*nowhere"):
        load(tmp_path / "nowhere")


def test_empty_data_path_says_what_to_set():
    with pytest.raises(DataError, match=r"data\.path is empty"):
        load_dataset(DataConfig())


def test_no_items_table_lists_accepted_names(tmp_path):
    root = make_folder(tmp_path / "d", items=None)
    with pytest.raises(DataError,
                       match=r"no items table .*items\.csv, items\.jsonl, items\.parquet"):
        load(root)


def test_several_items_tables_ask_for_items_file(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "items.jsonl").write_text('{"item_id": "i1"}\n')
    with pytest.raises(DataError, match=r"several items tables .*set data\.items_file"):
        load(root)
    assert load(root, items_file="items.csv").num_items == 3


def test_unsupported_table_format_names_file(tmp_path):
    root = make_folder(tmp_path / "d", items=None)
    (root / "items.xlsx").write_text("not read")
    with pytest.raises(DataError, match=r"unsupported table format '\.xlsx' .*items\.xlsx"):
        load(root, items_file="items.xlsx")


def test_missing_interactions_table_lists_accepted_names(tmp_path):
    with pytest.raises(DataError, match=r"no interactions table in .*: expected one of "
                                        r"interactions\.csv, interactions\.jsonl, "
                                        r"interactions\.parquet$"):
        load(make_folder(tmp_path / "d", interactions=None))


# --- empty tables -------------------------------------------------------------------------------


def test_header_only_items_table_is_empty_error(tmp_path):
    root = make_folder(tmp_path / "d", items="item_id,title\n")
    with pytest.raises(DataError, match=r"items\.csv is empty: it needs a header and at least one"):
        load(root)


def test_zero_byte_interactions_table_is_empty_error(tmp_path):
    root = make_folder(tmp_path / "d", interactions="")
    with pytest.raises(DataError, match=r"interactions\.csv is empty: it needs a header"):
        load(root)


def test_a_table_that_is_not_utf8_names_the_line_and_the_byte(tmp_path):
    root = make_folder(tmp_path / "d")
    items = root / "items.csv"
    lines = items.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("i2", "i2").rstrip("\n") + " Gr\u00f6\u00dfe\n"
    items.write_bytes("".join(lines).encode("latin-1"))
    with pytest.raises(DataError, match=r"items\.csv: line 3 is not UTF-8 text \(byte 0xf6 "
                                        r"at column \d+\): save the file as UTF-8"):
        load(root)


@pytest.mark.parametrize("table", ["items.csv", "interactions.csv", "users.csv"])
def test_a_trailing_comma_on_every_row_parses_as_the_header_says(tmp_path, table):
    """pandas made the first column the index of such a file and shifted every field left:
    an item came out with its title as its id."""
    root = make_folder(tmp_path / "d")
    path = root / table
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], *(line + "," for line in lines[1:])]) + "\n")
    plain = load(make_folder(tmp_path / "plain"))
    dataset = load(root)
    assert list(dataset.catalog.item_ids) == list(plain.catalog.item_ids)
    pd.testing.assert_frame_equal(dataset.interactions, plain.interactions)


@pytest.mark.parametrize("rows", ["n1,T,D,extra\n", "n0,T,D\nn1,T,D,extra\n"],
                         ids=["first row", "later row"])
def test_a_field_beyond_the_header_is_an_error_naming_its_line(tmp_path, rows):
    root = make_folder(tmp_path / "d", items="item_id,title,description\n" + rows)
    line = 1 + rows.count("\n")
    with pytest.raises(DataError, match=rf"items\.csv: line {line} has 4 fields, the header 3: "
                                        r"a field beyond the header's columns"):
        load(root)


def test_a_jsonl_line_that_is_not_an_object_is_named(tmp_path):
    root = make_folder(tmp_path / "d", items=None)
    (root / "items.jsonl").write_text('{"item_id": "i1", "title": "a"}\n'
                                      '{"item_id": "i2", "title": "b"\n'
                                      '{"item_id": "i3", "title": "c"}\n')
    with pytest.raises(DataError, match=r"items\.jsonl: line 2 is not a JSON object"):
        load(root)


# --- missing columns ----------------------------------------------------------------------------


def test_items_without_item_id_column_names_file_and_found_columns(tmp_path):
    root = make_folder(tmp_path / "d", items="id,title\ni1,A\n")
    with pytest.raises(DataError) as info:
        load(root)
    message = str(info.value)
    assert "items.csv: missing column(s) item_id" in message
    assert "found columns: id, title" in message


def test_interactions_without_user_id_column_names_file(tmp_path):
    root = make_folder(tmp_path / "d", interactions="user,item_id\nu1,i1\n")
    with pytest.raises(DataError, match=r"interactions\.csv: missing column\(s\) user_id"):
        load(root)


def test_configured_text_column_missing_is_named(tmp_path):
    with pytest.raises(DataError, match=r"items\.csv: missing column\(s\) plot"):
        load(make_folder(tmp_path / "d"), text_columns=["title", "plot"])


def test_configured_image_column_missing_is_named(tmp_path):
    with pytest.raises(DataError, match=r"items\.csv: missing column\(s\) poster"):
        load(make_folder(tmp_path / "d"), image_column="poster")


def test_configured_user_feature_column_missing_is_named(tmp_path):
    with pytest.raises(DataError, match=r"users\.csv: missing column\(s\) gender"):
        load(make_folder(tmp_path / "d"), user_feature_columns=["age", "gender"])


# --- ids ----------------------------------------------------------------------------------------


def test_duplicate_item_id_names_both_lines_and_value(tmp_path):
    items = ITEMS + "i2,Again,,,\n"
    with pytest.raises(DataError) as info:
        load(make_folder(tmp_path / "d", items=items))
    message = str(info.value)
    assert "duplicate item_id 'i2' at items.csv line 5" in message
    assert "first seen at items.csv line 3" in message


def test_duplicate_item_id_differing_only_by_spaces_is_found(tmp_path):
    items = "item_id,title\ni1,A\n i1 ,B\n"
    with pytest.raises(DataError, match=r"duplicate item_id 'i1' at items\.csv line 3"):
        load(make_folder(tmp_path / "d", items=items, media=False))


def test_a_numeric_user_feature_with_a_typo_is_named_not_silently_categorical(tmp_path,
                                                                               caplog):
    users = "user_id,age,occupation\n" + "".join(
        f"u{i},{20 + i},engineer\n" for i in range(1, 11)).replace("u5,25", "u5,old")
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):
        dataset = load(make_folder(tmp_path / "d", users=users))
    assert "age" in dataset.user_feature_columns
    assert ("users.csv: user feature age is numeric except at users.csv line 6 ('old'): the "
            "column is embedded as categories; fix that value") in caplog.text
    assert "occupation" not in caplog.text  # a text column is categorical on purpose


def test_duplicate_user_id_in_users_table_is_named(tmp_path):
    users = USERS + "u1,31,farmer\n"
    with pytest.raises(DataError, match=r"users\.csv: duplicate user_id 'u1' at users\.csv line 4"):
        load(make_folder(tmp_path / "d", users=users))


def test_duplicate_id_in_jsonl_uses_jsonl_line_numbers(tmp_path):
    items = '{"item_id": "a", "title": "x"}\n{"item_id": "b", "title": "y"}\n' \
            '{"item_id": "a", "title": "z"}\n'
    root = make_folder(tmp_path / "d", items=None, interactions="user_id,item_id\nu1,a\n",
                       users=None, media=False)
    (root / "items.jsonl").write_text(items)
    with pytest.raises(DataError, match=r"duplicate item_id 'a' at items\.jsonl line 3 "
                                        r"\(first seen at items\.jsonl line 1\)"):
        load(root)


def test_duplicate_id_in_parquet_uses_row_numbers(tmp_path):
    root = make_folder(tmp_path / "d", items=None, interactions="user_id,item_id\nu1,a\n",
                       users=None, media=False)
    pd.DataFrame({"item_id": ["a", "b", "b"], "title": ["x", "y", "z"]}).to_parquet(
        root / "items.parquet")
    with pytest.raises(DataError, match=r"duplicate item_id 'b' at items\.parquet row 2"):
        load(root)


def test_empty_item_id_names_line(tmp_path):
    items = "item_id,title\ni1,A\n,B\n"
    with pytest.raises(DataError,
                       match=r"items\.csv: empty item_id in 1 row\(s\): items\.csv line 3"):
        load(make_folder(tmp_path / "d", items=items, media=False))


def test_empty_user_id_in_interactions_names_line(tmp_path):
    interactions = "user_id,item_id\nu1,i1\n,i2\n"
    with pytest.raises(DataError, match=r"empty user_id .*interactions\.csv line 3"):
        load(make_folder(tmp_path / "d", interactions=interactions))


def test_interactions_with_unknown_items_name_line_value_and_items_table(tmp_path):
    interactions = INTERACTIONS + "u2,i9,4,400\nu1,i8,1,500\n"
    with pytest.raises(DataError) as info:
        load(make_folder(tmp_path / "d", interactions=interactions))
    message = str(info.value)
    assert "2 interaction(s) name items that are not in items.csv" in message
    assert "interactions.csv line 6 ('i9')" in message
    assert "interactions.csv line 7 ('i8')" in message
    assert "Add the items or drop those rows" in message


def test_unknown_items_name_the_items_table_that_was_read(tmp_path):
    items = '{"item_id": "i1", "title": "a"}\n{"item_id": "i2", "title": "b"}\n'
    root = make_folder(tmp_path / "d", items=items, items_name="items.jsonl",
                       interactions="user_id,item_id\nu1,i1\nu1,i9\n", media=False)
    with pytest.raises(DataError, match=r"1 interaction\(s\) name items that are not in "
                                        r"items\.jsonl: interactions\.csv line 3 \('i9'\)"):
        load(root)


def test_item_ids_are_strings_so_leading_zeros_are_kept(tmp_path):
    root = make_folder(tmp_path / "d", items="item_id,title\n007,A\n7,B\n",
                       interactions="user_id,item_id\n01,007\n01,7\n", users=None, media=False)
    dataset = load(root)
    assert list(dataset.catalog.item_ids) == ["007", "7"]
    assert list(dataset.interactions["item_index"]) == [0, 1]
    assert list(dataset.user_ids) == ["01"]


# --- repeated (user, item) pairs in interactions.csv (data.duplicate_interactions) -------------

# u1/i1 on lines 2 and 6 (the repeat is earlier in time), u2/i3 on lines 4 and 7 (later).
REPEATED = INTERACTIONS + "u1,i1,1,50\nu2,i3,5,900\n"


def pairs(dataset) -> list[tuple[str, str, int, int]]:
    """(user, item, rating, timestamp) of every kept row, in the order the dataset holds them."""
    frame = dataset.interactions
    return list(zip(frame["user_id"], frame["item_id"], frame["rating"].astype(int),
                    frame["timestamp"].astype(int), strict=True))


def test_repeated_pair_is_refused_naming_both_lines_count_and_fix(tmp_path):
    with pytest.raises(DataError) as info:
        load(make_folder(tmp_path / "d", interactions=REPEATED))
    message = str(info.value)
    assert "interactions.csv: duplicate interaction (user_id 'u1', item_id 'i1') at " \
           "interactions.csv line 6 (first seen at interactions.csv line 2); 2 duplicate " \
           "row(s) in all" in message
    assert "data.duplicate_interactions: first|last" in message and "\n" not in message


@pytest.mark.parametrize(("policy", "kept"), [
    ("first", [("u1", "i2", 3, 200), ("u2", "i3", 4, 150), ("u2", "i1", 2, 300),
               ("u1", "i1", 1, 50)]),
    ("last", [("u1", "i1", 5, 100), ("u1", "i2", 3, 200), ("u2", "i1", 2, 300),
              ("u2", "i3", 5, 900)]),
])
def test_first_and_last_keep_one_row_per_pair_by_timestamp(tmp_path, caplog, policy, kept):
    root = make_folder(tmp_path / "d", interactions=REPEATED)
    with caplog.at_level(logging.INFO, logger="tfmmrec"):
        dataset = load(root, duplicate_interactions=policy)
    assert pairs(dataset) == kept  # the kept rows stay in file order
    assert "2 repeated (user_id, item_id) row(s) dropped" in caplog.text
    assert "by timestamp" in caplog.text


@pytest.mark.parametrize(("policy", "ratings"), [("first", [5, 3]), ("last", [3, 1])])
def test_without_timestamps_first_and_last_follow_file_order(tmp_path, policy, ratings):
    # the timestamp column is blank everywhere, so absent: file order decides
    interactions = "user_id,item_id,rating,timestamp\nu1,i1,5,\nu1,i2,3,\nu1,i1,1,\n"
    dataset = load(make_folder(tmp_path / "d", interactions=interactions),
                   duplicate_interactions=policy)
    assert list(dataset.interactions["item_id"]) == (["i1", "i2"] if policy == "first"
                                                     else ["i2", "i1"])
    assert list(dataset.interactions["rating"]) == ratings


def test_the_kept_row_decides_min_rating(tmp_path):
    # u1/i1 was re-rated 1 then 5: "last" keeps the 5, which passes min_rating=4
    interactions = "user_id,item_id,rating,timestamp\nu1,i1,1,10\nu1,i2,2,20\nu1,i1,5,30\n"
    root = make_folder(tmp_path / "d", interactions=interactions)
    assert list(load(root, duplicate_interactions="last", min_rating=4)
                .interactions["item_id"]) == ["i1"]
    with pytest.raises(DataError, match="no interaction has rating >= 4"):
        load(root, duplicate_interactions="first", min_rating=4)


GIVEN = ("user_id,item_id,timestamp,split\nu1,i1,100,train\nu1,i2,200,train\n"
         "u2,i3,150,train\nu2,i3,160,train\nu1,i1,300,test\n")


def test_given_split_refuses_a_pair_in_train_and_test(tmp_path):
    root = make_folder(tmp_path / "d", interactions=GIVEN)
    with pytest.raises(DataError) as info:
        load(root, split="given")
    message = str(info.value)
    assert "duplicate interaction (user_id 'u2', item_id 'i3') at interactions.csv line 5" \
        in message
    assert "(user_id 'u1', item_id 'i1') is in both train (interactions.csv line 2) and test " \
           "(interactions.csv line 6) of the given split" in message


@pytest.mark.parametrize(("policy", "test_rows"), [("first", 0), ("last", 1)])
def test_given_split_keeps_the_chosen_row_with_its_split_value(tmp_path, policy, test_rows):
    from tfmmrec.data.splits import given_split

    root = make_folder(tmp_path / "d", interactions=GIVEN)
    split = given_split(load(root, split="given", duplicate_interactions=policy).interactions)
    assert len(split.test) == test_rows and len(split.train) == 3 - test_rows
    train = set(zip(split.train["user_id"], split.train["item_id"], strict=True))
    test = set(zip(split.test["user_id"], split.test["item_id"], strict=True))
    assert not train & test


def test_a_bogus_duplicate_interactions_value_is_refused():
    from tfmmrec.config import load_config
    from tfmmrec.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data\.duplicate_interactions='bogus'"):
        load_config(None, ["data.duplicate_interactions=bogus"])


# --- numeric columns ----------------------------------------------------------------------------


def test_non_numeric_rating_names_line_and_value(tmp_path):
    interactions = INTERACTIONS.replace("u2,i3,4,150", "u2,i3,five,150")
    with pytest.raises(DataError) as info:
        load(make_folder(tmp_path / "d", interactions=interactions))
    message = str(info.value)
    assert "interactions.csv: rating must be numeric, got 'five' at interactions.csv line 4" \
        in message


def test_a_huge_bad_value_is_shown_shortened(tmp_path):
    """The value was copied whole: a 10 MB cell made a 10 MB error line."""
    interactions = INTERACTIONS.replace("u2,i3,4,150", "u2,i3," + "x" * 1_000_000 + ",150")
    with pytest.raises(DataError) as info:
        load(make_folder(tmp_path / "d", interactions=interactions))
    assert len(str(info.value)) < 300
    assert "rating must be numeric, got 'xxxx" in str(info.value)


@pytest.mark.parametrize("column", ["rating", "timestamp"])
def test_a_column_of_true_false_is_not_read_as_numbers(tmp_path, column):
    """pandas reads such a column as booleans, which passed as 1/0: every timestamp 1 (a
    temporal split in arbitrary order), every rating 0 or 1."""
    lines = INTERACTIONS.strip().splitlines()
    position = lines[0].split(",").index(column)
    rows = [lines[0]] + [",".join("True" if i == position else v
                                  for i, v in enumerate(line.split(",")))
                         for line in lines[1:]]
    with pytest.raises(DataError, match=rf"{column} must be numeric, got True at "
                                        r"interactions\.csv line 2 \(a column of True/False"):
        load(make_folder(tmp_path / "d", interactions="\n".join(rows) + "\n"))


def test_a_repeated_header_is_named(tmp_path):
    """pandas renamed the second ``rating`` to ``rating.1``: read under no known name."""
    interactions = INTERACTIONS.replace("rating,timestamp", "rating,rating")
    with pytest.raises(DataError, match=r"interactions\.csv: the header names 'rating' more "
                                        r"than once; give every column its own name"):
        load(make_folder(tmp_path / "d", interactions=interactions))


def test_blank_header_cells_are_not_a_repeated_name(tmp_path):
    """A spreadsheet's blank trailing columns (``rating,,``): pandas names them Unnamed: N."""
    interactions = "".join(line + ",,\n" for line in INTERACTIONS.strip().splitlines())
    assert len(load(make_folder(tmp_path / "d", interactions=interactions)).interactions) == 4


def test_a_number_among_iso_dates_is_the_row_named(tmp_path):
    """The first date was named as a bad number: a column of dates with one number said line 2
    instead of the number's line."""
    interactions = INTERACTIONS
    for number, date in ((100, "2020-01-01"), (200, "2020-01-02"), (300, "2020-01-03")):
        interactions = interactions.replace(f",{number}\n", f",{date}\n")
    with pytest.raises(DataError, match=r"timestamp holds ISO 8601 dates, but interactions\.csv "
                                        r"line 4 has '150'"):
        load(make_folder(tmp_path / "d", interactions=interactions))


def test_empty_rating_names_line(tmp_path):
    interactions = INTERACTIONS.replace("u1,i2,3,200", "u1,i2,,200")
    with pytest.raises(DataError, match=r"empty rating at interactions\.csv line 3"):
        load(make_folder(tmp_path / "d", interactions=interactions))


@pytest.mark.parametrize(("rating", "shown"), [("inf", "inf"), ("-inf", "-inf"),
                                               ("1e39", r"1e\+39")])
def test_a_rating_float32_cannot_hold_names_line_and_value(tmp_path, rating, shown):
    # read as float32 in training, 1e39 is inf and every loss NaN
    interactions = INTERACTIONS.replace("u2,i3,4,150", f"u2,i3,{rating},150")
    with pytest.raises(DataError, match=r"rating must be finite and within ±3\.403e\+38, got "
                                        rf"{shown} at interactions\.csv line 4 \(1 bad"):
        load(make_folder(tmp_path / "d", interactions=interactions))


def test_an_infinite_timestamp_names_line(tmp_path):
    interactions = INTERACTIONS.replace("u2,i1,2,300", "u2,i1,2,inf")
    with pytest.raises(DataError, match=r"timestamp must be finite, got inf at "
                                        r"interactions\.csv line 5"):
        load(make_folder(tmp_path / "d", interactions=interactions))


def test_non_numeric_timestamp_names_line_and_value(tmp_path):
    interactions = INTERACTIONS.replace("u2,i1,2,300", "u2,i1,2,yesterday")
    with pytest.raises(DataError, match=r"timestamp must be numeric, got 'yesterday' at "
                                        r"interactions\.csv line 5"):
        load(make_folder(tmp_path / "d", interactions=interactions))


def test_a_non_numeric_timestamp_says_which_forms_are_read(tmp_path):
    interactions = INTERACTIONS.replace("u2,i1,2,300", "u2,i1,2,yesterday")
    with pytest.raises(DataError, match=r"Unix seconds, or ISO 8601 dates"):
        load(make_folder(tmp_path / "d", interactions=interactions))


def test_iso_timestamps_are_read_as_unix_seconds_in_utc(tmp_path):
    numeric = load(make_folder(tmp_path / "n")).interactions
    dates = {"100": "1970-01-01T00:01:40Z", "200": "1970-01-01 01:03:20+01:00",
             "150": "1970-01-01T00:02:30.000", "300": "1970-01-01T00:05:00"}
    text = INTERACTIONS
    for seconds, date in dates.items():
        text = text.replace(f",{seconds}\n", f",{date}\n")
    assert text != INTERACTIONS
    iso = load(make_folder(tmp_path / "d", interactions=text)).interactions
    np.testing.assert_array_equal(iso["timestamp"].to_numpy(), numeric["timestamp"].to_numpy())


def test_a_date_among_iso_dates_that_is_not_one_names_its_line(tmp_path):
    text = (INTERACTIONS.replace(",100\n", ",2020-01-01\n").replace(",200\n", ",2020-01-02\n")
            .replace(",150\n", ",2020-01-03\n").replace(",300\n", ",soon\n"))
    with pytest.raises(DataError, match=r"timestamp holds ISO 8601 dates, but interactions\.csv "
                                        r"line 5 has 'soon'"):
        load(make_folder(tmp_path / "d", interactions=text))


def test_min_rating_without_rating_column_is_an_error(tmp_path):
    root = make_folder(tmp_path / "d", interactions="user_id,item_id\nu1,i1\n")
    with pytest.raises(DataError, match=r"data\.min_rating is set but .* has no rating column"):
        load(root, min_rating=3)


def test_min_rating_that_removes_everything_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no interaction has rating >= 9"):
        load(make_folder(tmp_path / "d"), min_rating=9)


# --- media: missing files are reported and the item keeps its other modalities ---------------


def test_missing_media_file_is_reported_with_line_and_item_keeps_text(tmp_path, caplog):
    root = make_folder(tmp_path / "d")
    (root / "images" / "i2.png").unlink()
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):
        dataset = load(root)
    catalog = dataset.catalog
    assert catalog.image_paths[1] is None
    assert catalog.presence("image").tolist() == [True, False, False]  # i3 never had one
    assert catalog.presence("text").tolist() == [True, True, True]
    assert catalog.presence("audio").tolist() == [True, True, True]
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "1 image file(s) missing" in warning
    assert "images/i2.png (items.csv line 3)" in warning


def test_corrupt_media_is_reported_by_the_encoder_cache_and_masked(tmp_path, caplog):
    from tfmmrec.towers.cache import encode_catalog
    from tfmmrec.towers.image import build_image_encoder

    root = make_folder(tmp_path / "d")
    (root / "images" / "i1.png").write_bytes(b"\x89PNG but not really")
    catalog = load(root).catalog
    assert catalog.presence("image").tolist() == [True, True, False]  # present, maybe corrupt
    encoder = build_image_encoder(ImageTowerConfig(image_size=16, cnn_filters=[4]))
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):
        content, stats = encode_catalog(catalog, encoder, tmp_path / "cache", image_size=16,
                                        progress=False)
    assert content.mask.tolist() == [False, True, False]
    assert np.all(content.values[0] == 0)
    assert (stats.computed, stats.failed) == (1, 1)  # the corrupt file is not computed
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "1 image file(s) missing, unreadable or undecodable" in warning
    assert "i1.png" in warning


def test_a_row_after_a_quoted_newline_is_named_by_its_own_line(tmp_path):
    """A quoted field spanning lines moved every later row's label up a line ("line 4 (first
    seen at line 3)" for rows on lines 5 and 4)."""
    path = tmp_path / "items.csv"
    path.write_text('item_id,title\ni000,"two\nlines"\ni001,b\n\ni001,c\n')
    with pytest.raises(DataError, match=r"at items.csv line 6 \(first seen at items.csv line 4\)"):
        validate.require_unique(validate.read_table(path, ["item_id"]), path, "item_id")
    assert validate.row_label(path, 0) == "items.csv line 2"
