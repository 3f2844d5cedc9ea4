"""Tests for tfmmrec.models.retrieval (and the pipeline that builds and restores it)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import derive_config
from tfmmrec import pipeline
from tfmmrec.config import load_config
from tfmmrec.errors import ConfigError, TrainingError
from tfmmrec.models.retrieval import RetrievalModel
from tfmmrec.towers.item import ItemContentTable
from tfmmrec.towers.noise import Noise
from tfmmrec.towers.query import user_lookup


@pytest.fixture(scope="module")
def model(tiny_workspace) -> RetrievalModel:
    tf.keras.utils.set_random_seed(0)
    model = pipeline.build_model(tiny_workspace)
    model.build_from_example()
    return model


def batch(workspace, users, items) -> dict[str, tf.Tensor]:
    return {"user_id": tf.constant(np.asarray(workspace.user_ids)[users].astype(str)),
            "item_index": tf.constant(items, tf.int32)}


def test_embeddings_are_unit_vectors_of_embedding_dim(model, tiny_workspace):
    items = model.item_embeddings(tf.range(10)).numpy()
    queries = model.query_embeddings(tf.constant(["u000", "unknown-user"])).numpy()
    dim = tiny_workspace.config.model.embedding_dim
    assert items.shape == (10, dim) and queries.shape == (2, dim)
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)


def test_integer_user_ids_are_ids_at_inference_as_in_training(model, tiny_workspace):
    """Before: ``serve_query_embeddings`` read integers as vocabulary positions, so id 5 (as
    pandas reads a numeric id column) got the embedding of whichever user sits at position 5,
    without an error, while ``compute_loss`` read the same integers as ids."""
    as_ints = model.serve_query_embeddings(tf.constant([5, 6], tf.int64)).numpy()
    as_text = model.serve_query_embeddings(tf.constant(["5", "6"])).numpy()
    np.testing.assert_array_equal(as_ints, as_text)  # unknown ids: the cold-start query
    positions = model.query_embeddings(tf.constant([5, 6], tf.int64)).numpy()
    assert not np.allclose(as_ints, positions)
    with pytest.raises(ValueError, match=r"user_id must hold ids \(strings, or integers\), "
                                         r"got float32"):
        model.serve_query_embeddings(tf.constant([5.0]))


def test_a_mixed_precision_policy_is_refused_with_the_setting_that_works(tiny_workspace):
    """It failed in ``fit``, deep in the query tower (ConcatV2 of bfloat16 and float32)."""
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        with pytest.raises(ValueError, match=r"policy is 'mixed_bfloat16'.*Set "
                                             r"model\.training_precision: bfloat16"):
            pipeline.build_model(tiny_workspace)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_loss_is_a_finite_positive_scalar(model, tiny_workspace):
    loss = model.compute_loss(batch(tiny_workspace, [0, 1, 2, 3], [0, 5, 9, 11]))
    assert loss.shape == () and np.isfinite(loss.numpy()) and loss.numpy() > 0


def test_remove_accidental_hits_masks_duplicate_positives(model, tiny_workspace):
    """When two users in a batch chose the same item, it is not a negative for either."""
    features = batch(tiny_workspace, [0, 1, 2, 3], [7, 7, 7, 3])
    kwargs = dict(item_probability=None, temperature=0.1)
    parts = (model.query_tower, model.item_tower, model.content_table)
    with_removal = RetrievalModel(*parts, remove_accidental_hits=True, **kwargs)
    without = RetrievalModel(*parts, remove_accidental_hits=False, **kwargs)
    assert with_removal.compute_loss(features).numpy() < without.compute_loss(features).numpy()


def expected_loss(queries, candidates, items, temperature, probability=None,
                  remove_hits=True, logq_sign=1.0) -> float:
    """The in-batch softmax loss by hand, as TFRS's retrieval_test.py checks it: logits
    ``<q_u, c_j> / T − log p_j`` (logQ), accidental hits masked, summed over the batch."""
    logits = queries @ candidates.T / temperature
    if probability is not None:
        logits = logits - logq_sign * np.log(np.clip(probability[items], 1e-6, 1.0))[None, :]
    if remove_hits:
        duplicate = (items[:, None] == items[None, :]) & ~np.eye(len(items), dtype=bool)
        logits = np.where(duplicate, -np.inf, logits)
    log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(
        1, keepdims=True)) - logits.max(1, keepdims=True)
    return float(-np.trace(log_softmax))


def _embeddings(model, workspace, users, items):
    ids = np.asarray(workspace.user_ids)[users].astype(str)
    return (model.query_embeddings(tf.constant(ids)).numpy().astype(np.float64),
            model.item_embeddings(tf.constant(items, tf.int32)).numpy().astype(np.float64))


@pytest.mark.parametrize("temperature", [0.1, 0.05, 1.0])
def test_loss_equals_the_softmax_written_out_by_hand(model, tiny_workspace, temperature):
    users, items = [0, 1, 2, 3], np.array([0, 5, 9, 11])
    queries, candidates = _embeddings(model, tiny_workspace, users, items)
    loss = _variant(model, temperature=temperature).compute_loss(
        batch(tiny_workspace, users, items), training=False)
    np.testing.assert_allclose(float(loss), expected_loss(queries, candidates, items,
                                                          temperature), rtol=1e-5)


def test_logq_correction_subtracts_log_probability_from_each_candidate(model, tiny_workspace):
    """A sign error (adding log p) or a correction on the wrong axis gives another number."""
    users, items = [0, 1, 2, 3], np.array([0, 5, 9, 11])
    queries, candidates = _embeddings(model, tiny_workspace, users, items)
    skewed = np.full(tiny_workspace.dataset.num_items, 1e-3)
    skewed[0], skewed[9] = 0.5, 0.05
    loss = float(_variant(model, item_probability=skewed).compute_loss(
        batch(tiny_workspace, users, items), training=False))
    np.testing.assert_allclose(loss, expected_loss(queries, candidates, items, 0.1, skewed),
                               rtol=1e-5)
    wrong_sign = expected_loss(queries, candidates, items, 0.1, skewed, logq_sign=-1.0)
    plain = expected_loss(queries, candidates, items, 0.1)
    assert abs(loss - wrong_sign) > 0.1 and abs(loss - plain) > 0.1


def test_accidental_hits_are_masked_exactly(model, tiny_workspace):
    """Three users chose item 7: for each, the other two copies are not negatives."""
    users, items = [0, 1, 2, 3], np.array([7, 7, 7, 3])
    queries, candidates = _embeddings(model, tiny_workspace, users, items)
    features = batch(tiny_workspace, users, items)
    for remove in (True, False):
        loss = _variant(model, remove_accidental_hits=remove).compute_loss(features)
        np.testing.assert_allclose(float(loss), expected_loss(queries, candidates, items, 0.1,
                                                              remove_hits=remove), rtol=1e-5)


def test_training_lowers_the_loss(tiny_trained):
    losses = tiny_trained.history["loss"]
    assert len(losses) == 2 and losses[-1] < losses[0]


def test_frozen_encoders_stay_outside_the_model_and_unchanged(tiny_trained, tiny_workspace):
    model = tiny_trained.model
    encoder_ids = {id(w) for e in tiny_workspace.encoders.values() for w in e.weights}
    assert not encoder_ids & {id(w) for w in model.weights}
    assert model.content_table.trainable_weights == []
    import json

    run = json.loads((tiny_trained.output_dir / "run.json").read_text())
    assert run["encoders"] == tiny_workspace.encoder_identities()


def test_fine_tuned_text_encoder_trains_inside_the_item_tower_and_restores(tiny_config, tmp_path):
    config = derive_config(tiny_config, tmp_path, "text.trainable=true", "image.enabled=false",
                           "audio.enabled=false", "train.epochs=1")
    workspace = pipeline.prepare(config, progress=False)
    encoder = workspace.encoders["text"]
    assert workspace.contents["text"].values.dtype.kind in "OU"  # raw strings, not features
    before = encoder.identity()
    result = pipeline.train(config, workspace=workspace, progress=False)
    assert encoder in result.model.item_tower.encoders.values()
    assert encoder.identity() != before  # weights moved
    # the run restores (evaluate, export): the fresh encoder is the one it started from, and
    # the checkpoint carries the fine-tuned weights (run.json used to record the fine-tuned
    # identity, so every restore was refused as "the text encoder differs")
    restored, fresh = pipeline.restore(config.train.output_dir, config)
    n = fresh.dataset.num_items
    np.testing.assert_allclose(pipeline.embed_items(restored, n),
                               pipeline.embed_items(result.model, n), atol=1e-5)


def test_restored_model_reproduces_trained_embeddings(tiny_trained, tiny_config):
    restored, workspace = pipeline.restore(tiny_config.train.output_dir)
    n = workspace.dataset.num_items
    np.testing.assert_allclose(pipeline.embed_items(restored, n),
                               pipeline.embed_items(tiny_trained.model, n), atol=1e-5)
    users = workspace.user_ids[:5]
    np.testing.assert_allclose(pipeline.embed_users(restored, users),
                               pipeline.embed_users(tiny_trained.model, users), atol=1e-5)


def test_restore_without_checkpoint_is_a_training_error(tiny_config, tiny_workspace, tmp_path):
    config = derive_config(tiny_config, tmp_path)
    with pytest.raises(TrainingError, match=r"no checkpoint at .*latest.*train first"):
        pipeline.restore(config=config, workspace=tiny_workspace)


def test_a_checkpoint_folder_for_a_checkpoint_names_the_prefixes_in_it(tiny_trained,
                                                                       tiny_config, tmp_path):
    """``--checkpoint runs/demo/checkpoints`` said "no checkpoint at ... (expected ...index)"."""
    folder = Path(tiny_config.train.output_dir) / "checkpoints"
    with pytest.raises(TrainingError, match=rf"--checkpoint {folder} is a folder; a checkpoint "
                                            rf"is the prefix of its files, e\.g\. {folder}/"):
        pipeline.restore(tiny_config.train.output_dir, checkpoint=folder)
    with pytest.raises(TrainingError, match=r"is a folder; .* this one holds none"):
        pipeline.restore(tiny_config.train.output_dir, checkpoint=tmp_path)


def test_restore_with_different_encoder_is_a_config_error(tiny_trained, tiny_config):
    changed = load_config(tiny_config, ["text.seed=7"])
    with pytest.raises(ConfigError, match=r"text\.seed: 0 in the run .*, 7 requested"):
        pipeline.restore(config=changed)


def _variant(model, **kwargs) -> RetrievalModel:
    """A model sharing ``model``'s towers (so its weights) with other loss settings."""
    settings = dict(item_probability=None, temperature=0.1, alignment_weight=0.0)
    return RetrievalModel(model.query_tower, model.item_tower, model.content_table,
                          **{**settings, **kwargs})


