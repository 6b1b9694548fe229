"""Evaluation protocols, variants, PCA search, dumps and plots on data whose right answer is known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from imageretrieval.cli import main
from imageretrieval.evaluation import plots
from imageretrieval.evaluation.dump import recompute_from_dump, write_rankings
from imageretrieval.evaluation.pca_finetune import coarse_to_fine, finetune_pca
from imageretrieval.evaluation.protocols import RetrievalTask, inshop_split
from imageretrieval.evaluation.runner import evaluate_task
from imageretrieval.evaluation.variants import Whitening, query_expansion
from imageretrieval.synthetic import drawing_for, render_product
from imageretrieval.whitening import PostProcessor, l2_normalize

from .conftest import TINY, make_tiny_model


def cluster_task(n_classes=4, per_class=10, dims=16, seed=0) -> RetrievalTask:
    """Well separated clusters, every item a query against all others (catalog-like)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([f"c{i}" for i in range(n_classes)], per_class)
    centers = np.eye(dims)[:n_classes] * 10
    x = (centers[np.repeat(np.arange(n_classes), per_class)] + rng.normal(0, 0.1, (len(labels), dims)) + 3)
    x = x.astype(np.float32)
    fit = (centers[rng.integers(0, n_classes, 200)] + rng.normal(0, 0.1, (200, dims)) + 3).astype(np.float32)
    rows = np.arange(len(labels))
    return RetrievalTask("catalog", x, x, rows, rows, labels, labels, exclude_rows=rows, fit=fit)


@pytest.mark.parametrize("variant", ["raw", "normalized", "aqe", "alpha-qe"])
def test_protocol_known_answer_on_separated_clusters(variant):
    res = evaluate_task(cluster_task(), variant, n_components=3, qe_k=3)  # 4 clusters span 3 dims
    m = res.metrics
    assert m["mAP"] == pytest.approx(1.0)
    assert m["PrecisionHits"] == pytest.approx(9 / 15)  # 9 other relevant items, P@15 divides by 15
    assert m["R@1"] == 1.0 and m["queries"] == 40 and m["database"] == 40
    assert m["mAP_seed"] == pytest.approx(1.0)
    assert (res.rankings.n_relevant == 9).all()


def test_known_answer_with_confusions_and_queries_without_relevant_items():
    # points on the unit circle: similarity decreases with the angle between them
    angles = np.array([0.0, 0.1, 0.25, 0.3, 1.5])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    labels = np.array(["a", "b", "a", "b", "z"])
    rows = np.arange(5)
    task = RetrievalTask("catalog", x, x, rows, rows, labels, labels, exclude_rows=rows)
    res = evaluate_task(task, "raw")
    # q0: 1 2 3 4 -> relevant row 2 at rank 2; q1: 0 2 3 -> row 3 at rank 3;
    # q2: 3 1 0 -> row 0 at rank 3; q3: 2 1 0 -> row 1 at rank 2
    assert res.rankings.ap[:4] == pytest.approx([1 / 2, 1 / 3, 1 / 3, 1 / 2])
    assert res.metrics["mAP"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3 + 1 / 2) / 4)
    assert res.metrics["R@1"] == 0.0 and res.metrics["R@10"] == 1.0
    assert res.metrics["queries"] == 4 and res.metrics["skipped_queries"] == 1  # "z" has no relevant item
    assert np.isnan(res.rankings.ap[4])


def test_query_expansion_hand_computed():
    d = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    q = np.array([[0.8, 0.6]], dtype=np.float32)
    # top-1 neighbour of q is row 2 (0.96): AQE = normalize(q + d2)
    expected = l2_normalize(q + d[2:3])
    assert query_expansion(q, d, k=1) == pytest.approx(expected)
    # alpha-QE weights by similarity ** alpha
    expected = l2_normalize(q + 0.96 ** 3 * d[2:3] + 0.8 ** 3 * d[0:1])
    assert query_expansion(q, d, k=2, alpha=3) == pytest.approx(expected, rel=1e-5)
    # a query that is database row 2 does not use itself as a neighbour
    assert query_expansion(d[2:3], d, k=1, exclude_rows=np.array([2])) == pytest.approx(l2_normalize(d[2:3] + d[1:2]))


