"""Towers: a linear collaborative-filtering part of the two towers, fitted in closed form.

Why: on warm items the strongest simple recommender known is an item-item linear model (EASE,
Steck 2019): ``score(u, i) = x_u · B[:, i]`` with ``B`` solved exactly from the training
matrix. A two-tower model trained by SGD reaches it slowly, if at all. So the model carries it:
``B`` is factorised (``B ≈ P Qᵀ``, rank ``k``), the query gets ``x_u P`` (the sum of the
user's history rows of ``P``) and the item gets ``Q_i``; both are *appended* to the learned
embeddings, so one dot product — one index, one export — scores

    <q, i>  =  <q_learned, i_learned>  +  weight · x_u P Q_iᵀ        (cosine + weighted EASE)

The learned towers train with their own loss (the CF part is left out of training steps: EASE
scores are good rankings but flat softmax logits, and a learned weight collapses towards the
softmax optimum, not the ranking one); ``weight`` is then chosen with the number of epochs on
the validation split (``training.validation.ValidationMetrics``), so the model can only be
as good as the better of its parts there, and is better where they are complementary.

An item with no training interaction has no column in ``B``; its ``Q`` row is predicted from
content by a ridge regression fitted on the warm items (content→CF, as DeepMusic / DropoutNet's
linear baselines do), so cold and new items (``tfmmrec catalog add``) are placed by their text,
image or audio alone — inside the same item tower. The ``kernel`` variant regresses through
a Gaussian kernel on the centred, normalised features (kernel ridge: a new item's ``Q`` is a
weighted blend of its nearest warm items' ``Q`` rows, not one linear map of its features).

An iALS block can replace EASE's (``model.linear_cf: ials``) or sit beside it
(``ease+ials``): iALS item factors ``Y`` (``implicit``'s), the user folded in from the history
by iALS's own user step, solved exactly in the graph (``foldin: exact``, a batched Cholesky
per user, ``ials_user_factors``) or linearised (``foldin: linear``, ``ials_foldin_factors``:
again ``x_u P``); the query is ``[Σ P_ease, β u_ials]`` and the item ``[Q_ease, Y]``
(β chosen on validation). Only evaluation and serving run the query side (training steps
leave the CF part out), so the per-user solve costs nothing in training.

Recency (``half_life`` > 0): the ``n``-th most recent history item enters the query with
weight ``0.5 ** (n / half_life)`` instead of 1 (EASE rows summed with those weights; in the
iALS user step they scale each item's preference). What a user did last predicts what they do
next far better than what they did first when the test is the future (ML-100K's temporal
protocol: EASE's validation Recall@20 0.234 → 0.305), and not at all when held-out items are
drawn at random (0.336 at 0, 0.331 at 80 items, 0.274 at 5). So it is chosen on a validation
carve of the split's own kind (``evaluation.linear_cf_selection``), 0 where it does not help.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import tensorflow as tf


def ease_weights(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE's item-item matrix from the Gram matrix ``XᵀX`` (``[N, N]``, float64).

    ``B = I − P · diag(1 / diag(P))`` with ``P = (XᵀX + λI)⁻¹``: zero diagonal, so an item may
    not predict itself.
    """
    if not l2 > 0:
        raise ValueError(f"EASE l2 must be > 0, got {l2!r}")
    gram = np.array(gram, np.float64)
    gram[np.diag_indices_from(gram)] += l2
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def ridge_fit(features: np.ndarray, targets: np.ndarray,
              alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge with an unpenalised intercept: ``(W [f, k], mean_x [f], mean_y [k])`` such that
    ``(x − mean_x) W + mean_y`` predicts ``y``; ``W = (XcᵀXc + αI)⁻¹ XcᵀYc``.

    Solved in the dual (``Xc (XcXcᵀ + αI)⁻¹``, same solution) when there are fewer rows than
    features, so a 1,280-d image feature on a few hundred items stays cheap.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64)
    mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mean_x, y - mean_y
    if xc.shape[0] >= xc.shape[1]:
        gram = xc.T @ xc
        gram[np.diag_indices_from(gram)] += alpha
        weights = np.linalg.solve(gram, xc.T @ yc)
    else:
        gram = xc @ xc.T
        gram[np.diag_indices_from(gram)] += alpha
        weights = xc.T @ np.linalg.solve(gram, yc)
    return weights, mean_x, mean_y


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm, exactly as ``tf.math.l2_normalize`` does (ε = 1e-12)."""
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=-1, keepdims=True), 1e-12))


def kernel_matrix(queries: np.ndarray, anchors: np.ndarray, width: float) -> np.ndarray:
    """``exp((⟨z_q, z_a⟩ − 1) / width)`` for unit rows: a Gaussian kernel on the sphere
    (``‖z_q − z_a‖² = 2 − 2⟨z_q, z_a⟩``), 1 for identical directions."""
    return np.exp((queries @ anchors.T - 1.0) / width)


def kernel_ridge_fit(features: np.ndarray, targets: np.ndarray, width: float,
                     alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kernel ridge from content to CF factors: ``(coefficients [n, k], mean_x [f],
    mean_y [k], anchors [n, f])`` such that
    ``kernel_matrix(normalise(x − mean_x), anchors, width) @ coefficients + mean_y`` predicts
    ``y``; ``anchors = normalise(X − mean_x)``, ``coefficients = (K + αI)⁻¹ (Y − mean_y)``.
    """
    if not width > 0:
        raise ValueError(f"kernel width must be > 0, got {width!r}")
    if not alpha > 0:
        raise ValueError(f"kernel ridge alpha must be > 0, got {alpha!r}")
    x = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64)
    mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
    anchors = normalise_rows(x - mean_x)
    gram = kernel_matrix(anchors, anchors, width)
    gram[np.diag_indices_from(gram)] += alpha
    return np.linalg.solve(gram, y - mean_y), mean_x, mean_y, anchors


