"""Setting a finished run aside (``previous/``) while its folder trains again: every piece
moves, and a move cut short is completed by the next one, never leaving a partial
``previous/`` (the trained flows are in tests/test_restore.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tfmmrec.training import finished_run
from tfmmrec.training.finished_run import (
    drop_previous_run,
    finished_run_files,
    previous_run_note,
    set_aside_finished_run,
)

PIECES = ("checkpoints/latest.index", "checkpoints/latest.data-00000-of-00001",
          "checkpoints/checkpoint", "checkpoints/model.yaml", "config.yaml",
          "eval/metrics.json", "logs/projector/metadata.tsv", "run.json")


def a_finished_run(output: Path, tag: str = "old") -> Path:
    for name in (*PIECES, "logs/train/events.out", "backup/.keep"):
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_text(tag)
    return output


def test_every_piece_of_a_finished_run_moves_to_previous_run_json_last(tmp_path):
    output = a_finished_run(tmp_path / "run")
    assert finished_run_files(output)[-1] == Path("run.json")
    assert set_aside_finished_run(output) == output / "previous"
    for name in PIECES:
        assert (output / "previous" / name).read_text() == "old", name
        assert not (output / name).exists(), name
    # TensorBoard's training logs stay for the next run's event files
    assert (output / "logs" / "train" / "events.out").is_file()
    assert not (output / "previous.partial").exists()


def test_a_newer_finished_run_replaces_the_one_kept_before(tmp_path):
    output = a_finished_run(tmp_path / "run")
    set_aside_finished_run(output)
    a_finished_run(output, "newer")
    set_aside_finished_run(output)
    assert (output / "previous" / "run.json").read_text() == "newer"
    assert (output / "previous" / "checkpoints" / "latest.index").read_text() == "newer"


def test_a_move_cut_short_is_completed_by_the_next_one(tmp_path, monkeypatch):
    output = a_finished_run(tmp_path / "run")
    moved = []
    replace = os.replace

    def crash_after_three(source, target):
        if len(moved) == 3:
            raise KeyboardInterrupt
        moved.append(source)
        replace(source, target)

    monkeypatch.setattr(finished_run.os, "replace", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        set_aside_finished_run(output)
    monkeypatch.setattr(finished_run.os, "replace", replace)
    assert (output / "run.json").is_file() and not (output / "previous").exists()
    set_aside_finished_run(output)
    for name in PIECES:
        assert (output / "previous" / name).read_text() == "old", name


def test_a_complete_staging_folder_left_unrenamed_is_published(tmp_path):
    output = a_finished_run(tmp_path / "run")
    os.rename(output, tmp_path / "staged")
    output.mkdir()
    os.rename(tmp_path / "staged", output / "previous.partial")
    assert set_aside_finished_run(output) == output / "previous"
    assert (output / "previous" / "run.json").is_file()


def test_the_note_names_the_previous_run_only_when_there_is_one(tmp_path):
    output = tmp_path / "run"
    assert previous_run_note(output) == ""
    set_aside_finished_run(a_finished_run(output))
    assert f"--set train.output_dir={output / 'previous'}" in previous_run_note(output)
    drop_previous_run(output)
    assert previous_run_note(output) == "" and not (output / "previous").exists()
