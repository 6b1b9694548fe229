"""DeepFashion In-shop Clothes Retrieval: photos of people wearing the clothes.

Layout: img/{MEN,WOMEN}/<Category>/id_XXXXXXXX/NN_k_view.jpg; the item folder is the identity.
The benchmark's partition file is not used: the split is item-disjoint and deterministic, by a
hash of the item id (sha1 -> [0, 1): < 0.6 train, < 0.8 val, else test), so it never depends on
which subset of items is present.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources
from pathlib import Path

import pandas as pd

from .catalog import CatalogError


class DeepFashionError(CatalogError):
    pass


PHOTO_GENDERS = {"MEN": "Men", "WOMEN": "Women"}  # a photo's folder -> the catalog's gender value


@lru_cache(maxsize=1)
def category_mapping() -> pd.DataFrame:
    """The documented mapping of the 23 (gender, category) pairs to Fashion Product articleTypes."""
    with resources.files("imageretrieval.data").joinpath("deepfashion_to_articletype.csv").open() as fh:
        return pd.read_csv(fh, keep_default_na=False)


def item_split(item_id: str, seed: int = 42) -> str:
    h = int(hashlib.sha1(f"{seed}:{item_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if h < 0.6 else "val" if h < 0.8 else "test"


def load_deepfashion(root: Path, seed: int = 42) -> pd.DataFrame:
    """One row per image: path, image_id, item_id, gender, category, articleType, view, split."""
    root = Path(root)
    img_root = root / "img"
    if not img_root.is_dir():
        raise DeepFashionError(f"no img/ folder in {root}: set DEEPFASHION_ROOT to the DeepFashion In-shop folder")
    mapping = category_mapping().set_index(["gender", "category"])
    rows = []
    for path in sorted(img_root.glob("*/*/id_*/*.jpg")):
        gender, category, item_id = path.parts[-4], path.parts[-3], path.parts[-2]
        stem = path.stem  # e.g. 01_1_front
        parts = stem.split("_")
        key = (gender, category)
        article = mapping.loc[key, "articleType"] if key in mapping.index else ""
        rows.append({
            "path": str(path),
            "image_id": f"{gender}/{category}/{item_id}/{stem}",
            "item_id": item_id,
            "gender": gender,
            "category": category,
            "articleType": article,
            "view": parts[-1] if len(parts) >= 3 else "",
        })
    if not rows:
        raise DeepFashionError(f"no images under {img_root}/<GENDER>/<Category>/id_*/")
    df = pd.DataFrame(rows)
    df["split"] = df["item_id"].map(lambda i: item_split(i, seed))
    return df
