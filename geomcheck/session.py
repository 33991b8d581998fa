"""The state of one pytest session (one worker under xdist): each model's run, loaded at most once, its
errors and its figures.

A model has two names: the model *as given* (``--model``: a registry name, hub id or path; the value of
the ``model_name`` parameter of every check) and its *display name* (in test ids, thresholds and summaries).
Here ``model_arg`` is the first and ``model`` the second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from geomcheck.errors import GeomcheckError
from geomcheck.options import run_options

if TYPE_CHECKING:
    from geomcheck.report.across_models import ModelDigest
    from geomcheck.run.registry import ModelSpec
    from geomcheck.run.pipeline import ModelRun, RunOptions

SESSION_KEY = pytest.StashKey["GeomcheckSession"]()
DIGESTS = "geomcheck_digests"  # xdist workeroutput key: what each worker measured, for the controller


class ModelRunFailed(GeomcheckError, RuntimeError):
    """A model's run failed in an earlier check of this session; the first failure shows the error."""


@dataclass
class GeomcheckSession:
    """Per pytest session (per worker under xdist): the model runs, one per model, and their figures."""

    config: pytest.Config
    specs: dict[str, ModelSpec]  # model as given -> the model resolved at start-up, once
    thresholds: dict[str, Any]
    artifacts_dir: Path
    runs: dict[str, ModelRun] = field(default_factory=dict)  # by model as given
    failures: dict[str, BaseException] = field(default_factory=dict)  # model as given -> the error its run raised
    shown: dict[int, tuple[BaseException, str]] = field(default_factory=dict)  # id(error) -> (error, first node id)
    figures: dict[str, dict[str, Path]] = field(default_factory=dict)  # model as given -> figure kind -> file
    controls: dict[str, ModelRun] = field(default_factory=dict)  # model as given -> its untrained twin's run
    records: dict[str, Path | BaseException] = field(default_factory=dict)  # model as given -> the record standing in for it (or its capture's error)
    remote: Callable[[], dict[str, Path | BaseException]] | None = None  # captures every model elsewhere (--geomcheck-ray), once

    @property
    def display_names(self) -> dict[str, str]:
        """Model as given -> display name."""
        return {model_arg: spec.name for model_arg, spec in self.specs.items()}

    def add_figure(self, model_arg: str, kind: str, path: Path) -> None:
        self.figures.setdefault(model_arg, {})[kind] = path

    @cached_property
    def options(self) -> RunOptions:
        return run_options(self.config)

    def run(self, model_arg: str) -> ModelRun:
        from geomcheck.run.record import new_run

        if model_arg not in self.runs:
            if self.remote is not None:  # --geomcheck-ray: every model captured as a Ray task when the first is needed
                remote, self.remote = self.remote, None
                try:
                    self.records.update(remote())
                except Exception as exc:  # no Ray, no cluster: every model's checks fail with it (shown once)
                    self.records.update(dict.fromkeys(self.display_names, exc))
            found = self.records.get(model_arg)
            if isinstance(found, BaseException):
                raise found
            self.runs[model_arg] = new_run(model_arg, self.options, self.specs[model_arg], folder=found)
        return self.runs[model_arg]

    def control(self, model_arg: str, what: str) -> Any:
        """The untrained twin's ``<what>`` (``geometry``, ``weights``, ``capture``: ``--geomcheck-control``), computed as the
        checkpoint's is, or None when no twin is asked for."""
        if self.options.control is None:
            return None
        from geomcheck.run.record import new_run

        if model_arg not in self.controls:
            found = self.records.get(model_arg)
            self.controls[model_arg] = new_run(model_arg, self.options, self.specs[model_arg], control=self.options.control, folder=found if isinstance(found, Path) else None)
        return getattr(self.controls[model_arg], what)

    def computed(self, model_arg: str, what: str) -> Any:
        """``run(model_arg).<what>``; a model whose run failed once is not retried (no second load, no second
        traceback): later checks fail with a one-line reference to the first error."""
        if model_arg in self.failures:
            exc = self.failures[model_arg]
            first_line = (str(exc).splitlines() or [""])[0]
            raise ModelRunFailed(f"{self.display_names[model_arg]}: not run, its run failed in an earlier check (shown in full above): {type(exc).__name__}: {first_line}")
        try:
            return getattr(self.run(model_arg), what)
        except Exception as exc:
            self.failures[model_arg] = exc
            raise

    def digests(self) -> list[ModelDigest]:
        """What this process measured, per model: only what the checks computed; nothing runs for it."""
        from geomcheck.report.across_models import ModelDigest, overlap_ratios

        digests = []
        for model_arg, run in self.runs.items():
            geometry, weights = run.__dict__.get("geometry"), run.__dict__.get("weights")  # computed ones only
            if geometry is None and weights is None:
                continue
            ratios = overlap_ratios(weights.matrices, weights.k, weights.d_model) if weights is not None else {}
            digests.append(ModelDigest(self.display_names[model_arg], geometry, ratios, run.identity))
        return digests

    def thresholds_for(self, check: str, model: str) -> dict[str, Any]:
        merged = dict(self.thresholds.get(check, {}))
        merged.update(self.thresholds.get("models", {}).get(model, {}).get(check, {}))
        return merged

    def expected_failure(self, check: str, model: str, stream: str | None) -> str | None:
        table = self.thresholds.get("models", {}).get(model, {}).get("expected_failures", {})
        return table.get(f"{check}[{stream}]") or table.get(check)

    def show_once(self, nodeid: str, exc: BaseException, report: pytest.TestReport) -> None:
        """A session fixture's error is re-raised, as the same object, in every check that uses it: show its
        traceback with the first check only, and a one-line reference with the others (they still fail)."""
        if isinstance(exc, ModelRunFailed):
            report.longrepr = str(exc)
        elif id(exc) in self.shown:
            first = self.shown[id(exc)][1]
            report.longrepr = f"same error as {first}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        else:
            self.shown[id(exc)] = (exc, nodeid)  # the object is kept, so its id is not reused


