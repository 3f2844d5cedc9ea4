"""A finished run's files, and keeping them while the same folder trains again.

A run is finished once it has written its final checkpoint (``checkpoints/latest.*``, beside
the model spec ``checkpoints/model.yaml``) and then its record ``run.json``. Training again
in that folder starts from scratch, and nothing of the old run may stand for the new one; but
deleting the old run first left nothing when the new one failed (a diverging learning rate,
Ctrl-C): ``export`` then said "no checkpoint". So the finished run is moved aside into
``<output_dir>/previous/``, where it stays restorable (``tfmmrec.restore(<output_dir>/previous)``,
or ``--set train.output_dir=<output_dir>/previous``), and is deleted only once the new run has
written its own checkpoint and record.

Moving is renaming, within one folder: cheap for any checkpoint size. The pieces go into
``previous.partial/`` with ``run.json`` last, which then becomes ``previous/`` in one rename:
a crash part-way leaves either a finished run in place (its record not moved yet; the next
``train`` moves the rest) or a complete ``previous.partial/`` (published by the next
``train``), never a ``previous/`` missing a piece.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"


def read_run_record(run_file: Path) -> dict:
    """A run's ``run.json``; a damaged one is a ``DataError`` naming it."""
    from tfmmrec.data.tfrecords import read_json

    return read_json(run_file, "train the run again (tfmmrec train), or put back the run.json "
                               "it wrote")
CONFIG_FILE = "config.yaml"  # the whole config of the run, for the record and as a default
# The model-defining sections (config.model_sections()), beside the checkpoints they describe.
MODEL_SPEC_FILE = "model.yaml"
PREVIOUS_DIR = "previous"
_STAGING_DIR = PREVIOUS_DIR + ".partial"


def finished_run_files(output: Path) -> list[Path]:
    """What of ``output`` belongs to its finished run, relative to it, ``run.json`` last:
    the final checkpoint and its spec, the config, the evaluation and the Projector files
    evaluation wrote (TensorBoard's training logs stay: each run adds its own event file)."""
    checkpoints = output / "checkpoints"
    names = [*sorted(checkpoints.glob("latest.*")), checkpoints / "checkpoint",
             checkpoints / MODEL_SPEC_FILE, output / CONFIG_FILE, output / "eval",
             output / "logs" / "projector"]
    return [p.relative_to(output) for p in names if p.exists()] + [Path(RUN_FILE)]


def set_aside_finished_run(output: Path) -> Path | None:
    """Move the finished run in ``output`` (if any) to ``output/previous/``, replacing an older
    one kept there; also publish a ``previous.partial/`` an earlier call completed but did not
    rename. Returns ``previous/`` when it holds a run afterwards."""
    staging, previous = output / _STAGING_DIR, output / PREVIOUS_DIR
    if (output / RUN_FILE).is_file():
        shutil.rmtree(previous, ignore_errors=True)  # older than the finished run in place
        for relative in finished_run_files(output):  # run.json last
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove(target)  # a piece an interrupted move left there
            os.replace(output / relative, target)
    if (staging / RUN_FILE).is_file():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(staging, previous)
    return previous if (previous / RUN_FILE).is_file() else None


def drop_previous_run(output: Path) -> None:
    """The run in ``output`` finished: the one it replaced (``previous/``) goes."""
    for folder in (output / PREVIOUS_DIR, output / _STAGING_DIR):
        shutil.rmtree(folder, ignore_errors=True)


def previous_run_note(output: Path) -> str:
    """For an error about an unfinished run in ``output``: where the finished run it
    replaces is, and how to use it (empty when there is none)."""
    previous = output / PREVIOUS_DIR
    if not (previous / RUN_FILE).is_file():
        return ""
    return (f"; the finished run it is replacing is kept in {previous} until then: evaluate or "
            f"export that one with --set train.output_dir={previous} (Python: "
            f"tfmmrec.restore('{previous}'))")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
