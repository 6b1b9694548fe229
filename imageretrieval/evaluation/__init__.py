"""Retrieval evaluation: pure metrics, ranking, feature variants, protocols, PCA search, plots, reports.

Plots (matplotlib) are imported on demand: `from imageretrieval.evaluation.plots import plot_confusion_matrix`.
"""

from .metrics import (
    average_precision,
    average_precision_from_ranks,
    average_precision_seed,
    map_at_r,
    precision_at_k,
    precision_curve,
    rank_order,
    recall_at_k,
)
from .ranking import Rankings, rank_queries
from .runner import EvalResult, evaluate_task
from .variants import VARIANTS, Whitening, apply_variant, query_expansion

__all__ = [
    "VARIANTS", "EvalResult", "Rankings", "Whitening", "apply_variant", "average_precision",
    "average_precision_from_ranks", "average_precision_seed", "evaluate_task", "map_at_r",
    "precision_at_k", "precision_curve", "query_expansion", "rank_order",
    "rank_queries", "recall_at_k",
]
