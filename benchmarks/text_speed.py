"""Benchmark: length-aware text (trimmed, length-sorted batches) against the padded path, one run.

Both paths use the same ML-100K MiniLM-L6 encoder (configs/ml100k.yaml, sequence_length 128);
the padded one is the same encoder with ``trim_padding=False`` (what tfmmrec ran before). In one
process, one machine state:

1. catalogue encoding: every ML-100K item text through ``towers.cache.encode_catalog`` (no cache:
   trimmed, length-sorted batches, the encoder traced once) against the loop tfmmrec ran before
   (catalogue order, padded to 128, eager calls) on a random --baseline-items sample, timed in
   two halves around the new path; items/s of each and the largest feature difference
   (must stay ≤ 1e-5);
2. ``query_text`` latency: a text-only ML-100K model is exported eight times (padded encoder,
   trimmed encoder, trimmed with ``export.jit_compile=true``: the backbone XLA-compiled,
   trimmed with ``export.text_backbone=fused``: ``towers.text_inference.InferenceBert``, that
   XLA-compiled too, the fused one with ``export.text_precision=bfloat16``, and fused float32
   and bfloat16 with ``export.text_weights=constants``: kernels as graph constants; brute-force
   index; untrained projection: latency does not depend on its values), the SavedModels are
   loaded as ``tfmmrec serve`` loads them (``tf.saved_model.load``) and the ``query_text``
   signature is called in-process with a five-word query, the paths
   interleaved; p50/p99 of each, the process CPU time per call (``time.process_time``: all of
   TF's threads, and far less sensitive than wall time to other jobs on the machine), and the
   largest embedding difference between paths; interleaved with those calls, each export is
   also loaded as a TF1 graph + session (``tf.compat.v1.saved_model.loader.load``, what TF
   Serving's C++ loader does) and its ``query_text`` run by ``session.run`` on the
   SignatureDef's tensor names (``tf1_session:<path>`` in the JSON). No gRPC hop (serving.py
   measures that: add ~1 ms);
   then the bfloat16 path's numerics over --numerics-queries real ML-100K item texts (seeded
   sample) sent as queries: cosine of its text feature with the float32 one, and how many of
   the float32 export's top-20 items it returns;
3. where a trimmed ``query_text`` call spends its time: ``tf.profiler`` traces --profile-calls
   more calls and sums each op's host time by the part of the graph it belongs to (tokenizer,
   BERT backbone, projection, index search + exclusion) and by op type, plus the Python
   signature wrapper around the function call.

``--intra-op-threads N`` sets TensorFlow's intra- and inter-op pools for the whole process (all
paths alike, the TF1 sessions' too; ``tfmmrec serve`` and TF Serving have the same settings: TF
Serving's ``--tensorflow_intra_op_parallelism``), to measure what a single small request gains
from not splitting each op across threads.

    .venv/bin/python benchmarks/text_speed.py              # ~5 min on 2 cores
    .venv/bin/python benchmarks/text_speed.py --items 256  # smoke run (own output dir)
    .venv/bin/python benchmarks/text_speed.py --intra-op-threads 1  # one thread per op

Prints a table; writes benchmarks/results/text_speed.json (with --intra-op-threads N:
text_speed_intraN.json; a smoke run: benchmarks/out/).
Needs ../shared (MiniLM weights, ML-100K); without it, prints why and exits with status 2.
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

import machine
import numpy as np
from traces import host_events

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "text-speed"
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "configs" / "ml100k.yaml"
QUERY = "a funny space adventure film"  # five words


def percentiles(latencies: list[float]) -> dict:
    ms = np.asarray(latencies) * 1000
    return {"calls": len(ms), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def todays_path(catalog, padded, rows: np.ndarray, batch_size: int) -> tuple[int, float]:
    """The catalogue loop as tfmmrec ran it before: catalogue order, padded to 128 tokens, the
    encoder called eagerly per batch. (items, seconds)."""
    start = time.perf_counter()
    for first in range(0, len(rows), batch_size):
        batch = np.array([catalog.texts[i] for i in rows[first:first + batch_size]])
        padded(batch, training=False).numpy()
    return len(rows), time.perf_counter() - start


def catalogue_encoding(catalog, encoder, padded, batch_size: int, baseline_items: int) -> dict:
    """Today's path on a random sample (a padded batch costs the same whatever its texts, so a
    sample gives its rate), timed in two halves around the new path over the whole catalogue."""
    from tfmmrec.towers import cache

    texts = np.array(catalog.texts[:batch_size])
    encoder(texts), padded(texts)  # build
    present = np.flatnonzero([bool(t) for t in catalog.texts])
    rows = np.random.default_rng(0).permutation(present)[:baseline_items]
    half = len(rows) // 2 // batch_size * batch_size
    before = [todays_path(catalog, padded, rows[:half], batch_size)]
    start = time.perf_counter()
    content, _ = cache.encode_catalog(catalog, encoder, None, batch_size=batch_size,
                                      progress=False)
    seconds = time.perf_counter() - start
    before.append(todays_path(catalog, padded, rows[half:], batch_size))
    items, base_seconds = sum(b[0] for b in before), sum(b[1] for b in before)
    reference = padded(np.array([catalog.texts[i] for i in rows[:batch_size]])).numpy()
    out = {
        "before_padded_eager": {"items": items, "seconds": base_seconds,
                                "items_per_second": items / base_seconds},
        "now_trimmed_sorted_compiled": {"items": int(content.mask.sum()), "seconds": seconds,
                                        "items_per_second": int(content.mask.sum()) / seconds},
        "max_abs_difference": float(np.abs(content.values[rows[:batch_size]] - reference).max()),
    }
    out["speedup"] = (out["now_trimmed_sorted_compiled"]["items_per_second"]
                      / out["before_padded_eager"]["items_per_second"])
    return out


# name → (trim_padding, export overrides on top of the library's text export)
TEXT_EXPORT_FIELDS = ("text_backbone", "text_precision", "text_weights", "jit_compile")
VARIANTS = {
    "padded": (False, {}),
    "trimmed": (True, {}),
    "trimmed_xla": (True, {"export.jit_compile": "true"}),
    "fused": (True, {"export.text_backbone": "fused"}),
    "fused_xla": (True, {"export.text_backbone": "fused", "export.jit_compile": "true"}),
    "fused_bf16": (True, {"export.text_backbone": "fused", "export.text_precision": "bfloat16"}),
    "fused_const": (True, {"export.text_backbone": "fused", "export.text_weights": "constants"}),
    "fused_bf16_const": (True, {"export.text_backbone": "fused",
                                "export.text_precision": "bfloat16",
                                "export.text_weights": "constants"}),
}


def library_text_export() -> dict[str, str]:
    """``ExportConfig``'s defaults for the text export fields, as ``--set`` overrides."""
    from tfmmrec.config import ExportConfig

    defaults = ExportConfig()
    return {f"export.{field}": str(getattr(defaults, field)).lower()
            for field in TEXT_EXPORT_FIELDS}


