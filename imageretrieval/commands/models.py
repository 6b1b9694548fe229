"""`imageretrieval models`: every model of the zoo, its weights and whether its index is built."""

from __future__ import annotations

import json

from ..artifacts import ModelArtifacts
from ..models import get_model_config, list_model_names
from ..models.registry import weights_available


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo (pretrained and trained)")
    p.add_argument("--json", action="store_true", help="one JSON object per model, one per line")
    p.set_defaults(func=run)


def model_rows(settings) -> list[dict]:
    rows = []
    for name in list_model_names(settings.workdir):
        cfg = get_model_config(name, settings.workdir)
        rows.append({
            "name": name,
            "kind": cfg.kind,
            "backbone": cfg.architecture,
            "dims": cfg.dims,
            "input_size": cfg.input_size,
            "input": f"{cfg.input_hw[1]}x{cfg.input_hw[0]}",
            "weights": f"{cfg.weights.type}:{cfg.weights.ref}",
            "weights_available": weights_available(cfg, settings.workdir),
            "index_built": ModelArtifacts.of(settings.workdir, name).exists(),
            "default": name == settings.default_model,
            "description": cfg.description,
        })
    return rows


def run(args, settings) -> int:
    rows = model_rows(settings)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    header = f"{'name':24} {'kind':10} {'backbone':24} {'dims':>5} {'input':>7}  {'weights':9} {'index':5}"
    print(header)
    print("-" * len(header))
    for r in rows:
        star = " *" if r["default"] else ""
        print(f"{r['name']:24} {r['kind']:10} {r['backbone']:24} {r['dims']:>5} {r['input']:>7}  "
              f"{'yes' if r['weights_available'] else 'no':9} {'yes' if r['index_built'] else 'no':5}{star}")
    print("\n* default model. Weights 'no' for a hub model: run once online, or put a checkpoint in "
          "<WORKDIR>/checkpoints/<name>.pth. Input is width x height; any pretrained model also exists "
          "at another size as NAME@WxH.")
    return 0
