"""int8 twins of exports: written and accepted by `quantize`, run by PRECISION=int8 end to end, refused
when missing, rejected or tampered with."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from imageretrieval.cli import main
from imageretrieval.inference import RuntimeUnavailableError, create_encoder, export_dir, export_onnx
from imageretrieval.io_utils import load_json, save_json
from imageretrieval.models import create_model
from imageretrieval.preprocess import preprocess_for
from imageretrieval.quantize import (
    QuantizationError,
    acceptance,
    accepted_int8,
    candidate_path,
    file_digest,
    install_twin,
    int8_path,
    load_record,
    record_path,
    rejected_path,
)

from .conftest import TINY, make_settings
from .test_training import make_synthetic_deepfashion


@pytest.fixture()
def workdir(built_workdir, tmp_path):
    """A copy of the session's workdir: quantizing writes beside its exports."""
    return shutil.copytree(built_workdir, tmp_path / "wd")


def _flags(workdir, catalog):
    return ["--workdir", str(workdir), "--dataset-root", str(catalog), "--device", "cpu"]


def test_quantize_writes_an_accepted_twin_that_runs_everywhere(workdir, synthetic_catalog, tmp_path, capsys):
    photos = make_synthetic_deepfashion(tmp_path / "deepfashion")
    flags = [*_flags(workdir, synthetic_catalog), "--deepfashion-root", str(photos)]
    assert main([*flags, "quantize", "--model", TINY, "--selection", "all", "--calibration", "48",
                 "--photos", "16", "--tolerance", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "val catalog P@15: fp32" in out and "val photos mAP: fp32" in out and "int8 export accepted" in out

    model = create_model(TINY, workdir=workdir)
    shape = preprocess_for(model.config).shape
    fp32_path = export_onnx(model, shape, export_dir(workdir, TINY))
    record = load_json(record_path(fp32_path))
    assert record["accepted"] and record["keep_fp32_convs"] == 2
    assert record["calibration"]["products"] == 48 and record["calibration"]["photos"] == 16
    twin = int8_path(fp32_path, record["digest"])
    assert record["digest"] == file_digest(twin)
    assert set(record["val"]["int8"]) == {"catalog P@15", "catalog mAP", "photos P@15", "photos mAP"}
    assert record["val"]["photos"]["queries"] > 0

    # the twin computes nearly the same embeddings, and is a different graph (quantized ops)
    import onnx

    ops = {n.op_type for n in onnx.load(str(twin)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    images = np.random.default_rng(0).integers(0, 256, (8, *shape), dtype=np.uint8)
    fp32 = create_encoder(model, shape, "onnxruntime", precision="fp32", workdir=workdir)(images)
    int8 = create_encoder(model, shape, "onnxruntime", precision="int8", workdir=workdir)(images)
    cosines = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    assert cosines.mean() > 0.95 and not np.allclose(fp32, int8, atol=1e-5)

    # PRECISION=int8: features cached apart, the index serves the twin, a product finds itself
    from imageretrieval.artifacts import ModelArtifacts, build_model_index
    from imageretrieval.catalog import load_catalog
    from imageretrieval.engine import RetrievalEngine
    from imageretrieval.featurestore import get_features

    settings = make_settings(synthetic_catalog, workdir).model_copy(update={"precision": "int8"})
    fs, _ = get_features(settings, TINY, "fashion", progress=False)
    meta = load_json(workdir / "features" / TINY / "fashion-all-all-int8" / "meta.json")
    assert meta["precision"] == "int8" and meta["fingerprint"].endswith(f":int8:{record['digest']}")
    manifest = build_model_index(settings, TINY, progress=False)
    assert manifest["encoder"]["precision"] == "int8"
    assert manifest["encoder_precision"] == f"int8:{record['digest']}"
    art = ModelArtifacts.of(workdir, TINY)
    assert art.encoder.read_bytes() == twin.read_bytes() and manifest["encoder"]["digest"] == record["digest"]
    catalog = load_catalog(synthetic_catalog)
    pid = int(catalog.ids[7])
    engine = RetrievalEngine(settings, TINY)
    assert engine.search([catalog.image_path(pid)], k=3)[0][0].id == pid
    assert engine.describe()["precision"] == "int8"  # what /api/models shows
    fp32_features = np.load(workdir / "features" / TINY / "fashion-all-all" / "features.npy")
    assert np.isfinite(fs.features).all() and fs.features.shape == fp32_features.shape  # the fp32 set kept
    assert not np.allclose(fs.features, fp32_features, atol=1e-5)

    # back to fp32: the index is rebuilt from the fp32 features, with the fp32 export
    fp32_settings = make_settings(synthetic_catalog, workdir)
    again = build_model_index(fp32_settings, TINY, progress=False)
    assert again["encoder"]["precision"] == "fp32" and "encoder_precision" not in again
    assert art.encoder.read_bytes() == fp32_path.read_bytes()


def test_int8_without_an_accepted_twin_is_a_one_line_error(workdir, synthetic_catalog, capsys):
    flags = _flags(workdir, synthetic_catalog)
    assert main([*flags, "--precision", "int8", "extract", "--model", "tiny2"]) == 2
    err = capsys.readouterr().err
    assert "imageretrieval quantize --model tiny2" in err and "Traceback" not in err


def _twin_files(fp32_path, content: bytes) -> tuple:
    candidate = candidate_path(fp32_path)
    candidate.write_bytes(content)
    return candidate, {"accepted": True, "digest": file_digest(candidate)}


def test_a_rejected_candidate_never_replaces_the_twin_and_an_altered_twin_is_refused(workdir):
    model = create_model(TINY, workdir=workdir)
    fp32_path = export_onnx(model, preprocess_for(model.config).shape, export_dir(workdir, TINY))
    with pytest.raises(QuantizationError, match="quantize --model tiny"):
        accepted_int8(fp32_path, TINY)
    candidate, _ = _twin_files(fp32_path, b"a rejected int8 model")
    install_twin(fp32_path, candidate, {"accepted": False, "digest": "0", "reason": "largest drop: mAP 0.0100"})
    assert not candidate.exists() and load_record(fp32_path) is None
    with pytest.raises(QuantizationError, match="lost too much quality"):
        accepted_int8(fp32_path, TINY)
    candidate, record = _twin_files(fp32_path, b"an accepted int8 model")
    twin = install_twin(fp32_path, candidate, record)
    assert accepted_int8(fp32_path, TINY) == twin and not rejected_path(fp32_path).exists()
    candidate, _ = _twin_files(fp32_path, b"a later, rejected int8 model")
    install_twin(fp32_path, candidate, {"accepted": False, "digest": "1", "reason": "largest drop: mAP 0.0100"})
    assert accepted_int8(fp32_path, TINY) == twin and twin.read_bytes() == b"an accepted int8 model"
    with pytest.raises(QuantizationError, match="changed during this run"):
        accepted_int8(fp32_path, TINY, digest="another")
    twin.write_bytes(b"another model")
    with pytest.raises(QuantizationError, match="does not match its record"):
        accepted_int8(fp32_path, TINY)


def test_a_new_twin_commits_with_its_record(workdir):
    """The record is the one commit point: a new twin's file written before its record (a crash between
    the two) leaves the old twin serving; once recorded, the old file goes."""
    model = create_model(TINY, workdir=workdir)
    fp32_path = export_onnx(model, preprocess_for(model.config).shape, export_dir(workdir, TINY))
    candidate, record = _twin_files(fp32_path, b"first twin")
    first = install_twin(fp32_path, candidate, record)
    candidate, record = _twin_files(fp32_path, b"second twin")
    second = int8_path(fp32_path, record["digest"])
    candidate.rename(second)  # the crash: the file is in place, the record is not
    assert accepted_int8(fp32_path, TINY) == first
    second.rename(candidate)
    assert install_twin(fp32_path, candidate, record) == second
    assert accepted_int8(fp32_path, TINY) == second and not first.exists()


def test_records_of_an_earlier_version_and_several_records(workdir):
    from imageretrieval.quantize import twin_digest

    model = create_model(TINY, workdir=workdir)
    fp32_path = export_onnx(model, preprocess_for(model.config).shape, export_dir(workdir, TINY))
    save_json(record_path(fp32_path), {"accepted": False, "reason": "largest drop: mAP 0.0066"})  # as 8e09913 wrote
    with pytest.raises(QuantizationError, match="lost too much quality on val .largest drop: mAP 0.0066"):
        accepted_int8(fp32_path, TINY)
    save_json(fp32_path.with_name("model-0000000000000000-int8.json"), {"accepted": True, "digest": "0"})
    with pytest.raises(QuantizationError, match="2 int8 records"):
        twin_digest(fp32_path.parent, TINY)


def test_a_new_export_removes_the_stale_twin(workdir):
    import torch

    model = create_model(TINY, workdir=workdir)
    shape = preprocess_for(model.config).shape
    fp32_path = export_onnx(model, shape, export_dir(workdir, TINY))
    int8_path(fp32_path, "0123456789abcdef").write_bytes(b"x")
    save_json(record_path(fp32_path), {"accepted": True, "digest": "0123456789abcdef"})
    candidate_path(fp32_path).write_bytes(b"an interrupted candidate")
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    fresh = export_onnx(model, shape, export_dir(workdir, TINY))
    assert fresh != fp32_path
    assert sorted(p.name for p in export_dir(workdir, TINY).iterdir()) == [fresh.name]


def test_acceptance_by_hand():
    fp32 = {"PrecisionHits": 0.8130, "mAP": 0.7718}
    assert acceptance(fp32, {"PrecisionHits": 0.8128, "mAP": 0.7674}, 0.005)[0]
    ok, why = acceptance(fp32, {"PrecisionHits": 0.8140, "mAP": 0.7652}, 0.005)
    assert not ok and why.startswith("largest drop: mAP 0.0066")
    assert acceptance(fp32, {"PrecisionHits": 0.8080, "mAP": 0.7718}, 0.005)[0]  # a drop of exactly 0.005


def test_int8_needs_an_exported_runtime():
    from imageretrieval.inference import resolve_inference

    with pytest.raises(RuntimeUnavailableError, match="PRECISION=int8"):
        resolve_inference("torch", "int8", "cpu")
    with pytest.raises(RuntimeUnavailableError, match="PRECISION=int8"):
        resolve_inference("auto", "int8", "cuda")
    assert resolve_inference("onnxruntime", "int8", "cpu") == ("onnxruntime", "int8")


def test_int8_never_falls_back_to_pytorch(monkeypatch):
    from imageretrieval import inference

    monkeypatch.setattr(inference, "runtime_installed", lambda runtime: runtime == "torch")
    with pytest.raises(RuntimeUnavailableError, match="needs ONNX Runtime or OpenVINO"):
        inference.resolve_inference("auto", "int8", "cpu")
    assert inference.resolve_inference("auto", "fp32", "cpu")[0] == "torch"


def test_index_under_int8_makes_the_twin_it_needs(workdir, synthetic_catalog, tmp_path, capsys):
    from imageretrieval.artifacts import ModelArtifacts
    from imageretrieval.commands.index import ensure_int8_twin

    settings = make_settings(synthetic_catalog, workdir, deepfashion_root=tmp_path / "no-photos").model_copy(
        update={"precision": "int8"})
    ensure_int8_twin(settings, "tiny2", tolerance=0.3)  # what `index` runs first (int8 kernels differ by CPU)
    out = capsys.readouterr().out
    assert "no int8 twin yet: making one" in out and "int8 twin accepted" in out
    flags = [*_flags(workdir, synthetic_catalog), "--deepfashion-root", str(tmp_path / "no-photos")]
    assert main([*flags, "--precision", "int8", "index", "--model", "tiny2"]) == 0
    assert "making one" not in capsys.readouterr().out
    assert ModelArtifacts.of(workdir, "tiny2").read_manifest()["encoder"]["precision"] == "int8"


def _quantize(workdir, catalog, *extra) -> dict:
    assert main([*_flags(workdir, catalog), "quantize", "--model", TINY, "--selection", "all", "--calibration",
                 "32", "--tolerance", "0.3", *extra]) == 0
    model = create_model(TINY, workdir=workdir)
    return load_json(record_path(export_onnx(model, preprocess_for(model.config).shape, export_dir(workdir, TINY))))


def test_a_twin_made_anew_invalidates_what_the_old_one_encoded(workdir, synthetic_catalog, capsys):
    from imageretrieval.artifacts import ModelArtifacts, build_model_index
    from imageretrieval.featurestore import get_features

    settings = make_settings(synthetic_catalog, workdir).model_copy(update={"precision": "int8"})
    first = _quantize(workdir, synthetic_catalog, "--keep-fp32-convs", "2")
    old_features, _ = get_features(settings, TINY, "fashion", progress=False)
    build_model_index(settings, TINY, progress=False)
    second = _quantize(workdir, synthetic_catalog, "--keep-fp32-convs", "1")
    assert second["digest"] != first["digest"]
    new_features, _ = get_features(settings, TINY, "fashion", progress=False)
    assert not np.allclose(new_features.features, old_features.features, atol=1e-6)  # encoded again
    art = ModelArtifacts.of(workdir, TINY)
    manifest = build_model_index(settings, TINY, progress=False)  # not current any more: rebuilt
    assert manifest["encoder_precision"] == f"int8:{second['digest']}"
    assert file_digest(art.encoder) == second["digest"]


def test_a_failed_int8_rebuild_keeps_the_index_that_serves(workdir, synthetic_catalog, capsys):
    from imageretrieval.artifacts import ModelArtifacts

    _quantize(workdir, synthetic_catalog)
    flags = [*_flags(workdir, synthetic_catalog), "--precision", "int8"]
    assert main([*flags, "index", "--model", TINY]) == 0
    art = ModelArtifacts.of(workdir, TINY)
    manifest = art.read_manifest()
    model = create_model(TINY, workdir=workdir)
    fp32_path = export_onnx(model, preprocess_for(model.config).shape, export_dir(workdir, TINY))
    twin = int8_path(fp32_path, load_json(record_path(fp32_path))["digest"])
    twin.write_bytes(twin.read_bytes() + b"\0")  # altered after it was accepted
    capsys.readouterr()
    assert main([*flags, "index", "--model", TINY, "--force"]) == 2
    assert "does not match its record" in capsys.readouterr().err
    assert art.read_manifest() == manifest and art.exists()  # the old index still serves


def test_the_engine_encodes_queries_as_its_index_was_encoded(workdir, synthetic_catalog):
    from imageretrieval.artifacts import build_model_index
    from imageretrieval.engine import IndexNotBuiltError, RetrievalEngine

    fp32 = make_settings(synthetic_catalog, workdir)
    int8 = fp32.model_copy(update={"precision": "int8"})
    assert RetrievalEngine(int8, "tiny2").describe()["precision"] == "fp32"  # an fp32 index: fp32 queries
    _quantize(workdir, synthetic_catalog)
    build_model_index(int8, TINY, progress=False)
    assert RetrievalEngine(fp32, TINY).describe()["precision"] == "int8"  # an int8 index: its own encoder
    with pytest.raises(IndexNotBuiltError, match="built with PRECISION=int8"):
        RetrievalEngine(fp32.model_copy(update={"runtime": "torch"}), TINY)
    from imageretrieval.artifacts import ModelArtifacts

    encoder = ModelArtifacts.of(workdir, TINY).encoder
    encoder.write_bytes(encoder.read_bytes() + b"\0")
    with pytest.raises(IndexNotBuiltError, match="not the encoder that built it"):
        RetrievalEngine(int8, TINY)


def test_the_first_convolutions_stay_in_fp32(workdir, synthetic_catalog):
    import onnx

    record = _quantize(workdir, synthetic_catalog, "--keep-fp32-convs", "2")
    model = create_model(TINY, workdir=workdir)
    fp32_path = export_onnx(model, preprocess_for(model.config).shape, export_dir(workdir, TINY))
    graph = onnx.load(str(int8_path(fp32_path, record["digest"]))).graph
    dequantized = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert record["keep_fp32_convs"] == 2
    assert [c.input[1] in dequantized for c in convs[:3]] == [False, False, True]  # their weights


def test_training_commands_refuse_int8(workdir, synthetic_catalog, capsys):
    from imageretrieval.cli import FP32_ONLY, build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert FP32_ONLY <= set(commands)  # the names are the subcommands'
    assert main([*_flags(workdir, synthetic_catalog), "--precision", "int8", "finetune-pca", "--model", TINY]) == 2
    assert "PRECISION=int8 is for extraction" in capsys.readouterr().err


def test_bench_encoder_times_the_twin_beside_fp32(workdir, synthetic_catalog, capsys, monkeypatch):
    from benchmarks.__main__ import main as bench

    for key, value in {"DATASET_ROOT": str(synthetic_catalog), "WORKDIR": str(workdir), "DEVICE": "cpu"}.items():
        monkeypatch.setenv(key, value)
    args = ["encoder", "--model", TINY, "--runtimes", "onnxruntime,onnxruntime-int8", "--rounds", "1", "--batch", "4",
            "--images", "0", "--no-write"]
    assert bench(args) == 2  # no twin yet
    assert "imageretrieval quantize --model tiny" in capsys.readouterr().err
    _quantize(workdir, synthetic_catalog)
    assert bench(args) == 0
    rows = [line.split(" | ")[0] for line in capsys.readouterr().out.splitlines() if " ms | " in line]
    assert rows == ["| onnxruntime", "| onnxruntime-int8"]
