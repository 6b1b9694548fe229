"""`imageretrieval fuse`: a weighted late fusion of embedding models as one named model."""

from __future__ import annotations

from ..models import get_model_config, save_fusion
from ..models.composite import member_weights


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
                                   "scripts/late_fusion.py chooses the weights on the val split. "
                                   "See docs/training.md.")
    p.add_argument("--name", required=True, help="name of the new model")
    p.add_argument("members", nargs="+", help="models of the zoo (`imageretrieval models`)")
    p.add_argument("--weights", help="comma-separated, one per member, positive (normalized to sum 1); "
                                     "default: equal")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from ..cli import CLIError

    try:
        weights = parse_weights(args.weights) if args.weights else None
        directory = save_fusion(settings.workdir, args.name, args.members, weights)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    cfg = get_model_config(args.name, settings.workdir)
    shown = " + ".join(f"{w:g} x {m}" for m, w in zip(args.members, member_weights(cfg), strict=True))
    print(f"{args.name}: {shown}, {cfg.dims} dims, saved in {directory}")
    return 0
