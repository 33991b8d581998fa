"""The vocabulary of statistics: one record per statistic, as :class:`geomcheck.run.families.Family` is one
record per architecture.

Every value a Geometry holds is ``<stream>/<statistic>``, where ``<statistic>`` is a record's name with
``{set}`` spelled out as harmful or harmless. A record says what the statistic is (shape, meaning, range), how
it is computed (its formula, where one suffices), how its uncertainty is stated (interval kind) and how much a
baseline lets it drift (default tolerance). Everything else is read from here: the per-layer curves
(:func:`statistics_from_moments`), the summaries (:func:`derived`), the ranges intervals are clipped to, the
statistics a baseline stores, the gate's default tolerances, the docs' table (:func:`markdown_table`) and the
geometry cache key (:func:`digest`), so a new or changed statistic is never served from a stale cache entry.

A statistic computed by a formula (``moments``, ``variances``, ``curves``) is added by adding its record; the
shuffled-label null (``shuffles``) and the kurtosis (``samples``) need the raw prompts and are computed by
:func:`geomcheck.stats.geometry.geometry_from_samples`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from geomcheck import atomic
from geomcheck.stats.estimators import SETS, MeanProducts, check_sizes, debiased, moments, plain_cosine, upper_quantile
from geomcheck.stats.trends import log_linear, mean_log_ratio, monotone_trend

Values = Mapping[str, np.ndarray]
Computed = Literal["moments", "variances", "curves", "shuffles", "samples"]
IntervalKind = Literal["studentized", "log-studentized", "log-raised", "basic", "none"]
QUANTILE = 0.99

# How each kind is computed, as the docs' table says it.
COMPUTED: dict[str, str] = {
    "moments": "both sets' means and variances",
    "variances": "each set's per-feature variances",
    "curves": "the per-layer curves",
    "shuffles": "label-shuffled sets",
    "samples": "the prompts' activations",
}
INTERVAL_KINDS: dict[str, str] = {
    "studentized": "studentized bootstrap",
    "log-studentized": "studentized on the log scale (m-out-of-n pivots)",
    "log-raised": "studentized on the log scale, symmetric; upper end raised by m-out-of-n",
    "basic": "basic bootstrap",
    "none": "none",
}


@dataclass(frozen=True)
class Statistic:
    """One statistic: what it is, how it is computed, how its uncertainty is stated, how far it may drift.

    Exactly one formula is given for the kinds that have one: ``of_moments(products, sizes, plug_in)`` for
    ``moments`` (the means' inner products and the sets' total variances,
    :class:`geomcheck.stats.estimators.MeanProducts`: all a cosine of the means reads), ``of_variances(var)`` (per-feature variances ``(..., d)`` → ``(...)``) for
    ``variances``, ``from_curves(values, stream, prompt_set)`` for ``curves`` (one value per set of curves:
    a function of their last axis, since the bootstrap passes every replicate's ``(B, L)`` at once; None
    where the statistic is not defined for that stream; nan where one replicate leaves it undefined)."""

    name: str
    shape: Literal["curve", "summary"]
    meaning: str
    computed: Computed
    range: tuple[float, float] = (-math.inf, math.inf)
    interval: IntervalKind = "basic"
    tolerance: tuple[float, float] | None = None  # (rel, abs) of the baseline gate; None: not in a baseline
    of_moments: Callable[[MeanProducts, tuple[int, int], bool], np.ndarray] | None = None
    of_variances: Callable[[np.ndarray], np.ndarray] | None = None
    from_curves: Callable[[Values, str, str], np.ndarray | None] | None = None

    def __post_init__(self) -> None:
        formulas = {"moments": self.of_moments, "variances": self.of_variances, "curves": self.from_curves}
        given = [kind for kind, formula in formulas.items() if formula is not None]
        if given != ([self.computed] if self.computed in formulas else []):
            raise ValueError(f"statistic {self.name}: computed from {self.computed!r} takes exactly that formula; got {given or 'none'}")
        if self.tolerance is not None and (self.shape != "curve" or self.computed not in ("moments", "variances")):
            raise ValueError(f"statistic {self.name}: only curves of the moments are stored in a baseline, so only they take a tolerance")

    @property
    def family(self) -> str:
        """The name before its set (``var_mean`` of ``var_mean/{set}``): a tolerance key."""
        return self.name.split("/", 1)[0]

    def names(self) -> tuple[str, ...]:
        """The name with ``{set}`` spelled out for both sets."""
        return tuple(self.name.format(set=s) for s in SETS) if "{set}" in self.name else (self.name,)


def _cosine(products: MeanProducts, sizes: tuple[int, int], plug_in: bool) -> np.ndarray:
    return plain_cosine(products)


def _cosine_debiased(products: MeanProducts, sizes: tuple[int, int], plug_in: bool) -> np.ndarray:
    """The plug-in functional of the debiased cosine is the plain cosine of the empirical means."""
    return plain_cosine(products) if plug_in else debiased(products, sizes)[0]


def _top_share(var: np.ndarray) -> np.ndarray:
    total = var.sum(axis=-1, dtype=np.float64)  # the bootstrap's variances are float32: sums accumulate in float64
    return np.where(total > 0, var.max(axis=-1) / np.where(total > 0, total, 1.0), np.nan)


def _growth(which: str) -> Callable[[Values, str, str], np.ndarray]:
    def growth(values: Values, stream: str, prompt_set: str) -> np.ndarray:
        return getattr(log_linear(values[f"{stream}/var_mean/{prompt_set}"]), which)  # nan: fewer than 3 positive layers

    return growth


def _trend(which: int) -> Callable[[Values, str, str], np.ndarray]:
    def trend(values: Values, stream: str, prompt_set: str) -> np.ndarray:
        return monotone_trend(values[f"{stream}/cosine"])[which]  # nan: fewer than 2 layers with a defined cosine

    return trend


def _null_ratio(values: Values, stream: str, prompt_set: str) -> np.ndarray | None:
    if f"{stream}/cosine_null" not in values:
        return None
    null_fall = 1.0 - np.asarray(values[f"{stream}/cosine_null"])[..., -1]
    fall = 1.0 - np.asarray(values[f"{stream}/cosine"])[..., -1]
    return np.where(null_fall > 0, fall / np.where(null_fall > 0, null_fall, 1.0), np.nan)


def _log_ratio_to_pre(values: Values, stream: str, prompt_set: str) -> np.ndarray | None:
    if stream == "pre" or f"pre/var_mean/{prompt_set}" not in values:
        return None
    return mean_log_ratio(values[f"pre/var_mean/{prompt_set}"], values[f"{stream}/var_mean/{prompt_set}"])


POSITIVE, UNIT, SIGNED = (0.0, math.inf), (0.0, 1.0), (-1.0, 1.0)
VARIANCE_TOLERANCE = (1e-3, 1e-9)  # variances are in squared activation units: abs is a floor against rounding at 0
UNIT_TOLERANCE = (1e-3, 1e-6)  # quantities of order 1: cosines, shares

RECORDS: tuple[Statistic, ...] = (
    Statistic("cosine", "curve", "cosine of the two sets' mean vectors (biased toward 0 by sampling noise: see cosine_debiased)",
              "moments", SIGNED, "studentized", UNIT_TOLERANCE, of_moments=_cosine),
    Statistic("cosine_debiased", "curve", "cosine of the means with each squared norm corrected by tr(Σ̂)/n (the cross term is unbiased)",
              "moments", interval="studentized", tolerance=UNIT_TOLERANCE, of_moments=_cosine_debiased),
    Statistic("var_mean/{set}", "curve", "mean over features of the per-feature variance",
              "variances", POSITIVE, "log-studentized", VARIANCE_TOLERANCE, of_variances=lambda var: var.mean(axis=-1, dtype=np.float64)),
    Statistic("var_max/{set}", "curve", "largest per-feature variance (dominated by massive activations)",
              "variances", POSITIVE, "log-raised", VARIANCE_TOLERANCE, of_variances=lambda var: var.max(axis=-1)),
    Statistic("var_q99/{set}", "curve", "99th percentile of the per-feature variances: a max that a few massive features cannot move",
              "variances", POSITIVE, "basic", VARIANCE_TOLERANCE, of_variances=lambda var: upper_quantile(var, QUANTILE)),
    Statistic("top_feature/{set}", "curve", "index of the feature with the largest variance (no interval; a baseline compares it where that feature holds ≥ half the variance)",
              "variances", interval="none", tolerance=(0.0, 0.5), of_variances=lambda var: var.argmax(axis=-1).astype(np.float64)),
    Statistic("top_share/{set}", "curve", "that feature's share of the total variance (near 1: one massive feature holds it all)",
              "variances", UNIT, "basic", UNIT_TOLERANCE, of_variances=_top_share),
    Statistic("cosine_null", "curve", "mean cosine of the means of label-shuffled sets: what sampling noise alone gives (no interval)",
              "shuffles", interval="none"),
    Statistic("growth_rate/{set}", "summary", "exp(slope) of a least-squares fit of log(var_mean) on depth: growth per layer",
              "curves", POSITIVE, from_curves=_growth("rate")),
    Statistic("growth_r2/{set}", "summary", "R² of that log-linear fit", "curves", UNIT, from_curves=_growth("r2")),
    Statistic("cosine_spearman", "summary", "Spearman ρ of cosine against the layer index", "curves", SIGNED, from_curves=_trend(0)),
    Statistic("cosine_slope", "summary", "least-squares slope of cosine per layer", "curves", from_curves=_trend(1)),
    Statistic("cosine_null_ratio", "summary", "1 − cosine at the last layer over 1 − cosine_null there: the fall against shuffled labels",
              "curves", POSITIVE, from_curves=_null_ratio),
    Statistic("cosine_null_p", "summary", "share of label shufflings whose last-layer cosine is as low as the observed (no interval)",
              "shuffles", interval="none"),
    Statistic("log_ratio_to_pre/{set}", "summary", "mean over layers of log(var_mean / var_mean of pre); mid and post only",
              "curves", from_curves=_log_ratio_to_pre),
    Statistic("kurtosis/{set}", "summary", "median over layers and features of the excess kurtosis across prompts: 0 Gaussian, ≫ 0 heavy tails (no interval)",
              "samples", interval="none"),
)
BY_NAME: dict[str, Statistic] = {name: record for record in RECORDS for name in record.names()}

# Read-only views for the code that asks one question of every record.
CURVES: dict[str, str] = {r.name: r.meaning for r in RECORDS if r.shape == "curve"}
SUMMARIES: dict[str, str] = {r.name: r.meaning for r in RECORDS if r.shape == "summary"}
# Statistics confined to a range: a basic interval (a reflection) may leave it, and is clipped back, which
# cannot lose coverage since the truth lies inside.
RANGES: dict[str, tuple[float, float]] = {name: r.range for name, r in BY_NAME.items() if r.range != (-math.inf, math.inf)}
NO_INTERVAL: tuple[str, ...] = tuple(name for name, r in BY_NAME.items() if r.interval == "none")
# The per-layer curves computed from each set's mean and variance: what a baseline stores.
STAT_NAMES: tuple[str, ...] = tuple(name for r in RECORDS if r.computed in ("moments", "variances") for name in r.names())


def expand(names: Mapping[str, str]) -> tuple[str, ...]:
    """Vocabulary entries with ``{set}`` spelled out for both sets."""
    return tuple(name.format(set=prompt_set) for name in names for prompt_set in (SETS if "{set}" in name else ("",)))


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
    if plug_in:
        harmful_var, harmless_var = harmful_var * (sizes[0] - 1) / sizes[0], harmless_var * (sizes[1] - 1) / sizes[1]
    products = MeanProducts.of((harmful_mean, harmful_var), (harmless_mean, harmless_var))
    return curves_of(products, {"harmful": harmful_var, "harmless": harmless_var}, sizes, plug_in)


def curves_of(products: MeanProducts, variances: Mapping[str, np.ndarray], sizes: tuple[int, int], plug_in: bool = False) -> dict[str, np.ndarray]:
    """The per-layer curves from what they read: the means' :class:`~geomcheck.stats.estimators.MeanProducts`
    (shape ``(...)``) and each set's per-feature variances ``(..., d)``. :func:`statistics_from_moments` takes
    them of moments; the bootstrap passes every replicate's at once (products from Gram matrices, variances
    in float32)."""
    out: dict[str, np.ndarray] = {}
    for record in RECORDS:
        if record.of_moments is not None:
            out[record.name] = record.of_moments(products, sizes, plug_in)
        elif record.of_variances is not None:
            for prompt_set, name in zip(SETS, record.names()):
                out[name] = record.of_variances(variances[prompt_set])
    return out


def statistics_from_samples(harmful: np.ndarray, harmless: np.ndarray, plug_in: bool = False) -> dict[str, np.ndarray]:
    """Statistics of harmful samples (n, L, d) and harmless samples (m, L, d), from their moments."""
    harmful, harmless = np.asarray(harmful), np.asarray(harmless)
    if harmful.ndim != 3 or harmless.ndim != 3 or harmful.shape[1:] != harmless.shape[1:]:
        raise ValueError(
            "harmful and harmless samples must be (samples, layers, features) with the same layers "
            f"and features; got {harmful.shape} and {harmless.shape}"
        )
    check_sizes(len(harmful), len(harmless))
    return statistics_from_moments(*moments(harmful), *moments(harmless), (len(harmful), len(harmless)), plug_in)


def derived(values: Values, streams: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
    """The summaries computed from the per-layer curves (records computed from ``curves``), every stream:
    curves ``(L,)`` give numbers, replicates' curves ``(B, L)`` give ``(B,)`` arrays (fixed values such as
    the null's curve may stay ``(L,)``)."""
    out: dict[str, np.ndarray] = {}
    for stream in streams:
        batch = np.shape(values[f"{stream}/cosine"])[:-1]
        for record in RECORDS:
            if record.from_curves is None:
                continue
            for prompt_set, name in zip(SETS, record.names()) if "{set}" in record.name else [("", record.name)]:
                value = record.from_curves(values, stream, prompt_set)
                if value is None:
                    continue
                value = np.asarray(value, dtype=np.float64)
                if value.shape != batch:  # e.g. a constant: every replicate would share it, a zero-width interval
                    raise ValueError(
                        f"statistic {record.name}: from_curves gave shape {value.shape} for curves of leading shape {batch}; "
                        "it must give one value per set of curves, a function of their last axis (e.g. values[key][..., -1])"
                    )
                out[f"{stream}/{name}"] = value[()]
    return out


