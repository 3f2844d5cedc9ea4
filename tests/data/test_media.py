"""Tests for tfmmrec.data.media: image/audio decoding shared by the encoder cache and serving."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile
import tensorflow as tf
from PIL import Image
from scipy.signal import correlate, resample_poly

from tests.conftest import shared_path
from tfmmrec.data import media
from tfmmrec.errors import ConfigError, DataError, MediaDecodeError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)

# name -> (duration in seconds from the README, channels in the file)
AUDIO_SAMPLES = {
    "pygame_house_lo.wav": 7.105,  # 8-bit unsigned PCM, 11.025 kHz
    "pygame_house_lo.ogg": 7.105,
    "pygame_house_lo.mp3": 7.262,  # encoder padding
    "pygame_secosmic_lo.wav": 3.265,  # MS-ADPCM
    "librosa_robin_456440.hq.ogg": 2.699,  # stereo 44.1 kHz
    "librosa_trumpet_sorohanro06.ogg": 5.333,  # 22.05 kHz
    "librosa_librispeech_198-209-0000_first10s.flac": 10.0,  # 16 kHz
}


# --- helpers ----------------------------------------------------------------------------------


def _sine(freq: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def _write_wav(path: Path, data: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    soundfile.write(path, data, rate, subtype=subtype, format="WAV")
    return path


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def _stripes(width: int = 60, height: int = 20, mode: str = "RGB") -> Image.Image:
    """Red | green | blue vertical thirds: a squash keeps all three, a centre crop would not."""
    image = Image.new("RGB", (width, height))
    for i, color in enumerate((RED, GREEN, BLUE)):
        image.paste(color, (i * width // 3, 0, (i + 1) * width // 3, height))
    return image.convert(mode)


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


# --- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "mode", "tolerance"),
    [
        (".png", "RGB", 0.01),
        (".bmp", "RGB", 0.01),
        (".jpg", "RGB", 0.12),  # lossy, chroma subsampled
        (".webp", "RGB", 0.12),
        (".png", "RGBA", 0.01),
        (".gif", "P", 0.01),
    ],
)
def test_load_image_squashes_whole_image_to_rgb_square(tmp_path, suffix, mode, tolerance):
    path = _save(_stripes(mode=mode), tmp_path / f"stripes{suffix}")
    image = media.load_image(path, 12)
    assert image.shape == (12, 12, 3)
    assert image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    for column, color in zip((1, 6, 10), (RED, GREEN, BLUE), strict=True):
        np.testing.assert_allclose(image[6, column], np.array(color) / 255, atol=tolerance)


def test_load_image_grayscale_becomes_three_equal_channels(tmp_path):
    path = _save(Image.new("L", (9, 5), 128), tmp_path / "gray.png")
    image = media.load_image(path, 8)
    assert image.shape == (8, 8, 3)
    np.testing.assert_allclose(image, 128 / 255, atol=1e-5)


def test_load_image_16bit_png_scales_to_unit_range(tmp_path):
    gray16 = np.full((6, 10), 49152, np.uint16)  # 0.75 of full scale
    path = _save(Image.fromarray(gray16), tmp_path / "deep.png")
    np.testing.assert_allclose(media.load_image(path, 4), 0.75, atol=0.01)


def test_load_image_animated_gif_keeps_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), RED), Image.new("RGB", (10, 10), BLUE)]
    path = _save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    image = media.load_image(path, 4)
    assert image.shape == (4, 4, 3)
    np.testing.assert_allclose(image[..., 0], 1.0, atol=0.01)
    np.testing.assert_allclose(image[..., 2], 0.0, atol=0.01)


def test_load_image_downscale_is_antialiased(tmp_path):
    lines = np.zeros((64, 64), np.uint8)
    lines[:, ::8] = 255  # a 1-pixel white line every 8 columns
    path = _save(Image.fromarray(lines), tmp_path / "lines.png")
    image = media.load_image(path, 8)
    # Antialiasing averages each 8-pixel cell to 1/8 grey; bilinear point sampling hits black.
    np.testing.assert_allclose(image[:, 1:-1], 1 / 8, atol=0.03)  # edges see a clipped kernel


def test_decode_image_matches_load_image_inside_tf_function(tmp_path):
    path = _save(_stripes(), tmp_path / "stripes.png")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def decode_batch(images: tf.Tensor) -> tf.Tensor:
        return tf.map_fn(
            lambda b: media.decode_image(b, 16),
            images,
            fn_output_signature=tf.TensorSpec([16, 16, 3], tf.float32),
        )

    batch = decode_batch(tf.constant([path.read_bytes()] * 2))
    assert batch.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(batch[0].numpy(), media.load_image(path, 16))


def test_decode_image_has_static_output_shape():
    spec = tf.TensorSpec([], tf.string)
    concrete = tf.function(lambda b: media.decode_image(b, 24)).get_concrete_function(spec)
    assert concrete.structured_outputs.shape.as_list() == [24, 24, 3]


def test_load_image_corrupt_bytes_raise_media_decode_error_naming_path(tmp_path):
    path = tmp_path / "poster.jpg"
    path.write_bytes(b"this is not an image")
    with pytest.raises(MediaDecodeError, match=r"poster\.jpg") as info:
        media.load_image(path, 8)
    assert "function_node" not in str(info.value)  # TF internals trimmed from the message


def test_load_image_missing_file_raises_media_decode_error_naming_path(tmp_path):
    with pytest.raises(MediaDecodeError, match=r"missing\.png"):
        media.load_image(tmp_path / "missing.png", 8)


# --- audio: TF building blocks ----------------------------------------------------------------


def test_to_mono_averages_channels_in_graph():
    stereo = tf.constant([[1.0, 3.0], [2.0, 4.0], [-1.0, 1.0]])
    mono = tf.function(media.to_mono)(stereo)
    np.testing.assert_allclose(mono.numpy(), [2.0, 3.0, 0.0])


@pytest.mark.parametrize("rate_in", [16000, tf.constant(16000)], ids=["int", "tensor"])
def test_resample_equal_rates_is_identity(rate_in):
    wave = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)
    np.testing.assert_array_equal(media.resample(wave, rate_in, 16000).numpy(), wave)


@pytest.mark.parametrize(("rate_in", "freq"), [(44100, 440.0), (22050, 1000.0), (8000, 300.0)])
def test_resample_preserves_sine_frequency_and_amplitude(rate_in, freq):
    wave = _sine(freq, rate_in, 1.0)[:, 0]
    out = media.resample(wave, rate_in, 16000).numpy()
    assert len(out) == 16000
    assert _peak_hz(out, 16000) == pytest.approx(freq, abs=2.0)
    expected = _sine(freq, 16000, 1.0)[:, 0]
    # Away from the zero-padded edges the band-limited interpolation is near exact.
    np.testing.assert_allclose(out[200:-200], expected[200:-200], atol=2e-3)


def test_resample_downsampling_removes_content_above_new_nyquist():
    wave = _sine(12000.0, 44100, 1.0)[:, 0]  # above 8 kHz: would alias to 4 kHz
    out = media.resample(wave, 44100, 16000).numpy()
    assert np.sqrt(np.mean(out[200:-200] ** 2)) < 0.01 * np.sqrt(np.mean(wave**2))


def test_resample_matches_scipy_on_noise():
    noise = np.random.default_rng(1).normal(0, 0.2, 22050).astype(np.float32)
    ours = media.resample(noise, 22050, 16000).numpy()
    reference = resample_poly(noise, 320, 441)
    assert len(ours) == len(reference)
    assert np.corrcoef(ours, reference)[0, 1] > 0.99


def _windowed_sinc_reference(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """The resampler's definition, one output sample at a time in float64."""
    half = -(-media._ZERO_CROSSINGS * max(rate_in, rate_out) // rate_out)
    cutoff = min(1.0, rate_out / rate_in)
    out = np.zeros(-(-len(wave) * rate_out // rate_in))
    for n in range(len(out)):
        base, rest = divmod(n * rate_in, rate_out)
        taps = np.arange(-half + 1, half + 1)
        x = (taps - rest / rate_out) * cutoff
        window = np.i0(media._KAISER_BETA * np.sqrt(np.clip(
            1 - (x / media._ZERO_CROSSINGS) ** 2, 0, 1))) / np.i0(media._KAISER_BETA)
        kernel = cutoff * np.sinc(x) * np.where(np.abs(x) <= media._ZERO_CROSSINGS, window, 0)
        index = base + taps
        inside = (index >= 0) & (index < len(wave))
        out[n] = np.sum(wave[index[inside]] * kernel[inside])
    return out


# Phases of the fractional position: 1 (48 kHz), 160 (44.1 kHz), 640 (11,025 Hz, upsampling)
# and 16,000 (coprime rates): each output must use its own phase's kernel.
@pytest.mark.parametrize("rate_in", [48000, 44100, 11025, 16001])
def test_resample_equals_the_windowed_sinc_definition(rate_in):
    wave = np.random.default_rng(rate_in).uniform(-0.5, 0.5, 3000).astype(np.float32)
    ours = media.resample(wave, rate_in, 16000).numpy()
    reference = _windowed_sinc_reference(wave.astype(np.float64), rate_in, 16000)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=2e-6)


def test_resample_with_tensor_rate_in_graph_computes_length():
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.int32)])
    def run(wave: tf.Tensor, rate: tf.Tensor) -> tf.Tensor:
        return media.resample(wave, rate, 16000)

    wave = tf.zeros([11025])
    assert run(wave, tf.constant(11025)).shape == (16000,)
    assert run(wave[:1001], tf.constant(44100)).shape == (364,)  # ceil(1001 * 16000 / 44100)
    assert run(wave[:7], tf.constant(16000)).shape == (7,)
    assert run(wave[:0], tf.constant(8000)).shape == (0,)


