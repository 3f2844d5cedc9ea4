"""Benchmark: where a training step's time goes (tf.profiler), previous vs current step.

Trains the ML-100K protocol-A model (configs/ml100k.yaml: history query, full softmax over the
catalogue, text + image features, batch 2,048) on stand-in features of the real shapes (384-d
text, 1,280-d image, the real presence masks; training cost does not depend on the feature
values, and no encoder runs), once per variant in one process:

- ``previous_step``: the step before issue 15's fourth pass, rebuilt from the current model
  (the history matrix summed by ``scatter_nd`` + ``tensor_scatter_nd_update``, the full
  softmax's candidates gathered and their features LayerNorm-ed every step);
  ``previous_step_bfloat16``: the same with bfloat16 products;
- ``now``: the per-interaction step as shipped before the fifth pass (``model.objective``
  interactions, ``model.training_precision`` float32);
- ``now_bfloat16``: the same with ``model.training_precision=bfloat16``;
- ``per_element`` (not run by default): the current model with the input pipeline tfmmrec used
  before the first pass (``from_tensor_slices → cache → shuffle → batch``);
- ``users`` / ``users_bfloat16``: ``model.objective=users`` (one query per user and step, the
  hidden history entries its targets; batches of users holding ~``batch_size`` targets), the
  default since issue 15's fifth pass, in float32 / bfloat16. ``now`` is then the
  per-interaction objective (``model.objective=interactions``) it replaced.
- ``users_tiled_alignment``: ``users`` with the alignment loss's single-modality embeddings
  computed as before the sixth pass (every modality's masked input tiled through the whole
  fusion; now ``MaskedFusion.alone``); ``users_sparse_xent_alignment``: ``users`` with the
  alignment's softmax as before (transposed logits stacked, ``tf.where`` masking,
  ``sparse_softmax_cross_entropy_with_logits``; now one logits tensor read by row and by column,
  ``logsumexp``); ``users_fusion_mean``, ``users_no_alignment``, ...:
  what the candidate side's optional parts (the fusion MLP, the alignment loss) cost;
  ``users_backup_every_epoch``: ``users`` with ``train.backup_seconds=0`` (a backup of the
  training state after every epoch, as before the sixth pass; compare the runs' examples/s).

Each run trains ``--epochs`` epochs; the last one is traced with ``tf.profiler`` and the trace's
host events are summed by kind (input pipeline, forward/backward ops by type, optimizer). Prints
a table; writes benchmarks/results/profile_train.json.

    .venv/bin/python benchmarks/profile_train.py            # ~3 min on 2 cores
    .venv/bin/python benchmarks/profile_train.py --variants previous_step now now_bfloat16 \
        --interleave 10    # examples per CPU-second, interleaved (profile_train_interleaved.json)
    .venv/bin/python benchmarks/profile_train.py --variants users_sparse_xent_alignment users \
        users_no_alignment --interleave 8 --output profile_train_alignment_softmax.json
    .venv/bin/python benchmarks/profile_train.py --variants users_batch_2048 users_batch_4096 \
        users_batch_8192 users_batch_16384 --interleave 8 \
        --output profile_train_batch_sizes.json    # the per-user step's batch size
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

import machine
import numpy as np
from traces import host_events

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off
from tfmmrec.files import write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "profile-train"
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "configs" / "ml100k.yaml"
FEATURE_DIMS = {"text": 384, "facets": 384, "image": 1280, "audio": 1024}


def stand_in_workspace(config):
    """The real dataset and split, with random features of the encoders' shapes."""
    from tfmmrec import pipeline
    from tfmmrec.data.splits import split_interactions
    from tfmmrec.towers.cache import ModalityContent

    dataset = pipeline.resolve_dataset(config)
    split = split_interactions(dataset.interactions, config.data.split,
                               config.data.test_fraction, config.data.seed)
    modalities = tuple(m for m in dataset.catalog.modalities if config.tower(m).enabled)
    rng = np.random.default_rng(0)
    contents = {m: ModalityContent(rng.standard_normal((dataset.num_items, FEATURE_DIMS[m]))
                                   .astype(np.float32), dataset.catalog.presence(m))
                for m in modalities}
    return pipeline.Workspace(config, dataset, split, modalities, {}, contents)


