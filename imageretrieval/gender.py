"""Gender prediction for "same gender first" re-ranking.

An embedding trained on product types groups look-alike garments of both genders: a photo of a man's
shirt has women's shirts among its nearest products. On photos the nearest products' genders cannot
tell (they are the very mistake), but a classifier on the same query vector can, once it has seen photos
as well as catalog images. `finetune-rerank --gender` trains one per model on L2-normalized vectors
(multinomial logistic regression, or with a hidden layer of ReLUs, which reads more of the gender that
an embedding trained on types keeps) and chooses it and its confidence threshold on the validation
splits; it is served with numpy alone. A query whose prediction is less confident than
the threshold is not re-ranked by gender. Unisex products match either gender.

The nearest products' genders still carry something for queries like the catalog's own images, where
the embedding's neighbourhood is mostly right: with `neighbour_weight` b > 0, the classifier's
probabilities are multiplied by the neighbours' gender shares (Laplace-smoothed counts) to the power b,
so a confident classifier wins on photos and a unanimous neighbourhood where the classifier hesitates.

A predictor belongs to one version of its model: it keeps the vectors of a few catalog products it was
trained with (`probe_ids`, `probe_vectors`), and a search service compares them with its index's own
(`agrees_with`), so a model retrained under the same name cannot use a stale predictor unnoticed.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io_utils import atomic_write

FILE = "gender_predictor.npz"
PROBE_PRODUCTS = 8  # catalog products whose vectors identify the model version a predictor was trained on
HIDDEN_LAYER_STEPS = 16_000  # minibatches that train a hidden layer (of 256 rows)
PROBE_MIN_COSINE = 0.95  # the same model agrees far above this (int8 included); another version far below
GENDERS = ("Boys", "Girls", "Men", "Women")  # what a query is predicted to be
UNISEX = "Unisex"  # a product of this gender suits any query
NO_GENDER = ""  # no confident prediction: the query is not re-ranked by gender


class GenderPredictorError(ValueError):
    """A gender predictor file that cannot be used; the message names the file and the fix."""


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class GenderPredictor:
    """Query vectors -> the gender to show first (NO_GENDER when unsure)."""

    classes: tuple[str, ...]
    coef: np.ndarray  # (classes, dims), or (classes, hidden) after a hidden layer
    intercept: np.ndarray  # (classes,)
    threshold: float = 0.5
    neighbour_weight: float = 0.0
    meta: dict = field(default_factory=dict)
    probe_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    probe_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    hidden_coef: np.ndarray | None = None  # (hidden, dims): a ReLU layer before `coef`; None = linear
    hidden_intercept: np.ndarray | None = None  # (hidden,)

    def __post_init__(self) -> None:
        if (self.hidden_coef is None) != (self.hidden_intercept is None):
            raise ValueError("a hidden layer needs both hidden_coef and hidden_intercept")

    def agrees_with(self, vectors_of) -> bool | None:
        """Whether the model's vectors of the probe products (`vectors_of(ids) -> {id: vector}`, products no
        longer in the catalog left out) are, for most of them, the ones it was trained with; None when none
        can be compared."""
        found = vectors_of([int(i) for i in self.probe_ids])
        rows = [i for i, pid in enumerate(self.probe_ids.tolist()) if pid in found]
        if not rows:
            return None
        now = _l2(np.stack([found[int(self.probe_ids[i])] for i in rows]))
        then = _l2(self.probe_vectors[rows])
        if now.shape[1] != then.shape[1]:
            return False
        # the median: a shop that gave a few of them new images (other vectors) still has the same model
        return float(np.median(np.sum(now * then, axis=1))) >= PROBE_MIN_COSINE

    @property
    def dims(self) -> int:
        return int((self.coef if self.hidden_coef is None else self.hidden_coef).shape[1])

    @property
    def hidden(self) -> int:
        """Units of the hidden layer (0: logistic regression)."""
        return 0 if self.hidden_coef is None else int(self.hidden_coef.shape[0])

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """(n, classes) softmax probabilities of the L2-normalized vectors."""
        x = _l2(np.atleast_2d(vectors))
        if self.hidden_coef is not None:
            x = np.maximum(x @ self.hidden_coef.T + self.hidden_intercept, 0.0)
        logits = x @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, vectors: np.ndarray, neighbour_genders: Sequence[Sequence[str]] | None = None,
                threshold: float | None = None) -> np.ndarray:
        """(n,) object array: the most probable gender, or NO_GENDER below the threshold. `neighbour_genders`:
        per query, the genders of its nearest products (used with `neighbour_weight` > 0)."""
        p = self.probabilities(vectors)
        if self.neighbour_weight > 0 and neighbour_genders is not None:
            counts = np.ones_like(p)  # Laplace: no neighbour of a gender does not rule it out
            index = {c: i for i, c in enumerate(self.classes)}
            for q, genders in enumerate(neighbour_genders):
                for gender in genders:
                    if gender in index:
                        counts[q, index[gender]] += 1
            p = p * (counts / counts.sum(axis=1, keepdims=True)) ** self.neighbour_weight
            p /= p.sum(axis=1, keepdims=True)
        best = p.argmax(axis=1)
        sure = p[np.arange(len(p)), best] >= (self.threshold if threshold is None else threshold)
        return np.where(sure, np.asarray(self.classes, dtype=object)[best], NO_GENDER).astype(object)

    def save(self, path: Path) -> None:
        def write(tmp: Path) -> None:
            hidden = {} if self.hidden_coef is None else {"hidden_coef": self.hidden_coef.astype(np.float32),
                                                          "hidden_intercept": self.hidden_intercept.astype(np.float32)}
            with open(tmp, "wb") as fh:
                np.savez(fh, coef=self.coef.astype(np.float32), intercept=self.intercept.astype(np.float32),
                         probe_ids=self.probe_ids.astype(np.int64), probe_vectors=self.probe_vectors.astype(np.float16),
                         meta=np.array(json.dumps({**self.meta, "classes": list(self.classes),
                                                   "threshold": self.threshold,
                                                   "neighbour_weight": self.neighbour_weight})), **hidden)

        atomic_write(Path(path), write)

    @classmethod
    def load(cls, path: Path) -> GenderPredictor:
        try:
            with np.load(path) as data:
                meta = json.loads(str(data["meta"]))
                coef, intercept = data["coef"].astype(np.float32), data["intercept"].astype(np.float32)
                probe_ids = data["probe_ids"].astype(np.int64) if "probe_ids" in data else np.zeros(0, np.int64)
                hidden = [data[k].astype(np.float32) if k in data else None
                          for k in ("hidden_coef", "hidden_intercept")]
                probe_vectors = (data["probe_vectors"].astype(np.float32) if "probe_vectors" in data else None)
            classes = tuple(str(c) for c in meta.pop("classes"))
            threshold = float(meta.pop("threshold"))
            neighbour_weight = float(meta.pop("neighbour_weight", 0.0))
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise GenderPredictorError(f"{path}: not a gender predictor ({exc}); make it again with "
                                       "`imageretrieval finetune-rerank --gender`") from None
        hidden_coef, hidden_intercept = hidden
        damaged = coef.ndim != 2 or coef.shape[0] != len(classes) or intercept.shape != (len(classes),)
        if (hidden_coef is None) != (hidden_intercept is None):
            damaged = True
        elif hidden_coef is not None:
            damaged |= (hidden_coef.ndim != 2 or coef.ndim != 2 or hidden_coef.shape[0] != coef.shape[-1]
                        or hidden_intercept.shape != (hidden_coef.shape[0],))
        damaged |= not all(np.isfinite(a).all() for a in (coef, intercept, *hidden) if a is not None)
        if damaged:
            shapes = ", ".join(f"{k} {getattr(a, 'shape', None)}" for k, a in
                               (("coef", coef), ("intercept", intercept), ("hidden_coef", hidden_coef),
                                ("hidden_intercept", hidden_intercept)) if a is not None)
            raise GenderPredictorError(f"{path}: damaged gender predictor ({shapes}, {len(classes)} classes, or "
                                       "values that are not finite); make it again with "
                                       "`imageretrieval finetune-rerank --gender`")
        dims = (coef if hidden_coef is None else hidden_coef).shape[-1]
        if probe_vectors is None:
            probe_vectors = np.zeros((0, dims), np.float32)
        return cls(classes, coef, intercept, threshold, neighbour_weight, meta, probe_ids, probe_vectors,
                   hidden_coef, hidden_intercept)


def fit_gender_predictor(vectors: np.ndarray, genders: Sequence[str], sample_weight: np.ndarray | None = None,
                         c: float = 1.0, threshold: float = 0.5, seed: int = 0, hidden: int = 0,
                         steps: int | None = None) -> GenderPredictor:
    """Multinomial logistic regression on L2-normalized vectors, or with `hidden` > 0 a network with one
    hidden layer of that many ReLUs (`fit_hidden_layer`); only rows of a GENDERS value train it."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray([str(g) for g in genders], dtype=object)
    keep = np.isin(labels, GENDERS)
    classes = sorted(set(labels[keep]))
    if len(classes) < 2:
        raise ValueError(f"a gender predictor needs products of at least two of {', '.join(GENDERS)}; "
                         f"got {classes or 'none'}")
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)[keep]
    if hidden > 0:
        index = {g: i for i, g in enumerate(classes)}
        targets = np.array([index[g] for g in labels[keep]], dtype=np.int64)
        layers = fit_hidden_layer(_l2(vectors)[keep], targets, len(classes), hidden,
                                  np.ones(len(targets)) if weights is None else weights,
                                  steps=steps or HIDDEN_LAYER_STEPS, seed=seed)
        return GenderPredictor(tuple(classes), layers[2], layers[3], threshold, hidden_coef=layers[0],
                               hidden_intercept=layers[1])
    clf = LogisticRegression(C=c, max_iter=1000, random_state=seed)
    clf.fit(_l2(vectors)[keep], labels[keep].astype(str), sample_weight=weights)
    coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # binary: sklearn keeps one row (the second class); softmax needs both
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return GenderPredictor(tuple(str(c) for c in clf.classes_), coef.astype(np.float32),
                           intercept.astype(np.float32), threshold)


