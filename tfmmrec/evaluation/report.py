"""Evaluation output, last in the flow: metric dicts become Markdown tables, PNG curves and JSON.

Files are written to a temporary sibling and moved into place with ``os.replace``, so a reader (a
README build, a dashboard, a second benchmark run) never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from tfmmrec.evaluation.metrics import RankingResult

MISSING = "–"
Results = Mapping[str, RankingResult | Mapping[str, Any]]


def plot_metric_curves(
    results: Results,
    path: str | os.PathLike,
    metrics: Sequence[str] = ("recall", "ndcg"),
    title: str | None = None,
) -> Path:
    """One PNG comparing models: a subplot per metric family (``recall`` reads ``recall@K``).

    x is K, one line per model; a ``(mean, std)`` value is drawn as the mean with a ±std band (for
    results averaged over seeds). Uses matplotlib's Agg canvas directly, so it works headless
    and never changes the caller's pyplot backend. Returns the written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    families = [metrics] if isinstance(metrics, str) else list(metrics)
    if not families:
        raise ValueError("metrics must name at least one metric family, e.g. ('recall', 'ndcg')")
    curves = {family: _curves(results, family) for family in families}

    fig = Figure(figsize=(4.5 * len(families), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(families), squeeze=False)[0]
    for ax, family in zip(axes, families, strict=True):
        _draw_family(ax, family, curves[family])
    if title:
        fig.suptitle(title)
    return _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


def format_table(
    results: Results, columns: Sequence[str], model_header: str = "model"
) -> str:
    """A Markdown table: one row per model, one right-aligned column per metric key.

    Floats print with 4 decimals, integers (e.g. ``num_users``) as they are, ``(mean, std)``
    tuples as ``mean ± std``, absent keys as ``–``.
    """
    lines = [
        _row([model_header, *columns]),
        _row([":---", *("---:" for _ in columns)]),
    ]
    for model, result in results.items():
        values = _metrics_of(result)
        lines.append(_row([_escape(model), *(_format_value(values.get(c)) for c in columns)]))
    return "\n".join(lines) + "\n"


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically; returns the path.

    numpy scalars and arrays, ``Path`` and dataclasses (e.g. :class:`RankingResult`) are
    converted; NaN and inf become ``null`` so the file is strict JSON that any reader accepts.
    Conversion happens before the file is touched, so a failure leaves an existing file intact.
    """
    text = json.dumps(_jsonable(obj, "$"), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    data = text.encode("utf-8")
    return _atomic_write(path, lambda f: f.write(data))


# --- plotting ---------------------------------------------------------------------------------

Curve = tuple[list[int], list[float], list[float] | None]


def _curves(results: Results, family: str) -> dict[str, Curve]:
    """Per model, the (K, mean, std) points of ``family@K``; models without any are left out."""
    curves = {}
    for model, result in results.items():
        points = sorted(
            (k, value)
            for (name, k), value in _split_keys(_metrics_of(result)).items()
            if name == family
        )
        if points:
            means = [_mean_std(v)[0] for _, v in points]
            stds = [_mean_std(v)[1] for _, v in points]
            has_std = any(s is not None for s in stds)
            curves[model] = ([k for k, _ in points], means,
                             [s or 0.0 for s in stds] if has_std else None)
    if not curves:
        available = sorted({
            name for result in results.values() for name, _ in _split_keys(_metrics_of(result))
        })
        raise ValueError(
            f"no '{family}@K' values in any result; metric families present: "
            f"{', '.join(available) or 'none'}"
        )
    return curves


def _split_keys(metrics: Mapping[str, Any]) -> dict[tuple[str, int], Any]:
    """``{"recall@10": v}`` → ``{("recall", 10): v}``; keys without ``@K`` (mrr) are left out."""
    split = {}
    for key, value in metrics.items():
        name, sep, k = key.rpartition("@")
        if sep and k.isdigit():
            split[name, int(k)] = value
    return split


def _draw_family(ax: Any, family: str, curves: dict[str, Curve]) -> None:
    all_ks = sorted({k for ks, _, _ in curves.values() for k in ks})
    for model, (ks, means, stds) in curves.items():
        (line,) = ax.plot(ks, means, marker="o", label=model)
        if stds is not None:
            low = np.subtract(means, stds)
            high = np.add(means, stds)
            ax.fill_between(ks, low, high, color=line.get_color(), alpha=0.2)
    if all_ks[-1] >= 10 * all_ks[0]:  # K = 10..100 or 1..100 reads better on a log axis
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.set_title(family)
    ax.set_xlabel("K")
    ax.set_ylabel(f"{family}@K")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _mean_std(value: Any) -> tuple[float, float | None]:
    if isinstance(value, tuple | list) and len(value) == 2:
        return float(value[0]), float(value[1])
    return float(value), None


# --- tables -----------------------------------------------------------------------------------


def _metrics_of(result: RankingResult | Mapping[str, Any]) -> Mapping[str, Any]:
    return result.metrics if isinstance(result, RankingResult) else result


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _format_value(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, tuple | list) and len(value) == 2:
        mean, std = value
        return f"{float(mean):.4f} ± {float(std):.4f}"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.4f}"


# --- files ------------------------------------------------------------------------------------


def _jsonable(obj: Any, where: str) -> Any:
    """Plain JSON types from numpy, paths, dataclasses; ``where`` names the offending key."""
    if obj is None or isinstance(obj, str | bool):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), where)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj) if isinstance(obj, set | frozenset) else obj
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(items)]
    raise TypeError(
        f"cannot write {type(obj).__name__} to JSON at {where}; convert it to numbers, "
        "strings, lists or dicts first"
    )


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write through a temporary sibling (created with the usual umask) and ``os.replace`` it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path
