"""Benchmark: would int8 weights make a 7-token query's BERT backbone faster than bfloat16?

The fused backbone (``towers.text_inference.InferenceBert``) can hold its 24 weight matrices in
bfloat16 (``export.text_precision: bfloat16``). The hypothesis under test: a 7-row query is bound
by weight bytes (42 MB float32, 21 MB bfloat16 per call), so int8 (~10.6 MB) would be ~2x faster.
Only core TensorFlow 2.20 ops count (stock TF Serving 2.20 must run the export). In one process,
every variant interleaved with the others (shuffled order each round), p50/p99 wall time and the
process CPU time per call (``time.process_time``):

1. ``chain``: the 24 weight matmuls of MiniLM-L6 (per layer ``[7,384]x[384,1152]`` fused QKV,
   ``[7,384]x[384,384]``, ``[7,384]x[384,1536]``, ``[7,1536]x[1536,384]``; random weights),
   chained in one ``tf.function`` per variant: float32 and bfloat16 as shipped (``tf.Variable``
   weights), the same with the weights as graph constants (``*_const``: oneDNN then caches its
   packed copy of each; with a variable it repacks the float32 weights on every call), and the
   int8 paths core TF has: ``QuantizedMatMulWithBiasAndDequantize`` (oneDNN VNNI int8 GEMM;
   its ``MIN_FIRST`` mode returns wrong values in TF 2.20 here, so ``SCALED``: each call's
   activations shifted by their minimum into quint8, the shift undone with the weight column
   sums; weights per tensor or per output channel, constants), the same with a fixed activation
   range (``int8_static_range``: no per-call range ops; a speed bound, not a usable numerics
   choice), ``BatchMatMulV3`` int8 x int8 -> int32 (Eigen), ``UniformQuantizedDotHybrid``, and
   int8 storage cast to bfloat16/float32 per call;
2. ``--saved-model``: four of them saved as SavedModels and run after ``tf.saved_model.load``
   and through a TF1 session (as TF Serving loads), to check the constant-weight effect survives
   export;
3. ``--encoder``: the real ML-100K MiniLM-L6 text encoder (tokenizer + fused backbone + pooling)
   on the five-word query, shipped fused float32/bfloat16 against constant-weight float32,
   bfloat16 and int8 (per-channel) copies, and each one's features against the fused float32
   ones over ``--numerics-texts`` item texts (cosine; needs ../shared).

    python benchmarks/int8_weights.py --calls 300                         # chain only, ~1 min
    python benchmarks/int8_weights.py --calls 300 --saved-model --encoder  # ~6 min on 2 cores

Writes benchmarks/results/int8_weights.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
QUERY = "a funny space adventure film"  # five words, 7 tokens (as text_speed.py)
ROWS, HIDDEN, INNER, LAYERS = 7, 384, 1536, 6
SHAPES = ((HIDDEN, 3 * HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, INNER), (INNER, HIDDEN))
STATIC_RANGE = 4.0  # int8_static_range: activations assumed in [-4, 4] (the chain keeps std 1)


def tf_():
    import tensorflow as tf

    return tf


def int8_columns(kernel: np.ndarray, per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 ``[-127, 127]`` weights and their float32 scale per output column (one
    shared scale when not ``per_channel``)."""
    amax = np.abs(kernel).max(axis=0) if per_channel else np.full(kernel.shape[1],
                                                                   np.abs(kernel).max())
    scale = (np.maximum(amax, 1e-12) / 127.0).astype(np.float32)
    return np.clip(np.round(kernel / scale), -127, 127).astype(np.int8), scale


def int8_dense(kernel: np.ndarray, bias: np.ndarray, per_channel: bool = True,
               static_range: float | None = None) -> Callable:
    """``x @ kernel + bias`` through ``QuantizedMatMulWithBiasAndDequantize`` (SCALED mode,
    weights as graph constants so oneDNN caches their packed copy).

    quint8 SCALED covers ``[0, max]`` only, so ``x - min(x)`` is quantized and
    ``min(x) * colsum(W)`` added back. The kernel runs on ``[-127, 127]`` integers (``min_b``
    /``max_b`` = ±127, unit scale) and the column scales multiply its output: per-channel scales
    with an op that takes one weight range. ``static_range``: ``x + r`` over ``[0, 2r]``, the
    shift folded into the bias (no per-call range ops)."""
    tf = tf_()
    q, scale = int8_columns(kernel, per_channel)
    colsum = (q.astype(np.float32) * scale).sum(axis=0).astype(np.float32)
    if static_range is not None:
        bias = bias - static_range * colsum

    def dense(x):
        if static_range is None:
            low = tf.reduce_min(x)
            shifted = x - low
            high = tf.reduce_max(shifted)
        else:
            shifted, high = x + static_range, 2.0 * static_range
        quantized = tf.quantization.quantize(shifted, 0.0, high, tf.quint8, mode="SCALED")
        y = tf.raw_ops.QuantizedMatMulWithBiasAndDequantize(
            a=quantized.output, b=tf.bitcast(tf.constant(q), tf.qint8),
            bias=tf.constant((bias / scale).astype(np.float32)), min_a=quantized.output_min,
            max_a=quantized.output_max, min_b=tf.constant(-127.0), max_b=tf.constant(127.0),
            min_freezed_output=tf.constant(0.0), max_freezed_output=tf.constant(0.0),
            Toutput=tf.float32, input_quant_mode="SCALED") * tf.constant(scale)
        return y if static_range is not None else y + low * tf.constant(colsum)

    return dense


