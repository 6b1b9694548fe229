"""`evaluate --protocol text-to-catalog`: words against the whole catalog, the way a shopper types them.

- names: each test-split product's `productDisplayName` as the query; the very product is the one
  relevant item (R@1, R@10, MRR over the top 100), against every catalog product (like Marqo's
  text-to-image on KAGL, which also uses product titles; there, text and image come from a held-out
  set and the model never trained on them; here the projection never trained on test-split texts,
  and the lexical part indexes the catalog's own names, the query's product included);
- categories: each articleType name alone, and each subCategory name alone ("Tshirts", "Topwear"):
  P@1 and P@15, relevant = products of that type (sub-category);
- colours: each baseColour name alone ("navy blue"): the share of the top 15 of that colour;
- photo + words: a test product's vector plus another colour's name: the share of the top 15 of
  that colour and of the product's articleType, against the photo alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from ..catalog import load_catalog, prepare_split

log = logging.getLogger(__name__)

NAME_DEPTH = 100  # ranks looked at for the MRR of names
CHUNK = 256
TYPE_TOLERANCE = 0.05  # photo + words: the type share the words may cost at most (on val)
PHOTO_WORDS_QUERIES = 300


def _name_metrics(rank_of: list[int | None]) -> dict:
    ranks = np.array([r if r is not None else 10**9 for r in rank_of], dtype=np.int64)
    return {"R@1": float((ranks <= 1).mean()), "R@10": float((ranks <= 10).mean()),
            "MRR": float(np.where(ranks <= NAME_DEPTH, 1.0 / ranks, 0.0).mean()), "queries": int(len(ranks))}


def _batched(search: Callable, texts: Sequence[str], **kw) -> list:
    out = []
    for start in range(0, len(texts), CHUNK):
        out += search(list(texts[start: start + CHUNK]), **kw)
    return out


def names_task(engine, table, mode: str) -> dict:
    ids = table["id"].to_numpy()
    names = table["productDisplayName"].astype(str).str.strip().tolist()
    hits = _batched(engine.text.search, names, k=NAME_DEPTH, mode=mode)
    ranks = []
    for pid, found in zip(ids, hits, strict=True):
        ranks.append(next((h.rank for h in found if h.id == pid), None))
    return _name_metrics(ranks)


def field_task(engine, field: str, values: Sequence[str], mode: str, k: int = 15) -> dict:
    """Each value alone as the query; relevant = products whose `field` is that value. `oracle`: the P@k a
    perfect ranking reaches (a value with fewer than k products cannot fill the top k); `attainable`:
    each query's hits over what it could have (min(k, its products)), averaged: 1.0 for a perfect ranking."""
    hits = _batched(engine.text.search, [v for v in values], k=k, mode=mode)
    state = engine.live.state
    counts = {v: 0 for v in values}
    for row in np.flatnonzero(state.alive):
        value = state.products[row].get(field)
        if value in counts:
            counts[value] += 1
    p1, pk, attainable = [], [], []
    for value, found in zip(values, hits, strict=True):
        same = [h.product.get(field) == value for h in found]
        p1.append(float(same[0]) if same else 0.0)
        pk.append(sum(same) / k)
        attainable.append(sum(same) / min(k, counts[value]) if counts[value] else 1.0)
    return {"P@1": float(np.mean(p1)), f"P@{k}": float(np.mean(pk)), "queries": len(values),
            f"oracle_P@{k}": float(np.mean([min(k, counts[v]) / k for v in values])),
            f"attainable_P@{k}": float(np.mean(attainable))}


def photo_words_task(engine, table, colours: Sequence[str], seed: int, text_weight: float | None = None,
                     words_weight: float | None = None, named_near: int | None = None, n: int = PHOTO_WORDS_QUERIES,
                     k: int = 15) -> dict:
    """A product's own vector + another colour's name: share of the top k of that colour and type."""
    rng = np.random.default_rng(seed)
    rows = table.iloc[rng.permutation(len(table))[:n]]
    ids = rows["id"].to_numpy()
    types = rows["articleType"].astype(str).tolist()
    own = rows["baseColour"].astype(str).tolist()
    wanted = [str(rng.choice([c for c in colours if c != mine])) for mine in own]
    image = np.stack([engine.vector_of(int(pid)) for pid in ids])
    words = []
    for start in range(0, len(ids), CHUNK):
        words += engine.text.search([c.lower() for c in wanted[start: start + CHUNK]], k=k + 1,
                                    image_vectors=image[start: start + CHUNK], text_weight=text_weight,
                                    words_weight=words_weight, named_near=named_near)
    alone = engine.search_vectors(image, k + 1, exclude_ids=list(ids))
    out = {}
    for label, results in (("photo+words", words), ("photo alone", alone)):
        colour = type_ = both = 0.0
        for pid, colour_wanted, t, found in zip(ids, wanted, types, results, strict=True):
            found = [h for h in found if h.id != pid][:k]
            colour += sum(h.product.get("baseColour") == colour_wanted for h in found) / k
            type_ += sum(h.product.get("articleType") == t for h in found) / k
            both += sum(h.product.get("baseColour") == colour_wanted and h.product.get("articleType") == t
                        for h in found) / k
        out[label] = {"colour": colour / len(ids), "type": type_ / len(ids), "colour_and_type": both / len(ids)}
    out["queries"] = int(len(ids))
    return out


