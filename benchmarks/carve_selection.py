"""Benchmark: is the (epoch, CF kind, CF weight) choice steadier on the mean of two validation
carves than on one? Judged on a third carve, never on a test split (issues 11 and 15).

For each protocol (A, B, C of ``benchmarks/ml100k.py``), seed and batch variant, trains the
shipped config's early-stopping run on three validation carves of the protocol's training split
(``pipeline.train_validation_carves``: seeds ``data.seed + k`` and ``train.seed + k``; the first
carve stops on its own patience, the others train as many epochs) and scores every
(epoch, kind, weight) on each. Then:

- ``one carve``: the choice on carve 1 alone (what ``train.validation_carves: 1`` ships), and on
  carve 2 alone (a second sample of the same rule), each scored on carve 3;
- ``two carves``: the choice on the mean of carves 1 and 2 (``validation_carves: 2``), scored on
  carve 3;
- ``... smoothed``: the same carves, each epoch's figure replaced by the mean over it and its
  neighbours (``train.early_stopping_smoothing: 1``; no extra training);
- ``carve 3's own best``: the ceiling, for scale.

Variant ``b2048_image_pca128`` trains the same with the poster features reduced to their first
128 principal components (the speed lever measured by ``benchmarks/profile_train.py``'s
``users_image_128d``; ``..._dropout05``: with feature dropout 0.5 instead of 0.8 on them): their
rules against ``b2048``'s say what that reduction costs.

Each part keeps every carve's (epoch × kind, weight) Recall@20 table, so a new rule is judged
from the saved parts (``judge``) without training again.

Carve 3 takes no part in either choice, so its figure says which rule chooses better for data
it has not seen. Protocol C's carve is temporal (each user's latest training interactions): its
three carves hold the same rows and differ only in training seed.

    python benchmarks/carve_selection.py                   # 3 protocols × 3 seeds × every variant
    python benchmarks/carve_selection.py --protocols B --seeds 1 --variants b4096

The results file holds the parts asked for (by default every variant's, reused where saved).

Each (protocol, seed, variant) is one line of benchmarks/out/carve-selection/parts.jsonl
(reused; ``--fresh`` starts over; 2–4 minutes each on 2 cores). Writes
benchmarks/results/carve_selection.json once every requested part exists.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off

ROOT = Path(__file__).resolve().parents[1]
PARTS = ROOT / "benchmarks" / "out" / "carve-selection" / "parts.jsonl"
RESULT = ROOT / "benchmarks" / "results" / "carve_selection.json"
# variant → config overrides on top of configs/ml100k.yaml (as benchmarks/batch_trial.py)
B2048 = ["train.batch_size=2048", "train.learning_rate=0.005"]
VARIANTS = {"b2048": B2048,
            "b4096": ["train.batch_size=4096", "train.learning_rate=0.007"],
            "b2048_image_pca128": B2048,
            # the 0.8 poster feature dropout was chosen for 1,280-d features
            "b2048_image_pca128_dropout05": [*B2048, "model.feature_dropout.image=0.5"],
            # one poster-dropout mask per step for the whole catalogue (a product over the kept
            # fifth of the dimensions: profile_train.py's users_shared_image_dropout)
            "b2048_shared_image_dropout": [*B2048, "model.feature_dropout_shared=true"],
            # ... and the alignment loss on 128 items instead of 256 (a quarter of its logits)
            "b2048_shared_image_dropout_alignment128": [*B2048,
                                                        "model.feature_dropout_shared=true",
                                                        "model.alignment_rows=128"],
            # no poster feature dropout (query-by-content: plot text -> poster retrieval on
            # held-out items doubles without it) / a 10x alignment weight / both
            "b2048_no_image_dropout": [*B2048, "model.feature_dropout={}"],
            "b2048_alignment_1": [*B2048, "model.alignment_weight=1.0"],
            "b2048_no_image_dropout_alignment_1": [*B2048, "model.feature_dropout={}",
                                                   "model.alignment_weight=1.0"]}
# variant → the poster features reduced to that many principal components before training
# (fitted on every catalogue item's cached features: no interaction is read): the image side
# is the costliest part of a step (benchmarks/profile_train.py's users_image_128d), and a
# narrower poster feature has less room to memorise training items.
REDUCED_IMAGE = {"b2048_image_pca128": 128, "b2048_image_pca128_dropout05": 128}
CARVES = 3
METRIC = "recall@20"


def run_part(spaces, protocol: str, seed: int, variant: str) -> dict:
    import shutil

    import ml100k
    import tensorflow as tf

    from tfmmrec import pipeline
    from tfmmrec.config import load_config
    args = ml100k.parse_args([arg for o in VARIANTS[variant] for arg in ("--set", o)])
    config = ml100k.protocol_config(args, protocol, ml100k.Row(ml100k.DEFAULT, "tfmmrec"), seed)
    output = PARTS.parent / "runs" / f"{protocol}-{seed}-{variant}"
    shutil.rmtree(output, ignore_errors=True)
    ws = spaces.for_config(config)
    if variant in REDUCED_IMAGE:
        ws = reduced_image(ws, REDUCED_IMAGE[variant])
    config = load_config(ws.config, [f"train.output_dir={output}", "train.early_stopping=false",
                                     "model.fusion_selection=none"])
    strategy = tf.distribute.get_strategy()
    start = time.perf_counter()
    tf.keras.utils.set_random_seed(config.train.seed)
    monitors = pipeline.train_validation_carves(ws, config, strategy, output, CARVES)
    epochs = max(monitors[0].epochs)
    shutil.rmtree(output, ignore_errors=True)
    tables = [{"epochs": list(m.epochs), "pairs": [list(pair) for pair in m.scores[0]],
               METRIC: [[table[pair][METRIC] for pair in m.scores[0]] for table in m.scores]}
              for m in monitors]
    return {"protocol": protocol, "seed": seed, "variant": variant, "epochs": epochs,
            **judge(tables), "carves": tables,
            "validation_interactions": [len(m.split.test) for m in monitors],
            "seconds": time.perf_counter() - start}


def reduced_image(ws, dim: int):
    """``ws`` with its poster features replaced by their first ``dim`` principal components
    (centred; items without a poster stay zero and absent)."""
    import dataclasses

    from tfmmrec.towers.cache import ModalityContent

    image = ws.contents["image"]
    values, present = np.asarray(image.values, np.float64), np.asarray(image.mask, bool)
    mean = values[present].mean(axis=0)
    _, _, components = np.linalg.svd(values[present] - mean, full_matrices=False)
    reduced = ((values - mean) @ components[:dim].T).astype(np.float32)
    reduced[~present] = 0.0
    return dataclasses.replace(ws, contents={**ws.contents,
                                             "image": ModalityContent(reduced, image.mask)})


def carve_scores(table: dict) -> SimpleNamespace:
    """A saved carve table as ``choose_on_carves`` reads a monitor."""
    pairs = [tuple(pair) for pair in table["pairs"]]
    return SimpleNamespace(epochs=list(table["epochs"]), scores=[
        {pair: {METRIC: float(v)} for pair, v in zip(pairs, row, strict=True)}
        for row in table[METRIC]])


# rule → (the carves it chooses on, train.early_stopping_smoothing); every choice is scored
# on the last carve
RULES = {"one_carve": ((0,), 0), "one_carve_second": ((1,), 0), "two_carves": ((0, 1), 0),
         "one_carve_smoothed": ((0,), 1), "two_carves_smoothed": ((0, 1), 1)}


def judge(tables: list[dict]) -> dict:
    """Each rule's choice on its carves, with its figure on the last carve (held out from
    every rule) and that carve's own best."""
    from tfmmrec.training.validation import choose_on_carves

    held_out = carve_scores(tables[-1])
    judged = {}
    for rule, (carves, smooth) in RULES.items():
        chosen = choose_on_carves([carve_scores(tables[k]) for k in carves], METRIC, smooth)
        table = held_out.scores[held_out.epochs.index(chosen["epoch"])]
        judged[rule] = {"epoch": chosen["epoch"], "kind": chosen["kind"],
                        "weight": chosen["weight"], "chosen_on": chosen["metrics"][METRIC],
                        "held_out": table[chosen["kind"], chosen["weight"]][METRIC]}
    judged["held_out_best"] = choose_on_carves([held_out], METRIC)["metrics"][METRIC]
    return judged


