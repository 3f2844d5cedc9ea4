"""Index kinds behind one interface: registry, build(), and the partitioned ANN index."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfmmrec.config import PartitionedConfig, ScannConfig
from tfmmrec.errors import ConfigError, ExportError
from tfmmrec.export.index import (
    CatalogChange,
    IndexSettings,
    PartitionedIndex,
    PreviousIndex,
    TopKIndex,
    build,
    index_class,
    index_kinds,
    recall_against_brute_force,
    register,
    scann_parameters,
)
from tfmmrec.export.index.partitioned import chunk_partitions
from tfmmrec.export.index.scann import AH_CLUSTERS_PER_BLOCK, scann_scoring


def clustered(num_items: int, dim: int, seed: int = 0, queries: int = 200):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, dim))

    def sample(n):
        x = centres[rng.integers(30, size=n)] + 0.5 * rng.normal(size=(n, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return sample(num_items), sample(queries)


def partitioned(**overrides) -> PartitionedConfig:
    return PartitionedConfig(**overrides)


def test_registry_lists_each_kind_with_its_ops_and_servers():
    kinds = index_kinds()
    assert set(kinds) >= {"brute_force", "scann", "partitioned"}
    assert kinds["scann"].op_namespaces == frozenset({"Scann"})
    assert kinds["partitioned"].op_namespaces == frozenset()
    assert kinds["brute_force"].op_namespaces == frozenset()
    assert "tensorflow/serving>=2.20" in kinds["partitioned"].servers
    assert "tensorflow/serving>=2.20" not in kinds["scann"].servers


def test_a_new_kind_is_one_class_and_a_registration():
    @register
    class FirstItems(TopKIndex):
        kind = "first_items_test"

        @classmethod
        def from_embeddings(cls, item_embeddings, item_ids, settings):
            return cls(settings.max_k, item_embeddings.shape[0], item_ids)

        def search(self, queries, k):
            batch = tf.shape(queries)[0]
            return tf.zeros([batch, k]), tf.tile(tf.range(k)[None, :], [batch, 1])

    index = build(np.ones((5, 2), np.float32), None, IndexSettings("first_items_test", 3))
    assert index_class("first_items_test") is FirstItems
    assert index(np.ones((2, 2)), k=2)[1].numpy().tolist() == [[0, 1], [0, 1]]
    assert index.item_ids.tolist() == ["0", "1", "2", "3", "4"]
    # the config takes the new kind (export.index listed three names by hand), and a second
    # class under a taken kind is refused instead of replacing it
    from tfmmrec.config import load_config

    assert load_config(None, ["export.index=first_items_test"]).export.index == \
        "first_items_test"
    with pytest.raises(ValueError, match=r"index kind 'scann' is already registered "
                                         r"\(ScannIndex\); give Impostor another kind"):
        @register
        class Impostor(FirstItems):
            kind = "scann"
    assert index_class("scann").__name__ == "ScannIndex"


def test_partitioned_probing_everything_is_exact():
    items, queries = clustered(2000, 16)
    index = build(items, None, IndexSettings("partitioned", 20,
                                             partitioned=partitioned(num_partitions=10,
                                                                     partitions_to_probe=10_000)))
    scores, found = index(queries, k=20)
    exact = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(found.numpy(), exact)
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(queries @ items.T, exact, 1),
                               atol=1e-5)


@pytest.mark.parametrize(("storage", "floor"), [("float32", 0.95), ("bfloat16", 0.95),
                                                ("int8", 0.9)])
def test_partitioned_recall_of_brute_force_top10(storage, floor):
    """5000 items in 71 partitions cut into chunks of ~35 items, 16 chunks probed."""
    items, queries = clustered(5000, 32)
    index = build(items, None, IndexSettings("partitioned", 100, partitioned=partitioned(
        storage=storage, partitions_to_probe=16)))
    assert index.parameters["num_partitions"] == 71
    assert index.parameters["chunks_to_probe"] < index.parameters["num_chunks"]
    assert recall_against_brute_force(index, queries, items, k=10) >= floor
    assert index.table.dtype == {"float32": tf.float32, "bfloat16": tf.bfloat16,
                                 "int8": tf.int8}[storage]


def test_partitioned_never_returns_padding_even_for_k_equal_to_the_catalogue():
    items, queries = clustered(60, 8, queries=5)
    index = build(items, None, IndexSettings("partitioned", 60, partitioned=partitioned(
        num_partitions=15, partitions_to_probe=1)))
    _, found = index(queries, k=60)
    assert sorted(found.numpy()[0].tolist()) == list(range(60))


def test_partitioned_build_is_deterministic_for_a_seed():
    items, _ = clustered(3000, 8)
    a, b = (build(items, None, IndexSettings("partitioned", 10)) for _ in range(2))
    np.testing.assert_array_equal(a.positions.numpy(), b.positions.numpy())


def test_chunks_split_big_partitions_and_pad_with_minus_one():
    owners, positions = chunk_partitions(np.array([0, 0, 0, 0, 0, 1]), 2, chunk_size=3)
    assert owners.tolist() == [0, 0, 1]
    assert positions.tolist() == [[0, 1, 2], [3, 4, -1], [5, -1, -1]]


def test_k_above_the_built_max_k_is_an_export_error():
    items, queries = clustered(50, 4)
    index = build(items, None, IndexSettings("partitioned", 5))
    with pytest.raises(ExportError, match=r"k must be in \[1, 5\] \(its max_k\), got 6"):
        index(queries, k=6)


@pytest.mark.parametrize(("items", "ids", "message"), [
    (np.zeros((0, 4), np.float32), None, "empty catalogue"),
    (np.full((3, 4), np.nan, np.float32), None, "NaN or Inf"),
    (np.ones((3, 4), np.float32), np.array(["a", "b"]), r"item_ids has shape \(2,\)"),
])
def test_bad_embeddings_are_export_errors(items, ids, message):
    with pytest.raises(ExportError, match=message):
        build(items, ids, IndexSettings("partitioned", 5))


def test_partitioned_settings_are_validated():
    with pytest.raises(ConfigError, match=r"export\.partitioned\.storage"):
        PartitionedConfig(storage="int4")
    with pytest.raises(ConfigError, match=r"export\.partitioned\.num_partitions"):
        PartitionedConfig(num_partitions=0)


def test_index_config_describes_the_build():
    items, _ = clustered(500, 8)
    config = build(items, None, IndexSettings("partitioned", 10)).get_config()
    assert config["kind"] == "partitioned" and config["op_namespaces"] == []
    assert set(config["parameters"]) >= {"num_partitions", "chunks_to_probe", "storage"}
    assert isinstance(build(items, None, IndexSettings("partitioned", 10)), PartitionedIndex)


def test_calibrated_probe_reaches_the_target_recall_on_catalogue_queries():
    items, _ = clustered(5000, 32)
    index = build(items, None, IndexSettings("partitioned", 10, partitioned=partitioned(
        target_recall=0.98)))
    probe_queries = items[np.random.default_rng(5).choice(5000, 300, replace=False)]
    assert index.parameters["chunks_to_probe"] < index.parameters["num_chunks"]
    assert recall_against_brute_force(index, probe_queries, items, k=10) >= 0.97


# --- catalogue updates: the partitioned index derived from the previous version's ------------


def stored_state(index: PartitionedIndex) -> dict[str, np.ndarray]:
    """The index's variables by attribute path, as a catalogue update reads them."""
    state = {"centroids": index.centroids.numpy(), "positions": index.positions.numpy(),
             "table": index.table.numpy()}
    if index.scales is not None:
        state["scales"] = index.scales.numpy()
    return state


