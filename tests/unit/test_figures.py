"""Tests of geomcheck.report.figures: the Figure objects are inspected before saving (titles, scales, line
labels and data), and the written files are checked to be complete PNGs with no temp files left."""

import io
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from geomcheck.gate.baseline import baseline_payload
from geomcheck.gate.drift import DriftMatrix, compare_all, drift_matrix
from geomcheck.report.figures import (
    CHANGE_TITLE,
    DRIFT_CLIP,
    PNG_METADATA,
    SET_COLOURS,
    drift_figure,
    geometry_figure,
    overlap_figure,
    save_figure,
    write_drift_map,
    write_geometry,
    write_overlap,
)
from geomcheck.stats.geometry import Geometry, geometry_from_samples
from geomcheck.run.pipeline import WeightOverlap
from geomcheck.stats.weights import overlap_matrix

PROMPTS, LAYERS, FEATURES = 8, 5, 6
STREAMS = ("pre", "mid")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
META = {"model": "synthetic", "dtype": "float32"}
PANEL_TITLES = ["cosine of harmful/harmless means", "mean of per-feature variance", "max of per-feature variance"]


def synthetic_geometry(seed: int = 0, zero_first_pre: bool = False, n_boot: int = 20) -> Geometry:
    """Variance growing with layer, as in the note; optionally a constant (zero-variance) layer-0 ``pre``."""
    rng = np.random.default_rng(seed)
    scale = np.exp(0.5 * np.arange(LAYERS))[None, :, None]
    samples: dict[str, dict[str, np.ndarray]] = {}
    for which, shift in (("harmful", 1.0), ("harmless", -1.0)):
        samples[which] = {}
        for stream in STREAMS:
            x = shift + rng.normal(size=(PROMPTS, LAYERS, FEATURES)) * scale
            if zero_first_pre and stream == "pre":
                x[:, 0, :] = 1.0
            samples[which][stream] = x
    return geometry_from_samples(samples, n_boot=n_boot, seed=seed)


@pytest.fixture(scope="module")
def geometry() -> Geometry:
    return synthetic_geometry(seed=0)


@pytest.fixture(scope="module")
def baseline() -> Geometry:
    return synthetic_geometry(seed=1)


@pytest.fixture(scope="module")
def weights() -> WeightOverlap:
    rng = np.random.default_rng(0)
    d_model, k = 12, 3
    matrices = {}
    for kind in ("attn_out", "mlp_out"):
        bases = [np.linalg.qr(rng.normal(size=(d_model, k)))[0] for _ in range(LAYERS)]
        matrices[kind] = overlap_matrix(bases)
    return WeightOverlap(matrices, k=k, d_model=d_model)


def labels(ax) -> set[str]:
    return {line.get_label() for line in ax.get_lines()}


def line(ax, label: str):
    (match,) = [l for l in ax.get_lines() if l.get_label() == label]
    return match


def test_geometry_figure_has_three_stacked_panels_sharing_the_layer_axis(geometry):
    fig = geometry_figure(geometry, "synthetic")
    axes = fig.axes
    assert isinstance(fig.canvas, FigureCanvasAgg)
    assert [ax.get_title() for ax in axes] == PANEL_TITLES
    assert [ax.get_yscale() for ax in axes] == ["linear", "log", "log"]
    assert axes[-1].get_xlabel() == "layer"
    assert all(axes[0].get_shared_x_axes().joined(axes[0], ax) for ax in axes[1:])
    assert fig.get_suptitle() == "synthetic"
    assert all(ax.get_legend() is None for ax in axes)  # one legend for the figure, outside the panels
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["cosine (harmful vs harmless)", "harmful", "harmless", "pre", "mid"]


def test_colour_is_the_prompt_set_and_line_style_the_stream_as_in_the_note(geometry):
    cosine, var_mean, var_max = geometry_figure(geometry, "synthetic").axes
    assert labels(cosine) == {"pre", "mid"}
    expected = {"pre harmful", "pre harmless", "mid harmful", "mid harmless"}
    fits = {f"_fit {kind} mid {which}" for kind in ("exponential", "power law") for which in ("harmful", "harmless")}
    assert labels(var_mean) == expected | fits  # hypothesis 1's two fits, kept out of the legend
    assert "mid harmful: exp ×" in var_mean.texts[0].get_text() and "ΔAIC" in var_mean.texts[0].get_text()
    assert {label for label in labels(var_max) if not label.startswith(("one feature", "_"))} == expected  # less the marks
    for ax in (var_mean, var_max):
        for which in ("harmful", "harmless"):
            assert line(ax, f"pre {which}").get_color() == line(ax, f"mid {which}").get_color() == SET_COLOURS[which]
            assert line(ax, f"mid {which}").get_linestyle() == "-"
            assert line(ax, f"pre {which}").get_linestyle() == "--"
    assert line(cosine, "mid").get_linestyle() == "-" and line(cosine, "pre").get_linestyle() == "--"
    assert SET_COLOURS["harmful"] != SET_COLOURS["harmless"]


