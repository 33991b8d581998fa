"""One model's geometry: the note's per-layer curves and the hypotheses' summary figures, with intervals.

Every value is named by one key form, ``<stream>/<statistic>`` (the vocabulary: :data:`CURVES` and
:data:`SUMMARIES` in :mod:`geomcheck.stats.vocabulary`, one record per statistic, tabled in the docs), and every value reads the same way:
``geometry.value(key)``, ``geometry.interval(key)``, ``geometry.describe(key)``.

Everything is computed in one seeded bootstrap pass over prompts, and the replicates are kept, so a
statistic a user derives later (:meth:`Geometry.derive`) gets its 95% interval from the same resamples
without a bootstrap of its own. Pure numpy: the arrays may come from a fresh capture or from the cache.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from geomcheck.stats.resampling import (
    SUBSAMPLE_EXPONENTS,
    basic_interval,
    debiased_world,
    permutation_masks,
    resample_counts,
    resample_indices,
    studentized_interval,
    subsample_counts,
    world_transform,
)
from geomcheck.stats.estimators import SETS, Interval, MeanProducts, Moments, check_sizes, gradient_coefficients, mean_cosine, plain_cosine
from geomcheck.stats.trends import GrowthFit, Separation, Trend, cosine_trend, growth_fit, separation
from geomcheck.stats.vocabulary import BY_NAME, RANGES, curves_of, derived, statistics_from_moments

__all__ = ["INTERVALS", "SETS", "Geometry", "bootstrap_samples", "geometry_from_samples"]

# How the intervals are made (see geometry_from_samples), recorded in a baseline: the widths a drift is
# measured against depend on it, so a baseline made another way is warned about and rewritten on update.
INTERVALS = (
    "bootstrap in the debiased world: cosines studentized; var_mean studentized on the log scale from an m-out-of-n bootstrap "
    "(m = ceil(sqrt(n))), var_max symmetric-studentized on the log scale (fourth-moment errors), its upper end raised to "
    "the log-studentized m-out-of-n one of the observed top feature (m = ceil(n^(2/3))); the rest basic"
)

Samples = Mapping[str, Mapping[str, np.ndarray]]  # set -> stream -> (samples, layers, features)


@dataclass(frozen=True, eq=False)
class Readings:
    """Both checkpoints' per-prompt readings on the same prompts, in the same order: what a paired
    comparison needs. ``source`` says where the reference's came from (for the report)."""

    reference: Samples
    current: Samples
    source: str
Values = Mapping[str, np.ndarray]
Pivots = tuple[np.ndarray, np.ndarray]  # replicates of a statistic and their standard errors, (B, k)


def _key(parts: Sequence[str]) -> str:
    return "/".join(parts)


@dataclass(eq=False)
class Geometry:
    """Flat ``"<stream>/<statistic>"`` values and their intervals (empty when not bootstrapped).

    ``replicates`` holds each value over the ``n_boot`` resamples and ``centers`` its plug-in value (the
    statistic of the distribution resampled, the debiased world, which the basic bootstrap interval pivots on).
    """

    streams: tuple[str, ...]
    values: dict[str, np.ndarray]
    intervals: dict[str, Interval]
    n_boot: int
    seed: int = 0
    replicates: dict[str, np.ndarray] = field(default_factory=dict)
    centers: dict[str, np.ndarray] = field(default_factory=dict)
    builtin: frozenset[str] = field(init=False, repr=False)  # the computed keys, which derive may not replace

    def __post_init__(self) -> None:
        self.builtin = frozenset(self.values)

    @property
    def n_layers(self) -> int:
        return len(self.values[f"{self.streams[0]}/cosine"])

    def value(self, *key: str) -> np.ndarray:
        """Any value: ``value("mid/var_mean/harmful")`` or, joined, ``value("mid", "var_mean/harmful")``."""
        return self.values[_key(key)]

    curve = value  # a per-layer curve is a value; the name reads better where it is one

    def interval(self, *key: str) -> Interval:
        """The interval of any value, keyed like :meth:`value`; a point interval when there was none."""
        name = _key(key)
        if name in self.intervals:
            return self.intervals[name]
        value = self.values[name]
        return Interval(value, value)

    def describe(self, key: str, fmt: str = ".3g", layer: int | None = None) -> str:
        """A value with its interval, e.g. ``1.48 [1.45, 1.51]``, for failure messages and summaries;
        ``layer`` picks one layer of a curve (``-1``: the last)."""
        pick = (lambda x: np.asarray(x)[layer]) if layer is not None else (lambda x: x)  # noqa: E731
        value, interval = float(pick(self.values[key])), self.interval(key)
        if key not in self.intervals:
            return f"{value:{fmt}}"
        return f"{value:{fmt}} [{float(pick(interval.low)):{fmt}}, {float(pick(interval.high)):{fmt}}]"

    def tails(self) -> str:
        """Each stream's feature kurtosis per set, for the summary: which rows of the README's coverage table
        (Gaussian: ~0; Student-t(3): 2.7 at 64 prompts, 4.6 at 139) this model's intervals live in."""
        parts = [f"{s} " + "/".join(f"{float(self.values[f'{s}/kurtosis/{p}']):.1f}" for p in SETS) for s in self.streams if f"{s}/kurtosis/harmful" in self.values]
        return "feature kurtosis (excess, harmful/harmless) " + ", ".join(parts)

    def growth(self, *key: str) -> GrowthFit:
        """Log-linear fit of any per-layer curve against depth, e.g. ``growth("mid/var_max/harmful")``
        (hypothesis 1 fits ``var_mean``; ``derive`` gives a rate's interval)."""
        return growth_fit(self.value(*key))

    def cosine_trend(self, stream: str) -> Trend:
        """Trend of the harmful/harmless mean cosine with depth (hypothesis 3)."""
        return cosine_trend(self.curve(stream, "cosine"))

    def separation(self, prompt_set: str, lower: str = "pre", upper: str = "mid") -> Separation:
        """How far apart two streams' mean-variance curves of one prompt set are (hypothesis 2)."""
        key = f"var_mean/{prompt_set}"
        return separation(
            self.curve(lower, key),
            self.curve(upper, key),
            self.interval(f"{lower}/{key}"),
            self.interval(f"{upper}/{key}"),
        )

    def derive(self, name: str, statistic: Callable[[Values], np.ndarray | float], level: float = 0.95) -> np.ndarray:
        """A statistic of the values, stored under ``name`` with its interval from the same replicates.

        ``statistic`` maps the values (key -> array) to a number or a per-layer array, e.g. the layer
        where the sets separate best: ``lambda v: np.argmin(v["mid/cosine_debiased"])``. Its interval
        needs the replicates, i.e. a geometry computed with ``n_boot > 0``.
        """
        if name in self.builtin:
            raise ValueError(
                f"derive({name!r}, …) would overwrite the built-in statistic {name!r}, which the baseline check and "
                "the other checks read; give the derived statistic a name of its own, e.g. 'my/" + name.replace("/", "_") + "'"
            )
        value = np.asarray(statistic(self.values), dtype=np.float64)
        self.values[name] = value
        if self.replicates:
            draws = np.stack([statistic({k: v[i] for k, v in self.replicates.items()}) for i in range(self.n_boot)])
            center = statistic({**self.values, **self.centers})
            self.intervals[name] = basic_interval(value, draws, center, level)
        return value


