"""The trunk of a composite or fusion: every member encodes the image at its own input size, side by side."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MultiTrunk(nn.Module):
    """Runs each member on its square of the packed input; returns (B, sum of dims, 1, 1) so that the
    composite's average pooling is the identity."""

    def __init__(self, members: Sequence[nn.Module], sizes: Sequence[int],
                 layouts: Sequence[Sequence[int]] | None = None, weights: Sequence[float] | None = None):
        super().__init__()
        self.sizes = [int(s) for s in sizes]
        self.layouts = [[int(s) for s in lay] for lay in layouts] if layouts else [[s] for s in self.sizes]
        if len(members) != len(self.layouts) or [s for lay in self.layouts for s in lay] != self.sizes:
            raise ValueError("one input layout per member, together the packed sizes")
        if weights is not None and len(weights) != len(members):
            raise ValueError("one weight per member")
        self.members = nn.ModuleList(members)
        self.scales = [math.sqrt(float(w)) for w in weights] if weights is not None else [1.0] * len(members)

    def forward_features(self, packed: torch.Tensor) -> torch.Tensor:
        expected = (max(self.sizes), sum(self.sizes))
        if tuple(packed.shape[-2:]) != expected:
            raise ValueError(f"composite input must be {expected[0]}x{expected[1]} (the members' squares side by "
                             f"side), got {tuple(packed.shape[-2:])}")
        parts, left = [], 0
        for member, layout, scale in zip(self.members, self.layouts, self.scales, strict=True):
            width = sum(layout)
            parts.append(scale * F.normalize(member(packed[:, :, :max(layout), left:left + width]).float(), dim=-1))
            left += width
        return torch.cat(parts, dim=-1)[:, :, None, None]
