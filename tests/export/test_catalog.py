"""Catalogue updates of an exported model (add / update / remove without retraining), request-time
exclusion, session-aware requests and the ``embed_items`` signature.

One tiny model (tests/conftest.py) is exported once; every test updates its own copy of that
version, so the tests are independent.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.export.conftest import private_copy
from tfmmrec import pipeline
from tfmmrec.config import load_config
from tfmmrec.errors import ConfigError, DataError, ExportError, ServingError
from tfmmrec.export import catalog
from tfmmrec.export.loader import ExportedModel, latest_version
from tfmmrec.export.variables import MODEL_INDEX, MODEL_SHARD
from tfmmrec.export.writer import PUBLISHED_FILE, read_metadata, stored_recall_queries

REPO = Path(__file__).resolve().parents[2]
K = 20


def export_tiny(tiny_config, tiny_trained, store: Path, *overrides: str,
                index: str = "brute_force") -> Path:
    """Version 1 of the tiny model under ``store`` (BruteForce by default: exact, so rankings
    compare exactly), with the export ``overrides``."""
    config = load_config(tiny_config, [f"export.base_dir={store}", "export.k=5",
                                       f"export.max_k={K}", "export.max_exclude=10",
                                       "export.max_session_items=10",
                                       *overrides])
    return pipeline.export(config, model=tiny_trained.model, workspace=tiny_trained.workspace,
                           index=index)


@pytest.fixture(scope="module")
def exported(tiny_config, tiny_trained, tmp_path_factory) -> Path:
    """Version 1 of the tiny model (BruteForce: exact, so rankings compare exactly)."""
    return export_tiny(tiny_config, tiny_trained, tmp_path_factory.mktemp("catalog-export"))


@pytest.fixture
def base(exported, tmp_path) -> Path:
    """A private copy of the model folder holding version 1."""
    return private_copy(exported, tmp_path)


def write_items(frame: pd.DataFrame, folder: Path, name: str = "new.csv") -> Path:
    """An items table in the demo folder (its media paths are relative to that folder)."""
    path = folder / name
    frame.to_csv(path, index=False)
    return path


def with_all_media(items: pd.DataFrame) -> pd.DataFrame:
    return items[(items["image"] != "") & (items["audio"] != "") & (items["title"] != "")]


USERS = np.array(["u000", "u001", "u017", "someone-new"])


def answers(model: ExportedModel, texts) -> dict[str, np.ndarray]:
    """Every retrieval signature's ids (and user scores) for fixed requests."""
    return {"recommend": model.recommend(USERS, k=K)["item_ids"],
            "recommend_scores": model.recommend(USERS, k=K)["scores"],
            "serving_default": model.recommend(USERS)["item_ids"],
            "query_text": model.call("query_text", text=np.asarray(texts), k=np.int32(K))[
                "item_ids"]}


# --- the equality test: an item added later ranks as if it had been exported -----------------


def test_removed_then_added_items_rank_exactly_as_at_export(base, items, tiny_demo_dir):
    original = ExportedModel(base / "1")
    chosen = with_all_media(items).iloc[:5]
    texts = [f"{t}. {d}" for t, d in zip(chosen["title"], chosen["description"], strict=True)]
    before = answers(original, texts)
    removed = catalog.remove(base, item_ids=list(chosen["item_id"]))
    assert removed.removed == 5 and removed.num_items == len(items) - 5
    added = catalog.add(base, write_items(chosen, tiny_demo_dir, "readd.csv"))
    assert (added.added, added.version_dir.name) == (5, "3")
    after = answers(ExportedModel(added.version_dir), texts)
    for name in ("recommend", "serving_default", "query_text"):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    np.testing.assert_allclose(after["recommend_scores"], before["recommend_scores"], atol=1e-5)
    np.testing.assert_allclose(ExportedModel(added.version_dir).item_embeddings(chosen["item_id"]),
                               original.item_embeddings(chosen["item_id"]), atol=1e-5)
    sessions = [list(chosen["item_id"][:2]), ["i0003", "i0010"]]
    np.testing.assert_array_equal(
        ExportedModel(added.version_dir).recommend_session(sessions, ["u001", ""], k=K)[
            "item_ids"], original.recommend_session(sessions, ["u001", ""], k=K)["item_ids"])
    # Both updates stored new variables under the exported graph (nothing re-traced).
    graph = (base / "1" / "saved_model.pb").read_bytes()
    assert (removed.version_dir / "saved_model.pb").read_bytes() == graph
    assert (added.version_dir / "saved_model.pb").read_bytes() == graph


def test_added_item_is_returned_by_every_signature(base, items, tiny_demo_dir):
    """A new id with the content of user u000's top item embeds like it, so it ranks next to
    it everywhere; its image and clip find it by content."""
    model = ExportedModel(base / "1")
    top = model.recommend(["u000"], k=1)["item_ids"][0, 0].decode()
    row = items[items["item_id"] == top].copy()
    row["item_id"] = "brand-new"
    version = catalog.add(base, write_items(row, tiny_demo_dir, "brand-new.csv")).version_dir
    new = ExportedModel(version)
    assert b"brand-new" in new.recommend(["u000"], k=2)["item_ids"][0]
    assert b"brand-new" in new.recommend(["u000"])["item_ids"][0]
    assert b"brand-new" in new.recommend_session([[top]], ["u000"], k=3)["item_ids"][0]
    content = row.iloc[0]
    text = ". ".join(v for v in (content["title"], content["description"]) if v)
    assert b"brand-new" in new.call("query_text", text=np.array([text]), k=np.int32(K))[
        "item_ids"][0]
    if content["image"]:
        image = (tiny_demo_dir / content["image"]).read_bytes()
        assert b"brand-new" in new.call("query_image", image=np.array([image], dtype=object),
                                        k=np.int32(K))["item_ids"][0]
    if content["audio"]:
        clip = (tiny_demo_dir / content["audio"]).read_bytes()
        assert b"brand-new" in new.call("query_audio", audio=np.array([clip], dtype=object),
                                        k=np.int32(K))["item_ids"][0]
    np.testing.assert_allclose(new.item_embeddings(["brand-new"]), new.item_embeddings([top]),
                               atol=1e-5)


def test_update_re_embeds_from_new_content_and_keeps_the_rest(base, items, tiny_demo_dir):
    model = ExportedModel(base / "1")
    a, b = with_all_media(items)["item_id"].iloc[:2]
    changed = items[items["item_id"] == b].copy()
    changed["item_id"] = a  # item a now has item b's content
    result = catalog.update(base, write_items(changed, tiny_demo_dir, "update.csv"))
    assert (result.updated, result.num_items) == (1, len(items))
    new = ExportedModel(result.version_dir)
    np.testing.assert_allclose(new.item_embeddings([a]), model.item_embeddings([b]), atol=1e-5)
    others = [i for i in items["item_id"] if i != a]
    np.testing.assert_array_equal(new.item_embeddings(others), model.item_embeddings(others))


@pytest.mark.parametrize(("dropped", "named"), [
    (["image", "audio"], "no image column 'image', audio column 'audio'"),
    (["description"], "no text column 'description'"),
])
def test_an_update_without_a_modality_column_is_refused_before_anything_is_embedded(
        base, items, tiny_demo_dir, monkeypatch, dropped, named):
    """A version keeps no item's media: an update table without the image column would
    re-embed the item without its image (a title typo fix losing the poster). Refused up front,
    naming the file, the columns and their modalities; nothing is decoded or written."""
    row = with_all_media(items).iloc[[0]]
    path = write_items(row.drop(columns=dropped), tiny_demo_dir, "typo.csv")
    decoded = spy_on_decoding(monkeypatch)
    with pytest.raises(DataError) as info:
        catalog.update(base, path)
    message = str(info.value)
    assert message.startswith(f"{path}: {named}, which this model embeds; `catalog update` "
                              "re-embeds each item from its row alone")
    assert "an update replaces the whole item" in message
    assert "an empty cell: the item has none" in message and "\n" not in message
    assert decoded == [] and sorted(p.name for p in base.iterdir()) == ["1"]


