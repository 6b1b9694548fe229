"""Training data: labelled tables of both datasets, augmentation, image datasets, class-balanced batches."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T

from ..catalog import Catalog, load_catalog, prepare_split, select
from ..deepfashion import PHOTO_GENDERS
from ..featurestore import deepfashion_table
from ..images import ImageDecodeError, open_image
from ..preprocess import Preprocess, letterbox, match_resolution, to_uint8_tensor
from ..settings import Settings
from .choices import DATASETS
from .labels import LabelEncoding

log = logging.getLogger(__name__)

CATALOG_RESOLUTION = (60, 80)  # median (w, h) of Fashion Product images: the engine's query resolution


def catalog_splits(cat: Catalog, selection: str, settings: Settings) -> pd.DataFrame:
    """The selection's split, except that products of the seed selection keep their seed split.

    Splits are drawn per selection, so a product in the seed test split (the `catalog` protocol's
    queries) may fall in the train split of `all`; overriding keeps every test product out of training.
    """
    table = prepare_split(cat, selection, settings.workdir, settings.seed)
    if selection != "seed" and not select(cat.df, "seed").empty:
        seed = prepare_split(cat, "seed", settings.workdir, settings.seed).set_index("id")["split"]
        in_seed = table["id"].isin(seed.index)
        table.loc[in_seed, "split"] = seed.reindex(table.loc[in_seed, "id"]).to_numpy()
    return table


def training_table(settings: Settings, dataset: str, selection: str = "seed") -> tuple[LabelEncoding, pd.DataFrame]:
    """Rows of the train and val splits (never test) of the chosen dataset(s), with shared labels.

    Columns: key (feature-store id), path, articleType, label, domain ("fashion"/"deepfashion"), split,
    item (the DeepFashion item id: photos of one garment; "" for catalog products, one image each),
    colour and gender (the catalog's baseColour and gender; a photo's gender from its MEN/WOMEN folder,
    no colour; "" when unknown).
    DeepFashion rows whose category has no articleType (or one outside the encoding) are dropped.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    cat = load_catalog(settings.dataset_root)
    catalog = catalog_splits(cat, selection, settings)
    catalog = catalog.assign(path=[str(cat.image_path(i)) for i in catalog["id"]])
    encoding = LabelEncoding.shared(catalog["articleType"].unique())
    parts = []
    if dataset in ("fashion", "both"):
        parts.append(pd.DataFrame({
            "key": catalog["id"].astype(str), "path": catalog["path"], "articleType": catalog["articleType"],
            "domain": "fashion", "split": catalog["split"], "item": "",
            "colour": catalog["baseColour"].fillna("").astype(str), "gender": catalog["gender"].fillna("").astype(str),
        }))
    if dataset in ("deepfashion", "both"):
        df = deepfashion_table(settings, "all")
        parts.append(pd.DataFrame({
            "key": df["image_id"].astype(str), "path": df["path"], "articleType": df["articleType"],
            "domain": "deepfashion", "split": df["split"], "item": df["item_id"].astype(str),
            "colour": "", "gender": df["gender"].map(PHOTO_GENDERS).fillna("").astype(str),
        }))
    table = pd.concat(parts, ignore_index=True)
    table = table[table["split"].isin(["train", "val"])]
    table = table.assign(label=encoding.encode(table["articleType"]))
    dropped = int((table["label"] < 0).sum())
    if dropped:
        log.info("dropped %d rows without a mapped articleType", dropped)
    table = table[table["label"] >= 0].reset_index(drop=True)
    log.info("training table: %s", table.groupby(["domain", "split"]).size().to_dict())
    return encoding, table


def sample_table(table: pd.DataFrame, samples: dict[str, int], seed: int) -> pd.DataFrame:
    """Keep a seeded sample of at most n rows of each `{"domain:split": n}` group (a CPU-budget option)."""
    if not samples:
        return table
    parts = []
    for (domain, split), rows in table.groupby(["domain", "split"], sort=False):
        cap = samples.get(f"{domain}:{split}")
        parts.append(rows.sample(cap, random_state=seed) if cap and len(rows) > cap else rows)
    return pd.concat(parts).sort_index().reset_index(drop=True)


