"""Each shipped hypothesis check against its null: data where the hypothesis is false must fail it."""

import importlib.util
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from geomcheck.geometry import geometry_from_samples

CHECKS = Path(__file__).resolve().parent.parent / "checks"


def _check(module: str, name: str):
    spec = importlib.util.spec_from_file_location(module, CHECKS / f"{module}.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return getattr(loaded, name)


def _shipped_thresholds(check: str) -> dict:
    text = resources.files("geomcheck.data").joinpath("thresholds.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)[check]


def _one_distribution_growing_variance(n: int, layers: int = 12, d: int = 64, seed: int = 0):
    """Both sets drawn from the *same* distribution: a shared mean, noise growing ×1.4 per layer."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=d)
    scale = 0.1 * 1.4 ** np.arange(layers)[:, None]
    draw = lambda: mean + scale * rng.normal(size=(n, layers, d))  # noqa: E731
    return {"harmful": {"mid": draw()}, "harmless": {"mid": draw()}}


def test_cosine_falls_fails_when_both_sets_come_from_one_distribution():
    """Sampling noise alone pulls the cosine of *sample* means toward 0 as the variance grows: the
    plain cosine falls with depth although the true means are identical. The check must see that the
    fall is no larger than with shuffled labels, and fail."""
    geometry = geometry_from_samples(_one_distribution_growing_variance(32), n_boot=50, seed=0)
    cosine = geometry.curve("mid", "cosine")
    assert cosine[-1] < cosine[0] - 0.05  # the artifact is there: the plain cosine does fall
    check = _check("test_cosine_falls", "test_cosine_falls")
    with pytest.raises(AssertionError, match="shuffled"):
        check(geometry, "mid", _shipped_thresholds("cosine_falls"), lambda text: None)
