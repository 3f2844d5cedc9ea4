"""Evaluation input: a trained model's user and item embeddings as numpy arrays, in batches.

What evaluation, export and the benchmarks rank with: every catalogue item (fused, or one
modality alone for query-by-content), every user id (unknown ids get the cold-start row).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmmrec.models.retrieval import catalogue_size


def embed_items(model, num_items: int, batch_size: int = 1024,
                hidden_modalities: tuple[str, ...] = ()) -> np.ndarray:
    """Every catalogue item's embedding, ``[N, d]`` in catalogue order (optionally as if the
    ``hidden_modalities`` were missing for every item). ``num_items``: the first N items, from
    1 to the model's catalogue size (0 failed in a concat, more in a gather deep in TF)."""
    _check_num_items(model, num_items)
    parts = [model.serve_item_embeddings(tf.range(start, min(start + batch_size, num_items)),
                                         tuple(hidden_modalities))
             for start in range(0, num_items, batch_size)]
    return tf.concat(parts, axis=0).numpy()


def _check_num_items(model, num_items) -> None:
    size = (catalogue_size(model.content_table, model.item_tower)
            if hasattr(model, "content_table") else None)
    if (isinstance(num_items, bool) or not isinstance(num_items, int | np.integer)
            or num_items < 1 or (size is not None and num_items > size)):
        raise ValueError(f"num_items must be an integer from 1 to the model's catalogue size "
                         f"({size if size is not None else 'unknown'}), got {num_items!r}")


def embed_users(model, user_ids, batch_size: int = 1024) -> np.ndarray:
    """Query embeddings for user ids (unknown ids get the cold-start embedding)."""
    user_ids = np.asarray(user_ids).astype(str)
    parts = [model.serve_query_embeddings(tf.constant(user_ids[start:start + batch_size]))
             for start in range(0, len(user_ids), batch_size)]
    return tf.concat(parts, axis=0).numpy()


def single_modality_embeddings(model, num_items: int,
                               batch_size: int = 1024) -> dict[str, np.ndarray]:
    """``{modality: [N, d]}``: each item embedded from one modality alone (query-by-content)."""
    tower = model.item_tower

    @tf.function
    def embed(index):
        embeddings, _ = tower.modality_embeddings(model.content_table(index))
        return tower.single_modalities(embeddings)

    parts = [embed(tf.range(start, min(start + batch_size, num_items)))
             for start in range(0, num_items, batch_size)]
    return {m: np.concatenate([p[i].numpy() for p in parts]) for i, m in
            enumerate(tower.modalities)}
