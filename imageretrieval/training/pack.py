"""Training packs: a self-contained, compact copy of a training table (train + val images and labels).

Training end to end wants a GPU, and the GPU machine may not hold the datasets (a rented box, a
cluster node with a small upload quota). A pack holds exactly what `train` reads: `table.csv`
(labels, splits, item ids), `pack.json` (the shared label encoding and how the pack was made) and
the images, catalog products byte for byte and DeepFashion photos already brought down to the
catalog's resolution (what the engine's query path does to them anyway: `match_resolution` leaves
them untouched the second time), which makes a photo ~3 KB instead of ~6 KB. `train --pack DIR`
then needs neither DATASET_ROOT nor DEEPFASHION_ROOT. The test splits never enter a pack.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ..artifacts import catalog_resolution
from ..catalog import load_catalog
from ..images import ImageDecodeError, open_image
from ..io_utils import load_json, save_json
from ..preprocess import Preprocess, match_resolution
from ..settings import Settings
from .data import sample_table, training_table
from .labels import LabelEncoding

log = logging.getLogger(__name__)

PACK_FILE, TABLE_FILE = "pack.json", "table.csv"
PACK_VERSION = 1
PHOTO_JPEG_QUALITY = 95
TABLE_COLUMNS = ["key", "path", "articleType", "label", "domain", "split", "item"]


class PackError(ValueError):
    """A pack folder that cannot be used; the message names the folder and the fix."""


def _image_name(domain: str, key: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return f"images/{domain}/{safe}.jpg"


def export_pack(settings: Settings, dataset: str, selection: str, out: Path,
                samples: dict[str, int] | None = None, progress: bool = True) -> dict:
    """Write the train + val rows of `training_table(dataset, selection)` and their images to `out`.

    Written into a temporary folder beside `out` and renamed into place, so an interrupted export
    never leaves a pack that looks complete. Unreadable images are left out (and counted).
    """
    out = Path(out)
    if out.exists():
        raise PackError(f"{out} already exists: choose another --out or delete it first")
    encoding, table = training_table(settings, dataset, selection)
    table = sample_table(table, samples or {}, settings.seed)
    resolution = catalog_resolution(load_catalog(settings.dataset_root))
    photo_decode_size = Preprocess(max(resolution), query_resolution=resolution).decode_size  # as uploads are
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for domain in table["domain"].unique():
        (tmp / "images" / domain).mkdir(parents=True, exist_ok=True)
    rows, skipped, t0 = [], 0, time.perf_counter()
    try:
        for row in tqdm(table.itertuples(index=False), total=len(table), desc="pack", unit="img",
                        disable=not progress):
            name = _image_name(row.domain, row.key)
            try:
                if row.domain == "deepfashion":
                    img = match_resolution(open_image(row.path, min_size=photo_decode_size), resolution)
                    img.save(tmp / name, "JPEG", quality=PHOTO_JPEG_QUALITY)
                else:
                    open_image(row.path)  # checks it decodes; the bytes are copied as they are
                    shutil.copyfile(row.path, tmp / name)
            except (ImageDecodeError, OSError) as exc:
                log.warning("left out of the pack: %s", exc)
                skipped += 1
                continue
            rows.append({**{c: getattr(row, c) for c in TABLE_COLUMNS if c != "path"}, "path": name})
        packed = pd.DataFrame(rows, columns=TABLE_COLUMNS)
        packed.to_csv(tmp / TABLE_FILE, index=False)
        info = {
            "version": PACK_VERSION, "dataset": dataset, "selection": selection, "seed": settings.seed,
            "samples": samples or {}, "classes": list(encoding.classes), "query_resolution": list(resolution),
            "photo_jpeg_quality": PHOTO_JPEG_QUALITY, "skipped": skipped,
            "counts": {f"{d}:{s}": int(n) for (d, s), n in packed.groupby(["domain", "split"]).size().items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        save_json(tmp / PACK_FILE, info)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    info.update(path=str(out), bytes=size, seconds=round(time.perf_counter() - t0, 1))
    log.info("pack %s: %d images, %.1f MB, %d left out", out, len(packed), size / 1e6, skipped)
    return info


def load_pack(directory: Path) -> tuple[LabelEncoding, pd.DataFrame, dict]:
    """(encoding, table with absolute paths, pack.json) of a pack; every listed image must be there."""
    directory = Path(directory)
    if not (directory / PACK_FILE).is_file() or not (directory / TABLE_FILE).is_file():
        raise PackError(f"{directory} is not a training pack (no {PACK_FILE} / {TABLE_FILE}): make one with "
                        "`imageretrieval pack --out DIR`")
    try:
        info = load_json(directory / PACK_FILE)
    except ValueError as exc:  # cut short: DamagedFileError names the file
        raise PackError(str(exc)) from None
    version = info.get("version") if isinstance(info, dict) else None
    if version != PACK_VERSION:
        raise PackError(f"{directory}: pack version {version}, this build reads {PACK_VERSION}: "
                        "export it again with this version")
    try:
        table = pd.read_csv(directory / TABLE_FILE, dtype={"key": str, "item": str}, keep_default_na=False)
        table["path"], table["label"]  # noqa: B018 - the columns every pack has
    except (ValueError, KeyError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise PackError(f"{directory / TABLE_FILE} is damaged ({exc}): export the pack again") from None
    missing = [p for p in table["path"] if not (directory / p).is_file()]
    if missing:
        raise PackError(f"{directory}: {len(missing)} of {len(table)} images are missing (first: {missing[0]}); "
                        "copy the whole pack folder")
    encoding = LabelEncoding(tuple(info["classes"]))
    table = table.assign(path=[str(directory / p) for p in table["path"]], label=table["label"].astype("int64"))
    return encoding, table, info
