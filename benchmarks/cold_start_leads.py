"""Benchmark (protocol B, offline): leads for cold items, measured on the model's CF part.

    python benchmarks/cold_start_leads.py                # seeds 0 1 2, validation carves only
    python benchmarks/cold_start_leads.py --test         # also the test split (reported only)

Protocol B ranks only held-out (cold) films, and on them the default model's score is mostly
its closed-form CF part (``towers/cf.py``): EASE factors on the query side, a kernel-ridge
prediction of the item's factors from its frozen text + poster features on the item side.
Training the whole model takes minutes per seed; this part takes seconds, so leads are
measured here first, through the model's own selection code
(``evaluation.linear_cf_selection.choose_linear_cf``: EASE λ on a random carve, the kernel
width and α on a cold-start carve). Rows:

- ``shipped``: the CF part as the default model fits it (text + image features).
- ``+ facets``: a third feature block, the same frozen MiniLM encoding only the items' short
  categorical columns (``year`` and ``genres``, joined as the text modality joins columns).
  In the full text those few tokens are drowned by the plot description.
- ``facets + image``: the facets block instead of the full text.
- ``+ prior (content)``, ``+ prior (year, genres)``: an additive popularity prior, a ridge
  from the item's features (the content features, or year thresholds + genre indicators) to
  ``log(1 + training count)`` of warm items, added as ``γ · |history| · prior`` (a query
  column ``γ · |history|``, an item column ``prior``: one dot product); γ on the inner carve.
- ``oracle prior``: the same with the held-out items' true held-out counts, γ on the carve
  itself: an upper bound on what popularity can add, not a method.
- ``facets, blocks whitened``: the ``+ facets`` map with each block PCA-whitened on warm
  items (eigenvalues shrunk by their mean), so no few directions dominate the kernel.
- ``facets + prior (kernel)``: the ``+ facets`` map plus a popularity prior that the model's
  own CF part could carry as one more factor column: log(1 + training count) for warm items,
  the kernel map's prediction of it (same width and α) for cold ones; γ on the inner carve,
  from a wider grid (the year/genre prior above chose the old grid's largest γ on seed 0).
- ``+ title``: a fourth block beside the ``+ facets`` map, the frozen MiniLM on the title
  alone (a famous title may carry what the plot does not).
- ``+ TF-IDF``: a fourth block of word statistics instead of a sentence encoder: TF-IDF of
  title and description (English stop words out, words in ≥ 2 items, sublinear counts)
  reduced to 256 dimensions by a truncated SVD (fitted on every item's text, no
  interactions).
- ``+ facets with title``: the title joined into the facets text (``data.facet_columns:
  [title, year, genres]``, what the config could ask for) instead of a fourth block.
- ``facets, collective EASE``: no content map at all: EASE fitted on a Gram matrix that also
  carries the content kernel, ``XᵀX + β·K`` (the collective / side-information EASE of Jeunen
  et al. 2020, with the Gaussian kernel of the content map for the features' inner products),
  so a cold item's column of the item-item matrix comes from the joint inverse. λ, β and the
  kernel width on the inner carve. The choice runs to the grid's large-λ edge: there
  ``B ≈ (XᵀX + β·K) / λ`` off the diagonal, so a cold item's score tends to ``Σ K(i, j)`` over
  the user's history, a content-kNN sum (a wider grid on seed 0 chose its corner again, at the
  same score).
- ``facets, supervised kernel``, ``facets, features + supervised``: the ``+ facets`` map's
  kernel computed on a supervised view of the content, the features' ridge prediction of the
  CF factors (so directions of content that do not predict CF stop counting in the
  distance), alone or beside the features; ridge α, width and kernel α on the inner carve.
- ``facets, popularity-weighted map``: the kernel ridge with warm item ``i``'s squared error
  weighted by ``count_i ** p`` (``p`` on the inner carve, 0 included): a rarely seen film's
  CF factors are noisy, so its row should count less in the fit.
- ``facets, EASE λ and rank on the cold carve``: the EASE λ and factor rank the map regresses
  onto chosen on the cold-start inner carve with the map's width and α, instead of λ on a
  random (warm) carve and rank 128.
- ``facets, history in the target``: the map regresses the user's full-rank EASE scores of
  the warm items plus ``β ×`` the observed interactions (``x_u B + β x_u``, so the films a
  user actually saw count, not only EASE's zero-diagonal prediction of them); β, width and α
  on the inner carve, β = 0 included (full-rank ``x_u B``).

"validation" rows fit on the training rows of protocol B's cold-start validation carve
(``data.splits.validation_split``, what early stopping uses) with every setting chosen on a
carve of *those* rows, and are scored on the carve's cold items. ``--test`` repeats the
non-oracle rows one level up (fit on the whole training split, settings on its carve, scored
on the test split's cold items): reported, never used to choose. Prints a table and writes
benchmarks/results/cold_start_leads.json. Needs ../shared.
"""

