"""Benchmark (a lead, CF only): EASE and iALS scores blended, protocol A on both real datasets.

    python benchmarks/cf_blend_lead.py          # needs ../shared and benchmarks/out/insteval/data

On InstEval the model loses protocol A to EASE because its validation carve prefers iALS
(docs/quality.md, "A second real dataset"); a blend of the two might beat both. Each dataset's
protocol-A split (random 80/20, seed 42) and its validation carve; EASE's λ and iALS's settings
chosen on the carve exactly as the baselines' are (``baseline_suite.select_on_validation``);
each model's scores scaled by their standard deviation, blended as
``α · EASE + (1 − α) · iALS`` (α from 0 to 1 by 0.1; one dot product, as the model's
``ease+ials`` block would serve it), α chosen on the carve by Recall@20 and, separately, by
NDCG@20. Full-rank EASE (the model's block is rank 128). Test figures are printed and saved for
every α, but only the carve chooses. Writes benchmarks/results/cf_blend_lead.json. Build the
InstEval folder first with ``python benchmarks/insteval.py --lme4 DIR`` (see its docstring).
"""

from __future__ import annotations

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ALPHAS = tuple(round(a, 1) for a in np.linspace(0.0, 1.0, 11))
METRICS = ("recall@20", "ndcg@20")


def blended(ease, ials, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Users and items whose product is ``α · EASE/σ_E + (1 − α) · iALS/σ_I``."""
    (ue, ie, se), (ui, ii, si) = ease, ials
    a, b = np.sqrt(alpha / se), np.sqrt((1.0 - alpha) / si)
    return (np.hstack([a * ue, b * ui]).astype(np.float32),
            np.hstack([a * ie, b * ii]).astype(np.float32))


def run(interactions, user_ids, num_items) -> dict:
    from tfmmrec.data.splits import split_interactions, validation_split
    from tfmmrec.evaluation.baseline_suite import EASE_GRID, IALS_GRID, select_on_validation
    from tfmmrec.evaluation.cf import EASE, IALS
    from tfmmrec.evaluation.protocol import evaluate_embeddings, split_matrices

    outer = split_interactions(interactions, "random", 0.2, 42)
    carve = validation_split(outer, 0.2, 42)
    ease_p, _ = select_on_validation(EASE, EASE_GRID, carve, user_ids, num_items,
                                     metric="recall@20")
    ials_p, _ = select_on_validation(IALS, IALS_GRID, carve, user_ids, num_items,
                                     metric="recall@20")
    scored = {}
    for level, split in (("carve", carve), ("test", outer)):
        train, _ = split_matrices(split, user_ids, num_items)
        parts = []
        for model in (EASE(**ease_p), IALS(**ials_p)):
            users, items = model.fit(train).embeddings()
            parts.append((users, items, float(np.std(users[:500] @ items.T))))
        for alpha in ALPHAS:
            metrics = evaluate_embeddings(*blended(*parts, alpha), split, user_ids, [20])
            scored.setdefault(level, {})[alpha] = {m: float(metrics[m]) for m in METRICS}
    chosen = {m: max(ALPHAS, key=lambda a, m=m: scored["carve"][a][m]) for m in METRICS}
    return {"ease": ease_p, "ials": ials_p, "scored": scored, "chosen_alpha": chosen}


def main() -> int:
    from insteval import interaction_datasets

    from tfmmrec.evaluation.report import write_json

    report = {"command": "python benchmarks/cf_blend_lead.py", "datasets": {}}
    for name, interactions, user_ids, num_items in interaction_datasets():
        result = run(interactions, user_ids, num_items)
        report["datasets"][name] = result
        test = result["scored"]["test"]
        print(f"{name}: EASE {result['ease']}, iALS {result['ials']}")
        print("| α (EASE) | carve R@20 | carve NDCG@20 | test R@20 | test NDCG@20 |")
        print("|---:|---:|---:|---:|---:|")
        for a in ALPHAS:
            c = result["scored"]["carve"][a]
            print(f"| {a} | {c['recall@20']:.4f} | {c['ndcg@20']:.4f} | "
                  f"{test[a]['recall@20']:.4f} | {test[a]['ndcg@20']:.4f} |")
        print(f"chosen on the carve: α {result['chosen_alpha']}")
    write_json(report, REPO / "benchmarks" / "results" / "cf_blend_lead.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
