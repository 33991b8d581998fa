"""Captures elsewhere: each model as a Ray task on a local Ray instance (its records equal the in-process
ones, byte for byte), and one GPU per pytest-xdist worker."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import save_tiny_llama
from geomcheck.run import distributed, record
from geomcheck.run.pipeline import ModelRun, RunOptions


def test_each_xdist_worker_gets_its_own_gpu_and_explicit_devices_stay():
    assert [distributed.worker_device("cuda", f"gw{k}", 4) for k in range(6)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert distributed.worker_device("cuda", None, 4) == "cuda"  # no xdist
    assert distributed.worker_device("cuda:2", "gw1", 4) == "cuda:2"  # an explicit index is the user's
    assert distributed.worker_device("cpu", "gw1", 0) == "cpu"
    assert distributed.gpus_per_task(None, "cuda") == 1.0 and distributed.gpus_per_task(None, "cpu") == 0.0
    assert distributed.gpus_per_task(0.5, "cuda") == 0.5
    with pytest.raises(ValueError, match="--geomcheck-ray-gpus = '-1' is not valid"):
        distributed.gpus_option("-1")


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


@pytest.fixture
def local_ray():
    """A small local Ray instance (one CPU, no dashboard), shut down after the test."""
    ray = pytest.importorskip("ray")  # the [ray] extra; `make test` installs it
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_two_tiny_models_captured_as_ray_tasks_give_the_in_process_records(local_ray, pytester, opted_in, tiny_llama_dir, tmp_path):
    models = [str(tiny_llama_dir), str(save_tiny_llama(tmp_path / "tiny-two", seed=1, num_layers=2))]
    in_process = {m: digests(record.serialize(ModelRun(m, RunOptions(cache_dir=tmp_path / "here", max_prompts=4, n_boot=40, progress=False)), m, Path(m).name))
                  for m in models}
    remote_options = RunOptions(cache_dir=tmp_path / "remote", max_prompts=4, n_boot=40, progress=False)  # nothing shared
    found = distributed.capture_all({m: Path(m).name for m in models}, remote_options, "local", None, tmp_path / "records")
    for model in models:
        folder = found[model]
        assert isinstance(folder, Path), folder
        assert digests({p.name: p.read_bytes() for p in folder.iterdir()}) == in_process[model]  # the same record, byte for byte
    assert (tmp_path / "remote" / "activations").is_dir()  # the tasks measured for themselves, in their own cache

    pytester.makepyfile(test_read="def test_read(geometry, weights, activations):\n    pass\n")
    session = pytester.runpytest(*(a for m in models for a in ("--model", m)), "--geomcheck-ray", "local", "--max-prompts", "4", "--n-boot", "40",
                                 "--geomcheck-cache-dir", str(tmp_path / "driver"), "-p", "no:cacheprovider")
    session.assert_outcomes(passed=2)  # the checks ran here, on the records the tasks sent back
    session.stdout.fnmatch_lines(["tiny-llama: model loaded 0× (all from cache)", "tiny-two: model loaded 0× (all from cache)"])
    assert {p.name for p in (pytester.path / "geomcheck-artifacts" / "records").iterdir()} == {"tiny-llama", "tiny-two"}
