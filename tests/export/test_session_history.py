"""``recommend_session`` of a model whose query pools the user's history (``model.user_history``):
a session's items go through the history encoder, so (with ``session_user_weight = 1``) a session
is the same query as a user whose history is those items, and a known user's session extends
their stored history; with ``w < 1`` the mean of the session's served embeddings is blended in.

One tiny history model with no user-id embedding and no user features (its query is a function
of the history alone, so queries of different users can be compared exactly), recency-weighted
(half-life 2) and capped at the five most recent items, so merging a session into a stored
history also ages and drops items.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfmmrec import pipeline
from tfmmrec.config import load_config
from tfmmrec.export import catalog
from tfmmrec.export.audit import copy_on_read
from tfmmrec.export.loader import ExportedModel, padded
from tfmmrec.export.module import extend_history
from tfmmrec.towers.history import history_table

K = 20
HALF_LIFE, MAX_LENGTH = 2.0, 5


@pytest.fixture(scope="module")
def trained(tiny_config, tiny_workspace, tmp_path_factory):
    root = tmp_path_factory.mktemp("history")
    config = load_config(tiny_config, [
        "model.user_history=true", f"model.history_half_life={HALF_LIFE}",
        f"model.history_max_length={MAX_LENGTH}", "model.user_id_embedding=false",
        "model.user_features=false", f"train.output_dir={root / 'run'}",
        f"export.base_dir={root / 'models'}", f"export.max_k={K}", "export.max_exclude=10"])
    return pipeline.train(config, workspace=tiny_workspace, progress=False)


def export(trained, weight: float) -> Path:
    config = load_config(trained.workspace.config, [f"export.session_user_weight={weight}"])
    return pipeline.export(config, model=trained.model, workspace=trained.workspace,
                           index="brute_force")


@pytest.fixture(scope="module")
def exported(trained) -> Path:
    """``session_user_weight = 1``: the session query is the history query alone."""
    return export(trained, 1.0)


@pytest.fixture(scope="module")
def model(exported) -> ExportedModel:
    return ExportedModel(exported)


@pytest.fixture(scope="module")
def histories(trained) -> dict[str, list[str]]:
    """Each user's stored history as training built it (item ids, oldest first)."""
    ws = trained.workspace
    splits, items, _ = history_table(ws.split.train, ws.user_ids, MAX_LENGTH, HALF_LIFE)
    ids = ws.dataset.catalog.item_ids.astype(str)
    return {str(user): list(ids[items[splits[row + 1]:splits[row + 2]]])
            for row, user in enumerate(ws.user_ids)}


def session_queries(model: ExportedModel, users, sessions) -> np.ndarray:
    towers = model._loaded.towers
    return towers.session_query(tf.constant(users), tf.constant(padded(sessions)))[
        "query"].numpy()


def user_queries(model: ExportedModel, users) -> np.ndarray:
    return model.call("embed_query", user_id=np.asarray(users))["embedding"]


def test_a_session_is_the_query_of_a_user_whose_history_is_its_items(model, histories):
    users = [u for u, h in histories.items() if len(h) >= 3][:4]
    sessions = [histories[u] for u in users]
    np.testing.assert_allclose(session_queries(model, [""] * len(users), sessions),
                               user_queries(model, users), atol=1e-6)
    # The signature: the same ranking and scores as the user's own recommendation without
    # the session's items (``export.exclude_session_items``).
    got = model.recommend_session(sessions, k=K)
    want = model.recommend(users, k=K, exclude=sessions)
    np.testing.assert_array_equal(got["item_ids"], want["item_ids"])
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)


def test_a_known_users_session_extends_their_stored_history(model, histories):
    user = next(u for u, h in histories.items() if len(h) == MAX_LENGTH)
    clicks = [i for i in ("i0003", "i0010", "i0042") if i not in histories[user]][:2]
    extended = session_queries(model, [user], [clicks])
    # Same as an anonymous session of the whole longer history (the oldest items age out).
    anonymous = session_queries(model, [""], [histories[user] + clicks])
    np.testing.assert_allclose(extended, anonymous, atol=1e-6)
    np.testing.assert_allclose(session_queries(model, [""], [histories[user][2:] + clicks]),
                               anonymous, atol=1e-6)
    assert np.abs(extended - user_queries(model, [user])).max() > 1e-3
    # An empty session is the user's own query, exactly.
    np.testing.assert_array_equal(session_queries(model, [user], [[]]),
                                  user_queries(model, [user]))


def test_unknown_ids_and_padding_are_ignored(model, histories):
    user = next(u for u, h in histories.items() if len(h) >= 3)
    session = histories[user][-3:]
    np.testing.assert_allclose(
        session_queries(model, ["", ""], [[*session, "not-an-item"], ["nope", *session]]),
        session_queries(model, ["", ""], [session, session]), atol=1e-6)
    out = model._loaded.towers.session_query(tf.constant([""]),
                                             tf.constant([["nope", session[0], ""]]))
    np.testing.assert_array_equal(out["in_history"].numpy(), [[False, True, False]])


