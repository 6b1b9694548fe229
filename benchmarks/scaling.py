"""`python -m benchmarks scaling faiss|milvus|ray`: the measured figures of docs/scaling.md's capacity plan.

faiss   FAISS index types at 1M and 5M vectors of the default model's dimension: build time, memory,
        recall@15 against exact search, query latency. The vectors are synthetic but shaped like the
        real ones: mixes of two real catalog embeddings plus noise, so they keep the catalog's clusters.
milvus  Milvus Lite (embedded) over the real catalog's vectors: load rate, search latency with and
        without a filter, upsert/delete latency, beside FAISS in-process on the same queries.
ray     Local extraction against Ray Data (a local Ray, one actor per core) on the same catalog images:
        throughput, Ray's start-up, and that the features agree.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imageretrieval.settings import Settings

from .report import machine_line, write_section

log = logging.getLogger(__name__)

DOC = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"
K = 15


def register(sub) -> None:
    p = sub.add_parser("scaling", help="figures for docs/scaling.md (FAISS at millions, Milvus Lite, Ray)")
    p.add_argument("part", choices=("faiss", "milvus", "ray"))
    p.add_argument("--model", default=None, help="whose index vectors (default: DEFAULT_MODEL)")
    p.add_argument("--sizes", default="1000000,5000000", help="faiss: database sizes")
    p.add_argument("--factories", default="HNSW32;IVF2048,PQ64", help="faiss: FAISS factory strings, ';'-separated")
    p.add_argument("--queries", type=int, default=200, help="queries per measurement")
    p.add_argument("--images", type=int, default=2000, help="ray: catalog images to extract")
    p.add_argument("--no-write", action="store_true", help="print the section only")
    p.set_defaults(func=run)


def run(args, settings: Settings) -> int:
    model = args.model or settings.default_model
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    body = {"faiss": bench_faiss, "milvus": bench_milvus, "ray": bench_ray}[args.part](args, settings, model)
    body = f"{body}\n\nMeasured with `{command}` on {machine_line()}, {time.strftime('%Y-%m-%d')}."
    print(body)
    if not args.no_write:
        write_section(f"scaling-{args.part}", body, DOC)
    return 0


# ----- synthetic vectors shaped like the catalog's ------------------------------------------------
def index_vectors(settings: Settings, model: str) -> np.ndarray:
    from imageretrieval.artifacts import ModelArtifacts

    art = ModelArtifacts.of(settings.workdir, model)
    manifest = art.read_manifest()
    if manifest is None:
        raise SystemExit(f"no index for {model}: run `imageretrieval index --model {model}` first")
    return np.load(art.current_files(manifest)[2], mmap_mode="r")


def synthetic(base: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n unit vectors, each a random mix of two real embeddings plus noise (seeded)."""
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(base), n), rng.integers(0, len(base), n)
    a = rng.uniform(0.5, 1.0, (n, 1)).astype(np.float32)
    v = a * base[i] + (1 - a) * base[j]
    v += 0.3 / np.sqrt(base.shape[1]) * rng.standard_normal(v.shape, dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


CHUNK = 250_000


def chunks(base: np.ndarray, n: int):
    for c, start in enumerate(range(0, n, CHUNK)):
        yield synthetic(base, min(CHUNK, n - start), seed=1000 + c)


def exact_top(base: np.ndarray, n: int, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Exact top-k row numbers per query over the n synthetic vectors, streamed chunk by chunk."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    offset = 0
    for block in chunks(base, n):
        s = queries @ block.T
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate([best_i, np.arange(offset, offset + len(block))[None].repeat(len(queries), 0)], axis=1)
        top = np.argpartition(-s_all, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
        offset += len(block)
    return best_i


def vector_bytes(factory: str, dims: int) -> int:
    """Bytes per vector a FAISS factory string stores (codes, not counting graph links or ids)."""
    import re

    pq = re.search(r"PQ(\d+)", factory)
    if pq:
        return int(pq.group(1))
    if "SQ8" in factory:
        return dims
    if "SQ4" in factory:
        return dims // 2
    return 4 * dims


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_faiss(args, settings: Settings, model: str) -> str:
    import faiss

    from imageretrieval.index import _search_params

    base = np.ascontiguousarray(index_vectors(settings, model), np.float32)
    dims = base.shape[1]
    queries = synthetic(base, args.queries, seed=7)
    total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        t = time.perf_counter()
        truth = exact_top(base, n, queries)
        t_exact = time.perf_counter() - t
        rows.append((n, f"exact, {len(queries)} queries in one streamed matrix product", "-",
                     f"{n * dims * 4 / 1e9:.1f} GB (float32)", f"{t_exact / len(queries) * 1000:.0f} ms", "1.000"))
        for factory in (f.strip() for f in args.factories.split(";") if f.strip()):
            index = faiss.index_factory(dims, factory, faiss.METRIC_INNER_PRODUCT)
            need_gb = n * vector_bytes(factory, dims) * 2.2 / 1e9  # the index, and its serialized copy (measured)
            if need_gb > 0.6 * total_gb:
                rows.append((n, factory, "not built", f"~{need_gb:.0f} GB needed", "-", "-"))
                log.info("%s at %d: skipped (%.0f GB of vectors, %.0f GB of RAM)", factory, n, need_gb, total_gb)
                continue
            started = time.perf_counter()
            if not index.is_trained:
                train = synthetic(base, min(n, 100_000), seed=99)
                index.train(train)
                del train
            for block in chunks(base, n):
                index.add(block)
            build_s = time.perf_counter() - started
            memory = faiss.serialize_index(index).nbytes / 1e9
            params = _search_params(index, None, None, None)
            index.search(queries[:5], K, params=params)  # warm
            started = time.perf_counter()
            found = np.concatenate([index.search(q[None], K, params=params)[1] for q in queries])
            per_query = (time.perf_counter() - started) / len(queries)
            rows.append((n, factory, f"{build_s / 60:.1f} min", f"{memory:.2f} GB", f"{per_query * 1000:.2f} ms",
                         f"{recall(found, truth):.3f}"))
            log.info("%s at %d: %s", factory, n, rows[-1])
            del index
    lines = ["| vectors | index | build (2 cores) | index memory | per query, one at a time | recall@15 vs exact |",
             "|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {n:,} | {f} | {b} | {m} | {q} | {r} |" for n, f, b, m, q, r in rows]
    return (f"{dims}-dim vectors ({model}); HNSW searched with efSearch 128, IVF with nprobe 32 (the service's "
            f"settings); exact = a streamed matrix product over all vectors.\n\n" + "\n".join(lines))


# ----- Milvus Lite ------------------------------------------------------------------------------
def bench_milvus(args, settings: Settings, model: str) -> str:
    from imageretrieval.backends import Row
    from imageretrieval.backends.faiss_backend import FaissBackend
    from imageretrieval.backends.milvus_backend import MilvusBackend, connect, parse_index_spec
    from imageretrieval.catalog import ATTRIBUTE_COLUMNS, load_catalog
    from imageretrieval.engine import result_fields

    vectors = np.ascontiguousarray(index_vectors(settings, model), np.float32)
    from imageretrieval.artifacts import ModelArtifacts

    art = ModelArtifacts.of(settings.workdir, model)
    ids = np.load(art.current_files(art.read_manifest())[1])
    catalog = load_catalog(settings.dataset_root)
    fields = {int(r["id"]): r for r in catalog.df.to_dict("records")}
    rows = [Row(int(pid), vectors[i], result_fields(fields.get(int(pid), {}))) for i, pid in enumerate(ids)]
    rng = np.random.default_rng(0)
    queries = vectors[rng.choice(len(vectors), args.queries, replace=False)]
    men = {"gender": ["Men"], "articleType": ["Shirts"]}
    lines = ["| backend | index | load | search k=15 p50 | filtered (Men, Shirts) p50 | one upsert | one delete |",
             "|---|---|---:|---:|---:|---:|---:|"]

    for spec_text in ("FLAT", "HNSW"):
        with tempfile.TemporaryDirectory() as tmp:
            client = connect(str(Path(tmp) / "bench.db"))
            spec = parse_index_spec(spec_text, len(rows), vectors.shape[1])
            started = time.perf_counter()
            backend = MilvusBackend.create(client, "bench", rows, vectors.shape[1], ATTRIBUTE_COLUMNS, spec)
            backend.search(queries[:1], K)  # the index is built on first use
            load_s = time.perf_counter() - started
            plain, filtered, upsert, delete = measure(backend, queries, rows, men)
            lines.append(f"| Milvus Lite | {spec_text} | {load_s:.0f} s ({len(rows) / load_s:,.0f} rows/s) | "
                         f"{plain:.1f} ms | {filtered:.1f} ms | {upsert:.1f} ms | {delete:.1f} ms |")
            log.info(lines[-1])
            backend.close()
    for factory in ("Flat", "HNSW32"):
        started = time.perf_counter()
        backend = FaissBackend.build(rows, vectors.shape[1], ATTRIBUTE_COLUMNS, factory)
        load_s = time.perf_counter() - started
        plain, filtered, upsert, delete = measure(backend, queries, rows, men)
        lines.append(f"| FAISS in-process | {factory} | {load_s:.0f} s | {plain:.1f} ms | {filtered:.1f} ms | "
                     f"{upsert:.2f} ms | {delete:.2f} ms |")
        log.info(lines[-1])
    return (f"The real catalog's {len(rows):,} vectors of {vectors.shape[1]} dims ({model}), {len(queries)} "
            "catalog vectors as queries, one at a time; load = insert + index build; an upsert or delete "
            "is acknowledged once searchable.\n\n" + "\n".join(lines))


def median_ms(fn, n: int) -> float:
    times = []
    for i in range(n):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1000


def measure(backend, queries: np.ndarray, rows: list, filters: dict) -> tuple[float, float, float, float]:
    """Median ms of: a search, a filtered search, a one-row upsert, a one-row delete."""
    from imageretrieval.backends import Row

    plain = median_ms(lambda i: backend.search(queries[i][None], K), len(queries))
    filtered = median_ms(lambda i: backend.search(queries[i][None], K, filters), len(queries))
    upsert = median_ms(lambda i: backend.apply([], [Row(10_000_000 + i, queries[i], rows[i].product)]), 20)
    delete = median_ms(lambda i: backend.apply([10_000_000 + i], []), 20)
    return plain, filtered, upsert, delete


# ----- Ray Data -----------------------------------------------------------------------------------
def bench_ray(args, settings: Settings, model: str) -> str:
    import ray

    from imageretrieval.catalog import load_catalog
    from imageretrieval.device import resolve_device
    from imageretrieval.distributed import ActorSpec, init_ray, ray_encoder
    from imageretrieval.extract import extract_features
    from imageretrieval.inference import resolve_inference
    from imageretrieval.models import create_model
    from imageretrieval.preprocess import preprocess_for

    catalog = load_catalog(settings.dataset_root)
    ids = np.asarray(catalog.ids[: args.images])
    paths = [catalog.image_path(i) for i in ids]
    net = create_model(model, workdir=settings.workdir)
    preprocess = preprocess_for(net.config)
    runtime, precision = resolve_inference(settings.runtime, settings.precision, resolve_device(settings.device))
    common = dict(preprocess=preprocess, batch_size=settings.batch_size, num_workers=1, device=settings.device,
                  precision=precision, progress=False, runtime=runtime, workdir=settings.workdir)
    cores = os.cpu_count() or 1
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        extract_features(net, paths[:64], ids[:64], Path(tmp) / "warm", **common)  # the ONNX export, cached
        started = time.perf_counter()
        local = extract_features(net, paths, ids, Path(tmp) / "local", **common)
        results["local"] = time.perf_counter() - started
        started = time.perf_counter()
        init_ray(None, num_cpus=cores)
        results["ray_start"] = time.perf_counter() - started
        spec = ActorSpec(model, str(Path(settings.workdir).resolve()), preprocess, runtime, precision,
                         settings.device, threads=1)
        encode = ray_encoder(spec, None, actors=cores, batch_size=settings.batch_size)
        started = time.perf_counter()
        remote = extract_features(net, paths, ids, Path(tmp) / "ray", encode=encode, **common)
        results["ray"] = time.perf_counter() - started
        ray.shutdown()
    valid = ~np.isnan(local.features).any(axis=1)
    diff = float(np.abs(local.features[valid] - remote.features[valid]).max())
    n = len(ids)
    json.dump(results, sys.stderr)
    lines = ["| extraction | wall time | images/s |", "|---|---:|---:|",
             f"| local (1 process, {cores} threads + 1 decode thread) | {results['local']:.1f} s | "
             f"{n / results['local']:.0f} |",
             f"| Ray Data, {cores} actors x 1 thread (model loads included) | {results['ray']:.1f} s | "
             f"{n / results['ray']:.0f} |"]
    return (f"{n:,} catalog images, {model} on {runtime}; a local Ray started in {results['ray_start']:.1f} s "
            f"(not in the wall times). Largest difference between the two runs' features: {diff:.1e}.\n\n"
            + "\n".join(lines))
