"""Hypothesis 3: layers "untangle" the space: the cosine of the harmful and harmless mean vectors falls
with depth — the *debiased* cosine (the plain cosine of sample means falls from sampling noise alone, as the
variance grows), with an interval, and by more than shuffled labels make the plain cosine fall.

Null rejected: the true cosine of the means is the same at every depth (fall interval above ``min_fall``),
and the two sets are one distribution (``min_null_ratio``)."""

from geomcheck.spelling import flag
from geomcheck.stats.trends import cosine_trend, early_late_fall


def test_cosine_falls(geometry, stream, thresholds, geomcheck_record):
    """The debiased cosine falls with depth: Spearman ρ against the layer ≤ max_spearman, and the 95% interval
    of its early-half mean minus its late-half mean lies above min_fall; and 1 − cosine at the last layer is
    ≥ min_null_ratio × its level for label-shuffled sets."""
    ratio_key, fall_key = f"{stream}/cosine_null_ratio", f"{stream}/cosine_fall"
    assert ratio_key in geometry.values, (
        f"hypothesis 3 is tested against shuffled labels and with an interval, which need the samples: run with {flag('n-boot')} > 0"
    )
    debiased = geometry.curve(stream, "cosine_debiased")
    geometry.derive(fall_key, lambda values: early_late_fall(values[f"{stream}/cosine_debiased"]))
    spearman, fall = cosine_trend(debiased).spearman, geometry.interval(fall_key)
    last = len(debiased) - 1
    fall_text = f"early − late half {geometry.describe(fall_key, '.3g')}"
    null_text = (
        f"1 − cos at layer {last} is {geometry.describe(ratio_key, '.3g')}× the shuffled-label level "
        f"(p = {float(geometry.value(stream, 'cosine_null_p')):.3g})"
    )
    geomcheck_record(
        f"debiased ρ={spearman:.2f}, {geometry.describe(f'{stream}/cosine_debiased', '.4f', layer=0)} → "
        f"{geometry.describe(f'{stream}/cosine_debiased', '.4f', layer=-1)}, {fall_text}; {null_text}"
    )
    problems = []
    if not spearman <= thresholds["max_spearman"]:
        problems.append(
            f"the debiased cosine of the means does not fall with depth on stream {stream}: Spearman ρ = "
            f"{spearman:.2f} (need ≤ {thresholds['max_spearman']}); {debiased[0]:.4f} at layer 0, {debiased[-1]:.4f} at layer {last}"
        )
    if not fall.low > thresholds["min_fall"]:  # nan (the means not resolved in a half) fails too
        problems.append(
            f"the fall of the debiased cosine on stream {stream} is not resolved: {fall_text} (95% interval, need its "
            f"lower end > {thresholds['min_fall']}); a constant true cosine, with noise growing with depth, gives this"
        )
    if not float(geometry.value(ratio_key)) >= thresholds["min_null_ratio"]:
        problems.append(
            f"the fall of the cosine on stream {stream} is not above what shuffled labels give: {null_text} "
            f"(need ≥ {thresholds['min_null_ratio']}×); the two sets' means are not resolved from sampling noise"
        )
    assert not problems, "\n".join(problems)
