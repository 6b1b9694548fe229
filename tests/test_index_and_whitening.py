import numpy as np
import pytest

from imageretrieval.index import IndexFactoryError, build_index, load_index, resolve_factory, save_index, search
from imageretrieval.whitening import PostProcessor, l2_normalize, whiten_apply, whiten_learn


def _exact(db, q, k, allowed=None):
    s = q @ db.T
    if allowed is not None:
        s[:, ~allowed] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


@pytest.fixture()
def vectors():
    rng = np.random.default_rng(0)
    return l2_normalize(rng.normal(size=(2000, 32))), l2_normalize(rng.normal(size=(50, 32)))


def test_flat_equals_exact_knn(vectors, tmp_path):
    db, q = vectors
    index = build_index(db, "Flat")
    save_index(index, tmp_path / "i.faiss")
    scores, rows = search(load_index(tmp_path / "i.faiss"), q, 10)
    assert (rows == _exact(db, q, 10)).all()
    np.testing.assert_allclose(scores, np.take_along_axis(q @ db.T, rows, 1), rtol=1e-5)


def test_filtered_search_returns_k_allowed_results_exactly(vectors):
    db, q = vectors
    allowed = np.zeros(len(db), bool)
    allowed[::37] = True  # 55 rows: a selective filter
    _, rows = search(build_index(db, "Flat"), q, 20, allowed=allowed)
    assert allowed[rows].all() and (rows >= 0).all()
    assert (rows == _exact(db, q, 20, allowed)).all()


def test_hnsw_recall_and_filters(vectors):
    db, q = vectors
    _, rows = search(build_index(db, "HNSW32"), q, 10)
    truth = _exact(db, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth, strict=True)])
    assert recall > 0.95
    allowed = np.arange(len(db)) % 3 == 0
    _, rows = search(build_index(db, "HNSW32"), q, 10, allowed=allowed)
    assert allowed[rows[rows >= 0]].all()


def test_ivf_pq_factory_trains_and_searches(vectors):
    db, q = vectors
    _, rows = search(build_index(db, "IVF16,PQ8"), q, 10, nprobe=16)
    truth = _exact(db, q, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth, strict=True)]) > 0.3


def test_bad_factory_string_is_a_clear_error(vectors):
    with pytest.raises(IndexFactoryError, match="factory"):
        build_index(vectors[0], "NotAnIndex")
    with pytest.raises(IndexFactoryError, match="at least"):
        build_index(vectors[0][:10], "IVF64,Flat")


def test_auto_factory_is_exact_for_small_catalogs_and_a_graph_for_large_ones():
    assert resolve_factory("auto", 500, 256) == "Flat"
    assert resolve_factory("AUTO", 8_000_000 // 512, 512) == "Flat"
    assert resolve_factory("auto", 44_072, 1280) == "HNSW32"
    assert resolve_factory("auto", 44_072, 512) == "HNSW32"
    assert resolve_factory("IVF1024,PQ32", 10, 8) == "IVF1024,PQ32"  # explicit choices are kept


def test_whitening_decorrelates_and_has_unit_variance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5000, 8)) @ rng.normal(size=(8, 8))
    mean, proj, eig = whiten_learn(x, 8)
    w = whiten_apply(x, mean, proj)
    np.testing.assert_allclose(np.cov(w.T), np.eye(8), atol=0.02)
    assert (np.diff(eig) <= 1e-6).all()


def test_postprocessor_reduces_dims_and_roundtrips(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    post = PostProcessor.fit(x, 6)
    y = post(x)
    assert y.shape == (300, 6)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, rtol=1e-5)
    post.save(tmp_path / "p.npz")
    np.testing.assert_allclose(PostProcessor.load(tmp_path / "p.npz")(x), y, rtol=1e-6)
    PostProcessor().save(tmp_path / "l2.npz")
    assert PostProcessor.load(tmp_path / "l2.npz")(x).shape == (300, 16)


def test_exact_search_equals_the_reference_and_pads_past_the_allowed_rows(vectors):
    from imageretrieval.index import exact_search

    db, q = vectors
    scores, rows = exact_search(db, q, 10)
    assert (rows == _exact(db, q, 10)).all()
    np.testing.assert_allclose(scores, np.take_along_axis(q @ db.T, rows, 1), rtol=1e-5)
    allowed = np.zeros(len(db), bool)
    allowed[[3, 70, 900]] = True
    scores, rows = exact_search(db, q, 5, allowed)
    assert (rows[:, :3] == _exact(db, q, 3, allowed)).all() and (rows[:, 3:] == -1).all()
    assert np.isneginf(scores[:, 3:]).all()
    tied = np.repeat(db[:1], 4, axis=0)  # four equal vectors: ties go by row
    assert exact_search(tied, db[:1], 3)[1].tolist() == [[0, 1, 2]]
