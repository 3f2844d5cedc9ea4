"""Benchmark: serving latency/QPS over gRPC, and ScaNN vs BruteForce at 100k and 1M items.

Part 1 starts ``tfmmrec serve`` as a subprocess on the export at --model-base-path (built with the
demo config if absent) and measures user (serving_default) and text (query_text) queries over
gRPC: one client for latency, --clients concurrent clients for throughput.
Part 2 builds both indexes over synthetic clustered embeddings (64-d) and measures single-query
throughput, batched throughput, and ScaNN's recall@10 against BruteForce's exact top 10.

    .venv/bin/python benchmarks/serving.py     # ~15 min on 2 cores (with the demo training)

Prints a table; writes serving.json and serving.png to benchmarks/out/ and benchmarks/results/.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
RESULTS = ROOT / "benchmarks" / "results"
READY = re.compile(r"gRPC 127\.0\.0\.1:(\d+)")


# -- part 1: the server ------------------------------------------------------------------------
def ensure_export(base: Path) -> Path:
    """An export to serve: the given one, or the demo model built once into benchmarks/out."""
    from tfmmrec.export.writer import list_versions

    if list_versions(base):
        return base
    from tfmmrec import pipeline
    from tfmmrec.config import load_config

    print(f"no export under {base}; training the demo model (about a minute)...", flush=True)
    config = load_config(None, [f"train.output_dir={OUT / 'serving-model' / 'run'}",
                                f"export.base_dir={base.parent}",
                                f"export.model_name={base.name}", "train.verbose=0"])
    workspace = pipeline.prepare(config, progress=False)
    result = pipeline.train(config, workspace=workspace, progress=False)
    pipeline.export(config, model=result.model, workspace=workspace)
    return base


def start_server(base: Path, threads: int) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tfmmrec.cli", "-q", "serve", "--model-base-path", str(base),
         "--port", "0", "--no-rest", "--poll-seconds", "0", "--num-threads", str(threads),
         "--no-warmup"],  # the benchmark warms up with its own requests before timing
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in process.stdout] + [lines.put(None)],
                     daemon=True).start()
    deadline = time.monotonic() + 300
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        if line is None:
            raise SystemExit("tfmmrec serve exited before it was ready")
        if match := READY.search(line):
            return process, int(match[1])


def timed_requests(stub, request, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        stub.Predict(request, timeout=30)
        latencies.append(time.perf_counter() - start)
    return latencies


def summarize(latencies: list[float], seconds: float) -> dict:
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "qps": len(latencies) / seconds}


def concurrent_load(port: int, request, clients: int, per_client: int) -> dict:
    """``clients`` threads, each with its own channel, send ``per_client`` requests."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    collected: list[list[float]] = [[] for _ in range(clients)]

    def worker(slot: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            collected[slot] = timed_requests(stub, request, per_client)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return summarize([x for part in collected for x in part], time.perf_counter() - start)


def bench_server(base: Path, requests: int, clients: int, threads: int) -> dict:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from tfmmrec.export.warmup import predict_request
    from tfmmrec.export.writer import list_versions

    metadata = json.loads((base / str(list_versions(base)[-1]) / "assets.extra" /
                           "tfmmrec.json").read_text())
    queries = {
        "user (serving_default)": predict_request(base.name, "serving_default", {
            "user_id": np.array([b"u000"], dtype=object)}),
        "text (query_text, k=10)": predict_request(base.name, "query_text", {
            "text": np.array([b"a quiet rainy night in an old city"], dtype=object),
            "k": np.int32(10)}),
    }
    process, port = start_server(base, threads)
    results = {"model": str(base), "index": metadata.get("index"),
               "num_items": metadata.get("num_items"), "server_threads": threads,
               "clients": clients, "queries": {}}
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for name, request in queries.items():
            timed_requests(stub, request, 20)  # first calls trace the graph
            start = time.perf_counter()
            single = timed_requests(stub, request, requests)
            one = summarize(single, time.perf_counter() - start)
            loaded = concurrent_load(port, request, clients, requests // clients)
            results["queries"][name] = {"one_client": one, f"{clients}_clients": loaded}
        channel.close()
    finally:
        process.terminate()
        process.wait(timeout=60)
    return results


# -- part 2: the indexes -----------------------------------------------------------------------
def synthetic(num_items: int, dim: int, num_queries: int, seed: int = 0):
    """Clustered unit vectors (like trained embeddings, unlike isotropic noise) and queries."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(16, num_items // 1000), dim)).astype(np.float32)
    items = np.empty((num_items, dim), np.float32)
    for start in range(0, num_items, 100_000):
        stop = min(start + 100_000, num_items)
        chosen = centers[rng.integers(0, len(centers), stop - start)]
        items[start:stop] = chosen + 0.5 * rng.standard_normal((stop - start, dim))
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = centers[rng.integers(0, len(centers), num_queries)] + 0.5 * rng.standard_normal(
        (num_queries, dim)).astype(np.float32)
    return items, queries.astype(np.float32)


def qps(search, queries: np.ndarray, batch: int, seconds: float = 10.0) -> float:
    """Queries per second over ``queries`` in batches of ``batch`` (stops after ~``seconds``)."""
    import tensorflow as tf

    search(tf.constant(queries[:batch]))  # trace + first-call set-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        offset = done % (len(queries) - batch + 1)
        search(tf.constant(queries[offset:offset + batch]))
        done += batch
    return done / (time.perf_counter() - start)


def export_size(index, dim: int, folder: Path) -> int:
    """Bytes of a SavedModel holding only ``index`` behind a ``[None, dim]`` query signature."""
    import shutil

    import tensorflow as tf

    module = tf.Module()
    module.index = index
    module.search = tf.function(lambda q: dict(zip(("scores", "positions"), index(q, k=10),
                                                   strict=True)),
                                input_signature=[tf.TensorSpec([None, dim], tf.float32)])
    shutil.rmtree(folder, ignore_errors=True)
    tf.saved_model.save(module, str(folder), signatures={"search": module.search},
                        options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    shutil.rmtree(folder, ignore_errors=True)
    return size


KINDS = ("brute_force", "partitioned", "scann")


def bench_index(num_items: int, dim: int, num_queries: int, max_k: int, kinds=KINDS,
                seconds: float = 10.0) -> dict:
    import tensorflow as tf

    from tfmmrec.export.index import IndexSettings, build

    items, queries = synthetic(num_items, dim, num_queries)
    row: dict = {"num_items": num_items, "dim": dim}
    found = {}
    for kind in kinds:
        start = time.perf_counter()
        index = build(items, None, IndexSettings(kind, max_k))  # over item positions
        build_s = time.perf_counter() - start
        search = tf.function(lambda q, index=index: index(q, k=10))
        found[kind] = np.concatenate([search(tf.constant(queries[i:i + 50]))[1].numpy()
                                      for i in range(0, len(queries), 50)])
        row[kind] = {"build_s": build_s, "params": index.parameters,
                     "export_bytes": export_size(index, dim, OUT / f"index-{kind}"),
                     "qps_batch_1": qps(search, queries, 1, seconds),
                     "qps_batch_64": qps(search, queries, 64, seconds)}
        print(f"  {kind:<11} {num_items:>9,} items: built in {build_s:5.1f} s, "
              f"{row[kind]['qps_batch_1']:8.0f} q/s single, "
              f"{row[kind]['qps_batch_64']:8.0f} q/s batched, "
              f"{row[kind]['export_bytes'] / 2**20:7.1f} MiB", flush=True)
        del index, search
        gc.collect()
    for kind in kinds:
        if kind == "brute_force" or "brute_force" not in found:
            continue
        hits = [len(set(a) & set(b)) for a, b in zip(found[kind], found["brute_force"],
                                                      strict=True)]
        row[kind]["recall_at_10"] = float(np.mean(hits) / 10)
        for batch in (1, 64):
            row[kind][f"speedup_batch_{batch}"] = (row[kind][f"qps_batch_{batch}"]
                                                   / row["brute_force"][f"qps_batch_{batch}"])
    return row


# -- report --------------------------------------------------------------------------------------
def print_tables(report: dict) -> None:
    server = report.get("server")
    if server:
        clients = server["clients"]
        load = server.get("load_average_1min", [float("nan")] * 2)
        print(f"\ngRPC, tfmmrec serve ({server['server_threads']} threads), model "
              f"{server['num_items']} items, {server['index']} index; machine load average "
              f"{load[0]:.1f} → {load[1]:.1f} on {report['machine']['cpus']} cores")
        print(f"{'query':<26}{'p50 ms':>8}{'p99 ms':>8}{'QPS':>8}   {clients} clients:"
              f"{'p50 ms':>8}{'p99 ms':>8}{'QPS':>8}")
        for name, row in server["queries"].items():
            one, many = row["one_client"], row[f"{clients}_clients"]
            print(f"{name:<26}{one['p50_ms']:8.1f}{one['p99_ms']:8.1f}{one['qps']:8.0f}"
                  f"{'':13}{many['p50_ms']:8.1f}{many['p99_ms']:8.1f}{many['qps']:8.0f}")
    if report.get("index"):
        print(f"\n{'items':>10} {'index':<12}{'q/s':>9}{'speedup':>9}{'q/s@64':>9}{'speedup':>9}"
              f"{'recall@10':>11}{'build s':>9}{'MiB':>8}")
        for row in report["index"]:
            for kind in KINDS:
                if kind not in row:
                    continue
                r = row[kind]
                print(f"{row['num_items']:>10,} {kind:<12}{r['qps_batch_1']:9.0f}"
                      f"{r.get('speedup_batch_1', 1.0):8.1f}x{r['qps_batch_64']:9.0f}"
                      f"{r.get('speedup_batch_64', 1.0):8.1f}x{r.get('recall_at_10', 1.0):11.3f}"
                      f"{r['build_s']:9.1f}{r['export_bytes'] / 2**20:8.1f}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    server = report.get("server")
    if server:
        names = list(server["queries"])
        x = np.arange(len(names))
        for offset, (label, key) in enumerate([("p50, 1 client", ("one_client", "p50_ms")),
                                               ("p99, 1 client", ("one_client", "p99_ms")),
                                               (f"p99, {server['clients']} clients",
                                                (f"{server['clients']}_clients", "p99_ms"))]):
            values = [server["queries"][n][key[0]][key[1]] for n in names]
            axes[0].bar(x + (offset - 1) * 0.27, values, 0.27, label=label)
        axes[0].axhline(50, color="red", linestyle="--", linewidth=1, label="target p99 50 ms")
        axes[0].set_xticks(x, names)
        axes[0].set_ylabel("latency (ms)")
        axes[0].set_title("gRPC latency, tfmmrec serve")
        axes[0].legend(fontsize=8)
    rows = report.get("index") or []
    if rows:
        x = np.arange(len(rows))
        kinds = [k for k in KINDS if k in rows[0]]
        width = 0.8 / len(kinds)
        for offset, kind in enumerate(kinds):
            values = [r[kind]["qps_batch_1"] for r in rows]
            axes[1].bar(x + (offset - (len(kinds) - 1) / 2) * width, values, width, label=kind)
            for i, row in enumerate(rows):
                if "recall_at_10" in row[kind]:
                    axes[1].annotate(f"R@10 {row[kind]['recall_at_10']:.3f}\n"
                                     f"{row[kind]['speedup_batch_1']:.0f}x",
                                     (i + (offset - (len(kinds) - 1) / 2) * width, values[i]),
                                     ha="center", va="bottom", fontsize=7)
        axes[1].set_yscale("log")
        top = max(r[k]["qps_batch_1"] for r in rows for k in kinds)
        axes[1].set_ylim(1, top * 8)
        axes[1].set_xticks(x, [f"{r['num_items']:,} items" for r in rows])
        axes[1].set_ylabel("single queries / s (log)")
        axes[1].set_title("Index kinds vs brute force, 64-d synthetic embeddings")
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", default=str(OUT / "serving-model" / "tfmmrec"),
                        help="export to serve (default: the demo model, built here once)")
    parser.add_argument("--requests", type=int, default=1000, help="per query type and mode")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--server-threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000, help="recall@10 sample")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS)
    parser.add_argument("--seconds", type=float, default=10.0, help="timing window per mode")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": "python benchmarks/serving.py " + " ".join(argv or sys.argv[1:]),
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    previous = RESULTS / "serving.json"
    if (args.skip_server or args.skip_index) and previous.is_file():
        kept = json.loads(previous.read_text())  # re-running one part keeps the other's figures
        report.update({part: kept[part] for part in ("server", "index") if part in kept})
    if not args.skip_server:
        base = ensure_export(Path(args.model_base_path))
        print(f"serving {base} ...", flush=True)
        before = os.getloadavg()[0]
        report["server"] = bench_server(base, args.requests, args.clients, args.server_threads)
        report["server"]["load_average_1min"] = [before, os.getloadavg()[0]]
        report["server"]["model_base_path"] = str(base)
    if not args.skip_index:
        report["index"] = []
        for size in args.sizes:
            print(f"indexes over {size:,} items ...", flush=True)
            before = os.getloadavg()[0]
            row = bench_index(size, 64, args.queries, max_k=100, kinds=args.kinds,
                              seconds=args.seconds)
            row["load_average_1min"] = [before, os.getloadavg()[0]]
            report["index"].append(row)
    print_tables(report)
    text = json.dumps(report, indent=2, default=str)
    (OUT / "serving.json").write_text(text)
    (RESULTS / "serving.json").write_text(text)
    for folder in (OUT, RESULTS):
        plot(report, folder / "serving.png")
    print(f"\nwrote serving.json and serving.png to {OUT} and {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