def test_whitening_slices_equal_a_refit():
    rng = np.random.default_rng(0)
    raw = rng.random((50, 12)).astype(np.float32)
    w = Whitening.fit(raw)
    x = rng.random((5, 12)).astype(np.float32)
    assert w.postprocessor(5)(x) == pytest.approx(PostProcessor.fit(raw, 5)(x), abs=1e-5)


def test_coarse_to_fine_finds_the_optimum():
    calls = []

    def score(n):
        calls.append(n)
        return -((n - 37) ** 2)

    best, value, scores = coarse_to_fine(score, 1280)
    assert best == 37 and value == 0
    assert len(calls) == len(set(calls)) < 60


def pca_task(seed=0, signal=6, dims=64, n_classes=30) -> RetrievalTask:
    """Class information lives in `signal` high-variance directions; the rest is noise that whitening
    would blow up: the best whitening keeps exactly `signal` dimensions."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (n_classes, signal))

    def make(per_class):
        lab = np.repeat(np.arange(n_classes), per_class)
        x = np.zeros((len(lab), dims), np.float32)
        x[:, :signal] = means[lab] + rng.normal(0, 0.5, (len(lab), signal))
        x[:, signal:] = rng.normal(0, 1.0, (len(lab), dims - signal)) * np.linspace(1.0, 0.6, dims - signal)
        return x + 5.0, lab

    fit, _ = make(20)
    val, lab = make(10)
    rows = np.arange(len(val))
    return RetrievalTask("catalog", val, val, rows, rows, lab, lab, exclude_rows=rows, fit=fit)


@pytest.mark.parametrize("metric", ["map", "p@15"])
def test_pca_finetune_picks_the_known_best_dimension(metric):
    search = finetune_pca(pca_task(), metric)
    assert search.n_components == 6
    assert search.scores[6] > search.scores[4] and search.scores[6] > search.scores[8]


def test_inshop_split_first_image_of_each_item_is_the_query():
    table = pd.DataFrame({
        "image_id": ["A/02_front", "A/01_front", "B/01_front", "C/03_back", "C/01_side", "C/02_full"],
        "item_id": ["A", "A", "B", "C", "C", "C"],
    })
    q, g = inshop_split(table)
    assert table.loc[q, "image_id"].tolist() == ["A/01_front", "C/01_side"]  # B has one image: gallery only
    assert sorted(table.loc[g, "image_id"]) == ["A/02_front", "B/01_front", "C/02_full", "C/03_back"]


def test_dump_recomputation_matches(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    labels = rng.integers(0, 5, 300).astype(str)
    rows = np.arange(300)
    task = RetrievalTask("catalog", x[:60], x, rows[:60], rows, labels[:60], labels, exclude_rows=rows[:60])
    res = evaluate_task(task, "raw")
    n = write_rankings(tmp_path / "r.jsonl", res)
    again = recompute_from_dump(tmp_path / "r.jsonl")
    assert n == 60 and again["queries"] == 60 and again["consistent"]
    assert again["mAP"] == pytest.approx(res.metrics["mAP"], abs=1e-9)
    assert again["PrecisionHits"] == pytest.approx(res.metrics["PrecisionHits"], abs=1e-9)
    line = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert len(line["ranking"]) == 100 and line["query_id"] not in [r["id"] for r in line["ranking"]]
    # relevant items beyond the top 100 exist, so the top 100 alone would NOT give the full-ranking AP
    assert any(max(json.loads(raw)["relevant_ranks"]) > 100 for raw in (tmp_path / "r.jsonl").read_text().splitlines())


def test_plots_write_pngs(tmp_path):
    p = plots.plot_confusion_matrix(["a", "b", "b", "c"], ["a", "b", "c", "c"], ["a", "b", "c"], tmp_path / "cm.png")
    assert p.read_bytes()[:4] == b"\x89PNG"
    assert plots.confusion_matrix(["a", "b", "b"], ["a", "a", "b"], ["a", "b"]).tolist() == [[1, 0], [1, 1]]
    rng = np.random.default_rng(0)
    with threadpool_limits(1):  # OpenMP spinning on a busy 2-core machine makes t-SNE crawl
        assert plots.plot_tsne(rng.normal(size=(30, 5)), ["x", "y"] * 15, tmp_path / "t.png", max_iter=250).is_file()
    assert plots.plot_precision_curves({"m": np.linspace(1, 0.5, 50)}, tmp_path / "p.png").is_file()
    assert plots.plot_explained_variance(np.linspace(5, 0.1, 30), tmp_path / "ev.png", chosen=10).is_file()


# ----- end to end through the CLI on the synthetic catalog and a synthetic DeepFashion folder --------------

DF_CATEGORIES = {("MEN", "Denim"): "Jeans", ("MEN", "Tees_Tanks"): "Tshirts", ("WOMEN", "Dresses"): "Dresses",
                 ("MEN", "Shorts"): "Shorts", ("WOMEN", "Shorts"): "Shorts"}


@pytest.fixture(scope="module")
def deepfashion_root(tmp_path_factory):
    """DeepFashion-like folder: synthetic garments rendered large (photos), 2 views per item."""
    root = tmp_path_factory.mktemp("deepfashion")
    item = 0
    for (gender, category), article in DF_CATEGORIES.items():
        for _ in range(8):
            item += 1
            folder = root / "img" / gender / category / f"id_{item:08d}"
            folder.mkdir(parents=True)
            drawing = drawing_for(90_000 + item, article, "Blue" if item % 2 else "Red")
            render_product(drawing, 96, 128).resize((128, 128)).save(folder / "01_1_front.jpg")
            render_product(drawing, 90, 128).resize((128, 128)).save(folder / "02_2_side.jpg")
    return root


@pytest.fixture(scope="module")
def eval_env(tmp_path_factory, synthetic_catalog, deepfashion_root):
    workdir = tmp_path_factory.mktemp("evalwd")
    make_tiny_model(workdir, TINY, seed=0)
    flags = ["--dataset-root", str(synthetic_catalog), "--workdir", str(workdir), "--deepfashion-root",
             str(deepfashion_root), "--device", "cpu", "--precision", "fp32", "--num-workers", "0", "-q"]
    return workdir, flags


def run_json(capsys, flags, *args) -> dict:
    capsys.readouterr()
    assert main([*flags, *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_catalog_protocol_dump_summary_and_results(eval_env, capsys, tmp_path):
    workdir, flags = eval_env
    dump = tmp_path / "r.jsonl"
    out = run_json(capsys, flags, "evaluate", "--model", TINY, "--selection", "all", "--protocol", "catalog",
                   "--pca", "16", "--dump-rankings", str(dump))
    assert {"mAP", "PrecisionHits", "R@1", "R@10", "queries", "database"} <= set(out)
    assert out["queries"] == out["database"] == 16  # 8 classes x 2 test products, all used as queries
    again = recompute_from_dump(dump)
    assert again["consistent"] and abs(again["mAP"] - out["mAP"]) < 1e-6
    assert abs(again["PrecisionHits"] - out["PrecisionHits"]) < 1e-6
    # --pca 16 is not what the index serves (256 dims): the API's summary is left alone
    assert not (workdir / "results" / TINY / "summary.json").exists()
    served = run_json(capsys, flags, "evaluate", "--model", TINY, "--selection", "all", "--no-plots")
    summary = json.loads((workdir / "results" / TINY / "summary.json").read_text())
    assert summary["protocol"] == "catalog" and summary["mAP"] == pytest.approx(served["mAP"])
    assert set(summary) >= {"features", "PrecisionHits", "R@1", "R@10", "queries", "database", "created"}
    csv_rows = pd.read_csv(workdir / "results" / "results.csv")
    assert csv_rows["Model"].tolist()[-2:] == [TINY, TINY]
    assert csv_rows["mAP"].iloc[-2] == pytest.approx(out["mAP"], abs=1e-4)
    assert "| " + TINY + " | catalog |" in (workdir / "results" / "results.md").read_text()
    assert (workdir / "results" / TINY / "catalog-all-test-normalized-per-class.png").is_file()
    assert (workdir / "results" / "precision-at-k-catalog-all-test-normalized.png").is_file()
    raw = run_json(capsys, flags, "evaluate", "--model", TINY, "--selection", "all", "--features", "raw", "--no-plots")
    assert raw["features"].startswith("raw") and 0 < raw["mAP"] <= 1


def test_cli_finetune_pca_saves_the_dimension_used_by_index(eval_env, capsys):
    from imageretrieval.artifacts import build_model_index, tuned_pca_path
    from imageretrieval.settings import Settings

    workdir, flags = eval_env
    out = run_json(capsys, flags, "finetune-pca", "--model", TINY, "--selection", "all", "--metric", "p@15")
    saved = json.loads(tuned_pca_path(workdir, TINY).read_text())
    assert saved["split"] == "val" and saved["metric"] == "p@15" and saved["n_components"] == out["n_components"]
    assert saved["score"] == max(saved["scores"].values())
    assert (workdir / "results" / TINY / "pca-explained-variance.png").is_file()
    settings = Settings(dataset_root=flags[1], workdir=workdir, device="cpu", precision="fp32", num_workers=0)
    manifest = build_model_index(settings, TINY, progress=False)
    if saved["n_components"] == 0:  # "no whitening" won the search: the index keeps L2-normalized raw features
        assert manifest["pca_components"] is None and manifest["dims"] == manifest["raw_dims"]
    else:
        assert manifest["pca_components"] == saved["n_components"] == manifest["dims"]


def test_cli_finetune_rerank_saves_the_vote_that_search_and_evaluate_use(eval_env, capsys):
    from imageretrieval.artifacts import build_model_index, chosen_vote, tuned_rerank_path
    from imageretrieval.engine import RetrievalEngine
    from imageretrieval.evaluation.rerank_tuning import ALPHAS, VOTE_KS
    from imageretrieval.settings import Settings

    workdir, flags = eval_env
    assert chosen_vote(workdir, TINY) == (15, 3.0)  # the library's default before tuning
    out = run_json(capsys, flags, "finetune-rerank", "--model", TINY, "--selection", "all")
    saved = json.loads(tuned_rerank_path(workdir, TINY).read_text())
    assert saved["vote_k"] == out["vote_k"] in VOTE_KS and saved["vote_alpha"] in ALPHAS
    best = max((s["PrecisionHits"], s["mAP"]) for s in saved["val"].values())
    assert (saved["val"][f"k={saved['vote_k']} alpha={saved['vote_alpha']:g}"]["PrecisionHits"],
            saved["val"][f"k={saved['vote_k']} alpha={saved['vote_alpha']:g}"]["mAP"]) == best
    assert set(saved["test"]) == {"none", "chosen"}
    settings = Settings(dataset_root=flags[1], workdir=workdir, device="cpu", precision="fp32", num_workers=0)
    build_model_index(settings, TINY, progress=False)
    engine = RetrievalEngine(settings, TINY)
    assert (engine.vote_k, engine.vote_alpha) == (saved["vote_k"], saved["vote_alpha"])
    result = run_json(capsys, flags, "evaluate", "--model", TINY, "--selection", "all", "--features", "raw",
                      "--rerank", "category", "--no-plots")
    assert f"vote k={saved['vote_k']}" in result["features"]
    tuned_rerank_path(workdir, TINY).unlink()  # the other tests of this module use the default vote


def test_cli_finetune_rerank_gender_trains_the_predictor_that_search_and_evaluate_use(eval_env, capsys, monkeypatch):
    from imageretrieval.artifacts import build_model_index
    from imageretrieval.engine import RerankUnavailableError, RetrievalEngine
    from imageretrieval.evaluation.gender_tuning import HIDDEN_UNITS, NEIGHBOUR_WEIGHTS, THRESHOLDS
    from imageretrieval.gender import GENDERS, GenderPredictor, predictor_path
    from imageretrieval.settings import Settings

    workdir, flags = eval_env
    monkeypatch.setattr("imageretrieval.gender.HIDDEN_LAYER_STEPS", 200)  # a few hundred vectors: enough
    settings = Settings(dataset_root=flags[1], workdir=workdir, device="cpu", precision="fp32", num_workers=0)
    build_model_index(settings, TINY, progress=False)
    with pytest.raises(RerankUnavailableError, match=f"finetune-rerank --model {TINY} --gender"):
        RetrievalEngine(settings, TINY).search_vectors(np.ones((1, 256), np.float32), 5, rerank="gender")
    assert main([*flags, "evaluate", "--model", TINY, "--selection", "all", "--features", "raw",
                 "--rerank", "gender", "--no-plots"]) == 2  # no predictor yet: a message, not a traceback
    out = run_json(capsys, flags, "finetune-rerank", "--model", TINY, "--selection", "all", "--gender",
                   "--tolerance", "1")
    path = predictor_path(TINY, workdir)
    predictor = GenderPredictor.load(path)
    assert path == workdir / "models" / TINY / "gender_predictor.npz" and predictor.threshold in THRESHOLDS
    assert len(predictor.probe_ids) == 8 and predictor.probe_vectors.shape == (8, 256)
    assert out["trained_on"]["catalog_products"] > 0 and out["trained_on"]["photos"] > 0
    chosen = (f"weight={out['photo_weight']:g} hidden={predictor.hidden} threshold={predictor.threshold:g} "
              f"neighbours={predictor.neighbour_weight:g}")
    assert out["hidden"] == predictor.hidden and {f"hidden={h}" for h in HIDDEN_UNITS} <= {
        part for key in out["val"] for part in key.split()}  # both kinds of classifier were tried
    assert {"category", chosen} <= set(out["val"]) and predictor.neighbour_weight in NEIGHBOUR_WEIGHTS
    assert set(out["test"]) == {"category", "category+gender"}
    assert set(out["test"]["category"]) == {"catalog", "catalog-all", "photos"}
    engine = RetrievalEngine(settings, TINY)
    assert engine.reranks == ["none", "category", "gender", "category+gender"]
    engine.gender_predictor.threshold = 0.0  # never unsure: the order must show
    query = np.ones((1, 256), np.float32)
    hits = engine.search_vectors(query, 10, rerank="gender")[0]
    cands = engine.backend.search(query, engine.candidates_needed(10, "gender"), None)[0]
    wanted = engine.gender_predictor.predict(query, [[p.get("gender") or "" for p in cands.products[:engine.vote_k]]])[0]
    assert wanted in GENDERS
    fits = [h.product["gender"] in (wanted, "Unisex") for h in hits]
    assert fits == sorted(fits, reverse=True)  # the predicted gender's products (and Unisex) first
    assert main([*flags, "evaluate", "--model", TINY, "--selection", "all", "--features", "normalized",
                 "--rerank", "gender", "--no-plots"]) == 2  # whitened vectors: not what the predictor reads
    result = run_json(capsys, flags, "evaluate", "--model", TINY, "--selection", "all", "--features", "raw",
                      "--rerank", "category+gender", "--no-plots")
    assert "+category-first" in result["features"] and "+gender-first" in result["features"]
    path.unlink()  # the other tests of this module see a model without one


def test_cli_deepfashion_protocols(eval_env, capsys, tmp_path):
    _, flags = eval_env
    for res in ("native", "catalog"):
        out = run_json(capsys, flags, "evaluate", "--model", TINY, "--protocol", "deepfashion-to-catalog",
                       "--selection", "all", "--whiten-on", "catalog", "--pca", "16", "--query-resolution", res,
                       "--no-plots")
        assert out["database"] == 96 and out["queries"] > 0 and 0 < out["mAP"] <= 1
    base = ["evaluate", "--model", TINY, "--protocol", "deepfashion-to-catalog", "--selection", "all",
            "--features", "raw", "--no-plots"]
    same = run_json(capsys, flags, *base)
    assert run_json(capsys, flags, *base, "--query-model", TINY)["mAP"] == pytest.approx(same["mAP"])
    make_tiny_model(eval_env[0], "tiny-other", seed=3)  # other weights: other photo vectors, other rankings
    other = run_json(capsys, flags, *base, "--query-model", "tiny-other")
    assert other["model"] == f"{TINY} (photos: tiny-other)" and other["mAP"] != pytest.approx(same["mAP"])
    make_tiny_model(eval_env[0], "tiny-96", seed=3, arch="test_resnet", dims=96)
    assert main([*flags, *base, "--query-model", "tiny-96"]) == 2  # another embedding space: a clear error
    assert main([*flags, "evaluate", "--model", TINY, "--protocol", "inshop", "--query-model", TINY]) == 2
    dump = tmp_path / "inshop.jsonl"
    out = run_json(capsys, flags, "evaluate", "--model", TINY, "--protocol", "inshop", "--selection", "all",
                   "--features", "raw", "--dump-rankings", str(dump), "--no-plots")
    assert {"R@1", "R@10", "R@20", "mAP"} <= set(out) and out["queries"] > 0
    lines = [json.loads(x) for x in dump.read_text().splitlines()]
    assert all(line["label"].startswith("id_") and line["n_relevant"] == 1 for line in lines)
    again = recompute_from_dump(dump)
    assert abs(again["mAP"] - out["mAP"]) < 1e-6 and again["consistent"]
    # R@1 is the fraction of queries whose first result is the other view of the same item
    assert out["R@1"] == pytest.approx(np.mean([line["ranking"][0]["label"] == line["label"] for line in lines]))


def test_feature_samples_are_nested_and_reused(eval_env):
    from imageretrieval.featurestore import get_features
    from imageretrieval.settings import Settings

    workdir, flags = eval_env
    settings = Settings(dataset_root=flags[1], workdir=workdir, deepfashion_root=flags[5], device="cpu",
                        precision="fp32", num_workers=0)
    big, big_table = get_features(settings, TINY, "deepfashion", "all", query_resolution=(30, 40), sample=12,
                                  progress=False)
    small, small_table = get_features(settings, TINY, "deepfashion", "all", query_resolution=(30, 40), sample=5,
                                      progress=False)
    assert set(small_table["image_id"]) <= set(big_table["image_id"])  # seeded samples are nested
    assert not (workdir / "features" / TINY / "deepfashion-all-s5-q30x40").exists()  # sliced, not re-encoded
    pos = {i: k for k, i in enumerate(big.ids)}
    assert np.array_equal(small.features, big.features[[pos[i] for i in small.ids]])


def test_cli_catalog_queries_at_another_resolution(eval_env, capsys):
    """--query-scale re-renders the query products (a query set the catalog never had); the database keeps
    the originals, and the API's summary is not overwritten by such a run (nor by a re-ranked one or one
    against the whole catalog: the summary stays the canonical protocol's)."""
    from imageretrieval.featurestore import get_features
    from imageretrieval.settings import Settings

    workdir, flags = eval_env
    plain = run_json(capsys, flags, "evaluate", "--model", TINY, "--selection", "all", "--features", "raw",
                     "--no-plots")
    summary = (workdir / "results" / TINY / "summary.json").read_text()
    half = run_json(capsys, flags, "evaluate", "--model", TINY, "--selection", "all", "--features", "raw",
                    "--query-scale", "0.5", "--no-plots")
    assert half["queries"] == plain["queries"] and half["database"] == plain["database"]
    assert (workdir / "results" / TINY / "summary.json").read_text() == summary
    for other in (["--rerank", "category"], ["--database", "all"]):
        run_json(capsys, flags, "evaluate", "--model", TINY, "--selection", "all", "--features", "raw", "--no-plots",
                 *other)
        assert (workdir / "results" / TINY / "summary.json").read_text() == summary, other
    settings = Settings(dataset_root=flags[1], workdir=workdir, device="cpu", precision="fp32", num_workers=0)
    orig, _ = get_features(settings, TINY, "fashion", "test", "all", progress=False)
    scaled, _ = get_features(settings, TINY, "fashion", "test", "all", progress=False, query_scale=0.5)
    assert (orig.ids == scaled.ids).all() and not np.allclose(orig.features, scaled.features)
    assert main([*flags, "evaluate", "--model", TINY, "--protocol", "inshop", "--query-scale", "2"]) == 2
    assert main([*flags, "evaluate", "--model", TINY, "--protocol", "inshop", "--rerank", "category"]) == 2
    assert main([*flags, "evaluate", "--model", TINY, "--rerank", "category", "--vote-k", "0"]) == 2


