"""In-graph request limits: header parsing for every image format, GIFs cut to their first
frame, WAV checks, settings."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.data.test_media_limits import (
    animated_gif,
    fragmented_gif,
    gif_parts,
    gif_with_screen,
)
from tfmmrec.config import ServingLimitsConfig, load_config
from tfmmrec.data.media import (
    GIF_MAX_STEPS,
    decode_image,
    decode_wav,
    gif_first_frame,
    image_header_size,
)
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
    ("export.limits.max_id_bytes=0", "export.limits.max_id_bytes"),
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


# --- GIF: only the first frame reaches the decoder ---------------------------------------------


def serving_decode(max_pixels: int, size: int = 8):
    """decode_image as the export's query_image signature runs it: traced, with the limit."""
    return tf.function(lambda b: decode_image(b, size, max_pixels),
                       input_signature=[tf.TensorSpec([], tf.string)])


def decoded(data: bytes) -> np.ndarray:
    """What DecodeImage makes of whole bytes (the first frame; every frame read)."""
    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()


def test_a_gif_bomb_decodes_its_first_frame_alone():
    bomb = animated_gif(100, 512)  # 26 M pixels in all, 262,144 in the first frame
    image = serving_decode(2 * 512 * 512)(tf.constant(bomb))
    np.testing.assert_array_equal(image.numpy(), 0.0)  # the first frame is black
    first, status, height, width = gif_first_frame(tf.constant(bomb))
    assert (int(status), int(height), int(width)) == (0, 512, 512)
    # What the decoder is given holds one frame, whatever the file holds: bounded by construction.
    assert tf.io.decode_image(first, expand_animations=True).shape[0] == 1
    assert tf.io.decode_image(bomb, expand_animations=True).shape[0] == 100
    assert len(first.numpy()) < len(bomb) / 50


def _local_table(data: bytes) -> bytes:
    """The same one-frame GIF with its global colour table moved into the image descriptor."""
    flags = data[10]
    table = 3 << ((flags & 7) + 1)
    header, rest = data[:13], data[13 + table:]
    start = rest.index(b"\x2c")
    descriptor = rest[start:start + 10]
    return (header[:10] + bytes([flags & 0x7F]) + header[11:] + rest[:start] + descriptor[:9]
            + bytes([0x80 | (flags & 7)]) + data[13:13 + table] + rest[start + 10:])


def _pillow_gif(frames: int = 1, size=(37, 23), colours: int = 16, **options) -> bytes:
    rng = np.random.default_rng(frames)
    images = [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
              .quantize(colours) for _ in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], **options)
    return buffer.getvalue()


def _empty_first_sub_block() -> bytes:
    """A comment extension whose first sub-block is empty: giflib (and Pillow) read on to the
    next 0, so the 3-byte block after it is part of the extension, not the image."""
    header, image = gif_parts()
    return header + b"\x21\xfe\x00\x03abc\x00" + image


@pytest.mark.parametrize("data", [
    _pillow_gif(), _pillow_gif(4, duration=40, loop=0), _pillow_gif(2, transparency=0),
    _pillow_gif(3, comment=b"c" * 600, disposal=2), _pillow_gif(size=(300, 200)),
    _pillow_gif(1, interlace=False), _local_table(_pillow_gif()), _empty_first_sub_block(),
    _pillow_gif(2, size=(640, 640), colours=256),  # over _GIF_RUN 255-byte sub-blocks
], ids=["one-frame", "animated", "transparent", "comment", "300x200", "not-interlaced",
        "local-colour-table", "empty-first-sub-block", "long-lzw-chain"])
def test_the_first_frame_gif_decodes_as_the_whole_file_did(data):
    first, status, _, _ = gif_first_frame(tf.constant(data))
    assert int(status) == 0
    np.testing.assert_array_equal(decoded(first), decoded(data))
    image = serving_decode(16_777_216, 16)(tf.constant(data))
    expected = tf.image.resize(tf.image.convert_image_dtype(decoded(data), tf.float32), [16, 16],
                               antialias=True)
    np.testing.assert_array_equal(image.numpy(), tf.clip_by_value(expected, 0.0, 1.0).numpy())


def test_extension_sub_blocks_never_reach_the_decoder():
    """giflib keeps each extension sub-block (~50 bytes of memory each); the rebuilt GIF has
    only the header, the graphic control extension and the image."""
    header, image = gif_parts()
    data = header + b"\x21\xfe" + b"\x01c" * 100_000 + b"\x00" + image  # 200 KB of comment
    first, status, _, _ = gif_first_frame(tf.constant(data))
    assert int(status) == 0 and len(first.numpy()) == len(header + image)
    np.testing.assert_array_equal(decoded(first), decoded(header + image))


def test_a_gif_frame_larger_than_its_logical_screen_is_refused():
    data = gif_with_screen(frame=64, screen=16)
    assert decoded(data).shape == (64, 64, 3)  # the header check alone would let it through
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"max_image_pixels=1000, the first GIF frame declares height x "
                             r"width:\] \[64\] \[64\]"):
        serving_decode(1000)(tf.constant(data))


def test_the_walk_is_capped_at_gif_max_steps():
    assert serving_decode(1000)(tf.constant(fragmented_gif(GIF_MAX_STEPS - 8))).shape == (8, 8, 3)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=f"GIF too fragmented - .* over {GIF_MAX_STEPS} steps"):
        serving_decode(1000)(tf.constant(fragmented_gif(GIF_MAX_STEPS)))


@pytest.mark.parametrize(("data", "message"), [
    (gif_parts()[0] + b";", "broken GIF - no image block"),
    (gif_parts()[0] + b"\x21\xfe\x05ab", "broken GIF - no image block"),  # cut in a comment
    (gif_parts()[0] + b"\x00" + gif_parts()[1], "broken GIF - no image block"),  # no block
])
def test_a_gif_without_an_image_is_refused(data, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serving_decode(1000)(tf.constant(data))


def test_an_animated_webp_is_refused_with_its_reason():
    frames = [Image.new("RGB", (20, 10), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=50)
    with pytest.raises(tf.errors.InvalidArgumentError, match="animated WebP is not supported"):
        serving_decode(1000)(tf.constant(buffer.getvalue()))
    assert serving_decode(1000)(tf.constant(encoded("WEBP", (20, 10)))).shape == (8, 8, 3)
