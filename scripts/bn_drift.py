"""Does re-estimating batch-norm statistics on training batches alone break a trained head?

Takes a trained model (trunk + head), measures its validation scores, then lets every batch-norm
layer re-estimate its running statistics (train mode, no gradient step, no weight change) on
class-balanced training batches, with and without the training augmentation, and measures again.
This isolates what the first epoch of end-to-end fine-tuning does to the statistics from what the
gradient steps do. Runs on CPU in minutes.

    python scripts/bn_drift.py PACK_DIR MODEL [N_BATCHES] [BATCH] [VAL_PER_DOMAIN]
"""

import copy
import json
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader

from imageretrieval.device import to_batch
from imageretrieval.models import create_model
from imageretrieval.settings import Settings
from imageretrieval.training.data import ClassBalancedSampler, image_table_dataset, sample_table
from imageretrieval.training.pack import load_pack
from imageretrieval.training.validation import val_scores

pack, name = sys.argv[1], sys.argv[2]
n_batches = int(sys.argv[3]) if len(sys.argv) > 3 else 40
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 32
per_domain = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
settings = Settings()
torch.manual_seed(0)
_, table, _ = load_pack(pack)
val = sample_table(table[table["split"] == "val"], {"fashion:val": per_domain, "deepfashion:val": per_domain}, 0)
train = table[table["split"] == "train"].reset_index(drop=True)
model = create_model(name, workdir=settings.workdir).eval()
size = model.config.input_size


@torch.no_grad()
def embed(m) -> np.ndarray:
    m.eval()
    loader = DataLoader(image_table_dataset(val, size, augment=False), batch_size=64, num_workers=1)
    return np.concatenate([m(to_batch(x, torch.device("cpu"))).numpy() for x, _ in loader])


@torch.no_grad()
def reestimate(m, augment: bool):
    m = copy.deepcopy(m).train()
    sampler = ClassBalancedSampler(train["label"], 4, batch, seed=0, n_batches=n_batches,
                                   domains=train["domain"].factorize()[0])
    loader = DataLoader(image_table_dataset(train, size, augment=augment), batch_sampler=sampler, num_workers=1)
    for x, _ in loader:
        m(to_batch(x, torch.device("cpu")))
    return m


def scores(m) -> dict:
    out = val_scores(embed(m), val["label"].to_numpy(), val["domain"].to_numpy())
    return {k: round(v, 4) for k, v in out.items()}


result = {"model": name, "n_batches": n_batches, "batch": batch, "val": len(val), "trained": scores(model)}
result["bn re-estimated, augmented batches"] = scores(reestimate(model, True))
result["bn re-estimated, plain batches"] = scores(reestimate(model, False))
print(json.dumps(result))