def test_line_data_are_the_geometry_curves(geometry):
    cosine, var_mean, var_max = geometry_figure(geometry, "synthetic").axes
    np.testing.assert_array_equal(line(cosine, "mid").get_xdata(), np.arange(LAYERS))
    np.testing.assert_array_equal(line(cosine, "mid").get_ydata(), geometry.curve("mid", "cosine"))
    np.testing.assert_array_equal(line(var_mean, "pre harmless").get_ydata(), geometry.curve("pre", "var_mean/harmless"))
    np.testing.assert_array_equal(line(var_max, "mid harmful").get_ydata(), geometry.curve("mid", "var_max/harmful"))


def test_bands_are_shaded_only_where_there_are_intervals(geometry):
    with_bands = geometry_figure(geometry, "bootstrapped").axes
    without = geometry_figure(synthetic_geometry(seed=0, n_boot=0), "point values").axes
    assert [len(ax.collections) for ax in with_bands] == [2, 4, 4]
    assert [len(ax.collections) for ax in without] == [0, 0, 0]


def test_the_overlay_has_one_column_per_stream_with_the_baseline_in_thin_grey_and_its_band(geometry, baseline):
    fig = geometry_figure(geometry, "vs baseline", baseline=baseline)
    grid = np.array(fig.axes).reshape(len(PANEL_TITLES) + 1, len(STREAMS))[: len(PANEL_TITLES)]  # the last row: change
    assert [ax.get_title() for ax in grid[:, 1]] == [f"mid: {title}" for title in PANEL_TITLES]
    assert labels(grid[0, 0]) == {"pre", "baseline pre"}
    for column, stream in enumerate(STREAMS):  # each panel holds one stream's curves and its baseline's
        assert labels(grid[1, column]) == {f"{prefix}{stream} {w}" for prefix in ("", "baseline ") for w in ("harmful", "harmless")}
    var_mean = grid[1, 1]
    overlay = line(var_mean, "baseline mid harmful")
    np.testing.assert_array_equal(overlay.get_ydata(), baseline.curve("mid", "var_mean/harmful"))
    red, green, blue = to_rgb(overlay.get_color())
    assert red == green == blue  # grey
    assert overlay.get_linewidth() < line(var_mean, "mid harmful").get_linewidth()
    np.testing.assert_array_equal(line(var_mean, "mid harmful").get_ydata(), geometry.curve("mid", "var_mean/harmful"))
    # the bands are the baseline's (grey), one per baseline curve; the run's curves are drawn bare
    assert [len(ax.collections) for ax in grid[:, 1]] == [1, 2, 2]
    (band, _) = var_mean.collections
    assert to_rgb(band.get_facecolor()[0]) == to_rgb(overlay.get_color())
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1


def test_the_overlay_shows_a_few_percent_step_as_a_relative_change_per_layer(geometry, baseline):
    """The last row: (now − baseline) / baseline in %, linear, per stream and set: a step that a log axis
    spanning decades hides is where it is (here: the run's own values against a copy ×1.18 from layer 2)."""
    stepped = Geometry(geometry.streams, {k: np.asarray(v, dtype=np.float64).copy() for k, v in geometry.values.items()}, {}, 0)
    for stream in stepped.streams:
        for which in ("harmful", "harmless"):
            stepped.values[f"{stream}/var_mean/{which}"][2:] *= 1.18
    fig = geometry_figure(stepped, "step", baseline=geometry)
    change_row = np.array(fig.axes).reshape(len(PANEL_TITLES) + 1, len(STREAMS))[-1]
    assert [ax.get_title() for ax in change_row] == [f"{s}: {CHANGE_TITLE}" for s in STREAMS]
    assert all(ax.get_yscale() == "linear" for ax in change_row)
    mid = line(change_row[1], "change mid harmful var_mean").get_ydata()
    np.testing.assert_allclose(mid[2:], 18.0)
    np.testing.assert_allclose(mid[:2][np.isfinite(mid[:2])], 0.0, atol=1e-9)
    assert np.allclose(line(change_row[1], "change mid harmful var_max").get_ydata()[np.isfinite(mid)], 0.0)


