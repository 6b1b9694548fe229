"""A written product's image made ready once for storage and for every model: the API's writes and the
`catalog` CLI prepare it the same way, so a product gets the vectors a search with its stored file gets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..images import DEFAULT_MAX_PIXELS, open_image
from .blobs import blob_sha, stored_form

if TYPE_CHECKING:
    from ..engine import RetrievalEngine


@dataclass
class PreparedImage:
    sha: str  # the name it is stored under
    stored: bytes  # what is stored (`blobs.stored_form`)
    inputs: list[np.ndarray]  # each engine's uint8 model input, in the engines' order


def prepare_image(raw: bytes, engines: Sequence[RetrievalEngine], max_pixels: int = DEFAULT_MAX_PIXELS
                  ) -> PreparedImage:
    """Decode an upload as a search decodes the stored file (once per distinct `decode_size`: usually
    once) and make each engine's model input. Raises images.ImageDecodeError."""
    sizes = sorted({engine.decode_size for engine in engines}) or [None]
    decoded = {}
    try:
        stored, decoded[sizes[0]] = stored_form(raw, max_pixels, min_size=sizes[0])
        for size in sizes[1:]:
            decoded[size] = open_image(stored, max_pixels=max_pixels, min_size=size)
        return PreparedImage(blob_sha(stored), stored,
                             [engine.preprocess(decoded[engine.decode_size]) for engine in engines])
    finally:
        for img in decoded.values():
            img.close()
