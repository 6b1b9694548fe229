"""RetrievalEngine: model + post-processing + index loaded once; batched search with filters."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .artifacts import ModelArtifacts, chosen_vote
from .catalog import ATTRIBUTE_COLUMNS, load_catalog
from .images import open_image
from .index import exact_search, load_index
from .index import search as index_search
from .inference import create_encoder, device_type, load_exported, resolve_inference, runtime_installed
from .preprocess import Preprocess, preprocess_for
from .rerank import DEFAULT_POOL, category_first, check_rerank, encode_categories, rerank_by_category
from .settings import Settings
from .whitening import PostProcessor

log = logging.getLogger(__name__)

FILTER_FIELDS = tuple(ATTRIBUTE_COLUMNS)
MAX_LISTED_VALUES = 12  # valid values an unknown-filter message lists
RESULT_FIELDS = ("productDisplayName", "articleType", "baseColour", "gender", "masterCategory",
                 "subCategory", "season", "usage", "year")


def _known_model(settings: Settings, name: str) -> None:
    """Raise ModelNotFoundError for a name the zoo does not know (where PyTorch is installed to ask it)."""
    if runtime_installed("torch"):
        from .models import get_model_config

        get_model_config(name, settings.workdir)


class IndexNotBuiltError(RuntimeError):
    """The model has no (complete) index; the message gives the command that builds it."""


class UnknownFilterError(ValueError):
    pass


class UnknownProductError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class SearchHit:
    rank: int
    id: int
    score: float
    product: dict

    def to_dict(self) -> dict:
        return {"rank": self.rank, "id": self.id, "score": round(self.score, 6), **self.product}


def product_rows(metadata: pd.DataFrame) -> list[dict]:
    """The RESULT_FIELDS of every index row as plain dicts, built once: a pandas row lookup per hit
    costs ~0.2-0.7 ms, a sizeable share of a single search (15 hits) and of a batch's time."""
    columns = [[_clean(v) for v in metadata[name].tolist()] for name in RESULT_FIELDS]
    return [dict(zip(RESULT_FIELDS, row, strict=True)) for row in zip(*columns, strict=True)]


def _clean(value):
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, np.integer):
        return int(value)
    return value


