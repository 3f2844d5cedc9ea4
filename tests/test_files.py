"""The one atomic writer: readers see the old file or the new, never a mix; JSON is strict."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tfmmrec.files import (
    atomic_path,
    atomic_write,
    remove_stale_temps,
    write_json,
    writer_token,
)


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


def test_a_named_pipe_is_written_to_not_replaced_by_a_file(tmp_path):
    """As /dev/null or /dev/stdout would be: renaming over one (as root) replaces the device."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_bytes()), daemon=True)
    reader.start()
    atomic_write(pipe, "through the pipe")
    reader.join(timeout=10)
    assert received == [b"through the pipe"]
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


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


def test_replace_publishes_a_new_directory_over_an_old_one(tmp_path):
    final = tmp_path / "demo"
    with atomic_path(final, directory=True) as tmp:
        Path(tmp).mkdir()
        (Path(tmp) / "old").write_text("1")
    with pytest.raises(RuntimeError), atomic_path(final, directory=True, replace=True) as tmp:
        Path(tmp).mkdir()
        raise RuntimeError("build failed")
    assert [p.name for p in final.iterdir()] == ["old"]  # a failed build leaves the old one
    with atomic_path(final, directory=True, replace=True) as tmp:
        Path(tmp).mkdir()
        (Path(tmp) / "new").write_text("2")
    assert [p.name for p in final.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # the old one is gone, no temp
    with pytest.raises(ValueError, match="directory=True"), atomic_path(tmp_path / "f",
                                                                        replace=True):
        pass


def test_replace_puts_the_old_directory_back_when_the_new_cannot_be_renamed_in(tmp_path,
                                                                               monkeypatch):
    final = tmp_path / "demo"
    final.mkdir()
    (final / "old").write_text("1")
    real_rename = os.rename

    def refuse_the_new_one(src, dst):
        if os.fspath(dst) == os.fspath(final) and "old" not in os.listdir(src):
            raise OSError(39, "Directory not empty")  # as if another writer published first
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", refuse_the_new_one)
    with pytest.raises(OSError), atomic_path(final, directory=True, replace=True) as tmp:
        Path(tmp).mkdir()
        (Path(tmp) / "new").write_text("2")
    assert [p.name for p in final.iterdir()] == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_remove_stale_temps_removes_only_dead_writers_temps(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    crashed = tmp_path / f".demo.{dead.pid}.{writer_token()}abcd1234.tmp"
    live = tmp_path / f".demo.1.{writer_token()}abcd1234.tmp"  # pid 1 is alive: a build
    other = tmp_path / f".demos.{dead.pid}.{writer_token()}abcd1234.tmp"  # another path's temp
    for path in (crashed, live, other):
        path.mkdir()
        (path / "items.csv").write_text("junk")
    assert remove_stale_temps(tmp_path / "demo") == [crashed]
    assert not crashed.exists() and live.exists() and other.exists()


def test_process_alive_never_signals_on_windows(monkeypatch):
    """``os.kill(pid, 0)`` terminates the process on Windows: psutil is asked there."""
    import types

    from tfmmrec import files

    asked = []
    fake = types.SimpleNamespace(pid_exists=lambda pid: asked.append(pid) or pid == 7)
    monkeypatch.setitem(sys.modules, "psutil", fake)
    monkeypatch.setattr(files.os, "name", "nt")
    monkeypatch.setattr(files.os, "kill", lambda *a: pytest.fail("os.kill on Windows"))
    assert files.process_alive(7) and not files.process_alive(8)
    assert asked == [7, 8]
