"""Tests for tfmmrec.training.validation and ``train.early_stopping`` in ``pipeline.train``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tests.conftest import derive_config
from tfmmrec import pipeline
from tfmmrec.config import load_config
from tfmmrec.data.splits import Split, validation_split
from tfmmrec.errors import ConfigError
from tfmmrec.training.validation import ValidationMetrics, choose_on_carves

USERS = np.array(["a", "b"])
# user a held out item 1, user b item 2; a trained on item 0
SPLIT = Split("random", pd.DataFrame({"user_id": ["a"], "item_index": [0]}),
              pd.DataFrame({"user_id": ["a", "b"], "item_index": [1, 2]}))


def scripted(scores_per_epoch):
    """An ``embed`` function whose epoch ``e`` puts each user's held-out item at rank
    ``scores_per_epoch[e]`` (1 = top) among 3 items."""
    calls = iter(scores_per_epoch)

    def embed(model):
        good = next(calls)
        users = np.eye(2, dtype=np.float32)
        items = np.zeros((3, 2), np.float32)
        if good:  # item 1 top for a, item 2 top for b
            items[1, 0] = items[2, 1] = 1.0
        else:  # the held-out items rank last
            items[1, 0] = items[2, 1] = -1.0
        return users, items

    return embed


class Model(tf.keras.Model):
    def __init__(self):
        super().__init__()
        self.w = tf.Variable(0.0)
        self.stop_training = False


def run(callback, epochs):
    model = Model()
    callback.set_model(model)
    for epoch in range(epochs):
        model.w.assign(float(epoch + 1))
        callback.on_epoch_end(epoch, {})
        if model.stop_training:
            break
    callback.on_train_end()
    return model


def test_best_epoch_and_stop_after_patience_epochs_without_improvement():
    callback = ValidationMetrics(SPLIT, USERS, 3, "recall@1", 2, [1], scripted([0, 1, 0, 0, 1]))
    model = run(callback, 5)
    assert callback.best_epoch == 2 and callback.best == 1.0
    assert len(callback.history) == 4  # epochs 3 and 4 did not improve: stopped after 4
    assert [h["recall@1"] for h in callback.history] == [0.0, 1.0, 0.0, 0.0]
    assert float(model.w.numpy()) == 4.0  # weights left as trained without restore_best


def test_restore_best_puts_back_the_best_epochs_weights():
    callback = ValidationMetrics(SPLIT, USERS, 3, "recall@1", 0, [1], scripted([0, 1, 0]),
                                 restore_best=True)
    model = run(callback, 3)
    assert len(callback.history) == 3  # patience 0: never stops early
    assert float(model.w.numpy()) == 2.0


def test_unknown_validation_metric_is_named():
    callback = ValidationMetrics(SPLIT, USERS, 3, "recall@7", 1, [1], scripted([1]))
    with pytest.raises(ValueError, match="recall@7"):
        run(callback, 1)


@pytest.mark.parametrize("override", ["train.early_stopping_patience=0",
                                      "train.early_stopping_metric=loss"])
def test_invalid_early_stopping_settings_are_config_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(None, [override])


def test_early_stopping_trains_for_the_epochs_chosen_on_validation(tiny_config, tiny_workspace,
                                                                   tmp_path):
    config = derive_config(tiny_config, tmp_path, "train.epochs=3", "train.early_stopping=true",
                           "train.early_stopping_patience=1")
    result = pipeline.train(config, workspace=tiny_workspace, progress=False)
    run_record = json.loads((tmp_path / "run" / "run.json").read_text())
    chosen = run_record["early_stopping"]
    assert chosen["metric"] == "recall@20" and 1 <= chosen["best_epoch"] <= 3
    assert chosen["best"] == max(chosen["curve"])
    assert chosen["best_epoch"] == int(np.argmax(chosen["curve"])) + 1
    # every validation metric of the chosen epoch is recorded (NDCG, top-K accuracy…)
    assert chosen["best_metrics"]["recall@20"] == chosen["best"]
    assert {"ndcg@20", "top_k_accuracy@10"} <= set(chosen["best_metrics"])  # @100: 80 items
    # the final model trains on the whole training split for exactly the chosen epochs
    assert result.epochs_run == chosen["best_epoch"]
    assert len(run_record["history"]["loss"]) == chosen["best_epoch"]
    d = tiny_workspace.config.data
    validation = validation_split(tiny_workspace.split, d.test_fraction, d.seed)
    assert chosen["validation_interactions"] == len(validation.test)
    assert len(validation.train) + len(validation.test) == len(tiny_workspace.split.train)


def test_early_stopping_result_names_configured_chosen_and_run_epochs(tiny_config,
                                                                      tiny_workspace, tmp_path,
                                                                      monkeypatch):
    """The review's case: train.epochs=3, validation chose 1. The workspace's config must say
    what config.yaml says (3), and the chosen count is its own field, not a rewritten config."""
    def chose_one(ws, strategy, output):
        return {"metric": "recall@20", "best_epoch": 1, "best": 0.5, "curve": [0.5, 0.4]}

    monkeypatch.setattr(pipeline, "select_epochs", chose_one)
    config = derive_config(tiny_config, tmp_path, "train.epochs=3", "train.early_stopping=true")
    result = pipeline.train(config, workspace=tiny_workspace, progress=False)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert result.workspace.config.train.epochs == saved.train.epochs == 3
    assert (result.epochs_configured, result.epochs_chosen, result.epochs_run) == (3, 1, 1)
    assert len(json.loads((tmp_path / "run" / "run.json").read_text())["history"]["loss"]) == 1
    assert "epochs_chosen=1" in repr(result)


def test_without_early_stopping_no_epoch_count_is_chosen(tiny_trained, tiny_config):
    assert tiny_trained.epochs_chosen is None
    assert tiny_trained.epochs_configured == tiny_trained.epochs_run == tiny_config.train.epochs


def split_embeddings(learned_good: bool, cf_good: bool):
    """Users and items ``[., 2 + 2]``: a learned 2-d part and a 2-d CF part. The learned part
    ranks each user's held-out item first iff ``learned_good``, the CF part iff ``cf_good``."""

    def embed(model):
        users = np.array([[1, 0, 1, 0], [0, 1, 0, 1]], np.float32)
        items = np.zeros((3, 4), np.float32)
        sign = 1.0 if learned_good else -1.0
        items[1, 0] = items[2, 1] = sign
        if cf_good:  # item 1 for user a, item 2 for user b
            items[1, 2] = items[2, 3] = 1.0
        else:  # the other way round
            items[1, 3] = items[2, 2] = 1.0
        return users, items

    return embed


