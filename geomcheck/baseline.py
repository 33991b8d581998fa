"""Baselines: a model's per-layer geometry committed as readable JSON, compared numerically with tolerance.

A baseline is one JSON file per model and check, ``<rootdir>/baselines/<model>/<test module>/<test>.json``
(e.g. ``baselines/smollm2-135m/test_baseline/test_matches_baseline.json``), holding the run's metadata and,
for every stream and per-layer statistic, each layer's value and 95% bootstrap interval on one line::

    "mid/cosine": [
      {"layer": 0, "value": 0.9981, "low": 0.9975, "high": 0.9986},
      ...

so a regenerated baseline reviews as a per-layer diff. Files are parsed as data (``json``), never executed.

**How syrupy is used.** :class:`GeometryBaselineExtension` is a syrupy single-file extension, so syrupy
keeps doing what it is good at: reading and writing the file, ``--snapshot-update`` (create, update,
"1 snapshot generated/updated/failed" in the summary) and unused-snapshot detection and cleanup. Three
of its hooks are replaced:

* ``dirname``/``get_snapshot_name`` move the file out of ``__snapshots__`` beside the tests into
  ``<rootdir>/baselines/<model>/<test module>/`` and drop the model from the file name (it is the folder);
  the layout below ``baselines/<model>`` is syrupy's own single-file layout, so discovery of unused
  baselines works unchanged, and only the models of the session are ever looked at.
* ``matches`` compares *numerically* (:func:`compare`) instead of comparing strings, so numerical noise
  passes and a real change fails; it also detects a baseline made with another dtype, prompt set or
  geomcheck version (a :class:`BaselineMismatchWarning`, issued from the check's line). Under ``--snapshot-update`` a baseline is
  rewritten only if it no longer matches (drift, changed setup, new statistics, broken file): values
  that moved within tolerance are kept, so re-running the update does not churn the committed diff.
* ``diff_lines`` renders the drift report, for plain ``assert snapshot == payload`` use.

The check itself goes through :func:`check_baseline`, which makes the same syrupy assertion and then
builds the failure message from syrupy's recorded result: worst drifts first, the missing-baseline and
broken-file cases with the exact command that fixes them. It fails with ``pytest.fail`` rather than
relying on syrupy's assertion-rewriting hook, because pytest truncates that explanation to 8 lines
without ``-vv``, and the first lines must be the worst drifts, not a diff header.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shlex
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

import geomcheck
from geomcheck.activate import model_flag  # the update command says --model only where the project opted in
from geomcheck import registry
from geomcheck.fingerprint import short
from geomcheck.stats import STAT_NAMES

if TYPE_CHECKING:
    from syrupy.assertion import SnapshotAssertion
    from syrupy.location import PyTestLocation

    from geomcheck.geometry import Geometry

FORMAT = "geomcheck-baseline/1"
BASELINES_DIRNAME = "baselines"
MODEL_PARAM = "model_name"  # the plugin's parametrization over --model
SE_PER_95 = 3.92  # a normal 95% interval is 2 x 1.96 standard errors wide
MAX_REPORTED = 10
# Metadata that changes what the numbers mean: a difference is warned about, since drift may then reflect
# the setup rather than the model. Device is left out on purpose: another device only adds rounding noise.
# What the checkpoint is (weights, tokenizer, revision, source) is not a setup: identity_summary reports it.
WARNED_META = ("dtype", "prompts_hash", "geomcheck", "position", "chat_template", "template_date")
ENVIRONMENT = ("torch", "transformers", "attn_implementation", "device", "dtype")  # meta["environment"]
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
ROW_FIELDS = ("layer", "value", "low", "high")
# Machine epsilon of each dtype the plugin runs in: rounding noise scales with it (see Tolerance).
DTYPE_EPS = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
EPS_MULTIPLE = 4.0
INDEX_SHARE = 0.5  # a top-feature index is compared where that feature holds at least this share of the variance


class BaselineMismatchWarning(UserWarning):
    """The baseline was made with another dtype, prompt set, geomcheck version or position."""


class BaselineFileError(ValueError):
    """A baseline file that is not valid JSON or lacks what a baseline holds; the message names the fix."""


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

    def tolerance(self, baseline: float, low: float | None = None, high: float | None = None, rel_floor: float = 0.0) -> float:
        """The allowed |current − baseline| for one value with its stored 95% interval."""
        terms = [self.abs]
        if math.isfinite(baseline):
            terms.append(max(self.rel, rel_floor) * abs(baseline))
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high) and high >= low:
            terms.append(self.z * (high - low) / SE_PER_95)
        return max(terms)


# Keys: a statistic family ("cosine", "var_mean", "var_max"), a statistic ("var_mean/harmful") or a full
# key ("mid/cosine"); the most specific one given wins. Variances are in squared activation units, so
# their ``abs`` is a floor against rounding around exact zeros, far below any real variance.
DEFAULT_TOLERANCE = Tolerance()
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "cosine": Tolerance(rel=1e-3, abs=1e-6),
    "var_mean": Tolerance(rel=1e-3, abs=1e-9),
    "var_max": Tolerance(rel=1e-3, abs=1e-9),
    "var_q99": Tolerance(rel=1e-3, abs=1e-9),
    "cosine_debiased": Tolerance(rel=1e-3, abs=1e-6),
    "top_share": Tolerance(rel=1e-3, abs=1e-6),
    "top_feature": Tolerance(rel=0.0, abs=0.5),  # a feature index: the same feature, or drift
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

    @property
    def key(self) -> str:
        return f"{self.stream}/{self.statistic}"

    @property
    def difference(self) -> float:
        return self.current - self.baseline

    def describe(self) -> str:
        delta = "" if not math.isfinite(self.difference) else f"Δ {self.difference:+.3g}, "
        ratio = "∞" if math.isinf(self.score) else f"{self.score:.3g}"
        return (
            f"{self.model} {self.key} layer {self.layer}: baseline {_fmt(self.baseline)}, now {_fmt(self.current)} "
            f"({delta}tolerance {self.tolerance:.3g}, {ratio}× tolerance)"
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
    baseline: Mapping[str, Any], current: Mapping[str, Any], tolerances: Mapping[str, Tolerance] | None = None
) -> list[Drift]:
    """Every value both payloads hold, scored against its tolerance, worst first.

    Statistics present on one side only are not compared here (see :func:`coverage`); within a statistic
    a layer present on one side only is compared against nan, i.e. it always drifts.
    """
    meta = dict(current.get("meta") or baseline.get("meta") or {})
    model = str(meta.get("name") or baseline_name(str(meta.get("model", "?"))))
    rel_floor = _rel_floor(baseline.get("meta", {}), current.get("meta", {}))
    base_rows, cur_rows = _rows(baseline), _rows(current)
    scored: list[Drift] = []
    for key in sorted(set(base_rows) & set(cur_rows)):
        stream, _, statistic = key.partition("/")
        tol = resolve_tolerance(stream, statistic, tolerances)
        before, after = base_rows[key], cur_rows[key]
        for layer in range(max(len(before), len(after))):
            if not _index_is_meaningful(base_rows, stream, statistic, layer):
                continue
            b = before[layer] if layer < len(before) else {}
            value = _number(b.get("value"))
            now = _number(after[layer].get("value")) if layer < len(after) else math.nan
            allowed = tol.tolerance(value, _optional(b.get("low")), _optional(b.get("high")), rel_floor)
            if value == now or (math.isnan(value) and math.isnan(now)):
                diff, score = 0.0, 0.0
            elif not (math.isfinite(value) and math.isfinite(now)):
                diff, score = math.inf, math.inf
            else:
                diff = abs(now - value)
                score = diff / allowed if allowed > 0 else math.inf
            scored.append(Drift(model, stream, statistic, layer, value, now, allowed, score, exceeded=diff > allowed))
    scored.sort(key=lambda d: (-d.score, d.stream, d.statistic, d.layer))
    return scored


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

    ``baseline`` and ``current`` are baseline payloads (:func:`baseline_payload`, or a file read with
    :func:`parse_baseline`); ``tolerances`` overrides :data:`DEFAULT_TOLERANCES` per statistic (see
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
    streams, names = list(geomcheck.STREAMS), list(STAT_NAMES)
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


def identity_summary(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """Whether the checkpoint changed since the baseline (``weights a1b2c3d → 9f8e7d6 (model.safetensors)``),
    or only the rendered inputs or the environment did, from the two payloads' metadata."""
    old, new = dict(baseline.get("meta", {})), dict(current.get("meta", {}))
    if "weights" not in old:
        return "the baseline records no fingerprint (made before geomcheck fingerprinted checkpoints)"
    against = f"vs {old.get('name')}'s baseline: " if old.get("name") != new.get("name") else ""  # --baseline
    changes = [f"{name} {short(old.get(name))} → {short(new.get(name))}" for name in ("weights", "tokenizer") if old.get(name) != new.get(name)]
    files_old, files_new = dict(old.get("files") or {}), dict(new.get("files") or {})
    changed_files = sorted(f for f in set(files_old) | set(files_new) if files_old.get(f) != files_new.get(f))
    if changes and changed_files:
        changes[-1] += f" ({', '.join(changed_files[:5])}{', …' if len(changed_files) > 5 else ''})"
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


