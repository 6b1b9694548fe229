"""Inference runtimes: one `Encoder` interface over PyTorch, ONNX Runtime and OpenVINO.

On a CPU, PyTorch's per-operator overhead dominates a small network's forward; ONNX Runtime and
OpenVINO run the same graph several times faster (docs/benchmarks.md). Any model of the zoo
(pretrained, trained, composite, fusion) is exported once to ONNX -- uint8 images (B, 3, H, W) in,
embeddings out, the scaling to [0, 1] and the normalization inside the graph -- and cached under
`<WORKDIR>/exports/<model>/` with a fingerprint of its weights' content and its input, so a retrained
or resized model is exported anew and a stale export is never used. PyTorch stays the runtime for
CUDA and for training. `imageretrieval index` copies the export beside the index it built, so a
serving install runs it with ONNX Runtime or OpenVINO alone, without PyTorch (engine.py).
`PRECISION=int8` runs the export's int8 twin, written and accepted by `imageretrieval quantize`
(quantize.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .device import autocast, compile_for_inference, denormals_flushed, prepare_model, resolve_precision, to_batch
from .io_utils import atomic_write

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
EXPORT_OPSET = 18
EXPORT_FORMAT = 1  # bump when the exported graph's contract changes (inputs, outputs, scaling)
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


class RuntimeUnavailableError(RuntimeError):
    """The chosen runtime is not installed or cannot run here; the message names the fix."""


def runtime_installed(runtime: str) -> bool:
    return importlib.util.find_spec(_PACKAGES.get(runtime, runtime)) is not None


def device_type(device: str) -> str:
    """"cpu" or "cuda" for a DEVICE setting; without PyTorch there is only the CPU."""
    if device != "auto":
        return device
    if not runtime_installed("torch"):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_runtime(runtime: str, device: torch.device | str, precision: str = "auto") -> str:
    """The runtime that `auto` means here: PyTorch on CUDA or when bf16 is asked for explicitly (autocast is a
    PyTorch feature), else ONNX Runtime (measured fastest on CPUs with AVX2 and with AMX alike,
    docs/benchmarks.md), else OpenVINO, else PyTorch. `precision` is the setting, before `auto` is resolved."""
    if runtime not in RUNTIMES:
        raise RuntimeUnavailableError(f"unknown RUNTIME={runtime!r}; choose one of {', '.join(RUNTIMES)}")
    kind = getattr(device, "type", device)
    if precision == "int8" and (runtime == "torch" or kind != "cpu"):
        raise RuntimeUnavailableError("PRECISION=int8 runs an int8 ONNX export on the CPU: use RUNTIME=auto, "
                                      "onnxruntime or openvino with DEVICE=cpu (or auto on a machine without CUDA)")
    if runtime == "auto":
        if kind != "cpu" or precision == "bf16":
            return "torch"
        chosen = next((r for r in ("onnxruntime", "openvino") if runtime_installed(r)), "torch")
        if chosen == "torch" and precision == "int8":
            raise RuntimeUnavailableError("PRECISION=int8 needs ONNX Runtime or OpenVINO: pip install onnxruntime")
        return chosen
    if runtime == "torch" and not runtime_installed("torch"):
        raise RuntimeUnavailableError("RUNTIME=torch but PyTorch is not installed (a serving install): use "
                                      "RUNTIME=auto, onnxruntime or openvino")
    if runtime != "torch":
        if kind != "cpu":
            raise RuntimeUnavailableError(f"RUNTIME={runtime} runs on the CPU here: use RUNTIME=torch with "
                                          f"DEVICE={kind}, or DEVICE=cpu")
        if not runtime_installed(runtime):
            raise RuntimeUnavailableError(f"RUNTIME={runtime} but the {_PACKAGES[runtime]} package is not "
                                          f"installed: run `pip install {_PACKAGES[runtime]}` or use RUNTIME=auto")
        if precision == "bf16":
            raise RuntimeUnavailableError(f"PRECISION=bf16 is PyTorch autocast: use RUNTIME=torch, or "
                                          f"PRECISION=auto|fp32 with RUNTIME={runtime}")
    return runtime


def resolve_inference(runtime: str, precision: str, device: torch.device | str) -> tuple[str, str]:
    """(runtime, precision) for the settings: the exported runtimes compute in fp32, or run the int8 twin."""
    if precision not in PRECISIONS:
        raise RuntimeUnavailableError(f"unknown PRECISION={precision!r}; choose one of {', '.join(PRECISIONS)}")
    chosen = resolve_runtime(runtime, device, precision)
    if chosen != "torch":
        return chosen, "int8" if precision == "int8" else "fp32"
    import torch

    return chosen, resolve_precision(precision, torch.device(device) if isinstance(device, str) else device)


def default_threads() -> int:
    """Threads for a runtime's operators: OMP_NUM_THREADS when set (PyTorch follows it too), else the cores."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# ----- export ------------------------------------------------------------------------------------------
