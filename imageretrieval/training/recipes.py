"""The three recipes behind `imageretrieval train`: classifier, metric (cached-feature head or end to end),
bn-adapt. Each ends with a named model in the zoo (`save_trained_model`) and a run folder
`<WORKDIR>/training/<name>/` holding log.csv, curves.png, confusion.png, best/last checkpoints, run.json."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..artifacts import catalog_resolution
from ..catalog import load_catalog
from ..device import autocast, resolve_device, resolve_precision, to_batch
from ..extract import FeatureSet
from ..featurestore import apply_head, get_features, head_only_base, trunk_digest
from ..io_utils import save_json
from ..models import FeatureExtractor, ModelConfig, create_model, get_model_config, save_trained_model
from ..models.composite import composite_members
from ..models.weights import load_state_dict_file
from ..settings import Settings
from .bn_adapt import adapt_batchnorm
from .choices import RECIPES
from .data import ClassBalancedSampler, ImageTable, image_table_dataset, sample_table, training_table
from .freeze import default_trainable, freeze_trunk, train_mode
from .labels import LabelEncoding
from .losses import ProxyLoss
from .objectives import Objectives, ObjectiveWeights
from .pack import load_pack
from .plots import plot_confusion
from .trainer import Trainer, TrainOptions, seed_everything
from .validation import val_scores

log = logging.getLogger(__name__)

@dataclass
class TrainRequest:
    base: str
    name: str
    recipe: str = "metric"
    dataset: str = "both"
    selection: str = "seed"
    trainable: list[str] | None = None  # trunk regexes; None = recipe default; [] = frozen trunk
    input_size: int | None = None  # None = the base model's
    pooling: str | None = None  # None = avg for a frozen trunk (cached features), gem otherwise
    dims: int = 512
    head_hidden: int = 0
    loss: str = "proxy-anchor"
    m_per_class: int = 4
    batch_size: int = 64
    trunk_lr_mult: float = 0.1
    proxy_lr_mult: float = 10.0
    instance_weight: float = 0.0  # cached metric: weight of a proxy loss over DeepFashion item ids
    colour_weight: float = 0.0  # cached metric: weight of a proxy loss over the catalog's baseColours
    gender_weight: float = 0.0  # cached metric: weight of a proxy loss over genders (catalog and photos)
    view_scales: list[float] = field(default_factory=list)  # catalog products re-rendered at these scales
    view_weight: float = 0.0  # cached metric: weight of the paired-view (instance) loss over those renderings
    distill_from: str | None = None  # cached metric: a teacher model whose head runs on the same trunk
    distill_weight: float = 0.0  # cached metric: weight of the teacher's neighbourhoods (losses.py)
    val_score: str = "type"  # type | shopper (validation.py)
    max_images: int | None = None  # bn-adapt: cap on target images
    samples: dict[str, int] = field(default_factory=dict)  # {"deepfashion:train": n}: seeded samples (CPU budget)
    pack: str | None = None  # a training pack folder (pack.py) instead of the dataset roots
    init_from: str | None = None  # end-to-end metric: start the head and class proxies from this trained model
    freeze_bn_stats: bool = False  # end to end: keep every batch-norm layer's running statistics
    flip: bool = True  # suffix: a mirrored copy of the train maps (the recipe's one augmentation)
    resume: bool = False
    options: TrainOptions = field(default_factory=TrainOptions)


def run_dir(settings: Settings, name: str) -> Path:
    return Path(settings.workdir) / "training" / name


def _base_model(settings: Settings, req: TrainRequest) -> tuple[ModelConfig, FeatureExtractor]:
    base_cfg = get_model_config(req.base, settings.workdir)
    return base_cfg, create_model(req.base, workdir=settings.workdir)


def _new_config(base_cfg: ModelConfig, req: TrainRequest, **update) -> ModelConfig:
    extra = dict(base_cfg.extra)
    extra["training"] = {"recipe": req.recipe, "dataset": req.dataset, "selection": req.selection}
    description = f"{base_cfg.name} + {req.recipe} training on {req.dataset} ({req.selection} selection)"
    own_trunk = {"reuses_trunk_of": None, "trunk_digest": None, "trunk_from_base": None}  # set by the recipe
    return base_cfg.model_copy(update={"name": req.name, "kind": "trained", "base_model": req.base,
                                       "description": description, "extra": extra, **own_trunk, **update}, deep=True)


def _finish(settings: Settings, req: TrainRequest, model: FeatureExtractor, info: dict, t0: float) -> dict:
    directory = save_trained_model(settings.workdir, model.cpu().eval())
    info.update(model_dir=str(directory), seconds=round(time.perf_counter() - t0, 1),
                request={k: v for k, v in asdict(req).items()})
    save_json(run_dir(settings, req.name) / "run.json", info)
    log.info("saved trained model %s in %s (%.1f s)", req.name, directory, info["seconds"])
    return info


# ----- metric learning on cached trunk features (the CPU default) ----------------------------------
def cached_trunk_features(settings: Settings, base: str, table: pd.DataFrame, selection: str,
                          samples: dict[str, int] | None = None,
                          progress: bool = True) -> tuple[pd.DataFrame, np.ndarray]:
    """Pooled base-model features for the rows of `table`, from the feature store (extracted once).

    Photos are encoded through the engine's query path (brought down to the catalog's resolution).
    `samples` ({"deepfashion:train": n, ...}) keeps a seeded sample of at most n rows of that dataset's
    split (the feature store's `sample`): a CPU-budget option; rows outside the sample are dropped.
    """
    samples = samples or {}
    res = None
    parts, feats = [], []
    for (domain, split), rows in table.groupby(["domain", "split"], sort=True):
        cap = samples.get(f"{domain}:{split}")
        part = split if cap else "all"  # uncapped: the whole set once (evaluation reads the same cache)
        if domain == "fashion":
            fs, _ = get_features(settings, base, "fashion", part, selection, progress=progress, sample=cap)
        else:
            res = res or catalog_resolution(load_catalog(settings.dataset_root))
            fs, _ = get_features(settings, base, "deepfashion", part, query_resolution=res, progress=progress,
                                 sample=cap)
        pos = {str(k): i for i, k in enumerate(fs.ids)}
        rows = rows[rows["key"].isin(pos)]
        parts.append(rows)
        feats.append(fs.features[[pos[k] for k in rows["key"]]])
    if not parts:
        raise ValueError("no training rows")
    return pd.concat(parts, ignore_index=True), np.concatenate(feats).astype(np.float32)


def cached_view_features(settings: Settings, base: str, table: pd.DataFrame, selection: str, scale: float,
                         progress: bool = True) -> np.ndarray:
    """Pooled base features of the table's catalog products re-rendered at `scale`, row by row (NaN for photos).

    The rendering is the evaluation's `--query-scale` query set (the engine's query path after a
    rescale), so a model trained to pair the two renderings is measured on the same transformation.
    """
    res = catalog_resolution(load_catalog(settings.dataset_root))
    fs, _ = get_features(settings, base, "fashion", "all", selection, query_resolution=res, progress=progress,
                         query_scale=scale)
    pos = {str(k): i for i, k in enumerate(fs.ids)}
    out = np.full((len(table), fs.features.shape[1]), np.nan, np.float32)
    rows = np.flatnonzero((table["domain"] == "fashion").to_numpy() & table["key"].isin(pos).to_numpy())
    out[rows] = fs.features[[pos[k] for k in table["key"].to_numpy()[rows]]]
    return out


def objective_weights(req: TrainRequest) -> ObjectiveWeights:
    return ObjectiveWeights(instance=req.instance_weight, colour=req.colour_weight, gender=req.gender_weight,
                            views=req.view_weight, view_scales=list(req.view_scales), distill=req.distill_weight)


def teacher_embeddings(settings: Settings, req: TrainRequest, pooled: torch.Tensor) -> torch.Tensor | None:
    """The `--distill-from` model's embeddings of the cached pooled trunk features: its head must run on
    the very trunk of `--base` (a head-only model), so the teacher costs one head pass."""
    if req.distill_weight <= 0:
        return None
    if not req.distill_from:
        raise ValueError("--distill-weight needs --distill-from MODEL (e.g. efficientnet_lite0_fashion)")
    teacher_cfg = get_model_config(req.distill_from, settings.workdir)
    if head_only_base(settings, teacher_cfg) != req.base:
        raise ValueError(f"--distill-from {req.distill_from}: its head must run on the trunk of --base {req.base} "
                         "(a head-only model of that base, e.g. efficientnet_lite0_fashion over efficientnet_lite0)")
    teacher = create_model(req.distill_from, workdir=settings.workdir)
    return torch.from_numpy(apply_head(teacher, FeatureSet(pooled.numpy(), np.arange(len(pooled)))).features)


def objective_state(objectives: Objectives) -> dict[str, nn.Module]:
    """The loss modules under their checkpoint names (`loss` = the articleType proxies, `<name>_loss`)."""
    return {"loss": objectives.type_loss, **{f"{n}_loss": m for n, m in objectives.extra.items()}}


def train_metric_cached(settings: Settings, req: TrainRequest, progress: bool = True) -> dict:
    """Frozen trunk: train head + proxies on cached pooled features (minutes on CPU).

    The loss is the articleType proxy loss plus each shopper objective with a weight > 0
    (objectives.py); the view objective pairs a product with its cached rendering at a `view_scales`.
    """
    t0 = time.perf_counter()
    seed_everything(req.options.seed)
    weights = objective_weights(req)
    weights.check()
    encoding, table = training_table(settings, req.dataset, req.selection)
    base_cfg, base = _base_model(settings, req)
    table, x = cached_trunk_features(settings, req.base, table, req.selection, req.samples, progress)
    ok = ~np.isnan(x).any(1)
    table, x = table[ok].reset_index(drop=True), torch.from_numpy(x[ok])
    views = [torch.from_numpy(cached_view_features(settings, req.base, table, req.selection, scale, progress))
             for scale in (req.view_scales if req.view_weight > 0 or req.val_score == "shopper" else [])]
    cfg = _new_config(base_cfg, req, embedding_dims=req.dims, l2_normalize_output=True, pooling=base_cfg.pooling)
    cfg.reuses_trunk_of, cfg.trunk_digest = req.base, trunk_digest(base)
    cfg.head_hidden, cfg.classes = req.head_hidden, list(encoding.classes)
    torch.manual_seed(req.options.seed)
    model = FeatureExtractor(cfg, base.trunk).eval()
    labels = torch.from_numpy(table["label"].to_numpy().copy())
    train = np.flatnonzero(table["split"].to_numpy() == "train")
    val = np.flatnonzero(table["split"].to_numpy() == "val")
    domains = table["domain"].to_numpy()
    objectives = Objectives(req.loss, len(encoding), req.dims, table, train, weights)
    teacher = teacher_embeddings(settings, req, x)
    state = nn.ModuleDict({"head": model.head, **objective_state(objectives)})
    if req.instance_weight > 0:
        cfg.extra["instance_weight"] = req.instance_weight
    cfg.extra["training_objectives"] = {**objectives.summary, **({"view_scales": req.view_scales} if views else {}),
                                        **({"teacher": req.distill_from} if teacher is not None else {})}
    cfg.extra["training"]["val_score"] = req.val_score
    sampler = ClassBalancedSampler(labels[train].numpy(), req.m_per_class, req.batch_size, req.options.seed,
                                   domains=pd.factorize(domains[train])[0])
    view_rng = np.random.default_rng(req.options.seed)

    def batches(epoch: int):
        sampler.set_epoch(epoch)
        return [train[b] for b in sampler]

    def step(idx):
        emb = model.embed_pooled(x[idx])
        y = labels[idx]
        view_emb = has = None
        if req.view_weight > 0:
            other = views[int(view_rng.integers(len(views)))][idx]  # one rendering per batch
            has = ~torch.isnan(other).any(1)
            view_emb = model.embed_pooled(other[has])
        loss = objectives(emb, idx, y, view_emb, has, None if teacher is None else teacher[idx])
        return loss, int((objectives.predict(emb) == y).sum()), len(idx)

    @torch.no_grad()
    def validate() -> dict:
        model.eval()
        emb = model.embed_pooled(x[val])
        view_emb = embed_views(model, views[0][val]) if views else None
        out = val_scores(emb.numpy(), labels[val].numpy(), domains[val], **_val_attributes(table, val),
                         views=view_emb, score=req.val_score)
        out["acc"] = float((objectives.predict(emb) == labels[val]).float().mean())
        return out

    opts = req.options
    groups = [{"params": list(model.head.parameters()), "lr": opts.lr},
              *objectives.param_groups(opts.lr * req.proxy_lr_mult)]
    out_dir = run_dir(settings, req.name)
    trainer = Trainer(state, groups, opts, out_dir, step, validate, lambda: state.train(),
                      len(sampler), torch.device("cpu"), "fp32")
    if req.resume:
        trainer.resume()
    summary = trainer.fit(batches, progress)
    trainer.load_best()
    final = validate()
    with torch.no_grad():
        pred = objectives.predict(model.embed_pooled(x[val])).numpy()
    plot_confusion(labels[val].numpy(), pred, list(encoding.classes), out_dir / "confusion.png",
                   f"{req.name}: val, nearest proxy")
    info = {"recipe": "metric", "mode": "cached-trunk-features", "objectives": objectives.summary,
            "val_score": req.val_score, **summary, "final_val": final, "n_train": len(train), "n_val": len(val),
            "classes": list(encoding.classes)}
    return _finish(settings, req, model, info, t0)


@torch.no_grad()
def embed_views(model: FeatureExtractor, views: torch.Tensor) -> np.ndarray:
    """Embeddings of cached view features, row by row; NaN rows (no rendering: photos) stay NaN."""
    out = np.full((len(views), model.config.dims), np.nan, np.float32)
    has = ~torch.isnan(views).any(1)
    if has.any():
        out[has.numpy()] = model.embed_pooled(views[has]).numpy()
    return out


def _val_attributes(table: pd.DataFrame, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The validation rows' item ids, colours and genders (validation.val_scores' keyword arguments)."""
    return {key: table[column].to_numpy().astype(str)[rows]
            for key, column in (("items", "item"), ("colours", "colour"), ("genders", "gender"))}


