"""Batched, resumable feature extraction.

Features are written in chunks (`chunk_00012.npy`), each atomically, then merged into
`features.npy` + `ids.npy`. An interrupted run resumes at the first missing chunk; a finished
run is a no-op. Images that fail to decode get a row of NaNs and are listed in `failed.json`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .device import resolve_device
from .images import ImageDecodeError, open_image
from .inference import Encoder, create_encoder, resolve_inference
from .io_utils import DamagedFileError, load_json, save_json, save_npy
from .models import FeatureExtractor
from .preprocess import Preprocess, preprocess_for

log = logging.getLogger(__name__)

CHUNK_SIZE = 2048


def load_image(path: Path, preprocess: Preprocess) -> tuple[np.ndarray, bool]:
    """One image -> (uint8 model input, ok). A bad file never crashes extraction: it gets a blank input."""
    out = np.empty(preprocess.shape, dtype=np.uint8)
    return out, load_image_into(path, preprocess, out)


def load_image_into(path: Path, preprocess: Preprocess, out: np.ndarray) -> bool:
    """Write one image's model input into `out` (a batch row); False (and a blank input) if unreadable."""
    try:
        preprocess.write_into(open_image(path, min_size=query_decode_size(preprocess)), out)
        return True
    except ImageDecodeError as exc:
        log.warning("skipping unreadable image: %s", exc)
        out.fill(0)
        return False


def query_decode_size(preprocess: Preprocess) -> int | None:
    """JPEG draft decoding for queries brought to the catalog's resolution, exactly as the engine decodes an
    upload; None (a full decode) for everything else: the catalog itself, queries re-rendered at a scale."""
    if preprocess.query_resolution is None or preprocess.query_scale is not None:
        return None
    return preprocess.decode_size


