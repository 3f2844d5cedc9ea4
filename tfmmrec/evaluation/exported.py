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
                        item_ids: np.ndarray, batch_size: int = 1024,
                        trained_users=None) -> tuple[np.ndarray, np.ndarray]:
    """``(users [U, d], items [N, d])`` from an export, items in the order of ``item_ids``.

    Raises ``ExportError`` naming catalogue items the export does not serve, and why
    (:func:`unserved_items_message`); when it knows fewer than half of the dataset's items, or
    of ``trained_users`` (those of ``user_ids`` with training interactions, which an export of
    this dataset knows; a user without any legitimately gets the cold-start query; None: no
    user check), that the export belongs to another dataset (:func:`foreign_export_message`):
    a handful of missing ids is a catalogue change, most of them another model.
    """
    from tfmmrec.export.loader import ExportedModel

    model = ExportedModel(version_dir)  # a version, or a model folder: its newest
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
        known = positions >= 0
        if exported_with is not None:  # removed since the export: still this model's items
            known |= np.isin(wanted, exported_with)
        if known.sum() < len(wanted) / 2:
            raise ExportError(foreign_export_message(
                model.path, "items", int(known.sum()), list(wanted), list(exported_ids),
                model.metadata))
        raise ExportError(unserved_items_message(model.path, [str(i) for i in
                                                              wanted[positions < 0]],
                                                 exported_with))
    users = np.asarray(user_ids).astype(str)
    # never more users per call than the export accepts (export.limits.max_batch_size)
    batch_size = min(batch_size, int(model.metadata.get("limits", {}).get("max_batch_size",
                                                                           batch_size)))
    parts = [model.call("embed_query", user_id=users[start:start + batch_size])["embedding"]
             for start in range(0, len(users), batch_size)]
    embedded = np.concatenate(parts).astype(np.float32)
    if trained_users is not None:
        checked = np.isin(users, np.asarray(trained_users).astype(str))
        known_users = ~unknown_users(model, users[checked], embedded[checked])
        if known_users.sum() < checked.sum() / 2:
            raise ExportError(foreign_export_message(
                model.path, "users", int(known_users.sum()), list(users[checked]), None,
                model.metadata))
    return embedded, table[positions].astype(np.float32)


UNKNOWN_USER = "\x00tfmmrec: no such user"  # an id no dataset holds (ids are printable)


def unknown_users(model, users: np.ndarray, embedded: np.ndarray) -> np.ndarray:
    """Boolean [U]: the users the export does not know. The export's every user input (id
    embedding, history, features, recent items) is looked up by user id, so an unknown user
    gets the cold-start query: exactly what an id no dataset holds gets."""
    if not len(users):
        return np.zeros(0, bool)
    cold = model.call("embed_query", user_id=np.array([UNKNOWN_USER]))["embedding"][0]
    return np.all(np.abs(embedded - np.asarray(cold, np.float32)) <= 1e-6, axis=1)


def foreign_export_message(version: Path, kind: str, known: int, dataset_ids: list[str],
                           served_ids: list[str] | None, metadata: dict) -> str:
    """Why an export that knows few (``known``) of the dataset's ``kind`` ("items" or
    "users") cannot be evaluated on it: it was exported from another dataset (or model), so
    "add them to the catalogue" would be the wrong advice. Names what the export's metadata
    says it was built from, to help find the right config or export."""
    def ids(values: list[str]) -> str:
        more = ", …" if len(values) > 3 else ""
        return ", ".join(values[:3]) + more

    served = ("" if served_ids is None else
              f"; it serves {len(served_ids)} items ({ids(served_ids)})")
    return (f"{version} does not belong to this dataset: it knows {known} of the dataset's "
            f"{len(dataset_ids)} {kind} ({ids(dataset_ids)}){served}{export_description(metadata)}"
            ". It was exported from another dataset or model: pass --export a version exported "
            "from this config (`tfmmrec export --config ...`), or --config the one it was "
            "exported with")


def export_description(metadata: dict) -> str:
    """What an export's metadata says of the model it holds ("" when it says nothing)."""
    columns = metadata.get("item_columns") or {}
    parts = []
    for name in metadata.get("modalities") or ():
        value = columns.get(name)
        named = [value] if isinstance(value, str) else list(value or ())
        parts.append(f"{name} ({', '.join(named)})" if named else name)
    said = [f"modalities {', '.join(parts)}"] if parts else []
    if metadata.get("embedding_dim"):
        said.append(f"embedding_dim {metadata['embedding_dim']}")
    if metadata.get("tfmmrec_version"):
        said.append(f"tfmmrec {metadata['tfmmrec_version']}")
    return f"; its metadata: {', '.join(said)}" if said else ""


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
