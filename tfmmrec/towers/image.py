"""Towers: the CNN image encoder (float images in [0, 1] → feature vector).

Three backbones behind one layer: a small built-in CNN (fast, random init, no download), a
``tf.keras.applications`` model, or any TF-Hub image feature-vector SavedModel via hub.KerasLayer.
"""

from __future__ import annotations

import tensorflow as tf

from tfmmrec.config import ImageTowerConfig
from tfmmrec.errors import ConfigError
from tfmmrec.towers.base import Encoder, hub_layer

# keras.applications classes and the module whose preprocess_input they expect (inputs 0..255).
KERAS_APPLICATIONS = {
    "MobileNetV2": "mobilenet_v2",
    "MobileNetV3Small": "mobilenet_v3",
    "MobileNetV3Large": "mobilenet_v3",
    "ResNet50": "resnet50",
    "ResNet50V2": "resnet_v2",
    "EfficientNetB0": "efficientnet",
    "EfficientNetV2B0": "efficientnet_v2",
    "DenseNet121": "densenet",
    "ConvNeXtTiny": "convnext",
}


@tf.keras.utils.register_keras_serializable(package="tfmmrec")
class ImageEncoder(Encoder):
    """Images ``[B, H, W, 3]`` float32 in [0, 1] → ``[B, feature_dim]``.

    Examples:
    >>> encoder = build_image_encoder(ImageTowerConfig(image_size=32, cnn_filters=[8]))
    >>> encoder(tf.zeros([2, 32, 32, 3])).shape
    TensorShape([2, 16])
    """

    modality = "image"

    def __init__(self, backbone, feature_dim: int, description, preprocess=None, **kwargs):
        super().__init__(description, **kwargs)
        self.backbone = backbone
        self.feature_dim = feature_dim
        self._preprocess = preprocess

    def call(self, images, training=False):
        images = tf.cast(images, tf.float32)
        if self._preprocess is not None:
            images = self._preprocess(images * 255.0)
        return self.backbone(images, training=training)


def build_image_encoder(config: ImageTowerConfig) -> ImageEncoder:
    size = config.image_size
    description = {"kind": config.backbone, "image_size": size}
    preprocess = None
    if config.backbone == "small_cnn":
        backbone, dim = _small_cnn(config)
        description["filters"] = list(config.cnn_filters)
    elif config.backbone == "hub":
        backbone = hub_layer(config.handle, config.trainable, "image.handle")
        dim = int(backbone(tf.zeros([1, size, size, 3])).shape[-1])
        description["handle"] = config.handle
    else:
        backbone, preprocess = _keras_application(config)
        dim = int(backbone.output_shape[-1])
        description.update(application=config.application, weights=config.weights)
    encoder = ImageEncoder(backbone, dim, description, preprocess, name="image_encoder",
                           tower_config=config)
    encoder.set_trainable(config.trainable)
    return encoder


def _small_cnn(config: ImageTowerConfig) -> tuple[tf.keras.Model, int]:
    """Strided convs + global average and max pooling: colour, texture and shape statistics."""
    init = tf.keras.initializers.HeNormal(seed=config.seed)
    inputs = tf.keras.Input([None, None, 3])
    x = inputs * 2.0 - 1.0
    for filters in config.cnn_filters:
        x = tf.keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                                   kernel_initializer=init)(x)
    pooled = tf.keras.layers.Concatenate()([
        tf.keras.layers.GlobalAveragePooling2D()(x), tf.keras.layers.GlobalMaxPooling2D()(x)])
    return tf.keras.Model(inputs, pooled, name="small_cnn"), 2 * config.cnn_filters[-1]


def _keras_application(config: ImageTowerConfig):
    name = config.application
    if name not in KERAS_APPLICATIONS:
        raise ConfigError(f"image.application={name!r} is not supported; use one of "
                          f"{', '.join(sorted(KERAS_APPLICATIONS))}")
    size = config.image_size
    constructor = getattr(tf.keras.applications, name)
    try:
        model = constructor(include_top=False, weights=config.weights, pooling="avg",
                            input_shape=(size, size, 3))
    except Exception as exc:
        raise ConfigError(f"cannot build {name} with image.weights={config.weights!r}: {exc}. "
                          "Use a local weights file (.h5), 'imagenet' (downloads) or null "
                          "(random init).") from None
    module = getattr(tf.keras.applications, KERAS_APPLICATIONS[name])
    return model, module.preprocess_input