def _all_statistics(
    harmful: Moments, harmless: Moments, sizes: tuple[int, int], streams: Sequence[str], fixed: Values, plug_in: bool = False
) -> dict[str, np.ndarray]:
    """Both sets' moments, shaped (streams, layers, features) -> every value of a Geometry; ``fixed``
    values (the shuffled-label null) are held, not resampled."""
    values: dict[str, np.ndarray] = dict(fixed)
    for index, stream in enumerate(streams):
        curves = statistics_from_moments(harmful[0][index], harmful[1][index], harmless[0][index], harmless[1][index], sizes, plug_in)
        values.update({f"{stream}/{name}": curve for name, curve in curves.items()})
    values.update(derived(values, streams))
    return values


# Working memory of one block (layers x replicates): below the trim threshold _reuse_freed_blocks sets, so
# the freed arrays are reused, and a small fraction of any real model's samples.
BLOCK_BYTES = 24 * 2**20
_BLOCK_ARRAYS = 4  # (replicates x layers x features) float64-sized arrays alive at once: per set its float32 sums and variances


def _reuse_freed_blocks() -> None:
    """Allocate and free one 30 MiB array, so that glibc's malloc keeps freed arrays of up to that size
    for reuse instead of unmapping them (its mmap threshold rises to the largest block freed, and the trim
    threshold to twice that: mallopt(3)). Each block of layers allocates and frees the same few arrays of
    a few MiB; mapped afresh, every page of them faults again: measured 3× the statistics' CPU time at
    28 × 3072. Elsewhere than glibc this is one short-lived allocation."""
    scratch = np.empty(30 * 2**20, np.uint8)  # never touched: mapped, unmapped, no page faulted
    del scratch


