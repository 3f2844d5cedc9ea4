"""Benchmark: the same jobs on two checkouts (before and after a refactor), figures side by side.

    git worktree add --detach /work/wt-before 25be0ad      # the commit before issue 13 began
    nice -n 10 python benchmarks/refactor_before_after.py --before /work/wt-before
    python benchmarks/refactor_before_after.py --before /work/wt-before --parts demo  # one part

Issue 13 (exact restore, modality registry, a smaller pipeline) asked for "no benchmark figure
changes except where a bug is fixed". Each part runs once per checkout, in its own process with
``PYTHONPATH`` set to that checkout and its working directory there, with TensorFlow's op
determinism on and one intra-/inter-op thread, so a run is repeatable and any difference comes
from the code (both checkouts get the same config file and overrides). Measured here: the
ML-100K ID-only row and FSDD's rows then repeat bit for bit; the demo does not (its figures
move run to run), hence ``--repeats``:

  demo    ``tfmmrec demo`` (configs/demo.yaml: generated catalogue, small random-init towers)
  ml100k  ``tfmmrec train`` + ``tfmmrec evaluate`` on ML-100K with the *before* checkout's
          configs/ml100k.yaml and a row of benchmarks/ml100k.py (``--ml100k-row``: ID-only by
          default; text/all encode the catalogue with MiniLM/EfficientNet-Lite0, a separate
          encoder cache per side); ``--ml100k-splits`` picks the protocols
  fsdd    ``benchmarks/fsdd_audio.py --quick`` of each checkout (YAMNet tower, cold-start clips)

Writes benchmarks/results/refactor_before_after.json (every figure of both sides, their
differences, the commits, seconds per run) and prints the table. Needs ../shared for ml100k and
fsdd (a part whose data is missing is reported as skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / "out" / "refactor"
PARTS = ("demo", "ml100k", "fsdd")

# Run in each checkout's own interpreter process: determinism on before any op runs.
DRIVER = """
import runpy, sys
import tfmmrec  # Keras 2 before TensorFlow loads
import tensorflow as tf
tf.config.experimental.enable_op_determinism()
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
kind, args = sys.argv[1], sys.argv[2:]
if kind == "cli":
    from tfmmrec.cli import main
    sys.exit(main(args))
