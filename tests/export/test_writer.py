"""The version writer: one version scanner, atomic versions, stale temp folders cleaned."""

from __future__ import annotations

import os
import time

import tensorflow as tf

from tfmmrec.export.loader import latest_version
from tfmmrec.export.writer import (
    list_versions,
    next_version,
    remove_stale_temp_dirs,
    write_version,
)
from tfmmrec.serving import registry


class Tiny(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def double(self, x):
        return {"y": 2 * x}

    def signatures(self):
        return {"serving_default": self.double.get_concrete_function()}


def dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        pid -= 1


def test_one_scanner_for_writer_loader_and_server(tmp_path):
    for name in ("1", "10", "2", ".tmp-11-5-0", "abc", "3x", "0012"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    # "0012" would name a version whose folder is not "12": skipped, as are non-integers.
    assert list_versions(tmp_path) == [1, 2, 10]
    assert list_versions(tmp_path / "missing") == []
    assert registry.list_versions is list_versions  # the server uses the same function
    assert next_version(tmp_path) == 11
    assert latest_version(tmp_path) == tmp_path / "10"


def test_stale_temp_folders_of_killed_exports_are_removed_and_live_ones_kept(tmp_path):
    stale = tmp_path / f".tmp-3-{dead_pid()}-{int(time.time())}"
    old = tmp_path / f".tmp-4-1-{int(time.time())}"   # pid 1 is alive, but the folder is old
    live = tmp_path / f".tmp-5-1-{int(time.time())}"  # pid 1 is alive: an export in progress
    mine = tmp_path / f".tmp-6-{os.getpid()}-{int(time.time())}"
    # The names tfmmrec.files.atomic_path gives: .<version>.<pid>.<hex>.tmp
    stale_new = tmp_path / f".7.{dead_pid()}.0a1b2c3d.tmp"
    live_new = tmp_path / f".8.{os.getpid()}.0a1b2c3d.tmp"
    other = tmp_path / ".cache"
    for folder in (stale, old, live, mine, stale_new, live_new, other):
        folder.mkdir()
    os.utime(old, (time.time() - 2 * 86_400,) * 2)
    assert sorted(remove_stale_temp_dirs(tmp_path)) == sorted([stale, old, stale_new])
    assert live.is_dir() and mine.is_dir() and live_new.is_dir() and other.is_dir()


def test_next_export_cleans_up_after_a_killed_one(tmp_path):
    model_dir = tmp_path / "m"
    stale = model_dir / f".1.{dead_pid()}.deadbeef.tmp"
    (stale / "variables").mkdir(parents=True)
    path = write_version(Tiny(), tmp_path, "m", None, {"index": "none"}, uses_scann=False)
    assert path == model_dir / "1"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]
