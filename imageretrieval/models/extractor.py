"""FeatureExtractor: timm trunk -> global pooling -> optional head (linear, MLP, or several) -> optional L2."""

from __future__ import annotations

import hashlib

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .pooling import make_pool


def _single_head(in_dims: int, hidden: int, dims: int) -> nn.Module:
    if not hidden:
        return nn.Linear(in_dims, dims)
    return nn.Sequential(nn.Linear(in_dims, hidden), nn.GELU(), nn.Linear(hidden, dims))


class ConcatHeads(nn.Module):
    """An ensemble of heads on one trunk: the L2-normalized outputs of each head, concatenated.

    The cosine between two such embeddings (after the final L2) is the mean of the members' cosines,
    so independently trained heads vote with equal weight at the cost of a single trunk pass.
    """

    def __init__(self, heads: list[nn.Module]):
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.normalize(h(x).float(), dim=-1) for h in self.heads], dim=-1)


def make_head(config: ModelConfig) -> nn.Module | None:
    """Linear projection, a 2-layer MLP (`head_hidden`), or an ensemble of those (`extra["heads"]`:
    a list of {"hidden", "dims"}, see `ConcatHeads`)."""
    if not config.embedding_dims:
        return None
    members = config.extra.get("heads")
    if members:
        if sum(int(m["dims"]) for m in members) != config.embedding_dims:
            raise ValueError(f"{config.name}: the heads' dims do not add up to embedding_dims")
        return ConcatHeads([_single_head(config.trunk_dims, int(m.get("hidden") or 0), int(m["dims"]))
                            for m in members])
    return _single_head(config.trunk_dims, int(config.head_hidden or 0), config.embedding_dims)


def hash_tensors(h, named_tensors) -> None:
    """Feed (name, tensor) pairs, sorted by name, into the hashlib object `h`: names and raw bytes."""
    for key, value in sorted(named_tensors, key=lambda item: item[0]):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())


def trunk_digest(model: FeatureExtractor) -> str:
    """Content hash of the trunk's weights and buffers: equal digests = the same trunk function."""
    h = hashlib.sha256()
    hash_tensors(h, model.trunk.state_dict().items())
    return h.hexdigest()[:16]


class FeatureExtractor(nn.Module):
    """Maps a float image batch in [0, 1] (B,3,H,W) to embeddings (B, dims).

    Input normalization (mean/std) lives inside the module so that data loaders can ship uint8.
    """

    def __init__(self, config: ModelConfig, trunk: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.trunk = trunk if trunk is not None else timm.create_model(config.architecture, pretrained=False)
        if hasattr(self.trunk, "reset_classifier"):
            self.trunk.reset_classifier(0)
        self.pool = make_pool(config.pooling, config.gem_p)
        self.head = make_head(config)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def forward_trunk(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        return self.trunk.forward_features(x)

    def embed_feature_map(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.embed_pooled(self.pool(fmap))

    def embed_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features -> embedding: lets a head-only model reuse its base's cached features."""
        if self.head is not None:
            x = self.head(x)
        if self.config.l2_normalize_output:
            x = F.normalize(x.float(), dim=-1)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_feature_map(self.forward_trunk(images))

    @property
    def dims(self) -> int:
        return self.config.dims