@pytest.mark.parametrize("learned_good, cf_good, weight", [
    (False, True, 4.0),   # CF fixes the ranking once it outweighs the learned part (1: a tie)
    (True, False, 0.0),   # a CF part that misleads is switched off
    (True, True, 0.0),    # both right: the first (smallest) weight reaching the best is kept
])
def test_the_linear_cf_weight_is_chosen_with_the_epoch_on_validation(learned_good, cf_good,
                                                                     weight):
    callback = ValidationMetrics(SPLIT, USERS, 3, "recall@1", 0, [1],
                                 split_embeddings(learned_good, cf_good), linear_cf_rank=2,
                                 linear_cf_weights=(0.0, 1.0, 4.0, 16.0))
    run(callback, 1)
    assert callback.best == 1.0 and callback.best_linear_cf_weight == weight
    assert callback.history[0]["linear_cf_weight"] == weight


def cf_columns(good: bool) -> tuple[np.ndarray, np.ndarray]:
    """A candidate CF part's ``(user, item)`` columns for ``SPLIT``: each user's held-out item
    first iff ``good``."""
    users = np.eye(2, dtype=np.float32)
    items = np.zeros((3, 2), np.float32)
    if good:
        items[1, 0] = items[2, 1] = 1.0
    else:
        items[1, 1] = items[2, 0] = 1.0
    return users, items


