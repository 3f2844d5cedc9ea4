"""Benchmark: ranking, multitask, two-stage and cross-modal alignment on MovieLens-100K.

    python benchmarks/ml100k_ranking.py [--quick] [--config configs/ml100k.yaml]

Sections (each a table, all written to benchmarks/results/ml100k_ranking.{json,png}):
  1. RMSE on the TFRS tutorial split (random 80/20, seed 42) and the multitask trade-off:
     loss weights retrieval:ranking = 1:0, 0:1, 1:1 → top-100 accuracy, Recall@20, RMSE.
  2. Two-stage: NDCG@10 of retrieve-100 → re-rank versus retrieval alone, per-user temporal
     split (each user's last 20% of ratings).
  3. Cross-modal retrieval, plot text ↔ poster, and each alone → the served index (what
     query_text / query_image do), alignment loss off vs on: on held-out (cold-start) items,
     which no training batch contained, and in-sample.
  4. Modality dropout: cold-start Recall@20 with each modality removed at evaluation.
``--section NAME`` re-runs those sections and replaces their tables in the saved results
(the file then lists the re-runs under ``sections_rerun``). Needs ../shared (data and
pretrained weights); exits with a message without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import tfmmrec

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off
from tfmmrec import pipeline
from tfmmrec.data.splits import split_interactions
from tfmmrec.evaluation.crossmodal import evaluate_cross_modal
from tfmmrec.evaluation.ranking import evaluate_two_stage
from tfmmrec.evaluation.report import format_table, write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / "out" / "ml100k_ranking"


def configure(base: str, overrides: list[str], quick: bool,
              extra: list[str] = ()) -> tfmmrec.Config:
    epochs = ["train.epochs=2"] if quick else []
    return tfmmrec.load_config(base, [f"train.output_dir={WORK}/run", "train.verbose=0",
                                      *epochs, *overrides, *extra])


def train(config, ws):
    shutil.rmtree(config.train.output_dir, ignore_errors=True)
    return pipeline.train(config, workspace=ws, progress=False).model


def with_split(ws, config):
    split = split_interactions(ws.dataset.interactions, config.data.split,
                               config.data.test_fraction, config.data.seed)
    return dataclasses.replace(ws, split=split, config=config)


# Ranking overfits at the retrieval lr. Rating regression is on warm items, where a poster that
# identifies the film is legitimately useful: ranking rows train without feature dropout even
# when the config under test sets one (configs/ml100k.yaml no longer does).
RANKING_SETTINGS = ["train.learning_rate=0.002", "model.feature_dropout={}"]
# A model trained on the ranking loss alone stops on its validation RMSE (its retrieval towers
# learn only through the head, so Recall@20 would choose its epochs on what it does not learn);
# multitask rows keep the retrieval metric.
RANKING_ONLY = ["train.early_stopping_metric=rmse"]
# A ranking head scores (user, item) interactions on the learned towers' embeddings, so models
# with one train the per-interaction objective without the closed-form CF block
# (configs/ml100k.yaml's model.objective: users and model.linear_cf: auto are refused with it).
WITH_RANKING_HEAD = ["ranking.enabled=true", "model.objective=interactions",
                     "model.linear_cf=none"]
SEEDS = (0, 1, 2)


def section_multitask(base, ws, quick, extra):
    """Each row: mean ± std over seeds of the training (model init and batch order)."""
    rows = {}
    settings = (("retrieval only (1:0)", (1, 0), 0), ("ranking only (0:1)", (0, 1), 0),
                ("ranking only + DCN-v2 (0:1)", (0, 1), 1), ("multitask (1:1)", (1, 1), 0),
                ("multitask + DCN-v2 (1:1)", (1, 1), 1))
    for name, weights, cross in settings:
        overrides = [*WITH_RANKING_HEAD, "ranking.task=regression",
                     f"ranking.retrieval_weight={weights[0]}",
                     f"ranking.ranking_weight={weights[1]}", f"ranking.cross_layers={cross}",
                     "ranking.cross_projection_dim=32"]
        if weights[1] > 0:
            overrides += RANKING_SETTINGS
        if weights[0] == 0:
            overrides += RANKING_ONLY
        runs = []
        for seed in SEEDS[: 1 if quick else len(SEEDS)]:
            config = configure(base, [*overrides, f"train.seed={seed}"], quick, extra)
            model = train(config, ws)
            results = pipeline.evaluate(config, model=model, workspace=ws, baselines=False,
                                        write=False)
            retrieval = results["tfmmrec"]
            run = {"top_k_accuracy@100": retrieval["top_k_accuracy@100"],
                   "recall@20": retrieval["recall@20"]}
            if weights[1] > 0:  # the head's own metrics, from evaluate's row (not twice)
                head = results[f"tfmmrec{pipeline.RANKING_HEAD_ROW}"]
                run.update({key: head[key] for key in ("rmse", "mae")})
            runs.append(run)
        rows[name] = {key: (float(np.mean([r[key] for r in runs])),
                            float(np.std([r[key] for r in runs]))) for key in runs[0]}
        print(f"  {name}: {rows[name]}", flush=True)
    return rows


def section_two_stage(base, ws, quick, extra):
    config = configure(base, ["data.split=temporal", *WITH_RANKING_HEAD,
                              "ranking.task=binary", "ranking.retrieve_candidates=100"],
                       quick, extra)
    ws = with_split(ws, config)
    model = train(config, ws)
    result = evaluate_two_stage(model, ws, ks=(10,))
    return {"retrieval alone": {"ndcg@10": result["retrieval_ndcg@10"],
                                "recall@10": result["retrieval_recall@10"]},
            "retrieve 100 → re-rank": {"ndcg@10": result["two_stage_ndcg@10"],
                                       "recall@10": result["two_stage_recall@10"]}}


def section_alignment(base, ws, quick, extra):
    """Alignment off against the config's own weight (configs/ml100k.yaml: 1.0)."""
    rows = {}
    for weight in (0.0, configure(base, [], quick, extra).model.alignment_weight):
        config = configure(base, ["data.split=cold_start", f"model.alignment_weight={weight}"],
                           quick, extra)
        cold = with_split(ws, config)
        model = train(config, cold)
        held_out = evaluate_cross_modal(model, cold)
        in_sample = evaluate_cross_modal(model, dataclasses.replace(
            cold, split=dataclasses.replace(cold.split, test_items=None)))
        recall = pipeline.evaluate(config, model=model, workspace=cold, baselines=False,
                                   write=False)["tfmmrec"]["recall@20"]
        for scope, results in (("held-out items", held_out), ("all items", in_sample)):
            for pair in ("text→image", "image→text", "text→fused", "image→fused"):
                metrics = results[pair]
                rows[f"alignment {weight} · {scope} · {pair}"] = {
                    "recall@1": metrics["recall@1"], "recall@10": metrics["recall@10"],
                    "median_rank": metrics["median_rank"], "queries": metrics["num_queries"],
                    "cold-start recall@20": recall}
    return rows


