"""Exhaustive, vectorized ranking of a database for a batch of queries, scored in one pass.

Similarities are one matrix product per chunk of queries (no Python loop over the database); the
full ranking of every query is sorted once (`metrics.rank_order`: score desc, row asc) and every
metric is read from it. A query that is itself a database item (`exclude_rows`) is removed from its
own ranking.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import rerank as rr
from ..gender import GenderPredictor, gender_matches
from . import metrics

RECALL_KS = (1, 10, 20)


@dataclass
class Rankings:
    """Per-query results of `rank_queries` (row q = query q)."""

    top_rows: np.ndarray  # (nq, top_k) database rows, best first
    top_scores: np.ndarray  # (nq, top_k)
    n_relevant: np.ndarray  # (nq,) relevant database items, query excluded
    ap: np.ndarray  # (nq,) full-ranking AP, NaN without relevant items
    map_at_r: np.ndarray  # (nq,)
    precision: np.ndarray  # (nq, max_k) precision@1..max_k
    recall: dict[int, np.ndarray]  # k -> (nq,) hit@k
    relevant_ranks: list[np.ndarray] = field(default_factory=list)  # 1-based ranks of relevant items
    ap_seed: np.ndarray | None = None  # (nq,) sklearn AP with the query included (seed-compatible)

    def precision_at(self, k: int) -> np.ndarray:
        return self.precision[:, k - 1]


def similarity(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Inner products (cosine for L2-normalized rows), float32."""
    return np.asarray(queries, dtype=np.float32) @ np.asarray(database, dtype=np.float32).T


def encode_labels(query_labels, database_labels) -> tuple[np.ndarray, np.ndarray]:
    """Labels of any type -> shared int64 codes, so relevance is a fast integer comparison."""
    q, d = np.asarray(query_labels), np.asarray(database_labels)
    _, codes = np.unique(np.concatenate([q.astype(str), d.astype(str)]), return_inverse=True)
    return codes[: len(q)].astype(np.int64), codes[len(q):].astype(np.int64)


def move_to_end(order: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Rankings with items[q] (when >= 0) moved from its place to the end of row q."""
    rows = np.flatnonzero(items >= 0)
    if len(rows) == 0:
        return order
    out = order.copy()
    sub = order[rows]
    keep = sub != items[rows, None]
    out[rows, :-1] = sub[keep].reshape(len(rows), -1)
    out[rows, -1] = items[rows]
    return out


def rank_queries(
    queries: np.ndarray,
    database: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    exclude_rows: np.ndarray | None = None,
    top_k: int = 100,
    max_k: int = 50,
    seed_ap: bool = False,
    chunk_elements: int = 4_000_000,
    category_codes: np.ndarray | None = None,
    vote_k: int = rr.DEFAULT_VOTE_K,
    vote_alpha: float = rr.DEFAULT_VOTE_ALPHA,
    rerank_pool: int | None = rr.DEFAULT_POOL,
    genders: tuple[np.ndarray, GenderPredictor, np.ndarray] | None = None,
) -> Rankings:
    """Rank the whole database for every query; relevance = equal labels.

    exclude_rows: per query, the database row of the query itself (or -1): it is removed from that
    query's ranking and never counts as relevant. With `seed_ap`, also computes the seed-compatible
    AP (query included, see `metrics.average_precision_seed`). With `category_codes` (one per
    database row), every ranking is re-ranked category-first (`rerank.vote_on_rankings`, then
    `rerank.matches_first`), the query itself left out of the vote; `ap_seed` stays the plain ranking's.
    """
    queries = np.asarray(queries, dtype=np.float32)
    database = np.asarray(database, dtype=np.float32)
    q_lab, d_lab = encode_labels(query_labels, database_labels)
    nq, nd = len(queries), len(database)
    exclude = np.full(nq, -1, np.int64) if exclude_rows is None else np.asarray(exclude_rows, np.int64)
    top_k = min(top_k, nd - int((exclude >= 0).any()))
    step = max(1, chunk_elements // max(1, nd))
    parts: dict[str, list] = {k: [] for k in ("rows", "scores", "nrel", "ap", "mapr", "prec", "seed")}
    recall: dict[int, list] = {k: [] for k in RECALL_KS}
    ranks: list[np.ndarray] = []
    for lo in range(0, nq, step):
        hi = min(nq, lo + step)
        s = similarity(queries[lo:hi], database)
        rel_all = d_lab[None, :] == q_lab[lo:hi, None]
        ex = exclude[lo:hi]
        order = metrics.rank_order(s)
        if seed_ap:
            parts["seed"].append(metrics.average_precision_seed(s, rel_all, order))
        order = move_to_end(order, ex)  # the query itself: ranked last, never relevant
        has_ex = np.flatnonzero(ex >= 0)
        s[has_ex, ex[has_ex]] = -np.inf
        rel_all[has_ex, ex[has_ex]] = False
        if category_codes is not None or genders is not None:
            pool = nd if rerank_pool is None else min(int(rerank_pool), nd)
            voters = order[:, :max(1, min(vote_k, nd))]  # the nearest rows: they vote for the type, and their
            matches = []  # genders weigh in the gender's prediction
            if category_codes is not None:
                voted = rr.vote_on_rankings(order, np.take_along_axis(s, voters, axis=1), category_codes, vote_k,
                                            vote_alpha)
                matches.append(rr.category_matches(order[:, :pool], category_codes, voted))
            if genders is not None:
                row_genders, predictor, raw = genders
                row_genders = np.asarray(row_genders, object)
                predicted = predictor.predict(raw[lo:hi], row_genders[voters])
                matches.append(gender_matches(row_genders[order[:, :pool]], predicted))
            order = rr.matches_first(order, *matches, pool=pool)
            order = move_to_end(order, ex)  # the query itself stays last even when its type comes first
        ranked = np.take_along_axis(rel_all, order, axis=1)
        n_rel = ranked.sum(axis=1)
        parts["rows"].append(order[:, :top_k])
        parts["scores"].append(np.take_along_axis(s, order[:, :top_k], axis=1))
        parts["nrel"].append(n_rel)
        parts["ap"].append(metrics.average_precision(ranked, n_rel))
        parts["mapr"].append(metrics.map_at_r(ranked, n_rel))
        parts["prec"].append(metrics.precision_curve(ranked, max_k))
        for k in RECALL_KS:
            recall[k].append(metrics.recall_at_k(ranked, k))
        ranks.extend(np.flatnonzero(row).astype(np.int32) + 1 for row in ranked)
    cat = {k: (np.concatenate(v) if v else None) for k, v in parts.items()}
    return Rankings(
        top_rows=cat["rows"] if cat["rows"] is not None else np.zeros((0, top_k), np.int64),
        top_scores=cat["scores"] if cat["scores"] is not None else np.zeros((0, top_k), np.float32),
        n_relevant=cat["nrel"] if cat["nrel"] is not None else np.zeros(0, np.int64),
        ap=cat["ap"] if cat["ap"] is not None else np.zeros(0),
        map_at_r=cat["mapr"] if cat["mapr"] is not None else np.zeros(0),
        precision=cat["prec"] if cat["prec"] is not None else np.zeros((0, max_k)),
        recall={k: np.concatenate(v) if v else np.zeros(0) for k, v in recall.items()},
        relevant_ranks=ranks,
        ap_seed=cat["seed"] if seed_ap else None,
    )
