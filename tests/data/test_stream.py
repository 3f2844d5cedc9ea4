"""Tests for tfmmrec.data.stream: the items table in chunks equals the loaded catalogue."""

from __future__ import annotations

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
