"""Score one feature variant on one RetrievalTask: the headline metrics plus the rankings behind them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from .. import rerank as rr
from ..gender import GenderPredictor
from .agreement import exact_recall_at_1, shopper_agreement
from .metrics import nanmean
from .protocols import RetrievalTask
from .ranking import RECALL_KS, Rankings, rank_queries
from .variants import DEFAULT_ALPHA, SEED_TOP_K_AQE, Whitening, apply_variant

log = logging.getLogger(__name__)

PRECISION_K = 15  # the seed's TOP_K_IMAGE: PrecisionHits = precision@15
DUMP_TOP_K = 100


@dataclass
class EvalResult:
    task: RetrievalTask
    variant: str
    features_size: int
    rankings: Rankings
    evaluated: np.ndarray  # bool per query: has at least one relevant database item
    metrics: dict
    seconds: float
    database_vectors: np.ndarray | None = None  # post-processed, for plots


def summarize(rankings: Rankings, evaluated: np.ndarray, database_size: int) -> dict:
    """Headline metrics over the queries that have at least one relevant database item."""
    r = rankings
    out = {
        "mAP": nanmean(r.ap[evaluated]),
        "PrecisionHits": float(r.precision_at(PRECISION_K)[evaluated].mean()) if evaluated.any() else float("nan"),
        **{f"R@{k}": float(r.recall[k][evaluated].mean()) if evaluated.any() else float("nan") for k in RECALL_KS},
        "mAP@R": nanmean(r.map_at_r[evaluated]),
        "queries": int(evaluated.sum()),
        "database": int(database_size),
        "skipped_queries": int((~evaluated).sum()),
    }
    if r.ap_seed is not None:
        out["mAP_seed"] = nanmean(r.ap_seed[evaluated])
    return out


def evaluate_task(
    task: RetrievalTask,
    variant: str = "normalized",
    n_components: int | None = None,
    whitening: Whitening | None = None,
    qe_k: int = SEED_TOP_K_AQE,
    alpha: float = DEFAULT_ALPHA,
    dba: bool = False,
    top_k: int = DUMP_TOP_K,
    seed_ap: bool | None = None,
    rerank: str = "none",
    vote_k: int = rr.DEFAULT_VOTE_K,
    vote_alpha: float = rr.DEFAULT_VOTE_ALPHA,
    gender_predictor: GenderPredictor | None = None,
) -> EvalResult:
    """Post-process features, rank the database for every query, and summarize.

    `whitening` (fitted on `task.fit` when not given) is reused across calls by the PCA search.
    Queries without any relevant database item are reported (`skipped_queries`) and left out of
    every mean, since no ranking can score on them. `rerank="category"` re-ranks every ranking
    category-first as the engine does (`imageretrieval.rerank`), from the database's articleTypes;
    "gender" and "category+gender" put the gender `gender_predictor` predicts for each query first.
    """
    t0 = time.perf_counter()
    codes = genders = None
    rerank = rr.check_rerank(rerank)
    if rr.reranks_category(rerank):
        if task.database_categories is None:
            raise ValueError(f"category re-ranking needs the catalog's articleTypes; the {task.protocol} "
                             "database has none")
        codes, _ = rr.encode_categories(task.database_categories)
    if rr.reranks_gender(rerank):
        if gender_predictor is None:
            raise ValueError("gender re-ranking needs the model's gender predictor: make one with "
                             "`imageretrieval finetune-rerank --gender`")
        if not task.database_attributes or "gender" not in task.database_attributes:
            raise ValueError(f"gender re-ranking needs the catalog's genders; the {task.protocol} database has none")
        genders = (np.asarray(task.database_attributes["gender"], object), gender_predictor, task.queries)
    if variant != "raw" and whitening is None:
        if task.fit is None or len(task.fit) < 2:
            raise ValueError("this variant needs whitening features (task.fit)")
        whitening = Whitening.fit(task.fit)
    q, d = apply_variant(variant, task.queries, task.database, whitening, n_components, qe_k, alpha,
                         task.exclude_rows, dba)
    if seed_ap is None:
        seed_ap = task.exclude_rows is not None
    rankings = rank_queries(q, d, task.query_labels, task.database_labels, task.exclude_rows,
                            top_k=top_k, seed_ap=seed_ap, category_codes=codes, vote_k=vote_k,
                            vote_alpha=vote_alpha, genders=genders)
    evaluated = rankings.n_relevant > 0
    if (~evaluated).any():
        log.info("%d of %d queries have no relevant item in the database: left out of the means",
                 int((~evaluated).sum()), len(evaluated))
    metrics = summarize(rankings, evaluated, len(d))
    if task.query_attributes and task.database_attributes:
        own = None if task.exclude_rows is None else np.asarray(task.exclude_rows)[evaluated]
        metrics.update(shopper_agreement(rankings.top_rows[evaluated],
                                         {k: np.asarray(v)[evaluated] for k, v in task.query_attributes.items()},
                                         task.database_attributes, PRECISION_K, own))
    if task.info.get("query_scale") is not None and task.exclude_rows is not None:  # re-rendered catalog products
        metrics["exact_R@1"] = exact_recall_at_1(q, d, task.exclude_rows)
    return EvalResult(task, variant, int(q.shape[1]), rankings, evaluated, metrics, time.perf_counter() - t0, d)


def per_class_precision(result: EvalResult, k: int = PRECISION_K) -> dict[str, float]:
    """Mean precision@k of the evaluated queries, per query label (articleType)."""
    labels = np.asarray(result.task.query_labels)[result.evaluated]
    values = result.rankings.precision_at(k)[result.evaluated]
    return {str(lab): float(values[labels == lab].mean()) for lab in sorted(set(labels.tolist()))}
