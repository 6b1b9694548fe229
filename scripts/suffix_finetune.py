"""Fine-tune the last stages of an efficientnet_lite head model on 2 CPU cores, from cached maps.

A head trained on frozen pooled features (`train --trainable none`) cannot adapt the trunk. Training
the trunk end to end on images costs a full forward pass per image and step (~5 img/s here). But
when the early stages stay frozen and the only augmentation is a horizontal flip, their output maps
are fixed: this script computes them once (blocks 0-4 of the lite trunk, fp16: 14x14x112 for lite0
at 224 px) for the source's train split, its mirror image, val and, for the seed selection, test
(photos through the engine's query path), and then trains blocks 5-6 + the head convolution + the
embedding head + the class proxies on them (~65 img/s of training for lite0), starting from the
source model (linear probe, then fine-tune). Every batch-norm layer keeps its pretrained statistics
(see docs/training.md on why re-estimating them breaks the head). The best epoch by the training
recipe's validation score is saved as a new model of the zoo, so `imageretrieval evaluate --model
NAME` measures it like any other.

    python scripts/suffix_finetune.py SOURCE NAME [EPOCHS] [TRUNK_LR] [HEAD_LR] [--no-flip]
        [--val-sample N] [--resume]

SOURCE: a head trained on frozen `efficientnet_lite0`, `_lite1` or `_lite2` features, e.g.
lite0-metric-seed-mlp80 (seed catalog) or lite0-metric-both-mlp80 (whole catalog + photos); the run
trains on the same dataset and split. The maps land in <WORKDIR>/prefix-maps/ (~44 KB per image and
copy for lite0: 1.1 GB for the seed selection with its mirror) and are reused. After every epoch the
run's state is saved (<WORKDIR>/training/NAME/suffix-last.pt); `--resume` continues an interrupted
run from there.
"""

import argparse
import copy
import json
import logging
import math
import sys
import time

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from imageretrieval.artifacts import catalog_resolution
from imageretrieval.catalog import load_catalog
from imageretrieval.device import to_batch
from imageretrieval.evaluation.protocols import sample_rows
from imageretrieval.extract import image_batches
from imageretrieval.featurestore import fashion_table
from imageretrieval.io_utils import atomic_write, save_json
from imageretrieval.models import FeatureExtractor, create_model
from imageretrieval.models.extractor import DIGEST_KEY, REUSE_KEY
from imageretrieval.models.registry import TRUNK_FROM_BASE, save_trained_model
from imageretrieval.preprocess import preprocess_for
from imageretrieval.settings import Settings
from imageretrieval.training.data import balanced_batches, training_table
from imageretrieval.training.losses import ProxyLoss
from imageretrieval.training.metrics import retrieval_scores
from imageretrieval.training.recipes import run_dir
from imageretrieval.training.trainer import BEST
from imageretrieval.training.validation import val_scores

log = logging.getLogger("suffix_finetune")
FROZEN_BLOCKS = 5  # blocks 0-4 stay frozen; 5, 6, conv_head and bn2 train
LITE_TRUNKS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
LAST = "suffix-last.pt"  # the state after the last finished epoch, in the new model's training folder
BATCH, PER_CLASS = 64, 4


