"""Evaluation plots (matplotlib Agg, PNG files): t-SNE, precision@k curves, per-class precision,
confusion matrix, PCA explained variance and the PCA search curve."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io_utils import atomic_write  # noqa: E402

log = logging.getLogger(__name__)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    log.info("wrote %s", path)
    return path


def _colors(n: int):
    cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(n)]


def tsne_embedding(features: np.ndarray, seed: int = 0, pca_dims: int = 50, perplexity: float = 30.0,
                   max_iter: int = 1000) -> np.ndarray:
    """2-D t-SNE of the rows (after a PCA to `pca_dims`, the usual speed-up)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float32)
    if x.shape[1] > pca_dims and len(x) > pca_dims:
        x = PCA(pca_dims, random_state=seed).fit_transform(x)
    perplexity = min(perplexity, max(2.0, (len(x) - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed, max_iter=max_iter).fit_transform(x)


def plot_tsne(features: np.ndarray, labels: Sequence[str], path: Path, title: str = "t-SNE",
              max_points: int = 2000, seed: int = 0, max_iter: int = 1000) -> Path:
    """t-SNE of features coloured by label (a seeded subsample of at most `max_points`)."""
    labels = np.asarray(labels).astype(str)
    pick = np.arange(len(labels))
    if len(pick) > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(pick), max_points, replace=False))
    xy = tsne_embedding(np.asarray(features)[pick], seed, max_iter=max_iter)
    classes = sorted(set(labels[pick].tolist()))
    fig, ax = plt.subplots(figsize=(9, 7))
    for c, color in zip(classes, _colors(len(classes)), strict=True):
        m = labels[pick] == c
        ax.scatter(xy[m, 0], xy[m, 1], s=6, color=color, label=f"{c} ({int(m.sum())})", alpha=0.8)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    return _save(fig, path)


def plot_precision_curves(curves: Mapping[str, Sequence[float]], path: Path,
                          title: str = "precision@k") -> Path:
    """One line per model: mean precision@k for k = 1..len(curve)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in sorted(curves.items()):
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
    ax.axvline(15, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("k")
    ax.set_ylabel("precision@k")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_per_class_precision(values: Mapping[str, float], path: Path, title: str = "precision@15 per class",
                             counts: Mapping[str, int] | None = None) -> Path:
    """Horizontal bars, best class on top."""
    items = sorted(values.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(items) + 1.5))
    names = [f"{k} ({counts[k]})" if counts else k for k, _ in items]
    ax.barh(names, [v for _, v in items], color="tab:blue")
    for i, (_, v) in enumerate(items):
        ax.text(v + 0.01, i, f"{v:.2f}", va="center", fontsize=7)
    ax.set_xlim(0, 1.08)
    ax.set_title(title)
    return _save(fig, path)


def confusion_matrix(y_true: Sequence, y_pred: Sequence, labels: Sequence) -> np.ndarray:
    """Counts[i, j] = items of class labels[i] predicted as labels[j] (others ignored)."""
    index = {lab: i for i, lab in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        if t in index and p in index:
            cm[index[t], index[p]] += 1
    return cm


def plot_confusion_matrix(y_true: Sequence, y_pred: Sequence, labels: Sequence, path: Path,
                          normalize: bool = True, title: str = "confusion matrix") -> Path:
    """Confusion matrix heat map (rows = true class, normalized per row by default)."""
    cm = confusion_matrix(y_true, y_pred, labels).astype(np.float64)
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(0.45 * n + 3, 0.45 * n + 2.5))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(n), [str(x) for x in labels], rotation=90, fontsize=7)
    ax.set_yticks(range(n), [str(x) for x in labels], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, f"{cm[i, j]:.2f}" if normalize else int(cm[i, j]), ha="center", va="center",
                            fontsize=6, color="white" if cm[i, j] > 0.5 * cm.max() else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    return _save(fig, path)


def plot_explained_variance(eigvals: np.ndarray, path: Path, chosen: int | None = None,
                            title: str = "PCA explained variance") -> Path:
    """Individual (bars) and cumulative (line) explained-variance ratio per component."""
    ev = np.clip(np.asarray(eigvals, dtype=np.float64), 0, None)
    ratio = ev / ev.sum()
    x = np.arange(1, len(ratio) + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.bar(x, ratio, width=1.0, color="tab:blue", label="individual")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    ax.set_yscale("log")
    ax.set_ylim(bottom=max(ratio[ratio > 0].min() if (ratio > 0).any() else 1e-8, ratio.max() * 1e-6))
    ax2 = ax.twinx()
    ax2.plot(x, np.cumsum(ratio), color="tab:red", label="cumulative")
    ax2.set_ylim(0, 1.01)
    ax2.set_ylabel("cumulative")
    if chosen:
        ax2.axvline(chosen, color="black", ls="--", lw=0.8)
        ax2.text(chosen, 0.05, f" {chosen}: {np.cumsum(ratio)[min(chosen, len(ratio)) - 1]:.2f}", fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def plot_pca_search(scores: Mapping[int, float], path: Path, metric: str, chosen: int | None = None,
                    title: str = "PCA dimension search (validation split)") -> Path:
    """The metric for every n_components tried by the coarse-to-fine search."""
    ns = sorted(n for n in scores if n > 0)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(ns, [scores[n] for n in ns], "o-", ms=3, label="PCA-whitening to n dims")
    if 0 in scores:
        ax.axhline(scores[0], color="tab:gray", ls=":", lw=1, label="no whitening (L2 only)")
    ax.legend(loc="best", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n_components")
    ax.set_ylabel(metric)
    if chosen == 0:
        ax.set_title(f"{title}: best = no whitening")
    elif chosen:
        ax.axvline(chosen, color="tab:red", ls="--", lw=0.8)
        ax.set_title(f"{title}: best {chosen}")
    else:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)
