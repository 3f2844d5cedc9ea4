"""Benchmark: cross-modal alignment on the embedded demo catalogue (no ../shared needed).

    python benchmarks/demo_alignment.py

Trains the demo model on a cold-start split with the alignment loss off and on, and reports
cross-modal Recall@1/10 and median rank for every modality pair, on the held-out items (no
training batch contained them) and on all items (in-sample), plus cold-start Recall@20.
Writes benchmarks/results/demo_alignment.json.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from pathlib import Path

import tfmmrec

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off
from tfmmrec import pipeline
from tfmmrec.evaluation.crossmodal import evaluate_cross_modal
from tfmmrec.evaluation.report import format_table, write_json

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "out" / "demo_alignment"


def main() -> int:
    start = time.perf_counter()
    rows = {}
    workspace = None
    for weight in (0.0, 0.1):
        config = tfmmrec.load_config(None, [f"train.output_dir={WORK}/run", "train.verbose=0",
                                            "data.split=cold_start",
                                            f"model.alignment_weight={weight}"])
        shutil.rmtree(config.train.output_dir, ignore_errors=True)
        workspace = workspace or pipeline.prepare(config, progress=False)
        model = pipeline.train(config, workspace=workspace, progress=False).model
        recall = pipeline.evaluate(config, model=model, workspace=workspace, baselines=False,
                                   write=False)["tfmmrec"]["recall@20"]
        everything = dataclasses.replace(workspace, split=dataclasses.replace(
            workspace.split, test_items=None))
        for scope, ws in (("held-out", workspace), ("all items", everything)):
            for pair, metrics in evaluate_cross_modal(model, ws).items():
                rows[f"alignment {weight} · {scope} · {pair}"] = {
                    "recall@1": metrics["recall@1"], "recall@10": metrics["recall@10"],
                    "median_rank": metrics["median_rank"], "queries": metrics["num_queries"],
                    "cold-start recall@20": recall}
    print(format_table(rows, list(next(iter(rows.values())))))
    write_json({"rows": rows, "seconds": time.perf_counter() - start,
                "command": "python benchmarks/demo_alignment.py"},
               REPO / "benchmarks" / "results" / "demo_alignment.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
