"""Apache Beam is optional: nothing but ``--runner`` needs it, and without it the error says so.

These tests run whether or not Beam is installed.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO
from tfmmrec import cli


def test_default_and_serving_paths_never_import_beam():
    code = ("import sys, tfmmrec, tfmmrec.cli, tfmmrec.pipeline, tfmmrec.export.loader, "
            "tfmmrec.serving.cli, tfmmrec.towers.features, tfmmrec.data.tfrecords, tfmmrec.beam\n"
            "tfmmrec.cli.build_parser()\n"
            "assert 'apache_beam' not in sys.modules, 'apache_beam was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=300)


def test_runner_without_beam_is_a_clear_error_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # as if not installed
    monkeypatch.chdir(tmp_path)  # the demo defaults would build runs/demo-data here
    for command in ("prepare", "encode"):
        code = cli.main([command, "--output", str(tmp_path / command), "--runner",
                         "DataflowRunner", "--temp_location=gs://bucket/tmp"])
        assert code == cli.EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert "--runner needs Apache Beam" in err and "pip install 'tfmmrec[beam]'" in err
        assert not (tmp_path / command).exists()
    assert not (tmp_path / "runs").exists()  # failed before building any data
