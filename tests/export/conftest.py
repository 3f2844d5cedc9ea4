"""Export fixtures: the session's tiny model exported once per index kind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from tfmmrec import pipeline
from tfmmrec.config import load_config

# Version numbers follow this order: brute_force 1, scann 2, partitioned 3.
EXPORT_KINDS = ("brute_force", "scann", "partitioned")


@pytest.fixture(scope="session")
def exported(tiny_trained, tiny_config, tmp_path_factory):
    """``(config, {kind: version_dir})``: the tiny model exported with every index kind."""
    config = load_config(tiny_config, [f"export.base_dir={tmp_path_factory.mktemp('exports')}"])
    versions = {kind: pipeline.export(config, model=tiny_trained.model,
                                      workspace=tiny_trained.workspace, index=kind)
                for kind in EXPORT_KINDS}
    return config, versions


@pytest.fixture(scope="session")
def items(tiny_demo_dir) -> pd.DataFrame:
    """The tiny demo catalogue's items table, as catalogue-update tests read and rewrite it."""
    return pd.read_csv(tiny_demo_dir / "items.csv", dtype=str, keep_default_na=False)


def private_copy(version: Path, root: Path) -> Path:
    """A model folder under ``root`` holding a copy of ``version`` as version 1, for a test
    that updates it."""
    model_dir = root / "models" / "tfmmrec"
    shutil.copytree(version, model_dir / "1")
    return model_dir
