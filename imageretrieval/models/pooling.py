"""Global pooling of a CNN feature map into one vector (pure functions + thin modules)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gem(x: torch.Tensor, p: torch.Tensor | float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalized-mean pooling (Radenovic et al.): p=1 is average, p->inf is max. (B,C,H,W)->(B,C)."""
    return F.avg_pool2d(x.clamp(min=eps).pow(p), (x.size(-2), x.size(-1))).pow(1.0 / p).flatten(1)


def global_avg(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(-2, -1))


def global_max(x: torch.Tensor) -> torch.Tensor:
    return x.amax(dim=(-2, -1))


class GeM(nn.Module):
    def __init__(self, p: float = 3.0, trainable: bool = True, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=trainable)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pool in fp32: pow() of bf16 activations loses too much precision.
        return gem(x.float(), self.p, self.eps)


class Pool(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_avg(x.float()) if self.kind == "avg" else global_max(x.float())


def make_pool(kind: str, p: float = 3.0) -> nn.Module:
    return GeM(p) if kind == "gem" else Pool(kind)
