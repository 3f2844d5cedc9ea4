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
from tfmmrec.towers.cf import kernel_matrix, kernel_ridge_fit, normalise_rows, ridge_fit


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
        predicted = self._regress(features[learn], factors[learn], features)
        predicted[~present] = factors[warm].mean(axis=0)
        keep = warm if not self.predict_warm else warm & ~present
        self.item_factors = np.where(keep[:, None], factors, predicted).astype(np.float32)
        return self

    def _regress(self, features: np.ndarray, factors: np.ndarray,
                 every: np.ndarray) -> np.ndarray:
        """Fit the content → factor map on ``(features, factors)``; predict for ``every``."""
        self.coefficients, mean_x, mean_y = ridge_fit(features, factors, self.alpha)
        return (every - mean_x) @ self.coefficients + mean_y

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        if self.item_factors is None:
            raise RuntimeError("ContentRidge is not fitted: call fit(train, item_features)")
        return self.ials.embeddings()[0], self.item_factors

    def get_config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "ials": self.ials.get_config(),
                "predict_warm": self.predict_warm}


class ContentKernelRidge(ContentRidge):
    """Content→CF through a kernel: kernel ridge (``towers.cf.kernel_ridge_fit``, a Gaussian
    kernel on centred, normalised features) from item features to iALS item factors.

    A cold item's factors are a weighted blend of similar warm items' factors rather than one
    linear map of its features. It is the baseline of the model's own content map
    (``model.linear_cf_content: kernel``), so the table compares the model with the strongest
    closed form it ships.

    Args:
      width: the kernel's width on the unit sphere (> 0); ``alpha``: ridge penalty (> 0); both
        chosen on validation (``baseline_suite.KERNEL_GRID``). ``ials``, ``predict_warm``: as
        ``ContentRidge``.
    """

    name = "content→CF kernel ridge"

    def __init__(self, width: float = 0.2, alpha: float = 0.1,
                 ials: IALS | Mapping[str, Any] | None = None, predict_warm: bool = False):
        if not width > 0:
            raise ValueError(f"ContentKernelRidge width must be > 0, got {width!r}")
        super().__init__(alpha, ials, predict_warm)
        self.width = float(width)

    def _regress(self, features: np.ndarray, factors: np.ndarray,
                 every: np.ndarray) -> np.ndarray:
        self.coefficients, mean_x, mean_y, anchors = kernel_ridge_fit(features, factors,
                                                                      self.width, self.alpha)
        kernel = kernel_matrix(normalise_rows(every - mean_x), anchors, self.width)
        return kernel @ self.coefficients + mean_y

    def get_config(self) -> dict[str, Any]:
        return {"width": self.width, **super().get_config()}


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