def test_encoding_each_distinct_item_once_leaves_the_loss_unchanged(model, tiny_workspace):
    """Dedupe is an optimisation only: repeated items give the same retrieval loss."""
    features = batch(tiny_workspace, [0, 1, 2, 3, 4, 5], [7, 3, 7, 9, 3, 7])
    deduped = _variant(model, dedupe_items=True).compute_loss(features, training=False)
    plain = _variant(model, dedupe_items=False).compute_loss(features, training=False)
    np.testing.assert_allclose(deduped.numpy(), plain.numpy(), rtol=1e-6)


def test_alignment_sees_at_most_alignment_rows_distinct_items(model, tiny_workspace):
    features = batch(tiny_workspace, [0, 1, 2, 3, 4, 5], [7, 3, 7, 9, 3, 11])
    retrieval = _variant(model).compute_loss(features)
    loss = {rows: (_variant(model, alignment_weight=1.0, alignment_rows=rows)
                   .compute_loss(features) - retrieval).numpy()
            for rows in (0, 2, 4)}
    # distinct items in batch order: 7, 3, 9, 11; rows=4 is all of them
    np.testing.assert_allclose(loss[4], loss[0], rtol=1e-5)
    assert loss[2] < loss[4]


def test_training_batches_carry_user_indices_not_strings(tiny_workspace):
    """The train step holds no string op, which TPUs need: ids become indices in tf.data."""
    features = next(iter(pipeline.training_dataset(tiny_workspace)[0]))
    assert "user_id" not in features
    assert all(value.dtype != tf.string for value in features.values())
    lookup = user_lookup(tiny_workspace.user_ids)
    assert int(lookup(tf.constant([str(tiny_workspace.user_ids[3])]))[0]) == 4  # 0 = unknown


