"""`imageretrieval download-catalog`: fetch Fashion Product Images (small) into the workdir.

Prints the catalog folder on stdout (the only line it prints there), so scripts can do
`DATASET_ROOT=$(imageretrieval download-catalog --fallback-synthetic)`. With no network and
`--fallback-synthetic`, it writes a small synthetic catalog instead (marked SYNTHETIC: the API and
the web app say so).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..download import (
    DEFAULT_REPO,
    DEFAULT_REVISION,
    NetworkUnavailableError,
    default_catalog_dir,
    fetch_catalog,
)

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "download-catalog",
        help="download Fashion Product Images (small) from the Hugging Face hub (resumable, verified)",
        description="Download the parquet copy of Fashion Product Images (small) and write styles.csv + images/. "
                    "Prints the catalog folder. A no-op when the catalog is already complete.",
    )
    p.add_argument("--out", type=Path, help="catalog folder (default: WORKDIR/catalog/fashion-product-small)")
    p.add_argument("--repo", default=DEFAULT_REPO, help=f"hub dataset (default: {DEFAULT_REPO})")
    p.add_argument("--revision", default=DEFAULT_REVISION, help="branch, tag or commit (default: main)")
    p.add_argument("--endpoint", help="hub address (default: env HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--force", action="store_true", help="download again even when the catalog is complete")
    p.add_argument("--keep-downloads", action="store_true", help="keep the parquet files after conversion")
    p.add_argument("--fallback-synthetic", action="store_true",
                   help="when the hub cannot be reached, write a small synthetic catalog instead")
    p.add_argument("--synthetic-per-class", type=int, default=60, help="products per class of the fallback")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from ..cli import CLIError
    from ..download import DownloadError

    workdir = Path(settings.workdir)
    out = args.out or default_catalog_dir(workdir)
    try:
        path = fetch_catalog(out, workdir / "downloads", endpoint=args.endpoint, repo=args.repo,
                             revision=args.revision, force=args.force, keep_downloads=args.keep_downloads,
                             progress=not args.no_progress)
    except NetworkUnavailableError as exc:
        if not args.fallback_synthetic:
            raise CLIError(f"{exc} (use --fallback-synthetic for a generated demo catalog)") from exc
        path = synthetic_fallback(workdir, args.synthetic_per_class, str(exc))
    except DownloadError as exc:
        raise CLIError(str(exc)) from exc
    print(path)
    return 0


def synthetic_fallback(workdir: Path, per_class: int, reason: str) -> Path:
    from ..synthetic import make_synthetic_catalog

    out = workdir / "catalog" / "synthetic"
    if (out / "SYNTHETIC").is_file() and (out / "styles.csv").is_file():
        log.warning("%s: using the synthetic demo catalog in %s", reason, out)
        return out
    log.warning("%s: writing a synthetic demo catalog to %s instead (labelled synthetic in the app)", reason, out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    make_synthetic_catalog(staging, per_class=per_class)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m imageretrieval.commands.download_catalog ...`: the same command without importing
    the whole CLI (and PyTorch with it), so that `make demo` checks the catalog in a second or two."""
    import argparse
    import sys

    from ..cli import CLIError
    from ..settings import Settings

    parser = argparse.ArgumentParser(prog="imageretrieval")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["download-catalog", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return run(args, Settings())
    except CLIError as exc:
        print(f"imageretrieval download-catalog: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
