"""The search API over the synthetic catalog and the tiny test models: routes, bad input, batching, shutdown."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from benchmarks.serve import multipart_request, parse_server_timing
from retrievalapi import create_app
from retrievalapi.batcher import MicroBatcher, OverloadedError, normalize_filters
from retrievalapi.errors import format_validation_errors
from retrievalapi.metrics import Metrics
from retrievalapi.runtime import StartupError, load_engines
from retrievalapi.settings import ApiSettings

MAX_UPLOAD_MB = 0.25


def api_settings(catalog: Path, workdir: Path, **kw) -> ApiSettings:
    kw.setdefault("max_upload_mb", MAX_UPLOAD_MB)
    kw.setdefault("app_dist", workdir / "no-app")
    return ApiSettings(dataset_root=catalog, workdir=workdir, device="cpu", precision="fp32", num_workers=0,
                       default_model="tiny", **kw)


@pytest.fixture(scope="module")
def client(synthetic_catalog, built_workdir):
    with TestClient(create_app(api_settings(synthetic_catalog, built_workdir))) as c:
        yield c


@pytest.fixture(scope="module")
def catalog_df(synthetic_catalog):
    from imageretrieval.catalog import load_catalog

    return load_catalog(synthetic_catalog).df.set_index("id")


def image_bytes(catalog: Path, pid: int) -> bytes:
    return (catalog / "images" / f"{pid}.jpg").read_bytes()


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def search(client: TestClient, data: bytes, name: str = "q.jpg", **form):
    return client.post("/api/search", files={"image": (name, data, "application/octet-stream")}, data=form)


def png_header_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG signature + IHDR claiming width x height, with a tiny (bogus) IDAT: cheap to build."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def first_ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"]]


# ----- operations and catalog routes ------------------------------------------------------------
def test_health_ready_and_request_id(client):
    assert client.get("/api/health").json() == {"status": "ok"}
    r = client.get("/api/ready", headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200 and r.json() == {"status": "ready", "models": ["tiny", "tiny2"]}
    assert r.headers["x-request-id"] == "abc-123"
    assert len(client.get("/api/health", headers={"X-Request-ID": "bad id\n"}).headers["x-request-id"]) == 32


def test_models_lists_every_index_and_evaluation(client, built_workdir):
    body = client.get("/api/models").json()
    assert body["default"] == "tiny" and body["synthetic_catalog"] is True
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"tiny", "tiny2"}
    tiny = by_name["tiny"]
    assert tiny["default"] is True and by_name["tiny2"]["default"] is False
    assert tiny["index_size"] == 96 and tiny["dims"] == 32 and tiny["input_size"] == 64
    assert tiny["index_type"] == "Flat" and tiny["backbone"] == "test_efficientnet" and tiny["evaluation"] is None
    summary = built_workdir / "results" / "tiny2" / "summary.json"
    summary.parent.mkdir(parents=True)
    try:
        summary.write_text(json.dumps({"mAP": 0.5, "R@1": 0.75, "protocol": "synthetic"}))
        by_name = {m["name"]: m for m in client.get("/api/models").json()["models"]}
        assert by_name["tiny2"]["evaluation"] == {"mAP": 0.5, "R@1": 0.75, "protocol": "synthetic"}
    finally:
        shutil.rmtree(built_workdir / "results")


def test_facets_counts_sorted_without_empty_values(client, catalog_df):
    body = client.get("/api/facets").json()
    assert list(body) == ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]
    for field, items in body.items():
        counts = [i["count"] for i in items]
        assert counts == sorted(counts, reverse=True)
        assert all(i["value"] for i in items)
        expected = catalog_df[field][catalog_df[field] != ""].value_counts()
        assert {i["value"]: i["count"] for i in items} == expected.to_dict()
    assert "" not in {i["value"] for i in body["usage"]} and len(body["usage"]) == 3


def test_product_route(client, catalog_df):
    pid = int(catalog_df.index[5])
    body = client.get(f"/api/products/{pid}").json()
    assert body["id"] == pid and body["image_url"] == f"/api/images/{pid}?v=0"
    assert body["articleType"] == catalog_df.loc[pid, "articleType"]
    assert client.get("/api/products/999999").status_code == 404
    r = client.get("/api/products/abc")
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)


def test_image_route_etag_and_cache(client, synthetic_catalog):
    r = client.get("/api/images/1001")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == image_bytes(synthetic_catalog, 1001)
    assert r.headers["cache-control"] == "no-cache"  # the live catalog may change it: revalidated
    versioned = client.get("/api/images/1001?v=0")  # the URL results carry: long-lived
    assert versioned.headers["cache-control"] == "public, max-age=2592000, immutable"
    assert client.get("/api/images/1001?v=stale").headers["cache-control"] == "no-cache"
    etag = r.headers["etag"]
    again = client.get("/api/images/1001", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag and not again.content
    assert client.get("/api/images/1001", headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get("/api/images/424242").status_code == 404


@pytest.mark.parametrize("path", ["/api/images/..%2F..%2Fstyles.csv", "/api/images/1001.jpg", "/api/images/-1",
                                  "/api/images/%2e%2e", "/api/images/1e3"])
def test_image_route_refuses_path_tricks(client, path):
    r = client.get(path)
    assert r.status_code in (404, 422) and "detail" in r.json()


def test_access_log_is_structured(client, synthetic_catalog, caplog):
    import logging

    from retrievalapi.logs import JsonFormatter

    with caplog.at_level(logging.INFO, logger="retrievalapi.access"):
        client.post("/api/search", files={"image": ("q.jpg", image_bytes(synthetic_catalog, 1003), "image/jpeg")},
                    data={"top_k": "4", "model": "tiny2"}, headers={"X-Request-ID": "req-42"})
    record = next(r for r in caplog.records if r.name == "retrievalapi.access" and r.fields["request_id"] == "req-42")
    assert "request_id=req-42" in record.getMessage() and "status=200" in record.getMessage()
    payload = json.loads(JsonFormatter().format(record))
    assert payload["message"] == "request" and payload["status"] == 200 and payload["model"] == "tiny2"
    assert payload["k"] == 4 and payload["route"] == "/api/search" and payload["latency_ms"] > 0


def test_serve_command_logs_json_lines_when_asked(settings, synthetic_catalog, tmp_path):
    """`imageretrieval serve` (the API image's command) configures logging before the API can: LOG_FORMAT=json
    must still give JSON lines, its own and uvicorn's, one access line per request."""
    import os
    import subprocess
    import sys

    import httpx

    from benchmarks.serve import free_port, stop_server, wait_ready

    port, log_path = free_port(), tmp_path / "serve.log"
    env = {**os.environ, "LOG_FORMAT": "json", "APP_DIST": str(tmp_path / "no-app")}
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "imageretrieval.cli", "--workdir", str(settings.workdir),
                                 "--dataset-root", str(synthetic_catalog), "--device", "cpu", "serve",
                                 "--port", str(port), "--models", "tiny"], env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc, 120, log_path)
        httpx.post(f"{base}/api/search", files={"image": ("q.jpg", image_bytes(synthetic_catalog, 1003))},
                   headers={"X-Request-ID": "req-json"}).raise_for_status()
    finally:
        stop_server(proc)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert any(r.get("logger", "").startswith("uvicorn") for r in records)
    access = [r for r in records if r.get("message") == "request" and r.get("request_id") == "req-json"]
    assert len(access) == 1 and access[0]["status"] == 200


