"""Evaluation: cross-modal retrieval — does an item's text find the same item's image (etc.)?

For a pair (source, target) of modalities, every item that has both is a query: its source
embedding ranks the target embeddings of all items that have the target modality, and the item
itself is the one right answer. Reported as Recall@K and the median rank (1 = best).

The target ``fused`` is the served index: each item's content in one modality alone, embedded
as ``query_text``/``query_image``/``query_audio`` embed a request, ranks every item's served
embedding (warm items with their id embedding, the linear-CF columns left out as a content
query's zeros leave them out): does an item's own plot (poster, clip) find it?
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tfmmrec.evaluation.metrics import (  # ties as every ranking metric breaks them
    check_ks,
    top_k_items,
)


def cross_modal_ranks(source: np.ndarray, target: np.ndarray, source_present: np.ndarray,
                      target_present: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """1-based rank of each query item's own target among all present targets.

    Ties count against the query (an equal-scoring other item ranks ahead), so a collapsed
    embedding space cannot look good.
    """
    queries = np.flatnonzero(source_present & target_present)
    candidates = np.flatnonzero(target_present)
    targets = target[candidates]
    ranks = np.empty(len(queries), np.int64)
    for start in range(0, len(queries), batch_size):
        rows = queries[start:start + batch_size]
        scores = source[rows] @ targets.T
        own = np.einsum("ij,ij->i", source[rows], target[rows])
        is_self = candidates[None, :] == rows[:, None]
        ahead = (scores >= own[:, None]) & ~is_self
        ranks[start:start + batch_size] = ahead.sum(axis=1) + 1
    return ranks


def cross_modal_metrics(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    ks = check_ks(ks)  # Recall@0 would be a 0 that looks measured
    metrics = {f"recall@{k}": float(np.mean(ranks <= k)) if len(ranks) else float("nan")
               for k in ks}
    metrics["median_rank"] = float(np.median(ranks)) if len(ranks) else float("nan")
    metrics["num_queries"] = len(ranks)
    return metrics


def evaluate_cross_modal(model, ws, ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """Cross-modal Recall@K and median rank for every modality pair of a trained model, and
    from every modality to the served index (``"text→fused"``…).

    On a cold-start split only the held-out items are used, as queries and as candidates alike
    (unseen by training, so this measures generalisation among them; not the whole served
    catalogue a ``query_text`` searches); otherwise the whole catalogue (in-sample).
    """
    from tfmmrec.evaluation.embeddings import embed_items, single_modality_embeddings

    check_ks(ks)  # before the embeddings are computed
    num_items = ws.dataset.num_items
    embeddings = single_modality_embeddings(model, num_items)
    if not embeddings:  # an id-only model: no content to query with
        return {}
    present = {m: ws.contents[m].mask for m in embeddings}
    dim = next(iter(embeddings.values())).shape[1]
    served = embed_items(model, num_items)[:, :dim]
    return {**pair_metrics(embeddings, present, ks, items=ws.split.test_items),
            **index_metrics(embeddings, present, served, ks, items=ws.split.test_items)}


def index_metrics(embeddings: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray],
                  served: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                  items: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Each modality → every item's ``served`` embedding, keyed like ``"text→fused"``: items
    with the modality are the queries, every item (of ``items``) a candidate."""
    if items is not None:
        embeddings, present = _restrict(embeddings, present, items)
        served = served[items]
    everyone = np.ones(len(served), bool)
    return {f"{m}→fused": cross_modal_metrics(
        cross_modal_ranks(embeddings[m], served, present[m].astype(bool), everyone), ks)
        for m in embeddings}


def pair_metrics(embeddings: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray],
                 ks: Sequence[int] = (1, 5, 10),
                 items: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Metrics for every ordered modality pair, keyed like ``"text→image"``.

    ``items`` restricts queries and candidates to a subset (e.g. cold-start items that no
    training batch, and so no alignment loss, ever saw).
    """
    if items is not None:
        embeddings, present = _restrict(embeddings, present, items)
    results = {}
    for source, target in itertools.permutations(embeddings, 2):
        ranks = cross_modal_ranks(embeddings[source], embeddings[target], present[source],
                                  present[target])
        results[f"{source}→{target}"] = cross_modal_metrics(ranks, ks)
    return results


def _restrict(embeddings: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray],
              items: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every modality's embeddings and presence, on ``items`` only."""
    return ({m: e[items] for m, e in embeddings.items()},
            {m: p[items] for m, p in present.items()})


def embed_queries(model, ws, modality: str, contents, batch_size: int = 64) -> np.ndarray:
    """Request contents → ``[Q, d]`` embeddings as ``query_<modality>`` embeds them: the
    workspace's (frozen) encoder, then the tower's embedding of that modality alone
    (``ItemTower.embed_single``; the linear-CF columns, zeros in a content query, left out).

    Text is strings. Another modality takes what its request carries (encoded file bytes:
    PNG/JPEG, WAV…) or file paths, decoded by the modality's ``decode_request`` with the
    export's limits, or already decoded encoder inputs (arrays)."""
    import tensorflow as tf

    if modality not in model.item_tower.modalities or modality not in ws.encoders:
        raise ValueError(f"modality {modality!r}: the model's are "
                         f"{', '.join(model.item_tower.modalities) or 'none'}")
    if isinstance(contents, str | bytes):  # one query, not one per character
        contents = [contents]
    tower, encoder = model.item_tower, ws.encoders[modality]
    contents = list(contents)
    if not contents:
        return np.zeros((0, tower.projections[modality].dim), np.float32)
    decoded = None
    if modality != "text" and all(isinstance(c, str | bytes | os.PathLike) for c in contents):
        decoded = _decoded(modality, ws.config, contents)  # a tensor, or a dict of them
    parts = []
    for start in range(0, len(contents), batch_size):
        batch = (tf.constant(contents[start:start + batch_size]) if decoded is None else
                 tf.nest.map_structure(lambda t, s=start: t[s:s + batch_size], decoded))
        features = batch if modality in tower.encoders else encoder(batch, training=False)
        parts.append(tower.embed_single(modality, features).numpy())
    dim = tower.projections[modality].dim
    return np.concatenate(parts)[:, :dim]


def _decoded(modality: str, config, contents):
    """File paths or request bytes of ``modality`` → its encoder inputs, as the export decodes
    a request (they were sent to the encoder as strings: "Cast string to float")."""
    import tensorflow as tf

    from tfmmrec import modalities

    requests = []
    for content in contents:
        if isinstance(content, bytes):
            requests.append(content)
            continue
        path = Path(content).expanduser()
        if not path.is_file():
            raise ValueError(f"{modality} query: no such file {str(path)!r} (pass file paths, "
                             "the request's bytes, or decoded arrays)")
        requests.append(path.read_bytes())
    spec = modalities.get(modality)
    settings = modalities.resolve_settings(modalities.settings_from_config(config))
    return spec.decode_request(tf.constant(requests, tf.string), settings,
                               config.export.limits)


def precision_at_k(queries: np.ndarray, items: np.ndarray, relevant: np.ndarray,
                   k: int) -> np.ndarray:
    """Each query's share of relevant items among its top ``k`` by dot product (``relevant``:
    ``[Q, N]`` booleans)."""
    top = top_k_items(queries @ items.T, k)
    return np.take_along_axis(relevant, top, axis=1).mean(axis=1)
