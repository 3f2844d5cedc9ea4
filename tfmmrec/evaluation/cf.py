"""Evaluation baselines, collaborative filtering: EASE (closed form) and iALS (``implicit``).

The two classic ID-only models a content recommender must beat on warm items. Neither sees
content, so on a cold-start split (every candidate item unseen in training) both score every
candidate 0 and are not reported; ``content.ContentRidge`` carries iALS to cold items.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from tfmmrec.evaluation.baseline_base import (
    Baseline,
    binary_matrix,
    check_dense_size,
    check_ease_size,
)
from tfmmrec.towers.cf import ease_weights


class EASE(Baseline):
    """Embarrassingly Shallow Autoencoder (Steck, WWW 2019): an item-item model in closed form.

    ``B = argmin ||X − XB||² + λ||B||²`` subject to ``diag(B) = 0``, solved exactly:
    ``P = (XᵀX + λI)⁻¹``, ``B = I − P · diag(1 / diag(P))`` (so ``B_ij = −P_ij / P_jj``, zero
    diagonal: an item may not predict itself). A user's scores are ``x_u B``. Why it is here:
    with no tuning beyond λ it is among the strongest warm-item recommenders known, so it is the
    honest bar for "does content help on items we already have history for".

    As a :class:`Baseline`, the user embedding is the user's binary history row and the item
    embedding is the column ``B[:, i]``: ``users @ items.T = X B``.

    Args:
      l2: λ, the ridge penalty on the item-item weights (> 0). Larger λ shrinks towards
        popularity; it is chosen on validation (``baseline_suite.EASE_GRID``).
    Cost: one ``N × N`` inverse (``O(N³)`` time, ``N²`` floats), so catalogues above a few tens
    of thousands of items are refused with a clear error.
    """

    name = "EASE"

    def __init__(self, l2: float = 500.0):
        if not l2 > 0:
            raise ValueError(f"EASE l2 must be > 0, got {l2!r}")
        self.l2 = float(l2)
        self.weights: np.ndarray | None = None
        self._history: sp.csr_matrix | None = None

    def fit(self, train: sp.spmatrix, item_features: np.ndarray | None = None,
            present: np.ndarray | None = None) -> EASE:
        x = binary_matrix(train)
        num_users, num_items = x.shape
        check_ease_size(num_items)
        check_dense_size(num_users, num_items, "EASE", "user-history matrix")
        self.weights = ease_weights(np.asarray((x.T @ x).toarray(), np.float64), self.l2)
        self._history = x
        return self

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        if self.weights is None or self._history is None:
            raise RuntimeError("EASE is not fitted: call fit(train) first")
        return (self._history.toarray().astype(np.float32),
                np.ascontiguousarray(self.weights.T, dtype=np.float32))

    def get_config(self) -> dict[str, Any]:
        return {"l2": self.l2}


class IALS(Baseline):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) through the ``implicit`` library.

    Matrix factorisation where every unobserved user-item pair is a weak negative and observed
    pairs have confidence ``1 + alpha``: the standard strong latent-factor baseline.
    ``implicit``'s CPU solver (conjugate gradient) runs with ``num_threads=1`` and a fixed
    ``random_state``, and BLAS is held to one thread while it runs, so a fit is reproducible.

    Args:
      factors: latent dimension.
      regularization: L2 penalty on the factors.
      alpha: confidence weight of an observed interaction.
      iterations: ALS sweeps (15, ``implicit``'s default).
      seed: initialisation seed.
    Items (users) with no training interaction get zero factors, so they score 0.
    """

    name = "iALS"

    def __init__(self, factors: int = 64, regularization: float = 0.1, alpha: float = 10.0,
                 iterations: int = 15, seed: int = 0):
        if int(factors) < 1 or int(iterations) < 1:
            raise ValueError(f"iALS factors and iterations must be >= 1, got {factors!r}, "
                             f"{iterations!r}")
        if regularization < 0 or alpha <= 0:
            raise ValueError(f"iALS needs regularization >= 0 and alpha > 0, got "
                             f"{regularization!r}, {alpha!r}")
        self.factors = int(factors)
        self.regularization = float(regularization)
        self.alpha = float(alpha)
        self.iterations = int(iterations)
        self.seed = int(seed)
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None

    def fit(self, train: sp.spmatrix, item_features: np.ndarray | None = None,
            present: np.ndarray | None = None) -> IALS:
        als_class = _implicit_als()
        from threadpoolctl import threadpool_limits

        x = binary_matrix(train)
        with threadpool_limits(1, "blas"):  # implicit checks BLAS threads when constructed
            model = als_class(factors=self.factors, regularization=self.regularization,
                              alpha=self.alpha, iterations=self.iterations,
                              random_state=self.seed, num_threads=1, dtype=np.float32)
            model.fit(x, show_progress=False)
        users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)
        # implicit initialises every row; rows without data keep no meaning, so zero them.
        users[np.asarray(x.getnnz(axis=1)) == 0] = 0.0
        items[np.asarray(x.getnnz(axis=0)) == 0] = 0.0
        self.user_factors, self.item_factors = users.astype(np.float32), items.astype(np.float32)
        return self

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        if self.user_factors is None or self.item_factors is None:
            raise RuntimeError("iALS is not fitted: call fit(train) first")
        return self.user_factors, self.item_factors

    def get_config(self) -> dict[str, Any]:
        return {"factors": self.factors, "regularization": self.regularization,
                "alpha": self.alpha, "iterations": self.iterations, "seed": self.seed}


def _implicit_als():
    """``implicit``'s CPU ALS class, imported only when iALS runs (never on the serving path)."""
    try:
        from implicit.cpu.als import AlternatingLeastSquares
    except ImportError as exc:  # pragma: no cover - implicit is a dependency of tfmmrec
        from tfmmrec.errors import EnvironmentSetupError

        raise EnvironmentSetupError(
            f"the iALS baseline needs the 'implicit' package ({exc}); pip install implicit"
        ) from None
    return AlternatingLeastSquares
