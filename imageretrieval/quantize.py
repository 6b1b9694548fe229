"""int8 twins of ONNX exports: post-training static quantization, accepted only where quality holds.

ONNX Runtime's static quantization (QDQ, per-channel int8 weights, uint8 activations) is calibrated on
catalog images run through the model's own preprocessing. The first convolutions stay in fp32: the
stem sees raw pixels, and quantizing it costs most of the retrieval quality that int8 loses
(docs/experiments.md). The twin is written beside the fp32 export as `<export>-int8.onnx`, with a
record `<export>-int8.json` of how it was made and of the validation figures that accepted it;
`PRECISION=int8` runs a twin only when its record says accepted. int8 pays on CPUs with VNNI or AMX;
on AVX2 alone it may be slower than fp32 (docs/benchmarks.md): measure before choosing it.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .io_utils import atomic_write, load_json, save_json

log = logging.getLogger(__name__)

DEFAULT_KEEP_FP32_CONVS = 2
DEFAULT_TOLERANCE = 0.005  # the largest drop of P@15 or mAP on val that accepts a twin
CALIBRATION_BATCH = 16


class QuantizationError(RuntimeError):
    """No accepted int8 export where one is needed; the message names the command that makes it."""


def int8_path(fp32_path: Path) -> Path:
    return fp32_path.with_name(f"{fp32_path.stem}-int8.onnx")


def record_path(fp32_path: Path) -> Path:
    return fp32_path.with_name(f"{fp32_path.stem}-int8.json")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def first_convs(onnx_path: Path, count: int) -> list[str]:
    """Names of the graph's first `count` Conv nodes (in topological order)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "Conv"][:count]


def quantize_static_int8(fp32_path: Path, out_path: Path, calibration: Iterable[np.ndarray],
                         keep_fp32_convs: int = DEFAULT_KEEP_FP32_CONVS) -> None:
    """Write the int8 (QDQ) model of `fp32_path` to `out_path` atomically. `calibration`: uint8 image
    batches (B, 3, H, W) as the model's input takes them."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = iter(calibration)

    class Reader(CalibrationDataReader):
        def get_next(self):
            batch = next(batches, None)
            return None if batch is None else {"images": np.ascontiguousarray(batch, dtype=np.uint8)}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        keep = first_convs(prepared, keep_fp32_convs)

        def write(target: Path) -> None:
            quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, nodes_to_exclude=keep)

        atomic_write(out_path, write)


def save_record(fp32_path: Path, record: dict) -> None:
    save_json(record_path(fp32_path), record)


def load_record(fp32_path: Path) -> dict | None:
    path = record_path(fp32_path)
    return load_json(path) if path.is_file() else None


def accepted_int8(fp32_path: Path, model_name: str) -> Path:
    """The accepted int8 twin of an export, else a QuantizationError naming the fix."""
    record, path = load_record(fp32_path), int8_path(fp32_path)
    fix = f"run `imageretrieval quantize --model {model_name}`, or use PRECISION=fp32"
    if record is None or not path.is_file():
        raise QuantizationError(f"PRECISION=int8: {model_name} has no int8 export for its current weights: {fix}")
    if not record.get("accepted"):
        raise QuantizationError(f"PRECISION=int8: {model_name}'s int8 export lost too much quality on val "
                                f"({record.get('reason', 'not accepted')}); use PRECISION=fp32")
    if record.get("digest") != file_digest(path):
        raise QuantizationError(f"PRECISION=int8: {path} does not match its record: {fix}")
    return path


def acceptance(fp32: dict[str, float], int8: dict[str, float], tolerance: float) -> tuple[bool, str]:
    """(accepted, why): every figure of int8 within `tolerance` below fp32's."""
    drops = {k: fp32[k] - int8[k] for k in fp32}
    worst = max(drops, key=drops.get)
    ok = all(d <= tolerance + 1e-12 for d in drops.values())
    word = "within" if ok else "beyond"
    return ok, f"largest drop: {worst} {drops[worst]:.4f}, {word} the tolerance {tolerance}"
