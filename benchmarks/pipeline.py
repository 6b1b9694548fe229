"""`python -m benchmarks pipeline`: extraction vs bare forward, bf16 vs fp32, index build, search latency.

Every number is measured in the same run on the same machine, so ratios are meaningful.
"""

from __future__ import annotations

import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imageretrieval.catalog import load_catalog
from imageretrieval.device import autocast, cpu_has_fast_bf16, prepare_model, resolve_device, to_batch
from imageretrieval.extract import extract_features
from imageretrieval.index import build_index, search
from imageretrieval.models import create_model
from imageretrieval.preprocess import preprocess_for

from .report import machine_line, write_section

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="extraction / forward / index / search-latency benchmark")
    p.add_argument("--model", default=None)
    p.add_argument("--images", type=int, default=1024, help="catalog images for the extraction figures")
    p.add_argument("--queries", type=int, default=60, help="single-image searches for latency")
    p.add_argument("--bf16-batches", type=int, default=3, help="batches for the bf16 figure (slow on AVX2)")
    p.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    p.set_defaults(func=run)


def _percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


@torch.inference_mode()
def bare_forward(model, batch_size: int, shape: tuple[int, ...], precision: str, batches: int, device) -> float:
    """Images/s of model forward alone on ready uint8 batches (includes the uint8->float step)."""
    x = torch.randint(0, 256, (batch_size, *shape), dtype=torch.uint8)
    with autocast(device, precision):
        model(to_batch(x, device))  # warm-up
        t0 = time.perf_counter()
        for _ in range(batches):
            model(to_batch(x, device))
    return batch_size * batches / (time.perf_counter() - t0)


def run(args, settings) -> int:
    name = args.model or settings.default_model
    device = resolve_device(settings.device)
    catalog = load_catalog(settings.dataset_root)
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(catalog.ids, size=min(args.images, len(catalog)), replace=False))
    paths = [catalog.image_path(i) for i in ids]
    model = prepare_model(create_model(name, workdir=settings.workdir), device)
    shape, bs = preprocess_for(model.config).shape, settings.batch_size
    rows = []

    fp32 = bare_forward(model, bs, shape, "fp32", max(2, len(ids) // bs // 2), device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        extract_features(model, paths, ids, Path(tmp), batch_size=bs, num_workers=settings.num_workers,
                         device=str(device), precision="fp32", progress=False)
        extract_rate = len(ids) / (time.perf_counter() - t0)
    rows.append((f"bare forward, fp32, batch {bs}", f"{fp32:.1f} img/s"))
    rows.append((f"extraction of {len(ids)} catalog JPEGs, fp32, batch {bs}, {settings.num_workers} worker(s)",
                 f"{extract_rate:.1f} img/s ({extract_rate / fp32:.2f}x bare forward)"))
    bf16 = bare_forward(model, bs, shape, "bf16", args.bf16_batches, device)
    rows.append((f"bare forward, bf16 autocast, batch {bs}",
                 f"{bf16:.1f} img/s ({bf16 / fp32:.2f}x fp32; fast bf16 on this CPU: {cpu_has_fast_bf16()})"))
    one = bare_forward(model, 1, shape, "fp32", 20, device)
    rows.append(("bare forward, fp32, batch 1", f"{one:.1f} img/s ({1000 / one:.1f} ms/img)"))

    from imageretrieval.artifacts import ModelArtifacts

    art = ModelArtifacts.of(settings.workdir, name)
    if art.vectors.is_file():
        import faiss

        vectors = np.load(art.vectors)
        # Catalog vectors, slightly perturbed: near a product but never exactly on it, like real queries.
        queries = vectors[rng.choice(len(vectors), 200, replace=False)]
        queries = queries + 0.02 * rng.standard_normal(queries.shape).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        exact: list[set[int]] = []
        for factory in ("Flat", "HNSW32", "IVF1024,PQ32"):
            t0 = time.perf_counter()
            index = build_index(vectors, factory)
            built = time.perf_counter() - t0
            lat, found = [], []
            for q in queries:
                t1 = time.perf_counter()
                _, rows_found = search(index, q[None], 15)
                lat.append((time.perf_counter() - t1) * 1000)
                found.append(set(rows_found[0].tolist()))
            exact = exact or found  # Flat comes first: the exact neighbours
            recall = np.mean([len(a & b) / 15 for a, b in zip(found, exact, strict=True)])
            rows.append((f"index build {factory}, {len(vectors)} x {vectors.shape[1]}",
                         f"{built:.2f} s; search p50 {_percentile(lat, 50):.2f} ms, p95 {_percentile(lat, 95):.2f} ms "
                         f"({faiss.omp_get_max_threads()} threads); recall@15 vs exact {recall:.4f}"))

        from imageretrieval.engine import RetrievalEngine
        from imageretrieval.images import open_image

        engine = RetrievalEngine(settings, name)
        qpaths = [catalog.image_path(i) for i in rng.choice(catalog.ids, args.queries, replace=False)]
        imgs = [open_image(p) for p in qpaths]
        big = [im.resize((im.width * 8, im.height * 8)) for im in imgs[: args.queries // 2]]
        engine.search(imgs[:1], 15)  # warm-up
        for label, batch in (("catalog-size query (60x80)", imgs), ("large query (480x640)", big)):
            lat = []
            for im in batch:
                t0 = time.perf_counter()
                engine.search([im], 15)
                lat.append((time.perf_counter() - t0) * 1000)
            rows.append((f"single-image search (encode + search), {label}",
                         f"p50 {_percentile(lat, 50):.1f} ms, p95 {_percentile(lat, 95):.1f} ms"))
    else:
        log.warning("no index for %s in %s: index and search figures skipped", name, settings.workdir)

    cmd = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    body = [f"## Pipeline: {name}", "", f"Machine: {machine_line()}.", "",
            f"Command: `DATASET_ROOT=... WORKDIR=... {cmd}`", "", "| measurement | result |", "|---|---|"]
    body += [f"| {a} | {b} |" for a, b in rows]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        write_section(f"pipeline-{name}", text)
    return 0
