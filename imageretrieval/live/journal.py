"""The live catalog's write-ahead log: one line per committed transaction, appended and fsynced
before a write is acknowledged.

A line is `<crc32 of the JSON, 8 hex> <JSON>\n`; the JSON holds the transaction's `seq` and its
operations. A transaction is all or nothing: a crash mid-write leaves a torn last line, which the
next writer cuts off (it was never acknowledged). Writers of several processes (the API, the CLI)
serialize on an exclusive `flock` of a lock file; a reader never needs the lock: it stops at the
first line without its newline. Compaction folds the log into a snapshot (store.py) and starts an
empty log whose header names the snapshot's sequence number.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..io_utils import atomic_write

log = logging.getLogger(__name__)

HEADER_KEY = "journal"
FORMAT_VERSION = 1


class JournalCorruptError(RuntimeError):
    """A damaged line before the end of the log: the message names the file and the fix."""


@dataclass(frozen=True)
class Entry:
    seq: int
    ops: list[dict]
    meta: dict


def encode_line(obj: dict) -> bytes:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def decode_line(line: bytes) -> dict | None:
    """The JSON of a complete, intact line; None when the CRC does not match (a torn or damaged line)."""
    if len(line) < 10 or line[8:9] != b" " or not line.endswith(b"\n"):
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        return json.loads(body)
    except ValueError:
        return None


class Journal:
    """Append-only log at `path` (created with a header on first use), lock file beside it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock_path = self.path.with_suffix(".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tail: tuple[int, int, int] | None = None  # (inode, intact length, last seq) at the last append

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes and threads (each call opens its own descriptor)."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def identity(self) -> tuple[int, int] | None:
        """(inode, size): a reader's cue that the log grew or was replaced by a compaction."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size

    def base_seq(self) -> int:
        """The sequence number the log continues from (that of the snapshot it follows)."""
        header = self._header()
        return int(header.get("base_seq", 0)) if header else 0

    def _header(self) -> dict | None:
        try:
            first = self._first_line()
        except FileNotFoundError:
            return None
        obj = decode_line(first)
        return obj if obj is not None and HEADER_KEY in obj else None

    def read(self, after_seq: int = 0) -> Iterator[Entry]:
        """Committed entries with seq > after_seq, in order; stops at a torn (unfinished) last line."""
        for _, entry in self.scan():
            if entry.seq > after_seq:
                yield entry

    def scan(self, offset: int = 0) -> Iterator[tuple[int, Entry]]:
        """(end offset, entry) per intact line from byte `offset` (a line start); raises JournalCorruptError
        on damage before the end. A reader keeps the last end offset to read only what was appended."""
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        with fh:
            fh.seek(offset)
            for line in iter(fh.readline, b""):
                if not line.endswith(b"\n"):  # being appended by another process, or torn by a crash
                    return
                obj = decode_line(line)
                if obj is None:
                    if not fh.read(1):  # the last line: torn by a crash mid-append (never acknowledged)
                        return
                    raise JournalCorruptError(
                        f"{self.path}: damaged entry at byte {offset} before the end of the log; restore the "
                        "workdir's catalog/ folder from a backup, or cut the log there (entries after it are lost)")
                offset += len(line)
                if HEADER_KEY not in obj:
                    yield offset, Entry(int(obj["seq"]), obj["ops"], obj.get("meta", {}))

    def _repair_tail(self) -> tuple[int, int]:
        """Under the lock: cut a torn last line; (last seq, intact length). Creates the log when absent.

        Reads only what was appended since this object's last look (another process may have written).
        """
        if not self.path.exists():
            self._write_new(0)
        st = os.stat(self.path)
        if self._tail is not None and self._tail[0] == st.st_ino and st.st_size >= self._tail[1]:
            last_seq, end = self._tail[2], self._tail[1]
        else:
            last_seq, end = self.base_seq(), len(self._first_line())
        for end_offset, entry in self.scan(end):
            last_seq, end = entry.seq, end_offset
        if st.st_size != end:
            log.warning("%s: cutting a torn last entry (%d bytes, never acknowledged)", self.path, st.st_size - end)
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                os.fsync(fh.fileno())
        self._tail = (st.st_ino, end, last_seq)
        return last_seq, end

    def _first_line(self) -> bytes:
        with open(self.path, "rb") as fh:
            return fh.readline()

    def append(self, ops: list[dict], meta: dict | None = None, expected_seq: int | None = None) -> int:
        """Append one transaction durably (under the lock, which the caller should hold); returns its seq.

        `expected_seq`: the last seq the caller has applied; a mismatch means another process wrote
        in between and raises RuntimeError (the caller catches up first).
        """
        last_seq, end = self._repair_tail()
        if expected_seq is not None and expected_seq != last_seq:
            raise RuntimeError(f"journal moved on to seq {last_seq} (caller at {expected_seq})")
        seq = last_seq + 1
        line = encode_line({"seq": seq, "ops": ops, "meta": meta or {}})
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            written = os.write(fd, line)
            if written != len(line):  # e.g. a full disk: cut the partial line, nothing is acknowledged
                os.ftruncate(fd, end)
                raise OSError(28, f"short write to {self.path} ({written} of {len(line)} bytes)")
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, end)
            except OSError:
                pass
            raise
        finally:
            os.close(fd)
        self._tail = (self._tail[0], end + len(line), seq) if self._tail is not None else None
        return seq

    def last_seq(self) -> int:
        """Under the lock: the last committed seq (a torn tail cut first)."""
        return self._repair_tail()[0]

    def restart_after(self, seq: int) -> None:
        """Under the lock, after a durable snapshot at `seq`: replace the log by an empty one following it."""
        self._write_new(seq)

    @property
    def appended_to(self) -> tuple[int, int] | None:
        """(inode, length) of the log after this object's last append: a reader's position in it."""
        return None if self._tail is None else self._tail[:2]

    def _write_new(self, base_seq: int) -> None:
        self._tail = None
        header = encode_line({HEADER_KEY: FORMAT_VERSION, "base_seq": base_seq})
        atomic_write(self.path, lambda p: p.write_bytes(header), durable=True)
