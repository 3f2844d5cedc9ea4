"""A server that loads and unloads ScaNN versions keeps its memory: each unloaded version's
searcher is freed (TF's resource manager kept it for the process's life: ~the index's size per
version, 14 MB for 100,000 × 32 items)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import gc, json, sys
import numpy as np
import tfmmrec  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from tfmmrec._env import register_custom_ops
register_custom_ops(scann=True)
from tfmmrec.export.index import IndexSettings, build
from tfmmrec.serving.registry import load_servable

path, free = sys.argv[1], sys.argv[2] == "free"
vectors = np.random.default_rng(0).standard_normal((60_000, 32)).astype(np.float32)
index = build(vectors, None, IndexSettings(kind="scann", max_k=10))
module = tf.Module()
module.index = index
module.search = tf.function(lambda q: {"scores": index(q, k=10)[0]},
                            input_signature=[tf.TensorSpec([None, 32], tf.float32)])
tf.saved_model.save(module, path, signatures={"serving_default": module.search},
                    options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
del module, index
gc.collect()

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

query = tf.random.normal([2, 32])
sizes = []
for version in range(10):
    servable = load_servable("m", version, __import__("pathlib").Path(path))
    servable.signatures["serving_default"](query)
    if free:
        servable.release()
    else:  # what release did before: drop the Python objects only
        servable.signatures, servable._loaded = {}, None
    del servable
    gc.collect()
    sizes.append(rss_mb())
print("SIZES " + json.dumps(sizes))
"""


def growth(tmp_path, mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / mode), mode],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sizes = json.loads(done.stdout.split("SIZES ", 1)[1])
    return sizes[-1] - sizes[3]  # after the allocator's first rounds


@pytest.mark.slow
def test_unloaded_scann_versions_free_their_searchers(tmp_path):
    kept = growth(tmp_path, "keep")
    freed = growth(tmp_path, "free")
    # 6 cycles of a ~8 MB index: kept grows by about 6 indexes, freed stays level
    assert kept > 30, f"the check cannot see the leak it guards against (+{kept:.0f} MB)"
    assert freed < 10, f"memory grew by {freed:.0f} MB over 6 load/unload cycles"


def test_release_frees_the_searchers_once_no_request_is_in_flight(tiny_exports,
                                                                       monkeypatch):
    from tfmmrec.export.index import scann
    from tfmmrec.serving.registry import load_servable

    freed = []
    original = scann.free_searchers
    monkeypatch.setattr(scann, "free_searchers", lambda loaded: freed.append(original(loaded)))
    servable = load_servable("m", 1, tiny_exports.scann)
    servable.enter()  # two requests still running when the unload timed out
    servable.enter()
    servable.release()
    servable.exit()
    assert freed == [] and servable.signatures == {}
    servable.exit()  # the last one frees the searchers
    assert len(freed) == 1 and freed[0] >= 1  # the served index (and text search's, if any)
    servable = load_servable("m", 1, tiny_exports.scann)
    servable.release()  # idle: at once
    assert len(freed) == 2
    servable.enter()  # (a servable is never entered after release; nothing left to free)
    servable.exit()
    assert len(freed) == 2
    brute = load_servable("m", 2, tiny_exports.brute_force)
    brute.release()  # no ScaNN ops: nothing to free
    assert len(freed) == 2
