"""The baseline check through syrupy: a thin single-file extension and the check's entry point.

:class:`GeometryBaselineExtension` is a syrupy single-file extension, so syrupy keeps doing what it is good
at: reading and writing the file (:mod:`geomcheck.gate.baseline`), ``--snapshot-update`` (create, update,
"1 snapshot generated/updated/failed" in the summary) and unused-snapshot detection and cleanup. Two of
its hooks are replaced:

* ``dirname``/``get_snapshot_name`` move the file out of ``__snapshots__`` beside the tests into
  ``<rootdir>/baselines/<model>/<test module>/`` and drop the model from the file name (it is the folder);
  the layout below ``baselines/<model>`` is syrupy's own single-file layout, so discovery of unused
  baselines works unchanged, and only the models of the session are ever looked at.
* ``matches`` compares *numerically* (:func:`geomcheck.gate.drift.compare_payloads`) instead of comparing
  strings, so numerical noise passes and a real change fails, and keeps that one comparison for the
  check; paired on the same prompts where the reference run's readings are at hand (``readings``),
  unpaired otherwise; it also detects a baseline made with another dtype, prompt set or geomcheck version (a
  :class:`BaselineMismatchWarning`, issued from the check's line). Under ``--snapshot-update`` a baseline
  is rewritten only if it no longer matches (drift, changed setup, new statistics, broken file): values
  that moved within tolerance are kept, so re-running the update does not churn the committed diff.

The check goes through :func:`check_baseline`, which makes the syrupy assertion and then builds the
verdict, the failure message and the drift map from the extension's one comparison: worst drifts first,
the missing-baseline and broken-file cases with the exact command that fixes them. It fails with
``pytest.fail`` rather than relying on syrupy's assertion-rewriting hook, because pytest truncates that
explanation to 8 lines without ``-vv``, and the first lines must be the worst drifts, not a diff header.
"""

from __future__ import annotations

import shlex
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

from geomcheck.errors import GeomcheckWarning
from geomcheck.gate.baseline import (
    BaselineFileError,
    baseline_name,
    baseline_override,
    baseline_payload,
    baselines_root,
    dumps,
    missing_streams,
    parse_baseline,
    write_atomically,
)
from geomcheck.gate.drift import (
    Comparison,
    Coverage,
    Drift,
    Tolerance,
    aliased_layers,
    compare_payloads,
    growth_changes,
    identity_summary,
)
from geomcheck.run.fingerprint import short
from geomcheck import spelling
from geomcheck.stats.trends import describe_layers

if TYPE_CHECKING:
    from syrupy.assertion import SnapshotAssertion
    from syrupy.location import PyTestLocation

    from geomcheck.stats.geometry import Geometry, Readings

MODEL_PARAM = "model_name"  # the plugin's parametrization over --model
MAX_REPORTED = 10
ReadingsLookup = Callable[[Mapping[str, Any]], "Readings | None"]  # a baseline's meta -> both runs' readings


class BaselineMismatchWarning(GeomcheckWarning):
    """The baseline was made with another dtype, prompt set, geomcheck version or position."""


def _params(test_location: PyTestLocation) -> Mapping[str, Any]:
    return getattr(getattr(test_location.item, "callspec", None), "params", {}) or {}