def _uint8_input(model: torch.nn.Module) -> torch.nn.Module:
    """uint8 (B, 3, H, W) -> the model's embedding: the exported graph takes raw pixels."""
    import torch

    class Uint8Input(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.model = inner

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.model(images.float() / 255.0).float()

    return Uint8Input(model).eval()


def export_fingerprint(model: torch.nn.Module, input_shape: tuple[int, int, int]) -> str:
    """Content hash of everything the exported graph depends on: weights and buffers, config, input shape."""
    h = hashlib.sha256(f"{EXPORT_FORMAT}:{EXPORT_OPSET}:{tuple(input_shape)}".encode())
    from .models.extractor import hash_tensors

    config = getattr(model, "config", None)
    if config is not None:
        h.update(config.fingerprint().encode())
    state = model.state_dict()
    hash_tensors(h, state.items())
    # non-persistent buffers (mean/std) are part of the function too
    hash_tensors(h, [(k, v) for k, v in model.named_buffers() if k not in state])
    return h.hexdigest()[:16]


def export_dir(workdir: Path, model_name: str) -> Path:
    return Path(workdir) / "exports" / model_name


def _export(model: torch.nn.Module, input_shape: tuple[int, int, int], path: Path) -> None:
    import torch

    wrapper = _uint8_input(model)
    example = torch.full((2, *input_shape), 255, dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(wrapper, (example,), str(path), input_names=["images"], output_names=["embeddings"],
                              dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}},
                              opset_version=EXPORT_OPSET, dynamo=True, external_data=False, verbose=False)
        except Exception as exc:  # noqa: BLE001 - the TorchScript exporter handles what torch.export cannot
            log.info("torch.export could not export %s (%s); using the TorchScript exporter",
                     type(model).__name__, exc.__class__.__name__)
            torch.onnx.export(wrapper, (example,), str(path), input_names=["images"], output_names=["embeddings"],
                              dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
                              opset_version=17, dynamo=False)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints its progress to stdout and logs every graph pass: keep a CLI's output clean."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(model: torch.nn.Module, input_shape: tuple[int, int, int], directory: Path) -> Path:
    """The model's ONNX export for this input shape: reused when its fingerprint matches, else written
    atomically (older exports of the model removed)."""
    model = model.eval().float().cpu()
    fingerprint = export_fingerprint(model, input_shape)
    path = Path(directory) / f"model-{fingerprint}.onnx"
    if path.is_file():
        _remove_stale(path)  # what an interrupted re-export may have left
        return path
    log.info("exporting %s to ONNX (%s)", getattr(getattr(model, "config", None), "name", "model"), path)
    atomic_write(path, lambda p: _export(model, input_shape, p))
    _remove_stale(path)
    return path


def _remove_stale(path: Path) -> None:
    """Older exports of the model, with their int8 twins, records and interrupted candidates."""
    for stale in [*path.parent.glob("model-*"), *path.parent.glob(".model-*.candidate.onnx")]:
        if not stale.name.lstrip(".").startswith(path.stem):
            stale.unlink(missing_ok=True)


def export_for(model: torch.nn.Module, input_shape: tuple[int, int, int], workdir: Path, precision: str,
               int8_digest: str | None = None) -> Path:
    """The ONNX file that runs `model` at `precision`: its fp32 export, or for int8 that export's accepted
    int8 twin (an error naming `imageretrieval quantize` where there is none; with `int8_digest`, an
    error too where the twin is another one)."""
    name = getattr(getattr(model, "config", None), "name", "model")
    path = export_onnx(model, input_shape, export_dir(workdir, name))
    if precision != "int8":
        return path
    from .quantize import accepted_int8

    return accepted_int8(path, name, int8_digest)


