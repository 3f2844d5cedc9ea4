"""Tests for tfmmrec.data.validate.check_media: ``tfmmrec validate``'s header-level media check."""

from __future__ import annotations

import logging

from tests.data.folders import make_folder
from tests.data.test_media_limits import write_huge_png
from tfmmrec.config import DataConfig
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
