"""Benchmark: ``export.text_search_weight`` through the exported ``query_text`` signature.

Trains the ML-100K model once (``configs/ml100k.yaml``, seed 0), exports it twice with the
config's index (text search off, and at ``--weight``), and through each version's own
``query_text`` (loaded like a server loads it) measures:

- known-item search: a film's title alone, and the first sentence of its plot, must find that
  film (Recall@10 over every film; the test half of ``benchmarks/query_by_content.py``'s
  seeded split is reported too, so the two benchmarks compare);
- genre prompts ("a comedy film"): the share of the top 20 with that genre (P@20);
- the time of one five-word ``query_text`` request, the two versions interleaved in one
  process (p50 / p99 over ``--requests`` each, and their ratio);
- the version's size on disk, and a catalogue update: re-adding 50 removed films (seconds,
  and whether the exported graph was reused);
- title Recall@10 of ScaNN indexes over the served table and over the text-search table at
  several ``num_leaves_to_search`` (why the text-search index searches every leaf).

    python benchmarks/text_search_export.py   # ~10 min on 2 cores

Writes benchmarks/results/text_search_export.json and .png. Needs ../shared (MiniLM weights,
ML-100K with its items.csv); without it, prints why and exits with status 2.
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
from query_by_content import MIN_SENTENCE, queries  # the same query sets

from tfmmrec import pipeline
from tfmmrec.evaluation.report import write_json
from tfmmrec.export import catalog
from tfmmrec.export.loader import ExportedModel

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ml100k.yaml"
WORK = ROOT / "benchmarks" / "out" / "text_search_export"
RESULTS = ROOT / "benchmarks" / "results"
TOP = 20
FIVE_WORDS = "a funny film about friendship"
BATCH = 64
SEARCH_FIGURES = ("title R@10", "plot sentence R@10", "genre prompt P@20")


def ranked(model: ExportedModel, strings: list[str], k: int) -> np.ndarray:
    """``[Q, k]`` item ids (str) of ``query_text`` for each string, in batches."""
    out = [model.call("query_text", text=np.asarray(strings[i:i + BATCH]),
                      k=np.int32(k))["item_ids"].astype(str)
           for i in range(0, len(strings), BATCH)]
    return np.concatenate(out)


def search_figures(model: ExportedModel, items: pd.DataFrame) -> dict:
    """Known-item Recall@10 (all films and the test half) and genre-prompt P@20."""
    sets = queries(items)
    ids = items["item_id"].astype(str).to_numpy()
    order = np.random.default_rng(0).permutation(len(items))  # query_by_content's halves
    test = np.zeros(len(items), bool)
    test[order[1::2]] = True
    figures = {}
    for name, strings, asked in (("title", sets["titles"], np.ones(len(items), bool)),
                                 ("plot sentence", sets["sentences"], sets["has_sentence"])):
        rows = np.flatnonzero(asked)
        top = ranked(model, [strings[i] for i in rows], 10)
        hit = (top == ids[rows][:, None]).any(axis=1)
        figures[f"{name} R@10"] = float(hit.mean())
        figures[f"{name} R@10 · test half"] = float(hit[test[rows]].mean())
    top = ranked(model, sets["prompts"], TOP)
    genre_of = dict(zip(ids, items["genres"].fillna("").astype(str).str.split("|"),
                        strict=True))
    figures["genre prompt P@20"] = float(np.mean([
        np.mean([genre in genre_of.get(item, ()) for item in row])
        for genre, row in zip(sets["genres"], top, strict=True)]))
    return figures


def latencies(models: dict[str, ExportedModel], requests: int) -> dict:
    """Per version: p50 / p99 ms of one five-word query, the versions interleaved."""
    text = np.array([FIVE_WORDS])
    for model in models.values():  # warm up (first calls trace and allocate)
        for _ in range(20):
            model.call("query_text", text=text, k=np.int32(10))
    times = {name: [] for name in models}
    for _ in range(requests):
        for name, model in models.items():
            start = time.perf_counter()
            model.call("query_text", text=text, k=np.int32(10))
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99))}
            for name, t in times.items()}


def size_mb(version: Path) -> float:
    return sum(p.stat().st_size for p in version.rglob("*") if p.is_file()) / 1e6


def readd(version: Path, items: pd.DataFrame, data_dir: Path, count: int = 50) -> dict:
    """Remove ``count`` films, then add them back from a table: the add's seconds."""
    base = WORK / "update" / version.parent.name
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(version, base / version.name)
    chosen = items.iloc[:count]
    catalog.remove(base, item_ids=list(chosen["item_id"].astype(str)))
    table = data_dir / f".text-search-bench-{version.parent.name}.csv"
    chosen.to_csv(table, index=False)
    try:
        start = time.perf_counter()
        added = catalog.add(base, table)
        seconds = time.perf_counter() - start
    finally:
        table.unlink(missing_ok=True)
    reused = ((added.version_dir / "saved_model.pb").read_bytes()
              == (base / version.name / "saved_model.pb").read_bytes())
    return {"seconds": seconds, "embedding_seconds": added.embedded_seconds,
            "graph_reused": reused, "films": count}


