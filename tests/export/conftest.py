"""Export fixtures: the session's tiny model exported once per index kind."""

from __future__ import annotations

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
