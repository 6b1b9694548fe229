"""`imageretrieval finetune-rerank`: choose the category-first re-ranking's vote on the validation split.

The choice is saved to <WORKDIR>/tuning/<model>/rerank.json, which `search`, the API (rerank=category,
the app's "Same type first") and `evaluate --rerank category` use from then on. With `--gender`, it
trains the model's gender predictor instead (rerank=gender and category+gender; evaluation/gender_tuning.py),
saved to <WORKDIR>/models/<model>/gender_predictor.npz.
"""

from __future__ import annotations

import json
import logging

from ..catalog import SELECTIONS
from ..cli import positive_int

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("finetune-rerank", help="choose the category-first re-ranking's vote on the val split",
                       description="Score every (vote k, alpha) of the category-first re-ranking on the catalog "
                                   "protocol's val split, save the best (P@15, then mAP) for the model, and score "
                                   "it once on the test split beside no re-ranking.")
    p.add_argument("--model", default=None, help="model name (default: DEFAULT_MODEL)")
    p.add_argument("--selection", choices=SELECTIONS, default="seed")
    p.add_argument("--queries", type=positive_int, default=600,
                   help="seeded validation (and test) queries (default 600)")
    p.add_argument("--confusions", type=int, default=10, help="list the test's N most frequent wrong votes")
    p.add_argument("--gender", action="store_true",
                   help="train the gender predictor of rerank=gender instead (photo weight, threshold and neighbour "
                        "weight chosen on val; DEEPFASHION_ROOT's photos train it too)")
    p.add_argument("--tolerance", type=float, default=0.005,
                   help="--gender: the P@15 a gender predictor may cost category-first on val (default 0.005)")
    p.add_argument("--no-save", action="store_true", help="report only; do not change the model's vote")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from ..artifacts import tuned_rerank_path
    from ..evaluation import reports
    from ..evaluation.protocols import catalog_task
    from ..evaluation.rerank_tuning import tune_vote, vote_confusions, vote_scores
    from ..io_utils import save_json

    model = args.model or settings.default_model
    from ..cli import CLIError

    if args.gender:
        return run_gender(args, settings, model)
    try:
        val, test = (catalog_task(settings, model, selection=args.selection, split=split, database="split",
                                  n_queries=args.queries, with_fit=False) for split in ("val", "test"))
        search = tune_vote(val)
    except ValueError as exc:  # e.g. an empty val split: the protocol names it
        raise CLIError(str(exc)) from exc
    chosen = (search.vote_k, search.vote_alpha)
    test_scores = {"none": vote_scores(test, "none"), "chosen": vote_scores(test, "category", *chosen)}
    wrong = vote_confusions(test, *chosen)
    result = {"vote_k": search.vote_k, "vote_alpha": search.vote_alpha, "model": model, "split": "val",
              "selection": args.selection, "queries": len(val.queries), "val_plain": search.plain,
              "val": {f"k={k} alpha={a:g}": s for (k, a), s in search.scores.items()}, "test": test_scores,
              "test_wrong_votes": sum(wrong.values()), "created": reports.now()}
    if not args.no_save:
        save_json(tuned_rerank_path(settings.workdir, model), result)
        log.info("saved vote k=%d alpha=%g to %s", *chosen, tuned_rerank_path(settings.workdir, model))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{model}: vote k={search.vote_k} alpha={search.vote_alpha:g} chosen on {len(val.queries)} val queries "
          f"(no re-ranking: {search.plain})")
    for (k, a), s in search.scores.items():
        print(f"  k={k:<3} alpha={a:<4g} {s}{'  <- chosen' if (k, a) == chosen else ''}")
    print(f"test, no re-ranking: {test_scores['none']}")
    print(f"test, chosen vote:   {test_scores['chosen']}")
    print(f"test queries whose type the vote gets wrong: {sum(wrong.values())} of {len(test.queries)}")
    for (truth, voted), n in wrong.most_common(args.confusions):
        print(f"  {truth} -> {voted}: {n}")
    if not args.no_save:
        print(f"saved to {tuned_rerank_path(settings.workdir, model)}; search, the API and evaluate --rerank "
              "category use it")
    return 0


def run_gender(args, settings, model: str) -> int:
    from ..artifacts import ModelArtifacts, chosen_vote
    from ..cli import CLIError
    from ..evaluation import reports
    from ..evaluation.gender_tuning import choose_gender_predictor, test_figures
    from ..gender import FILE
    from .evaluate import query_resolution_of

    vote = chosen_vote(settings.workdir, model)
    resolution = query_resolution_of(settings, model, settings.query_resolution)
    try:
        choice = choose_gender_predictor(settings, model, resolution, vote, args.selection, args.queries,
                                         tolerance=args.tolerance)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if choice is None:
        raise CLIError(f"{model}: every gender predictor tried cost more than {args.tolerance:g} of P@15 on val; "
                       "none saved (a larger --tolerance accepts more)")
    predictor = choice.predictor
    test = test_figures(settings, model, predictor, resolution, vote, args.selection, args.queries)
    predictor.meta.update(test=test, created=reports.now())
    path = settings.workdir / "models" / model / FILE
    if not args.no_save:
        path.parent.mkdir(parents=True, exist_ok=True)
        predictor.save(path)
    if args.json:
        print(json.dumps(predictor.meta | {"threshold": predictor.threshold, "classes": list(predictor.classes),
                                           "neighbour_weight": predictor.neighbour_weight}))
        return 0
    kind = f"{predictor.hidden} hidden units" if predictor.hidden else "linear"
    print(f"{model}: gender predictor ({', '.join(predictor.classes)}, {kind}) trained on {choice.trained_on}; "
          f"photo weight {choice.photo_weight:g}, threshold {predictor.threshold:g}, neighbour weight "
          f"{predictor.neighbour_weight:g} chosen on val")
    for name, figures in choice.val.items():
        print(f"  val {name:<48} {figures}")
    for name, figures in test.items():
        print(f"  test {name:<47} {figures}")
    if not args.no_save:
        print(f"saved to {path}; search, the API (rerank=gender, category+gender) and evaluate --rerank use it")
    art = ModelArtifacts.of(settings.workdir, model)
    if art.exists() and (art.read_manifest() or {}).get("pca_components"):
        print(f"note: the {model} index whitens its vectors (PCA): searches re-rank by gender once it is rebuilt "
              f"without (imageretrieval index --model {model} --pca 0 --force)")
    return 0
