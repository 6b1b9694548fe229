"""What the routes serve: the loaded engines, the catalog (products, images, facets) and evaluation results."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from imageretrieval.artifacts import ModelArtifacts
from imageretrieval.catalog import ATTRIBUTE_COLUMNS, CatalogError, load_catalog
from imageretrieval.engine import RESULT_FIELDS, IndexNotBuiltError, RetrievalEngine
from imageretrieval.images import ImageDecodeError, open_image
from imageretrieval.inference import RuntimeUnavailableError
from imageretrieval.models import ModelNotFoundError, WeightsUnavailableError

from .settings import ApiSettings

log = logging.getLogger(__name__)

FACET_FIELDS = tuple(ATTRIBUTE_COLUMNS)


class StartupError(RuntimeError):
    """The service cannot start; the message names the model and the command that fixes it."""


def built_models(workdir: Path) -> list[str]:
    """Models with a complete index folder in the workdir (manifest written last = complete)."""
    root = Path(workdir) / "indexes"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and ModelArtifacts(p).manifest.is_file())


def load_engines(settings: ApiSettings, executor: Executor | None = None) -> dict[str, RetrievalEngine]:
    """Load every requested model once; any failure is one StartupError with the fix in it.

    `executor`: build the engines on the thread that will run their forwards. Every thread that
    starts torch's parallel work (RUNTIME=torch) gets its own OpenMP worker team, and with more OpenMP threads than
    cores the runtime stops spin-waiting between parallel regions: a forward then pays a wake-up per
    layer (~35 instead of ~25 ms for a lite0 query on 2 cores, measured).
    """
    names = settings.model_list or built_models(settings.workdir)
    if not names:
        raise StartupError(
            f"no model index found in {Path(settings.workdir) / 'indexes'}: build one with "
            f"`imageretrieval index --model {settings.default_model}` (WORKDIR={settings.workdir}) or set MODELS"
        )
    engines: dict[str, RetrievalEngine] = {}
    for name in names:
        started = time.perf_counter()
        try:
            engines[name] = (executor.submit(RetrievalEngine, settings, name).result() if executor is not None
                             else RetrievalEngine(settings, name))
        except (IndexNotBuiltError, ModelNotFoundError, WeightsUnavailableError, CatalogError,
                RuntimeUnavailableError) as exc:
            raise StartupError(f"cannot load model {name!r}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - anything else at load time is still a broken artifact
            raise StartupError(
                f"cannot load model {name!r} from {ModelArtifacts.of(settings.workdir, name).root} ({exc}): "
                f"rebuild it with `imageretrieval index --model {name} --force`"
            ) from exc
        log.info("loaded model %s: %d vectors x %d dims in %.1f s", name, engines[name].index.ntotal,
                 engines[name].dims, time.perf_counter() - started)
    return engines


def choose_default(settings: ApiSettings, names: list[str]) -> str:
    """DEFAULT_MODEL when loaded; when it was not set explicitly, the first loaded model instead."""
    if settings.default_model in names:
        return settings.default_model
    if "default_model" in settings.model_fields_set:
        raise StartupError(f"DEFAULT_MODEL={settings.default_model!r} is not among the loaded models "
                           f"({', '.join(names)}): build it with `imageretrieval index --model "
                           f"{settings.default_model}` or change DEFAULT_MODEL")
    log.info("default model %s has no index here; using %s", settings.default_model, names[0])
    return names[0]


def facet_counts(metadata: pd.DataFrame) -> dict[str, list[dict]]:
    """Filter values with their product counts, most common first (ties by value), empty values left out."""
    out: dict[str, list[dict]] = {}
    for field in FACET_FIELDS:
        column = metadata[field].dropna().astype(str)
        counts = column[column != ""].value_counts()
        items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        out[field] = [{"value": value, "count": int(count)} for value, count in items]
    return out


@dataclass
class CatalogStore:
    """Product metadata and image files by id, for /api/products and /api/images."""

    images_dir: Path
    products: pd.DataFrame  # indexed by id

    @classmethod
    def load(cls, dataset_root: Path) -> CatalogStore:
        catalog = load_catalog(dataset_root)
        return cls(catalog.images_dir, catalog.df.set_index("id"))

    def product(self, product_id: int) -> dict | None:
        if product_id not in self.products.index:
            return None
        rec = self.products.loc[product_id]
        out = {"id": int(product_id)}
        for f in RESULT_FIELDS:
            value = rec.get(f)
            out[f] = None if value is None or pd.isna(value) else (int(value) if f == "year" else value)
        return out

    def image_path(self, product_id: int) -> Path | None:
        if product_id not in self.products.index:
            return None
        path = self.images_dir / f"{int(product_id)}.jpg"
        return path if path.is_file() else None


def read_evaluation(workdir: Path, model: str) -> dict | None:
    """`<WORKDIR>/results/<model>/summary.json` when the evaluation has run; null otherwise."""
    path = Path(workdir) / "results" / model / "summary.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable evaluation summary %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def decode_for(engine: RetrievalEngine, data: bytes, max_pixels: int) -> np.ndarray:
    """Upload bytes -> the model's uint8 input array (worker thread). Raises ImageDecodeError."""
    # Twice the model input is plenty: the engine downsamples further (letterbox, catalog resolution).
    # JPEGs are decoded at a reduced scale in the DCT (draft mode) down to that size.
    image = open_image(data, max_pixels=max_pixels, min_size=2 * max(engine.preprocess.shape[1:]))
    try:
        return engine.preprocess(image)
    finally:
        image.close()


def decode_error_message(exc: ImageDecodeError) -> str:
    """Pillow's own bomb guard fires before ours on huge headers; say plainly what happened."""
    cause = exc.__cause__
    if isinstance(cause, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"image dimensions are too large to decode safely: {cause}"
    message = str(exc)
    return "uploaded file: " + message.removeprefix("upload: ") if message.startswith("upload: ") else message
