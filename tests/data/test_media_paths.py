"""Media paths are relative to the dataset folder: a column none of whose paths is a file is an
error naming that folder; a few missing files are a warning naming it too."""

from __future__ import annotations

import logging

import pytest

from tests.data.folders import ITEMS, make_folder
from tfmmrec.config import DataConfig
from tfmmrec.data import validate
from tfmmrec.data.dataset import load_dataset
from tfmmrec.data.stream import ItemsStream
from tfmmrec.errors import DataError


def load(root, **config):
    return load_dataset(DataConfig(path=str(root), **config))


def warnings_of(caplog) -> str:
    return " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_paths_relative_to_the_working_directory_are_an_error_naming_the_folder(
        tmp_path, monkeypatch):
    """The reviewer's case: ``ds/images/x.png`` written from ds/'s parent folder."""
    monkeypatch.chdir(tmp_path)
    root = make_folder(tmp_path / "ds")
    items = (root / "items.csv").read_text()
    (root / "items.csv").write_text(items.replace("images/", "ds/images/"))
    with pytest.raises(DataError) as info:
        load("ds")
    message = str(info.value)
    assert message.startswith("ds/items.csv: none of the 2 image path(s) in column 'image' "
                              "is a file: items.csv line 2 has 'ds/images/i1.png', resolved "
                              f"to {root / 'ds' / 'images' / 'i1.png'}")
    assert "'ds/images/i1.png' exists relative to the working directory" in message
    assert f"Media paths are relative to the folder holding items.csv ({root})" in message
    assert "\n" not in message


def test_a_column_that_holds_no_paths_is_an_error(tmp_path):
    root = make_folder(tmp_path / "d")
    with pytest.raises(DataError, match=r"none of the 3 image path\(s\) in column 'title' is a "
                                        r"file: items\.csv line 2 has 'Starship Love'.*set "
                                        r"data\.image_column to the column that holds image"):
        load(root, image_column="title")


def test_empty_cells_are_items_without_the_medium_not_an_error(tmp_path):
    items = "item_id,title,image\ni1,A,\ni2,B,\n"
    root = make_folder(tmp_path / "d", items=items, interactions="user_id,item_id\nu1,i1\n",
                       users=None, media=False)
    catalog = load(root).catalog
    assert catalog.presence("image").tolist() == [False, False]


def test_a_partial_miss_stays_a_warning_naming_the_folder(tmp_path, caplog):
    root = make_folder(tmp_path / "d")
    (root / "images" / "i2.png").unlink()
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):
        catalog = load(root).catalog
    assert catalog.presence("image").tolist() == [True, False, False]
    assert (f"1 image file(s) missing (paths are resolved against {root}), those items are "
            "encoded without image: images/i2.png (items.csv line 3)") in warnings_of(caplog)


def test_a_stream_refuses_a_first_chunk_without_any_file_as_the_loader_does(tmp_path):
    root = make_folder(tmp_path / "d", items=ITEMS.replace("images/", "elsewhere/"))
    with pytest.raises(DataError) as loaded:
        load(root)
    with pytest.raises(DataError) as streamed:
        ItemsStream(DataConfig(path=str(root)), rows=50).summary()
    assert str(streamed.value) == str(loaded.value)


def test_a_later_chunk_without_files_is_a_warning(tmp_path, caplog):
    """Chunks after the first are judged like a partial miss: the table as a whole has files."""
    items = ITEMS + "i4,Four,,images/gone.png,\n"
    root = make_folder(tmp_path / "d", items=items)
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):
        values = [v for _, _, v in ItemsStream(DataConfig(path=str(root)), rows=3)
                  .rows_of("image")]
    assert values[3] is None
    assert "images/gone.png (items.csv line 5)" in warnings_of(caplog)


def test_a_caller_that_names_missing_files_itself_gets_no_error_here(tmp_path):
    """``catalog add`` refuses missing media with its own error naming each file."""
    from tfmmrec.data.dataset import ModalityColumns, load_items_table

    root = make_folder(tmp_path / "d", media=False)
    with validate.missing_media_refused():
        catalog = load_items_table(root / "items.csv", ModalityColumns(image="image"))
    assert catalog.presence("image").tolist() == [False, False, False]
