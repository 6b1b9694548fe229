"""Training curves and a confusion matrix (uses the evaluation suite's plot when it exists)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def plot_curves(log_csv: Path, out: Path) -> Path:
    """Loss (train, val) and scores (val) per epoch from the CSV log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(log_csv)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for col in [c for c in df.columns if c.endswith("loss")]:
        a.plot(df["epoch"], df[col], marker="o", label=col)
    a.set_xlabel("epoch"), a.set_title("loss"), a.legend()
    for col in [c for c in df.columns if c.startswith("val_") and not c.endswith("loss")] + (
            ["train_acc"] if "train_acc" in df else []):
        b.plot(df["epoch"], df[col], marker="o", label=col)
    b.set_xlabel("epoch"), b.set_title("validation scores"), b.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(true), np.asarray(pred)), 1)
    return cm


def plot_confusion(true: np.ndarray, pred: np.ndarray, classes: list[str], out: Path, title: str = "",
                   max_classes: int = 30) -> Path:
    """Row-normalized confusion over the `max_classes` most frequent true classes.

    Uses the evaluation suite's `plot_confusion_matrix` when it is there, else a plain heat map.
    """
    true, pred = np.asarray(true), np.asarray(pred)
    values, counts = np.unique(true, return_counts=True)
    shown = values[np.argsort(-counts, kind="stable")[:max_classes]]
    names = [classes[i] for i in shown]
    try:
        from ..evaluation.plots import plot_confusion_matrix
    except ImportError:
        plot_confusion_matrix = None
    if plot_confusion_matrix is not None:
        return plot_confusion_matrix([classes[t] for t in true], [classes[p] for p in pred], names, out,
                                     title=title or "confusion matrix")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = {c: i for i, c in enumerate(shown)}
    keep = np.array([t in pos and p in pos for t, p in zip(true, pred, strict=True)], bool)
    cm = confusion_matrix([pos[t] for t in true[keep]], [pos[p] for p in pred[keep]], len(shown))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.45 * len(names), 1 + 0.45 * len(names)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