@dataclass
class LinearCFWeights:
    """The closed-form solution, as arrays (``LinearCF`` holds them as variables).

    ``query_factors`` ``P [N, k]`` and ``item_factors`` ``Q [N, k]``: ``B ≈ P Qᵀ``;
    ``warm [N]``: items with training interactions (the rest get the content prediction);
    ``content_weights [f, k]``, ``content_mean [f]``, ``factor_mean [k]``: the ridge
    ``(x − content_mean) W + factor_mean`` (``f = 0``: no content, cold items get
    ``factor_mean``). With ``anchors`` ``[n, f]`` (kernel ridge, ``kernel_ridge_fit``), ``W``
    is ``[n, k]`` and the prediction is
    ``kernel_matrix(normalise(x − content_mean), anchors, kernel_width) W + factor_mean``.
    With ``foldin_columns`` ``c`` > 0 the last ``c`` columns are an iALS block whose query half
    is iALS's exact user step (``ials_user_factors`` with ``foldin_regularization``,
    ``foldin_alpha``, times ``foldin_weight``), not ``x_u P`` (``P``'s columns there unused).
    """

    query_factors: np.ndarray
    item_factors: np.ndarray
    warm: np.ndarray
    content_weights: np.ndarray
    content_mean: np.ndarray
    factor_mean: np.ndarray
    anchors: np.ndarray | None = None
    kernel_width: float = 0.0
    foldin_columns: int = 0
    foldin_regularization: float = 0.0
    foldin_alpha: float = 1.0
    foldin_weight: float = 1.0
    half_life: float = 0.0

    def user_embeddings(self, history: sp.spmatrix,
                        recency: sp.spmatrix | None = None) -> np.ndarray:
        """``[U, k]`` query halves for histories ``[U, N]`` (what ``LinearCF.query`` computes
        in the graph, at score weight 1). A matrix is unordered, so with ``half_life`` > 0 the
        histories' recency weights are passed as ``recency``
        (``towers.history.recency_matrix(frame, users, N, half_life)``)."""
        if self.half_life > 0 and recency is None:
            raise ValueError(f"this CF part weights histories by recency (half-life "
                             f"{self.half_life:g} items): pass their recency_matrix")
        x = sp.csr_matrix(history if recency is None else recency, dtype=np.float32)
        if recency is None:
            x.data[:] = 1.0
        users = np.asarray(x @ self.query_factors, np.float32)
        c = self.foldin_columns
        if c:
            users[:, -c:] = self.foldin_weight * ials_user_factors(
                self.item_factors[:, -c:], x, self.foldin_regularization, self.foldin_alpha)
        return users

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The content prediction of ``Q`` for rows of ``features`` ``[n, f]``."""
        centred = features - self.content_mean
        if self.anchors is None:
            return centred @ self.content_weights + self.factor_mean
        kernel = kernel_matrix(normalise_rows(centred), self.anchors, self.kernel_width)
        return kernel @ self.content_weights + self.factor_mean

    def item_embeddings(self, features: np.ndarray | None = None,
                        present: np.ndarray | None = None) -> np.ndarray:
        """``[N, k]``: ``Q`` for warm items, the content prediction for the others."""
        predicted = np.broadcast_to(self.factor_mean, self.item_factors.shape).copy()
        if features is not None and self.content_weights.shape[0]:
            predicted = self.predict(features)
            if present is not None:
                predicted[~np.asarray(present, bool)] = self.factor_mean
        return np.where(self.warm[:, None], self.item_factors, predicted).astype(np.float32)


def factorise_ease(train: sp.spmatrix, rank: int, l2: float,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EASE on the binary ``[U, N]`` training matrix, factorised: ``(P [N, k], Q [N, k],
    warm [N])`` with ``B ≈ P Qᵀ``.

    ``B`` is split symmetrically (``P = U_k S_k^½``, ``Q = V_k S_k^½``) from a seeded
    randomized SVD (scikit-learn), so the two halves have comparable scales and ``Q`` is a well
    conditioned regression target for content.
    """
    from sklearn.utils.extmath import randomized_svd

    x = sp.csr_matrix(train, dtype=np.float64)
    x.data[:] = 1.0
    num_items = x.shape[1]
    if not 1 <= rank <= num_items:
        raise ValueError(f"linear CF rank must be in [1, {num_items}] (the catalogue size), "
                         f"got {rank}")
    weights = ease_weights(np.asarray((x.T @ x).toarray()), l2)
    u, s, vt = randomized_svd(weights, rank, n_iter=7, random_state=seed)
    root = np.sqrt(s)
    warm = np.asarray(x.getnnz(axis=0)) > 0
    return (u * root).astype(np.float32), (vt.T * root).astype(np.float32), warm


