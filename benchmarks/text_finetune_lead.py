"""Benchmark (protocol B, offline): does fine-tuning the text encoder's top layer help cold items?

    python benchmarks/text_finetune_lead.py               # seeds 0 1 2, validation carves only

The default model's cold-item score is its CF part's kernel-ridge prediction of the item's CF
factors from frozen text + facets + poster features (``cold_start_leads.py``). A ridge on
the same frozen features scores as much, so beating it needs content features the ridge does
not have. This lead makes them: MiniLM's last transformer layer (copied, trainable) is
fine-tuned on the warm items of B's cold-start validation carve to predict their CF factors,
from the frozen lower layers' outputs cached once per run (a layer's forward and backward
instead of the whole encoder's).

- Target: the CF part's item factors in *score space* (multiplied by the Cholesky factor of
  the users' query Gram matrix, so the squared error is the error of the scores), standardised.
  The head starts as the ridge (α = 30) from the frozen pooled text, so step 0 is the ridge.
- Adam at 1e-4, batch 32, early stopping (patience 3, ≤ 30 epochs) on a sixth of the warm
  items held out of the fine-tuning.
- Rows, Recall@20 on the carve's cold items: ``shipped`` (the frozen map), ``fine-tuned text
  in the map`` (the fine-tuned pooled text instead of the frozen text block in the kernel map;
  width and α re-chosen by the model's own selection), ``fine-tuned beside frozen`` (both
  text blocks in the map), ``fine-tuned head`` (the head's predictions as the cold items'
  factors, no kernel map), ``ridge head`` (the same head before fine-tuning), ``½ shipped map
  + ½ fine-tuned head`` (the two predictions of a cold item's factors averaged: one fixed
  blend, not a tuned weight).

Validation carves only; nothing here is scored on test. Prints a table and writes
benchmarks/results/text_finetune_lead.json. Needs ../shared; ~15 min per seed on 2 cores.
"""

from __future__ import annotations

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from cold_start_leads import Lab, default_blocks
from ml100k_workspace import prepared_ml100k

from tfmmrec.towers.text import masked_mean_pool

REPO = Path(__file__).resolve().parents[1]
HEAD_ALPHA, RATE, BATCH, MAX_EPOCHS, PATIENCE = 30.0, 1e-4, 32, 30, 3


class TopLayer:
    """The text encoder's last transformer layer over cached lower-layer outputs."""

    def __init__(self, encoder, texts: np.ndarray):
        from tfmmrec.towers.text import trim_padding

        backbone = encoder.backbone
        layers = [layer for layer in backbone.layers if layer.name.startswith("transformer_layer_")]
        self.top = layers[-1]
        below = tf.keras.Model(backbone.inputs, layers[-2].output)
        tokens = trim_padding(encoder.preprocessor(tf.constant(texts)))
        self.hidden = tf.constant(np.concatenate([
            below({k: v[i:i + 128] for k, v in tokens.items()}).numpy()
            for i in range(0, len(texts), 128)]))
        self.mask = tokens["padding_mask"]

    def fresh_copy(self):
        layer = self.top.__class__.from_config(self.top.get_config())
        layer(self.hidden[:2], padding_mask=self.mask[:2])
        layer.set_weights(self.top.get_weights())
        layer.trainable = True  # the backbone's layers are frozen; the copy learns
        return layer

    def pooled(self, layer, rows=None) -> tf.Tensor:
        """Masked-mean pooled, L2-normalised output (the text encoder's pooling)."""
        hidden = self.hidden if rows is None else tf.gather(self.hidden, rows)
        mask = self.mask if rows is None else tf.gather(self.mask, rows)
        return tf.math.l2_normalize(masked_mean_pool(layer(hidden, padding_mask=mask), mask), -1)

    def features(self, layer) -> np.ndarray:
        return np.concatenate([self.pooled(layer, tf.range(i, min(i + 256, len(self.hidden))))
                               .numpy() for i in range(0, len(self.hidden), 256)])


