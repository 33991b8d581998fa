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
)
from geomcheck.stats.estimators import SETS, Interval, Moments, check_sizes, cosine_gradients, mean_cosine
from geomcheck.stats.trends import GrowthFit, Separation, Trend, cosine_trend, growth_fit, separation
from geomcheck.stats.vocabulary import BY_NAME, RANGES, derived, statistics_from_moments

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
_BLOCK_ARRAYS = 16  # (replicates x layers x features) float64 arrays alive at once in a block


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


@dataclass
class _SetBlock:
    """One set's samples over a block of layers, centred, and every replicate's moments.

    The replicates are the resample-count matrix times the centred samples and their powers: sums over
    each replicate's prompts as one matrix product (BLAS), instead of a copy of the prompts per replicate.
    Centring first (in float64) keeps ``E x² − (E x)²`` free of cancellation beside massive activations.
    The first moments' product stays float64: a replicate's cosine can be a near-cancelling sum of the
    means, and float32 products moved one by 3e-5 relative in tests/test_stats.py. The squares, the label
    shufflings' sums and the cosine's projections only sum same-sign or same-scale terms and run in float32
    (2.4× faster than float64 at 3072 features, measured), within 1e-6 relative of float64 products.
    """

    centred: np.ndarray  # (n, k, d), float64
    single: np.ndarray  # the same in float32, for the products float32 suffices for
    squared: np.ndarray  # its squares, float32
    observed: Moments  # mean and variance (ddof=1), (k, d), float64
    kurtosis: np.ndarray  # (k,): see of()
    replicate: Moments = (np.empty(0), np.empty(0))  # (B, k, d), once resampled
    squares: np.ndarray = field(default_factory=lambda: np.empty(0))  # replicates' mean of squared centred values
    shuffled: np.ndarray = field(default_factory=lambda: np.empty(0))  # (P, k, d): sums over the prompts each mask picks

    @classmethod
    def of(cls, block: np.ndarray) -> _SetBlock:
        """The block's moments; its kurtosis per layer: the median over features of the excess kurtosis
        across prompts (nan for a constant)."""
        mean = block.mean(axis=0, dtype=np.float64)
        centred = np.subtract(block, mean, dtype=np.float64)
        squared = centred * centred
        second = squared.mean(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"All-NaN slice", RuntimeWarning)  # a layer every prompt shares
            fourth = np.einsum("nkd,nkd->kd", squared, squared) / len(block)
            kurtosis = np.nanmedian(np.where(second > 0, fourth / (second * second) - 3.0, np.nan), axis=-1)
        observed = (mean, second * (len(block) / (len(block) - 1)))
        return cls(centred, centred.astype(np.float32), squared.astype(np.float32), observed, kurtosis)

    def resampled(self, counts: np.ndarray, masks: np.ndarray | None = None, centre: np.ndarray | None = None) -> _SetBlock:
        """The same block with the replicates of ``counts`` (a chunk of the resamples), their means about
        ``centre`` (the observed mean unless given: the bootstrap's world moves it) and, given 0/1 ``masks``
        over this set's prompts, the sums of the prompts each picks."""
        n, shape, rows = len(self.centred), self.centred.shape[1:], len(counts)
        shift = (counts @ self.centred.reshape(n, -1)).reshape(rows, *shape)
        shift *= 1.0 / n
        squares = np.multiply(counts.astype(np.float32) @ self.squared.reshape(n, -1), 1.0 / n, dtype=np.float64).reshape(rows, *shape)
        variance = squares - shift * shift
        variance *= n / (n - 1)
        shift += self.observed[0] if centre is None else centre
        shuffled = np.empty(0)
        if masks is not None:
            shuffled = (masks.astype(np.float32) @ self.single.reshape(n, -1)).astype(np.float64).reshape(len(masks), *shape)
            shuffled += masks.sum(axis=1)[:, None, None] * self.observed[0]
        return _SetBlock(self.centred, self.single, self.squared, self.observed, self.kurtosis, (shift, variance), squares, shuffled)

    def spread(self, counts: np.ndarray, projected: np.ndarray) -> np.ndarray:
        """Each replicate's variance (ddof=1) of per-prompt values ``(n, k, B)``, over its own prompts."""
        n = len(counts[0])
        first = np.einsum("bi,ikb->bk", counts, projected) / n
        second = np.einsum("bi,ikb->bk", counts, projected * projected) / n
        return np.maximum(second - first * first, 0.0) * (n / (n - 1))

    def variance_pivots(self, counts: np.ndarray, subsamples: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, dict[str, Pivots]]]:
        """What studentizes ``var_mean`` and ``var_max``: the observed standard error ``(k,)``, and for each
        family of replicates (``"_boot"``: the bootstrap's own; ``"_sub"``: m-out-of-n) the replicates and
        their errors ``(B, k)``. Each variance is a mean over prompts of squared deviations (averaged over
        features, or of the top feature), whose variance over the prompts is its error (the fourth moments);
        heavy tails make the plain bootstrap of it far too narrow (tests/unit/test_coverage.py).

        The m-out-of-n replicates (``subsamples[name]``: :func:`geomcheck.stats.resampling.subsample_counts`)
        resample the per-prompt mean square (``var_mean``) or the observed top feature's squares (``var_max``)
        about the sample's mean, whose plug-in value is the bootstrap's centre: products with ``(n, k)``
        arrays. ``var_max`` keeps the bootstrap's too, each replicate with its own top feature's fourth
        moment: a resample of all n prompts re-selects the largest variance, which a resample of the one
        observed top feature cannot (:func:`_variance_interval` joins the two)."""
        n, squared = len(self.centred), self.squared  # (n, k, d)
        per_prompt = squared.mean(axis=-1, dtype=np.float64)  # (n, k): var_mean is its mean, up to ddof
        top = self.observed[1].argmax(axis=-1)
        top_squares = np.take_along_axis(squared, top[None, :, None], axis=-1)[..., 0].astype(np.float64)  # (n, k)
        picked = self.replicate[1].argmax(axis=-1)  # (B, k): each replicate's top feature
        top_squared = np.take_along_axis(squared, picked.T[None], axis=-1).astype(np.float64)  # (n, k, B): only those features' fourth moments
        second = np.take_along_axis(self.squares, picked[..., None], axis=-1)[..., 0]
        fourth = np.einsum("bi,ikb->bk", counts, top_squared * top_squared) / n
        boot = self.replicate[1].max(axis=-1), np.sqrt(np.maximum(fourth - second * second, 0.0) / (n - 1))
        return {
            "var_mean": (_standard_error(per_prompt), {"_sub": _subsampled(subsamples["var_mean"], per_prompt)}),
            "var_max": (_standard_error(top_squares), {"_boot": boot, "_sub": _subsampled(subsamples["var_max"], top_squares)}),
        }


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