def test_indices_and_id_strings_give_the_same_query(model, tiny_workspace):
    ids = np.asarray(tiny_workspace.user_ids[:3]).astype(str)
    by_id = model.query_embeddings(tf.constant([*ids, "never-seen"])).numpy()
    by_index = model.query_embeddings(tf.constant([1, 2, 3, 0], tf.int64)).numpy()
    np.testing.assert_allclose(by_id, by_index, atol=1e-6)


def test_integer_user_ids_are_ids_not_vocabulary_positions():
    """pandas reads a numeric user_id column as int64: fed as ``user_id`` each id was taken as
    a row position of the vocabulary (id 5 answered for the user at position 5, 0 for the
    unknown user) without a word. ``user_index`` stays positions."""
    from tfmmrec.models.retrieval import user_input

    as_ids = user_input({"user_id": tf.constant([5, 0, 196], tf.int64)})
    assert as_ids.numpy().tolist() == [b"5", b"0", b"196"]
    positions = user_input({"user_index": tf.constant([5, 0], tf.int32)})
    assert positions.dtype == tf.int32 and positions.numpy().tolist() == [5, 0]


@pytest.mark.parametrize(("features", "message"), [
    ({"user": ["u000"], "item_index": [1]},
     "a training batch needs 'user_index' (vocabulary positions) or 'user_id' (ids); it has "
     "'item_index', 'user'"),
    ({"user_id": ["u000"], "item_id": [1]},
     "a training batch needs 'item_index' (catalogue positions of the positive items); it has "
     "'item_id', 'user_id'"),
    ({"user_id": [["u000"]], "item_index": [1]},
     "features['user_id'] must be a [batch] vector (batch the dataset, one value per example), "
     "got shape (1, 1)"),
    ({"user_id": ["u000"], "item_index": 1},
     "features['item_index'] must be a [batch] vector (batch the dataset, one value per "
     "example), got shape ()"),
    ({"user_id": [1.5], "item_index": [1]},
     "features['user_id'] must hold ids (strings, or integers), got float32"),
], ids=["no_user", "no_item_index", "user_rank_2", "unbatched_item", "float_ids"])
def test_a_malformed_training_batch_names_the_key_and_the_shape(model, features, message):
    """Each used to fail deep in a step: a KeyError in an autograph trace, Unique's rank
    error, or remove_accidental_hits on an unbatched example."""
    with pytest.raises(ValueError) as error:
        model.compute_loss({key: tf.constant(value) for key, value in features.items()})
    assert str(error.value) == message


