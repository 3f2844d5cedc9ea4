"""Data layer on Beam: ``tfmmrec prepare --runner NAME`` — the dataset folder → sharded TFRecords.

The driver plans exactly as the local ``prepare`` does (``tfrecords.plan_prepare``: validation,
split, shard plan, resume), the runner's workers write the shards with the local path's own
``tfrecords.write_shard`` (same decoding, resizing and resampling functions, same temp-then-rename
writes), and the driver writes ``manifest.json`` last (``tfrecords.finish_prepare``). Records are
therefore identical to the local path's, and a re-run after a failure keeps finished shards. The
runner and Beam flags are checked before anything in the output is touched, and by the CLI before
the dataset is loaded (:func:`prepare_options`).

Workers read media files at the paths the driver resolved: on a cluster, the dataset folder must
be mounted at the same path on every worker (NFS, Cloud Storage FUSE); the output may be any
TensorFlow filesystem path (``gs://...``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from tfmmrec.beam.runner import ShardJobFn, pipeline_options, run_shard_jobs
from tfmmrec.config import Config
from tfmmrec.data import tfrecords
from tfmmrec.data.dataset import Dataset


class WriteShardFn(ShardJobFn):
    """One TFRecord shard (items or interactions) per job, written by the local path's code."""

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        failed = tfrecords.write_shard(job)
        return {"file": job["file"], "records": job["records"], "failed": failed}


def prepare_options(config: Config, runner: str, beam_args: Sequence[str] = (),
                    workers: int | None = None):
    """The checked ``PipelineOptions`` of a ``prepare`` on ``runner``: a mistyped runner or
    flag is a one-line ``ConfigError`` here, so callers build them before loading the data
    (which takes minutes on a large folder)."""
    return pipeline_options(runner, beam_args, tfrecords.prepare_workers(config, workers))


def prepare(config: Config, output: str | os.PathLike | None = None, *, runner: str,
            beam_args: Sequence[str] = (), dataset: Dataset | None = None,
            workers: int | None = None, shards: int | None = None,
            options=None, progress: bool = False) -> tfrecords.Manifest:
    """``tfrecords.prepare`` as a Beam pipeline on ``runner`` (same arguments, same output).

    ``workers`` sizes the default shard count (at least one shard per worker) and, on the local
    FnApiRunner, the number of worker processes. ``options``: :func:`prepare_options` of the
    same arguments, when the caller checked them already (before loading ``dataset``).
    ``progress``: report the shards finished while the pipeline runs.
    """
    workers = tfrecords.prepare_workers(config, workers)
    if options is None:  # a bad runner fails here, before the output is touched
        options = pipeline_options(runner, beam_args, workers)
    run = tfrecords.plan_prepare(config, output, dataset=dataset, workers=workers,
                                 shards=shards)
    summaries = run_shard_jobs(run.todo, run.workdir, WriteShardFn(), options, "prepare",
                               progress=progress)
    failed: dict[str, list[str]] = {}
    for summary in summaries:
        for modality, paths in summary["failed"].items():
            failed.setdefault(modality, []).extend(paths)
    return tfrecords.finish_prepare(run, failed)
