"""Per-layer statistics of two contrastive sets of residual streams: their vocabulary, their definitions,
and the :class:`Interval` their uncertainty is stated in.

Arrays of samples are laid out as ``samples x layers x features``. Plain numpy, independent of torch and
pytest. Beside it, by job: :mod:`geomcheck.stats.resampling` (bootstrap intervals and label-permutation nulls
over the prompts) and :mod:`geomcheck.stats.trends` (the tests of shape the hypotheses are phrased in).
"""

from __future__ import annotations

from collections.abc import Mapping
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
    "kurtosis/{set}": "median over layers and features of the excess kurtosis across prompts: 0 Gaussian, ≫ 0 heavy tails (no interval)",
}
QUANTILE = 0.99
# Statistics confined to a range: a basic interval (a reflection) may leave it, and is clipped back, which
# cannot lose coverage since the truth lies inside.
RANGES: dict[str, tuple[float, float]] = {
    "cosine": (-1.0, 1.0),
    "cosine_spearman": (-1.0, 1.0),
    "cosine_null_ratio": (0.0, np.inf),  # a ratio of two falls from 1
    **{f"{name}/{s}": (0.0, np.inf) for name in ("var_mean", "var_max", "var_q99", "growth_rate") for s in SETS},
    **{f"{name}/{s}": (0.0, 1.0) for name in ("top_share", "growth_r2") for s in SETS},
}
# Point values only: an interval of an index means nothing, nor one of a description of the tails.
NO_INTERVAL = ("top_feature/harmful", "top_feature/harmless", "kurtosis/harmful", "kurtosis/harmless")


def expand(names: Mapping[str, str]) -> tuple[str, ...]:
    """Vocabulary entries with ``{set}`` spelled out for both sets."""
    return tuple(name.format(set=prompt_set) for name in names for prompt_set in (SETS if "{set}" in name else ("",)))


# The per-layer curves computed from each set's mean and variance (CURVES but the null, which shuffles the prompts).
STAT_NAMES = tuple(name for name in expand(CURVES) if name != "cosine_null")

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


def debiased_norm2(mean: np.ndarray, var: np.ndarray, n: int) -> np.ndarray:
    """``‖μ‖²`` estimated from a set's sample mean and per-feature variance (ddof=1) of ``n`` samples:
    ``E‖x̄‖² = ‖μ‖² + tr(Σ)/n``, so the sample mean's squared norm is corrected by ``tr(Σ̂)/n``."""
    return np.sum(mean**2, axis=-1) - var.sum(axis=-1) / n


def debiased_cosine(
    harmful_mean: np.ndarray,
    harmful_var: np.ndarray,
    n_harmful: int,
    harmless_mean: np.ndarray,
    harmless_var: np.ndarray,
    n_harmless: int,
) -> np.ndarray:
    """Cosine of the true means, estimated without the sampling-noise bias of the sample means.

    The noise inflates both norms (:func:`debiased_norm2`) and pulls the cosine toward 0 — by more as the
    variance grows with depth. Each squared norm is corrected; the dot product of two independent sets'
    means is already unbiased. Where a corrected norm is not positive the means are not resolved from
    noise and the result is nan. It may slightly exceed 1 in magnitude (not clipped).
    """
    norm_harmful = np.asarray(debiased_norm2(harmful_mean, harmful_var, n_harmful), dtype=np.float64)
    norm_harmless = np.asarray(debiased_norm2(harmless_mean, harmless_var, n_harmless), dtype=np.float64)
    resolved = (norm_harmful > 0) & (norm_harmless > 0)
    scale = np.sqrt(np.where(resolved, norm_harmful, 1.0)) * np.sqrt(np.where(resolved, norm_harmless, 1.0))
    return np.where(resolved, np.sum(harmful_mean * harmless_mean, axis=-1) / scale, np.nan)


Moments = tuple[np.ndarray, np.ndarray]  # a set's mean and per-feature variance (ddof=1) over its samples


def moments(samples: np.ndarray) -> Moments:
    """Mean and per-feature variance (ddof=1) over the first axis, accumulated in float64: a float32 sum
    over many prompts would lose the small features' variance beside the massive activations."""
    samples = np.asarray(samples)
    return samples.mean(axis=0, dtype=np.float64), samples.var(axis=0, ddof=1, dtype=np.float64)


