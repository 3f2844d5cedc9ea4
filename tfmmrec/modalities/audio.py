"""Modalities: audio — a clip file, mixed to mono, resampled to 16 kHz and cut to
``max_seconds``; batches are zero-padded ``{"waveform": [B, T], "length": [B]}``."""

from __future__ import annotations

import io
import os
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import soundfile
import tensorflow as tf

from tfmmrec.config import AUDIO_SAMPLE_RATE, AudioTowerConfig, ServingLimitsConfig
from tfmmrec.data.media import (
    AUDIO_EXTENSIONS,
    check_audio_file,
    decode_wav,
    load_audio,
    load_audio_bytes,
)
from tfmmrec.errors import ConfigError, MediaDecodeError, ServingError
from tfmmrec.modalities.base import (
    FileModality,
    Settings,
    bytes_feature,
    decode_limits,
    file_hash,
    int_feature,
)

# The one rate every audio tower takes (YAMNet and the built-in log-mel CNN are 16 kHz models).
# ``audio.sample_rate`` is validated against it once, when the config loads; the settings carry
# it only so plans, manifests and export metadata record it.
SAMPLE_RATE = AUDIO_SAMPLE_RATE


class AudioModality(FileModality):
    """Clips as float32 mono waveforms at :data:`SAMPLE_RATE` in [-1, 1], at most
    ``max_seconds`` long; TFRecords keep int16 PCM. Requests are 16-bit PCM WAV bytes, decoded
    in-graph with the rate and length limits checked before resampling; a client converts
    the other formats the catalogue accepts (:meth:`request_file`)."""

    name = "audio"
    tower_config_class = AudioTowerConfig
    encoder_builder = "tfmmrec.towers.audio:build_audio_encoder"
    catalog_field = "audio_paths"
    settings_fields: ClassVar[Mapping[str, str]] = {"sample_rate": "sample_rate",
                                                    "max_seconds": "max_seconds"}
    column_names = frozenset({"audio", "clip", "sound", "audio_path", "preview", "wav"})
    extensions = AUDIO_EXTENSIONS
    query_help = ("audio file (repeatable): a 16-bit PCM WAV is sent as it is; other formats "
                  "(FLAC, Ogg, MP3, 8-bit or ADPCM WAV...) are decoded here and sent as 16-bit "
                  "PCM WAV at 16 kHz mono")

    def validate_settings(self, settings: Settings) -> None:
        if settings["sample_rate"] != SAMPLE_RATE:
            raise ConfigError(f"invalid audio setting sample_rate={settings['sample_rate']!r}: "
                              f"expected {SAMPLE_RATE} (every audio tower takes 16 kHz)")

    def load_file(self, path: str | Path, settings: Settings) -> np.ndarray:
        return load_audio(path, SAMPLE_RATE, settings["max_seconds"], **_limits(settings))

    def check_file(self, path: str | Path, settings: Settings) -> None:
        """Header-level check (``tfmmrec validate``): raises ``MediaDecodeError`` for a file
        :meth:`load_file` would refuse (libsndfile cannot open it, no frames, over the
        sample-rate limit)."""
        check_audio_file(path, settings["max_seconds"], **_limits(settings))

    def batch(self, values: list) -> dict[str, np.ndarray]:
        return pad_waveforms(values)

    def fill(self, values: list, settings: Settings) -> dict[str, np.ndarray]:
        width = max([len(v) for v in values if v is not None] + [1])
        waveform = np.zeros((len(values), width), np.float32)
        length = np.zeros(len(values), np.int32)
        for row, clip in enumerate(values):
            if clip is not None:
                waveform[row, :len(clip)], length[row] = clip, len(clip)
        return {"waveform": waveform, "length": length}

    def encoder_input_spec(self, settings: Settings) -> dict[str, tf.TensorSpec]:
        return {"waveform": tf.TensorSpec([None, None], tf.float32),
                "length": tf.TensorSpec([None], tf.int32)}

    def gather(self, batch, rows):
        """Rows of a batch, trimmed to their longest clip (as the folder path pads)."""
        length = tf.gather(batch["length"], rows)
        width = tf.maximum(tf.reduce_max(length), 1)
        return {"waveform": tf.gather(batch["waveform"], rows)[:, :width], "length": length}

    # --- TFRecords ------------------------------------------------------------------------
    def record_features(self, value, settings: Settings,
                        failed: dict[str, list[str]]) -> dict[str, tf.train.Feature]:
        audio, key, length = b"", b"", 0
        if value is not None:
            try:
                key = file_hash(value).encode()
                clip = load_audio(value, SAMPLE_RATE, settings["max_seconds"],
                                  **_limits(settings))
                audio, length = pcm16(clip), len(clip)
            except (MediaDecodeError, OSError):
                failed.setdefault(self.name, []).append(value)
        return {"audio": bytes_feature(audio), "audio_key": bytes_feature(key),
                "audio_length": int_feature(length), "audio_present": int_feature(bool(audio))}

    def record_bytes(self, settings: Settings) -> int:
        return 2 * record_samples(settings)

    def record_spec(self) -> dict[str, tf.io.FixedLenFeature]:
        return {"audio": tf.io.FixedLenFeature([], tf.string),
                "audio_key": tf.io.FixedLenFeature([], tf.string),
                "audio_present": tf.io.FixedLenFeature([], tf.int64),
                "audio_length": tf.io.FixedLenFeature([], tf.int64)}

    def parse_record(self, parsed: Mapping[str, tf.Tensor], settings: Settings
                     ) -> dict[str, Any]:
        samples = record_samples(settings)
        pcm = tf.io.decode_raw(parsed["audio"], tf.int16, fixed_length=2 * samples)
        length = tf.cast(parsed["audio_length"], tf.int32)
        return {"audio": {"waveform": tf.cast(pcm, tf.float32) / 32767.0, "length": length},
                "audio_key": parsed["audio_key"], "audio_present": parsed["audio_present"] > 0}

    # --- serving --------------------------------------------------------------------------
    def request_file(self, path: str | os.PathLike) -> bytes:
        """The clip as the ``query_audio`` signature takes it: a 16-bit PCM WAV file as it is;
        any other format the catalogue accepts (FLAC, Ogg, MP3, 8-bit or ADPCM WAV: whatever
        libsndfile reads) decoded as ``train`` and ``catalog add`` decode it, to mono at
        :data:`SAMPLE_RATE`, and sent as 16-bit PCM WAV, so the model hears what it would
        offline. The in-graph decoder reads 16-bit PCM WAV only (``tf.audio.decode_wav``)."""
        data = super().request_file(path)
        if is_pcm16_wav(data):
            return data
        try:  # the serving limits' defaults: the client cannot know a server's own
            clip = load_audio_bytes(data, SAMPLE_RATE, source=os.fspath(path), **_limits({}))
        except MediaDecodeError as exc:
            raise ServingError(str(exc)) from None
        return pcm16_wav(clip, SAMPLE_RATE)

    def decode_request(self, request: tf.Tensor, settings: Settings,
                       limits: ServingLimitsConfig) -> dict[str, tf.Tensor]:
        max_samples = int(settings["max_seconds"] * SAMPLE_RATE)

        def decode_clip(wav_bytes):
            clip = decode_wav(wav_bytes, SAMPLE_RATE, max_samples,
                              rate_range=(limits.min_sample_rate, limits.max_sample_rate),
                              max_seconds=limits.max_audio_seconds)
            length = tf.shape(clip)[0]
            tf.debugging.assert_greater(length, 0, message="audio clip is empty")
            return tf.pad(clip, [[0, max_samples - length]]), length

        waveforms = tf.map_fn(decode_clip, request, fn_output_signature=(
            tf.TensorSpec([max_samples], tf.float32), tf.TensorSpec([], tf.int32)))
        return {"waveform": waveforms[0], "length": waveforms[1]}

    def warmup_sample(self) -> np.ndarray:
        # dtype=object: numpy's fixed-width bytes dtype strips trailing NULs (a silent WAV's).
        return np.array([tf.audio.encode_wav(tf.zeros([8000, 1]), SAMPLE_RATE).numpy()],
                        dtype=object)

    def placeholder(self) -> bytes:
        return tf.audio.encode_wav(tf.zeros([160, 1]), SAMPLE_RATE).numpy()


