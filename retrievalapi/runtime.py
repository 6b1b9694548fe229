"""Everything loaded at startup and shared by the routes: engines, batchers, catalog, decode threads."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from imageretrieval.device import keep_freed_memory
from imageretrieval.engine import RetrievalEngine, SearchHit
from imageretrieval.images import ImageDecodeError

from .batcher import MicroBatcher, normalize_filters
from .metrics import Metrics
from .service import CatalogStore, choose_default, decode_error_message, decode_for, facet_counts, load_engines
from .settings import ApiSettings

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request the service refuses; errors.py maps each kind to its HTTP status in one place."""


class UnknownModelError(ServiceError):
    pass


class BadImageError(ServiceError):
    pass


class NotReadyError(ServiceError):
    """Starting or stopping: the client should retry shortly."""


def single_threaded_search() -> None:
    """Searches of one batch are ~1 ms of work: run FAISS and BLAS on one thread in the serving process.

    Their own thread pools would otherwise spin-wait on the second core for milliseconds after each
    search, right when the next forward (which needs both cores) starts. FAISS' OpenMP thread count
    is per calling thread, so this runs on the inference thread itself.
    """
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    threadpool_limits(1, user_api="blas")


@dataclass
class Runtime:
    settings: ApiSettings
    metrics: Metrics
    engines: dict[str, RetrievalEngine]
    default: str
    catalog: CatalogStore
    facets: dict[str, list[dict]]
    inference_pool: ThreadPoolExecutor | None = None  # the one thread that loads and runs every model
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)
    decode_pool: ThreadPoolExecutor | None = None
    ready: bool = False

    # ----- lifecycle --------------------------------------------------------------------------
    @classmethod
    def load(cls, settings: ApiSettings, metrics: Metrics) -> Runtime:
        """Blocking: load every model and index once (a StartupError says what to rebuild).

        All models load and run on one inference thread: forwards share the same cores anyway, and
        a single thread keeps torch to one OpenMP team (see `load_engines`).
        """
        keep_freed_memory()
        inference_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        inference_pool.submit(single_threaded_search).result()
        try:
            engines = load_engines(settings, inference_pool)
            default = choose_default(settings, list(engines))
            catalog = CatalogStore.load(settings.dataset_root)
        except BaseException:
            inference_pool.shutdown(wait=False, cancel_futures=True)
            raise
        return cls(settings, metrics, engines, default, catalog, facet_counts(engines[default].metadata),
                   inference_pool)

    async def start(self) -> None:
        """On the serving event loop: decode threads, one warmed-up batcher per model, then ready."""
        s = self.settings
        self.decode_pool = ThreadPoolExecutor(max_workers=s.decode_workers, thread_name_prefix="decode")
        self.batchers = {
            name: MicroBatcher(engine, self.metrics, s.batch_max, s.batch_wait_ms, s.queue_max, self.inference_pool)
            for name, engine in self.engines.items()
        }
        blank = Image.new("RGB", (64, 64), (255, 255, 255))
        for name, batcher in self.batchers.items():
            started = time.perf_counter()
            await batcher.warm_up(batcher.engine.preprocess(blank))  # the first request must not pay for it
            batcher.start()
            log.debug("warmed up %s in %.0f ms", name, (time.perf_counter() - started) * 1000)
        self.ready = True

    async def close(self) -> None:
        """Graceful shutdown: refuse new searches, let queued ones finish, stop the workers."""
        self.ready = False
        await asyncio.gather(*(b.close(self.settings.shutdown_grace_s) for b in self.batchers.values()))
        for pool in (self.decode_pool, self.inference_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        log.info("search service stopped")

    # ----- request helpers ----------------------------------------------------------------------
    def engine(self, name: str | None) -> RetrievalEngine:
        name = name or self.default
        engine = self.engines.get(name)
        if engine is None:
            raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(sorted(self.engines))}")
        return engine

    async def search_upload(self, engine: RetrievalEngine, data: bytes, k: int, filters: dict[str, list[str]],
                            timing: dict[str, float] | None = None, rerank: str = "none") -> list[SearchHit]:
        """Decode + preprocess on a worker thread, then encode + search in a shared micro-batch.

        `timing` (optional) receives milliseconds per stage: decode, queue, forward, search; and the batch size.
        """
        if self.decode_pool is None or not self.ready:
            raise NotReadyError("the service is not ready")
        loop = asyncio.get_running_loop()
        timing = {} if timing is None else timing
        started = time.perf_counter()
        try:
            tensor = await loop.run_in_executor(self.decode_pool, decode_for, engine, data,
                                                self.settings.max_image_pixels)
        except ImageDecodeError as exc:
            raise BadImageError(decode_error_message(exc)) from None
        timing["decode"] = (time.perf_counter() - started) * 1000
        return await self.batchers[engine.name].submit(tensor, k, normalize_filters(filters), timing, rerank)

    @staticmethod
    def as_results(hits: list[SearchHit]) -> list[dict]:
        return [{**hit.to_dict(), "image_url": f"/api/images/{hit.id}"} for hit in hits]

