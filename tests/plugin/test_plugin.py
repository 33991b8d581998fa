"""The plugin, end to end through pytester: options, ini, ids, one load per session, errors, README example."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import write_docs_example

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "geomcheck" / "checks"


pytestmark = pytest.mark.usefixtures("opted_in")


@pytest.fixture
def project(pytester: pytest.Pytester, tiny_llama_dir: Path, tmp_path_factory):
    """A pytester folder with the shipped checks and a cache dir; returns the common arguments."""
    for check in CHECKS.glob("test_*.py"):
        if check.name != "test_baseline.py":
            shutil.copy(check, pytester.path / check.name)
    cache = tmp_path_factory.mktemp("cache")
    return ["--model", str(tiny_llama_dir), "--max-prompts", "6", "--n-boot", "40", "--geomcheck-cache-dir", str(cache), "-p", "no:cacheprovider"]


def test_help_lists_every_option_in_a_geomcheck_group(pytester: pytest.Pytester):
    result = pytester.runpytest("--help")
    text = result.stdout.str()
    assert "geomcheck: activation-geometry checks:" in text
    for option in ("--model", "--device", "--dtype", "--batch-size", "--max-prompts", "--harmful", "--harmless",
                   "--position", "--geomcheck-cache-dir", "--artifacts-dir", "--trust-remote-code"):
        assert option in text
    assert "geomcheck_max_prompts" in text  # the matching ini key is named


def test_help_in_an_opted_in_project_lists_each_option_once_with_its_default(pytester: pytest.Pytester):
    text = pytester.runpytest("--help").stdout.str()
    listed = re.findall(r"^  (--[a-z-]+)", text, re.M)
    for option in ("--model", "--device", "--batch-size", "--n-boot", "--no-chat-template", "--geomcheck-cache-dir"):
        assert listed.count(option) == 1, (option, listed)
    assert "--geomcheck-device" not in listed and "--geomcheck-n-boot" not in listed  # the long twins work, unlisted
    assert re.search(r"--n-boot=N_BOOT\s+bootstrap resamples .*\(default: 200\)", text, re.S)
    assert re.search(r"--batch-size=BATCH_SIZE\s+prompts per forward pass \(default: 16\)", text)
    assert re.search(r"^  geomcheck_n_boot \(int\):", text, re.M)  # the ini key's type


def test_the_long_spelling_still_works_in_an_opted_in_project(pytester: pytest.Pytester):
    from geomcheck.options import run_options

    assert run_options(pytester.parseconfigure("--geomcheck-n-boot", "41")).n_boot == 41


@pytest.mark.parametrize("table", ["tool.pytest.ini_options", "tool.pytest"])
def test_integer_ini_values_need_no_quotes_in_toml(pytester: pytest.Pytester, table: str):
    """``[tool.pytest]`` (pytest 9's native TOML) refused an unquoted number for a "string" key."""
    from geomcheck.options import run_options

    pytester.makepyprojecttoml(f"[{table}]\ngeomcheck_n_boot = 41\ngeomcheck_batch_size = 3\n")
    options = run_options(pytester.parseconfigure())
    assert (options.n_boot, options.batch_size) == (41, 3)


def test_a_non_integer_ini_value_is_a_usage_error_naming_the_key(pytester: pytest.Pytester):
    pytester.makeini("[pytest]\ngeomcheck_batch_size = four\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini geomcheck_batch_size is not valid*four*whole number*"])


def test_fixtures_are_documented(pytester: pytest.Pytester):
    pytester.makepyfile("def test_x(): pass")
    text = pytester.runpytest("--fixtures").stdout.str()
    for fixture in ("geometry", "activations", "weights", "thresholds", "geomcheck_record", "model_name", "model_spec", "stream"):
        assert re.search(rf"^{fixture} \[session scope\]|^{fixture}\b", text, re.M), fixture
    assert "95% bootstrap intervals" in text
    geometry = text[text.index("\ngeometry "):].split("\n\n")[0]
    for method in ("curve", "interval", "describe", "growth", "cosine_trend", "separation", "derive"):
        assert f"``{method}" in geometry or f"``{method}``" in geometry or method in geometry, method


