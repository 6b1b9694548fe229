"""The `imageretrieval` command line: one entry point, subcommands that call importable functions.

Every subcommand lives in `imageretrieval/commands/<name>.py` with `register(subparsers)`.
Global flags override the environment (DATASET_ROOT, WORKDIR, DEVICE, ...).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .settings import Settings

COMMAND_MODULES = [
    "prepare", "models", "extract", "index", "search", "serve", "evaluate", "finetune_pca", "finetune_rerank", "keys",
    "catalog", "train", "pack", "ensemble", "compose", "fuse", "quantize", "download_catalog", "make_synthetic",
]
# commands that train or tune: their features and tuning files are fp32's
FP32_ONLY = {"train", "finetune-pca", "finetune-rerank", "ensemble", "fuse"}
# (module, exception names) printed as one line instead of a traceback
USER_ERRORS = [("catalog", ["CatalogError"]), ("engine", ["IndexNotBuiltError", "UnknownFilterError",
               "UnknownProductError", "RerankUnavailableError"]), ("gender", ["GenderPredictorError"]),
               ("images", ["ImageDecodeError"]), ("index", ["IndexFactoryError"]),
               ("models", ["ModelNotFoundError", "WeightsUnavailableError"]),
               ("inference", ["RuntimeUnavailableError"]), ("quantize", ["QuantizationError"]),
               ("live.products", ["ProductValidationError"]), ("live.journal", ["JournalCorruptError"]),
               ("live.store", ["DuplicateProductError", "UnknownLiveProductError", "StorageFullError"]),
               ("text.queries", ["QueryTextError"]), ("text.search", ["TextSearchUnavailableError"]),
               ("text.encoders", ["TextEncoderUnavailableError"]),
               ("backends.base", ["BackendUnavailableError", "CollectionNotLoadedError"]),
               ("distributed", ["RayUnavailableError"]), ("keys", ["KeyStoreCorruptError"]),
               ("device", ["DeviceUnavailableError"]), ("io_utils", ["DamagedFileError"])]

log = logging.getLogger("imageretrieval")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2, no traceback."""


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse names the option and exits 2 otherwise)."""
    value = int(text) if text.strip().lstrip("+").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    if not text.strip().lstrip("+").isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    value = int(text) if text.strip().isdigit() else 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port between 1 and 65535, got {text!r}")
    return value


def add_settings_flags(parser: argparse.ArgumentParser, default=None) -> None:
    """Flags that override settings; accepted before and after the subcommand name."""
    flags = [
        (("--dataset-root",), {"help": "Fashion Product folder (styles.csv + images/); env DATASET_ROOT"}),
        (("--deepfashion-root",), {"help": "DeepFashion In-shop folder (img/); env DEEPFASHION_ROOT"}),
        (("--workdir",), {"help": "artifact folder; env WORKDIR (or WORKDIR_ROOT)"}),
        (("--device",), {"choices": ["auto", "cpu", "cuda"], "help": "env DEVICE"}),
        (("--precision",), {"choices": ["auto", "fp32", "bf16", "int8"], "help": "env PRECISION"}),
        (("--batch-size",), {"type": int, "help": "env BATCH_SIZE"}),
        (("--num-workers",), {"type": int, "help": "data loader workers; env NUM_WORKERS"}),
    ]
    taken = set(parser._option_string_actions)
    for names, kw in flags:
        if not taken.intersection(names):
            parser.add_argument(*names, default=default, **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imageretrieval", description=__doc__.splitlines()[0])
    add_settings_flags(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"commands.{name}"):
                continue  # command not shipped in this build
            if not missing_third_party(exc):
                raise
            _register_unavailable(sub, name, exc.name)  # e.g. `train` on a GPU box without faiss
            continue
        module.register(sub)
    for subparser in sub.choices.values():
        add_settings_flags(subparser, default=argparse.SUPPRESS)
    return parser


def missing_third_party(exc: ModuleNotFoundError) -> bool:
    """The import failed on a package outside this one (not installed), not on a module of ours."""
    return bool(exc.name) and exc.name.split(".")[0] != __package__


def _register_unavailable(sub, module_name: str, missing: str) -> None:
    """A command whose dependency is not installed: listed, and running it says what to install."""
    command = module_name.replace("_", "-")
    p = sub.add_parser(command, help=f"(unavailable: needs the Python package {missing!r})")
    p.add_argument("args", nargs=argparse.REMAINDER)

    def unavailable(args, settings) -> int:
        raise CLIError(f"this command needs the Python package {missing!r}, which is not installed: "
                       "run `pip install -r requirements.txt`")

    p.set_defaults(func=unavailable)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types of the modules that import here (a training-only install may lack faiss)."""
    found: list[type[BaseException]] = [CLIError]
    for module_name, names in USER_ERRORS:
        try:
            module = importlib.import_module(f".{module_name}", __package__)
        except ModuleNotFoundError as exc:
            if not missing_third_party(exc):
                raise
            continue
        found += [getattr(module, n) for n in names]
    return tuple(found)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings (environment, then flags); a bad value is a CLIError naming the setting."""
    from pydantic import ValidationError

    overrides = {
        key: getattr(args, key)
        for key in ("dataset_root", "deepfashion_root", "workdir", "device", "precision", "batch_size", "num_workers")
        if getattr(args, key, None) is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise settings_error(exc) from None


def settings_error(exc, flags: bool = True) -> CLIError:
    """A pydantic ValidationError of settings as one line naming each bad setting: its environment variable,
    and with `flags` its command-line flag too."""
    def named(loc: tuple) -> str:
        if not loc:
            return "settings"
        field = str(loc[0]).lower()
        return f"--{field.replace('_', '-')} (or {field.upper()})" if flags else field.upper()

    return CLIError("; ".join(f"{named(e['loc'])}: {e['msg']}" for e in exc.errors()))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        settings = settings_from_args(args)
        if settings.precision == "int8" and args.command in FP32_ONLY:
            raise CLIError(f"PRECISION=int8 is for extraction, indexes, search and evaluation; `{args.command}` "
                           "trains or tunes on fp32 features: run it with PRECISION=auto or fp32")
        return int(args.func(args, settings) or 0)
    except user_errors() as exc:
        print(f"imageretrieval {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the output went to a pipe that closed (`... | head`): not an error of ours
        sys.stderr.close()  # nor a message about the pipe at exit
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed pipe until exit
        except OSError:
            pass
        return 141
    except OSError as exc:  # a path that is missing, a file where a folder should be, no permission, a full disk
        log.debug("%s failed", args.command, exc_info=True)  # -v shows where
        print(f"imageretrieval {args.command}: error: {exc} (check the path and its permissions; -v shows where "
              "it happened)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"imageretrieval {args.command}: interrupted (finished work is kept; rerun to resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # `python -m imageretrieval.cli`: the package's own module, so its error classes
    from imageretrieval.cli import main as package_main

    sys.exit(package_main())
