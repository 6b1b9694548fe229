"""Category-first re-ranking: hand-computed votes and partitions, and its effect on the metrics."""

from __future__ import annotations

import numpy as np
import pytest

from imageretrieval.evaluation.protocols import RetrievalTask
from imageretrieval.evaluation.ranking import rank_queries
from imageretrieval.evaluation.runner import evaluate_task
from imageretrieval.rerank import (
    NO_CATEGORY,
    category_matches,
    check_rerank,
    encode_categories,
    matches_first,
    vote_category,
    vote_on_rankings,
)


def test_vote_weights_similarity_by_alpha():
    codes = [[0, 1, 1]]
    scores = [[0.9, 0.5, 0.5]]
    assert vote_category(codes, scores, alpha=0).tolist() == [1]  # two votes beat one
    assert vote_category(codes, scores, alpha=3).tolist() == [0]  # 0.729 beats 0.125 + 0.125
    assert vote_category([[2, 0]], [[-0.3, -0.5]], alpha=3).tolist() == [2]  # no weight: nearest wins the tie


def test_vote_ties_go_to_the_best_ranked_and_missing_voters_are_skipped():
    assert vote_category([[3, 1, 1, 3]], [[1, 1, 1, 1]], alpha=0).tolist() == [3]
    assert vote_category([[NO_CATEGORY, 4, NO_CATEGORY]], [[1.0, 0.2, 0.9]], alpha=0).tolist() == [4]
    assert vote_category([[NO_CATEGORY, NO_CATEGORY]], [[1.0, 1.0]]).tolist() == [NO_CATEGORY]
    with pytest.raises(ValueError, match="shape"):
        vote_category([[1, 2]], [[1.0]])


def _category_first(order: np.ndarray, row_codes: np.ndarray, predicted: np.ndarray, pool: int | None = None):
    """The predicted category first within the pool, as the engine and the evaluation order it."""
    n = order.shape[1] if pool is None else min(pool, order.shape[1])
    return matches_first(order, category_matches(order[:, :n], row_codes, predicted), pool=n)


def test_category_first_is_a_stable_partition_inside_the_pool():
    row_codes = np.array([0, 1, 0, 1, 1, 0])
    order = np.array([[1, 0, 3, 2, 4, 5]])
    assert _category_first(order, row_codes, np.array([0]), pool=None).tolist() == [[0, 2, 5, 1, 3, 4]]
    assert _category_first(order, row_codes, np.array([0]), pool=3).tolist() == [[0, 1, 3, 2, 4, 5]]
    assert _category_first(order, row_codes, np.array([NO_CATEGORY]), pool=100).tolist() == order.tolist()
    with_empty = np.array([[1, -1, 0]])  # an empty slot stays behind
    assert _category_first(with_empty, row_codes, np.array([0]), pool=None).tolist() == [[0, 1, -1]]


def test_the_vote_then_the_partition():
    row_codes = np.array([0, 1, 1, 0, 2])
    order = np.array([[0, 1, 2, 3, 4], [4, 3, 0, 1, 2]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.9, -np.inf, 0.1, 0.05, 0.0]])
    predicted = vote_on_rankings(order, scores, row_codes, vote_k=3, alpha=0)
    out = _category_first(order, row_codes, predicted, pool=100)
    assert predicted.tolist() == [1, 2]  # row 2: the excluded item (-inf) does not vote; 2 has 1 vote of 2
    assert out.tolist() == [[1, 2, 0, 3, 4], [4, 3, 0, 1, 2]]


def test_encode_categories_and_check_rerank():
    codes, names = encode_categories(["Shirts", None, "Jeans", "", "Shirts", float("nan")])
    assert names == ["Jeans", "Shirts"] and codes.tolist() == [1, NO_CATEGORY, 0, NO_CATEGORY, 1, NO_CATEGORY]
    assert check_rerank(None) == "none" and check_rerank("category") == "category"
    with pytest.raises(ValueError, match="none, category"):
        check_rerank("colour")


def _task(categories: np.ndarray | None) -> RetrievalTask:
    """One query along x; database rows by decreasing similarity: A, B, A, A, B (labels = categories)."""
    db = np.array([[1.0, 0.0], [0.95, 0.31], [0.9, 0.44], [0.8, 0.6], [0.0, 1.0]], np.float32)
    labels = np.array(["B", "A", "A", "B", "A"])
    return RetrievalTask("catalog", np.array([[1.0, 0.0]], np.float32), db, np.array([9]), np.arange(5),
                         np.array(["A"]), labels, database_categories=categories)


def test_category_rerank_in_the_evaluation_hand_computed():
    task = _task(np.array(["B", "A", "A", "B", "A"]))
    plain = evaluate_task(task, "raw")
    assert plain.rankings.top_rows[0].tolist() == [0, 1, 2, 3, 4]
    # votes of the top 15 (all 5), weights cos^3: A = 0.857 + 0.729 + 0 = 1.59 beats B = 1 + 0.512
    reranked = evaluate_task(task, "raw", rerank="category")
    assert reranked.rankings.top_rows[0].tolist() == [1, 2, 4, 0, 3]
    assert reranked.metrics["R@1"] == 1.0 and plain.metrics["R@1"] == 0.0
    assert reranked.metrics["mAP"] == pytest.approx(1.0)
    assert plain.metrics["mAP"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    nearest = evaluate_task(task, "raw", rerank="category", vote_k=1)  # B wins alone: order unchanged
    assert nearest.rankings.top_rows[0].tolist() == [0, 3, 1, 2, 4]
    with pytest.raises(ValueError, match="articleTypes"):
        evaluate_task(_task(None), "raw", rerank="category")


def test_the_query_itself_never_votes():
    task = _task(np.array(["B", "A", "A", "B", "A"]))
    direct = rank_queries(task.queries, task.database, task.query_labels, task.database_labels,
                          exclude_rows=np.array([0]), category_codes=np.array([1, 0, 0, 1, 0]), vote_k=1)
    # row 0 (the query itself) is excluded; the nearest remaining is row 1 (A): A first, the query last
    assert direct.top_rows[0].tolist() == [1, 2, 4, 3]
    same_type = rank_queries(task.queries, task.database, task.query_labels, task.database_labels,
                             exclude_rows=np.array([0]), category_codes=np.array([1, 1, 0, 1, 0]), vote_k=1)
    # now row 1 votes for the query's own type: that type comes first, yet the query itself stays out
    assert same_type.top_rows[0].tolist() == [1, 3, 2, 4]


def test_tune_vote_chooses_the_best_vote_on_a_hand_computed_task():
    from imageretrieval.evaluation.rerank_tuning import tune_vote

    search = tune_vote(_task(np.array(["B", "A", "A", "B", "A"])), vote_ks=(1, 5), alphas=(0.0, 3.0))
    # k=1: the nearest (B) wins alone and the B rows come first; k=5: A wins (3 votes, or 1.59 against 1.51)
    assert search.plain["mAP"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3, abs=1e-4)
    assert search.scores[(1, 0.0)]["mAP"] == pytest.approx((1 / 3 + 2 / 4 + 3 / 5) / 3, abs=1e-4)
    assert search.scores[(5, 0.0)]["mAP"] == search.scores[(5, 3.0)]["mAP"] == 1.0
    assert (search.vote_k, search.vote_alpha) == (5, 0.0)  # the first of the equals
    with_default = tune_vote(_task(np.array(["B", "A", "A", "B", "A"])), vote_ks=(5, 15), alphas=(0.0, 3.0))
    assert (with_default.vote_k, with_default.vote_alpha) == (15, 3.0)  # a tie keeps the library's default