def mismatch_warning(cov: Coverage, model: str, location: str) -> str | None:
    """The text of the :class:`BaselineMismatchWarning` for a coverage, or None when nothing is amiss."""
    parts = [f"{name}: baseline {a!r}, now {b!r}" for name, a, b in cov.meta]
    if cov.unfingerprinted:
        parts.append(
            "it records no fingerprint of the checkpoint, inputs and environment it measured (made by an older "
            f"geomcheck); regenerate it: pytest checks/ --model {model} --snapshot-update"
        )
    if cov.only_in_baseline:
        parts.append(f"not computed in this run (e.g. --streams): {', '.join(cov.only_in_baseline)}")
    if not parts:
        return None
    return (
        f"the baseline of {model} ({location}) was made with another setup: {'; '.join(parts)}. "
        "Differences may reflect the setup rather than the model; if the new setup is intended, "
        "update the baseline with --snapshot-update."
    )


# --------------------------------------------------------------------------------------------------
# Payloads and files


def baseline_payload(geometry: Geometry, meta: Mapping[str, Any]) -> dict[str, Any]:
    """A geometry's per-layer curves with intervals, and the run's metadata, as stored in a baseline."""
    info = {key: _plain(value) for key, value in meta.items()}
    info.setdefault("name", baseline_name(str(info.get("model", "?"))))
    info.setdefault("geomcheck", geomcheck.__version__)
    info["n_boot"] = int(geometry.n_boot)
    info["n_layers"] = int(geometry.n_layers)
    info["streams"] = list(geometry.streams)
    statistics: dict[str, list[dict[str, Any]]] = {}
    for stream in geometry.streams:
        for name in STAT_NAMES:
            key = f"{stream}/{name}"
            if key not in geometry.values:
                continue
            values = np.asarray(geometry.values[key], dtype=np.float64)
            interval = geometry.intervals.get(key)
            lows = np.asarray(interval.low, dtype=np.float64) if interval is not None else None
            highs = np.asarray(interval.high, dtype=np.float64) if interval is not None else None
            statistics[key] = [
                {
                    "layer": layer,
                    "value": float(values[layer]),
                    "low": None if lows is None else float(lows[layer]),
                    "high": None if highs is None else float(highs[layer]),
                }
                for layer in range(len(values))
            ]
    return {"format": FORMAT, "meta": info, "statistics": statistics}


