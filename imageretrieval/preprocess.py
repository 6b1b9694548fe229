"""Image -> model input: letterbox onto white, resize, uint8 CHW array (normalization is in the model).

Catalog photos are portrait products on white; letterboxing keeps the whole product where a center
crop would cut off collars and hems.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)
QUERY_DECODE_MARGIN = 1.5  # a query brought to the catalog's resolution is decoded at >= this x that first


def letterbox(img: Image.Image, size: int, fill: tuple[int, int, int] = WHITE, width: int | None = None) -> Image.Image:
    """Resize to fit a `width` x `size` box (square when `width` is None), keeping the aspect ratio, and pad
    the rest with `fill`."""
    box_w, box_h = width or size, size
    w, h = img.size
    scale = min(box_w / w, box_h / h)
    nw, nh = min(box_w, max(1, round(w * scale))), min(box_h, max(1, round(h * scale)))
    if (nw, nh) == (box_w, box_h) == (w, h):
        return img
    resized = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if (nw, nh) == (box_w, box_h):
        return resized
    canvas = Image.new("RGB", (box_w, box_h), fill)
    canvas.paste(resized, ((box_w - nw) // 2, (box_h - nh) // 2))
    return canvas


def letterbox_into(img: Image.Image, out: np.ndarray, fill: int = 255) -> None:
    """`letterbox` onto a uniform `fill`, written straight into a uint8 (3, H, W) array `out`."""
    _, box_h, box_w = out.shape
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    scale = min(box_w / w, box_h / h)
    nw, nh = min(box_w, max(1, round(w * scale))), min(box_h, max(1, round(h * scale)))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    top, left = (box_h - nh) // 2, (box_w - nw) // 2
    if (nw, nh) != (box_w, box_h):
        out.fill(fill)
    pixels = np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(nh, nw, 3)
    out[:, top:top + nh, left:left + nw] = pixels.transpose(2, 0, 1)


def center_crop(img: Image.Image, size: int, width: int | None = None) -> Image.Image:
    """Resize to cover a `width` x `size` box (square when `width` is None) and cut out its centre."""
    box_w, box_h = width or size, size
    w, h = img.size
    scale = max(box_w / w, box_h / h)
    img = img.resize((max(box_w, round(w * scale)), max(box_h, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - box_w) // 2, (h - box_h) // 2
    return img.crop((left, top, left + box_w, top + box_h))


def match_resolution(img: Image.Image, target_wh: tuple[int, int], slack: float = 1.25) -> Image.Image:
    """Bring a large query down to the catalog's effective resolution (antialiased).

    A 12-megapixel photo or a sharp product shot carries detail that 60x80 catalog images never had;
    encoding it at the catalog's resolution makes query and database look alike to the model.
    Images already at or below the target (times `slack`) are left untouched.
    """
    tw, th = target_wh
    w, h = img.size
    scale = max(tw, th) / max(w, h)
    if scale * slack >= 1.0:
        return img
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


def rescale(img: Image.Image, scale: float) -> Image.Image:
    """The image at `scale` x its size: antialiased down (a lower-resolution shot), bicubic up (an upscaled
    one, no new detail). Builds query sets at resolutions the catalog never had."""
    w, h = img.size
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    return img.resize(size, resample)


def to_uint8_array(img: Image.Image) -> np.ndarray:
    """RGB image -> contiguous uint8 (3, H, W) array."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def to_uint8_tensor(img: Image.Image):
    """RGB image -> uint8 (3, H, W) tensor (training's data loaders)."""
    import torch

    return torch.from_numpy(to_uint8_array(img))


def pack_side_by_side(squares: list[Image.Image], fill: tuple[int, int, int] = WHITE) -> Image.Image:
    """Squares of different sizes on one canvas, left to right, top-aligned (a composite model's input)."""
    canvas = Image.new("RGB", (sum(sq.width for sq in squares), max(sq.height for sq in squares)), fill)
    left = 0
    for sq in squares:
        canvas.paste(sq, (left, 0))
        left += sq.width
    return canvas


@dataclass(frozen=True)
class Preprocess:
    """Callable PIL RGB image -> uint8 array (3, height, width), or for a composite model (`packed_sizes`)
    one square per member at the member's own size, side by side (see models/composite.py)."""

    input_size: int  # the height (and the width of a square input)
    resize_mode: str = "letterbox"
    query_resolution: tuple[int, int] | None = None  # (w, h) of the catalog; None = native
    query_scale: float | None = None  # evaluation only: re-render the image at this scale first
    packed_sizes: tuple[int, ...] = ()
    input_width: int | None = None  # None = square

    @property
    def decode_size(self) -> int:
        """The smallest side a JPEG query may be decoded down to (draft mode, in the DCT: several times
        faster than a full decode). A query brought to the catalog's resolution needs little more than that
        resolution, as the antialiased downscale follows; any other needs twice the model's input."""
        if self.query_resolution is not None and self.query_scale is None:
            return math.ceil(QUERY_DECODE_MARGIN * max(self.query_resolution))
        return 2 * max(self.shape[1:])

    @property
    def shape(self) -> tuple[int, int, int]:
        """The (C, H, W) of every output."""
        if self.packed_sizes:
            return 3, max(self.packed_sizes), sum(self.packed_sizes)
        return 3, self.input_size, self.input_width or self.input_size

    def _square(self, img: Image.Image, size: int, width: int | None = None) -> Image.Image:
        return center_crop(img, size, width) if self.resize_mode == "center-crop" else letterbox(img, size, width=width)

    def to_dict(self) -> dict:
        """The model-side settings (what an index's manifest records for a serving install)."""
        return {"input_size": self.input_size, "input_width": self.input_width, "resize_mode": self.resize_mode,
                "packed_sizes": list(self.packed_sizes)}

    @classmethod
    def from_dict(cls, data: dict, query_resolution: tuple[int, int] | None = None) -> Preprocess:
        return cls(int(data["input_size"]), str(data.get("resize_mode", "letterbox")), query_resolution, None,
                   tuple(int(s) for s in data.get("packed_sizes") or ()),
                   int(data["input_width"]) if data.get("input_width") else None)

    def __call__(self, img: Image.Image) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.uint8)
        self.write_into(img, out)
        return out

    def write_into(self, img: Image.Image, out: np.ndarray) -> None:
        """Write the model input of `img` into `out` (uint8, `shape`; e.g. a row of a batch).

        The plain letterbox goes straight from the resized image into `out` (no canvas, no
        intermediate arrays): the same bytes as `letterbox` + `to_uint8_array`, less per-image work.
        """
        if self.query_scale is not None:
            img = rescale(img, self.query_scale)
        if self.query_resolution is not None:
            img = match_resolution(img, self.query_resolution)
        if self.packed_sizes:
            out[...] = to_uint8_array(pack_side_by_side([self._square(img, s) for s in self.packed_sizes]))
        elif self.resize_mode == "center-crop":
            out[...] = to_uint8_array(center_crop(img, self.input_size, self.input_width))
        else:
            letterbox_into(img, out)


def preprocess_for(config, query_resolution: tuple[int, int] | None = None,
                   query_scale: float | None = None) -> Preprocess:
    """The preprocessing a model config asks for (a `ModelConfig`; composites pack their members' squares)."""
    sizes = tuple(int(s) for s in config.member_sizes or ())
    return Preprocess(config.input_size, config.resize_mode, query_resolution, query_scale, sizes,
                      None if sizes else config.input_width)
