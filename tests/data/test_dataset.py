"""Tests for tfmmrec.data.dataset: modality columns, catalogue order, interactions and users."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.data.folders import make_folder, write_png
from tfmmrec.config import DataConfig
from tfmmrec.data.dataset import ModalityColumns, infer_modality_columns, load_dataset
from tfmmrec.errors import DataError


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "d")


def test_demo_folder_loads_with_all_three_modalities(tiny_demo_dir):
    dataset = load_dataset(str(tiny_demo_dir))
    catalog = dataset.catalog
    assert catalog.modalities == ("text", "image", "audio")
    assert catalog.columns.text == ("title", "description")
    assert (catalog.columns.image, catalog.columns.audio) == ("image", "audio")
    assert len(catalog) == 80
    assert dataset.user_feature_columns  # users.csv columns besides user_id
    np.testing.assert_array_equal(
        catalog.item_ids[dataset.interactions["item_index"].to_numpy()],
        dataset.interactions["item_id"].to_numpy())


def test_columns_inferred_from_names(folder):
    catalog = load_dataset(str(folder)).catalog
    assert catalog.columns == ModalityColumns(text=("title", "description"), image="image",
                                              audio="audio")


def test_media_column_inferred_from_file_extensions_when_name_is_unknown():
    frame = pd.DataFrame({"item_id": ["a", "b"], "name": ["x", "y"],
                          "file": ["p/a.JPG", "p/b.png"], "clipfile": ["a.flac", "b.wav"]})
    columns = infer_modality_columns(frame, DataConfig())
    assert columns == ModalityColumns(text=("name",), image="file", audio="clipfile")


def test_numeric_columns_are_not_text():
    frame = pd.DataFrame({"item_id": ["a", "b"], "year": ["1999", "2001"], "price": [1.0, 2.0],
                          "title": ["x", "y"]})
    assert infer_modality_columns(frame, DataConfig()).text == ("title",)


def test_configured_columns_override_inference_and_empty_list_disables_text(folder):
    catalog = load_dataset(DataConfig(path=str(folder), text_columns=[], audio_column="")).catalog
    assert catalog.modalities == ("image",)
    assert catalog.texts.tolist() == ["", "", ""]
    assert catalog.audio_paths == [None, None, None]


def test_text_columns_joined_skipping_empty_parts(folder):
    texts = load_dataset(str(folder)).catalog.texts.tolist()
    assert texts == ["Starship Love. A calm story about a robot", "Forest Tides",
                     "The Riddle. A dark mystery"]


def test_media_paths_resolve_relative_to_folder_and_accept_absolute_paths(tmp_path):
    outside = write_png(tmp_path / "elsewhere" / "poster.png")
    items = f"item_id,title,image\ni1,A,images/i1.png\ni2,B,{outside}\ni3,C,\n"
    root = make_folder(tmp_path / "d", items=items,
                       interactions="user_id,item_id\nu1,i1\n", users=None)
    catalog = load_dataset(str(root)).catalog
    assert catalog.image_paths == [root / "images" / "i1.png", outside, None]
    assert catalog.presence("image").tolist() == [True, True, False]


def test_interactions_get_item_index_and_numeric_rating(folder):
    interactions = load_dataset(str(folder)).interactions
    assert interactions["item_index"].tolist() == [0, 1, 2, 0]
    assert interactions["rating"].dtype.kind in "if"
    assert interactions["rating"].tolist() == [5, 3, 4, 2]


def test_min_rating_keeps_only_strong_interactions(folder):
    dataset = load_dataset(DataConfig(path=str(folder), min_rating=4))
    assert dataset.interactions["item_id"].tolist() == ["i1", "i3"]
    assert dataset.interactions.index.tolist() == [0, 1]


def test_users_table_is_optional(tmp_path):
    dataset = load_dataset(str(make_folder(tmp_path / "d", users=None)))
    assert dataset.users is None and dataset.user_feature_columns == ()


def test_user_ids_include_users_without_interactions_sorted(tmp_path):
    users = "user_id,age\nu9,20\nu1,30\nu2,40\n"
    dataset = load_dataset(str(make_folder(tmp_path / "d", users=users)))
    assert dataset.user_ids.tolist() == ["u1", "u2", "u9"]
    assert dataset.user_feature_columns == ("age",)


def test_a_users_table_matching_no_interacting_user_is_a_warning(tmp_path, caplog):
    """Numeric ids 1, 2 against u1, u2: accepted without a word, so no user got a feature."""
    users = "user_id,age\n1,20\n2,30\n"
    with caplog.at_level("WARNING", logger="tfmmrec"):
        load_dataset(str(make_folder(tmp_path / "d", users=users)))
    assert "none of the users table's 2 user ids is a user of the interactions ('u1' there, " \
           "'1' in the users table)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tfmmrec"):
        load_dataset(str(make_folder(tmp_path / "e", users="user_id,age\nu1,20\nu7,30\n")))
    assert "users table" not in caplog.text


def test_a_users_table_writing_some_users_another_way_is_a_warning(tmp_path, caplog):
    """One matching id kept the warning above quiet while another user's row, written another
    way, silently gave that user no features."""
    interactions = "user_id,item_id\n001,i1\n002,i2\n003,i3\n"
    with caplog.at_level("WARNING", logger="tfmmrec"):
        load_dataset(str(make_folder(tmp_path / "d", interactions=interactions,
                                     users="user_id,age\n001,20\n2.0,30\n")))
    assert "1 user(s) of the interactions have no row in the users table but one written " \
           "another way ('002' there, '2.0' in the users table)" in caplog.text
    caplog.clear()  # long numeric ids that a float would round together stay apart
    interactions = "user_id,item_id\n1234567890123456789,i1\n5,i2\n"
    with caplog.at_level("WARNING", logger="tfmmrec"):
        load_dataset(str(make_folder(tmp_path / "e", interactions=interactions,
                                     users="user_id,age\n1234567890123456790,20\n5,30\n")))
    assert "written another way" not in caplog.text


def test_configured_user_feature_subset(folder):
    dataset = load_dataset(DataConfig(path=str(folder), user_feature_columns=["occupation"]))
    assert dataset.user_feature_columns == ("occupation",)


def test_index_of_maps_ids_and_rejects_unknown_ones(folder):
    catalog = load_dataset(str(folder)).catalog
    assert catalog.index_of(["i3", "i1"]).tolist() == [2, 0]
    with pytest.raises(DataError, match=r"unknown item id\(s\) \['nope'\]"):
        catalog.index_of(["i1", "nope"])


def test_jsonl_and_parquet_items_load_like_csv(tmp_path, folder):
    frame = pd.read_csv(folder / "items.csv", dtype=str, keep_default_na=False)
    expected = load_dataset(str(folder)).catalog
    for name in ("items.jsonl", "items.parquet"):
        root = make_folder(tmp_path / name, items=None)
        if name.endswith(".jsonl"):
            frame.to_json(root / name, orient="records", lines=True)
        else:
            frame.to_parquet(root / name)
        catalog = load_dataset(str(root)).catalog
        assert catalog.item_ids.tolist() == expected.item_ids.tolist(), name
        assert catalog.texts.tolist() == expected.texts.tolist(), name
        assert catalog.presence("image").tolist() == expected.presence("image").tolist(), name


def test_an_item_text_beyond_64_kib_is_cut_at_a_character_and_named(tmp_path, caplog):
    # tokenising takes ~90x a text's bytes; the BERT tower reads at most 512 tokens of it
    items = pd.DataFrame({"item_id": ["i1", "i2", "i3"],
                          "title": ["short", "word " * 30_000, "\u00e9" * 40_000]})
    root = tmp_path / "d"
    make_folder(root, items=None, interactions="user_id,item_id\nu1,i1\nu1,i2\n", users=None,
                media=False)
    items.to_csv(root / "items.csv", index=False)
    with caplog.at_level("WARNING"):
        texts = load_dataset(str(root)).catalog.texts
    assert texts[0] == "short"
    assert len(texts[1].encode()) <= 65_536 and texts[1].startswith("word word")
    assert texts[2] == "\u00e9" * 32_768  # two bytes each: cut between characters
    assert ("2 item text(s) longer than 65536 bytes were cut to that length" in caplog.text
            and "items.csv line 3, items.csv line 4" in caplog.text)


@pytest.mark.parametrize("cell, message", [
    ("abc", "rating must be numeric, got 'abc' at {name} line 3 (1 bad value(s))"),
    ("", "empty rating at {name} line 3"),
    ("1e400", "rating must be finite and within ±3.403e+38, got inf at {name} line 3"),
])
def test_a_test_files_ratings_are_kept_and_checked_as_interactions_csvs(tmp_path, cell, message):
    """``evaluate --test FILE``: the rating column reaches the ranking head's RMSE/MAE (it was
    dropped, and any value accepted), refused as interactions.csv's would be."""
    from tfmmrec.data.dataset import load_test_interactions

    dataset = load_dataset(str(make_folder(tmp_path / "d")))
    (tmp_path / "test.csv").write_text("user_id,item_id,rating\nu2,i2,4.5\nu1,i3,-7\n")
    test = load_test_interactions(tmp_path / "test.csv", dataset)
    assert test.values.tolist() == [["u2", "i2", 1, 4.5], ["u1", "i3", 2, -7.0]]
    assert list(test.columns) == ["user_id", "item_id", "item_index", "rating"]
    (tmp_path / "bad.csv").write_text(f"user_id,item_id,rating\nu2,i2,4\nu1,i3,{cell}\n")
    with pytest.raises(DataError) as error:
        load_test_interactions(tmp_path / "bad.csv", dataset)
    assert str(error.value).startswith(f"{tmp_path / 'bad.csv'}: "
                                       + message.format(name="bad.csv"))
    bad = make_folder(tmp_path / "bad", interactions="user_id,item_id,rating\nu2,i2,4\n"
                                                     f"u1,i3,{cell}\n")
    with pytest.raises(DataError) as same:  # interactions.csv's message, for its own file
        load_dataset(str(bad))
    assert str(same.value).startswith(f"{bad / 'interactions.csv'}: "
                                      + message.format(name="interactions.csv"))


def test_a_media_column_empty_in_every_row_is_no_modality(tmp_path, caplog):
    """It became one: trained from a projection that never saw a file, and exported with a
    query_image that answered confidently (a review's catalogue with an empty poster column)."""
    items = ("item_id,title,poster,audio\ni1,Starship Love,,audio/i1.wav\n"
             "i2,Forest Tides,,audio/i2.wav\ni3,The Riddle,,\n")
    root = make_folder(tmp_path / "d", items=items)
    with caplog.at_level("WARNING"):
        dataset = load_dataset(DataConfig(path=str(root), image_column="poster"))
    assert dataset.catalog.modalities == ("text", "audio")
    assert [r.getMessage() for r in caplog.records] == [
        f"{root / 'items.csv'}: the image column 'poster' has no value in any row: image is "
        "not a modality of this catalogue"]
    with_one = items.replace("i3,The Riddle,,", "i3,The Riddle,images/i1.png,")
    (root / "items.csv").write_text(with_one)
    assert load_dataset(DataConfig(path=str(root), image_column="poster")).catalog.modalities \
        == ("text", "image", "audio")
