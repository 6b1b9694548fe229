"""`--dump-rankings`: one JSON line per evaluated query, enough to recompute every printed metric.

Line: {"query_id", "label", "n_relevant", "relevant_ranks", "ranking": [{"id", "score", "label"}, ...]}
* ranking: the top 100 database items (query itself excluded), best first; ties by database row.
* n_relevant: relevant database items for this query (label equal to the query's, query excluded).
* relevant_ranks: the 1-based ranks of ALL of them in the full ranking. The printed mAP is the
  full-ranking AP, which the top 100 alone cannot give (relevant items beyond rank 100 still
  count); with the ranks it is exact: AP = mean_j (j / relevant_ranks[j]). The first ranks must
  agree with the labels of `ranking`, which anyone can check.
Queries without a relevant item are not evaluated and not dumped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io_utils import atomic_write
from .runner import EvalResult


def _jsonable(v):
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v if isinstance(v, (int, float)) else str(v)


def write_rankings(path: Path, result: EvalResult) -> int:
    """Write the dump atomically; returns the number of lines."""
    task, r = result.task, result.rankings
    db_ids, db_labels = task.database_ids, task.database_labels

    def _write(p: Path) -> None:
        with open(p, "w") as fh:
            for qi in np.flatnonzero(result.evaluated):
                rows = r.top_rows[qi]
                line = {
                    "query_id": _jsonable(task.query_ids[qi]),
                    "label": _jsonable(task.query_labels[qi]),
                    "n_relevant": int(r.n_relevant[qi]),
                    "relevant_ranks": r.relevant_ranks[qi].tolist(),
                    "ranking": [{"id": _jsonable(db_ids[row]), "score": round(float(s), 6),
                                 "label": _jsonable(db_labels[row])}
                                for row, s in zip(rows, r.top_scores[qi], strict=True)],
                }
                fh.write(json.dumps(line) + "\n")

    atomic_write(Path(path), _write)
    return int(result.evaluated.sum())


def recompute_from_dump(path: Path, k: int = 15) -> dict:
    """mAP and P@k from a dump file alone (the reference recomputation, used by the tests).

    P@k counts ranking labels equal to the query label in the first k; mAP is the full-ranking AP
    from `relevant_ranks`; `consistent` checks those ranks against the top-100 labels.
    """
    aps, precs, consistent = [], [], True
    with open(path) as fh:
        for raw in fh:
            q = json.loads(raw)
            rel = [item["label"] == q["label"] for item in q["ranking"]]
            precs.append(sum(rel[:k]) / k)
            ranks = q["relevant_ranks"]
            aps.append(sum((j + 1) / rank for j, rank in enumerate(sorted(ranks))) / q["n_relevant"])
            shown = [i + 1 for i, hit in enumerate(rel) if hit]
            consistent &= shown == [x for x in ranks if x <= len(rel)] and len(ranks) == q["n_relevant"]
    return {"mAP": float(np.mean(aps)), "PrecisionHits": float(np.mean(precs)), "queries": len(aps),
            "consistent": bool(consistent)}
