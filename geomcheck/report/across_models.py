"""Several models side by side: what each run measured, reduced to a digest that crosses process
boundaries (pytest-xdist workers → controller), and the compact per-model table of the terminal summary.

Pure numpy and plain Python: a digest travels as lists, strings and numbers only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geomcheck.stats.geometry import Geometry, geometry_from_arrays, geometry_to_arrays
from geomcheck.stats.weights import summarize_overlap

Wire = dict[str, Any]  # what execnet can carry: dicts, lists, str, int, float, None


@dataclass
class ModelDigest:
    """One model's measured geometry and H4 overlap ratios, and the identity of what was measured."""

    model: str  # display name
    geometry: Geometry | None
    overlap_ratios: dict[str, float] = field(default_factory=dict)  # writer kind -> mean overlap ÷ chance
    identity: dict[str, Any] = field(default_factory=dict)


def overlap_ratios(matrices: dict[str, np.ndarray], k: int, d_model: int) -> dict[str, float]:
    """Hypothesis 4's figure per writer kind: mean off-diagonal overlap as a multiple of chance (k/d)."""
    return {kind: summarize_overlap(matrix, k, d_model).ratio for kind, matrix in matrices.items()}


def to_wire(digest: ModelDigest) -> Wire:
    arrays = geometry_to_arrays(digest.geometry) if digest.geometry is not None else None
    return {
        "model": digest.model,
        "geometry": None if arrays is None else {k: [str(a.dtype), a.tolist()] for k, a in arrays.items()},
        "overlap_ratios": dict(digest.overlap_ratios),
        "identity": dict(digest.identity),
    }


def from_wire(wire: Wire) -> ModelDigest:
    arrays = wire["geometry"]
    geometry = None if arrays is None else geometry_from_arrays({k: np.asarray(v, dtype=dt) for k, (dt, v) in arrays.items()})
    return ModelDigest(wire["model"], geometry, dict(wire["overlap_ratios"]), dict(wire["identity"]))


def main_stream(geometry: Geometry) -> str:
    """The stream the table reads: ``mid`` (the note's main curve) when captured."""
    return "mid" if "mid" in geometry.streams else geometry.streams[0]


def table_lines(digests: list[ModelDigest]) -> list[str]:
    """Per model: layers, fitted growth rate of the mean variance (×/layer, harmful | harmless), the layer
    where the cosine of the means is lowest, and H4's overlap ratio per writer kind."""
    rows = [("model", "layers", "stream", "growth ×/layer (harmful | harmless)", "lowest cosine", "H4 overlap ÷ chance")]
    for digest in digests:
        geometry = digest.geometry
        h4 = ", ".join(f"{kind} {ratio:.1f}×" for kind, ratio in digest.overlap_ratios.items()) or "–"
        if geometry is None:
            rows.append((digest.model, "–", "–", "–", "–", h4))
            continue
        stream = main_stream(geometry)
        rates = " | ".join(f"{float(geometry.values[f'{stream}/growth_rate/{which}']):.3f}" for which in ("harmful", "harmless"))
        cosine = np.asarray(geometry.curve(stream, "cosine"), dtype=np.float64)
        lowest = int(np.nanargmin(cosine))
        rows.append((digest.model, str(geometry.n_layers), stream, rates, f"{cosine[lowest]:.3f} at layer {lowest}", h4))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
