"""Check thresholds: the shipped defaults, then the project's own, each layer merged table by table.

Order: ``geomcheck/data/thresholds.toml``, then ``[tool.geomcheck.thresholds]`` in the project's
``pyproject.toml`` (see :func:`project_file`), then ``--thresholds FILE``. A later layer adds checks and models and
overrides single values; it never drops what an earlier one defined, so a new check's thresholds live in the
user's project and the shipped checks keep theirs.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from geomcheck import STREAMS
from geomcheck.errors import OptionError
from geomcheck.spelling import flag, with_ini

EXPECTED_FAILURES = "expected_failures"
TYPO_CUTOFF = 0.85  # a table name this close to a shipped check's is a misspelling, not a check of the user's
ENTRY_PATTERN = re.compile(r"^(?P<check>[A-Za-z_][A-Za-z0-9_]*)(\[(?P<stream>[^\]]*)\])?$")


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: tables merge key by key, any other value replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def shipped() -> dict[str, Any]:
    return tomllib.loads(resources.files("geomcheck.data").joinpath("thresholds.toml").read_text(encoding="utf-8"))


def project_file(*folders: Path) -> Path | None:
    """The first ``pyproject.toml`` among ``folders`` (the plugin passes pytest's ini file's folder, the
    rootdir and the invocation folder, in that order)."""
    return next((folder / "pyproject.toml" for folder in folders if (folder / "pyproject.toml").is_file()), None)


def from_pyproject(path: Path | None) -> dict[str, Any]:
    """``[tool.geomcheck.thresholds]`` of a ``pyproject.toml``; empty when there is none."""
    if path is None:
        return {}
    table: Any = tomllib.loads(path.read_text(encoding="utf-8"))
    for depth, part in enumerate(("tool", "geomcheck", "thresholds"), start=1):
        table = table.get(part, {})
        if not isinstance(table, Mapping):
            name = ".".join(("tool", "geomcheck", "thresholds")[:depth])
            raise OptionError(
                f"{path}: {name} = {table!r} must be a table ([{name}]) of check thresholds, "
                "laid out like the shipped thresholds.toml"
            )
    return dict(table)


def load(pyproject: Path | None, path: str | None = None) -> dict[str, Any]:
    """The session's thresholds: shipped, then the project's ``pyproject``, then ``path`` (``--thresholds``);
    the merged result is validated, naming the layers it came from."""
    thresholds, sources = merge(shipped(), from_pyproject(pyproject)), ["shipped thresholds.toml"]
    if pyproject is not None:
        sources.append(f"[tool.geomcheck.thresholds] of {pyproject}")
    if path:
        thresholds = merge(thresholds, read_thresholds_file(path))
        sources.append(f"{flag('thresholds')} {path}")
    validate_thresholds(thresholds, "thresholds (" + " + ".join(sources) + ")")
    return thresholds


# Validation: every layer merged, before any model loads


def read_thresholds_file(path: str) -> dict[str, Any]:
    """A user's thresholds file (``--thresholds``), parsed; validated once merged (:func:`validate_thresholds`)."""
    where = f"thresholds file {path} ({with_ini('thresholds')})"
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OptionError(f"{where} does not exist; give the path of a TOML file laid out like the shipped thresholds.toml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"{where} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"{where} is not valid TOML: {exc}") from exc


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _misspelled(name: str, known: list[str]) -> str | None:
    """The shipped check a user table's name is a near miss of (``variance_grow`` → ``variance_grows``)."""
    return next(iter(difflib.get_close_matches(name, [k for k in known if k != name], n=1, cutoff=TYPO_CUTOFF)), None)