class RetrievalEngine:
    """Search one model's index. Thread-safe for concurrent `search` calls (one forward at a time)."""

    def __init__(self, settings: Settings, model_name: str):
        self.settings = settings
        self.name = model_name
        art = ModelArtifacts.of(settings.workdir, model_name)
        rebuild = f"imageretrieval index --model {model_name}"
        if not art.exists():
            _known_model(settings, model_name)  # unknown names fail first
            raise IndexNotBuiltError(f"no index for model {model_name!r} in {art.root}: run `{rebuild}`")
        try:
            self.manifest = art.read_manifest()
            self.index = load_index(art.index)
            self.ids = np.load(art.ids)
            self.vectors = np.load(art.vectors, mmap_mode="r")
            self.postprocess = PostProcessor.load(art.postprocess)
        except Exception as exc:  # noqa: BLE001 - any corruption gets the same actionable message
            raise IndexNotBuiltError(
                f"index for model {model_name!r} in {art.root} is corrupt ({exc}): run `{rebuild} --force`"
            ) from exc
        if not (self.index.ntotal == len(self.ids) == len(self.vectors)):
            raise IndexNotBuiltError(f"index for {model_name!r} is inconsistent: run `{rebuild} --force`")
        res = self.manifest.get("catalog_resolution")
        query_resolution = tuple(res) if (res and settings.query_resolution == "catalog") else None
        self.runtime, self.precision = resolve_inference(settings.runtime, settings.precision,
                                                         device_type(settings.device))
        exported = self.manifest.get("encoder") and self.manifest.get("preprocess") and art.encoder.is_file()
        if self.runtime != "torch" and exported:  # the index's own model, exported: no PyTorch needed
            self.preprocess = Preprocess.from_dict(self.manifest["preprocess"], query_resolution)
            self.encoder = load_exported(art.encoder, self.runtime)
            self.info = {k: self.manifest.get(k) for k in ("description", "backbone", "kind")}
        elif self.runtime != "torch" and not runtime_installed("torch"):
            raise IndexNotBuiltError(f"the index of {model_name!r} in {art.root} holds no exported model "
                                     f"(encoder.onnx), and PyTorch is not installed to run it: run `{rebuild} "
                                     "--force` where PyTorch is installed")
        else:
            from .device import resolve_device
            from .models import create_model, get_model_config

            config = get_model_config(model_name, settings.workdir)
            self.preprocess = preprocess_for(config, query_resolution)
            device = resolve_device(settings.device)
            self.encoder = create_encoder(create_model(model_name, workdir=settings.workdir), self.preprocess.shape,
                                          self.runtime, device, self.precision, settings.workdir,
                                          compile=settings.compile_inference)
            self.info = {"description": config.description, "backbone": config.architecture, "kind": config.kind}
        catalog = load_catalog(settings.dataset_root)
        meta = catalog.df.set_index("id")
        self.metadata = meta.reindex(self.ids)
        self.row_of = {int(pid): row for row, pid in enumerate(self.ids)}
        self.product_rows = product_rows(self.metadata)
        self.category_codes, _ = encode_categories(self.metadata["articleType"].tolist())  # for rerank=category
        present = {f: self.metadata[f].dropna().astype(str) for f in FILTER_FIELDS}
        self.filter_values = {f: frozenset(column) for f, column in present.items()}
        self.filter_examples = {f: column.value_counts().index[:MAX_LISTED_VALUES].tolist()  # the most frequent
                                for f, column in present.items()}
        self.vote_k, self.vote_alpha = chosen_vote(settings.workdir, model_name)  # `finetune-rerank`
        # a flat index is searched exactly, as one matrix product per batch of queries (index.exact_search)
        flat = str(self.manifest.get("index_factory", "")).strip() == "Flat"
        self.flat_vectors = np.ascontiguousarray(self.vectors, dtype=np.float32) if flat else None
        self._lock = threading.Lock()

    # ----- encoding -------------------------------------------------------------------------
    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images -> post-processed query vectors (n, dims), one batched forward pass."""
        if not images:
            return np.zeros((0, self.dims), np.float32)
        return self.encode_tensors(np.stack([self.preprocess(img) for img in images]))

    def encode_tensors(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed uint8 (n, 3, H, W) -> query vectors; lets a server preprocess while a forward runs."""
        with self._lock:
            raw = self.encoder(batch)
        return self.postprocess(np.asarray(raw, dtype=np.float32))

    @property
    def dims(self) -> int:
        return int(self.vectors.shape[1])

    # ----- filters ----------------------------------------------------------------------------
    def check_filters(self, filters: Mapping[str, Sequence[str] | None] | None) -> dict[str, list[str]]:
        """Filters without empty values; an unknown field or value raises UnknownFilterError naming valid ones.

        Cheap (set lookups), so a service can refuse a bad request before any work.
        """
        clean: dict[str, list[str]] = {}
        for field, values in (filters or {}).items():
            if field not in FILTER_FIELDS:
                raise UnknownFilterError(f"unknown filter {field!r}; filters: {', '.join(FILTER_FIELDS)}")
            values = [v.strip() for v in values or [] if v and v.strip()]
            unknown = [v for v in values if v not in self.filter_values[field]]
            if unknown:
                raise UnknownFilterError(f"unknown value(s) {', '.join(map(repr, unknown))} for filter {field!r}; "
                                         f"e.g. {', '.join(self.filter_examples[field])}")
            if values:
                clean[field] = values
        return clean

    def filter_mask(self, filters: Mapping[str, Sequence[str]] | None) -> np.ndarray | None:
        """Boolean mask over index rows; values within a field are OR-ed, fields AND-ed."""
        filters = self.check_filters(filters)
        if not filters:
            return None
        mask = np.ones(len(self.ids), dtype=bool)
        for field, values in filters.items():
            mask &= self.metadata[field].astype(str).isin(values).to_numpy()
        return mask

    # ----- search -----------------------------------------------------------------------------
    def search_vectors(
        self,
        queries: np.ndarray,
        k: int,
        filters: Mapping[str, Sequence[str]] | None = None,
        exclude_ids: Sequence[int | None] | None = None,
        rerank: str | None = None,
    ) -> list[list[SearchHit]]:
        """Top-k hits per query vector; `rerank="category"` shows the voted articleType first."""
        rerank = check_rerank(rerank)
        mask = self.filter_mask(filters)
        extra = 1 if exclude_ids is not None else 0
        fetch = self.candidates_needed(k, rerank) + extra
        if self.flat_vectors is not None:  # an exact index: one matrix product for every query
            scores, rows = exact_search(self.flat_vectors, queries, fetch, mask)
        else:
            scores, rows = index_search(self.index, queries, fetch, allowed=mask)
        n_allowed = len(self.ids) if mask is None else int(mask.sum())
        out = []
        for qi in range(len(queries)):
            q_rows, q_scores = rows[qi], scores[qi]
            if int((q_rows >= 0).sum()) < min(fetch, n_allowed):  # approximate index ran short: exact fallback
                q_scores, q_rows = (a[0] for a in exact_search(self.vectors, queries[qi], fetch, mask))
            skip = None if exclude_ids is None else exclude_ids[qi]
            out.append(self.hits_from_candidates(q_rows, q_scores, k, rerank, skip))
        return out

    @staticmethod
    def candidates_needed(k: int, rerank: str = "none") -> int:
        """How many nearest neighbours a search fetches: k, or the re-ranking's pool."""
        return k if rerank == "none" else max(k, DEFAULT_POOL)

    def hits_from_candidates(self, rows: np.ndarray, scores: np.ndarray, k: int, rerank: str = "none",
                             skip_id: int | None = None) -> list[SearchHit]:
        """Ranked candidate rows (best first, -1 = none) -> the top-k hits, `skip_id` left out.

        With rerank="category", the candidates' articleTypes vote (`rerank.vote_category`) and that
        type comes first; a "more like this" query (`skip_id`) needs no vote: its own type is known.
        """
        rows, scores = np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float32)
        keep = rows >= 0
        if skip_id is not None:
            keep &= self.ids[np.maximum(rows, 0)] != skip_id
        rows, scores = rows[keep], scores[keep]
        if rerank == "category" and len(rows):
            own = self.row_of.get(int(skip_id)) if skip_id is not None else None
            if own is not None:
                predicted = np.array([self.category_codes[own]])
                order = category_first(np.arange(len(rows))[None], self.category_codes[rows], predicted, None)[0]
            else:
                order, _ = rerank_by_category(np.arange(len(rows))[None], scores[None], self.category_codes[rows],
                                              self.vote_k, self.vote_alpha, pool=None)
                order = order[0]
            rows, scores = rows[order], scores[order]
        return [SearchHit(rank, int(self.ids[row]), float(score), self.product_rows[row])
                for rank, (row, score) in enumerate(zip(rows[:k], scores[:k], strict=True), start=1)]

    def search(
        self,
        images: Sequence[Image.Image | str | Path | bytes],
        k: int = 15,
        filters: Mapping[str, Sequence[str]] | None = None,
        rerank: str | None = None,
    ) -> list[list[SearchHit]]:
        """Encode the images (paths/bytes are decoded) and return the top-k hits for each."""
        decoded = [img if isinstance(img, Image.Image) else open_image(img) for img in images]
        return self.search_vectors(self.encode(decoded), k, filters, rerank=rerank)

    def vector_of(self, product_id: int) -> np.ndarray:
        row = self.row_of.get(int(product_id))
        if row is None:
            raise UnknownProductError(f"product {product_id} is not in the {self.name} index")
        return np.asarray(self.vectors[row], dtype=np.float32)

    def search_by_id(self, product_id: int, k: int = 15, filters=None, rerank: str | None = None) -> list[SearchHit]:
        """'More like this': the stored vector of a catalog product, the product itself excluded."""
        q = self.vector_of(product_id)[None]
        return self.search_vectors(q, k, filters, exclude_ids=[int(product_id)], rerank=rerank)[0]

    def product(self, product_id: int, row: int | None = None) -> dict:
        row = self.row_of.get(int(product_id)) if row is None else row
        if row is None:
            raise UnknownProductError(f"unknown product id {product_id}")
        return dict(self.product_rows[row])

    def describe(self) -> dict:
        return {
            "name": self.name,
            "description": self.info["description"] or "",
            "backbone": self.info["backbone"] or "",
            "kind": self.info["kind"] or "trained",
            "dims": self.dims,
            "raw_dims": self.manifest.get("raw_dims"),
            "index_type": self.manifest.get("index_factory"),
            "index_size": int(self.index.ntotal),
            "input_size": self.preprocess.shape[1],
            "input_width": self.preprocess.shape[2],
            "runtime": self.encoder.runtime,
            "synthetic_catalog": bool(self.manifest.get("synthetic_catalog")),
        }

