"""Example-based tests of geomcheck.stats.estimators, geomcheck.stats.resampling, geomcheck.stats.trends and geomcheck.stats.weights on
inputs whose answers are known in closed form."""

import math

import numpy as np
import pytest

from geomcheck.stats.resampling import (
    SUBSAMPLE_EXPONENTS,
    basic_interval,
    bootstrap,
    debiased_world,
    permutation_null,
    studentized_interval,
    subsample_counts,
    subsample_size,
)
from geomcheck.stats.estimators import Interval, cosine_standard_error, debiased_cosine, debiased_norm2, mean_cosine, moments
from geomcheck.stats.vocabulary import RANGES, STAT_NAMES, statistics_from_moments, statistics_from_samples
from geomcheck.stats.trends import GrowthFit, cosine_trend, growth_fit, separation
from geomcheck.stats.weights import (
    overlap_matrix,
    random_overlap,
    subspace_overlap,
    summarize_overlap,
    top_left_singular_vectors,
)


def test_cosine_of_identical_orthogonal_and_opposite_vectors():
    a = np.array([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0], [1.0, -1.0, 2.0]])
    b = np.array([[1.0, 2.0, 3.0], [0.0, 5.0, 0.0], [-2.0, 2.0, -4.0]])
    np.testing.assert_allclose(mean_cosine(a, b), [1.0, 0.0, -1.0], atol=1e-12)


def test_cosine_with_a_zero_vector_is_nan():
    result = mean_cosine(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 1.0], [0.0, 0.0]]))
    assert np.isnan(result).all()


def test_statistics_from_samples_on_known_values():
    # Two layers, two features. Harmful prompts differ only along feature 0
    # (variance 2 with ddof=1), harmless only along feature 1 (variance 8).
    P = np.array([[[1.0, 1.0], [0.0, 1.0]], [[3.0, 1.0], [2.0, 1.0]]])
    N = np.array([[[1.0, -1.0], [1.0, 0.0]], [[1.0, 3.0], [1.0, 4.0]]])
    stats = statistics_from_samples(P, N)
    assert tuple(stats) == STAT_NAMES
    np.testing.assert_allclose(stats["var_mean/harmful"], [1.0, 1.0])
    np.testing.assert_allclose(stats["var_max/harmful"], [2.0, 2.0])
    np.testing.assert_allclose(stats["var_mean/harmless"], [4.0, 4.0])
    np.testing.assert_allclose(stats["var_max/harmless"], [8.0, 8.0])
    # Means: P -> (2, 1) and (1, 1); N -> (1, 1) and (1, 2).
    expected = [3 / (math.sqrt(5) * math.sqrt(2)), 3 / (math.sqrt(2) * math.sqrt(5))]
    np.testing.assert_allclose(stats["cosine"], expected)


def test_statistics_from_moments_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same"):
        statistics_from_moments(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 4)), np.ones((2, 4)), (5, 5))


@pytest.mark.parametrize(("n", "m"), [(1, 5), (5, 1)])
def test_too_few_prompts_for_a_variance(n, m):
    with pytest.raises(ValueError, match="at least 2 prompts per set"):
        statistics_from_samples(np.ones((n, 3, 4)), np.ones((m, 3, 4)))


def test_growth_fit_on_exact_exponential():
    fit = growth_fit(1.5 ** np.arange(12))
    assert fit.rate == pytest.approx(1.5)
    assert fit.slope == pytest.approx(math.log(1.5))
    assert fit.intercept == pytest.approx(0.0, abs=1e-12)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.excluded == ()
    assert fit.outliers == ()
    assert fit.describe_outliers() == "no layer"


def test_growth_fit_excludes_a_leading_exact_zero_without_nan():
    values = 2.0 ** np.arange(10)
    values[0] = 0.0  # chat template: every prompt ends in the same tokens
    fit = growth_fit(values)
    assert fit.excluded == (0,)
    assert np.isnan(fit.residuals[0])
    assert np.isfinite(fit.residuals[1:]).all()
    assert math.isfinite(fit.rate) and math.isfinite(fit.r2)
    assert fit.rate == pytest.approx(2.0)
    assert fit.r2 == pytest.approx(1.0)


