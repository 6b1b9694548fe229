"""Cached raw features by (model, dataset, split), reusing supersets instead of re-encoding.

Evaluation, PCA tuning and training all ask for e.g. "efficientnet_lite0 features of the seed
test split"; when the whole catalog (`fashion-all`) is already extracted, the rows are sliced
from it (same model, same preprocessing = the same numbers), otherwise only the subset is encoded.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .catalog import load_catalog, prepare_split
from .extract import FeatureSet, extract_features, feature_dir, load_features, query_decode_size
from .io_utils import DamagedFileError, load_json
from .models import FeatureExtractor, ModelConfig, create_model, get_model_config
from .models.composite import composite_members, is_composite_base, member_weights
from .models.extractor import trunk_digest
from .models.registry import weights_fingerprint
from .preprocess import preprocess_for
from .settings import Settings
from .whitening import l2_normalize

log = logging.getLogger(__name__)


def fashion_table(settings: Settings, selection: str = "all", split: str = "all") -> pd.DataFrame:
    """Catalog rows (with a `split` column when a split is asked for) of a selection."""
    catalog = load_catalog(settings.dataset_root)
    if selection == "all" and split == "all":
        return catalog.df.assign(path=[str(catalog.image_path(i)) for i in catalog.ids])
    df = prepare_split(catalog, selection, settings.workdir, settings.seed)
    if split != "all":
        df = df[df["split"] == split]
    return df.assign(path=[str(catalog.image_path(i)) for i in df["id"]]).reset_index(drop=True)


def deepfashion_table(settings: Settings, split: str = "all") -> pd.DataFrame:
    from .deepfashion import load_deepfashion

    df = load_deepfashion(settings.deepfashion_root, settings.seed)
    return (df if split == "all" else df[df["split"] == split]).reset_index(drop=True)


def _fingerprint(settings: Settings, model_name: str) -> str:
    config = get_model_config(model_name, settings.workdir)
    return config.fingerprint() + weights_fingerprint(config, settings.workdir)


def uses_int8(settings: Settings) -> bool:
    """PRECISION=int8: features come from the model's int8 twin and are cached apart from fp32 ones."""
    return settings.precision == "int8"


def int8_digest(settings: Settings, model_name: str) -> str:
    """The digest of the model's accepted int8 twin (a QuantizationError naming the fix where none is)."""
    from .inference import export_dir
    from .quantize import twin_digest

    return twin_digest(export_dir(settings.workdir, model_name), model_name)


def _slice(fs: FeatureSet, ids: np.ndarray) -> FeatureSet | None:
    pos = {str(v): i for i, v in enumerate(fs.ids)}
    rows = [pos.get(str(v)) for v in ids]
    if any(r is None for r in rows):
        return None
    return FeatureSet(fs.features[np.asarray(rows, dtype=np.int64)], np.asarray(ids))


_SAME_INPUT = ("architecture", "pooling", "gem_p", "trunk_dims", "input_size", "resize_mode", "mean", "std")


def head_only_base(settings: Settings, config: ModelConfig) -> str | None:
    """The base model whose cached pooled features this model can reuse (then only its head runs).

    Valid only when the trunk is bit-identical to the base's (checked by content digest, so a
    reinstalled weight package or a different machine still qualifies) and the preprocessing and
    pooling are the same; otherwise None and the model is run end to end.
    """
    base_name = config.reuses_trunk_of
    if not base_name or config.pooling == "gem":
        return None
    try:
        base_cfg = get_model_config(base_name, settings.workdir)
        if any(getattr(base_cfg, f) != getattr(config, f) for f in _SAME_INPUT) or base_cfg.embedding_dims:
            return None
        if config.trunk_digest != _base_digest(settings, base_name):
            log.info("%s: trunk differs from %s, running the full model", config.name, base_name)
            return None
    except Exception as exc:  # noqa: BLE001 - weights unavailable etc.: fall back to the full model
        log.info("%s: cannot reuse %s features (%s)", config.name, base_name, exc)
        return None
    return base_name


