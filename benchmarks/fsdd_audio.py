"""Benchmark: does the YAMNet audio tower carry real signal? Cold-start retrieval of spoken digits.

    python benchmarks/fsdd_audio.py            # 3 seeds (~5 min on 2 cores, YAMNet cache warm)
    python benchmarks/fsdd_audio.py --quick    # 1 seed, 600 clips, 3 epochs

Items are the 3,000 clips of ../shared/data/fsdd (6 speakers × 10 digits × 50 takes; real
recordings). Users are synthetic, because no real listening data exists for these clips:

Synthetic-user generator (``synthetic_interactions``, seeded, default seed 0):
  each of 500 users gets 2 liked digits (uniform, without replacement) and 1 liked speaker
  (uniform); a clip's weight for that user is
      w = 1 + 20 · [clip's digit is liked] + 5 · [clip's speaker is liked]
  and the user's 40 interactions are drawn without replacement with probability ∝ w. So about
  69% of a user's clips are liked digits and 27% (partly overlapping) are the liked speaker; the
  rest is uniform noise. Nothing but the sound says what a clip's digit or speaker is: the items
  table has only ``item_id`` and the audio path, so the ID-only comparison is fair.

Protocol: item cold start, like ML-100K protocol B: 20% of the clips (split seed 42 + seed) are
held out with all their interactions; each user's held-out clips are ranked among all held-out
clips, none of which any model saw in training. Recall@20 = hits / min(20, |user's test clips|),
NDCG@20, Recall@10.
Rows: random; ID-only (tfmmrec with no content tower: a held-out clip's id was never trained);
a frozen random-init log-mel CNN (tfmmrec's no-download audio tower: what the architecture gets
without pretraining); a training-free YAMNet profile (cosine between a clip and the mean of the
user's training clips); the YAMNet tower (tfmmrec, frozen YAMNet, cached clip embeddings); and
the generator's own weights w as an upper bound ("oracle").

The dataset folder (items.csv, interactions.csv, README.md) is written to
benchmarks/out/fsdd-data, which configs/fsdd.yaml points to, so ``tfmmrec train --config
configs/fsdd.yaml`` trains the same model after one benchmark run.
Writes benchmarks/results/fsdd_audio.json and fsdd_audio.png (``--quick``: to benchmarks/out/fsdd).
Needs ../shared: without it, prints why and exits with status 2.
"""

from __future__ import annotations

import os

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TFMMREC_SHARED", REPO.parent / "shared"))
FSDD = SHARED / "data" / "fsdd"
CONFIG = REPO / "configs" / "fsdd.yaml"
DATA = REPO / "benchmarks" / "out" / "fsdd-data"
WORK = REPO / "benchmarks" / "out" / "fsdd"
RESULTS = REPO / "benchmarks" / "results"

NUM_USERS = 500
PER_USER = 40
LIKED_DIGITS = 2
DIGIT_WEIGHT = 20.0
SPEAKER_WEIGHT = 5.0
GENERATOR_SEED = 0
COLUMNS = ["recall@10", "recall@20", "ndcg@20"]
YAMNET = "tfmmrec · YAMNet tower (frozen, cached)"
CNN = "tfmmrec · log-mel CNN, random init, frozen"
ID_ONLY = "ID-only · tfmmrec loss (no content)"
PROFILE = "YAMNet profile · no training"


