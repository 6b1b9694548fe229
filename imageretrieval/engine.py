"""RetrievalEngine: model + post-processing + index loaded once; batched search with filters."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .artifacts import ModelArtifacts, chosen_vote, vector_key
from .backends import Candidates, Row, VectorBackend
from .catalog import ATTRIBUTE_COLUMNS
from .gender import GENDERS, NO_GENDER, GenderPredictorError, gender_matches, load_gender_predictor
from .images import open_image
from .index import load_index
from .inference import (
    Encoder,
    RuntimeUnavailableError,
    create_encoder,
    device_type,
    load_exported,
    resolve_inference,
    runtime_installed,
)
from .io_utils import load_json
from .live.liveindex import IndexState, LiveIndex
from .live.store import LiveCatalog, Op
from .preprocess import Preprocess, preprocess_for
from .rerank import (
    DEFAULT_POOL,
    NO_CATEGORY,
    RERANKS,
    category_matches,
    check_rerank,
    matches_first,
    reranks_category,
    reranks_gender,
    vote_on_rankings,
)
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


class RerankUnavailableError(ValueError):
    """A re-ranking the model cannot do (no gender predictor); the message gives the command that makes it."""


class UnknownProductError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class Hits(list):
    """One query's hits, best first, with the articleType and the gender that re-ranking put first (None: none)."""

    type_first: str | None = None
    gender_first: str | None = None


@dataclass
class SearchHit:
    rank: int
    id: int
    score: float
    product: dict

    def to_dict(self) -> dict:
        return {"rank": self.rank, "id": self.id, "score": round(self.score, 6), **self.product}


def result_fields(fields: Mapping) -> dict:
    """A product's RESULT_FIELDS as a search hit shows them (built once per row, not per hit)."""
    return {name: fields.get(name) for name in RESULT_FIELDS}


def image_version(image: str | None) -> str:
    """Names a stored image: its content hash's start, or "0" for the original catalog file."""
    return image[:16] if image else "0"


def image_url(product_id: int, image: str | None) -> str:
    """The API's URL of a product's image: `v` names its content, so a new image gets a new URL and a
    URL's content never changes."""
    return f"/api/images/{int(product_id)}?v={image_version(image)}"


def url_version(url: str) -> str | None:
    """The `v` of an `image_url`."""
    _, _, version = url.partition("?v=")
    return version or None


def row_fields(product_id: int, fields: Mapping, image: str | None) -> dict:
    """What an index row shows in a hit: the result fields and the image URL, from one catalog state, so
    a search never pairs a product's old fields (and vector) with its new image."""
    return {**result_fields(fields), "image_url": image_url(product_id, image)}


