"""Per-layer statistics of two contrastive sets of residual streams, their bootstrap intervals and
label-permutation nulls, and the tests of shape that the hypotheses are phrased in.

Arrays of samples are laid out as ``samples x layers x features``.  Everything
here is plain numpy so that the same definitions serve the in-memory path,
the streaming accumulators (through :func:`statistics_from_moments`) and the
property tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

SETS = ("harmful", "harmless")

# The vocabulary of statistics: every value a Geometry holds is ``<stream>/<statistic>``, where
# ``<statistic>`` is one of these (``{set}`` standing for harmful or harmless), or a scalar
# ``<stream>/<summary>`` from SUMMARIES. The README's statistics table is held against these by a test.
CURVES: dict[str, str] = {
    "cosine": "cosine of the two sets' mean vectors (biased toward 0 by sampling noise: see cosine_debiased)",
    "cosine_debiased": "cosine of the means with each squared norm corrected by tr(Σ̂)/n (the cross term is unbiased)",
    "var_mean/{set}": "mean over features of the per-feature variance",
    "var_max/{set}": "largest per-feature variance (dominated by massive activations)",
    "var_q99/{set}": "99th percentile of the per-feature variances: a max that a few massive features cannot move",
    "top_feature/{set}": "index of the feature with the largest variance (no interval; a baseline compares it where that feature holds ≥ half the variance)",
    "top_share/{set}": "that feature's share of the total variance (near 1: one massive feature holds it all)",
    "cosine_null": "mean cosine of the means of label-shuffled sets: what sampling noise alone gives (no interval)",
}
SUMMARIES: dict[str, str] = {
    "growth_rate/{set}": "exp(slope) of a least-squares fit of log(var_mean) on depth: growth per layer",
    "growth_r2/{set}": "R² of that log-linear fit",
    "cosine_spearman": "Spearman ρ of cosine against the layer index",
    "cosine_slope": "least-squares slope of cosine per layer",
    "cosine_null_ratio": "1 − cosine at the last layer over 1 − cosine_null there: the fall against shuffled labels",
    "cosine_null_p": "share of label shufflings whose last-layer cosine is as low as the observed (no interval)",
    "log_ratio_to_pre/{set}": "mean over layers of log(var_mean / var_mean of pre); mid and post only",
}
QUANTILE = 0.99
# Statistics confined to a range: a basic interval (a reflection) may leave it, and is clipped back, which
# cannot lose coverage since the truth lies inside.
RANGES: dict[str, tuple[float, float]] = {
    "cosine": (-1.0, 1.0),
    "cosine_spearman": (-1.0, 1.0),
    "top_share/harmful": (0.0, 1.0),
    "top_share/harmless": (0.0, 1.0),
}
# Point values only: an interval of an index means nothing.
NO_INTERVAL = ("top_feature/harmful", "top_feature/harmless")


def expand(names: Mapping[str, str]) -> tuple[str, ...]:
    """Vocabulary entries with ``{set}`` spelled out for both sets."""
    return tuple(name.format(set=which) for name in names for which in (SETS if "{set}" in name else ("",)))


# The per-layer curves computed from each set's moments (CURVES but the null, which needs the samples).
STAT_NAMES = tuple(name for name in expand(CURVES) if name != "cosine_null")

# Rounding noise on an exact fit must not be reported as a break in trend:
# residuals below this multiple of the log-values' magnitude count as zero.
_RESIDUAL_TOLERANCE = 1e-9


def mean_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``a`` and ``b`` along the last axis.

    Where either vector has zero norm the angle is undefined, so the result is
    nan there rather than a misleading 0 or a division warning.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norm_a = np.linalg.norm(a, axis=-1)
    norm_b = np.linalg.norm(b, axis=-1)
    dot = np.sum(a * b, axis=-1)
    denominator = norm_a * norm_b
    defined = denominator > 0
    safe = np.where(defined, denominator, 1.0)
    return np.where(defined, dot / safe, np.nan)


def debiased_cosine(p_mean: np.ndarray, p_var: np.ndarray, n_p: int, n_mean: np.ndarray, n_var: np.ndarray, n_n: int) -> np.ndarray:
    """Cosine of the true means, estimated without the sampling-noise bias of the sample means.

    ``E‖x̄‖² = ‖μ‖² + tr(Σ)/n``, so the noise inflates both norms and pulls the cosine toward 0 — by more
    as the variance grows with depth. Each squared norm is corrected by ``tr(Σ̂)/n``; the dot product of
    two independent sets' means is already unbiased. Where a corrected norm is not positive the means are
    not resolved from noise and the result is nan. It may slightly exceed 1 in magnitude (not clipped).
    """
    dot = np.sum(p_mean * n_mean, axis=-1)
    norm_p = np.sum(p_mean**2, axis=-1) - p_var.sum(axis=-1) / n_p
    norm_n = np.sum(n_mean**2, axis=-1) - n_var.sum(axis=-1) / n_n
    resolved = (norm_p > 0) & (norm_n > 0)
    return np.where(resolved, dot / (np.sqrt(np.where(resolved, norm_p, 1.0)) * np.sqrt(np.where(resolved, norm_n, 1.0))), np.nan)


def _variance_profile(var: np.ndarray) -> dict[str, np.ndarray]:
    """Max, high quantile, arg-max and share of the largest of per-feature variances ``(L, d)``."""
    total = var.sum(axis=-1)
    top = var.max(axis=-1)
    return {
        "var_max": top,
        "var_q99": np.quantile(var, QUANTILE, axis=-1),
        "top_feature": var.argmax(axis=-1).astype(np.float64),
        "top_share": np.where(total > 0, top / np.where(total > 0, total, 1.0), np.nan),
    }


def statistics_from_moments(
    p_mean: np.ndarray,
    p_var: np.ndarray,
    n_mean: np.ndarray,
    n_var: np.ndarray,
    sizes: tuple[int, int],
    plug_in: bool = False,
) -> dict[str, np.ndarray]:
    """The per-layer curves of STAT_NAMES, from each set's moments.

    Inputs are ``(L, d)``: per-layer mean and per-feature variance (ddof=1) of the harmful (``p_*``) and
    harmless (``n_*``) sets, of ``sizes`` prompts. This is the single definition of the statistics, so
    streaming accumulators that never hold all samples produce exactly what
    :func:`statistics_from_samples` does.

    ``plug_in=True`` gives the same functionals of the *empirical* distribution (variances with ddof=0,
    the plain cosine for the debiased one): the value the bootstrap replicates scatter around, which the
    basic bootstrap interval pivots on (see :func:`basic_interval`).
    """
    arrays = [np.asarray(x, dtype=np.float64) for x in (p_mean, p_var, n_mean, n_var)]
    shapes = {x.shape for x in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise ValueError(
            "moments must all have the same (layers, features) shape; got "
            f"{[x.shape for x in arrays]}"
        )
    p_mean, p_var, n_mean, n_var = arrays
    n_p, n_n = sizes
    if plug_in:
        p_var, n_var = p_var * (n_p - 1) / n_p, n_var * (n_n - 1) / n_n
    cosine = mean_cosine(p_mean, n_mean)
    out = {"cosine": cosine, "cosine_debiased": cosine if plug_in else debiased_cosine(p_mean, p_var, n_p, n_mean, n_var, n_n)}
    profiles = {"harmful": _variance_profile(p_var), "harmless": _variance_profile(n_var)}
    out["var_mean/harmful"], out["var_mean/harmless"] = p_var.mean(axis=-1), n_var.mean(axis=-1)
    for name in ("var_max", "var_q99", "top_feature", "top_share"):
        for which in SETS:
            out[f"{name}/{which}"] = profiles[which][name]
    return {name: out[name] for name in STAT_NAMES}


def statistics_from_samples(P: np.ndarray, N: np.ndarray, plug_in: bool = False) -> dict[str, np.ndarray]:
    """Statistics of harmful samples ``P`` (n, L, d) and harmless ``N`` (m, L, d).

    Moments are taken in float64 because activations are often stored in half
    precision, where summing thousands of prompts loses the variance.
    """
    P = np.asarray(P, dtype=np.float64)
    N = np.asarray(N, dtype=np.float64)
    if P.ndim != 3 or N.ndim != 3 or P.shape[1:] != N.shape[1:]:
        raise ValueError(
            "P and N must be (samples, layers, features) with the same layers "
            f"and features; got {P.shape} and {N.shape}"
        )
    if P.shape[0] < 2 or N.shape[0] < 2:
        raise ValueError(
            "at least 2 prompts per set are needed for a variance; got "
            f"{P.shape[0]} harmful and {N.shape[0]} harmless"
        )
    return statistics_from_moments(
        P.mean(axis=0), P.var(axis=0, ddof=1), N.mean(axis=0), N.var(axis=0, ddof=1), (len(P), len(N)), plug_in
    )


@dataclass(frozen=True, eq=False)
class Interval:
    """A confidence interval, elementwise when the statistic is an array."""

    low: np.ndarray | float
    high: np.ndarray | float


Statistic = Callable[[np.ndarray, np.ndarray], Mapping[str, "np.ndarray | float"]]


def resample_indices(sizes: tuple[int, int], n_boot: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The prompts each bootstrap replicate draws, with replacement within each set (so both sets keep
    their sizes). Every interval of a run comes from these same draws: a seed fixes them all."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1; got {n_boot}")
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, sizes[0], size=sizes[0]), rng.integers(0, sizes[1], size=sizes[1])) for _ in range(n_boot)]


def replicates(P: np.ndarray, N: np.ndarray, statistic: Statistic, n_boot: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """``statistic`` of each bootstrap resample of the prompts, stacked: key -> ``(n_boot, *shape)``."""
    draws: dict[str, list[np.ndarray]] = {}
    for p_idx, n_idx in resample_indices((len(P), len(N)), n_boot, seed):
        for key, value in statistic(P[p_idx], N[n_idx]).items():
            draws.setdefault(key, []).append(np.asarray(value, dtype=np.float64))
    return {key: np.stack(values) for key, values in draws.items()}


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
    statistic pivots on the log scale. Measured coverage: tests/test_coverage.py and the README.

    The interval is widened to hold the estimate where it would not (a degenerate resampling), and
    replicates that are nan are ignored; where all are, the interval collapses to the estimate. ``bounds``
    is the statistic's range (e.g. -1 to 1 for a correlation), which the interval is clipped to.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be strictly between 0 and 1; got {level}")
    point = np.asarray(estimate, dtype=np.float64)
    pivot = point if center is None else np.asarray(center, dtype=np.float64)
    draws = np.asarray(draws, dtype=np.float64)
    # A positive statistic (a variance, a rate) pivots on the log scale, where its skew is smaller.
    positive = (point > 0) & (pivot > 0) & np.all((draws > 0) | np.isnan(draws), axis=0)
    log = lambda x: np.log(np.where(positive, x, 1.0))  # noqa: E731
    scale = lambda x, like: np.where(positive, log(x), like)  # noqa: E731
    tail = 100.0 * (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"All-NaN slice", RuntimeWarning)
        q_low, q_high = np.nanpercentile(scale(draws, draws), [tail, 100.0 - tail], axis=0)
    point_s, pivot_s = scale(point, point), scale(pivot, pivot)
    low_s, high_s = point_s - (q_high - pivot_s), point_s - (q_low - pivot_s)
    with np.errstate(over="ignore"):  # a bound beyond float range is an infinite bound
        low = np.where(positive, np.exp(np.where(positive, low_s, 0.0)), low_s)
        high = np.where(positive, np.exp(np.where(positive, high_s, 0.0)), high_s)
    low, high = np.fmin(np.clip(low, *bounds), point), np.fmax(np.clip(high, *bounds), point)
    if point.ndim == 0:
        return Interval(float(low), float(high))
    return Interval(low, high)


def bootstrap(
    P: np.ndarray,
    N: np.ndarray,
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
    P = np.asarray(P)
    N = np.asarray(N)
    estimate = statistic(P, N)
    centers = plug_in(P, N) if plug_in is not None else estimate
    draws = replicates(P, N, statistic, n_boot, seed)
    return {key: basic_interval(estimate[key], draws[key], centers[key], level) for key in estimate}


def permutation_null(P: np.ndarray, N: np.ndarray, statistic: Statistic, n_perm: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """``statistic`` of label-shuffled sets: the prompts of both sets pooled, permuted and split again
    at the same sizes, ``n_perm`` times, stacked: key -> ``(n_perm, *shape)``.

    Whatever the statistic shows here, sampling noise alone produces: a hypothesis about a difference
    between the sets must exceed it (e.g. the cosine of the means falls with depth even for one
    distribution, because the noise grows with the variance).
    """
    if n_perm < 1:
        raise ValueError(f"n_perm must be at least 1; got {n_perm}")
    pooled = np.concatenate([np.asarray(P), np.asarray(N)])
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {}
    for _ in range(n_perm):
        order = rng.permutation(len(pooled))
        for key, value in statistic(pooled[order[: len(P)]], pooled[order[len(P):]]).items():
            draws.setdefault(key, []).append(np.asarray(value, dtype=np.float64))
    return {key: np.stack(values) for key, values in draws.items()}


def _describe_layers(layers: tuple[int, ...]) -> str:
    """Runs of consecutive layers as ranges, because spans are what a reader
    looks for when a trend breaks."""
    if not layers:
        return "no layer"
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    parts = [f"{run[0]}\u2013{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs]
    noun = "layer" if len(layers) == 1 else "layers"
    return f"{noun} {', '.join(parts)}"


@dataclass(frozen=True, eq=False)
class GrowthFit:
    """A log-linear fit of a per-layer quantity against depth.

    ``rate`` is ``exp(slope)``: the multiplicative growth per layer.
    ``residuals`` are in log space, nan at ``excluded`` layers, whose value is
    zero, negative or non-finite so its log is undefined (with a chat
    template every prompt ends in the same tokens, so the layer-0 ``pre``
    variance is exactly 0).  ``outliers`` are layers that break the trend.
    """

    rate: float
    slope: float
    intercept: float
    r2: float
    residuals: np.ndarray
    excluded: tuple[int, ...]
    outliers: tuple[int, ...]

    def describe_outliers(self) -> str:
        """E.g. ``"layers 14–18, 22"``, or ``"no layer"``."""
        return _describe_layers(self.outliers)


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of the least-squares line of ``y`` on ``x``."""
    x_centered = x - x.mean()
    slope = float(np.dot(x_centered, y - y.mean()) / np.dot(x_centered, x_centered))
    return slope, float(y.mean() - slope * x.mean())


