"""One model's geometry: the note's per-layer curves and the hypotheses' summary figures, with intervals.

Every value is named by one key form, ``<stream>/<statistic>`` (the vocabulary: :data:`CURVES` and
:data:`SUMMARIES` in :mod:`geomcheck.stats`, tabled in the README), and every value reads the same way:
``geometry.value(key)``, ``geometry.interval(key)``, ``geometry.describe(key)``.

Everything is computed in one seeded bootstrap pass over prompts, and the replicates are kept, so a
statistic a user derives later (:meth:`Geometry.derive`) gets its 95% interval from the same resamples
without a bootstrap of its own. Pure numpy: the arrays may come from a fresh capture or from the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from geomcheck.resampling import (
    basic_interval,
    debiased_world,
    permutation_null,
    replicates,
    resample_indices,
    studentized_interval,
)
from geomcheck.stats import (
    NO_INTERVAL,
    RANGES,
    SETS,
    Interval,
    Moments,
    check_sizes,
    cosine_standard_error,
    mean_cosine,
    moments,
    statistics_from_moments,
)
from geomcheck.trends import GrowthFit, Separation, Trend, cosine_trend, growth_fit, mean_log_ratio, separation

__all__ = ["INTERVALS", "SETS", "Geometry", "bootstrap_samples", "geometry_from_samples"]

# How the intervals are made (see geometry_from_samples), recorded in a baseline: the widths a drift is
# measured against depend on it, so a baseline made another way is warned about and rewritten on update.
INTERVALS = "bootstrap in the debiased world: cosines studentized, the rest basic"

Samples = Mapping[str, Mapping[str, np.ndarray]]  # set -> stream -> (samples, layers, features)
Values = Mapping[str, np.ndarray]


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


def _derived(values: dict[str, np.ndarray], streams: Sequence[str]) -> dict[str, np.ndarray]:
    """Summary figures of the hypotheses, computed from the per-layer curves."""
    out: dict[str, np.ndarray] = {}
    for stream in streams:
        for prompt_set in SETS:
            try:
                fit = growth_fit(values[f"{stream}/var_mean/{prompt_set}"])
                out[f"{stream}/growth_rate/{prompt_set}"] = np.float64(fit.rate)
                out[f"{stream}/growth_r2/{prompt_set}"] = np.float64(fit.r2)
            except ValueError:  # too few positive layers in this replicate: no rate to report
                out[f"{stream}/growth_rate/{prompt_set}"] = np.float64(np.nan)
                out[f"{stream}/growth_r2/{prompt_set}"] = np.float64(np.nan)
        cosine = values[f"{stream}/cosine"]
        trend = cosine_trend(cosine)
        out[f"{stream}/cosine_spearman"] = np.float64(trend.spearman)
        out[f"{stream}/cosine_slope"] = np.float64(trend.slope)
        if f"{stream}/cosine_null" in values:
            null_fall = 1.0 - values[f"{stream}/cosine_null"][-1]
            out[f"{stream}/cosine_null_ratio"] = np.float64((1.0 - cosine[-1]) / null_fall if null_fall > 0 else np.nan)
        if stream != "pre" and "pre" in streams:
            for prompt_set in SETS:
                ratio = mean_log_ratio(values[f"pre/var_mean/{prompt_set}"], values[f"{stream}/var_mean/{prompt_set}"])
                out[f"{stream}/log_ratio_to_pre/{prompt_set}"] = np.float64(ratio)
    return out


def _all_statistics(
    harmful: Moments, harmless: Moments, sizes: tuple[int, int], streams: Sequence[str], fixed: Values, plug_in: bool = False
) -> dict[str, np.ndarray]:
    """Both sets' moments, shaped (streams, layers, features) -> every value of a Geometry; ``fixed``
    values (the shuffled-label null) are held, not resampled."""
    values: dict[str, np.ndarray] = dict(fixed)
    for index, stream in enumerate(streams):
        curves = statistics_from_moments(harmful[0][index], harmful[1][index], harmless[0][index], harmless[1][index], sizes, plug_in)
        values.update({f"{stream}/{name}": curve for name, curve in curves.items()})
    values.update(_derived(values, streams))
    return values


def _cosine_null(
    harmful: np.ndarray, harmless: np.ndarray, streams: Sequence[str], n_perm: int, seed: int
) -> dict[str, np.ndarray]:
    """Per stream, the mean cosine of the means of label-shuffled sets, and a permutation p-value of the
    observed last-layer cosine (the share of shufflings whose cosine is as low)."""

    def cosines(one: np.ndarray, other: np.ndarray) -> dict[str, np.ndarray]:
        return {stream: mean_cosine(one[:, i].mean(axis=0), other[:, i].mean(axis=0)) for i, stream in enumerate(streams)}

    draws = permutation_null(harmful, harmless, cosines, n_perm, seed)
    observed = cosines(harmful, harmless)
    out: dict[str, np.ndarray] = {}
    for stream in streams:
        out[f"{stream}/cosine_null"] = np.nanmean(draws[stream], axis=0)
        as_low = int(np.sum(draws[stream][:, -1] <= observed[stream][-1]))
        out[f"{stream}/cosine_null_p"] = np.float64((as_low + 1) / (n_perm + 1))
    return out


def _stack(samples: Samples) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    streams = tuple(samples["harmful"])
    harmful = np.stack([samples["harmful"][s] for s in streams], axis=1)
    harmless = np.stack([samples["harmless"][s] for s in streams], axis=1)
    return streams, harmful, harmless


def geometry_from_samples(samples: Samples, n_boot: int = 200, seed: int = 0) -> Geometry:
    """Point values from all prompts; intervals from ``n_boot`` resamplings of the prompts, and the
    shuffled-label null of the cosine from as many permutations (same seed).

    The resampling runs in the debiased world (:func:`geomcheck.resampling.debiased_world`), where the
    means lie as far apart as the debiased estimate says; every interval is basic but the cosines', which
    are studentized and are intervals of the true cosine of the means (so the plain cosine's is widened
    to hold its biased point). Measured coverage: tests/test_coverage.py.
    """
    streams, harmful, harmless = _stack(samples)
    sizes = (len(harmful), len(harmless))
    check_sizes(*sizes)
    observed = moments(harmful), moments(harmless)
    if not n_boot:
        return Geometry(streams, _all_statistics(*observed, sizes, streams, {}), {}, 0, seed)
    null = _cosine_null(harmful, harmless, streams, n_boot, seed)
    values = _all_statistics(*observed, sizes, streams, null)
    shifts = debiased_world(*observed, sizes)

    def in_world(one: np.ndarray, other: np.ndarray) -> dict[str, np.ndarray]:
        (mean_one, var_one), (mean_other, var_other) = moments(one), moments(other)
        moved = (mean_one + shifts[0], var_one), (mean_other + shifts[1], var_other)
        errors = cosine_standard_error(one, other, *moved)
        return {**_all_statistics(*moved, sizes, streams, null), **{f"{s}/cosine_se": errors[i] for i, s in enumerate(streams)}}

    world = [(mean + shift, var) for (mean, var), shift in zip(observed, shifts)]
    centers = _all_statistics(*world, sizes, streams, null, plug_in=True)
    draws = replicates(harmful, harmless, in_world, n_boot=n_boot, seed=seed)
    errors = cosine_standard_error(harmful, harmless, *observed)
    debiased = {stream: f"{stream}/cosine_debiased" for stream in streams}
    draw_errors = {stream: draws.pop(f"{stream}/cosine_se") for stream in streams}  # not values: not kept
    true_cosine = {
        stream: studentized_interval(values[key], errors[i], draws[key], draw_errors[stream], centers[key], bounds=RANGES["cosine"])
        for i, (stream, key) in enumerate(debiased.items())
    }
    intervals: dict[str, Interval] = {}
    for key, value in values.items():
        stream, statistic = key.split("/", 1)
        if key in null or statistic in NO_INTERVAL:
            continue
        if statistic in ("cosine", "cosine_debiased"):  # two estimates of one truth, with one interval
            intervals[key] = Interval(np.fmin(true_cosine[stream].low, value), np.fmax(true_cosine[stream].high, value))
        else:
            intervals[key] = basic_interval(value, draws[key], centers[key], bounds=RANGES.get(statistic, (-np.inf, np.inf)))
    return Geometry(streams, values, intervals, n_boot, seed, draws, centers)


def bootstrap_samples(
    samples: Samples, statistic: Callable[[Samples], np.ndarray | float], n_boot: int = 200, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, Interval]:
    """A user's statistic of the raw activations (the ``activations`` fixture), with its basic bootstrap
    interval from the same prompt resamples as the geometry of that ``n_boot`` and ``seed``.

    ``statistic`` takes ``{set: {stream: (prompts, layers, features)}}`` and returns a number or an
    array; it is taken to be its own plug-in value (a mean over prompts is)."""
    sizes = (len(next(iter(samples["harmful"].values()))), len(next(iter(samples["harmless"].values()))))
    value = np.asarray(statistic(samples), dtype=np.float64)
    draws = np.stack([np.asarray(statistic(_resampled(samples, *rows)), np.float64) for rows in resample_indices(sizes, n_boot, seed)])
    return value, basic_interval(value, draws, level=level)


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
