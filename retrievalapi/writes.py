"""Live-catalog writes in the service: validate, store images, encode for every loaded model, journal,
apply to every index, then acknowledge. Other processes' writes (the CLI) are picked up by a tailer.

Order of a write: cheap checks first (fields, ids against the current catalog: a bad request costs
nothing), then each image is decoded and normalized (one thread of its own) and stored durably by
hash (threads that mostly wait for the disk, so the flushes overlap the decoding and encoding), then
encoded by every loaded model in small chunks on the inference thread as background work (searches
queued meanwhile run first, between chunks), then, once every image is durable, one thread journals
the transaction (fsync), applies it to the catalog and to every model's index (one state swap each)
and only then answers. Writes are serialized by that thread; searches never wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from imageretrieval.backends import BackendUnavailableError
from imageretrieval.engine import RetrievalEngine
from imageretrieval.images import ImageDecodeError
from imageretrieval.keys import ApiKey
from imageretrieval.live.blobs import STORE_THREADS
from imageretrieval.live.prepare import prepare_image
from imageretrieval.live.products import check_fields, check_id
from imageretrieval.live.store import CommitResult, LiveCatalog, UnknownLiveProductError, Write, storage_error

from .metrics import Metrics
from .priority import PriorityExecutor

log = logging.getLogger(__name__)

ENCODE_CHUNK = 8  # images per forward of a write alone: a search queued behind it waits for one chunk at most
QUIET_CHUNK = 1  # ... while searches are about: a shorter wait for the next one
RECENT_SEARCH_S = 0.1  # a search this recent means more may follow
MAX_YIELD_S = 0.25  # a write waits at most this long per step for in-flight searches to finish
WRITE_NICE = 19  # the writes' own threads (image preparation, journal) run at the lowest CPU priority
PLACEHOLDER_IMAGE = "0" * 64  # planning before the images are stored: only errors matter then
TAIL_INTERVAL_S = 0.5


class WriteImageError(ValueError):
    """An uploaded product image cannot be used (400); the message names the product."""


def lower_thread_priority() -> None:
    """Thread initializer: the OS runs this thread only when search threads leave a core free (Linux
    schedules threads by their own nice value; elsewhere a no-op)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITE_NICE)
    except (AttributeError, OSError):
        pass


class SearchActivity:
    """Searches in progress and the time of the last one: a bulk write steps aside while shoppers search."""

    def __init__(self) -> None:
        self.inflight = 0
        self.last = 0.0

    def begin(self) -> None:
        self.inflight += 1
        self.last = time.monotonic()

    def end(self) -> None:
        self.inflight -= 1
        self.last = time.monotonic()

    def recent(self, seconds: float = RECENT_SEARCH_S) -> bool:
        return self.inflight > 0 or time.monotonic() - self.last < seconds


@dataclass
class WriteRequest:
    kind: str  # add | update | delete
    id: int
    fields: dict | None = None
    image: bytes | None = None  # as uploaded
    replace: bool = False  # update: the fields given replace all of them (PUT), else they are merged