# ----- encoders -----------------------------------------------------------------------------------------
class Encoder:
    """uint8 images (B, 3, H, W) as a numpy array or tensor -> float32 embeddings (B, dims)."""

    runtime = "torch"

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def for_background(self) -> Encoder:
        """The encoder to run background work with (catalog writes) beside work of its own on the same
        cores: the same embeddings, without waiting actively for the next call (this one by default)."""
        return self


class TorchEncoder(Encoder):
    """PyTorch eager, or traced + frozen for fp32 CPU inference (`compile`), with bf16 autocast if asked."""

    runtime = "torch"

    def __init__(self, model: torch.nn.Module, input_shape: tuple[int, int, int], device: torch.device,
                 precision: str, compile: bool = False):
        import torch

        self.device, self.precision = device, precision
        with denormals_flushed(device):  # torch worker threads started here keep the flag
            self.model = prepare_model(model, device)
            self.forward = self.model
            if compile:
                blank = to_batch(torch.full((1, *input_shape), 255, dtype=torch.uint8), device)
                self.forward = compile_for_inference(self.model, blank, device, precision)

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        with torch.inference_mode(), denormals_flushed(self.device), autocast(self.device, self.precision):
            return self.forward(to_batch(batch, self.device)).float().cpu().numpy()


class OnnxRuntimeEncoder(Encoder):
    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int, spin: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if not spin:  # idle operator threads sleep instead of spinning: the CPU goes to the image decoders
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path, self.threads, self.spin = path, threads, spin

    def for_background(self) -> Encoder:
        """A second session on the same model whose idle threads sleep: a spinning one keeps both cores
        busy between forwards, starving the threads that decode the next images."""
        return OnnxRuntimeEncoder(self.path, self.threads, spin=False) if self.spin else self

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        batch = images if isinstance(images, np.ndarray) else images.numpy()
        return self.session.run(None, {"images": np.ascontiguousarray(batch, dtype=np.uint8)})[0]


class OpenVinoEncoder(Encoder):
    runtime = "openvino"

    def __init__(self, path: Path, threads: int):
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(str(path), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        batch = images if isinstance(images, np.ndarray) else images.numpy()
        result = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.uint8)})
        return np.array(result[self.compiled.output(0)], dtype=np.float32)


def create_encoder(model: torch.nn.Module, input_shape: tuple[int, int, int], runtime: str = "auto",
                   device: torch.device | None = None, precision: str = "fp32", workdir: Path | None = None,
                   compile: bool = False, threads: int | None = None, spin: bool = True,
                   int8_digest: str | None = None) -> Encoder:
    """The encoder of `model` on the chosen runtime (`auto`: see `resolve_runtime`) and precision setting.

    ONNX exports are cached under `<workdir>/exports/<model>/` (a temporary folder without a workdir).
    `spin=False` lets ONNX Runtime's idle threads sleep: better throughput when other threads (image
    decoding) share the cores, as in extraction. `int8_digest`: the int8 twin the caller keyed its work by.
    """
    import torch

    device = device or torch.device("cpu")
    chosen, precision = resolve_inference(runtime, precision, device)
    if chosen == "torch":
        return TorchEncoder(model, input_shape, device, precision, compile)
    if workdir is None:
        import tempfile

        workdir = Path(tempfile.gettempdir()) / "imageretrieval"
    return load_exported(export_for(model, input_shape, workdir, precision, int8_digest), chosen, threads, spin)


def load_exported(path: Path, runtime: str, threads: int | None = None, spin: bool = True) -> Encoder:
    """An exported model (ONNX file) on ONNX Runtime or OpenVINO: needs no PyTorch."""
    threads = threads or default_threads()
    if runtime == "onnxruntime":
        return OnnxRuntimeEncoder(path, threads, spin)
    if runtime == "openvino":
        return OpenVinoEncoder(path, threads)
    raise RuntimeUnavailableError(f"{path.name} is an ONNX model: it runs on onnxruntime or openvino, not {runtime}")