def growth_fit(values: np.ndarray, outlier_z: float = 3.0) -> GrowthFit:
    """Fit ``log(values) = intercept + slope * layer`` by least squares.

    Near-exponential growth with depth is a straight line in log space, so the
    fit's ``rate`` and ``r2`` measure hypothesis 1 directly.

    Outliers are layers whose residual lies more than ``outlier_z`` robust
    standard deviations (1.4826 x MAD of the residuals, or their plain std
    when the MAD is 0) from the residuals' median, so a block of anomalous
    layers can neither hide itself by inflating the scale nor, by pulling
    the least-squares line off the other layers, get those flagged instead.
    When the log-values are constant (to rounding) a flat line fits them
    exactly and ``r2`` is defined as 1.0 instead of 0/0.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be one value per layer; got shape {values.shape}")
    usable = np.isfinite(values) & (values > 0)
    layers = np.arange(values.size)
    excluded = tuple(int(i) for i in layers[~usable])
    if usable.sum() < 3:
        raise ValueError(
            f"growth_fit needs at least 3 layers with a finite positive value; "
            f"{int(usable.sum())} of {values.size} are usable (the log of a zero, "
            f"negative or non-finite value is undefined; excluded layers: {list(excluded)})"
        )
    x = layers[usable].astype(np.float64)
    y = np.log(values[usable])
    slope, intercept = _ols(x, y)
    fitted_residuals = y - (intercept + slope * x)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    tolerance = _RESIDUAL_TOLERANCE * max(1.0, float(np.max(np.abs(y))))
    if ss_tot <= y.size * tolerance**2:
        r2 = 1.0
    else:
        r2 = 1.0 - float(np.sum(fitted_residuals**2)) / ss_tot
    deviation = np.abs(fitted_residuals - np.median(fitted_residuals))
    mad = float(np.median(deviation))
    scale = 1.4826 * mad if mad > 0 else float(np.std(fitted_residuals))
    breaks = (deviation > outlier_z * scale) & (deviation > tolerance)
    residuals = np.full(values.size, np.nan)
    residuals[usable] = fitted_residuals
    return GrowthFit(
        rate=float(np.exp(slope)),
        slope=slope,
        intercept=intercept,
        r2=r2,
        residuals=residuals,
        excluded=excluded,
        outliers=tuple(int(i) for i in layers[usable][breaks]),
    )


@dataclass(frozen=True)
class Separation:
    """How far apart two per-layer curves are, and where they are resolved.

    ``mean_log_ratio`` is the mean over layers where both are positive of
    ``log(mid / pre)``; ``fraction_separated`` is the share of
    ``compared_layers`` whose confidence intervals do not overlap.
    """

    mean_log_ratio: float
    fraction_separated: float
    separated_layers: tuple[int, ...]
    compared_layers: tuple[int, ...]


def separation(
    pre: np.ndarray, mid: np.ndarray, pre_interval: Interval, mid_interval: Interval
) -> Separation:
    """Compare the ``pre`` and ``mid`` curves (hypothesis 2).

    A layer whose value is non-positive or non-finite has no log-ratio but its
    intervals still say whether the curves are resolved there, so it is
    excluded from ``mean_log_ratio`` only.  Layers with a nan interval bound
    cannot be judged and are left out of ``compared_layers``.  Either summary
    is nan when no layer qualifies for it.
    """
    pre = np.asarray(pre, dtype=np.float64)
    mid = np.asarray(mid, dtype=np.float64)
    if pre.ndim != 1 or pre.shape != mid.shape:
        raise ValueError(f"pre and mid must be 1-D of equal length; got {pre.shape}, {mid.shape}")
    shape = pre.shape
    pre_low, pre_high, mid_low, mid_high = (
        np.broadcast_to(np.asarray(bound, dtype=np.float64), shape)
        for bound in (pre_interval.low, pre_interval.high, mid_interval.low, mid_interval.high)
    )
    positive = np.isfinite(pre) & np.isfinite(mid) & (pre > 0) & (mid > 0)
    mean_log_ratio = (
        float(np.mean(np.log(mid[positive] / pre[positive]))) if positive.any() else float("nan")
    )
    comparable = ~(np.isnan(pre_low) | np.isnan(pre_high) | np.isnan(mid_low) | np.isnan(mid_high))
    apart = comparable & ((pre_high < mid_low) | (mid_high < pre_low))
    layers = np.arange(pre.size)
    n_compared = int(comparable.sum())
    return Separation(
        mean_log_ratio=mean_log_ratio,
        fraction_separated=float(apart.sum()) / n_compared if n_compared else float("nan"),
        separated_layers=tuple(int(i) for i in layers[apart]),
        compared_layers=tuple(int(i) for i in layers[comparable]),
    )


@dataclass(frozen=True)
class Trend:
    """Monotone trend of a per-layer quantity: Spearman correlation with the
    layer index, and the least-squares slope per layer."""

    spearman: float
    slope: float


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank as Spearman requires."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def cosine_trend(values: np.ndarray) -> Trend:
    """Trend of the harmful/harmless cosine with depth (hypothesis 3).

    Spearman rather than Pearson because the hypothesis is "falls", not "falls
    linearly".  Non-finite values (undefined cosines) are dropped.  Constant
    values have no trend: spearman and slope are both 0.0.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be one value per layer; got shape {values.shape}")
    finite = np.isfinite(values)
    if finite.sum() < 2:
        raise ValueError(
            f"cosine_trend needs at least 2 finite values; got {int(finite.sum())} "
            f"of {values.size}"
        )
    x = np.arange(values.size, dtype=np.float64)[finite]
    y = values[finite]
    if np.ptp(y) == 0:
        return Trend(spearman=0.0, slope=0.0)
    slope, _ = _ols(x, y)
    rank_x = _average_ranks(x) - (x.size + 1) / 2.0
    rank_y = _average_ranks(y) - (y.size + 1) / 2.0
    spread = np.sqrt(np.dot(rank_x, rank_x) * np.dot(rank_y, rank_y))
    spearman = float(np.dot(rank_x, rank_y) / spread)
    return Trend(spearman=spearman, slope=slope)
