"""`python -m benchmarks live`: the live catalog measured through a real server (uvicorn, loopback).

Figures: add throughput against the bare forward, search latency while adding at full speed against
idle, the time from a write's acknowledgement to its product being found, the start-up time with
10,000 journaled writes, and kill -9 trials (the server killed at a random point of a stream of
adds, restarted, then every acknowledged product checked: present and found first by its photo).

Runs on a scratch workdir that links the real one's models and indexes (the real catalog and keys
are never written). New products are DeepFashion photos (never part of the catalog) when present,
else drawn synthetic products.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imageretrieval.settings import Settings

from .report import machine_line, write_section
from .serve import BareModel, free_port, query_images, start_server, stop_server, wait_ready

log = logging.getLogger(__name__)

FIRST_NEW_ID = 10_000_000  # far above the catalog's ids; product FIRST_NEW_ID + i gets the pool's photo i
CRASH_FIRST_ID = FIRST_NEW_ID + 10_000  # the kill -9 trials' products: photos no speed run added
REPLAY_FIRST_ID = 30_000_000
PRIVATE = ("catalog", "keys.json")  # what a scratch workdir gets of its own


def register(sub) -> None:
    p = sub.add_parser("live", help="live catalog: add throughput, search under writes, replay, kill -9 trials")
    p.add_argument("--model", default=None, help="model to serve (default: DEFAULT_MODEL)")
    p.add_argument("--adds", type=int, default=1024, help="products added at full speed (batch route)")
    p.add_argument("--batch", type=int, default=32, help="products per batch request")
    p.add_argument("--idle-searches", type=int, default=60)
    p.add_argument("--cli-adds", type=int, default=1024, help="products bulk-loaded by `catalog add` (0: skip)")
    p.add_argument("--visible", type=int, default=20, help="single adds timed from acknowledgement to found")
    p.add_argument("--replay", type=int, default=10_000, help="journaled writes for the start-up replay (0: skip)")
    p.add_argument("--trials", type=int, default=20, help="kill -9 trials (0: skip)")
    p.add_argument("--skip-perf", action="store_true", help="only the kill -9 trials")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--no-write", action="store_true", help="print the section only")
    p.set_defaults(func=run)


# ----- products and workdirs --------------------------------------------------------------------
@dataclass
class NewProduct:
    id: int
    fields: dict[str, str]
    image: bytes


def photo_pool(settings: Settings, seed: int = 0) -> list[Path]:
    """Every DeepFashion photo, in a seeded order: each phase takes its own slice, so no photo is added twice."""
    root = Path(settings.deepfashion_root) / "img"
    if not root.is_dir():
        return []
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    random.Random(seed).shuffle(files)
    return files


def new_products(settings: Settings, n: int, first_id: int, seed: int = 0, offset: int | None = None
                 ) -> list[NewProduct]:
    """`n` products the catalog has never seen, with distinct photos: the pool's photos from `offset`
    (default: the id's distance from FIRST_NEW_ID), else drawn synthetic products."""
    pool = photo_pool(settings, seed)
    offset = (first_id - FIRST_NEW_ID) % max(1, len(pool)) if offset is None else offset
    out = []
    for i in range(n):
        if offset + i < len(pool):
            path = pool[offset + i]
            data = path.read_bytes()
            kind = path.parts[-3]
        else:
            from imageretrieval.synthetic import CLASSES, COLOURS, drawing_for, render_product

            kind = list(CLASSES)[i % len(CLASSES)]
            buf = io.BytesIO()
            render_product(drawing_for(first_id + i, kind, list(COLOURS)[(i // 8) % len(COLOURS)]),
                           120, 160).save(buf, format="PNG")
            data = buf.getvalue()
        fields = {"productDisplayName": f"New {kind} {first_id + i}", "articleType": "Tshirts",
                  "masterCategory": "Apparel", "gender": "Women", "baseColour": "Blue"}
        out.append(NewProduct(first_id + i, fields, data))
    return out


def scratch_workdir(source: Path, dest: Path) -> Path:
    """`dest` linking every entry of the workdir `source` except the live catalog and the keys."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in Path(source).iterdir():
        if entry.name not in PRIVATE and not (dest / entry.name).exists():
            (dest / entry.name).symlink_to(entry.resolve())
    return dest


class Client:
    """A keyed httpx client for one server."""

    def __init__(self, base: str, key: str):
        import httpx

        self.http = httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {key}"})

    def add(self, p: NewProduct):
        return self.http.post("/api/products", data={"id": str(p.id), **p.fields},
                              files={"image": (f"{p.id}.jpg", p.image, "application/octet-stream")})

    def add_batch(self, products: list[NewProduct]):
        rows = "id," + ",".join(products[0].fields) + "\n" + "".join(
            f"{p.id}," + ",".join(p.fields.values()) + "\n" for p in products)
        files = [("styles", ("rows.csv", rows.encode(), "text/csv"))]
        files += [("images", (f"{p.id}.jpg", p.image, "application/octet-stream")) for p in products]
        return self.http.post("/api/products/batch", files=files)

    def search(self, image: bytes, k: int = 5) -> tuple[float, list[int]]:
        t0 = time.perf_counter()
        r = self.http.post("/api/search", data={"top_k": str(k)}, files={"image": ("q.jpg", image, "image/jpeg")})
        ms = (time.perf_counter() - t0) * 1000
        r.raise_for_status()
        return ms, [h["id"] for h in r.json()["results"]]

    def present(self, pid: int) -> bool:
        return self.http.get(f"/api/products/{pid}").status_code == 200

    def close(self) -> None:
        self.http.close()


class Server:
    """One uvicorn process on a free port, with its log beside the workdir."""

    def __init__(self, settings: Settings, models: str, timeout: float, tag: str = "live",
                 extra_env: dict[str, str] | None = None, **start_kw):
        extra_env = {"WRITE_BURST": "1000000", **(extra_env or {})}  # measure the service, not the rate limit
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.gettempdir()) / f"bench-{tag}-{self.port}.log"
        started = time.perf_counter()
        self.proc = start_server(settings, models, self.port, 32, self.log_path, extra_env, **start_kw)
        wait_ready(self.base, self.proc, timeout, self.log_path)
        self.startup_s = time.perf_counter() - started

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no shutdown code runs
        self.proc.wait()

    def stop(self) -> None:
        stop_server(self.proc)


def write_key(workdir: Path) -> str:
    from imageretrieval.keys import KeyStore

    return KeyStore(workdir).create(f"bench-{time.time_ns()}", "write")[1]


# ----- kill -9 trials ---------------------------------------------------------------------------
@dataclass
class CrashReport:
    trials: int = 0
    acknowledged: int = 0
    lost: list[int] = field(default_factory=list)  # acknowledged, absent after the restart
    phantom: list[int] = field(default_factory=list)  # never sent or refused, yet present
    unsearchable: list[int] = field(default_factory=list)  # present, not found first by its own photo
    refused: list[int] = field(default_factory=list)  # answered, but not 201: the trial did not test what it should
    in_flight_kept: int = 0  # the write cut by the kill, found durable (journaled before the kill)
    interrupted: int = 0  # trials whose kill landed before the stream's last add was answered
    kill_after_s: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.acknowledged > 0 and not (self.lost or self.phantom or self.unsearchable or self.refused)


def _stream_adds(client: Client, products: list[NewProduct], sent: list[int], acked: list[int],
                 refused: list[int]) -> None:
    """Add one product after the other, recording each sent, acknowledged or refused (until the server dies)."""
    for p in products:
        sent.append(p.id)
        try:
            r = client.add(p)
        except Exception:  # noqa: BLE001 - the connection dies with the server
            return
        (acked if r.status_code == 201 else refused).append(p.id)


def crash_trials(settings: Settings, models: str, trials: int, seed: int = 0, per_trial: int = 120,
                 kill_window_s: tuple[float, float] = (0.3, 3.0), timeout: float = 300.0,
                 first_id: int = CRASH_FIRST_ID) -> CrashReport:
    """Kill the server (SIGKILL) at a random time during a stream of single adds; restart; check."""
    rng = random.Random(seed)
    key = write_key(settings.workdir)
    report = CrashReport()
    products = new_products(settings, per_trial * trials, first_id, seed)  # every photo distinct
    for trial in range(trials):
        batch = products[trial * per_trial: (trial + 1) * per_trial]
        server = Server(settings, models, timeout, tag="crash")
        client = Client(server.base, key)
        acked: list[int] = []
        sent: list[int] = []

        writer = threading.Thread(target=_stream_adds, args=(client, batch, sent, acked, report.refused))
        writer.start()
        delay = rng.uniform(*kill_window_s)
        time.sleep(delay)
        server.kill()
        writer.join()
        client.close()
        report.kill_after_s.append(delay)
        server = Server(settings, models, timeout, tag="crash")
        client = Client(server.base, key)
        try:
            in_flight = set(sent) - set(acked)
            present = {p.id for p in batch if client.present(p.id)}
            report.lost += sorted(set(acked) - present)
            report.phantom += sorted(present - set(acked) - in_flight)
            report.in_flight_kept += len(present & in_flight)
            by_id = {p.id: p for p in batch}
            for pid in sorted(present):
                if client.search(by_id[pid].image, k=1)[1] != [pid]:
                    report.unsearchable.append(pid)
        finally:
            client.close()
            server.stop()
        report.trials += 1
        report.acknowledged += len(acked)
        report.interrupted += len(acked) < len(batch)
        log.info("trial %d: killed after %.2f s, %d acknowledged, %d present, lost %d", trial + 1, delay, len(acked),
                 len(present), len(set(acked) - present))
    return report


# ----- performance ------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def measure_perf(args, settings: Settings, model: str, bare: BareModel, queries: list[bytes]) -> dict:
    """Adds alone (throughput, beside the bare forward), then adds beside a searching client (latency)."""
    key = write_key(settings.workdir)
    server = Server(settings, model, args.startup_timeout)
    client, writer = Client(server.base, key), Client(server.base, key)
    out: dict = {"startup_empty_s": server.startup_s}
    products = iter(new_products(settings, 2 * args.adds + args.visible, FIRST_NEW_ID, args.seed))
    rounds = 4

    def bulk(n: int) -> float:
        batch = [next(products) for _ in range(n)]
        t0 = time.perf_counter()
        for start in range(0, n, args.batch):
            writer.add_batch(batch[start: start + args.batch]).raise_for_status()
        return time.perf_counter() - t0

    try:
        for q in queries[:3]:
            client.search(q)
        add_s = 0.0
        for _ in range(rounds):  # bare forwards and adds alternate: both see the same machine
            bare.batches(8)
            add_s += bulk(args.adds // rounds)
        bare.batches(8)
        out.update(add_s=add_s, adds=rounds * (args.adds // rounds), bare_batch_s=float(np.median(bare.result.batches)))
        idle: list[float] = []
        during: list[float] = []
        busy_add_s = 0.0
        for r in range(rounds):  # idle searches and searches during adds alternate
            idle += [client.search(queries[(r * 97 + i) % len(queries)])[0]
                     for i in range(args.idle_searches // rounds)]
            done = threading.Event()

            def searcher(done: threading.Event = done) -> None:
                i = 0
                while not done.is_set():
                    during.append(client.search(queries[i % len(queries)])[0])
                    i += 1

            thread = threading.Thread(target=searcher)
            thread.start()
            busy_add_s += bulk(args.adds // rounds)
            done.set()
            thread.join()
        out.update(idle=idle, during=during, busy_add_s=busy_add_s)
        visible_ms, first_hit, singles = [], 0, []
        for _ in range(args.visible):
            p = next(products)
            singles.append(p)
            writer.add(p).raise_for_status()
            acked = time.perf_counter()
            _, ids = client.search(p.image, k=1)
            visible_ms.append((time.perf_counter() - acked) * 1000)
            first_hit += ids == [p.id]
        gone = 0
        for p in singles:  # deleted: never found again, by its photo or by id
            writer.http.delete(f"/api/products/{p.id}").raise_for_status()
            _, ids = client.search(p.image, k=15)
            by_id = client.http.post("/api/search/by-id", json={"product_id": p.id}).status_code
            gone += p.id not in ids and by_id == 404 and not client.present(p.id)
        out.update(visible_ms=visible_ms, visible_first=first_hit, visible_n=args.visible, deleted_gone=gone)
    finally:
        client.close()
        writer.close()
        server.stop()
    return out


def journal_writes(settings: Settings, model: str, n: int) -> float:
    """Journal `n` single-product adds directly (vectors included, as the API writes them); seconds taken."""
    from imageretrieval.artifacts import ModelArtifacts, vector_key
    from imageretrieval.live.blobs import normalized_jpeg
    from imageretrieval.live.store import LiveCatalog, Write

    catalog = LiveCatalog(settings.dataset_root, settings.workdir)
    manifest = ModelArtifacts.of(settings.workdir, model).read_manifest()
    key, dims = vector_key(manifest), int(manifest["dims"])
    sample = new_products(settings, 1, REPLAY_FIRST_ID, offset=0)[0]
    sha = catalog.blobs.put(normalized_jpeg(sample.image))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(n):
        v = rng.normal(size=dims).astype(np.float32)
        catalog.commit([Write("add", REPLAY_FIRST_ID + i, sample.fields, sha)],
                       {key: {sha: v / np.linalg.norm(v)}})
    return time.perf_counter() - t0


def measure_cli_load(settings: Settings, model: str, n: int, first_id: int, bare: BareModel, seed: int = 0) -> dict:
    """`imageretrieval catalog add` of `n` new products (a styles CSV + an images folder) in a subprocess, the
    server stopped, between two blocks of bare forwards (its own comparison). The load's rate is what the
    CLI logs (process start and model load excluded); the wall time includes them."""
    import csv
    import re
    import shutil
    import subprocess

    folder = Path(tempfile.mkdtemp(prefix="bench-cli-load-"))
    try:
        products = new_products(settings, n, first_id, seed)
        columns = ["id", *products[0].fields]
        with open(folder / "rows.csv", "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(columns)
            for p in products:
                (folder / f"{p.id}.jpg").write_bytes(p.image)
                writer.writerow([p.id, *(p.fields[c] for c in columns[1:])])
        first_bare = len(bare.result.batches)
        bare.batches(8)
        env = {**os.environ, "WORKDIR": str(settings.workdir), "DATASET_ROOT": str(settings.dataset_root),
               "DEVICE": settings.device, "PRECISION": settings.precision}
        command = [sys.executable, "-m", "imageretrieval", "catalog", "add", "--styles", str(folder / "rows.csv"),
                   "--images", str(folder), "--model", model]
        t0 = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        bare.batches(8)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    found = re.search(r"(\d+) products written in ([\d.]+) s", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"catalog add failed ({done.returncode}): {done.stderr[-2000:]}")
    return {"n": int(found.group(1)), "load_s": float(found.group(2)), "wall_s": wall,
            "bare_batch_s": float(np.median(bare.result.batches[first_bare:]))}


# ----- report -----------------------------------------------------------------------------------
def render(model: str, command: str, perf: dict | None, crash: CrashReport | None, bare_batch: int,
           chunk: int) -> str:
    lines = ["## Live catalog: writes while serving", "", f"Machine: {machine_line()}.", "",
             f"Command: `{command}`", ""]
    if perf:
        idle_p50, busy_p50 = pct(perf["idle"], 50), pct(perf["during"], 50)
        add_ips = perf["adds"] / perf["add_s"]
        bare_ips = bare_batch / perf["bare_batch_s"]
        lines += [
            f"Model `{model}`. Adds: {perf['adds']} new products (DeepFashion photos) through `POST "
            f"/api/products/batch` (batches of {perf.get('batch', 32)}), encoded in chunks of {chunk} on the "
            "inference thread as background work; throughput measured alone, in blocks alternating with the "
            "bare forward; then the same number of adds beside one client searching sequentially, in blocks "
            "alternating with idle searches.", "",
            "| Figure | Value | Goal |", "|---|---|---|",
            f"| Add throughput | {add_ips:.1f} products/s ({add_ips / bare_ips:.2f}x the bare forward's "
            f"{bare_ips:.1f} img/s at batch {bare_batch}) | >= 0.9x bare forward |",
            f"| Search p50 / p99 idle | {idle_p50:.1f} / {pct(perf['idle'], 99):.1f} ms | |",
            f"| Search p50 / p99 during the bulk add | {busy_p50:.1f} / {pct(perf['during'], 99):.1f} ms "
            f"({busy_p50 / idle_p50:.2f}x idle p50; {len(perf['during'])} searches) | <= 1.5x idle |",
            f"| Add throughput beside the searching client | {perf['adds'] / perf['busy_add_s']:.1f} products/s "
            "(writes step aside for searches) | |",
            f"| Acknowledgement to found | first search after the answer found it in {perf['visible_first']}/"
            f"{perf['visible_n']} writes; that search took p50 {pct(perf['visible_ms'], 50):.1f}, max "
            f"{max(perf['visible_ms']):.1f} ms | <= 1 s |",
            f"| Deleted, then searched | {perf['deleted_gone']}/{perf['visible_n']} never returned again (not in "
            "the top 15 of their own photo; by id and /api/products 404) | |",
            f"| Start-up, empty journal | {perf['startup_empty_s']:.1f} s (process start to /api/ready) | |",
        ]
        if perf.get("cli"):
            cli = perf["cli"]
            cli_ips, cli_bare = cli["n"] / cli["load_s"], bare_batch / cli["bare_batch_s"]
            lines.append(f"| Bulk load through the CLI (`imageretrieval catalog add`, {cli['n']} products, server "
                         f"stopped; forwards of 32) | {cli_ips:.1f} products/s in the load ({cli_ips / cli_bare:.2f}x "
                         f"the bare forward's {cli_bare:.1f} img/s at batch {bare_batch}, measured just before and "
                         f"after); {cli['wall_s']:.1f} s from the command to its answer | |")
        if perf.get("replay_n"):
            lines.append(f"| Start-up with {perf['replay_n']:,} journaled writes | {perf['startup_replay_s']:.1f} s "
                         f"(+{perf['startup_replay_s'] - perf['startup_empty_s']:.1f} s; journaling them took "
                         f"{perf['journal_s']:.1f} s) | |")
    if crash:
        lines += ["", f"kill -9 trials: {crash.trials} (server SIGKILLed {min(crash.kill_after_s):.1f}-"
                      f"{max(crash.kill_after_s):.1f} s into a stream of single adds, mid-stream in "
                      f"{crash.interrupted}; restarted, checked): "
                      f"{crash.acknowledged} acknowledged writes, **{len(crash.lost)} lost**, "
                      f"{len(crash.phantom)} unacknowledged present beyond the write in flight, "
                      f"{len(crash.unsearchable)} present but not found first by their own photo, "
                      f"{len(crash.refused)} refused; the write in "
                      f"flight at the kill was durable in {crash.in_flight_kept} of {crash.trials} trials."]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, settings: Settings) -> int:
    from imageretrieval.cli import CLIError

    model = args.model or settings.default_model
    if not args.skip_perf and 2 * args.adds + args.visible + args.cli_adds > CRASH_FIRST_ID - FIRST_NEW_ID:
        raise CLIError(f"--adds, --visible and --cli-adds take 2 x {args.adds} + {args.visible} + {args.cli_adds} new "
                       f"products, more than the {CRASH_FIRST_ID - FIRST_NEW_ID} ids before the kill -9 trials' own")
    scratch = scratch_workdir(settings.workdir, Path(tempfile.mkdtemp(prefix="bench-live-")))
    run_settings = settings.model_copy(update={"workdir": scratch})
    log.info("scratch workdir %s (links %s)", scratch, settings.workdir)
    perf = crash = None
    bare_batch = args.batch
    if not args.skip_perf:
        paths, _ = query_images(settings, None, 32, seed=args.seed)
        queries = [p.read_bytes() for p in paths]
        from retrievalapi.writes import ENCODE_CHUNK

        bare = BareModel(run_settings, model, paths, ENCODE_CHUNK)
        bare_batch = ENCODE_CHUNK
        try:
            perf = measure_perf(args, run_settings, model, bare, queries)
            if args.cli_adds:  # photos after the ones measure_perf added
                perf["cli"] = measure_cli_load(run_settings, model, args.cli_adds,
                                               FIRST_NEW_ID + 2 * args.adds + args.visible, bare, args.seed)
        finally:
            bare.close()
        perf["batch"] = args.batch
        if args.replay:
            perf["journal_s"] = journal_writes(run_settings, model, args.replay)
            perf["replay_n"] = args.replay
            server = Server(run_settings, model, args.startup_timeout)
            perf["startup_replay_s"] = server.startup_s
            server.stop()
    if args.trials:
        crash = crash_trials(run_settings, model, args.trials, args.seed, timeout=args.startup_timeout)
    command = f"python -m benchmarks {shlex.join(sys.argv[1:])}"
    section = render(model, command, perf, crash, bare_batch, bare_batch)
    print(section)
    if not args.no_write:
        write_section("live", section)
    if crash is not None and not crash.ok:
        raise CLIError(f"kill -9 trials failed: {crash.acknowledged} acknowledged, lost {crash.lost}, phantom "
                       f"{crash.phantom}, unsearchable {crash.unsearchable}, refused {crash.refused}")
    return 0
