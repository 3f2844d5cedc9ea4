"""In-graph request limits: header parsing for every image format, WAV checks, settings."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfmmrec.config import ServingLimitsConfig, load_config
from tfmmrec.data.media import decode_image, decode_wav, image_header_size
from tfmmrec.errors import ConfigError


def encoded(fmt: str, size=(37, 23), mode="RGB", **options) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "mode", "options"), [
    ("PNG", "RGB", {}), ("GIF", "P", {}), ("BMP", "RGB", {}), ("JPEG", "RGB", {}),
    ("WEBP", "RGB", {}), ("WEBP", "RGB", {"lossless": True}), ("WEBP", "RGBA", {}),
], ids=["png", "gif", "bmp", "jpeg", "webp-vp8", "webp-vp8l", "webp-vp8x"])
def test_header_size_of_every_format_without_decoding(fmt, mode, options):
    known, height, width = image_header_size(tf.constant(encoded(fmt, mode=mode, **options)))
    assert (bool(known), int(height), int(width)) == (True, 23, 37)


def test_top_down_bmp_counts_its_negative_height_as_positive():
    data = bytearray(encoded("BMP"))
    data[22:26] = struct.pack("<i", -23)
    assert [int(v) for v in image_header_size(tf.constant(bytes(data)))[1:]] == [23, 37]


def test_pixel_cap_is_checked_before_decoding():
    data = bytearray(encoded("PNG", (4, 4)))
    data[16:24] = struct.pack(">II", 40_000, 40_000)  # claims 1.6 G pixels, decodes nothing
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_pixels=1000"):
        decode_image(tf.constant(bytes(data)), 8, max_pixels=1000)
    image = decode_image(tf.constant(encoded("PNG", (20, 20))), 8, max_pixels=400)
    assert image.shape == (8, 8, 3)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "Unknown image file format"), (b"\x89PNG", "Unknown image file format"),
    (b"RIFF\x00\x00\x00\x00WEBPXXXX", "Unknown image file format"),
])
def test_unknown_or_truncated_headers_are_refused(data, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        decode_image(tf.constant(data), 8, max_pixels=1000)


def wav(rate: int, samples: int = 100) -> bytes:
    data = bytearray(tf.audio.encode_wav(tf.zeros([samples, 1]), 16000).numpy())
    data[24:28] = struct.pack("<I", rate)
    data[28:32] = struct.pack("<I", 2 * rate)
    return bytes(data)


@pytest.mark.parametrize(("rate", "message"), [
    (4_000_000, r"max_sample_rate=192000\] Hz; the header declares:\] \[4000000\]"),
    (7_999, r"min_sample_rate=8000"), (0, r"the header declares:\] \[0\]"),
])
def test_wav_rate_outside_the_limits_is_refused_before_resampling(rate, message):
    decode = tf.function(lambda b: decode_wav(b, 16000, 16000, rate_range=(8000, 192000),
                                              max_seconds=60.0))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        decode(tf.constant(wav(rate)))


def test_wav_within_limits_decodes_as_without_them():
    clip = tf.constant(wav(22_050, samples=2205))
    limited = decode_wav(clip, 16000, 16000, rate_range=(8000, 192000), max_seconds=1.0)
    np.testing.assert_array_equal(limited.numpy(), decode_wav(clip, 16000, 16000).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"max_audio_seconds=0\.05"):
        decode_wav(clip, 16000, 16000, rate_range=(8000, 192000), max_seconds=0.05)


@pytest.mark.parametrize(("override", "field"), [
    ("export.limits.max_batch_size=0", "export.limits.max_batch_size"),
    ("export.limits.max_image_pixels=1000000000", "export.limits.max_image_pixels"),
    ("export.limits.max_sample_rate=4000", "export.limits.max_sample_rate"),
    ("export.limits.max_audio_seconds=0", "export.limits.max_audio_seconds"),
])
def test_limits_are_validated_with_the_field_name(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_default_limits_are_safe():
    limits = ServingLimitsConfig()
    assert limits.max_image_pixels < 2**29 and limits.max_sample_rate == 192_000
