"""Synthetic dataset folders the benchmarks build once and reuse: a folder counts as built
only when its ``.complete`` stamp matches (written last), so an interrupted build is redone."""

from __future__ import annotations

import shutil
from pathlib import Path


def reuse_or_reset(root: Path, stamp: str, *subfolders: str) -> bool:
    """True when ``root`` was completely built with ``stamp``; otherwise ``root`` is emptied,
    created with ``subfolders``, and False is returned (the caller builds, then ``mark_built``)."""
    marker = root / ".complete"
    if marker.is_file() and marker.read_text() == stamp:
        return True
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for name in subfolders:
        (root / name).mkdir()
    return False


def mark_built(root: Path, stamp: str) -> Path:
    (root / ".complete").write_text(stamp)
    return root