def test_metrics_exposes_requests_and_batches(client, synthetic_catalog):
    search(client, image_bytes(synthetic_catalog, 1002))
    text = client.get("/api/metrics").text
    assert 'api_requests_total{method="POST",model="tiny",route="/api/search",status="200"}' in text
    assert 'api_request_duration_seconds_bucket{le="0.005",method="POST",model="tiny",route="/api/search"}' in text
    assert 'api_batch_size_count{model="tiny"}' in text


# ----- search -----------------------------------------------------------------------------------
def test_search_finds_the_catalog_image_first(client, synthetic_catalog, catalog_df):
    r = search(client, image_bytes(synthetic_catalog, 1010), top_k="5")
    body = r.json()
    assert r.status_code == 200 and body["model"] == "tiny" and body["took_ms"] > 0
    hits = body["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0]["id"] == 1010 and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["image_url"] == "/api/images/1010?v=0"
    assert hits[0]["productDisplayName"] == catalog_df.loc[1010, "productDisplayName"]
    assert set(hits[0]) == {"rank", "id", "score", "productDisplayName", "articleType", "baseColour", "gender",
                            "masterCategory", "subCategory", "season", "usage", "year", "image_url"}
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_search_reports_where_its_time_went(client, synthetic_catalog):
    r = search(client, image_bytes(synthetic_catalog, 1011), top_k="3")
    timing = parse_server_timing(r.headers["server-timing"])
    assert set(timing) == {"decode", "queue", "forward", "search", "total"}
    assert 'desc="batch of 1"' in r.headers["server-timing"]
    assert all(ms >= 0 for ms in timing.values())
    assert timing["total"] >= timing["decode"] + timing["forward"] and timing["total"] == pytest.approx(
        r.json()["took_ms"], abs=0.01)
    by_id = client.post("/api/search/by-id", json={"product_id": 1040, "top_k": 3})
    assert set(parse_server_timing(by_id.headers["server-timing"])) == {"search", "total"}


def test_benchmark_upload_request_is_understood(client, synthetic_catalog):
    """The load generator's hand-built multipart request is a valid upload for the real app."""
    raw = multipart_request("testserver", 80, "q.jpg", image_bytes(synthetic_catalog, 1012), top_k=6)
    head, body = raw.split(b"\r\n\r\n", 1)
    content_type = next(line.split(": ", 1)[1] for line in head.decode().split("\r\n")
                        if line.startswith("Content-Type"))
    r = client.post("/api/search", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 200 and first_ids(r)[0] == 1012 and len(first_ids(r)) == 6


def test_search_top_k_default_alias_and_model(client, synthetic_catalog):
    data = image_bytes(synthetic_catalog, 1020)
    assert len(first_ids(search(client, data))) == 15
    assert len(first_ids(search(client, data, topK="4"))) == 4
    assert len(first_ids(search(client, data, top_k="2", topK="9"))) == 2
    other = search(client, data, model="tiny2", top_k="3")
    assert other.json()["model"] == "tiny2" and first_ids(other)[0] == 1020


def test_filters_or_within_and_across_fields(client, synthetic_catalog, catalog_df):
    data = image_bytes(synthetic_catalog, 1030)
    women = first_ids(search(client, data, top_k="40", gender="Women"))
    n_women = int((catalog_df["gender"] == "Women").sum())
    assert len(women) == min(40, n_women) and all(catalog_df.loc[i, "gender"] == "Women" for i in women)
    r = client.post("/api/search", files={"image": ("q.jpg", data, "image/jpeg")},
                    data={"top_k": "100", "baseColour": ["Red", "Blue"], "gender": "Men"})
    ids = first_ids(r)
    sub = catalog_df[catalog_df["baseColour"].isin(["Red", "Blue"]) & (catalog_df["gender"] == "Men")]
    assert sorted(ids) == sorted(sub.index.tolist())  # every match, K filtered results when K exist


def test_search_by_id_json_and_form(client, catalog_df):
    r = client.post("/api/search/by-id", json={"product_id": 1040, "top_k": 10})
    ids = first_ids(r)
    assert len(ids) == 10 and 1040 not in ids
    form = client.post("/api/search/by-id", data={"product_id": "1040", "topK": "10"})
    assert first_ids(form) == ids
    multipart = client.post("/api/search/by-id", files={"product_id": (None, "1040")}, data={"top_k": "10"})
    assert first_ids(multipart) == ids
    filtered = first_ids(client.post("/api/search/by-id", json={"product_id": 1040, "gender": "Men",
                                                                "articleType": ["Jeans", "Shorts"], "top_k": 50}))
    assert filtered and all(catalog_df.loc[i, "gender"] == "Men" for i in filtered)
    assert all(catalog_df.loc[i, "articleType"] in ("Jeans", "Shorts") for i in filtered) and 1040 not in filtered
    assert client.post("/api/search/by-id", json={"product_id": 1040, "model": "tiny2"}).json()["model"] == "tiny2"


def test_category_rerank_shows_one_type_first(client, synthetic_catalog, catalog_df):
    """rerank=category: the voted type (for by-id, the product's own) leads; visual order kept within it."""
    plain = client.post("/api/search", files={"image": ("q.jpg", image_bytes(synthetic_catalog, 1001))},
                        data={"top_k": "100"})  # the re-ranking's whole pool
    r = client.post("/api/search", files={"image": ("q.jpg", image_bytes(synthetic_catalog, 1001))},
                    data={"top_k": "30", "rerank": "category"})
    assert r.json()["rerank"] == "category" and plain.json()["rerank"] == "none"
    types = [hit["articleType"] for hit in r.json()["results"]]
    first = types[0]
    assert r.json()["type_first"] == first and plain.json()["type_first"] is None
    n_first = types.count(first)
    assert types[:n_first] == [first] * n_first  # one block, then the rest
    same_plain = [i for i in first_ids(plain) if catalog_df.loc[i, "articleType"] == first]
    assert first_ids(r)[:n_first] == same_plain[:n_first]  # visual order kept within the type
    by_id = client.post("/api/search/by-id", json={"product_id": 1040, "top_k": 11, "rerank": "category"}).json()
    own = catalog_df.loc[1040, "articleType"]
    assert by_id["rerank"] == "category" and [h["articleType"] for h in by_id["results"]] == [own] * 11
    assert by_id["type_first"] == own
    other = "Watches" if own != "Watches" else "Jeans"  # no result has the product's own type: nothing to show
    filtered = client.post("/api/search/by-id", json={"product_id": 1040, "rerank": "category",
                                                      "articleType": other}).json()
    assert filtered["results"] and filtered["type_first"] is None
    bad = client.post("/api/search", files={"image": ("q.jpg", image_bytes(synthetic_catalog, 1001))},
                      data={"rerank": "colour"})
    assert bad.status_code == 422 and "rerank" in bad.json()["detail"]


def test_gender_rerank_needs_the_models_gender_predictor(client, synthetic_catalog, catalog_df):
    """No predictor: an image search with rerank=gender is refused with the command that makes one."""
    assert {m["name"]: m["reranks"] for m in client.get("/api/models").json()["models"]}["tiny"] == ["none", "category"]
    for rerank in ("gender", "category+gender"):
        r = client.post("/api/search", files={"image": ("q.jpg", image_bytes(synthetic_catalog, 1001))},
                        data={"rerank": rerank})
        assert r.status_code == 400 and "finetune-rerank --model tiny --gender" in r.json()["detail"]
    by_id = client.post("/api/search/by-id", json={"product_id": 1040, "rerank": "gender", "top_k": 30})
    assert by_id.status_code == 200  # "more like this" takes the product's own gender: no predictor needed
    own = catalog_df.loc[1040, "gender"]
    fits = [h["gender"] in (own, "Unisex") for h in by_id.json()["results"]]
    assert fits == sorted(fits, reverse=True) and fits[0]


def test_gender_rerank_puts_the_predicted_gender_first(tmp_path, synthetic_catalog, catalog_df):
    """A predictor that always answers Women: Women and Unisex products lead, the visual order kept within; "more
    like this" uses the product's own gender; category+gender keeps the type first."""
    from imageretrieval.artifacts import build_model_index
    from imageretrieval.gender import GenderPredictor

    from .conftest import make_settings, make_tiny_model

    make_tiny_model(tmp_path, "tiny", seed=0)
    build_model_index(make_settings(synthetic_catalog, tmp_path, pca_components=0), "tiny", progress=False)
    GenderPredictor(("Men", "Women"), np.zeros((2, 256), np.float32), np.array([0.0, 5.0], np.float32),
                    threshold=0.5).save(tmp_path / "models" / "tiny" / "gender_predictor.npz")
    suits = {"Women", "Unisex"}
    with TestClient(create_app(api_settings(synthetic_catalog, tmp_path))) as c:
        assert c.get("/api/models").json()["models"][0]["reranks"] == ["none", "category", "gender", "category+gender"]
        query = {"image": ("q.jpg", image_bytes(synthetic_catalog, 1001))}
        plain = first_ids(c.post("/api/search", files=query, data={"top_k": "100"}))
        ranked = first_ids(c.post("/api/search", files=query, data={"top_k": "100", "rerank": "gender"}))
        fits = [catalog_df.loc[i, "gender"] in suits for i in ranked]
        n = sum(fits)
        assert sorted(ranked) == sorted(plain) and 0 < n < len(ranked)
        assert fits == [True] * n + [False] * (len(ranked) - n)
        assert ranked[:n] == [i for i in plain if catalog_df.loc[i, "gender"] in suits][:n]
        gender = c.post("/api/search", files=query, data={"top_k": "30", "rerank": "gender"}).json()
        assert gender["gender_first"] == "Women" and gender["type_first"] is None
        plain_answer = c.post("/api/search", files=query, data={"top_k": "30"}).json()
        assert plain_answer["gender_first"] is None
        both = c.post("/api/search", files=query, data={"top_k": "30", "rerank": "category+gender"}).json()
        assert both["gender_first"] == "Women"
        types = [h["articleType"] for h in both["results"]]
        n_type = types.count(both["type_first"])
        assert types[:n_type] == [both["type_first"]] * n_type
        fits = [h["gender"] in suits for h in both["results"][:n_type]]
        assert fits == sorted(fits, reverse=True)  # within the type: the gender first
        men = next(int(i) for i in catalog_df.index if catalog_df.loc[i, "gender"] == "Men")
        by_id = c.post("/api/search/by-id", json={"product_id": men, "top_k": 20, "rerank": "gender"}).json()
        fits = [h["gender"] in ("Men", "Unisex") for h in by_id["results"]]
        assert fits[0] and fits == sorted(fits, reverse=True) and by_id["gender_first"] == "Men"


def test_the_engine_and_the_evaluation_rerank_by_gender_alike(tmp_path, synthetic_catalog, catalog_df):
    """The same fitted predictor (neighbours weighed in), the same vectors: the same top 30, for both orders; and
    each reason a model cannot re-rank by gender is refused with its own message."""
    from imageretrieval.artifacts import build_model_index
    from imageretrieval.engine import RerankUnavailableError, RetrievalEngine
    from imageretrieval.evaluation.ranking import rank_queries
    from imageretrieval.gender import GenderPredictor, fit_gender_predictor
    from imageretrieval.rerank import encode_categories

    from .conftest import make_settings, make_tiny_model

    make_tiny_model(tmp_path, "tiny", seed=0)
    settings = make_settings(synthetic_catalog, tmp_path, pca_components=0)
    build_model_index(settings, "tiny", progress=False)
    engine = RetrievalEngine(settings, "tiny")
    vectors, ids = np.asarray(engine.vectors_file, np.float32), np.asarray(engine.index_ids)
    genders = catalog_df.loc[ids, "gender"].astype(str).to_numpy().astype(object)
    types = catalog_df.loc[ids, "articleType"].astype(str).to_numpy()
    predictor = fit_gender_predictor(vectors, genders, threshold=0.4)
    predictor.neighbour_weight = 0.5
    engine.gender_predictor = predictor
    queries = vectors[:10] + 0.3 * np.random.default_rng(0).standard_normal((10, vectors.shape[1])).astype(np.float32)
    codes, _ = encode_categories(types)
    for rerank in ("gender", "category+gender"):
        by_engine = [[h.id for h in hits] for hits in engine.search_vectors(queries, 30, rerank=rerank)]
        ranked = rank_queries(queries, vectors, types[:10], types, top_k=100, vote_k=engine.vote_k,
                              vote_alpha=engine.vote_alpha, genders=(genders, predictor, queries),
                              category_codes=codes if rerank == "category+gender" else None)
        assert by_engine == ids[ranked.top_rows[:, :30]].tolist(), rerank
    engine.gender_predictor = GenderPredictor(("Men", "Women"), np.zeros((2, 8), np.float32), np.zeros(2, np.float32))
    with pytest.raises(RerankUnavailableError, match="expects 8-d"):
        engine.search_vectors(queries, 5, rerank="gender")
    engine.gender_predictor, engine._gender_predictor_current = predictor, None
    predictor.probe_ids, predictor.probe_vectors = ids[:3], -vectors[:3]  # trained on "another version"
    with pytest.raises(RerankUnavailableError, match="another version of the model"):
        engine.search_vectors(queries, 5, rerank="gender")
    assert engine.reranks == ["none", "category"]
    assert engine.search_by_id(int(ids[0]), 5, rerank="gender")  # "more like this" needs no predictor
    whitened = make_settings(synthetic_catalog, tmp_path, pca_components=16)
    build_model_index(whitened, "tiny", progress=False, force=True)
    predictor.probe_ids = np.zeros(0, np.int64)
    predictor.save(tmp_path / "models" / "tiny" / "gender_predictor.npz")
    engine = RetrievalEngine(whitened, "tiny")
    assert engine.reranks == ["none", "category"]
    with pytest.raises(RerankUnavailableError, match="whitens"):
        engine.search_vectors(queries[:, :16] if engine.dims == 16 else queries, 5, rerank="gender")


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"product_id": 999999}, 404, "999999"),
    ({"product_id": 1040, "rerank": "shuffle"}, 422, "rerank"),
    ({"top_k": 3}, 422, "product_id"),
    ({"product_id": 1040, "top_k": 0}, 422, "top_k"),
    ({"product_id": 1040, "top_k": 101}, 422, "top_k"),
    ({"product_id": "1040"}, 422, "product_id"),
    ({"product_id": 1040, "model": "nope"}, 400, "nope"),
    ({"product_id": 1040, "gender": "Martian"}, 400, "Martian"),
    ({"product_id": 1040, "colour": "Red"}, 422, "colour"),
    ([1040], 422, "object"),
])
def test_search_by_id_bad_input(client, body, status, words):
    r = client.post("/api/search/by-id", json=body)
    assert r.status_code == status and words in r.json()["detail"]


