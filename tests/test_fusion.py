"""Fusions: weighted late fusion of embedding models (trained, pretrained, composites) as one zoo model."""

import numpy as np
import pytest
import torch
from PIL import Image

from imageretrieval.artifacts import build_model_index
from imageretrieval.cli import main
from imageretrieval.engine import RetrievalEngine
from imageretrieval.extract import feature_dir
from imageretrieval.featurestore import concat_normalized, get_features
from imageretrieval.models import create_model, get_model_config, save_composite, save_fusion, save_trained_model
from imageretrieval.models.extractor import FeatureExtractor
from imageretrieval.preprocess import Preprocess, preprocess_for

from .conftest import make_settings, tiny_config

WEIGHTS = [3.0, 1.0]  # normalized to 0.75 / 0.25


@pytest.fixture(scope="module")
def fusion_settings(tmp_path_factory, synthetic_catalog):
    workdir = tmp_path_factory.mktemp("fusionwd")
    torch.manual_seed(0)
    embedder = tiny_config("embedder", "test_efficientnet", 256).model_copy(
        update={"input_size": 48, "embedding_dims": 24, "l2_normalize_output": True})
    save_trained_model(workdir, FeatureExtractor(embedder).eval())
    for seed, (name, size) in enumerate({"small": 40, "large": 56}.items(), start=1):
        torch.manual_seed(seed)
        save_trained_model(workdir, FeatureExtractor(tiny_config(name, "test_resnet", 96).model_copy(
            update={"input_size": size})).eval())
    save_composite(workdir, "duo", ["small", "large"])
    save_fusion(workdir, "fused", ["embedder", "duo"], WEIGHTS)  # a trained head + a nested composite
    return make_settings(synthetic_catalog, workdir)


def test_fusion_config_lays_out_every_members_squares(fusion_settings):
    cfg = get_model_config("fused", fusion_settings.workdir)
    assert cfg.kind == "trained" and cfg.dims == 24 + 2 * 96 and cfg.input_size == 56
    assert cfg.member_sizes == [48, 40, 56] and cfg.member_layouts == [[48], [40, 56]]
    assert cfg.member_weights == [0.75, 0.25]


def test_fusion_forward_is_the_weighted_members_side_by_side(fusion_settings):
    s = fusion_settings
    cfg = get_model_config("fused", s.workdir)
    img = Image.new("RGB", (30, 44), (20, 120, 200))
    with torch.no_grad():
        whole = create_model("fused", workdir=s.workdir)(torch.from_numpy(preprocess_for(cfg)(img))[None].float() / 255).numpy()
        emb = create_model("embedder", workdir=s.workdir)(torch.from_numpy(Preprocess(48)(img))[None].float() / 255).numpy()
        duo_cfg = get_model_config("duo", s.workdir)
        duo = create_model("duo", workdir=s.workdir)(torch.from_numpy(preprocess_for(duo_cfg)(img))[None].float() / 255).numpy()
    np.testing.assert_allclose(whole, concat_normalized([emb, duo], [0.75, 0.25]), atol=1e-5)
    assert np.linalg.norm(whole) == pytest.approx(1.0, abs=1e-5)  # weights sum to 1: unit vectors


def test_fused_cosine_is_the_weighted_mean_of_the_members_cosines(fusion_settings):
    s = fusion_settings
    fused, _ = get_features(s, "fused", "fashion", "test", "all", progress=False)
    parts = [get_features(s, m, "fashion", "test", "all", progress=False)[0].features for m in ("embedder", "duo")]
    assert not feature_dir(s.workdir, "fused", "fashion-all-test").exists()  # from the members' caches
    cosines = [concat_normalized([p]) @ concat_normalized([p]).T for p in parts]
    np.testing.assert_allclose(fused.features @ fused.features.T, 0.75 * cosines[0] + 0.25 * cosines[1], atol=1e-5)


def test_fusion_indexes_and_searches_like_any_model(fusion_settings):
    s = fusion_settings
    build_model_index(s, "fused", progress=False)
    engine = RetrievalEngine(s, "fused")
    pid = int(engine.ids[5])
    hits = engine.search([s.dataset_root / "images" / f"{pid}.jpg"], k=5)[0]
    assert hits[0].id == pid and hits[0].score == pytest.approx(1.0, abs=1e-4)  # query path == index path