def test_growth_fit_excludes_negative_and_non_finite_values():
    values = 3.0 ** np.arange(8)
    values[[2, 5, 7]] = [-1.0, np.nan, np.inf]
    fit = growth_fit(values)
    assert fit.excluded == (2, 5, 7)
    assert fit.rate == pytest.approx(3.0)


def test_growth_fit_flags_a_single_spiked_layer():
    values = 1.5 ** np.arange(20)
    values[10] *= 50.0
    fit = growth_fit(values)
    assert fit.outliers == (10,)
    assert fit.describe_outliers() == "layer 10"
    assert fit.r2 < 1.0


def test_growth_fit_flags_a_block_of_layers_as_a_range():
    values = 1.2 ** np.arange(24)
    values[[9, 10, 11, 17]] *= 40.0
    fit = growth_fit(values)
    assert fit.outliers == (9, 10, 11, 17)
    assert fit.describe_outliers() == "layers 9\u201311, 17"


def test_describe_outliers_formats_runs_with_an_en_dash():
    fit = GrowthFit(
        rate=1.0,
        slope=0.0,
        intercept=0.0,
        r2=1.0,
        residuals=np.zeros(30),
        excluded=(),
        outliers=(14, 15, 16, 17, 18, 22),
    )
    assert fit.describe_outliers() == "layers 14\u201318, 22"


def test_growth_fit_on_constant_values_has_r2_one():
    fit = growth_fit(np.full(6, 4.0))
    assert fit.rate == pytest.approx(1.0)
    assert fit.r2 == 1.0
    assert fit.outliers == ()


def test_growth_fit_needs_three_usable_layers():
    with pytest.raises(ValueError, match="2 of 4 are usable"):
        growth_fit(np.array([0.0, 1.0, np.nan, 2.0]))


def test_basic_interval_pivots_on_the_plug_in_value():
    # Replicates spread ±1 around the plug-in value 0 (their centre): the interval is the estimate minus
    # that spread, whatever bias separates the estimate from the plug-in value.
    draws = np.linspace(-1.0, 1.0, 2001)
    interval = basic_interval(0.5, draws, center=0.0)
    assert interval.low == pytest.approx(0.5 - 0.95, abs=1e-9)
    assert interval.high == pytest.approx(0.5 + 0.95, abs=1e-9)


def test_basic_interval_of_a_positive_statistic_pivots_on_the_log_scale():
    draws = np.exp(np.linspace(-1.0, 1.0, 2001))  # replicates ×e^±1 around the plug-in value 1
    interval = basic_interval(2.0, draws, center=1.0)
    assert interval.low == pytest.approx(2.0 * math.exp(-0.95), rel=1e-9)
    assert interval.high == pytest.approx(2.0 * math.exp(0.95), rel=1e-9)


def test_basic_interval_always_holds_the_estimate():
    # A degenerate resampling (every replicate on one side of the centre) still brackets the estimate.
    interval = basic_interval(-0.5, np.full(50, 3.0), center=0.0)
    assert interval.low <= -0.5 <= interval.high


def test_studentized_interval_scales_the_replicates_pivots_by_the_estimates_error():
    # Replicates (draw − centre) / error spread ±2 evenly: the interval is the estimate ∓ 2 × 0.95 errors.
    draws = np.linspace(-1.0, 1.0, 2001)
    interval = studentized_interval(0.3, 0.1, draws, np.full(2001, 0.5), center=0.0)
    assert interval.low == pytest.approx(0.3 - 0.1 * 1.9, abs=1e-9)
    assert interval.high == pytest.approx(0.3 + 0.1 * 1.9, abs=1e-9)


