"""Benchmark: scale-out input and indexing (issue 6).

Section ``input``: a catalogue of poster-sized JPEGs and a distinct audio clip per item (FLAC or
Ogg cuts of the recordings in ../shared/data/audio-samples, or generated audio without it) read
  * from the folder format (decode + resize / resample every item, as the encoder cache does),
  * by ``tfmmrec prepare`` with 1 and with all worker processes (folder → TFRecords),
  * from the TFRecords (parse the pre-decoded items: interleave / parallel map / prefetch),
  * and encoded by a frozen image+audio encoder from each source with a cold cache,
and the training interaction stream from memory (CSV → tf.data) vs from interaction shards.
Items/s, examples/s and CPU utilisation (process CPU time / wall time / cores) for each.

Section ``index``: one million items with synthetic clustered encoder features (MiniLM-,
MobileNetV2- and YAMNet-sized: 384/1280/1024-d, some modalities missing) go through the real
projection + fusion item tower in batches; the embeddings stream to a ``.npy`` memmap on disk;
ScaNN (``tfmmrec.export.index.build_index``) is built from it and saved as a SavedModel. Reports
encode and build time, export size, query throughput, recall@10 against brute force, and the
peak RSS (which must stay under 8 GiB).

    .venv/bin/python benchmarks/scale.py                        # input + index (~15 min on 2 cores)
    .venv/bin/python benchmarks/scale.py --section input --items 1000
    .venv/bin/python benchmarks/scale.py --section index --num-items 1000000

Sections ``beam-prepare`` and ``beam-encode`` (issue 16; need the ``[beam]`` extra): the local
path vs the same job as a Beam pipeline on the local FnApiRunner (multi_processing).
``beam-prepare``: items/s and CPU time per item of ``tfmmrec prepare`` with 2 and 1 workers
(smaller posters and clips than ``input``), runs interleaved local/Beam. ``beam-encode``: a
synthetic text catalogue (10k, 100k, ... items) through a small random-init BERT (``tfmmrec
encode``, locally and on Beam with 2 workers, and the in-memory feature cache ``train`` builds
without it): items/s and peak RSS (driver, largest Beam worker, and the total of driver and
workers, sampled every 0.25 s), each job in a fresh process, with the load average at its end;
``tfmmrec encode`` streams the items table as the CLI does (the cache row loads it).
``beam-driver``: the encode driver's peak RSS after its streamed pass and its vocabulary.
``prepare-cpu``: CPU ms per item of prepare's shard writer in one process (one TF thread), for
comparing versions of the decoding code (``PYTHONPATH`` at another checkout). The README's
figures came from:

    .venv/bin/python benchmarks/scale.py --section beam-prepare --beam-items 10000 \
        --beam-workers 2,1   # its 1-worker half was run as two side-by-side invocations:
    ... --beam-items 10000 --beam-workers 1 --beam-runners local   (and --beam-runners beam)
    .venv/bin/python benchmarks/scale.py --section beam-encode --sizes 10000,100000,1000000 \
        --cache-up-to 1000000
    .venv/bin/python benchmarks/scale.py --section beam-driver --sizes 10000,100000,1000000
    PYTHONPATH=CHECKOUT_OF_f877794 .venv/bin/python benchmarks/scale.py --section prepare-cpu \
        --items 200 --label before
    .venv/bin/python benchmarks/scale.py --section prepare-cpu --items 200 --label after

Prints tables; writes benchmarks/results/scale.json and benchmarks/results/scale.png
(scale_beam.png for the Beam sections).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from synthetic_folders import mark_built, reuse_or_reset

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "scale"
RESULTS = ROOT / "benchmarks" / "results"
SHARED_AUDIO = Path(os.environ.get("TFMMREC_SHARED", ROOT.parent / "shared")) / "data" / \
    "audio-samples"
CORES = os.cpu_count() or 1
GIB = 2**30


class Meter:
    """Wall time and CPU time (this process + finished children) of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.wall
        self.cpu_seconds = _cpu_seconds() - self.cpu
        self.utilisation = self.cpu_seconds / max(self.seconds, 1e-9) / CORES

    def row(self, count: int, unit: str) -> dict:
        return {f"{unit}_per_s": count / self.seconds, "seconds": self.seconds,
                "cpu_seconds": self.cpu_seconds, "cpu_utilisation": self.utilisation,
                unit: count}


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss_gib() -> float:
    """This process's own peak RSS: ``VmHWM`` (reset when a process execs), not ``ru_maxrss``,
    which a child started by ``run_child`` inherits from the benchmark's process at fork time
    (so it had reported the parent's size, which grows with the output it captured, as a floor).
    """
    kib = _status_kib(os.getpid(), "VmHWM:")
    return (kib or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 2**20


# --- section 1: TFRecords vs the folder format ------------------------------------------------


def build_folder(root: Path, num_items: int, users: int, seed: int = 0) -> Path:
    """Posters (600x900 JPEG, q90), one distinct clip per item (a random 5 s cut of a real
    recording re-encoded as FLAC or Ogg Vorbis at its own rate; generated 44.1 kHz audio
    without ../shared), a title and a description each."""
    import pandas as pd
    import soundfile
    from PIL import Image

    if reuse_or_reset(root, f"v2 {num_items}/{users}", "posters", "clips"):
        return root
    rng = np.random.default_rng(seed)
    sources = []
    for path in sorted(SHARED_AUDIO.glob("*")):
        if path.suffix in (".flac", ".ogg", ".mp3", ".wav"):
            wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
            sources.append((wave, rate))
    if not sources:
        t = np.arange(20 * 44100) / 44100
        sources = [(0.3 * np.sin(2 * np.pi * (220 + 55 * i) * t)[:, None].astype(np.float32),
                    44100) for i in range(4)]
    rows = []
    yy, xx = np.mgrid[0:900, 0:600]
    for i in range(num_items):
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-0.2, 0.2, (2, 3))
        pixels = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
        pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "posters" / f"p{i}.jpg", quality=90)
        wave, rate = sources[i % len(sources)]
        start = int(rng.integers(0, max(1, len(wave) - 5 * rate)))
        cut = wave[start:start + 5 * rate] * rng.uniform(0.5, 1.0)
        clip = f"clips/c{i}.{'flac' if i % 2 else 'ogg'}"
        soundfile.write(root / clip, cut, rate)
        rows.append({"item_id": f"i{i:06d}", "title": f"Item {i}",
                     "description": " ".join(rng.choice(WORDS, 30)),
                     "poster": f"posters/p{i}.jpg", "clip": clip})
    pd.DataFrame(rows).to_csv(root / "items.csv", index=False)
    interactions = [{"user_id": f"u{u:05d}", "item_id": f"i{j:06d}"}
                    for u in range(users) for j in rng.choice(num_items, 20, replace=False)]
    pd.DataFrame(interactions).to_csv(root / "interactions.csv", index=False)
    return mark_built(root, f"v2 {num_items}/{users}")