class GeometryBaselineExtension(SingleFileSnapshotExtension):
    """Syrupy extension: ``baselines/<model>/<module>/<test>.json``, compared numerically (see the module
    docstring), used through :func:`check_baseline`."""

    _write_mode = WriteMode.TEXT
    file_extension = "json"

    def __init__(self) -> None:
        # One instance per assertion (syrupy creates it lazily); check_baseline configures it.
        self.tolerances: Mapping[str, Tolerance] | None = None
        self.updating = False  # --snapshot-update: rewrite a baseline whose setup changed, too
        self.defer_warnings = False  # check_baseline warns itself, pointing at the check, not at syrupy
        self.location: str | None = None  # the file last read, for messages
        self.mismatch: str | None = None  # the BaselineMismatchWarning text of the last comparison
        self.comparison: Comparison | None = None  # the last comparison; None: no baseline, or a broken one
        self.readings: ReadingsLookup | None = None  # the reference's readings for a paired comparison
        self.update_command: str | None = None  # rewrites a baseline, NAME standing for the model

    def configure(
        self,
        *,
        tolerances: Mapping[str, Tolerance] | None = None,
        updating: bool = False,
        defer_warnings: bool = False,
        readings: ReadingsLookup | None = None,
        update_command: str | None = None,
    ) -> None:
        self.tolerances = tolerances
        self.update_command = update_command
        self.updating = updating
        self.defer_warnings = defer_warnings
        self.readings = readings

    # -- where ----------------------------------------------------------------------------------------

    @classmethod
    def dirname(cls, *, test_location: PyTestLocation) -> str:
        config = getattr(test_location.item, "config", None)
        model = baseline_override(config) or _params(test_location).get(MODEL_PARAM)
        folder = baseline_name(str(model)) if model is not None else "_no_model"
        root = baselines_root(config)
        return str(root / folder / test_location.basename)

    @classmethod
    def get_snapshot_name(cls, *, test_location: PyTestLocation, index: Any = 0) -> str:
        """The test's name without the model (that is the folder), keeping any other parameters."""
        others = [str(v) for k, v in _params(test_location).items() if k != MODEL_PARAM]
        name = test_location.methodname or test_location.testname
        if test_location.classname:
            name = f"{test_location.classname}.{name}"
        if others:
            name += f"[{'-'.join(others)}]"
        if isinstance(index, str):
            name += f"[{index}]"
        elif index:
            name += f".{index}"
        return cls._sanitize_filename(name)[: cls._max_stem_length()]

    @classmethod
    def matches_test_location(cls, *, test_location: PyTestLocation, snapshot_location: str) -> bool:
        """A file belongs to a test if it sits in that test's baseline folder (same model, same module)."""
        return Path(snapshot_location).parent == Path(cls.dirname(test_location=test_location))

    # -- what -----------------------------------------------------------------------------------------

    def serialize(self, data: Any, *, exclude: Any = None, include: Any = None, matcher: Any = None) -> str:
        if not isinstance(data, Mapping):
            raise TypeError(
                f"GeometryBaselineExtension stores baseline payloads, not {type(data).__name__}: "
                "pass baseline_payload(geometry, model_run.meta())"
            )
        return dumps(data)

    @classmethod
    def write_snapshot_collection(cls, *, snapshot_collection: Any, name_order: Any = None) -> None:
        """Syrupy's single-file write, made atomic (:func:`geomcheck.gate.baseline.write_atomically`)."""
        write_atomically(snapshot_collection.location, next(iter(snapshot_collection)).data)

    def read_snapshot_data_from_location(self, *, snapshot_location: str, snapshot_name: str, session_id: str) -> Any:
        self.location = snapshot_location
        return super().read_snapshot_data_from_location(
            snapshot_location=snapshot_location, snapshot_name=snapshot_name, session_id=session_id
        )

    def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
        """Numeric comparison: no value beyond tolerance and no statistic missing from the baseline.
        A broken baseline does not match (so ``--snapshot-update`` replaces it, and a plain run fails)."""
        location = self.location or "<baseline>"
        self.comparison = None
        try:
            baseline = parse_baseline(snapshot_data, location)
        except BaselineFileError:
            return False
        current = parse_baseline(serialized_data, "<current run>")
        readings = self.readings(baseline["meta"]) if self.readings is not None else None
        self.comparison = compare_payloads(baseline, current, self.tolerances, readings)
        cov = self.comparison.coverage
        model = str(current["meta"].get("name", "?"))
        command = _for_model(self.update_command or spelling.current().update_command(), str(current["meta"].get("model", model)))
        self.mismatch = None if self.updating else mismatch_warning(cov, model, location, command)
        if self.mismatch and not self.defer_warnings:
            warnings.warn(self.mismatch, BaselineMismatchWarning, stacklevel=2)
        if self.comparison.drifts or missing_streams(baseline, current):
            return False
        # Statistics newer than the baseline are not compared (check_baseline's summary names them).
        # Under --snapshot-update a changed setup is rewritten even if the values still match, so the
        # file always says what produced it; values that only moved within tolerance are kept.
        return not (self.updating and (cov.meta_changed or cov.only_in_baseline or cov.only_in_current))