def export_variants(config, workspace) -> dict:
    """The text-only model exported once per :data:`VARIANTS` entry."""
    from tfmmrec import pipeline

    with tf_scope():
        model = pipeline.build_model(workspace)
        model.build_from_example()
    paths = {}
    encoder = workspace.encoders["text"]
    for name, (trim, overrides) in VARIANTS.items():
        encoder.trim_padding = trim  # read when the signatures are traced, at export
        # every variant from the library's text export (the config may ship another one)
        settings = {**library_text_export(), **overrides}
        named = pipeline.load_config(config, [f"export.model_name={name}",
                                              *(f"{k}={v}" for k, v in settings.items())])
        paths[name] = pipeline.export(named, model=model, workspace=workspace)
    encoder.trim_padding = True
    return paths


def export_sizes(paths: dict, hidden: int) -> dict:
    """Bytes of each export (``saved_model.pb``, ``variables/``, total) and how many of its
    graph functions hold the fused Q/K/V kernels as a ``[hidden, 3·hidden]`` constant: the
    copies of the text backbone's kernels ``export.text_weights: constants`` stores."""
    from tfmmrec.export.audit import load_meta_graph

    out = {}
    for name, path in paths.items():
        path = Path(path)
        graph = path / "saved_model.pb"
        variables = sum(f.stat().st_size for f in (path / "variables").rglob("*") if f.is_file())
        total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        library = load_meta_graph(path).graph_def.library.function
        holding = [f.signature.name for f in library if any(
            node.op == "Const" and [d.size for d in node.attr["value"].tensor.tensor_shape.dim]
            == [hidden, 3 * hidden] for node in f.node_def)]
        out[name] = {"saved_model_pb_bytes": graph.stat().st_size, "variables_bytes": variables,
                     "total_bytes": total, "functions_with_constant_qkv_kernels": len(holding),
                     "constant_kernel_functions": holding}
    return out