# ----- image-based recipes (classifier, end-to-end metric): GPU-sized, tested on tiny models --------------
def init_head_from(settings: Settings, source: str, model: FeatureExtractor, loss_head: nn.Module,
                   classes: tuple[str, ...]) -> dict:
    """Start from a trained model's head and class proxies, then fine-tune the trunk too (LP-FT).

    Training the head on frozen features first and only then unfreezing the trunk (Kumar et al.,
    ICLR 2022) keeps the pretrained features from being distorted by a random head's gradients.
    The head must have the same shape and the same classes; the proxies come from the source's
    best checkpoint when it is there (random otherwise, logged).
    """
    from ..models.registry import trained_weights_path
    from .trainer import BEST

    src_cfg = get_model_config(source, settings.workdir)
    cfg = model.config
    same = (src_cfg.embedding_dims == cfg.embedding_dims and src_cfg.trunk_dims == cfg.trunk_dims
            and int(src_cfg.head_hidden or 0) == int(cfg.head_hidden or 0)
            and not src_cfg.extra.get("heads"))
    if not same:
        raise ValueError(f"--init-from {source}: its head ({src_cfg.embedding_dims} dims, hidden "
                         f"{src_cfg.head_hidden or 0}) does not match this run's; pass the same "
                         "--dims / --head-hidden")
    if tuple(src_cfg.classes or ()) != tuple(classes):
        raise ValueError(f"--init-from {source}: it was trained on other classes than this run's")
    path = trained_weights_path(src_cfg, settings.workdir)
    if src_cfg.weights.type != "file" or path is None or not path.is_file():
        raise ValueError(f"--init-from {source}: not a trained model with a weights file ({path})")
    state = load_state_dict_file(path)
    model.head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    info = {"init_from": source, "proxies": "random"}
    best = run_dir(settings, source) / BEST
    if best.is_file():
        proxies = torch.load(best, map_location="cpu", weights_only=True)["state"].get("loss.proxies")
        if proxies is not None and proxies.shape == loss_head.proxies.shape:
            loss_head.proxies.data.copy_(proxies)
            info["proxies"] = str(best)
    log.info("head initialized from %s (proxies: %s)", source, info["proxies"])
    return info


