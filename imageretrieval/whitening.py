"""Post-processing of raw features: L2 -> PCA-whitening -> L2 (as in the seed and cirtorch).

Pure functions (`l2_normalize`, `whiten_learn`, `whiten_apply`) plus a small persisted wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io_utils import save_npz


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def whiten_learn(x: np.ndarray, n_components: int | None = None, eps: float = 1e-6):
    """Learn PCA-whitening on rows of `x`: returns (mean (d,), projection (d, n), eigenvalues (d,)).

    Eigenvalues are of the covariance, sorted descending; all are returned so callers can plot the
    explained variance. The projection divides each principal axis by sqrt(eigenvalue).
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / max(1, len(x) - 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1]
    eigvals, eigvecs = eigvals[order], eigvecs[:, order]
    # Deterministic sign: largest-magnitude coordinate of each axis positive.
    signs = np.sign(eigvecs[np.abs(eigvecs).argmax(axis=0), np.arange(eigvecs.shape[1])])
    eigvecs = eigvecs * np.where(signs == 0, 1, signs)
    n = min(n_components or x.shape[1], x.shape[1], max(1, len(x) - 1))
    proj = eigvecs[:, :n] / np.sqrt(np.maximum(eigvals[:n], 0) + eps)
    return mean.astype(np.float32), proj.astype(np.float32), eigvals.astype(np.float32)


def whiten_apply(x: np.ndarray, mean: np.ndarray, proj: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32) - mean) @ proj


@dataclass
class PostProcessor:
    """`raw` -> L2 -> (PCA-whitening -> L2 when fitted). Unfitted, it only L2-normalizes."""

    mean: np.ndarray | None = None
    proj: np.ndarray | None = None
    eigvals: np.ndarray | None = None

    @property
    def out_dims(self) -> int | None:
        return None if self.proj is None else int(self.proj.shape[1])

    @classmethod
    def fit(cls, raw: np.ndarray, n_components: int | None) -> PostProcessor:
        mean, proj, eig = whiten_learn(l2_normalize(raw), n_components)
        return cls(mean, proj, eig)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        x = l2_normalize(raw)
        if self.proj is None:
            return x
        return l2_normalize(whiten_apply(x, self.mean, self.proj))

    def save(self, path: Path) -> None:
        if self.proj is None:
            save_npz(path, kind=np.array("l2"))
        else:
            save_npz(path, kind=np.array("pcaw"), mean=self.mean, proj=self.proj, eigvals=self.eigvals)

    @classmethod
    def load(cls, path: Path) -> PostProcessor:
        with np.load(path) as z:
            if str(z["kind"]) == "l2":
                return cls()
            return cls(z["mean"], z["proj"], z["eigvals"])
