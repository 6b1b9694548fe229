"""What a shopper sees in the top k: the share of results that agree with the query on an attribute.

Same-articleType precision rewards a model that returns pink women's shirts for a man's navy shirt;
these figures do not. An attribute agrees when the values are equal, or when the database value is a
wildcard (a `Unisex` product suits both genders). Queries whose own value is unknown (empty) are left
out of that attribute's mean. The oracle bound is what a perfect ranking would reach: a query with
only 4 matching products can fill 4 of its 15 places.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

GENDER_WILDCARDS = frozenset({"Unisex"})
SHOPPER_ATTRIBUTES = ("baseColour", "gender")
ALL_THREE = ("articleType", "baseColour", "gender")
NAMES = {"articleType": "type", "baseColour": "colour", "gender": "gender"}


def agrees(query_values: np.ndarray, database_values: np.ndarray,
           wildcards: frozenset[str] = frozenset()) -> np.ndarray:
    """(n_queries, n_database) booleans: equal values, or a wildcard on the database side."""
    q = np.asarray(query_values, dtype=str)[:, None]
    d = np.asarray(database_values, dtype=str)[None, :]
    out = q == d
    if wildcards:
        out |= np.isin(d, list(wildcards))
    return out


def agreement_at_k(top_rows: np.ndarray, matches: np.ndarray, k: int = 15) -> np.ndarray:
    """Per query, the share of its first k ranked rows (`top_rows`, -1 = none) that match it.

    `matches`: (n_queries, n_database) booleans (`agrees`). A query with fewer than k ranked rows is
    scored on the rows it has.
    """
    rows = np.asarray(top_rows)[:, :k]
    valid = rows >= 0
    hit = np.take_along_axis(matches, np.where(valid, rows, 0), axis=1) & valid
    return hit.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)


def oracle_at_k(matches: np.ndarray, k: int = 15, exclude_rows: np.ndarray | None = None) -> np.ndarray:
    """Per query, min(k, matching database rows) / k: the best share any ranking can reach."""
    matches = np.array(matches, dtype=bool, copy=True)
    if exclude_rows is not None:
        has = np.flatnonzero(np.asarray(exclude_rows) >= 0)
        matches[has, np.asarray(exclude_rows)[has]] = False
    return np.minimum(matches.sum(axis=1), k) / k


def shopper_agreement(top_rows: np.ndarray, query_attributes: Mapping[str, Sequence],
                      database_attributes: Mapping[str, Sequence], k: int = 15,
                      exclude_rows: np.ndarray | None = None) -> dict[str, float]:
    """`colour@15`, `gender@15` and, where the query's type, colour and gender are all known,
    `type+colour+gender@15` with its oracle bound, averaged over the queries that know the attribute."""
    out: dict[str, float] = {}
    known: dict[str, np.ndarray] = {}
    matches: dict[str, np.ndarray] = {}
    for field in ALL_THREE:
        if field not in query_attributes or field not in database_attributes:
            continue
        values = np.asarray(query_attributes[field], dtype=str)
        known[field] = (values != "") & (values != "nan")
        wildcards = GENDER_WILDCARDS if field == "gender" else frozenset()
        matches[field] = agrees(values, database_attributes[field], wildcards)
    for field in SHOPPER_ATTRIBUTES:
        if field in matches and known[field].any():
            share = agreement_at_k(top_rows, matches[field], k)
            out[f"{NAMES[field]}@{k}"] = float(share[known[field]].mean())
    if all(f in matches for f in ALL_THREE):
        every = known["articleType"] & known["baseColour"] & known["gender"]
        if every.any():
            together = matches["articleType"] & matches["baseColour"] & matches["gender"]
            out[f"type+colour+gender@{k}"] = float(agreement_at_k(top_rows, together, k)[every].mean())
            out[f"type+colour+gender@{k}_oracle"] = float(oracle_at_k(together, k, exclude_rows)[every].mean())
    return out


def exact_recall_at_1(queries: np.ndarray, database: np.ndarray, own_rows: np.ndarray) -> float:
    """Share of queries whose nearest database row is their own product (`own_rows`, -1 = not in it)."""
    has = np.flatnonzero(np.asarray(own_rows) >= 0)
    if len(has) == 0:
        return float("nan")
    scores = np.asarray(queries, np.float32)[has] @ np.asarray(database, np.float32).T
    return float((scores.argmax(axis=1) == np.asarray(own_rows)[has]).mean())