from __future__ import annotations

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from ml100k_workspace import prepared_ml100k

REPO = Path(__file__).resolve().parents[1]
FACET_COLUMNS = ("year", "genres")
GAMMAS = (0.0, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4)  # 0 first: ties keep no prior
WIDE_GAMMAS = (*GAMMAS, 1e-3, 2e-3, 5e-3, 1e-2)
SUPERVISED_RIDGE_ALPHAS = (1.0, 10.0, 30.0, 100.0)
SUPERVISED_WIDTHS, SUPERVISED_ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0), (0.01, 0.1, 1.0)
# collective EASE: λ, the kernel's weight β in the Gram and its width (a first grid stopping at
# 1e3 chose its largest λ and β on every seed; this one's edges are chosen too, see above)
COLLECTIVE_L2S = (1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6)
COLLECTIVE_BETAS = (1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6)
COLLECTIVE_WIDTHS = (0.1, 0.2, 0.3)
METRIC = "recall@20"
TARGET_WIDTHS, TARGET_ALPHAS = (0.3, 0.5), (0.3, 1.0, 3.0)  # the rows below, one grid
WEIGHT_POWERS = (0.0, 0.25, 0.5, 1.0)
TARGET_L2S, TARGET_RANKS = (100.0, 300.0, 1000.0), (64, 128, 256)
HISTORY_BETAS = (0.0, 0.03, 0.1, 0.3, 1.0)


def facet_features(ws, columns=FACET_COLUMNS, batch_size: int = 64) -> np.ndarray:
    """The text encoder (frozen MiniLM) on each item's ``columns`` alone, ``[N, 384]``."""
    from tfmmrec.modalities.text import join_text

    texts = join_text(ws.dataset.catalog.frame, tuple(columns)).astype(str)
    encoder = ws.encoders["text"]
    return np.concatenate([np.asarray(encoder(texts[i:i + batch_size]))
                           for i in range(0, len(texts), batch_size)])


def default_blocks(ws) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The default model's frozen feature blocks, ``{name: (features, present)}``: the
    workspace's text and image features and the facets encoded here."""
    blocks = {m: (ws.contents[m].values, ws.contents[m].mask) for m in ("text", "image")}
    blocks["facets"] = (facet_features(ws), np.ones(ws.dataset.num_items, bool))
    return blocks


