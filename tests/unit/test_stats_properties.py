"""Property tests of geomcheck.stats.estimators, tied to the note's change-of-basis view.

A shared orthogonal change of basis of the residual stream must not change a
statistic that describes geometry (the cosine of the means, the total
variance); the max of per-feature variances is basis dependent, and the tests
show hypothesis finds a counter-example for it.
"""

import numpy as np
import pytest
from hypothesis import assume, find, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from geomcheck.stats.resampling import bootstrap
from geomcheck.stats.vocabulary import statistics_from_samples

FAST = settings(deadline=None, max_examples=60)

_FLOATS = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def contrastive_sets(draw, min_samples=2, max_samples=6):
    """Harmful and harmless samples with shared (layers, features)."""
    layers = draw(st.integers(1, 3))
    features = draw(st.integers(2, 5))
    n = draw(st.integers(min_samples, max_samples))
    m = draw(st.integers(min_samples, max_samples))
    P = draw(arrays(np.float64, (n, layers, features), elements=_FLOATS))
    N = draw(arrays(np.float64, (m, layers, features), elements=_FLOATS))
    return P, N


def random_orthogonal(d: int, seed: int) -> np.ndarray:
    """Haar-random orthogonal matrix: QR of a Gaussian with the sign of R's
    diagonal folded into Q, so Q is not biased by the QR convention."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def well_defined_cosine(P: np.ndarray, N: np.ndarray) -> np.ndarray:
    """Layers where both means are far from zero, so the cosine is well
    conditioned and rounding cannot decide the comparison."""
    return (np.linalg.norm(P.mean(axis=0), axis=-1) > 1e-3) & (
        np.linalg.norm(N.mean(axis=0), axis=-1) > 1e-3
    )


@FAST
@given(contrastive_sets(), st.integers(0, 2**32 - 1))
def test_cosine_of_means_is_invariant_under_a_shared_rotation(sets, seed):
    P, N = sets
    mask = well_defined_cosine(P, N)
    assume(mask.any())
    Q = random_orthogonal(P.shape[-1], seed)
    before = statistics_from_samples(P, N)["cosine"]
    after = statistics_from_samples(P @ Q, N @ Q)["cosine"]
    np.testing.assert_allclose(after[mask], before[mask], atol=1e-9)


@FAST
@given(contrastive_sets(), st.floats(1e-2, 1e2), st.floats(1e-2, 1e2))
def test_cosine_of_means_is_invariant_under_positive_scaling(sets, a, b):
    P, N = sets
    mask = well_defined_cosine(P, N)
    assume(mask.any())
    before = statistics_from_samples(P, N)["cosine"]
    after = statistics_from_samples(a * P, b * N)["cosine"]
    np.testing.assert_allclose(after[mask], before[mask], atol=1e-9)


@FAST
@given(contrastive_sets(), st.integers(0, 2**32 - 1))
def test_mean_variance_is_rotation_invariant(sets, seed):
    # The mean of per-feature variances is trace(covariance) / d, and the
    # trace is invariant under a change of orthonormal basis.
    P, N = sets
    Q = random_orthogonal(P.shape[-1], seed)
    before = statistics_from_samples(P, N)
    after = statistics_from_samples(P @ Q, N @ Q)
    scale = 1e-9 * (1.0 + max(np.abs(P).max(), np.abs(N).max()) ** 2)
    for key in ("var_mean/harmful", "var_mean/harmless"):
        np.testing.assert_allclose(after[key], before[key], rtol=1e-9, atol=scale)


def _max_variance_changes(case: tuple[np.ndarray, float]) -> bool:
    """True when rotating the samples changes the max per-feature variance by
    more than rounding could."""
    P, angle = case
    c, s = np.cos(angle), np.sin(angle)
    rotated = P @ np.array([[c, -s], [s, c]])
    before = statistics_from_samples(P, P)["var_max/harmful"]
    after = statistics_from_samples(rotated, rotated)["var_max/harmful"]
    return bool(np.any(np.abs(after - before) > 1e-3 * (1.0 + before)))


@pytest.mark.slow
def test_max_variance_is_not_rotation_invariant():
    # The max picks the coordinate axis with the largest spread, so it depends
    # on the basis: hypothesis must find data and an angle that change it.
    counterexample = find(
        st.tuples(
            arrays(np.float64, (4, 1, 2), elements=_FLOATS),
            st.floats(0.1, 1.5),
        ),
        _max_variance_changes,
        settings=settings(deadline=None, max_examples=500, database=None),
    )
    assert _max_variance_changes(counterexample)


def test_max_variance_of_one_axis_data_rotated_by_45_degrees_halves():
    # Data concentrated on the first axis: all variance in one feature. After
    # a 45 degree rotation it is split evenly, so the max halves while the
    # mean of variances stays put.
    P = np.array([[-2.0, 0.0], [0.0, 0.0], [2.0, 0.0]])[:, None, :]
    assert _max_variance_changes((P, np.pi / 4))
    rotated = P @ (np.array([[1.0, -1.0], [1.0, 1.0]]) / np.sqrt(2))
    before = statistics_from_samples(P, P)
    after = statistics_from_samples(rotated, rotated)
    np.testing.assert_allclose(after["var_max/harmful"], before["var_max/harmful"] / 2)
    np.testing.assert_allclose(after["var_mean/harmful"], before["var_mean/harmful"])


@settings(deadline=None, max_examples=50)
@given(
    contrastive_sets(max_samples=5),
    st.integers(0, 2**32 - 1),
    st.floats(0.5, 0.99),
)
@pytest.mark.slow
def test_bootstrap_intervals_contain_the_point_estimate(sets, seed, level):
    P, N = sets
    estimate = statistics_from_samples(P, N)
    intervals = bootstrap(P, N, statistics_from_samples, n_boot=20, seed=seed, level=level)
    assert set(intervals) == set(estimate)
    for key, value in estimate.items():
        defined = np.isfinite(value)
        assert np.all(intervals[key].low[defined] <= value[defined])
        assert np.all(value[defined] <= intervals[key].high[defined])


# Curves with ties (values drawn from a few levels), undefined layers (nan) and, for the growth fit,
# non-positive ones: the cases where a batched fit could disagree with a per-curve one.
_LEVELS = st.sampled_from([np.nan, -1.0, 0.0, 0.25, 0.5, 0.5, 1.0, 2.0, 8.0])
_CURVES = st.integers(1, 4).flatmap(lambda rows: st.integers(2, 9).flatmap(
    lambda layers: arrays(np.float64, (rows, layers), elements=_LEVELS | st.floats(0.01, 100.0))))


@FAST
@given(_CURVES)
def test_batched_trend_equals_scipy_spearman_and_polyfit_per_curve(curves):
    """monotone_trend of replicates (B, L) at once, against scipy's Spearman ρ (average ranks) and
    numpy's least-squares slope of each curve's finite values, one curve at a time."""
    from scipy.stats import spearmanr

    from geomcheck.stats.trends import monotone_trend

    spearman, slope = monotone_trend(curves)
    for row, rho, b in zip(curves, spearman, slope):
        finite = np.isfinite(row)
        layers, values = np.flatnonzero(finite).astype(float), row[finite]
        if finite.sum() < 2:
            assert np.isnan(rho) and np.isnan(b)
        elif np.ptp(values) == 0:
            assert (rho, b) == (0.0, 0.0)
        else:
            assert rho == pytest.approx(spearmanr(layers, values).statistic, abs=1e-12)
            assert b == pytest.approx(np.polyfit(layers, values, 1)[0], rel=1e-9, abs=1e-12)


@FAST
@given(_CURVES)
def test_batched_log_linear_fit_equals_polyfit_per_curve(curves):
    """log_linear of replicates (B, L) at once, against numpy's fit of each curve's log over its positive
    layers and growth_fit of that curve alone."""
    from geomcheck.stats.trends import growth_fit, log_linear

    fit = log_linear(curves)
    for index, row in enumerate(curves):
        usable = np.isfinite(row) & (row > 0)
        if usable.sum() < 3:
            assert np.isnan(fit.slope[index]) and np.isnan(fit.r2[index])
            continue
        slope, intercept = np.polyfit(np.flatnonzero(usable).astype(float), np.log(row[usable]), 1)
        assert fit.slope[index] == pytest.approx(slope, abs=1e-9)
        assert fit.intercept[index] == pytest.approx(intercept, abs=1e-9)
        alone = growth_fit(row)
        assert (alone.slope, alone.r2) == (fit.slope[index], fit.r2[index])
        np.testing.assert_array_equal(alone.residuals, fit.residuals[index])
