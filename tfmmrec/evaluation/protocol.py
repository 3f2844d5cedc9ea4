"""Evaluation: apply a split's protocol to embeddings (which items rank, which are excluded).

Random/temporal splits rank the whole catalogue with each user's training items excluded, plus
TFRS's top-K accuracy without exclusion (comparable with the TFRS tutorials; left out at a K
that reaches the catalogue, where it is 1.0 for any model). A cold-start split ranks only the
held-out items, which no model saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tfmmrec.data.splits import Split
from tfmmrec.errors import DataError
from tfmmrec.evaluation.metrics import (
    evaluate_ranking,
    interactions_matrix,
    popularity_scores,
    top_k_accuracy,
)

TOP_K_ACCURACY_KS = (1, 5, 10, 50, 100)


def _user_rows(frame: pd.DataFrame, user_ids: np.ndarray) -> np.ndarray:
    lookup = pd.Index(user_ids)
    return lookup.get_indexer(frame["user_id"].astype(str))


def split_matrices(split: Split, user_ids: np.ndarray, num_items: int):
    """(train, test) user × item CSR matrices, users in vocabulary order."""
    user_ids = np.asarray(user_ids).astype(str)
    matrices = []
    for frame in (split.train, split.test):
        rows = _user_rows(frame, user_ids)
        matrices.append(interactions_matrix(rows, frame["item_index"].to_numpy(),
                                            len(user_ids), num_items))
    return matrices[0], matrices[1]


def scored_items(split: Split, user_ids: np.ndarray, num_items: int
                 ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``(relevant, excluded)``: what :func:`evaluate_embeddings` measures each user against
    (their test items among the candidates, minus their training items) and what it never
    ranks for them (their training items), as binary ``[U, C]`` matrices over the ``C``
    candidate items (the catalogue without a candidate list): known before any model runs."""
    train, test = split_matrices(split, user_ids, num_items)
    test, train = (test > 0).astype(np.int8), (train > 0).astype(np.int8)
    if split.test_items is not None:
        keep = np.unique(np.asarray(split.test_items, np.int64))
        test, train = test[:, keep], train[:, keep]
    relevant = (test - test.multiply(train)).tocsr()
    relevant.eliminate_zeros()
    return relevant, train.tocsr()


def check_evaluable(split: Split, user_ids: np.ndarray, num_items: int,
                    test: str | None = None, candidates: str | None = None) -> None:
    """Refuse a test set on which no user can be scored: every metric would be a mean over
    zero users (a table of NaN, a metrics file of nulls), which reads like a result.

    ``test``/``candidates``: the files they came from, named in the message (else the
    split's own test set and candidates)."""
    relevant, _ = scored_items(split, user_ids, num_items)
    if relevant.nnz:
        return
    if split.test.empty and split.kind == "none":  # no test set by design, not a mistake
        raise DataError("data.split: none trains on every row: pass --test FILE to evaluate")
    where = test or f"the {split.kind} split's test set"
    if split.test.empty:  # e.g. a given split whose every row says train
        raise DataError(f"nothing to evaluate: {where} has no interactions"
                        + ("" if test else f" ({_why_no_test(split.kind)}; or supply a test "
                           "file: tfmmrec evaluate --test FILE)"))
    allowed = candidate_mask(split, num_items)
    if allowed is not None and not allowed[split.test["item_index"].to_numpy(np.int64)].any():
        among = candidates or "the split's candidate items"
        raise DataError(f"nothing to evaluate: no test interaction of {where} has its "
                        f"item among the candidates in {among}")
    among = f" with an item among the candidates of {candidates}" if candidates else ""
    raise DataError(f"nothing to evaluate: every test interaction of {where}{among} is one "
                    "of its user's training interactions, and training items are never ranked "
                    "(test on interactions the model did not train on)")


