"""Cached raw features by (model, dataset, split), reusing supersets instead of re-encoding.

Evaluation, PCA tuning and training all ask for e.g. "efficientnet_lite0 features of the seed
test split"; when the whole catalog (`fashion-all`) is already extracted, the rows are sliced
from it (same model, same preprocessing = the same numbers), otherwise only the subset is encoded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .catalog import load_catalog, prepare_split
from .extract import FeatureSet, extract_features, feature_dir, load_features
from .io_utils import load_json
from .models import create_model, get_model_config
from .models.registry import weights_fingerprint
from .preprocess import Preprocess
from .settings import Settings

log = logging.getLogger(__name__)


def fashion_table(settings: Settings, selection: str = "all", split: str = "all") -> pd.DataFrame:
    """Catalog rows (with a `split` column when a split is asked for) of a selection."""
    catalog = load_catalog(settings.dataset_root)
    if selection == "all" and split == "all":
        return catalog.df.assign(path=[str(catalog.image_path(i)) for i in catalog.ids])
    df = prepare_split(catalog, selection, settings.workdir, settings.seed)
    if split != "all":
        df = df[df["split"] == split]
    return df.assign(path=[str(catalog.image_path(i)) for i in df["id"]]).reset_index(drop=True)


def deepfashion_table(settings: Settings, split: str = "all") -> pd.DataFrame:
    from .deepfashion import load_deepfashion

    df = load_deepfashion(settings.deepfashion_root, settings.seed)
    return (df if split == "all" else df[df["split"] == split]).reset_index(drop=True)


def _fingerprint(settings: Settings, model_name: str) -> str:
    config = get_model_config(model_name, settings.workdir)
    return config.fingerprint() + weights_fingerprint(config, settings.workdir)


def _slice(fs: FeatureSet, ids: np.ndarray) -> FeatureSet | None:
    pos = {str(v): i for i, v in enumerate(fs.ids)}
    rows = [pos.get(str(v)) for v in ids]
    if any(r is None for r in rows):
        return None
    return FeatureSet(fs.features[np.asarray(rows, dtype=np.int64)], np.asarray(ids))


def get_features(
    settings: Settings,
    model_name: str,
    dataset: str,
    split: str = "all",
    selection: str = "all",
    query_resolution: tuple[int, int] | None = None,
    progress: bool = True,
) -> tuple[FeatureSet, pd.DataFrame]:
    """Raw features of a dataset split, aligned row by row with the returned metadata table.

    dataset: "fashion" (ids are product ids) or "deepfashion" (ids are image ids). With
    `query_resolution`, images are first brought down to that (w, h) — the engine's query path.
    """
    table = fashion_table(settings, selection, split) if dataset == "fashion" else deepfashion_table(settings, split)
    ids = table["id"].to_numpy() if dataset == "fashion" else table["image_id"].to_numpy().astype(str)
    fp = _fingerprint(settings, model_name)
    suffix = "" if query_resolution is None else f"-q{query_resolution[0]}x{query_resolution[1]}"
    candidates = [f"{dataset}-all{suffix}"] if dataset == "deepfashion" else [f"fashion-all{suffix}"]
    name = f"{dataset}-{selection}-{split}{suffix}" if dataset == "fashion" else f"deepfashion-{split}{suffix}"
    candidates.append(name)
    for cand in candidates:
        directory = feature_dir(settings.workdir, model_name, cand)
        meta_path = directory / "meta.json"
        fs = load_features(directory)
        if fs is None or not meta_path.is_file() or load_json(meta_path).get("fingerprint") != fp:
            continue
        sliced = _slice(fs, ids)
        if sliced is not None:
            return sliced, table
    model = create_model(model_name, workdir=settings.workdir)
    cfg = model.config
    fs = extract_features(
        model, [Path(p) for p in table["path"]], ids, feature_dir(settings.workdir, model_name, name),
        preprocess=Preprocess(cfg.input_size, cfg.resize_mode, query_resolution),
        batch_size=settings.batch_size, num_workers=settings.num_workers, device=settings.device,
        precision=settings.precision, fingerprint=fp, progress=progress,
    )
    return fs, table