# --- audio: files and bytes -------------------------------------------------------------------


def test_decode_wav_equals_load_audio_for_synthetic_stereo_wav(tmp_path):
    path = _write_wav(tmp_path / "tone.wav", _sine(440.0, 22050, 0.5, channels=2), 22050)
    eager = media.load_audio(path)
    serving = tf.function(media.decode_wav, input_signature=[tf.TensorSpec([], tf.string)])
    graph = serving(tf.constant(path.read_bytes())).numpy()
    assert eager.shape == (8000,)
    np.testing.assert_allclose(graph, eager, atol=1e-5)


def test_max_seconds_and_max_samples_truncate_to_the_same_prefix(tmp_path):
    path = _write_wav(tmp_path / "tone.wav", _sine(300.0, 44100, 3.0), 44100)
    full = media.load_audio(path)
    cut = media.load_audio(path, max_seconds=1.0)
    wav_cut = media.decode_wav(tf.constant(path.read_bytes()), max_samples=16000).numpy()
    assert len(full) == 48000
    assert cut.shape == wav_cut.shape == (16000,)
    np.testing.assert_allclose(cut, full[:16000], atol=1e-6)
    np.testing.assert_allclose(wav_cut, full[:16000], atol=1e-5)


def test_max_seconds_longer_than_clip_keeps_whole_clip(tmp_path):
    path = _write_wav(tmp_path / "tone.wav", _sine(300.0, 16000, 0.25), 16000)
    assert media.load_audio(path, max_seconds=10.0).shape == (4000,)