def test_the_overlay_circles_exactly_the_values_beyond_tolerance(geometry, baseline):
    drift = drift_matrix(compare_all(baseline_payload(baseline, META), baseline_payload(geometry, META)))
    grid = np.array(geometry_figure(geometry, "vs", baseline=baseline, drift=drift).axes).reshape(len(PANEL_TITLES) + 1, len(STREAMS))
    circled = {}
    for ax in grid.flat:
        for mark in ax.get_lines():
            if mark.get_label().startswith("beyond tolerance "):
                circled[mark.get_label().removeprefix("beyond tolerance ")] = list(mark.get_xdata())
    drawn = ("cosine", "var_mean/", "var_max/")  # the overlay's panels; the drift map shows every statistic
    expected = {key: list(np.flatnonzero(row)) for key, row in zip(drift.rows, drift.exceeded) if key.split("/", 1)[1].startswith(drawn) and "cosine_" not in key}
    assert circled == expected
    assert any(expected.values())  # two different seeds: some values drift


def test_zero_variance_is_masked_on_log_panels_not_plotted():
    geometry = synthetic_geometry(seed=2, zero_first_pre=True)
    assert geometry.curve("pre", "var_mean/harmful")[0] == 0.0
    _, var_mean, var_max = geometry_figure(geometry, "chat template").axes
    for ax, statistic in ((var_mean, "var_mean/harmful"), (var_max, "var_max/harmful")):
        y = np.asarray(line(ax, "pre harmful").get_ydata())
        assert np.isnan(y[0])
        np.testing.assert_array_equal(y[1:], geometry.curve("pre", statistic)[1:])
    low, high = var_mean.get_ylim()
    assert 0 < low < high and np.isfinite(high)


def test_overlap_heatmap_masks_the_diagonal_and_scales_to_the_off_diagonal_values(weights):
    fig = overlap_figure(weights, "overlap")
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert fig.get_suptitle() == "overlap (chance k/d = 0.25)"
    off = np.concatenate([m[~np.eye(LAYERS, dtype=bool)] for m in weights.matrices.values()])
    low, high = min(off.min(), 0.25), max(off.max(), 0.25)
    for ax, (kind, matrix) in zip(heatmaps, weights.matrices.items()):
        (image,) = ax.images
        shown = image.get_array()
        np.testing.assert_array_equal(np.ma.getmaskarray(shown), np.eye(LAYERS, dtype=bool))
        np.testing.assert_array_equal(shown.compressed(), matrix[~np.eye(LAYERS, dtype=bool)])
        assert image.get_clim() == (low, high) and high < 1.0  # the diagonal's 1 does not set the scale
        distance = np.abs(np.subtract.outer(np.arange(LAYERS), np.arange(LAYERS)))
        adjacent, far = matrix[distance == 1].mean(), matrix[distance >= 2].mean()
        assert ax.get_title() == f"{kind}\nadjacent layers {adjacent:.3g}, far layers {far:.3g}"


def test_chance_is_marked_on_the_colour_bar():
    fig = overlap_figure(WeightOverlap({"mlp_out": np.eye(3)}, k=16, d_model=576), "smollm2")
    assert fig.get_suptitle() == "smollm2 (chance k/d = 0.028)"
    colour_bar = next(ax for ax in fig.axes if not ax.images)
    (chance_line,) = colour_bar.get_lines()
    assert chance_line.get_ydata()[0] == 16 / 576
    (secondary,) = colour_bar.child_axes
    assert list(secondary.get_yticks()) == [16 / 576]
    assert [t.get_text() for t in secondary.get_yticklabels()] == ["chance"]


def crafted_drift() -> DriftMatrix:
    """Two rows over four layers: one rise beyond tolerance, one fall beyond it, one within, one missing."""
    scores = np.array([[0.0, 0.5, 2.0, np.inf], [0.0, -7.0, np.nan, -0.9]])
    exceeded = np.array([[False, False, True, True], [False, True, False, False]])
    return DriftMatrix(("mid/cosine", "post/var_mean/harmful"), scores, exceeded)


def test_drift_map_draws_the_clipped_signed_scores_outlines_the_exceeded_and_marks_the_first_layer():
    drift = crafted_drift()
    fig = drift_figure(drift, "drift")
    ax = fig.axes[0]
    (image,) = ax.images
    np.testing.assert_array_equal(image.get_array(), np.clip(drift.scores, -DRIFT_CLIP, DRIFT_CLIP))
    assert image.get_clim() == (-DRIFT_CLIP, DRIFT_CLIP)
    assert image.get_cmap()(0.5)[:3] == pytest.approx((0.97, 0.97, 0.97), abs=0.03)  # zero drift is near white
    outlined = {(int(p.get_x() + 0.5), int(p.get_y() + 0.5)) for p in ax.patches}
    assert outlined == {(2, 0), (3, 0), (1, 1)}  # (layer, row) of exactly the values beyond tolerance
    assert [t.get_text() for t in ax.get_yticklabels()] == ["mid · cosine", "post · var_mean · harmful"]
    (arrow,) = [t for t in ax.texts if t.get_text().startswith("first drifting layer")]
    assert arrow.get_text() == "first drifting layer: 1" and arrow.xy[0] == 1
    assert "3 of 7 values beyond tolerance" in fig.get_suptitle()


