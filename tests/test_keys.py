"""API keys: the hashed store, the `keys` CLI, and the API refusing requests without a valid key."""

from __future__ import annotations

import io
import json
import stat
import threading
from pathlib import Path

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient
from PIL import Image

from imageretrieval.cli import main
from imageretrieval.keys import PREFIX, ApiKeyError, KeyStore, keys_path
from retrievalapi.app import create_app
from retrievalapi.routes.deps import require_scope

from .test_api import api_settings


def test_only_a_hash_is_stored_and_the_key_verifies(tmp_path):
    store = KeyStore(tmp_path)
    record, key = store.create("shop", "write")
    assert key.startswith(PREFIX) and len(key) > 40 and record.id == key[:12]
    text = keys_path(tmp_path).read_text()
    assert key not in text and record.sha256 in text  # the key itself is never written
    assert stat.S_IMODE(keys_path(tmp_path).stat().st_mode) == 0o600
    assert KeyStore(tmp_path).verify(key) == record  # another process reads the same store
    assert store.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # same id, other secret
    assert store.verify("irk_nope") is None and store.verify("") is None
    assert record.allows("read") and record.allows("write")
    reader, _ = store.create("dashboard", "read")
    assert reader.allows("read") and not reader.allows("write")


def test_names_scopes_and_revocation(tmp_path):
    store = KeyStore(tmp_path)
    _, key = store.create("shop", "read")
    with pytest.raises(ApiKeyError, match="already named"):
        store.create("shop", "write")
    with pytest.raises(ApiKeyError, match="unknown scope"):
        store.create("other", "admin")
    with pytest.raises(ApiKeyError, match="name"):
        store.create("  ", "read")
    revoked = store.revoke("shop")
    assert revoked.revoked and store.verify(key) is None
    with pytest.raises(ApiKeyError, match="no active key"):
        store.revoke("shop")
    store.create("shop", "write")  # the name is free again
    assert [k.name for k in store.list()] == ["shop", "shop"]
    assert all("sha256" not in k.public() for k in store.list())


def test_concurrent_creates_lose_no_key(tmp_path):
    keys: list[str] = []

    def create(worker: int) -> None:
        for i in range(5):
            keys.append(KeyStore(tmp_path).create(f"k{worker}-{i}", "read")[1])

    threads = [threading.Thread(target=create, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = KeyStore(tmp_path)
    assert len(store.list()) == 30 and all(store.verify(k) for k in keys)


def test_cli_creates_lists_and_revokes(tmp_path, capsys):
    flags = ["--workdir", str(tmp_path)]
    assert main(["keys", "create", "--name", "shop", "--scope", "write", *flags]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]  # the last line: the key, shown once
    assert KeyStore(tmp_path).verify(key).name == "shop"
    assert main(["keys", "list", "--json", *flags]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(k["name"], k["scope"], k["revoked"]) for k in listed] == [("shop", "write", None)]
    assert key not in json.dumps(listed) and "sha256" not in listed[0]
    assert main(["keys", "revoke", "shop", *flags]) == 0
    assert KeyStore(tmp_path).verify(key) is None
    assert main(["keys", "revoke", "shop", *flags]) == 2
    assert "no active key" in capsys.readouterr().err


@pytest.fixture()
def locked_client(synthetic_catalog, built_workdir):
    app = create_app(api_settings(synthetic_catalog, built_workdir, require_read_key=True))

    @app.post("/api/test-write")  # a write route, to check scopes until the catalog takes writes
    def write_check(key=Depends(require_scope("write"))) -> dict:
        return {"name": key.name}

    with TestClient(app) as c:
        yield c
    keys_path(built_workdir).unlink(missing_ok=True)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (60, 80), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def test_the_api_refuses_missing_wrong_revoked_and_read_scoped_keys(locked_client, built_workdir: Path):
    c = locked_client
    store = KeyStore(built_workdir)
    _, reader = store.create("reader", "read")
    _, writer = store.create("writer", "write")
    assert c.get("/api/health").status_code == 200 and c.get("/api/ready").status_code == 200  # stay open
    missing = c.get("/api/facets")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = c.get("/api/facets", headers={"Authorization": "Bearer irk_" + "x" * 43})
    assert wrong.status_code == 401 and wrong.json() == {"detail": "invalid or revoked API key"}
    ok = {"Authorization": f"Bearer {reader}"}
    assert c.get("/api/facets", headers=ok).status_code == 200
    assert c.get("/api/products/1000", headers=ok).status_code in (200, 404)
    found = c.post("/api/search", headers=ok, files={"image": ("q.jpg", _jpeg(), "image/jpeg")}, data={"top_k": "3"})
    assert found.status_code == 200 and len(found.json()["results"]) == 3
    assert c.post("/api/search", files={"image": ("q.jpg", _jpeg(), "image/jpeg")}).status_code == 401
    assert c.post("/api/test-write", headers=ok).status_code == 403  # a read key may not write
    assert c.post("/api/test-write", headers={"Authorization": f"Bearer {writer}"}).json() == {"name": "writer"}
    assert c.get("/api/facets", headers={"Authorization": f"Bearer {writer}"}).status_code == 200  # write reads too
    too_big = b"x" * (11 * 1024 * 1024)  # over the upload limit: refused for the missing key, before it is read
    refused = c.post("/api/search", files={"image": ("q.jpg", too_big, "image/jpeg")})
    assert refused.status_code == 401 and refused.json()["detail"].startswith("an API key is required")
    assert c.options("/api/search").status_code != 401  # a CORS preflight carries no key
    store.revoke("reader")  # from another process: the running API refuses it on the next request
    assert c.get("/api/facets", headers=ok).status_code == 401


def test_a_damaged_key_store_is_named_and_refuses_every_key(locked_client, built_workdir: Path, capsys):
    store = KeyStore(built_workdir)
    _, writer = store.create("writer", "write")
    keys_path(built_workdir).write_text("{")  # a truncated file, e.g. restored badly
    answer = locked_client.post("/api/test-write", headers={"Authorization": f"Bearer {writer}"})
    assert answer.status_code == 503 and answer.json() == {"detail": "API keys cannot be checked right now; "
                                                                     "retry later"}  # no path, no parse error
    flags = ["--workdir", str(built_workdir)]
    assert main(["keys", "list", *flags]) == 2
    err = capsys.readouterr().err
    assert str(keys_path(built_workdir)) in err and "is damaged" in err and "Traceback" not in err
    keys_path(built_workdir).write_text(json.dumps({"keys": [{"id": "irk_abcdefgh"}]}))  # a row missing fields
    assert main(["keys", "create", "--name", "x", "--scope", "read", *flags]) == 2
    assert "is damaged" in capsys.readouterr().err
    with pytest.raises(ApiKeyError, match="line breaks"):
        KeyStore(built_workdir / "other").create("shop\nadmin", "read")
