"""Benchmark: real-time recommendation (issue 14) — catalogue updates and session-aware requests.

    python benchmarks/realtime.py                              # both sections
    python benchmarks/realtime.py --section catalog --sizes 100000 1000000
    python benchmarks/realtime.py --section session            # needs ../shared (ML-100K)

Section ``catalog``: for each catalogue size N, a text-only catalogue of N synthetic items
(title + 20-word description) and 20 interactions per user is built, a model with small towers
is trained for one epoch (``tfmmrec train``'s code path), then, each step in its own process so
its peak RSS is its own:
  * ``full export``: what ``tfmmrec export`` does from the run (load and validate the dataset,
    restore the model with the cached encoder features, embed all N items, build the index,
    write the version);
  * ``catalog add``: ``tfmmrec catalog add`` of 1,000 new items to that version (read the
    newest version's catalogue from its checkpoint, embed the 1,000 with its item embedder,
    update the index over N + 1,000, write the next version: new variables under the same
    graph when its constants allow).
Wall time, CPU time (user + system: less sensitive to other jobs on a shared machine) and peak
RSS of each and the speed-ups, from one run. Index: ``--index`` (brute_force by default; scann
trains a ScaNN searcher in both steps; partitioned runs k-means at export and places the new
items at the update). ``--reuse-runs`` skips training a size this script already trained.

Section ``session``: MovieLens-100K, protocol C (each user's last 20 % of ratings by time),
``configs/ml100k.yaml``. Every test interaction is one request whose history is the user's
training items plus their earlier test items (replayed in time order); the target is that
interaction and the history is excluded from the ranking. Rows: the static user embedding
(what ``recommend`` serves); with a history encoder (``model.user_history``, the ML-100K
default) ``recommend_session`` as it serves such a model (the earlier test items extend the
user's stored history; anonymous: the last H items as the whole history); the blend of the user
query with the mean embedding of the last H history items (``recommend_session`` of a model
without one, see ``RetrievalServingModule._session_queries``), the session mean alone (an
anonymous user), and EASE on the same replayed histories. The session weight w, the H values
and EASE's λ are chosen on a validation split carved from the training split with the same
temporal protocol (a model trained on the inner training part), never on test.

Writes benchmarks/results/realtime.json and realtime.png.
"""

from __future__ import annotations

import os

import tfmmrec  # Keras 2 before TensorFlow

tfmmrec.quiet_output()  # before TensorFlow loads: its C++ log lines and library warnings off

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from synthetic_folders import mark_built, reuse_or_reset

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TFMMREC_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / "out" / "realtime"
GIB = 2**30
ADDED = 1000
WORDS = np.array(["a", "night", "city", "river", "storm", "light", "garden", "quiet", "music",
                  "machine", "old", "new", "love", "war", "dream", "space", "house", "road",
                  "island", "winter", "summer", "song", "ghost", "king", "child", "sea", "fire",
                  "glass", "paper", "story", "robot", "train", "letter", "mountain", "secret"])
TINY = ["text.hidden_dim=16", "text.num_layers=1", "text.num_heads=2", "text.intermediate_dim=32",
        "text.sequence_length=16", "model.embedding_dim=32", "train.epochs=1",
        "train.batch_size=4096", "train.verbose=0", "train.encode_batch_size=2048",
        "model.alignment_weight=0", "export.k=10", "export.max_k=100"]


