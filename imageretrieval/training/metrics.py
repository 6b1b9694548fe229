"""Retrieval metrics on L2-normalized embeddings (vectorized; used for model selection on val)."""

from __future__ import annotations

import numpy as np


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ranked_relevance(query: np.ndarray, q_labels: np.ndarray, db: np.ndarray, db_labels: np.ndarray,
                     exclude_self: bool = False, exclude_rows: np.ndarray | None = None) -> np.ndarray:
    """(n_queries, n_db) bool: is the r-th ranked database item of the query's class (cosine ranking).

    `exclude_self` (queries = database) or `exclude_rows` (each query's own database row) drops the
    query from its own ranking.
    """
    sims = _normalize(query) @ _normalize(db).T
    if exclude_self:
        exclude_rows = np.arange(len(query))
    if exclude_rows is not None:
        sims[np.arange(len(query)), exclude_rows] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")
    rel = np.asarray(db_labels)[order] == np.asarray(q_labels)[:, None]
    if exclude_rows is not None:
        rel = rel[:, :-1]  # the query itself is ranked last
    return rel


def precision_at_k(rel: np.ndarray, k: int) -> float:
    return float(rel[:, :k].mean())


def mean_average_precision(rel: np.ndarray) -> float:
    """mAP over the full ranking (queries without any relevant item count as 0)."""
    hits = np.cumsum(rel, axis=1)
    prec = hits / np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(axis=1)
    ap = (prec * rel).sum(axis=1) / np.maximum(n_rel, 1)
    return float(ap.mean())


def retrieval_scores(query, q_labels, db, db_labels, k: int = 15, exclude_self: bool = False,
                     exclude_rows: np.ndarray | None = None) -> dict[str, float]:
    rel = ranked_relevance(query, q_labels, db, db_labels, exclude_self, exclude_rows)
    return {f"p@{k}": precision_at_k(rel, k), "map": mean_average_precision(rel)}