def tf_scope():
    import tensorflow as tf

    return tf.distribute.get_strategy().scope()


def matmul_floor(backbone, tokens: int):
    """A call doing only the backbone's weight matmuls for ``tokens`` rows, in numpy: every
    projection and feed-forward kernel of every layer (the ~95% of a short query's op time),
    with no framework around it. What float32 arithmetic alone costs on this machine.

    OpenBLAS is held to one thread: its idle workers spin, which would slow the TF paths timed
    between its calls."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")  # for the process: TF does not use OpenBLAS
    hidden = int(backbone.hidden_dim)
    kernels = [w.numpy() for layer in backbone.transformer_layers for w in layer.weights
               if "kernel" in w.name]
    kernels = [k.reshape(hidden, -1) if k.shape[0] == hidden else k.reshape(-1, hidden)
               for k in kernels]
    rows = np.random.default_rng(0).standard_normal((tokens, hidden)).astype(np.float32)
    flops = 2 * tokens * sum(k.size for k in kernels)

    def run():
        inputs = {hidden: rows}
        for kernel in kernels:  # the feed-forward output reads the intermediate activation
            out = inputs[kernel.shape[0]] @ kernel
            if kernel.shape[1] != hidden:
                inputs[kernel.shape[1]] = out
        return out

    return run, flops


TF1 = "tf1_session:"  # prefix of the TF1 graph + session runs of each export


def tf1_session_runner(path, threads: int = 0):
    """``query_text`` of the export at ``path`` run as TF Serving's C++ loader runs it: the
    SavedModel loaded into a TF1 graph + session (``tf.compat.v1.saved_model.loader.load``,
    as ``tests/export/test_op_audit.py``'s runner does) and ``session.run`` fed and fetched by
    the SignatureDef's tensor names. ``threads``: the session's intra- and inter-op pools
    (0: TensorFlow's default, as TF Serving's flags default). A function returning the
    ``{"item_ids", "scores"}`` answer."""
    import tensorflow as tf

    graph = tf.Graph()
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                      inter_op_parallelism_threads=threads)
    session = tf.compat.v1.Session(graph=graph, config=config)
    with graph.as_default():
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
    signature = meta.signature_def["query_text"]
    feeds = {signature.inputs["text"].name: np.array([QUERY.encode()], dtype=object),
             signature.inputs["k"].name: np.int32(10),
             signature.inputs["exclude_item_ids"].name: np.zeros([1, 0], dtype=object)}
    fetches = {alias: signature.outputs[alias].name for alias in ("item_ids", "scores")}
    return lambda **_: session.run(fetches, feeds)


def query_latency(paths: dict, calls: int, floor=None, threads: int = 0) -> dict:
    """Each export's ``query_text`` called in-process as ``tfmmrec serve`` calls it (TF2,
    ``tf.saved_model.load``) and through a TF1 graph + session (:func:`tf1_session_runner`),
    every path interleaved with the others."""
    import tensorflow as tf

    from tfmmrec.export.loader import ExportedModel

    signatures = {name: ExportedModel(path).signatures["query_text"]
                  for name, path in paths.items()}
    signatures.update({TF1 + name: tf1_session_runner(path, threads)
                       for name, path in paths.items()})
    if floor is not None:  # timed like a signature, interleaved with them
        signatures["numpy_matmul_floor"] = lambda **_: {"item_ids": np.asarray(floor())}
    # Raw signatures apply no input defaults: an empty exclusion list is passed explicitly.
    inputs = {"text": tf.constant([QUERY]), "k": tf.constant(10, tf.int32),
              "exclude_item_ids": tf.zeros([1, 0], tf.string)}
    embeddings = {}
    for name, signature in signatures.items():
        for _ in range(20):  # the first call of the XLA path compiles its shape
            embeddings[name] = np.asarray(signature(**inputs).get("scores"))
    latencies: dict[str, list[float]] = {name: [] for name in signatures}
    cpu = dict.fromkeys(signatures, 0.0)
    for _ in range(calls):  # interleaved: both paths see the same machine state
        for name, signature in signatures.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            np.asarray(signature(**inputs)["item_ids"])
            latencies[name].append(time.perf_counter() - start)
            cpu[name] += time.process_time() - start_cpu
    out = {name: {**percentiles(values), "cpu_ms_per_call": cpu[name] / calls * 1000}
           for name, values in latencies.items()}
    out["query"] = QUERY
    out["p50_speedup"] = out["padded"]["p50_ms"] / out["trimmed"]["p50_ms"]
    for name in VARIANTS:
        if name != "padded":
            out[f"p50_speedup_{name}"] = out["padded"]["p50_ms"] / out[name]["p50_ms"]
            out[f"cpu_ratio_{name}"] = (out["padded"]["cpu_ms_per_call"]
                                        / out[name]["cpu_ms_per_call"])
            out[f"max_score_difference_{name}_vs_padded"] = float(
                np.abs(embeddings[name] - embeddings["padded"]).max())
    out["p50_speedup_xla"] = out["p50_speedup_trimmed_xla"]  # the names earlier runs used
    padded = out[TF1 + "padded"]
    for name in VARIANTS:  # the TF1 session runs, against the TF1 session run of padded
        row = out[TF1 + name]
        row["max_score_difference_vs_tf2_call"] = float(
            np.abs(embeddings[TF1 + name] - embeddings[name]).max())
        if name != "padded":
            row["p50_speedup"] = padded["p50_ms"] / row["p50_ms"]
            row["cpu_ratio"] = padded["cpu_ms_per_call"] / row["cpu_ms_per_call"]
    return out


def bf16_numerics(encoder, paths: dict, texts: list[str], k: int = 20) -> dict:
    """The bfloat16 fused path against float32 on real texts sent as queries: cosine of the
    text features (encoder in-process, batch 1, as a query runs) and the overlap of the
    exports' top-``k`` items (``trimmed`` vs ``fused_bf16``)."""
    import tensorflow as tf

    from tfmmrec.export.loader import ExportedModel

    def features(precision):
        encoder.use_inference_backbone(precision)
        return np.concatenate([encoder(tf.constant([t])).numpy() for t in texts])

    try:
        reference, bf16 = features(None), features("bfloat16")
    finally:
        encoder.use_inference_backbone(None)
    cosine = np.sum(reference * bf16, axis=1)  # both L2-normalised
    answers = {}
    for name in ("trimmed", "fused_bf16"):
        signature = ExportedModel(paths[name]).signatures["query_text"]
        answers[name] = [
            set(np.asarray(signature(text=tf.constant([t]), k=tf.constant(k, tf.int32),
                                     exclude_item_ids=tf.zeros([1, 0], tf.string))["item_ids"])
                .ravel().tolist()) for t in texts]
    overlap = np.array([len(a & b) / k for a, b in zip(answers["trimmed"],
                                                      answers["fused_bf16"], strict=True)])
    return {"queries": len(texts), "k": k,
            "feature_cosine": {"min": float(cosine.min()), "mean": float(cosine.mean()),
                               "p01": float(np.percentile(cosine, 1))},
            f"top{k}_overlap": {"mean": float(overlap.mean()), "min": float(overlap.min()),
                                "share_identical": float(np.mean(overlap == 1.0))}}


