"""The one atomic writer: readers see the old file or the new, never a mix; JSON is strict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tfmmrec.files import atomic_path, atomic_write, write_json


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "a" / "b.txt"
    atomic_write(path, "one")
    atomic_write(path, b"two")
    atomic_write(path, lambda f: f.write(b"three"))
    assert path.read_text() == "three"
    assert leftovers(path.parent) == []


def test_a_failing_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "keep.txt"
    atomic_write(path, "old")

    def half_then_fail(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_json_is_strict_nan_and_inf_become_null(tmp_path):
    path = write_json({"loss": [1.0, float("nan"), np.float32(np.inf)], "n": np.int64(3),
                       "p": tmp_path}, tmp_path / "run.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    # the strictest reader: refuse the non-standard tokens outright
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert data == {"loss": [1.0, None, None], "n": 3, "p": str(tmp_path)}
    assert not any(isinstance(v, float) and math.isnan(v) for v in data["loss"])


def test_json_that_cannot_be_converted_fails_before_touching_the_file(tmp_path):
    path = write_json({"v": 1}, tmp_path / "x.json")
    with pytest.raises(TypeError, match=r"\$\.bad\[0\]"):
        write_json({"v": 2, "bad": [object()]}, path)
    assert json.loads(path.read_text()) == {"v": 1}


def test_a_directory_is_published_whole_or_not_at_all(tmp_path):
    final = tmp_path / "models" / "1"
    with pytest.raises(RuntimeError), atomic_path(final, directory=True) as tmp:
        Path(tmp).mkdir()
        (Path(tmp) / "part").write_text("x")
        raise RuntimeError("export failed half way")
    assert not final.exists() and list(final.parent.iterdir()) == []
    with atomic_path(final, directory=True) as tmp:
        Path(tmp).mkdir()
        (Path(tmp) / "saved_model.pb").write_bytes(b"pb")
    assert (final / "saved_model.pb").read_bytes() == b"pb"
    with pytest.raises(OSError), atomic_path(final, directory=True) as tmp:  # immutable
        Path(tmp).mkdir()
        (Path(tmp) / "other").write_text("y")
    assert sorted(p.name for p in final.iterdir()) == ["saved_model.pb"]
    assert [p.name for p in final.parent.iterdir()] == ["1"]