WORDS = np.array(["a", "night", "city", "river", "storm", "light", "garden", "quiet", "music",
                  "machine", "old", "new", "love", "war", "dream", "space", "house", "road",
                  "island", "winter", "summer", "song", "ghost", "king", "child"])


def bench_input(num_items: int, users: int) -> dict:
    import tensorflow as tf

    from tfmmrec import pipeline
    from tfmmrec.config import load_config
    from tfmmrec.data import tfrecords
    from tfmmrec.towers.cache import encode_catalog, encode_records, raw_loader
    from tfmmrec.towers.encoders import build_encoder
    from tfmmrec.training.trainer import dataframe_dataset

    folder = build_folder(OUT / "input-data", num_items, users)
    config = load_config(None, [f"data.path={folder}", "image.image_size=224",
                                "audio.max_seconds=5", "image.cnn_filters=[16,32]",
                                f"train.output_dir={OUT / 'input-run'}", "train.batch_size=1024"])
    dataset = pipeline.resolve_dataset(config)
    catalog = dataset.catalog
    report: dict = {"items": num_items, "image": "600x900 JPEG → 224x224",
                    "audio": "a distinct 5 s FLAC/Ogg clip per item (cut from real recordings, "
                             "22-48 kHz) → 16 kHz mono",
                    "interactions": len(dataset.interactions)}

    # 1. the folder format: what the cache build (and fine-tuning) does for every item
    loaders = {m: raw_loader(catalog, m, {"image_size": 224, "max_seconds": 5.0})
               for m in ("image", "audio")}
    with Meter() as meter:
        for start in range(0, num_items, 32):
            batch = list(range(start, min(start + 32, num_items)))
            for loader in loaders.values():
                loader(batch, [])
    report["folder_decode"] = meter.row(num_items, "items")

    # 2. prepare: folder → shards, one worker and all cores
    for workers in sorted({1, CORES}):
        out = OUT / f"records-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        with Meter() as meter:
            manifest = tfrecords.write_tfrecords(config, out, dataset=dataset, workers=workers,
                                         shards=max(4, 2 * CORES), progress=False)
        report[f"prepare_{workers}_workers"] = meter.row(num_items, "items")
    report["tfrecords_bytes"] = sum(os.path.getsize(f) for t in tfrecords.TABLES
                                    for f in manifest.files(t))

    # 3. reading the pre-decoded items back
    with Meter() as meter:
        for batch in tfrecords.items_dataset(manifest, 32):
            batch["image"].numpy(), batch["audio"]["waveform"].numpy()
    report["tfrecords_read"] = meter.row(num_items, "items")

    # 4. encoding with a cold cache: the work a new or changed encoder costs
    encoders = {m: build_encoder(m, config.tower(m)) for m in ("image", "audio")}
    for source in ("folder", "tfrecords"):
        with Meter() as meter:
            for encoder in encoders.values():
                if source == "folder":
                    encode_catalog(catalog, encoder, None, batch_size=32, image_size=224,
                                   sample_rate=16000, max_seconds=5.0, progress=False)
                else:
                    encode_records(str(manifest.directory), encoder, None,
                                          batch_size=32, progress=False)
        report[f"encode_from_{source}"] = meter.row(num_items, "items")

    # 5. the training interaction stream (input pipeline only, one pass)
    train = dataset.interactions
    batches = len(train) // 1024
    stream = dataframe_dataset(train, 1024, seed=0)
    shards = tfrecords.interactions_dataset(manifest, "train", 1024, seed=0)
    for name, data in (("memory", stream), ("tfrecords", shards)):
        for _ in data.take(2):
            pass  # warm-up: tracing, file open, first shuffle buffer
        with Meter() as meter:
            for batch in data.take(batches):
                batch["item_index"].numpy()
        report[f"interactions_from_{name}"] = meter.row(batches * 1024, "examples")
    report["note"] = ("the folder path decodes in one Python loop (as towers/cache.py does); "
                      "tf.data parallelises parsing and decoding of the shards over all cores")
    for workers in sorted({1, CORES}):  # ~300 MB each; the generated folder is kept for reruns
        shutil.rmtree(OUT / f"records-{workers}", ignore_errors=True)
    del tf
    return report


# --- section 2: one million items -------------------------------------------------------------

