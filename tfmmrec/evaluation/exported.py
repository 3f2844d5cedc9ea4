"""Evaluation through an exported model: the embeddings TF Serving would use, not a checkpoint's.

``tfmmrec evaluate --export DIR`` scores users with the export's ``embed_query`` signature and
items with the item table stored in the SavedModel (what its index was built from), so the
figures describe the artefact that is served, after any export-time choice (serving mix, index).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from tfmmrec.errors import ExportError

SHOW = 5  # ids named in an error


def exported_embeddings(version_dir: str | os.PathLike, user_ids: np.ndarray,
                        item_ids: np.ndarray,
                        batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(users [U, d], items [N, d])`` from an export, items in the order of ``item_ids``.

    Raises ``ExportError`` naming catalogue items the export does not serve, and why
    (:func:`unserved_items_message`).
    """
    from tfmmrec.export.loader import ExportedModel, latest_version

    path = os.fspath(version_dir)
    try:
        model = ExportedModel(path)
    except ExportError:
        model = ExportedModel(latest_version(path))  # a model directory: its newest version
    loaded = model._loaded  # the tf.Module the loader restored; item_table is its item index
    if not hasattr(loaded, "item_table") or not hasattr(loaded, "item_ids"):
        raise ExportError(f"{model.path} has no item table: not a tfmmrec retrieval export")
    table = loaded.item_table.numpy()
    exported_ids = pd.Index([i.decode() for i in loaded.item_ids.numpy()])
    wanted = np.asarray(item_ids).astype(str)
    positions = exported_ids.get_indexer(wanted)
    if (positions < 0).any():
        training = getattr(getattr(loaded, "towers", None), "training_item_ids", None)
        exported_with = (None if training is None else
                         [i.decode() for i in training.numpy()])
        raise ExportError(unserved_items_message(model.path, [str(i) for i in
                                                              wanted[positions < 0]],
                                                 exported_with))
    users = np.asarray(user_ids).astype(str)
    # never more users per call than the export accepts (export.limits.max_batch_size)
    batch_size = min(batch_size, int(model.metadata.get("limits", {}).get("max_batch_size",
                                                                           batch_size)))
    parts = [model.call("embed_query", user_id=users[start:start + batch_size])["embedding"]
             for start in range(0, len(users), batch_size)]
    return np.concatenate(parts).astype(np.float32), table[positions].astype(np.float32)


def unserved_items_message(version: Path, missing: list[str],
                           exported_with: list[str] | None) -> str:
    """Why ``version`` has no embedding for dataset items, and what to do.

    An item of the catalogue the model was exported with (``exported_with``: the towers'
    training item ids) was removed by ``tfmmrec catalog remove``; any other was added to the
    dataset after the export. Without that record (an export older than its ``towers``) both
    causes are named."""
    from tfmmrec.export.writer import list_versions

    def ids(values: list[str]) -> str:
        more = f" and {len(values) - SHOW} more" if len(values) > SHOW else ""
        return ", ".join(values[:SHOW]) + more

    earlier = [v for v in list_versions(version.parent)
               if version.name.isdigit() and v < int(version.name)]
    before = (f"evaluate a version from before the removal (e.g. --export "
              f"{version.parent / str(earlier[0])})" if earlier else
              "evaluate an export that still serves them")
    head = f"{version} has no embedding for {len(missing)} item(s) of the dataset's catalogue"
    if exported_with is None:
        return (f"{head} ({ids(missing)}): they were either added to the dataset after this "
                "export (export the model again, or `tfmmrec catalog add` them) or removed "
                f"from it by `tfmmrec catalog remove` ({before}, or drop them from the "
                "dataset's items)")
    known = set(exported_with)
    removed = [i for i in missing if i in known]
    added = [i for i in missing if i not in known]
    parts = []
    if removed:
        parts.append(f"{len(removed)} ({ids(removed)}) were removed from it by `tfmmrec "
                     f"catalog remove` since it was exported: {before}, or drop them from "
                     "the dataset's items")
    if added:
        parts.append(f"{len(added)} ({ids(added)}) were added to the dataset after it was "
                     "exported: export the model again, or `tfmmrec catalog add` them")
    return f"{head}: {'; '.join(parts)}"