# Where an op of the query_text graph belongs, by its name scope (first match wins).
PARTS = (("bert_preprocessor", "tokenizer (BertPreprocessor, TF Text)"),
         ("bert_backbone", "BERT backbone"), ("inference_bert", "BERT backbone (fused copy)"),
         ("text_encoder", "pooling + trim (text encoder)"),
         ("text_projection", "text projection"), ("fusion", "text projection"))


def profile_query(path, calls: int, logdir: Path) -> dict:
    """``tf.profiler`` over ``calls`` query_text calls of one export: host ms per call by graph
    part and by op type, and the Python signature wrapper's own share."""
    import tensorflow as tf

    from tfmmrec.export.loader import ExportedModel

    signature = ExportedModel(path).signatures["query_text"]
    inputs = {"text": tf.constant([QUERY]), "k": tf.constant(10, tf.int32),
              "exclude_item_ids": tf.zeros([1, 0], tf.string)}
    for _ in range(20):
        signature(**inputs)
    shutil.rmtree(logdir, ignore_errors=True)
    tf.profiler.experimental.start(str(logdir))
    start = time.perf_counter()
    for _ in range(calls):
        signature(**inputs)["item_ids"].numpy()
    wall = (time.perf_counter() - start) / calls * 1000
    tf.profiler.experimental.stop()
    parts, ops, events = (collections.Counter() for _ in range(3))
    for name, total_ms in host_events(logdir):
        ms = total_ms / calls
        if ":" not in name or "::" in name or "__inference" in name:
            events[name] += ms  # runtime wrappers around the ops
            continue
        scope, op = name.rsplit(":", 1)
        parts[next((label for key, label in PARTS if key in scope),
                   "index search, exclusion, top-k, request checks")] += ms
        ops[op] += ms
    # The Python wrapper (input/output structuring) is what the whole call costs beyond
    # the runtime executing the function.
    wrapper = max(v for k, v in events.items() if k.startswith("signature_wrapper"))
    executed = events.get("KernelAndDeviceFunc::Run", 0.0)
    rounded = {k: round(v, 3) for k, v in parts.most_common()}
    return {"calls": calls, "wall_ms_per_call": wall, "op_ms_per_call": sum(parts.values()),
            "python_signature_wrapper_ms_per_call": wrapper - executed,
            "op_ms_by_part": rounded,
            "op_ms_by_type": {k: round(v, 3) for k, v in ops.most_common(12)}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=0,
                        help="encode only the first N catalogue items (smoke run; 0 = all)")
    parser.add_argument("--baseline-items", type=int, default=256,
                        help="items timed on the old (padded, eager) path: its rate does not "
                             "depend on which texts")
    parser.add_argument("--calls", type=int, default=500, help="timed query_text calls per path")
    parser.add_argument("--profile-calls", type=int, default=50,
                        help="query_text calls of one export traced with tf.profiler")
    parser.add_argument("--profile-variant", default="fused_bf16", choices=sorted(VARIANTS),
                        help="the export --profile-calls traces")
    parser.add_argument("--numerics-queries", type=int, default=500,
                        help="ML-100K item texts sent as queries to compare bfloat16 with "
                             "float32 (0: skip)")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="TensorFlow intra- and inter-op threads for this process, every "
                             "path alike (0: TensorFlow's default, one per core)")
    args = parser.parse_args(argv)
    if args.intra_op_threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.intra_op_threads)

    from tfmmrec import pipeline
    from tfmmrec.config import load_config
    from tfmmrec.towers.text import TextEncoder

    shared = ROOT.parent / "shared"
    if not (shared / "data" / "ml100k").is_dir():
        print(f"needs {shared}/data/ml100k and the MiniLM weights", file=sys.stderr)
        return 2
    out = OUT if not args.items else OUT / "smoke"
    shutil.rmtree(out, ignore_errors=True)
    os.chdir(ROOT)  # the config's paths are relative to the repository root
    config = load_config(str(CONFIG), [
        "image.enabled=false", f"train.output_dir={out / 'run'}",
        f"train.cache_dir={out / 'cache'}", f"export.base_dir={out / 'models'}",
        "export.index=brute_force", "export.exclude_seen=false",
        # no training here, so no validation to choose an auto CF kind on: EASE's block (both
        # kinds have the same width, so the cost is the same)
        "model.linear_cf=ease"])
    started = time.perf_counter()
    dataset = pipeline.resolve_dataset(config)
    catalog = dataset.catalog
    if args.items:
        n = args.items
        catalog = dataclasses.replace(catalog, item_ids=catalog.item_ids[:n],
                                      texts=catalog.texts[:n], image_paths=catalog.image_paths[:n],
                                      audio_paths=catalog.audio_paths[:n],
                                      frame=catalog.frame.iloc[:n])
    from tfmmrec.towers.encoders import build_encoder

    encoder = build_encoder("text", config.text, [])
    padded = TextEncoder(encoder.preprocessor, encoder.backbone, encoder.pooling, {},
                         trim_padding=False)
    report: dict = {
        "command": "python benchmarks/text_speed.py" + "".join(
            f" {flag} {value}" for flag, value, default in (
                ("--items", args.items, 0), ("--baseline-items", args.baseline_items, 256),
                ("--calls", args.calls, 500), ("--profile-calls", args.profile_calls, 50),
                ("--numerics-queries", args.numerics_queries, 500),
                ("--profile-variant", args.profile_variant, "fused_bf16"),
                ("--intra-op-threads", args.intra_op_threads, 0)) if value != default),
        "intra_op_threads": args.intra_op_threads or "default",
        "machine": {**machine.describe(), "load_average_at_start": os.getloadavg()[0]},
        "encoder": json.loads(encoder.description_json),
        "batch_size": config.train.encode_batch_size,
    }
    print(f"catalogue encoding: {len(catalog)} items trimmed+sorted, {args.baseline_items} on "
          "the old padded path...", flush=True)
    report["catalogue_encoding"] = catalogue_encoding(catalog, encoder, padded,
                                                      config.train.encode_batch_size,
                                                      args.baseline_items)

    print(f"exporting the text-only ML-100K model {len(VARIANTS)} times ({', '.join(VARIANTS)})...",
          flush=True)
    workspace = pipeline.prepare(config, progress=False)
    paths = export_variants(config, workspace)
    report["export_sizes"] = export_sizes(paths, int(encoder.backbone.hidden_dim))
    print(f"query_text: {args.calls} calls per path, interleaved...", flush=True)
    tokens = int(encoder.preprocessor(np.array([QUERY]))["padding_mask"].numpy().sum())
    floor, flops = matmul_floor(encoder.backbone, tokens)
    report["query_text"] = query_latency(paths, args.calls, floor, args.intra_op_threads)
    report["query_text"]["tokens"] = tokens
    report["query_text"]["numpy_matmul_floor"]["gflop"] = flops / 1e9
    report["machine"]["load_average_after_latency"] = os.getloadavg()[0]
    if args.numerics_queries:
        print(f"bfloat16 numerics over {args.numerics_queries} item texts...", flush=True)
        present = [t for t in catalog.texts if t]
        rows = np.random.default_rng(0).permutation(len(present))[:args.numerics_queries]
        report["bf16_numerics"] = bf16_numerics(encoder, paths, [present[i] for i in rows])
    if args.profile_calls:
        print(f"profiling {args.profile_calls} {args.profile_variant} query_text calls...",
              flush=True)
        report["query_text_profile"] = profile_query(paths[args.profile_variant],
                                                     args.profile_calls, out / "trace")
        report["query_text_profile"]["variant"] = args.profile_variant
    report["seconds"] = time.perf_counter() - started
    report["targets"] = {
        "catalogue_encoding_speedup_ge_3": report["catalogue_encoding"]["speedup"] >= 3,
        "query_text_p50_speedup_ge_4": report["query_text"]["p50_speedup"] >= 4,
        "query_text_p99_lt_10ms": report["query_text"]["trimmed"]["p99_ms"] < 10,
        "query_text_xla_p50_speedup_ge_4": report["query_text"]["p50_speedup_xla"] >= 4,
        "query_text_xla_p99_lt_10ms": report["query_text"]["trimmed_xla"]["p99_ms"] < 10,
        **{f"query_text_{name}_p50_speedup_ge_4": report["query_text"][f"p50_speedup_{name}"] >= 4
           for name in ("fused", "fused_xla", "fused_bf16", "fused_const", "fused_bf16_const")},
        **{f"query_text_{name}_p99_lt_10ms": report["query_text"][name]["p99_ms"] < 10
           for name in ("fused", "fused_xla", "fused_bf16", "fused_const", "fused_bf16_const")},
        **{f"query_text_tf1_session_{name}_p50_speedup_ge_4_and_p99_lt_10ms": (
            report["query_text"][TF1 + name]["p50_speedup"] >= 4
            and report["query_text"][TF1 + name]["p99_ms"] < 10)
           for name in VARIANTS if name != "padded"},
        "features_within_1e-5": report["catalogue_encoding"]["max_abs_difference"] <= 1e-5,
    }
    print(table(report))
    name = f"text_speed_intra{args.intra_op_threads}" if args.intra_op_threads else "text_speed"
    target = (RESULTS if not args.items else out) / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2))
    print(f"wrote {target} ({report['seconds'] / 60:.1f} min)")
    shutil.rmtree(out / "models", ignore_errors=True)
    return 0