FEATURES = {"text": 384, "image": 1280, "audio": 1024}  # MiniLM, MobileNetV2, YAMNet sizes
PRESENT = {"text": 0.95, "image": 0.8, "audio": 0.5}


def synthetic_features(start: int, stop: int, centers: dict, seed: int) -> dict:
    """Encoder features of items [start, stop): cluster centre + noise, some modalities absent
    (a deterministic function of the batch, so nothing of size N is ever held in memory)."""
    rng = np.random.default_rng([seed, start])
    count = stop - start
    cluster = rng.integers(0, len(centers["text"]), count)
    content = {"item_index": np.arange(start, stop, dtype=np.int32)}
    for modality, dim in FEATURES.items():
        noise = rng.standard_normal((count, dim), dtype=np.float32)
        content[modality] = centers[modality][cluster] + 0.7 * noise
        content[f"{modality}_mask"] = (rng.random(count) < PRESENT[modality]).astype(np.float32)
    content["text_mask"][content["text_mask"] + content["image_mask"] + content["audio_mask"]
                         == 0] = 1.0
    return content


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_index(num_items: int, batch: int, queries: int, dim: int) -> dict:
    import tensorflow as tf

    from tfmmrec.config import ScannConfig
    from tfmmrec.export.index import build_index, recall_against_brute_force
    from tfmmrec.towers.item import ItemTower

    OUT.mkdir(parents=True, exist_ok=True)
    report: dict = {"num_items": num_items, "embedding_dim": dim, "batch": batch,
                    "features": FEATURES, "present_fraction": PRESENT}
    rng = np.random.default_rng(0)
    centers = {m: rng.standard_normal((2000, d)).astype(np.float32) for m, d in FEATURES.items()}
    tower = ItemTower(tuple(FEATURES), dim, fusion="concat_mlp", name="item_tower")
    embed = tf.function(lambda content: tower(content, training=False), reduce_retracing=True)
    embed(synthetic_features(0, 2, centers, 0))

    path = OUT / "item_embeddings.npy"
    embeddings = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                           shape=(num_items, dim))
    with Meter() as meter:
        for start in range(0, num_items, batch):
            stop = min(start + batch, num_items)
            embeddings[start:stop] = embed(synthetic_features(start, stop, centers, 0)).numpy()
        embeddings.flush()
    del embeddings
    report["encode"] = {**meter.row(num_items, "items"), "npy_bytes": path.stat().st_size,
                        "peak_rss_gib_after": peak_rss_gib()}
    print(f"  encoded {num_items:,} items in {meter.seconds:.0f} s "
          f"({num_items / meter.seconds:,.0f}/s), peak RSS {peak_rss_gib():.2f} GiB", flush=True)

    items = np.load(path, mmap_mode="r")
    with Meter() as meter:
        index, params = build_index(items, "scann", 100, ScannConfig())
    report["scann_build"] = {"seconds": meter.seconds, "cpu_utilisation": meter.utilisation,
                             "params": params, "peak_rss_gib_after": peak_rss_gib()}
    print(f"  ScaNN built in {meter.seconds:.0f} s {params}", flush=True)

    class Index(tf.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        @tf.function(input_signature=[tf.TensorSpec([None, dim], tf.float32)])
        def search(self, queries):
            scores, ids = self.layer(queries, k=10)
            return {"scores": scores, "item_index": ids}

    saved = OUT / "scann-savedmodel"
    shutil.rmtree(saved, ignore_errors=True)
    with Meter() as meter:
        tf.saved_model.save(Index(index), str(saved), options=tf.saved_model.SaveOptions(
            namespace_whitelist=["Scann"]))
    report["export"] = {"seconds": meter.seconds, "savedmodel_bytes": directory_bytes(saved)}

    # Queries: items' own embeddings plus noise (a user near a taste cluster), unit length.
    picks = np.sort(rng.choice(num_items, queries, replace=False))
    query = np.asarray(items[picks]) + 0.3 * rng.standard_normal((queries, dim)).astype(
        np.float32) / np.sqrt(dim)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    search = tf.function(lambda q: index(q, k=10))
    throughput = {}
    for size in (1, 256):
        search(tf.constant(query[:size]))
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < 10:
            offset = done % (queries - size + 1)
            search(tf.constant(query[offset:offset + size]))
            done += size
        throughput[f"qps_batch_{size}"] = done / (time.perf_counter() - start)
    report["query"] = throughput
    with Meter() as meter:  # chunks keep the exact score matrix small
        recalls = [recall_against_brute_force(index, query[i:i + 50], items, k=10)
                   for i in range(0, queries, 50)]
    report["recall_at_10_vs_brute_force"] = float(np.mean(recalls))
    report["recall_queries"] = queries
    report["brute_force_seconds"] = meter.seconds
    report["peak_rss_gib"] = peak_rss_gib()
    report["peak_rss_under_8_gib"] = report["peak_rss_gib"] < 8
    del items
    path.unlink()  # 0.25 GiB of embeddings and 0.3 GiB of SavedModel: measured, not kept
    shutil.rmtree(saved, ignore_errors=True)
    return report


# --- sections 3 and 4: the same jobs on Apache Beam (issue 16) ------------------------------


def build_media_folder(root: Path, num_items: int, seed: int = 0) -> Path:
    """Posters (240x360 JPEG) and a distinct 2 s clip per item (FLAC/Ogg cut from the shared
    recordings, or generated), 5 interactions per 10 items."""
    import pandas as pd
    import soundfile
    from PIL import Image

    if reuse_or_reset(root, f"v1 {num_items}", "posters", "clips"):
        return root
    rng = np.random.default_rng(seed)
    sources = [soundfile.read(path, dtype="float32", always_2d=True)
               for path in sorted(SHARED_AUDIO.glob("*"))
               if path.suffix in (".flac", ".ogg", ".mp3", ".wav")]
    if not sources:
        t = np.arange(10 * 44100) / 44100
        sources = [(0.3 * np.sin(2 * np.pi * (220 + 55 * i) * t)[:, None].astype(np.float32),
                    44100) for i in range(4)]
    yy, xx = np.mgrid[0:360, 0:240]
    rows = []
    for i in range(num_items):
        pixels = rng.uniform(0, 255, 3) + yy[..., None] * rng.uniform(-0.4, 0.4, 3) \
            + xx[..., None] * rng.uniform(-0.4, 0.4, 3)
        pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "posters" / f"p{i}.jpg", quality=90)
        wave, rate = sources[i % len(sources)]
        start = int(rng.integers(0, max(1, len(wave) - 2 * rate)))
        clip = f"clips/c{i}.{'flac' if i % 2 else 'ogg'}"
        soundfile.write(root / clip, wave[start:start + 2 * rate] * rng.uniform(0.5, 1), rate)
        rows.append({"item_id": f"i{i:07d}", "title": f"Item {i}",
                     "description": " ".join(rng.choice(WORDS, 12)),
                     "poster": f"posters/p{i}.jpg", "clip": clip})
    pd.DataFrame(rows).to_csv(root / "items.csv", index=False)
    _write_interactions(root, num_items, rng)
    return mark_built(root, f"v1 {num_items}")


