"""`python -m benchmarks text`: search by words through the API (loopback), latency per query.

Queries a shopper types: category names, colour + type phrases, brands and whole product names,
sent one after the other by one client; the answer's own Server-Timing splits each into the text
encoder + projection + index searches ("search") and the rest.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imageretrieval.settings import Settings

from .live import Server, scratch_workdir
from .report import machine_line, write_section

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("text", help="search by words through the API: latency per query")
    p.add_argument("--model", default=None, help="model to serve (default: DEFAULT_MODEL)")
    p.add_argument("--queries", type=int, default=200, help="timed queries (after 10 warm-up ones)")
    p.add_argument("--mode", choices=("hybrid", "semantic", "lexical"), default="hybrid")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--no-write", action="store_true", help="print the section only")
    p.set_defaults(func=run)


def typed_queries(settings: Settings, n: int, seed: int = 0) -> list[str]:
    """A seeded mix of what shoppers type, drawn from the catalog's own vocabulary."""
    from imageretrieval.catalog import load_catalog

    df = load_catalog(settings.dataset_root).df
    rng = np.random.default_rng(seed)
    types = [t for t in df["articleType"].unique() if t]
    colours = [c for c in df["baseColour"].unique() if c]
    names = df["productDisplayName"].astype(str).tolist()
    brands = sorted({n.split()[0] for n in names if n.split()})
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(str(rng.choice(types)))
        elif kind == 1:
            out.append(f"{rng.choice(['men', 'women'])} {rng.choice(colours).lower()} {rng.choice(types).lower()}")
        elif kind == 2:
            out.append(str(rng.choice(brands)))
        else:
            out.append(str(rng.choice(names)))
    return out


def run(args: argparse.Namespace, settings: Settings) -> int:
    import httpx

    model = args.model or settings.default_model
    scratch = scratch_workdir(settings.workdir, Path(tempfile.mkdtemp(prefix="bench-text-")))
    run_settings = settings.model_copy(update={"workdir": scratch})
    queries = typed_queries(settings, args.queries + 10)
    server = Server(run_settings, model, args.startup_timeout, tag="text")
    total, inner = [], []
    try:
        with httpx.Client(base_url=server.base, timeout=60) as client:
            for i, q in enumerate(queries):
                t0 = time.perf_counter()
                r = client.post("/api/search/text", json={"q": q, "mode": args.mode, "top_k": 15})
                ms = (time.perf_counter() - t0) * 1000
                r.raise_for_status()
                if i >= 10:
                    total.append(ms)
                    timing = dict(part.split(";dur=") for part in
                                  (p.split(";desc")[0].strip() for p in r.headers["server-timing"].split(",")))
                    inner.append(float(timing["search"]))
    finally:
        server.stop()
    command = f"python -m benchmarks {shlex.join(sys.argv[1:])}"
    section = "\n".join([
        "## Search by words through the API", "", f"Machine: {machine_line()}.", "", f"Command: `{command}`", "",
        f"Model `{model}`, mode `{args.mode}`, {len(total)} typed queries (category names, gender + colour + type, "
        "brands, whole product names; seeded), one client, sequential, top 15.", "",
        "| Figure | p50 | p99 | Goal |", "|---|---|---|---|",
        f"| Request, client side (loopback) | {np.percentile(total, 50):.1f} ms | {np.percentile(total, 99):.1f} ms "
        "| p50 <= 20 ms |",
        f"| of which text encoder + projection + searches (Server-Timing `search`) | {np.percentile(inner, 50):.1f} ms "
        f"| {np.percentile(inner, 99):.1f} ms | |",
    ]) + "\n"
    print(section)
    if not args.no_write:
        write_section("text", section)
    return 0
