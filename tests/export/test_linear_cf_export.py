"""An exported model with the closed-form CF part (``model.linear_cf``): one index over the
``[learned, CF]`` embeddings serves exactly what the in-memory model ranks."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import derive_config
from tfmmrec import pipeline
from tfmmrec.export.audit import copy_on_read
from tfmmrec.export.loader import ExportedModel


# kernel-ease runs only with -m slow (the default suite's time budget): kernel-ease+ials exports the
# same kernel content map and EASE block (plus the iALS block) through every test here.
# Slow: ("ridge", "ease") and ("kernel", "ease") (a training and an export each, ~80 s); the
# default suite exports the ridge map through ("ridge", "auto"), the kernel map and the EASE
# block through ("kernel", "ease+ials").
@pytest.fixture(scope="module", params=[pytest.param(("ridge", "ease"), marks=pytest.mark.slow),
                                        pytest.param(("kernel", "ease"), marks=pytest.mark.slow),
                                        ("kernel", "ease+ials"), ("ridge", "auto")],
                ids="-".join)
def cf_export(request, tiny_config, tiny_workspace, tmp_path_factory):
    """``ease+ials``: the iALS block's exact fold-in (a batched Cholesky per user) runs in the
    exported query signature. ``auto``: the kind chosen on validation is exported (and restored
    from a run whose config still says ``auto``)."""
    content, blocks = request.param
    root = tmp_path_factory.mktemp("linear-cf")
    config = derive_config(tiny_config, root, "train.epochs=2", "train.early_stopping=true",
                           "model.user_history=true", f"model.linear_cf={blocks}",
                           "model.linear_cf_rank=6", "export.index=brute_force",
                           f"model.linear_cf_content={content}")
    result = pipeline.train(config, workspace=tiny_workspace, progress=False)
    result.model.query_tower.linear_cf.set_weight(2.0)  # a CF part that counts in the ranking
    version = pipeline.export(config, model=result.model, workspace=result.workspace)
    return result, ExportedModel(version)


def test_exported_recommendations_equal_the_in_memory_ranking(cf_export):
    result, loaded = cf_export
    ws = result.workspace
    users = [str(u) for u in ws.user_ids[:8]]
    queries = pipeline.embed_users(result.model, users)
    items = pipeline.embed_items(result.model, ws.dataset.num_items)
    dim = ws.config.model.embedding_dim + 6 * len(ws.config.model.linear_cf.split("+"))
    assert queries.shape[1] == items.shape[1] == dim
    scores = queries @ items.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    answer = loaded.recommend(users, k=5)
    np.testing.assert_array_equal(answer["item_ids"].astype(str),
                                  ws.dataset.catalog.item_ids[top].astype(str))
    np.testing.assert_allclose(answer["scores"], np.take_along_axis(scores, top, 1), atol=1e-4)
    served = loaded.item_embeddings(ws.dataset.catalog.item_ids[:4])
    np.testing.assert_allclose(served, items[:4], atol=1e-5)


def test_content_queries_and_sessions_run_on_the_wider_embeddings(cf_export):
    result, loaded = cf_export
    ws = result.workspace
    text = loaded.call("query_text", text=np.array([b"a film about space"]), k=np.int32(3))
    features = ws.encoders["text"](tf.constant(["a film about space"]))
    query = result.model.item_tower.embed_single("text", features).numpy()
    items = pipeline.embed_items(result.model, ws.dataset.num_items)
    expected = ws.dataset.catalog.item_ids[np.argsort(-(query @ items.T)[0])[:3]]
    np.testing.assert_array_equal(text["item_ids"][0].astype(str), expected.astype(str))
    session = loaded.recommend_session([list(ws.dataset.catalog.item_ids[:2])], k=3)
    assert session["item_ids"].shape == (1, 3)


def test_a_restored_run_rebuilds_the_cf_part_exactly(cf_export):
    """The checkpoint holds the content map (ridge or kernel anchors) with catalogue shapes:
    ``restore`` rebuilds it with every value matched, so cold items embed identically."""
    import tfmmrec

    result, _ = cf_export
    model, ws = tfmmrec.restore(result.output_dir, workspace=result.workspace)
    n = ws.dataset.num_items
    np.testing.assert_allclose(pipeline.embed_items(model, n),
                               pipeline.embed_items(result.model, n), atol=1e-5)
    restored, trained = model.item_tower.linear_cf, result.model.item_tower.linear_cf
    assert restored.kernel == trained.kernel == (ws.config.model.linear_cf_content == "kernel")
    assert restored.foldin_columns == trained.foldin_columns == (
        6 if "ials" in ws.config.model.linear_cf else 0)
    for mine, theirs in zip(restored.weights, trained.weights, strict=True):
        if "score_weight" not in mine.name:  # the fixture re-set the in-memory served weight
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.name)


def test_no_variable_of_the_cf_export_is_read_both_by_rows_and_densely(cf_export):
    """The CF blocks' item tables and the user's history rows are gathered per request."""
    assert copy_on_read(cf_export[1].path) == {}
