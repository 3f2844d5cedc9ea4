"""Tests for tfmmrec.data.media's limits: the offline decoders read the header first, refuse
what serving refuses (pixels, sample rate) and decode no more audio than the model keeps."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile
import tensorflow as tf
from PIL import Image

from tfmmrec.data import media
from tfmmrec.errors import MediaDecodeError


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def write_huge_png(path: Path, width: int = 9000, height: int = 9000) -> Path:
    """A valid 1-bit grayscale PNG of width x height (all black), compressed row by row: a few
    KB on disk whatever its declared size (9000 x 9000 = 81 Mpx, over the offline 67.1 Mpx
    limit)."""
    row = b"\0" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat)
                     + _chunk(b"IEND", b""))
    return path


def _noise_png(path: Path, width: int = 40, height: int = 25) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def no_image_decoding(monkeypatch):
    """Fail the test if anything decodes pixels."""
    def refuse(*args, **kwargs):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(media, "decode_image", refuse)


# --- images -----------------------------------------------------------------------------------


def test_oversized_png_is_refused_from_its_header_without_decoding(tmp_path, no_image_decoding):
    path = write_huge_png(tmp_path / "poster.png")
    assert path.stat().st_size < 50_000
    with pytest.raises(MediaDecodeError) as info:
        media.load_image(path, 32)
    message = str(info.value)
    assert "poster.png" in message and "9000 x 9000" in message
    assert "decoding limit of 67,108,864" in message and "\n" not in message


def test_pixel_limit_is_a_parameter_and_the_limit_itself_is_allowed(tmp_path):
    path = _noise_png(tmp_path / "small.png", 40, 25)  # 1000 pixels
    unlimited = media.load_image(path, 16, max_pixels=None)
    np.testing.assert_array_equal(media.load_image(path, 16, max_pixels=1000), unlimited)
    np.testing.assert_array_equal(media.load_image(path, 16), unlimited)
    with pytest.raises(MediaDecodeError, match=r"small\.png.*decoding limit of 999"):
        media.load_image(path, 16, max_pixels=999)


def test_check_image_file_reads_size_and_refuses_broken_or_oversized(tmp_path,
                                                                     no_image_decoding):
    good = _noise_png(tmp_path / "good.png", 40, 25)
    assert media.check_image_file(good) == (40, 25)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(MediaDecodeError, match=r"truncated\.png \(broken file"):
        media.check_image_file(truncated)
    with pytest.raises(MediaDecodeError, match=r"huge\.png .*decoding limit"):
        media.check_image_file(write_huge_png(tmp_path / "huge.png"))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(MediaDecodeError, match=r"junk\.png \(unknown image file format\)"):
        media.check_image_file(junk)
    with pytest.raises(MediaDecodeError, match=r"missing\.png"):
        media.check_image_file(tmp_path / "missing.png")


def write_noise_jpeg(path: Path, width: int = 200, height: int = 300,
                     progressive: bool = False) -> Path:
    """A JPEG of noise: nearly all of its bytes are entropy-coded scan data."""
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90, progressive=progressive)
    return path


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_check_image_file_refuses_a_jpeg_cut_in_half_as_the_decoder_does(tmp_path,
                                                                         progressive):
    """Markers and header survive the cut, so only reading the scan data finds it."""
    good = write_noise_jpeg(tmp_path / "good.jpg", progressive=progressive)
    assert media.check_image_file(good) == (200, 300)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    with pytest.raises(MediaDecodeError, match=r"^cannot decode image — .*cut\.jpg \(broken "
                                               r"file: image file is truncated") as info:
        media.check_image_file(cut)
    assert "\n" not in str(info.value)
    with pytest.raises(MediaDecodeError, match=r"cut\.jpg"):
        media.load_image(cut, 16)  # what the check spares: a failure at encode time


def test_check_image_file_still_refuses_an_oversized_jpeg_before_reading_its_data(
        tmp_path, monkeypatch):
    path = write_noise_jpeg(tmp_path / "big.jpg", 40, 30)  # 1,200 pixels

    def refuse(*args, **kwargs):
        raise AssertionError("the image data was read")

    monkeypatch.setattr(media, "_check_image_data", refuse)
    with pytest.raises(MediaDecodeError, match=r"big\.jpg declares 40 x 30 .*limit of 1,000"):
        media.check_image_file(path, max_pixels=1000)


@pytest.mark.parametrize("suffix", [".jpg", ".gif", ".bmp", ".webp"])
def test_check_image_file_accepts_every_decodable_format(tmp_path, suffix):
    path = tmp_path / f"stripes{suffix}"
    Image.new("RGB", (30, 20), (10, 200, 30)).save(path)
    assert media.check_image_file(path) == (30, 20)
    assert media.load_image(path, 8).shape == (8, 8, 3)


# --- audio ------------------------------------------------------------------------------------


def _noise(rate: int, seconds: float, channels: int = 2) -> np.ndarray:
    wave = np.random.default_rng(1).standard_normal((round(rate * seconds), channels)) * 0.3
    return (wave.clip(-1, 1) * 32767).astype(np.int16)


def test_cropped_audio_decodes_only_the_frames_the_output_reaches(tmp_path, monkeypatch):
    path = tmp_path / "long.flac"
    soundfile.write(path, _noise(48000, 4.0), 48000, format="FLAC")
    reads = []
    original = soundfile.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(soundfile.SoundFile, "read", spy)
    cut = media.load_audio(path, 16000, max_seconds=0.5)
    # 8000 outputs at 16 kHz reach 3 * 7999 input frames plus the filter's half-width (48).
    assert reads == [3 * 7999 + 48 + 1]
    # What decoding the whole clip and cutting gave (the previous behaviour), bit for bit.
    whole, rate = soundfile.read(path, dtype="float32", always_2d=True)
    expected = media._mono_at_rate(whole, rate, 16000, 8000).numpy()
    np.testing.assert_array_equal(cut, expected)


def test_long_clip_is_cropped_with_max_seconds_and_refused_without(tmp_path):
    path = tmp_path / "silence.flac"
    soundfile.write(path, np.zeros((48000 * 5, 2), np.int16), 48000, format="FLAC")
    assert path.stat().st_size < 20_000
    assert media.load_audio(path, 16000, max_seconds=1.0, max_audio_seconds=2).shape == (16000,)
    with pytest.raises(MediaDecodeError) as info:
        media.load_audio(path, 16000, max_seconds=None, max_audio_seconds=2)
    message = str(info.value)
    assert "silence.flac" in message and "5.0 s" in message
    assert "max_audio_seconds=2" in message and "\n" not in message
    with pytest.raises(MediaDecodeError, match="max_audio_seconds=2"):
        media.check_audio_file(path, None, max_audio_seconds=2)
    assert media.check_audio_file(path, 1.0, max_audio_seconds=2) == (240000, 48000)


def test_sample_rate_over_the_limit_is_refused_from_the_header(tmp_path):
    path = tmp_path / "ultrasonic.wav"
    soundfile.write(path, np.zeros((64, 1), np.int16), 384000, format="WAV")
    for load in (lambda: media.load_audio(path, 16000, 2.0),
                 lambda: media.load_audio_bytes(path.read_bytes(), 16000, 2.0, source=str(path)),
                 lambda: media.check_audio_file(path, 2.0)):
        with pytest.raises(MediaDecodeError, match=r"ultrasonic\.wav declares 384000 Hz.*"
                                                   r"max_sample_rate=192000"):
            load()
    normal = tmp_path / "normal.wav"
    soundfile.write(normal, _noise(48000, 0.1), 48000, format="WAV")
    with pytest.raises(MediaDecodeError, match="max_sample_rate=44100"):
        media.load_audio(normal, 16000, 2.0, max_sample_rate=44100)
    assert media.load_audio(normal, 16000, 2.0).shape == (1600,)


def test_check_audio_file_refuses_a_truncated_wav(tmp_path):
    good = tmp_path / "good.wav"
    soundfile.write(good, _noise(16000, 0.1, channels=1), 16000, format="WAV")
    assert media.check_audio_file(good, 2.0) == (1600, 16000)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:30])
    with pytest.raises(MediaDecodeError, match=r"cannot decode audio — .*truncated\.wav \("):
        media.check_audio_file(truncated, 2.0)
    with pytest.raises(MediaDecodeError, match=r"nowhere\.wav"):
        media.check_audio_file(tmp_path / "nowhere.wav", 2.0)


# --- GIF frames and animated WebP -------------------------------------------------------------


def animated_gif(frames: int = 100, size: int = 512) -> bytes:
    """The reviewer's GIF bomb, smaller: ``frames`` full ``size`` x ``size`` frames alternating
    black and white (the first black). LZW packs each frame into a few KB; decoding every frame
    takes frames x size² bytes (100 x 512² = 26 MB here, 500 MB for 120 2048² frames)."""
    images = [Image.new("P", (size, size), color=i % 2) for i in range(frames)]
    for image in images:
        image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], optimize=False,
                   disposal=1, duration=10)
    return buffer.getvalue()


def gif_parts(size=(8, 8)) -> tuple[bytes, bytes]:
    """A one-frame GIF split into header (with its colour table) and image block + trailer."""
    buffer = io.BytesIO()
    Image.new("P", size, 1).save(buffer, "GIF")
    data = buffer.getvalue()
    table = 3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0
    return data[:13 + table], data[13 + table:]


def fragmented_gif(pairs: int) -> bytes:
    """A valid 8x8 GIF whose comment extension is ``pairs`` 1-byte and 2-byte sub-blocks in
    turn: no run of equal lengths to skip, so each step of the walk gets through one pair."""
    header, image = gif_parts()
    return header + b"\x21\xfe" + b"\x01a\x02ab" * pairs + b"\x00" + image


def gif_with_screen(frame: int, screen: int) -> bytes:
    """A one-frame GIF of ``frame`` x ``frame`` pixels whose header's logical screen says
    ``screen`` x ``screen`` (TF sizes its canvas by the frame)."""
    header, image = gif_parts((frame, frame))
    return header[:6] + struct.pack("<HH", screen, screen) + header[10:] + image


@pytest.fixture
def decoded_gifs(monkeypatch) -> list[bytes]:
    """The bytes the image decoder is given, as the loaders call it."""
    given = []
    decode = media.tf.io.decode_image

    def spy(contents, *args, **kwargs):
        given.append(contents.numpy())
        return decode(contents, *args, **kwargs)

    monkeypatch.setattr(media.tf.io, "decode_image", spy)
    return given


def test_a_gif_bomb_reaches_the_decoder_as_its_first_frame_only(tmp_path, decoded_gifs):
    path = tmp_path / "bomb.gif"
    path.write_bytes(animated_gif(100, 512))
    limit = 2 * 512 * 512  # the 100 frames hold 26 M pixels, the first one 262,144
    assert media.check_image_file(path, limit) == (512, 512)
    np.testing.assert_array_equal(media.load_image(path, 16, limit), 0.0)  # black
    [given] = decoded_gifs
    with Image.open(io.BytesIO(given)) as first:
        assert first.n_frames == 1 and first.size == (512, 512)
    assert len(given) < path.stat().st_size / 50


def test_a_gif_frame_larger_than_its_logical_screen_is_refused(tmp_path, no_image_decoding):
    path = tmp_path / "liar.gif"
    path.write_bytes(gif_with_screen(frame=64, screen=16))
    for check in (lambda: media.load_image(path, 8, max_pixels=1000),
                  lambda: media.check_image_file(path, max_pixels=1000)):
        with pytest.raises(MediaDecodeError, match=r"first frame of .*liar\.gif declares 64 x 64 "
                                                   r"= 4,096 pixels, over the decoding limit "
                                                   r"of 1,000"):
            check()


def test_fragmented_or_imageless_gifs_are_refused_before_decoding(tmp_path, no_image_decoding):
    fragmented = tmp_path / "fragmented.gif"
    fragmented.write_bytes(fragmented_gif(media.GIF_MAX_STEPS + 10))
    empty = tmp_path / "empty.gif"
    empty.write_bytes(gif_parts()[0] + b";")
    for path, reason in ((fragmented, rf"GIF too fragmented: over {media.GIF_MAX_STEPS} steps"),
                         (empty, r"broken GIF: no image block")):
        for check in (media.check_image_file, lambda p: media.load_image(p, 8)):
            with pytest.raises(MediaDecodeError, match=rf"{path.name} \({reason}"):
                check(path)


def test_an_animated_webp_is_refused_with_its_reason(tmp_path):
    path = tmp_path / "anim.webp"
    frames = [Image.new("RGB", (20, 10), color) for color in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    for check in (media.check_image_file, lambda p: media.load_image(p, 8)):
        with pytest.raises(MediaDecodeError, match=r"anim\.webp \(animated WebP"):
            check(path)


def test_offline_and_serving_decode_an_animated_gif_to_the_same_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 30), color) for color in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    offline = media.load_image(path, 8)
    serving = tf.function(lambda b: media.decode_image(b, 8, 16_777_216))(
        tf.constant(path.read_bytes()))
    np.testing.assert_array_equal(offline, serving.numpy())
    np.testing.assert_allclose(offline, np.broadcast_to([1.0, 0.0, 0.0], offline.shape),
                               atol=0.01)


def test_a_webp_with_alpha_decodes_as_its_png_does_offline_and_in_serving(tmp_path):
    """TF's WebP decoder refuses channels=3 for a WebP with alpha (transparent cut-outs)."""
    rgba = np.random.default_rng(0).integers(0, 256, (20, 30, 4), np.uint8)
    # exact: keep the RGB under transparent pixels (WebP may rewrite it otherwise)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.webp", lossless=True, exact=True)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    media.check_image_file(tmp_path / "cut.webp")
    offline = media.load_image(tmp_path / "cut.webp", 16)
    np.testing.assert_array_equal(offline, media.load_image(tmp_path / "cut.png", 16))
    serving = tf.function(lambda b: media.decode_image(b, 16, 16_777_216))(
        tf.constant((tmp_path / "cut.webp").read_bytes()))
    np.testing.assert_array_equal(offline, serving.numpy())


