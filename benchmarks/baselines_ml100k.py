"""Benchmark: the classic baselines on MovieLens-100K, each tuned on validation, three protocols.

    python benchmarks/baselines_ml100k.py               # 3 seeds, protocols A B C
    python benchmarks/baselines_ml100k.py --seeds 1 --protocol B

The rows issue 11 compares tfmmrec with: EASE, iALS (``implicit``), content→CF ridge (MiniLM
text features → iALS item factors) and the centred content-profile kNN, through
``tfmmrec.evaluation.baseline_suite.run_baselines``: every setting (λ, factors, regularisation,
alpha, ridge α) is chosen on a validation split carved from the protocol's training split with
the same split kind (``data.splits.validation_split``); test figures are only reported.
Protocols and splits are those of ``benchmarks/ml100k.py``: A random 80/20 (seed 42), B item
cold start (20% of items, split seed 42 + seed), C per-user temporal (last 20%). The seed also
seeds iALS. EASE and iALS are not run on B (no test item has a training interaction).
Writes benchmarks/results/baselines_ml100k.json. Needs ../shared (MiniLM weights, ML-100K);
the MiniLM features come from the encoder cache (computed once if absent).
"""

from __future__ import annotations

import os

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TFMMREC_SHARED", REPO.parent / "shared"))
CONFIG = REPO / "configs" / "ml100k.yaml"
RESULTS = REPO / "benchmarks" / "results"
SPLITS = {"A": ("random", lambda seed: 42), "B": ("cold_start", lambda seed: 42 + seed),
          "C": ("temporal", lambda seed: 42)}
COLUMNS = ["top_k_accuracy@100", "recall@10", "recall@20", "ndcg@20"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the config's paths are relative to the repository root

    config = tfmmrec.load_config(str(CONFIG), ["image.enabled=false"])
    if not Path(config.data.path).is_dir() or not Path(config.text.preset).exists():
        print(f"benchmarks/baselines_ml100k.py skipped: needs ../shared ({SHARED})",
              file=sys.stderr)
        return 2
    from tfmmrec import pipeline
    from tfmmrec.data.splits import split_interactions
    from tfmmrec.evaluation.baseline_suite import run_baselines
    from tfmmrec.evaluation.report import format_table, write_json

    start = time.perf_counter()
    ws = pipeline.prepare(config, progress=False)
    text = ws.contents["text"]
    interactions, num_items = ws.dataset.interactions, ws.dataset.num_items
    per_seed: dict = {}
    for protocol in args.protocol:
        kind, split_seed = SPLITS[protocol]
        for seed in range(args.seeds):
            split = split_interactions(interactions, kind, 0.2, split_seed(seed))
            results = run_baselines(split, ws.user_ids, num_items, item_features=text.values,
                                    present=text.mask, ks=config.eval.ks,
                                    validation_fraction=0.2, seed=split_seed(seed),
                                    model_seed=seed)
            for name, result in results.items():
                per_seed.setdefault(protocol, {}).setdefault(name, []).append(
                    {"seed": seed, "metrics": result.metrics, **result.to_dict()})
                print(f"{protocol} seed {seed} {name}: recall@20 "
                      f"{result.metrics['recall@20']:.4f} with {result.config} "
                      f"({result.seconds:.0f} s)", flush=True)
    summary = {p: {name: _mean_std([r["metrics"] for r in runs]) for name, runs in rows.items()}
               for p, rows in per_seed.items()}
    flat = {f"{p} · {name}": m for p, rows in summary.items() for name, m in rows.items()}
    table = format_table(flat, ["seeds", *COLUMNS], model_header="protocol · baseline")
    print("\n" + table)
    seconds = time.perf_counter() - start
    command = "python benchmarks/baselines_ml100k.py" + (
        f" --seeds {args.seeds}" if args.seeds != 3 else "") + (
        f" --protocol {' '.join(args.protocol)}" if args.protocol != list(SPLITS) else "")
    path = write_json({"command": command, "seconds": seconds, "features": "MiniLM-L6 text "
                       "(configs/ml100k.yaml text columns), frozen, from the encoder cache",
                       "results": summary, "per_seed": per_seed, "table_markdown": table},
                      RESULTS / "baselines_ml100k.json")
    print(f"wrote {path.relative_to(REPO)} ({seconds / 60:.1f} min)")
    return 0


def _mean_std(runs: list[dict]) -> dict:
    out: dict = {"seeds": len(runs)}
    for key in runs[0]:
        values = np.array([r[key] for r in runs], float)
        out[key] = (float(values.mean()), float(values.std())) if len(runs) > 1 else float(
            values[0])
    return out


if __name__ == "__main__":
    sys.exit(main())
