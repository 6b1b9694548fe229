"""API keys: created, listed and revoked from the CLI, checked by the API; only their hashes are stored.

A key is `irk_` + 43 random URL-safe characters (256 bits), shown once when it is created. The store,
`<WORKDIR>/keys.json` (mode 0600), holds per key its id (the first 12 characters, to find it), a
SHA-256 hash (keys are random, so a plain hash cannot be reversed), its name, scope and dates. A
`write` key may also read. Changes are atomic and serialized with a lock file, so two `keys create`
never lose each other's key; a running API sees them on its next request (the file is re-read when it changed).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import secrets
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from .io_utils import atomic_write

SCOPES = ("read", "write")
PREFIX = "irk_"
ID_LENGTH = 12  # PREFIX + 8 characters: enough to tell keys apart, far too little to guess one


class ApiKeyError(ValueError):
    """A bad name, scope or unknown key: the message says which."""


class KeyStoreCorruptError(RuntimeError):
    """keys.json cannot be read: no key is accepted until it is restored (the message names the file)."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scope: str
    sha256: str
    created: str
    revoked: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def allows(self, scope: str) -> bool:
        return self.active and (self.scope == scope or self.scope == "write")

    def public(self) -> dict:
        """What `keys list` shows: everything but the hash."""
        return {k: v for k, v in asdict(self).items() if k != "sha256"}


def keys_path(workdir: Path) -> Path:
    return Path(workdir) / "keys.json"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class KeyStore:
    """The keys of one workdir. `verify` re-reads the file when it changed, so revocations apply at once."""

    def __init__(self, workdir: Path):
        self.path = keys_path(workdir)
        self._keys: dict[str, ApiKey] = {}
        self._version: tuple[int, int, int] | None = None  # (mtime, inode, size) of the file last read

    # ----- reading -----------------------------------------------------------------------------
    def _load(self) -> dict[str, ApiKey]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._keys, self._version = {}, None
            return {}
        # every write is a new file (atomic rename): a new inode even when the mtime tick is the same
        version = (st.st_mtime_ns, st.st_ino, st.st_size)
        keys = self._keys
        if version != self._version:
            try:
                rows = json.loads(self.path.read_text())["keys"]
                keys = {row["id"]: ApiKey(**row) for row in rows}
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise KeyStoreCorruptError(
                    f"{self.path} cannot be read or is damaged ({type(exc).__name__}: {str(exc)[:80]}): fix its "
                    "permissions or restore it from a backup, "
                    "or move it away and create the keys again (`imageretrieval keys create`)") from None
            self._keys, self._version = keys, version
        return keys

    def list(self) -> list[ApiKey]:
        return sorted(self._load().values(), key=lambda k: k.created)

    def verify(self, key: str) -> ApiKey | None:
        """The key's record when `key` is a known, not revoked key; None otherwise (no reason given)."""
        if not key.startswith(PREFIX) or len(key) < ID_LENGTH:
            return None
        record = self._load().get(key[:ID_LENGTH])
        if record is None or not hmac.compare_digest(record.sha256, _digest(key)):
            return None
        return record if record.active else None

    # ----- writing ------------------------------------------------------------------------------
    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._version = None  # read what another process may just have written
            try:
                yield self._load()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _save(self, keys: dict[str, ApiKey]) -> None:
        body = json.dumps({"keys": [asdict(k) for k in keys.values()]}, indent=2) + "\n"
        atomic_write(self.path, lambda p: p.write_text(body), mode=0o600, durable=True)
        self._version = None

    def create(self, name: str, scope: str) -> tuple[ApiKey, str]:
        """A new key: (its record, the key itself, which is not stored and cannot be shown again)."""
        name = name.strip()
        if not name or len(name) > 64:
            raise ApiKeyError("a key needs a name of 1 to 64 characters (--name)")
        if not name.isprintable():
            raise ApiKeyError("a key's name may not hold line breaks or other control characters (--name)")
        if scope not in SCOPES:
            raise ApiKeyError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
        with self._locked() as keys:
            if any(k.name == name and k.active for k in keys.values()):
                raise ApiKeyError(f"an active key is already named {name!r}: revoke it first or choose another name")
            while True:
                key = PREFIX + secrets.token_urlsafe(32)
                if key[:ID_LENGTH] not in keys:
                    break
            record = ApiKey(key[:ID_LENGTH], name, scope, _digest(key), _now())
            self._save({**keys, record.id: record})
        return record, key

    def revoke(self, name_or_id: str) -> ApiKey:
        """Revoke the active key with this name (or id); it is refused from the next request on."""
        with self._locked() as keys:
            found = [k for k in keys.values() if k.active and name_or_id in (k.name, k.id)]
            if not found:
                raise ApiKeyError(f"no active key named {name_or_id!r} (`imageretrieval keys list` shows them)")
            record = ApiKey(**{**asdict(found[0]), "revoked": _now()})
            self._save({**keys, record.id: record})
        return record
