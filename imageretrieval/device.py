"""Device and precision choices: CUDA when present; bf16 autocast only where it is actually fast.

PyTorch is imported inside the functions that use it: a serving install without it still tunes
the allocator (`keep_freed_memory`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class DeviceUnavailableError(RuntimeError):
    """The device asked for is not there (a one-line CLI error, not a traceback)."""


def resolve_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("DEVICE=cuda but no CUDA device is visible: use DEVICE=cpu or auto")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """bf16 on CPU pays off only with AVX512-BF16 or AMX; on plain AVX2 it is ~10x slower than fp32."""
    import torch

    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    import torch

    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode, on device, channels_last (faster convolutions on CPU and GPU)."""
    import torch

    return model.eval().to(device).to(memory_format=torch.channels_last)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """glibc: reuse freed activation buffers instead of returning them to the OS after every forward.

    By default every forward's multi-MB activations are mmap'ed and unmapped (or trimmed) again, so
    the next forward takes thousands of page faults (~2,700 per lite0 query, ~30% of its time on
    this machine). Raising the mmap and trim thresholds keeps that memory in the process. Returns
    whether the allocator was tuned (not on other C libraries). For long-running processes that
    run forwards: the server and the benchmarks.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def _denormals_are_zero() -> bool:
    """Whether this thread's CPU currently flushes denormal floats (numpy runs on the same SSE unit)."""
    import numpy as np

    return bool(np.float32(1e-39) * np.float32(1.0) == 0)


@contextlib.contextmanager
def denormals_flushed(device: torch.device):
    """Treat denormal floats as zero while the block runs in this thread, then restore the flag.

    Tiny activations hit slow microcode paths on x86: flushing them made the lite0 forward ~15%
    faster here; denormals are below 1.2e-38, far under anything that moves a cosine similarity.
    The CPU flag is per thread and torch's worker threads copy it from the thread that starts them,
    so the engine builds its model and runs its forwards inside this block. Restoring keeps the
    caller's own float math (e.g. a test framework's subnormal checks) untouched.
    """
    import torch

    if device.type != "cpu":
        yield
        return
    already = _denormals_are_zero()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not already:
            torch.set_flush_denormal(False)


def compile_for_inference(model: torch.nn.Module, example: torch.Tensor, device: torch.device,
                          precision: str) -> torch.nn.Module:
    """Trace + freeze an eval-mode model for fp32 CPU inference; the model itself where that does not apply.

    Freezing folds batch norms into convolutions and fuses activations (oneDNN), which cuts the
    per-op overhead that dominates a single-image forward on a few CPU cores (lite0 batch 1:
    ~28 -> ~22 ms here). Embeddings agree with eager mode to ~1e-5. The trace is specialised to the
    example's height and width (the engine's input size is fixed); any batch size works. Autocast
    (bf16) and CUDA keep eager mode, where tracing brings nothing reliable.
    """
    import torch

    if device.type != "cpu" or precision != "fp32":
        return model
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent python code
            traced = torch.jit.trace(model.eval(), example.to(device), check_trace=False)
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    except Exception as exc:  # noqa: BLE001 - an exotic model still serves, only slower
        log.warning("could not compile %s for inference (%s: %s); using eager mode",
                    type(model).__name__, type(exc).__name__, exc)
        return model


def to_batch(uint8_batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B,3,H,W) -> float [0,1] channels_last on device."""
    import torch

    x = uint8_batch.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)
