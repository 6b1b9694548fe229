from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imageretrieval.catalog import (
    CatalogError,
    load_catalog,
    prepare_split,
    read_styles_csv,
    select,
    stratified_split,
)
from imageretrieval.images import ImageDecodeError, open_image

STYLES = """id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName
15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt
3413,Men,Apparel,Topwear,Tshirts,White,Summer,2011.0,Casual,Myntra Men's Yes, its all about me White T-shirt
44065,Men,Personal Care,Fragrance,Perfume and Body Mist,Blue,Spring,2017,Casual,Boss Men Perfume, After Shave Balm, and Gel
12,Women,Apparel,Topwear,Tops,Red,Summer,,NA,Plain top
13,Women,Apparel,Topwear,Tops,,Summer,2012,,
"""


def test_styles_csv_keeps_names_with_unquoted_commas(tmp_path):
    p = tmp_path / "styles.csv"
    p.write_text(STYLES)
    df = read_styles_csv(p).set_index("id")
    assert df.loc[3413, "productDisplayName"] == "Myntra Men's Yes, its all about me White T-shirt"
    assert df.loc[44065, "productDisplayName"] == "Boss Men Perfume, After Shave Balm, and Gel"
    assert df.loc[3413, "year"] == 2011
    assert pd.isna(df.loc[12, "year"]) and df.loc[12, "usage"] == ""
    assert df.loc[13, "baseColour"] == "" and df.loc[13, "productDisplayName"] == ""
    assert df.loc[3413, "articleType"] == "Tshirts"


def test_missing_styles_csv_names_the_fix(tmp_path):
    with pytest.raises(CatalogError, match="DATASET_ROOT"):
        read_styles_csv(tmp_path / "nope.csv")


def test_synthetic_catalog_drops_products_without_image(synthetic_catalog):
    cat = load_catalog(synthetic_catalog)
    assert len(cat) == 8 * 12
    assert "Product without an image" not in set(cat.df["productDisplayName"])
    assert cat.df["productDisplayName"].str.contains("with commas,").sum() == 8


def test_split_is_deterministic_stratified_and_saved(tmp_path, synthetic_catalog):
    cat = load_catalog(synthetic_catalog)
    a = prepare_split(cat, "all", tmp_path, seed=7)
    b = prepare_split(cat, "all", tmp_path, seed=7)
    assert (a["split"].to_numpy() == b["split"].to_numpy()).all()
    assert (tmp_path / "splits" / "fashion-all.csv").is_file()
    counts = a.groupby(["articleType", "split"]).size().unstack()
    assert (counts["train"] > counts["test"]).all() and (counts["test"] > 0).all()
    fractions = a["split"].value_counts(normalize=True)
    assert abs(fractions["train"] - 0.6) < 0.1


def test_stratified_split_changes_with_seed():
    labels = pd.Series(["a"] * 50 + ["b"] * 50)
    assert not (stratified_split(labels, 1) == stratified_split(labels, 2)).all()


def test_seed_selection_rules():
    rows = [(i, "Apparel", "Tshirts") for i in range(150)] + [(1000 + i, "Apparel", "Kurtas") for i in range(150)]
    rows += [(2000 + i, "Apparel", "Skirts") for i in range(50)] + [(3000 + i, "Footwear", "Heels") for i in range(200)]
    df = pd.DataFrame(rows, columns=["id", "masterCategory", "articleType"])
    assert set(select(df, "seed")["articleType"]) == {"Tshirts"}
    with pytest.raises(CatalogError):
        select(df, "bogus")


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16"])
def test_images_of_any_mode_load_as_rgb(tmp_path, mode):
    img = Image.new("RGB", (37, 53), (200, 10, 10)).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        img = Image.fromarray((np.ones((53, 37)) * 40000).astype(np.uint16))
    path = tmp_path / ("x.png" if mode not in ("CMYK",) else "x.jpg")
    img.save(path)
    out = open_image(path)
    assert out.mode == "RGB" and out.size == (37, 53)


def test_bad_images_raise_clear_errors(tmp_path):
    with pytest.raises(ImageDecodeError, match="empty"):
        open_image(b"")
    with pytest.raises(ImageDecodeError, match="not a supported image"):
        open_image(b"this is text, not an image")
    good = tmp_path / "g.jpg"
    Image.new("RGB", (200, 200), "red").save(good)
    with pytest.raises(ImageDecodeError):
        open_image(good.read_bytes()[:300])
    with pytest.raises(ImageDecodeError, match="MP"):
        open_image(good.read_bytes(), max_pixels=1000)
    with pytest.raises(ImageDecodeError, match="not found"):
        open_image(Path(tmp_path / "missing.jpg"))


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.new("RGB", (40, 20), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "o.jpg"
    img.save(p, exif=exif)
    assert open_image(p).size == (20, 40)


def test_large_jpegs_can_decode_at_reduced_scale(tmp_path):
    p = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(p)
    small = open_image(p, min_size=448)
    assert min(small.size) >= 448 and small.size[0] <= 1000
    assert open_image(p).size == (4000, 3000)
