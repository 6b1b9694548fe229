"""FAISS indexes from a factory string ("Flat", "HNSW32", "IVF1024,PQ32", ...), inner-product metric.

Filtered search runs inside FAISS with an ID selector, so k filtered results come back whenever
k exist (not a top-k cut filtered afterwards).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from .io_utils import atomic_write
from .ordering import rank_order


class IndexFactoryError(ValueError):
    pass


AUTO = "auto"
AUTO_FLAT_MAX_FLOATS = 8_000_000  # n x d up to which exact search costs <~2 ms per query on one core
AUTO_GRAPH = "HNSW32"


def resolve_factory(factory: str, n: int, d: int) -> str:
    """`auto`: exact `Flat` for small catalogs, `HNSW32` beyond ~8M floats.

    An exact search reads every vector once per query batch: 44,072 x 1,280 floats took 19 ms per
    query on one core here, as much as the whole serving budget; HNSW32 (efSearch 128) took 0.9 ms
    with recall@15 0.9990 against exact search on the same vectors (docs/benchmarks.md, pipeline).
    """
    if factory.strip().lower() != AUTO:
        return factory
    return "Flat" if n * d <= AUTO_FLAT_MAX_FLOATS else AUTO_GRAPH


def build_index(vectors: np.ndarray, factory: str = "Flat", seed: int = 42) -> faiss.Index:
    """Build an inner-product index over `vectors` (n, d) float32; trains it when the type needs it."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexFactoryError(f"invalid FAISS index factory string {factory!r}: {exc}") from exc
    if not index.is_trained:
        if hasattr(index, "cp"):
            index.cp.seed = seed
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and ivf.nlist > n:
            raise IndexFactoryError(f"{factory!r} needs at least {ivf.nlist} vectors to train, got {n}")
        index.train(vectors)
    index.add(vectors)
    return index


def _search_params(index: faiss.Index, selector, nprobe: int | None, ef_search: int | None):
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe or min(ivf.nlist, 32))
    if "HNSW" in type(index).__name__ or isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=ef_search or 128)
    return faiss.SearchParameters(sel=selector)


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    allowed: np.ndarray | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, row indices) per query; rows -1 where fewer than k exist.

    `allowed` is a boolean mask over index rows (a filter) or None.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, min(k, index.ntotal))
    selector = bits = None
    if allowed is not None:
        if not allowed.any():
            return (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
        bits = np.packbits(np.asarray(allowed, bool), bitorder="little")  # referenced until the search ends
        selector = faiss.IDSelectorBitmap(bits)
    params = _search_params(index, selector, nprobe, ef_search)
    scores, rows = index.search(queries, k, params=params)
    del bits
    return scores, rows


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int,
                 allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, as `search` returns it (rows -1 and scores -inf past the allowed rows).

    One matrix product and a partial sort per query: on a small CPU with many queries at once this is
    several times faster than FAISS' flat search. The candidates are ordered by `ordering.rank_order`,
    the rule of the evaluation's rankings too (ties by row).
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    rows_all = None if allowed is None else np.flatnonzero(allowed)
    scores = queries @ np.asarray(vectors if rows_all is None else vectors[rows_all], dtype=np.float32).T
    scores = np.nan_to_num(scores, nan=-np.inf)  # a NaN never outranks a number
    out_scores = np.full((len(queries), k), -np.inf, np.float32)
    out_rows = np.full((len(queries), k), -1, np.int64)
    fetch = min(k, scores.shape[1])
    if fetch == 0:
        return out_scores, out_rows
    for qi, row_scores in enumerate(scores):
        cut = row_scores[np.argpartition(-row_scores, fetch - 1)[:fetch]].min()
        cand = np.flatnonzero(row_scores >= cut)  # every tie at the cut, in row order
        cand = cand[rank_order(row_scores[cand])][:fetch]  # the project's one ranking rule
        out_scores[qi, :fetch] = row_scores[cand]
        out_rows[qi, :fetch] = cand if rows_all is None else rows_all[cand]
    return out_scores, out_rows


def save_index(index: faiss.Index, path: Path) -> None:
    atomic_write(Path(path), lambda p: faiss.write_index(index, str(p)))


def load_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))
