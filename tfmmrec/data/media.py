"""Media decoding between raw item files and the image/audio encoders, for cache and serving alike.

The offline encoder cache (``load_image`` / ``load_audio``) and the exported serving signatures
(``decode_image`` / ``decode_wav``) run the same TensorFlow ops, so a poster or clip gives the same
tensor in training and at query time. The in-graph functions raise TensorFlow errors at run time;
the file/bytes loaders turn every decoding failure into :class:`MediaDecodeError` naming the file.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import soundfile
import tensorflow as tf

from tfmmrec.errors import ConfigError, MediaDecodeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")

_IMAGE_FORMATS = "JPEG, PNG, GIF (first frame), BMP or WebP"
_AUDIO_FORMATS = "WAV (PCM, ADPCM), FLAC, Ogg Vorbis/Opus, MP3, AIFF or AU (what libsndfile reads)"

# Windowed-sinc resampler: zero crossings of the sinc kept on each side, and the Kaiser window's
# beta (8.6 puts the side lobes near -90 dB). Output is computed in blocks so memory stays at
# block x taps floats whatever the clip length.
_ZERO_CROSSINGS = 16
_KAISER_BETA = 8.6
_BLOCK = 8192


# --- images -----------------------------------------------------------------------------------


def decode_image(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded image bytes (scalar tf.string) → float32 [image_size, image_size, 3] in [0, 1].

    Grayscale and RGBA become RGB, animations keep their first frame; the whole image is squashed
    (no crop) with antialiased bilinear resizing so downscaled posters do not alias.
    """
    # Decode as uint8 and convert after: DecodeImage refuses float output for WebP.
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    image = tf.clip_by_value(image, 0.0, 1.0)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def load_image(path: str | Path, image_size: int) -> np.ndarray:
    """Read an image file into float32 [image_size, image_size, 3], as serving decodes it."""
    data = _read_bytes(path, "image", _IMAGE_FORMATS)
    try:
        return decode_image(tf.constant(data), image_size).numpy()
    except (tf.errors.OpError, ValueError) as exc:
        raise MediaDecodeError(
            f"cannot decode image — {path} ({_first_line(exc)}) — "
            f"supported formats: {_IMAGE_FORMATS}; re-encode the file or fix the path"
        ) from exc


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

    def block(start: tf.Tensor) -> tf.Tensor:
        # Integer arithmetic keeps t exact for long clips (float32 would drift after ~1M samples);
        # the last block repeats the final output index and the surplus is sliced off below.
        index = tf.minimum(start + tf.range(_BLOCK, dtype=tf.int64), num_out - 1)
        numer = index * rate_in
        base = numer // rate_out
        frac = tf.cast(numer % rate_out, tf.float32) / tf.cast(rate_out, tf.float32)
        distance = tf.cast(taps[None, :], tf.float32) - frac[:, None]  # [block, taps]
        frames = tf.gather(padded, base[:, None] + taps[None, :] + half)
        return tf.reduce_sum(frames * _windowed_sinc(distance, cutoff), axis=1)

    starts = tf.range(0, num_out, _BLOCK, dtype=tf.int64)
    blocks = tf.map_fn(block, starts, fn_output_signature=tf.TensorSpec([_BLOCK], tf.float32))
    return tf.reshape(blocks, [-1])[:num_out]


def _windowed_sinc(distance: tf.Tensor, cutoff: tf.Tensor) -> tf.Tensor:
    """Low-pass kernel at ``distance`` input samples; ``cutoff`` is relative to input Nyquist."""
    x = distance * cutoff
    small = tf.abs(x) < 1e-9
    safe = tf.where(small, tf.ones_like(x), x)
    sinc = tf.where(small, tf.ones_like(x), tf.sin(np.pi * safe) / (np.pi * safe))
    position = tf.clip_by_value(x / _ZERO_CROSSINGS, -1.0, 1.0)
    window = tf.math.bessel_i0(_KAISER_BETA * tf.sqrt(1.0 - position**2)) / np.i0(_KAISER_BETA)
    window = tf.where(tf.abs(x) <= _ZERO_CROSSINGS, window, tf.zeros_like(window))
    return cutoff * sinc * window


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
    wav_bytes: tf.Tensor, sample_rate: int = 16000, max_samples: int | None = None
) -> tf.Tensor:
    """16-bit PCM WAV bytes (scalar tf.string) → float32 mono [T] at ``sample_rate``, in-graph.

    The serving-side twin of :func:`load_audio`: other formats need ``load_audio_bytes`` outside
    the graph, because ``tf.audio.decode_wav`` reads only PCM WAV.
    """
    waveform, rate = tf.audio.decode_wav(wav_bytes)
    return _mono_at_rate(waveform, rate, sample_rate, max_samples)


def load_audio(
    path: str | Path, sample_rate: int = 16000, max_seconds: float | None = None
) -> np.ndarray:
    """Decode any libsndfile format from a file into float32 mono [T] at ``sample_rate``."""
    data = _read_bytes(path, "audio", _AUDIO_FORMATS)
    return load_audio_bytes(data, sample_rate, max_seconds, source=str(path))


def load_audio_bytes(
    data: bytes,
    sample_rate: int = 16000,
    max_seconds: float | None = None,
    source: str = "<bytes>",
) -> np.ndarray:
    """Like :func:`load_audio` for in-memory bytes; ``source`` names them in errors."""
    max_samples = _max_samples(max_seconds, sample_rate)
    try:
        waveform, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise MediaDecodeError(
            f"cannot decode audio — {source} ({_first_line(exc)}) — "
            f"supported formats: {_AUDIO_FORMATS}; re-encode the file or fix the path"
        ) from exc
    if waveform.shape[0] == 0:
        raise MediaDecodeError(
            f"audio has no samples — {source} — supply a non-empty clip ({_AUDIO_FORMATS})"
        )
    return _mono_at_rate(waveform, int(rate), sample_rate, max_samples).numpy()


# --- helpers ----------------------------------------------------------------------------------


def _read_bytes(path: str | Path, kind: str, formats: str) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
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


def _first_line(exc: BaseException) -> str:
    """The readable part of a TF/libsndfile message, without op names and device prefixes."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:[^\]]*\].*|Error opening <[^>]*>:", "", text)
    text = text.strip()
    return text.splitlines()[0] if text else type(exc).__name__