def stored_vectors(index: PartitionedIndex) -> np.ndarray:
    table = tf.cast(index.table, tf.float32).numpy()
    if index.scales is not None:
        table = table * index.scales.numpy()[..., None]
    return table


@pytest.mark.parametrize("storage", ["float32", "int8"])
def test_partitioned_update_places_new_items_and_frees_removed_ones(storage):
    """Remove 100 items, re-embed one, add 300: every item is in exactly one slot holding its
    new vector, the graph's constants (probe, chunk size) are kept, recall stays high."""
    everything, queries = clustered(3300, 16)  # new items from the same distribution
    items, added = everything[:3000], everything[3000:]
    settings = IndexSettings("partitioned", 20, partitioned=partitioned(storage=storage))
    first = build(items, None, settings)
    keep = np.arange(100, 3000)
    new_items = np.concatenate([items[keep], added])
    new_items[100] = added[-1]  # previous row 200 re-embedded
    change = CatalogChange(np.concatenate([keep, np.full(300, -1)]),
                           np.concatenate([[100], np.arange(2900, 3200)]), 3000)
    updated = build(new_items, None, settings,
                    previous=PreviousIndex(stored_state(first), first.parameters, change))
    assert updated.graph_constants() == first.graph_constants()
    assert updated.parameters["items_placed_since_kmeans"] == 301
    positions = updated.positions.numpy()
    assert sorted(positions[positions >= 0].tolist()) == list(range(3200))
    vectors = stored_vectors(updated)
    np.testing.assert_allclose(vectors[positions >= 0], new_items[positions[positions >= 0]],
                               atol=1e-6 if storage == "float32" else 0.02)
    assert not vectors[positions < 0].any()
    assert recall_against_brute_force(updated, queries, new_items, k=10) >= 0.9
    # The cost of placing without k-means: an added item is its own top-1 for >= 90% of them
    # (93% measured; 100% for the items k-means placed): an item whose nearest partition is
    # full goes to the next nearest with room.
    _, found = updated(new_items[2900:], k=1)
    assert (found.numpy()[:, 0] == np.arange(2900, 3200)).mean() >= 0.9


