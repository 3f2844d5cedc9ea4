"""Media decoding between raw item files and the image/audio encoders, for cache and serving alike.

The offline encoder cache (``load_image`` / ``load_audio``) and the exported serving signatures
(``decode_image`` / ``decode_wav``) run the same TensorFlow ops, so a poster or clip gives the same
tensor in training and at query time. The in-graph functions raise TensorFlow errors at run time;
the file/bytes loaders turn every decoding failure into :class:`MediaDecodeError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import tensorflow as tf

from tfmmrec.config import ServingLimitsConfig
from tfmmrec.errors import ConfigError, MediaDecodeError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")

_IMAGE_FORMATS = "JPEG, PNG, GIF (first frame), BMP or still WebP"
_AUDIO_FORMATS = "WAV (PCM, ADPCM), FLAC, Ogg Vorbis/Opus, MP3, AIFF or AU (what libsndfile reads)"

# Windowed-sinc resampler: zero crossings of the sinc kept on each side, and the Kaiser window's
# beta (8.6 puts the side lobes near -90 dB). Output is computed in blocks so memory stays at
# block x taps floats whatever the clip length.
_ZERO_CROSSINGS = 16
_KAISER_BETA = 8.6
_BLOCK = 8192

@dataclass(frozen=True)
class OfflineLimits:
    """What the offline decoders (``train``, ``prepare``, ``encode``, ``catalog add``,
    ``validate``) refuse, read from a file's header before anything is decoded, so a tiny file
    declaring a huge image or a long clip cannot take GiBs."""

    max_image_pixels: int
    max_sample_rate: int
    max_audio_seconds: float


def offline_limits(limits: ServingLimitsConfig | None = None) -> OfflineLimits:
    """The offline limits that go with the serving ones (``export.limits``; default: the
    defaults), derived here only. Images: 4x the serving limit, so a curated catalogue's
    20-50 MP photos still decode (a 64 MP decode peaks near 1 GiB); audio: the serving limits
    (a tower reads at most ``audio.max_seconds`` of a clip anyway)."""
    limits = limits or ServingLimitsConfig()
    return OfflineLimits(max_image_pixels=4 * limits.max_image_pixels,
                         max_sample_rate=limits.max_sample_rate,
                         max_audio_seconds=limits.max_audio_seconds)


# The limits of the default ``export.limits``: the loaders' defaults.
DEFAULT_LIMITS = offline_limits()
MAX_IMAGE_PIXELS: int = DEFAULT_LIMITS.max_image_pixels
MAX_SAMPLE_RATE: int = DEFAULT_LIMITS.max_sample_rate
MAX_AUDIO_SECONDS: float = DEFAULT_LIMITS.max_audio_seconds


# --- images -----------------------------------------------------------------------------------


_HEADER_BYTES = 32
IMAGE_FORMAT_MESSAGE = ("image: Unknown image file format - send JPEG, PNG, GIF, BMP or WebP "
                        "bytes")


def _header(data: tf.Tensor, length: int = _HEADER_BYTES) -> tf.Tensor:
    """The first ``length`` bytes of a scalar string as int64 [length] (zero-padded)."""
    head = tf.strings.substr(data, 0, length)  # shorter strings give what they have
    padded = tf.strings.join([head, tf.constant(b"\0" * length)])
    return tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, length), tf.uint8), tf.int64)


def _le(b: tf.Tensor, start: int, count: int) -> tf.Tensor:
    return sum(b[start + i] * (1 << (8 * i)) for i in range(count))


def _be(b: tf.Tensor, start: int, count: int) -> tf.Tensor:
    return sum(b[start + i] * (1 << (8 * (count - 1 - i))) for i in range(count))


def _starts_with(b: tf.Tensor, magic: bytes, offset: int = 0) -> tf.Tensor:
    return tf.reduce_all(tf.equal(b[offset:offset + len(magic)],
                                  tf.constant(list(magic), tf.int64)))


def _is_webp(b: tf.Tensor) -> tf.Tensor:
    """Whether a header (:func:`_header`) is a WebP file's (RIFF container, WEBP form)."""
    return _starts_with(b, b"RIFF") & _starts_with(b, b"WEBP", 8)


