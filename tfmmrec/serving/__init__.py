"""Serving: query exported models over TF Serving's gRPC/REST APIs, or serve them locally.

``ServingClient`` talks to ``tensorflow_model_server`` and to ``tfmmrec serve`` alike;
``ModelServer`` is the protocol-compatible local server behind ``tfmmrec serve``. Both load
lazily so that ``tfmmrec --help`` does not import TensorFlow.
"""

_LAZY = {
    "ServingClient": "tfmmrec.serving.client",
    "ServingRequestError": "tfmmrec.serving.client",
    "ModelServer": "tfmmrec.serving.server",
    "ServerOptions": "tfmmrec.serving.server",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfmmrec.serving' has no attribute {name!r}")