def test_an_update_with_the_whole_row_keeps_the_item_and_empty_cells_drop_its_media(
        base, items, tiny_demo_dir):
    """The fix of a title typo gives the row with its media paths: the item embeds as before.
    An empty media cell is the explicit way to remove an item's image and audio."""
    row = with_all_media(items).iloc[[0]]
    item = row["item_id"].iloc[0]
    before = ExportedModel(base / "1").item_embeddings([item])
    same = catalog.update(base, write_items(row, tiny_demo_dir, "same.csv")).version_dir
    np.testing.assert_allclose(ExportedModel(same).item_embeddings([item]), before, atol=1e-5)
    bare = catalog.update(base, write_items(row.assign(image="", audio=""), tiny_demo_dir,
                                            "bare.csv")).version_dir
    assert np.abs(ExportedModel(bare).item_embeddings([item]) - before).max() > 1e-3


def test_cli_catalog_update_without_media_columns_is_one_error_line(base, items, tiny_demo_dir,
                                                                    capsys):
    from tfmmrec import cli

    row = with_all_media(items).iloc[[0]][["item_id", "title", "description"]]
    path = write_items(row, tiny_demo_dir, "cli-typo.csv")
    assert cli.main(["catalog", "update", "--model-base-path", str(base), "--items",
                     str(path)]) == 2
    err = capsys.readouterr().err
    [error] = [line for line in err.splitlines() if line.startswith("error")]
    assert f"{path}: no image column 'image', audio column 'audio'" in error
    assert "Traceback" not in err and sorted(p.name for p in base.iterdir()) == ["1"]


def test_removed_items_are_never_returned(base, items):
    model = ExportedModel(base / "1")
    top = model.recommend(USERS, k=3)["item_ids"][:, :3].ravel().astype(str)
    removed = sorted(set(top))
    version = catalog.remove(base, item_ids=removed).version_dir
    new = ExportedModel(version)
    returned = set(new.recommend(USERS, k=K)["item_ids"].ravel().astype(str))
    returned |= set(new.recommend(USERS)["item_ids"].ravel().astype(str))
    returned |= set(new.recommend_session([removed[:3]] * 2, k=K)["item_ids"].ravel().astype(str))
    returned |= set(new.call("query_text", text=np.array(["a film"]), k=np.int32(K))[
        "item_ids"].ravel().astype(str))
    assert not returned & set(removed)
    assert not new.call("embed_items", item_id=np.array(removed))["found"].any()


# --- bad rows: the same clear errors as training data, and no version written ---------------


@pytest.mark.parametrize(("rows", "message"), [
    (lambda f: pd.concat([f.iloc[[0]], f.iloc[[0]]]).assign(item_id="dup"),
     r"duplicate item_id 'dup' at new\.csv line 3"),
    (lambda f: f.iloc[[0]].assign(item_id="x1", colour="red"),
     r"unknown column\(s\) colour"),
    (lambda f: with_all_media(f).iloc[[0]].assign(item_id="x2", image="images/nope.png"),
     r"new\.csv line 2 \('x2'\): image file 'images/nope\.png' not found"),
    (lambda f: f.iloc[[1]], r"already in the catalogue: new\.csv line 2"),
    (lambda f: f.iloc[[0]].assign(item_id=""), r"empty item_id in 1 row\(s\): new\.csv line 2"),
    (lambda f: f.iloc[[0]].assign(**{c: "" for c in f.columns}).assign(item_id="x4"),
     r"1 new item\(s\) with no content in any column this model reads \(.*\): new\.csv "
     r"line 2 \('x4'\)"),
    (lambda f: with_all_media(f).iloc[[0]].assign(item_id="x5").drop(columns="audio"),
     r"new\.csv: no audio column 'audio', which this model embeds; `catalog add` embeds each "
     r"new item from its row alone, so every row would be served without its audio\. Add the "
     r"column\(s\) with each item's value \(an empty cell: the item has none\)"),
])
def test_bad_rows_are_data_errors_and_leave_the_versions_untouched(base, items, tiny_demo_dir,
                                                                   rows, message):
    path = write_items(rows(items), tiny_demo_dir)
    with pytest.raises(DataError, match=message):
        catalog.add(base, path)
    assert sorted(p.name for p in base.iterdir()) == ["1"]


