"""The run's results file (``--geomcheck-json PATH``): every check's verdict and key figure, and each model's
identity and per-layer statistics with intervals, in the baselines' shape, as pytest-benchmark's
``--benchmark-json`` or lm-eval's ``--output_path`` give theirs. Written atomically, so a reader (a CI step,
a dashboard) never sees half a file."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import geomcheck
from geomcheck import atomic
from geomcheck.gate.baseline import _plain, baseline_payload

if TYPE_CHECKING:
    from geomcheck.report.ci import CheckResult
    from geomcheck.report.across_models import ModelDigest

FORMAT = 1


def payload(checks: Mapping[str, CheckResult], digests: Iterable[ModelDigest], renderings: Mapping[str, str]) -> dict[str, Any]:
    """What ran (checks by node id, with outcome and figure) and what was measured (per model)."""
    models = {}
    for digest in digests:
        measured = baseline_payload(digest.geometry, digest.identity) if digest.geometry is not None else {"meta": _plain(dict(digest.identity))}
        models[digest.model] = {
            "identity": measured["meta"],
            "rendering": renderings.get(digest.model),
            "statistics": measured.get("statistics", {}),
            "overlap_ratios": dict(digest.overlap_ratios),
        }
    return {
        "format": FORMAT,
        "geomcheck": geomcheck.__version__,
        "checks": [{"id": nodeid, **asdict(result)} for nodeid, result in checks.items()],
        "models": models,
    }


def _finite(value: Any) -> Any:
    """JSON has no nan or inf: they are written as null, as an undefined interval is."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """``data`` as strict JSON (no NaN) into ``path``, atomically; its folder is created."""
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(_finite(_plain(dict(data))), indent=1, sort_keys=True, allow_nan=False) + "\n")
