"""Does a catalogue update embed an item exactly as the export did? (issue 14, real encoders)

For a trained run and its export (e.g. ``configs/ml100k.yaml``: MiniLM + EfficientNet-Lite0),
takes ``--items`` training items and measures, as max absolute differences:

1. encoder features: the training cache vs the encoders called as the export's functions call
   them (one batch, and one item at a time);
2. ``catalog update`` (same ids) through the exported ``embed_item_content`` vs the exported
   item embeddings;
3. ``catalog add`` of the same items under new ids vs the exported embeddings, and vs the
   training model's content-only (cold-item) embedding of those items;

and the norms of those items' trained id-embedding rows. Prints and writes
``benchmarks/results/reembed.json``.

    python benchmarks/reembed.py --config configs/ml100k.yaml --version-dir runs/models/ml100k/1
"""

from __future__ import annotations

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfmmrec import pipeline
from tfmmrec._env import register_custom_ops
from tfmmrec.config import load_config
from tfmmrec.export.catalog import embed_table
from tfmmrec.export.writer import read_metadata
from tfmmrec.modalities.registry import settings_from_config
from tfmmrec.towers.cache import raw_loader

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--version-dir", required=True, help="an exported version of the run")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config overrides (e.g. train.output_dir=..., train.cache_dir=...)")
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--output", default=str(RESULTS / "reembed.json"))
    args = parser.parse_args(argv)

    config = load_config(args.config, args.set)
    model, ws = pipeline.restore(config.train.output_dir, config)
    catalog = ws.dataset.catalog
    rng = np.random.default_rng(0)
    chosen = sorted(rng.choice(len(catalog), min(args.items, len(catalog)),
                               replace=False).tolist())
    result: dict = {"config": args.config, "overrides": args.set, "version_dir": args.version_dir,
                    "items": [str(catalog.item_ids[i]) for i in chosen], "features": {}}

    for modality in ws.modalities:
        encoder = ws.encoders[modality]
        present = [i for i in chosen if ws.contents[modality].mask[i]]
        loader = raw_loader(catalog, modality, settings_from_config(config))
        raw, good = loader(present, [])
        cached = ws.contents[modality].values[good]
        function = tf.function(lambda batch, e=encoder: e(batch, training=False))
        batch = function(tf.nest.map_structure(tf.constant, raw)).numpy()
        single = np.concatenate([
            function(tf.nest.map_structure(lambda v, r=r: tf.constant(v[r:r + 1]), raw)).numpy()
            for r in range(len(good))])
        result["features"][modality] = {"cache_vs_one_batch": float(np.abs(cached - batch).max()),
                                        "cache_vs_one_item_at_a_time":
                                            float(np.abs(cached - single).max())}

    version = Path(args.version_dir)
    metadata = read_metadata(version)
    register_custom_ops(scann=metadata.get("requires_scann_ops", True))
    loaded = tf.saved_model.load(str(version))
    served_ids = list(loaded.item_ids.numpy().astype(str))
    served = loaded.item_table.numpy()[[served_ids.index(result["items"][r])
                                        for r in range(len(chosen))]]
    frame = catalog.frame.iloc[chosen]
    for column in (catalog.columns.image, catalog.columns.audio):
        if column:  # absolute paths: the table is written elsewhere
            paths = catalog.image_paths if column == catalog.columns.image else catalog.audio_paths
            frame = frame.assign(**{column: [str(Path(paths[i]).resolve()) if paths[i] else ""
                                            for i in chosen]})
    with tempfile.TemporaryDirectory() as tmp:
        same = Path(tmp) / "same.csv"
        frame.to_csv(same, index=False)
        position = {item: row for row, item in enumerate(served_ids)}
        updated = embed_table(loaded.towers, same, metadata, position, "update").embeddings
        renamed = Path(tmp) / "renamed.csv"
        frame.assign(item_id=["new-" + str(i) for i in frame["item_id"]]).to_csv(renamed,
                                                                                 index=False)
        added = embed_table(loaded.towers, renamed, metadata, position, "add").embeddings
    content = {k: v for k, v in model.content_table(tf.constant(chosen)).items()
               if k != "item_index"}
    cold = model.item_tower(content, training=False).numpy()
    result["update_same_ids_vs_export"] = float(np.abs(updated - served).max())
    result["add_new_ids_vs_export"] = float(np.abs(added - served).max())
    result["add_new_ids_vs_export_per_item"] = np.abs(added - served).max(1).round(6).tolist()
    result["add_new_ids_vs_cold_embedding"] = float(np.abs(added - cold).max())
    if model.item_tower.id_embedding is not None:
        rows = model.item_tower.id_embedding(tf.constant(chosen)).numpy()
        result["id_row_norms"] = np.linalg.norm(rows, axis=1).round(4).tolist()
    print(json.dumps(result, indent=2))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
