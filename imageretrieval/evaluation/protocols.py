"""Evaluation protocols: which images are queries, which form the database, what counts as relevant.

* catalog: N seeded queries from a split (test by default) of a catalog selection; database = that
  split (as the seed did) or the whole catalog; relevance = same articleType (or subCategory, or
  articleType + baseColour). A query is also a database item: it is removed from its own ranking.
* deepfashion-to-catalog: DeepFashion In-shop test photos (people wearing the clothes) against
  the catalog; relevance = the articleType that the photo's category maps to.
* inshop: within the DeepFashion test split; the first image (by file name) of every item with
  2+ images is a query, all other test images form the gallery; relevance = same item id.
The whitening of the `normalized`/QE variants is fitted on catalog features that never contain the
queries: the selection's train split (default) or, for protocols whose queries are not catalog
images, the whole catalog (as the index is).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..deepfashion import PHOTO_GENDERS
from ..settings import Settings

# The feature store (and torch with it) is imported by the functions that read features: the CLI lists
# the names below without loading torch.
log = logging.getLogger(__name__)

PROTOCOLS = ("catalog", "deepfashion-to-catalog", "inshop")
RELEVANCES = ("articleType", "subCategory", "articleType+baseColour", "articleType+baseColour+gender")
RELEVANCE_ALIASES = {"type": "articleType", "type+colour": "articleType+baseColour",
                     "type+colour+gender": "articleType+baseColour+gender"}
DEFAULT_CATALOG_QUERIES = 600


@dataclass
class RetrievalTask:
    """Raw query/database features with ids and relevance labels; pure data, no model."""

    protocol: str
    queries: np.ndarray
    database: np.ndarray
    query_ids: np.ndarray
    database_ids: np.ndarray
    query_labels: np.ndarray
    database_labels: np.ndarray
    exclude_rows: np.ndarray | None = None  # per query: its own database row, or -1
    fit: np.ndarray | None = None  # raw features the whitening is fitted on
    database_categories: np.ndarray | None = None  # catalog articleType per database row (category re-ranking)
    query_attributes: dict[str, np.ndarray] | None = None  # articleType/baseColour/gender, "" when unknown
    database_attributes: dict[str, np.ndarray] | None = None  # ... of the database rows (agreement.py)
    info: dict = field(default_factory=dict)


def _attributes(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """The attributes a shopper compares (evaluation/agreement.py), "" where a product has none."""
    return {c: table[c].fillna("").astype(str).to_numpy() for c in ("articleType", "baseColour", "gender")}


def relevance_labels(table: pd.DataFrame, relevance: str) -> np.ndarray:
    """One string per row; two rows are relevant to each other when their strings are equal."""
    relevance = RELEVANCE_ALIASES.get(relevance, relevance)
    if relevance in ("articleType+baseColour", "articleType+baseColour+gender"):
        fields = relevance.split("+")
        return table[fields].astype(str).agg("|".join, axis=1).to_numpy()
    if relevance in ("articleType", "subCategory"):
        return table[relevance].astype(str).to_numpy()
    raise ValueError(f"unknown relevance {relevance!r}; choose one of {', '.join(RELEVANCES)}")


def sample_rows(n_total: int, n: int | None, seed: int) -> np.ndarray:
    """Seeded sample of n row indices out of n_total (all when n is None or too large), sorted."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def _valid(fs_features: np.ndarray) -> np.ndarray:
    return ~np.isnan(fs_features).any(axis=1)


def _require_deepfashion_test(settings: Settings, split: str = "test") -> None:
    from ..featurestore import deepfashion_table

    if deepfashion_table(settings, split).empty:
        raise ValueError(f"no DeepFashion {split}-split image under {settings.deepfashion_root}")


def _fit_features(settings: Settings, model: str, fit_on: str, selection: str, fit_sample: int | None):
    from ..featurestore import get_features

    if fit_on == "train":
        fs, _ = get_features(settings, model, "fashion", "train", selection, sample=fit_sample)
        name = f"{selection} train split" + (f" (sample of {fit_sample})" if fit_sample else "")
    elif fit_on == "catalog":
        fs, _ = get_features(settings, model, "fashion", "all", "all", sample=fit_sample)
        name = "whole catalog" + (f" (sample of {fit_sample})" if fit_sample else "")
    else:
        raise ValueError(f"unknown whitening fit set {fit_on!r} (train|catalog)")
    return fs.features[_valid(fs.features)], name


