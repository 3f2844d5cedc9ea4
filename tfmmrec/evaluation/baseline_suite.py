"""Evaluation baselines, tuned and scored: choose each one's settings on validation, then test.

For every baseline the protocol is the same as for the model: settings are chosen on a
validation split carved from the *training* interactions with the same split kind
(``data.splits.validation_split``, the one mechanism fusion selection also uses), the chosen
baseline is refitted on the whole training split, and its test metrics come from
``evaluation.protocol.evaluate_embeddings`` (same exclusion of seen items, same candidates, same
metric code as the model rows). Test figures are never looked at while choosing.

Example::

    results = run_baselines(ws.split, ws.user_ids, ws.dataset.num_items,
                            item_features=ws.contents["text"].values,
                            present=ws.contents["text"].mask, ks=(10, 20, 50, 100))
    results["EASE"].metrics["recall@20"], results["EASE"].config   # {'l2': 300.0}
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfmmrec.data.splits import Split, validation_split
from tfmmrec.errors import DataError
from tfmmrec.evaluation.baseline_base import Baseline, TooLarge
from tfmmrec.evaluation.cf import EASE, IALS
from tfmmrec.evaluation.content import ContentKernelRidge, ContentKNN, ContentRidge
from tfmmrec.evaluation.metrics import evaluate_ranking
from tfmmrec.evaluation.protocol import evaluate_embeddings, split_matrices
from tfmmrec.evaluation.recency import choose_half_life
from tfmmrec.towers.history import recency_matrix

logger = logging.getLogger(__name__)

# Bounded grids (every point is one fit on the validation training rows).
EASE_GRID: tuple[dict, ...] = tuple({"l2": v} for v in (10.0, 30.0, 100.0, 300.0, 1000.0,
                                                        3000.0))
IALS_GRID: tuple[dict, ...] = tuple(
    {"factors": f, "regularization": r, "alpha": a}
    for f in (32, 64, 128) for r in (3.0, 10.0, 30.0, 100.0) for a in (1.0, 3.0, 10.0))
# Strong shrinkage wins on sentence features (α acts like keeping the top principal
# directions), so the grid reaches 10⁴ (ML-100K cold start chose 1000 from a grid ending there).
RIDGE_GRID: tuple[dict, ...] = tuple({"alpha": v} for v in (0.1, 1.0, 10.0, 100.0, 300.0,
                                                            1000.0, 3000.0, 10000.0))
# Kernel ridge (width, α): narrow widths blend a few near neighbours, wide ones approach the
# linear ridge (ML-100K cold-start carves, seeds 42–44, chose widths 0.2–0.5 for the model's
# map, towers/cf.py).
KERNEL_WIDTHS, KERNEL_ALPHAS = (0.1, 0.2, 0.3, 0.5), (0.01, 0.1, 1.0)
KERNEL_GRID: tuple[dict, ...] = tuple({"width": w, "alpha": a} for w in KERNEL_WIDTHS
                                      for a in KERNEL_ALPHAS)

# EASE queried with recency-weighted histories: the bar for a model whose CF query weights
# recent items (``model.linear_cf_half_life``), so a table shows what it adds beyond recency.
EASE_RECENCY = "EASE · recency-weighted history"
# Short names (CLI, config) → row names (tables, metrics.json).
BASELINES = {"ease": EASE.name, "ease_recency": EASE_RECENCY, "ials": IALS.name,
             "ridge": ContentRidge.name, "kernel": ContentKernelRidge.name,
             "knn": ContentKNN.name}
ID_ONLY = ("ease", "ease_recency", "ials")
# The rows whose settings are chosen on a validation carve (kNN has none to choose).
TUNED = ("ease", "ease_recency", "ials", "ridge", "kernel")


@dataclass
class BaselineResult:
    """One baseline's test metrics, the settings chosen on validation, and every trial."""

    name: str
    metrics: dict[str, float]
    config: dict[str, Any]
    selection_metric: str
    validation: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "selection_metric": self.selection_metric,
                "validation": self.validation, "seconds": self.seconds}


def validation_score(model: Baseline, validation: Split, user_ids: np.ndarray, num_items: int,
                     metric: str = "recall@20", batch_size: int = 1024) -> float:
    """``metric`` (``recall@K``, ``ndcg@K``, ``hit_rate@K`` or ``mrr``) of a baseline fitted on
    ``validation.train``, on ``validation.test`` (seen items excluded, candidates respected)."""
    users, items = model.embeddings()
    train, test = split_matrices(validation, user_ids, num_items)
    candidates = None
    if validation.test_items is not None:
        candidates = np.zeros(num_items, bool)
        candidates[validation.test_items] = True
    _, _, k = metric.rpartition("@")
    ks = [int(k)] if k.isdigit() else [10]
    result = evaluate_ranking(users, items, test, exclude=train, ks=ks, candidates=candidates,
                              batch_size=batch_size)
    if metric not in result.metrics:
        raise ValueError(f"unknown selection metric {metric!r}: use recall@K, ndcg@K, "
                         "hit_rate@K or mrr")
    return float(result.metrics[metric])


