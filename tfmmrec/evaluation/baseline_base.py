"""Evaluation baselines, the shared interface: fit on a user × item matrix, score by a dot product.

Every classic baseline tfmmrec is measured against (EASE, iALS, content→CF ridge, the content
kNN) ends as two arrays, ``users [U, d]`` and ``items [N, d]``, whose product is the score
matrix. That is exactly what ``evaluation.protocol.evaluate_embeddings`` ranks for the model
itself, so a baseline row and a model row share one code path: the same split protocol, the same
seen-item exclusion, the same metric definitions and tie rule.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from tfmmrec.errors import DataError

# The memory a baseline's dense arrays may take. Past this a clear refusal beats an
# out-of-memory kill, or hours of a cubic solve, halfway through an evaluation.
MAX_DENSE_BYTES = 4 * 2**30
# EASE's item-item solve holds about 4.5 float64 copies of the N × N matrix at once (the Gram
# matrix, its inverse, the weights and temporaries): measured 3.6 GiB at 10,000 items.
EASE_COPIES = 4.5


class TooLarge(DataError):
    """A baseline's dense arrays would exceed :data:`MAX_DENSE_BYTES` on this catalogue: an
    evaluation leaves that baseline out (saying so) and scores the rest."""


class Baseline(abc.ABC):
    """A recommender fitted on training interactions whose scores are ``users @ items.T``.

    Subclasses set ``name`` (the row name in tables and ``metrics.json``) and implement
    :meth:`fit` and :meth:`embeddings`. ``fit`` takes the binary ``[U, N]`` training matrix in
    the evaluation's user order and, for content baselines, ``item_features [N, f]`` (items
    without content: zero rows or ``present=False``); ``embeddings`` returns ``(users [U, d],
    items [N, d])`` for the users of that matrix.

    Example::

        model = EASE(l2=300.0).fit(train)
        users, items = model.embeddings()
        scores = model.score([0, 1])           # [2, N], = users[[0, 1]] @ items.T
    """

    name: str = "baseline"
    needs_features: bool = False

    @abc.abstractmethod
    def fit(self, train: sp.spmatrix, item_features: np.ndarray | None = None,
            present: np.ndarray | None = None) -> Baseline:
        """Fit on ``train`` (``[U, N]``, any nonzero = an interaction); returns ``self``."""

    @abc.abstractmethod
    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """``(users [U, d], items [N, d])`` float32, for the users of the fitted matrix."""

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """The constructor arguments (what validation selected), JSON-ready."""

    def score(self, users: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Dense scores ``[len(users), N]`` for user rows (default: every user)."""
        queries, items = self.embeddings()
        if users is not None:
            queries = queries[np.asarray(users, np.int64)]
        return queries @ items.T

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def binary_matrix(train: sp.spmatrix, name: str = "train") -> sp.csr_matrix:
    """``train`` as a binary float32 CSR matrix (duplicates and weights collapse to 1)."""
    if not sp.issparse(train) or len(train.shape) != 2:
        raise ValueError(f"{name} must be a 2-D scipy.sparse users × items matrix, got "
                         f"{type(train).__name__}; build one with "
                         "evaluation.metrics.interactions_matrix()")
    matrix = sp.csr_matrix(train, dtype=np.float32, copy=True)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    matrix.data[:] = 1.0
    return matrix


def check_features(features: np.ndarray | None, present: np.ndarray | None, num_items: int,
                   who: str) -> tuple[np.ndarray, np.ndarray]:
    """``(features [N, f] float64 with absent rows zeroed, present [N] bool)``, validated."""
    if features is None:
        raise ValueError(f"{who} is a content baseline: pass item_features [N, f] (e.g. the "
                         "cached frozen-encoder features, Workspace.contents['text'].values)")
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] != num_items:
        raise ValueError(f"{who}: item_features must be [{num_items}, f] (one row per item "
                         f"column of train), got shape {features.shape}")
    present = (np.ones(num_items, bool) if present is None else np.asarray(present, bool))
    if present.shape != (num_items,):
        raise ValueError(f"{who}: present must be [{num_items}] bool, got {present.shape}")
    if not np.isfinite(features[present]).all():
        raise ValueError(f"{who}: item_features contain NaN or inf")
    return np.where(present[:, None], features, 0.0), present


def check_dense_size(rows: int, cols: int, who: str, what: str, itemsize: int = 4,
                     copies: float = 1.0) -> None:
    """Refuse (:class:`TooLarge`) a dense ``rows × cols`` array of ``itemsize``-byte numbers,
    held ``copies`` times at once, past :data:`MAX_DENSE_BYTES`, saying why. (It counted
    float32 elements once while EASE works in float64 with several copies: its limit sat at
    20,000 items, where a fit takes ~14 GiB and minutes.)"""
    need = rows * cols * itemsize * copies
    if need > MAX_DENSE_BYTES:
        raise TooLarge(f"{who} needs a dense {rows:,} × {cols:,} {what} (about "
                       f"{need / 2**30:.1f} GiB to fit), over the {MAX_DENSE_BYTES / 2**30:.0f} "
                       f"GiB limit; leave {who} out for this catalogue (e.g. --baselines "
                       "ials,knn)")


def check_ease_size(num_items: int, who: str = "EASE") -> None:
    """EASE's item-item solve on ``num_items`` items (about 10,900 at most)."""
    check_dense_size(num_items, num_items, who, "item-item matrix", itemsize=8,
                     copies=EASE_COPIES)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay zero (never NaN)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
