"""tfmmrec: multimodal two-tower recommendation and cross-modal retrieval on TFRS.

Importing the package first selects Keras 2 (``TF_USE_LEGACY_KERAS=1``) so that TFRS,
``hub.KerasLayer`` and KerasNLP share one Keras; the public API below loads lazily so that
``import tfmmrec`` (and ``tfmmrec --help``) stay fast.
"""

from tfmmrec._env import configure_keras, quiet_output, show_progress

configure_keras()

from tfmmrec.config import Config, load_config  # noqa: E402
from tfmmrec.errors import (  # noqa: E402
    ConfigError,
    DataError,
    ExportError,
    ServingError,
    TfmmrecError,
    TrainingError,
)

__version__ = "0.1.0"

# ``export_model``, not ``export``: the ``tfmmrec.export`` subpackage would shadow a function of
# that name as soon as any of its modules is imported.
_LAZY = {
    "train": "tfmmrec.pipeline",
    "evaluate": "tfmmrec.pipeline",
    "export_model": ("tfmmrec.pipeline", "export"),
    "restore": "tfmmrec.pipeline",
    "load_dataset": "tfmmrec.data.dataset",
    "build_demo_dataset": "tfmmrec.data.demo",
    "RetrievalModel": "tfmmrec.models.retrieval",
    "class_reference": "tfmmrec.references",
}

__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "ExportError",
    "ServingError",
    "TfmmrecError",
    "TrainingError",
    "load_config",
    "quiet_output",
    "show_progress",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name] if isinstance(_LAZY[name], tuple) else (_LAZY[name], name)
        return getattr(importlib.import_module(module), attribute)
    hint = " (did you mean tfmmrec.export_model? tfmmrec.export is its module)" \
        if name == "export" else ""
    raise AttributeError(f"module 'tfmmrec' has no attribute {name!r}{hint}")


def __dir__() -> list[str]:
    """The public names, lazy ones included (``dir(tfmmrec)``, tab completion)."""
    return sorted({*globals(), *__all__})
