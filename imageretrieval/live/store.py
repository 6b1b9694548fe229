"""LiveCatalog: the catalog a shop edits while the service runs.

It starts from the original catalog (`styles.csv` + images, never modified) and holds an overlay:
per product id changed since, its new state (fields + the hash of a stored image) or a deletion.
The overlay is the last snapshot (`<WORKDIR>/catalog/snapshot.json`) plus the journal replayed
onto it. A write is planned against the current state (duplicate and unknown ids refused), appended
to the journal and fsynced, then applied in memory: only then is it acknowledged.

Journal entries also carry the writing process' post-processed vectors of new images, per index
(its `vector_key`), so a restart rebuilds every index without encoding again; an index the entry
has no vector for encodes the stored image.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..catalog import load_catalog
from ..io_utils import atomic_write, fsync_dir, load_json
from .blobs import ImageBlobs
from .journal import Entry, Journal, JournalCorruptError
from .products import FIELDS, check_fields, check_id

log = logging.getLogger(__name__)


FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class StorageFullError(RuntimeError):
    """The disk (or a quota or file-size limit) is full: nothing of the write was kept."""


def storage_error(exc: OSError) -> Exception:
    """A full disk as StorageFullError (a message for people), any other OSError unchanged."""
    if exc.errno in FULL_DISK:
        return StorageFullError("the disk holding the workdir is full: nothing of this write was stored; "
                                "free space and retry")
    return exc


class DuplicateProductError(ValueError):
    """An add for an id that exists with other data (409)."""


class UnknownLiveProductError(KeyError):
    """An update or delete of an id that does not exist (404)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Product:
    fields: dict[str, Any]
    image: str | None  # sha256 of the stored image; None = the original catalog's image file

    def to_json(self) -> dict:
        return {"fields": self.fields, "image": self.image}


@dataclass(frozen=True)
class Write:
    """One requested change: kind add | update | delete. Update fields are partial; image None = keep."""

    kind: str
    id: int
    fields: dict[str, Any] | None = None
    image: str | None = None


@dataclass(frozen=True)
class Change:
    id: int
    action: str  # added | updated | deleted | unchanged
    image_changed: bool = False

    def to_dict(self) -> dict:
        return {"id": self.id, "action": self.action}


@dataclass(frozen=True)
class Op:
    """What the journal records and every index applies: a product's new state, or its deletion."""

    id: int
    product: Product | None  # None = deleted
    previous: Product | None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # vector_key -> vector of product.image

    @property
    def image_changed(self) -> bool:
        return self.product is not None and (self.previous is None or self.previous.image != self.product.image)


@dataclass
class CommitResult:
    seq: int
    changes: list[Change]
    ops: list[Op]  # the ops of this write (unchanged products left out)
    caught_up: list[Op]  # other writers' ops applied first (the caller's indexes apply them too)


def _encode_vector(v: np.ndarray) -> str:
    return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()


def _decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def _fields_of(record: dict) -> dict[str, Any]:
    """A styles.csv row as a live product's fields (`year` an int or None)."""
    out = {f: record[f] for f in FIELDS}
    year = out["year"]
    out["year"] = None if year is None or pd.isna(year) else int(year)
    return out


def _save_vectors(path: Path, shas: list[str], matrix: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, shas=np.array(shas, dtype="U64"), vectors=matrix)

    atomic_write(path, write, durable=True)


def _product_from(obj: dict | None) -> Product | None:
    return None if obj is None else Product(dict(obj["fields"]), obj.get("image"))


