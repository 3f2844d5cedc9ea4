"""The image/audio modalities apply the offline decoders' limits on every path: ``load`` (encoder
cache, ``catalog add``), ``record_features`` (``tfmmrec prepare``) and ``check_file`` (validate)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from tests.data.test_media_limits import write_huge_png
from tfmmrec import modalities
from tfmmrec.errors import MediaDecodeError

SETTINGS = modalities.resolve_settings({"image_size": 16, "max_seconds": 0.5})


def test_oversized_image_is_an_undecodable_file_for_every_image_path(tmp_path):
    spec = modalities.get("image")
    path = write_huge_png(tmp_path / "huge.png")
    for check in (spec.load, spec.check_file):
        with pytest.raises(MediaDecodeError, match=r"huge\.png.*decoding limit"):
            check(path, SETTINGS)
    failed: dict[str, list[str]] = {}
    features = spec.record_features(str(path), SETTINGS, failed)
    assert failed == {"image": [str(path)]}
    assert features["image_present"].int64_list.value == [0]


def test_audio_over_the_rate_limit_is_undecodable_and_long_audio_is_cropped(tmp_path):
    spec = modalities.get("audio")
    fast = tmp_path / "fast.wav"
    soundfile.write(fast, np.zeros((64, 1), np.int16), 384000, format="WAV")
    for check in (spec.load, spec.check_file):
        with pytest.raises(MediaDecodeError, match=r"fast\.wav.*max_sample_rate=192000"):
            check(fast, SETTINGS)
    failed: dict[str, list[str]] = {}
    spec.record_features(str(fast), SETTINGS, failed)
    assert failed == {"audio": [str(fast)]}

    long = tmp_path / "long.flac"
    soundfile.write(long, np.zeros((48000 * 3, 2), np.int16), 48000, format="FLAC")
    spec.check_file(long, SETTINGS)
    assert spec.load(long, SETTINGS).shape == (8000,)
    failed = {}
    features = spec.record_features(str(long), SETTINGS, failed)
    assert failed == {} and features["audio_length"].int64_list.value == [8000]
