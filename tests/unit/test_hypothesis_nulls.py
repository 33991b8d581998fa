"""Each shipped hypothesis check against its null: data where the hypothesis is false must fail it."""

import importlib.util
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from geomcheck.stats.geometry import geometry_from_samples

CHECKS = Path(__file__).resolve().parents[2] / "checks"


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
        check(geometry, "mid", _shipped_thresholds("cosine_falls"), None, lambda text, control=None: None)


def _two_sets(true_cosine: np.ndarray, n: int = 64, d: int = 64, noise: float = 0.02, seed: int = 0):
    """Two sets whose means (norm 8) have cosine ``true_cosine[layer]``; isotropic noise growing ×1.4 per
    layer, as the variance does in real models (at the last of 12 layers tr(Σ)/n is ~1% of ‖μ‖²)."""
    rng = np.random.default_rng(seed)
    u, v = np.linalg.qr(rng.normal(size=(d, 2)))[0].T
    sine = np.sqrt(1.0 - true_cosine**2)
    one = 8.0 * np.broadcast_to(u, (len(true_cosine), d))
    other = 8.0 * (true_cosine[:, None] * u + sine[:, None] * v)
    scale = noise * 1.4 ** np.arange(len(true_cosine))[:, None]
    draw = lambda mean: mean + scale * rng.normal(size=(n, *mean.shape))  # noqa: E731
    return {"harmful": {"mid": draw(one)}, "harmless": {"mid": draw(other)}}


def _verdict(samples) -> str | None:
    check = _check("test_cosine_falls", "test_cosine_falls")
    try:
        check(geometry_from_samples(samples, n_boot=200, seed=0), "mid", _shipped_thresholds("cosine_falls"), None, lambda text, control=None: None)
    except AssertionError as failure:
        return str(failure)
    return None


@pytest.mark.slow
def test_cosine_falls_fails_when_the_true_cosine_is_constant():
    """The true cosine is 0.95 at every layer: the plain cosine of sample means still falls with depth (noise
    grows) and 1 − cos beats the shuffled-label level (the means do differ), so only the trend of the
    debiased cosine can tell. It must fail in at least 9 of 10 independent runs."""
    runs = [_two_sets(np.full(12, 0.95), seed=seed) for seed in range(10)]
    plain = [geometry_from_samples(samples, n_boot=0).curve("mid", "cosine") for samples in runs]
    assert all(cosine[-1] < cosine[0] for cosine in plain)  # the artifact the old trend clause passed on
    failures = [_verdict(samples) for samples in runs]
    print(f"constant true cosine: {sum(f is not None for f in failures)} of 10 runs fail test_cosine_falls")
    assert sum(f is not None for f in failures) >= 9
    assert all("shuffled labels" not in f for f in failures if f)  # it fails for the trend, not the null


@pytest.mark.slow
def test_cosine_falls_passes_when_the_true_cosine_falls():
    for seed in range(3):
        assert _verdict(_two_sets(np.linspace(0.99, 0.85, 12), seed=seed)) is None