def test_symmetric_studentized_interval_is_not_moved_by_a_shift_of_the_pivots():
    # Pivots spread evenly over 0..4 (shifted, as the bootstrap of a max shifts them): the equal-tailed
    # interval moves below the estimate (held only by the widening), the symmetric one is ± the 95% of |t|.
    draws = np.linspace(0.0, 2.0, 2001)
    shifted = studentized_interval(0.3, 0.1, draws, np.full(2001, 0.5), center=0.0)
    assert shifted.low == pytest.approx(0.3 - 0.1 * 3.9, abs=1e-9) and shifted.high == pytest.approx(0.3)
    symmetric = studentized_interval(0.3, 0.1, draws, np.full(2001, 0.5), center=0.0, symmetric=True)
    assert symmetric.low == pytest.approx(0.3 - 0.1 * 3.8, abs=1e-9)
    assert symmetric.high == pytest.approx(0.3 + 0.1 * 3.8, abs=1e-9)


def test_subsample_counts_draw_ceil_sqrt_n_prompts_uniformly_and_are_seeded():
    first, second = subsample_counts((64, 139), 4000, seed=3)
    assert (subsample_size(64), subsample_size(139), subsample_size(2)) == (8, 12, 2)
    assert first.shape == (4000, 64) and second.shape == (4000, 139)
    assert np.all(first.sum(axis=1) == 8) and np.all(second.sum(axis=1) == 12)
    np.testing.assert_allclose(first.mean(axis=0), 8 / 64, atol=0.03)  # each prompt equally likely
    np.testing.assert_array_equal(subsample_counts((64, 139), 4000, seed=3)[0], first)
    assert not np.array_equal(subsample_counts((64, 139), 4000, seed=4)[0], first)
    with pytest.raises(ValueError, match="n_boot"):
        subsample_counts((64, 139), 0, seed=3)


def test_var_max_subsamples_draw_n_to_the_two_thirds_from_a_stream_of_their_own():
    """var_max's m-out-of-n draws (SUBSAMPLE_EXPONENTS) are larger than var_mean's and from another child
    stream of the seed; var_mean's are stream 0, the default."""
    assert (subsample_size(64, 2 / 3), subsample_size(139, 2 / 3)) == (16, 27)
    larger = subsample_counts((64, 139), 50, seed=3, exponent=SUBSAMPLE_EXPONENTS["var_max"], stream=1)
    assert np.all(larger[0].sum(axis=1) == 16) and np.all(larger[1].sum(axis=1) == 27)
    stream_zero = subsample_counts((64, 139), 50, seed=3, exponent=SUBSAMPLE_EXPONENTS["var_max"], stream=0)
    assert not np.array_equal(larger[0], stream_zero[0])  # another stream, not the same draws
    np.testing.assert_array_equal(subsample_counts((64, 139), 50, seed=3, stream=0)[0], subsample_counts((64, 139), 50, seed=3)[0])
    for exponent in (0.0, 1.0):
        with pytest.raises(ValueError, match="exponent"):
            subsample_size(64, exponent)


def test_debiased_world_moves_the_means_to_the_debiased_geometry_and_keeps_the_spread():
    rng = np.random.default_rng(4)
    harmful = rng.normal(size=(30, 3, 12)) + np.r_[1.0, 1.0, np.zeros(10)]
    harmless = rng.normal(size=(40, 3, 12)) + np.r_[1.0, 0.0, 1.0, np.zeros(9)]
    (mean_h, var_h), (mean_n, var_n) = moments(harmful), moments(harmless)
    shifts = debiased_world((mean_h, var_h), (mean_n, var_n), (30, 40))
    moved_h, moved_n = mean_h + shifts[0], mean_n + shifts[1]
    np.testing.assert_allclose(np.sum(moved_h**2, axis=-1), debiased_norm2(mean_h, var_h, 30))
    np.testing.assert_allclose(np.sum(moved_n**2, axis=-1), debiased_norm2(mean_n, var_n, 40))
    np.testing.assert_allclose(np.sum(moved_h * moved_n, axis=-1), np.sum(mean_h * mean_n, axis=-1))
    # so the world's plain cosine is the debiased estimate, which its replicates are centred on
    np.testing.assert_allclose(mean_cosine(moved_h, moved_n), debiased_cosine(mean_h, var_h, 30, mean_n, var_n, 40))


