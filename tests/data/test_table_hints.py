"""Errors that say what to change: another CSV delimiter, ids that differ only in their number
format, an interactions or users table in another format, a non-finite user feature."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from tests.data.folders import INTERACTIONS, ITEMS, USERS, make_folder
from tfmmrec.config import DataConfig
from tfmmrec.data.dataset import load_dataset
from tfmmrec.errors import DataError

PLAIN_ITEMS = "item_id,title\ni1,A\ni2,B\ni3,C\n"
PLAIN_INTERACTIONS = "user_id,item_id\nu1,i1\nu1,i2\nu2,i3\n"


def load(root, **config):
    return load_dataset(DataConfig(path=str(root), **config))


def error_of(root, **config) -> str:
    with pytest.raises(DataError) as info:
        load(root, **config)
    assert "\n" not in str(info.value)
    return str(info.value)


# --- another delimiter -------------------------------------------------------------------------


@pytest.mark.parametrize(("delimiter", "name"), [(";", "semicolon"), ("\t", "tab"),
                                                 ("|", "pipe")])
def test_a_csv_with_another_delimiter_says_so(tmp_path, delimiter, name):
    items = PLAIN_ITEMS.replace(",", delimiter)
    message = error_of(make_folder(tmp_path / "d", items=items, media=False))
    found = f"item_id{delimiter}title"
    if delimiter == "\t":  # a tab does not show: the name is quoted and escaped
        found = repr(found)
    assert f"missing column(s) item_id; found columns: {found}" in message
    assert (f"the file seems to be {name}-separated ({delimiter!r}); tfmmrec reads "
            "comma-separated CSV") in message


def test_another_delimiter_with_commas_in_the_rows_says_so_too(tmp_path):
    items = "item_id;title\ni1;Hello, world\n"
    message = error_of(make_folder(tmp_path / "d", items=items, media=False))
    assert "line 2 has 2 fields, the header 1" in message
    assert "semicolon-separated" in message


def test_a_comma_separated_table_missing_a_column_gets_no_delimiter_hint(tmp_path):
    message = error_of(make_folder(tmp_path / "d", interactions="user_id,item;id\nu1,i1\n"))
    assert "missing column(s) item_id" in message and "seems to be" not in message


# --- ids that differ only in their number format -----------------------------------------------


def test_integer_ids_against_zero_padded_ones_name_the_pair(tmp_path):
    root = make_folder(tmp_path / "d", items=None, interactions="user_id,item_id\nu1,001\n"
                       "u1,002\n", users=None, media=False)
    pd.DataFrame({"item_id": [1, 2], "title": ["A", "B"]}).to_parquet(root / "items.parquet")
    message = error_of(root)
    assert "2 interaction(s) name items that are not in items.parquet" in message
    assert ("ids are compared as text, and interactions.csv line 2 has '001' where "
            "items.parquet has '1': write the ids the same way in both tables") in message


def test_unknown_ids_that_match_nothing_get_no_format_hint(tmp_path):
    interactions = INTERACTIONS + "u2,i9,4,400\n"
    message = error_of(make_folder(tmp_path / "d", interactions=interactions))
    assert "not in items.csv: interactions.csv line 6 ('i9')" in message
    assert "compared as text" not in message


def test_ids_that_differ_only_in_unicode_normalisation_name_both_escaped(tmp_path):
    """'café 1' with 'e' + a combining accent (NFD) prints as items.csv's 'café 1' (NFC): the
    message shows both escaped and says how they differ; the ids are not normalised."""
    nfc, nfd = "caf\u00e9 1", "cafe\u0301 1"
    root = make_folder(tmp_path / "d", items=f"item_id,title\ni1,A\n{nfc},B\n", users=None,
                       interactions=f"user_id,item_id\nu1,i1\nu1,{nfd}\n", media=False)
    message = error_of(root)
    assert "1 interaction(s) name items that are not in items.csv" in message
    assert ("interactions.csv line 3's 'cafe\\u0301 1' (NFD) differs from items.csv's "
            "'caf\\xe9 1' (NFC) only in Unicode normalisation: write both in one form") in message


def test_an_nfc_id_against_an_nfd_catalogue_is_named_too(tmp_path):
    nfc, nfd = "\u00c5ngstr\u00f6m", "A\u030angstro\u0308m"
    root = make_folder(tmp_path / "d", items=f"item_id,title\n{nfd},A\n", users=None,
                       interactions=f"user_id,item_id\nu1,{nfd}\nu1,{nfc}\n", media=False)
    message = error_of(root)
    assert ("interactions.csv line 3's '\\xc5ngstr\\xf6m' (NFC) differs from items.csv's "
            "'A\\u030angstro\\u0308m' (NFD) only in Unicode normalisation") in message


def test_unknown_non_ascii_ids_that_match_nothing_get_no_normalisation_hint(tmp_path):
    root = make_folder(tmp_path / "d", items="item_id,title\ncaf\u00e9,A\n", users=None,
                       interactions="user_id,item_id\nu1,caf\u00e9\nu1,th\u00e9\n", media=False)
    message = error_of(root)
    assert "('th\u00e9')" in message and "normalisation" not in message


# --- column names with spaces around them ------------------------------------------------------


def test_a_header_with_spaces_around_names_reads_as_the_names(tmp_path):
    """`` item_id`` is ``item_id``, as `` i1 `` is ``i1``; the id column stays text."""
    root = make_folder(tmp_path / "d", items=" item_id , title\n007,A\n7,B\n", users=None,
                       interactions="user_id ,\titem_id\n01,007\n01, 7\n", media=False)
    dataset = load(root)
    assert list(dataset.catalog.item_ids) == ["007", "7"]
    assert list(dataset.interactions["item_index"]) == [0, 1]
    assert list(dataset.user_ids) == ["01"]


def test_a_jsonl_key_with_spaces_around_it_reads_as_the_name(tmp_path):
    items = '{" item_id": "007", "title": "A"}\n{" item_id": "7", "title": "B"}\n'
    root = make_folder(tmp_path / "d", items=items, items_name="items.jsonl", users=None,
                       interactions="user_id,item_id\nu1,007\nu1,7\n", media=False)
    assert list(load(root).catalog.item_ids) == ["007", "7"]


def test_two_csv_columns_named_alike_but_for_spaces_are_refused_naming_both(tmp_path):
    root = make_folder(tmp_path / "d", items="item_id,title, item_id\ni1,A,i2\n", media=False)
    message = error_of(root)
    assert ("items.csv: the header names 'item_id' more than once (written 'item_id', "
            "' item_id'; spaces around a column name are ignored)") in message


def test_two_jsonl_keys_named_alike_but_for_spaces_are_refused_naming_both(tmp_path):
    items = '{"item_id": "i1", "title": "A", "title ": "B"}\n'
    root = make_folder(tmp_path / "d", items=items, items_name="items.jsonl", media=False)
    assert ("items.jsonl: columns 'title' and 'title ' are both named 'title' once the spaces "
            "around them are removed") in error_of(root)


def test_a_missing_column_shows_found_names_escaped_when_one_hides_a_character(tmp_path):
    """A zero-width space in ``item\u200bid`` prints like ``itemid``: quote and escape."""
    root = make_folder(tmp_path / "d", items="item\u200bid,title\ni1,A\n", media=False)
    assert "missing column(s) item_id; found columns: 'item\\u200bid', 'title'" \
        in error_of(root)


def test_a_missing_column_shows_a_name_with_spaces_around_it_quoted(tmp_path):
    from tfmmrec.data.validate import require_columns

    frame = pd.DataFrame({" item_id": ["i1"], "title": ["A"]})
    with pytest.raises(DataError) as info:
        require_columns(frame, tmp_path / "items.csv", ["item_id"])
    assert "found columns: ' item_id', 'title'" in str(info.value)


def test_missing_column_names_are_listed_plainly_otherwise(tmp_path):
    root = make_folder(tmp_path / "d", items="id,title\ni1,A\n", media=False)
    assert "found columns: id, title" in error_of(root)


# --- one reader for every table ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_interactions_and_users_may_be_parquet_or_jsonl(tmp_path, suffix):
    root = make_folder(tmp_path / "d", interactions=None, users=None)
    for name, text in (("interactions", INTERACTIONS), ("users", USERS)):
        frame = pd.read_csv(io.StringIO(text), dtype={"user_id": str, "item_id": str})
        path = root / f"{name}{suffix}"
        if suffix == ".parquet":
            frame.to_parquet(path)
        else:
            frame.to_json(path, orient="records", lines=True)
    dataset = load(root)
    plain = load(make_folder(tmp_path / "plain"))
    pd.testing.assert_frame_equal(dataset.interactions, plain.interactions)
    assert dataset.user_feature_columns == plain.user_feature_columns


def test_no_interactions_table_lists_the_accepted_names_and_the_file_found(tmp_path):
    root = make_folder(tmp_path / "d", interactions=None)
    (root / "interactions.tsv").write_text("user_id\titem_id\n")
    message = error_of(root)
    assert message.startswith(f"no interactions table in {root}: expected one of "
                              "interactions.csv, interactions.jsonl, interactions.parquet; "
                              "found interactions.tsv, which is not one of these formats")


def test_several_interactions_tables_are_refused(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "interactions.jsonl").write_text('{"user_id": "u1", "item_id": "i1"}\n')
    assert "several interactions tables in" in error_of(root)


def test_interactions_errors_name_the_parquet_file_by_row(tmp_path):
    root = make_folder(tmp_path / "d", interactions=None)
    pd.DataFrame({"user_id": ["u1", "u1"], "item_id": ["i1", "i9"]}).to_parquet(
        root / "interactions.parquet")
    assert ("1 interaction(s) name items that are not in items.csv: interactions.parquet "
            "row 1 ('i9')") in error_of(root)


# --- non-finite user features -----------------------------------------------------------------


def test_an_infinite_user_feature_names_file_line_user_column_and_value(tmp_path):
    users = "user_id,age,score\nuser1,30,1.5\nuser2,,2.5\nuser3,45,1e400\n"
    root = make_folder(tmp_path / "d", items=PLAIN_ITEMS, media=False, users=users,
                       interactions="user_id,item_id\nuser1,i1\nuser2,i2\nuser3,i3\n")
    message = error_of(root)
    assert message.startswith(f"{root / 'users.csv'}: users.csv line 4 (user_id 'user3'), "
                              "column score: inf is not a finite number (1 such value(s)")
    assert "leave the cell empty" in message


def test_an_infinite_user_feature_in_parquet_is_named_by_row(tmp_path):
    root = make_folder(tmp_path / "d", users=None)
    pd.DataFrame({"user_id": ["u1", "u2"], "age": [30.0, float("-inf")]}).to_parquet(
        root / "users.parquet")
    assert "users.parquet row 1 (user_id 'u2'), column age: -inf is not a finite number" \
        in error_of(root)


def test_empty_user_feature_cells_stay_missing_values(tmp_path):
    users = "user_id,age\nu1,30\nu2,\n"
    dataset = load(make_folder(tmp_path / "d", items=ITEMS, users=users))
    assert dataset.user_feature_columns == ("age",)
