"""Benchmark: the ML-100K pipeline re-run on a second real dataset, InstEval.

InstEval (ETH Zurich lecture evaluations, 2,972 students × 1,128 lecturers, 73,421 ratings;
shipped as a data set of R's ``lme4`` package) is a real user × item rating table that is not
in ../shared. It checks that the ordering measured on MovieLens (issue 11) holds on data no
setting was chosen on: ``configs/ml100k.yaml`` as shipped, with only the data columns changed,
against the same classic baselines, each tuned on a validation carve of its training split.

    apt-get download r-cran-lme4 && dpkg-deb -x r-cran-lme4_*.deb lme4-deb   # no root needed
    pip install -e '.[datasets]'       # rdata: reads R's lazy-load database
    python benchmarks/insteval.py --lme4 lme4-deb/usr/lib/R/site-library/lme4
    python benchmarks/insteval.py --protocol A --seeds 1                    # one part

The items are lecturers; their content is what the data set has: the department and how often
the lecture was a service course, as text (and the department as a facet). There are no
timestamps and no images, so only protocols A (random 80/20, split seed 42) and B (20 % of the
lecturers held out, split seed 42 + seed) run; every rating counts as an interaction, as in
``benchmarks/ml100k.py``. The data folder is written under ``benchmarks/out/insteval/data``
(never into the repository); each (protocol, seed) result is saved beside it and reused
(``--fresh`` recomputes). Writes ``benchmarks/results/insteval.json`` once every part exists.
"""

from __future__ import annotations

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off

import argparse
import gzip
import json
import shutil
import sys
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "out" / "insteval"
DATA = WORK / "data"
RESULT = REPO / "benchmarks" / "results" / "insteval.json"
CONFIG = REPO / "configs" / "ml100k.yaml"
SPLITS = {"A": ["data.split=random", "data.test_fraction=0.2"],
          "B": ["data.split=cold_start", "data.test_fraction=0.2"]}
# configs/ml100k.yaml's model and training, InstEval's columns (no image, no timestamp).
DATA_COLUMNS = ["data.text_columns=[department, service]", "data.facet_columns=[department]",
                "data.image_column=null", "image.enabled=false",
                "data.user_feature_columns=[semester]", "model.feature_dropout={}"]
BASELINES = ("ease", "ials", "ridge", "kernel", "knn")
COLUMNS = ("top_k_accuracy@100", "recall@10", "recall@20", "ndcg@20")


# --- the data folder ---------------------------------------------------------------------------


def interaction_datasets(names=("ML-100K", "InstEval")):
    """``(name, interactions, user ids, catalogue size)`` of each real dataset found (ML-100K
    in ../shared, InstEval as ``--lme4`` wrote it), a missing one skipped with a line: what
    the CF-only lead scripts (``cf_blend_lead.py``, ``edlae_lead.py``) run on."""
    import numpy as np

    from tfmmrec.config import DataConfig
    from tfmmrec.data.dataset import load_dataset

    folders = {"ML-100K": (REPO.parent / "shared" / "data" / "ml100k", {}),
               "InstEval": (DATA, {"image_column": None})}
    for name in names:
        path, columns = folders[name]
        if not (path / "interactions.csv").exists():
            print(f"{name}: {path} not found, skipped", file=sys.stderr)
            continue
        dataset = load_dataset(DataConfig(path=str(path), **columns))
        user_ids = np.asarray(sorted(dataset.interactions["user_id"].unique()))
        yield name, dataset.interactions, user_ids, dataset.num_items


def read_insteval(lme4: Path):
    """InstEval from lme4's lazy-load database (``data/Rdata.rdx`` index, ``.rdb`` blobs)."""
    try:
        import rdata
    except ImportError:
        sys.exit("benchmarks/insteval.py reads R's data files with `rdata`: "
                 "pip install -e '.[datasets]'")
    base = lme4 / "data" / "Rdata"
    if not base.with_suffix(".rdx").exists():
        sys.exit(f"{base}.rdx not found: pass --lme4 <lme4 package directory> "
                 "(apt-get download r-cran-lme4; dpkg-deb -x ...; .../site-library/lme4)")

    def parse(raw: bytes):
        return rdata.conversion.convert(rdata.parser.parse_data(raw))

    index = parse(gzip.decompress(base.with_suffix(".rdx").read_bytes()))
    offset, length = (int(v) for v in index["variables"]["InstEval"])
    blob = base.with_suffix(".rdb").read_bytes()[offset:offset + length]
    return parse(zlib.decompress(blob[4:]))  # 4 bytes of length, then zlib


