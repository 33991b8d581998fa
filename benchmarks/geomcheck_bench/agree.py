"""Correctness checks: the methods must read the same numbers, or their times compare different work.

The unique-token floor must reproduce the naive floor's last hidden state (exact for a causal decoder, up
to float rounding); every peer's streams must match geomcheck's samples.
"""

from __future__ import annotations

import numpy as np

from geomcheck_bench.peers import STREAMS, Readings

FLOAT32_ATOL = 1e-4  # unique vs naive, float32: absolute
HALF_RTOL = 2e-2  # unique vs naive, half precision: relative to the largest value


def max_abs_diff(a: Readings, b: Readings, key: str) -> tuple[float, float]:
    """Largest |a - b| over every set, and the largest |a| (the scale it compares against)."""
    diff = max(float(np.max(np.abs(a[s][key].astype(np.float64) - b[s][key]))) for s in a)
    scale = max(float(np.max(np.abs(a[s][key]))) for s in a)
    return diff, scale


def agreement(readings: dict[str, Readings], half_precision: bool) -> dict[str, float | bool]:
    """Named check values; ``unique_vs_naive_ok`` is False when the unique-token floor is wrong."""
    out: dict[str, float | bool] = {}
    if "naive" in readings and "unique" in readings:
        diff, scale = max_abs_diff(readings["naive"], readings["unique"], "final")
        out["unique_vs_naive_max_abs_diff"] = diff
        out["unique_vs_naive_ok"] = diff <= HALF_RTOL * scale if half_precision else diff <= FLOAT32_ATOL
    ref = readings.get("geomcheck")
    if ref:
        for method, got in readings.items():
            if method in ("naive", "unique", "geomcheck"):
                continue
            for stream in STREAMS:
                if stream in next(iter(got.values())):
                    diff, scale = max_abs_diff(ref, got, stream)
                    out[f"{method}_vs_geomcheck_{stream}_max_rel_diff"] = diff / max(scale, 1e-12)
    return out
