"""Benchmark: ``export.content_search`` (content queries score every item, or search as users do).

Trains the ML-100K model once (``configs/ml100k.yaml``, seed 0; ``--run`` restores a run this
script or ``benchmarks/text_search_export.py`` trained), exports it with the ScaNN and the
partitioned index, each with ``content_search: every_item`` (the default) and ``index``, and
through each version's own signatures (loaded like a server loads them) measures:

- known-item search with ``query_text``: a film's title, the first sentence of its plot
  (Recall@10 over every film), genre prompts (P@20), as ``benchmarks/text_search_export.py``;
- known-item search with ``query_image``: a film's own poster finds that film (Recall@10 over
  every film with a poster);
- one five-word ``query_text`` and one poster ``query_image`` request, every version
  interleaved in one process (p50 / p99 ms over ``--requests`` each);
- the cost at scale, index alone: one query's time through each kind's own search and its
  every-item search over ``--scale-items`` random 256-d items (ratios in one process).

    python benchmarks/content_search_export.py --run benchmarks/out/text_search_export/run

Writes benchmarks/results/content_search_export.json and .png. Needs ../shared (MiniLM
weights, ML-100K with its posters); without it, prints why and exits with status 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import tfmmrec

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off
from text_search_export import (  # the same text query sets, the same plot
    FIVE_WORDS,
    SEARCH_FIGURES,
    plot,
    search_figures,
)

from tfmmrec import pipeline
from tfmmrec.evaluation.report import write_json
from tfmmrec.export.loader import ExportedModel

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ml100k.yaml"
WORK = ROOT / "benchmarks" / "out" / "content_search_export"
RESULTS = ROOT / "benchmarks" / "results"
KINDS = ("scann", "partitioned")
MODES = ("every_item", "index")
BATCH = 32


def poster_recall(model: ExportedModel, items: pd.DataFrame, data_dir: Path) -> float:
    """Share of films with a poster whose own poster finds them in ``query_image``'s top 10."""
    rows = [(str(row.item_id), data_dir / row.poster) for row in items.itertuples()
            if row.poster and (data_dir / row.poster).is_file()]
    hits = []
    for start in range(0, len(rows), BATCH):
        batch = rows[start:start + BATCH]
        found = model.call("query_image", image=np.array([p.read_bytes() for _, p in batch],
                                                          object), k=np.int32(10))
        hits += [item in row for (item, _), row in zip(batch, found["item_ids"].astype(str),
                                                       strict=True)]
    return float(np.mean(hits))


def latencies(models: dict[str, ExportedModel], poster: bytes, requests: int) -> dict:
    """Per version and request kind: p50 / p99 ms, every version interleaved."""
    calls = {"query_text five words": ("query_text", {"text": np.array([FIVE_WORDS])}),
             "query_image one poster": ("query_image", {"image": np.array([poster], object)})}
    times = {(name, call): [] for name in models for call in calls}
    for round_ in range(requests + 20):  # the first 20 warm up (tracing, allocation)
        for name, model in models.items():
            for call, (signature, inputs) in calls.items():
                start = time.perf_counter()
                model.call(signature, **inputs, k=np.int32(10))
                if round_ >= 20:
                    times[name, call].append((time.perf_counter() - start) * 1e3)
    out: dict = {name: {} for name in models}
    for (name, call), t in times.items():
        out[name][call] = {"p50_ms": float(np.percentile(t, 50)),
                           "p99_ms": float(np.percentile(t, 99))}
    return out


def scale_costs(num_items: int, dim: int, requests: int) -> dict:
    """ms per one-query search, each kind's own search against its every-item search, over
    clustered unit items (1,000 random centres plus noise: the structure a partitioned index
    is built for; on structureless data its calibration probes nearly every chunk), each
    index built with the export's default settings."""
    import tensorflow as tf

    from tfmmrec.export.index import IndexSettings, build

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    items = centres[rng.integers(1000, size=num_items)]
    items += 0.5 * rng.normal(size=items.shape).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = tf.constant(items[rng.integers(num_items, size=requests)] + 0.1, tf.float32)
    out = {}
    for kind in ("scann", "partitioned", "brute_force"):
        start = time.perf_counter()
        index = build(items, None, IndexSettings(kind, 200))
        built = time.perf_counter() - start
        searches = {"index": tf.function(lambda q, index=index: index(q, k=10)),
                    "every_item": tf.function(lambda q, index=index: index(q, k=10,
                                                                           every_item=True))}
        times = {mode: [] for mode in searches}
        for search in searches.values():
            search(queries[:1])  # trace
        for i in range(requests):
            for mode, search in searches.items():
                start = time.perf_counter()
                search(queries[i:i + 1])
                times[mode].append((time.perf_counter() - start) * 1e3)
        out[kind] = {"build_seconds": built, **{
            f"{mode}_p50_ms": float(np.percentile(t, 50)) for mode, t in times.items()}}
        out[kind]["every_item_over_index_p50"] = (out[kind]["every_item_p50_ms"]
                                                  / out[kind]["index_p50_ms"])
        print(f"{num_items:,} items, {kind}: " + ", ".join(
            f"{k} {v:.2f}" for k, v in out[kind].items()), flush=True)
        del index, searches
    out["copy_on_read"] = copy_on_read_cost(items, queries, requests)
    return out