def geometry_from_payload(payload: Mapping[str, Any]) -> Geometry:
    """The per-layer curves (and intervals) a baseline holds, as a Geometry, e.g. to draw it beside a run."""
    from geomcheck.geometry import Geometry
    from geomcheck.stats import Interval

    values: dict[str, np.ndarray] = {}
    intervals: dict[str, Interval] = {}
    for key, rows in payload["statistics"].items():
        ordered = sorted(rows, key=lambda row: row["layer"])
        values[key] = np.array([_number(row["value"]) for row in ordered])
        if all(row.get("low") is not None for row in ordered):
            intervals[key] = Interval(np.array([_number(r["low"]) for r in ordered]), np.array([_number(r["high"]) for r in ordered]))
    streams = tuple(payload["meta"].get("streams") or sorted({key.split("/")[0] for key in values}))
    return Geometry(streams, values, intervals, int(payload["meta"].get("n_boot", 0)))


def _plain(value: Any) -> Any:
    """JSON-ready copies of metadata values (numpy scalars, tuples, paths)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _json_number(value: Any) -> str:
    """A float that round-trips (shortest repr); non-finite values as strings, since JSON has none."""
    if value is None:
        return "null"
    value = float(value)
    if math.isnan(value):
        return '"NaN"'
    if math.isinf(value):
        return '"Infinity"' if value > 0 else '"-Infinity"'
    return repr(value)


def dumps(payload: Mapping[str, Any]) -> str:
    """The file text: sorted keys, metadata indented, one line per layer."""
    validate(payload, "payload")
    meta = json.dumps(_plain(dict(payload["meta"])), indent=2, sort_keys=True, ensure_ascii=False)
    lines = ["{", f'  "format": {json.dumps(payload.get("format", FORMAT))},']
    lines.append('  "meta": ' + meta.replace("\n", "\n  ") + ",")
    lines.append('  "statistics": {')
    keys = sorted(payload["statistics"])
    for i, key in enumerate(keys):
        lines.append(f"    {json.dumps(key)}: [")
        rows = payload["statistics"][key]
        for j, row in enumerate(rows):
            cells = ", ".join(
                f'"{name}": {int(row[name]) if name == "layer" else _json_number(row[name])}' for name in ROW_FIELDS
            )
            lines.append("      {" + cells + "}" + ("," if j < len(rows) - 1 else ""))
        lines.append("    ]" + ("," if i < len(keys) - 1 else ""))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r} (a merge conflict resolved twice?)")
        seen[key] = value
    return seen


_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def parse_baseline(text: str | bytes, location: str = "<baseline>", fix: str | None = None) -> dict[str, Any]:
    """A baseline file's text as a payload (non-finite strings back to floats), or a
    :class:`BaselineFileError` that names the file, the problem and ``fix``. JSON only: never executed."""
    fix = fix or "regenerate it (this overwrites the file) with --snapshot-update"

    def fail(problem: str) -> BaselineFileError:
        return BaselineFileError(
            f"baseline file {location} is not a valid geomcheck baseline: {problem}. It was left as it is; "
            f"fix it by hand, or {fix}"
        )

    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise fail(f"invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})") from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        validate(data, location)
    except ValueError as exc:
        raise fail(str(exc)) from None
    for rows in data["statistics"].values():
        for row in rows:
            for name in ("value", "low", "high"):
                if isinstance(row[name], str):
                    row[name] = _NON_FINITE[row[name]]
                elif row[name] is not None:
                    row[name] = float(row[name])
    return data


def validate(data: Any, what: str) -> None:
    """Raise ValueError naming the first thing a payload lacks."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a JSON object with 'format', 'meta' and 'statistics'")
    missing = [k for k in ("format", "meta", "statistics") if k not in data]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(repr(k) for k in missing)} at the top level")
    if data["format"] != FORMAT:
        raise ValueError(f"format is {data['format']!r}, this geomcheck reads {FORMAT!r}")
    if not isinstance(data["meta"], Mapping):
        raise ValueError("'meta' must be an object")
    for name in ("model", "dtype"):
        if name not in data["meta"]:
            raise ValueError(f"'meta' lacks {name!r}")
    statistics = data["statistics"]
    if not isinstance(statistics, Mapping) or not statistics:
        raise ValueError("'statistics' must be a non-empty object of '<stream>/<statistic>': [rows]")
    for key, rows in statistics.items():
        if "/" not in key:
            raise ValueError(f"statistic {key!r} is not '<stream>/<statistic>'")
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"{key!r} must be a non-empty list of per-layer rows")
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ValueError(f"{key!r} row {index} is not an object")
            lacking = [name for name in ROW_FIELDS if name not in row]
            if lacking:
                raise ValueError(f"{key!r} row {index} lacks {', '.join(repr(n) for n in lacking)}")
            if row["layer"] != index or isinstance(row["layer"], bool):
                raise ValueError(f"{key!r} row {index} has layer {row['layer']!r}; rows must be layers 0, 1, 2, … in order")
            for name in ("value", "low", "high"):
                cell = row[name]
                ok = (
                    (isinstance(cell, (int, float)) and not isinstance(cell, bool))
                    or (isinstance(cell, str) and cell in _NON_FINITE)
                    or (cell is None and name != "value")
                )
                if not ok:
                    raise ValueError(f"{key!r} layer {index} has {name} = {cell!r}, not a number")


