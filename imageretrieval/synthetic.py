"""A synthetic Fashion-Product-like catalog: drawn garments with exact ground truth.

Used by the tests (no real data needed) and by the demo when no catalog can be downloaded; the
folder carries a `SYNTHETIC` marker so the API and the web app can say so plainly.
Each product is a vector drawing (class = silhouette, baseColour = fill, plus product-specific
stripes and a badge), so it can be rendered at any resolution: a larger rendering is a sharper
photo of the very same product.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "Black": (25, 25, 25), "Red": (200, 30, 40), "Blue": (40, 80, 200), "Green": (40, 150, 60),
    "Yellow": (235, 200, 40), "Pink": (240, 130, 170), "Grey": (130, 130, 130), "Navy Blue": (20, 30, 90),
}
# articleType -> (masterCategory, subCategory, silhouette)
CLASSES = {
    "Tshirts": ("Apparel", "Topwear", "tee"),
    "Shirts": ("Apparel", "Topwear", "shirt"),
    "Jeans": ("Apparel", "Bottomwear", "trousers"),
    "Shorts": ("Apparel", "Bottomwear", "shorts"),
    "Dresses": ("Apparel", "Dress", "dress"),
    "Watches": ("Accessories", "Watches", "watch"),
    "Casual Shoes": ("Footwear", "Shoes", "shoe"),
    "Handbags": ("Accessories", "Bags", "bag"),
}
GENDERS = ["Men", "Women"]
SEASONS = ["Summer", "Fall", "Winter", "Spring"]
USAGES = ["Casual", "Formal", "Sports", ""]


@dataclass(frozen=True)
class ProductDrawing:
    article_type: str
    colour: str
    stripes: int
    stripe_angle: int
    badge_xy: tuple[float, float]
    accent: tuple[int, int, int]


def _silhouette(kind: str, w: float, h: float) -> list[list[tuple[float, float]]]:
    """Polygons in pixel coordinates for a w x h canvas."""
    def P(pts):
        return [(x * w, y * h) for x, y in pts]

    if kind == "tee":
        return [P([(.2, .15), (.38, .1), (.62, .1), (.8, .15), (.95, .35), (.8, .42), (.75, .3), (.75, .9),
                   (.25, .9), (.25, .3), (.2, .42), (.05, .35)])]
    if kind == "shirt":
        return [P([(.22, .12), (.4, .08), (.5, .16), (.6, .08), (.78, .12), (.9, .6), (.78, .62), (.74, .3),
                   (.74, .92), (.26, .92), (.26, .3), (.22, .62), (.1, .6)])]
    if kind == "trousers":
        return [P([(.25, .06), (.75, .06), (.8, .94), (.57, .94), (.5, .35), (.43, .94), (.2, .94)])]
    if kind == "shorts":
        return [P([(.2, .25), (.8, .25), (.86, .7), (.56, .72), (.5, .45), (.44, .72), (.14, .7)])]
    if kind == "dress":
        return [P([(.38, .06), (.62, .06), (.66, .3), (.88, .94), (.12, .94), (.34, .3)])]
    if kind == "watch":
        return [P([(.42, .05), (.58, .05), (.58, .95), (.42, .95)]),
                [(w * .5 + w * .26 * np.cos(t), h * .5 + w * .26 * np.sin(t)) for t in np.linspace(0, 6.28, 40)]]
    if kind == "shoe":
        return [P([(.08, .45), (.45, .42), (.6, .55), (.92, .62), (.94, .75), (.08, .75)])]
    return [P([(.15, .35), (.85, .35), (.9, .9), (.1, .9)]), P([(.32, .35), (.36, .15), (.64, .15), (.68, .35),
                                                             (.6, .35), (.58, .22), (.42, .22), (.4, .35)])]


def render_product(d: ProductDrawing, width: int = 60, height: int = 80) -> Image.Image:
    """Draw the product at any resolution (supersampled 4x then reduced, like a real photo)."""
    ss = 4
    W, H = width * ss, height * ss
    img = Image.new("RGB", (W, H), (255, 255, 255))
    kind = CLASSES[d.article_type][2]
    polys = _silhouette(kind, W, H)
    mask = Image.new("L", (W, H), 0)
    md = ImageDraw.Draw(mask)
    for poly in polys:
        md.polygon(poly, fill=255)
    fill = Image.new("RGB", (W, H), COLOURS[d.colour])
    fd = ImageDraw.Draw(fill)
    step = max(2.0, H / (2 * d.stripes + 1))
    for i in range(d.stripes):
        y = step * (2 * i + 1)
        off = np.tan(np.radians(d.stripe_angle)) * W
        fd.polygon([(0, y), (W, y + off), (W, y + off + step * 0.6), (0, y + step * 0.6)], fill=d.accent)
    bx, by = d.badge_xy
    r = 0.07 * W
    fd.ellipse([bx * W - r, by * H - r, bx * W + r, by * H + r], fill=(255 - d.accent[0], 240, d.accent[2]))
    img.paste(fill, mask=mask)
    ImageDraw.Draw(img).polygon(polys[0], outline=(60, 60, 60), width=ss)
    return img.resize((width, height), Image.Resampling.LANCZOS)


def drawing_for(product_id: int, article_type: str, colour: str) -> ProductDrawing:
    rng = np.random.default_rng(product_id)
    return ProductDrawing(
        article_type=article_type,
        colour=colour,
        stripes=int(rng.integers(1, 6)),
        stripe_angle=int(rng.integers(-30, 31)),
        badge_xy=(float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.35, 0.7))),
        accent=tuple(int(v) for v in rng.integers(0, 256, 3)),
    )


def make_synthetic_catalog(root: Path, per_class: int = 12, seed: int = 0, size: tuple[int, int] = (60, 80),
                           classes: list[str] | None = None) -> Path:
    """Write styles.csv + images/<id>.jpg (+ SYNTHETIC marker) under root. Returns root.

    styles.csv reproduces the real file's quirks: unquoted commas in names, a float year, 'NA'
    usage, and one product without an image.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = classes or list(CLASSES)
    colours = list(COLOURS)
    rows = []
    pid = 1000
    for article in classes:
        master, sub, _ = CLASSES[article]
        for j in range(per_class):
            pid += 1
            colour = colours[int(rng.integers(len(colours)))]
            gender = GENDERS[j % 2]
            name = f"Synthetic {gender} {colour} {article} {pid}"
            if j == 0:
                name = f"Synthetic {gender} {article}, with commas, {pid}"  # unquoted commas
            year = "2012.0" if j == 1 else ("" if j == 2 else str(2010 + j % 8))
            usage = "NA" if j == 3 else USAGES[j % len(USAGES)]
            rows.append([str(pid), gender, master, sub, article, colour, SEASONS[j % 4], year, usage, name])
            render_product(drawing_for(pid, article, colour), *size).save(root / "images" / f"{pid}.jpg",
                                                                          quality=92)
    rows.append([str(pid + 1), "Men", "Apparel", "Topwear", classes[0], "Black", "Summer", "2012", "Casual",
                 "Product without an image"])
    with open(root / "styles.csv", "w", newline="") as fh:
        fh.write("id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n")
        for r in rows:
            fh.write(",".join(r) + "\n")  # deliberately unquoted, like the original file
    (root / "SYNTHETIC").write_text("This catalog was generated by imageretrieval.synthetic; it is not real.\n")
    return root


def read_ids(root: Path) -> list[int]:
    with open(Path(root) / "styles.csv") as fh:
        return [int(r[0]) for r in list(csv.reader(fh))[1:]]
