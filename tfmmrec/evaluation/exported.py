"""Evaluation through an exported model: the embeddings TF Serving would use, not a checkpoint's.

``tfmmrec evaluate --export DIR`` scores users with the export's ``embed_query`` signature and
items with the item table stored in the SavedModel (what its index was built from), so the
figures describe the artefact that is served, after any export-time choice (serving mix, index).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from tfmmrec.errors import ExportError


def exported_embeddings(version_dir: str | os.PathLike, user_ids: np.ndarray,
                        item_ids: np.ndarray,
                        batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(users [U, d], items [N, d])`` from an export, items in the order of ``item_ids``.

    Raises ``ExportError`` naming catalogue items the export has no embedding for (an export
    made before they were added: export again).
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
        missing = wanted[positions < 0]
        raise ExportError(f"{model.path} has no embedding for {len(missing)} catalogue item(s) "
                          f"(e.g. {', '.join(map(repr, missing[:5]))}): it was exported before "
                          "they were added; export the model again")
    users = np.asarray(user_ids).astype(str)
    parts = [model.call("embed_query", user_id=users[start:start + batch_size])["embedding"]
             for start in range(0, len(users), batch_size)]
    return np.concatenate(parts).astype(np.float32), table[positions].astype(np.float32)