def ials_foldin_factors(item_factors: np.ndarray, regularization: float,
                        alpha: float) -> np.ndarray:
    """``P [N, k]`` such that ``x_u P`` is iALS's user step for a binary history ``x_u``,
    linearised: ``u = α (YᵀY + λI)⁻¹ Σ_{j ∈ history} y_j``.

    The exact step (``implicit``'s, confidence ``α``) adds ``(α − 1) Σ y_j y_jᵀ`` to the
    matrix, a per-user solve; dropping it keeps the fold-in one gather-and-sum in the graph.
    """
    if regularization < 0 or not alpha > 0:
        raise ValueError(f"iALS fold-in needs regularization >= 0 and alpha > 0, got "
                         f"{regularization!r}, {alpha!r}")
    y = np.asarray(item_factors, np.float64)
    gram = y.T @ y
    gram[np.diag_indices_from(gram)] += max(regularization, 1e-9)
    return (alpha * np.linalg.solve(gram, y.T).T).astype(np.float32)


def ials_user_factors(item_factors: np.ndarray, history: sp.spmatrix, regularization: float,
                      alpha: float) -> np.ndarray:
    """iALS's exact user step for the histories in the rows of ``history`` ``[U, N]``, as
    ``implicit`` solves it for binary ones (confidence ``alpha`` on observed items, 1
    elsewhere); a history's values ``w_j`` (recency weights) scale the items' preferences:

        u = (YᵀY + λI + (α − 1) Σ_{j∈H} y_j y_jᵀ)⁻¹ α Σ_{j∈H} w_j y_j

    ``[U, k]`` float32 (float64 solves); users with an empty history get 0. The reference
    for ``LinearCF``'s in-graph fold-in.
    """
    if regularization < 0 or not alpha > 0:
        raise ValueError(f"iALS fold-in needs regularization >= 0 and alpha > 0, got "
                         f"{regularization!r}, {alpha!r}")
    y = np.asarray(item_factors, np.float64)
    x = sp.csr_matrix(history)
    gram = y.T @ y
    gram[np.diag_indices_from(gram)] += max(regularization, 1e-9)
    users = np.zeros((x.shape[0], y.shape[1]))
    for u in range(x.shape[0]):
        items = x.indices[x.indptr[u]:x.indptr[u + 1]]
        if items.size:
            seen = y[items]
            preference = x.data[x.indptr[u]:x.indptr[u + 1]]
            users[u] = np.linalg.solve(gram + (alpha - 1.0) * seen.T @ seen,
                                       alpha * preference @ seen)
    return users.astype(np.float32)


