"""Benchmark: a training setting chosen on validation only, e.g. the batch size (issue 15).

For each protocol (A, B, C of ``benchmarks/ml100k.py``), seed and variant, runs the shipped
config's early stopping (``pipeline.select_epochs``) on the validation carve of that protocol's
training split and records the carve's Recall@20 at the chosen (epoch, CF kind, CF weight),
with the whole curve. No model is trained on the full training split and nothing is scored on
a test split: this is the figure a choice between variants may be made on.

    python benchmarks/batch_trial.py                        # 3 protocols × 3 seeds × 2 variants
    python benchmarks/batch_trial.py --protocols C --seeds 0 --variants b4096

Each (protocol, seed, variant) is one line of benchmarks/out/batch-trial/parts.jsonl (reused;
``--fresh`` starts over; about a minute each on 2 cores). Writes
benchmarks/results/batch_size_validation.json (per-seed figures and the mean difference of each
variant to the first) once every requested part exists.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off

ROOT = Path(__file__).resolve().parents[1]
PARTS = ROOT / "benchmarks" / "out" / "batch-trial" / "parts.jsonl"
RESULT = ROOT / "benchmarks" / "results" / "batch_size_validation.json"
# variant → config overrides on top of configs/ml100k.yaml (4,096 at the square-root rule's
# rate from 2,048 at 0.005)
VARIANTS = {"b2048": ["train.batch_size=2048", "train.learning_rate=0.005"],
            "b4096": ["train.batch_size=4096", "train.learning_rate=0.007"]}


def run_part(spaces, protocol: str, seed: int, variant: str) -> dict:
    import shutil

    import ml100k
    import tensorflow as tf

    from tfmmrec import pipeline

    args = ml100k.parse_args([arg for o in VARIANTS[variant] for arg in ("--set", o)])
    config = ml100k.protocol_config(args, protocol, ml100k.Row(ml100k.DEFAULT, "tfmmrec"), seed)
    output = PARTS.parent / "runs" / f"{protocol}-{seed}-{variant}"
    shutil.rmtree(output, ignore_errors=True)
    tf.keras.utils.set_random_seed(config.train.seed)
    start = time.perf_counter()
    chosen = pipeline.select_epochs(spaces.for_config(config), tf.distribute.get_strategy(),
                                    output)
    shutil.rmtree(output, ignore_errors=True)
    return {"protocol": protocol, "seed": seed, "variant": variant, "best": chosen["best"],
            "best_epoch": chosen["best_epoch"], "linear_cf": chosen.get("linear_cf"),
            "weight": chosen.get("linear_cf_weight"), "curve": chosen["curve"],
            "top100": chosen["best_metrics"].get("top_k_accuracy@100"),
            "ndcg20": chosen["best_metrics"].get("ndcg@20"),
            "seconds": time.perf_counter() - start}


def summarise(parts: list[dict], variants: list[str]) -> dict:
    """Per protocol: each variant's per-seed validation Recall@20 and its mean difference to
    the first variant over the seeds both have."""
    table: dict = {}
    for protocol in sorted({p["protocol"] for p in parts}):
        rows = {v: {p["seed"]: p["best"] for p in parts
                    if p["protocol"] == protocol and p["variant"] == v} for v in variants}
        first = rows[variants[0]]
        table[protocol] = {
            v: {"validation_recall@20": {str(s): rows[v][s] for s in sorted(rows[v])},
                f"mean_difference_to_{variants[0]}": float(np.mean(
                    [rows[v][s] - first[s] for s in rows[v] if s in first]))
                if any(s in first for s in rows[v]) else None}
            for v in variants}
    return table


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ml100k

    args = ml100k.study_arguments(__doc__, list(VARIANTS), list(VARIANTS), argv)
    from tfmmrec.files import write_json

    wanted = [(p, s, v) for p in args.protocols for s in args.seeds for v in args.variants]
    chosen = ml100k.validation_parts(
        "batch_trial.py", PARTS, wanted, run_part,
        lambda part: f"validation Recall@20 {part['best']:.4f} (epoch {part['best_epoch']}, "
                     f"{part['linear_cf']} weight {part['weight']})", args.fresh)
    if chosen is None:
        return 2
    table = summarise(chosen, args.variants)
    for protocol, rows in table.items():
        print(protocol, ", ".join(
            f"{v} " + "/".join(f"{x:.4f}" for x in r["validation_recall@20"].values())
            + ("" if r[f"mean_difference_to_{args.variants[0]}"] is None or v == args.variants[0]
               else f" ({r[f'mean_difference_to_{args.variants[0]}']:+.4f})")
            for v, r in rows.items()))
    if len(chosen) == len(wanted):
        write_json({"command": "python benchmarks/batch_trial.py" + "".join(
                        f" --{k} {' '.join(map(str, getattr(args, k)))}"
                        for k in ("protocols", "seeds", "variants")),
                    "variants": {v: VARIANTS[v] for v in args.variants},
                    "table": table, "parts": chosen}, RESULT)
        print(f"wrote {RESULT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