def test_the_served_mean_is_blended_with_the_history_query(trained, tmp_path, tiny_demo_dir,
                                                           histories):
    """``w < 1``: ``normalise(w · h + (1 − w) · s)``; an item added after training (no history
    row) counts in ``s`` only."""
    import pandas as pd

    base = tmp_path / "models" / "tfmmrec"
    shutil.copytree(export(trained, 0.5), base / "1")
    items = pd.read_csv(tiny_demo_dir / "items.csv", dtype=str, keep_default_na=False)
    items.head(1).assign(item_id="brand-new").to_csv(tiny_demo_dir / "history-new.csv",
                                                     index=False)
    try:
        catalog.add(base, tiny_demo_dir / "history-new.csv")
    finally:
        (tiny_demo_dir / "history-new.csv").unlink()
    model = ExportedModel(base / "2")
    user = next(u for u, h in histories.items() if len(h) >= 3)
    clicks = [histories[user][-1], "brand-new"]
    out = model._loaded.towers.session_query(tf.constant([user]), tf.constant([clicks]))
    np.testing.assert_array_equal(out["in_history"].numpy(), [[True, False]])
    h = out["query"].numpy()[0]
    np.testing.assert_allclose(h, session_queries(model, [user], [clicks[:1]])[0], atol=1e-6)
    mean = model.item_embeddings(clicks).sum(0)
    expected = 0.5 * h + 0.5 * mean / np.linalg.norm(mean)
    expected /= np.linalg.norm(expected)
    got = model.recommend_session([clicks], [user], k=K)
    ids = model._loaded.item_ids.numpy().astype(str)
    table = model._loaded.item_table.numpy()
    rows = [list(ids).index(i) for i in got["item_ids"][0].astype(str)]
    np.testing.assert_allclose(got["scores"][0], table[rows] @ expected, atol=1e-5)
    ranked = ids[np.argsort(-(table @ expected), kind="stable")]
    assert list(got["item_ids"][0].astype(str)) == [i for i in ranked if i not in clicks][:K]


def test_extend_history_weighs_like_the_training_table():
    """Appending s items ages the stored ones by s and keeps the most recent MAX_LENGTH."""
    stored = tf.ragged.constant([[1, 2, 3], []], tf.int64)
    weights = tf.ragged.constant([[0.5 ** (2 / HALF_LIFE), 0.5 ** (1 / HALF_LIFE), 1.0], []])
    session = tf.ragged.constant([[7, 8, 9], [4]], tf.int64)
    items, got = extend_history(stored, weights, session, half_life=HALF_LIFE,
                                max_length=MAX_LENGTH)
    assert items.to_list() == [[2, 3, 7, 8, 9], [4]]
    np.testing.assert_allclose(got.to_list()[0], 0.5 ** (np.arange(4, -1, -1) / HALF_LIFE),
                               rtol=1e-6)
    assert got.to_list()[1] == [1.0]
    items, got = extend_history(stored, weights, session)  # no cap, equal weights
    assert items.to_list() == [[1, 2, 3, 7, 8, 9], [4]]
    assert got.to_list()[1] == [1.0]


def test_history_sessions_keep_the_user_id_and_feature_parts(tiny_config, tiny_workspace,
                                                             tmp_path):
    """With the user-id embedding and user features too (the ML-100K default query tower), an
    empty session is the user's own query and a session moves it; the anonymous user's id and
    features are the cold-start ones."""
    config = load_config(tiny_config, [
        "model.user_history=true", f"train.output_dir={tmp_path / 'run'}",
        f"export.base_dir={tmp_path / 'models'}", "export.session_user_weight=1.0"])
    trained = pipeline.train(config, workspace=tiny_workspace, progress=False)
    assert trained.model.query_tower.id_embedding is not None
    assert trained.model.query_tower.categorical or trained.model.query_tower.numeric is not None
    model = ExportedModel(pipeline.export(config, model=trained.model,
                                          workspace=trained.workspace, index="brute_force"))
    users = ["u000", "u001", "nobody"]
    np.testing.assert_array_equal(session_queries(model, users, [[], [], []]),
                                  user_queries(model, users))
    moved = session_queries(model, users, [["i0003", "i0010"]] * 3)
    assert np.abs(moved - user_queries(model, users)).max(axis=1).min() > 1e-3
    # The served signature is that query (w = 1): same ranking as scoring the table with it.
    got = model.recommend_session([["i0003", "i0010"]], ["u000"], k=K)
    ids = model._loaded.item_ids.numpy().astype(str)
    table = model._loaded.item_table.numpy()
    ranked = ids[np.argsort(-(table @ moved[0]), kind="stable")]
    expected = [i for i in ranked if i not in ("i0003", "i0010")][:K]
    np.testing.assert_array_equal(got["item_ids"][0].astype(str), expected)


def test_no_served_variable_is_read_both_by_rows_and_densely(exported):
    """Session and history tables are gathered per request; the index searches read densely."""
    assert copy_on_read(exported) == {}