def test_partitioned_update_re_clusters_once_many_items_were_placed():
    items, _ = clustered(1000, 8)
    settings = IndexSettings("partitioned", 10)
    first = build(items, None, settings)
    added, _ = clustered(300, 8, seed=2, queries=1)
    change = CatalogChange(np.concatenate([np.arange(1000), np.full(300, -1)]),
                           np.arange(1000, 1300), 1000)
    rebuilt = build(np.concatenate([items, added]), None, settings,
                    previous=PreviousIndex(stored_state(first), first.parameters, change))
    assert rebuilt.parameters["items_placed_since_kmeans"] == 0  # k-means again


# --- search_every_item: what content queries use ----------------------------------------------


def exact_top_k(queries, items, k):
    exact = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :k]
    return exact, np.take_along_axis(queries @ items.T, exact, 1)


def recall(found, exact) -> float:
    return float(np.mean([len(set(f) & set(e)) / exact.shape[1]
                          for f, e in zip(found, exact, strict=True)]))


# Each kind set to search little for a user query (one partition / leaf of many), so its own
# search misses much of the exact top 10 and the every-item search has something to fix.
NARROW = {
    "partitioned": IndexSettings("partitioned", 20, partitioned=partitioned(
        num_partitions=40, partitions_to_probe=1)),
    "partitioned-int8": IndexSettings("partitioned", 20, partitioned=partitioned(
        num_partitions=40, partitions_to_probe=1, storage="int8")),
    "scann": IndexSettings("scann", 20, scann=ScannConfig(num_leaves=40,
                                                          num_leaves_to_search=1)),
}


