"""`imageretrieval extract`: resumable, batched feature extraction for a dataset split."""

from __future__ import annotations

from pathlib import Path

from ..catalog import SELECTIONS


def register(sub) -> None:
    p = sub.add_parser("extract", help="extract features (resumable) for the catalog or DeepFashion",
                       description="Encode a dataset split once into the feature store, where evaluation, "
                                   "training and indexing read it. Rows another cached set of the model already "
                                   "holds are copied, not encoded again; a composite encodes through its members.")
    p.add_argument("--model", default=None, help="model name (default: settings DEFAULT_MODEL)")
    p.add_argument("--dataset", choices=["fashion", "deepfashion"], default="fashion")
    p.add_argument("--split", choices=["all", "train", "val", "test"], default="all")
    p.add_argument("--selection", choices=SELECTIONS, default="all", help="catalog selection (fashion only)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="encode on Ray Data actors: alone = Ray on this machine; 'auto' = the running cluster; or "
                        "its address (the dataset and workdir at the same paths on every node)")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from ..featurestore import get_features

    name = args.model or settings.default_model
    if args.ray:
        settings.ray_address = args.ray
    fs, _ = get_features(settings, name, args.dataset, args.split, args.selection)
    where = Path(settings.workdir) / "features"
    print(f"{len(fs.ids)} feature vectors of {fs.features.shape[1]} dims ({int((~fs.valid).sum())} unreadable "
          f"images) cached under {where}")
    return 0