def test_search_by_id_bad_bodies(client):
    r = client.post("/api/search/by-id", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    r = client.post("/api/search/by-id", content=b"product_id=1", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/api/search/by-id", files={"product_id": ("x.bin", b"1040", "application/octet-stream")})
    assert r.status_code == 422 and "file" in r.json()["detail"]


# ----- bad input never yields a 500 -------------------------------------------------------------
@pytest.mark.parametrize(("make", "status", "words"), [
    (lambda c: b"", 400, "empty"),
    (lambda c: b"this is not an image at all", 400, "not a supported image"),
    (lambda c: image_bytes(c, 1001)[: len(image_bytes(c, 1001)) // 2], 400, "truncated"),
    (lambda c: image_bytes(c, 1001)[:600] + b"\x00" * 400 + image_bytes(c, 1001)[1000:], 400, "image"),
    (lambda c: png_header_bomb(), 400, "too large"),
    (lambda c: b"GIF89a" + b"\xff" * 20, 400, "image"),
])
def test_bad_images_are_400(client, synthetic_catalog, make, status, words):
    r = search(client, make(synthetic_catalog))
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_pixel_limit_names_the_limit(synthetic_catalog, built_workdir):
    settings = api_settings(synthetic_catalog, built_workdir, max_image_pixels=10_000, models="tiny")
    with TestClient(create_app(settings)) as c:
        r = search(c, encode(Image.new("RGB", (200, 200), "red"), "PNG"))
        assert r.status_code == 400 and "200x200" in r.json()["detail"]
        assert c.get("/api/ready").status_code == 200


def test_upload_over_the_limit_is_413(client):
    big = b"\xff\xd8" + b"\0" * int(MAX_UPLOAD_MB * 1024 * 1024 * 2)
    r = search(client, big)
    assert r.status_code == 413 and "MB" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit applies while the body streams in
        yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.jpg\"\r\n\r\n"
        for _ in range(64):
            yield b"\0" * 65536
        yield b"\r\n--b--\r\n"

    r = client.post("/api/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "MB" in r.json()["detail"]
    just_over = b"\xff\xd8" + b"\0" * int(MAX_UPLOAD_MB * 1024 * 1024)  # within the form allowance, over the file limit
    r = search(client, just_over)
    assert r.status_code == 413
    assert client.get("/api/health").status_code == 200


@pytest.mark.parametrize(("form", "status", "words"), [
    ({"top_k": "0"}, 422, "top_k"),
    ({"top_k": "101"}, 422, "top_k"),
    ({"top_k": "many"}, 422, "top_k"),
    ({"topK": "-3"}, 422, "topK"),
    ({"model": "no-such-model"}, 400, "no-such-model"),
    ({"gender": "Martian"}, 400, "Martian"),
    ({"articleType": ["Jeans", "Spacesuits"]}, 400, "Spacesuits"),
])
def test_bad_parameters(client, synthetic_catalog, form, status, words):
    r = search(client, image_bytes(synthetic_catalog, 1001), **form)
    assert r.status_code == status and words in r.json()["detail"]
    assert isinstance(r.json()["detail"], str)


def test_missing_image_and_wrong_body(client):
    r = client.post("/api/search", data={"top_k": "3"})
    assert r.status_code == 422 and r.json()["detail"] == "send an image, words (q), or both"
    r = client.post("/api/search", data={"image": "not a file"})
    assert r.status_code == 422 and r.json()["detail"].startswith("image:")
    r = client.post("/api/search", json={"image": "x"})
    assert r.status_code in (400, 422) and isinstance(r.json()["detail"], str)
    assert client.get("/api/search").status_code == 405
    assert client.get("/api/nowhere").json() == {"detail": "Not Found"}


# ----- formats ------------------------------------------------------------------------------------
def _catalog_image(catalog: Path, pid: int) -> Image.Image:
    with Image.open(catalog / "images" / f"{pid}.jpg") as im:
        return im.convert("RGB")


@pytest.mark.parametrize(("fmt", "convert", "kw"), [
    ("PNG", "RGB", {}), ("PNG", "RGBA", {}), ("PNG", "L", {}), ("PNG", "P", {}), ("PNG", "I;16", {}),
    ("WEBP", "RGB", {"lossless": True}), ("BMP", "RGB", {}), ("TIFF", "RGB", {}),
    ("JPEG", "CMYK", {"quality": 95}), ("JPEG", "L", {"quality": 95}),
])
def test_image_formats_and_modes(client, synthetic_catalog, fmt, convert, kw):
    img = _catalog_image(synthetic_catalog, 1050)
    img = img.convert("L").convert("I;16") if convert == "I;16" else img.convert(convert)
    ids = first_ids(search(client, encode(img, fmt, **kw), name=f"q.{fmt.lower()}", top_k="3"))
    if convert in ("RGB", "RGBA", "CMYK"):
        assert ids[0] == 1050


def test_animated_gif_uses_the_first_frame(client, synthetic_catalog):
    first, second = _catalog_image(synthetic_catalog, 1060), _catalog_image(synthetic_catalog, 1070)
    gif = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    single = encode(first, "GIF")
    assert first_ids(search(client, gif, top_k="5")) == first_ids(search(client, single, top_k="5"))


def test_exif_orientation_is_honoured(client, synthetic_catalog):
    upright = _catalog_image(synthetic_catalog, 1080)
    rotated = upright.transpose(Image.Transpose.ROTATE_90)  # stored sideways (90 deg counter-clockwise) ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... and tagged "rotate 90 deg clockwise to display": the upright product
    tagged = search(client, encode(rotated, "JPEG", quality=98, exif=exif), top_k="3").json()["results"]
    plain = search(client, encode(upright, "JPEG", quality=98), top_k="3").json()["results"]
    assert tagged[0]["id"] == plain[0]["id"] == 1080
    assert tagged[0]["score"] == pytest.approx(plain[0]["score"], abs=0.02)


# ----- concurrency, batching, overload, shutdown -------------------------------------------------
def test_parallel_requests_match_single_requests(client, synthetic_catalog):
    pids = [1001 + 3 * i for i in range(8)]
    expected = {pid: search(client, image_bytes(synthetic_catalog, pid), top_k="10").json()["results"]
                for pid in pids}

    def one(i: int):
        pid = pids[i % len(pids)]
        return pid, search(client, image_bytes(synthetic_catalog, pid), top_k="10")

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(32)))
    for pid, r in answers:
        assert r.status_code == 200
        got = r.json()["results"]
        assert [h["id"] for h in got] == [h["id"] for h in expected[pid]]
        np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in expected[pid]], atol=1e-4)


def test_concurrent_requests_share_forward_passes(synthetic_catalog, built_workdir):
    settings = api_settings(synthetic_catalog, built_workdir, models="tiny", batch_wait_ms=200)
    app = create_app(settings)
    with TestClient(app) as c, ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda pid: search(c, image_bytes(synthetic_catalog, pid), top_k="3"),
                           range(1001, 1009)))
        assert [first_ids(r)[0] for r in rs] == list(range(1001, 1009))
        batches = app.state.metrics.batch_size.labels(model="tiny")
        total = sum(s.value for m in app.state.metrics.registry.collect() if m.name == "api_batch_size"
                    for s in m.samples if s.name == "api_batch_size_count")
        assert batches is not None and total < 8  # 8 images, fewer forward passes


