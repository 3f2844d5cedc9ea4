"""Benchmark: does ``model.training_precision=bfloat16`` change what the model learns?

Protocol A (random 80/20, configs/ml100k.yaml), the early-stopping validation carve of the
training split: for each seed and precision, ``pipeline.select_epochs`` trains with early
stopping and reports the best validation Recall@20, its epoch, the EASE weight chosen with it
and the whole curve. No test figure is read. Writes benchmarks/results/training_precision.json.

    python benchmarks/training_precision.py --seeds 0 1     # ~15 min per run on 2 idle cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off
from tfmmrec.files import write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "training-precision"
RESULTS = ROOT / "benchmarks" / "results"
SPLIT_A = ["data.split=random", "data.test_fraction=0.2", "data.seed=42"]


def run(seed: int, precisions: list[str], cache_dir: str | None) -> dict:
    """``{precision: select_epochs result + seconds}`` for one seed (one workspace)."""
    import tensorflow as tf

    from tfmmrec import pipeline
    from tfmmrec.config import load_config
    from tfmmrec.training.strategy import strategy_for

    results, ws = {}, None
    for precision in precisions:
        out = OUT / f"seed{seed}-{precision}"
        shutil.rmtree(out, ignore_errors=True)
        config = load_config(str(ROOT / "configs" / "ml100k.yaml"), [
            *SPLIT_A, f"train.seed={seed}", f"train.output_dir={out}", "train.verbose=0",
            f"model.training_precision={precision}",
            *([f"train.cache_dir={cache_dir}"] if cache_dir else [])])
        strategy = strategy_for(config.train)
        tf.keras.utils.set_random_seed(config.train.seed)
        ws = pipeline.prepare(config) if ws is None else ws.with_config(config)
        start = time.time()
        results[precision] = {**pipeline.select_epochs(ws, strategy, out / "early-stopping"),
                              "seconds": time.time() - start}
        print(f"seed {seed} {precision}: validation recall@20 "
              f"{results[precision]['best']:.4f} (epoch {results[precision]['best_epoch']})",
              flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--cache-dir", help="encoder cache (default: the config's)")
    args = parser.parse_args(argv)
    if not (ROOT.parent / "shared" / "data" / "ml100k").is_dir():
        print("needs ../shared/data/ml100k", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    report = {"command": "python benchmarks/training_precision.py --seeds "
                         + " ".join(map(str, args.seeds)),
              "load_average_at_start": os.getloadavg()[0],
              "seeds": {str(seed): run(seed, args.precisions, args.cache_dir)
                        for seed in args.seeds}}
    print(table(report))
    print(f"wrote {write_json(report, RESULTS / 'training_precision.json')}")
    return 0


def table(report: dict) -> str:
    seeds = report["seeds"]
    precisions = list(next(iter(seeds.values())))
    lines = ["| validation Recall@20 (protocol A carve) | " + " | ".join(
        f"seed {s}" for s in seeds) + " | mean |", "| :--- |" + " ---: |" * (len(seeds) + 1)]
    for p in precisions:
        values = [seeds[s][p]["best"] for s in seeds]
        cells = [f"{seeds[s][p]['best']:.4f} (epoch {seeds[s][p]['best_epoch']})" for s in seeds]
        lines.append(f"| {p} | " + " | ".join(cells) + f" | {sum(values) / len(values):.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
