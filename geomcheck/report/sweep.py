"""Sweeps: several checkpoints of one model in one session (``--geomcheck-sweep``), read as a trajectory.

Each checkpoint is a model of its own (``--model ORG/NAME@step1000 --model ORG/NAME@step2000 …`` or several
local directories), with its own identity, cache entries and checks. In the order given, the trajectory
shows each checkpoint's key figures (the fitted growth of the mean variance, the lowest cosine of the set
means, hypothesis 4's overlap ratio) and its **drift from the sweep's reference**, the first checkpoint
given: every per-layer statistic compared by the gate's own rule (:func:`geomcheck.gate.drift.compare_payloads`),
under its unpaired rule, counted and scored in tolerances. The unpaired tolerance is fixed by the reference
(``max(abs, rel·|ref|, 4·SE)``, SE from the reference's bootstrap over prompts), so the score is a yardstick
that grows with the size of the change. The gate's paired rule is not: its SE is the spread of the paired
difference, which grows with the change itself, so it tells a consistent change from noise, not a larger
change from a smaller one (seen 2026-12-03 on tests/test_sweep.py's tiny models: one layer's MLP scaled
×1.2 and ×1.5 both scored ~0.7 paired, 0.027 and 0.068 unpaired).

Baselines: the gate (``test_matches_baseline``) keeps its own rule per checkpoint. Local checkpoints of
distinct folder names each have their baseline; a sweep gated against one reference passes
``--baseline REF`` (read, never written). Hub revisions of one repository share its baseline folder, so
without ``--baseline`` they stay refused at start-up, as two same-named folders are.

Pure numpy over :class:`geomcheck.report.across_models.ModelDigest` (what crosses from xdist workers): no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geomcheck.gate.baseline import baseline_payload
from geomcheck.report.across_models import ModelDigest, main_stream
from geomcheck.gate.drift import Tolerance, compare_payloads
from geomcheck.run.fingerprint import short

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SETS = ("harmful", "harmless")


@dataclass(frozen=True)
class Point:
    """One checkpoint of the trajectory: its key figures and its drift from the reference."""

    model: str
    weights: str  # short digest of the checkpoint's weights
    growth: dict[str, float]  # prompt set -> fitted growth ×/layer of the main stream's mean variance
    lowest_cosine: float
    overlap_ratios: dict[str, float] = field(default_factory=dict)  # writer kind -> H4 mean overlap ÷ chance
    drifted: int = 0  # values beyond tolerance against the reference
    compared: int = 0
    worst: float = 0.0  # the largest |Δ| / tolerance: what the gate's verdict reads
    mean: float = 0.0  # the mean |Δ| / tolerance over the values (finite ones): how far the checkpoint moved as a whole


def trajectory(digests: Sequence[ModelDigest], tolerances: Mapping[str, Tolerance] | None = None) -> list[Point]:
    """The sweep's checkpoints in the order given, each scored against the first (the reference); those
    whose statistics were not computed in this session are left out."""
    measured = [d for d in digests if d.geometry is not None]
    if not measured:
        return []
    reference = baseline_payload(measured[0].geometry, measured[0].identity)
    points = []
    for digest in measured:
        geometry = digest.geometry
        assert geometry is not None
        stream = main_stream(geometry)
        comparison = compare_payloads(reference, baseline_payload(geometry, digest.identity), tolerances)
        cosine = np.asarray(geometry.curve(stream, "cosine"), dtype=np.float64)
        points.append(Point(
            model=digest.model,
            weights=short(digest.identity.get("weights")),
            growth={which: float(geometry.values[f"{stream}/growth_rate/{which}"]) for which in SETS},
            lowest_cosine=float(np.nanmin(cosine)),
            overlap_ratios=dict(digest.overlap_ratios),
            drifted=len(comparison.drifts),
            compared=len(comparison.scored),
            worst=max((d.score for d in comparison.scored), default=0.0),
            mean=float(np.mean(finite)) if (finite := [d.score for d in comparison.scored if np.isfinite(d.score)]) else 0.0,
        ))
    return points


def table_lines(points: Sequence[Point]) -> list[str]:
    """The sweep's summary table, one row per checkpoint in the order given."""
    if not points:
        return []
    reference = points[0].model
    rows = [("checkpoint", "weights", "growth ×/layer (harmful | harmless)", "lowest cosine", "H4 overlap ÷ chance", f"drift from {reference}")]
    for point in points:
        h4 = ", ".join(f"{kind} {ratio:.2f}×" for kind, ratio in point.overlap_ratios.items()) or "–"
        rates = " | ".join(f"{point.growth[which]:.3f}" for which in SETS)
        drift = f"{point.drifted} of {point.compared} values beyond tolerance, mean {point.mean:.3g}×, worst {point.worst:.3g}×"
        rows.append((point.model, point.weights, rates, f"{point.lowest_cosine:.4f}", h4, drift))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["sweep (in the order given; drift in the reference's unpaired tolerances):"] + [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    ]


def sweep_figure(points: Sequence[Point]) -> Figure:
    """Four panels against the checkpoint, in the order given: growth of the mean variance, the lowest
    cosine, H4's overlap ratio, and the drift from the reference (worst score and values beyond tolerance)."""
    from geomcheck.report.figures import _new_figure

    x = np.arange(len(points))
    fig = _new_figure(figsize=(8, 10.5))
    growth, cosine, overlap, drift = fig.subplots(4, 1, sharex=True)
    for index, which in enumerate(SETS):
        growth.plot(x, [p.growth[which] for p in points], marker="o", color=f"C{index}", label=which)
    growth.set_title("fitted growth of the mean variance (×/layer)")
    cosine.plot(x, [p.lowest_cosine for p in points], marker="o", color="C2")
    cosine.set_title("lowest cosine of the harmful and harmless means")
    for index, kind in enumerate(sorted({k for p in points for k in p.overlap_ratios})):
        overlap.plot(x, [p.overlap_ratios.get(kind, np.nan) for p in points], marker="o", color=f"C{index + 3}", label=kind)
    overlap.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    overlap.set_title("H4: mean overlap of top-k writing directions ÷ chance")
    drift.plot(x, [max(p.worst, 1e-3) for p in points], marker="o", color="C5", label="worst |Δ| / tolerance")
    drift.plot(x, [max(p.mean, 1e-3) for p in points], marker="s", color="C6", label="mean |Δ| / tolerance")
    drift.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    drift.set_yscale("log")
    share = drift.twinx()
    share.bar(x, [p.drifted / p.compared if p.compared else 0.0 for p in points], width=0.3, alpha=0.3, color="C5", label="share beyond tolerance")
    share.set_ylim(0, 1)
    share.set_ylabel("share of values beyond tolerance")
    drift.set_title(f"drift from {points[0].model} (the reference; 1 = the tolerance)")
    for ax in (growth, cosine, overlap, drift):
        ax.grid(True, alpha=0.3)
    for ax in (growth, overlap, drift):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    drift.set_xticks(x, [p.model for p in points], rotation=20, ha="right", fontsize="small")
    drift.set_xlabel("checkpoint (in the order given)")
    fig.suptitle(f"sweep of {len(points)} checkpoints", fontsize="medium")
    return fig


def write_sweep(points: Sequence[Point], out_dir: Path) -> Path:
    """``<out_dir>/sweep.png``, redrawn only when the trajectory changed."""
    from geomcheck.report.figures import _drawn_once, content_key

    key = content_key(Path(__file__).read_bytes(), [repr(point) for point in points])  # this module draws it: its code too
    return _drawn_once(Path(out_dir) / "sweep.png", key, lambda: sweep_figure(points))
