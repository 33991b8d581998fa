"""Checkpoints by any name: a hub id, a pinned revision (from a Hugging Face cache laid out in a temporary
folder, offline) and a GGUF file (the one the embedded default's package installs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import SHA_A, SHA_B
from geomcheck.run import models
from geomcheck.run import registry
from geomcheck.run.pipeline import ModelRun, RunOptions

def _first_weight(spec: registry.ModelSpec) -> np.ndarray:
    loaded = models.load(spec)
    return next(iter(loaded.model.state_dict().values())).numpy()


def test_a_hub_id_loads_offline_from_the_local_cache_with_its_family_and_commit(hub_cache: Path):
    spec = registry.resolve("acme/tiny")
    assert (spec.name, spec.hub_id, spec.revision, spec.commit) == ("acme/tiny", "acme/tiny", "main", SHA_A)
    assert spec.family == "llama" and spec.chat_template
    assert spec.source == "acme/tiny"  # the cache key names the hub id, not this machine's cache folder
    assert models.load(spec).model.config.num_hidden_layers == 4


def test_a_revision_picks_its_commit_by_branch_tag_or_sha(hub_cache: Path):
    by_tag, by_sha, main = (registry.resolve(name) for name in ("acme/tiny@v2", f"acme/tiny@{SHA_B}", "acme/tiny@main"))
    assert (by_tag.name, by_tag.hub_id, by_tag.revision, by_tag.commit) == ("acme/tiny@v2", "acme/tiny", "v2", SHA_B)
    assert by_sha.commit == SHA_B and main.commit == SHA_A
    np.testing.assert_array_equal(_first_weight(by_tag), _first_weight(by_sha))
    assert not np.array_equal(_first_weight(by_tag), _first_weight(main))


def test_the_commit_enters_the_identity_so_two_revisions_never_share_a_cache_entry(hub_cache: Path):
    identities = [ModelRun(name, RunOptions()).identity for name in ("acme/tiny@v2", "acme/tiny")]
    assert identities[0]["revision"] == SHA_B and identities[1]["revision"] == SHA_A
    assert identities[0]["weights"] == f"git:{SHA_B}" and identities[1]["weights"] == f"git:{SHA_A}"


def test_a_hub_id_missing_from_the_cache_offline_says_so_and_how_to_fix_it(hub_cache: Path):
    with pytest.raises(registry.ModelLoadError) as info:
        registry.resolve("acme/absent@v1")
    message = str(info.value)
    assert "'acme/absent' at revision 'v1' offline" in message
    assert "does not hold it" in message and "hf download acme/absent --revision v1" in message


def test_a_cached_revision_without_weights_is_not_taken_for_a_checkpoint(hub_cache: Path):
    snapshot = hub_cache / "models--acme--tiny" / "snapshots" / SHA_A
    for weights in snapshot.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(registry.ModelLoadError, match="has this revision but without weights"):
        registry.resolve("acme/tiny")


def test_unknown_names_list_every_way_of_naming_a_checkpoint():
    with pytest.raises(registry.UnknownModelError, match="ORG/NAME@REVISION; a .gguf file"):
        registry.resolve("not a model")


def test_a_missing_gguf_file_is_named(tmp_path: Path):
    with pytest.raises(registry.UnknownModelError, match="does not exist"):
        registry.resolve(str(tmp_path / "absent.gguf"))


def test_a_gguf_file_gives_the_statistics_of_the_registry_entry_it_ships_in(tmp_path: Path):
    """The embedded default is this very file: by path it must measure exactly the same geometry."""
    shipped = registry.resolve("smollm2-135m")
    path = models.package_dir(shipped) / shipped.gguf_file
    spec = registry.resolve(str(path))
    assert (spec.name, spec.family, spec.chat_template, spec.gguf_file) == (str(path), "llama", True, path.name)
    options = RunOptions(max_prompts=3, batch_size=3, n_boot=0, cache_dir=tmp_path, progress=False)
    by_path, by_name = ModelRun(str(path), options), ModelRun("smollm2-135m", options)
    assert by_path.geometry.values.keys() == by_name.geometry.values.keys()
    for key, value in by_name.geometry.values.items():
        np.testing.assert_allclose(by_path.geometry.values[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
    assert [p.name for p in (tmp_path / "converted").iterdir() if p.is_dir()].count("smollm2-135m-0.1.2") == 1


def test_a_gguf_file_replaced_at_the_same_path_is_another_identity(tmp_path: Path):
    import os

    shipped = registry.resolve("smollm2-135m")
    path = tmp_path / "model.gguf"
    data = bytearray((models.package_dir(shipped) / shipped.gguf_file).read_bytes())
    path.write_bytes(data)
    options = RunOptions(cache_dir=tmp_path / "cache")
    before = ModelRun(str(path), options).identity
    os.utime(path, ns=(1, 1))  # a touch: other mtime, same content
    assert ModelRun(str(path), options).identity == before
    data[-1] ^= 1  # another checkpoint lands at the same path: one byte of the last tensor differs
    path.write_bytes(data)
    after = ModelRun(str(path), options).identity
    assert before["source"] == after["source"] and before["weights"] != after["weights"]
