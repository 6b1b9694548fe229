"""`imageretrieval extract`: resumable, batched feature extraction for a dataset split."""

from __future__ import annotations

from pathlib import Path

from ..catalog import SELECTIONS
from ..extract import extract_features, feature_dir
from ..featurestore import deepfashion_table, fashion_table
from ..models import create_model
from ..models.registry import weights_fingerprint


def register(sub) -> None:
    p = sub.add_parser("extract", help="extract features (resumable) for the catalog or DeepFashion")
    p.add_argument("--model", default=None, help="model name (default: settings DEFAULT_MODEL)")
    p.add_argument("--dataset", choices=["fashion", "deepfashion"], default="fashion")
    p.add_argument("--split", choices=["all", "train", "val", "test"], default="all")
    p.add_argument("--selection", choices=SELECTIONS, default="all", help="catalog selection (fashion only)")
    p.set_defaults(func=run)


def dataset_paths(settings, dataset: str, split: str, selection: str = "all"):
    """(name, paths, ids) of a dataset split; names key the feature folders."""
    if dataset == "fashion":
        df = fashion_table(settings, selection, split)
        name = f"fashion-{selection}" + ("" if split == "all" else f"-{split}")
        return name, [Path(p) for p in df["path"]], df["id"].to_numpy()
    df = deepfashion_table(settings, split)
    name = "deepfashion" + ("" if split == "all" else f"-{split}")
    return name, [Path(p) for p in df["path"]], df["image_id"].to_numpy().astype(str)


def run(args, settings) -> int:
    name = args.model or settings.default_model
    model = create_model(name, workdir=settings.workdir)
    ds_name, paths, ids = dataset_paths(settings, args.dataset, args.split, args.selection)
    out = feature_dir(settings.workdir, name, ds_name)
    fs = extract_features(
        model, paths, ids, out, batch_size=settings.batch_size, num_workers=settings.num_workers,
        device=settings.device, precision=settings.precision,
        fingerprint=model.config.fingerprint() + weights_fingerprint(model.config, settings.workdir),
    )
    print(f"{len(fs.ids)} feature vectors of {fs.features.shape[1]} dims in {out}")
    return 0
