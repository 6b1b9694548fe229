"""`imageretrieval evaluate`: score a model on a protocol; appends to <WORKDIR>/results/results.{csv,md}."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..artifacts import chosen_vote
from ..catalog import SELECTIONS
from ..cli import non_negative_int, positive_int
from ..evaluation.protocols import PROTOCOLS, RELEVANCE_ALIASES, RELEVANCES
from ..evaluation.variants import VARIANTS
from ..rerank import DEFAULT_VOTE_ALPHA, DEFAULT_VOTE_K, RERANKS, reranks_category, reranks_gender

log = logging.getLogger(__name__)

JSON_KEYS = ("mAP", "PrecisionHits", "R@1", "R@10", "queries", "database")


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="retrieval metrics (mAP, P@15, R@k) of a model on a protocol")
    p.add_argument("--model", default=None, help="model name (default: DEFAULT_MODEL)")
    p.add_argument("--protocol", choices=(*PROTOCOLS, "text-to-catalog"), default="catalog",
                   help="text-to-catalog: words against the catalog (names, categories, colours, photo + words)")
    p.add_argument("--features", choices=VARIANTS, default="normalized",
                   help="raw (cosine), normalized (L2-PCAw-L2), aqe, alpha-qe (default: normalized)")
    p.add_argument("--pca", type=non_negative_int, default=None,
                   help="whitening dims for normalized/QE (0 = L2 only); default: the model's tuned value, else 256")
    p.add_argument("--queries", type=positive_int, default=None,
                   help="number of seeded queries (default: 600 for catalog, all for the DeepFashion protocols)")
    p.add_argument("--selection", choices=SELECTIONS, default="seed", help="catalog selection (default: seed)")
    p.add_argument("--database", choices=["test", "all"], default=None,
                   help="the selection's test split or the whole catalog (default: test for catalog, "
                        "all for deepfashion-to-catalog)")
    p.add_argument("--database-sample", type=positive_int, default=None,
                   help="a seeded sample of the database split (slow models; not with --database all "
                        "for catalog)")
    p.add_argument("--relevance", choices=[*RELEVANCES, *RELEVANCE_ALIASES], default="articleType",
                   type=lambda v: RELEVANCE_ALIASES.get(v, v),
                   help="catalog protocol ground truth; type, type+colour, type+colour+gender are short names")
    p.add_argument("--whiten-on", choices=["train", "catalog"], default="train",
                   help="whitening fit set: the selection's train split, or the whole catalog (not for catalog)")
    p.add_argument("--fit-sample", type=int, default=None, help="fit the whitening on a seeded sample of that size")
    p.add_argument("--query-resolution", choices=["catalog", "native"], default=None,
                   help="deepfashion-to-catalog: bring query photos to the catalog's resolution first "
                        "(default: settings QUERY_RESOLUTION)")
    p.add_argument("--query-scale", type=float, default=None, metavar="S",
                   help="catalog protocol: re-render the query products at S x their resolution (0.5 = half, "
                        "4 = upscaled), a query set the catalog never had; they then take the engine's query path")
    p.add_argument("--query-model", default=None,
                   help="deepfashion-to-catalog: encode the photos with this model instead (same embedding "
                        "space, e.g. a bn-adapt model with the photos' batch-norm statistics)")
    p.add_argument("--qe-k", type=positive_int, default=15,
                   help="neighbours for aqe/alpha-qe (the seed's TOP_K_AQE=15)")
    p.add_argument("--qe-alpha", type=float, default=3.0, help="alpha of alpha-qe")
    p.add_argument("--dba", action="store_true", help="also expand database vectors (as the seed's AQE did)")
    p.add_argument("--rerank", choices=RERANKS, default="none",
                   help="category: show the articleType voted by the top --vote-k neighbours first, as the "
                        "engine's rerank=category does; gender: the gender the model's predictor gives the query "
                        "(`finetune-rerank --gender`); category+gender: both (not for inshop)")
    p.add_argument("--vote-k", type=int, default=None,
                   help="neighbours that vote for --rerank category (default: the model's vote saved by "
                        f"`finetune-rerank`, else {DEFAULT_VOTE_K})")
    p.add_argument("--dump-rankings", type=Path, help="write one JSON line per query (top 100 + relevant ranks)")
    p.add_argument("--tsne", action="store_true", help="also draw a t-SNE of the database vectors")
    p.add_argument("--no-plots", action="store_true", help="skip the precision@k and per-class plots")
    p.add_argument("--tag", default="", help="free text appended to UsedFeatures in the results table")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=run)


def used_features_label(variant: str, dims: int | None, qe_k: int, alpha: float, dba: bool, tag: str,
                        rerank: str = "none", vote_k: int = DEFAULT_VOTE_K,
                        vote_alpha: float = DEFAULT_VOTE_ALPHA) -> str:
    pca = "L2 only" if not dims else f"PCAw {dims}"
    label = {"raw": "raw (cosine)", "normalized": f"normalized ({pca})",
             "aqe": f"AQE k={qe_k} ({pca})", "alpha-qe": f"alpha-QE k={qe_k} a={alpha:g} ({pca})"}[variant]
    if dba and variant in ("aqe", "alpha-qe"):
        label += " +DBA"
    if reranks_category(rerank):
        label += f" +category-first (vote k={vote_k}" + (f", alpha {vote_alpha:g})" if vote_alpha != DEFAULT_VOTE_ALPHA
                                                          else ")")
    if reranks_gender(rerank):
        label += " +gender-first"
    return f"{label} {tag}".strip()


def query_resolution_of(settings, model: str, mode: str) -> tuple[int, int] | None:
    """The catalog's effective resolution (from the index manifest, else measured), or None for native."""
    if mode == "native":
        return None
    from ..artifacts import ModelArtifacts, catalog_resolution
    from ..catalog import load_catalog

    manifest = ModelArtifacts.of(settings.workdir, model).read_manifest() or {}
    res = manifest.get("catalog_resolution")
    if res:
        return int(res[0]), int(res[1])
    return catalog_resolution(load_catalog(settings.dataset_root))


