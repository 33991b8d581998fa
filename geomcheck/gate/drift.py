"""Drift: a current run's per-layer statistics against its baseline, compared once, with tolerance.

Pure functions of numpy and the standard library on baseline payloads (:mod:`geomcheck.gate.baseline`):
:func:`compare_payloads` scores every value once, and the check's verdict, its failure message, the
overlay and the drift map all read that one :class:`Comparison`. No pytest, no syrupy, no torch.

Two rules, one tolerance formula ``max(abs, rel·|baseline|, z·SE)``; they differ in the SE:

* **unpaired** (a baseline that holds statistics only): SE is the baseline's bootstrap error of *sampling
  prompts*, read off its stored 95% interval. A checkpoint swap runs the same prompts through both
  checkpoints, so that SE is much wider than what the swap itself can move by chance.
* **paired** (the reference run's per-prompt readings are at hand, :class:`Readings`): both checkpoints'
  statistics are recomputed on the same bootstrap resamples of the prompts, and SE is the spread of their
  *difference* (:func:`paired_errors`): the prompt-to-prompt spread cancels, and the tolerance shrinks to
  what the swap moves. The comparison says which rule ran (:attr:`Comparison.method`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from geomcheck import STREAMS
from geomcheck.run.fingerprint import short
from geomcheck.stats.estimators import SETS
from geomcheck.stats.geometry import Readings, resampled_statistics
from geomcheck.stats.resampling import resample_counts
from geomcheck.stats.trends import growth_fit
from geomcheck.stats.vocabulary import NO_INTERVAL, RECORDS, STAT_NAMES


SE_PER_95 = 3.92  # a normal 95% interval is 2 x 1.96 standard errors wide
# Metadata that changes what the numbers mean: a difference is warned about, since drift may then reflect
# the setup rather than the model. Device is left out on purpose: another device only adds rounding noise.
# What the checkpoint is (weights, tokenizer, revision, source) is not a setup: identity_summary reports it.
WARNED_META = ("dtype", "prompts_hash", "geomcheck", "position", "chat_template", "template_date", "intervals")
ENVIRONMENT = ("torch", "transformers", "attn_implementation", "device", "dtype")  # meta["environment"]
# Machine epsilon of each dtype the plugin runs in: rounding noise scales with it (see Tolerance).
DTYPE_EPS = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
EPS_MULTIPLE = 4.0
INDEX_SHARE = 0.5  # a top-feature index is compared where that feature holds at least this share of the variance
REPRODUCED_RTOL = 1e-6  # reference readings belong to a baseline when they give back its values to this


# --------------------------------------------------------------------------------------------------
# Tolerances


@dataclass(frozen=True)
class Tolerance:
    """How far a value may move from its baseline: ``max(abs, rel·|baseline|, z·SE)``.

    The three terms cover three different reasons for a difference that is not a regression:

    * ``abs``: values at or near zero (a layer whose variance is exactly 0 because every prompt ends in
      the same chat-template token), where a relative tolerance is meaningless.
    * ``rel``: numerical noise. A re-run of the same checkpoint on the same prompts differs only by
      rounding (another device, BLAS, batch size or kernel order): about 1e-6 relative in float32 for
      means over thousands of features. ``rel`` = 1e-3 leaves a wide margin above that. Rounding noise
      scales with the dtype, so the relative term is never below ``4 × eps(dtype)`` of the baseline or the
      current run (3e-2 in bfloat16, 4e-3 in float16; irrelevant in float32).
    * ``z·SE``: statistical resolution. The bootstrap standard error, ``SE ≈ (high − low) / 3.92`` from
      the stored 95% interval, is how much the statistic moves when the *prompts* change: a difference
      of a fraction of an SE is indistinguishable from having drawn other prompts, so no hypothesis
      check could see it either. A swapped or broken checkpoint moves the statistics by many SEs (tens
      to hundreds), far beyond the threshold. ``z`` = 4 rather than 1.96 because one baseline compares
      hundreds of values (streams × statistics × layers): at 4 SEs, noise of the size of the prompt
      sampling would trip ~6e-5 of them, and a re-run on the same prompts does not even have that
      noise. (A run on *another* prompt set is warned about; it mostly stays within 4 SEs, but its own
      sampling noise adds to the baseline's, so a few values may not.)

    A value exactly at the tolerance passes; anything beyond fails.
    """

    rel: float = 1e-3
    abs: float = 1e-9
    z: float = 4.0

    def __post_init__(self) -> None:
        for name in ("rel", "abs", "z"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"tolerance {name} must be a finite number ≥ 0; got {value!r}")

    def tolerance(
        self, baseline: float, low: float | None = None, high: float | None = None, rel_floor: float = 0.0, *, se: float | None = None
    ) -> float:
        """The allowed |current − baseline| for one value: SE from its stored 95% interval (unpaired), or
        ``se`` where given (the paired rule's standard error of the difference)."""
        terms = [self.abs]
        if math.isfinite(baseline):
            terms.append(max(self.rel, rel_floor) * abs(baseline))
        if se is None:
            se = interval_se(low, high)
        if se is not None and math.isfinite(se):
            terms.append(self.z * se)
        return max(terms)


def _tighter(unpaired: float | None, paired: float | None) -> float | None:
    """The smaller of the two standard errors that are usable (finite); None where neither is."""
    usable = [se for se in (unpaired, paired) if se is not None and math.isfinite(se)]
    return min(usable) if usable else None


def interval_se(low: float | None, high: float | None) -> float | None:
    """The standard error a 95% interval implies, ``(high − low) / 3.92``; None without a usable interval."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)) or high < low:
        return None
    return (high - low) / SE_PER_95


# Keys: a statistic family ("cosine", "var_mean", "var_max"), a statistic ("var_mean/harmful") or a full
# key ("mid/cosine"); the most specific one given wins. The defaults are the vocabulary's, one per family.
DEFAULT_TOLERANCE = Tolerance()
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    record.family: Tolerance(rel=record.tolerance[0], abs=record.tolerance[1]) for record in RECORDS if record.tolerance is not None
}

def resolve_tolerance(stream: str, statistic: str, overrides: Mapping[str, Tolerance] | None = None) -> Tolerance:
    """The tolerance of one statistic: the most specific of ``stream/statistic``, ``statistic`` and
    its family, from the overrides first, then the defaults."""
    candidates = [f"{stream}/{statistic}", statistic, statistic.split("/", 1)[0]]
    for table in (overrides or {}, DEFAULT_TOLERANCES):
        for key in candidates:
            if key in table:
                return table[key]
    return DEFAULT_TOLERANCE


def tolerances_from_config(table: Mapping[str, Any] | None) -> dict[str, Tolerance]:
    """Tolerance overrides from a thresholds table, e.g. ``[matches_baseline.tolerance]`` in TOML::

        [matches_baseline.tolerance]
        cosine = { rel = 1e-3, abs = 1e-6, z = 4 }
        "var_max/harmful" = { z = 6 }

    Fields left out keep the default of that statistic.
    """
    overrides: dict[str, Tolerance] = {}
    for name, spec in dict((table or {}).get("tolerance", {})).items():
        if not isinstance(spec, Mapping) or not set(spec) <= {"rel", "abs", "z"}:
            raise ValueError(f"tolerance for '{name}' must be a table of rel, abs and z; got {spec!r}")
        head, _, rest = name.partition("/")
        stream, statistic = ("", name) if head in _families() or not rest else (head, rest)
        base = resolve_tolerance(stream, statistic)
        overrides[name] = replace(base, **{k: float(v) for k, v in spec.items()})
    return overrides


def _families() -> set[str]:
    return {name.split("/", 1)[0] for name in STAT_NAMES}


# --------------------------------------------------------------------------------------------------
# Comparison


@dataclass(frozen=True)
class Drift:
    """One compared value: where it is, what it was, what it is, and how far that is in tolerances."""

    model: str
    stream: str
    statistic: str
    layer: int
    baseline: float
    current: float
    tolerance: float
    score: float  # |current − baseline| / tolerance; inf where one side is nan or missing
    exceeded: bool = True
    se: float | None = None  # the standard error in the tolerance (paired or from the baseline's interval)

    @property
    def key(self) -> str:
        return f"{self.stream}/{self.statistic}"

    @property
    def difference(self) -> float:
        return self.current - self.baseline

    def effect(self) -> str:
        """The change as a person reads it: relative for a variance or a share, absolute for a cosine."""
        if not math.isfinite(self.difference):
            return ""
        family = self.statistic.split("/", 1)[0]
        if family.startswith("var_") or family == "top_share":
            return f"{self.difference / abs(self.baseline):+.1%}" if self.baseline else f"Δ {self.difference:+.3g}"
        return f"Δ {self.difference:+.3g}"

    def describe(self) -> str:
        effect = self.effect()
        ratio = "∞" if math.isinf(self.score) else f"{self.score:.3g}"
        errors = f", {abs(self.difference) / self.se:.3g} SE" if self.se and math.isfinite(self.difference) else ""
        return (
            f"{self.model} {self.key} layer {self.layer}: baseline {_fmt(self.baseline)}, now {_fmt(self.current)} "
            f"({effect + errors + ', ' if effect else ''}tolerance {self.tolerance:.3g}, {ratio}× tolerance)"
        )


def _fmt(value: float) -> str:
    return "missing" if value is None or math.isnan(value) else f"{value:.6g}"


def _rows(payload: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    return dict(payload.get("statistics", {}))


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _rel_floor(*metas: Mapping[str, Any]) -> float:
    eps = [DTYPE_EPS.get(str(meta.get("dtype")), 0.0) for meta in metas]
    return EPS_MULTIPLE * max(eps, default=0.0)


def compare_all(
    baseline: Mapping[str, Any],
    current: Mapping[str, Any],
    tolerances: Mapping[str, Tolerance] | None = None,
    paired_se: Mapping[str, np.ndarray] | None = None,
) -> list[Drift]:
    """Every value both payloads hold, scored against its tolerance, worst first.

    Statistics present on one side only are not compared here (see :func:`coverage`); within a statistic
    a layer present on one side only is compared against nan, i.e. it always drifts. A ``pre`` layer that
    is the previous layer's ``post`` (the same tensor, :func:`aliased_layers`) is compared once, as ``post``.
    ``paired_se`` (:func:`paired_errors`) tightens the baseline's interval SE of every statistic it holds: it
    never loosens it, since for an unrelated checkpoint the per-prompt readings do not co-vary and the paired
    SE of the difference grows past the unpaired one (two random inits of one tiny Llama passed paired, 0 of 90
    values beyond tolerance at 64 prompts, where unpaired found 6).
    """
    meta = dict(current.get("meta") or baseline.get("meta") or {})
    model = str(meta.get("name") or meta.get("model", "?"))
    rel_floor = _rel_floor(baseline.get("meta", {}), current.get("meta", {}))
    base_rows, cur_rows = _rows(baseline), _rows(current)
    aliases = aliased_layers(baseline) & aliased_layers(current)
    scored: list[Drift] = []
    for key in sorted(set(base_rows) & set(cur_rows)):
        stream, _, statistic = key.partition("/")
        tol = resolve_tolerance(stream, statistic, tolerances)
        before, after = base_rows[key], cur_rows[key]
        errors = None if paired_se is None else paired_se.get(key)
        for layer in range(max(len(before), len(after))):
            if (stream, layer) in aliases or not _index_is_meaningful(base_rows, stream, statistic, layer):
                continue
            b = before[layer] if layer < len(before) else {}
            value = _number(b.get("value"))
            now = _number(after[layer].get("value")) if layer < len(after) else math.nan
            low, high = _optional(b.get("low")), _optional(b.get("high"))
            se = _tighter(interval_se(low, high), None if errors is None or layer >= len(errors) else float(errors[layer]))
            allowed = tol.tolerance(value, rel_floor=rel_floor, se=se)
            if value == now or (math.isnan(value) and math.isnan(now)):
                diff, score = 0.0, 0.0
            elif not (math.isfinite(value) and math.isfinite(now)):
                diff, score = math.inf, math.inf
            else:
                diff = abs(now - value)
                score = diff / allowed if allowed > 0 else math.inf
            scored.append(Drift(model, stream, statistic, layer, value, now, allowed, score, diff > allowed, se))
    scored.sort(key=lambda d: (-d.score, d.stream, d.statistic, d.layer))
    return scored


def aliased_layers(payload: Mapping[str, Any], lower: str = "pre", upper: str = "post") -> set[tuple[str, int]]:
    """``(lower, l)`` for every layer whose ``lower`` statistics all equal ``upper`` at ``l − 1``: one tensor
    read twice (a decoder layer's input is the previous layer's output), so it is compared, counted and
    mapped once. Decided from the values, not from a family's wiring, so a model where they differ keeps both."""
    rows = _rows(payload)
    keys = [name for name in STAT_NAMES if f"{lower}/{name}" in rows and f"{upper}/{name}" in rows]
    if not keys:
        return set()
    n_layers = min(min(len(rows[f"{lower}/{k}"]), len(rows[f"{upper}/{k}"]) + 1) for k in keys)
    return {
        (lower, layer)
        for layer in range(1, n_layers)
        if all(_same(rows[f"{lower}/{k}"][layer].get("value"), rows[f"{upper}/{k}"][layer - 1].get("value")) for k in keys)
    }


def _same(a: Any, b: Any) -> bool:
    a, b = _number(a), _number(b)
    return a == b or (math.isnan(a) and math.isnan(b))


def _index_is_meaningful(rows: Mapping[str, list[Mapping[str, Any]]], stream: str, statistic: str, layer: int) -> bool:
    """A top-feature index is compared only where that feature held at least INDEX_SHARE of the baseline's
    variance: elsewhere the arg-max picks between near-equal features, and rounding may flip it."""
    family, _, which = statistic.partition("/")
    if family != "top_feature":
        return True
    shares = rows.get(f"{stream}/top_share/{which}", [])
    return layer < len(shares) and _number(shares[layer].get("value")) >= INDEX_SHARE


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def compare(
    baseline: Mapping[str, Any], current: Mapping[str, Any], tolerances: Mapping[str, Tolerance] | None = None
) -> list[Drift]:
    """The values that moved beyond tolerance, worst first (empty: the geometry matches its baseline).

    ``baseline`` and ``current`` are baseline payloads (:func:`geomcheck.gate.baseline.baseline_payload`, or a
    file read with :func:`geomcheck.gate.baseline.parse_baseline`); ``tolerances`` overrides :data:`DEFAULT_TOLERANCES` per statistic (see
    :func:`resolve_tolerance`). The SE term comes from the *baseline's* stored interval, so the verdict
    depends only on the committed file and the current values.
    """
    return [d for d in compare_all(baseline, current, tolerances) if d.exceeded]


@dataclass(frozen=True, eq=False)
class DriftMatrix:
    """The comparison as a statistics × layers table, for the drift map.

    ``rows`` are full keys (``"mid/var_mean/harmful"``) in stream, then statistic order; ``scores`` holds
    the signed drift in tolerances, ``(current − baseline) / tolerance`` (±inf where one side is nan or
    missing, nan where a cell was not compared); ``exceeded`` marks exactly the values :func:`compare` reports.
    """

    rows: tuple[str, ...]
    scores: np.ndarray  # (len(rows), n_layers) float
    exceeded: np.ndarray  # (len(rows), n_layers) bool

    @property
    def first_layer(self) -> int | None:
        """The first layer with a value beyond tolerance (the report's "first drifting layer"), or None."""
        columns = np.flatnonzero(self.exceeded.any(axis=0))
        return int(columns[0]) if columns.size else None


def _row_order(key: str) -> tuple[int, int, str]:
    stream, _, statistic = key.partition("/")
    streams, names = list(STREAMS), list(STAT_NAMES)
    return (
        streams.index(stream) if stream in streams else len(streams),
        names.index(statistic) if statistic in names else len(names),
        key,
    )


def drift_matrix(scored: Iterable[Drift]) -> DriftMatrix:
    """Lay out :func:`compare_all`'s drifts as a :class:`DriftMatrix` (a pure re-arrangement: the score
    and the verdict of every cell are the comparison's own, only given the sign of the change)."""
    scored = list(scored)
    rows = tuple(sorted({d.key for d in scored}, key=_row_order))
    index = {key: i for i, key in enumerate(rows)}
    n_layers = max((d.layer + 1 for d in scored), default=0)
    scores = np.full((len(rows), n_layers), np.nan)
    exceeded = np.zeros((len(rows), n_layers), dtype=bool)
    for d in scored:
        negative = math.isfinite(d.difference) and d.difference < 0
        scores[index[d.key], d.layer] = -d.score if negative else d.score
        exceeded[index[d.key], d.layer] = d.exceeded
    return DriftMatrix(rows, scores, exceeded)


@dataclass(frozen=True)
class Coverage:
    """Statistics and metadata that differ between a baseline and the current run."""

    only_in_baseline: tuple[str, ...] = ()
    only_in_current: tuple[str, ...] = ()
    meta: tuple[tuple[str, Any, Any], ...] = ()  # (field, baseline, current), warned fields only
    meta_changed: bool = False  # any metadata field differs (device and n_boot included)
    unfingerprinted: bool = False  # the baseline predates fingerprints: it cannot say what it measured


def coverage(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> Coverage:
    """What the two payloads do not share: statistics on one side only, and differing metadata."""
    old, new = dict(baseline.get("meta", {})), dict(current.get("meta", {}))
    unfingerprinted = "weights" not in old
    # a baseline from before fingerprints lacks fields it could not record: one warning says so instead
    differing = [(n, old.get(n), new.get(n)) for n in WARNED_META if old.get(n) != new.get(n) and not (unfingerprinted and n not in old)]
    return Coverage(
        only_in_baseline=tuple(sorted(set(_rows(baseline)) - set(_rows(current)))),
        only_in_current=tuple(sorted(set(_rows(current)) - set(_rows(baseline)))),
        meta=tuple(differing),
        meta_changed=old != new,
        unfingerprinted=unfingerprinted,
    )


def source_kind(meta: Mapping[str, Any]) -> str:
    """How a checkpoint is identified (:mod:`geomcheck.run.fingerprint`): a ``package`` and a ``gguf`` file by
    one file's digest (weights and tokenizer alike), a ``hub`` snapshot by its commit, a ``directory`` per file.
    Digests of two kinds are not comparable file by file."""
    if meta.get("package"):
        return "package"
    if meta.get("revision"):
        return "hub"
    files = list(dict(meta.get("files") or {}))
    return "gguf" if len(files) == 1 and files[0].endswith(".gguf") else "directory"


def _describe_source(meta: Mapping[str, Any], kind: str) -> str:
    where = {"package": meta.get("package"), "hub": f"{meta.get('source')}@{short(meta.get('revision'))}"}.get(kind, meta.get("source"))
    return f"{kind} {where}"


def _listed(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (", …" if len(names) > limit else "")


def identity_summary(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """Whether the checkpoint changed since the baseline (``weights a1b2c3d → 9f8e7d6 (model.safetensors)``),
    or only the rendered inputs or the environment did, from the two payloads' metadata.

    Only the files whose digest differs are named. Checkpoints identified differently (a directory against
    a package model) are reported as ``sources differ``, with the weights' digests but no claim about the
    tokenizer: a package's one GGUF digest stands for both, a directory's for its weight files only."""
    old, new = dict(baseline.get("meta", {})), dict(current.get("meta", {}))
    if "weights" not in old:
        return "the baseline records no fingerprint (made before geomcheck fingerprinted checkpoints)"
    against = f"vs {old.get('name')}'s baseline: " if old.get("name") != new.get("name") else ""  # --baseline
    kinds = source_kind(old), source_kind(new)
    changes: list[str] = []
    if kinds[0] != kinds[1]:
        changes.append(f"sources differ ({_describe_source(old, kinds[0])} → {_describe_source(new, kinds[1])}): "
                       f"weights {short(old.get('weights'))} → {short(new.get('weights'))}")
    else:
        changes = [f"{name} {short(old.get(name))} → {short(new.get(name))}" for name in ("weights", "tokenizer") if old.get(name) != new.get(name)]
        files_old, files_new = dict(old.get("files") or {}), dict(new.get("files") or {})
        changed_files = [f for f in set(files_old) | set(files_new) if files_old.get(f) != files_new.get(f)]
        if changes and changed_files:
            changes[-1] += f" ({_listed(changed_files)})"
        if against == "" and old.get("source") != new.get("source"):
            changes.append(f"source {old.get('source')} → {new.get('source')}")
    tokens_old, tokens_new = (dict(m.get("inputs") or {}).get("token_ids") for m in (old, new))
    if tokens_old != tokens_new:
        changes.append(f"rendered inputs {short(tokens_old)} → {short(tokens_new)}")
    env_old, env_new = dict(old.get("environment") or {}), dict(new.get("environment") or {})
    environment = [f"{k} {env_old.get(k)} → {env_new.get(k)}" for k in ENVIRONMENT if env_old.get(k) != env_new.get(k)]
    if changes:
        return against + "; ".join(changes) + (f"; environment: {', '.join(environment)}" if environment else "; environment unchanged")
    same = f"checkpoint unchanged (weights {short(new.get('weights'))})"
    return against + (f"{same}; only the environment changed: {', '.join(environment)}" if environment else f"{same}, environment unchanged")


# --------------------------------------------------------------------------------------------------
# Paired drift




def paired_errors(readings: Readings, n_boot: int = 200, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The reference's per-layer statistics, and the bootstrap standard error of *current − reference*
    for each, both checkpoints resampled with the same prompts (the run's own resample draws), by the
    geometry's own block engine (:func:`geomcheck.stats.geometry.resampled_statistics`): no copy of the readings.

    Returns ``(reference values, SE)``, keyed ``<stream>/<statistic>``; an index (top_feature) has no SE.
    """
    ref, cur = readings.reference, readings.current
    streams = [s for s in ref[SETS[0]] if all(s in cur[p] and s in ref[p] for p in SETS)]
    shapes = {p: {ref[p][s].shape for s in streams} | {cur[p][s].shape for s in streams} for p in SETS}
    if any(len(v) != 1 for v in shapes.values()):
        raise ValueError(f"paired readings must hold the same prompts, layers and features on both sides; got {shapes}")
    n_layers = ref[SETS[0]][streams[0]].shape[1]
    counts = resample_counts((len(ref[SETS[0]][streams[0]]), len(ref[SETS[1]][streams[0]])), n_boot, seed)
    resampled = [name for name in STAT_NAMES if name not in NO_INTERVAL]
    values: dict[str, np.ndarray] = {}
    errors: dict[str, np.ndarray] = {}
    for stream in streams:
        point = {name: np.empty(n_layers) for name in STAT_NAMES}
        difference = {name: np.zeros((n_boot, n_layers)) for name in resampled}
        for sign, side in ((-1.0, ref), (1.0, cur)):
            for (rows, layers), observed, curves in resampled_statistics(side[SETS[0]][stream], side[SETS[1]][stream], counts):
                for name in resampled:
                    difference[name][rows, layers] += sign * curves[name]
                if side is ref:
                    for name in STAT_NAMES:
                        point[name][layers] = observed[name]
        for name in STAT_NAMES:
            values[f"{stream}/{name}"] = point[name]
        for name in resampled:
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a layer nan in every replicate has no SE
                errors[f"{stream}/{name}"] = np.nanstd(difference[name], axis=0, ddof=1)
    return values, errors


def reproduces(baseline: Mapping[str, Any], values: Mapping[str, np.ndarray]) -> bool:
    """Whether the reference readings give back the baseline's values (to :data:`REPRODUCED_RTOL`): only
    then are they the readings the baseline was made from, and fit to pair with."""
    rows = _rows(baseline)
    shared = [key for key in values if key in rows]
    if not shared:
        return False
    for key in shared:
        stored = np.array([_number(row.get("value")) for row in rows[key]])
        if stored.shape != np.shape(values[key]) or not np.allclose(values[key], stored, rtol=REPRODUCED_RTOL, atol=1e-12, equal_nan=True):
            return False
    return True


def growth_changes(comparison: Comparison) -> list[str]:
    """The growth rate per layer of var_mean (H1's effect size), baseline → now, per stream and set."""
    lines = []
    for stream in STREAMS:
        for prompt_set in SETS:
            key = f"{stream}/var_mean/{prompt_set}"
            curves = [np.array([_number(r.get("value")) for r in _rows(p).get(key, [])]) for p in (comparison.baseline, comparison.current)]
            if not all(len(c) for c in curves):
                continue
            try:
                before, after = (growth_fit(c).rate for c in curves)
            except ValueError:  # too few positive layers for a fit
                continue
            lines.append(f"{key} ×{before:.4g} → ×{after:.4g} per layer ({after / before - 1:+.2%})")
    return lines


@dataclass(frozen=True, eq=False)
class Comparison:
    """A baseline and a current payload compared once: every value scored (:func:`compare_all`, worst
    first) and what the two do not share. The verdict, the message and the drift map all read this.
    ``method`` says which rule ran and why (``paired …`` or ``unpaired …``)."""

    baseline: Mapping[str, Any]
    current: Mapping[str, Any]
    scored: list[Drift]
    coverage: Coverage
    method: str = "unpaired: the baseline holds statistics only"

    @property
    def paired(self) -> bool:
        return self.method.startswith("paired")

    @property
    def drifts(self) -> list[Drift]:
        """The values beyond tolerance, worst first (what :func:`compare` returns)."""
        return [d for d in self.scored if d.exceeded]


def compare_payloads(
    baseline: Mapping[str, Any],
    current: Mapping[str, Any],
    tolerances: Mapping[str, Tolerance] | None = None,
    readings: Readings | None = None,
) -> Comparison:
    """Compare two payloads once, keeping everything the check reports: paired where ``readings`` are
    given and reproduce the baseline, unpaired otherwise (the method says which, and why)."""
    method, paired_se = Comparison.method, None
    if readings is not None:
        values, errors = paired_errors(readings, n_boot=int(baseline.get("meta", {}).get("n_boot") or 200))
        if reproduces(baseline, values):
            method, paired_se = f"paired on the same prompts, reference readings from {readings.source}", errors
        else:
            method = f"unpaired: the reference readings from {readings.source} do not reproduce the baseline"
    return Comparison(baseline, current, compare_all(baseline, current, tolerances, paired_se), coverage(baseline, current), method)
