"""Evaluation baselines from content: content→CF ridge and the centred content-profile kNN.

Both read the same frozen-encoder features the towers are trained on (the encoder cache), so
they answer "how much of the model's cold-start result would a linear map or a cosine on those
features give": the bar a trained content tower must clear on items no training batch had.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from tfmmrec.evaluation.baseline_base import Baseline, binary_matrix, check_features, unit_rows
from tfmmrec.evaluation.cf import IALS
from tfmmrec.towers.cf import ridge_fit


class ContentRidge(Baseline):
    """Content→CF: ridge regression from item features to iALS item factors.

    iALS is fitted on the training matrix; a ridge regression (closed form, with an intercept:
    features and factors are centred on the warm items) maps each warm item's features to its
    factor vector. Items without training interactions (cold) are placed at their *predicted*
    factors, warm items keep their learned ones, and users keep their iALS factors. This is the
    classic content-to-collaborative mapping (e.g. "DeepMusic", van den Oord et al. 2013) in its
    simplest form; the map is linear, so it cannot memorise the training items.

    Args:
      alpha: ridge penalty (> 0), chosen on validation (``baseline_suite.RIDGE_GRID``).
      ials: the factorisation to regress onto (its settings are chosen on validation first).
      predict_warm: also replace warm items' factors by their predictions (content only).
    Cold items without content get the mean warm factor.
    """

    name = "content→CF ridge"
    needs_features = True

    def __init__(self, alpha: float = 10.0, ials: IALS | Mapping[str, Any] | None = None,
                 predict_warm: bool = False):
        if not alpha > 0:
            raise ValueError(f"ContentRidge alpha must be > 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.ials = ials if isinstance(ials, IALS) else IALS(**dict(ials or {}))
        self.predict_warm = bool(predict_warm)
        self.coefficients: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None

    def fit(self, train: sp.spmatrix, item_features: np.ndarray | None = None,
            present: np.ndarray | None = None) -> ContentRidge:
        x = binary_matrix(train)
        features, present = check_features(item_features, present, x.shape[1], self.name)
        self.ials.fit(x)
        _, factors = self.ials.embeddings()
        warm = np.asarray(x.getnnz(axis=0)) > 0
        learn = warm & present
        if not learn.any():
            raise ValueError(f"{self.name}: no item has both training interactions and content")
        self.coefficients, mean_x, mean_y = ridge_fit(features[learn], factors[learn],
                                                      self.alpha)
        predicted = (features - mean_x) @ self.coefficients + mean_y
        predicted[~present] = factors[warm].mean(axis=0)
        keep = warm if not self.predict_warm else warm & ~present
        self.item_factors = np.where(keep[:, None], factors, predicted).astype(np.float32)
        return self

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        if self.item_factors is None:
            raise RuntimeError("ContentRidge is not fitted: call fit(train, item_features)")
        return self.ials.embeddings()[0], self.item_factors

    def get_config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "ials": self.ials.get_config(),
                "predict_warm": self.predict_warm}


class ContentKNN(Baseline):
    """Centred content profile: a user is the mean of their training items' centred features.

    Items are represented by their feature minus the catalogue's mean feature (over items that
    have the modality; centring removes the direction every sentence embedding shares, which
    otherwise makes every item look alike), users by the mean of their training items' centred
    features, and the score is the cosine. No training and no hyperparameter: it measures what
    the frozen encoder gives for free.
    """

    name = "content kNN (centred)"
    needs_features = True

    def __init__(self, centre: bool = True):
        self.centre = bool(centre)
        self._users: np.ndarray | None = None
        self._items: np.ndarray | None = None

    def fit(self, train: sp.spmatrix, item_features: np.ndarray | None = None,
            present: np.ndarray | None = None) -> ContentKNN:
        x = binary_matrix(train)
        features, present = check_features(item_features, present, x.shape[1], self.name)
        if self.centre and present.any():
            features = np.where(present[:, None], features - features[present].mean(axis=0),
                                0.0)
        items = unit_rows(features)
        self._items = items.astype(np.float32)
        self._users = unit_rows(np.asarray(x @ items)).astype(np.float32)
        return self

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        if self._users is None or self._items is None:
            raise RuntimeError("ContentKNN is not fitted: call fit(train, item_features)")
        return self._users, self._items

    def get_config(self) -> dict[str, Any]:
        return {"centre": self.centre}


def content_features(values: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                     modalities: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One ``[N, Σf]`` feature matrix from several modalities' frozen features, and ``present``.

    Each modality's block is L2-normalised per item (so a 1,280-d poster feature does not
    outweigh a 384-d sentence embedding by its scale), missing blocks are zero; an item is
    present if it has any of the modalities. ``values``/``masks``: e.g.
    ``{m: ws.contents[m].values}`` / ``{m: ws.contents[m].mask}``.
    """
    names = list(modalities if modalities is not None else values)
    if not names:
        raise ValueError("content_features needs at least one modality")
    blocks, present = [], None
    for name in names:
        block = np.asarray(values[name], np.float64)
        mask = np.asarray(masks[name], bool)
        block = block.reshape(block.shape[0], -1)
        blocks.append(np.where(mask[:, None], unit_rows(block), 0.0))
        present = mask if present is None else present | mask
    return np.concatenate(blocks, axis=1), present
