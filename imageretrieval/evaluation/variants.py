"""Feature variants compared by the evaluation: raw, normalized, AQE and alpha-QE.

* raw: the backbone's pooled features compared by cosine similarity (L2 only, no whitening).
* normalized: L2 -> PCA-whitening -> L2, the index's post-processing; the whitening is fitted on
  catalog features that never include the evaluated queries (the train split by default).
* aqe: normalized, then average query expansion (Chum et al. 2007): the query is replaced by the
  L2-normalized sum of itself and its top-k database neighbours (the seed's TOP_K_AQE = 15).
* alpha-qe: normalized, then alpha-weighted QE (Radenovic et al. 2018): neighbours weighted by
  max(similarity, 0) ** alpha.
With `dba`, database vectors are expanded the same way (the seed applied its AQE to every vector
of the feature file, i.e. to the database too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..whitening import PostProcessor, l2_normalize, whiten_learn
from .metrics import rank_order

VARIANTS = ("raw", "normalized", "aqe", "alpha-qe")
SEED_TOP_K_AQE = 15
DEFAULT_ALPHA = 3.0


def query_expansion(
    queries: np.ndarray,
    database: np.ndarray,
    k: int = SEED_TOP_K_AQE,
    alpha: float = 0.0,
    exclude_rows: np.ndarray | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """Expanded, L2-normalized queries: q + sum_i w_i d_i over the top-k database neighbours.

    alpha = 0 gives AQE (w_i = 1); alpha > 0 gives alpha-QE (w_i = max(s_i, 0) ** alpha).
    `exclude_rows` (per query, -1 for none) keeps a query's own database entry out of its neighbours,
    so it is not counted twice. Neighbour ties are broken by database row, like the rankings.
    """
    q = np.asarray(queries, dtype=np.float32)
    d = np.asarray(database, dtype=np.float32)
    k = max(0, min(k, len(d) - int(exclude_rows is not None and (np.asarray(exclude_rows) >= 0).any())))
    if k == 0:
        return l2_normalize(q)
    out = np.empty_like(q)
    for lo in range(0, len(q), chunk):
        s = q[lo:lo + chunk] @ d.T
        if exclude_rows is not None:
            ex = np.asarray(exclude_rows[lo:lo + chunk])
            has = ex >= 0
            s[np.flatnonzero(has), ex[has]] = -np.inf
        top = rank_order(s)[:, :k]
        sims = np.take_along_axis(s, top, axis=1)
        w = np.ones_like(sims) if alpha == 0 else np.maximum(sims, 0) ** alpha
        out[lo:lo + chunk] = q[lo:lo + chunk] + np.einsum("qk,qkd->qd", w, d[top])
    return l2_normalize(out)


def database_expansion(database: np.ndarray, k: int = SEED_TOP_K_AQE, alpha: float = 0.0) -> np.ndarray:
    """Each database vector expanded by its own top-k neighbours (itself excluded): DBA."""
    rows = np.arange(len(database))
    return query_expansion(database, database, k, alpha, exclude_rows=rows)


@dataclass
class Whitening:
    """A whitening fitted once at full rank; any n_components is a slice of it (PCA is nested)."""

    mean: np.ndarray
    proj: np.ndarray
    eigvals: np.ndarray

    @classmethod
    def fit(cls, raw: np.ndarray) -> Whitening:
        mean, proj, eig = whiten_learn(l2_normalize(raw), None)
        return cls(mean, proj, eig)

    @property
    def max_components(self) -> int:
        return int(self.proj.shape[1])

    def postprocessor(self, n_components: int | None) -> PostProcessor:
        """The PostProcessor of `PostProcessor.fit(raw, n_components)`, without refitting."""
        if not n_components:
            return PostProcessor()
        n = min(n_components, self.max_components)
        return PostProcessor(self.mean, self.proj[:, :n], self.eigvals)


def apply_variant(
    variant: str,
    queries_raw: np.ndarray,
    database_raw: np.ndarray,
    whitening: Whitening | None = None,
    n_components: int | None = None,
    qe_k: int = SEED_TOP_K_AQE,
    alpha: float = DEFAULT_ALPHA,
    exclude_rows: np.ndarray | None = None,
    dba: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(queries, database) vectors of a variant; `whitening` is needed by all but `raw`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown feature variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if variant == "raw":
        return l2_normalize(queries_raw), l2_normalize(database_raw)
    if whitening is None:
        raise ValueError(f"variant {variant!r} needs a fitted whitening")
    post = whitening.postprocessor(n_components)
    q, d = post(queries_raw), post(database_raw)
    if variant == "normalized":
        return q, d
    a = 0.0 if variant == "aqe" else alpha
    if dba:
        d_exp = database_expansion(d, qe_k, a)
        return query_expansion(q, d, qe_k, a, exclude_rows), d_exp
    return query_expansion(q, d, qe_k, a, exclude_rows), d