def split_table(settings, split: str):
    catalog = load_catalog(settings.dataset_root)
    table = prepare_split(catalog, "all", settings.workdir, settings.seed)
    table = table[(table["split"] == split) & (table["productDisplayName"].astype(str).str.strip() != "")]
    return catalog, table.reset_index(drop=True)


def evaluate_text(settings, model: str, modes: Sequence[str] = ("semantic", "lexical", "hybrid"),
                  split: str = "test", engine=None) -> dict:
    """Every text task for each mode; the photo + words task once (it has no lexical part)."""
    from ..engine import RetrievalEngine

    engine = engine or RetrievalEngine(settings, model)
    catalog, table = split_table(settings, split)
    df = catalog.df
    article_types = sorted(v for v in df["articleType"].astype(str).unique() if v)
    sub_categories = sorted(v for v in df["subCategory"].astype(str).unique() if v)
    colours = sorted(v for v in df["baseColour"].astype(str).unique() if v)
    out: dict = {"model": model, "split": split, "database": int(engine.live.state.size), "modes": {}}
    for mode in modes:
        log.info("text-to-catalog, %s: %d names, %d types, %d sub-categories, %d colours", mode, len(table),
                 len(article_types), len(sub_categories), len(colours))
        out["modes"][mode] = {
            "names": names_task(engine, table, mode),
            "articleType": field_task(engine, "articleType", article_types, mode),
            "subCategory": field_task(engine, "subCategory", sub_categories, mode),
            "colour": field_task(engine, "baseColour", [c for c in colours], mode),
        }
    out["photo_words"] = photo_words_task(engine, table, colours, settings.seed)
    out["weights"] = {"lexical_share": engine.text.lexical_share, "text": engine.text.text_weight,
                      "words": engine.text.words_weight, "named_near": engine.text.named_near}
    return out


def choose_weights(settings, engine, lexical_grid=(0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
                   text_grid=(0.0, 0.2, 0.4), words_grid=(1.0, 2.0, 4.0), near_grid=(500, 1000, 2000, 4000, 0),
                   queries: int = 1500) -> dict:
    """The weights of the hybrid and of photo + words, chosen on the validation split.

    Hybrid: BM25's share of the fused score by the sum of validation names' R@10 and the category tasks' P@15 (what
    shoppers type is rarely a whole product name), then MRR. Photo + words: the words' share of the
    vector, their RRF weight and the neighbourhood the named products come from, by the share of the
    top 15 with the wanted colour and the product's type, among the settings that keep the photo's
    type share within TYPE_TOLERANCE of the photo alone (the words refine the photo, not replace it).
    """
    catalog, table = split_table(settings, "val")
    table = table.iloc[np.random.default_rng(settings.seed).permutation(len(table))[:queries]]
    df = catalog.df
    types = sorted(v for v in df["articleType"].astype(str).unique() if v)
    subs = sorted(v for v in df["subCategory"].astype(str).unique() if v)
    colours = sorted(v for v in table["baseColour"].astype(str).unique() if v)
    lexical = {}
    for w in lexical_grid:
        engine.text.lexical_share = w
        lexical[w] = {"names": names_task(engine, table, "hybrid"),
                      "articleType": field_task(engine, "articleType", types, "hybrid"),
                      "subCategory": field_task(engine, "subCategory", subs, "hybrid")}

    def overall(m: dict) -> tuple:
        return (m["names"]["R@10"] + m["articleType"]["P@15"] + m["subCategory"]["P@15"], m["names"]["MRR"])

    best_lexical = max(lexical_grid, key=lambda w: overall(lexical[w]))
    engine.text.lexical_share = best_lexical
    photo, alone = {}, None
    for t in text_grid:
        for w in words_grid:
            for near in near_grid:
                run = photo_words_task(engine, table, colours, settings.seed, text_weight=t, words_weight=w,
                                       named_near=near)
                photo[t, w, near], alone = run["photo+words"], run["photo alone"]
    keeps_type = [c for c in photo if photo[c]["type"] >= alone["type"] - TYPE_TOLERANCE] or list(photo)
    best_text, best_words, best_near = max(keeps_type, key=lambda c: (photo[c]["colour_and_type"], photo[c]["type"]))
    return {"lexical_share": best_lexical, "text_weight": best_text, "words_weight": best_words,
            "named_near": best_near,
            "val": {"lexical": {str(w): m for w, m in lexical.items()},
                    "photo_words": {f"{t},{w},{near}": m for (t, w, near), m in photo.items()},
                    "photo_alone": alone}}
