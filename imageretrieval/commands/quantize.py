"""`imageretrieval quantize`: a model's int8 export, calibrated on catalog images and accepted on val."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..quantize import DEFAULT_KEEP_FP32_CONVS, DEFAULT_TOLERANCE

log = logging.getLogger(__name__)
FIGURES = {"PrecisionHits": "P@15", "mAP": "mAP"}


def register(sub) -> None:
    p = sub.add_parser("quantize", help="write and validate a model's int8 export (PRECISION=int8)",
                       description="Quantize the model's ONNX export to int8 (static, per channel; ONNX Runtime), "
                                   "calibrated on seeded catalog train images; score it against fp32 on the "
                                   "catalog protocol's val split and accept it only where P@15 and mAP drop by "
                                   "at most --tolerance. PRECISION=int8 then runs it for extraction, indexes, "
                                   "search and evaluation. It pays on CPUs with VNNI or AMX: see "
                                   "docs/benchmarks.md.")
    p.add_argument("--model", help="model of the zoo (default: DEFAULT_MODEL)")
    p.add_argument("--calibration", type=int, default=256, help="catalog train images to calibrate on")
    p.add_argument("--keep-fp32-convs", type=int, default=DEFAULT_KEEP_FP32_CONVS,
                   help="leave the graph's first N convolutions in fp32 (the stem sees raw pixels)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="largest drop of val P@15 or mAP that accepts the int8 export")
    p.add_argument("--selection", default="seed", help="catalog selection of the train and val splits")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from ..cli import CLIError
    from ..evaluation.protocols import catalog_task
    from ..evaluation.runner import evaluate_task
    from ..extract import image_batches
    from ..featurestore import fashion_table
    from ..inference import export_dir, export_onnx, load_exported
    from ..models import create_model
    from ..preprocess import preprocess_for
    from ..quantize import acceptance, file_digest, int8_path, quantize_static_int8, save_record

    if args.calibration < 1 or not 0 <= args.tolerance < 1 or args.keep_fp32_convs < 0:
        raise CLIError("--calibration must be >= 1, --tolerance in [0, 1), --keep-fp32-convs >= 0")
    name = args.model or settings.default_model
    settings = settings.model_copy(update={"precision": "fp32", "runtime": "onnxruntime"})
    model = create_model(name, workdir=settings.workdir)
    preprocess = preprocess_for(model.config)
    fp32_path = export_onnx(model, preprocess.shape, export_dir(settings.workdir, name))

    train = fashion_table(settings, args.selection, "train")
    if len(train) == 0:
        raise CLIError(f"no product in the {args.selection} train split of {settings.dataset_root}: "
                       "run `imageretrieval prepare` or pass --selection all")
    sample = train.sample(min(args.calibration, len(train)), random_state=settings.seed)
    t0 = time.perf_counter()
    calibration = (images for images, _ in image_batches(list(sample["path"]), preprocess, batch_size=16))
    out = int8_path(fp32_path)
    quantize_static_int8(fp32_path, out, calibration, args.keep_fp32_convs)
    log.info("quantized %s in %.0f s -> %s", name, time.perf_counter() - t0, out)

    task = catalog_task(settings, name, args.selection, split="val", database="val", with_fit=False)
    fp32 = evaluate_task(task, "raw").metrics
    path_of = {int(i): Path(p) for i, p in zip(fashion_table(settings, args.selection, "val")["id"],
                                                fashion_table(settings, args.selection, "val")["path"],
                                                strict=True)}
    encoder = load_exported(out, "onnxruntime")
    paths = [path_of[int(i)] for i in task.database_ids]
    task.database = np.concatenate([encoder(images) for images, _ in image_batches(paths, preprocess, threads=1)])
    task.queries = task.database[task.exclude_rows]
    int8 = evaluate_task(task, "raw").metrics
    before = {k: float(fp32[k]) for k in FIGURES}
    after = {k: float(int8[k]) for k in FIGURES}
    accepted, reason = acceptance(before, after, args.tolerance)
    save_record(fp32_path, {
        "model": name, "accepted": accepted, "reason": reason, "digest": file_digest(out),
        "calibration": {"images": len(sample), "selection": args.selection, "split": "train", "seed": settings.seed},
        "keep_fp32_convs": args.keep_fp32_convs, "tolerance": args.tolerance,
        "val": {"queries": len(task.exclude_rows), "database": len(task.database_ids), "fp32": before, "int8": after},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    for key, label in FIGURES.items():
        print(f"val {label}: fp32 {before[key]:.4f}  int8 {after[key]:.4f}  ({after[key] - before[key]:+.4f})")
    if not accepted:
        raise CLIError(f"{name}: int8 not accepted ({reason}); PRECISION=int8 refuses it")
    print(f"{name}: int8 export accepted ({reason}): {out}")
    return 0
