"""The research note's figures, drawn from a Geometry and a WeightOverlap, for a person to look at.

The checks decide pass or fail; these pictures show *why*, and, with a baseline overlaid, what moved.
Each file is drawn once: it carries the digest of what it shows (the data, the title, this module's code and
matplotlib's version) in a PNG text field, and a write whose digest matches the file's is skipped, as a
cache entry is reused, so a fully cached re-run draws nothing.
Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas rather than pyplot, so drawing needs
no display, touches no global figure registry, and is safe inside a pytest run.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import matplotlib
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from geomcheck import atomic
from geomcheck.stats.geometry import SETS, Geometry, geometry_to_arrays
from geomcheck.stats.weights import random_overlap, summarize_overlap

if TYPE_CHECKING:  # the pipeline pulls in torch, the baseline syrupy; drawing a figure needs neither
    from geomcheck.gate.drift import DriftMatrix
    from geomcheck.run.pipeline import WeightOverlap

PANELS = (
    ("cosine", "cosine of harmful/harmless means", "linear"),
    ("var_mean", "mean of per-feature variance", "log"),
    ("var_max", "max of per-feature variance", "log"),
)
# The research note's convention: colour is the prompt set, line style the stream ("two curves of the same
# colour are the two residual streams"). Cosine compares the two sets, so it has a colour of its own.
SET_COLOURS = {"harmful": "#c0392b", "harmless": "#2471a3"}
COSINE_COLOUR = "#6c3483"
STREAM_STYLES = {"pre": "--", "mid": "-", "post": ":"}
BASELINE_COLOUR = "0.55"
BASELINE_PREFIX = "baseline "
BAND_ALPHA = 0.12  # six overlapping bands must stay see-through
PNG_METADATA = {"Software": None}  # no version stamp: the same figure is the same bytes on any matplotlib
KEY_FIELD = "geomcheck-content"  # PNG text field: the digest of what the figure shows (see _drawn_once)
DRIFT_CLIP = 3.0  # the drift map's colour saturates at this many tolerances
CHANGE_TITLE = "change from baseline, % (var_mean solid, var_max thin)"
DRIFT_MARK = {"marker": "o", "markersize": 7, "markerfacecolor": "none", "markeredgecolor": "black", "linestyle": "none"}


def _new_figure(**kwargs: object) -> Figure:
    """A figure bound to an Agg canvas: renders to files only, never to a screen."""
    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _positive(values: np.ndarray | float) -> np.ndarray:
    """Values with zero or negative entries as nan, which a log axis cannot show (layer-0 ``pre`` variance is 0)."""
    array = np.asarray(values, dtype=np.float64)
    return np.where(array > 0, array, np.nan)


def _series(statistic: str) -> list[tuple[str, str, str]]:
    """(key statistic, set label, colour) of every curve a panel draws per stream: one for the cosine, one per set."""
    if statistic == "cosine":
        return [("cosine", "", COSINE_COLOUR)]
    return [(f"{statistic}/{which}", which, SET_COLOURS[which]) for which in SETS]


def _style(stream: str) -> str:
    return STREAM_STYLES.get(stream, "-.")


def _label(stream: str, which: str) -> str:
    return f"{stream} {which}".strip()


def _band(ax: Axes, layers: np.ndarray, geometry: Geometry, key: str, log: bool, colour: str, alpha: float) -> None:
    if key in geometry.intervals:
        interval = geometry.intervals[key]
        low, high = (_positive(v) if log else np.asarray(v, dtype=np.float64) for v in (interval.low, interval.high))
        ax.fill_between(layers, low, high, color=colour, alpha=alpha, linewidth=0)


def _draw(ax: Axes, geometry: Geometry, statistic: str, streams: Sequence[str], log: bool, baseline: bool, bands: bool = True) -> None:
    """One panel's curves of ``streams``: coloured (with their bands) for a run, thin grey with grey bands for a baseline."""
    layers = np.arange(geometry.n_layers)
    for stream in streams:
        for key, which, colour in _series(statistic):
            y = _positive(geometry.curve(stream, key)) if log else np.asarray(geometry.curve(stream, key), dtype=np.float64)
            label = _label(stream, which)
            if baseline:
                ax.plot(layers, y, color=BASELINE_COLOUR, linewidth=0.9, label=BASELINE_PREFIX + label)
                _band(ax, layers, geometry, f"{stream}/{key}", log, BASELINE_COLOUR, 0.3)
            else:
                ax.plot(layers, y, color=colour, linestyle=_style(stream), linewidth=1.6, label=label)
                _mark_massive(ax, geometry, stream, key, layers, y, colour)
                if bands:
                    _band(ax, layers, geometry, f"{stream}/{key}", log, colour, BAND_ALPHA)


