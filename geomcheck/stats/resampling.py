"""Resampling the prompts: basic and studentized bootstrap intervals, and label-permutation nulls.

Both resample the prompts of two sets (harmful, harmless) laid out as ``samples x layers x features``; a
statistic is any function of the two sets that returns named numbers or arrays. The draws also come as
matrices (:func:`resample_counts`, :func:`permutation_masks`), whose products with the samples and their
powers give every replicate's moments at once (:mod:`geomcheck.stats.geometry` computes its statistics so).
Plain numpy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import numpy as np

from geomcheck.stats.estimators import Interval, Moments, debiased_norm2

Statistic = Callable[[np.ndarray, np.ndarray], Mapping[str, "np.ndarray | float"]]


def resample_indices(sizes: tuple[int, int], n_boot: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The prompts each bootstrap replicate draws, with replacement within each set (so both sets keep
    their sizes). Every interval of a run comes from these same draws: a seed fixes them all."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1; got {n_boot}")
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, sizes[0], size=sizes[0]), rng.integers(0, sizes[1], size=sizes[1])) for _ in range(n_boot)]


def resample_counts(sizes: tuple[int, int], n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`resample_indices` as ``(n_boot, size)`` matrices of how often each prompt is drawn (float64,
    for BLAS): a replicate's sum of anything over its prompts is a row times that thing."""
    counts = np.zeros((n_boot, sizes[0])), np.zeros((n_boot, sizes[1]))
    for row, draws in enumerate(resample_indices(sizes, n_boot, seed)):
        for matrix, drawn in zip(counts, draws):
            matrix[row] = np.bincount(drawn, minlength=len(matrix[row]))
    return counts


def subsample_size(size: int, exponent: float = 0.5) -> int:
    """The m of the m-out-of-n bootstrap: ⌈n^exponent⌉ for an exponent in (0, 1), so that m → ∞ and m/n → 0
    as n grows (the rule for which the bootstrap of a mean whose summands have infinite variance is
    consistent: Athreya 1987; Bickel, Götze & van Zwet 1997). ``var_mean`` takes √n, ``var_max`` n^(2/3)
    (see :data:`SUBSAMPLE_EXPONENTS`)."""
    if not 0.0 < exponent < 1.0:
        raise ValueError(f"exponent must be strictly between 0 and 1; got {exponent}")
    return int(np.ceil(size**exponent))


# The m-out-of-n resamplings a run draws, each from its own child stream of the seed (its index): var_mean's
# at m = √n; var_max's at m = n^(2/3): at √n the upper end it lends the bootstrap's interval over-covers under
# Gaussian noise (0.974 at n = 64, measured 2026-12-05 with tests/unit/test_coverage.py).
SUBSAMPLE_EXPONENTS: dict[str, float] = {"var_mean": 0.5, "var_max": 2.0 / 3.0}


