"""PCA-whitening dimension search (the seed's coarse-to-fine sweep), scored on the validation split.

The whitening is fitted once at full rank on the train split; a candidate dimension n is the
first n columns of its projection (PCA is nested), so each candidate costs one ranking only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .protocols import RetrievalTask
from .runner import PRECISION_K, evaluate_task
from .variants import Whitening

log = logging.getLogger(__name__)

METRICS = {"map": "mAP", "p@15": "PrecisionHits"}


def coarse_grid(max_dim: int, start: int = 8) -> list[int]:
    """Powers of two from `start` up to max_dim, plus max_dim itself."""
    grid, n = [], start
    while n < max_dim:
        grid.append(n)
        n *= 2
    return sorted(set(grid + [max_dim]))


def coarse_to_fine(
    score: Callable[[int], float],
    max_dim: int,
    coarse: list[int] | None = None,
    points: int = 8,
    min_step: int = 1,
) -> tuple[int, float, dict[int, float]]:
    """Maximize score(n) over 1..max_dim: a coarse grid, then repeatedly a finer grid between the
    neighbours of the best n so far, until the step reaches `min_step`.

    Ties go to the smaller n (a smaller, faster index). Returns (best n, its score, all scores).
    """
    scores: dict[int, float] = {}

    def run(ns) -> None:
        for n in ns:
            n = int(min(max(1, n), max_dim))
            if n not in scores:
                scores[n] = float(score(n))
                log.debug("n_components %d: %.4f", n, scores[n])

    run(coarse or coarse_grid(max_dim))
    while True:
        best = min(scores, key=lambda n: (-scores[n], n))
        done = sorted(scores)
        i = done.index(best)
        lo = done[i - 1] if i > 0 else max(1, best // 2)
        hi = done[i + 1] if i + 1 < len(done) else best
        step = max(min_step, (hi - lo) // points)
        new = [n for n in range(lo, hi + 1, step) if n not in scores]
        if not new:
            break
        run(new)
    best = min(scores, key=lambda n: (-scores[n], n))
    return best, scores[best], scores


@dataclass
class PCASearch:
    n_components: int
    score: float
    metric: str
    scores: dict[int, float]
    eigvals: np.ndarray


def finetune_pca(
    task: RetrievalTask,
    metric: str = "map",
    whitening: Whitening | None = None,
    max_dim: int | None = None,
    min_step: int = 1,
) -> PCASearch:
    """Best n_components of the `normalized` variant on `task` (a validation-split task)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    key = METRICS[metric]
    whitening = whitening or Whitening.fit(task.fit)
    top = max_dim or whitening.max_components

    def score(n: int) -> float:
        return evaluate_task(task, "normalized", n, whitening, top_k=PRECISION_K, seed_ap=False).metrics[key]

    best, best_score, scores = coarse_to_fine(score, min(top, whitening.max_components), min_step=min_step)
    # 0 = no whitening (L2 only): pretrained ImageNet features often rank best unwhitened, and the
    # search must be able to say so instead of forcing some PCA dimension on the index.
    scores[0] = score(0)
    if scores[0] >= best_score:
        best, best_score = 0, scores[0]
    return PCASearch(best, best_score, metric, scores, whitening.eigvals)