class RetrievalEngine:
    """Search one model's index. Thread-safe for concurrent `search` calls (one forward at a time)."""

    def __init__(self, settings: Settings, model_name: str, catalog: LiveCatalog | None = None):
        self.settings = settings
        self.name = model_name
        art = ModelArtifacts.of(settings.workdir, model_name)
        rebuild = f"imageretrieval index --model {model_name}"
        if not art.exists():
            _known_model(settings, model_name)  # unknown names fail first
            raise IndexNotBuiltError(f"no index for model {model_name!r} in {art.root}: run `{rebuild}`")
        self.backend_name = settings.index_backend
        try:
            self.manifest = art.read_manifest()
            self.postprocess = PostProcessor.load(art.postprocess)
            if self.backend_name == "faiss":
                index_path, ids_path, vectors_path, images_path = art.current_files(self.manifest)
                self.index = load_index(index_path)
                self.index_ids = np.load(ids_path)
                self.vectors_file = np.load(vectors_path, mmap_mode="r")
                self.row_images = load_json(images_path) if images_path else [None] * len(self.index_ids)
        except Exception as exc:  # noqa: BLE001 - any corruption gets the same actionable message
            raise IndexNotBuiltError(
                f"index for model {model_name!r} in {art.root} is corrupt ({exc}): run `{rebuild} --force`"
            ) from exc
        if self.backend_name == "faiss" and not (
                self.index.ntotal == len(self.index_ids) == len(self.vectors_file) == len(self.row_images)):
            raise IndexNotBuiltError(f"index for {model_name!r} is inconsistent: run `{rebuild} --force`")
        res = self.manifest.get("catalog_resolution")
        query_resolution = tuple(res) if (res and settings.query_resolution == "catalog") else None
        exported = self.manifest.get("encoder") and self.manifest.get("preprocess") and art.encoder.is_file()
        self.runtime, self.precision = self._query_inference(settings, model_name, art.encoder if exported else None,
                                                             rebuild)
        if self.runtime != "torch" and exported:  # the index's own model, exported: no PyTorch needed
            self.preprocess = Preprocess.from_dict(self.manifest["preprocess"], query_resolution)
            try:
                self.encoder = load_exported(art.encoder, self.runtime)
            except RuntimeUnavailableError:
                raise
            except Exception as exc:  # noqa: BLE001 - the runtimes' own errors for a file they cannot read
                raise IndexNotBuiltError(f"{art.encoder} cannot be loaded ({str(exc).splitlines()[0][:200]}): "
                                         f"run `{rebuild} --force`") from exc
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
        self.vote_k, self.vote_alpha = chosen_vote(settings.workdir, model_name)  # `finetune-rerank`
        try:  # `finetune-rerank --gender`; a damaged one costs only rerank=gender, which then says so
            self.gender_predictor = load_gender_predictor(model_name, settings.workdir)
        except GenderPredictorError as exc:
            log.warning("%s", exc)
            self.gender_predictor = None
        self._gender_predictor_current: bool | None = None  # checked against the index on first use
        self._lock = threading.Lock()
        self._background_encoder: Encoder | None = None
        self._background_lock = threading.Lock()
        self._text = None
        self._text_lock = threading.Lock()
        self.vector_key = vector_key(self.manifest)
        self.catalog = catalog if catalog is not None else LiveCatalog(settings.dataset_root, settings.workdir)
        self.backend: VectorBackend
        if self.backend_name == "faiss":
            self._load_rows(str(self.manifest.get("index_factory", "Flat")))
        else:
            from .backends import CollectionNotLoadedError
            from .backends.loading import open_backend

            try:
                self.backend = open_backend(settings, model_name, self.manifest)
            except CollectionNotLoadedError as exc:
                raise IndexNotBuiltError(str(exc)) from None
            with self.catalog.synced():  # no other writer between reading the catalog and applying it
                self.sync_backend(list(self.catalog.changed_ids()))
            self._counted_journal = self.catalog.journal.identity()
            self.backend.known_values(FILTER_FIELDS[0])  # the facet count, now rather than at the first filter

    def _load_rows(self, factory: str) -> None:
        """The built index's rows, with the live catalog's changes since it was built applied."""
        from .backends.faiss_backend import FaissBackend

        flat = factory.strip() == "Flat"
        base_vectors = np.ascontiguousarray(self.vectors_file, np.float32) if flat else self.vectors_file
        with self.catalog.lock:
            products, removes, indexed = [], [], {}
            for pid, image in zip(self.index_ids.tolist(), self.row_images, strict=True):
                current = self.catalog.current(pid)
                if current is None or current.image != image:  # deleted, or a new image: a new row below
                    removes.append(pid)
                else:
                    indexed[pid] = image
                products.append(row_fields(pid, current.fields if current is not None else {}, image))
            live = LiveIndex(None if flat else self.index, base_vectors, self.index_ids, products,
                             FILTER_FIELDS, factory, seed=self.settings.seed)
            self.backend = FaissBackend(live, {pid: image for pid, image in indexed.items() if image})
            ops = [Op(pid, product, None) for pid, product in self.catalog.changed_ids().items()
                   if product is not None and pid not in indexed]
        self.backend.apply(removes, [])
        if ops:
            self.apply_ops(ops, cached=self.catalog.cached_vectors(self.vector_key))
            log.info("%s: %d products of the live catalog applied to the index", self.name, len(ops))

    @property
    def live(self) -> LiveIndex:
        """The in-process index (INDEX_BACKEND=faiss): text search and compaction read its rows."""
        live = getattr(self.backend, "live", None)
        if live is None:
            raise AttributeError(f"the {self.backend_name} backend keeps no rows in this process")
        return live

    @property
    def shared(self) -> bool:
        """Whether other processes read and write the same index (a write is applied once, by its writer)."""
        return self.backend.shared

    def sync_backend(self, ids: Sequence[int]) -> int:
        """Make the backend's rows of `ids` what the live catalog holds; returns how many rows changed.

        Idempotent: a shared backend is brought up to date at start-up and after a failed write,
        with the journal locked (`LiveCatalog.synced`), so no other writer interleaves.
        """
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        stored = self.backend.fetch(ids, vectors=False)
        ops = []
        for pid in ids:
            current = self.catalog.current(pid)
            row = stored.get(pid)
            if current is None:
                if row is not None:
                    ops.append(Op(pid, None, None))
            elif row is None or row.image != current.image or row.product != row_fields(pid, current.fields,
                                                                                        current.image):
                same_image = row is not None and row.image == current.image
                ops.append(Op(pid, current, current if same_image else None))
        if ops:
            self.apply_ops(ops, cached=self.catalog.cached_vectors(self.vector_key))
            log.info("%s: %d rows of the %s index brought up to the live catalog", self.name, len(ops),
                     self.backend_name)
        return len(ops)

    # ----- encoding -------------------------------------------------------------------------
    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images -> post-processed query vectors (n, dims), one batched forward pass."""
        if not images:
            return np.zeros((0, self.dims), np.float32)
        return self.encode_tensors(np.stack([self.preprocess(img) for img in images]))

    def encode_tensors(self, batch: np.ndarray, background: bool = False) -> np.ndarray:
        """Preprocessed uint8 (n, 3, H, W) -> query vectors; lets a server preprocess while a forward runs.

        `background`: catalog writes, whose images other threads decode meanwhile (see
        `Encoder.for_background`); the same vectors.
        """
        encoder = self.background_encoder() if background else self.encoder
        with self._lock:
            raw = encoder(batch)
        return self.postprocess(np.asarray(raw, dtype=np.float32))

    def background_encoder(self) -> Encoder:
        """The encoder of `encode_tensors(background=True)`, made on first use. A writer asks for it first on a
        thread of normal priority: the inference thread never waits for it to load, and its worker threads
        (which inherit the creating thread's priority) compete with searches on equal terms."""
        with self._background_lock:
            if self._background_encoder is None:
                self._background_encoder = self.encoder.for_background()
            return self._background_encoder

    @property
    def dims(self) -> int:
        return self.backend.dims

    @property
    def decode_size(self) -> int:
        """The smallest side an upload is decoded down to (JPEG draft mode; `Preprocess.decode_size`).
        Searches, writes and re-encodes decode this way, and so do the evaluation's photo queries when
        they are brought to the catalog's resolution (the default)."""
        return self.preprocess.decode_size

    # ----- live catalog -------------------------------------------------------------------------
    def apply_ops(self, ops: Sequence[Op], cached: Mapping[str, np.ndarray] | None = None) -> int:
        """Apply live-catalog changes atomically (one state swap); returns how many images were encoded.

        Ops apply in order, so an id changed several times (a catch-up over several journal entries)
        ends in its last state. A new image's vector comes from the op (computed by the writer for
        this index), `cached` (sha -> vector), or is encoded here from the stored image; a metadata-only
        change keeps the vector of the id's current image.
        """
        final: dict[int, tuple[Op, np.ndarray | None] | None] = {}  # id -> its last put (and vector), None: deleted
        keep_vector: set[int] = set()  # metadata-only changes of rows the backend holds: keep its vector
        for op in ops:
            if op.product is None:
                final[op.id] = None
                keep_vector.discard(op.id)
                continue
            vector = op.vectors.get(self.vector_key)
            if vector is None and op.product.image is not None and cached is not None:
                vector = cached.get(op.product.image)
            earlier = final.get(op.id)
            if vector is None and not op.image_changed:  # metadata only: the current image's vector
                if earlier is not None:
                    vector = earlier[1]
                elif op.id not in final:
                    keep_vector.add(op.id)
            else:
                keep_vector.discard(op.id)
            final[op.id] = (op, vector)
        stored = self.backend.fetch(sorted(keep_vector)) if keep_vector else {}
        for pid in keep_vector:
            if pid in stored and final[pid] is not None and final[pid][1] is None:
                final[pid] = (final[pid][0], stored[pid].vector)
        puts = [(pid, entry) for pid, entry in final.items() if entry is not None]
        missing = [pid for pid, (_, vector) in puts if vector is None]
        vectors = {pid: vector for pid, (_, vector) in puts if vector is not None}
        if missing:
            size = self.decode_size  # decoded as a search decodes an upload
            paths = [self.catalog.blobs.path(final[pid][0].product.image) if final[pid][0].product.image
                     else self.catalog.images_dir / f"{pid}.jpg" for pid in missing]
            vectors.update(zip(missing, self.encode([open_image(path, min_size=size) for path in paths]),
                               strict=True))
        upserts = [Row(pid, vectors[pid], row_fields(pid, op.product.fields, op.product.image), op.product.image)
                   for pid, (op, _) in puts]
        self.backend.apply(list(final), upserts)
        return len(missing)

    @property
    def ids(self) -> np.ndarray:
        """Product id per row of the current state (tests and tools; rows past `n` excluded)."""
        s = self.live.state
        return s.ids[: s.n]

    @property
    def vectors(self) -> np.ndarray:
        return self.live.state.all_vectors()

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
            if not values:
                continue
            known = self.backend.known_values(field)
            unknown = [v for v in values if v not in known]
            if unknown and self.backend.shared and self.catalog.journal.identity() != self._counted_journal:
                self._counted_journal = self.catalog.journal.identity()  # another process wrote: recount once
                self.backend.refresh()
                known = self.backend.known_values(field)
                unknown = [v for v in values if v not in known]
            if unknown:
                examples = [item["value"] for item in self.facets()[field][:MAX_LISTED_VALUES]]
                raise UnknownFilterError(f"unknown value(s) {', '.join(map(repr, unknown))} for filter {field!r}; "
                                         f"e.g. {', '.join(examples)}")
            clean[field] = values
        return clean

    def filter_mask(self, filters: Mapping[str, Sequence[str]] | None, state: IndexState | None = None
                    ) -> np.ndarray | None:
        """INDEX_BACKEND=faiss: boolean mask over the state's rows (values OR-ed within a field, fields AND-ed)."""
        return self.backend.mask(self.check_filters(filters), state or self.live.state)

    def facets(self) -> dict[str, list[dict]]:
        """Filter values with their live product counts, most common first (ties by value), empty left out."""
        counted = self.backend.facets(FILTER_FIELDS)
        return {field: [{"value": v, "count": n}
                        for v, n in sorted(((v, n) for v, n in counted[field].items() if n and v != ""),
                                           key=lambda kv: (-kv[1], kv[0]))]
                for field in FILTER_FIELDS}

    @property
    def size(self) -> int:
        """Products in the index now."""
        return self.backend.count()

    # ----- search -----------------------------------------------------------------------------
    def search_vectors(
        self,
        queries: np.ndarray,
        k: int,
        filters: Mapping[str, Sequence[str]] | None = None,
        exclude_ids: Sequence[int | None] | None = None,
        rerank: str | None = None,
    ) -> list[list[SearchHit]]:
        """Top-k hits per query vector; `rerank="category"` shows the voted articleType first, "gender" the
        predicted gender (a "more like this" query, `exclude_ids`, its own), "category+gender" both."""
        rerank = check_rerank(rerank)
        filters = self.check_filters(filters)
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        skip = [None] * len(queries) if exclude_ids is None else list(exclude_ids)
        # the gender is predicted for image queries; a "more like this" query has its product's own (`hits`)
        predict = [qi for qi, pid in enumerate(skip) if pid is None] if reranks_gender(rerank) else []
        if predict:
            self.check_gender_rerank(queries.shape[1])  # refused before any work
        fetch = self.candidates_needed(k, rerank) + (1 if exclude_ids is not None else 0)
        found = self.backend.search(queries, fetch, filters or None)
        genders: list[str | None] = [None] * len(queries)
        if predict:
            neighbours = ([[p.get("gender") or "" for p in found[qi].products[:self.vote_k]] for qi in predict]
                          if self.gender_predictor.neighbour_weight > 0 else None)  # read only when they count
            for qi, gender in zip(predict, self.gender_predictor.predict(queries[predict], neighbours).tolist(),
                                  strict=True):
                genders[qi] = gender
        return [self.hits(cands, k, rerank, skip[qi], genders[qi]) for qi, cands in enumerate(found)]

    def check_gender_rerank(self, dims: int | None = None) -> None:
        """RerankUnavailableError unless this model's image searches can re-rank by gender (see `reranks`)."""
        fix = f"`imageretrieval finetune-rerank --model {self.name} --gender`"
        if self.gender_predictor is None:
            raise RerankUnavailableError(f"model {self.name} has no gender predictor for rerank=gender: make one "
                                         f"with {fix}")
        if self.postprocess.proj is not None:
            raise RerankUnavailableError(
                f"the {self.name} index whitens its vectors (PCA), which its gender predictor was not trained on: "
                f"rebuild the index with `imageretrieval index --model {self.name} --pca 0 --force` to re-rank by "
                "gender")
        if self.gender_predictor.dims != (dims or self.dims):
            raise RerankUnavailableError(
                f"the gender predictor of {self.name} expects {self.gender_predictor.dims}-d vectors, the index "
                f"has {dims or self.dims}: make it again with {fix}")
        if self._gender_predictor_current is None:
            found = self.gender_predictor.agrees_with(
                lambda ids: {pid: row.vector for pid, row in self.backend.fetch(ids).items()})
            self._gender_predictor_current = found is not False
            if not self._gender_predictor_current:
                log.warning("the gender predictor of %s was trained on another version of the model", self.name)
        if not self._gender_predictor_current:
            raise RerankUnavailableError(f"the gender predictor of {self.name} was trained on another version of "
                                         f"the model: make it again with {fix}")

    @staticmethod
    def candidates_needed(k: int, rerank: str = "none") -> int:
        """How many nearest neighbours a search fetches: k, or the re-ranking's pool."""
        return k if rerank == "none" else max(k, DEFAULT_POOL)

    def hits_from_candidates(self, rows: np.ndarray, scores: np.ndarray, k: int, rerank: str = "none",
                             skip_id: int | None = None, state: IndexState | None = None) -> list[SearchHit]:
        """INDEX_BACKEND=faiss: ranked rows of a state (best first, -1 = none) -> the top-k hits (`hits`)."""
        from .backends.faiss_backend import FaissBackend

        return self.hits(FaissBackend.candidates(rows, scores, state or self.live.state), k, rerank, skip_id)

    def hits(self, cands: Candidates, k: int, rerank: str = "none", skip_id: int | None = None,
             gender: str | None = None) -> Hits:
        """Ranked candidates -> the top-k hits, `skip_id` left out.

        With rerank="category", the candidates' articleTypes vote (`rerank.vote_category`) and that
        type comes first; a "more like this" query (`skip_id`) needs no vote: its own type is known.
        With `gender` (rerank="gender" or "category+gender"), products of that gender or Unisex come
        first (within each type part); for a "more like this" query, its product's own gender (none for a
        Unisex one). The hits name the type and the gender put first, where a hit has it.
        """
        ids, scores, products = cands.ids, cands.scores, cands.products
        keep = np.ones(len(ids), bool) if skip_id is None else ids != skip_id
        order = np.flatnonzero(keep)
        own = (self.backend.fetch([int(skip_id)], vectors=False).get(int(skip_id))
               if skip_id is not None and rerank != "none" else None)
        if own is not None and reranks_gender(rerank):
            own_gender = str(own.product.get("gender") or "")
            gender = own_gender if own_gender in GENDERS else NO_GENDER
        matches, first_type = [], None
        if reranks_category(rerank) and len(order):
            types: dict[str, int] = {}  # articleType -> code; an empty type never votes
            codes = np.array([types.setdefault(t, len(types)) if (t := products[i].get("articleType")) else NO_CATEGORY
                              for i in order], np.int64)
            if own is not None:
                first_type = own.product.get("articleType") or None
                predicted = types.get(first_type, len(types)) if first_type else NO_CATEGORY
            else:
                predicted = int(vote_on_rankings(np.arange(len(order))[None], scores[order][None], codes,
                                                 self.vote_k, self.vote_alpha)[0])
                first_type = next((t for t, code in types.items() if code == predicted), None)
            matches.append(category_matches(np.arange(len(order))[None], codes, np.array([predicted]))[0])
        if reranks_gender(rerank) and gender and len(order):
            matches.append(gender_matches(np.array([products[i].get("gender") or "" for i in order], object), gender))
        if matches:
            order = matches_first(order[None], *(m[None] for m in matches), pool=None)[0]
        out = Hits(SearchHit(rank, int(ids[i]), float(scores[i]), products[i])
                   for rank, i in enumerate(order[:k], start=1))
        # said only where a result has it: a vote with no type, or a filter that left none of it, shows nothing first
        out.type_first = first_type if any(h.product.get("articleType") == first_type for h in out) else None
        out.gender_first = gender if gender and any(h.product.get("gender") == gender for h in out) else None
        return out

    @property
    def text_loaded(self) -> bool:
        """Whether search by words was used (its encoder and BM25 are loaded) in this process."""
        return self._text is not None

    @property
    def text(self):
        """Search by words (text/search.py); TextSearchUnavailableError when the model has no projection.
        The first call loads the text encoder: a server makes it on its inference thread."""
        if self._text is None:
            from .text.search import TextSearch

            with self._text_lock:
                if self._text is None:
                    self._text = TextSearch.for_engine(self)
        return self._text

    def search(
        self,
        images: Sequence[Image.Image | str | Path | bytes],
        k: int = 15,
        filters: Mapping[str, Sequence[str]] | None = None,
        rerank: str | None = None,
    ) -> list[list[SearchHit]]:
        """Encode the images (paths/bytes are decoded as uploads are) and return the top-k hits for each."""
        decoded = [img if isinstance(img, Image.Image) else open_image(img, min_size=self.decode_size)
                   for img in images]
        return self.search_vectors(self.encode(decoded), k, filters, rerank=rerank)

    def vector_of(self, product_id: int) -> np.ndarray:
        row = self.backend.fetch([int(product_id)]).get(int(product_id))
        if row is None:
            raise UnknownProductError(f"product {product_id} is not in the {self.name} index")
        return row.vector

    def search_by_id(self, product_id: int, k: int = 15, filters=None, rerank: str | None = None) -> list[SearchHit]:
        """'More like this': the stored vector of a catalog product, the product itself excluded."""
        q = self.vector_of(product_id)[None]
        return self.search_vectors(q, k, filters, exclude_ids=[int(product_id)], rerank=rerank)[0]

    def product(self, product_id: int) -> dict:
        row = self.backend.fetch([int(product_id)], vectors=False).get(int(product_id))
        if row is None:
            raise UnknownProductError(f"unknown product id {product_id}")
        return dict(row.product)

    def _query_inference(self, settings: Settings, model_name: str, encoder: Path | None,
                         rebuild: str) -> tuple[str, str]:
        """(runtime, precision) of the queries: the index's own precision, whatever PRECISION says, so that
        queries and catalog are encoded alike (an int8 index runs its int8 encoder.onnx, on the CPU)."""
        int8_index = str(self.manifest.get("encoder_precision", "")).startswith("int8")
        precision, device = settings.precision, device_type(settings.device)
        if int8_index:
            precision, device = "int8", "cpu" if settings.device == "auto" else device
        elif precision == "int8":
            log.warning("%s: the index was built in fp32, so queries are encoded in fp32; run `%s` with "
                        "PRECISION=int8 to serve int8", model_name, rebuild)
            precision = "fp32"
        try:
            if int8_index:
                from .quantize import file_digest

                if encoder is None:
                    raise RuntimeUnavailableError("its encoder.onnx is missing")
                if file_digest(encoder) != (self.manifest.get("encoder") or {}).get("digest"):
                    raise RuntimeUnavailableError(f"{encoder} is not the encoder that built it")
            return resolve_inference(settings.runtime, precision, device)
        except RuntimeUnavailableError as exc:
            if not int8_index:
                raise
            raise IndexNotBuiltError(f"the index of {model_name!r} was built with PRECISION=int8 and is searched "
                                     f"with its int8 encoder.onnx on ONNX Runtime or OpenVINO on the CPU ({exc}); "
                                     f"use RUNTIME=auto and DEVICE=cpu, or rebuild it: `{rebuild} --force`") from exc

    def describe(self) -> dict:
        return {
            "name": self.name,
            "description": self.info["description"] or "",
            "backbone": self.info["backbone"] or "",
            "kind": self.info["kind"] or "trained",
            "dims": self.dims,
            "raw_dims": self.manifest.get("raw_dims"),
            "index_type": self.backend.index_type,
            "index_size": self.size,
            "index_backend": self.backend_name,
            "input_size": self.preprocess.shape[1],
            "input_width": self.preprocess.shape[2],
            "runtime": self.encoder.runtime,
            "precision": self.precision,
            "synthetic_catalog": bool(self.manifest.get("synthetic_catalog")),
            "reranks": self.reranks,
        }

    @property
    def reranks(self) -> list[str]:
        """The `rerank` values this model's searches accept (gender needs its predictor and unwhitened vectors)."""
        try:
            self.check_gender_rerank()
            gender = True
        except RerankUnavailableError:
            gender = False
        return [r for r in RERANKS if gender or not reranks_gender(r)]