def _mark_drift(ax: Axes, geometry: Geometry, statistic: str, stream: str, drift: DriftMatrix, log: bool) -> None:
    """Circle the layers where a curve of this panel left its tolerance."""
    for key, _, _ in _series(statistic):
        full = f"{stream}/{key}"
        if full not in drift.rows:
            continue
        layers = np.flatnonzero(drift.exceeded[drift.rows.index(full)])
        layers = layers[layers < geometry.n_layers]
        y = np.asarray(geometry.curve(stream, key), dtype=np.float64)[layers]
        ax.plot(layers, _positive(y) if log else y, label=f"beyond tolerance {full}", **DRIFT_MARK)


def _draw_change(ax: Axes, geometry: Geometry, baseline: Geometry, stream: str) -> None:
    """The relative change per layer of each set's var_mean (and, thin, var_max) from the baseline, on a
    linear axis: a step of a few percent that a log axis spanning decades hides is plain here."""
    layers = np.arange(min(geometry.n_layers, baseline.n_layers))
    for statistic, width in (("var_mean", 1.6), ("var_max", 0.8)):
        for key, which, colour in _series(statistic):
            before = np.asarray(baseline.curve(stream, key), dtype=np.float64)[layers]
            now = np.asarray(geometry.curve(stream, key), dtype=np.float64)[layers]
            with np.errstate(divide="ignore", invalid="ignore"):
                change = np.where(before > 0, 100.0 * (now - before) / before, np.nan)
            ax.plot(layers, change, color=colour, linestyle=_style(stream), linewidth=width, label=f"change {_label(stream, which)} {statistic}")
    ax.axhline(0.0, color=BASELINE_COLOUR, linewidth=0.9)


def _legend(fig: Figure, streams: Sequence[str], extra: Sequence[Artist] = ()) -> None:
    """One legend for the figure, below the panels: colours name the sets, line styles the streams."""
    handles: list[Artist] = [Line2D([], [], color=COSINE_COLOUR, label="cosine (harmful vs harmless)")]
    handles += [Line2D([], [], color=colour, label=which) for which, colour in SET_COLOURS.items()]
    handles += [Line2D([], [], color="black", linestyle=_style(stream), label=stream) for stream in streams]
    handles += list(extra)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize="small", frameon=False)


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


def _draw_fits(ax: Axes, geometry: Geometry, stream: str) -> None:
    """Hypothesis 1's two fits to ``stream``'s mean variance, over the layers its check keeps (the shipped
    ``degenerate_jump``): thin solid the exponential, dash-dot the power law, in each set's colour, named
    in a note inside the panel (lines labelled ``_fit …`` stay out of the figure's one legend)."""
    from geomcheck import thresholds
    from geomcheck.stats.trends import growth_shape

    jump = thresholds.shipped()["variance_grows"]["degenerate_jump"]
    notes: list[str] = []
    for which, colour in SET_COLOURS.items():
        try:
            shape = growth_shape(geometry.curve(stream, "var_mean", which), jump)
        except ValueError:  # fewer than 3 usable layers: nothing to fit
            continue
        layers = np.arange(geometry.n_layers)[np.isfinite(shape.exponential.residuals)].astype(np.float64)
        exponential, power = shape.curves(layers)
        ax.plot(layers, exponential, "-", color=colour, linewidth=0.8, alpha=0.7, label=f"_fit exponential {stream} {which}")
        ax.plot(layers, power, "-.", color=colour, linewidth=0.8, alpha=0.7, label=f"_fit power law {stream} {which}")
        notes.append(f"{stream} {which}: exp ×{shape.exponential.rate:.3g}/layer (thin) vs (l+1)^{shape.power:.2f} (dash-dot), ΔAIC {shape.delta_aic:+.1f}")
    if notes:
        ax.text(0.01, 0.98, "\n".join(notes), transform=ax.transAxes, fontsize="x-small", va="top")


