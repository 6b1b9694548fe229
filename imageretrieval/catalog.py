"""Fashion Product Images catalog: robust `styles.csv` reader, selections and seeded splits."""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .io_utils import atomic_write

log = logging.getLogger(__name__)

COLUMNS = [
    "id", "gender", "masterCategory", "subCategory", "articleType",
    "baseColour", "season", "year", "usage", "productDisplayName",
]
ATTRIBUTE_COLUMNS = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]

# The seed's selection: Apparel minus these articleTypes, then only classes with > 100 images.
SEED_EXCLUDED_ARTICLE_TYPES = frozenset({
    "Bra", "Kurtas", "Briefs", "Sarees", "Innerwear Vests", "Kurta Sets", "Shrug", "Camisoles",
    "Boxers", "Dupatta", "Capris", "Bath Robe", "Tunics", "Trunk", "Baby Dolls", "Kurtis",
    "Suspenders", "Robe", "Salwar and Dupatta", "Patiala", "Stockings", "Tights", "Churidar",
    "Shapewear", "Nehru Jackets", "Salwar", "Rompers", "Lehenga Choli", "Clothing Set", "Belts",
})
SEED_MIN_CLASS_SIZE = 100
SELECTIONS = ("all", "seed")
SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


class CatalogError(ValueError):
    """The catalog folder or its styles.csv cannot be used; the message names the fix."""


def read_styles_csv(path: Path) -> pd.DataFrame:
    """Read the ORIGINAL styles.csv, including its malformed rows.

    Some product names contain unquoted commas, so those rows have 11-12 fields: the extra fields
    belong to `productDisplayName` and are joined back. `year` may be a float or empty, `usage`
    may be 'NA' or empty: every attribute becomes a string ('' when missing), `year` an Int64.
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"styles.csv not found at {path}: set DATASET_ROOT to the catalog folder")
    rows: list[list[str]] = []
    repaired = skipped = 0
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["id", "gender"]:
            raise CatalogError(f"{path}: expected a header starting with 'id,gender', got {header!r}")
        for fields in reader:
            if not fields or not fields[0].strip():
                continue
            if len(fields) > len(COLUMNS):
                fields = fields[: len(COLUMNS) - 1] + [",".join(fields[len(COLUMNS) - 1:])]
                repaired += 1
            elif len(fields) < len(COLUMNS):
                fields = fields + [""] * (len(COLUMNS) - len(fields))
            if not fields[0].strip().isdigit():
                skipped += 1
                continue
            rows.append([f.strip() for f in fields])
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["id"] = df["id"].astype(np.int64)
    for col in ATTRIBUTE_COLUMNS + ["productDisplayName"]:
        df[col] = df[col].replace({"NA": "", "nan": "", "NaN": ""}).fillna("")
    df["year"] = pd.to_numeric(df["year"], errors="coerce").round().astype("Int64")
    df = df.drop_duplicates("id", keep="first").reset_index(drop=True)
    log.info("read %d products from %s (%d rows with unquoted commas repaired, %d skipped)",
             len(df), path, repaired, skipped)
    return df


@dataclass
class Catalog:
    """The products that have an image, with their attributes (`df` is indexed 0..n-1)."""

    root: Path
    df: pd.DataFrame

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def image_path(self, product_id: int) -> Path:
        return self.images_dir / f"{int(product_id)}.jpg"

    @property
    def ids(self) -> np.ndarray:
        return self.df["id"].to_numpy(np.int64)

    def fingerprint(self) -> str:
        """Changes whenever the set of products or their image files change (size + mtime)."""
        h = hashlib.sha256()
        for pid in self.ids:
            st = self.image_path(pid).stat()
            h.update(f"{pid}:{st.st_size}:{int(st.st_mtime)};".encode())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.df)


def load_catalog(root: Path) -> Catalog:
    """Load the catalog at `root`, dropping (and counting in the log) rows without an image."""
    root = Path(root)
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise CatalogError(
            f"no images/ folder in {root}: set DATASET_ROOT to a Fashion Product Images folder "
            "(styles.csv + images/) or run `imageretrieval download-catalog`"
        )
    df = read_styles_csv(root / "styles.csv")
    present = {int(p.stem) for p in images_dir.glob("*.jpg") if p.stem.isdigit()}
    has_image = df["id"].isin(present)
    missing = int((~has_image).sum())
    if missing:
        log.info("dropped %d products of %s that have no image in %s", missing, root, images_dir)
    df = df[has_image].sort_values("id").reset_index(drop=True)
    if df.empty:
        raise CatalogError(f"{root}: no product of styles.csv has an image in images/")
    return Catalog(root=root, df=df)


def select(df: pd.DataFrame, selection: str) -> pd.DataFrame:
    """`all`, or `seed`: Apparel minus the seed's excluded articleTypes, classes with > 100 images."""
    if selection == "all":
        return df
    if selection == "seed":
        apparel = df[(df["masterCategory"] == "Apparel") & ~df["articleType"].isin(SEED_EXCLUDED_ARTICLE_TYPES)]
        counts = apparel["articleType"].value_counts()
        keep = counts[counts > SEED_MIN_CLASS_SIZE].index
        return apparel[apparel["articleType"].isin(keep)]
    raise CatalogError(f"unknown selection {selection!r}; choose one of {', '.join(SELECTIONS)}")


def stratified_split(labels: pd.Series, seed: int) -> pd.Series:
    """Deterministic seeded 60/20/20 split, stratified by label so every class is in every split."""
    rng = np.random.default_rng(seed)
    split = pd.Series("train", index=labels.index, dtype=object)
    for _, idx in sorted(labels.groupby(labels).groups.items(), key=lambda kv: str(kv[0])):
        idx = np.array(sorted(idx))
        rng.shuffle(idx)
        n = len(idx)
        n_test = int(round(n * SPLIT_FRACTIONS["test"]))
        n_val = int(round(n * SPLIT_FRACTIONS["val"]))
        split.loc[idx[:n_test]] = "test"
        split.loc[idx[n_test:n_test + n_val]] = "val"
    return split


def split_path(workdir: Path, selection: str) -> Path:
    return Path(workdir) / "splits" / f"fashion-{selection}.csv"


def prepare_split(catalog: Catalog, selection: str, workdir: Path, seed: int = 42) -> pd.DataFrame:
    """Compute (or load, when current) the split of a selection; saved as CSV in the workdir."""
    path = split_path(workdir, selection)
    sel = select(catalog.df, selection)
    if sel.empty:
        raise CatalogError(f"the catalog has no product of the {selection!r} selection: choose another "
                           "(--selection all takes every product)")
    if path.is_file():
        try:
            saved = pd.read_csv(path)
            current = set(saved["id"]) == set(sel["id"]) and int(saved["seed"].iloc[0]) == seed
        except (ValueError, KeyError, IndexError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            log.warning("recomputing the damaged split %s (%s)", path, exc)
            current = False
        if current:
            return sel.merge(saved[["id", "split"]], on="id", how="left")
    out = sel.copy()
    out["split"] = stratified_split(out["articleType"], seed).to_numpy()
    table = out[["id", "articleType", "split"]].assign(seed=seed)
    atomic_write(path, lambda p: table.to_csv(p, index=False))
    return out
