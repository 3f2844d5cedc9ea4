"""Index kind ``scann``: TFRS's ScaNN layer (``Scann>`` custom ops in the serving binary)."""

from __future__ import annotations

import math
import uuid

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfmmrec.config import ScannConfig
from tfmmrec.errors import ExportError, shown
from tfmmrec.export.index.base import (
    SCANN_TF_SERVING,
    TFMMREC_SERVE,
    IndexSettings,
    TopKIndex,
    checked_count,
    checked_embeddings,
    register,
)

# The attributes of ScaNN's ``ScannState`` (scann_ops.ScannState), the serialised searcher, in
# the order its ``tensors_to_scann`` op takes them.
SCANN_STATE = ("dataset", "scann_config", "serialized_partitioner", "datapoint_to_token",
                 "ah_codebook", "hashed_dataset", "int8_dataset", "int8_multipliers", "dp_norms")

# Asymmetric hashing with ScaNN's default LUT16 codebooks trains 16 centres per block on the
# (residuals of the) items, and refuses fewer items than that ("Number of clusters per block
# (16) is greater than asymmetric hashing training data size"); its tree refuses fewer items
# than leaves (``scann_parameters`` keeps leaves <= N/2). Below this many items the searcher
# scores every item exactly instead (``score_brute_force``: the same ``Scann>`` ops).
AH_CLUSTERS_PER_BLOCK = 16
TREE_AH = "tree_ah"
# ``leaves_to_search`` meaning "all of them": ScaNN caps the count at the tree's leaves, so one
# graph constant serves every catalogue version, whatever its number of leaves.
EVERY_LEAF = 2**31 - 1
BRUTE_FORCE = "brute_force"


def scann_scoring(num_items: int) -> str:
    """How a ScaNN searcher over ``num_items`` scores: ``tree_ah`` (partitioning tree,
    asymmetric hashing, exact reordering) or ``brute_force`` (every item, exactly) when the
    catalogue is too small to train the tree and the AH codebooks. Export and every catalogue
    update decide through this one function (``scann_parameters``)."""
    return TREE_AH if num_items >= AH_CLUSTERS_PER_BLOCK else BRUTE_FORCE