def _flat(replicate: Moments) -> Moments:
    """Replicate moments ``(B, k, d)`` as rows ``(B·k, d)``, the layout statistics_from_moments takes."""
    return replicate[0].reshape(-1, replicate[0].shape[-1]), replicate[1].reshape(-1, replicate[1].shape[-1])


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
        whole = _SetBlock.of(harmful[:, layers]), _SetBlock.of(harmless[:, layers])
        observed = statistics_from_moments(*whole[0].observed, *whole[1].observed, sizes)
        for chunk in row_blocks:
            pair = whole[0].resampled(counts[0][chunk]), whole[1].resampled(counts[1][chunk])
            curves = statistics_from_moments(*_flat(pair[0].replicate), *_flat(pair[1].replicate), sizes)
            yield (chunk, layers), observed, {name: curve.reshape(len(counts[0][chunk]), -1) for name, curve in curves.items()}


def _observed_cosine_error(blocks: tuple[_SetBlock, _SetBlock], sizes: tuple[int, int]) -> np.ndarray:
    """:func:`geomcheck.stats.estimators.cosine_standard_error` of the observed sets, per layer of the block."""
    cosine, *gradients = cosine_gradients(blocks[0].observed, blocks[1].observed, sizes)
    spread = sum(np.einsum("nkd,kd->nk", b.centred, g).var(axis=0, ddof=1) / n for b, g, n in zip(blocks, gradients, sizes))
    return np.where(np.isfinite(cosine), np.sqrt(spread), np.nan)


def _replicate_cosine_errors(blocks: tuple[_SetBlock, _SetBlock], counts: tuple[np.ndarray, np.ndarray], sizes: tuple[int, int]) -> np.ndarray:
    """The same error of every replicate ``(B, k)`` (its means already in the debiased world): the prompts'
    projections on each replicate's gradient are one batched float32 product per set, their spread over
    each replicate's prompts a count-weighted sum."""
    cosine_b, *gradients_b = cosine_gradients(blocks[0].replicate, blocks[1].replicate, sizes)
    spread_b = 0.0
    for block, gradient, count, size in zip(blocks, gradients_b, counts, sizes):
        projected = np.matmul(gradient.astype(np.float32).transpose(1, 0, 2), block.single.transpose(1, 2, 0))  # (k, B, n)
        spread_b = spread_b + block.spread(count, projected.transpose(2, 0, 1).astype(np.float64)) / size
    return np.where(np.isfinite(cosine_b), np.sqrt(spread_b), np.nan)