def test_cli_catalog_add_reports_a_missing_image_once_as_an_error(base, items, tiny_demo_dir,
                                                                  capsys):
    """One missing poster is one problem: one error line naming the row, the item and the
    file, and no warning about the same file before it."""
    from tfmmrec import cli

    row = with_all_media(items).iloc[[0]].assign(item_id="x3", image="images/nope.png")
    path = write_items(row, tiny_demo_dir, "missing.csv")
    assert cli.main(["catalog", "add", "--model-base-path", str(base), "--items",
                     str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if line.startswith("warning")] == []
    [error] = [line for line in lines if line.startswith("error")]
    assert "missing.csv line 2 ('x3'): image file 'images/nope.png' not found" in error
    assert sorted(p.name for p in base.iterdir()) == ["1"]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_cli_catalog_add_refuses_a_batch_size_below_one(base, items, tiny_demo_dir, capsys,
                                                        value):
    """``--batch-size`` 0 or negative is one error line naming the option, the value and the
    allowed range, before the model is read; nothing is written."""
    from tfmmrec import cli

    path = write_items(items.iloc[[4]].assign(item_id="bs-new"), tiny_demo_dir, "bs.csv")
    assert cli.main(["catalog", "add", "--model-base-path", str(base), "--items", str(path),
                     "--batch-size", value]) == 2
    err = capsys.readouterr().err
    [error] = [line for line in err.splitlines() if line.startswith("error")]
    assert f"--batch-size (batch_size) {value}" in error and ">= 1" in error
    assert "Traceback" not in err
    with pytest.raises(ConfigError, match=r"--batch-size \(batch_size\) 0: .*>= 1"):
        catalog.update(base, path, batch_size=0)
    assert sorted(p.name for p in base.iterdir()) == ["1"]


def spy_on_decoding(monkeypatch) -> list[int]:
    """The number of rows of every ``ContentDecoder.decode`` call, in order."""
    sizes: list[int] = []
    decode = catalog.ContentDecoder.decode

    def spy(self, rows):
        sizes.append(len(rows))
        return decode(self, rows)

    monkeypatch.setattr(catalog.ContentDecoder, "decode", spy)
    return sizes


def test_catalog_add_decodes_and_embeds_batch_by_batch(exported, items, tiny_demo_dir,
                                                       tmp_path, monkeypatch):
    """A table larger than ``--batch-size`` is decoded a batch at a time (never more rows in
    one call), and its items embed exactly as when the whole table is one batch."""
    chosen = with_all_media(items).iloc[:7]
    path = write_items(chosen.assign(item_id=[f"b{i}" for i in range(7)]), tiny_demo_dir,
                       "batches.csv")
    sizes = spy_on_decoding(monkeypatch)
    small = catalog.add(private_copy(exported, tmp_path / "small"), path, batch_size=3)
    assert sizes == [3, 3, 1] and small.added == 7
    sizes.clear()
    whole = catalog.add(private_copy(exported, tmp_path / "whole"), path, batch_size=1000)
    assert sizes == [7]
    ids = [f"b{i}" for i in range(7)]
    np.testing.assert_allclose(ExportedModel(small.version_dir).item_embeddings(ids),
                               ExportedModel(whole.version_dir).item_embeddings(ids), atol=1e-6)


def test_a_bad_file_in_a_later_batch_fails_the_whole_table(base, items, tiny_demo_dir,
                                                           monkeypatch):
    """Batches decoded and embedded before a bad file are never published: the error lists
    every bad row of every batch in the table's order, and no version is written."""
    (tiny_demo_dir / "corrupt-batch.png").write_bytes(b"not an image")
    chosen = with_all_media(items).iloc[:7].assign(item_id=[f"c{i}" for i in range(7)])
    chosen.iloc[[4, 6], chosen.columns.get_loc("image")] = "corrupt-batch.png"
    sizes = spy_on_decoding(monkeypatch)
    embedded: list[int] = []
    embed_batch = catalog._embed_batch

    def spy(towers, content, with_text):
        embedded.append(len(content["item_id"]))
        return embed_batch(towers, content, with_text)

    monkeypatch.setattr(catalog, "_embed_batch", spy)
    with pytest.raises(DataError, match=r"2 media file\(s\) missing or unreadable: "
                                        r"corrupt\.csv line 6 \('c4'\): .*; "
                                        r"corrupt\.csv line 8 \('c6'\): "):
        catalog.add(base, write_items(chosen, tiny_demo_dir, "corrupt.csv"), batch_size=3)
    # The first batch was embedded before the second's bad file was met; the rest were only
    # decoded, for the error's full list.
    assert (sizes, embedded) == ([3, 3, 1], [3])
    assert sorted(p.name for p in base.iterdir()) == ["1"]


def write_noise_png(path: Path, width: int, height: int) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_catalog_add_decodes_under_the_exports_limits(tiny_config, tiny_trained, items,
                                                      tmp_path, monkeypatch):
    """An export made with ``export.limits.max_image_pixels=100`` decodes added posters under
    4 x 100 pixels: 20 x 20 is added, 21 x 20 refused from its header (never decoded)."""
    from tfmmrec.data import media

    version = export_tiny(tiny_config, tiny_trained, tmp_path / "store",
                          "export.limits.max_image_pixels=100")
    row = with_all_media(items).iloc[[0]].assign(audio="")
    write_noise_png(tmp_path / "fits.png", 20, 20)
    write_noise_png(tmp_path / "over.png", 21, 20)
    added = catalog.add(version.parent, write_items(row.assign(item_id="fits", image="fits.png"),
                                                    tmp_path))
    assert added.added == 1

    def refuse(*args, **kwargs):
        raise AssertionError("the refused poster was decoded")

    monkeypatch.setattr(media, "decode_image", refuse)
    with pytest.raises(DataError, match=r"new\.csv line 2 \('over'\): image too large — .*"
                                        r"over\.png declares 21 x 20 = 420 pixels, over the "
                                        r"decoding limit of 400"):
        catalog.add(version.parent, write_items(row.assign(item_id="over", image="over.png"),
                                                tmp_path))


def test_update_of_an_unknown_id_and_remove_of_unknown_ids_are_errors(base, items,
                                                                      tiny_demo_dir):
    with pytest.raises(DataError, match=r"not in the catalogue: new\.csv line 2 \('ghost'\)"):
        catalog.update(base, write_items(items.iloc[[0]].assign(item_id="ghost"),
                                         tiny_demo_dir))
    with pytest.raises(DataError, match=r"1 id\(s\) not in .*'ghost'"):
        catalog.remove(base, item_ids=["i0000", "ghost"])
    with pytest.raises(ExportError, match="empty catalogue"):
        catalog.remove(base, item_ids=list(items["item_id"]))
    # a table and ids together: one of them used to be dropped silently ("1 removed")
    with pytest.raises(DataError, match=r"either in a table \(--items FILE, items=\) or as "
                                        r"ids \(--ids, item_ids=\), not both"):
        catalog.remove(base, write_items(items.iloc[[0]], tiny_demo_dir),
                       item_ids=["i0001", "i0002"])
    assert sorted(p.name for p in base.iterdir()) == ["1"]


def test_remove_refuses_an_id_given_twice_as_add_and_update_do(base):
    with pytest.raises(DataError, match=r"id #3 repeats 'i0001' \(first at id #1\); give "
                                        r"each id once"):
        catalog.remove(base, item_ids=["i0001", "i0002", "i0001"])
    assert sorted(p.name for p in base.iterdir()) == ["1"]


def test_an_export_refuses_to_drop_the_catalogue_updates_the_newest_version_serves(
        base, items, tiny_config, tiny_trained, tiny_demo_dir, caplog):
    """A re-export becomes the newest version: it used to serve the run's catalogue and drop
    every added, updated and removed item without a word. The updates are recorded in
    ``tfmmrec.json`` (summed over versions) and the export is refused unless asked to
    replace them."""
    catalog.add(base, write_items(items.iloc[[3]].assign(item_id="brand-new"), tiny_demo_dir))
    catalog.remove(base, item_ids=["i0001", "i0002"])
    assert read_metadata(base / "3")["catalog_updates"] == {
        "exported_version": 1, "updates": 2, "added": 1, "removed": 2, "updated": 0}
    with pytest.raises(ExportError, match=r"3 serves 2 catalogue update\(s\) on top of "
                                          r"version 1: 1 added, 2 removed, 0 updated; .*"
                                          r"export.replace_catalog_updates=true"):
        export_tiny(tiny_config, tiny_trained, base.parent, f"export.model_name={base.name}")
    assert sorted(p.name for p in base.iterdir()) == [PUBLISHED_FILE, "1", "2", "3"]
    replacing = [f"export.base_dir={base.parent}", f"export.model_name={base.name}",
                 "export.replace_catalog_updates=true"]
    pipeline.check_export_destination(load_config(tiny_config, replacing))  # as the CLI does
    replaced = export_tiny(tiny_config, tiny_trained, base.parent, *replacing[1:])
    warned = [r for r in caplog.records if "export.replace_catalog_updates" in r.getMessage()]
    assert len(warned) == 1  # once, though checked before loading and again when writing
    assert replaced.name == "4" and "catalog_updates" not in read_metadata(replaced)
    assert "brand-new" not in set(ExportedModel(replaced).recommend(USERS, k=K)["item_ids"]
                                  .astype(str).ravel())


def test_a_damaged_metadata_file_or_an_incomplete_newest_version_is_one_line(
        base, items, tiny_demo_dir, tiny_config, tiny_trained):
    new = write_items(items.iloc[[3]].assign(item_id="brand-new"), tiny_demo_dir)
    shutil.copytree(base / "1", base / "2")
    (base / "2" / "saved_model.pb").unlink()
    with pytest.raises(ExportError, match=r"2 is incomplete \(no saved_model.pb\)"):
        catalog.add(base, new)
    shutil.rmtree(base / "2")
    (base / "1" / "assets.extra" / "tfmmrec.json").write_text('{"index": "scann", ')
    with pytest.raises(ExportError, match=r"tfmmrec.json is damaged \(.*\): export this "
                                          r"version again"):
        catalog.add(base, new)
    with pytest.raises(ExportError, match=r"tfmmrec.json is damaged"):
        ExportedModel(base / "1")
    with pytest.raises(ExportError, match=r"tfmmrec.json is damaged"):  # it may hold updates
        export_tiny(tiny_config, tiny_trained, base.parent, f"export.model_name={base.name}")


# --- request-time exclusion, sessions, embed_items --------------------------------------------


def test_exclusion_removes_exactly_the_given_items(base):
    model = ExportedModel(base / "1")
    full = model.recommend(USERS, k=K)["item_ids"].astype(str)
    exclude = [[*row[[0, 2, 5]], "not-an-item"] for row in full]
    got = model.recommend(USERS, k=K - 3, exclude=exclude)["item_ids"].astype(str)
    for row, drop, result in zip(full, exclude, got, strict=True):
        assert list(result) == [i for i in row if i not in drop][:K - 3]
    default = model.recommend(USERS, exclude=[r[:1] for r in exclude])["item_ids"].astype(str)
    np.testing.assert_array_equal(default, full[:, 1:6])


def test_exclusion_beyond_max_exclude_is_refused(base):

    model = ExportedModel(base / "1")
    with pytest.raises(ServingError, match="at most 10 items"):
        model.recommend(["u000"], k=5, exclude=[[f"i{n:04d}" for n in range(11)]])


def test_session_query_is_the_documented_blend(base):
    """normalise(w·u + (1−w)·normalise(mean of the session's item embeddings)), exact top-k of
    the items outside the session (``export.exclude_session_items``, on by default)."""
    model = ExportedModel(base / "1")
    meta = model.metadata
    w = meta["session_user_weight"]
    ids = model._loaded.item_ids.numpy().astype(str)
    table = model._loaded.item_table.numpy()
    sessions = [["i0003", "i0010", "i0042"], ["i0005"], ["unknown-item"]]
    users = ["u000", "", "u001"]
    got = model.recommend_session(sessions, users, k=K)
    user = model.call("embed_query", user_id=np.array(users))["embedding"]
    for row, (session, u) in enumerate(zip(sessions, user, strict=True)):
        known = [s for s in session if s in set(ids)]
        query = u
        if known:
            mean = model.item_embeddings(known).sum(0)
            mixed = w * u + (1 - w) * mean / np.linalg.norm(mean)
            query = mixed / np.linalg.norm(mixed)
        ranked = ids[np.argsort(-(table @ query), kind="stable")]
        expected = [i for i in ranked if i not in session][:K]
        np.testing.assert_array_equal(got["item_ids"][row].astype(str)[:5], expected[:5])
    # A session with nothing known is the user's own recommendation.
    np.testing.assert_array_equal(got["item_ids"][2], model.recommend(["u001"], k=K)["item_ids"][0])


def test_a_session_never_gets_its_own_items_back_unless_the_export_allows_it(
        base, tiny_config, tiny_trained, tmp_path):
    """The session's items were just seen: excluded like ``exclude_item_ids`` (also through a
    catalogue update, which rebuilds the module from the version's metadata), unless
    ``export.exclude_session_items: false`` (re-consumption)."""
    model = ExportedModel(base / "1")
    sessions = [list(model.recommend([user], k=3)["item_ids"][0].astype(str))
                for user in ("u000", "u001", "nobody")]
    updated = ExportedModel(catalog.remove(base, item_ids=["i0000"]).version_dir)
    for served in (model, updated):
        out = served.recommend_session(sessions, ["u000", "u001", "nobody"], k=K)
        for session, row in zip(sessions, out["item_ids"].astype(str), strict=True):
            assert not set(session) & set(row), (session, row)
    allowed = ExportedModel(export_tiny(tiny_config, tiny_trained, tmp_path / "store",
                                        "export.exclude_session_items=false"))
    out = allowed.recommend_session(sessions, ["u000", "u001", "nobody"], k=K)
    assert any(set(session) & set(row) for session, row
               in zip(sessions, out["item_ids"].astype(str), strict=True))


def test_three_clicks_personalise_an_anonymous_user(base):
    model = ExportedModel(base / "1")
    cold = model.recommend(["nobody"], k=10)["item_ids"][0]
    session = model.recommend_session([["i0003", "i0010", "i0042"]], ["nobody"], k=10)
    assert list(session["item_ids"][0]) != list(cold)


def test_embed_items_returns_the_served_embeddings(base):
    model = ExportedModel(base / "1")
    out = model.call("embed_items", item_id=np.array(["i0007", "missing", "i0000"]))
    table = model._loaded.item_table.numpy()
    np.testing.assert_array_equal(out["found"], [True, False, True])
    np.testing.assert_array_equal(out["embedding"][[0, 2]], table[[7, 0]])
    np.testing.assert_array_equal(out["embedding"][1], np.zeros(table.shape[1]))


def test_export_records_what_it_contains_and_holds_no_seen_items_by_default(exported):
    meta = read_metadata(exported)
    assert meta["exclude_seen"] is False and meta["max_seen"] == 0
    assert meta["contents"]["seen_items_per_user"] is False
    assert meta["contents"]["interactions"] is False
    # every registered modality is recorded, facets too (none configured: no columns)
    assert meta["item_columns"] == {"text": ["title", "description"], "image": "image",
                                    "audio": "audio", "facets": []}


# --- the CLI and crash safety ----------------------------------------------------------------


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "tfmmrec.cli", "-q", *args], env=env,
                          capture_output=True, text=True, timeout=600, **kwargs)


