"""Tests for tfmmrec.data.stream: the items table in chunks equals the loaded catalogue."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.data.folders import ITEMS, make_folder
from tfmmrec.config import DataConfig
from tfmmrec.data.dataset import load_dataset
from tfmmrec.data.stream import ItemsStream, summarize
from tfmmrec.errors import DataError


def error_of(call) -> str:
    with pytest.raises(DataError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("rows", [1, 7, 50_000])
def test_chunks_give_the_loaded_catalogue_and_its_digests(tiny_config, tiny_workspace, rows):
    """Chunk boundaries change nothing: values, line order, ids and fingerprint digests."""
    stream = ItemsStream(tiny_config.data, rows=rows)
    catalog = tiny_workspace.dataset.catalog
    assert stream.modalities == catalog.modalities
    for modality in catalog.modalities:
        streamed = [(i, item_id, value) for i, item_id, value in stream.rows_of(modality)]
        assert [r[0] for r in streamed] == list(range(len(catalog)))
        assert [r[1] for r in streamed] == [str(i) for i in catalog.item_ids]
        assert [r[2] for r in streamed] == list(catalog.values(modality))
    assert stream.summary() == summarize(tiny_workspace.dataset)
    assert len(stream) == 80


def test_another_text_changes_the_streamed_fingerprint(tmp_path):
    a = ItemsStream(DataConfig(path=str(make_folder(tmp_path / "a"))), rows=2).summary()
    changed = ITEMS.replace("A dark mystery", "A darker mystery")
    b = ItemsStream(DataConfig(path=str(make_folder(tmp_path / "b", items=changed))),
                    rows=2).summary()
    assert a.item_ids_sha1 == b.item_ids_sha1 and a.catalog_sha1 != b.catalog_sha1


@pytest.mark.parametrize("rows", [1, 2, 100])
def test_duplicate_ids_are_refused_in_the_loaders_words(tmp_path, rows):
    """The bounded-memory check names the same rows as the whole-table check."""
    items = ITEMS + "i4,Four,,,\ni2,Again,,,\ni4,Twice,,,\n"
    root = make_folder(tmp_path / "d", items=items)
    expected = error_of(lambda: load_dataset(DataConfig(path=str(root))))
    assert "duplicate item_id 'i2' at items.csv line 6" in expected
    assert "2 duplicate row(s)" in expected
    assert error_of(lambda: ItemsStream(DataConfig(path=str(root)), rows=rows).summary()) \
        == expected


def test_duplicate_in_parquet_is_named_by_row(tmp_path):
    root = make_folder(tmp_path / "d", items=None, interactions=None, users=None, media=False)
    pd.DataFrame({"item_id": ["a", "b", "c", "b"], "title": ["w", "x", "y", "z"]}).to_parquet(
        root / "items.parquet")
    message = error_of(lambda: ItemsStream(DataConfig(path=str(root)), rows=2).summary())
    assert "duplicate item_id 'b' at items.parquet row 3 (first seen at items.parquet row 1)" \
        in message


def test_an_empty_id_in_a_later_chunk_names_its_line(tmp_path):
    items = "item_id,title\ni1,A\ni2,B\ni3,C\n,D\n"
    root = make_folder(tmp_path / "d", items=items, media=False)
    message = error_of(lambda: ItemsStream(DataConfig(path=str(root)), rows=2).summary())
    assert "empty item_id in 1 row(s): items.csv line 5" in message


def test_missing_media_are_named_with_their_line_in_any_chunk(tmp_path, caplog):
    items = ITEMS + "i4,Four,,images/gone.png,\n"
    root = make_folder(tmp_path / "d", items=items)
    values = [v for _, _, v in ItemsStream(DataConfig(path=str(root)), rows=2).rows_of("image")]
    assert values[3] is None and values[0] is not None
    assert "images/gone.png (items.csv line 5)" in caplog.text


def test_no_items_table_is_the_loaders_error(tmp_path):
    root = make_folder(tmp_path / "d", items=None, media=False)
    assert error_of(lambda: ItemsStream(DataConfig(path=str(root)))) == error_of(
        lambda: load_dataset(DataConfig(path=str(root))))


# Tables whose first chunk (2 rows) says otherwise about a column than the whole table does
# (``still`` is no name of a modality: it is inferred from its values).
LATE_STILLS = """\
item_id,title,still
i1,One,
i2,Two,
i3,Three,images/i1.png
i4,Four,images/i2.png
"""
EARLY_STILLS = """\
item_id,title,still
i1,One,images/i1.png
i2,Two,images/i2.png
i3,Three,a red cover
i4,Four,a blue cover
"""
EMPTY_IMAGE = """\
item_id,title,image
i1,One,
i2,Two,
i3,Three,
"""


@pytest.mark.parametrize("items, image, text", [
    (LATE_STILLS, "still", ("title",)),  # the first chunk has no still
    (EARLY_STILLS, None, ("title", "still")),  # only the first chunk's cells are paths
    (EMPTY_IMAGE, None, ("title",)),  # no image in any row: not a modality
], ids=["filled-later", "paths-first-only", "empty-everywhere"])
def test_columns_are_judged_on_the_whole_table_as_the_loader_judges_them(tmp_path, items,
                                                                         image, text):
    """A catalogue whose first 10,000 rows have no image is not one without images."""
    root = make_folder(tmp_path / "d", items=items, interactions="user_id,item_id\nu1,i1\n",
                       users=None)
    loaded = load_dataset(DataConfig(path=str(root)))
    assert (loaded.catalog.columns.image, loaded.catalog.columns.text) == (image, text)
    stream = ItemsStream(DataConfig(path=str(root)), rows=2)
    assert stream.columns == loaded.catalog.columns
    assert stream.summary() == summarize(loaded)
    assert [v for _, _, v in stream.rows_of("image")] == list(loaded.catalog.image_paths)


def stills_folder(tmp_path, items: str) -> DataConfig:
    root = make_folder(tmp_path / "d", items=items, interactions="user_id,item_id\nu1,i1\n",
                       users=None)
    return DataConfig(path=str(root), image_column="still")


def test_a_column_none_of_whose_paths_is_a_file_is_refused_in_the_loaders_words(tmp_path):
    """The first chunk has no path to judge by; no path of the whole table is a file."""
    config = stills_folder(tmp_path, LATE_STILLS.replace("images/i", "elsewhere/i"))
    expected = error_of(lambda: load_dataset(config))
    assert "none of the 2 image path(s) in column 'still' is a file: items.csv line 4" \
        in expected
    assert error_of(lambda: ItemsStream(config, rows=2).summary()) == expected


def test_a_first_chunk_of_missing_files_is_not_a_column_of_them(tmp_path, caplog):
    """Only the first chunk's path is missing: named, as the loader names it, not refused."""
    config = stills_folder(tmp_path, LATE_STILLS.replace("i1,One,", "i1,One,images/gone.png"))
    images = list(load_dataset(config).catalog.image_paths)
    assert images[0] is None and images[2] is not None
    caplog.clear()
    assert [v for _, _, v in ItemsStream(config, rows=2).rows_of("image")] == images
    assert "images/gone.png (items.csv line 2)" in caplog.text