def test_photo_queries_are_decoded_as_the_api_decodes_an_upload(tmp_path):
    """A query brought to the catalog's resolution is JPEG-draft-decoded to a little over that resolution, in
    the evaluation as in the API (the figures measure what a shopper gets); other inputs decode in full."""
    from PIL import Image

    from imageretrieval.extract import load_image, query_decode_size
    from imageretrieval.images import open_image
    from imageretrieval.preprocess import Preprocess

    rng = np.random.default_rng(0)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (800, 600, 3), dtype=np.uint8)).save(path, quality=90)
    query = Preprocess(32, query_resolution=(30, 40))
    assert query.decode_size == 60 and query_decode_size(query) == 60
    assert open_image(path, min_size=query.decode_size).size == (75, 100)  # 1/8 in the DCT: both sides >= 60
    as_uploaded = query(open_image(path.read_bytes(), min_size=query.decode_size))
    assert np.array_equal(load_image(path, query)[0], as_uploaded)
    assert not np.array_equal(as_uploaded, query(open_image(path)))  # a full decode gives other pixels
    native, rescaled = Preprocess(32), Preprocess(32, query_resolution=(30, 40), query_scale=2.0)
    assert native.decode_size == rescaled.decode_size == 64  # twice the input: no query resolution to go by
    assert query_decode_size(native) is None and query_decode_size(rescaled) is None  # extraction: in full


