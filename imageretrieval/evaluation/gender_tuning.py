"""Train a model's gender predictor (`gender.py`) and choose it on the validation splits.

Training data: the model's vectors of catalog products (the whole catalog's train split, the val and
test products of the evaluated selection left out) and of DeepFashion train photos at the catalog's
resolution (their MEN/WOMEN folder is their gender). Photos are few beside the catalog and are what
the embedding confuses, so their weight is a choice; so are the classifier (linear, or a hidden layer
of ReLUs), the confidence threshold under which a query is not re-ranked by gender and the weight of
the nearest products' genders. All are chosen on
the val splits (catalog products of the selection against that split and against the whole catalog,
as the app searches; DeepFashion val photos against the whole catalog) with rerank=category+gender:
the best mean gender@15 of those whose P@15 stays within `tolerance` of category-first alone on each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from ..deepfashion import PHOTO_GENDERS
from ..featurestore import fashion_table, get_features
from ..gender import PROBE_PRODUCTS, GenderPredictor, fit_gender_predictor
from ..settings import Settings
from .protocols import catalog_task, deepfashion_task
from .runner import evaluate_task

log = logging.getLogger(__name__)

PHOTO_WEIGHTS = (1.0, 3.0)
HIDDEN_UNITS = (0, 256)  # 0: logistic regression
THRESHOLDS = (0.4, 0.6)
NEIGHBOUR_WEIGHTS = (0.0, 0.5, 1.0)
TOLERANCE = 0.005


@dataclass
class GenderChoice:
    predictor: GenderPredictor
    photo_weight: float
    val: dict[str, dict[str, float]]  # "weight=W hidden=H threshold=T neighbours=B" -> figures; "category" -> alone
    trained_on: dict[str, int] = field(default_factory=dict)


def training_data(settings: Settings, model: str, query_resolution: tuple[int, int] | None, selection: str = "seed"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, genders, is_photo, catalog ids) to train on: the whole catalog's train split without any val
    or test product of `selection`, then DeepFashion train photos (the ids are the catalog rows')."""
    fs, table = get_features(settings, model, "fashion", "train", "all")
    held_out = set()
    for split in ("val", "test"):
        held_out |= {int(i) for i in fashion_table(settings, selection, split)["id"]}
    keep = ~np.isnan(fs.features).any(axis=1) & ~table["id"].astype(int).isin(held_out).to_numpy()
    vectors = [fs.features[keep]]
    genders = [table["gender"].fillna("").astype(str).to_numpy()[keep]]
    try:
        pfs, ptable = get_features(settings, model, "deepfashion", "train", query_resolution=query_resolution)
    except (FileNotFoundError, ValueError) as exc:  # no DeepFashion photos: the catalog alone
        log.warning("training the gender predictor on catalog products alone (%s)", exc)
    else:
        ok = ~np.isnan(pfs.features).any(axis=1)
        vectors.append(pfs.features[ok])
        genders.append(ptable["gender"].map(PHOTO_GENDERS).fillna("").astype(str).to_numpy()[ok])
    is_photo = np.concatenate([np.zeros(len(vectors[0]), bool), np.ones(sum(len(v) for v in vectors[1:]), bool)])
    ids = table["id"].astype(np.int64).to_numpy()[keep]
    return np.concatenate(vectors), np.concatenate(genders).astype(object), is_photo, ids


def _figures(result) -> dict[str, float]:
    m = result.metrics
    return {"P@15": round(float(m["PrecisionHits"]), 4), "gender@15": round(float(m["gender@15"]), 4)}


def score(tasks: dict, predictor: GenderPredictor | None, vote: tuple[int, float]) -> dict[str, dict[str, float]]:
    """P@15 and gender@15 per task with category+gender re-ranking (category alone without a predictor)."""
    rerank = "category" if predictor is None else "category+gender"
    return {name: _figures(evaluate_task(task, "raw", rerank=rerank, vote_k=vote[0], vote_alpha=vote[1],
                                         gender_predictor=predictor))
            for name, task in tasks.items()}


