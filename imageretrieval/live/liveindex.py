"""LiveIndex: one model's searchable rows, with products added and removed while searches run.

Rows are a sealed *base* (the built index: exact vectors or a FAISS graph, never mutated) followed
by a *growing* segment searched exactly, plus a tombstone mask over all rows. An update is a
tombstone and a new row. Every write builds a new immutable `IndexState` and swaps one reference,
so a search, which reads one state from start to end, sees the catalog before or after a write,
never half of it. Appends go to buffers past the rows any published state can see; a full buffer
is replaced by a larger copy. When the growing segment or the tombstones grow large, `rebuild`
folds everything into a new base in the background and swaps it in, replaying the writes that
landed meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..index import build_index, exact_search
from ..index import search as index_search
from ..ordering import rank_order

log = logging.getLogger(__name__)

REBUILD_GROWING_ROWS = 4096  # growing rows searched exactly before a rebuild folds them into the base
REBUILD_DEAD_FRACTION = 0.1  # tombstones (of all rows) before a rebuild


def _grow(buffer: np.ndarray, needed: int) -> np.ndarray:
    """`buffer` when it holds `needed` rows, else a copy with doubled capacity (old views keep theirs)."""
    if len(buffer) >= needed:
        return buffer
    bigger = np.empty((max(needed, 2 * len(buffer), 64), *buffer.shape[1:]), dtype=buffer.dtype)
    bigger[: len(buffer)] = buffer
    return bigger


@dataclass(frozen=True)
class IndexState:
    """What one search reads. Arrays may be longer than `n` (append buffers): only [:n] is valid."""

    base_index: object | None  # FAISS index over the base rows; None: exact search of base_vectors
    base_vectors: np.ndarray
    growing: np.ndarray  # vectors of rows n_base.. (buffer)
    n_base: int
    n: int
    ids: np.ndarray
    alive: np.ndarray  # bool (n,), private to this state
    products: list[dict]  # row -> result fields (append-only list shared by states)
    codes: Mapping[str, np.ndarray]  # field -> int32 value code per row (buffers)
    row_of: Mapping[int, int]  # id -> its live row
    n_dead: int

    @property
    def n_growing(self) -> int:
        return self.n - self.n_base

    @property
    def size(self) -> int:
        return self.n - self.n_dead

    def vector(self, row: int) -> np.ndarray:
        source = self.base_vectors[row] if row < self.n_base else self.growing[row - self.n_base]
        return np.asarray(source, dtype=np.float32)

    def all_vectors(self) -> np.ndarray:
        return np.concatenate([np.asarray(self.base_vectors[: self.n_base], np.float32),
                               self.growing[: self.n_growing]])

    def search(self, queries: np.ndarray, fetch: int, allowed: np.ndarray | None,
               exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-`fetch` (scores, rows) over the live rows allowed (mask over [:n] or None = all live)."""
        mask = self.alive if allowed is None else (allowed & self.alive)
        if mask.all():
            mask = None
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        parts = []
        base_mask = None if mask is None else mask[: self.n_base]
        if self.n_base:
            if self.base_index is None or exact:
                parts.append(exact_search(self.base_vectors[: self.n_base], queries, fetch, base_mask))
            else:
                parts.append(index_search(self.base_index, queries, fetch, allowed=base_mask))
        if self.n_growing:
            grow_mask = None if mask is None else mask[self.n_base:]
            scores, rows = exact_search(self.growing[: self.n_growing], queries, fetch, grow_mask)
            parts.append((scores, np.where(rows >= 0, rows + self.n_base, -1)))
        if not parts:
            return np.full((len(queries), fetch), -np.inf, np.float32), np.full((len(queries), fetch), -1, np.int64)
        if len(parts) == 1:
            return parts[0]
        scores = np.concatenate([p[0] for p in parts], axis=1)
        rows = np.concatenate([p[1] for p in parts], axis=1)
        out_scores = np.full((len(queries), fetch), -np.inf, np.float32)
        out_rows = np.full((len(queries), fetch), -1, np.int64)
        for qi in range(len(queries)):
            valid = np.flatnonzero(rows[qi] >= 0)
            cand_rows, cand_scores = rows[qi][valid], scores[qi][valid]
            by_row = np.argsort(cand_rows, kind="stable")  # the ranking rule breaks ties by row
            cand_rows, cand_scores = cand_rows[by_row], cand_scores[by_row]
            order = rank_order(cand_scores)[:fetch]
            out_scores[qi, : len(order)] = cand_scores[order]
            out_rows[qi, : len(order)] = cand_rows[order]
        return out_scores, out_rows

    def n_allowed(self, allowed: np.ndarray | None) -> int:
        return self.size if allowed is None else int((allowed & self.alive).sum())


@dataclass(frozen=True)
class RowUpsert:
    id: int
    vector: np.ndarray
    product: dict  # result fields


