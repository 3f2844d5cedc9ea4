"""The version writer: one version scanner, atomic versions, stale temp folders cleaned."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import tensorflow as tf

from tfmmrec.errors import ExportError
from tfmmrec.export.loader import latest_version
from tfmmrec.export.writer import (
    PUBLISHED_FILE,
    list_versions,
    next_version,
    remove_stale_temp_dirs,
    write_version,
)
from tfmmrec.files import writer_token
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
    here = writer_token()  # this machine and PID namespace: its pids can be checked
    # The names tfmmrec.files.atomic_path gives: .<version>.<pid>.<token + 8 hex>.tmp
    stale = tmp_path / f".7.{dead_pid()}.{here}0a1b2c3d.tmp"
    live = tmp_path / f".8.1.{here}0a1b2c3d.tmp"  # pid 1 is alive: an export in progress
    mine = tmp_path / f".9.{os.getpid()}.{here}0a1b2c3d.tmp"
    reused = tmp_path / f".10.1.{here}0a1b2c3d.tmp"  # pid 1 is alive, but the folder is old
    # Another container's or machine's writer: its pid means nothing here, only age counts.
    elsewhere = tmp_path / f".11.{dead_pid()}.{other_token(here)}0a1b2c3d.tmp"
    elsewhere_old = tmp_path / f".12.{dead_pid()}.{other_token(here)}0a1b2c3d.tmp"
    # Older releases' names (no token): by age as well.
    legacy = tmp_path / f".tmp-3-{dead_pid()}-{int(time.time())}"
    legacy_old = tmp_path / f".tmp-4-1-{int(time.time())}"
    unrelated = tmp_path / ".cache"
    folders = (stale, live, mine, reused, elsewhere, elsewhere_old, legacy, legacy_old,
               unrelated)
    for folder in folders:
        folder.mkdir()
    for folder in (reused, elsewhere_old, legacy_old):
        os.utime(folder, (time.time() - 2 * 86_400,) * 2)
    removed = [stale, reused, elsewhere_old, legacy_old]
    assert sorted(remove_stale_temp_dirs(tmp_path)) == sorted(removed)
    assert all(folder.is_dir() == (folder not in removed) for folder in folders)


def other_token(token: str) -> str:
    return format(int(token, 16) ^ 0xFFFFFFFF, "08x")


def test_a_temp_folder_removed_mid_write_is_never_published(tmp_path, monkeypatch):
    """Another process removing the temp folder while the version is written (e.g. a writer
    in another PID namespace judging it stale): the saves after that recreate only part of
    it, which must not be renamed into place as a version."""
    real_save = tf.saved_model.save

    def save_then_lose_the_folder(module, path, **kwargs):
        real_save(module, path, **kwargs)
        shutil.rmtree(path)
        Path(path, "assets.extra").mkdir(parents=True)  # what a later save recreates

    monkeypatch.setattr(tf.saved_model, "save", save_then_lose_the_folder)
    with pytest.raises(ExportError, match=r"lost saved_model\.pb.*nothing was published"):
        write_version(Tiny(), tmp_path, "m", None, {"index": "none"}, uses_scann=False)
    assert list_versions(tmp_path / "m") == []


def test_next_export_cleans_up_after_a_killed_one(tmp_path):
    model_dir = tmp_path / "m"
    stale = model_dir / f".1.{dead_pid()}.{writer_token()}deadbeef.tmp"
    (stale / "variables").mkdir(parents=True)
    path = write_version(Tiny(), tmp_path, "m", None, {"index": "none"}, uses_scann=False)
    assert path == model_dir / "1"
    assert sorted(p.name for p in model_dir.iterdir()) == [PUBLISHED_FILE, "1"]


def test_a_rolled_back_version_number_is_never_published_again(tmp_path):
    """Rolling back as TF Serving users do (deleting the newest folder) gave the next export
    the deleted number: a client pinned to it got another catalogue under the same version."""
    def export(version=None):
        return write_version(Tiny(), tmp_path, "m", version, {"index": "none"},
                             uses_scann=False).name

    assert [export(), export()] == ["1", "2"]
    shutil.rmtree(tmp_path / "m" / "2")  # the rollback
    assert list_versions(tmp_path / "m") == [1] and next_version(tmp_path / "m") == 3
    assert export() == "3"
    shutil.rmtree(tmp_path / "m" / "3")
    with pytest.raises(ExportError, match=r"^export\.version=3: version 3 was published under "
                                          r".* before and has been removed \(the highest "
                                          r"published: 3"):
        export(3)
    assert export(5) == "5" and export() == "6"
    assert (tmp_path / "m" / PUBLISHED_FILE).read_text() == "6\n"



def test_the_mark_covers_older_folders_a_crash_before_the_rename_and_concurrent_writers(
        tmp_path):
    """A review: folders exported before the mark (none recorded) and a writer dying between
    its rename and its note both let a deleted number come back; two writers noting at once
    could lower the mark."""
    import threading

    from tfmmrec.export.writer import note_published, published_version

    model_dir = tmp_path / "m"
    for version in (1, 2, 3):  # an older release's export: no mark
        (model_dir / str(version)).mkdir(parents=True)
    assert published_version(model_dir) == 0
    assert write_version(Tiny(), tmp_path, "m", None, {"index": "none"},
                         uses_scann=False).name == "4"
    shutil.rmtree(model_dir / "4")
    shutil.rmtree(model_dir / "3")
    assert next_version(model_dir) == 5  # 3 was seen by the export, 4 noted before its rename
    note_published(model_dir, 7)  # a writer that noted 7 and died before renaming it in
    assert next_version(model_dir) == 8
    threads = [threading.Thread(target=note_published, args=(model_dir, v))
               for v in (9, 30, 12, 25, 8, 29, 10, 11)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert published_version(model_dir) == 30
    (model_dir / PUBLISHED_FILE).write_text("garbage")
    assert published_version(model_dir) == 0 and next_version(model_dir) == 3


def test_a_file_system_refusing_locks_still_exports(tmp_path, monkeypatch):
    """Some NFS and FUSE mounts refuse flock (ENOLCK): an export there must not fail on the
    version mark's lock."""
    import errno
    import fcntl

    def refuse(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    assert write_version(Tiny(), tmp_path, "m", None, {"index": "none"},
                         uses_scann=False).name == "1"
    assert (tmp_path / "m" / PUBLISHED_FILE).read_text() == "1\n"

