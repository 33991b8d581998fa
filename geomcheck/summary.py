"""What a session reports at its end: each check's key figure and outcome in the terminal summary,
models.png across models, the per-model table and the CI job summary and annotations.

A plugin object registered by :mod:`geomcheck.plugin`; it reads only test reports (and, under xdist, what
each worker measured), so it works the same in the controller of ``-n N`` as in a plain run.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from _pytest import junitxml

from geomcheck.session import DIGESTS, SESSION_KEY
from geomcheck.options import run_options, setting

if TYPE_CHECKING:
    from geomcheck.report.ci import CheckResult, Failure
    from geomcheck.report.across_models import ModelDigest


def _failure(report: pytest.TestReport) -> Failure:
    """A failing report as a workflow annotation: the check's file and line, the message's first lines."""
    from geomcheck.report.ci import Failure

    path, line, _ = report.location
    message = report.longreprtext.strip().splitlines()
    shown = [m for m in message if m.startswith("E ")] or message  # pytest.fail(pytrace=False): the message itself
    text = "\n".join(m.removeprefix("E ").strip() for m in shown[:6])
    return Failure(path, (line or 0) + 1, report.nodeid.rpartition("::")[2], f"{report.when}: {text}" if report.when != "call" else text)


class Summary:
    """Collects each check's key figure and outcome from the reports (in the controller under xdist)."""

    def __init__(self) -> None:
        self.results: dict[str, CheckResult] = {}  # by node id
        self.figures: dict[str, dict[str, Path]] = {}  # model -> figure kind -> file
        self.loads: dict[str, int] = {}
        self.phases: dict[str, dict[str, float]] = {}  # model -> phase -> seconds, as of its latest check
        self.renderings: dict[str, str] = {}  # model -> what its prompts went in as (chat template or raw)
        self.digests: dict[str, ModelDigest] = {}  # model -> what was measured (from every worker)
        self.failures: list[Failure] = []
        self.models_figure: Path | None = None
        self.comparison: list[str] = []
        self.sweep: list[str] = []  # --geomcheck-sweep: the trajectory's table
        self.sweep_figure: Path | None = None
        self.controls: dict[str, str] = {}  # node id -> the untrained twin's figure (--geomcheck-control)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        from geomcheck.report.across_models import from_wire

        for wire in getattr(node, "workeroutput", {}).get(DIGESTS, []):
            self.digests.setdefault(wire["model"], from_wire(wire))

    @pytest.hookimpl(tryfirst=True)  # before the JUnit XML is written, so models.png is listed in it
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """In the controller: models.png across models, the per-model table, and the CI job summary."""
        from geomcheck.report import ci
        from geomcheck.report import across_models
        from geomcheck.report import figures

        if hasattr(session.config, "workeroutput"):
            return
        geomcheck_session = session.config.stash[SESSION_KEY]
        for digest in geomcheck_session.digests():
            self.digests.setdefault(digest.model, digest)
        order = list(geomcheck_session.display_names.values())
        digests = sorted(self.digests.values(), key=lambda d: order.index(d.model) if d.model in order else len(order))
        if (target := setting(session.config, "geomcheck-json")) is not None:
            from geomcheck.report import results

            results.write(target, results.payload(self.results, digests, self.renderings))
        if not digests:
            return
        self.comparison = across_models.table_lines(digests)
        geometries = {d.model: d.geometry for d in digests if d.geometry is not None}
        if len(geometries) > 1:
            self.models_figure = figures.write_models(geometries, geomcheck_session.artifacts_dir)
            xml = session.config.stash.get(junitxml.xml_key, None)
            if xml is not None:
                xml.add_global_property("geomcheck_figure_models", str(self.models_figure))
        if session.config.getoption("geomcheck_sweep") and len(geometries) > 1:
            from geomcheck.gate.drift import tolerances_from_config
            from geomcheck.report import sweep

            points = sweep.trajectory(digests, tolerances_from_config(geomcheck_session.thresholds.get("matches_baseline")))
            self.sweep, self.sweep_figure = sweep.table_lines(points), sweep.write_sweep(points, geomcheck_session.artifacts_dir)
        if (path := ci.step_summary_path()) is not None:
            text = ci.markdown_summary(list(self.results.values()), digests, self.figures, self.models_figure, self.failures)
            ci.append_step_summary(path, text)

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session) -> None:
        """pytest-html: models.png embedded above the results, as each check's figures are in its row."""
        if self.models_figure is not None:
            png = base64.b64encode(self.models_figure.read_bytes()).decode()
            prefix.append(f'<p>geomcheck: all models</p><img src="data:image/png;base64,{png}" alt="models.png" style="max-width:100%">')

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Every check once: its call, or the setup that failed or skipped before it could run."""
        from geomcheck.report.ci import CheckResult

        if report.failed:
            self.failures.append(_failure(report))
        properties = dict(report.user_properties)
        if "geomcheck_id" not in properties or not (report.when == "call" or (report.when == "setup" and not report.passed)):
            return
        model, check, stream = properties["geomcheck_id"]
        outcome = "xfail" if hasattr(report, "wasxfail") else "error" if report.failed and report.when == "setup" else report.outcome
        if "geomcheck_control" in properties:
            self.controls[report.nodeid] = properties["geomcheck_control"]
        self.results[report.nodeid] = CheckResult(model, check, stream, properties.get("geomcheck", "no figure recorded"), outcome)
        for key, value in properties.items():
            if key.startswith("geomcheck_figure_"):
                self.figures.setdefault(model, {})[key.removeprefix("geomcheck_figure_")] = Path(value)
        if "geomcheck_loads" in properties:
            self.loads[model] = properties["geomcheck_loads"]
        if "geomcheck_phases" in properties:
            self.phases[model] = properties["geomcheck_phases"]
        if "geomcheck_rendering" in properties:
            self.renderings[model] = properties["geomcheck_rendering"]

    def pytest_terminal_summary(self, terminalreporter) -> None:
        from geomcheck.report import ci

        if ci.step_summary_path() is not None:  # GitHub Actions reads these lines from the log
            for line in ci.annotations(self.failures):
                terminalreporter.write_line(line)
        if not self.results:
            return
        terminalreporter.section("geomcheck")
        grouped: dict[tuple[str, str], list[tuple[CheckResult, str | None]]] = {}
        for nodeid, result in self.results.items():
            grouped.setdefault((result.model, result.check), []).append((result, self.controls.get(nodeid)))
        for (model, check), results in grouped.items():
            parts = [f"{r.stream + ': ' if r.stream else ''}{r.text} [{r.outcome}]" + (f" || untrained twin: {twin}" if twin else "") for r, twin in results]
            terminalreporter.write_line(f"{model:<18} {check:<26} " + " | ".join(parts))
            if {"pre", "post"} <= {r.stream for r, _ in results}:
                terminalreporter.write_line(f"{'':<18} {'':<26} pre and post are one piece of evidence, not two: post[l] = pre[l+1]")
        for model, paths in self.figures.items():
            for path in paths.values():
                terminalreporter.write_line(f"{model}: figure {path}")
        for model, loads in self.loads.items():
            terminalreporter.write_line(f"{model}: model loaded {loads}×" + (" (all from cache)" if loads == 0 else ""))
        for model, rendering in self.renderings.items():
            terminalreporter.write_line(f"{model}: prompts rendered with {rendering}" if rendering == "chat template" else f"{model}: prompts fed as {rendering}")
        for digest in self.digests.values():
            if digest.geometry is not None and any("/kurtosis/" in key for key in digest.geometry.values):
                terminalreporter.write_line(f"{digest.model}: {digest.geometry.tails()}")
        for model, phases in self.phases.items():
            terminalreporter.write_line(phase_line(model, phases))
        for line in self.comparison:
            terminalreporter.write_line(line)
        if self.models_figure is not None:
            terminalreporter.write_line(f"all models: figure {self.models_figure}")
        for line in self.sweep:
            terminalreporter.write_line(line)
        if self.sweep_figure is not None:
            terminalreporter.write_line(f"sweep: figure {self.sweep_figure}")
        cache_line(terminalreporter)


def phase_line(model: str, phases: dict[str, float]) -> str:
    """Where a model's run spent its wall time, phase by phase (:data:`geomcheck.run.pipeline.PHASES`)."""
    parts = " · ".join(f"{phase} {seconds:.1f} s" for phase, seconds in phases.items())
    return f"{model}: time {parts} (total {sum(phases.values()):.1f} s)"


def cache_line(terminalreporter) -> None:
    """The cache's place and size, once it is large, with how to empty it."""
    from geomcheck.run import cache

    root = run_options(terminalreporter.config).cache_dir
    size = cache.size_bytes(root)
    if size >= cache.LARGE_BYTES:
        terminalreporter.write_line(f"geomcheck cache: {root} holds {size / 2**30:.1f} GiB (empty it with --geomcheck-cache-clear)")