def build_task(args, settings, model: str):
    from ..evaluation import protocols

    mode = args.query_resolution or settings.query_resolution
    if args.protocol == "catalog":
        return protocols.catalog_task(
            settings, model, selection=args.selection, split="test",
            database="split" if (args.database or "test") == "test" else "all", relevance=args.relevance,
            n_queries=args.queries or protocols.DEFAULT_CATALOG_QUERIES, fit_on=args.whiten_on,
            fit_sample=args.fit_sample, with_fit=args.features != "raw", database_sample=args.database_sample,
            query_scale=args.query_scale,
            query_resolution=query_resolution_of(settings, model, mode) if args.query_scale else None)
    if args.protocol == "deepfashion-to-catalog":
        return protocols.deepfashion_task(
            settings, model, database=args.database or "all", selection=args.selection, n_queries=args.queries,
            query_resolution=query_resolution_of(settings, model, mode), fit_on=args.whiten_on,
            fit_sample=args.fit_sample, database_sample=args.database_sample, with_fit=args.features != "raw",
            query_model=args.query_model)
    return protocols.inshop_task(settings, model, selection=args.selection, n_queries=args.queries,
                                 fit_on=args.whiten_on, fit_sample=args.fit_sample, with_fit=args.features != "raw")


def run_key(args, info: dict) -> str:
    """Names a run's files; runs with the same key (same protocol, database, variant) are comparable."""
    parts = [args.protocol]
    if args.protocol != "inshop":
        parts.append(f"{args.selection}-{args.database or ('test' if args.protocol == 'catalog' else 'all')}")
    if args.database_sample:
        parts.append(f"db{args.database_sample}")
    if args.relevance != "articleType" and args.protocol == "catalog":
        parts.append(args.relevance.replace("+", "-"))
    if info.get("query_scale") is not None:
        parts.append(f"x{info['query_scale']:g}")
    if "query_resolution" in info:
        parts.append(f"q{info['query_resolution']}")
    if info.get("query_model"):
        parts.append(f"photos-by-{info['query_model']}")
    parts.append(args.features + ("-dba" if args.dba else ""))
    if args.rerank != "none":
        parts.append(args.rerank + (f"{args.vote_k}" if args.vote_k != DEFAULT_VOTE_K else "")
                     + (f"a{args.vote_alpha:g}" if args.vote_alpha != DEFAULT_VOTE_ALPHA else ""))
    return "-".join(parts)