def _blocks(n_layers: int, n_features: int, n_rows: int) -> tuple[list[slice], list[slice]]:
    """Ranges of layers and of replicates whose arrays fit BLOCK_BYTES: whole layers' replicates where
    they fit, else one layer's replicates in chunks (large enough still for BLAS)."""
    per_row_layer = _BLOCK_ARRAYS * n_features * 8
    if per_row_layer * n_rows <= BLOCK_BYTES:
        step, chunk = max(1, BLOCK_BYTES // (per_row_layer * n_rows)), n_rows
    else:
        step, chunk = 1, max(1, BLOCK_BYTES // per_row_layer)
    return [slice(i, min(i + step, n_layers)) for i in range(0, n_layers, step)], [slice(i, min(i + chunk, n_rows)) for i in range(0, n_rows, chunk)]


# ``a·μ + x·z`` (see _Span): coefficients a (k, R, 2) of the means and x (R, prompts in rows) of those prompts
Vector = tuple[np.ndarray, np.ndarray, slice]
Image = tuple[np.ndarray, np.ndarray]  # a vector's dot products with each mean (k, R, 2) and each prompt (k, R, n + m)


@dataclass(frozen=True, eq=False)
class _Span:
    """Dot products, per layer of a block, among the vectors every cosine of the bootstrap is made of: the two
    observed means ``μ`` and the pooled prompts ``z``, each centred on its own set's mean (harmful first).

    A replicate's mean, a label shuffling's mean and a cosine's gradient are all ``a·μ + x·z``, coefficients
    ``a (k, R, 2)`` and ``x (R, n + m)`` (a replicate's only on its own set's prompts: a :data:`Vector`):
    their dot products are (R x prompts) products with these (prompts x prompts) Gram matrices, never
    (R x d) arrays. Float64, as a replicate's cosine can be a near-cancelling sum of its means (float32
    Gram matrices moved a replicate's cosine by 1.7e-4 relative beside a massive feature); one product of
    the prompts with themselves per layer."""

    means: np.ndarray  # (k, 2, 2): μ_i · μ_j
    cross: np.ndarray  # (k, n + m, 2): z_p · μ_j
    gram: np.ndarray  # (k, n + m, n + m): z_p · z_q

    @classmethod
    def of(cls, centred: Sequence[np.ndarray], means: Sequence[np.ndarray]) -> _Span:
        pooled, plane = np.concatenate(centred), np.stack(means, axis=1)  # (n + m, k, d), (k, 2, d)
        layers = [np.ascontiguousarray(pooled[:, layer]) for layer in range(pooled.shape[1])]
        gram = np.stack([z @ z.T for z in layers])  # z @ z.T of one buffer: BLAS's symmetric product
        cross = np.stack([z @ mean.T for z, mean in zip(layers, plane)])
        return cls(plane @ plane.transpose(0, 2, 1), cross, gram)

    def image(self, vector: Vector) -> Image:
        """The dot products of a :data:`Vector` with each mean and each prompt."""
        a, x, rows = vector
        return self.combined(a, self.of_prompts(x, rows), 1.0)

    def of_prompts(self, x: np.ndarray, rows: slice) -> Image:
        """The image of the prompt part ``x·z`` of a vector (the costly half: a product with the Gram matrices)."""
        return x @ self.cross[:, rows], x @ self.gram[:, rows]

    def combined(self, a: np.ndarray, prompts: Image, scale: float) -> Image:
        """The image of ``a·μ + scale·(x·z)``, given that of ``x·z``."""
        return a @ self.means + scale * prompts[0], a @ self.cross.transpose(0, 2, 1) + scale * prompts[1]

    @staticmethod
    def dot(vector: Vector, image: Image) -> np.ndarray:
        """``(k, R)`` dot products of a :data:`Vector` with those whose :meth:`image` is given."""
        a, x, rows = vector
        return np.sum(a * image[0], axis=-1) + np.sum(x * image[1][:, :, rows], axis=-1)

    def trace(self, rows: slice, weights: np.ndarray) -> np.ndarray:
        """The total variance (ddof=1) ``(R, k)`` of each replicate that weights one set's prompts (``rows``) by
        ``weights`` (its counts over n): exact in float64, since the debiased norms subtract it from a squared
        norm it may nearly equal (the float32 variances' sum moved such a cosine by 2e-5 relative)."""
        gram, n = self.gram[:, rows, rows], weights.shape[1]
        shift = np.sum(weights * (weights @ gram), axis=-1)  # (k, R): each replicate's squared mean shift
        return ((weights @ np.diagonal(gram, axis1=1, axis2=2).T) - shift.T) * (n / (n - 1))

    def products(
        self, vectors: tuple[Vector, Vector], traces: tuple[np.ndarray, np.ndarray], images: tuple[Image, Image] | None = None
    ) -> tuple[MeanProducts, tuple[Image, Image]]:
        """Two means' :class:`MeanProducts` ``(R, k)`` (given their total variances ``(R, k)``) and images
        (made here unless given)."""
        images = images or tuple(self.image(vector) for vector in vectors)
        dot, norm_h, norm_n = (self.dot(vectors[i], images[j]).T for i, j in ((0, 1), (0, 0), (1, 1)))
        return MeanProducts(dot, (norm_h, norm_n), traces), images


@dataclass(frozen=True, eq=False)
class _Replicates:
    """One chunk of replicates of a :class:`_Block`: per set its per-feature variances (ddof=1) and mean
    squared centred values ``(R, k, d)`` in float32, and what its cosines read (``(R, k)``) with the
    images of its two means (for the cosine's error)."""

    variances: tuple[np.ndarray, np.ndarray]
    squares: tuple[np.ndarray, np.ndarray]
    products: MeanProducts
    images: tuple[Image, Image]

    def curves(self, sizes: tuple[int, int]) -> dict[str, np.ndarray]:
        """Every per-layer curve of every replicate, ``(R, k)``."""
        return curves_of(self.products, dict(zip(SETS, self.variances)), sizes)


@dataclass(frozen=True, eq=False)
class _Block:
    """Both sets' samples over a block of layers of one stream, reduced to what every replicate's statistics
    are products of.

    Per set, its centred values and their squares in float32 ``(n, k, 2, d)``: a replicate's per-feature
    variances are one product of its resample counts with them (BLAS), not a copy of its prompts. Centring
    first (in float64) keeps ``E x² − (E x)²`` free of cancellation beside massive activations, and those
    products only sum same-sign or same-scale terms: float32 is within 1e-6 relative of float64 there and
    2x faster (measured at 3072 features). The cosines, whose sums may cancel, read the :class:`_Span`."""

    sizes: tuple[int, int]
    observed: tuple[Moments, Moments]  # mean and variance (ddof=1), (k, d), float64
    kurtosis: tuple[np.ndarray, np.ndarray]  # (k,): see _moments
    powers: tuple[np.ndarray, np.ndarray]  # (n, k, 2, d), float32
    span: _Span

    @classmethod
    def of(cls, harmful: np.ndarray, harmless: np.ndarray) -> _Block:
        observed, kurtosis, powers, centred = zip(*(_moments(block) for block in (harmful, harmless)))
        return cls((len(harmful), len(harmless)), observed, kurtosis, powers, _Span.of(centred, [mean for mean, _ in observed]))

    def resampled(self, counts: tuple[np.ndarray, np.ndarray], transform: np.ndarray) -> _Replicates:
        """The replicates of ``counts`` (a chunk of each set's resample counts), each set's mean moved to
        ``transform`` of the observed means (``(k, 2, 2)``, column j set j's: the identity, or
        :func:`geomcheck.stats.resampling.world_transform`)."""
        variances, squares, vectors = [], [], []
        for index, (count, powers, n) in enumerate(zip(counts, self.powers, self.sizes)):
            sums = (count.astype(np.float32) @ powers.reshape(n, -1)).reshape(len(count), *powers.shape[1:])
            sums *= np.float32(1.0 / n)  # means; one factor for every entry (a ratio of two variances cancels its rounding)
            shift, square = sums[:, :, 0], sums[:, :, 1]
            variance = square - shift * shift
            variance *= np.float32(n / (n - 1))
            variances.append(variance)
            squares.append(square)
            vectors.append((np.broadcast_to(transform[:, None, :, index], (len(transform), len(count), 2)), count / n, self._rows()[index]))
        products, images = self.span.products(tuple(vectors), tuple(self.span.trace(rows, count / n) for rows, count, n in zip(self._rows(), counts, self.sizes)))
        return _Replicates(tuple(variances), tuple(squares), products, images)

    def observed_cosine_error(self) -> np.ndarray:
        """:func:`geomcheck.stats.estimators.cosine_standard_error` of the observed sets, per layer ``(k,)``:
        each prompt's projection on its set's gradient is its dot products with the two means."""
        cosine, *coefficients = gradient_coefficients(MeanProducts.of(*self.observed), self.sizes)
        spread = 0.0
        for rows, n, coefficient in zip(self._rows(), self.sizes, coefficients):
            projected = self.span.cross[:, rows] @ np.stack(coefficient, axis=-1)[..., None]  # (k, n, 1)
            spread = spread + projected[..., 0].var(axis=1, ddof=1) / n
        return np.where(np.isfinite(cosine), np.sqrt(spread), np.nan)

    def cosine_errors(self, counts: tuple[np.ndarray, np.ndarray], replicates: _Replicates) -> np.ndarray:
        """The same error of every replicate ``(R, k)``, over its own prompts: a prompt's projection on the
        replicate's gradient is a combination of its dot products with the replicate's two means (their
        images), and its spread a count-weighted sum."""
        cosine, *coefficients = gradient_coefficients(replicates.products, self.sizes)
        spread = 0.0
        for rows, n, count, (on_h, on_n) in zip(self._rows(), self.sizes, counts, coefficients):
            projected = on_h.T[..., None] * replicates.images[0][1][:, :, rows] + on_n.T[..., None] * replicates.images[1][1][:, :, rows]
            first = np.sum(count * projected, axis=-1) / n
            second = np.sum(count * projected * projected, axis=-1) / n
            spread = spread + np.maximum(second - first * first, 0.0).T * (1.0 / (n - 1))
        return np.where(np.isfinite(cosine), np.sqrt(spread), np.nan)

    def null_cosines(self, masks: np.ndarray) -> np.ndarray:
        """Cosine of the means of each label shuffling ``(P, k)`` (0/1 ``masks`` over the pooled prompts: 1 on
        the first side): the first side's mean is the masked prompts' over n, the other the rest's over m. The
        centred prompts sum to 0 within each set, so the rest's prompt part is −n/m times the first's: one
        product with the Gram matrices serves both images."""
        sizes = np.array(self.sizes, dtype=np.float64)
        picked = np.stack([masks[:, : self.sizes[0]].sum(axis=1), masks[:, self.sizes[0] :].sum(axis=1)], axis=-1)  # (P, 2)
        layers = (len(self.span.gram), len(masks), 2)
        first = np.broadcast_to(picked / sizes[0], layers), masks / sizes[0], slice(None)
        second = np.broadcast_to((sizes - picked) / sizes[1], layers), -masks / sizes[1], slice(None)
        prompts = self.span.of_prompts(first[1], slice(None))
        images = self.span.combined(first[0], prompts, 1.0), self.span.combined(second[0], prompts, -sizes[0] / sizes[1])
        zero = np.zeros((len(masks), layers[0]))
        return plain_cosine(self.span.products((first, second), (zero, zero), images)[0])

    def _rows(self) -> tuple[slice, slice]:
        return slice(0, self.sizes[0]), slice(self.sizes[0], sum(self.sizes))

    def variance_pivots(self, index: int, counts: np.ndarray, replicates: _Replicates, subsamples: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, dict[str, Pivots]]]:
        """What studentizes set ``index``'s ``var_mean`` and ``var_max``: the observed standard error ``(k,)``,
        and for each family of replicates (``"_boot"``: the bootstrap's own; ``"_sub"``: m-out-of-n) the
        replicates and their errors ``(R, k)``. Each variance is a mean over prompts of squared deviations
        (averaged over features, or of the top feature), whose variance over the prompts is its error (the
        fourth moments); heavy tails make the plain bootstrap of it far too narrow (tests/unit/test_coverage.py).

        The m-out-of-n replicates (``subsamples[name]``: :func:`geomcheck.stats.resampling.subsample_counts`)
        resample the per-prompt mean square (``var_mean``) or the observed top feature's squares (``var_max``)
        about the sample's mean, whose plug-in value is the bootstrap's centre: products with ``(n, k)``
        arrays. ``var_max`` keeps the bootstrap's too, each replicate with its own top feature's fourth
        moment: a resample of all n prompts re-selects the largest variance, which a resample of the one
        observed top feature cannot (:func:`_variance_interval` joins the two)."""
        n, squared, variance = self.sizes[index], self.powers[index][:, :, 1], replicates.variances[index]  # (n, k, d), (R, k, d)
        per_prompt = squared.mean(axis=-1, dtype=np.float64)  # (n, k): var_mean is its mean, up to ddof
        top = self.observed[index][1].argmax(axis=-1)
        top_squares = np.take_along_axis(squared, top[None, :, None], axis=-1)[..., 0].astype(np.float64)  # (n, k)
        picked = variance.argmax(axis=-1)  # (R, k): each replicate's top feature
        top_squared = np.take_along_axis(squared, picked.T[None], axis=-1).astype(np.float64)  # (n, k, R): only those features' fourth moments
        second = np.take_along_axis(replicates.squares[index], picked[..., None], axis=-1)[..., 0].astype(np.float64)
        fourth = np.einsum("bi,ikb->bk", counts, top_squared * top_squared) / n
        boot = variance.max(axis=-1).astype(np.float64), np.sqrt(np.maximum(fourth - second * second, 0.0) / (n - 1))
        return {
            "var_mean": (_standard_error(per_prompt), {"_sub": _subsampled(subsamples["var_mean"], per_prompt)}),
            "var_max": (_standard_error(top_squares), {"_boot": boot, "_sub": _subsampled(subsamples["var_max"], top_squares)}),
        }


def _moments(block: np.ndarray) -> tuple[Moments, np.ndarray, np.ndarray, np.ndarray]:
    """One set's moments over a block ``(n, k, d)``; its kurtosis per layer (the median over features of the
    excess kurtosis across prompts, nan for a constant); its centred values and their squares in float32
    ``(n, k, 2, d)``; and the centred values in float64 (for the :class:`_Span`)."""
    mean = block.mean(axis=0, dtype=np.float64)
    centred = np.subtract(block, mean, dtype=np.float64)
    squared = centred * centred
    second = squared.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"All-NaN slice", RuntimeWarning)  # a layer every prompt shares
        fourth = np.einsum("nkd,nkd->kd", squared, squared) / len(block)
        kurtosis = np.nanmedian(np.where(second > 0, fourth / (second * second) - 3.0, np.nan), axis=-1)
    powers = np.empty((*block.shape[:2], 2, block.shape[2]), np.float32)
    powers[:, :, 0], powers[:, :, 1] = centred, squared
    return (mean, second * (len(block) / (len(block) - 1))), kurtosis, powers, centred