def test_load_audio_rejects_non_positive_max_seconds(tmp_path):
    path = _write_wav(tmp_path / "tone.wav", _sine(300.0, 16000, 0.25), 16000)
    with pytest.raises(ConfigError, match="max_seconds"):
        media.load_audio(path, max_seconds=0)


def test_load_audio_reads_8bit_and_flac_like_16bit(tmp_path):
    wave = (_sine(500.0, 11025, 0.5) * 32767).astype(np.int16)  # integers: FLAC is then lossless
    pcm16 = media.load_audio(_write_wav(tmp_path / "a.wav", wave, 11025))
    pcm8 = media.load_audio(_write_wav(tmp_path / "b.wav", wave, 11025, subtype="PCM_U8"))
    flac = tmp_path / "c.flac"
    soundfile.write(flac, wave, 11025, subtype="PCM_16", format="FLAC")
    np.testing.assert_allclose(pcm8, pcm16, atol=0.02)
    np.testing.assert_allclose(media.load_audio(flac), pcm16, atol=1e-6)


def test_load_audio_bytes_equals_load_audio(tmp_path):
    path = _write_wav(tmp_path / "tone.wav", _sine(440.0, 8000, 0.5), 8000)
    np.testing.assert_array_equal(media.load_audio_bytes(path.read_bytes()), media.load_audio(path))


@pytest.mark.parametrize("content", [b"garbage bytes, not audio" * 10, b""], ids=["junk", "empty"])
def test_load_audio_undecodable_file_names_path_and_formats(tmp_path, content):
    path = tmp_path / "clip.wav"
    path.write_bytes(content)
    with pytest.raises(MediaDecodeError, match=r"clip\.wav") as info:
        media.load_audio(path)
    assert "FLAC" in str(info.value)
    assert isinstance(info.value, DataError)