def baseline_metas(config: Any, model_arg: str) -> list[dict[str, Any]]:
    """The metas of the committed baselines the gate compares ``model_arg`` with (``--baseline`` or its
    own folder): the reference runs whose readings a record carries for the paired comparison."""
    from geomcheck.gate.baseline import BaselineFileError, baseline_name, baseline_override, baselines_root, parse_baseline

    folder = baselines_root(config) / baseline_name(baseline_override(config) or model_arg)
    metas = []
    for path in sorted(folder.rglob("*.json")) if folder.is_dir() else []:
        try:
            metas.append(parse_baseline(path.read_text(encoding="utf-8"), str(path))["meta"])
        except BaselineFileError:
            continue  # the baseline check reports a broken file itself
    return metas


def write_records(session: GeomcheckSession, target: Path) -> tuple[list[str], bool]:
    """``--geomcheck-record-to``: every model of the session recorded under ``target/<model>/`` (what the
    checks computed is read back from the cache, the rest computed); returns the lines to show and whether
    every model got its record. A model whose run fails gets none, and says why."""
    from geomcheck.gate.baseline import baseline_name
    from geomcheck.report.figures import _folder_name
    from geomcheck.run.record import PREFIX, write

    lines, complete = [], True
    for model_arg, model in session.display_names.items():
        folder = Path(target) / _folder_name(model)
        try:
            run = session.run(model_arg)
            session.computed(model_arg, "geometry")  # a failed run is not retried (its error is shown above)
            write(run, folder, run.identity["model"], baseline_name(model_arg), baseline_metas(session.config, model_arg))
        except Exception as exc:  # any failure of one model's run or write: the others are still recorded
            lines.append(f"geomcheck: no record of {model} written: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
            complete = False
            continue
        lines.append(f"geomcheck: record of {model} written to {folder}; gate it elsewhere with: pytest checks/ --model {PREFIX}{folder}")
    return lines, complete
