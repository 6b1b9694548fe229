"""Shopper agreement in the top k: hand-computed cases."""

import numpy as np
import pytest

from imageretrieval.evaluation.agreement import (
    agreement_at_k,
    agrees,
    exact_recall_at_1,
    oracle_at_k,
    shopper_agreement,
)


def test_agreement_counts_matching_results_in_the_top_k():
    matches = agrees(np.array(["Navy", "Red"]), np.array(["Navy", "Red", "Navy", "Blue"]))
    assert matches.tolist() == [[True, False, True, False], [False, True, False, False]]
    top = np.array([[2, 1, 0, 3], [3, 2, 1, -1]])
    # query 0: rows 2, 1 in its top 2 -> 1 of 2 Navy; query 1: rows 3, 2 -> none Red
    assert agreement_at_k(top, matches, k=2).tolist() == [0.5, 0.0]
    # query 1 has only 3 ranked rows (-1 = none): 1 of 3 are Red
    assert agreement_at_k(top, matches, k=4).tolist() == pytest.approx([0.5, 1 / 3])


def test_unisex_products_agree_with_both_genders():
    m = agrees(np.array(["Men", "Women"]), np.array(["Men", "Unisex", "Women", "Boys"]), frozenset({"Unisex"}))
    assert m.tolist() == [[True, True, False, False], [False, True, True, False]]


def test_oracle_is_the_best_share_any_ranking_reaches_without_the_query_itself():
    matches = np.array([[True, True, False, True], [True, False, False, False]])
    assert oracle_at_k(matches, k=2).tolist() == [1.0, 0.5]
    assert oracle_at_k(matches, k=3, exclude_rows=np.array([0, 0])).tolist() == pytest.approx([2 / 3, 0.0])


def test_shopper_agreement_leaves_unknown_values_out_and_combines_all_three():
    db = {"articleType": np.array(["Shirts", "Shirts", "Tshirts"]), "baseColour": np.array(["Navy", "Pink", "Navy"]),
          "gender": np.array(["Men", "Women", "Unisex"])}
    queries = {"articleType": np.array(["Shirts", "Shirts"]), "baseColour": np.array(["Navy", ""]),
               "gender": np.array(["Men", "Men"])}
    top = np.array([[1, 0, 2], [0, 2, 1]])
    out = shopper_agreement(top, queries, db, k=2)
    assert out["colour@2"] == 0.5  # only query 0 knows its colour: rows 1 (Pink), 0 (Navy)
    assert out["gender@2"] == pytest.approx((0.5 + 1.0) / 2)  # q0: Women, Men; q1: Men, Unisex
    assert out["type+colour+gender@2"] == 0.5 and out["type+colour+gender@2_oracle"] == 0.5  # row 0 alone matches
    photos = shopper_agreement(top, {"gender": np.array(["Men", "Women"])}, db, k=2)
    assert set(photos) == {"gender@2"}  # no colour for photos: no colour or combined figure


def test_exact_recall_at_1_finds_the_very_product():
    database = np.eye(3, dtype=np.float32)
    queries = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.0, 0.0, 1.0]], np.float32)
    assert exact_recall_at_1(queries, database, np.array([0, 1, -1])) == 0.5  # query 1 is nearer product 0
    assert np.isnan(exact_recall_at_1(queries, database, np.array([-1, -1, -1])))


def test_type_colour_gender_relevance_needs_all_three_equal():
    import pandas as pd

    from imageretrieval.evaluation.protocols import relevance_labels

    table = pd.DataFrame({"articleType": ["Shirts", "Shirts", "Shirts"], "baseColour": ["Navy", "Navy", "Navy"],
                          "gender": ["Men", "Women", "Men"], "subCategory": ["Topwear"] * 3})
    labels = relevance_labels(table, "type+colour+gender")
    assert labels[0] == labels[2] != labels[1]
    assert len(set(relevance_labels(table, "type+colour"))) == 1
