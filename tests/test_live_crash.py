"""The live catalog under faults, with a real server process: kill -9 mid-write, and a full disk."""

from __future__ import annotations

import shutil

import pytest

from benchmarks.live import Client, Server, crash_trials, new_products, write_key

from .conftest import make_settings


@pytest.fixture()
def workdir(built_workdir, tmp_path):
    target = tmp_path / "wd"
    shutil.copytree(built_workdir, target)
    return target


def test_no_acknowledged_write_is_lost_when_the_server_is_killed(synthetic_catalog, workdir):
    """SIGKILL at random points of a stream of adds; after a restart every acknowledged product is there
    and found first by its own photo, and nothing that was never sent appeared."""
    settings = make_settings(synthetic_catalog, workdir)
    report = crash_trials(settings, "tiny,tiny2", trials=2, seed=1, per_trial=40, kill_window_s=(0.2, 1.2),
                          timeout=120)
    assert report.trials == 2 and report.acknowledged > 0
    assert report.ok, report


def test_a_full_disk_refuses_the_write_and_keeps_everything_acknowledged(synthetic_catalog, workdir):
    settings = make_settings(synthetic_catalog, workdir)
    key = write_key(workdir)
    products = new_products(settings, 120, 20_000_000)
    limit = 48 * 1024  # no file of the server may grow past this: the journal fills it after some writes
    server = Server(settings, "tiny", 120, tag="disk-full", max_file_bytes=limit, extra_env={"LOG_LEVEL": "WARNING"})
    client = Client(server.base, key)
    acked, refused = [], None
    try:
        for p in products:
            answer = client.add(p)
            if answer.status_code == 201:
                acked.append(p.id)
                continue
            refused = (p, answer)
            break
        assert refused is not None, "the journal never reached the limit"
        product, answer = refused
        assert answer.status_code == 507 and "disk" in answer.json()["detail"]
        assert not client.present(product.id)  # nothing of it applied
        assert client.search(product.image, k=3)[1][0] != product.id
        assert client.search(products[0].image, k=1)[1] == [products[0].id]  # still serving
    finally:
        client.close()
        server.stop()
    server = Server(settings, "tiny", 120, tag="disk-full")  # space again: everything acknowledged is there
    client = Client(server.base, key)
    try:
        assert len(acked) > 5 and all(client.present(pid) for pid in acked)
        assert not client.present(refused[0].id)
        assert client.add(refused[0]).status_code == 201  # and writes work again
        assert client.search(refused[0].image, k=1)[1] == [refused[0].id]
    finally:
        client.close()
        server.stop()
