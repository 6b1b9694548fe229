"""`imageretrieval finetune-pca`: choose the PCA-whitening dimension on the validation split.

The choice is saved to <WORKDIR>/tuning/<model>/pca.json, which `index` (and so `search` and the
API) uses unless PCA_COMPONENTS is set; run `imageretrieval index --model M` afterwards.
"""

from __future__ import annotations

import json
import logging

from ..catalog import SELECTIONS
from ..cli import positive_int
from ..evaluation.pca_finetune import METRICS

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("finetune-pca", help="coarse-to-fine search of the PCA-whitening dims on the val split")
    p.add_argument("--model", default=None, help="model name (default: DEFAULT_MODEL)")
    p.add_argument("--metric", choices=list(METRICS), default="p@15",
                   help="what to maximize (default: p@15, what a shopper sees in the top results)")
    p.add_argument("--selection", choices=SELECTIONS, default="seed")
    p.add_argument("--queries", type=positive_int, default=600, help="seeded validation queries (default 600)")
    p.add_argument("--fit-sample", type=int, default=None,
                   help="fit the whitening on a seeded sample of the train split (slow models)")
    p.add_argument("--val-sample", type=int, default=None,
                   help="use a seeded sample of the val split as the database (slow models)")
    p.add_argument("--min-step", type=positive_int, default=1, help="finest step of the search (default 1)")
    p.add_argument("--no-save", action="store_true", help="report only; do not change the model's artifacts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from ..artifacts import tuned_pca_path
    from ..evaluation import plots, reports
    from ..evaluation.pca_finetune import finetune_pca
    from ..evaluation.protocols import catalog_task
    from ..io_utils import save_json

    model = args.model or settings.default_model
    from ..cli import CLIError

    try:
        task = catalog_task(settings, model, selection=args.selection, split="val", database="split",
                            n_queries=args.queries, fit_sample=args.fit_sample, database_sample=args.val_sample)
        search = finetune_pca(task, args.metric, min_step=args.min_step)
    except ValueError as exc:  # e.g. an empty val split: the protocol names it
        raise CLIError(str(exc)) from exc
    if not search.scores or all(s != s for s in search.scores.values()):  # NaN: no val query has a relevant product
        raise CLIError(f"{model}: no {args.selection} val query has a relevant product in the val database, so no "
                       f"dimension can be chosen (nothing saved): use another --selection or a larger catalog")
    result = {
        "n_components": search.n_components, "metric": args.metric, "score": search.score, "split": "val",
        "model": model, "selection": args.selection, "queries": len(task.queries), "database": len(task.database),
        "whitening_fit": task.info["whitening_fit"],
        "scores": {str(n): s for n, s in sorted(search.scores.items())}, "created": reports.now(),
    }
    out = reports.model_results_dir(settings.workdir, model)
    plots.plot_explained_variance(search.eigvals, out / "pca-explained-variance.png", search.n_components,
                                  f"PCA explained variance, {model} ({task.info['whitening_fit']})")
    plots.plot_pca_search(search.scores, out / f"pca-search-{args.metric.replace('@', '')}.png",
                          METRICS[args.metric], search.n_components, f"{model}: PCA dims on the val split")
    save_json(out / f"pca-search-{args.metric.replace('@', '')}.json", result)
    if not args.no_save:
        save_json(tuned_pca_path(settings.workdir, model), result)
        log.info("saved n_components=%d to %s", search.n_components, tuned_pca_path(settings.workdir, model))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{model}: best n_components = {search.n_components} ({METRICS[args.metric]} {search.score:.4f} on "
          f"{len(task.queries)} val queries vs {len(task.database)} val products; {len(search.scores)} dims tried)")
    for n, s in sorted(search.scores.items()):
        print(f"  {n:>5}  {s:.4f}{'  <- chosen' if n == search.n_components else ''}")
    if not args.no_save:
        print(f"saved to {tuned_pca_path(settings.workdir, model)}; run `imageretrieval index --model {model}` "
              "to rebuild the index with it")
    return 0
