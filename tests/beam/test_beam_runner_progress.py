"""Tests for tfmmrec.beam.runner's progress: the driver reports finished shard jobs while the
pipeline runs, not only when it ends."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("apache_beam")

from tfmmrec.beam import runner

# what the in-process workers saw the driver's counter at, when each job started
SEEN: list[int] = []
COUNTERS: list[Recorder] = []


class Recorder:
    """A ``tfmmrec.progress.counter`` stand-in that records the driver's updates."""

    def __init__(self, **kwargs):
        self.kwargs, self.done, self.closed = kwargs, 0, False
        self.changed = threading.Condition()

    def update(self, n: int = 1) -> None:
        with self.changed:
            self.done += n
            self.changed.notify_all()

    def close(self) -> None:
        self.closed = True


class WaitForTheDriver(runner.ShardJobFn):
    """Each job after the first waits (10 s at most) until the driver has counted every job
    finished before it: the run is sequential in the in-process FnApiRunner."""

    def run(self, job):
        bar = COUNTERS[-1]
        with bar.changed:
            bar.changed.wait_for(lambda: bar.done >= len(SEEN), timeout=10)
            SEEN.append(bar.done)
        return {"job": job["n"]}


def test_the_driver_counts_finished_shard_jobs_while_the_pipeline_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "POLL_SECONDS", 0.02)
    monkeypatch.setattr(runner, "counter", lambda **kw: COUNTERS.append(Recorder(**kw))
                        or COUNTERS[-1])
    SEEN.clear()
    options = runner.pipeline_options("FnApiRunner", ["--direct_num_workers=1"], 1)
    summaries = runner.run_shard_jobs(({"n": n} for n in range(3)), str(tmp_path),
                                      WaitForTheDriver(), options, "encode", progress=True)
    assert sorted(s["job"] for s in summaries) == [0, 1, 2]
    assert SEEN == [0, 1, 2]  # each job saw the ones before it counted, mid-run
    bar = COUNTERS[-1]
    assert bar.done == 3 and bar.closed and bar.kwargs["total"] == 3
    assert bar.kwargs["unit"] == "shard" and bar.kwargs["desc"].startswith("encode")


def test_progress_is_off_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "counter", lambda **kw: COUNTERS.append(Recorder(**kw))
                        or COUNTERS[-1])
    COUNTERS.clear()
    options = runner.pipeline_options("FnApiRunner", ["--direct_num_workers=1"], 1)
    runner.run_shard_jobs(({"n": n} for n in range(1)), str(tmp_path), Quick(), options,
                          "encode")
    assert COUNTERS == []


class Quick(runner.ShardJobFn):
    def run(self, job):
        return {"job": job["n"]}