def cpu_seconds() -> float:
    """User + system CPU time of this process: less sensitive than wall time to other jobs
    on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


# --- catalog section --------------------------------------------------------------------------


def build_catalog(root: Path, num_items: int, seed: int = 0) -> Path:
    """N items (and ADDED more in new.csv), 20 interactions per user, N/10 users."""
    import pandas as pd

    if reuse_or_reset(root, f"v1 {num_items}"):
        return root
    rng = np.random.default_rng(seed)

    def items(start, stop):
        words = rng.choice(WORDS, (stop - start, 20))
        return pd.DataFrame({"item_id": [f"i{i:07d}" for i in range(start, stop)],
                             "title": [f"Item {i}" for i in range(start, stop)],
                             "description": [" ".join(w) for w in words]})

    items(0, num_items).to_csv(root / "items.csv", index=False)
    items(num_items, num_items + ADDED).to_csv(root / "new.csv", index=False)
    users = max(100, num_items // 10)
    pd.DataFrame({"user_id": np.repeat([f"u{u:06d}" for u in range(users)], 20),
                  "item_id": [f"i{i:07d}" for i in rng.integers(0, num_items, users * 20)]}
                 ).drop_duplicates().to_csv(root / "interactions.csv", index=False)
    return mark_built(root, f"v1 {num_items}")


def catalog_config(num_items: int, index: str):
    from tfmmrec.config import load_config

    folder = WORK / f"catalog-{num_items}"
    return load_config(None, [*TINY, f"data.path={folder / 'data'}",
                              f"train.output_dir={folder / 'run'}",
                              f"train.cache_dir={folder / 'cache'}",
                              f"export.base_dir={folder / 'models'}", f"export.index={index}",
                              "export.model_name=catalog"])


def step(name: str, num_items: int, index: str) -> dict:
    """One measured step, in this process (run through ``subprocess`` by ``bench_catalog``)."""
    from tfmmrec import pipeline

    config = catalog_config(num_items, index)
    started, cpu = time.perf_counter(), cpu_seconds()
    if name == "train":
        build_catalog(Path(config.data.path), num_items)
        pipeline.train(config, progress=False)
        (Path(config.train.output_dir) / ".trained").write_text(str(num_items))
        out = {}
    elif name == "export":
        shutil.rmtree(config.export.base_dir, ignore_errors=True)
        out = {"version": str(pipeline.export(config))}
    elif name == "add":
        from tfmmrec.export.catalog import add

        model_dir = Path(config.export.base_dir) / config.export.model_name
        for version in model_dir.glob("[0-9]*"):  # measure 1 → 2 on every run
            if version.name != "1":
                shutil.rmtree(version)
        result = add(model_dir, Path(config.data.path) / "new.csv", batch_size=256)
        out = {"version": str(result.version_dir), "num_items": result.num_items,
               "embed_seconds": result.embedded_seconds}
    else:
        raise ValueError(name)
    return {**out, "seconds": time.perf_counter() - started, "cpu_seconds": cpu_seconds() - cpu,
            "peak_rss_gib": peak_rss_gib()}


def run_step(name: str, num_items: int, index: str) -> dict:
    command = [sys.executable, __file__, "--step", name, "--num-items", str(num_items),
               "--index", index]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"step {name} ({num_items}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_catalog(sizes, index: str, reuse_runs: bool = False) -> list[dict]:
    rows = []
    for num_items in sizes:
        trained = Path(catalog_config(num_items, index).train.output_dir) / ".trained"
        if not (reuse_runs and trained.is_file()):
            print(f"[catalog] {num_items:,} items: training", flush=True)
            run_step("train", num_items, index)
        export = run_step("export", num_items, index)
        print(f"[catalog] full export {export['seconds']:.1f} s", flush=True)
        add = run_step("add", num_items, index)
        print(f"[catalog] catalog add {add['seconds']:.1f} s", flush=True)
        rows.append({"num_items": num_items, "added": ADDED, "index": index,
                     "full_export_seconds": export["seconds"],
                     "full_export_peak_rss_gib": export["peak_rss_gib"],
                     "catalog_add_seconds": add["seconds"],
                     "catalog_add_embed_seconds": add["embed_seconds"],
                     "catalog_add_peak_rss_gib": add["peak_rss_gib"],
                     "full_export_cpu_seconds": export["cpu_seconds"],
                     "catalog_add_cpu_seconds": add["cpu_seconds"],
                     "speedup": export["seconds"] / add["seconds"],
                     "cpu_speedup": export["cpu_seconds"] / add["cpu_seconds"]})
    return rows


# --- session section ------------------------------------------------------------------------


def replay_events(train, test):
    """(user index, history item indices in time order, target item) per test interaction."""
    order = "timestamp" if "timestamp" in test.columns else None
    train = train.sort_values(order, kind="stable") if order else train
    test = test.sort_values(order, kind="stable") if order else test
    history = {u: list(g) for u, g in train.groupby("user_index")["item_index"]}
    events = []
    for user, items in test.groupby("user_index")["item_index"]:
        past = list(history.get(user, []))
        for item in items:
            events.append((user, list(past), int(item)))
            past.append(int(item))
    return events


def hit_rate(score_fn, events, num_items: int, k: int = 20, batch: int = 512) -> float:
    """Mean over events of [target in the top k], history excluded (Recall@k, one target)."""
    hits = 0
    for start in range(0, len(events), batch):
        chunk = events[start:start + batch]
        scores = score_fn(chunk)
        for row, (_, past, _) in enumerate(chunk):
            scores[row, past] = -np.inf
        target = np.array([e[2] for e in chunk])
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        hits += int((top == target[:, None]).any(axis=1).sum())
    return hits / max(len(events), 1)


def session_scorer(users, items, weight: float, length: int, history=None,
                   anonymous: bool = False):
    """``recommend_session``'s query for each replayed event, the request being the last
    ``length`` items of the history (with the user's id unless ``anonymous``):
    ``normalise(w · u + (1 − w) · s)``, ``s`` the normalised mean of the request items'
    embeddings. ``u``: with ``history`` (a model with a history encoder) the query of the user's
    stored training history followed by the request items (anonymous: the request items alone),
    what such an export serves; otherwise the static user embedding (anonymous: none, ``w`` must
    be 0)."""
    def score(chunk):
        requests = [past[-length:] for _, past, _ in chunk]
        if history is not None:
            base = history([None if anonymous else u for u, _, _ in chunk], requests)
        else:
            base = users[[u for u, _, _ in chunk]]
        queries = []
        for u, recent in zip(base, requests, strict=True):
            if recent and weight < 1:
                mean = items[recent].sum(0)
                mixed = weight * u + (1 - weight) * mean / max(np.linalg.norm(mean), 1e-12)
                u = mixed / max(np.linalg.norm(mixed), 1e-12)
            queries.append(u)
        return np.stack(queries) @ items.T
    return score


def history_queries(model, user_ids, config):
    """``(user indices or None, request item lists) → [B, d]``: the query of each user's stored
    history followed by the request's items, computed by the functions the export's
    ``session_query`` traces (``extend_history`` + ``query_with_history``)."""
    import tensorflow as tf

    from tfmmrec.export.module import extend_history, query_with_history

    tower = model.query_tower
    half_life, max_length = config.model.history_half_life, config.model.history_max_length

    def queries(users, requests):
        users = tf.constant(["" if u is None else str(user_ids[u]) for u in users])
        stored = tower.history_encoder.gather(tower.lookup(users))
        session = tf.RaggedTensor.from_row_lengths(
            np.concatenate([np.asarray(r, np.int64) for r in requests]),
            [len(r) for r in requests])
        history, weights = extend_history(*stored, session, half_life=half_life,
                                          max_length=max_length)
        return query_with_history(tower, users, history, weights,
                                  item_embedder=model.item_embeddings).numpy()

    return queries


def ease_matrix(train, num_items: int, lam: float) -> np.ndarray:
    x = np.zeros((train["user_index"].max() + 1, num_items), np.float64)
    x[train["user_index"], train["item_index"]] = 1.0
    gram = x.T @ x
    gram[np.diag_indices(num_items)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices(num_items)] = 0.0
    return b.astype(np.float32)


def ease_scorer(b: np.ndarray):
    def score(chunk):
        x = np.zeros((len(chunk), b.shape[0]), np.float32)
        for row, (_, past, _) in enumerate(chunk):
            x[row, past] = 1.0
        return x @ b
    return score


def model_embeddings(ws, config, name: str):
    from tfmmrec import pipeline

    result = pipeline.train(config, workspace=ws, progress=False)
    users = pipeline.embed_users(result.model, ws.user_ids)
    items = pipeline.embed_items(result.model, ws.dataset.num_items)
    del name
    return users, items, result.model


def with_indices(ws, frame):
    index = {str(u): i for i, u in enumerate(ws.user_ids)}
    frame = frame.copy()
    frame["user_index"] = frame["user_id"].astype(str).map(index)
    return frame


def bench_session(seed: int = 0) -> dict:
    import dataclasses

    from tfmmrec import pipeline
    from tfmmrec.data.splits import split_interactions

    if not (SHARED / "data" / "ml100k").is_dir():
        raise SystemExit(f"the session section needs ../shared/data/ml100k ({SHARED})")
    shared = os.path.relpath(SHARED, REPO)
    overrides = ["data.split=temporal", "data.test_fraction=0.2", f"train.seed={seed}",
                 f"data.path={shared}/data/ml100k",
                 f"text.preset={shared}/weights/minilm-l6-h384-uncased",
                 f"image.handle={shared}/weights/efficientnet-lite0",
                 f"audio.handle={shared}/weights/yamnet", "train.verbose=0",
                 f"train.cache_dir={WORK / 'ml100k-cache'}"]
    os.chdir(REPO)
    config = tfmmrec.load_config(REPO / "configs" / "ml100k.yaml",
                                 [*overrides, f"train.output_dir={WORK / 'ml100k-outer'}"])
    ws = pipeline.prepare(config, progress=True)
    n = ws.dataset.num_items
    # Validation: the same temporal protocol inside the training split.
    inner_split = split_interactions(ws.split.train, "temporal", 0.2, config.data.seed + 1)
    inner_config = tfmmrec.load_config(config, [f"train.output_dir={WORK / 'ml100k-inner'}"])
    inner = dataclasses.replace(ws, config=inner_config, split=inner_split)
    shutil.rmtree(WORK / "ml100k-inner", ignore_errors=True)
    shutil.rmtree(WORK / "ml100k-outer", ignore_errors=True)
    users, items, model = model_embeddings(inner, inner_config, "inner")
    train_i, test_i = (with_indices(ws, f) for f in (inner_split.train, inner_split.test))
    events = replay_events(train_i, test_i)
    validation: dict[str, float] = {}
    lengths = (5, 10, 20, 50)
    # Blend with the static user embedding (a model without a history encoder; w=0: the mean
    # of the request's items alone, what an anonymous request to such a model gets).
    for weight in (0.0, 0.25, 0.5, 0.75, 1.0):
        for length in lengths if weight < 1 else (5,):
            validation[f"session w={weight} H={length}"] = hit_rate(
                session_scorer(users, items, weight, length), events, n)
    static = max((k for k in validation if not k.startswith("session w=1.0")),
                 key=validation.get)
    # The served path of a model with a history encoder (model.user_history): u is the query of
    # the stored history followed by the request (w=1: that query alone).
    history = None
    if model.query_tower.history_encoder is not None:
        history = history_queries(model, ws.user_ids, inner_config)
        for weight in (0.25, 0.5, 0.75, 1.0):
            for length in lengths:
                validation[f"history session w={weight} H={length}"] = hit_rate(
                    session_scorer(users, items, weight, length, history), events, n)
        best = max((k for k in validation if k.startswith("history")), key=validation.get)
    else:
        best = static

    def chosen(key):
        return float(key.split("w=")[1].split()[0]), int(key.split("H=")[1])

    (weight, length), (static_weight, static_length) = chosen(best), chosen(static)
    ease_validation = {lam: hit_rate(ease_scorer(ease_matrix(train_i, n, lam)), events, n)
                       for lam in (50.0, 100.0, 200.0, 500.0, 1000.0)}
    lam = max(ease_validation, key=ease_validation.get)
    print(f"[session] validation: {best} {validation[best]:.4f}; {static} "
          f"{validation[static]:.4f}; EASE λ={lam} {ease_validation[lam]:.4f}", flush=True)

    users, items, model = model_embeddings(ws, config, "outer")
    train_o, test_o = (with_indices(ws, f) for f in (ws.split.train, ws.split.test))
    events = replay_events(train_o, test_o)
    rows = {"static user embedding (recommend)": hit_rate(session_scorer(users, items, 1.0, 1),
                                                          events, n)}
    if history is not None:
        history = history_queries(model, ws.user_ids, config)
        rows[f"recommend_session, history encoder (w={weight}, H={length})"] = hit_rate(
            session_scorer(users, items, weight, length, history), events, n)
        rows[f"recommend_session, history encoder, anonymous (w={weight}, H={length})"] = \
            hit_rate(session_scorer(users, items, weight, length, history, anonymous=True),
                     events, n)
    rows |= {
        f"blend with the static user embedding (w={static_weight}, H={static_length})":
            hit_rate(session_scorer(users, items, static_weight, static_length), events, n),
        f"session mean only (anonymous, H={static_length})": hit_rate(
            session_scorer(users, items, 0.0, static_length), events, n),
        f"EASE on the replayed histories (λ={lam:g})": hit_rate(
            ease_scorer(ease_matrix(train_o, n, lam)), events, n),
    }
    for name, value in rows.items():
        print(f"[session] {name}: Recall@20 {value:.4f}", flush=True)
    return {"protocol": "C (temporal, last 20% per user), replayed", "events": len(events),
            "recall@20": rows, "chosen": {"session_user_weight": weight, "history": length,
                                          "static_blend": {"session_user_weight": static_weight,
                                                           "history": static_length},
                                          "ease_lambda": lam},
            "validation_recall@20": validation,
            "ease_validation_recall@20": {str(k): v for k, v in ease_validation.items()}}


# --- report ---------------------------------------------------------------------------------


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in ("catalog", "session") if report.get(p)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "catalog":
            rows = report["catalog"]
            x = np.arange(len(rows))
            ax.bar(x - 0.2, [r["full_export_seconds"] for r in rows], 0.4, label="full export")
            ax.bar(x + 0.2, [r["catalog_add_seconds"] for r in rows], 0.4,
                   label=f"catalog add {ADDED:,}")
            ax.set_xticks(x, [f"{r['num_items']:,} items\n×{r['speedup']:.1f} wall"
                              + (f", ×{r['cpu_speedup']:.1f} CPU" if "cpu_speedup" in r else "")
                              for r in rows])
            ax.set_ylabel("seconds")
            ax.set_yscale("log")
            ax.legend()
            ax.set_title("catalogue update vs full export")
        else:
            rows = report["session"]["recall@20"]
            ax.barh(range(len(rows)), list(rows.values()))
            ax.set_yticks(range(len(rows)), [n.split(" (")[0] for n in rows])
            ax.set_xlabel("Recall@20 (one request per test interaction)")
            ax.set_title("ML-100K protocol C, replayed histories")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def save_part(name: str, payload: dict) -> None:
    """Each section's result is kept on its own, so sections can run separately."""
    (WORK / f"{name}.json").write_text(json.dumps(payload, indent=2))


def write_report() -> None:
    """realtime.json + .png from the saved sections (and from an older realtime.json)."""
    path = RESULTS / "realtime.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    for name in ("catalog", "session"):
        part = WORK / f"{name}.json"
        if part.is_file():
            report.update(json.loads(part.read_text()))
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    path.write_text(json.dumps(report, indent=2))
    plot(report, RESULTS / "realtime.png")
    print(f"wrote {path} and {RESULTS / 'realtime.png'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=["catalog", "session", "all", "report"],
                        default="all", help="report: rebuild the JSON/PNG from saved sections")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--index", choices=["brute_force", "scann", "partitioned"],
                        default="brute_force")
    parser.add_argument("--reuse-runs", action="store_true",
                        help="catalog: skip training a size whose run this script completed")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--num-items", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        print(json.dumps(step(args.step, args.num_items, args.index)))
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.section in ("catalog", "all"):
        save_part("catalog", {
            "catalog": bench_catalog(args.sizes, args.index, args.reuse_runs),
            "catalog_command": "python benchmarks/realtime.py --section catalog --sizes "
                               + " ".join(map(str, args.sizes)) + f" --index {args.index}"
                               + " --reuse-runs" * args.reuse_runs})
    if args.section in ("session", "all"):
        save_part("session", {"session": bench_session(),
                              "session_command": "python benchmarks/realtime.py --section "
                                                 "session"})
    write_report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