def fit_linear_cf(query_factors: np.ndarray, item_factors: np.ndarray, warm: np.ndarray,
                  alpha: float, features: np.ndarray | None = None,
                  present: np.ndarray | None = None,
                  kernel_width: float = 0.0,
                  foldin: Mapping[str, float] | None = None) -> LinearCFWeights:
    """Add the content regression (warm items' features → their ``Q`` rows) to a
    factorisation: ridge, or kernel ridge with ``kernel_width`` > 0.

    ``features`` ``[N, f]`` (e.g. ``evaluation.content.content_features``) and ``present [N]``;
    without them (or with fewer than two warm items that have content) cold items get the mean
    warm factor. Kernel anchors are kept for every catalogue row (rows that are not warm with
    content have zero coefficients), so their shapes depend on the catalogue only.
    ``foldin`` (``{"columns", "regularization", "alpha", "weight"}``): the trailing iALS block
    whose query half is the exact user step (``LinearCFWeights``).
    """
    num_items, rank = item_factors.shape
    width = 0 if features is None else features.shape[1]
    kernel = kernel_width > 0
    coefficients = np.zeros((num_items if kernel else width, rank))
    content_mean = np.zeros(width)
    anchors = np.zeros((num_items, width)) if kernel else None
    factor_mean = item_factors[warm].mean(axis=0) if warm.any() else np.zeros(rank)
    if features is not None:
        learn = warm & (np.ones(len(warm), bool) if present is None
                        else np.asarray(present, bool))
        if learn.sum() >= 2 and kernel:
            fitted, content_mean, factor_mean, learned_anchors = kernel_ridge_fit(
                features[learn], item_factors[learn], kernel_width, alpha)
            coefficients[learn], anchors[learn] = fitted, learned_anchors
        elif learn.sum() >= 2:
            coefficients, content_mean, factor_mean = ridge_fit(
                features[learn], item_factors[learn], alpha)
    return LinearCFWeights(query_factors, item_factors, np.asarray(warm, bool),
                           coefficients.astype(np.float32), content_mean.astype(np.float32),
                           factor_mean.astype(np.float32),
                           None if anchors is None else anchors.astype(np.float32),
                           float(kernel_width), **_foldin_fields(foldin, rank))


def _foldin_fields(foldin: Mapping[str, float] | None, width: int) -> dict[str, float]:
    if not foldin:
        return {}
    columns = int(foldin["columns"])
    if not 1 <= columns <= width:
        raise ValueError(f"iALS fold-in columns must be in [1, {width}], got {columns}")
    if foldin["regularization"] < 0 or not foldin["alpha"] > 0 or foldin["weight"] < 0:
        raise ValueError(f"iALS fold-in needs regularization >= 0, alpha > 0 and weight >= 0, "
                         f"got {dict(foldin)!r}")
    return {"foldin_columns": columns,
            "foldin_regularization": float(foldin["regularization"]),
            "foldin_alpha": float(foldin["alpha"]), "foldin_weight": float(foldin["weight"])}


def empty_weights(num_items: int, rank: int, feature_width: int,
                  kernel: bool = False, foldin_columns: int = 0) -> LinearCFWeights:
    """Zeros of the right shapes: a model about to be restored from a checkpoint."""
    rows = num_items if kernel else feature_width
    return LinearCFWeights(np.zeros((num_items, rank), np.float32),
                           np.zeros((num_items, rank), np.float32), np.zeros(num_items, bool),
                           np.zeros((rows, rank), np.float32),
                           np.zeros(feature_width, np.float32), np.zeros(rank, np.float32),
                           np.zeros((num_items, feature_width), np.float32) if kernel else None,
                           1.0 if kernel else 0.0, foldin_columns=int(foldin_columns))


