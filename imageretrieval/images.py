"""Robust image decoding: any format, size and mode becomes an RGB PIL image, or a clear error."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # ~64 MP: a 12 MP phone photo fits, a decompression bomb does not.


class ImageDecodeError(ValueError):
    """The bytes are not an image we can use; the message says why, for people."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten alpha onto white (catalog backgrounds are white) and convert every mode to RGB."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    if img.mode == "I;16" or img.mode == "I":
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def open_image(
    source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int | None = None
) -> Image.Image:
    """Decode a file path or raw bytes into an RGB image, honouring EXIF orientation.

    Animated formats give their first frame. Raises ImageDecodeError for empty, non-image,
    truncated or oversized (decompression bomb) inputs instead of crashing or eating memory.
    `min_size`: JPEGs may be decoded at a reduced scale (1/2..1/8, in the DCT: several times
    faster for phone photos) as long as both sides stay >= min_size.
    """
    if isinstance(source, bytes | bytearray):
        if len(source) == 0:
            raise ImageDecodeError("the uploaded file is empty (0 bytes)")
        stream: io.BytesIO | Path = io.BytesIO(source)
        name = "upload"
    else:
        stream = Path(source)
        name = str(source)
        if not stream.is_file():
            raise ImageDecodeError(f"image file not found: {name}")
        if stream.stat().st_size == 0:
            raise ImageDecodeError(f"image file is empty: {name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(stream)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"{name}: image is {width}x{height} = {width * height / 1e6:.0f} MP, "
                    f"over the {max_pixels / 1e6:.0f} MP limit"
                )
            img.seek(0)
            if min_size and img.format == "JPEG":
                img.draft("RGB", (min_size, min_size))
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{name}: not a supported image ({exc.__class__.__name__})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({exc})") from exc


# Truncated catalog JPEGs should fail loudly, never decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
