"""One test suite, every index backend: exact kNN ground truth, filters, writes, fetch, count, facets.

The Milvus cases run a real Milvus Lite (embedded, on a file under tmp_path).
"""

from __future__ import annotations

import numpy as np
import pytest

from imageretrieval.backends import Row, backend_class
from imageretrieval.backends.milvus_backend import (
    MilvusBackend,
    collection_name,
    connect,
    filter_expression,
    parse_index_spec,
)
from imageretrieval.index import IndexFactoryError

FIELDS = ("gender", "articleType", "baseColour")
GENDERS = ["Men", "Women"]
TYPES = ["Shirts", "Tshirts", "Jeans", 'Bag "Tote"']
COLOURS = ["Navy Blue", "Red", ""]
DIMS = 16


def make_rows(n: int, seed: int = 0, start: int = 1) -> list[Row]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [Row(start + i, vectors[i], {"productDisplayName": f"product {start + i}", "gender": GENDERS[i % 2],
                                        "articleType": TYPES[i % 4], "baseColour": COLOURS[i % 3], "year": 2010 + i % 5},
                f"{i:064x}" if i % 7 == 0 else None)
            for i in range(n)]


def build(kind: str, rows: list[Row], tmp_path, index: str = "exact"):
    if kind == "faiss":
        return backend_class("faiss").build(rows, DIMS, FIELDS, "Flat" if index == "exact" else "HNSW16")
    client = connect(str(tmp_path / "milvus.db"))
    spec = parse_index_spec("FLAT" if index == "exact" else "HNSW:M=16,efConstruction=64,ef=16", len(rows), DIMS)
    return MilvusBackend.create(client, "test_rows", rows, DIMS, FIELDS, spec)


@pytest.fixture(params=["faiss", "milvus"])
def kind(request) -> str:
    return request.param


def brute_force(rows: list[Row], query: np.ndarray, k: int, keep=lambda r: True) -> list[int]:
    allowed = [r for r in rows if keep(r)]
    scores = np.array([float(np.dot(r.vector, query)) for r in allowed])
    order = sorted(range(len(allowed)), key=lambda i: (-scores[i], allowed[i].id))
    return [allowed[i].id for i in order[:k]]


def test_search_is_exact_knn(kind, tmp_path):
    rows = make_rows(300)
    backend = build(kind, rows, tmp_path)
    queries = np.stack([rows[5].vector, rows[77].vector, -rows[3].vector])
    found = backend.search(queries, 10)
    for q, cands in zip(queries, found, strict=True):
        assert cands.ids.tolist() == brute_force(rows, q, 10)
        expected = sorted((float(np.dot(r.vector, q)) for r in rows), reverse=True)[:10]
        np.testing.assert_allclose(cands.scores, expected, atol=1e-5)
        by_id = {r.id: r for r in rows}
        assert [p["productDisplayName"] for p in cands.products] == [by_id[i].product["productDisplayName"]
                                                                     for i in cands.ids]
    assert backend.count() == 300
    assert backend.dims == DIMS


def test_filters_apply_inside_the_search(kind, tmp_path):
    rows = make_rows(300)
    backend = build(kind, rows, tmp_path)
    query = rows[10].vector
    filters = {"gender": ["Women"], "articleType": ["Tshirts", 'Bag "Tote"']}

    def keep(r):
        return r.product["gender"] == "Women" and r.product["articleType"] in ("Tshirts", 'Bag "Tote"')

    assert backend.search(query[None], 12, filters)[0].ids.tolist() == brute_force(rows, query, 12, keep)
    assert backend.count(filters) == sum(map(keep, rows))
    rare = {"articleType": ["Jeans"], "baseColour": ["Red"]}  # 25 rows
    n_rare = backend.count(rare)
    assert n_rare == sum(1 for r in rows if r.product["articleType"] == "Jeans" and r.product["baseColour"] == "Red")
    assert len(backend.search(query[None], 100, rare)[0]) == n_rare  # all of them when fewer than k match
    assert backend.count({"articleType": ["no such type"]}) == 0
    assert len(backend.search(query[None], 5, {"articleType": ["no such type"]})[0]) == 0


