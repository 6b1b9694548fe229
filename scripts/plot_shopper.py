#!/usr/bin/env python3
"""Plot what the shopper objectives trade: docs/figures/shopper-objectives.csv -> shopper-objectives.png.

One panel per figure a shopper sees; the heads trained with the shopper objectives at each weight,
beside the shipped model and the pretrained trunk (rows whose `weight` is empty).

    python scripts/plot_shopper.py [docs/figures/shopper-objectives.csv]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [("catalog_p15", "catalog: type P@15"), ("catalog_colour15", "catalog: colour@15"),
          ("catalog_gender15", "catalog: gender@15"), ("catalog_tcg15", "catalog: type+colour+gender@15"),
          ("exact_r1_x05", "catalog at x0.5: exact R@1"), ("photos_p15", "photos: type P@15"),
          ("photos_gender15", "photos: gender@15"), ("inshop_r1", "In-shop: R@1")]


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/figures/shopper-objectives.csv")
    rows = list(csv.DictReader(line for line in source.read_text().splitlines() if not line.startswith("#")))
    heads = sorted((r for r in rows if r["weight"]), key=lambda r: float(r["weight"]))
    references = [r for r in rows if not r["weight"]]
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.6), sharex=True)
    styles = [("tab:red", "--"), ("tab:gray", ":"), ("tab:green", "-.")]
    for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
        points = [(float(r["weight"]), float(r[key])) for r in heads if r[key]]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="tab:blue",
                label="heads, shopper objectives")
        for ref, (color, style) in zip(references, styles, strict=False):
            if ref[key]:
                ax.axhline(float(ref[key]), color=color, linestyle=style, label=ref["model"])
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("weight of each shopper objective")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("efficientnet_lite0 heads: the articleType objective plus colour, gender and identity objectives")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    out = source.with_suffix(".png")
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