def _standard_error(per_prompt: np.ndarray) -> np.ndarray:
    """The standard error ``(k,)`` of a mean over prompts of per-prompt values ``(n, k)``."""
    return np.sqrt(per_prompt.var(axis=0, ddof=1) / len(per_prompt))


def _subsampled(subsample: np.ndarray, per_prompt: np.ndarray) -> Pivots:
    """Each m-out-of-n replicate's mean of per-prompt values ``(n, k)`` and its standard error ``(B, k)``;
    nan error where a replicate drew one prompt m times (no pivot)."""
    m = subsample[0].sum()  # every row draws the same m
    mean = subsample @ per_prompt / m
    spread = subsample @ (per_prompt * per_prompt) / m - mean * mean
    return mean, np.sqrt(np.where(spread > 0, spread, np.nan) / (m - 1))


def resampled_statistics(
    harmful: np.ndarray, harmless: np.ndarray, counts: tuple[np.ndarray, np.ndarray]
) -> Iterator[tuple[tuple[slice, slice], dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """The per-layer curves of :func:`geomcheck.stats.vocabulary.statistics_from_moments`, observed and of each
    resample ``counts`` draws, block by block of the engine (working memory a fraction of the samples,
    which stay as they are): yields ``((replicates, layers), observed (k,), replicates (rows, k))``,
    the observed curves once per block of layers, repeated for its chunks of replicates."""
    sizes = len(harmful), len(harmless)
    layer_blocks, row_blocks = _blocks(harmful.shape[1], harmful.shape[2], max(len(counts[0]), 1))
    for layers in layer_blocks:
        block = _Block.of(harmful[:, layers], harmless[:, layers])
        observed = statistics_from_moments(*block.observed[0], *block.observed[1], sizes)
        identity = np.broadcast_to(np.eye(2), (len(block.kurtosis[0]), 2, 2))
        for chunk in row_blocks:
            yield (chunk, layers), observed, block.resampled((counts[0][chunk], counts[1][chunk]), identity).curves(sizes)


def _check_samples(samples: Samples) -> tuple[tuple[str, ...], tuple[int, int], tuple[int, int]]:
    """Streams, set sizes and (layers, features), refusing samples the statistics cannot read."""
    if set(samples) != set(SETS):
        raise ValueError(f"samples must map exactly {SETS} to their streams; got {sorted(samples)}")
    streams = tuple(samples["harmful"])
    if tuple(samples["harmless"]) != streams or not streams:
        raise ValueError(f"both sets need the same streams; got {streams} and {tuple(samples['harmless'])}")
    shapes = {(s, st): np.shape(samples[s][st]) for s in SETS for st in streams}
    if any(len(shape) != 3 for shape in shapes.values()) or len({shape[1:] for shape in shapes.values()}) != 1 or any(
        shapes[(s, st)][0] != shapes[(s, streams[0])][0] for s in SETS for st in streams
    ):
        raise ValueError(f"every stream must be (prompts, layers, features), alike within a set; got {shapes}")
    sizes = shapes[("harmful", streams[0])][0], shapes[("harmless", streams[0])][0]
    check_sizes(*sizes)
    return streams, sizes, shapes[("harmful", streams[0])][1:]


def geometry_from_samples(samples: Samples, n_boot: int = 200, seed: int = 0) -> Geometry:
    """Point values from all prompts; intervals from ``n_boot`` resamplings of the prompts, and the
    shuffled-label null of the cosine from as many permutations (same seed).

    The resampling runs in the debiased world (:func:`geomcheck.stats.resampling.debiased_world`), where the
    means lie as far apart as the debiased estimate says. The cosines' intervals are studentized and are
    intervals of the true cosine of the means (so the plain cosine's is widened to hold its biased point,
    and is undefined where the debiased one is); ``var_mean`` and ``var_max`` are studentized on the log
    scale by their fourth-moment errors; the rest are basic. Measured coverage: tests/unit/test_coverage.py.

    Every replicate comes from matrix products of the resample counts with the samples and their powers,
    a block of layers of one stream at a time, accumulated in float64 (the samples may be float32): no
    copy of the samples, and working memory a fraction of their size.
    """
    streams, sizes, (n_layers, n_features) = _check_samples(samples)
    _reuse_freed_blocks()
    counts = resample_counts(sizes, n_boot, seed) if n_boot else (np.empty((0, sizes[0])), np.empty((0, sizes[1])))
    subsamples = {name: subsample_counts(sizes, n_boot, seed, exponent, stream=index) if n_boot else counts for index, (name, exponent) in enumerate(SUBSAMPLE_EXPONENTS.items())}
    masks = permutation_masks(sizes, n_boot, seed) if n_boot else None
    layer_blocks, row_blocks = _blocks(n_layers, n_features, max(n_boot, 1))
    observed: dict[str, list[np.ndarray]] = {}  # "<set>/<mean|var>" -> per stream (L, d)
    world: dict[str, list[np.ndarray]] = {}
    curves: dict[str, np.ndarray] = {}  # "<stream>/<statistic>" -> (B, L); "…/<statistic>_se" for the errors
    point: dict[str, np.ndarray] = {}  # observed errors, kurtosis and null cosines per layer
    for stream in streams:
        for key in ("harmful/mean", "harmful/var", "harmless/mean", "harmless/var"):
            observed.setdefault(key, []).append(np.empty((n_layers, n_features)))
            world.setdefault(key, []).append(np.empty((n_layers, n_features)))
        for layers in layer_blocks:
            block = _Block.of(samples["harmful"][stream][:, layers], samples["harmless"][stream][:, layers])
            shifts = debiased_world(*block.observed, sizes)
            for prompt_set, (mean, var), kurtosis, shift in zip(SETS, block.observed, block.kurtosis, shifts):
                observed[f"{prompt_set}/mean"][-1][layers], observed[f"{prompt_set}/var"][-1][layers] = mean, var
                world[f"{prompt_set}/mean"][-1][layers], world[f"{prompt_set}/var"][-1][layers] = mean + shift, var
                _put(point, f"{stream}/kurtosis/{prompt_set}", kurtosis, (layers,), (n_layers,))
            if not n_boot:
                continue
            _put(point, f"{stream}/cosine_se", block.observed_cosine_error(), (layers,), (n_layers,))
            transform = world_transform(*block.observed, sizes)
            for chunk in row_blocks:
                count = counts[0][chunk], counts[1][chunk]
                subsample = tuple({name: drawn[side][chunk] for name, drawn in subsamples.items()} for side in range(2))
                _replicate_block(block, block.resampled(count, transform), count, subsample, stream, (chunk, layers), (n_boot, n_layers), curves, point)
                _put(point, f"{stream}/null", block.null_cosines(masks[chunk]), (chunk, layers), (n_boot, n_layers))
    moments_of = lambda source, s: (source[f"{s}/mean"], source[f"{s}/var"])  # noqa: E731
    kurtosis = {key: _median(point.pop(key)) for key in [k for k in point if "/kurtosis/" in k]}
    if not n_boot:
        return Geometry(streams, {**_all_statistics(*(moments_of(observed, s) for s in SETS), sizes, streams, {}), **kurtosis}, {}, 0, seed)
    null: dict[str, np.ndarray] = {}
    for index, stream in enumerate(streams):
        shuffled = point.pop(f"{stream}/null")  # (P, L)
        last = mean_cosine(observed["harmful/mean"][index][-1], observed["harmless/mean"][index][-1])
        null[f"{stream}/cosine_null"] = np.nanmean(shuffled, axis=0)
        null[f"{stream}/cosine_null_p"] = np.float64((int(np.sum(shuffled[:, -1] <= last)) + 1) / (n_boot + 1))
    values = {**_all_statistics(*(moments_of(observed, s) for s in SETS), sizes, streams, null), **kurtosis}
    centers = _all_statistics(*(moments_of(world, s) for s in SETS), sizes, streams, null, plug_in=True)
    errors = {key: curves.pop(key) for key in [k for k in curves if k.endswith(("_se", "_pivots"))]}  # not values: not kept
    draws = _replicate_values(curves, null, streams, n_boot)
    intervals = _intervals(values, centers, draws, point, errors, null, streams)
    return Geometry(streams, values, intervals, n_boot, seed, draws, centers)


def _median(values: np.ndarray) -> np.float64:
    """Median of the finite values, nan where there is none (a constant layer has no kurtosis)."""
    finite = values[np.isfinite(values)]
    return np.float64(np.median(finite)) if finite.size else np.float64(np.nan)


def _put(store: dict[str, np.ndarray], key: str, value: np.ndarray, index: tuple[slice, ...], shape: tuple[int, ...]) -> None:
    """Write one block (``index`` into replicates and/or layers) of an array, creating it at its full ``shape``."""
    if key not in store:
        store[key] = np.full(shape, np.nan)
    store[key][index] = value


def _replicate_block(
    block: _Block,
    replicates: _Replicates,
    counts: tuple[np.ndarray, np.ndarray],
    subsamples: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]],
    stream: str,
    index: tuple[slice, slice],
    shape: tuple[int, int],
    curves: dict[str, np.ndarray],
    point: dict[str, np.ndarray],
) -> None:
    """One chunk's replicate curves (in the debiased world) and what studentizes them: standard errors
    (``…_se``) and, for the variances, the replicates their pivots are made of, by family
    (``…_boot_pivots``, ``…_sub_pivots`` and their ``…_se``: see :meth:`_Block.variance_pivots`)."""
    for name, curve in replicates.curves(block.sizes).items():
        _put(curves, f"{stream}/{name}", curve, index, shape)
    _put(curves, f"{stream}/cosine_se", block.cosine_errors(counts, replicates), index, shape)
    for side, (prompt_set, count, subsample) in enumerate(zip(SETS, counts, subsamples)):
        for name, (error, families) in block.variance_pivots(side, count, replicates, subsample).items():
            _put(point, f"{stream}/{name}/{prompt_set}_se", error, index[1:], shape[1:])
            for family, (pivots, draw_error) in families.items():
                _put(curves, f"{stream}/{name}/{prompt_set}{family}_se", draw_error, index, shape)
                _put(curves, f"{stream}/{name}/{prompt_set}{family}_pivots", pivots, index, shape)