def section_modality_dropout(base, ws, quick, extra):
    rows = {}
    for rate in (0.0, 0.3):
        config = configure(base, ["data.split=cold_start", f"model.modality_dropout={rate}"],
                           quick, extra)
        cold = with_split(ws, config)
        model = train(config, cold)
        row = {}
        for hidden in ((), *((m,) for m in cold.modalities)):
            label = "all modalities" if not hidden else f"without {hidden[0]}"
            row[label] = pipeline.evaluate(config, model=model, workspace=cold, baselines=False,
                                           hidden_modalities=hidden,
                                           write=False)["tfmmrec"]["recall@20"]
        rows[f"modality dropout {rate}"] = row
    return rows


SECTIONS = {"multitask": section_multitask, "two_stage": section_two_stage,
            "alignment": section_alignment, "modality_dropout": section_modality_dropout}


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["multitask"]
    names = [n for n in rows if "rmse" in rows[n]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rmse = [rows[n]["rmse"][0] for n in names]
    recall = [rows[n]["recall@20"][0] for n in names]
    axes[0].scatter(rmse, recall)
    for n, x, y in zip(names, rmse, recall, strict=True):
        axes[0].annotate(n, (x, y), fontsize=8)
    axes[0].set(xlabel="RMSE (lower is better)", ylabel="Recall@20",
                title="multitask trade-off (TFRS tutorial split)")
    drop = results["modality_dropout"]
    labels = list(next(iter(drop.values())))
    x = np.arange(len(labels))
    for i, (name, row) in enumerate(drop.items()):
        axes[1].bar(x + i * 0.4, [row[label] for label in labels], width=0.4, label=name)
    axes[1].set_xticks(x + 0.2, labels)
    axes[1].set(ylabel="cold-start Recall@20", title="modality removed at evaluation")
    axes[1].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "ml100k.yaml"))
    parser.add_argument("--quick", action="store_true", help="2 epochs per model (smoke run)")
    parser.add_argument("--section", action="append", choices=list(SECTIONS),
                        help="run only these sections (default: all); they replace their "
                             "tables in the saved results, the others are kept")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra config overrides for every model (tuning)")
    args = parser.parse_args()
    config = configure(args.config, [], args.quick)
    if not Path(config.data.path).is_dir():
        print(f"needs ../shared: dataset folder {config.data.path} not found", file=sys.stderr)
        return 2
    start = time.perf_counter()
    ws = pipeline.prepare(config)
    suffix = "_quick" if args.quick else ""
    path = RESULTS / f"ml100k_ranking{suffix}.json"
    results = {}
    if args.section and not args.overrides:
        if not path.is_file():
            print(f"--section updates {path}, which does not exist: run every section first",
                  file=sys.stderr)
            return 2
        results = json.loads(path.read_text())
    for name in args.section or SECTIONS:
        print(f"[{name}]", flush=True)
        results[name] = SECTIONS[name](args.config, ws, args.quick, args.overrides)
        print(format_table(results[name], list(next(iter(results[name].values())))), flush=True)
    if args.overrides:  # a tuning run: printed only
        return 0
    seconds = time.perf_counter() - start
    command = "python benchmarks/ml100k_ranking.py" + (" --quick" if args.quick else "")
    if args.section:  # which sections were re-run since the whole file was written, and how
        rerun = " ".join(f"--section {name}" for name in args.section)
        results.setdefault("sections_rerun", []).append(
            {"command": f"{command} {rerun}", "seconds": seconds})
    else:
        results["seconds"], results["command"] = seconds, command
    write_json(results, path)
    plot(results, path.with_suffix(".png"))
    print(f"wrote {path} and .png ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