@pytest.mark.slow
def test_cosine_standard_error_matches_the_spread_of_the_debiased_cosine_over_draws():
    rng = np.random.default_rng(5)
    sd = np.sqrt(np.geomspace(0.5, 4.0, 8))
    mean_h, mean_n = np.r_[1.0, 1.0, np.zeros(6)], np.r_[1.0, 0.5, 0.5, np.zeros(5)]
    # 1,000 independent layers = draws; many prompts, where a first-order (delta-method) error is exact
    # enough (at 100 prompts it overstates the spread by ~15%, which studentizing cancels)
    harmful = mean_h + sd * rng.normal(size=(1500, 1000, 8))
    harmless = mean_n + sd * rng.normal(size=(1600, 1000, 8))
    estimates = statistics_from_samples(harmful, harmless)["cosine_debiased"]
    errors = cosine_standard_error(harmful, harmless)
    assert np.median(errors) == pytest.approx(np.std(estimates), rel=0.08)  # the std of 1,000 draws: ±2.2%


def test_bootstrap_intervals_cover_every_statistic_per_layer():
    rng = np.random.default_rng(2)
    P = rng.standard_normal((20, 4, 5)) + 1.0
    N = rng.standard_normal((15, 4, 5))
    estimate = statistics_from_samples(P, N)
    intervals = bootstrap(P, N, statistics_from_samples, n_boot=50, seed=3)
    assert set(intervals) == set(STAT_NAMES)
    for key, value in estimate.items():
        assert intervals[key].low.shape == (4,)
        if key == "cosine_debiased":  # the harmless mean is 0: not resolved from noise, so undefined
            assert np.isnan(value).all()
            continue
        assert np.all(intervals[key].low <= value) and np.all(value <= intervals[key].high)
        if not key.startswith("top_feature"):  # an arg-max may be the same feature in every resample
            assert np.all(intervals[key].low < intervals[key].high)


def test_bootstrap_is_reproducible_for_a_seed():
    rng = np.random.default_rng(4)
    P, N = rng.standard_normal((10, 2, 3)), rng.standard_normal((10, 2, 3))
    first = bootstrap(P, N, statistics_from_samples, n_boot=20, seed=7)
    second = bootstrap(P, N, statistics_from_samples, n_boot=20, seed=7)
    for key in STAT_NAMES:
        np.testing.assert_array_equal(first[key].low, second[key].low)
        np.testing.assert_array_equal(first[key].high, second[key].high)


def test_separation_of_clearly_separated_curves():
    pre = np.array([1.0, 2.0, 4.0, 8.0])
    mid = 3.0 * pre
    result = separation(pre, mid, Interval(0.9 * pre, 1.1 * pre), Interval(0.9 * mid, 1.1 * mid))
    assert result.mean_log_ratio == pytest.approx(math.log(3.0))
    assert result.fraction_separated == 1.0
    assert result.separated_layers == (0, 1, 2, 3)
    assert result.compared_layers == (0, 1, 2, 3)


def test_separation_of_coinciding_curves():
    pre = np.array([1.0, 2.0, 4.0])
    result = separation(pre, pre.copy(), Interval(0.5 * pre, 2 * pre), Interval(0.5 * pre, 2 * pre))
    assert result.mean_log_ratio == pytest.approx(0.0)
    assert result.fraction_separated == 0.0
    assert result.separated_layers == ()


def test_separation_compares_a_zero_layer_but_leaves_it_out_of_the_log_ratio():
    pre = np.array([0.0, 1.0, 2.0])
    mid = np.array([1.0, 2.0, 4.0])
    result = separation(
        pre,
        mid,
        Interval(np.array([0.0, 0.9, 1.9]), np.array([0.0, 1.1, 2.1])),
        Interval(np.array([0.8, 1.9, 3.9]), np.array([1.2, 2.1, 4.1])),
    )
    assert result.mean_log_ratio == pytest.approx(math.log(2.0))
    assert result.separated_layers == (0, 1, 2)
    assert result.compared_layers == (0, 1, 2)


