"""Check thresholds: the shipped defaults, then the project's own, each layer merged table by table.

Order: ``geomcheck/data/thresholds.toml``, then ``[tool.geomcheck.thresholds]`` in the project's
``pyproject.toml`` (the rootdir's), then ``--thresholds FILE``. A later layer adds checks and models and
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


def from_pyproject(root: Path) -> dict[str, Any]:
    """``[tool.geomcheck.thresholds]`` of ``root/pyproject.toml``; empty when there is none."""
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}
    return tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}).get("geomcheck", {}).get("thresholds", {})


def load(root: Path, path: str | None = None) -> dict[str, Any]:
    """The session's thresholds: shipped, then the project's pyproject, then ``path`` (``--thresholds``)."""
    thresholds = merge(shipped(), from_pyproject(root))
    if path:
        thresholds = merge(thresholds, tomllib.loads(Path(path).read_text(encoding="utf-8")))
    return thresholds