def finetune(top: TopLayer, users, factors, warm, seed: int) -> dict:
    """Fine-tune a copy of the top layer + a linear head on ``warm`` items' score-space factors;
    ``{"features", "ridge_head", "head", "epochs", "validation_mse"}``."""
    from tfmmrec.towers.cf import ridge_fit

    rng = np.random.default_rng(seed)
    rows = rng.permutation(np.flatnonzero(warm))
    held, fit = tf.constant(rows[:len(rows) // 6]), rows[len(rows) // 6:]
    gram = users.T.astype(np.float64) @ users / len(users)
    root = np.linalg.cholesky(gram + 1e-6 * np.trace(gram) / len(gram) * np.eye(len(gram))).T
    scores = factors @ root.T  # ‖(a - b) rootᵀ‖² = the users' mean squared score error
    mean, scale = scores[fit].mean(0), scores[fit].std()
    target = tf.constant(((scores - mean) / scale).astype(np.float32))
    layer = top.fresh_copy()
    frozen = top.features(layer)
    head = tf.keras.layers.Dense(target.shape[1])
    head.build((None, frozen.shape[1]))
    w, mean_x, mean_y = ridge_fit(frozen[fit], target.numpy()[fit], HEAD_ALPHA)
    head.set_weights([w.astype(np.float32), (mean_y - mean_x @ w).ravel().astype(np.float32)])

    def to_factors(features):
        return (head(features).numpy() * scale + mean) @ np.linalg.inv(root.T)

    ridge_head = to_factors(frozen)
    optimizer = tf.keras.optimizers.Adam(RATE)
    variables = layer.trainable_variables + head.trainable_variables

    def loss(batch):
        return tf.reduce_mean(tf.square(head(top.pooled(layer, batch)) - tf.gather(target, batch)))

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            value = loss(batch)
        optimizer.apply_gradients(zip(tape.gradient(value, variables), variables, strict=True))

    best, kept, waited, curve = float(loss(held)), [v.numpy() for v in variables], 0, []
    for _ in range(MAX_EPOCHS):
        order = rng.permutation(fit)
        for i in range(0, len(order), BATCH):
            step(tf.constant(order[i:i + BATCH]))
        curve.append(float(loss(held)))
        if curve[-1] < best - 1e-4:
            best, kept, waited = curve[-1], [v.numpy() for v in variables], 0
        else:
            waited += 1
            if waited >= PATIENCE:
                break
    for variable, value in zip(variables, kept, strict=True):
        variable.assign(value)
    features = top.features(layer)
    return {"features": features, "ridge_head": ridge_head,
            "head": to_factors(features), "epochs": len(curve) - waited,
            "validation_mse": [round(float(loss_value), 4) for loss_value in curve]}


def run_seed(lab: Lab, top: TopLayer, seed: int, fraction: float, base_seed: int) -> list[dict]:
    from tfmmrec.data.splits import split_interactions, validation_split

    ws, data_seed = lab.ws, base_seed + seed
    outer = split_interactions(ws.dataset.interactions, "cold_start", fraction, data_seed)
    carve = validation_split(outer, fraction, data_seed)
    names = ("text", "facets", "image")
    features, present = lab.features(names)
    users, weights, _, _ = lab.cf_weights(carve, features, present, data_seed)
    items = weights.item_embeddings(features, present)
    tuned = finetune(top, users, weights.item_factors, weights.warm & present, data_seed)
    rows = [{"row": "shipped (frozen text + facets + image)",
             "here": lab.score(users, items, carve)}]
    cold = ~weights.warm
    for row, key, share in (("ridge head (before fine-tuning)", "ridge_head", 1.0),
                            ("fine-tuned head", "head", 1.0),
                            ("½ shipped map + ½ fine-tuned head", "head", 0.5)):
        direct = items.copy()
        direct[cold] = (1 - share) * items[cold] + share * tuned[key][cold]
        rows.append({"row": row, "here": lab.score(users, direct, carve)})
    mask = lab.blocks["text"][1]
    for row, blocks, used in (
            ("fine-tuned text in the map", {"text": (tuned["features"], mask)}, names),
            ("fine-tuned beside frozen", {"tuned": (tuned["features"], mask)}, (*names, "tuned"))):
        tuned_lab = Lab(ws, {**lab.blocks, **blocks})
        f, p = tuned_lab.features(used)
        u, it, _, info = tuned_lab.cf_part(carve, f, p, data_seed)
        rows.append({"row": row, "here": tuned_lab.score(u, it, carve),
                     "chosen": {"width": info["width"], "alpha": info["alpha"]}})
    for row in rows:
        row.update(seed=seed, level="validation", epochs=tuned["epochs"],
                   validation_mse=tuned["validation_mse"])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    from tfmmrec.evaluation.report import write_json
    from tfmmrec.modalities.text import join_text

    start = time.perf_counter()
    prepared = prepared_ml100k()
    if prepared is None:
        return 2
    config, ws = prepared
    texts = join_text(ws.dataset.catalog.frame, tuple(config.data.text_columns)).astype(str)
    top = TopLayer(ws.encoders["text"], texts)
    lab = Lab(ws, default_blocks(ws))
    rows = []
    for seed in args.seeds:
        rows += run_seed(lab, top, seed, config.data.test_fraction, config.data.seed)
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"\nRecall@20 on B's cold-start validation carves, seeds {args.seeds}")
    print("| row | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---|" + "---:|" * (len(args.seeds) + 1))
    summary = []
    for name in dict.fromkeys(r["row"] for r in rows):
        values = [r["here"] for r in rows if r["row"] == name]
        summary.append({"row": name, "values": values, "mean": float(np.mean(values))})
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values)
              + f" | {np.mean(values):.4f} |")
    write_json({"command": "python benchmarks/text_finetune_lead.py", "seeds": args.seeds,
                "metric": "recall@20", "summary": summary, "rows": rows,
                "settings": {"head_alpha": HEAD_ALPHA, "rate": RATE, "batch": BATCH,
                             "max_epochs": MAX_EPOCHS, "patience": PATIENCE},
                "seconds": time.perf_counter() - start},
               REPO / "benchmarks" / "results" / "text_finetune_lead.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
