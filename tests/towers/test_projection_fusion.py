"""Tests for tfmmrec.towers.projection and .fusion: shared-space projection, masked fusion."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.towers import tower_checks
from tfmmrec.towers.fusion import FUSION_MODES, MaskedFusion, drop_modalities, masked_mean
from tfmmrec.towers.projection import Dropout, ModalityProjection, keep_mask

FEATURES = tf.random.stateless_normal([4, 12], seed=[0, 1])
EMBEDDINGS = tf.random.stateless_normal([4, 3, 8], seed=[2, 3])
MASK = tf.constant([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
FUSION_SPECS = [tf.TensorSpec([None, 3, 8], tf.float32), tf.TensorSpec([None, 3], tf.float32)]


# --- projection -------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [(), (16,)], ids=["linear", "hidden"])
def test_projection_standard_checks(hidden, tmp_path):
    projection = ModalityProjection(6, hidden)
    tower_checks.check_tower(projection, [FEATURES], (4, 6),
                             [tf.TensorSpec([None, 12], tf.float32)], tmp_path / "saved")
    tower_checks.check_trainable(projection, [FEATURES])


def test_projection_layer_norm_makes_feature_scale_irrelevant():
    projection = ModalityProjection(6)
    # Up to LayerNormalization's epsilon (1e-3 in Keras 2).
    np.testing.assert_allclose(projection(FEATURES * 100.0).numpy(), projection(FEATURES).numpy(),
                               rtol=5e-3, atol=1e-3)


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.8])
def test_keep_mask_keeps_each_entry_with_probability_one_minus_rate(rate):
    mask = keep_mask([400, 501], rate, [0, 1]).numpy()  # odd size: the last word is half used
    assert mask.shape == (400, 501) and mask.dtype == bool
    # 200,400 draws: the kept share is within 4 standard deviations of 1 - rate
    tolerance = 4 * np.sqrt(max(rate * (1 - rate), 1e-12) / mask.size)
    assert abs(mask.mean() - (1 - rate)) <= tolerance
    assert abs(mask[:, 0].mean() - mask[:, -1].mean()) < 0.1  # no position is favoured
    assert not np.array_equal(mask, keep_mask([400, 501], rate, [0, 2]).numpy()) or rate == 0


def test_dropout_matches_keras_dropout_in_inference_and_in_expectation():
    x = tf.random.stateless_normal([300, 200], seed=[4, 5])
    layer = Dropout(0.8)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    tf.random.set_seed(1)
    out = layer(x, training=True).numpy()
    kept = out != 0
    # kept entries are scaled by 1 / (1 - rate), as tf.keras.layers.Dropout does
    np.testing.assert_allclose(out[kept], x.numpy()[kept] / 0.2, rtol=1e-6)
    assert abs(kept.mean() - 0.2) < 0.01
    assert Dropout.from_config(layer.get_config()).rate == 0.8


def test_projection_casts_float16_features_to_float32():
    projection = ModalityProjection(6)
    out = projection(tf.cast(FEATURES, tf.float16))
    assert out.dtype == tf.float32 and out.shape == (4, 6)


def test_projection_config_round_trips():
    projection = ModalityProjection(6, [16, 8], dropout=0.2, name="p")
    clone = ModalityProjection.from_config(projection.get_config())
    assert (clone.dim, clone.hidden, clone.dropout, clone.name) == (6, (16, 8), 0.2, "p")


def test_projection_deserializes_as_a_keras_layer_without_custom_objects():
    tower_checks.check_keras_serialization(ModalityProjection(6, [16], dropout=0.2, name="p"))


# --- fusion -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_fusion_standard_checks(mode, tmp_path):
    fusion = MaskedFusion(mode)
    out = tower_checks.check_tower(fusion, [EMBEDDINGS, MASK], (4, 8), FUSION_SPECS,
                                   tmp_path / "saved")
    np.testing.assert_array_equal(out[3], 0.0)  # an item with nothing present: zeros, not NaN


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_fusion_ignores_content_of_masked_modalities(mode):
    fusion = MaskedFusion(mode)
    original = fusion(EMBEDDINGS, MASK).numpy()
    noise = tf.random.stateless_normal(EMBEDDINGS.shape, seed=[9, 9]) * 100.0
    changed = EMBEDDINGS + noise * (1.0 - MASK)[..., None]
    np.testing.assert_allclose(fusion(changed, MASK).numpy(), original, atol=1e-5)


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_fusion_of_one_present_modality_is_that_modality(mode):
    out = MaskedFusion(mode)(EMBEDDINGS, MASK).numpy()
    np.testing.assert_allclose(out[2], EMBEDDINGS[2, 1].numpy(), atol=1e-5)


def test_mean_fusion_is_the_mean_over_present_modalities():
    out = MaskedFusion("mean")(EMBEDDINGS, MASK).numpy()
    expected = (EMBEDDINGS[1, 0] + EMBEDDINGS[1, 2]).numpy() / 2
    np.testing.assert_allclose(out[1], expected, atol=1e-6)
    np.testing.assert_allclose(masked_mean(EMBEDDINGS, MASK).numpy(), out, atol=1e-6)


def test_concat_mlp_starts_as_the_masked_mean_and_is_trainable():
    fusion = MaskedFusion("concat_mlp")
    np.testing.assert_allclose(fusion(EMBEDDINGS, MASK).numpy(),
                               masked_mean(EMBEDDINGS, MASK).numpy(), atol=1e-6)
    tower_checks.check_trainable(fusion, [EMBEDDINGS, MASK])


@pytest.mark.parametrize("mode", FUSION_MODES)
@pytest.mark.parametrize("built", ["called", "build only", False])
def test_alone_is_the_fusion_of_each_modality_by_itself(mode, built):
    fusion = MaskedFusion(mode)
    if built == "build only":  # built (as from a config) but its MLP never called
        fusion.build(EMBEDDINGS.shape)
    elif built:
        fusion(EMBEDDINGS, MASK)
        # random weights everywhere (concat_mlp's last layer starts at zero)
        fusion.set_weights([tf.random.stateless_normal(w.shape, seed=[3, i]).numpy()
                            for i, w in enumerate(fusion.get_weights())])
    alone = fusion.alone(EMBEDDINGS).numpy()
    count = EMBEDDINGS.shape[1]
    assert alone.shape == (count, *EMBEDDINGS.shape[::2])
    for m in range(count):
        one = tf.one_hot(tf.fill([EMBEDDINGS.shape[0]], m), count)
        expected = fusion(EMBEDDINGS * one[..., None], one).numpy()
        np.testing.assert_allclose(alone[m], expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["gated", "attention"])
def test_weighted_fusion_is_a_convex_combination_of_present_modalities(mode):
    out = MaskedFusion(mode)(EMBEDDINGS, MASK).numpy()
    low = tf.reduce_min(EMBEDDINGS[1] + (1 - MASK[1])[:, None] * 1e9, axis=0).numpy()
    high = tf.reduce_max(EMBEDDINGS[1] - (1 - MASK[1])[:, None] * 1e9, axis=0).numpy()
    assert np.all(out[1] >= low - 1e-5) and np.all(out[1] <= high + 1e-5)


def test_unknown_fusion_mode_is_rejected():
    with pytest.raises(ValueError, match="fusion mode must be one of"):
        MaskedFusion("sum")


def test_fusion_config_round_trips():
    clone = MaskedFusion.from_config(MaskedFusion("gated", hidden=7).get_config())
    assert (clone.mode, clone.hidden) == ("gated", 7)


def test_fusion_deserializes_as_a_keras_layer_without_custom_objects():
    tower_checks.check_keras_serialization(MaskedFusion("attention", hidden=7, name="f"))


# --- modality dropout -------------------------------------------------------------------------


def test_modality_dropout_never_hides_every_present_modality():
    mask = tf.tile(MASK, [500, 1])
    dropped = drop_modalities(mask, rate=0.9, seed=[1, 0]).numpy()
    present = mask.numpy()
    assert np.all(dropped <= present)  # only hides, never invents
    has_any = present.sum(1) > 0
    assert np.all(dropped[has_any].sum(1) >= 1)
    assert dropped[has_any].sum() < present[has_any].sum()  # but does hide some
    assert np.all(dropped[~has_any] == 0)


def test_modality_dropout_rate_zero_keeps_mask():
    kept = drop_modalities(MASK, rate=0.0, seed=[1, 0]).numpy()
    np.testing.assert_array_equal(kept, MASK.numpy())


def test_feature_dropout_drops_encoder_features_in_training_only():
    projection = ModalityProjection(4, feature_dropout=0.9)
    features = tf.random.normal([64, 32], seed=0)
    inference = projection(features, training=False)
    np.testing.assert_allclose(projection(features, training=False).numpy(), inference.numpy())
    assert not np.allclose(projection(features, training=True).numpy(), inference.numpy())
    assert ModalityProjection.from_config(projection.get_config()).feature_dropout == 0.9


def test_bfloat16_training_projection_is_close_and_inference_stays_float32():
    """``training_precision`` rounds the training-time products only (hidden and output
    maps): inference is the float32 projection bit for bit, and both configs round-trip."""
    features = tf.constant(np.random.default_rng(3).standard_normal((5, 40)), tf.float32)
    full = ModalityProjection(6, [16])
    half = ModalityProjection(6, [16], training_precision="bfloat16")
    full(features)
    half(features)
    half.set_weights(full.get_weights())
    np.testing.assert_array_equal(half(features).numpy(), full(features).numpy())
    trained = half(features, training=True).numpy()
    reference = full(features, training=True).numpy()
    np.testing.assert_allclose(trained, reference, rtol=0.05, atol=0.05)
    assert not np.array_equal(trained, reference)
    clone = ModalityProjection.from_config(half.get_config())
    assert clone.training_precision == "bfloat16"
    with pytest.raises(ValueError, match=r"training_precision.*'int8'"):
        ModalityProjection(6, training_precision="int8")


@pytest.mark.parametrize("hidden", [(), (6,)])
@pytest.mark.parametrize("feature_dropout, shared", [(0.0, False), (0.8, False), (0.8, True)],
                         ids=["no_dropout", "dropout", "shared_dropout"])
def test_projecting_standardized_features_equals_projecting_the_features(hidden,
                                                                         feature_dropout,
                                                                         shared):
    """The full softmax's path (LayerNorm statistics computed once, scale and offset folded
    into the map when no feature dropout applies): the same outputs and the same gradients as
    ``call`` on the raw features, in inference and (masks replayed) in training."""
    from tfmmrec.towers.noise import Noise

    rng = np.random.default_rng(0)
    features = tf.constant(rng.normal(3.0, 2.0, (7, 10)), tf.float32)
    layer = ModalityProjection(4, hidden, feature_dropout=feature_dropout,
                               feature_dropout_shared=shared)
    layer(features)
    # non-trivial LayerNorm scale and offset (they start at 1 and 0)
    layer.norm.set_weights([rng.uniform(0.5, 2, 10).astype(np.float32),
                            rng.normal(0, 1, 10).astype(np.float32)])
    standardized = layer.standardize(features)
    np.testing.assert_allclose(layer.project_standardized(standardized).numpy(),
                               layer(features).numpy(), rtol=1e-4, atol=1e-5)
    results = []
    for project in (lambda: layer(features, training=True),
                    lambda: layer.project_standardized(standardized, training=True)):
        layer.feature_drop.noise = Noise(seed=5)  # the same dropout mask for both
        layer.kept_noise = Noise(seed=5)
        with tf.GradientTape() as tape:
            out = project()
            loss = tf.reduce_sum(out ** 2)
        results.append((out.numpy(), [tf.convert_to_tensor(g) for g in
                                      tape.gradient(loss, layer.trainable_variables)]))
    (out_a, grads_a), (out_b, grads_b) = results
    np.testing.assert_allclose(out_b, out_a, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads_a, grads_b, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("hidden", [(), (6,)])
def test_shared_feature_dropout_is_one_mask_for_every_row(hidden):
    """``feature_dropout_shared``: every row of a step loses the same dimensions, exactly
    ``round((1 − rate) · F)`` are kept (scaled by ``F / kept``), and the product over the kept
    dimensions equals the full map of the masked, scaled input; dropped dimensions get no
    gradient; inference is unchanged."""
    from tfmmrec.towers.noise import Noise

    rng = np.random.default_rng(1)
    features = tf.constant(rng.normal(1.0, 2.0, (9, 20)), tf.float32)
    layer = ModalityProjection(5, hidden, feature_dropout=0.75, feature_dropout_shared=True)
    reference = ModalityProjection(5, hidden)
    inference = layer(features).numpy()
    reference(features)
    reference.set_weights(layer.get_weights())
    np.testing.assert_array_equal(reference(features).numpy(), inference)

    layer.kept_noise = Noise(seed=3)
    kept = layer.kept_features(20).numpy()
    assert len(kept) == 5 and len(set(kept)) == 5 and list(kept) == sorted(kept)
    mask = np.zeros(20, np.float32)
    mask[kept] = 20 / 5
    layer.kept_noise = Noise(seed=3)  # the same draw again
    with tf.GradientTape() as tape:
        out = layer(features, training=True)
        loss = tf.reduce_sum(out ** 2)
    first = layer.layers[0] if hidden else layer.out
    kernel_grad = tf.convert_to_tensor(tape.gradient(loss, first.kernel)).numpy()
    expected = reference.layers[0] if hidden else reference.out
    masked = expected(reference.norm(features) * mask)
    if hidden:
        masked = reference.out(masked)
    np.testing.assert_allclose(out.numpy(), masked.numpy(), rtol=1e-5, atol=1e-5)
    dropped = np.setdiff1d(np.arange(20), kept)
    assert np.all(kernel_grad[dropped] == 0) and np.any(kernel_grad[kept] != 0)
    # a fresh mask each step; the config round-trips
    assert len({tuple(layer.kept_features(20).numpy()) for _ in range(5)}) > 1
    assert ModalityProjection.from_config(layer.get_config()).feature_dropout_shared is True
    with pytest.raises(ValueError, match=r"feature_dropout must be a rate in \[0, 1\)"):
        ModalityProjection(5, feature_dropout=1.0)


def test_unshared_projection_takes_no_extra_draw_from_the_seeded_stream():
    """Layers seed their noise from Python's (seeded) stream in creation order: the shared
    mask's stream exists only when used, so default runs keep every layer's masks."""
    import random

    random.seed(0)
    ModalityProjection(4, feature_dropout=0.8)
    after_projection = random.random()
    random.seed(0)
    Dropout(0.8), Dropout(0.0)  # the projection's own two dropout layers
    assert random.random() == after_projection
    random.seed(0)
    ModalityProjection(4, feature_dropout=0.8, feature_dropout_shared=True)
    assert random.random() != after_projection
