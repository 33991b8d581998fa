"""Hypothesis 3: layers "untangle" the space: the cosine of the harmful and harmless mean vectors falls
with depth — by more than sampling noise makes it fall when the labels are shuffled."""


def test_cosine_falls(geometry, stream, thresholds, geomcheck_record):
    """Spearman ρ of cosine vs layer ≤ max_spearman, least-squares slope < max_slope, and 1 − cosine at
    the last layer ≥ min_null_ratio × its level for label-shuffled sets (sampling noise alone lowers the
    cosine of sample means, and by more where the variance is larger, i.e. deeper)."""
    trend = geometry.cosine_trend(stream)
    cosine = geometry.curve(stream, "cosine")
    ratio_key = f"{stream}/cosine_null_ratio"
    assert ratio_key in geometry.values, (
        "hypothesis 3 is tested against shuffled labels, which needs the samples: run with --n-boot > 0"
    )
    last = len(cosine) - 1
    null_text = (
        f"1 − cos at layer {last} is {geometry.describe(ratio_key, '.3g')}× the shuffled-label level "
        f"(p = {float(geometry.value(stream, 'cosine_null_p')):.3g})"
    )
    geomcheck_record(
        f"ρ={geometry.describe(f'{stream}/cosine_spearman', '.2f')}, cosine {cosine[0]:.4f} → {cosine[-1]:.4f}, "
        f"debiased {geometry.describe(f'{stream}/cosine_debiased', '.4f', layer=-1)}; {null_text}"
    )
    problems = []
    if not (trend.spearman <= thresholds["max_spearman"] and trend.slope < thresholds["max_slope"]):
        problems.append(
            f"cosine of the means does not fall with depth on stream {stream}: Spearman ρ = "
            f"{geometry.describe(f'{stream}/cosine_spearman', '.2f')} (need ≤ {thresholds['max_spearman']}), "
            f"slope {trend.slope:.2e}/layer (need < {thresholds['max_slope']}); cosine {cosine[0]:.4f} at layer 0, "
            f"{cosine[-1]:.4f} at layer {last}"
        )
    if not float(geometry.value(ratio_key)) >= thresholds["min_null_ratio"]:
        problems.append(
            f"the fall of the cosine on stream {stream} is not above what shuffled labels give: {null_text} "
            f"(need ≥ {thresholds['min_null_ratio']}×); the two sets' means are not resolved from sampling noise"
        )
    assert not problems, "\n".join(problems)