@pytest.mark.parametrize("name", sorted(NARROW))
def test_search_every_item_finds_what_the_narrow_search_misses(name):
    items, queries = clustered(3000, 16)
    queries = queries * 0.3 + 0.2  # far from every item, as content queries are
    index = build(items, None, NARROW[name])
    exact, exact_scores = exact_top_k(queries, items, 10)
    narrow = recall(index(queries, k=10)[1].numpy(), exact)
    scores, found = index(queries, k=10, every_item=True)
    assert narrow < 0.9  # (ScaNN's tree training varies between runs: 0.78-0.82 seen)
    if name == "partitioned":  # float32 storage: exact ids and scores
        np.testing.assert_array_equal(found.numpy(), exact)
        np.testing.assert_allclose(scores.numpy(), exact_scores, atol=1e-5)
    else:  # int8 storage / hashed codes before ScaNN's exact reordering of the best 100
        assert recall(found.numpy(), exact) >= 0.97


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
def test_partitioned_every_item_search_skips_free_slots(monkeypatch, storage):
    """After an update left free slots (removed items) and appended a chunk: the stored
    values' exact top-k over the items still served, never −1; bfloat16 in blocks smaller
    than the table (several loop steps), float32 in one matmul."""
    import tfmmrec.export.index.partitioned as module

    monkeypatch.setattr(module, "SCAN_ITEMS", 64)
    items, queries = clustered(2000, 16)
    settings = IndexSettings("partitioned", 30, partitioned=partitioned(num_partitions=20,
                                                                        storage=storage))
    index = build(items, None, settings)
    keep = np.arange(2000) % 7 != 0  # removes 286 items; the rest keep their order
    added = clustered(40, 16, seed=3, queries=1)[0]
    new_items = np.concatenate([items[keep], added])
    previous_row = np.concatenate([np.flatnonzero(keep), np.full(40, -1)])
    change = CatalogChange(previous_row, np.arange(keep.sum(), len(new_items)), 2000)
    state = {"centroids": index.centroids.numpy(), "positions": index.positions.numpy(),
             "table": index.table.numpy()}
    updated = build(new_items, None, settings,
                    previous=PreviousIndex(state, index.parameters, change))
    assert (updated.positions.numpy() < 0).any()
    assert updated.positions.numpy().size > 64 * 3  # several blocks
    scores, found = updated(queries, k=30, every_item=True)
    stored = np.zeros_like(new_items)  # each served item's stored (rounded) vector
    slots = updated.positions.numpy().reshape(-1)
    table = tf.cast(updated.table, tf.float32).numpy().reshape(len(slots), -1)
    stored[slots[slots >= 0]] = table[slots >= 0]
    exact, exact_scores = exact_top_k(queries, stored, 30)
    np.testing.assert_array_equal(found.numpy(), exact)
    np.testing.assert_allclose(scores.numpy(), exact_scores, atol=1e-5)


@pytest.mark.parametrize("name", ["brute_force", "partitioned", "partitioned-int8"])
def test_index_searches_read_their_tables_densely(name):
    """No ``ResourceGather`` on an index's variables: one sparse read switches a variable to
    copy-on-read, and TF then copies the whole table on every dense read (``gather_rows``)."""
    items, _ = clustered(500, 8, queries=2)
    settings = {"brute_force": IndexSettings("brute_force", 10),
                "partitioned": IndexSettings("partitioned", 10),
                "partitioned-int8": IndexSettings("partitioned", 10, partitioned=partitioned(
                    storage="int8"))}[name]
    index = build(items, None, settings)
    for every_item in (False, True):
        graph = tf.function(lambda q, every_item=every_item: index(q, k=5, every_item=every_item)
                            ).get_concrete_function(tf.TensorSpec([None, 8])).graph
        definition = graph.as_graph_def()
        ops = {node.op for node in definition.node} | {
            node.op for function in definition.library.function for node in function.node_def}
        assert "ResourceGather" not in ops and "ReadVariableOp" in ops, (name, every_item)


