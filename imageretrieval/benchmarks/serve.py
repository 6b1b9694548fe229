"""`imageretrieval bench serve`: the search API under load, next to the bare model forward, same run.

Starts the API itself on loopback (uvicorn, one model), measures the bare forward pass of that model
in this process (batch 1 and batch B, the server idle), then sends bounded numbers of image-upload
searches at concurrency 1, 8, 32 and reports p50/p95/p99 latency, throughput and errors. The result
replaces the "Serving" section of docs/benchmarks.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..settings import Settings

log = logging.getLogger(__name__)

SECTION_TITLE = "## Serving: search API under load"
DEFAULT_DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
LATENCY_GOAL_MS = 15.0
THROUGHPUT_GOAL = 0.8


def register(sub) -> None:
    p = sub.add_parser("serve", help="search API latency/throughput vs the bare model forward (loopback)")
    p.add_argument("--model", default=None, help="model to serve (default: DEFAULT_MODEL)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client concurrency levels")
    p.add_argument("--requests", default="40,96,192",
                   help="requests per level (one number, or one per level); bounded further by --max-seconds")
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop sending after this long per level")
    p.add_argument("--batch", type=int, default=32, help="batch size of the bare batched forward (and BATCH_MAX)")
    p.add_argument("--bare-repeats", type=int, default=4, help="timed batched forwards (single: 8x this)")
    p.add_argument("--queries", type=Path, default=None,
                   help="folder of query images (default: DeepFashion images when present, else catalog images)")
    p.add_argument("--num-queries", type=int, default=64)
    p.add_argument("--port", type=int, default=0, help="loopback port (0: a free one)")
    p.add_argument("--output", type=Path, default=DEFAULT_DOC, help="markdown file whose Serving section is replaced")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.set_defaults(func=run)


# ----- query images -----------------------------------------------------------------------------
def query_images(settings: Settings, folder: Path | None, n: int, seed: int = 0) -> tuple[list[Path], str]:
    """A fixed, seeded sample of query images; DeepFashion photos are never part of the catalog index."""
    if folder is None and (Path(settings.deepfashion_root) / "img").is_dir():
        folder = Path(settings.deepfashion_root) / "img"
    if folder is not None:
        source = str(folder)
        files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    else:
        source = f"{settings.images_dir} (catalog images)"
        files = sorted(Path(settings.images_dir).glob("*.jpg"))
    if not files:
        from ..cli import CLIError

        raise CLIError(f"no query images found in {source}: pass --queries DIR")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(files), size=min(n, len(files)), replace=False)
    return [files[i] for i in sorted(pick)], source


# ----- bare forward -----------------------------------------------------------------------------
@dataclass
class BareForward:
    single_ms: float      # median of batch-1 forwards
    single_ips: float     # images/s at batch 1
    batch: int
    batch_ms: float       # median of batched forwards
    batch_ips: float      # images/s at batch B
    single_runs: int
    batch_runs: int


def measure_bare(settings: Settings, model: str, paths: list[Path], batch: int, repeats: int) -> BareForward:
    """The model forward alone (preprocessed uint8 input -> query vectors), as the server calls it.

    Timed on a worker thread like the server's batcher: on a busy 2-core machine, torch's forward
    from the main thread was measured 5-10x slower than from a worker thread, which would flatter the API.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare-forward") as pool:
        return pool.submit(_measure_bare, settings, model, paths, batch, repeats).result()


def _measure_bare(settings: Settings, model: str, paths: list[Path], batch: int, repeats: int) -> BareForward:
    import torch

    from ..engine import RetrievalEngine
    from ..images import open_image

    engine = RetrievalEngine(settings, model)
    tensors = [engine.preprocess(open_image(p)) for p in paths]
    batch_tensor = torch.stack([tensors[i % len(tensors)] for i in range(batch)])
    engine.encode_tensors(batch_tensor[:1])  # warm-up: kernel selection, allocations
    engine.encode_tensors(batch_tensor)
    singles = []
    for i in range(8 * repeats):
        t0 = time.perf_counter()
        engine.encode_tensors(tensors[i % len(tensors)][None])
        singles.append(time.perf_counter() - t0)
    batches = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.encode_tensors(batch_tensor)
        batches.append(time.perf_counter() - t0)
    single, batched = float(np.median(singles)), float(np.median(batches))
    del engine
    return BareForward(single * 1000, 1 / single, batch, batched * 1000, batch / batched, len(singles), len(batches))