def build_text_folder(root: Path, num_items: int, seed: int = 0) -> Path:
    """A text-only catalogue (title + 12 random words) of ``num_items`` items."""
    import pandas as pd

    if reuse_or_reset(root, f"v1 {num_items}"):
        return root
    rng = np.random.default_rng(seed)
    words = rng.choice(WORDS, (num_items, 12))
    pd.DataFrame({"item_id": [f"i{i:07d}" for i in range(num_items)],
                  "title": [f"Item {i}" for i in range(num_items)],
                  "description": [" ".join(row) for row in words]}).to_csv(
        root / "items.csv", index=False)
    _write_interactions(root, num_items, rng)
    return mark_built(root, f"v1 {num_items}")


def _write_interactions(root: Path, num_items: int, rng) -> None:
    import pandas as pd

    count = max(1000, num_items // 2) if num_items <= 20000 else 10000
    pd.DataFrame({"user_id": [f"u{u:05d}" for u in rng.integers(0, 2000, count)],
                  "item_id": [f"i{i:07d}" for i in rng.integers(0, num_items, count)]}
                 ).drop_duplicates().to_csv(root / "interactions.csv", index=False)


MEDIA_SETTINGS = ["image.image_size=128", "audio.max_seconds=2"]
TEXT_SETTINGS = ["text.hidden_dim=16", "text.num_layers=1", "text.num_heads=2",
                 "text.intermediate_dim=32", "text.sequence_length=16",
                 "train.encode_batch_size=512"]
def beam_local(workers: int) -> list[str]:
    """Beam's local FnApiRunner with ``workers`` worker processes (also for one worker)."""
    return ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


def run_child(task: dict) -> dict:
    """Run one measured job in a fresh process (clean peak RSS of it and its workers)."""
    import subprocess

    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(task)],
                          capture_output=True, text=True, timeout=7200)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"child {task} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class WorkerMemory:
    """Memory of this process and its descendants, sampled every 0.25 s while they run: the
    largest peak RSS (VmHWM) of one descendant, and the peak of the total (the sum of the
    current RSS of this process and every descendant: what the job needs from the machine).

    ``getrusage(RUSAGE_CHILDREN)`` would not do: a forked child's maximum starts at the
    parent's size before it execs a fresh interpreter.
    """

    def __enter__(self):
        import threading

        self.peak_kib, self.total_kib, self.stop = 0, 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        import psutil

        me = psutil.Process()
        while not self.stop.wait(0.25):
            total = _status_kib(me.pid, "VmRSS:")
            for proc in me.children(recursive=True):
                self.peak_kib = max(self.peak_kib, _status_kib(proc.pid, "VmHWM:"))
                total += _status_kib(proc.pid, "VmRSS:")
            self.total_kib = max(self.total_kib, total)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    @property
    def gib(self) -> float:
        return self.peak_kib / 2**20

    @property
    def total_gib(self) -> float:
        return self.total_kib / 2**20


