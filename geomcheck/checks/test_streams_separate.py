"""Hypothesis 2: the `pre` (before attention) and `mid` (after attention + skip) variance curves grow
separately: they do not coincide."""

import math

import pytest

from geomcheck.geometry import SETS


def test_streams_separate(geometry, thresholds, geomcheck_record):
    """|mean over layers of log(mid/pre)| ≥ min_abs_log_ratio and its 95% bootstrap interval excludes 0,
    for both prompt sets; the share of layers whose intervals do not overlap is reported."""
    if not {"pre", "mid"} <= set(geometry.streams):
        pytest.skip("needs streams pre and mid (see --streams)")
    figures, problems = [], []
    for prompt_set in SETS:
        key = f"mid/log_ratio_to_pre/{prompt_set}"
        sep, interval = geometry.separation(prompt_set), geometry.interval(key)
        figures.append(
            f"{prompt_set} mid/pre ×{math.exp(sep.mean_log_ratio):.2f} (log {geometry.describe(key)}), "
            f"{sep.fraction_separated:.0%} layers apart"
        )
        excludes_zero = interval.low > 0 or interval.high < 0
        if abs(sep.mean_log_ratio) < thresholds["min_abs_log_ratio"] or not excludes_zero:
            problems.append(
                f"pre and mid coincide ({prompt_set}): mean log(mid/pre) = {geometry.describe(key)}, need |·| ≥ "
                f"{thresholds['min_abs_log_ratio']} with an interval excluding 0; intervals apart at "
                f"{len(sep.separated_layers)} of {len(sep.compared_layers)} layers"
            )
    geomcheck_record("; ".join(figures))
    assert not problems, "\n".join(problems)