@pytest.mark.parametrize("own_good, other_good, kind, scores", [
    (True, False, "ease", {"ease": 1.0, "ials": 0.0}),   # the model's own CF part wins
    (False, True, "ials", {"ease": 0.0, "ials": 1.0}),   # the replacing columns win
    (True, True, "ease", {"ease": 1.0, "ials": 1.0}),    # a tie keeps the first kind
])
def test_the_linear_cf_kind_follows_the_validation_scores(own_good, other_good, kind, scores):
    """``model.linear_cf: auto``: with a misleading learned part, only the right CF kind ranks
    the held-out items first; every (kind, weight) pair is scored and the best one kept."""
    callback = ValidationMetrics(SPLIT, USERS, 3, "recall@1", 0, [1],
                                 split_embeddings(False, own_good), linear_cf_rank=2,
                                 linear_cf_weights=(0.0, 1.0, 4.0),
                                 linear_cf_kinds={"ease": None, "ials": cf_columns(other_good)})
    run(callback, 1)
    assert callback.best == 1.0
    assert (callback.best_linear_cf_kind, callback.best_linear_cf_weight) == (kind, 4.0)
    assert callback.history[0]["linear_cf"] == kind
    assert callback.history[0]["linear_cf_scores"] == scores


def test_linear_cf_kinds_need_cf_columns():
    with pytest.raises(ValueError, match="linear_cf_rank"):
        ValidationMetrics(SPLIT, USERS, 3, "recall@1", 0, [1], scripted([1]),
                          linear_cf_kinds={"ease": None})


@pytest.mark.slow
def test_an_auto_linear_cf_is_chosen_on_validation_and_restores_as_that_kind(tiny_config,
                                                                              tiny_workspace,
                                                                              tmp_path):
    from tfmmrec.evaluation.embeddings import embed_items, embed_users
    from tfmmrec.evaluation.linear_cf_selection import AUTO_BLOCKS

    config = derive_config(tiny_config, tmp_path, "train.epochs=2", "train.early_stopping=true",
                           "model.user_history=true", "model.linear_cf=auto",
                           "model.linear_cf_rank=8")
    result = pipeline.train(config, workspace=tiny_workspace, progress=False)
    chosen = json.loads((tmp_path / "run" / "run.json").read_text())["early_stopping"]
    figures = chosen["linear_cf_validation"]
    assert set(figures) == set(AUTO_BLOCKS)
    # the kind with the best validation figure (the first on a tie), which is the run's best
    assert chosen["linear_cf"] == max(AUTO_BLOCKS, key=lambda k: (figures[k],
                                                                  -AUTO_BLOCKS.index(k)))
    assert figures[chosen["linear_cf"]] == chosen["best"]
    # each kind's figure is what a run of that kind alone scores on the same carve (the towers
    # train identically: the CF part only counts at evaluation), so auto picks what they prefer
    for kind in AUTO_BLOCKS:
        alone = pipeline.train(derive_config(config, tmp_path / kind, f"model.linear_cf={kind}"),
                               workspace=tiny_workspace, progress=False)
        run_record = json.loads((alone.output_dir / "run.json").read_text())
        assert figures[kind] == pytest.approx(run_record["early_stopping"]["best"], abs=1e-6)
    # the final model is that kind (iALS: exact fold-in columns), the whole run records it
    assert result.workspace.config.model.linear_cf == chosen["linear_cf"]
    cf = result.model.query_tower.linear_cf
    assert cf.foldin_columns == (8 if chosen["linear_cf"] == "ials" else 0)
    spec = load_config(tmp_path / "run" / "checkpoints" / pipeline.MODEL_SPEC_FILE)
    assert spec.model.linear_cf == chosen["linear_cf"]
    assert load_config(tmp_path / "run" / pipeline.CONFIG_FILE).model.linear_cf == "auto"
    users = embed_users(result.model, tiny_workspace.user_ids, 64)
    assert users.shape[1] == config.model.embedding_dim + 8
    restored, ws = pipeline.restore(tmp_path / "run")  # the run's config says auto
    assert ws.config.model.linear_cf == chosen["linear_cf"]
    np.testing.assert_array_equal(embed_users(restored, ws.user_ids, 64), users)
    np.testing.assert_array_equal(embed_items(restored, ws.dataset.num_items, 64),
                                  embed_items(result.model, ws.dataset.num_items, 64))


