"""Ranking and multitask models: every task trains (finite, decreasing loss), the loss weights
switch tasks off, DCN-v2 cross layers are used, and the listwise loss matches its definition."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

import tfmmrec
from tfmmrec import pipeline
from tfmmrec.errors import ConfigError, DataError
from tfmmrec.evaluation.ranking import evaluate_ranking_head, evaluate_two_stage
from tfmmrec.models.ranking import (
    ListwiseSoftmaxLoss,
    MultitaskModel,
    RankingHead,
    list_pairs,
    sample_lists,
)
from tfmmrec.models.retrieval import RetrievalModel

TINY = ["data.demo.num_items=40", "data.demo.num_users=20", "data.demo.interactions_per_user=10",
        "train.verbose=0", "train.batch_size=32", "text.hidden_dim=16", "text.num_heads=2",
        "text.num_layers=1", "text.intermediate_dim=32", "ranking.enabled=true",
        "ranking.deep_layers=[16]"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranking")
    config = tfmmrec.load_config(None, [*TINY, f"train.output_dir={root}/run"])
    return pipeline.prepare(config, progress=False), root


def _train(workspace, overrides, epochs=3):
    ws, root = workspace
    config = tfmmrec.load_config(None, [*TINY, f"train.output_dir={root}/run-{len(overrides)}",
                                        f"train.epochs={epochs}", *overrides])
    import shutil

    shutil.rmtree(config.train.output_dir, ignore_errors=True)
    result = pipeline.train(config, workspace=ws, progress=False)
    return result, result.workspace


@pytest.mark.parametrize("task", ["regression", "binary", "listwise"])
def test_each_ranking_task_trains_and_evaluates(workspace, task):
    # 6 epochs: on this tiny set the binary loss moves by ±5 (of ~150) between epochs as its
    # negatives are drawn (training seeds 0-2: the first 4 epochs of one seed never went
    # below the first), and falls by about 10 over 8 epochs
    result, ws = _train(workspace, [f"ranking.task={task}", "ranking.list_size=3",
                                    "ranking.lists_per_user=4"], epochs=6)
    losses = result.history["loss"]
    assert all(np.isfinite(losses)) and min(losses[1:]) < losses[0]
    # the head's metrics are evaluation-only: a training epoch's logs do not show them as 0
    assert not {"rmse", "mae", "auc"} & set(result.history)
    metrics = evaluate_ranking_head(result.model, ws)
    assert metrics == pytest.approx(independent_metrics(result.model, ws, task), rel=1e-4)


def test_a_ranking_only_model_stops_on_its_validation_rmse(workspace):
    """Early stopping scores the head's RMSE on the validation carve each epoch and keeps the
    epoch with the smallest (a ranking-only model's retrieval metrics say nothing of it)."""
    _, ws = _train(workspace, ["ranking.retrieval_weight=0", "train.early_stopping=true",
                               "train.early_stopping_metric=rmse",
                               "train.early_stopping_patience=1"], epochs=3)
    run = json.loads((Path(ws.config.train.output_dir) / "run.json").read_text())
    chosen = run["early_stopping"]
    assert chosen["metric"] == "rmse" and 1 <= chosen["best_epoch"] <= len(chosen["curve"])
    assert chosen["best"] == min(chosen["curve"])  # the smallest, not the largest
    assert {"rmse", "mae", "recall@20"} <= set(chosen["best_metrics"])
    assert np.isfinite(chosen["best"])


def independent_metrics(model, ws, task) -> dict[str, float]:
    """The ranking metrics recomputed from ``model.score`` with scikit-learn, pair by pair."""
    from sklearn import metrics as sk

    test = ws.split.test
    users = test["user_id"].astype(str).to_numpy()
    items = test["item_index"].to_numpy(np.int32)

    def score(u, i):
        return model.score(tf.constant(u), tf.constant(i, tf.int32), training=False).numpy()

    if task == "regression":
        predictions, ratings = score(users, items), test["rating"].to_numpy(float)
        return {"rmse": math.sqrt(sk.mean_squared_error(ratings, predictions)),
                "mae": sk.mean_absolute_error(ratings, predictions)}
    if task == "binary":  # the same seeded negatives (their draw: its own test below)
        from tfmmrec.evaluation.ranking import binary_negatives

        negatives = binary_negatives(ws)
        assert (negatives >= 0).all()
        scores = np.r_[score(users, items), score(users, negatives)]
        labels = np.r_[np.ones(len(items)), np.zeros(len(items))]
        return {"auc": sk.roc_auc_score(labels, scores),
                "log_loss": sk.log_loss(labels, 1 / (1 + np.exp(-scores)))}
    ranking = ws.config.ranking
    lists = sample_lists(users, items, test["rating"].to_numpy(np.float32), ranking.list_size,
                         1, ws.config.data.seed)
    scores = score(np.repeat(lists["user_id"], ranking.list_size),
                   lists["list_items"].reshape(-1)).reshape(-1, ranking.list_size)
    return {f"ndcg@{k}": sk.ndcg_score(lists["list_ratings"], scores, k=k) for k in (3, 5)}


def test_ranking_weight_zero_builds_no_head_and_retrieval_only_loss(workspace):
    result, ws = _train(workspace, ["ranking.ranking_weight=0"], epochs=1)
    assert result.model.head is None  # an untrained head must never reach an export
    batch = next(iter(pipeline.training_dataset(ws)[0]))
    both, _ = _train(workspace, ["ranking.ranking_weight=1", "ranking.retrieval_weight=0"],
                     epochs=1)
    assert both.model.head is not None
    assert both.model.alignment is None  # alignment rides on retrieval batches only
    assert np.isfinite(float(result.model.compute_loss(batch, training=False)))


def test_a_multitask_run_logs_its_ranking_term_unweighted(workspace):
    """Before: a multitask epoch line showed one sum, retrieval's (summed over the batch)
    swamping ranking's (averaged), so how the head trained could not be read from it."""
    result, ws = _train(workspace, ["ranking.ranking_weight=2"], epochs=2)
    model = result.model
    assert len(result.history["ranking_loss"]) == 2
    assert np.isfinite(result.history["ranking_loss"]).all()
    batch = next(iter(pipeline.training_dataset(ws)[0]))
    model.ranking_loss.reset_state()
    total = float(model.compute_loss(batch, training=False))
    retrieval = float(RetrievalModel.compute_loss(model, batch, training=False))
    assert float(model.ranking_loss.result()) == pytest.approx((total - retrieval) / 2,
                                                               rel=1e-5)
    single, _ = _train(workspace, ["ranking.retrieval_weight=0"], epochs=1)
    assert "ranking_loss" not in single.history  # there ``loss`` is the ranking term


def test_a_multitask_run_saved_before_its_ranking_term_was_logged_restores(workspace,
                                                                           tmp_path,
                                                                           monkeypatch):
    """A metric's running total is saved with the weights; a run trained before
    ``ranking_loss`` existed has none, and exact restore refused it ("2 model variables the
    checkpoint has no value for: count:0, total:0"). Metric state is training state."""
    from tfmmrec.training.checkpoint import checkpoint_mismatches, load_exactly

    def without_the_metric(self, name, value):  # the model as the previous release built it
        tf.keras.Model.__setattr__(self, name, None if name == "ranking_loss" else value)

    with monkeypatch.context() as patch:
        patch.setattr(MultitaskModel, "__setattr__", without_the_metric)
        older, _ = _model(workspace, [])
    assert older.ranking_loss is None and "ranking_loss" not in {m.name for m in older.metrics}
    prefix = str(tmp_path / "older")
    older.save_weights(prefix)
    newer, _ = _model(workspace, [])
    problems = checkpoint_mismatches(newer, prefix)
    assert not problems["missing"] and problems["metrics_unread"]
    load_exactly(newer, prefix)
    def weights(model):  # the model's own variables, its metrics' accumulators left out
        state = {id(v) for metric in model.metrics for v in metric.variables}
        return [v.numpy() for v in model.variables if id(v) not in state]

    for saved, restored in zip(weights(older), weights(newer), strict=True):
        np.testing.assert_array_equal(saved, restored)


def test_cross_layers_feed_the_head():
    head = RankingHead(deep_layers=(8,), cross_layers=2, cross_projection_dim=4)
    queries, items = tf.random.normal([3, 6]), tf.random.normal([3, 6])
    with tf.GradientTape() as tape:
        out = head(queries, items)
    cross_weights = [w for layer in head.cross for w in layer.trainable_weights]
    assert out.shape == (3,)
    assert len(cross_weights) >= 4  # two low-rank layers: U, V (+ biases)
    assert all(g is not None for g in tape.gradient(out, cross_weights))


def test_listwise_loss_is_softmax_cross_entropy_with_rating_distribution():
    loss = ListwiseSoftmaxLoss(reduction=tf.keras.losses.Reduction.NONE)
    ratings = tf.constant([[3.0, 1.0, 0.0]])
    logits = tf.constant([[0.0, 0.0, 0.0]])
    # target = [0.75, 0.25, 0]; uniform softmax → -0.75·log(1/3) - 0.25·log(1/3) = log 3
    assert math.isclose(float(loss(ratings, logits)[0]), math.log(3), rel_tol=1e-5)


def test_sample_lists_only_uses_users_with_enough_ratings():
    users = np.array(["a", "a", "a", "b"])
    lists = sample_lists(users, np.array([0, 1, 2, 3]), np.array([5, 4, 3, 1.0]), 3, 2, seed=0)
    assert list(lists["user_id"]) == ["a", "a"]
    assert lists["list_items"].shape == (2, 3)
    assert sorted(lists["list_items"][0]) == [0, 1, 2]


def _model(workspace, overrides):
    ws, root = workspace
    config = tfmmrec.load_config(None, [*TINY, f"train.output_dir={root}/built", *overrides])
    ws = ws.with_config(config)
    model = pipeline.build_model(ws)
    model.build_from_example()
    return model, ws


def test_listwise_trains_the_retrieval_loss_on_each_lists_pairs(workspace):
    """A listwise batch has no item_index: retrieval (and alignment) read each list's items
    as the user's positives instead of being skipped."""
    model, ws = _model(workspace, ["ranking.task=listwise", "ranking.list_size=3",
                                   "ranking.lists_per_user=2", "model.alignment_weight=0.5"])
    batch = next(iter(pipeline.training_dataset(ws)[0]))
    assert "item_index" not in batch
    total = float(model.compute_loss(batch, training=False))
    ranking = float(model._ranking_loss(batch, training=False))
    pairs = list_pairs(batch)
    assert pairs["item_index"].shape[0] == batch["list_items"].shape[0] * 3
    retrieval = float(RetrievalModel.compute_loss(model, pairs, training=False))
    assert retrieval > 0
    assert total == pytest.approx(ranking + retrieval, rel=1e-5)


def test_binary_negatives_are_items_seen_in_training_and_hits_do_not_count(workspace):
    model, ws = _model(workspace, ["ranking.task=binary", "ranking.negatives_per_positive=50"])
    seen = sorted(set(ws.split.train["item_index"]))
    np.testing.assert_array_equal(model.negative_items.numpy(), seen)  # what build_model gives
    model.negative_items = tf.constant(seen[:5], tf.int32)  # as if the rest were cold
    positives = tf.constant(seen[:8], tf.int32)
    negatives, counted = model.draw_negatives(positives)
    assert set(negatives.numpy().ravel()) == set(seen[:5])
    hits = negatives.numpy() == positives.numpy()[:, None]
    assert hits.any()
    np.testing.assert_array_equal(counted.numpy(), (~hits).astype(np.float32))


def test_a_binary_draw_of_the_positive_itself_adds_nothing_to_the_loss(workspace):
    model, ws = _model(workspace, ["ranking.task=binary", "ranking.negatives_per_positive=3"])
    item = int(ws.split.train["item_index"].iloc[0])
    model.negative_items = tf.constant([item], tf.int32)  # every draw is the positive
    batch = {"user_index": tf.constant([1, 2], tf.int32), "item_index": tf.constant([item] * 2)}
    loss = float(model._ranking_loss(batch, training=False))
    queries = model.query_embeddings(batch["user_index"], exclude=batch["item_index"])
    logits = model.head(queries, model.item_embeddings(batch["item_index"])).numpy()
    positive_terms = np.log1p(np.exp(-logits))  # BCE of a positive logit
    assert loss == pytest.approx(positive_terms.sum() / 8, rel=1e-4)  # mean over 2 × (1 + 3)


def test_the_ranking_query_leaves_the_scored_item_out_of_the_history(workspace, monkeypatch):
    model, _ = _model(workspace, ["ranking.task=regression", "model.user_history=true"])
    excluded = []
    original = model.query_embeddings

    def spy(user_id, training=False, exclude=None):
        excluded.append(exclude)
        return original(user_id, training, exclude=exclude)

    monkeypatch.setattr(model, "query_embeddings", spy)
    batch = {"user_index": tf.constant([1, 2], tf.int32), "item_index": tf.constant([3, 4]),
             "rating": tf.constant([4.0, 2.0])}
    model._ranking_loss(batch, training=False)
    assert excluded and excluded[0] is not None
    np.testing.assert_array_equal(excluded[0].numpy(), [3, 4])


def test_a_list_scores_each_item_with_a_query_that_leaves_it_out(workspace):
    model, ws = _model(workspace, ["ranking.task=listwise", "ranking.list_size=3",
                                   "model.user_history=true"])
    train = ws.split.train
    users = [str(u) for u in train["user_id"].unique()[:2]]
    index = {str(u): i for i, u in enumerate(ws.user_ids)}  # vocabulary row i -> index i + 1
    lists = [train.loc[train["user_id"].astype(str) == u, "item_index"].to_numpy()[:3]
             for u in users]  # items each user's history holds
    batch = {"user_index": tf.constant([index[u] + 1 for u in users], tf.int32),
             "list_items": tf.constant(np.stack(lists), tf.int32),
             "list_ratings": tf.constant([[5.0, 3.0, 1.0], [2.0, 4.0, 1.0]])}
    loss = float(model._ranking_loss(batch, training=False))
    flat_users = tf.repeat(batch["user_index"], 3)
    items = tf.reshape(batch["list_items"], [-1])

    def list_loss(exclude):
        queries = model.query_embeddings(flat_users, exclude=exclude)
        logits = tf.reshape(model.head(queries, model.item_embeddings(items)), [2, 3])
        return float(ListwiseSoftmaxLoss()(batch["list_ratings"], logits))

    assert loss == pytest.approx(list_loss(items), rel=1e-5)
    assert loss != pytest.approx(list_loss(None), rel=1e-5)  # the history held those items


@pytest.mark.parametrize("kwargs, message", [
    ({"ranking_task": "pairwise"}, "ranking_task must be one of"),
    ({"ranking_weight": -1.0}, "ranking_weight must be a finite number >= 0"),
    ({"retrieval_weight": 0.0, "ranking_weight": 0.0}, "both 0"),
    ({"ranking_task": "binary", "num_items": 5, "negatives_per_positive": 0},
     "negatives_per_positive must be an integer >= 1"),
    ({"ranking_task": "binary"}, "pass num_items"),
    ({"ranking_task": "binary", "num_items": 5, "negative_items": [1, 7]},
     r"negative_items must be a non-empty list of item indices in \[0, 5\)"),
])
def test_multitask_arguments_are_checked_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultitaskModel(None, None, None, **kwargs)


def _with_test(ws, test, test_items=None):
    split = dataclasses.replace(ws.split, test=test.reset_index(drop=True), test_items=test_items)
    return dataclasses.replace(ws, split=split)


def test_head_metrics_are_left_out_when_the_test_rows_cannot_give_them(workspace):
    """A supplied --test file may have no rating column; a sparse test set can have no list: the
    head row keeps retrieve → re-rank instead of failing the whole evaluation."""
    model, ws = _model(workspace, ["ranking.task=regression"])
    unrated = _with_test(ws, ws.split.test.drop(columns=["rating"]))
    assert evaluate_ranking_head(model, unrated) == {}
    assert set(pipeline.ranking_head_metrics(model, unrated)) == {
        "retrieval_ndcg@10", "retrieval_recall@10", "two_stage_ndcg@10", "two_stage_recall@10"}
    listwise, ws = _model(workspace, ["ranking.task=listwise", "ranking.list_size=5"])
    sparse = _with_test(ws, ws.split.test.groupby("user_id").head(1))
    assert evaluate_ranking_head(listwise, sparse) == {}


def test_two_stage_retrieval_figures_match_the_main_table_under_candidates(workspace):
    """The head row's retrieval figures are the main row's (same protocol: training items
    excluded, only the candidate items ranked), whatever the user batch."""
    from tfmmrec.evaluation.embeddings import embed_items, embed_users
    from tfmmrec.evaluation.protocol import evaluate_embeddings

    model, ws = _model(workspace, ["ranking.task=binary"])
    test = ws.split.test
    held_out = np.unique(test["item_index"])[::2]
    restricted = _with_test(ws, test, test_items=held_out)
    for split_ws in (ws, restricted):
        main = evaluate_embeddings(embed_users(model, split_ws.user_ids),
                                   embed_items(model, split_ws.dataset.num_items),
                                   split_ws.split, split_ws.user_ids, ks=(10,))
        head = evaluate_two_stage(model, split_ws, batch_size=7)
        assert head["retrieval_recall@10"] == pytest.approx(main["recall@10"], abs=1e-6)
        assert head["retrieval_ndcg@10"] == pytest.approx(main["ndcg@10"], abs=1e-6)
        assert head == pytest.approx(evaluate_two_stage(model, split_ws, batch_size=256))


def test_two_stage_has_no_figure_at_a_k_beyond_its_candidates(workspace, caplog):
    """Re-ranking 3 candidates has no 10th place: the unretrieved items used to tie at 0 and
    take credit (Recall@10 of 1 candidate was that of retrieval alone)."""
    import math

    from tfmmrec.config import load_config

    model, ws = _model(workspace, ["ranking.task=binary"])
    few = ws.with_config(load_config(ws.config, ["ranking.retrieve_candidates=3",
                                                 "export.max_k=3", "export.k=3"]))
    figures = evaluate_two_stage(model, few, ks=(3, 10))
    assert math.isnan(figures["two_stage_recall@10"]) and math.isnan(figures["two_stage_ndcg@10"])
    assert not math.isnan(figures["two_stage_recall@3"])
    assert figures["retrieval_recall@10"] == evaluate_two_stage(model, ws, ks=(3, 10))[
        "retrieval_recall@10"]
    assert "K=10 left out: ranking.retrieve_candidates=3" in caplog.text


def _rated_workspace(tmp_path, ratings: str, overrides, min_rating=None):
    """A model-free workspace over a small folder whose interactions are ``ratings`` (CSV
    rows after the header), all of them training rows: enough for ``training_examples``."""
    from types import SimpleNamespace

    from tests.data.folders import make_folder
    from tfmmrec.config import DataConfig
    from tfmmrec.data.dataset import load_dataset
    from tfmmrec.data.splits import split_interactions

    root = make_folder(tmp_path / "d", interactions="user_id,item_id,rating\n" + ratings)
    dataset = load_dataset(DataConfig(path=str(root), min_rating=min_rating))
    config = tfmmrec.load_config(None, ["ranking.enabled=true", *overrides])
    return SimpleNamespace(config=config, dataset=dataset, user_ids=dataset.user_ids,
                           split=split_interactions(dataset.interactions, "none", 0.2, 0))


LISTWISE = ["ranking.task=listwise", "ranking.list_size=2", "ranking.lists_per_user=2"]


def test_listwise_refuses_a_negative_rating_naming_its_file_line(tmp_path):
    """Listwise targets are ratings over the list's total: a negative rating gives a total
    near 0 or below and targets of ~±1e9 (a loss of -1e11). Named with the line it is on in
    the file, though data.min_rating and the split have dropped and moved rows."""
    ws = _rated_workspace(tmp_path, "u1,i1,5\nu1,i2,-9\nu1,i3,3\nu2,i1,4\nu2,i3,-2\nu2,i2,1\n",
                          LISTWISE, min_rating=-5)
    root = ws.dataset.root
    with pytest.raises(DataError) as error:
        pipeline.training_examples(ws)
    assert str(error.value) == (f"{root}/interactions.csv line 6: rating -2: "
                                "ranking.task=listwise needs ratings >= 0")


def test_listwise_with_no_rating_above_zero_is_refused_and_a_zero_list_adds_nothing(tmp_path):
    ws = _rated_workspace(tmp_path, "u1,i1,0\nu1,i2,0\nu2,i1,0\nu2,i3,0\n", LISTWISE)
    with pytest.raises(DataError, match=r"no list of ranking\.list_size=2 training ratings has "
                                        "a rating above 0"):
        pipeline.training_examples(ws)
    loss = ListwiseSoftmaxLoss(reduction=tf.keras.losses.Reduction.NONE)
    assert float(loss(tf.zeros([1, 3]), tf.constant([[2.0, -1.0, 0.5]]))[0]) == 0.0


def test_listwise_lists_rated_all_alike_are_refused(tmp_path):
    """Every rating equal: it trained a head with no order to learn, and evaluation then
    skipped every list (NDCG NaN)."""
    ws = _rated_workspace(tmp_path, "u1,i1,3\nu1,i2,3\nu2,i1,3\nu2,i3,3\n", LISTWISE)
    with pytest.raises(DataError, match=r"every list of ranking\.list_size=2 training ratings "
                                        "rates its items alike"):
        pipeline.training_examples(ws)


def test_listwise_says_how_many_users_reach_the_list_size(tmp_path, caplog):
    ws = _rated_workspace(tmp_path, "u1,i1,5\nu1,i2,3\nu1,i3,1\nu2,i1,4\nu3,i2,2\n",
                          ["ranking.task=listwise", "ranking.list_size=3"])
    pipeline.training_examples(ws)
    assert ("ranking.list_size=3: 1 of 3 training users have that many ratings; the other 2 "
            "get no training example") in caplog.text


def test_a_list_size_no_training_user_reaches_is_a_config_error(tmp_path):
    ws = _rated_workspace(tmp_path, "u1,i1,5\nu1,i2,3\nu1,i3,1\nu2,i1,4\n",
                          ["ranking.task=listwise", "ranking.list_size=50"])
    with pytest.raises(ConfigError) as error:
        pipeline.training_examples(ws)  # before: fit's "Expected input data to be non-empty"
    assert str(error.value) == "ranking.list_size=50: no training user has 50 ratings (most: 3)"


def test_binary_warns_of_ratings_at_or_below_zero_and_still_trains_every_row(tmp_path, caplog):
    ws = _rated_workspace(tmp_path, "u1,i1,5\nu1,i2,0\nu2,i3,-1\nu2,i1,4\n",
                          ["ranking.task=binary"])
    with caplog.at_level("WARNING"):
        examples = pipeline.training_examples(ws)
    warned = [r.getMessage() for r in caplog.records if "data.min_rating" in r.getMessage()]
    assert len(warned) == 1
    assert "ranking.task=binary trains every row as a positive" in warned[0]
    assert "2 of its 4 rows have a rating <= 0" in warned[0]
    assert str(ws.dataset.root / "interactions.csv") in warned[0]
    assert examples.rows == 4  # the semantics are kept: every row is a positive
    caplog.clear()
    # a selection trains every validation carve and then the whole split: one warning
    carve = SimpleNamespace(**{**vars(ws), "split": dataclasses.replace(
        ws.split, train=ws.split.train.head(2))})
    with caplog.at_level("WARNING"):
        pipeline.training_examples(carve)
        pipeline.training_examples(ws)
    assert not [r for r in caplog.records if "data.min_rating" in r.getMessage()]
    rated = _rated_workspace(tmp_path / "rated", "u1,i1,5\nu2,i3,1\n", ["ranking.task=binary"])
    with caplog.at_level("WARNING"):
        pipeline.training_examples(rated)
    assert not [r for r in caplog.records if "data.min_rating" in r.getMessage()]


@pytest.mark.parametrize("task", ["regression", "listwise"])
def test_a_missing_rating_column_names_the_task_and_the_table(workspace, task):
    ws, _ = workspace
    config = tfmmrec.load_config(ws.config, [f"ranking.task={task}"])
    unrated = dataclasses.replace(ws.dataset, interactions=ws.dataset.interactions.drop(
        columns="rating"))
    split = dataclasses.replace(ws.split, train=ws.split.train.drop(columns="rating"))
    rows = dataclasses.replace(ws, config=config, dataset=unrated, split=split)
    with pytest.raises(DataError) as error:
        pipeline.training_examples(rows)
    assert str(error.value).startswith(f"{ws.dataset.root / 'interactions.csv'}: "
                                       f"ranking.task={task} needs a rating column")


def _supplied_test(ws, tmp_path, rows: str):
    from tfmmrec.data.dataset import load_test_interactions

    (tmp_path / "test.csv").write_text("user_id,item_id,rating\n" + rows)
    return _with_test(ws, load_test_interactions(tmp_path / "test.csv", ws.dataset))


def test_a_supplied_test_files_ratings_give_the_head_metrics(workspace, tmp_path):
    """``evaluate --test FILE``: the file's ratings reach the head's RMSE/MAE (they were
    dropped), and a listwise head names a negative one by its line in that file."""
    model, ws = _model(workspace, ["ranking.task=regression"])
    test = ws.split.test.head(6)
    rows = [f"{u},{i},{r}\n" for u, i, r in
            zip(test["user_id"], test["item_id"], test["rating"], strict=True)]
    # and only over the rows the note says are scored: not the user's training interactions
    trained = ws.split.train.head(4)
    seen = [f"{u},{i},{r}\n" for u, i, r in
            zip(trained["user_id"], trained["item_id"], trained["rating"], strict=True)]
    metrics = evaluate_ranking_head(model, _supplied_test(ws, tmp_path, "".join(rows + seen)))
    assert set(metrics) == {"rmse", "mae"}
    assert metrics == pytest.approx(evaluate_ranking_head(model, _with_test(ws, test)))
    listwise, ws = _model(workspace, ["ranking.task=listwise", "ranking.list_size=2"])
    rows[0] = rows[0].rpartition(",")[0] + ",-7\n"
    negative = _supplied_test(ws, tmp_path, "".join(rows))
    with pytest.raises(DataError) as error:
        evaluate_ranking_head(listwise, negative)
    assert str(error.value) == (f"{tmp_path}/test.csv line 2: rating -7: ranking.task=listwise "
                                "needs ratings >= 0")


def test_binary_auc_negatives_are_never_the_users_own_items(monkeypatch):
    """The evaluated AUC's negatives: seeded draws among the items the user has no train,
    validation or test row with (a uniform draw over the catalogue hit the positive itself,
    label 0 and the same score, or another of the user's items)."""
    from types import SimpleNamespace

    import pandas as pd

    from tfmmrec.evaluation import ranking

    rng = np.random.default_rng(0)
    pairs = pd.DataFrame({"user_id": np.repeat([f"u{i}" for i in range(30)], 8),
                          "item_index": np.concatenate([rng.choice(10, 8, replace=False)
                                                        for _ in range(30)])})
    full = pd.DataFrame({"user_id": "all", "item_index": np.arange(10)})  # no item left
    train, test = pairs.iloc[::2], pd.concat([pairs.iloc[1::2], full.iloc[:3]])
    split = SimpleNamespace(train=pd.concat([train, full.iloc[3:]]), test=test, validation=None,
                            test_items=None)
    ws = SimpleNamespace(split=split, dataset=SimpleNamespace(num_items=10, root=Path("/none")),
                         config=tfmmrec.load_config(None, ["ranking.task=binary"]),
                         user_ids=np.array(["all", *(f"u{i}" for i in range(30))]))
    scored = []

    def score_pairs(model, users, items):
        scored.append((users, items))
        return np.where(np.arange(len(users)) < len(test), 1.0, 0.0).astype(np.float32)

    monkeypatch.setattr(ranking, "score_pairs", score_pairs)
    metrics = ranking.evaluate_ranking_head(SimpleNamespace(ranking_task="binary"), ws)
    users, items = scored[0]
    negatives = pd.DataFrame({"user_id": users[len(test):], "item_index": items[len(test):]})
    everything = pd.concat([split.train, test])
    own = negatives.merge(everything, on=["user_id", "item_index"])
    assert own.empty  # none is the user's own item
    assert len(negatives) == len(test) - 3  # "all" interacted with every item: no negative
    assert metrics["auc"] == 1.0
    ranking.evaluate_ranking_head(SimpleNamespace(ranking_task="binary"), ws)
    np.testing.assert_array_equal(scored[1][1], items)  # seeded: the same draws again


def test_each_task_has_a_reference_row_scored_without_a_model(workspace):
    """The head's figures had nothing to read them against (a random order of 1-5 ratings in
    lists of 5 scores NDCG@5 near 0.89): evaluate adds the task's reference row."""
    from tfmmrec.evaluation.ranking import REFERENCES, reference_ranking_metrics
    from tfmmrec.evaluation.rating import mae, rmse

    _, ws = _model(workspace, ["ranking.task=regression"])
    test = ws.split.test
    mean = ws.split.train["rating"].astype(float).mean()
    ratings = test["rating"].to_numpy(float)
    assert reference_ranking_metrics(ws, "regression") == pytest.approx(
        {"rmse": rmse(np.full(len(test), mean), ratings),
         "mae": mae(np.full(len(test), mean), ratings)}, rel=1e-5)
    assert set(reference_ranking_metrics(ws, "binary")) == {"auc"}
    _, ws = _model(workspace, ["ranking.task=listwise", "ranking.list_size=3"])
    random_order = reference_ranking_metrics(ws, "listwise")
    assert set(random_order) == {"ndcg@3", "ndcg@5"} and 0 < random_order["ndcg@3"] < 1
    model, ws = _model(workspace, ["ranking.task=regression"])
    results = pipeline.evaluate(ws.config, model=model, workspace=ws, write=False)
    assert set(results[f"{REFERENCES['regression']}{pipeline.RANKING_HEAD_ROW}"]) == {
        "rmse", "mae"}
