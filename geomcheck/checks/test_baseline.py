"""Regression: the geometry has not drifted from the committed baseline beyond tolerance.

The baseline is ``baselines/<model>/test_baseline/test_matches_baseline.json``; create or refresh it with
``pytest checks/ --model NAME --snapshot-update`` and commit it. Run from the installed package
(``--pyargs geomcheck.checks``) with no baseline yet, the check skips, naming the command that creates one.
"""

import pytest

from geomcheck.gate.baseline import geometry_from_payload
from geomcheck.gate.drift import drift_matrix, tolerances_from_config
from geomcheck.gate.extension import GeometryBaselineExtension, check_baseline


def test_matches_baseline(geometry, model_run, snapshot, thresholds, geomcheck_overlay, geomcheck_record, baseline_update_command):
    """Every per-layer statistic (mean cosine; mean and max variance of both sets; every stream) is within
    max(abs, rel·|baseline|, 4·SE) of its baseline: prompt noise and rounding pass, a changed checkpoint
    does not. SE is paired (the spread of the difference over resamples of the same prompts) where the
    cache holds the reference run's readings, else from the baseline's 95% bootstrap interval; the summary
    says which. Tolerances: [matches_baseline.tolerance].
    With a baseline, draws geometry-vs-baseline.png and drift-map.png (where the run left its tolerance)."""
    outcome = check_baseline(
        snapshot.use_extension(GeometryBaselineExtension),
        geometry,
        model_run.meta(),
        tolerances=tolerances_from_config(thresholds),
        readings=model_run.readings_against,
        update_command=baseline_update_command,
    )
    if outcome.comparison is not None:  # the overlay and the drift map read the verdict's own comparison
        geomcheck_overlay(geometry_from_payload(outcome.comparison.baseline), drift_matrix(outcome.comparison.scored))
    geomcheck_record(outcome.summary)
    if outcome.skipped:
        pytest.skip(outcome.message)
    if not outcome.ok:
        pytest.fail(outcome.message, pytrace=False)
