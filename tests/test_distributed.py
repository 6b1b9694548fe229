"""Extraction on a real local Ray (2 CPUs): the same features as local extraction, resumable by chunks."""

from __future__ import annotations

import numpy as np
import pytest

from imageretrieval.catalog import load_catalog
from imageretrieval.distributed import LOCAL, ActorSpec, init_ray, ray_encoder
from imageretrieval.extract import extract_features
from imageretrieval.models import create_model
from imageretrieval.preprocess import preprocess_for

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    init_ray(LOCAL, num_cpus=2)
    yield
    ray.shutdown()


def test_ray_extraction_equals_local_and_resumes(local_ray, synthetic_catalog, built_workdir, tmp_path):
    catalog = load_catalog(synthetic_catalog)
    ids = np.asarray(catalog.ids[:90])
    paths = [catalog.image_path(i) for i in ids]
    paths[7] = tmp_path / "missing.jpg"  # an unreadable image: a NaN row, as locally
    model = create_model("tiny", workdir=built_workdir)
    preprocess = preprocess_for(model.config)
    common = dict(preprocess=preprocess, batch_size=8, num_workers=0, device="cpu", precision="fp32",
                  chunk_size=32, progress=False, runtime="onnxruntime", workdir=built_workdir)
    local = extract_features(model, paths, ids, tmp_path / "local", **common)

    spec = ActorSpec("tiny", str(built_workdir), preprocess, "onnxruntime", "fp32", "cpu", threads=1)
    encode = ray_encoder(spec, address=None, actors=2, batch_size=8)
    calls = {"batches": 0}

    def interrupted(todo):
        for batch in encode(todo):
            calls["batches"] += 1
            if calls["batches"] == 5:  # 40 rows in: chunk 0 (32 rows) is on disk, chunk 1 is not
                raise KeyboardInterrupt
            yield batch

    out = tmp_path / "ray"
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, paths, ids, out, encode=interrupted, **common)
    assert sorted(p.name for p in (out / "chunks").iterdir()) == ["chunk_00000.npy"]

    seen = []

    def counting(todo):
        seen.append(len(todo))
        yield from encode(todo)

    resumed = extract_features(model, paths, ids, out, encode=counting, **common)
    assert seen == [90 - 32]  # only the missing chunks were encoded again
    assert np.isnan(resumed.features[7]).all() and np.isnan(local.features[7]).all()
    valid = ~np.isnan(local.features).any(axis=1)
    np.testing.assert_allclose(resumed.features[valid], local.features[valid], atol=1e-5)
    np.testing.assert_array_equal(resumed.ids, local.ids)


def test_extract_cli_on_ray_matches_the_cached_local_features(local_ray, synthetic_catalog, built_workdir, tmp_path,
                                                               capsys):
    import shutil

    from imageretrieval.cli import main
    from imageretrieval.extract import feature_dir, load_features

    workdir = tmp_path / "wd"
    shutil.copytree(built_workdir, workdir)
    local = load_features(feature_dir(workdir, "tiny", "fashion-all-all"))
    shutil.rmtree(workdir / "features")  # nothing to copy from: every row is encoded on Ray
    flags = ["--workdir", str(workdir), "--dataset-root", str(synthetic_catalog)]
    assert main(["extract", "--model", "tiny", "--ray", *flags]) == 0
    assert "96 feature vectors" in capsys.readouterr().out
    remote = load_features(feature_dir(workdir, "tiny", "fashion-all-all"))
    np.testing.assert_array_equal(remote.ids, local.ids)
    np.testing.assert_allclose(remote.features, local.features, atol=1e-5)


def test_the_processes_of_a_failed_local_start_can_be_stopped(tmp_path):
    """A start that times out leaves Ray's GCS and raylet running (ray.shutdown() does not know them):
    init_ray stops this process' Ray processes before it starts again."""
    import os
    import subprocess
    import sys

    script = """
import os, ray
from pathlib import Path
from imageretrieval.distributed import _stop_local_ray_processes

def ray_children():
    found = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            stat = (cmd.parent / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == os.getpid() and "/ray/" in cmd.read_bytes().decode(errors="replace"):
                found.append(int(cmd.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return found

import subprocess, sys, time
bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "/ray/not-ray"])
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
before = ray_children()
_stop_local_ray_processes(Path(ray.__file__).parent)
time.sleep(1)
print(len(before), len(ray_children()), bystander.poll() is None)
bystander.kill()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=tmp_path,
                         env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})
    assert out.returncode == 0, out.stderr[-2000:]
    before, after, bystander_alive = out.stdout.strip().splitlines()[-1].split()
    assert int(before) >= 3 and int(after) == 1 and bystander_alive == "True"  # only Ray's own went
