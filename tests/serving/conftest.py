"""Serving fixtures: the session's tiny model exported twice (BruteForce, ScaNN), and a server.

The tiny model (``tiny_trained`` in tests/conftest.py) has all three modalities, so every
signature (serving_default, recommend, embed_query, query_text/image/audio) is exercised.
"""

from __future__ import annotations

import json
import shutil
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfmmrec.files import atomic_path
from tfmmrec.serving.client import ServingClient
from tfmmrec.serving.registry import ServedModel
from tfmmrec.serving.server import ModelServer, ServerOptions

MODEL = "tfmmrec"
SCANN_MODEL = "tfmmrec-scann"
MAX_REQUEST_BYTES = 1 << 20
EXPORT_OVERRIDES = ["export.k=5", "export.max_k=20"]


@dataclass
class TinyExports:
    """The two exported versions and query content that decodes."""

    brute_force: Path
    scann: Path
    user_ids: list[str]
    texts: list[str]
    image: bytes
    audio: bytes
    default_k: int
    max_k: int


def sample_png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    return tf.io.encode_png(pixels).numpy()


def sample_wav(seconds: float = 0.4, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t)[:, None]
    return tf.audio.encode_wav(wave, rate).numpy()


@pytest.fixture(scope="session")
def tiny_exports(tiny_config, tiny_trained, tmp_path_factory) -> TinyExports:
    """The session's tiny model (tests/conftest.py) exported as BruteForce (1) and ScaNN (2)."""
    from tfmmrec import pipeline
    from tfmmrec.config import load_config

    store = tmp_path_factory.mktemp("serving-exports")
    config = load_config(tiny_config, [f"export.base_dir={store}", *EXPORT_OVERRIDES])
    workspace = tiny_trained.workspace
    brute_force, scann = (pipeline.export(config, model=tiny_trained.model, workspace=workspace,
                                          index=kind) for kind in ("brute_force", "scann"))
    return TinyExports(brute_force, scann, [str(u) for u in workspace.user_ids[:5]],
                       [str(t) for t in workspace.dataset.catalog.texts[:3]], sample_png(),
                       sample_wav(), config.export.k, config.export.max_k)


def install_version(source: Path, base: Path, version: int) -> Path:
    """Copy an export into ``base/<version>`` the way ``tfmmrec export`` writes: atomically."""
    final = base / str(version)
    with atomic_path(final, directory=True) as tmp:
        shutil.copytree(source, tmp)
    return final


@pytest.fixture(scope="session")
def in_process(tiny_exports):
    """The exports loaded in this process: the reference every served answer must equal."""
    from tfmmrec.export.loader import ExportedModel

    return {MODEL: ExportedModel(tiny_exports.brute_force),
            SCANN_MODEL: ExportedModel(tiny_exports.scann)}


@pytest.fixture(scope="session")
def server(tiny_exports, tmp_path_factory):
    """Two models (BruteForce and ScaNN exports) on free loopback ports; always shut down.

    Warmup replay is off here and tested on its own (test_warmup.py), so a bad warmup record
    fails that test with its own message instead of every test in the package.
    """
    base = tmp_path_factory.mktemp("served")
    install_version(tiny_exports.brute_force, base / MODEL, 1)
    install_version(tiny_exports.scann, base / SCANN_MODEL, 1)
    models = [ServedModel(MODEL, base / MODEL), ServedModel(SCANN_MODEL, base / SCANN_MODEL)]
    options = ServerOptions(port=0, rest_port=0, num_threads=2, poll_seconds=0,
                            max_request_bytes=MAX_REQUEST_BYTES, warmup=False)
    with ModelServer(models, options) as running:
        yield running


def rest_predict(server, body: dict | bytes, path: str = f"/v1/models/{MODEL}:predict"):
    """``(http_status, parsed JSON)`` for a POST to the REST port."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=data,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def still_serving(server, tiny_exports):
    """After each bad request, a good one must still succeed on both front ends."""
    yield
    with ServingClient(f"127.0.0.1:{server.port}", MODEL, timeout=30) as client:
        assert client.recommend(tiny_exports.user_ids[:1])["item_ids"].shape[0] == 1
    status, payload = rest_predict(server, {"inputs": {"user_id": tiny_exports.user_ids[:1]}})
    assert status == 200, payload


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
