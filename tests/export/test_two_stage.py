"""Two-stage export: ``recommend`` = retrieve N → re-rank with the ranking head → top k, in-graph,
equal to running the two stages separately in Python; seen items are excluded when baked in."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfmmrec
from tfmmrec import pipeline
from tfmmrec.export.audit import copy_on_read
from tfmmrec.export.loader import ExportedModel

TINY = ["data.demo.num_items=60", "data.demo.num_users=30", "data.demo.interactions_per_user=12",
        "train.epochs=2", "train.verbose=0", "train.batch_size=32", "text.hidden_dim=16",
        "text.num_heads=2", "text.num_layers=1", "text.intermediate_dim=32",
        "ranking.enabled=true", "ranking.task=binary", "ranking.retrieve_candidates=20",
        "export.index=brute_force", "export.exclude_seen=true", "export.max_k=10"]


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    root = tmp_path_factory.mktemp("two-stage")
    config = tfmmrec.load_config(None, [*TINY, f"train.output_dir={root}/run",
                                        f"export.base_dir={root}/models"])
    result = pipeline.train(config, progress=False)
    version = pipeline.export(config, model=result.model, workspace=result.workspace)
    return config, result.model, result.workspace, ExportedModel(version)


def python_two_stage(model, ws, user: str, n: int, k: int):
    """The reference: numpy retrieval (seen items removed) then the ranking head."""
    items = pipeline.embed_items(model, ws.dataset.num_items)
    query = pipeline.embed_users(model, [user])
    seen = set(ws.split.train.loc[ws.split.train["user_id"].astype(str) == user, "item_index"])
    scores = (query @ items.T)[0]
    scores[list(seen)] = -np.inf
    candidates = np.argsort(-scores, kind="stable")[:n]
    logits = model.score_candidates(tf.constant(query), tf.constant(items[candidates][None]))
    order = np.argsort(-logits.numpy()[0], kind="stable")[:k]
    return candidates[order], logits.numpy()[0][order], scores[candidates][order]


def test_recommend_equals_separate_stages(two_stage):
    config, model, ws, exported = two_stage
    user = str(ws.user_ids[3])
    out = exported.recommend([user], k=5)
    expected, ranking, retrieval = python_two_stage(model, ws, user,
                                                    config.ranking.retrieve_candidates, 5)
    ids = ws.dataset.catalog.item_ids[expected]
    assert [i.decode() for i in out["item_ids"][0]] == list(ids)
    np.testing.assert_allclose(out["scores"][0], ranking, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["retrieval_scores"][0], retrieval, rtol=1e-4, atol=1e-4)


def test_seen_items_never_returned(two_stage):
    _, _, ws, exported = two_stage
    train = ws.split.train
    for user in ws.user_ids[:10]:
        seen = set(train.loc[train["user_id"].astype(str) == str(user), "item_id"])
        for signature_output in (exported.recommend([str(user)], k=10),
                                 exported.recommend([str(user)])):
            returned = {i.decode() for i in signature_output["item_ids"][0]}
            assert not returned & seen


def test_fewer_candidates_than_max_k_are_refused_by_the_config(two_stage):
    """A two-stage export with N below max_k used to retrieve max_k candidates while its
    metadata (and the evaluation) said N: now the config refuses it, before train or export."""
    config, _, _, _ = two_stage
    with pytest.raises(tfmmrec.ConfigError, match=r"ranking.retrieve_candidates.*5.*>= "
                                                  r"export.max_k=10 .*or lower export.max_k"):
        tfmmrec.load_config(config, ["ranking.retrieve_candidates=5"])


def test_a_version_exported_with_fewer_candidates_than_max_k_still_updates(two_stage,
                                                                             tmp_path):
    """Such a version (exported before the refusal) re-ranked max_k candidates; a catalogue
    update keeps its graph doing so instead of refusing it."""
    import json
    import shutil

    from tfmmrec.export import catalog

    _, _, _, exported = two_stage
    model_dir = tmp_path / "tfmmrec"
    shutil.copytree(exported.path, model_dir / "1")
    metadata_file = model_dir / "1" / "assets.extra" / "tfmmrec.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["retrieve_candidates"] = 5  # below its max_k of 10
    metadata_file.write_text(json.dumps(metadata))
    served = exported.recommend(["nobody"], k=1)["item_ids"][0][0].decode()
    update = catalog.remove(model_dir, item_ids=[served])
    assert update.removed == 1
    assert ExportedModel(update.version_dir).recommend(["nobody"], k=10)["item_ids"].shape \
        == (1, 10)


def test_metadata_says_two_stage(two_stage):
    _, _, _, exported = two_stage
    assert exported.metadata["two_stage"] is True
    assert exported.metadata["exclude_seen"] is True


def test_partitioned_index_serves_two_stage_recommend(two_stage):
    """The partitioned index backs retrieval in two-stage ``recommend`` (with seen items
    excluded); probing every partition, it answers exactly as brute force does."""
    config, model, ws, exported = two_stage
    everything = tfmmrec.load_config(config, ["export.partitioned.partitions_to_probe=1000"])
    version = pipeline.export(everything, model=model, workspace=ws, index="partitioned")
    partitioned = ExportedModel(version)
    assert partitioned.metadata["index"] == "partitioned"
    assert partitioned.metadata["requires_scann_ops"] is False
    users = [str(u) for u in ws.user_ids[:8]]
    for k in (None, 5):
        expected, served = exported.recommend(users, k=k), partitioned.recommend(users, k=k)
        assert set(served) == set(expected)
        np.testing.assert_array_equal(served["item_ids"], expected["item_ids"])
        for alias in set(expected) - {"item_ids"}:
            np.testing.assert_allclose(served[alias], expected[alias], atol=1e-5)


def test_catalog_update_keeps_two_stage_and_the_seen_set(two_stage, tmp_path):
    """After a catalogue change the baked seen set still applies (keyed by training items) and
    ``recommend`` still re-ranks: the removed item is gone and the others keep their order (one
    new candidate may enter the re-ranked list in its place)."""
    import shutil

    from tfmmrec.export import catalog

    _, _, ws, exported = two_stage
    base = tmp_path / "model"
    shutil.copytree(exported.path, base / "1")
    user = str(ws.user_ids[3])
    before = [i.decode() for i in exported.recommend([user], k=10)["item_ids"][0]]
    version = catalog.remove(base, item_ids=[before[0]]).version_dir
    after = ExportedModel(version)
    assert after.metadata["two_stage"] is True
    got = [i.decode() for i in after.recommend([user], k=9)["item_ids"][0]]
    assert before[0] not in got
    assert [i for i in got if i in before] == [i for i in before[1:] if i in got]
    assert len(set(got) - set(before)) <= 1
    train = ws.split.train
    for user in ws.user_ids[:10]:
        seen = set(train.loc[train["user_id"].astype(str) == str(user), "item_id"])
        returned = {i.decode() for i in after.recommend([str(user)], k=10)["item_ids"][0]}
        assert not returned & seen


def test_request_exclusion_applies_before_re_ranking(two_stage):
    _, _, ws, exported = two_stage
    user = str(ws.user_ids[5])
    full = [i.decode() for i in exported.recommend([user], k=10)["item_ids"][0]]
    got = [i.decode() for i in exported.recommend([user], k=8, exclude=[full[:2]])[
        "item_ids"][0]]
    assert not set(full[:2]) & set(got)
    assert [i for i in got if i in full] == [i for i in full[2:] if i in got]


def test_fewer_allowed_items_than_k_are_padded_not_returned(two_stage):
    """60 items less the user's seen ones and all but 3 others excluded: the 3 are re-ranked
    and the 7 places left are padded (id "", the lowest float32 as both scores)."""
    from tfmmrec.export.module import MISSING_ITEM_ID, MISSING_SCORE

    _, _, ws, exported = two_stage
    user = str(ws.user_ids[0])
    train = ws.split.train
    seen = set(train.loc[train["user_id"].astype(str) == user, "item_id"])
    others = [i for i in ws.dataset.catalog.item_ids.astype(str) if i not in seen]
    allowed, drop = others[:3], others[3:]
    out = exported.recommend([user], k=10, exclude=[drop])
    ids = out["item_ids"][0].astype(str)
    assert sorted(ids[:3]) == sorted(allowed)
    assert list(ids[3:]) == [MISSING_ITEM_ID] * 7
    for name in ("scores", "retrieval_scores"):
        scores = out[name][0]
        assert np.isfinite(scores).all(), name
        assert (scores[3:] == MISSING_SCORE).all() and (scores[:3] > MISSING_SCORE).all(), name


def test_no_variable_of_a_two_stage_export_is_read_both_by_rows_and_densely(two_stage):
    assert copy_on_read(two_stage[3].path) == {}


def test_evaluate_reports_the_heads_metrics_and_the_two_stage_it_serves(two_stage):
    """``tfmmrec evaluate`` on a run with a ranking head scores the head (here AUC) and
    retrieve → re-rank, not only the retrieval index."""
    from tfmmrec.evaluation.ranking import evaluate_ranking_head, evaluate_two_stage

    config, model, ws, _ = two_stage
    results = pipeline.evaluate(config, model=model, workspace=ws, baselines=False, write=False)
    head = results[f"tfmmrec{pipeline.RANKING_HEAD_ROW}"]
    assert head == {**evaluate_ranking_head(model, ws), **evaluate_two_stage(model, ws)}
    assert {"auc", "log_loss", "two_stage_ndcg@10", "retrieval_ndcg@10"} <= set(head)
    assert "recall@10" in results["tfmmrec"]


def test_a_ranking_only_export_says_its_first_stage_is_not_trained_for_retrieval(
        two_stage, tmp_path, caplog):
    """Before: a ranking-only model exported a two-stage ``recommend`` whose candidates came
    from towers never trained for retrieval (below popularity on the demo), without a word."""
    config, model, ws, _ = two_stage
    caplog.set_level("WARNING", logger="tfmmrec.pipeline")
    multitask = tfmmrec.load_config(config, [f"export.base_dir={tmp_path}/multitask"])
    pipeline.export(multitask, model=model, workspace=ws)  # trains retrieval: no note
    assert "ranking-only" not in caplog.text
    only = tfmmrec.load_config(None, [*TINY, "ranking.retrieval_weight=0", "train.epochs=1",
                                      f"train.output_dir={tmp_path}/run",
                                      f"export.base_dir={tmp_path}/models"])
    result = pipeline.train(only, progress=False)
    pipeline.export(only, model=result.model, workspace=result.workspace)
    assert "a ranking-only model (ranking.retrieval_weight: 0)" in caplog.text
    assert "picks recommend's 20 candidates is not trained for retrieval" in caplog.text
