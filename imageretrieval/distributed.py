"""Feature extraction on Ray Data: catalog rows -> `map_batches` over an actor pool of model replicas.

Each actor loads the model once and encodes with the same preprocessing and inference runtime as
local extraction (`extract.load_image`, `inference.create_encoder`); the driver receives the
features in row order and writes them into the same resumable chunks (`extract.extract_features`),
so an interrupted run resumes and the result equals a local run. On a cluster every node must see
the dataset and the workdir at the same paths (a shared filesystem).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .preprocess import Preprocess

log = logging.getLogger(__name__)

LOCAL = "local"
LOCAL_START_ATTEMPTS = 3


class RayUnavailableError(RuntimeError):
    pass


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to Ray: `local` starts one on this machine (`num_cpus`: all); `auto` or an address joins a cluster."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailableError("--ray needs Ray Data: pip install 'ray[data]'") from exc
    if ray.is_initialized():
        return
    # workers run this very interpreter and its packages: never an environment Ray would rebuild with `uv run`
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if address not in (None, "", LOCAL):
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        return
    # Ray waits a fixed 30 s for its raylet to register; on a loaded machine it can miss that once
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
            return
        except Exception as exc:  # Ray raises a bare Exception on a start-up time-out
            if "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
            _stop_local_ray_processes(Path(ray.__file__).parent)  # shutdown() does not know a half-started node
            if attempt == LOCAL_START_ATTEMPTS:
                raise RayUnavailableError(
                    f"a local Ray did not start ({attempt} attempts): {exc}\n{_ray_log_tail()}") from exc
            log.warning("a local Ray did not start (%s); starting it again", exc)


def _stop_local_ray_processes(ray_package: Path) -> None:
    """Kill this process' descendants that run Ray's own programs (GCS, raylet, its Python workers and
    agents all live under `ray_package`). Linux /proc; elsewhere nothing is done."""
    import signal

    proc = Path("/proc")
    parents: dict[int, int] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - mine
        mine |= frontier
    for pid in mine:
        try:
            if f"{ray_package}{os.sep}" in (proc / str(pid) / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _ray_log_tail(lines: int = 20) -> str:
    """The end of the last Ray session's raylet and GCS logs: why a start failed."""
    tmp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"  # Ray's own order on Linux
    logs = Path(tmp) / "ray" / "session_latest" / "logs"
    parts = []
    for name in ("raylet.err", "raylet.out", "gcs_server.err", "gcs_server.out"):
        path = logs / name
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path}\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no Ray logs under {logs})"


@dataclass(frozen=True)
class ActorSpec:
    """What every model replica needs to encode exactly as local extraction does."""

    model_name: str
    workdir: str
    preprocess: Preprocess
    runtime: str
    precision: str
    device: str
    threads: int


class EncoderActor:
    """One model replica: loaded once per actor, then called on batches of {"row", "path"}."""

    def __init__(self, spec: ActorSpec):
        from .device import resolve_device
        from .inference import create_encoder
        from .models import create_model

        self.spec = spec
        model = create_model(spec.model_name, workdir=Path(spec.workdir))
        self.encoder = create_encoder(model, spec.preprocess.shape, spec.runtime, resolve_device(spec.device),
                                      spec.precision, Path(spec.workdir), threads=spec.threads, spin=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .extract import load_image

        loaded = [load_image(Path(str(p)), self.spec.preprocess) for p in batch["path"]]
        images = np.stack([x for x, _ in loaded])
        ok = np.array([good for _, good in loaded], dtype=bool)
        features = np.array(self.encoder(images), dtype=np.float32, copy=True)
        features[~ok] = np.nan
        return {"row": np.asarray(batch["row"], np.int64), "features": features}


def ray_encoder(spec: ActorSpec, address: str | None = LOCAL, actors: int | None = None, batch_size: int = 32
                ) -> Callable[[Sequence[Path]], Iterator[np.ndarray]]:
    """A function from image paths to their feature batches in path order, computed on Ray actors.

    `actors` replicas (default: one per CPU of the cluster / `threads`), each with `spec.threads` CPUs.
    """

    def encode(paths: Sequence[Path]) -> Iterator[np.ndarray]:
        import ray

        init_ray(address, num_cpus=None)
        n_actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // max(1, spec.threads))
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the driver writes rows in order, chunk by chunk
        context.enable_progress_bars = False
        items = [{"row": i, "path": str(p)} for i, p in enumerate(paths)]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 64 * n_actors)))
        encoded = dataset.map_batches(EncoderActor, fn_constructor_kwargs={"spec": spec}, batch_size=batch_size,
                                      batch_format="numpy", concurrency=n_actors, num_cpus=spec.threads)
        expected = 0
        for batch in encoded.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            rows = batch["row"]
            if len(rows) and (rows[0] != expected or np.any(np.diff(rows) != 1)):
                raise RuntimeError("Ray returned rows out of order")  # preserve_order guarantees it
            expected += len(rows)
            yield batch["features"]
        if expected != len(paths):
            raise RuntimeError(f"Ray returned {expected} rows for {len(paths)} images")

    return encode
