"""Choosing late-fusion weights on the val split, scoring them once on the test split.

The models' L2-normalized embeddings are concatenated with weights sqrt(w_i) (the w_i sum to 1),
so the fused cosine is sum_i w_i cos_i: the vectors `imageretrieval fuse` gives. Every weight
vector on a grid is scored on the catalog protocol's val split (seeded val queries against the val
split); the best (P@15, then mAP) is scored on the test split, beside each model alone, so the test
figure is never tuned on the test queries.
"""

from __future__ import annotations

import copy
import itertools
import logging

import numpy as np

from ..featurestore import concat_normalized
from ..settings import Settings
from .protocols import RetrievalTask, catalog_task
from .runner import evaluate_task

log = logging.getLogger(__name__)

GRID_STEPS = 10  # weights in steps of 0.1
SHOWN = ("PrecisionHits", "mAP", "R@1")


def weight_grid(n_models: int, steps: int = GRID_STEPS) -> list[tuple[float, ...]]:
    """Every weight vector of `n_models` non-negative multiples of 1/steps that sum to 1."""
    return [tuple(round(c / steps, 4) for c in (*cut, steps - sum(cut)))
            for cut in itertools.product(range(steps + 1), repeat=n_models - 1) if sum(cut) <= steps]


def fuse_tasks(tasks: list[RetrievalTask], weights: tuple[float, ...]) -> RetrievalTask:
    """The first task with every vector replaced by the weighted concatenation of all tasks' vectors."""
    first = tasks[0]
    for other in tasks[1:]:
        if not (np.array_equal(first.query_ids, other.query_ids)
                and np.array_equal(first.database_ids, other.database_ids)):
            raise ValueError("the models' tasks have different queries or databases (undecodable images?)")
    out = copy.copy(first)
    out.queries = concat_normalized([t.queries for t in tasks], list(weights))
    out.database = concat_normalized([t.database for t in tasks], list(weights))
    return out


def task_scores(task: RetrievalTask, rerank: str = "none") -> dict[str, float]:
    metrics = evaluate_task(task, variant="raw", rerank=rerank).metrics
    return {k: round(float(metrics[k]), 4) for k in SHOWN}


def choose_fusion_weights(settings: Settings, models: list[str], selection: str = "seed", rerank: str = "none",
                          steps: int = GRID_STEPS) -> dict:
    """{"val": {weights: scores}, "chosen": weights, "test": {weights: scores}} for the models' fusion.

    The test split scores each model alone and the chosen weights, once.
    """
    if len(models) < 2:
        raise ValueError("give two or more models to fuse")
    tasks = {split: [catalog_task(settings, m, selection=selection, split=split, database="split", with_fit=False)
                     for m in models] for split in ("val", "test")}
    val = {w: task_scores(fuse_tasks(tasks["val"], w), rerank) for w in weight_grid(len(models), steps)}
    chosen = max(val, key=lambda w: (val[w]["PrecisionHits"], val[w]["mAP"]))
    log.info("chosen on val: weights %s for %s (rerank %s): %s", chosen, ", ".join(models), rerank, val[chosen])
    singles = [tuple(float(i == j) for j in range(len(models))) for i in range(len(models))]
    test = {w: task_scores(fuse_tasks(tasks["test"], w), rerank) for w in dict.fromkeys([*singles, chosen])}
    return {"val": val, "chosen": chosen, "test": test}
