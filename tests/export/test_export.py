"""Tests for tfmmrec.export: indexes, versioned SavedModels, metadata, warmup and reloading.

The exported model must reload in a fresh process that imports only TensorFlow, TF Text and
ScaNN (as a TF Serving-like consumer would) and answer as the in-memory model does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tests.export.conftest import EXPORT_KINDS
from tfmmrec import pipeline
from tfmmrec.config import ScannConfig, load_config
from tfmmrec.errors import ExportError, ServingError
from tfmmrec.export.index import build_index, recall_against_brute_force, scann_parameters
from tfmmrec.export.loader import ExportedModel, latest_version, padded
from tfmmrec.export.module import MISSING_ITEM_ID, MISSING_SCORE
from tfmmrec.export.warmup import read_warmup_requests
from tfmmrec.export.writer import METADATA_FILE, PUBLISHED_FILE, next_version, read_metadata

TEXTS = ["a calm love story near a river", "robots in a dark galaxy"]

RELOAD = """
import json, sys
import numpy as np
import scann  # noqa: F401  registers the ScaNN ops
import tensorflow_text  # noqa: F401  registers the tokenizer ops
import tensorflow as tf

request = json.load(open(sys.argv[1]))
out = {}
for name, path in request["versions"].items():
    loaded = tf.saved_model.load(path)
    users = tf.constant(request["users"])
    # TF Serving fills optional inputs from the SignatureDef defaults; Python's loader does not.
    none = tf.zeros([0, 0], tf.string)
    top = loaded.signatures["recommend"](user_id=users, k=tf.constant(10), exclude_item_ids=none)
    default = loaded.signatures["serving_default"](user_id=users)
    text = loaded.signatures["query_text"](text=tf.constant(request["texts"]), k=tf.constant(5),
                                           exclude_item_ids=none)
    embedding = loaded.signatures["embed_query"](user_id=users)["embedding"]
    out[name] = {"ids": top["item_ids"].numpy().astype(str).tolist(),
                 "scores": top["scores"].numpy().tolist(),
                 "default_ids": default["item_ids"].numpy().astype(str).tolist(),
                 "text_ids": text["item_ids"].numpy().astype(str).tolist(),
                 "embedding": embedding.numpy().tolist(),
                 "project_modules": sorted({m.split(".")[0] for m in sys.modules
                                            if m.startswith(("tfmmrec", "tf_keras"))})}