def test_an_auto_linear_cf_needs_early_stopping(tiny_config, tiny_workspace, tmp_path):
    config = derive_config(tiny_config, tmp_path, "model.user_history=true",
                           "model.linear_cf=auto", "model.linear_cf_weight=1")
    with pytest.raises(ConfigError, match=r"linear_cf=auto.*train\.early_stopping"):
        pipeline.train(config, workspace=tiny_workspace, progress=False)
    with pytest.raises(ConfigError, match=r"model\.user_history"):
        load_config(None, ["model.linear_cf=auto"])
    with pytest.raises(ConfigError, match="auto is resolved"):  # no kind to build yet
        pipeline.linear_cf(tiny_workspace.with_config(config))


# ease-8 runs only with -m slow (the default suite's time budget): ease+ials-16 trains, chooses the
# weight of and restores the same EASE block (with the iALS block beside it).
@pytest.mark.parametrize("blocks, width", [pytest.param("ease", 8, marks=pytest.mark.slow),
                                           ("ease+ials", 16)])
def test_linear_cf_model_trains_with_its_weight_chosen_and_restores_exactly(tiny_config,
                                                                            tiny_workspace,
                                                                            tmp_path, blocks,
                                                                            width):
    from tfmmrec.evaluation.embeddings import embed_items, embed_users
    from tfmmrec.training.validation import LINEAR_CF_WEIGHTS

    config = derive_config(tiny_config, tmp_path, "train.epochs=2", "train.early_stopping=true",
                           "model.user_history=true", f"model.linear_cf={blocks}",
                           "model.linear_cf_rank=8")
    result = pipeline.train(config, workspace=tiny_workspace, progress=False)
    chosen = json.loads((tmp_path / "run" / "run.json").read_text())["early_stopping"]
    assert chosen["linear_cf_weight"] in LINEAR_CF_WEIGHTS
    cf = result.model.query_tower.linear_cf
    assert float(cf.score_weight.numpy()) == chosen["linear_cf_weight"]
    assert result.model.item_tower.linear_cf is cf
    users = embed_users(result.model, tiny_workspace.user_ids, 64)
    items = embed_items(result.model, tiny_workspace.dataset.num_items, 64)
    dim = config.model.embedding_dim
    assert users.shape[1] == items.shape[1] == dim + width
    restored, ws = pipeline.restore(tmp_path / "run")  # no closed-form refit: all from the ckpt
    np.testing.assert_array_equal(embed_users(restored, ws.user_ids, 64), users)
    np.testing.assert_array_equal(embed_items(restored, ws.dataset.num_items, 64), items)


def test_a_linear_cf_weight_left_to_validation_needs_early_stopping(tiny_config, tiny_workspace,
                                                                    tmp_path):
    config = derive_config(tiny_config, tmp_path, "model.user_history=true",
                           "model.linear_cf=ease")
    with pytest.raises(ConfigError, match=r"train\.early_stopping"):
        pipeline.train(config, workspace=tiny_workspace, progress=False)
    with pytest.raises(ConfigError, match=r"model\.user_history"):
        load_config(None, ["model.linear_cf=ease"])


def test_a_resumed_monitor_numbers_its_epochs_from_the_backup():
    """A run resumed from a backup starts at a later epoch: ``epochs`` numbers the history, so
    the best epoch's metrics are found by its number (``pipeline.select_epochs``), not by
    position."""
    callback = ValidationMetrics(SPLIT, USERS, 3, "recall@1", patience=5, ks=[1],
                                 embed=scripted([False, True, False]))
    callback.set_model(Model())
    for epoch in (3, 4, 5):  # epochs 1-3 ran before the interruption
        callback.on_epoch_end(epoch, {})
    assert callback.epochs == [4, 5, 6]
    assert callback.best_epoch == 5
    best = callback.history[callback.epochs.index(callback.best_epoch)]
    assert best["recall@1"] == callback.best == 1.0



