"""`imageretrieval index`: extract + fit PCA-whitening + build the FAISS index, a no-op when current."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..artifacts import ModelArtifacts, build_model_index
from ..cli import non_negative_int
from ..quantize import DEFAULT_TOLERANCE

if TYPE_CHECKING:
    from ..settings import Settings


def register(sub) -> None:
    p = sub.add_parser("index", help="build (or verify) a model's catalog index")
    p.add_argument("--model", action="append", help="model name; repeat for several (default: DEFAULT_MODEL)")
    p.add_argument("--index-factory", help='FAISS factory string, e.g. "Flat", "HNSW32", "IVF256,PQ32"')
    p.add_argument("--pca", type=non_negative_int,
                   help="PCA-whitening dims (0 = L2 only); default: the value `finetune-pca` chose, else L2 only")
    p.add_argument("--force", action="store_true", help="rebuild even when artifacts are current")
    p.add_argument("--backend", choices=["faiss", "milvus"], default=None,
                   help="milvus: also load the built index's vectors into its Milvus collection (MILVUS_URI), no "
                        "re-encoding (default: INDEX_BACKEND)")
    p.add_argument("--compact", action="store_true",
                   help="fold the live catalog's changes (catalog add/update/delete, the API's writes) into the "
                        "saved index, so a service starts without applying them; PCA stays as fitted")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="extract the catalog's features on Ray Data (see `extract --ray`)")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    if args.index_factory:
        settings.index_factory = args.index_factory
    if args.pca is not None:
        settings.pca_components = args.pca
    if args.ray:
        settings.ray_address = args.ray
    if args.compact and (args.force or args.pca is not None or args.index_factory):
        from ..cli import CLIError

        raise CLIError("--compact folds the live catalog's changes into the index as it was built: --force, --pca "
                       "and --index-factory are for a build (run it without --compact)")
    for name in args.model or [settings.default_model]:
        if args.compact:
            from ..live.compaction import compact_index
            from ..live.store import storage_error

            try:
                manifest = compact_index(settings, name)
            except OSError as exc:  # the serving index stays as it was
                raise storage_error(exc) from exc
            print(f"{name}: compacted at catalog seq {manifest['catalog_seq']}: {manifest['size']} products, "
                  f"{manifest['index_factory']} index in {ModelArtifacts.of(settings.workdir, name).root}")
            continue
        if settings.precision == "int8":
            ensure_int8_twin(settings, name)
        manifest = build_model_index(settings, name, force=args.force)
        print(f"{name}: {manifest['size']} products, {manifest['dims']} dims, "
              f"{manifest['index_factory']} index in {ModelArtifacts.of(settings.workdir, name).root}")
        if (args.backend or settings.index_backend) == "milvus":
            load_milvus(settings, name, force=args.force)
    return 0


def ensure_int8_twin(settings: Settings, name: str, tolerance: float = DEFAULT_TOLERANCE) -> None:
    """PRECISION=int8 on a model without a twin: make one with `quantize`'s defaults (accepted or refused)."""
    from ..catalog import load_catalog, select
    from ..cli import CLIError
    from ..inference import export_dir, export_onnx
    from ..models import create_model
    from ..preprocess import preprocess_for
    from ..quantize import load_record, rejected_path
    from .quantize import quantize_model

    model = create_model(name, workdir=settings.workdir)
    fp32_path = export_onnx(model, preprocess_for(model.config).shape, export_dir(settings.workdir, name))
    if load_record(fp32_path) is not None or rejected_path(fp32_path).is_file():
        return  # made before, accepted or not: building the index says which
    print(f"{name}: PRECISION=int8 and no int8 twin yet: making one (imageretrieval quantize --model {name})")
    seed_types = not select(load_catalog(settings.dataset_root).df, "seed").empty  # a shop's own catalog: none
    try:
        record, _ = quantize_model(settings, name, selection="seed" if seed_types else "all", tolerance=tolerance,
                                   model=model)
    except ValueError as exc:  # an empty val split: named by the protocols
        raise CLIError(f"{name}: no int8 twin could be made: {exc}") from exc
    if not record["accepted"]:
        raise CLIError(f"{name}: int8 not accepted ({record['reason']}): use PRECISION=fp32")
    print(f"{name}: int8 twin accepted ({record['reason']})")


def load_milvus(settings, name: str, force: bool = False) -> None:
    """Load the built index into Milvus, then bring the collection up to the live catalog."""
    from ..backends.loading import load_into_milvus
    from ..engine import RetrievalEngine
    from ..live.store import LiveCatalog

    catalog = LiveCatalog(settings.dataset_root, settings.workdir)  # styles.csv read once for both steps
    loaded = load_into_milvus(settings, name, force=force, catalog=catalog)
    engine = RetrievalEngine(settings.model_copy(update={"index_backend": "milvus"}), name, catalog)
    state = f"{loaded['loaded']} rows loaded" if loaded["loaded"] else "already loaded from this build"
    print(f"{name}: Milvus collection {loaded['collection']} at {settings.milvus_location} ({loaded['index']}, "
          f"{state}); {engine.size} products after the live catalog's changes")
    engine.backend.close()
