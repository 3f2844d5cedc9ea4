"""The image/audio modalities apply the offline decoders' limits on every path: ``load`` (encoder
cache, ``catalog add``), ``record_features`` (``tfmmrec prepare``) and ``check_file`` (validate)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from tests.conftest import TINY_TOWERS
from tests.data.folders import make_folder
from tests.data.test_media_limits import write_huge_png
from tfmmrec import modalities, pipeline
from tfmmrec.config import load_config
from tfmmrec.data import media
from tfmmrec.errors import DataError, MediaDecodeError, ServingError
from tfmmrec.modalities.base import MAX_REQUEST_FILE_BYTES

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


# --- export.limits reach the catalogue encoding (``pipeline.prepare``: the encoder cache) ------


def _prepare(root: Path, modality: str, *overrides: str):
    """``pipeline.prepare`` of ``root`` with only ``modality``'s tower, its cache in ``root``."""
    off = [f"{name}.enabled=false" for name in ("text", "image", "audio") if name != modality]
    config = load_config(None, [*TINY_TOWERS, f"data.path={root}", *off,
                                f"train.cache_dir={root / 'cache'}", *overrides])
    return pipeline.prepare(config, progress=False).contents[modality].mask.tolist()


def test_a_lowered_image_limit_refuses_a_poster_just_over_it_without_decoding_it(
        tmp_path, monkeypatch):
    """``export.limits.max_image_pixels=100``: 4 x 100 pixels decode offline, so the 20 x 20
    poster is encoded and the 21 x 20 one is refused from its header; back at the default
    limits, the same cache encodes it."""
    root = make_folder(tmp_path / "d")
    for name, width in (("i1", 20), ("i2", 21)):
        pixels = np.random.default_rng(0).integers(0, 256, (20, width, 3), np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{name}.png")
    decoded = []
    decode = media.decode_image
    monkeypatch.setattr(media, "decode_image",
                        lambda *args, **kwargs: decoded.append(1) or decode(*args, **kwargs))
    assert _prepare(root, "image", "export.limits.max_image_pixels=100") == [True, False, False]
    assert len(decoded) == 1
    assert _prepare(root, "image") == [True, True, False]


def test_a_raised_sample_rate_limit_lets_a_faster_clip_be_encoded(tmp_path):
    root = make_folder(tmp_path / "d")
    soundfile.write(root / "audio" / "i1.wav", np.zeros((640, 1), np.int16), 384000,
                    format="WAV")
    assert _prepare(root, "audio") == [False, True, True]  # over the default 192 kHz
    assert _prepare(root, "audio", "export.limits.max_sample_rate=384000") == [True, True, True]


def test_a_media_path_the_os_cannot_look_up_is_a_missing_file(tmp_path, caplog):
    """A name part over 255 bytes raised OSError "File name too long" out of validate and
    train; it is a missing file like any other, named with its row."""
    import pandas as pd

    from tfmmrec.modalities.base import media_paths

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ok.png").write_bytes(b"x")
    frame = pd.DataFrame({"image": ["images/ok.png", "images/" + "a" * 300 + ".png"]})
    with caplog.at_level("WARNING"):
        paths = media_paths(frame, tmp_path, "image", "image", tmp_path / "items.csv")
    assert paths == [tmp_path / "images" / "ok.png", None]
    assert "aaaa" in caplog.text and "missing" in caplog.text
    # every path of the column such a name: the error that names the folder looks it up too
    from tfmmrec.data.validate import require_resolved_media

    only = pd.DataFrame({"image": ["a" * 300 + ".png"]})
    with pytest.raises(DataError, match=r"none of the 1 image path\(s\)"):
        require_resolved_media(only, tmp_path / "items.csv", tmp_path, "image", "image", [None])


@pytest.mark.parametrize("name", ["image", "audio"])
def test_a_query_file_is_refused_before_it_is_read_when_no_request_could_carry_it(tmp_path,
                                                                                   name):
    """``query_image``/``query_audio`` (client and ``tfmmrec query``) read any file whole:
    /dev/zero ran the host out of memory and a named pipe blocked forever."""
    spec = modalities.get(name)
    os.mkfifo(tmp_path / "pipe")
    for path in ("/dev/zero", tmp_path / "pipe", tmp_path):
        with pytest.raises(ServingError, match=rf"^{path} is not a regular file \(a device, "
                                               rf"pipe or folder\): pass an {name} file$"):
            spec.request_file(path)
    big = tmp_path / "big.bin"
    with big.open("wb") as file:  # sparse: no disk used
        file.truncate(MAX_REQUEST_FILE_BYTES + 1)
    with pytest.raises(ServingError, match=rf"is 67,108,865 bytes, more than a request carries "
                                           rf"\(67,108,864\): pass a smaller {name} file"):
        spec.request_file(big)
    with pytest.raises(ServingError, match=r"cannot read .*nope\.bin: No such file or "
                                           r"directory — pass an existing"):
        spec.request_file(tmp_path / "nope.bin")