def resumed_from(state_file, done: int, scores) -> ValidationMetrics:
    """A monitor of a run resumed after ``done`` epochs, trained on to ``len(scores)``: the
    epochs it runs are scored by ``scores[done:]``, a re-scored backup epoch by
    ``scores[done - 1]``."""
    rescored = [scores[done - 1]]
    callback = ValidationMetrics(SPLIT, USERS, 3, "recall@1", patience=3, ks=[1],
                                 embed=scripted(rescored + list(scores[done:])),
                                 state_file=state_file, resumed_after=done)
    callback.set_model(Model())
    callback.on_train_begin()
    for epoch in range(done, len(scores)):
        callback.on_epoch_end(epoch, {})
        if callback.model.stop_training:
            break
    return callback


SCORES = [False, True, False, False, False]  # best epoch 2, figures of 5 epochs (patience 3)


def interrupted_after(state_file, epochs: int, patience: int = 3) -> ValidationMetrics:
    """A monitor that scored ``SCORES[:epochs]``, keeping its figures in ``state_file``, and
    was then killed (no ``on_train_end``)."""
    callback = ValidationMetrics(SPLIT, USERS, 3, "recall@1", patience, [1],
                                 scripted(SCORES[:epochs]), state_file=state_file)
    callback.set_model(Model())
    for epoch in range(epochs):
        callback.on_epoch_end(epoch, {})
    return callback


def test_a_resumed_run_chooses_on_the_epochs_before_its_backup_too(tmp_path):
    """A resumed early-stopping run chose among its own epochs only ("best epoch 12 of 5" in
    a review: epochs 1-7 were gone), so it could choose another epoch and CF weight than the
    uninterrupted run it continues."""
    state = tmp_path / "figures.json"
    interrupted_after(state, 4)  # killed in epoch 5; the backup holds 3 epochs
    uninterrupted = ValidationMetrics(SPLIT, USERS, 3, "recall@1", 3, [1], scripted(SCORES))
    run(uninterrupted, 5)
    resumed = resumed_from(state, 3, SCORES)
    assert resumed.epochs == uninterrupted.epochs == [1, 2, 3, 4, 5]
    assert resumed.history == uninterrupted.history
    assert resumed.best_epoch == uninterrupted.best_epoch == 2
    assert choose_on_carves([resumed], "recall@1") == choose_on_carves([uninterrupted],
                                                                       "recall@1")
    assert resumed.model.stop_training  # patience counts the epochs before the backup too
    resumed.on_train_end()
    assert not state.exists()  # the choice is in run.json: the figures go with the backup


def test_the_backups_epoch_is_scored_again_when_the_kill_came_before_its_figures(tmp_path,
                                                                                caplog):
    state = tmp_path / "figures.json"
    interrupted_after(state, 2)
    resumed = resumed_from(state, 3, SCORES)  # the backup holds epoch 3: its figures are not
    assert resumed.epochs == [1, 2, 3, 4, 5] and resumed.best_epoch == 2
    state.unlink()
    with caplog.at_level("WARNING"):
        resumed = resumed_from(state, 3, SCORES)  # nothing to read back: as before
    assert resumed.epochs == [3, 4, 5]
    assert "does not hold the validation figures of epochs 1-3" in caplog.text
    state.write_text('{"epochs": [1, 2')  # damaged: the same fallback, not a traceback
    with caplog.at_level("WARNING"):
        assert resumed_from(state, 3, SCORES).epochs == [3, 4, 5]
    assert "is damaged" in caplog.text


def test_a_backup_of_the_last_epoch_resumes_with_no_epoch_left_to_run(tmp_path):
    """Keras runs no epoch then (no on_epoch_begin): the figures come back at train begin."""
    state = tmp_path / "figures.json"
    interrupted_after(state, 5, patience=0)
    resumed = resumed_from(state, 5, SCORES)
    assert resumed.epochs == [1, 2, 3, 4, 5] and resumed.best_epoch == 2


