"""`imageretrieval fuse`: a weighted late fusion of embedding models as one named model."""

from __future__ import annotations

from ..models import get_model_config
from ..models.composite import member_weights
from ..rerank import RERANKS


def parse_weights(text: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError as exc:
        raise ValueError(f"--weights {text!r}: give comma-separated numbers, one per member, e.g. 0.4,0.3,0.3") from exc


def register(sub) -> None:
    p = sub.add_parser("fuse", help="fuse trained (or pretrained) models into one, with weights",
                       description="Save --name as a weighted late fusion: each member encodes the image at its "
                                   "own input size, its L2-normalized embedding is scaled by sqrt(weight), and "
                                   "the blocks are concatenated, so the fused cosine is the weighted mean of the "
                                   "members' cosines. Its catalog features are the members' cached ones. "
                                   "--choose-on val chooses the weights on the catalog's val split and scores "
                                   "them once on its test split. See docs/training.md.")
    p.add_argument("--name", required=True, help="name of the new model")
    p.add_argument("members", nargs="+", help="models of the zoo (`imageretrieval models`)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--weights", help="comma-separated, one per member, positive (normalized to sum 1); "
                                       "default: equal")
    how.add_argument("--choose-on", choices=["val"],
                     help="choose the weights on the catalog protocol's val split (a 0.1 grid; P@15, then mAP), "
                          "report them and each member alone on the test split, and save the chosen fusion")
    p.add_argument("--selection", default="seed", help="--choose-on: catalog selection (default: seed)")
    p.add_argument("--rerank", choices=RERANKS, default="none",
                   help="--choose-on: score with category-first re-ranking")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from ..cli import CLIError
    from ..models import save_fusion

    members = list(args.members)
    try:
        weights = parse_weights(args.weights) if args.weights else None
        if args.choose_on:
            weights, members = _choose(settings, args, members)
        directory = save_fusion(settings.workdir, args.name, members, weights)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    cfg = get_model_config(args.name, settings.workdir)
    shown = " + ".join(f"{w:g} x {m}" for m, w in zip(members, member_weights(cfg), strict=True))
    print(f"{args.name}: {shown}, {cfg.dims} dims, saved in {directory}")
    return 0


def _choose(settings, args, members: list[str]) -> tuple[list[float], list[str]]:
    """The weights chosen on val (members with weight 0 dropped); prints the val best and the test rows."""
    from ..evaluation.fusion import choose_fusion_weights

    result = choose_fusion_weights(settings, members, args.selection, args.rerank)
    chosen = result["chosen"]
    print(f"chosen on val ({args.selection} selection, rerank {args.rerank}): "
          + ", ".join(f"{m} {w:g}" for m, w in zip(members, chosen, strict=True)) + f": {result['val'][chosen]}")
    for weights, scores in result["test"].items():
        alone = [m for m, w in zip(members, weights, strict=True) if w == 1]
        label = (alone[0] if alone else "fusion") + (" (chosen)" if weights == chosen else "")
        print(f"test {label}: {scores}")
    kept = [(m, w) for m, w in zip(members, chosen, strict=True) if w > 0]
    if len(kept) < 2:
        raise ValueError(f"the val split chose {kept[0][0]} alone: no fusion saved")
    return [w for _, w in kept], [m for m, _ in kept]