def select_on_validation(factory: Callable[..., Baseline], grid: Sequence[Mapping[str, Any]],
                         validation: Split, user_ids: np.ndarray, num_items: int, *,
                         item_features: np.ndarray | None = None,
                         present: np.ndarray | None = None, metric: str = "recall@20",
                         batch_size: int = 1024) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fit ``factory(**params)`` on ``validation.train`` for each grid point; keep the best.

    Returns ``(best params, [{"params", "score"} for every point])``. Ties keep the earlier
    grid point (list grids from the cheapest or most regularised setting first).
    """
    if not grid:
        raise ValueError("select_on_validation needs at least one grid point")
    train, _ = split_matrices(validation, user_ids, num_items)
    trials, best, best_score = [], None, -np.inf
    for params in grid:
        model = factory(**params).fit(train, item_features, present)
        score = validation_score(model, validation, user_ids, num_items, metric, batch_size)
        trials.append({"params": dict(params), "score": score})
        logger.debug("%s %s: validation %s %.4f", model.name, params, metric, score)
        if score > best_score:
            best, best_score = dict(params), score
    if best is None:  # every score NaN: no validation user had a reachable item
        raise DataError(f"validation split has no user with a held-out item to rank "
                        f"({len(validation.test)} validation interactions); use a larger "
                        "data.test_fraction or more data")
    return best, trials


def run_baselines(split: Split, user_ids: np.ndarray, num_items: int, *,
                  names: Sequence[str] = tuple(BASELINES),
                  item_features: np.ndarray | None = None, present: np.ndarray | None = None,
                  ks: Sequence[int] = (10, 20, 50, 100), metric: str = "recall@20",
                  validation_fraction: float = 0.2, seed: int = 42, model_seed: int = 0,
                  grids: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                  batch_size: int = 1024) -> dict[str, BaselineResult]:
    """Tune (on validation) and test the named baselines; returns ``{row name: result}``.

    Args:
      split: the run's split (``Workspace.split``); baselines fit on ``split.train``.
      user_ids: users in evaluation order (``Workspace.user_ids``).
      names: keys of :data:`BASELINES`. EASE (either kind) and iALS see no content, so on a
        cold-start split (every candidate unseen in training) they are skipped;
        ``ridge``/``kernel``/``knn`` are skipped without ``item_features``, ``ease_recency``
        without a ``timestamp`` column (λ as the ``ease`` row's, the half-life from
        ``recency.HALF_LIVES`` on the same carve).
      item_features / present: ``[N, f]`` content features and ``[N]`` presence (e.g.
        ``content.content_features`` of the cached encoder features).
      metric: what validation maximises. ``validation_fraction`` / ``seed``: the carve
        (``data.test_fraction`` / ``data.seed``, as fusion selection uses them).
      model_seed: iALS's initialisation seed. ``grids``: override a baseline's grid by key.
    The ridge regresses onto iALS factors with iALS's validated settings; on a cold-start split
    those are chosen on a random carve of the training rows (factor quality on warm items is
    what the regression needs), and the ridge α on the cold-start validation split.
    """
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}: choose from {', '.join(BASELINES)}")
    if len(split.test) == 0:
        raise DataError(f"the {split.kind} split has no test interactions to score baselines "
                        "on; supply a test set")
    grids = {"ease": EASE_GRID, "ials": IALS_GRID, "ridge": RIDGE_GRID, "kernel": KERNEL_GRID,
             **(grids or {})}
    train, _ = split_matrices(split, user_ids, num_items)
    # Cold: every candidate item is unseen in training (an ID-only model cannot rank them).
    cold = split.test_items is not None and train[:, split.test_items].nnz == 0
    try:
        validation = validation_split(split, validation_fraction, seed)
        warm_validation = (validation_split(split, validation_fraction, seed, kind="random")
                           if cold else validation)
    except DataError as exc:  # a tiny split: the tuned rows go, the rest still score
        validation = warm_validation = None
        no_carve = str(exc)
    common = {"item_features": item_features, "present": present, "metric": metric,
              "batch_size": batch_size}
    results: dict[str, BaselineResult] = {}
    ials_params: dict | None = None
    ease_params: dict | None = None

    def tune_ease() -> tuple[dict, list]:
        return select_on_validation(EASE, grids["ease"], validation, user_ids, num_items,
                                    **common)

    def tune_ials() -> tuple[dict, list]:
        return select_on_validation(lambda **p: IALS(**p, seed=model_seed), grids["ials"],
                                    warm_validation, user_ids, num_items, **common)

    def run_one(key: str) -> None:
        nonlocal ials_params, ease_params
        start = time.perf_counter()
        if key == "ease_recency":
            if ease_params is None:
                ease_params, _ = tune_ease()
            users, items, config, trials = _recency_ease(split, validation, user_ids,
                                                         num_items, ease_params, metric)
            metrics = evaluate_embeddings(users, items, split, user_ids, ks, batch_size)
            results[EASE_RECENCY] = BaselineResult(EASE_RECENCY, metrics, config, metric,
                                                   trials, time.perf_counter() - start)
            _log_chosen(EASE_RECENCY, config, metric, trials, metrics, ks,
                        results[EASE_RECENCY].seconds)
            return
        if key == "ease":
            params, trials = tune_ease()
            ease_params = params
            model: Baseline = EASE(**params)
        elif key == "ials":
            params, trials = tune_ials()
            ials_params = params
            model = IALS(**params, seed=model_seed)
        elif key in ("ridge", "kernel"):
            if ials_params is None:
                ials_params, _ = tune_ials()
            chosen_ials = {**ials_params, "seed": model_seed}
            kind = ContentRidge if key == "ridge" else ContentKernelRidge
            params, trials = select_on_validation(
                functools.partial(kind, ials=chosen_ials), grids[key], validation,
                user_ids, num_items, **common)
            model = kind(**params, ials=chosen_ials)
        else:
            params, trials = {}, []
            model = ContentKNN()
        model.fit(train, item_features, present)
        users, items = model.embeddings()
        metrics = evaluate_embeddings(users, items, split, user_ids, ks, batch_size)
        results[model.name] = BaselineResult(model.name, metrics, model.get_config(), metric,
                                             trials, time.perf_counter() - start)
        _log_chosen(model.name, model.get_config(), metric, trials, metrics, ks,
                    results[model.name].seconds)

    for key in names:
        if key in ID_ONLY and cold:
            logger.info("%s skipped: it sees no content, and no test item was in training",
                        BASELINES[key])
            continue
        if key in ("ridge", "kernel", "knn") and item_features is None:
            logger.info("%s skipped: no item features", BASELINES[key])
            continue
        if key == "ease_recency" and "timestamp" not in split.train.columns:
            logger.info("%s skipped: the interactions have no timestamps", EASE_RECENCY)
            continue
        if validation is None and key in TUNED:
            logger.warning("%s skipped: it is tuned on a validation carve of the training "
                           "split, and none can be made (%s)", BASELINES[key], no_carve)
            continue
        try:
            run_one(key)
        except TooLarge as exc:  # one baseline too large for this catalogue: the rest score
            logger.warning("%s skipped: %s", BASELINES[key], exc)
    return results


def _log_chosen(name: str, chosen: dict, metric: str, trials: list[dict[str, Any]],
                metrics: dict, ks: Sequence[int], seconds: float) -> None:
    """One line per baseline: what validation chose by ``metric`` (and its score there), and
    a test figure the evaluation computed (``metric`` itself needs its K among ``eval.ks``; a
    half-life of 0 says the recency-weighted row is plain EASE on this split)."""
    scores = [t["score"] for t in trials if t.get("score") is not None
              and not np.isnan(t["score"])]
    how = (f"chosen by validation {metric} {max(scores):.4f}" if scores
           else "nothing to choose")
    if len(scores) > 1 and min(scores) == max(scores):  # nothing was chosen: say so
        how = (f"every setting tied on validation {metric} {max(scores):.4f} (the first "
               "kept)")
    shown = _test_metric(metric, ks)
    logger.info("%s: %s, %s → test %s %.4f (%.1f s)", name, chosen, how, shown,
                metrics[shown], seconds)


def _test_metric(metric: str, ks: Sequence[int]) -> str:
    """``metric`` when the evaluation computes it, else its family at the nearest configured K
    (``recall@20`` with ``eval.ks: [1, 3, 10]`` → ``recall@10``)."""
    family, at, k = metric.rpartition("@")
    if not (at and k.isdigit()) or int(k) in ks:
        return metric
    return f"{family}@{min(ks, key=lambda c: (abs(c - int(k)), -c))}"


def _recency_ease(split: Split, validation: Split, user_ids: np.ndarray, num_items: int,
                  ease_params: dict, metric: str
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, Any], list[dict[str, Any]]]:
    """EASE with ``ease_params`` (λ as the EASE row chose it), queried with histories weighted
    by recency: the half-life is chosen on ``validation`` (``recency.choose_half_life``, EASE
    fitted once on its training rows), then EASE is refitted on the whole training split.
    Returns ``(users, items, chosen config, half-life trials)``."""

    def item_columns(part: Split) -> np.ndarray:  # scores = weighted history row @ B
        train, _ = split_matrices(part, user_ids, num_items)
        return EASE(**ease_params).fit(train).embeddings()[1]

    half_life, trials = choose_half_life(validation, user_ids, num_items,
                                         lambda recency: recency.toarray(),
                                         item_columns(validation), metric)
    users = recency_matrix(split.train, user_ids, num_items, half_life).toarray()
    return (users.astype(np.float32), item_columns(split),
            {**ease_params, "half_life": half_life}, trials)
