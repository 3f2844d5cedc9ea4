"""Environment set-up, run first by ``import tfmmrec``: Keras 2 for TFRS, custom ops for loading.

TFRS and ``hub.KerasLayer`` need Keras 2 (``tf-keras``). TensorFlow picks the Keras version the
first time ``tf.keras`` is touched, from ``TF_USE_LEGACY_KERAS``; so the variable must be set
before that, and a process that already runs Keras 3 cannot be switched back.
"""

from __future__ import annotations

import os
import sys

from tfmmrec.errors import EnvironmentSetupError

KERAS3_MESSAGE = (
    "TensorFlow was already imported with Keras 3, but tfmmrec (like TFRS and hub.KerasLayer) "
    "needs Keras 2 (tf-keras). Fix: import tfmmrec before tensorflow, or set "
    "TF_USE_LEGACY_KERAS=1 in the environment before starting Python (in a notebook: "
    "restart the kernel and run `import tfmmrec` first)."
)


def configure_keras() -> None:
    """Select Keras 2 before TensorFlow loads; raise if Keras 3 is already live."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("TF_USE_LEGACY_KERAS") not in ("1", "true", "True"):
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    if "tensorflow" in sys.modules and not keras2_active():
        raise EnvironmentSetupError(KERAS3_MESSAGE)


def keras2_active() -> bool:
    """True when ``tf.keras`` resolves to tf-keras (Keras 2)."""
    import tensorflow as tf

    return tf.keras.Model.__module__.startswith("tf_keras")


def register_custom_ops(scann: bool = True) -> None:
    """Register the ops that exported SavedModels use (text tokenizer ops, ScaNN search ops).

    ``tf.saved_model.load`` fails on an unregistered op, so loaders call this first. Imports are
    idempotent, so calling it again is free.
    """
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops KerasNLP emits)

    if scann:
        import scann as _scann  # noqa: F401  (registers the Scann>ScannSearch* ops)
