"""`train --recipe text`: a model's text projection (text -> its image space), trained on cached features.

Texts are each catalog product's name and its templated attribute phrase, embedded once by the frozen
text encoder (cached in the workdir); images are the model's frozen catalog features. Train-split
products train it; validation-split names pick the best epoch, and the weights of the hybrid
(lexical + semantic) ranking and of photo + words (evaluation/text_protocol.py) are chosen on them too.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from ..io_utils import save_npy
from ..settings import Settings
from ..text.encoders import DEFAULT_TEXT_ENCODER, create_text_encoder
from ..text.projection import FILE, TextProjection, train_projection
from ..text.queries import product_texts

log = logging.getLogger(__name__)

VAL_QUERIES = 1500  # validation names ranked against the whole catalog after each epoch


def embed_texts(settings: Settings, encoder_name: str, texts: list[str], progress: bool = True) -> np.ndarray:
    """Text embeddings, cached in `<WORKDIR>/features/text/<encoder>/<digest>.npy` by the list's content."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = Path(settings.workdir) / "features" / "text" / encoder_name.replace("/", "_") / f"{digest}.npy"
    if path.is_file():
        return np.load(path)
    encoder = create_text_encoder(encoder_name)
    started = time.perf_counter()
    chunks = []
    from tqdm import tqdm

    for start in tqdm(range(0, len(texts), 2048), desc=f"text {encoder_name}", disable=not progress):
        chunks.append(encoder.encode(texts[start: start + 2048]))
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, encoder.dims), np.float32)
    log.info("embedded %d texts with %s in %.1f s", len(texts), encoder_name, time.perf_counter() - started)
    save_npy(path, vectors)
    return vectors


def catalog_pairs(settings: Settings, model: str, progress: bool = True):
    """(catalog table with split, L2-normalized image features, texts, text->product pairs)."""
    from ..catalog import load_catalog, prepare_split
    from ..featurestore import get_features

    fs, table = get_features(settings, model, "fashion", progress=progress)
    valid = np.asarray(fs.valid)
    splits = prepare_split(load_catalog(settings.dataset_root), "all", settings.workdir, settings.seed)
    table = table[valid].reset_index(drop=True)
    table["split"] = table["id"].map(splits.set_index("id")["split"]).fillna("train").to_numpy()
    image = np.asarray(fs.features[valid], np.float32)
    image /= np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
    texts, pairs = [], []
    for row, record in enumerate(table.to_dict("records")):
        for text in product_texts(record):
            pairs.append((len(texts), row))
            texts.append(text)
    return table, image, texts, np.array(pairs, np.int64)


def choose_search_weights(settings: Settings, base: str, projection: TextProjection) -> dict | None:
    """The hybrid's and photo + words' weights, chosen on validation through the model's index (None
    without an index: the defaults then apply)."""
    from ..engine import IndexNotBuiltError, RetrievalEngine
    from ..evaluation.text_protocol import choose_weights
    from ..text.search import TextSearch

    try:
        engine = RetrievalEngine(settings, base)
    except IndexNotBuiltError as exc:
        log.warning("no index for %s (%s): the search weights stay at their defaults", base, exc)
        return None
    engine._text = TextSearch(engine, projection, create_text_encoder(projection.encoder))
    chosen = choose_weights(settings, engine)
    log.info("chosen on validation: BM25 share %s; photo + words: text weight %s, words weight %s, "
             "named products among the photo's %s nearest (0: all)", chosen["lexical_share"],
             chosen["text_weight"], chosen["words_weight"], chosen["named_near"])
    return chosen


def train_text_projection(settings: Settings, base: str, encoder_name: str = DEFAULT_TEXT_ENCODER,
                          epochs: int = 30, hidden: int = 1024, batch: int = 512, lr: float = 2e-3,
                          progress: bool = True) -> Path:
    """Train and save `<WORKDIR>/models/<base>/text_projection.npz`; returns its path."""
    table, image, texts, pairs = catalog_pairs(settings, base, progress)
    text = embed_texts(settings, encoder_name, texts, progress)
    split = table["split"].to_numpy()
    product_split = split[pairs[:, 1]]
    train_pairs = pairs[product_split == "train"]
    names = np.array([i for i, (t, r) in enumerate(pairs) if split[r] == "val" and texts[t] ==
                      str(table.at[r, "productDisplayName"]).strip()])
    rng = np.random.default_rng(settings.seed)
    val = names[rng.permutation(len(names))[:VAL_QUERIES]] if len(names) else names

    def val_recall(weights: dict) -> float:
        """Exact-product recall@10 of validation names among every catalog product (raw image space)."""
        if len(val) == 0:
            return 0.0
        projection = TextProjection(encoder_name, weights["w1"], weights["b1"], weights["w2"], weights["b2"], {})
        queries = projection(text[pairs[val, 0]])
        scores = queries @ image.T
        own = scores[np.arange(len(val)), pairs[val, 1]]
        ranks = (scores > own[:, None]).sum(axis=1)
        return float((ranks < 10).mean())

    started = time.perf_counter()
    weights, history = train_projection(text, image, train_pairs, hidden=hidden, epochs=epochs, batch=batch, lr=lr,
                                        seed=settings.seed, progress=progress, score=val_recall)
    best = max(history, key=lambda h: h.get("val", -h["loss"]))
    meta = {"base": base, "hidden": hidden, "epochs": epochs, "best_epoch": best["epoch"],
            "val_recall_at_10": best.get("val"), "train_pairs": int(len(train_pairs)),
            "seconds": round(time.perf_counter() - started, 1), "history": history}
    path = Path(settings.workdir) / "models" / base / FILE
    projection = TextProjection(encoder_name, weights["w1"], weights["b1"], weights["w2"], weights["b2"], meta)
    projection.save(path)
    encoder = create_text_encoder(encoder_name)
    if hasattr(encoder, "model"):  # a sentence-transformers model: export it for installs without PyTorch
        from ..text.onnx_export import export_text_encoder

        try:
            export_text_encoder(encoder, settings.workdir)
        except Exception as exc:  # noqa: BLE001 - search by words still works where PyTorch is installed
            log.warning("the text encoder %s could not be exported to ONNX (%s): serving it needs PyTorch",
                        encoder_name, exc)
    chosen = choose_search_weights(settings, base, projection)
    if chosen is not None:
        projection.meta.update(chosen)
        projection.save(path)
    log.info("text projection of %s saved to %s (best epoch %d, val R@10 %.4f)", base, path, best["epoch"],
             best.get("val", float("nan")))
    return path