def test_cosine_trend_on_a_decreasing_series():
    trend = cosine_trend(np.array([0.9, 0.8, 0.5, 0.45, 0.1]))
    assert trend.spearman == pytest.approx(-1.0)
    assert trend.slope < 0


def test_cosine_trend_averages_tied_ranks_and_drops_nan():
    # Ranks of (1, 2, 2, 3) are (1, 2.5, 2.5, 4); Pearson with (1, 2, 3, 4)
    # is 4.5 / sqrt(5 * 4.5).
    trend = cosine_trend(np.array([1.0, 2.0, np.nan, 2.0, 3.0]))
    assert trend.spearman == pytest.approx(4.5 / math.sqrt(5 * 4.5))
    assert trend.slope > 0


def test_cosine_trend_of_constant_values_is_no_trend():
    assert cosine_trend(np.full(5, 0.3)) == cosine_trend(np.array([0.3, 0.3]))
    assert cosine_trend(np.full(5, 0.3)).spearman == 0.0
    assert cosine_trend(np.full(5, 0.3)).slope == 0.0


def test_cosine_trend_needs_two_finite_values():
    with pytest.raises(ValueError, match="at least 2 finite values"):
        cosine_trend(np.array([np.nan, 0.5, np.nan]))


def test_subspace_overlap_of_identical_and_orthogonal_bases():
    basis = np.eye(6)
    assert subspace_overlap(basis[:, :2], basis[:, :2]) == pytest.approx(1.0)
    assert subspace_overlap(basis[:, :2], basis[:, 2:4]) == pytest.approx(0.0)
    # Half of the second subspace lies in the first.
    assert subspace_overlap(basis[:, :2], basis[:, 1:3]) == pytest.approx(0.5)


def test_top_left_singular_vectors_span_the_written_directions():
    rng = np.random.default_rng(5)
    d_model, d_in, k = 10, 7, 3
    written = np.linalg.qr(rng.standard_normal((d_model, k)))[0]
    weight = written @ rng.standard_normal((k, d_in))  # writes only into `written`
    basis = top_left_singular_vectors(weight, k)
    assert basis.shape == (d_model, k)
    np.testing.assert_allclose(basis.T @ basis, np.eye(k), atol=1e-12)
    assert subspace_overlap(basis, written) == pytest.approx(1.0)


def test_top_left_singular_vectors_caps_k_and_rejects_k_below_one():
    weight = np.ones((8, 3))
    assert top_left_singular_vectors(weight, 10).shape == (8, 3)
    with pytest.raises(ValueError, match="k must be at least 1"):
        top_left_singular_vectors(weight, 0)


def test_random_overlap_matches_monte_carlo_mean():
    rng = np.random.default_rng(6)
    k, d = 5, 40
    samples = [
        subspace_overlap(
            np.linalg.qr(rng.standard_normal((d, k)))[0],
            np.linalg.qr(rng.standard_normal((d, k)))[0],
        )
        for _ in range(400)
    ]
    assert random_overlap(k, d) == k / d
    assert np.mean(samples) == pytest.approx(k / d, abs=0.01)


def test_overlap_matrix_and_summary():
    basis = np.eye(8)
    bases = [basis[:, :2], basis[:, 1:3], basis[:, 4:6]]
    matrix = overlap_matrix(bases)
    np.testing.assert_allclose(
        matrix, [[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]], atol=1e-12
    )
    summary = summarize_overlap(matrix, k=2, d=8)
    assert summary.mean_offdiag == pytest.approx(1 / 6)
    assert summary.mean_adjacent == pytest.approx(0.25)
    assert summary.chance == pytest.approx(0.25)
    assert summary.ratio == pytest.approx((1 / 6) / 0.25)


