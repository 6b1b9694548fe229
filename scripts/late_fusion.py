"""Late fusion of two zoo models on the catalog protocol: how much do their embeddings complement each other?

Each model's embeddings are L2-normalized and concatenated with weights sqrt(w) and sqrt(1 - w), so
the fused cosine is w * cos_A + (1 - w) * cos_B. The weight is chosen on the val split (600 seeded
val queries against the val split, the catalog protocol's recipe) and then scored once on the test
split, so the test figure is not tuned on the test queries.

    python scripts/late_fusion.py MODEL_A MODEL_B [--selection seed]

Both models' features come from the feature store (extracted on first use, like `evaluate`).
"""

import argparse
import copy
import logging

import numpy as np

from imageretrieval.evaluation.protocols import RetrievalTask, catalog_task
from imageretrieval.evaluation.runner import evaluate_task
from imageretrieval.settings import Settings
from imageretrieval.whitening import l2_normalize

log = logging.getLogger("late_fusion")
WEIGHTS = np.round(np.arange(0.0, 1.01, 0.1), 2)
SHOWN = ("PrecisionHits", "mAP", "R@1")


def fuse(a: RetrievalTask, b: RetrievalTask, w: float) -> RetrievalTask:
    """Task `a` with every vector replaced by the weighted concatenation of a's and b's."""
    if not (np.array_equal(a.query_ids, b.query_ids) and np.array_equal(a.database_ids, b.database_ids)):
        raise ValueError("the two models' tasks have different queries or databases (undecodable images?)")
    out = copy.copy(a)
    out.queries = np.concatenate([np.sqrt(w) * l2_normalize(a.queries), np.sqrt(1 - w) * l2_normalize(b.queries)], 1)
    out.database = np.concatenate([np.sqrt(w) * l2_normalize(a.database), np.sqrt(1 - w) * l2_normalize(b.database)], 1)
    return out


def scores(task: RetrievalTask) -> dict[str, float]:
    metrics = evaluate_task(task, variant="raw").metrics
    return {k: round(float(metrics[k]), 4) for k in SHOWN}


def main(args: argparse.Namespace) -> None:
    settings = Settings()
    tasks = {split: [catalog_task(settings, m, selection=args.selection, split=split, database="split",
                                  with_fit=False) for m in (args.model_a, args.model_b)]
             for split in ("val", "test")}
    val = {w: scores(fuse(*tasks["val"], w)) for w in WEIGHTS}
    for w, s in val.items():
        log.info("val  w(%s) = %.1f: %s", args.model_a, w, s)
    best = max(WEIGHTS, key=lambda w: (val[w]["PrecisionHits"], val[w]["mAP"]))
    log.info("chosen on val: w = %.1f", best)
    for w in (0.0, best, 1.0):
        log.info("test w(%s) = %.1f: %s", args.model_a, w, scores(fuse(*tasks["test"], w)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_a")
    parser.add_argument("model_b")
    parser.add_argument("--selection", default="seed", help="catalog selection (default: seed)")
    main(parser.parse_args())