def _catalog_tasks(settings: Settings, model: str, selection: str, split: str, n_queries: int) -> dict:
    """Catalog products of the split against that split and against the whole catalog (as the app searches)."""
    return {name: catalog_task(settings, model, selection=selection, split=split, database=database,
                               n_queries=n_queries, with_fit=False)
            for name, database in (("catalog", "split"), ("catalog-all", "all"))}


def choose_gender_predictor(settings: Settings, model: str, query_resolution: tuple[int, int] | None,
                            vote: tuple[int, float], selection: str = "seed", n_queries: int = 600,
                            weights=PHOTO_WEIGHTS, thresholds=THRESHOLDS, neighbour_weights=NEIGHBOUR_WEIGHTS,
                            hidden_units=HIDDEN_UNITS, tolerance: float = TOLERANCE) -> GenderChoice | None:
    """The predictor chosen on val (see the module's docstring); None when no candidate keeps P@15."""
    vectors, genders, is_photo, catalog_ids = training_data(settings, model, query_resolution, selection)
    tasks = _catalog_tasks(settings, model, selection, "val", n_queries)
    if is_photo.any():
        tasks["photos"] = deepfashion_task(settings, model, database="all", selection=selection, with_fit=False,
                                           query_resolution=query_resolution, split="val")
    plain = score(tasks, None, vote)
    val: dict[str, dict] = {"category": plain}
    best: tuple[float, GenderPredictor, float] | None = None
    for weight, hidden in [(w, h) for w in (weights if is_photo.any() else (1.0,)) for h in hidden_units]:
        fitted = fit_gender_predictor(vectors, genders, np.where(is_photo, weight, 1.0), seed=settings.seed,
                                      hidden=hidden)
        for threshold in thresholds:
            for neighbours in neighbour_weights:
                predictor = replace(fitted, threshold=threshold, neighbour_weight=neighbours)
                figures = score(tasks, predictor, vote)
                val[f"weight={weight:g} hidden={hidden} threshold={threshold:g} neighbours={neighbours:g}"] = figures
                kept = all(figures[t]["P@15"] >= plain[t]["P@15"] - tolerance for t in tasks)
                mean_gender = float(np.mean([figures[t]["gender@15"] for t in tasks]))
                log.info("photo weight %g, hidden units %d, threshold %g, neighbour weight %g: %s%s", weight, hidden,
                         threshold, neighbours, figures, "" if kept else " (P@15 lost)")
                if kept and (best is None or mean_gender > best[0]):
                    best = (mean_gender, predictor, weight)
    if best is None:
        return None
    _, predictor, weight = best
    probe = np.argsort(catalog_ids, kind="stable")[:PROBE_PRODUCTS]  # the model version it belongs to
    predictor.probe_ids, predictor.probe_vectors = catalog_ids[probe], vectors[probe]
    trained = {"catalog_products": int((~is_photo).sum()), "photos": int(is_photo.sum())}
    predictor.meta = {"model": model, "photo_weight": weight, "hidden": predictor.hidden, "trained_on": trained,
                      "val": val, "vote": list(vote), "tolerance": tolerance}
    return GenderChoice(predictor, weight, val, trained)


def test_figures(settings: Settings, model: str, predictor: GenderPredictor, query_resolution: tuple[int, int] | None,
                 vote: tuple[int, float], selection: str = "seed", n_queries: int = 600) -> dict[str, dict]:
    """The chosen predictor scored once on the test splits, beside category-first alone."""
    tasks = _catalog_tasks(settings, model, selection, "test", n_queries)
    try:
        tasks["photos"] = deepfashion_task(settings, model, database="all", selection=selection, with_fit=False,
                                           query_resolution=query_resolution, split="test")
    except (FileNotFoundError, ValueError) as exc:
        log.warning("no photos test split (%s)", exc)
    return {"category": score(tasks, None, vote), "category+gender": score(tasks, predictor, vote)}
