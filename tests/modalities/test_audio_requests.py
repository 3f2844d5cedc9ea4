"""``query_audio`` requests from files: what the catalogue accepts, the client can send.

The served signature decodes 16-bit PCM WAV only (``tf.audio.decode_wav``), while ``train`` and
``catalog add`` read whatever libsndfile reads. A client given a path (``tfmmrec query --audio
FILE``, ``ServingClient.query``) sends a 16-bit PCM WAV as it is and decodes anything else as the
offline path does (mono, 16 kHz), sending it as 16-bit PCM WAV; bytes a caller passes are sent
untouched. The real clips (FLAC, Ogg, MP3, 8-bit and ADPCM WAV) come from
../shared/data/audio-samples when it exists; the generated 8-bit WAV always runs.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import SHARED
from tfmmrec import modalities
from tfmmrec.data.media import load_audio
from tfmmrec.errors import ServingError
from tfmmrec.modalities.audio import SAMPLE_RATE, is_pcm16_wav

SAMPLES = SHARED / "data" / "audio-samples"
REAL_CLIPS = sorted(p.name for p in SAMPLES.glob("*") if p.suffix != ".md") \
    if SAMPLES.is_dir() else []
# int16 quantisation: round(x * 32767) read back as / 32768
QUANTISATION = 1e-4


def write_wav(path: Path, samples: np.ndarray, rate: int, width: int) -> Path:
    """A PCM WAV with the stdlib: ``width`` bytes per sample, ``samples`` [T, C] of ints."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(samples.shape[1])
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(samples.astype({1: np.uint8, 2: "<i2"}[width]).tobytes())
    return path


def chirp(frames: int, rate: int) -> np.ndarray:
    time = np.arange(frames) / rate
    return np.sin(2 * np.pi * (200 + 800 * time) * time)


@pytest.fixture
def eight_bit_wav(tmp_path) -> Path:
    """Stereo unsigned 8-bit PCM at 11,025 Hz (pygame's examples are such files)."""
    left, right = chirp(5000, 11025), 0.5 * chirp(5000, 11025)[::-1]
    samples = np.round(np.stack([left, right], axis=1) * 100 + 128)
    return write_wav(tmp_path / "clip8.wav", samples, 11025, width=1)


def sent_clip(request: bytes) -> np.ndarray:
    """The request as the export's decoder reads it: must be 16-bit PCM WAV, mono, 16 kHz."""
    waveform, rate = tf.audio.decode_wav(request)
    assert int(rate) == SAMPLE_RATE and waveform.shape[1] == 1
    return waveform.numpy()[:, 0]


def test_an_8_bit_wav_is_sent_as_the_16_khz_mono_pcm16_wav_training_would_hear(eight_bit_wav):
    request = modalities.get("audio").request_values(eight_bit_wav)
    assert request.dtype == object and len(request) == 1
    assert is_pcm16_wav(request[0]) and not is_pcm16_wav(eight_bit_wav.read_bytes())
    offline = load_audio(eight_bit_wav, SAMPLE_RATE)  # as train / catalog add decode it
    np.testing.assert_allclose(sent_clip(request[0]), offline, atol=QUANTISATION)


def test_a_16_bit_wav_file_and_bytes_given_directly_are_sent_unchanged(tmp_path,
                                                                        eight_bit_wav):
    samples = np.round(chirp(4000, 22050) * 20000)[:, None]
    pcm16 = write_wav(tmp_path / "clip16.wav", samples, 22050, width=2)
    eight_bits = eight_bit_wav.read_bytes()
    request = modalities.get("audio").request_values([pcm16, str(pcm16), eight_bits])
    assert request.tolist() == [pcm16.read_bytes(), pcm16.read_bytes(), eight_bits]


def test_a_file_no_decoder_reads_is_one_line_naming_it(tmp_path):
    (tmp_path / "notes.wav").write_text("not audio at all")
    with pytest.raises(ServingError, match=r"^cannot decode audio — .*notes\.wav \(") as raised:
        modalities.get("audio").request_values(tmp_path / "notes.wav")
    assert "\n" not in str(raised.value)


@pytest.mark.needs_shared
@pytest.mark.skipif(not REAL_CLIPS, reason=f"needs ../shared ({SAMPLES} not found)")
@pytest.mark.parametrize("name", REAL_CLIPS)
def test_every_format_the_catalogue_accepts_is_sent_as_training_would_hear_it(name):
    """FLAC, Ogg Vorbis, MP3, 8-bit unsigned and MS-ADPCM WAV, 11-44 kHz, mono and stereo."""
    path = SAMPLES / name
    request = modalities.get("audio").request_values(path)[0]
    np.testing.assert_allclose(sent_clip(request), load_audio(path, SAMPLE_RATE),
                               atol=QUANTISATION)


def test_the_request_wav_header_is_plain_pcm(eight_bit_wav):
    """``tf.audio.decode_wav`` takes a 16- or 18-byte ``fmt`` chunk of format 1 (PCM) only."""
    request = modalities.get("audio").request_values(eight_bit_wav)[0]
    with wave.open(io.BytesIO(request)) as clip:
        assert (clip.getnchannels(), clip.getsampwidth(), clip.getframerate(),
                clip.getcomptype()) == (1, 2, SAMPLE_RATE, "NONE")
