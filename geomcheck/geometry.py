"""One model's geometry: the note's per-layer curves and the hypotheses' summary figures, with intervals.

Everything is computed in one seeded bootstrap pass over prompts, so every number a check or a baseline
reads (a per-layer curve, a growth rate, a Spearman ρ) carries a 95% interval from the same replicates.
Pure numpy: the arrays may come from a fresh capture or from the cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from geomcheck.stats import (
    GrowthFit,
    Interval,
    Separation,
    Trend,
    bootstrap,
    cosine_trend,
    growth_fit,
    separation,
    statistics_from_moments,
    statistics_from_samples,
)

SETS = ("harmful", "harmless")
Samples = Mapping[str, Mapping[str, np.ndarray]]  # set -> stream -> (samples, layers, features)


@dataclass(eq=False)
class Geometry:
    """Flat ``"<stream>/<statistic>"`` values and their intervals (empty when not bootstrapped)."""

    streams: tuple[str, ...]
    values: dict[str, np.ndarray]
    intervals: dict[str, Interval]
    n_boot: int

    @property
    def n_layers(self) -> int:
        return len(self.values[f"{self.streams[0]}/cosine"])

    def curve(self, stream: str, statistic: str) -> np.ndarray:
        """A per-layer curve, e.g. ``curve("mid", "var_mean/harmful")``."""
        return self.values[f"{stream}/{statistic}"]

    def interval(self, key: str) -> Interval:
        """The interval of any value; a point interval when there was no bootstrap."""
        if key in self.intervals:
            return self.intervals[key]
        value = self.values[key]
        return Interval(value, value)

    def describe(self, key: str, fmt: str = ".3g") -> str:
        """A value with its interval, e.g. ``1.48 [1.45, 1.51]``, for failure messages and summaries."""
        value, interval = float(self.values[key]), self.interval(key)
        if key not in self.intervals:
            return f"{value:{fmt}}"
        return f"{value:{fmt}} [{float(interval.low):{fmt}}, {float(interval.high):{fmt}}]"

    def growth(self, stream: str, which: str) -> GrowthFit:
        """Log-linear fit of mean variance against depth (hypothesis 1)."""
        return growth_fit(self.curve(stream, f"var_mean/{which}"))

    def cosine_trend(self, stream: str) -> Trend:
        """Trend of the harmful/harmless mean cosine with depth (hypothesis 3)."""
        return cosine_trend(self.curve(stream, "cosine"))

    def separation(self, which: str, lower: str = "pre", upper: str = "mid") -> Separation:
        """How far apart two streams' mean-variance curves are (hypothesis 2)."""
        key = f"var_mean/{which}"
        return separation(
            self.curve(lower, key),
            self.curve(upper, key),
            self.interval(f"{lower}/{key}"),
            self.interval(f"{upper}/{key}"),
        )


def _derived(values: dict[str, np.ndarray], streams: Sequence[str]) -> dict[str, np.ndarray]:
    """Summary figures of the hypotheses, computed from the per-layer curves."""
    out: dict[str, np.ndarray] = {}
    for stream in streams:
        for which in SETS:
            try:
                fit = growth_fit(values[f"{stream}/var_mean/{which}"])
                out[f"{stream}/growth_rate/{which}"] = np.float64(fit.rate)
                out[f"{stream}/growth_r2/{which}"] = np.float64(fit.r2)
            except ValueError:  # too few positive layers in this replicate: no rate to report
                out[f"{stream}/growth_rate/{which}"] = np.float64(np.nan)
                out[f"{stream}/growth_r2/{which}"] = np.float64(np.nan)
        trend = cosine_trend(values[f"{stream}/cosine"])
        out[f"{stream}/cosine_spearman"] = np.float64(trend.spearman)
        out[f"{stream}/cosine_slope"] = np.float64(trend.slope)
    if "pre" in streams and "mid" in streams:
        for which in SETS:
            pre, mid = values[f"pre/var_mean/{which}"], values[f"mid/var_mean/{which}"]
            both = (pre > 0) & (mid > 0)
            out[f"separation/mean_log_ratio/{which}"] = np.float64(np.mean(np.log(mid[both] / pre[both])) if both.any() else np.nan)
    return out


