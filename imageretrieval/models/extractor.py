"""FeatureExtractor: timm trunk -> global pooling -> optional linear head -> optional L2."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .pooling import make_pool


def make_head(config: ModelConfig) -> nn.Module | None:
    """Linear projection, or a 2-layer MLP when `extra["head_hidden"]` is set (trained heads)."""
    if not config.embedding_dims:
        return None
    hidden = int(config.extra.get("head_hidden") or 0)
    if not hidden:
        return nn.Linear(config.trunk_dims, config.embedding_dims)
    return nn.Sequential(nn.Linear(config.trunk_dims, hidden), nn.GELU(), nn.Linear(hidden, config.embedding_dims))


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
