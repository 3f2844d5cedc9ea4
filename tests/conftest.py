"""Shared fixtures: ../shared discovery (skip cleanly without it), tiny configs and demo data.

Expensive fixtures are session-scoped so the suite builds the demo catalogue and tiny towers once.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tfmmrec  # noqa: F401  (selects Keras 2 before anything imports TensorFlow)
from tfmmrec.config import Config, DemoConfig, load_config
from tfmmrec.data.demo import build_demo_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TFMMREC_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path inside ../shared, skipping the test when it is absent (a user's fresh clone)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared ({path} not found)")
    return path


# Under pytest-xdist with `--dist loadfile` (`make test`) each work unit runs on one worker: a
# test file, so its module fixtures are built once, except files sharing an expensive session
# fixture, which form one unit so that one worker alone builds it. (xdist's own `loadgroup` does
# not group under pytest 9, which no longer reads the node ids it rewrites.)
XDIST_UNITS = {
    "tests/serving/": "serving",  # tiny_exports and server (tests/serving/conftest.py)
    # `exported`: the tiny model exported with every index kind (tests/export/conftest.py)
    "tests/export/test_export.py": "exported",
    "tests/export/test_op_audit.py": "exported",
    "tests/export/test_text_search.py": "exported",
    # `demo_command`: one `tfmmrec demo` in a fresh process (below)
    "tests/test_output.py": "demo",
    "tests/test_cli.py": "demo",
}


def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((unit for prefix, unit in XDIST_UNITS.items()
                         if path.startswith(prefix)), path)

    return FileScheduling(config, log)


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


# --- tiny configs, data and a trained model, built once per session ---------------------------

# Towers small enough that encoding the tiny catalogue and two epochs take a few seconds.
TINY_TOWERS = (
    "text.hidden_dim=16", "text.num_layers=1", "text.num_heads=2", "text.intermediate_dim=32",
    "text.sequence_length=16",
    "image.image_size=32", "image.cnn_filters=[8]",
    "audio.max_seconds=1.0", "audio.cnn_filters=[8]",
    "model.embedding_dim=16",
    "train.epochs=2", "train.batch_size=32", "train.verbose=0",
    # resume tests interrupt after an epoch: back up every one (tests/training/test_trainer.py
    # checks the periodic default)
    "train.backup_seconds=0",
    "eval.ks=[10,20]",
)
TINY_DEMO = DemoConfig(num_items=80, num_users=40, interactions_per_user=8, seed=0)


def derive_config(base: Config, root: Path, *overrides: str) -> Config:
    """``base`` writing its run and exports under ``root`` (data and encoder cache stay shared)."""
    return load_config(base, [f"train.output_dir={root / 'run'}",
                              f"export.base_dir={root / 'models'}", *overrides])


@pytest.fixture(scope="session")
def tiny_demo_dir(tmp_path_factory) -> Path:
    """The generated demo catalogue at tiny size (80 items, 40 users, every modality)."""
    return build_demo_dataset(tmp_path_factory.mktemp("tiny-data") / "demo", TINY_DEMO)


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory, tiny_demo_dir) -> Config:
    """Tiny towers over the tiny demo folder; run, cache and exports in a session temp dir."""
    root = tmp_path_factory.mktemp("tiny-run")
    return load_config(None, [*TINY_TOWERS, f"data.path={tiny_demo_dir}",
                              f"train.cache_dir={root / 'cache'}",
                              f"train.output_dir={root / 'run'}",
                              f"export.base_dir={root / 'models'}"])


@pytest.fixture(scope="session")
def tiny_workspace(tiny_config):
    """Data, split, encoders and cached features for ``tiny_config`` (read-only for tests)."""
    from tfmmrec import pipeline

    return pipeline.prepare(tiny_config, progress=False)


@pytest.fixture(scope="session")
def tiny_trained(tiny_config, tiny_workspace):
    """A ``TrainResult`` of two epochs on the tiny workspace (tests must not train it further)."""
    from tfmmrec import pipeline

    return pipeline.train(tiny_config, workspace=tiny_workspace, progress=False)


# --- `tfmmrec demo` as `make demo` runs it, once per session ------------------------------------
TINY_DEMO_COMMAND_CONFIG = """\
data:
  demo: {num_items: 60, num_users: 30, interactions_per_user: 6, seed: 0}
  split: random
text: {hidden_dim: 16, num_layers: 1, num_heads: 2, intermediate_dim: 32, sequence_length: 16}
image: {image_size: 32, cnn_filters: [8]}
audio: {max_seconds: 1.0, cnn_filters: [8]}
model: {embedding_dim: 16}
train: {batch_size: 32}  # the default 20 epochs, as `make demo` runs
eval: {ks: [10, 20]}
"""


def clean_environment() -> dict[str, str]:
    """The user's environment without the log settings the quiet defaults are tested for."""
    env = dict(os.environ)
    for name in ("TF_CPP_MIN_LOG_LEVEL", "GLOG_minloglevel", "PYTHONWARNINGS"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(REPO)
    return env


@dataclasses.dataclass(frozen=True)
class DemoCommand:
    """A finished ``tfmmrec demo --config CONFIG --output ROOT/run`` run from ``ROOT``."""

    result: subprocess.CompletedProcess
    root: Path
    config: Path

    @property
    def run_dir(self) -> Path:
        return self.root / "run"


@pytest.fixture(scope="session")
def demo_command(tmp_path_factory) -> DemoCommand:
    """The demo command in a fresh process with the user's environment, on tiny towers and the
    default 20 epochs: its whole output (stdout + stderr, not a terminal) and its run folder."""
    root = tmp_path_factory.mktemp("demo-command")
    config = root / "tiny.yaml"
    config.write_text(TINY_DEMO_COMMAND_CONFIG)
    result = subprocess.run(
        [sys.executable, "-m", "tfmmrec.cli", "demo", "--config", str(config), "--output",
         str(root / "run")],
        cwd=root, env=clean_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=1200)
    return DemoCommand(result, root, config)
