"""Every index kind checks its arguments where they are given: a kind's constructor called
directly fails with the same ExportError (argument, value, limit) as ``build()``, and every kind
refuses a query of the wrong width or a bad ``k`` with one message, eagerly and in-graph."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfmmrec.config import PartitionedConfig, ScannConfig
from tfmmrec.errors import ExportError, one_line_error
from tfmmrec.export.index import (
    BruteForceIndex,
    IndexSettings,
    PartitionedIndex,
    ScannIndex,
    build,
    index_kinds,
    scann_parameters,
)

KINDS = sorted(index_kinds())
NUM_ITEMS, DIM = 40, 8
# Every chunk probed: any k up to the catalogue is a valid direct construction.
SETTINGS = {"brute_force": IndexSettings("brute_force", 5),
            "partitioned": IndexSettings("partitioned", 5, partitioned=PartitionedConfig(
                num_partitions=4, partitions_to_probe=10_000)),
            "scann": IndexSettings("scann", 5)}


def items(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(NUM_ITEMS, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def built() -> dict:
    return {kind: build(items(), None, SETTINGS[kind]) for kind in KINDS}


def partitioned_arguments(index: PartitionedIndex) -> dict:
    return {"centroids": index.centroids.numpy(), "positions": index.positions.numpy(),
            "table": index.table.numpy(), "scales": None, "item_ids": index.item_ids,
            "k": index.k, "probe": index.probe, "storage": index.storage,
            "parameters": index.parameters}


def construct(kind: str, built: dict, embeddings=None, item_ids=None, k=5, **overrides):
    """A kind's constructor called directly; ``embeddings`` replaces what it scores (the chunk
    centroids for ``partitioned``, whose constructor takes built tables)."""
    if kind == "partitioned":
        arguments = {**partitioned_arguments(built[kind]), "k": k, **overrides}
        if embeddings is not None:
            arguments["centroids"] = embeddings(arguments["centroids"])
        if item_ids is not None:
            arguments["item_ids"] = item_ids
        return PartitionedIndex(**arguments)
    table = items() if embeddings is None else embeddings(items())
    if kind == "brute_force":
        return BruteForceIndex(table, item_ids, k)
    parameters = overrides.get("parameters", scann_parameters(NUM_ITEMS, 5, ScannConfig()))
    return ScannIndex(table, item_ids, k, parameters)


def with_nan(table: np.ndarray) -> np.ndarray:
    table = table.copy()
    table[1, 2] = np.nan
    return table


EMBEDDING_NAME = {"brute_force": "item_embeddings", "scann": "item_embeddings",
                  "partitioned": "centroids"}

BAD_EMBEDDINGS = {
    "rank 1": (lambda x: x[0], r"must be \[num_items, dim\], got shape \(8,\)"),
    "rank 3": (lambda x: x[None], r"must be \[num_items, dim\], got shape \(1, \d+, 8\)"),
    "empty": (lambda x: x[:0], "has no rows: cannot export an index over an empty catalogue"),
    "zero width": (lambda x: x[:, :0], r"has shape \(\d+, 0\): no dimension may be 0"),
    "strings": (lambda x: x.astype(str), "must hold real numbers, got dtype <U"),
    "ragged": (lambda x: [[1.0, 2.0], [3.0]], "must be an array"),
    "NaN": (with_nan, r"contains NaN or Inf \(row 1\)"),
    "Inf": (lambda x: x * np.float32(np.inf), r"contains NaN or Inf \(row 0\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_EMBEDDINGS))
@pytest.mark.parametrize("kind", KINDS)
def test_constructor_refuses_bad_embeddings(kind, case, built):
    bad, message = BAD_EMBEDDINGS[case]
    with pytest.raises(ExportError, match=f"^{kind} index: {EMBEDDING_NAME[kind]} {message}"):
        construct(kind, built, embeddings=bad)


BAD_K = {0: "an integer >= 1, got 0", -3: "an integer >= 1, got -3",
         True: "an integer >= 1, got True", 2.0: "an integer >= 1, got 2.0",
         "3": "an integer >= 1, got '3'",
         NUM_ITEMS + 1: rf"in \[1, {NUM_ITEMS}\] \(the catalogue size\), got {NUM_ITEMS + 1}"}


@pytest.mark.parametrize("k", list(BAD_K), ids=repr)
@pytest.mark.parametrize("kind", KINDS)
def test_constructor_refuses_a_bad_k(kind, k, built):
    with pytest.raises(ExportError, match=rf"^{kind} index: k must be {BAD_K[k]}$"):
        construct(kind, built, k=k)


@pytest.mark.parametrize("kind", KINDS)
def test_constructor_refuses_item_ids_that_do_not_match_the_rows(kind, built):
    with pytest.raises(ExportError, match=rf"^{kind} index: .*item_ids"):
        construct(kind, built, item_ids=np.arange(NUM_ITEMS - 1).astype(str))
    with pytest.raises(ExportError, match=rf"^{kind} index: item_ids .*shape \(1, {NUM_ITEMS}\)"):
        construct(kind, built, item_ids=np.arange(NUM_ITEMS)[None].astype(str))
    repeated = np.arange(NUM_ITEMS).astype(str)
    repeated[[5, 9]] = "3"
    with pytest.raises(ExportError, match=rf"^{kind} index: item_ids repeats '3' \(rows 3 and "
                                          r"5; 2 repeated\): one id per item$"):
        construct(kind, built, item_ids=repeated)
    with pytest.raises(ExportError, match=r"repeats '3' \(rows 3 and 5"):  # a list of str
        construct(kind, built, item_ids=repeated.astype(object))


@pytest.mark.parametrize("kind", KINDS)
def test_a_valid_direct_construction_searches_like_build(kind, built):
    index = construct(kind, built)
    queries = items(1)[:3]
    assert index.dim == DIM and index.k == 5
    np.testing.assert_array_equal(index(queries)[1].numpy(), built[kind](queries)[1].numpy())


@pytest.mark.parametrize(("max_k", "message"), [(0, "got 0"), (True, "got True"),
                                                (2.5, "got 2.5")])
@pytest.mark.parametrize("kind", KINDS)
def test_build_refuses_a_bad_max_k(kind, max_k, message):
    with pytest.raises(ExportError, match=f"^{kind} index: max_k must be an integer >= 1, "
                                          f"{message}$"):
        build(items(), None, IndexSettings(kind, max_k))


# --- queries of the wrong width, and k at call time --------------------------------------------


WIDTH = "query width must equal the width of the item embeddings"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("every_item", [False, True])
def test_every_kind_refuses_a_query_of_the_wrong_width_eagerly(kind, every_item, built):
    with pytest.raises(ExportError, match=rf"^{kind} index: {WIDTH} \(got 6, expected 8\)$"):
        built[kind](np.ones((2, 6), np.float32), k=3, every_item=every_item)
    with pytest.raises(ExportError, match=rf"^{kind} index: queries must be \[batch, 8\], "
                                          r"got shape \(8,\)$"):
        built[kind](np.ones(8, np.float32), k=3, every_item=every_item)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_refuses_a_query_of_the_wrong_width_in_graph(kind, built):
    """A trace of unknown width asserts (a core op); a trace of a known wrong width fails."""
    index = built[kind]
    search = tf.function(lambda q: index(q, k=3)[1],
                         input_signature=[tf.TensorSpec([None, None], tf.float32)])
    assert search(tf.ones([2, DIM])).shape == (2, 3)
    with pytest.raises(tf.errors.InvalidArgumentError) as failure:
        search(tf.ones([2, 6]))
    assert one_line_error(failure.value.message) == f"{kind} index: {WIDTH} (got 6, expected 8)"
    with pytest.raises(ExportError, match=rf"{WIDTH} \(got 6, expected 8\)"):
        tf.function(lambda q: index(q, k=3)).get_concrete_function(tf.TensorSpec([None, 6]))


@pytest.mark.parametrize("k", [0, 6, True, 2.0], ids=repr)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_refuses_a_bad_k_at_call_time(kind, k, built):
    expected = (r"in \[1, 5\] \(its max_k\), got 6" if k == 6 and k is not True
                else f"an integer >= 1, got {k!r}")
    with pytest.raises(ExportError, match=rf"^{kind} index: k must be {expected}$"):
        built[kind](items(1)[:2], k=k)


# --- kind-specific arguments ------------------------------------------------------------------


def test_partitioned_constructor_checks_its_tables(built):
    arguments = partitioned_arguments(built["partitioned"])
    table, positions = arguments["table"], arguments["positions"]
    chunks = table.shape[0]
    duplicated = positions.copy()
    duplicated[duplicated == 1] = 0
    cases = [
        ({"table": with_nan(table.reshape(-1, DIM)).reshape(table.shape)},
         r"table contains NaN or Inf \(row 1\)"),
        ({"table": table.astype(np.float64)}, r"table must be float32 \[\d+, \d+, 8\]"),
        ({"table": table[:, :, :6]}, r"table must be float32 .* got float32 \[\d+, \d+, 6\]"),
        ({"storage": "int4"}, "storage must be one of float32, bfloat16, int8, got 'int4'"),
        ({"storage": "int8", "table": table.astype(np.int8)}, "int8 storage needs scales"),
        ({"scales": np.ones(positions.shape, np.float32)}, "scales are for int8 storage only"),
        ({"positions": positions.astype(np.float32)}, "positions must be integers"),
        ({"positions": np.where(positions == 3, NUM_ITEMS, positions)},
         rf"positions must be in \[-1, {NUM_ITEMS - 1}\]"),
        ({"positions": duplicated}, "positions must hold each .* row 0 is in 2 slots"),
        ({"probe": 0}, "probe must be an integer >= 1, got 0"),
        ({"probe": chunks + 1}, rf"probe must be in \[\d+, {chunks}\] .* got {chunks + 1}"),
        ({"probe": 1, "k": NUM_ITEMS}, rf"probe must be in \[\d+, {chunks}\] \(enough chunks "
                                       rf"to hold k={NUM_ITEMS} items"),
        ({"parameters": [1]}, r"parameters must be a dict, got \[1\]"),
    ]
    for overrides, message in cases:
        with pytest.raises(ExportError, match=f"^partitioned index: {message}"):
            PartitionedIndex(**{**arguments, **overrides})


def test_scann_constructor_checks_its_parameters():
    tree = scann_parameters(NUM_ITEMS, 5, ScannConfig())
    cases = [
        ({"scoring": "lsh"}, "parameters\\['scoring'\\] must be 'tree_ah' or 'brute_force', "
                             "got 'lsh'"),
        ({**tree, "num_leaves": 0}, "parameters\\['num_leaves'\\] must be an integer >= 1, "
                                    "got 0"),
        ({**tree, "num_leaves": NUM_ITEMS + 1},
         f"parameters need num_leaves_to_search <= num_leaves <= the {NUM_ITEMS} items"),
        ({**tree, "leaves": 3}, "tree_ah parameters must be num_leaves, .* got dimensions"),
        ({"scoring": "brute_force", "num_leaves": 3}, "brute_force parameters must be none"),
    ]
    for parameters, message in cases:
        with pytest.raises(ExportError, match=f"^scann index: {message}"):
            ScannIndex(items(), None, 5, parameters)
    with pytest.raises(ExportError, match="tree_ah needs >= 16 items, got 10"):
        ScannIndex(items()[:10], None, 5, {**tree, "num_leaves": 2, "num_leaves_to_search": 1})


def test_an_index_below_the_recall_floor_is_a_warning_naming_what_raises_it():
    """A review grew a catalogue 8.5-fold by updates: ScaNN then searched 18 of 58 leaves at
    recall@10 0.875, said only at INFO level and in the metadata."""
    from tfmmrec.export.catalog import RECALL_FLOOR, low_recall_note

    parameters = {"scoring": "tree_ah", "num_leaves": 58, "num_leaves_to_search": 18}
    assert low_recall_note("scann", 0.875, parameters, 3400, update=True) == (
        f"scann index recall@10 vs brute force is 0.875 over 3400 items (it searches 18 of 58 "
        f"leaves), below {RECALL_FLOOR}: served top-k lists differ from the model's; raise "
        "export.scann.num_leaves_to_search at the next export (a catalogue update keeps its "
        "export's index settings)")
