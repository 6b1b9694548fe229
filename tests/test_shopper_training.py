"""Shopper objectives: colour and gender labels, the paired-view loss, the shopper validation score."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from imageretrieval.models import get_model_config
from imageretrieval.synthetic import make_synthetic_catalog
from imageretrieval.training.data import training_table
from imageretrieval.training.labels import GENDERS, colour_encoding, gender_encoding
from imageretrieval.training.losses import similarity_distillation_loss, view_contrastive_loss
from imageretrieval.training.recipes import train
from imageretrieval.training.validation import SHOPPER_TERMS, top_k_rows, val_scores

from .conftest import TINY, make_settings, make_tiny_model
from .test_training import _log, make_synthetic_deepfashion, tiny_request, train_settings  # noqa: F401


def test_view_loss_on_a_hand_computed_case():
    a = torch.eye(2)
    # cos = I; each row's cross-entropy = -log(e / (e + 1)) = log(1 + 1/e), in both directions
    assert view_contrastive_loss(a, a, temperature=1.0).item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-6)
    swapped = view_contrastive_loss(a, a.flip(0), temperature=1.0).item()
    assert swapped == pytest.approx(math.log1p(math.exp(1)), abs=1e-6)  # each view nearer another product


def test_similarity_distillation_on_a_hand_computed_case():
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    teacher, student = torch.tensor([e1, e2, e1]), torch.tensor([e1, e2, e2])
    e = math.e
    # each row's neighbours (the other two rows) as a softmax of cosines, temperature 1, KL(teacher || student)
    row0 = 1 / (1 + e) * math.log(2 / (1 + e)) + e / (1 + e) * math.log(2 * e / (1 + e))  # [1, e] vs [1, 1]
    row1 = 0.5 * math.log(0.5 * (1 + e)) + 0.5 * math.log(0.5 * (1 + e) / e)  # [1, 1] vs [1, e]
    row2 = (e - 1) / (e + 1) * 1.0  # [e, 1] vs [1, e]: (a - b) log(a / b), log(a / b) = 1
    got = similarity_distillation_loss(student, teacher, temperature=1.0).item()
    assert got == pytest.approx((row0 + row1 + row2) / 3, abs=1e-6)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(1)))
    assert similarity_distillation_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert similarity_distillation_loss(x @ rotation, 3 * x).item() == pytest.approx(0.0, abs=1e-5)  # relations
    assert similarity_distillation_loss(x[:1], x[:1]).item() == 0.0


def test_the_distillation_loss_alone_teaches_the_teachers_neighbours():
    """A linear student fitted by the loss alone comes to share the nearest neighbours of a teacher that
    sees the data differently (another random projection)."""
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(96, 12, generator=gen)
    teacher = data @ torch.randn(12, 6, generator=gen)
    student = nn.Linear(12, 6)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)

    def shared() -> float:
        with torch.no_grad():
            mine = top_k_rows(student(data).numpy(), student(data).numpy(), 6)[:, 1:]
        theirs = top_k_rows(teacher.numpy(), teacher.numpy(), 6)[:, 1:]
        return float(np.mean([len(set(a) & set(b)) for a, b in zip(mine, theirs, strict=True)]))

    before, first = shared(), similarity_distillation_loss(student(data), teacher).item()
    for _ in range(300):
        optimizer.zero_grad()
        loss = similarity_distillation_loss(student(data), teacher)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first and shared() > before + 1.5  # of the five nearest, more in common


def test_distillation_from_a_head_on_the_same_trunk(train_settings):  # noqa: F811
    s = train_settings
    kw = dict(dataset="fashion", trainable=[], dims=16, epochs=2, lr=1e-2, batch_size=32)
    train(s, tiny_request("teacher-t", colour_weight=3.0, **kw), progress=False)
    train(s, tiny_request("student-plain", **kw), progress=False)
    info = train(s, tiny_request("student-kd", distill_from="teacher-t", distill_weight=50.0, **kw), progress=False)
    assert info["objectives"] == {"articleType": 1.0, "distill": 50.0}
    assert get_model_config("student-kd", s.workdir).extra["training_objectives"]["teacher"] == "teacher-t"
    # same seed and batches: the teacher's term is added to the loss
    assert float(_log(s, "student-kd")[0]["train_loss"]) > float(_log(s, "student-plain")[0]["train_loss"])
    with pytest.raises(ValueError, match="--distill-from"):
        train(s, tiny_request("kd-bad", distill_weight=1.0, **kw), progress=False)
    with pytest.raises(ValueError, match="its head must run on the trunk"):
        train(s, tiny_request("kd-bad", distill_from=TINY, distill_weight=1.0, **kw), progress=False)


def test_gender_and_colour_labels_are_shared_across_datasets(train_settings):  # noqa: F811
    _, both = training_table(train_settings, "both", "all")
    genders = gender_encoding()
    codes = genders.encode(both["gender"])
    photos, catalog = both["domain"] == "deepfashion", both["domain"] == "fashion"
    # a photo in a MEN folder and a catalog product of gender Men carry one code
    assert set(both.loc[photos, "gender"]) <= {"Men", "Women"}
    men = genders.classes.index("Men")
    assert set(codes[photos & (both["gender"] == "Men")]) == {men} == set(codes[catalog & (both["gender"] == "Men")])
    assert genders.encode(["Unisex"]).tolist() == [-1] and GENDERS == genders.classes
    colours = colour_encoding(both["colour"])
    assert (colours.encode(both.loc[photos, "colour"]) == -1).all()  # photos have no colour label
    assert (colours.encode(both.loc[catalog, "colour"]) >= 0).all()


def test_top_k_rows_and_val_scores_on_a_hand_example():
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    assert top_k_rows(emb[:1], emb, 3).tolist() == [[0, 1, 3]]
    assert top_k_rows(emb[:1], emb, 3, exclude_rows=np.array([0])).tolist() == [[1, 3, 2]]
    labels = np.array([0, 0, 1, 1])
    domain = np.array(["fashion"] * 4)
    colours = np.array(["Red", "Blue", "Red", "Red"])
    genders = np.array(["Men", "Men", "Women", "Unisex"])
    views = np.array([[1, 0.05], [0, 1], [0.05, 1], [np.nan, np.nan]], np.float32)  # row 1's view looks like 2
    out = val_scores(emb, labels, domain, colours=colours, genders=genders, views=views, score="shopper")
    # leave-one-out top 3: row0 -> 1,3,2; row1 -> 0,3,2; row2 -> 3,1,0; row3 -> 2,1,0
    assert out["catalog_p@15"] == pytest.approx(1 / 15)  # one hit each; P@k always divides by k
    assert out["catalog_colour@15"] == pytest.approx(np.mean([2 / 3, 0, 2 / 3, 2 / 3]))
    # a Unisex result (row 3) agrees with every query; a Unisex query agrees only with Unisex results
    assert out["catalog_gender@15"] == pytest.approx(np.mean([2 / 3, 2 / 3, 1 / 3, 0]))
    assert out["exact_r@1"] == pytest.approx(2 / 3)  # rows 0 and 2 find themselves; row 1 finds row 3
    terms = [out[k] for k in SHOPPER_TERMS if k in out]
    assert out["score"] == pytest.approx(np.mean(terms)) and len(terms) == 4
    assert val_scores(emb, labels, domain)["score"] == pytest.approx(out["catalog_p@15"])
    with pytest.raises(ValueError, match="unknown validation score"):
        val_scores(emb, labels, domain, score="colour")


def test_every_shopper_objective_trains_and_is_validated(train_settings):  # noqa: F811
    s = train_settings
    kw = dict(dataset="both", trainable=[], dims=16, epochs=3, lr=1e-2, batch_size=32)
    train(s, tiny_request("plain-t", **kw), progress=False)
    info = train(s, tiny_request("shopper", colour_weight=1.0, gender_weight=1.0, instance_weight=0.5,
                                 view_scales=[0.5], view_weight=1.0, val_score="shopper", **kw), progress=False)
    plain, rows = _log(s, "plain-t"), _log(s, "shopper")
    # same seed and batches: each extra objective adds a positive term, and the sum falls while training
    assert float(rows[0]["train_loss"]) > float(plain[0]["train_loss"]) + 0.5
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    final = info["final_val"]
    for key in ("catalog_colour@15", "catalog_gender@15", "photo_gender@15", "exact_r@1", "item_r@1"):
        assert 0.0 <= final[key] <= 1.0, key
    assert final["score"] == pytest.approx(np.mean([final[k] for k in SHOPPER_TERMS if k in final]))
    assert info["objectives"] == {"articleType": 1.0, "item": 0.5, "colour": 1.0, "gender": 1.0, "views": 1.0}
    cfg = get_model_config("shopper", s.workdir)
    assert cfg.extra["training_objectives"]["view_scales"] == [0.5]
    assert cfg.extra["training"]["val_score"] == "shopper"
    with pytest.raises(ValueError, match="--view-scale"):
        train(s, tiny_request("bad-views", view_weight=1.0, **kw), progress=False)
    with pytest.raises(ValueError, match="--colour-weight"):
        train(s, tiny_request("bad-image", "classifier", colour_weight=1.0, dataset="both"), progress=False)


def test_paired_views_teach_a_rescaled_product_to_find_itself(train_settings):  # noqa: F811
    """A product re-rendered at a quarter scale retrieves that very product more often after the view loss."""
    s = train_settings
    kw = dict(dataset="fashion", trainable=[], dims=16, epochs=8, lr=1e-2, batch_size=32, view_scales=[0.25],
              val_score="shopper")
    without = train(s, tiny_request("views-off", **kw), progress=False)["final_val"]["exact_r@1"]
    with_views = train(s, tiny_request("views-on", view_weight=2.0, **kw), progress=False)["final_val"]["exact_r@1"]
    assert with_views > without


@pytest.fixture(scope="module")
def larger_settings(tmp_path_factory):
    """A catalog whose val split holds more than 15 products per query (P@15 depends on the ranking)."""
    workdir = tmp_path_factory.mktemp("suffixwd")
    make_tiny_model(workdir, TINY, seed=0)
    return make_settings(make_synthetic_catalog(tmp_path_factory.mktemp("catalog40"), per_class=40), workdir,
                         deepfashion_root=make_synthetic_deepfashion(tmp_path_factory.mktemp("df40")))


def test_suffix_recipe_trains_the_last_blocks_on_cached_maps(larger_settings):
    from imageretrieval.images import open_image
    from imageretrieval.models import create_model
    from imageretrieval.preprocess import preprocess_for
    from imageretrieval.training.suffix import prefix, trainable_suffix

    s = larger_settings
    kw = dict(dataset="both", dims=16, lr=1e-2, batch_size=32)
    train(s, tiny_request("suffix-src", trainable=[], epochs=2, **kw), progress=False)
    info = train(s, tiny_request("suffix-ft", "suffix", init_from="suffix-src", epochs=3, colour_weight=0.5,
                                 gender_weight=0.5, view_scales=[0.5], view_weight=1.0, **kw), progress=False)
    assert info["mode"] == "cached-prefix-maps" and info["proxies"] == ["loss"]  # the source's articleType proxies
    assert info["best_val_score"] > info["start_val"]["score"]
    rows = _log(s, "suffix-ft")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    maps = sorted(p.name for p in (s.workdir / "features" / "tiny" / "maps-b3").glob("*.npy"))
    assert any("-flip" in m for m in maps) and any("-x0.5" in m for m in maps) and any("deepfashion" in m for m in maps)
    base, tuned = create_model("tiny", workdir=s.workdir), create_model("suffix-ft", workdir=s.workdir)
    for i, (b, t) in enumerate(zip(base.trunk.blocks, tuned.trunk.blocks, strict=True)):
        same = all(torch.equal(p, q) for p, q in zip(b.parameters(), t.parameters(), strict=True))
        assert same == (i < 3), f"block {i}"  # the frozen blocks are the base's; the last two trained
    cfg = get_model_config("suffix-ft", s.workdir)
    assert cfg.extra["training"]["recipe"] == "suffix" and cfg.reuses_trunk_of is None
    # the saved model on an image equals the cached-maps path it was trained on (fp16 maps)
    image = open_image(next((s.dataset_root / "images").glob("*.jpg")))
    x = torch.from_numpy(preprocess_for(cfg)(image)).float().div(255)[None]
    with torch.no_grad():
        full = tuned(x)
        maps = prefix(tuned.trunk, (x - tuned.mean) / tuned.std).half().float()
        via_maps = tuned.embed_pooled(tuned.pool(trainable_suffix(tuned.trunk)(maps)))
    assert torch.nn.functional.cosine_similarity(full, via_maps).item() > 0.999
    with pytest.raises(ValueError, match="--init-from"):
        train(s, tiny_request("suffix-bad", "suffix", epochs=1, **kw), progress=False)
    with pytest.raises(ValueError, match="--input-size"):
        train(s, tiny_request("suffix-bad", "suffix", init_from="suffix-src", input_size=32, epochs=1, **kw),
              progress=False)


def test_cached_maps_are_reused_only_for_the_same_images_trunk_and_input(larger_settings):
    from imageretrieval.models import create_model
    from imageretrieval.models.extractor import FeatureExtractor
    from imageretrieval.training.suffix import prefix_maps

    from .conftest import tiny_config

    s = larger_settings
    model = create_model(TINY, workdir=s.workdir)
    paths = sorted(str(p) for p in (s.dataset_root / "images").glob("*.jpg"))[:4]
    first = np.array(prefix_maps(s, model, TINY, "probe", paths, progress=False))
    stored = s.workdir / "features" / TINY / "maps-b3" / "probe.npy"
    written = stored.stat().st_mtime_ns
    assert np.array_equal(prefix_maps(s, model, TINY, "probe", paths, progress=False), first)
    assert stored.stat().st_mtime_ns == written  # reused
    torch.manual_seed(5)
    retrained = FeatureExtractor(tiny_config(TINY)).eval()  # another trunk under the same name
    assert not np.array_equal(prefix_maps(s, retrained, TINY, "probe", paths, progress=False), first)
    assert prefix_maps(s, model, TINY, "probe", paths[:3], progress=False).shape[0] == 3  # other images
