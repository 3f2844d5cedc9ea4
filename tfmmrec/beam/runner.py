"""Batch jobs on Beam: pipeline options from ``--runner NAME`` + Beam flags, and one pipeline
shape shared by ``prepare`` and ``encode`` — a list of shard jobs run by workers.

Why shards, not items, are the unit of work: a shard job names its inputs (item rows or an
item-shard file) and writes one finished output file, so decoded media and features go from a
worker straight to storage and are never shuffled between machines (a per-item pipeline would
shuffle ~300 KB of decoded media per item to group them into shards), memory per worker is one
batch whatever the catalogue size, and the files are byte-for-byte those of the local path.
The driver stages each job as a small JSON file next to the output (so the pipeline graph holds
only file names, whatever the catalogue size: Dataflow caps a job graph at 10 MB), and the
runner spreads them over its workers (``Reshuffle``), retries failed ones, and scales out.
A staging folder is named after the driver's process (as ``tfmmrec.files`` names temporary
files), so a successful run also removes the folders of drivers that died (``kill -9``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam

from tfmmrec.data.tfrecords import join_path, read_text, write_text
from tfmmrec.errors import ConfigError, DataError
from tfmmrec.files import temp_writer_gone, writer_tag
from tfmmrec.progress import counter

logger = logging.getLogger(__name__)

STAGING = ".beam-jobs"
# How often the driver counts the finished jobs (their ``.done`` files) while the pipeline runs.
POLL_SECONDS = 5.0
# Beam's DirectRunner first tries the Prism runner, which downloads a Go binary at run time;
# the Python FnApiRunner runs the same pipeline locally (in-process, threads or processes).
LOCAL_RUNNERS = {"directrunner": "FnApiRunner", "direct": "FnApiRunner",
                 "fnapirunner": "FnApiRunner", "local": "FnApiRunner"}


def pipeline_options(runner: str, beam_args: Sequence[str] = (), workers: int | None = None):
    """``PipelineOptions`` for ``runner`` plus the user's Beam flags.

    ``DirectRunner`` / ``local`` mean Beam's Python ``FnApiRunner`` (no download); there,
    ``workers`` > 1 (unless ``--direct_num_workers`` is given) runs that many worker processes
    (``--direct_running_mode=multi_processing``). Any other name goes to Beam as is
    (``DataflowRunner``, ``FlinkRunner``, ``SparkRunner``, ``PortableRunner``...).

    Callers build these before touching any output: an unknown runner or a bad flag is a
    one-line ``ConfigError`` here, where Beam would only fail once the pipeline is built.
    """
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    name = LOCAL_RUNNERS.get(runner.lower(), runner)
    if name != runner:
        logger.info("--runner %s: using Beam's Python FnApiRunner", runner)
    options = PipelineOptions([f"--runner={name}", *beam_args])
    check_options(runner, name, options)
    given = " ".join(beam_args)
    if name == "FnApiRunner" and workers and workers > 1 and "direct_num_workers" not in given:
        direct = options.view_as(DirectOptions)
        direct.direct_num_workers = workers
        if "direct_running_mode" not in given:
            direct.direct_running_mode = "multi_processing"
    return options


def check_options(runner: str, name: str, options) -> None:
    """What ``beam.Pipeline(options=options)`` checks (the flags parse, runner ``name`` exists,
    the runner's required options are set), as a one-line ``ConfigError`` naming ``runner``."""
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.runner import create_runner

    usage, discarded = io.StringIO(), _Discarded()
    beam_logger = logging.getLogger("apache_beam.options.pipeline_options")
    # heard whatever the quiet output set, and said here as an error rather than logged
    level, propagate = beam_logger.level, beam_logger.propagate
    beam_logger.setLevel(logging.WARNING)
    beam_logger.propagate = False
    beam_logger.addHandler(discarded)
    try:
        with contextlib.redirect_stderr(usage):  # argparse prints its usage, then exits
            options.get_all_options()
    except SystemExit:
        lines = usage.getvalue().strip().splitlines() or ["cannot parse them"]
        raise ConfigError(f"--runner {runner}: bad Beam pipeline option: "
                          f"{lines[-1].split(' error: ', 1)[-1]}") from None
    finally:
        beam_logger.removeHandler(discarded)
        beam_logger.setLevel(level)
        beam_logger.propagate = propagate
    if discarded.args:  # Beam only logs flags no option knows (a typo ran the whole job)
        raise ConfigError(f"--runner {runner}: unknown Beam pipeline option(s) "
                          f"{' '.join(discarded.args)}")
    try:
        instance = create_runner(name)
    except ValueError:
        choices = ", ".join([*StandardOptions.KNOWN_RUNNER_NAMES, "local"])
        raise ConfigError(f"--runner {runner}: unknown Beam runner; choose one of {choices} "
                          "(DirectRunner and local run Beam's Python FnApiRunner), or a "
                          "PipelineRunner subclass as module.Class") from None
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--runner {runner}: cannot load this Beam runner ({exc})") from None
    errors = PipelineOptionsValidator(options, instance).validate()
    if errors:
        raise ConfigError(f"--runner {runner}: bad Beam pipeline options: "
                          + " ".join(e.strip().replace("\n", " ") for e in errors))


class _Discarded(logging.Handler):
    """The flags ``PipelineOptions`` discards as unparseable (it logs them, nothing more)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.args: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Discarding unparseable args"):
            self.args += [str(a) for a in (record.args[0] if record.args else [])]


def run_shard_jobs(jobs: Iterable[dict[str, Any]], output: str, dofn, options,
                   label: str, *, progress: bool = False) -> list[dict[str, Any]]:
    """Run ``dofn`` on every job as a Beam pipeline; each job's summary, in ``jobs`` order.

    ``jobs`` may be a generator: each job is staged as it comes and not kept, so the driver
    holds one job at a time. With ``progress``, the driver reports the jobs finished so far
    while the pipeline runs (:func:`watch_done`): ``Pipeline.run`` blocks until the end.

    A job that already finished (its output exists) is the caller's to skip; this runs what it
    is given. The staging files are removed once every summary has been read, or when the
    pipeline fails (a re-run stages its jobs afresh); a run that succeeds also removes the
    staging folders of drivers that died (:func:`remove_stale_staging`).
    """
    staging = join_path(output, f"{STAGING}/{staging_name()}")
    import tensorflow as tf

    tf.io.gfile.makedirs(staging)
    paths = []
    for number, job in enumerate(jobs):
        path = join_path(staging, f"job-{number:06d}.json")
        write_text(path, json.dumps(job, default=_jsonable))
        paths.append(path)
    if paths:
        try:
            with watch_done(staging, len(paths), label, progress), \
                    beam.Pipeline(options=options) as pipeline:
                _ = (pipeline
                     | f"{label}: shard jobs" >> beam.Create(paths)
                     | f"{label}: spread over workers" >> beam.Reshuffle()
                     | f"{label}: run" >> beam.ParDo(dofn))
        except Exception as exc:  # the runner re-raises a worker's error as its own type
            _remove_staging(output, staging)
            first = str(exc).strip().splitlines()
            raise DataError(f"the Beam pipeline ({label}) failed: "
                            f"{first[-1] if first else type(exc).__name__}; finished shards "
                            "are kept: run the same command again") from exc
    summaries = []
    for path in paths:
        done = path + ".done"
        if not tf.io.gfile.exists(done):
            raise DataError(f"the Beam pipeline ({label}) finished without running {path}; "
                            "run the same command again")
        summaries.append(json.loads(read_text(done)))
    remove_stale_staging(output)
    _remove_staging(output, staging)
    return summaries


@contextlib.contextmanager
def watch_done(staging: str, total: int, label: str, progress: bool = True):
    """Report the jobs finished in ``staging`` (their ``.done`` summaries) every
    :data:`POLL_SECONDS` while the block runs, through ``tfmmrec.progress.counter``. The
    summaries are written where the workers write the shards, so the driver sees them with any
    runner (local processes, Dataflow on ``gs://``)."""
    if not progress:
        yield
        return
    bar = counter(total=total, desc=f"{label}: shard jobs", unit="shard")
    stop, seen = threading.Event(), [0]

    def update() -> None:
        import tensorflow as tf

        with contextlib.suppress(Exception):  # a listing that fails is retried next time
            done = len(tf.io.gfile.glob(join_path(staging, "*.done")))
            if done > seen[0]:
                bar.update(done - seen[0])
                seen[0] = done

    def poll() -> None:
        while not stop.wait(POLL_SECONDS):
            update()

    watcher = threading.Thread(target=poll, name="tfmmrec-beam-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:  # on failure too: the last line says how many shards were finished
        stop.set()
        watcher.join()
        update()
        bar.close()


def staging_name() -> str:
    """``<pid>.<tag>``: the driver's pid and :func:`tfmmrec.files.writer_tag`, as temporary
    file names carry, so that :func:`remove_stale_staging` can tell a dead driver's folder."""
    return f"{os.getpid()}.{writer_tag()}"


def remove_stale_staging(output: str) -> list[str]:
    """Remove the staging folders in ``output`` left by drivers that are gone (killed before
    their cleanup ran): a dead process of this machine, or any folder older than a day
    (:func:`tfmmrec.files.temp_writer_gone`; folders of an older release, named without a pid,
    by age only). Age is read from the local disk only: on an object store (``gs://``), whose
    "folders" have no modification time to trust, only this machine's dead drivers' folders
    are removed. A live driver's folder, this one's included, is kept. Returns the removed."""
    import tensorflow as tf

    root = join_path(output, STAGING)
    if not tf.io.gfile.isdir(root):
        return []
    removed = []
    for name in tf.io.gfile.listdir(root):
        name = name.rstrip("/")
        path = join_path(root, name)
        pid, _, tag = name.partition(".")
        if temp_writer_gone(int(pid) if pid.isdigit() else -1, tag, path):
            tf.io.gfile.rmtree(path)
            removed.append(path)
    if removed:
        logger.info("removed %d staging folder(s) of Beam drivers that died: %s", len(removed),
                    ", ".join(removed))
    return removed


def _remove_staging(output: str, staging: str) -> None:
    import tensorflow as tf

    tf.io.gfile.rmtree(staging)
    if not tf.io.gfile.listdir(join_path(output, STAGING)):
        tf.io.gfile.rmtree(join_path(output, STAGING))


def _jsonable(value):
    """numpy arrays and scalars in a job → lists and Python numbers (exact for int64/float64)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot stage {type(value).__name__} in a Beam job")


class ShardJobFn(beam.DoFn):
    """Reads a staged job, runs it, writes its summary beside it (``<job>.done``).

    Subclasses implement ``run(job) -> summary`` and may load what every job of a worker
    shares (an encoder) in ``setup_worker``, which runs once per DoFn instance, i.e. per worker.
    """

    def setup(self):
        import tfmmrec  # noqa: F401  (Keras 2 and custom ops before TensorFlow loads)

        single_threaded_tensorflow()
        self.setup_worker()

    def setup_worker(self) -> None:
        pass

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def process(self, path):
        summary = self.run(json.loads(read_text(path)))
        write_text(path + ".done", json.dumps(summary))
        yield summary


def single_threaded_tensorflow() -> None:
    """One TF thread per worker process: a runner starts one worker process per core (as the
    local process pool does). A worker that already ran TF (in-process runners) keeps its
    settings."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
