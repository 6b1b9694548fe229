"""How much articleType information do a model's frozen features hold? A linear probe says.

Fits a multinomial logistic regression on the seed selection's train split (pooled features from the
feature store, extracted once) and reports its test-split accuracy and the P@15 of ranking the test
products by their predicted class probabilities (all test products as queries, each excluded from its
own ranking). A probe is cheap (seconds to a minute) and ranks backbones before any head is trained:
on this catalog P@15 follows the probe's accuracy closely, so a backbone whose probe is at 0.83
cannot give a 0.90 P@15 head.

    python scripts/linear_probe.py MODEL [C]
"""

import logging
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression

from imageretrieval.featurestore import get_features
from imageretrieval.settings import Settings
from imageretrieval.training.metrics import retrieval_scores

logging.basicConfig(level=logging.WARNING)
name = sys.argv[1]
strength = float(sys.argv[2]) if len(sys.argv) > 2 else 8.0
settings = Settings()


def split(part: str) -> tuple[np.ndarray, np.ndarray]:
    fs, table = get_features(settings, name, "fashion", part, "seed")
    x = fs.features / np.linalg.norm(fs.features, axis=1, keepdims=True)
    return x, table["articleType"].astype(str).to_numpy()


x_train, y_train = split("train")
x_test, y_test = split("test")
scale = np.sqrt(x_train.shape[1] / 1280)  # composites: keep each member block at unit norm
probe = LogisticRegression(C=strength, max_iter=300).fit(x_train * scale, y_train)
proba = probe.predict_proba(x_test * scale)
accuracy = float((probe.classes_[proba.argmax(1)] == y_test).mean())
emb = proba / np.linalg.norm(proba, axis=1, keepdims=True)
rows = np.arange(len(y_test))
p15 = retrieval_scores(emb, y_test, emb, y_test, exclude_rows=rows)["p@15"]
print(f"{name}: linear probe (C={strength:g}) on {len(y_train)} train products, {x_train.shape[1]} dims: "
      f"test accuracy {accuracy:.4f}, class-probability ranking P@15 {p15:.4f} ({len(y_test)} queries)")
predicted = probe.classes_[proba.argmax(1)]
pairs: dict[tuple[str, str], int] = {}
for truth, guess in zip(y_test, predicted, strict=True):
    if truth != guess:
        pairs[(truth, guess)] = pairs.get((truth, guess), 0) + 1
top = sorted(pairs.items(), key=lambda kv: -kv[1])[:6]
print(f"{len(y_test) - int((predicted == y_test).sum())} errors; most frequent (true -> predicted): "
      + ", ".join(f"{t} -> {g} {n}" for (t, g), n in top))
