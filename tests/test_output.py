"""Tests for what commands print: quiet by default (no library chatter), compact progress lines.

Covers ``tfmmrec._env.quiet_output``/``native_stderr_to``, ``tfmmrec.progress``, the trainer's
per-epoch line and, end to end, the demo command's whole output in a fresh process.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import clean_environment
from tfmmrec.progress import LineCounter, LineProgress, counter, progress

LIBRARY_CHATTER = ("WARNING", "Warning", "I0000", "W0000", "E0000", "cuInit", "oneDNN",
                   "Using TensorFlow backend", "absl::", "Epoch 1/", "ETA:", "\r")


def test_demo_prints_at_most_40_lines_and_no_library_warnings(demo_command):
    """`make demo` runs this command; its whole output (stdout + stderr, not a terminal) must fit
    on a screen: progress, results, where files went."""
    result = demo_command.result
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout[-3000:]
    assert len(lines) <= 40, result.stdout
    noisy = [line for line in lines if any(word in line for word in LIBRARY_CHATTER)]
    assert noisy == [], noisy
    text = result.stdout
    assert "epoch 20/20: " in text and "| tfmmrec |" in text and "query_text" in text
    assert f"run directory: {demo_command.run_dir}" in text
    # each result once: the command prints it, the library's log line of it stays at debug
    exported = [line for line in lines if line.startswith("exported ")]
    assert len(exported) == 1, exported


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=clean_environment(),
                          capture_output=True, text=True, timeout=120)


def test_native_stderr_goes_to_the_file_and_python_stderr_stays(tmp_path):
    log = tmp_path / "native.log"
    result = run_python(f"""
        import os, sys
        from tfmmrec._env import native_stderr_to
        with native_stderr_to({str(log)!r}):
            os.write(2, b"I0000 native chatter\\n")
            print("progress line", file=sys.stderr)
        os.write(2, b"after\\n")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["progress line", "after"]
    assert log.read_text() == "I0000 native chatter\n"


