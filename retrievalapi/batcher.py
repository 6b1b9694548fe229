"""Micro-batching: concurrent queries share one forward pass, run off the event loop.

Requests put a preprocessed image on a bounded queue and await a future. One worker task takes
what is queued (up to `max_batch`, optionally waiting `max_wait_ms` for more), runs the forward
and the index search on a dedicated thread and resolves the futures. While a forward runs, new
requests queue up, so under load batches fill by themselves and throughput approaches the
batched model throughput; when idle a lone request goes straight through (no added latency).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from imageretrieval.engine import RetrievalEngine, SearchHit

from .metrics import Metrics

log = logging.getLogger(__name__)

Filters = tuple[tuple[str, tuple[str, ...]], ...]


class OverloadedError(RuntimeError):
    """The queue is full or the service is shutting down: the client should retry later (503)."""


def normalize_filters(filters: dict[str, list[str]] | None) -> Filters:
    """Hashable, order-independent form, so queries with the same filters share one index search."""
    if not filters:
        return ()
    return tuple(sorted((f, tuple(sorted(set(v)))) for f, v in filters.items() if v))


@dataclass
class _Job:
    tensor: np.ndarray  # the preprocessed uint8 (3, H, W) image
    k: int
    filters: Filters
    future: asyncio.Future[list[SearchHit]]
    timing: dict[str, float]  # ms per stage, for the Server-Timing header
    rerank: str = "none"
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Encode + search queued images in batches for one engine."""

    def __init__(self, engine: RetrievalEngine, metrics: Metrics, max_batch: int = 32, max_wait_ms: float = 0.0,
                 max_queue: int = 128, executor: ThreadPoolExecutor | None = None):
        self.engine = engine
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._current: list[_Job] = []  # the batch being formed or computed
        # One thread: forwards are serialized anyway (the engine holds a lock), and a single
        # consumer keeps batches large instead of splitting the queue between threads. Pass the
        # thread the engine was built on (shared by every model), so torch keeps one OpenMP team.
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"encode-{engine.name}")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Start the worker on the running event loop (the queue binds to that loop)."""
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.engine.name}")

    async def warm_up(self, tensor: np.ndarray) -> None:
        """One forward on the worker thread itself: its thread pools and kernels get set up before traffic."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.engine.encode_tensors, tensor[None])

    async def submit(self, tensor: np.ndarray, k: int, filters: Filters = (),
                     timing: dict[str, float] | None = None, rerank: str = "none") -> list[SearchHit]:
        """Queue one preprocessed image; returns its hits. Raises OverloadedError when full or closing.

        `timing` (optional) receives the milliseconds spent queued, in the forward and in the search,
        and the batch size.
        """
        if self._queue is None or not self.running:
            raise OverloadedError("the service is shutting down; retry on another instance")
        future: asyncio.Future[list[SearchHit]] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(tensor, k, filters, future, timing if timing is not None else {}, rerank))
        except asyncio.QueueFull:
            self.metrics.rejected.labels(model=self.engine.name, reason="queue_full").inc()
            raise OverloadedError(
                f"the server is overloaded ({self.max_queue} images queued for {self.engine.name}); retry shortly"
            ) from None
        self.metrics.queue_depth.labels(model=self.engine.name).set(self._queue.qsize())
        return await future

    async def _next_batch(self) -> list[_Job]:
        """Wait for one image, then take what else is queued (and, optionally, what arrives in max_wait)."""
        assert self._queue is not None
        self._current = [await self._queue.get()]
        self._drain_into(self._current)
        if self.max_wait > 0 and len(self._current) < self.max_batch:
            await asyncio.sleep(self.max_wait)
            self._drain_into(self._current)
        self.metrics.queue_depth.labels(model=self.engine.name).set(self._queue.qsize())
        return [job for job in self._current if not job.future.done()]  # done = cancelled: client went away

    def _drain_into(self, batch: list[_Job]) -> None:
        assert self._queue is not None
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                batch = await self._next_batch()
                if not batch:
                    continue
                started = time.perf_counter()
                for job in batch:
                    self.metrics.queue_wait.labels(model=self.engine.name).observe(started - job.enqueued)
                    job.timing["queue"] = (started - job.enqueued) * 1000
                try:
                    results = await loop.run_in_executor(self._executor, self._process, batch)
                except Exception as exc:  # noqa: BLE001 - a failed batch fails its requests, not the worker
                    log.exception("batch of %d failed for %s", len(batch), self.engine.name)
                    results = [exc] * len(batch)
                self.metrics.batch_size.labels(model=self.engine.name).observe(len(batch))
                self.metrics.batch_seconds.labels(model=self.engine.name).observe(time.perf_counter() - started)
                for job, result in zip(batch, results, strict=True):
                    if job.future.done():
                        continue
                    if isinstance(result, BaseException):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)
            finally:
                self._fail(self._current, "the service is shutting down")  # only non-empty when cancelled
                self._current = []

    def _fail(self, jobs: Sequence[_Job], message: str) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(OverloadedError(message))

    def _process(self, batch: Sequence[_Job]) -> list[list[SearchHit] | Exception]:
        """Worker thread: one forward for the batch, one index search per (k, filters, rerank) group."""
        started = time.perf_counter()
        vectors = self.engine.encode_tensors(np.stack([job.tensor for job in batch]))
        forward_ms = (time.perf_counter() - started) * 1000
        for job in batch:
            job.timing.update(forward=forward_ms, batch=len(batch))
        return self._search_batch(batch, vectors)

    def _search_batch(self, batch: Sequence[_Job], vectors: np.ndarray) -> list[list[SearchHit] | Exception]:
        """One engine search per (k, filters, rerank) group of the batch's query vectors."""
        groups: dict[tuple[int, Filters, str], list[int]] = {}
        for i, job in enumerate(batch):
            groups.setdefault((job.k, job.filters, job.rerank), []).append(i)
        out: list[list[SearchHit] | Exception] = [[] for _ in batch]
        for (k, filters, rerank), members in groups.items():
            queries = np.ascontiguousarray(vectors[members])
            searched = time.perf_counter()
            try:
                hits: list = self.engine.search_vectors(queries, k, {f: list(v) for f, v in filters} or None,
                                                        rerank=rerank)
            except Exception as exc:  # noqa: BLE001 - e.g. an unknown filter fails only its group
                hits = [exc] * len(members)
            search_ms = (time.perf_counter() - searched) * 1000
            for i, h in zip(members, hits, strict=True):
                out[i] = h
                batch[i].timing["search"] = search_ms
        return out

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop taking requests, let queued ones finish (up to `grace_s`), then stop the worker."""
        self._closing = True
        if self._queue is not None and self._task is not None and not self._task.done():
            deadline = time.monotonic() + grace_s
            while (self._current or not self._queue.empty()) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # noqa: BLE001 - closing must not raise
                log.exception("batcher worker for %s ended with an error", self.engine.name)
        if self._queue is not None:
            while not self._queue.empty():
                self._fail([self._queue.get_nowait()], "the service is shutting down")
        if self._owns_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)
