"""Milvus as the index backend: Milvus Lite (a local `.db` path, embedded) or a Milvus server (`http://...`).

One collection per model index build (its vector space: `artifacts.vector_key`), holding per row
the id, the vector, the image hash, the filterable attributes as VARCHAR scalar fields and the
result fields as JSON. Filters become Milvus boolean expressions evaluated inside the search, so k
filtered results come back whenever k rows match. Every process of a deployment (API replicas, the
CLI) reads and writes the same collection: the service holds no index state of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..index import AUTO, AUTO_FLAT_MAX_FLOATS, IndexFactoryError, exact_search
from .base import BackendUnavailableError, Candidates, CollectionNotLoadedError, Filters, Row, VectorBackend

log = logging.getLogger(__name__)

INSERT_BATCH = 2000  # rows per insert request (a gRPC message stays well under Milvus' 64 MB limit)
FETCH_BATCH = 4096  # ids per get/query request
EXACT_FALLBACK_MAX_ROWS = 200_000  # filtered rows ranked exactly, at most, where the index ran short
COLLECTION_NOT_LOADED = 101  # Milvus' error code for a search or query on a released collection
CALL_TIMEOUT_S = 10.0  # per request: a Milvus that does not answer is reported (503), not waited for
FACETS_TTL_S = 30.0  # facet counts are recounted this often when asked for (other replicas write too)
MAX_VALUE_LENGTH = 512  # VARCHAR capacity of an attribute field (the write path allows 64 characters)
SEARCH_KEYS = {"ef", "nprobe"}  # index-string keys that are search parameters, not build parameters
META_PROPERTY = "imageretrieval.meta"  # collection property holding the index spec and what was loaded
VALID_NAME = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class MilvusIndexSpec:
    """An index type with its build and search parameters, e.g. from "HNSW:M=32,efConstruction=200,ef=128"."""

    index_type: str
    build: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)


DEFAULTS = {
    "FLAT": ({}, {}),
    "HNSW": ({"M": 32, "efConstruction": 200}, {"ef": 128}),  # FAISS' HNSW32 with efSearch 128
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_PQ": ({"nlist": 1024, "m": 32, "nbits": 8}, {"nprobe": 32}),
}


def parse_index_spec(text: str, n: int, dims: int) -> MilvusIndexSpec:
    """`auto` (FLAT for small catalogs, else HNSW: FAISS' rule) or TYPE[:key=value,...] with defaults filled in."""
    text = text.strip()
    if text.lower() == AUTO:
        text = "FLAT" if n * dims <= AUTO_FLAT_MAX_FLOATS else "HNSW"
    kind, _, params = text.partition(":")
    kind = kind.strip().upper()
    if kind not in DEFAULTS:
        raise IndexFactoryError(f"unknown Milvus index type {kind!r}; choose one of {', '.join(DEFAULTS)} "
                                "(e.g. \"HNSW:M=32,efConstruction=200,ef=128\", \"IVF_FLAT:nlist=1024,nprobe=32\")")
    build, search = dict(DEFAULTS[kind][0]), dict(DEFAULTS[kind][1])
    for item in filter(None, (p.strip() for p in params.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not value.strip().isdigit():
            raise IndexFactoryError(f"Milvus index parameter {item!r} must be key=integer")
        (search if key.strip() in SEARCH_KEYS else build)[key.strip()] = int(value)
    return MilvusIndexSpec(kind, build, search)


def quote(value: str) -> str:
    """A Milvus string literal: JSON escaping (backslashes, quotes, control characters) is what it parses."""
    return json.dumps(str(value), ensure_ascii=False)


def filter_expression(filters: Filters | None) -> str:
    """`{"gender": ["Men"], "baseColour": ["Navy Blue", "Blue"]}` -> 'gender in ["Men"] and baseColour in [...]'."""
    parts = []
    for name, values in (filters or {}).items():
        if not name.isidentifier():
            raise ValueError(f"invalid filter field {name!r}")
        parts.append(f"{name} in [{', '.join(quote(v) for v in values)}]")
    return " and ".join(parts)


def live_expression(filters: Filters | None) -> str:
    """The filter with rows a change is removing (marked dead until deleted) left out."""
    expr = filter_expression(filters)
    return f"alive == true and ({expr})" if expr else "alive == true"


def collection_name(model_name: str, vector_key: str, prefix: str = "ir") -> str:
    """A valid Milvus collection name that names the model and its index build."""
    readable = VALID_NAME.sub("_", model_name)[:120]
    digest = hashlib.sha256(model_name.encode()).hexdigest()[:6]  # names differing only in odd characters
    return f"{prefix}_{readable}_{digest}_{vector_key[:12]}"


def stored_meta(client, collection: str) -> dict:
    """What `MilvusBackend.create` recorded in the collection's properties: index spec and source."""
    properties = client.describe_collection(collection).get("properties") or {}
    try:
        return dict(json.loads(properties.get(META_PROPERTY) or "{}"))
    except (ValueError, TypeError):
        return {}


def _pymilvus():
    """pymilvus, imported with a MILVUS_URI that is a local path hidden from it: its own connection
    defaults parse that variable at import and accept only http(s) addresses."""
    import os

    ours = os.environ.get("MILVUS_URI")
    if ours is not None and "://" not in ours:
        del os.environ["MILVUS_URI"]
    try:
        import pymilvus
    finally:
        if ours is not None:
            os.environ["MILVUS_URI"] = ours
    return pymilvus


def connect(uri: str, token: str | None = None):
    """A MilvusClient for `uri`: a local path (Milvus Lite: `<path>.db`) or http(s)://host:port."""
    try:
        MilvusClient = _pymilvus().MilvusClient  # noqa: N806 - the class
    except ImportError as exc:
        raise BackendUnavailableError("INDEX_BACKEND=milvus needs pymilvus (and milvus-lite for a local file): "
                                      "pip install pymilvus milvus-lite") from exc
    local = "://" not in uri
    if local:
        path = Path(uri).expanduser()
        if path.suffix != ".db":
            path = path.with_suffix(path.suffix + ".db") if path.suffix else path.with_suffix(".db")
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = str(path.resolve())
    try:
        return MilvusClient(uri=uri, token=token or "", timeout=CALL_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - pymilvus raises its own hierarchy
        hint = (f" (Milvus Lite opens a file in one process at a time: to share it, run `python -m milvus_lite "
                f"server --data-dir {uri} --port 19530` and set MILVUS_URI=http://127.0.0.1:19530)" if local else "")
        raise BackendUnavailableError(f"cannot connect to Milvus at {uri}: {exc}{hint}") from exc


def _from_milvus(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in ("pymilvus", "grpc", "milvus_lite")


def _guarded(method):
    """Milvus' own errors (server down, timeouts) as BackendUnavailableError: the API answers 503."""
    import functools

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - pymilvus and grpc raise their own hierarchies
            if not _from_milvus(exc):
                raise
            if getattr(exc, "code", None) != COLLECTION_NOT_LOADED:
                raise BackendUnavailableError(f"Milvus ({self.collection}) failed: {exc}") from exc
        try:  # a restarted Milvus holds the collection, not loaded: load it and try once more
            self.client.load_collection(self.collection, timeout=CALL_TIMEOUT_S)
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            if not _from_milvus(exc):
                raise
            raise BackendUnavailableError(f"Milvus ({self.collection}) failed: {exc}") from exc

    return call


class _ReadWriteLock:
    """Many readers or one writer."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class MilvusBackend(VectorBackend):
    name = "milvus"
    shared = True

    def __init__(self, client, collection: str, attribute_fields: Sequence[str], spec: MilvusIndexSpec | None = None):
        self.client = client
        self.collection = collection
        self.attribute_fields = tuple(attribute_fields)
        if not client.has_collection(collection):
            raise CollectionNotLoadedError(f"Milvus holds no collection {collection!r}")
        desc = client.describe_collection(collection)
        self._dims = next(int(f["params"]["dim"]) for f in desc["fields"] if f["name"] == "vector")
        self.spec = spec or self._stored_spec()
        self._rows = _ReadWriteLock()  # a search sees this process's writes whole
        self._writes = 0
        self._facets: tuple[object, dict] | None = None  # (generation, counts)
        self._facets_lock = threading.Lock()
        self._generation: tuple[int, int] = (-1, -1)
        client.load_collection(collection)

    # ----- creation -------------------------------------------------------------------------------
    @classmethod
    def create(cls, client, collection: str, rows: Sequence[Row] | None, dims: int, attribute_fields: Sequence[str],
               spec: MilvusIndexSpec, progress=None, source: dict | None = None) -> MilvusBackend:
        """A new collection (an existing one of that name is dropped) holding `rows`, indexed per `spec`;
        the spec and `source` (what the rows were loaded from) are kept in the collection's properties."""
        pymilvus = _pymilvus()

        if client.has_collection(collection):
            client.drop_collection(collection)
        DataType = pymilvus.DataType  # noqa: N806 - the enum
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dims))
        schema.add_field("image", DataType.VARCHAR, max_length=64)
        for name in attribute_fields:
            schema.add_field(name, DataType.VARCHAR, max_length=MAX_VALUE_LENGTH)
        schema.add_field("product", DataType.JSON)
        schema.add_field("alive", DataType.BOOL)
        index_params = client.prepare_index_params()
        index_params.add_index(field_name="vector", index_type=spec.index_type, metric_type="IP",
                               params=spec.build)
        meta = {"index": spec.index_type, "build": spec.build, "search": spec.search, "source": source}
        client.create_collection(collection, schema=schema, index_params=index_params, consistency_level="Strong",
                                 properties={META_PROPERTY: json.dumps(meta)})
        backend = cls(client, collection, attribute_fields, spec)
        rows = list(rows or [])
        for start in range(0, len(rows), INSERT_BATCH):
            batch = rows[start: start + INSERT_BATCH]
            client.insert(collection, [backend._record(r) for r in batch])
            if progress is not None:
                progress.update(len(batch))
        client.flush(collection)
        return backend

    def _stored_spec(self) -> MilvusIndexSpec:
        stored = stored_meta(self.client, self.collection)
        if "index" not in stored:
            return MilvusIndexSpec("FLAT")
        return MilvusIndexSpec(stored["index"], stored.get("build", {}), stored.get("search", {}))

    def _record(self, row: Row) -> dict:
        record = {"id": int(row.id), "vector": np.asarray(row.vector, np.float32).tolist(), "image": row.image or "",
                  "product": row.product, "alive": True}
        for name in self.attribute_fields:
            value = row.product.get(name)
            record[name] = "" if value is None else str(value)[:MAX_VALUE_LENGTH]
        return record

    # ----- reads ------------------------------------------------------------------------------
    @property
    def dims(self) -> int:
        return self._dims

    @property
    def index_type(self) -> str:
        return f"milvus:{self.spec.index_type}"

    @_guarded
    def count(self, filters: Filters | None = None) -> int:
        """Rows matching `filters`. Unfiltered: Milvus' own row count, which may include for an instant
        the dead rows of a write in progress (they are deleted right after it) - a filter scan costs
        seconds on Milvus Lite."""
        return self.count_expr(live_expression(filters) if filters else "")

    @_guarded
    def search(self, queries: np.ndarray, k: int, filters: Filters | None = None) -> list[Candidates]:
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        expr = live_expression(filters)
        params = {"metric_type": "IP", "params": dict(self.spec.search)}
        with self._rows.reading():  # never beside this process's write: Milvus Lite applies rows one by one
            answers = self._search(queries, k, expr, params)
            out = []
            for qi, hits in enumerate(answers):
                cands = self._candidates([(int(h["id"]), float(h["distance"]), h["entity"]["product"])
                                          for h in hits])
                if len(cands) < k and self.spec.search:  # an approximate index may run short under a filter
                    cands = self._widened(queries[qi], k, expr)
                out.append(cands)
        return out

    def _search(self, queries: np.ndarray, k: int, expr: str, params: dict) -> list:
        return self.client.search(self.collection, data=queries.tolist(), limit=int(k), filter=expr,
                                  output_fields=["product"], search_params=params, consistency_level="Strong",
                                  timeout=CALL_TIMEOUT_S)

    def _widened(self, query: np.ndarray, k: int, expr: str) -> Candidates:
        """A graph or IVF search that ran short: search wider (ef, nprobe x8), then rank the filtered rows
        exactly (fewer than k of them, or the filter too selective for the index)."""
        search = {key: value * 8 for key, value in self.spec.search.items()}
        hits = self._search(query[None], k, expr, {"metric_type": "IP", "params": search})[0]
        widened = self._candidates([(int(h["id"]), float(h["distance"]), h["entity"]["product"]) for h in hits])
        if len(hits) >= k:
            return widened
        exact = self._exact(query, k, expr)
        return widened if exact is None else exact

    def count_expr(self, expr: str) -> int:
        result = self.client.query(self.collection, filter=expr, output_fields=["count(*)"],
                                   consistency_level="Strong", timeout=CALL_TIMEOUT_S)
        return int(result[0]["count(*)"])

    @staticmethod
    def _candidates(hits: list[tuple[int, float, dict]]) -> Candidates:
        hits.sort(key=lambda h: (-h[1], h[0]))  # the project's ranking rule: score, then id
        return Candidates(np.array([h[0] for h in hits], np.int64), np.array([h[1] for h in hits], np.float32),
                          [h[2] for h in hits])

    def _exact(self, query: np.ndarray, k: int, expr: str) -> Candidates | None:
        """The filtered rows ranked exactly; None when more than EXACT_FALLBACK_MAX_ROWS match."""
        rows = list(self.client.query(self.collection, filter=expr, output_fields=["id", "vector", "product"],
                                      consistency_level="Strong", limit=EXACT_FALLBACK_MAX_ROWS + 1,
                                      timeout=CALL_TIMEOUT_S))
        if len(rows) > EXACT_FALLBACK_MAX_ROWS:
            return None
        if not rows:
            return self._candidates([])
        rows.sort(key=lambda r: int(r["id"]))
        vectors = np.asarray([r["vector"] for r in rows], np.float32)
        scores, idx = exact_search(vectors, query[None], k)
        return self._candidates([(int(rows[i]["id"]), float(s), rows[i]["product"])
                                 for i, s in zip(idx[0], scores[0], strict=True) if i >= 0])

    @_guarded
    def fetch(self, ids: Sequence[int], vectors: bool = True) -> dict[int, Row]:
        out: dict[int, Row] = {}
        fields = ["id", "image", "product", "alive"] + (["vector"] if vectors else [])
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), FETCH_BATCH):
            for r in self.client.get(self.collection, ids=ids[start: start + FETCH_BATCH], output_fields=fields,
                                     timeout=CALL_TIMEOUT_S):
                if not r["alive"]:
                    continue
                vector = np.asarray(r["vector"], np.float32) if vectors else np.zeros(0, np.float32)
                out[int(r["id"])] = Row(int(r["id"]), vector, dict(r["product"]), r["image"] or None)
        return out

    @property
    def generation(self) -> object:
        """The same object until this process writes or FACETS_TTL_S passes (callers compare with `is`)."""
        current = (self._writes, int(time.monotonic() // FACETS_TTL_S))
        if current != self._generation:
            self._generation = current
        return self._generation

    @_guarded
    def facets(self, fields: Sequence[str]) -> dict[str, dict[str, int]]:
        """Counted by a scan of the collection, again when this process wrote or FACETS_TTL_S passed."""
        cached = self._facets
        if cached is None or cached[0] != self.generation:
            cached = self._count_facets()
        return {name: cached[1].get(name, {}) for name in fields}

    @_guarded
    def known_values(self, name: str) -> set[str]:
        """From the last count whatever its age (a filter must not wait for a scan): a value it lacks
        makes the engine `refresh` and ask again."""
        cached = self._facets or self._count_facets()
        return set(cached[1].get(name, {}))

    def _count_facets(self) -> tuple[object, dict]:
        with self._facets_lock:
            cached = self._facets
            if cached is not None and cached[0] == self.generation:  # another thread just counted
                return cached
            counts: dict[str, dict[str, int]] = {f: {} for f in self.attribute_fields}
            iterator = self.client.query_iterator(self.collection, batch_size=8192, filter=live_expression(None),
                                                  output_fields=list(self.attribute_fields), timeout=CALL_TIMEOUT_S)
            try:
                while batch := iterator.next():
                    for record in batch:
                        for name, table in counts.items():
                            value = record.get(name) or ""
                            table[value] = table.get(value, 0) + 1
            finally:
                iterator.close()
            self._facets = (self.generation, counts)
            return self._facets

    def refresh(self) -> None:
        """Recount the facets at the next use (another replica wrote)."""
        self._facets = None

    # ----- writes -------------------------------------------------------------------------------
    @_guarded
    def apply(self, removes: Sequence[int], upserts: Sequence[Row]) -> None:
        """One upsert request carries the whole change (removals as rows marked dead), so a search sees it
        all or not at all; the dead rows are deleted right after."""
        kept = {int(r.id) for r in upserts}
        gone = sorted({int(i) for i in removes} - kept)
        records = [self._record(r) for r in upserts] + [self._tombstone(pid) for pid in gone]
        with self._rows.writing():
            for start in range(0, len(records), INSERT_BATCH):
                self.client.upsert(self.collection, records[start: start + INSERT_BATCH], timeout=CALL_TIMEOUT_S)
            if gone:
                self.client.delete(self.collection, ids=gone, timeout=CALL_TIMEOUT_S)
            self._writes += 1
            self._facets = None

    def _tombstone(self, pid: int) -> dict:
        return {"id": int(pid), "vector": [0.0] * self._dims, "image": "", "product": {}, "alive": False,
                **{name: "" for name in self.attribute_fields}}

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            log.debug("closing the Milvus client failed", exc_info=True)