def test_a_batch_of_unknown_rank_is_checked_when_the_step_runs(model):
    """Keras retraces a second ``fit``'s step with relaxed shapes, where the rank is unknown
    when traced: the check was skipped, and ``unique expects a 1D vector`` came from deep in
    the step (a review's second fit of an unbatched dataset)."""
    step = tf.function(model.compute_loss, input_signature=[
        {"user_id": tf.TensorSpec(None, tf.string), "item_index": tf.TensorSpec(None, tf.int32)}])
    assert np.isfinite(float(step({"user_id": tf.constant(["u000", "u001"]),
                                   "item_index": tf.constant([1, 2])})))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"user_id.* must be a \[batch\] vector \(batch the dataset"):
        step({"user_id": tf.constant([["u000"], ["u001"]]), "item_index": tf.constant([1, 2])})


@pytest.mark.parametrize("name", ["model.keras", "saved_model_dir"])
def test_keras_save_is_refused_with_the_ways_that_work(model, tmp_path, name):
    """It wrote a .keras file that load_model could never read (only a hidden warning said
    so), or failed on Keras's "forward pass is not defined"."""
    with pytest.raises(NotImplementedError, match=r"save_weights.*tfmmrec\.restore\(run_dir\)"
                                                  r".*tfmmrec\.export_model"):
        model.save(str(tmp_path / name))
    assert not (tmp_path / name).exists()


def test_train_step_compiles_with_xla_as_tpu_strategy_needs(tiny_workspace):
    """TPUs run the whole train step through XLA; without dedupe (``train.strategy: tpu``) it
    compiles and trains here on the CPU. (A real TPU was not available to run.)"""
    config = load_config(tiny_workspace.config, ["train.strategy=tpu"])
    ws = dataclasses.replace(tiny_workspace, config=config)
    tf.keras.utils.set_random_seed(0)
    model = pipeline.build_model(ws)
    assert not model.dedupe_items
    model.build_from_example()
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), jit_compile=True)
    dataset = pipeline.training_dataset(ws)[0]
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(dataset, epochs=3, verbose=0).history["loss"]
    # Three epochs of ~8 tiny batches: the epoch loss is too noisy to be monotone (it depends
    # on the batch order), so the check is that the compiled step ran and updated every weight.
    assert np.isfinite(history).all()
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights,
                                                               strict=True)]
    assert sum(changed) >= 0.9 * len(changed)


def test_fusion_selection_serves_the_validated_mix_and_restores_it(tiny_config, tiny_workspace,
                                                                    tmp_path):
    """``model.fusion_selection: validation`` trains once on a validation split, records every
    candidate's score, and the chosen serving embedding survives checkpoint and restore."""
    config = derive_config(tiny_config, tmp_path, "model.fusion_selection=validation",
                           "model.fusion_selection_metric=recall@10")
    run = pipeline.train(config, workspace=tiny_workspace, progress=False)
    record = json.loads((tmp_path / "run" / "run.json").read_text())["fusion_selection"]
    assert record["metric"] == "recall@10"
    assert "fused" in record["validation_scores"] and "1,0,0" in record["validation_scores"]
    best = max(record["validation_scores"].values())
    tower = run.model.item_tower
    mix = tower.serving_mix.numpy()
    if record["weights"] is None:
        assert record["validation_scores"]["fused"] == best and not mix.any()
    else:
        key = ",".join(f"{record['weights'][m]:g}" for m in tower.modalities)
        assert record["validation_scores"][key] == best
        np.testing.assert_allclose(mix, [record["weights"][m] for m in tower.modalities])
    restored, _ = pipeline.restore(config=config, workspace=tiny_workspace)
    np.testing.assert_allclose(restored.item_tower.serving_mix.numpy(), mix)
    np.testing.assert_allclose(restored.item_embeddings(tf.range(5)).numpy(),
                               run.model.item_embeddings(tf.range(5)).numpy(), atol=1e-5)


def test_fusion_selection_with_an_auto_linear_cf_is_chosen_for_the_kind_early_stopping_chose(
        tiny_config, tiny_workspace, tmp_path):
    """``linear_cf: auto`` is resolved by early stopping; the serving mix is then chosen on a
    model of that kind (this combination used to fail building the selection model)."""
    config = derive_config(tiny_config, tmp_path, "model.fusion_selection=validation",
                           "train.epochs=2", "train.early_stopping=true",
                           "model.user_history=true", "model.linear_cf=auto",
                           "model.linear_cf_rank=8")
    run = pipeline.train(config, workspace=tiny_workspace, progress=False)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    kind = record["early_stopping"]["linear_cf"]
    assert run.workspace.config.model.linear_cf == kind
    assert "fused" in record["fusion_selection"]["validation_scores"]
    assert record["fusion_selection"]["linear_cf"] == kind
    # the CF query's recency half-life was chosen on validation, recorded, and is restored
    from tfmmrec.evaluation.recency import HALF_LIVES

    half_life = run.model.query_tower.linear_cf.half_life.numpy()
    assert record["linear_cf_half_life"] == half_life and half_life in HALF_LIVES
    restored, _ = pipeline.restore(tmp_path / "run", workspace=run.workspace)
    assert restored.query_tower.linear_cf.half_life.numpy() == half_life