def _catalog_database(settings: Settings, model: str, database: str, selection: str, split: str,
                      sample: int | None = None):
    from ..featurestore import get_features

    if database == "all":
        fs, table = get_features(settings, model, "fashion", "all", "all", sample=sample)
        name = "whole catalog"
    elif database in ("test", "val", "split"):
        fs, table = get_features(settings, model, "fashion", split, selection, sample=sample)
        name = f"{selection} {split} split"
    else:
        raise ValueError(f"unknown database {database!r} (test|all)")
    ok = _valid(fs.features)
    if sample is not None:
        name += f" (sample of {sample})"
    return fs.features[ok], table[ok].reset_index(drop=True), name


def catalog_task(
    settings: Settings,
    model: str,
    selection: str = "seed",
    split: str = "test",
    database: str = "test",
    relevance: str = "articleType",
    n_queries: int | None = DEFAULT_CATALOG_QUERIES,
    fit_on: str = "train",
    fit_sample: int | None = None,
    with_fit: bool = True,
    database_sample: int | None = None,
    query_scale: float | None = None,
    query_resolution: tuple[int, int] | None = None,
) -> RetrievalTask:
    """The seed's protocol: queries from a catalog split, database = that split or the whole catalog.

    `database_sample` evaluates on a seeded subset of the split (queries drawn from it), for slow models.
    `query_scale` turns the queries into a query set the catalog never had: the same products re-rendered
    at that scale (0.5 = half the resolution, 4 = upscaled), then through the engine's query path
    (`query_resolution`); the database keeps the original images and each query's original is excluded.
    """
    from ..featurestore import fashion_table, get_features

    if fit_on != "train":
        raise ValueError("catalog protocol: the whitening must be fitted on the train split (never on the queries)")
    pool = fashion_table(settings, selection, split)["id"].to_numpy()
    if len(pool) == 0:
        raise ValueError(f"no product in the {selection} {split} split of {settings.dataset_root}: "
                         "try --selection all")
    db, db_table, db_name = _catalog_database(settings, model, database, selection, split, database_sample)
    row_of = {int(pid): i for i, pid in enumerate(db_table["id"].to_numpy())}
    pool = np.array([p for p in pool if int(p) in row_of])  # drops undecodable images
    picked = pool[sample_rows(len(pool), n_queries, settings.seed)]
    q_rows = np.array([row_of[int(p)] for p in picked], dtype=np.int64)
    labels = relevance_labels(db_table, relevance)
    fit, fit_name = _fit_features(settings, model, fit_on, selection, fit_sample) if with_fit else (None, "")
    queries, scaled = db[q_rows], {}
    if query_scale is not None:
        qfs, _ = get_features(settings, model, "fashion", split, selection, query_resolution=query_resolution,
                              query_scale=query_scale)
        q_of = {int(pid): i for i, pid in enumerate(qfs.ids)}
        ok = np.array([int(p) in q_of and not np.isnan(qfs.features[q_of[int(p)]]).any() for p in picked])
        picked, q_rows = picked[ok], q_rows[ok]
        queries = np.asarray(qfs.features[[q_of[int(p)] for p in picked]])
        res = "native" if query_resolution is None else f"{query_resolution[0]}x{query_resolution[1]}"
        scaled = {"query_scale": query_scale, "query_resolution": res}
    return RetrievalTask(
        protocol="catalog", queries=queries, database=db, query_ids=picked, database_ids=db_table["id"].to_numpy(),
        query_labels=labels[q_rows], database_labels=labels, exclude_rows=q_rows, fit=fit,
        database_categories=db_table["articleType"].astype(str).to_numpy(),
        query_attributes=_attributes(db_table.iloc[q_rows]), database_attributes=_attributes(db_table),
        info={"queries_from": f"{selection} {split} split"
              + (f", re-rendered at x{query_scale:g}" if query_scale is not None else ""),
              "database": db_name, "relevance": relevance, **scaled,
              "whitening_fit": fit_name, "query_table": db_table.iloc[q_rows].reset_index(drop=True)},
    )