def image_training_table(settings: Settings, req: TrainRequest) -> tuple[LabelEncoding, pd.DataFrame]:
    """The labelled train + val rows: from a training pack (`req.pack`) or from the dataset roots."""
    if req.pack:
        encoding, table, info = load_pack(Path(req.pack))
        req.dataset, req.selection = info["dataset"], info["selection"]  # recorded in the model's config
        log.info("training pack %s: %s", req.pack, info["counts"])
    else:
        encoding, table = training_table(settings, req.dataset, req.selection)
    return encoding, sample_table(table, req.samples, req.options.seed)


def _loaders(table: pd.DataFrame, size: int, req: TrainRequest, settings: Settings, device: torch.device):
    train = table[table["split"] == "train"].reset_index(drop=True)
    val = table[table["split"] == "val"].reset_index(drop=True)
    train_ds = image_table_dataset(train, size, augment=True)
    nw = settings.num_workers
    # worker processes outlive epochs (no re-spawn per epoch); pinned memory speeds host -> GPU copies
    common = {"num_workers": nw, "pin_memory": device.type == "cuda", "persistent_workers": nw > 0}
    if req.m_per_class > 0:
        sampler = ClassBalancedSampler(train["label"], req.m_per_class, req.batch_size, req.options.seed,
                                       domains=pd.factorize(train["domain"])[0])
        loader = DataLoader(train_ds, batch_sampler=sampler, **common)
    else:
        sampler = None
        gen = torch.Generator().manual_seed(req.options.seed)
        loader = DataLoader(train_ds, batch_size=req.batch_size, shuffle=True, drop_last=len(train) > req.batch_size,
                            generator=gen, **common)
    val_loader = DataLoader(image_table_dataset(val, size, augment=False), batch_size=req.batch_size, **common)
    return train, val, loader, sampler, val_loader


