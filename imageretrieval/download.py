"""Fetch the public Fashion Product Images (small) catalog and write the standard layout.

The Hugging Face hub hosts a copy (dataset `ashraq/fashion-product-images-small`): parquet files
with the styles.csv columns and the JPEG bytes embedded in an `image` struct. `fetch_catalog`
lists them with the hub's tree API (size and sha256 of each file), downloads them with a progress
bar, resumes partial files with HTTP Range requests, checks size, sha256 and that the parquet is
readable, then writes `styles.csv` + `images/<id>.jpg` (+ a `.complete` marker: a second run is a
no-op). Everything goes through `urllib` against `endpoint`, so tests serve a local parquet file.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .catalog import COLUMNS
from .io_utils import load_json, save_json

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REPO = "ashraq/fashion-product-images-small"
DEFAULT_REVISION = "main"
COMPLETE_MARKER = ".complete"
CHUNK = 1 << 20
TIMEOUT_S = 30.0
ATTEMPTS = 4


class DownloadError(RuntimeError):
    """The catalog could not be downloaded or failed an integrity check; the message says which."""


class NetworkUnavailableError(DownloadError):
    """The hub cannot be reached at all (offline, DNS, proxy): the caller may fall back."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # path inside the dataset repository, e.g. data/train-00000-of-00002.parquet
    size: int | None
    sha256: str | None

    @property
    def local_name(self) -> str:
        return self.path.replace("/", "__")


def endpoint_from_env() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _open(url: str, headers: dict[str, str] | None = None, timeout: float = TIMEOUT_S):
    req = urllib.request.Request(url, headers={"User-Agent": "imageretrieval-download/1", **(headers or {})})
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/https endpoint only)


def list_parquet_files(endpoint: str, repo: str, revision: str) -> list[RemoteFile]:
    """The dataset's parquet files with the size and sha256 the hub publishes (LFS metadata)."""
    url = f"{endpoint}/api/datasets/{repo}/tree/{quote(revision, safe='')}?recursive=true"
    try:
        with _open(url) as resp:
            entries = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"the hub answered HTTP {exc.code} for {url}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NetworkUnavailableError(f"cannot reach {endpoint}: {reason}") from exc
    except json.JSONDecodeError as exc:
        raise DownloadError(f"the hub's file list at {url} is not JSON") from exc
    files = []
    for e in entries:
        if e.get("type") != "file" or not str(e.get("path", "")).endswith(".parquet"):
            continue
        lfs = e.get("lfs") or {}
        size = lfs.get("size", e.get("size"))
        files.append(RemoteFile(path=e["path"], size=int(size) if size is not None else None,
                                sha256=lfs.get("oid") or lfs.get("sha256")))
    if not files:
        raise DownloadError(f"no parquet file in {repo}@{revision} on {endpoint}")
    return sorted(files, key=lambda f: f.path)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _progress(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled, leave=False)


def download_file(url: str, dest: Path, size: int | None = None, sha256: str | None = None,
                  progress: bool = True, attempts: int = ATTEMPTS, sleep: Callable[[float], None] = time.sleep) -> Path:
    """Download `url` to `dest`, resuming `dest.part` with Range requests; verify size and sha256.

    A dropped connection is retried (resuming where it stopped); a file that fails its checks is
    deleted and raises DownloadError. `dest` only appears once it is complete and verified.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for attempt in range(1, attempts + 1):
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:
            part.unlink()
            have = 0
        if size is not None and have == size:
            break
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with _open(url, headers) as resp:
                status = resp.status
                if have and status != 206:
                    log.info("the server ignored the Range request: downloading %s from the start", dest.name)
                    have = 0
                mode = "ab" if have else "wb"
                length = resp.headers.get("Content-Length")
                total = size if size is not None else (have + int(length) if length else None)
                with open(part, mode) as fh, _progress(total, have, dest.name, progress) as bar:
                    while block := resp.read(CHUNK):
                        fh.write(block)
                        bar.update(len(block))
            got = part.stat().st_size
            if size is None or got == size:
                break
            if got > size:  # not an interruption: the file is not the one the hub describes
                part.unlink()
                raise DownloadError(f"{dest.name}: got {got} bytes, the hub says {size}; deleted, run again")
            last_error = DownloadError(f"{dest.name}: connection closed at {part.stat().st_size} of {size} bytes")
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have and (size is None or have == size):
                break  # already complete
            if exc.code == 416:
                part.unlink(missing_ok=True)
            if 400 <= exc.code < 500 and exc.code not in (408, 416, 429):
                raise DownloadError(f"HTTP {exc.code} downloading {url}") from exc
            last_error = exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # resets, timeouts, bad reads
            last_error = exc
        if attempt < attempts:
            wait = min(2.0 ** (attempt - 1), 8.0)
            log.warning("download of %s interrupted (%s); resuming in %.0f s", dest.name, last_error, wait)
            sleep(wait)
    else:
        if isinstance(last_error, urllib.error.URLError) and not isinstance(last_error, urllib.error.HTTPError):
            raise NetworkUnavailableError(f"cannot download {url}: {last_error.reason}") from last_error
        raise DownloadError(f"could not download {url} after {attempts} attempts: {last_error}")

    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise DownloadError(f"{dest.name}: got {got} bytes, the hub says {size}; deleted, run again")
    if sha256:
        digest = sha256_of(part)
        if digest != sha256.lower():
            part.unlink()
            raise DownloadError(f"{dest.name}: sha256 {digest} does not match the hub's {sha256}; deleted, run again")
    os.replace(part, dest)
    return dest


IMAGE_COLUMN = "image"


def check_parquet(path: Path) -> int:
    """Open the parquet file and check its schema; returns its number of rows."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DownloadError(f"{path.name} is not a readable parquet file ({exc}); delete it and run again") from exc
    names = set(pf.schema_arrow.names)
    missing = [c for c in [*COLUMNS, IMAGE_COLUMN] if c not in names]
    if missing:
        raise DownloadError(f"{path.name} lacks the column(s) {', '.join(missing)}; is this the right dataset?")
    return pf.metadata.num_rows


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else str(value)  # NaN -> ""
    text = str(value).strip()
    return "" if text in {"NA", "nan", "NaN", "None"} else text


