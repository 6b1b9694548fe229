"""Paired comparison of query resolution (catalog vs native) on the same DeepFashion queries and database.

Reads cached features only. Prints mean per-query differences (catalog - native) with 95% bootstrap CIs.
"""
import json
import sys

import numpy as np

from imageretrieval.commands.evaluate import query_resolution_of
from imageretrieval.evaluation.protocols import deepfashion_task
from imageretrieval.evaluation.runner import evaluate_task
from imageretrieval.settings import Settings

model, variant, n_q, db_sample = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fit_sample = int(sys.argv[5]) if len(sys.argv) > 5 else None
pca = int(sys.argv[6]) if len(sys.argv) > 6 else None
s = Settings()
res = query_resolution_of(s, model, "catalog")
kw = dict(database="test", n_queries=n_q, database_sample=db_sample, fit_sample=fit_sample, with_fit=variant != "raw")
tn = deepfashion_task(s, model, query_resolution=None, **kw)
tc = deepfashion_task(s, model, query_resolution=res, **kw)
assert list(tn.query_ids) == list(tc.query_ids)
rn, rc = evaluate_task(tn, variant, pca), evaluate_task(tc, variant, pca)
ok = rn.evaluated & rc.evaluated
rng = np.random.default_rng(0)
out = {"model": model, "variant": variant, "pca": pca, "queries": int(ok.sum()), "database": len(tn.database),
       "catalog_resolution": list(res)}
for name, a, b in [("P@15", rn.rankings.precision_at(15), rc.rankings.precision_at(15)),
                   ("AP", rn.rankings.ap, rc.rankings.ap), ("R@1", rn.rankings.recall[1], rc.rankings.recall[1])]:
    d = (b - a)[ok]
    boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(5000)]
    out[name] = {"native": float(a[ok].mean()), "catalog": float(b[ok].mean()), "diff": float(d.mean()),
                 "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}
print(json.dumps(out))
