"""`python -m benchmarks encoder|pipeline|serve|live|text|scaling`: measured figures, written into docs/."""

from __future__ import annotations

import argparse
import logging
import sys

from imageretrieval.cli import add_settings_flags, settings_from_args, user_errors

from . import encoder, live, pipeline, scaling, serve, text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    add_settings_flags(parser)
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for module in (encoder, pipeline, serve, live, text, scaling):
        module.register(sub)
    for subparser in sub.choices.values():
        add_settings_flags(subparser, default=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args, settings_from_args(args)) or 0)
    except user_errors() as exc:
        print(f"python -m benchmarks {args.bench}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