@functools.lru_cache(maxsize=256)
def baseline_name(model: str) -> str:
    """The folder of a model's baselines, ``baselines/<this>/``; the one place that names it.

    A registry name is itself; a hub id ``ORG/NAME`` is ``ORG--NAME``; a local directory is its folder
    name (so a committed baseline serves the same checkpoint folder on every machine), as one safe path
    component: never empty, ``.`` or ``..``, never a separator. Two directories with the same folder name
    in one session are refused by the plugin; across sessions the baseline's fingerprint and source
    tell them apart in the report (:func:`identity_summary`). Anything else (a folder name given to
    ``--baseline``) is sanitized the same way.
    """
    path = Path(model).expanduser()
    if model in registry.registry():
        name = model
    elif path.is_dir():
        name = path.resolve().name
    elif HUB_ID.fullmatch(model):
        name = model.replace("/", "--")
    else:
        name = path.name or model
    safe = re.sub(r"[^\w.+-]+", "_", name).strip(".")[:100]
    return safe or "_unnamed"


# --------------------------------------------------------------------------------------------------
# The syrupy extension


def _params(test_location: PyTestLocation) -> Mapping[str, Any]:
    return getattr(getattr(test_location.item, "callspec", None), "params", {}) or {}


def baselines_root(config: Any, default: str = BASELINES_DIRNAME) -> Path:
    """``<rootdir>/baselines``, or the ``--baselines-dir`` / ``geomcheck_baselines_dir`` setting if the plugin
    defines one (relative to rootdir). Without a config (a pytest-xdist controller's stand-in item): cwd."""
    if config is None:
        return Path.cwd() / default
    path = Path(_config_value(config, "geomcheck_baselines_dir") or default).expanduser()
    return path if path.is_absolute() else Path(config.rootpath) / path


