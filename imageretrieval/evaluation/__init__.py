"""Retrieval evaluation: pure metrics, ranking, feature variants, protocols, PCA search, plots, reports.

The names below load their module on first use (as `imageretrieval.models` does), so that importing one
submodule, e.g. for its option names, costs no more than that submodule. Plots (matplotlib):
`from imageretrieval.evaluation.plots import plot_confusion_matrix`.
"""

from __future__ import annotations

from ..lazy import lazy_attributes

_LAZY = {
    "average_precision": "metrics",
    "average_precision_from_ranks": "metrics",
    "average_precision_seed": "metrics",
    "map_at_r": "metrics",
    "precision_at_k": "metrics",
    "precision_curve": "metrics",
    "rank_order": "metrics",
    "recall_at_k": "metrics",
    "Rankings": "ranking",
    "rank_queries": "ranking",
    "EvalResult": "runner",
    "evaluate_task": "runner",
    "VARIANTS": "variants",
    "Whitening": "variants",
    "apply_variant": "variants",
    "query_expansion": "variants",
}
__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = sorted(_LAZY)
