"""``"module:QualName"`` references: how a class or function named in a config, a worker's job
or a modality spec is found again in another process (a restore, a CLI command, a Beam
worker). One format and one importer for all of them."""

from __future__ import annotations

import importlib
import re
import sys
from typing import Any

from tfmmrec.errors import ConfigError

REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def class_reference(cls: type) -> str:
    """``"module:QualName"`` of ``cls`` (``tfmmrec.references.import_reference`` reads it). A
    class of a module run as ``python -m package.module`` is named by that module, which other
    processes can import, not by ``__main__``."""
    module = cls.__module__
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = getattr(spec, "name", None) or module
    return f"{module}:{cls.__qualname__}"


def import_reference(reference: str) -> Any:
    """The object ``reference`` (``"module:QualName"``) names, its module imported if need be.
    Raises ``ImportError``/``AttributeError`` as importing does; callers say which field."""
    module, _, qualname = reference.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def import_or_refuse(reference: str, what: str, where: str, remedy: str) -> Any:
    """:func:`import_reference`, any failure a one-line ``ConfigError``: ``"{what} cannot be
    imported in {where} (ExceptionType: message): {remedy}"``."""
    try:
        return import_reference(reference)
    except Exception as exc:  # any import failure: say which field or spec
        raise ConfigError(f"{what} cannot be imported in {where} ({type(exc).__name__}: "
                          f"{exc}): {remedy}") from None


def only_this_process(reference: str) -> str | None:
    """Why no other process can import ``reference`` (a class defined inside a function, or in
    an interactive ``__main__``: a notebook, ``python -c``), or None."""
    module, _, qualname = reference.partition(":")
    if "<locals>" in qualname:
        return "defined in a function"
    if module == "__main__" and not getattr(sys.modules.get("__main__"), "__file__", None):
        return "defined interactively"
    return None