def test_serving_mix_of_one_modality_is_that_modality_alone(model):
    tower = model.item_tower
    content = model.content_table(tf.range(8))
    embeddings, mask = tower.modality_embeddings(content)
    try:
        tower.set_serving_mix([1.0] + [0.0] * (len(tower.modalities) - 1))
        served = tower(content).numpy()
    finally:
        tower.set_serving_mix(None)
    alone = tower.single_modality(embeddings, 0).numpy()
    has_it = mask.numpy()[:, 0] > 0
    np.testing.assert_allclose(served[has_it], alone[has_it], atol=1e-6)
    np.testing.assert_allclose(tower(content).numpy(), tower.encode(content)[0].numpy(),
                               atol=1e-6)  # unset: the fused embedding again


# --- full softmax, hybrid id dropout, history query -----------------------------------------


def test_full_softmax_loss_is_the_exact_cross_entropy_over_candidate_items(model,
                                                                            tiny_workspace):
    """Σ_b logsumexp_j(<q_b, c_j>/T) − <q_b, c_{y_b}>/T over the candidate items only; a
    positive outside the candidates contributes nothing."""
    num_items = tiny_workspace.dataset.num_items
    candidates = np.ones(num_items, bool)
    candidates[[2, 5]] = False
    full = _variant(model, negatives="full", candidate_items=candidates, temperature=0.2)
    users, targets = [0, 1, 2, 3], [0, 5, 9, 0]
    loss = full.compute_loss(batch(tiny_workspace, users, targets), training=False).numpy()
    queries = model.query_embeddings(tf.constant([u + 1 for u in users], tf.int64),
                                     exclude=tf.constant(targets)).numpy()
    items = model.item_embeddings(tf.range(num_items)).numpy()
    logits = queries @ items.T / 0.2
    kept = logits[:, candidates]
    lse = np.log(np.exp(kept - kept.max(1, keepdims=True)).sum(1)) + kept.max(1)
    expected = sum(lse[b] - logits[b, t] for b, t in enumerate(targets) if candidates[t])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_full_softmax_is_the_in_batch_loss_when_the_batch_is_the_catalogue(model,
                                                                            tiny_workspace):
    """With every item once in the batch and no logQ, both objectives are the same softmax."""
    num_items = tiny_workspace.dataset.num_items
    users = np.arange(num_items) % len(tiny_workspace.user_ids)
    features = batch(tiny_workspace, users, np.arange(num_items))
    full = _variant(model, negatives="full").compute_loss(features, training=False)
    in_batch = _variant(model).compute_loss(features, training=False)
    np.testing.assert_allclose(full.numpy(), in_batch.numpy(), rtol=1e-5)


def test_unknown_negatives_mode_is_rejected(model):
    with pytest.raises(ValueError, match="negatives"):
        _variant(model, negatives="sampled")


def test_cold_items_are_not_full_softmax_candidates(tiny_config, tiny_workspace):
    config = load_config(tiny_config, ["data.split=cold_start", "model.negatives=full"])
    ws = pipeline.prepare(config, progress=False)
    model = pipeline.build_model(ws)
    candidates = set(model.candidate_index.numpy().tolist())
    assert candidates == set(ws.split.train["item_index"].unique().tolist())
    assert not candidates & set(ws.split.test_items.tolist())


def test_history_query_leaves_each_training_target_out_of_its_own_history(tiny_config,
                                                                          tiny_workspace):
    config = load_config(tiny_config, ["model.user_history=true", "model.user_id_embedding=false",
                                       "model.user_features=false"])
    ws = dataclasses.replace(tiny_workspace, config=config)
    tf.keras.utils.set_random_seed(0)
    model = pipeline.build_model(ws)
    model.build_from_example()
    user = str(ws.user_ids[0])
    history = ws.split.train.loc[ws.split.train["user_id"].astype(str) == user, "item_index"]
    seen, unseen = int(history.iloc[0]), int(np.setdiff1d(np.arange(ws.dataset.num_items),
                                                          history)[0])
    index = tf.constant([1, 1], tf.int64)
    plain = model.query_embeddings(index).numpy()
    excluded = model.query_embeddings(index, exclude=tf.constant([seen, unseen])).numpy()
    assert not np.allclose(excluded[0], plain[0])  # its own target is left out
    np.testing.assert_allclose(excluded[1], plain[1], atol=1e-6)  # not in history: unchanged
    assert model.query_tower.id_embedding is None


