"""Index kind ``partitioned``: approximate top-k in core TensorFlow ops (stock TF Serving).

Build (numpy + scikit-learn): k-means centroids over the item embeddings (MiniBatchKMeans,
seeded, fitted on a sample), every item assigned to its nearest centroid, and each partition
cut into equal chunks of at most ``chunk_size`` items stored in one padded table
``[num_chunks, chunk_size, dim]`` (a partition bigger than a chunk gets several chunks with the
same centroid, so padding stays below one chunk per partition).

Search (a few gathers + matmuls, no custom ops): score the query against the chunk centroids,
take the ``probe`` best chunks, gather their items and score them exactly, and keep the top k.
Item storage may be bfloat16 (half the bytes to gather) or int8 with a per-item scale (a
quarter); scores then use the stored values.

Catalogue updates (:meth:`PartitionedIndex.updated`) keep the centroids, the chunk size and the
number of chunks probed: an added or re-embedded item takes a free slot in the nearest of its
``PLACE_NEAREST`` closest partitions that has one (else a new chunk centred on such items), a
removed item leaves a free slot, and only the touched chunks' rows are re-stored. Once more than
``RECLUSTER_FRACTION`` of the catalogue was placed this way since the last k-means, or when the
probed chunks could no longer hold k items, the index is rebuilt (new k-means, new calibration).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfmmrec.config import PartitionedConfig
from tfmmrec.errors import ExportError, shown
from tfmmrec.export.index.base import (
    CatalogChange,
    IndexSettings,
    TopKIndex,
    catalog_variable,
    check_finite,
    checked_count,
    checked_embeddings,
    gather_rows,
    register,
)

MAX_PARTITIONS = 4096
# Share of the catalogue placed by catalogue updates (without k-means) after which an update
# re-clusters: the centroids were fitted to the older items.
RECLUSTER_FRACTION = 0.2
# A placed item goes to the nearest of this many partitions with a free slot.
PLACE_NEAREST = 4
# Item slots scored per step of :meth:`PartitionedIndex.search_every_item`.
SCAN_ITEMS = 1 << 16
# Item storage → the stored table's dtype.
STORAGE_DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16, "int8": tf.int8}


def partition_count(num_items: int, config: PartitionedConfig) -> int:
    """~sqrt(N) partitions (the usual IVF choice), at most MAX_PARTITIONS and N // 4."""
    count = config.num_partitions or min(MAX_PARTITIONS, round(math.sqrt(num_items)))
    return max(1, min(count, max(1, num_items // 4)))


def kmeans_assign(embeddings: np.ndarray, count: int, config: PartitionedConfig
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(centroids [count, d], assignment [N])`` from scikit-learn k-means (seeded)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    num_items = embeddings.shape[0]
    if count == 1:
        return embeddings.mean(0, keepdims=True), np.zeros(num_items, np.int64)
    rng = np.random.default_rng(config.seed)
    sample = embeddings if num_items <= config.kmeans_sample else embeddings[
        np.sort(rng.choice(num_items, config.kmeans_sample, replace=False))]
    if sample.shape[0] <= 20_000:
        kmeans = KMeans(n_clusters=count, n_init=1, random_state=config.seed)
    else:
        kmeans = MiniBatchKMeans(n_clusters=count, n_init=1, random_state=config.seed,
                                 batch_size=max(4096, 4 * count), max_iter=20)
    kmeans.fit(sample)
    centroids = kmeans.cluster_centers_.astype(np.float32)
    # Assign in blocks (nearest centroid by L2, as k-means defined the cells).
    assignment = np.empty(num_items, np.int64)
    norms = (centroids ** 2).sum(1)
    for start in range(0, num_items, 65_536):
        block = embeddings[start:start + 65_536]
        assignment[start:start + len(block)] = np.argmin(norms[None, :] - 2 * block @ centroids.T,
                                                         axis=1)
    return centroids, assignment


def chunk_partitions(assignment: np.ndarray, count: int, chunk_size: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(chunk_partition [C], positions [C, chunk_size] with -1 padding)``."""
    order = np.argsort(assignment, kind="stable")
    sizes = np.bincount(assignment, minlength=count)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    owners, rows = [], []
    for partition in range(count):
        members = order[starts[partition]:starts[partition + 1]]
        if members.size == 0:
            continue
        pieces = math.ceil(members.size / chunk_size)
        for piece in np.array_split(members, pieces):
            row = np.full(chunk_size, -1, np.int64)
            row[:piece.size] = piece
            owners.append(partition)
            rows.append(row)
    return np.asarray(owners, np.int64), np.stack(rows)


def exact_top(queries: np.ndarray, items: np.ndarray, k: int, block: int = 65_536) -> np.ndarray:
    """Positions of the exact top-k per query, over item blocks (memory: queries x block)."""
    rows = np.arange(len(queries))[:, None]
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best = np.zeros((len(queries), 0), np.int64)
    for start in range(0, items.shape[0], block):
        scores = queries @ items[start:start + block].T
        keep = min(k, scores.shape[1])
        top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        best_scores = np.concatenate([best_scores, scores[rows, top]], axis=1)
        best = np.concatenate([best, top + start], axis=1)
        if best.shape[1] > k:
            keep_idx = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
            best_scores, best = best_scores[rows, keep_idx], best[rows, keep_idx]
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return best[rows, order]


def calibrate_probe(items: np.ndarray, chunk_centroids: np.ndarray, positions: np.ndarray,
                    config: PartitionedConfig, k: int = 10) -> int:
    """The fewest chunks to probe so that ``config.target_recall`` of the exact top-k of
    sampled catalogue items (as queries) lies in the probed chunks.

    An item in chunk c is found with ``n`` probes iff at most ``n`` chunks score at least as
    high as c for that query (chunks of one partition share a centroid, so ties count fully).
    """
    rng = np.random.default_rng(config.seed + 1)
    count = min(config.calibration_queries, items.shape[0])
    queries = items[rng.choice(items.shape[0], count, replace=False)]
    exact = exact_top(queries, items, min(k, items.shape[0]))
    chunk_of = np.empty(items.shape[0], np.int64)
    rows, cols = np.nonzero(positions >= 0)
    chunk_of[positions[rows, cols]] = rows
    coarse = queries @ chunk_centroids.T                                   # [Q, C]
    own = np.take_along_axis(coarse, chunk_of[exact], 1)                   # [Q, k]
    needed = (coarse[:, None, :] >= own[:, :, None]).sum(-1).ravel()       # probes per hit
    needed.sort()
    return int(needed[max(0, math.ceil(config.target_recall * needed.size) - 1)])


def stored_rows(rows: np.ndarray, storage: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(table, scales)``: chunk rows ``[C, M, d]`` in ``storage`` (float32, bfloat16, or int8
    with a per-item scale ``[C, M]``)."""
    if storage == "int8":
        scale = np.abs(rows).max(-1) / 127.0
        scale[scale == 0] = 1.0
        quantized = np.clip(np.rint(rows / scale[..., None]), -127, 127).astype(np.int8)
        return quantized, scale.astype(np.float32)
    if storage == "bfloat16":
        return tf.cast(rows, tf.bfloat16).numpy(), None
    return rows.astype(np.float32), None


def chunk_rows(item_embeddings: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``[C, M, d]`` embeddings of the items in each chunk slot (zeros for free slots)."""
    rows = item_embeddings[np.maximum(positions, 0)]
    rows[positions < 0] = 0.0
    return rows


def probes_needed(positions: np.ndarray, k: int) -> int:
    """The fewest chunks that hold ``k`` items even if the smallest ones are probed, so
    top-k never returns padding."""
    filled = (positions >= 0).sum(1)
    return int(np.searchsorted(np.cumsum(np.sort(filled)), k) + 1)


def checked_positions(owner: str, positions, num_chunks: int, num_items: int) -> np.ndarray:
    """``[num_chunks, chunk_size]`` item positions holding each of ``num_items`` items once
    (−1: a free slot): an item in no slot is never found, one in two is returned twice."""
    positions = np.asarray(positions)
    if positions.dtype.kind not in "iu" or positions.ndim != 2 \
            or positions.shape[0] != num_chunks or positions.shape[1] == 0:
        raise ExportError(f"{owner}: positions must be integers [num_chunks={num_chunks}, "
                          f"chunk_size], got {positions.dtype} {positions.shape}")
    if positions.min() < -1 or positions.max() >= num_items:
        raise ExportError(f"{owner}: positions must be in [-1, {num_items - 1}] (rows of the "
                          f"{num_items} item_ids; -1: a free slot), got [{positions.min()}, "
                          f"{positions.max()}]")
    counts = np.bincount(positions[positions >= 0].ravel(), minlength=num_items)
    if (counts != 1).any():
        item = int(np.argmax(counts != 1))
        raise ExportError(f"{owner}: positions must hold each of the {num_items} item_ids' "
                          f"rows once, row {item} is in {counts[item]} slots")
    return positions


def checked_table(owner: str, table, scales, storage: str, shape: tuple[int, int, int]
                  ) -> tuple[np.ndarray | tf.Tensor, np.ndarray | None]:
    """The stored chunk rows ``[C, M, d]`` in ``storage``'s dtype, finite, and the int8
    storage's per-item scales ``[C, M]`` (no other storage has any)."""
    if storage not in STORAGE_DTYPES:
        raise ExportError(f"{owner}: storage must be one of {', '.join(STORAGE_DTYPES)}, got "
                          f"{shown(storage)}")
    dtype = STORAGE_DTYPES[storage]
    if getattr(table, "dtype", None) not in (dtype, dtype.as_numpy_dtype) \
            or tuple(table.shape) != shape:
        raise ExportError(f"{owner}: table must be {dtype.name} {list(shape)} (num_chunks, "
                          f"chunk_size, dim), got {getattr(table, 'dtype', type(table))} "
                          f"{list(getattr(table, 'shape', []))}")
    if storage != "int8":
        check_finite(owner, "table", np.reshape(np.asarray(table), [-1, shape[2]]))
        if scales is not None:
            raise ExportError(f"{owner}: scales are for int8 storage only, not {storage}")
        return table, None
    if scales is None or np.shape(scales) != shape[:2]:
        raise ExportError(f"{owner}: int8 storage needs scales {list(shape[:2])}, got "
                          f"{None if scales is None else list(np.shape(scales))}")
    scales = np.asarray(scales, np.float32)
    check_finite(owner, "scales", scales)
    return table, scales


@register
class PartitionedIndex(TopKIndex):
    """k-means partitions probed in-graph; see the module docstring. Core TF ops only."""

    kind = "partitioned"

    def __init__(self, centroids: np.ndarray, positions: np.ndarray, table: np.ndarray,
                 scales: np.ndarray | None, item_ids: np.ndarray, k: int, probe: int,
                 storage: str, parameters: dict):
        """Chunk ``centroids`` [C, d], item ``positions`` [C, M] (−1: free), the stored
        ``table`` [C, M, d] (and int8 ``scales`` [C, M]); ``probe`` chunks searched, which
        must hold ``k`` items however small. Checked: a bad table fails deep in a gather."""
        owner = f"{self.kind} index"
        ids = np.asarray(item_ids)
        if ids.ndim != 1 or not ids.size:
            raise ExportError(f"{owner}: item_ids must be one id per item (1-D, not empty), "
                              f"got shape {ids.shape}")
        centroids = checked_embeddings(owner, "centroids", centroids)
        num_chunks, dim = centroids.shape
        positions = checked_positions(owner, positions, num_chunks, len(ids))
        table, scales = checked_table(owner, table, scales, storage,
                                      (num_chunks, positions.shape[1], dim))
        super().__init__(k, len(ids), ids, parameters, dim=dim)
        self.probe = checked_count(owner, "probe", probe)
        if not probes_needed(positions, self.k) <= self.probe <= num_chunks:
            raise ExportError(f"{owner}: probe must be in [{probes_needed(positions, self.k)}, "
                              f"{num_chunks}] (enough chunks to hold k={self.k} items; at most "
                              f"every chunk), got {self.probe}")
        self.storage = storage
        self.chunk_size = int(positions.shape[1])
        self.centroids = catalog_variable(centroids, "centroids")
        self.positions = catalog_variable(positions.astype(np.int32), "positions")
        names = {"int8": "items_int8", "bfloat16": "items_bfloat16"}
        self.table = catalog_variable(table, names.get(storage, "items"))
        self.scales = None if scales is None else catalog_variable(scales, "scales")

    @classmethod
    def from_embeddings(cls, item_embeddings, item_ids, settings: IndexSettings):
        config = settings.partitioned
        num_items = item_embeddings.shape[0]
        k = min(settings.max_k, num_items)
        count = partition_count(num_items, config)
        if config.num_partitions is not None and config.num_partitions > num_items:
            raise ExportError(f"export.partitioned.num_partitions={config.num_partitions} is "
                              f"more than the {num_items} items; leave it null to scale")
        centroids, assignment = kmeans_assign(item_embeddings, count, config)
        # Chunks of half a mean partition: finer probing, padding below half a mean partition.
        chunk_size = max(1, math.ceil(num_items / count / 2))
        owners, positions = chunk_partitions(assignment, count, chunk_size)
        chunk_centroids = centroids[owners]
        calibrated = None
        if config.partitions_to_probe is None:
            calibrated = calibrate_probe(item_embeddings, chunk_centroids, positions, config)
        # Probe enough chunks that even the smallest ones hold k real items.
        needed = probes_needed(positions, k)
        probe = min(len(owners), max(config.partitions_to_probe or calibrated, needed))
        parameters = {"num_partitions": count, "num_chunks": len(owners),
                      "chunk_size": chunk_size, "chunks_to_probe": probe,
                      "target_recall": config.target_recall if calibrated else None,
                      "storage": config.storage, "seed": config.seed,
                      "padding_fraction": float(1 - (positions >= 0).sum() / positions.size),
                      "items_placed_since_kmeans": 0}
        table, scales = stored_rows(chunk_rows(item_embeddings, positions), config.storage)
        return cls(chunk_centroids, positions, table, scales, item_ids, k, probe,
                   config.storage, parameters)

    @classmethod
    def updated(cls, state, parameters, item_embeddings, item_ids, change: CatalogChange,
                settings: IndexSettings):
        """The previous chunks with the change applied (see the module docstring), or ``None``
        when the index must be rebuilt."""
        config = settings.partitioned
        num_items, k = len(item_embeddings), min(settings.max_k, len(item_embeddings))
        probe = int(parameters.get("chunks_to_probe", 0))
        placed = int(parameters.get("items_placed_since_kmeans", 0)) + len(change.changed)
        if (parameters.get("storage") != config.storage or not probe
                or placed > RECLUSTER_FRACTION * num_items
                # a configured probe clamped to the chunk count means "probe every chunk"
                or (config.partitions_to_probe is not None
                    and probe != config.partitions_to_probe)):
            return None
        centroids = np.asarray(state["centroids"], np.float32)
        old = np.asarray(state["positions"], np.int64)
        # Previous rows → new rows; removed and re-embedded items leave their slots.
        leaving = np.zeros(num_items + 1, bool)
        leaving[change.changed] = True
        positions = np.where(old >= 0, change.new_row_of_previous()[np.maximum(old, 0)], -1)
        positions[leaving[positions]] = -1  # index −1 reads the extra False
        # Kept items keep their stored vectors (only their row numbers moved); chunks that
        # lost one are re-stored so a free slot holds zeros.
        touched = ((old >= 0) & (positions < 0)).any(1)
        if len(change.changed):
            positions, centroids, touched = _place(positions, centroids, touched,
                                                   item_embeddings, change.changed)
        if probes_needed(positions, k) > probe:
            return None
        table, scales = _restore(state, touched, chunk_rows(item_embeddings, positions[touched]),
                                 config.storage)
        parameters = {**parameters, "num_chunks": len(positions),
                      "padding_fraction": float(1 - (positions >= 0).sum() / positions.size),
                      "items_placed_since_kmeans": placed}
        return cls(centroids, positions, table, scales, item_ids, k, probe, config.storage,
                   parameters)

    def graph_constants(self) -> dict:
        return {**super().graph_constants(), "probe": self.probe,
                "chunk_size": self.chunk_size, "storage": self.storage}

    def search(self, queries, k):
        coarse = tf.matmul(queries, self.centroids, transpose_b=True)        # [B, C]
        _, chunks = tf.math.top_k(coarse, k=self.probe)                      # [B, n]
        vectors = gather_rows(self.table, chunks)                             # [B, n, M, d]
        positions = gather_rows(self.positions, chunks)                       # [B, n, M]
        batch = tf.shape(queries)[0]
        candidates = self.probe * self.chunk_size
        vectors = tf.reshape(tf.cast(vectors, tf.float32), [batch, candidates, -1])
        scores = tf.squeeze(tf.matmul(vectors, queries[:, :, None]), -1)     # [B, n*M]
        if self.scales is not None:
            scores *= tf.reshape(gather_rows(self.scales, chunks), [batch, candidates])
        positions = tf.reshape(positions, [batch, candidates])
        scores = tf.where(positions >= 0, scores, tf.fill(tf.shape(scores), float("-inf")))
        top, order = tf.math.top_k(scores, k=k)
        return top, tf.gather(positions, order, batch_dims=1)

    def search_every_item(self, queries, k):
        """Every slot scored (the stored precision's scores, as :meth:`search` gives them).
        A float32 table is one matmul over all of it, as brute force (reading a variable
        densely does not copy it, :func:`gather_rows`); a bfloat16 / int8 one is scanned
        :data:`SCAN_ITEMS` slots at a time with a running top-k, so a call converts one block
        to float32 at a time, whatever the catalogue's size."""
        if self.storage == "float32":
            table = tf.convert_to_tensor(self.table)
            scores = tf.matmul(queries, tf.reshape(table, [-1, table.shape[-1]]),
                               transpose_b=True)                             # [B, C*M]
            positions = tf.reshape(tf.convert_to_tensor(self.positions), [-1])
            scores = tf.where(positions[None, :] >= 0, scores, float("-inf"))
            top, order = tf.math.top_k(scores, k=k)
            return top, tf.gather(positions, order)
        batch = tf.shape(queries)[0]
        num_chunks = tf.shape(self.positions)[0]
        step = max(1, SCAN_ITEMS // self.chunk_size)

        def scan(start, best, best_positions):
            block = tf.range(start, tf.minimum(start + step, num_chunks))
            vectors = tf.cast(gather_rows(self.table, block), tf.float32)      # [n, M, d]
            vectors = tf.reshape(vectors, [-1, vectors.shape[-1]])            # [n*M, d]
            scores = tf.matmul(queries, vectors, transpose_b=True)            # [B, n*M]
            if self.scales is not None:
                scores *= tf.reshape(gather_rows(self.scales, block), [1, -1])
            positions = tf.reshape(gather_rows(self.positions, block), [1, -1])
            scores = tf.where(positions >= 0, scores, float("-inf"))
            best, order = tf.math.top_k(tf.concat([best, scores], 1), k=k)
            positions = tf.concat([best_positions, tf.tile(positions, [batch, 1])], 1)
            return start + step, best, tf.gather(positions, order, batch_dims=1)

        initial = (tf.constant(0), tf.fill([batch, k], float("-inf")),
                   tf.fill([batch, k], tf.constant(-1, tf.int32)))
        _, best, positions = tf.while_loop(
            lambda start, *_: start < num_chunks, scan, initial,
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, k]),
                              tf.TensorShape([None, k])))
        return best, positions


def _place(positions: np.ndarray, centroids: np.ndarray, touched: np.ndarray,
           item_embeddings: np.ndarray, rows: np.ndarray, nearest: int = PLACE_NEAREST):
    """Put each of ``rows`` into a free slot of the nearest of its ``nearest`` closest
    partitions that has one (chunks of one k-means partition share a centroid row); items
    with none get new chunks centred on them. Filling free slots first keeps chunks full,
    so the probed chunks keep holding k items (tiny new chunks would force a rebuild)."""
    partitions, partition_of_chunk = np.unique(centroids, axis=0, return_inverse=True)
    partition_of_chunk = partition_of_chunk.reshape(-1)
    free: dict[int, list[tuple[int, int]]] = {}
    for chunk, slot in zip(*np.nonzero(positions < 0), strict=True):
        free.setdefault(int(partition_of_chunk[chunk]), []).append((int(chunk), int(slot)))
    vectors = item_embeddings[rows]
    distance = (partitions ** 2).sum(1)[None, :] - 2 * vectors @ partitions.T
    closest = np.argsort(distance, axis=1)[:, :nearest]
    left: dict[int, list[int]] = {}
    for row, choices in zip(rows, closest, strict=True):
        for partition in choices:
            slots = free.get(int(partition))
            if slots:
                chunk, slot = slots.pop()
                positions[chunk, slot] = row
                touched[chunk] = True
                break
        else:
            left.setdefault(int(choices[0]), []).append(int(row))
    chunk_size = positions.shape[1]
    new_positions, new_centroids = [], []
    for members in left.values():
        for start in range(0, len(members), chunk_size):
            piece = members[start:start + chunk_size]
            row = np.full(chunk_size, -1, np.int64)
            row[:len(piece)] = piece
            new_positions.append(row)
            # Its items' mean, not the partition's centroid: a tie with the partition's
            # chunks would always rank the new chunk last (top_k keeps the lower index).
            new_centroids.append(item_embeddings[piece].mean(0))
    if new_positions:
        positions = np.concatenate([positions, np.stack(new_positions)])
        centroids = np.concatenate([centroids, np.stack(new_centroids).astype(np.float32)])
        touched = np.concatenate([touched, np.ones(len(new_positions), bool)])
    return positions, centroids, touched


def _restore(state: dict, touched: np.ndarray, rows: np.ndarray, storage: str):
    """The previous stored table (and scales) with the ``touched`` chunks re-stored from
    ``rows`` (new chunks appended at the end)."""
    table = np.asarray(state["table"])
    scales = state.get("scales")
    new_table, new_scales = stored_rows(rows, storage)
    grown = len(touched) - len(table)
    if grown:
        table = np.concatenate([table, np.zeros((grown, *table.shape[1:]), table.dtype)])
        if scales is not None:
            scales = np.concatenate([scales, np.ones((grown, *scales.shape[1:]), np.float32)])
    else:
        table = table.copy()
        scales = None if scales is None else scales.copy()
    table[touched] = new_table
    if scales is not None:
        scales[touched] = new_scales
    return table, scales
