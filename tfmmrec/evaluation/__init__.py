"""Evaluation, between training and export: rank the catalogue per user, then report the metrics.

``metrics`` scores users × items in batches (numpy, no TensorFlow) into Recall/NDCG/hit rate/MRR/
coverage and TFRS-style top-K accuracy; ``report`` writes them as Markdown tables, metric-vs-K PNG
curves and JSON. The classic baselines every result is compared with live in ``cf`` (EASE, iALS),
``content`` (content→CF ridge, centred content kNN) and ``baseline_suite`` (tuned on validation,
scored through ``protocol`` like the model).
"""

from tfmmrec.evaluation.metrics import (
    RankingResult,
    evaluate_ranking,
    interactions_matrix,
    popularity_scores,
    top_k_accuracy,
)
from tfmmrec.evaluation.report import format_table, plot_metric_curves, write_json

__all__ = [
    "RankingResult",
    "evaluate_ranking",
    "format_table",
    "interactions_matrix",
    "plot_metric_curves",
    "popularity_scores",
    "top_k_accuracy",
    "write_json",
]
