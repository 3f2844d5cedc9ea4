"""Benchmark (validation only): the model's closed-form CF part alone, EASE vs EASE + iALS.

    python benchmarks/linear_cf_blocks.py A0 C0 B0     # protocol + seed, as in ml100k.py

For each (protocol, seed) the split is ``benchmarks/ml100k.py``'s and the carve is the one
early stopping trains and validates on (``data.splits.validation_split``, same protocol);
``evaluation.linear_cf_selection.choose_linear_cf`` fits the CF part on the carve's training
rows with everything chosen on carves of those rows (``model.linear_cf: ease`` and
``ease+ials``, content map ``kernel``), and the part alone — no learned towers — is scored on
the carve's held-out rows. Test rows are never read. Prints a table and writes
benchmarks/results/linear_cf_blocks.json. Needs ../shared (the frozen features of the
content map come from the encoder cache, built on first use).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KIND = {"A": "random", "B": "cold_start", "C": "temporal"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="+", help="protocol letter + seed, e.g. A0 B1 C0")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    import tfmmrec
    from tfmmrec import pipeline
    from tfmmrec.data.splits import split_interactions, validation_split
    from tfmmrec.evaluation.content import content_features
    from tfmmrec.evaluation.linear_cf_selection import choose_linear_cf
    from tfmmrec.evaluation.protocol import evaluate_embeddings, split_matrices
    from tfmmrec.evaluation.report import write_json

    config = tfmmrec.load_config("configs/ml100k.yaml", ["train.verbose=0"])
    if not Path(config.data.path).exists():
        print(f"needs ../shared ({config.data.path} not found)", file=sys.stderr)
        return 2
    ws = pipeline.prepare(config, progress=False)
    features, present = content_features({m: ws.contents[m].values for m in ws.modalities},
                                         {m: ws.contents[m].mask for m in ws.modalities})
    rows = []
    for job in args.jobs:
        protocol, seed = job[0].upper(), int(job[1:])
        data_seed = config.data.seed + (seed if protocol == "B" else 0)  # as ml100k.py
        split = split_interactions(ws.dataset.interactions, KIND[protocol],
                                   config.data.test_fraction, data_seed)
        carve = validation_split(split, config.data.test_fraction, data_seed)
        train, _ = split_matrices(carve, ws.user_ids, ws.dataset.num_items)
        for blocks in ("ease", "ease+ials"):
            start = time.perf_counter()
            weights, info = choose_linear_cf(
                carve, ws.user_ids, ws.dataset.num_items, rank=config.model.linear_cf_rank,
                features=features, present=present, validation_fraction=config.data.test_fraction,
                seed=data_seed, content="kernel", blocks=blocks)
            users = np.asarray((train > 0).astype(np.float32) @ weights.query_factors,
                               np.float32)
            metrics = evaluate_embeddings(users, weights.item_embeddings(features, present),
                                          carve, ws.user_ids, [20])
            row = {"protocol": protocol, "seed": seed, "blocks": blocks,
                   "recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"],
                   "chosen": {k: info[k] for k in ("l2", "alpha", "width", "ials")},
                   "seconds": time.perf_counter() - start}
            rows.append(row)
            print(f"{protocol} seed {seed} {blocks:10s} validation Recall@20 "
                  f"{row['recall@20']:.4f} NDCG@20 {row['ndcg@20']:.4f}  {row['chosen']}",
                  flush=True)
            write_json({"command": "python benchmarks/linear_cf_blocks.py " + " ".join(args.jobs),
                        "rows": rows}, REPO / "benchmarks" / "results" / "linear_cf_blocks.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
