"""FAISS in-process: the embedded default. Rows live in this process's `LiveIndex` (live/liveindex.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..live.liveindex import IndexState, LiveIndex, RowUpsert
from .base import Candidates, Filters, Row, VectorBackend


class FaissBackend(VectorBackend):
    name = "faiss"
    shared = False

    def __init__(self, live: LiveIndex, images: dict[int, str | None] | None = None):
        self.live = live
        self._images: dict[int, str | None] = dict(images or {})  # id -> image hash where not the original

    @classmethod
    def build(cls, rows: Sequence[Row], dims: int, attribute_fields: Sequence[str], factory: str = "Flat",
              seed: int = 42) -> FaissBackend:
        """A new index over `rows` ("Flat": exact search of the vectors; else a FAISS index per the factory)."""
        from ..index import build_index

        vectors = (np.stack([np.asarray(r.vector, np.float32) for r in rows]) if rows
                   else np.zeros((0, dims), np.float32))
        flat = factory.strip() == "Flat"
        index = None if flat or not len(rows) else build_index(vectors, factory, seed)
        live = LiveIndex(index, vectors, np.array([r.id for r in rows], np.int64), [dict(r.product) for r in rows],
                         attribute_fields, factory if len(rows) else "Flat", seed)
        return cls(live, {int(r.id): r.image for r in rows if r.image})

    @property
    def dims(self) -> int:
        return self.live.dims

    @property
    def index_type(self) -> str:
        return self.live.factory

    @property
    def state(self) -> IndexState:
        return self.live.state

    def mask(self, filters: Filters | None, state: IndexState) -> np.ndarray | None:
        """Boolean mask over the state's rows (values OR-ed within a field, fields AND-ed); None: no filter."""
        if not filters:
            return None
        mask = np.ones(state.n, dtype=bool)
        for name, values in filters.items():
            mask &= np.isin(state.codes[name][: state.n], self.live.codes_of(name, values))
        return mask

    def known_values(self, name: str) -> set[str]:
        return set(self.live.value_codes[name].copy())

    def count(self, filters: Filters | None = None) -> int:
        state = self.state
        return state.n_allowed(self.mask(filters, state))

    def search(self, queries: np.ndarray, k: int, filters: Filters | None = None) -> list[Candidates]:
        state = self.state  # one state for the whole search: a write lands before or after it
        mask = self.mask(filters, state)
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        scores, rows = state.search(queries, k, mask)
        n_allowed = state.n_allowed(mask)
        out = []
        for qi in range(len(queries)):
            q_rows, q_scores = rows[qi], scores[qi]
            if int((q_rows >= 0).sum()) < min(k, n_allowed):  # approximate index ran short: exact fallback
                q_scores, q_rows = (a[0] for a in state.search(queries[qi], k, mask, exact=True))
            out.append(self.candidates(q_rows, q_scores, state))
        return out

    @staticmethod
    def candidates(rows: np.ndarray, scores: np.ndarray, state: IndexState) -> Candidates:
        """Ranked rows of `state` (-1 = none) as Candidates."""
        rows = np.asarray(rows, np.int64)
        keep = rows >= 0
        rows, scores = rows[keep], np.asarray(scores, np.float32)[keep]
        return Candidates(state.ids[rows].astype(np.int64), scores, [state.products[r] for r in rows])

    def apply(self, removes: Sequence[int], upserts: Sequence[Row]) -> None:
        self.live.apply(removes, [RowUpsert(int(r.id), np.asarray(r.vector, np.float32), r.product) for r in upserts])
        for pid in removes:
            self._images.pop(int(pid), None)
        for r in upserts:
            if r.image:
                self._images[int(r.id)] = r.image
            else:
                self._images.pop(int(r.id), None)

    def fetch(self, ids: Sequence[int], vectors: bool = True) -> dict[int, Row]:
        state = self.state
        out = {}
        for pid in ids:
            row = state.row_of.get(int(pid))
            if row is not None:
                vector = state.vector(row) if vectors else np.zeros(0, np.float32)
                out[int(pid)] = Row(int(pid), vector, dict(state.products[row]), self._images.get(int(pid)))
        return out

    @property
    def generation(self) -> object:
        return self.state

    def facets(self, fields: Sequence[str]) -> dict[str, dict[str, int]]:
        state = self.state
        out = {}
        for name in fields:
            names = {code: value for value, code in self.live.value_codes[name].copy().items()}  # writers add
            counts = np.bincount(state.codes[name][: state.n][state.alive], minlength=len(names))
            out[name] = {names[c]: int(n) for c, n in enumerate(counts) if n}
        return out

    def needs_rebuild(self) -> bool:
        return self.live.needs_rebuild()

    def rebuild(self) -> None:
        self.live.rebuild()