def test_load_audio_zero_frame_wav_raises(tmp_path):
    path = _write_wav(tmp_path / "silent.wav", np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(MediaDecodeError, match=r"no samples — .*silent\.wav"):
        media.load_audio(path)


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_load_audio_refuses_non_finite_float_samples(tmp_path, value):
    """A float WAV of NaN was encoded to a NaN feature row, cached as decoded; every later
    error (a diverged loss, NaN embeddings) then blamed the model, never the file."""
    path = tmp_path / "nan.wav"
    samples = np.zeros(1600, np.float32)
    samples[100] = value
    soundfile.write(path, samples, 16000, subtype="FLOAT")
    with pytest.raises(MediaDecodeError, match=r"1 non-finite sample\(s\).*nan\.wav"):
        media.load_audio(path)


def test_load_audio_missing_file_names_path(tmp_path):
    with pytest.raises(MediaDecodeError, match=r"nowhere\.flac"):
        media.load_audio(tmp_path / "nowhere.flac")


def test_load_audio_bytes_errors_name_the_source():
    with pytest.raises(MediaDecodeError, match="upload-42"):
        media.load_audio_bytes(b"\x00\x01junk", source="upload-42")


def test_decode_wav_rejects_non_wav_bytes_with_tf_error():
    buffer = io.BytesIO()
    soundfile.write(buffer, _sine(440.0, 8000, 0.1), 8000, format="FLAC")
    with pytest.raises(tf.errors.InvalidArgumentError):
        media.decode_wav(tf.constant(buffer.getvalue()))


def test_extension_tuples_are_lowercase_dotted():
    for extensions in (media.IMAGE_EXTENSIONS, media.AUDIO_EXTENSIONS):
        assert all(e.startswith(".") and e == e.lower() for e in extensions)
    assert {".jpg", ".png"} <= set(media.IMAGE_EXTENSIONS)
    assert {".wav", ".flac", ".ogg", ".mp3"} <= set(media.AUDIO_EXTENSIONS)


# --- audio: real clips in ../shared -----------------------------------------------------------


@pytest.mark.needs_shared
@pytest.mark.parametrize(("name", "seconds"), AUDIO_SAMPLES.items())
def test_real_clip_decodes_to_mono_16k_with_expected_duration(audio_samples_dir, name, seconds):
    wave = media.load_audio(audio_samples_dir / name)
    assert wave.ndim == 1 and wave.dtype == np.float32
    assert len(wave) / 16000 == pytest.approx(seconds, rel=0.01)
    assert np.all(np.abs(wave) <= 1.0)
    assert wave.std() > 0.01  # real signal, not silence


@pytest.mark.needs_shared
def test_house_lo_wav_ogg_and_mp3_agree(audio_samples_dir):
    wav, ogg, mp3 = (
        media.load_audio(audio_samples_dir / f"pygame_house_lo.{ext}")
        for ext in ("wav", "ogg", "mp3")
    )
    n = min(len(wav), len(ogg))
    assert np.corrcoef(wav[:n], ogg[:n])[0, 1] > 0.98
    # The MP3 starts later (encoder delay): align on the cross-correlation peak first.
    head = 3 * 16000
    lag = int(correlate(mp3[:head], wav[:head], method="fft").argmax()) - (head - 1)
    assert lag >= 0
    n = min(len(wav), len(mp3) - lag)
    assert np.corrcoef(wav[:n], mp3[lag : lag + n])[0, 1] > 0.98


@pytest.mark.needs_shared
def test_resample_matches_scipy_on_real_stereo_clip(audio_samples_dir):
    data, rate = soundfile.read(
        audio_samples_dir / "librosa_robin_456440.hq.ogg", dtype="float32", always_2d=True
    )
    mono = media.to_mono(data).numpy()
    ours = media.resample(mono, rate, 16000).numpy()
    reference = resample_poly(mono, 160, 441)  # 44100 → 16000
    assert len(ours) == len(reference)
    assert np.corrcoef(ours, reference)[0, 1] > 0.99


@pytest.mark.needs_shared
def test_fsdd_wav_same_through_decode_wav_and_load_audio():
    path = shared_path("data", "fsdd", "recordings", "0_george_0.wav")
    eager = media.load_audio(path)
    serving = tf.function(media.decode_wav, input_signature=[tf.TensorSpec([], tf.string)])
    graph = serving(tf.constant(path.read_bytes())).numpy()
    assert len(eager) > 1000
    np.testing.assert_allclose(graph, eager, atol=1e-5)