def _limits(settings: Settings) -> dict[str, Any]:
    """The audio loaders' limit arguments under ``settings`` (``export.limits``)."""
    limits = decode_limits(settings)
    return {"max_sample_rate": limits.max_sample_rate,
            "max_audio_seconds": limits.max_audio_seconds}


def is_pcm16_wav(data: bytes) -> bool:
    """Whether ``data`` is what the export's in-graph decoder reads: a plain 16-bit PCM WAV
    (not WAVE_FORMAT_EXTENSIBLE, which libsndfile calls WAVEX). Bytes libsndfile cannot
    open are not one either."""
    try:
        info = soundfile.info(io.BytesIO(data))
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError):
        return False
    return info.format == "WAV" and info.subtype == "PCM_16"


def pcm16(clip: np.ndarray) -> bytes:
    """A float waveform in [-1, 1] as little-endian int16 samples (TFRecords, requests)."""
    return np.round(np.clip(clip, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def pcm16_wav(clip: np.ndarray, sample_rate: int) -> bytes:
    """A mono float waveform as the bytes of a 16-bit PCM WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm16(clip))
    return buffer.getvalue()


def record_samples(settings: Settings) -> int:
    """Samples a TFRecord keeps per clip (the longest clip ``max_seconds`` allows)."""
    return max(1, round(settings["max_seconds"] * settings["sample_rate"]))


def pad_waveforms(waveforms: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Zero-pad clips to one length; ``length`` keeps padding out of pooled features."""
    length = np.array([len(w) for w in waveforms], np.int32)
    batch = np.zeros((len(waveforms), max(int(length.max()), 1)), np.float32)
    for row, clip in enumerate(waveforms):
        batch[row, : len(clip)] = clip
    return {"waveform": batch, "length": length}