@pytest.mark.slow
def test_cli_catalog_add_and_remove(base, items, tiny_demo_dir):
    row = items.iloc[[4]].assign(item_id="cli-new")
    added = run_cli("catalog", "add", "--model-base-path", str(base), "--items",
                    str(write_items(row, tiny_demo_dir, "cli.csv")))
    assert added.returncode == 0, added.stderr
    assert "add: 1 added, 0 updated, 0 removed" in added.stdout
    removed = run_cli("catalog", "remove", "--model-base-path", str(base), "--ids", "cli-new")
    assert removed.returncode == 0, removed.stderr
    assert latest_version(base).name == "3"
    bad = run_cli("catalog", "add", "--model-base-path", str(base), "--items",
                  str(write_items(row.assign(colour="x"), tiny_demo_dir, "cli-bad.csv")))
    assert bad.returncode == 2 and "unknown column(s) colour" in bad.stderr
    assert "Traceback" not in bad.stderr


KILL_DURING_ADD = """
import sys
import tfmmrec
from tfmmrec import files
from tfmmrec.export import catalog

original = files.os.rename
def slow_rename(src, dst):  # stop just before the rename: the version is fully written
    print("WRITTEN", flush=True)
    import time; time.sleep(600)
    original(src, dst)
files.os.rename = slow_rename
catalog.add(sys.argv[1], sys.argv[2])
"""


@pytest.mark.slow
def test_kill_9_during_catalog_add_leaves_the_served_version_intact(base, items,
                                                                    tiny_demo_dir, tmp_path):
    before = ExportedModel(base / "1").recommend(USERS, k=K)["item_ids"]
    script = tmp_path / "add.py"
    script.write_text(textwrap.dedent(KILL_DURING_ADD))
    row = items.iloc[[6]].assign(item_id="killed")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, str(script), str(base),
                                str(write_items(row, tiny_demo_dir, "killed.csv"))],
                               env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        line = ""
        while "WRITTEN" not in line and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
        assert "WRITTEN" in line, "the update never reached its rename"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert latest_version(base).name == "1"
    assert [p.name for p in base.iterdir() if p.name.isdigit()] == ["1"]
    np.testing.assert_array_equal(ExportedModel(base / "1").recommend(USERS, k=K)["item_ids"],
                                  before)
    # The leftover hidden temp directory does not block the next update, which skips the
    # number the killed one had noted as published before its rename (never reusing one).
    assert (base / PUBLISHED_FILE).read_text() == "2\n"
    assert catalog.add(base, write_items(row, tiny_demo_dir, "killed.csv")).version_dir.name == "3"


def test_viewed_content_joins_the_session_and_empty_rows_are_ignored(base, items, tiny_demo_dir):
    model = ExportedModel(base / "1")
    row = with_all_media(items).iloc[0]
    text = f"{row['title']}. {row['description']}"
    image = (tiny_demo_dir / row["image"]).read_bytes()
    sessions, users = [["i0005"], ["i0005"]], ["u003", "u003"]
    plain = model.recommend_session(sessions, users, k=K)["item_ids"]
    viewed = model.recommend_session(sessions, users, k=K,
                                     viewed={"text": [text, ""], "image": [image, b""]})
    np.testing.assert_array_equal(viewed["item_ids"][1], plain[1])
    assert list(viewed["item_ids"][0]) != list(plain[0])
    # Content alone (no session items, no user) personalises an anonymous request.
    alone = model.recommend_session([[]], k=K, viewed={"text": [text]})["item_ids"][0]
    assert list(alone) != list(model.recommend(["nobody"], k=K)["item_ids"][0])


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "probe", "graph_reused"), [
    ("scann", None, True),          # a new searcher stored in ScaNN's variables
    ("partitioned", None, True),    # the item placed in a free slot; calibrated probe kept
    # "probe every chunk" (a probe clamped to the chunk count): k-means again, and the graph
    # is re-traced only if the chunk count (so the probe) changed, which depends on the data
    ("partitioned", 1000, None),
])
def test_every_index_kind_is_rebuilt_by_a_catalogue_update(kind, probe, graph_reused,
                                                           tiny_config, tiny_trained,
                                                           items, tiny_demo_dir, tmp_path):
    """The update rebuilds the export's own kind (through ``tfmmrec.export.index.build``) with
    its settings, and the added item is found through it. The graph is reused unless the
    index's graph constants change."""
    config = load_config(tiny_config, [f"export.base_dir={tmp_path}", "export.k=5",
                                       f"export.max_k={K}", "export.max_exclude=10",
                                       f"export.partitioned.partitions_to_probe={probe}"
                                       if probe else "export.partitioned.target_recall=0.99"])
    version = pipeline.export(config, model=tiny_trained.model,
                              workspace=tiny_trained.workspace, index=kind)
    model = ExportedModel(version)
    top = model.recommend(["u000"], k=1)["item_ids"][0, 0].decode()
    row = items[items["item_id"] == top].assign(item_id=f"new-{kind}")
    added = catalog.add(version.parent, write_items(row, tiny_demo_dir, f"{kind}.csv"))
    new = ExportedModel(added.version_dir)
    assert new.metadata["index"] == kind and new.metadata["num_items"] == len(items) + 1
    assert new.metadata["index_settings"] == model.metadata["index_settings"]
    assert f"new-{kind}".encode() in new.recommend(["u000"], k=3)["item_ids"][0]
    same = (added.version_dir / "saved_model.pb").read_bytes() == (
        version / "saved_model.pb").read_bytes()
    if graph_reused is not None:
        assert same == graph_reused
    if kind == "partitioned":  # placed into the chunks, or (clamped probe) clustered again
        placed = new.metadata["index_parameters"]["items_placed_since_kmeans"]
        assert placed == (0 if probe else 1)