def fit_hidden_layer(x: np.ndarray, targets: np.ndarray, n_classes: int, hidden: int, weights: np.ndarray,
                     steps: int = HIDDEN_LAYER_STEPS, batch: int = 256, lr: float = 1e-3, weight_decay: float = 0.01,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(hidden_coef, hidden_intercept, coef, intercept) of a ReLU network trained with weighted
    cross-entropy (AdamW, about `steps` seeded minibatches in whole epochs). Training uses torch;
    serving the result needs numpy only."""
    import torch
    import torch.nn.functional as F

    if (np.asarray(weights) < 0).any():
        raise ValueError("sample weights must not be negative")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(),
                                  torch.nn.Linear(hidden, n_classes))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    xs, ys = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(targets)
    ws = torch.from_numpy(np.asarray(weights, np.float32))
    for _ in range(max(1, -(-steps * batch // max(len(xs), batch)))):  # epochs; one minibatch each for few rows
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), batch):
            rows = order[start: start + batch]
            loss = ((F.cross_entropy(net(xs[rows]), ys[rows], reduction="none") * ws[rows]).sum()
                    / ws[rows].sum().clamp_min(1e-12))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    first, last = net[0], net[2]
    return tuple(t.detach().numpy().astype(np.float32) for t in (first.weight, first.bias, last.weight, last.bias))


def gender_matches(row_genders: np.ndarray, predicted) -> np.ndarray:
    """Whether each row suits its query's predicted gender: the same gender, or Unisex. Either
    `row_genders` (n_queries, n) with `predicted` (n_queries,), or one query's (n,) rows with its
    predicted gender (a string). NO_GENDER matches nothing."""
    rows = np.asarray(row_genders, dtype=object)
    pred = np.asarray(predicted, dtype=object)
    if rows.ndim == 2:
        pred = pred.reshape(-1, 1)
    return ((rows == pred) | (rows == UNISEX)) & (pred != NO_GENDER)


def predictor_path(model_name: str, workdir: Path) -> Path | None:
    """The model's gender predictor: `<WORKDIR>/models/<model>/` (made here) before the package's own."""
    local = Path(workdir) / "models" / model_name / FILE
    if local.is_file():
        return local
    shipped = Path(__file__).resolve().parent / "weights" / model_name / FILE
    return shipped if shipped.is_file() else None


def load_gender_predictor(model_name: str, workdir: Path) -> GenderPredictor | None:
    path = predictor_path(model_name, workdir)
    return None if path is None else GenderPredictor.load(path)