def copy_on_read_cost(items: np.ndarray, queries, requests: int) -> dict:
    """Why every row-picking read of a catalogue variable is dense (``gather_rows``): a
    brute-force search over a variable, timed before and after one ``ResourceGather`` on it
    (after which TF copies the whole table on every dense read)."""
    import tensorflow as tf

    table = tf.Variable(items, shape=tf.TensorShape([None, items.shape[1]]))
    search = tf.function(lambda q: tf.math.top_k(tf.matmul(q, table, transpose_b=True), 10))

    def p50() -> float:
        search(queries[:1])
        times = []
        for i in range(requests):
            start = time.perf_counter()
            search(queries[i:i + 1])
            times.append((time.perf_counter() - start) * 1e3)
        return float(np.percentile(times, 50))

    before = p50()
    tf.function(lambda: tf.gather(table, [0, 1]))()  # one sparse read
    out = {"dense_reads_only_p50_ms": before, "after_one_sparse_read_p50_ms": p50()}
    print("brute-force search before / after one sparse read of its table: "
          f"{out['dense_reads_only_p50_ms']:.1f} / {out['after_one_sparse_read_p50_ms']:.1f} ms",
          flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None,
                        help="restore this run folder instead of training (seed 0 default)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--scale-items", type=int, default=300_000)
    parser.add_argument("--scale-only", action="store_true",
                        help="re-measure only the cost at scale, into the existing results")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.scale_only:
        import json

        results = json.loads((RESULTS / "content_search_export.json").read_text())
        dim = int(next(iter(results["summary"].values()))["embedding_dim"])
        results["scale"] = {"num_items": args.scale_items, "dim": dim,
                            "command": "python benchmarks/content_search_export.py"
                                       + "".join(f" {a}" for a in argv),
                            "kinds": scale_costs(args.scale_items, dim, args.requests)}
        write_json(results, RESULTS / "content_search_export.json")
        return 0
    run = args.run or WORK / "run"
    config = tfmmrec.load_config(CONFIG, [f"train.output_dir={run}", "train.verbose=0",
                                          "train.seed=0", f"export.base_dir={WORK}/models"])
    data_dir = Path(config.data.path)
    if not (data_dir / "items.csv").is_file():
        print(f"needs ../shared: {data_dir / 'items.csv'} not found", file=sys.stderr)
        return 2
    shutil.rmtree(WORK / "models", ignore_errors=True)
    ws = pipeline.prepare(config, progress=False)
    if args.run:
        model, ws = pipeline.restore(run, config, workspace=ws)
    else:
        model = pipeline.train(config, workspace=ws, progress=False).model
    print(f"model ready ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    items = pd.read_csv(data_dir / "items.csv", dtype=str, keep_default_na=False)
    models, summary = {}, {}
    for kind in KINDS:
        for mode in MODES:
            label = f"{kind}, content_search={mode}"
            exported = tfmmrec.load_config(config, [f"export.model_name={kind}-{mode}",
                                                    f"export.content_search={mode}"])
            version = pipeline.export(exported, model=model, workspace=ws, index=kind)
            models[label] = ExportedModel(version)
            summary[label] = {"search": {**search_figures(models[label], items),
                                         "poster R@10": poster_recall(models[label], items,
                                                                      data_dir)},
                              "index_parameters": models[label].metadata["index_parameters"],
                              "embedding_dim": models[label].metadata["embedding_dim"]}
            print(label, {k: round(v, 3) for k, v in summary[label]["search"].items()},
                  flush=True)
    poster = (data_dir / items["poster"].iloc[0]).read_bytes()
    for label, figures in latencies(models, poster, args.requests).items():
        summary[label]["latency"] = figures
        print(label, {call: f"p50 {f['p50_ms']:.1f} / p99 {f['p99_ms']:.1f} ms"
                      for call, f in figures.items()}, flush=True)
    dim = int(next(iter(models.values())).metadata["embedding_dim"])
    scale = scale_costs(args.scale_items, dim, args.requests)
    seconds = time.perf_counter() - start
    write_json({"command": "python benchmarks/content_search_export.py"
                           + "".join(f" {a}" for a in argv),
                "seconds": seconds, "five_word_query": FIVE_WORDS, "summary": summary,
                "scale": {"num_items": args.scale_items, "dim": dim, "kinds": scale}},
               RESULTS / "content_search_export.json")
    plot(summary, RESULTS / "content_search_export.png", (*SEARCH_FIGURES, "poster R@10"),
         "content queries through the export (ML-100K, all films)")
    print(f"wrote {RESULTS}/content_search_export.json and .png ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