def _replicate_values(curves: dict[str, np.ndarray], null: Values, streams: Sequence[str], n_boot: int) -> dict[str, np.ndarray]:
    """Every value of each replicate: its curves, the null held fixed, and the summaries derived from them."""
    fixed = {key: np.broadcast_to(value, (n_boot, *np.shape(value))).copy() for key, value in null.items()}
    return {**curves, **fixed, **derived({**curves, **null}, streams)}


def _intervals(values: Values, centers: Values, draws: Values, point: Values, errors: Values, null: Values, streams: Sequence[str]) -> dict[str, Interval]:
    """Every value's interval: the cosines' studentized (one interval of the true cosine, undefined where
    the debiased estimate is), the variances' studentized on the log scale (``var_mean`` from its m-out-of-n
    pivots; ``var_max`` the bootstrap's symmetric one, its upper end raised by the m-out-of-n one of its
    observed top feature: see :func:`_variance_interval`), the rest basic."""
    intervals: dict[str, Interval] = {}
    for key, value in values.items():
        stream, statistic = key.split("/", 1)
        kind = BY_NAME[statistic].interval
        if key in null or kind == "none":
            continue
        bounds = RANGES.get(statistic, (-np.inf, np.inf))
        if kind == "studentized":  # the cosines: one interval of the true cosine, from the debiased one's error
            debiased = f"{stream}/cosine_debiased"
            truth = studentized_interval(values[debiased], point[f"{stream}/cosine_se"], draws[debiased], errors[f"{stream}/cosine_se"], centers[debiased], bounds=RANGES["cosine"])
            undefined = np.isnan(values[debiased])
            intervals[key] = Interval(np.where(undefined, np.nan, np.fmin(truth.low, value)), np.where(undefined, np.nan, np.fmax(truth.high, value)))
        elif kind in ("log-studentized", "log-raised"):  # the variances whose fourth-moment errors the blocks compute
            intervals[key] = _variance_interval(key, kind, value, centers[key], point[f"{key}_se"], errors, bounds)
        else:
            intervals[key] = basic_interval(value, draws[key], centers[key], bounds=bounds)
    return intervals


