"""Benchmark (validation only): the model's closed-form CF part alone, EASE vs iALS vs both.

    python benchmarks/linear_cf_blocks.py A0 C0 B0     # protocol + seed, as in ml100k.py
    python benchmarks/linear_cf_blocks.py A0 --variants ials:exact ease+ials:linear
    python benchmarks/linear_cf_blocks.py A0 B0 C0 --variants ease:exact ials:exact \
        --half-lives                # one row per recency half-life (the chosen one marked)

For each (protocol, seed) the split is ``benchmarks/ml100k.py``'s and the carve is the one
early stopping trains and validates on (``data.splits.validation_split``, same protocol);
``evaluation.linear_cf_selection.choose_linear_cf`` fits the CF part on the carve's training
rows with everything chosen on carves of those rows (each variant ``blocks:foldin`` is
``model.linear_cf`` and ``model.linear_cf_foldin``; content map ``kernel``), and the part
alone — no learned towers, users folded in as served — is scored on the carve's held-out rows
(Recall@20, NDCG@20 and, off cold start, TFRS's top-100 accuracy, nothing excluded). Test
rows are never read. With ``--half-lives`` each variant is scored at every half-life of
``linear_cf_selection.HALF_LIVES`` (its other settings as chosen), to show the curve that the
half-life choice (made on an inner carve) reads. Prints a table and writes
benchmarks/results/linear_cf_blocks.json (``linear_cf_recency.json`` with ``--half-lives``).
Needs ../shared (the frozen features of the content map come from the encoder cache, built on
first use).
"""

from __future__ import annotations

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from ml100k_workspace import prepared_ml100k

REPO = Path(__file__).resolve().parents[1]
KIND = {"A": "random", "B": "cold_start", "C": "temporal"}
VARIANTS = ["ease:exact", "ials:exact", "ease+ials:linear", "ease+ials:exact"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="+", help="protocol letter + seed, e.g. A0 B1 C0")
    parser.add_argument("--variants", nargs="+", default=VARIANTS,
                        help="blocks:foldin pairs (model.linear_cf:model.linear_cf_foldin)")
    parser.add_argument("--half-lives", action="store_true",
                        help="score every recency half-life, not only the chosen one")
    args = parser.parse_args(argv)
    from tfmmrec.data.splits import split_interactions, validation_split
    from tfmmrec.evaluation.content import content_features
    from tfmmrec.evaluation.linear_cf_selection import choose_linear_cf
    from tfmmrec.evaluation.protocol import evaluate_embeddings, split_matrices
    from tfmmrec.evaluation.recency import HALF_LIVES
    from tfmmrec.evaluation.report import write_json
    from tfmmrec.towers.history import recency_matrix
    prepared = prepared_ml100k()
    if prepared is None:
        return 2
    config, ws = prepared
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
        for variant in args.variants:
            blocks, _, foldin = variant.partition(":")
            start = time.perf_counter()
            weights, info = choose_linear_cf(
                carve, ws.user_ids, ws.dataset.num_items, rank=config.model.linear_cf_rank,
                features=features, present=present, validation_fraction=config.data.test_fraction,
                seed=data_seed, content="kernel", blocks=blocks, foldin=foldin or "exact")
            items = weights.item_embeddings(features, present)
            chosen = {k: info[k] for k in ("l2", "alpha", "width", "ials", "half_life")}
            seconds = time.perf_counter() - start
            for half_life in HALF_LIVES if args.half_lives else [weights.half_life]:
                users = dataclasses.replace(weights, half_life=half_life).user_embeddings(
                    train, recency_matrix(carve.train, ws.user_ids, ws.dataset.num_items,
                                          half_life))
                metrics = evaluate_embeddings(users, items, carve, ws.user_ids, [20])
                top100 = metrics.get("top_k_accuracy@100")
                row = {"protocol": protocol, "seed": seed, "blocks": blocks, "foldin": foldin,
                       "half_life": half_life, "recall@20": metrics["recall@20"],
                       "ndcg@20": metrics["ndcg@20"], "top_k_accuracy@100": top100,
                       "chosen": chosen, "seconds": seconds}
                rows.append(row)
                mark = " (chosen)" if args.half_lives and half_life == weights.half_life else ""
                print(f"{protocol} seed {seed} {variant:17s} half-life {half_life:4g} "
                      f"validation Recall@20 {row['recall@20']:.4f} NDCG@20 "
                      f"{row['ndcg@20']:.4f} top-100 "
                      f"{'–' if top100 is None else f'{top100:.4f}'}{mark}  {chosen}",
                      flush=True)
            name = "linear_cf_recency" if args.half_lives else "linear_cf_blocks"
            write_json({"command": "python benchmarks/linear_cf_blocks.py "
                        + " ".join(argv if argv is not None else sys.argv[1:]), "rows": rows},
                       REPO / "benchmarks" / "results" / f"{name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
