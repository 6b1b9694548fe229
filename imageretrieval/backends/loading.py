"""Open a model's index on a shared backend, and load an already built index into it (no re-encoding)."""

from __future__ import annotations

import logging

import numpy as np

from ..artifacts import ModelArtifacts, vector_key
from ..catalog import ATTRIBUTE_COLUMNS
from ..io_utils import load_json
from ..settings import Settings
from .base import CollectionNotLoadedError, Row

log = logging.getLogger(__name__)


def _source_stamp(manifest: dict) -> dict:
    """What a loaded collection was loaded from: the index build and its compacted snapshot."""
    return {"vector_key": vector_key(manifest), "live_snapshot": manifest.get("live_snapshot")}


def open_backend(settings: Settings, model_name: str, manifest: dict):
    """The Milvus collection of this index build; CollectionNotLoadedError naming the loading command."""
    from .milvus_backend import MilvusBackend, collection_name, connect

    name = collection_name(model_name, vector_key(manifest))
    client = connect(settings.milvus_location, settings.milvus_token)
    try:
        return MilvusBackend(client, name, ATTRIBUTE_COLUMNS)
    except CollectionNotLoadedError:
        client.close()
        raise CollectionNotLoadedError(
            f"Milvus at {settings.milvus_location} holds no collection for model {model_name!r} (its index build "
            f"{name}): run `imageretrieval index --model {model_name} --backend milvus`") from None


def load_into_milvus(settings: Settings, model_name: str, force: bool = False, progress: bool = True,
                     catalog=None) -> dict:
    """Copy a built index's rows (vectors, product fields, image names) into a new Milvus collection.

    A no-op when the collection was loaded from this very build, unless `force`. The live catalog's
    changes since the build are applied afterwards by the engine (`RetrievalEngine.sync_backend`).
    """
    from tqdm import tqdm

    from ..engine import FILTER_FIELDS, IndexNotBuiltError, row_fields
    from ..live.store import LiveCatalog
    from .milvus_backend import MilvusBackend, collection_name, connect, parse_index_spec, stored_meta

    art = ModelArtifacts.of(settings.workdir, model_name)
    manifest = art.read_manifest() if art.exists() else None
    if manifest is None:
        raise IndexNotBuiltError(f"no index for model {model_name!r} in {art.root}: run "
                                 f"`imageretrieval index --model {model_name}` first")
    name = collection_name(model_name, vector_key(manifest))
    stamp = _source_stamp(manifest)
    client = connect(settings.milvus_location, settings.milvus_token)
    try:
        if not force and client.has_collection(name):
            described = stored_meta(client, name)
            if described.get("source") == stamp:
                log.info("%s: Milvus collection %s is loaded from this index build", model_name, name)
                return {"collection": name, "loaded": 0, "index": described.get("index")}
        _, ids_path, vectors_path, images_path = art.current_files(manifest)
        ids = np.load(ids_path)
        vectors = np.load(vectors_path, mmap_mode="r")
        images = load_json(images_path) if images_path else [None] * len(ids)
        catalog = catalog or LiveCatalog(settings.dataset_root, settings.workdir)
        spec = parse_index_spec(settings.milvus_index, len(ids), int(vectors.shape[1]))
        rows = []
        for row, (pid, image) in enumerate(zip(ids.tolist(), images, strict=True)):
            original = catalog.current_base(int(pid))
            fields = original.fields if original is not None else {}
            rows.append(Row(int(pid), np.asarray(vectors[row], np.float32), row_fields(pid, fields, image), image))
        bar = tqdm(total=len(rows), unit="row", desc=f"milvus {model_name}", disable=not progress)
        MilvusBackend.create(client, name, rows, int(vectors.shape[1]), FILTER_FIELDS, spec, progress=bar,
                             source=stamp)
        bar.close()
    finally:
        client.close()
    return {"collection": name, "loaded": len(rows), "index": spec.index_type}
