"""The live catalog's library: journal, image store, validation, snapshots, and the engine's live index."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageretrieval.live.blobs import ImageBlobs, blob_sha, normalized_jpeg
from imageretrieval.live.journal import Journal, JournalCorruptError
from imageretrieval.live.liveindex import LiveIndex, RowUpsert
from imageretrieval.live.products import ProductValidationError, check_fields, parse_styles_rows
from imageretrieval.live.store import DuplicateProductError, LiveCatalog, UnknownLiveProductError, Write
from imageretrieval.synthetic import drawing_for, render_product

from .conftest import make_settings


def new_image(product_id: int, article_type: str = "Tshirts", colour: str = "Green", size=(60, 80)) -> bytes:
    out = io.BytesIO()
    render_product(drawing_for(product_id, article_type, colour), *size).save(out, format="PNG")
    return out.getvalue()


FIELDS = {"gender": "Men", "masterCategory": "Apparel", "subCategory": "Topwear", "articleType": "Tshirts",
          "baseColour": "Green", "season": "Summer", "year": "2024", "usage": "Casual",
          "productDisplayName": "Test green tee"}


# ----- journal ----------------------------------------------------------------------------------
def test_journal_replays_entries_and_cuts_a_torn_tail(tmp_path):
    journal = Journal(tmp_path / "journal.log")
    with journal.locked():
        assert journal.append([{"op": "delete", "id": 1}]) == 1
        assert journal.append([{"op": "delete", "id": 2}, {"op": "delete", "id": 3}]) == 2
    with open(journal.path, "ab") as fh:  # a crash mid-append: half a line, never acknowledged
        fh.write(b"0badc0de {\"seq\": 3, \"ops\": [")
    assert [e.seq for e in journal.read()] == [1, 2]
    assert [op["id"] for e in journal.read(1) for op in e.ops] == [2, 3]
    with journal.locked():
        assert journal.append([{"op": "delete", "id": 4}]) == 3  # the torn tail was cut first
    assert [e.seq for e in journal.read()] == [1, 2, 3]


def test_journal_refuses_damage_before_its_end(tmp_path):
    journal = Journal(tmp_path / "journal.log")
    with journal.locked():
        for i in range(3):
            journal.append([{"op": "delete", "id": i + 1}])
    data = bytearray(journal.path.read_bytes())
    second = data.index(b"\n") + 1 + data[data.index(b"\n") + 1:].index(b"\n") + 1  # start of entry 2
    data[second + 20] ^= 0x01
    journal.path.write_bytes(bytes(data))
    with pytest.raises(JournalCorruptError, match="damaged entry"):
        list(journal.read())


def test_concurrent_appends_get_distinct_sequence_numbers(tmp_path):
    seqs: list[int] = []

    def writer() -> None:
        journal = Journal(tmp_path / "journal.log")  # each with its own descriptors, like processes
        for _ in range(20):
            with journal.locked():
                seqs.append(journal.append([{"op": "delete", "id": 1}]))

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 81))
    assert [e.seq for e in Journal(tmp_path / "journal.log").read()] == list(range(1, 81))


# ----- images and validation --------------------------------------------------------------------
def test_images_are_stored_once_by_content_hash(tmp_path):
    blobs = ImageBlobs(tmp_path / "images")
    jpeg = normalized_jpeg(new_image(1))
    sha = blobs.put(jpeg)
    assert blobs.put(normalized_jpeg(new_image(1))) == sha  # deterministic: the same upload, the same file
    assert blobs.path(sha).read_bytes() == jpeg and blobs.path(sha).parent.parent == tmp_path / "images"
    with pytest.raises(ValueError):
        blobs.path("../../etc/passwd")


def test_a_folder_made_by_another_put_is_flushed_before_a_file_in_it_is_trusted(tmp_path, monkeypatch):
    """Puts run on several threads: a folder that exists may be one another put has just made and not yet
    flushed; the first put into it in this process flushes the root itself."""
    import imageretrieval.live.blobs as blobs_module

    flushed: list[Path] = []
    real = blobs_module.fsync_dir
    monkeypatch.setattr(blobs_module, "fsync_dir", lambda path: (flushed.append(Path(path)), real(path)))
    root = tmp_path / "images"
    blobs = ImageBlobs(root)
    jpeg = normalized_jpeg(new_image(1))
    (root / blob_sha(jpeg)[:2]).mkdir(parents=True)  # made by a put on another thread, root not flushed yet
    blobs.put(jpeg)
    assert root in flushed
    flushed.clear()
    blobs.put(jpeg)  # the same folder again: known to be flushed
    assert root not in flushed and blobs.path(blob_sha(jpeg)).parent in flushed


def test_a_plain_jpeg_is_stored_as_it_is_without_its_metadata():
    from imageretrieval.live.blobs import stored_form

    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG", exif=exif.tobytes(), comment=b"Anna's flat")
    raw = buf.getvalue()
    stored, decoded = stored_form(raw)
    assert b"PhoneMaker" in raw and b"PhoneMaker" not in stored and decoded.size == (64, 48)
    assert b"Anna's flat" in raw and b"Anna's flat" not in stored
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), np.asarray(Image.open(io.BytesIO(raw))))
    assert raw.endswith(stored[-200:])  # the compressed image data is the upload's, untouched


@pytest.mark.parametrize("value", ["²", "1" * 5000, "0", "-3", "9007199254740992", " "])
def test_ids_out_of_range_or_not_plain_digits_are_refused(value):
    from imageretrieval.live.products import check_id

    with pytest.raises(ProductValidationError, match="id must be an integer"):
        check_id(value)


@pytest.mark.parametrize(("fields", "message"), [
    ({**FIELDS, "colour": "red"}, "unknown field"),
    ({**FIELDS, "productDisplayName": "x" * 201}, "at most 200"),
    ({**FIELDS, "articleType": ""}, "missing required"),
    ({**FIELDS, "year": "1776"}, "year must be within"),
    ({**FIELDS, "year": "soon"}, "year must be a number"),
    ({**FIELDS, "year": "1e999"}, "year must be a number"),
    ({**FIELDS, "gender": "Men\x00"}, "control"),
    ({**FIELDS, "year": "2024.7"}, "whole number"),
    ({**FIELDS, "productDisplayName": "Tee\u2028line two"}, "control"),  # a line separator
])
def test_bad_metadata_is_refused_with_the_field_named(fields, message):
    with pytest.raises(ProductValidationError, match=message):
        check_fields(fields, partial=False)


def test_styles_rows_are_parsed_strictly():
    rows = parse_styles_rows('id,productDisplayName,articleType\n7,"Tee, green",Tshirts\n8,Shirt,Shirts\n')
    assert rows == [(7, {"productDisplayName": "Tee, green", "articleType": "Tshirts"}),
                    (8, {"productDisplayName": "Shirt", "articleType": "Shirts"})]
    with pytest.raises(ProductValidationError, match="line 2: 4 fields"):
        parse_styles_rows("id,productDisplayName,articleType\n7,Tee, green,Tshirts\n")
    with pytest.raises(ProductValidationError, match="appears twice"):
        parse_styles_rows("id,productDisplayName\n7,a\n7,b\n")
    with pytest.raises(ProductValidationError, match="id must be an integer"):
        parse_styles_rows("id,productDisplayName\n-7,a\n")
    with pytest.raises(ProductValidationError, match="unknown or repeated"):
        parse_styles_rows("id,price\n7,3\n")
    assert parse_styles_rows("id,productDisplayName\r7,a\r8,b\r") == \
        [(7, {"productDisplayName": "a"}), (8, {"productDisplayName": "b"})]  # old Mac line endings
    with pytest.raises(ProductValidationError, match="line 2: not readable as CSV"):
        parse_styles_rows("id,productDisplayName\n7," + "x" * 200_000 + "\n")  # over csv's field limit


# ----- the catalog store ------------------------------------------------------------------------
def add(catalog: LiveCatalog, pid: int, image_seed: int | None = None, **fields) -> list:
    sha = catalog.blobs.put(normalized_jpeg(new_image(image_seed or pid)))
    return catalog.commit([Write("add", pid, {**FIELDS, **fields}, sha)]).changes


def test_writes_are_planned_journaled_and_replayed(synthetic_catalog, tmp_path):
    catalog = LiveCatalog(synthetic_catalog, tmp_path)
    n = len(catalog)
    first = int(catalog.product_ids()[0])
    assert [c.action for c in add(catalog, 900001)] == ["added"]
    assert [c.action for c in add(catalog, 900001)] == ["unchanged"]  # idempotent
    with pytest.raises(DuplicateProductError):
        add(catalog, 900001, image_seed=5)
    with pytest.raises(UnknownLiveProductError):
        catalog.commit([Write("delete", 12345678)])
    with pytest.raises(UnknownLiveProductError):
        catalog.commit([Write("update", 12345678, {"usage": "Formal"})])
    catalog.commit([Write("update", first, {"baseColour": "Purple"}), Write("delete", 900001)])
    catalog.commit([Write("add", 900002, FIELDS, catalog.blobs.put(normalized_jpeg(new_image(2))))])
    with pytest.raises(DuplicateProductError, match="twice"):
        catalog.commit([Write("delete", first), Write("delete", first)])
    assert catalog.current(900001) is None and catalog.current(first).fields["baseColour"] == "Purple"
    assert len(catalog) == n + 1

    replayed = LiveCatalog(synthetic_catalog, tmp_path)  # a restart: snapshot (none yet) + journal
    assert replayed.overlay == catalog.overlay and replayed.seq == catalog.seq == 3
    catalog.compact()
    assert [e.seq for e in catalog.journal.read()] == []
    compacted = LiveCatalog(synthetic_catalog, tmp_path)
    assert compacted.overlay == catalog.overlay and compacted.seq == 3
    compacted.commit([Write("delete", 900002)])
    assert LiveCatalog(synthetic_catalog, tmp_path).current(900002) is None
    assert catalog.catch_up()[0].id == 900002 and catalog.current(900002) is None  # another writer's entry


def test_re_adding_an_original_product_as_it_is_changes_nothing(synthetic_catalog, tmp_path):
    catalog = LiveCatalog(synthetic_catalog, tmp_path)
    pid = int(catalog.product_ids()[3])
    sha = catalog.blobs.put(normalized_jpeg(synthetic_catalog / "images" / f"{pid}.jpg"))
    fields = {k: v for k, v in catalog.current(pid).fields.items()}
    assert [c.action for c in catalog.commit([Write("add", pid, fields, sha)]).changes] == ["unchanged"]
    assert catalog.seq == 0 and catalog.current(pid).image is None


def test_another_writers_entries_reach_the_caller_even_when_its_own_write_fails(synthetic_catalog, tmp_path):
    ours, theirs = LiveCatalog(synthetic_catalog, tmp_path), LiveCatalog(synthetic_catalog, tmp_path)
    add(theirs, 900031)
    theirs.commit([Write("delete", 900031)])
    add(theirs, 900032)
    with pytest.raises(UnknownLiveProductError):  # our write fails after catching up with theirs
        ours.commit([Write("delete", 12345678)])
    ops = ours.catch_up()  # ... and what it caught up is still handed out, once
    assert [(op.id, op.product is None) for op in ops] == [(900031, False), (900031, True), (900032, False)]
    assert ours.catch_up() == []


def test_an_id_changed_twice_in_one_catch_up_ends_in_its_last_state(synthetic_catalog, tmp_path, built_workdir):
    import shutil

    from imageretrieval.engine import RetrievalEngine

    workdir = tmp_path / "wd"
    shutil.copytree(built_workdir, workdir)
    engine = RetrievalEngine(make_settings(synthetic_catalog, workdir), "tiny")
    other = LiveCatalog(synthetic_catalog, workdir)
    add(other, 900040)
    other.commit([Write("delete", 900040)])
    add(other, 900041, image_seed=41)
    other.commit([Write("update", 900041, {"season": "Winter"})])  # metadata only, after a new image
    engine.apply_ops(engine.catalog.catch_up())
    state = engine.live.state
    assert 900040 not in state.row_of and int((state.ids[: state.n][state.alive] == 900040).sum()) == 0
    assert int((state.ids[: state.n][state.alive] == 900041).sum()) == 1
    assert engine.product(900041)["season"] == "Winter"
    assert engine.search([new_image(41)], k=1)[0][0].id == 900041


@pytest.mark.parametrize("damage", ["[]", '{"seq": 3, "products": ', '{"seq": 3}'])
def test_a_damaged_snapshot_is_named_not_a_traceback(synthetic_catalog, tmp_path, damage):
    from imageretrieval.live.journal import JournalCorruptError

    catalog = LiveCatalog(synthetic_catalog, tmp_path / "wd")
    catalog.snapshot_path.parent.mkdir(parents=True, exist_ok=True)
    catalog.snapshot_path.write_text(damage)
    with pytest.raises(JournalCorruptError, match="snapshot.*is damaged.*backup"):
        LiveCatalog(synthetic_catalog, tmp_path / "wd")


def test_original_styles_csv_is_never_modified(synthetic_catalog, tmp_path):
    before = (synthetic_catalog / "styles.csv").read_bytes()
    catalog = LiveCatalog(synthetic_catalog, tmp_path)
    add(catalog, 900003)
    catalog.commit([Write("delete", int(catalog.product_ids()[0]))])
    catalog.compact()
    assert (synthetic_catalog / "styles.csv").read_bytes() == before


# ----- the live index ---------------------------------------------------------------------------
def test_live_index_adds_removes_and_rebuilds_while_writes_land():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    products = [{"gender": "Men" if i % 2 else "Women"} for i in range(50)]
    live = LiveIndex(None, vectors, np.arange(100, 150), products, ["gender"], "HNSW8")
    before = live.state
    new = rng.normal(size=8).astype(np.float32)
    live.apply([100, 101], [RowUpsert(500, new, {"gender": "Men"}), RowUpsert(102, vectors[3], {"gender": "Men"})])
    s = live.state
    assert before.size == 50 and before.alive.all()  # an old state never changes
    assert s.size == 49 and 100 not in s.row_of and s.ids[s.row_of[102]] == 102 and s.row_of[102] >= 50
    scores, rows = s.search(new, 3, None)
    assert s.ids[rows[0][0]] == 500 and scores[0][0] == pytest.approx(float(new @ new))
    exact = np.concatenate([vectors, [new, vectors[3]]]) @ vectors[10]
    exact[[0, 1, 2]] = -np.inf
    _, rows = s.search(vectors[10], 5, None)
    assert rows[0].tolist() == np.argsort(-exact, kind="stable")[:5].tolist()

    real_build = None

    def build_while_writing(v):  # a write lands while the rebuild runs
        live.apply([110], [RowUpsert(600, vectors[20], {"gender": "Women"})])
        from imageretrieval.index import build_index
        nonlocal real_build
        real_build = build_index(v, "HNSW8")
        return real_build

    live.rebuild(build_while_writing)
    s = live.state
    assert s.base_index is real_build and s.n_base == 49 and s.n_growing == 1
    assert 110 not in s.row_of and 600 in s.row_of and s.size == 49
    _, rows = s.search(vectors[20], 2, None)
    assert sorted(s.ids[rows[0]].tolist()) == [120, 600]


# ----- the engine over the live catalog ---------------------------------------------------------
def test_engine_finds_an_added_product_forgets_a_deleted_one_and_survives_a_restart(synthetic_catalog, tmp_path,
                                                                                    built_workdir):
    import shutil

    from imageretrieval.engine import RetrievalEngine

    workdir = tmp_path / "wd"
    shutil.copytree(built_workdir, workdir)
    settings = make_settings(synthetic_catalog, workdir)
    engine = RetrievalEngine(settings, "tiny")
    catalog = engine.catalog
    image = new_image(777, "Dresses", "Yellow", size=(120, 160))
    sha = catalog.blobs.put(normalized_jpeg(image))
    vec = engine.encode([Image.open(io.BytesIO(normalized_jpeg(image)))])[0]
    result = catalog.commit([Write("add", 900010, {**FIELDS, "articleType": "Dresses", "baseColour": "Yellow"}, sha)],
                            vectors={engine.vector_key: {sha: vec}})
    engine.apply_ops(result.ops)
    assert engine.search([image], k=1)[0][0].id == 900010
    assert engine.product(900010)["productDisplayName"] == "Test green tee"
    assert engine.check_filters({"baseColour": ["Yellow"]})

    victim = engine.search([image], k=2)[0][1].id
    engine.apply_ops(catalog.commit([Write("delete", victim)]).ops)
    assert victim not in [h.id for h in engine.search([image], k=len(engine.ids))[0]]
    with pytest.raises(KeyError):
        engine.search_by_id(victim)

    restarted = RetrievalEngine(settings, "tiny")  # the journal replayed, vectors taken from it (no encode)
    assert restarted.search([image], k=1)[0][0].id == 900010
    assert victim not in restarted.live.state.row_of
    assert victim not in [h.id for h in restarted.search([image], k=len(restarted.ids))[0]]
    assert restarted.live.state.size == engine.live.state.size
    catalog.compact()
    again = RetrievalEngine(settings, "tiny")  # from the snapshot's vector file
    assert again.search([image], k=1)[0][0].id == 900010


def test_a_hit_shows_the_image_of_the_index_state_it_comes_from(synthetic_catalog, tmp_path, built_workdir):
    """Between a catalog commit and its index update, a search sees the product before the write:
    its old fields, vector and image URL, never the old fields with the new image."""
    import shutil

    from imageretrieval.engine import RetrievalEngine

    workdir = tmp_path / "wd"
    shutil.copytree(built_workdir, workdir)
    engine = RetrievalEngine(make_settings(synthetic_catalog, workdir), "tiny")
    pid = int(engine.ids[0])
    own = engine.vector_of(pid)[None]
    before = engine.search_vectors(own, 1)[0][0]
    assert before.id == pid
    assert before.product["image_url"] == f"/api/images/{pid}?v=0"
    image = new_image(4242, "Dresses", "Yellow", size=(120, 160))
    sha = engine.catalog.blobs.put(normalized_jpeg(image))
    vec = engine.encode([Image.open(io.BytesIO(normalized_jpeg(image)))])[0]
    result = engine.catalog.commit([Write("update", pid, {"productDisplayName": "New dress"}, sha)],
                                   vectors={engine.vector_key: {sha: vec}})
    mid = engine.search_vectors(own, 1)[0][0]  # the catalog has the write, the index not yet
    assert (mid.product["productDisplayName"], mid.product["image_url"]) == \
        (before.product["productDisplayName"], f"/api/images/{pid}?v=0")
    engine.apply_ops(result.ops)
    after = engine.search([image], k=1)[0][0]
    assert (after.id, after.product["productDisplayName"], after.product["image_url"]) == \
        (pid, "New dress", f"/api/images/{pid}?v={sha[:16]}")


def test_an_index_without_cached_vectors_encodes_the_stored_image(synthetic_catalog, tmp_path, built_workdir):
    import shutil

    from imageretrieval.engine import RetrievalEngine

    workdir = tmp_path / "wd"
    shutil.copytree(built_workdir, workdir)
    settings = make_settings(synthetic_catalog, workdir)
    catalog = LiveCatalog(synthetic_catalog, workdir)  # a writer that computed no vectors (e.g. no model loaded)
    image = new_image(4242, "Handbags", "Pink", size=(120, 160))
    catalog.commit([Write("add", 900020, {**FIELDS, "articleType": "Handbags"},
                          catalog.blobs.put(normalized_jpeg(image)))])
    engine = RetrievalEngine(settings, "tiny")
    assert engine.search([image], k=1)[0][0].id == 900020
    assert Path(engine.catalog.image_path(900020)).is_file()


# ----- the command line -------------------------------------------------------------------------
def test_catalog_cli_adds_updates_deletes_lists_and_compacts(synthetic_catalog, built_workdir, tmp_path, capsys):
    import shutil

    from imageretrieval.cli import main
    from imageretrieval.engine import RetrievalEngine

    workdir = tmp_path / "wd"
    shutil.copytree(built_workdir, workdir)
    flags = ["--workdir", str(workdir), "--dataset-root", str(synthetic_catalog)]
    images = tmp_path / "new"
    images.mkdir()
    pictures = {900200 + i: new_image(7000 + i, "Shirts", "Blue", size=(120, 160)) for i in range(3)}
    for pid, data in pictures.items():
        (images / f"{pid}.png").write_bytes(data)
    rows = tmp_path / "rows.csv"
    rows.write_text("id,productDisplayName,articleType,baseColour,year\n" +
                    "".join(f'{pid},"Shirt, blue {pid}",Shirts,Blue,2025\n' for pid in pictures))
    styles_before = (synthetic_catalog / "styles.csv").read_bytes()

    assert main(["catalog", "add", "--styles", str(rows), "--images", str(images), *flags]) == 0
    out = capsys.readouterr().out
    assert "3 added; indexes updated: tiny, tiny2" in out
    assert main(["catalog", "add", "--styles", str(rows), "--images", str(images), *flags]) == 0
    assert "3 unchanged; indexes updated: none" in capsys.readouterr().out  # idempotent
    assert main(["catalog", "update", "--id", "900200", "--set", "baseColour=Navy Blue", *flags]) == 0
    assert "1 updated" in capsys.readouterr().out
    assert main(["catalog", "delete", "--id", "900201", *flags]) == 0
    assert main(["catalog", "delete", "--id", "900201", *flags]) == 2
    assert "unknown product id 900201" in capsys.readouterr().err
    assert main(["catalog", "update", "--id", "900200", "--set", "colour=red", *flags]) == 2
    assert "unknown field" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("id,productDisplayName,articleType\n900300,Tee, green,Tshirts\n")
    assert main(["catalog", "add", "--styles", str(bad), "--images", str(images), *flags]) == 2
    assert "line 2" in capsys.readouterr().err
    missing = tmp_path / "missing.csv"
    missing.write_text("id,productDisplayName,articleType\n900301,Tee,Tshirts\n")
    assert main(["catalog", "add", "--styles", str(missing), "--images", str(images), *flags]) == 2
    assert "no image" in capsys.readouterr().err
    # a load whose last row clashes with an existing product writes nothing at all (checked up front)
    (images / "900310.png").write_bytes(new_image(7100, "Shirts", "Blue", size=(120, 160)))
    clash = tmp_path / "clash.csv"
    clash.write_text("id,productDisplayName,articleType,baseColour,year\n900310,New shirt,Shirts,Blue,2025\n"
                     '900202,"Shirt, blue 900202",Shirts,Red,2025\n')
    assert main(["catalog", "add", "--styles", str(clash), "--images", str(images), *flags]) == 2
    assert "900202 already exists with other data" in capsys.readouterr().err
    assert LiveCatalog(synthetic_catalog, workdir).current(900310) is None
    assert main(["catalog", "update", "--styles", str(rows), "--set", "baseColour=Red", *flags]) == 2
    assert "--set changes the products named by --id" in capsys.readouterr().err  # not silently ignored

    assert main(["catalog", "list", "--since", "0", "--json", *flags]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["action"], r["id"]) for r in listed][-2:] == [("put", 900200), ("deleted", 900201)]

    settings = make_settings(synthetic_catalog, workdir)
    engine = RetrievalEngine(settings, "tiny")
    assert engine.search([pictures[900202]], k=1)[0][0].id == 900202
    assert engine.product(900200)["baseColour"] == "Navy Blue"
    assert main(["index", "--compact", "--model", "tiny", *flags]) == 0
    assert "compacted at catalog seq 3" in capsys.readouterr().out
    compacted = RetrievalEngine(settings, "tiny")
    assert compacted.live.state.n_growing == 0 and compacted.live.state.size == engine.live.state.size
    assert compacted.search([pictures[900202]], k=1)[0][0].id == 900202
    assert 900201 not in compacted.live.state.row_of
    (tmp_path / "q.png").write_bytes(pictures[900202])
    assert main(["search", "--model", "tiny", "--image", str(tmp_path / "q.png"), "--top-k", "1", "--json", *flags]) == 0
    hit = json.loads(capsys.readouterr().out)["results"][0]
    assert hit["id"] == 900202 and Path(hit["image_path"]) == LiveCatalog(synthetic_catalog, workdir).image_path(900202)
    assert (synthetic_catalog / "styles.csv").read_bytes() == styles_before
    assert main(["catalog", "list", "--since", "0", *flags]) == 0
    assert "(compacted)" in capsys.readouterr().out


def test_a_bulk_load_keeps_the_chunks_before_a_broken_image_and_a_rerun_finishes_it(
        synthetic_catalog, built_workdir, tmp_path, monkeypatch):
    """The CLI's pipelined load: images decoded ahead of the encoder, one transaction per chunk; a broken
    image stops the load at its chunk (those before it stay), and each product gets the vector a search
    with its stored file gets."""
    import shutil

    from imageretrieval.engine import RetrievalEngine
    from imageretrieval.images import ImageDecodeError, open_image
    from imageretrieval.live import offline

    workdir = tmp_path / "wd"
    shutil.copytree(built_workdir, workdir)
    settings = make_settings(synthetic_catalog, workdir)
    monkeypatch.setattr(offline, "CHUNK", 3)
    monkeypatch.setattr(offline, "ENCODE_BATCH", 2)
    folder = tmp_path / "new"
    folder.mkdir()
    ids = [900400 + i for i in range(8)]
    pictures = {pid: new_image(7200 + i, "Shirts", "Blue", size=(120, 160)) for i, pid in enumerate(ids)}
    for pid, data in pictures.items():
        (folder / f"{pid}.png").write_bytes(data)
    broken = folder / f"{ids[4]}.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    writes = [offline.ProductWrite("add", pid, dict(FIELDS, productDisplayName=f"Shirt {pid}"),
                                   offline.find_image(folder, pid)) for pid in ids]

    with pytest.raises(ImageDecodeError, match=str(ids[4])):
        offline.write_products(settings, writes, progress=False)
    catalog = LiveCatalog(synthetic_catalog, workdir)
    assert [pid for pid in ids if catalog.current(pid) is not None] == ids[:3]  # the first chunk only

    broken.write_bytes(pictures[ids[4]])
    changes, models = offline.write_products(settings, writes, progress=False)
    assert [(c.action, c.id) for c in changes] == [("unchanged", pid) for pid in ids[:3]] + [
        ("added", pid) for pid in ids[3:]]
    assert models == ["tiny", "tiny2"]
    for name in models:
        engine = RetrievalEngine(settings, name)
        for pid in ids:
            stored = open_image(engine.catalog.image_path(pid).read_bytes(), min_size=engine.decode_size)
            np.testing.assert_allclose(engine.vector_of(pid), engine.encode([stored])[0], atol=1e-5)
            assert engine.search([stored], k=1)[0][0].id == pid


def test_a_full_disk_stops_a_bulk_load_at_its_chunk_with_the_fix(synthetic_catalog, built_workdir, tmp_path,
                                                                 monkeypatch):
    import errno
    import shutil

    from imageretrieval.live import offline
    from imageretrieval.live.blobs import ImageBlobs
    from imageretrieval.live.store import StorageFullError

    workdir = tmp_path / "wd"
    shutil.copytree(built_workdir, workdir)
    monkeypatch.setattr(offline, "CHUNK", 3)
    monkeypatch.setattr(offline, "ENCODE_BATCH", 1)
    folder = tmp_path / "new"
    folder.mkdir()
    ids = [900500 + i for i in range(7)]
    for i, pid in enumerate(ids):
        (folder / f"{pid}.png").write_bytes(new_image(7300 + i, "Shirts", "Blue", size=(120, 160)))
    real_put, calls = ImageBlobs.put, []

    def put(self, jpeg):  # the disk fills up at the fourth image: the second chunk's first
        calls.append(1)
        if len(calls) >= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(self, jpeg)

    monkeypatch.setattr(ImageBlobs, "put", put)
    writes = [offline.ProductWrite("add", pid, dict(FIELDS, productDisplayName=f"Shirt {pid}"),
                                   offline.find_image(folder, pid)) for pid in ids]
    with pytest.raises(StorageFullError, match="free space"):
        offline.write_products(make_settings(synthetic_catalog, workdir), writes, progress=False)
    catalog = LiveCatalog(synthetic_catalog, workdir)
    assert [pid for pid in ids if catalog.current(pid) is not None] == ids[:3]