def _layer_axis(ax: Axes) -> None:
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers


def geometry_figure(geometry: Geometry, title: str, baseline: Geometry | None = None, drift: DriftMatrix | None = None) -> Figure:
    """The note's three stacked panels (cosine, mean variance, max variance) over layers, 95% bands shaded:
    colour is the prompt set, line style the stream (solid ``mid``, dashed ``pre``, dotted ``post``).

    With ``baseline``, one column per stream, so each panel holds only one stream's curves (labelled
    ``"<stream> <set>"``) over its baseline's in thin grey with the baseline's band (``"baseline <stream>
    <set>"``): a regression is a coloured line leaving the grey band. A fourth row shows the relative change
    of the variances per layer on a linear axis, where a step of a few percent is visible. ``drift``
    circles the values beyond tolerance.
    """
    if baseline is None:
        columns: list[tuple[str, ...]] = [tuple(geometry.streams)]
    else:
        columns = [(stream,) for stream in geometry.streams]
    fig = _new_figure(figsize=(7.5, 10) if baseline is None else (3.6 * len(columns) + 1, 12))
    axes = fig.subplots(len(PANELS) + (baseline is not None), len(columns), sharex=True, squeeze=False)
    for row, (statistic, panel_title, scale) in enumerate(PANELS):
        for column, streams in enumerate(columns):
            ax = axes[row, column]
            ax.set_yscale(scale)
            log = scale == "log"
            if baseline is not None and streams[0] in baseline.streams:  # a stream the baseline lacks is drawn alone
                _draw(ax, baseline, statistic, streams, log, baseline=True)
            _draw(ax, geometry, statistic, streams, log, baseline=False, bands=baseline is None)
            if drift is not None:
                _mark_drift(ax, geometry, statistic, streams[0], drift, log)
            if statistic == "var_mean" and baseline is None and "mid" in streams:
                _draw_fits(ax, geometry, "mid")
            ax.set_title(panel_title if baseline is None else f"{streams[0]}: {panel_title}", fontsize="medium")
            ax.grid(True, which="major", alpha=0.3)
    if baseline is not None:
        for column, (stream,) in enumerate(columns):
            ax = axes[len(PANELS), column]
            if stream in baseline.streams:
                _draw_change(ax, geometry, baseline, stream)
            ax.set_title(f"{stream}: {CHANGE_TITLE}", fontsize="medium")
            ax.grid(True, which="major", alpha=0.3)
    for ax in axes[-1]:
        _layer_axis(ax)
    extra: list[Artist] = []
    if baseline is not None:
        extra.append(Patch(facecolor=BASELINE_COLOUR, alpha=0.5, edgecolor=BASELINE_COLOUR, label="baseline (95% interval)"))
    if drift is not None and drift.exceeded.any():
        extra.append(Line2D([], [], label="beyond tolerance", **DRIFT_MARK))
    _legend(fig, geometry.streams, extra)
    fig.suptitle(title)
    return fig


def _far_mean(matrix: np.ndarray) -> float:
    """Mean overlap of layers at least two apart: shared directions beyond neighbours (nan under 3 layers)."""
    distance = np.abs(np.subtract.outer(np.arange(len(matrix)), np.arange(len(matrix))))
    far = matrix[distance >= 2]
    return float(far.mean()) if far.size else math.nan


