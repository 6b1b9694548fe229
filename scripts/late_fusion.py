"""Late fusion of two or more zoo models on the catalog protocol: how much do their embeddings complement each other?

Each model's embeddings are L2-normalized and concatenated with weights sqrt(w_i) (the w_i sum to 1), so
the fused cosine is sum_i w_i * cos_i. The weights are chosen on the val split (600 seeded val queries
against the val split, the catalog protocol's recipe) over a 0.1 grid, then scored once on the test
split, so the test figure is not tuned on the test queries. `--rerank category` scores (and chooses)
with the engine's category-first re-ranking (imageretrieval/rerank.py). The chosen weights are printed as
an `imageretrieval fuse` command, which saves the fusion as one model of the zoo (same vectors).

    python scripts/late_fusion.py MODEL_A MODEL_B [MODEL_C ...] [--selection seed] [--rerank category]

The models' features come from the feature store (extracted on first use, like `evaluate`).
"""

import argparse
import copy
import itertools
import logging

import numpy as np

from imageretrieval.evaluation.protocols import RetrievalTask, catalog_task
from imageretrieval.evaluation.runner import evaluate_task
from imageretrieval.featurestore import concat_normalized
from imageretrieval.rerank import RERANKS
from imageretrieval.settings import Settings

log = logging.getLogger("late_fusion")
GRID_STEPS = 10  # weights in steps of 0.1
SHOWN = ("PrecisionHits", "mAP", "R@1")


def weight_grid(n_models: int, steps: int = GRID_STEPS) -> list[tuple[float, ...]]:
    """Every weight vector of n_models non-negative multiples of 1/steps that sum to 1."""
    return [tuple(round(c / steps, 4) for c in (*cut, steps - sum(cut)))
            for cut in itertools.product(range(steps + 1), repeat=n_models - 1) if sum(cut) <= steps]


def fuse(tasks: list[RetrievalTask], weights: tuple[float, ...]) -> RetrievalTask:
    """The first task with every vector replaced by the weighted concatenation of all tasks' vectors."""
    first = tasks[0]
    for other in tasks[1:]:
        if not (np.array_equal(first.query_ids, other.query_ids) and np.array_equal(first.database_ids,
                                                                                     other.database_ids)):
            raise ValueError("the models' tasks have different queries or databases (undecodable images?)")
    out = copy.copy(first)  # the vectors of the fused model (`imageretrieval fuse`), from the same function
    out.queries = concat_normalized([t.queries for t in tasks], list(weights))
    out.database = concat_normalized([t.database for t in tasks], list(weights))
    return out


def scores(task: RetrievalTask, rerank: str) -> dict[str, float]:
    metrics = evaluate_task(task, variant="raw", rerank=rerank).metrics
    return {k: round(float(metrics[k]), 4) for k in SHOWN}


def main(args: argparse.Namespace) -> None:
    settings = Settings()
    tasks = {split: [catalog_task(settings, m, selection=args.selection, split=split, database="split",
                                  with_fit=False) for m in args.models]
             for split in ("val", "test")}
    val = {w: scores(fuse(tasks["val"], w), args.rerank) for w in weight_grid(len(args.models))}
    for w, s in val.items():
        log.info("val  weights %s: %s", w, s)
    best = max(val, key=lambda w: (val[w]["PrecisionHits"], val[w]["mAP"]))
    log.info("chosen on val: weights %s for %s (rerank %s)", best, ", ".join(args.models), args.rerank)
    singles = [tuple(float(i == j) for j in range(len(args.models))) for i in range(len(args.models))]
    for w in (*singles, best):
        log.info("test weights %s: %s", w, scores(fuse(tasks["test"], w), args.rerank))
    kept = [(m, w) for m, w in zip(args.models, best, strict=True) if w > 0]
    if len(kept) > 1:
        log.info("as one zoo model: imageretrieval fuse --name NAME %s --weights %s",
                 " ".join(m for m, _ in kept), ",".join(f"{w:g}" for _, w in kept))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="two or more zoo models")
    parser.add_argument("--selection", default="seed", help="catalog selection (default: seed)")
    parser.add_argument("--rerank", choices=RERANKS, default="none", help="score with category-first re-ranking")
    args = parser.parse_args()
    if len(args.models) < 2:
        parser.error("give two or more models to fuse")
    main(args)