def synthetic_interactions(meta: pd.DataFrame, num_users: int = NUM_USERS,
                           per_user: int = PER_USER, seed: int = GENERATOR_SEED
                           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The documented generator: (interactions, users' hidden tastes) for clips in ``meta``."""
    rng = np.random.default_rng(seed)
    digits = meta["digit"].to_numpy()
    speakers = meta["speaker"].to_numpy()
    speaker_names = np.array(sorted(set(speakers)))
    rows, tastes = [], []
    for u in range(num_users):
        liked = rng.choice(10, size=LIKED_DIGITS, replace=False)
        speaker = speaker_names[rng.integers(len(speaker_names))]
        weight = 1.0 + DIGIT_WEIGHT * np.isin(digits, liked) + SPEAKER_WEIGHT * (speakers
                                                                                 == speaker)
        chosen = rng.choice(len(meta), size=per_user, replace=False, p=weight / weight.sum())
        user = f"user{u:04d}"
        rows += [(user, meta["clip_id"].iat[i], t) for t, i in enumerate(chosen)]
        tastes.append({"user_id": user, "liked_digits": " ".join(map(str, sorted(liked))),
                       "liked_speaker": speaker})
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return interactions, pd.DataFrame(tastes)


def write_dataset(directory: Path, quick: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """items.csv (id + absolute audio path only), interactions.csv and a README."""
    meta = pd.read_csv(FSDD / "metadata.csv")
    if quick:  # takes 0–9 of every (digit, speaker): 600 clips
        meta = meta[meta["index"] < 10].reset_index(drop=True)
    interactions, tastes = synthetic_interactions(meta)
    directory.mkdir(parents=True, exist_ok=True)
    items = pd.DataFrame({"item_id": meta["clip_id"],
                          "audio": [str((FSDD / p).resolve()) for p in meta["path"]]})
    items.to_csv(directory / "items.csv", index=False)
    interactions.to_csv(directory / "interactions.csv", index=False)
    tastes.to_csv(directory / "user_tastes.csv", index=False)  # not read by tfmmrec
    (directory / "README.md").write_text(
        "# FSDD clips with synthetic users (generated by benchmarks/fsdd_audio.py)\n\n"
        f"Items: {len(items)} clips of ../shared/data/fsdd (absolute paths). Users: "
        f"{len(tastes)}, each liking {LIKED_DIGITS} digits and 1 speaker (user_tastes.csv, "
        "which tfmmrec does not read); a clip's weight is "
        f"1 + {DIGIT_WEIGHT:g}·[liked digit] + {SPEAKER_WEIGHT:g}·[liked speaker], and each "
        f"user's {PER_USER} interactions are drawn without replacement ∝ weight "
        f"(numpy seed {GENERATOR_SEED}). FSDD is CC BY-SA 4.0 (see its README).\n")
    return meta, tastes


def oracle_embeddings(meta: pd.DataFrame, tastes: pd.DataFrame, user_ids: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings whose dot product is the generator's weight − 1 (the best possible ranking)."""
    speakers = sorted(set(meta["speaker"]))
    items = np.concatenate([np.eye(10)[meta["digit"].to_numpy()],
                            np.eye(len(speakers))[[speakers.index(s) for s in meta["speaker"]]]],
                           axis=1)
    taste = tastes.set_index("user_id").loc[list(user_ids)]
    users = np.zeros((len(user_ids), items.shape[1]))
    for row, (digits, speaker) in enumerate(zip(taste["liked_digits"], taste["liked_speaker"],
                                                strict=True)):
        users[row, [int(d) for d in digits.split()]] = DIGIT_WEIGHT
        users[row, 10 + speakers.index(speaker)] = SPEAKER_WEIGHT
    return users, items


def train_row(ws, config) -> tuple[dict, dict]:
    import tensorflow as tf

    from tfmmrec import pipeline

    shutil.rmtree(config.train.output_dir, ignore_errors=True)
    result = pipeline.train(config, workspace=ws, progress=False)
    metrics = pipeline.evaluate(config, model=result.model, workspace=ws, baselines=False,
                                write=False)["tfmmrec"]
    shutil.rmtree(config.train.output_dir, ignore_errors=True)
    tf.keras.backend.clear_session()
    return metrics, {"examples_per_second": result.examples_per_second,
                     "epochs": result.epochs_run}


def run(args) -> dict:
    from tfmmrec import pipeline
    from tfmmrec.data.splits import split_interactions
    from tfmmrec.evaluation.baselines import content_profile_embeddings
    from tfmmrec.evaluation.protocol import evaluate_embeddings, random_baseline, split_matrices
    from tfmmrec.progress import counter

    meta, tastes = write_dataset(DATA, args.quick)
    quick = ["train.epochs=3"] if args.quick else []

    def config_for(seed: int, *extra: str):
        return tfmmrec.load_config(str(CONFIG), [
            f"data.path={DATA}", "train.verbose=0", f"train.output_dir={WORK}/run",
            f"data.seed={42 + seed}", f"train.seed={seed}", *quick, *extra])

    timings = {}
    start = time.perf_counter()
    print("encoding the clips with YAMNet (cached after the first run)…", flush=True)
    yamnet_ws = pipeline.prepare(config_for(0), progress=True)
    timings["prepare_yamnet_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    cnn_ws = pipeline.prepare(config_for(0, "audio.backbone=small_cnn"), progress=True)
    timings["prepare_cnn_seconds"] = time.perf_counter() - start
    stats = {name: {m: dataclasses.asdict(s) for m, s in ws.cache_stats.items()}
             for name, ws in (("yamnet", yamnet_ws), ("cnn", cnn_ws))}

    per_seed: dict[str, list] = {}
    seeds = range(args.seeds)
    bar = counter(total=len(seeds) * 7, desc="fsdd rows", unit="row")
    for seed in seeds:
        config = config_for(seed)
        d = config.data
        split = split_interactions(yamnet_ws.dataset.interactions, d.split, d.test_fraction,
                                   d.seed)
        ws = dataclasses.replace(yamnet_ws, config=config, split=split)
        ks, users = config.eval.ks, ws.user_ids

        def record(name: str, metrics: dict, info: dict | None = None, seed=seed):
            per_seed.setdefault(name, []).append({"seed": seed, "metrics": metrics,
                                                  "info": info or {}})
            bar.update(1)
            bar.write(f"  seed {seed} {name}: recall@20 {metrics['recall@20']:.4f}")

        record("random", random_baseline(split, users, ws.dataset.num_items, ks, seed=seed))
        record("oracle · the generator's weights",
               evaluate_embeddings(*oracle_embeddings(meta, tastes, users), split, users, ks))
        train, _ = split_matrices(split, users, ws.dataset.num_items)
        audio = ws.contents["audio"]
        record(PROFILE, evaluate_embeddings(*content_profile_embeddings(
            audio.values, audio.mask, train), split, users, ks))
        no_audio = config_for(seed, "audio.enabled=false")
        record(ID_ONLY, *train_row(dataclasses.replace(
            ws, config=no_audio, modalities=(), encoders={}, contents={}), no_audio))
        cnn_config = config_for(seed, "audio.backbone=small_cnn")
        record(CNN, *train_row(dataclasses.replace(cnn_ws, config=cnn_config, split=split),
                               cnn_config))
        record(YAMNET, *train_row(ws, config))
        hybrid = config_for(seed, "model.item_id_embedding=true")
        record("tfmmrec · YAMNet + item id (hybrid)",
               *train_row(dataclasses.replace(ws, config=hybrid), hybrid))
    bar.close()
    results = {}
    for name, parts in per_seed.items():
        row = {"seeds": len(parts)}
        for key in [*COLUMNS, "mrr"]:
            values = np.array([p["metrics"][key] for p in parts])
            row[key] = float(values[0]) if len(parts) == 1 else (float(values.mean()),
                                                                  float(values.std()))
        results[name] = row
    return {"results": results, "per_seed": per_seed, "timings": timings,
            "cache_stats": stats,
            "data": {"clips": len(meta), "users": NUM_USERS, "interactions_per_user": PER_USER,
                     "held_out_clips": len(split.test_items),
                     "test_interactions": len(split.test)}}


def plot(results: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(results)
    fig = Figure(figsize=(8, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    means = [r["recall@20"][0] if isinstance(r["recall@20"], tuple | list) else r["recall@20"]
             for r in results.values()]
    stds = [r["recall@20"][1] if isinstance(r["recall@20"], tuple | list) else 0.0
            for r in results.values()]
    colors = ["tab:blue" if n.startswith("tfmmrec") else "tab:gray" for n in names]
    y = np.arange(len(names))[::-1]
    ax.barh(y, means, xerr=stds, color=colors, capsize=3)
    ax.set_yticks(y, names, fontsize=8)
    for yy, m, s in zip(y, means, stds, strict=True):
        ax.text(m + s, yy, f"  {m:.3f}", va="center", fontsize=8)
    ax.set_xlabel("Recall@20 on held-out clips (cold start)")
    ax.set_title("FSDD clips, synthetic users who like 2 digits and 1 speaker")
    ax.grid(axis="x", alpha=0.3)
    from tfmmrec.files import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 600 clips, 3 epochs")
    parser.add_argument("--seeds", type=int, default=None, help="default 3 (--quick: 1)")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (1 if args.quick else 3)
    os.chdir(REPO)

    config = tfmmrec.load_config(str(CONFIG))
    missing = [str(p) for p in (FSDD / "metadata.csv", Path(config.audio.handle))
               if not p.exists()]
    if missing:
        print("benchmarks/fsdd_audio.py skipped: needs ../shared (FSDD clips and YAMNet "
              f"weights), not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    from tfmmrec.evaluation.report import format_table, write_json

    start = time.perf_counter()
    out = run(args)
    seconds = time.perf_counter() - start
    text = format_table(out["results"], ["seeds", *COLUMNS, "mrr"], model_header="model")
    print("\n" + text)
    res = out["results"]

    def mean(name):
        v = res[name]["recall@20"]
        return v[0] if isinstance(v, tuple | list) else v

    checks = [
        {"target": "YAMNet tower ≥ 3× random (Recall@20)",
         "value": mean(YAMNET) / mean("random"), "threshold": 3.0},
        {"target": "YAMNet tower > ID-only", "value": mean(YAMNET) - mean(ID_ONLY),
         "threshold": 0.0},
        {"target": "YAMNet tower > random-init CNN tower", "value": mean(YAMNET) - mean(CNN),
         "threshold": 0.0},
    ]
    for check in checks:
        check["met"] = check["value"] > check["threshold"]
        print(f"  [{'met' if check['met'] else 'MISSED'}] {check['target']}: "
              f"{check['value']:.3f}")
    name = "fsdd_audio_quick" if args.quick else "fsdd_audio"
    folder = WORK if args.quick else RESULTS  # smoke runs are not for the README
    write_json({"command": "python benchmarks/fsdd_audio.py" + (" --quick" if args.quick
                                                                 else ""),
                "seconds": seconds, "seeds": args.seeds,
                "generator": {"users": NUM_USERS, "per_user": PER_USER,
                              "liked_digits": LIKED_DIGITS, "digit_weight": DIGIT_WEIGHT,
                              "speaker_weight": SPEAKER_WEIGHT, "seed": GENERATOR_SEED},
                "config": str(CONFIG.relative_to(REPO)), **out, "targets": checks,
                "table_markdown": text}, folder / f"{name}.json")
    plot(out["results"], folder / f"{name}.png")
    print(f"\nwrote {folder.relative_to(REPO)}/{name}.json and {name}.png "
          f"({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
