"""Export: trained towers + a ScaNN/BruteForce index → versioned SavedModels for TF Serving.

The public names load on first use (PEP 562): a client that only needs ``export.loader`` or
``export.warmup`` (``tfmmrec query``) then does not import TFRS, ScaNN and the towers.
"""

import importlib

_PUBLIC = {"build_index": "tfmmrec.export.index",
           "RetrievalServingModule": "tfmmrec.export.module",
           "ServingTowers": "tfmmrec.export.module",
           "next_version": "tfmmrec.export.writer",
           "write_version": "tfmmrec.export.writer"}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