def test_a_drift_map_without_drift_says_so_and_marks_no_layer():
    drift = DriftMatrix(("mid/cosine",), np.array([[0.0, -0.25, 0.5]]), np.zeros((1, 3), dtype=bool))
    fig = drift_figure(drift, "pale")
    assert not fig.axes[0].patches and not fig.axes[0].texts
    assert "every value within tolerance; largest drift 0.5× tolerance" in fig.get_suptitle()


def figure_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata=PNG_METADATA)
    return buffer.getvalue()


@pytest.mark.slow
def test_figures_are_deterministic_same_input_same_bytes(tmp_path, geometry, baseline, weights):
    drift = drift_matrix(compare_all(baseline_payload(baseline, META), baseline_payload(geometry, META)))
    builders = [
        lambda: geometry_figure(geometry, "g"),
        lambda: geometry_figure(geometry, "g", baseline=baseline, drift=drift),
        lambda: overlap_figure(weights, "w"),
        lambda: drift_figure(drift, "d"),
    ]
    for build in builders:
        assert figure_bytes(build()) == figure_bytes(build())
    first = write_drift_map("m", drift, tmp_path / "a").read_bytes()
    assert write_drift_map("m", drift, tmp_path / "b").read_bytes() == first
    assert b"matplotlib" not in first  # no version stamp in the PNG's text chunks


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0 and image.shape[2] in (3, 4)


@pytest.mark.slow
def test_written_figures_are_valid_pngs_and_no_temp_files(tmp_path, geometry, baseline, weights):
    model = "HuggingFaceTB/SmolLM2-135M"
    paths = [write_geometry(model, geometry, tmp_path), write_geometry(model, geometry, tmp_path, baseline=baseline),
             write_overlap(model, weights, tmp_path), write_drift_map(model, crafted_drift(), tmp_path)]
    folder = tmp_path / "HuggingFaceTB_SmolLM2-135M"
    names = ["geometry.png", "geometry-vs-baseline.png", "weight-overlap.png", "drift-map.png"]
    assert paths == [folder / name for name in names]
    for path in paths:
        assert_png(path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["HuggingFaceTB_SmolLM2-135M", *(p.name for p in paths)])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["../../escape", "/abs/path/to/model", "we ird:name*?"])
def test_model_names_become_one_folder_inside_out_dir(tmp_path, geometry, model):
    out_dir = tmp_path / "figures"
    path = write_geometry(model, geometry, out_dir)
    assert path.parent.parent == out_dir
    assert path.parent.name not in ("", ".", "..")
    assert path.is_file()


@pytest.mark.slow
def test_save_figure_creates_parents_and_replaces_existing(tmp_path, weights):
    target = tmp_path / "a" / "b" / "overlap.png"
    save_figure(overlap_figure(weights, "first"), target)
    first = target.read_bytes()
    assert save_figure(overlap_figure(weights, "a different title"), target) == target
    assert target.read_bytes() != first
    assert_png(target)
    assert [p.name for p in target.parent.iterdir()] == ["overlap.png"]


@pytest.mark.slow
def test_failed_save_leaves_the_old_file_and_no_temp(tmp_path, weights, monkeypatch):
    target = tmp_path / "overlap.png"
    save_figure(overlap_figure(weights, "good"), target)
    before = target.read_bytes()
    fig = overlap_figure(weights, "broken")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["overlap.png"]


@pytest.mark.slow
def test_layer_ticks_are_whole_numbers(geometry):
    fig = geometry_figure(geometry, "synthetic")
    fig.canvas.draw()
    ticks = fig.axes[-1].get_xticks()
    assert np.array_equal(ticks, np.round(ticks))


def test_layers_where_one_feature_holds_most_variance_are_marked_on_the_max_panel():
    rng = np.random.default_rng(5)
    scale = np.ones((4, 8))
    scale[2:, 3] = 30.0  # feature 3 becomes massive from layer 2 on
    samples = {which: {"mid": scale * rng.normal(size=(40, 4, 8))} for which in ("harmful", "harmless")}
    var_max = geometry_figure(geometry_from_samples(samples, n_boot=0), "massive").axes[2]
    marks = [l for l in var_max.get_lines() if l.get_marker() == "v"]
    assert len(marks) == 2  # one per set
    for mark in marks:
        np.testing.assert_array_equal(mark.get_xdata(), [2, 3])
    assert "one feature > 50% of the variance" in var_max.get_legend_handles_labels()[1]
