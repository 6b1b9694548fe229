"""Composite models: several pretrained extractors side by side, their pooled features concatenated.

Backbones trained differently (or at other resolutions) see different things: on the catalog's
articleTypes a linear probe on efficientnet_lite0 + lite1 + lite2 features reaches 0.883 test
accuracy against 0.858 for lite0 alone (scripts/linear_probe.py, docs/training.md). A composite makes
that one model of the zoo.

Each member keeps its own preprocessing: the model input is the members' squares (each letterboxed
at the member's own input size) packed side by side on one canvas (`Preprocess.packed_sizes`), and
`MultiTrunk` cuts them apart again. So a member sees exactly what it sees alone, and a composite's
features are the members' cached features, L2-normalized and concatenated: nothing is re-encoded
for a member that was already extracted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, WeightSource

MEMBERS_KEY = "composite_of"  # config.extra of a composite (and of heads trained on it): member model names
SIZES_KEY = "member_sizes"  # ... and their input sizes, in order: the packed input's layout


def composite_members(config: ModelConfig) -> list[str]:
    """The member models of a composite or of a model trained on one; [] for any other model."""
    return list(config.extra.get(MEMBERS_KEY) or [])


def is_composite_base(config: ModelConfig) -> bool:
    """The composite itself (its features = the members'), not a head trained on it."""
    return config.weights.type == "members"


def composite_config(name: str, members: Sequence[ModelConfig], description: str = "") -> ModelConfig:
    """The config of a composite of pretrained (head-less) members with one resize mode."""
    if len(members) < 2:
        raise ValueError("a composite needs at least two member models")
    for m in members:
        if m.embedding_dims or m.weights.type == "members":
            raise ValueError(f"{m.name}: composite members are plain backbones (no trained head, not composites)")
        if m.resize_mode != members[0].resize_mode:
            raise ValueError(f"{m.name}: composite members must share one resize mode")
    names = [m.name for m in members]
    return ModelConfig(
        name=name,
        description=description or f"{' + '.join(names)} side by side, L2-normalized pooled features concatenated",
        architecture=f"composite({','.join(names)})",
        trunk_dims=sum(m.trunk_dims for m in members),
        input_size=max(m.input_size for m in members),
        resize_mode=members[0].resize_mode,
        mean=(0.0, 0.0, 0.0),  # each member normalizes its own square
        std=(1.0, 1.0, 1.0),
        weights=WeightSource(type="members", ref="+".join(names)),
        extra={MEMBERS_KEY: names, SIZES_KEY: [m.input_size for m in members]},
    )


class MultiTrunk(nn.Module):
    """Runs each member on its square of the packed input; returns (B, sum of dims, 1, 1) so that the
    composite's average pooling is the identity."""

    def __init__(self, members: Sequence[nn.Module], sizes: Sequence[int]):
        super().__init__()
        if len(members) != len(sizes):
            raise ValueError("one input size per member")
        self.members = nn.ModuleList(members)
        self.sizes = [int(s) for s in sizes]

    def forward_features(self, packed: torch.Tensor) -> torch.Tensor:
        expected = (max(self.sizes), sum(self.sizes))
        if tuple(packed.shape[-2:]) != expected:
            raise ValueError(f"composite input must be {expected[0]}x{expected[1]} (the members' squares side by "
                             f"side), got {tuple(packed.shape[-2:])}")
        parts, left = [], 0
        for member, size in zip(self.members, self.sizes, strict=True):
            parts.append(F.normalize(member(packed[:, :, :size, left:left + size]).float(), dim=-1))
            left += size
        return torch.cat(parts, dim=-1)[:, :, None, None]
