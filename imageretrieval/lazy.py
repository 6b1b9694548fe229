"""Package attributes that import their module on first use: a package lists names without paying for the
imports behind them (PyTorch, for one) until a caller asks for one."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], object]:
    """A module-level `__getattr__` (PEP 562) for `package`: `where[name]` is the submodule that defines `name`."""

    def __getattr__(name: str) -> object:
        if name in where:
            return getattr(importlib.import_module(f".{where[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
