"""Results files under <WORKDIR>/results/: an append-only CSV and Markdown table of every run (the
seed's columns plus recall), per-model summary.json for the API, and per-run curves for the plots."""

from __future__ import annotations

import csv
import fcntl
import logging
import math
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from ..io_utils import load_json, save_json

log = logging.getLogger(__name__)

SEED_COLUMNS = ["Model", "DataSetSize", "UsedFeatures", "FeaturesSize", "ProcessTime", "mAPqueries", "mAP",
                "PrecisionHits"]
COLUMNS = ["Model", "Protocol", *SEED_COLUMNS[1:], "R@1", "R@10", "R@20", "mAP@R", "mAP_seed",
           "Database", "Relevance", "QueryResolution", "WhiteningFit", "Created"]
DISPLAY_COLUMNS = [*SEED_COLUMNS, "R@1", "R@10", "R@20", "mAP@R", "mAP_seed"]


def results_dir(workdir: Path) -> Path:
    return Path(workdir) / "results"


def model_results_dir(workdir: Path, model: str) -> Path:
    return results_dir(workdir) / model


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def results_row(model: str, protocol: str, used_features: str, features_size: int, seconds: float,
                metrics: dict, info: dict) -> dict:
    """One table row; metrics that do not apply stay empty."""
    return {
        "Model": model, "Protocol": protocol, "DataSetSize": metrics["database"], "UsedFeatures": used_features,
        "FeaturesSize": features_size, "ProcessTime": f"{seconds:.1f}", "mAPqueries": metrics["queries"],
        "mAP": metrics["mAP"], "PrecisionHits": metrics["PrecisionHits"], "R@1": metrics.get("R@1"),
        "R@10": metrics.get("R@10"), "R@20": metrics.get("R@20"), "mAP@R": metrics.get("mAP@R"),
        "mAP_seed": metrics.get("mAP_seed"), "Database": info.get("database", ""),
        "Relevance": info.get("relevance", ""), "QueryResolution": info.get("query_resolution", ""),
        "WhiteningFit": info.get("whitening_fit", ""), "Created": now(),
    }


def markdown_row(row: dict, columns: list[str] = COLUMNS) -> str:
    return "| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |"


def markdown_header(columns: list[str] = COLUMNS) -> str:
    return "| " + " | ".join(columns) + " |\n|" + "|".join("---" for _ in columns) + "|"


def markdown_table(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    return "\n".join([markdown_header(columns), *(markdown_row(r, columns) for r in rows)])


def append_results(workdir: Path, row: dict) -> tuple[Path, Path]:
    """Append the row to results.csv and results.md (headers written when the files are new)."""
    out = results_dir(workdir)
    csv_path, md_path = out / "results.csv", out / "results.md"
    with _locked(csv_path):
        _set_aside_if_other_columns(csv_path)
        new = not csv_path.is_file()
        with open(csv_path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            w.writerow({c: _fmt(row.get(c)) for c in COLUMNS})
        new = not md_path.is_file()
        with open(md_path, "a") as fh:
            if new:
                fh.write("# Evaluation runs (appended by `imageretrieval evaluate`)\n\n" + markdown_header() + "\n")
            fh.write(markdown_row(row) + "\n")
    return csv_path, md_path


def _set_aside_if_other_columns(csv_path: Path) -> None:
    """A results.csv with other columns (an older version's, or damaged) is kept under a dated name and a new
    one started: rows appended under another header would land in the wrong columns."""
    if not csv_path.is_file():
        return
    try:
        with open(csv_path, newline="") as fh:
            header = next(csv.reader(fh), None)
    except (UnicodeDecodeError, csv.Error):
        header = None
    if header == COLUMNS:
        return
    kept = csv_path.with_name(f"{csv_path.stem}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.csv")
    csv_path.rename(kept)
    log.warning("%s had other columns: kept as %s, a new one is started", csv_path, kept.name)


def shopper_metrics(metrics: dict) -> dict:
    """The shopper-agreement figures of a run (evaluation/agreement.py) and the exact product's R@1."""
    return {k: v for k, v in metrics.items() if "@" in k and k.split("@")[0] in SHOPPER_PREFIXES}


SHOPPER_PREFIXES = ("colour", "gender", "type+colour+gender", "exact_R")


def write_summary(workdir: Path, model: str, protocol: str, features: str, metrics: dict) -> Path:
    """<WORKDIR>/results/<model>/summary.json, read by the API (latest catalog-protocol run wins)."""
    path = model_results_dir(workdir, model) / "summary.json"
    save_json(path, {
        "protocol": protocol, "features": features, "mAP": metrics["mAP"],
        "PrecisionHits": metrics["PrecisionHits"], "R@1": metrics["R@1"], "R@10": metrics["R@10"],
        **shopper_metrics(metrics),
        "queries": metrics["queries"], "database": metrics["database"], "created": now(),
    })
    return path


def save_run(workdir: Path, model: str, key: str, data: dict) -> Path:
    """The latest run of (model, protocol, features): metrics and the precision@k curve."""
    path = model_results_dir(workdir, model) / f"{key}.json"
    save_json(path, data)
    return path


def load_runs(workdir: Path, key: str) -> dict[str, dict]:
    """Latest run with this key for every model that has one."""
    runs = {}
    for path in sorted(results_dir(workdir).glob(f"*/{key}.json")):
        runs[path.parent.name] = load_json(path)
    return runs