def prefix(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The frozen stages of a timm efficientnet_lite trunk: stem, then blocks 0 .. FROZEN_BLOCKS-1."""
    x = trunk.bn1(trunk.conv_stem(x))
    for block in trunk.blocks[:FROZEN_BLOCKS]:
        x = block(x)
    return x


@torch.inference_mode()
def prefix_maps(settings: Settings, model: FeatureExtractor, name: str, paths: list[str], flip: bool = False,
                query_resolution: tuple[int, int] | None = None) -> np.ndarray:
    """The frozen stages' output maps of the images at `paths`, computed once and written atomically.

    `name` names the image list (e.g. `seed-train`, `deepfashion-train-q60x80`); the list itself is
    saved beside the maps and checked on reuse, so a changed split never reuses stale maps.
    """
    path = settings.workdir / "prefix-maps" / f"{model.config.extra[REUSE_KEY]}-b{FROZEN_BLOCKS}" / \
        f"{name}{'-flip' if flip else ''}.npy"
    keys_path = path.with_suffix(".paths.json")
    if path.is_file() and keys_path.is_file():
        if json.loads(keys_path.read_text()) == paths:
            return np.load(path, mmap_mode="r")
        log.warning("%s: cached for another image list; computing it again", path)
    keys_path.unlink(missing_ok=True)  # maps without their list are never reused
    path.parent.mkdir(parents=True, exist_ok=True)
    n_batches = -(-len(paths) // 32)
    preprocess = preprocess_for(model.config, query_resolution)
    loader = ((torch.from_numpy(x), ok) for x, ok in image_batches(paths, preprocess, 32))
    net = copy.deepcopy(model.trunk).to(memory_format=torch.channels_last)
    probe = torch.zeros(1, 3, model.config.input_size, model.config.input_size)
    shape = prefix(net, probe).shape[1:]  # (C, H, W): 112 x 14 x 14 for lite0 at 224 px
    partial = path.with_suffix(".partial.npy")
    out = np.lib.format.open_memmap(partial, "w+", np.float16, (len(paths), *shape))
    row = 0
    for images, _ in tqdm(loader, total=n_batches, desc=f"maps {name}{' flipped' if flip else ''}", unit="batch"):
        x = to_batch(images, torch.device("cpu"))
        x = torch.flip(x, dims=[3]) if flip else x
        x = prefix(net, (x - model.mean) / model.std)
        out[row:row + len(x)] = x.float().numpy().astype(np.float16)
        row += len(x)
    out.flush()
    del out
    partial.replace(path)
    save_json(keys_path, paths)  # last: a crash before this leaves maps that are computed again
    return np.load(path, mmap_mode="r")


def split_maps(settings: Settings, model: FeatureExtractor, rows: pd.DataFrame, name: str,
               res: tuple[int, int] | None, flip: bool = False) -> np.ndarray:
    """Maps of a training table's rows (one split): catalog products, then photos brought to `res` (w, h)."""
    parts = []
    for domain, part in rows.groupby("domain", sort=False):
        if domain == "fashion":
            parts.append(prefix_maps(settings, model, name, list(part["path"]), flip))
        else:
            split = part["split"].iloc[0]
            parts.append(prefix_maps(settings, model, f"deepfashion-{split}-q{res[0]}x{res[1]}", list(part["path"]),
                                     flip, res))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def main(args: argparse.Namespace) -> None:
    settings = Settings()
    torch.manual_seed(0)
    source, name, epochs, trunk_lr, head_lr = args.source, args.name, args.epochs, args.trunk_lr, args.head_lr
    model = create_model(source, workdir=settings.workdir).eval()
    if model.config.extra.get(REUSE_KEY) not in LITE_TRUNKS or model.head is None:
        sys.exit(f"{source}: expected a head trained on frozen {' / '.join(LITE_TRUNKS)} features")
    trunk = model.trunk
    run = json.loads((run_dir(settings, source) / "run.json").read_text())
    dataset, selection = run["request"]["dataset"], run["request"]["selection"]
    encoding, table = training_table(settings, dataset, selection)
    if list(encoding.classes) != run["classes"]:
        sys.exit(f"{source}: its classes differ from the {dataset}/{selection} training table's")
    val_name = f"{selection}-val"
    cat_val = table.index[(table["split"] == "val") & (table["domain"] == "fashion")]
    if args.val_sample and len(cat_val) > args.val_sample:  # a validation pass in seconds, not minutes
        keep = cat_val[sample_rows(len(cat_val), args.val_sample, settings.seed)]
        table = table.drop(cat_val.difference(keep)).reset_index(drop=True)
        val_name += f"-s{args.val_sample}"
    rows = {s: table[table["split"] == s] for s in ("train", "val")}  # catalog rows first, then photos
    labels = {s: r["label"].to_numpy() for s, r in rows.items()}
    domains = {s: r["domain"].to_numpy() for s, r in rows.items()}
    items = rows["val"]["item"].to_numpy().astype(str)
    res = catalog_resolution(load_catalog(settings.dataset_root)) \
        if (table["domain"] == "deepfashion").any() else None  # photos take the engine's query path
    maps = {"val": split_maps(settings, model, rows["val"], val_name, res)}
    with_test = dataset == "fashion" and selection == "seed"
    if with_test:  # the catalog protocol's test split, scored inside the run
        test_table = fashion_table(settings, "seed", "test")
        labels["test"] = encoding.encode(test_table["articleType"])
        maps["test"] = prefix_maps(settings, model, "seed-test", list(test_table["path"]))
    train = [split_maps(settings, model, rows["train"], f"{selection}-train", res)]
    if args.flip:
        train.append(split_maps(settings, model, rows["train"], f"{selection}-train", res, flip=True))
    train_maps = np.stack(train)  # (1 or 2, n, C, H, W) in RAM: ~44 KB per image and copy

    suffix = nn.Sequential(*trunk.blocks[FROZEN_BLOCKS:], trunk.conv_head, trunk.bn2)
    suffix = suffix.to(memory_format=torch.channels_last)
    for p in trunk.parameters():
        p.requires_grad_(False)
    for p in suffix.parameters():
        p.requires_grad_(True)
    loss_fn = ProxyLoss("proxy-anchor", len(encoding), model.config.embedding_dims)
    best_ckpt = torch.load(run_dir(settings, source) / BEST, map_location="cpu", weights_only=True)
    loss_fn.proxies.data.copy_(best_ckpt["state"]["loss.proxies"])
    optimizer = torch.optim.AdamW([
        {"params": list(suffix.parameters()), "lr": trunk_lr},
        {"params": list(model.head.parameters()), "lr": head_lr},
        {"params": [loss_fn.proxies], "lr": head_lr * 10, "weight_decay": 0.0}], weight_decay=1e-4)
    n_batches = len(labels["train"]) // BATCH
    domain_codes = pd.factorize(domains["train"])[0]  # every batch holds both domains of a class
    total = epochs * n_batches
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))  # cosine to 0

    def as_batch(array) -> torch.Tensor:
        return torch.from_numpy(np.asarray(array, dtype=np.float32)).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def embed(split: str) -> np.ndarray:
        suffix.eval()
        return np.concatenate([model.embed_pooled(suffix(as_batch(maps[split][i:i + 256])).mean((2, 3))).numpy()
                               for i in range(0, len(maps[split]), 256)])

    def validate() -> dict:
        """The training recipe's validation: catalog val (and photo val -> catalog val) P@15; score = their mean."""
        return val_scores(embed("val"), labels["val"], domains["val"], items=items)

    def test() -> dict | str:
        """The catalog protocol's figures: 600 seeded test queries against the seed test split."""
        if not with_test:
            return "run `imageretrieval evaluate` on the saved model"
        emb, y = embed("test"), labels["test"]
        q = sample_rows(len(y), 600, settings.seed)
        return retrieval_scores(emb[q], y[q], emb, y, exclude_rows=q)

    def show(scores: dict) -> str:
        return ", ".join(f"{k} {v:.4f}" for k, v in scores.items())

    rng = np.random.default_rng(0)
    checkpoint = run_dir(settings, name) / LAST
    run_args = {k: getattr(args, k) for k in ("source", "epochs", "trunk_lr", "head_lr", "flip", "val_sample")}
    first_epoch, spent = 1, 0.0
    if args.resume and checkpoint.is_file():
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if ckpt["args"] != run_args:
            sys.exit(f"{checkpoint}: saved by a run with other arguments ({ckpt['args']}); "
                     "rerun with those or without --resume")
        model.load_state_dict(ckpt["model"])
        loss_fn.load_state_dict(ckpt["loss"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        rng.bit_generator.state = ckpt["rng"]
        start, best, best_state, best_epoch = ckpt["start"], ckpt["best"], ckpt["best_state"], ckpt["best_epoch"]
        first_epoch, spent = ckpt["epoch"] + 1, ckpt["seconds"]
        log.info("resumed from %s after epoch %d", checkpoint, ckpt["epoch"])
    else:
        start = validate()
        log.info("start (%s): val %s; test %s", source, show(start), test())
        best, best_state, best_epoch = start["score"], None, 0
    t0 = time.perf_counter() - spent
    for epoch in range(first_epoch, epochs + 1):
        suffix.eval()  # batch-norm statistics stay the pretrained ones; the weights train
        total_loss = 0.0
        batches = balanced_batches(labels["train"], PER_CLASS, BATCH, n_batches, rng, domain_codes)
        for batch in tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False):
            mirrored = rng.integers(0, len(train_maps), len(batch))
            emb = model.embed_pooled(suffix(as_batch(train_maps[mirrored, batch])).mean((2, 3)))
            loss = loss_fn(emb, torch.from_numpy(labels["train"][batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item()
        val = validate()
        log.info("epoch %d: loss %.3f, val %s (%.0f s)", epoch, total_loss / n_batches, show(val),
                 time.perf_counter() - t0)
        if val["score"] > best:
            best, best_epoch = val["score"], epoch
            best_state = copy.deepcopy(model.state_dict())
        state = {"args": run_args, "epoch": epoch, "seconds": time.perf_counter() - t0, "model": model.state_dict(),
                 "loss": loss_fn.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "rng": rng.bit_generator.state, "start": {k: float(v) for k, v in start.items()},
                 "best": float(best), "best_state": best_state,
                 "best_epoch": best_epoch}
        atomic_write(checkpoint, lambda path, state=state: torch.save(state, path))  # --resume continues here
    if best_state is None:
        sys.exit(f"no epoch beat {source} on val (score {start['score']:.4f}); nothing saved")
    model.load_state_dict(best_state)
    log.info("best epoch %d: val score %.4f; test %s; %.0f s of training", best_epoch, best, test(),
             time.perf_counter() - t0)
    extra = {k: v for k, v in model.config.extra.items() if k not in (REUSE_KEY, DIGEST_KEY, TRUNK_FROM_BASE)}
    extra["training"] = {**extra.get("training", {}), "finetuned_from": source, "mode": "cached-prefix-maps",
                         "trainable": ["blocks.5", "blocks.6", "conv_head", "bn2"], "epochs": epochs,
                         "best_epoch": best_epoch, "lr": [trunk_lr, head_lr], "flip": args.flip,
                         "val_sample": args.val_sample}
    config = model.config.model_copy(update={"name": name, "base_model": source, "extra": extra,
                                             "description": f"{source} with blocks 5-6 and conv_head fine-tuned"},
                                     deep=True)
    model.config = config
    log.info("saved %s in %s", name, save_trained_model(settings.workdir, model.eval(), config))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a head trained on frozen lite0/1/2 features (`train --trainable none`)")
    parser.add_argument("name", help="name of the new model")
    parser.add_argument("epochs", nargs="?", type=int, default=8)
    parser.add_argument("trunk_lr", nargs="?", type=float, default=1e-4)
    parser.add_argument("head_lr", nargs="?", type=float, default=3e-4)
    parser.add_argument("--no-flip", dest="flip", action="store_false",
                        help="no mirrored copy of the train maps (half the extraction; no flip augmentation)")
    parser.add_argument("--val-sample", type=int, default=0,
                        help="validate on a seeded sample of at most N catalog val products (0: all)")
    parser.add_argument("--resume", action="store_true",
                        help="continue after the last finished epoch of an interrupted run of NAME (same arguments)")
    parsed = parser.parse_args()
    if parsed.epochs < 1:
        parser.error(f"EPOCHS must be at least 1 (got {parsed.epochs})")
    main(parsed)
