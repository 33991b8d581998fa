"""geomcheck: a pytest plugin that checks hypotheses about the geometry of a
transformer's residual stream (variance growth with depth, separation of the
``pre`` and ``mid`` streams, falling harmful/harmless cosine, shared weight
directions across layers).

The public face is what a hypothesis author and a user of the gate need; the layers stay in their
subpackages (``run``: prompts → model → samples; ``stats``: samples → numbers; ``gate``: numbers ↔ a
committed baseline; ``report``: numbers → pictures and text). Names other than the errors load on first
use, so that importing the plugin at pytest start-up stays cheap (no numpy, torch or matplotlib).
"""

from __future__ import annotations

import importlib
from typing import Any

from geomcheck.errors import GeomcheckError, GeomcheckWarning, OptionError

__version__ = "0.1.0"  # the one source of the version (pyproject.toml reads it; CHANGELOG.md names it)

STREAMS = ("pre", "mid", "post")  # residual stream before attention, after attention + skip, after the layer
POSITIONS = ("last", "mean")  # the last real token, or the mean over real tokens

_LAZY = {
    "Geometry": "geomcheck.stats.geometry",
    "geometry_from_samples": "geomcheck.stats.geometry",
    "bootstrap_samples": "geomcheck.stats.geometry",
    "Interval": "geomcheck.stats.estimators",
    "Statistic": "geomcheck.stats.vocabulary",
    "RECORDS": "geomcheck.stats.vocabulary",
    "ModelRun": "geomcheck.run.pipeline",
    "RunOptions": "geomcheck.run.pipeline",
    "ModelSpec": "geomcheck.run.registry",
    "resolve": "geomcheck.run.registry",
    "Family": "geomcheck.run.families",
    "check_baseline": "geomcheck.gate.extension",
    "GeometryBaselineExtension": "geomcheck.gate.extension",
    "Tolerance": "geomcheck.gate.drift",
}

__all__ = ["GeomcheckError", "GeomcheckWarning", "OptionError", "POSITIONS", "STREAMS", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """The public names that live in a layer, imported when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module 'geomcheck' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
