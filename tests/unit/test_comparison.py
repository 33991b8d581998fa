"""Several models side by side: the digest that crosses from xdist workers, the per-model table, and
models.png on a relative-depth axis."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import to_rgb

from geomcheck.report.across_models import ModelDigest, from_wire, table_lines, to_wire
from geomcheck.report.figures import models_figure, write_models
from geomcheck.stats.geometry import geometry_from_samples


def geometry_of(layers: int, seed: int, n_boot: int = 10):
    """Variance growing ×e^0.5 per layer; the harmful/harmless means drift apart with depth."""
    rng = np.random.default_rng(seed)
    scale = np.exp(0.25 * np.arange(layers))[None, :, None]
    samples = {
        which: {s: shift * np.linspace(0, 1, layers)[None, :, None] + 1 + rng.normal(size=(8, layers, 5)) * scale for s in ("pre", "mid")}
        for which, shift in (("harmful", 1.0), ("harmless", -1.0))
    }
    return geometry_from_samples(samples, n_boot=n_boot, seed=seed)


def test_a_digest_survives_the_trip_from_a_worker_as_plain_values():
    digest = ModelDigest("a", geometry_of(5, 0), {"attn_out": 2.5}, {"model": "a", "revision": "main", "package": None})
    wire = to_wire(digest)
    assert _plain(wire)  # what execnet can carry: no numpy anywhere
    back = from_wire(wire)
    assert (back.model, back.overlap_ratios, back.identity) == (digest.model, digest.overlap_ratios, digest.identity)
    assert back.geometry.streams == digest.geometry.streams and back.geometry.n_boot == 10
    for key, value in digest.geometry.values.items():
        np.testing.assert_array_equal(back.geometry.values[key], value)
    for key, interval in digest.geometry.intervals.items():
        np.testing.assert_array_equal(back.geometry.intervals[key].low, interval.low)


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


def test_the_table_gives_growth_rate_lowest_cosine_layer_and_overlap_ratio_per_model():
    geometry = geometry_of(6, 1)
    lines = table_lines([ModelDigest("tiny-a", geometry, {"attn_out": 2.46, "mlp_out": 3.0}), ModelDigest("w-only", None, {"mlp_out": 1.04})])
    assert lines[0].split()[:3] == ["model", "layers", "stream"]
    cosine = geometry.curve("mid", "cosine")
    rates = [float(geometry.values[f"mid/growth_rate/{w}"]) for w in ("harmful", "harmless")]
    row = lines[1]
    assert row.startswith("tiny-a") and f"{rates[0]:.3f} | {rates[1]:.3f}" in row
    assert f"{cosine.min():.3f} at layer {int(np.argmin(cosine))}" in row and "attn_out 2.5×, mlp_out 3.0×" in row
    assert lines[2].startswith("w-only") and lines[2].endswith("mlp_out 1.0×")  # weights only: no curves to read


def test_models_png_puts_models_of_any_depth_on_one_relative_axis_one_colour_each():
    geometries = {"deep": geometry_of(12, 0), "shallow": geometry_of(4, 1)}
    fig = models_figure(geometries)
    for ax in fig.axes:
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"deep mid", "deep pre", "shallow mid", "shallow pre"}
        for model, geometry in geometries.items():
            x = lines[f"{model} mid"].get_xdata()
            assert len(x) == geometry.n_layers and x[0] == 0 and x[-1] == 1
            assert to_rgb(lines[f"{model} mid"].get_color()) == to_rgb(lines[f"{model} pre"].get_color())
            assert (lines[f"{model} mid"].get_linestyle(), lines[f"{model} pre"].get_linestyle()) == ("-", "--")
        assert to_rgb(lines["deep mid"].get_color()) != to_rgb(lines["shallow mid"].get_color())
        assert len(ax.collections) == 4  # every curve's 95% band
    assert [ax.get_yscale() for ax in fig.axes] == ["linear", "log", "log"]
    assert "relative depth" in fig.axes[-1].get_xlabel()
    np.testing.assert_allclose(fig.axes[1].get_lines()[0].get_ydata(), geometries["deep"].curve("mid", "var_mean/harmful"))


def test_write_models_writes_one_png_at_the_top_of_the_artifacts(tmp_path):
    path = write_models({"a": geometry_of(5, 0, n_boot=0), "b": geometry_of(3, 1, n_boot=0)}, tmp_path)
    assert path == tmp_path / "models.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
