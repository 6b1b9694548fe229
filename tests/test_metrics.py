"""Metrics on hand-computed rankings: AP, P@k, R@k, MAP@R, ties, no-relevant queries, seed AP."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from imageretrieval.evaluation import metrics as M
from imageretrieval.evaluation.ranking import move_to_end, rank_queries

R = np.array([[1, 0, 1, 0, 0]], dtype=bool)  # relevant at ranks 1 and 3


def test_average_precision_hand_computed():
    assert M.average_precision(R)[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    # a third relevant item beyond the ranking counts as never retrieved
    assert M.average_precision(R, n_relevant=3)[0] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert M.average_precision(np.array([[0, 1, 0, 1]]))[0] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert M.average_precision(np.array([[1, 1, 1]]))[0] == pytest.approx(1.0)
    assert M.average_precision_from_ranks([3, 1]) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert M.average_precision_from_ranks([1, 3], n_relevant=3) == pytest.approx((1 + 2 / 3) / 3)


def test_query_without_relevant_items_is_nan_and_skipped_by_the_mean():
    ranked = np.array([[0, 0, 0], [1, 0, 0]], dtype=bool)
    ap = M.average_precision(ranked)
    assert math.isnan(ap[0]) and ap[1] == 1.0
    assert M.nanmean(ap) == 1.0
    assert math.isnan(M.map_at_r(ranked)[0])
    assert M.precision_at_k(ranked, 2).tolist() == [0.0, 0.5]
    assert M.recall_at_k(ranked, 3).tolist() == [0.0, 1.0]
    assert math.isnan(M.nanmean(np.array([np.nan])))


def test_precision_recall_and_map_at_r():
    assert M.precision_at_k(R, 1)[0] == 1.0
    assert M.precision_at_k(R, 3)[0] == pytest.approx(2 / 3)
    assert M.precision_at_k(R, 15)[0] == pytest.approx(2 / 15)  # always divided by k
    late = np.array([[0, 0, 1, 0]], dtype=bool)
    assert M.recall_at_k(late, 2)[0] == 0.0 and M.recall_at_k(late, 3)[0] == 1.0
    assert M.map_at_r(R)[0] == pytest.approx(1 / 2)  # R = 2: only rank 1 is within the first R
    assert M.map_at_r(np.array([[1, 1, 0, 1]]))[0] == pytest.approx(2 / 3)
    curve = M.precision_curve(R, 6)
    assert curve[0].tolist() == pytest.approx([1, 1 / 2, 2 / 3, 2 / 4, 2 / 5, 2 / 6])


def test_rank_order_is_deterministic_on_ties():
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.5, -0.0, 0.0]], dtype=np.float32)
    assert M.rank_order(scores)[0].tolist() == [1, 0, 2, 4, 3, 5, 6]  # -0.0 ties with 0.0
    rng = np.random.default_rng(0)
    s = np.round(rng.standard_normal((7, 300)), 1).astype(np.float32)  # many ties
    assert (M.rank_order(s) == np.argsort(-s, axis=1, kind="stable")).all()


def test_ties_broken_by_database_row_in_rankings():
    db = np.array([[1.0, 0], [0.6, 0.8], [0.6, 0.8], [0, 1.0]], dtype=np.float32)
    q = np.array([[1.0, 0]], dtype=np.float32)
    # rows 1 and 2 tie (0.6): row 1 first. Relevant = rows 2 and 3 -> ranks 3 and 4.
    r = rank_queries(q, db, ["a"], ["b", "b", "a", "a"])
    assert r.top_rows[0].tolist() == [0, 1, 2, 3]
    assert r.relevant_ranks[0].tolist() == [3, 4]
    assert r.ap[0] == pytest.approx((1 / 3 + 2 / 4) / 2)
    r = rank_queries(q, db, ["a"], ["b", "a", "b", "a"])
    assert r.ap[0] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_query_excluded_from_its_own_ranking():
    db = np.eye(4, dtype=np.float32) + 0.1
    labels = ["x", "x", "y", "x"]
    r = rank_queries(db[:1], db, labels[:1], labels, exclude_rows=np.array([0]), top_k=10)
    assert 0 not in r.top_rows[0].tolist() and r.top_rows.shape[1] == 3
    assert r.n_relevant[0] == 2  # rows 1 and 3, not the query itself
    assert r.top_rows[0].tolist() == [1, 2, 3]  # all tie: by row
    assert r.ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_move_to_end():
    order = np.array([[3, 0, 2, 1], [0, 1, 2, 3]])
    assert move_to_end(order, np.array([0, -1])).tolist() == [[3, 2, 1, 0], [0, 1, 2, 3]]


def test_seed_ap_matches_sklearn_including_ties():
    # hand-computed: thresholds 1.0 (P=1, R=1/2) and 0.5 (P=2/3, R=1) -> 1/2 * 1 + 1/2 * 2/3
    assert M.average_precision_seed(np.array([1.0, 0.5, 0.5]), np.array([1, 0, 1]))[0] == pytest.approx(5 / 6)
    assert M.average_precision_seed(np.array([1.0, 0.5, 0.5]), np.array([1, 1, 0]))[0] == pytest.approx(5 / 6)
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, size=(20, 50)).astype(np.float32)
    rel = rng.random((20, 50)) < 0.3
    rel[:, 0] = True
    expected = [average_precision_score(rel[i], scores[i]) for i in range(20)]
    assert M.average_precision_seed(scores, rel) == pytest.approx(expected)
    assert math.isnan(M.average_precision_seed(np.array([0.3, 0.2]), np.array([0, 0]))[0])


def test_seed_ap_counts_the_query_itself():
    # The seed scored the column including the query (score 1, relevant): a free hit at rank 1.
    db = np.array([[1.0, 0], [0, 1.0], [0.8, 0.6]], dtype=np.float32)
    r = rank_queries(db[:1], db, ["a"], ["a", "b", "a"], exclude_rows=np.array([0]), seed_ap=True)
    assert r.ap[0] == pytest.approx(1.0)  # excluded: the only other relevant item is first
    assert r.ap_seed[0] == pytest.approx(1.0)
    r = rank_queries(db[:1], db, ["a"], ["a", "a", "b"], exclude_rows=np.array([0]), seed_ap=True)
    assert r.ap[0] == pytest.approx(1 / 2)  # relevant row 1 at rank 2
    assert r.ap_seed[0] == pytest.approx((1 + 2 / 3) / 2)  # query at rank 1, row 1 at rank 3
