"""The validation score a training run selects its best epoch on.

Two scores, chosen per run (`--val-score`):

- `type`: the mean of catalog val P@15 and photo val -> catalog val P@15 (same articleType), the
  seed's relevance. Every model trained before shopper relevance existed was selected on it.
- `shopper`: the mean of every figure below that the validation data allows, with equal weights:
  type P@15 (catalog, photos), colour@15 and gender@15 of the catalog queries, gender@15 of the photo
  queries, exact-product R@1 of catalog products re-rendered at another scale, and In-shop item R@1
  (photo -> photo, same garment). A model that wins on type by forgetting colour, gender or the very
  product does not win on it.
"""

from __future__ import annotations

import numpy as np

from ..evaluation.agreement import shopper_agreement
from ..evaluation.metrics import average_precision, nanmean, precision_at_k, rank_order

VAL_SCORES = ("type", "shopper")
TYPE_TERMS = ("catalog_p@15", "photo_p@15")
SHOPPER_TERMS = TYPE_TERMS + ("catalog_colour@15", "catalog_gender@15", "photo_gender@15", "exact_r@1",
                              "item_r@1")


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ranked_relevance(query: np.ndarray, q_labels: np.ndarray, db: np.ndarray, db_labels: np.ndarray,
                     exclude_self: bool = False, exclude_rows: np.ndarray | None = None) -> np.ndarray:
    """(n_queries, n_db) bool: is the r-th ranked database item of the query's class (cosine ranking).

    The evaluation's conventions (evaluation/metrics.py): ties by database row, and `exclude_self`
    (queries = database) or `exclude_rows` (each query's own row) leaves the query out of its ranking.
    """
    sims = _normalize(query) @ _normalize(db).T
    if exclude_self:
        exclude_rows = np.arange(len(query))
    if exclude_rows is not None:
        sims[np.arange(len(query)), exclude_rows] = -np.inf
    rel = np.asarray(db_labels)[rank_order(sims)] == np.asarray(q_labels)[:, None]
    return rel[:, :-1] if exclude_rows is not None else rel  # the query itself is ranked last


def retrieval_scores(query, q_labels, db, db_labels, k: int = 15, exclude_self: bool = False,
                     exclude_rows: np.ndarray | None = None) -> dict[str, float]:
    """P@k and mAP with the evaluation's functions. A query without any relevant item has no AP and is
    left out of the mAP; in P@k it counts as zero hits (`evaluate` leaves such queries out of its
    protocols altogether, so it never meets one)."""
    rel = ranked_relevance(query, q_labels, db, db_labels, exclude_self, exclude_rows)
    return {f"p@{k}": float(precision_at_k(rel, k).mean()), "map": nanmean(average_precision(rel))}


def top_k_rows(query: np.ndarray, db: np.ndarray, k: int, exclude_rows: np.ndarray | None = None) -> np.ndarray:
    """(n_queries, k) database rows by cosine, best first; `exclude_rows` drops each query's own row."""
    sims = _normalize(query) @ _normalize(db).T
    if exclude_rows is not None:
        sims[np.arange(len(query)), exclude_rows] = -np.inf
    k = min(k, sims.shape[1] - (exclude_rows is not None))
    return rank_order(sims)[:, :k]  # the project's ranking rule: ties by row


def val_scores(emb: np.ndarray, labels: np.ndarray, domain: np.ndarray, max_queries: int = 1000,
               seed: int = 0, items: np.ndarray | None = None, colours: np.ndarray | None = None,
               genders: np.ndarray | None = None, views: np.ndarray | None = None,
               score: str = "type") -> dict[str, float]:
    """Catalog val -> catalog val (leave-one-out) and photo val -> catalog val figures; `score` (module doc).

    `items`: DeepFashion item ids ("" elsewhere) for `item_r@1`. `colours`/`genders`: each row's
    baseColour and gender ("" when unknown) for the agreement figures. `views`: embeddings of the same
    rows re-rendered at another scale (NaN where there is none) for `exact_r@1`: does a catalog
    product's other rendering find the product itself first (the original stays in the database).
    At most `max_queries` seeded queries per direction keep a validation pass to a few seconds.
    """
    if score not in VAL_SCORES:
        raise ValueError(f"unknown validation score {score!r}; choose one of {', '.join(VAL_SCORES)}")
    out: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    cat = np.flatnonzero(domain == "fashion")
    photo = np.flatnonzero(domain == "deepfashion")
    attributes = genders is not None

    def pick(rows: np.ndarray) -> np.ndarray:
        return np.sort(rng.choice(len(rows), size=max_queries, replace=False)) if len(rows) > max_queries \
            else np.arange(len(rows))

    def agreement(rows: np.ndarray, top: np.ndarray, db: np.ndarray) -> dict[str, float]:
        fields = {"gender": genders} if colours is None else {"baseColour": colours, "gender": genders}
        return shopper_agreement(top, {k: v[rows] for k, v in fields.items()}, {k: v[db] for k, v in fields.items()})

    if len(cat) > 1:
        q = pick(cat)
        s = retrieval_scores(emb[cat[q]], labels[cat[q]], emb[cat], labels[cat], exclude_rows=q)
        out.update({"catalog_p@15": s["p@15"], "catalog_map": s["map"]})
        if attributes:
            agree = agreement(cat[q], top_k_rows(emb[cat[q]], emb[cat], 15, exclude_rows=q), cat)
            out.update({f"catalog_{k}": v for k, v in agree.items() if k in ("colour@15", "gender@15")})
    db = cat if len(cat) else photo
    if len(photo) and len(db):
        q = pick(photo)
        s = retrieval_scores(emb[photo[q]], labels[photo[q]], emb[db], labels[db],
                             exclude_rows=None if len(cat) else q)
        out.update({"photo_p@15": s["p@15"], "photo_map": s["map"]})
        if attributes and len(cat):
            agree = agreement(photo[q], top_k_rows(emb[photo[q]], emb[cat], 15), cat)
            out.update({f"photo_{k}": v for k, v in agree.items() if k == "gender@15"})
    if views is not None and len(cat) > 1:
        has_view = cat[~np.isnan(views[cat]).any(1)]
        if len(has_view):
            q = has_view[pick(has_view)]
            own = np.searchsorted(cat, q)  # each query's own product among the catalog rows
            out["exact_r@1"] = float((top_k_rows(views[q], emb[cat], 1)[:, 0] == own).mean())
    if items is not None and len(photo) > 1:
        q = pick(photo)
        rel = ranked_relevance(emb[photo[q]], items[photo[q]], emb[photo], items[photo], exclude_rows=q)
        has_other = rel.any(axis=1)  # a garment with one val photo has nothing to find (In-shop skips it too)
        if has_other.any():
            out["item_r@1"] = float(rel[has_other, 0].mean())
    terms = TYPE_TERMS if score == "type" else SHOPPER_TERMS
    out["score"] = float(np.mean([out[k] for k in terms if k in out]))
    return out