def overlap_figure(weights: WeightOverlap, title: str) -> Figure:
    """One layers × layers heatmap per writer kind, diagonal masked (a layer with itself is 1 by definition),
    on a shared scale set by the off-diagonal values, with chance k/d marked on the colour bar and the
    adjacent- and far-layer means in each panel's title. Colour well above the chance mark is hypothesis 4's
    shared directions.
    """
    if not weights.matrices:
        raise ValueError("no overlap matrices to draw: the model has no residual-stream writers")
    chance = random_overlap(weights.k, weights.d_model)
    off = [np.asarray(m, dtype=np.float64)[~np.eye(len(m), dtype=bool)] for m in weights.matrices.values()]
    values = np.concatenate([[chance], *off])  # the scale always reaches the chance mark
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1e-6
    cmap = colormaps["viridis"].with_extremes(bad="0.85")
    fig = _new_figure(figsize=(4.5 * len(weights.matrices) + 1.2, 4.8))
    axes = np.atleast_1d(fig.subplots(1, len(weights.matrices)))
    for ax, (kind, matrix) in zip(axes, weights.matrices.items()):
        matrix = np.asarray(matrix, dtype=np.float64)
        masked = np.ma.masked_array(matrix, mask=np.eye(len(matrix), dtype=bool))
        image = ax.imshow(masked, vmin=low, vmax=high, cmap=cmap, interpolation="nearest")
        adjacent = summarize_overlap(matrix, weights.k, weights.d_model).mean_adjacent if len(matrix) > 1 else math.nan
        ax.set_title(f"{kind}\nadjacent layers {adjacent:.3g}, far layers {_far_mean(matrix):.3g}", fontsize="medium")
        _layer_axis(ax)
        ax.set_ylabel("layer")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    bar = fig.colorbar(image, ax=list(axes), label="subspace overlap (diagonal masked)")
    bar.ax.axhline(chance, color="red", linewidth=2)
    chance_axis = bar.ax.secondary_yaxis("left")
    chance_axis.set_yticks([chance], labels=["chance"], color="red", fontsize="small")
    fig.suptitle(f"{title} (chance k/d = {chance:.2g})")
    return fig


def _row_label(key: str) -> str:
    return " · ".join(key.split("/"))


