"""Tests for tfmmrec._env: ``import tfmmrec`` selects Keras 2 first, or says exactly what to do.

Which Keras TensorFlow uses is fixed per process, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import types

import pytest

from tfmmrec._env import KERAS3_MESSAGE, _LibraryRecordsOnRoot, register_custom_ops


def run_python(code: str, **env: str | None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; ``env`` values of None unset the variable."""
    environment = dict(os.environ)
    environment.pop("TF_USE_LEGACY_KERAS", None)
    for key, value in env.items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environment,
                          capture_output=True, text=True, timeout=300)


def test_import_tfmmrec_sets_legacy_keras_without_loading_tensorflow():
    result = run_python("""
        import os, sys
        import tfmmrec
        print(os.environ["TF_USE_LEGACY_KERAS"], "tensorflow" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "False"]


def test_tensorflow_imported_after_tfmmrec_uses_keras2_even_if_env_said_0():
    result = run_python("""
        import tfmmrec
        import tensorflow as tf
        print(tf.keras.Model.__module__)
    """, TF_USE_LEGACY_KERAS="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("tf_keras.")


def test_tensorflow_imported_first_but_keras_untouched_still_gets_keras2():
    result = run_python("""
        import tensorflow as tf
        import tfmmrec
        from tfmmrec._env import keras2_active
        print(keras2_active())
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_tensorflow_imported_first_stays_on_keras2_after_keras_nlp_loads():
    """The usual notebook order: ``import tensorflow.keras`` (KerasNLP's) used to resolve to
    Keras 3's folder and rebind ``tf.keras`` mid-session."""
    result = run_python("""
        import tensorflow as tf
        import tfmmrec
        import keras_nlp
        from tensorflow.keras import layers
        print(tf.keras.Model.__module__.split(".")[0], layers.Dense.__module__.split(".")[0])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "tf_keras tf_keras"


def test_keras3_already_live_raises_environment_setup_error_saying_what_to_do():
    result = run_python("""
        import tensorflow as tf
        tf.keras.layers
        try:
            import tfmmrec
        except Exception as exc:
            print(type(exc).__name__)
            print(exc)
        else:
            print("no error")
    """)
    assert result.returncode == 0, result.stderr
    name, message = result.stdout.strip().split("\n", 1)
    assert name == "EnvironmentSetupError"
    assert message == KERAS3_MESSAGE
    assert "import tfmmrec before tensorflow" in message
    assert "TF_USE_LEGACY_KERAS=1" in message


def test_register_custom_ops_registers_scann_and_tokenizer_ops():
    from tensorflow.python.framework import op_def_registry

    register_custom_ops(scann=True)
    register_custom_ops(scann=True)  # idempotent
    assert op_def_registry.get("Scann>ScannSearchBatched") is not None
    assert op_def_registry.get("FastWordpieceTokenizeWithOffsets") is not None


def _root_record(path, level: int = logging.WARNING, name: str = "root") -> logging.LogRecord:
    return logging.LogRecord(name, level, str(path), 1, "x", None, None)


def test_root_filter_drops_a_noisy_librarys_records_below_error_and_sees_late_imports(
        tmp_path, monkeypatch):
    """``quiet_output``'s root filter keeps the folders it found between records: a library
    imported (or removed) after its first record must still be decided by where it is now."""
    library = tmp_path / "site-packages" / "apache_beam"
    inside = library / "io" / "gcp" / "bigquery.py"
    monkeypatch.delitem(sys.modules, "apache_beam", raising=False)
    keep = _LibraryRecordsOnRoot().filter
    assert keep(_root_record(inside))  # not imported: nobody's library folder yet

    beam = types.ModuleType("apache_beam")
    beam.__file__ = str(library / "__init__.py")
    monkeypatch.setitem(sys.modules, "apache_beam", beam)
    assert not keep(_root_record(inside))
    assert keep(_root_record(inside, logging.ERROR))
    assert keep(_root_record(inside, name="apache_beam.io.gcp"))  # its own logger's level rules
    assert keep(_root_record(tmp_path / "me" / "script.py"))
    assert keep(_root_record(tmp_path / "src" / "apache_beam" / "mine.py"))  # named like it
    assert keep(_root_record(tmp_path / "site-packages" / "apache_beam_extra" / "x.py"))

    monkeypatch.delitem(sys.modules, "apache_beam")
    assert keep(_root_record(inside))


SCANN_INDEX_BUILD = """
    import numpy as np
    from scann.scann_ops.py import scann_ops

    items = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    items[:5] = 0  # zero-norm centroids: gmm_utils' warning
    searcher = scann_ops.builder(db=items, num_neighbors=5, distance_measure="dot_product").tree(
        num_leaves=20, num_leaves_to_search=5, training_sample_size=300).score_ah(2).reorder(
        20).build()
    searcher.search(items[7])
    os.write(2, b"a C-level line of the user's own\\n")
    print("a Python line of the user's own", file=sys.stderr)
"""
SCANN_LINES = ("absl::InitializeLog", "partitioner_factory_base.cc", "gmm_utils.cc")


QUIET_SETUPS = {
    "quiet_output, then tensorflow": "import tfmmrec\ntfmmrec.quiet_output()\nimport tensorflow\n",
    "tensorflow, then quiet_output": "import tensorflow\nimport tfmmrec\ntfmmrec.quiet_output()\n",
    "import alone, tfmmrec first": "import tfmmrec\nimport tensorflow\n",
    "import alone, tensorflow first": "import tensorflow\nimport tfmmrec\n",
}


@pytest.mark.parametrize("order", list(QUIET_SETUPS))
def test_scanns_absl_lines_stay_off_stderr_and_nothing_else(order):
    """In Python, as on the command line: ScaNN's index builder logs through absl straight to
    descriptor 2 (no variable silences it). Whenever TensorFlow loads, before or after
    ``quiet_output()``, those lines go; so they do for a script or notebook that never calls
    it (the import's errors-only threshold, TF's C++ level 2, holds for absl too). The user's
    own lines, C or Python, still show."""
    result = run_python("import os, sys\n" + QUIET_SETUPS[order]
                        + textwrap.dedent(SCANN_INDEX_BUILD), TF_CPP_MIN_LOG_LEVEL=None)
    assert result.returncode == 0, result.stderr
    for line in SCANN_LINES:
        assert line not in result.stderr, result.stderr
    assert "a C-level line of the user's own" in result.stderr
    assert "a Python line of the user's own" in result.stderr


@pytest.mark.parametrize("order", ["verbose first", "tensorflow first"])
def test_verbose_shows_the_native_lines_the_import_would_hide(order):
    """``--verbose`` (``quiet_output(verbose=True)``) undoes the import's errors-only default,
    whether TensorFlow loads before or after it."""
    setup = ("import tfmmrec\ntfmmrec.quiet_output(verbose=True)\nimport tensorflow\n"
             if order == "verbose first" else
             "import tfmmrec\nimport tensorflow\ntfmmrec.quiet_output(verbose=True)\n")
    result = run_python("import os, sys\n" + setup + textwrap.dedent(SCANN_INDEX_BUILD),
                        TF_CPP_MIN_LOG_LEVEL=None, GLOG_minloglevel=None)
    assert result.returncode == 0, result.stderr
    assert "partitioner_factory_base.cc" in result.stderr


def test_a_tf_cpp_min_log_level_the_user_set_keeps_the_native_lines():
    """The user's own setting wins (and the lines the test above removes do exist)."""
    result = run_python("import os, sys\nimport tfmmrec\ntfmmrec.quiet_output()\n"
                        + textwrap.dedent(SCANN_INDEX_BUILD), TF_CPP_MIN_LOG_LEVEL="0")
    assert result.returncode == 0, result.stderr
    for line in SCANN_LINES:
        assert line in result.stderr


def test_after_import_runs_once_now_or_right_after_the_import(monkeypatch):
    from tfmmrec._env import _AfterImport, after_import

    calls = []
    after_import("json", lambda: calls.append("now"))  # imported already
    assert calls == ["now"]
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    after_import("colorsys", lambda: calls.append(sys.modules["colorsys"].__name__))
    import importlib.util

    importlib.util.find_spec("colorsys")  # a look-up imports nothing: the hook waits
    assert calls == ["now"]
    import colorsys  # noqa: F401

    assert calls == ["now", "colorsys"]
    assert not any(isinstance(f, _AfterImport) for f in sys.meta_path)


def test_quiet_output_holds_in_an_interactive_session():
    """A notebook kernel is interactive: TensorFlow's get_logger() set its logger to INFO
    on first use, after quiet_output had set ERROR ("INFO:tensorflow:Assets written to" in
    every export cell of the notebooks)."""
    result = run_python("""
        import sys
        sys.ps1 = ">>> "  # what an interactive shell or a Jupyter kernel defines
        import tfmmrec
        tfmmrec.quiet_output()
        import tensorflow as tf
        tf.get_logger().info("an info line")
        tf.get_logger().error("an error line")
        """)
    assert result.returncode == 0, result.stderr
    assert "an info line" not in result.stdout + result.stderr
    assert "an error line" in result.stdout + result.stderr