sys.argv = list(args)
runpy.run_path(args[0], run_name="__main__")
"""


def commit_of(checkout: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True,
                              text=True, check=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + (" (+ uncommitted changes)" if dirty else "")


COLLECT = False  # --collect: read the runs already in benchmarks/out/refactor, run nothing


def run(checkout: Path, kind: str, args: list[str], log: Path) -> float:
    """One driver process in ``checkout``; its output goes to ``log``; returns seconds."""
    if COLLECT:
        return float("nan")
    env = {**os.environ, "PYTHONPATH": str(checkout), "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONHASHSEED": "0"}
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run([sys.executable, "-c", DRIVER, kind, *args], cwd=checkout,
                              env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"{kind} {' '.join(args)} failed in {checkout} (exit {code}); "
                         f"see {log}")
    return time.perf_counter() - start


def figures(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a metrics.json-like tree, as ``row/metric`` keys."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(figures(value, f"{name}/"))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float):
            out[name] = float(value)
        elif isinstance(value, list) and value and all(
                isinstance(v, int | float) for v in value):  # [mean, std]
            out[name] = float(value[0])
    return out


def demo(checkout: Path, work: Path) -> tuple[dict[str, float], float, dict]:
    log = work / "demo.log"
    seconds = run(checkout, "cli", ["demo", "--output", str(work / "demo" / "run")], log)
    metrics = json.loads((work / "demo" / "run" / "eval" / "metrics.json").read_text())
    lines = [line for line in log.read_text().splitlines()
             if line.startswith(("exported model", "query_text"))]
    top = {"top_items": [line.split(": ", 1)[-1].split(" → ")[-1] for line in lines]}
    return figures(metrics.get("results", metrics)), seconds, top


# ML-100K rows of benchmarks/ml100k.py (as of the before checkout): config overrides.
ML100K_ROWS = {"id_only": ["text.enabled=false", "image.enabled=false"],  # "ID-only · tfmmrec"
               "text": ["image.enabled=false"], "all": []}


def ml100k(checkout: Path, work: Path, config: Path, split: str, row: str
           ) -> tuple[dict[str, float], float, dict]:
    run_dir = work / f"ml100k-{split}-{row}"
    overrides = [arg for o in ["train.verbose=0", *ML100K_ROWS[row]] for arg in ("--set", o)]
    overrides += ["--set", f"train.output_dir={run_dir / 'run'}",
                 "--set", f"train.cache_dir={work.parent / 'encoder-cache'}",  # per side
                 "--set", f"data.split={split}"]
    seconds = run(checkout, "cli", ["train", "--config", str(config), *overrides],
                  run_dir / "train.log")
    seconds += run(checkout, "cli", ["evaluate", "--config", str(config), *overrides],
                   run_dir / "evaluate.log")
    metrics = json.loads((run_dir / "run" / "eval" / "metrics.json").read_text())
    return figures(metrics.get("results", metrics)), seconds, {}


def fsdd(checkout: Path, work: Path) -> tuple[dict[str, float], float, dict]:
    script = checkout / "benchmarks" / "fsdd_audio.py"
    seconds = run(checkout, "script", [str(script), "--quick"], work / "fsdd.log")
    kept = work / "fsdd_audio_quick.json"  # the script overwrites its own on every run
    if not COLLECT:
        kept.write_text((checkout / "benchmarks" / "out" / "fsdd" / "fsdd_audio_quick.json")
                        .read_text())
    payload = json.loads(kept.read_text())
    return figures(payload["results"]), seconds, {}


def compare(before: list[dict[str, float]], after: list[dict[str, float]]) -> dict:
    """Per figure: each side's runs, mean, min and max, the difference of the means, and
    whether each side's mean lies within the other side's range of runs (``within_spread``:
    with one run per side, only equal figures are)."""
    keys = sorted(set().union(*before, *after))
    rows = {}
    for key in keys:
        runs = {side: [r[key] for r in results if key in r]
                for side, results in (("before", before), ("after", after))}
        row: dict = {side: (float(np.mean(v)) if v else None) for side, v in runs.items()}
        row["diff"] = (row["after"] - row["before"]) if all(runs.values()) else None
        if max(len(v) for v in runs.values()) > 1:
            row["runs"] = runs
        row["within_spread"] = bool(all(runs.values()) and all(
            min(runs[other]) <= row[side] <= max(runs[other])
            for side, other in (("before", "after"), ("after", "before"))))
        rows[key] = row
    diffs = [abs(r["diff"]) for r in rows.values() if r["diff"] is not None]
    return {"figures": rows, "max_abs_diff": max(diffs, default=None),
            "identical": all(d == 0 for d in diffs) and all(r["diff"] is not None
                                                             for r in rows.values()),
            "all_within_spread": all(r["within_spread"] for r in rows.values())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, type=Path,
                        help="a checkout of the code before the change (git worktree)")
    parser.add_argument("--after", type=Path, default=REPO, help="default: this checkout")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--ml100k-splits", nargs="+", default=["random"],
                        choices=["random", "cold_start", "temporal"],
                        help="ML-100K protocols: random (A), cold_start (B), temporal (C)")
    parser.add_argument("--ml100k-row", choices=list(ML100K_ROWS), default="id_only",
                        help="which model: id_only (default; no encoder: minutes), text "
                             "(MiniLM) or all (MiniLM + EfficientNet-Lite0: encoding the "
                             "catalogue takes most of an hour on a loaded 2-core machine)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per side and part (training is not bitwise repeatable on "
                             "CPU even with op determinism: repeats show the run-to-run spread)")
    parser.add_argument("--output", type=Path, default=RESULTS / "refactor_before_after.json")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: compare the runs already under "
                             "benchmarks/out/refactor (e.g. of an interrupted invocation)")
    args = parser.parse_args(argv)
    global COLLECT
    COLLECT = args.collect
    sys.path.insert(0, str(REPO))
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    config = WORK / "ml100k-before.yaml"  # one config file for both sides
    WORK.mkdir(parents=True, exist_ok=True)
    config.write_text((sides["before"] / "configs" / "ml100k.yaml").read_text())
    shared = REPO.parent / "shared"
    commits = {side: commit_of(path) for side, path in sides.items()}
    jobs = []
    for part in args.parts:
        if part == "ml100k":
            jobs += [(f"ml100k-{split}-{args.ml100k_row}", split)
                     for split in args.ml100k_splits]
        else:
            jobs.append((part, None))
    for name, split in jobs:
        if name != "demo" and not (shared / "data").is_dir():
            save(args.output, name, {"skipped": f"needs {shared}"}, commits)
            continue
        result: dict[str, list] = {"before": [], "after": []}
        seconds: dict[str, list] = {"before": [], "after": []}
        extra: dict[str, list] = {"before": [], "after": []}
        for repeat in range(args.repeats):
            for side, checkout in sides.items():  # alternating: both see the same machine
                work = WORK / side / f"r{repeat}"
                print(f"{name}: {side} run {repeat + 1}/{args.repeats} ({checkout})…",
                      flush=True)
                try:
                    if name == "demo":
                        figures_, took, more = demo(checkout, work)
                    elif split is not None:
                        figures_, took, more = ml100k(checkout, work, config, split,
                                                      args.ml100k_row)
                    else:
                        figures_, took, more = fsdd(checkout, work)
                except FileNotFoundError:
                    if not COLLECT:
                        raise
                    continue  # --collect: this run was not made
                result[side].append(figures_)
                seconds[side].append(round(took, 1))
                extra[side].append(more)
        if not (result["before"] and result["after"]):
            print(f"{name}: no runs of both sides to compare", flush=True)
            continue
        command = ("python benchmarks/refactor_before_after.py --before DIR --parts "
                   f"{name.split('-')[0]}"
                   + (f" --ml100k-splits {split} --ml100k-row {args.ml100k_row}" if split
                      else "")
                   + (f" --repeats {args.repeats}" if args.repeats > 1 else ""))
        save(args.output, name, {"command": command,
                                 "repeats": {k: len(v) for k, v in result.items()},
                                 **compare(result["before"], result["after"]),
                                 "seconds": seconds,
                                 **({"outputs": extra} if any(any(e) for e in extra.values())
                                    else {})}, commits)
    print(table(json.loads(args.output.read_text())))
    print(f"wrote {args.output}")
    return 0


def save(path: Path, name: str, part: dict, commits: dict[str, str]) -> None:
    """Merge one part into the results file (read again first: parts may run side by side)."""
    from tfmmrec.files import write_json

    output = json.loads(path.read_text()) if path.is_file() else {}
    output["determinism"] = ("each run in its own process with tf.config.experimental."
                             "enable_op_determinism(), 1 intra- and 1 inter-op thread, "
                             "PYTHONHASHSEED=0; training still differs run to run (float "
                             "order), so --repeats gives the spread")
    output.setdefault("parts", {})[name] = {**part, "commits": commits}
    write_json(output, path)


def table(output: dict) -> str:
    lines = ["| part | figure | before | after | after − before | within run-to-run spread |",
             "|---|---|---:|---:|---:|---|"]
    for part, result in output["parts"].items():
        if "skipped" in result:
            lines.append(f"| {part} | skipped: {result['skipped']} | | | | |")
            continue
        for key, row in result["figures"].items():
            cells = [f"{row[s]:.4f}" if row[s] is not None else "–" for s in ("before",
                                                                                "after")]
            diff = f"{row['diff']:+.4f}" if row["diff"] is not None else "–"
            lines.append(f"| {part} | {key} | {cells[0]} | {cells[1]} | {diff} | "
                         f"{'yes' if row['within_spread'] else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
