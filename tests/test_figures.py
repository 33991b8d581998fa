"""Tests of geomcheck.figures: the Figure objects are inspected before saving (titles, scales, line
labels and data), and the written files are checked to be complete PNGs with no temp files left."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from geomcheck.figures import geometry_figure, overlap_figure, save_figure, write_geometry, write_overlap
from geomcheck.geometry import Geometry, geometry_from_samples
from geomcheck.pipeline import WeightOverlap
from geomcheck.weights import overlap_matrix

PROMPTS, LAYERS, FEATURES = 8, 5, 6
STREAMS = ("pre", "mid")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
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
    assert all(ax.get_legend() is not None for ax in axes)


def test_geometry_figure_draws_one_line_per_stream_and_set(geometry):
    cosine, var_mean, var_max = geometry_figure(geometry, "synthetic").axes
    assert labels(cosine) == {"pre", "mid"}
    expected = {"pre harmful", "pre harmless", "mid harmful", "mid harmless"}
    assert labels(var_mean) == expected
    assert {label for label in labels(var_max) if not label.startswith(("one feature", "_"))} == expected  # less the marks
    assert line(var_mean, "mid harmful").get_linestyle() == "-"
    assert line(var_mean, "mid harmless").get_linestyle() == "--"
    assert line(var_mean, "mid harmful").get_color() == line(var_mean, "mid harmless").get_color()
    assert line(var_mean, "pre harmful").get_color() != line(var_mean, "mid harmful").get_color()


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


def test_baseline_is_overlaid_in_grey_with_prefixed_labels(geometry, baseline):
    cosine, var_mean, _ = geometry_figure(geometry, "vs baseline", baseline=baseline).axes
    assert labels(cosine) == {"pre", "mid", "baseline pre", "baseline mid"}
    assert {f"baseline {s} {w}" for s in STREAMS for w in ("harmful", "harmless")} <= labels(var_mean)
    overlay = line(var_mean, "baseline mid harmful")
    np.testing.assert_array_equal(overlay.get_ydata(), baseline.curve("mid", "var_mean/harmful"))
    red, green, blue = to_rgb(overlay.get_color())
    assert red == green == blue  # grey
    np.testing.assert_array_equal(line(var_mean, "mid harmful").get_ydata(), geometry.curve("mid", "var_mean/harmful"))


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


def test_overlap_figure_has_one_heatmap_per_kind(weights):
    fig = overlap_figure(weights, "overlap")
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in heatmaps] == ["attn_out (chance k/d = 0.25)", "mlp_out (chance k/d = 0.25)"]
    for ax, matrix in zip(heatmaps, weights.matrices.values()):
        (image,) = ax.images
        np.testing.assert_array_equal(image.get_array(), matrix)
        assert image.get_clim() == (0.0, 1.0)
    assert len(fig.axes) == len(heatmaps) + 1  # and one colourbar


def test_chance_title_uses_two_significant_figures():
    fig = overlap_figure(WeightOverlap({"mlp_out": np.eye(3)}, k=16, d_model=576), "smollm2")
    assert fig.axes[0].get_title() == "mlp_out (chance k/d = 0.028)"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0 and image.shape[2] in (3, 4)


def test_written_figures_are_valid_pngs_and_no_temp_files(tmp_path, geometry, baseline, weights):
    model = "HuggingFaceTB/SmolLM2-135M"
    paths = [write_geometry(model, geometry, tmp_path), write_geometry(model, geometry, tmp_path, baseline=baseline),
             write_overlap(model, weights, tmp_path)]
    folder = tmp_path / "HuggingFaceTB_SmolLM2-135M"
    assert paths == [folder / "geometry.png", folder / "geometry-vs-baseline.png", folder / "weight-overlap.png"]
    for path in paths:
        assert_png(path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["HuggingFaceTB_SmolLM2-135M", *(p.name for p in paths)])


@pytest.mark.parametrize("model", ["../../escape", "/abs/path/to/model", "we ird:name*?"])
def test_model_names_become_one_folder_inside_out_dir(tmp_path, geometry, model):
    out_dir = tmp_path / "figures"
    path = write_geometry(model, geometry, out_dir)
    assert path.parent.parent == out_dir
    assert path.parent.name not in ("", ".", "..")
    assert path.is_file()


def test_save_figure_creates_parents_and_replaces_existing(tmp_path, weights):
    target = tmp_path / "a" / "b" / "overlap.png"
    save_figure(overlap_figure(weights, "first"), target)
    first = target.read_bytes()
    assert save_figure(overlap_figure(weights, "a different title"), target) == target
    assert target.read_bytes() != first
    assert_png(target)
    assert [p.name for p in target.parent.iterdir()] == ["overlap.png"]


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
