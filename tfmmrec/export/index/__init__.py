"""Export: top-k indexes over item embeddings, one class per kind behind one interface.

``build(item_embeddings, item_ids, settings)`` is the entry point (export, the benchmarks and
catalogue rebuilds all use it). Kinds: ``brute_force`` (exact; core TF ops), ``partitioned``
(k-means ANN in core TF ops, for stock TF Serving), ``scann`` (needs the ``Scann>`` ops).
"""

from tfmmrec.export.index.base import (
    CatalogChange,
    IndexSettings,
    PreviousIndex,
    TopKIndex,
    build,
    catalog_variable,
    index_class,
    index_kinds,
    recall_against_brute_force,
    register,
)

# Importing each kind registers it.
from tfmmrec.export.index.brute_force import BruteForceIndex
from tfmmrec.export.index.partitioned import PartitionedIndex
from tfmmrec.export.index.scann import ScannIndex, scann_parameters


def build_index(item_embeddings, kind: str, max_k: int, scann=None, partitioned=None,
                item_ids=None):
    """``(index, parameters)`` — the older call form, kept for existing callers."""
    from tfmmrec.config import PartitionedConfig, ScannConfig

    index = build(item_embeddings, item_ids, IndexSettings(
        kind, max_k, scann or ScannConfig(), partitioned or PartitionedConfig()))
    return index, index.parameters


__all__ = ["BruteForceIndex", "CatalogChange", "IndexSettings", "PartitionedIndex",
           "PreviousIndex", "ScannIndex", "TopKIndex", "build", "build_index",
           "catalog_variable", "index_class", "index_kinds", "recall_against_brute_force",
           "register", "scann_parameters"]
