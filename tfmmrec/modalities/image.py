"""Modalities: image — a poster/cover file, decoded and squashed to ``image_size`` square."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf

from tfmmrec.config import ImageTowerConfig, ServingLimitsConfig
from tfmmrec.data.media import (
    IMAGE_EXTENSIONS,
    check_image_file,
    check_request_pixels,
    decode_image,
    load_image,
)
from tfmmrec.errors import MediaDecodeError
from tfmmrec.modalities.base import (
    FileModality,
    Settings,
    bytes_feature,
    decode_limits,
    file_hash,
    int_feature,
)


class ImageModality(FileModality):
    """Images as float32 ``[image_size, image_size, 3]`` in [0, 1]; the same TF ops decode a
    file for training and a request's bytes at serving time. TFRecords keep uint8 pixels."""

    name = "image"
    tower_config_class = ImageTowerConfig
    encoder_builder = "tfmmrec.towers.image:build_image_encoder"
    catalog_field = "image_paths"
    settings_fields: ClassVar[Mapping[str, str]] = {"image_size": "image_size"}
    column_names = frozenset({"image", "images", "poster", "cover", "thumbnail", "picture",
                              "photo", "image_path"})
    extensions = IMAGE_EXTENSIONS
    query_help = "image file: JPEG/PNG/GIF/BMP/WebP (repeatable)"

    def load_file(self, path: str | Path, settings: Settings) -> np.ndarray:
        return load_image(path, settings["image_size"],
                          decode_limits(settings).max_image_pixels)

    def check_file(self, path: str | Path, settings: Settings) -> None:
        """``tfmmrec validate``'s check: raises ``MediaDecodeError`` for a file
        :meth:`load_file` would refuse (unknown format, broken or truncated data, over the
        pixel limit), without a full decode."""
        check_image_file(path, decode_limits(settings).max_image_pixels)

    def batch(self, values: list) -> np.ndarray:
        return np.stack(values)

    def fill(self, values: list, settings: Settings) -> np.ndarray:
        size = settings["image_size"]
        filled = np.zeros((len(values), size, size, 3), np.float32)
        for row, value in enumerate(values):
            if value is not None:
                filled[row] = value
        return filled

    def encoder_input_spec(self, settings: Settings) -> tf.TensorSpec:
        size = settings["image_size"]
        return tf.TensorSpec([None, size, size, 3], tf.float32)

    # --- TFRecords ------------------------------------------------------------------------
    def record_features(self, value, settings: Settings,
                        failed: dict[str, list[str]]) -> dict[str, tf.train.Feature]:
        image, key = b"", b""
        if value is not None:
            try:
                key = file_hash(value).encode()
                pixels = self.load_file(value, settings)
                image = np.round(pixels * 255.0).clip(0, 255).astype(np.uint8).tobytes()
            except (MediaDecodeError, OSError):
                failed.setdefault(self.name, []).append(value)
        return {"image": bytes_feature(image), "image_key": bytes_feature(key),
                "image_present": int_feature(bool(image))}

    def record_bytes(self, settings: Settings) -> int:
        return 3 * settings["image_size"] ** 2

    def record_spec(self) -> dict[str, tf.io.FixedLenFeature]:
        return {"image": tf.io.FixedLenFeature([], tf.string),
                "image_key": tf.io.FixedLenFeature([], tf.string),
                "image_present": tf.io.FixedLenFeature([], tf.int64)}

    def parse_record(self, parsed: Mapping[str, tf.Tensor], settings: Settings
                     ) -> dict[str, Any]:
        size = settings["image_size"]
        pixels = tf.io.decode_raw(parsed["image"], tf.uint8, fixed_length=3 * size * size)
        return {"image": tf.reshape(tf.cast(pixels, tf.float32) / 255.0, [-1, size, size, 3]),
                "image_key": parsed["image_key"], "image_present": parsed["image_present"] > 0}

    # --- serving --------------------------------------------------------------------------
    def decode_request(self, request: tf.Tensor, settings: Settings,
                       limits: ServingLimitsConfig) -> tf.Tensor:
        size, pixels = settings["image_size"], limits.max_image_pixels
        total = check_request_pixels(request, limits.max_image_request_pixels, pixels)
        with tf.control_dependencies([total]):
            request = tf.identity(request)  # no image is decoded before the request's total
        return tf.map_fn(lambda b: decode_image(b, size, pixels), request,
                         fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))

    def warmup_sample(self) -> np.ndarray:
        # dtype=object: numpy's fixed-width bytes dtype strips trailing NULs.
        return np.array([tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy()], dtype=object)

    def placeholder(self) -> bytes:
        return tf.io.encode_png(tf.zeros([1, 1, 3], tf.uint8)).numpy()