def baseline_override(config: Any) -> str | None:
    """``--baseline NAME``: the model whose baseline every model of the session is compared against."""
    return None if config is None else _config_value(config, "geomcheck_baseline")


def _config_value(config: Any, dest: str) -> Any:
    """A plugin setting from the command line, else the ini file; None where the plugin has no such setting."""
    value = config.getoption(dest, default=None)
    if value:
        return value
    try:
        return config.getini(dest) or None
    except ValueError:
        return None


class GeometryBaselineExtension(SingleFileSnapshotExtension):
    """Syrupy extension: ``baselines/<model>/<module>/<test>.json``, compared numerically (see the module
    docstring). Use it through :func:`check_baseline`, or as ``assert snapshot.use_extension(
    GeometryBaselineExtension) == baseline_payload(geometry, meta)``."""

    _write_mode = WriteMode.TEXT
    file_extension = "json"
    baselines_dirname = BASELINES_DIRNAME

    def __init__(self) -> None:
        # One instance per assertion (syrupy creates it lazily); check_baseline configures it.
        self.tolerances: Mapping[str, Tolerance] | None = None
        self.updating = False  # --snapshot-update: rewrite a baseline whose setup changed, too
        self.defer_warnings = False  # check_baseline warns itself, pointing at the check, not at syrupy
        self.location: str | None = None  # the file last read, for messages
        self.mismatch: str | None = None  # the BaselineMismatchWarning text of the last comparison

    def configure(
        self, *, tolerances: Mapping[str, Tolerance] | None = None, updating: bool = False, defer_warnings: bool = False
    ) -> None:
        self.tolerances = tolerances
        self.updating = updating
        self.defer_warnings = defer_warnings

    # -- where ----------------------------------------------------------------------------------------

    @classmethod
    def dirname(cls, *, test_location: PyTestLocation) -> str:
        config = getattr(test_location.item, "config", None)
        model = baseline_override(config) or _params(test_location).get(MODEL_PARAM)
        folder = baseline_name(str(model)) if model is not None else "_no_model"
        root = baselines_root(config, cls.baselines_dirname)
        return str(root / folder / test_location.basename)

    @classmethod
    def get_snapshot_name(cls, *, test_location: PyTestLocation, index: Any = 0) -> str:
        """The test's name without the model (that is the folder), keeping any other parameters."""
        others = [str(v) for k, v in _params(test_location).items() if k != MODEL_PARAM]
        name = test_location.methodname or test_location.testname
        if test_location.classname:
            name = f"{test_location.classname}.{name}"
        if others:
            name += f"[{'-'.join(others)}]"
        if isinstance(index, str):
            name += f"[{index}]"
        elif index:
            name += f".{index}"
        return cls._sanitize_filename(name)[: cls._max_stem_length()]

    @classmethod
    def matches_test_location(cls, *, test_location: PyTestLocation, snapshot_location: str) -> bool:
        """A file belongs to a test if it sits in that test's baseline folder (same model, same module)."""
        return Path(snapshot_location).parent == Path(cls.dirname(test_location=test_location))

    # -- what -----------------------------------------------------------------------------------------

    def serialize(self, data: Any, *, exclude: Any = None, include: Any = None, matcher: Any = None) -> str:
        if not isinstance(data, Mapping):
            raise TypeError(
                f"GeometryBaselineExtension stores baseline payloads, not {type(data).__name__}: "
                "pass baseline_payload(geometry, model_run.meta)"
            )
        return dumps(data)

    def read_snapshot_data_from_location(self, *, snapshot_location: str, snapshot_name: str, session_id: str) -> Any:
        self.location = snapshot_location
        return super().read_snapshot_data_from_location(
            snapshot_location=snapshot_location, snapshot_name=snapshot_name, session_id=session_id
        )

    def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
        """Numeric comparison: no value beyond tolerance and no statistic missing from the baseline.
        A broken baseline does not match (so ``--snapshot-update`` replaces it, and a plain run fails)."""
        location = self.location or "<baseline>"
        try:
            baseline = parse_baseline(snapshot_data, location)
        except BaselineFileError:
            return False
        current = parse_baseline(serialized_data, "<current run>")
        cov = coverage(baseline, current)
        model = str(current["meta"].get("name", "?"))
        self.mismatch = None if self.updating else mismatch_warning(cov, model, location)
        if self.mismatch and not self.defer_warnings:
            warnings.warn(self.mismatch, BaselineMismatchWarning, stacklevel=2)
        if compare(baseline, current, self.tolerances):
            return False
        # Statistics newer than the baseline are not compared (check_baseline's summary names them).
        # Under --snapshot-update a changed setup is rewritten even if the values still match, so the
        # file always says what produced it; values that only moved within tolerance are kept.
        return not (self.updating and (cov.meta_changed or cov.only_in_baseline or cov.only_in_current))

    def diff_lines(self, serialized_data: Any, snapshot_data: Any) -> Iterator[str]:
        yield from failure_lines(serialized_data, snapshot_data, self.location or "<baseline>", self.tolerances)