class LiveCatalog:
    """Original catalog + snapshot + journal. Thread-safe; several processes may write (journal lock)."""

    def __init__(self, dataset_root: Path, workdir: Path):
        self.dataset_root = Path(dataset_root)
        self.root = Path(workdir) / "catalog"
        self.blobs = ImageBlobs(self.root / "images")
        self.journal = Journal(self.root / "journal.log")
        self.snapshot_path = self.root / "snapshot.json"
        self.vectors_dir = self.root / "vectors"
        base = load_catalog(self.dataset_root)
        self.images_dir = base.images_dir
        self.base: dict[int, dict[str, Any]] = {int(r["id"]): _fields_of(r) for r in base.df.to_dict("records")}
        self.overlay: dict[int, Product | None] = {}
        self.seq = 0
        self.snapshot_seq = 0
        self.lock = threading.RLock()
        self._journal_identity = None  # (inode, size) when last read: unchanged = nothing new
        self._journal_position: tuple[int, int, int] = (-1, -1, 0)  # (inode, base seq, offset) read up to
        self._undelivered: list[Op] = []  # applied here, not yet handed to a caller's indexes
        self._load_snapshot()
        self.catch_up()

    # ----- reading ----------------------------------------------------------------------------
    def current(self, product_id: int) -> Product | None:
        if product_id in self.overlay:
            return self.overlay[product_id]
        return self.current_base(product_id)

    def image_path(self, product_id: int) -> Path | None:
        product = self.current(product_id)
        if product is None:
            return None
        path = self.images_dir / f"{product_id}.jpg" if product.image is None else self.blobs.path(product.image)
        return path if path.is_file() else None

    def image_version_path(self, product_id: int, version: str) -> Path | None:
        """The stored image that `version` (an image URL's `v`) names, for a product that still exists:
        a URL handed out just before an image changed keeps showing the image it was handed out with."""
        if self.current(product_id) is None:
            return None
        if version == "0":
            path = self.images_dir / f"{product_id}.jpg" if product_id in self.base else None
        elif len(version) == 16 and all(c in "0123456789abcdef" for c in version):
            path = next(iter(sorted((self.blobs.root / version[:2]).glob(f"{version}*.jpg"))), None)
        else:
            path = None
        return path if path is not None and path.is_file() else None

    def product_ids(self) -> list[int]:
        ids = {i for i in self.base if self.overlay.get(i, True) is not None}
        ids |= {i for i, p in self.overlay.items() if p is not None}
        return sorted(ids)

    def __len__(self) -> int:
        with self.lock:
            added = sum(1 for pid, p in self.overlay.items() if p is not None and pid not in self.base)
            deleted = sum(1 for p in self.overlay.values() if p is None)
            return len(self.base) + added - deleted

    def changed_ids(self) -> dict[int, Product | None]:
        """The overlay: every product added, changed or deleted since the original catalog."""
        with self.lock:
            return dict(self.overlay)

    # ----- planning -----------------------------------------------------------------------------
    def plan(self, writes: Iterable[Write]) -> tuple[list[Op], list[Change]]:
        """Validate writes against the current state (in order; a batch may not touch an id twice)."""
        ops: list[Op] = []
        changes: list[Change] = []
        seen: set[int] = set()
        for w in writes:
            pid = check_id(w.id)
            if pid in seen:
                raise DuplicateProductError(f"product {pid} appears twice in one write")
            seen.add(pid)
            before = self.current(pid)
            if w.kind == "add":
                after = Product(check_fields(w.fields or {}, partial=False), w.image)
                if before is not None:
                    if before == after or (before.fields == after.fields and self._same_image(pid, before, after)):
                        changes.append(Change(pid, "unchanged"))
                        continue
                    raise DuplicateProductError(f"product {pid} already exists with other data: update it instead")
                action = "added"
            elif w.kind == "update":
                if before is None:
                    raise UnknownLiveProductError(f"unknown product id {pid}: add it first")
                fields = {**before.fields, **check_fields(w.fields or {}, partial=True)}
                after = Product(fields, before.image if w.image is None else w.image)
                if after == before or (after.fields == before.fields and self._same_image(pid, before, after)):
                    changes.append(Change(pid, "unchanged"))
                    continue
                action = "updated"
            elif w.kind == "delete":
                if before is None:
                    raise UnknownLiveProductError(f"unknown product id {pid}: nothing to delete")
                after = None
                action = "deleted"
            else:
                raise ValueError(f"unknown write kind {w.kind!r}")
            op = Op(pid, after, before)
            ops.append(op)
            changes.append(Change(pid, action, op.image_changed))
        return ops, changes

    def _same_image(self, pid: int, before: Product, after: Product) -> bool:
        """The original catalog file uploaded again counts as the same image (both normalized alike)."""
        if before.image == after.image:
            return True
        if before.image is None and after.image is not None:
            from ..images import ImageDecodeError
            from .blobs import normalized_jpeg

            try:
                return self.blobs.path(after.image).read_bytes() == normalized_jpeg(self.images_dir / f"{pid}.jpg")
            except (OSError, ImageDecodeError):
                return False
        return False

    # ----- writing ------------------------------------------------------------------------------
    def commit(self, writes: list[Write], vectors: Mapping[str, Mapping[str, np.ndarray]] | None = None,
               meta: dict | None = None, on_commit: Callable[[list[Op]], None] | None = None) -> CommitResult:
        """Plan, journal durably, apply. `vectors`: vector_key -> image sha -> vector (new images).

        Raises the planning errors (nothing written) or OSError from the disk (nothing written:
        the journal cuts a partial entry); returns once the entry is on disk and applied.
        `on_commit(ops)` runs once the entry is durable, before the journal is unlocked: a shared
        index applies the write there, so writers of several processes reach it in journal order.
        """
        vectors = vectors or {}
        with self.lock, self.journal.locked():
            if self.journal.identity() != self._journal_identity:
                self._catch_up_locked()
            ops, changes = self.plan(writes)  # on an error, what was caught up stays for the next catch_up()
            ops = [Op(op.id, op.product, op.previous,
                      {key: by_sha[op.product.image] for key, by_sha in vectors.items()
                       if op.image_changed and op.product.image in by_sha}) for op in ops]
            if not ops:
                return CommitResult(self.seq, changes, [], self._deliver())
            stamp = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **(meta or {})}
            seq = self.journal.append([self._op_json(op) for op in ops], stamp, expected_seq=self.seq)
            self._apply(seq, ops)
            tail = self.journal.appended_to
            self._journal_position = (tail[0], self.journal.base_seq(), tail[1]) if tail else (-1, -1, 0)
            self._journal_identity = self.journal.identity()
            if on_commit is not None:
                on_commit(ops)
            return CommitResult(seq, changes, ops, self._deliver())

    def _deliver(self) -> list[Op]:
        ops, self._undelivered = self._undelivered, []
        return ops

    @staticmethod
    def _op_json(op: Op) -> dict:
        if op.product is None:
            return {"op": "delete", "id": op.id}
        out = {"op": "put", "id": op.id, **op.product.to_json()}
        if op.vectors:
            out["vectors"] = {key: _encode_vector(v) for key, v in op.vectors.items()}
        return out

    def _apply(self, seq: int, ops: list[Op]) -> None:
        for op in ops:
            original = self.base.get(op.id)
            if op.product is None and original is None:
                self.overlay.pop(op.id, None)  # an added product deleted again
            elif op.product is not None and op.product.image is None and op.product.fields == original:
                self.overlay.pop(op.id, None)  # back to the original
            else:
                self.overlay[op.id] = op.product
        self.seq = seq

    # ----- replay and catch-up ------------------------------------------------------------------
    def _load_snapshot(self) -> None:
        if not self.snapshot_path.is_file():
            return
        try:
            data = load_json(self.snapshot_path)
            self.overlay = {int(k): _product_from(v) for k, v in data["products"].items()}
            self.seq = self.snapshot_seq = int(data["seq"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise JournalCorruptError(f"{self.snapshot_path} is damaged ({exc}): the live catalog's changes "
                                      "folded into it cannot be read; restore the file from a backup") from None

    def _entry_ops(self, entry: Entry) -> list[Op]:
        ops = []
        for raw in entry.ops:
            pid = int(raw["id"])
            product = None if raw["op"] == "delete" else Product(dict(raw["fields"]), raw.get("image"))
            vectors = {k: _decode_vector(v) for k, v in raw.get("vectors", {}).items()}
            ops.append(Op(pid, product, self.current(pid), vectors))
        return ops

    @contextmanager
    def synced(self) -> Iterator[None]:
        """The journal locked and read to its end: no process writes until the block ends (a shared
        index is brought up to the catalog in it). What was caught up is delivered by the next catch_up()."""
        with self.lock, self.journal.locked():
            self._catch_up_locked()
            yield

    def catch_up(self) -> list[Op]:
        """Apply entries other processes journaled since (cheap when the log did not change); returns every
        op applied here and not yet returned, for the caller's indexes (none is ever handed out twice)."""
        with self.lock:
            if self.journal.identity() != self._journal_identity:
                self._catch_up_locked()
            return self._deliver()

    def _catch_up_locked(self) -> None:
        """Apply the entries past what was read (only the new bytes, unless the log was replaced); their ops
        join the undelivered ones as they apply, so an error midway loses none."""
        identity = self.journal.identity()
        if identity is None:
            return
        base_seq = self.journal.base_seq()
        if base_seq > self.seq:  # compacted by another process past what we applied
            self._undelivered.extend(self._reload_snapshot())
        inode, read_base, offset = self._journal_position
        if (inode, read_base) != (identity[0], base_seq):
            offset = 0  # a new log (a compaction; an inode number may be reused): read it from its start
        for end, entry in self.journal.scan(offset):
            offset = end
            if entry.seq <= self.seq:
                continue
            ops = self._entry_ops(entry)
            self._apply(entry.seq, ops)
            self._undelivered.extend(ops)
            self._journal_position = (identity[0], base_seq, offset)
        self._journal_position = (identity[0], base_seq, offset)
        self._journal_identity = identity

    def _reload_snapshot(self) -> list[Op]:
        old = {pid: self.current(pid) for pid in self.overlay}
        self._load_snapshot()
        touched = set(old) | set(self.overlay)
        return [Op(pid, self.current(pid), old.get(pid, self.current_base(pid))) for pid in sorted(touched)
                if self.current(pid) != old.get(pid, self.current_base(pid))]

    def current_base(self, pid: int) -> Product | None:
        """The product as the original catalog has it (None when it is not there)."""
        fields = self.base.get(pid)
        return None if fields is None else Product(fields, None)

    def entries_since(self, seq: int) -> list[Entry]:
        return list(self.journal.read(seq))

    # ----- vectors cached with the writes ----------------------------------------------------------
    def cached_vectors(self, vector_key: str) -> dict[str, np.ndarray]:
        """image sha -> vector for one index, from the snapshot's vector file and the journal."""
        out: dict[str, np.ndarray] = {}
        path = self.vectors_dir / f"{vector_key}.npz"
        if path.is_file():
            with np.load(path) as data:
                out.update(zip(data["shas"].tolist(), np.asarray(data["vectors"], np.float32), strict=True))
        for entry in self.journal.read(self.snapshot_seq):
            for raw in entry.ops:
                if raw["op"] == "put" and vector_key in raw.get("vectors", {}):
                    out[raw["image"]] = _decode_vector(raw["vectors"][vector_key])
        return out

    # ----- compaction ---------------------------------------------------------------------------
    def compact(self, extra_vectors: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> int:
        """Fold the journal into a new snapshot (and the vectors of the current images into one file per
        index), then start an empty journal. Returns the snapshot's seq. Safe at any crash point:
        the old snapshot + journal stay valid until the new snapshot has landed."""
        with self.lock, self.journal.locked():
            self._catch_up_locked()
            if self.seq == self.snapshot_seq:
                return self.seq
            live_shas = {p.image for p in self.overlay.values() if p is not None and p.image}
            keys = set(extra_vectors or {})
            if self.vectors_dir.is_dir():
                keys |= {p.stem for p in self.vectors_dir.glob("*.npz")}
            for entry in self.journal.read(self.snapshot_seq):
                for raw in entry.ops:
                    keys |= set(raw.get("vectors", {}))
            for key in sorted(keys):
                cached = {**self.cached_vectors(key), **(extra_vectors or {}).get(key, {})}
                kept = sorted(s for s in cached if s in live_shas)
                dims = next(iter(cached.values())).shape[0] if cached else 0
                matrix = np.stack([cached[s] for s in kept]) if kept else np.zeros((0, dims), np.float32)
                _save_vectors(self.vectors_dir / f"{key}.npz", kept, matrix)
            payload = {"seq": self.seq, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                       "products": {str(k): (None if v is None else v.to_json()) for k, v in self.overlay.items()}}
            atomic_write(self.snapshot_path, lambda p: p.write_text(json.dumps(payload)), durable=True)
            self.snapshot_seq = self.seq
            self.journal.restart_after(self.seq)
            self._journal_identity = self.journal.identity()
            fsync_dir(self.root)
            log.info("catalog compacted at seq %d (%d changed products)", self.seq, len(self.overlay))
            return self.seq
