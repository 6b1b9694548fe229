"""Text search over one engine's live index: semantic (projected words), lexical (BM25), hybrid, and
photo + words. Every mode ranks the same live index state, with the same filters, as image search."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .encoders import TextEncoder, create_text_encoder
from .fusion import convex_fusion, reciprocal_rank_fusion
from .lexical import LexicalIndex
from .projection import TextProjection, projection_path
from .queries import check_query, lexical_text

if TYPE_CHECKING:
    from ..engine import RetrievalEngine, SearchHit
    from ..live.liveindex import IndexState

MODES = ("hybrid", "semantic", "lexical")
DEFAULT_LEXICAL_SHARE = 0.8  # hybrid: BM25's share of the fused score (train --recipe text chooses it)
DEFAULT_TEXT_WEIGHT = 0.2  # photo + words: the words' share of the query vector (chosen on val likewise)
DEFAULT_WORDS_WEIGHT = 2.0  # photo + words: RRF weight of the products the words name, nearest the photo first
FUSION_POOL = 100  # candidates of each ranking that the fusion sees
DEFAULT_NAMED_NEAR = 1000  # photo + words: the named products come from the photo's this many nearest
PHOTO_POOL = 200  # photo + words: the photo's neighbours, and the named products, that are fused


class TextSearchUnavailableError(LookupError):
    """The model has no text projection; the message gives the command that trains one."""


class TextSearch:
    def __init__(self, engine: RetrievalEngine, projection: TextProjection, encoder: TextEncoder):
        self.engine = engine
        self.projection = projection
        self.encoder = encoder
        self.lexical_share = float(projection.meta.get("lexical_share", DEFAULT_LEXICAL_SHARE))
        self.text_weight = float(projection.meta.get("text_weight", DEFAULT_TEXT_WEIGHT))
        self.words_weight = float(projection.meta.get("words_weight", DEFAULT_WORDS_WEIGHT))
        self.named_near = int(projection.meta.get("named_near", DEFAULT_NAMED_NEAR))
        self._lexical: tuple[object, LexicalIndex] | None = None  # (base the rows belong to, index)
        self._lock = threading.Lock()

    @classmethod
    def for_engine(cls, engine: RetrievalEngine) -> TextSearch:
        if engine.backend_name != "faiss":
            raise TextSearchUnavailableError(
                f"search by words ranks the rows in this process: it needs INDEX_BACKEND=faiss, not "
                f"{engine.backend_name}")
        path = projection_path(engine.name, engine.settings.workdir)
        if path is None:
            raise TextSearchUnavailableError(
                f"model {engine.name!r} has no text projection: run `imageretrieval train --recipe text "
                f"--base {engine.name}`")
        projection = TextProjection.load(path)
        raw_dims = engine.manifest.get("raw_dims")
        if raw_dims is not None and int(raw_dims) != projection.dims:
            raise TextSearchUnavailableError(
                f"the text projection of {engine.name!r} ({path}) maps words to {projection.dims} dimensions, "
                f"the model's features have {raw_dims}: it belongs to an earlier model of that name; run "
                f"`imageretrieval train --recipe text --base {engine.name}` again")
        settings = engine.settings
        return cls(engine, projection, create_text_encoder(projection.encoder, settings.workdir, settings.runtime))

    # ----- vectors --------------------------------------------------------------------------------
    def text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Words -> the index's space: encoder, projection (into raw image features), post-processing."""
        return self.engine.postprocess(self.projection(self.encoder.encode(list(texts))))

    def combined(self, image_vectors: np.ndarray, text_vectors: np.ndarray, text_weight: float | None = None
                 ) -> np.ndarray:
        w = self.text_weight if text_weight is None else text_weight
        v = (1 - w) * np.asarray(image_vectors, np.float32) + w * text_vectors
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    # ----- lexical ----------------------------------------------------------------------------------
    def lexical_for(self, state: IndexState) -> LexicalIndex:
        """BM25 over the state's rows: extended with rows added since, rebuilt after an index rebuild
        (`warm` builds it ahead, off the search thread)."""
        with self._lock:
            current = self._lexical
        if current is None or current[0] is not state.base_vectors:  # rows renumbered: a new index
            fresh = LexicalIndex()
            fresh.extend([lexical_text(p) for p in state.products[: state.n]])
            with self._lock:
                if self._lexical is None or self._lexical[0] is not state.base_vectors:
                    self._lexical = (state.base_vectors, fresh)
                current = self._lexical
        index = current[1]
        if index.n < state.n:
            with self._lock:  # one extender at a time, so no row is added twice
                if index.n < state.n:
                    index.extend([lexical_text(p) for p in state.products[index.n: state.n]])
        return index

    def warm(self) -> None:
        """Bring BM25 up to the current index state (after a rebuild): the next search need not."""
        self.lexical_for(self.engine.live.state)

    # ----- search -----------------------------------------------------------------------------------
    def search(self, texts: Sequence[str], k: int, filters: Mapping[str, Sequence[str]] | None = None,
               mode: str = "hybrid", image_vectors: np.ndarray | None = None, lexical_share: float | None = None,
               text_weight: float | None = None, words_weight: float | None = None,
               named_near: int | None = None) -> list[list[SearchHit]]:
        """Top-k hits per text.

        With `image_vectors` (photo + words, "this but in red"): the words move the photo's vector
        (`text_weight`); among its `named_near` nearest products, those the words name (holding the
        most of the words), nearest first, are fused with its PHOTO_POOL nearest by reciprocal rank
        fusion (`words_weight`). The neighbourhood keeps the photo's kind of product: where none of
        it comes in red, the words do not bring red products of another kind (`named_near` 0: any).
        """
        if mode not in MODES:
            raise ValueError(f"unknown text search mode {mode!r}; modes: {', '.join(MODES)}")
        texts = [check_query(t) for t in texts]
        engine = self.engine
        state = engine.live.state
        mask = engine.filter_mask(filters, state)
        fetch = max(k, FUSION_POOL)
        allowed = state.alive if mask is None else (mask & state.alive)
        if image_vectors is not None:
            return self._refine_photo(texts, k, state, self.lexical_for(state), allowed, mask, image_vectors,
                                      text_weight, words_weight, named_near)
        vectors = self.text_vectors(texts) if mode != "lexical" else None
        semantic = state.search(vectors, fetch, mask) if vectors is not None else None
        if mode == "semantic":
            return [engine.hits_from_candidates(semantic[1][i], semantic[0][i], k, state=state)
                    for i in range(len(texts))]
        lexical = self.lexical_for(state)
        share = self.lexical_share if lexical_share is None else lexical_share
        out = []
        for i, text in enumerate(texts):
            bm25 = lexical.scores(text, state.n, allowed)
            lex_rows = np.flatnonzero(bm25 > 0)
            lex_rows = lex_rows[np.lexsort((lex_rows, -bm25[lex_rows]))][:fetch]
            if mode == "lexical":
                out.append(engine.hits_from_candidates(lex_rows, bm25[lex_rows], k, state=state))
                continue
            sem_rows = semantic[1][i][semantic[1][i] >= 0]
            rows = np.unique(np.concatenate([sem_rows, lex_rows]))  # ascending: ties end up by row
            cosine = np.stack([state.vector(int(r)) for r in rows]) @ vectors[i] if len(rows) else np.zeros(0)
            fused = convex_fusion(bm25[rows], cosine, share)
            order = np.lexsort((rows, -fused))
            out.append(engine.hits_from_candidates(rows[order], fused[order], k, state=state))
        return out

    def _refine_photo(self, texts, k, state, lexical, allowed, mask, image_vectors, text_weight, words_weight,
                      named_near):
        engine = self.engine
        vectors = self.combined(image_vectors, self.text_vectors(texts), text_weight)
        pool_size = max(k, PHOTO_POOL)
        _, rows = state.search(vectors, pool_size, mask)
        weight = self.words_weight if words_weight is None else words_weight
        near = self.named_near if named_near is None else named_near
        out = []
        for i, text in enumerate(texts):
            pool = rows[i][rows[i] >= 0]
            by_words = np.zeros(0, np.int64)  # the products the words name, nearest to the photo first
            if near:
                neighbours = state.search(vectors[i: i + 1], max(near, pool_size), mask)[1][0]
                neighbours = neighbours[neighbours >= 0]
                nearby = np.zeros(state.n, bool)
                nearby[neighbours] = True
                named = lexical.best_matches(text, state.n, allowed & nearby)  # the most words found nearby
                by_words = neighbours[named[neighbours]][:pool_size]
            else:
                named = lexical.best_matches(text, state.n, allowed)
                if named.any():
                    by_words = state.search(vectors[i: i + 1], pool_size, named, exact=True)[1][0]
            fused, fused_scores = reciprocal_rank_fusion([pool, by_words], [1.0, weight])
            out.append(engine.hits_from_candidates(fused, fused_scores, k, state=state))
        return out
