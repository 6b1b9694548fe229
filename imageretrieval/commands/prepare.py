"""`imageretrieval prepare`: load the catalog, compute the seeded split, print counts."""

from __future__ import annotations

import json

from ..catalog import SELECTIONS, load_catalog, prepare_split


def register(sub) -> None:
    p = sub.add_parser("prepare", help="load the catalog, save the train/val/test split, print counts")
    p.add_argument("--selection", choices=SELECTIONS, default="seed")
    p.add_argument("--seed", type=int, default=None, help="split seed (default: settings SEED, 42)")
    p.add_argument("--deepfashion", action="store_true", help="also split DeepFashion In-shop (item-disjoint)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    catalog = load_catalog(settings.dataset_root)
    seed = settings.seed if args.seed is None else args.seed
    split = prepare_split(catalog, args.selection, settings.workdir, seed)
    table = split.groupby(["articleType", "split"]).size().unstack(fill_value=0)
    table = table.reindex(columns=["train", "val", "test"], fill_value=0)
    table["total"] = table.sum(axis=1)
    table = table.sort_values("total", ascending=False)
    result = {"selection": args.selection, "products": len(split),
              "splits": split["split"].value_counts().to_dict(), "classes": table.to_dict(orient="index")}
    if args.deepfashion:
        from ..deepfashion import load_deepfashion

        df = load_deepfashion(settings.deepfashion_root, seed=seed)
        result["deepfashion"] = {"images": len(df), "items": int(df["item_id"].nunique()),
                                 "splits": df["split"].value_counts().to_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"selection {args.selection}: {len(split)} products, {len(table)} classes, seed {seed}")
    print("split sizes: " + ", ".join(f"{k} {v}" for k, v in result["splits"].items()))
    print(table.to_string())
    if args.deepfashion:
        d = result["deepfashion"]
        print(f"DeepFashion In-shop: {d['images']} images of {d['items']} items; "
              + ", ".join(f"{k} {v}" for k, v in d["splits"].items()))
    return 0