def unscored_note(split: Split, user_ids: np.ndarray, num_items: int,
                  candidates: str | None = None) -> str | None:
    """One line when some test rows are left out of every metric (their item is not among the
    candidates, or is a training item of their user), else None: the split's sizes count every
    test row, so without it a test set scored on fewer rows than it holds reads as a whole.

    ``candidates``: the file they came from, named in the line."""
    total = len(split.test)
    scored = scored_rows(split, user_ids, num_items) if total else np.ones(0, bool)
    if scored.all():
        return None
    allowed = candidate_mask(split, num_items)
    outside = (np.zeros(total, bool) if allowed is None
               else ~allowed[split.test["item_index"].to_numpy(np.int64)])
    among = f" in {candidates}" if candidates else ""
    reasons = []
    if n := int(outside.sum()):
        reasons.append(f"{n} {'has its' if n == 1 else 'have their'} item outside the "
                       f"candidates{among}")
    if n := int((~scored & ~outside).sum()):
        which = "is a training interaction of its" if n == 1 else \
            "are training interactions of their"
        reasons.append(f"{n} {which} user")
    users = split.test["user_id"].astype(str)
    kept, unscored = int(scored.sum()), int(total - scored.sum())
    return (f"{unscored} of {total} test rows {'is' if unscored == 1 else 'are'} not scored "
            f"({'; '.join(reasons)}); the metrics are over {kept} row{'' if kept == 1 else 's'}"
            f" of {users[scored].nunique()} of {users.nunique()} users")


def _why_no_test(kind: str) -> str:
    """What leaves a split of ``kind`` without test rows (a temporal split was told about a
    given split's split column)."""
    return {"given": "a given split needs rows whose split column says test",
            "temporal": "a temporal split holds out each user's latest data.test_fraction of "
                        "rows, none when every user has a single interaction",
            "random": "data.test_fraction of the rows, rounded, is none here",
            }.get(kind, f"the {kind} split held no rows out")


def historyless_note(split: Split) -> str | None:
    """One line when test users have no training interaction: the history-based baselines
    (EASE, iALS, the content→CF rows, kNN) score every item 0 for them, so their rows rank
    those users' items in catalogue order (ties keep the lower index), a figure that moves
    with the order of items.csv. None when every test user has a history."""
    test_users = split.test["user_id"].astype(str).unique()
    if not len(test_users):
        return None
    without = np.setdiff1d(test_users, split.train["user_id"].astype(str).unique())
    if not len(without):
        return None
    return (f"{len(without)} of {len(test_users)} test users have no training interactions: "
            "the history-based baselines (EASE, iALS, content→CF, kNN) score every item 0 for "
            "them, so those rows rank their items in catalogue order")


def popularity_note(split: Split) -> str | None:
    """One line when the split ranks only items without a training interaction (a cold-start
    split, ``--candidates`` of held-out items): popularity then scores every one 0, and its row
    is the items' catalogue order, a figure that moves with the order of items.csv."""
    if split.test_items is None or not len(split.test_items):
        return None
    if np.isin(split.test_items, split.train["item_index"].to_numpy(np.int64)).any():
        return None
    return (f"popularity: none of the {len(split.test_items)} candidate items has a training "
            "interaction, so its row ranks them in catalogue order")


def scored_rows(split: Split, user_ids: np.ndarray, num_items: int) -> np.ndarray:
    """``[len(split.test)]`` bool: the test rows some metric measures (:func:`scored_items`)."""
    relevant, _ = scored_items(split, user_ids, num_items)
    rows = _user_rows(split.test, np.asarray(user_ids).astype(str))
    items = split.test["item_index"].to_numpy(np.int64)
    if split.test_items is not None:  # candidate columns: the sorted unique candidates
        keep = np.unique(np.asarray(split.test_items, np.int64))
        position = np.minimum(np.searchsorted(keep, items), len(keep) - 1)
        known = (rows >= 0) & (keep[position] == items)
        items = position
    else:
        known = rows >= 0
    scored = np.zeros(len(items), bool)
    if known.any():
        scored[known] = np.asarray(relevant[rows[known], items[known]]).ravel() > 0
    return scored