def leaf_sweep(model, ws, items: pd.DataFrame, settings, weight: float) -> list[dict]:
    """Title R@10 of ScaNN indexes over the served table and the text-search table at several
    ``num_leaves_to_search`` (the served index's default, 3/4 of the leaves, every leaf), built
    as the export builds them and queried with the vectors the signatures compute."""
    import dataclasses

    import tensorflow as tf
    from query_by_content import encode, unit

    from tfmmrec.evaluation.crossmodal import embed_queries
    from tfmmrec.evaluation.embeddings import embed_items
    from tfmmrec.export.index import build, scann_parameters
    from tfmmrec.export.module import text_search_table

    dim = model.item_tower.dim
    served = embed_items(model, ws.dataset.num_items)
    table = text_search_table(served, pipeline.export_text_features(ws, model),
                              content_dim=dim, weight=weight).numpy()
    titles = queries(items)["titles"]
    query = unit(np.asarray(embed_queries(model, ws, "text", titles)))
    searches = {"served index": (served, np.pad(query, [(0, 0), (0, served.shape[1] - dim)])),
                "text-search index": (table, np.hstack([query, unit(encode(ws, titles))]))}
    parameters = scann_parameters(len(items), settings.max_k, settings.scann)
    leaves, default = parameters["num_leaves"], parameters["num_leaves_to_search"]
    rows = []
    for search in sorted({default, (3 * leaves) // 4, leaves}):
        row = {"num_leaves_to_search": search, "num_leaves": leaves}
        for name, (embeddings, vectors) in searches.items():
            index = build(embeddings, None, dataclasses.replace(
                settings, scann=dataclasses.replace(settings.scann,
                                                    num_leaves_to_search=search)))
            _, found = index(tf.constant(vectors, tf.float32), k=10)
            row[f"{name} title R@10"] = float(np.mean(
                (found.numpy() == np.arange(len(items))[:, None]).any(axis=1)))
        rows.append(row)
        print(f"ScaNN, {search} of {leaves} leaves searched: " + ", ".join(
            f"{k} {v:.3f}" for k, v in row.items() if "R@10" in k), flush=True)
    return rows


def plot(summary: dict, path: Path, names: tuple[str, ...] = SEARCH_FIGURES,
         title: str = "query_text through the export (ML-100K, all films)") -> None:
    """One group of bars per figure in ``names``, one bar per version of ``summary``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2 * len(names) + 1, 4.2))
    width = 0.8 / len(summary)
    for i, (label, row) in enumerate(summary.items()):
        ax.bar(np.arange(len(names)) + i * width, [row["search"][n] for n in names], width,
               label=label)
    ax.set_xticks(np.arange(len(names)) + width * (len(summary) - 1) / 2, names)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--reuse-run", action="store_true",
                        help="restore the model a previous run of this script trained")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    start = time.perf_counter()
    config = tfmmrec.load_config(CONFIG, [f"train.output_dir={WORK}/run", "train.verbose=0",
                                          f"train.seed={args.seed}",
                                          f"export.base_dir={WORK}/models"])
    items_csv = Path(config.data.path) / "items.csv"
    if not items_csv.is_file():
        print(f"needs ../shared: {items_csv} not found", file=sys.stderr)
        return 2
    for stale in ("models", "update", *(() if args.reuse_run else ("run",))):
        shutil.rmtree(WORK / stale, ignore_errors=True)
    ws = pipeline.prepare(config, progress=False)
    if args.reuse_run:
        model, ws = pipeline.restore(config.train.output_dir, config, workspace=ws)
    else:
        model = pipeline.train(config, workspace=ws, progress=False).model
    print(f"model ready ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    items = pd.read_csv(items_csv, dtype=str, keep_default_na=False)
    weights = {"served index (off)": 0.0, f"text search w={args.weight:g}": args.weight}
    versions, models, summary = {}, {}, {}
    for label, weight in weights.items():
        name = "served-index" if weight == 0 else "text-search"  # not "off": YAML's False
        exported = tfmmrec.load_config(config, [f"export.model_name={name}",
                                                f"export.text_search_weight={weight}"])
        versions[label] = pipeline.export(exported, model=model, workspace=ws)
        models[label] = ExportedModel(versions[label])
        summary[label] = {"search": search_figures(models[label], items),
                          "size_mb": size_mb(versions[label])}
        print(label, {k: round(v, 3) for k, v in summary[label]["search"].items()}, flush=True)
    from tfmmrec.export.index import IndexSettings

    settings = IndexSettings.from_export(config.export, max_k=config.export.max_k
                                         + config.export.max_exclude, kind="scann")
    sweep = leaf_sweep(model, ws, items, settings, args.weight)
    for label, figures in latencies(models, args.requests).items():
        summary[label]["query_text_five_words"] = figures
    for label, version in versions.items():
        summary[label]["readd_50_films"] = readd(version, items, Path(config.data.path))
    on, off = summary[f"text search w={args.weight:g}"], summary["served index (off)"]
    ratio = {"p50": on["query_text_five_words"]["p50_ms"] / off["query_text_five_words"]["p50_ms"],
             "p99": on["query_text_five_words"]["p99_ms"] / off["query_text_five_words"]["p99_ms"]}
    for label, row in summary.items():
        print(f"{label:>22}: " + ", ".join(f"{k} {v:.3f}" for k, v in row["search"].items())
              + f"; five-word query p50 {row['query_text_five_words']['p50_ms']:.1f} ms, p99 "
              f"{row['query_text_five_words']['p99_ms']:.1f} ms; {row['size_mb']:.1f} MB; re-add "
              f"50 films {row['readd_50_films']['seconds']:.1f} s (graph reused: "
              f"{row['readd_50_films']['graph_reused']})")
    print(f"latency ratio on/off: p50 {ratio['p50']:.2f}, p99 {ratio['p99']:.2f}")
    seconds = time.perf_counter() - start
    write_json({"command": "python benchmarks/text_search_export.py"
                           + "".join(f" {a}" for a in argv),
                "seconds": seconds, "seed": args.seed, "index": config.export.index,
                "min_sentence_characters": MIN_SENTENCE, "five_word_query": FIVE_WORDS,
                "latency_ratio_on_over_off": ratio, "summary": summary,
                "scann_leaf_sweep": sweep},
               RESULTS / "text_search_export.json")
    plot(summary, RESULTS / "text_search_export.png")
    print(f"wrote {RESULTS}/text_search_export.json and .png ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