def image_header_size(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(known_format, height, width)`` (bool, int64, int64) read from the file header only.

    JPEG via ``tf.image.extract_jpeg_shape`` (walks the markers, decodes nothing); PNG from
    IHDR, GIF from the logical screen descriptor, BMP from the DIB header (top-down negative
    heights count as positive), WebP from its VP8 / VP8L / VP8X chunk. Nothing is allocated in
    proportion to the declared size, so a tiny file claiming 8000x8000 costs nothing.
    """
    b = _header(image_bytes)
    is_jpeg = _starts_with(b, b"\xff\xd8")
    is_png = _starts_with(b, b"\x89PNG\r\n\x1a\n")
    is_gif = _starts_with(b, b"GIF8")
    is_bmp = _starts_with(b, b"BM")
    is_webp = _is_webp(b)
    vp8, vp8l, vp8x = (_starts_with(b, tag, 12) for tag in (b"VP8 ", b"VP8L", b"VP8X"))

    def signed32(value):
        return tf.where(value >= 2**31, value - 2**32, value)

    core_bmp = tf.equal(_le(b, 14, 4), 12)  # OS/2 BITMAPCOREHEADER: 16-bit sizes
    candidates = [
        (is_png, _be(b, 20, 4), _be(b, 16, 4)),
        (is_gif, _le(b, 8, 2), _le(b, 6, 2)),
        (is_bmp, tf.where(core_bmp, _le(b, 20, 2), tf.abs(signed32(_le(b, 22, 4)))),
         tf.where(core_bmp, _le(b, 18, 2), signed32(_le(b, 18, 4)))),
        (is_webp & vp8, _le(b, 28, 2) % 16384, _le(b, 26, 2) % 16384),
        (is_webp & vp8l, 1 + (b[22] // 64) + b[23] * 4 + (b[24] % 16) * 1024,
         1 + b[21] + (b[22] % 64) * 256),
        (is_webp & vp8x, 1 + _le(b, 27, 3), 1 + _le(b, 24, 3)),
    ]
    height = tf.constant(0, tf.int64)
    width = tf.constant(0, tf.int64)
    for condition, h, w in reversed(candidates):
        height = tf.where(condition, h, height)
        width = tf.where(condition, w, width)
    jpeg = tf.cond(is_jpeg, lambda: tf.cast(tf.image.extract_jpeg_shape(image_bytes)[:2],
                                             tf.int64),
                   lambda: tf.zeros([2], tf.int64))
    height = tf.where(is_jpeg, jpeg[0], height)
    width = tf.where(is_jpeg, jpeg[1], width)
    known = is_jpeg | is_png | is_gif | is_bmp | (is_webp & (vp8 | vp8l | vp8x))
    return known, height, width


def check_image_header(image_bytes: tf.Tensor, max_pixels: int) -> list:
    """Assertions (INVALID_ARGUMENT) that the header names a known format, not an animated WebP
    (:data:`ANIMATED_WEBP_MESSAGE`), and a size within ``max_pixels``; run them before decoding
    (see :func:`decode_image`)."""
    known, height, width = image_header_size(image_bytes)
    pixels = height * width
    return [
        tf.debugging.Assert(known, [IMAGE_FORMAT_MESSAGE]),
        tf.debugging.Assert(~_is_animated_webp(_header(image_bytes)), [ANIMATED_WEBP_MESSAGE]),
        tf.debugging.Assert(
            (height > 0) & (width > 0),
            ["image: the header declares no pixels (height x width):", height, width]),
        tf.debugging.Assert(
            pixels <= max_pixels,
            [f"image: too large - export.limits.max_image_pixels={max_pixels}, the header "
             "declares height x width:", height, width]),
    ]


def check_request_pixels(images: tf.Tensor, max_total: int, max_pixels: int) -> tf.Operation:
    """An assertion that the pixels the headers of a batch of encoded ``images`` declare add
    up to at most ``max_total``: decoding costs CPU in proportion to the pixels, and each
    image alone may be up to ``max_pixels``. Reads headers only. Each image counts at most
    ``max_pixels`` and an unknown format 0, so an image its own check refuses
    (:func:`check_image_header`) is named by that check."""
    def declared(image_bytes):
        _, height, width = image_header_size(image_bytes)
        return tf.minimum(tf.maximum(height, 0) * tf.maximum(width, 0), max_pixels)

    total = tf.reduce_sum(tf.map_fn(declared, images, fn_output_signature=tf.int64))
    return tf.debugging.Assert(total <= max_total, [
        "image: the images of one request declare more than "
        f"export.limits.max_image_request_pixels={max_total} pixels in all (send fewer or "
        "smaller images per request); total:", total])


# --- GIF: only the first frame reaches the decoder ---------------------------------------------
#
# giflib (TF's GIF decoder) reads every frame into memory before DecodeImage keeps the first
# (expand_animations=False): a 576 KB GIF of 120 2048x2048 frames took ~500 MB, linearly in the
# frame count, which no header check sees. It also keeps every extension sub-block (~50 bytes
# each, however short: 8 MB of 1-byte ones took 215 MB and 3 s) and sizes its canvas by the
# frames' image descriptors, not the header's logical screen. So a GIF is rebuilt before
# decoding from its header, first graphic control extension (transparency) and first image
# only, found by walking the block structure in-graph; the decoder never sees the rest.

GIF_MAX_STEPS = 1024
"""Steps the GIF walk may take to the end of the first frame. A step reads one block header,
a run of up to ``_GIF_RUN`` equal-length sub-blocks (what encoders write: 255 bytes each) and
the next two sub-blocks, so a real GIF needs a handful (8 per KB of XMP metadata). A crafted
chain of alternating 1- and 2-byte sub-blocks needs a step per 5 bytes: at the cap (a 5 KB
file) it is refused after ~60 ms on 2 shared cores, about what decoding and resizing a
16-megapixel JPEG costs; a cap derived from the 64 MiB request size would allow 13 M steps."""
_GIF_RUN = 1024  # equal-length sub-blocks checked per step: 256 KB of 255-byte ones
_GIF_OK, _GIF_NO_IMAGE, _GIF_TOO_COMPLEX = 0, 1, 2

ANIMATED_WEBP_MESSAGE = "image: animated WebP is not supported - send a still image"
GIF_TOO_COMPLEX_MESSAGE = (f"image: GIF too fragmented - parsing it to the end of its first frame "
                           f"takes over {GIF_MAX_STEPS} steps; re-encode it")
GIF_NO_IMAGE_MESSAGE = "image: broken GIF - no image block before its end; re-encode it"


def _decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
    """uint8 ``[H, W, 3]``: alpha dropped, grayscale repeated (what ``channels=3`` does). As
    uint8 (converted after): DecodeImage refuses float output for WebP. A WebP is decoded with
    its own channels and its alpha dropped here, because TF's WebP decoder refuses
    ``channels=3`` for a WebP with alpha (transparent product cut-outs are common)."""
    return tf.cond(
        _is_webp(_header(image_bytes)),
        lambda: tf.io.decode_image(image_bytes, channels=0, expand_animations=False)[..., :3],
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))


def _is_animated_webp(b: tf.Tensor) -> tf.Tensor:
    """Whether a header (:func:`_header`) is a WebP whose VP8X chunk sets the animation flag:
    TF refuses those for RGB output anyway (\"WebP Animation must be 4 channel RGBA\"), before
    decoding a frame; this names the reason."""
    return (_is_webp(b) & _starts_with(b, b"VP8X", 12)
            & tf.not_equal(tf.bitwise.bitwise_and(b[20], 2), 0))


def gif_first_frame(gif_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(first_frame_gif, status, height, width)`` of GIF bytes (scalar tf.string), in-graph.

    ``first_frame_gif`` is the header (with its global colour table), the first graphic control
    extension if any (its first sub-block: what TF reads of it) and the first image (descriptor,
    local colour table, LZW data), then the trailer: what the decoder makes of the first frame,
    without the other frames and extensions. ``height`` / ``width`` come from the first image
    descriptor (the size of TF's canvas); ``status`` is ``0``, ``1`` (no image before the end or
    a byte that starts no block) or ``2`` (over :data:`GIF_MAX_STEPS`). Blocks are parsed as
    giflib parses them: an extension's first sub-block is read even when empty. ``gif_bytes``
    must not be empty; they are copied once as uint8 (bounded by the request size).
    """
    size = tf.cast(tf.strings.length(gif_bytes), tf.int64)
    zero, one = tf.constant(0, tf.int64), tf.constant(1, tf.int64)
    data = tf.io.decode_raw(gif_bytes, tf.uint8)

    def at(pos: tf.Tensor) -> tf.Tensor:
        """The bytes at ``pos`` (int64, any shape) as int64; ``-1`` past the end."""
        pos = tf.convert_to_tensor(pos, tf.int64)
        value = tf.cast(tf.gather(data, tf.minimum(pos, size - 1)), tf.int64)
        return tf.where(pos < size, value, -one)

    def colour_table(flags: tf.Tensor) -> tf.Tensor:
        return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(2 * one, flags % 8), zero)

    header = 13 + colour_table(at(10))
    run = tf.range(_GIF_RUN, dtype=tf.int64)

    def step(*state: tf.Tensor) -> tuple[tf.Tensor, ...]:
        # mode 0: at a record (0x21 extension, 0x2C image, 0x3B trailer); 1: in a sub-block
        # chain; 2: done. Both are computed, then selected: five small gathers per step.
        pos, mode, steps, in_image, height, width, gce, gce_size, image, end, status = state
        record = tf.equal(mode, 0)
        # An extension: 0x21, label, first sub-block; an image: 0x2C, left, top, width, height
        # (16-bit little-endian), flags (local colour table), LZW code size. Past the end: 0.
        tag, label, first, _, _, w0, w1, h0, h1, flags = tf.unstack(
            tf.maximum(at(pos + tf.range(10, dtype=tf.int64)), 0))
        is_extension = record & tf.equal(tag, 0x21)
        is_image = record & tf.equal(tag, 0x2C)
        start = tf.where(is_extension, pos + 3 + first,
                         tf.where(is_image, pos + 11 + colour_table(flags), pos))
        # The chain from ``start``: a run of sub-blocks of one length, then the next block and
        # the one after it (a chain's last data block is usually shorter, then comes the 0).
        length = at(start)
        same = tf.equal(at(start + (length + 1) * run), length)
        count = tf.argmax(tf.cast(tf.concat([~same, [True]], 0), tf.int32), output_type=tf.int64)
        after = start + (length + 1) * count
        after_length = at(after)
        tail = after + 1 + after_length
        tail_length = at(tail)
        full = tf.equal(count, _GIF_RUN)
        ends_at = tf.where(tf.equal(length, 0), start + 1, tf.where(
            full, -one, tf.where(tf.equal(after_length, 0), after + 1, tf.where(
                (after_length > 0) & tf.equal(tail_length, 0), tail + 1, -one))))
        eof = (length < 0) | (~full & ((after_length < 0) | ((after_length > 0)
                                                             & (tail_length < 0))))
        resume = tf.where(full, after, tail)

        chain = is_extension | is_image | tf.equal(mode, 1)
        in_image = tf.where(record, is_image, in_image)
        height = tf.where(is_image, h1 * 256 + h0, height)
        width = tf.where(is_image, w1 * 256 + w0, width)
        image = tf.where(is_image, pos, image)
        new_gce = is_extension & tf.equal(label, 0xF9) & (first > 0) & (gce < 0)
        gce = tf.where(new_gce, pos, gce)
        gce_size = tf.where(new_gce, 3 + first, gce_size)

        ended = chain & (ends_at >= 0)
        stopped = chain & eof & ~ended
        done = (record & ~chain) | ((ended | stopped) & in_image) | (stopped & ~in_image)
        end = tf.where(ended, ends_at, size)
        status = tf.where(done & ~in_image, _GIF_NO_IMAGE, _GIF_OK)
        mode = tf.where(done, 2, tf.where(ended, 0, 1))
        pos = tf.where(ended, ends_at, resume)
        return pos, mode, steps + 1, in_image, height, width, gce, gce_size, image, end, status

    state = (header, tf.constant(0), tf.constant(0), tf.constant(False), zero, zero,
             -one, zero, zero, size, tf.constant(_GIF_OK))
    (_, mode, _, _, height, width, gce, gce_size, image, end, status) = tf.while_loop(
        lambda pos, mode, steps, *_: tf.not_equal(mode, 2) & (steps < GIF_MAX_STEPS),
        step, state, parallel_iterations=1)
    status = tf.where(tf.equal(mode, 2), status, _GIF_TOO_COMPLEX)
    has_gce = gce >= 0
    first_frame = tf.strings.join([
        tf.strings.substr(gif_bytes, zero, tf.minimum(header, size)),
        tf.strings.substr(gif_bytes, tf.where(has_gce, gce, 0), gce_size),
        tf.where(has_gce, tf.constant(b"\0"), tf.constant(b"")),
        tf.strings.substr(gif_bytes, tf.minimum(image, size), tf.maximum(end - image, 0)),
        tf.constant(b";")])
    return first_frame, status, height, width


def _first_gif_frame_only(image_bytes: tf.Tensor, max_pixels: int | None) -> tf.Tensor:
    """GIF bytes → :func:`gif_first_frame`'s rebuilt GIF, after assertions that the walk
    finished, found an image and (with ``max_pixels``) that the first frame is within it; other
    formats pass through untouched."""
    is_gif = _starts_with(_header(image_bytes, 4), b"GIF8")
    walk = _gif_first_frame if tf.executing_eagerly() else gif_first_frame
    gif, status, height, width = tf.cond(
        is_gif, lambda: walk(image_bytes),
        lambda: (image_bytes, tf.constant(_GIF_OK), tf.constant(0, tf.int64),
                 tf.constant(0, tf.int64)))
    checks = [
        tf.debugging.Assert(tf.not_equal(status, _GIF_TOO_COMPLEX), [GIF_TOO_COMPLEX_MESSAGE]),
        tf.debugging.Assert(tf.not_equal(status, _GIF_NO_IMAGE), [GIF_NO_IMAGE_MESSAGE]),
    ]
    if max_pixels is not None:
        checks.append(tf.debugging.Assert(
            height * width <= max_pixels,
            [f"image: too large - export.limits.max_image_pixels={max_pixels}, the first GIF "
             "frame declares height x width:", height, width]))
    with tf.control_dependencies(checks):
        return tf.identity(gif)


# The GIF walk for eager callers (the file loaders): one trace, not a Python loop of small ops.
_gif_first_frame = tf.function(gif_first_frame, input_signature=[tf.TensorSpec([], tf.string)])


def decode_image(image_bytes: tf.Tensor, image_size: int,
                 max_pixels: int | None = None) -> tf.Tensor:
    """Encoded image bytes (scalar tf.string) → float32 [image_size, image_size, 3] in [0, 1].

    Grayscale and RGBA become RGB, animated GIFs keep their first frame (only that frame reaches
    the decoder: :func:`gif_first_frame`); the whole image is squashed (no crop) with
    antialiased bilinear resizing so downscaled posters do not alias. With ``max_pixels``, the
    size in the header (and a GIF's first frame) is checked first and decoding waits for it.
    """
    if max_pixels is not None:
        with tf.control_dependencies(check_image_header(image_bytes, max_pixels)):
            image_bytes = tf.identity(image_bytes)
    image_bytes = _first_gif_frame_only(image_bytes, max_pixels)
    image = tf.image.convert_image_dtype(_decode_rgb(image_bytes), tf.float32)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    image = tf.clip_by_value(image, 0.0, 1.0)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def load_image(path: str | Path, image_size: int,
               max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file into float32 [image_size, image_size, 3], as serving decodes it.

    The header's width x height is checked against ``max_pixels`` first (``MAX_IMAGE_PIXELS``,
    4x the serving limit, by default; ``None``: no limit), so an oversized image is refused
    with :class:`MediaDecodeError` before a single pixel is decoded.
    """
    data = _read_bytes(path, "image", _IMAGE_FORMATS, limit=image_file_limit(max_pixels))
    if max_pixels is not None:
        _check_image_size(data, path, max_pixels, strict=False)
    try:
        return decode_image(tf.constant(data), image_size).numpy()
    except (tf.errors.OpError, ValueError) as exc:
        raise _undecodable_image(path, first_line(exc)) from exc


def check_image_file(path: str | Path, max_pixels: int | None = MAX_IMAGE_PIXELS
                     ) -> tuple[int, int]:
    """``(width, height)`` of an image file, checked as :func:`load_image` would refuse it.

    Raises :class:`MediaDecodeError` naming the file when it is missing, not a format
    :func:`load_image` reads, declares no pixels or more than ``max_pixels`` (from the header,
    so an oversized image is never decoded), or is broken past its header
    (:func:`_check_image_data`). ``tfmmrec validate`` runs it on every file, so it stays cheap.
    """
    data = _read_bytes(path, "image", _IMAGE_FORMATS, limit=image_file_limit(max_pixels))
    height, width = _check_image_size(data, path, max_pixels, strict=True)
    _check_image_data(data, path)
    return width, height


def _check_image_data(data: bytes, path: str | Path) -> None:
    """Refuse an image whose data is broken, without a full decode.

    A JPEG is decoded at 1/8 scale (Pillow's ``draft``): libjpeg still reads every
    entropy-coded byte, so a truncated or corrupt scan fails here, not at encode time, for
    about 1/64 of a full decode's memory (``verify`` stops at the markers). Other formats get
    ``verify``: chunk checksums through the end (a truncated PNG), no pixels. Truncated images
    are refused as long as ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` keeps its default (False).
    """
    from PIL import Image, JpegImagePlugin

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if isinstance(image, JpegImagePlugin.JpegImageFile):
                    image.draft(None, (1, 1))  # the smallest scale libjpeg offers: 1/8
                    image.load()
                else:
                    image.verify()
    except Image.DecompressionBombError:
        pass  # the size was checked first, against the limit the decoders use
    except Exception as exc:  # Pillow raises SyntaxError, OSError, EOFError, struct.error...
        raise _undecodable_image(path, f"broken file: {first_line(exc)}") from exc


# The serving path's header parser (one trace for every image; eagerly it is ~40 small ops).
_image_header_size = tf.function(image_header_size,
                                 input_signature=[tf.TensorSpec([], tf.string)])


def _check_image_size(data: bytes, path: str | Path, max_pixels: int | None,
                      strict: bool) -> tuple[int, int]:
    """``(height, width)`` from the header, refusing more than ``max_pixels``. ``strict``
    also refuses an unknown format and an empty size (else the decoder reports those). A GIF
    is also walked to its first frame, as :func:`decode_image` walks it (:func:`_check_gif`),
    and an animated WebP, which the decoder refuses, is refused here."""
    try:
        known, height, width = (int(v) for v in _image_header_size(tf.constant(data)))
    except tf.errors.OpError as exc:  # a JPEG whose markers do not parse
        raise _undecodable_image(path, first_line(exc)) from exc
    if strict and not known:
        raise _undecodable_image(path, "unknown image file format")
    if strict and not (height > 0 and width > 0):
        raise MediaDecodeError(
            f"cannot decode image — {path} (the header declares {width} x {height} pixels) — "
            "re-encode the file")
    if known and max_pixels is not None and height * width > max_pixels:
        raise MediaDecodeError(
            f"image too large — {path} declares {width} x {height} = {width * height:,} "
            f"pixels, over the decoding limit of {max_pixels:,}; downscale the image or "
            "raise export.limits.max_image_pixels (offline decoding allows 4x it)")
    if known and data[:4] == b"GIF8":
        _check_gif(data, path, max_pixels)
    if data[:4] == b"RIFF" and data[8:16] == b"WEBPVP8X" and len(data) > 20 and data[20] & 2:
        raise _undecodable_image(path, "animated WebP: only still images are decoded")
    return height, width


def _check_gif(data: bytes, path: str | Path, max_pixels: int | None) -> None:
    """Refuse a GIF :func:`decode_image` refuses: no image, too fragmented to walk, or a first
    frame over ``max_pixels``. The frame's own size counts (TF sizes its canvas by it, whatever
    the header's logical screen says); later frames are never decoded, so they do not."""
    status, height, width = (int(v) for v in _gif_first_frame(tf.constant(data))[1:])
    if status == _GIF_TOO_COMPLEX:
        raise _undecodable_image(path, f"GIF too fragmented: over {GIF_MAX_STEPS} steps to parse "
                                       "it to the end of its first frame")
    if status == _GIF_NO_IMAGE:
        raise _undecodable_image(path, "broken GIF: no image block before its end")
    if max_pixels is not None and height * width > max_pixels:
        raise MediaDecodeError(
            f"image too large — the first frame of {path} declares {width} x {height} = "
            f"{width * height:,} pixels, over the decoding limit of {max_pixels:,}; downscale "
            "the image or raise export.limits.max_image_pixels (offline decoding allows 4x it)")


def _undecodable_image(path: str | Path, why: str) -> MediaDecodeError:
    return MediaDecodeError(f"cannot decode image — {path} ({why}) — supported formats: "
                            f"{_IMAGE_FORMATS}; re-encode the file or fix the path")


# --- audio: shared TF ops ---------------------------------------------------------------------


def to_mono(waveform: tf.Tensor) -> tf.Tensor:
    """[T, C] → [T] by averaging channels, so stereo and mono clips feed the same encoder."""
    return tf.reduce_mean(tf.convert_to_tensor(waveform, tf.float32), axis=-1)


def resample(waveform: tf.Tensor, rate_in: int | tf.Tensor, rate_out: int = 16000) -> tf.Tensor:
    """Band-limited resampling of a mono [T] waveform from ``rate_in`` to ``rate_out`` Hz.

    Kaiser-windowed sinc interpolation with a cutoff at half the lower rate (no aliasing when
    downsampling). ``rate_in`` may be a scalar tensor (``tf.audio.decode_wav`` returns one), so the
    output length ceil(T * rate_out / rate_in) is computed in-graph; equal rates return the input.
    """
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    rate_out_t = tf.constant(rate_out, tf.int64)
    if isinstance(rate_in, int | np.integer):
        if int(rate_in) == rate_out:
            return waveform
        return _resample(waveform, tf.constant(int(rate_in), tf.int64), rate_out_t)
    rate_in = tf.cast(rate_in, tf.int64)
    return tf.cond(
        tf.equal(rate_in, rate_out_t),
        lambda: tf.identity(waveform),
        lambda: _resample(waveform, rate_in, rate_out_t),
    )


def _half_width(rate_in: tf.Tensor, rate_out: int | tf.Tensor) -> tf.Tensor:
    """Filter half-width in input samples: the sinc widens by rate_in/rate_out when downsampling."""
    widest = tf.maximum(rate_in, rate_out)
    return (_ZERO_CROSSINGS * widest + rate_out - 1) // rate_out


# A tf.function (one trace for all lengths and rates): eagerly, map_fn would otherwise run its
# loop op by op, about 6x slower on the encoder-cache path.
@tf.function(
    input_signature=[
        tf.TensorSpec([None], tf.float32),
        tf.TensorSpec([], tf.int64),
        tf.TensorSpec([], tf.int64),
    ]
)
def _resample(waveform: tf.Tensor, rate_in: tf.Tensor, rate_out: tf.Tensor) -> tf.Tensor:
    num_in = tf.shape(waveform, out_type=tf.int64)[0]
    num_out = (num_in * rate_out + rate_in - 1) // rate_in
    half = _half_width(rate_in, rate_out)
    padded = tf.pad(waveform, [[half, half + 1]])
    cutoff = tf.minimum(1.0, tf.cast(rate_out, tf.float32) / tf.cast(rate_in, tf.float32))
    taps = tf.range(-half + 1, half + 1)  # offsets from floor(t), t = output time in input samples
    # Output n sits at t = n * rate_in / rate_out input samples; its fractional part is
    # (n * rate_in mod rate_out) / rate_out, a multiple of g = gcd(rate_in, rate_out) over
    # rate_out: only rate_out / g phases (160 for 44.1 -> 16 kHz). The kernel (sin, Bessel I0)
    # is evaluated once per phase and gathered per output, not once per output sample and tap
    # (that cost 60% of decoding and resampling a 2 s clip). Rows are padded to a multiple of
    # 16 (no scalar remainder in the vectorised element-wise kernels, which could round
    # differently), and the gain multiplies the frames before the kernel: the order TF's
    # arithmetic optimizer gave the per-sample graph. Outputs are bit-for-bit those of that
    # graph (checked on 13 rates), so prepared records do not change. A clip with fewer outputs
    # than phases (short, at a rate nearly coprime with rate_out: up to 16,000 phases) keeps the
    # per-output kernel, so a table never costs more than the clip.
    step = _gcd(rate_in, rate_out)
    phases = rate_out // step
    use_table = phases <= num_out
    rows = tf.range((phases + 15) // 16 * 16, dtype=tf.int64) * step
    kernels = tf.cond(
        use_table,
        lambda: _windowed_sinc(tf.cast(taps[None, :], tf.float32) - _frac(rows, rate_out)[:, None],
                               cutoff),
        lambda: tf.zeros([0, tf.size(taps)], tf.float32))

    def block(start: tf.Tensor) -> tf.Tensor:
        # Integer arithmetic keeps t exact for long clips (float32 would drift after ~1M samples);
        # the last block repeats the final output index and the surplus is sliced off below.
        index = tf.minimum(start + tf.range(_BLOCK, dtype=tf.int64), num_out - 1)
        numer = index * rate_in
        base = numer // rate_out
        frames = tf.gather(padded, base[:, None] + taps[None, :] + half)
        kernel = tf.cond(  # [block, taps]
            use_table,
            lambda: tf.gather(kernels, (numer % rate_out) // step),
            lambda: _windowed_sinc(
                tf.cast(taps[None, :], tf.float32) - _frac(numer, rate_out)[:, None], cutoff))
        return tf.reduce_sum(frames * cutoff * kernel, axis=1)

    starts = tf.range(0, num_out, _BLOCK, dtype=tf.int64)
    blocks = tf.map_fn(block, starts, fn_output_signature=tf.TensorSpec([_BLOCK], tf.float32))
    return tf.reshape(blocks, [-1])[:num_out]


def _frac(numer: tf.Tensor, rate_out: tf.Tensor) -> tf.Tensor:
    """Fractional part of numer / rate_out as float32 (exact integer remainder first)."""
    return tf.cast(numer % rate_out, tf.float32) / tf.cast(rate_out, tf.float32)


def _gcd(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Greatest common divisor of two positive int64 scalars (Euclid, in-graph)."""
    return tf.while_loop(lambda x, y: y > 0, lambda x, y: (y, x % y), (a, b))[0]


def _windowed_sinc(distance: tf.Tensor, cutoff: tf.Tensor) -> tf.Tensor:
    """Low-pass kernel at ``distance`` input samples, without its gain ``cutoff`` (relative to
    input Nyquist), which the caller multiplies in."""
    x = distance * cutoff
    small = tf.abs(x) < 1e-9
    safe = tf.where(small, tf.ones_like(x), x)
    sinc = tf.where(small, tf.ones_like(x), tf.sin(np.pi * safe) / (np.pi * safe))
    position = tf.clip_by_value(x / _ZERO_CROSSINGS, -1.0, 1.0)
    window = tf.math.bessel_i0(_KAISER_BETA * tf.sqrt(1.0 - position**2)) / np.i0(_KAISER_BETA)
    window = tf.where(tf.abs(x) <= _ZERO_CROSSINGS, window, tf.zeros_like(window))
    return sinc * window


def _mono_at_rate(
    waveform: tf.Tensor, rate_in: int | tf.Tensor, sample_rate: int, max_samples: int | None
) -> tf.Tensor:
    """[T, C] at rate_in → mono [T'] in [-1, 1] at sample_rate, cut to max_samples.

    Both audio paths end here, which is what makes them agree. With a limit, the input is cropped
    first to the samples the kept outputs can reach, so a long upload costs no more than a short
    one and the result equals resample-then-truncate. The clip catches the sinc's overshoot on
    clipped recordings, which would otherwise leave the [-1, 1] range audio encoders expect.
    """
    mono = to_mono(waveform)
    if max_samples is not None:
        rate = tf.cast(rate_in, tf.int64)
        needed = (max_samples - 1) * rate // sample_rate + _half_width(rate, sample_rate) + 1
        mono = mono[:needed]
    resampled = resample(mono, rate_in, sample_rate)
    if max_samples is not None:
        resampled = resampled[:max_samples]
    return tf.clip_by_value(resampled, -1.0, 1.0)


# --- audio: in-graph and eager entry points ---------------------------------------------------


def decode_wav(
    wav_bytes: tf.Tensor,
    sample_rate: int = 16000,
    max_samples: int | None = None,
    *,
    rate_range: tuple[int, int] | None = None,
    max_seconds: float | None = None,
) -> tf.Tensor:
    """16-bit PCM WAV bytes (scalar tf.string) → float32 mono [T] at ``sample_rate``, in-graph.

    The serving-side twin of :func:`load_audio`: other formats need ``load_audio_bytes`` outside
    the graph, because ``tf.audio.decode_wav`` reads only PCM WAV. With ``rate_range`` /
    ``max_seconds`` (serving limits), the RIFF/WAVE magic is checked before decoding and the
    header's sample rate and the clip's duration before resampling — the resampler's filter
    grows with the input rate, so a 105-byte file declaring 4 MHz would otherwise take GiBs.
    """
    if rate_range is None and max_seconds is None:
        waveform, rate = tf.audio.decode_wav(wav_bytes)
        return _mono_at_rate(waveform, rate, sample_rate, max_samples)
    b = _header(wav_bytes, 12)
    with tf.control_dependencies([tf.debugging.Assert(
            _starts_with(b, b"RIFF") & _starts_with(b, b"WAVE", 8),
            ["audio: not a WAV file (no RIFF/WAVE header) - send 16-bit PCM WAV bytes"])]):
        wav_bytes = tf.identity(wav_bytes)
    waveform, rate = tf.audio.decode_wav(wav_bytes)
    checks = []
    if rate_range is not None:
        low, high = rate_range
        checks.append(tf.debugging.Assert(
            (rate >= low) & (rate <= high),
            [f"audio: sample rate outside export.limits [min_sample_rate={low}, "
             f"max_sample_rate={high}] Hz; the header declares:", rate]))
    if max_seconds is not None:
        samples = tf.cast(tf.shape(waveform)[0], tf.float64)
        checks.append(tf.debugging.Assert(
            samples <= max_seconds * tf.cast(tf.maximum(rate, 1), tf.float64),
            [f"audio: clip longer than export.limits.max_audio_seconds={max_seconds:g}; "
             "samples and rate:", tf.shape(waveform)[0], rate]))
        checks.append(tf.debugging.Assert(
            samples > 0, ["audio: the WAV holds no samples - send a non-empty clip"]))
    with tf.control_dependencies(checks):
        waveform, rate = tf.identity(waveform), tf.identity(rate)
    return _mono_at_rate(waveform, rate, sample_rate, max_samples)


def load_audio(
    path: str | Path,
    sample_rate: int = 16000,
    max_seconds: float | None = None,
    *,
    max_sample_rate: int = MAX_SAMPLE_RATE,
    max_audio_seconds: float = MAX_AUDIO_SECONDS,
) -> np.ndarray:
    """Decode any libsndfile format from a file into float32 mono [T] at ``sample_rate``.

    Limits as for :func:`load_audio_bytes`. libsndfile reads the file itself, so only the
    frames ``max_seconds`` reaches are read (a 2 GB recording cropped to 2 s used to be read
    whole into memory first)."""
    _read_bytes(path, "audio", _AUDIO_FORMATS, size=0)  # missing / unreadable: one line
    return _decode_audio(str(path), sample_rate, max_seconds, str(path), max_sample_rate,
                         max_audio_seconds)


def load_audio_bytes(
    data: bytes,
    sample_rate: int = 16000,
    max_seconds: float | None = None,
    source: str = "<bytes>",
    *,
    max_sample_rate: int = MAX_SAMPLE_RATE,
    max_audio_seconds: float = MAX_AUDIO_SECONDS,
) -> np.ndarray:
    """Like :func:`load_audio` for in-memory bytes; ``source`` names them in errors.

    The header is read first: a sample rate above ``max_sample_rate`` is refused (the
    resampler's filter grows with it). With ``max_seconds`` only the frames the kept output
    can reach are decoded, whatever the clip's length (the result equals decoding everything
    and cutting); without it, a clip longer than ``max_audio_seconds`` is refused. Both limits
    default to the serving ones (``export.limits``).
    """
    return _decode_audio(io.BytesIO(data), sample_rate, max_seconds, source, max_sample_rate,
                         max_audio_seconds)


def _decode_audio(file, sample_rate: int, max_seconds: float | None, source: str,
                  max_sample_rate: int, max_audio_seconds: float) -> np.ndarray:
    """A file path or file object, decoded as :func:`load_audio_bytes` describes."""
    max_samples = _max_samples(max_seconds, sample_rate)
    with _audio_clip(file, source) as clip:
        rate, frames = int(clip.samplerate), int(clip.frames)
        _check_audio_header(rate, frames, source, max_samples is None,
                            max_sample_rate, max_audio_seconds)
        count = -1 if max_samples is None else _input_frames(max_samples, rate, sample_rate)
        waveform = clip.read(count, dtype="float32", always_2d=True)
    if waveform.shape[0] == 0:
        raise _no_samples(source)
    if not np.isfinite(waveform).all():  # a float WAV/FLAC can hold NaN, which no encoder reads
        bad = int(np.count_nonzero(~np.isfinite(waveform)))
        raise MediaDecodeError(f"audio holds {bad} non-finite sample(s) (NaN or inf) — {source} "
                               "— re-export the clip; float samples must be finite")
    return _mono_at_rate(waveform, rate, sample_rate, max_samples).numpy()


def check_audio_file(
    path: str | Path,
    max_seconds: float | None = None,
    *,
    max_sample_rate: int = MAX_SAMPLE_RATE,
    max_audio_seconds: float = MAX_AUDIO_SECONDS,
) -> tuple[int, int]:
    """``(frames, sample rate)`` of an audio file (``soundfile.info``), checked as
    :func:`load_audio_bytes` checks it, without decoding a sample: a file libsndfile cannot
    open, one declaring no frames, a rate above ``max_sample_rate``, or (without
    ``max_seconds`` cropping) a clip longer than ``max_audio_seconds`` raises
    :class:`MediaDecodeError` naming the file."""
    _read_bytes(path, "audio", _AUDIO_FORMATS, size=0)  # missing / unreadable: as the loader
    with _audio_clip(str(path), str(path)) as clip:  # opening reads the header only
        rate, frames = int(clip.samplerate), int(clip.frames)
    if frames <= 0:
        raise _no_samples(str(path))
    _check_audio_header(rate, frames, str(path), max_seconds is None, max_sample_rate,
                        max_audio_seconds)
    return frames, rate


@contextlib.contextmanager
def _audio_clip(file, source: str) -> Iterator[soundfile.SoundFile]:
    """``file`` opened by libsndfile; what it cannot open or read, inside the block too, is a
    :class:`MediaDecodeError` naming ``source``."""
    try:
        with soundfile.SoundFile(file) as clip:
            yield clip
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise MediaDecodeError(
            f"cannot decode audio — {source} ({first_line(exc)}) — "
            f"supported formats: {_AUDIO_FORMATS}; re-encode the file or fix the path"
        ) from exc


def _no_samples(source: str) -> MediaDecodeError:
    return MediaDecodeError(
        f"audio has no samples — {source} — supply a non-empty clip ({_AUDIO_FORMATS})")


def _check_audio_header(rate: int, frames: int, source: str, whole_clip: bool,
                        max_sample_rate: int, max_audio_seconds: float) -> None:
    if rate > max_sample_rate:
        raise MediaDecodeError(
            f"audio sample rate too high — {source} declares {rate} Hz, over "
            f"export.limits.max_sample_rate={max_sample_rate} (the serving limit); resample "
            "the clip")
    if whole_clip and frames > max_audio_seconds * max(rate, 1):
        raise MediaDecodeError(
            f"audio clip too long — {source} declares {frames / max(rate, 1):,.1f} s, over "
            f"export.limits.max_audio_seconds={max_audio_seconds:g} (the serving limit); cut "
            "the clip or set audio.max_seconds")


def _input_frames(max_samples: int, rate: int, sample_rate: int) -> int:
    """Input frames :func:`_mono_at_rate` keeps for ``max_samples`` outputs (its crop, in
    Python integers): decoding more would be thrown away."""
    half = (_ZERO_CROSSINGS * max(rate, sample_rate) + sample_rate - 1) // sample_rate
    return (max_samples - 1) * rate // sample_rate + half + 1


# --- helpers ----------------------------------------------------------------------------------


def image_file_limit(max_pixels: int | None) -> int | None:
    """The largest image file read for ``max_pixels`` (None: no limit): 8 bytes a pixel (a
    16-bit RGBA image stored uncompressed) and 1 MiB of headers and metadata. A file larger
    than any image of the allowed size could be (gigabytes appended to a JPEG) is refused
    before it is read, so the memory of a read is bounded by the pixel limit."""
    return None if max_pixels is None else 8 * max_pixels + 2**20


def _read_bytes(path: str | Path, kind: str, formats: str, size: int = -1,
                limit: int | None = None) -> bytes:
    """The file's bytes (the first ``size`` of them, ``-1``: all); a file of more than
    ``limit`` bytes is refused unread."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            if limit is not None and os.fstat(file.fileno()).st_size > limit:
                raise MediaDecodeError(
                    f"{kind} file too large — {path} holds "
                    f"{os.fstat(file.fileno()).st_size:,} bytes, over the {limit:,} any "
                    f"{kind} within the pixel limit (export.limits.max_image_pixels) can take "
                    "— re-encode or shrink it")
            return file.read(size)
    except FileNotFoundError as exc:
        raise MediaDecodeError(
            f"{kind} file not found — {path} — check the {kind} column and the dataset folder"
        ) from exc
    except OSError as exc:
        raise MediaDecodeError(
            f"cannot read {kind} file — {path} ({exc.strerror}) — "
            f"it must be a readable file in one of: {formats}"
        ) from exc


def _max_samples(max_seconds: float | None, sample_rate: int) -> int | None:
    if max_seconds is None:
        return None
    if not max_seconds > 0:
        raise ConfigError(
            f"invalid max_seconds={max_seconds!r} for audio decoding — expected a positive "
            "number of seconds, or None to keep whole clips"
        )
    return max(1, round(max_seconds * sample_rate))