def train_transform(size: int, scale: tuple[float, float] = (0.6, 1.0)) -> T.Compose:
    """Augmentation of a letterboxed image: colour jitter, random resized crop to `size`, horizontal flip.

    The jitter (its hue step converts to HSV: the costliest op) runs before the upscaling crop, on the
    image at its own resolution (60x80 catalog shots: ~8x fewer pixels than 224x224), which halves
    the CPU cost per image; the pointwise jitter commutes with resizing up to interpolation.
    """
    return T.Compose([
        T.ColorJitter(0.3, 0.3, 0.2, 0.02),
        T.RandomResizedCrop(size, scale=scale, ratio=(0.8, 1.25), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
    ])


class ImageTable(Dataset):
    """(uint8 image tensor, label). Photos (`downscale`) go through the engine's query path first (decoded
    as an upload is, then brought to `query_resolution`).

    `augment` None = the evaluation preprocessing; unreadable images become white with label -1.
    """

    def __init__(self, paths, labels, size: int, augment: T.Compose | None = None, downscale=None,
                 query_resolution: tuple[int, int] = CATALOG_RESOLUTION):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size = size
        self.augment = augment
        self.downscale = np.zeros(len(self.paths), bool) if downscale is None else np.asarray(downscale, bool)
        self.query_resolution = query_resolution
        self.plain = Preprocess(size)
        self.photo_decode_size = Preprocess(size, query_resolution=query_resolution).decode_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            img = open_image(self.paths[i], min_size=self.photo_decode_size if self.downscale[i] else None)
        except ImageDecodeError as exc:
            log.warning("skipping unreadable image: %s", exc)
            return torch.full((3, self.size, self.size), 255, dtype=torch.uint8), -1
        if self.downscale[i]:
            img = match_resolution(img, self.query_resolution)
        if self.augment is None:
            return self.plain(img), int(self.labels[i])
        img: Image.Image = self.augment(letterbox(img, min(max(img.size), self.size)))
        return to_uint8_tensor(img), int(self.labels[i])


def image_table_dataset(table: pd.DataFrame, size: int, augment: bool) -> ImageTable:
    return ImageTable(table["path"], table["label"], size, train_transform(size) if augment else None,
                      downscale=(table["domain"] == "deepfashion").to_numpy())


def balanced_batches(labels: np.ndarray, m: int, batch_size: int, n_batches: int, rng: np.random.Generator,
                     domains: np.ndarray | None = None) -> list[np.ndarray]:
    """Batches of `batch_size // m` classes x `m` samples (with replacement only for tiny classes).

    With `domains`, each class's m samples are spread over the domains that have it, so every
    batch pulls catalog products and photos of a class towards the same proxy.
    """
    labels = np.asarray(labels)
    domains = np.zeros(len(labels), np.int64) if domains is None else np.asarray(domains)
    pools: dict[int, list[np.ndarray]] = {}
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        pools[int(c)] = [idx[domains[idx] == d] for d in np.unique(domains[idx])]
    classes = np.array(sorted(pools))
    per_batch = max(1, min(len(classes), batch_size // m))
    batches = []
    for _ in range(n_batches):
        chosen = rng.choice(classes, size=per_batch, replace=False)
        batch = []
        for c in chosen:
            groups = pools[int(c)]
            counts = np.full(len(groups), m // len(groups))
            counts[rng.permutation(len(groups))[: m % len(groups)]] += 1
            for group, k in zip(groups, counts, strict=True):
                if k:
                    batch.append(rng.choice(group, size=k, replace=len(group) < k))
        batches.append(np.concatenate(batch))
    return batches


class ClassBalancedSampler(Sampler[list[int]]):
    """Batch sampler over `balanced_batches`; reseeded per epoch (call `set_epoch`) for reproducibility."""

    def __init__(self, labels, m: int, batch_size: int, seed: int = 0, domains=None, n_batches: int | None = None):
        self.labels, self.domains = np.asarray(labels), domains
        self.m, self.batch_size, self.seed, self.epoch = m, batch_size, seed, 0
        self.n_batches = n_batches or max(1, len(self.labels) // batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for b in balanced_batches(self.labels, self.m, self.batch_size, self.n_batches, rng, self.domains):
            yield b.tolist()

    def __len__(self) -> int:
        return self.n_batches
