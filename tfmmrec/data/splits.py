"""Data layer: split interactions into train/test by the protocol being measured.

``random`` matches the TFRS tutorials (a seeded shuffle of all interactions), ``temporal`` holds
out each user's most recent interactions (the realistic "what next" question), and ``cold_start``
holds out a fraction of *items* with all their interactions (what content towers are for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tfmmrec.errors import DataError


@dataclass
class Split:
    """Train and test interactions; ``test_items`` lists the held-out item indices (cold start)."""

    kind: str
    train: pd.DataFrame
    test: pd.DataFrame
    test_items: np.ndarray | None = None


def split_interactions(interactions: pd.DataFrame, kind: str, test_fraction: float,
                       seed: int, num_items: int | None = None) -> Split:
    """Dispatch to the split named by ``data.split``."""
    if kind == "random":
        return random_split(interactions, test_fraction, seed)
    if kind == "temporal":
        return temporal_split(interactions, test_fraction)
    if kind == "cold_start":
        return cold_start_split(interactions, test_fraction, seed, num_items)
    raise DataError(f"unknown split {kind!r}: use random, temporal or cold_start")


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
        raise DataError("temporal split needs a timestamp column in interactions.csv")
    if (test_fraction is None) == (last_n is None):
        raise DataError("temporal split takes exactly one of test_fraction or last_n")
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


def cold_start_split(interactions: pd.DataFrame, item_fraction: float, seed: int,
                     num_items: int | None = None) -> Split:
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