# --------------------------------------------------------------------------------------------------
# Reports


def mismatch_warning(cov: Coverage, model: str, location: str, command: str) -> str | None:
    """The text of the :class:`BaselineMismatchWarning` for a coverage, or None when nothing is amiss."""
    parts = [f"{name}: baseline {a!r}, now {b!r}" for name, a, b in cov.meta]
    if cov.unfingerprinted:
        parts.append(
            "it records no fingerprint of the checkpoint, inputs and environment it measured (made by an older "
            f"geomcheck); regenerate it: {command}"
        )
    if cov.only_in_baseline:
        parts.append(f"not computed in this run (e.g. {spelling.flag('streams')}): {', '.join(cov.only_in_baseline)}")
    if not parts:
        return None
    return (
        f"the baseline of {model} ({location}) was made with another setup: {'; '.join(parts)}. "
        "Differences may reflect the setup rather than the model; if the new setup is intended, "
        f"update the baseline: {command}"
    )


def drift_report(
    comparison: Comparison, *, model: str, location: str, accept: str, limit: int = MAX_REPORTED
) -> list[str]:
    """The failure message for a comparison's drifts (worst first): at most ``limit`` value lines, which
    rule ran, then a per-statistic list of drifting layers, the growth rates, and how to accept the change."""
    drifts, total = comparison.drifts, len(comparison.scored)
    lines = [
        f"the geometry of {model} drifted from its baseline ({location}): {len(drifts)} of {total} values "
        "moved beyond tolerance = max(abs, rel·|baseline|, z·SE); worst first:"
    ]
    lines += [f"  {d.describe()}" for d in drifts[:limit]]
    if len(drifts) > limit:
        lines.append(f"  … and {len(drifts) - limit} more")
    lines.append(f"comparison: {comparison.method}")
    by_key: dict[str, list[int]] = {}
    for d in drifts:
        by_key.setdefault(d.key, []).append(d.layer)
    first = min(d.layer for d in drifts)
    summary = "; ".join(f"{key} {describe_layers(tuple(layers))}" for key, layers in sorted(by_key.items()))
    lines.append(f"first drifting layer: {first}. Drifting: {summary}")
    if aliased_layers(comparison.baseline):
        lines.append("(pre at layer l+1 is post at layer l, the same tensor: compared and counted once, as post)")
    growth = growth_changes(comparison)
    if growth:
        lines.append(f"growth of var_mean: {'; '.join(growth)}")
    lines.append(accept)
    return lines


def failure_lines(
    serialized_data: Any,
    snapshot_data: Any,
    location: str,
    tolerances: Mapping[str, Tolerance] | None = None,
    update_command: str | None = None,
) -> list[str]:
    """Why a current payload does not match a baseline text (missing, broken, drifted, incomplete)."""
    run = parse_baseline(serialized_data, "<current run>")
    model = str(run["meta"].get("name", "?"))
    command = _for_model(update_command or spelling.current().update_command(), str(run["meta"].get("model", model)))
    if not snapshot_data:
        return missing_lines(model, location, command)
    try:
        baseline = parse_baseline(snapshot_data, location, fix=f"regenerate it (this overwrites the file) with: {command}")
    except BaselineFileError as exc:
        return [str(exc)]
    return comparison_lines(compare_payloads(baseline, run, tolerances), model, location, command)