def tfidf_features(frame, dimensions: int = 256) -> np.ndarray:
    """TF-IDF of each item's title and description, reduced by a truncated SVD, ``[N, d]``."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = (frame["title"].fillna("").astype(str) + ". "
            + frame["description"].fillna("").astype(str))
    counts = TfidfVectorizer(min_df=2, sublinear_tf=True, stop_words="english").fit_transform(docs)
    return TruncatedSVD(dimensions, random_state=0).fit_transform(counts)


def year_genre_indicators(frame) -> np.ndarray:
    """Release-year thresholds (``year ≥ y``, 1930–1998) and one indicator per genre."""
    year = frame["year"].astype(float).fillna(frame["year"].astype(float).median()).to_numpy()
    thresholds = np.stack([(year >= y).astype(float) for y in range(1930, 1999)], axis=1)
    genres = frame["genres"].fillna("").astype(str).str.get_dummies("|").to_numpy(float)
    return np.hstack([thresholds, genres])


class Lab:
    """One workspace; CF parts fitted through the model's own selection, scored on cold items."""

    def __init__(self, ws, blocks: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.ws, self.blocks = ws, blocks

    def features(self, names, scale: dict[str, float] | None = None):
        from tfmmrec.evaluation.content import content_features

        features, present = content_features({n: self.blocks[n][0] for n in names},
                                             {n: self.blocks[n][1] for n in names}, names)
        if scale:  # per-block weights, after each block's L2 normalisation
            widths = np.cumsum([0] + [self.blocks[n][0].reshape(len(features), -1).shape[1]
                                      for n in names])
            for i, n in enumerate(names):
                features[:, widths[i]:widths[i + 1]] *= scale.get(n, 1.0)
        return features, present

    def cf_weights(self, split, features, present, seed):
        """(users [U, k], the fitted ``LinearCFWeights``, training matrix, what was chosen) of
        the CF part fitted on ``split``."""
        from tfmmrec.evaluation.linear_cf_selection import choose_linear_cf
        from tfmmrec.evaluation.protocol import split_matrices

        ws = self.ws
        weights, info = choose_linear_cf(split, ws.user_ids, ws.dataset.num_items, rank=128,
                                         features=features, present=present, seed=seed,
                                         content="kernel")
        train, _ = split_matrices(split, ws.user_ids, ws.dataset.num_items)
        x = (train > 0).astype(np.float32)
        return np.asarray(x @ weights.query_factors, np.float32), weights, x, info

    def cf_part(self, split, features, present, seed):
        """(users [U, k], items [N, k], training matrix, info) of the CF part on ``split``."""
        users, weights, x, info = self.cf_weights(split, features, present, seed)
        return users, weights.item_embeddings(features, present), x, info

    def score(self, users, items, split, prior=None, history=None, gamma=0.0) -> float:
        from tfmmrec.evaluation.protocol import evaluate_embeddings

        if prior is not None and gamma:
            users = np.hstack([users, gamma * history[:, None]]).astype(np.float32)
            items = np.hstack([items, prior[:, None]]).astype(np.float32)
        return evaluate_embeddings(users, items, split, self.ws.user_ids, [20])[METRIC]


def whitened(block: np.ndarray, fit_on: np.ndarray, shrink: float = 1.0) -> np.ndarray:
    """``block``'s rows L2-normalised, centred and PCA-whitened on the ``fit_on`` rows, each
    eigenvalue λ scaled by ``1 / √(λ + shrink · mean λ)``."""
    x = np.asarray(block, np.float64).reshape(len(block), -1)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    centred = x - x[fit_on].mean(axis=0)
    _, singular, directions = np.linalg.svd(centred[fit_on], full_matrices=False)
    variances = singular ** 2 / fit_on.sum()
    return (centred @ directions.T) / np.sqrt(variances + shrink * variances.mean())


def kernel_prior(x, features, present, info) -> np.ndarray:
    """log(1 + training count) for warm items, its kernel-ridge prediction from ``features``
    (the CF part's chosen width and α) for the others: the CF part's own content map
    (``towers.cf.fit_linear_cf``) with the counts as a one-column factor."""
    from tfmmrec.towers.cf import fit_linear_cf

    counts = np.log1p(np.asarray(x.sum(axis=0)).ravel())[:, None]
    fitted = fit_linear_cf(np.zeros_like(counts), counts, counts[:, 0] > 0, info["alpha"],
                           features, present, info["width"])
    return fitted.item_embeddings(features, present)[:, 0]


def supervised_kernel_rows(lab, levels, features, present, seed) -> list[tuple[str, dict]]:
    """The kernel content map on a supervised view of the content: its ridge prediction of the
    CF factors (the directions of content that predict CF), alone (``supervised kernel``) or
    beside the features (``features + supervised``). Ridge α, kernel width and α chosen on
    ``levels["inner"]``, scored on ``levels["here"]``: ``[(row, {"here", "chosen"})]``."""
    import itertools

    from tfmmrec.towers.cf import fit_linear_cf, normalise_rows, ridge_fit

    scored = {}
    for level, split in levels.items():
        users, weights, _, _ = lab.cf_weights(split, features, present, seed)
        warm, factors = weights.warm, weights.item_factors
        learn = warm & np.asarray(present, bool)
        centred = normalise_rows(features - features[learn].mean(axis=0))
        for ridge_alpha in SUPERVISED_RIDGE_ALPHAS:
            w, mean_x, _ = ridge_fit(features[learn], factors[learn], ridge_alpha)
            view = (features - mean_x) @ w
            inputs = {"supervised kernel": view,
                      "features + supervised": np.hstack([centred, normalise_rows(view)])}
            for (row, x), width, alpha in itertools.product(inputs.items(), SUPERVISED_WIDTHS,
                                                            SUPERVISED_ALPHAS):
                items = fit_linear_cf(weights.query_factors, factors, warm, alpha, x, present,
                                      width).item_embeddings(x, present)
                scored.setdefault(row, {}).setdefault(level, {})[(ridge_alpha, width, alpha)] = \
                    lab.score(users, items, split)
    out = []
    for row, by_level in scored.items():
        chosen = max(by_level["inner"], key=by_level["inner"].get)
        out.append((row, {"here": by_level["here"][chosen],
                          "chosen": dict(zip(("ridge_alpha", "width", "alpha"), chosen,
                                             strict=True))}))
    return out


def collective_ease_row(lab, levels, features, present) -> dict:
    """EASE on ``XᵀX + β·K`` (``K``: the content map's Gaussian kernel over every item, rows
    centred on warm items), scored as ``x_u · B``; λ, β and the width chosen on
    ``levels["inner"]``, scored on ``levels["here"]``: ``{"here", "chosen"}``."""
    import itertools

    from tfmmrec.evaluation.protocol import evaluate_embeddings, split_matrices
    from tfmmrec.towers.cf import ease_weights, kernel_matrix, normalise_rows

    ws, present = lab.ws, np.asarray(present, bool)
    grid = list(itertools.product(COLLECTIVE_L2S, COLLECTIVE_BETAS, COLLECTIVE_WIDTHS))
    scored = {}
    for level, split in levels.items():
        train, _ = split_matrices(split, ws.user_ids, ws.dataset.num_items)
        x = (train > 0).astype(np.float64)
        gram = np.asarray((x.T @ x).todense()) if hasattr(x, "todense") else x.T @ x
        users = np.asarray(x.todense() if hasattr(x, "todense") else x, np.float32)
        learn = (np.diag(gram) > 0) & present
        z = normalise_rows(features - features[learn].mean(axis=0)) * present[:, None]
        points = grid if level == "inner" else [max(scored["inner"], key=scored["inner"].get)]
        kernels = {w: kernel_matrix(z, z, w) * np.outer(present, present)
                   for w in dict.fromkeys(width for _, _, width in points)}
        for l2, beta, width in points:
            weights = ease_weights(gram + beta * kernels[width], l2)
            scored.setdefault(level, {})[(l2, beta, width)] = evaluate_embeddings(
                users, weights.T.astype(np.float32), split, ws.user_ids, [20])[METRIC]
    (chosen, value), = scored["here"].items()
    return {"here": value, "chosen": dict(zip(("l2", "beta", "width"), chosen, strict=True))}


def _chosen_on_inner(scored: dict) -> tuple[float, tuple]:
    """(score on ``here``, setting) of the setting best on ``inner``."""
    chosen = max(scored["inner"], key=scored["inner"].get)
    return scored["here"][chosen], chosen


def weighted_kernel_items(weights, features, present, counts, power, width, alpha):
    """Item embeddings with cold items from a kernel ridge whose warm rows weigh
    ``count ** power`` (normalised to mean 1): ``(K + α W⁻¹)⁻¹`` instead of ``(K + αI)⁻¹``."""
    from tfmmrec.towers.cf import kernel_matrix, normalise_rows

    present = np.asarray(present, bool)
    learn = weights.warm & present
    factors = weights.item_factors.astype(np.float64)
    w = counts[learn].astype(np.float64) ** power
    w /= w.mean()
    mean_x = features[learn].mean(axis=0)
    mean_y = (w[:, None] * factors[learn]).sum(axis=0) / w.sum()
    anchors = normalise_rows(features[learn] - mean_x)
    gram = kernel_matrix(anchors, anchors, width)
    gram[np.diag_indices_from(gram)] += alpha / w
    coefficients = np.linalg.solve(gram, factors[learn] - mean_y)
    predicted = kernel_matrix(normalise_rows(features - mean_x), anchors, width) @ coefficients
    predicted = np.where(present[:, None], predicted + mean_y, mean_y)
    return np.where(weights.warm[:, None], factors, predicted).astype(np.float32)


def target_rows(lab, levels, features, present, seed) -> list[tuple[str, dict]]:
    """What the content map regresses onto: popularity-weighted rows, EASE λ and rank chosen on
    the cold carve, the user's history in the target (module docstring). Every setting chosen
    on ``levels["inner"]``, scored on ``levels["here"]``: ``[(row, {"here", "chosen"})]``."""
    import itertools

    from tfmmrec.evaluation.protocol import evaluate_embeddings, split_matrices
    from tfmmrec.towers.cf import (
        ease_weights,
        factorise_ease,
        fit_linear_cf,
        kernel_matrix,
        normalise_rows,
    )

    ws, present = lab.ws, np.asarray(present, bool)
    grid = list(itertools.product(TARGET_WIDTHS, TARGET_ALPHAS))
    scored: dict[str, dict] = {}
    for level, split in levels.items():
        users, weights, x, info = lab.cf_weights(split, features, present, seed)
        counts = np.asarray(x.sum(axis=0)).ravel()
        for power, (width, alpha) in itertools.product(WEIGHT_POWERS, grid):
            items = weighted_kernel_items(weights, features, present, counts, power, width,
                                          alpha)
            scored.setdefault("popularity-weighted map", {}).setdefault(level, {})[
                (power, width, alpha)] = lab.score(users, items, split)
        train, _ = split_matrices(split, ws.user_ids, ws.dataset.num_items)
        for l2, rank in itertools.product(TARGET_L2S, TARGET_RANKS):
            p, q, warm = factorise_ease(train, rank, l2, seed)
            ease_users = np.asarray(x @ p, np.float32)
            for width, alpha in grid:
                items = fit_linear_cf(p, q, warm, alpha, features, present,
                                      width).item_embeddings(features, present)
                scored.setdefault("EASE λ and rank on the cold carve", {}).setdefault(
                    level, {})[(l2, rank, width, alpha)] = lab.score(ease_users, items, split)
        history = np.asarray(x.todense(), np.float64)
        preference = history @ ease_weights(history.T @ history, info["l2"])
        learn = weights.warm & present
        z = normalise_rows(features - features[learn].mean(axis=0))
        for width, alpha in grid:
            gram = kernel_matrix(z[learn], z[learn], width)
            gram[np.diag_indices_from(gram)] += alpha
            smoother = np.linalg.solve(gram, kernel_matrix(z, z[learn], width).T)  # [n, N]
            items = np.vstack([smoother, np.ones((1, len(z)))]).T.astype(np.float32)
            for beta in HISTORY_BETAS:
                target = preference[:, learn] + beta * history[:, learn]
                mean = target.mean(axis=1, keepdims=True)  # the map's intercept
                queries = np.hstack([target - mean, mean]).astype(np.float32)
                scored.setdefault("history in the target", {}).setdefault(level, {})[
                    (beta, width, alpha)] = evaluate_embeddings(
                        queries, items, split, ws.user_ids, [20])[METRIC]
    names = {"popularity-weighted map": ("power", "width", "alpha"),
             "EASE λ and rank on the cold carve": ("l2", "rank", "width", "alpha"),
             "history in the target": ("beta", "width", "alpha")}
    out = []
    for row, keys in names.items():
        here, chosen = _chosen_on_inner(scored[row])
        out.append((row, {"here": here, "chosen": dict(zip(keys, chosen, strict=True))}))
    return out


def prior_fit(targets_from, x, warm_only=True):
    """Ridge (α = 1) from item rows to log(1 + training count), fitted on warm items."""
    from tfmmrec.towers.cf import ridge_fit

    counts = np.asarray(x.sum(axis=0)).ravel()
    warm = counts > 0
    weights, mean_x, mean_y = ridge_fit(targets_from[warm], np.log1p(counts[warm])[:, None], 1.0)
    return ((targets_from - mean_x) @ weights + mean_y).ravel()


def run_seed(lab: Lab, seed: int, test: bool, fraction: float, base_seed: int) -> list[dict]:
    from tfmmrec.data.splits import split_interactions, validation_split

    ws = lab.ws
    data_seed = base_seed + seed  # benchmarks/ml100k.py's protocol B split seeds
    outer = split_interactions(ws.dataset.interactions, "cold_start", fraction, data_seed)
    carve = validation_split(outer, fraction, data_seed)
    levels = [("validation", carve)] + ([("test", outer)] if test else [])
    rows = []
    maps = {"shipped (text + image)": (("text", "image"), None),
            "text + 0.7 · image": (("text", "image"), {"image": 0.7}),
            "+ facets (text + facets + image)": (("text", "facets", "image"), None),
            "facets + image": (("facets", "image"), None),
            "+ title (text + facets + image + title)": (("text", "facets", "image", "title"),
                                                        None),
            "+ TF-IDF (text + facets + image + TF-IDF)": (("text", "facets", "image", "tfidf"),
                                                          None),
            "+ facets with title (text + title, year, genres + image)":
                (("text", "facets_title", "image"), None)}
    indicators = year_genre_indicators(ws.dataset.catalog.frame)
    for level, split in levels:
        for name, (names, scale) in maps.items():
            features, present = lab.features(names, scale)
            users, items, _, info = lab.cf_part(split, features, present, data_seed)
            rows.append({"seed": seed, "level": level, "row": name,
                         METRIC: lab.score(users, items, split),
                         "chosen": {"width": info["width"], "alpha": info["alpha"],
                                    "l2": info["l2"]}})
        # popularity priors on top of the shipped map; γ chosen one level down
        features, present = lab.features(("text", "image"))
        inner = validation_split(split, fraction, data_seed)
        fitted = {lvl: lab.cf_part(s, features, present, data_seed)
                  for lvl, s in (("inner", inner), ("here", split))}
        for name, source in (("+ prior (content)", features),
                             ("+ prior (year, genres)", indicators)):
            scored = {}
            for lvl, s in (("inner", inner), ("here", split)):
                users, items, x, _ = fitted[lvl]
                prior, history = prior_fit(source, x), np.asarray(x.sum(axis=1)).ravel()
                scored[lvl] = {g: lab.score(users, items, s, prior, history, g) for g in GAMMAS}
            gamma = max(GAMMAS, key=lambda g: scored["inner"][g])
            rows.append({"seed": seed, "level": level, "row": name,
                         METRIC: scored["here"][gamma], "chosen": {"gamma": gamma},
                         "inner": scored["inner"]})
        # on the facets map (the default's features): whitened blocks, a kernel prior
        names = ("text", "facets", "image")
        warm_rows = np.zeros(len(indicators), bool)
        warm_rows[split.train["item_index"].to_numpy()] = True
        white = Lab(ws, {n: (whitened(lab.blocks[n][0], lab.blocks[n][1] & warm_rows),
                             lab.blocks[n][1]) for n in names})
        features, present = white.features(names)
        users, items, _, info = white.cf_part(split, features, present, data_seed)
        rows.append({"seed": seed, "level": level, "row": "facets, blocks whitened",
                     METRIC: white.score(users, items, split),
                     "chosen": {"width": info["width"], "alpha": info["alpha"]}})
        features, present = lab.features(names)
        scored = {}
        for lvl, s in (("inner", inner), ("here", split)):
            users, items, x, info = lab.cf_part(s, features, present, data_seed)
            prior = kernel_prior(x, features, present, info)
            history = np.asarray(x.sum(axis=1)).ravel()
            scored[lvl] = {g: lab.score(users, items, s, prior, history, g) for g in WIDE_GAMMAS}
        gamma = max(WIDE_GAMMAS, key=lambda g: scored["inner"][g])
        rows.append({"seed": seed, "level": level, "row": "facets + prior (kernel)",
                     METRIC: scored["here"][gamma], "chosen": {"gamma": gamma},
                     "inner": scored["inner"]})
        for row, result in supervised_kernel_rows(lab, {"inner": inner, "here": split},
                                                  features, present, data_seed):
            rows.append({"seed": seed, "level": level, "row": f"facets, {row}",
                         METRIC: result["here"], "chosen": result["chosen"]})
        result = collective_ease_row(lab, {"inner": inner, "here": split}, features, present)
        rows.append({"seed": seed, "level": level, "row": "facets, collective EASE",
                     METRIC: result["here"], "chosen": result["chosen"]})
        for row, result in target_rows(lab, {"inner": inner, "here": split}, features, present,
                                       data_seed):
            rows.append({"seed": seed, "level": level, "row": f"facets, {row}",
                         METRIC: result["here"], "chosen": result["chosen"]})
        if level == "validation":
            from tfmmrec.evaluation.protocol import split_matrices

            users, items, x, _ = fitted["here"]
            _, held = split_matrices(split, ws.user_ids, ws.dataset.num_items)
            oracle = np.log1p(np.asarray((held > 0).sum(axis=0)).ravel()).astype(np.float32)
            history = np.asarray(x.sum(axis=1)).ravel()
            scored = {g: lab.score(users, items, split, oracle, history, g) for g in GAMMAS}
            gamma = max(GAMMAS, key=scored.get)
            rows.append({"seed": seed, "level": level, "row": "oracle prior (bound)",
                         METRIC: scored[gamma], "chosen": {"gamma": gamma}})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test", action="store_true",
                        help="also score the test split (reported, never used to choose)")
    args = parser.parse_args(argv)
    from tfmmrec.evaluation.report import write_json
    start = time.perf_counter()
    prepared = prepared_ml100k()
    if prepared is None:
        return 2
    config, ws = prepared
    blocks = default_blocks(ws)
    everyone = np.ones(ws.dataset.num_items, bool)
    blocks["title"] = (facet_features(ws, ("title",)), everyone)
    blocks["tfidf"] = (tfidf_features(ws.dataset.catalog.frame), everyone)
    blocks["facets_title"] = (facet_features(ws, ("title", *FACET_COLUMNS)), everyone)
    lab = Lab(ws, blocks)
    rows = []
    for seed in args.seeds:
        rows += run_seed(lab, seed, args.test, config.data.test_fraction, config.data.seed)
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)
    names = list(dict.fromkeys(r["row"] for r in rows))
    print(f"\nRecall@20 on cold items, CF part alone, seeds {args.seeds}")
    print("| level | row | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---|---|" + "---:|" * (len(args.seeds) + 1))
    summary = []
    for level in ("validation", "test"):
        for name in names:
            values = [r[METRIC] for s in args.seeds for r in rows
                      if r["seed"] == s and r["row"] == name and r["level"] == level]
            if len(values) != len(args.seeds):
                continue
            summary.append({"level": level, "row": name, "values": values,
                            "mean": float(np.mean(values))})
            print(f"| {level} | {name} | " + " | ".join(f"{v:.4f}" for v in values)
                  + f" | {np.mean(values):.4f} |")
    write_json({"command": "python benchmarks/cold_start_leads.py"
                + (" --test" if args.test else ""), "seeds": args.seeds,
                "metric": METRIC, "summary": summary, "rows": rows,
                "seconds": time.perf_counter() - start},
               REPO / "benchmarks" / "results" / "cold_start_leads.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