def test_a_jsonl_key_first_written_in_a_later_chunk_is_a_column(tmp_path):
    """A JSONL chunk has only the keys its lines name; the whole table has every one."""
    lines = ['{"item_id": "i1", "title": "One"}', '{"item_id": "i2", "title": "Two"}',
             '{"item_id": "i3", "title": "Three", "still": "images/i1.png"}']
    root = make_folder(tmp_path / "d", items="\n".join(lines) + "\n", items_name="items.jsonl",
                       interactions="user_id,item_id\nu1,i1\n", users=None)
    loaded = load_dataset(DataConfig(path=str(root)))
    assert loaded.catalog.columns.image == "still"
    stream = ItemsStream(DataConfig(path=str(root)), rows=2)
    assert stream.columns == loaded.catalog.columns
    assert [v for _, _, v in stream.rows_of("image")] == list(loaded.catalog.image_paths)


def test_jsonl_values_are_read_as_json_gives_them_in_every_chunk(tmp_path):
    """pandas guessed JSONL types per chunk: "007" became 7, a ``modified`` integer a date,
    an integer column with a null in one chunk floats there ("4.0"), so ``encode`` (streamed)
    built other texts than ``train`` and its features were refused as stale."""
    lines = ['{"item_id": "i1", "title": "One", "code": "007", "modified": 1700000000, '
             '"part": 4}',
             '{"item_id": "i2", "title": "Two", "code": "008", "modified": 1700000001, '
             '"part": null}',
             '{"item_id": "i3", "title": "Three", "code": "009", "modified": 1700000002, '
             '"part": 5}']
    root = make_folder(tmp_path / "d", items="\n".join(lines) + "\n", items_name="items.jsonl",
                       interactions="user_id,item_id\nu1,i1\n", users=None)
    config = DataConfig(path=str(root), text_columns=["title", "code", "modified", "part"])
    loaded = list(load_dataset(config).catalog.values("text"))
    assert loaded == ["One. 007. 1700000000. 4", "Two. 008. 1700000001",
                      "Three. 009. 1700000002. 5"]
    for rows in (1, 2):
        assert [v for _, _, v in ItemsStream(config, rows=rows).rows_of("text")] == loaded


