"""Model zoo: one entry point, `create_model(name)`, over a registry of named feature extractors.

The configs and errors import without PyTorch (a serving install runs exported models); the
extractor and the registry, which need it, are imported when first used.
"""

from __future__ import annotations

import importlib

from .config import ModelConfig, ModelNotFoundError, WeightSource, WeightsUnavailableError

_LAZY = {
    "FeatureExtractor": "extractor",
    "create_model": "registry",
    "get_model_config": "registry",
    "list_model_names": "registry",
    "register_model": "registry",
    "save_composite": "registry",
    "save_fusion": "registry",
    "save_trained_model": "registry",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FeatureExtractor",
    "ModelConfig",
    "ModelNotFoundError",
    "WeightSource",
    "WeightsUnavailableError",
    "create_model",
    "get_model_config",
    "list_model_names",
    "register_model",
    "save_composite",
    "save_fusion",
    "save_trained_model",
]
