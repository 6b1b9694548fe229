"""download-catalog against a local fake of the Hugging Face hub (no network): parquet files of the
real schema, the tree API with size + sha256, Range requests, dropped connections, bad files."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imageretrieval import download
from imageretrieval.catalog import load_catalog, read_styles_csv
from imageretrieval.cli import main as cli_main
from imageretrieval.download import DownloadError, NetworkUnavailableError, fetch_catalog

REPO = "ashraq/fashion-product-images-small"


@pytest.fixture(autouse=True)
def _local_hub_allowed(monkeypatch):
    """conftest sets HF_HUB_OFFLINE=1; these tests only talk to a server on 127.0.0.1."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def jpeg(colour: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (60, 80), colour).save(buf, format=fmt)
    return buf.getvalue()


def make_parquet(path: Path, rows: list[dict]) -> bytes:
    """A parquet file with the hub dataset's columns (image = struct{bytes, path}); returns its bytes."""
    schema = pa.schema([
        ("id", pa.int64()), ("gender", pa.string()), ("masterCategory", pa.string()), ("subCategory", pa.string()),
        ("articleType", pa.string()), ("baseColour", pa.string()), ("season", pa.string()), ("year", pa.float64()),
        ("usage", pa.string()), ("productDisplayName", pa.string()),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=2)
    return path.read_bytes()


def product(pid: int, image: bytes | None, **kw) -> dict:
    row = {"id": pid, "gender": "Men", "masterCategory": "Apparel", "subCategory": "Topwear",
           "articleType": "Tshirts", "baseColour": "Blue", "season": "Summer", "year": 2012.0, "usage": "Casual",
           "productDisplayName": f"Product {pid}", "image": {"bytes": image, "path": f"{pid}.jpg"}}
    row.update(kw)
    return row


class FakeHub:
    """Serves /api/datasets/<repo>/tree/main and /datasets/<repo>/resolve/main/<path> with Range support."""

    def __init__(self, files: dict[str, bytes], published: dict[str, dict] | None = None):
        self.files = files
        self.published = published or {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.drop_after: dict[str, int] = {}  # path -> send only this many bytes once, then close
        self.ignore_range = False
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                hub.requests.append((self.path, self.headers.get("Range")))
                if self.path.startswith(f"/api/datasets/{REPO}/tree/main"):
                    body = json.dumps(hub.tree()).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                prefix = f"/datasets/{REPO}/resolve/main/"
                name = self.path[len(prefix):] if self.path.startswith(prefix) else None
                if name not in hub.files:
                    self.send_error(404)
                    return
                data = hub.files[name]
                start = 0
                rng = self.headers.get("Range")
                if rng and not hub.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = hub.drop_after.pop(name, None)
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def tree(self) -> list[dict]:
        out = [{"type": "directory", "path": "data", "oid": "0"}, {"type": "file", "path": "README.md", "size": 10}]
        for name, data in self.files.items():
            meta = self.published.get(name, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            out.append({"type": "file", "path": name, "size": meta["size"], "oid": "gitsha",
                        "lfs": {"oid": meta["sha256"], "size": meta["size"], "pointerSize": 134}})
        return out

    def file_requests(self) -> list[tuple[str, str | None]]:
        return [r for r in self.requests if "/resolve/" in r[0]]

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hub_files(tmp_path) -> dict[str, bytes]:
    src = tmp_path / "src"
    src.mkdir()
    first = make_parquet(src / "a.parquet", [
        product(15970, jpeg((10, 20, 200)), productDisplayName="Turtle Check Men Navy Blue Shirt"),
        product(3413, jpeg((250, 250, 250)), productDisplayName="Myntra Men's Yes, its all about me White T-shirt"),
        product(59263, jpeg((0, 0, 0), "PNG"), gender="Women", articleType="Watches", year=None, usage=None),
    ])
    second = make_parquet(src / "b.parquet", [
        product(21379, jpeg((200, 10, 10)), baseColour="Red", usage="NA"),
        product(99999, None, productDisplayName="No image here"),
        product(3413, jpeg((1, 2, 3)), productDisplayName="a duplicate id"),
    ])
    return {"data/train-00000-of-00002.parquet": first, "data/train-00001-of-00002.parquet": second}


def test_download_writes_standard_catalog_and_is_idempotent(tmp_path, hub_files):
    out = tmp_path / "catalog"
    with FakeHub(hub_files) as hub:
        assert fetch_catalog(out, tmp_path / "dl", endpoint=hub.endpoint, progress=False) == out
        assert len(hub.file_requests()) == 2
        df = read_styles_csv(out / "styles.csv")
        assert sorted(df["id"]) == [3413, 15970, 21379, 59263, 99999]
        by_id = df.set_index("id")
        assert by_id.loc[3413, "productDisplayName"] == "Myntra Men's Yes, its all about me White T-shirt"
        assert by_id.loc[59263, "usage"] == "" and by_id.loc[21379, "usage"] == ""
        assert by_id.loc[15970, "year"] == 2012 and by_id.loc[59263, "year"] is pd_na()
        catalog = load_catalog(out)
        assert sorted(catalog.ids) == [3413, 15970, 21379, 59263]  # 99999 has no image
        assert (out / "images" / "15970.jpg").read_bytes() == jpeg((10, 20, 200))  # JPEG kept byte for byte
        with Image.open(out / "images" / "59263.jpg") as im:  # the PNG became a JPEG
            assert im.format == "JPEG" and im.size == (60, 80)
        with Image.open(out / "images" / "3413.jpg") as im:  # first occurrence of a duplicate id wins
            assert im.getpixel((30, 40))[0] > 200
        marker = json.loads((out / ".complete").read_text())
        assert marker["images"] == 4 and marker["without_image"] == 1 and marker["duplicates"] == 1
        assert not (tmp_path / "dl").exists()  # parquet files removed after conversion

        fetch_catalog(out, tmp_path / "dl", endpoint=hub.endpoint, progress=False)  # second run: no-op
        assert len(hub.file_requests()) == 2
        assert len(hub.requests) == 3  # one tree listing, two files: nothing new


def pd_na():
    import pandas as pd

    return pd.NA


def test_partial_file_is_resumed_with_a_range_request(tmp_path, hub_files):
    name = "data/train-00000-of-00002.parquet"
    dl = tmp_path / "dl"
    dl.mkdir()
    half = len(hub_files[name]) // 2
    (dl / (name.replace("/", "__") + ".part")).write_bytes(hub_files[name][:half])
    with FakeHub(hub_files) as hub:
        fetch_catalog(tmp_path / "catalog", dl, endpoint=hub.endpoint, keep_downloads=True, progress=False)
        ranges = dict(hub.file_requests())
    assert ranges[f"/datasets/{REPO}/resolve/main/{name}"] == f"bytes={half}-"
    assert (dl / name.replace("/", "__")).read_bytes() == hub_files[name]
    assert not list(dl.glob("*.part"))


def test_dropped_connection_resumes_where_it_stopped(tmp_path, hub_files):
    name = "data/train-00001-of-00002.parquet"
    with FakeHub(hub_files) as hub:
        hub.drop_after[name] = 700
        dest = download.download_file(f"{hub.endpoint}/datasets/{REPO}/resolve/main/{name}", tmp_path / "f.parquet",
                                      size=len(hub_files[name]),
                                      sha256=hashlib.sha256(hub_files[name]).hexdigest(), progress=False,
                                      sleep=lambda s: None)
        assert [r for _, r in hub.file_requests()] == [None, "bytes=700-"]
    assert dest.read_bytes() == hub_files[name]


def test_server_ignoring_range_restarts_cleanly(tmp_path, hub_files):
    name = "data/train-00001-of-00002.parquet"
    dest = tmp_path / "f.parquet"
    dest.with_name("f.parquet.part").write_bytes(b"garbage-prefix")
    with FakeHub(hub_files) as hub:
        hub.ignore_range = True
        download.download_file(f"{hub.endpoint}/datasets/{REPO}/resolve/main/{name}", dest,
                               size=len(hub_files[name]), sha256=hashlib.sha256(hub_files[name]).hexdigest(),
                               progress=False)
    assert dest.read_bytes() == hub_files[name]


def test_checksum_mismatch_is_refused_and_nothing_is_written(tmp_path, hub_files):
    name = "data/train-00000-of-00002.parquet"
    published = {name: {"size": len(hub_files[name]), "sha256": "0" * 64}}
    out = tmp_path / "catalog"
    with FakeHub(hub_files, published) as hub, pytest.raises(DownloadError, match="sha256"):
        fetch_catalog(out, tmp_path / "dl", endpoint=hub.endpoint, progress=False)
    assert not out.exists()
    assert not list((tmp_path / "dl").glob("*train-00000*"))  # the bad file was deleted


def test_size_mismatch_is_refused(tmp_path, hub_files):
    name = "data/train-00000-of-00002.parquet"
    published = {name: {"size": len(hub_files[name]) - 5, "sha256": hashlib.sha256(hub_files[name]).hexdigest()}}
    with FakeHub(hub_files, published) as hub, pytest.raises(DownloadError):
        fetch_catalog(tmp_path / "catalog", tmp_path / "dl", endpoint=hub.endpoint, progress=False)
    assert not (tmp_path / "catalog").exists()


def test_unreadable_parquet_is_refused(tmp_path):
    files = {"data/train.parquet": b"PAR1 this is not a parquet file PAR1"}
    with FakeHub(files) as hub, pytest.raises(DownloadError, match="not a readable parquet"):
        fetch_catalog(tmp_path / "catalog", tmp_path / "dl", endpoint=hub.endpoint, progress=False)


def test_wrong_schema_is_refused(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": [1], "name": ["x"]}), path)
    with FakeHub({"data/x.parquet": path.read_bytes()}) as hub, pytest.raises(DownloadError, match="lacks the column"):
        fetch_catalog(tmp_path / "catalog", tmp_path / "dl", endpoint=hub.endpoint, progress=False)


def unreachable_endpoint() -> str:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_no_network_raises_network_unavailable(tmp_path):
    with pytest.raises(NetworkUnavailableError):
        fetch_catalog(tmp_path / "catalog", tmp_path / "dl", endpoint=unreachable_endpoint(), progress=False)


def test_cli_falls_back_to_a_labelled_synthetic_catalog(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path), "download-catalog", "--endpoint", unreachable_endpoint(),
            "--fallback-synthetic", "--synthetic-per-class", "2", "--no-progress"]
    assert cli_main(argv) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == tmp_path / "catalog" / "synthetic"
    assert (path / "SYNTHETIC").is_file() and len(load_catalog(path)) == 16
    assert cli_main(argv) == 0  # second run reuses it
    assert Path(capsys.readouterr().out.strip()) == path


def test_cli_without_fallback_fails_plainly(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path), "download-catalog", "--endpoint", unreachable_endpoint(), "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot reach" in err and "--fallback-synthetic" in err


def test_cli_downloads_from_the_hub_and_prints_the_path(tmp_path, hub_files, capsys):
    with FakeHub(hub_files) as hub:
        argv = ["--workdir", str(tmp_path), "download-catalog", "--endpoint", hub.endpoint, "--no-progress"]
        assert cli_main(argv) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == tmp_path / "catalog" / "fashion-product-small"
    assert len(load_catalog(path)) == 4 and not (path / "SYNTHETIC").exists()


def test_hub_offline_env_skips_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NetworkUnavailableError, match="HF_HUB_OFFLINE"):
        fetch_catalog(tmp_path / "catalog", tmp_path / "dl", endpoint="http://127.0.0.1:9", progress=False)


def test_module_entry_point_without_the_full_cli(tmp_path, monkeypatch, capsys):
    """`python -m imageretrieval.commands.download_catalog` (used by make demo) is the same command."""
    from imageretrieval.commands import download_catalog

    monkeypatch.setenv("WORKDIR", str(tmp_path))
    assert download_catalog.main(["--endpoint", unreachable_endpoint(), "--fallback-synthetic",
                                  "--synthetic-per-class", "1", "--no-progress"]) == 0
    assert Path(capsys.readouterr().out.strip()) == tmp_path / "catalog" / "synthetic"
    assert download_catalog.main(["--endpoint", unreachable_endpoint(), "--no-progress"]) == 2
    assert "cannot reach" in capsys.readouterr().err
