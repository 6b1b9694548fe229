#!/usr/bin/env python3
"""Plot quality against encoder speed per input size: docs/figures/input-size.csv -> input-size.png.

    python scripts/plot_input_size.py [docs/figures/input-size.csv]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/figures/input-size.csv")
    rows = list(csv.DictReader(line for line in source.read_text().splitlines() if not line.startswith("#")))
    fig, ax = plt.subplots(figsize=(10, 4.8))
    series = [("pretrained_catalog_p15", "catalog, lite0 pretrained", "tab:blue", "o:"),
              ("pretrained_photos_p15", "photos, lite0 pretrained", "tab:orange", "o:"),
              ("shipped_heads_catalog_p15", "catalog, shipped heads (trained at 224)", "tab:blue", "s-"),
              ("shipped_heads_photos_p15", "photos, shipped heads (trained at 224)", "tab:orange", "s-"),
              ("mlp40_catalog_p15", "catalog, mlp40 head trained at that size", "tab:blue", "^--"),
              ("mlp40_photos_p15", "photos, mlp40 head trained at that size", "tab:orange", "^--"),
              ("three_heads_retrained_catalog_p15", "catalog, 3 heads retrained at that size", "tab:green", "D-"),
              ("three_heads_retrained_photos_p15", "photos, 3 heads retrained at that size", "tab:red", "D-")]
    for key, label, color, style in series:
        points = [(float(r["throughput_img_s"]), float(r[key]), r["input"]) for r in rows if r[key]]
        ax.plot([p[0] for p in points], [p[1] for p in points], style, color=color, label=label)
        if key == "pretrained_catalog_p15":  # name each input size once
            for x, y, name in points:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("ONNX Runtime, batch 32 (img/s, 2 cores)")
    ax.set_ylabel("P@15")
    ax.set_title("efficientnet_lite0: input size (WxH) vs speed and quality")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    out = source.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