def test_full_queue_answers_503_and_recovers(synthetic_catalog, built_workdir):
    settings = api_settings(synthetic_catalog, built_workdir, models="tiny", queue_max=1, batch_max=1)
    app = create_app(settings)
    with TestClient(app) as c:
        engine = app.state.runtime.engines["tiny"]
        release, entered = threading.Event(), threading.Event()
        original = engine.encode_tensors

        def slow(batch):
            entered.set()
            release.wait(10)
            return original(batch)

        engine.encode_tensors = slow
        data = image_bytes(synthetic_catalog, 1001)
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(search, c, data)
            assert entered.wait(10)
            queued = pool.submit(search, c, data)
            while app.state.runtime.batchers["tiny"].depth < 1:
                threading.Event().wait(0.01)
            refused = search(c, data)
            assert refused.status_code == 503 and "overloaded" in refused.json()["detail"]
            release.set()
            assert first.result().status_code == 200 and queued.result().status_code == 200
        engine.encode_tensors = original
        assert search(c, data).status_code == 200 and c.get("/api/ready").status_code == 200
        assert 'reason="queue_full"' in c.get("/api/metrics").text


def test_batcher_drains_on_close(settings):
    from imageretrieval.engine import RetrievalEngine

    engine = RetrievalEngine(settings, "tiny")
    tensor = engine.preprocess(Image.new("RGB", (40, 60), "blue"))

    async def scenario():
        batcher = MicroBatcher(engine, Metrics(), max_batch=2, max_queue=16)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(tensor, 3)) for _ in range(6)]
        await asyncio.sleep(0)  # all six queued
        await batcher.close(grace_s=10)
        results = await asyncio.gather(*pending)
        with pytest.raises(OverloadedError):
            await batcher.submit(tensor, 3)
        return results

    results = asyncio.run(scenario())
    assert len(results) == 6 and all(len(r) == 3 and r[0].id == results[0][0].id for r in results)


