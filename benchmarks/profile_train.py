"""Benchmark: where a training step's time goes (tf.profiler), previous vs current step.

Trains the ML-100K protocol-A model (configs/ml100k.yaml: history query, full softmax over the
catalogue, text + image features, batch 2,048) on stand-in features of the real shapes (384-d
text, 1,280-d image, the real presence masks; training cost does not depend on the feature
values, and no encoder runs), once per variant in one process:

- ``previous_step``: the step before issue 15's third pass (the history pooling's
  ``scatter_nd`` + ``tensor_scatter_nd_update`` and the full softmax as they were; the pass
  kept them, so this is the float32 step of ``now`` too, a control for the machine's load);
- ``now``: the model as shipped (``model.training_precision`` float32, the default);
- ``now_bfloat16``: the same with ``model.training_precision=bfloat16``;
- ``per_element`` (not run by default): the current model with the input pipeline tfmmrec used
  before the first pass (``from_tensor_slices → cache → shuffle → batch``).

Each run trains ``--epochs`` epochs; the last one is traced with ``tf.profiler`` and the trace's
host events are summed by kind (input pipeline, forward/backward ops by type, optimizer). Prints
a table; writes benchmarks/results/profile_train.json.

    .venv/bin/python benchmarks/profile_train.py            # ~3 min on 2 cores
    .venv/bin/python benchmarks/profile_train.py --variants previous_step now now_bfloat16 \
        --interleave 10    # examples per CPU-second, interleaved (profile_train_interleaved.json)
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from traces import host_events

import tfmmrec  # noqa: F401  (Keras 2 before TensorFlow)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "profile-train"
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "configs" / "ml100k.yaml"
FEATURE_DIMS = {"text": 384, "image": 1280, "audio": 1024}


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


def previous_history_call(self, user_index, exclude=None, training=False, history=None):
    """``HistoryEncoder.call`` before issue 15's third pass (the dense path: a ``scatter_nd``
    of the weights, the targets zeroed by ``tensor_scatter_nd_update``; kept for the profile)."""
    import tensorflow as tf

    from tfmmrec.towers.history import row_ids
    from tfmmrec.towers.projection import keep_mask

    items, weights = self.gather(user_index)
    weight = weights.flat_values
    if training and self.dropout > 0:
        weight = tf.where(keep_mask(tf.shape(weight), self.dropout, self.noise.seed()), weight,
                          tf.zeros_like(weight))
    rows = row_ids(items.row_splits)
    count = tf.shape(user_index, out_type=tf.int64)[0]
    if not self.embedding.built:
        self.embedding.build(None)
    num_items = tf.constant(self.num_items, tf.int64)
    cells = rows * num_items + tf.cast(items.flat_values, tf.int64)
    multi_hot = tf.reshape(tf.scatter_nd(cells[:, None], weight, [count * num_items]),
                           tf.stack([count, num_items]))
    if exclude is not None:
        target = tf.stack([tf.range(count), tf.cast(exclude, tf.int64)], axis=1)
        multi_hot = tf.tensor_scatter_nd_update(multi_hot, target,
                                                tf.zeros([count], multi_hot.dtype))
    total = tf.matmul(multi_hot, self.embedding.embeddings)
    norm = tf.reduce_sum(multi_hot, axis=1)
    return total / tf.maximum(norm, 1e-9)[:, None]


def previous_full_softmax_loss(self, queries, item_index, training):
    """``RetrievalModel._full_softmax_loss`` before the third pass (``/ T`` applied to the
    ``[B, N]`` logits; kept for the profile)."""
    import tensorflow as tf

    content = self.content_table(self.candidate_index)
    fused, embeddings, mask = self.item_tower.encode(content, training=training)
    scored = self.item_tower.append_linear_cf(fused, content, training)
    logits = tf.matmul(queries, scored, transpose_b=True) / self.temperature
    labels = tf.gather(self.candidate_position, item_index)
    valid = labels >= 0
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.maximum(labels, 0), logits)
    loss = tf.reduce_sum(tf.where(valid, losses, tf.zeros_like(losses)))
    if self.alignment is not None:
        rows = self.alignment_rows or tf.shape(self.candidate_index)[0]
        sample = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(self.candidate_index)[0]), self.noise.seed())[:rows]
        loss += self.alignment_weight * self._alignment_loss(
            tf.gather(self.candidate_index, sample), tf.gather(fused, sample),
            tf.gather(embeddings, sample), tf.gather(mask, sample))
    return loss


# Variant → model-config overrides; ``previous_step`` also swaps in the code above.
VARIANTS = {"previous_step": {}, "now": {}, "now_bfloat16": {"training_precision": "bfloat16"},
            "per_element": {}}


def build(ws, variant: str):
    """The model of ``variant`` (inside the strategy scope)."""
    import types

    from tfmmrec import pipeline

    if variant != "previous_step":
        return pipeline.build_model(ws)
    model = pipeline.build_model(ws)
    encoder = model.query_tower.history_encoder
    encoder.call = types.MethodType(previous_history_call, encoder)
    model._full_softmax_loss = types.MethodType(previous_full_softmax_loss, model)
    return model


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
    """A Keras callback tracing the last epoch with tf.profiler into ``logdir``."""

    def __new__(cls, logdir: Path, epochs: int):
        import tensorflow as tf

        class Callback(tf.keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == epochs - 1:
                    tf.profiler.experimental.start(str(logdir))

            def on_epoch_end(self, epoch, logs=None):
                if epoch == epochs - 1:
                    tf.profiler.experimental.stop()

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
    train = dataclasses.replace(config.train, output_dir=str(out / "run"), epochs=epochs,
                                verbose=0)
    model = dataclasses.replace(config.model, **VARIANTS[variant])
    config = dataclasses.replace(config, train=train, model=model)
    ws = dataclasses.replace(ws, config=config)
    tf.keras.utils.set_random_seed(train.seed)
    if variant == "per_element":
        dataset = pipeline.with_user_indices(
            per_element_dataset(ws.split.train, train.batch_size, train.seed), ws.user_ids)
        count = len(ws.split.train)
    else:
        dataset, count = pipeline.training_dataset(ws)
    steps = count // train.batch_size
    start = time.perf_counter()
    result = trainer.fit(lambda: build(ws, variant), dataset, count, train,
                         tf.distribute.get_strategy(),
                         callbacks=[ProfileLastEpoch(out / "profile", epochs)])
    return {"examples_per_second": result.examples_per_second, "steps_per_epoch": steps,
            "ms_per_step": 1000 * train.batch_size / result.examples_per_second,
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

    steps, functions, iterators = 16, {}, {}
    for variant in variants:
        model_config = dataclasses.replace(config.model, **VARIANTS[variant])
        vws = dataclasses.replace(ws, config=dataclasses.replace(config, model=model_config))
        tf.keras.utils.set_random_seed(config.train.seed)
        model = build(vws, variant)
        model.build_from_example()
        model.compile(optimizer=optimizer(config.train), steps_per_execution=steps)
        dataset, _ = pipeline.training_dataset(vws)
        functions[variant] = model.make_train_function()
        iterators[variant] = iter(dataset.repeat())
        float(functions[variant](iterators[variant])["loss"])  # trace
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            start = time.process_time()
            float(functions[variant](iterators[variant])["loss"])
            rates[variant].append(steps * config.train.batch_size / (time.process_time() - start))
    base = np.array(rates[variants[0]])
    return {v: {"examples_per_cpu_second_median": float(np.median(r)),
                "ratio_to_first_median": float(np.median(np.array(r) / base)),
                "ratio_to_first_quartiles": [float(q) for q in
                                             np.percentile(np.array(r) / base, [25, 75])]}
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
    args = parser.parse_args(argv)
    if args.interleave and "per_element" in args.variants:
        parser.error("--interleave compares model steps on the shipped input pipeline; "
                     "drop the per_element variant")
    from tfmmrec.config import load_config

    if not (ROOT.parent / "shared" / "data" / "ml100k").is_dir():
        print("needs ../shared/data/ml100k", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    config = load_config(str(CONFIG), ["data.split=random", "data.test_fraction=0.2",
                                       "data.seed=42"])
    ws = stand_in_workspace(config)
    report = {"command": "python benchmarks/profile_train.py" + "".join(
                  f" {flag} {value}" for flag, value in (
                      ("--epochs", args.epochs), ("--variants", " ".join(args.variants)))),
              "load_average_at_start": os.getloadavg()[0], "batch_size": config.train.batch_size,
              "train_examples": len(ws.split.train), "runs": {}}
    if args.interleave:
        report["command"] += f" --interleave {args.interleave}"
        report["interleaved"] = interleaved(ws, config, args.variants, args.interleave)
        report["load_average_at_end"] = os.getloadavg()[0]
        for variant, row in report["interleaved"].items():
            print(f"{variant}: {row['examples_per_cpu_second_median']:,.0f} examples per CPU-s, "
                  f"{row['ratio_to_first_median']:.2f}× the first variant (quartiles "
                  f"{row['ratio_to_first_quartiles'][0]:.2f}–"
                  f"{row['ratio_to_first_quartiles'][1]:.2f})")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "profile_train_interleaved.json").write_text(json.dumps(report, indent=2))
        return 0
    for variant in args.variants:
        print(f"training the {variant} variant ({args.epochs} epochs, the last "
              "profiled)...", flush=True)
        report["runs"][variant] = run(ws, config, variant, args.epochs)
    print(table(report))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "profile_train.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS / 'profile_train.json'}")
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