LABELS = {
    "padded": "padded to 128 (before)",
    "trimmed": "trimmed, Keras backbone (the library's default)",
    "trimmed_xla": "trimmed + XLA (`export.jit_compile`)",
    "fused": "trimmed, fused backbone (`export.text_backbone: fused`)",
    "fused_xla": "fused + XLA (`text_backbone: fused`, `jit_compile`)",
    "fused_bf16": "fused, bfloat16 weights (`export.text_precision: bfloat16`)",
    "fused_const": "fused, constant kernels (`export.text_weights: constants`; "
                   "configs/ml100k.yaml)",
    "fused_bf16_const": "fused, bfloat16 constant kernels (`text_precision: bfloat16`, "
                        "`text_weights: constants`)",
    "numpy_matmul_floor": "floor: the backbone's weight matmuls alone in numpy",
}


def table(report: dict) -> str:
    enc, query = report["catalogue_encoding"], report["query_text"]
    machine = report["machine"]
    lines = [
        "| measurement | padded (before) | trimmed (now) | ratio |",
        "| :--- | ---: | ---: | ---: |",
        f"| MiniLM catalogue encoding, batch {report['batch_size']} (before: "
        f"{enc['before_padded_eager']['items']} items, padded, eager; now: "
        f"{enc['now_trimmed_sorted_compiled']['items']} items, trimmed, sorted, one graph) | "
        f"{enc['before_padded_eager']['items_per_second']:.1f} items/s | "
        f"{enc['now_trimmed_sorted_compiled']['items_per_second']:.1f} items/s | "
        f"**{enc['speedup']:.1f}×** |",
        f"| largest feature difference, trimmed vs padded | | {enc['max_abs_difference']:.1e} | |",
        "",
        f"`query_text`, five words ({query['query']!r}, {query['tokens']} tokens), "
        f"{query['padded']['calls']} interleaved calls per path, load average "
        f"{machine['load_average_at_start']:.1f} → {machine['load_average_after_latency']:.1f}:",
        "| path | p50 ms | p99 ms | CPU ms per call | p50 ratio to padded | CPU ratio | "
        "largest score difference to padded |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, label in LABELS.items():
        row = query[name]
        ratio = "" if name in ("padded", "numpy_matmul_floor") else (
            f"**{query[f'p50_speedup_{name}']:.1f}×** | {query[f'cpu_ratio_{name}']:.1f}× | "
            f"{query[f'max_score_difference_{name}_vs_padded']:.1e}")
        lines.append(f"| {label} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                     f"{row['cpu_ms_per_call']:.2f} | {ratio or ' | | '} |")
    lines += [
        "\nSame run, each export loaded as a TF1 graph + session (TF Serving's loader) and "
        "`session.run` by tensor name:",
        "| path | p50 ms | p99 ms | CPU ms per call | p50 ratio to padded | CPU ratio | "
        "largest score difference to the TF2 call |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in VARIANTS:
        row = query[TF1 + name]
        ratio = "| " if name == "padded" else (
            f"**{row['p50_speedup']:.1f}×** | {row['cpu_ratio']:.1f}×")
        lines.append(f"| {LABELS[name]} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                     f"{row['cpu_ms_per_call']:.2f} | {ratio} | "
                     f"{row['max_score_difference_vs_tf2_call']:.1e} |")
    sizes = report.get("export_sizes")
    if sizes:
        lines += ["\nExport sizes (MB = 10⁶ bytes; functions: graph functions holding the fused "
                  "Q/K/V kernel as a constant):",
                  "| path | saved_model.pb MB | variables/ MB | total MB | functions |",
                  "| :--- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {LABELS[name]} | {row['saved_model_pb_bytes'] / 1e6:.1f} | "
                  f"{row['variables_bytes'] / 1e6:.1f} | {row['total_bytes'] / 1e6:.1f} | "
                  f"{row['functions_with_constant_qkv_kernels']} |"
                  for name, row in sizes.items()]
    numerics = report.get("bf16_numerics")
    if numerics:
        cos, top = numerics["feature_cosine"], numerics[f"top{numerics['k']}_overlap"]
        lines.append(
            f"\nbfloat16 vs float32 over {numerics['queries']} ML-100K item texts as queries: "
            f"feature cosine mean {cos['mean']:.6f}, min {cos['min']:.6f}; top-{numerics['k']} "
            f"overlap mean {top['mean']:.3f}, min {top['min']:.2f}, identical sets "
            f"{top['share_identical']:.0%}")
    return "\n".join(lines) + "\n" + profile_table(report.get("query_text_profile"))


def profile_table(profile: dict | None) -> str:
    if not profile:
        return ""
    lines = [f"\n{profile.get('variant', 'trimmed')} query_text under tf.profiler "
             f"({profile['calls']} calls): "
             f"{profile['wall_ms_per_call']:.2f} ms wall, {profile['op_ms_per_call']:.2f} ms in "
             f"ops, Python signature wrapper "
             f"{profile['python_signature_wrapper_ms_per_call']:.2f} ms per call",
             "| part of the graph | op ms per call | share of op time |", "| :--- | ---: | ---: |"]
    for part, ms in profile["op_ms_by_part"].items():
        lines.append(f"| {part} | {ms:.2f} | {ms / profile['op_ms_per_call']:.0%} |")
    lines.append("top op types: " + ", ".join(
        f"{op} {ms:.2f}" for op, ms in list(profile["op_ms_by_type"].items())[:6]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