def test_quiet_output_sets_native_thresholds_but_keeps_the_users_choice():
    result = run_python("""
        import os, warnings
        import tfmmrec
        from tfmmrec._env import quiet_output
        os.environ["GLOG_minloglevel"] = "0"  # set after tfmmrec's import: not the user's
        quiet_output(verbose=False)
        warnings.warn("a Keras deprecation")
        print(os.environ["TF_CPP_MIN_LOG_LEVEL"], os.environ["GLOG_minloglevel"])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "2"]
    assert "deprecation" not in result.stderr
    env = {**clean_environment(), "TF_CPP_MIN_LOG_LEVEL": "1"}
    code = ("import os, tfmmrec; from tfmmrec._env import quiet_output; quiet_output(); "
            "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    kept = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert kept.stdout.strip() == "1"


def test_quiet_output_drops_a_librarys_warnings_on_the_root_logger_but_not_the_users():
    result = run_python("""
        import logging
        import tfmmrec
        from tfmmrec._env import quiet_output
        quiet_output()
        logging.basicConfig(format="%(message)s")
        def record(path, level=logging.WARNING, text="x"):
            logging.getLogger().handle(logging.LogRecord("root", level, path, 1, text, None, None))
        import os, PIL
        inside = os.path.join(os.path.dirname(PIL.__file__), "Image.py")
        record(inside, text="a library's chatter")
        record(inside, logging.ERROR, "a library's error")
        record("/home/me/script.py", text="the user's own warning")
        record("/home/me/src/PIL/mine.py", text="a user's folder named like a library")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["a library's error", "the user's own warning",
                                          "a user's folder named like a library"]


def test_show_progress_prints_the_librarys_lines_once_like_the_command_line():
    result = run_python("""
        import logging
        import tfmmrec
        tfmmrec.show_progress()
        tfmmrec.show_progress()  # again: still one handler
        log = logging.getLogger("tfmmrec.training")
        log.info("epoch 1/3: loss 1.0")
        tfmmrec.show_progress(quiet=True)
        log.info("epoch 2/3: hidden")
        log.warning("a warning")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["epoch 1/3: loss 1.0", "warning: a warning"]


def test_a_command_keeps_the_callers_own_show_progress():
    result = run_python("""
        import logging
        import tfmmrec
        from tfmmrec import cli
        tfmmrec.show_progress()
        try:
            cli.main(["--quiet", "validate", "--config", "no-such.yaml"])
        except SystemExit:
            pass
        logging.getLogger("tfmmrec.script").info("still shown")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1] == "still shown", result.stderr


def test_verbose_changes_nothing():
    result = run_python("""
        import os, warnings
        import tfmmrec
        from tfmmrec._env import quiet_output
        quiet_output(verbose=True)
        warnings.warn("shown")
        print(os.environ.get("GLOG_minloglevel"))
    """)
    assert result.stdout.split() == ["None"] and "shown" in result.stderr


class FakeClock:
    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_line_progress_logs_every_interval_and_once_at_the_end(caplog):
    caplog.set_level(logging.INFO, logger="tfmmrec.progress")
    items = list(LineProgress(range(10), desc="encoding text", total=10, unit="batch",
                              interval=3.0, clock=FakeClock(1.0)))
    assert items == list(range(10))
    assert [r.getMessage() for r in caplog.records] == [
        "encoding text: 3/10 batch (30%) in 3 s",
        "encoding text: 6/10 batch (60%) in 6 s",
        "encoding text: 9/10 batch (90%) in 9 s",
        "encoding text: 10/10 batch (100%) in 11 s, done",
    ]


def test_line_counter_logs_uneven_chunks_every_interval_and_once_at_close(caplog, tmp_path):
    """``counter`` (shards of items finishing in a process pool: tfmmrec prepare / encode)."""
    caplog.set_level(logging.INFO, logger="tfmmrec.progress")
    bar = LineCounter(desc="preparing items", total=100, unit="item", interval=5.0,
                      clock=FakeClock(2.0))
    for chunk in (10, 30, 25, 35):
        bar.update(chunk)
    bar.close()
    bar.close()
    assert [r.getMessage() for r in caplog.records] == [
        "preparing items: 65/100 item (65%) in 6 s",
        "preparing items: 100/100 item (100%) in 10 s, done",
    ]
    caplog.clear()
    with open(tmp_path / "out.txt", "w") as not_a_terminal:
        assert isinstance(counter(desc="x", total=3, stream=not_a_terminal), LineCounter)
    silent = counter(desc="x", total=3, disable=True)
    silent.update(3)
    silent.write("a result")
    silent.close()
    assert caplog.records == []


def test_line_counter_writes_result_lines_once_each_like_tqdm_write(capsys):
    """Benchmarks print one line per finished run through the counter (``tqdm.write`` on a
    terminal): off a terminal each is one plain line, never a redrawn bar."""
    bar = LineCounter(desc="protocol A", total=2, unit="run", interval=5.0, clock=FakeClock(1.0))
    bar.update(1)
    bar.write("  A tfmmrec (default) seed 0: recall@20 0.4513")
    bar.update(1)
    bar.write("  A tfmmrec (default) seed 1: recall@20 0.4511")
    bar.close()
    assert capsys.readouterr().out.splitlines() == [
        "  A tfmmrec (default) seed 0: recall@20 0.4513",
        "  A tfmmrec (default) seed 1: recall@20 0.4511",
    ]


def test_progress_is_a_line_reporter_off_a_terminal_and_nothing_when_disabled(tmp_path):
    with open(tmp_path / "out.txt", "w") as not_a_terminal:
        assert isinstance(progress(range(3), desc="x", stream=not_a_terminal), LineProgress)
    values = range(3)
    assert progress(values, desc="x", disable=True) is values
    with pytest.raises(ValueError, match="interval"):
        LineProgress(values, desc="x", total=3, unit="it", interval=0)


def test_epoch_line_shows_moving_loss_terms_and_speed(caplog):
    from tfmmrec.training.trainer import EpochLine

    caplog.set_level(logging.INFO, logger="tfmmrec.training.trainer")
    line = EpochLine(epochs=10, examples_per_epoch=1000)
    line.on_epoch_begin(2)
    # in the order TFRS logs them: its metrics, then the loss, which is shown first
    line.on_epoch_end(2, {"alignment_loss": 1.204, "ranking_loss": 0.5, "loss": 4.15234,
                          "regularization_loss": 0.0, "total_loss": 4.15234})
    message = caplog.records[-1].getMessage()
    assert message.startswith("epoch 3/10: loss 4.1523, alignment_loss 1.2040, "
                              "ranking_loss 0.5000 (")
    assert message.endswith(" examples/s)") and "total_loss" not in message
    assert "regularization_loss" not in message


def test_long_runs_log_about_ten_epoch_lines_including_first_and_last(caplog):
    from tfmmrec.training.trainer import EpochLine

    caplog.set_level(logging.INFO, logger="tfmmrec.training.trainer")
    line = EpochLine(epochs=25, examples_per_epoch=10)
    for epoch in range(25):
        line.on_epoch_begin(epoch)
        line.on_epoch_end(epoch, {"loss": 1.0})
    logged = [int(r.getMessage().split()[1].split("/")[0]) for r in caplog.records]
    assert logged == [1, 3, 6, 9, 12, 15, 18, 21, 24, 25]


@pytest.mark.parametrize("command", ["catalog", "train"])
def test_sigterm_is_ctrl_c_for_a_writing_command_and_the_default_for_train(tmp_path, command):
    """``kill`` (systemd, Kubernetes) during ``catalog add`` left a hidden temp version and no
    word: a writing command now takes SIGTERM as Ctrl-C (temp removed, one line, status 143);
    training keeps the default (a cluster's workers and TF's preemption handling rely on it)."""
    target = tmp_path / "models" / "m" / "2"
    result = run_python(f"""
        import os, pathlib, signal, time
        from tfmmrec import cli
        from tfmmrec.files import atomic_path

        def write_then_get_killed(*args):
            with atomic_path({str(target)!r}, directory=True) as tmp:
                (pathlib.Path(tmp) / "saved_model.pb").parent.mkdir(parents=True)
                (pathlib.Path(tmp) / "saved_model.pb").write_bytes(b"x")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            return 0

        cli._catalog = write_then_get_killed
        if {command!r} == "train":
            import tfmmrec.pipeline
            tfmmrec.pipeline.train = write_then_get_killed
            code = cli.main(["train"])
        else:
            code = cli.main(["catalog", "add", "--model-base-path", "m", "--items", "x"])
        print("exit", code)
    """)
    leftovers = list((tmp_path / "models" / "m").iterdir())
    if command == "catalog":
        assert result.stdout.splitlines() == ["exit 143"], result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("interrupted: the new version")
        assert leftovers == []
    else:
        assert result.returncode == -signal.SIGTERM, result.stderr
        assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")
