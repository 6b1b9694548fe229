"""The API's runtime layer: everything loaded at startup and shared by the routes (engines, batchers,
the catalog, decode threads), the request helpers, and the domain errors they raise (errors.py maps
them to HTTP in one place)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from imageretrieval.artifacts import ModelArtifacts
from imageretrieval.backends import BackendUnavailableError
from imageretrieval.catalog import CatalogError
from imageretrieval.device import keep_freed_memory
from imageretrieval.engine import (
    IndexNotBuiltError,
    RetrievalEngine,
    SearchHit,
    image_url,
    image_version,
    result_fields,
)
from imageretrieval.images import ImageDecodeError, open_image
from imageretrieval.inference import RuntimeUnavailableError
from imageretrieval.keys import ApiKey, KeyStore, KeyStoreCorruptError
from imageretrieval.live.journal import JournalCorruptError
from imageretrieval.live.store import LiveCatalog
from imageretrieval.models import ModelNotFoundError, WeightsUnavailableError
from imageretrieval.text.queries import check_query

from .batcher import MicroBatcher, normalize_filters
from .metrics import Metrics
from .priority import PriorityExecutor
from .settings import ApiSettings
from .writes import CatalogWriter, SearchActivity

log = logging.getLogger(__name__)

class StartupError(RuntimeError):
    """The service cannot start; the message names the model and the command that fixes it."""


def built_models(workdir: Path) -> list[str]:
    """Models with a complete index folder in the workdir (manifest written last = complete)."""
    root = Path(workdir) / "indexes"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and ModelArtifacts(p).manifest.is_file())


def load_engines(settings: ApiSettings, executor: Executor | None = None,
                 catalog: LiveCatalog | None = None) -> dict[str, RetrievalEngine]:
    """Load every requested model once; any failure is one StartupError with the fix in it.

    `executor`: build the engines on the thread that will run their forwards. Every thread that
    starts torch's parallel work (RUNTIME=torch) gets its own OpenMP worker team, and with more OpenMP threads than
    cores the runtime stops spin-waiting between parallel regions: a forward then pays a wake-up per
    layer (~35 instead of ~25 ms for a lite0 query on 2 cores, measured).
    """
    names = settings.model_list or built_models(settings.workdir)
    if not names:
        raise StartupError(
            f"no model index found in {Path(settings.workdir) / 'indexes'}: build one with "
            f"`imageretrieval index --model {settings.default_model}` (WORKDIR={settings.workdir}) or set MODELS"
        )
    engines: dict[str, RetrievalEngine] = {}
    for name in names:
        started = time.perf_counter()
        try:
            engines[name] = (executor.submit(RetrievalEngine, settings, name, catalog).result()
                             if executor is not None else RetrievalEngine(settings, name, catalog))
        except (IndexNotBuiltError, ModelNotFoundError, WeightsUnavailableError, CatalogError,
                RuntimeUnavailableError, BackendUnavailableError) as exc:
            raise StartupError(f"cannot load model {name!r}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - anything else at load time is still a broken artifact
            raise StartupError(
                f"cannot load model {name!r} from {ModelArtifacts.of(settings.workdir, name).root} ({exc}): "
                f"rebuild it with `imageretrieval index --model {name} --force`"
            ) from exc
        log.info("loaded model %s: %d vectors x %d dims in %.1f s", name, engines[name].size,
                 engines[name].dims, time.perf_counter() - started)
    return engines


def choose_default(settings: ApiSettings, names: list[str]) -> str:
    """DEFAULT_MODEL when loaded; when it was not set explicitly, the first loaded model instead."""
    if settings.default_model in names:
        return settings.default_model
    if "default_model" in settings.model_fields_set:
        raise StartupError(f"DEFAULT_MODEL={settings.default_model!r} is not among the loaded models "
                           f"({', '.join(names)}): build it with `imageretrieval index --model "
                           f"{settings.default_model}` or change DEFAULT_MODEL")
    log.info("default model %s has no index here; using %s", settings.default_model, names[0])
    return names[0]


def read_evaluation(workdir: Path, model: str) -> dict | None:
    """`<WORKDIR>/results/<model>/summary.json` when the evaluation has run; null otherwise."""
    path = Path(workdir) / "results" / model / "summary.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable evaluation summary %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def decode_for(engine: RetrievalEngine, data: bytes, max_pixels: int) -> np.ndarray:
    """Upload bytes -> the model's uint8 input array (worker thread). Raises ImageDecodeError."""
    image = open_image(data, max_pixels=max_pixels, min_size=engine.decode_size)
    try:
        return engine.preprocess(image)
    finally:
        image.close()


