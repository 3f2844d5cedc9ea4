"""Tests for tfmmrec.beam.prepare: the Beam pipeline writes the local path's exact records."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
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


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden ones included) and its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def finished(tiny_config, tiny_workspace, tmp_path_factory) -> Path:
    """A finished local ``prepare`` at the default shard count of one worker."""
    out = tmp_path_factory.mktemp("finished") / "records"
    tfrecords.write_tfrecords(tiny_config, out, dataset=tiny_workspace.dataset, workers=1,
                              progress=False)
    return out


@pytest.mark.parametrize(("runner", "flags", "says"), [
    ("NopeRunner", (), r"--runner NopeRunner: unknown Beam runner; choose one of "
                       r"DataflowRunner, .*FlinkRunner, .*SparkRunner, .*local"),
    ("DirectRunner", ("--direct_num_workers=abc",),
     r"--runner DirectRunner: bad Beam pipeline option: .*direct_num_workers.*'abc'"),
    # a misspelt flag: Beam only logs it, and the job ran without it
    ("DirectRunner", ("--direct_num_wrkers=1",),
     r"--runner DirectRunner: unknown Beam pipeline option\(s\) --direct_num_wrkers=1"),
])
def test_a_bad_runner_or_flag_leaves_a_finished_output_byte_for_byte(
        finished, tiny_config, tmp_path, capsys, runner, flags, says):
    from tests.conftest import derive_config
    from tfmmrec import cli

    config = derive_config(tiny_config, tmp_path)
    config.to_yaml(tmp_path / "config.yaml")
    before = snapshot(finished)
    code = cli.main(["-q", "prepare", "--config", str(tmp_path / "config.yaml"), "--output",
                     str(finished), "--runner", runner, *flags])
    assert code == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert re.fullmatch(f"error: {says}.*\n", err), err  # one line, no Beam traceback
    assert "finished shards are kept" not in err
    assert snapshot(finished) == before


def test_beam_recognises_a_finished_output_sharded_for_another_worker_count(
        finished, tiny_config, tiny_workspace):
    """The default shard count follows the workers (here 1 locally, 2 on Beam), which is not
    content: the finished output is kept, not judged "different settings" and rewritten."""
    before = snapshot(finished)
    again = beam_prepare.prepare(tiny_config, finished, runner="FnApiRunner",
                                 dataset=tiny_workspace.dataset, workers=2)
    assert snapshot(finished) == before
    assert again.shards == tfrecords.load_manifest(finished).shards


def test_a_failed_beam_run_keeps_a_finished_output_of_other_settings(
        tiny_config, tiny_workspace, local, monkeypatch):
    """"finished shards are kept" is true: the old output stays whole and readable until the
    new one is complete, and the new run's finished shards are kept for the next run."""
    from tfmmrec.config import load_config
    from tfmmrec.errors import DataError

    out = Path(local.directory).parent / "replaced"
    shutil.copytree(local.directory, out)
    before = snapshot(out)
    bigger = load_config(tiny_config, ["image.image_size=40"])
    write, calls = beam_prepare.WriteShardFn.run, []

    def fail_the_last_job(self, job):  # 3 shards per table: 9 jobs, in the runner's order
        calls.append(job["file"])
        if len(calls) == 9:
            raise RuntimeError("worker lost")
        return write(self, job)

    monkeypatch.setattr(beam_prepare.WriteShardFn, "run", fail_the_last_job)
    with pytest.raises(DataError, match=r"worker lost.*; finished shards are kept"):
        beam_prepare.prepare(bigger, out, runner="FnApiRunner", dataset=tiny_workspace.dataset,
                             workers=1, shards=3)
    assert {k: v for k, v in snapshot(out).items()
            if not k.startswith(tfrecords.REPLACEMENT)} == before
    assert tfrecords.load_manifest(out).image_size == 32
    new = out / tfrecords.REPLACEMENT
    kept = {name: (new / name).stat().st_mtime_ns for name in calls[:8]}
    monkeypatch.setattr(beam_prepare.WriteShardFn, "run", write)
    manifest = beam_prepare.prepare(bigger, out, runner="FnApiRunner",
                                    dataset=tiny_workspace.dataset, workers=1, shards=3)
    assert manifest.image_size == 40 and tfrecords.load_manifest(out).image_size == 40
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_beam_prepare_rewrites_a_damaged_shard(tiny_config, tiny_workspace, local, tmp_path):
    out = tmp_path / "records"
    shutil.copytree(local.directory, out)
    shard = out / "items-00002-of-00003.tfrecord"
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0x01
    shard.write_bytes(bytes(content))
    again = beam_prepare.prepare(tiny_config, out, runner="FnApiRunner",
                                 dataset=tiny_workspace.dataset, workers=1, shards=3)
    assert shard.read_bytes() == Path(local.files("items")[2]).read_bytes()
    assert again.shards == local.shards


def test_a_mistyped_runner_is_reported_before_the_data_is_loaded(tiny_config, tmp_path, capsys,
                                                                 monkeypatch):
    from tests.conftest import derive_config
    from tfmmrec import cli, pipeline

    config = derive_config(tiny_config, tmp_path)
    config.to_yaml(tmp_path / "config.yaml")
    monkeypatch.setattr(pipeline, "resolve_dataset",
                        lambda *a: pytest.fail("the dataset was loaded before the runner"))
    code = cli.main(["-q", "prepare", "--config", str(tmp_path / "config.yaml"), "--output",
                     str(tmp_path / "records"), "--runner", "DataflowRuner"])
    assert code == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: --runner DataflowRuner: unknown Beam runner; [^\n]*\n", err)
    assert not (tmp_path / "records").exists()


KILL_BEAM_DRIVER = """
    import os, signal, sys
    import tfmmrec  # noqa: F401
    from tfmmrec.beam import prepare as beam_prepare, runner
    from tfmmrec.config import load_config

    def killed(*args, **kwargs):  # the driver dies once it has staged its jobs
        os.kill(os.getpid(), signal.SIGKILL)

    runner.beam.Pipeline = killed
    beam_prepare.prepare(load_config(sys.argv[1]), sys.argv[2], runner="FnApiRunner",
                         workers=1, shards=2)
"""


def test_a_successful_run_removes_the_staging_a_killed_driver_left(tiny_config, tiny_workspace,
                                                                   tmp_path):
    from tests.conftest import REPO
    from tfmmrec.files import writer_token

    tiny_config.to_yaml(tmp_path / "config.yaml")
    out = tmp_path / "records"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_BEAM_DRIVER),
                             str(tmp_path / "config.yaml"), str(out)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    [stale] = (out / ".beam-jobs").iterdir()
    assert list(stale.glob("job-*.json"))
    live = subprocess.Popen(["sleep", "300"])  # stands for a driver still running
    in_use = out / ".beam-jobs" / f"{live.pid}.{writer_token()}0123abcd"
    in_use.mkdir()
    try:
        beam_prepare.prepare(tiny_config, out, runner="FnApiRunner",
                             dataset=tiny_workspace.dataset, workers=1, shards=2)
        assert [p.name for p in (out / ".beam-jobs").iterdir()] == [in_use.name]
    finally:
        live.kill()
        live.wait()
