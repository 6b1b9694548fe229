"""Composite models: several pretrained extractors side by side, their pooled features concatenated.

Backbones trained differently (or at other resolutions) see different things: on the catalog's
articleTypes a linear probe on efficientnet_lite0 + lite1 + lite2 features reaches 0.883 test
accuracy against 0.858 for lite0 alone (a linear probe, docs/training.md). A composite makes
that one model of the zoo.

Each member keeps its own preprocessing: the model input is the members' squares (each letterboxed
at the member's own input size) packed side by side on one canvas (`Preprocess.packed_sizes`), and
`MultiTrunk` cuts them apart again. So a member sees exactly what it sees alone, and a composite's
features are the members' cached features, L2-normalized and concatenated: nothing is re-encoded
for a member that was already extracted.

A *fusion* (`fusion_config`, `imageretrieval fuse`) is a composite of any embedding models, trained
ones included, with weights w_i (summing to 1): member i's L2-normalized embedding is scaled by
sqrt(w_i), so the fused cosine is sum_i w_i * cos_i (late fusion) and the fused vector has unit norm.
A member may itself be a composite (or a head trained on one): it reads its own packed squares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .config import ModelConfig, WeightSource

__all__ = ["composite_config",
           "composite_members", "fusion_config", "is_composite_base", "member_layout", "member_weights"]


def composite_members(config: ModelConfig) -> list[str]:
    """The member models of a composite or of a model trained on one; [] for any other model."""
    return list(config.composite_of or [])


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
        composite_of=names, member_sizes=[m.input_size for m in members],
    )


def member_layout(config: ModelConfig) -> list[int]:
    """The squares a model reads: its packed members' sizes for a composite (or a head on one), else its input."""
    return [int(s) for s in config.member_sizes or [config.input_size]]


def fusion_config(name: str, members: Sequence[ModelConfig], weights: Sequence[float] | None = None,
                  description: str = "") -> ModelConfig:
    """The config of a weighted late fusion of embedding models (trained or not; see the module docstring).

    `weights` (default: equal) are normalized to sum to 1; every one must be positive.
    """
    if len(members) < 2:
        raise ValueError("a fusion needs at least two member models")
    weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
    if len(weights) != len(members):
        raise ValueError(f"{len(weights)} weights for {len(members)} members: give one weight per member")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError("fusion weights must be positive numbers (leave a member out instead of weighting it 0)")
    names = [m.name for m in members]
    if name in names:
        raise ValueError(f"the fusion's name {name!r} must differ from its members'")
    for m in members:
        if m.resize_mode != members[0].resize_mode:
            raise ValueError(f"{m.name}: fusion members must share one resize mode")
    total = sum(weights)
    weights = [round(w / total, 6) for w in weights]
    layouts = [member_layout(m) for m in members]
    shown = ", ".join(f"{n} {w:g}" for n, w in zip(names, weights, strict=True))
    return ModelConfig(
        name=name,
        description=description or f"weighted fusion of {shown} (cosine = weighted mean of the members' cosines)",
        kind="trained" if any(m.kind == "trained" for m in members) else "pretrained",
        architecture=f"fusion({','.join(names)})",
        trunk_dims=sum(m.dims for m in members),
        input_size=max(max(lay) for lay in layouts),
        resize_mode=members[0].resize_mode,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        weights=WeightSource(type="members", ref="+".join(names)),
        composite_of=names, member_sizes=[s for lay in layouts for s in lay], member_layouts=layouts,
        member_weights=weights,
    )


def member_weights(config: ModelConfig) -> list[float] | None:
    """A fusion's member weights; None for a plain composite (every block weighs 1)."""
    weights = config.member_weights
    return [float(w) for w in weights] if weights else None