def scann_parameters(num_items: int, max_k: int, config: ScannConfig) -> dict[str, int | str]:
    """ScaNN settings scaled to the catalogue: ~sqrt(N) leaves, search ~10% of them, reorder.

    Reordering the best ``max(4k, 100)`` candidates with exact scores is what keeps recall of the
    brute-force top-10 at or above 0.95 on small and mid-sized catalogues. A catalogue too small
    to train the tree and the AH codebooks (:func:`scann_scoring`) gets ``{"scoring":
    "brute_force"}``: exact scores of every item.
    """
    if scann_scoring(num_items) == BRUTE_FORCE:
        return {"scoring": BRUTE_FORCE}
    leaves = config.num_leaves or max(2, min(2000, int(math.sqrt(num_items))))
    leaves = min(leaves, max(2, num_items // 2))
    reorder = config.num_reordering_candidates or min(num_items, max(4 * max_k, 100))
    # Search at least 10% of the leaves, and enough of them to hold the reordering candidates
    # (on small catalogues that is most of the leaves, where exhaustive search is cheap anyway).
    needed = math.ceil(reorder * leaves / num_items)
    search = config.num_leaves_to_search or max(1, math.ceil(leaves * 0.1), needed)
    return {"scoring": TREE_AH, "num_leaves": leaves,
            "num_leaves_to_search": min(search, leaves),
            "num_reordering_candidates": reorder,
            "dimensions_per_block": config.dimensions_per_block}


TREE_PARAMETERS = ("num_leaves", "num_leaves_to_search", "num_reordering_candidates",
                   "dimensions_per_block")


def checked_scann_parameters(owner: str, parameters, num_items: int) -> dict:
    """``parameters`` as :func:`scann_parameters` makes them, checked against the catalogue:
    ScaNN refuses a tree with more leaves than items, or AH on fewer than 16 items, only deep
    in its trainer (or, given an unknown key, in TFRS's constructor)."""
    if not isinstance(parameters, dict):
        raise ExportError(f"{owner}: parameters must be a dict, got {shown(parameters)}")
    scoring = parameters.get("scoring")
    if scoring == BRUTE_FORCE:
        expected: tuple[str, ...] = ()
    elif scoring == TREE_AH:
        expected = TREE_PARAMETERS
    else:
        raise ExportError(f"{owner}: parameters['scoring'] must be {TREE_AH!r} or "
                          f"{BRUTE_FORCE!r}, got {shown(scoring)}")
    keys = sorted(set(parameters) - {"scoring"})
    if keys != sorted(expected):
        raise ExportError(f"{owner}: {scoring} parameters must be {', '.join(expected) or 'none'}"
                          f" besides 'scoring', got {', '.join(keys) or 'none'}")
    for key in expected:
        checked_count(owner, f"parameters['{key}']", parameters[key])
    if scoring == TREE_AH and num_items < AH_CLUSTERS_PER_BLOCK:
        raise ExportError(f"{owner}: {TREE_AH} needs >= {AH_CLUSTERS_PER_BLOCK} items, got "
                          f"{num_items}; use scann_parameters() ({BRUTE_FORCE} scoring)")
    if scoring == TREE_AH and not (parameters["num_leaves_to_search"]
                                   <= parameters["num_leaves"] <= num_items):
        raise ExportError(f"{owner}: parameters need num_leaves_to_search <= num_leaves <= the "
                          f"{num_items} items, got {parameters['num_leaves_to_search']} and "
                          f"{parameters['num_leaves']}")
    return dict(parameters)


def brute_force_searcher(layer, k: int):
    """``layer._build_searcher`` for a catalogue too small for tree + AH: every item scored
    exactly, by the same ``Scann>`` ops (TFRS's own builder always trains a tree)."""
    from scann.scann_ops.py import scann_ops

    def build(candidates):
        builder = scann_ops.builder(db=candidates, num_neighbors=k,
                                    distance_measure="dot_product").score_brute_force()
        # A unique name: no unintended sharing between searchers (as TFRS's builder does).
        return builder.build(shared_name=f"{layer.name}/{uuid.uuid4()}")

    return build


def own_searcher_handle(state) -> tf.types.experimental.PolymorphicFunction:
    """``state.recreate_handle`` with a searcher resource of its own name.

    ScaNN's creates it with no ``shared_name``: in a loaded SavedModel every ScaNN state then
    gets the searcher whichever one was searched first created, so a second index in the same
    model (``query_text``'s text-search index beside the served one) fails its search
    (``SCANN_RET_CHECK_EQ``: another table's width) or would search the other's items."""
    from scann.scann_ops.py import scann_ops

    shared_name = f"tfmmrec_scann_{uuid.uuid4().hex}"

    def recreate_handle():
        return scann_ops.tensors_to_scann(*(getattr(state, name) for name in SCANN_STATE),
                                          shared_name=shared_name)

    return tf.function(recreate_handle, input_signature=[])


def free_searchers(loaded) -> int:
    """Destroy the searcher resources of a loaded SavedModel's ScaNN indexes; returns how many.

    Each searcher lives in TF's resource manager under a name of its own
    (:func:`own_searcher_handle`), which dropping the loaded object never frees: a server that
    loaded and unloaded versions grew by about one index per version (14 MB per cycle for
    100,000 × 32 items). Call it only once nothing searches ``loaded`` any more. A searcher
    never searched is created first (its handle is what the destroy op takes)."""
    import tensorflow as tf

    freed = 0
    for trackable in tf.train.TrackableView(loaded).descendants():
        if callable(getattr(trackable, "recreate_handle", None)) and all(
                hasattr(trackable, name) for name in SCANN_STATE):
            tf.raw_ops.DestroyResourceOp(resource=trackable.recreate_handle(),
                                         ignore_lookup_error=True)
            freed += 1
    return freed


@register
class ScannIndex(TopKIndex):
    """Anisotropic-quantisation tree search; the fastest kind, but only servers linked with the
    ScaNN ops load it (``import scann`` in Python; the ``google/tf-serving-scann`` image, last
    built for TF 2.11).

    The searcher lives in variables of unknown shape (ScaNN's own ``ScannState``) holding its
    config (leaves, reordering) too, so a catalogue update retrains a searcher over the new
    embeddings and stores it under the same graph; the search returns positions (no identifier
    table, whose length the graph would fix). A catalogue of fewer than
    :data:`AH_CLUSTERS_PER_BLOCK` items gets a brute-force ScaNN searcher (exact, same ops), so
    the kind works, and updates keep working, at any size."""

    kind = "scann"
    op_namespaces = frozenset({"Scann"})
    servers = (SCANN_TF_SERVING, TFMMREC_SERVE)

    def __init__(self, item_embeddings: np.ndarray, item_ids: np.ndarray | None, k: int,
                 parameters: dict):
        """``item_embeddings`` [N, d] (finite), ``k`` <= N, ``parameters`` as
        :func:`scann_parameters` gives them for N items."""
        owner = f"{self.kind} index"
        item_embeddings = checked_embeddings(owner, "item_embeddings", item_embeddings)
        num_items = item_embeddings.shape[0]
        parameters = checked_scann_parameters(owner, parameters, num_items)
        super().__init__(k, num_items, item_ids, parameters, dim=item_embeddings.shape[1])
        tree = {key: value for key, value in parameters.items() if key != "scoring"}
        self.layer = tfrs.layers.factorized_top_k.ScaNN(k=self.k, **tree)
        if parameters.get("scoring") == BRUTE_FORCE:  # TFRS keeps its builder private
            self.layer._build_searcher = brute_force_searcher(self.layer, self.k)
        self.layer.index(tf.constant(item_embeddings, tf.float32))
        # ScaNN's state variables save the shapes they were built with (validate_shape=False
        # only skips checks on assignment): re-hold them with no saved shape, so a searcher
        # over another number of items restores under the same graph.
        state = self.layer._serialized_searcher  # TFRS keeps it private
        for name in SCANN_STATE:
            value = getattr(state, name).read_value()
            setattr(state, name, tf.Variable(value, trainable=False, name=name,
                                             shape=tf.TensorShape(None)))
        state.recreate_handle = own_searcher_handle(state)

    @classmethod
    def from_embeddings(cls, item_embeddings, item_ids, settings: IndexSettings):
        k = min(settings.max_k, item_embeddings.shape[0])
        params = scann_parameters(item_embeddings.shape[0], k, settings.scann)
        return cls(item_embeddings, item_ids, k, params)

    def search(self, queries, k):
        return self.layer(queries, k=k)

    def search_every_item(self, queries, k):
        """Asymmetric-hashing scores of every leaf, then the searcher's exact reordering of
        the best (the same ``Scann>`` op with a leaf count above any tree's; ScaNN caps it)."""
        from scann.scann_ops.py import scann_ops

        searcher = scann_ops.searcher_from_module(self.layer._serialized_searcher)
        search = (searcher.search_batched_parallel if self.layer._parallelize_batch_searches
                  else searcher.search_batched)
        result = search(queries, final_num_neighbors=k, leaves_to_search=EVERY_LEAF)
        return result.distances, result.indices