# --- updates rewrite variables, not graphs ----------------------------------------------------


def checkpoint_values(version: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(version / "variables" / "variables"))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_dtype_map()}


def test_an_update_reuses_the_graph_and_rewrites_only_the_catalogue(base, items, tiny_demo_dir):
    """The next version is the previous graph byte for byte (nothing re-traced), the towers'
    variables as they were, a fingerprint TF computes from the new files, and it loads as a
    TF1 graph + session (TF Serving's loader) serving the new item."""
    import tensorflow as tf
    from tensorflow.core.protobuf import fingerprint_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    row = with_all_media(items).iloc[[3]].assign(item_id="graph-reused")
    version = catalog.add(base, write_items(row, tiny_demo_dir, "reuse.csv")).version_dir
    first = base / "1"
    assert (version / "saved_model.pb").read_bytes() == (first / "saved_model.pb").read_bytes()
    def fingerprint(raw: bytes):
        parsed = fingerprint_pb2.FingerprintDef.FromString(raw)
        parsed.ClearField("uuid")  # random per computation
        return parsed

    written = fingerprint((version / "fingerprint.pb").read_bytes())
    assert written == fingerprint(fingerprinting.CreateFingerprintDef(str(version)))
    assert written.checkpoint_hash != fingerprint(
        (first / "fingerprint.pb").read_bytes()).checkpoint_hash
    before, after = checkpoint_values(first), checkpoint_values(version)
    assert before.keys() == after.keys()
    towers = [key for key in before if key.startswith("towers/")]
    assert towers
    for key in towers:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert len(after["item_ids/.ATTRIBUTES/VARIABLE_VALUE"]) == len(items) + 1
    # The towers' shard is the previous version's file (a hard link); only the catalogue's
    # shard was written.
    shards = sorted(p.name for p in (version / "variables").iterdir())
    assert shards == ["variables.data-00000-of-00002", "variables.data-00001-of-00002",
                      "variables.index"]
    assert os.path.samefile(first / "variables" / MODEL_SHARD, version / "variables" / MODEL_SHARD)
    assert not os.path.samefile(first / "variables" / "variables.data-00001-of-00002",
                                version / "variables" / "variables.data-00001-of-00002")
    # TF1 graph + session, signatures run by tensor name.
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(version))
        signature = meta.signature_def["embed_items"]
        out = session.run({k: v.name for k, v in signature.outputs.items()},
                          {signature.inputs["item_id"].name: np.array([b"graph-reused"])})
    assert out["found"].tolist() == [True]
    np.testing.assert_allclose(out["embedding"],
                               ExportedModel(version).item_embeddings(["graph-reused"]))


def test_a_version_saved_before_the_checkpoint_split_still_updates(base, items, tiny_demo_dir):
    """A version whose checkpoint is one shard (as exports before the split wrote): the update
    reads the towers' tensors once, writes both shards, and the result serves as before."""
    import tensorflow as tf

    first = base / "1"
    values = checkpoint_values(first)
    for path in (first / "variables").iterdir():
        path.unlink()
    (first / MODEL_INDEX[0] / MODEL_INDEX[1]).unlink()
    tf.raw_ops.SaveV2(prefix=str(first / "variables" / "variables"), tensor_names=list(values),
                      shape_and_slices=[""] * len(values), tensors=list(values.values()))
    assert len(list((first / "variables").iterdir())) == 2
    row = with_all_media(items).iloc[[2]].assign(item_id="after-split")
    version = catalog.add(base, write_items(row, tiny_demo_dir, "split.csv")).version_dir
    after = checkpoint_values(version)
    for key, value in values.items():
        if key.startswith("towers/"):
            np.testing.assert_array_equal(after[key], value, err_msg=key)
    assert (version / "variables" / MODEL_SHARD).is_file()
    assert (version / MODEL_INDEX[0] / MODEL_INDEX[1]).is_file()
    # Every user's ranking is the previous one with the new item inserted somewhere.
    got = ExportedModel(version).recommend(USERS, k=K)["item_ids"].astype(str)
    want = ExportedModel(first).recommend(USERS, k=K)["item_ids"].astype(str)
    for new_row, old_row in zip(got, want, strict=True):
        kept = [i for i in new_row if i != "after-split"]
        assert kept == list(old_row[:len(kept)])
    found = ExportedModel(version).call("embed_items", item_id=np.array(["after-split"]))
    assert found["found"].tolist() == [True]


def test_a_catalogue_too_small_for_the_graph_is_saved_in_full(base, items):
    """Below ``max_k + max_exclude`` items the graph's clamped sizes change: the update traces
    and saves the module (and serves every remaining item)."""
    ids = items["item_id"].tolist()
    result = catalog.remove(base, item_ids=ids[:len(ids) - 12])
    version = result.version_dir
    assert (version / "saved_model.pb").read_bytes() != (base / "1" /
                                                           "saved_model.pb").read_bytes()
    model = ExportedModel(version)
    assert model.metadata["graph_constants"]["max_k"] == 12
    served = model.recommend(["u000"], k=12)["item_ids"][0].astype(str)
    assert sorted(served) == sorted(ids[-12:])


def test_a_catalogue_cut_below_k_plus_exclusions_pads_instead_of_returning_them(base, items):
    """The reviewer's case: 12 items left, 6 excluded, k=10: six items, then four places
    padded with "" and the lowest float32 (never an excluded id, never -inf); a 1-item
    catalogue whose item is excluded returns only padding."""
    from tfmmrec.export.module import MISSING_ITEM_ID, MISSING_SCORE

    ids = items["item_id"].tolist()
    twelve = ExportedModel(catalog.remove(base, item_ids=ids[:-12]).version_dir)
    drop = ids[-12:][::2]
    for out in (twelve.recommend(["u000"], k=10, exclude=[drop]),
                # the session's item is excluded anyway: the same six items remain
                twelve.recommend_session([[drop[0]]], ["u000"], k=10, exclude=[drop]),
                twelve.call("query_text", text=np.array(["a film"]), k=np.int32(10),
                            exclude_item_ids=np.array([drop]))):
        row, scores = out["item_ids"][0].astype(str), out["scores"][0]
        assert sorted(row[:6]) == sorted(set(ids[-12:]) - set(drop))
        assert list(row[6:]) == [MISSING_ITEM_ID] * 4
        assert np.isfinite(scores).all() and (scores[6:] == MISSING_SCORE).all()
        assert (scores[:6] > MISSING_SCORE).all()
    # Without exclusions a catalogue cut below max_k serves k <= its size: nothing padded.
    assert (twelve.recommend(["u000"], k=12)["item_ids"] != b"").all()
    one = ExportedModel(catalog.remove(base, item_ids=ids[-12:-1]).version_dir)
    out = one.recommend(["u000", "u001"], exclude=[[ids[-1]], []])
    assert out["item_ids"].astype(str).tolist() == [[MISSING_ITEM_ID], [ids[-1]]]
    assert out["scores"][0, 0] == MISSING_SCORE and np.isfinite(out["scores"]).all()


def test_a_version_traced_before_padding_is_re_traced_by_its_next_update(base, items):
    """A version whose graph returned excluded items at -inf (and had no embed_items batch
    limit) records no ``missing_result``: its next update saves the module in full, so the
    new version pads and refuses an oversized embed_items batch."""
    from tfmmrec.export.writer import METADATA_FILE
    from tfmmrec.files import write_json

    meta = read_metadata(base / "1")
    for key in ("missing_result", "max_batch_size"):
        meta["graph_constants"].pop(key)
    write_json(meta, base / "1" / "assets.extra" / METADATA_FILE)
    version = catalog.remove(base, item_ids=[items["item_id"].iloc[0]]).version_dir
    assert (version / "saved_model.pb").read_bytes() != (base / "1" /
                                                           "saved_model.pb").read_bytes()
    constants = read_metadata(version)["graph_constants"]
    assert constants["missing_result"][0] == "" and constants["max_batch_size"] == 1024
    with pytest.raises(ServingError, match="item_id: batch larger than"):
        ExportedModel(version).call("embed_items", item_id=np.array(["i0001"] * 1025))