# --------------------------------------------------------------------------------------------------
# Reports


def _layer_runs(layers: Iterable[int]) -> str:
    runs: list[list[int]] = []
    for layer in sorted(set(layers)):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def drift_report(
    drifts: list[Drift], total: int, *, model: str, location: str, update_command: str, limit: int = MAX_REPORTED
) -> list[str]:
    """The failure message for drifts (worst first): at most ``limit`` value lines, then a per-statistic
    list of drifting layers and how to accept the change."""
    lines = [
        f"the geometry of {model} drifted from its baseline ({location}): {len(drifts)} of {total} values "
        "moved beyond tolerance = max(abs, rel·|baseline|, z·SE); worst first:"
    ]
    lines += [f"  {d.describe()}" for d in drifts[:limit]]
    if len(drifts) > limit:
        lines.append(f"  … and {len(drifts) - limit} more")
    by_key: dict[str, list[int]] = {}
    for d in drifts:
        by_key.setdefault(d.key, []).append(d.layer)
    first = min(d.layer for d in drifts)
    summary = "; ".join(f"{key} layers {_layer_runs(layers)}" for key, layers in sorted(by_key.items()))
    lines.append(f"first drifting layer: {first}. Drifting: {summary}")
    lines.append(f"If the change is intended, update the baseline: {update_command}")
    return lines


