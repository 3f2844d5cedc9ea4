"""Benchmark: query-by-content with queries a user would type, on MovieLens-100K.

    python benchmarks/query_by_content.py                      # ~15 min on 2 cores
    python benchmarks/query_by_content.py --weights 0.1 1.0 --seeds 0
    python benchmarks/query_by_content.py --weights 1.0 --set model.feature_dropout={} \
        --output query_by_content_no_image_dropout
    python benchmarks/query_by_content.py --weights 1.0 --hybrid --output query_by_content_hybrid

The ML-100K model (configs/ml100k.yaml, its random split, early stopping as shipped) is
trained at each alignment weight (``model.alignment_weight``) and seed, and asked what
``query_text`` is asked, through the same path (the workspace's MiniLM encoder, then the item
tower's text-alone embedding; ``evaluation.crossmodal.embed_queries``), against every film's
served embedding:

- **title → film**: the film's title alone (e.g. "Toy Story") must find that film: Recall@1/10
  and median rank over films;
- **plot sentence → film**: the first sentence of its plot (films with one of over 20
  characters);
- **genre prompt → films**: "a comedy film" for each of the 18 genres: the share of the
  top 20 films that have that genre (P@20; the genre's catalogue share is the chance level).

The item texts the model trains on join title, year, genres and plot; no query string is ever
trained on. Reference: the frozen MiniLM features alone (the query's cosine to each film's
full-text feature), the encoder's own search quality before any projection.

``--hybrid`` also scores, for each trained model, the query searched against two parts at
once: the served space and the frozen MiniLM space, ``cos(query's text-alone embedding, film's
served embedding) + w · cos(query's frozen feature, film's frozen text feature)`` for each ``w``
in ``HYBRID_WEIGHTS`` (what a second, text-feature index beside the served one would give
``query_text``; no training change). Reported for every ``w``, none chosen: the genre prompts
have no held-out half to choose on.

``--stages`` instead trains once (seed 0, the first ``--weights``) and prints where a title
query loses its film, every film a candidate: title → film Recall@1/10 on the LayerNorm-ed
encoder features, after the text projection, against every film's text-alone embedding, and
against the served embeddings (``query_by_content_stages.json``).

The films are split (seeded) into two halves: the weight is chosen on the **validation** half's
mean of title and plot-sentence Recall@10 (seed mean), and the **test** half reports it; the
genre prompts are not used to choose. Recommendation quality at each weight is judged
separately, on validation carves (``benchmarks/carve_selection.py``).

Writes benchmarks/results/query_by_content.json and .png (``--output NAME``: NAME.json).
Needs ../shared (MiniLM weights, ML-100K with its items.csv); without it, prints why and exits
with status 2.
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
from tfmmrec import pipeline
from tfmmrec.evaluation.crossmodal import (
    cross_modal_metrics,
    cross_modal_ranks,
    embed_queries,
    precision_at_k,
)
from tfmmrec.evaluation.embeddings import embed_items
from tfmmrec.evaluation.report import write_json

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ml100k.yaml"
WORK = ROOT / "benchmarks" / "out" / "query_by_content"
RESULTS = ROOT / "benchmarks" / "results"
MIN_SENTENCE = 20  # characters: shorter first sentences ("Mr. Holland's…") are not a query
TOP = 20
FROZEN = "frozen MiniLM"
HYBRID_WEIGHTS = (0.25, 0.5, 1.0, 2.0)


def queries(items: pd.DataFrame) -> dict:
    """The three query sets from the items table (catalogue order)."""
    sentences = items["description"].fillna("").astype(str).str.split(". ", regex=False).str[0]
    genres = items["genres"].fillna("").astype(str).str.split("|")
    names = sorted({g for gs in genres for g in gs if g and g != "unknown"})
    return {"titles": items["title"].astype(str).tolist(),
            "sentences": sentences.tolist(),
            "has_sentence": (sentences.str.len() > MIN_SENTENCE).to_numpy(),
            "genres": names, "prompts": [f"a {g.lower()} film" for g in names],
            "relevant": np.array([[g in gs for gs in genres] for g in names])}


def encode(ws, strings: list[str], batch_size: int = 64) -> np.ndarray:
    """The frozen MiniLM features of ``strings`` (the encoder the catalogue was cached with)."""
    import tensorflow as tf

    encoder = ws.encoders["text"]
    return np.concatenate([encoder(tf.constant(strings[i:i + batch_size]),
                                   training=False).numpy()
                           for i in range(0, len(strings), batch_size)])


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def score(query_sets: dict, embed, items: np.ndarray, halves: dict) -> dict:
    """Every figure for one model (or the frozen reference): ``embed(strings) → [Q, d]``."""
    row = {}
    for name, strings, present in (
            ("title", query_sets["titles"], np.ones(len(items), bool)),
            ("plot sentence", query_sets["sentences"], query_sets["has_sentence"])):
        embedded = embed(strings)
        ranks = cross_modal_ranks(embedded, items, present, np.ones(len(items), bool))
        asked = np.flatnonzero(present)
        for half, members in halves.items():
            row[f"{name} · {half}"] = cross_modal_metrics(ranks[np.isin(asked, members)])
    precision = precision_at_k(embed(query_sets["prompts"]), items, query_sets["relevant"], TOP)
    row["genre prompt P@20"] = float(precision.mean())
    row["genre prompt P@20 by genre"] = dict(zip(query_sets["genres"], precision.tolist(),
                                                 strict=True))
    return row


def selection_figure(row: dict) -> float:
    return float(np.mean([row[f"{name} · validation"]["recall@10"]
                          for name in ("title", "plot sentence")]))


def train_model(ws, overrides: list[str]):
    """The ML-100K model trained afresh with ``overrides`` on top of the shipped config."""
    config = tfmmrec.load_config(CONFIG, [f"train.output_dir={WORK}/run", "train.verbose=0",
                                          *overrides])
    shutil.rmtree(config.train.output_dir, ignore_errors=True)
    return pipeline.train(config, workspace=ws.with_config(config), progress=False).model


def run_model(weight: float, seed: int, ws, query_sets: dict, halves: dict,
              overrides: list[str] = (), hybrid: bool = False) -> dict[str, dict]:
    """``{row name: figures}``: the served path, and with ``hybrid`` each two-part search."""
    model = train_model(ws, [*overrides, f"model.alignment_weight={weight}",
                             f"train.seed={seed}"])
    dim = model.item_tower.projections["text"].dim
    served = embed_items(model, ws.dataset.num_items)[:, :dim]
    name = f"alignment {weight:g}"
    rows = {name: score(query_sets, lambda s: embed_queries(model, ws, "text", s), served,
                        halves)}
    if hybrid:
        frozen, cache = unit(ws.contents["text"].values), {}

        def parts(strings):  # each query set embedded once for every w
            key = tuple(strings)
            if key not in cache:
                cache[key] = (unit(np.asarray(embed_queries(model, ws, "text", strings))),
                              unit(encode(ws, strings)))
            return cache[key]

        for w in HYBRID_WEIGHTS:
            items = np.hstack([unit(served), w * frozen])
            rows[f"{name} + {w:g} · frozen text"] = score(
                query_sets, lambda s: np.hstack(parts(s)), items, halves)
    return rows


def mean_rows(rows: list[dict]) -> dict:
    """Seed means (and stds) of every Recall@K / median rank / P@20."""
    out = {}
    for key, value in rows[0].items():
        if isinstance(value, dict) and "recall@10" in value:
            out[key] = {m: (float(np.mean([r[key][m] for r in rows])),
                            float(np.std([r[key][m] for r in rows])))
                        for m in ("recall@1", "recall@10", "median_rank")}
        elif isinstance(value, float):
            out[key] = (float(np.mean([r[key] for r in rows])),
                        float(np.std([r[key] for r in rows])))
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    panels = (("title · test", "recall@10", "title → film, Recall@10"),
              ("plot sentence · test", "recall@10", "plot sentence → film, Recall@10"),
              ("genre prompt P@20", None, "genre prompt → films, P@20"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for axis, (key, metric, title) in zip(axes, panels, strict=True):
        values = [summary[n][key][metric][0] if metric else summary[n][key][0] for n in names]
        axis.bar(range(len(names)), values, color=["#888" if n == FROZEN else "#4472c4"
                                                   for n in names])
        axis.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        axis.set(title=title, ylim=(0, 1))
    fig.suptitle("ML-100K query-by-content (test half of the films; seed mean)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def stages(ws, query_sets: dict, weight: float) -> dict:
    """Title → film at each step of the query path, for one model (every film a query)."""
    import tensorflow as tf

    model = train_model(ws, [f"model.alignment_weight={weight}"])
    tower = model.item_tower
    titles = tf.constant(encode(ws, query_sets["titles"]))
    texts = tf.constant(ws.contents["text"].values)
    dim = tower.projections["text"].dim
    norm = tower.projections["text"].norm
    pairs = {"LayerNorm-ed encoder features": (norm(titles), norm(texts)),
             "after the text projection": (tower.project("text", titles),
                                           tower.project("text", texts)),
             "against every film's text-alone embedding": (
                 tower.embed_single("text", titles)[:, :dim],
                 tower.embed_single("text", texts)[:, :dim]),
             "against the served embeddings (query_text)": (
                 tower.embed_single("text", titles)[:, :dim],
                 embed_items(model, ws.dataset.num_items)[:, :dim])}
    everyone = np.ones(ws.dataset.num_items, bool)
    return {name: cross_modal_metrics(cross_modal_ranks(unit(np.asarray(q)), unit(np.asarray(c)),
                                                        everyone, everyone))
            for name, (q, c) in pairs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.1, 1.0, 3.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config overrides for every trained model (e.g. "
                             "model.feature_dropout={})")
    parser.add_argument("--output", default="query_by_content",
                        help="results file name in benchmarks/results (without .json/.png)")
    parser.add_argument("--hybrid", action="store_true",
                        help="also the served + frozen-text two-part search at each w")
    parser.add_argument("--stages", action="store_true",
                        help="where a title query loses its film (one model)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    start = time.perf_counter()
    config = tfmmrec.load_config(CONFIG, [f"train.output_dir={WORK}/run", "train.verbose=0"])
    items_csv = Path(config.data.path) / "items.csv"
    if not items_csv.is_file():
        print(f"needs ../shared: {items_csv} not found", file=sys.stderr)
        return 2
    ws = pipeline.prepare(config, progress=False)
    items = pd.read_csv(items_csv)
    query_sets = queries(items)
    if args.stages:
        found = stages(ws, query_sets, args.weights[0])
        for name, metrics in found.items():
            print(f"title → film, {name}: R@1 {metrics['recall@1']:.3f}, "
                  f"R@10 {metrics['recall@10']:.3f}")
        write_json({"command": "python benchmarks/query_by_content.py"
                               + "".join(f" {a}" for a in argv),
                    "alignment_weight": args.weights[0], "stages": found},
                   RESULTS / "query_by_content_stages.json")
        return 0
    order = np.random.default_rng(0).permutation(len(items))
    halves = {"validation": np.sort(order[::2]), "test": np.sort(order[1::2])}
    frozen = unit(ws.contents["text"].values)
    summary = {FROZEN: mean_rows([score(query_sets, lambda s: unit(encode(ws, s)), frozen,
                                        halves)])}
    per_seed = {}
    for weight in args.weights:
        for seed in args.seeds:
            for name, row in run_model(weight, seed, ws, query_sets, halves, args.overrides,
                                       args.hybrid).items():
                per_seed.setdefault(name, []).append(row)
            print(f"alignment {weight:g}, seed {seed}: validation R@10 "
                  f"{selection_figure(per_seed[f'alignment {weight:g}'][-1]):.3f}", flush=True)
    for name, rows in per_seed.items():
        summary[name] = mean_rows(rows)
        summary[name]["selection (validation)"] = (
            float(np.mean([selection_figure(r) for r in rows])), 0.0)
    chosen = max((n for n in summary if n != FROZEN and "frozen text" not in n),
                 key=lambda n: summary[n]["selection (validation)"][0])
    for name, row in summary.items():
        test = [row[f"{q} · test"]["recall@10"][0] for q in ("title", "plot sentence")]
        print(f"{name:>16}: test R@10 title {test[0]:.3f}, plot sentence {test[1]:.3f}; "
              f"genre P@20 {row['genre prompt P@20'][0]:.3f}"
              + (" (chosen on validation)" if name == chosen else ""))
    seconds = time.perf_counter() - start
    write_json({"command": "python benchmarks/query_by_content.py"
                           + "".join(f" {a}" for a in argv),
                "seconds": seconds, "weights": args.weights, "seeds": args.seeds,
                "overrides": args.overrides,
                "chosen_on_validation": chosen, "summary": summary, "per_seed": per_seed},
               RESULTS / f"{args.output}.json")
    plot(summary, RESULTS / f"{args.output}.png")
    print(f"wrote {RESULTS}/{args.output}.json and .png ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