def test_a_catalogue_update_that_loses_the_race_says_so_and_changes_nothing(
        base, items, tiny_demo_dir, monkeypatch):
    """Another writer publishes version 2 while this update writes it: one line saying so
    (not a raw ``Directory not empty``), the winner's version kept, no temp folder left."""
    from tfmmrec.export import writer

    write_extra = writer._write_extra

    def publish_first(version_dir, model_name, version, *args, **kwargs):
        write_extra(version_dir, model_name, version, *args, **kwargs)
        winner = Path(version_dir).parent / str(version)
        winner.mkdir()
        (winner / "the-other-writer").write_text("")

    monkeypatch.setattr(writer, "_write_extra", publish_first)
    row = with_all_media(items).iloc[[0]].assign(item_id="raced")
    with pytest.raises(ExportError) as info:
        catalog.add(base, write_items(row, tiny_demo_dir, "raced.csv"))
    message = str(info.value)
    assert message.startswith("another writer published version 2 (")
    assert "nothing was changed by this run: run it again (a catalogue update then builds " \
           "on version 2)" in message
    assert "\n" not in message and "Errno" not in message
    # the mark says 2, the winner's version (noted before this writer's rename failed)
    assert sorted(p.name for p in base.iterdir()) == [PUBLISHED_FILE, "1", "2"]
    assert [p.name for p in (base / "2").iterdir()] == ["the-other-writer"]


def test_an_update_that_another_update_of_the_same_version_overtook_fails_not_loses_it(
        base, items, tiny_demo_dir, monkeypatch):
    """Two updates both read version 1; the other publishes version 2 while this one embeds.
    This one must not publish version 3 without the other's change (a silently lost update):
    it fails saying so, and a rerun builds on version 2."""
    embed_table = catalog.embed_table

    def overtaken(*args, **kwargs):
        embedded = embed_table(*args, **kwargs)
        shutil.copytree(base / "1", base / "2")  # the other update's version
        return embedded

    monkeypatch.setattr(catalog, "embed_table", overtaken)
    row = with_all_media(items).iloc[[0]].assign(item_id="overtaken")
    with pytest.raises(ExportError, match=r"^another writer published version 2 \("):
        catalog.add(base, write_items(row, tiny_demo_dir, "overtaken.csv"))
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]
    monkeypatch.setattr(catalog, "embed_table", embed_table)
    rerun = catalog.add(base, write_items(row, tiny_demo_dir, "overtaken.csv"))
    assert rerun.version_dir == base / "3"


def test_an_update_after_a_rollback_takes_a_new_number(base, items, tiny_demo_dir):
    """Version 3 rolled back (its folder deleted, as TF Serving users roll back): the next
    update built on version 2 published a different catalogue as version 3 again, so a client
    pinned to version 3 silently got another catalogue."""
    catalog.remove(base, item_ids=["i0001"])
    catalog.remove(base, item_ids=["i0002"])
    shutil.rmtree(base / "3")
    row = with_all_media(items).iloc[[0]].assign(item_id="after-rollback")
    update = catalog.add(base, write_items(row, tiny_demo_dir, "after_rollback.csv"))
    assert update.version_dir == base / "4" and update.previous_version == base / "2"
    assert sorted(p.name for p in base.iterdir()) == [PUBLISHED_FILE, "1", "2", "4"]


# --- exports whose text backbone's kernels are graph constants -------------------------------


@pytest.fixture(scope="module")
def constants_exported(tiny_config, tiny_trained, tmp_path_factory) -> Path:
    """Version 1 of the tiny model with the fused text backbone's dense kernels as graph
    constants (``export.text_weights: constants``)."""
    return export_tiny(tiny_config, tiny_trained, tmp_path_factory.mktemp("catalog-constants"),
                       "export.text_backbone=fused", "export.text_weights=constants")


def qkv_kernels(version: Path, hidden: int) -> tuple[list[np.ndarray], list[str]]:
    """The fused Q/K/V kernels (``[hidden, 3·hidden]``) a SavedModel holds: as ``Const``
    values in its function library, and as variables in its checkpoint (their keys)."""
    import tensorflow as tf

    from tfmmrec.export.audit import load_meta_graph

    shape = [hidden, 3 * hidden]
    library = load_meta_graph(version).graph_def.library.function
    constants = [tf.make_ndarray(node.attr["value"].tensor) for function in library
                 for node in function.node_def if node.op == "Const"
                 and [d.size for d in node.attr["value"].tensor.tensor_shape.dim] == shape]
    variables = [key for key, value in tf.train.list_variables(str(version / "variables" /
                                                                   "variables"))
                 if list(value) == shape]
    return constants, variables


@pytest.mark.parametrize("graph", ["reused", "saved_in_full"])
def test_catalog_add_on_a_constant_kernel_export_embeds_like_a_plain_export(
        graph, exported, constants_exported, items, tiny_demo_dir, tiny_trained, tmp_path,
        monkeypatch):
    """``catalog add`` (the CLI's ``catalog.apply``) on an ``export.text_weights: constants``
    export, under the previous graph or (``saved_in_full``: the fallback when the graph does
    not fit) re-traced from the loaded towers: the new version loads, its new items (new text)
    embed as the same ``catalog add`` on the plain export (Keras backbone, variables) embeds
    them, ``query_text`` finds them by their text exactly as the plain version does, and the
    text kernels are still graph constants (not variables) in the new version and in the item
    embedder the next update loads."""
    import tensorflow as tf

    from tfmmrec.towers.text_inference import InferenceBert

    if graph == "saved_in_full":
        monkeypatch.setattr(catalog, "write_updated_version", lambda *args, **kwargs: None)
    new = with_all_media(items).iloc[:4].copy()
    new["item_id"] = [f"const-{i}" for i in range(len(new))]
    new["title"] = [f"{title} Returns" for title in new["title"]]
    table = write_items(new, tiny_demo_dir, f"constants-{graph}.csv")
    versions = {}
    for name, source in (("plain", exported), ("constants", constants_exported)):
        model_dir = tmp_path / name / "tfmmrec"
        shutil.copytree(source, model_dir / "1")
        result = catalog.apply(model_dir, "add", items=table)
        assert (result.added, result.version_dir.name) == (len(new), "2"), name
        versions[name] = result.version_dir
    reused = ((versions["constants"] / "saved_model.pb").read_bytes()
              == (constants_exported / "saved_model.pb").read_bytes())
    assert reused == (graph == "reused")
    plain, constants = ExportedModel(versions["plain"]), ExportedModel(versions["constants"])
    assert (constants.metadata["text_weights"], plain.metadata["text_weights"]) == (
        "constants", "variables")
    ids = list(new["item_id"])
    np.testing.assert_allclose(constants.item_embeddings(ids), plain.item_embeddings(ids),
                               atol=1e-5)
    texts = np.array([f"{t}. {d}" for t, d in zip(new["title"], new["description"],
                                                  strict=True)])
    served, reference = (model.call("query_text", text=texts, k=np.int32(K))
                         for model in (constants, plain))
    np.testing.assert_array_equal(served["item_ids"], reference["item_ids"])
    np.testing.assert_allclose(served["scores"], reference["scores"], atol=1e-5)
    # The answers are the exact top K of every served item (the new ones included) ...
    loaded = constants._loaded
    scores = loaded.towers.text_query(tf.constant(texts)).numpy() @ loaded.item_table.numpy().T
    top = np.argsort(-scores, axis=1)[:, :K]
    np.testing.assert_array_equal(served["item_ids"], loaded.item_ids.numpy()[top])
    np.testing.assert_allclose(served["scores"], np.take_along_axis(scores, top, 1), atol=1e-5)
    # ... and a new item's own text finds it.
    assert any(item.encode() in row for item, row in zip(ids, served["item_ids"], strict=True))
    # The trained backbone's fused Q/K/V kernels, held as the export held them: constants
    # (as many copies), no kernel variable.
    encoder = tiny_trained.workspace.encoders["text"]
    trained = [layer["qkv_kernel"] for layer in
               InferenceBert(encoder.backbone, "float32", "constants").layers]
    exported_kernels, _ = qkv_kernels(constants_exported, encoder.feature_dim)
    for saved in (versions["constants"], versions["constants"] / "assets.extra" / "item_embedder"):
        kernels, kernel_variables = qkv_kernels(saved, encoder.feature_dim)
        assert kernel_variables == [], saved
        assert len(kernels) == len(exported_kernels) >= len(trained), saved
        assert all(any(np.array_equal(held, kernel) for kernel in trained) for held in kernels)
        assert all(any(np.array_equal(held, kernel) for held in kernels) for kernel in trained)