# --- the memory of reading a media file is bounded, whatever the file's size ----------------

def _sparse_wav(path: Path, seconds: int, rate: int = 48_000) -> Path:
    """A 16-bit stereo WAV whose header declares ``seconds`` of (silent) audio, written as a
    sparse file: the reviewer's 3-hour recording, cheap on disk."""
    frames = seconds * rate
    data_bytes = frames * 4
    header = (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt "
              + struct.pack("<IHHIIHH", 16, 1, 2, rate, rate * 4, 4, 16)
              + b"data" + struct.pack("<I", data_bytes))
    with path.open("wb") as file:
        file.write(header)
        file.truncate(len(header) + data_bytes)
    return path


def _peak_bytes(call) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_long_clip_cropped_to_seconds_is_not_read_whole(tmp_path):
    """Every file was read whole into memory before decoding (a 2 GB recording used for 2 s
    took 3.2 GB of RSS): libsndfile now reads the file, only as far as max_seconds reaches,
    and the cache key is hashed 1 MiB at a time."""
    from tfmmrec.modalities import get

    path = _sparse_wav(tmp_path / "long.wav", seconds=1_000)  # 192 MB declared
    assert path.stat().st_size > 180 * 2**20
    clip = []
    peak = _peak_bytes(lambda: clip.append(media.load_audio(path, 16_000, max_seconds=2.0)))
    assert clip[0].shape == (32_000,) and peak < 20 * 2**20
    key = []
    peak = _peak_bytes(lambda: key.append(get("audio").content_key(str(path))))
    assert peak < 20 * 2**20
    import hashlib

    assert key[0] == hashlib.sha1(path.read_bytes()).hexdigest()  # the same key as before


def test_an_image_file_larger_than_any_allowed_image_is_refused_unread(tmp_path):
    """A poster with gigabytes appended was read whole: a file over 8 bytes a pixel of the
    limit (plus 1 MiB of metadata) cannot be an image within it, and is refused by size."""
    path = _noise_png(tmp_path / "padded.png")
    with path.open("ab") as file:
        file.truncate(path.stat().st_size + 2 * 2**20)
    limit = media.image_file_limit(1_000)
    assert limit == 8_000 + 2**20
    for call in (lambda: media.load_image(path, 16, max_pixels=1_000),
                 lambda: media.check_image_file(path, max_pixels=1_000)):
        with pytest.raises(MediaDecodeError, match=rf"image file too large — {path} holds "
                                                   rf"2,\d{{3}},\d{{3}} bytes, over the "
                                                   rf"{limit:,}"):
            call()
    assert media.load_image(path, 16, max_pixels=None).shape == (16, 16, 3)  # no limit
