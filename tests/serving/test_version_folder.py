"""A version folder given where its model's folder belongs is named as such, at once: serve
would otherwise wait forever for a version of model "7", and a catalogue update would find
none."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving.conftest import MODEL, install_version
from tfmmrec.cli import main
from tfmmrec.errors import ExportError
from tfmmrec.export.loader import check_model_dir, latest_version
from tfmmrec.serving.registry import ModelRegistry, ServedModel
from tfmmrec.serving.server import ModelServer, ServerOptions


def fake_versions(base: Path, *versions: int) -> Path:
    """``base/<v>/saved_model.pb`` for each version (enough for the folder checks)."""
    for version in versions:
        (base / str(version)).mkdir(parents=True)
        (base / str(version) / "saved_model.pb").write_bytes(b"")
    return base


def expected(version_dir: Path) -> str:
    return (f"{version_dir} is version {version_dir.name} of model {MODEL!r}: pass its parent "
            f"folder {version_dir.parent}")


def test_latest_version_names_a_version_folder(tmp_path):
    base = fake_versions(tmp_path / MODEL, 3, 7)
    with pytest.raises(ExportError) as raised:
        latest_version(base / "7")
    assert str(raised.value) == expected(base / "7")
    assert latest_version(base) == base / "7"


def test_every_spelling_of_a_version_folder_is_named_and_odd_names_are_not_versions(
        tmp_path, monkeypatch):
    base = fake_versions(tmp_path / MODEL, 3, 7)
    (base / "7" / "sub").mkdir()
    (tmp_path / "link").symlink_to(base / "7")
    monkeypatch.chdir(base / "7")
    for given in (Path("."), base / "7" / "sub" / "..", tmp_path / "link"):
        with pytest.raises(ExportError, match=rf"is version 7 of model {MODEL!r}: pass its "
                                              rf"parent folder {base}$"):
            check_model_dir(given)
    (base / "²").mkdir()  # a Unicode digit: not a version name, and no int() of it
    assert check_model_dir(base / "²") == base / "²"


def test_model_folders_are_not_versions(tmp_path):
    """A model named by an integer, a folder without saved_model.pb, an empty or missing
    model folder (serve waits for its first version): all pass."""
    numbered = fake_versions(tmp_path / "2024", 1)
    assert check_model_dir(numbered) == numbered
    (tmp_path / MODEL / "5").mkdir(parents=True)  # a version still being copied in
    assert check_model_dir(tmp_path / MODEL / "5") == tmp_path / MODEL / "5"
    assert check_model_dir(tmp_path / "empty") == tmp_path / "empty"


def test_catalog_remove_on_a_version_folder_names_its_parent(tmp_path, capsys):
    base = fake_versions(tmp_path / MODEL, 7)
    assert main(["catalog", "remove", "--model-base-path", str(base / "7"), "--ids", "X"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"error: {expected(base / '7')}"]


def test_server_refuses_a_version_folder_before_binding(tmp_path):
    base = fake_versions(tmp_path / MODEL, 1)
    options = ServerOptions(port=0, rest_port=None, poll_seconds=0, warmup=False)
    with pytest.raises(ExportError, match="pass its parent folder"):
        ModelServer.for_base_path(base / "1", options)
    with pytest.raises(ExportError, match="pass its parent folder"):  # models.config entries
        ModelRegistry([ServedModel(MODEL, base / "1")], poll_seconds=0)


def test_serve_command_fails_fast_on_a_version_folder(tiny_exports, tmp_path, monkeypatch,
                                                      capsys):
    """``tfmmrec serve --model-base-path runs/models/tfmmrec/1``: one line and exit 2, not a
    server for a model named "1" waiting for its first version."""
    def no_start(self):
        raise AssertionError("the server started on a version folder")

    monkeypatch.setattr(ModelRegistry, "start", no_start)
    version = install_version(tiny_exports.brute_force, tmp_path / MODEL, 1)
    assert main(["serve", "--model-base-path", str(version), "--port", "0",
                 "--rest-api-port", "0", "--poll-seconds", "0", "--no-warmup"]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {expected(version)}"], captured.err


def test_serve_still_waits_for_the_first_version_of_a_model_folder(tmp_path):
    base = tmp_path / MODEL
    base.mkdir()
    options = ServerOptions(port=0, rest_port=None, poll_seconds=0, warmup=False)
    with ModelServer.for_base_path(base, options) as server:
        assert server.registry.available_versions(MODEL) == []


def test_folders_where_no_version_will_appear_are_named(tmp_path):
    """The export base folder (one level up), a training run's folder, a file: refused with
    what to pass instead, where serve would wait forever and a catalogue update find none."""
    base = tmp_path / "models"
    fake_versions(base / MODEL, 1)
    with pytest.raises(ExportError, match=rf"^{base} holds the folders of model\(s\) {MODEL}: "
                                          rf"pass one of them, e.g. {base / MODEL}$"):
        latest_version(base)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ExportError, match="is a training run's folder, not an export: run "
                                          "`tfmmrec export`"):
        check_model_dir(run)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ExportError, match="is a file, not a model's folder"):
        check_model_dir(tmp_path / "notes.txt")
    with pytest.raises(ExportError, match=r"no model versions under .*nope \(the folder does "
                                          r"not exist\)"):
        latest_version(tmp_path / "nope")
    options = ServerOptions(port=0, rest_port=None, poll_seconds=0, warmup=False)
    with pytest.raises(ExportError, match="holds the folders of model"):
        ModelServer.for_base_path(base, options)