def test_a_chunks_warnings_are_given_once_however_many_passes_read_it(tmp_path, caplog):
    """``tfmmrec encode`` reads the table in several passes (and streams): the missing-media
    warning came once per pass, five times for one list of missing posters."""
    items = ITEMS.replace("images/i2.png", "images/gone.png")
    config = DataConfig(path=str(make_folder(tmp_path / "d", items=items)))
    for _ in range(3):
        for _ in ItemsStream(config).chunks():
            pass
    assert caplog.text.count("images/gone.png") == 1


def test_a_jsonl_chunk_without_item_ids_names_its_line(tmp_path):
    """A later chunk whose lines all lack ``item_id`` was a bare KeyError."""
    lines = ['{"item_id": "i1", "title": "One"}', '{"item_id": "i2", "title": "Two"}',
             '{"title": "z"}']
    root = make_folder(tmp_path / "d", items="\n".join(lines) + "\n", items_name="items.jsonl",
                       interactions="user_id,item_id\nu1,i1\n", users=None)
    whole = error_of(lambda: load_dataset(DataConfig(path=str(root))))
    streamed = error_of(lambda: list(ItemsStream(DataConfig(path=str(root)), rows=2).chunks()))
    assert "line 3" in whole and streamed == whole


def test_jsonl_flags_are_not_inferred_as_text(tmp_path):
    """Read untyped, a JSON true/false column became item text ("Alpha. True")."""
    lines = ['{"item_id": "i1", "title": "One", "in_stock": true}',
             '{"item_id": "i2", "title": "Two", "in_stock": false}']
    root = make_folder(tmp_path / "d", items="\n".join(lines) + "\n", items_name="items.jsonl",
                       interactions="user_id,item_id\nu1,i1\n", users=None)
    assert load_dataset(DataConfig(path=str(root))).catalog.columns.text == ("title",)
    assert ItemsStream(DataConfig(path=str(root)), rows=1).columns.text == ("title",)


def test_a_column_of_json_objects_in_some_chunks_is_not_text_in_either_reader(tmp_path):
    """A review: ``meta`` holding strings in some rows and objects in others was text for the
    chunked reader (its chunks of strings counted) and not for the whole-table one, so
    ``tfmmrec encode`` and ``train`` built other texts."""
    lines = [json.dumps({"item_id": f"i{i}", "title": f"film {i}",
                         "meta": {"studio": f"S{i}"} if i % 5 == 0 else f"note {i}"})
             for i in range(10)]
    root = make_folder(tmp_path / "d", items="\n".join(lines) + "\n", items_name="items.jsonl",
                       interactions="user_id,item_id\nu1,i1\n", users=None)
    assert load_dataset(DataConfig(path=str(root))).catalog.columns.text == ("title",)
    assert ItemsStream(DataConfig(path=str(root)), rows=4).columns.text == ("title",)
