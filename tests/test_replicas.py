"""Stateless API replicas: a Milvus server, two API processes on it, nginx balancing them (all real).

The Milvus is Milvus Lite's own gRPC server (`milvus-lite server`), reached over http:// as a
Milvus standalone would be; the replicas share it and the workdir (the catalog journal, the images).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from PIL import Image

from .test_browser_e2e import REPO, free_port, nginx_conf, stop, unavailable, wait_for

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")


def request(url: str, method: str = "GET", fields: dict | None = None, files: dict | None = None,
            headers: dict | None = None, body: dict | None = None) -> tuple[int, dict]:
    """A multipart, JSON (`body`) or plain request with the standard library; (status, JSON answer)."""
    head = dict(headers or {})
    if body is not None:
        body, head["Content-Type"] = json.dumps(body).encode(), "application/json"
    if fields is not None or files is not None:
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in (fields or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, (filename, data) in (files or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                         f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        head["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    req = urllib.request.Request(url, data=body, method=method, headers=head)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def png(seed: int) -> bytes:
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 255, (96, 72, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).resize((120, 160)).save(out, "PNG")
    return out.getvalue()


def searches_served(base: str) -> float:
    """POST /api/search requests answered 200, from the replica's Prometheus metrics."""
    with urllib.request.urlopen(f"{base}/api/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("api_requests_total{") and 'route="/api/search"' in line and 'status="200"' in line)


def top_ids(base: str, image: bytes, k: int = 5, **fields) -> list[int]:
    status, body = request(f"{base}/api/search", "POST", fields={"top_k": k, **fields}, files={"image": ("q.png", image)})
    assert status == 200, body
    return [hit["id"] for hit in body["results"]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, synthetic_catalog, built_workdir):
    nginx = nginx_conf.find_nginx()
    if nginx is None:
        unavailable("nginx is not installed (apt-get install nginx, or run scripts/test-deps.sh)")
    from imageretrieval.backends.loading import load_into_milvus
    from imageretrieval.keys import KeyStore

    from .conftest import make_settings

    tmp = tmp_path_factory.mktemp("replicas")
    workdir = tmp / "wd"
    shutil.copytree(built_workdir, workdir)
    key = KeyStore(workdir).create("shop", "write")[1]
    milvus_port = free_port()
    procs: list[subprocess.Popen] = []
    logs = tmp / "logs"
    logs.mkdir()

    def start(args: list[str], name: str, env: dict) -> subprocess.Popen:
        with open(logs / f"{name}.log", "w") as fh:
            proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    try:
        milvus_args = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp / "milvus"),
                       "--host", "127.0.0.1", "--port", str(milvus_port)]
        milvus = start(milvus_args, "milvus", dict(os.environ))
        uri = f"http://127.0.0.1:{milvus_port}"
        settings = make_settings(synthetic_catalog, workdir, index_backend="milvus", milvus_uri=uri)
        deadline = time.monotonic() + 60
        while True:  # the server answers once its port is open
            try:
                load_into_milvus(settings, "tiny", progress=False)
                break
            except Exception:
                if milvus.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((logs / "milvus.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        env = {**os.environ, "WORKDIR": str(workdir), "DATASET_ROOT": str(synthetic_catalog), "DEFAULT_MODEL": "tiny",
               "MODELS": "tiny", "DEVICE": "cpu", "PRECISION": "fp32", "PCA_COMPONENTS": "32",
               "INDEX_BACKEND": "milvus", "MILVUS_URI": uri, "HF_HUB_OFFLINE": "1", "APP_DIST": str(tmp / "no-app")}
        ports = [free_port(), free_port()]
        apis = [start([sys.executable, "-m", "uvicorn", "retrievalapi.main:app", "--host", "127.0.0.1", "--port",
                       str(port)], f"api{i}", env) for i, port in enumerate(ports)]
        for i, (port, proc) in enumerate(zip(ports, apis, strict=True)):
            wait_for(f"http://127.0.0.1:{port}/api/ready", proc, logs / f"api{i}.log")
        web_port = free_port()
        prefix = tmp / "nginx"
        conf = nginx_conf.write_config(prefix, f"127.0.0.1:{web_port}", [f"127.0.0.1:{p}" for p in ports],
                                       REPO / "retrieval-app" / "dist", 10)
        (prefix / "error.log").touch()
        web = start([nginx, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"], "nginx", dict(os.environ))
        wait_for(f"http://127.0.0.1:{web_port}/api/health", web, prefix / "error.log", timeout=20)
        yield {"replicas": [f"http://127.0.0.1:{p}" for p in ports], "apis": apis, "nginx": f"http://127.0.0.1:{web_port}",
               "auth": {"Authorization": f"Bearer {key}"}, "catalog": Path(synthetic_catalog), "logs": logs,
               "milvus": milvus, "restart_milvus": lambda: start(milvus_args, "milvus-again", dict(os.environ))}
    finally:
        for proc in reversed(procs):
            stop(proc)


def test_replicas_answer_alike_and_see_each_others_writes(cluster):
    a, b = cluster["replicas"]
    query = (cluster["catalog"] / "images" / "1003.jpg").read_bytes()
    assert top_ids(a, query, 10) == top_ids(b, query, 10)
    assert top_ids(a, query, 5, gender="Women") == top_ids(b, query, 5, gender="Women")
    by_id = [request(f"{r}/api/search/by-id", "POST", body={"product_id": 1003, "top_k": 5, "rerank": "category"})
             for r in (a, b)]
    assert by_id[0][0] == by_id[1][0] == 200, by_id
    assert [h["id"] for h in by_id[0][1]["results"]] == [h["id"] for h in by_id[1][1]["results"]]
    assert len(by_id[0][1]["results"]) == 5 and 1003 not in [h["id"] for h in by_id[0][1]["results"]]

    new_id, image = 900700, png(7)
    status, body = request(f"{a}/api/products", "POST", headers=cluster["auth"], files={"image": ("p.png", image)},
                           fields={"id": new_id, "productDisplayName": "Replica tee", "gender": "Men",
                                   "masterCategory": "Apparel", "subCategory": "Topwear", "articleType": "Tshirts",
                                   "baseColour": "Teal"})
    assert status == 201, body
    assert top_ids(b, image, 1) == [new_id]  # written through a, found through b at once
    assert top_ids(b, image, 3, baseColour="Teal") == [new_id]  # a value new to b's facets
    status, product = request(f"{b}/api/products/{new_id}")
    assert status == 200 and product["productDisplayName"] == "Replica tee"
    assert request(f"{b}/api/products/{new_id}", "DELETE", headers=cluster["auth"])[0] == 200
    assert new_id not in top_ids(a, image, 10)
    assert request(f"{a}/api/products/{new_id}")[0] == 404


def test_a_write_while_milvus_is_down_is_journaled_then_applied(cluster):
    a, b = cluster["replicas"]
    new_id, image = 900800, png(8)
    stop(cluster["milvus"])
    started = time.monotonic()
    status, body = request(f"{a}/api/products", "POST", headers=cluster["auth"], files={"image": ("p.png", image)},
                           fields={"id": new_id, "productDisplayName": "Offline tee", "gender": "Women",
                                   "masterCategory": "Apparel", "subCategory": "Topwear", "articleType": "Tshirts"})
    assert status == 503 and "journal" in body["detail"], body
    assert time.monotonic() - started < 60
    status, body = request(f"{b}/api/search", "POST", fields={"top_k": 3}, files={"image": ("q.png", image)})
    assert status == 503 and "Milvus" in body["detail"]  # a clear answer, not a hang or a 500
    cluster["milvus"] = cluster["restart_milvus"]()
    deadline = time.monotonic() + 60
    found: list[int] = []
    while time.monotonic() < deadline:  # each replica's tailer applies the journaled write once Milvus answers
        status, body = request(f"{b}/api/search", "POST", fields={"top_k": 1}, files={"image": ("q.png", image)})
        found = [hit["id"] for hit in body.get("results", [])] if status == 200 else []
        if found == [new_id]:
            break
        time.sleep(0.5)
    assert found == [new_id], (status, body, *[(cluster["logs"] / f"api{i}.log").read_text()[-3000:] for i in (0, 1)],
                               (cluster["logs"] / "milvus-again.log").read_text()[-2000:])
    assert request(f"{a}/api/products/{new_id}")[1]["productDisplayName"] == "Offline tee"


def test_nginx_balances_and_survives_a_lost_replica(cluster):
    query = (cluster["catalog"] / "images" / "1004.jpg").read_bytes()
    expected = top_ids(cluster["replicas"][0], query, 5)
    for _ in range(6):
        assert top_ids(cluster["nginx"], query, 5) == expected
    assert all(searches_served(r) > 0 for r in cluster["replicas"])  # both replicas took searches
    stop(cluster["apis"][0])  # one replica is lost: nginx sends everything to the other
    for _ in range(4):
        assert top_ids(cluster["nginx"], query, 5) == expected


def test_the_scale_compose_file_validates_and_its_checks_bite():
    import copy

    import check_deploy
    import yaml

    res = subprocess.run([sys.executable, str(REPO / "scripts" / "check_deploy.py")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "scale profile: indexer, api, app, etcd, minio, milvus" in res.stdout
    base = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    overlay = yaml.safe_load((REPO / "docker-compose.scale.yml").read_text())
    broken = copy.deepcopy(overlay)
    broken["services"]["milvus"]["image"] = "milvusdb/milvus:latest"
    del broken["services"]["etcd"]["healthcheck"]
    broken["services"]["api"]["ports"] = ["8000:8000"]
    broken["services"]["indexer"]["command"] = ["imageretrieval", "index"]
    problems: list[str] = []
    check_deploy.check_scale_compose(base, problems, broken)
    assert len(problems) == 4, problems
