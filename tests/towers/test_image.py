"""Tests for tfmmrec.towers.image: small CNN, keras.applications and TF-Hub image encoders."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import shared_path
from tests.towers import tower_checks
from tfmmrec.config import ImageTowerConfig
from tfmmrec.errors import ConfigError
from tfmmrec.towers.image import ImageEncoder, build_image_encoder

IMAGES = tf.random.stateless_uniform([3, 32, 32, 3], seed=[1, 2])
IMAGE_SPEC = tf.TensorSpec([None, 32, 32, 3], tf.float32)


def small(**kwargs) -> ImageEncoder:
    return build_image_encoder(ImageTowerConfig(image_size=32, cnn_filters=[4, 8], **kwargs))


def test_small_cnn_standard_checks(tmp_path):
    encoder = small()
    tower_checks.check_tower(encoder, [IMAGES], (3, 16), [IMAGE_SPEC], tmp_path / "saved")
    assert encoder.feature_dim == 16 and encoder.modality == "image"


def test_encoder_deserializes_as_a_keras_layer_without_custom_objects():
    tower_checks.check_keras_serialization(small(trainable=True))


def test_small_cnn_frozen_weights_stay_frozen():
    tower_checks.check_frozen(small(trainable=False), [IMAGES])


def test_small_cnn_trainable_weights_change():
    tower_checks.check_trainable(small(trainable=True), [IMAGES])


def test_small_cnn_is_seeded_so_identity_is_stable():
    assert small().identity() == small().identity()
    assert small(seed=1).identity() != small().identity()
    np.testing.assert_array_equal(small()(IMAGES).numpy(), small()(IMAGES).numpy())


def test_image_content_changes_the_feature():
    encoder = small()
    features = encoder(tf.stack([tf.zeros([32, 32, 3]), tf.ones([32, 32, 3])])).numpy()
    assert not np.allclose(features[0], features[1])


def test_keras_application_frozen_keeps_batchnorm_statistics():
    encoder = build_image_encoder(ImageTowerConfig(backbone="keras_app",
                                                   application="MobileNetV2", image_size=32))
    assert encoder.feature_dim == 1280
    assert any("moving_mean" in w.name for w in encoder.weights)
    tower_checks.check_frozen(encoder, [IMAGES])


def test_unsupported_keras_application_lists_choices():
    with pytest.raises(ConfigError, match=r"image\.application='VGG99' is not supported.*"
                                          r"MobileNetV2"):
        build_image_encoder(ImageTowerConfig(backbone="keras_app", application="VGG99"))


def test_missing_hub_handle_raises_config_error_naming_field(tmp_path):
    with pytest.raises(ConfigError, match=r"image\.handle=.*nothing-here"):
        build_image_encoder(ImageTowerConfig(backbone="hub", handle=str(tmp_path / "nothing-here")))


# --- pretrained EfficientNet-Lite0 (TF-Hub format) from ../shared ----------------------------


@pytest.fixture(scope="module")
def efficientnet() -> ImageEncoder:
    handle = shared_path("weights", "efficientnet-lite0")
    return build_image_encoder(ImageTowerConfig(backbone="hub", handle=str(handle), image_size=32))


@pytest.mark.needs_shared
def test_efficientnet_hub_frozen_gives_1280_features_and_stays_frozen(efficientnet):
    tower_checks.check_output(efficientnet, [IMAGES], (3, 1280))
    tower_checks.check_frozen(efficientnet, [IMAGES])


@pytest.mark.needs_shared
def test_efficientnet_hub_unfrozen_exposes_its_weights(efficientnet):
    efficientnet.set_trainable(True)
    try:
        assert len(efficientnet.trainable_weights) > 100
        assert len(efficientnet.non_trainable_weights) > 0  # BatchNorm statistics
    finally:
        efficientnet.set_trainable(False)
    assert efficientnet.trainable_weights == []
