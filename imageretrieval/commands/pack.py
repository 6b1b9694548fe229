"""`imageretrieval pack`: export a self-contained training pack (train + val images, labels) for `train --pack`."""

from __future__ import annotations

import json
from pathlib import Path

from ..training.choices import DATASETS
from .train import parse_samples


def register(sub) -> None:
    p = sub.add_parser("pack", help="export the train + val images and labels for training elsewhere",
                       description="Write a training pack: table.csv, pack.json (label encoding) and the images, "
                                   "photos already at the catalog's resolution. Copy the folder to a GPU machine "
                                   "and run `imageretrieval train --pack DIR` there. Test splits are never packed.")
    p.add_argument("--out", required=True, help="new folder to write (must not exist)")
    p.add_argument("--dataset", choices=DATASETS, default="both")
    p.add_argument("--selection", default="all", help="catalog selection (all | seed)")
    p.add_argument("--sample", action="append", default=[], metavar="DATASET:SPLIT=N",
                   help="pack a seeded sample of N images of that split (repeatable), e.g. fashion:val=3000")
    p.add_argument("--json", action="store_true", help="print the pack summary as JSON")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from ..cli import CLIError
    from ..training.pack import export_pack

    try:
        info = export_pack(settings, args.dataset, args.selection, Path(args.out), parse_samples(args.sample))
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{info['path']}: {sum(info['counts'].values())} images ({info['counts']}), "
              f"{info['bytes'] / 1e6:.1f} MB, {info['skipped']} left out, {info['seconds']} s")
    return 0
