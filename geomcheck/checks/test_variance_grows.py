"""Hypothesis 1: the mean over features of the per-feature variance grows near-exponentially with depth."""

from geomcheck.geometry import SETS


def test_variance_grows(geometry, stream, thresholds, geomcheck_record):
    """log(mean variance) is a straight line in the layer index: growth ≥ min_rate× per layer (reported
    with its 95% bootstrap interval) and
    R² ≥ min_r2, for both prompt sets. Layers whose variance is exactly 0 (every prompt ends in the same
    chat-template tokens) cannot be logged; they are left out of the fit and named."""
    figures, problems = [], []
    for prompt_set in SETS:
        fit = geometry.growth(stream, "var_mean", prompt_set)
        rate = geometry.describe(f"{stream}/growth_rate/{prompt_set}")
        figures.append(f"{prompt_set} ×{rate}/layer R²={fit.r2:.2f}")
        if fit.rate < thresholds["min_rate"] or fit.r2 < thresholds["min_r2"]:
            problems.append(
                f"mean variance ({prompt_set}) grows ×{rate}/layer (95% interval), R²={fit.r2:.2f} on stream {stream} "
                f"(need ≥ {thresholds['min_rate']}×, R² ≥ {thresholds['min_r2']}); {fit.describe_outliers()} "
                f"break the trend; excluded (zero variance): {list(fit.excluded) or 'none'}"
            )
    geomcheck_record("; ".join(figures))
    assert not problems, "\n".join(problems)
