"""Retrieval metrics as pure numpy functions over ranked relevance.

Conventions (shared by every function here and by `ranking.rank_queries`):

* A ranking is the database ordered by decreasing score; ties are broken by increasing database
  row, so every metric is deterministic (`rank_order`).
* `ranked` is a boolean matrix (n_queries, n_ranked): ranked[q, i] is True when the item at rank
  i + 1 is relevant to query q. The query itself is NOT in it (when the query is also a database
  item it is removed before ranking), so a trivial self-match never inflates a score.
* `n_relevant` is the number of relevant database items per query (query excluded). When a ranking
  is truncated, relevant items beyond the cut count as never retrieved.
* Queries without any relevant item have an undefined AP (NaN); means skip them (`nanmean`).
"""

from __future__ import annotations

import numpy as np

from ..ordering import rank_order  # noqa: F401 - the one ranking rule, re-exported for the metrics


def _as_2d(ranked: np.ndarray) -> np.ndarray:
    ranked = np.asarray(ranked, dtype=bool)
    return ranked[None] if ranked.ndim == 1 else ranked


def _n_relevant(ranked: np.ndarray, n_relevant) -> np.ndarray:
    if n_relevant is None:
        return ranked.sum(axis=1)
    return np.broadcast_to(np.asarray(n_relevant, dtype=np.int64), (len(ranked),))


def _relevant_positions(ranked: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query, 1-based rank, j) of every relevant item; j = its count among the query's relevant."""
    rows, cols = np.nonzero(ranked)
    starts = np.searchsorted(rows, np.arange(len(ranked)))
    j = np.arange(1, len(rows) + 1) - starts[rows]
    return rows, cols + 1, j


def average_precision(ranked: np.ndarray, n_relevant=None) -> np.ndarray:
    """AP per query over the full ranking, the query itself excluded.

    AP = (1 / R) * sum over relevant items of precision at that item's rank
       = (1 / R) * sum_j j / rank_j   (rank_j: 1-based rank of the j-th relevant item, R = n_relevant).
    With `n_relevant` larger than the relevant items in `ranked` (a truncated ranking), the missing
    ones contribute 0. NaN for queries with R == 0.
    """
    ranked = _as_2d(ranked)
    n_rel = _n_relevant(ranked, n_relevant)
    rows, rank, j = _relevant_positions(ranked)
    total = np.bincount(rows, weights=j / rank, minlength=len(ranked))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, total / np.maximum(n_rel, 1), np.nan)


def average_precision_from_ranks(relevant_ranks, n_relevant: int | None = None) -> float:
    """AP of one query from the sorted 1-based ranks of its relevant items (see `average_precision`).

    This is what `--dump-rankings` files carry, so a full-ranking AP can be recomputed exactly.
    """
    r = np.sort(np.asarray(relevant_ranks, dtype=np.float64))
    n = len(r) if n_relevant is None else n_relevant
    if n == 0:
        return float("nan")
    return float((np.arange(1, len(r) + 1) / r).sum() / n)


def precision_at_k(ranked: np.ndarray, k: int) -> np.ndarray:
    """Fraction of relevant items among the first k (the seed's PrecisionHits with k = 15).

    Always divided by k, also when fewer than k items are ranked (missing ranks count as misses).
    """
    ranked = _as_2d(ranked)
    return ranked[:, :k].sum(axis=1) / float(k)


def precision_curve(ranked: np.ndarray, max_k: int = 50) -> np.ndarray:
    """(n_queries, max_k) matrix of precision@k for k = 1..max_k."""
    ranked = _as_2d(ranked)[:, :max_k]
    hits = np.cumsum(ranked, axis=1, dtype=np.float64)
    if hits.shape[1] < max_k:  # fewer ranked items than max_k: the count stays, k keeps growing
        pad = np.repeat(hits[:, -1:] if hits.shape[1] else np.zeros((len(hits), 1)), max_k - hits.shape[1], 1)
        hits = np.concatenate([hits, pad], axis=1)
    return hits / np.arange(1, max_k + 1)


def recall_at_k(ranked: np.ndarray, k: int) -> np.ndarray:
    """Recall@k as in the In-shop / metric-learning benchmarks: 1.0 when at least one relevant
    item is in the first k, else 0.0 (a hit rate, not the fraction of relevant items found)."""
    ranked = _as_2d(ranked)
    return ranked[:, :k].any(axis=1).astype(np.float64)


def map_at_r(ranked: np.ndarray, n_relevant=None) -> np.ndarray:
    """MAP@R (Musgrave et al., 2020): AP truncated at R = n_relevant and divided by R.

    Rewards rankings whose first R items are all relevant; NaN when R == 0.
    """
    ranked = _as_2d(ranked)
    n_rel = _n_relevant(ranked, n_relevant)
    rows, rank, j = _relevant_positions(ranked)
    total = np.bincount(rows, weights=np.where(rank <= n_rel[rows], j / rank, 0.0), minlength=len(ranked))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, total / np.maximum(n_rel, 1), np.nan)


def average_precision_seed(scores: np.ndarray, relevant: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """The seed's AP: sklearn's `average_precision_score(relevant, scores)` per row.

    For side-by-side comparison with the seed's tables only: the seed scored the similarity column
    of the query against the whole database INCLUDING the query itself (relevant, score 1), which
    adds a free hit at rank 1. Tied scores form one threshold (sklearn's step-wise definition), so
    the result does not depend on the order of ties. NaN for rows without any relevant item.
    `order` may pass a precomputed `rank_order(scores)`.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float32))
    relevant = np.atleast_2d(np.asarray(relevant, dtype=bool))
    order = rank_order(scores) if order is None else np.atleast_2d(order)
    s = np.take_along_axis(scores, order, axis=1)
    rel = np.take_along_axis(relevant, order, axis=1)
    out = np.full(len(s), np.nan)
    for q in range(len(s)):  # one iteration per query; the work per query is vectorized
        neg = -s[q]  # ascending
        rel_neg = neg[rel[q]]
        if len(rel_neg) == 0:
            continue
        # At a relevant item's score v: precision of the threshold v = #relevant >= v / #items >= v.
        n_at = np.searchsorted(neg, rel_neg, side="right")
        tp_at = np.searchsorted(rel_neg, rel_neg, side="right")
        out[q] = float((tp_at / n_at).sum() / len(rel_neg))
    return out


def nanmean(values: np.ndarray) -> float:
    """Mean over defined values (NaN = query without relevant items); NaN if none is defined."""
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    return float(values[ok].mean()) if ok.any() else float("nan")
