"""Training: ranking metrics on a validation split after every epoch, and early stopping on them.

Retrieval losses keep falling long after ranking quality peaks (the towers start memorising
training items, which the loss rewards and held-out items do not), so the number of epochs is
chosen by the metric that matters on data the model did not train on. The validation split is
carved from the training split with the same protocol (``pipeline.train``), never the test split.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfmmrec.data.splits import Split
from tfmmrec.evaluation.rating import orientation

logger = logging.getLogger(__name__)

# Candidate weights of the closed-form CF score next to the learned cosine (towers/cf.py),
# tried after every validation epoch: 0 = the learned towers alone, the largest ≈ EASE alone
# (the cosine only breaks its ties).
LINEAR_CF_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 1024.0)


class ValidationMetrics(tf.keras.callbacks.Callback):
    """After each epoch: the split's protocol metrics of the model's current embeddings.

    Args:
      split: the validation split (its ``train`` part is what the model trains on: those
        items are excluded from the rankings, as at test time).
      user_ids: the query tower's vocabulary, in order.
      num_items: catalogue size.
      metric: the key (e.g. ``recall@20``, or a ranking head's ``rmse``: lower is better,
        ``evaluation.rating.LOWER_IS_BETTER``) that decides the best epoch.
      patience: stop after this many epochs without improvement (0: never stop early).
      ks: cut-offs computed (must produce ``metric``).
      embed: ``model → (user embeddings [U, d], item embeddings [N, d])``.
      head_metrics: ``model → {name: value}``, the ranking head's metrics on the validation
        split (``evaluation.ranking.evaluate_ranking_head``), computed once per epoch and
        reported beside the retrieval metrics (None: none).
      linear_cf_rank: with a closed-form CF part (``towers.cf``, its weight 1 while
        validating), the last ``linear_cf_rank`` columns of the user embeddings are that part:
        every epoch is scored at each of ``linear_cf_weights`` and keeps its best.
      linear_cf_kinds: ``model.linear_cf: auto``: candidate CF parts by kind, each
        ``(user columns, item columns)`` of width ``linear_cf_rank`` replacing the embeddings'
        own (None: keep them). They are closed-form, fixed while the towers train, so every
        epoch scores every (kind, weight) pair and keeps the best jointly with the epoch
        (ties keep the earlier kind, then the smaller weight).

    ``history`` holds the metrics of every epoch this process ran (``epochs`` their 1-based
    numbers: a resumed run starts after its backup's epoch), ``scores`` every (kind, weight)
    pair's metrics at each of those epochs (``choose_on_carves`` averages them over carves);
    ``best_epoch`` (1-based) and
    ``best`` the best epoch's (``best_linear_cf_weight`` and ``best_linear_cf_kind`` the
    choices there). With ``restore_best``, the model ends with the best epoch's weights (of
    an epoch this process ran).

    ``state_file``: where every epoch's figures are kept (rewritten atomically after each
    epoch, removed when training ends), so that a run resumed from its backup after
    ``resumed_after`` epochs chooses on every epoch, as an uninterrupted run does: the figures
    of the epochs the backup holds are read back (and whether they had already stopped the
    run), and the backup's own epoch is scored again from the restored weights if the run was
    killed before its figures were written. Without it (or without the file) a resumed run
    chooses among the epochs it ran itself.
    """

    def __init__(self, split: Split, user_ids: np.ndarray, num_items: int, metric: str,
                 patience: int, ks: Sequence[int],
                 embed: Callable[[tf.keras.Model], tuple[np.ndarray, np.ndarray]],
                 restore_best: bool = False, linear_cf_rank: int = 0,
                 linear_cf_weights: Sequence[float] = LINEAR_CF_WEIGHTS,
                 linear_cf_kinds: Mapping[str, tuple[np.ndarray, np.ndarray] | None]
                 | None = None,
                 head_metrics: Callable[[tf.keras.Model], Mapping[str, float]] | None = None,
                 state_file: str | os.PathLike | None = None, resumed_after: int = 0):
        super().__init__()
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.split, self.user_ids, self.num_items = split, user_ids, num_items
        self.metric, self.patience, self.ks = metric, patience, tuple(ks)
        self.embed, self.restore_best = embed, restore_best
        self.head_metrics = head_metrics
        self.sign = orientation(metric)
        self.worst = -self.sign * np.inf  # what any figure improves on
        self.history: list[dict[str, float]] = []
        # the 1-based epoch of each history entry: a run resumed from a backup starts later
        self.epochs: list[int] = []
        self.scores: list[dict[tuple[str | None, float | None], dict[str, float]]] = []
        self.best = self.worst
        self.best_epoch = 0
        self.linear_cf_rank = linear_cf_rank
        self.linear_cf_weights = tuple(linear_cf_weights) if linear_cf_rank else (None,)
        self.best_linear_cf_weight: float | None = None
        if linear_cf_kinds is not None and not (linear_cf_rank and linear_cf_kinds):
            raise ValueError("linear_cf_kinds needs linear_cf_rank > 0 and at least one kind")
        self.linear_cf_kinds = dict(linear_cf_kinds or {None: None})
        self.best_linear_cf_kind: str | None = None
        self._best_weights = None
        self.state_file, self.resumed_after = state_file, resumed_after
        self._stopped = False  # the figures read back had stopped the run already

    def on_train_begin(self, logs=None):
        # after the backup's restore (an earlier callback); also when no epoch is left to run
        if self.resumed_after and self.state_file is not None:
            self._resume(self.resumed_after)

    def on_epoch_end(self, epoch, logs=None):
        if self._stopped:  # killed between the stop and the end: that epoch is not the run's
            self.model.stop_training = True
            return
        entry, table, value = self._score()
        self._record(epoch + 1, entry, table)
        logger.info("epoch %d: validation %s %.4f", epoch + 1, self.metric, value)
        if logs is not None:
            logs[f"val_{self.metric}"] = value
        if self.restore_best and self.best_epoch == epoch + 1:
            self._best_weights = self.model.get_weights()
        elif self.patience and epoch + 1 - self.best_epoch >= self.patience:
            self.model.stop_training = True
        if self.state_file is not None:
            self._save()

    def _score(self) -> tuple[dict, dict, float]:
        """This epoch's history entry, every (kind, weight) pair's metrics, and its figure."""
        from tfmmrec.evaluation.protocol import evaluate_embeddings

        embedded = self.embed(self.model)
        head = dict(self.head_metrics(self.model)) if self.head_metrics is not None else {}
        kind, weight, metrics, per_kind, table = None, None, None, {}, {}
        for name, columns in self.linear_cf_kinds.items():
            users, items = self._with_columns(embedded, columns)
            per_kind[name] = self.worst
            for candidate in self.linear_cf_weights:
                scored = {**evaluate_embeddings(self._weighted(users, candidate), items,
                                                self.split, self.user_ids, self.ks), **head}
                if self.metric not in scored:
                    raise ValueError(f"validation metric {self.metric!r} is not computed "
                                     f"(available: {', '.join(sorted(scored))})")
                table[name, candidate] = {k: float(v) for k, v in scored.items()}
                value = float(scored[self.metric])
                if self._improves(value, per_kind[name]):
                    per_kind[name] = value
                if metrics is None or self._improves(value, metrics[self.metric]):
                    kind, weight, metrics = name, candidate, scored
        entry = {k: float(v) for k, v in metrics.items()}
        if weight is not None:
            entry["linear_cf_weight"] = float(weight)
        if kind is not None:
            entry["linear_cf"] = kind
            entry["linear_cf_scores"] = per_kind
        return entry, table, float(metrics[self.metric])

    def _record(self, epoch: int, entry: dict, table: dict) -> None:
        """Add 1-based ``epoch``'s figures, and make it the best if it improves on it."""
        self.history.append(entry)
        self.epochs.append(epoch)
        self.scores.append(table)
        value = float(entry[self.metric])
        if self._improves(value, self.best):
            self.best, self.best_epoch = value, epoch
            self.best_linear_cf_weight = entry.get("linear_cf_weight")
            self.best_linear_cf_kind = entry.get("linear_cf")

    # -- a resumed run's earlier epochs --------------------------------------------------------
    def _save(self) -> None:
        from tfmmrec.files import write_json

        try:
            write_json({"epochs": self.epochs, "history": self.history,
                        "scores": [[[kind, weight, metrics] for (kind, weight), metrics
                                    in table.items()] for table in self.scores]},
                       self.state_file)
        except OSError as exc:  # only a resume reads it: training goes on
            logger.warning("cannot keep the validation figures in %s (%s): a run resumed "
                           "after this epoch chooses among the epochs it runs", self.state_file,
                           exc)

    def _read_back(self, done: int) -> list[tuple[int, dict, dict]]:
        """``(epoch, entry, table)`` of epochs 1..``done`` as the interrupted run saved them
        ([] when the file is missing, damaged or of another shape)."""
        from tfmmrec.data.tfrecords import read_json

        if not Path(self.state_file).is_file():
            return []
        saved = read_json(self.state_file)  # damaged: None, with a warning
        try:
            return [(epoch, _numbers(entry), {(kind, weight): _numbers(metrics)
                                              for kind, weight, metrics in table})
                    for epoch, entry, table in zip(saved["epochs"], saved["history"],
                                                   saved["scores"], strict=True)
                    if epoch <= done]
        except (KeyError, TypeError, ValueError):
            return []

    def _resume(self, done: int) -> None:
        """The figures of epochs 1..``done`` (the backup's), as the interrupted run recorded
        them; epoch ``done``'s scored again if the kill came before they were written."""
        kept = self._read_back(done)
        if [epoch for epoch, _, _ in kept] not in (list(range(1, done + 1)),
                                                    list(range(1, done))):
            logger.warning("%s does not hold the validation figures of epochs 1-%d: the resumed "
                           "run chooses among the epochs from %d on", self.state_file, done, done)
            kept = []
        for epoch, entry, table in kept:
            self._record(epoch, entry, table)
        if not kept or kept[-1][0] < done:  # the restored weights are the backup's epoch
            self._record(done, *self._score()[:2])
        self._stopped = bool(self.patience) and done - self.best_epoch >= self.patience
        if self._stopped:
            self.model.stop_training = True
        logger.info("resumed early stopping: validation figures of epochs 1-%d read back, best "
                    "so far epoch %d (%s %.4f)", done, self.best_epoch, self.metric, self.best)

    def _improves(self, value: float, than: float) -> bool:
        """``value`` is better than ``than`` in the metric's direction (a NaN never is)."""
        return bool(self.sign * value > self.sign * than)

    def _with_columns(self, embedded: tuple[np.ndarray, np.ndarray],
                      columns: tuple[np.ndarray, np.ndarray] | None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The embeddings with their CF columns replaced by ``columns`` (None: as they are)."""
        if columns is None:
            return embedded
        return tuple(np.concatenate([x[:, :-self.linear_cf_rank], c], axis=1)
                     for x, c in zip(embedded, columns, strict=True))

    def _weighted(self, users: np.ndarray, weight: float | None) -> np.ndarray:
        """User embeddings with their CF columns scaled by ``weight`` (None: as they are)."""
        if weight is None:
            return users
        users = np.array(users, copy=True)
        users[:, -self.linear_cf_rank:] *= weight
        return users

    def on_train_end(self, logs=None):
        if self.restore_best and self._best_weights is not None:
            self.model.set_weights(self._best_weights)
        if self.state_file is not None:  # the choice is made: the run records it
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.state_file)


def _numbers(values: dict) -> dict:
    """A saved figure table with its JSON nulls (``write_json``'s NaN) back as NaN."""
    return {key: float("nan") if value is None else value for key, value in values.items()}


def choose_on_carves(monitors: Sequence[ValidationMetrics], metric: str,
                     smoothing: int = 0) -> dict:
    """The (epoch, CF kind, CF weight) with the best ``metric`` (the smallest for
    ``evaluation.rating.LOWER_IS_BETTER``) averaged over several validation carves' monitors,
    on the epochs every carve scored.

    One carve's figures for the ~20 (kind, weight) pairs of an epoch differ by less than the
    carve's own noise, so a choice made on one carve can land on a pair that another carve (or
    the test split) ranks far lower; the mean of independent carves halves that noise's
    variance with two. ``smoothing`` > 0 also averages each epoch's figures with those of the
    ``smoothing`` epochs on each side (fewer at the ends), so one lucky epoch cannot decide
    alone, at no extra training. Pairs are visited as one monitor visits them (epochs
    ascending, kinds in order, weights ascending) and only a strictly better figure replaces
    the choice, so one carve without smoothing chooses exactly what its monitor chose. Equal
    smoothed figures are told apart by the epoch's own figure: on a curve no longer than
    ``smoothing + 1`` epochs every window is the whole curve, and the first epoch won every
    such tie (0.10 then 0.90 chose epoch 1).

    Returns ``{"epoch", "kind", "weight", "metrics"}`` (the chosen pair's metrics, averaged as
    they were chosen on), ``"curve"`` (each common epoch's best figure), ``"epochs"`` and
    ``"per_kind"`` (each kind's best figure).
    """
    if not monitors:
        raise ValueError("choose_on_carves needs at least one monitor")
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    common = sorted(set.intersection(*(set(m.epochs) for m in monitors)))
    if not common:
        raise ValueError("the validation carves share no scored epoch")
    tables = [[m.scores[m.epochs.index(epoch)] for m in monitors] for epoch in common]
    sign = orientation(metric)  # compared as sign · figure: larger is better
    best, best_value, curve, per_kind = None, (-np.inf, -np.inf), [], {}
    for position, epoch in enumerate(common):
        window = [t for ts in tables[max(0, position - smoothing):position + smoothing + 1]
                  for t in ts]
        epoch_best = -np.inf  # sign · figure, as best_value
        for pair, metrics in tables[position][0].items():
            mean = {key: float(np.mean([t[pair][key] for t in window])) for key in metrics}
            value = sign * mean[metric]
            own = sign * float(np.mean([t[pair][metric] for t in tables[position]]))
            epoch_best = max(epoch_best, value)
            per_kind[pair[0]] = max(per_kind.get(pair[0], -np.inf), value)
            if (value, own) > best_value:  # as the monitor: a NaN figure is never chosen
                best, best_value = {"epoch": epoch, "kind": pair[0], "weight": pair[1],
                                    "metrics": mean}, (value, own)
        curve.append(sign * epoch_best)
    if best is None:
        raise ValueError(f"no validation {metric} figure to choose on (every one is NaN)")
    return {**best, "curve": curve, "epochs": common,
            "per_kind": {kind: sign * value for kind, value in per_kind.items()}}
