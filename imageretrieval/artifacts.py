"""Per-model artifact folder `<WORKDIR>/indexes/<model>/` and the one-shot `build_model_index`.

Contents: manifest.json (model, dims, PCA, index type, catalog fingerprint, creation time),
index.faiss, ids.npy (row -> product id), vectors.npy (post-processed catalog vectors, used for
"more like this" and exact filtered fallbacks) and postprocess.npz.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .catalog import Catalog, load_catalog
from .io_utils import DamagedFileError, atomic_write, damaged, load_json, save_json, save_npy
from .preprocess import preprocess_for
from .settings import Settings
from .whitening import PostProcessor

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
# Measured (docs/results.md): PCA-whitening lowers P@15 of the pretrained ImageNet features on the
# catalog, so without a tuned value the index keeps L2-normalized raw features.
DEFAULT_PCA_COMPONENTS = 0


@dataclass(frozen=True)
class ModelArtifacts:
    root: Path

    @classmethod
    def of(cls, workdir: Path, model_name: str) -> ModelArtifacts:
        return cls(Path(workdir) / "indexes" / model_name)

    manifest = property(lambda self: self.root / "manifest.json")
    index = property(lambda self: self.root / "index.faiss")
    ids = property(lambda self: self.root / "ids.npy")
    vectors = property(lambda self: self.root / "vectors.npy")
    postprocess = property(lambda self: self.root / "postprocess.npz")
    encoder = property(lambda self: self.root / "encoder.onnx")  # the model, exported (serving without PyTorch)

    def current_files(self, manifest: dict) -> tuple:
        """(index, ids, vectors, row images or None): a compacted index's own folder (`index --compact`)."""
        snapshot = manifest.get("live_snapshot")
        if not snapshot:
            return self.index, self.ids, self.vectors, None
        folder = self.root / snapshot
        return folder / "index.faiss", folder / "ids.npy", folder / "vectors.npy", folder / "row_images.json"

    def exists(self) -> bool:
        return all(p.is_file() for p in (self.manifest, self.index, self.ids, self.vectors, self.postprocess))

    def read_manifest(self) -> dict | None:
        return load_json(self.manifest) if self.manifest.is_file() else None


