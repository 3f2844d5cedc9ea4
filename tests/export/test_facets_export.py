"""An exported model with a facets tower (``data.facet_columns``): the facets feed the item
tower and the CF part's content map, in the export and in items added later."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tests.conftest import derive_config
from tfmmrec import pipeline
from tfmmrec.export import catalog
from tfmmrec.export.loader import ExportedModel

FACETS = ("data.facet_columns=[title]", "facets.hidden_dim=16", "facets.num_layers=1",
          "facets.num_heads=2", "facets.intermediate_dim=32", "facets.sequence_length=8")


@pytest.fixture(scope="module")
def facets_export(tiny_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("facets")
    config = derive_config(tiny_config, root, *FACETS, "train.early_stopping=true",
                           "model.user_history=true", "model.linear_cf=ease",
                           "model.linear_cf_rank=6", "model.linear_cf_content=kernel",
                           "export.index=brute_force", "export.max_k=20")
    ws = pipeline.prepare(config, progress=False)
    result = pipeline.train(config, workspace=ws, progress=False)
    result.model.query_tower.linear_cf.set_weight(2.0)  # a CF part that counts in the ranking
    return result, pipeline.export(config, model=result.model, workspace=ws)


def test_facets_enter_the_model_and_the_export_ranks_as_in_memory(facets_export):
    result, version = facets_export
    ws = result.workspace
    assert ws.modalities == ("text", "image", "audio", "facets")
    assert result.model.item_tower.linear_cf.modalities == ("text", "image", "audio", "facets")
    loaded = ExportedModel(version)
    users = [str(u) for u in ws.user_ids[:6]]
    scores = pipeline.embed_users(result.model, users) @ pipeline.embed_items(
        result.model, ws.dataset.num_items).T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(loaded.recommend(users, k=5)["item_ids"].astype(str),
                                  ws.dataset.catalog.item_ids[top].astype(str))
    title = str(ws.dataset.catalog.values("facets")[0])
    answer = loaded.call("query_facets", facets=np.array([title.encode()]), k=np.int32(3))
    assert answer["item_ids"].shape == (1, 3)


def test_items_added_later_get_their_facets_through_the_item_tower(facets_export,
                                                                   tiny_demo_dir, tmp_path):
    """Removed, then re-added from the items table: the learned part as at export, and the CF
    part the content map's prediction from the items' features, facets included — computed
    in the export's graph as in memory (a re-added item has no training column any more)."""
    result, version = facets_export
    model = result.model
    base = tmp_path / "models" / "m"
    shutil.copytree(version, base / "1")
    items = pd.read_csv(tiny_demo_dir / "items.csv", dtype=str, keep_default_na=False)
    chosen = items.iloc[:4]
    before = ExportedModel(base / "1").item_embeddings(chosen["item_id"])
    catalog.remove(base, item_ids=list(chosen["item_id"]))
    path = tiny_demo_dir / "facets-readd.csv"
    chosen.to_csv(path, index=False)
    added = catalog.add(base, path)
    served = ExportedModel(added.version_dir).item_embeddings(chosen["item_id"])
    dim = result.workspace.config.model.embedding_dim
    np.testing.assert_allclose(served[:, :dim], before[:, :dim], atol=1e-5)
    index = result.workspace.dataset.catalog.index_of(list(chosen["item_id"]))
    content = model.content_table(tf.constant(index))
    content = {k: v for k, v in content.items() if k != "item_index"}
    assert "facets" in content
    expected = model.item_tower.linear_cf.item(content).numpy()
    np.testing.assert_allclose(served[:, dim:], expected, atol=1e-5)