def decode_error_message(exc: ImageDecodeError) -> str:
    """Pillow's own bomb guard fires before ours on huge headers; say plainly what happened."""
    cause = exc.__cause__
    if isinstance(cause, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"image dimensions are too large to decode safely: {cause}"
    message = str(exc)
    return "uploaded file: " + message.removeprefix("upload: ") if message.startswith("upload: ") else message

class ServiceError(Exception):
    """A request the service refuses; errors.py maps each kind to its HTTP status in one place."""


class UnknownModelError(ServiceError):
    pass


class BadImageError(ServiceError):
    pass


class MissingKeyError(ServiceError):
    """No API key where one is required (401)."""


class InvalidKeyError(ServiceError):
    """An unknown or revoked key: one message for both, so a caller learns nothing about keys (401)."""


class ForbiddenKeyError(ServiceError):
    """A valid key whose scope does not allow the route (403)."""


def check_key(keys: KeyStore, authorization: str | None, scope: str) -> ApiKey:
    """The key of an `Authorization: Bearer <key>` header when it allows `scope`; a domain error otherwise."""
    kind, _, token = (authorization or "").strip().partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise MissingKeyError("an API key is required: send Authorization: Bearer <key>")
    try:
        record = keys.verify(token.strip())
    except KeyStoreCorruptError as exc:
        log.error("%s", exc)  # the operator's fix, in the log; the caller learns only that keys are down
        raise KeyStoreUnavailableError("API keys cannot be checked right now; retry later") from exc
    if record is None:
        raise InvalidKeyError("invalid or revoked API key")
    if not record.allows(scope):
        raise ForbiddenKeyError(f"this key's scope ({record.scope}) does not allow {scope} access")
    return record


class KeyStoreUnavailableError(ServiceError):
    """The key store cannot be read (damaged keys.json): no key can be checked (503)."""


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
    catalog: LiveCatalog
    inference_pool: PriorityExecutor | None = None  # the one thread that loads and runs every model
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)
    decode_pool: ThreadPoolExecutor | None = None
    writer: CatalogWriter | None = None
    ready: bool = False
    _facets: tuple[object, dict] | None = None
    searches: SearchActivity = field(default_factory=SearchActivity)  # catalog writes step aside for them
    last_query: tuple[str, np.ndarray] | None = None  # (model, input) of the last image search: KEEP_WARM_MS
    _keep_warm: asyncio.Task | None = None

    # ----- lifecycle --------------------------------------------------------------------------
    @classmethod
    def load(cls, settings: ApiSettings, metrics: Metrics) -> Runtime:
        """Blocking: load every model and index once (a StartupError says what to rebuild).

        All models load and run on one inference thread: forwards share the same cores anyway, and
        a single thread keeps torch to one OpenMP team (see `load_engines`).
        """
        keep_freed_memory()
        inference_pool = PriorityExecutor("inference")  # searches before catalog writes' encodes
        inference_pool.submit(single_threaded_search).result()
        try:
            catalog = LiveCatalog(settings.dataset_root, settings.workdir)
            engines = load_engines(settings, inference_pool, catalog)
            default = choose_default(settings, list(engines))
        except (CatalogError, JournalCorruptError) as exc:
            inference_pool.shutdown(wait=False, cancel_futures=True)
            raise StartupError(f"cannot load the catalog: {exc}") from exc
        except BaseException:
            inference_pool.shutdown(wait=False, cancel_futures=True)
            raise
        return cls(settings, metrics, engines, default, catalog, inference_pool)

    async def start(self) -> None:
        """On the serving event loop: decode threads, one warmed-up batcher per model, then ready."""
        s = self.settings
        self.decode_pool = ThreadPoolExecutor(max_workers=s.decode_workers, thread_name_prefix="decode")
        self.writer = CatalogWriter(self.catalog, self.engines, self.metrics, self.inference_pool,
                                    s.max_image_pixels, s.compact_every, self.searches)
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
        self.writer.start()
        if s.keep_warm_ms > 0:
            self._keep_warm = asyncio.get_running_loop().create_task(self._keep_warm_loop(), name="keep-warm")
            self._keep_warm.add_done_callback(
                lambda task: task.cancelled() or task.exception() is None
                or log.error("keeping models warm stopped: %r", task.exception()))
        self.ready = True

    async def _keep_warm_loop(self) -> None:
        """KEEP_WARM_MS: while no search ran for one interval (but one ran within KEEP_WARM_S), run the last
        image search's forward and index search again, as background work on the inference thread (searches
        queued there go first; none runs while a search or a catalog write is in progress). Between
        a shopper's searches the model, the index and the CPU's caches cool; a search then takes several
        times as long as back-to-back ones (docs/benchmarks.md, "a shopper's pace")."""
        interval = self.settings.keep_warm_ms / 1000
        failures = 0
        while True:
            await asyncio.sleep(interval * min(2 ** failures, 1000))  # backs off while it fails (an index down)
            quiet = time.monotonic() - self.searches.last
            last = self.last_query
            if last is None or self.searches.inflight or not interval <= quiet <= self.settings.keep_warm_s:
                continue
            if self.writer is not None and self.writer.active:  # a write keeps the model busy (and warm) already
                continue
            engine = self.engines.get(last[0])
            if engine is None or self.inference_pool is None:
                continue
            try:
                await asyncio.wrap_future(self.inference_pool.submit_background(
                    lambda engine=engine, tensor=last[1]: engine.search_vectors(engine.encode_tensors(tensor[None]),
                                                                                15)))
            except Exception:  # noqa: BLE001 - a warm-up never takes the service down; the log says why, once
                if not failures:
                    log.exception("keeping %s warm failed; retrying less and less often", engine.name)
                failures += 1
                continue
            if failures:
                log.info("keeping %s warm works again", engine.name)
            failures = 0
            self.metrics.keep_warm_runs.inc()

    async def close(self) -> None:
        """Graceful shutdown: refuse new searches, let queued ones finish, stop the workers."""
        self.ready = False
        if self._keep_warm is not None:
            self._keep_warm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keep_warm
        await asyncio.gather(*(b.close(self.settings.shutdown_grace_s) for b in self.batchers.values()))
        if self.writer is not None:
            await self.writer.close()  # a write in progress finishes: it was not acknowledged yet
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
        timing = {} if timing is None else timing
        self.searches.begin()
        try:
            tensor = await self._decode(engine, data, timing)
            if self.settings.keep_warm_ms:  # the only use of a shopper's photo after the search
                self.last_query = engine.name, tensor
            return await self.batchers[engine.name].submit(tensor, k, normalize_filters(filters), timing, rerank)
        finally:
            self.searches.end()

    async def _decode(self, engine: RetrievalEngine, data: bytes, timing: dict[str, float]) -> np.ndarray:
        """An upload -> the model's input, on a decode thread (BadImageError when it is not a usable image)."""
        started = time.perf_counter()
        try:
            tensor = await asyncio.get_running_loop().run_in_executor(
                self.decode_pool, decode_for, engine, data, self.settings.max_image_pixels)
        except ImageDecodeError as exc:
            raise BadImageError(decode_error_message(exc)) from None
        timing["decode"] = (time.perf_counter() - started) * 1000
        return tensor

    async def search_words(self, engine: RetrievalEngine, q: str, k: int, filters: dict[str, list[str]],
                           mode: str = "hybrid", image: bytes | None = None,
                           timing: dict[str, float] | None = None) -> list[SearchHit]:
        """Search by words, or by a photo refined by words (`image`); the text encoder runs on the inference
        thread like every forward. Raises QueryTextError, TextSearchUnavailableError, BadImageError."""
        if self.decode_pool is None or not self.ready:
            raise NotReadyError("the service is not ready")
        q = check_query(q)
        loop = asyncio.get_running_loop()
        # the first call loads the text encoder: on the inference thread, not the event loop
        text = await loop.run_in_executor(self.inference_pool, lambda: engine.text)
        timing = {} if timing is None else timing
        self.searches.begin()
        try:
            vectors = None
            if image is not None:
                tensor = await self._decode(engine, image, timing)
                started = time.perf_counter()
                vectors = await loop.run_in_executor(self.inference_pool, engine.encode_tensors, tensor[None])
                timing["forward"] = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            hits = await loop.run_in_executor(
                self.inference_pool, lambda: text.search([q], k, filters or None, mode=mode, image_vectors=vectors)[0])
            timing["search"] = (time.perf_counter() - started) * 1000
            return hits
        finally:
            self.searches.end()

    def refresh_catalog(self) -> None:
        """With shared indexes only (Milvus), read what other replicas journaled now rather than at the
        next tail (a stat when nothing is new): a product one replica just changed has its page and
        image on every replica at once."""
        if self.engines and all(engine.shared for engine in self.engines.values()):
            ops = self.catalog.catch_up()  # nothing to apply here: the writers applied them to the shared index
            if ops and self.writer is not None:
                self.writer.unsynced(op.id for op in ops)  # ... unless it had none: the tailer checks

    def product(self, product_id: int) -> dict | None:
        """A product's current metadata (the live catalog's), None when unknown or deleted."""
        self.refresh_catalog()
        product = self.catalog.current(int(product_id))
        return None if product is None else {"id": int(product_id), **result_fields(product.fields)}

    @property
    def facets(self) -> dict[str, list[dict]]:
        """The default model's live facet counts, recomputed only after a write changed its rows."""
        generation = self.engines[self.default].backend.generation
        if self._facets is None or self._facets[0] is not generation:
            self._facets = (generation, self.engines[self.default].facets())
        return self._facets[1]

    def _current_image(self, product_id: int) -> str | None:
        product = self.catalog.current(int(product_id))
        return product.image if product is not None else None

    def image_version(self, product_id: int) -> str:
        """Names the product's current image: its hash's start, or "0" for the original catalog file."""
        return image_version(self._current_image(product_id))

    def image_url(self, product_id: int) -> str:
        """A URL whose content never changes (cached for long): a new image gets a new URL."""
        return image_url(product_id, self._current_image(product_id))

    def as_results(self, hits: list[SearchHit]) -> list[dict]:
        """Hits carry the image URL of the index state they come from; rows stored before they did (a
        Milvus collection loaded by an earlier version) get the catalog's."""
        return [hit.to_dict() if "image_url" in hit.product else {**hit.to_dict(), "image_url": self.image_url(hit.id)}
                for hit in hits]

