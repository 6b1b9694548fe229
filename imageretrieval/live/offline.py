"""Catalog writes outside the service (the `catalog` CLI): the same store and journal, in one process.

Vectors are computed for every built index of the workdir (or the models named), so a service that
starts, or one that is running and tails the journal, applies the writes without encoding again.
Large loads are committed in chunks, each one transaction; a rerun after an interruption skips what
landed (re-adding the same product with the same image is a no-op).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..settings import Settings
from .blobs import normalized_jpeg
from .products import check_fields, check_id
from .store import Change, DuplicateProductError, LiveCatalog, UnknownLiveProductError, Write, storage_error

log = logging.getLogger(__name__)

CHUNK = 256  # products per transaction of a large load
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class ProductWrite:
    kind: str  # add | update | delete
    id: int
    fields: dict | None = None
    image: Path | None = None


def find_image(folder: Path, product_id: int) -> Path | None:
    """`<folder>/<id>.<image extension>`, any common extension and case."""
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{product_id}{ext}", folder / f"{product_id}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def built_indexes(workdir: Path) -> list[str]:
    root = Path(workdir) / "indexes"
    return sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []


def write_products(settings: Settings, writes: Sequence[ProductWrite], models: Sequence[str] | None = None,
                   progress: bool = True) -> tuple[list[Change], list[str]]:
    """Validate every row first (a bad row or an unknown id writes nothing), then store, encode and journal
    by chunks: an image that fails to decode stops the load there, the chunks before it kept (a rerun
    skips them).

    Returns the changes and the models whose vectors were journaled with them.
    """
    from tqdm import tqdm

    from ..engine import RetrievalEngine
    from ..images import ImageDecodeError

    catalog = LiveCatalog(settings.dataset_root, settings.workdir)
    checked: list[Write] = []
    seen: set[int] = set()
    for w in writes:
        pid = check_id(w.id)
        where = f"product {pid}: "
        if pid in seen:
            raise DuplicateProductError(f"product {pid} appears twice in one load: keep one row")
        seen.add(pid)
        fields = None if w.kind == "delete" else check_fields(w.fields or {}, partial=w.kind == "update", where=where)
        if w.kind == "add" and w.image is None:
            raise ImageDecodeError(f"{where}no image: put {pid}.jpg (or .png, .webp) in the images folder")
        before = catalog.current(pid)
        if w.kind != "add" and before is None:
            raise UnknownLiveProductError(f"unknown product id {pid}: nothing to {w.kind}")
        if w.kind == "add" and before is not None and not _same_product(catalog, pid, before, fields, w.image):
            raise DuplicateProductError(f"product {pid} already exists with other data: update it instead")
        checked.append(Write(w.kind, pid, fields))
    names = list(models) if models is not None else built_indexes(settings.workdir)
    engines = [RetrievalEngine(settings, name, catalog) for name in names]
    shared = [engine for engine in engines if engine.shared]

    def apply_shared(ops) -> None:  # Milvus: applied by this writer, with the journal locked (journal order)
        for engine in shared:
            engine.apply_ops(ops)

    changes: list[Change] = []
    bar = tqdm(total=len(checked), unit="product", desc="catalog", disable=not progress)
    for start in range(0, len(checked), CHUNK):
        chunk = list(zip(checked[start: start + CHUNK], writes[start: start + CHUNK], strict=True))
        stored: list[Write] = []
        images: dict[str, bytes] = {}
        for write, request in chunk:
            sha = None
            if request.image is not None:
                try:
                    jpeg = normalized_jpeg(Path(request.image))
                except ImageDecodeError as exc:
                    raise ImageDecodeError(f"product {write.id}: {exc}") from None
                try:
                    sha = catalog.blobs.put(jpeg)
                except OSError as exc:
                    raise storage_error(exc) from exc
                images[sha] = jpeg
            stored.append(Write(write.kind, write.id, write.fields, sha))
        vectors = {engine.vector_key: _encode(engine, images) for engine in engines} if images else {}
        try:
            result = catalog.commit(stored, vectors, {"source": "cli"}, on_commit=apply_shared if shared else None)
        except OSError as exc:
            raise storage_error(exc) from exc
        changes += result.changes
        bar.update(len(chunk))
    bar.close()
    return changes, names


def _same_product(catalog: LiveCatalog, pid: int, before, fields: dict, image: Path) -> bool:
    """Whether re-adding `pid` would change nothing (checked before the first chunk is written)."""
    from ..images import ImageDecodeError

    if before.fields != fields:
        return False
    try:
        jpeg = normalized_jpeg(Path(image))
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"product {pid}: {exc}") from None
    stored = catalog.blobs.path(before.image) if before.image else catalog.images_dir / f"{pid}.jpg"
    try:
        return jpeg == (stored.read_bytes() if before.image else normalized_jpeg(stored))
    except (OSError, ImageDecodeError):
        return False


def _encode(engine, images: dict[str, bytes]) -> dict[str, np.ndarray]:
    from ..images import open_image

    shas = list(images)
    vectors = engine.encode([open_image(images[s], min_size=engine.decode_size) for s in shas])
    return dict(zip(shas, vectors, strict=True))
