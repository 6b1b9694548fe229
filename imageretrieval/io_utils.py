"""Atomic artifact writes: a crash or Ctrl-C never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write(path: Path, write: Callable[[Path], None], mode: int = 0o644, durable: bool = False) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it into place.

    `durable` also flushes the file and its folder to disk before returning (an acknowledged write
    then survives a power loss, not only a crash of the process).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, mode)  # mkstemp makes 0600; artifacts are shared with other users/containers
        if durable:
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a file renamed or created in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_json(path: Path, obj: Any, durable: bool = False) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=str) + "\n"), durable=durable)


class DamagedFileError(ValueError):
    """An artifact that cannot be read back (cut short, overwritten by hand): named, with the fix."""


def damaged(path: Path, problem: object) -> DamagedFileError:
    return DamagedFileError(f"{path} is damaged ({problem}): delete it and rerun the command that wrote it")


def load_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise damaged(path, exc) from None


def save_npy(path: Path, array: np.ndarray) -> None:
    def _write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.save(fh, array)

    atomic_write(path, _write)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    def _write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, _write)