def float_dense(kernel: np.ndarray, bias: np.ndarray, dtype: str, constant: bool) -> Callable:
    """``x @ kernel + bias`` with the kernel in ``dtype`` (as InferenceBert's ``_dense``), held
    in a ``tf.Variable`` (as shipped) or a graph constant."""
    tf = tf_()
    dt = tf.as_dtype(dtype)
    held = tf.Variable(tf.cast(kernel, dt), trainable=False) if not constant else None
    value = kernel.astype(dt.as_numpy_dtype)

    def dense(x):
        weights = held if held is not None else tf.constant(value)
        if dt == tf.float32:
            return tf.nn.bias_add(tf.matmul(x, weights), bias)
        return tf.nn.bias_add(tf.cast(tf.matmul(tf.cast(x, dt), weights), tf.float32), bias)

    return dense


def other_int8_dense(kernel: np.ndarray, bias: np.ndarray, kind: str) -> Callable:
    """The slower int8 routes: ``bmm``: ``BatchMatMulV3`` int8 x int8 -> int32 (activations
    symmetric per tensor per call); ``hybrid``: ``UniformQuantizedDotHybrid`` (float x qint8
    per channel); ``cast_<dtype>``: int8 variable cast to ``dtype`` every call."""
    tf = tf_()
    q, scale = int8_columns(kernel)
    weights = tf.Variable(q if kind != "hybrid" else tf.bitcast(q, tf.qint8), trainable=False)

    def dense(x):
        if kind == "bmm":
            x_scale = tf.maximum(tf.reduce_max(tf.abs(x)), 1e-8) / 127.0
            product = tf.raw_ops.BatchMatMulV3(x=tf.cast(tf.round(x / x_scale), tf.int8),
                                               y=weights, Tout=tf.int32)
            return tf.cast(product, tf.float32) * (x_scale * scale) + bias
        if kind == "hybrid":
            return tf.raw_ops.UniformQuantizedDotHybrid(
                lhs=x, rhs=weights, rhs_scales=scale, rhs_zero_points=tf.zeros(scale.shape,
                                                                                tf.int32),
                Tout=tf.float32, rhs_quantization_min_val=-128, rhs_quantization_max_val=127,
                rhs_quantization_axis=1) + bias
        dt = tf.as_dtype(kind.removeprefix("cast_"))
        product = tf.matmul(tf.cast(x, dt), tf.cast(weights, dt))
        return tf.cast(product, tf.float32) * scale + bias

    return dense


CHAIN_VARIANTS: dict[str, Callable] = {
    "float32": lambda k, b: float_dense(k, b, "float32", constant=False),
    "bfloat16": lambda k, b: float_dense(k, b, "bfloat16", constant=False),
    "float32_const": lambda k, b: float_dense(k, b, "float32", constant=True),
    "bfloat16_const": lambda k, b: float_dense(k, b, "bfloat16", constant=True),
    "int8_per_tensor": lambda k, b: int8_dense(k, b, per_channel=False),
    "int8_per_channel": lambda k, b: int8_dense(k, b),
    "int8_static_range": lambda k, b: int8_dense(k, b, static_range=STATIC_RANGE),
    "int8_batchmatmulv3": lambda k, b: other_int8_dense(k, b, "bmm"),
    "int8_uniform_hybrid": lambda k, b: other_int8_dense(k, b, "hybrid"),
    "int8_cast_bfloat16": lambda k, b: other_int8_dense(k, b, "cast_bfloat16"),
    "int8_cast_float32": lambda k, b: other_int8_dense(k, b, "cast_float32"),
}


