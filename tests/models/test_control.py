"""The untrained twin (``--geomcheck-control random-init``): same architecture and tokenizer, fresh weights
seeded by ``--seed``, built from the config, cached apart from the checkpoint, reported beside it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from geomcheck import options
from geomcheck.run.pipeline import ModelRun, RunOptions

ROOT = Path(__file__).resolve().parents[2]


def run_options(tmp_path: Path, **overrides) -> RunOptions:
    """Seed 3: the tiny Llama itself is a random init of seed 0, which a twin of seed 0 would reproduce."""
    return RunOptions(**{"cache_dir": tmp_path / "cache", "max_prompts": 6, "n_boot": 10, "progress": False, "seed": 3, **overrides})


def test_the_twin_has_the_checkpoints_shape_and_fresh_seeded_weights(tmp_path, tiny_llama_dir):
    checkpoint = ModelRun(str(tiny_llama_dir), run_options(tmp_path))
    twin = ModelRun(str(tiny_llama_dir), run_options(tmp_path), control="random-init")
    trained, fresh = checkpoint.loaded.model.state_dict(), twin.loaded.model.state_dict()
    assert trained.keys() == fresh.keys() and all(trained[k].shape == fresh[k].shape for k in trained)
    assert not torch.equal(trained["layers.0.self_attn.o_proj.weight"], fresh["layers.0.self_attn.o_proj.weight"])
    again = ModelRun(str(tiny_llama_dir), run_options(tmp_path), control="random-init").loaded.model.state_dict()
    assert all(torch.equal(fresh[k], again[k]) for k in fresh)  # seeded: the same twin every time
    other_seed = ModelRun(str(tiny_llama_dir), run_options(tmp_path, seed=4), control="random-init").loaded.model.state_dict()
    assert not torch.equal(fresh["layers.0.self_attn.o_proj.weight"], other_seed["layers.0.self_attn.o_proj.weight"])
    assert twin.identity["control"] == "random-init" and "control" not in checkpoint.identity


def test_the_twin_is_cached_apart_from_the_checkpoint(tmp_path, tiny_llama_dir):
    checkpoint = ModelRun(str(tiny_llama_dir), run_options(tmp_path)).geometry
    first = ModelRun(str(tiny_llama_dir), run_options(tmp_path), control="random-init")
    values = first.geometry.values
    assert first.loads == 1  # not the checkpoint's entry
    assert not np.allclose(values["mid/var_mean/harmful"], checkpoint.values["mid/var_mean/harmful"])
    second = ModelRun(str(tiny_llama_dir), run_options(tmp_path), control="random-init")
    np.testing.assert_array_equal(second.geometry.values["mid/var_mean/harmful"], values["mid/var_mean/harmful"])
    assert second.loads == 0


def test_an_unknown_control_is_refused_naming_the_choices():
    with pytest.raises(options.OptionError, match=r"--geomcheck-control \(ini geomcheck_control\) = 'trained' is not valid: choose one of random-init"):
        options.validate_settings({"geomcheck-control": "trained"})


@pytest.mark.usefixtures("opted_in")
def test_the_summary_shows_the_twin_beside_each_figure(pytester: pytest.Pytester, tiny_llama_dir, tmp_path):
    """Every hypothesis (and the updates' mechanism) reports the twin's figure, computed as the checkpoint's."""
    hypotheses = ("test_variance_grows.py", "test_streams_separate.py", "test_cosine_falls.py", "test_weights_share_directions.py", "test_updates_share_directions.py")
    for check in hypotheses:
        shutil.copy(ROOT / "checks" / check, pytester.path / check)
    result = pytester.runpytest("--model", str(tiny_llama_dir), "--max-prompts", "6", "--n-boot", "40", "--seed", "3", "--geomcheck-control", "random-init",
                                "--geomcheck-cache-dir", str(tmp_path / "cache"), "-p", "no:cacheprovider")
    text = result.stdout.str()
    assert "[failed] || untrained twin: harmful exponential ×" in text  # H1: the tiny random Llama grows as a power law
    assert "|| untrained twin: harmful attention's share " in text
    twin = {line.split()[1]: line.partition("|| untrained twin: ")[2] for line in text.splitlines() if "|| untrained twin: " in line}
    assert twin["cosine_falls"].startswith("debiased ρ=") and "× the shuffled-label level" in twin["cosine_falls"]
    assert twin["weights_share_directions"].startswith("attn_out ") and "; mlp_out " in twin["weights_share_directions"]
    assert twin["updates_share_directions"].startswith("attention mid − pre: mean cosine across layers ")
    checkpoint = {line.split()[1]: line.partition(" || ")[0] for line in text.splitlines() if "|| untrained twin: " in line}
    assert twin["weights_share_directions"] not in checkpoint["weights_share_directions"]  # the twin's own weights, not the checkpoint's


def test_a_threshold_can_ask_that_the_effect_exceed_the_twins():
    """With the twin equal to the checkpoint (no effect of training), the over-control thresholds fail
    both checks; off (0, the shipped default), the twin is only reported."""
    from geomcheck import thresholds
    from geomcheck.checks.test_streams_separate import test_streams_separate
    from geomcheck.checks.test_variance_grows import test_variance_grows
    from test_check_verdicts import PRE_LN, crafted, verdict

    geometry, shipped = crafted(growth=1.3, mid_over_pre=1.5), thresholds.shipped()
    recorded, failure = verdict(test_variance_grows, geometry, "mid", shipped["variance_grows"], geometry)
    assert failure is None
    _, failure = verdict(test_variance_grows, geometry, "mid", {**shipped["variance_grows"], "min_rate_over_control": 1.1}, geometry)
    assert failure is not None and "the growth holds for any network of this shape" in failure
    _, failure = verdict(test_streams_separate, geometry, {**shipped["streams_separate"], "min_share_over_control": 0.1}, geometry, PRE_LN)
    assert failure is not None and "it holds for any network of this shape" in failure
