"""Inference runtimes: exported models give PyTorch's embeddings; exports are cached and rebuilt when stale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imageretrieval.engine import RetrievalEngine
from imageretrieval.images import open_image
from imageretrieval.inference import (
    RuntimeUnavailableError,
    create_encoder,
    export_dir,
    export_onnx,
    resolve_runtime,
)
from imageretrieval.models import create_model, get_model_config
from imageretrieval.models.config import ModelConfig, WeightSource
from imageretrieval.models.extractor import FeatureExtractor
from imageretrieval.preprocess import Preprocess, letterbox, preprocess_for, to_uint8_array

from .conftest import TINY

CPU = torch.device("cpu")


def _tiny(seed: int = 0, width: int | None = None) -> FeatureExtractor:
    torch.manual_seed(seed)
    config = ModelConfig(name="rt-tiny", architecture="test_efficientnet", trunk_dims=256, input_size=64,
                         input_width=width, embedding_dims=32, extra={"head_hidden": 48},
                         l2_normalize_output=True, weights=WeightSource(type="random"))
    return FeatureExtractor(config).eval()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("width", [None, 48])
def test_exported_runtimes_give_torchs_embeddings(tmp_path, runtime, width):
    model = _tiny(width=width)
    shape = preprocess_for(model.config).shape
    assert shape == (3, 64, width or 64)
    images = np.random.default_rng(0).integers(0, 256, (5, *shape), dtype=np.uint8)
    reference = create_encoder(model, shape, "torch", workdir=tmp_path)(images)
    encoder = create_encoder(model, shape, runtime, workdir=tmp_path)
    assert encoder.runtime == runtime
    for batch in (images, images[:1], torch.from_numpy(images[:3])):  # any batch size, numpy or tensor
        out = encoder(batch)
        assert out.dtype == np.float32 and out.shape == (len(batch), 32)
        assert _cosines(out, reference[:len(batch)]).mean() >= 0.9999
    np.testing.assert_allclose(encoder(images), reference, atol=1e-4)


def test_export_is_cached_by_content_and_rebuilt_when_stale(tmp_path):
    model = _tiny(seed=0)
    shape = preprocess_for(model.config).shape
    first = export_onnx(model, shape, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert export_onnx(_tiny(seed=0), shape, tmp_path) == first and first.stat().st_mtime_ns == stamp  # same weights
    retrained = export_onnx(_tiny(seed=1), shape, tmp_path)  # same config, other weights
    assert retrained != first and retrained.is_file() and not first.exists()  # the stale export is gone
    resized = export_onnx(_tiny(seed=1), (3, 64, 32), tmp_path)  # other input shape
    assert resized not in (first, retrained)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [resized.name]  # no temp files


def test_auto_runtime_rule(monkeypatch):
    assert resolve_runtime("auto", CPU, "fp32") == "onnxruntime"
    assert resolve_runtime("auto", CPU, "bf16") == "torch"  # bf16 autocast is a PyTorch feature
    assert resolve_runtime("auto", torch.device("cuda"), "fp32") == "torch"
    assert resolve_runtime("openvino", CPU) == "openvino"
    with pytest.raises(RuntimeUnavailableError, match="RUNTIME=torch"):
        resolve_runtime("onnxruntime", torch.device("cuda"))
    with pytest.raises(RuntimeUnavailableError, match="choose one of"):
        resolve_runtime("tensorrt", CPU)
    import imageretrieval.inference as inference

    monkeypatch.setattr(inference, "runtime_installed", lambda r: r in ("torch", "openvino"))
    assert resolve_runtime("auto", CPU) == "openvino"
    with pytest.raises(RuntimeUnavailableError, match="pip install onnxruntime"):
        resolve_runtime("onnxruntime", CPU)
    monkeypatch.setattr(inference, "runtime_installed", lambda r: r == "torch")
    assert resolve_runtime("auto", CPU) == "torch"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_engine_ranks_the_same_on_every_runtime(settings, runtime):
    torch_engine = RetrievalEngine(settings.model_copy(update={"runtime": "torch"}), TINY)
    engine = RetrievalEngine(settings.model_copy(update={"runtime": runtime}), TINY)
    assert engine.encoder.runtime == runtime and engine.describe()["runtime"] == runtime
    assert any(export_dir(settings.workdir, TINY).glob("model-*.onnx"))
    from imageretrieval.catalog import load_catalog

    cat = load_catalog(settings.dataset_root)
    images = [open_image(cat.image_path(i)) for i in cat.ids[::7]]
    a, b = engine.encode(images), torch_engine.encode(images)
    assert _cosines(a, b).min() >= 0.9999
    assert [[h.id for h in r] for r in engine.search(images, k=5)] == \
        [[h.id for h in r] for r in torch_engine.search(images, k=5)]
    batch = np.stack([engine.preprocess(img) for img in images])
    background = engine.background_encoder()
    assert background is engine.background_encoder()  # made once
    if runtime == "onnxruntime":  # a second session whose threads sleep between forwards
        assert background is not engine.encoder and engine.encoder.spin and not background.spin
    np.testing.assert_array_equal(engine.encode_tensors(batch, background=True), engine.encode_tensors(batch))


def test_portrait_letterbox_fills_the_box_for_catalog_shaped_images():
    product = Image.new("RGB", (60, 80), (10, 20, 30))
    boxed = letterbox(product, 128, width=96)
    assert boxed.size == (96, 128)
    assert boxed.getpixel((0, 0)) == (10, 20, 30) and boxed.getpixel((95, 127)) == (10, 20, 30)  # no padding
    wide = letterbox(Image.new("RGB", (120, 60), (0, 0, 0)), 128, width=96)  # a landscape image: white bands
    assert wide.size == (96, 128) and wide.getpixel((48, 2)) == (255, 255, 255) and wide.getpixel((48, 64)) == (0, 0, 0)
    square = letterbox(product, 64)
    assert square.size == (64, 64) and square.getpixel((2, 32)) == (255, 255, 255)


@pytest.mark.parametrize("box", [(224, None), (224, 168), (160, 120)])
def test_preprocessing_writes_the_letterboxed_image_straight_into_the_batch(box):
    """The direct path (no canvas) must give letterbox + to_uint8_array's bytes: features cached by
    one path are compared with queries encoded by the other."""
    size, width = box
    rng = np.random.default_rng(0)
    pre = Preprocess(size, input_width=width)
    batch = np.zeros((2, *pre.shape), dtype=np.uint8)
    for w, h in [(60, 80), (80, 60), (1, 1), (1, 300), (300, 1), (500, 333), (size, size), (width or size, size)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        expected = to_uint8_array(letterbox(img, size, width=width))
        pre.write_into(img, batch[1])
        assert np.array_equal(batch[1], expected), (w, h)
        assert np.array_equal(pre(img), expected)
    grey = Image.fromarray(rng.integers(0, 256, (80, 60), dtype=np.uint8))
    assert np.array_equal(pre(grey), to_uint8_array(letterbox(grey.convert("RGB"), size, width=width)))
    assert not batch[0].any()  # the neighbouring row is untouched


def test_sized_variant_of_a_pretrained_model(tmp_path):
    base = get_model_config("efficientnet_lite0")
    sized = get_model_config("efficientnet_lite0@96x128")
    assert sized.name == "efficientnet_lite0@96x128" and sized.input_hw == (128, 96)
    assert sized.weights == base.weights and sized.fingerprint() != base.fingerprint()
    assert get_model_config("efficientnet_lite0@160x160").input_hw == (160, 160)
    assert preprocess_for(sized).shape == (3, 128, 96)
    model = create_model("efficientnet_lite0@96x128", pretrained=False)
    assert model(torch.zeros(1, 3, 128, 96)).shape == (1, 1280)
    from imageretrieval.models.registry import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        get_model_config("efficientnet_lite012@96x128")  # a composite keeps its members' sizes
    with pytest.raises(ModelNotFoundError):
        get_model_config("efficientnet_lite0@8x8")
    with pytest.raises(ModelNotFoundError):
        get_model_config("nope@96x128")


def test_square_configs_keep_their_fingerprint():
    """The input_width field is left out of square models' fingerprints: their cached features stay valid."""
    import hashlib
    import json

    from imageretrieval.models.config import TYPED_EXTRA_KEYS

    config = get_model_config("efficientnet_lite0")
    dump = config.model_dump(mode="json")
    dump.pop("input_width")
    for key in TYPED_EXTRA_KEYS:  # unset on a pretrained model; typed after its fingerprint was defined
        assert dump.pop(key) is None
    assert config.fingerprint() == hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]


