"""Which trunk parameters train: per-backbone defaults as in the seed, overridable by regexes."""

from __future__ import annotations

import re

from torch import nn

# Trunk parameter-name regexes (timm naming) of the last stage(s) that the `classifier` recipe trains.
DEFAULT_TRAINABLE: dict[str, list[str]] = {
    "densenet161": [r"^features\.denseblock4\.", r"^features\.norm5\."],
    "vgg16": [r"^features\.(2[4-9]|30)\."],
    "resnet50": [r"^layer4\."],
    "inception_v3": [r"^Mixed_7[abc]\."],
    "efficientnet": [r"^blocks\.{last}\.", r"^conv_head\.", r"^bn2\."],
}


def _family(architecture: str) -> str:
    return "efficientnet" if "efficientnet" in architecture else architecture


def default_trainable(architecture: str, trunk: nn.Module) -> list[str]:
    """The seed's per-backbone choice; EfficientNet(-Lite): the last block stage + head conv."""
    patterns = DEFAULT_TRAINABLE.get(_family(architecture))
    if patterns is None:
        raise ValueError(f"no default trainable stages for {architecture}: pass --trainable REGEX")
    if "{last}" in "".join(patterns):
        last = len(trunk.blocks) - 1
        patterns = [p.replace("{last}", str(last)) for p in patterns]
    return patterns


def freeze_trunk(trunk: nn.Module, trainable: list[str]) -> list[str]:
    """Set requires_grad from the regexes ([] = frozen trunk). Returns the trainable parameter names."""
    regexes = [re.compile(p) for p in trainable]
    names = []
    for name, param in trunk.named_parameters():
        param.requires_grad = any(r.search(name) for r in regexes)
        if param.requires_grad:
            names.append(name)
    if trainable and not names:
        raise ValueError(f"--trainable {trainable} matches no parameter of the trunk")
    return names


def train_mode(model: nn.Module, freeze_bn_stats: bool = False) -> nn.Module:
    """model.train(), but batch-norm layers whose parameters are frozen keep their running statistics
    (with `freeze_bn_stats`, every batch-norm layer does: its affine parameters may still train)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if freeze_bn_stats or (params and not any(p.requires_grad for p in params)):
                module.eval()
    return model
