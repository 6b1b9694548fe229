"""Product images of the live catalog, stored by content hash under the workdir.

Uploads are decoded with the search's own checks (format, size, pixels, EXIF orientation), then
stored as a JPEG named by the SHA-256 of its bytes: never under a client-given name or path, and the
same picture uploaded twice is stored once. A plain JPEG keeps its compressed data byte for byte,
without its metadata segments (EXIF, XMP, IPTC: a phone photo's GPS position is never served);
anything else is re-encoded.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from pathlib import Path

from PIL import Image

from ..images import DEFAULT_MAX_PIXELS, open_image
from ..io_utils import atomic_write, fsync_dir

MAX_STORED_SIDE = 1024  # larger uploads are downscaled: search models read 224 px at most
JPEG_QUALITY = 90
STORE_THREADS = 4  # images flushed to disk at once by a writer: each mostly waits for the disk, and the
# filesystem can fold flushes that overlap into one journal commit
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def stored_form(raw: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int | None = None
                ) -> tuple[bytes, Image.Image]:
    """(the bytes to store, the image decoded from them): raises images.ImageDecodeError.

    A plain JPEG (RGB or grey, upright, within MAX_STORED_SIDE) is stored byte for byte, and decoded
    once, the way a search decodes an upload (`min_size`: JPEG draft mode down to that size), so the
    models encode exactly what a search with the same file would. Anything else is re-encoded as a
    JPEG first. Deterministic: the same upload gives the same bytes. The caller closes the image.
    """
    if _plain_jpeg(raw):
        stored = _without_metadata(raw)
        return stored, open_image(stored, max_pixels=max_pixels, min_size=min_size)
    image = open_image(raw, max_pixels=max_pixels)
    try:
        if max(image.size) > MAX_STORED_SIDE:
            image.thumbnail((MAX_STORED_SIDE, MAX_STORED_SIDE), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY)
    finally:
        image.close()
    stored = out.getvalue()
    return stored, open_image(stored, max_pixels=max_pixels, min_size=min_size)


def blob_sha(jpeg: bytes) -> str:
    """The name a stored image gets (`ImageBlobs.put` returns the same)."""
    return hashlib.sha256(jpeg).hexdigest()


def normalized_jpeg(data: bytes | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The bytes to store for an upload or an image file (see `stored_form`)."""
    stored, image = stored_form(data if isinstance(data, bytes) else Path(data).read_bytes(), max_pixels)
    image.close()
    return stored


# APP1 (EXIF, XMP), APP13 (IPTC), COM (free text comments); APP0 (JFIF), APP2 (ICC) stay
METADATA_MARKERS = frozenset({0xE1, 0xED, 0xFE})


def _without_metadata(raw: bytes) -> bytes:
    """The JPEG without its metadata segments, the image data untouched (no re-encoding)."""
    out = bytearray(raw[:2])
    pos = 2
    while pos + 4 <= len(raw) and raw[pos] == 0xFF:
        marker = raw[pos + 1]
        if marker == 0xDA:  # start of scan: the compressed image follows, copied as it is
            break
        length = int.from_bytes(raw[pos + 2: pos + 4], "big")
        if marker not in METADATA_MARKERS:
            out += raw[pos: pos + 2 + length]
        pos += 2 + length
    return bytes(out + raw[pos:])


def _plain_jpeg(raw: bytes) -> bool:
    """A JPEG that any browser shows as it decodes here: no rotation, no CMYK, not oversized (header only)."""
    if not raw.startswith(b"\xff\xd8"):
        return False
    try:
        with Image.open(io.BytesIO(raw)) as original:
            return (original.format == "JPEG" and original.mode in ("RGB", "L")
                    and max(original.size) <= MAX_STORED_SIDE and original.getexif().get(0x0112, 1) == 1)
    except Exception:  # noqa: BLE001 - unreadable headers take the decoding path, which says why
        return False


class ImageBlobs:
    """`<root>/<2 hex>/<sha256>.jpg`, each written atomically and fsynced before a journal entry names it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._durable_folders: set[str] = set()  # folders whose entry in the root this process has flushed
        self._folders_lock = threading.Lock()

    def path(self, sha: str) -> Path:
        if not SHA256_HEX.match(sha):
            raise ValueError(f"not an image hash: {sha!r}")
        return self.root / sha[:2] / f"{sha}.jpg"

    def put(self, jpeg: bytes) -> str:
        """Store normalized JPEG bytes durably; returns their hash (a no-op when already stored)."""
        sha = blob_sha(jpeg)
        path = self.path(sha)
        self._durable_folder(path.parent)
        if path.is_file() and path.stat().st_size == len(jpeg):
            fsync_dir(path.parent)  # a copy written by a write that failed later may not be durable yet
            return sha
        atomic_write(path, lambda p: p.write_bytes(jpeg), durable=True)
        return sha

    def _durable_folder(self, folder: Path) -> None:
        """The folder exists and its entry in the root is on disk before a journal entry names a file in it,
        also when another thread made it a moment ago and has not flushed the root yet (puts run in parallel)."""
        with self._folders_lock:
            if folder.name in self._durable_folders:
                return
        folder.mkdir(parents=True, exist_ok=True)
        fsync_dir(self.root)
        with self._folders_lock:
            self._durable_folders.add(folder.name)

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()
