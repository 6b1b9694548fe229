"""`train --recipe suffix`: the last stages of an EfficientNet trunk fine-tuned on cached maps, on a CPU.

A head trained on frozen pooled features cannot adapt the trunk, and training the trunk end to end
on images costs a full forward pass per image and step. When the early stages stay frozen and the
only augmentation is a horizontal flip, their output maps are fixed: they are computed once (stem and
blocks 0-4 of a lite trunk; fp16) for the train and val rows, their mirror images and the other renderings the view
objective pairs, stored in the feature store and reused, and then blocks 5-6, the head convolution,
the embedding head and the proxies train on them, starting from a head trained on the frozen trunk
(`--init-from`: linear probe, then fine-tune). Every batch-norm layer keeps its pretrained
statistics (docs/training.md: re-estimating them breaks the head).
"""

from __future__ import annotations

import copy
import json
import logging
import time

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from ..artifacts import catalog_resolution
from ..catalog import load_catalog
from ..extract import feature_dir, image_batches, query_decode_size
from ..io_utils import save_json
from ..models import FeatureExtractor, create_model, get_model_config
from ..models.extractor import trunk_digest
from ..preprocess import preprocess_for
from ..settings import Settings
from .data import ClassBalancedSampler, sample_table, training_table
from .trainer import BEST, Trainer, seed_everything

log = logging.getLogger(__name__)

TRAINED_BLOCKS = 2  # the last two blocks (5-6 of a lite trunk), conv_head and bn2 train; the rest stays frozen
MAP_BATCH = 32


def frozen_blocks(trunk: nn.Module) -> int:
    return len(trunk.blocks) - TRAINED_BLOCKS


