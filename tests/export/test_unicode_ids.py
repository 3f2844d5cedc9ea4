"""Ids outside ASCII through an export that bakes the users' seen items (``exclude_seen``): its
training-position map read the string tensor's bytes as ASCII, and the export failed with a raw
UnicodeDecodeError for an id such as ``café``."""

from __future__ import annotations

import pandas as pd

import tfmmrec
from tests.conftest import TINY_TOWERS
from tfmmrec import pipeline
from tfmmrec.export.loader import ExportedModel
from tfmmrec.export.module import utf8_texts

ITEMS = ["café", "日本", "i2", "i3", "i4", "i5"]
SEEN = {"ü1": ["café", "i2", "i3"], "u2": ["日本", "i2"], "u3": ["i4", "café"]}


def test_an_export_baking_seen_items_serves_unicode_item_ids(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"item_id": ITEMS, "title": [f"film {i}" for i in range(len(ITEMS))]}).to_csv(
        data / "items.csv", index=False)
    pd.DataFrame([(u, i) for u, items in SEEN.items() for i in items],
                 columns=["user_id", "item_id"]).to_csv(data / "interactions.csv", index=False)
    config = tfmmrec.load_config(None, [
        *TINY_TOWERS, f"data.path={data}", "data.split=none", "train.epochs=1",
        "train.batch_size=4", f"train.output_dir={tmp_path / 'run'}",
        f"train.cache_dir={tmp_path / 'cache'}", f"export.base_dir={tmp_path / 'models'}",
        "export.exclude_seen=true", "export.index=brute_force", "export.max_k=3", "export.k=3"])
    result = pipeline.train(config, progress=False)
    exported = ExportedModel(pipeline.export(config, model=result.model,
                                             workspace=result.workspace))
    for user, seen in SEEN.items():
        returned = utf8_texts(exported.recommend([user], k=3)["item_ids"][0])
        assert len(returned) == 3 and set(returned) <= set(ITEMS) - set(seen), user


def test_utf8_texts_decodes_bytes_and_keeps_trailing_nuls():
    assert utf8_texts([b"caf\xc3\xa9", "日本", b"i\x00"]) == ["café", "日本", "i\x00"]
