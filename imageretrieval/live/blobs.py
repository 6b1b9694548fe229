"""Product images of the live catalog, stored by content hash under the workdir.

Uploads are decoded with the search's own checks (format, size, pixels, EXIF orientation), then
stored as a normalized JPEG (RGB, longest side capped) named by the SHA-256 of those bytes: never
under a client-given name or path, and the same picture uploaded twice is stored once.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

from PIL import Image

from ..images import DEFAULT_MAX_PIXELS, open_image
from .journal import fsync_dir

MAX_STORED_SIDE = 1024  # larger uploads are downscaled: search models read 224 px at most
JPEG_QUALITY = 90
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def normalized_jpeg(data: bytes | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The bytes to store: decoded first (raises images.ImageDecodeError), then the upload itself when it
    is already a plain JPEG (RGB or grey, upright, within MAX_STORED_SIDE), else a re-encoded JPEG.
    Deterministic: the same upload gives the same bytes."""
    raw = data if isinstance(data, bytes) else Path(data).read_bytes()
    image = open_image(raw, max_pixels=max_pixels)
    try:
        if _plain_jpeg(raw, image):
            return raw
        if max(image.size) > MAX_STORED_SIDE:
            image.thumbnail((MAX_STORED_SIDE, MAX_STORED_SIDE), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue()
    finally:
        image.close()


def _plain_jpeg(raw: bytes, decoded: Image.Image) -> bool:
    """A JPEG that any browser shows as decoded here: no rotation, no CMYK, not oversized."""
    if not raw.startswith(b"\xff\xd8") or max(decoded.size) > MAX_STORED_SIDE:
        return False
    with Image.open(io.BytesIO(raw)) as original:
        return (original.format == "JPEG" and original.mode in ("RGB", "L")
                and original.getexif().get(0x0112, 1) == 1)


class ImageBlobs:
    """`<root>/<2 hex>/<sha256>.jpg`, each written atomically and fsynced before a journal entry names it."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, sha: str) -> Path:
        if not SHA256_HEX.match(sha):
            raise ValueError(f"not an image hash: {sha!r}")
        return self.root / sha[:2] / f"{sha}.jpg"

    def put(self, jpeg: bytes) -> str:
        """Store normalized JPEG bytes durably; returns their hash (a no-op when already stored)."""
        sha = hashlib.sha256(jpeg).hexdigest()
        path = self.path(sha)
        if path.is_file() and path.stat().st_size == len(jpeg):
            return sha
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(jpeg)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)
        return sha

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()