def chain(variant: str, seed: int = 0) -> Callable:
    """The 24 matmuls in one function of ``x`` ``[7, 384]``: per layer QKV (its first third
    goes on), output, inner (+ GELU), outer, rescaled to unit std after the output and outer
    dense so every variant computes the same bounded function."""
    tf = tf_()
    rng = np.random.default_rng(seed)
    denses = [[CHAIN_VARIANTS[variant]((rng.standard_normal(s) * 0.04).astype(np.float32),
                                       (rng.standard_normal(s[1]) * 0.02).astype(np.float32))
               for s in SHAPES] for _ in range(LAYERS)]

    def run(x):
        for qkv, output, inner, outer in denses:
            y = output(qkv(x)[:, :HIDDEN])
            x = y / (tf.math.reduce_std(y) + 1e-6)
            y = outer(tf.nn.gelu(inner(x), approximate=True))
            x = y / (tf.math.reduce_std(y) + 1e-6)
        return x

    return run


def interleaved(calls: dict[str, Callable], rounds: int, warmup: int = 10) -> dict:
    """Each callable timed ``rounds`` times, all of them once per round in a shuffled order."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    wall = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    order = list(calls)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            calls[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: {"p50_ms": float(np.percentile(wall[name], 50) * 1e3),
                   "p99_ms": float(np.percentile(wall[name], 99) * 1e3),
                   "cpu_ms_per_call": float(np.mean(cpu[name]) * 1e3)} for name in calls}


def chain_speed(rounds: int) -> dict:
    tf = tf_()
    x = tf.constant(np.random.default_rng(1).standard_normal((ROWS, HIDDEN)), tf.float32)
    functions = {name: tf.function(chain(name)) for name in CHAIN_VARIANTS}
    reference = functions["float32"](x).numpy().ravel()
    out = interleaved({name: (lambda f=f: f(x).numpy()) for name, f in functions.items()}, rounds)
    for name, function in functions.items():
        value = function(x).numpy().ravel()
        out[name]["output_cosine_vs_float32"] = float(
            value @ reference / np.linalg.norm(value) / np.linalg.norm(reference))
    return out


def saved_model_speed(rounds: int, names=("float32", "bfloat16", "float32_const",
                                          "int8_per_channel")) -> dict:
    """The chain saved and reloaded: ``tf.saved_model.load`` and a TF1 session (``tf1:``)."""
    tf = tf_()
    x = np.random.default_rng(1).standard_normal((ROWS, HIDDEN)).astype(np.float32)
    calls, sizes = {}, {}
    with tempfile.TemporaryDirectory(prefix="int8-weights-") as root:
        for name in names:
            module = tf.Module()
            module.run = tf.function(chain(name),
                                     input_signature=[tf.TensorSpec([None, HIDDEN], tf.float32)])
            concrete = module.run.get_concrete_function()
            module.weights = list(concrete.variables)
            path = os.path.join(root, name)
            tf.saved_model.save(module, path, signatures=concrete)
            sizes[name] = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
            signature = tf.saved_model.load(path).signatures["serving_default"]
            calls[name] = lambda s=signature: s(tf.constant(x))["output_0"].numpy()
            graph = tf.Graph()
            session = tf.compat.v1.Session(graph=graph)
            with graph.as_default():
                meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
            sig = meta.signature_def["serving_default"]
            feeds = {next(iter(sig.inputs.values())).name: x}
            fetch = next(iter(sig.outputs.values())).name
            calls[f"tf1:{name}"] = lambda s=session, f=feeds, o=fetch: s.run(o, f)
        out = interleaved(calls, rounds)
    for name in names:
        out[name]["saved_model_bytes"] = sizes[name]
    return out


def const_backbone(backbone, mode: str):
    """An ``InferenceBert`` whose weight matmuls read graph constants (``float32``,
    ``bfloat16``) or run ``int8_dense`` (per-channel): its embeddings, LayerNorm, attention and
    residuals as the shipped copy's (float32)."""
    tf = tf_()
    from tfmmrec.towers import text_inference as ti

    class ConstBert(ti.InferenceBert):
        def __init__(self):
            super().__init__(backbone, "float32")
            names = ("qkv", "output", "inner", "outer")
            self._const = [{n: self._make(w[f"{n}_kernel"].numpy(), w[f"{n}_bias"].numpy())
                            for n in names} for w in self.layers]

        @staticmethod
        def _make(kernel, bias):
            if mode == "int8":
                return int8_dense(kernel, bias)
            return float_dense(kernel, tf.constant(bias), mode, constant=True)

        def _layers(self, x, adder, batch, length, attention, layers=None):
            for w, dense in zip(self.layers, self._const, strict=True):
                qkv = dense["qkv"](x)
                context = attention(*tf.split(qkv, 3, axis=1), adder, self.num_heads)
                x = ti._layer_norm(dense["output"](context) + x, *w["attention_norm"])
                inner = tf.nn.gelu(dense["inner"](x), approximate=True)
                x = ti._layer_norm(dense["outer"](inner) + x, *w["output_norm"])
            return x

    return ConstBert()


