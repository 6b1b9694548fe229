"""Model zoo: one entry point, `create_model(name)`, over a registry of named feature extractors.

The configs, the registry of names and the errors import without PyTorch (a serving install runs
exported models); loading, saving and the extractor, which need it, are imported when first used.
"""

from __future__ import annotations

from ..lazy import lazy_attributes
from . import zoo  # noqa: F401 - registers the pretrained constructors (imports no model code)
from .config import ModelConfig, ModelNotFoundError, WeightSource, WeightsUnavailableError

_LAZY = {
    "FeatureExtractor": "extractor",
    "create_model": "loading",
    "get_model_config": "registry",
    "list_model_names": "registry",
    "register_model": "registry",
    "save_composite": "saving",
    "save_fusion": "saving",
    "save_trained_model": "saving",
}
__getattr__ = lazy_attributes(__name__, _LAZY)


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