def test_summarize_overlap_needs_two_layers():
    with pytest.raises(ValueError, match="at least 2 layers"):
        summarize_overlap(np.eye(1), k=1, d=4)


def test_debiased_cosine_removes_the_noise_bias_of_sample_means():
    """Identical true means, isotropic noise: the plain cosine of sample means falls far below 1 (its
    bias), the corrected one is unbiased around 1."""
    rng = np.random.default_rng(0)
    mean = np.full(50, 0.3)
    plain, corrected = [], []
    for _ in range(200):
        P, N = mean + rng.normal(size=(2, 20, 1, 50))
        stats = statistics_from_samples(P, N)
        plain.append(stats["cosine"][0])
        corrected.append(stats["cosine_debiased"][0])
    assert np.mean(plain) < 0.85  # ‖μ‖² = 4.5 against tr(Σ)/n = 2.5 per set
    assert abs(np.nanmean(corrected) - 1.0) < 0.05


def test_massive_feature_index_share_and_robust_quantile():
    # 200 features of variance ~1 and one (index 7) of variance ~1e4: it holds ~98% of the variance,
    # the max is it, the 99th percentile is not moved by it.
    rng = np.random.default_rng(1)
    scale = np.ones(200)
    scale[7] = 100.0
    P, N = scale * rng.normal(size=(2, 400, 1, 200))
    stats = statistics_from_samples(P, N)
    assert stats["top_feature/harmful"][0] == 7 and stats["top_feature/harmless"][0] == 7
    assert 0.97 < stats["top_share/harmful"][0] < 0.99
    assert stats["var_max/harmful"][0] > 5000
    assert 1.0 < stats["var_q99/harmful"][0] < 2.0


def test_plug_in_statistics_use_the_empirical_variance():
    P = np.array([[[0.0, 0.0]], [[2.0, 2.0]]])
    N = np.array([[[1.0, 0.0]], [[1.0, 4.0]]])
    assert statistics_from_samples(P, N)["var_mean/harmful"][0] == 2.0
    assert statistics_from_samples(P, N, plug_in=True)["var_mean/harmful"][0] == 1.0
    plug = statistics_from_samples(P, N, plug_in=True)
    np.testing.assert_array_equal(plug["cosine_debiased"], plug["cosine"])


def test_permutation_null_keeps_set_sizes_and_pools_the_prompts():
    P, N = np.zeros((3, 1, 2)), np.ones((5, 1, 2))
    draws = permutation_null(P, N, lambda p, n: {"sizes": np.array([len(p), len(n)]), "total": p.sum() + n.sum()}, n_perm=30)
    assert (draws["sizes"] == [3, 5]).all() and (draws["total"] == 10).all()


def test_basic_interval_is_clipped_to_the_range_of_the_statistic():
    # replicates piled at the bottom of the range reflect above its top; a correlation stays ≤ 1
    interval = basic_interval(0.99, np.linspace(0.5, 1.0, 101), center=0.98, bounds=(-1.0, 1.0))
    assert interval.high == 1.0 and interval.low < 0.99


