"""Figures are drawn once: a figure whose content is unchanged is not redrawn (issue 22, item 5)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from geomcheck.report import figures
from geomcheck.report.figures import KEY_FIELD, content_key, stored_key, write_geometry, write_overlap
from geomcheck.stats.geometry import geometry_from_samples
from geomcheck.run.pipeline import WeightOverlap

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def drawn(monkeypatch) -> list[int]:
    """Counts the figures built (every figure starts with figures._new_figure)."""
    count: list[int] = []
    original = figures._new_figure

    def counting(**kwargs):
        count.append(1)
        return original(**kwargs)

    monkeypatch.setattr(figures, "_new_figure", counting)
    return count


def small_geometry(seed: int):
    rng = np.random.default_rng(seed)
    samples = {s: {st: rng.standard_normal((8, 4, 6)) for st in ("pre", "mid")} for s in ("harmful", "harmless")}
    return geometry_from_samples(samples, n_boot=5, seed=0)


def test_an_unchanged_figure_is_not_redrawn_and_a_changed_one_is(tmp_path, drawn):
    geometry = small_geometry(0)
    path = write_geometry("m", geometry, tmp_path)
    first = path.stat()
    assert len(drawn) == 1 and stored_key(path) is not None
    assert write_geometry("m", geometry, tmp_path) == path
    assert len(drawn) == 1, "same content: not redrawn"
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    write_geometry("m", small_geometry(1), tmp_path)
    assert len(drawn) == 2, "other data: redrawn"


def test_a_file_that_does_not_carry_the_key_is_redrawn(tmp_path, drawn):
    """A PNG from elsewhere, a torn or foreign file, or a figure of other content is replaced."""
    weights = WeightOverlap({"attn_out": np.array([[1.0, 0.2], [0.2, 1.0]])}, k=2, d_model=8)
    path = write_overlap("m", weights, tmp_path)
    path.write_bytes(b"not a png")
    assert stored_key(path) is None
    write_overlap("m", weights, tmp_path)
    assert len(drawn) == 2 and stored_key(path) == content_key(
        "m: overlap of top-2 written directions across layers", weights.matrices, 2, 8
    )


def test_the_key_covers_data_title_and_drawing_code():
    a = np.arange(4.0)
    assert content_key("t", a) == content_key("t", a.copy())
    assert content_key("t", a) != content_key("u", a)
    assert content_key("t", a) != content_key("t", a + 1e-12)
    assert content_key("t", {"x": a}) != content_key("t", {"y": a})
    assert KEY_FIELD  # the key is stored in the PNG itself, so a figure and its key never disagree


@pytest.mark.usefixtures("opted_in")
def test_a_cached_rerun_draws_no_figure_and_prints_its_time_per_phase(pytester: pytest.Pytester, tiny_llama_dir, tmp_path_factory, drawn):
    """Acceptance of issue 22: the second, fully cached run of the shipped checks builds no figure, leaves
    every PNG as it was, loads no model, and its summary prints where its time went."""
    for check in (ROOT / "geomcheck" / "checks").glob("test_*.py"):
        if check.name != "test_baseline.py":
            shutil.copy(check, pytester.path / check.name)
    cache = tmp_path_factory.mktemp("cache")
    args = ["--model", str(tiny_llama_dir), "--max-prompts", "6", "--n-boot", "40", "--geomcheck-cache-dir", str(cache), "-p", "no:cacheprovider"]
    pytester.runpytest(*args)
    cold = len(drawn)
    pngs = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (pytester.path / "geomcheck-artifacts").rglob("*.png")}
    assert cold >= 2 and len(pngs) >= 2  # geometry and weight overlap
    rerun = pytester.runpytest(*args)
    assert len(drawn) == cold, "the cached re-run drew a figure"
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in pngs} == pngs
    text = rerun.stdout.str()
    assert "tiny-llama: model loaded 0×" in text
    line = next(l for l in text.splitlines() if l.startswith("tiny-llama: time "))
    for phase in ("fingerprint", "load/convert 0.0 s", "capture", "statistics", "weights", "figures", "baseline"):
        assert phase in line, line