def test_approximate_index_returns_k_filtered_results_whenever_k_exist(kind, tmp_path):
    rows = make_rows(2000, seed=3)
    backend = build(kind, rows, tmp_path, index="graph")
    selective = {"articleType": ["Jeans"], "baseColour": ["Red"]}  # 1 row in 12
    n = backend.count(selective)
    for qi in (0, 1, 2):
        found = backend.search(rows[qi].vector[None], 40, selective)[0]
        assert len(found) == min(40, n)
        assert all(p["articleType"] == "Jeans" and p["baseColour"] == "Red" for p in found.products)


def test_writes_add_replace_and_remove(kind, tmp_path):
    rows = make_rows(120)
    backend = build(kind, rows, tmp_path)
    new = make_rows(3, seed=9, start=1000)
    moved = Row(5, new[0].vector, {**rows[4].product, "baseColour": "Red", "productDisplayName": "renamed"}, "ab" * 32)
    backend.apply([7, 8, 999_999], [*new, moved])  # an unknown id to remove is no error
    assert backend.count() == 120 - 2 + 3
    hit = backend.search(new[1].vector[None], 1)[0]
    assert hit.ids.tolist() == [1001]
    assert sorted(backend.search(new[0].vector[None], 2)[0].ids.tolist()) == [5, 1000]  # one vector, two ids
    fetched = backend.fetch([5, 7, 1002])
    assert set(fetched) == {5, 1002}
    assert fetched[5].product["productDisplayName"] == "renamed" and fetched[5].image == "ab" * 32
    np.testing.assert_allclose(fetched[1002].vector, new[2].vector, atol=1e-6)
    assert fetched[1002].product == new[2].product  # every field, the int year included
    assert 7 not in backend.search(rows[6].vector[None], 120)[0].ids.tolist()
    backend.apply([5], [])
    assert backend.fetch([5]) == {} and backend.count() == 120


def test_fetch_and_facets(kind, tmp_path):
    rows = make_rows(60)
    backend = build(kind, rows, tmp_path)
    fetched = backend.fetch([1, 8, 60, 61], vectors=True)
    assert sorted(fetched) == [1, 8, 60]
    for pid, row in fetched.items():
        original = rows[pid - 1]
        np.testing.assert_allclose(row.vector, original.vector, atol=1e-6)
        assert row.product == original.product and row.image == original.image
    facets = backend.facets(FIELDS)
    assert facets["gender"] == {"Men": 30, "Women": 30}
    assert facets["baseColour"] == {"Navy Blue": 20, "Red": 20, "": 20}
    backend.apply([2, 4], [])  # two Women
    assert backend.facets(["gender"])["gender"] == {"Men": 30, "Women": 28}
    assert {"Men", "Women"} <= backend.known_values("gender")


def test_milvus_rows_survive_a_new_client(tmp_path):
    rows = make_rows(50)
    backend = build("milvus", rows, tmp_path)
    backend.apply([3], make_rows(1, seed=5, start=500))
    backend.close()
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_all()  # the embedded server stops: only the files remain
    again = MilvusBackend(connect(str(tmp_path / "milvus.db")), "test_rows", FIELDS)
    assert again.count() == 50 and 3 not in again.fetch([3]) and 500 in again.fetch([500])
    assert again.spec.index_type == "FLAT"


def test_filter_expression_quotes_values():
    assert filter_expression(None) == ""
    assert filter_expression({"gender": ["Men"]}) == 'gender in ["Men"]'
    assert (filter_expression({"articleType": ['Bag "Tote"', "a\\b"], "gender": ["Women"]})
            == 'articleType in ["Bag \\"Tote\\"", "a\\\\b"] and gender in ["Women"]')
    with pytest.raises(ValueError):
        filter_expression({"gender or 1": ["x"]})


