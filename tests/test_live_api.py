"""Live catalog through the API: writes with keys, visible to every search at once, bad input refused."""

from __future__ import annotations

import shutil
import threading

import pytest
from fastapi.testclient import TestClient

from imageretrieval.keys import KeyStore
from retrievalapi import create_app

from .test_api import api_settings
from .test_live_catalog import FIELDS, new_image

NEW_ID = 900100


@pytest.fixture(params=["faiss", "milvus"])
def live(request, synthetic_catalog, built_workdir, tmp_path):
    """A client over a private copy of the workdir (writes must not leak into other tests), and keys; every
    test runs on both index backends (Milvus: a real Milvus Lite on a file of the workdir)."""
    workdir = tmp_path / "wd"
    shutil.copytree(built_workdir, workdir)
    store = KeyStore(workdir)
    keys = {name: store.create(name, scope)[1] for name, scope in (("shop", "write"), ("reader", "read"))}
    settings = api_settings(synthetic_catalog, workdir, models="tiny,tiny2", write_burst=1000,
                            index_backend=request.param)
    if request.param == "milvus":
        from imageretrieval.backends.loading import load_into_milvus

        for name in ("tiny", "tiny2"):
            load_into_milvus(settings, name, progress=False)
    with TestClient(create_app(settings)) as client:
        client.keys = keys  # type: ignore[attr-defined]
        client.write_auth = {"Authorization": f"Bearer {keys['shop']}"}  # type: ignore[attr-defined]
        client.workdir = workdir  # type: ignore[attr-defined]
        yield client


def add(client, pid: int, image: bytes, **fields):
    return client.post("/api/products", headers=client.write_auth, files={"image": ("p.png", image, "image/png")},
                       data={"id": str(pid), **{**FIELDS, **fields}})


def top_ids(client, image: bytes, k: int = 5, model: str | None = None) -> list[int]:
    form = {"top_k": str(k), **({"model": model} if model else {})}
    found = client.post("/api/search", files={"image": ("q.png", image, "image/png")}, data=form)
    assert found.status_code == 200, found.text
    return [hit["id"] for hit in found.json()["results"]]


