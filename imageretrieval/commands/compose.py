"""`imageretrieval compose`: several pretrained backbones side by side as one named model."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("compose", help="put pretrained backbones side by side as one model",
                       description="Save --name as a composite: each member encodes the image at its own input "
                                   "size and the L2-normalized pooled features are concatenated. Its features "
                                   "are the members' cached ones; train a head on it with `train --base NAME "
                                   "--trainable none`. See docs/training.md.")
    p.add_argument("--name", required=True, help="name of the new model")
    p.add_argument("members", nargs="+", help="pretrained backbones of the zoo (`imageretrieval models`)")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from ..cli import CLIError
    from ..models import get_model_config, save_composite

    try:
        directory = save_composite(settings.workdir, args.name, args.members)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    cfg = get_model_config(args.name, settings.workdir)
    print(f"{args.name}: {' + '.join(args.members)}, {cfg.trunk_dims} dims, saved in {directory}")
    return 0
