"""Reciprocal rank fusion: several rankings of the same items into one (Cormack et al., 2009)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RRF_K = 60


def reciprocal_rank_fusion(rankings: Sequence[np.ndarray], weights: Sequence[float], k: int = RRF_K,
                           limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(items, fused scores), best first: item score = sum of weight / (k + rank), ranks from 1.

    Ties keep the order of first appearance (the first ranking's order first). Items -1 are ignored.
    """
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        if weight == 0:
            continue
        for rank, item in enumerate(np.asarray(ranking).tolist(), start=1):
            if item < 0:
                continue
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    items = sorted(scores, key=lambda i: -scores[i])  # stable: first appearance breaks ties
    items = items[:limit] if limit is not None else items
    return np.array(items, dtype=np.int64), np.array([scores[i] for i in items], dtype=np.float32)
