"""Thresholds layer: shipped, then the project's pyproject, then --thresholds; tables merge, values replace."""

from __future__ import annotations

from pathlib import Path

import pytest

from geomcheck import thresholds
from geomcheck.options import OptionError


def test_merge_keeps_what_the_override_does_not_name():
    base = {"a": {"x": 1, "y": 2}, "models": {"m": {"a": {"x": 3}}}}
    merged = thresholds.merge(base, {"a": {"y": 5}, "b": {"z": 1}, "models": {"n": {"b": {"z": 2}}}})
    assert merged == {"a": {"x": 1, "y": 5}, "b": {"z": 1}, "models": {"m": {"a": {"x": 3}}, "n": {"b": {"z": 2}}}}
    assert base["a"] == {"x": 1, "y": 2}  # the inputs are left alone


def test_project_and_file_extend_the_shipped_thresholds(tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text(
        "[tool.geomcheck.thresholds.step_size_steady]\nmax_ratio = 3.0\n"
        "[tool.geomcheck.thresholds.cosine_falls]\nmax_spearman = -0.9\n"
    )
    extra = tmp_path / "more.toml"
    extra.write_text("[step_size_steady]\nmax_ratio = 2.5\n[models.tiny.expected_failures]\ncosine_falls = 'finding'\n")
    shipped = thresholds.shipped()
    loaded = thresholds.load(thresholds.project_file(tmp_path / "elsewhere", tmp_path), str(extra))
    assert loaded["step_size_steady"] == {"max_ratio": 2.5}  # the file wins over the project
    assert loaded["cosine_falls"] == {**shipped["cosine_falls"], "max_spearman": -0.9}  # one value overridden
    assert loaded["variance_grows"] == shipped["variance_grows"]  # shipped checks keep theirs
    assert loaded["models"]["minilm-l6"] == shipped["models"]["minilm-l6"]  # shipped findings stay recorded
    assert loaded["models"]["tiny"]["expected_failures"] == {"cosine_falls": "finding"}


def test_a_project_without_settings_gets_the_shipped_thresholds(tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert thresholds.load(thresholds.project_file(tmp_path)) == thresholds.shipped()
    assert thresholds.project_file(tmp_path / "none") is None


def test_the_rotation_null_threshold_is_overridden_and_validated_like_the_others(tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text("[tool.geomcheck.thresholds.weights_share_directions]\nmin_null_z = 5.0\n")
    loaded = thresholds.load(thresholds.project_file(tmp_path))
    assert loaded["weights_share_directions"] == {**thresholds.shipped()["weights_share_directions"], "min_null_z": 5.0}
    (tmp_path / "pyproject.toml").write_text("[tool.geomcheck.thresholds.weights_share_directions]\nmin_null_z = 'high'\n")
    with pytest.raises(OptionError, match="min_null_z = 'high' must be a number"):
        thresholds.load(thresholds.project_file(tmp_path))