def test_index_spec_parsing_follows_the_faiss_rule():
    assert parse_index_spec("auto", 1000, 256).index_type == "FLAT"
    hnsw = parse_index_spec("auto", 1_000_000, 256)
    assert (hnsw.index_type, hnsw.build, hnsw.search) == ("HNSW", {"M": 32, "efConstruction": 200}, {"ef": 128})
    ivf = parse_index_spec("ivf_flat:nlist=256, nprobe=8", 10, 4)
    assert (ivf.index_type, ivf.build, ivf.search) == ("IVF_FLAT", {"nlist": 256}, {"nprobe": 8})
    for bad in ("DISKANN", "HNSW:M=big", "HNSW:M"):
        with pytest.raises(IndexFactoryError):
            parse_index_spec(bad, 10, 4)


def test_collection_names_are_valid_and_distinct():
    a, b = collection_name("my-model.v2", "0123456789abcdef"), collection_name("my_model_v2", "0123456789abcdef")
    assert a != b and a.replace("_", "").isalnum() and a.startswith("ir_my_model_v2_")
    assert collection_name("m", "0123456789abcdef") != collection_name("m", "fedcba9876543210")


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="faiss, milvus"):
        backend_class("qdrant")


def test_cli_loads_a_built_index_into_milvus_and_writes_reach_it(synthetic_catalog, built_workdir, tmp_path,
                                                                 monkeypatch, capsys):
    import shutil

    from imageretrieval.cli import main
    from imageretrieval.engine import RetrievalEngine

    from .conftest import make_settings
    from .test_live_catalog import new_image

    workdir = tmp_path / "wd"
    shutil.copytree(built_workdir, workdir)
    monkeypatch.setenv("MILVUS_URI", str(tmp_path / "cli.db"))
    flags = ["--workdir", str(workdir), "--dataset-root", str(synthetic_catalog)]
    assert main(["index", "--model", "tiny", "--pca", "32", "--backend", "milvus", *flags]) == 0
    assert "rows loaded" in capsys.readouterr().out
    assert main(["index", "--model", "tiny", "--pca", "32", "--backend", "milvus", *flags]) == 0
    assert "already loaded from this build" in capsys.readouterr().out  # no re-load, no re-encoding

    monkeypatch.setenv("INDEX_BACKEND", "milvus")
    images = tmp_path / "new"
    images.mkdir()
    (images / "900300.png").write_bytes(new_image(7300, "Shirts", "Blue", size=(120, 160)))
    (tmp_path / "rows.csv").write_text("id,productDisplayName,articleType,baseColour\n900300,New shirt,Shirts,Blue\n")
    assert main(["catalog", "add", "--styles", str(tmp_path / "rows.csv"), "--images", str(images), "--model", "tiny",
                 *flags]) == 0
    settings = make_settings(synthetic_catalog, workdir, index_backend="milvus", milvus_uri=str(tmp_path / "cli.db"))
    engine = RetrievalEngine(settings, "tiny")
    assert engine.backend.name == "milvus" and engine.describe()["index_type"] == "milvus:FLAT"
    assert engine.search([images / "900300.png"], k=1)[0][0].id == 900300
    faiss = RetrievalEngine(make_settings(synthetic_catalog, workdir), "tiny")
    query = faiss.vector_of(1003)[None]
    assert ([h.id for h in engine.search_vectors(query, 10, {"gender": ["Men"]})[0]]
            == [h.id for h in faiss.search_vectors(query, 10, {"gender": ["Men"]})[0]])
    assert engine.facets() == faiss.facets() and engine.size == faiss.size
    for rerank in ("none", "category"):  # more like this, with and without the same-type-first re-ranking
        assert ([h.id for h in engine.search_by_id(1003, 12, rerank=rerank)]
                == [h.id for h in faiss.search_by_id(1003, 12, rerank=rerank)])
    assert engine.product(900300) == faiss.product(900300)


def test_a_local_milvus_uri_in_the_environment_does_not_break_pymilvus(tmp_path):
    """pymilvus parses MILVUS_URI itself at import and accepts only http(s): ours may be a file path."""
    import os
    import subprocess
    import sys

    path = str(tmp_path / "env.db")
    code = ("from imageretrieval.backends.milvus_backend import connect\n"
            f"print('collections', connect({path!r}).list_collections())")
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MILVUS_URI": path}, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "collections []" in res.stdout, res.stderr[-2000:]
