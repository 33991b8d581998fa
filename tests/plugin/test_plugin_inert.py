"""Installed but not opted in, the plugin changes nothing in a foreign suite; its own options are namespaced."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHECKS = Path(__file__).resolve().parents[2] / "geomcheck" / "checks"

FOREIGN_CONFTEST = """
import pytest

def pytest_addoption(parser):
    parser.addoption("--model", default="theirs")

@pytest.fixture(params=["a", "b"])
def stream(request):
    return request.param

def pytest_terminal_summary(terminalreporter, config):
    terminalreporter.write_line(f"DIST={config.getoption('dist', 'absent')}")
"""

FOREIGN_TESTS = """
import pytest

def test_own_option_and_fixture(request, stream):
    assert request.config.getoption("--model") == "mine"
    assert stream in ("a", "b")

@pytest.mark.parametrize("model_name", ["x"])
def test_own_model_name(model_name):
    assert model_name == "x"
"""


@pytest.fixture
def foreign(pytester: pytest.Pytester) -> pytest.Pytester:
    """A project with its own ``--model`` option, ``stream`` fixture and ``model_name`` argument."""
    pytester.makeconftest(FOREIGN_CONFTEST)
    pytester.makepyfile(test_foreign=FOREIGN_TESTS)
    return pytester


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_foreign_suite_runs_unchanged(foreign: pytest.Pytester, xdist: list[str]):
    result = foreign.runpytest_subprocess("--model", "mine", "-v", "-p", "no:cacheprovider", *xdist)
    result.assert_outcomes(passed=3)
    text = result.stdout.str()
    for test in ("test_own_option_and_fixture[a]", "test_own_option_and_fixture[b]", "test_own_model_name[x]"):
        assert test in text
    assert ("DIST=load" if xdist else "DIST=no") in text  # xdist's own default, not geomcheck's loadgroup
    assert "= geomcheck =" not in text  # no summary section


def test_namespaced_options_run_checks_beside_the_foreign_ones(foreign: pytest.Pytester, tiny_llama_dir: Path, tmp_path: Path):
    """A geomcheck check in the same project gets geomcheck's streams; the foreign tests keep their own."""
    shutil.copy(CHECKS / "test_cosine_falls.py", foreign.path / "test_cosine_falls.py")
    result = foreign.runpytest_subprocess(
        "--model", "mine", "--geomcheck-model", str(tiny_llama_dir), "--geomcheck-max-prompts", "6",
        "--geomcheck-n-boot", "0", "--geomcheck-cache-dir", str(tmp_path), "-v", "-p", "no:cacheprovider",
    )
    text = result.stdout.str()
    for stream in ("pre", "mid", "post"):
        assert f"test_cosine_falls[tiny-llama-{stream}]" in text
    assert "test_own_option_and_fixture[a] PASSED" in text and "test_own_model_name[x] PASSED" in text
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 6 and "error" not in outcomes
    assert "tiny-llama         cosine_falls" in text  # the summary lists the checks
    assert "pre and post are one piece of evidence, not two: post[l] = pre[l+1]" in text  # not counted twice


def test_the_shipped_checks_run_from_the_package(pytester: pytest.Pytester, tiny_llama_dir: Path):
    """``pytest --pyargs geomcheck.checks``: the four hypotheses and the baseline gate, no copy needed."""
    result = pytester.runpytest("--pyargs", "geomcheck.checks", "--geomcheck-model", str(tiny_llama_dir), "--collect-only", "-q")
    text = result.stdout.str()
    for test in ("test_variance_grows[tiny-llama-mid]", "test_streams_separate[tiny-llama]", "test_cosine_falls[tiny-llama-pre]",
                 "test_weights_share_directions[tiny-llama]", "test_matches_baseline[tiny-llama]"):
        assert test in text, text


@pytest.mark.parametrize(("args", "mode"), [(["-n", "2"], "loadgroup"), (["-n", "2", "--dist", "load"], "load")], ids=["n-alone", "explicit"])
def test_an_opted_in_project_groups_by_model_under_n(pytester: pytest.Pytester, args: list[str], mode: str):
    """``-n N`` alone means loadgroup once a project opts in, whatever order pytest loaded xdist and
    geomcheck.activate in (xdist's own hook turns ``-n`` alone into ``load``); an explicit ``--dist`` wins."""
    pytester.makeconftest("def pytest_terminal_summary(terminalreporter, config):\n"
                          "    terminalreporter.write_line(f\"DIST={config.getoption('dist')}\")\n")
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "geomcheck.activate", "-p", "no:cacheprovider", *args)
    assert f"DIST={mode}" in result.stdout.str(), result.stdout.str()