def _formula_source(record: Statistic) -> str:
    """A formula's source, so that changing how a statistic is computed changes the digest."""
    formula = record.of_moments or record.of_variances or record.from_curves
    if formula is None:
        return ""
    try:
        return inspect.getsource(formula)
    except (OSError, TypeError):  # no source shipped: the bytecode still changes with the formula
        return formula.__code__.co_code.hex()


def digest() -> str:
    """A digest of everything that decides a Geometry's values and intervals (not the meanings or the
    tolerances): part of the geometry cache key."""
    fields = [[r.name, r.shape, r.computed, list(r.range), r.interval, _formula_source(r)] for r in RECORDS]
    return hashlib.sha256(json.dumps(fields, ensure_ascii=True).encode()).hexdigest()[:16]


def _number(value: float) -> str:
    return "∞" if value == math.inf else ("-∞" if value == -math.inf else f"{value:g}")


def markdown_table() -> str:
    """The docs' vocabulary table, one row per record: generated, never edited by hand."""
    rows = [
        "| statistic | shape | meaning | computed from | range | interval | default tolerance (rel, abs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in RECORDS:
        shown_range = "" if r.range == (-math.inf, math.inf) else f"[{_number(r.range[0])}, {_number(r.range[1])}]"
        tolerance = "" if r.tolerance is None else f"{_number(r.tolerance[0])}, {_number(r.tolerance[1])}"
        shape = "per layer" if r.shape == "curve" else "one number"
        rows.append(f"| `{r.name}` | {shape} | {r.meaning} | {COMPUTED[r.computed]} | {shown_range} | {INTERVAL_KINDS[r.interval]} | {tolerance} |")
    return "\n".join(rows) + "\n"


MARKERS = ("<!-- vocabulary -->\n", "<!-- /vocabulary -->")


def write_table(path: Path) -> bool:
    """Rewrite the table between the vocabulary markers of ``path``; True where it changed."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    new = text[:start] + markdown_table() + text[end:]
    if new != text:
        atomic.write_text(path, new)
    return new != text


if __name__ == "__main__":  # python -m geomcheck.stats.vocabulary docs/statistics.md
    for argument in sys.argv[1:]:
        print(f"{argument}: {'rewritten' if write_table(Path(argument)) else 'up to date'}")