def write_dataset(lme4: Path, out: Path) -> None:
    """``items.csv`` (lecturers: department, service-course share as words), ``users.csv``
    (students' semester), ``interactions.csv`` (every rating)."""
    import pandas as pd

    from tfmmrec.files import atomic_path

    frame = read_insteval(lme4)
    frame = pd.DataFrame({c: frame[c].astype(str) for c in ("s", "d", "studage", "dept")}
                         | {"service": frame["service"].astype(int), "y": frame["y"].astype(int)})
    lecturers = frame.groupby("d").agg(dept=("dept", "first"), service=("service", "mean"))
    items = pd.DataFrame({
        "item_id": "d" + lecturers.index,
        "department": "department " + lecturers["dept"],
        "service": [_service_words(share) for share in lecturers["service"]]})
    users = frame.groupby("s").studage.first()
    users = pd.DataFrame({"user_id": "s" + users.index, "semester": "semester " + users})
    interactions = pd.DataFrame({"user_id": "s" + frame["s"], "item_id": "d" + frame["d"],
                                 "rating": frame["y"]})
    with atomic_path(out, directory=True, replace=True) as tmp:
        Path(tmp).mkdir(parents=True)
        items.to_csv(Path(tmp) / "items.csv", index=False)
        users.to_csv(Path(tmp) / "users.csv", index=False)
        interactions.to_csv(Path(tmp) / "interactions.csv", index=False)


def _service_words(share: float) -> str:
    if share == 0:
        return "never a service course"
    return "mostly a service course" if share >= 0.5 else "sometimes a service course"


# --- one protocol, one seed --------------------------------------------------------------------


def run_part(protocol: str, seed: int) -> dict:
    import tensorflow as tf

    from tfmmrec import pipeline

    split_seed = 42 + seed if protocol == "B" else 42
    output = WORK / "runs" / f"{protocol}{seed}"
    config = tfmmrec.load_config(str(CONFIG), [
        f"data.path={DATA}", *DATA_COLUMNS, *SPLITS[protocol], f"data.seed={split_seed}",
        f"train.seed={seed}", "train.verbose=0", f"train.output_dir={output}"])
    shutil.rmtree(output, ignore_errors=True)  # never resume a stale run
    start = time.perf_counter()
    result = pipeline.train(config, progress=False)
    rows = pipeline.evaluate(config, model=result.model, workspace=result.workspace,
                             classic_baselines=BASELINES, write=False)
    run = json.loads((output / "run.json").read_text())
    chosen = {key: run[key] for key in ("early_stopping", "linear_cf_half_life") if key in run}
    shutil.rmtree(output, ignore_errors=True)
    tf.keras.backend.clear_session()
    return {"rows": {("tfmmrec (default)" if name == "tfmmrec" else name): metrics
                     for name, metrics in rows.items()},
            "chosen_on_validation": chosen, "epochs": result.epochs_run,
            "split_sizes": result.workspace.split.sizes(),
            "seconds": time.perf_counter() - start}


# --- the table ---------------------------------------------------------------------------------


def summarise(parts: dict[str, list[dict]]) -> dict:
    table = {}
    for protocol, runs in parts.items():
        names = [n for n in runs[0]["rows"] if all(n in r["rows"] for r in runs)]
        for name in names:
            values = {c: [r["rows"][name][c] for r in runs if c in r["rows"][name]]
                      for c in COLUMNS}
            table[f"{protocol} · {name}"] = {
                "seeds": len(runs),
                **{c: {"mean": float(np.mean(v)), "std": float(np.std(v))}
                   for c, v in values.items() if v}}
    return table


def markdown(table: dict) -> str:
    lines = ["| protocol · model | seeds | " + " | ".join(COLUMNS) + " |",
             "| :--- | ---: | " + " | ".join("---:" for _ in COLUMNS) + " |"]
    for name, row in table.items():
        cells = [f"{row[c]['mean']:.4f} ± {row[c]['std']:.4f}" if c in row else "–"
                 for c in COLUMNS]
        lines.append(f"| {name} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lme4", type=Path, help="the lme4 package directory (to build the data)")
    parser.add_argument("--protocol", nargs="+", default=["A", "B"], choices=sorted(SPLITS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="ignore saved parts, recompute")
    args = parser.parse_args(argv)
    if args.lme4 is not None and (args.fresh or not DATA.exists()):
        write_dataset(args.lme4, DATA)
    if not DATA.exists():
        print(f"no data folder at {DATA}: run once with --lme4 (see the docstring)")
        return 2
    from tfmmrec.files import write_json

    parts: dict[str, list[dict]] = {}
    for protocol in ("A", "B"):
        for seed in range(args.seeds):
            path = WORK / "parts" / f"{protocol}{seed}.json"
            if protocol in args.protocol and (args.fresh or not path.exists()):
                print(f"{protocol} seed {seed}: training and evaluating…", flush=True)
                write_json(run_part(protocol, seed), path)
            if path.exists():
                part = json.loads(path.read_text())
                parts.setdefault(protocol, []).append(part)
                print(f"  {protocol} seed {seed}: " + ", ".join(
                    f"{name} {m['recall@20']:.4f}" for name, m in part["rows"].items()))
    complete = all(len(parts.get(p, [])) == args.seeds for p in SPLITS)
    table = summarise(parts)
    print(markdown(table))
    if complete:
        write_json({"command": "python benchmarks/insteval.py", "seeds": args.seeds,
                    "table": table, "parts": parts, "table_markdown": markdown(table)}, RESULT)
        print(f"wrote {RESULT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
