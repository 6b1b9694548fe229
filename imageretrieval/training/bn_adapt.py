"""Batch-norm adaptation (the seed's experiment 5): re-estimate BN statistics on target images, no gradients."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from tqdm import tqdm

from ..device import autocast, to_batch


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device,
                    precision: str = "fp32", progress: bool = True) -> int:
    """Replace every BN layer's running mean/var by the cumulative average over `batches` (uint8 images).

    Only BN buffers change: weights stay, the model ends in eval mode. Returns the images seen.
    """
    layers = batchnorms(model)
    if not layers:
        raise ValueError("the model has no batch-norm layer to adapt")
    momenta = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    model.eval()
    for bn in layers:
        bn.train()
    seen = 0
    try:
        for images in tqdm(batches, desc="bn-adapt", unit="batch", disable=not progress):
            with autocast(device, precision):
                model(to_batch(images, device))
            seen += len(images)
    finally:
        for bn, momentum in zip(layers, momenta, strict=True):
            bn.momentum = momentum
        model.eval()
    if not seen:
        raise ValueError("bn-adapt got no images")
    return seen