def _loop_geometry(samples, n_boot, seed):
    """The per-replicate loop that geometry_from_samples replaced (main at 51455f5), kept here only to hold
    the matrix-product engine to it: values, replicates and plug-in centres."""
    from geomcheck.stats.geometry import _all_statistics
    from geomcheck.stats.resampling import replicates

    streams = tuple(samples["harmful"])
    harmful = np.stack([samples["harmful"][s] for s in streams], axis=1)
    harmless = np.stack([samples["harmless"][s] for s in streams], axis=1)
    sizes = (len(harmful), len(harmless))
    observed = moments(harmful), moments(harmless)

    def cosines(one, other):
        return {stream: mean_cosine(one[:, i].mean(axis=0), other[:, i].mean(axis=0)) for i, stream in enumerate(streams)}

    shuffled, seen = permutation_null(harmful, harmless, cosines, n_boot, seed), cosines(harmful, harmless)
    null = {}
    for stream in streams:
        null[f"{stream}/cosine_null"] = np.nanmean(shuffled[stream], axis=0)
        null[f"{stream}/cosine_null_p"] = np.float64((np.sum(shuffled[stream][:, -1] <= seen[stream][-1]) + 1) / (n_boot + 1))
    values = _all_statistics(*observed, sizes, streams, null)
    shifts = debiased_world(*observed, sizes)

    def in_world(one, other):
        (mean_one, var_one), (mean_other, var_other) = moments(one), moments(other)
        moved = (mean_one + shifts[0], var_one), (mean_other + shifts[1], var_other)
        errors = cosine_standard_error(one, other, *moved)
        return {**_all_statistics(*moved, sizes, streams, null), **{f"{s}/cosine_se": errors[i] for i, s in enumerate(streams)}}

    world = [(mean + shift, var) for (mean, var), shift in zip(observed, shifts)]
    centers = _all_statistics(*world, sizes, streams, null, plug_in=True)
    draws = replicates(harmful, harmless, in_world, n_boot=n_boot, seed=seed)
    errors = cosine_standard_error(harmful, harmless, *observed)
    return values, draws, centers, errors


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "block_bytes"), [(np.float64, None), (np.float32, None), (np.float64, 20_000)], ids=["float64", "float32", "chunked"])
def test_the_matrix_product_engine_equals_the_per_replicate_loop(dtype, block_bytes, monkeypatch):
    """Same seed, same resamples: every value, replicate and centre of the old loop to 1e-5 relative, and
    every interval but the variances' (which are now studentized on the log scale) equal to it. Data with
    growing variance, a massive feature and means close enough that some replicates are unresolved."""
    from geomcheck.stats.geometry import geometry_from_samples

    rng = np.random.default_rng(11)
    layers, d = 6, 24
    scale = np.sqrt(np.geomspace(0.5, 2.0, d)) * 1.3 ** np.arange(layers)[:, None]
    scale[:, 0] *= 30.0  # a massive activation
    base = np.zeros(d)
    base[:6] = 1.0
    samples = {
        name: {stream: (shift + base + scale * rng.normal(size=(n, layers, d))).astype(dtype) for stream in ("pre", "mid", "post")}
        for name, shift, n in (("harmful", 0.0, 23), ("harmless", 0.4, 19))
    }
    if block_bytes:  # one layer and 6 replicates per block: the chunked path real model sizes take
        monkeypatch.setattr("geomcheck.stats.geometry.BLOCK_BYTES", block_bytes)
    values, draws, centers, errors = _loop_geometry(samples, n_boot=40, seed=5)
    geometry = geometry_from_samples(samples, n_boot=40, seed=5)
    draws.pop("pre/cosine_se"), draws.pop("mid/cosine_se"), draws.pop("post/cosine_se")
    for key, value in values.items():  # measured: 9e-14 on float64 samples, 5e-7 on float32 (the loop's null took float32 means)
        np.testing.assert_allclose(geometry.values[key], value, rtol=1e-5, err_msg=key)
    assert geometry.replicates.keys() == draws.keys()
    for key, draw in draws.items():
        np.testing.assert_allclose(geometry.replicates[key], draw, rtol=1e-5, atol=1e-12, err_msg=key)
        np.testing.assert_allclose(geometry.centers[key], centers[key], rtol=1e-5, err_msg=key)
    draw_errors = {s: _loop_geometry(samples, 40, 5)[1][f"{s}/cosine_se"] for s in ("mid",)}
    for stream, draw_error in draw_errors.items():  # the cosine's studentized interval, as the loop made it
        key = f"{stream}/cosine_debiased"
        old = studentized_interval(values[key], errors[1], draws[key], draw_error, centers[key], bounds=(-1.0, 1.0))
        defined = np.isfinite(values[key])
        np.testing.assert_allclose(geometry.interval(key).low[defined], old.low[defined], rtol=1e-5)
        np.testing.assert_allclose(geometry.interval(key).high[defined], old.high[defined], rtol=1e-5)
    for key in ("mid/var_q99/harmful", "mid/top_share/harmless", "mid/growth_rate/harmful"):  # basic intervals
        old = basic_interval(values[key], draws[key], centers[key], bounds=RANGES[key.split("/", 1)[1]])
        np.testing.assert_allclose(geometry.interval(key).low, old.low, rtol=1e-5)
        np.testing.assert_allclose(geometry.interval(key).high, old.high, rtol=1e-5)


