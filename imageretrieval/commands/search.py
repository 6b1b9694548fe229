"""`imageretrieval search`: query images and/or words against a model's index, one JSON line per query."""

from __future__ import annotations

import json

from ..engine import FILTER_FIELDS, RetrievalEngine, url_version
from ..images import ImageDecodeError, open_image
from ..rerank import RERANKS


def register(sub) -> None:
    p = sub.add_parser("search", help="search the catalog with images, words, or both")
    p.add_argument("--model", default=None, help="model name (default: DEFAULT_MODEL)")
    p.add_argument("--image", action="append", default=[], help="query image path; repeat for several")
    p.add_argument("--text", help="words, e.g. 'navy striped polo for men'; with --image, they refine each image")
    p.add_argument("--text-mode", choices=("hybrid", "semantic", "lexical"), default="hybrid",
                   help="words alone: by meaning and by letter fused (hybrid), or one of them")
    p.add_argument("--top-k", type=int, default=15)
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"restrict results, e.g. gender=Men (fields: {', '.join(FILTER_FIELDS)})")
    p.add_argument("--query-resolution", choices=["catalog", "native"], help="see QUERY_RESOLUTION")
    p.add_argument("--rerank", choices=RERANKS, default="none",
                   help="category: the articleType voted by the nearest products first; gender: the gender the "
                        "model's predictor gives the photo first; category+gender: both (docs/results.md)")
    p.add_argument("--json", action="store_true", help="JSON lines output")
    p.set_defaults(func=run)


def parse_filters(items: list[str]) -> dict[str, list[str]]:
    from ..cli import CLIError

    filters: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise CLIError(f"--filter {item!r}: expected FIELD=VALUE, e.g. gender=Men")
        field, value = item.split("=", 1)
        filters.setdefault(field.strip(), []).append(value.strip())
    return filters


def run(args, settings) -> int:
    from ..cli import CLIError

    if not 1 <= args.top_k <= 1000:
        raise CLIError(f"--top-k must be between 1 and 1000, got {args.top_k}")
    if not args.image and args.text is None:
        raise CLIError("give --image (repeatable), --text, or both")
    if args.query_resolution:
        settings.query_resolution = args.query_resolution
    name = args.model or settings.default_model
    engine = RetrievalEngine(settings, name)
    filters = parse_filters(args.filter)
    images, paths, status = [], [], 0
    for path in args.image:
        try:
            images.append(open_image(path, min_size=engine.decode_size))  # as the API decodes an upload
            paths.append(path)
        except ImageDecodeError as exc:
            print(json.dumps({"query": path, "model": name, "error": str(exc)}) if args.json
                  else f"{path}: error: {exc}")
            status = 2
    if args.text is not None:
        from ..text.queries import check_query

        words = check_query(args.text)
        if images:  # each photo refined by the words
            vectors = engine.encode(images)
            results = engine.text.search([words] * len(images), args.top_k, filters, image_vectors=vectors)
            paths = [f"{path} + {words!r}" for path in paths]
        elif status == 0:
            results, paths = engine.text.search([words], args.top_k, filters, mode=args.text_mode), [repr(words)]
        else:
            results = []
    else:
        results = engine.search(images, args.top_k, filters, rerank=args.rerank) if images else []
    for path, hits in zip(paths, results, strict=True):
        first = {"type_first": getattr(hits, "type_first", None), "gender_first": getattr(hits, "gender_first", None)}
        if args.json:  # the API's names: what the re-ranking put first (None: nothing)
            print(json.dumps({"query": path, "model": name, "rerank": "none" if args.text is not None else args.rerank,
                              **first,
                              "results": [_with_path(engine, h) for h in hits]}))
        else:
            shown = " · ".join(f"{v} first" for v in first.values() if v)
            print(f"{path}  ({name}{'; ' + shown if shown else ''})")
            for h in hits:
                p = h.product
                print(f"  {h.rank:>3}. {h.id:>6}  {h.score:.4f}  {p['articleType']:<14} "
                      f"{p['baseColour'] or '':<10} {p['productDisplayName']}")
    return status


def _with_path(engine: RetrievalEngine, hit) -> dict:
    """A hit as JSON, its image named by the file that holds it (the API's image URL means nothing here)."""
    out = hit.to_dict()
    version = url_version(out.pop("image_url", "") or "")
    path = (engine.catalog.image_version_path(hit.id, version) if version  # the image of the row's state
            else engine.catalog.image_path(hit.id))  # rows that name none (an older Milvus collection)
    out["image_path"] = str(path) if path is not None else None
    return out