def test_bench_encoder_runs_every_runtime_side_by_side(settings, capsys, monkeypatch):
    from benchmarks.__main__ import main

    for key, value in {"DATASET_ROOT": str(settings.dataset_root), "WORKDIR": str(settings.workdir),
                       "DEVICE": "cpu", "NUM_WORKERS": "0"}.items():
        monkeypatch.setenv(key, value)
    assert main(["encoder", "--model", TINY, "--rounds", "1", "--batch", "4", "--images", "20",
                 "--no-write"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ") and " ms | " in line]
    assert [line.split(" | ")[0] for line in table] == ["| torch", "| torch-compiled", "| onnxruntime", "| openvino"]
    assert all(" 64x64 " in line for line in table)
    extraction = [line for line in out.splitlines() if line.startswith("| onnxruntime | 64x64 | 20 |")]
    assert len(extraction) == 1 and extraction[0].endswith("x |")


_WITHOUT_TORCH = '''
import importlib.util, sys
BLOCKED = ("torch", "timm", "torchvision")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed (blocked by the test)")
sys.meta_path.insert(0, Block())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a, **k: None if name.split(".")[0] in BLOCKED else _find_spec(name, *a, **k)
'''


def test_api_serves_an_index_without_pytorch(settings, tmp_path):
    """A serving install (no torch, timm, torchvision) answers searches from the index's exported encoder,
    with the vectors PyTorch gives."""
    import json
    import subprocess
    import sys

    from imageretrieval.artifacts import ModelArtifacts
    from imageretrieval.catalog import load_catalog

    art = ModelArtifacts.of(settings.workdir, TINY)
    manifest = art.read_manifest()
    assert art.encoder.is_file() and manifest["encoder"]["file"] == "encoder.onnx"
    assert manifest["preprocess"]["input_size"] == 64
    pid = int(load_catalog(settings.dataset_root).ids[5])
    expected = RetrievalEngine(settings.model_copy(update={"runtime": "torch"}), TINY).search(
        [load_catalog(settings.dataset_root).image_path(pid)], k=5)[0]
    script = _WITHOUT_TORCH + f'''
from fastapi.testclient import TestClient
from retrievalapi import create_app
from retrievalapi.settings import ApiSettings
s = ApiSettings(dataset_root={str(settings.dataset_root)!r}, workdir={str(settings.workdir)!r}, models="{TINY}",
                default_model="{TINY}", pca_components=32)
with TestClient(create_app(s)) as c:
    data = open({str(load_catalog(settings.dataset_root).image_path(pid))!r}, "rb").read()
    r = c.post("/api/search", files={{"image": ("q.jpg", data, "image/jpeg")}}, data={{"top_k": "5"}})
    models = c.get("/api/models").json()
print(json.dumps({{"status": r.status_code, "body": r.json(), "models": models,
                  "torch": [m for m in sys.modules if m.split(".")[0] in BLOCKED]}}))
'''
    out = subprocess.run([sys.executable, "-c", "import json\n" + script], capture_output=True, text=True,
                         timeout=300, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == 200 and result["torch"] == []
    assert [h["id"] for h in result["body"]["results"]] == [h.id for h in expected]
    scores = [h["score"] for h in result["body"]["results"]]
    np.testing.assert_allclose(scores, [h.score for h in expected], atol=1e-4)


def test_an_unavailable_runtime_is_a_one_line_cli_error(settings, capsys, monkeypatch):
    from imageretrieval.cli import main

    monkeypatch.setenv("RUNTIME", "onnxruntime")
    image = str(next((settings.dataset_root / "images").glob("*.jpg")))
    assert main(["--workdir", str(settings.workdir), "--dataset-root", str(settings.dataset_root), "--device", "cpu",
                 "--precision", "bf16", "search", "--model", TINY, "--image", image]) == 2
    assert "PRECISION=bf16 is PyTorch autocast" in capsys.readouterr().err


@pytest.mark.parametrize("threads", [1, 2])
def test_threaded_decoding_keeps_order_and_flags_bad_files(settings, tmp_path, threads):
    from imageretrieval.extract import image_batches

    paths = sorted((settings.dataset_root / "images").glob("*.jpg"))[:11]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    paths.insert(4, broken)
    preprocess = preprocess_for(get_model_config(TINY, settings.workdir))
    expected = list(image_batches(paths, preprocess, batch_size=5, threads=0, prefetch=2))
    got = list(image_batches(paths, preprocess, batch_size=5, threads=threads, prefetch=2))
    assert [len(b) for b, _ in got] == [5, 5, 2]
    for (a, ok_a), (b, ok_b) in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ok_a, ok_b)
    assert got[0][1].tolist() == [True, True, True, True, False] and not got[0][0][4].any()


def test_an_index_built_before_exports_gets_its_encoder_without_a_rebuild(settings):
    """Upgrading: `imageretrieval index` on a current index that holds no encoder.onnx adds it, nothing else."""
    from imageretrieval.artifacts import ModelArtifacts, build_model_index
    from imageretrieval.io_utils import load_json, save_json

    art = ModelArtifacts.of(settings.workdir, "tiny2")
    manifest = load_json(art.manifest)
    old = {k: v for k, v in manifest.items() if k not in ("encoder", "preprocess", "description", "backbone", "kind")}
    save_json(art.manifest, old)
    art.encoder.unlink()
    vectors = art.vectors.stat().st_mtime_ns
    again = build_model_index(settings, "tiny2", progress=False)
    assert art.encoder.is_file() and again["encoder"]["file"] == "encoder.onnx"
    assert load_json(art.manifest)["preprocess"]["input_size"] == 64
    assert art.vectors.stat().st_mtime_ns == vectors  # not rebuilt


def test_the_model_registry_imports_no_model_code():
    """Names and configs (the API's and the CLI's first step) load without PyTorch or timm."""
    code = ("import sys; import imageretrieval.models as m; "
            "assert 'efficientnet_lite0' in m.list_model_names(); m.get_model_config('efficientnet_lite0@96x128'); "
            "from imageretrieval.models.registry import weights_available, weights_fingerprint; "
            "cfg = m.get_model_config('efficientnet_lite0_fashion'); weights_available(cfg); weights_fingerprint(cfg); "
            "assert not {'torch', 'timm'} & set(sys.modules), sorted({'torch', 'timm'} & set(sys.modules))")
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_configs_saved_with_untyped_keys_load_into_typed_fields_and_keep_their_fingerprint():
    """Configs written before the typed fields kept them in `extra`: a migration on read, same fingerprint."""
    import hashlib
    import json

    from imageretrieval.models import ModelConfig

    legacy = {"name": "old-head", "kind": "trained", "architecture": "test_efficientnet", "trunk_dims": 256,
              "embedding_dims": 32, "l2_normalize_output": True, "weights": {"type": "file", "ref": "weights.pt"},
              "extra": {"reuses_trunk_of": "tiny", "trunk_digest": "94d20601c546c17e", "trunk_from_base": True,
                        "head_hidden": 0, "classes": ["Jeans", "Shirts"], "training": {"recipe": "metric"}}}
    cfg = ModelConfig.model_validate_json(json.dumps(legacy))
    assert (cfg.reuses_trunk_of, cfg.trunk_digest, cfg.trunk_from_base) == ("tiny", "94d20601c546c17e", True)
    assert cfg.head_hidden == 0 and cfg.classes == ["Jeans", "Shirts"] and cfg.extra == {"training": {"recipe": "metric"}}
    old_dump = ModelConfig.model_validate(legacy).model_dump(mode="json")  # the fingerprint as it was computed:
    for key in ("reuses_trunk_of", "trunk_digest", "trunk_from_base", "head_hidden", "classes", "composite_of",
                "member_sizes", "member_layouts", "member_weights", "input_width"):
        old_dump.pop(key)
    old_dump["extra"] = legacy["extra"]  # the untyped keys where they were
    assert cfg.fingerprint() == hashlib.sha256(json.dumps(old_dump, sort_keys=True).encode()).hexdigest()[:16]
    again = ModelConfig.model_validate_json(cfg.model_dump_json())  # saved in the new layout: the same config
    assert again == cfg and again.fingerprint() == cfg.fingerprint()
    composite = ModelConfig.model_validate({**legacy, "extra": {"composite_of": ["a", "b"], "member_sizes": [40, 56]}})
    assert composite.composite_of == ["a", "b"] and composite.member_sizes == [40, 56] and composite.extra == {}