def prefix(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The frozen stages of a timm EfficientNet trunk: stem, then every block but the last two."""
    x = trunk.bn1(trunk.conv_stem(x))
    for block in trunk.blocks[:frozen_blocks(trunk)]:
        x = block(x)
    return x


def trainable_suffix(trunk: nn.Module) -> nn.Sequential:
    """The stages that train: the last blocks, the head convolution and its batch norm."""
    return nn.Sequential(*trunk.blocks[frozen_blocks(trunk):], trunk.conv_head, trunk.bn2)


def check_trunk(trunk: nn.Module, name: str) -> None:
    needed = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")
    if not all(hasattr(trunk, a) for a in needed) or len(trunk.blocks) <= TRAINED_BLOCKS:
        raise ValueError(f"--recipe suffix: {name}'s trunk is not an EfficientNet with more than "
                         f"{TRAINED_BLOCKS} blocks (e.g. efficientnet_lite0/1/2 and their @WxH sizes)")


@torch.inference_mode()
def prefix_maps(settings: Settings, model: FeatureExtractor, base: str, name: str, paths: list[str],
                flip: bool = False, query_resolution: tuple[int, int] | None = None,
                query_scale: float | None = None, progress: bool = True) -> np.ndarray:
    """The frozen stages' output maps of the images at `paths` (memory-mapped), computed once.

    Stored in the feature store beside the base model's features (`features/<base>/maps-b5/<name>.npy`
    for a lite trunk, whose blocks 0-4 are frozen) with what made them: the list of images, a digest of
    the trunk, and the preprocessing and normalization, all checked on reuse (a changed split,
    retrained base or other input never reuses stale maps). Written under a temporary name and
    renamed, that record last: an interrupted run computes them again.
    """
    suffix = ("-flip" if flip else "") + (f"-q{query_resolution[0]}x{query_resolution[1]}" if query_resolution else "")
    suffix += f"-x{query_scale:g}" if query_scale is not None else ""
    folder = feature_dir(settings.workdir, base, f"maps-b{frozen_blocks(model.trunk)}")
    path, keys_path = folder / f"{name}{suffix}.npy", folder / f"{name}{suffix}.paths.json"
    preprocess = preprocess_for(model.config, query_resolution, query_scale)
    made_of = {"paths": paths, "trunk": trunk_digest(model), "preprocess": preprocess.to_dict(),
               "query_resolution": list(query_resolution or ()), "query_scale": query_scale,
               "mean": list(model.config.mean), "std": list(model.config.std)}
    if (decode := query_decode_size(preprocess)) is not None:  # photos decoded as uploads are (absent: in full)
        made_of["query_decode"] = decode
    if path.is_file() and keys_path.is_file():
        if json.loads(keys_path.read_text()) == made_of:
            return np.load(path, mmap_mode="r")
        log.warning("%s: made from other images, trunk or preprocessing; computing it again", path)
    keys_path.unlink(missing_ok=True)  # maps without their list are never reused
    folder.mkdir(parents=True, exist_ok=True)
    trunk = copy.deepcopy(model.trunk).eval().to(memory_format=torch.channels_last)
    h, w = model.config.input_hw
    shape = prefix(trunk, torch.zeros(1, 3, h, w)).shape[1:]
    partial = path.with_suffix(".partial.npy")
    out = np.lib.format.open_memmap(partial, "w+", np.float16, (len(paths), *shape))
    row = 0
    batches = image_batches(paths, preprocess, MAP_BATCH, threads=max(1, settings.num_workers))
    for images, _ in tqdm(batches, total=-(-len(paths) // MAP_BATCH), desc=f"maps {name}{suffix}", unit="batch",
                          disable=not progress):
        x = torch.from_numpy(images).float().div_(255.0).contiguous(memory_format=torch.channels_last)
        x = torch.flip(x, dims=[3]) if flip else x
        out[row:row + len(x)] = prefix(trunk, (x - model.mean) / model.std).numpy().astype(np.float16)
        row += len(x)
    out.flush()
    del out
    partial.replace(path)
    save_json(keys_path, made_of)
    return np.load(path, mmap_mode="r")


class RowMaps:
    """Maps of a table's rows from per-(domain, split) cached arrays; rows without maps read as None."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray]], n_rows: int):
        self.where = np.full((n_rows, 2), -1, np.int64)  # (part, row in part)
        self.parts = [maps for maps, _ in parts]
        for p, (_, rows) in enumerate(parts):
            self.where[rows] = np.stack([np.full(len(rows), p), np.arange(len(rows))], 1)

    def has(self, rows: np.ndarray) -> np.ndarray:
        return self.where[rows, 0] >= 0

    def get(self, rows: np.ndarray) -> torch.Tensor:
        """float32 channels-last maps of `rows` (every row must have maps)."""
        where = self.where[rows]
        first = self.parts[where[0, 0]]
        out = np.empty((len(rows), *first.shape[1:]), np.float32)
        for p in np.unique(where[:, 0]):
            sel = where[:, 0] == p
            part_rows = where[sel, 1]
            order = np.argsort(part_rows)  # sorted reads from a memory map
            out[np.flatnonzero(sel)[order]] = self.parts[p][part_rows[order]]
        return torch.from_numpy(out).contiguous(memory_format=torch.channels_last)


def table_maps(settings: Settings, model: FeatureExtractor, base: str, table: pd.DataFrame, selection: str,
               res: tuple[int, int], rows: np.ndarray | None = None, flip: bool = False,
               query_scale: float | None = None, catalog_only: bool = False, progress: bool = True) -> RowMaps:
    """Maps of the table's `rows` (default: all): catalog products as they are, photos through the engine's
    query path; with `query_scale`, catalog products re-rendered at that scale (the evaluation's query set).
    """
    chosen = table if rows is None else table.iloc[rows]
    parts = []
    for (domain, split), part in chosen.groupby(["domain", "split"], sort=True):
        if domain == "fashion":
            maps = prefix_maps(settings, model, base, f"fashion-{selection}-{split}-n{len(part)}", list(part["path"]),
                               flip, res if query_scale is not None else None, query_scale, progress)
        elif catalog_only:
            continue
        else:
            maps = prefix_maps(settings, model, base, f"deepfashion-{split}-n{len(part)}", list(part["path"]), flip,
                               res, None, progress)
        parts.append((maps, table.index.get_indexer(part.index)))
    return RowMaps(parts, len(table))


