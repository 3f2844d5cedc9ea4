"""Batch jobs on Apache Beam: ``tfmmrec prepare`` and ``tfmmrec encode`` on any Beam runner.

The local commands (a process pool, one machine) stay the default; with ``--runner NAME`` the same
work runs as a Beam pipeline on Dataflow, Flink, Spark or Beam's local FnApiRunner, writing the
same files. Apache Beam is an optional extra (``pip install 'tfmmrec[beam]'``): nothing outside
this package imports it, and this module itself does not, so ``import tfmmrec.beam`` is free.
"""

from __future__ import annotations

from types import ModuleType

from tfmmrec.errors import ConfigError

EXTRA = "tfmmrec[beam]"


def require_beam() -> ModuleType:
    """``apache_beam``, or a ``ConfigError`` naming the extra that installs it."""
    try:
        import apache_beam
    except ImportError as exc:
        raise ConfigError(f"--runner needs Apache Beam, which is not installed ({exc}): "
                          f"pip install '{EXTRA}' (or run without --runner: the local "
                          "path needs no Beam)") from None
    return apache_beam
