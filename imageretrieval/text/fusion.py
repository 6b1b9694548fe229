"""Fusing rankings of the same items: by their scores (convex combination) or by their ranks (RRF,
Cormack et al., 2009)."""

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


def convex_fusion(lexical: np.ndarray, semantic: np.ndarray, lexical_share: float) -> np.ndarray:
    """Fused scores of candidates: share x BM25 / its max + (1 - share) x cosine min-max scaled over them.

    Scores, not ranks: an exact name (a far higher BM25 than near misses) keeps its lead, while equal
    BM25 scores (every product of a named type) are ordered by meaning.
    """
    lexical = np.asarray(lexical, np.float64)
    semantic = np.asarray(semantic, np.float64)
    lex = lexical / lexical.max() if len(lexical) and lexical.max() > 0 else np.zeros_like(lexical)
    span = semantic.max() - semantic.min() if len(semantic) else 0.0
    sem = (semantic - semantic.min()) / span if span > 0 else np.zeros_like(semantic)
    return (lexical_share * lex + (1 - lexical_share) * sem).astype(np.float32)
