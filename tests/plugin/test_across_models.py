"""Several models in one run, end to end: models.png and the per-model table (in-process and under
xdist, where the curves live in the workers), the GitHub job summary, and a hub id on the command line."""

from __future__ import annotations

import base64
import importlib.util
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import transformers.models.llama.modeling_llama  # noqa: F401  (before pytester runs, which restore sys.modules)
from conftest import SHA_A

from conftest import save_tiny_llama

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ("test_variance_grows.py", "test_weights_share_directions.py")


pytestmark = pytest.mark.usefixtures("opted_in")


@pytest.fixture
def two_models(pytester: pytest.Pytester, tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("two")
    for check in CHECKS:
        shutil.copy(ROOT / "checks" / check, pytester.path / check)
    models = [save_tiny_llama(root / "tiny-a", seed=1, num_layers=4), save_tiny_llama(root / "tiny-b", seed=2, num_layers=6)]
    cache = tmp_path_factory.mktemp("cache")
    return ["--model", str(models[0]), "--model", str(models[1]), "--max-prompts", "6", "--n-boot", "40",
            "--geomcheck-cache-dir", str(cache), "-p", "no:cacheprovider", "-p", "no:randomly"]


def _table_rows(lines: list[str]) -> dict[str, list[str]]:
    start = next(i for i, line in enumerate(lines) if line.startswith("model ") and "lowest cosine" in line)
    return {line.split()[0]: line.split() for line in lines[start + 1 : start + 3]}


def test_two_models_give_models_png_a_table_and_a_github_summary(pytester: pytest.Pytester, two_models, monkeypatch):
    summary = pytester.path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    html = ["--html=report.html", "--self-contained-html"] if importlib.util.find_spec("pytest_html") else []
    result = pytester.runpytest("--junitxml=r.xml", *html, *two_models)
    # random-init: variance grows as a power law (H1 fails on every stream) and weights share no directions (H4)
    result.assert_outcomes(failed=8)
    figure = pytester.path / "geomcheck-artifacts" / "models.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = result.stdout.lines
    assert f"all models: figure {figure}" in lines
    rows = _table_rows(lines)
    assert rows["tiny-a"][1:3] == ["4", "mid"] and rows["tiny-b"][1:3] == ["6", "mid"]
    assert "attn_out" in rows["tiny-a"] and "mlp_out" in rows["tiny-b"]
    properties = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "r.xml").iter("property")}
    assert properties["geomcheck_figure_models"] == str(figure)
    annotations = [line for line in lines if line.startswith("::error file=")]
    assert len(annotations) == 8 and sum("test_weights_share_directions.py,line=" in a for a in annotations) == 2
    assert any("mean overlap of top-" in a for a in annotations) and any("exponential beats the power law" in a for a in annotations)
    text = summary.read_text()
    assert text.startswith("## geomcheck: 8 failed")
    assert "### tiny-a" in text and "### tiny-b" in text and "| weights_share_directions | – | ❌ failed |" in text
    assert "Figure: `geomcheck-artifacts/models.png`" in text  # relative to the checkout
    if html:
        assert base64.b64encode(figure.read_bytes()).decode()[:200] in (pytester.path / "report.html").read_text()


def test_under_xdist_the_controller_draws_models_png_from_what_the_workers_measured(pytester: pytest.Pytester, two_models):
    result = pytester.runpytest_subprocess("-n", "2", *two_models)
    assert result.parseoutcomes().get("failed") == 8  # H1 and H4 fail on random-init weights
    rows = _table_rows(result.stdout.lines)
    assert set(rows) == {"tiny-a", "tiny-b"}
    assert (pytester.path / "geomcheck-artifacts" / "models.png").is_file()


def test_a_hub_id_on_the_command_line_runs_offline_from_the_cache(pytester: pytest.Pytester, hub_cache, tmp_path):  # noqa: F811
    shutil.copy(ROOT / "checks" / "test_variance_grows.py", pytester.path)
    result = pytester.runpytest("--model", "acme/tiny@main", "--max-prompts", "4", "--n-boot", "0", "-k", "mid",
                                "--geomcheck-cache-dir", str(tmp_path / "cache"), "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()  # random-init: the hypothesis may hold or not; it must run, not error
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 1 and "error" not in outcomes
    assert "acme/tiny@main: model loaded 1×" in result.stdout.lines  # the id as given names the model


def test_two_revisions_of_one_hub_id_share_a_baseline_folder_so_one_session_refuses_both(pytester: pytest.Pytester, hub_cache, tmp_path):  # noqa: F811
    """``ORG/NAME@REV`` is gated against ``baselines/ORG--NAME`` whatever the revision; two revisions in one
    session would write one baseline twice, so they are refused before any model loads."""
    pytester.makepyfile("def test_x(thresholds):\n    pass\n")
    result = pytester.runpytest("--model", "acme/tiny@v2", "--model", "acme/tiny@main",
                                "--geomcheck-cache-dir", str(tmp_path / "cache"), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*two models would share the baselines of 'acme--tiny': acme/tiny@v2 and acme/tiny*"])
    assert not (tmp_path / "cache").exists()