def failure_lines(
    serialized_data: Any,
    snapshot_data: Any,
    location: str,
    tolerances: Mapping[str, Tolerance] | None = None,
    update_command: str = "pytest checks/ --model NAME --snapshot-update",
) -> list[str]:
    """Why a current payload does not match a baseline text (missing, broken, drifted, incomplete)."""
    current = parse_baseline(serialized_data, "<current run>")
    model = str(current["meta"].get("name", "?"))
    command = update_command.replace("NAME", shlex.quote(str(current["meta"].get("model", model))))
    if not snapshot_data:
        return missing_lines(model, location, command)
    try:
        baseline = parse_baseline(snapshot_data, location, fix=f"regenerate it (this overwrites the file) with: {command}")
    except BaselineFileError as exc:
        return [str(exc)]
    lines: list[str] = []
    scored = compare_all(baseline, current, tolerances)
    drifts = [d for d in scored if d.exceeded]
    if drifts:
        lines += drift_report(drifts, len(scored), model=model, location=location, update_command=command)
    cov = coverage(baseline, current)
    if cov.only_in_current:
        lines.append(
            f"the baseline of {model} ({location}) lacks statistics this run computes: "
            f"{', '.join(cov.only_in_current)}; add them with: {command}"
        )
    return lines


def missing_lines(model: str, location: str, command: str) -> list[str]:
    return [
        f"no baseline for {model}: expected {location}",
        f"Create it with: {command}",
        "(it is written there; commit it so later runs compare against it)",
    ]


# --------------------------------------------------------------------------------------------------
# The check's entry point


@dataclass
class BaselineOutcome:
    """What :func:`check_baseline` found: ``ok``, a one-line ``summary``, and the failure ``message``."""

    ok: bool
    status: str  # created, updated, matched, missing, broken, drifted
    location: str
    summary: str
    message: str = ""
    drifts: list[Drift] = field(default_factory=list)
    baseline: dict[str, Any] | None = None  # the parsed baseline, when there is one to compare with
    compared: list[Drift] = field(default_factory=list)  # every value compared (compare_all), for the drift map

    def __repr__(self) -> str:  # keep assertion rewriting from printing every drift
        return f"BaselineOutcome(status={self.status!r}, ok={self.ok}, drifts={len(self.drifts)})"


def _display(location: str, root: Path | None) -> str:
    path = Path(location)
    for base in (root, Path.cwd()):
        if base is not None:
            try:
                return str(path.relative_to(base))
            except ValueError:
                continue
    return location


def _update_command(test_location: PyTestLocation, model: str) -> str:
    """``pytest checks/ --model NAME --snapshot-update``, with the checks' folder as run from here."""
    target = Path(test_location.filepath).parent
    try:
        rel = target.relative_to(Path.cwd())
        where = f"{rel}/" if str(rel) != "." else Path(test_location.filepath).name
    except ValueError:
        where = f"{target}/"
    return f"pytest {where} {model_flag(getattr(test_location.item, 'config', None))} {shlex.quote(model)} --snapshot-update"


