"""The research note's figures, drawn from a Geometry and a WeightOverlap, for a person to look at.

The checks decide pass or fail; these pictures show *why*, and, with a baseline overlaid, what moved.
Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas rather than pyplot, so drawing needs
no display, touches no global figure registry, and is safe inside a pytest run.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from geomcheck.geometry import SETS, Geometry
from geomcheck.weights import random_overlap

if TYPE_CHECKING:  # the pipeline pulls in torch; drawing a figure must not
    from geomcheck.pipeline import WeightOverlap

PANELS = (
    ("cosine", "cosine of harmful/harmless means", "linear"),
    ("var_mean", "mean of per-feature variance", "log"),
    ("var_max", "max of per-feature variance", "log"),
)
LINESTYLES = {"harmful": "-", "harmless": "--"}
BASELINE_PREFIX = "baseline "
BAND_ALPHA = 0.2


def _new_figure(**kwargs: object) -> Figure:
    """A figure bound to an Agg canvas: renders to files only, never to a screen."""
    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _positive(values: np.ndarray | float) -> np.ndarray:
    """Values with zero or negative entries as nan, which a log axis cannot show (layer-0 ``pre`` variance is 0)."""
    array = np.asarray(values, dtype=np.float64)
    return np.where(array > 0, array, np.nan)


def _series(geometry: Geometry, statistic: str) -> list[tuple[str, str, str]]:
    """(stream, key statistic, label suffix) for every line a panel draws: one per stream, or stream × set."""
    if statistic == "cosine":
        return [(stream, "cosine", stream) for stream in geometry.streams]
    return [(stream, f"{statistic}/{which}", f"{stream} {which}") for stream in geometry.streams for which in SETS]


def _draw(ax: Axes, geometry: Geometry, statistic: str, log: bool, baseline: bool) -> None:
    """One panel's lines for one geometry: coloured with bands for the current run, grey for a baseline."""
    layers = np.arange(geometry.n_layers)
    for stream, key, label in _series(geometry, statistic):
        stream_index = geometry.streams.index(stream)
        curve = geometry.curve(stream, key)
        y = _positive(curve) if log else np.asarray(curve, dtype=np.float64)
        style = LINESTYLES[key.rsplit("/", 1)[-1]] if "/" in key else "-"
        if baseline:
            # Shades of grey still tell the baseline's streams apart without competing with the colours.
            shade = str(0.3 + 0.4 * stream_index / max(len(geometry.streams) - 1, 1))
            ax.plot(layers, y, color=shade, linestyle=style, linewidth=1.2, label=BASELINE_PREFIX + label)
            continue
        colour = f"C{stream_index}"
        ax.plot(layers, y, color=colour, linestyle=style, linewidth=1.6, label=label)
        _mark_massive(ax, geometry, stream, key, layers, y, colour)
        full_key = f"{stream}/{key}"
        if full_key in geometry.intervals:
            interval = geometry.intervals[full_key]
            low, high = (_positive(v) if log else np.asarray(v, dtype=np.float64) for v in (interval.low, interval.high))
            ax.fill_between(layers, low, high, color=colour, alpha=BAND_ALPHA, linewidth=0)


MASSIVE_SHARE = 0.5  # one feature holds most of a layer's variance: a "massive activation"


def _mark_massive(ax: Axes, geometry: Geometry, stream: str, key: str, layers: np.ndarray, y: np.ndarray, colour: str) -> None:
    """On the max-variance panel, a triangle at each layer where one feature holds most of the variance:
    there the max is that feature, not the spread of the others."""
    share_key = f"{stream}/top_share/{key.rsplit('/', 1)[-1]}"
    if not key.startswith("var_max/") or share_key not in geometry.values:
        return
    massive = np.asarray(geometry.values[share_key]) > MASSIVE_SHARE
    if not massive.any():
        return
    label = f"one feature > {MASSIVE_SHARE:.0%} of the variance"
    if label in ax.get_legend_handles_labels()[1]:
        label = "_nolegend_"  # one legend entry for all the triangles
    ax.plot(layers[massive], y[massive], linestyle="none", marker="v", color=colour, label=label)


def geometry_figure(geometry: Geometry, title: str, baseline: Geometry | None = None) -> Figure:
    """The note's three stacked panels (cosine, mean variance, max variance) over layers, 95% bands shaded.

    With ``baseline``, its curves are overlaid in grey and labelled ``"baseline <stream> <set>"`` so a
    regression shows as a coloured line leaving its grey twin.
    """
    fig = _new_figure(figsize=(7.5, 10))
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    for ax, (statistic, panel_title, scale) in zip(axes, PANELS):
        ax.set_yscale(scale)
        if baseline is not None:
            _draw(ax, baseline, statistic, log=scale == "log", baseline=True)
        _draw(ax, geometry, statistic, log=scale == "log", baseline=False)
        ax.set_title(panel_title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small", ncols=2 if baseline is not None else 1)
    axes[-1].set_xlabel("layer")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    fig.suptitle(title)
    return fig


def overlap_figure(weights: WeightOverlap, title: str) -> Figure:
    """One layers × layers heatmap per writer kind on a shared 0–1 scale, titled with the chance level k/d.

    Off-diagonal colour well above chance is hypothesis 4's shared directions.
    """
    if not weights.matrices:
        raise ValueError("no overlap matrices to draw: the model has no residual-stream writers")
    chance = random_overlap(weights.k, weights.d_model)
    fig = _new_figure(figsize=(4.5 * len(weights.matrices) + 1, 4.5))
    axes = np.atleast_1d(fig.subplots(1, len(weights.matrices)))
    for ax, (kind, matrix) in zip(axes, weights.matrices.items()):
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        ax.set_title(f"{kind} (chance k/d = {chance:.2g})")
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
    fig.colorbar(image, ax=list(axes), label="subspace overlap")
    fig.suptitle(title)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG via a temp file and ``os.replace``, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            fig.savefig(stream, format="png")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def _folder_name(model: str) -> str:
    """A single safe path component for a model name, which may be a hub id or a local path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._") or "model"


def write_geometry(model: str, geometry: Geometry, out_dir: Path, baseline: Geometry | None = None) -> Path:
    """``<out_dir>/<model>/geometry.png``, or ``geometry-vs-baseline.png`` with the baseline overlaid."""
    folder = Path(out_dir) / _folder_name(model)
    if baseline is None:
        return save_figure(geometry_figure(geometry, f"{model}: residual-stream geometry"), folder / "geometry.png")
    fig = geometry_figure(geometry, f"{model}: geometry vs baseline (grey)", baseline=baseline)
    return save_figure(fig, folder / "geometry-vs-baseline.png")


def write_overlap(model: str, weights: WeightOverlap, out_dir: Path) -> Path:
    """``<out_dir>/<model>/weight-overlap.png``: the layers × layers heatmaps."""
    fig = overlap_figure(weights, f"{model}: overlap of top-{weights.k} written directions across layers")
    return save_figure(fig, Path(out_dir) / _folder_name(model) / "weight-overlap.png")