_DIGESTS: dict[tuple[str, str], str] = {}


def _base_digest(settings: Settings, base_name: str) -> str:
    key = (base_name, _fingerprint(settings, base_name))
    if key not in _DIGESTS:
        _DIGESTS[key] = trunk_digest(create_model(base_name, workdir=settings.workdir))
    return _DIGESTS[key]


def _cached(workdir: Path, model_name: str, name: str, fingerprint: str,
            query_decode: int | None = None) -> FeatureSet | None:
    """A complete cached feature set of this model (same weights and config, queries decoded the same
    way), or None."""
    directory = feature_dir(workdir, model_name, name)
    meta_path = directory / "meta.json"
    fs = load_features(directory)
    try:
        meta = load_json(meta_path) if fs is not None and meta_path.is_file() else None
        if meta is None or meta.get("fingerprint") != fingerprint or meta.get("query_decode") != query_decode:
            return None
    except DamagedFileError:  # a damaged cache is a stale one: extracted again
        return None
    return fs


def concat_normalized(parts: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """Each block L2-normalized row by row (and scaled by sqrt(weight) for a fusion), then side by side:
    what `MultiTrunk` computes (NaN rows stay NaN)."""
    scales = [np.float32(np.sqrt(w)) for w in weights] if weights is not None else [np.float32(1.0)] * len(parts)
    return np.concatenate([scale * l2_normalize(x) for scale, x in zip(scales, parts, strict=True)], axis=1)


@torch.inference_mode()
def apply_head(model: FeatureExtractor, fs: FeatureSet, batch_size: int = 8192) -> FeatureSet:
    """Embed cached pooled trunk features with the model's head (+ L2); NaN rows stay NaN."""
    model = model.eval().float()
    out = [model.embed_pooled(torch.from_numpy(np.ascontiguousarray(fs.features[i:i + batch_size])).float())
           for i in range(0, len(fs.features), batch_size)]
    feats = torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, model.dims), np.float32)
    return FeatureSet(feats, fs.ids)


def _larger_samples(workdir: Path, model_name: str, name: str, suffix: str, sample: int) -> list[str]:
    """Extracted larger seeded samples of the same split: they contain this one (same seeded
    permutation, longer prefix)."""
    pattern = re.compile(re.escape(name) + r"-s(\d+)" + re.escape(suffix) + "$")
    root = feature_dir(workdir, model_name, name).parent
    found = [(int(m.group(1)), d.name) for d in (root.iterdir() if root.is_dir() else [])
             if (m := pattern.match(d.name))]
    return [dname for n, dname in sorted(found) if n > sample]