def recall_notes(split: Split, user_ids: np.ndarray, num_items: int,
                 ks: Sequence[int]) -> dict[str, str]:
    """``{"recall@K": note}`` for each K at which recall is 1 for any model, scores unseen:
    K reaches the number of items every evaluated user ranks (the candidates, or the
    catalogue, minus the user's training items), so all of their test items are in the top
    K. A small catalogue or a cold-start candidate list makes such a K look like a result."""
    relevant, excluded = scored_items(split, user_ids, num_items)
    users = np.flatnonzero(relevant.getnnz(axis=1))
    if not users.size:
        return {}
    total = relevant.shape[1]
    most = total - int(excluded[users].getnnz(axis=1).min())
    items = "candidate items" if split.test_items is not None else "items"
    notes = {}
    for k in ks:
        if k >= total:
            why = f"every one of the {total} {items} is in the top {k}"
        elif k >= most:
            why = (f"each user ranks at most {most} of the {total} {items} (never their "
                   f"training items), all within the top {k}")
        else:
            continue
        notes[f"recall@{k}"] = f"recall@{k}: {why}, so recall@{k} is 1 for any model"
    return notes


def candidate_mask(split: Split, num_items: int) -> np.ndarray | None:
    """``[num_items]`` bool, the items the split ranks (a cold-start split's held-out items, a
    ``--candidates`` list), or None when it ranks the whole catalogue."""
    if split.test_items is None:
        return None
    mask = np.zeros(num_items, bool)
    mask[np.asarray(split.test_items, np.int64)] = True
    return mask


def evaluate_embeddings(query_embeddings: np.ndarray, item_embeddings: np.ndarray, split: Split,
                        user_ids: np.ndarray, ks: Sequence[int], batch_size: int = 1024,
                        item_bias: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of one model (or baseline, via ``item_bias``) under the split's protocol."""
    num_items = item_embeddings.shape[0]
    train, test = split_matrices(split, user_ids, num_items)
    candidates = candidate_mask(split, num_items)
    result = evaluate_ranking(query_embeddings, item_embeddings, test, exclude=train, ks=ks,
                              candidates=candidates, batch_size=batch_size, item_bias=item_bias)
    metrics = result.to_dict()
    if candidates is None:
        # the rows the other metrics score (``scored_rows``, read off ``train``: called every
        # early-stopping epoch): a test row the user trained on would be its own answer
        rows = _user_rows(split.test, np.asarray(user_ids).astype(str))
        items = split.test["item_index"].to_numpy(np.int64)
        scored = rows >= 0
        if scored.any():
            scored[scored] = np.asarray(train[rows[scored], items[scored]]).ravel() == 0
        if scored.any():
            metrics.update(top_k_accuracy(query_embeddings[rows[scored]], item_embeddings,
                                          items[scored], ks=TOP_K_ACCURACY_KS,
                                          batch_size=batch_size, item_bias=item_bias))
    return metrics


def popularity_baseline(split: Split, user_ids: np.ndarray, num_items: int, ks: Sequence[int],
                        batch_size: int = 1024) -> dict[str, float]:
    """Rank every user's candidates by training popularity (a strong, honest baseline)."""
    train, _ = split_matrices(split, user_ids, num_items)
    bias = popularity_scores(train)
    empty_queries = np.zeros((len(user_ids), 0), np.float32)
    empty_items = np.zeros((num_items, 0), np.float32)
    return evaluate_embeddings(empty_queries, empty_items, split, user_ids, ks, batch_size,
                               item_bias=bias)


def random_baseline(split: Split, user_ids: np.ndarray, num_items: int, ks: Sequence[int],
                    seed: int = 0, batch_size: int = 1024) -> dict[str, float]:
    """Random scores (seeded): the floor every model must clear."""
    rng = np.random.default_rng(seed)
    queries = rng.normal(size=(len(user_ids), 32)).astype(np.float32)
    items = rng.normal(size=(num_items, 32)).astype(np.float32)
    return evaluate_embeddings(queries, items, split, user_ids, ks, batch_size)