def test_an_undefined_statistic_has_an_undefined_interval_never_a_zero_width_one():
    """Means not resolved from noise: the debiased cosine is nan, and so are both cosines' intervals
    (the plain cosine's used to collapse onto its biased point); a variance stays defined and wide."""
    from geomcheck.stats.geometry import geometry_from_samples

    rng = np.random.default_rng(3)
    samples = {name: {"mid": 0.01 + rng.normal(size=(30, 8, 40))} for name in ("harmful", "harmless")}
    geometry = geometry_from_samples(samples, n_boot=50, seed=0)
    undefined = np.isnan(geometry.value("mid/cosine_debiased"))
    assert undefined.sum() >= 6
    for key in ("mid/cosine", "mid/cosine_debiased"):
        interval = geometry.interval(key)
        assert np.isnan(interval.low[undefined]).all() and np.isnan(interval.high[undefined]).all(), key
        defined = ~np.isnan(interval.low)
        assert np.all(interval.high[defined] > interval.low[defined]), key
    variance = geometry.interval("mid/var_mean/harmful")
    assert np.all(variance.high > variance.low)


def test_intervals_of_bounded_statistics_lie_in_their_range_and_hold_the_estimate():
    from geomcheck.stats.geometry import geometry_from_samples

    rng = np.random.default_rng(8)
    samples = {name: {"pre": shift + rng.normal(size=(12, 6, 5)) * 1.5 ** np.arange(6)[:, None]} for name, shift in (("harmful", 0.3), ("harmless", 0.2))}
    geometry = geometry_from_samples(samples, n_boot=40, seed=2)
    for key, interval in geometry.intervals.items():
        low_bound, high_bound = RANGES.get(key.split("/", 1)[1], (-np.inf, np.inf))
        value = np.asarray(geometry.values[key])
        finite = np.isfinite(np.asarray(interval.low))
        assert np.all(np.asarray(interval.low)[finite] >= low_bound) and np.all(np.asarray(interval.high)[finite] <= high_bound), key
        assert np.all(np.asarray(interval.low)[finite] <= value[finite]) and np.all(value[finite] <= np.asarray(interval.high)[finite]), key


def test_studentized_interval_on_the_log_scale_stays_positive_and_is_nan_when_every_replicate_is():
    draws = np.exp(np.linspace(-1.0, 1.0, 2001))
    interval = studentized_interval(2.0, 0.2, draws, 0.1 * draws, center=1.0, log=True)
    # pivots (log draw − 0) / 0.1 spread ±10: the interval is 2 · exp(∓10 · 0.95 · 0.2 / 2)
    assert interval.low == pytest.approx(2.0 * math.exp(-0.95), rel=1e-6)
    assert interval.high == pytest.approx(2.0 * math.exp(0.95), rel=1e-6)
    undefined = studentized_interval(2.0, 0.2, np.full(10, np.nan), np.full(10, np.nan), center=1.0, log=True)
    assert math.isnan(undefined.low) and math.isnan(undefined.high)
def test_early_late_fall_leaves_out_the_middle_layer_and_non_finite_values():
    from geomcheck.stats.trends import early_late_fall

    assert early_late_fall(np.full(6, 0.95)) == 0.0  # a constant curve does not fall
    assert early_late_fall(np.array([1.0, 0.9, 100.0, 0.7, 0.6])) == pytest.approx(0.3)  # middle of 5 in neither half
    assert early_late_fall(np.array([np.nan, 1.0, 0.8, 0.6])) == pytest.approx(0.3)
    assert np.isnan(early_late_fall(np.array([0.9, 0.8, np.nan, np.nan])))
