"""Benchmark: does the validation carve rank EASE and iALS as the test split does?

    python benchmarks/carve_vs_test.py                                    # ML-100K, protocol A
    python benchmarks/carve_vs_test.py --data benchmarks/out/insteval/data --name insteval

``model.linear_cf: auto`` chooses the CF part's kind (EASE or iALS) on the early-stopping carve
of the training split, each kind's settings tuned on that same carve. This script asks whether
that choice can be trusted on a dataset: each kind's settings are tuned on a carve *of the
carve* (so the comparison on the carve is not flattered by its own tuning), scored on the
carve; and, as the baselines are reported, tuned on the carve, refitted on the whole training
split and scored on the test split (reported, never used to choose). Random 80/20 split,
split seed 42, carves with ``data.splits.validation_split`` as the pipeline makes them.
Prints a table and writes ``benchmarks/results/carve_vs_test_<name>.json``.
"""

from __future__ import annotations

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRIC = "recall@20"


def fraction(text: str) -> float:
    """An argparse type: a share strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1)")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml100k"),
                        help="dataset folder (default: ../shared/data/ml100k)")
    parser.add_argument("--name", default="ml100k", help="names the output JSON")
    parser.add_argument("--fraction", type=fraction, default=0.2,
                        help="test fraction of the split (and of each carve by default)")
    parser.add_argument("--carve-fraction", type=fraction, default=None,
                        help="held-out fraction of each carve (default: --fraction); a "
                             "smaller one trains the carve on nearly as much as the final fit")
    args = parser.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"dataset folder not found: {args.data}")
        return 2

    from tfmmrec.config import DataConfig
    from tfmmrec.data.dataset import load_dataset
    from tfmmrec.data.splits import split_interactions, validation_split
    from tfmmrec.evaluation.baseline_suite import (
        EASE_GRID,
        IALS_GRID,
        select_on_validation,
        validation_score,
    )
    from tfmmrec.evaluation.cf import EASE, IALS
    from tfmmrec.evaluation.protocol import split_matrices
    from tfmmrec.files import write_json

    start = time.perf_counter()
    dataset = load_dataset(DataConfig(path=args.data))
    users, num_items = dataset.user_ids, dataset.num_items
    split = split_interactions(dataset.interactions, "random", args.fraction, 42)
    carve_fraction = args.fraction if args.carve_fraction is None else args.carve_fraction
    carve = validation_split(split, carve_fraction, 42)
    inner = validation_split(carve, carve_fraction, 42)
    kinds = {"EASE": (EASE, EASE_GRID), "iALS": (lambda **p: IALS(**p, seed=0), IALS_GRID)}
    rows = {}
    for name, (factory, grid) in kinds.items():
        on_inner, _ = select_on_validation(factory, grid, inner, users, num_items, metric=METRIC)
        on_carve, _ = select_on_validation(factory, grid, carve, users, num_items, metric=METRIC)
        carve_train, _ = split_matrices(carve, users, num_items)
        train, _ = split_matrices(split, users, num_items)
        rows[name] = {
            "carve (settings from the inner carve)": validation_score(
                factory(**on_inner).fit(carve_train), carve, users, num_items, METRIC),
            "test (settings from the carve)": validation_score(
                factory(**on_carve).fit(train), split, users, num_items, METRIC),
            "settings_inner": on_inner, "settings_carve": on_carve}
    print(f"{args.name}, {METRIC} (random split of {args.fraction:g}, carves of "
          f"{carve_fraction:g}):")
    print("| kind | carve | test |\n|---|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['carve (settings from the inner carve)']:.4f} | "
              f"{row['test (settings from the carve)']:.4f} |")
    leader = {level: max(rows, key=lambda k: rows[k][level])
              for level in ("carve (settings from the inner carve)",
                            "test (settings from the carve)")}
    agree = len(set(leader.values())) == 1
    print(f"carve and test {'agree' if agree else 'DISAGREE'}: {leader}")
    command = f"python benchmarks/carve_vs_test.py --data {args.data} --name {args.name}"
    if args.carve_fraction is not None:
        command += f" --carve-fraction {args.carve_fraction:g}"
    out = write_json({"command": command, "metric": METRIC, "rows": rows,
                      "leader": leader, "agree": agree, "split": split.sizes(),
                      "carve": carve.sizes(), "seconds": time.perf_counter() - start},
                     REPO / "benchmarks" / "results" / f"carve_vs_test_{args.name}.json")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