@pytest.mark.parametrize("rerank", ["none", "category"])
@pytest.mark.parametrize("filters", [{}, {"gender": ["Men"]}, {"baseColour": ["Red", "Blue"], "usage": ["Casual"]}])
def test_the_batched_search_is_the_engines_search(settings, filters, rerank):
    """The micro-batcher searches through engine.search_vectors: a batch gets exactly one-by-one hits."""
    from imageretrieval.engine import RetrievalEngine

    engine = RetrievalEngine(settings, "tiny")
    assert engine.live.state.base_index is None  # the synthetic catalog's index is flat: searched exactly
    batcher = MicroBatcher(engine, Metrics())
    queries = np.asarray(engine.vectors[:7]) + np.random.default_rng(0).normal(0, 0.05, (7, engine.dims))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    jobs = [SimpleNamespace(k=20, filters=normalize_filters(filters), rerank=rerank, timing={}) for _ in queries]
    batched = batcher._search_batch(jobs, queries)
    for qi, got in enumerate(batched):
        want = engine.search_vectors(queries[qi:qi + 1], 20, filters or None, rerank=rerank)[0]
        assert [h.id for h in got] == [h.id for h in want] and len(got) > 0
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
        # and the exact ranking by inner product (ties by row) over the allowed products
        mask = engine.filter_mask(filters or None)
        scores = np.asarray(engine.vectors) @ queries[qi]
        allowed = np.flatnonzero(mask) if mask is not None else np.arange(len(scores))
        if rerank == "none":
            order = allowed[np.lexsort((allowed, -scores[allowed]))][:20]
            assert [h.id for h in got] == engine.ids[order].tolist()


