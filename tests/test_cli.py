"""Tests for the ``tfmmrec`` command line: help, one-line errors (exit 2), validate, demo flow.

Subprocesses check what a user's shell sees (exit code, stderr without a traceback); the slower
commands run in-process through ``cli.main`` so they share this session's TensorFlow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.folders import INTERACTIONS, make_folder
from tfmmrec import cli, pipeline
from tfmmrec.config import load_config
from tfmmrec.errors import DataError

TFMMREC = [sys.executable, "-m", "tfmmrec.cli"]
COMMANDS = ("demo", "train", "evaluate", "export", "validate")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([*TFMMREC, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def error_lines(stderr: str) -> list[str]:
    """stderr minus TensorFlow/absl start-up chatter (which a user's shell shows too)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def broken_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "broken", interactions=INTERACTIONS + "u1,i9,4,500\n")


# --- subprocess: what the shell sees ----------------------------------------------------------


def test_help_lists_every_command_and_exits_0():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: tfmmrec")
    for command in COMMANDS:
        assert command in result.stdout


def test_console_script_is_installed_and_prints_version():
    script = Path(sys.executable).with_name("tfmmrec")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == __import__("tfmmrec").__version__


def test_bad_config_key_exits_2_with_one_line_and_no_traceback():
    result = run_cli("train", "--set", "train.epoch=3")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "unknown config key(s) train.epoch" in lines[0]
    assert result.stdout == ""


def test_validate_broken_folder_exits_2_naming_file_line_and_value(broken_folder):
    result = run_cli("validate", "--set", f"data.path={broken_folder}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert "interactions.csv line 6 ('i9')" in line and "items.csv" in line


# --- in-process -------------------------------------------------------------------------------


def test_validate_good_folder_reports_what_it_found(tmp_path, capsys):
    root = make_folder(tmp_path / "good")
    assert cli.main(["validate", "--set", f"data.path={root}"]) == 0
    out = capsys.readouterr().out
    assert "3 items, 4 interactions, 2 users" in out
    assert "text columns: title, description; image column: image; audio column: audio" in out
    assert "image: present for 2 items" in out
    assert "user features: age (numeric), occupation (categorical)" in out


def test_validate_names_the_ratings_the_ranking_task_refuses(tmp_path, capsys):
    """It said OK; ``train`` then refused them after encoding every modality."""
    rated = make_folder(tmp_path / "rated", interactions="user_id,item_id,rating\n"
                        "u1,i1,-2\nu1,i2,4\nu2,i1,3\nu2,i3,5\n")
    plain = make_folder(tmp_path / "plain", interactions="user_id,item_id\nu1,i1\nu2,i3\n")
    for root, task, message in (
            (rated, "listwise", "interactions.csv line 2: rating -2: ranking.task=listwise "
                                "needs ratings >= 0"),
            (plain, "regression", "ranking.task=regression needs a rating column")):
        assert cli.main(["validate", "--set", f"data.path={root}", "--set",
                         "ranking.enabled=true", "--set", f"ranking.task={task}"]) == 2
        assert message in capsys.readouterr().err


def test_validate_says_a_given_split_validates_on_the_rows_marked_validation(tmp_path, capsys):
    """It said they came "from the training rows", as if carved from them."""
    from tests.data.test_user_split import given_folder

    root = given_folder(tmp_path / "given")
    assert cli.main(["validate", "--set", f"data.path={root}", "--set", "data.split=given"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "  given split: 9 train / 1 validation / 4 test interactions" in out
    assert ("  validation for tuned choices: the 1 row marked validation, held out against "
            "the 9 training rows") in out


def test_validate_says_when_evaluate_will_find_no_test_rows(tmp_path, capsys):
    """A given split with no row marked test validated (exit 0) without a word; `evaluate`
    refused it later."""
    from tests.data.test_user_split import given_folder

    root = given_folder(tmp_path / "given")
    interactions = root / "interactions.csv"
    interactions.write_text(interactions.read_text().replace(",test", ",train"))
    assert cli.main(["validate", "--set", f"data.path={root}", "--set", "data.split=given"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert ("  note: nothing to evaluate: the given split's test set has no interactions (a "
            "given split needs rows whose split column says test; or supply a test file: "
            "tfmmrec evaluate --test FILE)") in out
    assert cli.main(["validate", "--set", f"data.path={given_folder(tmp_path / 'ok')}",
                     "--set", "data.split=given"]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if "note:" in line]


def test_validate_reports_media_files_that_would_not_decode(tmp_path, capsys, caplog):
    root = make_folder(tmp_path / "broken-media")
    png = root / "images" / "i2.png"
    png.write_bytes(png.read_bytes()[:len(png.read_bytes()) // 2])  # truncated
    (root / "audio" / "i3.wav").write_bytes(b"RIFF" + bytes(26))  # 30 bytes, no audio
    assert cli.main(["validate", "--set", f"data.path={root}"]) == 0
    out = capsys.readouterr().out
    assert "image: present for 2 items, 1 of them undecodable or over the limits" in out
    assert "audio: present for 3 items, 1 of them undecodable or over the limits" in out
    assert "i2.png" in caplog.text and "i3.wav" in caplog.text


def test_validate_refuses_repeated_interactions_in_one_line_unless_told_which_to_keep(
        tmp_path, capsys):
    root = make_folder(tmp_path / "repeats", interactions=INTERACTIONS + "u1,i1,4,500\n")
    assert cli.main(["validate", "--set", f"data.path={root}"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {root / 'interactions.csv'}: duplicate interaction "
                           "(user_id 'u1', item_id 'i1') at interactions.csv line 6 (first seen "
                           "at interactions.csv line 2); 1 duplicate row(s)")
    assert "data.duplicate_interactions: first|last" in line
    assert cli.main(["validate", "--set", f"data.path={root}",
                     "--set", "data.duplicate_interactions=last"]) == 0
    captured = capsys.readouterr()
    assert "3 items, 4 interactions, 2 users" in captured.out
    assert "1 repeated (user_id, item_id) row(s) dropped" in captured.err


def test_bad_key_in_config_file_exits_2_naming_the_file(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("model:\n  embeding_dim: 8\n")
    assert cli.main(["train", "--config", str(path)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {path}: unknown config key(s) model.embeding_dim")


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert cli.main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["fly"])
    assert info.value.code == 2


@pytest.mark.parametrize(("argv", "hint"), [
    (["catalog", "update", "--model-base-path", "X", "--items", "x.csv", "--set", "x"], False),
    (["prepare", "--temp_location=/tmp/x"], True),
])
def test_unknown_options_hint_at_runner_only_where_there_is_one(capsys, argv, hint):
    """``catalog`` has no --runner: an unknown option there is a typo, not a Beam option."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    unknown = " ".join(argv[argv.index("--set"):] if "--set" in argv else argv[-1:])
    assert error.startswith(f"tfmmrec: error: unrecognized arguments: {unknown}")
    assert ("Beam pipeline options need --runner" in error) is hint


def test_catalog_help_says_what_each_operation_does(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["catalog", "--help"])
    assert info.value.code == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert "{add,update,remove}   add: embed the --items rows as new items" in lines
    assert "update: re-embed served items from the --items rows" in lines
    assert "remove: drop the items of --ids or --items" in lines


def test_interrupted_train_exits_130_and_says_how_to_resume(monkeypatch, capsys):
    def interrupted(config, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train", interrupted)
    assert cli.main(["train", "--set", "train.epochs=1"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "expected"), [
    (["evaluate"], "interrupted: metrics, plots and Projector files are renamed into place "
                   "only when complete, so nothing was half-written; the command can be run "
                   "again"),
    (["export"], "interrupted: a version is renamed into place only when complete, so "
                 "nothing was half-written; the command can be run again"),
    (["catalog", "add", "--model-base-path", "m", "--items", "i.csv"],
     "interrupted: the new version is renamed into place only when complete, so nothing was "
     "half-written and the served versions are unchanged; the command can be run again"),
    (["validate"], "interrupted: nothing was written; the command can be run again"),
], ids=["evaluate", "export", "catalog", "validate"])
def test_interrupted_commands_without_checkpoints_do_not_promise_a_resume(monkeypatch, capsys,
                                                                          argv, expected):
    """Only ``train`` (and the demo's training) has checkpoints to resume from; the others say
    what Ctrl-C left behind: nothing half-written, since they write through temporary names."""
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", interrupted)
    assert cli.main(argv) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == expected


def test_output_piped_into_a_reader_that_already_left_ends_quietly_with_141():
    """``tfmmrec ... | head -c 10``: the reader closing the pipe is its choice, not an error:
    no BrokenPipeError traceback (nor Python's "Exception ignored" at exit), and the status a
    shell reports for a tool ended by SIGPIPE."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte is written
    # stdout block-buffered, as in a user's shell: the help is still in the buffer when
    # argparse exits (unbuffered, argparse itself would swallow the error)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    try:
        result = subprocess.run([*TFMMREC, "--help"], stdout=write, stderr=subprocess.PIPE,
                                text=True, timeout=300, env=env)
    finally:
        os.close(write)
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""


def test_a_command_whose_reader_leaves_mid_output_exits_141_without_a_message(monkeypatch,
                                                                               capsys):
    def printing(args):
        raise BrokenPipeError(32, "Broken pipe")  # as print() to a closed pipe raises it

    monkeypatch.setattr(cli, "_run", printing)
    assert cli.main(["validate"]) == 141
    assert capsys.readouterr().err == ""


def test_train_prints_the_linear_cf_kind_chosen_on_validation(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    def trained(config, **kwargs):
        (tmp_path / "run.json").write_text(json.dumps({"early_stopping": {
            "metric": "recall@20", "linear_cf": "ials",
            "linear_cf_validation": {"ease": 0.3472, "ials": 0.3494}}}))
        return SimpleNamespace(workspace=SimpleNamespace(split=SimpleNamespace(
            sizes=lambda: "sizes")), epochs_run=3, examples_per_second=1.0,
            checkpoint=tmp_path / "ckpt", output_dir=tmp_path)

    monkeypatch.setattr(pipeline, "train", trained)
    assert cli.main(["train", "--set", "model.user_history=true",
                     "--set", "model.linear_cf=auto"]) == 0
    assert ("linear CF: ials, chosen on validation (recall@20: ease 0.3472, ials 0.3494)"
            in capsys.readouterr().out)


def test_train_into_unwritable_dir_exits_2_before_any_work(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: pytest.fail("prepared data"))
    assert cli.main(["train", "--set", f"train.output_dir={blocker / 'run'}"]) == 2
    assert "cannot write to train.output_dir" in capsys.readouterr().err


def test_export_into_an_unwritable_base_dir_exits_2_before_any_work(tmp_path, monkeypatch,
                                                                    capsys):
    """As ``train`` checks its output_dir: ``export`` used to restore the run (load the data,
    encode the catalogue) and only then say it could not write to export.base_dir."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for name in ("prepare", "restore", "load_split"):
        monkeypatch.setattr(pipeline, name, lambda *a, **k: pytest.fail("loaded data first"))
    assert cli.main(["export", "--set", f"export.base_dir={blocker}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write to export.base_dir={blocker}: ")
    assert len(err.strip().splitlines()) == 1


def test_evaluate_names_an_unreadable_candidates_file_before_any_work(tmp_path, monkeypatch,
                                                                       capsys):
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: pytest.fail("prepared data"))
    assert cli.main(["evaluate", "--export", str(tmp_path / "model"), "--candidates",
                     str(tmp_path / "latin1.txt")]) == 2
    assert "latin1.txt: line 1 is not UTF-8 text (byte 0xe9 at column 4)" in capsys.readouterr().err


def test_validate_of_the_demo_into_an_unwritable_dir_is_one_line(tmp_path, capsys):
    """``validate`` builds the demo catalogue under ``train.output_dir``; a path it cannot
    create is one line naming it, not a FileNotFoundError traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["validate", "--set", f"train.output_dir={blocker / 'run'}"]) == 2
    error = capsys.readouterr().err
    assert "cannot write the demo dataset to" in error and str(blocker) in error
    assert len(error.strip().splitlines()) == 1


@pytest.mark.parametrize(("sets", "expected"), [
    ([], "{output_parent}/models"), (["export.base_dir={tmp}/elsewhere"], "{tmp}/elsewhere")],
    ids=["beside the run", "export.base_dir set"])
def test_demo_output_moves_the_export_only_when_export_base_dir_is_not_set(
        tmp_path, monkeypatch, sets, expected):
    """``--output`` overrode a ``--set export.base_dir`` too, so a throwaway demo run could
    publish into a folder a server was polling."""
    seen = []

    def stop(config, **_):
        seen.append(config)
        raise DataError("stop after the config")

    monkeypatch.setattr(pipeline, "prepare", stop)
    output = tmp_path / "throwaway" / "run"
    overrides = [a for s in sets for a in ("--set", s.format(tmp=tmp_path))]
    assert cli.main(["demo", "--output", str(output), *overrides]) == 2
    assert seen[0].train.output_dir == str(output)
    assert seen[0].export.base_dir == expected.format(output_parent=output.parent, tmp=tmp_path)


@pytest.fixture(scope="module")
def demo_run(demo_command):
    """``tfmmrec demo`` as a user runs it with a config file (tests/conftest.py: one run per
    session, shared with tests/test_output.py)."""
    return demo_command.result.returncode, demo_command.root, demo_command.config


def test_demo_trains_evaluates_exports_and_queries(demo_run):
    code, root, _ = demo_run
    assert code == 0
    run = root / "run"
    assert (run / "checkpoints" / "latest.index").is_file()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert {"tfmmrec", "popularity", "random"} <= set(metrics["results"])
    assert (run / "eval" / "metrics.png").is_file()
    assert (root / "models" / "tfmmrec" / "1" / "saved_model.pb").is_file()


def test_evaluate_command_restores_the_demo_checkpoint(demo_run, capsys):
    _, root, config_path = demo_run
    output = root / "run"
    metrics = output / "eval" / "metrics.json"
    metrics.unlink()
    assert cli.main(["-q", "evaluate", "--config", str(config_path),
                     "--set", f"train.output_dir={output}"]) == 0
    printed = capsys.readouterr().out
    assert "| tfmmrec |" in printed and "recall@10" in printed
    assert metrics.is_file()


@pytest.mark.parametrize(("overrides", "expected"), [
    (["model.fusion=gated"], "model.fusion: 'concat_mlp' in the run"),
    (["train.output_dir={root}/runs/none"], "no checkpoint at"),
], ids=["architecture override", "no run"])
def test_evaluate_refuses_a_model_it_cannot_restore_before_loading_data(
        demo_run, monkeypatch, capsys, overrides, expected):
    _, root, config_path = demo_run
    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: pytest.fail("prepared data"))
    sets = [f"train.output_dir={root / 'run'}",
            *(o.format(root=root) for o in overrides)]
    assert cli.main(["-q", "evaluate", "--config", str(config_path),
                     *(a for o in sets for a in ("--set", o))]) == 2
    error = capsys.readouterr().err
    assert expected in error and len(error.strip().splitlines()) == 1


def test_run_records_the_config_it_ran_with(demo_run):
    _, root, config_path = demo_run
    expected = load_config(config_path, [f"train.output_dir={root / 'run'}",
                                         f"export.base_dir={root / 'models'}"])
    assert load_config(root / "run" / "config.yaml") == expected


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--k", "3000000000", "3000000000 is above the maximum 2147483647"),  # k is an int32
    ("--k", "0", "0 is below the minimum 1"),
    ("--version", "99999999999999999999",
     "99999999999999999999 is above the maximum 9223372036854775807"),  # an int64
])
def test_query_refuses_a_k_or_version_its_request_cannot_hold(capsys, option, value, expected):
    with pytest.raises(SystemExit) as info:
        cli.main(["query", "--user", "u1", option, value])
    assert info.value.code == 2
    assert f"argument {option}: {expected}" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["-q", "validate"], ["validate", "-q"], ["validate", "--quiet"],
                                  ["-v", "query", "--user", "u1"], ["query", "--user", "u1", "-v"]])
def test_quiet_and_verbose_go_before_or_after_the_command(argv):
    """``tfmmrec validate --verbose`` was 'unrecognized arguments'; the flags were global only."""
    args = cli.build_parser().parse_args(argv)
    assert (args.quiet, args.verbose) == ("-q" in argv or "--quiet" in argv, "-v" in argv)


def test_a_flag_before_the_command_is_not_undone_by_the_commands_default():
    args = cli.build_parser().parse_args(["-q", "-v", "train"])
    assert args.quiet and args.verbose
    assert not cli.build_parser().parse_args(["train"]).quiet


def test_a_two_stage_export_is_told_apart_from_its_metadata(tmp_path):
    """``evaluate --export`` of a re-ranking export scored its retrieval stage with no word."""
    from tfmmrec.export.writer import METADATA_FILE

    for version, two_stage in ((1, True), (2, False)):
        folder = tmp_path / "m" / str(version)
        (folder / "assets.extra").mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"")
        (folder / "assets.extra" / METADATA_FILE).write_text(
            json.dumps({"graph_constants": {"two_stage": two_stage}}))
    assert cli._two_stage_export(str(tmp_path / "m" / "1"))
    assert not cli._two_stage_export(str(tmp_path / "m"))  # the newest: version 2
