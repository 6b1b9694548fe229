"""`imageretrieval quantize`: a model's int8 export, calibrated on catalog images and accepted on val."""

from __future__ import annotations

import itertools
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ..quantize import DEFAULT_KEEP_FP32_CONVS, DEFAULT_TOLERANCE

if TYPE_CHECKING:
    from ..evaluation.protocols import RetrievalTask
    from ..inference import Encoder
    from ..preprocess import Preprocess
    from ..settings import Settings

log = logging.getLogger(__name__)
FIGURES = {"PrecisionHits": "P@15", "mAP": "mAP"}


def register(sub) -> None:
    p = sub.add_parser("quantize", help="write and validate a model's int8 export (PRECISION=int8)",
                       description="Quantize the model's ONNX export to int8 (static, per channel; ONNX Runtime), "
                                   "calibrated on seeded catalog train images (and photos: --photos); score it "
                                   "against fp32 on the val splits (catalog products, and photos where "
                                   "DEEPFASHION_ROOT has them, against the catalog's val split) and accept it "
                                   "only where P@15 and mAP drop by at most --tolerance. PRECISION=int8 then "
                                   "runs it for extraction, indexes, search and evaluation. It pays on CPUs with "
                                   "VNNI or AMX: see docs/benchmarks.md.")
    p.add_argument("--model", help="model of the zoo (default: DEFAULT_MODEL)")
    p.add_argument("--calibration", type=int, default=256, help="catalog train images to calibrate on")
    p.add_argument("--photos", type=int, default=0,
                   help="DeepFashion train photos to calibrate on too, where DEEPFASHION_ROOT has them "
                        "(docs/experiments.md compares both for the shipped model)")
    p.add_argument("--keep-fp32-convs", type=int, default=DEFAULT_KEEP_FP32_CONVS,
                   help="leave the graph's first N convolutions in fp32 (the stem sees raw pixels)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="largest drop of val P@15 or mAP that accepts the int8 export")
    p.add_argument("--selection", default="seed", help="catalog selection of the train and val splits")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from ..cli import CLIError

    if args.calibration < 1 or args.photos < 0 or not 0 <= args.tolerance < 1 or args.keep_fp32_convs < 0:
        raise CLIError("--calibration must be >= 1, --photos >= 0, --tolerance in [0, 1), --keep-fp32-convs >= 0")
    name = args.model or settings.default_model
    try:
        record, path = quantize_model(settings, name, args.calibration, args.photos, args.keep_fp32_convs,
                                      args.tolerance, args.selection)
    except ValueError as exc:  # an empty val split, no photos of a split: named by the protocols
        raise CLIError(str(exc)) from exc
    fp32, int8 = record["val"]["fp32"], record["val"]["int8"]
    if "photos P@15" not in fp32:
        print(f"no DeepFashion val photos under {settings.deepfashion_root}: checked on catalog products only")
    for key in fp32:
        print(f"val {key}: fp32 {fp32[key]:.4f}  int8 {int8[key]:.4f}  ({int8[key] - fp32[key]:+.4f})")
    if not record["accepted"]:
        raise CLIError(f"{name}: int8 not accepted ({record['reason']}); a twin accepted before, if any, "
                       "stays in place")
    print(f"{name}: int8 export accepted ({record['reason']}): {path}")
    return 0


def quantize_model(settings: Settings, name: str, calibration: int = 256, photos: int = 0,
                   keep_fp32_convs: int = DEFAULT_KEEP_FP32_CONVS, tolerance: float = DEFAULT_TOLERANCE,
                   selection: str = "seed", model=None) -> tuple[dict, Path]:
    """Make `name`'s int8 twin and score it on val: (its record, the twin's path). Only an accepted twin
    replaces the one in place (quantize.install_twin). `model`: the model `name` already loaded, if any."""
    from ..cli import CLIError
    from ..extract import image_batches
    from ..featurestore import fashion_table
    from ..inference import export_dir, export_onnx, load_exported, runtime_installed
    from ..models import create_model
    from ..preprocess import preprocess_for
    from ..quantize import (
        CALIBRATION_BATCH,
        acceptance,
        candidate_path,
        file_digest,
        install_twin,
        quantize_static_int8,
    )
    from .evaluate import query_resolution_of

    if not runtime_installed("onnxruntime"):
        raise CLIError("quantize needs ONNX Runtime: pip install onnxruntime")
    settings = settings.model_copy(update={"precision": "fp32", "runtime": "onnxruntime", "device": "cpu"})
    model = model if model is not None else create_model(name, workdir=settings.workdir)
    preprocess = preprocess_for(model.config)
    photo_preprocess = preprocess_for(model.config, query_resolution_of(settings, name, settings.query_resolution))
    fp32_path = export_onnx(model, preprocess.shape, export_dir(settings.workdir, name))

    train = fashion_table(settings, selection, "train")
    if len(train) == 0:
        raise CLIError(f"no product in the {selection} train split of {settings.dataset_root}: "
                       "run `imageretrieval prepare` or pass --selection all")
    products = list(train.sample(min(calibration, len(train)), random_state=settings.seed)["path"])
    photo_paths = _photos(settings, "train", photos)
    t0 = time.perf_counter()
    batches = itertools.chain(  # photos of people go through the search's query path, as in the API
        (images for images, _ in image_batches(products, preprocess, batch_size=CALIBRATION_BATCH)),
        (images for images, _ in image_batches(photo_paths, photo_preprocess, batch_size=CALIBRATION_BATCH)))
    candidate = candidate_path(fp32_path)  # the twin in place serves until this one is accepted
    try:
        quantize_static_int8(fp32_path, candidate, batches, keep_fp32_convs)
        log.info("quantized %s in %.0f s", name, time.perf_counter() - t0)

        encoder = load_exported(candidate, "onnxruntime")
        fp32, int8, checked = _score_on_val(settings, name, selection, encoder, preprocess, photo_preprocess)
        accepted, reason = acceptance(fp32, int8, tolerance)
        record = {
            "model": name, "accepted": accepted, "reason": reason, "digest": file_digest(candidate),
            "calibration": {"products": len(products), "photos": len(photo_paths), "selection": selection,
                            "split": "train", "seed": settings.seed},
            "keep_fp32_convs": keep_fp32_convs, "tolerance": tolerance,
            "val": {**checked, "fp32": fp32, "int8": int8},
            "cpu": _cpu_features(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        path = install_twin(fp32_path, candidate, record)
    finally:  # an interrupted or failed check leaves no candidate behind
        candidate.unlink(missing_ok=True)
    return record, path


def _score_on_val(settings: Settings, name: str, selection: str, encoder: Encoder, preprocess: Preprocess,
                  photo_preprocess: Preprocess) -> tuple[dict[str, float], dict[str, float], dict]:
    """(fp32 figures, `encoder`'s figures, what was scored): catalog val products against the catalog's val
    split, then DeepFashion val photos against it where there are photos. fp32 is the feature store's."""
    from ..evaluation.protocols import catalog_task, deepfashion_task
    from ..extract import encode_paths
    from ..featurestore import fashion_table

    task = catalog_task(settings, name, selection, split="val", database="val", with_fit=False)
    fp32 = _figures("catalog", task)
    val_table = fashion_table(settings, selection, "val")
    path_of = {int(i): Path(p) for i, p in zip(val_table["id"], val_table["path"], strict=True)}
    database = encode_paths(encoder, [path_of[int(i)] for i in task.database_ids], preprocess)
    task.database, task.queries = database, database[task.exclude_rows]
    int8 = _figures("catalog", task)
    checked = {"catalog": {"queries": len(task.exclude_rows), "database": len(task.database_ids)}}
    if _photos(settings, "val", 1):
        task = deepfashion_task(settings, name, database="val", selection=selection, with_fit=False,
                                query_resolution=photo_preprocess.query_resolution, split="val")
        fp32 |= _figures("photos", task)
        task.queries = encode_paths(encoder, list(task.info["query_table"]["path"]), photo_preprocess)
        task.database = database
        int8 |= _figures("photos", task)
        checked["photos"] = {"queries": len(task.query_ids), "database": len(task.database_ids)}
    return fp32, int8, checked


def _cpu_features() -> list[str]:
    """The CPU's int8 instruction sets: int8 kernels (and their rounding) differ with them."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"})


def _photos(settings: Settings, split: str, count: int) -> list[str]:
    """A seeded sample of DeepFashion photos of `split`; none where the folder is absent."""
    from ..deepfashion import DeepFashionError
    from ..featurestore import deepfashion_table

    if count == 0:
        return []
    try:
        table = deepfashion_table(settings, split)
    except DeepFashionError:
        return []
    return list(table.sample(min(count, len(table)), random_state=settings.seed)["path"]) if len(table) else []


def _figures(prefix: str, task: RetrievalTask) -> dict[str, float]:
    from ..evaluation.runner import evaluate_task

    metrics = evaluate_task(task, "raw").metrics
    return {f"{prefix} {label}": float(metrics[key]) for key, label in FIGURES.items()}
