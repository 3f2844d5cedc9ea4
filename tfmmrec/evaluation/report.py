"""Evaluation output, last in the flow: metric dicts become Markdown tables, PNG curves and JSON.

Files go through ``tfmmrec.files`` (temporary sibling, fsync, rename; strict JSON), so a reader
(a README build, a dashboard, a second benchmark run) never sees a half-written file.
``write_json`` is re-exported here for the benchmarks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfmmrec.evaluation.metrics import RankingResult
from tfmmrec.files import atomic_write, write_json  # noqa: F401  (re-exported)

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
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


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