@tf.keras.utils.register_keras_serializable(package="tfmmrec")
class LinearCF(tf.keras.layers.Layer):
    """The closed-form CF part of both towers (see the module docstring).

    Args:
      weights: a ``LinearCFWeights`` (held as non-trainable variables, checkpointed).
      modalities: the content modalities whose frozen features feed the ridge, in the order of
        its feature blocks (each block L2-normalised, zero when missing — exactly
        ``evaluation.content.content_features``).
      initial_weight: the weight of the CF score relative to the learned towers' cosine
        (a non-trainable variable: chosen on validation and set with ``set_weight``).

      foldin_chunk: users per batched Cholesky in the exact iALS fold-in (bounds its memory:
        ``foldin_chunk × longest history × c`` floats for the padded history factors).

    ``query(items, keep)`` → ``[B, k]``; ``item(content, item_index)`` → ``[B, k]``.
    """

    def __init__(self, weights: LinearCFWeights, modalities: Sequence[str] = (),
                 initial_weight: float = 1.0, foldin_chunk: int = 256, **kwargs):
        super().__init__(**kwargs)
        if int(foldin_chunk) < 1:
            raise ValueError(f"foldin_chunk must be >= 1, got {foldin_chunk!r}")
        self.foldin_chunk = int(foldin_chunk)
        self.rank = int(weights.query_factors.shape[1])
        self.modalities = tuple(modalities)
        self.initial_weight = float(initial_weight)

        def constant(name, value, dtype=tf.float32):
            return tf.Variable(np.asarray(value), trainable=False, name=name, dtype=dtype)

        self.query_factors = constant("cf_query_factors", weights.query_factors)
        self.item_factors = constant("cf_item_factors", weights.item_factors)
        self.warm = constant("cf_warm", weights.warm.astype(np.float32))
        self.content_weights = constant("cf_content_weights", weights.content_weights)
        self.content_mean = constant("cf_content_mean", weights.content_mean)
        self.factor_mean = constant("cf_factor_mean", weights.factor_mean)
        self.kernel = weights.anchors is not None
        if self.kernel:  # kernel ridge (``kernel_ridge_fit``); checkpointed like the rest
            self.anchors = constant("cf_content_anchors", weights.anchors)
            self.kernel_width = constant("cf_kernel_width", weights.kernel_width)
        self.half_life = constant("cf_half_life", float(weights.half_life))
        self.foldin_columns = int(weights.foldin_columns)
        if self.foldin_columns:  # iALS's exact user step: λ, α and β are fitted, so checkpointed
            y = np.asarray(weights.item_factors[:, -self.foldin_columns:], np.float64)
            gram = y.T @ y + max(weights.foldin_regularization, 1e-9) * np.eye(y.shape[1])
            self.foldin_gram = constant("cf_foldin_gram", gram.astype(np.float32))
            self.foldin_alpha = constant("cf_foldin_alpha", weights.foldin_alpha)
            self.foldin_weight = constant("cf_foldin_weight", weights.foldin_weight)
        self.score_weight = self.add_weight(
            name="cf_score_weight", shape=[],
            initializer=tf.keras.initializers.Constant(self.initial_weight), trainable=False)

    def set_weight(self, weight: float) -> None:
        """The weight of the CF score in the served dot product (chosen on validation)."""
        if not weight >= 0:
            raise ValueError(f"linear CF weight must be >= 0, got {weight!r}")
        self.score_weight.assign(float(weight))

    def query(self, items: tf.RaggedTensor, keep: tf.Tensor | None = None) -> tf.Tensor:
        """``Σ_{j ∈ history} w_j P_j`` per row (``w_j`` 1, as EASE scores, or the recency
        weight of the ``j``-th item from the row's end: rows are oldest first), times the
        score weight. ``keep``: flat ``[nnz]`` 0/1 mask over ``items.flat_values``."""
        rows = items.value_rowids()
        recency = self._recency(items.row_splits, rows)
        factors = tf.gather(self.query_factors, items.flat_values)
        if keep is not None:
            factors *= keep[:, None]
        count = items.nrows()
        summed = tf.math.unsorted_segment_sum(factors * recency[:, None], rows, count)
        if self.foldin_columns:
            summed = tf.concat([summed[:, :-self.foldin_columns],
                                self.foldin_weight * self._foldin(items, keep, recency)],
                               axis=-1)
        return self.score_weight * summed

    def _recency(self, row_splits: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        """``0.5 ** (age / half_life)`` per history entry (age 0: a row's last item), 1 with
        no half-life: ``towers.history.history_table``'s weights, from the order alone."""
        splits = tf.cast(row_splits, tf.int64)
        rows = tf.cast(rows, tf.int64)
        position = tf.range(tf.size(rows, out_type=tf.int64)) - tf.gather(splits, rows)
        age = tf.cast(tf.gather(splits[1:] - splits[:-1], rows) - 1 - position, tf.float32)
        decayed = tf.pow(0.5, age / tf.maximum(self.half_life, 1e-6))
        return tf.where(self.half_life > 0, decayed, tf.ones_like(decayed))

    def _foldin(self, items: tf.RaggedTensor, keep: tf.Tensor | None,
                preference: tf.Tensor) -> tf.Tensor:
        """iALS's exact user step per row (``ials_user_factors``), ``foldin_chunk`` rows at a
        time: ``(G + (α−1) Y_HᵀY_H)⁻¹ α Σ w_j y_j`` by a batched Cholesky solve."""
        c = self.foldin_columns
        values = tf.cast(items.flat_values, tf.int32)
        splits = tf.cast(items.row_splits, tf.int32)
        mask = tf.ones(tf.shape(values), tf.float32) if keep is None else tf.cast(keep,
                                                                               tf.float32)
        count = tf.shape(splits)[0] - 1
        chunks = tf.maximum((count + self.foldin_chunk - 1) // self.foldin_chunk, 1)
        table = self.item_factors[:, -c:]

        def solve(i, out):
            start = i * self.foldin_chunk
            stop = tf.minimum(start + self.foldin_chunk, count)
            lo, hi = splits[start], splits[stop]
            part = tf.RaggedTensor.from_row_splits(
                tf.gather(table, values[lo:hi]) * mask[lo:hi, None],
                splits[start:stop + 1] - lo, validate=False)
            seen = part.to_tensor(shape=[None, None, c])  # [b, L, c], zero padded
            weight = tf.RaggedTensor.from_row_splits(
                preference[lo:hi], splits[start:stop + 1] - lo, validate=False).to_tensor()
            gram = self.foldin_gram + (self.foldin_alpha - 1.0) * tf.matmul(
                seen, seen, transpose_a=True)
            rhs = self.foldin_alpha * tf.reduce_sum(seen * weight[:, :, None],
                                                    axis=1)[:, :, None]
            user = tf.linalg.cholesky_solve(tf.linalg.cholesky(gram), rhs)[:, :, 0]
            return i + 1, out.write(i, user)

        out = tf.TensorArray(tf.float32, size=chunks, infer_shape=False,
                             element_shape=tf.TensorShape([None, c]))
        _, out = tf.while_loop(lambda i, _: i < chunks, solve, [tf.constant(0), out])
        return tf.reshape(out.concat(), [count, c])

    def item(self, content: Mapping[str, tf.Tensor], item_index=None) -> tf.Tensor:
        """``Q_i`` for warm items (when ``item_index`` is known), the content prediction
        otherwise (items unseen in training, or added to the catalogue later)."""
        predicted = self._predict(content)
        if item_index is None:
            return predicted
        index = tf.cast(item_index, tf.int32)
        warm = tf.gather(self.warm, index)[:, None]
        return warm * tf.gather(self.item_factors, index) + (1.0 - warm) * predicted

    def _predict(self, content: Mapping[str, tf.Tensor]) -> tf.Tensor:
        if not self.modalities:
            return tf.zeros([_batch_size(content), self.rank]) + self.factor_mean
        blocks, present = [], None
        for m in self.modalities:
            value = tf.cast(content[m], tf.float32)
            value = tf.reshape(value, [tf.shape(value)[0], -1])
            mask = tf.cast(content[f"{m}_mask"], tf.float32)[:, None]
            blocks.append(tf.math.l2_normalize(value, axis=-1) * mask)
            present = mask if present is None else tf.maximum(present, mask)
        features = tf.concat(blocks, axis=-1)
        centred = features - self.content_mean
        if self.kernel:
            similarity = tf.matmul(tf.math.l2_normalize(centred, axis=-1), self.anchors,
                                   transpose_b=True)
            centred = tf.exp((similarity - 1.0) / self.kernel_width)
        predicted = tf.matmul(centred, self.content_weights) + self.factor_mean
        return present * predicted + (1.0 - present) * self.factor_mean

    def get_config(self):
        """Shapes, not the fitted arrays (they are weights): ``from_config`` builds zeros of
        the same shapes and ``set_weights`` fills them."""
        return {**super().get_config(), "rank": self.rank, "modalities": list(self.modalities),
                "initial_weight": self.initial_weight, "kernel": self.kernel,
                "num_items": int(self.item_factors.shape[0]),
                "feature_width": int(self.content_mean.shape[0]),
                "foldin_columns": self.foldin_columns, "foldin_chunk": self.foldin_chunk}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        weights = empty_weights(config.pop("num_items"), config.pop("rank"),
                                config.pop("feature_width"), kernel=config.pop("kernel"),
                                foldin_columns=config.pop("foldin_columns", 0))
        return cls(weights, **config)


def _batch_size(content: Mapping[str, tf.Tensor]) -> tf.Tensor:
    for value in tf.nest.flatten(content):
        return tf.shape(value)[0]
    raise ValueError("LinearCF.item needs content or an item index to size its batch")