class CatalogWriter:
    def __init__(self, catalog: LiveCatalog, engines: dict[str, RetrievalEngine], metrics: Metrics,
                 inference_pool: PriorityExecutor, max_image_pixels: int, compact_every: int,
                 searches: SearchActivity | None = None):
        self.catalog = catalog
        self.searches = searches or SearchActivity()
        self.engines = engines
        self.metrics = metrics
        self.inference_pool = inference_pool
        # one thread decodes and normalizes the writes' images: a bulk load takes at most one core from the
        # searches' own decoding, and their forwards go first on the inference thread
        self.decode_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-decode",
                                              initializer=lower_thread_priority)
        self.store_pool = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="write-store",
                                             initializer=lower_thread_priority)
        self.max_image_pixels = max_image_pixels
        self.compact_every = compact_every
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog-writer",
                                         initializer=lower_thread_priority)
        self.maintenance = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-rebuild")
        self._tailer: asyncio.Task | None = None
        self._unsynced: set[int] = set()  # ids journaled but maybe not applied to a shared index
        self._unsynced_lock = threading.Lock()  # request threads add, the writer thread takes
        self.active = 0  # writes in progress (KEEP_WARM_MS stays out of their way)

    # ----- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._tailer = asyncio.get_running_loop().create_task(self._tail(), name="catalog-tailer")

    async def close(self) -> None:
        if self._tailer is not None:
            self._tailer.cancel()
        self.thread.shutdown(wait=True)
        self.decode_pool.shutdown(wait=True)
        self.store_pool.shutdown(wait=True)
        self.maintenance.shutdown(wait=True, cancel_futures=True)

    async def _tail(self) -> None:
        """Apply what other processes journaled (e.g. `imageretrieval catalog add` on this workdir)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TAIL_INTERVAL_S)
            try:
                await loop.run_in_executor(self.thread, self._catch_up)
            except Exception:  # noqa: BLE001 - keep tailing; the log says why
                log.exception("applying other writers' catalog changes failed")

    def _catch_up(self, resync: bool = True) -> None:
        ops = self.catalog.catch_up()
        if ops:
            for engine in self.engines.values():
                if not engine.shared:
                    engine.apply_ops(ops)
            if any(engine.shared for engine in self.engines.values()):
                self.unsynced(op.id for op in ops)  # their writer applied them, unless it had no such index
            log.info("applied %d catalog changes written by another process", len(ops))
            self._maintain()
        if resync and self._unsynced:
            self._resync()

    def unsynced(self, ids) -> None:
        """Ids journaled that a shared index may lack (another process wrote them, or applying failed):
        checked against the shared indexes at the next tail."""
        with self._unsynced_lock:
            self._unsynced.update(ids)

    def _resync(self) -> None:
        """Writer thread: bring shared indexes up to the catalog for the unsynced ids (idempotent)."""
        with self._unsynced_lock:
            ids = sorted(self._unsynced)
        with self.catalog.synced():
            for engine in self.engines.values():
                if engine.shared:
                    engine.sync_backend(ids)
        with self._unsynced_lock:
            self._unsynced.difference_update(ids)
        log.debug("shared indexes checked against %d journaled changes", len(ids))

    # ----- the write ----------------------------------------------------------------------------
    async def write(self, requests: list[WriteRequest], key: ApiKey | None) -> dict:
        """All requests as one transaction: every one applied, or (with the error) none."""
        self.active += 1
        try:
            return await self._write(requests, key)
        finally:
            self.active -= 1

    async def _write(self, requests: list[WriteRequest], key: ApiKey | None) -> dict:
        started = time.perf_counter()
        writes = self._validated(requests)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.thread, self._precheck, writes)  # unknown ids fail before any work
        shas, vectors = await self._prepare_images(requests)
        writes = [Write(w.kind, w.id, w.fields, sha) for w, sha in zip(writes, shas, strict=True)]
        meta = {"key": key.id if key is not None else None}
        try:
            result, size = await loop.run_in_executor(self.thread, self._commit, writes, vectors, meta)
        except OSError as exc:
            raise storage_error(exc) from exc
        elapsed = time.perf_counter() - started
        self.metrics.catalog_writes.inc(len(result.ops))
        log.info("catalog write seq %d: %s in %.0f ms", result.seq,
                 ", ".join(f"{c.action} {c.id}" for c in result.changes[:5]) +
                 (f" (+{len(result.changes) - 5})" if len(result.changes) > 5 else ""), elapsed * 1000)
        changed = bool(result.ops)
        return {"seq": result.seq, "changes": [c.to_dict() for c in result.changes],
                "indexes": sorted(self.engines) if changed else [], "catalog_size": size}

    def _validated(self, requests: list[WriteRequest]) -> list[Write]:
        writes = []
        for r in requests:
            pid = check_id(r.id)
            where = f"product {pid}: " if len(requests) > 1 else ""
            fields = None
            if r.kind == "add":
                fields = check_fields(r.fields or {}, partial=False, where=where)
            elif r.kind == "update":
                fields = check_fields(r.fields or {}, partial=not r.replace, where=where)
            if r.kind == "add" and r.image is None:
                raise WriteImageError(f"{where}an image is required to add a product")
            writes.append(Write(r.kind, pid, fields, PLACEHOLDER_IMAGE if r.image is not None else None))
        return writes

    def _precheck(self, writes: list[Write]) -> None:
        """Unknown ids of updates and deletes; an add of an existing id is decided at commit (it may be a
        no-op re-add of the same product, which needs the stored image to tell)."""
        self._catch_up(resync=False)  # what other processes wrote, applied to in-process indexes (the tailer
        # re-checks shared ones: a write does not wait for, or fail with, that check)
        with self.catalog.lock:
            for w in writes:
                if w.kind != "add" and self.catalog.current(w.id) is None:
                    raise UnknownLiveProductError(f"unknown product id {w.id}: "
                                                  f"{'nothing to delete' if w.kind == 'delete' else 'add it first'}")

    def _prepare(self, request: WriteRequest, engines: list[RetrievalEngine]
                 ) -> tuple[str, Future, list[np.ndarray]]:
        """Write-decode thread: the image's hash, its durable storage under that hash (started on the
        store threads), and each model's input (`live.prepare`)."""
        try:
            prepared = prepare_image(request.image, engines, self.max_image_pixels)
        except ImageDecodeError as exc:
            raise WriteImageError(f"product {request.id}: {str(exc).removeprefix('upload: ')}") from None
        return prepared.sha, self.store_pool.submit(self._store, prepared.stored), prepared.inputs

    def _store(self, stored: bytes) -> str:
        """Store thread: the image written and flushed under its hash."""
        try:
            return self.catalog.blobs.put(stored)
        except OSError as exc:
            raise storage_error(exc) from exc

    async def _prepare_images(self, requests: list[WriteRequest]
                              ) -> tuple[list[str | None], dict[str, dict[str, np.ndarray]]]:
        """Image sha per request (None: no image) and vector_key -> sha -> vector for every loaded model.

        A pipeline: the write-decode thread prepares a chunk while the inference thread encodes the
        previous one (as background work: searches go first). While shoppers search, each step first
        waits for the searches in progress (at most MAX_YIELD_S) and chunks shrink to one image. Returns
        once every image is durable (the journal may then name them).
        """
        loop = asyncio.get_running_loop()
        engines = list(self.engines.values())
        with_image = [r for r in requests if r.image is not None]
        if with_image:  # made off the inference thread, by a thread of normal priority (its workers inherit it)
            await loop.run_in_executor(None, lambda: [engine.background_encoder() for engine in engines])
        shas: list[str] = []
        encodes: list[tuple[list[str], list[asyncio.Future]]] = []
        stores: list[Future] = []
        start = 0
        while start < len(with_image):
            for store in stores:  # a full disk fails the write now, not after every image is encoded
                if store.done() and store.exception() is not None:
                    raise store.exception()
            await self._yield_to_searches()
            # while shoppers search: one image per forward, on the searches' own session; alone: chunks on the
            # background session, whose idle threads leave the cores to the decoding of the next chunk
            searching = self.searches.recent()
            size = QUIET_CHUNK if searching else ENCODE_CHUNK
            chunk = await asyncio.gather(*(loop.run_in_executor(self.decode_pool, self._prepare, r, engines)
                                           for r in with_image[start: start + size]))
            start += size
            await self._yield_to_searches()
            futures = [asyncio.wrap_future(self.inference_pool.submit_background(
                engine.encode_tensors, np.stack([tensors[m] for _, _, tensors in chunk]), background=not searching))
                for m, engine in enumerate(engines)]
            encodes.append(([sha for sha, _, _ in chunk], futures))
            shas += [sha for sha, _, _ in chunk]
            stores += [store for _, store, _ in chunk]
        out: dict[str, dict[str, np.ndarray]] = {engine.vector_key: {} for engine in engines}
        for chunk_shas, futures in encodes:
            for engine, future in zip(engines, futures, strict=True):
                out[engine.vector_key].update(zip(chunk_shas, await future, strict=True))
        for store in stores:
            await asyncio.wrap_future(store)
        by_request = iter(shas)
        return [next(by_request) if r.image is not None else None for r in requests], (out if with_image else {})

    async def _yield_to_searches(self) -> None:
        deadline = time.monotonic() + MAX_YIELD_S
        while self.searches.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    def _commit(self, writes: list[Write], vectors, meta: dict) -> tuple[CommitResult, int]:
        """Writer thread: journal, apply everywhere; (the result, the catalog's size after it)."""
        shared = [engine for engine in self.engines.values() if engine.shared]
        journaled: list[int] = []

        def apply_shared(ops) -> None:  # the journal is still locked: writers reach the index in order
            journaled.extend(op.id for op in ops)
            for engine in shared:
                engine.apply_ops(ops)

        try:
            result = self.catalog.commit(writes, vectors, meta, on_commit=apply_shared if shared else None)
        except BackendUnavailableError as exc:
            if not journaled:
                raise
            self.unsynced(journaled)  # durable in the journal: the tailer applies it when the index answers
            raise BackendUnavailableError(f"{exc}; the change is saved in the catalog journal and reaches the index "
                                          "when it answers again") from exc
        except BaseException:
            self.unsynced(journaled)
            self._catch_up()  # what the commit caught up of other writers reaches the indexes even so
            raise
        for engine in self.engines.values():
            if engine.shared:
                continue
            if result.caught_up:
                engine.apply_ops(result.caught_up)
            engine.apply_ops(result.ops)
        self._maintain()
        return result, len(self.catalog)

    def _maintain(self) -> None:
        """Writer thread: fold a long journal into a snapshot; rebuild indexes whose growing part is large."""
        if self.catalog.seq - self.catalog.snapshot_seq >= self.compact_every:
            started = time.perf_counter()
            try:
                self.catalog.compact()
                log.info("catalog journal compacted in %.1f s", time.perf_counter() - started)
            except OSError as exc:  # the journal stays valid; try again after the next write
                log.warning("catalog compaction failed (%s); the journal keeps growing", exc)
        for engine in self.engines.values():
            if engine.backend.needs_rebuild():
                log.info("rebuilding the %s index in the background (%d growing rows, %d removed)", engine.name,
                         engine.live.state.n_growing, engine.live.state.n_dead)
                self.maintenance.submit(self._rebuild, engine)

    @staticmethod
    def _rebuild(engine) -> None:
        """Maintenance thread: rebuild, then renumber the words' index too (rows moved) before a search
        has to."""
        engine.backend.rebuild()
        if engine.text_loaded:
            engine.text.warm()
