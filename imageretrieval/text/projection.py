"""TextProjection: a frozen sentence embedding -> a model's image embedding space (locked-image tuning).

Trained contrastively (symmetric InfoNCE) between the text embeddings of catalog products (their
names and attribute phrases) and the frozen image features of the same products, both cached: it
trains in minutes on a CPU. Served with numpy alone (two small matrices), no PyTorch needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io_utils import atomic_write

log = logging.getLogger(__name__)

FILE = "text_projection.npz"


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))


@dataclass
class TextProjection:
    """text (n, d_text) -> raw image-feature space (n, d_image), L2-normalized; MLP with one hidden layer."""

    encoder: str
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    meta: dict

    @property
    def dims(self) -> int:
        return int(self.w2.shape[1])

    def __call__(self, text_vectors: np.ndarray) -> np.ndarray:
        h = _gelu(np.asarray(text_vectors, np.float32) @ self.w1 + self.b1)
        out = h @ self.w2 + self.b2
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def save(self, path: Path) -> None:
        import json

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, w1=self.w1.astype(np.float16), b1=self.b1, w2=self.w2.astype(np.float16), b2=self.b2,
                         meta=np.array(json.dumps({**self.meta, "encoder": self.encoder})))

        atomic_write(Path(path), write)

    @classmethod
    def load(cls, path: Path) -> TextProjection:
        import json

        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            return cls(meta.pop("encoder"), data["w1"].astype(np.float32), data["b1"].astype(np.float32),
                       data["w2"].astype(np.float32), data["b2"].astype(np.float32), meta)


def projection_path(model_name: str, workdir: Path) -> Path | None:
    """The model's text projection: `<WORKDIR>/models/<model>/` (trained here) before the package's own."""
    local = Path(workdir) / "models" / model_name / FILE
    if local.is_file():
        return local
    shipped = Path(__file__).resolve().parents[1] / "weights" / model_name / FILE
    return shipped if shipped.is_file() else None


def train_projection(text: np.ndarray, image: np.ndarray, pairs: np.ndarray, val: tuple | None = None,
                     hidden: int = 1024, epochs: int = 30, batch: int = 512, lr: float = 2e-3,
                     weight_decay: float = 1e-4, seed: int = 0, progress: bool = True,
                     score=None) -> tuple[dict, list[dict]]:
    """Symmetric InfoNCE between projected texts and their products' image features.

    `text` (m, d_t) and `image` (n, d_i) L2-normalized; `pairs` (p, 2) rows (text index, image index).
    A batch holds distinct products (a product's other texts are not negatives). `score(weights)`,
    when given, rates the weights on validation after each epoch (higher is better): the best epoch
    is kept. Returns (numpy weights, history).
    """
    import torch
    from tqdm import tqdm

    if len(pairs) < 2:
        raise ValueError(f"a text projection needs at least 2 (text, product) training pairs; got {len(pairs)}")
    batch = min(batch, len(pairs))  # a small catalog: one batch of all, not zero steps
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    d_t, d_i = text.shape[1], image.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(d_t, hidden), torch.nn.GELU(approximate="tanh"),
                              torch.nn.Linear(hidden, d_i))
    log_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.05), dtype=torch.float32))
    opt = torch.optim.AdamW([*net.parameters(), log_scale], lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, len(pairs) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    text_t, image_t = torch.from_numpy(text), torch.from_numpy(image)
    best, best_score, history = None, -np.inf, []
    bar = tqdm(range(epochs), desc="text projection", unit="epoch", disable=not progress)
    for epoch in bar:
        order = rng.permutation(len(pairs))
        losses = []
        for start in range(0, len(order) - batch + 1, batch):
            chosen = pairs[order[start: start + batch]]
            _, first = np.unique(chosen[:, 1], return_index=True)  # one text per product in a batch
            chosen = chosen[np.sort(first)]
            t = torch.nn.functional.normalize(net(text_t[chosen[:, 0]]), dim=1)
            v = image_t[chosen[:, 1]]
            logits = log_scale.exp().clamp(max=100) * t @ v.T
            target = torch.arange(len(chosen))
            loss = (torch.nn.functional.cross_entropy(logits, target) +
                    torch.nn.functional.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        weights = _export(net)
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan")}
        if score is not None:
            entry["val"] = float(score(weights))
        history.append(entry)
        current = entry.get("val", -entry["loss"])
        if current > best_score:
            best, best_score = weights, current
        bar.set_postfix(loss=f"{entry['loss']:.3f}", **({"val": f"{entry['val']:.4f}"} if "val" in entry else {}))
    return best, history


def _export(net) -> dict:
    first, last = net[0], net[2]
    return {"w1": first.weight.detach().numpy().T.copy(), "b1": first.bias.detach().numpy().copy(),
            "w2": last.weight.detach().numpy().T.copy(), "b2": last.bias.detach().numpy().copy()}
