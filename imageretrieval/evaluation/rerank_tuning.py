"""Choosing the category-first re-ranking's vote on the val split: how many neighbours vote, and how
strongly a vote is weighted by its similarity (max(cos, 0) ** alpha; 0 = a plain majority)."""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from ..rerank import DEFAULT_VOTE_ALPHA, DEFAULT_VOTE_K, encode_categories, vote_on_rankings
from ..whitening import l2_normalize
from .metrics import rank_order
from .protocols import RetrievalTask
from .runner import evaluate_task

VOTE_KS = (1, 5, 10, 15, 25, 50)
ALPHAS = (0.0, 1.0, 3.0, 10.0)
SHOWN = ("PrecisionHits", "mAP", "R@1")


@dataclass
class VoteSearch:
    vote_k: int
    vote_alpha: float
    plain: dict[str, float]  # no re-ranking, for comparison
    scores: dict[tuple[int, float], dict[str, float]]


def vote_scores(task: RetrievalTask, rerank: str = "category", vote_k: int = 15,
                vote_alpha: float = 3.0) -> dict[str, float]:
    metrics = evaluate_task(task, variant="raw", rerank=rerank, vote_k=vote_k, vote_alpha=vote_alpha).metrics
    return {k: round(float(metrics[k]), 4) for k in SHOWN}


def tune_vote(task: RetrievalTask, vote_ks=VOTE_KS, alphas=ALPHAS) -> VoteSearch:
    """Every (vote k, alpha) scored on `task` (the val split); the best by P@15, then mAP.

    Among equals the library's default vote is kept (else the first in grid order), so a tie never
    moves a model off the vote its figures were measured with.
    """
    scores = {(k, a): vote_scores(task, "category", k, a) for k in vote_ks for a in alphas}
    default = (DEFAULT_VOTE_K, DEFAULT_VOTE_ALPHA)
    best = max(scores, key=lambda ka: (scores[ka]["PrecisionHits"], scores[ka]["mAP"], ka == default))
    return VoteSearch(best[0], best[1], vote_scores(task, "none"), scores)


def vote_confusions(task: RetrievalTask, vote_k: int, vote_alpha: float) -> collections.Counter:
    """(true type, voted type) -> count over the queries whose type the vote gets wrong."""
    sims = l2_normalize(task.queries) @ l2_normalize(task.database).T
    sims[np.arange(len(sims)), task.exclude_rows] = -np.inf  # the query itself never votes
    codes, names = encode_categories(task.database_categories)
    order = rank_order(sims)
    voted = vote_on_rankings(order, np.take_along_axis(sims, order[:, :vote_k], axis=1), codes, vote_k, vote_alpha)
    truth = codes[task.exclude_rows]
    return collections.Counter((names[t], names[v]) for t, v in zip(truth, voted, strict=True) if t != v)
