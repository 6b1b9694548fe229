"""int8 twins of ONNX exports: post-training static quantization, accepted only where quality holds.

ONNX Runtime's static quantization (QDQ, per-channel int8 weights, uint8 activations) is calibrated on
catalog images run through the model's own preprocessing. The first convolutions stay in fp32: the
stem sees raw pixels, and quantizing it costs most of the retrieval quality that int8 loses
(docs/experiments.md). The twin is written beside the fp32 export as `<export>-int8-<digest>.onnx`,
with a record `<export>-int8.json` of how it was made and of the validation figures that accepted it
(a rejected attempt is recorded in `<export>-int8-rejected.json`); `PRECISION=int8` runs the twin
its record names, and work keyed by a twin (features, indexes) is never served by another. int8
pays on CPUs with VNNI or AMX; on AVX2 alone it may be slower than fp32 (docs/benchmarks.md):
measure before choosing it.
"""

from __future__ import annotations

import hashlib
import logging
import os
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


def int8_path(fp32_path: Path, digest: str) -> Path:
    """A twin's file, named by its digest: a new twin never overwrites the one its record names."""
    return fp32_path.with_name(f"{fp32_path.stem}-int8-{digest}.onnx")


def candidate_path(fp32_path: Path) -> Path:
    """Where `quantize` writes a twin it has not scored yet (hidden: never taken for a twin)."""
    return fp32_path.with_name(f".{fp32_path.stem}-int8.candidate.onnx")


def record_path(fp32_path: Path) -> Path:
    """The accepted twin's record."""
    return fp32_path.with_name(f"{fp32_path.stem}-int8.json")


def rejected_path(fp32_path: Path) -> Path:
    """The record of the last attempt that was not accepted (an accepted twin stays in place)."""
    return fp32_path.with_name(f"{fp32_path.stem}-int8-rejected.json")


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
        if len(keep) < keep_fp32_convs or not all(keep):
            raise QuantizationError(f"{fp32_path.name}: cannot name its first {keep_fp32_convs} convolutions "
                                    f"to keep in fp32 (found {keep})")

        def write(target: Path) -> None:
            quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, nodes_to_exclude=keep)

        atomic_write(out_path, write)


def install_twin(fp32_path: Path, candidate: Path, record: dict) -> Path:
    """Make an accepted candidate the twin: its file (named by its digest) first, then its record, the
    one commit point, then the old twin's file goes. A rejected candidate leaves the twin in place and
    is recorded apart. The path the twin of `record` has (or would have)."""
    path = int8_path(fp32_path, record["digest"])
    if not record["accepted"]:
        candidate.unlink(missing_ok=True)
        save_json(rejected_path(fp32_path), record)
        return path
    os.replace(candidate, path)
    save_json(record_path(fp32_path), record)
    for old in fp32_path.parent.glob(f"{fp32_path.stem}-int8-*.onnx"):
        if old != path:
            old.unlink(missing_ok=True)
    rejected_path(fp32_path).unlink(missing_ok=True)
    return path


def load_record(fp32_path: Path) -> dict | None:
    path = record_path(fp32_path)
    return load_json(path) if path.is_file() else None


def accepted_record(fp32_path: Path, model_name: str) -> dict:
    """The accepted twin's record (its digest keys what the twin encodes), else a QuantizationError."""
    record = load_record(fp32_path)
    if record is not None and record.get("accepted") and int8_path(fp32_path, record["digest"]).is_file():
        return record
    rejected = load_json(rejected_path(fp32_path)) if rejected_path(fp32_path).is_file() else None
    if rejected is None and record is not None and not record.get("accepted"):
        rejected = record  # written by an earlier version, which kept rejections in the record
    if rejected is not None:
        raise QuantizationError(f"PRECISION=int8: {model_name}'s int8 export lost too much quality on val "
                                f"({rejected.get('reason', 'not accepted')}): use PRECISION=fp32, or "
                                f"`imageretrieval quantize --model {model_name}` with other options (see --help)")
    raise QuantizationError(f"PRECISION=int8: {model_name} has no int8 export for its current weights: run "
                            f"`imageretrieval quantize --model {model_name}`, or use PRECISION=fp32")


def accepted_int8(fp32_path: Path, model_name: str, digest: str | None = None) -> Path:
    """The accepted int8 twin of an export, checked against its record (and against `digest`, the twin a
    caller keyed its work by), else a QuantizationError."""
    record = accepted_record(fp32_path, model_name)
    path = int8_path(fp32_path, record["digest"])
    if digest is not None and record["digest"] != digest:
        raise QuantizationError(f"PRECISION=int8: {model_name}'s int8 twin changed during this run (was {digest}, "
                                f"now {record['digest']}): run it again")
    if file_digest(path) != record["digest"]:
        raise QuantizationError(f"PRECISION=int8: {path} does not match its record: run `imageretrieval "
                                f"quantize --model {model_name}` again, or use PRECISION=fp32")
    return path


def twin_digest(export_directory: Path, model_name: str) -> str:
    """The digest of the model's accepted twin, from its record (no model loaded): what keys int8 features
    and indexes, so that a twin made anew invalidates what the old one encoded."""
    records = list(Path(export_directory).glob("model-*-int8.json"))
    if len(records) != 1:
        found = "no int8 export" if not records else f"{len(records)} int8 records in {export_directory}"
        raise QuantizationError(f"PRECISION=int8: {model_name} has {found}: run `imageretrieval quantize "
                                f"--model {model_name}`, or use PRECISION=fp32")
    fp32_path = records[0].with_name(records[0].name.removesuffix("-int8.json") + ".onnx")
    return str(accepted_record(fp32_path, model_name)["digest"])


def acceptance(fp32: dict[str, float], int8: dict[str, float], tolerance: float) -> tuple[bool, str]:
    """(accepted, why): every figure of int8 within `tolerance` below fp32's."""
    drops = {k: fp32[k] - int8[k] for k in fp32}
    worst = max(drops, key=drops.get)
    ok = all(d <= tolerance + 1e-12 for d in drops.values())
    word = "within" if ok else "beyond"
    return ok, f"largest drop: {worst} {drops[worst]:.4f}, {word} the tolerance {tolerance}"