def train_on_images(settings: Settings, req: TrainRequest, progress: bool = True) -> dict:
    """`classifier` (pooled trunk + linear classifier, CE) or end-to-end `metric` (GeM + head + proxy loss)."""
    t0 = time.perf_counter()
    seed_everything(req.options.seed)
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    encoding, table = image_training_table(settings, req)
    base_cfg, base = _base_model(settings, req)
    size = req.input_size or base_cfg.input_size
    trainable = req.trainable if req.trainable is not None else default_trainable(base_cfg.architecture, base.trunk)
    classifier = req.recipe == "classifier"
    pooling = req.pooling or ("avg" if classifier else "gem")
    update = {"input_size": size, "pooling": pooling}
    if not classifier:
        update.update(embedding_dims=req.dims, l2_normalize_output=True)
    cfg = _new_config(base_cfg, req, **update)
    cfg.head_hidden, cfg.classes = req.head_hidden, list(encoding.classes)
    cfg.extra["trainable"] = trainable
    torch.manual_seed(req.options.seed)
    model = FeatureExtractor(cfg, base.trunk)
    names = freeze_trunk(model.trunk, trainable)
    log.info("%d trainable trunk tensors (%s)", len(names), ", ".join(trainable) or "frozen trunk")
    if classifier:
        loss_head: nn.Module = nn.Sequential(nn.Dropout(0.2), nn.Linear(cfg.trunk_dims, len(encoding)))
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    else:
        loss_head = ProxyLoss(req.loss, len(encoding), req.dims)
    if req.init_from and classifier:
        raise ValueError("--init-from applies to the metric recipe")
    init = init_head_from(settings, req.init_from, model, loss_head, encoding.classes) if req.init_from else {}
    model.to(device, memory_format=torch.channels_last)
    loss_head.to(device)
    state = nn.ModuleDict({"model": model, "loss": loss_head})
    train, val, loader, sampler, val_loader = _loaders(table, size, req, settings, device)
    opts = req.options
    trunk_params = [p for p in model.trunk.parameters() if p.requires_grad]
    own = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("trunk.")]
    groups = [{"params": trunk_params, "lr": opts.lr * req.trunk_lr_mult}] if trunk_params else []
    if classifier:
        groups.append({"params": own + list(loss_head.parameters()), "lr": opts.lr})
    else:
        groups += [{"params": own, "lr": opts.lr},
                   {"params": [loss_head.proxies], "lr": opts.lr * req.proxy_lr_mult, "weight_decay": 0.0}]

    def step(batch):
        images, y = batch
        keep = y >= 0
        images, y = to_batch(images[keep], device), y[keep].to(device)
        if classifier:
            logits = loss_head(model.pool(model.forward_trunk(images)))
            return criterion(logits.float(), y), int((logits.argmax(1) == y).sum()), len(y)
        emb = model(images)
        return loss_head(emb, y), int((loss_head.predict(emb) == y).sum()), len(y)

    @torch.no_grad()
    def embed_val() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        model.eval()
        loss_head.eval()
        embs, preds, ys = [], [], []
        for images, y in val_loader:
            with autocast(device, precision):
                images = to_batch(images, device)
                if classifier:
                    emb = model.pool(model.forward_trunk(images))
                    pred = loss_head(emb).argmax(1)
                else:
                    emb = model(images)
                    pred = loss_head.predict(emb)
            embs.append(emb.float().cpu().numpy())
            preds.append(pred.cpu().numpy())
            ys.append(y.numpy())
        return np.concatenate(embs), np.concatenate(preds), np.concatenate(ys)

    def validate() -> dict:
        emb, pred, y = embed_val()
        out = val_scores(emb, y, val["domain"].to_numpy())
        out["acc"] = float((pred == y)[y >= 0].mean())
        if classifier:  # the seed's criterion: classification accuracy
            out["retrieval_score"], out["score"] = out["score"], out["acc"]
        return out

    def batches(epoch: int):
        if sampler is not None:
            sampler.set_epoch(epoch)
        else:
            loader.generator.manual_seed(opts.seed + epoch)
        return loader

    out_dir = run_dir(settings, req.name)
    trainer = Trainer(state, groups, opts, out_dir, step, validate,
                      lambda: (train_mode(model, req.freeze_bn_stats), loss_head.train()), len(loader), device,
                      precision)
    if req.resume:
        trainer.resume()
    summary = trainer.fit(batches, progress)
    trainer.load_best()
    final = validate()
    _, pred, y = embed_val()
    plot_confusion(y[y >= 0], pred[y >= 0], list(encoding.classes), out_dir / "confusion.png",
                   f"{req.name}: val predictions")
    info = {"recipe": req.recipe, "mode": "images", **init, **summary, "final_val": final, "n_train": len(train),
            "n_val": len(val), "trainable": trainable, "classes": list(encoding.classes)}
    return _finish(settings, req, model.float(), info, t0)


