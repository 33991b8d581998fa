"""The CI report: the Markdown job summary's content and the workflow annotations."""

from __future__ import annotations

from pathlib import Path

from test_comparison import geometry_of

from geomcheck.report.ci import CheckResult, Failure, annotations, append_step_summary, markdown_summary, step_summary_path
from geomcheck.report.across_models import ModelDigest

RESULTS = [
    CheckResult("smol", "matches_baseline", None, "3 of 450 values drifted; worst 7.2× at mid/cosine layer 11", "failed"),
    CheckResult("smol", "variance_grows", "mid", "harmful ×1.48 | harmless ×1.49", "passed"),
    CheckResult("mini", "variance_grows", "pre", "harmful ×1.22/layer R²=0.47", "xfail"),
]
FAILURE = Failure("checks/test_baseline.py", 10, "test_matches_baseline[smol]", "3 values drifted\nworst: 7.2×, 100%")


def digests():
    return [
        ModelDigest("smol", geometry_of(6, 0), {"attn_out": 2.4}, {"model": "smol", "revision": "main", "commit": "abc123", "package": None}),
        ModelDigest("mini", geometry_of(4, 1), {"attn_out": 3.6}, {"model": "mini", "dtype": "float32"}),
    ]


def test_the_markdown_summary_holds_checks_drift_identity_and_figures(tmp_path: Path):
    figures = {"smol": {"geometry": tmp_path / "smol" / "geometry.png"}}
    text = markdown_summary(RESULTS, digests(), figures, tmp_path / "models.png", [FAILURE])
    assert text.startswith("## geomcheck: 1 failed, 1 passed, 1 xfail\n")
    assert "**1 failing:** `test_matches_baseline[smol]`" in text
    smol = text[text.index("### smol") : text.index("### mini")]
    assert "Measured: `model=smol`, `revision=main`, `commit=abc123`" in smol and "package" not in smol
    assert "Worst drift against the baseline (❌ failed): 3 of 450 values drifted; worst 7.2× at mid/cosine layer 11" in smol
    assert "| check | stream | outcome | key figure |" in smol
    assert "| variance_grows | mid | ✅ passed | harmful ×1.48 \\| harmless ×1.49 |" in smol  # a | inside a cell is escaped
    assert f"Figures: `{tmp_path / 'smol' / 'geometry.png'}`" in smol
    mini = text[text.index("### mini") : text.index("### All models")]
    assert "| variance_grows | pre | ➖ expected failure |" in mini and "Worst drift" not in mini
    assert "`dtype=float32`" in mini
    everything = text[text.index("### All models") :]
    rows = [line.split()[:3] for line in everything.splitlines()]
    assert ["smol", "6", "mid"] in rows and ["mini", "4", "mid"] in rows
    assert f"Figure: `{tmp_path / 'models.png'}`" in everything


def test_figure_paths_inside_the_working_directory_are_shown_relative(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = markdown_summary(RESULTS[:1], [], {"smol": {"geometry": tmp_path / "a" / "geometry.png"}})
    assert "Figures: `a/geometry.png`" in text and "### All models" not in text  # one model: no comparison


def test_failing_checks_become_escaped_error_annotations():
    (line,) = annotations([FAILURE])
    assert line == (
        "::error file=checks/test_baseline.py,line=10,title=test_matches_baseline[smol]::"
        "3 values drifted%0Aworst: 7.2×, 100%25"
    )


def test_the_step_summary_is_appended_to_not_overwritten(tmp_path: Path):
    path = tmp_path / "summary.md"
    path.write_text("earlier step\n")
    assert step_summary_path({"GITHUB_STEP_SUMMARY": str(path)}) == path and step_summary_path({}) is None
    append_step_summary(path, "## geomcheck\n")
    assert path.read_text() == "earlier step\n## geomcheck\n"