def validate_thresholds(data: Mapping[str, Any], where: str = "thresholds") -> None:
    """Every shipped check keeps each of its keys as a number; model overrides name known checks and keys;
    expected failures name a known check (and stream) with a non-empty reason. A check of the user's own is
    known once the file declares its table (``[my_check]``, possibly empty)."""
    defaults = shipped()
    checks = {name for name, table in defaults.items() if name != "models"} | {name for name, table in data.items() if name != "models"}
    checks.add("matches_baseline")
    _refuse_non_finite(data, where)
    known = [name for name in defaults if name != "models"] + ["matches_baseline", "models", EXPECTED_FAILURES]
    for name, table in data.items():
        if name != "models" and not isinstance(table, dict):
            raise OptionError(f"{where}: '{name}' must be a table [{name}] of thresholds; got {table!r}")
        if name not in known and (near := _misspelled(name, known)):
            raise OptionError(
                f"{where}: [{name}] is not a shipped check; did you mean [{near}]? A check of your own needs a name "
                "that is not a near miss of a shipped one"
            )
    for name, table_defaults in defaults.items():
        if name == "models":
            continue
        _check_table(data.get(name), table_defaults, f"{where}: [{name}]", required=True)
    _check_tolerances(data.get("matches_baseline"), f"{where}: [matches_baseline]")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise OptionError(f"{where}: 'models' must hold tables [models.<model>.<check>]; got {models!r}")
    for model, tables in models.items():
        if not isinstance(tables, dict):
            raise OptionError(f"{where}: [models.{model}] must hold tables; got {tables!r}")
        for check, table in tables.items():
            context = f"{where}: [models.{model}.{check}]"
            if check == EXPECTED_FAILURES:
                _check_expected_failures(table, checks, context)
            elif check == "matches_baseline":
                _check_tolerances(table, context)
            elif check not in checks:
                raise OptionError(f"{context}: unknown check '{check}'; known: {', '.join(sorted(checks))} (declare a check of your own with a [{check}] table)")
            else:
                _check_table(table, defaults.get(check, data.get(check, {})), context, required=False)


def _refuse_non_finite(data: Mapping[str, Any], where: str, path: str = "") -> None:
    """No nan or inf anywhere, a user check's own table and tolerances included (TOML allows both): every
    comparison with nan is false, so a nan threshold silently disables its check."""
    for key, value in data.items():
        name = f"{path}.{key}" if path else key
        if isinstance(value, Mapping):
            _refuse_non_finite(value, where, name)
        elif isinstance(value, float) and not math.isfinite(value):
            raise OptionError(f"{where}: {name} = {value!r} must be a finite number: a comparison with {value!r} would disable the check")


def _check_table(table: Any, defaults: Mapping[str, Any], context: str, *, required: bool) -> None:
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise OptionError(f"{context} must be a table; got {table!r}")
    for key, default in defaults.items():
        if key not in table:
            if required and _is_number(default):
                raise OptionError(f"{context} lacks '{key}' (the shipped value is {key} = {default})")
            continue
        if _is_number(default) and not _is_number(table[key]):
            raise OptionError(f"{context}: {key} = {table[key]!r} must be a number (like the shipped {default})")
    if defaults:  # a shipped check: every key must be one it reads
        unknown = sorted(set(table) - set(defaults) - {"tolerance"})
        if unknown:
            raise OptionError(f"{context}: unknown key(s) {', '.join(unknown)}; this check reads {', '.join(defaults)}")


def _check_tolerances(table: Any, context: str) -> None:
    """The baseline check's ``tolerance`` overrides parse (read by :func:`geomcheck.gate.drift.tolerances_from_config`)."""
    if table is None:
        return
    if not isinstance(table, dict) or set(table) - {"tolerance"}:
        raise OptionError(f"{context} holds only a [tolerance] table of per-statistic rel, abs and z; got {table!r}")
    from geomcheck.gate.drift import tolerances_from_config  # numpy, no torch

    try:
        tolerances_from_config(table)
    except (ValueError, TypeError) as exc:
        raise OptionError(f"{context}: {exc}") from exc


def _check_expected_failures(table: Any, checks: set[str], context: str) -> None:
    if not isinstance(table, dict):
        raise OptionError(f"{context} must be a table of \"<check>\" or \"<check>[<stream>]\" = \"reason\"")
    for entry, reason in table.items():
        match = ENTRY_PATTERN.match(entry)
        if not match:
            raise OptionError(f"{context}: '{entry}' is not \"<check>\" or \"<check>[<stream>]\"")
        check, stream = match.group("check"), match.group("stream")
        if check not in checks:
            raise OptionError(f"{context}: '{entry}' names unknown check '{check}'; known: {', '.join(sorted(checks))}")
        if stream is not None and stream not in STREAMS:
            raise OptionError(f"{context}: '{entry}' names unknown stream '{stream}'; streams are {', '.join(STREAMS)}")
        if not isinstance(reason, str) or not reason.strip():
            raise OptionError(f"{context}: '{entry}' needs a reason (a non-empty string saying what was measured); got {reason!r}")
