"""`imageretrieval train`: classifier fine-tuning, metric learning or batch-norm adaptation -> a named model."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..cli import positive_int
from ..training.choices import DATASETS, LOSS_NAMES, RECIPES
from ..training.validation import VAL_SCORES

if TYPE_CHECKING:
    from ..training.recipes import TrainRequest


def register(sub) -> None:
    p = sub.add_parser("train", help="train a custom model (classifier | metric | suffix | bn-adapt) into the zoo, "
                                    "or a model's text projection (text)",
                       description="Train a model from --base and save it as --name under <WORKDIR>/models/. "
                                   "Run folder: <WORKDIR>/training/<name>/ (log.csv, curves.png, confusion.png, "
                                   "checkpoints). See docs/training.md.")
    p.add_argument("--base", required=True, help="model of the zoo to start from, e.g. efficientnet_lite0")
    p.add_argument("--name", help="name of the new model (every recipe but text, which adds to --base)")
    p.add_argument("--recipe", choices=(*RECIPES, "text"), default="metric",
                   help="text: a projection of a sentence encoder into --base's image space (search by words)")
    p.add_argument("--text-encoder", default=None,
                   help="text recipe: sentence encoder (default: the bundled all-minilm-l6-v2; or a hub id)")
    p.add_argument("--dataset", choices=DATASETS, default="both", help="training data (train split; val selects)")
    p.add_argument("--selection", default="seed", help="catalog selection (all | seed)")
    p.add_argument("--trainable", action="append",
                   help="trunk parameter regex to train (repeatable); 'none' = frozen trunk. Default: the "
                        "backbone's last stage(s) for classifier; for metric, frozen on CPU, last stages on CUDA")
    p.add_argument("--input-size", type=int, help="training/inference resolution (default: the base's)")
    p.add_argument("--pooling", choices=["avg", "gem", "max"], help="default: avg (frozen trunk) or gem")
    p.add_argument("--dims", type=positive_int, default=512, help="embedding dims (metric)")
    p.add_argument("--head-hidden", type=int, default=0, help="hidden width of an MLP head (0 = linear)")
    p.add_argument("--loss", choices=sorted(LOSS_NAMES), default="proxy-anchor")
    p.add_argument("--epochs", type=positive_int, default=None, help="default: 30 (cached metric) or 10")
    p.add_argument("--lr", type=float, default=None, help="default: 1e-3 (adamw) or 1e-2 (sgd)")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=5, help="early stopping: epochs without val improvement")
    p.add_argument("--train-batch-size", type=positive_int, default=None, help="default: 256 (cached) or 64")
    p.add_argument("--m-per-class", type=int, default=None,
                   help="class-balanced batches of m per class (0 = plain shuffling); default 4 (metric), 0")
    p.add_argument("--instance-weight", type=float, default=0.0,
                   help="metric on cached features: weight of an extra proxy loss over DeepFashion item ids "
                        "(photos of one garment), for instance-level (In-shop) retrieval; 0 = off")
    p.add_argument("--colour-weight", type=float, default=0.0,
                   help="metric on cached features: weight of an extra proxy loss over the catalog's baseColour "
                        "(the results share the query's colour); 0 = off")
    p.add_argument("--gender-weight", type=float, default=0.0,
                   help="metric on cached features: weight of an extra proxy loss over gender (catalog products "
                        "and photos; Unisex left out); 0 = off")
    p.add_argument("--view-scale", type=float, action="append", default=[], dest="view_scales", metavar="SCALE",
                   help="catalog products re-rendered at this scale (as `evaluate --query-scale`) are a second "
                        "view of the product (repeatable, e.g. 0.5); the first one is also validated on")
    p.add_argument("--view-weight", type=float, default=0.0,
                   help="metric on cached features: weight of a paired-view loss that finds each product's "
                        "rendering at a --view-scale among the batch (the very product); 0 = off")
    p.add_argument("--distill-from", metavar="MODEL",
                   help="metric on cached features: a teacher whose head runs on the same trunk (e.g. "
                        "efficientnet_lite0_fashion over efficientnet_lite0); with --distill-weight")
    p.add_argument("--distill-weight", type=float, default=0.0,
                   help="weight of keeping the teacher's neighbourhoods (KL between the batch's similarity "
                        "distributions, teacher vs. student); 0 = off")
    p.add_argument("--val-score", choices=VAL_SCORES, default="type",
                   help="what selects the best epoch: type (catalog and photo P@15) or shopper (those plus "
                        "colour, gender, exact-product and In-shop figures; docs/training.md)")
    p.add_argument("--max-images", type=int, help="bn-adapt: at most this many target images")
    p.add_argument("--sample", action="append", default=[], metavar="DATASET:SPLIT=N",
                   help="train (or validate) on a seeded sample of N images of that split, e.g. "
                        "deepfashion:train=2500 (CPU budget; repeatable; default: everything)")
    p.add_argument("--pack", metavar="DIR",
                   help="train on a training pack (`imageretrieval pack`) instead of the dataset roots, e.g. on "
                        "a GPU machine that does not hold the datasets; --dataset/--selection come from the pack")
    p.add_argument("--init-from", metavar="MODEL",
                   help="end-to-end metric or suffix: start the head and class proxies from this trained model (a "
                        "head trained on cached features), then fine-tune the trunk as well (linear probe, then "
                        "fine-tune); suffix requires it")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="suffix: no mirrored copy of the train maps (half their extraction; no flip augmentation)")
    p.add_argument("--trunk-lr-mult", type=float, default=None,
                   help="learning rate of trained trunk stages relative to --lr (default 0.1; suffix 0.33)")
    p.add_argument("--freeze-bn-stats", action="store_true",
                   help="images: keep every batch-norm layer's running statistics (the pretrained ones) while the "
                        "trunk trains; small or domain-mixed batches otherwise re-estimate them")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="plan only as many epochs as fit into this many minutes of training (measured after "
                        "each epoch); the learning-rate schedule is fitted to them")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume", action="store_true", help="continue from <WORKDIR>/training/<name>/last.pt")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=run)


def parse_samples(items: list[str]) -> dict[str, int]:
    """["deepfashion:train=2500"] -> {"deepfashion:train": 2500}."""
    from ..cli import CLIError

    out = {}
    for item in items:
        key, _, n = item.partition("=")
        domain, _, split = key.partition(":")
        if domain not in ("fashion", "deepfashion") or split not in ("train", "val") or not n.isdigit():
            raise CLIError(f"--sample {item!r}: expected (fashion|deepfashion):(train|val)=N")
        out[key] = int(n)
    return out


def request_from_args(args) -> TrainRequest:
    from ..training.recipes import TrainRequest
    from ..training.trainer import TrainOptions

    cached_default = args.recipe == "metric"
    suffix = args.recipe == "suffix"
    trainable = None if args.trainable is None else [t for t in args.trainable if t != "none"]
    opts = TrainOptions(
        epochs=args.epochs or (30 if cached_default else 8 if suffix else 10),
        lr=args.lr or (1e-2 if args.optimizer == "sgd" else 3e-4 if suffix else 1e-3),
        weight_decay=args.weight_decay, optimizer=args.optimizer, schedule=args.schedule,
        patience=args.patience, seed=args.seed,
        time_budget=args.time_budget * 60 if args.time_budget else None,
    )
    m = args.m_per_class if args.m_per_class is not None else (4 if args.recipe in ("metric", "suffix") else 0)
    return TrainRequest(
        base=args.base, name=args.name, recipe=args.recipe, dataset=args.dataset, selection=args.selection,
        trainable=trainable, input_size=args.input_size, pooling=args.pooling, dims=args.dims,
        head_hidden=args.head_hidden, loss=args.loss, m_per_class=m,
        batch_size=args.train_batch_size or (256 if cached_default else 64),
        instance_weight=args.instance_weight, colour_weight=args.colour_weight, gender_weight=args.gender_weight,
        view_scales=args.view_scales, view_weight=args.view_weight, val_score=args.val_score,
        distill_from=args.distill_from, distill_weight=args.distill_weight,
        max_images=args.max_images, samples=parse_samples(args.sample),
        pack=args.pack, init_from=args.init_from, freeze_bn_stats=args.freeze_bn_stats, resume=args.resume,
        flip=args.flip, trunk_lr_mult=args.trunk_lr_mult or (1 / 3 if suffix else 0.1),
        options=opts,
    )


def run(args, settings) -> int:
    from ..cli import CLIError

    if args.recipe == "text":
        from ..text.encoders import DEFAULT_TEXT_ENCODER
        from ..training.text import train_text_projection

        path = train_text_projection(settings, args.base, args.text_encoder or DEFAULT_TEXT_ENCODER,
                                     epochs=args.epochs or 30, lr=args.lr or 2e-3)
        print(f"{args.base}: text projection saved in {path}")
        return 0
    if not args.name:
        raise CLIError(f"--recipe {args.recipe} trains a new model: give it a --name")
    from ..models.registry import check_new_model_name
    from ..training.recipes import train

    try:
        check_new_model_name(args.name)
    except ValueError as exc:
        raise CLIError(f"--name: {exc}") from None
    try:
        info = train(settings, request_from_args(args))
    except ValueError as exc:  # bad option combinations name themselves
        raise CLIError(str(exc)) from exc
    if args.json:
        print(json.dumps(info, default=str))
    else:
        best = info.get("best_val_score")
        print(f"{args.name}: saved in {info['model_dir']} ({info['seconds']} s"
              + (f", best val score {best:.4f} at epoch {info['best_epoch']}" if best is not None else "") + ")")
    return 0