def encoder_speed(rounds: int, numerics_texts: int) -> dict:
    """The ML-100K text encoder with each backbone copy, traced as an export traces it."""
    tf = tf_()
    from tfmmrec import pipeline
    from tfmmrec.config import load_config
    from tfmmrec.towers.encoders import build_encoder
    from tfmmrec.towers.text_inference import InferenceBert

    os.chdir(ROOT)  # the config's paths are relative to the repository root
    config = load_config(str(ROOT / "configs" / "ml100k.yaml"), ["image.enabled=false"])
    encoder = build_encoder("text", config.text, [])
    functions = {}
    for name in ("float32", "bfloat16", "float32_const", "bfloat16_const", "int8_const"):
        mode = name.removesuffix("_const")
        module = (const_backbone(encoder.backbone, mode) if name.endswith("_const")
                  else InferenceBert(encoder.backbone, mode))
        object.__setattr__(encoder, "_inference_backbone", module)
        function = tf.function(lambda t: encoder(t, training=False),
                               input_signature=[tf.TensorSpec([None], tf.string)])
        function.get_concrete_function()  # traced now, with this copy
        functions[name] = function
    encoder.use_inference_backbone(None)
    texts = [t for t in pipeline.resolve_dataset(config).catalog.texts if t]
    rows = np.random.default_rng(0).permutation(len(texts))[:numerics_texts]
    features = {name: np.concatenate([f(tf.constant([texts[i]])).numpy() for i in rows])
                for name, f in functions.items()}
    query = tf.constant([QUERY])
    out = interleaved({name: (lambda f=f: f(query).numpy()) for name, f in functions.items()},
                      rounds)
    reference = features["float32"]
    for name, values in features.items():
        cosine = np.sum(values * reference, axis=1) / (
            np.linalg.norm(values, axis=1) * np.linalg.norm(reference, axis=1))
        out[name]["feature_cosine_vs_fused_float32"] = {
            "texts": len(rows), "min": float(cosine.min()),
            "p01": float(np.percentile(cosine, 1)), "mean": float(cosine.mean())}
    out["tokens"] = int(encoder.preprocessor(query)["padding_mask"].numpy().sum())
    return out


def table(report: dict) -> str:
    lines = [f"load average {report['load_average_at_start']:.1f} -> "
             f"{report['load_average_at_end']:.1f}; {report['rounds']} interleaved rounds"]
    for part, base in (("chain", "bfloat16"), ("saved_model", "bfloat16"),
                       ("encoder", "bfloat16")):
        rows = report.get(part)
        if not rows:
            continue
        lines += ["", f"{part}: {'variant':22s} {'p50 ms':>7s} {'p99 ms':>7s} {'cpu ms':>7s} "
                      f"{'bf16 p50 / p50':>14s}  numerics"]
        for name, row in rows.items():
            if not isinstance(row, dict):
                continue
            reference = rows[("tf1:" if name.startswith("tf1:") else "") + base]["p50_ms"]
            numerics = row.get("output_cosine_vs_float32")
            cos = row.get("feature_cosine_vs_fused_float32")
            note = (f"output cosine {numerics:.5f}" if numerics is not None else
                    f"feature cosine min {cos['min']:.4f} mean {cos['mean']:.5f}" if cos else
                    f"{row['saved_model_bytes'] / 1e6:.1f} MB saved"
                    if "saved_model_bytes" in row else "")
            lines.append(f"{'':8s}{name:22s} {row['p50_ms']:7.2f} {row['p99_ms']:7.2f} "
                         f"{row['cpu_ms_per_call']:7.2f} {reference / row['p50_ms']:14.2f}  {note}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="interleaved rounds per part")
    parser.add_argument("--saved-model", action="store_true",
                        help="also time four chains after a SavedModel round trip")
    parser.add_argument("--encoder", action="store_true",
                        help="also time the real ML-100K MiniLM encoder (needs ../shared)")
    parser.add_argument("--numerics-texts", type=int, default=300)
    args = parser.parse_args(argv)
    report: dict = {"command": "python benchmarks/int8_weights.py " + " ".join(
                        sys.argv[1:] if argv is None else argv),
                    "cpus": os.cpu_count(), "rounds": args.calls,
                    "load_average_at_start": os.getloadavg()[0]}
    report["chain"] = chain_speed(args.calls)
    if args.saved_model:
        report["saved_model"] = saved_model_speed(args.calls)
    if args.encoder:
        if not (ROOT.parent / "shared" / "data" / "ml100k").is_dir():
            print("--encoder needs ../shared (ML-100K, MiniLM weights)", file=sys.stderr)
            return 2
        report["encoder"] = encoder_speed(args.calls, args.numerics_texts)
    report["load_average_at_end"] = os.getloadavg()[0]
    print(table(report))
    target = RESULTS / "int8_weights.json"
    target.write_text(json.dumps(report, indent=2))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