def summarise(parts: list[dict]) -> dict:
    """Per variant and protocol: each rule's mean held-out figure, and over everything the
    mean held-out figure of each rule and its mean regret to carve 3's own best."""
    table: dict = {}
    for variant in sorted({p["variant"] for p in parts}):
        rows = [p for p in parts if p["variant"] == variant]
        rules = [rule for rule in RULES if all(rule in p for p in rows)]
        table[variant] = {
            "by_protocol": {protocol: {rule: float(np.mean([p[rule]["held_out"] for p in rows
                                                            if p["protocol"] == protocol]))
                                       for rule in rules}
                            for protocol in sorted({p["protocol"] for p in rows})},
            "mean_regret": {rule: float(np.mean([p["held_out_best"] - p[rule]["held_out"]
                                                 for p in rows])) for rule in rules},
            "parts": len(rows)}
    return table


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ml100k

    args = ml100k.study_arguments(__doc__, list(VARIANTS), list(VARIANTS), argv)
    from tfmmrec.files import write_json

    wanted = [(p, s, v) for v in args.variants for p in args.protocols for s in args.seeds]
    chosen = ml100k.validation_parts(
        "carve_selection.py", PARTS, wanted, run_part,
        lambda part: f"on carve 3, one carve {part['one_carve']['held_out']:.4f} / "
                     f"{part['one_carve_second']['held_out']:.4f}, two carves "
                     f"{part['two_carves']['held_out']:.4f} (carve 3's best "
                     f"{part['held_out_best']:.4f})", args.fresh)
    if chosen is None:
        return 2
    table = summarise(chosen)
    for variant, rows in table.items():
        print(variant, "regret to carve 3's best:", ", ".join(
            f"{rule} {value:.4f}" for rule, value in rows["mean_regret"].items()))
    if len(chosen) == len(wanted):
        write_json({"command": "python benchmarks/carve_selection.py" + "".join(
                        f" --{k} {' '.join(map(str, getattr(args, k)))}"
                        for k in ("protocols", "seeds", "variants")),
                    "variants": {v: VARIANTS[v] for v in args.variants},
                    "metric": METRIC, "table": table, "parts": chosen}, RESULT)
        print(f"wrote {RESULT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