def check_baseline(
    assertion: SnapshotAssertion,
    data: Geometry | Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
) -> BaselineOutcome:
    """Compare a geometry (with its run's ``meta``) or a payload with its committed baseline.

    ``assertion`` is ``snapshot.use_extension(GeometryBaselineExtension)``. Syrupy reads the file,
    matches numerically and, under ``--snapshot-update``, writes it; this returns what happened with a
    message fit for ``pytest.fail``.
    """
    extension = assertion.extension
    if not isinstance(extension, GeometryBaselineExtension):
        raise TypeError("check_baseline needs snapshot.use_extension(GeometryBaselineExtension)")
    extension.configure(tolerances=tolerances, updating=bool(assertion.update_snapshots), defer_warnings=True)
    extension.mismatch = None
    payload = dict(data) if isinstance(data, Mapping) else baseline_payload(data, meta or {})
    matched = assertion == payload
    result = assertion.executions[assertion.num_executions - 1]
    if result.exception is not None:
        raise result.exception
    config = getattr(result.test_location.item, "config", None)
    location = _display(result.snapshot_location, Path(config.rootpath) if config is not None else None)
    if extension.mismatch:
        warnings.warn(extension.mismatch.replace(result.snapshot_location, location), BaselineMismatchWarning, stacklevel=2)
    model = str(payload["meta"].get("name") or baseline_name(str(payload["meta"].get("model", "?"))))
    owner = baseline_override(config) or str(payload["meta"].get("model", model))
    command = _update_command(result.test_location, owner)
    written = f"{location} (weights {short(payload['meta'].get('weights'))})"
    if result.created:
        return BaselineOutcome(True, "created", location, f"baseline written: {written}")
    if result.updated:
        return BaselineOutcome(True, "updated", location, f"baseline updated: {written}")
    if result.recalled_data is None:
        lines = missing_lines(model, location, command)
        return BaselineOutcome(False, "missing", location, "no baseline", "\n".join(lines))
    try:
        parse_baseline(result.recalled_data, location)
    except BaselineFileError:
        lines = failure_lines(result.asserted_data, result.recalled_data, location, tolerances, command)
        return BaselineOutcome(False, "broken", location, "baseline file broken", "\n".join(lines))
    baseline = parse_baseline(result.recalled_data, location)
    scored = compare_all(baseline, payload, tolerances)
    drifts = [d for d in scored if d.exceeded]
    identity = identity_summary(baseline, payload)
    if matched:
        worst = scored[0] if scored else None
        text = (
            f"{len(scored)} values within tolerance; largest drift {worst.score:.2g}× tolerance at {worst.key} layer {worst.layer}"
            if worst is not None
            else "nothing compared"
        )
        newer = coverage(baseline, payload).only_in_current
        if newer:
            text += f"; not in the baseline, so not compared: {', '.join(newer)} (add them with: {command})"
        return BaselineOutcome(True, "matched", location, f"{text}; {identity}", drifts=drifts, baseline=baseline, compared=scored)
    lines = failure_lines(result.asserted_data, result.recalled_data, location, tolerances, command)
    lines.append(f"identity: {identity}")
    worst_text = f"; worst {drifts[0].score:.3g}× at {drifts[0].key} layer {drifts[0].layer}" if drifts else ""
    summary = f"{len(drifts)} of {len(scored)} values drifted{worst_text}; {identity}"
    return BaselineOutcome(False, "drifted", location, summary, "\n".join(lines), drifts, baseline, scored)


__all__ = [
    "BaselineFileError",
    "BaselineMismatchWarning",
    "BaselineOutcome",
    "Coverage",
    "DEFAULT_TOLERANCES",
    "Drift",
    "DriftMatrix",
    "GeometryBaselineExtension",
    "Tolerance",
    "baseline_payload",
    "check_baseline",
    "compare",
    "compare_all",
    "coverage",
    "drift_matrix",
    "dumps",
    "geometry_from_payload",
    "identity_summary",
    "parse_baseline",
    "resolve_tolerance",
    "tolerances_from_config",
]