def subsample_counts(sizes: tuple[int, int], n_boot: int, seed: int, exponent: float = 0.5, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """m-out-of-n resamples of each set (:func:`subsample_size` draws with replacement), as ``(n_boot, size)``
    count matrices like :func:`resample_counts`, from child ``stream`` of ``seed`` (one stream a resampling).

    A variance under heavy tails (Student-t(3): infinite fourth moment) is a mean of summands with infinite
    variance; the n-out-of-n bootstrap of it is inconsistent and its intervals lie below the truth, because a
    resample of all n prompts holds no larger values than the sample. Studentized, the pivot needs no rate."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1; got {n_boot}")
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(stream + 1)[stream])
    first, second = (rng.multinomial(subsample_size(size, exponent), np.full(size, 1.0 / size), size=n_boot).astype(np.float64) for size in sizes)
    return first, second


def permutation_masks(sizes: tuple[int, int], n_perm: int, seed: int) -> np.ndarray:
    """The label shufflings of :func:`permutation_null` as an ``(n_perm, n + m)`` 0/1 matrix: 1 where a pooled
    prompt falls in the first set (same seed, same shufflings)."""
    if n_perm < 1:
        raise ValueError(f"n_perm must be at least 1; got {n_perm}")
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_perm, sum(sizes)))
    for row in range(n_perm):
        masks[row, rng.permutation(sum(sizes))[: sizes[0]]] = 1.0
    return masks


def replicates(
    harmful: np.ndarray, harmless: np.ndarray, statistic: Statistic, n_boot: int = 200, seed: int = 0
) -> dict[str, np.ndarray]:
    """``statistic`` of each bootstrap resample of the prompts, stacked: key -> ``(n_boot, *shape)``."""
    draws: dict[str, list[np.ndarray]] = {}
    for harmful_rows, harmless_rows in resample_indices((len(harmful), len(harmless)), n_boot, seed):
        for key, value in statistic(harmful[harmful_rows], harmless[harmless_rows]).items():
            draws.setdefault(key, []).append(np.asarray(value, dtype=np.float64))
    return {key: np.stack(values) for key, values in draws.items()}


def _tail_quantiles(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The replicates' lower and upper ``(1 − level) / 2`` quantiles, ignoring nan replicates."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be strictly between 0 and 1; got {level}")
    tail = 100.0 * (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"All-NaN slice", RuntimeWarning)
        low, high = np.nanpercentile(draws, [tail, 100.0 - tail], axis=0)
    return low, high


def _holding(point: np.ndarray, low: np.ndarray, high: np.ndarray) -> Interval:
    """An interval widened to hold its estimate, scalar for a scalar. A nan bound (every replicate
    undefined) stays nan: an undefined interval, never a zero-width one at the estimate."""
    low, high = np.minimum(low, point), np.maximum(high, point)
    if point.ndim == 0:
        return Interval(float(low), float(high))
    return Interval(low, high)


def basic_interval(
    estimate: np.ndarray | float,
    draws: np.ndarray,
    center: np.ndarray | float | None = None,
    level: float = 0.95,
    bounds: tuple[float, float] = (-np.inf, np.inf),
) -> Interval:
    """The basic (pivotal) bootstrap interval: ``estimate − (q_high − center), estimate − (q_low − center)``.

    The replicates scatter around ``center``, the statistic of the empirical distribution itself (its
    plug-in value), as the estimate scatters around the truth; the percentile interval instead assumes
    they scatter around the truth and doubles any bias (the cosine of sample means: 66% coverage at
    n = 64). ``center`` defaults to the estimate (a statistic that is its own plug-in). A positive
    statistic pivots on the log scale. Measured coverage: tests/unit/test_coverage.py and the README.

    The interval is widened to hold the estimate where it would not (a degenerate resampling), and
    replicates that are nan are ignored; where all are, the interval is nan (undefined). ``bounds``
    is the statistic's range (e.g. -1 to 1 for a correlation), which the interval is clipped to.
    """
    point = np.asarray(estimate, dtype=np.float64)
    pivot = point if center is None else np.asarray(center, dtype=np.float64)
    draws = np.asarray(draws, dtype=np.float64)
    # A positive statistic (a variance, a rate) pivots on the log scale, where its skew is smaller.
    positive = (point > 0) & (pivot > 0) & np.all((draws > 0) | np.isnan(draws), axis=0)
    log = lambda x: np.log(np.where(positive, x, 1.0))  # noqa: E731
    scale = lambda x, like: np.where(positive, log(x), like)  # noqa: E731
    q_low, q_high = _tail_quantiles(scale(draws, draws), level)
    point_s, pivot_s = scale(point, point), scale(pivot, pivot)
    low_s, high_s = point_s - (q_high - pivot_s), point_s - (q_low - pivot_s)
    with np.errstate(over="ignore"):  # a bound beyond float range is an infinite bound
        low = np.where(positive, np.exp(np.where(positive, low_s, 0.0)), low_s)
        high = np.where(positive, np.exp(np.where(positive, high_s, 0.0)), high_s)
    return _holding(point, np.clip(low, *bounds), np.clip(high, *bounds))


def _symmetric_power(matrices: np.ndarray, power: float) -> np.ndarray:
    """``M^power`` of symmetric 2 x 2 matrices, with eigenvalues that are not positive taken as 0."""
    eigenvalues, vectors = np.linalg.eigh(matrices)
    positive = eigenvalues > 1e-12 * np.abs(eigenvalues).max(axis=-1, keepdims=True)
    powered = np.where(positive, np.power(np.where(positive, eigenvalues, 1.0), power), 0.0)
    return (vectors * powered[..., None, :]) @ np.swapaxes(vectors, -1, -2)


def world_transform(harmful: Moments, harmless: Moments, sizes: tuple[int, int]) -> np.ndarray:
    """The move of :func:`debiased_world` as ``(..., 2, 2)`` matrices: column j holds set j's moved mean as a
    combination of the two observed means (the bootstrap engine keeps every mean as such coefficients)."""
    plane = np.stack([harmful[0], harmless[0]], axis=-1)  # (..., d, 2)
    gram = np.swapaxes(plane, -1, -2) @ plane
    corrected = gram.copy()
    for index, ((mean, var), size) in enumerate(zip((harmful, harmless), sizes)):
        corrected[..., index, index] = debiased_norm2(mean, var, size)
    return _symmetric_power(gram, -0.5) @ _symmetric_power(corrected, 0.5)


def debiased_world(harmful: Moments, harmless: Moments, sizes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Shifts of each set's mean (``(..., d)``, to add to its samples) after which the two sample means
    have the debiased geometry: squared norms corrected by ``tr(Σ̂)/n``, the same dot product. Takes each
    set's :func:`geomcheck.stats.estimators.moments` and the sets' sizes.

    The bootstrap resamples an empirical distribution as if it were the truth, and there the sample
    means lie further apart than the true ones (noise adds ``tr(Σ)/n`` to each squared norm), so the
    cosine's replicates would spread as for a wider angle. The shift keeps each set's spread and moves
    the means within their own plane (a 2 x 2 Gram matrix ``G`` mapped to ``G − diag(tr(Σ̂)/n)`` by
    ``G^{-1/2} (G − diag)^{1/2}``: :func:`world_transform`); where noise swamps the difference, the means
    become parallel.
    """
    moved = np.stack([harmful[0], harmless[0]], axis=-1) @ world_transform(harmful, harmless, sizes)
    return moved[..., 0] - harmful[0], moved[..., 1] - harmless[0]


def studentized_interval(
    estimate: np.ndarray | float,
    standard_error: np.ndarray | float,
    draws: np.ndarray,
    draw_errors: np.ndarray,
    center: np.ndarray | float,
    level: float = 0.95,
    bounds: tuple[float, float] = (-np.inf, np.inf),
    log: bool = False,
    symmetric: bool = False,
) -> Interval:
    """The studentized (bootstrap-t) interval: ``estimate − t_high · se, estimate − t_low · se``, where
    ``t`` are the quantiles of ``(draw − center) / draw_error`` over the replicates.

    For a statistic whose spread depends on its own value (the cosine of the means narrows as the angle
    closes; a variance widens with the fourth moment of the sample it is made of) dividing by each
    replicate's standard error makes the replicates comparable where the basic interval is not.
    ``log=True`` pivots a positive statistic on the log scale (error ``se / value`` by the delta method),
    where heavy tails skew it less; entries that are not positive stay on the linear scale. ``symmetric=True``
    takes ``±`` the ``level`` quantile of ``|t|`` (Hall 1988), which a shift of the pivots does not move: the
    max of near-equal variances, whose bootstrap selects the largest again and over-corrects its bias. Widened
    to hold the estimate; nan replicates are ignored; nan where all are; clipped to ``bounds``.
    """
    point = np.asarray(estimate, dtype=np.float64)
    error = np.asarray(standard_error, dtype=np.float64)
    draws, draw_errors = np.asarray(draws, np.float64), np.asarray(draw_errors, np.float64)
    pivot = np.asarray(center, np.float64)
    positive = (point > 0) & (pivot > 0) & np.all((draws > 0) | np.isnan(draws), axis=0) if log else np.zeros(point.shape, bool)
    with np.errstate(divide="ignore", invalid="ignore"):  # a replicate whose statistic is undefined: nan
        if log:
            safe = lambda x: np.where(positive, x, 1.0)  # noqa: E731
            draw_errors = np.where(positive, draw_errors / safe(draws), draw_errors)
            draws, pivot = np.where(positive, np.log(safe(draws)), draws), np.where(positive, np.log(safe(pivot)), pivot)
            error = np.where(positive, error / safe(point), error)
        scaled = np.where(positive, np.log(np.where(positive, point, 1.0)), point)
        pivots = np.where((draw_errors == 0) & (draws == pivot), 0.0, (draws - pivot) / draw_errors)  # a constant: 0, not 0/0
        if symmetric:
            t_high = _tail_quantiles(np.abs(pivots), 2.0 * level - 1.0)[1]  # the level quantile of |t|
            t_low = -t_high
        else:
            t_low, t_high = _tail_quantiles(pivots, level)
        low, high = scaled - t_high * error, scaled - t_low * error
    with np.errstate(over="ignore"):
        low = np.where(positive, np.exp(np.where(positive, low, 0.0)), low)
        high = np.where(positive, np.exp(np.where(positive, high, 0.0)), high)
    return _holding(point, np.clip(low, *bounds), np.clip(high, *bounds))


def bootstrap(
    harmful: np.ndarray,
    harmless: np.ndarray,
    statistic: Statistic,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    plug_in: Statistic | None = None,
) -> dict[str, Interval]:
    """Basic bootstrap intervals for every entry ``statistic`` returns, over resamples of the prompts.

    ``plug_in`` computes the same entries as functionals of the empirical distribution (see
    :func:`basic_interval`); by default the statistic is taken to be its own plug-in.
    """
    harmful = np.asarray(harmful)
    harmless = np.asarray(harmless)
    estimate = statistic(harmful, harmless)
    centers = plug_in(harmful, harmless) if plug_in is not None else estimate
    draws = replicates(harmful, harmless, statistic, n_boot, seed)
    return {key: basic_interval(estimate[key], draws[key], centers[key], level) for key in estimate}


def permutation_null(
    harmful: np.ndarray, harmless: np.ndarray, statistic: Statistic, n_perm: int = 200, seed: int = 0
) -> dict[str, np.ndarray]:
    """``statistic`` of label-shuffled sets: the prompts of both sets pooled, permuted and split again
    at the same sizes, ``n_perm`` times, stacked: key -> ``(n_perm, *shape)``.

    Whatever the statistic shows here, sampling noise alone produces: a hypothesis about a difference
    between the sets must exceed it (e.g. the cosine of the means falls with depth even for one
    distribution, because the noise grows with the variance).
    """
    if n_perm < 1:
        raise ValueError(f"n_perm must be at least 1; got {n_perm}")
    pooled = np.concatenate([np.asarray(harmful), np.asarray(harmless)])
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {}
    for _ in range(n_perm):
        order = rng.permutation(len(pooled))
        for key, value in statistic(pooled[order[: len(harmful)]], pooled[order[len(harmful) :]]).items():
            draws.setdefault(key, []).append(np.asarray(value, dtype=np.float64))
    return {key: np.stack(values) for key, values in draws.items()}
