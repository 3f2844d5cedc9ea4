"""Training: ranking metrics on a validation split after every epoch, and early stopping on them.

Retrieval losses keep falling long after ranking quality peaks (the towers start memorising
training items, which the loss rewards and held-out items do not), so the number of epochs is
chosen by the metric that matters on data the model did not train on. The validation split is
carved from the training split with the same protocol (``pipeline.train``), never the test split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfmmrec.data.splits import Split

logger = logging.getLogger(__name__)


class ValidationMetrics(tf.keras.callbacks.Callback):
    """After each epoch: the split's protocol metrics of the model's current embeddings.

    Args:
      split: the validation split (its ``train`` part is what the model trains on: those
        items are excluded from the rankings, as at test time).
      user_ids: the query tower's vocabulary, in order.
      num_items: catalogue size.
      metric: the key (e.g. ``recall@20``) that decides the best epoch.
      patience: stop after this many epochs without improvement (0: never stop early).
      ks: cut-offs computed (must produce ``metric``).
      embed: ``model → (user embeddings [U, d], item embeddings [N, d])``.

    ``history`` holds every epoch's metrics; ``best_epoch`` (1-based) and ``best`` the best
    epoch's. With ``restore_best``, the model ends with the best epoch's weights.
    """

    def __init__(self, split: Split, user_ids: np.ndarray, num_items: int, metric: str,
                 patience: int, ks: Sequence[int],
                 embed: Callable[[tf.keras.Model], tuple[np.ndarray, np.ndarray]],
                 restore_best: bool = False):
        super().__init__()
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.split, self.user_ids, self.num_items = split, user_ids, num_items
        self.metric, self.patience, self.ks = metric, patience, tuple(ks)
        self.embed, self.restore_best = embed, restore_best
        self.history: list[dict[str, float]] = []
        self.best = -np.inf
        self.best_epoch = 0
        self._best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        from tfmmrec.evaluation.protocol import evaluate_embeddings

        users, items = self.embed(self.model)
        metrics = evaluate_embeddings(users, items, self.split, self.user_ids, self.ks)
        if self.metric not in metrics:
            raise ValueError(f"validation metric {self.metric!r} is not computed (available: "
                             f"{', '.join(sorted(metrics))})")
        self.history.append({k: float(v) for k, v in metrics.items()})
        value = float(metrics[self.metric])
        logger.info("epoch %d: validation %s %.4f", epoch + 1, self.metric, value)
        if logs is not None:
            logs[f"val_{self.metric}"] = value
        if value > self.best:
            self.best, self.best_epoch = value, epoch + 1
            if self.restore_best:
                self._best_weights = self.model.get_weights()
        elif self.patience and epoch + 1 - self.best_epoch >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best and self._best_weights is not None:
            self.model.set_weights(self._best_weights)