# Variant → model-config overrides. ``previous_step`` is the float32 step before issue 15's
# fourth pass, rebuilt by ``build`` from the current model (the history matrix summed by
# ``scatter_nd``, the candidates' content gathered and LayerNorm-ed every step).
_INTERACTIONS = {"objective": "interactions"}
VARIANTS = {"previous_step": _INTERACTIONS, "now": _INTERACTIONS,
            "now_bfloat16": {**_INTERACTIONS, "training_precision": "bfloat16"},
            "previous_step_bfloat16": {**_INTERACTIONS, "training_precision": "bfloat16"},
            "per_element": _INTERACTIONS,
            "users": {"objective": "users"},
            "users_bfloat16": {"objective": "users", "training_precision": "bfloat16"},
            # the per-user step at other batch sizes (targets per step; train.batch_size)
            **{f"users_batch_{size}": {"objective": "users", "batch_size": size}
               for size in (2048, 4096, 8192, 16384)},
            # backing up the training state every epoch, as before issue 15's sixth pass
            "users_backup_every_epoch": {"objective": "users", "backup_seconds": 0.0},
            # the alignment's single-modality embeddings as before issue 15's sixth pass
            "users_tiled_alignment": {"objective": "users"},
            # the alignment's softmax as before (sparse_xent_contrastive)
            "users_sparse_xent_alignment": {"objective": "users"},
            # the candidate side's optional parts: fusion MLP, alignment loss
            "users_fusion_mean": {"objective": "users", "fusion": "mean"},
            "users_no_alignment": {"objective": "users", "alignment_weight": 0.0},
            # the alignment loss on 128 sampled candidates instead of 256 (model.alignment_rows)
            "users_alignment_128": {"objective": "users", "alignment_rows": 128},
            "users_mean_no_alignment": {"objective": "users", "fusion": "mean",
                                        "alignment_weight": 0.0},
            "users_mean_no_alignment_bfloat16": {"objective": "users", "fusion": "mean",
                                                 "alignment_weight": 0.0,
                                                 "training_precision": "bfloat16"},
            # what the poster's 1,280-d features cost every step (its projection and feature
            # dropout over the whole catalogue): without the dropout, and at fewer dimensions
            # (as if the cached features were reduced, e.g. by PCA, before training)
            "users_no_image_dropout": {"objective": "users", "feature_dropout": {}},
            **{f"users_image_{dim}d": {"objective": "users", "image_dim": dim}
               for dim in (128, 256)},
            # one poster-dropout mask per step for the whole catalogue: the product over the
            # kept fifth of the poster's dimensions only (model.feature_dropout_shared)
            "users_shared_image_dropout": {"objective": "users", "feature_dropout_shared": True},
            "users_shared_image_dropout_bfloat16": {"objective": "users",
                                                    "feature_dropout_shared": True,
                                                    "training_precision": "bfloat16"},
            "users_shared_image_dropout_alignment_128": {"objective": "users",
                                                         "feature_dropout_shared": True,
                                                         "alignment_rows": 128}}


def variant_workspace(ws, config, variant: str):
    """``ws`` with ``variant``'s config, and its stand-in image features at ``image_dim``."""
    ws = dataclasses.replace(ws, config=variant_config(config, variant))
    dim = VARIANTS[variant].get("image_dim")
    if dim is None or "image" not in ws.contents:
        return ws
    from tfmmrec.towers.cache import ModalityContent

    image = ws.contents["image"]
    features = np.random.default_rng(0).standard_normal((len(image.mask), dim))
    return dataclasses.replace(ws, contents={
        **ws.contents, "image": ModalityContent(features.astype(np.float32), image.mask)})


def variant_config(config, variant: str):
    """``config`` with ``variant``'s overrides: ``batch_size`` and ``backup_seconds`` to the
    train section, ``image_dim`` to ``variant_workspace``, the rest to the model section."""
    overrides = {k: v for k, v in VARIANTS[variant].items() if k != "image_dim"}
    train = dataclasses.replace(config.train, **{
        key: overrides.pop(key) for key in ("batch_size", "backup_seconds") if key in overrides})
    return dataclasses.replace(config, train=train,
                               model=dataclasses.replace(config.model, **overrides))


