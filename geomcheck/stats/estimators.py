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


Moments = tuple[np.ndarray, np.ndarray]  # a set's mean and per-feature variance (ddof=1) over its samples


@dataclass(frozen=True, eq=False)
class MeanProducts:
    """All that the cosine statistics read of two sets' moments: the means' dot product and squared norms, and
    each set's total variance (the sum over features, ddof=1), arrays of the same shape. From moments they are
    sums over features (:meth:`of`); the bootstrap gets every replicate's from Gram matrices of the prompts
    (:mod:`geomcheck.stats.geometry`), with no replicate's d-long means."""

    dot: np.ndarray
    norm2: tuple[np.ndarray, np.ndarray]  # harmful, harmless
    trace: tuple[np.ndarray, np.ndarray]

    @classmethod
    def of(cls, harmful: Moments, harmless: Moments) -> MeanProducts:
        return cls(*_inner(harmful[0], harmless[0]), (harmful[1].sum(axis=-1), harmless[1].sum(axis=-1)))


def _inner(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``a · b`` and both squared norms along the last axis, all by np.sum of a product (not einsum): one
    summation order, so parallel means give exact ties (1.0), which cosine_spearman ranks."""
    return np.sum(a * b, axis=-1), (np.sum(a * a, axis=-1), np.sum(b * b, axis=-1))


def plain_cosine(products: MeanProducts) -> np.ndarray:
    """Cosine of the two means; nan where either has zero norm (the angle is undefined: not a misleading 0)."""
    denominator = np.sqrt(products.norm2[0]) * np.sqrt(products.norm2[1])
    defined = denominator > 0
    return np.where(defined, products.dot / np.where(defined, denominator, 1.0), np.nan)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``a`` and ``b`` along the last axis (nan where either vector is zero)."""
    dot, norm2 = _inner(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return plain_cosine(MeanProducts(dot, norm2, (np.zeros_like(dot), np.zeros_like(dot))))


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
    products = MeanProducts.of((harmful_mean, harmful_var), (harmless_mean, harmless_var))
    return debiased(products, (n_harmful, n_harmless))[0]


def debiased(products: MeanProducts, sizes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`debiased_cosine` of the products, and both corrected squared norms (1 where the means are not
    resolved), which :func:`gradient_coefficients` reuses."""
    norm_harmful, norm_harmless = (np.asarray(norm - trace / size, dtype=np.float64) for norm, trace, size in zip(products.norm2, products.trace, sizes))
    resolved = (norm_harmful > 0) & (norm_harmless > 0)
    norm_harmful, norm_harmless = np.where(resolved, norm_harmful, 1.0), np.where(resolved, norm_harmless, 1.0)
    scale = np.sqrt(norm_harmful) * np.sqrt(norm_harmless)
    return np.where(resolved, products.dot / scale, np.nan), norm_harmful, norm_harmless


def moments(samples: np.ndarray) -> Moments:
    """Mean and per-feature variance (ddof=1) over the first axis, accumulated in float64: a float32 sum
    over many prompts would lose the small features' variance beside the massive activations."""
    samples = np.asarray(samples)
    return samples.mean(axis=0, dtype=np.float64), samples.var(axis=0, ddof=1, dtype=np.float64)


def gradient_coefficients(products: MeanProducts, sizes: tuple[int, int]) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """:func:`debiased_cosine` of the products and its gradient in each set's mean, as coefficients of the two
    means: ``gradient_h = c_h[0] · mean_h + c_h[1] · mean_n``, alike for ``gradient_n``. A sample's projection on
    its set's gradient is its influence on the cosine, so the cosine's variance needs no d x d covariance,
    and a projection is two dot products (which the bootstrap reads off Gram matrices). Finite everywhere
    (0-safe norms); the cosine is nan where the means are not resolved, and so is any error made from it."""
    cosine, norm_h, norm_n = debiased(products, sizes)
    scale = np.sqrt(norm_h) * np.sqrt(norm_n)
    safe = np.where(np.isfinite(cosine), cosine, 0.0)
    return cosine, (-safe / norm_h, 1.0 / scale), (1.0 / scale, -safe / norm_n)


def cosine_gradients(harmful: Moments, harmless: Moments, sizes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`debiased_cosine` of two sets' moments ``(..., d)`` and its gradients in each set's mean, as vectors
    (:func:`gradient_coefficients`)."""
    means = harmful[0], harmless[0]
    cosine, *coefficients = gradient_coefficients(MeanProducts.of(harmful, harmless), sizes)
    gradient_h, gradient_n = (c[0][..., None] * means[0] + c[1][..., None] * means[1] for c in coefficients)
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
