"""Saving trained models, composites and fusions under `<WORKDIR>/models/<name>/`, where the registry finds them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..io_utils import atomic_write, save_json
from .composite import composite_config, fusion_config
from .config import ModelConfig
from .extractor import FeatureExtractor, trunk_digest
from .registry import CONFIG_FILE, WEIGHTS_FILE, get_model_config, list_model_names, trained_model_dir


def save_trained_model(workdir: Path, model: FeatureExtractor, config: ModelConfig | None = None,
                       head_only: bool = False) -> Path:
    """Save a model under `<WORKDIR>/models/<name>/` so the zoo finds it by name.

    `head_only` (a model whose trunk is its base's, unchanged: `reuses_trunk_of` + `trunk_digest`) keeps
    only the head's weights; loading takes the trunk from the base model and checks its digest.
    """
    config = (config or model.config).model_copy(update={"kind": "trained"}, deep=True)
    config.weights.type, config.weights.ref = "file", WEIGHTS_FILE
    directory = trained_model_dir(workdir, config.name)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if head_only:
        if not config.reuses_trunk_of or config.trunk_digest != trunk_digest(model):
            raise ValueError(f"{config.name}: head-only weights need the unchanged trunk of its base model")
        state = {k: v for k, v in state.items() if not k.startswith("trunk.")}
        config.trunk_from_base = True
    atomic_write(directory / WEIGHTS_FILE, lambda p: torch.save(state, p))
    save_json(directory / CONFIG_FILE, config.model_dump(mode="json"))
    return directory


def refuse_other_kind(workdir: Path, name: str, kind: str, same_kind: Callable[[ModelConfig], bool]) -> None:
    """ValueError when a model of the workdir already has `name` and is not `kind` (e.g. "a fusion"): a model
    of the same kind may be replaced, any other is never overwritten."""
    if name in list_model_names(workdir) and not same_kind(get_model_config(name, workdir)):
        raise ValueError(f"{name!r} is already a model of the zoo (not {kind}): choose another --name")


def save_composite(workdir: Path, name: str, members: list[str]) -> Path:
    """Save the composite of `members` (composite.py) as a named model of the workdir: a config only,
    since every member loads its own weights."""
    if name in members:
        raise ValueError(f"the composite's name {name!r} must differ from its members'")
    config = composite_config(name, [get_model_config(m, workdir) for m in members])
    refuse_other_kind(workdir, name, "a composite", lambda c: bool(c.composite_of) and c.member_weights is None)
    directory = trained_model_dir(workdir, name)
    save_json(directory / CONFIG_FILE, config.model_dump(mode="json"))
    return directory


def save_fusion(workdir: Path, name: str, members: list[str], weights: list[float] | None = None) -> Path:
    """Save the weighted late fusion of `members` (any embedding models; composite.py `fusion_config`) as a
    named model of the workdir: a config only, since every member loads its own weights. An existing fusion
    of that name is replaced (new weights or members); any other model of that name is refused."""
    config = fusion_config(name, [get_model_config(m, workdir) for m in members], weights)
    refuse_other_kind(workdir, name, "a fusion", lambda c: c.member_weights is not None)
    directory = trained_model_dir(workdir, name)
    save_json(directory / CONFIG_FILE, config.model_dump(mode="json"))
    return directory
