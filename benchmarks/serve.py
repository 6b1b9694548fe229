"""`python -m benchmarks serve`: the search API under load, next to the bare model forward, same run.

Starts the API itself on loopback (uvicorn, one model), measures the bare forward pass of that model
in this process (batch 1 and batch B, the server idle), then sends bounded numbers of image-upload
searches at concurrency 1, 8, 32 and reports p50/p95/p99 latency, throughput and errors. The result
replaces the "Serving" section of docs/benchmarks.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from imageretrieval.settings import Settings

from .report import DOC, write_section

log = logging.getLogger(__name__)

SECTION_TITLE = "## Serving: search API under load"
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
    p.add_argument("--rounds", type=int, default=4,
                   help="alternate this many blocks of bare forwards and API requests per level")
    p.add_argument("--queries", type=Path, default=None,
                   help="folder of query images (default: DeepFashion images when present, else catalog images)")
    p.add_argument("--num-queries", type=int, default=64)
    p.add_argument("--paced", type=int, default=20,
                   help="then this many single searches at a shopper's pace, one every --pace-s (0: skip)")
    p.add_argument("--pace-s", type=float, default=1.0, help="quiet seconds before each paced search")
    p.add_argument("--port", type=int, default=0, help="loopback port (0: a free one)")
    p.add_argument("--output", type=Path, default=DOC, help="markdown file whose Serving section is replaced")
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
        from imageretrieval.cli import CLIError

        raise CLIError(f"no query images found in {source}: pass --queries DIR")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(files), size=min(n, len(files)), replace=False)
    return [files[i] for i in sorted(pick)], source


# ----- bare forward -----------------------------------------------------------------------------
@dataclass
class BareForward:
    """Timings (seconds) of the model forward alone, accumulated over interleaved blocks."""

    batch: int
    singles: list[float] = field(default_factory=list)
    batches: list[float] = field(default_factory=list)

    @property
    def single_ms(self) -> float:
        return float(np.median(self.singles)) * 1000 if self.singles else float("nan")

    @property
    def single_ips(self) -> float:
        return 1000 / self.single_ms

    @property
    def batch_ms(self) -> float:
        return float(np.median(self.batches)) * 1000 if self.batches else float("nan")

    @property
    def batch_ips(self) -> float:
        return self.batch * 1000 / self.batch_ms


class BareModel:
    """The model forward alone (preprocessed uint8 input -> query vectors), exactly as the server calls it.

    Runs on its own worker thread like the server's batcher: on a busy 2-core machine, torch's
    forward from the main thread was measured 5-10x slower than from a worker thread, which would
    flatter the API. Blocks of bare forwards are interleaved with blocks of API requests, so that
    both see the same machine (its speed drifts by +-20% within minutes here).
    """

    def __init__(self, settings: Settings, model: str, paths: list[Path], batch: int):
        from concurrent.futures import ThreadPoolExecutor

        from imageretrieval.device import keep_freed_memory

        keep_freed_memory()  # as the server does: the bare forward gets the same allocator settings
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare-forward")
        self.result = BareForward(batch)
        self._pool.submit(self._load, settings, model, paths, batch).result()

    def _load(self, settings: Settings, model: str, paths: list[Path], batch: int) -> None:

        from imageretrieval.engine import RetrievalEngine
        from imageretrieval.images import open_image

        self.engine = RetrievalEngine(settings, model)
        self.tensors = [self.engine.preprocess(open_image(p)) for p in paths]
        self.batch_tensor = np.stack([self.tensors[i % len(self.tensors)] for i in range(batch)])
        self.engine.encode_tensors(self.batch_tensor[:1])  # warm-up: kernel selection, allocations
        self.engine.encode_tensors(self.batch_tensor)

    def singles(self, n: int) -> None:
        """Time n batch-1 forwards, continuing through the query images where the last block stopped."""
        start = len(self.result.singles)
        inputs = [self.tensors[(start + i) % len(self.tensors)][None] for i in range(n)]
        self._pool.submit(self._time, inputs, self.result.singles).result()

    def batches(self, n: int) -> None:
        self._pool.submit(self._time, [self.batch_tensor] * n, self.result.batches).result()

    def _time(self, inputs: list, into: list[float]) -> None:
        for x in inputs:
            t0 = time.perf_counter()
            self.engine.encode_tensors(x)
            into.append(time.perf_counter() - t0)

    def close(self) -> None:
        self._pool.submit(lambda: setattr(self, "engine", None)).result()
        self._pool.shutdown()


# ----- server -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(settings: Settings, model: str, port: int, batch: int, log_path: Path,
                 extra_env: dict[str, str] | None = None, max_file_bytes: int | None = None) -> subprocess.Popen:
    """uvicorn serving `model` (comma-separated: several) from the settings' workdir, on loopback.

    `max_file_bytes`: the server may not grow any file beyond this (RLIMIT_FSIZE): a full disk, for
    real, without root or a mount.
    """
    env = {**os.environ, "WORKDIR": str(settings.workdir), "DATASET_ROOT": str(settings.dataset_root),
           "DEVICE": settings.device, "PRECISION": settings.precision, "MODELS": model,
           "DEFAULT_MODEL": model.split(",")[0], "BATCH_MAX": str(batch),
           "APP_DIST": str(Path(tempfile.gettempdir()) / "no-web-app"), **(extra_env or {})}
    cmd = [sys.executable, "-m", "uvicorn", "retrievalapi.main:app", "--host", "127.0.0.1", "--port", str(port),
           "--no-access-log", "--timeout-graceful-shutdown", "10"]

    def limit_files() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    log.info("starting %s (log: %s)", " ".join(cmd), log_path)
    with open(log_path, "wb") as fh:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                preexec_fn=limit_files if max_file_bytes else None)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            from imageretrieval.cli import CLIError

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
    stages: dict[str, list[float]] = field(default_factory=dict)  # ms per stage, from Server-Timing
    mean_batch: float = float("nan")  # images per forward pass on the server, from /api/metrics

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def throughput(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0


def multipart_request(host: str, port: int, name: str, data: bytes, top_k: int = 15) -> bytes:
    """A complete keep-alive `POST /api/search` request, encoded once up front.

    The load generator must cost next to nothing: on a 2-core machine its CPU time is the server's
    (httpx spent ~3-5 ms of Python per upload here, which a C load generator such as wrk would not).
    """
    boundary = f"bench{uuid.uuid4().hex}"
    body = b"".join([
        f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n{top_k}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode(),
        data, f"\r\n--{boundary}--\r\n".encode(),
    ])
    head = (f"POST /api/search HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection: send prepared bytes, read status, headers and body."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def parse_server_timing(value: str) -> dict[str, float]:
    """`decode;dur=3.1, forward;dur=25.0;desc="..."` -> {"decode": 3.1, "forward": 25.0}."""
    out = {}
    for part in value.split(","):
        name, *params = [p.strip() for p in part.split(";")]
        for param in params:
            if param.startswith("dur="):
                with contextlib.suppress(ValueError):
                    out[name] = float(param[4:])
    return out


async def run_level(host: str, port: int, requests: list[bytes], concurrency: int, n: int,
                    max_seconds: float, result: LevelResult | None = None, pause_s: float = 0.0) -> LevelResult:
    """`concurrency` clients in closed loop, `n` requests in all (or until `max_seconds`); warm-up not counted.

    Pass `result` to add to an earlier block of the same level (interleaved measurements). `pause_s`: each
    client waits that long before each request (not timed): searches at a shopper's pace, not back to back.
    """
    result = result if result is not None else LevelResult(concurrency)

    async def client(conn: Connection, tickets, into: LevelResult, stop_at: float) -> None:
        for i in tickets:
            if time.perf_counter() > stop_at:
                return
            if pause_s:  # a new connection after the pause, untimed (the server closes idle ones after 5 s)
                await asyncio.sleep(pause_s)
                await conn.close()
                await conn.connect()
            t0 = time.perf_counter()
            try:
                status, headers, body = await conn.request(requests[i % len(requests)])
                good = status == 200 and len(json.loads(body)["results"]) == 15
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, KeyError):
                await conn.close()
                status, good, headers = 0, False, {}
            into.latencies_ms.append((time.perf_counter() - t0) * 1000)
            into.sent += 1
            into.statuses[status] = into.statuses.get(status, 0) + 1
            into.ok += good
            into.errors += not good
            for stage, ms in parse_server_timing(headers.get("server-timing", "")).items():
                into.stages.setdefault(stage, []).append(ms)

    conns = [Connection(host, port) for _ in range(concurrency)]
    try:
        warm = LevelResult(concurrency)  # open the connections, fill caches
        await asyncio.gather(*(client(c, iter([i]), warm, float("inf")) for i, c in enumerate(conns)))
        tickets = iter(range(n))
        stop_at = time.perf_counter() + max_seconds
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, tickets, result, stop_at) for c in conns))
        result.wall_s += time.perf_counter() - t0
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return result


def model_index(base: str, model: str) -> tuple[int, str]:
    """(size, index type) of the served model's index, as the API reports it."""
    import httpx

    models = httpx.get(f"{base}/api/models", timeout=10).json()["models"]
    info = next(m for m in models if m["name"] == model)
    return int(info["index_size"]), str(info.get("index_type") or "?")


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
           load: tuple[float, float], rounds: int, index_type: str = "?", paced: LevelResult | None = None,
           pace_s: float = 1.0) -> str:
    import torch

    from imageretrieval.device import resolve_device
    from imageretrieval.inference import resolve_inference

    device = resolve_device(settings.device)
    runtime, precision = resolve_inference(settings.runtime, settings.precision, device)
    c1 = next((r for r in levels if r.concurrency == 1), None)
    top = max(levels, key=lambda r: r.concurrency)
    lines = [
        SECTION_TITLE, "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M UTC} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"device `{device}`, runtime `{runtime}`, precision `{precision}`.",
        f"Model `{model}`, `{index_type}` index of {index_size} products (catalog `{settings.dataset_root}`); "
        f"{n_queries} query images from `{source}` (uploaded as files, top_k 15, no filters), "
        f"server and load generator on the same machine (loopback). BATCH_MAX={batch}; "
        + (f"query encoder {'compiled (trace + freeze)' if settings.compile_inference else 'eager'}. "
           if runtime == "torch" else "the index's exported encoder. ") +
        f"Blocks of bare forwards and of API requests alternate ({rounds} rounds per level). "
        f"Load average (1 min) at start / end: {load[0]:.1f} / {load[1]:.1f} (other jobs share the CPUs "
        f"when it is well above 0).", "",
        "```bash", command, "```", "",
        "| what | concurrency | requests | errors | p50 ms | p95 ms | p99 ms | throughput (img/s) | images/forward |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| bare forward, batch 1 | 1 | {len(bare.singles)} | 0 | {bare.single_ms:.1f} | | "
        f"| {bare.single_ips:.1f} | 1 |",
        f"| bare forward, batch {bare.batch} | - | {len(bare.batches)} batches | 0 | {bare.batch_ms:.0f} (per batch) "
        f"| | | {bare.batch_ips:.1f} | {bare.batch} |",
    ]
    for r in levels:
        lines.append(f"| API `POST /api/search` | {r.concurrency} | {r.sent} | {r.errors} | {r.pct(50):.1f} | "
                     f"{r.pct(95):.1f} | {r.pct(99):.1f} | {r.throughput:.1f} | {r.mean_batch:.1f} |")
    if paced is not None:
        lines.append(f"| API `POST /api/search`, one every {pace_s:g} s (a shopper's pace) | 1 | {paced.sent} | "
                     f"{paced.errors} | {paced.pct(50):.1f} | {paced.pct(95):.1f} | {paced.pct(99):.1f} | | 1.0 |")
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
    if c1 is not None and c1.stages:
        stages = ", ".join(f"{name} {np.median(values):.1f}" for name, values in c1.stages.items() if name != "total")
        server = float(np.median(c1.stages["total"])) if "total" in c1.stages else float("nan")
        lines.append(f"- where a concurrency-1 request's time goes (medians of the server's `Server-Timing`, ms): "
                     f"{stages}; handler total {server:.1f}; the remaining {c1.pct(50) - server:.1f} ms of the "
                     f"p50 are HTTP, multipart parsing, JSON and the client")
    if paced is not None and paced.stages:
        stages = ", ".join(f"{name} {np.median(values):.1f}" for name, values in paced.stages.items())
        lines.append(f"- at a shopper's pace (the machine quiet for {pace_s:g} s before each search) the same search "
                     f"takes p50 {paced.pct(50):.1f} ms; server stages (medians, ms): {stages}. The caches and "
                     "cores cool between searches: back-to-back figures are the best case")
    every = levels + ([paced] if paced is not None else [])
    total_errors = sum(r.errors for r in every)
    lines.append(f"- errors: {total_errors} of {sum(r.sent for r in every)} requests"
                 + (f" (statuses: {[r.statuses for r in every]})" if total_errors else ""))
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, settings: Settings) -> int:
    model = args.model or settings.default_model
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    counts = [int(c) for c in args.requests.split(",") if c.strip()]
    if len(counts) == 1:
        counts *= len(levels)
    from imageretrieval.cli import CLIError

    if len(counts) != len(levels) or min(levels + counts) < 1:
        raise CLIError("--requests needs one positive number, or one per --concurrency level")
    if args.paced < 0 or args.pace_s < 0:
        raise CLIError("--paced and --pace-s cannot be negative (--paced 0 skips the paced searches)")
    load_start = os.getloadavg()[0]
    paths, source = query_images(settings, args.queries, args.num_queries)
    log.info("loading %s for the bare forward (batch 1 and %d) on %d query images", model, args.batch, len(paths))
    bare = BareModel(settings, model, paths, args.batch)
    rounds = max(1, args.rounds)
    top = max(levels)
    if 1 not in levels:
        bare.singles(8 * args.bare_repeats)
    port = args.port or free_port()
    host, base = "127.0.0.1", f"http://127.0.0.1:{port}"
    requests = [multipart_request(host, port, p.name, p.read_bytes()) for p in paths]
    log_path = Path(tempfile.gettempdir()) / f"bench-serve-{port}.log"
    proc = start_server(settings, model, port, args.batch, log_path)
    results: list[LevelResult] = []
    paced: LevelResult | None = None
    index_size, index_type = 0, "?"
    try:
        wait_ready(base, proc, args.startup_timeout, log_path)
        index_size, index_type = model_index(base, model)
        for concurrency, n in zip(levels, counts, strict=True):
            images_before, batches_before = batch_counters(base)
            r = LevelResult(concurrency)
            for i in range(rounds):  # bare and API blocks alternate: both see the same machine
                if concurrency == 1:
                    bare.singles(max(1, 8 * args.bare_repeats // rounds))
                if concurrency == top:
                    bare.batches(max(1, args.bare_repeats // rounds))
                block = n // rounds + (i < n % rounds)
                if block:
                    asyncio.run(run_level(host, port, requests, concurrency, block, args.max_seconds / rounds, r))
            images_after, batches_after = batch_counters(base)
            if batches_after > batches_before:  # includes the level's few warm-up requests
                r.mean_batch = (images_after - images_before) / (batches_after - batches_before)
            log.info("concurrency %d: %d requests, %d errors, p50 %.1f ms, p95 %.1f ms, p99 %.1f ms, %.1f img/s",
                     concurrency, r.sent, r.errors, r.pct(50), r.pct(95), r.pct(99), r.throughput)
            results.append(r)
        if args.paced:
            log.info("%d searches at a shopper's pace, one every %.1f s", args.paced, args.pace_s)
            paced = asyncio.run(run_level(host, port, requests, 1, args.paced, float("inf"), pause_s=args.pace_s))
    finally:
        stop_server(proc)
        bare.close()
    log.info("bare: batch 1 %.1f ms (%.1f img/s), batch %d %.0f ms (%.1f img/s)", bare.result.single_ms,
             bare.result.single_ips, args.batch, bare.result.batch_ms, bare.result.batch_ips)
    command = (f"WORKDIR={settings.workdir} DATASET_ROOT={settings.dataset_root} "
               f"DEEPFASHION_ROOT={settings.deepfashion_root} "
               f"python -m benchmarks {shlex.join(sys.argv[1:])}")
    load = (load_start, os.getloadavg()[0])
    section = render(model, settings, source, len(paths), bare.result, results, command, args.batch, index_size, load,
                     rounds, index_type, paced, args.pace_s)
    sys.stdout.write(section)
    if not args.no_write:
        write_section("serve", section, args.output)
        log.info("wrote the Serving section of %s", args.output)
    return 0 if all(r.errors == 0 for r in results) else 1
