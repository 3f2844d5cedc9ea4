"""An item re-embedded by a catalogue update equals its embedding at export, with the real
pretrained encoders (MiniLM-L6 text, EfficientNet-Lite0 posters) on MovieLens-100K items.

The export embeds the catalogue from the training feature cache (``encode_catalog``: texts
batched by length, trimmed per batch, features stored in the cache file); ``catalog add`` /
``update`` decode a new items table (``catalog.decode_content``) and run the version's
``embed_item_content`` (the same encoders and item tower in one graph, other batches). Both must
give the same vector, so an item added later ranks as it would have at export.

An item re-added under a *new* id is a cold item of a hybrid model: it has no trained id row,
so it gets the content-only embedding (the cold-start embedding training produces), not the
warm item's. That gap is the id embedding, by design; it is asserted here too so it is not
mistaken for an encoding difference.

Six items keep it to seconds once the encoders are loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tests.conftest import shared_path
from tfmmrec.config import DataConfig, ImageTowerConfig, TextTowerConfig
from tfmmrec.data.dataset import load_dataset
from tfmmrec.export.catalog import embed_table
from tfmmrec.export.module import ServingTowers
from tfmmrec.towers.cache import encode_catalog
from tfmmrec.towers.encoders import build_encoder
from tfmmrec.towers.item import ItemContentTable, ItemTower
from tfmmrec.towers.query import QueryTower

pytestmark = pytest.mark.needs_shared

TEXT_COLUMNS = ["title", "year", "genres", "description"]
IMAGE_SIZE = 224
# Float rounding of the same ops over different batch shapes (the text batch is trimmed to its
# longest sequence, so the attention matmuls differ in shape); measured ≤ 2.1e-7.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """Six ML-100K films (short and long texts, one without a poster) as a dataset folder."""
    source = shared_path("data", "ml100k")
    items = pd.read_csv(source / "items.csv", dtype=str, keep_default_na=False)
    chosen = pd.concat([
        items[items["poster"] == ""].head(1),
        items[items["poster"] != ""].sort_values("description", key=lambda s: s.str.len())
        .iloc[[0, 1, 400, 800, -1]],
    ])
    chosen = chosen.assign(poster=[str(source / p) if p else "" for p in chosen["poster"]])
    root = tmp_path_factory.mktemp("ml100k-six")
    chosen.to_csv(root / "items.csv", index=False)
    pd.DataFrame({"user_id": ["u1"] * len(chosen), "item_id": chosen["item_id"]}).to_csv(
        root / "interactions.csv", index=False)
    return root


@pytest.fixture(scope="module")
def exported(dataset_dir, tmp_path_factory):
    """``(towers, export embeddings, content-only embeddings, dataset)``: the training path."""
    text = TextTowerConfig(preset=str(shared_path("weights", "minilm-l6-h384-uncased")),
                           sequence_length=128)
    image = ImageTowerConfig(backbone="hub", image_size=IMAGE_SIZE,
                             handle=str(shared_path("weights", "efficientnet-lite0")))
    dataset = load_dataset(DataConfig(path=str(dataset_dir), text_columns=TEXT_COLUMNS,
                                      image_column="poster"))
    catalog = dataset.catalog
    encoders = {m: build_encoder(m, c, list(catalog.texts))
                for m, c in (("text", text), ("image", image))}
    cache = tmp_path_factory.mktemp("cache")
    contents = {}
    for modality, encoder in encoders.items():
        # Batches of 2 (sorted by text length): other batch shapes than the update's one batch.
        encode_catalog(catalog, encoder, cache, batch_size=2, image_size=IMAGE_SIZE,
                       progress=False)
        # What an export reads: the features as stored in the cache file.
        contents[modality], stats = encode_catalog(catalog, encoder, cache, batch_size=2,
                                                   image_size=IMAGE_SIZE, progress=False)
        assert stats.computed == 0
    assert not contents["image"].mask.all() and contents["image"].mask.sum() == 5
    num_items = len(catalog)
    tower = ItemTower(("text", "image"), 32, num_items=num_items, name="item_tower")
    table = ItemContentTable({m: c.values for m, c in contents.items()},
                             {m: c.mask for m, c in contents.items()})
    index = tf.range(num_items)
    tower(table(index))
    # A trained hybrid model's id rows are not zero: random rows make the id path visible.
    tower.id_embedding.embeddings.assign(tf.random.stateless_normal(
        [num_items, 32], seed=[1, 2], stddev=0.2))
    warm = tower(table(index), training=False).numpy()
    content_only = {k: v for k, v in table(index).items() if k != "item_index"}
    cold = tower(content_only, training=False).numpy()
    towers = ServingTowers(QueryTower(["u1"], 32), tower, encoders,
                           training_item_ids=catalog.item_ids, training_item_embeddings=warm,
                           settings={"image_size": IMAGE_SIZE, "sample_rate": 16000,
                                     "max_seconds": 1.0})
    return towers, warm, cold, dataset


def reembed(towers, dataset, ids, folder: Path, operation: str) -> np.ndarray:
    """``catalog update``/``add``'s embedding of the dataset's items under ``ids``."""
    frame = dataset.catalog.frame.assign(item_id=ids)
    path = folder / "items.csv"
    frame.to_csv(path, index=False)
    metadata = {"item_columns": {"text": TEXT_COLUMNS, "image": "poster", "audio": None},
                "modalities": ["text", "image"], "image_size": IMAGE_SIZE,
                "sample_rate": 16000, "max_seconds": 1.0}
    known = {str(i): row for row, i in enumerate(dataset.catalog.item_ids)}
    table = embed_table(towers, path, metadata, known, operation)
    embedded_ids, embedded = table.ids, table.embeddings
    assert embedded_ids.tolist() == list(ids)
    return embedded


def test_updated_items_embed_exactly_as_at_export(exported, tmp_path):
    towers, warm, _, dataset = exported
    ids = dataset.catalog.item_ids.astype(str)
    embedded = reembed(towers, dataset, ids, tmp_path, "update")
    np.testing.assert_allclose(embedded, warm, rtol=0, atol=TOLERANCE)


def test_items_added_under_new_ids_embed_as_cold_items(exported, tmp_path):
    towers, warm, cold, dataset = exported
    ids = ["new-" + str(i) for i in dataset.catalog.item_ids]
    embedded = reembed(towers, dataset, ids, tmp_path, "add")
    np.testing.assert_allclose(embedded, cold, rtol=0, atol=TOLERANCE)
    # The warm embedding differs by the id row a new id does not have.
    assert np.abs(embedded - warm).max() > 100 * TOLERANCE