def test_a_run_killed_after_its_stop_resumes_stopped(tmp_path):
    """Killed between the stop at epoch 5 (patience 3, best 2) and the end: the resumed run
    must not train epoch 6, which could move the choice."""
    state = tmp_path / "figures.json"
    assert interrupted_after(state, 5, patience=3).model.stop_training
    resumed = resumed_from(state, 5, [*SCORES, True])  # an epoch 6 would be the best
    assert resumed.model.stop_training
    resumed.on_epoch_end(5, {})  # Keras ends the epoch it began before it stops
    assert resumed.epochs == [1, 2, 3, 4, 5] and resumed.best_epoch == 2


def test_a_lower_is_better_head_metric_chooses_the_smallest_figure():
    """A ranking head's RMSE 1.0, 0.8, 0.9, 0.95 with patience 2: epoch 2 is best, and two
    epochs without a smaller figure stop training after epoch 4."""
    rmse = iter([1.0, 0.8, 0.9, 0.95])
    callback = ValidationMetrics(SPLIT, USERS, 3, "rmse", 2, [1], scripted([1, 1, 1, 1]),
                                 restore_best=True, head_metrics=lambda model: {
                                     "rmse": next(rmse), "mae": 0.5})
    model = run(callback, 5)
    assert (callback.best_epoch, callback.best) == (2, 0.8)
    assert [h["rmse"] for h in callback.history] == [1.0, 0.8, 0.9, 0.95]
    assert all(h["recall@1"] == 1.0 and h["mae"] == 0.5 for h in callback.history)
    assert float(model.w.numpy()) == 2.0  # the smallest RMSE's weights restored


class Scored:
    """A monitor's record of (kind, weight) figures per epoch, as ``choose_on_carves`` reads it."""

    def __init__(self, epochs, tables):
        self.epochs = epochs
        self.scores = [{pair: {"recall@1": value, "ndcg@1": value / 2}
                        for pair, value in table.items()} for table in tables]


def test_carves_choose_on_their_mean_figure():
    """Carve 1 alone prefers (ials, 1) at epoch 2 by 0.01, carve 2 ranks it far lower: the mean
    chooses (ease, 4) at epoch 1, (0.50 + 0.48) / 2 = 0.49 against (0.51 + 0.30) / 2 = 0.405."""
    one = Scored([1, 2], [{("ease", 4.0): 0.50, ("ials", 1.0): 0.40},
                          {("ease", 4.0): 0.49, ("ials", 1.0): 0.51}])
    two = Scored([1, 2], [{("ease", 4.0): 0.48, ("ials", 1.0): 0.38},
                          {("ease", 4.0): 0.47, ("ials", 1.0): 0.30}])
    alone = choose_on_carves([one], "recall@1")
    assert (alone["epoch"], alone["kind"], alone["weight"]) == (2, "ials", 1.0)
    chosen = choose_on_carves([one, two], "recall@1")
    assert (chosen["epoch"], chosen["kind"], chosen["weight"]) == (1, "ease", 4.0)
    assert chosen["metrics"] == {"recall@1": pytest.approx(0.49), "ndcg@1": pytest.approx(0.245)}
    assert chosen["curve"] == [pytest.approx(0.49), pytest.approx(0.48)]
    assert chosen["per_kind"] == {"ease": pytest.approx(0.49), "ials": pytest.approx(0.405)}


def test_carves_are_compared_on_the_epochs_they_share_and_ties_keep_the_first():
    one = Scored([1, 2, 3], [{("ease", 0.0): 0.2, ("ease", 1.0): 0.2}] * 3)
    two = Scored([2, 3], [{("ease", 0.0): 0.2, ("ease", 1.0): 0.2}] * 2)  # resumed at epoch 2
    chosen = choose_on_carves([one, two], "recall@1")
    assert chosen["epochs"] == [2, 3] and (chosen["epoch"], chosen["weight"]) == (2, 0.0)
    nan = Scored([1, 2], [{("ease", 0.0): float("nan")}, {("ease", 0.0): 0.1}])
    assert choose_on_carves([nan], "recall@1")["epoch"] == 2  # as the monitor: NaN never wins
    with pytest.raises(ValueError, match="NaN"):
        choose_on_carves([Scored([1], [{("ease", 0.0): float("nan")}])], "recall@1")
    with pytest.raises(ValueError, match="no scored epoch"):
        choose_on_carves([one, Scored([4], [{("ease", 0.0): 0.1}])], "recall@1")


