"""The registry of model names and their configs (in the spirit of timm): it imports no model code.

`loading.create_model` builds a model from its config, `saving` writes trained models. Three
sources of names, looked up in this order:
1. pretrained constructors registered with `@register_model` (see zoo.py);
2. trained models saved under `<WORKDIR>/models/<name>/` (config.json + weights.pt);
3. trained models shipped inside the package (`imageretrieval/weights/<name>/`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from ..io_utils import damaged
from .composite import composite_members
from .config import ModelConfig, ModelNotFoundError
from .weights import find_local_checkpoint, pypi_weights_path, timm_hub_cached

_REGISTRY: dict[str, Callable[[], ModelConfig]] = {}
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"


def register_model(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
    _REGISTRY[fn.__name__] = fn
    return fn


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")


def check_new_model_name(name: str) -> str:
    """A name a new model of the workdir may take: a plain folder name (never a path out of the workdir),
    not one of the pretrained constructors' (which are looked up first and would hide it). ValueError."""
    if not MODEL_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"model name {name!r}: use letters, digits and . _ - @ + (a plain name, at most 100 "
                         "characters, starting with a letter or digit)")
    if name in _REGISTRY:
        raise ValueError(f"{name!r} is a pretrained model of the zoo: choose another name")
    return name


def trained_model_dir(workdir: Path, name: str) -> Path:
    """Where a model of the workdir is saved (its name checked by `check_new_model_name`)."""
    return Path(workdir) / "models" / check_new_model_name(name)


def _trained_dirs(workdir: Path | None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    roots = [SHIPPED_DIR] + ([Path(workdir) / "models"] if workdir is not None else [])
    for root in roots:  # workdir models override shipped ones of the same name
        if root.is_dir():
            for cfg in sorted(root.glob(f"*/{CONFIG_FILE}")):
                found[cfg.parent.name] = cfg.parent
    return found


def list_model_names(workdir: Path | None = None) -> list[str]:
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
    if name in _REGISTRY:
        return _REGISTRY[name]()
    directory = model_dir(name, workdir)
    if directory is not None:
        try:
            return ModelConfig.model_validate_json((directory / CONFIG_FILE).read_text())
        except ValueError as exc:  # pydantic's ValidationError too: cut short, or not a model config
            raise damaged(directory / CONFIG_FILE, str(exc).splitlines()[0]) from None
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
        if own and config.trunk_from_base:
            return weights_available(get_model_config(config.reuses_trunk_of, workdir), workdir)
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
        return _file_digest(str(path), st.st_size, st.st_mtime_ns)
    return f"{src.type}:{src.ref}"


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """The weights file by its content, not its time stamp: a new virtualenv installs the same PyPI weights
    with a new mtime, which must not make every cached feature and index stale. Cached per (size, mtime)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return f"{Path(path).name}:{size}:{h.hexdigest()[:16]}"
