"""How a per-layer curve behaves with depth: the tests of shape the hypotheses are phrased in.

A log-linear growth fit and its comparison with a power law (hypothesis 1), the separation of two curves
by their intervals and attention's share of each layer's step (hypothesis 2) and a monotone trend
(hypothesis 3). Plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from geomcheck.stats.estimators import Interval

# Rounding noise on an exact fit must not be reported as a break in trend:
# residuals below this multiple of the log-values' magnitude count as zero.
_RESIDUAL_TOLERANCE = 1e-9


def describe_layers(layers: tuple[int, ...]) -> str:
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
        return describe_layers(self.outliers)


def _line(x: np.ndarray, y: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope and intercept of the least-squares line of ``y`` on ``x`` over the ``usable`` entries of the last
    axis, every leading (replicate) axis at once: the bootstrap fits each replicate's curve, and one
    masked product per sum replaces a Python loop over them (nan with fewer than two usable entries)."""
    usable = np.broadcast_to(usable, y.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        count = usable.sum(axis=-1)
        x_mean = np.where(usable, x, 0.0).sum(axis=-1) / count
        y_mean = np.where(usable, y, 0.0).sum(axis=-1) / count
        x_centered = np.where(usable, x - x_mean[..., None], 0.0)
        slope = np.sum(x_centered * np.where(usable, y - y_mean[..., None], 0.0), axis=-1) / np.sum(x_centered * x_centered, axis=-1)
    return slope, y_mean - slope * x_mean


class LogLinear(NamedTuple):
    """:func:`log_linear` of curves ``(..., L)``: the fit's slope, intercept and R² ``(...)``, nan where fewer
    than 3 layers are usable; residuals ``(..., L)`` in log space, nan at unusable layers; and the rounding
    ``tolerance`` ``(...)`` below which a residual counts as zero."""

    slope: np.ndarray
    intercept: np.ndarray
    r2: np.ndarray
    residuals: np.ndarray
    tolerance: np.ndarray

    @property
    def rate(self) -> np.ndarray:
        return np.exp(self.slope)


def log_linear(values: np.ndarray) -> LogLinear:
    """Fit ``log(values) = intercept + slope * layer`` by least squares over the finite positive values of
    each curve (last axis). When the log-values are constant (to rounding) a flat line fits them exactly and
    ``r2`` is 1.0 instead of 0/0."""
    values = np.asarray(values, dtype=np.float64)
    usable = np.isfinite(values) & (values > 0)
    y = np.log(np.where(usable, values, 1.0))
    x = np.arange(values.shape[-1], dtype=np.float64)
    slope, intercept = _line(x, y, usable)
    residuals = np.where(usable, y - (intercept[..., None] + slope[..., None] * x), np.nan)
    count = usable.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(usable, y - (np.sum(y, axis=-1) / count)[..., None], 0.0)  # y is 0 where unusable
        ss_tot, ss_res = np.sum(spread * spread, axis=-1), np.nansum(residuals * residuals, axis=-1)
        tolerance = _RESIDUAL_TOLERANCE * np.maximum(1.0, np.abs(y).max(axis=-1))
        r2 = np.where(ss_tot <= count * tolerance**2, 1.0, 1.0 - ss_res / ss_tot)
    few = count < 3
    return LogLinear(*(np.where(few, np.nan, a) for a in (slope, intercept, r2)), residuals, tolerance)


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
    fit = log_linear(values)
    fitted_residuals = fit.residuals[usable]
    deviation = np.abs(fitted_residuals - np.median(fitted_residuals))
    mad = float(np.median(deviation))
    scale = 1.4826 * mad if mad > 0 else float(np.std(fitted_residuals))
    breaks = (deviation > outlier_z * scale) & (deviation > fit.tolerance)
    return GrowthFit(
        rate=float(fit.rate),
        slope=float(fit.slope),
        intercept=float(fit.intercept),
        r2=float(fit.r2),
        residuals=fit.residuals,
        excluded=excluded,
        outliers=tuple(int(i) for i in layers[usable][breaks]),
    )


def degenerate_layers(values: np.ndarray, jump: float) -> tuple[int, ...]:
    """The leading layers that cannot carry a depth trend: each is zero or non-finite, or lies more than
    ``jump`` times below the next layer's value.

    At the last chat-template token every prompt's input to layer 0 is the same: its variance is 0
    (``pre``) or whatever little attention mixes in (``mid``, 3.6e-5 on SmolLM2), and in log space that
    one point decides any fit. Only leading layers qualify: once the prompts' states differ, every later
    layer sees the difference, so an interior dip is a break in trend (an outlier), not degeneracy."""
    values = np.asarray(values, dtype=np.float64)
    leading: list[int] = []
    for layer in range(values.size - 1):
        value, following = values[layer], values[layer + 1]
        if np.isfinite(value) and value > 0 and not (np.isfinite(following) and value * jump < following):
            break
        leading.append(layer)
    return tuple(leading)


@dataclass(frozen=True, eq=False)
class GrowthShape:
    """Exponential against power-law growth of a per-layer curve, on the layers that can carry a trend.

    ``exponential`` is :func:`growth_fit` (``log v = a + b·l``) with the ``degenerate`` leading layers
    left out; ``power`` and ``power_r2`` are the power law's ``log v = a + p·log(l+1)``. Both fits have
    two parameters, so ``delta_aic`` (AIC of the exponential minus the power law's, Gaussian residuals)
    is ``n·log(RSS_exp / RSS_pow)``: negative where the exponential fits better. ``nested_rate`` is the 95%
    interval of exp(b) in the nested fit ``log v = a + b·l + c·log(l+1)``: above 1 where the exponential term is
    needed beyond the power law. On a few layers the two regressors are nearly collinear and the interval is
    wide (nan below four layers): there the shape cannot be told, which ΔAIC alone would not say.
    """

    exponential: GrowthFit
    power: float
    power_intercept: float
    power_r2: float
    delta_aic: float
    degenerate: tuple[int, ...]
    nested_rate: tuple[float, float] = (float("nan"), float("nan"))

    @property
    def excluded(self) -> tuple[int, ...]:
        """Every layer left out: degenerate, or zero / non-finite further on."""
        return tuple(sorted(set(self.degenerate) | set(self.exponential.excluded)))

    def curves(self, layers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both fitted curves at ``layers``, in the curve's own units (for the figure)."""
        fit = self.exponential
        return np.exp(fit.intercept + fit.slope * layers), np.exp(self.power_intercept + self.power * np.log1p(layers))

    def describe(self) -> str:
        return f"exponential ×{self.exponential.rate:.3g}/layer R²={self.exponential.r2:.2f}, power law (l+1)^{self.power:.2f} R²={self.power_r2:.2f}, ΔAIC {self.delta_aic:+.1f}, nested exp(b) [{self.nested_rate[0]:.3g}, {self.nested_rate[1]:.3g}]"


def growth_shape(values: np.ndarray, degenerate_jump: float) -> GrowthShape:
    """Fit the exponential and the power law to ``values`` without its :func:`degenerate_layers`.

    R² alone cannot tell them apart: for v = (l+1)^p, log v = p·log(l+1), whose R² against l does not
    depend on p (0.85 at 30 layers), so the shape is decided by comparing the two fits."""
    values = np.asarray(values, dtype=np.float64)
    degenerate = degenerate_layers(values, degenerate_jump)
    kept = values.copy()
    kept[list(degenerate)] = np.nan
    exponential = growth_fit(kept)
    usable = np.isfinite(exponential.residuals)
    y = np.log(kept[usable])
    layers = np.arange(values.size)[usable].astype(np.float64)
    x = np.log1p(layers)
    power, intercept = (float(a) for a in _line(x, y, np.ones(y.shape, bool)))
    power_rss = float(np.sum((y - intercept - power * x) ** 2))
    exponential_rss = float(np.nansum(exponential.residuals**2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    floor = y.size * (_RESIDUAL_TOLERANCE * max(1.0, float(np.max(np.abs(y))))) ** 2  # an exact fit: rounding only
    return GrowthShape(
        exponential=exponential,
        power=power,
        power_intercept=intercept,
        power_r2=1.0 - power_rss / ss_tot if ss_tot > floor else 1.0,
        delta_aic=y.size * float(np.log(max(exponential_rss, floor) / max(power_rss, floor))),
        degenerate=degenerate,
        nested_rate=_nested_rate(layers, y),
    )


def _nested_rate(layers: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """95% t-interval of exp(b) in ``y = a + b·l + c·log(l+1)`` by least squares (nan with fewer than four
    points, where no residual degree of freedom is left for its error)."""
    from scipy.stats import t

    if y.size < 4:
        return float("nan"), float("nan")
    design = np.column_stack([np.ones_like(layers), layers, np.log1p(layers)])
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = y.size - 3
    sigma2 = float(np.sum((y - design @ coefficients) ** 2)) / dof
    se = float(np.sqrt(sigma2 * np.linalg.pinv(design.T @ design)[1, 1]))
    half = float(t.ppf(0.975, dof)) * se
    return float(np.exp(coefficients[1] - half)), float(np.exp(coefficients[1] + half))


def mean_log_ratio(lower: np.ndarray, upper: np.ndarray) -> np.float64 | np.ndarray:
    """Mean over layers (last axis) of ``log(upper / lower)``, over the layers where both are finite and
    positive (nan where none is): how far apart two curves are, e.g. a stream's variance over that of ``pre``."""
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    positive = np.isfinite(lower) & np.isfinite(upper) & (lower > 0) & (upper > 0)
    logs = np.log(np.where(positive, upper, 1.0) / np.where(positive, lower, 1.0))
    with np.errstate(invalid="ignore"):
        return (np.sum(logs, axis=-1) / positive.sum(axis=-1))[()]


@dataclass(frozen=True)
class Separation:
    """How far apart two per-layer curves are, and where they are resolved.

    ``mean_log_ratio`` is :func:`mean_log_ratio` of ``pre`` and ``mid``; ``fraction_separated`` is the share of
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
    comparable = ~(np.isnan(pre_low) | np.isnan(pre_high) | np.isnan(mid_low) | np.isnan(mid_high))
    apart = comparable & ((pre_high < mid_low) | (mid_high < pre_low))
    layers = np.arange(pre.size)
    n_compared = int(comparable.sum())
    return Separation(
        mean_log_ratio=mean_log_ratio(pre, mid),
        fraction_separated=float(apart.sum()) / n_compared if n_compared else float("nan"),
        separated_layers=tuple(int(i) for i in layers[apart]),
        compared_layers=tuple(int(i) for i in layers[comparable]),
    )


# Hypothesis 2's null: on a curve smooth on the scale of one layer (log-linear between ``pre`` at l and
# ``post`` at l + 1), a stream read half a layer later sits half way, whatever attention does.
POSITION_SHARE = 0.5


def attention_shares(pre: np.ndarray, mid: np.ndarray, post: np.ndarray) -> np.ndarray:
    """Attention's share of each layer's variance step, ``log(mid/pre) / log(post/pre)``; nan where a
    value is zero or non-finite or the layer's step is 0 (no step to share)."""
    pre, mid, post = (np.asarray(a, dtype=np.float64) for a in (pre, mid, post))
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.log(mid / pre) / np.log(post / pre)
    return np.where(np.isfinite(shares), shares, np.nan)


def pooled_attention_share(pre: np.ndarray, mid: np.ndarray, post: np.ndarray) -> float:
    """Attention's share of the variance growth over all layers, ``Σ log(mid/pre) / Σ log(post/pre)``
    over the layers where all three are finite and positive: a ratio of sums, because a layer whose step
    is near 0 would make its own ratio explode."""
    pre, mid, post = (np.asarray(a, dtype=np.float64) for a in (pre, mid, post))
    usable = np.isfinite(pre) & np.isfinite(mid) & np.isfinite(post) & (pre > 0) & (mid > 0) & (post > 0)
    step = float(np.sum(np.log(post[usable] / pre[usable])))
    return float(np.sum(np.log(mid[usable] / pre[usable]))) / step if usable.any() and step != 0 else float("nan")


@dataclass(frozen=True)
class Trend:
    """Monotone trend of a per-layer quantity: Spearman correlation with the
    layer index, and the least-squares slope per layer."""

    spearman: float
    slope: float


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis among the finite values, ties sharing their average rank as Spearman
    requires (nan where a value is not finite): the values below it, plus the mean place of its ties. A
    comparison with nan is false, so the non-finite values count nowhere; L x L comparisons per curve are
    nothing beside a sort's bookkeeping at the tens of layers a curve has."""
    below = np.sum(values[..., None, :] < values[..., :, None], axis=-1)
    tied = np.sum(values[..., None, :] == values[..., :, None], axis=-1)
    return np.where(np.isfinite(values), below + (tied + 1) / 2.0, np.nan)


def monotone_trend(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman ρ against the layer index and least-squares slope per layer ``(...)`` of curves ``(..., L)``,
    over each curve's finite values: 0.0 and 0.0 where those are constant (no trend), nan where fewer
    than two are finite."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    count = finite.sum(axis=-1)
    slope, _ = _line(np.arange(values.shape[-1], dtype=np.float64), values, finite)
    with np.errstate(divide="ignore", invalid="ignore"):
        centre = ((count + 1) / 2.0)[..., None]
        rank_x = np.where(finite, np.cumsum(finite, axis=-1) - centre, 0.0)  # the layers' ranks among the finite: 1, 2, …
        rank_y = np.where(finite, _average_ranks(values) - centre, 0.0)
        spearman = np.sum(rank_x * rank_y, axis=-1) / np.sqrt(np.sum(rank_x * rank_x, axis=-1) * np.sum(rank_y * rank_y, axis=-1))
    constant = np.where(finite, values, np.inf).min(axis=-1) == np.where(finite, values, -np.inf).max(axis=-1)
    return tuple(np.where(count < 2, np.nan, np.where(constant, 0.0, a)) for a in (spearman, slope))


def cosine_trend(values: np.ndarray) -> Trend:
    """Trend of the harmful/harmless cosine with depth (hypothesis 3): :func:`monotone_trend`.

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
    spearman, slope = monotone_trend(values)
    return Trend(spearman=float(spearman), slope=float(slope))


def early_late_fall(values: np.ndarray) -> float:
    """Mean of a per-layer curve over the early half of the layers minus its mean over the late half (the
    middle layer of an odd count in neither), non-finite layers ignored; nan where a half has none.

    Hypothesis 3 on the debiased cosine: every layer counts, not the last alone, and the difference is a
    mean of the curve, so :meth:`geomcheck.stats.geometry.Geometry.derive` gives it an interval from the same
    resamples. Constant true cosines give a fall of 0 however the noise grows with depth.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"values must be one value per layer, at least 2 layers; got shape {values.shape}")
    half = values.size // 2
    early, late = values[:half], values[values.size - half :]
    early, late = early[np.isfinite(early)], late[np.isfinite(late)]
    return float(early.mean() - late.mean()) if early.size and late.size else float("nan")
