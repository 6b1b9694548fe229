"""Model zoo: one entry point, `create_model(name)`, over a registry of named feature extractors."""

from .config import ModelConfig, WeightSource
from .extractor import FeatureExtractor
from .registry import (
    ModelNotFoundError,
    WeightsUnavailableError,
    create_model,
    get_model_config,
    list_model_names,
    register_model,
    save_composite,
    save_fusion,
    save_trained_model,
)

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
