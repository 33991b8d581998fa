"""The estimators the statistics are built from — cosines of two sets' means (plain and debiased), moments,
the cosine's standard error — and the :class:`Interval` their uncertainty is stated in. The statistics
themselves, one record each, are :mod:`geomcheck.stats.vocabulary`.

Arrays of samples are laid out as ``samples x layers x features``. Plain numpy, independent of torch and
pytest. Beside it, by job: :mod:`geomcheck.stats.resampling` (bootstrap intervals and label-permutation nulls
over the prompts) and :mod:`geomcheck.stats.trends` (the tests of shape the hypotheses are phrased in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SETS = ("harmful", "harmless")


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot products along the last axis without an ``a * b`` temporary (the bootstrap takes them of
    every replicate's means)."""
    return np.einsum("...d,...d->...", a, b)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``a`` and ``b`` along the last axis.

    Where either vector has zero norm the angle is undefined, so the result is
    nan there rather than a misleading 0 or a division warning.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norm_a = np.linalg.norm(a, axis=-1)
    norm_b = np.linalg.norm(b, axis=-1)
    dot = np.sum(a * b, axis=-1)  # not einsum: its other summation order breaks exact ties of parallel means (1.0), which cosine_spearman ranks
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
    return _debiased(harmful_mean, harmful_var, n_harmful, harmless_mean, harmless_var, n_harmless)[0]


def _debiased(
    harmful_mean: np.ndarray, harmful_var: np.ndarray, n_harmful: int, harmless_mean: np.ndarray, harmless_var: np.ndarray, n_harmless: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`debiased_cosine` and both corrected squared norms (1 where the means are not resolved),
    which :func:`cosine_gradients` reuses rather than computing them again over every replicate."""
    norm_harmful = np.asarray(debiased_norm2(harmful_mean, harmful_var, n_harmful), dtype=np.float64)
    norm_harmless = np.asarray(debiased_norm2(harmless_mean, harmless_var, n_harmless), dtype=np.float64)
    resolved = (norm_harmful > 0) & (norm_harmless > 0)
    norm_harmful, norm_harmless = np.where(resolved, norm_harmful, 1.0), np.where(resolved, norm_harmless, 1.0)
    scale = np.sqrt(norm_harmful) * np.sqrt(norm_harmless)
    return np.where(resolved, _dot(harmful_mean, harmless_mean) / scale, np.nan), norm_harmful, norm_harmless


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
    cosine, norm_h, norm_n = _debiased(mean_h, var_h, sizes[0], mean_n, var_n, sizes[1])
    scale = np.sqrt(norm_h) * np.sqrt(norm_n)
    safe = np.where(np.isfinite(cosine), cosine, 0.0)
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


def check_sizes(n_harmful: int, n_harmless: int) -> None:
    """A variance needs two samples per set; refuse fewer, naming both counts."""
    if n_harmful < 2 or n_harmless < 2:
        raise ValueError(f"at least 2 prompts per set are needed for a variance; got {n_harmful} harmful and {n_harmless} harmless")


def upper_quantile(values: np.ndarray, q: float) -> np.ndarray:
    """``np.quantile(values, q, axis=-1)`` (linear interpolation) by one partition at the lower order
    statistic and the minimum above it: np.quantile partitions at two, measured 7× slower on (61, 3072)
    rows, and the bootstrap takes it of every replicate."""
    position = q * (values.shape[-1] - 1)
    low = int(position)
    ordered = np.partition(values, low, axis=-1)
    below = ordered[..., low]
    above = ordered[..., low + 1 :].min(axis=-1) if low + 1 < values.shape[-1] else below
    return np.where(np.isnan(values).any(axis=-1), np.nan, below + (above - below) * (position - low))


@dataclass(frozen=True, eq=False)
class Interval:
    """A confidence interval, elementwise when the statistic is an array."""

    low: np.ndarray | float
    high: np.ndarray | float
