"""Fine-tune the last stages of an efficientnet_lite head model on 2 CPU cores, from cached maps.

A head trained on frozen pooled features (`train --trainable none`) cannot adapt the trunk. Training
the trunk end to end on images costs a full forward pass per image and step (~5 img/s here). But
when the early stages stay frozen and the only augmentation is a horizontal flip, their output
maps are fixed: this script computes them once (blocks 0-4 of the lite trunk: 14x14x112 at 224 px,
fp16, for the seed selection's train split, its mirror image, val and test) and then trains blocks
5-6 + the head convolution + the embedding head + the class proxies on them (~65 img/s of
training), starting from the source model (linear probe, then fine-tune). Every batch-norm layer
keeps its pretrained statistics (see docs/training.md on why re-estimating them breaks the head).
The best epoch by the training recipe's validation score is saved as a new model of the zoo, so
`imageretrieval evaluate --model NAME` measures it like any other.

    python scripts/suffix_finetune.py SOURCE NAME [EPOCHS] [TRUNK_LR] [HEAD_LR]

SOURCE: a head trained on `efficientnet_lite0` features of the seed selection (catalog only), e.g.
lite0-metric-seed-mlp80. The maps land in <WORKDIR>/prefix-maps/ (~1.1 GB) and are reused.
"""

import copy
import json
import logging
import sys
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from imageretrieval.device import to_batch
from imageretrieval.evaluation.protocols import sample_rows
from imageretrieval.extract import make_loader
from imageretrieval.featurestore import fashion_table
from imageretrieval.models import FeatureExtractor, create_model
from imageretrieval.models.extractor import DIGEST_KEY, REUSE_KEY
from imageretrieval.models.registry import TRUNK_FROM_BASE, save_trained_model
from imageretrieval.preprocess import preprocess_for
from imageretrieval.settings import Settings
from imageretrieval.training.data import balanced_batches
from imageretrieval.training.losses import ProxyLoss
from imageretrieval.training.metrics import retrieval_scores
from imageretrieval.training.recipes import run_dir, val_scores
from imageretrieval.training.trainer import BEST

log = logging.getLogger("suffix_finetune")
FROZEN_BLOCKS = 5  # blocks 0-4 stay frozen; 5, 6, conv_head and bn2 train
BATCH, PER_CLASS = 64, 4


@torch.inference_mode()
def prefix_maps(settings: Settings, model: FeatureExtractor, split: str, flip: bool) -> np.ndarray:
    """The frozen stages' output maps of a seed split (computed once, written atomically)."""
    path = settings.workdir / "prefix-maps" / f"efficientnet_lite0-b{FROZEN_BLOCKS}" / \
        f"seed-{split}{'-flip' if flip else ''}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = fashion_table(settings, "seed", split)
    loader = make_loader(list(table["path"]), preprocess_for(model.config), 32, 1, torch.device("cpu"))
    side = model.config.input_size // 16
    partial = path.with_suffix(".partial.npy")
    out = np.lib.format.open_memmap(partial, "w+", np.float16, (len(table), 112, side, side))
    row = 0
    net = copy.deepcopy(model.trunk).to(memory_format=torch.channels_last)
    for images, _ in tqdm(loader, desc=f"maps {split}{' flipped' if flip else ''}", unit="batch"):
        x = to_batch(images, torch.device("cpu"))
        x = torch.flip(x, dims=[3]) if flip else x
        x = net.bn1(net.conv_stem((x - model.mean) / model.std))
        for block in net.blocks[:FROZEN_BLOCKS]:
            x = block(x)
        out[row:row + len(x)] = x.float().numpy().astype(np.float16)
        row += len(x)
    out.flush()
    del out
    partial.replace(path)
    return np.load(path, mmap_mode="r")