# ----- server -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(settings: Settings, model: str, port: int, batch: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "WORKDIR": str(settings.workdir), "DATASET_ROOT": str(settings.dataset_root),
           "DEVICE": settings.device, "PRECISION": settings.precision, "MODELS": model, "DEFAULT_MODEL": model,
           "BATCH_MAX": str(batch), "APP_DIST": str(Path(tempfile.gettempdir()) / "no-web-app")}
    cmd = [sys.executable, "-m", "uvicorn", "retrievalapi.main:app", "--host", "127.0.0.1", "--port", str(port),
           "--no-access-log", "--timeout-graceful-shutdown", "10"]
    log.info("starting %s (log: %s)", " ".join(cmd), log_path)
    with open(log_path, "wb") as fh:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            from ..cli import CLIError

            tail = log_path.read_text(errors="replace")[-2000:]
            raise CLIError(f"the API exited during startup (code {proc.returncode}):\n{tail}")
        try:
            if httpx.get(f"{base}/api/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the API was not ready after {timeout:.0f} s (log: {log_path})")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown: drains, then lifespan shutdown
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----- load -------------------------------------------------------------------------------------
@dataclass
class LevelResult:
    concurrency: int
    sent: int = 0
    ok: int = 0
    errors: int = 0
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    mean_batch: float = float("nan")  # images per forward pass on the server, from /api/metrics

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def throughput(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0


async def run_level(base: str, payloads: list[tuple[str, bytes]], concurrency: int, n: int,
                    max_seconds: float) -> LevelResult:
    """`concurrency` clients in closed loop, `n` requests in all (or until `max_seconds`); warm-up not counted."""
    import httpx

    async def client(session: httpx.AsyncClient, tickets, result: LevelResult, stop_at: float) -> None:
        for i in tickets:
            if time.perf_counter() > stop_at:
                return
            name, data = payloads[i % len(payloads)]
            t0 = time.perf_counter()
            try:
                r = await session.post(f"{base}/api/search", files={"image": (name, data, "image/jpeg")},
                                       data={"top_k": "15"})
                status = r.status_code
                good = status == 200 and len(r.json()["results"]) == 15
            except httpx.HTTPError:
                status, good = 0, False
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            result.sent += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            result.ok += good
            result.errors += not good

    async def wave(session: httpx.AsyncClient, count: int, result: LevelResult) -> float:
        tickets = iter(range(count))
        stop_at = time.perf_counter() + max_seconds
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session, tickets, result, stop_at) for _ in range(concurrency)))
        return time.perf_counter() - t0

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as session:
        await wave(session, concurrency, LevelResult(concurrency))  # open the connections, fill caches
        result = LevelResult(concurrency)
        result.wall_s = await wave(session, n, result)
    return result


def model_index_size(base: str, model: str) -> int:
    import httpx

    models = httpx.get(f"{base}/api/models", timeout=10).json()["models"]
    return next(int(m["index_size"]) for m in models if m["name"] == model)


