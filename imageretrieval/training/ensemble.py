"""Ensembles of trained heads on one frozen trunk: one trunk pass, the members' cosines averaged.

Heads trained independently on the same cached trunk features (other seeds, widths, epochs) make
different errors; averaging their cosine similarities is the cheapest ensemble there is, since the
trunk, which is nearly all of the compute, runs once. Members are chosen on the validation split.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..io_utils import save_json
from ..models import FeatureExtractor, ModelConfig, create_model, get_model_config, save_trained_model
from ..models.extractor import ConcatHeads
from ..models.registry import check_new_model_name
from ..models.saving import refuse_other_kind
from ..settings import Settings
from .data import training_table
from .recipes import _val_attributes, cached_trunk_features, cached_view_features, embed_views, run_dir
from .validation import val_scores

log = logging.getLogger(__name__)


def _member_head_spec(cfg: ModelConfig) -> dict:
    if cfg.extra.get("heads"):
        raise ValueError(f"{cfg.name} is itself an ensemble; list its members instead")
    objectives = cfg.extra.get("training_objectives") or {}
    return {"name": cfg.name, "hidden": int(cfg.head_hidden or 0), "dims": int(cfg.embedding_dims),
            "training": cfg.extra.get("training"),
            **({"view_scales": objectives["view_scales"]} if objectives.get("view_scales") else {})}


def validation_scores(settings: Settings, models: list[FeatureExtractor],
                      progress: bool = False) -> list[dict[str, float]]:
    """The training recipes' validation scores of head-only models of one base, on its cached val features.

    The val split is the one of the first model's training data; features are read once for all models.
    """
    config = models[0].config
    training = next((h.get("training") for h in config.extra.get("heads", []) if h.get("training")),
                    config.extra.get("training")) or {}
    dataset, selection = training.get("dataset", "both"), training.get("selection", "seed")
    _, table = training_table(settings, dataset, selection)
    table = table[table["split"] == "val"].reset_index(drop=True)
    table, x = cached_trunk_features(settings, config.reuses_trunk_of, table, selection, progress=progress)
    pooled = torch.from_numpy(x)
    labels, domains = table["label"].to_numpy(), table["domain"].to_numpy()
    attributes = _val_attributes(table, np.arange(len(table)))
    score = training.get("val_score", "type")
    scales = next((h.get("view_scales") for h in config.extra.get("heads", []) if h.get("view_scales")),
                  (config.extra.get("training_objectives") or {}).get("view_scales"))
    views = None
    if scales:
        views = torch.from_numpy(cached_view_features(settings, config.reuses_trunk_of, table, selection,
                                                      scales[0], progress))
    scores = []
    for model in models:
        with torch.no_grad():
            emb = model.embed_pooled(pooled).numpy()
        view_emb = embed_views(model, views) if views is not None else None
        scores.append(val_scores(emb, labels, domains, **attributes, views=view_emb, score=score))
    return scores


def ensemble_heads(settings: Settings, name: str, members: list[str], head_only: bool = True,
                   validate: bool = True) -> dict:
    """Save `name`: the common trunk of `members` + all their heads (`ConcatHeads`), as a trained model.

    Every member must be a head trained on the same frozen base trunk (same `reuses_trunk_of` and
    trunk digest, same pooling and input), with an L2-normalized output. `validate` reports the
    validation scores of the ensemble and of each member (the members' training data's val split),
    the numbers to choose members by.
    """
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two member models")
    if name in members:
        raise ValueError(f"the ensemble's name {name!r} must differ from its members'")
    check_new_model_name(name)
    refuse_other_kind(settings.workdir, name, "an ensemble", lambda c: "heads" in c.extra)
    configs = [get_model_config(m, settings.workdir) for m in members]
    first = configs[0]
    for cfg in configs:
        if not cfg.reuses_trunk_of or not cfg.embedding_dims:
            raise ValueError(f"{cfg.name} is not a head trained on a frozen trunk (`train --trainable none`)")
        same = (cfg.reuses_trunk_of, cfg.trunk_digest, cfg.pooling, cfg.input_size, cfg.architecture)
        if same != (first.reuses_trunk_of, first.trunk_digest, first.pooling, first.input_size,
                    first.architecture):
            raise ValueError(f"{cfg.name} and {first.name} do not share one frozen trunk and preprocessing")
        if not cfg.l2_normalize_output:
            raise ValueError(f"{cfg.name}: members must have L2-normalized outputs")
    specs = [_member_head_spec(c) for c in configs]
    models = [create_model(m, workdir=settings.workdir) for m in members]
    extra = {k: v for k, v in first.extra.items() if k not in ("training", "instance_weight",
                                                                "training_objectives")}
    extra.update(heads=specs, members=list(members))
    config = first.model_copy(update={
        "name": name, "embedding_dims": sum(s["dims"] for s in specs), "extra": extra, "head_hidden": None,
        "description": f"{first.reuses_trunk_of} + an ensemble of {len(members)} trained heads "
                       f"({', '.join(members)})",
    }, deep=True)
    model = FeatureExtractor(config, models[0].trunk)
    heads: ConcatHeads = model.head  # type: ignore[assignment]
    with torch.no_grad():
        for target, member in zip(heads.heads, models, strict=True):
            target.load_state_dict(member.head.state_dict())
    directory = save_trained_model(settings.workdir, model.eval(), head_only=head_only)
    info = {"recipe": "ensemble", "members": list(members), "dims": config.embedding_dims,
            "model_dir": str(directory)}
    if validate:
        ensemble_val, *members_val = validation_scores(settings, [model, *models])
        info["val"] = ensemble_val
        info["members_val"] = dict(zip(members, members_val, strict=True))
    save_json(run_dir(settings, name) / "run.json", info)
    log.info("saved ensemble %s of %s in %s", name, ", ".join(members), directory)
    return info
