"""The gender predictor of rerank=gender and the ordering it drives: hand-made vectors and rankings."""

from __future__ import annotations

import numpy as np
import pytest

from imageretrieval.gender import (
    NO_GENDER,
    GenderPredictor,
    GenderPredictorError,
    fit_gender_predictor,
    gender_matches,
    load_gender_predictor,
    predictor_path,
)
from imageretrieval.rerank import category_matches, matches_first


def clusters(n_per: int = 40, dims: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One tight cluster per gender on its own axis, plus Unisex rows (which never train)."""
    rng = np.random.default_rng(seed)
    names = ["Men", "Women", "Boys", "Girls", "Unisex"]
    vectors = np.concatenate([np.eye(dims)[i] + 0.05 * rng.standard_normal((n_per, dims)) for i in range(5)])
    return vectors.astype(np.float32), np.repeat(np.array(names, dtype=object), n_per)


def test_the_predictor_learns_separable_genders_and_abstains_below_its_threshold():
    vectors, genders = clusters()
    predictor = fit_gender_predictor(vectors, genders, c=10.0)
    assert predictor.classes == ("Boys", "Girls", "Men", "Women")  # Unisex rows are not a class
    queries = np.eye(8, dtype=np.float32)[:4] * 3.0  # the scale does not matter: vectors are L2-normalized
    assert predictor.predict(queries).tolist() == ["Men", "Women", "Boys", "Girls"]
    p = predictor.probabilities(queries)
    assert np.allclose(p.sum(axis=1), 1.0) and (p.max(axis=1) > 0.5).all()
    between = (np.eye(8)[0] + np.eye(8)[1])[None]  # half Men, half Women: no confident answer
    assert predictor.predict(between, threshold=0.9).tolist() == [NO_GENDER]


def test_a_two_gender_catalog_gives_a_two_class_softmax():
    vectors, genders = clusters()
    two = np.isin(genders, ["Men", "Women"])
    predictor = fit_gender_predictor(vectors[two], genders[two], c=10.0)
    assert predictor.classes == ("Men", "Women") and predictor.coef.shape == (2, 8)
    assert predictor.predict(np.eye(8, dtype=np.float32)[:2]).tolist() == ["Men", "Women"]
    with pytest.raises(ValueError, match="at least two"):
        fit_gender_predictor(vectors[genders == "Men"], genders[genders == "Men"])


def test_a_hidden_layer_learns_what_no_linear_predictor_can_and_is_served_by_numpy(tmp_path):
    """Genders laid out as XOR (Men where x*y > 0, Women elsewhere): linear accuracy is near chance, one
    hidden layer of ReLUs separates them; the saved file keeps the layer, and a damaged layer is refused."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(-1, 1, (2000, 2))
    xy = xy[np.abs(xy).min(axis=1) > 0.1]  # a margin around the axes
    vectors = np.hstack([xy, np.ones((len(xy), 1))]).astype(np.float32)  # the bias axis keeps the L2 norm harmless
    genders = np.where(xy[:, 0] * xy[:, 1] > 0, "Men", "Women").astype(object)
    linear = fit_gender_predictor(vectors, genders, threshold=0.0)
    deep = fit_gender_predictor(vectors, genders, threshold=0.0, hidden=32, seed=1, steps=3000)
    assert linear.hidden == 0 and (deep.hidden, deep.dims) == (32, 3)
    assert (linear.predict(vectors) == genders).mean() < 0.7
    assert (deep.predict(vectors) == genders).mean() > 0.95
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    hand = np.maximum(unit @ deep.hidden_coef.T + deep.hidden_intercept, 0) @ deep.coef.T + deep.intercept
    hand = np.exp(hand - hand.max(axis=1, keepdims=True))
    assert np.allclose(deep.probabilities(vectors), hand / hand.sum(axis=1, keepdims=True), atol=1e-5)
    path = tmp_path / "gender_predictor.npz"
    deep.save(path)
    again = GenderPredictor.load(path)
    assert again.hidden == 32 and np.array_equal(again.predict(vectors), deep.predict(vectors))
    bad = GenderPredictor(deep.classes, deep.coef, deep.intercept, hidden_coef=deep.hidden_coef[:5],
                          hidden_intercept=deep.hidden_intercept[:5])
    bad.save(path)
    with pytest.raises(GenderPredictorError, match="damaged"):
        GenderPredictor.load(path)


def test_gender_matches_counts_unisex_for_everyone_and_nothing_for_no_prediction():
    rows = np.array([["Men", "Women", "Unisex", ""], ["Men", "Women", "Unisex", "Boys"]], dtype=object)
    assert gender_matches(rows, np.array(["Women", NO_GENDER], dtype=object)).tolist() == [
        [False, True, True, False], [False, False, False, False]]
    assert gender_matches(rows[1], "Boys").tolist() == [False, False, True, True]


def test_matches_first_puts_both_then_the_first_then_the_second_keeping_the_visual_order():
    order = np.array([[10, 11, 12, 13, 14, 15, 16]])
    first = np.array([[0, 1, 1, 0, 1, 0, 0]], bool)  # e.g. the voted type (only 6 in the pool)
    second = np.array([[1, 0, 1, 1, 0, 0, 1]], bool)  # e.g. the predicted gender
    out = matches_first(order, first[:, :6], second[:, :6], pool=6)
    assert out.tolist() == [[12, 11, 14, 10, 13, 15, 16]]  # 16 is past the pool: it stays put
    assert matches_first(order, first, pool=None).tolist() == [[11, 12, 14, 10, 13, 15, 16]]
    codes = np.array([0, 1, 0, 2])
    assert category_matches(np.array([[3, -1, 0, 2]]), codes, np.array([0])).tolist() == [[False, False, True, True]]


def test_the_predictor_survives_a_round_trip_and_a_damaged_file_names_the_fix(tmp_path):
    vectors, genders = clusters()
    predictor = fit_gender_predictor(vectors, genders, threshold=0.6)
    predictor.meta, predictor.neighbour_weight = {"model": "tiny"}, 0.5
    path = tmp_path / "models" / "tiny" / "gender_predictor.npz"
    path.parent.mkdir(parents=True)
    predictor.save(path)
    assert predictor_path("tiny", tmp_path) == path
    again = load_gender_predictor("tiny", tmp_path)
    assert again.classes == predictor.classes and (again.threshold, again.neighbour_weight) == (0.6, 0.5)
    assert again.meta == {"model": "tiny"}
    assert np.array_equal(again.predict(vectors), predictor.predict(vectors))
    assert load_gender_predictor("other", tmp_path) is None
    good = path.read_bytes()
    for damaged in (b"not a zip", good[: len(good) // 2]):  # not an archive; an archive cut short
        path.write_bytes(damaged)
        with pytest.raises(GenderPredictorError, match="finetune-rerank --gender"):
            GenderPredictor.load(path)


def test_the_neighbours_genders_decide_only_where_the_classifier_hesitates():
    """p = (0.55 Men, 0.45 Women) from the classifier; 14 of 15 neighbours Women (one Unisex): the smoothed
    shares are (1/16, 15/16), and with neighbour weight 1 the product (0.55/16, 0.45*15/16) favours Women;
    a confident classifier (0.99 Men: 0.99/16 > 0.01*15/16) keeps Men."""
    hesitant = GenderPredictor(("Men", "Women"), np.zeros((2, 4), np.float32),
                               np.log(np.array([0.55, 0.45], np.float32)), threshold=0.5)
    neighbours = [["Women"] * 14 + ["Unisex"]]  # Unisex counts for neither
    assert hesitant.predict(np.ones((1, 4))).tolist() == ["Men"]  # neighbour weight 0: the classifier alone
    hesitant.neighbour_weight = 1.0
    assert hesitant.predict(np.ones((1, 4)), neighbours).tolist() == ["Women"]
    assert hesitant.predict(np.ones((1, 4))).tolist() == ["Men"]  # no neighbours given: the classifier alone
    sure = GenderPredictor(("Men", "Women"), np.zeros((2, 4), np.float32),
                           np.log(np.array([0.99, 0.01], np.float32)), threshold=0.5, neighbour_weight=1.0)
    assert sure.predict(np.ones((1, 4)), neighbours).tolist() == ["Men"]


def test_a_predictor_knows_the_model_version_it_was_trained_on():
    vectors, genders = clusters()
    predictor = fit_gender_predictor(vectors, genders)
    predictor.probe_ids, predictor.probe_vectors = np.array([7, 8, 9]), vectors[:3]
    same = {7: vectors[0] * 2, 8: vectors[1], 9: vectors[2] + 0.01}  # scale and int8-like noise do not matter
    assert predictor.agrees_with(lambda ids: {i: same[i] for i in ids if i in same}) is True
    assert predictor.agrees_with(lambda ids: {8: vectors[1]}) is True  # deleted products are left out
    assert predictor.agrees_with(lambda ids: {**same, 9: vectors[140]}) is True  # one product's image replaced
    other = {7: vectors[100], 8: vectors[120], 9: vectors[140]}  # another version: other vectors
    assert predictor.agrees_with(lambda ids: other) is False
    assert predictor.agrees_with(lambda ids: {}) is None  # nothing to compare: not refused


def test_the_hits_name_only_what_the_re_ranking_really_put_first():
    """A vote with no type among the voters shows no type first, even when the gender moves a typed product
    ahead; a gender no hit has is not named either."""
    from types import SimpleNamespace

    from imageretrieval.backends.base import Candidates
    from imageretrieval.engine import RetrievalEngine

    products = [{"articleType": "", "gender": "Men"}, {"articleType": "", "gender": "Men"},
                {"articleType": "Shirts", "gender": "Women"}, {"articleType": "Tops", "gender": "Women"}]
    cands = Candidates(np.arange(4), np.array([0.9, 0.8, 0.7, 0.6], np.float32), products)
    engine = SimpleNamespace(vote_k=2, vote_alpha=3.0, backend=None)
    hits = RetrievalEngine.hits(engine, cands, 4, "category+gender", gender="Women")
    assert [h.id for h in hits] == [2, 3, 0, 1]  # no type voted: the gender alone orders them
    assert hits.type_first is None and hits.gender_first == "Women"
    engine.vote_k = 4  # now Shirts and Tops vote (the untyped do not): Shirts, the nearer, wins
    hits = RetrievalEngine.hits(engine, cands, 4, "category+gender", gender="Boys")
    assert [h.id for h in hits][0] == 2 and hits.type_first == "Shirts" and hits.gender_first is None


def test_a_damaged_hidden_layer_is_named_and_training_leaves_the_callers_random_state(tmp_path):
    vectors, genders = clusters()
    deep = fit_gender_predictor(vectors, genders, hidden=8, steps=50)
    path = tmp_path / "gender_predictor.npz"
    for damage in ({"hidden_intercept": None}, {"coef": np.full_like(deep.coef, np.nan)}):
        arrays = {"coef": deep.coef, "intercept": deep.intercept, "hidden_coef": deep.hidden_coef,
                  "hidden_intercept": deep.hidden_intercept, **damage}
        np.savez(path, meta=np.array('{"classes": ["Boys", "Girls", "Men", "Women"], "threshold": 0.5}'),
                 **{k: v for k, v in arrays.items() if v is not None})
        with pytest.raises(GenderPredictorError, match="damaged"):
            GenderPredictor.load(path)
    with pytest.raises(ValueError, match="both"):
        GenderPredictor(deep.classes, deep.coef, deep.intercept, hidden_coef=deep.hidden_coef)
    import torch

    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    few = np.r_[0:6, 40:46]  # six Men, six Women: fewer rows than a minibatch
    assert fit_gender_predictor(vectors[few], genders[few], hidden=8, steps=50, seed=1).hidden == 8
    assert torch.rand(1) == expected  # the caller's random state is left alone
