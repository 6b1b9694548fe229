"""Device and precision choices: CUDA when present; bf16 autocast only where it is actually fast."""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE=cuda but no CUDA device is visible: use DEVICE=cpu or auto")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """bf16 on CPU pays off only with AVX512-BF16 or AMX; on plain AVX2 it is ~10x slower than fp32."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode, on device, channels_last (faster convolutions on CPU and GPU)."""
    return model.eval().to(device).to(memory_format=torch.channels_last)


def to_batch(uint8_batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B,3,H,W) -> float [0,1] channels_last on device."""
    x = uint8_batch.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)
