"""Data layer: split interactions into train/test by the protocol being measured.

``random`` matches the TFRS tutorials (a seeded shuffle of all interactions), ``temporal`` holds
out each user's most recent interactions (the realistic "what next" question), and ``cold_start``
holds out a fraction of *items* with all their interactions (what content towers are for).
``given`` takes the user's own split from the ``split`` column of interactions.csv
(``train``/``validation``/``test``), and ``none`` trains on every row (no test set: evaluation
then needs a test file). :func:`validation_split` is the one way a tuned choice gets its
validation data: carved from the training rows with the same split kind (or the user's own
validation rows).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tfmmrec.errors import DataError

logger = logging.getLogger(__name__)

SPLIT_KINDS = ("random", "temporal", "cold_start", "given", "none")
SPLIT_COLUMN = "split"
SPLIT_VALUES = ("train", "validation", "test")


@dataclass
class Split:
    """Train and test interactions.

    ``test_items``: the only item indices ranked in evaluation (cold start: the held-out items;
    or a user's candidate list). ``validation``: the user's own validation rows (``given``
    split), used by :func:`validation_split` instead of carving one.
    """

    kind: str
    train: pd.DataFrame
    test: pd.DataFrame
    test_items: np.ndarray | None = None
    validation: pd.DataFrame | None = None

    def sizes(self) -> str:
        """``"80000 train / 20000 test interactions"`` (+ validation, + candidate items)."""
        parts = [f"{len(self.train)} train"]
        if self.validation is not None:
            parts.append(f"{len(self.validation)} validation")
        parts.append(f"{len(self.test)} test interactions")
        text = " / ".join(parts)
        if self.test_items is not None:
            text += f" ({len(self.test_items)} candidate items)"
        return f"{self.kind} split: {text}"


def split_interactions(interactions: pd.DataFrame, kind: str, test_fraction: float,
                       seed: int) -> Split:
    """Dispatch to the split named by ``data.split``."""
    if kind in ("random", "temporal", "cold_start") and not 0 < test_fraction < 1:
        # one check for every caller: config values are validated on load, but carves and
        # scripts pass fractions of their own, and 1.5 would otherwise slice a silent split
        raise DataError(f"{kind} split: test_fraction={test_fraction} must be in (0, 1) "
                        "(data.test_fraction)")
    if kind == "random":
        return random_split(interactions, test_fraction, seed)
    if kind == "temporal":
        return temporal_split(interactions, test_fraction)
    if kind == "cold_start":
        return cold_start_split(interactions, test_fraction, seed)
    if kind == "given":
        return given_split(interactions)
    if kind == "none":
        return Split("none", _take(interactions, np.arange(len(interactions))),
                     interactions.iloc[:0].reset_index(drop=True))
    raise DataError(f"unknown split {kind!r}: use one of {', '.join(SPLIT_KINDS)}")


def given_split(interactions: pd.DataFrame) -> Split:
    """The user's own split: the ``split`` column says ``train``, ``validation`` or ``test``.

    The values are checked (file, line, value) when interactions.csv is read
    (``dataset.load_dataset``); here only the partition happens.
    """
    if SPLIT_COLUMN not in interactions.columns:
        raise DataError("data.split is 'given' but interactions.csv has no split column: add "
                        "one with train/validation/test per row, or use data.split: random")
    labels = interactions[SPLIT_COLUMN].to_numpy()
    rows = np.arange(len(interactions))
    train, test = rows[labels == "train"], rows[labels == "test"]
    validation = rows[labels == "validation"]
    if not len(train):
        raise DataError("data.split is 'given' but no row of interactions.csv has split=train")
    return Split("given", _take(interactions, train), _take(interactions, test),
                 validation=_take(interactions, validation) if len(validation) else None)


def with_test(split: Split, test: pd.DataFrame | None = None,
              candidates: np.ndarray | None = None) -> Split:
    """The same training rows with a user-supplied test set and/or candidate items.

    ``candidates`` (item indices) restricts ranking to those items, e.g. new items for a
    cold-start evaluation; without them a supplied test set ranks the whole catalogue. Without
    a ``test`` the split's own test rows (and its candidates, unless replaced) are kept.
    """
    if candidates is not None:
        items = np.asarray(candidates, np.int64)
    else:
        items = split.test_items if test is None else None
    test = split.test if test is None else test
    kind = split.kind if test is split.test else "supplied"
    return Split(kind, split.train, test, test_items=items, validation=split.validation)


def validation_split(split: Split, test_fraction: float, seed: int,
                     kind: str | None = None) -> Split:
    """Validation data for tuned choices (epochs, λ, factors, fusion), never the test split.

    The user's own validation rows when the split has them (train stays ``split.train``);
    otherwise a split of ``split.train`` of the same kind, with seed ``seed + 1`` so it differs
    from the test split's. A ``given`` split without validation rows and a ``none`` split are
    carved randomly (they have no kind to repeat). ``kind`` forces a carve of that kind (e.g.
    a random carve to tune a warm-item model that a cold-start method builds on).
    """
    if kind is None and split.validation is not None:
        return Split(f"{split.kind} (validation rows)", split.train, split.validation)
    if kind is None:
        kind = split.kind if split.kind in ("random", "temporal", "cold_start") else "random"
    return split_interactions(split.train, kind, test_fraction, seed + 1)


def random_split(interactions: pd.DataFrame, test_fraction: float, seed: int) -> Split:
    """A seeded shuffle of all interactions; the last ``test_fraction`` is test (TFRS tutorial)."""
    order = np.random.default_rng(seed).permutation(len(interactions))
    num_test = round(len(interactions) * test_fraction)
    if num_test == 0 or num_test == len(interactions):
        raise DataError(f"random split of {len(interactions)} interactions with test_fraction="
                        f"{test_fraction} leaves an empty train or test set")
    cut = len(interactions) - num_test
    return Split("random", _take(interactions, order[:cut]), _take(interactions, order[cut:]))


def temporal_split(interactions: pd.DataFrame, test_fraction: float | None = None,
                   last_n: int | None = None) -> Split:
    """Per user, the latest interactions by timestamp are test: a fraction or the last ``n``.

    Users with a single interaction stay entirely in train (there is nothing to predict from).
    Ties in timestamp keep file order, so the split is deterministic.
    """
    if "timestamp" not in interactions.columns:
        raise DataError("temporal split needs a timestamp column in interactions.csv (absent, "
                        "or every value empty); fill it or use data.split: random")
    if (test_fraction is None) == (last_n is None):
        raise DataError("temporal split takes exactly one of test_fraction or last_n")
    if len(interactions) > 1 and interactions["timestamp"].nunique() == 1:
        logger.warning("every interaction has the same timestamp: the temporal split holds out "
                       "each user's last rows in file order, not their latest")
    frame = interactions.assign(_row=np.arange(len(interactions)))
    frame = frame.sort_values(["user_id", "timestamp", "_row"], kind="stable")
    position = frame.groupby("user_id", sort=False).cumcount().to_numpy()
    count = frame.groupby("user_id", sort=False)["_row"].transform("size").to_numpy()
    if last_n is not None:
        num_test = np.minimum(last_n, count - 1)
    else:
        num_test = np.array([_temporal_test_count(c, test_fraction) for c in count])
    is_test = position >= count - num_test
    rows = frame["_row"].to_numpy()
    return Split("temporal", _take(interactions, np.sort(rows[~is_test])),
                 _take(interactions, np.sort(rows[is_test])))


def _temporal_test_count(count: int, fraction: float) -> int:
    if count < 2:
        return 0
    return min(count - 1, max(1, math.floor(count * fraction)))


def cold_start_split(interactions: pd.DataFrame, item_fraction: float, seed: int) -> Split:
    """Hold out a seeded fraction of the items that have interactions, with all of them.

    The test items never appear in training, so only content (not an item id) can place them.
    """
    items = np.unique(interactions["item_index"].to_numpy())
    num_test = round(len(items) * item_fraction)
    if num_test == 0 or num_test == len(items):
        raise DataError(f"cold-start split of {len(items)} items with fraction {item_fraction} "
                        "leaves no train or no test items")
    test_items = np.sort(np.random.default_rng(seed).choice(items, num_test, replace=False))
    is_test = interactions["item_index"].isin(test_items).to_numpy()
    rows = np.arange(len(interactions))
    return Split("cold_start", _take(interactions, rows[~is_test]),
                 _take(interactions, rows[is_test]), test_items=test_items)


def _take(frame: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    return frame.iloc[rows].reset_index(drop=True)


def row_hashes(frame: pd.DataFrame, columns) -> tuple[list[str], np.ndarray]:
    """``(the columns of ``columns`` present, one 64-bit hash per row)`` of those columns, user
    ids as strings (an id read as a number and as text hashes alike): what the digests of a
    split compare (prepared shards' manifest, a run's ``run.json``)."""
    present = [c for c in columns if c in frame.columns]
    rows = frame[present].astype({"user_id": str}) if "user_id" in present else frame[present]
    return present, pd.util.hash_pandas_object(rows, index=False).to_numpy()
