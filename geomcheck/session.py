"""The state of one pytest session (one worker under xdist): each model's run, loaded at most once, its
errors and its figures.

A model has two names: the model *as given* (``--model``: a registry name, hub id or path; the value of
the ``model_name`` parameter of every check) and its *display name* (in test ids, thresholds and summaries).
Here ``model_arg`` is the first and ``model`` the second.
"""

from __future__ import annotations

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
        from geomcheck.run.pipeline import ModelRun

        if model_arg not in self.runs:
            self.runs[model_arg] = ModelRun(self.specs[model_arg], self.options, name=model_arg)
        return self.runs[model_arg]

    def control(self, model_arg: str, what: str) -> Any:
        """The untrained twin's ``<what>`` (``geometry``, ``weights``, ``capture``: ``--geomcheck-control``), computed as the
        checkpoint's is, or None when no twin is asked for."""
        if self.options.control is None:
            return None
        from geomcheck.run.pipeline import ModelRun

        if model_arg not in self.controls:
            self.controls[model_arg] = ModelRun(self.specs[model_arg], self.options, control=self.options.control, name=model_arg)
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
