"""Check thresholds: the shipped defaults, then the project's own, each layer merged table by table.

Order: ``geomcheck/data/thresholds.toml``, then ``[tool.geomcheck.thresholds]`` in the project's
``pyproject.toml`` (see :func:`project_file`), then ``--thresholds FILE``. A later layer adds checks and models and
overrides single values; it never drops what an earlier one defined, so a new check's thresholds live in the
user's project and the shipped checks keep theirs.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any


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
            from geomcheck.options import OptionError  # options imports this module

            name = ".".join(("tool", "geomcheck", "thresholds")[:depth])
            raise OptionError(
                f"{path}: {name} = {table!r} must be a table ([{name}]) of check thresholds, "
                "laid out like the shipped thresholds.toml"
            )
    return dict(table)


def load(pyproject: Path | None, path: str | None = None) -> dict[str, Any]:
    """The session's thresholds: shipped, then the project's ``pyproject``, then ``path`` (``--thresholds``);
    the merged result is validated, naming the layers it came from."""
    from geomcheck.options import read_thresholds_file, validate_thresholds

    thresholds, sources = merge(shipped(), from_pyproject(pyproject)), ["shipped thresholds.toml"]
    if pyproject is not None:
        sources.append(f"[tool.geomcheck.thresholds] of {pyproject}")
    if path:
        thresholds = merge(thresholds, read_thresholds_file(path))
        sources.append(f"--thresholds {path}")
    validate_thresholds(thresholds, "thresholds (" + " + ".join(sources) + ")")
    return thresholds