def deepfashion_task(
    settings: Settings,
    model: str,
    database: str = "all",
    selection: str = "seed",
    n_queries: int | None = None,
    query_resolution: tuple[int, int] | None = None,
    fit_on: str = "train",
    fit_sample: int | None = None,
    database_sample: int | None = None,
    with_fit: bool = True,
    query_model: str | None = None,
    split: str = "test",
) -> RetrievalTask:
    """Photos of people (a DeepFashion split) against catalog products; relevance = articleType.
    `split` = val scores the photos of the val split against that split of the catalog (`database`
    "val"), or the whole catalog.

    `query_model` encodes the photos with another model of the same embedding space (e.g. the same
    network with batch-norm statistics of the photos, `train --recipe bn-adapt`), the catalog with `model`.
    """
    from ..featurestore import get_features

    _require_deepfashion_test(settings, split)
    qfs, qtable = get_features(settings, query_model or model, "deepfashion", split,
                               query_resolution=query_resolution, sample=n_queries)
    keep = _valid(qfs.features) & (qtable["articleType"].astype(str) != "").to_numpy()
    qtable = qtable[keep].reset_index(drop=True)
    queries = qfs.features[keep]
    db, db_table, db_name = _catalog_database(settings, model, database, selection, split, database_sample)
    if queries.shape[1] != db.shape[1]:
        raise ValueError(f"query model {query_model} gives {queries.shape[1]}-d vectors, {model} {db.shape[1]}-d: "
                         "the two must share one embedding space")
    fit, fit_name = _fit_features(settings, model, fit_on, selection, fit_sample) if with_fit else (None, "")
    res = "native" if query_resolution is None else f"{query_resolution[0]}x{query_resolution[1]}"
    return RetrievalTask(
        protocol="deepfashion-to-catalog", queries=queries, database=db,
        query_ids=qtable["image_id"].to_numpy().astype(str), database_ids=db_table["id"].to_numpy(),
        query_labels=qtable["articleType"].astype(str).to_numpy(),
        database_labels=db_table["articleType"].astype(str).to_numpy(), fit=fit,
        database_categories=db_table["articleType"].astype(str).to_numpy(),
        query_attributes={"gender": qtable["gender"].map(PHOTO_GENDERS).fillna("").astype(str).to_numpy()},
        database_attributes=_attributes(db_table),
        info={"queries_from": f"DeepFashion In-shop {split} split" + (f" (sample of {n_queries})" if n_queries else ""),
              "database": db_name, "relevance": "mapped articleType", "whitening_fit": fit_name,
              "query_resolution": res, "query_table": qtable,
              **({"query_model": query_model} if query_model else {})},
    )


def inshop_split(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, gallery rows): each item's first image (by image_id) is its query when the item
    has another image; everything else is the gallery."""
    order = table.sort_values("image_id").index.to_numpy()
    items = table.loc[order, "item_id"].to_numpy()
    counts = table["item_id"].value_counts()
    first = np.ones(len(order), dtype=bool)
    first[1:] = items[1:] != items[:-1]
    is_query = first & (counts.reindex(items).to_numpy() >= 2)
    return np.sort(order[is_query]), np.sort(order[~is_query])


def inshop_task(
    settings: Settings,
    model: str,
    selection: str = "seed",
    n_queries: int | None = None,
    fit_on: str = "train",
    fit_sample: int | None = None,
    with_fit: bool = True,
) -> RetrievalTask:
    """DeepFashion In-shop retrieval within the test split; relevance = same item id."""
    from ..featurestore import get_features

    _require_deepfashion_test(settings)
    fs, table = get_features(settings, model, "deepfashion", "test")
    ok = _valid(fs.features)
    table, feats = table[ok].reset_index(drop=True), fs.features[ok]
    q_rows, g_rows = inshop_split(table)
    q_rows = q_rows[sample_rows(len(q_rows), n_queries, settings.seed)]
    fit, fit_name = _fit_features(settings, model, fit_on, selection, fit_sample) if with_fit else (None, "")
    items = table["item_id"].astype(str).to_numpy()
    return RetrievalTask(
        protocol="inshop", queries=feats[q_rows], database=feats[g_rows],
        query_ids=table["image_id"].to_numpy()[q_rows].astype(str),
        database_ids=table["image_id"].to_numpy()[g_rows].astype(str),
        query_labels=items[q_rows], database_labels=items[g_rows], fit=fit,
        info={"queries_from": "DeepFashion In-shop test split, first image of each item",
              "database": "the other DeepFashion test images", "relevance": "same item id",
              "whitening_fit": fit_name, "query_table": table.iloc[q_rows].reset_index(drop=True)},
    )