def test_sorted_id_lookup_never_returns_a_colliding_unknown_id(monkeypatch):
    """Served ids are found by binary search of sorted 64-bit hashes, confirmed against the
    stored id; two served ids sharing a hash are both found. A toy hash (the id's length)
    makes collisions happen on purpose."""
    import tensorflow as tf

    from tfmmrec.export import module

    monkeypatch.setattr(module, "_id_keys",
                        lambda ids: tf.cast(tf.strings.length(ids), tf.int64))
    ids = np.array(["a", "bb", "ccc", "d"])  # "a" and "d" collide
    keys, rows = module._sorted_id_keys(ids)
    found = module._lookup_sorted(tf.constant(keys), tf.constant(rows), tf.constant(ids),
                                  tf.constant([["bb", "zz", "ccc"], ["d", "a", "dddd"],
                                               ["e", "", "a"]]))
    np.testing.assert_array_equal(found.numpy(), [[1, -1, 2], [3, 0, -1], [-1, -1, 0]])


def test_sorted_ids_derived_by_an_update_equal_a_fresh_sort():
    """A catalogue update derives the next version's sorted id hashes from the previous ones
    (rows renumbered, added ids inserted) instead of hashing and sorting every id again."""
    from tfmmrec.export.index import CatalogChange
    from tfmmrec.export.module import SortedIds, _sorted_id_keys

    ids = np.array([f"item-{i}".encode() for i in range(500)], object)
    stored = SortedIds(*_sorted_id_keys(ids), ids)
    np.testing.assert_array_equal(stored.get_indexer([b"item-7", b"nope", b"item-499"]),
                                  [7, -1, 499])
    keep = np.ones(500, bool)
    keep[[3, 100, 250]] = False
    added = np.array([b"new-a", b"new-b"], object)
    new_ids = np.concatenate([ids[keep], added])
    change = CatalogChange(np.concatenate([np.flatnonzero(keep), [-1, -1]]),
                           np.arange(497, 499), 500)
    keys, rows = stored.changed(change, new_ids)
    fresh_keys, fresh_rows = _sorted_id_keys(new_ids)
    np.testing.assert_array_equal(keys, fresh_keys)
    np.testing.assert_array_equal(rows, fresh_rows)
    # An add alone (every stored row kept in place).
    appended = np.concatenate([ids, added])
    keys, rows = stored.changed(CatalogChange(np.concatenate([np.arange(500), [-1, -1]]),
                                              np.arange(500, 502), 500), appended)
    fresh_keys, fresh_rows = _sorted_id_keys(appended)
    np.testing.assert_array_equal(keys, fresh_keys)
    np.testing.assert_array_equal(rows, fresh_rows)


# --- tiny catalogues: the scann kind at any size, and the k's a shrunk catalogue serves --------


def export_scann(tiny_config, tiny_trained, store: Path, *overrides: str) -> Path:
    """Version 1 of the tiny model (80 items) with the scann index."""
    return export_tiny(tiny_config, tiny_trained, store, *overrides, index="scann")


@pytest.fixture(scope="module")
def scann_exported(tiny_config, tiny_trained, tmp_path_factory) -> Path:
    return export_scann(tiny_config, tiny_trained, tmp_path_factory.mktemp("catalog-scann"))


def same_answers(model: ExportedModel, exact: ExportedModel, k: int) -> None:
    """Every retrieval signature of ``model`` returns ``exact``'s (brute force) ids."""
    for got, want in (
            (model.recommend(USERS, k=k), exact.recommend(USERS, k=k)),
            (model.recommend(USERS), exact.recommend(USERS)),
            (model.call("query_text", text=np.array(["a film", "music"])),
             exact.call("query_text", text=np.array(["a film", "music"]))),
            (model.recommend_session([["i0079"], []], ["", "u001"], k=k),
             exact.recommend_session([["i0079"], []], ["", "u001"], k=k))):
        np.testing.assert_array_equal(got["item_ids"], want["item_ids"])
        np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-4)


def test_a_scann_catalogue_shrunk_below_what_tree_and_ah_can_train_stays_exact(
        scann_exported, base, items, tiny_demo_dir, tmp_path):
    """8 items left (asymmetric hashing trains on >= 16): the update stores a brute-force
    ScaNN searcher (the same Scann ops) answering like the brute_force kind; growing back to
    18 items trains tree + AH again (every item reordered: still exact)."""
    model_dir = tmp_path / "scann" / "tfmmrec"
    shutil.copytree(scann_exported, model_dir / "1")
    assert read_metadata(model_dir / "1")["index_parameters"]["scoring"] == "tree_ah"
    ids = items["item_id"].tolist()
    gone = ids[:-8]
    small, exact = (catalog.remove(folder, item_ids=gone).version_dir
                    for folder in (model_dir, base))
    meta = read_metadata(small)
    assert meta["index"] == "scann" and meta["requires_scann_ops"] is True
    assert meta["index_parameters"] == {"scoring": "brute_force"}
    assert meta["num_items"] == 8
    # the export's recall queries travel with each version, so an update measures its index
    # with them (it dropped the figure); an exact kind keeps none
    queries = stored_recall_queries(model_dir / "1")
    assert queries is not None and queries.ndim == 2 and len(queries) > 0
    np.testing.assert_array_equal(stored_recall_queries(small), queries)
    assert meta["index_recall_at_10"] == meta["scann_recall_at_10"] == 1.0
    assert stored_recall_queries(exact) is None and "index_recall_at_10" not in \
        read_metadata(exact)
    same_answers(ExportedModel(small), ExportedModel(exact), k=8)
    assert sorted(ExportedModel(small).recommend(["u000"], k=8)["item_ids"][0].astype(str)) == \
        sorted(ids[-8:])
    back = write_items(items[items["item_id"].isin(gone[:10])], tiny_demo_dir, "scann-back.csv")
    grown, exact = (catalog.add(folder, back).version_dir for folder in (model_dir, base))
    meta = read_metadata(grown)
    assert meta["index_parameters"]["scoring"] == "tree_ah" and meta["num_items"] == 18
    assert 0.0 <= meta["index_recall_at_10"] <= 1.0
    same_answers(ExportedModel(grown), ExportedModel(exact), k=18)


@pytest.mark.slow
def test_a_scann_update_across_the_brute_force_size_reuses_the_graph(
        tiny_config, tiny_trained, items, tiny_demo_dir, tmp_path):
    """With k = max_k = 1 and no exclusions (request lists or a session's items) the index's k
    is 1 at any size, so the graph is reused: the searcher's state switches between tree + AH
    and brute force in variables."""
    first = export_scann(tiny_config, tiny_trained, tmp_path, "export.k=1", "export.max_k=1",
                         "export.max_exclude=0", "export.exclude_session_items=false")
    ids = items["item_id"].tolist()
    small = catalog.remove(first.parent, item_ids=ids[:-5]).version_dir
    grown = catalog.add(first.parent, write_items(items.iloc[:20], tiny_demo_dir,
                                                  "scann-regrow.csv")).version_dir
    graph = (first / "saved_model.pb").read_bytes()
    for version, scoring, served in ((small, "brute_force", ids[-5:]),
                                     (grown, "tree_ah", ids[:20] + ids[-5:])):
        assert (version / "saved_model.pb").read_bytes() == graph
        model = ExportedModel(version)
        assert model.metadata["index_parameters"]["scoring"] == scoring
        table = model.item_embeddings(served)
        queries = model.call("embed_query", user_id=USERS)["embedding"]
        want = np.asarray(served)[np.argmax(queries @ table.T, axis=1)]
        np.testing.assert_array_equal(model.recommend(USERS)["item_ids"][:, 0].astype(str), want)