# ----- batch-norm adaptation ---------------------------------------------------------------------------
def bn_adapt(settings: Settings, req: TrainRequest, progress: bool = True) -> dict:
    """Re-estimate the base model's BN statistics on the train split of the target dataset."""
    t0 = time.perf_counter()
    seed_everything(req.options.seed)
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    _, table = training_table(settings, req.dataset, req.selection)
    table = table[table["split"] == "train"]
    if req.max_images and len(table) > req.max_images:
        table = table.sample(req.max_images, random_state=req.options.seed)
    base_cfg, model = _base_model(settings, req)
    model.to(device, memory_format=torch.channels_last)
    ds: ImageTable = image_table_dataset(table, base_cfg.input_size, augment=False)
    loader = DataLoader(ds, batch_size=req.batch_size, shuffle=True, num_workers=settings.num_workers,
                        generator=torch.Generator().manual_seed(req.options.seed))
    seen = adapt_batchnorm(model, (images for images, _ in loader), device, precision, progress)
    model.config = _new_config(base_cfg, req, description=f"{req.base} with batch-norm statistics of {req.dataset}")
    return _finish(settings, req, model.float(), {"recipe": "bn-adapt", "images": seen}, t0)


def train(settings: Settings, req: TrainRequest, progress: bool = True) -> dict:
    """Dispatch a request; `metric` with a frozen trunk and avg pooling trains on cached features."""
    if req.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {req.recipe!r}; choose one of {', '.join(RECIPES)}")
    base_cfg = get_model_config(req.base, settings.workdir)
    same_size = req.input_size in (None, base_cfg.input_size)
    composite = bool(composite_members(base_cfg))
    if composite and (req.recipe != "metric" or req.pack or req.trainable or req.pooling not in (None, "avg")
                      or not same_size):
        raise ValueError(f"{req.base} is a composite of frozen backbones: it trains a head on their cached "
                         "features only (--recipe metric --trainable none, no --pack, --pooling or --input-size)")
    if composite:
        req.trainable = []  # on any device
    if req.recipe == "bn-adapt":
        if req.pack:
            raise ValueError("bn-adapt reads the dataset roots; --pack applies to the classifier and metric recipes")
        return bn_adapt(settings, req, progress)
    if req.recipe == "suffix":
        if req.pack or req.trainable is not None or req.input_size or req.pooling:
            raise ValueError("--recipe suffix trains blocks 5-6 and the head convolution of --init-from on cached "
                             "maps at its own input size: no --pack, --trainable, --input-size or --pooling")
        from .suffix import train_suffix

        return train_suffix(settings, req, progress)
    if req.recipe == "metric" and not req.pack:
        if req.trainable is None and resolve_device(settings.device).type == "cpu":
            req.trainable = []  # CPU default: frozen trunk, head on cached features
        if req.trainable == [] and req.pooling in (None, "avg") and same_size:
            return train_metric_cached(settings, req, progress)
    cached_only = {"--instance-weight": req.instance_weight, "--colour-weight": req.colour_weight,
                   "--gender-weight": req.gender_weight, "--view-weight": req.view_weight,
                   "--distill-weight": req.distill_weight,
                   "--val-score shopper": req.val_score != "type"}
    if any(cached_only.values()):
        raise ValueError(f"{', '.join(k for k, v in cached_only.items() if v)} applies to the metric recipe on "
                         "cached features (frozen trunk, avg pooling, the base's input size) and to --recipe suffix")
    return train_on_images(settings, req, progress)


__all__ = ["RECIPES", "LabelEncoding", "TrainOptions", "TrainRequest", "train"]
