"""Vector index backends by name, imported only when asked for (`INDEX_BACKEND=faiss|milvus`)."""

from __future__ import annotations

from importlib import import_module

from .base import BackendUnavailableError, Candidates, CollectionNotLoadedError, Filters, Row, VectorBackend

BACKENDS = {
    "faiss": "imageretrieval.backends.faiss_backend:FaissBackend",
    "milvus": "imageretrieval.backends.milvus_backend:MilvusBackend",
}


def backend_class(name: str) -> type[VectorBackend]:
    """The class registered as `name`; a ValueError naming the choices for anything else."""
    target = BACKENDS.get(name)
    if target is None:
        raise ValueError(f"unknown index backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


__all__ = ["BACKENDS", "BackendUnavailableError", "Candidates", "CollectionNotLoadedError", "Filters", "Row",
           "VectorBackend", "backend_class"]