def vector_key(manifest: dict) -> str:
    """Names the vector space of an index build (model, weights, fitted post-processing): live-catalog
    writes store their vectors under it, and a rebuilt index (a new PCA fit) gets a new key."""
    import hashlib
    import json

    parts = {k: manifest.get(k) for k in ("model", "model_fingerprint", "weights_fingerprint", "pca_components",
                                          "catalog_fingerprint", "created")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tuned_pca_path(workdir: Path, model_name: str) -> Path:
    """Where `finetune-pca` saves the chosen dimension for a model."""
    return Path(workdir) / "tuning" / model_name / "pca.json"


def chosen_pca_components(settings: Settings, model_name: str, dims: int) -> int | None:
    """Explicit setting > tuned value > default. 0 means no whitening (L2 only)."""
    if settings.pca_components is not None:
        n = settings.pca_components
    elif tuned_pca_path(settings.workdir, model_name).is_file():
        path = tuned_pca_path(settings.workdir, model_name)
        try:
            n = int(load_json(path)["n_components"])
        except (KeyError, TypeError) as exc:
            raise damaged(path, f"no whole n_components: {exc}") from None
    else:
        n = DEFAULT_PCA_COMPONENTS
    return None if n == 0 else min(n, dims)


def tuned_rerank_path(workdir: Path, model_name: str) -> Path:
    """Where `finetune-rerank` saves the chosen category vote for a model."""
    return Path(workdir) / "tuning" / model_name / "rerank.json"


def chosen_vote(workdir: Path, model_name: str) -> tuple[int, float]:
    """(vote k, alpha) of the category-first re-ranking: the tuned vote, else the library's default."""
    from .rerank import DEFAULT_VOTE_ALPHA, DEFAULT_VOTE_K

    path = tuned_rerank_path(workdir, model_name)
    if path.is_file():
        tuned = load_json(path)
        try:
            return int(tuned["vote_k"]), float(tuned["vote_alpha"])
        except (KeyError, TypeError, ValueError) as exc:
            raise damaged(path, f"no vote_k and vote_alpha: {exc}") from None
    return DEFAULT_VOTE_K, DEFAULT_VOTE_ALPHA


def catalog_resolution(catalog: Catalog, sample: int = 400, seed: int = 0) -> tuple[int, int]:
    """Median (width, height) of the catalog images: its effective resolution for queries."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ids = catalog.ids
    pick = rng.choice(ids, size=min(sample, len(ids)), replace=False)
    sizes = []
    for pid in pick:
        try:
            with Image.open(catalog.image_path(pid)) as im:
                sizes.append(im.size)
        except OSError:
            continue
    arr = np.array(sizes or [(224, 224)])
    return int(np.median(arr[:, 0])), int(np.median(arr[:, 1]))


def serving_export(settings: Settings, model_name: str, model=None, int8_digest: str | None = None) -> Path | None:
    """The ONNX file to serve beside the model's index: its export, or under PRECISION=int8 its accepted
    twin (a QuantizationError where there is none: the index must never serve another encoder than the
    one that encoded it; with `int8_digest`, the twin that encoded the catalog). None (with a warning)
    where the model cannot be exported. `model`: the model already loaded by the caller, if any."""
    from .featurestore import uses_int8
    from .inference import export_for
    from .models import create_model

    precision = "int8" if uses_int8(settings) else "fp32"
    try:
        model = model if model is not None else create_model(model_name, workdir=settings.workdir)
        return export_for(model, preprocess_for(model.config).shape, settings.workdir, precision, int8_digest)
    except Exception as exc:  # noqa: BLE001 - the index still serves through PyTorch
        if precision == "int8":
            raise
        log.warning("%s: no ONNX export beside the index (%s: %s); serving it needs PyTorch",
                    model_name, type(exc).__name__, exc)
        return None


def install_serving_encoder(settings: Settings, art: ModelArtifacts, path: Path | None) -> dict | None:
    """Copy the export beside the index (`encoder.onnx`), so that the API can serve the index with ONNX
    Runtime or OpenVINO alone; the manifest's `encoder` entry."""
    import shutil

    from .featurestore import uses_int8

    if path is None:
        art.encoder.unlink(missing_ok=True)
        return None
    atomic_write(art.encoder, lambda p: shutil.copyfile(path, p))
    int8 = uses_int8(settings)
    entry = {"file": art.encoder.name, "export": path.name, "precision": "int8" if int8 else "fp32"}
    if int8:  # the engine checks the copy against it
        from .quantize import file_digest

        entry["digest"] = file_digest(art.encoder)
    return entry


def export_text_search(settings: Settings, model_name: str) -> None:
    """Where the model has a text projection, its sentence encoder's ONNX export in the workdir (once), so
    that an install without PyTorch (the API image) can search by words over this index."""
    from .text.onnx_export import exported
    from .text.projection import TextProjection, projection_path

    path = projection_path(model_name, settings.workdir)
    if path is None:
        return
    name = TextProjection.load(path).encoder
    if exported(settings.workdir, name) is not None:
        return
    try:
        from .text.encoders import SentenceTransformerEncoder, create_text_encoder
        from .text.onnx_export import export_text_encoder

        encoder = create_text_encoder(name)
        if isinstance(encoder, SentenceTransformerEncoder):
            export_text_encoder(encoder, settings.workdir)
    except Exception as exc:  # noqa: BLE001 - searching by images never depends on it
        log.warning("%s: the text encoder %s was not exported (%s: %s); search by words there needs PyTorch",
                    model_name, name, type(exc).__name__, exc)


def _serving_fields(config) -> dict:
    """What a serving install reads from the manifest instead of the model's config."""
    return {"preprocess": preprocess_for(config).to_dict(), "description": config.description,
            "backbone": config.architecture, "kind": config.kind}


def build_model_index(settings: Settings, model_name: str, force: bool = False, progress: bool = True) -> dict:
    """Extract catalog features, fit post-processing, build the FAISS index. No-op when current."""
    import shutil

    from .featurestore import get_features, head_only_base, int8_digest, uses_int8
    from .index import build_index, resolve_factory, save_index  # faiss: not needed to train on a GPU box
    from .models import create_model, get_model_config
    from .models.composite import is_composite_base
    from .models.registry import weights_fingerprint

    workdir = settings.workdir
    config = get_model_config(model_name, workdir)
    catalog = load_catalog(settings.dataset_root)
    n_components = chosen_pca_components(settings, model_name, config.dims)
    wanted = {
        "version": MANIFEST_VERSION,
        "model": model_name,
        "model_fingerprint": config.fingerprint(),
        "weights_fingerprint": weights_fingerprint(config, workdir),
        "catalog_root": str(Path(settings.dataset_root).resolve()),
        "catalog_fingerprint": catalog.fingerprint(),
        "pca_components": n_components,
        "index_factory": resolve_factory(settings.index_factory, len(catalog.ids), n_components or config.dims),
    }
    digest = int8_digest(settings, model_name) if uses_int8(settings) else None  # the twin this build is keyed by
    if digest:  # absent for fp32, so that indexes built before int8 existed stay current
        wanted["encoder_precision"] = f"int8:{digest}"
    art = ModelArtifacts.of(workdir, model_name)
    try:
        current = art.read_manifest()
    except DamagedFileError:
        current = None  # rebuilt
    same = all(current.get(k) == v for k, v in wanted.items()) if current is not None else False
    if not force and same and art.exists() and current.get("encoder_precision") == wanted.get("encoder_precision"):
        log.info("index for %s is up to date (%s)", model_name, art.root)
        if not (current.get("encoder") and art.encoder.is_file()):  # built before indexes held their model
            current = {**current, **_serving_fields(config), "encoder": install_serving_encoder(
                settings, art, serving_export(settings, model_name, int8_digest=digest))}
            save_json(art.manifest, current)
        export_text_search(settings, model_name)
        return current

    t0 = time.perf_counter()
    reuses = not uses_int8(settings) and (  # members' cached features
        head_only_base(settings, config) is not None or is_composite_base(config))
    model = None if reuses else create_model(model_name, workdir=workdir)  # also exported below: loaded once
    fs, _ = get_features(settings, model_name, "fashion", progress=progress, model=model)
    t_extract = time.perf_counter() - t0
    export = serving_export(settings, model_name, model, digest)  # before the old index is touched: it may refuse
    valid = fs.valid
    raw, ids = fs.features[valid], fs.ids[valid]
    t1 = time.perf_counter()
    post = PostProcessor.fit(raw, n_components) if n_components else PostProcessor()
    vectors = post(raw)
    index = build_index(vectors, wanted["index_factory"], seed=settings.seed)
    t_index = time.perf_counter() - t1
    art.manifest.unlink(missing_ok=True)  # the folder is incomplete until the new manifest lands
    for snapshot in art.root.glob("live-*"):  # indexes compacted from the previous build
        shutil.rmtree(snapshot, ignore_errors=True)
    save_index(index, art.index)
    save_npy(art.ids, ids.astype(np.int64))
    save_npy(art.vectors, vectors.astype(np.float32))
    post.save(art.postprocess)
    encoder = install_serving_encoder(settings, art, export)
    export_text_search(settings, model_name)
    manifest = {
        **wanted,
        "dims": int(vectors.shape[1]),
        "raw_dims": int(raw.shape[1]),
        "size": int(len(ids)),
        "skipped_images": int((~valid).sum()),
        "input_size": config.input_size,
        **_serving_fields(config),
        "encoder": encoder,
        "catalog_resolution": list(catalog_resolution(catalog)),
        "synthetic_catalog": (Path(settings.dataset_root) / "SYNTHETIC").exists(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": {"extract": round(t_extract, 2), "fit_and_index": round(t_index, 2)},
    }
    save_json(art.manifest, manifest)  # written last: its presence means the folder is complete
    log.info("built %s index for %s: %d vectors x %d dims in %s", wanted["index_factory"], model_name,
             len(ids), vectors.shape[1], art.root)
    return manifest