def _year(value) -> str:
    try:
        return "" if value is None or value != value else str(int(round(float(value))))
    except (TypeError, ValueError):
        return ""


def _jpeg_bytes(data: bytes) -> bytes:
    """The image as JPEG bytes: JPEG is kept byte for byte, other formats are converted."""
    if data[:3] == b"\xff\xd8\xff":
        return data
    from .images import open_image

    buf = io.BytesIO()
    open_image(data).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_catalog(parquet_files: Iterable[Path], out: Path, progress: bool = True) -> dict:
    """Write styles.csv + images/<id>.jpg from the parquet files into `out` (atomically replaced)."""
    import pyarrow.parquet as pq
    from tqdm import tqdm

    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    files = list(parquet_files)
    total = sum(check_parquet(f) for f in files)
    rows: dict[int, list[str]] = {}
    stats = {"products": 0, "images": 0, "without_image": 0, "unreadable_images": 0, "duplicates": 0}
    with tqdm(total=total, desc="writing catalog", unit="product", disable=not progress, leave=False) as bar:
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024, columns=[*COLUMNS, IMAGE_COLUMN]):
                for rec in batch.to_pylist():
                    bar.update(1)
                    try:
                        pid = int(rec["id"])
                    except (TypeError, ValueError):
                        continue
                    if pid in rows:
                        stats["duplicates"] += 1
                        continue
                    rows[pid] = [str(pid), *(_text(rec[c]) for c in COLUMNS[1:7]), _year(rec["year"]),
                                 _text(rec["usage"]), _text(rec["productDisplayName"])]
                    image = rec.get(IMAGE_COLUMN) or {}
                    data = image.get("bytes") if isinstance(image, dict) else None
                    if not data:
                        stats["without_image"] += 1
                        continue
                    try:
                        (staging / "images" / f"{pid}.jpg").write_bytes(_jpeg_bytes(data))
                        stats["images"] += 1
                    except ValueError as exc:  # ImageDecodeError
                        stats["unreadable_images"] += 1
                        log.warning("product %d: image skipped (%s)", pid, exc)
    if not stats["images"]:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError("the parquet files hold no usable image")
    stats["products"] = len(rows)
    with open(staging / "styles.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(rows[pid] for pid in sorted(rows))
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return stats


def default_catalog_dir(workdir: Path) -> Path:
    return Path(workdir) / "catalog" / "fashion-product-small"


def catalog_is_complete(out: Path, repo: str, revision: str) -> bool:
    marker = Path(out) / COMPLETE_MARKER
    if not marker.is_file() or not (Path(out) / "styles.csv").is_file():
        return False
    try:
        info = load_json(marker)
    except (OSError, ValueError):
        return False
    return info.get("repo") == repo and info.get("revision") == revision


def fetch_catalog(out: Path, downloads: Path, endpoint: str | None = None, repo: str = DEFAULT_REPO,
                  revision: str = DEFAULT_REVISION, force: bool = False, keep_downloads: bool = False,
                  progress: bool = True) -> Path:
    """Download the hub's parquet files and write the catalog at `out`. A no-op when complete."""
    out, downloads = Path(out), Path(downloads)
    if not force and catalog_is_complete(out, repo, revision):
        log.info("catalog already downloaded in %s", out)
        return out
    if hub_offline():
        raise NetworkUnavailableError("HF_HUB_OFFLINE is set: not downloading")
    endpoint = (endpoint or endpoint_from_env()).rstrip("/")
    remote = list_parquet_files(endpoint, repo, revision)
    total = sum(f.size or 0 for f in remote)
    log.info("downloading %d parquet file(s), %.0f MB, from %s (%s)", len(remote), total / 1e6, repo, endpoint)
    local = []
    for f in remote:
        dest = downloads / f.local_name
        verified = dest.with_name(dest.name + ".verified.json")
        if dest.is_file() and verified.is_file() and load_json(verified) == {"size": f.size, "sha256": f.sha256}:
            local.append(dest)
            continue
        dest.unlink(missing_ok=True)
        url = f"{endpoint}/datasets/{repo}/resolve/{quote(revision, safe='')}/{quote(f.path)}"
        download_file(url, dest, f.size, f.sha256, progress=progress)
        check_parquet(dest)
        save_json(verified, {"size": f.size, "sha256": f.sha256})
        local.append(dest)
    stats = write_catalog(local, out, progress=progress)
    save_json(out / COMPLETE_MARKER, {"repo": repo, "revision": revision, "endpoint": endpoint,
                                      "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in remote],
                                      **stats})
    log.info("catalog written to %s: %d products, %d images (%d without image)", out, stats["products"],
             stats["images"], stats["without_image"])
    if not keep_downloads:
        shutil.rmtree(downloads, ignore_errors=True)
    return out