def image_batches(paths: Sequence[Path], preprocess: Preprocess, batch_size: int = 32, threads: int = 1,
                  prefetch: int = 4) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(uint8 batch (B, 3, H, W), ok mask (B,)) for `paths` in order, decoded ahead by `threads` threads.

    Threads, not processes: Pillow and the inference runtimes release the GIL, so decoding overlaps
    the forward without copying batches between processes. `threads=0` decodes in the caller.
    Each image is written straight into its row of the batch.
    """
    chunks = [list(paths[i:i + batch_size]) for i in range(0, len(paths), batch_size)]

    def load(chunk: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        images = np.empty((len(chunk), *preprocess.shape), dtype=np.uint8)
        ok = [load_image_into(Path(p), preprocess, row) for p, row in zip(chunk, images, strict=True)]
        return images, np.array(ok, dtype=bool)

    if threads <= 0:
        yield from map(load, chunks)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        pending = deque(pool.submit(load, c) for c in chunks[:prefetch])
        for nxt in chunks[prefetch:]:
            yield pending.popleft().result()
            pending.append(pool.submit(load, nxt))
        while pending:
            yield pending.popleft().result()


def ids_hash(ids: np.ndarray) -> str:
    """Stable across processes (Python's hash() is salted per process, so it cannot be used)."""
    h = hashlib.sha256()
    for v in ids:
        h.update(str(v).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass
class FeatureSet:
    features: np.ndarray  # (n, d) float32; NaN rows for images that failed
    ids: np.ndarray  # (n,) int64 or str labels

    @property
    def valid(self) -> np.ndarray:
        return ~np.isnan(self.features).any(axis=1)


def feature_dir(workdir: Path, model_name: str, dataset: str) -> Path:
    return Path(workdir) / "features" / model_name / dataset


def load_features(directory: Path, mmap: bool = False) -> FeatureSet | None:
    """The cached features of a folder; None when absent or unreadable (cut short: extracted again)."""
    f, i = directory / "features.npy", directory / "ids.npy"
    if f.is_file() and i.is_file():
        try:
            features, ids = np.load(f, mmap_mode="r" if mmap else None), np.load(i, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            log.warning("ignoring unreadable cached features in %s (%s): they are extracted again", directory, exc)
            return None
        if len(features) == len(ids):
            return FeatureSet(features, ids)
        log.warning("ignoring cached features in %s: %d rows for %d ids", directory, len(features), len(ids))
    return None


# What makes two feature sets equal; other meta keys (added over time) never invalidate features.
# How a row is encoded:
ENCODING_KEYS = ("fingerprint", "precision", "input_size", "input_width", "query_resolution", "query_scale",
                 "query_decode")
IDENTITY_KEYS = ENCODING_KEYS + ("n", "ids_hash")  # ... and which rows


def _same(old: dict, new: dict, keys: tuple[str, ...]) -> bool:
    return all(old.get(k) == new.get(k) for k in keys)


def _same_features(old: dict, new: dict) -> bool:
    return _same(old, new, IDENTITY_KEYS)


def _reusable_rows(reuse_root: Path, out_dir: Path, meta: dict, ids: np.ndarray) -> dict[int, np.ndarray]:
    """Rows of `ids` found in finished sibling feature sets computed exactly the same way."""
    wanted = {str(v): i for i, v in enumerate(ids)}
    found: dict[int, np.ndarray] = {}
    for directory in sorted(Path(reuse_root).iterdir()) if Path(reuse_root).is_dir() else []:
        if "-q" in directory.name:  # query-resolution variants are encoded differently
            continue
        if directory.resolve() == Path(out_dir).resolve() or not (directory / "meta.json").is_file():
            continue
        try:
            other = load_json(directory / "meta.json")
        except DamagedFileError:
            continue
        if not _same(other, meta, ENCODING_KEYS):
            continue
        fs = load_features(directory, mmap=True)
        if fs is None:
            continue
        for j, v in enumerate(fs.ids):
            i = wanted.get(str(v))
            if i is not None and i not in found and not np.isnan(fs.features[j]).any():
                found[i] = fs.features[j]
    return found


def encode_batches(encoder: Encoder, batches: Iterable[tuple[np.ndarray, np.ndarray]], progress=None):
    """Yield float32 features per batch (NaN rows for images that failed to decode)."""
    for images, ok in batches:
        feats = np.array(encoder(images), dtype=np.float32, copy=True)
        feats[~ok] = np.nan
        if progress is not None:
            progress.update(len(images))
        yield feats


def encode_paths(encoder: Encoder, paths: Sequence[Path | str], preprocess: Preprocess,
                 batch_size: int = 32) -> np.ndarray:
    """Features of `paths` in order, in memory (NaN rows for images that failed to decode)."""
    batches = encode_batches(encoder, image_batches(list(paths), preprocess, batch_size))
    return np.concatenate(list(batches)) if paths else np.zeros((0, 0), np.float32)


def _counted(batches: Iterable[np.ndarray], progress) -> Iterator[np.ndarray]:
    for feats in batches:
        progress.update(len(feats))
        yield feats


class _RowStream:
    """Rows of a stream of (batch, dims) arrays, handed out `n` at a time across batch boundaries."""

    def __init__(self, batches):
        self.batches = iter(batches)
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    def take(self, n: int) -> np.ndarray:
        while self.n_pending < n:
            batch = next(self.batches)
            self.pending.append(batch)
            self.n_pending += len(batch)
        rows = np.concatenate(self.pending, axis=0)
        self.pending, self.n_pending = [rows[n:]], len(rows) - n
        return rows[:n]


def extract_features(
    model: FeatureExtractor,
    paths: Sequence[Path],
    ids: np.ndarray,
    out_dir: Path,
    preprocess: Preprocess | None = None,
    batch_size: int = 32,
    num_workers: int = 1,
    device: str = "auto",
    precision: str = "auto",
    chunk_size: int = CHUNK_SIZE,
    fingerprint: str = "",
    progress: bool = True,
    reuse_root: Path | None = None,
    runtime: str = "torch",
    workdir: Path | None = None,
    encode: Callable[[Sequence[Path]], Iterator[np.ndarray]] | None = None,
    int8_digest: str | None = None,
) -> FeatureSet:
    """Extract features for `paths` into `out_dir`, resuming from finished chunks.

    With `reuse_root` (the model's feature folder), rows already encoded in a sibling feature set
    with the same model fingerprint, input size, precision and query resolution are copied, not
    re-encoded (e.g. the whole catalog after its test split was extracted for evaluation).
    `runtime` (inference.py) runs the forward passes; ONNX exports are cached under `workdir`.
    `encode` (paths -> feature batches in path order) replaces the local encoder, e.g. Ray actors
    (distributed.py); the chunks, resuming and the result stay the same. `int8_digest`: PRECISION=int8
    only, the twin `fingerprint` was keyed by (another twin is refused).
    """
    out_dir = Path(out_dir)
    ids = np.asarray(ids)
    dev = resolve_device(device)
    runtime, prec = resolve_inference(runtime, precision, dev)
    preprocess = preprocess or preprocess_for(model.config)
    meta = {
        "model": model.config.name,
        "fingerprint": fingerprint,
        "n": int(len(ids)),
        "ids_hash": ids_hash(ids),
        "chunk_size": chunk_size,
        "precision": prec,
        "input_size": preprocess.input_size,
        "input_width": preprocess.input_width,
        "query_resolution": list(preprocess.query_resolution) if preprocess.query_resolution else None,
    }
    if preprocess.query_scale is not None:
        meta["query_scale"] = preprocess.query_scale
    if (decode := query_decode_size(preprocess)) is not None:
        meta["query_decode"] = decode
    meta_path = out_dir / "meta.json"
    try:
        old = load_json(meta_path) if meta_path.is_file() else None
    except DamagedFileError:
        old = {}  # unknown settings: nothing of it is reused (chunks of an interrupted run included)
    done = load_features(out_dir)
    if done is not None and old is not None and _same_features(old, meta):
        log.info("features up to date in %s", out_dir)
        if old != meta:
            save_json(meta_path, meta)
        return done
    chunk_dir = out_dir / "chunks"
    if old is not None and not (_same_features(old, meta) and old.get("chunk_size") == chunk_size):
        log.info("model, data or settings changed: recomputing features in %s", out_dir)
        for stale in list(chunk_dir.glob("chunk_*.npy")) + [out_dir / "features.npy", out_dir / "ids.npy"]:
            stale.unlink(missing_ok=True)
    save_json(meta_path, meta)
    chunk_dir.mkdir(parents=True, exist_ok=True)

    n_chunks = max(1, -(-len(ids) // chunk_size))
    todo = [c for c in range(n_chunks) if not (chunk_dir / f"chunk_{c:05d}.npy").is_file()]
    n_todo = sum(min(chunk_size, len(ids) - c * chunk_size) for c in todo)
    if len(todo) < n_chunks:
        log.info("resuming: %d of %d chunks already done", n_chunks - len(todo), n_chunks)
    t0 = time.perf_counter()
    bar = tqdm(total=n_todo, desc=f"extract {model.config.name}", unit="img", disable=not progress)
    plan = []  # (chunk, its features with the reused rows filled in, the rows to encode)
    for c in todo:
        lo, hi = c * chunk_size, min(len(ids), (c + 1) * chunk_size)
        feats = np.full((hi - lo, model.config.dims), np.nan, np.float32)
        known = _reusable_rows(reuse_root, out_dir, meta, ids[lo:hi]) if reuse_root else {}
        for i, row in known.items():
            feats[i] = row
        bar.update(len(known))
        plan.append((c, feats, [i for i in range(hi - lo) if i not in known]))
    n_copied = n_todo - sum(len(missing) for _, _, missing in plan)
    encoder = (create_encoder(model, preprocess.shape, runtime, dev, prec, workdir, spin=False, int8_digest=int8_digest)
               if n_copied < n_todo and encode is None else None)
    # One stream over every image still to encode, decoded ahead while the encoder runs.
    to_encode = [paths[c * chunk_size + i] for c, _, missing in plan for i in missing]
    if not to_encode:
        stream = iter(())
    elif encode is not None:
        stream = _counted(encode(to_encode), bar)
    else:
        stream = encode_batches(encoder, image_batches(to_encode, preprocess, batch_size, num_workers), bar)
    rows = _RowStream(stream)
    for c, feats, missing in plan:
        if missing:
            feats[missing] = rows.take(len(missing))
        save_npy(chunk_dir / f"chunk_{c:05d}.npy", feats.astype(np.float32))
    bar.close()
    elapsed = time.perf_counter() - t0
    if n_todo > n_copied:
        n_new = n_todo - n_copied
        log.info("encoded %d images in %.1fs (%.1f img/s, %s, %s, %s)%s", n_new, elapsed, n_new / elapsed, dev, prec,
                 encoder.runtime if encoder else ("ray" if encode is not None else "-"),
                 f"; {n_copied} rows copied from other feature sets" if n_copied else "")

    features = np.concatenate([np.load(chunk_dir / f"chunk_{c:05d}.npy") for c in range(n_chunks)], axis=0)
    save_npy(out_dir / "ids.npy", ids)
    save_npy(out_dir / "features.npy", features)
    failed = [str(i) for i, bad in zip(ids, np.isnan(features).any(axis=1), strict=True) if bad]
    save_json(out_dir / "failed.json", failed)
    if failed:
        log.warning("%d images could not be decoded (listed in %s)", len(failed), out_dir / "failed.json")
    for c in range(n_chunks):
        (chunk_dir / f"chunk_{c:05d}.npy").unlink(missing_ok=True)
    return FeatureSet(features, ids)
