"""Per-layer statistics of two contrastive sets of residual streams, and the
tests of shape that the hypotheses are phrased in.

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

STAT_NAMES = (
    "cosine",
    "var_mean/harmful",
    "var_mean/harmless",
    "var_max/harmful",
    "var_max/harmless",
)

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


def statistics_from_moments(
    p_mean: np.ndarray, p_var: np.ndarray, n_mean: np.ndarray, n_var: np.ndarray
) -> dict[str, np.ndarray]:
    """The note's three per-layer graphs, from each set's moments.

    Inputs are ``(L, d)``: per-layer mean and per-feature variance of the
    harmful (``p_*``) and harmless (``n_*``) sets.  This is the single
    definition of the statistics, so streaming accumulators that never hold
    all samples produce exactly what :func:`statistics_from_samples` does.
    """
    arrays = [np.asarray(x, dtype=np.float64) for x in (p_mean, p_var, n_mean, n_var)]
    shapes = {x.shape for x in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise ValueError(
            "moments must all have the same (layers, features) shape; got "
            f"{[x.shape for x in arrays]}"
        )
    p_mean, p_var, n_mean, n_var = arrays
    return {
        "cosine": mean_cosine(p_mean, n_mean),
        "var_mean/harmful": p_var.mean(axis=-1),
        "var_mean/harmless": n_var.mean(axis=-1),
        "var_max/harmful": p_var.max(axis=-1),
        "var_max/harmless": n_var.max(axis=-1),
    }


def statistics_from_samples(P: np.ndarray, N: np.ndarray) -> dict[str, np.ndarray]:
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
        P.mean(axis=0), P.var(axis=0, ddof=1), N.mean(axis=0), N.var(axis=0, ddof=1)
    )


@dataclass(frozen=True, eq=False)
class Interval:
    """A confidence interval, elementwise when the statistic is an array."""

    low: np.ndarray | float
    high: np.ndarray | float


def bootstrap(
    P: np.ndarray,
    N: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], Mapping[str, np.ndarray | float]],
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals for every entry ``statistic`` returns.

    Prompts are resampled with replacement within each set, so the two sets
    keep their sizes and the contrast between them is preserved.

    The returned interval is the hull of the percentile interval and the
    point estimate ``statistic(P, N)``: a biased statistic (the max of
    variances grows under resampling) can put the estimate outside the
    percentile interval, and an interval that excludes the observed value
    would be reported as if the observation were implausible.

    Replicates where the statistic is nan (e.g. a cosine with a zero mean)
    are ignored; where every replicate is nan the interval collapses to the
    estimate.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1; got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be strictly between 0 and 1; got {level}")
    P = np.asarray(P)
    N = np.asarray(N)
    estimate = {key: np.asarray(value, dtype=np.float64) for key, value in statistic(P, N).items()}
    rng = np.random.default_rng(seed)
    replicates: dict[str, list[np.ndarray]] = {key: [] for key in estimate}
    for _ in range(n_boot):
        p_idx = rng.integers(0, P.shape[0], size=P.shape[0])
        n_idx = rng.integers(0, N.shape[0], size=N.shape[0])
        for key, value in statistic(P[p_idx], N[n_idx]).items():
            replicates[key].append(np.asarray(value, dtype=np.float64))
    tail = 100.0 * (1.0 - level) / 2.0
    intervals = {}
    for key, point in estimate.items():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"All-NaN slice", RuntimeWarning)
            low, high = np.nanpercentile(np.stack(replicates[key]), [tail, 100.0 - tail], axis=0)
        low = np.fmin(low, point)
        high = np.fmax(high, point)
        if point.ndim == 0:
            intervals[key] = Interval(float(low), float(high))
        else:
            intervals[key] = Interval(low, high)
    return intervals


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
