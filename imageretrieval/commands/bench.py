"""`imageretrieval bench encoder|pipeline|serve`: measured speed figures, appended to docs/benchmarks.md."""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)


def register(sub) -> None:
    from ..cli import missing_third_party

    p = sub.add_parser("bench", help="benchmarks (results go to docs/benchmarks.md)")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name in ("encoder", "pipeline", "serve"):
        try:
            module = importlib.import_module(f"..benchmarks.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"benchmarks.{name}"):
                continue
            if missing_third_party(exc):
                log.debug("bench %s unavailable: needs %s", name, exc.name)  # e.g. a training-only install
                continue
            raise
        module.register(bsub)