def batch_counters(base: str) -> tuple[float, float]:
    """(images, forward passes) so far, from the server's api_batch_size histogram."""
    import httpx

    text = httpx.get(f"{base}/api/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("api_batch_size_sum{"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("api_batch_size_count{"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


# ----- report -----------------------------------------------------------------------------------
def render(model: str, settings: Settings, source: str, n_queries: int, bare: BareForward,
           levels: list[LevelResult], command: str, batch: int, index_size: int,
           load: tuple[float, float]) -> str:
    import torch

    from ..device import resolve_device, resolve_precision

    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    c1 = next((r for r in levels if r.concurrency == 1), None)
    top = max(levels, key=lambda r: r.concurrency)
    lines = [
        SECTION_TITLE, "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"device `{device}`, precision `{precision}`.",
        f"Model `{model}`, index of {index_size} products (catalog `{settings.dataset_root}`); "
        f"{n_queries} query images from `{source}` (uploaded as files, top_k 15, no filters), "
        f"server and load generator on the same machine (loopback). BATCH_MAX={batch}. "
        f"Load average (1 min) at start / end: {load[0]:.1f} / {load[1]:.1f} (other jobs share the CPUs "
        f"when it is well above 0).", "",
        "```bash", command, "```", "",
        "| what | concurrency | requests | errors | p50 ms | p95 ms | p99 ms | throughput (img/s) | images/forward |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| bare forward, batch 1 | 1 | {bare.single_runs} | 0 | {bare.single_ms:.1f} | | "
        f"| {bare.single_ips:.1f} | 1 |",
        f"| bare forward, batch {bare.batch} | - | {bare.batch_runs} batches | 0 | {bare.batch_ms:.0f} (per batch) "
        f"| | | {bare.batch_ips:.1f} | {bare.batch} |",
    ]
    for r in levels:
        lines.append(f"| API `POST /api/search` | {r.concurrency} | {r.sent} | {r.errors} | {r.pct(50):.1f} | "
                     f"{r.pct(95):.1f} | {r.pct(99):.1f} | {r.throughput:.1f} | {r.mean_batch:.1f} |")
    lines += ["", "Goals:"]
    if c1 is not None:
        ok = c1.pct(50) <= bare.single_ms + LATENCY_GOAL_MS
        lines.append(f"- concurrency 1: p50 {c1.pct(50):.1f} ms vs bare single forward {bare.single_ms:.1f} ms "
                     f"+ {LATENCY_GOAL_MS:.0f} ms = {bare.single_ms + LATENCY_GOAL_MS:.1f} ms: "
                     f"**{'met' if ok else 'not met'}** (overhead {c1.pct(50) - bare.single_ms:+.1f} ms)")
    ratio = top.throughput / bare.batch_ips if bare.batch_ips else 0.0
    lines.append(f"- concurrency {top.concurrency}: {top.throughput:.1f} img/s = {ratio:.2f}x the bare batch-"
                 f"{bare.batch} forward ({bare.batch_ips:.1f} img/s), goal >= {THROUGHPUT_GOAL}x: "
                 f"**{'met' if ratio >= THROUGHPUT_GOAL else 'not met'}**")
    total_errors = sum(r.errors for r in levels)
    lines.append(f"- errors: {total_errors} of {sum(r.sent for r in levels)} requests"
                 + (f" (statuses: {[r.statuses for r in levels]})" if total_errors else ""))
    return "\n".join(lines) + "\n"


def replace_section(doc: Path, section: str) -> None:
    """Replace our section (heading to the next '## ' heading) or append it; other sections are kept."""
    text = doc.read_text() if doc.is_file() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION_TITLE)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text.rstrip("\n") + "\n")


def run(args: argparse.Namespace, settings: Settings) -> int:
    model = args.model or settings.default_model
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the figures
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    counts = [int(c) for c in args.requests.split(",") if c.strip()]
    if len(counts) == 1:
        counts *= len(levels)
    if len(counts) != len(levels) or min(levels + counts) < 1:
        from ..cli import CLIError

        raise CLIError("--requests needs one positive number, or one per --concurrency level")
    load_start = os.getloadavg()[0]
    paths, source = query_images(settings, args.queries, args.num_queries)
    payloads = [(p.name, p.read_bytes()) for p in paths]
    log.info("bare forward of %s (batch 1 and %d) on %d query images", model, args.batch, len(paths))
    bare = measure_bare(settings, model, paths, args.batch, args.bare_repeats)
    log.info("bare: batch 1 %.1f ms (%.1f img/s), batch %d %.0f ms (%.1f img/s)", bare.single_ms, bare.single_ips,
             bare.batch, bare.batch_ms, bare.batch_ips)
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.gettempdir()) / f"bench-serve-{port}.log"
    proc = start_server(settings, model, port, args.batch, log_path)
    results: list[LevelResult] = []
    index_size = 0
    try:
        wait_ready(base, proc, args.startup_timeout, log_path)
        index_size = model_index_size(base, model)
        for concurrency, n in zip(levels, counts, strict=True):
            images_before, batches_before = batch_counters(base)
            r = asyncio.run(run_level(base, payloads, concurrency, n, args.max_seconds))
            images_after, batches_after = batch_counters(base)
            if batches_after > batches_before:  # includes the level's few warm-up requests
                r.mean_batch = (images_after - images_before) / (batches_after - batches_before)
            log.info("concurrency %d: %d requests, %d errors, p50 %.1f ms, p95 %.1f ms, p99 %.1f ms, %.1f img/s",
                     concurrency, r.sent, r.errors, r.pct(50), r.pct(95), r.pct(99), r.throughput)
            results.append(r)
    finally:
        stop_server(proc)
    command = (f"WORKDIR={settings.workdir} DATASET_ROOT={settings.dataset_root} "
               f"DEEPFASHION_ROOT={settings.deepfashion_root} flock /tmp/heavy.lock "
               f"imageretrieval {shlex.join(sys.argv[1:])}")
    load = (load_start, os.getloadavg()[0])
    section = render(model, settings, source, len(paths), bare, results, command, args.batch, index_size, load)
    sys.stdout.write(section)
    if not args.no_write:
        replace_section(args.output, section)
        log.info("wrote the Serving section of %s", args.output)
    return 0 if all(r.errors == 0 for r in results) else 1