def test_no_unknown_mark_warning_for_xdist_group_without_xdist(pytester: pytest.Pytester, project):
    result = pytester.runpytest("-p", "no:xdist", "--collect-only", "-q", "-W", "error::pytest.PytestUnknownMarkWarning", *project)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert "PytestUnknownMarkWarning" not in result.stdout.str()


def test_ids_are_model_and_stream(pytester: pytest.Pytester, project):
    result = pytester.runpytest("--collect-only", "-q", *project)
    text = result.stdout.str()
    assert "test_variance_grows.py::test_variance_grows[tiny-llama-mid]" in text
    assert "test_streams_separate.py::test_streams_separate[tiny-llama]" in text
    assert "test_weights_share_directions.py::test_weights_share_directions[tiny-llama]" in text


def test_an_option_not_given_keeps_the_run_options_default(pytester: pytest.Pytester):
    """Each default lives in RunOptions: the plugin passes only what the command line or ini gives."""
    from geomcheck.run.pipeline import RunOptions
    from geomcheck.options import run_options

    config = pytester.parseconfigure()
    assert run_options(config) == replace(RunOptions(), progress=False)  # pytester's stdout is no terminal
    pytester.makeini("[pytest]\ngeomcheck_batch_size = 4\n")
    config = pytester.parseconfigure("--batch-size", "3", "--streams", "pre,mid", "--max-prompts", "5")
    assert (run_options(config).batch_size, run_options(config).streams, run_options(config).max_prompts) == (3, ("pre", "mid"), 5)


def test_progress_bars_only_when_pytest_writes_to_a_terminal(pytester: pytest.Pytester):
    """In a CI log or a pipe each bar's redraws are one multi-KB line: bars only on a terminal, never under -q."""
    from geomcheck.options import run_options

    def progress(*args: str, tty: bool) -> bool:
        config = pytester.parseconfigure(*args)
        config.pluginmanager.get_plugin("terminalreporter").isatty = lambda: tty
        return run_options(config).progress

    assert progress(tty=True) and not progress(tty=False) and not progress("-q", tty=True)


def test_every_model_fixture_makes_a_check(pytester: pytest.Pytester):
    """A check that reads only ``activations`` is parametrized over the models like one that reads ``geometry``."""
    pytester.makepyfile(test_own="def test_raw(activations): pass\n\ndef test_curves(geometry): pass\n")
    text = pytester.runpytest("--collect-only", "-q", "--model", "smollm2-135m").stdout.str()
    assert "test_own.py::test_raw[smollm2-135m]" in text
    assert "test_own.py::test_curves[smollm2-135m]" in text


def test_each_model_loads_once_however_many_checks_read_it(pytester: pytest.Pytester, project):
    result = pytester.runpytest(*project)
    text = result.stdout.str()
    assert "tiny-llama: model loaded 1×" in text
    assert re.search(r"tiny-llama\s+variance_grows\s+pre: harmful exponential ×", text)  # one summary line per check
    outcomes = result.parseoutcomes()
    assert sum(outcomes.get(k, 0) for k in ("passed", "failed", "xfailed")) == 9
    rerun = pytester.runpytest(*project)
    assert "tiny-llama: model loaded 0× (all from cache)" in rerun.stdout.str()
    assert rerun.parseoutcomes() == outcomes  # the cached geometry gives the same verdicts


