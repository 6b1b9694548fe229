"""`imageretrieval make-synthetic`: generate a small synthetic catalog (demo fallback, tests)."""

from __future__ import annotations

from pathlib import Path

from ..cli import positive_int
from ..synthetic import CLASSES, make_synthetic_catalog


def register(sub) -> None:
    p = sub.add_parser("make-synthetic", help="write a synthetic catalog (clearly labelled) to a folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-class", type=positive_int, default=60, help=f"products per class ({len(CLASSES)} classes)")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from ..cli import CLIError

    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise CLIError(f"--out {args.out} exists and is not an empty folder: give a new folder (a catalog there "
                       "would be overwritten)")
    make_synthetic_catalog(args.out, per_class=args.per_class)
    print(f"synthetic catalog with {args.per_class * len(CLASSES)} products in {args.out}")
    return 0