def _all_statistics(P: np.ndarray, N: np.ndarray, streams: Sequence[str]) -> dict[str, np.ndarray]:
    """P, N shaped (samples, streams, layers, features) -> every value of a Geometry."""
    values: dict[str, np.ndarray] = {}
    for index, stream in enumerate(streams):
        for name, curve in statistics_from_samples(P[:, index], N[:, index]).items():
            values[f"{stream}/{name}"] = curve
    values.update(_derived(values, streams))
    return values


def geometry_from_samples(samples: Samples, n_boot: int = 200, seed: int = 0) -> Geometry:
    """Point values from all prompts, intervals from ``n_boot`` resamplings of the prompts."""
    streams = tuple(samples["harmful"])
    P = np.stack([samples["harmful"][s] for s in streams], axis=1)
    N = np.stack([samples["harmless"][s] for s in streams], axis=1)
    values = _all_statistics(P, N, streams)
    intervals = bootstrap(P, N, lambda p, n: _all_statistics(p, n, streams), n_boot=n_boot, seed=seed) if n_boot else {}
    return Geometry(streams, values, intervals, n_boot)


def geometry_from_moments(moments: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]) -> Geometry:
    """Point values only, from streaming (mean, variance) per set and stream: memory flat in prompts."""
    streams = tuple(moments["harmful"])
    values: dict[str, np.ndarray] = {}
    for stream in streams:
        p_mean, p_var = moments["harmful"][stream]
        n_mean, n_var = moments["harmless"][stream]
        for name, curve in statistics_from_moments(p_mean, p_var, n_mean, n_var).items():
            values[f"{stream}/{name}"] = curve
    values.update(_derived(values, streams))
    return Geometry(streams, values, {}, 0)



def geometry_to_arrays(geometry: Geometry) -> dict[str, np.ndarray]:
    """Flatten for the cache: ``value/<key>`` per-layer curves and ``scalar/<key>`` summary figures (stored as
    one-element arrays: safetensors has no 0-d tensor), with ``low/…`` and ``high/…`` intervals alike."""
    arrays: dict[str, np.ndarray] = {}
    for key, value in geometry.values.items():
        kind = "value" if np.ndim(value) else "scalar"
        arrays[f"{kind}/{key}"] = np.atleast_1d(np.asarray(value, np.float64))
        if key in geometry.intervals:
            arrays[f"low/{key}"] = np.atleast_1d(np.asarray(geometry.intervals[key].low, np.float64))
            arrays[f"high/{key}"] = np.atleast_1d(np.asarray(geometry.intervals[key].high, np.float64))
    arrays["streams"] = np.frombuffer(",".join(geometry.streams).encode(), dtype=np.uint8).copy()
    arrays["n_boot"] = np.array([geometry.n_boot], dtype=np.int64)
    return arrays


def geometry_from_arrays(arrays: Mapping[str, np.ndarray]) -> Geometry:
    """Inverse of :func:`geometry_to_arrays`: curves stay arrays, summary figures become scalars again."""
    streams = tuple(bytes(arrays["streams"]).decode().split(","))
    values: dict[str, np.ndarray] = {}
    intervals: dict[str, Interval] = {}
    for name, array in arrays.items():
        kind, _, key = name.partition("/")
        if kind not in ("value", "scalar"):
            continue
        scalar = kind == "scalar"
        values[key] = np.float64(array[0]) if scalar else array
        if f"low/{key}" in arrays:
            low, high = arrays[f"low/{key}"], arrays[f"high/{key}"]
            intervals[key] = Interval(float(low[0]), float(high[0])) if scalar else Interval(low, high)
    return Geometry(streams, values, intervals, int(arrays["n_boot"][0]))