def test_ini_settings_apply_and_the_command_line_wins(pytester: pytest.Pytester, tiny_llama_dir, tmp_path):
    pytester.makeini(
        f"""
        [pytest]
        geomcheck_models = {tiny_llama_dir}
        geomcheck_max_prompts = 5
        geomcheck_n_boot = 70
        geomcheck_streams = pre,mid
        geomcheck_cache_dir = {tmp_path}
        """
    )
    pytester.makepyfile(
        f"""
        def test_options(model_run, stream):
            assert model_run.options.max_prompts == 5
            assert str(model_run.options.cache_dir) == {str(tmp_path)!r}
            assert model_run.options.n_boot == 41  # from the command line
            assert stream in ("pre", "mid")
        """
    )
    result = pytester.runpytest("--n-boot", "41", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_unknown_model_is_a_usage_error_with_the_nearest_name(pytester: pytest.Pytester):
    pytester.makepyfile("def test_x(geometry): pass")
    result = pytester.runpytest("--model", "smolm2-135m")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown model 'smolm2-135m'. Did you mean 'smollm2-135m'?" in result.stderr.str()


def test_expected_failures_from_the_thresholds_file_are_strict(pytester: pytest.Pytester, project, tmp_path):
    thresholds = tmp_path / "thresholds.toml"
    thresholds.write_text(
        (ROOT / "geomcheck" / "data" / "thresholds.toml").read_text()
        + '\n[models.tiny-llama.cosine_falls]\nmax_spearman = -2.0\n'
        + '[models.tiny-llama.expected_failures]\n"cosine_falls[mid]" = "finding: no untangling on mid"\n'
    )
    result = pytester.runpytest("--thresholds", str(thresholds), "-k", "cosine_falls", *project)
    result.assert_outcomes(failed=2, xfailed=1)  # the override makes all three fail; mid is the recorded finding


def test_readme_example_runs_as_written(pytester: pytest.Pytester, tiny_llama_dir, tmp_path):
    write_docs_example("add-a-hypothesis", pytester.path)
    result = pytester.runpytest("--model", str(tiny_llama_dir), "--max-prompts", "6", "--n-boot", "0",
                                "--geomcheck-cache-dir", str(tmp_path), "-v")
    result.assert_outcomes(passed=3)
    assert "test_sets_drift_apart[tiny-llama-mid] PASSED" in result.stdout.str()


def test_junit_xml_lists_the_figures_as_properties(pytester: pytest.Pytester, project):
    result = pytester.runpytest("--junitxml=r.xml", "-k", "variance_grows or weights", *project)
    # random-init: its variance grows as a power law (hypothesis 1 fails on every stream) and its weights
    # share no directions (hypothesis 4 fails)
    result.assert_outcomes(failed=4)
    import xml.etree.ElementTree as ET

    properties = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "r.xml").iter("property")}
    for kind in ("geometry", "weight-overlap"):
        path = Path(properties[f"geomcheck_figure_{kind}"])
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.parent == pytester.path / "geomcheck-artifacts" / "tiny-llama"
    assert f"figure {path}" in result.stdout.str()


def test_two_xdist_workers_share_one_cache_without_tearing_or_double_work(pytester: pytest.Pytester, tmp_path_factory):
    from conftest import save_tiny_llama

    root = tmp_path_factory.mktemp("two-models")
    first, second = save_tiny_llama(root / "tiny-a", seed=1), save_tiny_llama(root / "tiny-b", seed=2)
    for check in ("test_variance_grows.py", "test_cosine_falls.py", "test_weights_share_directions.py"):
        shutil.copy(CHECKS / check, pytester.path / check)
    cache = tmp_path_factory.mktemp("shared-cache")
    args = ["-n", "2", "--model", str(first), "--model", str(second), "--max-prompts", "6", "--n-boot", "40",
            "--geomcheck-cache-dir", str(cache), "-p", "no:cacheprovider", "-p", "no:randomly"]
    for loads in ("1×", "0× (all from cache)"):  # -n alone groups by model: one worker loads each model once
        result = pytester.runpytest_subprocess(*args)
        outcomes = result.parseoutcomes()
        assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 14 and "error" not in outcomes
        load_lines = [line for line in result.stdout.lines if "model loaded" in line]
        assert sorted(load_lines) == [f"tiny-a: model loaded {loads}", f"tiny-b: model loaded {loads}"], result.stdout.str()
    # one whole entry per model and kind, nothing half-written, nothing computed twice under two names
    for kind in ("activations", "geometry", "weights"):
        entries = list((cache / kind).glob("*.safetensors"))
        assert len(entries) == 2, (kind, entries)
    assert not list(cache.rglob("*.tmp"))


