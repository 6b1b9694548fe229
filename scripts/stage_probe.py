"""Do the earlier stages of a frozen efficientnet_lite trunk hold articleType information its final
pooled features lose? A linear probe per stage (and per combination of stages) says.

Runs the pretrained trunk once over the seed selection's train and test splits and keeps the
average-pooled output of blocks 2-6 (`b2`..`b6`) and of the final 1280-channel map (`avg`, what the
feature store caches; also `gem` and `max` pooling of it). Then, for each combination named on the
command line (stage keys joined by `+`), it L2-normalizes each part, concatenates, standardizes and
fits a multinomial logistic regression (C = 0.05) on train, reporting test accuracy. The pooled
stages are cached in <WORKDIR>/stage-probe/ (one extraction: ~13 min for lite0 on 2 cores).

    python scripts/stage_probe.py MODEL COMBINATION...      e.g. efficientnet_lite0 avg b4+b5+b6
"""

import logging
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from imageretrieval.extract import image_batches
from imageretrieval.featurestore import concat_normalized, fashion_table
from imageretrieval.io_utils import atomic_write
from imageretrieval.models import create_model
from imageretrieval.models.pooling import gem, global_avg, global_max
from imageretrieval.preprocess import preprocess_for
from imageretrieval.settings import Settings

logging.basicConfig(level=logging.INFO, format="%(message)s")
log = logging.getLogger("stage_probe")
if len(sys.argv) < 2:
    sys.exit(__doc__)
name, combinations = sys.argv[1], sys.argv[2:] or ["avg", "b4+b5+b6"]
settings = Settings()


@torch.inference_mode()
def pooled_stages(split: str) -> dict[str, np.ndarray]:
    path = settings.workdir / "stage-probe" / f"{name}-seed-{split}.npz"
    if path.is_file():
        return dict(np.load(path))
    model = create_model(name, workdir=settings.workdir).eval()
    trunk = model.trunk
    taps: dict[str, torch.Tensor] = {}
    for i in range(2, len(trunk.blocks)):
        trunk.blocks[i].register_forward_hook(lambda _m, _i, out, key=f"b{i}": taps.__setitem__(key, out))
    table = fashion_table(settings, "seed", split)
    loader = ((torch.from_numpy(x), ok) for x, ok in image_batches(list(table["path"]), preprocess_for(model.config)))
    parts: dict[str, list[np.ndarray]] = {}
    for images, _ in tqdm(loader, desc=f"{name} {split}", unit="batch"):
        fmap = model.forward_trunk(images.float() / 255)
        pooled = {k: global_avg(v) for k, v in taps.items()}
        pooled.update(avg=global_avg(fmap), max=global_max(fmap), gem=gem(fmap, 3.0))
        for k, v in pooled.items():
            parts.setdefault(k, []).append(v.numpy())
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["label"] = table["articleType"].astype(str).to_numpy()
    atomic_write(path, lambda tmp: _savez(tmp, out))
    return out


def _savez(path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a path
        np.savez(f, **arrays)


def features(stages: dict[str, np.ndarray], keys: list[str]) -> np.ndarray:
    return concat_normalized([stages[k] for k in keys])


train, test = pooled_stages("train"), pooled_stages("test")
for combination in combinations:
    keys = combination.split("+")
    t0 = time.perf_counter()
    x_train, x_test = features(train, keys), features(test, keys)
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(C=0.05, max_iter=500).fit(scaler.transform(x_train), train["label"])
    accuracy = float((probe.predict(scaler.transform(x_test)) == test["label"]).mean())
    log.info("%s %s: %d dims, test accuracy %.4f (%d train / %d test products, %.0f s)", name, combination,
             x_train.shape[1], accuracy, len(x_train), len(x_test), time.perf_counter() - t0)
