"""Catalog writes outside the service (the `catalog` CLI): the same store and journal, in one process.

Vectors are computed for every built index of the workdir (or the models named), so a service that
starts, or one that is running and tails the journal, applies the writes without encoding again.
Large loads are committed in chunks, each one transaction; a rerun after an interruption skips what
landed (re-adding the same product with the same image is a no-op).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..settings import Settings
from .blobs import STORE_THREADS, normalized_jpeg
from .prepare import PreparedImage, prepare_image
from .products import check_fields, check_id
from .store import Change, DuplicateProductError, LiveCatalog, UnknownLiveProductError, Write, storage_error

log = logging.getLogger(__name__)

CHUNK = 256  # products per transaction of a large load
ENCODE_BATCH = 32  # images per forward
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
    chunks = [list(zip(checked[start: start + CHUNK], writes[start: start + CHUNK], strict=True))
              for start in range(0, len(checked), CHUNK)]
    # A pipeline, as extraction's: one thread decodes the images ahead (the next chunk's while this one is
    # encoded), the store threads flush them to disk, the encoders run batches as the images come.
    decode_pool = ThreadPoolExecutor(1, thread_name_prefix="catalog-decode")
    store_pool = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="catalog-store")

    def prepare_ahead(chunk) -> list[Future | None]:
        return [decode_pool.submit(_prepare, request.image, engines) if request.image is not None else None
                for _, request in chunk]

    started = time.perf_counter()
    try:
        ahead = prepare_ahead(chunks[0]) if chunks else []
        for k, chunk in enumerate(chunks):
            prepared, ahead = ahead, prepare_ahead(chunks[k + 1]) if k + 1 < len(chunks) else []
            stored: list[Write] = []
            stores: dict[str, Future] = {}  # sha -> its flush (an image twice in a chunk: stored, encoded once)
            vectors: dict[str, dict[str, np.ndarray]] = {engine.vector_key: {} for engine in engines}
            batch: list[PreparedImage] = []
            for i, (write, _) in enumerate(chunk):
                future, prepared[i] = prepared[i], None  # each image's inputs freed once encoded
                sha = None
                if future is not None:
                    try:
                        image = future.result()
                    except ImageDecodeError as exc:
                        raise ImageDecodeError(f"product {write.id}: {exc}") from None
                    sha = image.sha
                    if sha not in stores:
                        stores[sha] = store_pool.submit(catalog.blobs.put, image.stored)
                        batch.append(image)
                    if len(batch) == ENCODE_BATCH:
                        _raise_failed_store(stores.values())  # a full disk stops the load now
                        _encode(engines, batch, vectors)
                        batch = []
                stored.append(Write(write.kind, write.id, write.fields, sha))
            _encode(engines, batch, vectors)
            try:
                for store in stores.values():  # every image durable before the journal names it
                    store.result()
                result = catalog.commit(stored, vectors if stores else {}, {"source": "cli"},
                                        on_commit=apply_shared if shared else None)
            except OSError as exc:
                raise storage_error(exc) from exc
            changes += result.changes
            bar.update(len(chunk))
    finally:
        decode_pool.shutdown(wait=True, cancel_futures=True)
        store_pool.shutdown(wait=True)
    bar.close()
    elapsed = time.perf_counter() - started
    log.info("%d products written in %.1f s (%.1f products/s; %d models)", len(checked), elapsed,
             len(checked) / max(elapsed, 1e-9), len(engines))
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


def _prepare(path: Path, engines) -> PreparedImage:
    """Decode thread: the image file stored and encoded as an upload of the same file would be."""
    from ..images import ImageDecodeError

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return prepare_image(data, engines)


def _raise_failed_store(stores) -> None:
    for store in stores:
        if store.done() and store.exception() is not None:
            exc = store.exception()
            if isinstance(exc, OSError):
                raise storage_error(exc) from exc
            raise exc


def _encode(engines, images: list[PreparedImage], vectors: dict[str, dict[str, np.ndarray]]) -> None:
    """Each engine's vectors of `images` into `vectors[engine.vector_key]` (sha -> vector): one forward each."""
    if not images:
        return
    for m, engine in enumerate(engines):
        encoded = engine.encode_tensors(np.stack([image.inputs[m] for image in images]), background=True)
        vectors[engine.vector_key].update(zip((image.sha for image in images), encoded, strict=True))