def test_a_catalogue_shrunk_below_default_k_answers_requests_without_k(base, items,
                                                                       tiny_demo_dir):
    """3 items left of an export with k=5, max_k=20: the version advertises the k's its
    graph serves (3, 3), requests without k get 3 items, and growing back restores the
    configured k's (kept as configured_default_k / configured_max_k)."""
    from tfmmrec.export.writer import METADATA_FILE
    from tfmmrec.files import write_json

    ids = items["item_id"].tolist()
    small = catalog.remove(base, item_ids=ids[:-3]).version_dir
    meta = read_metadata(small)
    assert (meta["default_k"], meta["max_k"], meta["graph_constants"]["max_k"]) == (3, 3, 3)
    assert (meta["configured_default_k"], meta["configured_max_k"]) == (5, K)
    model = ExportedModel(small)
    found = model.call("query_text", text=np.array(["hello"]))["item_ids"]
    assert found.shape == (1, 3) and sorted(found[0].astype(str)) == sorted(ids[-3:])
    assert model.recommend(USERS)["item_ids"].shape == (len(USERS), 3)
    assert model.recommend_session([[ids[-1]]])["item_ids"].shape == (1, 3)
    grown = catalog.add(base, write_items(items.iloc[:30], tiny_demo_dir, "regrow.csv"))
    meta = read_metadata(grown.version_dir)
    assert (meta["default_k"], meta["max_k"], meta["num_items"]) == (5, K, 33)
    assert ExportedModel(grown.version_dir).recommend(USERS)["item_ids"].shape == (len(USERS), 5)
    # A version written before the effective k's were recorded advertises the configured
    # ones: the loader still caps a request's default k at its catalogue.
    old = read_metadata(small)
    for key in ("configured_default_k", "configured_max_k"):
        old.pop(key)
    write_json({**old, "default_k": 5, "max_k": K}, small / "assets.extra" / METADATA_FILE)
    found = ExportedModel(small).call("query_text", text=np.array(["hello"]))["item_ids"]
    assert found.shape == (1, 3)


def test_a_max_k_above_the_catalogue_is_recorded_as_the_graph_serves_it(
        tiny_config, tiny_trained, items, tmp_path):

    version = export_tiny(tiny_config, tiny_trained, tmp_path, "export.max_k=1000000000")
    meta = read_metadata(version)
    assert (meta["max_k"], meta["default_k"]) == (len(items), 5)
    assert (meta["configured_max_k"], meta["configured_default_k"]) == (10**9, 5)
    assert meta["graph_constants"]["max_k"] == len(items)
    model = ExportedModel(version)
    assert model.recommend(["u000"], k=meta["max_k"])["item_ids"].shape == (1, len(items))
    with pytest.raises(ServingError, match=f"k must be <= max_k={len(items)}"):
        model.recommend(["u000"], k=meta["max_k"] + 1)


# --- media that is no file, ids over the id limit ----------------------------------------------


def test_catalog_add_says_a_media_path_is_not_a_regular_file(base, items, tiny_demo_dir,
                                                            tmp_path):
    """/dev/zero, a pipe or a folder in a media column was "not found": it is said to be no
    regular file, by the rule query files follow (``check_request_file``)."""
    fifo = tmp_path / "clip.wav"
    os.mkfifo(fifo)
    rows = with_all_media(items).iloc[:3].assign(item_id=["zero", "pipe", "folder"])
    rows["image"] = ["/dev/zero", rows["image"].iloc[1], str(tmp_path)]
    rows["audio"] = [rows["audio"].iloc[0], str(fifo), rows["audio"].iloc[2]]
    with pytest.raises(DataError) as raised:
        catalog.add(base, write_items(rows, tiny_demo_dir, "not-files.csv"))
    message = str(raised.value)
    assert "not found" not in message
    assert ("not-files.csv line 2 ('zero'): /dev/zero is not a regular file (a device, pipe "
            "or folder): pass an image file; ") in message
    assert f"not-files.csv line 4 ('folder'): {tmp_path} is not a regular file" in message
    assert f"not-files.csv line 3 ('pipe'): {fifo} is not a regular file" in message
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    one = rows.iloc[[0]]  # the only value of its column
    with pytest.raises(DataError, match=r"line 2 \('zero'\): /dev/zero is not a regular file"):
        catalog.add(base, write_items(one, tiny_demo_dir, "zero.csv"))


def test_catalog_add_refuses_an_id_over_the_id_limit(base, items, tiny_demo_dir):
    """The export's graph refuses every request naming an id longer than
    export.limits.max_id_bytes, so such an item could never be excluded or looked up."""
    limit = read_metadata(base / "1")["limits"]["max_id_bytes"]
    rows = with_all_media(items).iloc[:2].assign(item_id=["é" * (limit // 2 + 1), "y" * limit])
    with pytest.raises(DataError) as raised:
        catalog.add(base, write_items(rows, tiny_demo_dir, "long-ids.csv"))
    assert str(raised.value).startswith(
        f"{tiny_demo_dir / 'long-ids.csv'}: 1 item id(s) longer than "
        f"export.limits.max_id_bytes={limit} bytes, which no request could name (the export's "
        f"graph refuses longer ids): long-ids.csv line 2 ('{'é' * 37}...")
    assert str(raised.value).endswith(f", {limit + 2} bytes). Shorten them; nothing was written")
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    added = catalog.add(base, write_items(rows.iloc[[1]], tiny_demo_dir, "at-limit.csv"))
    model = ExportedModel(added.version_dir)
    assert model.call("embed_items", item_id=np.array([b"y" * limit], object))["found"].all()


def test_an_export_refuses_catalogue_ids_over_the_id_limit(tiny_config, tiny_trained, tmp_path,
                                                           caplog):
    with pytest.raises(ExportError, match=(
            r"^80 item id\(s\) longer than export\.limits\.max_id_bytes=4 bytes, which no "
            r"request could name \(the export's graph refuses longer ids\): 'i0000' "
            r"\(5 bytes\), ")):
        export_tiny(tiny_config, tiny_trained, tmp_path, "export.limits.max_id_bytes=4")
    assert "training user id(s) longer" not in caplog.text  # 'u000' fits in 4 bytes
    with pytest.raises(ExportError):
        export_tiny(tiny_config, tiny_trained, tmp_path, "export.limits.max_id_bytes=3")
    # users are served from their training history; one no request can name is said
    assert "training user id(s) longer than export.limits.max_id_bytes=3 bytes (the longest: " \
           "4)" in caplog.text
    assert not (tmp_path / "tfmmrec").exists() or not any((tmp_path / "tfmmrec").iterdir())


def test_a_version_from_before_the_id_limit_loads_and_keeps_its_graph(base, items):
    """A version whose metadata records no max_id_bytes (exported before the limit) loads,
    and a catalogue update stores its variables under the same graph, without the limit."""
    from tfmmrec.export.writer import METADATA_FILE
    from tfmmrec.files import write_json
    from tfmmrec.serving.json_tensor import JsonValueLimit

    meta = read_metadata(base / "1")
    meta["limits"].pop("max_id_bytes")
    meta["graph_constants"].pop("max_id_bytes")
    write_json(meta, base / "1" / "assets.extra" / METADATA_FILE)
    old = ExportedModel(base / "1")
    assert old.recommend(["u000"], k=3)["item_ids"].shape == (1, 3)
    assert JsonValueLimit.of_export(old.metadata).max_batch_size == meta["limits"][
        "max_batch_size"]
    version = catalog.remove(base, item_ids=[items["item_id"].iloc[0]]).version_dir
    assert (version / "saved_model.pb").read_bytes() == (base / "1" /
                                                           "saved_model.pb").read_bytes()
    updated = read_metadata(version)
    assert "max_id_bytes" not in updated["limits"]
    assert "max_id_bytes" not in updated["graph_constants"]
    assert ExportedModel(version).recommend(["u000"], k=3)["item_ids"].shape == (1, 3)
