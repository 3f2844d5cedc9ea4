"""Tests for tfmmrec.beam.prepare: the Beam pipeline writes the local path's exact records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("apache_beam")

from tfmmrec.beam import prepare as beam_prepare
from tfmmrec.data import tfrecords

# Beam's Python runner with two worker processes (DirectRunner would first try to download Prism).
TWO_WORKERS = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")


def raw_records(path: str) -> list[bytes]:
    import tensorflow as tf

    return list(tf.data.TFRecordDataset(path).as_numpy_iterator())


@pytest.fixture(scope="module")
def local(tiny_config, tiny_workspace, tmp_path_factory) -> tfrecords.Manifest:
    return tfrecords.write_tfrecords(tiny_config, tmp_path_factory.mktemp("local") / "records",
                                     dataset=tiny_workspace.dataset, workers=1, shards=3,
                                     progress=False)


@pytest.fixture(scope="module")
def on_beam(tiny_config, tiny_workspace, tmp_path_factory) -> tfrecords.Manifest:
    return beam_prepare.prepare(tiny_config, tmp_path_factory.mktemp("beam") / "records",
                                runner="FnApiRunner", beam_args=TWO_WORKERS,
                                dataset=tiny_workspace.dataset, workers=2, shards=3)


def test_beam_writes_the_local_paths_records_byte_for_byte(local, on_beam):
    for table in tfrecords.TABLES:
        beam_files, local_files = on_beam.files(table), local.files(table)
        assert [Path(f).name for f in beam_files] == [Path(f).name for f in local_files]
        for a, b in zip(beam_files, local_files, strict=True):
            assert raw_records(a) == raw_records(b)
    assert on_beam.count("items") == 80 and on_beam.count("train") == local.count("train")


def test_beam_writes_the_same_manifest_and_leaves_no_staging(local, on_beam):
    manifest = json.loads((Path(on_beam.directory) / "manifest.json").read_text())
    assert manifest == json.loads((Path(local.directory) / "manifest.json").read_text())
    leftovers = [p.name for p in Path(on_beam.directory).iterdir() if p.name.startswith(".")]
    assert leftovers == []
    tfrecords.load_manifest(on_beam.directory)  # readable by training


def test_beam_prepare_resumes_keeping_finished_shards(tiny_config, tiny_workspace, local,
                                                      tmp_path):
    out = tmp_path / "records"
    first = beam_prepare.prepare(tiny_config, out, runner="FnApiRunner",
                                 dataset=tiny_workspace.dataset, workers=1, shards=3)
    lost = Path(first.files("items")[1])
    lost.unlink()
    kept = {f: Path(f).stat().st_mtime_ns for t in tfrecords.TABLES for f in first.files(t)
            if f != str(lost)}
    (out / "manifest.json").unlink()
    again = beam_prepare.prepare(tiny_config, out, runner="DirectRunner",
                                 dataset=tiny_workspace.dataset, workers=1, shards=3)
    assert {f: Path(f).stat().st_mtime_ns for f in kept} == kept
    assert raw_records(str(lost)) == raw_records(local.files("items")[1])
    assert again.shards == first.shards
