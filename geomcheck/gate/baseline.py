"""Baseline files: a model's per-layer geometry committed as readable JSON, and where each model's live.

A baseline is one JSON file per model and check, ``<rootdir>/baselines/<model>/<test module>/<test>.json``
(e.g. ``baselines/smollm2-135m/test_baseline/test_matches_baseline.json``), holding the run's metadata and,
for every stream and per-layer statistic, each layer's value and 95% bootstrap interval on one line::

    "mid/cosine": [
      {"layer": 0, "value": 0.9981, "low": 0.9975, "high": 0.9986},
      ...

so a regenerated baseline reviews as a per-layer diff. Files are parsed as data (``json``), never executed.
Comparing two payloads is :mod:`geomcheck.gate.drift`; reading and writing them through syrupy is
:mod:`geomcheck.gate.extension`. Free of torch (and of syrupy), so the plugin can name folders at start-up.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import geomcheck
from geomcheck import STREAMS, atomic
from geomcheck.errors import GeomcheckError
from geomcheck.run import registry
from geomcheck.stats.vocabulary import STAT_NAMES

if TYPE_CHECKING:
    from geomcheck.stats.geometry import Geometry

FORMAT = "geomcheck-baseline/1"
BASELINES_DIRNAME = "baselines"
ROW_FIELDS = ("layer", "value", "low", "high")


class BaselineFileError(GeomcheckError, ValueError):
    """A baseline file that is not valid JSON or lacks what a baseline holds; the message names the fix."""


# --------------------------------------------------------------------------------------------------
# Payloads and files


def baseline_payload(geometry: Geometry, meta: Mapping[str, Any]) -> dict[str, Any]:
    """A geometry's per-layer curves with intervals, and the run's metadata, as stored in a baseline."""
    from geomcheck.stats.geometry import INTERVALS

    info = {key: _plain(value) for key, value in meta.items()}
    info.setdefault("name", baseline_name(str(info.get("model", "?"))))
    info.setdefault("geomcheck", geomcheck.__version__)
    info["n_boot"] = int(geometry.n_boot)
    info["intervals"] = INTERVALS
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
    from geomcheck.stats.geometry import Geometry
    from geomcheck.stats.estimators import Interval

    values: dict[str, np.ndarray] = {}
    intervals: dict[str, Interval] = {}
    for key, rows in payload["statistics"].items():
        ordered = sorted(rows, key=lambda row: row["layer"])
        values[key] = np.array([row["value"] for row in ordered], dtype=np.float64)
        if all(row.get("low") is not None for row in ordered):
            intervals[key] = Interval(np.array([r["low"] for r in ordered], dtype=np.float64), np.array([r["high"] for r in ordered], dtype=np.float64))
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
    unknown = sorted(key for key in statistics if key.partition("/")[0] not in STREAMS or key.partition("/")[2] not in STAT_NAMES)
    if unknown:
        raise ValueError(
            f"unknown statistic(s) {', '.join(map(repr, unknown))}; a baseline holds '<stream>/<statistic>' with a stream of "
            f"{', '.join(STREAMS)} and a statistic of {', '.join(STAT_NAMES)}"
        )
    listed = data["meta"].get("streams")
    if listed is not None:
        stored = {key.partition("/")[0] for key in statistics}
        if not isinstance(listed, list) or not set(listed) <= set(STREAMS):
            raise ValueError(f"'meta' streams = {listed!r} is not a list of {', '.join(STREAMS)}")
        if set(listed) != stored:
            raise ValueError(
                f"'meta' lists the streams {', '.join(listed)} but the statistics hold {', '.join(sorted(stored))}"
                + (f" (no statistic of {', '.join(sorted(set(listed) - stored))})" if set(listed) - stored else "")
            )
    for key, rows in statistics.items():
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


def missing_streams(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The streams the current run computes of which the baseline holds no statistic: nothing of them could
    be compared, so the baseline check fails on them instead of passing on the rest."""
    held = {key.partition("/")[0] for key in baseline["statistics"]}
    return sorted({key.partition("/")[0] for key in current["statistics"]} - held)


def write_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and ``os.replace`` it in: a killed update leaves the old
    baseline or the new one, never half a file. Mode 0644 (mkstemp's 0600 would hide it from a CI artifact)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)


@functools.lru_cache(maxsize=256)
def baseline_name(model: str) -> str:
    """The folder of a model's baselines, ``baselines/<this>/``; the one place that names it.

    A registry name is itself; a hub id ``ORG/NAME`` (at any ``@REV``) is ``ORG--NAME``, so a new revision
    is compared with the repository's baseline and the identity line names the commits; a local directory is its folder
    name (so a committed baseline serves the same checkpoint folder on every machine), as one safe path
    component: never empty, ``.`` or ``..``, never a separator. Two directories with the same folder name
    in one session are refused by the plugin; across sessions the baseline's fingerprint and source
    tell them apart in the report (:func:`geomcheck.gate.drift.identity_summary`). Anything else (a folder name given to
    ``--baseline``) is sanitized the same way.
    """
    path = Path(model).expanduser()
    if model in registry.registry():
        name = model
    elif model.startswith("record:"):  # a recorded run is gated against its checkpoint's baselines
        from geomcheck.run import record

        name = record.read(record.record_folder(model)).baseline
    elif path.is_dir():
        name = path.resolve().name
    elif hub := registry.HUB_ID.fullmatch(model):  # any revision of a repository is gated against its one baseline
        name = hub.group("repo").replace("/", "--")
    else:
        name = path.name or model
    safe = re.sub(r"[^\w.+-]+", "_", name).strip(".")[:100]
    return safe or "_unnamed"


def baselines_root(config: Any) -> Path:
    """``<rootdir>/baselines``; without a config (a pytest-xdist controller's stand-in item): ``./baselines``."""
    return (Path.cwd() if config is None else Path(config.rootpath)) / BASELINES_DIRNAME


def baseline_override(config: Any) -> str | None:
    """``--baseline NAME`` (or the ini ``geomcheck_baseline``): the model whose baseline every model of the
    session is compared against."""
    if config is None:
        return None
    return config.getoption("geomcheck_baseline", default=None) or config.getini("geomcheck_baseline") or None


__all__ = [
    "BaselineFileError",
    "FORMAT",
    "baseline_name",
    "baseline_override",
    "baseline_payload",
    "baselines_root",
    "dumps",
    "geometry_from_payload",
    "missing_streams",
    "parse_baseline",
    "write_atomically",
]