@pytest.mark.parametrize(("argv", "message"), [
    (["small", "large", "--weights", "0.5"], "1 weights for 2 members"),
    (["small", "large", "--weights", "1,0"], "must be positive"),
    (["small", "large", "--weights", "a,b"], "comma-separated numbers"),
    (["small"], "at least two member models"),
    (["small", "nosuchmodel"], "unknown model 'nosuchmodel'"),
    (["small", "large", "--name", "duo"], "already a model of the zoo (not a fusion)"),
])
def test_cli_fuse_refuses_bad_input_with_a_message(fusion_settings, capsys, argv, message):
    s = fusion_settings
    assert main(["fuse", "--name", "bad", *argv, "--workdir", str(s.workdir)]) == 2
    assert message in capsys.readouterr().err
    assert not (s.workdir / "models" / "bad").exists()


def test_cli_fuse_saves_a_named_fusion(fusion_settings, capsys):
    s = fusion_settings
    flags = ["--dataset-root", str(s.dataset_root), "--workdir", str(s.workdir)]
    assert main(["fuse", "--name", "pair", "embedder", "small", "--weights", "1,1", *flags]) == 0
    assert "pair: 0.5 x embedder + 0.5 x small, 120 dims" in capsys.readouterr().out
    assert main(["fuse", "--name", "pair", "embedder", "small", "--weights", "1,3", *flags]) == 0  # re-weighted
    assert get_model_config("pair", s.workdir).member_weights == [0.25, 0.75]
    assert main(["models", "--json", *flags]) == 0
    assert '"name": "pair", "kind": "trained", "backbone": "fusion(embedder,small)"' in capsys.readouterr().out


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_fusion_of_a_composite_exports_with_torchs_embeddings(fusion_settings, tmp_path, runtime):
    """A fusion holding a nested composite (three trunks cut from one packed input) runs on the exported
    runtimes with PyTorch's embeddings."""
    from imageretrieval.inference import create_encoder

    s = fusion_settings
    model = create_model("fused", workdir=s.workdir)
    preprocess = preprocess_for(model.config)
    images = np.stack([preprocess(Image.new("RGB", (30 + 7 * i, 44), (20 * i, 120, 200))) for i in range(3)])
    reference = create_encoder(model, preprocess.shape, "torch", workdir=tmp_path)(images)
    exported = create_encoder(model, preprocess.shape, runtime, workdir=tmp_path)(images)
    np.testing.assert_allclose(exported, reference, atol=1e-4)


def test_weight_grid_on_a_hand_computed_case():
    from imageretrieval.evaluation.fusion import weight_grid

    assert weight_grid(3, 2) == [(0, 0, 1), (0, 0.5, 0.5), (0, 1, 0), (0.5, 0, 0.5), (0.5, 0.5, 0), (1, 0, 0)]
    assert all(sum(w) == pytest.approx(1) for w in weight_grid(3))
    assert len(weight_grid(2)) == 11


def test_fuse_chooses_weights_on_val_and_scores_test_once(fusion_settings, capsys):
    from imageretrieval.evaluation.fusion import choose_fusion_weights

    s = fusion_settings
    result = choose_fusion_weights(s, ["embedder", "small"], selection="all", steps=4)
    val, chosen = result["val"], result["chosen"]
    assert set(val) == {(0, 1), (0.25, 0.75), (0.5, 0.5), (0.75, 0.25), (1, 0)}
    best = max((v["PrecisionHits"], v["mAP"]) for v in val.values())
    assert (val[chosen]["PrecisionHits"], val[chosen]["mAP"]) == best
    assert set(result["test"]) == {(1.0, 0.0), (0.0, 1.0), chosen}  # each model alone, and the chosen fusion
    flags = ["--dataset-root", str(s.dataset_root), "--workdir", str(s.workdir)]
    code = main(["fuse", "--name", "chosen-pair", "embedder", "small", "--choose-on", "val", "--selection", "all",
                 *flags])
    out = capsys.readouterr()
    assert "chosen on val (all selection, rerank none)" in out.out
    assert "test embedder" in out.out and "test small" in out.out
    full = choose_fusion_weights(s, ["embedder", "small"], selection="all")["chosen"]
    if min(full) > 0:
        assert code == 0 and get_model_config("chosen-pair", s.workdir).member_weights == list(full)
    else:  # one model alone won on val: nothing is saved
        assert code == 2 and "no fusion saved" in out.err
        assert not (s.workdir / "models" / "chosen-pair").exists()
    with pytest.raises(SystemExit):  # argparse: --weights and --choose-on exclude each other
        main(["fuse", "--name", "x", "embedder", "small", "--choose-on", "val", "--weights", "1,1", *flags])