@pytest.mark.parametrize("num_items", [5, 200])
def test_every_item_search_of_brute_force_and_tiny_scann_is_exact(num_items):
    items, queries = clustered(num_items, 8, queries=9)
    k = min(10, num_items)
    exact, exact_scores = exact_top_k(queries, items, k)
    for kind in ("brute_force", "scann"):
        scores, found = build(items, None, IndexSettings(kind, 10))(queries, k=k,
                                                                     every_item=True)
        np.testing.assert_array_equal(found.numpy(), exact)
        np.testing.assert_allclose(scores.numpy(), exact_scores, atol=1e-4)


# --- scann on catalogues of any size ---------------------------------------------------------


@pytest.mark.parametrize("num_items", [1, 5, 12, AH_CLUSTERS_PER_BLOCK - 1,
                                       AH_CLUSTERS_PER_BLOCK, 40])
def test_scann_on_a_tiny_catalogue_returns_the_exact_top_k(num_items):
    """Below the 16 items asymmetric hashing trains its codebooks on, the ScaNN searcher
    scores every item exactly (same Scann ops); from 16 items tree + AH reorders every item
    (num_reordering_candidates = N on catalogues under 100), so both are exact."""
    rng = np.random.default_rng(num_items)
    items = rng.normal(size=(num_items, 16)).astype(np.float32)
    queries = rng.normal(size=(9, 16)).astype(np.float32)
    index = build(items, None, IndexSettings("scann", 10))
    scoring = "brute_force" if num_items < AH_CLUSTERS_PER_BLOCK else "tree_ah"
    assert index.parameters["scoring"] == scoring == scann_scoring(num_items)
    assert index.k == min(10, num_items)
    for k in sorted({1, index.k}):
        scores, found = index(queries, k=k)
        exact = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(found.numpy(), exact)
        np.testing.assert_allclose(scores.numpy(), np.take_along_axis(queries @ items.T, exact, 1),
                                   atol=1e-4)


def test_two_scann_indexes_in_one_saved_model_each_search_their_own_items(tmp_path):
    """A served index and a text-search index of another width in one SavedModel: after
    loading, each signature searches its own searcher, in either order (ScaNN's own handle
    shares one searcher between them: the second to run failed)."""
    wide, queries = clustered(300, 16, queries=4)
    narrow, narrow_queries = clustered(300, 8, seed=1, queries=4)
    module = tf.Module()
    module.wide = build(wide, None, IndexSettings("scann", 10))
    module.narrow = build(narrow, None, IndexSettings("scann", 10))
    signatures = {
        name: tf.function(lambda q, name=name: getattr(module, name)(q, k=10, every_item=True)[1],
                          input_signature=[tf.TensorSpec([None, dim], tf.float32, name="q")])
        for name, dim in (("wide", 16), ("narrow", 8))}
    tf.saved_model.save(module, str(tmp_path), signatures=signatures)
    loaded = tf.saved_model.load(str(tmp_path))
    expected = {"wide": exact_top_k(queries, wide, 10)[0],
                "narrow": exact_top_k(narrow_queries, narrow, 10)[0]}
    for name in ("narrow", "wide", "narrow"):
        q = {"wide": queries, "narrow": narrow_queries}[name]
        found = loaded.signatures[name](q=tf.constant(q))["output_0"].numpy()
        assert recall(found, expected[name]) >= 0.97, name


@pytest.mark.parametrize("num_items", [1, 2, 15, 16, 17, 31, 200])
def test_scann_parameters_are_trainable_at_every_size(num_items):
    """Tree + AH only where ScaNN can train them: >= 16 items (AH's clusters per block) and
    at least as many items as leaves, even with more leaves configured than items."""
    for config in (ScannConfig(), ScannConfig(num_leaves=500, num_leaves_to_search=400)):
        params = scann_parameters(num_items, 10, config)
        if num_items < AH_CLUSTERS_PER_BLOCK:
            assert params == {"scoring": "brute_force"}
            continue
        assert params["scoring"] == "tree_ah"
        assert 2 <= params["num_leaves"] <= num_items
        assert 1 <= params["num_leaves_to_search"] <= params["num_leaves"]