def test_a_curve_shorter_than_the_smoothing_window_is_not_a_tie_the_first_epoch_wins():
    """Smoothing 1 over 2 epochs (or 2 over 3): every window is the whole curve, so every
    smoothed figure is equal and epoch 1 was chosen whatever the figures (a review's run:
    AUC 0.4536 then 0.5090 chose epoch 1). The epoch's own figure breaks the tie."""
    two = Scored([1, 2], [{("ease", 1.0): 0.10}, {("ease", 1.0): 0.90}])
    chosen = choose_on_carves([two], "recall@1", smoothing=1)
    assert chosen["epoch"] == 2 and chosen["metrics"]["recall@1"] == pytest.approx(0.5)
    three = Scored([1, 2, 3], [{("ease", 1.0): v} for v in (0.1, 0.2, 0.9)])
    assert choose_on_carves([three], "recall@1", smoothing=2)["epoch"] == 3
    # a longer curve still chooses on the smoothed figure: one lucky epoch does not decide
    # (smoothed: 0.55, 0.53, 0.40, 0.50, 0.50; epoch 5's own 0.9 is the lucky one)
    lucky = Scored([1, 2, 3, 4, 5], [{("ease", 1.0): v} for v in (0.5, 0.6, 0.5, 0.1, 0.9)])
    assert choose_on_carves([lucky], "recall@1", smoothing=1)["epoch"] == 1


def test_carves_choose_the_smallest_mean_of_a_lower_is_better_metric():
    """RMSE per carve: (ease, 1) at epoch 2 has the smallest mean, (0.90 + 0.92) / 2 = 0.91;
    the curve and per-kind figures stay RMSE (each epoch's smallest)."""
    def rmse(epochs, tables):
        carve = Scored(epochs, tables)
        carve.scores = [{pair: {"rmse": value} for pair, value in table.items()}
                        for table in tables]
        return carve

    one = rmse([1, 2], [{("ease", 1.0): 0.95, ("ease", 2.0): 0.93},
                        {("ease", 1.0): 0.90, ("ease", 2.0): 0.99}])
    two = rmse([1, 2], [{("ease", 1.0): 0.97, ("ease", 2.0): 0.94},
                        {("ease", 1.0): 0.92, ("ease", 2.0): 0.98}])
    chosen = choose_on_carves([one, two], "rmse")
    assert (chosen["epoch"], chosen["weight"]) == (2, 1.0)
    assert chosen["metrics"] == {"rmse": pytest.approx(0.91)}
    assert chosen["curve"] == [pytest.approx(0.935), pytest.approx(0.91)]
    assert chosen["per_kind"] == {"ease": pytest.approx(0.91)}