def test_an_added_product_is_found_first_by_its_own_photo_in_every_model(live):
    image = new_image(4711, "Dresses", "Yellow", size=(120, 160))
    answer = add(live, NEW_ID, image, articleType="Dresses", baseColour="Yellow", productDisplayName="Sun dress")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["changes"] == [{"id": NEW_ID, "action": "added"}] and body["indexes"] == ["tiny", "tiny2"]
    for model in ("tiny", "tiny2"):
        assert top_ids(live, image, model=model)[0] == NEW_ID
    product = live.get(f"/api/products/{NEW_ID}").json()
    assert product["productDisplayName"] == "Sun dress" and product["articleType"] == "Dresses"
    picture = live.get(product["image_url"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
    assert product["image_url"] != f"/api/images/{NEW_ID}?v=0" and "immutable" in picture.headers["cache-control"]
    assert add(live, NEW_ID, image, articleType="Dresses", baseColour="Yellow",  # the same again: a no-op
               productDisplayName="Sun dress").json()["changes"] == [{"id": NEW_ID, "action": "unchanged"}]
    conflict = add(live, NEW_ID, new_image(1), productDisplayName="Other")
    assert conflict.status_code == 409 and "update it instead" in conflict.json()["detail"]


def test_each_model_stores_the_vector_its_own_searches_compute_for_the_upload(live):
    """Models that decode uploads at different sizes (here one served at a photo's own resolution, the other
    bringing photos to the catalog's) each store what a search of theirs computes for the same file."""
    import dataclasses
    import io

    import numpy as np
    from PIL import Image

    from imageretrieval.images import open_image

    engines = live.app.state.runtime.engines
    engines["tiny2"].preprocess = dataclasses.replace(engines["tiny2"].preprocess, query_resolution=None)
    assert engines["tiny"].decode_size != engines["tiny2"].decode_size
    sizes = sorted(engine.decode_size for engine in engines.values())
    side = 2 * sizes[0] + 2  # JPEG draft mode: half size for the one model, full size for the other
    assert side // 2 < sizes[1]
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, "JPEG")
    photo = out.getvalue()
    native = engines["tiny2"]
    assert not np.allclose(*(native.encode([open_image(photo, min_size=size)])[0] for size in sizes), atol=1e-5)
    answer = live.post("/api/products", headers=live.write_auth, files={"image": ("p.jpg", photo, "image/jpeg")},
                       data={"id": str(NEW_ID), **FIELDS})
    assert answer.status_code == 201, answer.text
    for name, engine in engines.items():
        searched = engine.encode([open_image(photo, min_size=engine.decode_size)])[0]
        assert np.allclose(engine.vector_of(NEW_ID), searched, atol=1e-5), name


def test_new_values_reach_the_facets_and_filters(live):
    assert add(live, NEW_ID, new_image(5), baseColour="Teal").status_code == 201
    facets = live.get("/api/facets").json()
    assert {"value": "Teal", "count": 1} in facets["baseColour"]
    found = live.post("/api/search", files={"image": ("q.png", new_image(5), "image/png")},
                      data={"baseColour": "Teal", "top_k": "5"}).json()["results"]
    assert [h["id"] for h in found] == [NEW_ID]


def test_a_deleted_product_is_never_returned_again(live, synthetic_catalog):
    victim = top_ids(live, (synthetic_catalog / "images" / "1005.jpg").read_bytes(), k=1)[0]
    image = (synthetic_catalog / "images" / f"{victim}.jpg").read_bytes()
    gone = live.delete(f"/api/products/{victim}", headers=live.write_auth)
    assert gone.status_code == 200 and gone.json()["changes"] == [{"id": victim, "action": "deleted"}]
    for model in ("tiny", "tiny2"):
        assert victim not in top_ids(live, image, k=100, model=model)
    assert live.post("/api/search/by-id", json={"product_id": victim}).status_code == 404
    assert live.get(f"/api/products/{victim}").status_code == 404
    assert live.get(f"/api/images/{victim}").status_code == 404
    assert all(victim != h["id"] for other in (1001, 1002, 1003)
               for h in live.post("/api/search/by-id", json={"product_id": other, "top_k": 100}).json()["results"])
    again = live.delete(f"/api/products/{victim}", headers=live.write_auth)
    assert again.status_code == 404 and "nothing to delete" in again.json()["detail"]
    # the original catalog file is untouched: only the live catalog forgot it
    assert (synthetic_catalog / "images" / f"{victim}.jpg").is_file()


def test_a_new_image_brings_the_new_images_neighbours(live, synthetic_catalog):
    pid = 1010
    old_url = live.get(f"/api/products/{pid}").json()["image_url"]
    image = new_image(999, "Handbags", "Pink", size=(120, 160))
    replaced = live.put(f"/api/products/{pid}", headers=live.write_auth, files={"image": ("n.png", image, "image/png")},
                        data={**FIELDS, "articleType": "Handbags", "baseColour": "Pink"})
    assert replaced.status_code == 200 and replaced.json()["changes"] == [{"id": pid, "action": "updated"}]
    assert top_ids(live, image, k=1) == [pid]
    stored = live.get(f"/api/images/{pid}").content  # the image as stored (a normalized JPEG) is what was encoded
    new_url = live.get(f"/api/products/{pid}").json()["image_url"]
    assert new_url != old_url and live.get(new_url).content == stored
    before = live.get(old_url)  # a URL handed out before the change still shows the image it named
    assert before.content == (synthetic_catalog / "images" / f"{pid}.jpg").read_bytes()
    assert "immutable" in before.headers["cache-control"]
    by_image = top_ids(live, stored, k=6)
    assert by_image[0] == pid
    like = live.post("/api/search/by-id", json={"product_id": pid, "top_k": 5}).json()["results"]
    assert [h["id"] for h in like] == by_image[1:]  # its vector is the new image's
    patched = live.patch(f"/api/products/{pid}", headers=live.write_auth, json={"season": "Winter", "usage": None})
    assert patched.status_code == 200
    product = live.get(f"/api/products/{pid}").json()
    assert product["season"] == "Winter" and product["usage"] == "" and product["articleType"] == "Handbags"
    assert top_ids(live, image, k=1) == [pid]  # metadata only: the same vector


def test_batch_writes_are_all_or_nothing(live):
    rows = "id,productDisplayName,articleType,baseColour\n" + "".join(
        f"{NEW_ID + i},Tee {i},Tshirts,Green\n" for i in range(6))
    images = [("images", (f"{NEW_ID + i}.png", new_image(3000 + i), "image/png")) for i in range(6)]
    bad = images[:5] + [("images", (f"{NEW_ID + 5}.png", b"not an image", "image/png"))]
    refused = live.post("/api/products/batch", headers=live.write_auth,
                        files=[("styles", ("rows.csv", rows, "text/csv")), *bad])
    assert refused.status_code == 400 and f"product {NEW_ID + 5}" in refused.json()["detail"]
    assert live.get(f"/api/products/{NEW_ID}").status_code == 404  # nothing of it applied
    done = live.post("/api/products/batch", headers=live.write_auth,
                     files=[("styles", ("rows.csv", rows, "text/csv")), *images], data={"delete": ["1001", "1002"]})
    assert done.status_code == 200, done.text
    assert sorted(c["action"] for c in done.json()["changes"]) == ["added"] * 6 + ["deleted"] * 2
    for i in range(6):
        assert top_ids(live, new_image(3000 + i), k=1) == [NEW_ID + i]
    malformed = live.post("/api/products/batch", headers=live.write_auth,
                          files=[("styles", ("rows.csv", "id,productDisplayName\n7,a,b\n", "text/csv"))])
    assert malformed.status_code == 422 and "line 2" in malformed.json()["detail"]
    twice = live.post("/api/products/batch", headers=live.write_auth,
                      files=[("styles", ("rows.csv", rows, "text/csv")), *images,
                             ("images", (f"0{NEW_ID}.png", new_image(78), "image/png"))])
    assert twice.status_code == 400 and "a second image for product" in twice.json()["detail"]
    imageless = live.post("/api/products/batch", headers=live.write_auth,
                          files=[("styles", ("rows.csv", f"id,productDisplayName\n{NEW_ID},Tee again\n", "text/csv"))])
    assert imageless.status_code == 409 and "mode=upsert" in imageless.json()["detail"]
    orphan = live.post("/api/products/batch", headers=live.write_auth,
                       files=[("styles", ("rows.csv", rows, "text/csv")), *images,
                              ("images", ("77.png", new_image(77), "image/png"))])
    assert orphan.status_code == 400 and "without a styles row" in orphan.json()["detail"]


def test_a_full_disk_fails_a_batch_before_every_image_is_encoded(live, monkeypatch):
    import errno

    from imageretrieval.engine import RetrievalEngine
    from imageretrieval.live.blobs import ImageBlobs

    def full_disk(self, jpeg):
        raise OSError(errno.ENOSPC, "No space left on device")

    encoded = []
    encode = RetrievalEngine.encode_tensors

    def counting(self, batch, background=False):
        encoded.append(len(batch))
        return encode(self, batch, background)

    monkeypatch.setattr(ImageBlobs, "put", full_disk)
    monkeypatch.setattr(RetrievalEngine, "encode_tensors", counting)
    n = 40
    rows = "id,productDisplayName,articleType,baseColour\n" + "".join(
        f"{NEW_ID + i},Tee {i},Tshirts,Green\n" for i in range(n))
    images = [("images", (f"{NEW_ID + i}.png", new_image(4000 + i), "image/png")) for i in range(n)]
    refused = live.post("/api/products/batch", headers=live.write_auth,
                        files=[("styles", ("rows.csv", rows, "text/csv")), *images])
    assert refused.status_code == 507 and "disk" in refused.json()["detail"]
    assert sum(encoded) < n  # stopped at the first failed store, not after encoding the whole batch
    assert live.get(f"/api/products/{NEW_ID}").status_code == 404


@pytest.mark.parametrize(("form", "status", "message"), [
    ({"id": "0"}, 422, "id must be an integer"),
    ({"id": str(2**60)}, 422, "id must be an integer"),
    ({"id": "5", "colour": "red"}, 422, "unknown field"),
    ({"id": "5", "productDisplayName": "x" * 300}, 422, "at most 200"),
    ({"id": "5", "articleType": ""}, 422, "missing required"),
])
def test_bad_metadata_is_refused(live, form, status, message):
    answer = live.post("/api/products", headers=live.write_auth, files={"image": ("p.png", new_image(5), "image/png")},
                       data={**FIELDS, **form})
    assert answer.status_code == status and message in answer.json()["detail"], answer.text
    assert live.get("/api/products/5").status_code == 404


def test_bad_images_and_unknown_ids_are_refused(live):
    corrupt = add(live, NEW_ID, new_image(1)[:200])
    assert corrupt.status_code == 400 and "corrupt or truncated" in corrupt.json()["detail"]
    assert live.patch("/api/products/12345678", headers=live.write_auth, json={"season": "Fall"}).status_code == 404
    assert live.patch("/api/products/1003", headers=live.write_auth, json={"price": 3}).status_code == 422
    assert live.patch("/api/products/1003", headers=live.write_auth, json={}).status_code == 422
    as_json = live.put("/api/products/1003", headers=live.write_auth, json={"productDisplayName": "x"})
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["detail"]
    added_as_json = live.post("/api/products", headers=live.write_auth, json={"id": 90011, **FIELDS})
    assert added_as_json.status_code == 415, added_as_json.text  # not 'image: field required'
    twice = live.post("/api/products", headers=live.write_auth, files={"image": ("p.png", new_image(9), "image/png")},
                      data={**FIELDS, "id": ["90009", "90010"]})
    assert twice.status_code == 422 and "'id' given more than once" in twice.json()["detail"]
    for loose in ("1_003", "+1003", "1003.0"):  # ids that int() would take: refused, nothing changed
        assert live.delete(f"/api/products/{loose}", headers=live.write_auth).status_code == 422
    assert live.get("/api/products/1003").status_code == 200
    too_big = b"\xff\xd8" + b"0" * int(0.3 * 1024 * 1024)
    assert add(live, NEW_ID, too_big).status_code == 413


def test_writes_need_a_write_key_and_are_rate_limited(live, synthetic_catalog):
    image = new_image(8)
    files = {"image": ("p.png", image, "image/png")}
    data = {"id": str(NEW_ID), **FIELDS}
    missing = live.post("/api/products", files=files, data=data)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = live.post("/api/products", files=files, data=data, headers={"Authorization": "Bearer irk_" + "y" * 43})
    assert wrong.status_code == 401 and wrong.json() == {"detail": "invalid or revoked API key"}
    read_only = live.delete("/api/products/1001", headers={"Authorization": f"Bearer {live.keys['reader']}"})
    assert read_only.status_code == 403
    KeyStore(live.workdir).revoke("shop")
    assert live.delete("/api/products/1001", headers=live.write_auth).status_code == 401
    assert live.get("/api/products/1001").status_code == 200 and live.get(f"/api/products/{NEW_ID}").status_code == 404
    assert live.get("/api/search").status_code == 405  # reads stay open (no REQUIRE_READ_KEY)

    _, key = KeyStore(live.workdir).create("slow", "write")
    settings = api_settings(synthetic_catalog, live.workdir, models="tiny", write_rate_per_minute=1, write_burst=2)
    with TestClient(create_app(settings)) as slow:
        auth = {"Authorization": f"Bearer {key}"}
        codes = [slow.patch("/api/products/1003", headers=auth, json={"season": s}).status_code
                 for s in ("Fall", "Winter", "Summer")]
        assert codes[:2] == [200, 200] and codes[2] == 429
        limited = slow.patch("/api/products/1003", headers=auth, json={"season": "Spring"})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


def test_concurrent_searches_during_writes_never_see_half_a_write(live):
    """Each write swaps two products with the same picture: a search must see exactly one of them."""
    image = new_image(6060, "Watches", "Black", size=(120, 160))
    pair = (NEW_ID + 1, NEW_ID + 2)
    assert add(live, pair[0], image, articleType="Watches").status_code == 201
    stop = threading.Event()
    seen: list[list[int]] = []
    errors: list[str] = []

    def searcher() -> None:
        while not stop.is_set():
            answer = live.post("/api/search", files={"image": ("q.png", image, "image/png")}, data={"top_k": "4"})
            if answer.status_code != 200:
                errors.append(answer.text)
                continue
            seen.append([h["id"] for h in answer.json()["results"]])

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(12):
            old, new = pair if i % 2 == 0 else pair[::-1]
            rows = f"id,productDisplayName,articleType\n{new},Watch,Watches\n"
            answer = live.post("/api/products/batch", headers=live.write_auth, data={"delete": [str(old)]},
                               files=[("styles", ("r.csv", rows, "text/csv")),
                                      ("images", (f"{new}.png", image, "image/png"))])
            assert answer.status_code in (200, 201), answer.text
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors and len(seen) >= 10
    assert all(len(set(ids) & set(pair)) == 1 for ids in seen), [ids for ids in seen if len(set(ids) & set(pair)) != 1]


def test_writes_of_another_process_reach_the_running_service(live, synthetic_catalog):
    from imageretrieval.live.blobs import normalized_jpeg
    from imageretrieval.live.store import LiveCatalog, Write

    other = LiveCatalog(synthetic_catalog, live.workdir)  # e.g. `imageretrieval catalog add` meanwhile
    image = new_image(5151, "Shorts", "Red", size=(120, 160))
    other.commit([Write("add", NEW_ID, FIELDS, other.blobs.put(normalized_jpeg(image)))])
    import time

    deadline = time.monotonic() + 5  # the tailer applies it within TAIL_INTERVAL_S (Milvus: it encodes it too)
    while top_ids(live, image, k=1) != [NEW_ID] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert top_ids(live, image, k=1) == [NEW_ID]
    assert live.get(f"/api/products/{NEW_ID}").json()["articleType"] == FIELDS["articleType"]


def test_the_openapi_schema_documents_the_write_routes(live):
    paths = live.get("/api/openapi.json").json()["paths"]
    assert {"post", "put", "patch", "delete"} <= set(paths["/api/products"]) | set(paths["/api/products/{product_id}"])
    assert {"409", "422", "429", "507"} <= set(paths["/api/products/batch"]["post"]["responses"])