def drift_figure(drift: DriftMatrix, title: str) -> Figure:
    """The drift map: one row per compared statistic (stream × statistic × set), one column per layer,
    coloured by the signed drift in tolerances (red up, blue down, white none; clipped at ±DRIFT_CLIP),
    values beyond tolerance outlined, the first drifting layer marked above the map."""
    if not drift.rows:
        raise ValueError("no compared values to draw: the run and its baseline share no statistic")
    n_rows, n_layers = drift.scores.shape
    fig = _new_figure(figsize=(max(6.0, 0.28 * n_layers + 3.5), max(3.5, 0.32 * n_rows + 2.2)))
    ax = fig.subplots()
    cmap = colormaps["RdBu_r"].with_extremes(bad="0.8")
    image = ax.imshow(
        np.clip(drift.scores, -DRIFT_CLIP, DRIFT_CLIP), vmin=-DRIFT_CLIP, vmax=DRIFT_CLIP, cmap=cmap,
        aspect="auto", interpolation="nearest",
    )
    for row, layer in zip(*np.nonzero(drift.exceeded)):
        ax.add_patch(Rectangle((layer - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.6))
    streams = [key.split("/", 1)[0] for key in drift.rows]
    for row in range(1, n_rows):
        if streams[row] != streams[row - 1]:
            ax.axhline(row - 0.5, color="white", linewidth=3)
    ax.set_yticks(range(n_rows), [_row_label(key) for key in drift.rows], fontsize="small")
    _layer_axis(ax)
    if n_layers <= 48:  # every layer named, so a drifting column reads off directly
        ax.set_xticks(range(n_layers), [str(layer) for layer in range(n_layers)], fontsize="small")
    ax.tick_params(length=0)
    beyond = int(drift.exceeded.sum())
    first = drift.first_layer
    if first is not None:
        ax.annotate(
            f"first drifting layer: {first}", xy=(first, -0.5), xytext=(0, 14), textcoords="offset points",
            ha="center", va="bottom", fontweight="bold", annotation_clip=False,
            arrowprops={"arrowstyle": "-|>", "color": "black"},
        )
        verdict = f"{beyond} of {np.count_nonzero(~np.isnan(drift.scores))} values beyond tolerance (outlined)"
    else:
        worst = np.nanmax(np.abs(drift.scores)) if np.isfinite(drift.scores).any() else 0.0
        verdict = f"every value within tolerance; largest drift {worst:.2g}× tolerance"
    bar = fig.colorbar(image, ax=ax, label=f"(now − baseline) / tolerance, clipped at ±{DRIFT_CLIP:g}", extend="both")
    for edge in (-1.0, 1.0):
        bar.ax.axhline(edge, color="black", linewidth=1)
    fig.suptitle(f"{title}\n{verdict}", fontsize="medium")
    return fig


def save_figure(fig: Figure, path: Path, key: str | None = None) -> Path:
    """Write ``fig`` as a PNG via a temp file and ``os.replace``, so a reader never sees half a file;
    ``key`` (see :func:`_drawn_once`) goes into its text field :data:`KEY_FIELD`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = PNG_METADATA if key is None else {**PNG_METADATA, KEY_FIELD: key}
    with atomic.replacing(path) as temp, open(temp, "wb") as stream:
        fig.savefig(stream, format="png", metadata=metadata)
    return path


@cache
def _code_digest() -> str:
    """This module's source: a change to how figures are drawn redraws every figure."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def content_key(*parts: object) -> str:
    """Digest of what a figure shows: arrays by dtype, shape and bytes, mappings by sorted key, anything
    else by ``repr``; with this module's code and matplotlib's version, which change the pixels too."""
    digest = hashlib.sha256(f"{_code_digest()}|{matplotlib.__version__}".encode())

    def add(part: object) -> None:
        if isinstance(part, np.ndarray):
            array = np.ascontiguousarray(part)
            digest.update(f"|a{array.dtype.str}{array.shape}|".encode())
            digest.update(array.tobytes())
        elif isinstance(part, Mapping):
            for name in sorted(part):
                digest.update(f"|k{name!r}".encode())
                add(part[name])
        elif isinstance(part, (list, tuple)):
            digest.update(f"|l{len(part)}".encode())
            for item in part:
                add(item)
        else:
            digest.update(f"|r{part!r}".encode())

    add(parts)
    return digest.hexdigest()


def stored_key(path: Path) -> str | None:
    """The :data:`KEY_FIELD` of a PNG written by :func:`save_figure`; None for a missing or unreadable file."""
    from PIL import Image, UnidentifiedImageError  # Pillow: a dependency of matplotlib

    try:
        with Image.open(path) as image:
            return image.text.get(KEY_FIELD)  # type: ignore[attr-defined]
    except (OSError, UnidentifiedImageError, AttributeError):
        return None


def _drawn_once(path: Path, key: str, build: Callable[[], Figure]) -> Path:
    """``path``, drawn by ``build`` only when the file does not already show ``key``'s content."""
    if stored_key(path) == key:
        return path
    return save_figure(build(), path, key)


def _geometry_parts(geometry: Geometry | None) -> object:
    return None if geometry is None else geometry_to_arrays(geometry)


def _folder_name(model: str) -> str:
    """A single safe path component for a model name, which may be a hub id or a local path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._") or "model"


def write_geometry(
    model: str, geometry: Geometry, out_dir: Path, baseline: Geometry | None = None, drift: DriftMatrix | None = None
) -> Path:
    """``<out_dir>/<model>/geometry.png``, or ``geometry-vs-baseline.png`` with the baseline overlaid
    (and, with ``drift``, the values beyond tolerance circled)."""
    folder = Path(out_dir) / _folder_name(model)
    if baseline is None:
        title = f"{model}: residual-stream geometry"
        return _drawn_once(folder / "geometry.png", content_key(title, _geometry_parts(geometry)), lambda: geometry_figure(geometry, title))
    title = f"{model}: geometry (colour) vs baseline (grey)"
    key = content_key(title, _geometry_parts(geometry), _geometry_parts(baseline), _drift_parts(drift))
    return _drawn_once(folder / "geometry-vs-baseline.png", key, lambda: geometry_figure(geometry, title, baseline=baseline, drift=drift))


def _drift_parts(drift: DriftMatrix | None) -> object:
    return None if drift is None else (drift.rows, drift.scores, drift.exceeded)


def write_drift_map(model: str, drift: DriftMatrix, out_dir: Path) -> Path:
    """``<out_dir>/<model>/drift-map.png``: where the run left its baseline, statistic by layer."""
    title = f"{model}: drift from baseline"
    return _drawn_once(Path(out_dir) / _folder_name(model) / "drift-map.png", content_key(title, _drift_parts(drift)), lambda: drift_figure(drift, title))


def write_overlap(model: str, weights: WeightOverlap, out_dir: Path) -> Path:
    """``<out_dir>/<model>/weight-overlap.png``: the layers × layers heatmaps."""
    title = f"{model}: overlap of top-{weights.k} written directions across layers"
    key = content_key(title, weights.matrices, weights.k, weights.d_model)
    return _drawn_once(Path(out_dir) / _folder_name(model) / "weight-overlap.png", key, lambda: overlap_figure(weights, title))


MODEL_STREAMS = {"mid": "-", "pre": "--"}  # models.png: the note's two streams, told apart by line style
MODELS_SET = "harmful"  # models.png draws one prompt set, so that colour alone names the model


def _relative_depth(n_layers: int) -> np.ndarray:
    """layer / (layers − 1): models of 6 and 64 layers share one 0–1 axis."""
    return np.arange(n_layers) / max(n_layers - 1, 1)


def models_figure(geometries: dict[str, Geometry], title: str = "models compared") -> Figure:
    """The note's three panels for several models on a relative-depth axis: one colour per model, ``mid``
    solid and ``pre`` dashed (the harmful set's variances), 95% bands shaded."""
    if not geometries:
        raise ValueError("no geometries to compare")
    fig = _new_figure(figsize=(8, 10.5))
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    for ax, (statistic, panel_title, scale) in zip(axes, PANELS):
        log = scale == "log"
        key = statistic if statistic == "cosine" else f"{statistic}/{MODELS_SET}"
        for index, (model, geometry) in enumerate(geometries.items()):
            x = _relative_depth(geometry.n_layers)
            for stream, style in MODEL_STREAMS.items():
                if stream not in geometry.streams:
                    continue
                y = geometry.curve(stream, key)
                ax.plot(x, _positive(y) if log else y, color=f"C{index}", linestyle=style, linewidth=1.6, label=f"{model} {stream}")
                full_key = f"{stream}/{key}"
                if full_key in geometry.intervals:
                    low, high = geometry.intervals[full_key].low, geometry.intervals[full_key].high
                    if log:
                        low, high = _positive(low), _positive(high)
                    ax.fill_between(x, low, high, color=f"C{index}", alpha=BAND_ALPHA, linewidth=0)
        ax.set_yscale(scale)
        ax.set_title(panel_title if statistic == "cosine" else f"{panel_title} ({MODELS_SET} prompts)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small", ncols=2)
    axes[-1].set_xlabel("relative depth: layer / (layers − 1)")
    axes[-1].set_xlim(0, 1)
    fig.suptitle(f"{title}: {', '.join(f'{m} ({g.n_layers} layers)' for m, g in geometries.items())}", fontsize="medium")
    return fig


def write_models(geometries: dict[str, Geometry], out_dir: Path) -> Path:
    """``<out_dir>/models.png``: every model's curves on one relative-depth axis."""
    key = content_key([(model, _geometry_parts(geometry)) for model, geometry in geometries.items()])
    return _drawn_once(Path(out_dir) / "models.png", key, lambda: models_figure(geometries))
