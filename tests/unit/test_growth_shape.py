"""Hypothesis 1 against its alternatives: the shipped check, on the geometry of synthetic samples, must
fail where variance grows polynomially and pass where it grows exponentially, with the per-layer scatter
real models show (σ = 0.3 in log; SmolLM2's own is 0.3–0.5); a layer that cannot carry the trend is left
out, named, and cannot flip the verdict."""

from __future__ import annotations

import numpy as np
import pytest

from geomcheck import thresholds
from geomcheck.checks.test_variance_grows import test_variance_grows as check_variance_grows
from geomcheck.stats.geometry import Geometry, geometry_from_samples
from geomcheck.stats.trends import degenerate_layers, growth_fit, growth_shape

SHIPPED = thresholds.shipped()["variance_grows"]
SCATTER = 0.3  # standard deviation of log(variance) about the curve, drawn once per layer and run
PROMPTS, FEATURES = 64, 16


def geometry_of(log_variance: np.ndarray, seed: int, scatter: float = SCATTER) -> Geometry:
    """Both prompt sets drawn with per-feature variance exp(log_variance + scatter) at each layer."""
    rng = np.random.default_rng(seed)
    layers = log_variance.size
    scale = np.exp((log_variance + scatter * rng.standard_normal(layers)) / 2)[None, :, None]
    samples = {which: {"mid": scale * rng.standard_normal((PROMPTS, layers, FEATURES))} for which in ("harmful", "harmless")}
    return geometry_from_samples(samples, n_boot=0)


def passes(geometry: Geometry) -> tuple[bool, str]:
    recorded: list[str] = []
    try:
        check_variance_grows(geometry, "mid", SHIPPED, None, lambda text, control=None: recorded.append(text))
    except AssertionError as failure:
        return False, str(failure)
    return True, recorded[0]


def power_law(layers: int, p: float) -> np.ndarray:
    return p * np.log1p(np.arange(layers))


def exponential(layers: int, rate: float) -> np.ndarray:
    return np.arange(layers) * np.log(rate)


def test_r2_alone_cannot_tell_the_power_from_the_exponential():
    """Why the check compares fits: a log-linear fit's R² on (l+1)^p is the same for every p, above min_r2."""
    r2 = [growth_fit(np.exp(power_law(30, p))).r2 for p in (1, 2, 3)]
    np.testing.assert_allclose(r2, r2[0])
    assert r2[0] > SHIPPED["min_r2"]


@pytest.mark.parametrize("layers", [16, 30, 64])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_power_law_growth_fails(layers, p):
    """(l+1)^p with scatter: at most 1 of 15 runs passes."""
    outcomes = [passes(geometry_of(power_law(layers, p), seed)) for seed in range(15)]
    passed = sum(ok for ok, _ in outcomes)
    print(f"(l+1)^{p}, {layers} layers: {passed} of 15 runs pass")
    assert passed <= 1
    failure = next(text for ok, text in outcomes if not ok)
    assert "ΔAIC" in failure and "exponential beats the power law" in failure


@pytest.mark.parametrize(("layers", "rate"), [(16, 1.3), (30, 1.15), (30, 1.3), (64, 1.15), (64, 1.3)])
def test_exponential_growth_passes(layers, rate):
    """×rate per layer with scatter: at least 9 of 10 runs pass. Not ×1.15 over 16 layers: there the growth
    (2.1 in log) is of the scatter's size, R² falls below min_r2 in about half the runs per set (3 of 10
    pass, measured 2026-12-03): below the check's resolution, and min_r2 is not loosened for it."""
    passed = sum(passes(geometry_of(exponential(layers, rate), 100 + seed))[0] for seed in range(10))
    print(f"×{rate}/layer, {layers} layers: {passed} of 10 runs pass")
    assert passed >= 9


@pytest.mark.parametrize("layer_zero", [0.0, 1e-4])
def test_one_degenerate_layer_is_named_and_flips_no_verdict(layer_zero):
    """Layer 0 with zero or template-degenerate variance (every prompt's input the same there) is left out
    and named; it leaves an exponential passing and a power law failing (on SmolLM2 it alone turned `mid`'s
    ΔAIC from −45 to +12)."""
    for curve, expected in ((exponential(30, 1.3), True), (power_law(30, 2), False)):
        geometry = geometry_of(curve, seed=7, scatter=0.0)
        for prompt_set in ("harmful", "harmless"):
            geometry.values[f"mid/var_mean/{prompt_set}"][0] *= layer_zero
        ok, text = passes(geometry)
        assert ok is expected
        assert "excluded: layer 0" in text or "excluded (zero or template-degenerate variance): layer 0" in text


def test_degenerate_layers_are_the_leading_ones_below_the_jump():
    values = np.array([0.0, 1e-5, 1e-3, 2e-3, 1e-5, 8e-3])
    assert degenerate_layers(values, 10.0) == (0, 1)  # layer 4's dip is inside the trend: an outlier, not degenerate
    assert degenerate_layers(np.array([1.0, 8.0, 27.0]), 10.0) == ()


def test_growth_shape_reports_both_fits_on_noise_free_curves():
    shape = growth_shape(np.exp(power_law(30, 2)), 10.0)
    assert shape.power == pytest.approx(2.0) and shape.power_r2 == pytest.approx(1.0)
    assert shape.delta_aic > 0 and shape.degenerate == ()
    shape = growth_shape(np.exp(exponential(30, 1.3)), 10.0)
    assert shape.exponential.rate == pytest.approx(1.3) and shape.delta_aic < 0


def test_on_few_layers_a_power_law_that_wins_on_aic_still_fails_on_the_nested_interval():
    """Six layers of (l+1)^1.5 with scatter: in some runs the exponential has the smaller residuals (ΔAIC ≤ 0,
    a coin flip where both fit), yet the exponential term is not resolved beside the power law's, so the
    check fails every run, naming the nested interval."""
    won_on_aic = []
    for seed in range(30):
        geometry = geometry_of(power_law(6, 1.5), seed)
        shapes = [growth_shape(geometry.curve("mid", "var_mean", s), SHIPPED["degenerate_jump"]) for s in ("harmful", "harmless")]
        if all(shape.delta_aic <= SHIPPED["max_delta_aic"] for shape in shapes):
            won_on_aic.append(passes(geometry))
    print(f"6 layers of (l+1)^1.5: {len(won_on_aic)} of 30 runs win on ΔAIC, {sum(ok for ok, _ in won_on_aic)} pass")
    assert won_on_aic, "no run where ΔAIC alone would pass: the case this test guards is not exercised"
    assert not any(ok for ok, _ in won_on_aic)
    assert all("nested exp(b)" in text for _, text in won_on_aic)