def test_shutdown_marks_not_ready(synthetic_catalog, built_workdir):
    app = create_app(api_settings(synthetic_catalog, built_workdir, models="tiny"))
    with TestClient(app) as c:
        assert c.get("/api/ready").status_code == 200
    assert app.state.runtime.ready is False
    assert not any(b.running for b in app.state.runtime.batchers.values())


# ----- startup ------------------------------------------------------------------------------------
def test_missing_index_is_one_clear_startup_error(synthetic_catalog, built_workdir):
    settings = api_settings(synthetic_catalog, built_workdir, models="tiny,ghost")
    with pytest.raises(StartupError, match=r"'ghost'"):
        load_engines(settings)
    empty = api_settings(synthetic_catalog, built_workdir / "nothing-here")
    with pytest.raises(StartupError, match=r"imageretrieval index --model"):
        load_engines(empty)


def test_corrupt_index_names_the_rebuild_command(synthetic_catalog, built_workdir, tmp_path):
    workdir = tmp_path / "wd"
    shutil.copytree(built_workdir, workdir, ignore=shutil.ignore_patterns("features"))
    (workdir / "indexes" / "tiny" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(StartupError, match=r"imageretrieval index --model tiny --force"):
        load_engines(api_settings(synthetic_catalog, workdir, models="tiny"))


def test_startup_failure_is_reported_through_lifespan(synthetic_catalog, built_workdir):
    app = create_app(api_settings(synthetic_catalog, built_workdir, models="efficientnet_lite1"))  # no index
    sent: list[dict] = []

    async def lifespan():
        messages = iter([{"type": "lifespan.startup"}])

        async def receive():
            return next(messages)

        async def send(message):
            sent.append(message)

        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    asyncio.run(lifespan())
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "imageretrieval index --model efficientnet_lite1" in sent[0]["message"]
    assert "Traceback" not in sent[0]["message"]


# ----- web app, schema, helpers -----------------------------------------------------------------
def test_serves_the_built_web_app(synthetic_catalog, built_workdir, tmp_path):
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<html>app</html>")
    (dist / "assets" / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("secret")
    settings = api_settings(synthetic_catalog, built_workdir, models="tiny", app_dist=dist)
    with TestClient(create_app(settings)) as c:
        assert c.get("/").text == "<html>app</html>"
        assert c.get("/search/some/route").text == "<html>app</html>"
        js = c.get("/assets/app.js")
        assert js.text == "console.log(1)" and "immutable" in js.headers["cache-control"]
        assert "secret" not in c.get("/..%2Fsecret.txt").text
        assert c.get("/api/unknown").status_code == 404
        assert c.get("/api/health").json() == {"status": "ok"}


def test_openapi_documents_routes_with_examples(client):
    schema = client.get("/api/openapi.json").json()
    paths = schema["paths"]
    for path in ("/api/health", "/api/ready", "/api/models", "/api/facets", "/api/search", "/api/search/by-id",
                 "/api/products/{product_id}", "/api/images/{product_id}", "/api/metrics"):
        assert path in paths
    assert "examples" in schema["components"]["schemas"]["SearchResponse"]
    assert set(paths["/api/search/by-id"]["post"]["requestBody"]["content"]) >= {
        "application/json", "application/x-www-form-urlencoded"}
    # the filter fields are defined once (the engine's FILTER_FIELDS): every schema that takes them shows them
    from imageretrieval.engine import FILTER_FIELDS

    components = schema["components"]["schemas"]
    upload = paths["/api/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    upload_fields = components[upload.rsplit("/", 1)[-1]]["properties"]
    assert set(FILTER_FIELDS) <= set(upload_fields) and upload_fields["gender"]["anyOf"][0]["type"] == "array"
    by_id = paths["/api/search/by-id"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(FILTER_FIELDS) <= set(by_id["properties"])
    assert set(components["FacetsResponse"]["properties"]) == set(FILTER_FIELDS)


def test_validation_messages_are_readable():
    errors = [{"loc": ("body", "top_k"), "msg": "Input should be less than or equal to 100"},
              {"loc": ("body", "image"), "msg": "Field required"}]
    assert format_validation_errors(errors) == ("top_k: Input should be less than or equal to 100; "
                                                "image: Field required")


def test_keep_warm_reruns_the_last_search_between_searches_then_stops(synthetic_catalog, built_workdir):
    """KEEP_WARM_MS: nothing runs before a first search; after one, its forward and index search run again
    while nobody searches, and only for KEEP_WARM_S after the last search."""
    import time

    app = create_app(api_settings(synthetic_catalog, built_workdir, keep_warm_ms=20, keep_warm_s=1.0))

    def runs() -> float:
        return app.state.metrics.registry.get_sample_value("api_keep_warm_runs_total") or 0.0

    with TestClient(app) as client:
        time.sleep(0.2)
        assert runs() == 0  # no search yet: nothing to keep warm
        assert search(client, image_bytes(synthetic_catalog, 1003)).status_code == 200
        deadline = time.monotonic() + 5
        while runs() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runs() > 0
        time.sleep(1.5)  # past KEEP_WARM_S: it stops
        settled = runs()
        time.sleep(0.3)
        assert runs() == settled
        assert search(client, image_bytes(synthetic_catalog, 1004)).status_code == 200  # and starts again
        deadline = time.monotonic() + 5
        while runs() == settled and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runs() > settled
        runtime = app.state.runtime
        for busy in (runtime.searches, runtime.writer):  # a search or a write in progress: it stays out of the way
            if busy is runtime.searches:
                busy.begin()
            else:
                busy.active += 1
            time.sleep(0.1)
            before = runs()
            time.sleep(0.3)
            assert runs() == before
            if busy is runtime.searches:
                busy.end()
            else:
                busy.active -= 1
    assert create_app(api_settings(synthetic_catalog, built_workdir)).state.settings.keep_warm_ms == 0  # off: default
    for bad in ({"keep_warm_ms": 5}, {"keep_warm_ms": 2000, "keep_warm_s": 1}):
        with pytest.raises(ValueError, match="KEEP_WARM"):
            api_settings(synthetic_catalog, built_workdir, **bad)