class LiveIndex:
    """The current `IndexState` plus the writer side: `apply` (add/remove) and `rebuild`."""

    def __init__(self, base_index, base_vectors: np.ndarray, ids: np.ndarray, products: list[dict],
                 code_fields: Sequence[str], factory: str, seed: int = 42):
        self.code_fields = tuple(code_fields)
        self.value_codes: dict[str, dict[str, int]] = {f: {} for f in self.code_fields}  # append-only
        self.factory = factory
        self.seed = seed
        self._write_lock = threading.Lock()
        self._since_rebuild: list[tuple[list[int], list[RowUpsert]]] | None = None
        self.rebuilding = False
        n = len(ids)
        codes = {f: np.array([self._code(f, p.get(f)) for p in products], dtype=np.int32) for f in self.code_fields}
        dims = base_vectors.shape[1]
        self.state = IndexState(base_index, base_vectors, np.empty((0, dims), np.float32), n, n,
                                np.asarray(ids, np.int64), np.ones(n, bool), list(products), codes,
                                {int(pid): row for row, pid in enumerate(ids)}, 0)

    @property
    def dims(self) -> int:
        return int(self.state.base_vectors.shape[1])

    def _code(self, field: str, value) -> int:
        key = "" if value is None else str(value)
        table = self.value_codes[field]
        code = table.get(key)
        if code is None:
            code = table[key] = len(table)
        return code

    def codes_of(self, field: str, values: Sequence[str]) -> list[int]:
        table = self.value_codes[field]
        return [table[v] for v in values if v in table]

    # ----- writes ---------------------------------------------------------------------------------
    def apply(self, removes: Sequence[int], upserts: Sequence[RowUpsert]) -> None:
        """One atomic change: drop the rows of `removes` and of every upserted id, then append the upserts."""
        with self._write_lock:
            self.state = self._applied(self.state, removes, upserts)
            if self._since_rebuild is not None:
                self._since_rebuild.append((list(removes), list(upserts)))

    def _applied(self, s: IndexState, removes: Sequence[int], upserts: Sequence[RowUpsert]) -> IndexState:
        row_of = dict(s.row_of)
        alive = s.alive.copy()
        n_dead = s.n_dead
        for pid in [*removes, *(u.id for u in upserts)]:
            row = row_of.pop(int(pid), None)
            if row is not None and alive[row]:
                alive[row] = False
                n_dead += 1
        if not upserts:
            return replace(s, alive=alive, row_of=row_of, n_dead=n_dead)
        m = len(upserts)
        n_new = s.n + m
        growing = _grow(s.growing, s.n_growing + m)
        growing[s.n_growing: s.n_growing + m] = np.stack([u.vector for u in upserts]).astype(np.float32)
        ids = _grow(s.ids, n_new)
        ids[s.n: n_new] = [u.id for u in upserts]
        codes = {}
        for f in self.code_fields:
            buf = _grow(s.codes[f], n_new)
            buf[s.n: n_new] = [self._code(f, u.product.get(f)) for u in upserts]
            codes[f] = buf
        products = s.products
        del products[s.n:]  # rows a failed earlier write may have left unpublished
        products.extend(u.product for u in upserts)
        for i, u in enumerate(upserts):
            row_of[int(u.id)] = s.n + i
        alive = np.concatenate([alive, np.ones(m, bool)])
        return replace(s, growing=growing, n=n_new, ids=ids, alive=alive, codes=codes, row_of=row_of,
                       n_dead=n_dead, products=products)

    # ----- rebuild --------------------------------------------------------------------------------
    def needs_rebuild(self) -> bool:
        s = self.state
        return not self.rebuilding and (s.n_growing >= REBUILD_GROWING_ROWS or s.n_dead > REBUILD_DEAD_FRACTION * s.n)

    def rebuild(self, build: Callable[[np.ndarray], object] | None = None) -> None:
        """Fold the live rows into a new base (a FAISS index per the factory; exact for "Flat"), then swap.

        Runs in the caller's thread (a background one): searches and writes go on meanwhile; the
        writes that land during the build are replayed onto the new state before the swap.
        """
        with self._write_lock:
            if self.rebuilding:
                return
            self.rebuilding = True
            self._since_rebuild = []
            s = self.state
        try:
            keep = np.flatnonzero(s.alive)
            vectors = np.ascontiguousarray(s.all_vectors()[keep])
            flat = self.factory.strip() == "Flat"
            index = None if flat else (build or (lambda v: build_index(v, self.factory, self.seed)))(vectors)
            ids = s.ids[keep].copy()
            products = [s.products[r] for r in keep]
            codes = {f: s.codes[f][keep].copy() for f in self.code_fields}
            new = IndexState(index, vectors, np.empty((0, vectors.shape[1]), np.float32), len(keep), len(keep),
                             ids, np.ones(len(keep), bool), products, codes,
                             {int(pid): row for row, pid in enumerate(ids)}, 0)
            with self._write_lock:
                for removes, upserts in self._since_rebuild or []:
                    new = self._applied(new, removes, upserts)
                self.state = new
        finally:
            with self._write_lock:
                self._since_rebuild = None
                self.rebuilding = False
        log.info("index rebuilt: %d live rows", new.size)