def cosine_gradients(harmful: Moments, harmless: Moments, sizes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`debiased_cosine` of two sets' moments ``(..., d)`` and its gradients in each set's mean.

    A sample's projection on its set's gradient is its influence on the cosine, so the cosine's variance
    needs no d x d covariance. Gradients are finite everywhere (0-safe norms); the cosine is nan where the
    means are not resolved, and so is any error made from it."""
    (mean_h, var_h), (mean_n, var_n) = harmful, harmless
    cosine = debiased_cosine(mean_h, var_h, sizes[0], mean_n, var_n, sizes[1])
    resolved = np.isfinite(cosine)
    norm_h, norm_n = (np.where(resolved, debiased_norm2(*m), 1.0) for m in ((mean_h, var_h, sizes[0]), (mean_n, var_n, sizes[1])))
    scale = np.sqrt(norm_h) * np.sqrt(norm_n)
    safe = np.where(resolved, cosine, 0.0)
    gradient_h = mean_n / scale[..., None] - (safe / norm_h)[..., None] * mean_h
    gradient_n = mean_h / scale[..., None] - (safe / norm_n)[..., None] * mean_n
    return cosine, gradient_h, gradient_n


def cosine_standard_error(
    harmful: np.ndarray, harmless: np.ndarray, harmful_moments: Moments | None = None, harmless_moments: Moments | None = None
) -> np.ndarray:
    """Delta-method standard error of :func:`debiased_cosine`, per layer, from samples ``(n, ..., d)``.

    The variance of the samples' projections on :func:`cosine_gradients`, over each set's size. It
    studentizes the cosine's bootstrap (see :func:`geomcheck.stats.resampling.studentized_interval`): the
    cosine's spread depends on the angle itself, so its replicates are only comparable once divided by
    it. ``*_moments`` are the sets' moments where already at hand, or moved (the bootstrap's debiased
    world moves the means, never the spread). nan where the means are not resolved.
    """
    observed = harmful_moments or moments(harmful), harmless_moments or moments(harmless)
    sizes = (len(harmful), len(harmless))
    cosine, *gradients = cosine_gradients(*observed, sizes)
    spread = sum(
        np.einsum("n...d,...d->n...", samples, gradient).var(axis=0, ddof=1) / size
        for samples, gradient, size in zip((harmful, harmless), gradients, sizes)
    )
    return np.where(np.isfinite(cosine), np.sqrt(spread), np.nan)


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
    harmful_mean: np.ndarray,
    harmful_var: np.ndarray,
    harmless_mean: np.ndarray,
    harmless_var: np.ndarray,
    sizes: tuple[int, int],
    plug_in: bool = False,
) -> dict[str, np.ndarray]:
    """The per-layer curves of STAT_NAMES, from each set's first two moments.

    Inputs are ``(L, d)``: per-layer mean and per-feature variance (ddof=1) of the harmful and harmless
    sets, of ``sizes`` prompts. The single definition of the statistics: every curve is a function of
    these moments alone, which :func:`statistics_from_samples` takes of the samples.

    ``plug_in=True`` gives the same functionals of the *empirical* distribution (variances with ddof=0,
    the plain cosine for the debiased one): the value the bootstrap replicates scatter around, which the
    basic bootstrap interval pivots on (see :func:`geomcheck.stats.resampling.basic_interval`).
    """
    arrays = [np.asarray(x, dtype=np.float64) for x in (harmful_mean, harmful_var, harmless_mean, harmless_var)]
    shapes = {x.shape for x in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise ValueError(
            "moments must all have the same (layers, features) shape; got "
            f"{[x.shape for x in arrays]}"
        )
    harmful_mean, harmful_var, harmless_mean, harmless_var = arrays
    n_harmful, n_harmless = sizes
    if plug_in:
        harmful_var, harmless_var = harmful_var * (n_harmful - 1) / n_harmful, harmless_var * (n_harmless - 1) / n_harmless
    cosine = mean_cosine(harmful_mean, harmless_mean)
    out = {"cosine": cosine, "cosine_debiased": cosine}
    if not plug_in:
        out["cosine_debiased"] = debiased_cosine(harmful_mean, harmful_var, n_harmful, harmless_mean, harmless_var, n_harmless)
    for prompt_set, var in (("harmful", harmful_var), ("harmless", harmless_var)):
        out[f"var_mean/{prompt_set}"] = var.mean(axis=-1)
        for name, curve in _variance_profile(var).items():
            out[f"{name}/{prompt_set}"] = curve
    return {name: out[name] for name in STAT_NAMES}


def check_sizes(n_harmful: int, n_harmless: int) -> None:
    """A variance needs two samples per set; refuse fewer, naming both counts."""
    if n_harmful < 2 or n_harmless < 2:
        raise ValueError(f"at least 2 prompts per set are needed for a variance; got {n_harmful} harmful and {n_harmless} harmless")


def statistics_from_samples(harmful: np.ndarray, harmless: np.ndarray, plug_in: bool = False) -> dict[str, np.ndarray]:
    """Statistics of harmful samples (n, L, d) and harmless samples (m, L, d), from their :func:`moments`."""
    harmful, harmless = np.asarray(harmful), np.asarray(harmless)
    if harmful.ndim != 3 or harmless.ndim != 3 or harmful.shape[1:] != harmless.shape[1:]:
        raise ValueError(
            "harmful and harmless samples must be (samples, layers, features) with the same layers "
            f"and features; got {harmful.shape} and {harmless.shape}"
        )
    check_sizes(len(harmful), len(harmless))
    return statistics_from_moments(*moments(harmful), *moments(harmless), (len(harmful), len(harmless)), plug_in)


@dataclass(frozen=True, eq=False)
class Interval:
    """A confidence interval, elementwise when the statistic is an array."""

    low: np.ndarray | float
    high: np.ndarray | float