def test_query_features_decoded_otherwise_are_extracted_again(eval_env):
    from imageretrieval.featurestore import get_features
    from imageretrieval.io_utils import load_json, save_json
    from imageretrieval.settings import Settings

    workdir, flags = eval_env
    settings = Settings(dataset_root=flags[1], workdir=workdir, deepfashion_root=flags[5], device="cpu",
                        precision="fp32", num_workers=0)
    first, _ = get_features(settings, TINY, "deepfashion", "test", query_resolution=(30, 40), progress=False)
    meta_path = workdir / "features" / TINY / "deepfashion-test-q30x40" / "meta.json"
    meta = load_json(meta_path)
    assert meta["query_decode"] == 60
    del meta["query_decode"]  # as written before queries were draft-decoded ...
    save_json(meta_path, meta)
    np.save(meta_path.parent / "features.npy", np.full_like(first.features, 7.0))  # ... with other numbers
    again, _ = get_features(settings, TINY, "deepfashion", "test", query_resolution=(30, 40), progress=False)
    assert load_json(meta_path)["query_decode"] == 60
    assert not (again.features == 7.0).any()  # extracted again, not served from the stale cache
    assert np.array_equal(first.ids, again.ids) and np.allclose(first.features, again.features, equal_nan=True)


def test_rescale_renders_other_resolutions():
    from PIL import Image

    from imageretrieval.preprocess import Preprocess, rescale

    img = Image.new("RGB", (60, 80), (200, 10, 10))
    assert rescale(img, 0.5).size == (30, 40) and rescale(img, 4).size == (240, 320)
    through_query_path = Preprocess(32, query_resolution=(60, 80), query_scale=4.0)(img)
    assert through_query_path.shape == (3, 32, 32)


def test_results_csv_of_other_columns_is_set_aside_not_appended_to(tmp_path):
    import csv

    from imageretrieval.evaluation.reports import COLUMNS, append_results

    out = tmp_path / "results"
    out.mkdir()
    (out / "results.csv").write_text("model,P@15\ntiny,0.5\n")  # an older version's columns
    csv_path, _ = append_results(tmp_path, {"model": "tiny"})
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == COLUMNS and len(rows) == 2
    kept = [p for p in out.glob("results-*.csv")]
    assert len(kept) == 1 and kept[0].read_text() == "model,P@15\ntiny,0.5\n"  # nothing lost
    append_results(tmp_path, {"model": "tiny"})  # the same columns: appended
    assert len(list(out.glob("results-*.csv"))) == 1 and len(csv_path.read_text().splitlines()) == 3
