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
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfmmrec.config import PartitionedConfig
from tfmmrec.errors import ExportError
from tfmmrec.export.index.base import IndexSettings, TopKIndex, register

MAX_PARTITIONS = 4096


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


@register
class PartitionedIndex(TopKIndex):
    """k-means partitions probed in-graph; see the module docstring. Core TF ops only."""

    kind = "partitioned"

    def __init__(self, centroids: np.ndarray, positions: np.ndarray, item_embeddings: np.ndarray,
                 item_ids: np.ndarray, k: int, probe: int, storage: str, parameters: dict):
        super().__init__(k, item_embeddings.shape[0], item_ids, parameters)
        self.probe = int(probe)
        self.storage = storage
        self.chunk_size = int(positions.shape[1])
        rows = item_embeddings[np.maximum(positions, 0)]  # [C, M, d]
        rows[positions < 0] = 0.0
        self.centroids = tf.Variable(centroids, trainable=False, name="centroids")
        self.positions = tf.Variable(positions.astype(np.int32), trainable=False,
                                     name="positions")
        self.scales = None
        if storage == "int8":
            scale = np.abs(rows).max(-1) / 127.0
            scale[scale == 0] = 1.0
            quantized = np.clip(np.rint(rows / scale[..., None]), -127, 127).astype(np.int8)
            self.table = tf.Variable(quantized, trainable=False, name="items_int8")
            self.scales = tf.Variable(scale.astype(np.float32), trainable=False, name="scales")
        elif storage == "bfloat16":
            self.table = tf.Variable(tf.cast(rows, tf.bfloat16), trainable=False,
                                     name="items_bfloat16")
        else:
            self.table = tf.Variable(rows, trainable=False, name="items")

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
        filled = (positions >= 0).sum(1)
        chunk_centroids = centroids[owners]
        calibrated = None
        if config.partitions_to_probe is None:
            calibrated = calibrate_probe(item_embeddings, chunk_centroids, positions, config)
        # Probe enough chunks that even the smallest ones hold k real items, so top-k never
        # returns padding.
        needed = int(np.searchsorted(np.cumsum(np.sort(filled)), k) + 1)
        probe = min(len(owners), max(config.partitions_to_probe or calibrated, needed))
        parameters = {"num_partitions": count, "num_chunks": len(owners),
                      "chunk_size": chunk_size, "chunks_to_probe": probe,
                      "target_recall": config.target_recall if calibrated else None,
                      "storage": config.storage, "seed": config.seed,
                      "padding_fraction": float(1 - filled.sum() / positions.size)}
        return cls(chunk_centroids, positions, item_embeddings, item_ids, k, probe,
                   config.storage, parameters)

    def search(self, queries, k):
        coarse = tf.matmul(queries, self.centroids, transpose_b=True)        # [B, C]
        _, chunks = tf.math.top_k(coarse, k=self.probe)                      # [B, n]
        vectors = tf.gather(self.table, chunks)                               # [B, n, M, d]
        positions = tf.gather(self.positions, chunks)                         # [B, n, M]
        batch = tf.shape(queries)[0]
        candidates = self.probe * self.chunk_size
        vectors = tf.reshape(tf.cast(vectors, tf.float32), [batch, candidates, -1])
        scores = tf.squeeze(tf.matmul(vectors, queries[:, :, None]), -1)     # [B, n*M]
        if self.scales is not None:
            scores *= tf.reshape(tf.gather(self.scales, chunks), [batch, candidates])
        positions = tf.reshape(positions, [batch, candidates])
        scores = tf.where(positions >= 0, scores, tf.fill(tf.shape(scores), float("-inf")))
        top, order = tf.math.top_k(scores, k=k)
        return top, tf.gather(positions, order, batch_dims=1)
