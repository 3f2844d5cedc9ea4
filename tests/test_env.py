"""Tests for tfmmrec._env: ``import tfmmrec`` selects Keras 2 first, or says exactly what to do.

Which Keras TensorFlow uses is fixed per process, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tfmmrec._env import KERAS3_MESSAGE, register_custom_ops


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