def comparison_lines(comparison: Comparison, model: str, location: str, command: str, accept: str | None = None) -> list[str]:
    """The drift report of a comparison, and the statistics its baseline lacks. ``command`` rewrites this
    baseline; ``accept`` (default: run ``command``) tells how to accept a drift that was intended."""
    lines: list[str] = []
    if absent := missing_streams(comparison.baseline, comparison.current):
        lines.append(
            f"the baseline of {model} ({location}) holds no statistic of the stream(s) {', '.join(absent)} this run computes, "
            f"so nothing of them was compared; regenerate it with every stream: {command}"
        )
    if comparison.drifts:
        accept = accept or f"If the change is intended, update the baseline: {command}"
        lines += drift_report(comparison, model=model, location=location, accept=accept)
    newer = comparison.coverage.only_in_current
    if newer:
        lines.append(f"the baseline of {model} ({location}) lacks statistics this run computes: {', '.join(newer)}; add them with: {command}")
    return lines


def missing_lines(model: str, location: str, command: str) -> list[str]:
    return [
        f"no baseline for {model}: expected {location}",
        f"Create it with: {command}",
        "(it is written there; commit it so later runs compare against it)",
    ]


# --------------------------------------------------------------------------------------------------
# The check's entry point


@dataclass
class BaselineOutcome:
    """What :func:`check_baseline` found: ``ok``, a one-line ``summary``, the failure ``message``, and the
    comparison all three were read from (None when there was no baseline to compare with)."""

    ok: bool
    status: str  # created, updated, matched, missing, first-run, broken, drifted
    location: str
    summary: str
    message: str = ""
    comparison: Comparison | None = None

    @property
    def skipped(self) -> bool:
        """No baseline yet for the package's own checks (a first run from an installed package): nothing to
        compare, which is a skip naming the command that creates one, not a failure; a project's own
        ``checks/`` commits its baselines, so there a missing one fails."""
        return self.status == "first-run"

    @property
    def drifts(self) -> list[Drift]:
        return [] if self.comparison is None else self.comparison.drifts

    def __repr__(self) -> str:  # keep assertion rewriting from printing every drift
        return f"BaselineOutcome(status={self.status!r}, ok={self.ok}, drifts={len(self.drifts)})"


def _display(location: str, root: Path | None) -> str:
    path = Path(location)
    for base in (root, Path.cwd()):
        if base is not None:
            try:
                return str(path.relative_to(base))
            except ValueError:
                continue
    return location


SHIPPED_CHECKS = Path(__file__).resolve().parent.parent / "checks"


def _is_shipped(test_location: PyTestLocation) -> bool:
    """The check was collected from the package (``--pyargs geomcheck.checks``), not from a project's file."""
    return Path(test_location.filepath).resolve().parent == SHIPPED_CHECKS


def _for_model(update_command: str, model: str) -> str:
    """The update command (``NAME`` standing for the model) for ``model``."""
    return update_command.replace("NAME", shlex.quote(model))


def accept_hint(update_command: str, changed: str, reference: str | None) -> str:
    """How to accept an intended drift of ``changed``, the model that was run. Gated against another
    model's baseline (``--baseline reference``), it gets a baseline of its own, and the reference's stays."""
    if reference is None or baseline_name(reference) == baseline_name(changed):
        return f"If the change is intended, update the baseline: {_for_model(update_command, changed)}"
    own, baseline = baseline_name(changed), spelling.flag("baseline")
    return (
        f"{changed} was compared with {reference}'s baseline ({baseline}). If the change is intended, give "
        f"{changed} a baseline of its own: {_for_model(update_command, changed)} (without {baseline}; it writes "
        f"baselines/{own}/, which later runs of {changed} without {baseline} compare against). {reference}'s baseline stays as it is."
    )