def test_item_id_dropout_hides_whole_id_embeddings_only_in_training(model, tiny_workspace):
    from tfmmrec.towers.item import ItemTower

    tower = ItemTower(model.item_tower.modalities, 4, num_items=tiny_workspace.dataset.num_items,
                      id_dropout=0.5)
    content = model.content_table(tf.range(40))
    tower(content)
    ids = np.random.default_rng(0).normal(size=(tiny_workspace.dataset.num_items, 4))
    tower.id_embedding.set_weights([ids.astype(np.float32)])
    embeddings, mask = tower.modality_embeddings(content)
    content_only = tower.fuse(embeddings, mask).numpy()
    hybrid = tower.fuse(embeddings, mask, tf.range(40)).numpy()
    tf.random.set_seed(1)
    trained = tower.fuse(embeddings, mask, tf.range(40), training=True).numpy()
    dropped = np.all(np.isclose(trained, content_only, atol=1e-6), axis=1)
    kept = np.all(np.isclose(trained, hybrid, atol=1e-6), axis=1)
    assert np.all(dropped | kept) and 5 < dropped.sum() < 35  # per item: all or nothing
    np.testing.assert_allclose(tower.fuse(embeddings, mask, tf.range(40)).numpy(), hybrid)


def _noise_streams(model) -> list:
    return [layer.noise.generator for layer in [model, *model.submodules]
            if isinstance(getattr(layer, "noise", None), Noise)]


def _training_loss(model, features, states) -> float:
    """``compute_loss(training=True)`` with every noise stream at ``states`` (same masks)."""
    for generator, state in zip(_noise_streams(model), states, strict=True):
        generator.reset(state)
    return float(model.compute_loss(features, training=True))


def test_bfloat16_training_loss_stays_close_to_float32_with_the_same_masks(tiny_config,
                                                                           tmp_path):
    """``model.training_precision=bfloat16`` reaches the logits, history and projections; with
    the same dropout masks the training loss is within 1 % of float32's, and inference
    embeddings (hence evaluation and exports) are float32's bit for bit."""
    losses, items = {}, {}
    for precision in ("float32", "bfloat16"):
        config = derive_config(tiny_config, tmp_path, "model.negatives=full",
                               "model.user_history=true", "model.history_dropout=0.5",
                               f"model.training_precision={precision}")
        ws = pipeline.prepare(config)
        tf.keras.utils.set_random_seed(0)
        model = pipeline.build_model(ws)
        model.build_from_example()
        assert model.training_precision == precision
        assert model.query_tower.history_encoder.training_precision == precision
        assert {p.training_precision for p in model.item_tower.projections.values()} == {
            precision}
        features = batch(ws, [0, 1, 2, 3, 4, 5], [7, 3, 7, 9, 3, 1])
        states = [g.state.numpy() for g in _noise_streams(model)]
        losses[precision] = [_training_loss(model, features, states) for _ in range(2)]
        items[precision] = model.item_embeddings(tf.range(10)).numpy()
    assert losses["float32"][0] == losses["float32"][1]  # the reset really repeats the masks
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=1e-2)
    assert losses["bfloat16"][0] != losses["float32"][0]
    np.testing.assert_array_equal(items["bfloat16"], items["float32"])


