"""Shared fixtures: ../shared discovery (skip cleanly without it), tiny configs and demo data.

Expensive fixtures are session-scoped so the suite builds the demo catalogue and tiny towers once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tfmmrec  # noqa: F401  (selects Keras 2 before anything imports TensorFlow)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TFMMREC_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path inside ../shared, skipping the test when it is absent (a user's fresh clone)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared ({path} not found)")
    return path


def pytest_collection_modifyitems(config, items):
    if SHARED.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs ../shared ({SHARED} not found)")
    for item in items:
        if "needs_shared" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return shared_path()


@pytest.fixture(scope="session")
def audio_samples_dir() -> Path:
    return shared_path("data", "audio-samples")