def get_features(
    settings: Settings,
    model_name: str,
    dataset: str,
    split: str = "all",
    selection: str = "all",
    query_resolution: tuple[int, int] | None = None,
    progress: bool = True,
    sample: int | None = None,
    query_scale: float | None = None,
    model: FeatureExtractor | None = None,
) -> tuple[FeatureSet, pd.DataFrame]:
    """Raw features of a dataset split, aligned row by row with the returned metadata table.

    dataset: "fashion" (ids are product ids) or "deepfashion" (ids are image ids). With
    `query_resolution`, images are first brought down to that (w, h) — the engine's query path.
    `query_scale` re-renders every image at that scale first (evaluation query sets at other resolutions).
    `sample` keeps a seeded random subset of that many rows (the same rows for the same
    settings.seed), so slow models can be evaluated on an affordable subset; it is sliced from the
    whole split when that is already extracted. `model`: `model_name` already loaded (it is
    loaded here otherwise, and only when something must be extracted).
    """
    config = get_model_config(model_name, settings.workdir)
    int8 = uses_int8(settings)  # an int8 twin encodes the whole model: nothing is reused from fp32 parts
    base = None if int8 else head_only_base(settings, config)
    if base is not None:
        fs, table = get_features(settings, base, dataset, split, selection, query_resolution, progress, sample,
                                 query_scale)
        return apply_head(create_model(model_name, workdir=settings.workdir), fs), table
    if is_composite_base(config) and not int8:
        parts = [get_features(settings, m, dataset, split, selection, query_resolution, progress, sample, query_scale)
                 for m in composite_members(config)]
        features = concat_normalized([fs.features for fs, _ in parts], member_weights(config))
        return FeatureSet(features, parts[0][0].ids), parts[0][1]
    table = fashion_table(settings, selection, split) if dataset == "fashion" else deepfashion_table(settings, split)
    if sample is not None and sample < len(table):
        table = table.sample(n=sample, random_state=settings.seed).sort_index().reset_index(drop=True)
    else:
        sample = None
    ids = table["id"].to_numpy() if dataset == "fashion" else table["image_id"].to_numpy().astype(str)
    fp = _fingerprint(settings, model_name)
    twin = int8_digest(settings, model_name) if int8 else None
    if twin:  # a twin made anew encodes differently: what the old one encoded is stale
        fp += f":int8:{twin}"
    suffix = "" if query_resolution is None else f"-q{query_resolution[0]}x{query_resolution[1]}"
    if query_scale is not None:
        suffix += f"-x{query_scale:g}"
    if int8:
        suffix += "-int8"
    candidates = [f"{dataset}-all{suffix}"] if dataset == "deepfashion" else [f"fashion-all{suffix}"]
    name = f"{dataset}-{selection}-{split}" if dataset == "fashion" else f"deepfashion-{split}"
    if sample is not None:
        candidates.append(name + suffix)  # the whole split, when extracted, holds the sample
        candidates += _larger_samples(settings.workdir, model_name, name, suffix, sample)
        name += f"-s{sample}"
    name += suffix
    candidates.append(name)
    decode = query_decode_size(preprocess_for(config, query_resolution, query_scale))
    for cand in candidates:
        fs = _cached(settings.workdir, model_name, cand, fp, decode)
        sliced = _slice(fs, ids) if fs is not None else None
        if sliced is not None:
            return sliced, table
    if dataset == "fashion" and split == "all" and sample is None:  # the selection's splits, extracted apart
        splits = [_cached(settings.workdir, model_name, f"fashion-{selection}-{s}{suffix}", fp, decode)
                  for s in ("train", "val", "test")]
        if all(s is not None for s in splits):
            sliced = _slice(FeatureSet(np.concatenate([s.features for s in splits]),
                                       np.concatenate([np.asarray(s.ids) for s in splits])), ids)
            if sliced is not None:
                return sliced, table
    model = model if model is not None else create_model(model_name, workdir=settings.workdir)
    cfg = model.config
    preprocess = preprocess_for(cfg, query_resolution, query_scale)
    fs = extract_features(
        model, [Path(p) for p in table["path"]], ids, feature_dir(settings.workdir, model_name, name),
        preprocess=preprocess,
        batch_size=settings.batch_size, num_workers=settings.num_workers, device=settings.device,
        precision=settings.precision, fingerprint=fp, progress=progress,
        reuse_root=feature_dir(settings.workdir, model_name, name).parent,  # rows other sets already hold
        runtime=settings.runtime, workdir=settings.workdir,
        encode=ray_encode(settings, model_name, preprocess) if settings.ray_address else None, int8_digest=twin,
    )
    return fs, table


def ray_encode(settings: Settings, model_name: str, preprocess):
    """Encoding on Ray actors (settings.ray_address) with this process's preprocessing and runtime."""
    from .device import resolve_device
    from .distributed import ActorSpec, ray_encoder
    from .inference import resolve_inference

    runtime, precision = resolve_inference(settings.runtime, settings.precision, resolve_device(settings.device))
    spec = ActorSpec(model_name, str(Path(settings.workdir).resolve()), preprocess, runtime, precision,
                     settings.device, settings.ray_actor_cpus)
    return ray_encoder(spec, settings.ray_address, settings.ray_actors, settings.batch_size)