def check_baseline(
    assertion: SnapshotAssertion,
    data: Geometry | Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    readings: ReadingsLookup | None = None,
    update_command: str | None = None,
) -> BaselineOutcome:
    """Compare a geometry (with its run's ``meta``) or a payload with its committed baseline.

    ``assertion`` is ``snapshot.use_extension(GeometryBaselineExtension)``. Syrupy reads the file,
    matches numerically and, under ``--snapshot-update``, writes it; this returns what happened with a
    message fit for ``pytest.fail``. ``readings`` maps the baseline's meta to both runs' per-prompt
    readings (e.g. :meth:`geomcheck.run.pipeline.ModelRun.readings_against`): paired drift where it finds them.
    ``update_command`` rewrites the baseline, ``NAME`` standing for the model (the plugin's
    ``baseline_update_command`` fixture spells it for the project; by default ``pytest checks/ ...``).
    """
    extension = assertion.extension
    if not isinstance(extension, GeometryBaselineExtension):
        raise TypeError("check_baseline needs snapshot.use_extension(GeometryBaselineExtension)")
    update_command = update_command or spelling.current().update_command()
    extension.configure(
        tolerances=tolerances, updating=bool(assertion.update_snapshots), defer_warnings=True, readings=readings, update_command=update_command
    )
    extension.mismatch, extension.comparison = None, None
    payload = dict(data) if isinstance(data, Mapping) else baseline_payload(data, meta or {})
    matched = assertion == payload
    result = assertion.executions[assertion.num_executions - 1]
    if result.exception is not None:
        raise result.exception
    config = getattr(result.test_location.item, "config", None)
    location = _display(result.snapshot_location, Path(config.rootpath) if config is not None else None)
    if extension.mismatch:
        warnings.warn(extension.mismatch.replace(result.snapshot_location, location), BaselineMismatchWarning, stacklevel=2)
    model = str(payload["meta"].get("name") or baseline_name(str(payload["meta"].get("model", "?"))))
    changed, reference = str(payload["meta"].get("model", model)), baseline_override(config)
    command = _for_model(update_command, reference or changed)  # rewrites the file compared with
    written = f"{location} (weights {short(payload['meta'].get('weights'))})"
    if result.created:
        return BaselineOutcome(True, "created", location, f"baseline written: {written}")
    if result.updated:
        return BaselineOutcome(True, "updated", location, f"baseline updated: {written}")
    if result.recalled_data is None:
        lines = missing_lines(model, location, command)
        if _is_shipped(result.test_location):
            return BaselineOutcome(False, "first-run", location, f"no baseline yet; create it with: {command}", " ".join(lines))
        return BaselineOutcome(False, "missing", location, "no baseline", "\n".join(lines))
    comparison = extension.comparison
    if comparison is None:  # syrupy read a file that is not a baseline: failure_lines names the problem
        lines = failure_lines(result.asserted_data, result.recalled_data, location, tolerances, command)
        return BaselineOutcome(False, "broken", location, "baseline file broken", "\n".join(lines))
    scored, drifts = comparison.scored, comparison.drifts
    identity = identity_summary(comparison.baseline, comparison.current)
    if matched:
        worst = scored[0] if scored else None
        text = (
            f"{len(scored)} values within tolerance ({comparison.method.split(':')[0]}); largest drift "
            f"{worst.score:.2g}× tolerance at {worst.key} layer {worst.layer}"
            if worst is not None
            else "nothing compared"
        )
        newer = comparison.coverage.only_in_current
        if newer:
            text += f"; not in the baseline, so not compared: {', '.join(newer)} (add them with: {command})"
        return BaselineOutcome(True, "matched", location, f"{text}; {identity}", comparison=comparison)
    lines = comparison_lines(comparison, model, location, command, accept_hint(update_command, changed, reference))
    lines.append(f"identity: {identity}")
    worst_text = f"; worst {drifts[0].score:.3g}× at {drifts[0].key} layer {drifts[0].layer}" if drifts else ""
    absent = missing_streams(comparison.baseline, comparison.current)
    lacking = f"; the baseline lacks stream(s) {', '.join(absent)}" if absent else ""
    summary = f"{len(drifts)} of {len(scored)} values drifted ({comparison.method.split(':')[0]}){worst_text}{lacking}; {identity}"
    return BaselineOutcome(False, "drifted", location, summary, "\n".join(lines), comparison)


__all__ = [
    "BaselineMismatchWarning",
    "BaselineOutcome",
    "GeometryBaselineExtension",
    "check_baseline",
    "comparison_lines",
    "failure_lines",
]