def build(ws, variant: str):
    """The model of ``variant`` (inside the strategy scope; overrides already applied)."""
    from tfmmrec import pipeline

    model = pipeline.build_model(ws)
    if variant.startswith("previous_step"):
        encoder = model.query_tower.history_encoder
        if encoder is not None:
            encoder.unique_entries = False  # the summing scatter
        model._candidate_content = lambda: model.content_table(model.candidate_index)
    if variant == "users_tiled_alignment":
        fusion = model.item_tower.fusion
        fusion.alone = fusion.alone_tiled  # the computation before the sixth pass
    if variant == "users_sparse_xent_alignment" and model.alignment is not None:
        model.alignment.__class__ = _sparse_xent_alignment_class()
    return model


def sparse_xent_contrastive(a, b, a_present, b_present, item_ids, scale):
    """``models.alignment.masked_contrastive`` as it was before (kept here only as the 'before'
    of this profile): the transposed logits stacked for the second direction, non-negatives
    masked by ``tf.where``, and ``sparse_softmax_cross_entropy_with_logits``."""
    import tensorflow as tf

    logits = tf.matmul(a, b, transpose_b=True) * scale  # [P, B, B]
    logits = tf.concat([logits, tf.transpose(logits, [0, 2, 1])], axis=0)  # [2P, B, B]
    column_present = tf.concat([b_present, a_present], axis=0)  # [2P, B]
    rows = tf.tile(a_present * b_present, [2, 1])  # [2P, B]
    size = tf.shape(logits)[-1]
    diagonal = tf.eye(size, dtype=tf.bool)
    same_item = tf.equal(item_ids[:, None], item_ids[None, :])
    usable = tf.logical_and(column_present[:, None, :] > 0,
                            tf.logical_or(diagonal, tf.logical_not(same_item))[None])
    scores = tf.where(usable, logits, tf.fill(tf.shape(logits), -1e9))
    labels = tf.broadcast_to(tf.range(size), tf.shape(scores)[:2])
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=scores)
    return 0.5 * tf.reduce_sum(losses * rows)


def _sparse_xent_alignment_class():
    from tfmmrec.models.alignment import ModalityAlignment

    class SparseXentAlignment(ModalityAlignment):
        """``ModalityAlignment`` with ``sparse_xent_contrastive`` (the same pairs)."""

        contrastive = staticmethod(sparse_xent_contrastive)

    return SparseXentAlignment