def test_unknown_training_precision_is_a_config_error(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.training_precision"):
        derive_config(tiny_config, tmp_path, "model.training_precision=float16")
    with pytest.raises(ValueError, match="training_precision"):
        RetrievalModel(None, None, None, training_precision="fp8")


def test_softmax_losses_match_the_plain_full_softmax_in_values_and_gradients():
    """``softmax_losses`` keeps every scaling on the [B, d] side (custom gradient): same
    per-row losses and the same gradients as the plain logits → sparse softmax cross-entropy,
    under a non-uniform upstream gradient (per-row weights) and a non-trivial temperature."""
    from tfmmrec.models.retrieval import softmax_losses

    rng = np.random.default_rng(0)
    queries = tf.constant(rng.normal(size=(6, 4)), tf.float32)
    candidates = tf.constant(rng.normal(size=(9, 4)), tf.float32)
    labels = tf.constant(rng.integers(0, 9, 6))
    weights = tf.constant(rng.uniform(0, 2, 6), tf.float32)
    results = []
    for compute in (lambda q, c: softmax_losses(q, c, labels, 0.3),
                    lambda q, c: tf.nn.sparse_softmax_cross_entropy_with_logits(
                        labels, tf.matmul(q, c, transpose_b=True) / 0.3)):
        with tf.GradientTape() as tape:
            tape.watch([queries, candidates])
            losses = compute(queries, candidates)
            total = tf.reduce_sum(losses * weights)
        results.append([losses, *tape.gradient(total, [queries, candidates])])
    for got, expected in zip(*results, strict=True):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_softmax_cross_entropy_matches_the_op_and_does_not_underflow():
    from tfmmrec.models.retrieval import _softmax_cross_entropy

    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(0, 3, (5, 7)), tf.float32)
    labels = tf.constant([0, 6, 3, 3, 1])
    values, backprop = _softmax_cross_entropy(logits, labels)
    expected = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=logits, labels=labels)
    np.testing.assert_allclose(values.numpy(), expected[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backprop.numpy(), expected[1].numpy(), atol=1e-6)
    # the label 300 below the best: its probability is 0 in float32, its loss still finite
    far = tf.constant([[0.0, 300.0, 1.0]])
    values, _ = _softmax_cross_entropy(far, tf.constant([0]))
    np.testing.assert_allclose(values.numpy(), [300.0 + np.log1p(np.exp(-300) + np.exp(-299))],
                               rtol=1e-6)


# --- the per-user objective (model.objective: users) -----------------------------------------


def _users_model(tiny_config, tiny_workspace, *overrides):
    config = load_config(tiny_config, ["model.objective=users", "model.user_history=true",
                                       "model.negatives=full", "model.history_dropout=0.5",
                                       "model.alignment_weight=0", *overrides])
    ws = dataclasses.replace(tiny_workspace, config=config)
    tf.keras.utils.set_random_seed(0)
    model = pipeline.build_model(ws)
    model.build_from_example()
    return ws, model


def test_multinomial_losses_sum_the_softmax_loss_of_each_target_in_values_and_gradients():
    """One row with targets counted n_j is the sum of n_j single-target rows (same query)."""
    from tfmmrec.models.retrieval import multinomial_losses, softmax_losses

    rng = np.random.default_rng(1)
    queries = tf.constant(rng.normal(size=(3, 4)), tf.float32)
    candidates = tf.constant(rng.normal(size=(7, 4)), tf.float32)
    counts = np.array([[1, 0, 2, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0], [0, 3, 0, 0, 1, 0, 0]])
    rows, labels = np.nonzero(counts)
    rows, labels = np.repeat(rows, counts[rows, labels]), np.repeat(labels, counts[rows, labels])
    results = []
    for compute in (lambda q, c: multinomial_losses(q, c, tf.constant(counts, tf.float32), 0.3),
                    lambda q, c: tf.math.unsorted_segment_sum(
                        softmax_losses(tf.gather(q, rows), c, tf.constant(labels), 0.3),
                        rows, 3)):
        with tf.GradientTape() as tape:
            tape.watch([queries, candidates])
            losses = compute(queries, candidates)
            total = tf.reduce_sum(losses)
        results.append([losses, *map(tf.convert_to_tensor,
                                     tape.gradient(total, [queries, candidates]))])
    for got, expected in zip(*results, strict=True):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert results[0][0].numpy()[1] == 0.0  # a user with no hidden entry adds nothing


def test_users_objective_scores_each_hidden_item_against_the_query_of_the_kept_history(
        tiny_config, tiny_workspace):
    """loss = Σ_u Σ_{j hidden} [logsumexp_k(<q_u, c_k>/T) − <q_u, c_j>/T], q_u read from the
    entries the same dropout draw kept; hidden ∪ kept is the user's history, disjoint."""
    _, model = _users_model(tiny_config, tiny_workspace, "model.user_id_dropout=0")
    encoder = model.query_tower.history_encoder
    index = tf.constant([1, 2, 3, 4], tf.int64)
    states = [g.state.numpy() for g in _noise_streams(model)]
    for generator, state in zip(_noise_streams(model), states, strict=True):
        generator.reset(state)
    loss = float(model.compute_loss({"user_index": index}, training=False))
    for generator, state in zip(_noise_streams(model), states, strict=True):
        generator.reset(state)
    _, targets = encoder.split(index)
    targets = targets.numpy()
    items, weights = encoder.gather(index)
    kept_items, kept_weights = [], []
    for row, (history, weight) in enumerate(zip(items.to_list(), weights.to_list(),
                                                strict=True)):
        hidden = set(np.flatnonzero(targets[row]).tolist())
        assert hidden <= set(history) and set(np.flatnonzero(targets[row] == 0)) >= (
            set(range(targets.shape[1])) - set(history))
        keep = [i for i, item in enumerate(history) if item not in hidden]
        kept_items.append([history[i] for i in keep])
        kept_weights.append([weight[i] for i in keep])
    assert 0 < targets.sum() < len(items.flat_values)  # some hidden, some kept
    history = (tf.ragged.constant(kept_items, tf.int64, row_splits_dtype=tf.int64),
               tf.ragged.constant(kept_weights, tf.float32, row_splits_dtype=tf.int64))
    queries = model.query_tower(index, history=history).numpy()
    candidates = model.candidate_index.numpy()
    logits = queries @ model.item_embeddings(tf.constant(candidates)).numpy().T / model.temperature
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    expected = sum(lse[u] - logits[u, list(candidates).index(j)]
                   for u in range(len(index)) for j in np.flatnonzero(targets[u]))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_user_batches_visit_every_user_once_per_kept_share_with_about_batch_size_targets(
        tiny_config, tiny_workspace):
    ws, _ = _users_model(tiny_config, tiny_workspace, "train.batch_size=64")
    dataset, examples, steps = pipeline.training_dataset(ws)
    batches = [b for b in dataset]
    assert all(set(b) == {"user_index"} for b in batches)
    seen = np.concatenate([b["user_index"].numpy() for b in batches])
    train_users = np.unique(pipeline.user_indices(ws.split.train["user_id"], ws.user_ids))
    per_user = len(ws.split.train) / len(train_users) * 0.5
    assert len(batches[0]["user_index"]) == round(64 / per_user)
    leftover = len(train_users) * 2 % len(batches[0]["user_index"])  # the dropped remainder
    counts = np.bincount(seen, minlength=train_users.max() + 1)[train_users]
    assert counts.sum() == 2 * len(train_users) - leftover and counts.max() <= 2
    assert examples == len(ws.split.train)  # two visits × half hidden: each row about once
    assert steps == len(batches)  # what fit runs per epoch when the dataset covers several


def test_users_objective_trains_and_restores(tiny_config, tiny_workspace, tmp_path):
    config = derive_config(tiny_config, tmp_path, "model.objective=users",
                           "model.user_history=true", "model.negatives=full",
                           "model.history_dropout=0.5", "train.epochs=3", "train.batch_size=64")
    result = pipeline.train(config, workspace=tiny_workspace, progress=False)
    losses = result.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    restored, _ = pipeline.restore(config.train.output_dir, config, workspace=tiny_workspace)
    index = tf.constant([1, 2, 3], tf.int64)
    np.testing.assert_allclose(restored.query_embeddings(index).numpy(),
                               result.model.query_embeddings(index).numpy(), atol=1e-6)


@pytest.mark.parametrize("overrides, field", [
    (["model.user_history=false"], "model.objective"),
    (["model.negatives=in_batch"], "model.objective"),
    (["model.history_dropout=0"], "model.objective"),
    (["ranking.enabled=true"], "model.objective"),
    (["train.tfrecords=somewhere"], "model.objective"),
])
def test_users_objective_needs_its_history_softmax_and_dropout(tiny_config, overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(tiny_config, ["model.objective=users", "model.user_history=true",
                                  "model.negatives=full", "model.history_dropout=0.5",
                                  *overrides])


@pytest.mark.parametrize(("arguments", "message"), [
    ({"temperature": 0.0}, "temperature must be a finite number > 0, got 0.0"),
    ({"temperature": -0.05}, "temperature must be a finite number > 0, got -0.05"),
    ({"alignment_temperature": 0.0}, "alignment_temperature must be a finite number > 0"),
    ({"alignment_weight": -1.0}, "alignment_weight must be a finite number >= 0, got -1.0"),
    ({"alignment_rows": -5}, "alignment_rows must be an integer >= 1, got -5"),
    ({"item_probability": np.ones(5)}, "item_probability must be one finite value >= 0 per "
                                       "catalogue item"),
    ({"item_probability": -np.ones(80)}, "with negative or non-finite values"),
    ({"negatives": "full", "candidate_items": np.ones(3, bool)},
     "candidate_items must be 80 booleans (one per catalogue item)"),
], ids=["zero_temperature", "negative_temperature", "zero_alignment_temperature",
        "negative_alignment_weight", "negative_alignment_rows", "short_probability",
        "negative_probability", "short_candidates"])
def test_nonsense_arguments_are_refused_when_the_model_is_made(model, arguments, message):
    """Each was accepted, then trained to a NaN loss or failed in a graph deep inside fit
    (the candidate_items length check compared the mask with its own length)."""
    with pytest.raises(ValueError) as raised:
        _variant(model, **arguments)
    assert message in str(raised.value)


def test_the_parts_must_be_towers_of_one_width(model):
    from tfmmrec.towers.query import QueryTower

    with pytest.raises(ValueError, match="query_tower must be a QueryTower, got ItemTower"):
        RetrievalModel(model.item_tower, model.query_tower, model.content_table)
    narrow = QueryTower(["u1"], model.item_tower.dim // 2)
    with pytest.raises(ValueError, match=r"the towers embed into one space: query_tower\.dim="):
        RetrievalModel(narrow, model.item_tower, model.content_table)
    # a table missing one of the tower's modalities: a KeyError inside the tower's first call
    kept = model.content_table.modalities[0]
    table = ItemContentTable(
        {kept: tf.nest.map_structure(lambda v: v.numpy(), model.content_table._contents[kept])},
        {kept: model.content_table._masks[kept].numpy()})
    with pytest.raises(ValueError, match=rf"item_tower embeds .* but content_table holds {kept}: "
                                         "build the table with every modality of the tower"):
        RetrievalModel(model.query_tower, model.item_tower, table)


def test_a_misspelt_hidden_modality_is_refused_not_ignored(model):
    """An ablation with a typo reported the full model under the ablation's name."""
    with pytest.raises(ValueError, match=r"hidden_modalities: unknown modality 'imgae'; the "
                                         r"model's are "):
        model.item_embeddings(tf.constant([0, 1]), hidden_modalities=("imgae",))
