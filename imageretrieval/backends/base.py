"""The one interface every vector index backend implements (FAISS in-process, Milvus, ...).

A backend holds one model's catalog rows: id, post-processed vector, the product's result fields
and its image name (None: the original catalog file). The engine ranks, re-ranks and answers on
top of it, so a new backend is one file implementing these methods (and an entry in `BACKENDS`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Filters = Mapping[str, Sequence[str]]  # field -> accepted values: OR within a field, AND across fields


class BackendUnavailableError(RuntimeError):
    """The backend cannot be reached or used (not installed, server down); the message says what to do."""


class CollectionNotLoadedError(RuntimeError):
    """The backend holds no rows for this model's index build: the message gives the loading command."""


@dataclass(frozen=True)
class Row:
    """One catalog row as a backend stores it."""

    id: int
    vector: np.ndarray
    product: dict
    image: str | None = None  # stored image's content hash; None = the original catalog file


@dataclass(frozen=True)
class Candidates:
    """One query's nearest rows, best first (ties by id); at most the k asked for."""

    ids: np.ndarray  # int64
    scores: np.ndarray  # float32
    products: list[dict]

    def __len__(self) -> int:
        return len(self.ids)


class VectorBackend(ABC):
    """Build once, then add, remove, search with filters, fetch by id and count."""

    name: str = ""
    shared: bool = False  # True: other processes see the same rows (a write is applied once, by its writer)

    @property
    @abstractmethod
    def dims(self) -> int: ...

    @property
    @abstractmethod
    def index_type(self) -> str:
        """What searches the vectors, as a user configures it (a FAISS factory string, "milvus:HNSW")."""

    @abstractmethod
    def count(self, filters: Filters | None = None) -> int:
        """Rows matching `filters` (all rows for None)."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, filters: Filters | None = None) -> list[Candidates]:
        """Top-k rows by inner product per query; k filtered results whenever k rows match."""

    @abstractmethod
    def apply(self, removes: Sequence[int], upserts: Sequence[Row]) -> None:
        """One change: remove `removes`, then add or replace every row of `upserts` (by id)."""

    @abstractmethod
    def fetch(self, ids: Sequence[int], vectors: bool = True) -> dict[int, Row]:
        """The stored rows of `ids` (unknown ids left out); `vectors=False` may leave vectors empty."""

    @abstractmethod
    def facets(self, fields: Sequence[str]) -> dict[str, dict[str, int]]:
        """field -> value -> number of rows (empty values included as "")."""

    def known_values(self, name: str) -> set[str]:
        """Values of field `name` a filter may name (at least those of the current rows)."""
        return set(self.facets([name])[name])

    def refresh(self) -> None:  # noqa: B027 - optional
        """Drop caches of what other processes may have changed."""

    @property
    def generation(self) -> object:
        """Changes whenever what `facets` would count may have changed (a cache key)."""
        return None

    def needs_rebuild(self) -> bool:
        """Whether `rebuild` would pay (FAISS folds its growing rows into a graph); engines maintain themselves."""
        return False

    def rebuild(self) -> None:  # noqa: B027 - optional maintenance
        """Background maintenance; a no-op where the engine maintains itself."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""
