"""What data a run trained on: a fingerprint recorded in ``run.json``, checked on restore.

A split is drawn from ``interactions.csv`` by row position (``data.splits``): the same config
over a file whose rows were reordered or appended draws other training and test rows. A model
restored over such a file was scored on interactions it had trained on (recall 0.18 → 0.24 on a
shuffled file, the same split sizes printed, no warning), and a changed catalogue or user list
surfaced as an encoder or checkpoint-shape error blaming the config. ``run.json`` therefore
records digests of the training split, the test split, the catalogue's item ids (their order is
the item index) and the user vocabulary; restoring the run for evaluation or export compares
them with what the data gives now, before anything is encoded or rebuilt, and refuses a
difference in one line saying what changed and what to do.

The digests are of the rows' content, sorted: how a split is drawn is untouched (every
benchmark figure depends on it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from tfmmrec.data.splits import row_hashes
from tfmmrec.errors import DataError
from tfmmrec.training.finished_run import read_run_record

logger = logging.getLogger(__name__)

FINGERPRINT_KEY = "data"  # run.json's field
# What the model reads of an interaction row (item_index follows from item_id and the
# catalogue's order, which the "items" digest covers).
ROW_COLUMNS = ("user_id", "item_id", "timestamp", "rating")
# data.splits.with_test's kind for a split whose test rows the user supplied (--test FILE):
# only its training rows must be the run's.
SUPPLIED_TEST = "supplied"
# (field, what it is in a message, what it counts)
PARTS = (("train", "the training split", "interactions"),
         ("test", "the test split", "interactions"),
         ("items", "the catalogue (items table)", "items"),
         ("users", "the users (query tower vocabulary)", "users"))
_warned_unrecorded: set[str] = set()


def rows_digest(frame: pd.DataFrame) -> dict:
    """``{"count", "row_hashes_sha256"}`` of a split's rows, independent of their order: the
    split's content, not how the file happened to be ordered (the rows' hashes, sorted). The
    key names the scheme: a run recorded under an earlier one (``sha256`` of the rows' text)
    is compared on what both record, the count."""
    columns, hashes = row_hashes(frame, ROW_COLUMNS)
    digest = hashlib.sha256(json.dumps([columns, len(frame)]).encode())
    digest.update(np.ascontiguousarray(np.sort(hashes)))
    return {"count": len(frame), "row_hashes_sha256": digest.hexdigest()}


def ids_digest(ids: Iterable) -> dict:
    """``{"count", "sha256"}`` of ids in their order (an item's index is its position)."""
    ids = [str(i) for i in ids]
    return {"count": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}


def data_fingerprint(dataset, split, parts: Iterable[str] = ("train", "test", "items", "users")
                     ) -> dict[str, dict]:
    """The digests ``run.json`` records of the data a run trained on (``dataset``: a
    ``data.dataset.Dataset``; ``split``: the ``data.splits.Split`` it trained on)."""
    compute = {"train": lambda: rows_digest(split.train),
               "test": lambda: rows_digest(split.test),
               "items": lambda: ids_digest(dataset.catalog.item_ids),
               "users": lambda: ids_digest(dataset.user_ids)}
    return {part: compute[part]() for part in parts}


def records_data(run_file: Path) -> bool:
    """Whether ``run_file`` records digests of the data its run trained on (so that data can
    be recognised wherever it now lies)."""
    return run_file.is_file() and FINGERPRINT_KEY in read_run_record(run_file)


def check_trained_data(run_file: Path, dataset, split) -> None:
    """Refuse (``DataError``) to restore the run ``run_file`` records over other data than it
    trained on. A split whose test rows the user supplied is checked on its training rows
    (and catalogue and users) only. A run recorded before the fingerprint existed is accepted
    with a warning, once per process; without a ``run.json`` there is nothing to compare."""
    if not run_file.is_file():
        return
    recorded = read_run_record(run_file).get(FINGERPRINT_KEY)
    if recorded is None:
        _warn_unrecorded(run_file)
        return
    parts = [p for p, _, _ in PARTS if p in recorded
             and not (p == "test" and split.kind == SUPPLIED_TEST)]
    now = data_fingerprint(dataset, split, parts)
    changed = [describe_change(label, unit, recorded[part], now[part])
               for part, label, unit in PARTS if part in now
               and not same_digest(recorded[part], now[part])]
    if changed:
        raise DataError(
            f"the dataset changed since this run trained ({run_file} records other data): "
            f"{'; '.join(changed)}. Its checkpoint would be scored or exported against rows "
            "it did not train on: retrain (tfmmrec train), or restore the data it trained on; "
            "for new items, add them to the exported model (tfmmrec catalog add); to score "
            "other test interactions, supply them (tfmmrec evaluate --test FILE)")


def same_digest(recorded: dict, now: dict) -> bool:
    """Whether two digests agree on every field both have (``count`` always)."""
    return all(recorded[key] == now[key] for key in recorded.keys() & now.keys())


def describe_change(label: str, unit: str, before: dict, now: dict) -> str:
    """``the training split: 672 interactions then, 672 now (other rows)``."""
    counts = f"{before['count']} {unit} then, {now['count']} now"
    if before["count"] == now["count"]:
        counts += " (other rows)" if unit == "interactions" else " (other ids, or another order)"
    return f"{label}: {counts}"


def _warn_unrecorded(run_file: Path) -> None:
    key = str(run_file.resolve())
    if key in _warned_unrecorded:
        return
    _warned_unrecorded.add(key)
    logger.warning("%s does not record the data the run trained on (written before tfmmrec "
                   "did): whether the interactions or the items changed since cannot be "
                   "checked; retrain to record it", run_file)
