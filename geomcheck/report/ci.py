"""The report where CI users look: a Markdown job summary (GitHub's ``$GITHUB_STEP_SUMMARY``) and
workflow annotations for failing checks. Plain text in, plain text out; :mod:`geomcheck.summary` decides when."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomcheck.report.across_models import ModelDigest, table_lines

STEP_SUMMARY = "GITHUB_STEP_SUMMARY"
OUTCOMES = {"passed": "✅ passed", "failed": "❌ failed", "skipped": "⏭ skipped", "xfail": "➖ expected failure"}
BASELINE_CHECK = "matches_baseline"


@dataclass
class CheckResult:
    """One check's outcome and key figure (what it recorded with ``geomcheck_record``), per model and stream."""

    model: str  # display name
    check: str
    stream: str | None
    text: str
    outcome: str = "?"


@dataclass(frozen=True)
class Failure:
    """A failing test report, where it is and why: one workflow annotation."""

    path: str
    line: int  # 1-based
    title: str
    message: str


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _shown(path: Path) -> str:
    """A path relative to the working directory (the checkout in CI), where it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _counts(results: Sequence[CheckResult]) -> str:
    totals: dict[str, int] = {}
    for result in results:
        totals[result.outcome] = totals.get(result.outcome, 0) + 1
    return ", ".join(f"{n} {outcome}" for outcome, n in sorted(totals.items())) or "no checks ran"


def markdown_summary(
    results: Sequence[CheckResult],
    digests: Sequence[ModelDigest],
    figures: Mapping[str, Mapping[str, Path]],
    models_figure: Path | None = None,
    failures: Sequence[Failure] = (),
) -> str:
    """Per model: the measured identity, the worst drift against the baseline, a table of checks
    (outcome and key figure) and the figure paths; then the cross-model table and figure."""
    identities = {d.model: d.identity for d in digests}
    models = list(dict.fromkeys([r.model for r in results] + list(identities)))
    lines = [f"## geomcheck: {_counts(results)}", ""]
    if failures:
        lines += [f"**{len(failures)} failing:** " + ", ".join(f"`{f.title}`" for f in failures), ""]
    for model in models:
        lines += [f"### {model}", ""]
        if identity := identities.get(model):
            lines += ["Measured: " + ", ".join(f"`{k}={v}`" for k, v in identity.items() if v not in (None, "")), ""]
        ours = [r for r in results if r.model == model]
        for result in (r for r in ours if r.check == BASELINE_CHECK):
            lines += [f"Worst drift against the baseline ({OUTCOMES.get(result.outcome, result.outcome)}): {result.text}", ""]
        if ours:
            lines += ["| check | stream | outcome | key figure |", "|---|---|---|---|"]
            lines += [
                f"| {f.check} | {f.stream or '–'} | {OUTCOMES.get(f.outcome, f.outcome)} | {_cell(f.text)} |" for f in ours
            ]
            lines.append("")
        if paths := figures.get(model):
            lines += ["Figures: " + ", ".join(f"`{_shown(p)}`" for p in paths.values()), ""]
    if len(digests) > 1 or models_figure is not None:
        lines += ["### All models", "", "```", *table_lines(list(digests)), "```", ""]
        if models_figure is not None:
            lines += [f"Figure: `{_shown(models_figure)}`", ""]
    return "\n".join(lines) + "\n"


def _escape(text: str, property_value: bool = False) -> str:
    """GitHub's workflow-command escaping (``%``, CR, LF; also ``:`` and ``,`` inside a property)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if property_value else text


def annotations(failures: Iterable[Failure]) -> list[str]:
    """One ``::error file=…,line=…,title=…::message`` line per failing check."""
    return [
        f"::error file={_escape(f.path, True)},line={f.line},title={_escape(f.title, True)}::{_escape(f.message)}"
        for f in failures
    ]


def step_summary_path(environ: Mapping[str, Any] = os.environ) -> Path | None:
    """Where GitHub Actions collects the job summary; None outside Actions."""
    value = environ.get(STEP_SUMMARY)
    return Path(value) if value else None


def append_step_summary(path: Path, text: str) -> None:
    """Append, as GitHub expects: earlier steps may have written to the same file. A summary that cannot be
    written (a directory, no permission, a full disk) is said on stderr: the report never fails the run."""
    try:
        with open(path, "a", encoding="utf-8") as stream:
            stream.write(text)
    except OSError as exc:
        print(f"geomcheck: could not write the job summary to ${STEP_SUMMARY} = {path} ({exc.strerror or exc}); "
              "the checks' results are unaffected", file=sys.stderr)
