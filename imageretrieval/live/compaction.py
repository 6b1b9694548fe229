"""`imageretrieval index --compact`: fold the live catalog's changes into a model's saved index.

A service starts from the saved index and applies the changes made since it was saved: after many
writes, compaction makes that start (and the exact search over new rows) cheap again. The new
index goes to a new folder `live-<seq>/` beside the built one; the manifest, replaced atomically
last, points to it, so a crash at any point leaves the old or the new index, never a mix. PCA and
the other post-processing stay as fitted on the original catalog (a refit is `index --force`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from datetime import UTC, datetime

import numpy as np

from ..artifacts import ModelArtifacts
from ..io_utils import fsync_dir, save_json, save_npy
from ..settings import Settings
from .store import LiveCatalog

log = logging.getLogger(__name__)

SNAPSHOT_PREFIX = "live-"


def compact_index(settings: Settings, model_name: str, catalog: LiveCatalog | None = None) -> dict:
    """Rebuild `model_name`'s saved index over the live catalog; returns the new manifest."""
    from ..engine import RetrievalEngine
    from ..index import build_index, save_index

    started = time.perf_counter()
    catalog = catalog or LiveCatalog(settings.dataset_root, settings.workdir)
    catalog.compact()
    engine = RetrievalEngine(settings.model_copy(update={"index_backend": "faiss"}), model_name, catalog)
    art = ModelArtifacts.of(settings.workdir, model_name)
    manifest = dict(engine.manifest)
    with catalog.lock:  # the rows and the images they were encoded from, at one catalog seq
        state = engine.live.state
        seq = catalog.seq
        keep = np.flatnonzero(state.alive)
        ids = state.ids[: state.n][keep].astype(np.int64)
        images = [catalog.current(int(pid)).image for pid in ids]
    vectors = np.ascontiguousarray(state.all_vectors()[keep], dtype=np.float32)
    factory = str(manifest.get("index_factory", "Flat"))
    if manifest.get("live_snapshot") and manifest.get("catalog_seq") == seq:
        log.info("%s: the saved index already holds the live catalog at seq %d", model_name, seq)
        return manifest
    folder = art.root / f"{SNAPSHOT_PREFIX}{seq}-{time.time_ns()}"  # never the folder the manifest names
    folder.mkdir(parents=True)
    save_index(build_index(vectors, factory, seed=settings.seed), folder / "index.faiss")
    save_npy(folder / "ids.npy", ids)
    save_npy(folder / "vectors.npy", vectors)
    save_json(folder / "row_images.json", images)
    previous = manifest.get("live_snapshot")
    manifest.update(live_snapshot=folder.name, catalog_seq=seq, size=len(ids),
                    compacted=datetime.now(UTC).isoformat(timespec="seconds"))
    for path in folder.iterdir():  # every file on disk before the manifest names the folder
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(folder)
    fsync_dir(art.root)
    save_json(art.manifest, manifest, durable=True)
    for old in art.root.glob(f"{SNAPSHOT_PREFIX}*"):
        if old.is_dir() and old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    log.info("%s: index compacted at catalog seq %d (%d products, was %s) in %.1f s", model_name, seq, len(ids),
             previous or "the built index", time.perf_counter() - started)
    return manifest
