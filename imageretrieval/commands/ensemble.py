"""`imageretrieval ensemble`: combine trained heads on one frozen trunk into one named model."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("ensemble", help="combine heads trained on one frozen trunk into one model",
                       description="Save --name as the shared trunk + every member's head; its embedding is the "
                                   "members' L2-normalized embeddings concatenated (cosine = their mean cosine). "
                                   "See docs/training.md.")
    p.add_argument("--name", required=True, help="name of the new model")
    p.add_argument("members", nargs="+", help="trained head models (`train --trainable none`) of one base")
    p.add_argument("--full-weights", action="store_true",
                   help="also store the trunk's weights (default: only the heads; the trunk is the base's)")
    p.add_argument("--no-val", action="store_true", help="skip the validation scores (ensemble and members)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from ..cli import CLIError
    from ..training.ensemble import ensemble_heads

    try:
        info = ensemble_heads(settings, args.name, args.members, head_only=not args.full_weights,
                              validate=not args.no_val)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{args.name}: saved in {info['model_dir']} ({info['dims']} dims)")
    if "val" in info:
        for who, scores in [(args.name, info["val"]), *info["members_val"].items()]:
            print(f"  val {who}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return 0