def _variance_interval(key: str, kind: str, value: np.ndarray, center: np.ndarray, error: np.ndarray, errors: Values, bounds: tuple[float, float]) -> Interval:
    """A variance's log-studentized interval from its m-out-of-n pivots; for ``log-raised`` (``var_max``) the
    bootstrap's symmetric one, its upper end raised to the m-out-of-n one of the observed top feature where
    that is higher. The bootstrap alone falls below the truth under Student-t(3) noise with a massive
    feature (coverage 0.80: a resample of all n prompts holds no larger squares than the sample); the top
    feature's alone over-covers under Gaussian noise (it ignores the bias of selecting the largest) and
    stretches far below the truth under t3. Measured: tests/unit/test_coverage.py."""
    sub = studentized_interval(value, error, errors[f"{key}_sub_pivots"], errors[f"{key}_sub_se"], center, bounds=bounds, log=True)
    if kind == "log-studentized":
        return sub
    boot = studentized_interval(value, error, errors[f"{key}_boot_pivots"], errors[f"{key}_boot_se"], center, bounds=bounds, log=True, symmetric=True)
    return Interval(boot.low, np.fmax(boot.high, sub.high))


UserStatistic = Callable[[Samples], "np.ndarray | float"]


def bootstrap_samples(
    samples: Samples,
    statistic: UserStatistic | Mapping[str, UserStatistic],
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[np.ndarray, Interval] | dict[str, tuple[np.ndarray, Interval]]:
    """A user's statistic of the raw activations (the ``activations`` fixture), with its basic bootstrap
    interval from the same prompt resamples as the geometry of that ``n_boot`` and ``seed``.

    ``statistic`` takes ``{set: {stream: (prompts, layers, features)}}`` and returns a number or an array
    of any shape (a per-layer curve: one interval per entry); it is taken to be its own plug-in value (a
    mean over prompts is). Pass several as ``{name: statistic}`` to get ``{name: (value, interval)}`` from
    one pass: each resample is gathered once and every statistic read from it."""
    named = statistic if isinstance(statistic, Mapping) else {"": statistic}
    sizes = (len(next(iter(samples["harmful"].values()))), len(next(iter(samples["harmless"].values()))))
    values = {name: np.asarray(function(samples), dtype=np.float64) for name, function in named.items()}
    draws: dict[str, list[np.ndarray]] = {name: [] for name in named}
    for rows in resample_indices(sizes, n_boot, seed):
        resampled = _resampled(samples, *rows)
        for name, function in named.items():
            draws[name].append(np.asarray(function(resampled), np.float64))
    out = {name: (values[name], basic_interval(values[name], np.stack(draws[name]), level=level)) for name in named}
    return out if isinstance(statistic, Mapping) else out[""]


def _resampled(samples: Samples, harmful_rows: np.ndarray, harmless_rows: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The readings of the resampled prompts (rows of each set), every stream."""
    rows = {"harmful": harmful_rows, "harmless": harmless_rows}
    return {prompt_set: {stream: readings[rows[prompt_set]] for stream, readings in samples[prompt_set].items()} for prompt_set in rows}


def geometry_to_arrays(geometry: Geometry) -> dict[str, np.ndarray]:
    """Flatten for the cache: ``value/<key>`` per-layer curves and ``scalar/<key>`` summary figures (stored as
    one-element arrays: safetensors has no 0-d tensor), with ``low/…`` and ``high/…`` intervals alike, and
    ``rep/…`` (n_boot × shape) and ``center/…`` for :meth:`Geometry.derive`."""
    arrays: dict[str, np.ndarray] = {}
    for key, value in geometry.values.items():
        kind = "value" if np.ndim(value) else "scalar"
        arrays[f"{kind}/{key}"] = np.atleast_1d(np.asarray(value, np.float64))
        if key in geometry.intervals:
            arrays[f"low/{key}"] = np.atleast_1d(np.asarray(geometry.intervals[key].low, np.float64))
            arrays[f"high/{key}"] = np.atleast_1d(np.asarray(geometry.intervals[key].high, np.float64))
    for key, draws in geometry.replicates.items():
        arrays[f"rep/{key}"] = np.asarray(draws, np.float64).reshape(geometry.n_boot, -1)
        arrays[f"center/{key}"] = np.atleast_1d(np.asarray(geometry.centers[key], np.float64))
    arrays["streams"] = np.frombuffer(",".join(geometry.streams).encode(), dtype=np.uint8).copy()
    arrays["n_boot"] = np.array([geometry.n_boot], dtype=np.int64)
    arrays["seed"] = np.array([geometry.seed], dtype=np.int64)
    return arrays


def geometry_from_arrays(arrays: Mapping[str, np.ndarray]) -> Geometry:
    """Inverse of :func:`geometry_to_arrays`: curves stay arrays, summary figures become scalars again."""
    streams = tuple(bytes(arrays["streams"]).decode().split(","))
    values: dict[str, np.ndarray] = {}
    intervals: dict[str, Interval] = {}
    draws: dict[str, np.ndarray] = {}
    centers: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        kind, _, key = name.partition("/")
        if kind not in ("value", "scalar"):
            continue
        scalar = kind == "scalar"
        values[key] = np.float64(array[0]) if scalar else array
        if f"low/{key}" in arrays:
            low, high = arrays[f"low/{key}"], arrays[f"high/{key}"]
            intervals[key] = Interval(float(low[0]), float(high[0])) if scalar else Interval(low, high)
        if f"rep/{key}" in arrays:
            draws[key] = arrays[f"rep/{key}"].reshape(-1) if scalar else arrays[f"rep/{key}"]
            centers[key] = np.float64(arrays[f"center/{key}"][0]) if scalar else arrays[f"center/{key}"]
    return Geometry(streams, values, intervals, int(arrays["n_boot"][0]), int(arrays["seed"][0]), draws, centers)