def test_pytest_html_report_embeds_the_figures(pytester: pytest.Pytester, project):
    pytest.importorskip("pytest_html")  # installed by the test extras; skipped only in a bare environment
    result = pytester.runpytest("--html=report.html", "--self-contained-html", "-k", "variance_grows and mid", *project)
    result.assert_outcomes(failed=1)  # random-init: variance grows as a power law; the figures are embedded all the same
    import base64

    html = (pytester.path / "report.html").read_text()
    png = (pytester.path / "geomcheck-artifacts" / "tiny-llama" / "geometry.png").read_bytes()
    assert base64.b64encode(png).decode()[:200] in html  # the figure itself is embedded


def test_every_check_is_in_the_summary_with_its_outcome(pytester: pytest.Pytester, tiny_llama_dir, tmp_path):
    """A check that records no figure, or fails before it could, is still listed, with its outcome."""
    pytester.makepyfile(
        """
        import pytest

        def test_quiet(geometry, stream):
            assert geometry.n_layers == 4

        def test_quiet_failure(thresholds):
            assert thresholds == {"x": 1}, "no thresholds for this check"

        @pytest.fixture
        def broken(model_run):
            raise RuntimeError("setup broke")

        def test_broken_setup(broken):
            pass
        """
    )
    result = pytester.runpytest("--model", str(tiny_llama_dir), "--max-prompts", "6", "--n-boot", "0",
                                "--geomcheck-cache-dir", str(tmp_path), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1, errors=1)
    text = result.stdout.str()
    assert re.search(r"tiny-llama\s+quiet\s+pre: no figure recorded \[passed\] \| mid: .* \| post: no figure recorded \[passed\]", text), text
    assert re.search(r"tiny-llama\s+quiet_failure\s+no figure recorded \[failed\]", text)
    assert re.search(r"tiny-llama\s+broken_setup\s+no figure recorded \[error\]", text)


def test_readme_own_threshold_example_reads_the_projects_pyproject(pytester: pytest.Pytester, tiny_llama_dir, tmp_path):
    """The docs' example check and its pyproject table, as written; a tighter project threshold fails it."""
    readme = (ROOT / "docs" / "hypotheses.md").read_text()
    section = re.search(r"<!-- example: own-threshold -->\n(.*?)<!-- /example -->", readme, re.S).group(1)
    toml, code = re.findall(r"```(?:toml|python)\n(.*?)```", section, re.S)
    filename = re.match(r"# checks/(\S+\.py)", code).group(1)
    pytester.path.joinpath(filename).write_text(code)
    pytester.path.joinpath("pyproject.toml").write_text(toml)
    args = ["--model", str(tiny_llama_dir), "--max-prompts", "6", "--n-boot", "0", "--geomcheck-cache-dir", str(tmp_path), "-p", "no:cacheprovider"]
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=1)
    assert re.search(r"tiny-llama\s+steps_similar\s+relative step \d\.\d\d to \d\.\d\d, median \d\.\d\d \[passed\]", result.stdout.str())
    # 1.0: every inner layer's step equal to the median; on the first six length-matched built-in prompts the
    # tiny model's inner steps lie within 1.01× of it, so a looser "tight" threshold depends on the prompt text
    pytester.path.joinpath("pyproject.toml").write_text(toml.replace("max_ratio = 4.0", "max_ratio = 1.0"))
    result = pytester.runpytest(*args)
    result.assert_outcomes(failed=1)
    assert "move the state more than 1.0× away from the median relative step" in result.stdout.str()


def test_this_repository_opts_in_so_the_short_options_work_on_checks():
    """``pytest checks/ --model llama-3.2-3b`` as the README shows it, from the repository root (collection
    only: the registry knows the model's shapes, nothing is downloaded)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS" and not k.startswith("PYTEST_XDIST")}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's geomcheck, as the tests themselves use
    # the shipped files by name: a user's own check in checks/ (as the README invites) is no business of this test
    run = subprocess.run([sys.executable, "-m", "pytest", "checks/test_variance_grows.py", "checks/test_baseline.py", "--model", "llama-3.2-3b", "--collect-only", "-q",
                          "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "checks/test_variance_grows.py::test_variance_grows[llama-3.2-3b-mid]" in run.stdout
    assert "checks/test_baseline.py::test_matches_baseline[llama-3.2-3b]" in run.stdout