def write_plots(settings, model: str, key: str, result, args) -> list[Path]:
    from ..evaluation import plots, reports
    from ..evaluation.runner import per_class_precision

    out = reports.model_results_dir(settings.workdir, model)
    paths = []
    title = f"{model}, {key}"
    per_class = per_class_precision(result)
    labels = result.task.query_labels[result.evaluated]
    counts = {c: int((labels == c).sum()) for c in per_class}
    if len(per_class) <= 60:
        paths.append(plots.plot_per_class_precision(per_class, out / f"{key}-per-class.png",
                                                    f"precision@15 per class: {title}", counts))
    curves = {m: run["precision_curve"] for m, run in reports.load_runs(settings.workdir, key).items()}
    curve_path = reports.results_dir(settings.workdir) / f"precision-at-k-{key}.png"
    paths.append(plots.plot_precision_curves(curves, curve_path, f"precision@k, {key}"))
    if args.tsne:
        labels_db = result.task.database_labels
        paths.append(plots.plot_tsne(result.database_vectors, labels_db, out / f"{key}-tsne.png",
                                     f"t-SNE of database vectors: {title}", seed=settings.seed))
    return paths


def run(args, settings) -> int:
    from ..artifacts import chosen_pca_components
    from ..cli import CLIError
    from ..evaluation import reports
    from ..evaluation.dump import write_rankings
    from ..evaluation.runner import evaluate_task
    from ..models import get_model_config

    t0 = time.perf_counter()
    model = args.model or settings.default_model
    if args.dump_rankings and args.dump_rankings.is_dir():
        raise CLIError(f"--dump-rankings {args.dump_rankings} is a folder: give a file path")
    if args.protocol == "text-to-catalog":
        return run_text(args, settings, model)
    config = get_model_config(model, settings.workdir)
    served_dims = chosen_pca_components(settings, model, config.dims)  # what the index serves
    if args.pca is not None:
        settings.pca_components = args.pca
    dims = chosen_pca_components(settings, model, config.dims) if args.features != "raw" else None
    if args.protocol == "catalog" and args.whiten_on != "train":
        raise CLIError("catalog protocol: --whiten-on must be train (the whole catalog contains the test queries)")
    if args.database_sample is not None and args.protocol == "inshop":
        raise CLIError("--database-sample does not apply to inshop")
    if args.query_model and args.protocol != "deepfashion-to-catalog":
        raise CLIError("--query-model applies to deepfashion-to-catalog only")
    if args.query_scale is not None and (args.protocol != "catalog" or not 0 < args.query_scale <= 16):
        raise CLIError("--query-scale applies to the catalog protocol and takes a scale in (0, 16], e.g. 0.5 or 4")
    if args.rerank != "none" and args.protocol == "inshop":
        raise CLIError(f"--rerank {args.rerank} needs catalog products in the database: catalog and "
                       "deepfashion-to-catalog only")
    if args.vote_k is not None and args.vote_k < 1:
        raise CLIError("--vote-k must be at least 1")
    tuned_k, args.vote_alpha = chosen_vote(settings.workdir, model)
    if args.vote_k is None:
        args.vote_k = tuned_k
    predictor = None
    if reranks_gender(args.rerank):
        from ..gender import GenderPredictorError, load_gender_predictor

        if args.features != "raw":
            raise CLIError(f"--rerank {args.rerank}: the gender predictor reads the model's raw vectors, as an index "
                           "without whitening serves them: use --features raw")
        try:
            predictor = load_gender_predictor(model, settings.workdir)
        except GenderPredictorError as exc:
            raise CLIError(str(exc)) from exc
        if predictor is None:
            raise CLIError(f"--rerank {args.rerank}: model {model} has no gender predictor; make one with "
                           f"`imageretrieval finetune-rerank --model {model} --gender`")
    try:
        task = build_task(args, settings, model)
        result = evaluate_task(task, args.features, dims, qe_k=args.qe_k, alpha=args.qe_alpha, dba=args.dba,
                               rerank=args.rerank, vote_k=args.vote_k, vote_alpha=args.vote_alpha,
                               gender_predictor=predictor)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    seconds = time.perf_counter() - t0
    metrics = result.metrics
    int8 = settings.precision == "int8"  # the int8 twin's runs sit beside fp32's, never in their place
    used = used_features_label(args.features, dims, args.qe_k, args.qe_alpha, args.dba, args.tag, args.rerank,
                               args.vote_k, args.vote_alpha) + (", int8" if int8 else "")
    info = dict(task.info)
    if args.protocol == "catalog" and args.relevance != "articleType":
        info["relevance"] = args.relevance
    shown = f"{model} (photos: {args.query_model})" if args.query_model else model
    row = reports.results_row(shown, args.protocol, used, result.features_size, seconds, metrics, info)
    reports.append_results(settings.workdir, row)
    key = run_key(args, info) + ("-int8" if int8 else "")
    reports.save_run(settings.workdir, model, key, {
        "model": shown, "protocol": args.protocol, "features": used, "metrics": metrics,
        "info": {k: v for k, v in info.items() if k != "query_table"},
        "precision_curve": result.rankings.precision[result.evaluated].mean(axis=0).tolist(),
        "created": reports.now(),
    })
    # the API shows the summary next to the model: only a run of the canonical protocol (the selection's whole
    # test split, articleType relevance, plain ranking) with the vectors the index serves
    served = (args.features == "normalized" and dims == served_dims) or (args.features == "raw" and not served_dims)
    plain = (args.database_sample is None and args.query_scale is None and args.relevance == "articleType"
             and args.rerank == "none" and (args.database or "test") == "test")
    if args.protocol == "catalog" and plain and served and not int8:
        reports.write_summary(settings.workdir, model, args.protocol, used, metrics)
    if args.dump_rankings:
        n = write_rankings(args.dump_rankings, result)
        log.info("wrote %d rankings to %s", n, args.dump_rankings)
    if not args.no_plots and result.evaluated.any():
        write_plots(settings, model, key, result, args)
    if args.json:
        print(json.dumps({**{k: metrics[k] for k in JSON_KEYS}, "R@20": metrics["R@20"], "mAP@R": metrics["mAP@R"],
                          "mAP_seed": metrics.get("mAP_seed"), "model": shown, "protocol": args.protocol,
                          "features": used, "features_size": result.features_size,
                          "skipped_queries": metrics["skipped_queries"], "database_name": info["database"],
                          "relevance": info["relevance"], "query_resolution": info.get("query_resolution"),
                          "whitening_fit": info.get("whitening_fit"), "seconds": round(seconds, 2),
                          **reports.shopper_metrics(metrics)}))
        return 0
    print(f"{shown} on {args.protocol}: queries from {info['queries_from']}, database = {info['database']} "
          f"({metrics['database']}), relevance = {info['relevance']}"
          + (f", query resolution {info['query_resolution']}" if "query_resolution" in info else ""))
    print(reports.markdown_table([row], reports.DISPLAY_COLUMNS))
    shopper = reports.shopper_metrics(metrics)
    if shopper:
        print("what a shopper sees: " + ", ".join(f"{k} {v:.4f}" for k, v in shopper.items())
              + " (share of the top 15 that agrees with the query; oracle = the best any ranking can reach; "
                "exact_R@1 = the very product first)")
    if metrics["skipped_queries"]:
        print(f"({metrics['skipped_queries']} queries without any relevant database item left out)")
    print("mAP: full-ranking AP, the query excluded (from a dump: mean over queries of mean_j j / relevant_ranks[j]);"
          " PrecisionHits: precision@15; R@k: a relevant item in the top k; mAP_seed: the seed's sklearn AP"
          " with the query included")
    return 0


