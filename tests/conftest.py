"""Shared fixtures: a synthetic catalog, a tiny random-init model saved in a workdir, a built index."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
torch.set_num_threads(min(2, torch.get_num_threads()))

from imageretrieval.models import ModelConfig, WeightSource, save_trained_model  # noqa: E402
from imageretrieval.models.extractor import FeatureExtractor  # noqa: E402
from imageretrieval.settings import Settings  # noqa: E402
from imageretrieval.synthetic import make_synthetic_catalog  # noqa: E402

TINY = "tiny"


def tiny_config(name: str = TINY, arch: str = "test_efficientnet", dims: int = 256) -> ModelConfig:
    return ModelConfig(
        name=name, description="tiny random-init test model", kind="trained", architecture=arch,
        trunk_dims=dims, input_size=64, weights=WeightSource(type="file", ref="weights.pt"),
    )


def make_tiny_model(workdir: Path, name: str = TINY, seed: int = 0, arch: str = "test_efficientnet",
                    dims: int = 256) -> FeatureExtractor:
    torch.manual_seed(seed)
    model = FeatureExtractor(tiny_config(name, arch, dims)).eval()
    save_trained_model(workdir, model)
    return model


@pytest.fixture(scope="session")
def synthetic_catalog(tmp_path_factory) -> Path:
    return make_synthetic_catalog(tmp_path_factory.mktemp("catalog"), per_class=12)


@pytest.fixture(scope="session")
def built_workdir(tmp_path_factory, synthetic_catalog) -> Path:
    """A workdir with two tiny models and their indexes over the synthetic catalog."""
    from imageretrieval.artifacts import build_model_index

    workdir = tmp_path_factory.mktemp("workdir")
    make_tiny_model(workdir, TINY, seed=0)
    make_tiny_model(workdir, "tiny2", seed=1, arch="test_resnet", dims=96)
    settings = make_settings(synthetic_catalog, workdir)
    build_model_index(settings, TINY, progress=False)
    build_model_index(settings, "tiny2", progress=False)
    return workdir


def make_settings(catalog: Path, workdir: Path, **kw) -> Settings:
    kw.setdefault("pca_components", 32)
    return Settings(dataset_root=catalog, workdir=workdir, device="cpu", precision="fp32", num_workers=0,
                    default_model=TINY, batch_size=16, **kw)


@pytest.fixture()
def settings(synthetic_catalog, built_workdir) -> Settings:
    return make_settings(synthetic_catalog, built_workdir)


def count_encoded(monkeypatch) -> dict:
    """Patch the encoder to count the images it really encodes (vs rows reused or resumed)."""
    from imageretrieval import extract as ex

    encoded = {"n": 0}
    real_encode = ex.encode_batches

    def counting(*a, **k):
        for feats in real_encode(*a, **k):
            encoded["n"] += len(feats)
            yield feats

    monkeypatch.setattr(ex, "encode_batches", counting)
    return encoded
