"""Tests for tfmmrec.data.validate.check_media: ``tfmmrec validate``'s header-level media check."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from tests.data.folders import ITEMS, make_folder
from tests.data.test_media_limits import write_huge_png, write_noise_jpeg
from tfmmrec import modalities
from tfmmrec.config import DataConfig, load_config
from tfmmrec.data import media, validate
from tfmmrec.data.dataset import load_dataset


def _warnings(caplog) -> str:
    return " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_good_folder_has_no_media_problems(tmp_path, caplog):
    root = make_folder(tmp_path / "d")
    catalog = load_dataset(DataConfig(path=str(root))).catalog
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):
        assert validate.check_media(catalog, root / "items.csv") == {}
    assert _warnings(caplog) == ""


def test_truncated_oversized_and_undecodable_files_are_named_with_their_line(
        tmp_path, caplog, monkeypatch):
    root = make_folder(tmp_path / "d")
    png = root / "images" / "i1.png"
    png.write_bytes(png.read_bytes()[:60])  # header intact, image data cut
    write_huge_png(root / "images" / "i2.png")
    wav = root / "audio" / "i3.wav"
    wav.write_bytes(wav.read_bytes()[:30])
    catalog = load_dataset(DataConfig(path=str(root))).catalog
    assert catalog.presence("image").tolist() == [True, True, False]  # present until checked

    def refuse(*args, **kwargs):
        raise AssertionError("validate decoded media")

    monkeypatch.setattr(media, "decode_image", refuse)
    monkeypatch.setattr(media.soundfile, "read", refuse)
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):
        found = validate.check_media(catalog, root / "items.csv", {"max_seconds": 1.0})
    assert set(found) == {"image", "audio"}
    first, second = found["image"]
    assert first.startswith("items.csv line 2: cannot decode image") and "i1.png" in first
    assert second.startswith("items.csv line 3: image too large") and "i2.png" in second
    assert "decoding limit of 67,108,864" in second
    [clip] = found["audio"]
    assert clip.startswith("items.csv line 4: cannot decode audio") and "i3.wav" in clip
    warning = _warnings(caplog)
    assert "2 image file(s) undecodable or over the limits" in warning
    assert "1 audio file(s) undecodable or over the limits" in warning
    assert "items.csv line 3: image too large" in warning


def _noise_image(path: Path, width: int, height: int) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_tfmmrec_validate_names_a_truncated_jpeg_and_passes_the_intact_one(tmp_path, capsys,
                                                                           caplog):
    from tfmmrec import cli

    root = make_folder(tmp_path / "d", items=ITEMS.replace(".png", ".jpg"))
    intact = write_noise_jpeg(root / "images" / "i1.jpg")
    cut = write_noise_jpeg(root / "images" / "i2.jpg")
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):
        assert cli.main(["validate", "--set", f"data.path={root}"]) == 0
    assert "image: present for 2 items, 1 of them undecodable" in capsys.readouterr().out
    warning = _warnings(caplog)
    assert "1 image file(s) undecodable or over the limits" in warning
    assert (f"items.csv line 3: cannot decode image — {cut} (broken file: image file is "
            "truncated") in warning
    assert str(intact) not in warning


def test_an_unidentifiable_image_is_named_without_a_python_object_repr(tmp_path, caplog):
    """Pillow's message names its ``BytesIO`` (``<_io.BytesIO object at 0x…>``): noise to a
    user, so it is cut from the one line."""
    from tfmmrec import cli

    root = make_folder(tmp_path / "d")
    cut = _noise_image(root / "images" / "i2.png", 20, 20)
    cut.write_bytes(cut.read_bytes()[:40])
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):
        assert cli.main(["validate", "--set", f"data.path={root}"]) == 0
    warning = _warnings(caplog)
    assert f"cannot decode image — {cut} (broken file: cannot identify image file)" in warning
    assert "object at 0x" not in warning


def _limits_folder(root: Path) -> Path:
    """i1: a 20 x 20 poster (400 pixels), i2: 21 x 20 (420)."""
    make_folder(root)
    _noise_image(root / "images" / "i1.png", 20, 20)
    _noise_image(root / "images" / "i2.png", 21, 20)
    return root


def test_validate_applies_a_lowered_export_limit_without_reading_the_refused_file(
        tmp_path, capsys, caplog, monkeypatch):
    """``export.limits.max_image_pixels=100``: offline decoders take 4 x 100 pixels, so the
    20 x 20 poster passes and the 21 x 20 one is refused from its header."""
    from tfmmrec import cli

    root = _limits_folder(tmp_path / "d")
    read = []
    check_data = media._check_image_data
    monkeypatch.setattr(media, "_check_image_data",
                        lambda data, path: read.append(Path(path).name) or check_data(data, path))
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):
        assert cli.main(["validate", "--set", f"data.path={root}",
                         "--set", "export.limits.max_image_pixels=100"]) == 0
    assert "image: present for 2 items, 1 of them undecodable" in capsys.readouterr().out
    assert ("items.csv line 3: image too large — " f"{root / 'images' / 'i2.png'} declares "
            "21 x 20 = 420 pixels, over the decoding limit of 400") in _warnings(caplog)
    assert read == ["i1.png"]


def test_validate_applies_raised_and_audio_export_limits(tmp_path):
    root = make_folder(tmp_path / "d")
    write_huge_png(root / "images" / "i2.png")  # 81 Mpx: over the default 4 x 16.7 Mpx
    catalog = load_dataset(DataConfig(path=str(root))).catalog

    def refused(*overrides: str) -> dict[str, list[str]]:
        config = load_config(None, [f"data.path={root}", *overrides])
        found = validate.check_media(catalog, root / "items.csv",
                                     modalities.settings_from_config(config))
        return {name: [line.split(" — ")[0] for line in lines] for name, lines in found.items()}

    assert refused() == {"image": ["items.csv line 3: image too large"]}
    assert refused("export.limits.max_image_pixels=20250000") == {}  # 4 x it = 81 Mpx
    assert refused("export.limits.max_image_pixels=20250000", "export.limits.max_sample_rate=8000"
                   ) == {"audio": [f"items.csv line {n}: audio sample rate too high"
                                   for n in (2, 3, 4)]}


def test_catalogue_clips_below_the_served_models_minimum_rate_are_warned_about(tmp_path,
                                                                               caplog):
    """The served model refuses a query clip below ``export.limits.min_sample_rate``; a
    catalogue clip at that rate is encoded (not refused, not counted), but named."""
    from tests.data.folders import write_wav

    root = make_folder(tmp_path / "d")
    slow = write_wav(root / "audio" / "i2.wav", rate=4000)
    catalog = load_dataset(DataConfig(path=str(root))).catalog

    def check(*overrides: str) -> str:
        limits = load_config(None, [f"data.path={root}", *overrides]).export.limits
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tfmmrec"):
            assert validate.check_media(catalog, root / "items.csv", limits=limits) == {}
        return _warnings(caplog)

    assert check() == (f"1 audio file(s) below export.limits.min_sample_rate=8000 Hz: encoded "
                       "for the catalogue, but the served model refuses a query clip at that "
                       f"rate: {slow} (items.csv line 3: 4000 Hz)")
    assert check("export.limits.min_sample_rate=4000") == ""
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):  # the defaults' limit
        validate.check_media(catalog, root / "items.csv")
    assert "min_sample_rate=8000 Hz" in _warnings(caplog)
