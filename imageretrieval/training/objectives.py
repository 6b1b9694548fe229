"""What a metric-learning step minimizes: the articleType proxy loss plus the shopper objectives.

One place for the recipes that learn an embedding (a head on cached features, the last stages on
cached maps): each objective with a weight > 0 adds its term. `item`: a proxy per DeepFashion garment
(photos of one garment nearer each other than other garments of their type); `colour` and `gender`:
proxies over the catalog's baseColour and gender (a photo's gender from its folder; rows without a
value are left out); `views`: a paired-view loss between a catalog product and its rendering at
another scale (the very product found again); `distill`: the neighbourhoods of a teacher model's
embedding (e.g. the articleType-trained shipped model), kept while the others are learned. The
articleType loss alone makes every product of a type alike, and colour, gender and the product
itself are lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from .labels import colour_encoding, gender_encoding
from .losses import ProxyLoss, similarity_distillation_loss, view_contrastive_loss


@dataclass
class ObjectiveWeights:
    instance: float = 0.0
    colour: float = 0.0
    gender: float = 0.0
    views: float = 0.0
    view_scales: list[float] = field(default_factory=list)
    distill: float = 0.0

    def check(self) -> None:
        if self.views > 0 and not self.view_scales:
            raise ValueError("--view-weight needs at least one --view-scale (e.g. 0.5)")


class Objectives(nn.Module):
    """The loss modules of a run (their proxies are learned and checkpointed) and the weighted sum."""

    def __init__(self, kind: str, n_classes: int, dims: int, table: pd.DataFrame, train_rows: np.ndarray,
                 weights: ObjectiveWeights):
        super().__init__()
        weights.check()
        self.view_weight, self.distill_weight = weights.views, weights.distill
        self.type_loss = ProxyLoss(kind, n_classes, dims)
        items = table["item"].to_numpy().astype(str)
        item_codes = np.full(len(table), -1, np.int64)
        with_item = train_rows[items[train_rows] != ""]
        item_codes[with_item] = pd.factorize(items[with_item])[0]
        colours, genders = table["colour"].to_numpy().astype(str), table["gender"].to_numpy().astype(str)
        candidates = {"item": (torch.from_numpy(item_codes), weights.instance, "--instance-weight needs DeepFashion "
                               "photos in the training data (--dataset deepfashion or both)"),
                      "colour": (torch.from_numpy(colour_encoding(colours).encode(colours)), weights.colour,
                                 "--colour-weight: no training row has a baseColour"),
                      "gender": (torch.from_numpy(gender_encoding().encode(genders)), weights.gender,
                                 "--gender-weight: no training row has a gender")}
        self.extra = nn.ModuleDict()
        self.codes: dict[str, torch.Tensor] = {}
        self.weights: dict[str, float] = {}
        for name, (codes, weight, missing) in candidates.items():
            if weight <= 0:
                continue
            if not (codes[torch.from_numpy(train_rows)] >= 0).any():
                raise ValueError(missing)
            self.extra[name] = ProxyLoss(kind, int(codes.max()) + 1, dims)
            self.codes[name], self.weights[name] = codes, weight

    @property
    def summary(self) -> dict[str, float]:
        out = {"articleType": 1.0, **self.weights}
        if self.view_weight > 0:
            out["views"] = self.view_weight
        if self.distill_weight > 0:
            out["distill"] = self.distill_weight
        return out

    def param_groups(self, lr: float) -> list[dict]:
        """The proxies: no weight decay (their scale is free: the losses compare cosines)."""
        return [{"params": [m.proxies], "lr": lr, "weight_decay": 0.0}
                for m in (self.type_loss, *self.extra.values())]

    def forward(self, emb: torch.Tensor, rows: torch.Tensor | np.ndarray, labels: torch.Tensor,
                view_emb: torch.Tensor | None = None, view_rows: torch.Tensor | None = None,
                teacher_emb: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted sum for the batch `rows` (table rows) embedded as `emb`.

        `view_emb`: embeddings of the other rendering of the rows where `view_rows` (a boolean mask
        over the batch) is set; each is paired with its product's `emb`. `teacher_emb`: the teacher
        model's embeddings of the same rows (distillation of its neighbourhoods).
        """
        loss = self.type_loss(emb, labels)
        rows = torch.as_tensor(rows)
        for name, extra_loss in self.extra.items():
            codes = self.codes[name][rows]
            own = codes >= 0
            if own.any():
                loss = loss + self.weights[name] * extra_loss(emb[own], codes[own])
        if self.view_weight > 0 and view_emb is not None and view_rows is not None and int(view_rows.sum()) > 1:
            loss = loss + self.view_weight * view_contrastive_loss(emb[view_rows], view_emb)
        if self.distill_weight > 0 and teacher_emb is not None:
            loss = loss + self.distill_weight * similarity_distillation_loss(emb, teacher_emb)
        return loss

    def predict(self, emb: torch.Tensor) -> torch.Tensor:
        return self.type_loss.predict(emb)