def per_element_dataset(interactions, batch_size: int, seed: int):
    """The input pipeline tfmmrec used before (kept here only as the 'before' of this profile)."""
    import tensorflow as tf

    from tfmmrec.training.trainer import with_data_sharding

    data = {"user_id": interactions["user_id"].astype(str).to_numpy(),
            "item_index": interactions["item_index"].to_numpy(np.int32)}
    dataset = tf.data.Dataset.from_tensor_slices(data).cache()
    dataset = dataset.shuffle(len(interactions), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return with_data_sharding(dataset).prefetch(tf.data.AUTOTUNE)


class ProfileLastEpoch:
    """A Keras callback tracing the last epoch with tf.profiler into ``logdir``; its ``steps``
    are the training steps that epoch ran (the optimizer's step count across it), what the
    trace's per-step figures divide by. Counted, not derived from the batch size: a
    ``model.objective: users`` batch holds users, not ``train.batch_size`` examples."""

    def __new__(cls, logdir: Path, epochs: int):
        import tensorflow as tf

        class Callback(tf.keras.callbacks.Callback):
            steps = 0

            def on_epoch_begin(self, epoch, logs=None):
                if epoch == epochs - 1:
                    self._first_step = int(self.model.optimizer.iterations.numpy())
                    tf.profiler.experimental.start(str(logdir))

            def on_epoch_end(self, epoch, logs=None):
                if epoch == epochs - 1:
                    tf.profiler.experimental.stop()
                    self.steps = int(self.model.optimizer.iterations.numpy()) - self._first_step

        return Callback()


def categorise(name: str) -> str | None:
    """A trace event's kind, or ``None`` for wrappers that only nest other events."""
    if name.startswith("Iterator::"):  # inclusive time of that tf.data stage
        return f"tf.data {name.split('::')[-1]} (inclusive)"
    if "::" in name or "__inference" in name or ":" not in name:
        return None  # executor/session wrappers around the ops below
    op = name.split(":")[-1]
    if op.startswith("ResourceApply") or op.startswith("Assign"):
        return "optimizer"
    return f"op {op}"


def summarise_trace(logdir: Path, steps: int) -> dict:
    """Host time per event kind (ms per step), from the .xplane.pb tf.profiler wrote."""
    totals: collections.Counter = collections.Counter()
    # TF op executions ("name:Type") and tf.data iterator events; ``categorise`` skips the
    # Python/thread-level wrappers that nest them.
    for name, ms in host_events(logdir):
        kind = categorise(name)
        if kind is not None:
            totals[kind] += ms
    if not totals:
        return {}
    total_ops = sum(v for k, v in totals.items() if not k.startswith("tf.data"))
    top = dict(sorted(((k, v / steps) for k, v in totals.items()), key=lambda kv: -kv[1])[:15])
    return {"ms_per_step_by_kind": top, "op_ms_per_step": total_ops / steps}


def run(ws, config, variant: str, epochs: int) -> dict:
    import tensorflow as tf

    from tfmmrec import pipeline
    from tfmmrec.training import trainer

    out = OUT / variant
    shutil.rmtree(out, ignore_errors=True)
    ws = variant_workspace(ws, config, variant)
    train = dataclasses.replace(ws.config.train, output_dir=str(out / "run"), epochs=epochs,
                                verbose=0)
    config = dataclasses.replace(ws.config, train=train)
    ws = dataclasses.replace(ws, config=config)
    tf.keras.utils.set_random_seed(train.seed)
    if variant == "per_element":
        dataset = pipeline.with_user_indices(
            per_element_dataset(ws.split.train, train.batch_size, train.seed), ws.user_ids)
        count = len(ws.split.train)
    else:
        dataset, count, _ = pipeline.training_dataset(ws)
    profiled = ProfileLastEpoch(out / "profile", epochs)
    start = time.perf_counter()
    result = trainer.fit(lambda: build(ws, variant), dataset, count, train,
                         tf.distribute.get_strategy(), callbacks=[profiled])
    steps = profiled.steps
    epoch_seconds = count / result.examples_per_second  # mean of the epochs after the first
    return {"examples_per_second": result.examples_per_second, "steps_per_epoch": steps,
            "ms_per_step": 1000 * epoch_seconds / steps,
            "final_loss": result.history["loss"][-1], "seconds": time.perf_counter() - start,
            "profile": summarise_trace(out / "profile", steps)}


def interleaved(ws, config, variants: list[str], rounds: int) -> dict:
    """Examples per CPU-second of each variant's step, in one process: every variant built and
    traced, then ``rounds`` rounds of one ``steps_per_execution`` call (16 steps) per variant.
    Process CPU time, not wall time, so other jobs on the machine move it far less; the ratio
    to the first variant is taken within each round."""
    import tensorflow as tf

    from tfmmrec import pipeline
    from tfmmrec.training.trainer import optimizer

    steps, functions, iterators, sizes = 16, {}, {}, {}
    for variant in variants:
        vws = variant_workspace(ws, config, variant)
        sizes[variant] = vws.config.train.batch_size
        tf.keras.utils.set_random_seed(config.train.seed)
        model = build(vws, variant)
        model.build_from_example()
        model.compile(optimizer=optimizer(config.train), steps_per_execution=steps)
        dataset = pipeline.training_dataset(vws).dataset
        functions[variant] = model.make_train_function()
        iterators[variant] = iter(dataset.repeat())
        float(functions[variant](iterators[variant])["loss"])  # trace
    rates: dict[str, list[float]] = {v: [] for v in variants}
    walls: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            start, wall = time.process_time(), time.perf_counter()
            float(functions[variant](iterators[variant])["loss"])
            rates[variant].append(steps * sizes[variant] / (time.process_time() - start))
            walls[variant].append(steps * sizes[variant] / (time.perf_counter() - wall))
    base, wall_base = np.array(rates[variants[0]]), np.array(walls[variants[0]])
    return {v: {"examples_per_cpu_second_median": float(np.median(r)),
                "ratio_to_first_median": float(np.median(np.array(r) / base)),
                "ratio_to_first_quartiles": [float(q) for q in
                                             np.percentile(np.array(r) / base, [25, 75])],
                # wall clock moves with the load; reported beside the CPU-time figure
                "examples_per_wall_second_median": float(np.median(walls[v])),
                "wall_ratio_to_first_median": float(np.median(np.array(walls[v]) / wall_base))}
            for v, r in rates.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=["previous_step", "now"],
                        choices=list(VARIANTS))
    parser.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                        help="instead of profiling: examples per CPU-second of the variants' "
                             "steps, interleaved for ROUNDS rounds (profile_train_interleaved"
                             ".json)")
    parser.add_argument("--output", default=None, metavar="NAME",
                        help="the results file's name in benchmarks/results (default "
                             "profile_train.json, or profile_train_interleaved.json with "
                             "--interleave)")
    args = parser.parse_args(argv)
    if args.output is not None and (Path(args.output).name != args.output
                                    or not args.output.endswith(".json")):
        parser.error(f"--output {args.output!r}: a file name ending in .json (it is written "
                     "to benchmarks/results)")
    if args.interleave and "per_element" in args.variants:
        parser.error("--interleave compares model steps on the shipped input pipeline; "
                     "drop the per_element variant")
    from tfmmrec.config import load_config

    if not (ROOT.parent / "shared" / "data" / "ml100k").is_dir():
        print("needs ../shared/data/ml100k", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    # the towers train the same whatever the CF kind (auto trains them as EASE's run would)
    config = load_config(str(CONFIG), ["data.split=random", "data.test_fraction=0.2",
                                       "data.seed=42", "model.linear_cf=ease"])
    ws = stand_in_workspace(config)
    report = {"command": "python benchmarks/profile_train.py" + "".join(
                  f" {flag} {value}" for flag, value in (
                      ("--epochs", args.epochs), ("--variants", " ".join(args.variants)))),
              "machine": machine.describe(), "load_average_at_start": os.getloadavg()[0],
              "batch_size": config.train.batch_size,
              "train_examples": len(ws.split.train), "runs": {}}
    if args.output:
        report["command"] += f" --output {args.output}"
    if args.interleave:
        report["command"] += f" --interleave {args.interleave}"
        report["interleaved"] = interleaved(ws, config, args.variants, args.interleave)
        report["load_average_at_end"] = os.getloadavg()[0]
        for variant, row in report["interleaved"].items():
            print(f"{variant}: {row['examples_per_cpu_second_median']:,.0f} examples per CPU-s, "
                  f"{row['ratio_to_first_median']:.2f}× the first variant (quartiles "
                  f"{row['ratio_to_first_quartiles'][0]:.2f}–"
                  f"{row['ratio_to_first_quartiles'][1]:.2f}); wall clock "
                  f"{row['examples_per_wall_second_median']:,.0f} examples/s, "
                  f"{row['wall_ratio_to_first_median']:.2f}×")
        write_json(report, RESULTS / (args.output or "profile_train_interleaved.json"))
        return 0
    for variant in args.variants:
        print(f"training the {variant} variant ({args.epochs} epochs, the last "
              "profiled)...", flush=True)
        report["runs"][variant] = run(ws, config, variant, args.epochs)
    print(table(report))
    print(f"wrote {write_json(report, RESULTS / (args.output or 'profile_train.json'))}")
    return 0


def table(report: dict) -> str:
    runs = report["runs"]
    kinds = sorted({k for r in runs.values() for k in r["profile"].get("ms_per_step_by_kind", {})},
                   key=lambda k: -max(r["profile"].get("ms_per_step_by_kind", {}).get(k, 0)
                                      for r in runs.values()))
    lines = ["| | " + " | ".join(runs) + " |", "| :--- |" + " ---: |" * len(runs),
             "| examples/s | " + " | ".join(f"{r['examples_per_second']:,.0f}"
                                            for r in runs.values()) + " |",
             "| ms per step (wall) | " + " | ".join(f"{r['ms_per_step']:.2f}"
                                                    for r in runs.values()) + " |"]
    for kind in kinds[:12]:
        lines.append(f"| {kind} (host ms/step) | " + " | ".join(
            f"{r['profile'].get('ms_per_step_by_kind', {}).get(kind, 0):.2f}"
            for r in runs.values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