def _load_proxies(settings: Settings, source: str, modules: dict[str, nn.Module]) -> list[str]:
    """Start every loss's proxies from the source run's best checkpoint where the shapes agree."""
    from .recipes import run_dir

    best = run_dir(settings, source) / BEST
    if not best.is_file():
        return []
    state = torch.load(best, map_location="cpu", weights_only=True)["state"]
    loaded = []
    for name, module in modules.items():
        proxies = state.get(f"{name}.proxies")
        if proxies is not None and proxies.shape == module.proxies.shape:
            module.proxies.data.copy_(proxies)
            loaded.append(name)
    return loaded


def train_suffix(settings: Settings, req, progress: bool = True) -> dict:
    """Fine-tune the last two blocks + conv_head + head of `req.init_from` (a head on frozen `req.base`)."""
    from .recipes import _finish, _val_attributes, objective_state, objective_weights, run_dir
    from .validation import val_scores

    t0 = time.perf_counter()
    seed_everything(req.options.seed)
    if not req.init_from:
        raise ValueError("--recipe suffix needs --init-from: a head trained on the frozen --base "
                         "(`train --recipe metric --trainable none`)")
    source_cfg = get_model_config(req.init_from, settings.workdir)
    if source_cfg.reuses_trunk_of != req.base or source_cfg.extra.get("heads"):
        raise ValueError(f"--init-from {req.init_from}: not a single head trained on the frozen {req.base} "
                         f"(it reuses {source_cfg.reuses_trunk_of!r})")
    weights = objective_weights(req)
    weights.check()
    if weights.distill > 0:  # the teacher's head would need the trunk's maps re-embedded at every step
        raise ValueError("--distill-weight applies to the metric recipe on cached features, not to --recipe suffix")
    encoding, table = training_table(settings, req.dataset, req.selection)
    if tuple(source_cfg.classes or ()) != tuple(encoding.classes):
        raise ValueError(f"--init-from {req.init_from}: it was trained on other classes than "
                         f"{req.dataset}/{req.selection}'s")
    table = sample_table(table, req.samples, req.options.seed)
    model = create_model(req.init_from, workdir=settings.workdir).eval()
    check_trunk(model.trunk, req.base)
    res = catalog_resolution(load_catalog(settings.dataset_root))
    train = np.flatnonzero(table["split"].to_numpy() == "train")
    val = np.flatnonzero(table["split"].to_numpy() == "val")
    maps = table_maps(settings, model, req.base, table, req.selection, res, progress=progress)
    copies = [maps]  # a row's training maps: as it is, or (with flip) mirrored, drawn per step
    if req.flip:
        copies.append(table_maps(settings, model, req.base, table, req.selection, res, rows=train, flip=True,
                                 progress=progress))
    view_scales = req.view_scales if req.view_weight > 0 or req.val_score == "shopper" else []
    views = [table_maps(settings, model, req.base, table, req.selection, res, query_scale=s, catalog_only=True,
                        progress=progress) for s in view_scales]

    from .objectives import Objectives

    objectives = Objectives(req.loss, len(encoding), model.config.embedding_dims, table, train, weights)
    losses = objective_state(objectives)
    proxies = _load_proxies(settings, req.init_from, losses)
    log.info("proxies from %s: %s", req.init_from, ", ".join(proxies) or "none (random)")
    suffix = trainable_suffix(model.trunk).to(memory_format=torch.channels_last)
    for p in model.trunk.parameters():
        p.requires_grad_(False)
    for p in suffix.parameters():
        p.requires_grad_(True)
    state = nn.ModuleDict({"suffix": suffix, "head": model.head, **losses})
    labels = torch.from_numpy(table["label"].to_numpy().copy())
    domains = table["domain"].to_numpy()
    sampler = ClassBalancedSampler(labels[train].numpy(), req.m_per_class, req.batch_size, req.options.seed,
                                   domains=pd.factorize(domains[train])[0])
    rng = np.random.default_rng(req.options.seed)

    def embed(x: torch.Tensor) -> torch.Tensor:
        return model.embed_pooled(model.pool(suffix(x)))

    def step(idx: np.ndarray):
        mirrored = rng.integers(0, len(copies), len(idx)) if len(copies) > 1 else np.zeros(len(idx), np.int64)
        parts = []
        for c in np.unique(mirrored):
            parts.append((np.flatnonzero(mirrored == c), copies[c].get(idx[mirrored == c])))
        x = torch.empty((len(idx), *parts[0][1].shape[1:])).contiguous(memory_format=torch.channels_last)
        for where, maps_part in parts:
            x[where] = maps_part
        emb = embed(x)
        y = labels[idx]
        view_emb = has = None
        if req.view_weight > 0:
            chosen = views[int(rng.integers(len(views)))]
            has_rows = chosen.has(idx)
            if has_rows.sum() > 1:
                has = torch.from_numpy(has_rows)
                view_emb = embed(chosen.get(idx[has_rows]))
        loss = objectives(emb, idx, y, view_emb, has)
        return loss, int((objectives.predict(emb) == y).sum()), len(idx)

    @torch.no_grad()
    def embed_rows(source: RowMaps, rows: np.ndarray) -> np.ndarray:
        return np.concatenate([embed(source.get(rows[i:i + 256])).numpy() for i in range(0, len(rows), 256)]) \
            if len(rows) else np.zeros((0, model.config.embedding_dims), np.float32)

    def validate() -> dict:
        emb = embed_rows(maps, val)
        view_emb = None
        if views:
            view_emb = np.full(emb.shape, np.nan, np.float32)
            has = views[0].has(val)
            view_emb[has] = embed_rows(views[0], val[has])
        return val_scores(emb, labels[val].numpy(), domains[val], **_val_attributes(table, val), views=view_emb,
                          score=req.val_score)

    opts = req.options
    groups = [{"params": list(suffix.parameters()), "lr": opts.lr * req.trunk_lr_mult},
              {"params": list(model.head.parameters()), "lr": opts.lr},
              *objectives.param_groups(opts.lr * req.proxy_lr_mult)]
    out_dir = run_dir(settings, req.name)
    start = validate()
    log.info("start (%s): val %s", req.init_from, {k: round(v, 4) for k, v in start.items()})
    trainer = Trainer(state, groups, opts, out_dir, step, validate, lambda: state.eval(), len(sampler),
                      torch.device("cpu"), "fp32")  # eval: batch-norm statistics stay the pretrained ones
    trainer.best_score = start["score"]  # an epoch must beat the start to be saved
    if req.resume:
        trainer.resume()

    def batches(epoch: int):
        sampler.set_epoch(epoch)
        return [train[b] for b in sampler]

    summary = trainer.fit(batches, progress)
    if trainer.best_epoch < 1:
        raise ValueError(f"no epoch beat {req.init_from} on val (score {start['score']:.4f}); nothing saved")
    trainer.load_best()
    final = validate()
    extra = dict(model.config.extra)
    trained = [f"blocks.{i}" for i in range(frozen_blocks(model.trunk), len(model.trunk.blocks))] + ["conv_head", "bn2"]
    extra["training"] = {**(extra.get("training") or {}), "recipe": "suffix", "finetuned_from": req.init_from,
                         "dataset": req.dataset, "selection": req.selection, "val_score": req.val_score,
                         "trainable": trained, "flip": req.flip}
    extra["training_objectives"] = {**objectives.summary, **({"view_scales": view_scales} if view_scales else {})}
    model.config = model.config.model_copy(update={
        "name": req.name, "kind": "trained", "base_model": req.init_from, "extra": extra,
        "reuses_trunk_of": None, "trunk_digest": None, "trunk_from_base": None,  # the trunk is its own now
        "description": f"{req.init_from} with its trunk's last stages fine-tuned on {req.dataset} "
                       f"({req.selection} selection)"}, deep=True)
    info = {"recipe": "suffix", "mode": "cached-prefix-maps", "init_from": req.init_from, "proxies": proxies,
            "objectives": objectives.summary, "val_score": req.val_score, "start_val": start, **summary,
            "final_val": final, "n_train": len(train), "n_val": len(val), "classes": list(encoding.classes)}
    return _finish(settings, req, model, info, t0)


