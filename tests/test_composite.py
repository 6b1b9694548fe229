"""Composite models: members side by side on a packed input, features reused from the members' caches."""

import numpy as np
import pytest
import torch
from PIL import Image

from imageretrieval.artifacts import build_model_index
from imageretrieval.cli import main
from imageretrieval.engine import RetrievalEngine
from imageretrieval.extract import extract_features, feature_dir
from imageretrieval.featurestore import concat_normalized, get_features
from imageretrieval.images import open_image
from imageretrieval.models import create_model, get_model_config, save_composite, save_trained_model
from imageretrieval.models.extractor import FeatureExtractor
from imageretrieval.preprocess import Preprocess, preprocess_for
from imageretrieval.training.recipes import TrainRequest, train
from imageretrieval.training.trainer import TrainOptions

from .conftest import count_encoded, make_settings, tiny_config

SIZES = {"small": 40, "large": 56}


@pytest.fixture(scope="module")
def composite_settings(tmp_path_factory, synthetic_catalog):
    workdir = tmp_path_factory.mktemp("compositewd")
    for seed, (name, size) in enumerate(SIZES.items()):
        torch.manual_seed(seed)
        cfg = tiny_config(name, "test_efficientnet" if seed == 0 else "test_resnet", 256 if seed == 0 else 96)
        save_trained_model(workdir, FeatureExtractor(cfg.model_copy(update={"input_size": size})).eval())
    save_composite(workdir, "duo", ["small", "large"])
    return make_settings(synthetic_catalog, workdir)


def test_packed_input_holds_each_members_own_square():
    img = Image.new("RGB", (30, 40), (200, 10, 10))
    packed = Preprocess(56, packed_sizes=(40, 56))(img)
    assert tuple(packed.shape) == Preprocess(56, packed_sizes=(40, 56)).shape == (3, 56, 96)
    assert np.array_equal(packed[:, :40, :40], Preprocess(40)(img))
    assert np.array_equal(packed[:, :, 40:], Preprocess(56)(img))
    assert (packed[:, 40:, :40] == 255).all()  # below the smaller square: white canvas


def test_composite_config_and_forward_equal_the_members_side_by_side(composite_settings):
    s = composite_settings
    cfg = get_model_config("duo", s.workdir)
    assert cfg.trunk_dims == 256 + 96 and cfg.input_size == 56 and cfg.member_sizes == [40, 56]
    img = open_image(next(iter((s.dataset_root / "images").glob("*.jpg"))))
    with torch.no_grad():
        whole = create_model("duo", workdir=s.workdir)(torch.from_numpy(preprocess_for(cfg)(img))[None].float() / 255)
        parts = [create_model(m, workdir=s.workdir)(torch.from_numpy(Preprocess(SIZES[m])(img))[None].float() / 255).numpy()
                 for m in SIZES]
    np.testing.assert_allclose(whole.numpy(), concat_normalized(parts), atol=1e-5)
    with pytest.raises(ValueError, match="56x96"):
        create_model("duo", workdir=s.workdir)(torch.zeros(1, 3, 56, 56))


def test_composite_features_come_from_the_members_caches(composite_settings, monkeypatch):
    s = composite_settings
    fs, table = get_features(s, "duo", "fashion", "test", "all", progress=False)
    members = [get_features(s, m, "fashion", "test", "all", progress=False)[0].features for m in SIZES]
    np.testing.assert_array_equal(fs.features, concat_normalized(members))
    assert not feature_dir(s.workdir, "duo", "fashion-all-test").exists()  # nothing encoded for the composite
    full = extract_features(create_model("duo", workdir=s.workdir), [*table["path"]], table["id"].to_numpy(),
                            s.workdir / "check", batch_size=8, num_workers=0, device="cpu", precision="fp32",
                            progress=False)
    np.testing.assert_allclose(fs.features, full.features, atol=1e-5)
    # the whole catalog encodes only the rows no other feature set of the model holds yet
    encoded = count_encoded(monkeypatch)
    everything, _ = get_features(s, "large", "fashion", progress=False)
    assert encoded["n"] == len(everything.ids) - len(table)
    # a selection's whole table is assembled from its three split caches when those are all there
    for split in ("train", "val"):
        get_features(s, "small", "fashion", split, "all", progress=False)
    whole, whole_table = get_features(s, "small", "fashion", "all", "all", progress=False)
    assert len(whole.features) == len(whole_table) and not np.isnan(whole.features).any()
    assert not feature_dir(s.workdir, "small", "fashion-all").exists()  # sliced, not encoded again


def test_head_on_a_composite_trains_indexes_and_searches(composite_settings):
    s = composite_settings
    opts = TrainOptions(epochs=4, lr=1e-2, patience=10, seed=0, warmup_epochs=0)
    info = train(s, TrainRequest(base="duo", name="duo-head", dataset="fashion", selection="all", trainable=[],
                                 dims=16, head_hidden=32, batch_size=32, options=opts), progress=False)
    assert info["mode"] == "cached-trunk-features"
    assert get_model_config("duo-head", s.workdir).composite_of == ["small", "large"]
    build_model_index(s, "duo-head", progress=False)
    engine = RetrievalEngine(s, "duo-head")
    pid = int(engine.ids[3])
    hits = engine.search([s.dataset_root / "images" / f"{pid}.jpg"], k=5)[0]
    assert hits[0].id == pid and hits[0].score == pytest.approx(1.0, abs=1e-4)  # query path == index path
    with pytest.raises(ValueError, match="composite of frozen backbones"):
        train(s, TrainRequest(base="duo", name="x", recipe="classifier", options=opts), progress=False)
    with pytest.raises(ValueError, match="composite of frozen backbones"):
        train(s, TrainRequest(base="duo", name="x", trainable=[".*"], options=opts), progress=False)


def test_cli_compose_saves_a_named_composite_and_refuses_trained_heads(composite_settings, capsys):
    s = composite_settings
    flags = ["--dataset-root", str(s.dataset_root), "--workdir", str(s.workdir)]
    assert main(["compose", "--name", "trio", "small", "large", "small", *flags]) == 0
    assert "trio: small + large + small, 608 dims" in capsys.readouterr().out
    assert get_model_config("trio", s.workdir).member_sizes == [40, 56, 40]
    train(s, TrainRequest(base="small", name="small-head", dataset="fashion", selection="all", trainable=[],
                          dims=8, options=TrainOptions(epochs=1, warmup_epochs=0)), progress=False)
    assert main(["compose", "--name", "bad", "small", "small-head", *flags]) == 2
    assert "plain backbones" in capsys.readouterr().err
    assert main(["extract", "--model", "trio", "--split", "test", *flags]) == 0  # from the members' caches
    assert "feature vectors of 608 dims (0 unreadable images)" in capsys.readouterr().out
    assert not (s.workdir / "features" / "trio").exists()
