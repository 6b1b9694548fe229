#!/usr/bin/env python3
"""Does int8 pay? The int8 twin `imageretrieval quantize` makes (ONNX Runtime, QDQ, per-channel), calibrated
on seeded catalog train images: speed and catalog test-split quality against fp32, side by side.

    DATASET_ROOT=... WORKDIR=... python -m benchmarks.int8_probe efficientnet_lite0_fashion [--keep-fp32-convs 0]

The catalog protocol's database (the seed test split) is encoded with both models; the fp32 figures are
the ones `imageretrieval evaluate --model M --protocol catalog --features raw` prints.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.encoder import latency_ms, throughput
from imageretrieval.evaluation.protocols import catalog_task
from imageretrieval.evaluation.runner import evaluate_task
from imageretrieval.extract import encode_paths
from imageretrieval.featurestore import fashion_table
from imageretrieval.images import open_image
from imageretrieval.inference import OnnxRuntimeEncoder, default_threads, export_dir, export_onnx
from imageretrieval.models import create_model, get_model_config
from imageretrieval.preprocess import preprocess_for
from imageretrieval.quantize import CALIBRATION_BATCH, DEFAULT_KEEP_FP32_CONVS, quantize_static_int8
from imageretrieval.settings import Settings

log = logging.getLogger("int8_probe")


def speed(encoders: dict, x: np.ndarray, rounds: int = 3) -> dict[str, tuple[float, float]]:
    """(batch throughput img/s, batch-1 latency ms) per encoder, medians of alternating rounds."""
    out: dict[str, tuple[list, list]] = {k: ([], []) for k in encoders}
    for _ in range(rounds):
        for name, enc in encoders.items():
            out[name][0].append(throughput(enc, x, 6))
            out[name][1].append(latency_ms(enc, x[:1], 20))
    return {k: (float(np.median(a)), float(np.median(b))) for k, (a, b) in out.items()}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--calibration", type=int, default=256, help="catalog train images to calibrate on")
    parser.add_argument("--keep-fp32-convs", type=int, default=DEFAULT_KEEP_FP32_CONVS,
                        help="leave the first N convolutions in fp32 (0: quantize every supported op)")
    args = parser.parse_args()
    settings = Settings()
    config = get_model_config(args.model, settings.workdir)
    preprocess = preprocess_for(config)
    fp32_path = export_onnx(create_model(args.model, workdir=settings.workdir), preprocess.shape,
                            export_dir(settings.workdir, args.model))
    train = fashion_table(settings, "seed", "train").sample(args.calibration, random_state=settings.seed)
    calibration = np.stack([preprocess(open_image(p)) for p in train["path"]])

    with tempfile.TemporaryDirectory() as tmp:
        int8_path = Path(tmp) / "int8.onnx"
        batches = (calibration[i:i + CALIBRATION_BATCH] for i in range(0, len(calibration), CALIBRATION_BATCH))
        quantize_static_int8(fp32_path, int8_path, batches, args.keep_fp32_convs)
        threads = default_threads()
        encoders = {"fp32": OnnxRuntimeEncoder(fp32_path, threads), "int8": OnnxRuntimeEncoder(int8_path, threads)}
        timing = speed(encoders, calibration[:32])
        task = catalog_task(settings, args.model, with_fit=False)
        table = fashion_table(settings, "seed", "test")
        row_of = {int(p): i for i, p in enumerate(table["id"])}
        rows = [row_of[int(p)] for p in task.database_ids]
        paths = [Path(table["path"].iloc[r]) for r in rows]
        results = {}
        for name, enc in encoders.items():
            feats = encode_paths(enc, paths, preprocess)
            task.database = feats
            task.queries = feats[task.exclude_rows]
            results[name] = evaluate_task(task, "raw").metrics
    fp = results["fp32"]
    print(f"| {args.model} | batch 32 img/s | batch 1 ms | catalog P@15 | catalog mAP |")
    print("|---|---|---|---|---|")
    for name in encoders:
        m = results[name]
        print(f"| {name} | {timing[name][0]:.0f} | {timing[name][1]:.2f} | {m['PrecisionHits']:.4f} "
              f"({m['PrecisionHits'] - fp['PrecisionHits']:+.4f}) | {m['mAP']:.4f} ({m['mAP'] - fp['mAP']:+.4f}) |")


if __name__ == "__main__":
    main()