def main(source: str, name: str, epochs: int, trunk_lr: float, head_lr: float) -> None:
    settings = Settings()
    torch.manual_seed(0)
    model = create_model(source, workdir=settings.workdir).eval()
    if model.config.extra.get(REUSE_KEY) != "efficientnet_lite0" or model.head is None:
        sys.exit(f"{source}: expected a head trained on frozen efficientnet_lite0 features")
    trunk = model.trunk
    classes = json.loads((run_dir(settings, source) / "run.json").read_text())["classes"]
    code = {c: i for i, c in enumerate(classes)}
    labels = {s: np.array([code[c] for c in fashion_table(settings, "seed", s)["articleType"]])
              for s in ("train", "val", "test")}
    maps = {s: prefix_maps(settings, model, s, False) for s in ("val", "test", "train")}
    # (2, n, C, H, W) in RAM: ~0.85 GB
    train_maps = np.stack([maps["train"], prefix_maps(settings, model, "train", True)])

    suffix = nn.Sequential(*trunk.blocks[FROZEN_BLOCKS:], trunk.conv_head, trunk.bn2)
    suffix = suffix.to(memory_format=torch.channels_last)
    for p in trunk.parameters():
        p.requires_grad_(False)
    for p in suffix.parameters():
        p.requires_grad_(True)
    loss_fn = ProxyLoss("proxy-anchor", len(classes), model.config.embedding_dims)
    best_ckpt = torch.load(run_dir(settings, source) / BEST, map_location="cpu", weights_only=True)
    loss_fn.proxies.data.copy_(best_ckpt["state"]["loss.proxies"])
    optimizer = torch.optim.AdamW([
        {"params": list(suffix.parameters()), "lr": trunk_lr},
        {"params": list(model.head.parameters()), "lr": head_lr},
        {"params": [loss_fn.proxies], "lr": head_lr * 10, "weight_decay": 0.0}], weight_decay=1e-4)
    n_batches = len(labels["train"]) // BATCH
    total = epochs * n_batches
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + np.cos(np.pi * min(step, total) / total)))  # cosine to 0

    def as_batch(array) -> torch.Tensor:
        return torch.from_numpy(np.asarray(array, dtype=np.float32)).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def embed(split: str) -> np.ndarray:
        suffix.eval()
        return np.concatenate([model.embed_pooled(suffix(as_batch(maps[split][i:i + 256])).mean((2, 3))).numpy()
                               for i in range(0, len(maps[split]), 256)])

    def validate() -> dict:
        out = val_scores(embed("val"), labels["val"], np.array(["fashion"] * len(labels["val"])))
        return {"p@15": out["catalog_p@15"], "map": out["catalog_map"]}

    def test() -> dict:
        """The catalog protocol's figures: 600 seeded test queries against the test split."""
        emb, y = embed("test"), labels["test"]
        q = sample_rows(len(y), 600, settings.seed)
        return retrieval_scores(emb[q], y[q], emb, y, exclude_rows=q)

    start = validate()
    log.info("start (%s): val P@15 %.4f mAP %.4f; test %s", source, start["p@15"], start["map"], test())
    best, best_state, best_epoch = start["p@15"], None, 0
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        suffix.eval()  # batch-norm statistics stay the pretrained ones; the weights train
        total_loss = 0.0
        for rows in tqdm(balanced_batches(labels["train"], PER_CLASS, BATCH, n_batches, rng), desc=f"epoch {epoch}",
                         unit="batch", leave=False):
            mirrored = rng.integers(0, 2, len(rows))
            emb = model.embed_pooled(suffix(as_batch(train_maps[mirrored, rows])).mean((2, 3)))
            loss = loss_fn(emb, torch.from_numpy(labels["train"][rows]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item()
        val = validate()
        log.info("epoch %d: loss %.3f, val P@15 %.4f mAP %.4f (%.0f s)", epoch, total_loss / n_batches, val["p@15"],
                 val["map"], time.perf_counter() - t0)
        if val["p@15"] > best:
            best, best_epoch = val["p@15"], epoch
            best_state = copy.deepcopy(model.state_dict())
    if best_state is None:
        sys.exit(f"no epoch beat {source} on val (P@15 {start['p@15']:.4f}); nothing saved")
    model.load_state_dict(best_state)
    log.info("best epoch %d: val P@15 %.4f; test %s; %.0f s of training", best_epoch, best, test(),
             time.perf_counter() - t0)
    extra = {k: v for k, v in model.config.extra.items() if k not in (REUSE_KEY, DIGEST_KEY, TRUNK_FROM_BASE)}
    extra["training"] = {**extra.get("training", {}), "finetuned_from": source, "mode": "cached-prefix-maps",
                         "trainable": ["blocks.5", "blocks.6", "conv_head", "bn2"], "epochs": epochs,
                         "best_epoch": best_epoch, "lr": [trunk_lr, head_lr]}
    config = model.config.model_copy(update={"name": name, "base_model": source, "extra": extra,
                                             "description": f"{source} with blocks 5-6 and conv_head fine-tuned"},
                                     deep=True)
    model.config = config
    log.info("saved %s in %s", name, save_trained_model(settings.workdir, model.eval(), config))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 8,
         float(sys.argv[4]) if len(sys.argv) > 4 else 1e-4, float(sys.argv[5]) if len(sys.argv) > 5 else 3e-4)