def test_smoothing_averages_each_epoch_with_its_neighbours():
    """(ease, 1)'s 0.30 at epoch 2 is a lone peak: with one epoch on each side it counts
    (0.05 + 0.30 + 0.05) / 3 = 0.133, and (ials, 2)'s rising 0.18, 0.19, 0.20 wins at epoch 3
    with (0.19 + 0.20) / 2 = 0.195 (the window is shorter at the ends)."""
    carve = Scored([1, 2, 3], [{("ease", 1.0): 0.05, ("ials", 2.0): 0.18},
                               {("ease", 1.0): 0.30, ("ials", 2.0): 0.19},
                               {("ease", 1.0): 0.05, ("ials", 2.0): 0.20}])
    alone = choose_on_carves([carve], "recall@1")
    assert (alone["epoch"], alone["kind"]) == (2, "ease")
    smoothed = choose_on_carves([carve], "recall@1", smoothing=1)
    assert (smoothed["epoch"], smoothed["kind"], smoothed["weight"]) == (3, "ials", 2.0)
    assert smoothed["curve"] == [pytest.approx(0.185), pytest.approx(0.19),
                                 pytest.approx(0.195)]
    assert smoothed["per_kind"] == {"ease": pytest.approx(0.175), "ials": pytest.approx(0.195)}
    assert smoothed["metrics"] == {"recall@1": pytest.approx(0.195),
                                   "ndcg@1": pytest.approx(0.0975)}
    other = Scored([1, 2, 3], [{("ease", 1.0): 0.10, ("ials", 2.0): 0.30},
                               {("ease", 1.0): 0.10, ("ials", 2.0): 0.10},
                               {("ease", 1.0): 0.10, ("ials", 2.0): 0.10}])
    chosen = choose_on_carves([carve, other], "recall@1", smoothing=1)
    # both carves, epochs 1-2: ials (0.18 + 0.19 + 0.30 + 0.10) / 4 = 0.1925
    assert (chosen["epoch"], chosen["kind"]) == (1, "ials")
    assert chosen["metrics"]["recall@1"] == pytest.approx(0.1925)
    with pytest.raises(ValueError, match="smoothing"):
        choose_on_carves([carve], "recall@1", smoothing=-1)
    with pytest.raises(ConfigError, match=r"train\.early_stopping_smoothing"):
        load_config(None, ["train.early_stopping_smoothing=-1"])


def test_a_single_carve_chooses_what_its_monitor_chose():
    callback = ValidationMetrics(SPLIT, USERS, 3, "recall@1", 0, [1],
                                 split_embeddings(False, True), linear_cf_rank=2,
                                 linear_cf_weights=(0.0, 1.0, 4.0),
                                 linear_cf_kinds={"ease": None, "ials": cf_columns(True)})
    run(callback, 2)
    chosen = choose_on_carves([callback], "recall@1")
    assert (chosen["epoch"], chosen["kind"], chosen["weight"]) == (
        callback.best_epoch, callback.best_linear_cf_kind, callback.best_linear_cf_weight)
    assert chosen["metrics"]["recall@1"] == callback.best


def test_early_stopping_on_two_smoothed_carves_averages_them(tiny_config, tiny_workspace, tmp_path):
    config = derive_config(tiny_config, tmp_path, "train.epochs=2", "train.early_stopping=true",
                           "train.early_stopping_patience=1", "train.validation_carves=2",
                           "train.early_stopping_smoothing=1",
                           "model.user_history=true", "model.linear_cf=ease",
                           "model.linear_cf_rank=8")
    # a later carve left by an interrupted selection: the first carve starts over, so must it
    stale = tmp_path / "run" / "early-stopping" / "carve-1" / "backup" / "stale"
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    result = pipeline.train(config, workspace=tiny_workspace, progress=False)
    assert not stale.exists()
    chosen = json.loads((tmp_path / "run" / "run.json").read_text())["early_stopping"]
    assert chosen["carves"] == 2 and len(chosen["carve_curves"]) == 2
    assert len(chosen["carve_interactions"]) == 2
    # the second carve trained on the first one's epochs, from its own carve of the split
    first, second = chosen["carve_curves"]
    assert len(first) == len(second) == len(chosen["curve_epochs"])
    position = chosen["curve_epochs"].index(chosen["best_epoch"])
    window = range(max(0, position - 1), position + 2)  # smoothing 1: its neighbours too
    figures = [curve[i] for curve in (first, second) for i in window if i < len(curve)]
    assert chosen["best"] == pytest.approx(np.mean(figures))
    assert (tmp_path / "run" / "early-stopping" / "carve-1" / "checkpoints").is_dir()
    assert result.epochs_run == chosen["best_epoch"]
    d = tiny_workspace.config.data
    carves = [validation_split(tiny_workspace.split, d.test_fraction, d.seed + k)
              for k in (0, 1)]
    assert not carves[0].test.equals(carves[1].test)  # a random carve: other rows
    with pytest.raises(ConfigError, match=r"train\.validation_carves"):
        load_config(None, ["train.validation_carves=0"])
