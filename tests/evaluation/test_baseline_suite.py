"""Baselines tuned on a validation carve of the training split, then scored like the model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tfmmrec.data.splits import Split, split_interactions, validation_split
from tfmmrec.evaluation.baseline_base import Baseline
from tfmmrec.evaluation.baseline_suite import (
    BASELINES,
    run_baselines,
    select_on_validation,
    validation_score,
)
from tfmmrec.evaluation.cf import EASE
from tfmmrec.evaluation.protocol import evaluate_embeddings, split_matrices

NUM_ITEMS = 30
USERS = np.array([f"u{u:02d}" for u in range(40)], dtype=object)


class Favourite(Baseline):
    """Scores item ``which`` highest for every user, then items by descending index."""

    name = "favourite"

    def __init__(self, which: int):
        self.which = which

    def fit(self, train, item_features=None, present=None):
        self.num_users, self.num_items = train.shape
        return self

    def embeddings(self):
        items = -np.arange(self.num_items, dtype=np.float32)[:, None] / self.num_items
        items[self.which] = 10.0
        return np.ones((self.num_users, 1), np.float32), items

    def get_config(self):
        return {"which": self.which}


def frame(rows) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=["user_id", "item_index"])
    out["item_id"] = "i" + out["item_index"].astype(str)
    out["timestamp"] = np.arange(len(out))
    return out


def test_selection_picks_the_setting_best_on_validation():
    # Every user's held-out validation item is item 7; items 0..5 are their training items.
    train = frame([(u, i) for u in USERS[:10] for i in range(6)])
    held = frame([(u, 7) for u in USERS[:10]])
    validation = Split("random", train, held)
    grid = [{"which": 3}, {"which": 7}, {"which": 9}]
    best, trials = select_on_validation(Favourite, grid, validation, USERS[:10], NUM_ITEMS,
                                        metric="recall@1")
    assert best == {"which": 7}
    assert [t["score"] for t in trials] == [0.0, 1.0, 0.0]


def test_selection_ties_keep_the_first_grid_point():
    train = frame([(u, 0) for u in USERS[:4]])
    held = frame([(u, 29) for u in USERS[:4]])  # ranked last by every candidate
    best, trials = select_on_validation(Favourite, [{"which": 5}, {"which": 6}],
                                        Split("random", train, held), USERS[:4], NUM_ITEMS,
                                        metric="recall@1")
    assert best == {"which": 5} and {t["score"] for t in trials} == {0.0}


def taste(seed: int = 0, per_user: int = 12) -> pd.DataFrame:
    """Two taste groups over two item halves; item features say which half an item is in."""
    rng = np.random.default_rng(seed)
    rows = []
    for u, user in enumerate(USERS):
        half = 0 if u % 2 == 0 else NUM_ITEMS // 2
        for i in rng.choice(NUM_ITEMS // 2, per_user, replace=False):
            rows.append((user, half + int(i)))
    return frame(rows)


FEATURES = np.repeat([[1.0, 0.0], [0.0, 1.0]], NUM_ITEMS // 2, axis=0) + np.random.default_rng(
    1).normal(scale=0.05, size=(NUM_ITEMS, 2))


def test_run_baselines_tunes_on_validation_and_scores_like_the_model():
    split = split_interactions(taste(), "random", 0.2, seed=3)
    results = run_baselines(split, USERS, NUM_ITEMS, item_features=FEATURES, ks=(5, 10),
                            grids={"ials": [{"factors": 2, "regularization": 1.0,
                                             "alpha": 1.0}]}, seed=3)
    assert list(results) == list(BASELINES.values())
    ease = results["EASE"]
    # The chosen λ is the validation argmax, computed here independently of the suite.
    validation = validation_split(split, 0.2, 3)
    train_v, _ = split_matrices(validation, USERS, NUM_ITEMS)
    scores = [validation_score(EASE(t["params"]["l2"]).fit(train_v), validation, USERS,
                               NUM_ITEMS) for t in ease.validation]
    assert [t["score"] for t in ease.validation] == pytest.approx(scores)
    assert ease.config["l2"] == ease.validation[int(np.argmax(scores))]["params"]["l2"]
    # Test metrics: exactly the model rows' code path on the refitted baseline.
    train, _ = split_matrices(split, USERS, NUM_ITEMS)
    expected = evaluate_embeddings(*EASE(**ease.config).fit(train).embeddings(), split, USERS,
                                   (5, 10))
    assert ease.metrics == pytest.approx(expected)
    # TFRS's top-K accuracy too, but not at a K that reaches the 30 items (1.0 for any model)
    assert "top_k_accuracy@10" in ease.metrics and "top_k_accuracy@50" not in ease.metrics
    # Taste is learnable: every baseline is well above chance (5 / 30 items for recall@5).
    for result in results.values():
        assert result.metrics["recall@5"] > 0.3, result.name


def test_run_baselines_on_cold_start_keeps_only_content_baselines():
    split = split_interactions(taste(), "cold_start", 0.2, seed=0)
    results = run_baselines(split, USERS, NUM_ITEMS, item_features=FEATURES, ks=(5,),
                            grids={"ials": [{"factors": 2, "regularization": 1.0,
                                             "alpha": 1.0}]}, seed=0)
    assert list(results) == ["content→CF ridge", "content→CF kernel ridge",
                             "content kNN (centred)"]
    for name in results:
        assert results[name].metrics["recall@5"] > 0.5, name
    kernel = results["content→CF kernel ridge"]
    assert len(kernel.validation) == 12 and {"width", "alpha"} <= set(kernel.config)


def test_run_baselines_without_features_or_test_rows():
    split = split_interactions(taste(), "random", 0.2, seed=0)
    assert list(run_baselines(split, USERS, NUM_ITEMS, names=["ease", "knn"], ks=(5,))) == [
        "EASE"]
    with pytest.raises(ValueError, match="unknown baseline"):
        run_baselines(split, USERS, NUM_ITEMS, names=["svd"])
    none = split_interactions(taste(), "none", 0.2, seed=0)
    from tfmmrec.errors import DataError

    with pytest.raises(DataError, match="no test interactions"):
        run_baselines(none, USERS, NUM_ITEMS)


def test_recency_weighted_ease_chooses_its_half_life_on_validation():
    from tests.evaluation.test_linear_cf_selection import RING, drifting_interactions
    from tfmmrec.evaluation.baseline_suite import EASE_RECENCY
    from tfmmrec.evaluation.recency import HALF_LIVES
    from tfmmrec.towers.history import recency_matrix

    frame = drifting_interactions()
    users = np.array([f"u{u}" for u in range(80)])
    split = split_interactions(frame, "temporal", 0.2, 0)
    results = run_baselines(split, users, RING, names=["ease", "ease_recency"],
                            metric="recall@3", ks=(3, 10))
    ease, recency = results["EASE"], results[EASE_RECENCY]
    assert recency.config["l2"] == ease.config["l2"]  # λ as the EASE row chose it
    assert [t["half_life"] for t in recency.validation] == list(HALF_LIVES)
    best = max(recency.validation, key=lambda t: t["score"])
    assert recency.config["half_life"] == best["half_life"] > 0
    # the test figures: EASE refitted on the whole training split, queried at that half-life
    train, _ = split_matrices(split, users, RING)
    expected = evaluate_embeddings(
        recency_matrix(split.train, users, RING, best["half_life"]).toarray(),
        EASE(recency.config["l2"]).fit(train).embeddings()[1], split, users, (3, 10))
    assert recency.metrics == pytest.approx(expected)
    assert recency.metrics["recall@3"] > ease.metrics["recall@3"]  # what comes next is near
    # no timestamps: no order to weight by, so the row is skipped (as on a cold-start split)
    unordered = split_interactions(frame.drop(columns="timestamp"), "random", 0.2, 0)
    assert EASE_RECENCY not in run_baselines(unordered, users, RING, names=["ease_recency"],
                                             ks=(3,))


def test_each_baseline_line_names_the_metrics_it_computed(caplog):
    """With eval.ks lacking 20, every line said "test recall@20 nan"."""
    import logging

    split = split_interactions(taste(), "random", 0.2, seed=3)
    with caplog.at_level(logging.INFO, logger="tfmmrec.evaluation.baseline_suite"):
        results = run_baselines(split, USERS, NUM_ITEMS, names=["ease", "knn"],
                                item_features=FEATURES, ks=(1, 3, 10), seed=3)
    ease, knn = results["EASE"], results["content kNN (centred)"]
    assert ease.selection_metric == "recall@20"  # chosen on validation at 20 all the same
    best = max(t["score"] for t in ease.validation)
    assert caplog.messages == [
        f"EASE: {ease.config}, chosen by validation recall@20 {best:.4f} → test recall@10 "
        f"{ease.metrics['recall@10']:.4f} ({ease.seconds:.1f} s)",
        f"content kNN (centred): {knn.config}, nothing to choose → test recall@10 "
        f"{knn.metrics['recall@10']:.4f} ({knn.seconds:.1f} s)"]
    assert "nan" not in caplog.text


def test_ease_is_refused_on_the_memory_its_solve_takes():
    """The limit counted float32 elements once; EASE solves in float64 with several copies:
    it let 20,000 items through (~14 GiB and about 17 minutes a fit)."""
    from tfmmrec.errors import DataError
    from tfmmrec.evaluation.baseline_base import TooLarge, check_ease_size

    check_ease_size(10_000)  # measured 3.6 GiB
    with pytest.raises(TooLarge, match=r"^EASE needs a dense 11,000 × 11,000 item-item matrix "
                                       r"\(about 4\.1 GiB to fit\), over the 4 GiB limit"):
        check_ease_size(11_000)
    assert issubclass(TooLarge, DataError)


def test_a_baseline_too_large_or_without_a_carve_is_skipped_and_the_rest_score(
        monkeypatch, caplog):
    """EASE over the limit aborted the whole evaluation (the model's row and every other
    baseline lost); so did a split too small to carve a validation set from, even for kNN,
    which tunes nothing."""
    import logging

    from tfmmrec.errors import DataError
    from tfmmrec.evaluation import baseline_base, baseline_suite

    split = split_interactions(taste(), "random", 0.2, seed=3)
    monkeypatch.setattr(baseline_base, "MAX_DENSE_BYTES", 1000)
    with caplog.at_level(logging.WARNING, logger="tfmmrec.evaluation.baseline_suite"):
        results = run_baselines(split, USERS, NUM_ITEMS, names=["ease", "knn"],
                                item_features=FEATURES, ks=(5,), seed=3)
    assert list(results) == ["content kNN (centred)"]
    assert caplog.messages == [f"EASE skipped: EASE needs a dense {NUM_ITEMS} × {NUM_ITEMS} "
                               "item-item matrix (about 0.0 GiB to fit), over the 0 GiB limit; "
                               "leave EASE out for this catalogue (e.g. --baselines ials,knn)"]
    monkeypatch.undo()
    caplog.clear()

    def no_carve(*args, **kwargs):
        raise DataError("cold-start split of 2 items with fraction 0.2 leaves no train or no "
                        "test items")

    monkeypatch.setattr(baseline_suite, "validation_split", no_carve)
    with caplog.at_level(logging.WARNING, logger="tfmmrec.evaluation.baseline_suite"):
        results = run_baselines(split, USERS, NUM_ITEMS, names=["ease", "ridge", "knn"],
                                item_features=FEATURES, ks=(5,), seed=3)
    assert list(results) == ["content kNN (centred)"]
    assert caplog.messages[0] == (
        "EASE skipped: it is tuned on a validation carve of the training split, and none can "
        "be made (cold-start split of 2 items with fraction 0.2 leaves no train or no test "
        "items)")
    assert len(caplog.messages) == 2


def test_a_choice_among_tied_settings_says_nothing_was_chosen(caplog):
    """K at least the validation candidates: every setting scores 1.0, and the first grid
    point was logged as "chosen by validation"."""
    import logging

    from tfmmrec.evaluation.baseline_suite import _log_chosen

    with caplog.at_level(logging.INFO, logger="tfmmrec.evaluation.baseline_suite"):
        _log_chosen("EASE", {"l2": 10.0}, "recall@20", [{"score": 1.0}, {"score": 1.0}],
                    {"recall@20": 1.0}, (20,), 0.5)
    assert caplog.messages == ["EASE: {'l2': 10.0}, every setting tied on validation recall@20 "
                               "1.0000 (the first kept) → test recall@20 1.0000 (0.5 s)"]