def _status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` memory field in KiB (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def child(task: dict) -> dict:
    """The job itself: prepare or encode, locally or on Beam; its timings and peak RSS."""
    import logging

    if task["job"] == "driver":
        return encode_driver(task)

    from tfmmrec.config import load_config
    from tfmmrec.pipeline import resolve_dataset

    logging.disable(logging.WARNING)
    settings = MEDIA_SETTINGS if task["job"] == "prepare" else TEXT_SETTINGS
    config = load_config(None, [f"data.path={task['folder']}", *settings,
                                f"train.output_dir={OUT / 'beam-run'}"])
    out = task["out"]
    shutil.rmtree(out, ignore_errors=True)
    # `tfmmrec encode` (local or Beam) streams the items table itself, as the CLI does; the
    # other jobs take a loaded dataset
    streamed = task["job"] == "encode" and task["runner"] in ("local", "beam")
    dataset = None
    with Meter() as load:
        if not streamed:
            dataset = resolve_dataset(config)
    rss_after_load = peak_rss_gib()
    with Meter() as meter, WorkerMemory() as worker_memory:
        if task["job"] == "prepare" and task["runner"] == "local":
            from tfmmrec.data.tfrecords import write_tfrecords

            write_tfrecords(config, out, dataset=dataset, workers=task["workers"],
                            shards=task["shards"],
                            progress=False)
        elif task["job"] == "prepare":
            from tfmmrec.beam.prepare import prepare

            prepare(config, out, runner="FnApiRunner", beam_args=beam_local(task["workers"]),
                    dataset=dataset, workers=task["workers"], shards=task["shards"])
        elif task["runner"] == "local":
            from tfmmrec.towers.features import encode

            encode(config, out, progress=False)
        elif task["runner"] == "beam":
            from tfmmrec.beam.encode import encode

            encode(config, out, runner="FnApiRunner", beam_args=beam_local(CORES),
                   workers=CORES)
        else:  # the in-memory feature cache that `train` builds without `tfmmrec encode`
            from tfmmrec.towers.cache import encode_catalog
            from tfmmrec.towers.features import frozen_encoders

            encoder = frozen_encoders(config, dataset)["text"]
            encode_catalog(dataset.catalog, encoder, Path(out), batch_size=512,
                           progress=False)
    workers, total = worker_memory.gib, worker_memory.total_gib
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    shutil.rmtree(out, ignore_errors=True)
    items = len(dataset.catalog) if dataset is not None else task["items"]
    return {**meter.row(items, "items"), "streamed": streamed, "load_seconds": load.seconds,
            "driver_peak_rss_gib": peak_rss_gib(), "driver_rss_after_load_gib": rss_after_load,
            "worker_peak_rss_gib": workers, "total_peak_rss_gib": total,
            "load_average": os.getloadavg(), "output_bytes": size}


def encode_driver(task: dict) -> dict:
    """Peak RSS of what ``tfmmrec encode``'s driver does before encoding, step by step: the
    streamed pass over the items table (checks, digests, unique ids), then the random-init text
    tower's vocabulary (word counts over the whole corpus)."""
    import logging

    from tfmmrec.config import load_config
    from tfmmrec.data.stream import ItemsStream
    from tfmmrec.towers.text import build_vocabulary

    logging.disable(logging.WARNING)
    config = load_config(None, [f"data.path={task['folder']}", *TEXT_SETTINGS])
    stream = ItemsStream(config.data)
    row = {"items": task["items"], "after_imports_gib": peak_rss_gib()}
    with Meter() as meter:
        stream.summary()
    row.update(after_summary_gib=peak_rss_gib(), summary_seconds=meter.seconds)
    with Meter() as meter:
        vocabulary = build_vocabulary(stream.values("text"), config.text.max_vocabulary)
    row.update(after_vocabulary_gib=peak_rss_gib(), vocabulary_seconds=meter.seconds,
               vocabulary=len(vocabulary))
    return row


def bench_encode_driver(sizes: list[int]) -> dict:
    report: dict = {"sizes": {}}
    for size in sizes:
        folder = build_text_folder(OUT / f"beam-text-{size}", size)
        report["sizes"][str(size)] = run_child({"job": "driver", "folder": str(folder),
                                                "items": size})
    return report


def bench_beam_prepare(num_items: int, workers: list[int], runners: list[str],
                       command: str) -> dict:
    """``prepare`` with each worker count on each runner (interleaved: local, Beam, local,
    Beam, so both paths see the same share of a shared machine). Each run is merged into the
    JSON's ``beam_prepare`` as it finishes (runs of other invocations on the same catalogue
    are kept: two invocations may run side by side, e.g. one per runner)."""
    folder = build_media_folder(OUT / f"beam-media-{num_items}", num_items)
    report: dict = {"items": num_items, "workers": CORES,
                    "image": "240x360 JPEG → 128x128", "audio": "2 s FLAC/Ogg → 16 kHz mono",
                    "runner": "FnApiRunner, multi_processing (Beam's local Python runner); "
                              "local: prepare's process pool (1 worker: in-process)",
                    "load_average_start": os.getloadavg()}
    shards = 4 * CORES
    for count in workers:
        for runner in runners:
            print(f"  prepare {num_items} items, {runner}, {count} worker(s)...", flush=True)
            row = run_child({"job": "prepare", "runner": runner, "folder": str(folder),
                             "out": str(OUT / f"beam-prepare-{runner}"), "shards": shards,
                             "workers": count})
            key = runner if count == CORES else f"{runner}_{count}_workers"
            report[key] = row
            _merge_prepare_run(report, key, command)
            print(f"    {row['items_per_s']:.1f} items/s, "
                  f"{1000 * row['cpu_seconds'] / row['items']:.1f} CPU ms/item, load "
                  f"{row['load_average'][0]:.1f}", flush=True)
    return report


def bench_prepare_cpu(num_items: int) -> dict:
    """CPU time per item of ``prepare``'s shard writer in this process with one TF thread (as
    each pool or Beam worker runs it), after a warm-up; load-independent, unlike items/s. Run
    it with ``PYTHONPATH`` at another checkout to compare versions of the decoding code."""
    import tensorflow as tf

    from tfmmrec.config import load_config
    from tfmmrec.data import tfrecords
    from tfmmrec.pipeline import resolve_dataset

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    folder = build_media_folder(OUT / f"beam-media-{num_items}", num_items)
    config = load_config(None, [f"data.path={folder}", *MEDIA_SETTINGS,
                                f"train.output_dir={OUT / 'beam-run'}"])
    dataset = resolve_dataset(config)
    out = OUT / "prepare-cpu"
    shutil.rmtree(out, ignore_errors=True)
    run = tfrecords.plan_prepare(config, str(out), dataset=dataset, workers=1, shards=4)
    jobs = [job for job in run.todo if job["table"] == "items"]
    tfrecords.write_shard({**jobs[0], "items": jobs[0]["items"][:5]})  # warm-up: tracing
    start = time.process_time()
    for job in jobs:
        tfrecords.write_shard(job)
    cpu = time.process_time() - start
    digest = hashlib.sha1()
    for job in jobs:
        digest.update((out / job["file"]).read_bytes())
    shutil.rmtree(out, ignore_errors=True)
    return {"items": num_items, "cpu_ms_per_item": 1000 * cpu / num_items,
            "items_shards_sha1": digest.hexdigest(), "tfmmrec": tfmmrec.__file__,
            "load_average": os.getloadavg()}


def _merge_prepare_run(report: dict, key: str, command: str) -> None:
    path = RESULTS / "scale.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    section = merged.get("beam_prepare", {})
    if section.get("items") != report["items"]:
        section = {}
    commands = section.get("commands", [section["command"]] if "command" in section else [])
    commands += [command] if command not in commands else []
    section.update({k: v for k, v in report.items() if not isinstance(v, dict)})
    section.update({key: report[key], "commands": commands, "command": "; ".join(commands)})
    merged["beam_prepare"] = section
    path.write_text(json.dumps(merged, indent=2, default=str))


def bench_beam_encode(sizes: list[int], cache_up_to: int) -> dict:
    report: dict = {"encoder": "random-init BERT, 1 layer, hidden 16, 16 tokens",
                    "workers": CORES, "batch": 512, "sizes": {}}
    for size in sizes:
        folder = build_text_folder(OUT / f"beam-text-{size}", size)
        rows = {}
        runners = ["local", "beam"] + (["cache"] if size <= cache_up_to else [])
        for runner in runners:
            print(f"  encode {size:,} items, {runner}...", flush=True)
            rows[runner] = run_child({"job": "encode", "runner": runner, "folder": str(folder),
                                      "out": str(OUT / f"beam-encode-{runner}"),
                                      "items": size})
            print(f"    {rows[runner]['items_per_s']:,.0f} items/s, driver "
                  f"{rows[runner]['driver_peak_rss_gib']:.2f} GiB, workers "
                  f"{rows[runner]['worker_peak_rss_gib']:.2f} GiB", flush=True)
        report["sizes"][str(size)] = rows
    return report


PREPARE_RUNS = (("local", "local process pool, {n} workers"),
                ("beam", "Beam FnApiRunner, {n} worker processes"),
                ("local_1_workers", "local, 1 worker (in-process)"),
                ("beam_1_workers", "Beam FnApiRunner, 1 worker process"))
ENCODE_LABELS = {"local": "tfmmrec encode", "beam": "tfmmrec encode --runner",
                 "cache": "feature cache (train)"}


def _total_rss(row: dict) -> float:
    """Peak total RSS (driver + workers); runs before it was sampled: driver + largest worker."""
    return row.get("total_peak_rss_gib",
                   row["driver_peak_rss_gib"] + row["worker_peak_rss_gib"])


def print_beam_tables(report: dict) -> None:
    print_driver_table(report)
    if "beam_prepare" in report:
        r = report["beam_prepare"]
        print(f"\nprepare, {r['items']:,} items ({r['image']}; {r['audio']}):")
        print(f"| {'path':<42} | {'items/s':>8} | {'CPU util':>8} | {'CPU ms/item':>11} | "
              f"{'peak RSS total':>14} | {'load avg':>8} |")
        for key, label in PREPARE_RUNS:
            if key not in r:
                continue
            row = r[key]
            load = row.get("load_average", [float("nan")])[0]
            print(f"| {label.format(n=r['workers']):<42} | {row['items_per_s']:>8.1f} | "
                  f"{100 * row['cpu_utilisation']:>7.0f}% | "
                  f"{1000 * row['cpu_seconds'] / row['items']:>11.1f} | "
                  f"{_total_rss(row):>10.2f} GiB | {load:>8.1f} |")
    if "beam_encode" in report:
        r = report["beam_encode"]
        print(f"\nencode ({r['encoder']}), {r['workers']} workers:")
        print(f"| {'items':>9} | {'path':<23} | {'items/s':>8} | {'CPU ms/item':>11} | "
              f"{'driver peak RSS':>15} | {'worker peak RSS':>15} | {'total peak RSS':>14} |")
        for size, rows in r["sizes"].items():
            for key, row in rows.items():
                workers = (f"{row['worker_peak_rss_gib']:>11.2f} GiB" if key == "beam"
                           else f"{'-':>15}")
                print(f"| {int(size):>9,} | {ENCODE_LABELS[key]:<23} | "
                      f"{row['items_per_s']:>8,.0f} | "
                      f"{1000 * row['cpu_seconds'] / row['items']:>11.2f} | "
                      f"{row['driver_peak_rss_gib']:>11.2f} GiB | {workers} | "
                      f"{_total_rss(row):>10.2f} GiB |")


def print_driver_table(report: dict) -> None:
    if "encode_driver" not in report:
        return
    print("\nencode driver, peak RSS after each step (one process per size):")
    print(f"| {'items':>9} | {'imports':>8} | {'+ streamed pass':>15} | {'+ vocabulary':>12} | "
          f"{'pass s':>6} | {'vocab s':>7} |")
    for size, row in report["encode_driver"]["sizes"].items():
        print(f"| {int(size):>9,} | {row['after_imports_gib']:>8.2f} | "
              f"{row['after_summary_gib']:>15.2f} | {row['after_vocabulary_gib']:>12.2f} | "
              f"{row['summary_seconds']:>6.1f} | {row['vocabulary_seconds']:>7.1f} |")


def plot_beam(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("beam_prepare", "beam_encode") if k in report]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels) + ("beam_encode" in report), figsize=(15, 4),
                             squeeze=False)
    axes = list(axes[0])
    if "beam_prepare" in report:
        ax, r = axes.pop(0), report["beam_prepare"]
        runs = [(key, label.format(n=r["workers"])) for key, label in PREPARE_RUNS if key in r]
        values = [r[key]["items_per_s"] for key, _ in runs]
        colors = ["#d1853a" if key.startswith("beam") else "#4878a8" for key, _ in runs]
        ax.bar(range(len(runs)), values, color=colors)
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels([("Beam" if key.startswith("beam") else "local") + "\n"
                            + ("1 worker" if key.endswith("_1_workers")
                               else f"{r['workers']} workers") for key, _ in runs], fontsize=8)
        for i, (key, _) in enumerate(runs):
            ax.text(i, values[i], f"{values[i]:.1f}/s\n"
                    f"{1000 * r[key]['cpu_seconds'] / r['items']:.0f} CPU ms/item",
                    ha="center", va="bottom", fontsize=7)
        ax.set_ylabel("items per second")
        ax.set_ylim(0, 1.25 * max(values))
        ax.set_title(f"prepare {r['items']:,} items", fontsize=10)
    if "beam_encode" in report:
        r = report["beam_encode"]
        sizes = sorted(int(s) for s in r["sizes"])
        ax = axes.pop(0)
        for key, label, color in (("local", "tfmmrec encode", "#4878a8"),
                                  ("beam", "encode --runner (Beam)", "#d1853a")):
            ax.plot(sizes, [r["sizes"][str(s)][key]["items_per_s"] for s in sizes], "o-",
                    label=label, color=color)
        ax.set_xscale("log")
        ax.set_xlabel("catalogue items")
        ax.set_ylabel("items per second")
        ax.set_title("encode throughput", fontsize=10)
        ax.legend(fontsize=8)
        ax = axes.pop(0)
        for key, field, label, style in (
                ("local", None, "tfmmrec encode (one process)", "o-"),
                ("beam", None, "Beam: driver + workers", "s-"),
                ("beam", "driver_peak_rss_gib", "Beam driver", "s--"),
                ("beam", "worker_peak_rss_gib", "Beam worker (largest)", "s:"),
                ("cache", None, "in-memory feature cache", "x:")):
            points = [(s, _total_rss(r["sizes"][str(s)][key]) if field is None
                       else r["sizes"][str(s)][key][field]) for s in sizes
                      if key in r["sizes"][str(s)]]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("catalogue items")
        ax.set_ylabel("peak RSS (GiB)")
        ax.set_ylim(bottom=0)
        ax.set_title("encode memory as the catalogue grows", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --- report -----------------------------------------------------------------------------------


def print_tables(report: dict) -> None:
    if "input" in report:
        r = report["input"]
        print(f"\ninput: {r['items']} items ({r['image']}; {r['audio']})")
        print(f"| {'path':<38} | {'items/s':>9} | {'CPU util':>8} |")
        for key, label in (("folder_decode", "folder: decode+resize/resample"),
                           ("prepare_1_workers", "prepare, 1 worker"),
                           (f"prepare_{CORES}_workers", f"prepare, {CORES} workers"),
                           ("tfrecords_read", "TFRecords: read pre-decoded"),
                           ("encode_from_folder", "encode (cold cache) from folder"),
                           ("encode_from_tfrecords", "encode (cold cache) from TFRecords")):
            if key in r:
                print(f"| {label:<38} | {r[key]['items_per_s']:>9,.0f} | "
                      f"{100 * r[key]['cpu_utilisation']:>7.0f}% |")
        for key in ("interactions_from_memory", "interactions_from_tfrecords"):
            print(f"| {key.replace('_', ' '):<38} | {r[key]['examples_per_s']:>9,.0f} | "
                  f"{100 * r[key]['cpu_utilisation']:>7.0f}% |  (examples/s)")
    if "index" in report:
        r = report["index"]
        print(f"\nindex: {r['num_items']:,} items × {r['embedding_dim']}-d")
        print(f"  encode (tower, streamed to .npy): {r['encode']['seconds']:.0f} s "
              f"({r['encode']['items_per_s']:,.0f} items/s), "
              f"{r['encode']['npy_bytes'] / GIB:.2f} GiB on disk")
        print(f"  ScaNN build: {r['scann_build']['seconds']:.0f} s {r['scann_build']['params']}")
        print(f"  SavedModel with the index: {r['export']['savedmodel_bytes'] / GIB:.2f} GiB "
              f"(saved in {r['export']['seconds']:.0f} s)")
        print(f"  queries: {r['query']['qps_batch_1']:,.0f} q/s one at a time, "
              f"{r['query']['qps_batch_256']:,.0f} q/s in batches of 256")
        print(f"  recall@10 vs brute force ({r['recall_queries']} queries): "
              f"{r['recall_at_10_vs_brute_force']:.3f}")
        print(f"  peak RSS: {r['peak_rss_gib']:.2f} GiB (limit 8 GiB)")


def plot(report: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("input", "index") if k in report]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        r = report[panel]
        if panel == "input":
            keys = [k for k in ("folder_decode", "prepare_1_workers", f"prepare_{CORES}_workers",
                                "tfrecords_read", "encode_from_folder", "encode_from_tfrecords")
                    if k in r]
            values = [r[k]["items_per_s"] for k in keys]
            bars = ax.barh([k.replace("_", " ") for k in keys], values, color="#4878a8")
            for bar, k in zip(bars, keys, strict=True):
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                        f" {r[k]['items_per_s']:,.0f}/s, CPU {100 * r[k]['cpu_utilisation']:.0f}%",
                        va="center", fontsize=8)
            ax.set_xscale("log")
            ax.set_xlim(1, 10 * max(values))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("items per second (log)")
            ax.set_title(f"{r['items']} items: folder vs TFRecords")
        else:
            labels = [f"encode {r['num_items']:,} items\n(tower → .npy)", "ScaNN build",
                      "save SavedModel"]
            values = [r["encode"]["seconds"], r["scann_build"]["seconds"],
                      r["export"]["seconds"]]
            ax.bar(labels, values, color=["#4878a8", "#6a9f58", "#d1853a"])
            for i, v in enumerate(values):
                ax.text(i, v, f"{v:.0f} s", ha="center", va="bottom")
            ax.set_ylabel("seconds")
            ax.set_title(f"{r['num_items']:,} items × {r['embedding_dim']}-d")
            ax.text(0.98, 0.95,
                    f"recall@10 vs brute force: {r['recall_at_10_vs_brute_force']:.3f}\n"
                    f"{r['query']['qps_batch_1']:,.0f} q/s single, "
                    f"{r['query']['qps_batch_256']:,.0f} q/s batch 256\n"
                    f"SavedModel {r['export']['savedmodel_bytes'] / GIB:.2f} GiB\n"
                    f"peak RSS {r['peak_rss_gib']:.2f} GiB (limit 8)",
                    transform=ax.transAxes, ha="right", va="top", fontsize=8,
                    bbox={"facecolor": "white", "edgecolor": "#999999"})
            ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _merge_into(path: Path, report: dict, key: str) -> dict:
    """Write ``report[key]`` into the JSON as it is now (another section may have finished
    since this run read it); the merged report."""
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged[key] = report[key]
    path.write_text(json.dumps(merged, indent=2, default=str))
    return merged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=["input", "index", "all", "plot", "beam-prepare",
                                              "beam-encode", "beam", "prepare-cpu",
                                              "beam-driver"],
                        default="all",
                        help="plot: redraw the PNG from the JSON already written")
    parser.add_argument("--items", type=int, default=1000, help="catalogue size for `input`")
    parser.add_argument("--users", type=int, default=5000, help="users (20 interactions each)")
    parser.add_argument("--num-items", type=int, default=1_000_000, help="items for `index`")
    parser.add_argument("--batch", type=int, default=16384, help="items per tower call")
    parser.add_argument("--queries", type=int, default=500, help="queries for recall@10")
    parser.add_argument("--dim", type=int, default=64, help="embedding size")
    parser.add_argument("--beam-items", type=int, default=10000, help="items for beam-prepare")
    parser.add_argument("--beam-workers", default=f"{CORES},1",
                        help="worker counts for beam-prepare")
    parser.add_argument("--beam-runners", default="local,beam",
                        help="which of local,beam beam-prepare runs")
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="catalogue sizes for beam-encode")
    parser.add_argument("--cache-up-to", type=int, default=1000000,
                        help="also measure the in-memory feature cache up to this size")
    parser.add_argument("--label", default="current", help="name of a prepare-cpu result")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "scale.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    if args.section == "plot":
        print_tables(report)
        print_beam_tables(report)
        plot(report, RESULTS / "scale.png")
        plot_beam(report, RESULTS / "scale_beam.png")
        return 0
    command = "python benchmarks/scale.py " + " ".join(argv or sys.argv[1:])
    if args.section == "prepare-cpu":
        row = {"command": command, **bench_prepare_cpu(args.items)}
        print(f"prepare, one process: {row['cpu_ms_per_item']:.1f} CPU ms/item "
              f"({args.items} items, tfmmrec at {row['tfmmrec']}; item shards sha1 "
              f"{row['items_shards_sha1'][:12]})")
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged.setdefault("prepare_cpu", {})[args.label] = row
        path.write_text(json.dumps(merged, indent=2, default=str))
        return 0
    if args.section.startswith("beam"):
        if args.section in ("beam", "beam-prepare"):
            print(f"beam-prepare: {args.beam_items} items...", flush=True)
            workers = [int(w) for w in args.beam_workers.split(",")]
            bench_beam_prepare(args.beam_items, workers, args.beam_runners.split(","), command)
            report = json.loads(path.read_text())
        if args.section in ("beam", "beam-encode"):
            sizes = [int(s) for s in args.sizes.split(",")]
            print(f"beam-encode: {sizes}...", flush=True)
            report["beam_encode"] = {"command": command,
                                     **bench_beam_encode(sizes, args.cache_up_to)}
            report = _merge_into(path, report, "beam_encode")
        if args.section == "beam-driver":
            sizes = [int(s) for s in args.sizes.split(",")]
            report["encode_driver"] = {"command": command, **bench_encode_driver(sizes)}
            report = _merge_into(path, report, "encode_driver")
        print_beam_tables(report)
        plot_beam(report, RESULTS / "scale_beam.png")
        print(f"\nwrote {path} and {RESULTS / 'scale_beam.png'}")
        return 0
    report.update({"command": "python benchmarks/scale.py " + " ".join(argv or sys.argv[1:]),
                   "machine": {"cpus": CORES, "python": platform.python_version()}})
    if args.section in ("input", "all"):
        print(f"input: {args.items} items...", flush=True)
        report["input"] = {"command": report["command"],
                           **bench_input(args.items, args.users)}
    if args.section in ("index", "all"):
        print(f"index: {args.num_items:,} items...", flush=True)
        report["index"] = {"command": report["command"],
                           **bench_index(args.num_items, args.batch, args.queries, args.dim)}
    print_tables(report)
    path.write_text(json.dumps(report, indent=2, default=str))
    plot(report, RESULTS / "scale.png")
    print(f"\nwrote {path} and {RESULTS / 'scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