json.dump(out, open(sys.argv[2], "w"))
"""


def clustered(num_items: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm items and queries around shared centres (like trained embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, dim))

    def sample(n):
        x = centres[rng.integers(30, size=n)] + 0.5 * rng.normal(size=(n, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return sample(num_items), sample(200)


def exact_top(queries: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :k]


# --- indexes --------------------------------------------------------------------------------


def test_brute_force_index_returns_exact_top_k_indices():
    items, queries = clustered(300, 8)
    index, params = build_index(items, "brute_force", max_k=20)
    scores, found = index(tf.constant(queries), k=20)
    assert params == {}
    np.testing.assert_array_equal(found.numpy(), exact_top(queries, items, 20))
    np.testing.assert_allclose(scores.numpy()[:, 0], (queries @ items.T).max(1), atol=1e-5)


def test_scann_recall_of_brute_force_top10_on_a_larger_catalogue():
    """At 400 demo items ScaNN reorders every item; 5000 makes the approximation real."""
    items, queries = clustered(5000, 32)
    index, params = build_index(items, "scann", max_k=100)
    assert params["num_reordering_candidates"] < 5000
    assert recall_against_brute_force(index, queries, items, k=10) >= 0.95


@pytest.mark.parametrize("num_items", [20, 400, 5000, 1_000_000])
def test_scann_parameters_stay_within_the_catalogue(num_items):
    params = scann_parameters(num_items, 100, ScannConfig())
    assert 2 <= params["num_leaves"] <= max(2, num_items // 2)
    assert 1 <= params["num_leaves_to_search"] <= params["num_leaves"]
    assert params["num_reordering_candidates"] <= num_items


def test_configured_scann_parameters_win():
    params = scann_parameters(5000, 10, ScannConfig(num_leaves=50, num_leaves_to_search=7,
                                                    num_reordering_candidates=123))
    assert (params["num_leaves"], params["num_leaves_to_search"],
            params["num_reordering_candidates"]) == (50, 7, 123)


def test_index_k_is_capped_at_catalogue_size():
    items, queries = clustered(5, 4)
    index, _ = build_index(items, "brute_force", max_k=100)
    assert index(tf.constant(queries[:2]))[1].shape == (2, 5)


def test_empty_catalogue_and_unknown_index_are_export_errors():
    with pytest.raises(ExportError, match="empty catalogue"):
        build_index(np.zeros((0, 4), np.float32), "brute_force", 10)
    with pytest.raises(ExportError, match="unknown index kind 'faiss'"):
        build_index(np.ones((3, 4), np.float32), "faiss", 10)


# --- an exported tiny model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tiny_trained):
    """In-memory answers: exact top-10 per user (and an unknown user), and query embeddings."""
    model, ws = tiny_trained.model, tiny_trained.workspace
    users = [*map(str, ws.user_ids), "a-user-nobody-knows"]
    items = pipeline.embed_items(model, ws.dataset.num_items)
    queries = pipeline.embed_users(model, users)
    top = exact_top(queries, items, 10)
    return {"users": users, "queries": queries, "items": items,
            "ids": ws.dataset.catalog.item_ids[top].astype(str),
            "scores": np.take_along_axis(queries @ items.T, top, axis=1)}


@pytest.fixture(scope="module")
def reloaded(exported, reference, tmp_path_factory):
    """What a fresh process (no tfmmrec, no Keras) gets from the two exports."""
    _, versions = exported
    work = tmp_path_factory.mktemp("reload")
    (work / "request.json").write_text(json.dumps({
        "versions": {k: str(v) for k, v in versions.items() if k != "partitioned"},
        "users": reference["users"], "texts": TEXTS}))
    (work / "reload.py").write_text(textwrap.dedent(RELOAD))
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run([sys.executable, str(work / "reload.py"), str(work / "request.json"),
                             str(work / "answer.json")], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((work / "answer.json").read_text())


def test_versions_are_numbered_and_written_atomically(exported):
    _, versions = exported
    assert [versions[k].name for k in EXPORT_KINDS] == ["1", "2", "3"]
    model_dir = versions["scann"].parent
    # no temp dirs left; the highest version published, for numbers never to be reused
    assert sorted(p.name for p in model_dir.iterdir()) == [PUBLISHED_FILE, "1", "2", "3"]
    assert next_version(model_dir) == 4 and latest_version(model_dir) == versions["partitioned"]
    for version in versions.values():
        assert (version / "saved_model.pb").is_file()
        assert (version / "assets.extra" / METADATA_FILE).is_file()


def test_existing_version_is_never_overwritten(exported, tiny_trained, monkeypatch):
    """Refused before any work (embedding the catalogue, building the index and measuring its
    recall), naming the versions."""
    from tfmmrec.export import catalog

    def never(*args, **kwargs):
        raise AssertionError("work was done before the existing version was refused")

    monkeypatch.setattr(catalog, "rebuild_index", never)
    monkeypatch.setattr(pipeline, "embed_items", never)
    config, versions = exported
    again = load_config(config, ["export.version=1", "export.index=brute_force"])
    before = (versions["brute_force"] / "saved_model.pb").read_bytes()
    with pytest.raises(ExportError, match=r"export.version=1: .*/1 already exists \(versions "
                                          r"present: 1, 2, 3\); versions are immutable.*"
                                          r"the next one \(4\)"):
        pipeline.export(again, model=tiny_trained.model, workspace=tiny_trained.workspace)
    assert (versions["brute_force"] / "saved_model.pb").read_bytes() == before
    # no temp folder left (the version mark is not one)
    assert not [p for p in versions["brute_force"].parent.iterdir()
                if p.name.startswith(".") and p.name != PUBLISHED_FILE]


def test_metadata_describes_the_export(exported, tiny_trained):
    _, versions = exported
    ws = tiny_trained.workspace
    brute, scann = (read_metadata(versions[k]) for k in ("brute_force", "scann"))
    assert (brute["index"], brute["requires_scann_ops"], brute["version"]) == ("brute_force",
                                                                                False, 1)
    assert (scann["index"], scann["requires_scann_ops"], scann["version"]) == ("scann", True, 2)
    assert scann["scann_recall_at_10"] >= 0.95
    assert scann["num_items"] == ws.dataset.num_items
    assert scann["embedding_dim"] == ws.config.model.embedding_dim
    assert scann["modalities"] == ["text", "image", "audio"]
    assert scann["encoders"] == ws.encoder_identities()
    assert "import tensorflow_text" in scann["load_requirements"]


def test_brute_force_export_reloaded_in_fresh_process_equals_in_memory_top_k(reloaded,
                                                                             reference):
    answer = reloaded["brute_force"]
    np.testing.assert_array_equal(np.array(answer["ids"]), reference["ids"])
    np.testing.assert_allclose(answer["scores"], reference["scores"], atol=1e-5)
    np.testing.assert_array_equal(np.array(answer["default_ids"]), reference["ids"])


def test_scann_export_reloaded_in_fresh_process_recalls_brute_force_top10(reloaded, reference):
    found = np.array(reloaded["scann"]["ids"])
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, reference["ids"],
                                                                 strict=True)])
    assert recall >= 0.95


def test_reloaded_query_embeddings_equal_in_memory_ones(reloaded, reference):
    for answer in reloaded.values():
        np.testing.assert_allclose(answer["embedding"], reference["queries"], atol=1e-5)


def test_reloaded_text_query_equals_in_memory_content_query(reloaded, reference, tiny_trained):
    model, ws = tiny_trained.model, tiny_trained.workspace
    features = ws.encoders["text"](tf.constant(TEXTS))
    queries = model.item_tower.embed_single("text", features).numpy()
    expected = ws.dataset.catalog.item_ids[exact_top(queries, reference["items"], 5)]
    np.testing.assert_array_equal(np.array(reloaded["brute_force"]["text_ids"]),
                                  expected.astype(str))


def test_fresh_process_needs_neither_tfmmrec_nor_tf_keras(reloaded):
    assert [answer["project_modules"] for answer in reloaded.values()] == [[], []]


# --- loading in-process, signatures, warmup -------------------------------------------------


@pytest.fixture(scope="module")
def loaded(exported):
    _, versions = exported
    return ExportedModel(versions["brute_force"])


def test_signatures_cover_users_and_every_modality(loaded):
    assert set(loaded.signatures) == {"serving_default", "recommend", "embed_query",
                                      "query_text", "query_image", "query_audio",
                                      "recommend_session", "embed_items"}


def test_a_lone_id_is_a_batch_of_one_as_the_client_reads_it(loaded):
    """``ExportedModel.recommend("u000")`` was refused while ``ServingClient`` served it."""
    alone, listed = loaded.recommend("u000", k=3), loaded.recommend(["u000"], k=3)
    assert alone["item_ids"].shape == (1, 3)
    np.testing.assert_array_equal(alone["item_ids"], listed["item_ids"])
    assert loaded.item_embeddings("i0001").shape[0] == 1


@pytest.mark.parametrize(("request_", "expected"), [
    (lambda m: m.call("query_text", text="hello"), r"query_text: text is a single value"),
    (lambda m: m.call("recommend", userid=["u000"]), r"unknown input\(s\) userid; it takes"),
    (lambda m: m.recommend(["u000"], k=5.5), r"k must be an integer .*got 5\.5"),
    (lambda m: m.recommend(["u000"], k=10**10), r"k must be an integer .*got 10000000000"),
    (lambda m: m.recommend(["u000"], k=True), r"k must be an integer .*got True"),
    (lambda m: m.recommend_session([]), r"sessions is an empty batch"),
    (lambda m: m.recommend(["u000"], k=0), r"^recommend: k must be"),
    (lambda m: m.recommend(["u000"], k=5, exclude=["i0016"]),
     r"exclude\[0\] is a string \('i0016'\), not a list of item ids"),
    (lambda m: m.recommend(["u000"], exclude="i0016"), r"exclude is a single string"),
    (lambda m: m.recommend_session(["i0001", "i0002"], k=3),
     r"sessions\[0\] is a string \('i0001'\), not a list of item ids"),
    (lambda m: m.recommend_session("i0001", k=3), r"sessions is a single string \('i0001'\)"),
    (lambda m: m.recommend_session([["i0001"]], exclude=np.array(["i0002"])),
     r"exclude\[0\] is a string"),
    (lambda m: m.recommend([1, 2]), r"^user_ids\[0\] is 1 \(int\), not a string$"),
    (lambda m: m.recommend(["u000", None]), r"^user_ids\[1\] is None \(NoneType\), not a"),
    (lambda m: m.call("query_text", text=[None]),
     r"^query_text: text\[0\] is None \(NoneType\), not a string$"),
    (lambda m: m.recommend_session([["i0001", None]]), r"^sessions\[0\]\[1\] is None"),
], ids=["lone text", "misspelt input", "fractional k", "k beyond int32",
        "boolean k", "no sessions", "k=0 from the graph", "exclusion row as a string",
        "lone exclusion string", "session as a list of strings", "lone session string",
        "exclusions as a 1-d array", "numeric user ids", "a None user id", "a None text",
        "a None session item"])
def test_a_bad_in_process_request_is_one_line_naming_the_input(loaded, request_, expected):
    with pytest.raises(ServingError, match=expected) as info:
        request_(loaded)
    assert "\n" not in str(info.value) and "node" not in str(info.value)


def test_a_lone_long_value_is_shortened_in_the_message(loaded):
    """A 70 KB text passed where a batch belongs was echoed whole (818 KB for a WAV)."""
    with pytest.raises(ServingError, match=r"text is a single value \('x+\.\.\.x*'\)") as info:
        loaded.call("query_text", text="x" * 70_000)
    assert len(str(info.value)) < 200


def test_unknown_item_ids_are_named_plainly(loaded):
    with pytest.raises(ExportError, match=r"item id\(s\) not in .*: 'zzz', 'yyy'$"):
        loaded.item_embeddings(np.array(["i0000", "zzz", "yyy"]))


def test_embed_items_refuses_an_empty_or_oversized_batch(loaded):
    """Like every other signature, in-graph (so stock TF Serving refuses it too)."""
    limit = loaded.metadata["limits"]["max_batch_size"]
    assert loaded.call("embed_items", item_id=np.array(["i0000"] * limit))["found"].all()
    with pytest.raises(ServingError, match=r"^embed_items: item_id: batch larger than "
                                           f"export.limits.max_batch_size={limit}"):
        loaded.call("embed_items", item_id=np.array(["i0000"] * (limit + 1)))
    with pytest.raises(ServingError, match=r"^embed_items: item_id: empty batch"):
        loaded.call("embed_items", item_id=np.zeros(0, str))


@pytest.mark.parametrize("kind", EXPORT_KINDS)
def test_excluded_items_are_never_returned_when_fewer_than_k_remain(exported, kind):
    """80 items and k = max_k = 80: excluding 3 leaves fewer allowed items than places, so
    the last places are padded (id "", the lowest float32) in every signature that takes
    exclusions; no excluded id and no -inf is returned (REST would write -Infinity)."""
    _, versions = exported
    model = ExportedModel(versions[kind])
    k = model.metadata["max_k"]
    assert k == model.metadata["num_items"]
    users = ["u000", "u001"]
    full = model.recommend(users, k=k)["item_ids"].astype(str)
    assert (full != MISSING_ITEM_ID).all()
    drop = [list(row[[0, 3, 7]]) for row in full]
    sessions = [["i0001"], []]  # a session's own items are excluded too
    outputs = {
        "recommend": model.recommend(users, k=k, exclude=drop),
        "recommend_session": model.recommend_session(sessions, users, k=k, exclude=drop),
        "query_text": model.call("query_text", text=np.array(TEXTS), k=np.int32(k),
                                 exclude_item_ids=padded(drop))}
    for name, out in outputs.items():
        ids, scores = out["item_ids"].astype(str), out["scores"]
        assert ids.shape == scores.shape == (2, k), name
        assert np.isfinite(scores).all(), name
        removed = ([{*d, *session} for d, session in zip(drop, sessions, strict=True)]
                   if name == "recommend_session" else [set(d) for d in drop])
        for row, row_scores, dropped in zip(ids, scores, removed, strict=True):
            assert not set(row) & dropped, name
            real = row != MISSING_ITEM_ID
            served = int(real.sum())
            assert real[:served].all() and 0 < served <= k - len(dropped), name
            assert len(set(row[real])) == served, name
            assert (row_scores[~real] == MISSING_SCORE).all(), name
            assert (row_scores[real] > MISSING_SCORE).all(), name
            if kind != "partitioned":  # exact enough to reach every allowed item
                assert served == k - len(dropped), name


def test_k_out_of_range_is_rejected_by_the_signature(loaded):
    too_many = min(loaded.metadata["max_k"], loaded.metadata["num_items"]) + 1
    for k in (0, too_many):
        with pytest.raises(ServingError, match="k must be"):
            loaded.recommend(["u000"], k=k)


def test_unknown_signature_lists_available_ones(loaded):
    with pytest.raises(ExportError, match=r"has no signature 'rank'.*recommend"):
        loaded.call("rank", user_id=np.array(["u000"]))


def test_non_export_directory_is_an_export_error(tmp_path):
    with pytest.raises(ExportError, match="not a tfmmrec export"):
        ExportedModel(tmp_path)
    with pytest.raises(ExportError, match="no model versions"):
        latest_version(tmp_path)
    with pytest.raises(ExportError, match="does not exist: pass an export's version folder"):
        ExportedModel(tmp_path / "nope")


def test_a_model_folder_loads_its_newest_version(exported):
    """As every ``tfmmrec`` command takes a model folder; its parent is named as a base."""
    _, versions = exported
    model_dir = next(iter(versions.values())).parent
    assert ExportedModel(model_dir).path == latest_version(model_dir)
    with pytest.raises(ExportError, match=f"holds the folders of model\\(s\\) {model_dir.name}"):
        ExportedModel(model_dir.parent)


def test_warmup_requests_cover_every_signature_and_replay(loaded, exported):
    _, versions = exported
    requests = read_warmup_requests(versions["brute_force"] / "assets.extra" /
                                    "tf_serving_warmup_requests")
    names = [r.model_spec.signature_name for r in requests]
    assert sorted(names) == sorted(loaded.signatures)
    for request in requests:
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        out = loaded.call(request.model_spec.signature_name, **inputs)
        assert out, request.model_spec.signature_name
