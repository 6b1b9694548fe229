"""Category-first re-ranking: predict a query's articleType from its nearest catalog neighbours, then
show the products of that type first.

A shopper who photographs a shirt wants shirts; the nearest neighbours by appearance alone mix in
look-alike types (tops among t-shirts, trousers among jeans). A vote of the top neighbours'
types, each weighted by max(similarity, 0) ** alpha like alpha-QE, predicts the type more reliably
than the single nearest neighbour, and a *stable* partition of the top `pool` candidates puts that
type first while keeping the visual order within each part. The types come from the catalog's
metadata (styles.csv), never from the query. Large-scale visual search systems do the same with a
category predictor in front of the index (Zhang et al., "Visual Search at Alibaba", KDD 2018).

"category+gender" then puts the predicted gender first within each part (`gender.py`: the neighbours'
genders alone cannot predict it on photos, a classifier on the query vector can); "gender" alone does
only that.
"""

from __future__ import annotations

import numpy as np

RERANKS = ("none", "category", "gender", "category+gender")
DEFAULT_VOTE_K = 15
DEFAULT_VOTE_ALPHA = 3.0
DEFAULT_POOL = 100
NO_CATEGORY = -1


def reranks_category(rerank: str) -> bool:
    """Whether the re-ranking puts the voted articleType first."""
    return rerank in ("category", "category+gender")


def reranks_gender(rerank: str) -> bool:
    """Whether the re-ranking puts the predicted gender first (after the type: see `matches_first`)."""
    return rerank in ("gender", "category+gender")


def check_rerank(rerank: str | None) -> str:
    """The re-ranking name, `none` for None; a ValueError naming the choices for anything else."""
    name = rerank or "none"
    if name not in RERANKS:
        raise ValueError(f"unknown rerank {rerank!r}; choose one of {', '.join(RERANKS)}")
    return name


def vote_category(neighbour_codes: np.ndarray, neighbour_scores: np.ndarray, alpha: float = DEFAULT_VOTE_ALPHA
                  ) -> np.ndarray:
    """Winning category code per query from its ranked neighbours' codes, weighted by max(s, 0) ** alpha.

    neighbour_codes: (n_queries, k) int codes, best neighbour first; NO_CATEGORY marks a missing
    neighbour or one without a category, which does not vote. alpha = 0 is a plain majority vote.
    Ties go to the category of the best-ranked neighbour among the tied ones, so a vote of equals is
    the nearest neighbour's type. A query with no voter gets NO_CATEGORY.
    """
    codes = np.atleast_2d(np.asarray(neighbour_codes, dtype=np.int64))
    scores = np.atleast_2d(np.asarray(neighbour_scores, dtype=np.float64))
    if codes.shape != scores.shape:
        raise ValueError(f"codes {codes.shape} and scores {scores.shape} differ in shape")
    weights = np.ones_like(scores) if alpha == 0 else np.maximum(scores, 0.0) ** alpha
    out = np.full(len(codes), NO_CATEGORY, dtype=np.int64)
    for q, (row, w) in enumerate(zip(codes, weights, strict=True)):
        totals: dict[int, float] = {}
        for code, weight in zip(row.tolist(), w.tolist(), strict=True):
            if code != NO_CATEGORY:
                totals[code] = totals.get(code, 0.0) + weight
        if totals:
            best = max(totals.values())
            out[q] = next(c for c in row.tolist() if c != NO_CATEGORY and totals[c] == best)
    return out


def category_matches(head: np.ndarray, row_codes: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(n_queries, n) whether each ranked row (-1 = empty slot) has its query's predicted category."""
    codes = np.where(head >= 0, np.asarray(row_codes)[np.maximum(head, 0)], NO_CATEGORY)
    predicted = np.asarray(predicted, dtype=np.int64)[:, None]
    return (codes == predicted) & (predicted != NO_CATEGORY)


def matches_first(order: np.ndarray, *matches: np.ndarray, pool: int | None = DEFAULT_POOL) -> np.ndarray:
    """Rankings with the items that match moved ahead within each query's first `pool` items.

    `matches`: (n_queries, min(pool, n)) boolean arrays over those items, the first the most important:
    with two, items matching both come first, then the first only, then the second only, then the
    rest. The partition is stable (the visual order is kept within each part); items past the pool
    keep their place (pool None: the whole ranking).
    """
    order = np.atleast_2d(np.asarray(order))
    n = order.shape[1] if pool is None else min(int(pool), order.shape[1])
    key = np.zeros((order.shape[0], n), np.int64)
    for m in matches:
        key = 2 * key + ~np.asarray(m, dtype=bool)
    out = order.copy()
    out[:, :n] = np.take_along_axis(order[:, :n], np.argsort(key, axis=1, kind="stable"), axis=1)
    return out


def vote_on_rankings(order: np.ndarray, scores: np.ndarray, row_codes: np.ndarray, vote_k: int = DEFAULT_VOTE_K,
                     alpha: float = DEFAULT_VOTE_ALPHA) -> np.ndarray:
    """The voted category code per query of rankings `order` with their `scores` (scores[q, i] is the
    similarity of order[q, i]; the top `vote_k` vote, see `vote_category`)."""
    order = np.atleast_2d(np.asarray(order))
    k = max(1, min(int(vote_k), order.shape[1]))
    top = order[:, :k]
    top_scores = np.asarray(np.atleast_2d(scores)[:, :k], dtype=np.float64)
    voters = (top >= 0) & np.isfinite(top_scores)  # an excluded item (score -inf) does not vote
    codes = np.where(voters, np.asarray(row_codes)[np.maximum(top, 0)], NO_CATEGORY)
    return vote_category(codes, np.where(voters, top_scores, 0.0), alpha)


def encode_categories(values) -> tuple[np.ndarray, list[str]]:
    """Category strings -> (int codes, the sorted names behind them); empty/None values -> NO_CATEGORY."""
    strings = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]
    names = sorted({s for s in strings if s})
    index = {name: i for i, name in enumerate(names)}
    return np.array([index.get(s, NO_CATEGORY) for s in strings], dtype=np.int64), names