def run_text(args, settings, model: str) -> int:
    """The text-to-catalog protocol: every mode's figures, saved under <WORKDIR>/results/<model>/."""
    from ..evaluation import reports
    from ..evaluation.text_protocol import evaluate_text

    started = time.perf_counter()
    result = evaluate_text(settings, model)
    result["seconds"] = round(time.perf_counter() - started, 1)
    reports.save_run(settings.workdir, model, "text-to-catalog", {**result, "created": reports.now()})
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{model} on text-to-catalog ({result['split']} names against {result['database']} products):")
    for mode, tasks in result["modes"].items():
        names = tasks["names"]
        print(f"  {mode:<8} names R@1 {names['R@1']:.4f} R@10 {names['R@10']:.4f} MRR {names['MRR']:.4f} | "
              f"articleType P@1 {tasks['articleType']['P@1']:.4f} P@15 {tasks['articleType']['P@15']:.4f} "
              f"(oracle {tasks['articleType']['oracle_P@15']:.4f}, of the attainable "
              f"{tasks['articleType']['attainable_P@15']:.4f}) | subCategory P@1 {tasks['subCategory']['P@1']:.4f} "
              f"P@15 {tasks['subCategory']['P@15']:.4f} (oracle {tasks['subCategory']['oracle_P@15']:.4f}, of the "
              f"attainable {tasks['subCategory']['attainable_P@15']:.4f}) | "
              f"colour P@15 {tasks['colour']['P@15']:.4f}")
    for label in ("photo alone", "photo+words"):
        m = result["photo_words"][label]
        print(f"  {label:<12} colour {m['colour']:.4f} type {m['type']:.4f} colour and type {m['colour_and_type']:.4f}")
    return 0
