"""Metric-learning losses: pure functions of (embeddings, labels, proxies) or of paired views + thin modules.

Proxy-Anchor (Kim et al., CVPR 2020) and normalized softmax (Zhai & Wu, 2019; ArcFace without the
margin). Written out here (≈20 lines) rather than pulled from a dependency; the tests compare
Proxy-Anchor against pytorch-metric-learning when it is installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def proxy_anchor_loss(emb: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor,
                      margin: float = 0.1, alpha: float = 32.0) -> torch.Tensor:
    """Pulls each proxy towards its positives, pushes it from negatives; hardness-weighted via log-sum-exp."""
    cos = F.normalize(emb.float(), dim=1) @ F.normalize(proxies.float(), dim=1).T  # (B, C)
    pos = F.one_hot(labels, proxies.shape[0]).bool()
    neg = ~pos
    with_pos = pos.any(0)
    pos_term = torch.log1p((torch.exp(-alpha * (cos - margin)) * pos).sum(0))
    neg_term = torch.log1p((torch.exp(alpha * (cos + margin)) * neg).sum(0))
    return pos_term[with_pos].sum() / with_pos.sum().clamp(min=1) + neg_term.sum() / proxies.shape[0]


def normalized_softmax_loss(emb: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor,
                            temperature: float = 0.05) -> torch.Tensor:
    """Cross-entropy over cosine similarities to class proxies, scaled by 1/temperature."""
    cos = F.normalize(emb.float(), dim=1) @ F.normalize(proxies.float(), dim=1).T
    return F.cross_entropy(cos / temperature, labels)


def view_contrastive_loss(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Symmetric InfoNCE over paired views: row i of `a` and row i of `b` are one product.

    Each view must find its own pair among the batch's other products (cross-entropy over cosine
    similarities / temperature, both directions averaged): instance identity under a change of
    rendering (another scale, crop or JPEG quality), which a class-level loss never asks for.
    """
    cos = F.normalize(a.float(), dim=1) @ F.normalize(b.float(), dim=1).T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(cos, target) + F.cross_entropy(cos.T, target))


LOSSES = {"proxy-anchor": proxy_anchor_loss, "normalized-softmax": normalized_softmax_loss}


def similarity_distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                                 temperature: float = 0.1) -> torch.Tensor:
    """Mean over the batch of KL(teacher || student) between each row's softmax over its cosine
    similarities to the other rows: the student learns who is near whom in the teacher's space, not
    the teacher's coordinates, so its own dimensions stay free for other objectives."""
    n = len(student)
    if n < 2:
        return student.sum() * 0.0
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=student.device)

    def log_neighbours(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.float(), dim=1)
        sims = (x @ x.T / temperature).masked_fill(~off_diagonal, -1e9)  # a row is not its own neighbour
        return F.log_softmax(sims, dim=1)

    log_t, log_s = log_neighbours(teacher.detach()), log_neighbours(student)
    kl = (log_t.exp() * (log_t - log_s)) * off_diagonal
    return kl.sum(dim=1).mean()


class ProxyLoss(nn.Module):
    """Holds the learnable class proxies; `predict` = nearest proxy (used for val accuracy)."""

    def __init__(self, kind: str, n_classes: int, dims: int):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")
        self.kind = kind
        self.proxies = nn.Parameter(torch.empty(n_classes, dims))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return LOSSES[self.kind](emb, labels, self.proxies)

    @torch.no_grad()
    def predict(self, emb: torch.Tensor) -> torch.Tensor:
        return (F.normalize(emb.float(), dim=1) @ F.normalize(self.proxies.float(), dim=1).T).argmax(1)