def _null_cosines(pair: tuple[_SetBlock, _SetBlock], sizes: tuple[int, int]) -> np.ndarray:
    """Cosine of the means of each label shuffling ``(P, k)``: each set's prompts the masks put on the
    first side (summed in the same product as the resample counts), the rest of the pooled prompts on the other."""
    first = pair[0].shuffled + pair[1].shuffled
    second = sizes[0] * pair[0].observed[0] + sizes[1] * pair[1].observed[0] - first
    return mean_cosine(first / sizes[0], second / sizes[1])


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
            whole = _SetBlock.of(samples["harmful"][stream][:, layers]), _SetBlock.of(samples["harmless"][stream][:, layers])
            shifts = debiased_world(whole[0].observed, whole[1].observed, sizes)
            for prompt_set, block, shift in zip(SETS, whole, shifts):
                observed[f"{prompt_set}/mean"][-1][layers], observed[f"{prompt_set}/var"][-1][layers] = block.observed
                world[f"{prompt_set}/mean"][-1][layers], world[f"{prompt_set}/var"][-1][layers] = block.observed[0] + shift, block.observed[1]
                _put(point, f"{stream}/kurtosis/{prompt_set}", block.kurtosis, (layers,), (n_layers,))
            if n_boot:
                _put(point, f"{stream}/cosine_se", _observed_cosine_error(whole, sizes), (layers,), (n_layers,))
            for chunk in row_blocks if n_boot else ():
                count, halves = (counts[0][chunk], counts[1][chunk]), (masks[chunk, : sizes[0]], masks[chunk, sizes[0] :])
                pair = tuple(block.resampled(c, m, block.observed[0] + shift) for block, c, m, shift in zip(whole, count, halves, shifts))
                subsample = tuple({name: drawn[side][chunk] for name, drawn in subsamples.items()} for side in range(2))
                _replicate_block(pair, count, subsample, sizes, stream, (chunk, layers), (n_boot, n_layers), curves, point)
                _put(point, f"{stream}/null", _null_cosines(pair, sizes), (chunk, layers), (n_boot, n_layers))
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
    pair: tuple[_SetBlock, _SetBlock],
    counts: tuple[np.ndarray, np.ndarray],
    subsamples: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]],
    sizes: tuple[int, int],
    stream: str,
    index: tuple[slice, slice],
    shape: tuple[int, int],
    curves: dict[str, np.ndarray],
    point: dict[str, np.ndarray],
) -> None:
    """One block's replicate curves (in the debiased world) and what studentizes them: standard errors
    (``…_se``) and, for the variances, the replicates their pivots are made of, by family
    (``…_boot_pivots``, ``…_sub_pivots`` and their ``…_se``: see :meth:`_SetBlock.variance_pivots`)."""
    rows, width = index[0].stop - index[0].start, index[1].stop - index[1].start
    for name, curve in statistics_from_moments(*_flat(pair[0].replicate), *_flat(pair[1].replicate), sizes).items():
        _put(curves, f"{stream}/{name}", curve.reshape(rows, width), index, shape)
    _put(curves, f"{stream}/cosine_se", _replicate_cosine_errors(pair, counts, sizes), index, shape)
    for prompt_set, block, count, subsample in zip(SETS, pair, counts, subsamples):
        for name, (error, families) in block.variance_pivots(count, subsample).items():
            _put(point, f"{stream}/{name}/{prompt_set}_se", error, index[1:], shape[1:])
            for family, (pivots, draw_error) in families.items():
                _put(curves, f"{stream}/{name}/{prompt_set}{family}_se", draw_error, index, shape)
                _put(curves, f"{stream}/{name}/{prompt_set}{family}_pivots", pivots, index, shape)


def _replicate_values(curves: dict[str, np.ndarray], null: Values, streams: Sequence[str], n_boot: int) -> dict[str, np.ndarray]:
    """Every value of each replicate: its curves, the null held fixed, and the summaries derived from them."""
    fixed = {key: np.broadcast_to(value, (n_boot, *np.shape(value))).copy() for key, value in null.items()}
    summaries = [derived({**{k: v[b] for k, v in curves.items()}, **null}, streams) for b in range(n_boot)]
    return {**curves, **fixed, **{key: np.stack([d[key] for d in summaries]) for key in summaries[0]}}


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
